//! In-place repair of recording files left unfinished by a crash (e.g. SIGKILL).
//!
//! A killed [`WebmWriter`](super::webm::WebmWriter) leaves a Segment of unknown size, a
//! Duration of 0, an empty Void where the SeekHead belongs, no Cues, maybe a last Cluster of
//! unknown size, and possibly an element cut off at the end of the file. A killed
//! [`OggOpusWriter`](super::ogg::OggOpusWriter) leaves complete pages, perhaps a partial page
//! at the end, and no end-of-stream page. The functions here turn such files into finalized,
//! seekable files without touching a byte of the media written before the cut.
//!
//! Safety rules (a readable file must never become unreadable):
//! - the file is fully scanned and validated (with the crate's own readers) before any write;
//!   anything that does not look like a file of the expected shape is
//!   [`RepairError::NotRepairable`] and stays as it is;
//! - only a trailing *partial* element (or page) is cut, never data in the middle;
//! - writes go in an order where every intermediate state is readable: cut the partial tail,
//!   patch cluster sizes, append Cues, fsync, then patch Duration, SeekHead and Segment size
//!   and fsync again. A repair interrupted at any point can simply be run again;
//! - a second run on a repaired file does nothing ([`RepairOutcome::AlreadyFinal`]).
//!
//! Raw EBML / Ogg byte handling is limited to walking element and page boundaries and to
//! patching fields at known offsets; block and packet contents are read with
//! [`read_webm_with`] and [`read_ogg_opus`].

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::ebml::{
    self, parse_header, seekhead_in, size_field, CuePoint, Head, BLOCKGROUP_ID, CLUSTER_ID,
    CRC32_ID, CUES_ID, DURATION_ID, EBML_ID, INFO_ID, MAX_EBML_HEADER, OTHER_CLUSTER_CHILDREN,
    SEEKHEAD_ID, SEGMENT_CHILDREN, SEGMENT_ID, SIMPLEBLOCK_ID, TIMESTAMP_ID, TIMESTAMP_SCALE_ID,
    TRACKS_ID, VOID_ID,
};
use super::ogg::read_ogg_opus;
use super::webm_reader::{read_webm_with, ReadOptions, WebmTrackKind, MAX_ELEMENT_SIZE};

/// Why a file could not be repaired.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// Opening, reading, writing or syncing the file failed. The file may be unchanged or
    /// partly repaired, but every write order step leaves it readable; run the repair again.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The file is not a WebM / Ogg Opus file of a shape this module can repair (garbage,
    /// empty, too short, corrupt in the middle, ...). It was not modified.
    #[error("not repairable: {0}")]
    NotRepairable(String),
}

/// What a repair did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RepairOutcome {
    /// The file was already finalized (or there was nothing that could be improved); it was
    /// not written to.
    AlreadyFinal,
    /// The file was changed in place.
    Repaired {
        /// Bytes cut off the end (a partial element / page).
        truncated_bytes: u64,
        /// Duration of the file after the repair, in ms (WebM: the Duration written or kept;
        /// Ogg: final granule − pre-skip).
        duration_ms: u64,
        /// Number of CuePoints in the file (0 for Ogg).
        cues: usize,
    },
}

// ---------------------------------------------------------------------------------------
// EBML structure scan (shared with `inspect`)
// ---------------------------------------------------------------------------------------

/// Largest Info element whose children are read (looking for Duration).
const MAX_INFO: u64 = 1 << 20;
/// Typical frame length used for Duration is capped at this (ms).
const MAX_FRAME_MS: i64 = 100;
/// Largest Void considered for the SeekHead (it is rewritten whole).
const MAX_SEEKHEAD_VOID: u64 = 64 * 1024;
/// Blocks of a track looked at for its typical frame length.
const FRAME_LEN_WINDOW: usize = 9;

/// Buffered random-access reads of a file of known length.
struct Src<'a> {
    r: BufReader<&'a File>,
    pos: u64,
    len: u64,
}

impl<'a> Src<'a> {
    fn new(file: &'a File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        let mut r = BufReader::with_capacity(64 * 1024, file);
        r.seek(SeekFrom::Start(0))?;
        Ok(Src { r, pos: 0, len })
    }

    /// Fills `buf` from absolute position `at` (the caller keeps `at + buf.len() <= len`).
    fn read_at(&mut self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        if at != self.pos {
            let delta = i64::try_from(i128::from(at) - i128::from(self.pos))
                .map_err(|_| io::Error::other("seek out of range"))?;
            self.r.seek_relative(delta)?;
        }
        self.r.read_exact(buf)?;
        self.pos = at + buf.len() as u64;
        Ok(())
    }

    /// Reads the element header at `at`, not looking past `limit`.
    fn header(&mut self, at: u64, limit: u64) -> io::Result<Head> {
        let avail = limit.saturating_sub(at).min(12) as usize;
        let mut buf = [0u8; 12];
        self.read_at(at, &mut buf[..avail])?;
        Ok(parse_header(&buf[..avail]))
    }
}

/// A Cluster found by the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterLayout {
    /// Absolute position of the Cluster ID.
    pub pos: u64,
    /// Absolute position of its size field, and that field's length.
    pub size_pos: u64,
    pub size_len: u8,
    /// Absolute end of its last complete child (its real end).
    pub end: u64,
    /// Whether the size field holds the real size (false: unknown, or larger than the data
    /// actually present).
    pub size_ok: bool,
    /// SimpleBlocks + BlockGroups in it.
    pub blocks: usize,
}

/// The Info/Duration field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DurationSlot {
    /// Absolute position of the float's bytes.
    pub pos: u64,
    /// 4 or 8.
    pub len: u8,
    /// Value in TimestampScale units.
    pub value: f64,
}

/// Element boundaries of a WebM file: what repair and inspect need beyond the reader.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WebmLayout {
    pub file_len: u64,
    /// Absolute position of the Segment size field, and its length.
    pub segment_size_pos: u64,
    pub segment_size_len: u8,
    /// Declared Segment size (`None`: unknown).
    pub segment_size: Option<u64>,
    /// Absolute start of the Segment data (positions in SeekHead/Cues are relative to it).
    pub data_offset: u64,
    /// End of the last complete element worth keeping; `< file_len` when the file ends in a
    /// partial element (or the last cluster has no complete block).
    pub valid_end: u64,
    /// Whether the Segment's declared end lies before the end of the file.
    pub data_after_segment: bool,
    pub info: Option<u64>,
    pub tracks: Option<u64>,
    pub seekhead: Option<u64>,
    /// Top-level Voids before the first Cluster: (position, total length).
    pub voids: Vec<(u64, u64)>,
    /// A non-empty Cues element.
    pub cues: Option<u64>,
    pub duration: Option<DurationSlot>,
    pub timestamp_scale: u64,
    pub clusters: Vec<ClusterLayout>,
}

impl WebmLayout {
    /// The spec's "final" condition: known Segment size (covered by the file), Cues present
    /// and Duration > 0.
    pub fn is_final(&self) -> bool {
        let segment_complete = self
            .segment_size
            .and_then(|s| self.data_offset.checked_add(s))
            .is_some_and(|end| end <= self.file_len);
        segment_complete && self.cues.is_some() && self.duration.is_some_and(|d| d.value > 0.0)
    }

