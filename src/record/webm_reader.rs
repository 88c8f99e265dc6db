//! WebM (Matroska) reader: the facts about a file that tests and `recbot inspect` need.
//!
//! Reads finalized files and files that were never finalized (unknown-size Segment and
//! Clusters, e.g. after a crash). Garbage input gives an error, never a panic; a stream
//! that ends inside an element gives [`WebmReadError::Truncated`] with what was read so far.
//!
//! The Segment must directly follow the EBML header (as in every WebM file).

use super::ebml::{
    read_id, read_vint, unknown_size, vint_len, EBML_ID, MAX_EBML_HEADER, SEGMENT_ID,
};
use std::io::Read;

use webm_iterable::errors::TagIteratorError;
use webm_iterable::matroska_spec::{Master, MatroskaSpec};
use webm_iterable::WebmIterator;

/// Largest element the reader accepts (guards allocations against corrupt size fields).
pub const MAX_ELEMENT_SIZE: usize = 128 * 1024 * 1024;
/// TimestampScale of a file whose Info has none (1 ms, the Matroska default).
const DEFAULT_TIMESTAMP_SCALE: u64 = 1_000_000;

/// What the reader found in a file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebmInfo {
    /// EBML DocType ("webm" or "matroska").
    pub doc_type: String,
    /// Nanoseconds per timestamp unit (Info/TimestampScale, default 1 ms).
    pub timestamp_scale: u64,
    /// Info/Duration converted to milliseconds, if present.
    pub duration_ms: Option<f64>,
    /// Track entries in file order.
    pub tracks: Vec<WebmTrackInfo>,
    /// Blocks (SimpleBlock and BlockGroup/Block) in file order.
    pub blocks: Vec<WebmBlock>,
    /// One entry per CueTrackPositions, in file order.
    pub cues: Vec<WebmCue>,
    /// Whether a SeekHead element was found.
    pub has_seekhead: bool,
    /// Number of Seek entries over all SeekHeads.
    pub seekhead_entries: usize,
    /// The Seek entries themselves.
    pub seek_entries: Vec<WebmSeekEntry>,
    /// Number of clusters.
    pub clusters: usize,
    /// Each cluster's position and timestamp, in file order.
    pub cluster_starts: Vec<WebmClusterStart>,
    /// False when the Segment has the unknown size (an unfinalized file).
    pub segment_size_known: bool,
    /// Absolute byte offset of the Segment's data: positions in the SeekHead, Cues and
    /// [`WebmClusterStart::position`] are relative to it.
    pub segment_data_offset: u64,
}

/// Kind of a track (Matroska TrackType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebmTrackKind {
    /// TrackType 1.
    Video,
    /// TrackType 2.
    Audio,
    /// Any other TrackType (or none).
    Other(u64),
}

/// One TrackEntry.
#[derive(Debug, Clone, PartialEq)]
pub struct WebmTrackInfo {
    /// TrackNumber, as used in blocks.
    pub number: u64,
    /// CodecID (e.g. "V_VP8", "A_OPUS").
    pub codec_id: String,
    /// Video, audio or other.
    pub kind: WebmTrackKind,
    /// Video/PixelWidth.
    pub width: Option<u32>,
    /// Video/PixelHeight.
    pub height: Option<u32>,
    /// Audio/Channels.
    pub channels: Option<u8>,
    /// CodecPrivate bytes (OpusHead for Opus).
    pub codec_private: Option<Vec<u8>>,
    /// CodecDelay in nanoseconds.
    pub codec_delay_ns: Option<u64>,
    /// SeekPreRoll in nanoseconds.
    pub seek_preroll_ns: Option<u64>,
}

/// One block.
#[derive(Debug, Clone, PartialEq)]
pub struct WebmBlock {
    /// Track number from the block header.
    pub track: u64,
    /// Absolute time in ms: (cluster timestamp + block offset) × TimestampScale.
    pub ts_ms: i64,
    /// SimpleBlock keyframe flag; for BlockGroup blocks: no ReferenceBlock.
    pub keyframe: bool,
    /// Frame bytes after the block header (lacing headers included, if any); empty when
    /// [`ReadOptions::block_data`] is off.
    pub data: Vec<u8>,
}

