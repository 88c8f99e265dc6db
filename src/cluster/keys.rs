//! Redis key and channel names of the cluster, in one place. Every name starts with
//! `recbot:`; a room's and a recording's keys carry it in braces (a Redis Cluster hash tag), so
//! the keys of one room or one recording live in one slot and scripts over them stay legal.

/// Set of every node id that ever heartbeat (dead ones are those without a heartbeat key).
pub const NODES: &str = "recbot:nodes";
/// Sorted set of recording ids by creation time (ms).
pub const RECORDINGS: &str = "recbot:recordings";
/// Set of rooms with members somewhere in the cluster.
pub const ROOMS: &str = "recbot:rooms";
/// Pub/sub channel of membership events (joins and leaves of every node).
pub const EVENTS: &str = "recbot:events";

/// A node's heartbeat key (JSON `NodeInfo`, expires after the heartbeat TTL).
pub fn node(id: &str) -> String {
    format!("recbot:node:{{{id}}}")
}

/// A node's signaling channel: messages relayed to its members.
pub fn signal(node: &str) -> String {
    format!("recbot:signal:{{{node}}}")
}

/// The claim of a room's one recording (its recording id, or a pending value).
pub fn claim(room: &str) -> String {
    format!("recbot:claim:{{{room}}}")
}

/// A room's members over every node: hash peer id → JSON `{peer, node}`.
pub fn members(room: &str) -> String {
    format!("recbot:members:{{{room}}}")
}

/// A room's join counter: the last sequence number given to a join (see `relay::Relay`'s
/// ordered joins; expires a day after the last join).
pub fn join_seq(room: &str) -> String {
    format!("recbot:seq:{{{room}}}")
}

/// A recording's index hash: `node`, `room`, `fence`, `doc`, `state`, `takeovers`.
pub fn rec(id: &str) -> String {
    format!("recbot:rec:{{{id}}}")
}

/// The active recordings a node holds (what another node takes over when it dies).
pub fn held(node: &str) -> String {
    format!("recbot:held:{{{node}}}")
}

/// Which node has each file of a recording: hash file name → node id.
pub fn files(id: &str) -> String {
    format!("recbot:files:{{{id}}}")
}

/// A bot's index hash: `node`, `spec` (JSON), `started_at`, `fence`, `state`
/// (`running` | `stopped`), `doc` (its last Bot document), `restarts`.
pub fn bot(id: &str) -> String {
    format!("recbot:bot:{{{id}}}")
}

/// The running bots a node holds (what another node restarts when it dies).
pub fn bot_held(node: &str) -> String {
    format!("recbot:botheld:{{{node}}}")
}
