//! WHIP ingest (RFC 9725, SPEC §3): the sessions of publishers whose offer came by
//! `POST /rooms/{room}/whip` (the routes and their checks are in `api::whip`).
//!
//! A WHIP session is a publisher whose media ends at the server. Its connection answers the
//! offer with every local candidate in the SDP (no trickle: `PATCH` answers 405). It joins the
//! room as a member with `whip: true`, which nobody negotiates with. Each track it sends is
//! read by one task and fanned out through a [`Relay`]. The room's recording, present or
//! future, subscribes to it ([`WhipSessions::tracks_of`], [`WhipSessions::announcements`]).
//! `DELETE` on the session's Location ends it, and so does a failed connection.
//!
//! A session is named by its publisher's peer id and holds a secret of its own: its Location is
//! `/rooms/{room}/whip/{peer id}.{secret}`. `DELETE` and `PATCH` act only on a session of the
//! room in the path whose secret matches (compared in constant time), with the room token as
//! bearer when one is configured; the API token as bearer ends any session by its peer id
//! (`/rooms/{room}/whip/{peer id}`, for operators). Anything else is `404`.

use super::{Pc, PeerError, PeerFactory};
use crate::limits::{ClientPermit, FdPermit};
use crate::media::source::{MediaSource, Relay, RemoteSource};
use crate::signal::hub::{Hub, JoinError, MemberKind, Membership};
use crate::signal::protocol::PeerInfo;
use crate::util::secret_matches;
use async_trait::async_trait;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnectionEventHandler, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
};

/// How long the answer waits for local candidates to be gathered.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(3);

/// One track a WHIP publisher sends, as recordings subscribe to it.
#[derive(Clone)]
pub struct WhipTrack {
    /// The publisher, as the room sees it.
    pub peer: PeerInfo,
    /// The room.
    pub room: String,
    /// video | audio.
    pub kind: RtpCodecKind,
    /// `video/vp8` or `audio/opus`.
    pub mime: String,
    /// The fan-out of its packets.
    pub relay: Arc<Relay>,
}

struct Session {
    room: String,
    /// 256 random bits in hex: the capability the Location carries.
    secret: String,
    peer: PeerInfo,
    pc: Pc,
    tracks: Vec<WhipTrack>,
    /// Cancelled when the session ends (its track tasks, membership and reaper stop).
    end: CancellationToken,
    /// Its client's slot and its descriptors, given back when the session is removed.
    _permits: (ClientPermit, FdPermit),
}

/// The WHIP sessions of the service.
pub struct WhipSessions {
    sessions: Mutex<HashMap<String, Session>>,
    announce: broadcast::Sender<WhipTrack>,
}

impl Default for WhipSessions {
    fn default() -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            announce: broadcast::Sender::new(64),
        }
    }
}

impl WhipSessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tracks WHIP publishers send in `room` now.
    pub fn tracks_of(&self, room: &str) -> Vec<WhipTrack> {
        self.lock()
            .values()
            .filter(|s| s.room == room)
            .flat_map(|s| s.tracks.iter().cloned())
            .collect()
    }

    /// Every WHIP track that starts from now on, in any room.
    pub fn announcements(&self) -> broadcast::Receiver<WhipTrack> {
        self.announce.subscribe()
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn add_track(&self, session: &str, track: WhipTrack) {
        let mut sessions = self.lock();
        if let Some(s) = sessions.get_mut(session) {
            s.tracks.push(track.clone());
            let _ = self.announce.send(track);
        }
    }

    /// The key of the session `id` names in `room` (`{peer id}.{secret}`, or the peer id alone
    /// when `operator`), if that session exists there and the secret matches.
    pub fn find(&self, room: &str, id: &str, operator: bool) -> Option<String> {
        let (key, secret) = match id.split_once('.') {
            Some((key, secret)) => (key, Some(secret)),
            None => (id, None),
        };
        let sessions = self.lock();
        let session = sessions.get(key)?;
        let allowed = session.room == room
            && (operator || secret.is_some_and(|s| secret_matches(s, &session.secret)));
        allowed.then(|| key.to_owned())
    }

    /// Ends a session: closes its connection; its relays end, so do recordings of it.
    /// Whether there was such a session.
    pub fn end(&self, id: &str) -> bool {
        let Some(session) = self.lock().remove(id) else {
            return false;
        };
        session.end.cancel();
        let pc = session.pc;
        tokio::spawn(async move {
            let _ = pc.close().await;
        });
        tracing::info!(room = %session.room, peer = %session.peer.id, "WHIP session ended");
        true
    }
}

/// A new session secret: 256 random bits in lowercase hex.
fn new_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Handler {
    sessions: Arc<WhipSessions>,
    session: String,
    peer: PeerInfo,
    room: String,
    gathered: watch::Sender<bool>,
    connected: watch::Sender<bool>,
    end: CancellationToken,
}

