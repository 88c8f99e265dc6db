//! `GET /rooms/{room}/ws`: the route of a client's WebSocket session (SPEC §2).
//!
//! Checks happen before the upgrade (room name 400, room token 401, a resume token that is
//! wrong, used, expired or of another room 401, no place in the room 503; the origin is
//! checked by the router's middleware); the session itself is [`crate::signal::ws::session`].

use super::error::ApiError;
use super::App;
use crate::signal::protocol::{valid_room_name, RecordingNotice, ServerMessage};
use crate::signal::ws::{session, Entry, HARD_FRAME_LIMIT};
use crate::util::secret_matches;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// The connection's upgrade, taken before [`WebSocketUpgrade`] checks the request (which
/// keeps its own copy; the two share one upgrade). The session runs on a tokio-tungstenite
/// stream of its own rather than axum's `WebSocket`, which hides the stream: see
/// `signal::ws::send` for why it needs it.
pub struct RawUpgrade(Option<hyper::upgrade::OnUpgrade>);

impl<S: Send + Sync> FromRequestParts<S> for RawUpgrade {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts.extensions.get::<hyper::upgrade::OnUpgrade>().cloned(),
        ))
    }
}

/// Query parameters of the WebSocket route.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Room token.
    #[serde(default)]
    pub token: Option<String>,
    /// Resume token from the last `welcome` (SPEC §10; never written to logs).
    #[serde(default)]
    pub resume: Option<String>,
}

/// The route handler.
pub async fn handler(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    Query(query): Query<WsQuery>,
    RawUpgrade(upgrade): RawUpgrade,
    // Only checks the request (method, upgrade headers, key, version) with axum's rejections;
    // dropped without `on_upgrade`.
    ws: WebSocketUpgrade,
    headers: axum::http::HeaderMap,
) -> Response {
    drop(ws);
    let (Some(upgrade), Some(key)) = (upgrade, headers.get(header::SEC_WEBSOCKET_KEY)) else {
        return ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade-required",
            "this route needs a WebSocket upgrade over HTTP/1.1",
        )
        .into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    if !valid_room_name(&room) {
        return ApiError::bad_room().into_response();
    }
    if let Some(expected) = &app.config.args.room_token {
        let ok = query
            .token
            .as_deref()
            .is_some_and(|t| secret_matches(t, expected));
        if !ok {
            return ApiError::unauthorized("a valid room `token` is required").into_response();
        }
    }
    let hub = Arc::clone(&app.services.hub);
    // Boxed: the session task keeps its captures' room for its whole life (see `session`).
    let entry = Box::new(match query.resume.as_deref() {
        // The seat is fetched before the upgrade, so a refusal is still an HTTP status. A
        // seat whose upgrade then fails is dropped (its token is used up): the peer leaves.
        Some(token) => match hub.claim(&room, token) {
            Ok(claim) => match claim.seat().await {
                Ok(seat) => Entry::Resume(seat),
                Err(e) => return ApiError::unauthorized(e.to_string()).into_response(),
            },
            Err(e) => return ApiError::unauthorized(e.to_string()).into_response(),
        },
        None => {
            if let Err(e) = hub.has_room_for(&room) {
                return ApiError::from(e).into_response();
            }
            Entry::Join {
                hub,
                room,
                name: query.name.unwrap_or_default(),
            }
        }
    });
    let store = Arc::clone(&app.services.store);
    // A clone, not a child token: the session only waits for it, and a child is a node
    // (~100 bytes) every idle connection would keep.
    let shutdown = app.shutdown.clone();
    // The recordings running in the room when the newcomer has joined.
    let announce = move |room: &str| -> Vec<ServerMessage> {
        store
            .active()
            .iter()
            .filter(|recording| recording.room() == room)
            .filter_map(|recording| {
                let peer = recording.doc().bot_peer?;
                Some(ServerMessage::Recording {
                    state: RecordingNotice::Started,
                    id: recording.id().to_owned(),
                    peer,
                })
            })
            .collect()
    };
    tokio::spawn(async move {
        // A failed upgrade (the client went away) drops the entry: a resumed seat leaves.
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(HARD_FRAME_LIMIT))
            .max_frame_size(Some(HARD_FRAME_LIMIT))
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0);
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        session(socket, entry, announce, shutdown).await;
    });
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    match HeaderValue::from_str(&accept) {
        Ok(accept) => {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        // ok: base64 of a SHA-1 is always a valid header value.
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
    response
}

/// The WebSocket layer's read buffer: idle sockets get only pings and pongs, and a larger
/// frame is read in several steps.
pub const READ_BUFFER: usize = 256;
