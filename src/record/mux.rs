//! Muxed audio+video WebM (`"audio": "webm"`): one file per participant holding its first VP8
//! and first Opus track, interleaved in timestamp order, on the recording's clock.
//!
//! The two track tasks push into one [`MuxFile`] (a mutex held for the push, never across an
//! await). The file starts at the first video keyframe; its tracks are the video and the audio
//! if that was attached by then (a participant's audio usually starts first). Audio that comes
//! before the keyframe is held (up to [`AUDIO_WAIT`]) and written from the file's start on. A
//! participant with no video gets an audio-only file once [`AUDIO_WAIT`] has passed. The
//! [`Interleaver`] releases an item once every live track has passed its timestamp, or once it
//! is [`HOLD_MS`] behind the newest, so a stalled track cannot hold the other back for long.

use super::stats::TrackEntry;
use super::webm::{WebmError, WebmTrack, WebmWriter};
use crate::media::opus::OPUS_PRE_SKIP;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest wait for a video keyframe before audio starts an audio-only file.
pub const AUDIO_WAIT: Duration = Duration::from_secs(2);
/// How far behind the newest item an item may be held for interleaving.
pub const HOLD_MS: i64 = 500;
/// WebM track number of the video.
const VIDEO: u64 = 1;
/// WebM track number of the audio.
const AUDIO: u64 = 2;

/// Which of the two tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The VP8 track.
    Video,
    /// The Opus track.
    Audio,
}

impl Lane {
    fn index(self) -> usize {
        match self {
            Self::Video => 0,
            Self::Audio => 1,
        }
    }
}

/// One block waiting to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its lane.
    pub lane: Lane,
    /// Timestamp in the file (ms).
    pub ts_ms: i64,
    /// Keyframe flag.
    pub keyframe: bool,
    /// The frame or packet.
    pub data: bytes::Bytes,
}

/// Orders blocks of two lanes by timestamp (pure; time is an input).
#[derive(Debug, Default)]
pub struct Interleaver {
    queue: BTreeMap<(i64, u64), Pending>,
    latest: [Option<i64>; 2],
    live: [bool; 2],
    seq: u64,
}

impl Interleaver {
    /// Marks `lane` as live (its items are waited for) or finished.
    pub fn set_live(&mut self, lane: Lane, live: bool) {
        self.live[lane.index()] = live;
    }

    /// Queues an item.
    pub fn push(&mut self, item: Pending) {
        let i = item.lane.index();
        self.latest[i] = Some(self.latest[i].map_or(item.ts_ms, |l| l.max(item.ts_ms)));
        self.seq += 1;
        self.queue.insert((item.ts_ms, self.seq), item);
    }

    /// The next item that may be written: every live lane has reached its timestamp, or it is
    /// [`HOLD_MS`] older than the newest item.
    pub fn pop(&mut self) -> Option<Pending> {
        let (&(ts, _), _) = self.queue.iter().next()?;
        let newest = self.latest.iter().flatten().max().copied().unwrap_or(ts);
        let all_passed = (0..2).all(|i| !self.live[i] || self.latest[i].is_some_and(|l| l >= ts));
        if all_passed || newest - ts >= HOLD_MS {
            return self.queue.pop_first().map(|(_, item)| item);
        }
        None
    }

    /// Everything left, in order.
    pub fn drain(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.queue).into_values().collect()
    }
}

struct Attached {
    entry: Arc<TrackEntry>,
    channels: u8,
    finished: bool,
    end_t: f64,
    last_ts: i64,
}

struct Inner {
    path: std::path::PathBuf,
    writer: Option<WebmWriter<BufWriter<File>>>,
    /// Recording time of the file's zero.
    zero_t: Option<f64>,
    lanes: [Option<Attached>; 2],
    /// Audio waiting for the file to start: (recording time, packet).
    early_audio: Vec<(f64, bytes::Bytes)>,
    first_audio: Option<Instant>,
    interleaver: Interleaver,
    failed: bool,
    closed: bool,
}

