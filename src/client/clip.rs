//! The media a publisher sends: VP8 (IVF, [`crate::media::ivf`]) and Opus (Ogg, the shared
//! loader [`crate::record::clip`]) clips, loaded once and shared.

use super::PublishError;
use crate::media::ivf::IvfReader;
use crate::peer::outlet::MediaFrame;
use crate::record::clip as loader;
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Media to publish, loaded once and shared by every publisher.
#[derive(Debug, Default, Clone)]
pub struct Clip {
    pub(super) video: Vec<MediaFrame>,
    pub(super) audio: Vec<MediaFrame>,
}

impl Clip {
    /// Loads an IVF (VP8) and/or Ogg Opus clip.
    pub fn load(video: Option<&Path>, audio: Option<&Path>) -> Result<Arc<Self>, PublishError> {
        let mut clip = Clip::default();
        if let Some(path) = video {
            clip.video = load_ivf(path)?;
        }
        if let Some(path) = audio {
            let err = |e: String| PublishError::Clip(path.to_owned(), e);
            let bytes = loader::read_limited(path, u64::MAX).map_err(|e| err(e.to_string()))?;
            clip.audio = loader::ogg_audio_loop(&bytes)
                .map_err(|e| match e {
                    // The reader's own words, as before the loader was shared.
                    loader::ClipError::Ogg(e) => err(e.to_string()),
                    e => err(e.to_string()),
                })?
                .into_iter()
                .map(|p| MediaFrame {
                    duration: Duration::from_micros(p.own_us.max(0) as u64),
                    data: p.data,
                    keyframe: true,
                    skip: false,
                })
                .collect();
            if clip.audio.is_empty() {
                return Err(err("no audio packets".into()));
            }
        }
        if clip.video.is_empty() && clip.audio.is_empty() {
            return Err(PublishError::NoMedia);
        }
        Ok(Arc::new(clip))
    }

    /// Like [`load`](Self::load) with several IVF clips played one after the other (sizes may
    /// differ: a resolution change mid-stream).
    pub fn load_sequence(
        videos: &[&Path],
        audio: Option<&Path>,
    ) -> Result<Arc<Self>, PublishError> {
        let mut clip = Self::load(None, audio)
            .map(|c| (*c).clone())
            .unwrap_or_default();
        for path in videos {
            clip.video.extend(load_ivf(path)?);
        }
        if clip.video.is_empty() && clip.audio.is_empty() {
            return Err(PublishError::NoMedia);
        }
        Ok(Arc::new(clip))
    }

    /// A copy in which the audio packets from `from` for `length` (clip time) are not sent,
    /// as a sender in DTX would do: the RTP timestamps jump over the silence.
    pub fn with_audio_gap(&self, from: Duration, length: Duration) -> Arc<Self> {
        let mut clip = self.clone();
        let mut at = Duration::ZERO;
        for frame in &mut clip.audio {
            frame.skip = at >= from && at < from + length;
            at += frame.duration;
        }
        Arc::new(clip)
    }

    /// Length of the video and of the audio loop.
    pub fn lengths(&self) -> (Duration, Duration) {
        let sum = |v: &[MediaFrame]| v.iter().map(|f| f.duration).sum();
        (sum(&self.video), sum(&self.audio))
    }
}

fn load_ivf(path: &Path) -> Result<Vec<MediaFrame>, PublishError> {
    let err = |e: String| PublishError::Clip(path.to_owned(), e);
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let (mut reader, header) =
        IvfReader::new(std::io::BufReader::new(file)).map_err(|e| err(e.to_string()))?;
    if &header.fourcc != b"VP80" {
        return Err(err("not a VP8 IVF file".into()));
    }
    let mut frames: Vec<(u64, Bytes)> = Vec::new();
    while let Some(frame) = reader.next_frame().map_err(|e| err(e.to_string()))? {
        frames.push((frame.pts, Bytes::from(frame.data)));
    }
    let tick = header
        .pts_to_duration(1)
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_millis(33));
    let mut out = Vec::with_capacity(frames.len());
    for (i, (pts, data)) in frames.iter().enumerate() {
        let next = frames.get(i + 1).map_or(pts + 1, |f| f.0);
        let duration = header
            .pts_to_duration(next.saturating_sub(*pts).max(1))
            .unwrap_or(tick);
        out.push(MediaFrame {
            skip: false,
            keyframe: data.first().is_some_and(|b| b & 1 == 0),
            data: data.clone(),
            duration,
        });
    }
    if out.first().is_none_or(|f| !f.keyframe) {
        return Err(err("the clip must start with a keyframe".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sync clips as loaded: audio and video loops of the same length.
    #[test]
    fn the_sync_clips_loop_in_step() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let clip = Clip::load(Some(&data.join("flash.ivf")), Some(&data.join("beeps.ogg")))
            .expect("sync clips load");
        let (video, audio) = clip.lengths();
        // Video frame durations are whole nanoseconds: 6 s within a microsecond.
        assert!(video.abs_diff(Duration::from_secs(6)) < Duration::from_micros(1));
        assert!(
            audio.abs_diff(video) < Duration::from_micros(1),
            "{audio:?} {video:?}"
        );
    }
}
