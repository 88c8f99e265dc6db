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

/// Where a file stands on its way to object storage (SPEC §7). The order is "better first":
/// the worst of several states is their maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadState {
    /// The store confirmed the whole object and its checksum.
    Uploaded,
    /// Being uploaded now.
    Uploading,
    /// Waiting: the file is not final yet, or its turn has not come.
    Pending,
    /// The last attempt failed (`upload_error` says why); it will be tried again.
    Retrying,
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
    /// Upload state; null without object storage.
    #[serde(default)]
    pub upload: Option<UploadState>,
    /// The store's last answer when an upload failed (state `retrying`), else null.
    #[serde(default)]
    pub upload_error: Option<String>,
    /// The object key (`{prefix}{recording id}/{name}`); null without object storage.
    #[serde(default)]
    pub object: Option<String>,
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
    /// Media files (the manifest itself is not listed), `chat.jsonl` included once it exists.
    pub files: Vec<FileDoc>,
    /// Whether the recording is paused now (`state` stays `recording`: SPEC §11).
    #[serde(default)]
    pub paused: bool,
    /// Total paused time, cut out of every file (live while paused).
    #[serde(default)]
    pub paused_ms: u64,
    /// Chat messages written to `chat.jsonl`.
    #[serde(default)]
    pub chat_messages: u64,
    /// Chat messages dropped: over 4 KiB, not `{"text": string}`, or sent while paused.
    #[serde(default)]
    pub chat_dropped: u64,
    /// The worst upload state of its files and of its manifest (`uploaded` once the manifest
    /// is in the bucket, so the recording there is complete); null without object storage.
    #[serde(default)]
    pub upload: Option<UploadState>,
    /// In a cluster (SPEC §9): the node recording it now (absent on a single node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// In a cluster: how many times another node continued it after its node died or
    /// drained (absent on a single node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeovers: Option<u32>,
    /// The composite video (`room.webm`, SPEC §11): null unless it was requested.
    #[serde(default)]
    pub composite: Option<CompositeDoc>,
}

/// Where the rendering of a recording's composite video stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompositeState {
    /// Requested; waits for the stop, then for the renderer.
    Pending,
    /// Being rendered.
    Rendering,
    /// `room.webm` is complete and listed in `files`.
    Done,
    /// Rendering failed (`error` says why); the source files are untouched.
    Failed,
}

/// The Recording's `composite` object (SPEC §11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompositeDoc {
    /// Where the rendering stands.
    pub state: CompositeState,
    /// Rendered share of the recording, 0 to 1.
    #[serde(default)]
    pub progress: f64,
    /// Why it failed (null otherwise).
    #[serde(default)]
    pub error: Option<String>,
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

/// Prefix of a manifest's temp files (`.manifest.XXXXXX.tmp`); never a media file's name.
const TEMP_PREFIX: &str = ".manifest";
/// Suffix of a manifest's temp files.
const TEMP_SUFFIX: &str = ".tmp";

/// Whether `name` is a manifest temp file (also the single `.manifest.json.tmp` of older
/// versions): written only by [`write_manifest`], never a recording's file.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)
}

/// Writes `doc` to `dir/manifest.json` atomically: a temp file of a name of its own, fsync,
/// rename, then fsync of the folder so that the rename is durable. Concurrent writers never
/// share a temp file, so each rename moves a complete document; callers that need the newest
/// document to land last serialize their writes (a [`Recording`](super::session::Recording)
/// does). On error the temp file is removed.
pub fn write_manifest(dir: &Path, doc: &RecordingDoc) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bytes = serde_json::to_vec_pretty(doc).map_err(std::io::Error::other)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(TEMP_SUFFIX)
        // The mode of a plain File::create (less the umask), like the media files.
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(MANIFEST_FILE)).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes the manifest temp files a crash left in the recording folder `dir` (at startup
/// recovery, when no writer can be running) and returns how many went. Failures are logged.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_temp_name) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(file = %entry.path().display(), error = %e,
                "stale manifest temp file not removed"),
        }
    }
    removed
}

