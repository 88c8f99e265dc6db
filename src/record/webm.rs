//! Streaming WebM (Matroska) writer for VP8 video and Opus audio.
//!
//! The writer produces a file that is decodable at every [`WebmWriter::flush`] point, so a
//! recording that is killed mid-way still plays up to its last flush:
//!
//! ```text
//! EBML header
//! Segment (unknown size; real size patched by finalize)
//!   Void      (reserved; finalize writes the SeekHead into it)
//!   Info      (TimestampScale = 1 ms, Duration placeholder patched by finalize)
//!   Tracks
//!   Cluster*  (unknown size while open; real size patched when the cluster closes)
//!   Cues      (written by finalize)
//! ```
//!
//! Blocks are streamed to the output as they arrive; only the track table, the cue list and
//! a few offsets are kept in memory. Size fields of unknown-size elements are 8 bytes long
//! so they can be overwritten in place (which needs `Seek`); seeks happen only when a
//! cluster closes and at finalize, which suits a `BufWriter<File>` output.

use super::ebml::{self, cues_element, seekhead_element, CuePoint, CUES_ID, INFO_ID, TRACKS_ID};
use crate::media::opus::opus_head;
use std::io::{Seek, SeekFrom, Write};

use webm_iterable::errors::TagWriterError;
use webm_iterable::matroska_spec::{Master, MatroskaSpec, SimpleBlock};
use webm_iterable::WebmWriter as EbmlWriter;
use webm_iterable::WriteOptions;

/// Timestamp unit of the file: 1 ms in nanoseconds.
const TIMESTAMP_SCALE_NS: u64 = 1_000_000;
/// A new cluster starts at the latest when a block is this far past the cluster timestamp.
const MAX_CLUSTER_SPAN_MS: u64 = 5_000;
/// Opus decoders need this much audio before a seek point to converge (RFC 7845 §4.6).
const OPUS_SEEK_PREROLL_NS: u64 = 80_000_000;
/// Opus always runs at 48 kHz in WebM.
const OPUS_RATE: u32 = 48_000;
/// Highest accepted track number: keeps the block header's track field one byte long.
const MAX_TRACK_NUMBER: u64 = 126;
/// Total bytes reserved (as a Void) right after the Segment header for the SeekHead.
/// A SeekHead with three entries takes at most 68 bytes; the rest stays a Void.
const SEEKHEAD_RESERVED: u64 = 96;
/// Length of an element header with a 4-byte ID and an 8-byte size (Segment, Cluster).
const LONG_HEADER_LEN: u64 = 12;

/// A track declared when the file is created. Track numbers must be unique and in 1..=126.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebmTrack {
    /// VP8 video; size from the first keyframe.
    Video {
        /// Track number used in blocks (1..=126).
        number: u64,
        /// Frame width in pixels (nonzero).
        width: u32,
        /// Frame height in pixels (nonzero).
        height: u32,
    },
    /// Opus audio (48 kHz). `pre_skip` in 48 kHz samples, written as OpusHead in
    /// CodecPrivate and as CodecDelay (ns); SeekPreRoll 80 ms.
    Audio {
        /// Track number used in blocks (1..=126).
        number: u64,
        /// 1 or 2 (OpusHead channel mapping family 0).
        channels: u8,
        /// Samples at 48 kHz the decoder drops at the start of the stream.
        pre_skip: u16,
    },
}

impl WebmTrack {
    fn number(&self) -> u64 {
        match self {
            WebmTrack::Video { number, .. } | WebmTrack::Audio { number, .. } => *number,
        }
    }
}

