//! EBML (RFC 8794) and Matroska/WebM building blocks shared by the WebM writer, the reader,
//! the repair and `inspect`: element IDs, variable-length integers, size fields, element
//! headers, and the encodings of Cues, SeekHead and Void. Pure: bytes in, values out, never
//! a panic on any input.
//!
//! IDs keep their marker bits (as written in files: `0x1A45DFA3`); sizes and other vints do
//! not. A size field of `len` bytes holds values below `2^(7·len) - 1`; the all-ones value is
//! reserved for "unknown size".

use webm_iterable::errors::TagWriterError;
use webm_iterable::matroska_spec::{Master, MatroskaSpec};
use webm_iterable::WebmWriter as EbmlWriter;

/// EBML header.
pub const EBML_ID: u32 = 0x1A45_DFA3;
/// Segment: the one top-level element after the EBML header.
pub const SEGMENT_ID: u32 = 0x1853_8067;
/// SeekHead (index of level-1 elements).
pub const SEEKHEAD_ID: u32 = 0x114D_9B74;
/// Seek (one SeekHead entry).
pub const SEEK_ID: u32 = 0x4DBB;
/// SeekID (the indexed element's ID).
pub const SEEK_ID_ID: u32 = 0x53AB;
/// SeekPosition (relative to the Segment data).
pub const SEEK_POSITION_ID: u32 = 0x53AC;
/// Info.
pub const INFO_ID: u32 = 0x1549_A966;
/// Tracks.
pub const TRACKS_ID: u32 = 0x1654_AE6B;
/// Cluster.
pub const CLUSTER_ID: u32 = 0x1F43_B675;
/// Cues.
pub const CUES_ID: u32 = 0x1C53_BB6B;
/// Tags.
pub const TAGS_ID: u32 = 0x1254_C367;
/// Chapters.
pub const CHAPTERS_ID: u32 = 0x1043_A770;
/// Attachments.
pub const ATTACHMENTS_ID: u32 = 0x1941_A469;
/// Void (padding; global).
pub const VOID_ID: u32 = 0xEC;
/// CRC-32 (global).
pub const CRC32_ID: u32 = 0xBF;
/// Info/Duration (float, TimestampScale units).
pub const DURATION_ID: u32 = 0x4489;
/// Info/TimestampScale (ns per timestamp unit).
pub const TIMESTAMP_SCALE_ID: u32 = 0x2A_D7B1;
/// Cluster/Timestamp.
pub const TIMESTAMP_ID: u32 = 0xE7;
/// SimpleBlock.
pub const SIMPLEBLOCK_ID: u32 = 0xA3;
/// BlockGroup.
pub const BLOCKGROUP_ID: u32 = 0xA0;
/// Cluster children other than Timestamp and blocks: Position, PrevSize, SilentTracks,
/// EncryptedBlock (plus the global Void and CRC-32).
pub const OTHER_CLUSTER_CHILDREN: [u32; 6] = [0xA7, 0xAB, 0x5854, 0xAF, VOID_ID, CRC32_ID];
/// Level-1 elements: inside an unknown-size Cluster one of them ends the cluster.
pub const SEGMENT_CHILDREN: [u32; 8] = [
    SEEKHEAD_ID,
    INFO_ID,
    TRACKS_ID,
    CLUSTER_ID,
    CUES_ID,
    TAGS_ID,
    CHAPTERS_ID,
    ATTACHMENTS_ID,
];
/// Largest EBML header accepted by the reader and the repair.
pub const MAX_EBML_HEADER: u64 = 4096;

/// Length in bytes (1..=8) of the vint whose first byte is `first`, from its marker bit; 9
/// for a zero byte (no marker: not a valid vint).
pub fn vint_len(first: u8) -> usize {
    first.leading_zeros() as usize + 1
}

