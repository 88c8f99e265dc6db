//! Object storage (SPEC §7): recordings leave the machine for an S3-compatible bucket.
//!
//! Above `record` (it reads recordings and their files), below `bot` (the bots' [`Services`]
//! hold it). The recordings directory is the spool: a file is uploaded once it is final (its
//! tracks ended, the recording stopped, or a crash repair at startup), in one `PUT` or, above
//! [`Tuning::multipart_threshold`], in parts; each body carries `Content-MD5`, each answered
//! ETag is compared with our MD5, and the object's size is checked with a `HEAD`. Only then is
//! the file marked `uploaded` (manifest written) and the local copy deleted (unless
//! `--keep-local`). `manifest.json` goes last, once every media file is in the bucket; it
//! stays local too (the service lists recordings from the local manifests).
//!
//! The queue is the Recording documents themselves (`files[].upload`): every state change is
//! written to the manifest, so a restart resumes every upload not confirmed. Failures are
//! retried per recording with exponential backoff ([`Tuning::backoff_base`] doubling up to
//! [`Tuning::backoff_cap`]), without limit. A multipart upload interrupted by a failure goes
//! on from its next part in the same process; after a restart it starts again (a bucket
//! lifecycle rule "abort incomplete multipart uploads" removes the orphaned parts).
//!
//! One worker uploads one file at a time, holding [`Storage`]'s work lock for it; a delete
//! takes that lock too, so no upload re-creates an object of a recording being deleted.
//!
//! [`Services`]: crate::bot::Services

pub mod s3;

use crate::config::S3Settings;
use crate::record::manifest::{RecordingDoc, UploadState, MANIFEST_FILE};
use crate::record::session::Recording;
use crate::record::store::RecordingStore;
use bytes::Bytes;
use s3::{S3Error, S3};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Called once a recording is complete in the bucket (its manifest uploaded), with its
/// document; for the `recording.uploaded` event. Must not block.
pub type OnUploaded = Arc<dyn Fn(&RecordingDoc) + Send + Sync>;

/// Sizes and delays of the uploader (defaults for production; tests shrink them).
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Files larger than this go up in parts.
    pub multipart_threshold: u64,
    /// Size of a part (the last may be smaller). S3 wants at least 5 MiB except in tests'
    /// servers; it grows if a file would need more than 10 000 parts.
    pub part_size: u64,
    /// First retry delay; doubles per failure of the same recording.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            multipart_threshold: 16 << 20,
            part_size: 16 << 20,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
        }
    }
}

/// A multipart upload under way (kept across retries in this process).
struct Multipart {
    upload_id: String,
    key: String,
    size: u64,
    etags: Vec<String>,
    md5s: Vec<[u8; 16]>,
}

/// The worker's memory: retry schedule and multipart uploads under way.
#[derive(Default)]
struct WorkerState {
    /// By recording id: failures in a row and the next attempt.
    backoff: HashMap<String, (u32, Instant)>,
    /// By (recording id, file name).
    multipart: HashMap<(String, String), Multipart>,
}

/// What the worker does next.
enum Job {
    File(String),
    Manifest,
}

/// Object storage: the S3 client, the upload worker and its queue state.
pub struct Storage {
    s3: S3,
    prefix: String,
    keep_local: bool,
    recordings: Arc<RecordingStore>,
    tuning: Tuning,
    wake: Arc<Notify>,
    /// Held by the worker for one file (or manifest), and by a delete.
    work: tokio::sync::Mutex<()>,
    state: Mutex<WorkerState>,
    on_uploaded: Mutex<Option<OnUploaded>>,
}

/// Keeps the upload worker away from the recordings until dropped (see
/// [`Storage::delete_objects`]).
pub struct WorkPaused<'a>(#[allow(dead_code)] tokio::sync::MutexGuard<'a, ()>);

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("bucket", &self.s3.bucket())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The uploader's figures in `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Final files and complete recordings' manifests not in the bucket yet.
    pub pending: usize,
    /// Age of the oldest of them (since its local file was last written), seconds.
    pub oldest_s: f64,
}

