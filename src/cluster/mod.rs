//! A cluster of recbot nodes sharing one Redis (SPEC §9).
//!
//! Every node heartbeats its [`NodeInfo`] (capacity figures) under a key with a TTL; a node
//! whose key expired is dead. Recordings are indexed in Redis (`id → node`, the last known
//! document, a fencing token), a room's recording is claimed atomically (`SET NX`), and
//! placement picks the live node with the most spare capacity. Rooms span nodes through
//! [`relay`]: each node mirrors the members of the other nodes in its hub and relays their
//! signaling over Redis pub/sub.
//!
//! Redis being unreachable never stops a recording in progress: the calls that need the
//! cluster answer [`ClusterError::Unavailable`] (`503`) and the connection manager reconnects
//! by itself.

pub mod bots;
pub mod keys;
pub mod relay;

use crate::bot::Services;
use crate::record::manifest::{Kind, RecordingDoc, State};
use crate::record::session::{RecordOptions, Recording};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a node refreshes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// How long a heartbeat lives: a node silent this long is dead (SPEC §9: noticed within 10 s).
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// Longest an internal API call (other than a file download) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a handover waits for the new recorder to receive every participant.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(10);
/// Request header of internal calls between nodes: "answer for this node only" (no
/// placement, no fan-out, no proxying). It narrows what a call does and grants nothing: the
/// call still passes the API token check like any other.
pub const LOCAL_HEADER: &str = "x-recbot-node-local";

/// Errors of cluster operations (mapped to HTTP statuses in `api::error`).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis cannot be reached (or timed out): the cluster-wide answer is not available.
    #[error("the cluster store (Redis) is unreachable: {0}; recordings in progress continue, retry later")]
    Unavailable(String),
    /// The room is already being recorded somewhere in the cluster.
    #[error("room `{0}` is already being recorded by {1}")]
    RoomBusy(String, String),
    /// Another node could not be reached or answered badly.
    #[error("node `{0}` could not be reached: {1}")]
    Node(String, String),
    /// This node is draining: it takes no new work.
    #[error("this node is draining: it takes no new work")]
    Draining,
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// Settings of this node in its cluster (from `--redis`, `--node-id`, `--advertise-url`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Redis URL.
    pub redis_url: String,
    /// This node's id.
    pub node_id: String,
    /// This node's base URL for the others (no trailing slash).
    pub advertise_url: String,
    /// The API token, sent on internal calls (they pass the same check as any call).
    pub api_token: Option<String>,
    /// `--max-recordings` (the capacity figure's denominator).
    pub max_recordings: usize,
}

/// A node's heartbeat: who it is, where it answers, and its capacity figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Base URL (`--advertise-url`).
    pub url: String,
    /// Active recordings.
    pub recordings: usize,
    /// `--max-recordings`.
    pub max_recordings: usize,
    /// Tracks of the active recordings.
    pub tracks: usize,
    /// One-minute load average divided by the number of CPUs.
    pub load: f64,
    /// Free bytes in the recordings directory.
    pub free_disk: u64,
    /// Draining (SIGTERM): takes no new work.
    pub draining: bool,
    /// Running bots (absent in the heartbeat of an older node: 0).
    #[serde(default)]
    pub bots: usize,
}

impl NodeInfo {
    /// Whether it can take one more recording.
    pub fn can_take(&self) -> bool {
        !self.draining && self.recordings < self.max_recordings
    }

    /// Placement order: more free recording slots first, then fewer tracks, then fewer bots,
    /// then lower load, then more free disk, then the id (so every node ranks the same way).
    fn rank(a: &NodeInfo, b: &NodeInfo) -> std::cmp::Ordering {
        let free = |n: &NodeInfo| n.max_recordings.saturating_sub(n.recordings);
        free(b)
            .cmp(&free(a))
            .then(a.tracks.cmp(&b.tracks))
            .then(a.bots.cmp(&b.bots))
            .then(a.load.total_cmp(&b.load))
            .then(b.free_disk.cmp(&a.free_disk))
            .then(a.id.cmp(&b.id))
    }
}

/// The nodes that can take a recording, best first.
pub fn placement_order(mut nodes: Vec<NodeInfo>) -> Vec<NodeInfo> {
    nodes.retain(NodeInfo::can_take);
    nodes.sort_by(NodeInfo::rank);
    nodes
}

/// Where a recording is, as the cluster index says.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// The node recording it (or that recorded it last).
    pub node: String,
    /// The last document its owner published.
    pub doc: Option<RecordingDoc>,
}

/// This node's handle on the cluster. Shared (`Arc`).
pub struct Cluster {
    settings: ClusterSettings,
    redis: ConnectionManager,
    client: redis::Client,
    http: reqwest::Client,
    services: Arc<Services>,
    draining: AtomicBool,
    /// Whether a heartbeat was written already.
    announced: AtomicBool,
    /// Fencing tokens of the recordings this node holds: recording id → token.
    leases: Mutex<HashMap<String, u64>>,
    shutdown: CancellationToken,
    relay: Arc<relay::Relay>,
    /// Files already written to the file index: (recording id, file name).
    indexed_files: Mutex<std::collections::HashSet<(String, String)>>,
    /// Told the document of every recording this node took over (webhook
    /// `recording.takeover`; wired by the server).
    takeover_hook: std::sync::OnceLock<TakeoverHook>,
    /// This node's bots ([`Cluster::attach_bots`]; wired by the server).
    bots: std::sync::OnceLock<Arc<crate::bot::registry::BotStore>>,
    /// Fencing tokens of the bots this node holds: bot id → token.
    bot_leases: Mutex<HashMap<String, u64>>,
}

