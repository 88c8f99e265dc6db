//! The recorder bot: joins a room, receives every participant's VP8 and Opus tracks, and
//! hands each to a track task of its [`Recording`].

use super::Behaviour;
use super::Services;
use crate::media::source::{MediaSource, RemoteSource};
use crate::peer::negotiation::Role;
use crate::peer::{Pc, PeerError};
use crate::record::manifest::{Kind, StopReason};
use crate::record::session::{RecordOptions, Recording};
use crate::record::store::RecordError;
use crate::record::track;
use crate::signal::protocol::{PeerInfo, RecordingNotice, ServerMessage};
use async_trait::async_trait;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use std::sync::Arc;
use tracing::Instrument;
use webrtc::media_stream::track_remote::TrackRemote;

/// Display name of the recorder in rooms.
pub const RECORDER_NAME: &str = "recorder";

/// The recorder's behaviour in its room.
pub struct Recorder {
    recording: Arc<Recording>,
}

#[async_trait]
impl Behaviour for Recorder {
    fn wants(&self, _peer: &PeerInfo) -> bool {
        true
    }

    async fn setup(&self, _peer: &PeerInfo, pc: &Pc, role: Role) -> Result<(), PeerError> {
        if role == Role::Offerer {
            for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
                pc.add_transceiver_from_kind(
                    kind,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        ..Default::default()
                    }),
                )
                .await?;
            }
        }
        Ok(())
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
pub fn start(
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
        if let Err(e) = crate::compose::LiveMix::start(&recording) {
            recording.fail(format!("the mix could not start: {e}"));
            return Err(StartError::Mix(e));
        }
    }
    let behaviour = Arc::new(Recorder {
        recording: Arc::clone(&recording),
    });
    let peer = match super::join(
        &services.hub,
        Arc::clone(&services.factory),
        room,
        RECORDER_NAME,
        behaviour,
        recording.leave_signal(),
    ) {
        Ok(peer) => peer,
        Err(e) => {
            recording.fail(e.to_string());
            return Err(e.into());
        }
    };
    recording.set_recording(&peer);
    record_whip(services, &recording);
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
        let recording = Arc::clone(&recording);
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            stop(&services, &recording, StopReason::MaxDuration).await;
        });
    }
    Ok(recording)
}

/// Stops `recording` (idempotent) and tells its room once.
pub async fn stop(services: &Services, recording: &Arc<Recording>, reason: StopReason) {
    if recording.stop(reason).await {
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
