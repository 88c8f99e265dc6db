//! The cluster's bots (SPEC §9): an index in Redis (`recbot:bot:{id}`: node, spec, fencing
//! token, state, last document; `recbot:botheld:{node}`: the running bots a node holds),
//! placement of a new bot, its restart on a live node when its node dies (one winner: an
//! atomic script moves the token on), and its move to another node when its node drains.
//!
//! A restarted bot keeps its id, its `started_at` and its spec, and joins the same room; its
//! `restarts` counts the moves. A node fenced out (or back after its bots were restarted
//! elsewhere) stops its copy and never writes the entry again.

use super::{keys, lock, Cluster, ClusterError, NodeInfo};
use crate::bot::registry::{Bot, BotDoc, BotSpec, BotState, BotStore, Mode, MAX_BOTS};
use crate::record::manifest::StopReason;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long the entry of an ended bot stays in the index (its last document, for a `GET`).
const ENDED_TTL_S: u64 = 86_400;

/// Writes a new bot's entry (KEYS[1]) held by node ARGV[1] (set KEYS[2]); returns its fence.
const REGISTER: &str = r"
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'spec', ARGV[2], 'doc', ARGV[3],
  'state', 'running', 'started_at', ARGV[4], 'restarts', 0)
redis.call('PERSIST', KEYS[1])
redis.call('SADD', KEYS[2], ARGV[5])
return fence";

/// A fenced write of bot KEYS[1] by its holder ARGV[4] (held set KEYS[2]): only while the
/// fence still equals ARGV[1]. An ended bot (ARGV[3] not `running`) leaves the held set and
/// its entry expires. When the index lost a running bot (Redis came back empty), the holder
/// writes it again.
const FENCED_WRITE: &str = r"
local fence = redis.call('HGET', KEYS[1], 'fence')
if fence == false then
  if ARGV[3] ~= 'running' then return 1 end
  redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'spec', ARGV[6], 'started_at', ARGV[7],
    'restarts', ARGV[8])
  redis.call('SADD', KEYS[2], ARGV[5])
  fence = ARGV[1]
end
if fence ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'state', ARGV[3], 'node', ARGV[4])
if ARGV[3] ~= 'running' then
  redis.call('SREM', KEYS[2], ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[9])
end
return 1";

/// Takes bot KEYS[1] over from node ARGV[1] for node ARGV[2]: only while that node still
/// holds it, it runs, and (ARGV[4] `dead`) its heartbeat KEYS[2] is still gone, or (ARGV[4]
/// `handover`) that node hands it over while draining. One winner: the fence moves on.
/// Returns the new fence, or 0 (an entry that is gone also leaves the held set KEYS[3]).
const TAKE_OVER: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[3])
  return 0
end
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if ARGV[4] == 'dead' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'node', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'restarts', 1)
redis.call('SREM', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[3])
return fence";

/// A node back after a crash: bot KEYS[1] (listed in its held set KEYS[2]) that it still
/// holds (nobody restarted it) ends: its bots lived in its memory only.
const RELEASE_STALE: &str = r"
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'state', 'stopped')
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1";

/// Bot KEYS[1] was deleted (`DELETE /api/bots/{id}`): a tombstone that expires, the fence
/// moved on (a holder that wakes up is fenced out, nobody restarts it), out of its node's
/// held set KEYS[2].
const FORGET: &str = r"
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'state', 'deleted')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[1])
return 1";

/// A bot's spec as the index keeps it (for a restart elsewhere).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSpec {
    room: String,
    mode: Mode,
    #[serde(default)]
    media: Option<String>,
    #[serde(default)]
    looping: bool,
    silence_ms: u64,
    max_duration_ms: u64,
}

impl StoredSpec {
    fn of(spec: &BotSpec) -> Self {
        Self {
            room: spec.room.clone(),
            mode: spec.mode,
            media: spec.media.clone(),
            looping: spec.looping,
            silence_ms: spec.silence.as_millis() as u64,
            max_duration_ms: spec.max_duration.as_millis() as u64,
        }
    }

    /// The spec a Bot document shows (its fields are the request's).
    fn of_doc(doc: &BotDoc) -> Self {
        let ms = |s: Option<f64>| (s.unwrap_or(0.0).max(0.0) * 1000.0) as u64;
        Self {
            room: doc.room.clone(),
            mode: doc.mode,
            media: doc.media.clone(),
            looping: doc.looping.unwrap_or(false),
            silence_ms: ms(doc.silence_s),
            max_duration_ms: ms(doc.max_duration_s),
        }
    }

