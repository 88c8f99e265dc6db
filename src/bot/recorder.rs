//! The recorder bot: joins a room, receives every participant's VP8 and Opus tracks, and
//! hands each to a track task of its [`Recording`].
//!
//! Chat (SPEC §11): every connection of the recorder carries a DataChannel labelled `chat`. In
//! the offers the recorder makes it creates the channel (so the offer has its m=application
//! section); when a participant offers, the recorder takes the channel it opens. Each message
//! goes to [`Recording::chat`] (`chat.jsonl`).
//!
//! Consent notice (`"notice": true`): the recorder sends audio too (`sendrecv`) and plays the
//! notice clip ([`Services::notice`]) once to each participant as soon as its connection is up:
//! those present at the start and each later joiner. Nothing is sent without it.

use super::Behaviour;
use super::Services;
use crate::events::{EventKind, Events};
use crate::media::source::{MediaSource, RemoteSource};
use crate::peer::negotiation::Role;
use crate::peer::outlet::{pump, MediaFrame, Outlet, PumpOptions, SharedOutlets};
use crate::peer::{Pc, PeerError};
use crate::record::chat::CHANNEL_LABEL;
use crate::record::manifest::{Kind, State, StopReason};
use crate::record::session::ChatOutcome;
use crate::record::session::{RecordOptions, Recording};
use crate::record::store::RecordError;
use crate::record::track;
use crate::signal::protocol::{PeerInfo, RecordingNotice, ServerMessage};
use async_trait::async_trait;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::TrackRemote;

/// Display name of the recorder in rooms.
pub const RECORDER_NAME: &str = "recorder";

/// The built-in consent notice: Ogg Opus, mono, 20 ms packets, ≈ 2 s. Made with
/// `espeak-ng -v en-us -s 160 -w notice.wav "This meeting is being recorded."` and
/// `opusenc --bitrate 24 --framesize 20 --comment title="recbot consent notice" notice.wav
/// assets/notice.ogg` (espeak-ng 1.51, opus-tools 0.2 from Debian 12).
pub const BUILTIN_NOTICE: &[u8] = include_bytes!("../../assets/notice.ogg");

/// Largest `--notice-media` file read (it is held in memory).
pub const NOTICE_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// How long the notice waits for a participant's connection before giving up on it.
pub const NOTICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The consent notice's packets: `path` (`--notice-media`, Ogg Opus) or [`BUILTIN_NOTICE`].
/// Refuses a file that does not load or holds no audio.
pub fn notice_clip(path: Option<&Path>) -> Result<Arc<[MediaFrame]>, String> {
    let bytes = match path {
        Some(path) => crate::record::clip::read_limited(path, NOTICE_MAX_BYTES)
            .map_err(|e| format!("{}: {e}", path.display()))?,
        None => BUILTIN_NOTICE.to_vec(),
    };
    let packets = crate::record::clip::ogg_audio(&bytes).map_err(|e| e.to_string())?;
    let frames: Vec<MediaFrame> = packets
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // To the next packet's position; the last one lasts its own length (TOC).
            let next = packets.get(i + 1).map_or(p.at_us + p.own_us, |n| n.at_us);
            MediaFrame {
                data: p.data.clone(),
                duration: Duration::from_micros((next - p.at_us).max(0) as u64),
                keyframe: true,
                skip: false,
            }
        })
        .collect();
    if frames.is_empty() {
        return Err("no Opus audio in the notice".into());
    }
    Ok(frames.into())
}

/// The recorder's behaviour in its room.
pub struct Recorder {
    recording: Arc<Recording>,
    /// The notice's packets, when the recording speaks one.
    notice: Option<Arc<[MediaFrame]>>,
}

#[async_trait]
impl Behaviour for Recorder {
    fn wants(&self, _peer: &PeerInfo) -> bool {
        true
    }