/// Reads `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> std::io::Result<RecordingDoc> {
    let bytes = std::fs::read(dir.join(MANIFEST_FILE))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_with(tracks: usize) -> RecordingDoc {
        RecordingDoc {
            id: "x".into(),
            room: "demo".into(),
            state: State::Recording,
            bot_peer: Some("b".into()),
            started_at: "2026-11-20T21:00:00.000Z".into(),
            stopped_at: None,
            error: None,
            stop_reason: None,
            paused: false,
            paused_ms: 0,
            chat_messages: 0,
            chat_dropped: 0,
            tracks: (0..tracks)
                .map(|i| TrackDoc {
                    id: format!("t{i}"),
                    participant: format!("p{i}"),
                    participant_name: "someone with a long name".repeat(i + 1),
                    kind: Kind::Audio,
                    codec: "opus".into(),
                    file: format!("p{i}-audio-1.ogg"),
                    start_offset_ms: Some(i as i64),
                    duration_ms: 1,
                    bytes: 2,
                    packets: 3,
                    packets_lost: 0,
                    frames: 4,
                    keyframes: 0,
                    width: None,
                    height: None,
                })
                .collect(),
            files: vec![],
            upload: None,
            node: None,
            takeovers: None,
            composite: None,
        }
    }

    fn temps_in(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| is_temp_name(n))
            .collect()
    }

    /// Writers of one folder at once (documents of different sizes): every write succeeds,
    /// a reader never sees a torn or unparsable manifest, and no temp file is left behind.
    #[test]
    fn concurrent_writes_never_tear_or_fail() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        write_manifest(dir, &doc_with(0)).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        let reads = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let bytes = std::fs::read(dir.join(MANIFEST_FILE)).unwrap();
                    if let Err(e) = serde_json::from_slice::<RecordingDoc>(&bytes) {
                        panic!("torn manifest ({e}): {}", String::from_utf8_lossy(&bytes));
                    }
                    reads += 1;
                }
                reads
            });
            let writers: Vec<_> = (0..8)
                .map(|w| {
                    s.spawn(move || {
                        for i in 0..100 {
                            let doc = doc_with((w + i) % 7);
                            if let Err(e) = write_manifest(dir, &doc) {
                                panic!("writer {w} write {i}: {e}");
                            }
                        }
                    })
                })
                .collect();
            let failed = writers.into_iter().map(|w| w.join()).any(|r| r.is_err());
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            let reads = reader.join();
            assert!(!failed, "a writer failed");
            reads.unwrap()
        });
        assert!(reads > 0);
        read_manifest(dir).unwrap();
        assert_eq!(temps_in(dir), Vec::<String>::new());
    }

    #[test]
    fn stale_temps_are_removed_and_only_temps() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        write_manifest(dir, &doc_with(1)).unwrap();
        for name in [
            ".manifest.json.tmp",
            ".manifest.Ab12Cd.tmp",
            "alice-audio-1.ogg",
        ] {
            std::fs::write(dir.join(name), b"{\"partial").unwrap();
        }
        assert_eq!(temps_in(dir).len(), 2);
        assert_eq!(remove_stale_temps(dir), 2);
        assert_eq!(temps_in(dir), Vec::<String>::new());
        assert!(dir.join("alice-audio-1.ogg").is_file());
        assert_eq!(read_manifest(dir).unwrap(), doc_with(1));
    }

    #[test]
    fn times_are_rfc3339_with_millis() {
        let t = time::macros::datetime!(2026-11-20 21:00:00.123 UTC);
        assert_eq!(format_time(t), "2026-11-20T21:00:00.123Z");
    }

    #[test]
    fn manifest_round_trip_is_atomic() {
        let dir = std::env::temp_dir().join(format!("recbot-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let doc = doc_with(0);
        write_manifest(&dir, &doc).unwrap();
        assert_eq!(read_manifest(&dir).unwrap(), doc);
        assert!(temps_in(&dir).is_empty());
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
        assert_eq!(v["stop_reason"], serde_json::Value::Null);
        assert_eq!(v["state"], "recording");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A manifest written before `composite` existed still loads (as null), and a composite
    /// round-trips with its state in lowercase.
    #[test]
    fn composite_is_optional_and_round_trips() {
        let mut v = serde_json::to_value(doc_with(1)).unwrap();
        v.as_object_mut().unwrap().remove("composite");
        let old: RecordingDoc = serde_json::from_value(v).unwrap();
        assert_eq!(old.composite, None);
        let mut doc = doc_with(0);
        doc.composite = Some(CompositeDoc {
            state: CompositeState::Rendering,
            progress: 0.5,
            error: None,
        });
        let v = serde_json::to_value(&doc).unwrap();
        assert_eq!(v["composite"]["state"], "rendering");
        assert_eq!(serde_json::from_value::<RecordingDoc>(v).unwrap(), doc);
    }
}
