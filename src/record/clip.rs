//! Reading media files back as timed frames, for the peers that send files: the play and
//! voicemail bots (Ogg Opus, or WebM with VP8 and/or Opus) and the client (`recbot publish`:
//! its Opus clip). One loader, below both: it knows the containers, not the pacing (each
//! sender turns the positions into frame durations its own way).
//!
//! Positions are integer microseconds from the file's start (Ogg: the 48 kHz sample count;
//! WebM: the block timestamps), never a panic on any input.

use crate::media::opus::opus_packet_samples;
use crate::record::ogg::{read_ogg_opus, OggError};
use crate::record::webm_reader::{read_webm, WebmReadError};
use bytes::Bytes;
use std::io::{BufReader, Read};
use std::path::Path;

/// A frame (VP8) or packet (Opus) at its position in the file.
#[derive(Debug, Clone)]
pub struct TimedFrame {
    /// Position from the file's start, in µs.
    pub at_us: i64,
    /// The bitstream.
    pub data: Bytes,
    /// A VP8 keyframe (always true for audio).
    pub keyframe: bool,
    /// Its own length in µs when the format gives one (Opus: from the TOC), else 0.
    pub own_us: i64,
}

/// What a media file holds, each list in position order.
#[derive(Debug, Clone, Default)]
pub struct FileMedia {
    /// VP8 frames (empty: none).
    pub video: Vec<TimedFrame>,
    /// Opus packets (empty: none).
    pub audio: Vec<TimedFrame>,
    /// The duration the file declares (WebM `Duration`) in µs, 0 when none or not plausible.
    pub declared_us: i64,
}

/// Why a media file cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// Opening or reading the file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Larger than the caller's limit (it is held in memory).
    #[error("{size} bytes; at most {max} are played")]
    TooLarge {
        /// The file's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Neither Ogg nor WebM/Matroska (by its first bytes).
    #[error("not an Ogg or WebM file")]
    UnknownFormat,
    /// An Ogg stream that is not readable Ogg Opus.
    #[error("not a readable Ogg Opus stream: {0}")]
    Ogg(OggError),
    /// A WebM file that cannot be read (a truncated one is read up to its end).
    #[error("not a readable WebM file: {0}")]
    Webm(WebmReadError),
    /// A WebM file without a VP8 or Opus track.
    #[error("no VP8 or Opus track (tracks: {0:?}); only VP8 and Opus are sent")]
    NoTracks(Vec<String>),
}

/// Reads the whole file at `path`, refusing one larger than `max_bytes`.
pub fn read_limited(path: &Path, max_bytes: u64) -> Result<Vec<u8>, ClipError> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size > max_bytes {
        return Err(ClipError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Loads an Ogg Opus or a WebM file (told apart by their first bytes) of at most `max_bytes`.
pub fn load(path: &Path, max_bytes: u64) -> Result<FileMedia, ClipError> {
    let bytes = read_limited(path, max_bytes)?;
    match bytes.get(..4) {
        Some(b"OggS") => Ok(FileMedia {
            audio: ogg_audio(&bytes)?,
            ..FileMedia::default()
        }),
        Some([0x1a, 0x45, 0xdf, 0xa3]) => webm_media(&bytes),
        _ => Err(ClipError::UnknownFormat),
    }
}

/// The packets of an Ogg Opus stream that carry audio, at their sample positions.
pub fn ogg_audio(bytes: &[u8]) -> Result<Vec<TimedFrame>, ClipError> {
    let info = read_ogg_opus(std::io::Cursor::new(bytes)).map_err(ClipError::Ogg)?;
    let mut at = 0i64;
    Ok(info
        .packets
        .into_iter()
        .filter(|p| p.samples > 0)
        .map(|p| {
            // Positions in 48 kHz samples → microseconds.
            let t = at;
            at += i64::from(p.samples);
            TimedFrame {
                at_us: t * 1000 / 48,
                data: Bytes::from(p.data),
                keyframe: true,
                own_us: i64::from(p.samples) * 1000 / 48,
            }
        })
        .collect())
}

/// The first VP8 and the first Opus track of a WebM file (a truncated file up to its end).
pub fn webm_media(bytes: &[u8]) -> Result<FileMedia, ClipError> {
    let info = match read_webm(BufReader::new(bytes)) {
        Ok(info) => info,
        Err(WebmReadError::Truncated { partial, .. }) => *partial,
        Err(e) => return Err(ClipError::Webm(e)),
    };
    let video_track = info.tracks.iter().find(|t| t.codec_id == "V_VP8");
    let audio_track = info.tracks.iter().find(|t| t.codec_id == "A_OPUS");
    if video_track.is_none() && audio_track.is_none() {
        let codecs = info.tracks.iter().map(|t| t.codec_id.clone()).collect();
        return Err(ClipError::NoTracks(codecs));
    }
    let scale_us = |ts: i64| ts.saturating_mul(1000);
    let collect = |number: Option<u64>, audio: bool| -> Vec<TimedFrame> {
        let Some(number) = number else {
            return Vec::new();
        };
        let mut list: Vec<TimedFrame> = info
            .blocks
            .iter()
            .filter(|b| b.track == number && !b.data.is_empty())
            .filter_map(|b| {
                let own_us = if audio {
                    i64::from(opus_packet_samples(&b.data)?) * 1000 / 48
                } else {
                    0
                };
                Some(TimedFrame {
                    at_us: scale_us(b.ts_ms),
                    keyframe: audio || b.data[0] & 1 == 0,
                    data: Bytes::copy_from_slice(&b.data),
                    own_us,
                })
            })
            .collect();
        list.sort_by_key(|t| t.at_us);
        list
    };
    let declared_us = info
        .duration_ms
        .filter(|d| d.is_finite() && *d > 0.0 && *d < 86_400_000.0)
        .map_or(0, |d| (d * 1000.0) as i64);
    Ok(FileMedia {
        video: collect(video_track.map(|t| t.number), false),
        audio: collect(audio_track.map(|t| t.number), true),
        declared_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    #[test]
    fn ogg_and_webm_load_with_positions() {
        let tone = load(&data("tone.ogg"), u64::MAX).unwrap();
        assert!(tone.video.is_empty());
        assert_eq!(tone.audio.len(), 251);
        assert_eq!(tone.audio[1].at_us, tone.audio[0].own_us);
        assert_eq!(tone.audio[0].own_us, 20_000);
        let av = load(&data("play10.webm"), u64::MAX).unwrap();
        assert_eq!(av.video.len(), 150);
        assert!(av.video[0].keyframe);
        assert!(av.video.windows(2).all(|w| w[0].at_us <= w[1].at_us));
        assert!(!av.audio.is_empty());
    }

    #[test]
    fn other_files_and_limits_are_refused() {
        assert!(matches!(
            load(&data("clip.ivf"), u64::MAX),
            Err(ClipError::UnknownFormat)
        ));
        assert!(matches!(
            load(&data("tone.ogg"), 10),
            Err(ClipError::TooLarge { max: 10, .. })
        ));
        assert!(matches!(
            load(&data("no-such-file"), u64::MAX),
            Err(ClipError::Io(_))
        ));
        assert!(matches!(ogg_audio(b"OggS garbage"), Err(ClipError::Ogg(_))));
    }
}