    async fn setup(&self, peer: &PeerInfo, pc: &Pc, role: Role) -> Result<(), PeerError> {
        if let Some(notice) = &self.notice {
            // sendrecv audio: the participant's audio is still received on it.
            let outlet = Outlet::add(pc, RtpCodecKind::Audio, "recbot-notice", None).await?;
            self.speak(peer, pc, outlet, Arc::clone(notice));
        }
        if role == Role::Offerer {
            let kinds: &[RtpCodecKind] = if self.notice.is_some() {
                &[RtpCodecKind::Video]
            } else {
                &[RtpCodecKind::Audio, RtpCodecKind::Video]
            };
            for kind in kinds {
                pc.add_transceiver_from_kind(
                    *kind,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        ..Default::default()
                    }),
                )
                .await?;
            }
            // In the offer, so the m=application section is negotiated.
            let channel = pc.create_data_channel(CHANNEL_LABEL, None).await?;
            read_chat(Arc::clone(&self.recording), peer.clone(), channel);
        }
        Ok(())
    }

    async fn on_data_channel(&self, peer: &PeerInfo, channel: Arc<dyn DataChannel>) {
        match channel.label().await {
            Ok(label) if label == CHANNEL_LABEL => {
                read_chat(Arc::clone(&self.recording), peer.clone(), channel)
            }
            Ok(label) => tracing::debug!(peer = %peer.id, %label, "DataChannel ignored"),
            Err(e) => tracing::debug!(peer = %peer.id, error = %e, "DataChannel gone"),
        }
    }

    async fn on_track(&self, peer: &PeerInfo, track: Arc<dyn TrackRemote>) {
        let Some((ssrc, mime)) = RemoteSource::describe(&track).await else {
            tracing::warn!(peer = %peer.id, "track without SSRC ignored");
            return;
        };
        record(&self.recording, peer, &mime, RemoteSource::new(track, ssrc));
    }

    async fn peer_left(&self, peer: &PeerInfo) {
        self.recording.participant_left(&peer.id);
    }
}

impl Recorder {
    /// Plays the notice once to `peer` through `outlet` as soon as its connection is up.
    fn speak(&self, peer: &PeerInfo, pc: &Pc, outlet: Arc<Outlet>, notice: Arc<[MediaFrame]>) {
        let pc = Arc::clone(pc);
        let leave = self.recording.leave_signal();
        let id = peer.id.clone();
        tokio::spawn(async move {
            let up = tokio::select! {
                up = super::connected(&pc, NOTICE_CONNECT_TIMEOUT) => up,
                _ = leave.cancelled() => false,
            };
            // Only the outlet is kept: the connection is not pinned by this task.
            drop(pc);
            if !up {
                tracing::debug!(peer = %id, "no connection: no notice");
                return;
            }
            let outlets = SharedOutlets::default();
            outlets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(&id, outlet);
            let options = PumpOptions {
                kind: RtpCodecKind::Audio,
                looping: false,
                keyframe_wanted: None,
                sent: Arc::new(AtomicU64::new(0)),
            };
            tracing::info!(peer = %id, "speaking the consent notice");
            pump(notice, outlets, options, leave).await;
        });
    }
}

/// Reads chat messages of `peer` from `channel` into the recording until the channel closes
/// or the recording's recorder leaves.
fn read_chat(recording: Arc<Recording>, peer: PeerInfo, channel: Arc<dyn DataChannel>) {
    let leave = recording.leave_signal();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                event = channel.poll() => event,
                _ = leave.cancelled() => break,
            };
            match event {
                Some(DataChannelEvent::OnMessage(message)) => {
                    let outcome =
                        recording.chat(&peer.id, &peer.name, &message.data, Instant::now());
                    if let ChatOutcome::Dropped(refusal) = outcome {
                        tracing::debug!(peer = %peer.id, %refusal, "chat message dropped");
                    }
                }
                Some(DataChannelEvent::OnClose) | None => break,
                Some(_) => {}
            }
        }
    });
}