/// Reads a variable-length integer at the start of `data` (marker bit removed): (value,
/// length in bytes 1..=8), or `None` when `data` is short or starts with a zero byte.
pub fn read_vint(data: &[u8]) -> Option<(u64, usize)> {
    let first = *data.first()?;
    let len = vint_len(first);
    if len > 8 {
        return None;
    }
    let bytes = data.get(..len)?;
    let mut value = u64::from(first) & (0xFF >> len);
    for b in &bytes[1..] {
        value = (value << 8) | u64::from(*b);
    }
    Some((value, len))
}

/// Reads an element ID at the start of `data` (marker bit kept): (ID, length 1..=4), or
/// `None` when `data` is short or the ID is longer than 4 bytes (WebM's EBMLMaxIDLength).
pub fn read_id(data: &[u8]) -> Option<(u32, usize)> {
    let (_, len) = read_vint(data)?;
    if len > 4 {
        return None;
    }
    let id = data[..len] // ok: read_vint checked len <= data.len()
        .iter()
        .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
    Some((id, len))
}

/// The value of an all-ones ("unknown") size field of `len` bytes (1..=8).
pub fn unknown_size(len: usize) -> u64 {
    (1u64 << (7 * len.clamp(1, 8) as u32)) - 1
}

/// A size field of exactly `len` bytes holding `value`, or `None` when `len` is not in 1..=8
/// or `value` does not fit (the all-ones value is reserved for "unknown").
pub fn size_field(value: u64, len: u8) -> Option<Vec<u8>> {
    if !(1..=8).contains(&len) || value >= unknown_size(usize::from(len)) {
        return None;
    }
    let bytes = value.to_be_bytes();
    let mut out = bytes[8 - usize::from(len)..].to_vec();
    out[0] |= 0x80 >> (len - 1);
    Some(out)
}

/// An element header (ID and size field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The element ID (marker bit kept).
    pub id: u32,
    /// The size of the data; `None` for the reserved "unknown" value.
    pub size: Option<u64>,
    /// Length of the size field (1..=8).
    pub size_len: u8,
    /// Bytes of ID + size field.
    pub len: u64,
}

/// Result of decoding an element header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// A complete header.
    Element(Header),
    /// The input ends inside the header.
    Incomplete,
    /// Not a valid header (ID longer than 4 bytes, or size field longer than 8).
    Invalid,
}

/// Decodes the element header at the start of `buf` (which may be short).
pub fn parse_header(buf: &[u8]) -> Head {
    let Some(&first) = buf.first() else {
        return Head::Incomplete;
    };
    let id_len = vint_len(first);
    if id_len > 4 {
        return Head::Invalid;
    }
    let Some(&size_first) = buf.get(id_len) else {
        return Head::Incomplete;
    };
    let size_len = vint_len(size_first);
    if size_len > 8 {
        return Head::Invalid;
    }
    let (Some((id, _)), Some((size, _))) = (read_id(buf), read_vint(&buf[id_len..])) else {
        return Head::Incomplete;
    };
    Head::Element(Header {
        id,
        size: (size != unknown_size(size_len)).then_some(size),
        size_len: size_len as u8, // ok: size_len <= 8
        len: (id_len + size_len) as u64,
    })
}

/// A Void element of exactly `total` bytes (`None` below 2 bytes), with the shortest size
/// field that works.
pub fn void_element(total: u64) -> Option<Vec<u8>> {
    (1..=8u8).find_map(|len| {
        let data = total.checked_sub(1 + u64::from(len))?;
        let mut out = vec![VOID_ID as u8]; // ok: a 1-byte ID
        out.extend(size_field(data, len)?);
        out.resize(usize::try_from(total).ok()?, 0);
        Some(out)
    })
}

