//! The answering bots (SPEC §6): the Bot document, the registry of bots, and their stop (their
//! start, which knows every mode, is [`super::launch`]). Each bot is a [`Behaviour`](super::Behaviour) run by [`super::join`]; what it does is
//! in [`super::echo`], [`super::play`] and [`super::voicemail`].
//!
//! A bot lives until `DELETE /api/bots/{id}` or the service's shutdown (a `play` bot without
//! `loop` also stops by itself at the end of its file). Stopping ends its voicemail messages
//! with a stop reason, waits for their files to be final, then leaves the room. Bots are kept
//! in memory only: after a restart they are gone (their messages stay, as recordings); in a
//! cluster another node restarts them with their id ([`Bot::restored`], `crate::cluster::bots`).

use super::Services;
use crate::events::{EventKind, Events};
use crate::record::manifest::{format_time, StopReason};
use crate::record::store::RecordingStore;
use crate::signal::hub::{Hub, JoinError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bots that may run at once (a bot costs a connection per peer of its room).
pub const MAX_BOTS: usize = 64;
/// How long a stop waits for a bot's calls (voicemail messages being finalized).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(25);
/// How long a stop waits for the bot to be out of its room (connections closed).
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `silence_s` of a voicemail bot.
pub const DEFAULT_SILENCE: Duration = Duration::from_secs(3);
/// Default `max_duration_s` of a voicemail bot.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(60);

/// What a bot does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Sends every peer its own audio and video back.
    Echo,
    /// Plays a media file to every peer.
    Play,
    /// Greets each caller, records a message, says goodbye.
    Voicemail,
}

impl Mode {
    /// The mode named `name` (`echo`, `play`, `voicemail`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "echo" => Some(Self::Echo),
            "play" => Some(Self::Play),
            "voicemail" => Some(Self::Voicemail),
            _ => None,
        }
    }

    /// Its name, also the bot's display name in rooms.
    pub fn name(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Play => "play",
            Self::Voicemail => "voicemail",
        }
    }
}

/// Lifecycle of a bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotState {
    /// In its room.
    Running,
    /// Ending its calls, leaving.
    Stopping,
    /// Gone from its room.
    Stopped,
}

/// The Bot document of the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotDoc {
    /// Bot id.
    pub id: String,
    /// Its room.
    pub room: String,
    /// echo | play | voicemail.
    pub mode: Mode,
    /// running | stopping | stopped.
    pub state: BotState,
    /// When the create call was accepted (RFC 3339, ms, UTC).
    pub started_at: String,
    /// When it stopped (or began to).
    pub stopped_at: Option<String>,
    /// Its own peer id in the room.
    pub bot_peer: Option<String>,
    /// Media file (play; voicemail greeting), a name in `--media-dir`.
    pub media: Option<String>,
    /// Play: repeat the file.
    #[serde(rename = "loop", skip_serializing_if = "Option::is_none", default)]
    pub looping: Option<bool>,
    /// Voicemail: seconds of silence that end a message.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub silence_s: Option<f64>,
    /// Voicemail: longest message, in seconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_duration_s: Option<f64>,
    /// Ids of the peers it is connected to now.
    pub peers: Vec<String>,
    /// Ids of its recordings (voicemail messages), oldest first.
    pub recordings: Vec<String>,
    /// In a cluster (SPEC §9): the node running it now (absent on a single node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// In a cluster: how many times another node restarted it (its node died) or took it
    /// over (its node drained); absent on a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
}

/// A validated request for a bot (`POST /api/bots`).
#[derive(Debug, Clone)]
pub struct BotSpec {
    /// Room to join.
    pub room: String,
    /// What to do.
    pub mode: Mode,
    /// A plain file name in the media directory.
    pub media: Option<String>,
    /// Play: repeat.
    pub looping: bool,
    /// Voicemail: silence that ends a message.
    pub silence: Duration,
    /// Voicemail: longest message.
    pub max_duration: Duration,
}

