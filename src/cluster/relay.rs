//! Rooms that span nodes (SPEC §9): every node mirrors the members of the other nodes in its
//! hub and relays signaling to them over Redis pub/sub.
//!
//! - A member joining here first takes its place in the room's cluster-wide order
//!   ([`RemoteRooms::order`]): one Lua script gives it the room's next sequence number,
//!   writes it into the room's members hash (refused when the room is full cluster-wide) and
//!   returns the members present before it. Those of other nodes are mirrored at once, so the
//!   newcomer's `welcome` lists exactly them, even when their join events are still on the way.
//!   Two peers joining one room on two nodes at the same instant thus get one order: the
//!   later one lists the earlier one and offers, the earlier one is told `peer-joined`.
//! - The join (with its sequence number) and leaves are published on [`keys::EVENTS`]; the
//!   other nodes mirror it ([`Hub::add_remote`]) and tell `peer-joined` only to their own
//!   members that joined before it, `peer-left` to all.
//! - With Redis unreachable a join goes on unordered on this node alone (as on a single node;
//!   the other nodes learn of it once Redis is back), so two joins on two nodes in that window
//!   may still miss each other.
//! - A message relayed here to a mirrored member goes to its node's channel
//!   ([`keys::signal`]) and is delivered there ([`Hub::deliver`]).
//! - Everything this node sends to Redis goes through one queue and one task, in order, so a
//!   peer's `peer-joined` reaches every node before its first offer, and the messages of one
//!   sender keep their order.
//! - At (re)connection the node loads every room's members hash: mirrors match the cluster
//!   again after an outage. Members of a dead node are removed by [`Relay::forget_node`].

use super::keys;
use crate::signal::hub::{Hub, JoinError, Order, RemoteRooms};
use crate::signal::protocol::{PeerInfo, ServerMessage};
use futures::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest a join waits for its place in the cluster-wide order before it goes on unordered.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(1);

/// After a failed ordering, joins go on unordered for this long without asking Redis (so
/// that with Redis down each join does not wait for [`ORDER_TIMEOUT`]).
const UNORDERED_FOR: Duration = Duration::from_secs(2);

/// How long a member that left is remembered, so that a members list read before its leave
/// does not mirror it again.
const TOMBSTONE_FOR: Duration = Duration::from_secs(60);

/// A join's place in its room: KEYS[1] the room's members hash, KEYS[2] its join counter;
/// ARGV[1] the peer id, ARGV[2] its entry (JSON object without `seq`), ARGV[3] the room's
/// member limit. The sequence number is the counter's next value, at least Redis's clock in
/// ms (so numbers keep growing after Redis lost its data). Returns `{seq, members before}`
/// (`seq` as a string, `"0"` when the room is full).
static ORDER_JOIN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return {'0', {}} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, now)
local s = string.format('%.0f', seq)
redis.call('SET', KEYS[2], s, 'PX', 86400000)
local before = redis.call('HGETALL', KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], '{"seq":' .. s .. ',' .. string.sub(ARGV[2], 2))
return {s, before}"#,
    )
});

/// What travels over Redis pub/sub between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "kebab-case")]
pub enum Wire {
    /// `peer` of `node` joined `room`.
    Join {
        /// Room.
        room: String,
        /// The member.
        peer: PeerInfo,
        /// Its node.
        node: String,
        /// Its place in the room's order of joins (0: unordered).
        #[serde(default)]
        seq: u64,
    },
    /// Member `id` of `node` left `room`.
    Leave {
        /// Room.
        room: String,
        /// Its id.
        id: String,
        /// Its node.
        node: String,
    },
    /// `message` for member `to` of `room` (on the node whose channel carries it).
    Signal {
        /// Room.
        room: String,
        /// The addressee.
        to: String,
        /// The message as the addressee gets it (`from` set).
        message: ServerMessage,
        /// Sent at (Unix ms), for the cross-node latency figure.
        #[serde(default)]
        sent_ms: u64,
    },
}

/// A member entry of a room's members hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    peer: PeerInfo,
    node: String,
    /// Its place in the room's order of joins (0: unordered, then not written).
    #[serde(default, skip_serializing_if = "is_zero")]
    seq: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

enum Out {
    /// Publish `wire` on `channel` (a join or leave also updates the room's members hash).
    Publish { channel: String, wire: Wire },
}

