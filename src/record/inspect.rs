//! A report of what a user needs to trust a recording file: container, size, duration,
//! whether it is finalized and seekable, per track frame counts, keyframes, time range and
//! gaps, and warnings for everything that looks wrong.
//!
//! Built on the crate's readers ([`read_webm_with`], [`read_ogg_opus`]) and, for WebM size
//! fields, on the structure scan of [`super::repair`]. Never panics, whatever the file holds.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::ebml::CUES_ID;
use super::ogg::{read_ogg_opus, OggError, OggOpusInfo};
use super::repair::scan_webm;
use super::webm_reader::{read_webm_with, ReadOptions, WebmInfo, WebmReadError, WebmTrackKind};

/// Frames of one track further apart than this (ms) make a [`Gap`].
pub const GAP_THRESHOLD_MS: i64 = 100;
/// Opus runs at 48 kHz in Ogg: samples per ms.
const SAMPLES_PER_MS: i64 = 48;

/// A stretch of time without media in one track.
///
/// WebM: two consecutive blocks of a track more than [`GAP_THRESHOLD_MS`] apart; `at_ms` is
/// the earlier block's timestamp and `length_ms` the distance between the two timestamps.
/// Ogg: a run of consecutive digital-silence packets (the fill recbot's writer inserts for
/// DTX or loss) totalling more than [`GAP_THRESHOLD_MS`]; `at_ms` is the playback position of
/// the first silence packet (sum of previous packet durations − pre-skip) and `length_ms`
/// the run's duration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    /// Where the gap starts, ms on the file's timeline.
    pub at_ms: i64,
    /// How long it is, ms.
    pub length_ms: i64,
}

/// What one track of a file holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrackReport {
    /// WebM TrackNumber; 1 for the single stream of an Ogg file.
    pub number: u64,
    /// Codec name: "VP8", "Opus", or the raw WebM CodecID for anything else.
    pub codec: String,
    /// "video", "audio" or "other".
    pub kind: String,
    /// Frames (WebM blocks / Ogg packets, silence fill included).
    pub frames: u64,
    /// Frames flagged as keyframes (every Opus packet counts as one).
    pub keyframes: u64,
    /// Whether the track's first frame is a keyframe (false when it has no frames).
    pub first_is_keyframe: bool,
    /// Timestamp of the first frame, ms (Ogg: playback position, negative inside the
    /// pre-skip). 0 when the track has no frames.
    pub first_ts_ms: i64,
    /// Timestamp of the last frame, ms. 0 when the track has no frames.
    pub last_ts_ms: i64,
    /// Frame width from the track header (video only).
    pub width: Option<u32>,
    /// Frame height from the track header (video only).
    pub height: Option<u32>,
    /// Audio channels (WebM Channels / OpusHead), if known.
    pub channels: Option<u8>,
    /// Opus pre-skip in 48 kHz samples (Ogg only).
    pub pre_skip: Option<u16>,
    /// Gaps longer than [`GAP_THRESHOLD_MS`], in time order.
    pub gaps: Vec<Gap>,
}

/// Everything [`inspect`] found about one file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FileReport {
    /// The file inspected.
    pub path: PathBuf,
    /// "webm" or "ogg".
    pub container: String,
    /// File size in bytes.
    pub bytes: u64,
    /// Duration in ms: WebM Info/Duration when present and > 0; Ogg final granule − pre-skip.
    pub duration_ms: Option<f64>,
    /// Number of cue entries (WebM CueTrackPositions; 0 for Ogg).
    pub cues: usize,
    /// WebM: Cues present, a SeekHead entry for them, and no unknown size fields.
    /// Ogg: the stream ends with an end-of-stream page.
    pub seekable: bool,
    /// WebM: known Segment size, Cues present and Duration > 0 (what a clean stop or a
    /// repair leaves). Ogg: end-of-stream page present.
    pub finalized: bool,
    /// One entry per track, in file order.
    pub tracks: Vec<TrackReport>,
    /// Human-readable problems (empty for a clean file).
    pub warnings: Vec<String>,
}

