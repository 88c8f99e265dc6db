//! The live mix of a recording: `room-mix.ogg`, written while the recording runs.
//!
//! [`LiveMix`] is the recording's [`AudioTap`]: track tasks hand it each placed Opus packet
//! (a non-blocking `try_send`; if the mixing thread ever falls 4096 packets behind, packets
//! are dropped from the mix, never from the files). One thread per mixed recording runs the
//! [`Mixer`] on a 20 ms cadence, encodes each frame (Opus, 48 kHz mono) and writes it with
//! [`OggOpusWriter`]; the file is flushed every second like the tracks' files (a crash leaves a
//! file that `repair` finishes) and finalized, synced and listed when the recording stops.

use super::mix::{Mixer, FRAME, RATE};
use crate::media::opus::OPUS_PRE_SKIP;
use crate::record::manifest::StopReason;
use crate::record::ogg::OggOpusWriter;
use crate::record::session::{AudioTap, OutputFile, Recording, TrackEntry};
use bytes::Bytes;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Name of the mixed audio file in a recording's folder.
pub const MIX_FILE: &str = "room-mix.ogg";
/// Packets queued toward the mixing thread at most.
const QUEUE: usize = 4096;
/// A frame is mixed once every live input has data for it and it ended this long ago...
const HOLD: Duration = Duration::from_millis(60);
/// ...or once it ended this long ago (the jitter allowance: covers the tracks' 120 ms reorder
/// window and the SR placement of packets at their capture time).
const ALLOWANCE: Duration = Duration::from_millis(300);
/// How often the file's bytes go to the OS.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Samples over which the mix fades out at its end (10 ms).
const FADE: i64 = 480;
/// Bitrate of the mix.
const BITRATE: i32 = 48_000;

enum Msg {
    Packet { track: String, at: i64, data: Bytes },
    Ended(String),
    Finish(i64, tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// The recording's live mix (its [`AudioTap`]).
pub struct LiveMix {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
    recording: std::sync::Weak<Recording>,
    /// The composite to queue once the mix is final: its reserved file and size.
    composite: Option<(Arc<OutputFile>, (u32, u32))>,
    /// Told when the composite ends (the `recording.composited` webhook).
    composited: Option<super::worker::Composited>,
    /// `finish` was called (the composite is queued or refused there).
    finished: std::sync::atomic::AtomicBool,
}

impl Drop for LiveMix {
    /// A recording that failed before its stop never finishes its mix: its composite will
    /// not be rendered, and says so.
    fn drop(&mut self) {
        if self.composite.is_some() && !self.finished.load(Ordering::Relaxed) {
            if let Some(recording) = self.recording.upgrade() {
                super::worker::refuse(
                    &recording,
                    "not rendered: the recording did not stop normally",
                    self.composited.as_ref(),
                );
            }
        }
    }
}

/// Errors of starting a mix.
#[derive(Debug, thiserror::Error)]
pub enum MixStartError {
    /// The file name is taken in the recording.
    #[error("{MIX_FILE} is already a file of the recording")]
    NameTaken,
    /// Creating the file or the codec failed.
    #[error("{0}")]
    Setup(String),
}

/// The encoder and file side of a mix: frames in, Ogg pages out.
pub struct MixWriter {
    encoder: opus::Encoder,
    writer: OggOpusWriter<BufWriter<File>>,
    /// Stream position (pre-skip included) of the next packet.
    pts: u64,
    pre_skip: u64,
    packet: Vec<u8>,
}

impl MixWriter {
    /// Creates the Ogg Opus file at `path` (mono, 48 kHz) whose first played sample is the
    /// mix's first sample.
    pub fn create(path: &Path) -> Result<Self, String> {
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio)
                .map_err(|e| format!("opus encoder: {e}"))?;
        encoder
            .set_bitrate(opus::Bitrate::Bits(BITRATE))
            .map_err(|e| format!("opus encoder: {e}"))?;
        let pre_skip = encoder
            .get_lookahead()
            .ok()
            .and_then(|l| u16::try_from(l).ok())
            .unwrap_or(OPUS_PRE_SKIP);
        let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let writer = OggOpusWriter::new(
            BufWriter::with_capacity(64 * 1024, file),
            rand::random::<u32>(),
            1,
            pre_skip,
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            encoder,
            writer,
            pts: 0,
            pre_skip: u64::from(pre_skip),
            packet: vec![0; 4000],
        })
    }