/// The relay of one node (implements the hub's [`RemoteRooms`]).
pub struct Relay {
    node: String,
    hub: Arc<Hub>,
    redis: ConnectionManager,
    out: mpsc::UnboundedSender<Out>,
    out_rx: Mutex<Option<mpsc::UnboundedReceiver<Out>>>,
    /// Mirrored members: (room, id) → their node.
    mirrors: Mutex<HashMap<(String, String), String>>,
    /// This relay (weak: set once at creation).
    me: std::sync::OnceLock<std::sync::Weak<Relay>>,
    /// Members of other nodes that left lately: (room, id) → when.
    gone: Mutex<HashMap<(String, String), Instant>>,
    /// This node's join locks, by room: its joins of one room take their places and enter
    /// the hub one at a time, so they enter in the order of their sequence numbers.
    join_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Until when joins go on unordered (Redis failed lately).
    unordered_until: Mutex<Option<Instant>>,
}

/// Holds a room's join lock of this node; frees the room's entry when nobody else waits.
struct JoinLock {
    room: String,
    locks: Arc<Relay>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for JoinLock {
    fn drop(&mut self) {
        let mut locks = lock(&self.locks.join_locks);
        self.guard = None;
        // Only the map holds it now (clones are taken under this lock): nobody waits.
        if locks
            .get(&self.room)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.room);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[async_trait::async_trait]
impl RemoteRooms for Relay {
    fn joined(&self, room: &str, peer: &PeerInfo, seq: u64) {
        let _ = self.out.send(Out::Publish {
            channel: keys::EVENTS.into(),
            wire: Wire::Join {
                room: room.into(),
                peer: peer.clone(),
                node: self.node.clone(),
                seq,
            },
        });
    }

    fn left(&self, room: &str, id: &str) {
        let _ = self.out.send(Out::Publish {
            channel: keys::EVENTS.into(),
            wire: Wire::Leave {
                room: room.into(),
                id: id.into(),
                node: self.node.clone(),
            },
        });
    }

    async fn order(&self, room: &str, peer: &PeerInfo) -> Result<Option<Order>, JoinError> {
        let Some(this) = self.this() else {
            return Ok(None);
        };
        let hold = this.join_lock(room).await;
        let unordered = lock(&self.unordered_until).is_some_and(|t| Instant::now() < t);
        if unordered {
            return Ok(None);
        }
        let entry = serde_json::to_string(&Entry {
            peer: peer.clone(),
            node: self.node.clone(),
            seq: 0,
        })
        .unwrap_or_default();
        let mut conn = self.redis.clone();
        let mut invocation = ORDER_JOIN.key(keys::members(room));
        invocation
            .key(keys::join_seq(room))
            .arg(&peer.id)
            .arg(entry)
            .arg(self.hub.max_peers_per_room());
        let call = invocation.invoke_async::<(String, Vec<String>)>(&mut conn);
        let (seq, before) = match tokio::time::timeout(ORDER_TIMEOUT, call).await {
            Ok(Ok(answer)) => answer,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::warn!(room, error, "join not ordered cluster-wide: the cluster store is unreachable; joining on this node alone");
                *lock(&self.unordered_until) = Some(Instant::now() + UNORDERED_FOR);
                return Ok(None);
            }
        };
        let seq: u64 = seq.parse().unwrap_or(0);
        if seq == 0 {
            return Err(JoinError::RoomFull(room.to_owned()));
        }
        // The members before it, mirrored now: its welcome lists exactly them.
        for pair in before.chunks_exact(2) {
            if let Ok(entry) = serde_json::from_str::<Entry>(&pair[1]) {
                if entry.node != self.node {
                    this.mirror_listed(room, entry);
                }
            }
        }
        Ok(Some(Order {
            seq,
            hold: Box::new(hold),
        }))
    }
}

impl Relay {
    /// The relay of node `node` for `hub`.
    pub fn new(node: String, hub: Arc<Hub>, redis: ConnectionManager) -> Arc<Self> {
        let (out, out_rx) = mpsc::unbounded_channel();
        let relay = Arc::new(Self {
            node,
            hub,
            redis,
            out,
            out_rx: Mutex::new(Some(out_rx)),
            mirrors: Mutex::new(HashMap::new()),
            gone: Mutex::new(HashMap::new()),
            join_locks: Mutex::new(HashMap::new()),
            unordered_until: Mutex::new(None),
            me: std::sync::OnceLock::new(),
        });
        let _ = relay.me.set(Arc::downgrade(&relay));
        relay
    }

