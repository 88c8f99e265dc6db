//! The play bot: plays a media file from `--media-dir` to every peer of its room at real-time
//! pace, from the file's own timestamps, audio and video in step, once or in a loop.
//!
//! The file is read whole when the bot is created ([`load`]): Ogg Opus, or WebM/Matroska with
//! a VP8 and/or an Opus track (a recbot recording, muxed or not, plays as it was recorded).
//! One [`pump`] per kind sends it to the outlets of every connected peer, so the file plays
//! once for the room, not once per peer. Both pumps start together when the bot is created,
//! as soon as the peers already in the room are connected ([`StartGate`], at most
//! [`PRESENT_WAIT`]): those get the whole file from its first sample. A peer's outlets join
//! the pumps when its connection is up, so a peer that joins mid-play gets the stream from
//! where it is; its video starts at the file's next keyframe (a pre-encoded file cannot make
//! one on demand, so keyframe requests are not answered: a file with rare keyframes leaves a
//! late viewer's picture blank until the next one).
//!
//! The recorder is served too (a recording of the room records what the bot plays); other
//! bots are not.

pub use super::connected;
use super::registry::{Bot, BotError};
use super::Behaviour;
use super::Services;
use crate::peer::negotiation::Role;
use crate::peer::outlet::{pump, MediaFrame, Outlet, PumpOptions, SharedOutlets};
use crate::peer::{Pc, PeerError};
use crate::record::clip::{self, TimedFrame as Timed};
use crate::record::manifest::StopReason;
use crate::signal::protocol::PeerInfo;
use async_trait::async_trait;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use webrtc::media_stream::track_remote::TrackRemote;

/// Largest media file read (it is held in memory).
pub const MAX_MEDIA_BYTES: u64 = 256 * 1024 * 1024;
/// How long a new connection may take before the bot gives up sending to it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the start of play waits for the peers already in the room to connect; after it,
/// the file plays without those still connecting (they join mid-play, like late joiners).
pub const PRESENT_WAIT: Duration = Duration::from_secs(5);
/// A looping file shorter than this is refused (it would spin).
const MIN_LOOP: Duration = Duration::from_millis(100);
/// Frame length assumed for the last video frame of a file.
const LAST_VIDEO_FRAME: Duration = Duration::from_millis(33);
/// Media stream id of what the bots send.
pub const STREAM: &str = "recbot-bot";

/// A media file ready to send: its frames with durations taken from the file's timestamps.
///
/// Each kind starts `*_start` after the file's start, and one pass through each list lasts
/// exactly [`length`](Self::length): the last frame's duration reaches the next loop's first
/// frame of that kind, so audio and video stay in step over any number of loops.
#[derive(Debug, Clone)]
pub struct Media {
    /// VP8 frames (empty: no video).
    pub video: Arc<[MediaFrame]>,
    /// Opus packets (empty: no audio).
    pub audio: Arc<[MediaFrame]>,
    /// Where the first video frame sits.
    pub video_start: Duration,
    /// Where the first audio packet sits.
    pub audio_start: Duration,
    /// Length of one pass.
    pub length: Duration,
}

fn bad(name: &str, why: impl Into<String>) -> BotError {
    BotError::BadMedia(name.to_owned(), why.into())
}

/// Reads media file `path` (shown as `name` in errors): Ogg Opus, or WebM with VP8 and/or Opus
/// (the shared loader, [`crate::record::clip`]), paced as one pass.
pub fn load(path: &Path, name: &str) -> Result<Media, BotError> {
    let file = clip::load(path, MAX_MEDIA_BYTES).map_err(|e| bad(name, e.to_string()))?;
    let media = assemble(file.video, file.audio, file.declared_us);
    if media.video.is_empty() && media.audio.is_empty() {
        return Err(bad(name, "no VP8 frame or Opus packet in it"));
    }
    if media.length < MIN_LOOP {
        return Err(bad(name, "shorter than 100 ms"));
    }
    Ok(media)
}

/// Turns timed frames into paced frame lists sharing one pass length.
fn assemble(video: Vec<Timed>, audio: Vec<Timed>, declared_us: i64) -> Media {
    let base = [video.first(), audio.first()]
        .into_iter()
        .flatten()
        .map(|t| t.at_us)
        .min()
        .unwrap_or(0);
    let end_of = |list: &[Timed], default_us: i64| -> i64 {
        list.last().map_or(0, |last| {
            let own = if last.own_us > 0 {
                last.own_us
            } else {
                default_us
            };
            last.at_us.saturating_sub(base).saturating_add(own)
        })
    };
    let computed = end_of(&video, LAST_VIDEO_FRAME.as_micros() as i64).max(end_of(&audio, 20_000));
    // A declared duration (WebM `Duration`) that is a little longer is the file's real end
    // (recbot writes the live time there); a far larger one is not trusted.
    let length_us = if declared_us > computed && declared_us < computed.saturating_add(5_000_000) {
        declared_us
    } else {
        computed
    };
    let frames = |list: Vec<Timed>| -> (Vec<MediaFrame>, Duration) {
        let Some(first) = list.first().map(|t| t.at_us.saturating_sub(base)) else {
            return (Vec::new(), Duration::ZERO);
        };
        let n = list.len();
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let here = list[i].at_us.saturating_sub(base);
            // The last frame reaches the next pass's first frame.
            let next = list
                .get(i + 1)
                .map_or(length_us.saturating_add(first), |t| {
                    t.at_us.saturating_sub(base)
                });
            out.push(MediaFrame {
                duration: Duration::from_micros(next.saturating_sub(here).max(0) as u64),
                data: list[i].data.clone(),
                keyframe: list[i].keyframe,
                skip: false,
            });
        }
        (out, Duration::from_micros(first.max(0) as u64))
    };
    let (video, video_start) = frames(video);
    let (audio, audio_start) = frames(audio);
    Media {
        video: video.into(),
        audio: audio.into(),
        video_start,
        audio_start,
        length: Duration::from_micros(length_us.max(0) as u64),
    }
}

