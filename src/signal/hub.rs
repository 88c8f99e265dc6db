//! Rooms and their members: joining, leaving, relaying by `to` → `from`, room-wide notices.
//!
//! The hub is transport-agnostic: a WebSocket client, an in-process bot and a WHIP session are
//! all members holding a [`Membership`] and reading a channel of [`ServerMessage`]s. A room
//! exists while it has members. The lock is a plain mutex held only for map updates and
//! `try_send`s, never across an await.
//!
//! A WebSocket client's membership is a [`Seat`] (membership + message queue) that survives a
//! dropped socket for [`Hub::resume_grace`] (SPEC §10): its session task holds the detached
//! seat, messages for it stay queued, and a reconnect with the one-use token of its last
//! `welcome` ([`Hub::claim`]) hands the seat to the new session.

use super::protocol::{
    ClientMessage, ErrorCode, IceConfig, MessageRef, PeerInfo, Refusal, ServerMessage,
};
use super::queue::{queue, Receiver, Sender, TrySendError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Messages queued for one member before it counts as too slow and is dropped from its room.
pub const MEMBER_QUEUE: usize = 512;

/// Messages queued for one of recbot's own bots. A bot is read in-process and never drops
/// out for slowness: a recorder joining a full room gets an answer, several candidates and an
/// end-of-candidates from each of up to 64 peers at once. When even this is full, the sender
/// of a relayed message is refused with `rate-limited` instead.
pub const BOT_QUEUE: usize = 8192;

/// How long a WebSocket client whose socket dropped keeps its seat (SPEC §10), unless set
/// otherwise with [`Hub::set_resume_grace`].
pub const RESUME_GRACE: Duration = Duration::from_secs(30);

/// How long a resuming session waits for the earlier session's task to hand over the seat
/// (it answers at once unless the runtime is starved).
pub const HANDOVER_LIMIT: Duration = Duration::from_secs(5);

/// What a joining member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    /// A person's client or program over WebSocket.
    Client,
    /// One of recbot's own bots.
    Bot,
    /// A WHIP publisher; media ends at the server.
    Whip,
}

struct Member {
    info: PeerInfo,
    tx: Sender<Arc<ServerMessage>>,
    /// Set for WebSocket clients, whose seat can be resumed.
    resume: Option<ResumeSlot>,
    /// A member of another node of a cluster, mirrored here: its node tells it about joins
    /// and leaves, so room notices skip it; relayed messages and broadcasts reach it through
    /// its queue (read by the cluster layer).
    remote: bool,
    /// Its place in the room's cluster-wide order of joins ([`Order`]); 0 when unordered (no
    /// cluster, a bot, or the cluster store unreachable at its join).
    seq: u64,
}

/// Whether a member with sequence `earlier` counts as present before one with `later`
/// (unordered members, sequence 0, count as present before and after everyone: the
/// behaviour of a single node).
fn joined_before(earlier: u64, later: u64) -> bool {
    earlier == 0 || later == 0 || earlier < later
}

/// A join's place in its room's cluster-wide order, given by [`RemoteRooms::order`] before
/// the member enters the hub. Members with a smaller `seq` are in the newcomer's `welcome`
/// (it offers to them) and are told `peer-joined` of it; members with a larger one already
/// listed it in their own `welcome`, and the newcomer is told `peer-joined` of them instead.
/// So each pair of members has exactly one offerer, whichever node each joined.
pub struct Order {
    /// The newcomer's sequence number in its room (> 0).
    pub seq: u64,
    /// Held until the newcomer is in the hub (the node's join lock of the room, so that this
    /// node's members enter in the order of their sequence numbers).
    pub hold: Box<dyn Send>,
}

/// Where a hub tells the rest of a cluster about its own members (implemented above, in the
/// cluster layer). `joined` and `left` are called under the hub's lock, in the order of the
/// changes: an implementation only queues (never blocks, never calls back into the hub).
#[async_trait::async_trait]
pub trait RemoteRooms: Send + Sync {
    /// A member of this node joined `room` with sequence `seq` (0: unordered).
    fn joined(&self, room: &str, peer: &PeerInfo, seq: u64);
    /// A member of this node left `room`.
    fn left(&self, room: &str, id: &str);
    /// Called (without the hub's lock) before `peer` of this node enters `room` through
    /// [`Hub::join_ordered`] / [`Hub::join_client`]: its place in the room's
    /// cluster-wide order, after mirroring ([`Hub::add_remote`]) every member of other nodes
    /// that joined before it. `Ok(None)`: unordered (the cluster is unreachable); an error
    /// refuses the join (a cluster-wide limit).
    async fn order(&self, _room: &str, _peer: &PeerInfo) -> Result<Option<Order>, JoinError> {
        Ok(None)
    }
}

/// A request for a seat: the task holding it sends it through.
type Takeover = oneshot::Sender<Seat>;

/// What the hub keeps to resume a client's seat.
struct ResumeSlot {
    /// SHA-256 of the token of the member's last `welcome`; `None` once it was used (the
    /// resumed session's welcome brings the next one). Only a hash is kept.
    token: Option<[u8; 32]>,
    /// Asks the task holding the seat (attached session or detached wait) to hand it over.
    takeover: Sender<Takeover>,
}

#[derive(Default)]
struct Room {
    /// In order of joining.
    members: Vec<Member>,
}

/// The set of rooms. Cheap to share (`Arc<Hub>`).
pub struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
    ice_servers: IceConfig,
    max_peers_per_room: usize,
    max_rooms: usize,
    /// Rooms only bots may create (the last ones before `max_rooms`).
    reserved_rooms: usize,
    /// When set, joins are refused while this budget could not cover one more peer connection.
    fds: Option<Arc<crate::limits::FdBudget>>,
    /// [`RESUME_GRACE`] unless set otherwise, in milliseconds.
    resume_grace_ms: AtomicU64,
    /// In a cluster: told about this node's joins and leaves.
    remote: OnceLock<Arc<dyn RemoteRooms>>,
}

/// Why a join was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    /// The room already has the configured maximum of peers.
    #[error("room {0} is full")]
    RoomFull(String),
    /// The service already has the configured maximum of rooms (for this kind of member:
    /// clients may not take the rooms reserved for bots).
    #[error("too many rooms")]
    TooManyRooms,
    /// The service is at its file-descriptor budget: no new peer connection fits.
    #[error("the server is at capacity")]
    AtCapacity,
}

/// A member's place in a room. Dropping it leaves the room (others get `peer-left`).
pub struct Membership {
    hub: Arc<Hub>,
    room: String,
    info: PeerInfo,
}