    /// Encodes and writes mixed samples (a whole number of 2.5 ms steps, at most 20 ms).
    pub fn write(&mut self, samples: &[f32]) -> Result<(), String> {
        let n = self
            .encoder
            .encode_float(samples, &mut self.packet)
            .map_err(|e| format!("opus encode: {e}"))?;
        self.writer
            .write_packet(&self.packet[..n], self.pts)
            .map_err(|e| e.to_string())?;
        self.pts += samples.len() as u64;
        Ok(())
    }

    /// Pushes the pages written so far to the OS.
    pub fn flush(&mut self) -> Result<(), String> {
        self.writer.flush().map_err(|e| e.to_string())
    }

    /// File bytes so far.
    pub fn bytes(&self) -> u64 {
        self.writer.bytes_written()
    }

    /// Samples written so far (played samples: the encoder's lookahead not counted).
    pub fn written(&self) -> u64 {
        self.pts
    }

    /// Ends the stream so that it plays exactly `samples` samples (the mix must already
    /// hold them, plus the encoder's lookahead), then syncs the file. Returns its size.
    pub fn finish(self, samples: u64) -> Result<u64, String> {
        let out = self
            .writer
            .finalize(Some(samples + self.pre_skip))
            .map_err(|e| e.to_string())?;
        let file = out
            .into_inner()
            .map_err(|e| format!("flush at finalize: {}", e.error()))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        file.sync_all()
            .map_err(|e| format!("fsync at finalize: {e} (the file may not be durable)"))?;
        Ok(bytes)
    }

    /// The encoder's lookahead (the stream's pre-skip).
    pub fn lookahead(&self) -> u64 {
        self.pre_skip
    }
}

