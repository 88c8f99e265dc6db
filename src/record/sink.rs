//! Where a track's placed samples go: a file of its own (WebM for video, Ogg Opus for audio)
//! or a lane of its participant's muxed WebM ([`MuxFile`]).
//!
//! A [`Sink`] owns the file's lazy creation (at the first sample a file can start with), the
//! writers' increasing-timestamp rules, the track's written figures ([`TrackStats`]) and the
//! flush and fsync on close. It does no other I/O and reports instead of acting: the track task
//! rewrites the manifest when a push says the file started, and records the errors it returns.
//!
//! [`TrackStats`]: super::stats::TrackStats

use super::manifest::Kind;
use super::mux::{Lane, MuxFile};
use super::ogg::{OggOpusWriter, PacketOutcome};
use super::stats::TrackEntry;
use super::webm::{WebmTrack, WebmWriter};
use crate::media::clock::FileTimeline;
use crate::media::opus::OPUS_PRE_SKIP;
use bytes::Bytes;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Write buffer per file.
const WRITE_BUFFER: usize = 64 * 1024;
/// WebM track number of a video file of its own.
const OWN_VIDEO: u64 = 1;

/// The RTP clock rate of a track of `kind` (VP8: 90 kHz, Opus: 48 kHz).
pub fn clock_rate(kind: Kind) -> u32 {
    match kind {
        Kind::Video => 90_000,
        Kind::Audio => 48_000,
    }
}

/// A time on a track's media clock: whole ticks at `rate` Hz, so positions in a file stay
/// exact integers (no seconds converted back and forth). `rate` is never 0 in practice; the
/// conversions treat 0 as 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaTime {
    /// Ticks of the clock (RTP units).
    pub ticks: i64,
    /// Ticks per second.
    pub rate: u32,
}

impl MediaTime {
    /// `ticks` at `rate` Hz.
    pub fn new(ticks: i64, rate: u32) -> Self {
        Self { ticks, rate }
    }

    /// Whole milliseconds, halves rounded up (for `ticks >= 0`).
    pub fn millis(self) -> i64 {
        let rate = i64::from(self.rate.max(1));
        (self.ticks * 1000 + rate / 2).div_euclid(rate)
    }

    /// Seconds (for handing to the recording's clock, which counts in seconds).
    pub fn seconds(self) -> f64 {
        self.ticks as f64 / f64::from(self.rate.max(1))
    }
}

/// A sample placed on its file's timeline.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Recording time (seconds) of the file's first sample: the zero of `position`.
    pub file_start: f64,
    /// Whether the file's start moved (was placed anew) with this sample.
    pub moved: bool,
    /// Position since the file's first sample; negative for a sample older than it.
    pub position: MediaTime,
    /// A VP8 keyframe (audio: always false).
    pub keyframe: bool,
    /// A VP8 keyframe's frame size.
    pub size: Option<(u16, u16)>,
    /// The frame or Opus packet (not empty).
    pub data: Bytes,
    /// When its first packet arrived.
    pub arrival: Instant,
}

/// What [`Sink::start`] did with a track's first sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Not a sample a file starts with (video waits for a keyframe): drop it.
    Wait,
    /// Started (a lane: the muxed file itself starts on a push).
    Open,
    /// The track's own file was created and placed: the manifest should list it now.
    Created,
}

enum Out {
    Webm {
        path: PathBuf,
        writer: Option<WebmWriter<BufWriter<File>>>,
        size: Option<(u16, u16)>,
        last_ms: u64,
    },
    Ogg {
        path: PathBuf,
        writer: Option<OggOpusWriter<BufWriter<File>>>,
    },
    Lane {
        mux: Arc<MuxFile>,
        lane: Lane,
    },
}

/// The output of one track. After a failed start, push or flush it takes no more samples;
/// `flush` and `finish` still run on what was written (and report their own errors).
pub struct Sink {
    entry: Arc<TrackEntry>,
    out: Out,
    failed: bool,
}

/// Whole milliseconds of `seconds`, rounded.
fn ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

