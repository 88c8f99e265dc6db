//! The client side (`recbot publish`): joins a room over the WebSocket signaling as ordinary peer(s) and sends
//! pre-encoded VP8 (IVF) and Opus (Ogg) at real-time pace, looping. The manual test client,
//! the integration tests' publisher and the load generator.
//!
//! It uses the same room machinery as the bots ([`crate::peer::room`]). By default it connects
//! only to bots (a recorder needs its media; other publishers do not); `--mesh` connects to
//! everyone. Like an encoder, it answers a keyframe request (PLI/FIR) by jumping to the
//! clip's next keyframe.

//!
//! [`clip`] loads the media, [`ws`] joins a room over the WebSocket signaling (and
//! [`ws::connect_room`] gives tests a peer of their own), [`whip`] publishes over WHIP; this
//! module holds the command's options, the publisher's behaviour and its pumps.

pub mod clip;
pub mod whip;
pub mod ws;

pub use clip::Clip;
pub use whip::start_whip;
pub use ws::{connect_room, start, RoomConnection};

use crate::peer::negotiation::Role;
use crate::peer::outlet::{pump, MediaFrame, Outlet, PumpOptions, SharedOutlets};
use crate::peer::room::Behaviour;
use crate::peer::{Pc, PeerConfig, PeerError, PeerFactory};
use crate::signal::protocol::PeerInfo;
use async_trait::async_trait;
use clap::Args;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_remote::TrackRemote;

/// Options of `recbot publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Base URL of the service.
    #[arg(long, env = "RECBOT_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Room to join.
    #[arg(long)]
    pub room: String,
    /// VP8 clip (IVF) to send.
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Opus clip (Ogg) to send.
    #[arg(long)]
    pub audio: Option<PathBuf>,
    /// Display name (with `--count`, `-N` is appended).
    #[arg(long, default_value = "publisher")]
    pub name: String,
    /// How many publishers to run.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Room token.
    #[arg(long, env = "RECBOT_ROOM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Connect to every peer, not only to bots.
    #[arg(long)]
    pub mesh: bool,
    /// Publish over WHIP to this endpoint instead of the WebSocket signaling
    /// (e.g. `http://127.0.0.1:8080/rooms/demo/whip`); `--room` is then ignored.
    #[arg(long)]
    pub whip: Option<String>,
    /// Simulate a bad network: drop this fraction of outgoing RTP packets (e.g. 0.05).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Keep the clip's own pace: do not jump to the next keyframe on a keyframe request, so
    /// the video stays in step with the audio (for checking A/V sync). Not with `--whip`.
    #[arg(long, conflicts_with = "whip")]
    pub ignore_keyframe_requests: bool,
}

/// How a publisher behaves.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Room token.
    pub token: Option<String>,
    /// Connect to every peer, not only to bots.
    pub mesh: bool,
    /// Ignore keyframe requests (keep the clip's own pace; audio and video stay in step).
    pub ignore_keyframe_requests: bool,
}

/// Errors of the publisher.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A clip could not be read.
    #[error("clip {0}: {1}")]
    Clip(PathBuf, String),
    /// Neither video nor audio given.
    #[error("nothing to send: give --video and/or --audio")]
    NoMedia,
    /// The signaling connection failed.
    #[error("signaling: {0}")]
    Signal(String),
}

/// Counters of one publisher.
#[derive(Debug, Default)]
pub struct PublishStats {
    /// Video frames handed to connections.
    pub video_frames: Arc<AtomicU64>,
    /// Audio packets handed to connections.
    pub audio_packets: Arc<AtomicU64>,
    /// Keyframe requests received.
    pub keyframe_requests: AtomicU64,
    /// Signaling sessions resumed after the WebSocket dropped (SPEC §10).
    pub resumes: Arc<AtomicU64>,
}

/// The publisher's behaviour in the room.
pub(crate) struct Publisher {
    pub(crate) clip: Arc<Clip>,
    pub(crate) mesh: bool,
    pub(crate) outlets: SharedOutlets,
    pub(crate) keyframe_wanted: Arc<AtomicBool>,
    pub(crate) stats: Arc<PublishStats>,
}

