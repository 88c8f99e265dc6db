//! The composite's background worker: one thread for the whole process (bounded concurrency:
//! one render at a time, the others wait their turn), started on first use, running at a
//! raised niceness so that recording never waits for it.
//!
//! A job's state goes `pending` (requested; waiting) → `rendering` (with `progress`) →
//! `done` (`room.webm` listed in `files`) or `failed` (with the reason; a partial output is
//! removed). The source files are only read.

use super::render::{render, sources, Job};
use super::MIX_FILE;
use crate::record::manifest::{CompositeDoc, CompositeState};
use crate::record::session::{OutputFile, Recording};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Name of the composite in a recording's folder.
pub const COMPOSITE_FILE: &str = "room.webm";
/// Niceness of the worker thread (lowest CPU priority short of idle scheduling).
const NICENESS: i32 = 15;
/// Progress reaches the manifest at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Called when a composite is done or failed (the `recording.composited` webhook hooks here).
pub type Composited = Arc<dyn Fn(&Arc<Recording>) + Send + Sync>;

struct Queued {
    recording: Arc<Recording>,
    out: Arc<OutputFile>,
    size: (u32, u32),
    duration_ms: u64,
    /// Told when it ends (the `recording.composited` webhook).
    done: Option<Composited>,
}

fn worker() -> &'static Mutex<Sender<Queued>> {
    static WORKER: OnceLock<Mutex<Sender<Queued>>> = OnceLock::new();
    WORKER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Queued>();
        let spawned = std::thread::Builder::new()
            .name("recbot-composite".into())
            .spawn(move || {
                // On Linux the niceness of PRIO_PROCESS 0 is the calling thread's own.
                if let Err(e) = rustix::process::setpriority_process(None, NICENESS) {
                    tracing::warn!(error = %e, "composite worker keeps normal priority");
                }
                while let Ok(job) = rx.recv() {
                    run(job);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "composite worker thread not started");
        }
        Mutex::new(tx)
    })
}

/// Marks `recording`'s composite `pending` and reserves `room.webm`; `None` if the name is
/// taken. Called when the recording starts, so the document shows the composite at once.
pub fn reserve(recording: &Recording) -> Option<Arc<OutputFile>> {
    let out = recording.add_output(COMPOSITE_FILE)?;
    recording.set_composite(CompositeDoc {
        state: CompositeState::Pending,
        progress: 0.0,
        error: None,
    });
    Some(out)
}

/// Queues the render of `recording`'s composite (its files are final; it lasted
/// `duration_ms`). Returns at once.
/// `done` is told when it ends, done or failed.
pub fn queue(
    recording: Arc<Recording>,
    out: Arc<OutputFile>,
    size: (u32, u32),
    duration_ms: u64,
    done: Option<Composited>,
) {
    let job = Queued {
        recording,
        out,
        size,
        duration_ms,
        done,
    };
    let sent = worker().lock().unwrap_or_else(|e| e.into_inner()).send(job);
    if let Err(std::sync::mpsc::SendError(job)) = sent {
        finish(
            &job.recording,
            Err("the composite worker is not running".into()),
            job.done.as_ref(),
        );
    }
}

/// Marks `recording`'s composite failed without rendering it (`reason` says why); `done` is
/// told.
pub fn refuse(recording: &Arc<Recording>, reason: &str, done: Option<&Composited>) {
    finish(recording, Err(reason.to_owned()), done);
}

fn set(recording: &Recording, state: CompositeState, progress: f64, error: Option<String>) {
    recording.set_composite(CompositeDoc {
        state,
        progress,
        error,
    });
    recording.write_manifest();
}