/// Why a file could not be inspected at all.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be opened or read.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Neither a WebM (EBML) nor an Ogg file.
    #[error("not a WebM or Ogg file")]
    UnknownFormat,
    /// The WebM reader refused the file (a truncated file is reported, not refused).
    #[error("{0}")]
    Webm(#[from] WebmReadError),
    /// The Ogg Opus reader refused the file.
    #[error("{0}")]
    Ogg(#[from] OggError),
}

/// Inspects one recording file (WebM or Ogg Opus, told apart by their first bytes).
///
/// A WebM file that ends inside an element is still reported (with a "truncated" warning)
/// from what could be read; garbage is an error. Reads the whole file once (plus a header
/// scan for WebM) without keeping frame payloads in memory.
pub fn inspect(path: &Path) -> Result<FileReport, InspectError> {
    let mut file = File::open(path)?;
    let bytes = file.metadata()?.len();
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic)?;
    file.seek(SeekFrom::Start(0))?;
    match &magic[..n] {
        [0x1A, 0x45, 0xDF, 0xA3] => inspect_webm(path, file, bytes),
        b"OggS" => inspect_ogg(path, file, bytes),
        _ => Err(InspectError::UnknownFormat),
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn inspect_webm(path: &Path, file: File, bytes: u64) -> Result<FileReport, InspectError> {
    let mut warnings = Vec::new();
    let info = match read_webm_with(BufReader::new(&file), ReadOptions { block_data: false }) {
        Ok(info) => info,
        Err(WebmReadError::Truncated { offset, partial }) => {
            warnings.push(format!(
                "truncated: the file ends inside an element near byte {offset}"
            ));
            *partial
        }
        Err(e) => return Err(e.into()),
    };
    let layout = match scan_webm(&file) {
        Ok(layout) => Some(layout),
        Err(e) => {
            warnings.push(format!("structure scan failed: {e}"));
            None
        }
    };

    let tracks: Vec<TrackReport> = info.tracks.iter().map(|t| webm_track(&info, t)).collect();
    for t in &tracks {
        if t.frames == 0 {
            warnings.push(format!("track {}: no frames", t.number));
        } else if t.kind == "video" && !t.first_is_keyframe {
            warnings.push(format!("track {}: first frame is not a keyframe", t.number));
        }
    }
    if tracks.is_empty() {
        warnings.push("no tracks".into());
    }

    let duration_ms = info.duration_ms.filter(|d| d.is_finite() && *d > 0.0);
    if duration_ms.is_none() {
        warnings.push(match info.duration_ms {
            None => "Duration missing".into(),
            Some(_) => "Duration is zero (file not finalized)".into(),
        });
    }
    let cues = info.cues.len();
    if cues == 0 {
        warnings.push("no Cues (not seekable)".into());
    }
    let cues_in_seekhead = info.seek_entries.iter().any(|e| e.id == u64::from(CUES_ID));
    if !info.has_seekhead {
        warnings.push("no SeekHead".into());
    } else if cues > 0 && !cues_in_seekhead {
        warnings.push("SeekHead does not point at the Cues".into());
    }
    if !info.segment_size_known {
        warnings.push("Segment size unknown (file not finalized)".into());
    }
    let unknown_clusters = layout
        .as_ref()
        .map_or(0, |l| l.clusters.iter().filter(|c| !c.size_ok).count());
    if unknown_clusters > 0 {
        warnings.push(format!("{unknown_clusters} cluster(s) of unknown size"));
    }
    let sizes_known = layout.as_ref().is_some_and(|l| !l.has_unknown_sizes());

    Ok(FileReport {
        path: path.to_path_buf(),
        container: "webm".into(),
        bytes,
        duration_ms,
        cues,
        seekable: cues > 0 && cues_in_seekhead && sizes_known,
        finalized: info.segment_size_known && cues > 0 && duration_ms.is_some(),
        tracks,
        warnings,
    })
}

/// Builds one WebM track's report from the blocks read.
fn webm_track(info: &WebmInfo, track: &super::webm_reader::WebmTrackInfo) -> TrackReport {
    let (kind, codec) = match (track.kind, track.codec_id.as_str()) {
        (_, "V_VP8") => ("video", "VP8".to_string()),
        (_, "A_OPUS") => ("audio", "Opus".to_string()),
        (WebmTrackKind::Video, id) => ("video", id.to_string()),
        (WebmTrackKind::Audio, id) => ("audio", id.to_string()),
        (WebmTrackKind::Other(_), id) => ("other", id.to_string()),
    };
    let mut report = TrackReport {
        number: track.number,
        codec,
        kind: kind.into(),
        frames: 0,
        keyframes: 0,
        first_is_keyframe: false,
        first_ts_ms: 0,
        last_ts_ms: 0,
        width: track.width,
        height: track.height,
        channels: track.channels,
        pre_skip: None,
        gaps: Vec::new(),
    };
    let mut previous: Option<i64> = None;
    for block in info.blocks.iter().filter(|b| b.track == track.number) {
        match previous {
            None => {
                report.first_is_keyframe = block.keyframe;
                report.first_ts_ms = block.ts_ms;
            }
            Some(prev) => {
                let distance = block.ts_ms.saturating_sub(prev);
                if distance > GAP_THRESHOLD_MS {
                    report.gaps.push(Gap {
                        at_ms: prev,
                        length_ms: distance,
                    });
                }
            }
        }
        report.frames += 1;
        report.keyframes += u64::from(block.keyframe);
        report.last_ts_ms = block.ts_ms;
        previous = Some(block.ts_ms);
    }
    report
}

/// Whether `packet` is one of the digital-silence packets recbot's Ogg writer fills gaps
/// with: a one-frame CELT-only fullband packet (TOC config 28..=31, frame count code 0,
/// mono or stereo) whose payload `FF FE` sets the CELT silence flag.
fn is_silence_fill(packet: &[u8]) -> bool {
    match packet {
        [toc, 0xFF, 0xFE] => (28..=31).contains(&(toc >> 3)) && toc & 0x03 == 0,
        _ => false,
    }
}

fn inspect_ogg(path: &Path, file: File, bytes: u64) -> Result<FileReport, InspectError> {
    let info = read_ogg_opus(BufReader::new(file))?;
    let mut warnings = Vec::new();
    if !info.eos {
        warnings.push("no end-of-stream page (file not finalized)".into());
    }
    if info.truncated {
        warnings.push("truncated: the file ends with a partial page".into());
    }
    if info.packets.is_empty() {
        warnings.push("no audio packets".into());
    }
    let duration_ms = info
        .duration_samples()
        .map(|s| s as f64 / SAMPLES_PER_MS as f64);
    if duration_ms.is_none() {
        warnings.push("no final granule position: duration unknown".into());
    }
    Ok(FileReport {
        path: path.to_path_buf(),
        container: "ogg".into(),
        bytes,
        duration_ms,
        cues: 0,
        seekable: info.eos,
        finalized: info.eos,
        tracks: vec![ogg_track(&info)],
        warnings,
    })
}

/// Builds the report of the single Opus stream of an Ogg file.
fn ogg_track(info: &OggOpusInfo) -> TrackReport {
    let to_ms = |samples: i64| samples.div_euclid(SAMPLES_PER_MS);
    let pre_skip = i64::from(info.pre_skip);
    let mut report = TrackReport {
        number: 1,
        codec: "Opus".into(),
        kind: "audio".into(),
        frames: info.packets.len() as u64,
        keyframes: info.packets.len() as u64,
        first_is_keyframe: !info.packets.is_empty(),
        first_ts_ms: 0,
        last_ts_ms: 0,
        width: None,
        height: None,
        channels: Some(info.channels),
        pre_skip: Some(info.pre_skip),
        gaps: Vec::new(),
    };
    // Position of the next packet in samples, pre-skip included, and the open silence run.
    let mut position: i64 = 0;
    let mut run: Option<(i64, i64)> = None;
    let close_run = |run: &mut Option<(i64, i64)>, gaps: &mut Vec<Gap>| {
        if let Some((start, length)) = run.take() {
            if length > GAP_THRESHOLD_MS * SAMPLES_PER_MS {
                gaps.push(Gap {
                    at_ms: to_ms(start - pre_skip),
                    length_ms: to_ms(length),
                });
            }
        }
    };
    for (i, packet) in info.packets.iter().enumerate() {
        if i == 0 {
            report.first_ts_ms = to_ms(position - pre_skip);
        }
        report.last_ts_ms = to_ms(position - pre_skip);
        let samples = i64::from(packet.samples);
        if is_silence_fill(&packet.data) {
            run.get_or_insert((position, 0)).1 += samples;
        } else {
            close_run(&mut run, &mut report.gaps);
        }
        position = position.saturating_add(samples);
    }
    close_run(&mut run, &mut report.gaps);
    report
}

/// "1.2 MiB"-style size.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

impl fmt::Display for FileReport {
    /// A compact block, e.g.
    ///
    /// ```text
    /// alice-video-1.webm  webm  1.2 MiB  duration 12.345 s  finalized, seekable (cues: 7)
    ///   track 1  video VP8 640x480  frames 370 (keyframes 7)  first frame: keyframe  ts 0..12311 ms
    ///   gaps > 100 ms: none
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        write!(
            f,
            "{name}  {}  {}  ",
            self.container,
            human_size(self.bytes)
        )?;
        match self.duration_ms {
            Some(ms) => write!(f, "duration {:.3} s", ms / 1000.0)?,
            None => write!(f, "duration unknown")?,
        }
        write!(
            f,
            "  {}, {}",
            if self.finalized {
                "finalized"
            } else {
                "NOT finalized"
            },
            if self.seekable {
                "seekable"
            } else {
                "not seekable"
            }
        )?;
        if self.container == "webm" {
            write!(f, " (cues: {})", self.cues)?;
        }
        writeln!(f)?;
        for t in &self.tracks {
            write!(f, "  track {}  {} {}", t.number, t.kind, t.codec)?;
            if let (Some(w), Some(h)) = (t.width, t.height) {
                write!(f, " {w}x{h}")?;
            }
            if let Some(c) = t.channels {
                write!(f, " {c} ch")?;
            }
            if let Some(p) = t.pre_skip {
                write!(f, " pre-skip {p}")?;
            }
            write!(f, "  frames {}", t.frames)?;
            if t.kind == "video" {
                write!(f, " (keyframes {})", t.keyframes)?;
            }
            if t.frames > 0 {
                write!(
                    f,
                    "  first frame: {}  ts {}..{} ms",
                    if t.first_is_keyframe {
                        "keyframe"
                    } else {
                        "NOT a keyframe"
                    },
                    t.first_ts_ms,
                    t.last_ts_ms
                )?;
            }
            writeln!(f)?;
            if t.gaps.is_empty() {
                writeln!(f, "    gaps > {GAP_THRESHOLD_MS} ms: none")?;
            } else {
                let list: Vec<String> = t
                    .gaps
                    .iter()
                    .map(|g| format!("{} ms at {} ms", g.length_ms, g.at_ms))
                    .collect();
                writeln!(
                    f,
                    "    gaps > {GAP_THRESHOLD_MS} ms: {} ({})",
                    t.gaps.len(),
                    list.join(", ")
                )?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ogg::OggOpusWriter;
    use crate::record::repair::repair_webm;
    use crate::record::repair::tests::{
        audio_track, opus_clip, video_track, vp8_clip, write_killed, Frame,
    };
    use crate::record::webm::WebmWriter;

    /// clip.ivf (150 frames, keyframes every 30) with a 500 ms hole after frame 74, muxed
    /// with the tone's audio.
    fn frames_with_video_gap() -> (Vec<Frame>, i64) {
        let video = vp8_clip();
        let shift = 500 - (video[75].0 - video[74].0);
        let mut frames: Vec<Frame> = video
            .into_iter()
            .enumerate()
            .map(|(i, (ts, k, d))| (1, if i >= 75 { ts + shift } else { ts }, k, d))
            .collect();
        let gap_at = frames[74].1 as i64;
        let (_, _, packets) = opus_clip();
        frames.extend(
            packets
                .into_iter()
                .enumerate()
                .map(|(i, d)| (2, i as u64 * 20, true, d)),
        );
        frames.sort_by_key(|f| f.1);
        (frames, gap_at)
    }

    #[test]
    fn finalized_webm_report() {
        let dir = tempfile::tempdir().unwrap();
        let (channels, pre_skip, _) = opus_clip();
        let tracks = [video_track(), audio_track(channels, pre_skip)];
        let (frames, gap_at) = frames_with_video_gap();
        let path = dir.path().join("alice-1.webm");
        let mut w = WebmWriter::new(File::create(&path).unwrap(), &tracks).unwrap();
        for (track, ts, key, data) in &frames {
            w.write_frame(*track, *ts, *key, data).unwrap();
        }
        let last_video = frames
            .iter()
            .filter(|f| f.0 == 1)
            .map(|f| f.1)
            .max()
            .unwrap();
        w.finalize(last_video + 33).unwrap();

        let report = inspect(&path).unwrap();
        println!("{report}");
        assert_eq!(report.container, "webm");
        assert!(report.finalized && report.seekable, "{report}");
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert_eq!(report.cues, 5);
        assert_eq!(report.duration_ms, Some((last_video + 33) as f64));
        assert_eq!(report.bytes, std::fs::metadata(&path).unwrap().len());
        let v = &report.tracks[0];
        assert_eq!(
            (v.kind.as_str(), v.codec.as_str(), v.width, v.height),
            ("video", "VP8", Some(320), Some(240))
        );
        assert_eq!((v.frames, v.keyframes, v.first_is_keyframe), (150, 5, true));
        assert_eq!((v.first_ts_ms, v.last_ts_ms), (0, last_video as i64));
        assert_eq!(
            v.gaps,
            [Gap {
                at_ms: gap_at,
                length_ms: 500
            }]
        );
        let a = &report.tracks[1];
        assert_eq!((a.kind.as_str(), a.codec.as_str()), ("audio", "Opus"));
        assert_eq!((a.frames, a.channels), (251, Some(1)));
        assert!(a.gaps.is_empty());

        let text = report.to_string();
        assert!(text.starts_with("alice-1.webm  webm  "), "{text}");
        assert!(text.contains("finalized, seekable (cues: 5)"), "{text}");
        assert!(text.contains("track 1  video VP8 320x240  frames 150 (keyframes 5)  first frame: keyframe  ts 0.."), "{text}");
        assert!(
            text.contains(&format!("gaps > 100 ms: 1 (500 ms at {gap_at} ms)")),
            "{text}"
        );
        assert!(text.contains("gaps > 100 ms: none"), "{text}");
    }

    #[test]
    fn unfinalized_and_truncated_webm_reports() {
        let dir = tempfile::tempdir().unwrap();
        let (channels, pre_skip, _) = opus_clip();
        let tracks = [video_track(), audio_track(channels, pre_skip)];
        let (frames, _) = frames_with_video_gap();
        let path = dir.path().join("killed.webm");
        let snap = write_killed(&path, &tracks, &frames, &[200]).remove(0);
        std::fs::write(&path, &snap).unwrap();

        let report = inspect(&path).unwrap();
        println!("{report}");
        assert!(!report.finalized && !report.seekable);
        assert_eq!((report.cues, report.duration_ms), (0, None));
        let video_frames = frames[..=200].iter().filter(|f| f.0 == 1).count() as u64;
        assert_eq!(report.tracks[0].frames, video_frames);
        for w in [
            "Duration is zero",
            "no Cues",
            "Segment size unknown",
            "1 cluster(s) of unknown size",
        ] {
            assert!(
                report.warnings.iter().any(|x| x.contains(w)),
                "{w}: {:?}",
                report.warnings
            );
        }
        assert!(report
            .to_string()
            .contains("NOT finalized, not seekable (cues: 0)"));

        std::fs::write(&path, &snap[..snap.len() - 5]).unwrap();
        let report = inspect(&path).unwrap();
        assert!(report.warnings.iter().any(|x| x.starts_with("truncated")));
        assert_eq!(report.tracks.iter().map(|t| t.frames).sum::<u64>(), 200);

        // After a repair the report is clean again.
        repair_webm(&path).unwrap();
        let report = inspect(&path).unwrap();
        assert!(report.finalized && report.seekable, "{report}");
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    }

    /// The tone with a 2 s hole after packet 100, which the writer fills with silence.
    fn ogg_with_gap(path: &Path, finalize: bool) {
        let (channels, pre_skip, packets) = opus_clip();
        let mut w = OggOpusWriter::new(File::create(path).unwrap(), 3, channels, pre_skip).unwrap();
        for (i, p) in packets.iter().enumerate() {
            let pts = i as u64 * 960 + if i >= 100 { 96_000 } else { 0 };
            w.write_packet(p, pts).unwrap();
        }
        if finalize {
            w.finalize(None).unwrap();
        } else {
            w.flush().unwrap();
        }
    }

    #[test]
    fn ogg_reports_with_a_silence_gap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bob-audio-1.ogg");
        ogg_with_gap(&path, true);
        let report = inspect(&path).unwrap();
        println!("{report}");
        assert_eq!(report.container, "ogg");
        assert!(report.finalized && report.seekable && report.warnings.is_empty());
        let t = &report.tracks[0];
        assert_eq!((t.codec.as_str(), t.kind.as_str()), ("Opus", "audio"));
        assert_eq!((t.channels, t.pre_skip), (Some(1), Some(312)));
        assert_eq!(t.frames, 251 + 100);
        assert!(t.first_is_keyframe);
        assert_eq!(t.first_ts_ms, -7); // -312 samples = -6.5 ms, floored
        assert_eq!(t.gaps.len(), 1, "{:?}", t.gaps);
        let gap = &t.gaps[0];
        assert!((gap.length_ms - 2000).abs() <= 20, "{gap:?}");
        // 100 packets of 20 ms, minus the 6.5 ms pre-skip.
        assert!((gap.at_ms - 1993).abs() <= 1, "{gap:?}");
        let duration = report.duration_ms.unwrap();
        assert!((duration - (351.0 * 20.0 - 6.5)).abs() < 0.01, "{duration}");
        let text = report.to_string();
        assert!(
            text.contains("track 1  audio Opus 1 ch pre-skip 312  frames 351"),
            "{text}"
        );
        assert!(
            text.contains("gaps > 100 ms: 1 (2000 ms at 1993 ms)"),
            "{text}"
        );

        ogg_with_gap(&path, false);
        let report = inspect(&path).unwrap();
        assert!(!report.finalized && !report.seekable);
        assert!(report.warnings.iter().any(|w| w.contains("end-of-stream")));
        assert_eq!(report.tracks[0].gaps.len(), 1);
    }

    #[test]
    fn silence_recognition() {
        for toc in [0xF8u8, 0xFC, 0xF0, 0xF4, 0xE8, 0xEC, 0xE0, 0xE4] {
            assert!(is_silence_fill(&[toc, 0xFF, 0xFE]));
        }
        assert!(!is_silence_fill(&[0xF9, 0xFF, 0xFE]));
        assert!(!is_silence_fill(&[0x78, 0xFF, 0xFE]));
        assert!(!is_silence_fill(&[0xF8, 0xFF, 0xFE, 0x00]));
        assert!(!is_silence_fill(&[]));
    }

    #[test]
    fn garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[u8]); 5] = [
            ("empty", b""),
            ("text", b"hello world, not media"),
            ("ebml", &[0x1A, 0x45, 0xDF, 0xA3, 0x9F, 0x00, 0x12]),
            ("ogg", b"OggS\0\0\0\0garbage garbage garbage garbage"),
            ("bits", &[0xFF; 300]),
        ];
        for (name, bytes) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            assert!(inspect(&path).is_err(), "{name}");
        }
        assert!(matches!(
            inspect(&dir.path().join("missing")),
            Err(InspectError::Io(_))
        ));
        assert!(human_size(0) == "0 B" && human_size(1536) == "1.5 KiB");
        assert_eq!(human_size(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