/// One participant's muxed file.
pub struct MuxFile {
    name: String,
    inner: Mutex<Inner>,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The file could not be created or written.
    #[error("{0}")]
    Write(#[from] WebmError),
    /// Creating the file failed.
    #[error("create: {0}")]
    Create(std::io::Error),
    /// The final fsync failed: the file is complete but may not be durable.
    #[error("fsync at finalize: {0} (the file may not be durable)")]
    Sync(std::io::Error),
    /// The file started without this lane (no video keyframe within [`AUDIO_WAIT`]).
    #[error("the muxed file started audio-only: no video keyframe within {AUDIO_WAIT:?}")]
    Detached,
}

impl MuxFile {
    /// A muxed file named `name` at `path` (created at its first keyframe).
    pub fn new(name: String, path: std::path::PathBuf) -> Arc<Self> {
        Arc::new(Self {
            name,
            inner: Mutex::new(Inner {
                path,
                writer: None,
                zero_t: None,
                lanes: [None, None],
                early_audio: Vec::new(),
                first_audio: None,
                interleaver: Interleaver::default(),
                failed: false,
                closed: false,
            }),
        })
    }

    /// The file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a track could attach to `lane` now.
    pub fn can_attach(&self, lane: Lane) -> bool {
        let inner = self.lock();
        !inner.closed && inner.lanes[lane.index()].is_none() && inner.writer.is_none()
    }

    /// Attaches a track to `lane`. Refused (false) when the lane is taken or the file already
    /// started without it: the track then gets a file of its own.
    pub fn attach(&self, lane: Lane, entry: Arc<TrackEntry>) -> bool {
        let mut inner = self.lock();
        if inner.closed || inner.lanes[lane.index()].is_some() || inner.writer.is_some() {
            return false;
        }
        inner.lanes[lane.index()] = Some(Attached {
            entry,
            // Until the first packet tells (its TOC), stereo decodes either kind of stream.
            channels: 2,
            finished: false,
            end_t: 0.0,
            last_ts: -1,
        });
        inner.interleaver.set_live(lane, true);
        true
    }

    /// Whether the file has started (a track attached now would be refused).
    pub fn started(&self) -> bool {
        self.lock().writer.is_some()
    }

    /// A video frame at recording time `t`. Returns the file's zero when this frame started it.
    pub fn push_video(
        &self,
        t: f64,
        keyframe: bool,
        size: Option<(u16, u16)>,
        data: bytes::Bytes,
    ) -> Result<Option<f64>, MuxError> {
        let mut inner = self.lock();
        if inner.failed {
            return Ok(None);
        }
        let mut started = None;
        if inner.writer.is_none() {
            if !keyframe {
                return Ok(None);
            }
            let (w, h) = size.unwrap_or((0, 0));
            inner.start(t, Some((u32::from(w), u32::from(h))))?;
            started = Some(t);
        }
        if inner.lanes[Lane::Video.index()].is_none() {
            return Err(MuxError::Detached);
        }
        inner.queue(Lane::Video, t, keyframe, data);
        inner.write_ready()?;
        Ok(started)
    }

    /// An audio packet (of a stream with `channels`) at recording time `t`, arriving at `now`.
    /// Returns the file's zero when this packet started an audio-only file.
    pub fn push_audio(
        &self,
        t: f64,
        channels: u8,
        data: bytes::Bytes,
        now: Instant,
    ) -> Result<Option<f64>, MuxError> {
        let mut inner = self.lock();
        if inner.failed {
            return Ok(None);
        }
        if inner.writer.is_none() {
            if let Some(audio) = inner.lanes[Lane::Audio.index()].as_mut() {
                audio.channels = channels;
            }
            // Hold early audio for a keyframe whether or not the video track has attached
            // yet: its first packets often come a little after the audio's.
            let first = *inner.first_audio.get_or_insert(now);
            if now.duration_since(first) < AUDIO_WAIT {
                if inner.early_audio.len() < 500 {
                    inner.early_audio.push((t, data));
                }
                return Ok(None);
            }
            // No keyframe in time (or no video at all): audio starts the file alone.
            inner.lanes[Lane::Video.index()] = None;
            inner.interleaver.set_live(Lane::Video, false);
            let zero = inner.early_audio.first().map_or(t, |(t0, _)| *t0);
            inner.start(zero, None)?;
            inner.queue(Lane::Audio, t, true, data);
            inner.write_ready()?;
            return Ok(Some(zero));
        }
        inner.queue(Lane::Audio, t, true, data);
        inner.write_ready()?;
        Ok(None)
    }