    /// Whether any size field still holds "unknown" (or a wrong size).
    pub fn has_unknown_sizes(&self) -> bool {
        self.segment_size.is_none() || self.clusters.iter().any(|c| !c.size_ok)
    }
}

fn not_repairable(msg: impl Into<String>) -> RepairError {
    RepairError::NotRepairable(msg.into())
}

/// How a walk over a cluster's children ended.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// Reached the bound exactly.
    End,
    /// Found a level-1 element (ends an unknown-size cluster).
    TopLevel,
    /// The next child is incomplete (cut by the end of the file).
    Cut,
}

/// Walks the children of a cluster from `pos` up to `bound`: (end of the last complete child,
/// number of blocks, how it stopped).
fn walk_cluster(
    src: &mut Src,
    mut pos: u64,
    bound: u64,
) -> Result<(u64, usize, Stop), RepairError> {
    let mut blocks = 0;
    loop {
        if pos >= bound {
            return Ok((pos, blocks, Stop::End));
        }
        let h = match src.header(pos, bound)? {
            Head::Element(h) => h,
            Head::Incomplete => return Ok((pos, blocks, Stop::Cut)),
            Head::Invalid => return Err(not_repairable(format!("invalid element at {pos}"))),
        };
        if SEGMENT_CHILDREN.contains(&h.id) {
            return Ok((pos, blocks, Stop::TopLevel));
        }
        let known = [TIMESTAMP_ID, SIMPLEBLOCK_ID, BLOCKGROUP_ID];
        if !known.contains(&h.id) && !OTHER_CLUSTER_CHILDREN.contains(&h.id) {
            return Err(not_repairable(format!(
                "unexpected element 0x{:X} in a cluster at {pos}",
                h.id
            )));
        }
        let Some(size) = h.size else {
            return Err(not_repairable(format!("unknown-size block at {pos}")));
        };
        let end = pos
            .checked_add(h.len)
            .and_then(|p| p.checked_add(size))
            .ok_or_else(|| not_repairable("element size out of range"))?;
        if end > bound {
            return Ok((pos, blocks, Stop::Cut));
        }
        if h.id == SIMPLEBLOCK_ID || h.id == BLOCKGROUP_ID {
            blocks += 1;
        }
        pos = end;
    }
}

/// Reads the unsigned integer or float stored in `data`.
fn uint(data: &[u8]) -> Option<u64> {
    (data.len() <= 8).then(|| data.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Finds Duration (and TimestampScale) among the children of Info.
fn parse_info(
    src: &mut Src,
    data: u64,
    size: u64,
    layout: &mut WebmLayout,
) -> Result<(), RepairError> {
    if size > MAX_INFO {
        return Ok(());
    }
    let mut buf = vec![0u8; size as usize]; // ok: size <= MAX_INFO
    src.read_at(data, &mut buf)?;
    let mut at = 0usize;
    while at < buf.len() {
        let Head::Element(h) = parse_header(&buf[at..]) else {
            return Err(not_repairable("malformed Info element"));
        };
        let start = at + h.len as usize; // ok: len <= 12
        let end = h
            .size
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| start.checked_add(s))
            .filter(|e| *e <= buf.len())
            .ok_or_else(|| not_repairable("malformed Info element"))?;
        let value = &buf[start..end];
        match (h.id, value.len()) {
            (DURATION_ID, 8) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(value);
                layout.duration = Some(DurationSlot {
                    pos: data + start as u64,
                    len: 8,
                    value: f64::from_be_bytes(b),
                });
            }
            (DURATION_ID, 4) => {
                let mut b = [0u8; 4];
                b.copy_from_slice(value);
                layout.duration = Some(DurationSlot {
                    pos: data + start as u64,
                    len: 4,
                    value: f64::from(f32::from_be_bytes(b)),
                });
            }
            (TIMESTAMP_SCALE_ID, _) => {
                if let Some(scale) = uint(value).filter(|s| *s > 0) {
                    layout.timestamp_scale = scale;
                }
            }
            _ => {}
        }
        at = end;
    }
    Ok(())
}

/// Scans the element structure of a WebM file without reading block payloads.
///
/// Errors ([`RepairError::NotRepairable`]) for anything that is not an EBML header followed
/// by a Segment whose children are well-formed up to, at most, one partial element at the
/// end of the file.
pub(crate) fn scan_webm(file: &File) -> Result<WebmLayout, RepairError> {
    let mut src = Src::new(file)?;
    let file_len = src.len;
    let ebml = match src.header(0, file_len)? {
        Head::Element(h) if h.id == EBML_ID => h,
        _ => return Err(not_repairable("no EBML header")),
    };
    let ebml_size = ebml
        .size
        .filter(|s| *s <= MAX_EBML_HEADER)
        .ok_or_else(|| not_repairable("bad EBML header size"))?;
    let seg_pos = ebml.len + ebml_size;
    let seg = match src.header(seg_pos, file_len)? {
        Head::Element(h) if h.id == SEGMENT_ID => h,
        _ => return Err(not_repairable("no Segment after the EBML header")),
    };
    let data_offset = seg_pos + seg.len;
    let declared_end = seg.size.and_then(|s| data_offset.checked_add(s));
    let limit = match declared_end {
        Some(end) if end <= file_len => end,
        _ => file_len,
    };
    let mut layout = WebmLayout {
        file_len,
        segment_size_pos: seg_pos + seg.len - u64::from(seg.size_len),
        segment_size_len: seg.size_len,
        segment_size: seg.size,
        data_offset,
        valid_end: limit,
        data_after_segment: declared_end.is_some_and(|e| e < file_len),
        info: None,
        tracks: None,
        seekhead: None,
        voids: Vec::new(),
        cues: None,
        duration: None,
        timestamp_scale: 1_000_000,
        clusters: Vec::new(),
    };

    let mut pos = data_offset;
    while pos < limit {
        let h = match src.header(pos, limit)? {
            Head::Element(h) => h,
            Head::Incomplete => break,
            Head::Invalid => return Err(not_repairable(format!("invalid element at {pos}"))),
        };
        let data = pos + h.len;
        let declared = h.size.and_then(|s| data.checked_add(s));
        if h.id == CLUSTER_ID {
            let size_pos = data - u64::from(h.size_len);
            if let Some(end) = declared.filter(|e| *e <= limit) {
                let (reached, blocks, stop) = walk_cluster(&mut src, data, end)?;
                if stop != Stop::End || reached != end {
                    return Err(not_repairable(format!("malformed cluster at {pos}")));
                }
                layout.clusters.push(ClusterLayout {
                    pos,
                    size_pos,
                    size_len: h.size_len,
                    end,
                    size_ok: true,
                    blocks,
                });
                pos = end;
                continue;
            }
            // Unknown size, or a size reaching past the end of the file: the cluster ends at
            // its last complete child.
            let (end, blocks, stop) = walk_cluster(&mut src, data, limit)?;
            if blocks == 0 && stop != Stop::TopLevel {
                break; // a last cluster without any complete block is cut entirely
            }
            layout.clusters.push(ClusterLayout {
                pos,
                size_pos,
                size_len: h.size_len,
                end,
                size_ok: false,
                blocks,
            });
            pos = end;
            if stop == Stop::Cut {
                break;
            }
            continue;
        }
        let Some(end) = declared else {
            return Err(not_repairable(format!(
                "element 0x{:X} of unknown size at {pos}",
                h.id
            )));
        };
        if end > limit {
            if SEGMENT_CHILDREN.contains(&h.id) || h.id == VOID_ID || h.id == CRC32_ID {
                break; // a partial level-1 element at the end
            }
            return Err(not_repairable(format!(
                "element 0x{:X} at {pos} reaches past the end",
                h.id
            )));
        }
        match h.id {
            INFO_ID => {
                layout.info = Some(pos);
                parse_info(&mut src, data, end - data, &mut layout)?;
            }
            TRACKS_ID => layout.tracks = Some(pos),
            SEEKHEAD_ID => layout.seekhead = Some(pos),
            CUES_ID if end > data => layout.cues = Some(pos),
            VOID_ID if layout.clusters.is_empty() => layout.voids.push((pos, end - pos)),
            _ => {}
        }
        pos = end;
    }
    layout.valid_end = pos;
    if layout.info.is_none() || layout.tracks.is_none() {
        return Err(not_repairable("no complete Info and Tracks"));
    }
    Ok(layout)
}