/// A WebSocket client's seat in a room: its membership, its message queue and its takeover
/// requests. Exactly one task holds it (a session while attached, the detached wait after a
/// drop); dropping it leaves the room. It passes to a resuming session whole, so messages
/// queued meanwhile are delivered there in order.
pub struct Seat {
    pub(super) membership: Membership,
    pub(super) queue: Receiver<Arc<ServerMessage>>,
    /// A message taken from the queue whose send failed when the socket died: delivered
    /// first on resume.
    pub(super) unsent: Option<Arc<ServerMessage>>,
    pub(super) takeovers: Receiver<Takeover>,
}

/// A resume token accepted by [`Hub::claim`] (and used up by it): [`Claim::seat`] fetches
/// the seat from the task that holds it.
pub struct Claim {
    peer: String,
    takeover: Sender<Takeover>,
}

/// Why a resume was refused (the route answers `401` for all of them alike).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResumeError {
    /// The token names no seat of this room: wrong, already used, expired, or of another room.
    #[error("the resume token is wrong, expired or already used")]
    Invalid,
    /// The seat went away while it was being handed over (it expired or was dropped).
    #[error("the seat to resume is gone")]
    Gone,
}

/// A new resume token (256 random bits, URL-safe base64) and its hash.
fn new_resume_token() -> (String, [u8; 32]) {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = token_hash(&token);
    (token, hash)
}

/// The hash under which a resume token is kept. Comparing hashes (not tokens) also keeps a
/// timing difference from telling anything about a valid token.
fn token_hash(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Longest display name, in characters, after [`clean_name`].
pub const MAX_NAME_CHARS: usize = 64;

/// A display name as rooms, logs and recordings show it: `raw` without control characters
/// (Unicode Cc: CR, LF, NUL, ESC, ...), format characters (Cf: bidi overrides and isolates
/// U+202A-U+202E and U+2066-U+2069, zero-width characters, ...) and line or paragraph
/// separators (Zl, Zp), cut to [`MAX_NAME_CHARS`] characters. Letters of every script stay
/// ("Zoë", "李"). A name given by a client cannot forge log lines or reorder what other
/// peers show.
pub fn clean_name(raw: &str) -> String {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    raw.chars()
        .filter(|c| {
            !matches!(
                c.general_category(),
                GeneralCategory::Control
                    | GeneralCategory::Format
                    | GeneralCategory::LineSeparator
                    | GeneralCategory::ParagraphSeparator
            )
        })
        .take(MAX_NAME_CHARS)
        .collect()
}

/// A new member's identity: a fresh id, its name cleaned.
fn new_member(name: &str, kind: MemberKind) -> PeerInfo {
    PeerInfo {
        id: new_peer_id(),
        name: clean_name(name),
        bot: kind == MemberKind::Bot,
        whip: kind == MemberKind::Whip,
    }
}

/// Creates a random peer id: 10 characters of `[a-z0-9]`.
pub fn new_peer_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..10)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

impl Hub {
    /// A hub that hands `ice_servers` to every client in its `welcome` (with per-peer TURN
    /// credentials when they carry a [`crate::signal::protocol::TurnRest`]), with at most
    /// `max_peers_per_room` peers per room and `max_rooms` rooms.
    pub fn new(
        ice_servers: impl Into<IceConfig>,
        max_peers_per_room: usize,
        max_rooms: usize,
    ) -> Arc<Self> {
        Self::build(ice_servers.into(), max_peers_per_room, max_rooms, 0, None)
    }

    /// Like [`new`](Self::new), also keeping `reserved_rooms` rooms (at most half of
    /// `max_rooms`) for bots, and refusing joins while `fds` cannot cover one more peer
    /// connection.
    pub fn with_limits(
        ice_servers: impl Into<IceConfig>,
        max_peers_per_room: usize,
        max_rooms: usize,
        reserved_rooms: usize,
        fds: Arc<crate::limits::FdBudget>,
    ) -> Arc<Self> {
        Self::build(
            ice_servers.into(),
            max_peers_per_room,
            max_rooms,
            reserved_rooms,
            Some(fds),
        )
    }

    fn build(
        ice_servers: IceConfig,
        max_peers_per_room: usize,
        max_rooms: usize,
        reserved_rooms: usize,
        fds: Option<Arc<crate::limits::FdBudget>>,
    ) -> Arc<Self> {
        let max_rooms = max_rooms.max(1);
        Arc::new(Self {
            rooms: Mutex::new(HashMap::new()),
            ice_servers,
            max_peers_per_room: max_peers_per_room.max(1),
            max_rooms,
            reserved_rooms: reserved_rooms.min(max_rooms / 2),
            fds,
            resume_grace_ms: AtomicU64::new(RESUME_GRACE.as_millis() as u64),
            remote: OnceLock::new(),
        })
    }

    /// How long a client whose socket dropped keeps its seat.
    pub fn resume_grace(&self) -> Duration {
        Duration::from_millis(self.resume_grace_ms.load(Ordering::Relaxed))
    }

