//! The signaling wire format (SPEC §2): one JSON object per WebSocket text frame.
//!
//! Parsing is strict about what it needs (`type`, `to`, `sdp`, `candidate`) and lenient about
//! extra fields, so browser libraries that add their own keys still work. An object with a
//! key twice, at any depth, is refused (`bad-message`), as the API refuses one: which of the
//! two a reader takes differs between JSON parsers. Every refusal carries an [`ErrorCode`] and,
//! where it could be read, the `{type, to}` of the refused message.

use serde::{Deserialize, Serialize};

/// Largest text frame the hub accepts; larger ones are answered with `too-large`.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// A participant of a room as other participants see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Unique id of the peer within the service (random, URL-safe).
    pub id: String,
    /// Display name given with `?name=`; may be empty.
    pub name: String,
    /// True for recbot's own bots (recorder, echo, play, voicemail).
    pub bot: bool,
    /// True for a WHIP publisher: its media ends at the server and nobody offers to it.
    pub whip: bool,
}

/// An ICE server entry as `RTCIceServer` in the browser API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`/`turn:`/`turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username, when the server needs one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub username: Option<String>,
    /// TURN credential, when the server needs one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub credential: Option<String>,
}

/// Whether `url` names a TURN server (`turn:` / `turns:`), the URLs that take credentials.
pub fn is_turn_url(url: &str) -> bool {
    let scheme = url.split(':').next().unwrap_or_default();
    scheme.eq_ignore_ascii_case("turn") || scheme.eq_ignore_ascii_case("turns")
}

/// TURN REST API credentials (coturn's `use-auth-secret`, SPEC §10): a shared secret from
/// which short-lived credentials are made for each user. The secret never leaves the process
/// and is not printed by `Debug`.
#[derive(Clone)]
pub struct TurnRest {
    secret: String,
    ttl: std::time::Duration,
}

impl std::fmt::Debug for TurnRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnRest")
            .field("secret", &"<redacted>")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl TurnRest {
    /// Credentials from `secret`, valid `ttl` after they are made.
    pub fn new(secret: impl Into<String>, ttl: std::time::Duration) -> Self {
        Self {
            secret: secret.into(),
            ttl,
        }
    }

    /// How long the credentials made are valid.
    pub fn ttl(&self) -> std::time::Duration {
        self.ttl
    }

    /// The username for `user` at `now`: `{expiry unix time}:{user}`.
    pub fn username(&self, user: &str, now: std::time::SystemTime) -> String {
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("{}:{user}", (now + self.ttl).as_secs())
    }

    /// The credential of `username`: base64(HMAC-SHA1(secret, username)).
    pub fn credential(&self, username: &str) -> String {
        use base64::Engine as _;
        use hmac::Mac as _;
        // HMAC takes a key of any length, so `new_from_slice` cannot fail.
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(self.secret.as_bytes())
            .expect("HMAC accepts any key length"); // ok: any key length is valid
        mac.update(username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    /// `servers` with fresh credentials for `user` on every entry that lists a TURN URL;
    /// STUN-only entries are kept as they are.
    pub fn apply(
        &self,
        servers: &[IceServer],
        user: &str,
        now: std::time::SystemTime,
    ) -> Vec<IceServer> {
        let username = self.username(user, now);
        let credential = self.credential(&username);
        servers
            .iter()
            .map(|server| {
                let mut server = server.clone();
                if server.urls.iter().any(|u| is_turn_url(u)) {
                    server.username = Some(username.clone());
                    server.credential = Some(credential.clone());
                }
                server
            })
            .collect()
    }
}

/// The ICE servers a service hands out: a fixed list, and with [`TurnRest`] fresh TURN
/// credentials per peer.
#[derive(Debug, Clone, Default)]
pub struct IceConfig {
    /// The servers (STUN and TURN), with static credentials where configured.
    pub servers: Vec<IceServer>,
    /// Per-peer TURN credentials, replacing the static ones of TURN entries.
    pub turn_rest: Option<TurnRest>,
}

impl IceConfig {
    /// The servers for peer `id` now (what its `welcome` carries).
    pub fn for_peer(&self, id: &str) -> Vec<IceServer> {
        match &self.turn_rest {
            Some(rest) => rest.apply(&self.servers, id, std::time::SystemTime::now()),
            None => self.servers.clone(),
        }
    }
}

impl From<Vec<IceServer>> for IceConfig {
    fn from(servers: Vec<IceServer>) -> Self {
        Self {
            servers,
            turn_rest: None,
        }
    }
}

/// An ICE candidate as `RTCIceCandidateInit` in the browser API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The `candidate:` attribute line; empty means end of candidates.
    pub candidate: String,
    /// The media section's mid.
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// The media section's index.
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
    /// ICE username fragment of the generation the candidate belongs to.
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// The `candidate` field of a `candidate` message exactly as its sender wrote it: `null` or an
/// object that reads as a [`Candidate`] (checked once, when a client's message is parsed).
///
/// The hub relays it unchanged: `{"candidate": ""}` stays `{"candidate": ""}` (it does not turn
/// into `null`) and keys recbot does not know (a browser's own extras) pass through. Consumers
/// inside recbot read it with [`CandidateField::candidate`], where both spellings of end of
/// candidates are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CandidateField(serde_json::Value);

impl CandidateField {
    /// End of candidates, sent as `null`.
    pub fn end() -> Self {
        Self(serde_json::Value::Null)
    }

    /// The field as a client sent it: `null`/absent or an object that reads as a [`Candidate`];
    /// anything else is refused with the reason.
    pub fn from_client(value: Option<&serde_json::Value>) -> Result<Self, String> {
        match value {
            None | Some(serde_json::Value::Null) => Ok(Self::end()),
            Some(v @ serde_json::Value::Object(_)) => {
                serde_json::from_value::<Candidate>(v.clone())
                    .map_err(|e| format!("bad `candidate`: {e}"))?;
                Ok(Self(v.clone()))
            }
            Some(_) => Err("`candidate` must be an object or null".into()),
        }
    }

    /// The candidate to add, or `None` for end of candidates (`null`, `{candidate: ""}`) and for
    /// a value that does not read as a candidate (possible only in a message from the server).
    pub fn candidate(&self) -> Option<Candidate> {
        if self.0.is_null() {
            return None;
        }
        serde_json::from_value::<Candidate>(self.0.clone())
            .ok()
            .filter(|c| !c.candidate.is_empty())
    }
}

impl From<Candidate> for CandidateField {
    fn from(candidate: Candidate) -> Self {
        // Serializing a struct of strings and integers cannot fail; `Null` would only read as
        // end of candidates.
        Self(serde_json::to_value(candidate).unwrap_or(serde_json::Value::Null))
    }
}

/// State carried in a `recording` notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingNotice {
    /// A recording of the room started.
    Started,
    /// A recording of the room stopped.
    Stopped,
}

/// Error codes of the `error` message (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// Invalid JSON, a binary frame, unknown `type`, missing or mistyped fields.
    BadMessage,
    /// A frame over [`MAX_FRAME_BYTES`].
    TooLarge,
    /// `to` names no peer of the room.
    UnknownPeer,
    /// An offer to a WHIP peer.
    NotNegotiable,
    /// The client sends faster than the hub allows.
    RateLimited,
}

