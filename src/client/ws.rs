//! A room over the WebSocket signaling: [`connect_room`] (any [`Behaviour`]) and [`start`]
//! (a publisher).

use super::{
    spawn_pumps, Clip, PublishError, PublishOptions, PublishStats, Publisher, PublisherHandle,
};
use crate::peer::outlet::SharedOutlets;
use crate::peer::room::{Behaviour, RoomPeer};
use crate::peer::PeerFactory;
use crate::signal::protocol::{PeerInfo, ServerMessage};
use futures::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

fn ws_url(server: &str, room: &str, name: &str, token: Option<&str>) -> String {
    let base = server.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    let mut url = format!("{base}/rooms/{room}/ws?name={}", super::encode_query(name));
    if let Some(token) = token {
        url.push_str(&format!("&token={}", super::encode_query(token)));
    }
    url
}

/// How long after a drop the client tries to resume its signaling session (SPEC §10: the
/// server keeps the seat 30 s).
pub const RESUME_WINDOW: Duration = Duration::from_secs(30);

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why opening a signaling session failed.
enum OpenError {
    /// Refused with an HTTP status before the upgrade (401: the token is no good).
    Status(u16),
    /// Anything else (network, closed before the welcome).
    Other(String),
}

/// Opens the WebSocket at `url` and reads up to its `welcome`.
async fn open(url: &str) -> Result<(WsStream, ServerMessage), OpenError> {
    use tokio_tungstenite::tungstenite::Error;
    let (mut ws, _) = match tokio_tungstenite::connect_async(url).await {
        Ok(ok) => ok,
        Err(Error::Http(response)) => return Err(OpenError::Status(response.status().as_u16())),
        Err(e) => return Err(OpenError::Other(e.to_string())),
    };
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if let Ok(m @ ServerMessage::Welcome { .. }) =
                    serde_json::from_str::<ServerMessage>(text.as_str())
                {
                    return Ok((ws, m));
                }
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(OpenError::Other(e.to_string())),
            None => return Err(OpenError::Other("closed before welcome".into())),
        }
    }
}

/// `url` with `resume=token` added (replacing an earlier one).
fn resume_url(url: &str, token: &str) -> String {
    let base = match url.find("&resume=").or_else(|| url.find("?resume=")) {
        Some(at) => &url[..at],
        None => url,
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}resume={}", super::encode_query(token))
}

/// The resume token of a `welcome`.
fn token_of(welcome: &ServerMessage) -> Option<String> {
    match welcome {
        ServerMessage::Welcome { resume, .. } => resume.clone(),
        _ => None,
    }
}

