//! One recording: its state, its tracks with live figures, its stop sequence.
//!
//! A [`Recording`] is shared (`Arc`) by the API, the recorder bot and one task per track. The
//! track tasks own their writers; the recording only signals them (stop instant, participant
//! left) and waits for them. State changes go through a plain mutex never held across an await.

use super::manifest::{
    format_time, write_manifest, CompositeDoc, CompositeState, FileDoc, Kind, RecordingDoc, State,
    StopReason, TrackDoc, UploadState,
};
use super::mux::{Lane, MuxFile};
pub use super::stats::{TrackEntry, TrackStats};
use crate::media::clock::{RecordingClock, SharedSenderClock};
use std::collections::HashMap;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a stop waits for track tasks to finalize before giving up on them.
pub const FINALIZE_TIMEOUT: Duration = Duration::from_secs(20);

/// Options of a recording (from `POST /api/recordings`).
#[derive(Debug, Clone, Default)]
pub struct RecordOptions {
    /// Periodic PLI interval.
    pub pli_interval: Option<Duration>,
    /// Stop automatically after this long.
    pub max_duration: Option<Duration>,
    /// Mux each participant's first VP8 and Opus track into one WebM (`"audio": "webm"`).
    pub muxed: bool,
    /// Speak the consent notice to everyone present and to each later joiner (`"notice": true`).
    pub notice: bool,
    /// Write `room-mix.ogg`, every participant's audio mixed live (`"mix": true`).
    pub mix: bool,
    /// Render `room.webm` after the stop at this size (`"composite": true`; implies `mix`).
    pub composite: Option<(u32, u32)>,
}

/// Receives every audio packet of a recording as placed on the recording's clock (after the
/// placement its own file gets, so the mix keeps the files' times: joins, gaps, pauses).
/// Defined here, implemented above (`compose`): calls must not block (the track task makes
/// them between packets).
pub trait AudioTap: Send + Sync {
    /// One Opus packet of `track`; its first sample sits at `at` (48 kHz samples since the
    /// recording's zero). Packets of one track come in placement order.
    fn packet(&self, track: &TrackEntry, at: i64, payload: &bytes::Bytes);
    /// `track` ended (its participant left, or the stop): no more packets from it.
    fn track_ended(&self, track: &TrackEntry);
    /// The recording stopped at `end` (48 kHz samples) and every track ended: finish the
    /// output (finalized and synced when the future resolves), or say why it failed.
    fn finish(&self, end: i64) -> futures::future::BoxFuture<'static, Result<(), String>>;
}

/// A file of the recording written by something other than a track (the mix, the
/// composite): listed in `files` once created, with its live size.
#[derive(Debug)]
pub struct OutputFile {
    /// File name in the recording's folder.
    pub name: String,
    /// Size so far.
    pub bytes: AtomicU64,
    /// The file exists (listed from then on).
    pub created: AtomicBool,
}

/// Why a pause or resume is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    /// The recording is not in state `recording` (starting, stopping, stopped, failed).
    #[error("the recording is not recording")]
    NotRecording,
    /// Resume of a recording that is not paused.
    #[error("the recording is not paused")]
    NotPaused,
}

/// What became of a chat message given to [`Recording::chat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatOutcome {
    /// Written as this line.
    Written(super::chat::ChatLine),
    /// Refused (counted in `chat_dropped` and the metric).
    Dropped(super::chat::Refusal),
    /// The recording is paused: not written (counted in `chat_dropped`).
    Paused,
    /// The recording is not recording (starting or over): ignored.
    Inactive,
    /// The write failed (recorded as the recording's error).
    Failed,
}

struct Inner {
    state: State,
    bot_peer: Option<String>,
    stopped_at: Option<String>,
    stop_instant: Option<Instant>,
    error: Option<String>,
    stop_reason: Option<StopReason>,
    tracks: Vec<Arc<TrackEntry>>,
    names_used: HashSet<String>,
    senders: HashMap<String, SharedSenderClock>,
    muxes: HashMap<String, Arc<MuxFile>>,
    /// A loaded recording's document (no live tracks).
    frozen: Option<RecordingDoc>,
    /// Files written by outputs other than the tracks (listed after the tracks' files).
    outputs: Vec<Arc<OutputFile>>,
    /// Receives the placed audio packets (the live mix).
    audio_tap: Option<Arc<dyn AudioTap>>,
    /// The composite's progress, when one was requested.
    composite: Option<CompositeDoc>,
    /// In a cluster: the node recording it and its takeover count (the document's `node`
    /// and `takeovers`).
    node: Option<(String, u32)>,
    /// In a cluster, after a takeover: the tracks and files written by the nodes that held it
    /// before (listed first in the document).
    prior: Option<(Vec<TrackDoc>, Vec<FileDoc>)>,
    /// `chat.jsonl`.
    chat: super::chat::ChatWriter,
    /// Chat messages refused or sent while paused.
    chat_dropped: u64,
    /// Upload bookkeeping when the recording goes to object storage; `None` without.
    uploads: Option<Uploads>,
}

/// A file's upload state and the store's last answer.
#[derive(Debug, Clone)]
struct FileUpload {
    state: UploadState,
    error: Option<String>,
    /// The key it was (or is being) uploaded under.
    object: Option<String>,
}

/// Upload bookkeeping of a recording kept in object storage (SPEC §7). It lives in the
/// Recording document (`files[].upload`, `upload`), so every manifest write keeps the queue on
/// disk and a restart resumes it.
#[derive(Debug, Clone)]
struct Uploads {
    /// Key prefix for files without a key yet (`None` until the storage says it).
    prefix: Option<String>,
    /// By file name; a listed file missing here is `pending`.
    files: HashMap<String, FileUpload>,
    /// The manifest's own state: it goes last, `uploaded` means the bucket holds it all.
    manifest: UploadState,
}

/// What object storage may do with a recording now (see [`Recording::upload_work`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadWork {
    /// Final files not uploaded yet, in listing order.
    pub files: Vec<String>,
    /// Files not uploaded yet (final or not).
    pub unfinished: usize,
    /// Every file is uploaded and the recording has ended: the manifest can go.
    pub manifest_ready: bool,
}