impl Storage {
    /// Connects to the bucket of `settings` (`HEAD` bucket): an error names the flag to fix
    /// (no such bucket, refused credentials, unreachable endpoint). Nothing is uploaded until
    /// [`Storage::start`].
    pub async fn connect(
        settings: &S3Settings,
        recordings: Arc<RecordingStore>,
        tuning: Tuning,
    ) -> Result<Arc<Self>, String> {
        let s3 = S3::new(settings)?;
        if let Err(e) = s3.head_bucket().await {
            let hint = match e.status() {
                Some(404) => format!("--s3-bucket `{}` does not exist", settings.bucket),
                Some(403) => format!(
                    "--s3-bucket `{}`: access denied (check RECBOT_S3_ACCESS_KEY_ID / \
                     RECBOT_S3_SECRET_ACCESS_KEY)",
                    settings.bucket
                ),
                Some(_) => format!(
                    "--s3-bucket `{}` at --s3-endpoint {} (--s3-region {})",
                    settings.bucket, settings.endpoint, settings.region
                ),
                None => format!("--s3-endpoint {} is not reachable", settings.endpoint),
            };
            return Err(format!("object storage: {hint}: {e}"));
        }
        Ok(Arc::new(Self {
            s3,
            prefix: settings.prefix.clone(),
            keep_local: settings.keep_local,
            recordings,
            tuning,
            wake: Arc::new(Notify::new()),
            work: tokio::sync::Mutex::new(()),
            state: Mutex::new(WorkerState::default()),
            on_uploaded: Mutex::new(None),
        }))
    }