// ---------------------------------------------------------------------------------------
// WebM repair
// ---------------------------------------------------------------------------------------

/// Writes `bytes` at absolute position `at`.
fn write_at(file: &mut File, at: u64, bytes: &[u8]) -> io::Result<()> {
    file.seek(SeekFrom::Start(at))?;
    file.write_all(bytes)
}

/// Typical frame length of a track from its last block timestamps: the median gap between
/// consecutive blocks, capped at [`MAX_FRAME_MS`]; 0 with fewer than two blocks.
fn frame_length(ts: &[i64]) -> i64 {
    let tail = &ts[ts.len().saturating_sub(FRAME_LEN_WINDOW)..];
    let mut gaps: Vec<i64> = tail.windows(2).map(|w| (w[1] - w[0]).max(0)).collect();
    if gaps.is_empty() {
        return 0;
    }
    gaps.sort_unstable();
    gaps[gaps.len() / 2].min(MAX_FRAME_MS)
}

/// Repairs a WebM written by [`WebmWriter`](super::webm::WebmWriter) (and any WebM of the
/// same shape: EBML header, Segment, level-1 elements, Clusters of SimpleBlocks/BlockGroups)
/// in place, so that it is complete and seekable:
///
/// 1. cuts off a trailing partial element (a block or cluster cut by the kill; a last cluster
///    without any complete block goes entirely);
/// 2. gives every cluster of unknown (or too large) size its real size;
/// 3. appends Cues, unless a non-empty Cues element is already there: a CuePoint per cluster
///    whose first video block is a keyframe (per cluster for files without video);
/// 4. writes Duration (only if the Segment size is unknown or Duration is not > 0): the
///    latest over all tracks of last block timestamp + the track's typical frame length
///    (median gap between its last blocks, capped at 100 ms), at least 1 ms when there are
///    blocks;
/// 5. writes a SeekHead (Info, Tracks, Cues) into the first Void before the first Cluster
///    that is large enough (the writer reserves 96 bytes; 68 are needed). If the file already
///    has a SeekHead it is left as it is; if no Void is large enough the SeekHead is left
///    out (players then find the Cues by reading to the end), Cues and Duration are still
///    added;
/// 6. patches the Segment size (when its size field is long enough; the writer's is 8 bytes).
///
/// A file that is already final (Segment size known and covered by the file, Cues present,
/// Duration > 0), or on which none of the steps would change anything, is not written to:
/// [`RepairOutcome::AlreadyFinal`]. Hence the repair is idempotent. Files with data after a
/// known-size Segment, corrupt elements before the end, or no Info/Tracks are
/// [`RepairError::NotRepairable`] and left unchanged. Never panics.
pub fn repair_webm(path: &Path) -> Result<RepairOutcome, RepairError> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let layout = scan_webm(&file)?;
    if layout.is_final() {
        return Ok(RepairOutcome::AlreadyFinal);
    }
    if layout.data_after_segment {
        return Err(not_repairable("data after the end of the Segment"));
    }
    let truncated_bytes = layout.file_len - layout.valid_end;
    if truncated_bytes > MAX_ELEMENT_SIZE as u64 {
        return Err(not_repairable(format!(
            "{truncated_bytes} bytes at the end do not form elements"
        )));
    }

    // Read blocks and tracks of the part that stays, and check both views agree.
    file.seek(SeekFrom::Start(0))?;
    let info = read_webm_with(
        BufReader::new(&file).take(layout.valid_end),
        ReadOptions { block_data: false },
    )
    .map_err(|e| not_repairable(format!("unreadable: {e}")))?;
    let positions: Vec<u64> = layout
        .clusters
        .iter()
        .map(|c| c.pos - layout.data_offset)
        .collect();
    let read_positions: Vec<u64> = info.cluster_starts.iter().map(|c| c.position).collect();
    let block_total: usize = layout.clusters.iter().map(|c| c.blocks).sum();
    if positions != read_positions || block_total != info.blocks.len() {
        return Err(not_repairable(
            "cluster layout does not match the blocks read",
        ));
    }
    let scale = layout.timestamp_scale;
    let to_units = |ms: i64| -> u64 {
        u64::try_from(i128::from(ms.max(0)) * 1_000_000 / i128::from(scale)).unwrap_or(u64::MAX)
    };

    // Cues.
    let video: Vec<u64> = info
        .tracks
        .iter()
        .filter(|t| t.kind == WebmTrackKind::Video)
        .map(|t| t.number)
        .collect();
    let mut cues: Vec<CuePoint> = Vec::new();
    let mut first = 0;
    for (cluster, position) in layout.clusters.iter().zip(&positions) {
        let blocks = info
            .blocks
            .get(first..first + cluster.blocks)
            .unwrap_or(&[]);
        first += cluster.blocks;
        let cue_block = if video.is_empty() {
            blocks.first()
        } else {
            blocks
                .iter()
                .find(|b| video.contains(&b.track))
                .filter(|b| b.keyframe)
        };
        if let Some(b) = cue_block {
            cues.push(CuePoint {
                time: to_units(b.ts_ms),
                track: b.track,
                position: *position,
            });
        }
    }
    let (cues_bytes, cues_pos, cue_count) = match layout.cues {
        Some(pos) => (Vec::new(), Some(pos), info.cues.len()),
        None if cues.is_empty() => (Vec::new(), None, 0),
        None => (
            ebml::cues_bytes(&cues).map_err(|e| not_repairable(format!("EBML: {e}")))?,
            Some(layout.valid_end),
            cues.len(),
        ),
    };
    let new_end = layout.valid_end + cues_bytes.len() as u64;

    // Duration.
    let mut duration_ms: i64 = 0;
    for track in &info.tracks {
        let ts: Vec<i64> = info
            .blocks
            .iter()
            .filter(|b| b.track == track.number)
            .map(|b| b.ts_ms)
            .collect();
        if let Some(last) = ts.last() {
            duration_ms = duration_ms.max(last.saturating_add(frame_length(&ts)).max(1));
        }
    }
    let duration_ms = u64::try_from(duration_ms).unwrap_or(0);
    let duration_units = duration_ms as f64 * 1e6 / scale as f64;
    let duration_patch = layout.duration.and_then(|slot| {
        let keep = layout.segment_size.is_some() && slot.value > 0.0;
        let bytes = match slot.len {
            8 => duration_units.to_be_bytes().to_vec(),
            _ => (duration_units as f32).to_be_bytes().to_vec(),
        };
        let same = match slot.len {
            8 => slot.value.to_bits() == duration_units.to_bits(),
            _ => slot.value as f32 == duration_units as f32,
        };
        (!keep && !same && duration_ms > 0).then_some((slot.pos, bytes))
    });
    let reported_ms = match (duration_patch.is_some(), layout.duration) {
        (false, Some(slot)) if slot.value > 0.0 => (slot.value * scale as f64 / 1e6) as u64,
        _ => duration_ms,
    };

    // SeekHead.
    let seekhead_patch = if layout.seekhead.is_some() {
        None
    } else {
        let rel = |p: u64| p - layout.data_offset;
        let mut entries = Vec::new();
        if let Some(p) = layout.info {
            entries.push((INFO_ID, rel(p)));
        }
        if let Some(p) = layout.tracks {
            entries.push((TRACKS_ID, rel(p)));
        }
        if let Some(p) = cues_pos {
            entries.push((CUES_ID, rel(p)));
        }
        layout
            .voids
            .iter()
            .filter(|(_, total)| *total <= MAX_SEEKHEAD_VOID)
            .find_map(|&(pos, total)| seekhead_in(&entries, total).map(|b| (pos, b)))
    };

    // Cluster and Segment sizes.
    let cluster_patches: Vec<(u64, Vec<u8>)> = layout
        .clusters
        .iter()
        .filter(|c| !c.size_ok)
        .filter_map(|c| {
            let data = c.size_pos + u64::from(c.size_len);
            size_field(c.end - data, c.size_len).map(|f| (c.size_pos, f))
        })
        .collect();
    let segment_size = new_end - layout.data_offset;
    let segment_patch = (layout.segment_size != Some(segment_size))
        .then(|| size_field(segment_size, layout.segment_size_len))
        .flatten();

    if truncated_bytes == 0
        && cluster_patches.is_empty()
        && cues_bytes.is_empty()
        && duration_patch.is_none()
        && seekhead_patch.is_none()
        && segment_patch.is_none()
    {
        return Ok(RepairOutcome::AlreadyFinal);
    }

    // Write in an order that keeps the file readable at every step.
    if truncated_bytes > 0 {
        file.set_len(layout.valid_end)?;
    }
    for (pos, field) in &cluster_patches {
        write_at(&mut file, *pos, field)?;
    }
    if !cues_bytes.is_empty() {
        write_at(&mut file, layout.valid_end, &cues_bytes)?;
    }
    file.sync_data()?;
    if let Some((pos, bytes)) = &duration_patch {
        write_at(&mut file, *pos, bytes)?;
    }
    if let Some((pos, bytes)) = &seekhead_patch {
        write_at(&mut file, *pos, bytes)?;
    }
    if let Some(field) = &segment_patch {
        write_at(&mut file, layout.segment_size_pos, field)?;
    }
    file.sync_all()?;
    Ok(RepairOutcome::Repaired {
        truncated_bytes,
        duration_ms: reported_ms,
        cues: cue_count,
    })
}

