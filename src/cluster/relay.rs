//! Rooms that span nodes (SPEC §9): every node mirrors the members of the other nodes in its
//! hub and relays signaling to them over Redis pub/sub.
//!
//! - A member joining or leaving here is written to the room's members hash and published on
//!   [`keys::EVENTS`]; the other nodes mirror it ([`Hub::add_remote`]) and tell their own
//!   members `peer-joined` / `peer-left`.
//! - A message relayed here to a mirrored member goes to its node's channel
//!   ([`keys::signal`]) and is delivered there ([`Hub::deliver`]).
//! - Everything this node sends to Redis goes through one queue and one task, in order, so a
//!   peer's `peer-joined` reaches every node before its first offer, and the messages of one
//!   sender keep their order.
//! - At (re)connection the node loads every room's members hash: mirrors match the cluster
//!   again after an outage. Members of a dead node are removed by [`Relay::forget_node`].

use super::keys;
use crate::signal::hub::{Hub, RemoteRooms};
use crate::signal::protocol::{PeerInfo, ServerMessage};
use futures::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RemoteRooms for Relay {
    fn joined(&self, room: &str, peer: &PeerInfo) {
        let _ = self.out.send(Out::Publish {
            channel: keys::EVENTS.into(),
            wire: Wire::Join {
                room: room.into(),
                peer: peer.clone(),
                node: self.node.clone(),
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
}

impl Relay {
    /// The relay of node `node` for `hub`.
    pub fn new(node: String, hub: Arc<Hub>, redis: ConnectionManager) -> Arc<Self> {
        let (out, out_rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            node,
            hub,
            redis,
            out,
            out_rx: Mutex::new(Some(out_rx)),
            mirrors: Mutex::new(HashMap::new()),
        })
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
                Wire::Join { room, peer, node } => {
                    let entry = serde_json::to_string(&Entry {
                        peer: peer.clone(),
                        node: node.clone(),
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
            Wire::Join { room, peer, node } if node != self.node => self.mirror(&room, peer, &node),
            Wire::Leave { room, id, node } if node != self.node => {
                lock(&self.mirrors).remove(&(room.clone(), id.clone()));
                self.hub.remove_remote(&room, &id);
            }
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

    /// Mirrors `peer` of `node` in `room`, with a task that relays what the hub queues for it.
    fn mirror(self: &Arc<Self>, room: &str, peer: PeerInfo, node: &str) {
        let id = peer.id.clone();
        let Some(mut rx) = self.hub.add_remote(room, peer) else {
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
                let known =
                    lock(&self.mirrors).contains_key(&(room.clone(), entry.peer.id.clone()));
                if !known {
                    self.mirror(&room, entry.peer, &entry.node);
                }
            }
        }
        let gone: Vec<(String, String)> = lock(&self.mirrors)
            .keys()
            .filter(|k| !listed.contains(*k))
            .cloned()
            .collect();
        for (room, id) in gone {
            lock(&self.mirrors).remove(&(room.clone(), id.clone()));
            self.hub.remove_remote(&room, &id);
        }
        self.resync();
        Ok(())
    }

    /// Mirrors the members of other nodes listed in `room`'s hash that are not mirrored yet
    /// (a newcomer's `welcome` then lists those whose join event is still on its way).
    pub async fn sync_room(self: &Arc<Self>, room: &str) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        let members: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::members(room))
            .query_async(&mut conn)
            .await?;
        for entry in members
            .values()
            .filter_map(|v| serde_json::from_str::<Entry>(v).ok())
        {
            let known = lock(&self.mirrors).contains_key(&(room.to_owned(), entry.peer.id.clone()));
            if entry.node != self.node && !known {
                self.mirror(room, entry.peer, &entry.node);
            }
        }
        Ok(())
    }

    /// Re-announces this node's members (after Redis came back).
    pub fn resync(&self) {
        for (room, peer) in self.hub.local_members() {
            self.joined(&room, &peer);
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
            lock(&self.mirrors).remove(&(room.clone(), id.clone()));
            self.hub.remove_remote(&room, &id);
            let _: () = redis::cmd("HDEL")
                .arg(keys::members(&room))
                .arg(&id)
                .query_async(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// The nodes that have members mirrored here.
    pub fn mirrored_nodes(&self) -> HashSet<String> {
        lock(&self.mirrors).values().cloned().collect()
    }
}