/// One CuePoint/CueTrackPositions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebmCue {
    /// CueTime converted to ms.
    pub ts_ms: u64,
    /// CueTrack.
    pub track: u64,
    /// CueClusterPosition (relative to the Segment data).
    pub cluster_position: u64,
}

/// One SeekHead entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebmSeekEntry {
    /// The EBML ID of the target element (SeekID).
    pub id: u64,
    /// Its position relative to the Segment data (SeekPosition).
    pub position: u64,
}

/// Position and timestamp of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebmClusterStart {
    /// Offset of the Cluster ID relative to the Segment data.
    pub position: u64,
    /// Cluster Timestamp converted to ms (`None` if the cluster has none).
    pub ts_ms: Option<u64>,
}

/// Reader settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// Keep each block's payload in [`WebmBlock::data`] (costs memory of the file's size).
    pub block_data: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions { block_data: true }
    }
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WebmReadError {
    /// Reading the input failed.
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
    /// The input does not start like a WebM/Matroska file.
    #[error("not a WebM file: {0}")]
    NotWebm(String),
    /// The input is structurally broken.
    #[error("corrupt WebM data: {0}")]
    Corrupt(String),
    /// The input ends inside an element; `partial` holds what was read before.
    #[error("WebM data truncated near byte {offset}")]
    Truncated {
        /// Approximate offset of the incomplete element.
        offset: u64,
        /// Everything read before the truncation.
        partial: Box<WebmInfo>,
    },
}

/// Reads a whole WebM file, keeping block payloads.
pub fn read_webm<R: Read>(r: R) -> Result<WebmInfo, WebmReadError> {
    read_webm_with(r, ReadOptions::default())
}

/// Reads a whole WebM file with the given options.
pub fn read_webm_with<R: Read>(r: R, options: ReadOptions) -> Result<WebmInfo, WebmReadError> {
    let head = HeadReader::new(r)?;
    let segment_data_offset = head.prefix.len() as u64;
    let segment_size_known = head.segment_size_known;
    // No element is buffered as `Master::Full`: ebml-iterable 0.7.1 recurses once per
    // consecutive buffered sibling (thousands of CuePoints overflow the stack), so the
    // structure is followed from Start/End events instead.
    let mut tags = WebmIterator::new(head, &[]);
    tags.set_max_allowable_tag_size(Some(MAX_ELEMENT_SIZE));

    let mut state = State {
        info: WebmInfo {
            timestamp_scale: DEFAULT_TIMESTAMP_SCALE,
            segment_size_known,
            segment_data_offset,
            ..WebmInfo::default()
        },
        options,
        cluster_ts: None,
        cues_raw: Vec::new(),
        cue_point: None,
        block_group: None,
        duration_raw: None,
    };
    while let Some(tag) = tags.next() {
        match tag {
            Ok(tag) => {
                let offset = tags.last_emitted_tag_offset() as u64;
                state.handle(tag, offset.saturating_sub(segment_data_offset))?;
            }
            Err(TagIteratorError::UnexpectedEOF { tag_start, .. }) => {
                return Err(WebmReadError::Truncated {
                    offset: tag_start as u64,
                    partial: Box::new(state.finish()),
                });
            }
            Err(e) => return Err(WebmReadError::Corrupt(e.to_string())),
        }
    }
    Ok(state.finish())
}

/// Parsing state while iterating over the elements. The iterator checks every element's
/// place in the hierarchy, so a child element always belongs to the latest open parent.
struct State {
    info: WebmInfo,
    options: ReadOptions,
    /// Timestamp of the current cluster, in TimestampScale units.
    cluster_ts: Option<u64>,
    /// (CueTime in units, track, position); converted once TimestampScale is final.
    cues_raw: Vec<(u64, u64, u64)>,
    /// Open CuePoint: index of its first entry in `cues_raw`, and its CueTime.
    cue_point: Option<(usize, Option<u64>)>,
    /// Open BlockGroup: its Block data, and whether a ReferenceBlock was seen.
    block_group: Option<(Option<Vec<u8>>, bool)>,
    /// Duration in TimestampScale units.
    duration_raw: Option<f64>,
}

