//! IVF file reader (the simple container libvpx and ffmpeg write VP8 into).
//!
//! Layout (all little-endian): a 32-byte file header — `DKIF`, version (u16), header
//! length (u16), FourCC, width (u16), height (u16), time base denominator (u32), time
//! base numerator (u32), frame count (u32), unused (u32) — then per frame a 12-byte header
//! (frame size u32, pts u64) and the frame bytes.

use std::io::{self, Read};
use std::time::Duration;

/// Frames larger than this are refused (no allocation is attempted).
pub const MAX_FRAME_SIZE: u32 = 16 << 20;

/// Size of the fixed part of the file header.
const FILE_HEADER_LEN: usize = 32;
/// Size of a frame header.
const FRAME_HEADER_LEN: usize = 12;

/// Why an IVF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IvfError {
    /// The underlying reader failed.
    #[error("reading IVF: {0}")]
    Io(#[from] io::Error),
    /// The file does not start with `DKIF`.
    #[error("not an IVF file (no DKIF signature)")]
    BadSignature,
    /// The header-length field is smaller than the 32-byte fixed header.
    #[error("IVF header length {0} is below 32")]
    BadHeaderLength(u16),
    /// The file ends inside its file header.
    #[error("IVF file header truncated")]
    TruncatedHeader,
    /// The file ends inside a frame header or frame.
    #[error("IVF frame truncated: {got} of {expected} bytes")]
    TruncatedFrame {
        /// Bytes the frame (or frame header) should have.
        expected: u64,
        /// Bytes actually there.
        got: u64,
    },
    /// A frame claims more than [`MAX_FRAME_SIZE`] bytes.
    #[error("IVF frame of {0} bytes exceeds the limit")]
    FrameTooLarge(u32),
}

/// The IVF file header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvfHeader {
    /// Codec FourCC, e.g. `*b"VP80"`.
    pub fourcc: [u8; 4],
    /// Frame width in pixels.
    pub width: u16,
    /// Frame height in pixels.
    pub height: u16,
    /// Time base denominator (ticks per `timebase_num` seconds; 30 for ffmpeg's 30 fps).
    pub timebase_den: u32,
    /// Time base numerator.
    pub timebase_num: u32,
    /// Frame count as written by the muxer (may be 0 or wrong in files not finalised).
    pub frame_count: u32,
}

impl IvfHeader {
    /// `pts` as time from zero: a tick is `timebase_num / timebase_den` seconds. `None` when
    /// the denominator is 0 or the result does not fit a `Duration`.
    pub fn pts_to_duration(&self, pts: u64) -> Option<Duration> {
        if self.timebase_den == 0 {
            return None;
        }
        let nanos = u128::from(pts) * u128::from(self.timebase_num) * 1_000_000_000
            / u128::from(self.timebase_den);
        let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
        // Below 10^9: fits in u32.
        let sub = u32::try_from(nanos % 1_000_000_000).ok()?;
        Some(Duration::new(secs, sub))
    }
}

/// One frame of an IVF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvfFrame {
    /// Presentation timestamp in time-base ticks (see [`IvfHeader::pts_to_duration`]).
    pub pts: u64,
    /// The codec frame.
    pub data: Vec<u8>,
}

/// Reads IVF frames one by one from any [`Read`].
#[derive(Debug)]
pub struct IvfReader<R: Read> {
    reader: R,
}

impl<R: Read> IvfReader<R> {
    /// Reads and checks the file header.
    pub fn new(mut reader: R) -> Result<(Self, IvfHeader), IvfError> {
        let mut h = [0u8; FILE_HEADER_LEN];
        if read_full(&mut reader, &mut h)? < FILE_HEADER_LEN {
            return Err(IvfError::TruncatedHeader);
        }
        if &h[0..4] != b"DKIF" {
            return Err(IvfError::BadSignature);
        }
        let header_len = u16::from_le_bytes([h[6], h[7]]);
        if usize::from(header_len) < FILE_HEADER_LEN {
            return Err(IvfError::BadHeaderLength(header_len));
        }
        // Skip anything a longer header carries.
        let extra = u64::from(header_len) - FILE_HEADER_LEN as u64;
        if io::copy(&mut (&mut reader).take(extra), &mut io::sink())? < extra {
            return Err(IvfError::TruncatedHeader);
        }
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let header = IvfHeader {
            fourcc: [h[8], h[9], h[10], h[11]],
            width: u16::from_le_bytes([h[12], h[13]]),
            height: u16::from_le_bytes([h[14], h[15]]),
            timebase_den: u32_at(16),
            timebase_num: u32_at(20),
            frame_count: u32_at(24),
        };
        Ok((Self { reader }, header))
    }

