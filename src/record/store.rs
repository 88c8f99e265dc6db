//! All recordings of the service: the live ones and those found on disk.
//!
//! Creation checks the per-room and global limits and creates the folder under one lock, so
//! two concurrent requests for the same room cannot both win. On start, recordings whose
//! manifest says they were still running are marked `failed` / `interrupted`; their files stay.
//!
//! A voicemail message is a recording owned by a bot ([`RecordingStore::create_message`]): it
//! counts toward the limit of active recordings, but not as "the room's recording" (a room with
//! a voicemail bot can still be recorded, and a bot can record several callers at once).

use super::inspect::inspect;
use super::manifest::{
    read_manifest, remove_stale_temps, write_manifest, CompositeState, FileDoc, RecordingDoc,
    State, StopReason,
};
use super::repair::{repair_dir, RepairError, RepairOutcome};
use super::session::{RecordOptions, Recording};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Errors of the recording layer (mapped to HTTP statuses in one place, `api::error`).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The room is already being recorded.
    #[error("room `{0}` is already being recorded by {1}")]
    RoomBusy(String, String),
    /// Too many active recordings.
    #[error("{0} recordings are active, the configured maximum")]
    TooMany(usize),
    /// No such recording.
    #[error("no recording `{0}`")]
    NotFound(String),
    /// The recording is still active.
    #[error("recording `{0}` is still active: stop it first")]
    Active(String),
    /// Disk trouble.
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
}

/// The registry of recordings.
pub struct RecordingStore {
    dir: PathBuf,
    max_active: usize,
    /// Recordings by id, each with its creation sequence number (for newest-first order).
    map: Mutex<BTreeMap<String, (u64, Arc<Recording>)>>,
    next_seq: std::sync::atomic::AtomicU64,
    /// Owning bot of each voicemail message, by recording id. Locked after `map` when both are.
    owners: Mutex<HashMap<String, String>>,
    /// Object storage's key prefix and wake-up, once it is enabled ([`Self::enable_uploads`]).
    uploads: std::sync::OnceLock<(String, Arc<tokio::sync::Notify>)>,
}

/// A new recording id: sortable by creation time, safe as a folder name.
fn new_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}-{:06x}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// Whether `id` has the shape of a recording id (so it is safe as a path segment).
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Repairs a recording's files in place (seekable again; a no-op for final files), removes
/// manifest temp files a crash left, marks it `failed` / `interrupted` if a crash left it
/// active, and rewrites its manifest with the files' real figures.
pub fn recover(
    dir: &Path,
    doc: &mut RecordingDoc,
) -> Vec<(String, Result<RepairOutcome, RepairError>)> {
    remove_stale_temps(dir);
    let outcomes = repair_dir(dir);
    for (name, outcome) in &outcomes {
        match outcome {
            Ok(o) => tracing::info!(recording = %doc.id, file = %name, outcome = ?o, "repaired"),
            Err(e) => {
                tracing::error!(recording = %doc.id, file = %name, error = %e, "not repaired")
            }
        }
    }
    if doc.state.is_active() {
        doc.state = State::Failed;
        doc.stop_reason = Some(StopReason::Interrupted);
        doc.error =
            Some("the service stopped while recording; files repaired up to the last flush".into());
    }
    // A composite still waiting or rendering when the service stopped will not be rendered.
    if let Some(c) = doc
        .composite
        .as_mut()
        .filter(|c| matches!(c.state, CompositeState::Pending | CompositeState::Rendering))
    {
        c.state = CompositeState::Failed;
        c.error = Some("interrupted: the service stopped before the composite was done".into());
    }
    let listed: Vec<String> = doc.files.iter().map(|f| f.name.clone()).collect();
    for track in &mut doc.tracks {
        let path = dir.join(&track.file);
        let Ok(report) = inspect(&path) else {
            continue;
        };
        track.bytes = report.bytes;
        if let Some(d) = report.duration_ms {
            track.duration_ms = d.max(0.0).round() as u64;
        }
        if !listed.contains(&track.file) {
            doc.files.push(FileDoc {
                name: track.file.clone(),
                bytes: report.bytes,
                url: format!("/api/recordings/{}/files/{}", doc.id, track.file),
                upload: None,
                upload_error: None,
                object: None,
            });
        }
    }
    let chat = dir.join(super::chat::CHAT_FILE);
    match super::chat::repair(&chat) {
        Ok(0) => {}
        Ok(cut) => tracing::info!(recording = %doc.id, cut, "torn chat line cut"),
        Err(e) => tracing::error!(recording = %doc.id, error = %e, "chat log not repaired"),
    }
    if chat.is_file() && !doc.files.iter().any(|f| f.name == super::chat::CHAT_FILE) {
        doc.files.push(FileDoc {
            name: super::chat::CHAT_FILE.into(),
            bytes: std::fs::metadata(&chat).map_or(0, |m| m.len()),
            url: format!(
                "/api/recordings/{}/files/{}",
                doc.id,
                super::chat::CHAT_FILE
            ),
            upload: None,
            upload_error: None,
            object: None,
        });
    }
    for file in &mut doc.files {
        if let Ok(meta) = std::fs::metadata(dir.join(&file.name)) {
            file.bytes = meta.len();
        }
    }
    if let Err(e) = write_manifest(dir, doc) {
        tracing::error!(recording = %doc.id, error = %e, "manifest rewrite failed");
    }
    outcomes
}