/// Records one track of `peer` (codec `mime`) read from `source`, in the recording's chosen
/// layout (own file, or the participant's muxed file).
fn record<S: MediaSource + 'static>(
    recording: &Arc<Recording>,
    peer: &PeerInfo,
    mime: &str,
    source: S,
) {
    let (kind, extension) = match mime {
        "video/vp8" => (Kind::Video, "webm"),
        "audio/opus" => (Kind::Audio, "ogg"),
        other => {
            tracing::warn!(peer = %peer.id, codec = other, "codec not recordable; ignored");
            return;
        }
    };
    let muxed = if recording.options().muxed {
        recording.add_muxed_track(&peer.id, &peer.name, kind)
    } else {
        None
    };
    let (ctx, mux) = match muxed {
        Some((ctx, mux)) => (ctx, Some(mux)),
        None => match recording.add_track(&peer.id, &peer.name, kind, extension) {
            Some(ctx) => (ctx, None),
            None => return,
        },
    };
    tracing::info!(
        recording = %recording.id(),
        peer = %peer.id,
        file = %ctx.entry.file,
        "track started"
    );
    let span = tracing::info_span!(
        "track",
        recording = %recording.id(),
        peer = %peer.id,
        file = %ctx.entry.file
    );
    let task = tokio::spawn(track::run(ctx, source, mux).instrument(span));
    recording.keep_task(task);
}

/// Records the WHIP publishers of the recording's room: those present now and those that
/// start later, until the recording stops.
fn record_whip(services: &Arc<Services>, recording: &Arc<Recording>) {
    // Subscribed before the snapshot, so no track falls between; one seen in both is
    // recorded once.
    let mut announcements = services.whip.announcements();
    let mut seen: Vec<Arc<crate::media::source::Relay>> = Vec::new();
    let mut take = move |recording: &Arc<Recording>, track: crate::peer::whip::WhipTrack| {
        if seen.iter().any(|r| Arc::ptr_eq(r, &track.relay)) {
            return;
        }
        record(recording, &track.peer, &track.mime, track.relay.subscribe());
        seen.push(track.relay);
    };
    for track in services.whip.tracks_of(recording.room()) {
        take(recording, track);
    }
    let recording = Arc::clone(recording);
    let leave = recording.leave_signal();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                announced = announcements.recv() => match announced {
                    Ok(track) if track.room == recording.room() => take(&recording, track),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "WHIP announcements missed");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                _ = leave.cancelled() => break,
            }
        }
    });
}

