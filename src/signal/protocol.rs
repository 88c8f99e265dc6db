//! The signaling wire format (SPEC §2): one JSON object per WebSocket text frame.
//!
//! Parsing is strict about what it needs (`type`, `to`, `sdp`, `candidate`) and lenient about
//! extra fields, so browser libraries that add their own keys still work. Every refusal carries
//! an [`ErrorCode`] and, where it could be read, the `{type, to}` of the refused message.

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
    /// A trickled ICE candidate; `None` is end of candidates.
    Candidate {
        /// Sender's id.
        from: String,
        /// The candidate, or null.
        candidate: Option<Candidate>,
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
        /// The candidate; `None` (also from `{candidate: ""}`) ends candidates.
        candidate: Option<Candidate>,
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
    let value: serde_json::Value = serde_json::from_str(text)
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
            let candidate = match object.get("candidate") {
                None | Some(serde_json::Value::Null) => None,
                Some(v @ serde_json::Value::Object(_)) => {
                    let c: Candidate = serde_json::from_value(v.clone())
                        .map_err(|e| bad(format!("bad `candidate`: {e}"), &reference))?;
                    (!c.candidate.is_empty()).then_some(c)
                }
                Some(_) => return Err(bad("`candidate` must be an object or null", &reference)),
            };
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
            ClientMessage::Candidate {
                candidate: Some(c), ..
            } => {
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
            r#"{"type":"candidate","to":"p","candidate":{"candidate":""}}"#,
        ] {
            assert_eq!(
                parse_client_message(text).unwrap(),
                ClientMessage::Candidate {
                    to: "p".into(),
                    candidate: None
                }
            );
        }
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
            candidate: None,
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
