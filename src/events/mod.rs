//! Events (SPEC §8): signed webhooks with a durable outbox.
//!
//! A low layer, like `config` and `telemetry`: any module above may hold the cheap [`Events`]
//! handle and call [`Events::emit`]. Emitting writes the event to each URL's outbox on disk
//! ([`outbox`]) and wakes that URL's delivery task ([`deliver`]); it never waits on the
//! network, so a slow or dead receiver cannot slow a recording. Delivery is at least once:
//! an event's file goes only after a 2xx, and the outbox is read back at startup. Events of
//! one order key (a recording's or bot's id) reach a URL in the order they were emitted.
//! Memory is bounded: at most [`MAX_PENDING`] events wait per URL (their bodies stay on disk).

pub mod deliver;
pub mod outbox;
pub mod sign;

use outbox::{OutboxDir, StoredEvent};
use serde::Serialize;
use sign::Secret;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Events that may wait per URL; more are dropped (logged and counted) so that a receiver
/// gone for a day cannot fill the disk or the memory.
pub const MAX_PENDING: usize = 10_000;

/// The types of event (the `type` of the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A recording began (data: the Recording).
    RecordingStarted,
    /// A recording stopped with its files final (data: the Recording).
    RecordingStopped,
    /// A recording failed, or was found interrupted after a crash (data: the Recording).
    RecordingFailed,
    /// A recording's manifest reached the bucket (data: the Recording; SPEC §7).
    RecordingUploaded,
    /// Another node continues a recording (data: the Recording; SPEC §9).
    RecordingTakeover,
    /// A recording's composite file is ready (data: the Recording; SPEC §11).
    RecordingComposited,
    /// A bot joined its room (data: the Bot).
    BotStarted,
    /// A bot left its room (data: the Bot).
    BotStopped,
    /// A voicemail message ended (data: the message's Recording).
    VoicemailMessage,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [Self; 9] = [
        Self::RecordingStarted,
        Self::RecordingStopped,
        Self::RecordingFailed,
        Self::RecordingUploaded,
        Self::RecordingTakeover,
        Self::RecordingComposited,
        Self::BotStarted,
        Self::BotStopped,
        Self::VoicemailMessage,
    ];

    /// The name sent as `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RecordingStarted => "recording.started",
            Self::RecordingStopped => "recording.stopped",
            Self::RecordingFailed => "recording.failed",
            Self::RecordingUploaded => "recording.uploaded",
            Self::RecordingTakeover => "recording.takeover",
            Self::RecordingComposited => "recording.composited",
            Self::BotStarted => "bot.started",
            Self::BotStopped => "bot.stopped",
            Self::VoicemailMessage => "voicemail.message",
        }
    }
}

/// Validated webhook settings (`--webhook-url`, `--webhook-secret`).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Receivers; each gets every event.
    pub urls: Vec<reqwest::Url>,
    /// The signing key.
    pub secret: Secret,
    /// Delay before the first retry (at most 5 s; doubles up to [`deliver::MAX_BACKOFF`]).
    pub first_retry: Duration,
}

/// An event waiting in memory (its body is on disk).
#[derive(Debug)]
struct Entry {
    order_key: Option<String>,
    created_ms: i64,
    attempts: u32,
    /// Not before this (`None`: now).
    next_at: Option<Instant>,
    in_flight: bool,
}

/// One URL's waiting events, by sequence number.
#[derive(Debug, Default)]
struct Queue {
    entries: BTreeMap<u64, Entry>,
}

impl Queue {
    /// Marks in flight and returns up to `room` events that may be sent now: due, and the
    /// oldest waiting of their order key. Also returns when the next one not yet due is.
    fn pick(&mut self, now: Instant, room: usize) -> (Vec<u64>, Option<Instant>) {
        let mut ready = Vec::new();
        let mut wake: Option<Instant> = None;
        let mut heads: HashSet<String> = HashSet::new();
        for (seq, entry) in self.entries.iter_mut() {
            if let Some(key) = &entry.order_key {
                if !heads.insert(key.clone()) {
                    continue;
                }
            }
            if entry.in_flight {
                continue;
            }
            if let Some(at) = entry.next_at.filter(|at| *at > now) {
                wake = Some(wake.map_or(at, |w| w.min(at)));
                continue;
            }
            if ready.len() < room {
                entry.in_flight = true;
                ready.push(*seq);
            }
        }
        (ready, wake)
    }

    /// Whether an event is being sent or could be sent now (an event behind an earlier one
    /// of its key that waits for a retry waits too).
    fn busy(&self, now: Instant) -> bool {
        let mut heads: HashSet<&str> = HashSet::new();
        self.entries.values().any(|e| {
            let head = e.order_key.as_deref().is_none_or(|key| heads.insert(key));
            head && (e.in_flight || e.next_at.is_none_or(|at| at <= now))
        })
    }
}