/// Tries to resume the session at `url` with `token` until [`RESUME_WINDOW`] has passed since
/// `dropped`, backing off from 100 ms to 2 s. `None` when the server refuses the token (the
/// seat is gone) or the window passed.
async fn resume(
    url: &str,
    token: &str,
    dropped: tokio::time::Instant,
    leave: &CancellationToken,
) -> Option<(WsStream, ServerMessage)> {
    let url = resume_url(url, token);
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = tokio::select! {
            attempt = tokio::time::timeout(Duration::from_secs(5), open(&url)) => attempt,
            _ = leave.cancelled() => return None,
        };
        match attempt {
            Ok(Ok((ws, welcome @ ServerMessage::Welcome { resumed: true, .. }))) => {
                return Some((ws, welcome))
            }
            Ok(Ok(_)) => return None,
            Ok(Err(OpenError::Status(status))) if (400..500).contains(&status) => {
                tracing::info!(status, "the server refused to resume the signaling session");
                return None;
            }
            Ok(Err(OpenError::Status(_) | OpenError::Other(_))) | Err(_) => {}
        }
        if dropped.elapsed() + backoff >= RESUME_WINDOW {
            return None;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = leave.cancelled() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The peer ids a client knows of, kept from the messages it reads.
#[derive(Default)]
struct KnownPeers(std::collections::HashMap<String, PeerInfo>);

impl KnownPeers {
    fn note(&mut self, message: &ServerMessage) {
        match message {
            ServerMessage::Welcome { peers, .. } => {
                self.0 = peers.iter().map(|p| (p.id.clone(), p.clone())).collect();
            }
            ServerMessage::PeerJoined { peer } => {
                self.0.insert(peer.id.clone(), peer.clone());
            }
            ServerMessage::PeerLeft { id } => {
                self.0.remove(id);
            }
            _ => {}
        }
    }

    /// What turns the peers known into those of a resumed `welcome`: `peer-left` for those
    /// gone, `peer-joined` for those new (their offers follow in the queued messages).
    fn catch_up(&mut self, welcome: &ServerMessage) -> Vec<ServerMessage> {
        let ServerMessage::Welcome { peers, .. } = welcome else {
            return Vec::new();
        };
        let mut out: Vec<ServerMessage> = self
            .0
            .keys()
            .filter(|id| !peers.iter().any(|p| &p.id == *id))
            .map(|id| ServerMessage::PeerLeft { id: id.clone() })
            .collect();
        out.extend(
            peers
                .iter()
                .filter(|p| !self.0.contains_key(&p.id))
                .map(|p| ServerMessage::PeerJoined { peer: p.clone() }),
        );
        self.note(welcome);
        out
    }
}

/// A peer's presence in a room over the WebSocket signaling, driven by a [`Behaviour`].
pub struct RoomConnection {
    /// Its peer id (from the `welcome`).
    pub id: String,
    /// Cancel to leave (sends `leave`, closes the connections and the socket).
    pub leave: CancellationToken,
    /// Ends once the peer has left.
    pub task: tokio::task::JoinHandle<()>,
    /// Signaling sessions resumed after a drop.
    pub resumes: Arc<AtomicU64>,
}

/// Joins a room over the WebSocket at `url` (`ws://host/rooms/R/ws?name=…`) as `name`, with
/// the shared room machinery ([`RoomPeer`]) running `behaviour`: the client side of what the
/// bots do in-process. Used by `recbot publish` and by tests that need a peer of their own.
///
/// When the socket drops without a close frame, the peer keeps its connections and resumes
/// its signaling session with the `welcome`'s token (SPEC §10) for up to [`RESUME_WINDOW`];
/// what it sends meanwhile waits and goes out on the resumed socket. It leaves when the
/// server closes the socket on purpose or refuses the resume.
pub async fn connect_room(
    url: &str,
    name: &str,
    factory: Arc<PeerFactory>,
    behaviour: Arc<dyn Behaviour>,
) -> Result<RoomConnection, PublishError> {
    connect_room_counting(url, name, factory, behaviour, Arc::default()).await
}

async fn connect_room_counting(
    url: &str,
    name: &str,
    factory: Arc<PeerFactory>,
    behaviour: Arc<dyn Behaviour>,
    resumes: Arc<AtomicU64>,
) -> Result<RoomConnection, PublishError> {
    let (mut ws, welcome) = open(url).await.map_err(|e| match e {
        OpenError::Status(status) => PublishError::Signal(format!("HTTP {status}")),
        OpenError::Other(e) => PublishError::Signal(e),
    })?;
    let ServerMessage::Welcome { id, .. } = &welcome else {
        return Err(PublishError::Signal("no welcome".into()));
    };
    let id = id.clone();
    let me = PeerInfo {
        id: id.clone(),
        name: name.to_owned(),
        bot: false,
        whip: false,
    };
    let mut token = token_of(&welcome);
    let mut known = KnownPeers::default();
    known.note(&welcome);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let (in_tx, in_rx) = mpsc::channel(512);
    let leave = CancellationToken::new();
    let presence = RoomPeer::new(me, factory, behaviour, out_tx);
    let room_task = tokio::spawn(presence.run(in_rx, leave.clone()));
    let _ = in_tx.send(welcome).await;
    let leave_tx = leave.clone();
    let url = url.to_owned();
    let counter = Arc::clone(&resumes);
    let task = tokio::spawn(async move {
        tokio::pin!(room_task);
        let mut room_ended = false;
        // A message read from the room but not sent when the socket dropped.
        let mut unsent: Option<String> = None;
        'session: loop {
            if let Some(text) = unsent.take() {
                if ws.send(Message::Text(text.clone().into())).await.is_err() {
                    unsent = Some(text);
                }
            }
            let dropped = unsent.is_some()
                || loop {
                    tokio::select! {
                        _ = &mut room_task => {
                            room_ended = true;
                            break 'session;
                        }
                        frame = ws.next() => match frame {
                            Some(Ok(Message::Text(text))) => {
                                if let Ok(message) = serde_json::from_str::<ServerMessage>(text.as_str()) {
                                    known.note(&message);
                                    if in_tx.send(message).await.is_err() {
                                        break 'session;
                                    }
                                }
                            }
                            // The server closed on purpose: the peer is out of the room.
                            Some(Ok(Message::Close(_))) => break 'session,
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break true,
                        },
                        Some(out) = out_rx.recv() => {
                            let text = out.to_json();
                            if ws.send(Message::Text(text.clone().into())).await.is_err() {
                                unsent = Some(text);
                                break true;
                            }
                        }
                        _ = leave.cancelled() => {
                            let leave = crate::signal::protocol::ClientMessage::Leave.to_json();
                            let _ = ws.send(Message::Text(leave.into())).await;
                            break 'session;
                        }
                    }
                };
            if !dropped {
                continue;
            }
            let Some(current) = token.as_deref() else {
                break 'session;
            };
            let started = tokio::time::Instant::now();
            tracing::info!("signaling dropped: resuming");
            let Some((fresh, welcome)) = resume(&url, current, started, &leave).await else {
                break 'session;
            };
            ws = fresh;
            token = token_of(&welcome);
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                after_ms = started.elapsed().as_millis() as u64,
                "signaling resumed"
            );
            for message in known.catch_up(&welcome) {
                if in_tx.send(message).await.is_err() {
                    break 'session;
                }
            }
        }
        drop(in_tx);
        if !room_ended {
            let _ = tokio::time::timeout(Duration::from_secs(3), room_task).await;
        }
        let _ = ws.close(None).await;
    });
    Ok(RoomConnection {
        id,
        leave: leave_tx,
        task,
        resumes,
    })
}