/// Called with the Recording once this node continues it after a takeover.
pub type TakeoverHook = Box<dyn Fn(RecordingDoc) + Send + Sync>;

/// Takes recording KEYS[1] over from node ARGV[1] for node ARGV[2]: only while that node still
/// holds it, it is active, and (ARGV[4] `dead`) its heartbeat (KEYS[2]) is still gone, or
/// (ARGV[4] `handover`) that node hands it over while draining.
/// One winner: the fence moves on, so the old holder's writes are refused from now on.
/// Returns the new fence, or 0.
const TAKE_OVER: &str = r"
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return 0 end
local st = redis.call('HGET', KEYS[1], 'state')
if st ~= 'starting' and st ~= 'recording' then return 0 end
if ARGV[4] == 'dead' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'node', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'takeovers', 1)
redis.call('SREM', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[3])
return fence";

/// A node back after a crash: for recording KEYS[1] that it still holds (nobody took it
/// over), marks it ended with the document ARGV[2] and frees its room's claim KEYS[2].
const RELEASE_STALE: &str = r"
redis.call('SREM', KEYS[3], ARGV[3])
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'state', 'failed', 'doc', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1";

/// `SET claim id` only while the claim holds `nonce` (the pending claim becomes the id).
const CONFIRM_CLAIM: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0";

/// `DEL key` only while it holds `value`.
const DELETE_IF: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// A fenced write of a recording's shared state: only while `fence` still equals this
/// holder's token (a node whose lease was taken over never writes again).
/// When the index lost the recording (Redis restarted without its data), the holder writes
/// it again: its fence, the recording list, its held set and the room's claim.
const FENCED_WRITE: &str = r"
local fence = redis.call('HGET', KEYS[1], 'fence')
if fence == false then
  redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'room', ARGV[5], 'takeovers', ARGV[8])
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[6])
  redis.call('SADD', KEYS[3], ARGV[6])
  if ARGV[3] == 'starting' or ARGV[3] == 'recording' then
    redis.call('SET', KEYS[4], ARGV[6], 'NX')
  end
  fence = ARGV[1]
end
if fence == ARGV[1] then
  redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'state', ARGV[3], 'node', ARGV[4])
  return 1
end
return 0";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Starting => "starting",
        State::Recording => "recording",
        State::Stopping => "stopping",
        State::Stopped => "stopped",
        State::Failed => "failed",
    }
}

impl Cluster {
    /// Connects to Redis (lazily: a Redis that is down now is retried on every use), starts
    /// the heartbeat and the signaling relay. The node's rooms span the cluster from now on.
    pub async fn start(
        settings: ClusterSettings,
        services: Arc<Services>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, ClusterError> {
        let client = redis::Client::open(settings.redis_url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .read_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let relay = relay::Relay::new(
            settings.node_id.clone(),
            Arc::clone(&services.hub),
            redis.clone(),
        );
        let cluster = Arc::new(Self {
            settings,
            redis,
            client,
            http,
            services,
            draining: AtomicBool::new(false),
            announced: AtomicBool::new(false),
            leases: Mutex::new(HashMap::new()),
            shutdown,
            relay,
            indexed_files: Mutex::new(Default::default()),
            takeover_hook: std::sync::OnceLock::new(),
            bots: std::sync::OnceLock::new(),
            bot_leases: Mutex::new(HashMap::new()),
        });
        if let Err(e) = cluster.release_stale().await {
            tracing::warn!(error = %e, "could not settle this node's recordings of before");
        }
        if let Err(e) = cluster.release_stale_bots().await {
            tracing::warn!(error = %e, "could not settle this node's bots of before");
        }
        cluster
            .services
            .hub
            .set_remote(Arc::clone(&cluster.relay) as Arc<dyn crate::signal::hub::RemoteRooms>);
        tokio::spawn(relay::Relay::run(
            Arc::clone(&cluster.relay),
            cluster.client.clone(),
            cluster.shutdown.clone(),
        ));
        tokio::spawn(Arc::clone(&cluster).heartbeat_loop());
        Ok(cluster)
    }

    /// Sets the callback told of every takeover by this node (webhook `recording.takeover`).
    /// Only the first call counts.
    pub fn on_takeover(&self, hook: TakeoverHook) {
        let _ = self.takeover_hook.set(hook);
    }

    /// At start: the recordings this node held before it stopped or died, and that nobody
    /// took over, are ended in the index (they are `failed` / `interrupted` here, their files
    /// repaired) and their rooms' claims freed. Those taken over are left to their new holder.
    async fn release_stale(&self) -> Result<(), ClusterError> {
        let mut conn = self.conn();
        let me = &self.settings.node_id;
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::held(me))
            .query_async(&mut conn)
            .await?;
        for id in ids {
            let Ok(recording) = self.services.store.get(&id) else {
                continue;
            };
            let mut doc = recording.doc();
            let room = doc.room.clone();
            doc.node = Some(me.clone());
            let json = serde_json::to_string(&doc).unwrap_or_default();
            let released: i64 = redis::Script::new(RELEASE_STALE)
                .key(keys::rec(&id))
                .key(keys::claim(&room))
                .key(keys::held(me))
                .arg(me)
                .arg(json)
                .arg(&id)
                .invoke_async(&mut conn)
                .await?;
            tracing::info!(recording = %id, released = released == 1, "recording of before settled");
        }
        Ok(())
    }

    /// The nodes that heartbeat once and no longer do (their heartbeat key expired).
    pub(super) async fn dead_nodes(&self) -> Result<Vec<String>, ClusterError> {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::NODES)
            .query_async(&mut self.conn())
            .await?;
        let live: std::collections::HashSet<String> =
            self.nodes().await?.into_iter().map(|n| n.id).collect();
        Ok(ids.into_iter().filter(|id| !live.contains(id)).collect())
    }