impl LiveMix {
    /// Starts the mix of `recording`: creates `room-mix.ogg` (listed at once), starts the
    /// mixing thread and installs the tap, so that every track added from now on feeds it.
    /// `composited` is told when its composite (if requested) ends.
    pub fn start(
        recording: &Arc<Recording>,
        composited: Option<super::worker::Composited>,
    ) -> Result<Arc<Self>, MixStartError> {
        let out = recording
            .add_output(MIX_FILE)
            .ok_or(MixStartError::NameTaken)?;
        let writer =
            MixWriter::create(&recording.dir().join(MIX_FILE)).map_err(MixStartError::Setup)?;
        out.created.store(true, Ordering::Relaxed);
        recording.write_manifest();
        let composite = match recording.options().composite {
            Some(size) => Some((
                super::worker::reserve(recording).ok_or(MixStartError::NameTaken)?,
                size,
            )),
            None => None,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let weak = Arc::downgrade(recording);
        let id = recording.id().to_owned();
        std::thread::Builder::new()
            .name("recbot-mix".into())
            .spawn(move || run(rx, writer, out, weak, &id))
            .map_err(|e| MixStartError::Setup(format!("mix thread: {e}")))?;
        let mix = Arc::new(Self {
            tx,
            dropped: AtomicU64::new(0),
            recording: Arc::downgrade(recording),
            composite,
            composited,
            finished: std::sync::atomic::AtomicBool::new(false),
        });
        recording.set_audio_tap(Arc::clone(&mix) as Arc<dyn AudioTap>);
        Ok(mix)
    }

    /// Packets the mix missed because its thread was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl AudioTap for LiveMix {
    fn packet(&self, track: &TrackEntry, at: i64, payload: &Bytes) {
        let msg = Msg::Packet {
            track: track.id.clone(),
            at,
            data: payload.clone(),
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(msg) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn track_ended(&self, track: &TrackEntry) {
        // Blocking at most until the thread takes a message: an end must not be lost.
        let _ = self.tx.send(Msg::Ended(track.id.clone()));
    }

    fn finish(&self, end: i64) -> futures::future::BoxFuture<'static, Result<(), String>> {
        self.finished.store(true, Ordering::Relaxed);
        let (reply, done) = tokio::sync::oneshot::channel();
        let sent = self.tx.try_send(Msg::Finish(end, reply));
        let tx = self.tx.clone();
        let composite = self
            .composite
            .clone()
            .and_then(|c| Some((self.recording.upgrade()?, c)));
        let composited = self.composited.clone();
        Box::pin(async move {
            if let Err(TrySendError::Full(msg)) = sent {
                // The queue is full: wait for room off the runtime's threads.
                tokio::task::spawn_blocking(move || tx.send(msg))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|_| "the mix thread ended early".to_owned())?;
            }
            let mixed = done
                .await
                .map_err(|_| "the mix thread ended early".to_owned())
                .and_then(|r| r);
            // The tracks' files are final: the composite may start (with or without the mix).
            if let Some((recording, (out, size))) = composite {
                if recording.doc().stop_reason == Some(StopReason::DiskFull) {
                    // Not another file on a full disk.
                    super::worker::refuse(
                        &recording,
                        "not rendered: the disk is full",
                        composited.as_ref(),
                    );
                } else {
                    let duration_ms = (end.max(0) as u64 * 1000).div_ceil(RATE as u64);
                    super::worker::queue(recording, out, size, duration_ms, composited);
                }
            }
            mixed
        })
    }
}

/// The mixing thread: takes packets, mixes what is ready every 20 ms, flushes every second;
/// finishes at the `Finish` message (or, if every sender is gone, at the last mixed frame).
fn run(
    rx: Receiver<Msg>,
    mut writer: MixWriter,
    out: Arc<OutputFile>,
    recording: std::sync::Weak<Recording>,
    id: &str,
) {
    let mut mixer = Mixer::new(0);
    let mut frame = vec![0.0f32; FRAME];
    let hold = samples(HOLD);
    let wait = samples(ALLOWANCE);
    let mut next_tick = Instant::now();
    let mut next_flush = Instant::now() + FLUSH_EVERY;
    let mut failed: Option<String> = None;
    let finish = loop {
        let timeout = next_tick.saturating_duration_since(Instant::now());
        match rx.recv_timeout(timeout) {
            Ok(Msg::Packet { track, at, data }) => {
                if let Err(e) = mixer.push(&track, at, &data) {
                    tracing::warn!(recording = %id, error = %e, "mix input refused");
                }
                continue;
            }
            Ok(Msg::Ended(track)) => {
                mixer.end_input(&track);
                continue;
            }
            Ok(Msg::Finish(end, reply)) => break Some((end, reply)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break None,
        }
        let now = Instant::now();
        next_tick = now + Duration::from_millis(20);
        if failed.is_some() {
            continue;
        }
        let Some(rec) = recording.upgrade() else {
            continue;
        };
        // Nothing past the stop is mixed live (the finish mixes up to it exactly).
        let until = rec.stop_instant().map_or(now, |stop| stop.min(now));
        let position =
            (rec.clock().recorded_clamped(rec.clock().seconds(until)) * RATE as f64) as i64;
        drop(rec);
        let mut step = || -> Result<(), String> {
            while mixer.ready(position, hold, wait) {
                mixer.mix(&mut frame);
                writer.write(&frame)?;
            }
            if now >= next_flush {
                next_flush = now + FLUSH_EVERY;
                writer.flush()?;
                out.bytes.store(writer.bytes(), Ordering::Relaxed);
            }
            Ok(())
        };
        if let Err(e) = step() {
            tracing::error!(recording = %id, error = %e, "mix write failed; the mix stops");
            metrics::counter!(crate::telemetry::WRITE_ERRORS).increment(1);
            failed = Some(e);
        }
    };
    let stats = mixer.stats();
    let (end, reply) = match finish {
        Some((end, reply)) => (end, Some(reply)),
        None => (mixer.cursor(), None),
    };
    let result = match failed {
        Some(e) => Err(format!("{MIX_FILE}: {e}")),
        None => drain(&mut mixer, &mut writer, end.max(0))
            .and_then(|()| writer.finish(end.max(0) as u64))
            .map(|bytes| out.bytes.store(bytes, Ordering::Relaxed))
            .map_err(|e| format!("{MIX_FILE}: {e}")),
    };
    tracing::info!(recording = %id, frames = stats.frames, late = stats.late,
        concealed = stats.concealed, ok = result.is_ok(), "mix finished");
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}

/// Mixes everything up to `end` plus the encoder's lookahead (in 2.5 ms steps at the tail, so
/// the stream overshoots `end` by less than 2.5 ms before the final granule trims it).
fn drain(mixer: &mut Mixer, writer: &mut MixWriter, end: i64) -> Result<(), String> {
    let target = end + writer.lookahead() as i64;
    let mut frame = vec![0.0f32; FRAME];
    while mixer.cursor() < target {
        let left = target - mixer.cursor();
        let len = if left >= FRAME as i64 {
            FRAME
        } else {
            // Whole 2.5 ms steps, rounded up.
            (left as usize).div_ceil(120) * 120
        };
        let len = [960, 480, 240, 120]
            .into_iter()
            .find(|&n| n <= len)
            .unwrap_or(120);
        let from = mixer.cursor();
        mixer.mix(&mut frame[..len]);
        fade_out(&mut frame[..len], from, end);
        writer.write(&frame[..len])?;
    }
    Ok(())
}

/// The last [`FADE`] samples before `end` fade to zero and nothing sounds after it: a mix cut
/// mid-sound would be a step that the encoder rings on (overshooting full scale).
fn fade_out(samples: &mut [f32], from: i64, end: i64) {
    for (i, s) in samples.iter_mut().enumerate() {
        let left = end - (from + i as i64);
        if left <= 0 {
            *s = 0.0;
        } else if left < FADE {
            *s *= left as f32 / FADE as f32;
        }
    }
}

/// Samples at 48 kHz in `d`.
fn samples(d: Duration) -> i64 {
    (d.as_secs_f64() * RATE as f64).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::manifest::CompositeState;
    use crate::record::session::RecordOptions;

    /// A recording with a composite that fails before its stop (its recorder could not
    /// join): the composite says failed instead of staying pending, and the mix's thread
    /// ends with the file finished.
    #[test]
    fn a_failed_start_fails_the_composite_and_ends_the_mix() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recording::new(
            "r".into(),
            "room".into(),
            dir.path().to_owned(),
            RecordOptions {
                mix: true,
                composite: Some((640, 360)),
                ..RecordOptions::default()
            },
        );
        let mix = LiveMix::start(&rec, None).unwrap();
        assert_eq!(
            rec.doc().composite.map(|c| c.state),
            Some(CompositeState::Pending)
        );
        drop(mix);
        rec.fail("the recorder could not join".into());
        let composite = rec.doc().composite.unwrap();
        assert_eq!(composite.state, CompositeState::Failed);
        assert!(composite.error.unwrap().contains("did not stop normally"));
        // The thread finalizes the file once the last sender is gone.
        let path = dir.path().join(MIX_FILE);
        for _ in 0..500 {
            let bytes = std::fs::read(&path).unwrap();
            if crate::record::ogg::read_ogg_opus(std::io::Cursor::new(bytes)).is_ok_and(|i| i.eos) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the mix was not finished");
    }
}