impl Publisher {
    pub(crate) async fn add(
        &self,
        pc: &Pc,
        peer: &str,
        kind: RtpCodecKind,
    ) -> Result<(), PeerError> {
        let callback: Option<Arc<dyn Fn() + Send + Sync>> = if kind == RtpCodecKind::Video {
            let wanted = Arc::clone(&self.keyframe_wanted);
            let stats = Arc::clone(&self.stats);
            Some(Arc::new(move || {
                stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                wanted.store(true, Ordering::Relaxed);
            }))
        } else {
            None
        };
        let outlet = Outlet::add(pc, kind, "recbot-publish", callback).await?;
        self.outlets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(peer, outlet);
        Ok(())
    }
}

#[async_trait]
impl Behaviour for Publisher {
    fn wants(&self, peer: &PeerInfo) -> bool {
        self.mesh || peer.bot
    }

    async fn setup(&self, peer: &PeerInfo, pc: &Pc, _role: Role) -> Result<(), PeerError> {
        if !self.clip.video.is_empty() {
            self.add(pc, &peer.id, RtpCodecKind::Video).await?;
        }
        if !self.clip.audio.is_empty() {
            self.add(pc, &peer.id, RtpCodecKind::Audio).await?;
        }
        // A new viewer needs a keyframe to start decoding.
        self.keyframe_wanted.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn on_track(&self, _peer: &PeerInfo, track: Arc<dyn TrackRemote>) {
        // Nothing is done with received media; reading it keeps webrtc-rs's queue empty.
        while track.poll().await.is_some() {}
    }
}

/// A running publisher.
pub struct PublisherHandle {
    /// Its peer id in the room.
    pub id: String,
    /// Its counters.
    pub stats: Arc<PublishStats>,
    pub(crate) leave: CancellationToken,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl PublisherHandle {
    /// Leaves the room (sends `leave`, closes connections) and waits for it.
    pub async fn leave(self) {
        self.leave.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Percent-encodes a query value.
pub(crate) fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Starts the pumps playing `clip` (video and audio, looping) to `outlets`.
pub(crate) fn spawn_pumps(
    clip: &Clip,
    outlets: &SharedOutlets,
    keyframe_wanted: Option<Arc<AtomicBool>>,
    stats: &PublishStats,
    leave: &CancellationToken,
) -> [tokio::task::JoinHandle<()>; 2] {
    [
        (&clip.video, RtpCodecKind::Video, &stats.video_frames),
        (&clip.audio, RtpCodecKind::Audio, &stats.audio_packets),
    ]
    .map(|(frames, kind, sent)| {
        let frames: Arc<[MediaFrame]> = frames.as_slice().into();
        tokio::spawn(pump(
            frames,
            Arc::clone(outlets),
            PumpOptions {
                kind,
                looping: true,
                keyframe_wanted: keyframe_wanted
                    .clone()
                    .filter(|_| kind == RtpCodecKind::Video),
                sent: Arc::clone(sent),
            },
            leave.clone(),
        ))
    })
}

/// The `recbot publish` command: runs `count` publishers until Ctrl-C or `--duration`.
pub async fn run(args: PublishArgs) -> Result<(), PublishError> {
    let clip = Clip::load(args.video.as_deref(), args.audio.as_deref())?;
    let mut config = PeerConfig::loopback_and_all();
    if args.loss > 0.0 {
        config.outbound_loss = Some(crate::peer::LossSpec {
            drop: args.loss.min(1.0),
            reorder: args.loss.min(1.0),
            seed: rand::random(),
            sticky: false,
        });
    }
    let factory = PeerFactory::new(config);
    let options = PublishOptions {
        token: args.token.clone(),
        mesh: args.mesh,
        ignore_keyframe_requests: args.ignore_keyframe_requests,
    };
    let mut handles = Vec::new();
    for i in 0..args.count.max(1) {
        let name = if args.count > 1 {
            format!("{}-{}", args.name, i + 1)
        } else {
            args.name.clone()
        };
        let handle = match &args.whip {
            Some(url) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                let url = format!("{url}{sep}name={}", encode_query(&name));
                start_whip(
                    &url,
                    args.token.as_deref(),
                    Arc::clone(&clip),
                    Arc::clone(&factory),
                )
                .await?
            }
            None => {
                start(
                    &args.server,
                    &args.room,
                    &name,
                    Arc::clone(&clip),
                    Arc::clone(&factory),
                    options.clone(),
                )
                .await?
            }
        };
        tracing::info!(peer = %handle.id, name, room = %args.room, "publishing");
        handles.push(handle);
    }
    match args.duration {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    for handle in handles {
        handle.leave().await;
    }
    Ok(())
}