/// A SeekHead with fixed-width fields (4-byte SeekID, 8-byte SeekPosition) for `entries`
/// (ID, position relative to the Segment data) followed by a Void, together exactly `total`
/// bytes long; `None` if it does not fit. Used to fill a reserved Void in place.
pub fn seekhead_in(entries: &[(u32, u64)], total: u64) -> Option<Vec<u8>> {
    let mut seeks = Vec::new();
    for (id, pos) in entries {
        seeks.extend(SEEK_ID.to_be_bytes()[2..].iter().chain(&[0x80 | 18]));
        seeks.extend(SEEK_ID_ID.to_be_bytes()[2..].iter().chain(&[0x84]));
        seeks.extend(id.to_be_bytes());
        seeks.extend(SEEK_POSITION_ID.to_be_bytes()[2..].iter().chain(&[0x88]));
        seeks.extend(pos.to_be_bytes());
    }
    // A 1-byte gap cannot hold a Void: then widen the SeekHead's size field by one byte.
    for size_len in [1u8, 2] {
        let mut out = SEEKHEAD_ID.to_be_bytes().to_vec();
        out.extend(size_field(seeks.len() as u64, size_len)?);
        out.extend(&seeks);
        let rest = total.checked_sub(out.len() as u64)?;
        match rest {
            0 => return Some(out),
            1 => continue,
            _ => {
                out.extend(void_element(rest)?);
                return Some(out);
            }
        }
    }
    None
}

/// A SeekHead element for the EBML encoder (its shortest encoding): one Seek per (ID,
/// position relative to the Segment data).
pub fn seekhead_element(entries: &[(u32, u64)]) -> MatroskaSpec {
    MatroskaSpec::SeekHead(Master::Full(
        entries
            .iter()
            .map(|&(id, pos)| {
                MatroskaSpec::Seek(Master::Full(vec![
                    MatroskaSpec::SeekID(id.to_be_bytes().to_vec()),
                    MatroskaSpec::SeekPosition(pos),
                ]))
            })
            .collect(),
    ))
}

/// One CuePoint: a seek target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CuePoint {
    /// Time in TimestampScale units.
    pub time: u64,
    /// The track the point is for.
    pub track: u64,
    /// Position of the cluster, relative to the Segment data.
    pub position: u64,
}

/// A Cues element with one CuePoint per entry, for the EBML encoder.
pub fn cues_element(cues: &[CuePoint]) -> MatroskaSpec {
    MatroskaSpec::Cues(Master::Full(cues.iter().map(cue_point).collect()))
}

fn cue_point(cue: &CuePoint) -> MatroskaSpec {
    MatroskaSpec::CuePoint(Master::Full(vec![
        MatroskaSpec::CueTime(cue.time),
        MatroskaSpec::CueTrackPositions(Master::Full(vec![
            MatroskaSpec::CueTrack(cue.track),
            MatroskaSpec::CueClusterPosition(cue.position),
        ])),
    ]))
}

/// Why [`cues_bytes`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The EBML encoder refused an element.
    #[error("{0}")]
    Ebml(#[from] TagWriterError),
    /// The encoder's output did not have the expected shape.
    #[error("Cues not encoded as expected")]
    Unexpected,
}

