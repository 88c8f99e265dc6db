//! The WHIP routes (RFC 9725, SPEC §3): `POST /rooms/{room}/whip` with an SDP offer, and
//! `DELETE`/`PATCH` on a session's Location. The sessions themselves are
//! [`crate::peer::whip::WhipSessions`].
//!
//! A session's Location is `/rooms/{room}/whip/{peer id}.{secret}`. `DELETE` and `PATCH` act
//! only on a session of the room in the path whose secret matches (compared in constant time),
//! with the room token as bearer when one is configured; the API token as bearer ends any
//! session by its peer id (`/rooms/{room}/whip/{peer id}`, for operators). Anything else is
//! `404`.

use super::error::ApiError;
use super::{bearer, App};
use crate::limits::SESSION_FDS;
use crate::peer::whip::{OpenError, Opened};
use crate::peer::{CandidatePolicy, PeerError};
use crate::signal::protocol::valid_room_name;
use crate::util::secret_matches;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use webrtc::peer_connection::RTCSessionDescription;

/// Routes of WHIP ingest.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/rooms/{room}/whip", post(create))
        .route(
            "/rooms/{room}/whip/{id}",
            axum::routing::delete(delete).patch(patch),
        )
}

/// Query of the WHIP endpoint.
#[derive(Debug, Deserialize)]
pub struct WhipQuery {
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
}

/// Whether the request carries the API token (when one is configured).
fn is_operator(app: &App, headers: &HeaderMap) -> bool {
    app.config
        .args
        .api_token
        .as_deref()
        .is_some_and(|expected| bearer(headers).is_some_and(|t| secret_matches(t, expected)))
}

/// The session a `DELETE`/`PATCH` on `/rooms/{room}/whip/{id}` may act on (see the module
/// doc): `401` without the room token (unless the API token is presented), `404` for a
/// session that is not there, in another room, or named without its secret.
fn authorize(app: &App, room: &str, id: &str, headers: &HeaderMap) -> Result<String, ApiError> {
    let operator = is_operator(app, headers);
    if !operator {
        check_room_token(app, headers)?;
    }
    app.services
        .whip
        .find(room, id, operator)
        .ok_or_else(|| ApiError::not_found(format!("no such WHIP session in room `{room}`")))
}

fn check_room_token(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(expected) = &app.config.args.room_token {
        if !bearer(headers).is_some_and(|t| secret_matches(t, expected)) {
            return Err(ApiError::unauthorized(
                "a valid `Authorization: Bearer <room token>` is required",
            ));
        }
    }
    Ok(())
}

/// A refusal for lack of capacity: JSON error with `Retry-After`.
fn busy(status: StatusCode, code: &'static str, message: String, retry_after: u64) -> Response {
    (
        [(header::RETRY_AFTER, retry_after.to_string())],
        ApiError::new(status, code, message),
    )
        .into_response()
}

async fn create(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    Query(query): Query<WhipQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !valid_room_name(&room) {
        return Err(ApiError::bad_room());
    }
    check_room_token(&app, &headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/sdp") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "the body must be an SDP offer with Content-Type: application/sdp",
        ));
    }
    let sdp = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the SDP offer is not UTF-8"))?
        .to_owned();
    if !sdp.starts_with("v=0") {
        return Err(ApiError::bad_request("the body is not an SDP offer"));
    }
    // Only the candidates the policy admits reach webrtc-rs (at most MAX_REMOTE_CANDIDATES).
    let (sdp, _refused) =
        CandidatePolicy::for_config(app.services.factory.config()).filter_sdp(&sdp);
    let offer = RTCSessionDescription::offer(sdp)
        .map_err(|e| ApiError::bad_request(format!("bad SDP offer: {e}")))?;

    // Per client, then global capacity; both held by the session until it is removed.
    let reap_after = Duration::from_secs(app.config.args.whip_connect_timeout_s);
    let client = app.limits.client_ip(remote, &headers);
    let Some(client_permit) = app.limits.whip.take(client) else {
        tracing::warn!(%client, "WHIP session refused: per-client limit");
        return Ok(busy(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-sessions",
            format!(
                "this client already has {} WHIP sessions",
                app.config.args.max_whip_per_client
            ),
            reap_after.as_secs(),
        ));
    };
    let Some(fd_permit) = app.limits.fds.take(SESSION_FDS) else {
        tracing::warn!("WHIP session refused: file descriptor budget spent");
        return Ok(busy(
            StatusCode::SERVICE_UNAVAILABLE,
            "server-busy",
            "the server is at its session capacity".to_owned(),
            reap_after.as_secs(),
        ));
    };
    let opened = app
        .services
        .whip
        .open(
            &app.services.hub,
            &app.services.factory,
            &room,
            query.name.as_deref().unwrap_or("whip"),
            offer,
            (client_permit, fd_permit),
            reap_after,
        )
        .await;
    let Opened {
        session,
        secret,
        answer,
    } = match opened {
        Ok(opened) => opened,
        Err(OpenError::Join(e)) => {
            let refusal = ApiError::from(e);
            return Ok(busy(
                refusal.status,
                refusal.code,
                refusal.message,
                reap_after.as_secs(),
            ));
        }
        Err(OpenError::Peer(e)) => return Err(peer_error(e)),
        Err(e @ OpenError::Answer(_)) => return Err(ApiError::bad_request(e.to_string())),
    };
    let location = format!("/rooms/{room}/whip/{session}.{secret}");
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, location),
        ],
        answer,
    )
        .into_response())
}

fn peer_error(e: PeerError) -> ApiError {
    tracing::error!(error = %e, "WHIP connection failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "peer-error",
        e.to_string(),
    )
}

async fn delete(
    State(app): State<Arc<App>>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let key = authorize(&app, &room, &id, &headers)?;
    if app.services.whip.end(&key) {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::not_found(format!(
            "no such WHIP session in room `{room}`"
        )))
    }
}

async fn patch(
    State(app): State<Arc<App>>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &room, &id, &headers)?;
    // Trickle ICE is not supported: the answer carried every candidate.
    Ok((
        [(header::ALLOW, "DELETE")],
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "trickle ICE (PATCH) is not supported: the answer has every candidate",
        ),
    )
        .into_response())
}