/// `{type, to}` of a refused message, as far as it could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    /// The refused message's `type`, if it had a string one.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none", default)]
    pub kind: Option<String>,
    /// The refused message's `to`, if it had a string one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub to: Option<String>,
}

/// Messages the server sends to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage {
    /// First message after connect.
    Welcome {
        /// This peer's id.
        id: String,
        /// The room joined.
        room: String,
        /// Everyone already in the room.
        peers: Vec<PeerInfo>,
        /// ICE servers to configure the RTCPeerConnection with.
        ice_servers: Vec<IceServer>,
        /// A WebSocket client's resume token (SPEC §10): reconnecting with `?resume=TOKEN`
        /// after a drop keeps this peer's seat. One use; every welcome brings a new one.
        /// Absent for bots and WHIP members.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        resume: Option<String>,
        /// True in the welcome of a resumed session: the same `id`, `peers` as they are now,
        /// and the messages queued while detached follow. A resumed client does not offer
        /// to the peers again. Absent (false) in a first welcome.
        #[serde(skip_serializing_if = "std::ops::Not::not", default)]
        resumed: bool,
    },
    /// Someone joined.
    PeerJoined {
        /// Who.
        peer: PeerInfo,
    },
    /// Someone left or vanished.
    PeerLeft {
        /// Who.
        id: String,
    },
    /// An SDP offer relayed from another peer.
    Offer {
        /// Sender's id.
        from: String,
        /// The SDP.
        sdp: String,
    },
    /// An SDP answer relayed from another peer.
    Answer {
        /// Sender's id.
        from: String,
        /// The SDP.
        sdp: String,
    },
    /// A trickled ICE candidate, relayed as its sender wrote it (`null` or `{candidate: ""}`
    /// is end of candidates).
    Candidate {
        /// Sender's id.
        from: String,
        /// The candidate as sent.
        candidate: CandidateField,
    },
    /// A recording of this room started or stopped.
    Recording {
        /// started | stopped.
        state: RecordingNotice,
        /// Recording id.
        id: String,
        /// Peer id of the recorder bot.
        peer: String,
    },
    /// A message of this client was refused; the connection stays open.
    Error {
        /// What was wrong.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
        /// What was refused.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none", default)]
        reference: Option<MessageRef>,
    },
}

