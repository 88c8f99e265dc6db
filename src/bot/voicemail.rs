//! The voicemail bot: greets each peer that connects, records its message, says goodbye and
//! hangs up.
//!
//! One call task per peer: once the connection is up it plays the greeting (`media`, or a
//! built-in 880 Hz tone), then creates a message — a [`Recording`] owned by the bot, listed in
//! `/api/recordings` and under the bot — and records the peer's tracks into it with the usual
//! track tasks. What the peer sent during the greeting is not recorded. The message ends after
//! `silence_s` without voice, or at `max_duration_s`, or when the peer leaves (its
//! `stop_reason` says which). Voice is found by decoding the peer's Opus packets (libopus)
//! and measuring their level; silence is measured on the wall clock, so a sender in DTX (few
//! or no packets) is silent too. Then the bot plays a short goodbye tone and closes that
//! peer's connection; it does not connect to that peer again.

use super::play::{connected, drain, Media, CONNECT_TIMEOUT, STREAM};
use super::registry::{Bot, BotError};
use super::Behaviour;
use super::Services;
use crate::events::{EventKind, Events};
use crate::media::source::RemoteSource;
use crate::peer::negotiation::Role;
use crate::peer::outlet::{MediaFrame, Outlet};
use crate::peer::{Pc, PeerError};
use crate::record::manifest::{Kind, StopReason};
use crate::record::session::{RecordOptions, Recording};
use crate::record::store::RecordingStore;
use crate::record::track;
use crate::signal::hub::Hub;
use crate::signal::protocol::{PeerInfo, RecordingNotice, ServerMessage};
use async_trait::async_trait;
use bytes::Bytes;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use webrtc::media_stream::track_remote::TrackRemote;

/// RMS level (full scale = 1.0) from which a packet counts as voice: −45 dBFS. Speech is
/// around −30 to −20 dBFS; a quiet room's microphone noise and Opus comfort noise stay below.
pub const VOICE_LEVEL: f64 = 0.0056;
/// Frequency of the built-in greeting tone.
pub const GREETING_HZ: f64 = 880.0;
/// Length of the built-in greeting tone.
pub const GREETING_LENGTH: Duration = Duration::from_millis(1000);
/// Frequency of the goodbye tone.
pub const GOODBYE_HZ: f64 = 660.0;
/// Length of the goodbye tone.
pub const GOODBYE_LENGTH: Duration = Duration::from_millis(500);
/// Audio packets queued for the silence detector.
const TAP_QUEUE: usize = 256;

/// Encodes a sine tone of `hz` lasting `length` (20 ms Opus packets, mono, 10 ms fades) with
/// libopus, for sending with an [`Outlet`].
pub fn tone(hz: f64, length: Duration, amplitude: f32) -> Result<Vec<MediaFrame>, opus::Error> {
    const RATE: usize = 48_000;
    const FRAME: usize = 960;
    let mut encoder =
        opus::Encoder::new(RATE as u32, opus::Channels::Mono, opus::Application::Audio)?;
    let total = (length.as_secs_f64() * RATE as f64) as usize;
    let fade = RATE / 100;
    let sample = |i: usize| -> f32 {
        if i >= total {
            return 0.0;
        }
        let edge = i.min(total - 1 - i).min(fade) as f32 / fade as f32;
        let phase = 2.0 * std::f64::consts::PI * hz * i as f64 / RATE as f64;
        amplitude * edge * phase.sin() as f32
    };
    // One more frame than the tone: the encoder's lookahead holds back its end.
    let frames = total.div_ceil(FRAME) + 1;
    let mut out = Vec::with_capacity(frames);
    let mut pcm = [0f32; FRAME];
    let mut packet = [0u8; 1500];
    for f in 0..frames {
        for (j, s) in pcm.iter_mut().enumerate() {
            *s = sample(f * FRAME + j);
        }
        let len = encoder.encode_float(&pcm, &mut packet)?;
        out.push(MediaFrame {
            data: Bytes::copy_from_slice(&packet[..len]),
            duration: Duration::from_millis(20),
            keyframe: true,
            skip: false,
        });
    }
    Ok(out)
}