// ---------------------------------------------------------------------------------------
// Ogg repair
// ---------------------------------------------------------------------------------------

/// Ogg page header length without the lacing table.
const OGG_HEADER: usize = 27;
/// Header-type flag of the last page of a logical stream.
const EOS_FLAG: u8 = 0x04;

/// CRC-32 lookup table of Ogg (polynomial 0x04C11DB7, no reflection, initial value 0).
static OGG_CRC: [u32; 256] = ogg_crc_table();

const fn ogg_crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04C1_1DB7
            } else {
                r << 1
            };
            bit += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
}

/// Ogg page checksum of `page` (whose CRC field must be zero).
fn ogg_crc(page: &[u8]) -> u32 {
    page.iter().fold(0u32, |crc, &b| {
        (crc << 8) ^ OGG_CRC[usize::from((crc >> 24) as u8 ^ b)]
    })
}

/// One complete page found by the scan.
#[derive(Debug, Clone)]
struct Page {
    pos: u64,
    /// The whole page (header, lacing table and body).
    bytes: Vec<u8>,
    /// Whether its last packet ends on it (last lacing value < 255).
    ends_packet: bool,
}

impl Page {
    fn header_type(&self) -> u8 {
        self.bytes[5]
    }
    fn granule(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[6..14]);
        u64::from_le_bytes(b)
    }
    fn serial(&self) -> u32 {
        u32::from_le_bytes([
            self.bytes[14],
            self.bytes[15],
            self.bytes[16],
            self.bytes[17],
        ])
    }
    fn end(&self) -> u64 {
        self.pos + self.bytes.len() as u64
    }
}

/// Walks the pages of an Ogg file: the complete pages (CRC checked) and whether a partial
/// page follows them. Junk (anything but the prefix of a page at the end) is an error.
fn scan_ogg(file: &File) -> Result<Vec<Page>, RepairError> {
    let mut src = Src::new(file)?;
    let mut pages = Vec::new();
    let mut pos = 0u64;
    while pos < src.len {
        let avail = src.len - pos;
        let mut header = [0u8; OGG_HEADER];
        let n = avail.min(OGG_HEADER as u64) as usize;
        src.read_at(pos, &mut header[..n])?;
        if header[..n.min(4)] != b"OggS"[..n.min(4)] || (n >= 5 && header[4] != 0) {
            return Err(not_repairable(format!("no Ogg page at byte {pos}")));
        }
        if n < OGG_HEADER {
            break; // partial page header at the end
        }
        let segments = usize::from(header[26]);
        if avail < (OGG_HEADER + segments) as u64 {
            break;
        }
        let mut lacing = vec![0u8; segments];
        src.read_at(pos + OGG_HEADER as u64, &mut lacing)?;
        let body: u64 = lacing.iter().map(|l| u64::from(*l)).sum();
        let total = (OGG_HEADER + segments) as u64 + body;
        if avail < total {
            break; // partial page at the end
        }
        let mut bytes = vec![0u8; total as usize]; // ok: total < 65 536
        src.read_at(pos, &mut bytes)?;
        let stored = u32::from_le_bytes([bytes[22], bytes[23], bytes[24], bytes[25]]);
        bytes[22..26].fill(0);
        if ogg_crc(&bytes) != stored {
            return Err(not_repairable(format!("bad page checksum at byte {pos}")));
        }
        bytes[22..26].copy_from_slice(&stored.to_le_bytes());
        pages.push(Page {
            pos,
            bytes,
            ends_packet: lacing.last().is_some_and(|l| *l < 255),
        });
        pos += total;
    }
    Ok(pages)
}