/// Messages a client sends to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// An SDP offer for peer `to`.
    Offer {
        /// Recipient.
        to: String,
        /// The SDP.
        sdp: String,
    },
    /// An SDP answer for peer `to`.
    Answer {
        /// Recipient.
        to: String,
        /// The SDP.
        sdp: String,
    },
    /// A candidate (or end of candidates) for peer `to`.
    Candidate {
        /// Recipient.
        to: String,
        /// The candidate as sent; [`CandidateField::candidate`] is `None` at end of candidates.
        candidate: CandidateField,
    },
    /// Leave the room; the server closes the socket with 1000.
    Leave,
}

impl ClientMessage {
    /// The recipient of a relayed message (`None` for `leave`).
    pub fn to(&self) -> Option<&str> {
        match self {
            Self::Offer { to, .. } | Self::Answer { to, .. } | Self::Candidate { to, .. } => {
                Some(to)
            }
            Self::Leave => None,
        }
    }

    /// The `type` string of this message.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Offer { .. } => "offer",
            Self::Answer { .. } => "answer",
            Self::Candidate { .. } => "candidate",
            Self::Leave => "leave",
        }
    }

    /// The message as relayed to its recipient, with `from` in place of `to`.
    pub fn relayed(self, from: &str) -> Option<ServerMessage> {
        let from = from.to_owned();
        match self {
            Self::Offer { sdp, .. } => Some(ServerMessage::Offer { from, sdp }),
            Self::Answer { sdp, .. } => Some(ServerMessage::Answer { from, sdp }),
            Self::Candidate { candidate, .. } => Some(ServerMessage::Candidate { from, candidate }),
            Self::Leave => None,
        }
    }

    /// Serializes the message as a client would send it.
    pub fn to_json(&self) -> String {
        let value = match self {
            Self::Offer { to, sdp } => serde_json::json!({"type": "offer", "to": to, "sdp": sdp}),
            Self::Answer { to, sdp } => {
                serde_json::json!({"type": "answer", "to": to, "sdp": sdp})
            }
            Self::Candidate { to, candidate } => {
                serde_json::json!({"type": "candidate", "to": to, "candidate": candidate})
            }
            Self::Leave => serde_json::json!({"type": "leave"}),
        };
        value.to_string()
    }
}

/// Why a client frame was refused, ready to be sent back as an `error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The code.
    pub code: ErrorCode,
    /// What was wrong, for people.
    pub message: String,
    /// The refused message's `{type, to}` where readable.
    pub reference: Option<MessageRef>,
}

impl Refusal {
    /// A refusal without a readable reference.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reference: None,
        }
    }

    /// The `error` message for this refusal.
    pub fn into_message(self) -> ServerMessage {
        ServerMessage::Error {
            code: self.code,
            message: self.message,
            reference: self.reference,
        }
    }
}

/// A JSON value read with every object's keys unique (serde_json's own `Value` keeps the last
/// of duplicate keys silently).
struct UniqueKeys(serde_json::Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueKeysVisitor)
            .map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
            }
            let UniqueKeys(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(serde_json::Value::Object(object))
    }
}

fn bad(message: impl Into<String>, reference: &MessageRef) -> Refusal {
    Refusal {
        code: ErrorCode::BadMessage,
        message: message.into(),
        reference: Some(reference.clone()),
    }
}

fn required_string(
    object: &serde_json::Map<String, serde_json::Value>,
    field: &str,
    reference: &MessageRef,
) -> Result<String, Refusal> {
    match object.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(format!("`{field}` must be a string"), reference)),
        None => Err(bad(format!("`{field}` is missing"), reference)),
    }
}