impl State {
    fn handle(&mut self, tag: MatroskaSpec, relative_offset: u64) -> Result<(), WebmReadError> {
        let info = &mut self.info;
        match tag {
            MatroskaSpec::DocType(doc_type) => info.doc_type = doc_type,
            MatroskaSpec::Ebml(Master::End)
                if !matches!(info.doc_type.as_str(), "webm" | "matroska") =>
            {
                return Err(WebmReadError::NotWebm(format!(
                    "DocType {:?}",
                    info.doc_type
                )));
            }
            MatroskaSpec::TimestampScale(scale) => info.timestamp_scale = scale,
            MatroskaSpec::Duration(d) => self.duration_raw = Some(d),

            MatroskaSpec::TrackEntry(Master::Start) => info.tracks.push(WebmTrackInfo {
                number: 0,
                codec_id: String::new(),
                kind: WebmTrackKind::Other(0),
                width: None,
                height: None,
                channels: None,
                codec_private: None,
                codec_delay_ns: None,
                seek_preroll_ns: None,
            }),
            tag @ (MatroskaSpec::TrackNumber(_)
            | MatroskaSpec::CodecID(_)
            | MatroskaSpec::TrackType(_)
            | MatroskaSpec::CodecPrivate(_)
            | MatroskaSpec::CodecDelay(_)
            | MatroskaSpec::SeekPreRoll(_)
            | MatroskaSpec::PixelWidth(_)
            | MatroskaSpec::PixelHeight(_)
            | MatroskaSpec::Channels(_)) => {
                if let Some(track) = info.tracks.last_mut() {
                    track_field(track, tag);
                }
            }

            MatroskaSpec::SeekHead(Master::Start) => info.has_seekhead = true,
            MatroskaSpec::Seek(Master::Start) => {
                info.seek_entries.push(WebmSeekEntry { id: 0, position: 0 });
                info.seekhead_entries = info.seek_entries.len();
            }
            MatroskaSpec::SeekID(id) => {
                if id.is_empty() || id.len() > 8 {
                    return Err(WebmReadError::Corrupt(format!(
                        "SeekID of {} bytes",
                        id.len()
                    )));
                }
                if let Some(entry) = info.seek_entries.last_mut() {
                    entry.id = id.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b));
                }
            }
            MatroskaSpec::SeekPosition(p) => {
                if let Some(entry) = info.seek_entries.last_mut() {
                    entry.position = p;
                }
            }

            MatroskaSpec::CuePoint(Master::Start) => {
                self.cue_point = Some((self.cues_raw.len(), None));
            }
            MatroskaSpec::CueTime(t) => {
                if let Some(point) = &mut self.cue_point {
                    point.1 = Some(t);
                }
            }
            MatroskaSpec::CueTrackPositions(Master::Start) => self.cues_raw.push((0, 0, 0)),
            MatroskaSpec::CueTrack(t) => {
                if let Some(cue) = self.cues_raw.last_mut() {
                    cue.1 = t;
                }
            }
            MatroskaSpec::CueClusterPosition(p) => {
                if let Some(cue) = self.cues_raw.last_mut() {
                    cue.2 = p;
                }
            }
            MatroskaSpec::CuePoint(Master::End) => {
                if let Some((first, time)) = self.cue_point.take() {
                    for cue in self.cues_raw.iter_mut().skip(first) {
                        cue.0 = time.unwrap_or(0);
                    }
                }
            }

