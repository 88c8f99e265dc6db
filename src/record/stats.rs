//! A track of a recording as the writers and the API see it: its identity and its live
//! figures ([`TrackStats`], atomics: the track's writer updates them, the API reads them).
//! Below the session and the writers (`sink`, `mux`), which fill them in.

use super::manifest::{Kind, TrackDoc};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Live figures of one track, updated by its task and read by the API.
#[derive(Debug, Default)]
pub struct TrackStats {
    /// File bytes.
    pub bytes: AtomicU64,
    /// RTP packets received.
    pub packets: AtomicU64,
    /// Packets never recovered.
    pub packets_lost: AtomicU64,
    /// Frames or packets written.
    pub frames: AtomicU64,
    /// Keyframes written.
    pub keyframes: AtomicU64,
    /// Duration written so far.
    pub duration_ms: AtomicU64,
    /// Latest width (0: unknown).
    pub width: AtomicU32,
    /// Latest height (0: unknown).
    pub height: AtomicU32,
    /// PLIs sent.
    pub plis: AtomicU64,
    /// Offset of the first sample in ms, `i64::MIN` until there is one.
    pub start_offset_ms: AtomicI64,
    /// The file exists on disk.
    pub file_created: AtomicBool,
    /// The track's task has ended: its part of the file is final (set after the finalize).
    pub ended: AtomicBool,
}

impl TrackStats {
    /// One frame or packet written (a video `keyframe` counts as one too); the track's
    /// duration so far is `duration_ms`.
    pub fn wrote(&self, keyframe: bool, duration_ms: u64) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        if keyframe {
            self.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        self.duration_ms.store(duration_ms, Ordering::Relaxed);
    }

    /// The latest video frame size (from a keyframe).
    pub fn note_size(&self, width: u16, height: u16) {
        self.width.store(u32::from(width), Ordering::Relaxed);
        self.height.store(u32::from(height), Ordering::Relaxed);
    }
}

/// One track of a recording.
#[derive(Debug)]
pub struct TrackEntry {
    /// Track id within the recording.
    pub id: String,
    /// Sender's peer id.
    pub participant: String,
    /// Sender's display name.
    pub participant_name: String,
    /// video | audio.
    pub kind: Kind,
    /// File name within the recording folder.
    pub file: String,
    /// Live figures.
    pub stats: TrackStats,
}

impl TrackEntry {
    /// The track's manifest entry from its current figures.
    pub(super) fn doc(&self) -> TrackDoc {
        let s = &self.stats;
        let offset = s.start_offset_ms.load(Ordering::Relaxed);
        let dim = |v: &AtomicU32| Some(v.load(Ordering::Relaxed)).filter(|v| *v > 0);
        TrackDoc {
            id: self.id.clone(),
            participant: self.participant.clone(),
            participant_name: self.participant_name.clone(),
            kind: self.kind,
            codec: match self.kind {
                Kind::Video => "VP8".into(),
                Kind::Audio => "opus".into(),
            },
            file: self.file.clone(),
            start_offset_ms: (offset != i64::MIN).then_some(offset),
            duration_ms: s.duration_ms.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            packets: s.packets.load(Ordering::Relaxed),
            packets_lost: s.packets_lost.load(Ordering::Relaxed),
            frames: s.frames.load(Ordering::Relaxed),
            keyframes: s.keyframes.load(Ordering::Relaxed),
            width: if self.kind == Kind::Video {
                dim(&s.width)
            } else {
                None
            },
            height: if self.kind == Kind::Video {
                dim(&s.height)
            } else {
                None
            },
        }
    }
}