/// One receiver URL: its outbox and its queue.
struct Target {
    url: reqwest::Url,
    /// The URL without credentials or query, for logs.
    label: String,
    outbox: OutboxDir,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Answered `410 Gone`: nothing more is sent to it until restart.
    gone: AtomicBool,
}

impl Target {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Inner {
    secret: Secret,
    first_retry: Duration,
    targets: Vec<Arc<Target>>,
    next_seq: AtomicU64,
    pending: AtomicI64,
}

impl Inner {
    fn add_pending(&self, n: i64) {
        let now = self.pending.fetch_add(n, Ordering::Relaxed) + n;
        metrics::gauge!(crate::telemetry::WEBHOOK_PENDING).set(now as f64);
    }
}

/// The handle through which the service emits events: cheap to clone; a disabled one (no
/// `--webhook-url`) does nothing.
#[derive(Clone, Default)]
pub struct Events(Option<Arc<Inner>>);

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Events(disabled)"),
            Some(inner) => write!(f, "Events({} urls)", inner.targets.len()),
        }
    }
}

/// The outbox folder of `url` below `base`: a hash of the URL, so that a URL's events stay
/// its own across restarts and no URL text reaches the file system.
fn target_dir(base: &Path, url: &reqwest::Url) -> std::path::PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(url.as_str().as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    base.join(hex)
}