/// Errors of the bot layer (mapped to HTTP statuses in `api::bots`).
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// The request is wrong (a field's value).
    #[error("{0}")]
    Invalid(String),
    /// The media file does not exist in the media directory.
    #[error("no media file `{0}` in the media directory")]
    MediaNotFound(String),
    /// The media file cannot be played (not Ogg Opus / WebM with VP8 or Opus, unreadable).
    #[error("media file `{0}`: {1}")]
    BadMedia(String, String),
    /// No such bot.
    #[error("no bot `{0}`")]
    NotFound(String),
    /// Too many bots.
    #[error("{0} bots are running, the maximum")]
    TooMany(usize),
    /// The bot could not join its room.
    #[error("the bot could not join: {0}")]
    Join(#[from] JoinError),
    /// Something that should not fail did.
    #[error("internal error: {0}")]
    Internal(String),
}

struct Inner {
    state: BotState,
    stopped_at: Option<String>,
    bot_peer: Option<String>,
    peers: Vec<String>,
    /// In a cluster: this node's id and the bot's restart count.
    node: Option<(String, u32)>,
}

/// A bot, running or stopped.
pub struct Bot {
    id: String,
    spec: BotSpec,
    hub: Arc<Hub>,
    /// Its messages are listed from here (the Bot document of its events).
    store: Arc<RecordingStore>,
    events: Events,
    started_at: String,
    inner: Mutex<Inner>,
    /// Cancelled when the bot leaves its room (its connections close, its pumps end).
    leave: CancellationToken,
    /// Set when the bot is being stopped: its calls end their messages with this reason.
    ending: watch::Sender<Option<StopReason>>,
    done: watch::Sender<bool>,
    /// Tasks the stop waits for (voicemail calls).
    calls: Mutex<Vec<JoinHandle<()>>>,
    /// Set when the bot continues on another node (drain, fenced out): its stop here is not
    /// the bot's end, so it sends no `bot.stopped`.
    handed_off: std::sync::atomic::AtomicBool,
}

/// A new bot id: `b` and 10 characters of `[a-z0-9]`, safe as a path segment.
fn new_id() -> String {
    format!("b{}", crate::signal::hub::new_peer_id())
}

impl Bot {
    /// A new bot for `spec`, not yet in a room of the service's hub.
    pub fn new(spec: BotSpec, services: &Services) -> Arc<Self> {
        Self::restored(
            new_id(),
            format_time(time::OffsetDateTime::now_utc()),
            spec,
            services,
        )
    }