    fn to_spec(&self) -> BotSpec {
        BotSpec {
            room: self.room.clone(),
            mode: self.mode,
            media: self.media.clone(),
            looping: self.looping,
            silence: Duration::from_millis(self.silence_ms),
            max_duration: Duration::from_millis(self.max_duration_ms),
        }
    }
}

/// Where a bot is, as the cluster index says.
#[derive(Debug, Clone)]
pub struct BotEntry {
    /// The node running it (or that ran it last).
    pub node: String,
    /// Its last document (with the index's state: an ended bot shows `stopped`).
    pub doc: Option<BotDoc>,
}

fn state_name(state: BotState) -> &'static str {
    match state {
        BotState::Running => "running",
        BotState::Stopping | BotState::Stopped => "stopped",
    }
}

impl Cluster {
    /// Gives the cluster this node's bots: from now on it restarts dead nodes' bots here,
    /// publishes this node's bots to the index, and moves them away on a drain. Only the
    /// first call counts.
    pub fn attach_bots(&self, bots: Arc<BotStore>) {
        let _ = self.bots.set(bots);
    }

    /// Running bots on this node (the capacity figure).
    pub(super) fn running_bots(&self) -> usize {
        self.bots.get().map_or(0, |b| b.running())
    }

    /// Where a new bot should go: the live nodes that are not draining, best first (the
    /// recordings' order: spare recording slots, tracks, bots, load, disk).
    pub async fn bot_placement(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let mut nodes = self.nodes().await?;
        nodes.retain(|n| !n.draining && n.bots < MAX_BOTS);
        nodes.sort_by(NodeInfo::rank);
        Ok(nodes)
    }

    /// Indexes `bot`, just started on this node (`503` without Redis: the caller stops it).
    pub async fn register_bot(&self, bot: &Bot) -> Result<(), ClusterError> {
        let doc = self.bot_doc(bot);
        let spec = serde_json::to_string(&StoredSpec::of(bot.spec()))
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let json =
            serde_json::to_string(&doc).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let mut conn = self.conn();
        let me = &self.settings.node_id;
        let fence: u64 = redis::Script::new(REGISTER)
            .key(keys::bot(bot.id()))
            .key(keys::bot_held(me))
            .arg(me)
            .arg(spec)
            .arg(json)
            .arg(&doc.started_at)
            .arg(bot.id())
            .invoke_async(&mut conn)
            .await?;
        lock(&self.bot_leases).insert(bot.id().to_owned(), fence);
        self.announce().await
    }

    fn bot_doc(&self, bot: &Bot) -> BotDoc {
        bot.doc(&self.services.store)
    }

    /// Writes bot `id`'s document (`doc`) to the index if this node still holds its lease.
    /// Fenced out (another node runs it now): the copy here stops, without `bot.stopped`.
    async fn publish_bot(&self, id: &str, doc: &BotDoc) -> Result<(), ClusterError> {
        let Some(fence) = lock(&self.bot_leases).get(id).copied() else {
            return Ok(());
        };
        let json =
            serde_json::to_string(doc).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        // The spec, for an index that lost the entry (a running bot is listed here).
        let spec = match self.bots.get().and_then(|b| b.get(id).ok()) {
            Some(bot) => StoredSpec::of(bot.spec()),
            None => StoredSpec::of_doc(doc),
        };
        let spec =
            serde_json::to_string(&spec).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let me = &self.settings.node_id;
        let state = state_name(doc.state);
        let mut conn = self.conn();
        let written: i64 = redis::Script::new(FENCED_WRITE)
            .key(keys::bot(id))
            .key(keys::bot_held(me))
            .arg(fence)
            .arg(json)
            .arg(state)
            .arg(me)
            .arg(id)
            .arg(spec)
            .arg(&doc.started_at)
            .arg(doc.restarts.unwrap_or(0))
            .arg(ENDED_TTL_S)
            .invoke_async(&mut conn)
            .await?;
        if written == 0 {
            tracing::warn!(bot = %id, "bot lease lost: another node runs this bot now");
            lock(&self.bot_leases).remove(id);
            if let Some(bots) = self.bots.get() {
                if let Ok(bot) = bots.get(id) {
                    bot.hand_off();
                    let bots = Arc::clone(bots);
                    let id = id.to_owned();
                    tokio::spawn(async move {
                        let _ = bots.remove(&id, StopReason::Interrupted).await;
                    });
                }
            }
        } else if state != "running" {
            lock(&self.bot_leases).remove(id);
        }
        Ok(())
    }