/// Channels of an Opus stream from a packet's TOC (the stereo flag).
fn opus_channels(packet: &[u8]) -> u8 {
    if packet.first().is_some_and(|toc| toc & 0x04 != 0) {
        2
    } else {
        1
    }
}

impl Sink {
    /// A file of the track's own at `path` (WebM for video, Ogg Opus for audio), created at
    /// the first sample it can start with.
    pub fn own(entry: Arc<TrackEntry>, path: PathBuf) -> Self {
        let out = match entry.kind {
            Kind::Video => Out::Webm {
                path,
                writer: None,
                size: None,
                last_ms: 0,
            },
            Kind::Audio => Out::Ogg { path, writer: None },
        };
        Self {
            entry,
            out,
            failed: false,
        }
    }

    /// The track's lane of its participant's muxed file (the track is attached to it).
    pub fn lane(entry: Arc<TrackEntry>, mux: Arc<MuxFile>) -> Self {
        let lane = match entry.kind {
            Kind::Video => Lane::Video,
            Kind::Audio => Lane::Audio,
        };
        Self {
            entry,
            out: Out::Lane { mux, lane },
            failed: false,
        }
    }

    /// Whether the track's file size is this sink's to report (not for the audio lane of a
    /// muxed file: its video lane reports the same file).
    pub fn bytes_are_mine(&self) -> bool {
        !matches!(
            self.out,
            Out::Lane {
                lane: Lane::Audio,
                ..
            }
        )
    }