/// Decides whether Opus packets hold voice, by decoding them and measuring their RMS level.
pub struct VoiceDetector {
    decoder: Option<opus::Decoder>,
    pcm: Vec<f32>,
}

impl Default for VoiceDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl VoiceDetector {
    /// A detector with its own libopus decoder (48 kHz mono).
    pub fn new() -> Self {
        let decoder = match opus::Decoder::new(48_000, opus::Channels::Mono) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(error = %e, "no Opus decoder: every message ends on silence");
                None
            }
        };
        Self {
            decoder,
            // 120 ms, the longest Opus packet.
            pcm: vec![0.0; 5760],
        }
    }

    /// Whether `packet` decodes to sound at or above [`VOICE_LEVEL`]. Undecodable packets are
    /// not voice.
    pub fn is_voice(&mut self, packet: &[u8]) -> bool {
        let Some(decoder) = self.decoder.as_mut() else {
            return false;
        };
        match decoder.decode_float(packet, &mut self.pcm, false) {
            Ok(n) if n > 0 => {
                let samples = &self.pcm[..n.min(self.pcm.len())];
                let power: f64 = samples
                    .iter()
                    .map(|s| f64::from(*s) * f64::from(*s))
                    .sum::<f64>()
                    / samples.len() as f64;
                power.sqrt() >= VOICE_LEVEL
            }
            _ => false,
        }
    }
}

/// Waits for the end of a message: `silence` without a voice packet on `tap` (or no packet at
/// all), or `max` in all.
async fn listen(
    tap: &mut mpsc::Receiver<(Instant, Bytes)>,
    silence: Duration,
    max: Duration,
) -> StopReason {
    let start = tokio::time::Instant::now();
    let end = start + max;
    let mut last_voice = start;
    let mut detector = VoiceDetector::new();
    let mut open = true;
    loop {
        let wake = (last_voice + silence).min(end);
        tokio::select! {
            got = tap.recv(), if open => match got {
                Some((_arrival, payload)) => {
                    // Packets are handed over as they arrive: now is their arrival.
                    if detector.is_voice(&payload) {
                        last_voice = tokio::time::Instant::now();
                    }
                }
                None => open = false,
            },
            _ = tokio::time::sleep_until(wake) => {
                return if tokio::time::Instant::now() >= end {
                    StopReason::MaxDuration
                } else {
                    StopReason::Silence
                };
            }
        }
    }
}

/// Sends pre-encoded audio to one peer, its RTP clock following the wall clock between plays.
struct Voice {
    outlet: Arc<Outlet>,
    last_end: Option<tokio::time::Instant>,
}

impl Voice {
    async fn play(&mut self, frames: &[MediaFrame]) {
        let start = tokio::time::Instant::now();
        let mut gap = self
            .last_end
            .map_or(Duration::ZERO, |end| start.saturating_duration_since(end));
        let mut clock = Duration::ZERO;
        for frame in frames {
            if !frame.skip {
                tokio::time::sleep_until(start + clock).await;
                self.outlet.write(frame, std::mem::take(&mut gap)).await;
            } else {
                gap += frame.duration;
            }
            clock += frame.duration;
        }
        tokio::time::sleep_until(start + clock).await;
        self.last_end = Some(start + clock);
    }
}

/// One caller.
struct Call {
    /// The message being recorded, once the greeting is over.
    message: watch::Sender<Option<Arc<Recording>>>,
    /// Where the message's audio track task copies the caller's packets.
    tap: mpsc::Sender<(Instant, Bytes)>,
    /// Cancelled when the caller leaves the room.
    left: CancellationToken,
}

struct Shared {
    bot: Arc<Bot>,
    store: Arc<RecordingStore>,
    hub: Arc<Hub>,
    events: Events,
    greeting: Arc<[MediaFrame]>,
    goodbye: Arc<[MediaFrame]>,
    calls: Mutex<HashMap<String, Arc<Call>>>,
}