#[async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            self.connected.send_replace(true);
        }
        if matches!(
            state,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
        ) {
            self.sessions.end(&self.session);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some((ssrc, mime)) = RemoteSource::describe(&track).await else {
            return;
        };
        let kind = track.kind().await;
        let (relay, mut keyframes) = Relay::new();
        self.sessions.add_track(
            &self.session,
            WhipTrack {
                peer: self.peer.clone(),
                room: self.room.clone(),
                kind,
                mime,
                relay: Arc::clone(&relay),
            },
        );
        let end = self.end.clone();
        tokio::spawn(async move {
            let mut source = RemoteSource::new(track, ssrc);
            loop {
                tokio::select! {
                    event = source.next() => match event {
                        Some(event) => relay.publish(event),
                        None => break,
                    },
                    Some(()) = keyframes.recv() => source.request_keyframe().await,
                    _ = end.cancelled() => break,
                }
            }
            relay.close();
        });
    }
}

/// Why a WHIP session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The hub refused the publisher (room full, no room left, at capacity).
    #[error(transparent)]
    Join(#[from] JoinError),
    /// The peer connection could not be built or described.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The offer could not be answered (the client's fault).
    #[error("the offer cannot be answered: {0}")]
    Answer(webrtc::error::Error),
}

/// A session opened by [`WhipSessions::open`].
pub struct Opened {
    /// Its key: the publisher's peer id.
    pub session: String,
    /// Its secret (for the Location).
    pub secret: String,
    /// The SDP answer, with every local candidate.
    pub answer: String,
}

impl WhipSessions {
    /// Opens a session for `offer` (already filtered by the candidate policy): joins `room` as
    /// a WHIP member named `name`, answers with every candidate gathered within
    /// [`GATHER_TIMEOUT`], and keeps the session, holding `permits`, until it is ended, its
    /// connection fails, or it is not connected within `reap_after`.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        factory: &PeerFactory,
        room: &str,
        name: &str,
        offer: RTCSessionDescription,
        permits: (ClientPermit, FdPermit),
        reap_after: Duration,
    ) -> Result<Opened, OpenError> {
        let (membership, _welcome, mut queue) =
            hub.join_ordered(room, name, MemberKind::Whip).await?;
        let peer = membership.info().clone();
        let session = peer.id.clone();
        let secret = new_secret();
        let (gathered, mut gathered_rx) = watch::channel(false);
        let end = CancellationToken::new();
        let (connected, connected_rx) = watch::channel(false);
        let handler = Arc::new(Handler {
            sessions: Arc::clone(self),
            session: session.clone(),
            peer: peer.clone(),
            room: room.to_owned(),
            gathered,
            connected,
            end: end.clone(),
        });
        let pc = factory.build(handler).await?;
        let answer = async {
            pc.set_remote_description(offer).await?;
            let answer = pc.create_answer(None).await?;
            pc.set_local_description(answer).await?;
            Ok::<(), webrtc::error::Error>(())
        }
        .await;
        if let Err(e) = answer {
            let _ = pc.close().await;
            return Err(OpenError::Answer(e));
        }
        let _ =
            tokio::time::timeout(GATHER_TIMEOUT, crate::util::until_true(&mut gathered_rx)).await;
        let Some(local) = pc.local_description().await else {
            let _ = pc.close().await;
            return Err(PeerError::BadSdp("no local description".into()).into());
        };
        factory.route_tcp(&pc, &local.sdp);
        self.lock().insert(
            session.clone(),
            Session {
                room: room.to_owned(),
                secret: secret.clone(),
                peer: peer.clone(),
                pc: Arc::clone(&pc),
                tracks: Vec::new(),
                end: end.clone(),
                _permits: permits,
            },
        );
        self.reap_if_unconnected(&session, reap_after, connected_rx, end.clone());
        // The membership lives as long as the session; its queue is drained (nobody negotiates
        // with a WHIP peer, but room notices still arrive).
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = queue.recv() => if message.is_none() { break },
                    _ = end.cancelled() => break,
                }
            }
            drop::<Membership>(membership);
        });
        tracing::info!(room, peer = %peer.id, "WHIP session started");
        Ok(Opened {
            session,
            secret,
            answer: super::advertised_sdp(
                &local.sdp,
                &factory.config().public_ips,
                factory.config().tcp_port,
            ),
        })
    }

    /// Removes the session if its connection is not up within `after` (ICE never succeeded: a
    /// publisher that went away, or offers sent only to take a room), freeing its slots.
    fn reap_if_unconnected(
        self: &Arc<Self>,
        session: &str,
        after: Duration,
        mut connected: watch::Receiver<bool>,
        end: CancellationToken,
    ) {
        let sessions = Arc::clone(self);
        let session = session.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                _ = crate::util::until_true(&mut connected) => {}
                _ = end.cancelled() => {}
                _ = tokio::time::sleep(after) => {
                    if sessions.end(&session) {
                        tracing::warn!(session, "WHIP session removed: not connected in time");
                    }
                }
            }
        });
    }
}