    /// The heartbeat's part for bots: live documents of the bots held here; a bot that ended
    /// here (a `play` at the end of its file, or gone from the list) ends in the index too.
    pub(super) async fn bots_heartbeat(&self) -> Result<(), ClusterError> {
        let held: Vec<String> = lock(&self.bot_leases).keys().cloned().collect();
        for id in held {
            let bot = self.bots.get().and_then(|b| b.get(&id).ok());
            let doc = match bot {
                Some(bot) => self.bot_doc(&bot),
                None => match self.lookup_bot(&id).await? {
                    Some(BotEntry {
                        doc: Some(mut doc), ..
                    }) => {
                        doc.state = BotState::Stopped;
                        doc.peers.clear();
                        doc
                    }
                    _ => {
                        lock(&self.bot_leases).remove(&id);
                        continue;
                    }
                },
            };
            self.publish_bot(&id, &doc).await?;
        }
        Ok(())
    }

    /// At the end of a shutdown: the bots still held here end in the index.
    pub(super) async fn settle_bots(&self) {
        if let Err(e) = self.bots_heartbeat().await {
            tracing::warn!(error = %e, "final state of the bots not published");
        }
    }

    /// After `DELETE /api/bots/{id}` (here, or of a bot whose `node` is dead): the bot
    /// leaves the index for good (nobody restarts it; its old holder is fenced out).
    pub async fn forget_bot(&self, id: &str, node: &str) -> Result<(), ClusterError> {
        lock(&self.bot_leases).remove(id);
        let mut conn = self.conn();
        let _: i64 = redis::Script::new(FORGET)
            .key(keys::bot(id))
            .key(keys::bot_held(node))
            .arg(id)
            .arg(ENDED_TTL_S)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The index entry of bot `id`, if the cluster knows it.
    pub async fn lookup_bot(&self, id: &str) -> Result<Option<BotEntry>, ClusterError> {
        let mut conn = self.conn();
        let (node, doc, state): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(keys::bot(id))
                .arg("node")
                .arg("doc")
                .arg("state")
                .query_async(&mut conn)
                .await?;
        let Some(node) = node else {
            return Ok(None);
        };
        if state.as_deref() == Some("deleted") {
            return Ok(None);
        }
        let mut doc = doc.and_then(|d| serde_json::from_str::<BotDoc>(&d).ok());
        if let Some(doc) = doc.as_mut() {
            if state.as_deref() != Some("running") {
                doc.state = BotState::Stopped;
                doc.peers.clear();
            }
        }
        Ok(Some(BotEntry { node, doc }))
    }

    /// At start: the bots this node ran before it stopped or died, and that nobody restarted,
    /// end in the index (they lived in its memory). Those restarted elsewhere are left alone.
    pub(super) async fn release_stale_bots(&self) -> Result<(), ClusterError> {
        let mut conn = self.conn();
        let me = &self.settings.node_id;
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::bot_held(me))
            .query_async(&mut conn)
            .await?;
        for id in ids {
            let released: i64 = redis::Script::new(RELEASE_STALE)
                .key(keys::bot(&id))
                .key(keys::bot_held(me))
                .arg(me)
                .arg(&id)
                .arg(ENDED_TTL_S)
                .invoke_async(&mut conn)
                .await?;
            tracing::info!(bot = %id, ended = released == 1, "bot of before settled");
        }
        Ok(())
    }

    /// Restarts here the running bots of dead nodes (their heartbeat expired), one winner per
    /// bot across the cluster; this node tries only while it takes bots (not draining, below
    /// the bot limit).
    pub(super) async fn restart_dead_bots(&self) -> Result<(), ClusterError> {
        let Some(bots) = self.bots.get() else {
            return Ok(());
        };
        if self.is_draining() {
            return Ok(());
        }
        let mut conn = self.conn();
        for dead in self.dead_nodes().await? {
            let dead = &dead;
            let held: Vec<String> = redis::cmd("SMEMBERS")
                .arg(keys::bot_held(dead))
                .query_async(&mut conn)
                .await?;
            for id in held {
                if bots.running() >= MAX_BOTS {
                    return Ok(());
                }
                let fence = self.take_bot(&id, dead, "dead").await?;
                if fence > 0 {
                    tracing::warn!(bot = %id, from = %dead, "restarting a bot of a dead node");
                    if let Err(e) = self.run_bot_here(&id, fence).await {
                        tracing::error!(bot = %id, error = %e, "bot restart failed");
                    }
                }
            }
        }
        Ok(())
    }