    /// This relay as an `Arc` (the hub holds it through `dyn RemoteRooms`, by `&self`).
    fn this(&self) -> Option<Arc<Self>> {
        self.me.get()?.upgrade()
    }

    /// Takes this node's join lock of `room`.
    async fn join_lock(self: &Arc<Self>, room: &str) -> JoinLock {
        let mutex = Arc::clone(lock(&self.join_locks).entry(room.to_owned()).or_default());
        let guard = mutex.lock_owned().await;
        JoinLock {
            room: room.to_owned(),
            locks: Arc::clone(self),
            guard: Some(guard),
        }
    }

    /// Mirrors a member of another node read from `room`'s members hash, unless it is
    /// mirrored already or left since (its leave came before this list).
    fn mirror_listed(self: &Arc<Self>, room: &str, entry: Entry) {
        let key = (room.to_owned(), entry.peer.id.clone());
        if lock(&self.mirrors).contains_key(&key) || lock(&self.gone).contains_key(&key) {
            return;
        }
        self.mirror(room, entry.peer, &entry.node, entry.seq);
    }

    /// Forgets mirrored member `id` of `room` (it left, or its node is gone).
    fn unmirror(&self, room: &str, id: &str) {
        let key = (room.to_owned(), id.to_owned());
        lock(&self.mirrors).remove(&key);
        {
            let mut gone = lock(&self.gone);
            gone.retain(|_, at| at.elapsed() < TOMBSTONE_FOR);
            gone.insert(key, Instant::now());
        }
        self.hub.remove_remote(room, id);
    }

    /// Runs the publisher and the subscriber until `shutdown`.
    pub async fn run(self: Arc<Self>, client: redis::Client, shutdown: CancellationToken) {
        let out_rx = lock(&self.out_rx).take();
        if let Some(out_rx) = out_rx {
            tokio::spawn(Arc::clone(&self).publish(out_rx, shutdown.clone()));
        }
        loop {
            if let Err(e) = self.subscribe(&client, &shutdown).await {
                tracing::warn!(error = %e, "cluster signaling subscription lost; reconnecting");
            }
            if shutdown.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Sends what the node queued, in order. A message that Redis refuses is retried while
    /// Redis is down (membership must not be lost), a relayed signal is dropped after a try
    /// (its peers renegotiate or time out, as with a lost packet).
    async fn publish(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Out>,
        shutdown: CancellationToken,
    ) {
        let mut conn = self.redis.clone();
        loop {
            let out = tokio::select! {
                out = rx.recv() => match out { Some(out) => out, None => return },
                _ = shutdown.cancelled() => return,
            };
            let Out::Publish { channel, wire } = out;
            let Ok(json) = serde_json::to_string(&wire) else {
                continue;
            };
            let mut pipe = redis::pipe();
            match &wire {
                Wire::Join {
                    room,
                    peer,
                    node,
                    seq,
                } => {
                    // Written by the ordered join already; again for unordered joins and
                    // re-announcements after an outage.
                    let entry = serde_json::to_string(&Entry {
                        peer: peer.clone(),
                        node: node.clone(),
                        seq: *seq,
                    })
                    .unwrap_or_default();
                    pipe.cmd("HSET")
                        .arg(keys::members(room))
                        .arg(&peer.id)
                        .arg(entry)
                        .ignore()
                        .cmd("SADD")
                        .arg(keys::ROOMS)
                        .arg(room)
                        .ignore();
                }
                Wire::Leave { room, id, .. } => {
                    pipe.cmd("HDEL").arg(keys::members(room)).arg(id).ignore();
                }
                Wire::Signal { .. } => {}
            }
            pipe.cmd("PUBLISH").arg(&channel).arg(&json).ignore();
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                tracing::debug!(error = %e, "cluster publish failed");
            }
        }
    }

    async fn subscribe(
        self: &Arc<Self>,
        client: &redis::Client,
        shutdown: &CancellationToken,
    ) -> redis::RedisResult<()> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(keys::EVENTS).await?;
        pubsub.subscribe(keys::signal(&self.node)).await?;
        // Subscribed first, then loaded: no join falls between.
        self.load().await?;
        let mut messages = pubsub.on_message();
        loop {
            let message = tokio::select! {
                m = messages.next() => match m {
                    Some(m) => m,
                    None => return Err(redis::RedisError::from((redis::ErrorKind::Io, "subscription closed"))),
                },
                _ = shutdown.cancelled() => return Ok(()),
            };
            let Ok(payload) = message.get_payload::<String>() else {
                continue;
            };
            match serde_json::from_str::<Wire>(&payload) {
                Ok(wire) => self.receive(wire),
                Err(e) => tracing::warn!(error = %e, "unreadable cluster message ignored"),
            }
        }
    }