impl Shared {
    fn calls(&self) -> MutexGuard<'_, HashMap<String, Arc<Call>>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the room that a message started or stopped, and emits its events: on start
    /// `recording.started`; on stop its end event, then `voicemail.message`.
    fn notify(&self, recording: &Recording, state: RecordingNotice) {
        match state {
            RecordingNotice::Started => self.events.emit(
                EventKind::RecordingStarted,
                Some(recording.id()),
                &recording.doc(),
            ),
            RecordingNotice::Stopped => {
                super::recorder::emit_end(&self.events, recording);
                self.events.emit(
                    EventKind::VoicemailMessage,
                    Some(recording.id()),
                    &recording.doc(),
                );
            }
        }
        if let Some(peer) = self.bot.bot_peer() {
            self.hub.broadcast(
                self.bot.room(),
                &ServerMessage::Recording {
                    state,
                    id: recording.id().to_owned(),
                    peer,
                },
            );
        }
    }
}

/// The voicemail bot's behaviour.
struct Voicemail {
    shared: Arc<Shared>,
}

/// Resolves with the bot's stop reason once it is being stopped.
async fn ending_reason(ending: &mut watch::Receiver<Option<StopReason>>) -> StopReason {
    let reason = match ending.wait_for(Option::is_some).await {
        Ok(reason) => *reason,
        Err(_) => None,
    };
    match reason {
        Some(reason) => reason,
        None => std::future::pending().await,
    }
}

/// Resolves when the call must end early: the caller left, or the bot is stopping.
async fn interruption(
    left: &CancellationToken,
    ending: &mut watch::Receiver<Option<StopReason>>,
) -> StopReason {
    tokio::select! {
        _ = left.cancelled() => StopReason::PeerLeft,
        reason = ending_reason(ending) => reason,
    }
}