fn run(job: Queued) {
    let Queued {
        recording,
        out,
        size,
        duration_ms,
        done,
    } = job;
    let started = Instant::now();
    set(&recording, CompositeState::Rendering, 0.0, None);
    let dir = recording.dir().to_owned();
    let path = dir.join(COMPOSITE_FILE);
    let result = (|| {
        let doc = recording.doc();
        let sources = sources(&doc, &dir)?;
        let mix = dir.join(MIX_FILE);
        let mut last = Instant::now();
        let rendered = render(
            Job {
                sources,
                mix: mix.is_file().then_some(mix.as_path()),
                size,
                duration_ms,
            },
            &path,
            |share| {
                if last.elapsed() >= PROGRESS_EVERY {
                    last = Instant::now();
                    set(&recording, CompositeState::Rendering, share, None);
                }
                true
            },
        )?;
        Ok::<_, String>(rendered)
    })();
    match result {
        Ok(rendered) => {
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            out.bytes.store(bytes, Ordering::Relaxed);
            out.created.store(true, Ordering::Relaxed);
            let took = started.elapsed().as_secs_f64();
            tracing::info!(recording = %recording.id(), frames = rendered.frames,
                decode_errors = rendered.decode_errors, seconds = took,
                speed = duration_ms as f64 / 1000.0 / took.max(1e-9), "composite done");
            finish(&recording, Ok(()), done.as_ref());
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            tracing::error!(recording = %recording.id(), error = %e, "composite failed");
            finish(&recording, Err(e), done.as_ref());
        }
    }
}

fn finish(recording: &Arc<Recording>, result: Result<(), String>, done: Option<&Composited>) {
    match result {
        Ok(()) => set(recording, CompositeState::Done, 1.0, None),
        Err(e) => set(recording, CompositeState::Failed, 0.0, Some(e)),
    }
    // Object storage waits for the composite (and sends the manifest after it).
    recording.files_changed();
    if let Some(done) = done {
        done(recording);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::manifest::Kind;

    /// A source that does not read as WebM: the composite ends `failed` with the file's name
    /// in the reason, no `room.webm` is left or listed, and the source file is untouched. The
    /// worker thread runs at the raised niceness.
    #[test]
    fn a_failed_render_is_reported_and_touches_no_source() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recording::for_test("r", dir.path());
        rec.set_recording("bot");
        let ctx = rec.add_track("p", "alice", Kind::Video, "webm").unwrap();
        let garbage = b"not a webm file at all".repeat(10);
        std::fs::write(&ctx.path, &garbage).unwrap();
        ctx.entry.stats.file_created.store(true, Ordering::Relaxed);
        ctx.entry.stats.start_offset_ms.store(0, Ordering::Relaxed);
        let out = reserve(&rec).unwrap();
        assert_eq!(
            rec.doc().composite.map(|c| c.state),
            Some(CompositeState::Pending)
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let done: Composited = Arc::new(move |r: &Arc<Recording>| {
            log.lock().unwrap().push(r.id().to_owned());
        });
        queue(Arc::clone(&rec), out, (320, 240), 1000, Some(done));
        // The callback runs last (after the manifest write).
        for _ in 0..1000 {
            if seen.lock().unwrap().contains(&"r".to_owned()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let doc = rec.doc();
        let composite = doc.composite.unwrap();
        assert_eq!(composite.state, CompositeState::Failed);
        let error = composite.error.unwrap_or_default();
        assert!(error.contains("alice-video-1.webm"), "{error}");
        assert!(!dir.path().join(COMPOSITE_FILE).exists());
        assert!(doc.files.iter().all(|f| f.name != COMPOSITE_FILE));
        assert_eq!(std::fs::read(&ctx.path).unwrap(), garbage);
        assert_eq!(
            crate::record::manifest::read_manifest(dir.path())
                .unwrap()
                .composite
                .map(|c| c.state),
            Some(CompositeState::Failed)
        );
        assert!(seen.lock().unwrap().contains(&"r".to_owned()));
        assert_eq!(worker_niceness(), Some(NICENESS));
    }

    /// The niceness of the composite worker thread, from /proc.
    fn worker_niceness() -> Option<i32> {
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == "recbot-composit" {
                let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
                // Fields after the ")" of the command: state is field 3; nice is field 19.
                let rest = &stat[stat.rfind(')')? + 2..];
                return rest.split(' ').nth(16)?.parse().ok();
            }
        }
        None
    }
}