/// Parses one text frame from a client. Never panics; every failure is a [`Refusal`].
pub fn parse_client_message(text: &str) -> Result<ClientMessage, Refusal> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(Refusal::new(
            ErrorCode::TooLarge,
            format!("frame of {} bytes is over {MAX_FRAME_BYTES}", text.len()),
        ));
    }
    let UniqueKeys(value) = serde_json::from_str(text)
        .map_err(|e| Refusal::new(ErrorCode::BadMessage, format!("invalid JSON: {e}")))?;
    let serde_json::Value::Object(object) = value else {
        return Err(Refusal::new(
            ErrorCode::BadMessage,
            "a message must be a JSON object",
        ));
    };
    let reference = MessageRef {
        kind: object
            .get("type")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        to: object.get("to").and_then(|v| v.as_str()).map(str::to_owned),
    };
    let Some(kind) = reference.kind.clone() else {
        return Err(bad("`type` is missing or not a string", &reference));
    };
    match kind.as_str() {
        "offer" | "answer" => {
            let to = required_string(&object, "to", &reference)?;
            let sdp = required_string(&object, "sdp", &reference)?;
            if sdp.is_empty() {
                return Err(bad("`sdp` is empty", &reference));
            }
            Ok(if kind == "offer" {
                ClientMessage::Offer { to, sdp }
            } else {
                ClientMessage::Answer { to, sdp }
            })
        }
        "candidate" => {
            let to = required_string(&object, "to", &reference)?;
            let candidate = CandidateField::from_client(object.get("candidate"))
                .map_err(|message| bad(message, &reference))?;
            Ok(ClientMessage::Candidate { to, candidate })
        }
        "leave" => Ok(ClientMessage::Leave),
        other => Err(bad(format!("unknown message type `{other}`"), &reference)),
    }
}

