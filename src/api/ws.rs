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
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

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
    ws: WebSocketUpgrade,
) -> Response {
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
    if let Some(cluster) = &app.cluster {
        // Members of other nodes that joined a moment ago are in the welcome too.
        cluster.sync_room(&room).await;
    }
    let hub = Arc::clone(&app.services.hub);
    let entry = match query.resume.as_deref() {
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
    };
    let store = Arc::clone(&app.services.store);
    let shutdown = app.shutdown.child_token();
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
    ws.max_message_size(HARD_FRAME_LIMIT)
        .max_frame_size(HARD_FRAME_LIMIT)
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| session(socket, entry, announce, shutdown))
}
