//! Rooms and their members: joining, leaving, relaying by `to` → `from`, room-wide notices.
//!
//! The hub is transport-agnostic: a WebSocket client, an in-process bot and a WHIP session are
//! all members holding a [`Membership`] and reading a channel of [`ServerMessage`]s. A room
//! exists while it has members. The lock is a plain mutex held only for map updates and
//! `try_send`s, never across an await.

use super::protocol::{
    ClientMessage, ErrorCode, IceConfig, MessageRef, PeerInfo, Refusal, ServerMessage,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Messages queued for one member before it counts as too slow and is dropped from its room.
pub const MEMBER_QUEUE: usize = 512;

/// Messages queued for one of recbot's own bots. A bot is read in-process and never drops
/// out for slowness: a recorder joining a full room gets an answer, several candidates and an
/// end-of-candidates from each of up to 64 peers at once. When even this is full, the sender
/// of a relayed message is refused with `rate-limited` instead.
pub const BOT_QUEUE: usize = 8192;

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
    tx: mpsc::Sender<Arc<ServerMessage>>,
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
        })
    }

    /// Whether a client (WebSocket) can join `room` now (exists with space, or can be created).
    pub fn has_room_for(&self, room: &str) -> Result<(), JoinError> {
        self.can_join(room, MemberKind::Client)
    }

    /// Whether a member of `kind` can join `room` now.
    pub fn can_join(&self, room: &str, kind: MemberKind) -> Result<(), JoinError> {
        let rooms = self.rooms();
        self.check(&rooms, room, kind)
    }

    fn check(
        &self,
        rooms: &HashMap<String, Room>,
        room: &str,
        kind: MemberKind,
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
            Some(r) if r.members.len() >= self.max_peers_per_room => {
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
    /// is told `peer-joined`.
    pub fn join(
        self: &Arc<Self>,
        room: &str,
        name: &str,
        kind: MemberKind,
    ) -> Result<
        (
            Membership,
            ServerMessage,
            mpsc::Receiver<Arc<ServerMessage>>,
        ),
        JoinError,
    > {
        let info = PeerInfo {
            id: new_peer_id(),
            name: clean_name(name),
            bot: kind == MemberKind::Bot,
            whip: kind == MemberKind::Whip,
        };
        let (tx, rx) = mpsc::channel(if kind == MemberKind::Bot {
            BOT_QUEUE
        } else {
            MEMBER_QUEUE
        });
        let mut rooms = self.rooms();
        self.check(&rooms, room, kind)?;
        let entry = rooms.entry(room.to_owned()).or_default();
        let peers: Vec<PeerInfo> = entry.members.iter().map(|m| m.info.clone()).collect();
        let joined = ServerMessage::PeerJoined { peer: info.clone() };
        let slow = send_all(&entry.members, &joined, None);
        entry.members.push(Member {
            info: info.clone(),
            tx,
        });
        self.drop_slow(&mut rooms, room, slow);
        drop(rooms);
        tracing::info!(room, peer = %info.id, name = ?info.name, ?kind, "peer joined");
        let welcome = ServerMessage::Welcome {
            id: info.id.clone(),
            room: room.to_owned(),
            peers,
            ice_servers: self.ice_servers.for_peer(&info.id),
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
            let left = ServerMessage::PeerLeft { id };
            slow.extend(send_all(&entry.members, &left, None));
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
        let slow = send_all(
            &entry.members,
            &ServerMessage::PeerLeft { id: id.to_owned() },
            None,
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
        let slow = send_all(&entry.members, message, None);
        self.drop_slow(&mut rooms, room, slow);
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
        let target_is_bot = target.info.bot;
        match target.tx.try_send(Arc::new(out)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) if target_is_bot => {
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

/// Sends to every member except `skip` (one shared copy of the message); returns the ids whose
/// queues were full.
fn send_all(members: &[Member], message: &ServerMessage, skip: Option<&str>) -> Vec<String> {
    let mut slow = Vec::new();
    let shared = Arc::new(message.clone());
    for member in members {
        if Some(member.info.id.as_str()) == skip {
            continue;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = member.tx.try_send(Arc::clone(&shared)) {
            if member.info.bot {
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

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(&self.room, &self.info.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