/// Repairs an Ogg Opus file (one logical stream, as [`OggOpusWriter`](super::ogg::OggOpusWriter)
/// writes) in place: cuts a trailing partial page (and complete pages after the last one on
/// which a packet ends, whose packet could never be completed), then, if the last page lacks
/// the end-of-stream flag, sets it on that page and recomputes its CRC. The granule position
/// stays what it was (it already counts every packet on and before the page).
///
/// [`RepairOutcome::AlreadyFinal`] when the file ends with a complete EOS page. Files that
/// [`read_ogg_opus`] rejects, junk between or after pages, bad checksums and multiplexed
/// streams are [`RepairError::NotRepairable`] and left unchanged. Never panics.
pub fn repair_ogg(path: &Path) -> Result<RepairOutcome, RepairError> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let info = read_ogg_opus(BufReader::new(&file))
        .map_err(|e| not_repairable(format!("unreadable: {e}")))?;
    let pages = scan_ogg(&file)?;
    if pages.iter().any(|p| p.serial() != info.serial) {
        return Err(not_repairable("more than one logical stream"));
    }
    let file_len = file.metadata()?.len();
    // The stream ends with the first EOS page, else with the last page completing a packet.
    let last = match pages.iter().position(|p| p.header_type() & EOS_FLAG != 0) {
        Some(i) => i,
        None => pages
            .iter()
            .rposition(|p| p.ends_packet)
            .ok_or_else(|| not_repairable("no complete page"))?,
    };
    let keep = &pages[..=last];
    let page = &keep[last];
    let truncated_bytes = file_len.saturating_sub(page.end());
    let needs_eos = page.header_type() & EOS_FLAG == 0;
    if truncated_bytes > 0 && pages.len() > last + 1 && !needs_eos {
        // Complete pages after an EOS page (a chained stream): not what the writer makes.
        return Err(not_repairable("data after the end-of-stream page"));
    }
    if truncated_bytes == 0 && !needs_eos {
        return Ok(RepairOutcome::AlreadyFinal);
    }

    let final_granule = keep
        .iter()
        .rev()
        .map(Page::granule)
        .find(|g| *g != u64::MAX)
        .unwrap_or(0);
    let duration_ms = final_granule.saturating_sub(u64::from(info.pre_skip)) / 48;

    if truncated_bytes > 0 {
        file.set_len(page.end())?;
    }
    if needs_eos {
        let mut bytes = page.bytes.clone();
        bytes[5] |= EOS_FLAG;
        bytes[22..26].fill(0);
        let crc = ogg_crc(&bytes);
        bytes[22..26].copy_from_slice(&crc.to_le_bytes());
        // Header type through CRC in one write.
        write_at(&mut file, page.pos + 5, &bytes[5..26])?;
    }
    file.sync_all()?;
    Ok(RepairOutcome::Repaired {
        truncated_bytes,
        duration_ms,
        cues: 0,
    })
}