            MatroskaSpec::Cluster(Master::Start) => {
                self.cluster_ts = None;
                info.clusters += 1;
                info.cluster_starts.push(WebmClusterStart {
                    position: relative_offset,
                    ts_ms: None,
                });
            }
            MatroskaSpec::Timestamp(ts) => {
                self.cluster_ts = Some(ts);
                let ms = units_to_ms(ts, info.timestamp_scale);
                if let Some(cluster) = info.cluster_starts.last_mut() {
                    cluster.ts_ms = Some(ms);
                }
            }
            MatroskaSpec::SimpleBlock(data) => {
                let (track, offset, flags, payload) = block_header(&data)?;
                self.push_block(track, offset, flags & 0x80 != 0, payload)?;
            }
            MatroskaSpec::BlockGroup(Master::Start) => self.block_group = Some((None, false)),
            MatroskaSpec::Block(data) => {
                if let Some(group) = &mut self.block_group {
                    group.0 = Some(data);
                }
            }
            MatroskaSpec::ReferenceBlock(_) => {
                if let Some(group) = &mut self.block_group {
                    group.1 = true;
                }
            }
            MatroskaSpec::BlockGroup(Master::End) => {
                let Some((Some(data), referenced)) = self.block_group.take() else {
                    return Err(WebmReadError::Corrupt("BlockGroup without Block".into()));
                };
                let (track, offset, _, payload) = block_header(&data)?;
                self.push_block(track, offset, !referenced, payload)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn push_block(
        &mut self,
        track: u64,
        offset: i16,
        keyframe: bool,
        payload: &[u8],
    ) -> Result<(), WebmReadError> {
        let cluster_ts = self
            .cluster_ts
            .ok_or_else(|| WebmReadError::Corrupt("block before a cluster Timestamp".into()))?;
        let units = i128::from(cluster_ts) + i128::from(offset);
        let ms = units * i128::from(self.info.timestamp_scale) / 1_000_000;
        let ts_ms = i64::try_from(ms)
            .map_err(|_| WebmReadError::Corrupt("block timestamp out of range".into()))?;
        self.info.blocks.push(WebmBlock {
            track,
            ts_ms,
            keyframe,
            data: if self.options.block_data {
                payload.to_vec()
            } else {
                Vec::new()
            },
        });
        Ok(())
    }

    fn finish(mut self) -> WebmInfo {
        let scale = self.info.timestamp_scale;
        self.info.duration_ms = self.duration_raw.map(|d| d * scale as f64 / 1e6);
        self.info.cues = self
            .cues_raw
            .iter()
            .map(|&(time, track, cluster_position)| WebmCue {
                ts_ms: units_to_ms(time, scale),
                track,
                cluster_position,
            })
            .collect();
        self.info
    }
}

/// TimestampScale units to ms (saturating).
fn units_to_ms(units: u64, scale: u64) -> u64 {
    let ms = u128::from(units) * u128::from(scale) / 1_000_000;
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Applies one TrackEntry field (or a Video/Audio sub-field) to `track`.
fn track_field(track: &mut WebmTrackInfo, tag: MatroskaSpec) {
    match tag {
        MatroskaSpec::TrackNumber(n) => track.number = n,
        MatroskaSpec::CodecID(id) => track.codec_id = id,
        MatroskaSpec::TrackType(1) => track.kind = WebmTrackKind::Video,
        MatroskaSpec::TrackType(2) => track.kind = WebmTrackKind::Audio,
        MatroskaSpec::TrackType(t) => track.kind = WebmTrackKind::Other(t),
        MatroskaSpec::CodecPrivate(data) => track.codec_private = Some(data),
        MatroskaSpec::CodecDelay(ns) => track.codec_delay_ns = Some(ns),
        MatroskaSpec::SeekPreRoll(ns) => track.seek_preroll_ns = Some(ns),
        MatroskaSpec::PixelWidth(w) => track.width = u32::try_from(w).ok(),
        MatroskaSpec::PixelHeight(h) => track.height = u32::try_from(h).ok(),
        MatroskaSpec::Channels(c) => track.channels = u8::try_from(c).ok(),
        _ => {}
    }
}

/// Splits a (Simple)Block into track number, timestamp offset, flags and payload.
fn block_header(data: &[u8]) -> Result<(u64, i16, u8, &[u8]), WebmReadError> {
    let bad = || WebmReadError::Corrupt("malformed block header".into());
    let (track, len) = read_vint(data).ok_or_else(bad)?;
    let rest = data.get(len..).ok_or_else(bad)?;
    match rest {
        [hi, lo, flags, payload @ ..] => {
            Ok((track, i16::from_be_bytes([*hi, *lo]), *flags, payload))
        }
        _ => Err(bad()),
    }
}

/// Input adaptor that reads the EBML header and the Segment header up front and serves
/// them again with the Segment size replaced by "unknown".
///
/// The EBML iterator applies its element size limit to masters too, which would refuse any
/// Segment over the limit; an unknown-size Segment is read to the end of the stream instead.
struct HeadReader<R> {
    inner: R,
    prefix: Vec<u8>,
    served: usize,
    segment_size_known: bool,
}

impl<R: Read> HeadReader<R> {
    fn new(mut inner: R) -> Result<Self, WebmReadError> {
        let mut prefix = Vec::new();
        let (id, size, size_len) = read_element_header(&mut inner, &mut prefix)?
            .ok_or_else(|| WebmReadError::NotWebm("empty input".into()))?;
        if id != EBML_ID || size == unknown_size(size_len) || size > MAX_EBML_HEADER {
            return Err(WebmReadError::NotWebm("no EBML header".into()));
        }
        let start = prefix.len();
        prefix.resize(start + size as usize, 0); // ok: size <= MAX_EBML_HEADER
        read_exact_or_truncated(&mut inner, &mut prefix[start..])?;

        let (id, size, size_len) = read_element_header(&mut inner, &mut prefix)?
            .ok_or_else(|| WebmReadError::NotWebm("no Segment".into()))?;
        if id != SEGMENT_ID {
            return Err(WebmReadError::NotWebm(format!(
                "expected a Segment after the EBML header, found element 0x{id:X}"
            )));
        }
        let segment_size_known = size != unknown_size(size_len);
        // Mark the size as unknown: same length, all value bits set.
        let size_start = prefix.len() - size_len;
        prefix[size_start] |= 0xFFu8.checked_shr(size_len as u32).unwrap_or(0);
        for b in &mut prefix[size_start + 1..] {
            *b = 0xFF;
        }
        Ok(HeadReader {
            inner,
            prefix,
            served: 0,
            segment_size_known,
        })
    }
}

impl<R: Read> Read for HeadReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.served < self.prefix.len() {
            let n = buf.len().min(self.prefix.len() - self.served);
            buf[..n].copy_from_slice(&self.prefix[self.served..self.served + n]);
            self.served += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

/// Reads an element header byte by byte into `prefix`: (id, size, size length), or `None`
/// at a clean end of input.
fn read_element_header<R: Read>(
    r: &mut R,
    prefix: &mut Vec<u8>,
) -> Result<Option<(u32, u64, usize)>, WebmReadError> {
    let start = prefix.len();
    let mut first = [0u8; 1];
    if r.read(&mut first)? == 0 {
        return Ok(None);
    }
    prefix.push(first[0]);
    let id_len = vint_len(first[0]);
    if id_len > 4 {
        return Err(WebmReadError::NotWebm("invalid element ID".into()));
    }
    read_more(r, prefix, id_len - 1)?;
    let size_first = prefix.len();
    read_more(r, prefix, 1)?;
    let size_len = vint_len(prefix[size_first]);
    if size_len > 8 {
        return Err(WebmReadError::NotWebm("invalid element size".into()));
    }
    read_more(r, prefix, size_len - 1)?;
    let bad = || WebmReadError::NotWebm("invalid element header".into());
    let (id, _) = read_id(&prefix[start..]).ok_or_else(bad)?;
    let (size, _) = read_vint(&prefix[size_first..]).ok_or_else(bad)?;
    Ok(Some((id, size, size_len)))
}

fn read_more<R: Read>(r: &mut R, prefix: &mut Vec<u8>, n: usize) -> Result<(), WebmReadError> {
    let start = prefix.len();
    prefix.resize(start + n, 0);
    read_exact_or_truncated(r, &mut prefix[start..])
}

fn read_exact_or_truncated<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), WebmReadError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            WebmReadError::NotWebm("input ends inside the file header".into())
        }
        _ => WebmReadError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use webm_iterable::{WebmWriter as EbmlWriter, WriteOptions};