    /// Sets the hook called once each recording is complete in the bucket.
    pub fn set_on_uploaded(&self, hook: OnUploaded) {
        *self.on_uploaded.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    fn state(&self) -> MutexGuard<'_, WorkerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The S3 client.
    pub fn s3(&self) -> &S3 {
        &self.s3
    }

    /// Puts every new recording (and the loaded ones with pending uploads) in the queue and
    /// starts the worker, which runs until `shutdown`. Local copies of files already uploaded
    /// (a crash between the upload and the deletion) are deleted now unless `--keep-local`.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        self.recordings
            .enable_uploads(&self.prefix, Arc::clone(&self.wake));
        if !self.keep_local {
            for recording in self.recordings.list() {
                for file in recording.doc().files {
                    if file.upload == Some(UploadState::Uploaded) {
                        remove_local(&recording.dir().join(&file.name));
                    }
                }
            }
        }
        tokio::spawn(Arc::clone(self).run(shutdown))
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let (job, wait_until) = self.next_job(Instant::now());
            let Some((recording, job)) = job else {
                let sleep = async {
                    match wait_until {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = sleep => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            };
            tokio::select! {
                _ = self.attempt(&recording, job) => {}
                // Interrupted: the manifest on disk has it pending; a restart resumes it.
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// The oldest recording's next job that is not waiting for a retry, and otherwise when
    /// the next retry is due.
    fn next_job(&self, now: Instant) -> (Option<(Arc<Recording>, Job)>, Option<Instant>) {
        let backoff: HashMap<String, Instant> = self
            .state()
            .backoff
            .iter()
            .map(|(id, (_, at))| (id.clone(), *at))
            .collect();
        let mut earliest: Option<Instant> = None;
        for recording in self.recordings.list().into_iter().rev() {
            let Some(work) = recording.upload_work() else {
                continue;
            };
            let job = match work.files.first() {
                Some(name) => Job::File(name.clone()),
                None if work.manifest_ready => Job::Manifest,
                None => continue,
            };
            match backoff.get(recording.id()) {
                Some(at) if *at > now => {
                    earliest = Some(earliest.map_or(*at, |e| e.min(*at)));
                }
                _ => return (Some((recording, job)), None),
            }
        }
        (None, earliest)
    }

    /// One job under the work lock; a failure schedules the recording's next attempt.
    async fn attempt(&self, recording: &Arc<Recording>, job: Job) {
        let _work = self.work.lock().await;
        // Deleted while waiting for the lock: nothing to do.
        if self.recordings.get(recording.id()).is_err() {
            return;
        }
        let result = match &job {
            Job::File(name) => self.upload_file(recording, name).await,
            Job::Manifest => self.upload_manifest(recording).await,
        };
        let id = recording.id().to_owned();
        match result {
            Ok(()) => {
                self.state().backoff.remove(&id);
            }
            Err(e) => {
                metrics::counter!(crate::telemetry::UPLOAD_ERRORS).increment(1);
                let error = e.to_string();
                let name = match &job {
                    Job::File(name) => {
                        recording.set_file_upload(name, UploadState::Retrying, Some(error.clone()));
                        name.as_str()
                    }
                    Job::Manifest => {
                        recording.set_manifest_upload(UploadState::Retrying);
                        MANIFEST_FILE
                    }
                };
                recording.write_manifest();
                let mut state = self.state();
                let failures = state.backoff.get(&id).map_or(0, |(n, _)| *n) + 1;
                let delay = backoff_delay(&self.tuning, failures);
                state.backoff.insert(id, (failures, Instant::now() + delay));
                tracing::warn!(recording = %recording.id(), file = %name, %error,
                    retry_in_ms = delay.as_millis() as u64, "upload failed; will retry");
            }
        }
    }

    async fn upload_file(&self, recording: &Arc<Recording>, name: &str) -> Result<(), S3Error> {
        let path = recording.dir().join(name);
        let key = recording
            .object_key(name)
            .ok_or_else(|| S3Error::Protocol("recording without storage".into()))?;
        let size = tokio::fs::metadata(&path).await?.len();
        recording.set_file_upload(name, UploadState::Uploading, None);
        let content_type = content_type(name);
        if size <= self.tuning.multipart_threshold {
            let (body, digest) = read_part(path.clone(), 0, size).await?;
            self.s3.put(&key, body, digest, content_type).await?;
        } else {
            self.multipart(recording.id(), name, &path, &key, size, content_type)
                .await?;
        }
        // The whole object, at its size, is there.
        match self.s3.object_size(&key).await? {
            Some(stored) if stored == size => {}
            other => {
                return Err(S3Error::Checksum(format!(
                    "the store holds {other:?} bytes of {key}, not {size}"
                )))
            }
        }
        metrics::counter!(crate::telemetry::UPLOAD_BYTES).increment(size);
        recording.set_file_upload(name, UploadState::Uploaded, None);
        // The manifest says `uploaded` before the local copy goes: a crash in between leaves
        // a copy that the next start deletes, never a file that is nowhere.
        if let Err(e) = recording.try_write_manifest() {
            tracing::error!(recording = %recording.id(), error = %e,
                "manifest write failed after an upload: local copy kept");
            return Ok(());
        }
        tracing::info!(recording = %recording.id(), file = %name, bytes = size, "uploaded");
        if !self.keep_local {
            remove_local(&path);
        }
        Ok(())
    }

    async fn multipart(
        &self,
        id: &str,
        name: &str,
        path: &Path,
        key: &str,
        size: u64,
        content_type: &str,
    ) -> Result<(), S3Error> {
        let slot = (id.to_owned(), name.to_owned());
        let part_size = self.tuning.part_size.max(size.div_ceil(10_000)).max(1);
        let previous = self.state().multipart.remove(&slot);
        let mut upload = match previous {
            Some(m) if m.size == size && m.key == key => m,
            _ => Multipart {
                upload_id: self.s3.create_multipart(key, content_type).await?,
                key: key.to_owned(),
                size,
                etags: Vec::new(),
                md5s: Vec::new(),
            },
        };
        let result = async {
            loop {
                let offset = upload.etags.len() as u64 * part_size;
                if offset >= size {
                    break;
                }
                let len = part_size.min(size - offset);
                let number = u16::try_from(upload.etags.len() + 1)
                    .map_err(|_| S3Error::Protocol("too many parts".into()))?;
                let (body, digest) = read_part(path.to_owned(), offset, len).await?;
                let etag = self
                    .s3
                    .upload_part(key, &upload.upload_id, number, body, digest)
                    .await?;
                upload.etags.push(etag);
                upload.md5s.push(digest);
            }
            self.s3
                .complete_multipart(key, &upload.upload_id, &upload.etags, &upload.md5s)
                .await
        }
        .await;
        match result {
            Ok(()) => Ok(()),
            // The upload is gone or wrong: start again next time.
            Err(e @ (S3Error::Checksum(_) | S3Error::Protocol(_) | S3Error::Local(_))) => {
                let _ = self.s3.abort_multipart(key, &upload.upload_id).await;
                Err(e)
            }
            Err(e) if e.status() == Some(404) => Err(e),
            Err(e) => {
                // Go on from the next part on the next attempt.
                self.state().multipart.insert(slot, upload);
                Err(e)
            }
        }
    }

    async fn upload_manifest(&self, recording: &Arc<Recording>) -> Result<(), S3Error> {
        let key = recording
            .object_key(MANIFEST_FILE)
            .ok_or_else(|| S3Error::Protocol("recording without storage".into()))?;
        recording.set_manifest_upload(UploadState::Uploading);
        // The bucket's copy says what the bucket holds: everything.
        let mut doc = recording.doc();
        doc.upload = Some(UploadState::Uploaded);
        let body = serde_json::to_vec_pretty(&doc)
            .map_err(|e| S3Error::Protocol(format!("manifest: {e}")))?;
        let digest = s3::md5(&body);
        self.s3
            .put(&key, Bytes::from(body), digest, "application/json")
            .await?;
        recording.set_manifest_upload(UploadState::Uploaded);
        recording.write_manifest();
        tracing::info!(recording = %recording.id(), "recording complete in the bucket");
        let hook = self
            .on_uploaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(hook) = hook {
            hook(&recording.doc());
        }
        Ok(())
    }

    /// Deletes every object of `recording` (all keys under `{prefix}{id}/`) and aborts its
    /// multipart uploads under way. The returned guard keeps the worker away until dropped:
    /// the caller removes the recording from the store before dropping it.
    pub async fn delete_objects(&self, recording: &Recording) -> Result<WorkPaused<'_>, S3Error> {
        let guard = self.work.lock().await;
        let Some(manifest_key) = recording.object_key(MANIFEST_FILE) else {
            // Recorded without storage: nothing in the bucket.
            return Ok(WorkPaused(guard));
        };
        let folder = manifest_key
            .strip_suffix(MANIFEST_FILE)
            .unwrap_or(&manifest_key)
            .to_owned();
        let under_way: Vec<Multipart> = {
            let mut state = self.state();
            let slots: Vec<(String, String)> = state
                .multipart
                .keys()
                .filter(|(id, _)| id == recording.id())
                .cloned()
                .collect();
            slots
                .iter()
                .filter_map(|s| state.multipart.remove(s))
                .collect()
        };
        for m in under_way {
            let _ = self.s3.abort_multipart(&m.key, &m.upload_id).await;
        }
        for key in self.s3.list(&folder).await? {
            self.s3.delete(&key).await?;
        }
        self.state().backoff.remove(recording.id());
        Ok(WorkPaused(guard))
    }

    /// Sends `GET` (or `HEAD`) of file `name` of `recording` to the store with `headers`
    /// (the client's Range and conditionals); `None` when the recording has no storage.
    pub async fn fetch(
        &self,
        recording: &Recording,
        name: &str,
        head: bool,
        headers: reqwest::header::HeaderMap,
    ) -> Option<Result<reqwest::Response, S3Error>> {
        let key = recording.object_key(name)?;
        Some(self.s3.fetch(&key, head, headers).await)
    }

    /// Uploads waiting and the age of the oldest (for `/metrics`).
    pub fn backlog(&self) -> Backlog {
        let mut backlog = Backlog::default();
        let now = std::time::SystemTime::now();
        for recording in self.recordings.list() {
            let Some(work) = recording.upload_work() else {
                continue;
            };
            let mut names: Vec<&str> = work.files.iter().map(String::as_str).collect();
            if work.manifest_ready {
                names.push(MANIFEST_FILE);
            }
            for name in names {
                backlog.pending += 1;
                let age = std::fs::metadata(recording.dir().join(name))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                backlog.oldest_s = backlog.oldest_s.max(age);
            }
        }
        backlog
    }
}

/// The retry delay after `failures` failures in a row.
pub fn backoff_delay(tuning: &Tuning, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    tuning
        .backoff_base
        .saturating_mul(factor)
        .min(tuning.backoff_cap)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("webm") => "video/webm",
        Some("ogg") => "audio/ogg",
        Some("json") => "application/json",
        Some("jsonl") => "application/jsonl",
        _ => "application/octet-stream",
    }
}

fn remove_local(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %path.display(), error = %e, "local copy not deleted"),
    }
}

/// Reads `len` bytes at `offset` of `path` and their MD5, off the runtime's threads.
async fn read_part(path: PathBuf, offset: u64, len: u64) -> std::io::Result<(Bytes, [u8; 16])> {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        let mut file = std::fs::File::open(&path)?;
        file.seek(std::io::SeekFrom::Start(offset))?;
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        let mut buf = vec![0; len];
        file.read_exact(&mut buf)?;
        let digest = s3::md5(&buf);
        Ok((Bytes::from(buf), digest))
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let t = Tuning {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            ..Tuning::default()
        };
        let d: Vec<u64> = (1..=9).map(|n| backoff_delay(&t, n).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff_delay(&t, u32::MAX).as_secs(), 60);
    }
}
