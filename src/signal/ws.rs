//! A client's WebSocket session in a room (SPEC §2), once `GET /rooms/{room}/ws` (the route,
//! in `api::ws`, with its checks before the upgrade) has upgraded the connection.
//!
//! The session runs one task: frames in, queued
//! hub messages out, pings every [`PING_EVERY`], dropped after [`SILENCE_LIMIT`] without any
//! frame. Bad frames get an `error` message; the connection stays open unless the client
//! keeps sending garbage ([`GARBAGE_LIMIT`] per minute: closed with 1008). Every close the
//! server starts leaves the room first, then completes the closing handshake (see `close`).
//! A socket that drops without a close frame keeps the client's seat for a resume (SPEC §10,
//! see [`session`]).

use super::hub::{Hub, Membership, Seat};
use super::protocol::{
    parse_client_message, ClientMessage, ErrorCode, Refusal, ServerMessage, MAX_FRAME_BYTES,
};
use super::queue::Receiver;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// Ping period.
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// A peer silent this long (no frame, no pong) is dropped.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// Bad frames per minute before the connection is closed with 1008.
pub const GARBAGE_LIMIT: u32 = 30;
/// Messages per second allowed on average, and the burst above it.
pub const RATE_PER_SECOND: f64 = 50.0;
/// Burst size of the rate limit.
pub const RATE_BURST: f64 = 200.0;
/// How long a closing session waits for the client's close frame (the closing handshake)
/// before it drops the connection.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// Largest frame the WebSocket layer reads at all (larger ones close the connection); frames
/// between [`MAX_FRAME_BYTES`] and this get a `too-large` error.
pub const HARD_FRAME_LIMIT: usize = 256 * 1024;

/// Counts an open WebSocket session in the metrics for as long as it lives.
struct ConnectionGauge;

impl ConnectionGauge {
    fn new() -> Self {
        metrics::gauge!(crate::telemetry::WS_CONNECTIONS).increment(1.0);
        Self
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!(crate::telemetry::WS_CONNECTIONS).decrement(1.0);
    }
}