    /// Pushes buffered bytes to the OS.
    pub fn flush(&self) -> Result<(), MuxError> {
        let mut inner = self.lock();
        if let Some(writer) = inner.writer.as_mut() {
            writer.flush()?;
        }
        Ok(())
    }

    /// The lane's track ended at recording time `end_t`. The last lane to finish finalizes the
    /// file (duration to the latest end).
    pub fn finish(&self, lane: Lane, end_t: f64) -> Result<(), MuxError> {
        let mut inner = self.lock();
        if let Some(attached) = inner.lanes[lane.index()].as_mut() {
            attached.finished = true;
            attached.end_t = end_t;
        }
        inner.interleaver.set_live(lane, false);
        let all_done = inner.lanes.iter().flatten().all(|a| a.finished);
        if !all_done {
            return inner.write_ready();
        }
        inner.closed = true;
        for item in inner.interleaver.drain() {
            inner.write(item)?;
        }
        let (Some(writer), Some(zero)) = (inner.writer.take(), inner.zero_t) else {
            return Ok(());
        };
        let end = inner
            .lanes
            .iter()
            .flatten()
            .map(|a| a.end_t)
            .fold(zero, f64::max);
        let last = inner
            .lanes
            .iter()
            .flatten()
            .map(|a| a.last_ts)
            .max()
            .unwrap_or(0)
            .max(0) as u64;
        let duration = (((end - zero) * 1000.0).round().max(0.0) as u64).max(last + 1);
        let out = writer.finalize(duration)?;
        let file = out
            .into_inner()
            .map_err(|e| MuxError::Create(e.into_error()))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let synced = file.sync_all();
        for attached in inner.lanes.iter().flatten() {
            attached.entry.stats.bytes.store(bytes, Ordering::Relaxed);
            let own = (((attached.end_t - zero) * 1000.0).round().max(0.0) as u64)
                .max(attached.last_ts.max(0) as u64);
            attached
                .entry
                .stats
                .duration_ms
                .store(own, Ordering::Relaxed);
        }
        synced.map_err(MuxError::Sync)
    }
}

impl Inner {
    fn start(&mut self, zero: f64, video: Option<(u32, u32)>) -> Result<(), MuxError> {
        let mut tracks = Vec::new();
        if let Some((width, height)) = video {
            tracks.push(WebmTrack::Video {
                number: VIDEO,
                width,
                height,
            });
        }
        if let Some(audio) = &self.lanes[Lane::Audio.index()] {
            tracks.push(WebmTrack::Audio {
                number: AUDIO,
                channels: audio.channels,
                pre_skip: OPUS_PRE_SKIP,
            });
        }
        let file = File::create(&self.path).map_err(MuxError::Create)?;
        let writer = WebmWriter::new(BufWriter::with_capacity(64 * 1024, file), &tracks);
        let writer = match writer {
            Ok(w) => w,
            Err(e) => {
                self.failed = true;
                return Err(e.into());
            }
        };
        // The file's timestamps start at its first sample: every track of it is placed there.
        let offset = (zero * 1000.0).round() as i64;
        for attached in self.lanes.iter().flatten() {
            let stats = &attached.entry.stats;
            stats.file_created.store(true, Ordering::Relaxed);
            stats.start_offset_ms.store(offset, Ordering::Relaxed);
        }
        self.writer = Some(writer);
        self.zero_t = Some(zero);
        for (t, data) in std::mem::take(&mut self.early_audio) {
            self.queue(Lane::Audio, t, true, data);
        }
        Ok(())
    }