/// The bytes of a Cues element with one CuePoint per entry (same encoding as
/// [`cues_element`] written by the EBML encoder).
pub fn cues_bytes(cues: &[CuePoint]) -> Result<Vec<u8>, EncodeError> {
    let mut w = EbmlWriter::new(Vec::new());
    // The encoder checks the element hierarchy, so Cues must sit in a Segment: open one of
    // unknown size and strip its header from the output.
    w.write_advanced(
        &MatroskaSpec::Segment(Master::Start),
        webm_iterable::WriteOptions::is_unknown_sized_element(),
    )?;
    w.write(&MatroskaSpec::Cues(Master::Start))?;
    for cue in cues {
        w.write(&cue_point(cue))?;
    }
    w.write(&MatroskaSpec::Cues(Master::End))?;
    let bytes = w.into_inner()?;
    let Head::Element(h) = parse_header(&bytes) else {
        return Err(EncodeError::Unexpected);
    };
    let cues = bytes.get(h.len as usize..).unwrap_or(&[]); // ok: len <= 12
    match (h.id, parse_header(cues)) {
        (SEGMENT_ID, Head::Element(c)) if c.id == CUES_ID => Ok(cues.to_vec()),
        _ => Err(EncodeError::Unexpected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vint_round_trips_at_every_length_and_edge() {
        for len in 1..=8u8 {
            let max = unknown_size(usize::from(len)) - 1;
            for value in [0, 1, max / 2, max - 1, max] {
                let field = size_field(value, len).unwrap();
                assert_eq!(field.len(), usize::from(len));
                assert_eq!(read_vint(&field), Some((value, usize::from(len))));
                // The marker bit is where the length says.
                assert_eq!(field[0].leading_zeros() + 1, u32::from(len));
            }
            // The all-ones value is reserved ("unknown") and anything larger does not fit.
            assert_eq!(size_field(max + 1, len), None);
            assert_eq!(size_field(u64::MAX, len), None);
        }
        assert_eq!(size_field(0, 0), None);
        assert_eq!(size_field(0, 9), None);
        assert_eq!(size_field(127, 1), None);
        assert_eq!(size_field(126, 1), Some(vec![0xFE]));
        assert_eq!(size_field(127, 2), Some(vec![0x40, 0x7F]));
        assert_eq!(size_field(5, 8), Some(vec![1, 0, 0, 0, 0, 0, 0, 5]));
        assert_eq!(unknown_size(1), 0x7F);
        assert_eq!((vint_len(0x80), vint_len(0x01), vint_len(0x00)), (1, 8, 9));
        assert_eq!(unknown_size(8), (1 << 56) - 1);
    }

    #[test]
    fn vint_refuses_short_and_zero_input() {
        assert_eq!(read_vint(&[]), None);
        assert_eq!(read_vint(&[0x00, 0xFF]), None); // no marker in the first byte
        assert_eq!(read_vint(&[0x40]), None); // 2-byte vint cut short
        assert_eq!(read_vint(&[0x01; 7]), None); // 8-byte vint cut short
        assert_eq!(read_vint(&[0xFF]), Some((0x7F, 1)));
        assert_eq!(read_vint(&[0x81, 0xAA]), Some((1, 1)));
    }

    #[test]
    fn ids_keep_their_marker_and_are_at_most_4_bytes() {
        for id in [
            EBML_ID,
            SEGMENT_ID,
            CLUSTER_ID,
            DURATION_ID,
            VOID_ID,
            TIMESTAMP_SCALE_ID,
        ] {
            let bytes = id.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            assert_eq!(read_id(&bytes[skip..]), Some((id, 4 - skip)));
        }
        assert_eq!(read_id(&[0x08, 1, 2, 3, 4]), None); // 5-byte ID
        assert_eq!(read_id(&[0x1A, 0x45]), None);
    }

    #[test]
    fn headers_decode_known_unknown_short_and_invalid() {
        let mut known = CLUSTER_ID.to_be_bytes().to_vec();
        known.extend(size_field(300, 8).unwrap());
        let h = Header {
            id: CLUSTER_ID,
            size: Some(300),
            size_len: 8,
            len: 12,
        };
        assert_eq!(parse_header(&known), Head::Element(h));
        for cut in 0..known.len() {
            assert_eq!(parse_header(&known[..cut]), Head::Incomplete, "cut {cut}");
        }
        let unknown = [
            0x1F, 0x43, 0xB6, 0x75, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        assert!(matches!(parse_header(&unknown), Head::Element(h) if h.size.is_none()));
        assert_eq!(
            parse_header(&[0xEC, 0xFF]),
            Head::Element(Header {
                id: VOID_ID,
                size: None,
                size_len: 1,
                len: 2
            })
        );
        assert_eq!(parse_header(&[0x08, 0, 0, 0, 0, 0x81]), Head::Invalid);
        assert_eq!(
            parse_header(&[0xEC, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]),
            Head::Invalid
        );
    }

    #[test]
    fn voids_have_the_exact_length() {
        assert_eq!(void_element(0), None);
        assert_eq!(void_element(1), None);
        assert_eq!(void_element(2), Some(vec![0xEC, 0x80]));
        for total in [2u64, 3, 128, 129, 130, 16_385, 70_000] {
            let v = void_element(total).unwrap();
            assert_eq!(v.len() as u64, total);
            let Head::Element(h) = parse_header(&v) else {
                panic!("{total}")
            };
            assert_eq!((h.id, h.len + h.size.unwrap()), (VOID_ID, total));
        }
    }

    #[test]
    fn seekhead_fits_any_reservation() {
        let entries = [(INFO_ID, 96), (TRACKS_ID, 200), (CUES_ID, 123_456)];
        assert!(seekhead_in(&entries, 67).is_none());
        for total in 68..400u64 {
            let bytes = seekhead_in(&entries, total).unwrap();
            assert_eq!(bytes.len() as u64, total);
            let Head::Element(h) = parse_header(&bytes) else {
                panic!()
            };
            assert_eq!(h.id, SEEKHEAD_ID);
            let rest = (h.len + h.size.unwrap()) as usize;
            if rest < bytes.len() {
                let Head::Element(v) = parse_header(&bytes[rest..]) else {
                    panic!()
                };
                assert_eq!(
                    (v.id, rest as u64 + v.len + v.size.unwrap()),
                    (VOID_ID, total)
                );
            }
        }
    }

    /// The SeekHead filled in place and the encoder's SeekHead index the same elements:
    /// both read back (by the WebM reader) to the same entries.
    #[test]
    fn seekheads_and_cues_read_back() {
        use webm_iterable::WebmIterator;
        let entries = [(INFO_ID, 96), (TRACKS_ID, 200), (CUES_ID, 123_456)];
        // Both inside an unknown-size Segment (the encoder and the iterator check the
        // hierarchy).
        let mut encoded = EbmlWriter::new(Vec::new());
        encoded
            .write_advanced(
                &MatroskaSpec::Segment(Master::Start),
                webm_iterable::WriteOptions::is_unknown_sized_element(),
            )
            .unwrap();
        let segment_header = encoded.get_ref().clone();
        encoded.write(&seekhead_element(&entries)).unwrap();
        let encoded = encoded.into_inner().unwrap();
        let mut in_place = segment_header;
        in_place.extend(seekhead_in(&entries, 96).unwrap());
        for bytes in [encoded, in_place] {
            let mut seen = Vec::new();
            let mut id = None;
            for tag in WebmIterator::new(&bytes[..], &[]) {
                match tag.unwrap() {
                    MatroskaSpec::SeekID(v) => id = read_id(&v).map(|(id, _)| id),
                    MatroskaSpec::SeekPosition(p) => seen.push((id.take().unwrap(), p)),
                    _ => {}
                }
            }
            assert_eq!(seen, entries);
        }

        let cues = [
            CuePoint {
                time: 0,
                track: 1,
                position: 150,
            },
            CuePoint {
                time: 70_000,
                track: 1,
                position: 1 << 40,
            },
        ];
        let bytes = cues_bytes(&cues).unwrap();
        let Head::Element(h) = parse_header(&bytes) else {
            panic!()
        };
        assert_eq!(
            (h.id, h.len + h.size.unwrap()),
            (CUES_ID, bytes.len() as u64)
        );
        let mut seen = Vec::new();
        for tag in WebmIterator::new(&bytes[..], &[]) {
            match tag.unwrap() {
                MatroskaSpec::CueTime(t) => seen.push(vec![t]),
                MatroskaSpec::CueTrack(t) | MatroskaSpec::CueClusterPosition(t) => {
                    seen.last_mut().unwrap().push(t)
                }
                _ => {}
            }
        }
        assert_eq!(seen, [[0, 1, 150], [70_000, 1, 1 << 40]]);
        let empty = cues_bytes(&[]).unwrap();
        assert_eq!(
            parse_header(&empty),
            Head::Element(Header {
                id: CUES_ID,
                size: Some(0),
                size_len: 1,
                len: 5
            })
        );
    }
}
