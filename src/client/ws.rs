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
use std::sync::atomic::AtomicBool;
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

/// A peer's presence in a room over the WebSocket signaling, driven by a [`Behaviour`].
pub struct RoomConnection {
    /// Its peer id (from the `welcome`).
    pub id: String,
    /// Cancel to leave (sends `leave`, closes the connections and the socket).
    pub leave: CancellationToken,
    /// Ends once the peer has left.
    pub task: tokio::task::JoinHandle<()>,
}

/// Joins a room over the WebSocket at `url` (`ws://host/rooms/R/ws?name=…`) as `name`, with
/// the shared room machinery ([`RoomPeer`]) running `behaviour`: the client side of what the
/// bots do in-process. Used by `recbot publish` and by tests that need a peer of their own.
pub async fn connect_room(
    url: &str,
    name: &str,
    factory: Arc<PeerFactory>,
    behaviour: Arc<dyn Behaviour>,
) -> Result<RoomConnection, PublishError> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| PublishError::Signal(e.to_string()))?;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let welcome = loop {
        match ws_rx.next().await {
            Some(Ok(Message::Text(text))) => {
                match serde_json::from_str::<ServerMessage>(text.as_str()) {
                    Ok(m @ ServerMessage::Welcome { .. }) => break m,
                    Ok(_) | Err(_) => continue,
                }
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(PublishError::Signal(e.to_string())),
            None => return Err(PublishError::Signal("closed before welcome".into())),
        }
    };
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
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let (in_tx, in_rx) = mpsc::channel(512);
    let leave = CancellationToken::new();
    let presence = RoomPeer::new(me, factory, behaviour, out_tx);
    let room_task = tokio::spawn(presence.run(in_rx, leave.clone()));
    let _ = in_tx.send(welcome).await;
    let leave_tx = leave.clone();
    let task = tokio::spawn(async move {
        tokio::pin!(room_task);
        let mut room_ended = false;
        loop {
            tokio::select! {
                _ = &mut room_task => {
                    room_ended = true;
                    break;
                }
                frame = ws_rx.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Ok(message) = serde_json::from_str::<ServerMessage>(text.as_str()) {
                            if in_tx.send(message).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
                Some(out) = out_rx.recv() => {
                    if ws_tx.send(Message::Text(out.to_json().into())).await.is_err() {
                        break;
                    }
                }
                _ = leave.cancelled() => {
                    let leave = crate::signal::protocol::ClientMessage::Leave.to_json();
                    let _ = ws_tx.send(Message::Text(leave.into())).await;
                    break;
                }
            }
        }
        drop(in_tx);
        if !room_ended {
            let _ = tokio::time::timeout(Duration::from_secs(3), room_task).await;
        }
        let _ = ws_tx.close().await;
    });
    Ok(RoomConnection {
        id,
        leave: leave_tx,
        task,
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
    let connection = connect_room(&url, name, factory, behaviour).await?;
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
