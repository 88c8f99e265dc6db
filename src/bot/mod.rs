//! Bots: recbot's own peers in rooms. A bot joins the hub in-process like any participant
//! and runs the shared room machinery ([`crate::peer::room`]) with its own [`Behaviour`].
//! Bots reach the running service through [`Services`], not through the HTTP state.

pub mod echo;
pub mod launch;
pub mod play;
pub mod recorder;
pub mod registry;
pub mod voicemail;

use crate::events::Events;
pub use crate::peer::room::Behaviour;
use crate::peer::room::RoomPeer;
use crate::peer::whip::WhipSessions;
use crate::peer::PeerFactory;
use crate::record::disk::DiskGuard;
use crate::record::store::RecordingStore;
use crate::signal::hub::{Hub, JoinError, MemberKind};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What bots (the recorder, echo, play, voicemail) use of the running service: the shared
/// parts below them and the few options they read. Built once at startup; shared in an `Arc`.
pub struct Services {
    /// Rooms and members.
    pub hub: Arc<Hub>,
    /// Builds peer connections.
    pub factory: Arc<PeerFactory>,
    /// All recordings.
    pub store: Arc<RecordingStore>,
    /// WHIP publishers' sessions (recordings subscribe to their tracks).
    pub whip: Arc<WhipSessions>,
    /// Free space of the recordings directory (no recording starts when it is low).
    pub disk: Arc<DiskGuard>,
    /// Where `play` and `voicemail` media are looked up (`--media-dir`).
    pub media_dir: PathBuf,
    /// Longest recording (`--max-recording-s`); a request may only shorten it.
    pub max_recording: Duration,
    /// The consent notice's Opus packets (`--notice-media` or the built-in clip; never empty).
    pub notice: Arc<[crate::peer::outlet::MediaFrame]>,
    /// Object storage (`--s3-bucket`), when configured.
    pub storage: Option<Arc<crate::store::Storage>>,
    /// Where recording and bot events go (webhooks; a no-op when none are configured).
    pub events: Events,
}
use tokio::sync::mpsc;
use tracing::Instrument;

/// Joins `room` as a bot named `name` and runs `behaviour` until `leave` is cancelled.
/// Returns the bot's peer id.
pub async fn join(
    hub: &Arc<Hub>,
    factory: Arc<PeerFactory>,
    room: &str,
    name: &str,
    behaviour: Arc<dyn Behaviour>,
    leave: tokio_util::sync::CancellationToken,
) -> Result<String, JoinError> {
    let (membership, welcome, mut from_hub) = hub.join_ordered(room, name, MemberKind::Bot).await?;
    let id = membership.id().to_owned();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let (in_tx, in_rx) = mpsc::channel(crate::signal::hub::MEMBER_QUEUE);
    let presence = RoomPeer::new(membership.info().clone(), factory, behaviour, out_tx);
    let span = tracing::info_span!("bot", room = %room, peer = %id, name = %name);
    tokio::spawn(
        async move {
            // The membership lives in this task: the bot is in the room exactly as long as
            // its presence runs; outgoing messages are relayed with its `from`.
            let room_task = tokio::spawn(presence.run(in_rx, leave).in_current_span());
            if in_tx.send(welcome).await.is_err() {
                return;
            }
            tokio::pin!(room_task);
            loop {
                tokio::select! {
                    _ = &mut room_task => break,
                    message = from_hub.recv() => match message {
                        Some(message) => {
                            let message = Arc::unwrap_or_clone(message);
                            if in_tx.send(message).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    Some(out) = out_rx.recv() => {
                        if let Err(refusal) = membership.relay(out) {
                            tracing::debug!(code = ?refusal.code, "bot message refused");
                        }
                    }
                }
            }
            tracing::info!("bot left");
            drop(membership);
        }
        .instrument(span),
    );
    Ok(id)
}

/// Waits until `pc`'s DTLS transport is connected (true), or failed, closed or `within`
/// passed (false). Media written before that would be lost.
pub async fn connected(pc: &crate::peer::Pc, within: Duration) -> bool {
    use rtc::peer_connection::transport::RTCDtlsTransportState;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let report = pc
            .get_stats(
                std::time::Instant::now(),
                webrtc::peer_connection::StatsSelector::None,
            )
            .await;
        match report.transport().map(|t| t.dtls_state) {
            Some(RTCDtlsTransportState::Connected) => return true,
            Some(RTCDtlsTransportState::Failed | RTCDtlsTransportState::Closed) => return false,
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