/// Whether `room` is a valid room name: 1–64 characters of `[A-Za-z0-9_-]`.
pub fn valid_room_name(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    #[test]
    fn turn_rest_credentials_match_a_known_vector() {
        // printf '%s' "1700000000:peer123" | openssl dgst -sha1 -hmac "s3cret" -binary | base64
        let rest = TurnRest::new("s3cret", std::time::Duration::from_secs(86_400));
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 - 86_400);
        assert_eq!(rest.username("peer123", at), "1700000000:peer123");
        assert_eq!(
            rest.credential("1700000000:peer123"),
            "ZlzURXVoXDpZVHrz7o1tmx5BBDQ="
        );
        assert!(!format!("{rest:?}").contains("s3cret"));
        let servers = vec![
            IceServer {
                urls: vec!["stun:stun.example:3478".into()],
                username: None,
                credential: None,
            },
            IceServer {
                urls: vec!["turn:turn.example:3478?transport=udp".into()],
                username: Some("static".into()),
                credential: Some("old".into()),
            },
            IceServer {
                urls: vec!["TURNS:turn.example:5349".into()],
                username: None,
                credential: None,
            },
        ];
        let given = rest.apply(&servers, "peer123", at);
        assert_eq!(given[0], servers[0], "STUN entries are kept");
        for turn in &given[1..] {
            assert_eq!(turn.username.as_deref(), Some("1700000000:peer123"));
            assert_eq!(
                turn.credential.as_deref(),
                Some("ZlzURXVoXDpZVHrz7o1tmx5BBDQ=")
            );
        }
        let config = IceConfig {
            servers: servers.clone(),
            turn_rest: Some(rest),
        };
        let a = config.for_peer("a");
        let b = config.for_peer("b");
        assert!(a[1].username.as_deref().is_some_and(|u| u.ends_with(":a")));
        assert_ne!(a[1].credential, b[1].credential, "per peer");
        assert_eq!(IceConfig::from(servers.clone()).for_peer("a"), servers);
    }

    use super::*;

    #[test]
    fn parses_relayed_messages() {
        let m = parse_client_message(r#"{"type":"offer","to":"p1","sdp":"v=0"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Offer {
                to: "p1".into(),
                sdp: "v=0".into()
            }
        );
        let m = parse_client_message(
            r#"{"type":"candidate","to":"p1","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
        )
        .unwrap();
        match m {
            ClientMessage::Candidate { candidate, .. } => {
                let c = candidate.candidate().expect("a candidate");
                assert_eq!(c.sdp_mid.as_deref(), Some("0"));
                assert_eq!(c.sdp_mline_index, Some(0));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn end_of_candidates_in_both_spellings() {
        for text in [
            r#"{"type":"candidate","to":"p","candidate":null}"#,
            r#"{"type":"candidate","to":"p"}"#,
            r#"{"type":"candidate","to":"p","candidate":{"candidate":""}}"#,
            r#"{"type":"candidate","to":"p","candidate":{"candidate":"","sdpMid":null}}"#,
        ] {
            match parse_client_message(text).unwrap() {
                ClientMessage::Candidate { to, candidate } => {
                    assert_eq!(to, "p");
                    assert_eq!(candidate.candidate(), None, "{text}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn candidates_are_relayed_as_sent() {
        for sent in [
            serde_json::json!({"candidate": ""}),
            serde_json::json!({"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}),
            serde_json::json!({"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host",
                "sdpMid": null, "sdpMLineIndex": 1, "usernameFragment": "uf", "x-extra": [1]}),
            serde_json::Value::Null,
        ] {
            let text =
                serde_json::json!({"type": "candidate", "to": "p", "candidate": sent}).to_string();
            let relayed = parse_client_message(&text).unwrap().relayed("a").unwrap();
            assert_eq!(
                serde_json::to_value(&relayed).unwrap(),
                serde_json::json!({"type": "candidate", "from": "a", "candidate": sent})
            );
            // What a client reads back is the same message.
            let read: ServerMessage =
                serde_json::from_value(serde_json::to_value(&relayed).unwrap()).unwrap();
            assert_eq!(read, relayed);
        }
        for bad_candidate in [
            serde_json::json!({"sdpMid": "0"}),
            serde_json::json!({"candidate": 5}),
            serde_json::json!({"candidate": "c", "sdpMLineIndex": "zero"}),
            serde_json::json!("candidate:1"),
        ] {
            let text =
                serde_json::json!({"type": "candidate", "to": "p", "candidate": bad_candidate})
                    .to_string();
            assert_eq!(
                parse_client_message(&text).unwrap_err().code,
                ErrorCode::BadMessage,
                "{text}"
            );
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for text in [
            r#"{"type":"offer","to":"a","to":"b","sdp":"v=0"}"#,
            r#"{"type":"answer","type":"offer","to":"a","sdp":"v=0"}"#,
            r#"{"type":"candidate","to":"a","candidate":{"candidate":"","candidate":"x"}}"#,
            r#"{"type":"leave","x":[{"k":1,"k":2}]}"#,
        ] {
            let refusal = parse_client_message(text).unwrap_err();
            assert_eq!(refusal.code, ErrorCode::BadMessage, "{text}");
            assert!(
                refusal.message.contains("duplicate key"),
                "{text}: {refusal:?}"
            );
        }
        // Equal keys in different objects, values of every kind, nesting: all fine.
        let text = r#"{"type":"candidate","to":"a","x":{"to":1,"n":[-1,2.5,null,true]},
            "candidate":{"candidate":"","sdpMid":"0","sdpMLineIndex":0}}"#;
        assert!(parse_client_message(text).is_ok());
    }

    #[test]
    fn refusals_carry_code_and_reference() {
        let r = parse_client_message("{not json").unwrap_err();
        assert_eq!(r.code, ErrorCode::BadMessage);
        assert!(r.reference.is_none());

        let r = parse_client_message(r#"{"type":"dance","to":"x"}"#).unwrap_err();
        assert_eq!(r.code, ErrorCode::BadMessage);
        assert_eq!(r.reference.unwrap().kind.as_deref(), Some("dance"));

        let r = parse_client_message(r#"{"type":"offer","to":"x","sdp":5}"#).unwrap_err();
        assert_eq!(r.code, ErrorCode::BadMessage);
        assert_eq!(r.reference.unwrap().to.as_deref(), Some("x"));

        let r = parse_client_message(r#"[1,2]"#).unwrap_err();
        assert_eq!(r.code, ErrorCode::BadMessage);

        let big = format!(
            r#"{{"type":"offer","to":"x","sdp":"{}"}}"#,
            "a".repeat(MAX_FRAME_BYTES)
        );
        assert_eq!(
            parse_client_message(&big).unwrap_err().code,
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn server_messages_serialize_as_specified() {
        let m = ServerMessage::Candidate {
            from: "a".into(),
            candidate: CandidateField::end(),
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            serde_json::json!({"type":"candidate","from":"a","candidate":null})
        );
        let m = Refusal {
            code: ErrorCode::UnknownPeer,
            message: "no".into(),
            reference: Some(MessageRef {
                kind: Some("offer".into()),
                to: Some("zz".into()),
            }),
        }
        .into_message();
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            serde_json::json!({"type":"error","code":"unknown-peer","message":"no","ref":{"type":"offer","to":"zz"}})
        );
        let m = ServerMessage::PeerJoined {
            peer: PeerInfo {
                id: "i".into(),
                name: "n".into(),
                bot: true,
                whip: false,
            },
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            serde_json::json!({"type":"peer-joined","peer":{"id":"i","name":"n","bot":true,"whip":false}})
        );
    }

    #[test]
    fn room_names() {
        assert!(valid_room_name("demo_1-A"));
        assert!(!valid_room_name(""));
        assert!(!valid_room_name(&"a".repeat(65)));
        assert!(!valid_room_name("a/b"));
        assert!(!valid_room_name("é"));
    }
}