    fn receive(self: &Arc<Self>, wire: Wire) {
        match wire {
            Wire::Join {
                room,
                peer,
                node,
                seq,
            } if node != self.node => self.mirror(&room, peer, &node, seq),
            Wire::Leave { room, id, node } if node != self.node => self.unmirror(&room, &id),
            Wire::Signal {
                room,
                to,
                message,
                sent_ms,
            } => {
                if sent_ms > 0 {
                    let ms = now_ms().saturating_sub(sent_ms);
                    tracing::trace!(ms, "cross-node signaling delay");
                }
                if !self.hub.deliver(&room, &to, message) {
                    tracing::debug!(room, peer = %to, "relayed message for a peer gone");
                }
            }
            _ => {}
        }
    }

    /// Mirrors `peer` of `node` (sequence `seq`) in `room`, with a task that relays what the
    /// hub queues for it.
    fn mirror(self: &Arc<Self>, room: &str, peer: PeerInfo, node: &str, seq: u64) {
        let id = peer.id.clone();
        let Some(mut rx) = self.hub.add_remote(room, peer, seq) else {
            return;
        };
        lock(&self.mirrors).insert((room.to_owned(), id.clone()), node.to_owned());
        let out = self.out.clone();
        let channel = keys::signal(node);
        let room = room.to_owned();
        tokio::spawn(async move {
            // Ends when the hub drops the member (its queue's sender goes with it).
            while let Some(message) = rx.recv().await {
                let wire = Wire::Signal {
                    room: room.clone(),
                    to: id.clone(),
                    message: Arc::unwrap_or_clone(message),
                    sent_ms: now_ms(),
                };
                if out
                    .send(Out::Publish {
                        channel: channel.clone(),
                        wire,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    /// Loads every room's members from Redis: mirrors members of other live nodes not yet
    /// mirrored, drops mirrors no longer listed, and re-announces this node's own members (an
    /// outage may have lost their events).
    async fn load(self: &Arc<Self>) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        let rooms: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::ROOMS)
            .query_async(&mut conn)
            .await?;
        let mut listed: HashSet<(String, String)> = HashSet::new();
        for room in rooms {
            let members: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(keys::members(&room))
                .query_async(&mut conn)
                .await?;
            if members.is_empty() {
                let _: () = redis::cmd("SREM")
                    .arg(keys::ROOMS)
                    .arg(&room)
                    .query_async(&mut conn)
                    .await?;
            }
            for entry in members
                .values()
                .filter_map(|v| serde_json::from_str::<Entry>(v).ok())
            {
                if entry.node == self.node {
                    continue;
                }
                listed.insert((room.clone(), entry.peer.id.clone()));
                self.mirror_listed(&room, entry);
            }
        }
        let gone: Vec<(String, String)> = lock(&self.mirrors)
            .keys()
            .filter(|k| !listed.contains(*k))
            .cloned()
            .collect();
        for (room, id) in gone {
            self.unmirror(&room, &id);
        }
        self.resync();
        Ok(())
    }

    /// Re-announces this node's members (after Redis came back).
    pub fn resync(&self) {
        for (room, peer, seq) in self.hub.local_members() {
            self.joined(&room, &peer, seq);
        }
    }

    /// Removes the members of `node` (dead): from this hub and from the rooms' hashes.
    pub async fn forget_node(&self, node: &str) -> redis::RedisResult<()> {
        let theirs: Vec<(String, String)> = lock(&self.mirrors)
            .iter()
            .filter(|(_, n)| n.as_str() == node)
            .map(|(k, _)| k.clone())
            .collect();
        let mut conn = self.redis.clone();
        for (room, id) in theirs {
            self.unmirror(&room, &id);
            let _: () = redis::cmd("HDEL")
                .arg(keys::members(&room))
                .arg(&id)
                .query_async(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// The node of member `id` of `room`, when it is mirrored here (another node's).
    pub fn member_node(&self, room: &str, id: &str) -> Option<String> {
        lock(&self.mirrors)
            .get(&(room.to_owned(), id.to_owned()))
            .cloned()
    }

    /// The nodes that have members mirrored here.
    pub fn mirrored_nodes(&self) -> HashSet<String> {
        lock(&self.mirrors).values().cloned().collect()
    }
}