/// Joins `room` on `server` as `name` and starts sending `clip`.
pub async fn start(
    server: &str,
    room: &str,
    name: &str,
    clip: Arc<Clip>,
    factory: Arc<PeerFactory>,
    options: PublishOptions,
) -> Result<PublisherHandle, PublishError> {
    let url = ws_url(server, room, name, options.token.as_deref());
    let stats = Arc::new(PublishStats::default());
    let outlets: SharedOutlets = Arc::default();
    let keyframe_wanted = Arc::new(AtomicBool::new(false));
    let behaviour = Arc::new(Publisher {
        clip: Arc::clone(&clip),
        mesh: options.mesh,
        outlets: Arc::clone(&outlets),
        keyframe_wanted: Arc::clone(&keyframe_wanted),
        stats: Arc::clone(&stats),
    });
    let connection =
        connect_room_counting(&url, name, factory, behaviour, Arc::clone(&stats.resumes)).await?;
    let pumps = spawn_pumps(
        &clip,
        &outlets,
        (!options.ignore_keyframe_requests).then(|| Arc::clone(&keyframe_wanted)),
        &stats,
        &connection.leave,
    );
    let room = connection.task;
    let task = tokio::spawn(async move {
        let _ = room.await;
        for pump in pumps {
            pump.abort();
        }
    });
    Ok(PublisherHandle {
        id: connection.id,
        stats,
        leave: connection.leave,
        task,
    })
}