    fn queue(&mut self, lane: Lane, t: f64, keyframe: bool, data: bytes::Bytes) {
        let Some(zero) = self.zero_t else {
            return;
        };
        let ts_ms = ((t - zero) * 1000.0).round() as i64;
        if ts_ms < 0 || self.lanes[lane.index()].is_none() {
            return;
        }
        self.interleaver.push(Pending {
            lane,
            ts_ms,
            keyframe,
            data,
        });
    }

    fn write_ready(&mut self) -> Result<(), MuxError> {
        while let Some(item) = self.interleaver.pop() {
            self.write(item)?;
        }
        Ok(())
    }

    fn write(&mut self, item: Pending) -> Result<(), MuxError> {
        let (Some(writer), Some(attached)) =
            (self.writer.as_mut(), self.lanes[item.lane.index()].as_mut())
        else {
            return Ok(());
        };
        let number = match item.lane {
            Lane::Video => VIDEO,
            Lane::Audio => AUDIO,
        };
        // The writer keeps each track's timestamps strictly increasing (a late item goes 1 ms
        // after the last one).
        let ts =
            match writer.write_frame(number, item.ts_ms.max(0) as u64, item.keyframe, &item.data) {
                Ok(ts) => ts as i64,
                Err(e) => {
                    self.failed = true;
                    return Err(e.into());
                }
            };
        attached.last_ts = ts;
        let keyframe = item.keyframe && item.lane == Lane::Video;
        attached.entry.stats.wrote(keyframe, ts as u64);
        let bytes = writer.bytes_written();
        for attached in self.lanes.iter().flatten() {
            attached.entry.stats.bytes.store(bytes, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(lane: Lane, ts_ms: i64) -> Pending {
        Pending {
            lane,
            ts_ms,
            keyframe: true,
            data: bytes::Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn interleaves_by_timestamp_when_both_lanes_are_live() {
        let mut il = Interleaver::default();
        il.set_live(Lane::Video, true);
        il.set_live(Lane::Audio, true);
        il.push(item(Lane::Video, 0));
        il.push(item(Lane::Video, 33));
        assert_eq!(il.pop(), None, "audio may still bring something earlier");
        il.push(item(Lane::Audio, 0));
        il.push(item(Lane::Audio, 20));
        il.push(item(Lane::Audio, 40));
        let order: Vec<(Lane, i64)> = std::iter::from_fn(|| il.pop())
            .map(|p| (p.lane, p.ts_ms))
            .collect();
        assert_eq!(
            order,
            vec![
                (Lane::Video, 0),
                (Lane::Audio, 0),
                (Lane::Audio, 20),
                (Lane::Video, 33)
            ]
        );
    }

    fn entry(kind: crate::record::manifest::Kind) -> Arc<TrackEntry> {
        Arc::new(TrackEntry {
            id: "t".into(),
            participant: "p".into(),
            participant_name: "p".into(),
            kind,
            file: "p-av-1.webm".into(),
            stats: Default::default(),
        })
    }

    /// A VP8 keyframe header: frame tag (P=0), start code, 16x16.
    fn keyframe() -> bytes::Bytes {
        bytes::Bytes::from_static(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 16, 0, 16, 0, 0, 0])
    }

    /// Audio that arrives before the video track is even attached waits for the video's
    /// keyframe: the file holds both (the race CI once lost).
    #[test]
    fn early_audio_waits_for_video_that_attaches_later() {
        use crate::record::manifest::Kind;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p-av-1.webm");
        let mux = MuxFile::new("p-av-1.webm".into(), path.clone());
        let t0 = Instant::now();
        assert!(mux.attach(Lane::Audio, entry(Kind::Audio)));
        let opus = bytes::Bytes::from_static(&[0x78, 0x01, 0x02]);
        for i in 0u32..10 {
            let t = 0.02 * f64::from(i);
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            assert_eq!(mux.push_audio(t, 1, opus.clone(), at).unwrap(), None);
        }
        assert!(!mux.started(), "audio alone does not start the file yet");
        assert!(mux.attach(Lane::Video, entry(Kind::Video)));
        assert_eq!(
            mux.push_video(0.1, true, Some((16, 16)), keyframe())
                .unwrap(),
            Some(0.1)
        );
        for i in 10u32..20 {
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            mux.push_audio(0.02 * f64::from(i), 1, opus.clone(), at)
                .unwrap();
        }
        mux.finish(Lane::Video, 0.4).unwrap();
        mux.finish(Lane::Audio, 0.4).unwrap();
        let info =
            crate::record::webm_reader::read_webm(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(info.tracks.len(), 2, "video and audio in one file");
        let first_video = info.blocks.iter().find(|b| b.track == 1).unwrap();
        assert!(first_video.keyframe && first_video.ts_ms == 0);
        assert!(
            info.blocks.iter().any(|b| b.track == 2),
            "the early audio is in"
        );
    }

    /// With no keyframe within AUDIO_WAIT, audio starts an audio-only file and the video is
    /// told so (an error on its track), not dropped silently.
    #[test]
    fn video_after_an_audio_only_start_is_refused_loudly() {
        use crate::record::manifest::Kind;
        let dir = tempfile::tempdir().unwrap();
        let mux = MuxFile::new("p-av-1.webm".into(), dir.path().join("p-av-1.webm"));
        let t0 = Instant::now();
        assert!(mux.attach(Lane::Audio, entry(Kind::Audio)));
        assert!(mux.attach(Lane::Video, entry(Kind::Video)));
        let opus = bytes::Bytes::from_static(&[0x78, 0x01, 0x02]);
        mux.push_audio(0.0, 1, opus.clone(), t0).unwrap();
        let late = t0 + AUDIO_WAIT + Duration::from_millis(1);
        assert_eq!(mux.push_audio(2.0, 1, opus, late).unwrap(), Some(0.0));
        assert!(matches!(
            mux.push_video(2.1, true, Some((16, 16)), keyframe()),
            Err(MuxError::Detached)
        ));
    }

    /// The file is /dev/null (writes succeed, fsync fails with EINVAL): the last lane's finish
    /// returns the fsync error (its track reports it) after the figures are in.
    #[test]
    fn a_failed_fsync_at_finalize_is_an_error() {
        use crate::record::manifest::Kind;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p-av-1.webm");
        std::os::unix::fs::symlink("/dev/null", &path).unwrap();
        let mux = MuxFile::new("p-av-1.webm".into(), path);
        let video = entry(Kind::Video);
        assert!(mux.attach(Lane::Video, Arc::clone(&video)));
        assert_eq!(
            mux.push_video(0.0, true, Some((16, 16)), keyframe())
                .unwrap(),
            Some(0.0)
        );
        let err = mux.finish(Lane::Video, 0.5).unwrap_err();
        assert!(matches!(err, MuxError::Sync(_)), "{err}");
        assert_eq!(video.stats.duration_ms.load(Ordering::Relaxed), 500);
    }

    #[test]
    fn a_stalled_lane_holds_the_other_at_most_hold_ms() {
        let mut il = Interleaver::default();
        il.set_live(Lane::Video, true);
        il.set_live(Lane::Audio, true);
        il.push(item(Lane::Audio, 0));
        assert_eq!(il.pop(), None);
        il.push(item(Lane::Audio, HOLD_MS));
        assert_eq!(il.pop().map(|p| p.ts_ms), Some(0));
        il.set_live(Lane::Video, false);
        assert_eq!(il.pop().map(|p| p.ts_ms), Some(HOLD_MS));
    }
}
