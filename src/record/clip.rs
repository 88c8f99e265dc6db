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
    ogg_frames(bytes, false)
}

/// Like [`ogg_audio`], but only the packets of one loop of the stream's playable length (see
/// [`loop_packets`]): what a publisher that loops the clip sends each time round.
pub fn ogg_audio_loop(bytes: &[u8]) -> Result<Vec<TimedFrame>, ClipError> {
    ogg_frames(bytes, true)
}

fn ogg_frames(bytes: &[u8], one_loop: bool) -> Result<Vec<TimedFrame>, ClipError> {
    let info = read_ogg_opus(std::io::Cursor::new(bytes)).map_err(ClipError::Ogg)?;
    let mut packets: Vec<_> = info.packets.into_iter().filter(|p| p.samples > 0).collect();
    if one_loop {
        let playable = info
            .final_granule
            .map(|g| g.saturating_sub(u64::from(info.pre_skip)));
        let samples: Vec<u32> = packets.iter().map(|p| p.samples).collect();
        packets.truncate(loop_packets(&samples, playable));
    }
    let mut at = 0i64;
    Ok(packets
        .into_iter()
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

/// How many of an Ogg Opus clip's packets (`samples` each, in order) make one loop whose RTP
/// length is nearest its playable length (`playable`: final granule − pre-skip, RFC 7845).
///
/// Encoders pad the last packet, and the file's final granule trims it: played whole on every
/// loop, that padding makes the audio loop longer than the clip (6.02 s for a 6 s clip of
/// 20 ms packets), and a looping publisher's audio drifts one packet later than its video per
/// loop. Packets are kept while the loop's end stays within half a packet of `playable`; all
/// of them without a granule; never none.
pub fn loop_packets(samples: &[u32], playable: Option<u64>) -> usize {
    let Some(playable) = playable else {
        return samples.len();
    };
    let mut total = 0u64;
    for (i, &n) in samples.iter().enumerate() {
        if i > 0 && total + u64::from(n) / 2 > playable {
            return i;
        }
        total += u64::from(n);
    }
    samples.len()
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

    /// The sync clip (`tests/data/beeps.ogg`): 301 packets of 960 samples, pre-skip 312, final
    /// granule 288 312 (6 s played). Looping all 301 would make the audio loop 6.02 s against
    /// the video's 6 s: 300 packets make it exactly 6 s.
    #[test]
    fn an_audio_loop_lasts_the_clips_playable_length() {
        let samples = vec![960u32; 301];
        assert_eq!(loop_packets(&samples, Some(288_312 - 312)), 300);
        // Nearest whole packet: a clip of 287 600 samples (299.6 packets) loops 300, one of
        // 287 000 (298.96) loops 299.
        assert_eq!(loop_packets(&samples, Some(287_600)), 300);
        assert_eq!(loop_packets(&samples, Some(287_000)), 299);
        // Without a granule (or a tiny clip) every packet is kept; never none.
        assert_eq!(loop_packets(&samples, None), 301);
        assert_eq!(loop_packets(&samples, Some(0)), 1);
        assert_eq!(loop_packets(&samples, Some(10_000_000)), 301);
    }

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