    const CLUSTER_ID: [u8; 4] = [0x1f, 0x43, 0xb6, 0x75];

    /// A raw (Simple)Block body for track 1 or 2.
    fn block(track: u8, offset: i16, flags: u8, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0x80 | track];
        b.extend_from_slice(&offset.to_be_bytes());
        b.push(flags);
        b.extend_from_slice(data);
        b
    }

    /// A small file built directly with the EBML library: two tracks, two clusters mixing
    /// SimpleBlocks and BlockGroups, Cues and a SeekHead. `unknown` leaves the Segment and
    /// Clusters without sizes; `scale` is the TimestampScale.
    fn sample(unknown: bool, scale: u64) -> Vec<u8> {
        let mut w = EbmlWriter::new(Vec::new());
        let start = |w: &mut EbmlWriter<Vec<u8>>, tag: MatroskaSpec| {
            if unknown {
                w.write_advanced(&tag, WriteOptions::is_unknown_sized_element())
                    .unwrap();
            } else {
                w.write(&tag).unwrap();
            }
        };
        w.write(&MatroskaSpec::Ebml(Master::Full(vec![
            MatroskaSpec::DocType("webm".into()),
            MatroskaSpec::DocTypeVersion(4),
        ])))
        .unwrap();
        start(&mut w, MatroskaSpec::Segment(Master::Start));
        w.write(&MatroskaSpec::SeekHead(Master::Full(vec![
            MatroskaSpec::Seek(Master::Full(vec![
                MatroskaSpec::SeekID(vec![0x15, 0x49, 0xa9, 0x66]),
                MatroskaSpec::SeekPosition(37),
            ])),
        ])))
        .unwrap();
        w.write(&MatroskaSpec::Info(Master::Full(vec![
            MatroskaSpec::TimestampScale(scale),
            MatroskaSpec::Duration(3000.0),
        ])))
        .unwrap();
        w.write(&MatroskaSpec::Tracks(Master::Full(vec![
            MatroskaSpec::TrackEntry(Master::Full(vec![
                MatroskaSpec::TrackNumber(1),
                MatroskaSpec::TrackType(1),
                MatroskaSpec::CodecID("V_VP8".into()),
                MatroskaSpec::Video(Master::Full(vec![
                    MatroskaSpec::PixelWidth(64),
                    MatroskaSpec::PixelHeight(48),
                ])),
            ])),
            MatroskaSpec::TrackEntry(Master::Full(vec![
                MatroskaSpec::TrackNumber(2),
                MatroskaSpec::TrackType(2),
                MatroskaSpec::CodecID("A_OPUS".into()),
                MatroskaSpec::CodecPrivate(b"OpusHead".to_vec()),
                MatroskaSpec::CodecDelay(6_500_000),
                MatroskaSpec::SeekPreRoll(80_000_000),
                MatroskaSpec::Audio(Master::Full(vec![MatroskaSpec::Channels(2)])),
            ])),
        ])))
        .unwrap();
        for (ts, base) in [(0u64, 0u8), (1000, 10)] {
            start(&mut w, MatroskaSpec::Cluster(Master::Start));
            w.write(&MatroskaSpec::Timestamp(ts)).unwrap();
            w.write(&MatroskaSpec::SimpleBlock(block(1, 0, 0x80, &[base, 1])))
                .unwrap();
            w.write(&MatroskaSpec::SimpleBlock(block(2, -5, 0x00, &[base, 2])))
                .unwrap();
            w.write(&MatroskaSpec::BlockGroup(Master::Full(vec![
                MatroskaSpec::Block(block(1, 20, 0, &[base, 3])),
                MatroskaSpec::ReferenceBlock(-20),
            ])))
            .unwrap();
            w.write(&MatroskaSpec::BlockGroup(Master::Full(vec![
                MatroskaSpec::Block(block(2, 30, 0, &[base, 4])),
                MatroskaSpec::BlockDuration(20),
            ])))
            .unwrap();
            w.write(&MatroskaSpec::Cluster(Master::End)).unwrap();
        }
        w.write(&MatroskaSpec::Cues(Master::Full(vec![
            MatroskaSpec::CuePoint(Master::Full(vec![
                MatroskaSpec::CueTrackPositions(Master::Full(vec![
                    MatroskaSpec::CueTrack(1),
                    MatroskaSpec::CueClusterPosition(7),
                ])),
                MatroskaSpec::CueTime(1000),
                MatroskaSpec::CueTrackPositions(Master::Full(vec![
                    MatroskaSpec::CueTrack(2),
                    MatroskaSpec::CueClusterPosition(8),
                ])),
            ])),
        ])))
        .unwrap();
        w.write(&MatroskaSpec::Segment(Master::End)).unwrap();
        w.into_inner().unwrap()
    }

    #[test]
    fn reads_every_field() {
        for unknown in [false, true] {
            let bytes = sample(unknown, 500_000);
            let info = read_webm(&bytes[..]).unwrap();
            assert_eq!(info.doc_type, "webm");
            assert_eq!(info.segment_size_known, !unknown);
            assert_eq!(info.timestamp_scale, 500_000);
            assert_eq!(info.duration_ms, Some(1500.0));
            assert!(info.has_seekhead);
            assert_eq!(info.seekhead_entries, 1);
            assert_eq!(
                info.seek_entries[0],
                WebmSeekEntry {
                    id: 0x1549_A966,
                    position: 37
                }
            );

            let v = &info.tracks[0];
            assert_eq!(
                (v.number, v.kind, v.codec_id.as_str()),
                (1, WebmTrackKind::Video, "V_VP8")
            );
            assert_eq!((v.width, v.height, v.channels), (Some(64), Some(48), None));
            let a = &info.tracks[1];
            assert_eq!(
                (a.number, a.kind, a.codec_id.as_str()),
                (2, WebmTrackKind::Audio, "A_OPUS")
            );
            assert_eq!(a.channels, Some(2));
            assert_eq!(a.codec_private.as_deref(), Some(&b"OpusHead"[..]));
            assert_eq!(
                (a.codec_delay_ns, a.seek_preroll_ns),
                (Some(6_500_000), Some(80_000_000))
            );

            // Units of 0.5 ms: cluster 1000 -> 500 ms, offsets halve.
            let blocks: Vec<(u64, i64, bool, Vec<u8>)> = info
                .blocks
                .iter()
                .map(|b| (b.track, b.ts_ms, b.keyframe, b.data.clone()))
                .collect();
            assert_eq!(
                blocks,
                [
                    (1, 0, true, vec![0, 1]),
                    (2, -2, false, vec![0, 2]),
                    (1, 10, false, vec![0, 3]),
                    (2, 15, true, vec![0, 4]),
                    (1, 500, true, vec![10, 1]),
                    (2, 497, false, vec![10, 2]),
                    (1, 510, false, vec![10, 3]),
                    (2, 515, true, vec![10, 4]),
                ]
            );
            assert_eq!(info.clusters, 2);
            let starts: Vec<Option<u64>> = info.cluster_starts.iter().map(|c| c.ts_ms).collect();
            assert_eq!(starts, [Some(0), Some(500)]);
            for c in &info.cluster_starts {
                let at = (info.segment_data_offset + c.position) as usize;
                assert_eq!(bytes[at..at + 4], CLUSTER_ID);
            }
            let cues: Vec<(u64, u64, u64)> = info
                .cues
                .iter()
                .map(|c| (c.ts_ms, c.track, c.cluster_position))
                .collect();
            assert_eq!(cues, [(500, 1, 7), (500, 2, 8)]);

            let lean = read_webm_with(&bytes[..], ReadOptions { block_data: false }).unwrap();
            assert!(lean.blocks.iter().all(|b| b.data.is_empty()));
            assert_eq!(lean.blocks.len(), 8);
        }
    }

    #[test]
    fn rejects_non_webm_input() {
        assert!(matches!(read_webm(&[][..]), Err(WebmReadError::NotWebm(_))));
        assert!(matches!(
            read_webm(&b"OggS\0\0\0\0"[..]),
            Err(WebmReadError::NotWebm(_))
        ));
        let mut other = sample(false, 1_000_000);
        let doc = other.windows(4).position(|w| w == b"webm").unwrap();
        other[doc..doc + 4].copy_from_slice(b"xebm");
        assert!(matches!(
            read_webm(&other[..]),
            Err(WebmReadError::NotWebm(_))
        ));
    }

    #[test]
    fn truncations_and_garbage_never_panic() {
        for unknown in [false, true] {
            let bytes = sample(unknown, 1_000_000);
            let full = read_webm(&bytes[..]).unwrap();
            for len in 0..bytes.len() {
                match read_webm(&bytes[..len]) {
                    Ok(info) => assert!(info.blocks.len() <= full.blocks.len()),
                    Err(WebmReadError::Truncated { partial, .. }) => {
                        assert!(partial.blocks.len() <= full.blocks.len());
                    }
                    Err(WebmReadError::NotWebm(_) | WebmReadError::Corrupt(_)) => {}
                    Err(e) => panic!("unexpected error at {len}: {e}"),
                }
            }
        }

        // Deterministic xorshift noise: pure garbage, and valid files with bytes changed.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..500 {
            let len = (next() % 400) as usize;
            let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            assert!(read_webm(&noise[..]).is_err());
        }
        let valid = sample(true, 1_000_000);
        for _ in 0..3000 {
            let mut bytes = valid.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            let _ = read_webm(&bytes[..]);
        }
    }

    /// Long runs of sibling elements (here 50 000 CuePoints and BlockGroups) must not
    /// exhaust the stack.
    #[test]
    fn many_siblings() {
        let mut w = EbmlWriter::new(Vec::new());
        w.write(&MatroskaSpec::Ebml(Master::Full(vec![
            MatroskaSpec::DocType("webm".into()),
        ])))
        .unwrap();
        w.write_advanced(
            &MatroskaSpec::Segment(Master::Start),
            WriteOptions::is_unknown_sized_element(),
        )
        .unwrap();
        w.write_advanced(
            &MatroskaSpec::Cluster(Master::Start),
            WriteOptions::is_unknown_sized_element(),
        )
        .unwrap();
        w.write(&MatroskaSpec::Timestamp(0)).unwrap();
        for i in 0..50_000 {
            w.write(&MatroskaSpec::BlockGroup(Master::Full(vec![
                MatroskaSpec::Block(block(1, (i % 1000) as i16, 0, &[1])),
            ])))
            .unwrap();
        }
        w.write(&MatroskaSpec::Cluster(Master::End)).unwrap();
        w.write(&MatroskaSpec::Cues(Master::Start)).unwrap();
        for i in 0..50_000 {
            w.write(&MatroskaSpec::CuePoint(Master::Full(vec![
                MatroskaSpec::CueTime(i),
                MatroskaSpec::CueTrackPositions(Master::Full(vec![
                    MatroskaSpec::CueTrack(1),
                    MatroskaSpec::CueClusterPosition(0),
                ])),
            ])))
            .unwrap();
        }
        w.write(&MatroskaSpec::Cues(Master::End)).unwrap();
        let bytes = w.into_inner().unwrap();
        let info = read_webm(&bytes[..]).unwrap();
        assert_eq!(info.blocks.len(), 50_000);
        assert!(info.blocks.iter().all(|b| b.keyframe));
        assert_eq!(info.cues.len(), 50_000);
        assert_eq!(info.cues[49_999].ts_ms, 49_999);
    }
}