    /// Whether a write failed: the sink takes no more samples.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Starts the output with the track's first sample (recording time `t`; `data` not empty).
    /// Own files are created here and placed at `t`.
    pub fn start(
        &mut self,
        keyframe: bool,
        size: Option<(u16, u16)>,
        data: &[u8],
        t: f64,
    ) -> Result<Start, String> {
        if self.entry.kind == Kind::Video && !keyframe {
            return Ok(Start::Wait);
        }
        let stats = &self.entry.stats;
        let created = match &mut self.out {
            Out::Lane { .. } => return Ok(Start::Open),
            Out::Webm { path, writer, .. } => {
                let (w, h) = size.unwrap_or((0, 0));
                let track = WebmTrack::Video {
                    number: OWN_VIDEO,
                    width: u32::from(w),
                    height: u32::from(h),
                };
                create(path, stats).and_then(|out| {
                    let made = WebmWriter::new(out, &[track]).map_err(|e| e.to_string())?;
                    *writer = Some(made);
                    Ok(())
                })
            }
            Out::Ogg { path, writer } => {
                let channels = opus_channels(data);
                let serial = rand::random::<u32>();
                create(path, stats).and_then(|out| {
                    let made = OggOpusWriter::new(out, serial, channels, OPUS_PRE_SKIP)
                        .map_err(|e| e.to_string())?;
                    *writer = Some(made);
                    Ok(())
                })
            }
        };
        match created {
            Ok(()) => {
                stats.start_offset_ms.store(ms(t), Ordering::Relaxed);
                Ok(Start::Created)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Writes a placed sample. `Ok(true)` when this push started the muxed file (the manifest
    /// should list it now). Samples before the file's start are dropped.
    pub fn push(&mut self, sample: Sample) -> Result<bool, String> {
        if self.failed {
            return Ok(false);
        }
        let result = self.write(sample);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn write(&mut self, sample: Sample) -> Result<bool, String> {
        let entry = &self.entry;
        let stats = &entry.stats;
        match &mut self.out {
            Out::Webm {
                writer,
                size,
                last_ms,
                ..
            } => {
                if sample.position.ticks < 0 {
                    return Ok(false);
                }
                if sample.moved {
                    let offset = ms(sample.file_start);
                    stats.start_offset_ms.store(offset, Ordering::Relaxed);
                }
                let Some(writer) = writer.as_mut() else {
                    return Ok(false);
                };
                // The writer keeps the track's timestamps strictly increasing.
                let ts = sample.position.millis() as u64;
                if let Some((w, h)) = sample.size.filter(|_| sample.keyframe) {
                    if *size != Some((w, h)) {
                        if size.is_some() {
                            tracing::info!(file = %entry.file, w, h, "resolution changed");
                        }
                        *size = Some((w, h));
                        writer.note_video_size(OWN_VIDEO, u32::from(w), u32::from(h));
                        stats.note_size(w, h);
                    }
                }
                let ts = writer
                    .write_frame(OWN_VIDEO, ts, sample.keyframe, &sample.data)
                    .map_err(|e| e.to_string())?;
                *last_ms = ts;
                stats.wrote(sample.keyframe, ts);
                stats.bytes.store(writer.bytes_written(), Ordering::Relaxed);
                Ok(false)
            }
            Out::Ogg { writer, .. } => {
                if sample.moved {
                    let offset = ms(sample.file_start);
                    stats.start_offset_ms.store(offset, Ordering::Relaxed);
                }
                let (Some(writer), Ok(pts)) =
                    (writer.as_mut(), u64::try_from(sample.position.ticks))
                else {
                    return Ok(false);
                };
                match writer
                    .write_packet(&sample.data, pts)
                    .map_err(|e| e.to_string())?
                {
                    PacketOutcome::Written { .. } => {
                        stats.wrote(false, writer.duration_samples() / 48);
                        stats.bytes.store(writer.bytes_written(), Ordering::Relaxed);
                    }
                    PacketOutcome::Dropped(reason) => {
                        tracing::trace!(file = %entry.file, ?reason, "audio packet dropped");
                    }
                }
                Ok(false)
            }
            Out::Lane { mux, lane } => {
                if sample.position.ticks < 0 {
                    return Ok(false);
                }
                let at = sample.file_start + sample.position.seconds();
                let pushed = match lane {
                    Lane::Video => {
                        if let Some((w, h)) = sample.size.filter(|_| sample.keyframe) {
                            stats.note_size(w, h);
                        }
                        mux.push_video(at, sample.keyframe, sample.size, sample.data)
                    }
                    Lane::Audio => {
                        let channels = opus_channels(&sample.data);
                        mux.push_audio(at, channels, sample.data, sample.arrival)
                    }
                };
                pushed
                    .map(|started| started.is_some())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Pushes buffered bytes to the OS. A failure stops the sink.
    pub fn flush(&mut self) -> Result<(), String> {
        let result = match &mut self.out {
            Out::Webm { writer, .. } => writer
                .as_mut()
                .map_or(Ok(()), |w| w.flush().map_err(|e| e.to_string())),
            Out::Ogg { writer, .. } => writer
                .as_mut()
                .map_or(Ok(()), |w| w.flush().map_err(|e| e.to_string())),
            Out::Lane { mux, .. } => mux.flush().map_err(|e| e.to_string()),
        };
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Ends the output at recording time `end_t`: an own file is finalized (its duration runs
    /// to `end_t`, at least past its last sample), flushed and fsynced, and its size and
    /// duration go to the figures; a lane tells its muxed file. `timeline` is the file's (none
    /// when no sample started it). An error means the file may not be complete or durable;
    /// the figures are in either way.
    pub fn finish(self, end_t: f64, timeline: Option<&FileTimeline>) -> Result<(), String> {
        let stats = &self.entry.stats;
        match self.out {
            Out::Lane { mux, lane } => mux.finish(lane, end_t).map_err(|e| e.to_string()),
            Out::Webm {
                writer, last_ms, ..
            } => {
                let (Some(writer), Some(timeline)) = (writer, timeline) else {
                    return Ok(());
                };
                let live = ms(end_t - timeline.first_t()).max(0) as u64;
                let duration = live.max(last_ms + 1);
                let out = writer.finalize(duration).map_err(|e| e.to_string())?;
                let closed = close(&self.entry, out);
                stats.duration_ms.store(duration, Ordering::Relaxed);
                closed
            }
            Out::Ogg { writer, .. } => {
                let (Some(writer), Some(timeline)) = (writer, timeline) else {
                    return Ok(());
                };
                let live = timeline.position_at(end_t).max(0) as u64;
                // The file's timeline counts the pre-skip samples (RFC 7845): ending at `live`
                // played samples means a final granule of live + pre-skip.
                let end_pts = live + u64::from(OPUS_PRE_SKIP);
                let duration = writer.duration_samples();
                let out = writer.finalize(Some(end_pts)).map_err(|e| e.to_string())?;
                let closed = close(&self.entry, out);
                let samples = duration.max(end_pts - u64::from(OPUS_PRE_SKIP));
                stats.duration_ms.store(samples / 48, Ordering::Relaxed);
                closed
            }
        }
    }
}

/// Creates the file at `path` (buffered) and marks it created.
fn create(
    path: &std::path::Path,
    stats: &super::stats::TrackStats,
) -> Result<BufWriter<File>, String> {
    let file = File::create(path).map_err(|e| e.to_string())?;
    stats.file_created.store(true, Ordering::Relaxed);
    Ok(BufWriter::with_capacity(WRITE_BUFFER, file))
}

/// The last step of an own file: its size to the figures, then flush and fsync.
fn close(entry: &TrackEntry, out: BufWriter<File>) -> Result<(), String> {
    let file = out
        .into_inner()
        .map_err(|e| format!("flush at finalize: {}", e.error()))?;
    if let Ok(meta) = file.metadata() {
        entry.stats.bytes.store(meta.len(), Ordering::Relaxed);
    }
    file.sync_all()
        .map_err(|e| format!("fsync at finalize: {e} (the file may not be durable)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::clock::{RecordingClock, TrackClock};
    use crate::record::stats::TrackStats;
    use std::io::Cursor;

    fn entry(kind: Kind, file: &str) -> Arc<TrackEntry> {
        Arc::new(TrackEntry {
            id: "t1".into(),
            participant: "p".into(),
            participant_name: "p".into(),
            kind,
            file: file.into(),
            stats: TrackStats::default(),
        })
    }

    /// A VP8 keyframe header (frame tag, start code, size) of `w`x`h`.
    fn keyframe(w: u8, h: u8) -> Bytes {
        Bytes::from(vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, w, 0, h, 0, 0, 0])
    }

    /// A 20 ms mono Opus packet (TOC config 15).
    fn opus() -> Bytes {
        Bytes::from_static(&[0x78, 0x01, 0x02])
    }

    fn sample(
        ticks: i64,
        rate: u32,
        keyframe: bool,
        size: Option<(u16, u16)>,
        data: Bytes,
    ) -> Sample {
        Sample {
            file_start: 1.5,
            moved: false,
            position: MediaTime::new(ticks, rate),
            keyframe,
            size,
            data,
            arrival: Instant::now(),
        }
    }

    fn timeline(rate: u32, t: f64) -> FileTimeline {
        let clock = TrackClock::new(RecordingClock::new(Instant::now()), rate);
        FileTimeline::start(0, t, &clock)
    }

    #[test]
    fn millis_round_halves_up_like_the_video_timestamps() {
        for ticks in 0..200_000 {
            assert_eq!(MediaTime::new(ticks, 90_000).millis(), (ticks + 45) / 90);
        }
        assert_eq!(MediaTime::new(24, 48_000).millis(), 1);
        assert_eq!(MediaTime::new(23, 48_000).millis(), 0);
        assert_eq!(MediaTime::new(96_000, 48_000).seconds(), 2.0);
    }

    /// An own WebM: created at the first keyframe (not before), placed, every figure filled
    /// in, and the file byte for byte what the writer makes of the same frames (strictly
    /// increasing timestamps, the later size noted, the duration to the end).
    #[test]
    fn own_webm_fills_every_figure_and_writes_the_writers_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.webm");
        let e = entry(Kind::Video, "v.webm");
        let mut sink = Sink::own(Arc::clone(&e), path.clone());
        assert!(sink.bytes_are_mine());
        let delta = Bytes::from_static(&[0x11, 0x00, 0x00, 0x01]);
        assert_eq!(sink.start(false, None, &delta, 1.4), Ok(Start::Wait));
        assert!(!path.exists() && !e.stats.file_created.load(Ordering::Relaxed));
        let key = keyframe(16, 16);
        assert_eq!(
            sink.start(true, Some((16, 16)), &key, 1.5),
            Ok(Start::Created)
        );
        assert!(path.exists() && e.stats.file_created.load(Ordering::Relaxed));
        assert_eq!(e.stats.start_offset_ms.load(Ordering::Relaxed), 1500);

        let frames = [
            (0, true, Some((16, 16)), key.clone()),
            (-90, false, None, delta.clone()),
            (3_000, false, None, delta.clone()),
            (6_000, false, None, delta.clone()),
            // Same timestamp as the last one: written 1 ms later.
            (6_000, false, None, delta.clone()),
            (9_000, true, Some((32, 24)), keyframe(32, 24)),
        ];
        for (ticks, k, size, data) in frames.iter().cloned() {
            assert_eq!(sink.push(sample(ticks, 90_000, k, size, data)), Ok(false));
        }
        let mut moved = sample(12_000, 90_000, false, None, delta.clone());
        moved.moved = true;
        moved.file_start = 1.25;
        assert_eq!(sink.push(moved), Ok(false));
        let s = &e.stats;
        assert_eq!(s.start_offset_ms.load(Ordering::Relaxed), 1250);
        assert_eq!(s.frames.load(Ordering::Relaxed), 6);
        assert_eq!(s.keyframes.load(Ordering::Relaxed), 2);
        assert_eq!(s.duration_ms.load(Ordering::Relaxed), 133);
        assert_eq!(s.width.load(Ordering::Relaxed), 32);
        assert_eq!(s.height.load(Ordering::Relaxed), 24);
        assert!(s.bytes.load(Ordering::Relaxed) > 0);
        sink.flush().unwrap();
        sink.finish(1.75, Some(&timeline(90_000, 1.25))).unwrap();
        assert_eq!(s.duration_ms.load(Ordering::Relaxed), 500);

        let track = WebmTrack::Video {
            number: OWN_VIDEO,
            width: 16,
            height: 16,
        };
        let mut w = WebmWriter::new(Cursor::new(Vec::new()), &[track]).unwrap();
        for (ts, k, data) in [
            (0, true, &key),
            (33, false, &delta),
            (67, false, &delta),
            (67, false, &delta),
        ] {
            w.write_frame(OWN_VIDEO, ts, k, data).unwrap();
        }
        w.note_video_size(OWN_VIDEO, 32, 24);
        w.write_frame(OWN_VIDEO, 100, true, &keyframe(32, 24))
            .unwrap();
        w.write_frame(OWN_VIDEO, 133, false, &delta).unwrap();
        let want = w.finalize(500).unwrap().into_inner();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got, want);
        assert_eq!(s.bytes.load(Ordering::Relaxed), got.len() as u64);
    }

    /// An own Ogg Opus file: created at the first packet, granules from the positions, the
    /// figures filled in, and the end granule at the stop.
    #[test]
    fn own_ogg_fills_every_figure_and_ends_at_the_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.ogg");
        let e = entry(Kind::Audio, "a.ogg");
        let mut sink = Sink::own(Arc::clone(&e), path.clone());
        assert_eq!(sink.start(false, None, &opus(), 2.0), Ok(Start::Created));
        assert_eq!(e.stats.start_offset_ms.load(Ordering::Relaxed), 2000);
        for ticks in [0, 960, 960, 2 * 960] {
            assert_eq!(
                sink.push(sample(ticks, 48_000, false, None, opus())),
                Ok(false)
            );
        }
        let s = &e.stats;
        assert_eq!(
            s.frames.load(Ordering::Relaxed),
            3,
            "the late duplicate is dropped"
        );
        assert_eq!(s.keyframes.load(Ordering::Relaxed), 0);
        // Played samples: the file's timeline counts the pre-skip (RFC 7845).
        let played = 3 * 960 - u64::from(OPUS_PRE_SKIP);
        assert_eq!(s.duration_ms.load(Ordering::Relaxed), played / 48);
        assert_eq!(s.width.load(Ordering::Relaxed), 0);
        sink.finish(3.0, Some(&timeline(48_000, 2.0))).unwrap();
        assert_eq!(s.duration_ms.load(Ordering::Relaxed), 1000);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(s.bytes.load(Ordering::Relaxed), bytes.len() as u64);
        let info = crate::record::ogg::read_ogg_opus(Cursor::new(bytes)).unwrap();
        assert_eq!(info.duration_samples(), Some(48_000));
    }

    /// A muxed file's lanes: the video lane's push starts the file (the manifest is due), both
    /// lanes' figures are filled in, the audio lane does not report the file's bytes.
    #[test]
    fn lanes_start_the_muxed_file_and_fill_their_figures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p-av-1.webm");
        let mux = MuxFile::new("p-av-1.webm".into(), path.clone());
        let (v, a) = (
            entry(Kind::Video, "p-av-1.webm"),
            entry(Kind::Audio, "p-av-1.webm"),
        );
        assert!(mux.attach(Lane::Video, Arc::clone(&v)));
        assert!(mux.attach(Lane::Audio, Arc::clone(&a)));
        let mut video = Sink::lane(Arc::clone(&v), Arc::clone(&mux));
        let mut audio = Sink::lane(Arc::clone(&a), Arc::clone(&mux));
        assert!(video.bytes_are_mine() && !audio.bytes_are_mine());
        assert_eq!(video.start(false, None, &[1], 1.5), Ok(Start::Wait));
        assert_eq!(
            video.start(true, Some((16, 16)), &keyframe(16, 16), 1.5),
            Ok(Start::Open)
        );
        assert_eq!(audio.start(false, None, &opus(), 1.5), Ok(Start::Open));
        assert!(!path.exists(), "a lane creates nothing");
        let key = sample(0, 90_000, true, Some((16, 16)), keyframe(16, 16));
        assert_eq!(video.push(key), Ok(true));
        assert!(v.stats.file_created.load(Ordering::Relaxed));
        assert_eq!(v.stats.start_offset_ms.load(Ordering::Relaxed), 1500);
        for i in 0..10 {
            assert_eq!(
                audio.push(sample(i * 960, 48_000, false, None, opus())),
                Ok(false)
            );
        }
        assert_eq!(
            video.push(sample(-1, 90_000, true, Some((8, 8)), keyframe(8, 8))),
            Ok(false)
        );
        assert_eq!(
            v.stats.width.load(Ordering::Relaxed),
            16,
            "a dropped frame sets nothing"
        );
        video.finish(2.0, None).unwrap();
        audio.finish(2.0, None).unwrap();
        assert_eq!(v.stats.frames.load(Ordering::Relaxed), 1);
        assert_eq!(v.stats.keyframes.load(Ordering::Relaxed), 1);
        assert_eq!(a.stats.frames.load(Ordering::Relaxed), 10);
        assert_eq!(a.stats.keyframes.load(Ordering::Relaxed), 0);
        assert_eq!(v.stats.duration_ms.load(Ordering::Relaxed), 500);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(v.stats.bytes.load(Ordering::Relaxed), len);
        assert_eq!(a.stats.bytes.load(Ordering::Relaxed), len);
    }

    /// A file that cannot be created: the error is returned once, then the sink takes nothing.
    #[test]
    fn a_failed_create_stops_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry(Kind::Audio, "a.ogg");
        let mut sink = Sink::own(Arc::clone(&e), dir.path().join("missing/a.ogg"));
        assert!(sink.start(false, None, &opus(), 0.0).is_err());
        assert!(sink.failed());
        assert_eq!(sink.push(sample(0, 48_000, false, None, opus())), Ok(false));
        assert_eq!(e.stats.frames.load(Ordering::Relaxed), 0);
        assert_eq!(e.stats.start_offset_ms.load(Ordering::Relaxed), 0);
        sink.finish(1.0, None).unwrap();
    }
}