/// `recbot repair DIR`: recovers the recording in `dir` if it is one, else every recording
/// below it that a crash left unfinished. Prints what it did; fails if a file could not be
/// repaired.
pub fn repair_command(dir: &Path) -> std::process::ExitCode {
    let folders: Vec<std::path::PathBuf> = if dir.join(super::manifest::MANIFEST_FILE).is_file() {
        vec![dir.to_owned()]
    } else {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut failed = false;
    for folder in folders {
        let Ok(mut doc) = read_manifest(&folder) else {
            continue;
        };
        if !doc.state.is_active() && folder != dir {
            continue;
        }
        for (name, outcome) in recover(&folder, &mut doc) {
            match outcome {
                Ok(o) => println!("{}: {name}: {o:?}", folder.display()),
                Err(e) => {
                    failed = true;
                    println!("{}: {name}: {e}", folder.display());
                }
            }
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

impl RecordingStore {
    /// Opens `dir`, loading every recording found there; unfinished ones become `failed`.
    pub fn open(dir: &Path, max_active: usize) -> Result<Arc<Self>, RecordError> {
        std::fs::create_dir_all(dir)?;
        let mut map = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !path.is_dir() || !valid_id(name) {
                continue;
            }
            // No writer runs yet: any manifest temp file is a crash's leftover.
            let stale = remove_stale_temps(&path);
            if stale > 0 {
                tracing::info!(dir = %path.display(), stale, "removed stale manifest temp files");
            }
            let mut doc = match read_manifest(&path) {
                Ok(doc) if doc.id == name => doc,
                Ok(_) | Err(_) => {
                    tracing::warn!(dir = %path.display(), "no readable manifest; skipped");
                    continue;
                }
            };
            if doc.state.is_active() {
                tracing::warn!(recording = %doc.id, "found unfinished after a restart: marked failed");
                recover(&path, &mut doc);
            }
            map.insert(doc.id.clone(), Recording::from_doc(doc, path));
        }
        // Loaded recordings are ordered by id, which starts with their creation time.
        let map: BTreeMap<String, (u64, Arc<Recording>)> = map
            .into_iter()
            .enumerate()
            .map(|(i, (id, r))| (id, (i as u64, r)))
            .collect();
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            max_active,
            next_seq: std::sync::atomic::AtomicU64::new(map.len() as u64),
            map: Mutex::new(map),
            owners: Mutex::new(HashMap::new()),
            uploads: std::sync::OnceLock::new(),
        }))
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<String, (u64, Arc<Recording>)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn owners(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a recording of `room` in state `starting`, with its folder and manifest.
    pub fn create(
        &self,
        room: &str,
        options: RecordOptions,
    ) -> Result<Arc<Recording>, RecordError> {
        self.create_owned(room, options, None)
    }

    /// Creates a voicemail message of bot `owner` in `room`: a recording like any other, except
    /// that it does not make the room busy (`409`) for `POST /api/recordings`.
    pub fn create_message(
        &self,
        room: &str,
        options: RecordOptions,
        owner: &str,
    ) -> Result<Arc<Recording>, RecordError> {
        self.create_owned(room, options, Some(owner))
    }

    /// Ids of the recordings owned by bot `owner`, oldest first.
    pub fn owned_by(&self, owner: &str) -> Vec<String> {
        let map = self.map();
        let owners = self.owners();
        let mut ids: Vec<(u64, String)> = owners
            .iter()
            .filter(|(_, o)| o.as_str() == owner)
            .filter_map(|(id, _)| map.get(id).map(|(seq, _)| (*seq, id.clone())))
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    fn create_owned(
        &self,
        room: &str,
        options: RecordOptions,
        owner: Option<&str>,
    ) -> Result<Arc<Recording>, RecordError> {
        let mut map = self.map();
        let active: Vec<&Arc<Recording>> = map
            .values()
            .map(|(_, r)| r)
            .filter(|r| r.state().is_active())
            .collect();
        if owner.is_none() {
            let owners = self.owners();
            let busy = active
                .iter()
                .find(|r| r.room() == room && !owners.contains_key(r.id()));
            if let Some(busy) = busy {
                return Err(RecordError::RoomBusy(room.to_owned(), busy.id().to_owned()));
            }
        }
        if active.len() >= self.max_active {
            return Err(RecordError::TooMany(self.max_active));
        }
        let id = new_id();
        let dir = self.dir.join(&id);
        std::fs::create_dir(&dir)?;
        let recording = Recording::new(id.clone(), room.to_owned(), dir, options);
        if let Some((prefix, notify)) = self.uploads.get() {
            recording.enable_uploads(prefix, Arc::clone(notify));
        }
        recording.write_manifest();
        let seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(owner) = owner {
            self.owners().insert(id.clone(), owner.to_owned());
        }
        map.insert(id, (seq, Arc::clone(&recording)));
        Ok(recording)
    }

    /// Sends recordings to object storage (SPEC §7): every recording created from now on, and
    /// those loaded with upload states (a restart resumes them), get keys under `prefix`, and
    /// `notify` is woken when one of their files may have become final. Only the first call
    /// counts.
    pub fn enable_uploads(&self, prefix: &str, notify: Arc<tokio::sync::Notify>) {
        // Under the map lock, so that no recording is created between the two steps.
        let map = self.map();
        if self
            .uploads
            .set((prefix.to_owned(), Arc::clone(&notify)))
            .is_err()
        {
            return;
        }
        for (_, recording) in map.values() {
            recording.enable_uploads(prefix, Arc::clone(&notify));
        }
    }

    /// In a cluster: takes in `recording`, a recording continued here after another node
    /// held it ([`Recording::continued`]), creating its folder. Refused while a recording with
    /// its id is active here, and over the limit of active recordings.
    pub fn adopt(&self, recording: &Arc<Recording>) -> Result<(), RecordError> {
        let mut map = self.map();
        if let Some((_, existing)) = map.get(recording.id()) {
            if existing.state().is_active() {
                return Err(RecordError::RoomBusy(
                    recording.room().to_owned(),
                    existing.id().to_owned(),
                ));
            }
        }
        let active = map.values().filter(|(_, r)| r.state().is_active()).count();
        if active >= self.max_active {
            return Err(RecordError::TooMany(self.max_active));
        }
        std::fs::create_dir_all(recording.dir())?;
        recording.write_manifest();
        let seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        map.insert(recording.id().to_owned(), (seq, Arc::clone(recording)));
        Ok(())
    }

    /// The folder a recording `id` has (or would have) here.
    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// One recording.
    pub fn get(&self, id: &str) -> Result<Arc<Recording>, RecordError> {
        self.map()
            .get(id)
            .map(|(_, r)| Arc::clone(r))
            .ok_or_else(|| RecordError::NotFound(id.to_owned()))
    }

    /// All recordings, newest first.
    pub fn list(&self) -> Vec<Arc<Recording>> {
        let mut all: Vec<(u64, Arc<Recording>)> = self.map().values().cloned().collect();
        all.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        all.into_iter().map(|(_, r)| r).collect()
    }

    /// The active recordings.
    pub fn active(&self) -> Vec<Arc<Recording>> {
        self.map()
            .values()
            .filter(|(_, r)| r.state().is_active())
            .map(|(_, r)| Arc::clone(r))
            .collect()
    }

    /// Deletes a finished recording and its folder.
    pub fn delete(&self, id: &str) -> Result<(), RecordError> {
        let recording = {
            let mut map = self.map();
            let recording = map
                .get(id)
                .map(|(_, r)| Arc::clone(r))
                .ok_or_else(|| RecordError::NotFound(id.to_owned()))?;
            if recording.state().is_active() {
                return Err(RecordError::Active(id.to_owned()));
            }
            map.remove(id);
            self.owners().remove(id);
            recording
        };
        std::fs::remove_dir_all(recording.dir())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::manifest::CompositeDoc;

    /// A composite left pending by a stop of the service is marked failed at recovery; a done
    /// one stays done.
    #[test]
    fn an_unfinished_composite_is_failed_at_recovery() {
        let dir = tempfile::tempdir().unwrap();
        for (before, after) in [
            (CompositeState::Pending, CompositeState::Failed),
            (CompositeState::Rendering, CompositeState::Failed),
            (CompositeState::Done, CompositeState::Done),
        ] {
            let rec = Recording::for_test("r", dir.path());
            rec.set_composite(CompositeDoc {
                state: before,
                progress: 0.5,
                error: None,
            });
            let mut doc = rec.doc();
            doc.state = State::Stopped;
            recover(dir.path(), &mut doc);
            let composite = read_manifest(dir.path()).unwrap().composite.unwrap();
            assert_eq!(composite.state, after);
            assert_eq!(composite.error.is_some(), after != before);
        }
    }
}