    /// A bot that keeps the identity (`id`, `started_at`) of one started before, for a
    /// cluster's restart of a dead or draining node's bot on this node (SPEC §9). Not yet in a
    /// room; `id` must be a valid bot id (the caller's: it comes from the cluster index).
    pub fn restored(
        id: String,
        started_at: String,
        spec: BotSpec,
        services: &Services,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            spec,
            hub: Arc::clone(&services.hub),
            store: Arc::clone(&services.store),
            events: services.events.clone(),
            started_at,
            inner: Mutex::new(Inner {
                state: BotState::Running,
                stopped_at: None,
                bot_peer: None,
                peers: Vec::new(),
                node: None,
            }),
            leave: CancellationToken::new(),
            ending: watch::Sender::new(None),
            done: watch::Sender::new(false),
            calls: Mutex::new(Vec::new()),
            handed_off: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// In a cluster: the node running it and how often it was restarted (shown in the doc).
    pub fn set_node(&self, node: &str, restarts: u32) {
        self.lock().node = Some((node.to_owned(), restarts));
    }

    /// Marks the bot as continuing on another node: its stop here sends no `bot.stopped`.
    pub fn hand_off(&self) {
        self.handed_off.store(true, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the bot's peer id once it has joined its room.
    pub(super) fn set_bot_peer(&self, peer: String) {
        self.lock().bot_peer = Some(peer);
    }

    /// Bot id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its room.
    pub fn room(&self) -> &str {
        &self.spec.room
    }

    /// Its request.
    pub fn spec(&self) -> &BotSpec {
        &self.spec
    }

    /// Its peer id in the room, once joined.
    pub fn bot_peer(&self) -> Option<String> {
        self.lock().bot_peer.clone()
    }

    /// Current state.
    pub fn state(&self) -> BotState {
        self.lock().state
    }

    /// The document, with the recordings `store` lists for it.
    pub fn doc(&self, store: &RecordingStore) -> BotDoc {
        let recordings = store.owned_by(&self.id);
        let inner = self.lock();
        let spec = &self.spec;
        let voicemail = spec.mode == Mode::Voicemail;
        BotDoc {
            id: self.id.clone(),
            room: spec.room.clone(),
            mode: spec.mode,
            state: inner.state,
            started_at: self.started_at.clone(),
            stopped_at: inner.stopped_at.clone(),
            bot_peer: inner.bot_peer.clone(),
            media: spec.media.clone(),
            looping: (spec.mode == Mode::Play).then_some(spec.looping),
            silence_s: voicemail.then_some(spec.silence.as_secs_f64()),
            max_duration_s: voicemail.then_some(spec.max_duration.as_secs_f64()),
            peers: inner.peers.clone(),
            recordings,
            node: inner.node.as_ref().map(|(n, _)| n.clone()),
            restarts: inner.node.as_ref().map(|(_, r)| *r),
        }
    }

    /// A connection toward `peer` was set up.
    pub fn add_peer(&self, peer: &str) {
        let mut inner = self.lock();
        if !inner.peers.iter().any(|p| p == peer) {
            inner.peers.push(peer.to_owned());
        }
    }

    /// The connection toward `peer` is gone (it left, or the bot hung up).
    pub fn remove_peer(&self, peer: &str) {
        self.lock().peers.retain(|p| p != peer);
    }

    /// Whether the bot is connected to `peer`.
    pub fn has_peer(&self, peer: &str) -> bool {
        self.lock().peers.iter().any(|p| p == peer)
    }

    /// Cancelled when the bot leaves its room.
    pub fn leave_signal(&self) -> CancellationToken {
        self.leave.clone()
    }

    /// Becomes `Some(reason)` when the bot is being stopped.
    pub fn ending(&self) -> watch::Receiver<Option<StopReason>> {
        self.ending.subscribe()
    }

    /// Keeps a call task so that the stop waits for it.
    pub fn keep_call(&self, task: JoinHandle<()>) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.retain(|t| !t.is_finished());
        calls.push(task);
    }

    /// Stops the bot: its calls end their messages with `reason` (files finalized), then it
    /// leaves the room (its connections closed). Returns when that is done. Idempotent: a second call waits for the
    /// first. Must not be awaited by one of the bot's own call tasks.
    pub async fn stop(&self, reason: StopReason) {
        let first = {
            let mut inner = self.lock();
            if inner.state == BotState::Running {
                inner.state = BotState::Stopping;
                inner.stopped_at = Some(format_time(time::OffsetDateTime::now_utc()));
                true
            } else {
                false
            }
        };
        if !first {
            let mut done = self.done.subscribe();
            crate::util::until_true(&mut done).await;
            return;
        }
        tracing::info!(bot = %self.id, room = %self.spec.room, ?reason, "bot stopping");
        self.ending.send_replace(Some(reason));
        let calls: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.calls.lock().unwrap_or_else(|e| e.into_inner()));
        for call in calls {
            let abort = call.abort_handle();
            if tokio::time::timeout(STOP_TIMEOUT, call).await.is_err() {
                abort.abort();
                tracing::error!(bot = %self.id, "a call did not end in time");
            }
        }
        self.leave.cancel();
        if let Some(me) = self.bot_peer() {
            let gone = async {
                while self.hub.peers(&self.spec.room).iter().any(|p| p.id == me) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            if tokio::time::timeout(LEAVE_TIMEOUT, gone).await.is_err() {
                tracing::warn!(bot = %self.id, "still in the room after the stop");
            }
        }
        {
            let mut inner = self.lock();
            inner.state = BotState::Stopped;
            inner.peers.clear();
        }
        self.done.send_replace(true);
        if self.handed_off.load(Ordering::Relaxed) {
            tracing::info!(bot = %self.id, "bot stopped here; it continues on another node");
            return;
        }
        self.events.emit(
            EventKind::BotStopped,
            Some(&self.id),
            &self.doc(&self.store),
        );
        tracing::info!(bot = %self.id, "bot stopped");
    }
}

/// All bots of the service.
#[derive(Default)]
pub struct BotStore {
    map: Mutex<BTreeMap<String, (u64, Arc<Bot>)>>,
    next_seq: AtomicU64,
}

impl BotStore {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<String, (u64, Arc<Bot>)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists a started bot (newest last).
    pub(super) fn insert(&self, bot: &Arc<Bot>) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.map().insert(bot.id.clone(), (seq, Arc::clone(bot)));
    }

    /// One bot.
    pub fn get(&self, id: &str) -> Result<Arc<Bot>, BotError> {
        self.map()
            .get(id)
            .map(|(_, b)| Arc::clone(b))
            .ok_or_else(|| BotError::NotFound(id.to_owned()))
    }

    /// All bots, newest first.
    pub fn list(&self) -> Vec<Arc<Bot>> {
        let mut all: Vec<(u64, Arc<Bot>)> = self.map().values().cloned().collect();
        all.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        all.into_iter().map(|(_, b)| b).collect()
    }

    /// Bots not stopped yet.
    pub fn running(&self) -> usize {
        self.map()
            .values()
            .filter(|(_, b)| b.state() != BotState::Stopped)
            .count()
    }

    /// Stops bot `id` (see [`Bot::stop`]) and removes it from the list.
    pub async fn remove(&self, id: &str, reason: StopReason) -> Result<(), BotError> {
        let bot = self.get(id)?;
        bot.stop(reason).await;
        self.map().remove(id);
        Ok(())
    }

    /// Stops every bot (they stay listed, `stopped`).
    pub async fn stop_all(&self, reason: StopReason) {
        let bots: Vec<Arc<Bot>> = self.map().values().map(|(_, b)| Arc::clone(b)).collect();
        futures::future::join_all(bots.iter().map(|b| b.stop(reason))).await;
    }
}

/// Resolves `name` in `media_dir`: a plain file name (no path separators, no `..`, not
/// absolute) of an existing regular file whose real path stays inside the directory.
pub fn media_path(media_dir: &std::path::Path, name: &str) -> Result<PathBuf, BotError> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.starts_with('.');
    if !plain {
        return Err(BotError::Invalid(format!(
            "`media` must be a plain file name in the media directory (no `/`, no `..`, not \
             absolute, not hidden); got {name:?}"
        )));
    }
    let dir = media_dir
        .canonicalize()
        .map_err(|_| BotError::MediaNotFound(name.to_owned()))?;
    let path = dir.join(name);
    let real = match path.canonicalize() {
        Ok(real) => real,
        Err(_) => return Err(BotError::MediaNotFound(name.to_owned())),
    };
    if !real.starts_with(&dir) {
        return Err(BotError::Invalid(format!(
            "media file `{name}` leads outside the media directory"
        )));
    }
    if !real.is_file() {
        return Err(BotError::MediaNotFound(name.to_owned()));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_names_stay_inside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.ogg"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(media_path(dir.path(), "a.ogg").is_ok());
        for bad in [
            "../a.ogg",
            "/etc/passwd",
            "sub/a.ogg",
            "..",
            ".hidden",
            "",
            "a\\b",
        ] {
            assert!(
                matches!(media_path(dir.path(), bad), Err(BotError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            media_path(dir.path(), "missing.ogg"),
            Err(BotError::MediaNotFound(_))
        ));
        assert!(matches!(
            media_path(dir.path(), "sub"),
            Err(BotError::MediaNotFound(_))
        ));
        #[cfg(unix)]
        {
            let outside = tempfile::tempdir().unwrap();
            std::fs::write(outside.path().join("b.ogg"), b"x").unwrap();
            std::os::unix::fs::symlink(outside.path().join("b.ogg"), dir.path().join("l.ogg"))
                .unwrap();
            assert!(matches!(
                media_path(dir.path(), "l.ogg"),
                Err(BotError::Invalid(_))
            ));
        }
    }

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse("echo"), Some(Mode::Echo));
        assert_eq!(Mode::parse("voicemail"), Some(Mode::Voicemail));
        assert_eq!(Mode::parse("Echo"), None);
    }
}