/// `url` without user info or query (they may hold credentials), for logs.
fn label(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 UTC with milliseconds, like the Recording's times.
fn format_time(t: time::OffsetDateTime) -> String {
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

impl Events {
    /// A handle that emits nothing.
    pub fn disabled() -> Self {
        Self(None)
    }

    /// Whether events are sent anywhere.
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Opens the outbox under `base` (one folder per URL) and loads the events a previous
    /// run did not deliver. Delivery starts with [`Events::start`].
    pub fn open(base: &Path, config: WebhookConfig) -> std::io::Result<Self> {
        std::fs::create_dir_all(base)?;
        let mut targets = Vec::new();
        let mut max_seq = 0;
        let mut loaded = 0usize;
        let mut dirs = Vec::new();
        for url in config.urls {
            let dir = target_dir(base, &url);
            if dirs.contains(&dir) {
                continue; // the same URL twice
            }
            dirs.push(dir.clone());
            let (outbox, found) = OutboxDir::open(&dir)?;
            let mut queue = Queue::default();
            for (seq, event) in found {
                max_seq = max_seq.max(seq);
                queue.entries.insert(
                    seq,
                    Entry {
                        order_key: event.order_key,
                        created_ms: event.created_ms,
                        attempts: 0,
                        next_at: None,
                        in_flight: false,
                    },
                );
            }
            loaded += queue.entries.len();
            if !queue.entries.is_empty() {
                tracing::info!(url = %label(&url), events = queue.entries.len(),
                    "undelivered webhook events from before the restart");
            }
            targets.push(Arc::new(Target {
                label: label(&url),
                url,
                outbox,
                queue: Mutex::new(queue),
                wake: Notify::new(),
                gone: AtomicBool::new(false),
            }));
        }
        if let Ok(entries) = std::fs::read_dir(base) {
            for entry in entries.flatten() {
                if entry.path().is_dir() && !dirs.contains(&entry.path()) {
                    tracing::warn!(dir = %entry.path().display(),
                        "webhook outbox of a URL no longer configured: its events are not sent");
                }
            }
        }
        // Sequence numbers grow across restarts: past what is on disk, and past the clock
        // (microseconds) so that a fresh outbox still orders after an emptied one.
        let clock = u64::try_from(now_ms()).unwrap_or(0).saturating_mul(1000);
        let inner = Inner {
            secret: config.secret,
            first_retry: config.first_retry,
            targets,
            next_seq: AtomicU64::new(clock.max(max_seq + 1)),
            pending: AtomicI64::new(0),
        };
        inner.add_pending(loaded as i64);
        Ok(Self(Some(Arc::new(inner))))
    }

    /// Starts one delivery task per URL; they stop when `shutdown` is cancelled (what is not
    /// delivered by then stays on disk for the next start).
    pub fn start(&self, shutdown: &CancellationToken) -> Result<(), reqwest::Error> {
        let Some(inner) = &self.0 else {
            return Ok(());
        };
        let client = deliver::client()?;
        for target in &inner.targets {
            tokio::spawn(deliver::run(
                Arc::clone(inner),
                Arc::clone(target),
                client.clone(),
                shutdown.clone(),
            ));
        }
        Ok(())
    }

    /// Emits an event of `kind` with `data` to every URL. Events with the same `order_key`
    /// reach each URL in the order of these calls. Returns once the event is on disk; never
    /// waits on a receiver. A failure to store it is logged and counted, never returned.
    pub fn emit<T: Serialize + ?Sized>(&self, kind: EventKind, order_key: Option<&str>, data: &T) {
        let Some(inner) = &self.0 else {
            return;
        };
        let data = match serde_json::to_value(data) {
            Ok(data) => data,
            Err(e) => {
                tracing::error!(event = kind.as_str(), error = %e, "event data not serializable");
                return;
            }
        };
        let now = time::OffsetDateTime::now_utc();
        let body = serde_json::json!({
            "type": kind.as_str(),
            "timestamp": format_time(now),
            "data": data,
        })
        .to_string();
        let seq = inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let event = StoredEvent {
            id: format!("msg_{seq:x}{:08x}", rand::random::<u32>()),
            order_key: order_key.map(str::to_owned),
            created_ms: now_ms(),
            body,
        };
        for target in &inner.targets {
            if target.gone.load(Ordering::Relaxed) {
                continue;
            }
            if target.queue().entries.len() >= MAX_PENDING {
                tracing::error!(url = %target.label, event = kind.as_str(), id = %event.id,
                    "webhook outbox full: event dropped");
                metrics::counter!(crate::telemetry::WEBHOOK_DROPPED).increment(1);
                continue;
            }
            if let Err(e) = target.outbox.write(seq, &event) {
                tracing::error!(url = %target.label, event = kind.as_str(), error = %e,
                    "webhook event not stored: dropped");
                metrics::counter!(crate::telemetry::WEBHOOK_DROPPED).increment(1);
                continue;
            }
            target.queue().entries.insert(
                seq,
                Entry {
                    order_key: event.order_key.clone(),
                    created_ms: event.created_ms,
                    attempts: 0,
                    next_at: None,
                    in_flight: false,
                },
            );
            inner.add_pending(1);
            target.wake.notify_one();
        }
        tracing::debug!(event = kind.as_str(), id = %event.id, "event emitted");
    }

    /// Events waiting for delivery, all URLs together.
    pub fn pending(&self) -> usize {
        self.0.as_ref().map_or(0, |inner| {
            inner.targets.iter().map(|t| t.queue().entries.len()).sum()
        })
    }

    /// Waits (at most `limit`) while an event is being sent or due now: at a clean shutdown
    /// the last events usually leave before the process does. Events waiting for a retry do
    /// not hold it up (they stay on disk).
    pub async fn drain(&self, limit: Duration) {
        let Some(inner) = &self.0 else {
            return;
        };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let now = Instant::now();
            if !inner
                .targets
                .iter()
                .any(|t| !t.gone.load(Ordering::Relaxed) && t.queue().busy(now))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: Option<&str>) -> Entry {
        Entry {
            order_key: key.map(str::to_owned),
            created_ms: 0,
            attempts: 0,
            next_at: None,
            in_flight: false,
        }
    }

    #[test]
    fn an_event_waits_for_the_earlier_ones_of_its_key() {
        let now = Instant::now();
        let mut q = Queue::default();
        q.entries.insert(1, entry(Some("a")));
        q.entries.insert(2, entry(Some("a")));
        q.entries.insert(3, entry(Some("b")));
        q.entries.insert(4, entry(None));
        q.entries.insert(5, entry(None));
        let (ready, wake) = q.pick(now, 10);
        assert_eq!(ready, vec![1, 3, 4, 5]);
        assert_eq!(wake, None);
        // 1 failed and waits for its retry: 2 still waits behind it.
        let later = now + Duration::from_secs(5);
        let e1 = q.entries.get_mut(&1).unwrap();
        e1.in_flight = false;
        e1.next_at = Some(later);
        for seq in [3, 4, 5] {
            q.entries.remove(&seq);
        }
        assert_eq!(q.pick(now, 10), (vec![], Some(later)));
        assert!(!q.busy(now));
        assert_eq!(q.pick(later, 10), (vec![1], None));
        q.entries.remove(&1);
        assert_eq!(q.pick(later, 10), (vec![2], None));
    }

    #[test]
    fn pick_respects_the_room_left() {
        let mut q = Queue::default();
        for seq in 0..5 {
            q.entries.insert(seq, entry(None));
        }
        assert_eq!(q.pick(Instant::now(), 2).0, vec![0, 1]);
        assert_eq!(q.pick(Instant::now(), 2).0, vec![2, 3]);
    }

    #[test]
    fn kinds_have_their_spec_names() {
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert!(names.contains(&"recording.takeover"));
        assert!(names.contains(&"voicemail.message"));
        assert_eq!(names.iter().collect::<HashSet<_>>().len(), names.len());
    }

    #[test]
    fn logged_urls_lose_their_credentials() {
        let url = reqwest::Url::parse("https://u:p@hooks.example:8443/in?token=t#f").unwrap();
        assert_eq!(label(&url), "https://hooks.example:8443/in");
    }
}