/// Reads a track nobody uses, so that webrtc-rs does not queue its packets.
pub async fn drain(track: Arc<dyn TrackRemote>) {
    while track.poll().await.is_some() {}
}

/// What the start of play waits for: the peers in the room when the bot was created, each
/// until its connection is up with its outlets joined to the pumps, has failed or given up,
/// or the peer has left. Opens once none is pending; never closes again.
pub struct StartGate {
    pending: Mutex<HashSet<String>>,
    open: watch::Sender<bool>,
}

impl StartGate {
    /// A gate waiting for the peers `present` (open at once if there are none).
    pub fn new(present: impl IntoIterator<Item = String>) -> Self {
        let pending: HashSet<String> = present.into_iter().collect();
        let (open, _) = watch::channel(pending.is_empty());
        Self {
            pending: Mutex::new(pending),
            open,
        }
    }

    /// Peer `id` no longer holds the start (connected, failed, or left). Other ids are ignored.
    pub fn settled(&self, id: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.remove(id) && pending.is_empty() {
            self.open.send_replace(true);
        }
    }

    /// Waits until every present peer has settled (true) or `within` has passed (false).
    pub async fn wait(&self, within: Duration) -> bool {
        let mut open = self.open.subscribe();
        let waited = tokio::time::timeout(within, open.wait_for(|open| *open)).await;
        matches!(waited, Ok(Ok(_)))
    }
}

/// Whether the bot plays to `peer`: people and the recorder, not other bots.
fn serves(peer: &PeerInfo) -> bool {
    !peer.bot || peer.name == super::recorder::RECORDER_NAME
}

/// The play bot's behaviour.
struct Player {
    bot: Arc<Bot>,
    media: Arc<Media>,
    outlets: SharedOutlets,
    gate: Arc<StartGate>,
}

#[async_trait]
impl Behaviour for Player {
    fn wants(&self, peer: &PeerInfo) -> bool {
        serves(peer)
    }

    async fn setup(&self, peer: &PeerInfo, pc: &Pc, _role: Role) -> Result<(), PeerError> {
        let mut added = Vec::new();
        if !self.media.video.is_empty() {
            added.push(Outlet::add(pc, RtpCodecKind::Video, STREAM, None).await?);
        }
        if !self.media.audio.is_empty() {
            added.push(Outlet::add(pc, RtpCodecKind::Audio, STREAM, None).await?);
        }
        self.bot.add_peer(&peer.id);
        let (pc, bot, outlets, gate, id) = (
            Arc::clone(pc),
            Arc::clone(&self.bot),
            Arc::clone(&self.outlets),
            Arc::clone(&self.gate),
            peer.id.clone(),
        );
        tokio::spawn(async move {
            if connected(&pc, CONNECT_TIMEOUT).await {
                // Checked under the outlets' lock: a peer that left meanwhile is not added back.
                let mut outlets = outlets.lock().unwrap_or_else(|e| e.into_inner());
                if bot.has_peer(&id) {
                    for outlet in added {
                        outlets.add(&id, outlet);
                    }
                }
            } else {
                tracing::debug!(peer = %id, "no connection: nothing played to it");
            }
            // After its outlets joined: the pumps' first frames reach it.
            gate.settled(&id);
        });
        Ok(())
    }

    async fn on_track(&self, _peer: &PeerInfo, track: Arc<dyn TrackRemote>) {
        drain(track).await;
    }

    async fn peer_left(&self, peer: &PeerInfo) {
        self.bot.remove_peer(&peer.id);
        self.outlets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove_peer(&peer.id);
        self.gate.settled(&peer.id);
    }
}