    /// Sets [`resume_grace`](Self::resume_grace) for seats detached from now on (tests use a
    /// short one).
    pub fn set_resume_grace(&self, grace: Duration) {
        let ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.resume_grace_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether a client (WebSocket) can join `room` now (exists with space, or can be created).
    pub fn has_room_for(&self, room: &str) -> Result<(), JoinError> {
        self.can_join(room, MemberKind::Client)
    }

    /// Whether a member of `kind` can join `room` now.
    pub fn can_join(&self, room: &str, kind: MemberKind) -> Result<(), JoinError> {
        let rooms = self.rooms();
        self.check(&rooms, room, kind, false)
    }

    /// The most members a room may have (over every node of a cluster).
    pub fn max_peers_per_room(&self) -> usize {
        self.max_peers_per_room
    }

    /// Whether a member of `kind` may join `room`; with `ordered`, the cluster counted the
    /// room's members already (mirrors are not counted again here).
    fn check(
        &self,
        rooms: &HashMap<String, Room>,
        room: &str,
        kind: MemberKind,
        ordered: bool,
    ) -> Result<(), JoinError> {
        // A WHIP session has taken its descriptors already; others need one connection's worth.
        let needs = if kind == MemberKind::Whip {
            0
        } else {
            crate::limits::SESSION_FDS
        };
        if self.fds.as_ref().is_some_and(|fds| !fds.fits(needs)) {
            return Err(JoinError::AtCapacity);
        }
        let max_rooms = match kind {
            MemberKind::Bot => self.max_rooms,
            MemberKind::Client | MemberKind::Whip => self.max_rooms - self.reserved_rooms,
        };
        match rooms.get(room) {
            Some(r) if !ordered && r.members.len() >= self.max_peers_per_room => {
                Err(JoinError::RoomFull(room.to_owned()))
            }
            Some(_) => Ok(()),
            None if rooms.len() >= max_rooms => Err(JoinError::TooManyRooms),
            None => Ok(()),
        }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        // A poisoned lock means a panic elsewhere while holding it; the map is still consistent
        // because every critical section only does whole inserts/removes.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins `room` (creating it) under `name` as [`clean_name`] leaves it. Returns the
    /// membership, the `welcome` for the newcomer and its message queue. Everyone already there
    /// is told `peer-joined`. In a cluster the join is unordered (sequence 0): clients and bots
    /// join with [`join_ordered`](Self::join_ordered) instead.
    pub fn join(
        self: &Arc<Self>,
        room: &str,
        name: &str,
        kind: MemberKind,
    ) -> Result<(Membership, ServerMessage, Receiver<Arc<ServerMessage>>), JoinError> {
        self.enter(room, new_member(name, kind), kind, None, 0)
    }

    /// Like [`join`](Self::join), in its room's cluster-wide order when the hub is part of a
    /// cluster ([`RemoteRooms::order`]; see [`Order`]); on a single node the same as `join`.
    pub async fn join_ordered(
        self: &Arc<Self>,
        room: &str,
        name: &str,
        kind: MemberKind,
    ) -> Result<(Membership, ServerMessage, Receiver<Arc<ServerMessage>>), JoinError> {
        self.enter_ordered(room, name, kind, None).await
    }

    /// Joins `room` as a WebSocket client that may resume: the `welcome` carries a resume
    /// token. In the room's cluster-wide order, as [`join_ordered`](Self::join_ordered).
    pub async fn join_client(
        self: &Arc<Self>,
        room: &str,
        name: &str,
    ) -> Result<(Seat, ServerMessage), JoinError> {
        let (takeover, takeovers) = queue(1);
        let (membership, welcome, queue) = self
            .enter_ordered(room, name, MemberKind::Client, Some(takeover))
            .await?;
        Ok((
            Seat {
                membership,
                queue,
                unsent: None,
                takeovers,
            },
            welcome,
        ))
    }

    async fn enter_ordered(
        self: &Arc<Self>,
        room: &str,
        name: &str,
        kind: MemberKind,
        takeover: Option<Sender<Takeover>>,
    ) -> Result<(Membership, ServerMessage, Receiver<Arc<ServerMessage>>), JoinError> {
        let info = new_member(name, kind);
        let Some(remote) = self.remote.get() else {
            return self.enter(room, info, kind, takeover, 0);
        };
        // What this node refuses anyway costs no cluster round trip.
        self.can_join(room, kind)?;
        let order = remote.order(room, &info).await?;
        let seq = order.as_ref().map_or(0, |o| o.seq);
        let id = info.id.clone();
        let entered = self.enter(room, info, kind, takeover, seq);
        if entered.is_err() && seq > 0 {
            // Admitted by the cluster but refused here: its entry goes again.
            remote.left(room, &id);
        }
        drop(order);
        entered
    }

    /// Joins `info` of `kind` with sequence `seq` (0: unordered); with `takeover` the member
    /// is resumable and its welcome carries a token.
    fn enter(
        self: &Arc<Self>,
        room: &str,
        info: PeerInfo,
        kind: MemberKind,
        takeover: Option<Sender<Takeover>>,
        seq: u64,
    ) -> Result<(Membership, ServerMessage, Receiver<Arc<ServerMessage>>), JoinError> {
        let (tx, rx) = queue(if kind == MemberKind::Bot {
            BOT_QUEUE
        } else {
            MEMBER_QUEUE
        });
        let (resume, token) = match takeover {
            Some(takeover) => {
                let (token, hash) = new_resume_token();
                let slot = ResumeSlot {
                    token: Some(hash),
                    takeover,
                };
                (Some(slot), Some(token))
            }
            None => (None, None),
        };
        let mut rooms = self.rooms();
        self.check(&rooms, room, kind, seq > 0)?;
        let entry = rooms.entry(room.to_owned()).or_default();
        // The welcome lists those before it in the room's order; those after it (mirrored
        // already: their join events came first) listed it in theirs, and it hears of them.
        let (before, after): (Vec<&Member>, Vec<&Member>) = entry
            .members
            .iter()
            .partition(|m| joined_before(m.seq, seq));
        let peers: Vec<PeerInfo> = before.iter().map(|m| m.info.clone()).collect();
        for later in after {
            let _ = tx.try_send(Arc::new(ServerMessage::PeerJoined {
                peer: later.info.clone(),
            }));
        }
        let joined = ServerMessage::PeerJoined { peer: info.clone() };
        let slow = send_where(&entry.members, &joined, true, |m| joined_before(m.seq, seq));
        // Exactly one more place: a room of one would otherwise hold four (rooms are small,
        // and a join copies at most `max_peers_per_room` members).
        entry.members.reserve_exact(1);
        entry.members.push(Member {
            info: info.clone(),
            tx,
            resume,
            remote: false,
            seq,
        });
        if let Some(remote) = self.remote.get() {
            remote.joined(room, &info, seq);
        }
        self.drop_slow(&mut rooms, room, slow);
        drop(rooms);
        tracing::info!(room, peer = %info.id, name = ?info.name, ?kind, "peer joined");
        let welcome = ServerMessage::Welcome {
            id: info.id.clone(),
            room: room.to_owned(),
            peers,
            ice_servers: self.ice_servers.for_peer(&info.id),
            resume: token,
            resumed: false,
        };
        Ok((
            Membership {
                hub: Arc::clone(self),
                room: room.to_owned(),
                info,
            },
            welcome,
            rx,
        ))
    }

    /// Accepts the resume `token` of a seat in `room` and uses it up (a second use fails).
    /// Works whether the seat is detached or its old session still looks alive (a socket the
    /// server has not yet seen die): [`Claim::seat`] takes it over either way.
    pub fn claim(&self, room: &str, token: &str) -> Result<Claim, ResumeError> {
        let hash = token_hash(token);
        let mut rooms = self.rooms();
        let slot = rooms.get_mut(room).and_then(|r| {
            r.members.iter_mut().find_map(|m| {
                let slot = m.resume.as_mut()?;
                (slot.token == Some(hash)).then_some((m.info.id.clone(), slot))
            })
        });
        let Some((peer, slot)) = slot else {
            return Err(ResumeError::Invalid);
        };
        slot.token = None;
        Ok(Claim {
            peer,
            takeover: slot.takeover.clone(),
        })
    }

    /// The `welcome` of a resumed session of member `id`: the room's peers now and a fresh
    /// resume token. `None` if the member is no longer in the room.
    fn rewelcome(&self, room: &str, id: &str) -> Option<ServerMessage> {
        let (token, hash) = new_resume_token();
        let mut rooms = self.rooms();
        let entry = rooms.get_mut(room)?;
        let slot = entry
            .members
            .iter_mut()
            .find(|m| m.info.id == id)?
            .resume
            .as_mut()?;
        slot.token = Some(hash);
        let peers = entry
            .members
            .iter()
            .filter(|m| m.info.id != id)
            .map(|m| m.info.clone())
            .collect();
        Some(ServerMessage::Welcome {
            id: id.to_owned(),
            room: room.to_owned(),
            peers,
            ice_servers: self.ice_servers.for_peer(id),
            resume: Some(token),
            resumed: true,
        })
    }

    /// Removes members whose queues were full, telling the others `peer-left`.
    fn drop_slow(&self, rooms: &mut HashMap<String, Room>, room: &str, mut slow: Vec<String>) {
        while let Some(id) = slow.pop() {
            let Some(entry) = rooms.get_mut(room) else {
                return;
            };
            let before = entry.members.len();
            entry.members.retain(|m| m.info.id != id);
            if entry.members.len() == before {
                continue;
            }
            tracing::warn!(room, peer = %id, "peer dropped: its message queue is full");
            if let Some(remote) = self.remote.get() {
                remote.left(room, &id);
            }
            let left = ServerMessage::PeerLeft { id };
            slow.extend(send_all(&entry.members, &left, true));
            if entry.members.is_empty() {
                rooms.remove(room);
            }
        }
    }

    fn leave(&self, room: &str, id: &str) {
        let mut rooms = self.rooms();
        let Some(entry) = rooms.get_mut(room) else {
            return;
        };
        let before = entry.members.len();
        entry.members.retain(|m| m.info.id != id);
        if entry.members.len() == before {
            return;
        }
        tracing::info!(room, peer = %id, "peer left");
        if let Some(remote) = self.remote.get() {
            remote.left(room, id);
        }
        let slow = send_all(
            &entry.members,
            &ServerMessage::PeerLeft { id: id.to_owned() },
            true,
        );
        if entry.members.is_empty() {
            rooms.remove(room);
        }
        self.drop_slow(&mut rooms, room, slow);
    }

    /// Sends `message` to every member of `room` (a no-op if the room does not exist).
    pub fn broadcast(&self, room: &str, message: &ServerMessage) {
        let mut rooms = self.rooms();
        let Some(entry) = rooms.get(room) else {
            return;
        };
        let slow = send_all(&entry.members, message, false);
        self.drop_slow(&mut rooms, room, slow);
    }

    /// Joins this hub to a cluster: `remote` hears of every join and leave of this node's
    /// members from now on. Only the first call counts.
    pub fn set_remote(&self, remote: Arc<dyn RemoteRooms>) {
        let _ = self.remote.set(remote);
    }

    /// Mirrors `peer`, a member of another node with sequence `seq` (0: unordered), into
    /// `room` (created if needed; the cluster applied the limits). This node's members of the
    /// room that joined before it ([`Order`]) are told `peer-joined`. Returns the queue of
    /// messages for it (relayed to it and room broadcasts), or `None` if a member with its id
    /// is here already.
    pub fn add_remote(
        &self,
        room: &str,
        peer: PeerInfo,
        seq: u64,
    ) -> Option<Receiver<Arc<ServerMessage>>> {
        let (tx, rx) = queue(BOT_QUEUE);
        let mut rooms = self.rooms();
        let entry = rooms.entry(room.to_owned()).or_default();
        if entry.members.iter().any(|m| m.info.id == peer.id) {
            return None;
        }
        let joined = ServerMessage::PeerJoined { peer: peer.clone() };
        let slow = send_where(&entry.members, &joined, true, |m| joined_before(m.seq, seq));
        entry.members.push(Member {
            info: peer,
            tx,
            resume: None,
            remote: true,
            seq,
        });
        self.drop_slow(&mut rooms, room, slow);
        Some(rx)
    }

    /// Removes the mirrored member `id` of another node from `room`; this node's members are
    /// told `peer-left`. A no-op for unknown ids and for this node's own members.
    pub fn remove_remote(&self, room: &str, id: &str) {
        let mut rooms = self.rooms();
        let Some(entry) = rooms.get_mut(room) else {
            return;
        };
        let before = entry.members.len();
        entry.members.retain(|m| !(m.remote && m.info.id == id));
        if entry.members.len() == before {
            return;
        }
        let slow = send_all(
            &entry.members,
            &ServerMessage::PeerLeft { id: id.to_owned() },
            true,
        );
        if entry.members.is_empty() {
            rooms.remove(room);
        }
        self.drop_slow(&mut rooms, room, slow);
    }

    /// Delivers `message` (relayed from another node) to this node's member `to` of `room`.
    /// Returns false when there is no such member here.
    pub fn deliver(&self, room: &str, to: &str, message: ServerMessage) -> bool {
        let mut rooms = self.rooms();
        let Some(target) = rooms
            .get(room)
            .and_then(|r| r.members.iter().find(|m| !m.remote && m.info.id == to))
        else {
            return false;
        };
        let (id, bot) = (target.info.id.clone(), target.info.bot);
        match target.tx.try_send(Arc::new(message)) {
            Ok(()) => {}
            Err(TrySendError::Full) if bot => {
                tracing::warn!(peer = %id, "a relayed message to a busy bot was lost");
            }
            Err(_) => self.drop_slow(&mut rooms, room, vec![id]),
        }
        true
    }

    /// This node's own members, by room, with their sequence numbers (what a cluster
    /// re-announces after an outage).
    pub fn local_members(&self) -> Vec<(String, PeerInfo, u64)> {
        self.rooms()
            .iter()
            .flat_map(|(room, r)| {
                r.members
                    .iter()
                    .filter(|m| !m.remote)
                    .map(|m| (room.clone(), m.info.clone(), m.seq))
            })
            .collect()
    }

    /// All rooms with their members, sorted by room name.
    pub fn snapshot(&self) -> Vec<(String, Vec<PeerInfo>)> {
        let rooms = self.rooms();
        let mut list: Vec<(String, Vec<PeerInfo>)> = rooms
            .iter()
            .map(|(name, room)| {
                (
                    name.clone(),
                    room.members.iter().map(|m| m.info.clone()).collect(),
                )
            })
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// The members of `room` (empty if it does not exist).
    pub fn peers(&self, room: &str) -> Vec<PeerInfo> {
        self.rooms()
            .get(room)
            .map(|r| r.members.iter().map(|m| m.info.clone()).collect())
            .unwrap_or_default()
    }

    /// Number of rooms and of members over all rooms.
    pub fn counts(&self) -> (usize, usize) {
        let rooms = self.rooms();
        (rooms.len(), rooms.values().map(|r| r.members.len()).sum())
    }

    fn relay(&self, room: &str, from: &str, message: ClientMessage) -> Result<(), Refusal> {
        let reference = || MessageRef {
            kind: Some(message.kind().to_owned()),
            to: message.to().map(str::to_owned),
        };
        let Some(to) = message.to() else {
            return Ok(());
        };
        let mut rooms = self.rooms();
        let target = rooms
            .get(room)
            .and_then(|r| r.members.iter().find(|m| m.info.id == to));
        let Some(target) = target else {
            return Err(Refusal {
                code: ErrorCode::UnknownPeer,
                message: format!("no peer `{to}` in room `{room}`"),
                reference: Some(reference()),
            });
        };
        if target.info.whip || to == from {
            return Err(Refusal {
                code: ErrorCode::NotNegotiable,
                message: if to == from {
                    "a peer cannot negotiate with itself".to_owned()
                } else {
                    format!("peer `{to}` is a WHIP publisher: its media ends at the server")
                },
                reference: Some(reference()),
            });
        }
        let target_id = target.info.id.clone();
        let busy_reference = reference();
        let Some(out) = message.relayed(from) else {
            return Ok(());
        };
        // A mirrored member of another node is never dropped here: its queue is read in-process.
        let target_is_bot = target.info.bot || target.remote;
        match target.tx.try_send(Arc::new(out)) {
            Ok(()) => {}
            Err(TrySendError::Full) if target_is_bot => {
                return Err(Refusal {
                    code: ErrorCode::RateLimited,
                    message: format!("peer `{target_id}` is busy: its message queue is full"),
                    reference: Some(busy_reference),
                });
            }
            Err(_) => self.drop_slow(&mut rooms, room, vec![target_id]),
        }
        Ok(())
    }
}

/// Sends to every member (only this node's own with `local_only`: membership notices, which
/// each node of a cluster sends to its own members; one shared copy of the message); returns
/// the ids whose queues were full.
fn send_all(members: &[Member], message: &ServerMessage, local_only: bool) -> Vec<String> {
    send_where(members, message, local_only, |_| true)
}

/// [`send_all`] to the members for which `to` holds.
fn send_where(
    members: &[Member],
    message: &ServerMessage,
    local_only: bool,
    to: impl Fn(&Member) -> bool,
) -> Vec<String> {
    let mut slow = Vec::new();
    let shared = Arc::new(message.clone());
    for member in members {
        if (local_only && member.remote) || !to(member) {
            continue;
        }
        if let Err(TrySendError::Full) = member.tx.try_send(Arc::clone(&shared)) {
            if member.info.bot || member.remote {
                // A bot is never dropped from its room for slowness (see BOT_QUEUE).
                tracing::warn!(peer = %member.info.id, "a room notice to a busy bot was lost");
            } else {
                slow.push(member.info.id.clone());
            }
        }
    }
    slow
}

impl Membership {
    /// This member's id.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// This member as the room sees it.
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }

    /// The room joined.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Relays an `offer`/`answer`/`candidate` to its `to`, with `from` set to this member.
    /// `leave` is a no-op here (drop the membership to leave).
    pub fn relay(&self, message: ClientMessage) -> Result<(), Refusal> {
        self.hub.relay(&self.room, &self.info.id, message)
    }

    /// The hub this membership belongs to.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

impl Claim {
    /// The claimed peer's id.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Fetches the seat from the task that holds it: a detached wait hands it over at once,
    /// an attached session drops its socket (no close frame, no `peer-left`) and hands it
    /// over. [`ResumeError::Gone`] if the seat ended meanwhile (or within [`HANDOVER_LIMIT`]
    /// no answer came).
    pub async fn seat(self) -> Result<Seat, ResumeError> {
        let (reply, seat) = oneshot::channel();
        // A token is used once and a new one exists only after the seat was handed over, so
        // the one-place queue is never full here; if it were, the claim fails like a gone seat.
        self.takeover
            .try_send(reply)
            .map_err(|_| ResumeError::Gone)?;
        let fetch = async move { seat.await.map_err(|_| ResumeError::Gone) };
        tokio::time::timeout(HANDOVER_LIMIT, fetch)
            .await
            .unwrap_or(Err(ResumeError::Gone))
    }
}

impl Seat {
    /// This member's id.
    pub fn id(&self) -> &str {
        self.membership.id()
    }

    /// The room of this seat.
    pub fn room(&self) -> &str {
        self.membership.room()
    }

    /// The membership (to relay with).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The `welcome` for a session that resumed this seat: same id, the peers now, a fresh
    /// resume token (the previous one is used up). `None` if the member was dropped from its
    /// room meanwhile (its queue overflowed).
    pub fn rewelcome(&self) -> Option<ServerMessage> {
        self.membership
            .hub
            .rewelcome(&self.membership.room, &self.membership.info.id)
    }

    /// Holds a detached seat: hands it to the first resuming session, or leaves the room
    /// (`peer-left` to all) after `grace`, at `shutdown`, or when the hub dropped the member
    /// (its queue overflowed). Messages for it stay queued meanwhile.
    pub async fn hold(self, grace: Duration, shutdown: &CancellationToken) {
        let Seat {
            membership,
            queue,
            unsent,
            mut takeovers,
        } = self;
        let (room, peer) = (membership.room.clone(), membership.info.id.clone());
        tracing::info!(
            room,
            peer,
            grace_ms = grace.as_millis() as u64,
            "peer detached: its seat waits for a resume"
        );
        tokio::select! {
            request = takeovers.recv() => {
                if let Some(reply) = request {
                    let seat = Seat { membership, queue, unsent, takeovers };
                    // If the claimant went away meanwhile, the seat comes back and is dropped
                    // here: its only valid token is used up, nobody can resume it.
                    let _ = reply.send(seat);
                }
            }
            _ = tokio::time::sleep(grace) => {
                tracing::info!(room, peer, "not resumed in time: the peer leaves");
            }
            _ = shutdown.cancelled() => {}
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(&self.room, &self.info.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    #[test]
    fn names_lose_control_and_format_characters() {
        assert_eq!(clean_name("Zoë 李"), "Zoë 李");
        assert_eq!(
            clean_name("a\r\nINFO forged\u{0}\u{1b}[31mred\u{7f}\u{85}"),
            "aINFO forged[31mred"
        );
        assert_eq!(
            clean_name("\u{202a}\u{202b}\u{202c}\u{202d}\u{202e}x\u{2066}\u{2067}\u{2068}\u{2069}"),
            "x"
        );
        assert_eq!(
            clean_name("z\u{200b}e\u{200c}r\u{200d}o\u{feff}\u{2060}\u{ad}\u{2028}\u{2029}"),
            "zero"
        );
        assert_eq!(clean_name(&"é".repeat(100)).chars().count(), MAX_NAME_CHARS);
        let hub = Hub::new(vec![], 10, 10);
        let (a, _, _arx) = hub.join("r", "\u{202e}eve\n", MemberKind::Client).unwrap();
        assert_eq!(a.info().name, "eve");
    }

    #[test]
    fn join_relay_leave() {
        let hub = Hub::new(vec![], 10, 10);
        let (a, _, mut arx) = hub.join("r", "alice", MemberKind::Client).unwrap();
        let (b, welcome, mut brx) = hub.join("r", "bob", MemberKind::Client).unwrap();
        match welcome {
            ServerMessage::Welcome { peers, .. } => assert_eq!(peers, vec![a.info().clone()]),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(arx.try_recv().as_deref(), Ok(ServerMessage::PeerJoined { peer }) if peer.id == b.id())
        );
        b.relay(ClientMessage::Offer {
            to: a.id().into(),
            sdp: "v=0".into(),
        })
        .unwrap();
        assert_eq!(
            *arx.try_recv().unwrap(),
            ServerMessage::Offer {
                from: b.id().into(),
                sdp: "v=0".into()
            }
        );
        let err = b
            .relay(ClientMessage::Answer {
                to: "nobody".into(),
                sdp: "x".into(),
            })
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownPeer);
        let a_id = a.id().to_owned();
        drop(a);
        assert_eq!(
            *brx.try_recv().unwrap(),
            ServerMessage::PeerLeft { id: a_id }
        );
        drop(b);
        assert!(hub.snapshot().is_empty());
    }

    #[test]
    fn whip_peers_are_not_negotiable_and_rooms_have_a_limit() {
        let hub = Hub::new(vec![], 2, 10);
        let (w, _, _wrx) = hub.join("r", "cam", MemberKind::Whip).unwrap();
        let (c, _, _crx) = hub.join("r", "c", MemberKind::Client).unwrap();
        let err = c
            .relay(ClientMessage::Offer {
                to: w.id().into(),
                sdp: "v=0".into(),
            })
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotNegotiable);
        assert!(matches!(
            hub.join("r", "x", MemberKind::Client),
            Err(JoinError::RoomFull(_))
        ));
        let small = Hub::new(vec![], 2, 1);
        let (_a, _, _arx) = small.join("one", "a", MemberKind::Client).unwrap();
        assert_eq!(small.has_room_for("two"), Err(JoinError::TooManyRooms));
        assert!(matches!(
            small.join("two", "b", MemberKind::Client),
            Err(JoinError::TooManyRooms)
        ));
    }

    #[test]
    fn clients_cannot_take_the_rooms_reserved_for_bots() {
        let fds = crate::limits::FdBudget::new(100);
        let hub = Hub::with_limits(vec![], 2, 3, 1, Arc::clone(&fds));
        let (_a, _, _arx) = hub.join("a", "a", MemberKind::Whip).unwrap();
        let (_b, _, _brx) = hub.join("b", "b", MemberKind::Client).unwrap();
        for kind in [MemberKind::Client, MemberKind::Whip] {
            assert_eq!(hub.can_join("c", kind), Err(JoinError::TooManyRooms));
        }
        // An existing room still takes clients; a bot may open the reserved room.
        assert_eq!(hub.has_room_for("a"), Ok(()));
        let (_c, _, _crx) = hub.join("c", "recorder", MemberKind::Bot).unwrap();
        assert!(matches!(
            hub.join("d", "bot", MemberKind::Bot),
            Err(JoinError::TooManyRooms)
        ));
        let _taken = fds.take(100 - crate::limits::SESSION_FDS + 1).unwrap();
        assert_eq!(
            hub.can_join("a", MemberKind::Bot),
            Err(JoinError::AtCapacity)
        );
        assert_eq!(hub.can_join("a", MemberKind::Whip), Ok(()));
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl RemoteRooms for Log {
        fn joined(&self, room: &str, peer: &PeerInfo, _seq: u64) {
            self.0
                .lock()
                .unwrap()
                .push(format!("join {room} {}", peer.id));
        }
        fn left(&self, room: &str, id: &str) {
            self.0.lock().unwrap().push(format!("left {room} {id}"));
        }
    }

    #[test]
    fn remote_members_are_mirrored_relayed_to_and_never_told_membership() {
        let hub = Hub::new(vec![], 3, 10);
        let log = Arc::new(Log::default());
        hub.set_remote(Arc::clone(&log) as Arc<dyn RemoteRooms>);
        let far = PeerInfo {
            id: "far0000000".into(),
            name: "far".into(),
            bot: false,
            whip: false,
        };
        let mut far_rx = hub.add_remote("r", far.clone(), 0).expect("mirrored");
        assert!(hub.add_remote("r", far.clone(), 0).is_none(), "once per id");
        let (a, welcome, mut arx) = hub.join("r", "a", MemberKind::Client).unwrap();
        match welcome {
            ServerMessage::Welcome { peers, .. } => assert_eq!(peers, vec![far.clone()]),
            other => panic!("{other:?}"),
        }
        // Its own node tells it about joins: nothing queued for the mirror but relays.
        a.relay(ClientMessage::Offer {
            to: far.id.clone(),
            sdp: "v=0".into(),
        })
        .unwrap();
        assert_eq!(
            *far_rx.try_recv().unwrap(),
            ServerMessage::Offer {
                from: a.id().into(),
                sdp: "v=0".into()
            }
        );
        assert!(far_rx.try_recv().is_err());
        assert!(hub.deliver("r", a.id(), ServerMessage::PeerLeft { id: "x".into() }));
        assert!(!hub.deliver("r", &far.id, ServerMessage::PeerLeft { id: "x".into() }));
        assert_eq!(
            *arx.try_recv().unwrap(),
            ServerMessage::PeerLeft { id: "x".into() }
        );
        // Limits count the mirror: the room of 3 has one place left.
        let (_b, _, _brx) = hub.join("r", "b", MemberKind::Client).unwrap();
        assert!(matches!(
            hub.join("r", "c", MemberKind::Client),
            Err(JoinError::RoomFull(_))
        ));
        hub.remove_remote("r", &far.id);
        assert!(std::iter::from_fn(|| arx.try_recv().ok())
            .any(|m| *m == ServerMessage::PeerLeft { id: far.id.clone() }));
        let a_id = a.id().to_owned();
        drop(a);
        let log = log.0.lock().unwrap().clone();
        assert_eq!(log[0], format!("join r {a_id}"));
        assert_eq!(log.last().unwrap(), &format!("left r {a_id}"));
        assert!(log.iter().all(|l| !l.contains(&far.id)), "{log:?}");
    }

    /// A cluster stand-in: gives each ordered join the next of `seqs` and logs joins.
    struct Ordered {
        seqs: Mutex<Vec<u64>>,
        log: Log,
        /// Run while a join is being ordered (what other nodes do meanwhile).
        meanwhile: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    #[async_trait::async_trait]
    impl RemoteRooms for Ordered {
        fn joined(&self, room: &str, peer: &PeerInfo, seq: u64) {
            self.log.joined(room, &peer.clone(), seq);
        }
        fn left(&self, room: &str, id: &str) {
            self.log.left(room, id);
        }
        async fn order(&self, _room: &str, _peer: &PeerInfo) -> Result<Option<Order>, JoinError> {
            let seq = self.seqs.lock().unwrap().remove(0);
            if let Some(meanwhile) = self.meanwhile.lock().unwrap().take() {
                meanwhile();
            }
            Ok(Some(Order {
                seq,
                hold: Box::new(()),
            }))
        }
    }

    fn far(id: &str) -> PeerInfo {
        PeerInfo {
            id: id.into(),
            name: id.into(),
            bot: false,
            whip: false,
        }
    }

    fn drain(rx: &mut Receiver<Arc<ServerMessage>>) -> Vec<ServerMessage> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|m| (*m).clone())
            .collect()
    }

    #[tokio::test]
    async fn ordered_joins_give_each_pair_exactly_one_offerer() {
        let hub = Hub::new(vec![], 10, 10);
        let remote = Arc::new(Ordered {
            seqs: Mutex::new(vec![5, 20, 30, 40]),
            log: Log::default(),
            meanwhile: Mutex::new(None),
        });
        hub.set_remote(Arc::clone(&remote) as Arc<dyn RemoteRooms>);
        // A member of another node that joined after `a` (seq 10 > 5), mirrored before `a`
        // entered: `a` does not list it (it lists `a` and offers) but hears of it.
        let _far_rx = hub.add_remote("r", far("later00000"), 10).unwrap();
        let (a, welcome, mut arx) = hub
            .join_ordered("r", "a", MemberKind::Client)
            .await
            .unwrap();
        let ServerMessage::Welcome { peers, .. } = welcome else {
            panic!("{welcome:?}")
        };
        assert!(peers.is_empty(), "{peers:?}");
        assert_eq!(
            drain(&mut arx),
            vec![ServerMessage::PeerJoined {
                peer: far("later00000")
            }]
        );
        // `b` (seq 20) lists both and offers; `a` hears of `b`.
        let (seat, welcome) = hub.join_client("r", "b").await.unwrap();
        let ServerMessage::Welcome { peers, .. } = welcome else {
            panic!("{welcome:?}")
        };
        let ids: Vec<&str> = peers.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, vec!["later00000", a.id()]);
        assert_eq!(
            drain(&mut arx),
            vec![ServerMessage::PeerJoined {
                peer: seat.membership().info().clone()
            }]
        );
        // A member of another node ordered between them (seq 15): only `a` (5) is told; `b`
        // (20) listed it in its welcome, as its snapshot had it.
        let _mid_rx = hub.add_remote("r", far("middle0000"), 15).unwrap();
        assert_eq!(
            drain(&mut arx),
            vec![ServerMessage::PeerJoined {
                peer: far("middle0000")
            }]
        );
        let mut b_queue = seat.queue;
        assert!(drain(&mut b_queue).is_empty());
        // An unordered member (a bot, or Redis down) is before and after everyone.
        let _bot_rx = hub.add_remote("r", far("unordered0"), 0).unwrap();
        assert_eq!(drain(&mut arx).len(), 1);
        assert_eq!(drain(&mut b_queue).len(), 1);
        // Refused here before asking the cluster; or admitted by the cluster but refused here
        // (a room of another node appeared meanwhile): its admission is undone.
        let small = Hub::new(vec![], 10, 2);
        small.set_remote(Arc::clone(&remote) as Arc<dyn RemoteRooms>);
        let (_x, _, _xrx) = small.join("one", "x", MemberKind::Client).unwrap();
        let _two = small.add_remote("two", far("elsewhere0"), 1);
        assert!(small
            .join_ordered("three", "y", MemberKind::Client)
            .await
            .is_err());
        assert_eq!(*remote.seqs.lock().unwrap(), vec![30, 40], "refused first");
        drop(_two);
        small.remove_remote("two", "elsewhere0");
        let hub2 = Arc::clone(&small);
        *remote.meanwhile.lock().unwrap() = Some(Box::new(move || {
            let _ = hub2.add_remote("four", far("elsewhere1"), 1);
        }));
        let refused = small.join_ordered("three", "y", MemberKind::Client).await;
        assert_eq!(refused.err(), Some(JoinError::TooManyRooms));
        let log = remote.log.0.lock().unwrap().clone();
        let last = log.last().unwrap();
        assert!(last.starts_with("left three "), "{log:?}");
        assert!(small.peers("three").is_empty());
    }

    #[test]
    fn a_member_whose_queue_is_full_is_dropped() {
        let hub = Hub::new(vec![], 10, 10);
        let (slow, _, _slow_rx) = hub.join("r", "slow", MemberKind::Client).unwrap();
        let (fast, _, mut fast_rx) = hub.join("r", "fast", MemberKind::Client).unwrap();
        for _ in 0..=MEMBER_QUEUE {
            let _ = fast.relay(ClientMessage::Candidate {
                to: slow.id().into(),
                candidate: crate::signal::protocol::CandidateField::end(),
            });
        }
        let ids: Vec<String> = hub.peers("r").into_iter().map(|p| p.id).collect();
        assert_eq!(ids, vec![fast.id().to_owned()]);
        assert!(std::iter::from_fn(|| fast_rx.try_recv().ok()).any(|m| *m
            == ServerMessage::PeerLeft {
                id: slow.id().into()
            }));
    }

    #[test]
    fn a_busy_bot_stays_and_the_sender_is_refused() {
        let hub = Hub::new(vec![], 10, 10);
        let (bot, _, _bot_rx) = hub.join("r", "recorder", MemberKind::Bot).unwrap();
        let (client, _, _client_rx) = hub.join("r", "c", MemberKind::Client).unwrap();
        let send = || {
            client.relay(ClientMessage::Candidate {
                to: bot.id().into(),
                candidate: crate::signal::protocol::CandidateField::end(),
            })
        };
        // Far more than a client's queue holds: a recorder joining a room of 64 gets this many.
        for _ in 0..MEMBER_QUEUE * 4 {
            assert!(send().is_ok());
        }
        for _ in MEMBER_QUEUE * 4..BOT_QUEUE {
            let _ = send();
        }
        let refusal = send().expect_err("a full bot queue refuses the sender");
        assert_eq!(refusal.code, ErrorCode::RateLimited);
        let ids: Vec<String> = hub.peers("r").into_iter().map(|p| p.id).collect();
        assert!(
            ids.contains(&bot.id().to_owned()),
            "the bot stays in its room"
        );
    }

    fn resume_token(welcome: &ServerMessage) -> String {
        match welcome {
            ServerMessage::Welcome {
                resume: Some(token),
                ..
            } => token.clone(),
            other => panic!("no resume token in {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_resume_token_is_used_once_and_only_in_its_room() {
        let hub = Hub::new(vec![], 10, 10);
        let (seat, welcome) = hub.join_client("r", "alice").await.unwrap();
        let token = resume_token(&welcome);
        assert!(token.len() >= 43, "256 bits: {token}");
        let (_other, other_welcome) = hub.join_client("s", "bob").await.unwrap();
        assert_ne!(resume_token(&other_welcome), token);
        assert_eq!(hub.claim("r", "wrong").err(), Some(ResumeError::Invalid));
        assert_eq!(hub.claim("s", &token).err(), Some(ResumeError::Invalid));
        let claim = hub.claim("r", &token).unwrap();
        assert_eq!(claim.peer(), seat.id());
        assert_eq!(hub.claim("r", &token).err(), Some(ResumeError::Invalid));
        // Bots and WHIP members have no token.
        let (_bot, bot_welcome, _rx) = hub.join("r", "recorder", MemberKind::Bot).unwrap();
        assert!(matches!(
            bot_welcome,
            ServerMessage::Welcome { resume: None, .. }
        ));
    }

    #[tokio::test]
    async fn a_detached_seat_keeps_its_queue_and_passes_to_the_resume() {
        let hub = Hub::new(vec![], 10, 10);
        let (mut seat, welcome) = hub.join_client("r", "alice").await.unwrap();
        let alice = seat.id().to_owned();
        let token = resume_token(&welcome);
        let (bob, _, mut bob_rx) = hub.join("r", "bob", MemberKind::Client).unwrap();
        // Alice's session read bob's arrival before her socket dropped.
        assert!(matches!(
            *seat.queue.try_recv().unwrap(),
            ServerMessage::PeerJoined { .. }
        ));
        let shutdown = CancellationToken::new();
        let holder =
            tokio::spawn(async move { seat.hold(Duration::from_secs(60), &shutdown).await });
        bob.relay(ClientMessage::Offer {
            to: alice.clone(),
            sdp: "v=0 while away".into(),
        })
        .unwrap();
        let (carol, _, _carol_rx) = hub.join("r", "carol", MemberKind::Client).unwrap();

        let mut seat = hub.claim("r", &token).unwrap().seat().await.unwrap();
        holder.await.unwrap();
        assert_eq!(seat.id(), alice);
        let queued: Vec<ServerMessage> = std::iter::from_fn(|| seat.queue.try_recv().ok())
            .map(|m| (*m).clone())
            .collect();
        assert_eq!(
            queued,
            vec![
                ServerMessage::Offer {
                    from: bob.id().into(),
                    sdp: "v=0 while away".into()
                },
                ServerMessage::PeerJoined {
                    peer: carol.info().clone()
                },
            ]
        );
        let ServerMessage::Welcome {
            id,
            peers,
            resume: Some(fresh),
            resumed: true,
            ..
        } = seat.rewelcome().unwrap()
        else {
            panic!("a resumed welcome")
        };
        assert_eq!(id, alice);
        assert_eq!(peers, vec![bob.info().clone(), carol.info().clone()]);
        assert_ne!(fresh, token);
        assert_eq!(hub.claim("r", &token).err(), Some(ResumeError::Invalid));
        // Bob heard nothing of alice meanwhile (carol's arrival only).
        let heard: Vec<ServerMessage> = std::iter::from_fn(|| bob_rx.try_recv().ok())
            .map(|m| (*m).clone())
            .collect();
        assert_eq!(
            heard,
            vec![ServerMessage::PeerJoined {
                peer: carol.info().clone()
            }]
        );
        assert!(hub.claim("r", &fresh).is_ok());
    }

    #[tokio::test]
    async fn a_seat_not_resumed_in_time_leaves() {
        let hub = Hub::new(vec![], 10, 10);
        hub.set_resume_grace(Duration::from_millis(300));
        let (seat, welcome) = hub.join_client("r", "alice").await.unwrap();
        let alice = seat.id().to_owned();
        let token = resume_token(&welcome);
        let (_bob, _, mut bob_rx) = hub.join("r", "bob", MemberKind::Client).unwrap();
        let shutdown = CancellationToken::new();
        let started = tokio::time::Instant::now();
        seat.hold(hub.resume_grace(), &shutdown).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            *bob_rx.try_recv().unwrap(),
            ServerMessage::PeerLeft { id: alice }
        );
        assert_eq!(hub.claim("r", &token).err(), Some(ResumeError::Invalid));
    }

    #[tokio::test]
    async fn a_detached_seat_whose_queue_overflows_is_dropped() {
        let hub = Hub::new(vec![], 10, 10);
        let (seat, welcome) = hub.join_client("r", "alice").await.unwrap();
        let alice = seat.id().to_owned();
        let token = resume_token(&welcome);
        let (bob, _, _bob_rx) = hub.join("r", "bob", MemberKind::Client).unwrap();
        let shutdown = CancellationToken::new();
        let holder =
            tokio::spawn(async move { seat.hold(Duration::from_secs(60), &shutdown).await });
        for _ in 0..=MEMBER_QUEUE {
            let _ = bob.relay(ClientMessage::Candidate {
                to: alice.clone(),
                candidate: crate::signal::protocol::CandidateField::end(),
            });
        }
        // The seat is given up at once (not after the grace), and cannot be resumed.
        tokio::time::timeout(Duration::from_secs(5), holder)
            .await
            .expect("the holder ends")
            .unwrap();
        assert_eq!(hub.claim("r", &token).err(), Some(ResumeError::Invalid));
        assert_eq!(hub.peers("r"), vec![bob.info().clone()]);
    }
}