/// A token bucket.
struct RateLimit {
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.last).as_secs_f64() * RATE_PER_SECOND;
        self.tokens = (self.tokens + refill).min(RATE_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An upgraded client connection (see `api::ws`).
pub type Socket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// Text frames up to this size go through the WebSocket layer's write buffer. That buffer
/// keeps the capacity of the largest frame it ever held, so a larger frame (a `welcome` in a
/// big room, an SDP) is written from a buffer of its own, freed once written: an idle
/// connection then holds no more than this for writing.
pub const BUFFERED_FRAME_MAX: usize = 256;

/// Sends `message` as one text frame; false if the socket failed. Boxed, like [`close`]: a
/// session spends its life waiting, and its task keeps room for the largest state of every
/// step inline, so the rare steps are kept off it (one short-lived allocation per message).
fn send<'a>(socket: &'a mut Socket, message: &'a ServerMessage) -> BoxFuture<'a, bool> {
    Box::pin(send_now(socket, message))
}

async fn send_now(socket: &mut Socket, message: &ServerMessage) -> bool {
    let Ok(text) = serde_json::to_string(message) else {
        return true;
    };
    if text.len() <= BUFFERED_FRAME_MAX {
        return socket
            .send(Message::Text(Utf8Bytes::from(text)))
            .await
            .is_ok();
    }
    // What the layer holds (a queued pong, say) goes out first and whole, so frames never
    // interleave; tungstenite formats the frame.
    if socket.flush().await.is_err() {
        return false;
    }
    let frame = Frame::message(text, OpCode::Data(Data::Text), true);
    let mut bytes = Vec::with_capacity(frame.len());
    if frame.format(&mut bytes).is_err() {
        return false;
    }
    let io = socket.get_mut();
    io.write_all(&bytes).await.is_ok() && io.flush().await.is_ok()
}

/// What the session reads next: `None` once the socket ended.
async fn recv(
    socket: &mut Socket,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    socket.next().await
}

/// Closes the session with `code` and `reason` and completes the closing handshake: reads (and
/// discards) what the client still sends until its close frame, for at most [`CLOSE_GRACE`].
/// Dropping the connection with unread frames in the kernel's buffer would make it answer with
/// a TCP reset, and the client would lose the close frame and see 1006 instead of `code`.
fn close<'a>(socket: &'a mut Socket, code: CloseCode, reason: &'static str) -> BoxFuture<'a, ()> {
    Box::pin(close_now(socket, code, reason))
}

async fn close_now(socket: &mut Socket, code: CloseCode, reason: &'static str) {
    let sent = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
    if sent.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(frame)) = recv(socket).await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// How a session begins.
pub enum Entry {
    /// A new member: join `room` as `name`.
    Join {
        /// The hub to join.
        hub: Arc<Hub>,
        /// The room (already validated).
        room: String,
        /// The display name as given.
        name: String,
    },
    /// A resumed member (`?resume=`): the seat handed over by its earlier session.
    Resume(Seat),
}

/// How an attached session ended.
enum Ended {
    /// The member leaves the room; with a close frame to send after leaving, if any.
    Leave(Option<(CloseCode, &'static str)>),
    /// The socket dropped without a close frame (or went silent): the seat waits for a resume.
    Dropped,
}

/// Runs a client's session on an upgraded `socket` until it ends. A new member joins the hub
/// (a refusal closes with 1013), gets `welcome` (with its resume token) and then the room's
/// running recordings as `announce` lists them at that moment; a resumed member gets a
/// `welcome` with `resumed: true` and then the messages queued while it was detached. The
/// session relays, and ends in one of three ways:
/// - the client leaves on purpose (`leave`, or any close frame of its own), or the server
///   closes it (garbage 1008, too slow 1013, shutdown 1001): the member leaves the room
///   before the closing handshake;
/// - the socket drops without a close frame, or is silent for [`SILENCE_LIMIT`]: the task
///   keeps the seat for the hub's resume grace ([`Seat::hold`]) and then leaves;
/// - a resume takes the seat over: the old socket is dropped and the room sees nothing.
pub async fn session(
    mut socket: Socket,
    entry: Box<Entry>,
    announce: impl FnOnce(&str) -> Vec<ServerMessage>,
    shutdown: CancellationToken,
) {
    // (Boxed, like the greeting below: an async fn keeps its arguments' room in its state
    // for its whole life, and every idle session would keep it.)
    let (seat, welcome, notices) = match *entry {
        // Boxed: the join (a cluster round trip) keeps no room in every idle session's state.
        Entry::Join { hub, room, name } => {
            match Box::pin(hub.join_client(&room, &name)).await {
                Ok((seat, welcome)) => {
                    // A recording already running is announced to the newcomer too.
                    let notices = announce(&room);
                    (seat, welcome, notices)
                }
                Err(e) => {
                    tracing::info!(room, error = %e, "join refused");
                    close(&mut socket, CloseCode::Again, "room full").await;
                    return;
                }
            }
        }
        Entry::Resume(seat) => match seat.rewelcome() {
            Some(welcome) => {
                tracing::info!(room = seat.room(), peer = seat.id(), "peer resumed");
                (seat, welcome, Vec::new())
            }
            None => {
                close(&mut socket, CloseCode::Again, "seat lost").await;
                return;
            }
        },
    };
    let hub = Arc::clone(seat.membership.hub());
    let Seat {
        membership,
        mut queue,
        mut unsent,
        mut takeovers,
    } = seat;
    let ended = tokio::select! {
        ended = attached(&mut socket, &membership, (&mut queue, &mut unsent), Box::new((welcome, notices)), &shutdown) => ended,
        Some(reply) = takeovers.recv() => {
            // A resume of this seat: the socket goes without a word (it may be dead already,
            // and a frame may have been cut mid-way); the room sees nothing.
            tracing::info!(room = membership.room(), peer = membership.id(), "seat taken over by a resumed session");
            drop(socket);
            let seat = Seat { membership, queue, unsent, takeovers };
            // If the claimant has gone meanwhile, the seat (its token used up) leaves.
            let _ = reply.send(seat);
            return;
        }
    };
    match ended {
        Ended::Leave(closing) => {
            // Leave the room first: the others hear `peer-left` at once, not after the handshake.
            drop(membership);
            if let Some((code, reason)) = closing {
                close(&mut socket, code, reason).await;
            }
        }
        Ended::Dropped => {
            drop(socket);
            let seat = Seat {
                membership,
                queue,
                unsent,
                takeovers,
            };
            // Boxed: its state is not kept inline by every session (see `send`).
            Box::pin(seat.hold(hub.resume_grace(), &shutdown)).await;
        }
    }
}

/// The attached part of a session: sends the `welcome` and notices of `greeting` and the
/// message a dropped socket left unsent, then relays the queue until the session ends.
async fn attached(
    socket: &mut Socket,
    membership: &Membership,
    (rx, unsent): (
        &mut Receiver<Arc<ServerMessage>>,
        &mut Option<Arc<ServerMessage>>,
    ),
    greeting: Box<(ServerMessage, Vec<ServerMessage>)>,
    shutdown: &CancellationToken,
) -> Ended {
    let room = membership.room();
    let peer = membership.id();
    let _connected = ConnectionGauge::new();
    // A client that never got its welcome has no token to resume with.
    let (welcome, notices) = &*greeting;
    for message in std::iter::once(welcome).chain(notices) {
        if !send(socket, message).await {
            return Ended::Leave(None);
        }
    }
    // Not kept for the session's life: in a room of 64 the welcome alone is ~4 KiB.
    drop(greeting);
    if let Some(message) = unsent.take() {
        if !send(socket, &message).await {
            *unsent = Some(message);
            return Ended::Dropped;
        }
    }
    let mut last_seen = Instant::now();
    let mut last_ping = Instant::now();
    let mut check = tokio::time::interval(Duration::from_secs(5));
    let mut rate = RateLimit {
        tokens: RATE_BURST,
        last: Instant::now(),
    };
    let mut garbage = (0u32, Instant::now());
    loop {
        tokio::select! {
            frame = recv(socket) => {
                let now = Instant::now();
                let text = match frame {
                    // A drop without a close frame: the client may resume.
                    None | Some(Err(_)) => return Ended::Dropped,
                    // A close frame of the client's own is a leave on purpose.
                    Some(Ok(Message::Close(_))) => return Ended::Leave(None),
                    Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => {
                        last_seen = now;
                        continue;
                    }
                    // Raw frames are never yielded when reading.
                    Some(Ok(Message::Frame(_))) => continue,
                    Some(Ok(Message::Binary(_))) => {
                        last_seen = now;
                        Err(Refusal::new(ErrorCode::BadMessage, "binary frames are not accepted"))
                    }
                    Some(Ok(Message::Text(text))) => {
                        last_seen = now;
                        Ok(text)
                    }
                };
                let outcome = text.and_then(|text| {
                    if !rate.take(now) {
                        return Err(Refusal::new(ErrorCode::RateLimited, "too many messages; slow down"));
                    }
                    if text.len() > MAX_FRAME_BYTES {
                        return Err(Refusal::new(ErrorCode::TooLarge, format!("frame over {MAX_FRAME_BYTES} bytes")));
                    }
                    parse_client_message(text.as_str())
                });
                match outcome {
                    Ok(ClientMessage::Leave) => {
                        return Ended::Leave(Some((CloseCode::Normal, "bye")));
                    }
                    Ok(message) => {
                        if let Err(refusal) = membership.relay(message) {
                            if !send(socket, &refusal.into_message()).await {
                                return Ended::Dropped;
                            }
                        }
                    }
                    Err(refusal) => {
                        tracing::debug!(room, peer, code = ?refusal.code, "client message refused");
                        if now.duration_since(garbage.1) > Duration::from_secs(60) {
                            garbage = (0, now);
                        }
                        garbage.0 += 1;
                        if garbage.0 > GARBAGE_LIMIT {
                            return Ended::Leave(Some((CloseCode::Policy, "too many bad messages")));
                        }
                        if !send(socket, &refusal.into_message()).await {
                            return Ended::Dropped;
                        }
                    }
                }
            }
            message = rx.recv() => match message {
                Some(message) => {
                    if !send(socket, &message).await {
                        // Kept for a resume. Messages written before the drop was noticed are
                        // lost with the socket (SPEC §2 has no acknowledgements).
                        *unsent = Some(message);
                        return Ended::Dropped;
                    }
                }
                None => return Ended::Leave(Some((CloseCode::Again, "too slow"))),
            },
            _ = check.tick() => {
                let now = Instant::now();
                if now.duration_since(last_seen) > SILENCE_LIMIT {
                    tracing::info!(room, peer, "no frame for 60 s: detached");
                    return Ended::Dropped;
                }
                if now.duration_since(last_ping) >= PING_EVERY {
                    last_ping = now;
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        return Ended::Dropped;
                    }
                }
            }
            _ = shutdown.cancelled() => {
                return Ended::Leave(Some((CloseCode::Away, "server shutting down")));
            }
        }
    }
}