/// Repairs every `.webm` and `.ogg` file directly in the recording folder `dir` (sorted by
/// name; other files and subfolders are ignored) and returns (file name, outcome) per file.
/// If the folder cannot be listed, the single entry carries the folder's path and the error.
pub fn repair_dir(dir: &Path) -> Vec<(String, Result<RepairOutcome, RepairError>)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return vec![(dir.display().to_string(), Err(RepairError::Io(e)))],
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let ext = path.extension()?.to_str()?.to_ascii_lowercase();
            let name = path.file_name()?.to_string_lossy().into_owned();
            let result = match ext.as_str() {
                "webm" => repair_webm(&path),
                "ogg" => repair_ogg(&path),
                _ => return None,
            };
            Some((name, result))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::media::ivf::IvfReader;
    use crate::record::ogg::OggOpusWriter;
    use crate::record::webm::{WebmTrack, WebmWriter};
    use crate::record::webm_reader::{read_webm, WebmBlock, WebmInfo};
    use std::path::PathBuf;
    use std::process::Command;

    /// One frame to feed the WebM writer: (track, ts_ms, keyframe, data).
    pub(crate) type Frame = (u64, u64, bool, Vec<u8>);

    fn data_file(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    /// Real VP8 frames of tests/data/clip.ivf (320x240, 30 fps, keyframes every 30 frames):
    /// (ts_ms, keyframe, data).
    pub(crate) fn vp8_clip() -> Vec<(u64, bool, Vec<u8>)> {
        let file = File::open(data_file("clip.ivf")).unwrap();
        let (mut reader, header) = IvfReader::new(BufReader::new(file)).unwrap();
        let mut frames = Vec::new();
        while let Some(f) = reader.next_frame().unwrap() {
            let ts = f.pts * 1000 * u64::from(header.timebase_num) / u64::from(header.timebase_den);
            frames.push((ts, f.data[0] & 1 == 0, f.data));
        }
        frames
    }

    /// Real Opus packets of tests/data/tone.ogg (mono, 20 ms): (channels, pre_skip, packets).
    pub(crate) fn opus_clip() -> (u8, u16, Vec<Vec<u8>>) {
        let info = read_ogg_opus(File::open(data_file("tone.ogg")).unwrap()).unwrap();
        let packets = info.packets.into_iter().map(|p| p.data).collect();
        (info.channels, info.pre_skip, packets)
    }

    pub(crate) fn video_track() -> WebmTrack {
        WebmTrack::Video {
            number: 1,
            width: 320,
            height: 240,
        }
    }

    pub(crate) fn audio_track(channels: u8, pre_skip: u16) -> WebmTrack {
        WebmTrack::Audio {
            number: 2,
            channels,
            pre_skip,
        }
    }

    /// Muxed clip: video on track 1, audio (20 ms packets) on track 2, in ts order.
    fn av_frames(video: bool, audio: bool) -> (Vec<WebmTrack>, Vec<Frame>) {
        let (channels, pre_skip, packets) = opus_clip();
        let mut tracks = Vec::new();
        let mut frames: Vec<Frame> = Vec::new();
        if video {
            tracks.push(video_track());
            frames.extend(vp8_clip().into_iter().map(|(ts, k, d)| (1, ts, k, d)));
        }
        if audio {
            tracks.push(audio_track(channels, pre_skip));
            frames.extend(
                packets
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| (2, i as u64 * 20, true, d)),
            );
        }
        frames.sort_by_key(|f| f.1);
        (tracks, frames)
    }

    /// Writes `frames` to `path` with the real writer, calling flush() after each index in
    /// `flush_after` and copying the file's bytes at that moment (what a SIGKILL right then
    /// leaves). The writer is never finalized.
    pub(crate) fn write_killed(
        path: &Path,
        tracks: &[WebmTrack],
        frames: &[Frame],
        flush_after: &[usize],
    ) -> Vec<Vec<u8>> {
        let out = std::io::BufWriter::new(File::create(path).unwrap());
        let mut w = WebmWriter::new(out, tracks).unwrap();
        let mut snapshots = Vec::new();
        for (i, (track, ts, key, data)) in frames.iter().enumerate() {
            w.write_frame(*track, *ts, *key, data).unwrap();
            if flush_after.contains(&i) {
                w.flush().unwrap();
                snapshots.push(std::fs::read(path).unwrap());
            }
        }
        snapshots
    }

    /// (success, stdout, stderr) of `cmd args... path`.
    pub(crate) fn run(cmd: &str, args: &[&str], path: &Path) -> (bool, String, String) {
        let out = Command::new(cmd).args(args).arg(path).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// ffmpeg decodes without a message and ffprobe reports a duration (returned, seconds).
    pub(crate) fn ffmpeg_clean(path: &Path) -> Option<f64> {
        if !crate::record::test_tools::tool("ffmpeg") || !crate::record::test_tools::tool("ffprobe")
        {
            return None;
        }
        let out = Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(path)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.is_empty(),
            "ffmpeg {}: {err}",
            path.display()
        );
        let (ok, out, err) = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "csv=p=0",
            ],
            path,
        );
        assert!(ok && err.is_empty(), "ffprobe {}: {err}", path.display());
        let duration: f64 = out.trim().parse().unwrap_or_else(|_| {
            panic!("ffprobe shows no duration for {}: {out:?}", path.display())
        });
        Some(duration)
    }

    /// mkvinfo in check mode reports no error or warning.
    fn mkvinfo_clean(path: &Path) {
        if !crate::record::test_tools::tool("mkvinfo") {
            return;
        }
        let (ok, out, err) = run("mkvinfo", &["--all", "--check-mode"], path);
        assert!(ok, "mkvinfo {}: {out}{err}", path.display());
        if std::env::var_os("RECBOT_SHOW_MKVINFO").is_some() {
            let summary: Vec<&str> = out
                .lines()
                .filter(|l| !l.contains("Simple block") && !l.contains("Frame with size"))
                .collect();
            eprintln!("mkvinfo {}:\n{}", path.display(), summary.join("\n"));
        }
        for bad in ["rror", "arning", "nknown"] {
            let hit: Vec<&str> = out
                .lines()
                .chain(err.lines())
                .filter(|l| l.contains(bad))
                .collect();
            assert!(hit.is_empty(), "mkvinfo {}: {hit:?}", path.display());
        }
    }

    /// Track number and keyframe flag of the first block of the cluster at `at`.
    fn first_block_at(bytes: &[u8], at: usize) -> (u64, bool) {
        let Head::Element(cluster) = parse_header(&bytes[at..]) else {
            panic!("no element at {at}");
        };
        assert_eq!(cluster.id, CLUSTER_ID, "cue does not point at a cluster");
        let mut pos = at + cluster.len as usize;
        loop {
            let Head::Element(h) = parse_header(&bytes[pos..]) else {
                panic!("bad child at {pos}");
            };
            let data = pos + h.len as usize;
            if h.id == SIMPLEBLOCK_ID {
                return (u64::from(bytes[data] & 0x7F), bytes[data + 3] & 0x80 != 0);
            }
            pos = data + h.size.unwrap() as usize;
        }
    }

    /// Expected Duration: latest last-block ts + the track's frame length.
    fn expected_duration(info: &WebmInfo) -> i64 {
        info.tracks
            .iter()
            .filter_map(|t| {
                let ts: Vec<i64> = info
                    .blocks
                    .iter()
                    .filter(|b| b.track == t.number)
                    .map(|b| b.ts_ms)
                    .collect();
                let step = if t.number == 1 { 33 } else { 20 };
                ts.last().map(|l| l + step)
            })
            .max()
            .unwrap()
    }

    /// All checks on a repaired WebM: parses, final, Cues at keyframe clusters, Duration,
    /// SeekHead, the blocks of `must_have` first, tools clean, and a second repair is a no-op.
    fn check_repaired_webm(path: &Path, must_have: &[WebmBlock]) -> WebmInfo {
        let bytes = std::fs::read(path).unwrap();
        let info = read_webm(&bytes[..]).unwrap();
        assert!(info.segment_size_known);
        let layout = scan_webm(&File::open(path).unwrap()).unwrap();
        assert!(layout.is_final() && !layout.has_unknown_sizes());
        assert_eq!(layout.valid_end, bytes.len() as u64);
        assert_eq!(
            layout.segment_size,
            Some(bytes.len() as u64 - info.segment_data_offset)
        );

        assert_eq!(&info.blocks[..must_have.len()], must_have);
        let has_video = info.tracks.iter().any(|t| t.number == 1);
        let expected_cues = if has_video {
            info.blocks
                .iter()
                .filter(|b| b.track == 1 && b.keyframe)
                .count()
        } else {
            info.clusters
        };
        assert!(!info.cues.is_empty());
        assert_eq!(info.cues.len(), expected_cues);
        for cue in &info.cues {
            let at = (info.segment_data_offset + cue.cluster_position) as usize;
            let (track, key) = first_block_at(&bytes, at);
            assert_eq!(track, cue.track);
            assert!(key);
            if has_video {
                assert_eq!(track, 1);
            }
            let cluster = info
                .cluster_starts
                .iter()
                .find(|c| c.position == cue.cluster_position)
                .unwrap();
            assert_eq!(cluster.ts_ms, Some(cue.ts_ms));
        }

        let duration = info.duration_ms.unwrap();
        let expected = expected_duration(&info) as f64;
        assert!(
            (duration - expected).abs() <= 1.0,
            "{duration} vs {expected}"
        );

        let ids: Vec<u64> = info.seek_entries.iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            [u64::from(INFO_ID), u64::from(TRACKS_ID), u64::from(CUES_ID)]
        );
        for e in &info.seek_entries {
            let at = (info.segment_data_offset + e.position) as usize;
            let Head::Element(h) = parse_header(&bytes[at..]) else {
                panic!("seek entry points nowhere");
            };
            assert_eq!(u64::from(h.id), e.id);
        }

        if let Some(probed) = ffmpeg_clean(path) {
            assert!(
                (probed * 1000.0 - duration).abs() <= 40.0,
                "ffprobe {probed}"
            );
        }
        mkvinfo_clean(path);

        assert_eq!(repair_webm(path).unwrap(), RepairOutcome::AlreadyFinal);
        assert_eq!(std::fs::read(path).unwrap(), bytes);
        info
    }

    fn blocks_of(bytes: &[u8]) -> Vec<WebmBlock> {
        read_webm(bytes).unwrap().blocks
    }

    /// Offsets to cut a file whose last flush left `flushed` bytes and which grew to `full`:
    /// evenly spread ones plus the ends of the file and points inside the last cluster header.
    fn cut_points(full: &[u8], flushed: usize) -> Vec<usize> {
        let span = full.len() - flushed;
        let mut cuts: Vec<usize> = (1..8).map(|k| flushed + span * k / 8).collect();
        cuts.extend([full.len() - 1, full.len() - 3, flushed + 1]);
        let cluster = full
            .windows(4)
            .rposition(|w| w == CLUSTER_ID.to_be_bytes())
            .unwrap();
        if cluster > flushed {
            cuts.extend([2, 5, 12, 13, 15, 17, 20].map(|d| cluster + d));
        }
        cuts.retain(|c| *c > flushed && *c < full.len());
        cuts.sort_unstable();
        cuts.dedup();
        cuts
    }

    #[test]
    fn killed_webm_files_are_repaired() {
        let dir = tempfile::tempdir().unwrap();
        for (name, video, audio) in [
            ("av", true, true),
            ("video", true, false),
            ("audio", false, true),
        ] {
            let (tracks, frames) = av_frames(video, audio);
            let (a, b) = (frames.len() * 2 / 5, frames.len() * 3 / 4);
            let path = dir.path().join(format!("{name}.webm"));
            let snaps = write_killed(&path, &tracks, &frames, &[a, b]);
            let (first, second) = (&snaps[0], &snaps[1]);
            let first_blocks = blocks_of(first);
            assert_eq!(first_blocks.len(), a + 1);

            let mut copies: Vec<(String, Vec<u8>, Vec<WebmBlock>)> = vec![
                ("flush1".into(), first.clone(), first_blocks.clone()),
                ("flush2".into(), second.clone(), blocks_of(second)),
            ];
            for cut in cut_points(second, first.len()) {
                copies.push((
                    format!("cut{cut}"),
                    second[..cut].to_vec(),
                    first_blocks.clone(),
                ));
            }
            for (label, bytes, must_have) in copies {
                let copy = dir.path().join(format!("{name}-{label}.webm"));
                std::fs::write(&copy, &bytes).unwrap();
                let outcome = repair_webm(&copy).unwrap_or_else(|e| panic!("{name} {label}: {e}"));
                let RepairOutcome::Repaired {
                    truncated_bytes,
                    duration_ms,
                    cues,
                } = outcome
                else {
                    panic!("{name} {label}: {outcome:?}");
                };
                let info = check_repaired_webm(&copy, &must_have);
                assert_eq!(cues, info.cues.len());
                assert_eq!(Some(duration_ms as f64), info.duration_ms);
                // Only a partial element was cut: every complete block stayed.
                let len = std::fs::metadata(&copy).unwrap().len();
                assert!(
                    truncated_bytes < 32 * 1024,
                    "{label}: cut {truncated_bytes}"
                );
                assert!(len + truncated_bytes >= bytes.len() as u64);
                if label.starts_with("flush") {
                    assert_eq!(truncated_bytes, 0);
                    assert_eq!(info.blocks.len(), must_have.len());
                }
            }
        }
    }

    /// Every possible cut of a small killed file either repairs into a valid file holding a
    /// prefix of the blocks, or (cut inside the headers) is NotRepairable and left unchanged.
    #[test]
    fn every_cut_repairs_or_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (tracks, frames) = av_frames(true, true);
        let frames = &frames[..80];
        let path = dir.path().join("src.webm");
        let snap = write_killed(&path, &tracks, frames, &[frames.len() - 1]).remove(0);
        let all = blocks_of(&snap);
        let copy = dir.path().join("cut.webm");
        let mut repaired = 0;
        for cut in (0..=snap.len())
            .step_by(97)
            .chain(snap.len() - 40..snap.len())
        {
            std::fs::write(&copy, &snap[..cut]).unwrap();
            match repair_webm(&copy) {
                Ok(RepairOutcome::Repaired { .. }) => {
                    repaired += 1;
                    let bytes = std::fs::read(&copy).unwrap();
                    let info = read_webm(&bytes[..]).unwrap();
                    assert!(info.segment_size_known, "cut {cut}");
                    assert_eq!(&all[..info.blocks.len()], &info.blocks[..], "cut {cut}");
                    assert_eq!(repair_webm(&copy).unwrap(), RepairOutcome::AlreadyFinal);
                    assert_eq!(std::fs::read(&copy).unwrap(), bytes);
                }
                Ok(RepairOutcome::AlreadyFinal) => panic!("cut {cut}: nothing done"),
                Err(RepairError::NotRepairable(_)) => {
                    assert_eq!(std::fs::read(&copy).unwrap(), &snap[..cut], "cut {cut}");
                }
                Err(e) => panic!("cut {cut}: {e}"),
            }
        }
        assert!(repaired > 100);
    }

    #[test]
    fn finalized_webm_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (tracks, frames) = av_frames(true, true);
        let path = dir.path().join("final.webm");
        let mut w = WebmWriter::new(File::create(&path).unwrap(), &tracks).unwrap();
        for (track, ts, key, data) in &frames {
            w.write_frame(*track, *ts, *key, data).unwrap();
        }
        w.finalize(5_000).unwrap();
        let before = std::fs::read(&path).unwrap();
        assert_eq!(repair_webm(&path).unwrap(), RepairOutcome::AlreadyFinal);
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    /// A WebM killed after the header (no frame yet) still gets a valid, final layout.
    #[test]
    fn webm_without_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.webm");
        let mut w = WebmWriter::new(File::create(&path).unwrap(), &[video_track()]).unwrap();
        w.flush().unwrap();
        let outcome = repair_webm(&path).unwrap();
        assert!(
            matches!(outcome, RepairOutcome::Repaired { cues: 0, .. }),
            "{outcome:?}"
        );
        let info = read_webm(File::open(&path).unwrap()).unwrap();
        assert!(info.segment_size_known && info.has_seekhead);
        assert_eq!(repair_webm(&path).unwrap(), RepairOutcome::AlreadyFinal);
        drop(w);
    }

    fn garbage_inputs() -> Vec<(&'static str, Vec<u8>)> {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        };
        let mut ebml_then_noise = vec![0x1A, 0x45, 0xDF, 0xA3, 0x80, 0x18, 0x53, 0x80, 0x67, 0xFF];
        ebml_then_noise.extend(noise(500));
        let mut ogg_then_noise = b"OggS\0".to_vec();
        ogg_then_noise.extend(noise(500));
        vec![
            ("empty", Vec::new()),
            ("short", b"hi".to_vec()),
            ("text", b"this is not a media file at all\n".to_vec()),
            ("noise", noise(4000)),
            ("ebml-noise", ebml_then_noise),
            ("ogg-noise", ogg_then_noise),
        ]
    }

    #[test]
    fn garbage_is_not_repairable_and_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in garbage_inputs() {
            for ext in ["webm", "ogg"] {
                let path = dir.path().join(format!("{name}.{ext}"));
                std::fs::write(&path, &bytes).unwrap();
                let result = if ext == "webm" {
                    repair_webm(&path)
                } else {
                    repair_ogg(&path)
                };
                assert!(
                    matches!(result, Err(RepairError::NotRepairable(_))),
                    "{name}.{ext}: {result:?}"
                );
                assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name}.{ext}");
            }
        }
        // A real file with a corrupted byte in the middle of its clusters: refused, not cut.
        let (tracks, frames) = av_frames(true, false);
        let path = dir.path().join("corrupt.webm");
        let mut bytes = write_killed(&path, &tracks, &frames, &[60]).remove(0);
        let cluster = bytes
            .windows(4)
            .position(|w| w == CLUSTER_ID.to_be_bytes())
            .unwrap();
        let Head::Element(h) = parse_header(&bytes[cluster..]) else {
            panic!()
        };
        let at = cluster + h.len as usize + h.size.unwrap() as usize + 300;
        let next = bytes[at..]
            .windows(4)
            .position(|w| w == CLUSTER_ID.to_be_bytes())
            .unwrap();
        bytes[at + next] = 0x00; // breaks the second cluster's ID
        std::fs::write(&path, &bytes).unwrap();
        let result = repair_webm(&path);
        assert!(
            matches!(result, Err(RepairError::NotRepairable(_))),
            "{result:?}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert!(matches!(
            repair_webm(&dir.path().join("missing.webm")),
            Err(RepairError::Io(_))
        ));
    }

    /// Writes the tone's packets (20 ms each) with the real Ogg writer, flushing and copying
    /// the file after each index in `flush_after`.
    pub(crate) fn write_killed_ogg(path: &Path, flush_after: &[usize]) -> Vec<Vec<u8>> {
        let (channels, pre_skip, packets) = opus_clip();
        let out = std::io::BufWriter::new(File::create(path).unwrap());
        let mut w = OggOpusWriter::new(out, 7, channels, pre_skip).unwrap();
        let mut snapshots = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            w.write_packet(p, i as u64 * 960).unwrap();
            if flush_after.contains(&i) {
                w.flush().unwrap();
                snapshots.push(std::fs::read(path).unwrap());
            }
        }
        snapshots
    }

    #[test]
    fn killed_ogg_files_are_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.ogg");
        let snaps = write_killed_ogg(&path, &[90, 180]);
        let (first, second) = (&snaps[0], &snaps[1]);
        let first_info = read_ogg_opus(std::io::Cursor::new(first)).unwrap();
        assert!(!first_info.eos);
        assert_eq!(first_info.packets.len(), 91);
        let mut copies = vec![first.clone(), second.clone()];
        let span = second.len() - first.len();
        for k in 1..10 {
            copies.push(second[..first.len() + span * k / 10].to_vec());
        }
        copies.push(second[..first.len() + 3].to_vec());
        copies.push(second[..first.len() + 30].to_vec());
        copies.push(second[..second.len() - 1].to_vec());
        for (i, bytes) in copies.iter().enumerate() {
            let copy = dir.path().join(format!("copy{i}.ogg"));
            std::fs::write(&copy, bytes).unwrap();
            let outcome = repair_ogg(&copy).unwrap();
            let RepairOutcome::Repaired {
                truncated_bytes,
                duration_ms,
                cues: 0,
            } = outcome
            else {
                panic!("copy {i}: {outcome:?}");
            };
            let repaired = std::fs::read(&copy).unwrap();
            assert_eq!(repaired.len() as u64 + truncated_bytes, bytes.len() as u64);
            let info = read_ogg_opus(std::io::Cursor::new(&repaired)).unwrap();
            assert!(info.eos && !info.truncated, "copy {i}");
            assert_eq!(&info.packets[..91], &first_info.packets[..]);
            let granule = info.final_granule.unwrap();
            assert_eq!(
                granule,
                info.packets
                    .iter()
                    .map(|p| u64::from(p.samples))
                    .sum::<u64>()
            );
            assert_eq!(duration_ms, (granule - u64::from(info.pre_skip)) / 48);
            if let Some(probed) = ffmpeg_clean(&copy) {
                let expected = (granule - u64::from(info.pre_skip)) as f64 / 48_000.0;
                assert!((probed - expected).abs() < 0.03, "{probed} vs {expected}");
            }
            assert_eq!(repair_ogg(&copy).unwrap(), RepairOutcome::AlreadyFinal);
            assert_eq!(std::fs::read(&copy).unwrap(), repaired);
        }

        // A finalized file is left alone.
        let (channels, pre_skip, packets) = opus_clip();
        let done = dir.path().join("done.ogg");
        let mut w =
            OggOpusWriter::new(File::create(&done).unwrap(), 1, channels, pre_skip).unwrap();
        for (i, p) in packets.iter().enumerate() {
            w.write_packet(p, i as u64 * 960).unwrap();
        }
        w.finalize(None).unwrap();
        let before = std::fs::read(&done).unwrap();
        assert_eq!(repair_ogg(&done).unwrap(), RepairOutcome::AlreadyFinal);
        assert_eq!(std::fs::read(&done).unwrap(), before);
    }

    /// Every cut of a killed Ogg file repairs into a stream with EOS, or is refused unchanged.
    #[test]
    fn every_ogg_cut_repairs_or_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("src.ogg");
        let snap = write_killed_ogg(&path, &[120]).remove(0);
        let all = read_ogg_opus(std::io::Cursor::new(&snap)).unwrap().packets;
        let copy = dir.path().join("cut.ogg");
        let mut repaired = 0;
        for cut in (0..=snap.len()).step_by(37) {
            std::fs::write(&copy, &snap[..cut]).unwrap();
            match repair_ogg(&copy) {
                Ok(RepairOutcome::Repaired { .. }) => {
                    repaired += 1;
                    let info = read_ogg_opus(File::open(&copy).unwrap()).unwrap();
                    assert!(info.eos && !info.truncated, "cut {cut}");
                    assert_eq!(&all[..info.packets.len()], &info.packets[..]);
                    assert_eq!(repair_ogg(&copy).unwrap(), RepairOutcome::AlreadyFinal);
                }
                Ok(RepairOutcome::AlreadyFinal) => panic!("cut {cut}: nothing done"),
                Err(RepairError::NotRepairable(_)) => {
                    assert_eq!(std::fs::read(&copy).unwrap(), &snap[..cut], "cut {cut}");
                }
                Err(e) => panic!("cut {cut}: {e}"),
            }
        }
        assert!(repaired > 50);
    }

    #[test]
    fn repairs_a_recording_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (tracks, frames) = av_frames(true, false);
        write_killed(
            &dir.path().join("alice-video-1.webm"),
            &tracks,
            &frames,
            &[40],
        );
        write_killed_ogg(&dir.path().join("alice-audio-1.ogg"), &[40]);
        std::fs::write(dir.path().join("manifest.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("junk.webm"), b"junk").unwrap();
        let results = repair_dir(dir.path());
        let names: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["alice-audio-1.ogg", "alice-video-1.webm", "junk.webm"]
        );
        assert!(matches!(results[0].1, Ok(RepairOutcome::Repaired { .. })));
        assert!(matches!(results[1].1, Ok(RepairOutcome::Repaired { .. })));
        assert!(matches!(results[2].1, Err(RepairError::NotRepairable(_))));
        let again = repair_dir(dir.path());
        assert!(matches!(again[0].1, Ok(RepairOutcome::AlreadyFinal)));
        assert!(matches!(again[1].1, Ok(RepairOutcome::AlreadyFinal)));
        let missing = repair_dir(&dir.path().join("nope"));
        assert!(matches!(missing[..], [(_, Err(RepairError::Io(_)))]));
    }

    /// Frames for the byte-for-byte checks: 12 s of VP8-shaped video (30 fps, keyframe every
    /// 2 s, 3 clusters) and 20 ms audio packets, with deterministic varied lengths.
    fn golden_frames() -> (Vec<WebmTrack>, Vec<Frame>) {
        let mut frames: Vec<Frame> = Vec::new();
        for i in 0..360u64 {
            let key = i % 60 == 0;
            let mut data = if key {
                vec![0x50, 0x01, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]
            } else {
                vec![0x51, 0x01, 0x00]
            };
            data.extend((0..(i * 7 % 23)).map(|k| (i + k) as u8));
            frames.push((1, i * 100 / 3, key, data));
        }
        for j in 0..600u64 {
            let mut data = vec![0xfc];
            data.extend((0..(j * 5 % 11)).map(|k| (j ^ k) as u8));
            frames.push((2, j * 20, false, data));
        }
        frames.sort_by_key(|f| (f.1, f.0));
        (vec![video_track(), audio_track(2, 312)], frames)
    }

    use crate::record::test_tools::same_as_golden;

    /// The files the writer and the repair produce stay byte-identical (the EBML encoding is
    /// shared by both and refactored under this check): a finalized file, and a file killed
    /// after a flush and cut inside a block, then repaired.
    #[test]
    fn writer_and_repair_bytes_are_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (tracks, frames) = golden_frames();
        let path = dir.path().join("final.webm");
        let mut w = WebmWriter::new(File::create(&path).unwrap(), &tracks).unwrap();
        for (track, ts, key, data) in &frames {
            w.write_frame(*track, *ts, *key, data).unwrap();
        }
        w.finalize(12_000).unwrap();
        same_as_golden("writer.webm", &std::fs::read(&path).unwrap());

        let killed = dir.path().join("killed.webm");
        let snaps = write_killed(&killed, &tracks, &frames, &[frames.len() * 3 / 4]);
        let cut = &snaps[0][..snaps[0].len() - 5];
        std::fs::write(&killed, cut).unwrap();
        let outcome = repair_webm(&killed).unwrap();
        assert!(
            matches!(outcome, RepairOutcome::Repaired { .. }),
            "{outcome:?}"
        );
        same_as_golden("repaired.webm", &std::fs::read(&killed).unwrap());
    }
}
