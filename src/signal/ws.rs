//! A client's WebSocket session in a room (SPEC §2), once `GET /rooms/{room}/ws` (the route,
//! in `api::ws`, with its checks before the upgrade) has upgraded the connection.
//!
//! The session runs one task: frames in, queued
//! hub messages out, pings every [`PING_EVERY`], dropped after [`SILENCE_LIMIT`] without any
//! frame. Bad frames get an `error` message; the connection stays open unless the client
//! keeps sending garbage ([`GARBAGE_LIMIT`] per minute: closed with 1008). Every close the
//! server starts leaves the room first, then completes the closing handshake (see `close`).

use super::hub::{Hub, MemberKind};
use super::protocol::{
    parse_client_message, ClientMessage, ErrorCode, Refusal, ServerMessage, MAX_FRAME_BYTES,
};
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};
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

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> bool {
    match serde_json::to_string(message) {
        Ok(text) => socket
            .send(Message::Text(Utf8Bytes::from(text)))
            .await
            .is_ok(),
        Err(_) => true,
    }
}

/// Closes the session with `code` and `reason` and completes the closing handshake: reads (and
/// discards) what the client still sends until its close frame, for at most [`CLOSE_GRACE`].
/// Dropping the connection with unread frames in the kernel's buffer would make it answer with
/// a TCP reset, and the client would lose the close frame and see 1006 instead of `code`.
async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
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
        while let Some(Ok(frame)) = socket.recv().await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Runs the session of client `name` in `room` on an upgraded `socket` until it ends: joins
/// the hub (a refusal closes with 1013), sends `welcome` and then the room's running
/// recordings as `announce` lists them at that moment, relays, and leaves the room before the
/// closing handshake. `shutdown` being cancelled closes with 1001.
pub async fn session(
    mut socket: WebSocket,
    hub: Arc<Hub>,
    room: String,
    name: String,
    announce: impl FnOnce(&str) -> Vec<ServerMessage>,
    shutdown: CancellationToken,
) {
    let (membership, welcome, mut rx) = match hub.join(&room, &name, MemberKind::Client) {
        Ok(joined) => joined,
        Err(e) => {
            tracing::info!(room, error = %e, "join refused");
            close(&mut socket, close_code::AGAIN, "room full").await;
            return;
        }
    };
    let peer = membership.id().to_owned();
    let _connected = ConnectionGauge::new();
    if !send(&mut socket, &welcome).await {
        return;
    }
    // A recording already running is announced to the newcomer too.
    for notice in announce(&room) {
        if !send(&mut socket, &notice).await {
            return;
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
    // Set where the session ends with a close frame, sent once the peer has left the room.
    let mut closing: Option<(u16, &'static str)> = None;
    loop {
        tokio::select! {
            frame = socket.recv() => {
                let now = Instant::now();
                let text = match frame {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => {
                        last_seen = now;
                        continue;
                    }
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
                        closing = Some((close_code::NORMAL, "bye"));
                        break;
                    }
                    Ok(message) => {
                        if let Err(refusal) = membership.relay(message) {
                            if !send(&mut socket, &refusal.into_message()).await {
                                break;
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
                            closing = Some((close_code::POLICY, "too many bad messages"));
                            break;
                        }
                        if !send(&mut socket, &refusal.into_message()).await {
                            break;
                        }
                    }
                }
            }
            message = rx.recv() => match message {
                Some(message) => {
                    if !send(&mut socket, &message).await {
                        break;
                    }
                }
                None => {
                    closing = Some((close_code::AGAIN, "too slow"));
                    break;
                }
            },
            _ = check.tick() => {
                let now = Instant::now();
                if now.duration_since(last_seen) > SILENCE_LIMIT {
                    tracing::info!(room, peer, "no frame for 60 s: dropped");
                    break;
                }
                if now.duration_since(last_ping) >= PING_EVERY {
                    last_ping = now;
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                }
            }
            _ = shutdown.cancelled() => {
                closing = Some((close_code::AWAY, "server shutting down"));
                break;
            }
        }
    }
    // Leave the room first: the others hear `peer-left` at once, not after the handshake.
    drop(membership);
    if let Some((code, reason)) = closing {
        close(&mut socket, code, reason).await;
    }
}