/// A caller's whole call: greeting, message, goodbye, hang-up.
async fn run_call(
    shared: Arc<Shared>,
    peer: PeerInfo,
    pc: Pc,
    mut voice: Voice,
    call: Arc<Call>,
    mut tap: mpsc::Receiver<(Instant, Bytes)>,
) {
    let left = call.left.clone();
    let mut ending = shared.bot.ending();
    let spec = shared.bot.spec().clone();
    // `None`: the call ended before a message could start.
    let outcome: Option<StopReason> = async {
        tokio::select! {
            up = connected(&pc, CONNECT_TIMEOUT) => if !up {
                tracing::info!(peer = %peer.id, "no connection: call abandoned");
                return None;
            },
            _ = interruption(&left, &mut ending) => return None,
        }
        tokio::select! {
            _ = voice.play(&shared.greeting) => {}
            _ = interruption(&left, &mut ending) => return None,
        }
        let recording = match shared.store.create_message(
            shared.bot.room(),
            RecordOptions::default(),
            shared.bot.id(),
        ) {
            Ok(recording) => recording,
            Err(e) => {
                tracing::warn!(peer = %peer.id, error = %e, "no message recorded");
                return Some(StopReason::Error);
            }
        };
        recording.set_recording(&shared.bot.bot_peer().unwrap_or_default());
        shared.notify(&recording, RecordingNotice::Started);
        tracing::info!(peer = %peer.id, recording = %recording.id(), "message started");
        call.message.send_replace(Some(Arc::clone(&recording)));
        let reason = tokio::select! {
            reason = listen(&mut tap, spec.silence, spec.max_duration) => reason,
            reason = interruption(&left, &mut ending) => reason,
        };
        if recording.stop(reason).await {
            shared.notify(&recording, RecordingNotice::Stopped);
        }
        tracing::info!(peer = %peer.id, recording = %recording.id(), ?reason, "message ended");
        Some(reason)
    }
    .await;
    let hang_up = matches!(
        outcome,
        Some(StopReason::Silence | StopReason::MaxDuration | StopReason::Error)
    );
    if hang_up {
        tokio::select! {
            _ = voice.play(&shared.goodbye) => {
                // The last packets reach the caller before the connection closes.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = interruption(&left, &mut ending) => {}
        }
        if let Err(e) = pc.close().await {
            tracing::debug!(peer = %peer.id, error = %e, "close");
        }
        tracing::info!(peer = %peer.id, "hung up");
    }
    {
        let mut calls = shared.calls();
        if calls.get(&peer.id).is_some_and(|c| Arc::ptr_eq(c, &call)) {
            calls.remove(&peer.id);
        }
    }
    shared.bot.remove_peer(&peer.id);
}

#[async_trait]
impl Behaviour for Voicemail {
    fn wants(&self, peer: &PeerInfo) -> bool {
        !peer.bot
    }

    async fn setup(&self, peer: &PeerInfo, pc: &Pc, role: Role) -> Result<(), PeerError> {
        let outlet = Outlet::add(pc, RtpCodecKind::Audio, STREAM, None).await?;
        if role == Role::Offerer {
            // The caller's camera is recorded too, if it sends one.
            pc.add_transceiver_from_kind(
                RtpCodecKind::Video,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await?;
        }
        let (tap_tx, tap_rx) = mpsc::channel(TAP_QUEUE);
        let call = Arc::new(Call {
            message: watch::Sender::new(None),
            tap: tap_tx,
            left: CancellationToken::new(),
        });
        self.shared
            .calls()
            .insert(peer.id.clone(), Arc::clone(&call));
        self.shared.bot.add_peer(&peer.id);
        let span = tracing::info_span!("call", peer = %peer.id);
        let task = tokio::spawn(
            run_call(
                Arc::clone(&self.shared),
                peer.clone(),
                Arc::clone(pc),
                Voice {
                    outlet,
                    last_end: None,
                },
                call,
                tap_rx,
            )
            .instrument(span),
        );
        self.shared.bot.keep_call(task);
        Ok(())
    }

    async fn on_track(&self, peer: &PeerInfo, track: Arc<dyn TrackRemote>) {
        let call = self.shared.calls().get(&peer.id).cloned();
        let (Some(call), Some((ssrc, mime))) = (call, RemoteSource::describe(&track).await) else {
            drain(track).await;
            return;
        };
        let (kind, extension) = match mime.as_str() {
            "video/vp8" => (Kind::Video, "webm"),
            "audio/opus" => (Kind::Audio, "ogg"),
            _ => {
                drain(track).await;
                return;
            }
        };
        let mut source = RemoteSource::new(Arc::clone(&track), ssrc);
        let mut message = call.message.subscribe();
        // What arrives before the message starts (during the greeting) is dropped.
        let recording = loop {
            let current = message.borrow_and_update().clone();
            if let Some(recording) = current {
                break recording;
            }
            tokio::select! {
                event = crate::media::source::MediaSource::next(&mut source) => {
                    if event.is_none() {
                        return;
                    }
                }
                changed = message.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        };
        let Some(mut ctx) = recording.add_track(&peer.id, &peer.name, kind, extension) else {
            drain(track).await;
            return;
        };
        if kind == Kind::Audio {
            ctx.audio_tap = Some(call.tap.clone());
        }
        tracing::info!(recording = %recording.id(), file = %ctx.entry.file, "message track started");
        let span = tracing::info_span!("track", file = %ctx.entry.file);
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(
            async move {
                track::run(ctx, source, None).await;
                let _ = done_tx.send(());
            }
            .instrument(span),
        );
        recording.keep_task(task);
        // After the message, the track is read until the connection closes.
        let _ = done_rx.await;
        drain(track).await;
    }

    async fn peer_left(&self, peer: &PeerInfo) {
        let call = self.shared.calls().get(&peer.id).cloned();
        match call {
            Some(call) => {
                call.left.cancel();
            }
            None => self.shared.bot.remove_peer(&peer.id),
        }
    }
}

/// Puts voicemail bot `bot` in its room, greeting with `media`'s audio or the built-in tone.
/// Returns its peer id.
pub async fn start(
    services: &Arc<Services>,
    bot: &Arc<Bot>,
    media: Option<Arc<Media>>,
) -> Result<String, BotError> {
    let internal = |e: opus::Error| BotError::Internal(format!("tone: {e}"));
    let greeting: Arc<[MediaFrame]> = match media {
        Some(media) if media.audio.is_empty() => {
            return Err(BotError::BadMedia(
                bot.spec().media.clone().unwrap_or_default(),
                "no Opus audio for the greeting".into(),
            ))
        }
        Some(media) => Arc::clone(&media.audio),
        None => tone(GREETING_HZ, GREETING_LENGTH, 0.25)
            .map_err(internal)?
            .into(),
    };
    let goodbye: Arc<[MediaFrame]> = tone(GOODBYE_HZ, GOODBYE_LENGTH, 0.25)
        .map_err(internal)?
        .into();
    let behaviour = Arc::new(Voicemail {
        shared: Arc::new(Shared {
            bot: Arc::clone(bot),
            store: Arc::clone(&services.store),
            hub: Arc::clone(&services.hub),
            events: services.events.clone(),
            greeting,
            goodbye,
            calls: Mutex::new(HashMap::new()),
        }),
    });
    Ok(super::join(
        &services.hub,
        Arc::clone(&services.factory),
        bot.room(),
        "voicemail",
        behaviour,
        bot.leave_signal(),
    )
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(frames: &[MediaFrame]) -> Vec<f32> {
        let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut all = Vec::new();
        let mut pcm = vec![0f32; 5760];
        for f in frames {
            let n = decoder.decode_float(&f.data, &mut pcm, false).unwrap();
            all.extend_from_slice(&pcm[..n]);
        }
        all
    }

    #[test]
    fn tones_decode_to_their_frequency() {
        let frames = tone(880.0, Duration::from_millis(1000), 0.25).unwrap();
        assert_eq!(frames.len(), 51);
        let pcm = decode(&frames);
        let middle = &pcm[4800..43200];
        let crossings = middle
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        let hz = crossings as f64 / 2.0 / (middle.len() as f64 / 48_000.0);
        assert!((hz - 880.0).abs() < 10.0, "{hz}");
    }

    #[test]
    fn voice_is_told_from_silence() {
        let loud = tone(440.0, Duration::from_millis(200), 0.1).unwrap();
        let quiet = tone(440.0, Duration::from_millis(200), 0.001).unwrap();
        let mut detector = VoiceDetector::new();
        let voiced = loud.iter().filter(|f| detector.is_voice(&f.data)).count();
        assert!(voiced >= 8, "{voiced}");
        let mut detector = VoiceDetector::new();
        assert!(quiet.iter().all(|f| !detector.is_voice(&f.data)));
        // DTX-style TOC-only packets, digital-silence frames and garbage are not voice.
        assert!(!detector.is_voice(&[0xf8]));
        assert!(!detector.is_voice(&[0xf8, 0xff, 0xfe]));
        assert!(!detector.is_voice(&[]));
        assert!(!detector.is_voice(&[0xff; 3]));
    }

    #[tokio::test]
    async fn messages_end_on_silence_or_length() {
        let (tx, mut rx) = mpsc::channel(16);
        // No packets at all: silence.
        let started = tokio::time::Instant::now();
        let reason = listen(&mut rx, Duration::from_millis(300), Duration::from_secs(60)).await;
        assert_eq!(reason, StopReason::Silence);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(400));
        // Voice all along: the length limit.
        let loud = tone(440.0, Duration::from_millis(100), 0.1).unwrap();
        let feeder = tokio::spawn(async move {
            loop {
                for f in &loud {
                    if tx.send((Instant::now(), f.data.clone())).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        let started = tokio::time::Instant::now();
        let reason = listen(&mut rx, Duration::from_millis(300), Duration::from_secs(1)).await;
        assert_eq!(reason, StopReason::MaxDuration);
        assert!(started.elapsed() < Duration::from_millis(1100));
        feeder.abort();
    }
}
