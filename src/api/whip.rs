//! The WHIP routes (RFC 9725, SPEC §3): `POST /rooms/{room}/whip` with an SDP offer, and
//! `DELETE`/`PATCH` on a session's Location. The sessions themselves are
//! [`crate::peer::whip::WhipSessions`].
//!
//! A session's Location is `/rooms/{room}/whip/{peer id}.{secret}`. `DELETE` and `PATCH` act
//! only on a session of the room in the path whose secret matches (compared in constant time),
//! with the room token as bearer when one is configured; the API token as bearer ends any
//! session by its peer id (`/rooms/{room}/whip/{peer id}`, for operators). Anything else is
//! `404`.
//!
//! In a cluster (SPEC §9) a session lives on the node that records its room, since its media
//! reaches only recorders of its own node: a `POST` for a room recorded (or with WHIP
//! sessions) on another node is forwarded there ([`Cluster::whip_home`]), and a `DELETE` or
//! `PATCH` for a session of another node goes to that node (the session's peer id is a room
//! member every node knows the node of). The forwarded call carries the client's
//! `Authorization` (the other node checks it; the API token is not added) and its address in
//! `X-Forwarded-For`. When that node cannot be reached, or Redis is down, the session opens
//! here.

use super::error::ApiError;
use super::{bearer, App};
use crate::cluster::{Cluster, LOCAL_HEADER};
use crate::limits::SESSION_FDS;
use crate::peer::whip::{OpenError, Opened};
use crate::peer::{CandidatePolicy, PeerError};
use crate::signal::protocol::valid_room_name;
use crate::util::secret_matches;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
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

/// The HTTP client of forwarded WHIP calls (no API token: the other node checks the
/// client's own credentials). An answer waits for the other node's candidate gathering.
static FORWARD: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap_or_default()
});

/// Headers of a forwarded WHIP answer passed back to the client.
const ANSWER_HEADERS: [header::HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::LOCATION,
    header::ALLOW,
    header::RETRY_AFTER,
];

/// Sends a WHIP call to the node at `url` (node-local there: it does not forward again), with
/// the client's `Authorization` and `Content-Type`, `remote` appended to `X-Forwarded-For`;
/// returns that node's answer.
async fn forward(
    url: &str,
    method: reqwest::Method,
    uri: &Uri,
    headers: &HeaderMap,
    remote: SocketAddr,
    body: Option<Bytes>,
) -> Result<Response, reqwest::Error> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let mut request = FORWARD
        .request(method, format!("{}{path}", url.trim_end_matches('/')))
        .header(LOCAL_HEADER, "1");
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(value) = headers.get(&name) {
            request = request.header(name, value);
        }
    }
    let chain = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map_or_else(
            || remote.ip().to_string(),
            |v| format!("{v}, {}", remote.ip()),
        );
    request = request.header("x-forwarded-for", chain);
    if let Some(body) = body {
        request = request.body(body);
    }
    let answer = request.send().await?;
    let mut response = Response::builder().status(answer.status());
    for name in ANSWER_HEADERS {
        if let Some(value) = answer.headers().get(&name) {
            response = response.header(name, value);
        }
    }
    let body = answer.bytes().await?;
    Ok(response
        .body(axum::body::Body::from(body))
        // Status and headers come from a valid answer: a failure here is not expected.
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()))
}

/// The node, other than this one, that holds WHIP session `id` (`{peer id}[.{secret}]`) of
/// `room`, with its URL.
async fn session_node(cluster: &Cluster, room: &str, id: &str) -> Option<String> {
    let peer = id.split_once('.').map_or(id, |(peer, _)| peer);
    let node = cluster.member_node(room, peer)?;
    cluster.node_url(&node).await.ok().flatten()
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
    uri: Uri,
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
    if let Some(cluster) = super::cluster::scope(&app, &headers) {
        match cluster.whip_home(&room).await {
            Ok(Some((node, url))) => {
                let method = reqwest::Method::POST;
                match forward(&url, method, &uri, &headers, remote, Some(body.clone())).await {
                    Ok(response) => return Ok(response),
                    Err(e) => {
                        tracing::warn!(room, node, error = %e, "WHIP: the room's node cannot be reached; the session opens here")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(room, error = %e, "WHIP: the cluster is unreachable; the session opens here")
            }
        }
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

/// In a cluster, for a client's call on a session this node does not hold: that session's
/// node's answer to the same call.
async fn elsewhere(
    app: &App,
    room: &str,
    id: &str,
    (method, uri, headers, remote): (reqwest::Method, &Uri, &HeaderMap, SocketAddr),
) -> Option<Response> {
    let cluster = super::cluster::scope(app, headers)?;
    let peer = id.split_once('.').map_or(id, |(peer, _)| peer);
    if app.services.whip.find(room, peer, true).is_some() {
        return None;
    }
    let url = session_node(&cluster, room, id).await?;
    match forward(&url, method, uri, headers, remote, None).await {
        Ok(response) => Some(response),
        Err(e) => {
            tracing::warn!(room, error = %e, "WHIP: the session's node cannot be reached");
            None
        }
    }
}

async fn delete(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path((room, id)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let call = (reqwest::Method::DELETE, &uri, &headers, remote);
    if let Some(response) = elsewhere(&app, &room, &id, call).await {
        return Ok(response);
    }
    let key = authorize(&app, &room, &id, &headers)?;
    if app.services.whip.end(&key) {
        Ok(StatusCode::OK.into_response())
    } else {
        Err(ApiError::not_found(format!(
            "no such WHIP session in room `{room}`"
        )))
    }
}

async fn patch(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path((room, id)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let call = (reqwest::Method::PATCH, &uri, &headers, remote);
    if let Some(response) = elsewhere(&app, &room, &id, call).await {
        return Ok(response);
    }
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