/// Errors of starting a recording.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store refused (busy room, limit, disk).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The recorder could not join the room.
    #[error("the recorder could not join: {0}")]
    Join(#[from] crate::signal::hub::JoinError),
    /// The mixed audio could not start.
    #[error(transparent)]
    Mix(#[from] crate::compose::live::MixStartError),
    /// Free disk space is below the threshold.
    #[error("not enough free disk space for a new recording ({0} bytes free)")]
    DiskFull(u64),
}

/// Starts recording `room`: creates the recording, sends the recorder bot in, tells the room.
pub async fn start(
    services: &Arc<Services>,
    room: &str,
    options: RecordOptions,
) -> Result<Arc<Recording>, StartError> {
    if services.disk.is_low() {
        return Err(StartError::DiskFull(services.disk.free()));
    }
    let cap = services.max_recording;
    let max_duration = Some(options.max_duration.map_or(cap, |d| d.min(cap)));
    // Refused before the recording exists, so a full service leaves no `failed` one behind.
    services
        .hub
        .can_join(room, crate::signal::hub::MemberKind::Bot)?;
    let recording = services.store.create(room, options)?;
    if recording.options().mix {
        // Before the recorder joins, so that every track feeds the mix.
        // Its composite, if any, is announced when it ends (SPEC §8, §11).
        let events = services.events.clone();
        let composited: crate::compose::Composited = Arc::new(move |r: &Arc<Recording>| {
            events.emit(EventKind::RecordingComposited, Some(r.id()), &r.doc())
        });
        if let Err(e) = crate::compose::LiveMix::start(&recording, Some(composited)) {
            recording.fail(format!("the mix could not start: {e}"));
            return Err(StartError::Mix(e));
        }
    }
    begin(services, &recording, max_duration).await?;
    // (A recording continued on another node gets `recording.takeover` instead: the cluster
    // layer tells it.)
    services.events.emit(
        EventKind::RecordingStarted,
        Some(recording.id()),
        &recording.doc(),
    );
    Ok(recording)
}

/// In a cluster: continues `recording` (taken in with [`RecordingStore::adopt`]) on this node
/// after the node that held it died or drained: a new recorder joins its room and records
/// into it, with the rest of its longest duration.
///
/// [`RecordingStore::adopt`]: crate::record::store::RecordingStore::adopt
pub async fn resume(
    services: &Arc<Services>,
    recording: &Arc<Recording>,
    max_duration: Option<Duration>,
) -> Result<(), StartError> {
    let cap = services.max_recording;
    let limit = max_duration.map_or(cap, |d| d.min(cap));
    let elapsed = Duration::from_secs_f64(
        recording
            .clock()
            .seconds(std::time::Instant::now())
            .max(0.0),
    );
    begin(services, recording, Some(limit.saturating_sub(elapsed))).await
}

/// Sends the recorder of `recording` into its room and tells the room.
async fn begin(
    services: &Arc<Services>,
    recording: &Arc<Recording>,
    max_duration: Option<Duration>,
) -> Result<(), StartError> {
    let room = recording.room();
    let behaviour = Arc::new(Recorder {
        recording: Arc::clone(recording),
        notice: recording
            .options()
            .notice
            .then(|| Arc::clone(&services.notice)),
    });
    let peer = match super::join(
        &services.hub,
        Arc::clone(&services.factory),
        room,
        RECORDER_NAME,
        behaviour,
        recording.leave_signal(),
    )
    .await
    {
        Ok(peer) => peer,
        Err(e) => {
            recording.fail(e.to_string());
            emit_end(&services.events, recording);
            return Err(e.into());
        }
    };
    recording.set_recording(&peer);
    record_whip(services, recording);
    services.hub.broadcast(
        room,
        &ServerMessage::Recording {
            state: RecordingNotice::Started,
            id: recording.id().to_owned(),
            peer: peer.clone(),
        },
    );
    metrics::counter!(crate::telemetry::RECORDINGS_STARTED).increment(1);
    tracing::info!(recording = %recording.id(), room, peer = %peer, "recording started");
    if let Some(limit) = max_duration {
        let services = Arc::clone(services);
        let recording = Arc::clone(recording);
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            stop(&services, &recording, StopReason::MaxDuration).await;
        });
    }
    Ok(())
}

/// Emits the event of a recording's end: `recording.failed` if it ended `failed`, else
/// `recording.stopped`; its data is the final Recording.
pub fn emit_end(events: &Events, recording: &Recording) {
    let doc = recording.doc();
    let kind = if doc.state == State::Failed {
        EventKind::RecordingFailed
    } else {
        EventKind::RecordingStopped
    };
    events.emit(kind, Some(&doc.id), &doc);
}

/// Stops `recording` (idempotent), tells its room once, and emits its end event once.
pub async fn stop(services: &Services, recording: &Arc<Recording>, reason: StopReason) {
    if recording.stop(reason).await {
        emit_end(&services.events, recording);
        if let Some(peer) = recording.doc().bot_peer {
            services.hub.broadcast(
                recording.room(),
                &ServerMessage::Recording {
                    state: RecordingNotice::Stopped,
                    id: recording.id().to_owned(),
                    peer,
                },
            );
        }
    }
}