    /// The next frame; `None` at a clean end of file (right after a frame).
    pub fn next_frame(&mut self) -> Result<Option<IvfFrame>, IvfError> {
        let mut h = [0u8; FRAME_HEADER_LEN];
        match read_full(&mut self.reader, &mut h)? {
            0 => return Ok(None),
            FRAME_HEADER_LEN => {}
            got => {
                return Err(IvfError::TruncatedFrame {
                    expected: FRAME_HEADER_LEN as u64,
                    got: got as u64,
                })
            }
        }
        let size = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        if size > MAX_FRAME_SIZE {
            return Err(IvfError::FrameTooLarge(size));
        }
        let pts = u64::from_le_bytes([h[4], h[5], h[6], h[7], h[8], h[9], h[10], h[11]]);
        // The buffer grows with the bytes actually read, so a lying size costs nothing.
        let mut data = Vec::new();
        let got = (&mut self.reader)
            .take(u64::from(size))
            .read_to_end(&mut data)?;
        if got < size as usize {
            return Err(IvfError::TruncatedFrame {
                expected: u64::from(size),
                got: got as u64,
            });
        }
        Ok(Some(IvfFrame { pts, data }))
    }
}

/// Fills `buf` as far as the reader allows; returns how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip() -> Vec<u8> {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/clip.ivf")).unwrap()
    }

    #[test]
    fn parses_clip() {
        let bytes = clip();
        let (mut r, h) = IvfReader::new(&bytes[..]).unwrap();
        assert_eq!(
            h,
            IvfHeader {
                fourcc: *b"VP80",
                width: 320,
                height: 240,
                timebase_den: 30,
                timebase_num: 1,
                frame_count: 150,
            }
        );
        let mut n = 0u64;
        while let Some(f) = r.next_frame().unwrap() {
            assert_eq!(f.pts, n);
            // Every 30th frame is a keyframe (P bit clear, start code present).
            assert_eq!(f.data[0] & 1 == 0, n.is_multiple_of(30), "frame {n}");
            if n.is_multiple_of(30) {
                assert_eq!(&f.data[3..6], &[0x9d, 0x01, 0x2a]);
            }
            n += 1;
        }
        assert_eq!(n, 150);
        assert_eq!(
            h.pts_to_duration(149),
            Some(Duration::from_nanos(4_966_666_666))
        );
        assert_eq!(h.pts_to_duration(30), Some(Duration::from_secs(1)));
    }

    #[test]
    fn small_clip() {
        let bytes =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/small.ivf")).unwrap();
        let (mut r, h) = IvfReader::new(&bytes[..]).unwrap();
        assert_eq!((h.width, h.height, h.frame_count), (160, 120, 30));
        let mut n = 0;
        while r.next_frame().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 30);
    }

    #[test]
    fn truncated_files_are_errors() {
        let bytes = clip();
        // Header cut short, at every length.
        for len in 0..FILE_HEADER_LEN {
            assert!(matches!(
                IvfReader::new(&bytes[..len]),
                Err(IvfError::TruncatedHeader)
            ));
        }
        // Cut inside the first frame header and inside the first frame.
        let first_size = u32::from_le_bytes([bytes[32], bytes[33], bytes[34], bytes[35]]) as usize;
        for len in [33, 43, 44, 45, 44 + first_size - 1] {
            let (mut r, _) = IvfReader::new(&bytes[..len]).unwrap();
            assert!(
                matches!(r.next_frame(), Err(IvfError::TruncatedFrame { .. })),
                "len {len}"
            );
        }
        // Exactly one frame: then a clean end.
        let (mut r, _) = IvfReader::new(&bytes[..44 + first_size]).unwrap();
        assert!(r.next_frame().unwrap().is_some());
        assert!(r.next_frame().unwrap().is_none());
        // Cut at every byte of the whole file: never a panic, always an error or clean end.
        for len in (0..bytes.len()).step_by(97) {
            if let Ok((mut r, _)) = IvfReader::new(&bytes[..len]) {
                while let Ok(Some(_)) = r.next_frame() {}
            }
        }
    }

    #[test]
    fn bad_headers_and_huge_frames() {
        let mut bytes = clip();
        bytes[0] = b'X';
        assert!(matches!(
            IvfReader::new(&bytes[..]),
            Err(IvfError::BadSignature)
        ));
        bytes[0] = b'D';
        bytes[6] = 8;
        assert!(matches!(
            IvfReader::new(&bytes[..]),
            Err(IvfError::BadHeaderLength(8))
        ));
        bytes[6] = 32;
        // A frame claiming 4 GiB.
        bytes[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        let (mut r, _) = IvfReader::new(&bytes[..]).unwrap();
        assert!(matches!(
            r.next_frame(),
            Err(IvfError::FrameTooLarge(u32::MAX))
        ));
        // One just under the cap but with only a few bytes behind it.
        bytes[32..36].copy_from_slice(&MAX_FRAME_SIZE.to_le_bytes());
        let (mut r, _) = IvfReader::new(&bytes[..100]).unwrap();
        assert!(matches!(
            r.next_frame(),
            Err(IvfError::TruncatedFrame { got: 56, .. })
        ));
        // A longer header is skipped.
        let mut long = clip();
        long[6] = 40;
        long.splice(32..32, [0u8; 8]);
        let (mut r, h) = IvfReader::new(&long[..]).unwrap();
        assert_eq!(h.frame_count, 150);
        assert_eq!(r.next_frame().unwrap().unwrap().pts, 0);
        let zero = IvfHeader {
            timebase_den: 0,
            ..h
        };
        assert_eq!(zero.pts_to_duration(1), None);
    }
}