/// A recording, live or finished.
pub struct Recording {
    id: String,
    room: String,
    dir: PathBuf,
    started_at: String,
    clock: RecordingClock,
    options: RecordOptions,
    inner: Mutex<Inner>,
    stop_tx: watch::Sender<Option<Instant>>,
    left_tx: broadcast::Sender<String>,
    leave: CancellationToken,
    done_tx: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Held for a whole manifest write (snapshot and file), so writes of this recording never
    /// overlap and the last one to land carries the newest document. Taken before `inner`.
    manifest: Mutex<()>,
    /// A [`Recording::write_manifest_soon`] job is queued and has not taken its snapshot.
    manifest_soon: AtomicBool,
    /// Woken when a file may have become final (a track ended, the recording stopped), for
    /// the object storage above this layer.
    uploads_changed: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
}

/// What a track task gets from its recording.
pub struct TrackContext {
    /// The recording.
    pub recording: Arc<Recording>,
    /// The track's entry (figures to update).
    pub entry: Arc<TrackEntry>,
    /// Full path of the file to write.
    pub path: PathBuf,
    /// Becomes `Some(stop instant)` when the stop is requested.
    pub stop: watch::Receiver<Option<Instant>>,
    /// Ids of participants that left.
    pub left: broadcast::Receiver<String>,
    /// The participant's wallclock mapping, shared by all its tracks.
    pub sender: SharedSenderClock,
    /// Receives every audio payload as it arrives (a voicemail bot listens for silence).
    pub audio_tap: Option<tokio::sync::mpsc::Sender<(Instant, bytes::Bytes)>>,
    /// Receives every audio packet as placed on the recording's clock (the live mix).
    pub placed_audio: Option<Arc<dyn AudioTap>>,
}

/// The first free `{stem}-{kind}-{n}.{extension}` of a recording.
fn next_name(inner: &Inner, name: &str, participant: &str, kind: &str, extension: &str) -> String {
    let stem = file_stem(name, participant);
    (1..)
        .map(|i| format!("{stem}-{kind}-{i}.{extension}"))
        .find(|f| !inner.names_used.contains(f))
        .unwrap_or_default()
}

impl Inner {
    /// Adds a track entry writing to `file`; returns it with its participant's sender clock.
    fn register(
        &mut self,
        participant: &str,
        participant_name: &str,
        kind: Kind,
        file: String,
    ) -> (Arc<TrackEntry>, SharedSenderClock) {
        self.names_used.insert(file.clone());
        let entry = Arc::new(TrackEntry {
            id: format!("t{}", self.tracks.len() + 1),
            participant: participant.to_owned(),
            participant_name: participant_name.to_owned(),
            kind,
            file,
            stats: TrackStats {
                start_offset_ms: AtomicI64::new(i64::MIN),
                ..TrackStats::default()
            },
        });
        self.tracks.push(Arc::clone(&entry));
        let sender = Arc::clone(self.senders.entry(participant.to_owned()).or_default());
        (entry, sender)
    }
}

impl Uploads {
    /// The bookkeeping a loaded document carries (`recording_state`: its `upload`). An upload
    /// a restart interrupted is `pending` again.
    fn from_doc(doc: &RecordingDoc, recording_state: UploadState) -> Self {
        let suffix = |name: &str| format!("{}/{name}", doc.id);
        let prefix = doc.files.iter().find_map(|f| {
            let object = f.object.as_deref()?;
            object.strip_suffix(&suffix(&f.name)).map(str::to_owned)
        });
        let files = doc
            .files
            .iter()
            .filter_map(|f| {
                let state = match f.upload? {
                    UploadState::Uploading => UploadState::Pending,
                    state => state,
                };
                let upload = FileUpload {
                    state,
                    error: f.upload_error.clone(),
                    object: f.object.clone(),
                };
                Some((f.name.clone(), upload))
            })
            .collect();
        Self {
            prefix,
            files,
            manifest: if recording_state == UploadState::Uploaded {
                UploadState::Uploaded
            } else {
                UploadState::Pending
            },
        }
    }

    fn key(&self, id: &str, name: &str) -> Option<String> {
        match self.files.get(name).and_then(|f| f.object.clone()) {
            Some(object) => Some(object),
            None => Some(format!("{}{id}/{name}", self.prefix.as_deref()?)),
        }
    }