/// Puts play bot `bot` in its room and starts playing `media` once the peers already in the
/// room are connected (at most [`PRESENT_WAIT`]). Returns its peer id.
pub async fn start(
    services: &Arc<Services>,
    bot: &Arc<Bot>,
    media: Arc<Media>,
) -> Result<String, BotError> {
    let outlets = SharedOutlets::default();
    // The peers the bot will offer to from its `welcome` (WHIP publishers get no connection),
    // taken before it joins so that none can settle before it is waited for. One who leaves in
    // between holds the start at most PRESENT_WAIT; one who arrives in between is served like
    // a late joiner.
    let present = services
        .hub
        .peers(bot.room())
        .into_iter()
        .filter(|p| !p.whip && serves(p))
        .map(|p| p.id);
    let gate = Arc::new(StartGate::new(present));
    let behaviour = Arc::new(Player {
        bot: Arc::clone(bot),
        media: Arc::clone(&media),
        outlets: Arc::clone(&outlets),
        gate: Arc::clone(&gate),
    });
    let peer = super::join(
        &services.hub,
        Arc::clone(&services.factory),
        bot.room(),
        "play",
        behaviour,
        bot.leave_signal(),
    )
    .await?;
    let looping = bot.spec().looping;
    let bot = Arc::clone(bot);
    tokio::spawn(async move {
        let leave = bot.leave_signal();
        tokio::select! {
            everyone = gate.wait(PRESENT_WAIT) => if !everyone {
                tracing::info!(bot = %bot.id(), "playing before every peer present is connected");
            },
            // Deleted meanwhile: the pumps see it and end at once.
            _ = leave.cancelled() => {}
        }
        // One clock for both kinds: audio and video stay in step.
        let origin = tokio::time::Instant::now();
        let pumps = [
            (&media.video, media.video_start, RtpCodecKind::Video),
            (&media.audio, media.audio_start, RtpCodecKind::Audio),
        ]
        .map(|(frames, start, kind)| {
            let frames = Arc::clone(frames);
            let outlets = Arc::clone(&outlets);
            let leave = bot.leave_signal();
            tokio::spawn(async move {
                tokio::time::sleep_until(origin + start).await;
                let options = PumpOptions {
                    kind,
                    looping,
                    keyframe_wanted: None,
                    sent: Arc::new(AtomicU64::new(0)),
                };
                pump(frames, outlets, options, leave).await;
            })
        });
        for pump in pumps {
            let _ = pump.await;
        }
        if !looping {
            // The last packets reach the peers before the connections close.
            tokio::time::sleep(Duration::from_millis(500)).await;
            tracing::info!(bot = %bot.id(), "end of the file");
            bot.stop(StopReason::Requested).await;
        }
    });
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn timed(at_ms: i64, own_ms: i64) -> Timed {
        Timed {
            at_us: at_ms * 1000,
            data: Bytes::from_static(&[0]),
            keyframe: true,
            own_us: own_ms * 1000,
        }
    }

    #[test]
    fn passes_of_both_kinds_have_one_length() {
        let video = vec![timed(7, 0), timed(74, 0), timed(140, 0)];
        let audio = vec![timed(0, 20), timed(20, 20), timed(40, 20), timed(60, 20)];
        let media = assemble(video, audio, 0);
        assert_eq!(media.video_start, Duration::from_millis(7));
        assert_eq!(media.audio_start, Duration::ZERO);
        // 140 + 33 ms for the last frame.
        assert_eq!(media.length, Duration::from_millis(173));
        let sum = |f: &[MediaFrame]| f.iter().map(|f| f.duration).sum::<Duration>();
        assert_eq!(sum(&media.video), media.length);
        assert_eq!(sum(&media.audio), media.length);
        assert_eq!(media.video[0].duration, Duration::from_millis(67));
        assert_eq!(media.audio[1].duration, Duration::from_millis(20));
        // A declared duration a little longer wins.
        let media = assemble(vec![timed(0, 0)], vec![], 1_000_000);
        assert_eq!(media.length, Duration::from_secs(1));
    }

    #[tokio::test]
    async fn the_start_waits_for_the_present_peers_within_its_bound() {
        // Nobody present: open at once.
        assert!(StartGate::new([]).wait(Duration::ZERO).await);
        let gate = StartGate::new(["a".to_owned(), "b".to_owned()]);
        gate.settled("a");
        gate.settled("stranger");
        // "b" never connects: the wait ends at the bound, closed.
        assert!(!gate.wait(Duration::from_millis(50)).await);
        gate.settled("b");
        assert!(gate.wait(Duration::ZERO).await);
        gate.settled("b");
        assert!(gate.wait(Duration::ZERO).await, "an open gate stays open");
    }

    #[test]
    fn the_test_clips_load() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let tone = load(&data.join("tone.ogg"), "tone.ogg").unwrap();
        assert!(tone.video.is_empty());
        assert_eq!(tone.audio.len(), 251);
        assert!(
            (tone.length.as_secs_f64() - 5.02).abs() < 0.001,
            "{:?}",
            tone.length
        );
        let av = load(&data.join("play10.webm"), "play10.webm").unwrap();
        assert_eq!(av.video.len(), 150);
        assert!(av.video[0].keyframe);
        assert!(
            (av.length.as_secs_f64() - 10.0).abs() < 0.05,
            "{:?}",
            av.length
        );
        assert!(matches!(
            load(&data.join("clip.ivf"), "clip.ivf"),
            Err(BotError::BadMedia(..))
        ));
    }
}