    async fn take_bot(&self, id: &str, from: &str, mode: &str) -> Result<u64, ClusterError> {
        let mut conn = self.conn();
        let fence: i64 = redis::Script::new(TAKE_OVER)
            .key(keys::bot(id))
            .key(keys::node(from))
            .key(keys::bot_held(from))
            .key(keys::bot_held(&self.settings.node_id))
            .arg(from)
            .arg(&self.settings.node_id)
            .arg(id)
            .arg(mode)
            .invoke_async(&mut conn)
            .await?;
        Ok(fence.max(0) as u64)
    }

    /// Runs bot `id` here with lease `fence` (taken over): the same id, `started_at` and spec,
    /// in the same room. A bot that cannot start here (its media missing on this node, the
    /// room full) ends in the index.
    async fn run_bot_here(&self, id: &str, fence: u64) -> Result<BotDoc, ClusterError> {
        let bad =
            |what: &str| ClusterError::Node(self.settings.node_id.clone(), format!("{id}: {what}"));
        let bots = self.bots.get().ok_or_else(|| bad("no bots on this node"))?;
        let mut conn = self.conn();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::bot(id))
            .query_async(&mut conn)
            .await?;
        let spec: StoredSpec = fields
            .get("spec")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad("no spec in the index"))?;
        let started_at = fields.get("started_at").cloned().unwrap_or_else(|| {
            crate::record::manifest::format_time(time::OffsetDateTime::now_utc())
        });
        let restarts: u32 = fields
            .get("restarts")
            .and_then(|r| r.parse().ok())
            .unwrap_or(1);
        lock(&self.bot_leases).insert(id.to_owned(), fence);
        let bot = Bot::restored(id.to_owned(), started_at, spec.to_spec(), &self.services);
        bot.set_node(&self.settings.node_id, restarts);
        match crate::bot::launch::start_bot(&self.services, bots, Arc::clone(&bot)).await {
            Ok(bot) => {
                let doc = self.bot_doc(&bot);
                self.publish_bot(id, &doc).await?;
                self.announce().await?;
                Ok(doc)
            }
            Err(e) => {
                let mut doc = self.bot_doc(&bot);
                doc.state = BotState::Stopped;
                doc.stopped_at = Some(crate::record::manifest::format_time(
                    time::OffsetDateTime::now_utc(),
                ));
                self.publish_bot(id, &doc).await?;
                Err(bad(&e.to_string()))
            }
        }
    }

    /// Takes bot `id` over from draining node `from` (its internal call): the bot starts here
    /// with the same id and spec, and the answer (its document) comes once it is in the room.
    pub async fn accept_bot_handover(&self, id: &str, from: &str) -> Result<BotDoc, ClusterError> {
        if self.is_draining() || self.running_bots() >= MAX_BOTS {
            return Err(ClusterError::Draining);
        }
        let fence = self.take_bot(id, from, "handover").await?;
        if fence == 0 {
            return Err(ClusterError::Node(
                from.into(),
                format!("does not hold bot `{id}`"),
            ));
        }
        tracing::info!(bot = %id, from, "handover: running a draining node's bot");
        self.run_bot_here(id, fence).await
    }

    /// The drain's part for bots: each bot running here starts on the best other node (same
    /// id), then stops here (no `bot.stopped`: it goes on). Bots no other node takes stay and
    /// stop with the shutdown.
    pub(super) async fn drain_bots(&self) {
        let Some(bots) = self.bots.get() else {
            return;
        };
        let running: Vec<Arc<Bot>> = bots
            .list()
            .into_iter()
            .filter(|b| b.state() == BotState::Running)
            .filter(|b| lock(&self.bot_leases).contains_key(b.id()))
            .collect();
        let moves = running.into_iter().map(|bot| async move {
            // The index gets the newest document first.
            let _ = self.publish_bot(bot.id(), &self.bot_doc(&bot)).await;
            let Ok(order) = self.bot_placement().await else {
                return;
            };
            for node in order.iter().filter(|n| n.id != self.settings.node_id) {
                let path = format!(
                    "/api/cluster/bot-handover/{}?from={}",
                    bot.id(),
                    self.settings.node_id
                );
                let answer = self
                    .request(reqwest::Method::POST, &node.url, &path)
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().is_success() => {
                        tracing::info!(bot = %bot.id(), to = %node.id, "bot handed over");
                        lock(&self.bot_leases).remove(bot.id());
                        bot.hand_off();
                        let _ = bots.remove(bot.id(), StopReason::Shutdown).await;
                        return;
                    }
                    Ok(r) => {
                        tracing::warn!(bot = %bot.id(), to = %node.id, status = %r.status(), "bot handover refused")
                    }
                    Err(e) => {
                        tracing::warn!(bot = %bot.id(), to = %node.id, error = %e, "bot handover failed")
                    }
                }
            }
        });
        futures::future::join_all(moves).await;
    }
}