    /// Fills in the upload fields of `doc`: each file's, and the recording's: the worst of its
    /// files' states, then the manifest's once every file is uploaded (so `uploaded` means
    /// the manifest is in the bucket too).
    fn fill(&self, id: &str, doc: &mut RecordingDoc) {
        let mut worst = UploadState::Uploaded;
        for file in &mut doc.files {
            let (state, error) = match self.files.get(&file.name) {
                Some(f) => (f.state, f.error.clone()),
                None => (UploadState::Pending, None),
            };
            file.upload = Some(state);
            file.upload_error = error;
            file.object = self.key(id, &file.name);
            worst = worst.max(state);
        }
        if worst == UploadState::Uploaded {
            worst = self.manifest;
        }
        doc.upload = Some(worst);
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps only `[A-Za-z0-9_-]` of a display name (at most 32), or falls back to `fallback`.
pub fn file_stem(name: &str, fallback: &str) -> String {
    let stem: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect();
    if stem.is_empty() {
        fallback.chars().take(32).collect()
    } else {
        stem
    }
}

impl Recording {
    /// A new live recording in state `starting`, accepted at `now`.
    pub fn new(id: String, room: String, dir: PathBuf, options: RecordOptions) -> Arc<Self> {
        let started_at = format_time(time::OffsetDateTime::now_utc());
        Arc::new(Self::fresh(
            id,
            room,
            dir,
            started_at,
            Instant::now(),
            options,
        ))
    }

    /// In a cluster: recording `prior` (its last shared document), continued on this node
    /// after the node that held it died or drained. Its clock keeps the original start
    /// (`started_at` was `elapsed` ago), its earlier tracks and files stay listed, and new
    /// files take the next free index (`alice-video-2.webm`).
    pub fn continued(
        prior: &RecordingDoc,
        dir: PathBuf,
        options: RecordOptions,
        elapsed: Duration,
    ) -> Arc<Self> {
        let origin = Instant::now()
            .checked_sub(elapsed)
            .unwrap_or_else(Instant::now);
        let recording = Self::fresh(
            prior.id.clone(),
            prior.room.clone(),
            dir,
            prior.started_at.clone(),
            origin,
            options,
        );
        {
            let mut inner = lock(&recording.inner);
            inner.names_used = prior
                .files
                .iter()
                .map(|f| f.name.clone())
                .chain(prior.tracks.iter().map(|t| t.file.clone()))
                .collect();
            inner.prior = Some((prior.tracks.clone(), prior.files.clone()));
        }
        Arc::new(recording)
    }

    /// A live recording in state `starting` with nothing recorded yet, its clock's zero at
    /// `origin`.
    fn fresh(
        id: String,
        room: String,
        dir: PathBuf,
        started_at: String,
        origin: Instant,
        options: RecordOptions,
    ) -> Self {
        let chat_path = dir.join(super::chat::CHAT_FILE);
        Self {
            id,
            room,
            dir,
            started_at,
            clock: RecordingClock::new(origin),
            options,
            inner: Mutex::new(Inner {
                state: State::Starting,
                bot_peer: None,
                stopped_at: None,
                stop_instant: None,
                error: None,
                stop_reason: None,
                tracks: Vec::new(),
                names_used: HashSet::new(),
                senders: HashMap::new(),
                muxes: HashMap::new(),
                frozen: None,
                chat: super::chat::ChatWriter::new(chat_path),
                chat_dropped: 0,
                uploads: None,
                node: None,
                prior: None,
                outputs: Vec::new(),
                audio_tap: None,
                composite: None,
            }),
            uploads_changed: std::sync::OnceLock::new(),
            stop_tx: watch::Sender::new(None),
            left_tx: broadcast::Sender::new(64),
            leave: CancellationToken::new(),
            done_tx: watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
            manifest: Mutex::new(()),
            manifest_soon: AtomicBool::new(false),
        }
    }

    /// A finished recording loaded from its manifest.
    pub fn from_doc(doc: RecordingDoc, dir: PathBuf) -> Arc<Self> {
        let rec = Self::new(
            doc.id.clone(),
            doc.room.clone(),
            dir,
            RecordOptions::default(),
        );
        {
            let mut inner = lock(&rec.inner);
            inner.state = doc.state;
            inner.uploads = doc
                .upload
                .map(|recording_state| Uploads::from_doc(&doc, recording_state));
            inner.frozen = Some(doc);
        }
        rec.done_tx.send_replace(true);
        rec
    }

    /// Recording id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Room recorded.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The recording's clock (its pauses included: place media by its recorded time).
    pub fn clock(&self) -> &RecordingClock {
        &self.clock
    }

    /// Its options.
    pub fn options(&self) -> &RecordOptions {
        &self.options
    }

    /// Current state.
    pub fn state(&self) -> State {
        lock(&self.inner).state
    }

    /// The document as the API and the manifest show it, with live figures.
    pub fn doc(&self) -> RecordingDoc {
        let inner = lock(&self.inner);
        let mut doc = self.bare_doc(&inner);
        if let Some(uploads) = &inner.uploads {
            uploads.fill(&self.id, &mut doc);
        }
        doc
    }

    /// The document without its upload fields filled in.
    fn bare_doc(&self, inner: &Inner) -> RecordingDoc {
        if let Some(doc) = &inner.frozen {
            return doc.clone();
        }
        let live: Vec<TrackDoc> = inner.tracks.iter().map(|t| t.doc()).collect();
        let (mut tracks, mut files) = inner.prior.clone().unwrap_or_default();
        // Ids stay unique after the earlier holders' tracks.
        let offset = tracks.len();
        for (entry, doc) in inner.tracks.iter().zip(&live) {
            if !entry.stats.file_created.load(Ordering::Relaxed)
                || files.iter().any(|f| f.name == doc.file)
            {
                continue;
            }
            files.push(FileDoc {
                name: doc.file.clone(),
                bytes: doc.bytes,
                url: format!("/api/recordings/{}/files/{}", self.id, doc.file),
                upload: None,
                upload_error: None,
                object: None,
            });
        }
        if inner.chat.created() {
            files.push(FileDoc {
                name: super::chat::CHAT_FILE.into(),
                bytes: inner.chat.bytes(),
                url: format!(
                    "/api/recordings/{}/files/{}",
                    self.id,
                    super::chat::CHAT_FILE
                ),
                upload: None,
                upload_error: None,
                object: None,
            });
        }
        let now = inner.stop_instant.unwrap_or_else(Instant::now);
        tracks.extend(live.into_iter().map(|mut t| {
            if offset > 0 {
                t.id = format!(
                    "t{}",
                    offset + t.id.trim_start_matches('t').parse::<usize>().unwrap_or(0)
                );
            }
            t
        }));
        for out in &inner.outputs {
            if out.created.load(Ordering::Relaxed) {
                files.push(FileDoc {
                    name: out.name.clone(),
                    bytes: out.bytes.load(Ordering::Relaxed),
                    url: format!("/api/recordings/{}/files/{}", self.id, out.name),
                    upload: None,
                    upload_error: None,
                    object: None,
                });
            }
        }
        RecordingDoc {
            id: self.id.clone(),
            room: self.room.clone(),
            state: inner.state,
            bot_peer: inner.bot_peer.clone(),
            started_at: self.started_at.clone(),
            stopped_at: inner.stopped_at.clone(),
            error: inner.error.clone(),
            stop_reason: inner.stop_reason,
            tracks,
            files,
            node: inner.node.as_ref().map(|(n, _)| n.clone()),
            takeovers: inner.node.as_ref().map(|(_, t)| *t),
            paused: self.clock.is_paused(),
            paused_ms: self.clock.paused_total(now).as_millis() as u64,
            chat_messages: inner.chat.lines(),
            chat_dropped: inner.chat_dropped,
            upload: None,
            composite: inner.composite.clone(),
        }
    }

    /// Wakes the object storage: a file may have become final. A no-op without storage.
    pub fn files_changed(&self) {
        if let Some(notify) = self.uploads_changed.get() {
            notify.notify_one();
        }
    }

    /// Puts this recording in object storage's queue (SPEC §7): its files become `pending`,
    /// keyed `{prefix}{id}/{name}`, and `notify` is woken whenever a file may have become final.
    /// A recording loaded with upload states keeps them (and the keys it had); one loaded
    /// without (recorded before storage was configured) stays local. Idempotent.
    pub fn enable_uploads(&self, prefix: &str, notify: Arc<tokio::sync::Notify>) {
        let _ = self.uploads_changed.set(notify);
        {
            let mut inner = lock(&self.inner);
            let live = inner.frozen.is_none();
            match &mut inner.uploads {
                Some(uploads) => {
                    uploads.prefix.get_or_insert_with(|| prefix.to_owned());
                }
                None if live => {
                    inner.uploads = Some(Uploads {
                        prefix: Some(prefix.to_owned()),
                        files: HashMap::new(),
                        manifest: UploadState::Pending,
                    });
                }
                None => return,
            }
        }
        self.files_changed();
    }

    /// What object storage may do now, or `None` when it has nothing left to do here (no
    /// storage, or the manifest is in the bucket). A file is final once every track writing
    /// it has ended, or the recording has (a loaded recording's files are all final).
    pub fn upload_work(&self) -> Option<UploadWork> {
        let inner = lock(&self.inner);
        let uploads = inner.uploads.as_ref()?;
        if uploads.manifest == UploadState::Uploaded {
            return None;
        }
        let ended = !inner.state.is_active();
        let doc = self.bare_doc(&inner);
        let mut work = UploadWork {
            files: Vec::new(),
            unfinished: 0,
            manifest_ready: false,
        };
        // A composite being rendered is not final, and the manifest waits for it.
        let composing = inner.composite.as_ref().is_some_and(|c| {
            matches!(c.state, CompositeState::Pending | CompositeState::Rendering)
        });
        // After a takeover, the files of the nodes that held it before are theirs to upload.
        let theirs = |name: &str| {
            inner
                .prior
                .as_ref()
                .is_some_and(|(_, files)| files.iter().any(|f| f.name == name))
        };
        for file in &doc.files {
            let uploaded = uploads
                .files
                .get(&file.name)
                .is_some_and(|f| f.state == UploadState::Uploaded);
            if uploaded || theirs(&file.name) {
                continue;
            }
            work.unfinished += 1;
            // A media file is final once every track writing it has ended; a file that no
            // track writes (chat.jsonl) grows until the recording ends.
            let mut writers = inner.tracks.iter().filter(|t| t.file == file.name);
            let is_final =
                (ended && !(composing && inner.outputs.iter().any(|o| o.name == file.name))) || {
                    let mut any = false;
                    let all_ended = writers.all(|t| {
                        any = true;
                        t.stats.ended.load(Ordering::Acquire)
                    });
                    any && all_ended
                };
            if is_final {
                work.files.push(file.name.clone());
            }
        }
        work.manifest_ready = ended && work.unfinished == 0 && !composing;
        Some(work)
    }

    /// The object key of file `name` (`manifest.json` included): the key it was uploaded
    /// under, else `{prefix}{id}/{name}`. `None` without storage.
    pub fn object_key(&self, name: &str) -> Option<String> {
        let inner = lock(&self.inner);
        let uploads = inner.uploads.as_ref()?;
        uploads.key(&self.id, name)
    }

    /// The upload state of file `name` (`None` without storage).
    pub fn file_upload(&self, name: &str) -> Option<UploadState> {
        let inner = lock(&self.inner);
        let uploads = inner.uploads.as_ref()?;
        Some(
            uploads
                .files
                .get(name)
                .map_or(UploadState::Pending, |f| f.state),
        )
    }

    /// Sets file `name`'s upload state and the store's last answer (kept only while
    /// `retrying`). The caller rewrites the manifest when the change must survive a restart.
    pub fn set_file_upload(&self, name: &str, state: UploadState, error: Option<String>) {
        let mut inner = lock(&self.inner);
        let id = self.id.clone();
        let Some(uploads) = inner.uploads.as_mut() else {
            return;
        };
        let object = uploads.key(&id, name);
        let entry = uploads.files.entry(name.to_owned()).or_insert(FileUpload {
            state,
            error: None,
            object: None,
        });
        entry.state = state;
        entry.error = error.filter(|_| state == UploadState::Retrying);
        entry.object = entry.object.take().or(object);
    }

    /// Sets the manifest's upload state (`uploaded`: the recording in the bucket is complete).
    pub fn set_manifest_upload(&self, state: UploadState) {
        if let Some(uploads) = lock(&self.inner).uploads.as_mut() {
            uploads.manifest = state;
        }
    }

    /// Pauses the recording now: nothing is written until [`Self::resume`], files stay open,
    /// and the paused span is cut out of every file (the clock's recorded time skips it).
    /// Idempotent: pausing a paused recording changes nothing. Returns whether this call
    /// paused it.
    pub fn pause(&self) -> Result<bool, PauseError> {
        let paused = {
            let inner = lock(&self.inner);
            if inner.state != State::Recording {
                return Err(PauseError::NotRecording);
            }
            self.clock.pause(Instant::now())
        };
        if paused {
            tracing::info!(recording = %self.id, "paused");
            self.write_manifest();
        }
        Ok(paused)
    }

    /// Resumes a paused recording now. Video files go on with a keyframe (requested at once).
    pub fn resume(&self) -> Result<(), PauseError> {
        {
            let inner = lock(&self.inner);
            if inner.state != State::Recording {
                return Err(PauseError::NotRecording);
            }
            if !self.clock.resume(Instant::now()) {
                return Err(PauseError::NotPaused);
            }
        }
        tracing::info!(recording = %self.id, "resumed");
        self.write_manifest();
        Ok(())
    }

    /// A chat message from `from` (display name `name`) arrived at `at` over a DataChannel:
    /// written to `chat.jsonl` at its recorded time, unless refused, paused or inactive.
    pub fn chat(&self, from: &str, name: &str, data: &[u8], at: Instant) -> ChatOutcome {
        let (outcome, created) = {
            let mut inner = lock(&self.inner);
            if inner.state != State::Recording || inner.frozen.is_some() {
                return ChatOutcome::Inactive;
            }
            let text = match super::chat::parse_message(data) {
                Ok(text) => text,
                Err(refusal) => {
                    inner.chat_dropped += 1;
                    metrics::counter!(crate::telemetry::CHAT_DROPPED).increment(1);
                    tracing::debug!(recording = %self.id, from, %refusal, "chat message dropped");
                    return ChatOutcome::Dropped(refusal);
                }
            };
            let Some(t) = self.clock.recorded(self.clock.seconds(at)) else {
                inner.chat_dropped += 1;
                metrics::counter!(crate::telemetry::CHAT_DROPPED).increment(1);
                return ChatOutcome::Paused;
            };
            let t_ms = (t * 1000.0).round() as i64;
            match inner.chat.write(t_ms, from, name, &text) {
                Ok((line, created)) => {
                    metrics::counter!(crate::telemetry::CHAT_MESSAGES).increment(1);
                    (ChatOutcome::Written(line), created)
                }
                Err(e) => {
                    drop(inner);
                    tracing::error!(recording = %self.id, error = %e, "chat write failed");
                    metrics::counter!(crate::telemetry::WRITE_ERRORS).increment(1);
                    let mut inner = lock(&self.inner);
                    if inner.error.is_none() {
                        inner.error = Some(format!("{}: {e}", super::chat::CHAT_FILE));
                    }
                    return ChatOutcome::Failed;
                }
            }
        };
        if created {
            // Listed on disk at once, like a media file.
            self.write_manifest();
        }
        outcome
    }

    /// Tracks recorded by this node (after a takeover, the document lists the earlier
    /// holders' tracks first, then these).
    pub fn live_tracks(&self) -> usize {
        lock(&self.inner).tracks.len()
    }

    /// In a cluster: names the node recording it and how many takeovers it had (shown as the
    /// document's `node` and `takeovers`; written with the next manifest write).
    pub fn set_node(&self, node: &str, takeovers: u32) {
        lock(&self.inner).node = Some((node.to_owned(), takeovers));
    }

    /// Rewrites `manifest.json`; failures are logged (the recording goes on).
    pub fn write_manifest(&self) {
        if let Err(e) = self.try_write_manifest() {
            tracing::error!(recording = %self.id, error = %e, "manifest write failed");
        }
    }

    /// A recording `id` of the room `room`, in `dir`, with the default options, for tests.
    #[cfg(test)]
    pub(crate) fn for_test(id: &str, dir: &Path) -> Arc<Self> {
        Self::new(
            id.into(),
            "room".into(),
            dir.to_owned(),
            RecordOptions::default(),
        )
    }

    /// Rewrites `manifest.json` on the blocking pool (at once without a runtime): for callers
    /// on a media thread, which must not wait for the fsyncs. Calls made while a job is queued
    /// share it: a room's file starts cost one write, not one each. Nothing is lost: the job
    /// clears the flag before it takes its snapshot, so a change after the snapshot queues
    /// another job.
    pub fn write_manifest_soon(self: &Arc<Self>) {
        if self.manifest_soon.swap(true, Ordering::AcqRel) {
            return;
        }
        let recording = Arc::clone(self);
        let job = move || {
            recording.manifest_soon.store(false, Ordering::Release);
            recording.write_manifest();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(job)),
            Err(_) => job(),
        }
    }

    /// Rewrites `manifest.json` with the current document. Writes of one recording are
    /// serialized (the snapshot is taken under the same lock), so concurrent callers never
    /// interleave and the manifest on disk is never older than the last finished write's start.
    pub fn try_write_manifest(&self) -> std::io::Result<()> {
        let _one_at_a_time = self.manifest.lock().unwrap_or_else(|e| e.into_inner());
        write_manifest(&self.dir, &self.doc())
    }

    /// The recorder joined the room as `peer`: state `recording`.
    pub fn set_recording(&self, peer: &str) {
        {
            let mut inner = lock(&self.inner);
            inner.bot_peer = Some(peer.to_owned());
            if inner.state == State::Starting {
                inner.state = State::Recording;
            }
        }
        self.write_manifest();
    }

    /// Marks the recording failed before it got going (e.g. the recorder could not join).
    pub fn fail(&self, error: String) {
        {
            let mut inner = lock(&self.inner);
            inner.state = State::Failed;
            inner.error = Some(error);
            inner.stop_reason = Some(StopReason::Error);
            inner.stopped_at = Some(format_time(time::OffsetDateTime::now_utc()));
        }
        // The mix ends with its thread once no track holds the tap any more.
        let tap = lock(&self.inner).audio_tap.take();
        drop(tap);
        self.stop_tx.send_replace(Some(Instant::now()));
        self.leave.cancel();
        self.done_tx.send_replace(true);
        self.write_manifest();
        self.files_changed();
    }

    /// Registers a new track of `participant` with a file of its own and returns what its task
    /// needs, or `None` once the recording is stopping (media after the stop request is not
    /// recorded).
    pub fn add_track(
        self: &Arc<Self>,
        participant: &str,
        participant_name: &str,
        kind: Kind,
        extension: &str,
    ) -> Option<TrackContext> {
        let (entry, sender) = {
            let mut inner = lock(&self.inner);
            if !matches!(inner.state, State::Starting | State::Recording) {
                return None;
            }
            let kind_name = match kind {
                Kind::Video => "video",
                Kind::Audio => "audio",
            };
            let file = next_name(&inner, participant_name, participant, kind_name, extension);
            inner.register(participant, participant_name, kind, file)
        };
        self.write_manifest();
        Some(self.context(entry, sender))
    }

    /// Registers a track in the participant's muxed file (`"audio": "webm"`). `None` when the
    /// recording is stopping or the participant's file cannot take it (its lane is taken or
    /// the file already started): then the track gets a file of its own.
    pub fn add_muxed_track(
        self: &Arc<Self>,
        participant: &str,
        participant_name: &str,
        kind: Kind,
    ) -> Option<(TrackContext, Arc<MuxFile>)> {
        let lane = match kind {
            Kind::Video => Lane::Video,
            Kind::Audio => Lane::Audio,
        };
        let (entry, sender, mux) = {
            let mut inner = lock(&self.inner);
            if !matches!(inner.state, State::Starting | State::Recording) {
                return None;
            }
            let mux = match inner.muxes.get(participant) {
                Some(mux) if mux.can_attach(lane) => Arc::clone(mux),
                Some(_) => return None,
                None => {
                    let name = next_name(&inner, participant_name, participant, "av", "webm");
                    let mux = MuxFile::new(name.clone(), self.dir.join(&name));
                    inner.names_used.insert(name);
                    inner.muxes.insert(participant.to_owned(), Arc::clone(&mux));
                    mux
                }
            };
            let (entry, sender) =
                inner.register(participant, participant_name, kind, mux.name().to_owned());
            if !mux.attach(lane, Arc::clone(&entry)) {
                inner.tracks.retain(|t| !Arc::ptr_eq(t, &entry));
                return None;
            }
            (entry, sender, mux)
        };
        self.write_manifest();
        Some((self.context(entry, sender), mux))
    }

    fn context(
        self: &Arc<Self>,
        entry: Arc<TrackEntry>,
        sender: SharedSenderClock,
    ) -> TrackContext {
        TrackContext {
            recording: Arc::clone(self),
            path: self.dir.join(&entry.file),
            entry,
            stop: self.stop_tx.subscribe(),
            left: self.left_tx.subscribe(),
            sender,
            audio_tap: None,
            placed_audio: lock(&self.inner).audio_tap.clone(),
        }
    }

    /// Sets the receiver of the placed audio packets (before the first track is added; tracks
    /// added earlier do not feed it).
    pub fn set_audio_tap(&self, tap: Arc<dyn AudioTap>) {
        lock(&self.inner).audio_tap = Some(tap);
    }

    /// Reserves the file `name` for an output other than a track; `None` if the name is taken.
    /// The file is listed once its `created` flag is set.
    pub fn add_output(&self, name: &str) -> Option<Arc<OutputFile>> {
        let mut inner = lock(&self.inner);
        if !inner.names_used.insert(name.to_owned()) {
            return None;
        }
        let out = Arc::new(OutputFile {
            name: name.to_owned(),
            bytes: AtomicU64::new(0),
            created: AtomicBool::new(false),
        });
        inner.outputs.push(Arc::clone(&out));
        Some(out)
    }

    /// Sets the composite's state (shown in the document; the caller rewrites the manifest).
    pub fn set_composite(&self, composite: CompositeDoc) {
        let mut inner = lock(&self.inner);
        match &mut inner.frozen {
            Some(doc) => doc.composite = Some(composite),
            None => inner.composite = Some(composite),
        }
    }

    /// Keeps a track task so the stop can wait for it.
    pub fn keep_task(&self, task: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// A participant left: its tracks end now.
    pub fn participant_left(&self, participant: &str) {
        let _ = self.left_tx.send(participant.to_owned());
    }

    /// Cancelled when the recorder should leave the room (after the files are final).
    pub fn leave_signal(&self) -> CancellationToken {
        self.leave.clone()
    }

    /// Stops the recording: tracks stop taking media now, files are finalized, the manifest is
    /// final, the recorder leaves. Returns when all that is done, and whether this call was the
    /// one that stopped it. Idempotent: a second call waits for the first and returns false.
    pub async fn stop(self: &Arc<Self>, reason: StopReason) -> bool {
        let first = {
            let mut inner = lock(&self.inner);
            match inner.state {
                State::Starting | State::Recording => {
                    inner.state = State::Stopping;
                    inner.stop_reason = Some(reason);
                    inner.stopped_at = Some(format_time(time::OffsetDateTime::now_utc()));
                    let now = Instant::now();
                    inner.stop_instant = Some(now);
                    // A stop while paused ends the pause there: `paused_ms` counts to the stop.
                    self.clock.resume(now);
                    true
                }
                _ => false,
            }
        };
        if !first {
            let mut done = self.done_tx.subscribe();
            let _ = done.wait_for(|d| *d).await;
            return false;
        }
        tracing::info!(recording = %self.id, room = %self.room, ?reason, "stopping");
        let started = Instant::now();
        self.stop_tx.send_replace(lock(&self.inner).stop_instant);
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let abort = task.abort_handle();
            match tokio::time::timeout(FINALIZE_TIMEOUT, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(recording = %self.id, error = %e, "track task died"),
                Err(_) => {
                    abort.abort();
                    tracing::error!(recording = %self.id, "track task did not finalize in time");
                }
            }
        }
        let tap = lock(&self.inner).audio_tap.take();
        if let Some(tap) = tap {
            let end = self.stop_instant_samples();
            if let Err(e) = tap.finish(end).await {
                tracing::error!(recording = %self.id, error = %e, "mix not finalized");
                metrics::counter!(crate::telemetry::WRITE_ERRORS).increment(1);
                let mut inner = lock(&self.inner);
                if inner.error.is_none() {
                    inner.error = Some(e);
                }
            }
        }
        {
            let mut inner = lock(&self.inner);
            if let Err(e) = inner.chat.finish() {
                tracing::error!(recording = %self.id, error = %e, "chat log fsync failed");
                metrics::counter!(crate::telemetry::WRITE_ERRORS).increment(1);
                if inner.error.is_none() {
                    inner.error = Some(format!("{}: {e}", super::chat::CHAT_FILE));
                }
            }
            // A recording cut short by the disk or an error ends `failed`, with what it has.
            inner.state = match reason {
                StopReason::DiskFull | StopReason::Error => State::Failed,
                _ => State::Stopped,
            };
            if reason == StopReason::DiskFull && inner.error.is_none() {
                inner.error = Some("disk full: stopped cleanly, files kept".into());
            }
        }
        if let Err(e) = self.try_write_manifest() {
            // The final manifest may be missing or stale on disk: say so where it can be seen.
            tracing::error!(recording = %self.id, error = %e, "final manifest write failed");
            metrics::counter!(crate::telemetry::WRITE_ERRORS).increment(1);
            let mut inner = lock(&self.inner);
            if inner.error.is_none() {
                inner.error = Some(format!("{}: {e}", super::manifest::MANIFEST_FILE));
            }
        }
        self.leave.cancel();
        self.done_tx.send_replace(true);
        self.files_changed();
        metrics::histogram!(crate::telemetry::FINALIZE_SECONDS)
            .record(started.elapsed().as_secs_f64());
        tracing::info!(
            recording = %self.id,
            finalize_ms = started.elapsed().as_millis() as u64,
            "stopped"
        );
        true
    }

    /// When the stop was requested (media after it is not recorded); `None` before.
    pub fn stop_instant(&self) -> Option<Instant> {
        lock(&self.inner).stop_instant
    }

    /// The stop instant on the recording's clock in 48 kHz samples (now while not stopping).
    fn stop_instant_samples(&self) -> i64 {
        let at = lock(&self.inner).stop_instant.unwrap_or_else(Instant::now);
        // Recorded time: paused spans are cut out of the mix as out of every file.
        (self.clock.recorded_clamped(self.clock.seconds(at)) * 48_000.0).round() as i64
    }

    /// Records a write error of one track (the others go on).
    pub fn track_error(&self, track: &TrackEntry, error: &dyn std::fmt::Display) {
        tracing::error!(recording = %self.id, file = %track.file, %error, "track write failed");
        metrics::counter!(crate::telemetry::WRITE_ERRORS).increment(1);
        let mut inner = lock(&self.inner);
        if inner.error.is_none() {
            inner.error = Some(format!("{}: {error}", track.file));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::source::{Relay, SourceEvent};
    use crate::record::manifest::{is_temp_name, read_manifest};
    use std::sync::atomic::AtomicBool;

    /// Many threads register tracks and rewrite one recording's manifest at once: every write
    /// succeeds, a reader never sees a torn manifest, no temp file is left, and after each
    /// round of simultaneous writes the manifest on disk is the recording's latest document
    /// (no older snapshot lands last).
    #[test]
    fn concurrent_manifest_writes_of_one_recording() {
        const WRITERS: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let rec = Recording::for_test("r", dir.path());
        rec.try_write_manifest().unwrap();
        // Problems are collected, not panicked on: a panicking thread would leave the others
        // waiting at the barrier.
        let problems = Mutex::new(Vec::<String>::new());
        let problem = |p: String| problems.lock().unwrap().push(p);
        let done = AtomicBool::new(false);
        let barrier = std::sync::Barrier::new(WRITERS);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    if let Err(e) = read_manifest(dir.path()) {
                        problem(format!("torn manifest: {e}"));
                    }
                }
            });
            let writers: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let (rec, barrier, dir, problem) = (&rec, &barrier, &dir, &problem);
                    s.spawn(move || {
                        let mut tracks = Vec::new();
                        for i in 0..25 {
                            let participant = format!("p{w}-{i}");
                            match rec.add_track(&participant, "name", Kind::Audio, "ogg") {
                                Some(ctx) => tracks.push(ctx.entry),
                                None => problem(format!("writer {w}: no track {i}")),
                            }
                            if let Err(e) = rec.try_write_manifest() {
                                problem(format!("writer {w} write {i}: {e}"));
                            }
                        }
                        // Live figures change between writes, as a track task's do.
                        for round in 0..30 {
                            barrier.wait();
                            if let Some(track) = tracks.get(round % 25) {
                                track.stats.frames.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Err(e) = rec.try_write_manifest() {
                                problem(format!("writer {w} round {round}: {e}"));
                            }
                            barrier.wait();
                            if w == 0 && read_manifest(dir.path()).ok() != Some(rec.doc()) {
                                problem(format!("round {round}: an older snapshot landed last"));
                            }
                            barrier.wait();
                        }
                    })
                })
                .collect();
            for writer in writers {
                if writer.join().is_err() {
                    problem("a writer panicked".into());
                }
            }
            done.store(true, Ordering::Relaxed);
        });
        let problems = problems.into_inner().unwrap();
        assert!(problems.is_empty(), "{problems:#?}");
        let on_disk = read_manifest(dir.path()).unwrap();
        assert_eq!(on_disk.tracks.len(), WRITERS * 25);
        assert_eq!(on_disk, rec.doc());
        let temps: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| is_temp_name(n))
            .collect();
        assert!(temps.is_empty(), "{temps:?}");
    }

    /// Manifest writes requested from a media thread land off it: a burst of requests (a
    /// room's file starts) ends with the newest document on disk, a change made after a
    /// request and requested again is not lost, and without a runtime the write is at once.
    #[tokio::test(flavor = "current_thread")]
    async fn manifest_writes_soon_land_the_newest_document() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recording::for_test("r", dir.path());
        for i in 0..50 {
            let _ = rec.add_track(&format!("p{i}"), "name", Kind::Audio, "ogg");
            rec.write_manifest_soon();
        }
        let settled = |want: usize| {
            let dir = dir.path().to_owned();
            let rec = Arc::clone(&rec);
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let on_disk = read_manifest(&dir).ok();
                    if on_disk.as_ref().is_some_and(|d| d.tracks.len() == want) {
                        return on_disk == Some(rec.doc());
                    }
                    assert!(
                        Instant::now() < deadline,
                        "manifest never had {want} tracks"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        assert!(settled(50).await, "the newest document landed");
        let _ = rec.add_track("late", "name", Kind::Video, "webm");
        rec.write_manifest_soon();
        assert!(settled(51).await, "a change after a write is written too");
        let outside = Arc::clone(&rec);
        std::thread::spawn(move || {
            let _ = outside.add_track("outside", "name", Kind::Audio, "ogg");
            outside.write_manifest_soon();
        })
        .join()
        .unwrap();
        assert_eq!(read_manifest(dir.path()).unwrap().tracks.len(), 52);
    }

    /// With storage, a file is queued once every track writing it has ended (a muxed file
    /// waits for both lanes), or once the recording has; the manifest only after every file
    /// is uploaded; and the states, errors and keys live in the document and survive a reload.
    #[test]
    fn files_are_final_when_their_tracks_end_and_the_manifest_goes_last() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recording::for_test("r1", dir.path());
        assert_eq!(rec.upload_work(), None, "no storage: nothing to do");
        rec.enable_uploads("pre/", Arc::new(tokio::sync::Notify::new()));
        rec.set_recording("bot");
        let a = rec.add_track("p1", "alice", Kind::Audio, "ogg").unwrap();
        let (v, _) = rec.add_muxed_track("p2", "bob", Kind::Video).unwrap();
        let (au, _) = rec.add_muxed_track("p2", "bob", Kind::Audio).unwrap();
        for t in [&a.entry, &v.entry, &au.entry] {
            t.stats.file_created.store(true, Ordering::Relaxed);
        }
        // chat.jsonl: listed once written, and final only when the recording ends.
        assert!(matches!(
            rec.chat("p1", "alice", br#"{"text": "hi"}"#, Instant::now()),
            ChatOutcome::Written(_)
        ));
        let work = rec.upload_work().unwrap();
        assert_eq!((work.files.len(), work.unfinished), (0, 3));
        a.entry.stats.ended.store(true, Ordering::Release);
        v.entry.stats.ended.store(true, Ordering::Release);
        let work = rec.upload_work().unwrap();
        assert_eq!(work.files, vec!["alice-audio-1.ogg".to_owned()]);
        assert!(!work.manifest_ready);
        rec.set_file_upload(
            "alice-audio-1.ogg",
            UploadState::Retrying,
            Some("503 x".into()),
        );
        let doc = rec.doc();
        assert_eq!(doc.files[0].upload_error.as_deref(), Some("503 x"));
        assert_eq!(
            doc.files[0].object.as_deref(),
            Some("pre/r1/alice-audio-1.ogg")
        );
        assert_eq!(doc.upload, Some(UploadState::Retrying));
        rec.set_file_upload("alice-audio-1.ogg", UploadState::Uploaded, None);
        au.entry.stats.ended.store(true, Ordering::Release);
        assert_eq!(
            rec.upload_work().unwrap().files,
            vec!["bob-av-1.webm".to_owned()]
        );
        rec.set_file_upload("bob-av-1.webm", UploadState::Uploaded, None);
        // Every file is in, but the recording goes on: the manifest waits.
        let work = rec.upload_work().unwrap();
        assert!(work.files.is_empty() && !work.manifest_ready);
        assert_eq!(rec.doc().upload, Some(UploadState::Pending));
        inner_end(&rec);
        let work = rec.upload_work().unwrap();
        assert_eq!(work.files, vec![super::super::chat::CHAT_FILE.to_owned()]);
        assert!(!work.manifest_ready);
        rec.set_file_upload(super::super::chat::CHAT_FILE, UploadState::Uploaded, None);
        assert!(rec.upload_work().unwrap().manifest_ready);
        rec.set_manifest_upload(UploadState::Uploaded);
        assert_eq!(rec.upload_work(), None);
        let doc = rec.doc();
        assert_eq!(doc.upload, Some(UploadState::Uploaded));
        assert!(doc.files[0].upload_error.is_none());
        // Reloaded from its document: the same states and keys, even under another prefix.
        let back = Recording::from_doc(doc.clone(), dir.path().to_owned());
        back.enable_uploads("other/", Arc::new(tokio::sync::Notify::new()));
        assert_eq!(back.doc(), doc);
        assert_eq!(
            back.object_key(MANIFEST),
            Some("pre/r1/manifest.json".into())
        );
    }

    const MANIFEST: &str = crate::record::manifest::MANIFEST_FILE;

    fn inner_end(rec: &Recording) {
        lock(&rec.inner).state = State::Stopped;
    }

    /// With object storage, a composite still pending or rendering after the stop is not
    /// final (no partial `room.webm` goes up) and the manifest waits for it; once it is done,
    /// it goes, and then the manifest.
    #[test]
    fn uploads_wait_for_the_composite() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recording::for_test("r2", dir.path());
        rec.enable_uploads("pre/", Arc::new(tokio::sync::Notify::new()));
        rec.set_recording("bot");
        let a = rec.add_track("p1", "alice", Kind::Audio, "ogg").unwrap();
        a.entry.stats.file_created.store(true, Ordering::Relaxed);
        let out = rec.add_output("room.webm").unwrap();
        let composite = |state| CompositeDoc {
            state,
            progress: 0.0,
            error: None,
        };
        rec.set_composite(composite(CompositeState::Pending));
        a.entry.stats.ended.store(true, Ordering::Release);
        inner_end(&rec);
        rec.set_file_upload("alice-audio-1.ogg", UploadState::Uploaded, None);
        out.created.store(true, Ordering::Relaxed);
        for state in [CompositeState::Pending, CompositeState::Rendering] {
            rec.set_composite(composite(state));
            let work = rec.upload_work().unwrap();
            assert!(work.files.is_empty(), "{state:?}: {work:?}");
            assert!(!work.manifest_ready, "{state:?}");
        }
        rec.set_composite(composite(CompositeState::Done));
        let work = rec.upload_work().unwrap();
        assert_eq!(work.files, vec!["room.webm".to_owned()]);
        assert!(!work.manifest_ready);
        rec.set_file_upload("room.webm", UploadState::Uploaded, None);
        assert!(rec.upload_work().unwrap().manifest_ready);
    }

    /// The track's file is /dev/null (writes succeed, fsync fails with EINVAL, like a disk that
    /// lost them): the finalize reports it in the Recording's error instead of dropping it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fsync_at_finalize_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recording::for_test("r", dir.path());
        rec.set_recording("bot");
        let ctx = rec.add_track("p", "alice", Kind::Audio, "ogg").unwrap();
        std::os::unix::fs::symlink("/dev/null", &ctx.path).unwrap();
        let entry = Arc::clone(&ctx.entry);
        let (relay, _keyframes) = Relay::new();
        let source = relay.subscribe();
        rec.keep_task(tokio::spawn(crate::record::track::run(ctx, source, None)));
        for i in 0..20u16 {
            relay.publish(SourceEvent::Rtp(rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    payload_type: 111,
                    sequence_number: 1000 + i,
                    timestamp: 960 * u32::from(i),
                    ssrc: 7,
                    ..Default::default()
                },
                payload: bytes::Bytes::from_static(&[0x78, 0x01, 0x02]),
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every packet written (however slow the machine) before the stop.
        for _ in 0..200 {
            if entry.stats.frames.load(Ordering::Relaxed) == 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(rec.stop(StopReason::Requested).await);
        let doc = rec.doc();
        assert_eq!(doc.tracks[0].frames, 20, "{doc:?}");
        assert_eq!(doc.state, State::Stopped);
        let error = doc.error.unwrap_or_default();
        assert!(
            error.contains("alice-audio-1.ogg") && error.contains("fsync"),
            "{error:?}"
        );
        assert_eq!(read_manifest(dir.path()).unwrap().error, rec.doc().error);
    }
}