    /// Takes over the active recordings of dead nodes (their heartbeat expired), one winner
    /// per recording across the cluster; this node tries only while it has room for one more.
    async fn take_over_dead(&self) -> Result<(), ClusterError> {
        if self.is_draining() || !self.info().can_take() {
            return Ok(());
        }
        let mut conn = self.conn();
        for dead in self.dead_nodes().await? {
            let dead = &dead;
            let held: Vec<String> = redis::cmd("SMEMBERS")
                .arg(keys::held(dead))
                .query_async(&mut conn)
                .await?;
            for id in held {
                if !self.info().can_take() {
                    return Ok(());
                }
                let fence: i64 = redis::Script::new(TAKE_OVER)
                    .key(keys::rec(&id))
                    .key(keys::node(dead))
                    .key(keys::held(dead))
                    .key(keys::held(&self.settings.node_id))
                    .arg(dead)
                    .arg(&self.settings.node_id)
                    .arg(&id)
                    .arg("dead")
                    .invoke_async(&mut conn)
                    .await?;
                if fence > 0 {
                    tracing::warn!(recording = %id, from = %dead, "taking over a recording of a dead node");
                    if let Err(e) = self.continue_here(&id, fence as u64).await {
                        tracing::error!(recording = %id, error = %e, "takeover failed");
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes recording `id` over from draining node `from` (its internal handover call): a new
    /// recorder joins here, and the answer comes once it receives media from every
    /// participant of the room that is not a bot (at most [`HANDOVER_WAIT`]), so the old
    /// recorder leaves only after the new one writes every kind of media it wrote: no gap.
    pub async fn accept_handover(
        &self,
        id: &str,
        from: &str,
    ) -> Result<RecordingDoc, ClusterError> {
        if self.is_draining() || !self.info().can_take() {
            return Err(ClusterError::Draining);
        }
        let mut conn = self.conn();
        let fence: i64 = redis::Script::new(TAKE_OVER)
            .key(keys::rec(id))
            .key(keys::node(from))
            .key(keys::held(from))
            .key(keys::held(&self.settings.node_id))
            .arg(from)
            .arg(&self.settings.node_id)
            .arg(id)
            .arg("handover")
            .invoke_async(&mut conn)
            .await?;
        if fence <= 0 {
            return Err(ClusterError::Node(
                from.into(),
                format!("does not hold `{id}`"),
            ));
        }
        tracing::info!(recording = %id, from, "handover: continuing a draining node's recording");
        let recording = self.continue_here(id, fence as u64).await?;
        let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
        let prior = recording.doc().tracks.len() - recording.live_tracks();
        while tokio::time::Instant::now() < deadline {
            let doc = recording.doc();
            // Written, not only received: a video file starts at its first keyframe.
            let writing: Vec<(&str, Kind)> = doc.tracks[prior..]
                .iter()
                .filter(|t| t.frames > 0)
                .map(|t| (t.participant.as_str(), t.kind))
                .collect();
            let present: std::collections::HashSet<String> = self
                .services
                .hub
                .peers(recording.room())
                .into_iter()
                .filter(|p| !p.bot)
                .map(|p| p.id)
                .collect();
            let waiting = doc.tracks[..prior]
                .iter()
                .filter(|t| present.contains(&t.participant))
                .any(|t| !writing.contains(&(t.participant.as_str(), t.kind)));
            if !waiting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(recording.doc())
    }

    /// Drains this node (SIGTERM): no new work from now on (the heartbeat says so at once),
    /// and each recording held here is handed to the best other node, which answers once its
    /// recorder receives; then the recorder here stops (its files finalized, the shared state
    /// left to the new holder). Recordings no other node could take stay here and stop with
    /// the shutdown.
    pub async fn drain(&self) {
        self.set_draining();
        if let Err(e) = self.announce().await {
            tracing::warn!(error = %e, "drain: heartbeat not updated");
        }
        let held: Vec<String> = lock(&self.leases).keys().cloned().collect();
        let handovers = held.into_iter().map(|id| async move {
            let Ok(recording) = self.services.store.get(&id) else {
                return;
            };
            if !recording.state().is_active() {
                return;
            }
            // The index gets the newest figures of what was written here.
            let _ = self.publish_doc(&recording).await;
            // The room's WHIP publishers on other nodes are recorded only where they are.
            let Ok(order) = self.placement_for(recording.room()).await else {
                return;
            };
            for node in order.iter().filter(|n| n.id != self.settings.node_id) {
                let path = format!(
                    "/api/cluster/handover/{id}?from={}",
                    self.settings.node_id
                );
                let answer = self
                    .request(reqwest::Method::POST, &node.url, &path)
                    .timeout(HANDOVER_WAIT + Duration::from_secs(10))
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().is_success() => {
                        tracing::info!(recording = %id, to = %node.id, "handed over");
                        lock(&self.leases).remove(&id);
                        crate::bot::recorder::stop(
                            &self.services,
                            &recording,
                            crate::record::manifest::StopReason::Shutdown,
                        )
                        .await;
                        return;
                    }
                    Ok(r) => tracing::warn!(recording = %id, to = %node.id, status = %r.status(), "handover refused"),
                    Err(e) => tracing::warn!(recording = %id, to = %node.id, error = %e, "handover failed"),
                }
            }
        });
        futures::future::join_all(handovers).await;
        self.drain_bots().await;
    }

    /// At the end of a shutdown: publishes the final document of every recording still held
    /// here and frees their rooms' claims.
    pub async fn settle(&self) {
        let held: Vec<String> = lock(&self.leases).keys().cloned().collect();
        for id in held {
            if let Ok(recording) = self.services.store.get(&id) {
                if let Err(e) = self.finished(&recording).await {
                    tracing::warn!(recording = %id, error = %e, "final state not published");
                }
            }
        }
        self.settle_bots().await;
    }

    /// Continues recording `id` here with lease `fence`: a new recorder joins its room and
    /// records into the same Recording (new files take the next index).
    async fn continue_here(&self, id: &str, fence: u64) -> Result<Arc<Recording>, ClusterError> {
        let mut conn = self.conn();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::rec(id))
            .query_async(&mut conn)
            .await?;
        let bad =
            |what: &str| ClusterError::Node(self.settings.node_id.clone(), format!("{id}: {what}"));
        let prior: RecordingDoc = fields
            .get("doc")
            .and_then(|d| serde_json::from_str(d).ok())
            .ok_or_else(|| bad("no document in the index"))?;
        let takeovers: u32 = fields
            .get("takeovers")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1);
        let options: StoredOptions = fields
            .get("options")
            .and_then(|o| serde_json::from_str(o).ok())
            .unwrap_or_default();
        let elapsed = elapsed_since(&prior.started_at).unwrap_or_default();
        let recording = Recording::continued(
            &prior,
            self.services.store.dir_of(id),
            options.to_options(),
            elapsed,
        );
        recording.set_node(&self.settings.node_id, takeovers);
        lock(&self.leases).insert(id.to_owned(), fence);
        self.services
            .store
            .adopt(&recording)
            .map_err(|e| bad(&e.to_string()))?;
        crate::bot::recorder::resume(
            &self.services,
            &recording,
            options.max_duration_s.map(Duration::from_secs),
        )
        .await
        .map_err(|e| bad(&e.to_string()))?;
        self.publish_doc(&recording).await?;
        self.announce().await?;
        if let Some(hook) = self.takeover_hook.get() {
            hook(recording.doc());
        }
        Ok(recording)
    }

    /// The node that has file `name` of recording `id`, if the index knows.
    pub async fn file_node(&self, id: &str, name: &str) -> Result<Option<String>, ClusterError> {
        let mut conn = self.conn();
        Ok(redis::cmd("HGET")
            .arg(keys::files(id))
            .arg(name)
            .query_async(&mut conn)
            .await?)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.settings.node_id
    }

    /// This node's base URL for the other nodes.
    pub fn url(&self) -> &str {
        &self.settings.advertise_url
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining: no new work is placed here from now on (the next heartbeat says so,
    /// and this node's own placement skips it at once).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    fn conn(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// This node's current capacity figures.
    pub fn info(&self) -> NodeInfo {
        let active = self.services.store.active();
        let tracks = active.iter().map(|r| r.doc().tracks.len()).sum();
        NodeInfo {
            id: self.settings.node_id.clone(),
            url: self.settings.advertise_url.clone(),
            recordings: active.len(),
            max_recordings: self.settings.max_recordings,
            tracks,
            load: load_per_cpu(),
            free_disk: self.services.disk.free(),
            draining: self.is_draining(),
            bots: self.running_bots(),
        }
    }

    async fn heartbeat(&self) -> Result<(), ClusterError> {
        self.announce().await?;
        // Live figures of the recordings held here, for the index (a dead node's last word);
        // a held one that ended (any stop: requested, max duration, disk, shutdown) releases
        // its room's claim.
        let held: Vec<String> = lock(&self.leases).keys().cloned().collect();
        for id in held {
            let Ok(recording) = self.services.store.get(&id) else {
                lock(&self.leases).remove(&id);
                continue;
            };
            if recording.state().is_active() {
                self.publish_doc(&recording).await?;
            } else {
                self.finished(&recording).await?;
            }
        }
        self.bots_heartbeat().await
    }

    /// Writes this node's heartbeat (its capacity figures, with the TTL): every
    /// [`HEARTBEAT_EVERY`], and at once when a recording starts here, so that placement on
    /// other nodes sees it.
    async fn announce(&self) -> Result<(), ClusterError> {
        let info = self.info();
        let json =
            serde_json::to_string(&info).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let mut conn = self.conn();
        let (previous,): (Option<String>,) = redis::pipe()
            .cmd("SET")
            .arg(keys::node(&info.id))
            .arg(json)
            .arg("PX")
            .arg(HEARTBEAT_TTL.as_millis() as u64)
            .arg("GET")
            .cmd("SADD")
            .arg(keys::NODES)
            .arg(&info.id)
            .ignore()
            .query_async(&mut conn)
            .await?;
        // Our heartbeat had expired (this process was stopped or cut off for longer than the
        // TTL): the other nodes dropped our members; announce them again.
        if previous.is_none() && self.announced.swap(true, Ordering::Relaxed) {
            tracing::warn!("this node's heartbeat had expired: re-announcing its members");
            self.relay.resync();
        }
        Ok(())
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        let mut healthy = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => break,
            }
            match self.heartbeat().await {
                Ok(()) => {
                    if !healthy {
                        tracing::info!("cluster store reachable again");
                        self.relay.resync();
                    }
                    healthy = true;
                    if let Err(e) = self.reap_dead_nodes().await {
                        tracing::debug!(error = %e, "dead-node check failed");
                    }
                    if let Err(e) = self.take_over_dead().await {
                        tracing::warn!(error = %e, "takeover check failed");
                    }
                    if let Err(e) = self.restart_dead_bots().await {
                        tracing::warn!(error = %e, "bot restart check failed");
                    }
                }
                Err(e) => {
                    if healthy {
                        tracing::warn!(error = %e, "heartbeat failed; recordings continue");
                    }
                    healthy = false;
                }
            }
        }
        // Leaving: our heartbeat goes at once, so nothing waits for the TTL.
        let mut conn = self.conn();
        let _ = redis::cmd("DEL")
            .arg(keys::node(&self.settings.node_id))
            .query_async::<()>(&mut conn)
            .await;
    }

    /// Removes the mirrored members of nodes whose heartbeat expired.
    async fn reap_dead_nodes(&self) -> Result<(), ClusterError> {
        let live: std::collections::HashSet<String> =
            self.nodes().await?.into_iter().map(|n| n.id).collect();
        for node in self.relay.mirrored_nodes() {
            if !live.contains(&node) {
                tracing::warn!(node, "node gone: its room members are removed");
                self.relay.forget_node(&node).await?;
            }
        }
        Ok(())
    }

    /// The live nodes (their heartbeat key exists), this one included.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let mut conn = self.conn();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::NODES)
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let names: Vec<String> = ids.iter().map(|id| keys::node(id)).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&names)
            .query_async(&mut conn)
            .await?;
        let mut nodes: Vec<NodeInfo> = values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect();
        // Our own figures are fresher than our last heartbeat.
        let me = self.info();
        nodes.retain(|n| n.id != me.id);
        nodes.push(me);
        Ok(nodes)
    }

    /// The live nodes other than this one.
    pub async fn others(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let mut nodes = self.nodes().await?;
        nodes.retain(|n| n.id != self.settings.node_id);
        Ok(nodes)
    }

    /// Where a new recording should go: the live nodes that can take one, best first.
    pub async fn placement(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        Ok(placement_order(self.nodes().await?))
    }

    /// Where a new recording of `room` should go: as [`placement`](Self::placement), but the
    /// nodes holding the room's WHIP sessions first (most sessions first), since WHIP media
    /// reaches only a recorder on its session's node. When none of them can take it, the
    /// recording goes elsewhere and those publishers are not recorded (logged).
    pub async fn placement_for(&self, room: &str) -> Result<Vec<NodeInfo>, ClusterError> {
        let mut order = self.placement().await?;
        let whip = self.whip_nodes(room);
        let sessions = |n: &NodeInfo| whip.iter().filter(|w| **w == n.id).count();
        // Stable: nodes with as many sessions keep their capacity order.
        order.sort_by_key(|n| std::cmp::Reverse(sessions(n)));
        if let Some(away) = whip.iter().find(|w| !order.iter().any(|n| &n.id == *w)) {
            tracing::warn!(
                room,
                node = %away,
                "the room's WHIP publishers on a node that cannot take the recording will not be recorded"
            );
        }
        Ok(order)
    }

    /// The node of each WHIP publisher in `room` (one entry per publisher), from this node's
    /// view of the room (its own members and the mirrored ones).
    fn whip_nodes(&self, room: &str) -> Vec<String> {
        self.services
            .hub
            .peers(room)
            .into_iter()
            .filter(|p| p.whip)
            .map(|p| {
                self.relay
                    .member_node(room, &p.id)
                    .unwrap_or_else(|| self.settings.node_id.clone())
            })
            .collect()
    }

    /// The node of member `id` of `room` when it is another node's (mirrored here).
    pub fn member_node(&self, room: &str, id: &str) -> Option<String> {
        self.relay.member_node(room, id)
    }

    /// The other node a new WHIP session of `room` belongs on, with its URL: the node
    /// recording the room (or starting to), else one that has the room's WHIP publishers
    /// already, unless this node has some. `None`: here.
    pub async fn whip_home(&self, room: &str) -> Result<Option<(String, String)>, ClusterError> {
        let mut conn = self.conn();
        let claim: Option<String> = redis::cmd("GET")
            .arg(keys::claim(room))
            .query_async(&mut conn)
            .await?;
        let recorder = match claim {
            // A recording being started: `pending:{node}:{nonce}`.
            Some(pending) if pending.starts_with("pending:") => pending
                .trim_start_matches("pending:")
                .rsplit_once(':')
                .map(|(node, _)| node.to_owned()),
            Some(id) => {
                let (node, state): (Option<String>, Option<String>) = redis::cmd("HMGET")
                    .arg(keys::rec(&id))
                    .arg("node")
                    .arg("state")
                    .query_async(&mut conn)
                    .await?;
                node.filter(|_| matches!(state.as_deref(), Some("starting" | "recording")))
            }
            None => None,
        };
        let home = recorder.or_else(|| {
            let whip = self.whip_nodes(room);
            if whip.contains(&self.settings.node_id) {
                None
            } else {
                whip.into_iter().next()
            }
        });
        let Some(node) = home.filter(|n| *n != self.settings.node_id) else {
            return Ok(None);
        };
        Ok(self.node_url(&node).await?.map(|url| (node, url)))
    }

    /// Starts recording `room` on this node, holding the room's cluster-wide claim: `409` if
    /// any node records the room already. The claim is taken with a pending value before the
    /// recording exists (it expires if this node dies in between) and then names the recording.
    pub async fn start_local(
        &self,
        room: &str,
        options: RecordOptions,
    ) -> Result<Arc<Recording>, StartLocalError> {
        if self.is_draining() {
            return Err(ClusterError::Draining.into());
        }
        let mut conn = self.conn();
        let claim = keys::claim(room);
        let nonce = format!(
            "pending:{}:{:016x}",
            self.settings.node_id,
            rand::random::<u64>()
        );
        let won: Option<String> = redis::cmd("SET")
            .arg(&claim)
            .arg(&nonce)
            .arg("NX")
            .arg("PX")
            .arg(30_000u64)
            .query_async(&mut conn)
            .await
            .map_err(ClusterError::from)?;
        if won.is_none() {
            let holder: Option<String> = redis::cmd("GET")
                .arg(&claim)
                .query_async(&mut conn)
                .await
                .map_err(ClusterError::from)?;
            let holder = holder.unwrap_or_else(|| "another node".into());
            if self.claim_is_stale(&holder).await? {
                // Its recording ended without releasing the claim (its node died before
                // it could): take the claim over atomically and go on.
                let taken: i64 = redis::Script::new(CONFIRM_CLAIM)
                    .key(&claim)
                    .arg(&holder)
                    .arg(&nonce)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(ClusterError::from)?;
                if taken == 0 {
                    return Err(ClusterError::RoomBusy(room.into(), "another node".into()).into());
                }
            } else {
                return Err(ClusterError::RoomBusy(room.into(), holder).into());
            }
        }
        let recording = match crate::bot::recorder::start(&self.services, room, options).await {
            Ok(recording) => recording,
            Err(e) => {
                let _ = redis::Script::new(DELETE_IF)
                    .key(&claim)
                    .arg(&nonce)
                    .invoke_async::<i64>(&mut conn)
                    .await;
                return Err(e.into());
            }
        };
        recording.set_node(&self.settings.node_id, 0);
        recording.write_manifest();
        let registered = self.register(&recording, &claim, &nonce).await;
        if let Err(e) = registered {
            // Without the index nobody else could find or continue it: do not record
            // half-known.
            crate::bot::recorder::stop(
                &self.services,
                &recording,
                crate::record::manifest::StopReason::Error,
            )
            .await;
            return Err(e.into());
        }
        Ok(recording)
    }

    /// Whether the claim value `holder` names a recording that is over (or a pending claim
    /// of a node that is gone).
    async fn claim_is_stale(&self, holder: &str) -> Result<bool, ClusterError> {
        if holder.starts_with("pending:") {
            return Ok(false);
        }
        let mut conn = self.conn();
        let state: Option<String> = redis::cmd("HGET")
            .arg(keys::rec(holder))
            .arg("state")
            .query_async(&mut conn)
            .await?;
        Ok(matches!(
            state.as_deref(),
            Some("stopped" | "failed") | None
        ))
    }

    async fn register(
        &self,
        recording: &Arc<Recording>,
        claim: &str,
        nonce: &str,
    ) -> Result<(), ClusterError> {
        let mut conn = self.conn();
        let id = recording.id();
        let fence: u64 = redis::cmd("HINCRBY")
            .arg(keys::rec(id))
            .arg("fence")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        lock(&self.leases).insert(id.to_owned(), fence);
        let created_ms = now_ms();
        redis::pipe()
            .cmd("HSET")
            .arg(keys::rec(id))
            .arg("room")
            .arg(recording.room())
            .arg("node")
            .arg(&self.settings.node_id)
            .arg("takeovers")
            .arg(0)
            .ignore()
            .arg("options")
            .arg(serde_json::to_string(&StoredOptions::of(recording.options())).unwrap_or_default())
            .ignore()
            .cmd("ZADD")
            .arg(keys::RECORDINGS)
            .arg(created_ms)
            .arg(id)
            .ignore()
            .cmd("SADD")
            .arg(keys::held(&self.settings.node_id))
            .arg(id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        let confirmed: i64 = redis::Script::new(CONFIRM_CLAIM)
            .key(claim)
            .arg(nonce)
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        if confirmed == 0 {
            return Err(ClusterError::RoomBusy(
                recording.room().into(),
                "another node (this node's claim expired)".into(),
            ));
        }
        self.publish_doc(recording).await?;
        self.announce().await
    }

    /// Writes `recording`'s document to the index, if this node still holds its lease
    /// (fencing: after a takeover the old holder's writes are refused).
    pub async fn publish_doc(&self, recording: &Arc<Recording>) -> Result<(), ClusterError> {
        let Some(fence) = lock(&self.leases).get(recording.id()).copied() else {
            return Ok(());
        };
        let doc = recording.doc();
        let json =
            serde_json::to_string(&doc).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let mut conn = self.conn();
        let written: i64 = redis::Script::new(FENCED_WRITE)
            .key(keys::rec(recording.id()))
            .key(keys::RECORDINGS)
            .key(keys::held(&self.settings.node_id))
            .key(keys::claim(recording.room()))
            .arg(fence)
            .arg(json)
            .arg(state_name(doc.state))
            .arg(&self.settings.node_id)
            .arg(recording.room())
            .arg(recording.id())
            .arg(now_ms())
            .arg(doc.takeovers.unwrap_or(0))
            .invoke_async(&mut conn)
            .await?;
        if written == 0 {
            // Fenced out: another node continues it (this one was thought dead). Its recorder
            // leaves; its files here are finalized; the shared state is never written again.
            tracing::warn!(recording = %recording.id(), "lease lost: another node holds this recording now");
            lock(&self.leases).remove(recording.id());
            let services = Arc::clone(&self.services);
            let recording = Arc::clone(recording);
            tokio::spawn(async move {
                crate::bot::recorder::stop(
                    &services,
                    &recording,
                    crate::record::manifest::StopReason::Interrupted,
                )
                .await;
            });
            return Ok(());
        }
        // Which node has each file (downloads of files written before a takeover).
        let new: Vec<String> = {
            let known = lock(&self.indexed_files);
            doc.files
                .iter()
                .filter(|f| recording.dir().join(&f.name).exists())
                .filter(|f| !known.contains(&(doc.id.clone(), f.name.clone())))
                .map(|f| f.name.clone())
                .collect()
        };
        if !new.is_empty() {
            let mut pipe = redis::pipe();
            for name in &new {
                pipe.cmd("HSET")
                    .arg(keys::files(&doc.id))
                    .arg(name)
                    .arg(&self.settings.node_id)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
            let mut known = lock(&self.indexed_files);
            known.extend(new.into_iter().map(|n| (doc.id.clone(), n)));
        }
        Ok(())
    }

    /// After a local stop: publishes the final document and releases the room's claim.
    pub async fn finished(&self, recording: &Arc<Recording>) -> Result<(), ClusterError> {
        let holds = lock(&self.leases).contains_key(recording.id());
        self.publish_doc(recording).await?;
        if holds {
            let mut conn = self.conn();
            let _: i64 = redis::Script::new(DELETE_IF)
                .key(keys::claim(recording.room()))
                .arg(recording.id())
                .invoke_async(&mut conn)
                .await?;
            let _: () = redis::cmd("SREM")
                .arg(keys::held(&self.settings.node_id))
                .arg(recording.id())
                .query_async(&mut conn)
                .await?;
            lock(&self.leases).remove(recording.id());
        }
        Ok(())
    }

    /// The index entry of recording `id`, if the cluster knows it.
    pub async fn lookup(&self, id: &str) -> Result<Option<IndexEntry>, ClusterError> {
        let mut conn = self.conn();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::rec(id))
            .query_async(&mut conn)
            .await?;
        let Some(node) = fields.get("node") else {
            return Ok(None);
        };
        Ok(Some(IndexEntry {
            node: node.clone(),
            doc: fields.get("doc").and_then(|d| serde_json::from_str(d).ok()),
        }))
    }

    /// Every indexed recording id, newest first.
    pub async fn recording_ids(&self) -> Result<Vec<String>, ClusterError> {
        let mut conn = self.conn();
        Ok(redis::cmd("ZREVRANGE")
            .arg(keys::RECORDINGS)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?)
    }

    /// The index entries of `ids` (in order; unknown ones left out).
    pub async fn lookup_many(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, IndexEntry)>, ClusterError> {
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET").arg(keys::rec(id)).arg("node").arg("doc");
        }
        let rows: Vec<(Option<String>, Option<String>)> = pipe.query_async(&mut conn).await?;
        Ok(ids
            .iter()
            .zip(rows)
            .filter_map(|(id, (node, doc))| {
                Some((
                    id.clone(),
                    IndexEntry {
                        node: node?,
                        doc: doc.and_then(|d| serde_json::from_str(&d).ok()),
                    },
                ))
            })
            .collect())
    }

    /// Forgets recording `id` in the index (after it was deleted).
    pub async fn forget(&self, id: &str) -> Result<(), ClusterError> {
        let mut conn = self.conn();
        redis::pipe()
            .cmd("DEL")
            .arg(keys::rec(id))
            .ignore()
            .cmd("ZREM")
            .arg(keys::RECORDINGS)
            .arg(id)
            .ignore()
            .cmd("DEL")
            .arg(keys::files(id))
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// The base URL of live node `id`, if it is alive.
    pub async fn node_url(&self, id: &str) -> Result<Option<String>, ClusterError> {
        if id == self.settings.node_id {
            return Ok(Some(self.settings.advertise_url.clone()));
        }
        let mut conn = self.conn();
        let value: Option<String> = redis::cmd("GET")
            .arg(keys::node(id))
            .query_async(&mut conn)
            .await?;
        Ok(value
            .and_then(|v| serde_json::from_str::<NodeInfo>(&v).ok())
            .map(|n| n.url))
    }

    /// An internal request to another node's API (`path` with its query), answered by that
    /// node alone ([`LOCAL_HEADER`]), with the API token when one is configured, within
    /// [`CALL_TIMEOUT`] (file downloads: as long as bytes keep coming).
    pub fn request(
        &self,
        method: reqwest::Method,
        base: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{}", base.trim_end_matches('/'), path))
            .header(LOCAL_HEADER, "1");
        // A node that hangs (frozen, cut off) must not hold an API call for long; a file
        // download may take as long as it keeps moving (the read timeout).
        if !path.contains("/files/") {
            request = request.timeout(CALL_TIMEOUT);
        }
        if let Some(token) = &self.settings.api_token {
            request = request.bearer_auth(token);
        }
        request
    }
}

/// Error of [`Cluster::start_local`]: the cluster's or the recorder's.
#[derive(Debug, thiserror::Error)]
pub enum StartLocalError {
    /// The cluster refused or is unreachable.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The recorder could not start.
    #[error(transparent)]
    Start(#[from] crate::bot::recorder::StartError),
}

/// A recording's options as the index keeps them (for a takeover).
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredOptions {
    #[serde(default)]
    pli_interval_ms: Option<u64>,
    #[serde(default)]
    max_duration_s: Option<u64>,
    #[serde(default)]
    muxed: bool,
    #[serde(default)]
    notice: bool,
    #[serde(default)]
    mix: bool,
    #[serde(default)]
    composite: Option<(u32, u32)>,
}

impl StoredOptions {
    fn of(options: &RecordOptions) -> Self {
        Self {
            pli_interval_ms: options.pli_interval.map(|d| d.as_millis() as u64),
            max_duration_s: options.max_duration.map(|d| d.as_secs()),
            muxed: options.muxed,
            notice: options.notice,
            mix: options.mix,
            composite: options.composite,
        }
    }

    fn to_options(&self) -> RecordOptions {
        RecordOptions {
            pli_interval: self.pli_interval_ms.map(Duration::from_millis),
            max_duration: self.max_duration_s.map(Duration::from_secs),
            muxed: self.muxed,
            notice: self.notice,
            mix: self.mix,
            composite: self.composite,
        }
    }
}

/// Time since `started_at` (`2026-11-20T21:00:00.000Z`), if it reads and is in the past.
fn elapsed_since(started_at: &str) -> Option<Duration> {
    let b = started_at.as_bytes();
    if b.len() != 24 || b[23] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| started_at.get(range)?.parse::<u32>().ok();
    let month = time::Month::try_from(num(5..7)? as u8).ok()?;
    let date = time::Date::from_calendar_date(num(0..4)? as i32, month, num(8..10)? as u8).ok()?;
    let clock = time::Time::from_hms_milli(
        num(11..13)? as u8,
        num(14..16)? as u8,
        num(17..19)? as u8,
        num(20..23)? as u16,
    )
    .ok()?;
    let then = time::PrimitiveDateTime::new(date, clock).assume_utc();
    let since = time::OffsetDateTime::now_utc() - then;
    since.try_into().ok()
}

/// Unix time in ms.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One-minute load average per CPU (0 where unknown).
fn load_per_cpu() -> f64 {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|l| l.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    load / cpus as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, recordings: usize, tracks: usize, draining: bool) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            url: format!("http://{id}"),
            recordings,
            max_recordings: 4,
            tracks,
            load: 0.1,
            free_disk: 1 << 30,
            draining,
            bots: 0,
        }
    }

    #[test]
    fn started_at_reads_back() {
        let now = crate::record::manifest::format_time(time::OffsetDateTime::now_utc());
        assert!(elapsed_since(&now).is_some_and(|d| d < Duration::from_secs(5)));
        let before = elapsed_since("2020-01-02T03:04:05.678Z").unwrap();
        assert!(before > Duration::from_secs(86_400 * 365 * 5));
        assert_eq!(elapsed_since("2020-13-02T03:04:05.678Z"), None);
        assert_eq!(elapsed_since("garbage"), None);
    }

    #[test]
    fn placement_prefers_spare_capacity_and_skips_full_or_draining_nodes() {
        let order = placement_order(vec![
            node("a", 2, 4, false),
            node("b", 1, 9, false),
            node("c", 1, 2, false),
            node("d", 0, 0, true),
            node("e", 4, 0, false),
        ]);
        let ids: Vec<&str> = order.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, vec!["c", "b", "a"]);
    }
}