/// Errors of [`WebmWriter`].
///
/// `InvalidTrack`, `UnknownTrack` and `EmptyFrame` refuse a single call and
/// leave the file intact; after an `Io` or `Ebml` error the writer is [`WebmError::Broken`].
#[derive(Debug, thiserror::Error)]
pub enum WebmError {
    /// Writing, seeking or flushing the output failed.
    #[error("WebM output I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The EBML encoder refused an element.
    #[error("EBML encoding error: {0}")]
    Ebml(#[from] TagWriterError),
    /// The track list given to [`WebmWriter::new`] is not acceptable.
    #[error("invalid track list: {0}")]
    InvalidTrack(String),
    /// A frame names a track number that was not declared.
    #[error("unknown track number {0}")]
    UnknownTrack(u64),
    /// A frame without payload bytes.
    #[error("track {0}: empty frame")]
    EmptyFrame(u64),
    /// A value does not fit the container's fields (e.g. an element over 2^56 bytes).
    #[error("value out of range: {0}")]
    OutOfRange(&'static str),
    /// An earlier I/O or encoding error left the output in an unknown state.
    #[error("the WebM writer failed earlier and cannot continue")]
    Broken,
}

/// Output adaptor that counts the bytes written and defers real flushes to
/// [`WebmWriter::flush`] (the EBML encoder flushes after every element).
struct Sink<W> {
    inner: W,
    /// Absolute position in `inner` where the next byte goes.
    pos: u64,
}

impl<W: Write + Seek> Sink<W> {
    /// Overwrites bytes at absolute position `at` and returns to the end of the output.
    fn patch(&mut self, at: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.seek(SeekFrom::Start(at))?;
        self.inner.write_all(bytes)?;
        self.inner.seek(SeekFrom::Start(self.pos))?;
        Ok(())
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Per-track state.
struct TrackState {
    number: u64,
    is_video: bool,
    last_ts: Option<u64>,
    /// Latest known frame size (video only).
    size: Option<(u32, u32)>,
}

/// The cluster currently receiving blocks.
struct OpenCluster {
    /// Absolute position of the Cluster ID.
    start: u64,
    ts: u64,
}

/// Streaming WebM writer (see the module docs for the layout and crash-safety guarantees).
///
/// Invariants: between calls every byte produced so far has been handed to the output
/// (nothing is buffered inside the writer), at most one cluster is open, and every closed
/// cluster carries its real size.
pub struct WebmWriter<W: Write + Seek> {
    ebml: EbmlWriter<Sink<W>>,
    tracks: Vec<TrackState>,
    has_video: bool,
    /// Absolute position where the writer started (bytes before it are not ours).
    base: u64,
    /// Absolute position of the Segment ID.
    segment_start: u64,
    /// Absolute positions of the reserved Void, of Info and Tracks, and of Duration's data.
    void_pos: u64,
    info_pos: u64,
    tracks_pos: u64,
    duration_pos: u64,
    cluster: Option<OpenCluster>,
    /// One CuePoint per cluster that starts with a video keyframe (any cluster when the file
    /// has no video track).
    cues: Vec<CuePoint>,
    frames: u64,
    keyframes: u64,
    broken: bool,
}

impl<W: Write + Seek> WebmWriter<W> {
    /// Writes the file header (EBML header, Segment start, SeekHead reservation, Info and
    /// Tracks) to `out` at its current position and returns a writer ready for frames.
    pub fn new(mut out: W, tracks: &[WebmTrack]) -> Result<Self, WebmError> {
        validate_tracks(tracks)?;
        let base = out.stream_position()?;
        let mut ebml = EbmlWriter::new(Sink {
            inner: out,
            pos: base,
        });

        ebml.write(&MatroskaSpec::Ebml(Master::Full(vec![
            MatroskaSpec::EbmlVersion(1),
            MatroskaSpec::EbmlReadVersion(1),
            MatroskaSpec::EbmlMaxIdLength(4),
            MatroskaSpec::EbmlMaxSizeLength(8),
            MatroskaSpec::DocType("webm".to_string()),
            MatroskaSpec::DocTypeVersion(4),
            MatroskaSpec::DocTypeReadVersion(2),
        ])))?;
        let segment_start = ebml.get_ref().pos;
        ebml.write_advanced(
            &MatroskaSpec::Segment(Master::Start),
            WriteOptions::is_unknown_sized_element(),
        )?;
        // The Void write also pushes out the pending Segment header (12 bytes).
        let void_pos = segment_start + LONG_HEADER_LEN;
        ebml.write(&MatroskaSpec::Void(vec![0; SEEKHEAD_RESERVED as usize - 2]))?;
        let info_pos = ebml.get_ref().pos;
        if info_pos != void_pos + SEEKHEAD_RESERVED {
            return Err(WebmError::OutOfRange("unexpected header layout"));
        }
        ebml.write(&MatroskaSpec::Info(Master::Full(vec![
            MatroskaSpec::TimestampScale(TIMESTAMP_SCALE_NS),
            MatroskaSpec::MuxingApp("recbot".to_string()),
            MatroskaSpec::WritingApp("recbot".to_string()),
            // Placeholder, patched by finalize; it must stay the last child of Info.
            MatroskaSpec::Duration(0.0),
        ])))?;
        let tracks_pos = ebml.get_ref().pos;
        let duration_pos = tracks_pos - 8;
        ebml.write(&MatroskaSpec::Tracks(Master::Full(
            tracks.iter().map(track_entry).collect(),
        )))?;

        Ok(WebmWriter {
            ebml,
            tracks: tracks
                .iter()
                .map(|t| TrackState {
                    number: t.number(),
                    is_video: matches!(t, WebmTrack::Video { .. }),
                    last_ts: None,
                    size: match t {
                        WebmTrack::Video { width, height, .. } => Some((*width, *height)),
                        WebmTrack::Audio { .. } => None,
                    },
                })
                .collect(),
            has_video: tracks.iter().any(|t| matches!(t, WebmTrack::Video { .. })),
            base,
            segment_start,
            void_pos,
            info_pos,
            tracks_pos,
            duration_pos,
            cluster: None,
            cues: Vec::new(),
            frames: 0,
            keyframes: 0,
            broken: false,
        })
    }

    /// ts_ms: milliseconds since the file's time zero (its first sample is 0). Returns the
    /// timestamp actually written.
    ///
    /// Invariant (the one place it is enforced): per track, written timestamps strictly
    /// increase. A frame at or before its track's previous one (two frames less than 1 ms
    /// apart rounding to one ms, a clock mapping pulled back under load) is written 1 ms after
    /// it, so no player sees equal or backwards DTS. Tracks may interleave; small disorder
    /// across tracks is stored as negative block offsets.
    ///
    /// A new cluster starts at every video keyframe, when the frame is 5 s or more past the
    /// cluster's timestamp, and when its offset does not fit a signed 16-bit block offset.
    /// `keyframe` is ignored for audio: every Opus block is flagged as a keyframe.
    pub fn write_frame(
        &mut self,
        track: u64,
        ts_ms: u64,
        keyframe: bool,
        data: &[u8],
    ) -> Result<u64, WebmError> {
        self.ensure_usable()?;
        let idx = self
            .tracks
            .iter()
            .position(|t| t.number == track)
            .ok_or(WebmError::UnknownTrack(track))?;
        if data.is_empty() {
            return Err(WebmError::EmptyFrame(track));
        }
        let ts_ms = next_timestamp(self.tracks[idx].last_ts, ts_ms);
        let is_video = self.tracks[idx].is_video;
        let key = keyframe || !is_video;
        let result = self.write_block(track, ts_ms, is_video && keyframe, key, data);
        self.track_failure(result)?;
        self.tracks[idx].last_ts = Some(ts_ms);
        self.frames += 1;
        if is_video && keyframe {
            self.keyframes += 1;
        }
        Ok(ts_ms)
    }

    /// Records the latest frame size of a video track (e.g. after a resolution change).
    /// The Tracks element keeps the first size; VP8 keyframes carry their own size, so
    /// players follow the change. Unknown or audio track numbers are ignored.
    pub fn note_video_size(&mut self, track: u64, width: u32, height: u32) {
        if let Some(t) = self
            .tracks
            .iter_mut()
            .find(|t| t.number == track && t.is_video)
        {
            t.size = Some((width, height));
        }
    }

    /// Latest frame size of a video track: the one given to [`WebmWriter::new`] or the last
    /// one passed to [`WebmWriter::note_video_size`]. `None` for unknown or audio tracks.
    pub fn video_size(&self, track: u64) -> Option<(u32, u32)> {
        self.tracks
            .iter()
            .find(|t| t.number == track)
            .and_then(|t| t.size)
    }

    /// Push everything written so far down to `out` (and call out.flush()) so that a
    /// process killed right after still leaves a file ffmpeg decodes up to this frame.
    pub fn flush(&mut self) -> Result<(), WebmError> {
        self.ensure_usable()?;
        let result = self.ebml.get_mut().inner.flush().map_err(WebmError::from);
        self.track_failure(result)
    }

    /// Bytes of file produced so far (live figure for the manifest).
    pub fn bytes_written(&self) -> u64 {
        self.ebml.get_ref().pos - self.base
    }

    /// Number of frames written (all tracks).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Number of video keyframes written.
    pub fn keyframes(&self) -> u64 {
        self.keyframes
    }

    /// Write Cues (a CuePoint per video keyframe cluster, or per cluster for audio-only
    /// files), patch Info/Duration (8-byte float, ms) to `duration_ms`, fill the SeekHead
    /// (reserved up front as a Void) with positions of Info, Tracks and Cues, patch the
    /// Segment size, then flush and return the inner writer.
    pub fn finalize(mut self, duration_ms: u64) -> Result<W, WebmError> {
        self.ensure_usable()?;
        self.close_cluster()?;
        let cues_pos = if self.cues.is_empty() {
            None
        } else {
            let pos = self.relative(self.ebml.get_ref().pos);
            self.ebml.write(&cues_element(&self.cues))?;
            Some(pos)
        };
        let end = self.ebml.get_ref().pos;
        self.write_seekhead(cues_pos, end)?;
        self.ebml.write(&MatroskaSpec::Segment(Master::End))?;

        let segment_size = size_field(end - (self.segment_start + LONG_HEADER_LEN))?;
        let sink = self.ebml.get_mut();
        sink.patch(self.duration_pos, &(duration_ms as f64).to_be_bytes())?;
        sink.patch(self.segment_start + 4, &segment_size)?;
        let mut out = self.ebml.into_inner()?.inner;
        out.flush()?;
        Ok(out)
    }

    fn ensure_usable(&self) -> Result<(), WebmError> {
        if self.broken {
            Err(WebmError::Broken)
        } else {
            Ok(())
        }
    }

    /// Marks the writer broken when an output or encoding error happened.
    fn track_failure<T>(&mut self, result: Result<T, WebmError>) -> Result<T, WebmError> {
        if matches!(result, Err(WebmError::Io(_) | WebmError::Ebml(_))) {
            self.broken = true;
        }
        result
    }

    /// Position relative to the Segment data start (what SeekHead and Cues store).
    fn relative(&self, absolute: u64) -> u64 {
        absolute - (self.segment_start + LONG_HEADER_LEN)
    }

    fn write_block(
        &mut self,
        track: u64,
        ts: u64,
        video_keyframe: bool,
        key_flag: bool,
        data: &[u8],
    ) -> Result<(), WebmError> {
        let offset = match &self.cluster {
            Some(c) if !video_keyframe && ts.saturating_sub(c.ts) < MAX_CLUSTER_SPAN_MS => {
                i16::try_from(i128::from(ts) - i128::from(c.ts)).ok()
            }
            _ => None,
        };
        let offset = match offset {
            Some(offset) => offset,
            None => {
                self.open_cluster(ts)?;
                if video_keyframe || !self.has_video {
                    if let Some(c) = &self.cluster {
                        self.cues.push(CuePoint {
                            time: ts,
                            track,
                            position: self.relative(c.start),
                        });
                    }
                }
                0
            }
        };
        let block = SimpleBlock::new_uncheked(data, track, offset, false, None, false, key_flag);
        self.ebml.write(&MatroskaSpec::from(block))?;
        Ok(())
    }

    fn open_cluster(&mut self, ts: u64) -> Result<(), WebmError> {
        self.close_cluster()?;
        let start = self.ebml.get_ref().pos;
        self.ebml.write_advanced(
            &MatroskaSpec::Cluster(Master::Start),
            WriteOptions::is_unknown_sized_element(),
        )?;
        // Also pushes out the pending 12-byte Cluster header.
        self.ebml.write(&MatroskaSpec::Timestamp(ts))?;
        self.cluster = Some(OpenCluster { start, ts });
        Ok(())
    }

    /// Ends the open cluster (if any) and patches its real size over the unknown size.
    fn close_cluster(&mut self) -> Result<(), WebmError> {
        let Some(cluster) = self.cluster.take() else {
            return Ok(());
        };
        self.ebml.write(&MatroskaSpec::Cluster(Master::End))?;
        let sink = self.ebml.get_mut();
        let size = size_field(sink.pos - (cluster.start + LONG_HEADER_LEN))?;
        sink.patch(cluster.start + 4, &size)?;
        Ok(())
    }

    /// Writes the SeekHead over the reserved Void (padding the rest with a smaller Void),
    /// then returns the output position to `end`.
    fn write_seekhead(&mut self, cues_pos: Option<u64>, end: u64) -> Result<(), WebmError> {
        let mut entries = vec![
            (INFO_ID, self.relative(self.info_pos)),
            (TRACKS_ID, self.relative(self.tracks_pos)),
        ];
        if let Some(pos) = cues_pos {
            entries.push((CUES_ID, pos));
        }
        let seekhead = seekhead_element(&entries);

        let sink = self.ebml.get_mut();
        sink.inner.seek(SeekFrom::Start(self.void_pos))?;
        sink.pos = self.void_pos;
        self.ebml.write(&seekhead)?;
        let used = self.ebml.get_ref().pos - self.void_pos;
        // A Void needs 2 bytes (ID + 1-byte size) and holds at most 126 data bytes here.
        let padding = SEEKHEAD_RESERVED
            .checked_sub(used + 2)
            .ok_or(WebmError::OutOfRange(
                "SeekHead larger than its reservation",
            ))?;
        self.ebml
            .write(&MatroskaSpec::Void(vec![0; padding as usize]))?;
        let sink = self.ebml.get_mut();
        if sink.pos != self.void_pos + SEEKHEAD_RESERVED {
            return Err(WebmError::OutOfRange("SeekHead padding mismatch"));
        }
        sink.inner.seek(SeekFrom::Start(end))?;
        sink.pos = end;
        Ok(())
    }
}

/// The timestamp a block wanted at `wanted` gets after a track's block at `last`: `wanted`, or
/// 1 ms after `last` when `wanted` is not strictly later (pure; see [`WebmWriter::write_frame`]).
pub fn next_timestamp(last: Option<u64>, wanted: u64) -> u64 {
    match last {
        Some(last) if wanted <= last => last.saturating_add(1),
        _ => wanted,
    }
}

/// Checks track numbers (unique, 1..=126) and per-kind parameters.
fn validate_tracks(tracks: &[WebmTrack]) -> Result<(), WebmError> {
    if tracks.is_empty() {
        return Err(WebmError::InvalidTrack("no tracks".to_string()));
    }
    for (i, track) in tracks.iter().enumerate() {
        let number = track.number();
        if !(1..=MAX_TRACK_NUMBER).contains(&number) {
            return Err(WebmError::InvalidTrack(format!(
                "track number {number} is outside 1..={MAX_TRACK_NUMBER}"
            )));
        }
        if tracks[..i].iter().any(|t| t.number() == number) {
            return Err(WebmError::InvalidTrack(format!(
                "track number {number} is used twice"
            )));
        }
        match track {
            WebmTrack::Video { width, height, .. } if *width == 0 || *height == 0 => {
                return Err(WebmError::InvalidTrack(format!(
                    "track {number}: video size {width}x{height}"
                )));
            }
            WebmTrack::Audio { channels, .. } if !(1..=2).contains(channels) => {
                return Err(WebmError::InvalidTrack(format!(
                    "track {number}: {channels} Opus channels (mapping family 0 allows 1 or 2)"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Builds the TrackEntry of one track.
fn track_entry(track: &WebmTrack) -> MatroskaSpec {
    let number = track.number();
    let mut children = vec![
        MatroskaSpec::TrackNumber(number),
        MatroskaSpec::TrackUID(number),
        MatroskaSpec::FlagLacing(0),
    ];
    match track {
        WebmTrack::Video { width, height, .. } => children.extend([
            MatroskaSpec::TrackType(1),
            MatroskaSpec::CodecID("V_VP8".to_string()),
            MatroskaSpec::Video(Master::Full(vec![
                MatroskaSpec::PixelWidth(u64::from(*width)),
                MatroskaSpec::PixelHeight(u64::from(*height)),
            ])),
        ]),
        WebmTrack::Audio {
            channels, pre_skip, ..
        } => children.extend([
            MatroskaSpec::TrackType(2),
            MatroskaSpec::CodecID("A_OPUS".to_string()),
            MatroskaSpec::CodecPrivate(opus_head(*channels, *pre_skip)),
            MatroskaSpec::CodecDelay(u64::from(*pre_skip) * 1_000_000_000 / u64::from(OPUS_RATE)),
            MatroskaSpec::SeekPreRoll(OPUS_SEEK_PREROLL_NS),
            MatroskaSpec::Audio(Master::Full(vec![
                MatroskaSpec::SamplingFrequency(f64::from(OPUS_RATE)),
                MatroskaSpec::Channels(u64::from(*channels)),
            ])),
        ]),
    }
    MatroskaSpec::TrackEntry(Master::Full(children))
}

/// An 8-byte EBML size field holding `size` (which must be below 2^56 - 1).
fn size_field(size: u64) -> Result<Vec<u8>, WebmError> {
    ebml::size_field(size, 8).ok_or(WebmError::OutOfRange(
        "element larger than an 8-byte size field",
    ))
}

#[cfg(test)]
mod tests {
    // The reader is a sibling module (`crate::record::webm_reader` in recbot).
    use super::super::webm_reader::{
        read_webm, read_webm_with, ReadOptions, WebmInfo, WebmReadError, WebmTrackKind,
    };
    use super::*;
    use std::cell::RefCell;
    use std::io::Cursor;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::rc::Rc;

    /// Write+Seek target whose bytes the test can look at while the writer owns it.
    #[derive(Clone, Default)]
    struct Shared(Rc<RefCell<Cursor<Vec<u8>>>>);

    impl Shared {
        fn bytes(&self) -> Vec<u8> {
            self.0.borrow().get_ref().clone()
        }
    }

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Seek for Shared {
        fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
            self.0.borrow_mut().seek(pos)
        }
    }

    /// A VP8 keyframe start (frame tag, start code, 14-bit size) plus filler bytes.
    fn vp8_keyframe(width: u16, height: u16, filler: u8) -> Vec<u8> {
        let mut f = vec![0x50, 0x01, 0x00, 0x9d, 0x01, 0x2a];
        f.extend_from_slice(&width.to_le_bytes());
        f.extend_from_slice(&height.to_le_bytes());
        f.extend_from_slice(&[filler; 6]);
        f
    }

    fn vp8_interframe(filler: u8) -> Vec<u8> {
        vec![0x51, 0x01, 0x00, filler, filler]
    }

    /// One frame to feed: (track, ts, keyframe, data).
    type Frame = (u64, u64, bool, Vec<u8>);

    /// Video (track 1, 30 fps, keyframes at the given frame indexes) and audio (track 2,
    /// 20 ms packets) frames over `ms`, merged in timestamp order.
    fn synthetic_av(ms: u64, keyframes: &[u64], audio: bool) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut i = 0;
        while i * 100 / 3 < ms {
            let key = keyframes.contains(&i);
            let data = if key {
                vp8_keyframe(320, 240, i as u8)
            } else {
                vp8_interframe(i as u8)
            };
            frames.push((1, i * 100 / 3, key, data));
            i += 1;
        }
        if audio {
            for j in 0..ms / 20 {
                frames.push((2, j * 20, false, vec![0xfc, j as u8, 0x55]));
            }
        }
        frames.sort_by_key(|f| f.1);
        frames
    }

    fn av_tracks() -> Vec<WebmTrack> {
        vec![
            WebmTrack::Video {
                number: 1,
                width: 320,
                height: 240,
            },
            WebmTrack::Audio {
                number: 2,
                channels: 2,
                pre_skip: 312,
            },
        ]
    }

    fn write_all(frames: &[Frame], tracks: &[WebmTrack], duration: u64) -> Vec<u8> {
        let mut w = WebmWriter::new(Cursor::new(Vec::new()), tracks).unwrap();
        for (track, ts, key, data) in frames {
            w.write_frame(*track, *ts, *key, data).unwrap();
        }
        w.finalize(duration).unwrap().into_inner()
    }

    /// Checks every block against the frames fed, and every cluster's span.
    fn check_blocks(info: &WebmInfo, frames: &[Frame], tracks: &[WebmTrack]) {
        assert_eq!(info.blocks.len(), frames.len());
        for (block, (track, ts, key, data)) in info.blocks.iter().zip(frames) {
            let is_video = tracks
                .iter()
                .any(|t| matches!(t, WebmTrack::Video { number, .. } if number == track));
            assert_eq!(block.track, *track);
            assert_eq!(block.ts_ms, *ts as i64);
            assert_eq!(block.keyframe, *key || !is_video, "block at {ts}");
            assert_eq!(&block.data, data);
        }
    }

    #[test]
    fn fields_round_trip() {
        // Keyframes at 0 s and 7 s: clusters at 0, 5 s (span limit), 7 s (keyframe), 12 s.
        let frames = synthetic_av(13_000, &[0, 210], true);
        let tracks = av_tracks();
        let out = Shared::default();
        let mut w = WebmWriter::new(out.clone(), &tracks).unwrap();
        for (track, ts, key, data) in &frames {
            w.write_frame(*track, *ts, *key, data).unwrap();
        }
        assert_eq!(w.frames(), frames.len() as u64);
        assert_eq!(w.keyframes(), 2);
        let live_bytes = w.bytes_written();
        assert_eq!(live_bytes, out.bytes().len() as u64);
        w.finalize(13_010).unwrap();
        let bytes = out.bytes();
        let info = read_webm(&bytes[..]).unwrap();

        assert_eq!(info.doc_type, "webm");
        assert_eq!(info.timestamp_scale, 1_000_000);
        assert_eq!(info.duration_ms, Some(13_010.0));
        assert!(info.segment_size_known);
        let size_at = info.segment_data_offset as usize - 8;
        let mut size = u64::from_be_bytes(bytes[size_at..size_at + 8].try_into().unwrap());
        size &= (1 << 56) - 1;
        assert_eq!(size, bytes.len() as u64 - info.segment_data_offset);

        assert_eq!(info.tracks.len(), 2);
        let v = &info.tracks[0];
        assert_eq!(
            (v.number, v.kind, v.codec_id.as_str()),
            (1, WebmTrackKind::Video, "V_VP8")
        );
        assert_eq!((v.width, v.height), (Some(320), Some(240)));
        assert_eq!(v.codec_private, None);
        let a = &info.tracks[1];
        assert_eq!(
            (a.number, a.kind, a.codec_id.as_str()),
            (2, WebmTrackKind::Audio, "A_OPUS")
        );
        assert_eq!(a.channels, Some(2));
        let head = a.codec_private.as_deref().unwrap();
        assert_eq!(
            head,
            [
                b'O', b'p', b'u', b's', b'H', b'e', b'a', b'd', 1, 2, 0x38, 0x01, 0x80, 0xbb, 0, 0,
                0, 0, 0
            ]
        );
        assert_eq!(a.codec_delay_ns, Some(6_500_000));
        assert_eq!(a.seek_preroll_ns, Some(80_000_000));

        check_blocks(&info, &frames, &tracks);
        let cluster_ts: Vec<u64> = info
            .cluster_starts
            .iter()
            .map(|c| c.ts_ms.unwrap())
            .collect();
        assert_eq!(cluster_ts, [0, 5_000, 7_000, 12_000]);
        assert_eq!(info.clusters, 4);
        // Each cluster's blocks lie within 5 s of its timestamp.
        let mut next = info
            .cluster_starts
            .iter()
            .skip(1)
            .map(|c| c.ts_ms.unwrap() as i64);
        let mut limit = next.next();
        for b in &info.blocks {
            if Some(b.ts_ms) >= limit {
                limit = next.next();
            }
            assert!(limit.is_none_or(|l| b.ts_ms < l));
        }

        // One cue per keyframe cluster, pointing at that cluster.
        assert_eq!(info.cues.len(), 2);
        for (cue, ts) in info.cues.iter().zip([0, 7_000]) {
            assert_eq!((cue.ts_ms, cue.track), (ts, 1));
            let cluster = info
                .cluster_starts
                .iter()
                .find(|c| c.position == cue.cluster_position)
                .unwrap();
            assert_eq!(cluster.ts_ms, Some(ts));
            let at = (info.segment_data_offset + cue.cluster_position) as usize;
            assert_eq!(bytes[at..at + 4], [0x1f, 0x43, 0xb6, 0x75]);
        }

        // SeekHead: Info, Tracks, Cues, each pointing at its element.
        assert!(info.has_seekhead);
        assert_eq!(info.seekhead_entries, 3);
        let ids: Vec<u64> = info.seek_entries.iter().map(|e| e.id).collect();
        assert_eq!(ids, [0x1549_A966, 0x1654_AE6B, 0x1C53_BB6B]);
        for entry in &info.seek_entries {
            let at = (info.segment_data_offset + entry.position) as usize;
            assert_eq!(bytes[at..at + 4], (entry.id as u32).to_be_bytes());
        }
    }

    #[test]
    fn audio_only_and_video_only() {
        let audio = [WebmTrack::Audio {
            number: 1,
            channels: 1,
            pre_skip: 0,
        }];
        let frames: Vec<Frame> = (0..600).map(|j| (1, j * 20, false, vec![8, 9])).collect();
        let info = read_webm(&write_all(&frames, &audio, 12_000)[..]).unwrap();
        check_blocks(&info, &frames, &audio);
        let cluster_ts: Vec<u64> = info
            .cluster_starts
            .iter()
            .map(|c| c.ts_ms.unwrap())
            .collect();
        assert_eq!(cluster_ts, [0, 5_000, 10_000]);
        let cues: Vec<(u64, u64)> = info.cues.iter().map(|c| (c.ts_ms, c.track)).collect();
        assert_eq!(cues, [(0, 1), (5_000, 1), (10_000, 1)]);
        assert_eq!(info.tracks[0].codec_delay_ns, Some(0));

        let video = [WebmTrack::Video {
            number: 3,
            width: 64,
            height: 48,
        }];
        let frames: Vec<Frame> = synthetic_av(3_000, &[0, 45], false)
            .into_iter()
            .map(|(_, ts, key, data)| (3, ts, key, data))
            .collect();
        let info = read_webm(&write_all(&frames, &video, 3_000)[..]).unwrap();
        check_blocks(&info, &frames, &video);
        assert_eq!(info.clusters, 2);
        assert_eq!(info.cues.len(), 2);
        assert_eq!(info.cues[1].ts_ms, 1_500);
    }

    #[test]
    fn gaps_and_cross_track_disorder() {
        let tracks = av_tracks();
        let frames: Vec<Frame> = vec![
            (1, 0, true, vp8_keyframe(320, 240, 1)),
            (2, 0, false, vec![1]),
            (2, 20, false, vec![2]),
            (1, 33, false, vp8_interframe(2)),
            // Video keyframe far ahead of the audio: the audio after it goes backwards by
            // more than an i16 offset, so it gets its own (earlier) cluster.
            (1, 40_000, true, vp8_keyframe(640, 480, 3)),
            (2, 40, false, vec![3]),
            (2, 60, false, vec![4]),
            // Small disorder: negative offset inside the current cluster.
            (1, 40_033, false, vp8_interframe(4)),
            (2, 40_010, false, vec![5]),
            (2, 40_030, false, vec![6]),
            (1, 100_000, false, vp8_interframe(5)),
        ];
        let mut w = WebmWriter::new(Cursor::new(Vec::new()), &tracks).unwrap();
        for (track, ts, key, data) in &frames {
            w.write_frame(*track, *ts, *key, data).unwrap();
        }
        w.note_video_size(1, 640, 480);
        assert_eq!(w.video_size(1), Some((640, 480)));
        assert_eq!(w.video_size(2), None);
        let bytes = w.finalize(100_033).unwrap().into_inner();
        let info = read_webm(&bytes[..]).unwrap();
        check_blocks(&info, &frames, &tracks);
        let cluster_ts: Vec<u64> = info
            .cluster_starts
            .iter()
            .map(|c| c.ts_ms.unwrap())
            .collect();
        assert_eq!(cluster_ts, [0, 40_000, 40, 40_033, 100_000]);
    }

    #[test]
    fn bad_calls_are_refused_and_the_file_stays_valid() {
        let bad_lists: Vec<Vec<WebmTrack>> = vec![
            vec![],
            vec![WebmTrack::Audio {
                number: 0,
                channels: 1,
                pre_skip: 0,
            }],
            vec![WebmTrack::Video {
                number: 127,
                width: 2,
                height: 2,
            }],
            vec![WebmTrack::Video {
                number: 1,
                width: 0,
                height: 2,
            }],
            vec![WebmTrack::Audio {
                number: 1,
                channels: 3,
                pre_skip: 0,
            }],
            vec![
                WebmTrack::Audio {
                    number: 1,
                    channels: 1,
                    pre_skip: 0,
                },
                WebmTrack::Video {
                    number: 1,
                    width: 2,
                    height: 2,
                },
            ],
        ];
        for tracks in bad_lists {
            let r = WebmWriter::new(Cursor::new(Vec::new()), &tracks);
            assert!(matches!(r, Err(WebmError::InvalidTrack(_))), "{tracks:?}");
        }

        // A file without frames still finalizes: no clusters, no Cues, SeekHead of two.
        let w = WebmWriter::new(Cursor::new(Vec::new()), &av_tracks()).unwrap();
        let info = read_webm(&w.finalize(0).unwrap().into_inner()[..]).unwrap();
        assert_eq!(
            (info.clusters, info.cues.len(), info.seekhead_entries),
            (0, 0, 2)
        );
        assert!(info.segment_size_known);

        let mut w = WebmWriter::new(Cursor::new(Vec::new()), &av_tracks()).unwrap();
        w.write_frame(1, 0, true, &vp8_keyframe(320, 240, 0))
            .unwrap();
        w.write_frame(2, 100, false, &[1]).unwrap();
        let r = w.write_frame(9, 120, false, &[1]);
        assert!(matches!(r, Err(WebmError::UnknownTrack(9))));
        assert!(matches!(
            w.write_frame(2, 120, false, &[]),
            Err(WebmError::EmptyFrame(2))
        ));
        // Video may still go back to 50: only per-track order is required.
        w.write_frame(1, 50, false, &vp8_interframe(1)).unwrap();
        w.write_frame(2, 101, false, &[2]).unwrap();
        assert_eq!(w.frames(), 4);
        let bytes = w.finalize(120).unwrap().into_inner();
        let info = read_webm(&bytes[..]).unwrap();
        let got: Vec<(u64, i64)> = info.blocks.iter().map(|b| (b.track, b.ts_ms)).collect();
        assert_eq!(got, [(1, 0), (2, 100), (1, 50), (2, 101)]);
        assert_eq!(info.duration_ms, Some(120.0));
    }

    /// Issue 10 item 9: whatever times the caller gives (equal, backwards, sub-ms apart that
    /// round to one ms), every track's written block timestamps strictly increase.
    #[test]
    fn block_timestamps_strictly_increase_per_track() {
        let mut w = WebmWriter::new(Cursor::new(Vec::new()), &av_tracks()).unwrap();
        // (track, wanted ts): equal, backwards, interleaved, a keyframe at an old time.
        let fed: [(u64, u64, bool); 12] = [
            (1, 0, true),
            (2, 0, false),
            (1, 33, false),
            (1, 33, false),
            (2, 20, false),
            (2, 20, false),
            (1, 30, false),
            (2, 5, false),
            (1, 34, true),
            (2, 40, false),
            (1, 34, false),
            (1, 100, false),
        ];
        for (track, ts, key) in fed {
            let data = if track == 1 && key {
                vp8_keyframe(320, 240, 0)
            } else if track == 1 {
                vp8_interframe(1)
            } else {
                vec![1]
            };
            // Old writers refused a backwards frame: every call must be taken.
            w.write_frame(track, ts, key, &data).unwrap();
        }
        let bytes = w.finalize(120).unwrap().into_inner();
        let info = read_webm(&bytes[..]).unwrap();
        assert_eq!(info.blocks.len(), fed.len());
        let got: Vec<(u64, u64)> = info
            .blocks
            .iter()
            .map(|b| (b.track, b.ts_ms as u64))
            .collect();
        for track in [1, 2] {
            let ts: Vec<u64> = got.iter().filter(|b| b.0 == track).map(|b| b.1).collect();
            assert!(
                ts.windows(2).all(|p| p[1] > p[0]),
                "track {track}: {ts:?} not strictly increasing"
            );
        }
        assert_eq!(
            got,
            [
                (1, 0),
                (2, 0),
                (1, 33),
                (1, 34),
                (2, 20),
                (2, 21),
                (1, 35),
                (2, 22),
                (1, 36),
                (2, 40),
                (1, 37),
                (1, 100)
            ]
        );
    }

    #[test]
    fn output_errors_break_the_writer() {
        /// Accepts the header, then fails every write.
        struct Failing {
            inner: Cursor<Vec<u8>>,
            budget: usize,
        }
        impl Write for Failing {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if buf.len() > self.budget {
                    return Err(std::io::Error::other("disk full"));
                }
                self.budget -= buf.len();
                self.inner.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl Seek for Failing {
            fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
                self.inner.seek(pos)
            }
        }
        let out = Failing {
            inner: Cursor::new(Vec::new()),
            budget: 400,
        };
        let mut w = WebmWriter::new(out, &av_tracks()).unwrap();
        let key = vp8_keyframe(320, 240, 0);
        let mut failed = false;
        for i in 0..100 {
            if w.write_frame(1, i * 33, i == 0, &key).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        assert!(matches!(
            w.write_frame(1, 5_000, false, &key),
            Err(WebmError::Broken)
        ));
        assert!(matches!(w.flush(), Err(WebmError::Broken)));
        assert!(matches!(w.finalize(1), Err(WebmError::Broken)));
    }

    #[test]
    fn unfinalized_bytes_read_back() {
        let frames = synthetic_av(7_000, &[0, 90, 180], true);
        let tracks = av_tracks();
        let out = Shared::default();
        let mut w = WebmWriter::new(out.clone(), &tracks).unwrap();
        let half = frames.len() / 2;
        for (track, ts, key, data) in &frames[..half] {
            w.write_frame(*track, *ts, *key, data).unwrap();
        }
        w.flush().unwrap();
        let partial = out.bytes();
        assert_eq!(partial.len() as u64, w.bytes_written());
        let info = read_webm(&partial[..]).unwrap();
        assert!(!info.segment_size_known);
        assert!(!info.has_seekhead);
        assert!(info.cues.is_empty());
        assert_eq!(info.duration_ms, Some(0.0));
        check_blocks(&info, &frames[..half], &tracks);

        // A copy cut in the middle of a block reports the truncation with what came before.
        let cut = &partial[..partial.len() - 2];
        match read_webm(cut) {
            Err(WebmReadError::Truncated { partial, .. }) => {
                assert_eq!(partial.blocks.len(), half - 1);
            }
            other => panic!("expected a truncation, got {other:?}"),
        }
    }

    /// 3 hours of 30 fps video (keyframe every 2 s) and 50 pps audio.
    #[test]
    fn three_hours() {
        const MS: u64 = 3 * 3600 * 1000;
        let mut w = WebmWriter::new(Cursor::new(Vec::new()), &av_tracks()).unwrap();
        let (mut vi, mut ai) = (0u64, 0u64);
        loop {
            let vts = vi * 100 / 3;
            let ats = ai * 20;
            if vts >= MS && ats >= MS {
                break;
            }
            if vts <= ats {
                w.write_frame(1, vts, vi % 60 == 0, &[vi as u8]).unwrap();
                vi += 1;
            } else {
                w.write_frame(2, ats, true, &[ai as u8]).unwrap();
                ai += 1;
            }
        }
        assert_eq!((w.frames(), w.keyframes()), (324_000 + 540_000, 5_400));
        let bytes = w.finalize(MS).unwrap().into_inner();
        let info = read_webm_with(&bytes[..], ReadOptions { block_data: false }).unwrap();
        assert_eq!(info.duration_ms, Some(MS as f64));
        assert_eq!(info.clusters, 5_400);
        assert_eq!(info.cues.len(), 5_400);
        let last = info.cluster_starts.last().unwrap();
        assert_eq!(last.ts_ms, Some(MS - 2_000));
        assert_eq!(info.cues.last().unwrap().ts_ms, MS - 2_000);
        assert_eq!(info.cues.last().unwrap().cluster_position, last.position);
        let video: Vec<i64> = info
            .blocks
            .iter()
            .filter(|b| b.track == 1)
            .map(|b| b.ts_ms)
            .collect();
        let audio: Vec<i64> = info
            .blocks
            .iter()
            .filter(|b| b.track == 2)
            .map(|b| b.ts_ms)
            .collect();
        assert_eq!(video.len(), 324_000);
        assert_eq!(audio.len(), 540_000);
        assert!(video
            .iter()
            .enumerate()
            .all(|(i, ts)| *ts == i as i64 * 100 / 3));
        assert!(audio.iter().enumerate().all(|(i, ts)| *ts == i as i64 * 20));
        assert_eq!(*video.last().unwrap(), 10_799_966);
    }

    // ---- checks with real codecs and external tools ----

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("recbot-webm-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs `cmd` with whitespace-separated `args`, `{}` standing for `path`:
    /// (success, stdout, stderr).
    fn run(cmd: &str, args: &str, path: &Path) -> (bool, String, String) {
        let args = args.split_whitespace().map(|a| {
            if a == "{}" {
                path.as_os_str()
            } else {
                a.as_ref()
            }
        });
        let out = Command::new(cmd).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// VP8 frames of a 2 s 160x120 clip: (ts_ms, keyframe, data).
    fn vp8_clip(dir: &Path) -> Vec<(u64, bool, Vec<u8>)> {
        let ivf = dir.join("clip.ivf");
        let (ok, _, err) = run(
            "ffmpeg",
            "-v error -f lavfi -i testsrc=size=160x120:rate=30 -t 2 -c:v libvpx -g 30 -y {}",
            &ivf,
        );
        assert!(ok, "{err}");
        let bytes = std::fs::read(&ivf).unwrap();
        assert_eq!(&bytes[..4], b"DKIF");
        let le32 = |at: usize| u64::from(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()));
        let (den, num) = (le32(16), le32(20));
        let mut at = usize::from(u16::from_le_bytes([bytes[6], bytes[7]]));
        let mut frames = Vec::new();
        while at + 12 <= bytes.len() {
            let size = le32(at) as usize;
            let pts = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().unwrap());
            let data = bytes[at + 12..at + 12 + size].to_vec();
            frames.push((pts * 1000 * num / den, data[0] & 1 == 0, data));
            at += 12 + size;
        }
        frames
    }

    /// Samples (48 kHz) in an Opus packet, from its TOC byte (RFC 6716 §3.1).
    fn opus_samples(packet: &[u8]) -> u64 {
        let config = packet[0] >> 3;
        let frame = match config {
            0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
            12..=15 => [480, 960][usize::from(config % 2)],
            _ => [120, 240, 480, 960][usize::from(config % 4)],
        };
        let count = match packet[0] & 3 {
            0 => 1,
            1 | 2 => 2,
            _ => u64::from(packet[1] & 0x3f),
        };
        frame * count
    }

    /// Opus packets of a 2 s sine: (channels, pre_skip, [(ts_ms, data)]).
    fn opus_clip(dir: &Path) -> (u8, u16, Vec<(u64, Vec<u8>)>) {
        let ogg = dir.join("sine.ogg");
        let (ok, _, err) = run(
            "ffmpeg",
            "-v error -f lavfi -i sine=f=440:d=2 -c:a libopus -f ogg -y {}",
            &ogg,
        );
        assert!(ok, "{err}");
        let mut reader = ::ogg::PacketReader::new(std::fs::File::open(&ogg).unwrap());
        let head = reader.read_packet().unwrap().unwrap().data;
        assert_eq!(&head[..8], b"OpusHead");
        let tags = reader.read_packet().unwrap().unwrap().data;
        assert_eq!(&tags[..8], b"OpusTags");
        let mut samples = 0;
        let mut packets = Vec::new();
        while let Some(p) = reader.read_packet().unwrap() {
            packets.push((samples * 1000 / 48_000, p.data.clone()));
            samples += opus_samples(&p.data);
        }
        (head[9], u16::from_le_bytes([head[10], head[11]]), packets)
    }

    /// ffprobe (with frame counting) and an ffmpeg decode must run without any error
    /// output; returns (format duration, frames read per stream).
    fn probe(path: &Path) -> (Option<f64>, Vec<u64>) {
        let p = path.display();
        let entries = "format=duration:stream=codec_name,width,height,nb_read_frames";
        let args = format!("-v error -count_frames -show_entries {entries} -of default=nw=1 {{}}");
        let (ok, out, err) = run("ffprobe", &args, path);
        eprintln!(
            "ffprobe {p}:
{out}"
        );
        assert!(ok && err.is_empty(), "ffprobe {p}: {err}");
        let (ok, _, err) = run("ffmpeg", "-v error -i {} -f null -", path);
        assert!(ok && err.is_empty(), "ffmpeg decode {p}: {err}");
        let duration = out
            .lines()
            .find_map(|l| l.strip_prefix("duration="))
            .and_then(|d| d.parse().ok());
        let frames = out
            .lines()
            .filter_map(|l| l.strip_prefix("nb_read_frames="))
            .map(|n| n.parse().unwrap())
            .collect();
        (duration, frames)
    }

    fn mkvinfo_clean(path: &Path) {
        let (ok, out, err) = run("mkvinfo", "--all --check-mode {}", path);
        let summary: Vec<&str> = out
            .lines()
            .filter(|l| !l.contains("Simple block") && !l.contains("Frame with size"))
            .collect();
        eprintln!("mkvinfo {}:\n{}", path.display(), summary.join("\n"));
        assert!(ok, "mkvinfo failed: {out}{err}");
        for bad in ["rror", "arning", "nknown"] {
            assert!(
                !out.contains(bad) && !err.contains(bad),
                "mkvinfo: {out}{err}"
            );
        }
    }

    #[test]
    fn real_codecs_pass_ffmpeg_ffprobe_and_mkvinfo() {
        if !["ffmpeg", "ffprobe", "mkvinfo"]
            .iter()
            .all(|t| crate::record::test_tools::tool(t))
        {
            return;
        }
        let dir = scratch_dir("real");
        let video = vp8_clip(&dir);
        let (channels, pre_skip, audio) = opus_clip(&dir);
        assert_eq!(video.len(), 60);
        let video_end = video.last().unwrap().0 + 33;
        let audio_end = audio.last().unwrap().0 + 20;

        let v_track = WebmTrack::Video {
            number: 1,
            width: 160,
            height: 120,
        };
        let a_track = WebmTrack::Audio {
            number: 2,
            channels,
            pre_skip,
        };
        let mut muxed: Vec<Frame> = video
            .iter()
            .map(|(ts, key, d)| (1, *ts, *key, d.clone()))
            .chain(audio.iter().map(|(ts, d)| (2, *ts, true, d.clone())))
            .collect();
        muxed.sort_by_key(|f| f.1);
        let cases = [
            (
                "muxed",
                vec![v_track.clone(), a_track.clone()],
                muxed,
                video_end.max(audio_end),
            ),
            (
                "video",
                vec![v_track],
                video
                    .iter()
                    .map(|(ts, k, d)| (1, *ts, *k, d.clone()))
                    .collect(),
                video_end,
            ),
            (
                "audio",
                vec![a_track],
                audio
                    .iter()
                    .map(|(ts, d)| (2, *ts, true, d.clone()))
                    .collect(),
                audio_end,
            ),
        ];
        for (name, tracks, frames, duration) in cases {
            let path = dir.join(format!("{name}.webm"));
            let partial_path = dir.join(format!("{name}-unfinalized.webm"));
            let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            let mut w = WebmWriter::new(file, &tracks).unwrap();
            // Flush mid-stream (not at a cluster boundary) and copy the file as a crash would
            // leave it.
            let cut = frames.len() * 2 / 3 + 1;
            for (track, ts, key, data) in &frames[..cut] {
                w.write_frame(*track, *ts, *key, data).unwrap();
            }
            w.flush().unwrap();
            std::fs::copy(&path, &partial_path).unwrap();
            for (track, ts, key, data) in &frames[cut..] {
                w.write_frame(*track, *ts, *key, data).unwrap();
            }
            w.finalize(duration).unwrap();

            let count = |frames: &[Frame]| -> Vec<u64> {
                tracks
                    .iter()
                    .map(|t| frames.iter().filter(|f| f.0 == t.number()).count() as u64)
                    .collect()
            };
            let (probed, read) = probe(&path);
            let probed = probed.unwrap();
            assert!(
                (probed * 1000.0 - duration as f64).abs() <= 34.0,
                "{name}: {probed}"
            );
            assert_eq!(read, count(&frames), "{name}");
            mkvinfo_clean(&path);

            let (_, read) = probe(&partial_path);
            assert_eq!(read, count(&frames[..cut]), "{name} unfinalized");
            let partial = read_webm(std::fs::File::open(&partial_path).unwrap()).unwrap();
            assert_eq!(partial.blocks.len(), cut);
            let full = read_webm(std::fs::File::open(&path).unwrap()).unwrap();
            assert_eq!(full.blocks.len(), frames.len());
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The reader must read what ffmpeg's own muxer produces.
    #[test]
    fn reads_ffmpeg_webm() {
        if !crate::record::test_tools::tool("ffmpeg") {
            return;
        }
        let dir = scratch_dir("ffmpeg-mux");
        let path = dir.join("ff.webm");
        let (ok, _, err) = run(
            "ffmpeg",
            "-v error -f lavfi -i testsrc=size=96x64:rate=25 -f lavfi -i sine=f=300:d=1 -t 1 \
             -c:v libvpx -c:a libopus -y {}",
            &path,
        );
        assert!(ok, "{err}");
        let info = read_webm(std::fs::File::open(&path).unwrap()).unwrap();
        assert!(info.segment_size_known);
        let kinds: Vec<_> = info
            .tracks
            .iter()
            .map(|t| (t.kind, t.codec_id.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (WebmTrackKind::Video, "V_VP8"),
                (WebmTrackKind::Audio, "A_OPUS")
            ]
        );
        assert_eq!(info.tracks[0].width, Some(96));
        let video = info.blocks.iter().filter(|b| b.track == 1).count();
        assert_eq!(video, 25);
        assert!(info.blocks[0].keyframe);
        assert!(!info.cues.is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }
}
