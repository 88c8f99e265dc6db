//! The Recording document (SPEC §4): the API's reply and `manifest.json` in each recording's
//! folder, written atomically (temp file + rename) so a crash leaves the old or the new one.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// Name of the manifest file in a recording folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Lifecycle of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Accepted; the recorder is joining.
    Starting,
    /// The recorder is in the room, writing.
    Recording,
    /// Stop requested; files are being finalized.
    Stopping,
    /// Done; files final.
    Stopped,
    /// Ended by an error or found unfinished after a crash.
    Failed,
}

impl State {
    /// True while the recording may still write.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Starting | Self::Recording | Self::Stopping)
    }
}

/// Why a recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// `POST .../stop`.
    Requested,
    /// `max_duration_s` reached.
    MaxDuration,
    /// The service shut down.
    Shutdown,
    /// Free disk space ran out.
    DiskFull,
    /// Voicemail: the caller went silent.
    Silence,
    /// Voicemail: the caller left.
    PeerLeft,
    /// Found unfinished after a crash.
    Interrupted,
    /// An error ended it.
    Error,
}

/// Media kind of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// VP8 video.
    Video,
    /// Opus audio.
    Audio,
}

/// One recorded track.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackDoc {
    /// Track id within the recording.
    pub id: String,
    /// Peer id of the sender.
    pub participant: String,
    /// Display name of the sender.
    pub participant_name: String,
    /// video | audio.
    pub kind: Kind,
    /// `VP8` or `opus`.
    pub codec: String,
    /// File name within the recording folder.
    pub file: String,
    /// Time from `started_at` to the file's first sample, on the recording's clock.
    pub start_offset_ms: Option<i64>,
    /// Last sample's timestamp plus its length.
    pub duration_ms: u64,
    /// File size.
    pub bytes: u64,
    /// RTP packets received.
    pub packets: u64,
    /// Packets never recovered.
    pub packets_lost: u64,
    /// Frames (video) or packets (audio) written.
    pub frames: u64,
    /// Keyframes written (video).
    pub keyframes: u64,
    /// Latest width (video).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub width: Option<u32>,
    /// Latest height (video).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub height: Option<u32>,
}

/// A downloadable media file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDoc {
    /// File name.
    pub name: String,
    /// Size.
    pub bytes: u64,
    /// Download URL.
    pub url: String,
}

/// The Recording object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingDoc {
    /// Recording id (also its folder name).
    pub id: String,
    /// Room recorded.
    pub room: String,
    /// Lifecycle state.
    pub state: State,
    /// Peer id of the recorder bot in the room.
    pub bot_peer: Option<String>,
    /// When the create call was accepted (RFC 3339, ms, UTC).
    pub started_at: String,
    /// When the stop was requested.
    pub stopped_at: Option<String>,
    /// Error text when failed.
    pub error: Option<String>,
    /// Why it ended; null while recording.
    pub stop_reason: Option<StopReason>,
    /// Recorded tracks.
    pub tracks: Vec<TrackDoc>,
    /// Media files (the manifest itself is not listed).
    pub files: Vec<FileDoc>,
}

/// Formats a time as `2026-11-20T21:00:00.000Z`.
pub fn format_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Writes `doc` to `dir/manifest.json` atomically: a temp file, fsync, rename.
pub fn write_manifest(dir: &Path, doc: &RecordingDoc) -> std::io::Result<()> {
    let tmp = dir.join(".manifest.json.tmp");
    let bytes = serde_json::to_vec_pretty(doc).map_err(std::io::Error::other)?;
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(MANIFEST_FILE))
}

/// Reads `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> std::io::Result<RecordingDoc> {
    let bytes = std::fs::read(dir.join(MANIFEST_FILE))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_with_millis() {
        let t = time::macros::datetime!(2026-11-20 21:00:00.123 UTC);
        assert_eq!(format_time(t), "2026-11-20T21:00:00.123Z");
    }

    #[test]
    fn manifest_round_trip_is_atomic() {
        let dir = std::env::temp_dir().join(format!("recbot-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let doc = RecordingDoc {
            id: "x".into(),
            room: "demo".into(),
            state: State::Recording,
            bot_peer: Some("b".into()),
            started_at: "2026-11-20T21:00:00.000Z".into(),
            stopped_at: None,
            error: None,
            stop_reason: None,
            tracks: vec![],
            files: vec![],
        };
        write_manifest(&dir, &doc).unwrap();
        assert_eq!(read_manifest(&dir).unwrap(), doc);
        assert!(!dir.join(".manifest.json.tmp").exists());
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
        assert_eq!(v["stop_reason"], serde_json::Value::Null);
        assert_eq!(v["state"], "recording");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
