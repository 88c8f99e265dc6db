//! Taking part in a room as a peer: one machinery for recbot's bots and for the `publish`
//! client. It reads the room's [`ServerMessage`]s, keeps one [`Link`] per remote peer its
//! [`Behaviour`] wants (offering to everyone in the `welcome`, answering whoever offers later),
//! and writes [`ClientMessage`]s out. Where the messages come from (the hub in-process, a
//! WebSocket) is the caller's business.

use super::negotiation::{Link, LinkMedia, Role, SignalSink};
use super::{Pc, PeerError, PeerFactory};
use crate::signal::protocol::{ClientMessage, PeerInfo, ServerMessage};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_remote::TrackRemote;

/// What a room peer does with the other peers.
#[async_trait]
pub trait Behaviour: Send + Sync + 'static {
    /// Whether to connect to `peer` at all.
    fn wants(&self, peer: &PeerInfo) -> bool;
    /// Adds tracks or transceivers to a new connection toward `peer`.
    async fn setup(&self, peer: &PeerInfo, pc: &Pc, role: Role) -> Result<(), PeerError>;
    /// A track of `peer` started.
    async fn on_track(&self, peer: &PeerInfo, track: Arc<dyn TrackRemote>);
    /// `peer` left the room (its connection is being closed).
    async fn peer_left(&self, _peer: &PeerInfo) {}
    /// `peer` opened a DataChannel toward us (dropped unless the behaviour keeps it).
    async fn on_data_channel(&self, _peer: &PeerInfo, _channel: Arc<dyn DataChannel>) {}
}

/// Per-link adapter: tells the behaviour which peer a callback is about.
struct PeerMedia {
    peer: PeerInfo,
    behaviour: Arc<dyn Behaviour>,
}

#[async_trait]
impl LinkMedia for PeerMedia {
    async fn setup(&self, pc: &Pc, role: Role) -> Result<(), PeerError> {
        self.behaviour.setup(&self.peer, pc, role).await
    }

    async fn on_track(&self, _remote: &str, track: Arc<dyn TrackRemote>) {
        self.behaviour.on_track(&self.peer, track).await
    }

    async fn on_data_channel(&self, _remote: &str, channel: Arc<dyn DataChannel>) {
        self.behaviour.on_data_channel(&self.peer, channel).await
    }
}

/// Outgoing signaling of the links, queued to whoever carries it. Holding only a channel keeps
/// a connection that webrtc-rs never frees from pinning anything else.
struct QueueSink(mpsc::UnboundedSender<ClientMessage>);

impl SignalSink for QueueSink {
    fn send(&self, message: ClientMessage) {
        let _ = self.0.send(message);
    }
}

/// SPEC §2 glare rule: a bot is polite toward a non-bot; otherwise the smaller id is polite.
pub fn polite(me: &PeerInfo, other: &PeerInfo) -> bool {
    if me.bot != other.bot {
        me.bot
    } else {
        me.id < other.id
    }
}

/// A peer's presence in one room.
pub struct RoomPeer {
    me: PeerInfo,
    factory: Arc<PeerFactory>,
    behaviour: Arc<dyn Behaviour>,
    sink: Arc<QueueSink>,
    peers: HashMap<String, PeerInfo>,
    links: HashMap<String, Link>,
}

impl RoomPeer {
    /// A presence for `me` (its id is taken from the `welcome`), writing to `outgoing`.
    pub fn new(
        me: PeerInfo,
        factory: Arc<PeerFactory>,
        behaviour: Arc<dyn Behaviour>,
        outgoing: mpsc::UnboundedSender<ClientMessage>,
    ) -> Self {
        Self {
            me,
            factory,
            behaviour,
            sink: Arc::new(QueueSink(outgoing)),
            peers: HashMap::new(),
            links: HashMap::new(),
        }
    }

    /// Handles `incoming` until it ends or `leave` is cancelled, then closes every connection.
    pub async fn run(
        mut self,
        mut incoming: mpsc::Receiver<ServerMessage>,
        leave: CancellationToken,
    ) {
        loop {
            if leave.is_cancelled() {
                break;
            }
            tokio::select! {
                message = incoming.recv() => match message {
                    Some(message) => self.on_message(message).await,
                    None => break,
                },
                _ = leave.cancelled() => {}
            }
        }
        for (_, link) in self.links.drain() {
            link.close();
        }
    }

    /// The connections currently open, by remote peer id.
    pub fn links(&self) -> &HashMap<String, Link> {
        &self.links
    }

    /// Starts a link toward `peer`. It returns at once: the connection is built by the link's
    /// own task, so this peer keeps reading its messages (answers, candidates) meanwhile.
    fn connect(&mut self, peer: &PeerInfo, role: Role) -> &Link {
        let media = Arc::new(PeerMedia {
            peer: peer.clone(),
            behaviour: Arc::clone(&self.behaviour),
        });
        let sink: Arc<dyn SignalSink> = self.sink.clone();
        let polite = polite(&self.me, peer);
        let link = Link::start(&self.factory, &peer.id, polite, role, sink, media);
        self.links
            .entry(peer.id.clone())
            .insert_entry(link)
            .into_mut()
    }

    async fn on_message(&mut self, message: ServerMessage) {
        match message {
            ServerMessage::Welcome { id, peers, .. } => {
                self.me.id = id;
                for peer in peers {
                    self.peers.insert(peer.id.clone(), peer.clone());
                    if !peer.whip && self.behaviour.wants(&peer) {
                        self.connect(&peer, Role::Offerer);
                    }
                }
            }
            ServerMessage::PeerJoined { peer } => {
                self.peers.insert(peer.id.clone(), peer);
            }
            ServerMessage::PeerLeft { id } => {
                if let Some(link) = self.links.remove(&id) {
                    link.close();
                }
                if let Some(peer) = self.peers.remove(&id) {
                    self.behaviour.peer_left(&peer).await;
                }
            }
            ServerMessage::Offer { from, sdp } => {
                if let Some(link) = self.links.get(&from) {
                    link.offer(sdp);
                    return;
                }
                let Some(peer) = self.peers.get(&from).cloned() else {
                    return;
                };
                if !self.behaviour.wants(&peer) {
                    return;
                }
                self.connect(&peer, Role::Answerer).offer(sdp);
            }
            ServerMessage::Answer { from, sdp } => {
                if let Some(link) = self.links.get(&from) {
                    link.answer(sdp);
                }
            }
            ServerMessage::Candidate { from, candidate } => {
                if let Some(link) = self.links.get(&from) {
                    link.candidate(candidate.candidate());
                }
            }
            ServerMessage::Recording { .. } => {}
            ServerMessage::Error { code, message, .. } => {
                tracing::debug!(?code, %message, "the hub refused a message");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, bot: bool) -> PeerInfo {
        PeerInfo {
            id: id.into(),
            name: String::new(),
            bot,
            whip: false,
        }
    }

    #[test]
    fn glare_roles() {
        assert!(polite(&peer("z", true), &peer("a", false)));
        assert!(!polite(&peer("a", false), &peer("z", true)));
        assert!(polite(&peer("a", false), &peer("b", false)));
        assert!(!polite(&peer("b", true), &peer("a", true)));
    }
}
