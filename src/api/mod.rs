//! The HTTP surface (SPEC §4): recordings, rooms, bots, health, metrics, the page at `/`, the
//! room WebSocket route and WHIP, with Host (SPEC §1), token and origin checks in front. Its
//! state is [`App`]; its errors are [`ApiError`](error::ApiError)s.

pub mod bots;
pub mod cluster;
pub mod error;
pub mod files;
pub mod state;
pub mod web;
pub mod whip;
pub mod ws;

use crate::bot::recorder;
use crate::record::manifest::{RecordingDoc, StopReason, UploadState};
use crate::record::session::RecordOptions;
use crate::record::store::valid_id;
use crate::signal::protocol::valid_room_name;
use crate::util::secret_matches;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::ApiError;
use serde::{Deserialize, Serialize};
pub use state::App;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body the API reads.
pub const MAX_BODY: usize = 64 * 1024;

/// A JSON body whose rejections become [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Builds the router of the whole service.
pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route(
            "/api/recordings",
            post(create_recording).get(list_recordings),
        )
        .route(
            "/api/recordings/{id}",
            get(get_recording).delete(delete_recording),
        )
        .route("/api/recordings/{id}/stop", post(stop_recording))
        .route("/api/recordings/{id}/pause", post(pause_recording))
        .route("/api/recordings/{id}/resume", post(resume_recording))
        .route("/api/recordings/{id}/files/{name}", get(get_file))
        .route("/api/rooms", get(list_rooms))
        .route("/api/cluster/handover/{id}", post(accept_handover))
        .route("/metrics", get(metrics))
        .merge(bots::routes())
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            require_api_token,
        ));
    // Everything that reads or changes state: /api, /metrics, the room WebSocket and WHIP.
    // `/healthz` and the page (static files, no data) are served under any Host.
    let guarded = Router::new()
        .merge(api)
        .route("/rooms/{room}/ws", get(ws::handler))
        .merge(whip::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            check_host,
        ));
    let cors = cors_layer(&app);
    Router::new()
        .merge(guarded)
        .route("/healthz", get(healthz))
        .merge(web::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            check_origin,
        ))
        .layer(cors)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(error::json_errors))
        .with_state(app)
}

fn cors_layer(app: &App) -> tower_http::cors::CorsLayer {
    let origins: Vec<axum::http::HeaderValue> = app
        .config
        .args
        .allowed_origins
        .iter()
        .filter_map(|o| o.parse().ok())
        .collect();
    tower_http::cors::CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::HEAD])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::RANGE])
        .expose_headers([header::CONTENT_RANGE, header::ETAG, header::CONTENT_LENGTH])
}

/// The bearer token of a request, if any: `Authorization: Bearer <token>`, the scheme in any
/// case (RFC 9110 §11.1) and spaces around the token ignored.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

async fn require_api_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(expected) = &app.config.args.api_token {
        if request.method() != Method::OPTIONS {
            let ok = bearer(request.headers()).is_some_and(|t| secret_matches(t, expected));
            if !ok {
                return ApiError::unauthorized(
                    "a valid `Authorization: Bearer <api token>` is required",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// Whether a browser `Origin` may use the service: its own origin (host and port equal to the
/// request's `Host`) or one listed in `--allowed-origins`.
pub fn origin_allowed(app: &App, origin: &str, host: Option<&str>) -> bool {
    let own = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .is_some_and(|authority| Some(authority) == host);
    own || app
        .config
        .args
        .allowed_origins
        .iter()
        .any(|o| o.trim_end_matches('/') == origin)
}

/// Whether `host` (a `Host` header: `name` or `name:port`) may be served without an API
/// token (SPEC §1): a loopback name (`localhost`, `127.0.0.1`, `[::1]`, any port) or a name in
/// `allowed` (`--allowed-hosts`; an entry without a port matches every port, one with a port
/// only that port). Names compare case-insensitively; anything that is not a plain host (user
/// info, a bad port) is refused.
pub fn host_allowed(allowed: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    if host.contains('@') {
        return false;
    }
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    let name = authority.host();
    // After the name only an optional numeric port may follow.
    let port_ok = host.strip_prefix(name).is_some_and(|rest| {
        rest.is_empty()
            || rest
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok())
    });
    if !port_ok {
        return false;
    }
    if matches!(name, "localhost" | "127.0.0.1" | "[::1]") {
        return true;
    }
    allowed.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        // A bare IPv6 address is written in brackets in a `Host`.
        let entry = match entry.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{entry}]"),
            Err(_) => entry,
        };
        !entry.is_empty() && (entry == host || entry == name)
    })
}

/// Without an API token, refuses requests whose `Host` is not allowed by [`host_allowed`] with
/// `403 forbidden-host`: a web page that rebinds its own name to 127.0.0.1 would otherwise pass
/// the same-origin rule (its `Origin` equals its `Host`) and drive the service. With a token,
/// the token protects and every `Host` is served.
async fn check_host(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if app.config.args.api_token.is_none() {
        // HTTP/2 carries the host in the URI (`:authority`) instead of a header.
        let host = match request.headers().get(header::HOST) {
            Some(value) => value.to_str().ok(),
            None => request.uri().authority().map(|a| a.as_str()),
        };
        if !host.is_some_and(|h| host_allowed(&app.config.args.allowed_hosts, h)) {
            let shown: String = host.unwrap_or_default().chars().take(100).collect();
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden-host",
                format!(
                    "Host `{shown}` is not served without an API token: use localhost, \
                     127.0.0.1 or [::1], list the name in --allowed-hosts \
                     (RECBOT_ALLOWED_HOSTS), or set --api-token"
                ),
            )
            .into_response();
        }
    }
    next.run(request).await
}

async fn check_origin(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path.starts_with("/api/") || path.starts_with("/rooms/") {
        let headers = request.headers();
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            if !origin_allowed(&app, origin, host) {
                return ApiError::forbidden(format!("origin `{origin}` is not allowed"))
                    .into_response();
            }
        }
    }
    next.run(request).await
}

/// Reads an optional whole non-negative number in any JSON spelling (`5`, `5.0`, `5e0`): JSON
/// has one number type, so a count of seconds or milliseconds written by a program that only
/// has floats is as good as an integer. `null` is absent; a fraction, a negative number, one
/// beyond `u64` or a non-number is refused (the JSON extractor names the field in the 400).
pub fn whole_number<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Whole;

    impl<'v> serde::de::Visitor<'v> for Whole {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole non-negative number")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'v>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom(format!("must be a whole non-negative number, got {v}")))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            // 2^64 as f64 is exact; every whole f64 below it converts exactly.
            if v.is_finite() && v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v)
            {
                Ok(Some(v as u64))
            } else {
                Err(E::custom(format!(
                    "must be a whole non-negative number, got {v}"
                )))
            }
        }
    }

    deserializer.deserialize_option(Whole)
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CreateRecording {
    room: String,
    #[serde(default)]
    audio: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    pli_interval_ms: Option<u64>,
    #[serde(default, deserialize_with = "whole_number")]
    max_duration_s: Option<u64>,
    #[serde(default)]
    notice: bool,
    /// Write `room-mix.ogg` (SPEC §11).
    #[serde(default)]
    mix: bool,
    /// Render `room.webm` after the stop (implies `mix`).
    #[serde(default)]
    composite: bool,
    /// The composite's size, `"WIDTHxHEIGHT"` (default 1280x720).
    #[serde(default)]
    composite_size: Option<String>,
}

/// Parses a composite size `"1280x720"`: even sides from 64x64 to 3840x2160.
fn composite_size(text: &str) -> Option<(u32, u32)> {
    let (w, h) = text.split_once('x')?;
    let (w, h): (u32, u32) = (w.parse().ok()?, h.parse().ok()?);
    ((64..=3840).contains(&w)
        && (64..=2160).contains(&h)
        && w.is_multiple_of(2)
        && h.is_multiple_of(2))
    .then_some((w, h))
}

async fn create_recording(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateRecording>,
) -> Result<Response, ApiError> {
    if !valid_room_name(&body.room) {
        return Err(ApiError::bad_room());
    }
    let muxed = match body.audio.as_deref() {
        None | Some("ogg") => false,
        Some("webm") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`audio` must be \"ogg\" or \"webm\", got {other:?}"
            )))
        }
    };
    let pli_interval = match body.pli_interval_ms {
        None | Some(0) => None,
        Some(ms) if ms < 100 => {
            return Err(ApiError::bad_request(
                "`pli_interval_ms` must be at least 100",
            ))
        }
        Some(ms) => Some(Duration::from_millis(ms)),
    };
    let max_duration = match body.max_duration_s {
        None => None,
        Some(0) => return Err(ApiError::bad_request("`max_duration_s` must be at least 1")),
        Some(s) => Some(Duration::from_secs(s)),
    };
    let size = match body.composite_size.as_deref() {
        None => (1280, 720),
        Some(text) => composite_size(text).ok_or_else(|| {
            ApiError::bad_request(
                "`composite_size` must be \"WIDTHxHEIGHT\", even sides, 64x64 to 3840x2160",
            )
        })?,
    };
    let options = RecordOptions {
        pli_interval,
        max_duration,
        muxed,
        notice: body.notice,
        mix: body.mix || body.composite,
        composite: body.composite.then_some(size),
    };
    let Some(node) = app.cluster.clone() else {
        let recording = recorder::start(&app.services, &body.room, options).await?;
        return Ok((StatusCode::CREATED, Json(recording.doc())).into_response());
    };
    let here = async {
        let recording = node.start_local(&body.room, options).await?;
        Ok((StatusCode::CREATED, Json(recording.doc())).into_response())
    };
    match cluster::scope(&app, &headers) {
        Some(scope) => {
            let json = serde_json::to_value(&body).unwrap_or_default();
            cluster::create(&app, &scope, json, here).await
        }
        None => here.await,
    }
}

async fn list_recordings(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list: Vec<RecordingDoc> = match cluster::scope(&app, &headers) {
        Some(scope) => cluster::list(&app, &scope).await?,
        None => app.services.store.list().iter().map(|r| r.doc()).collect(),
    };
    Ok(Json(serde_json::json!({ "recordings": list })))
}

fn checked_id(id: &str) -> Result<&str, ApiError> {
    if valid_id(id) {
        Ok(id)
    } else {
        Err(ApiError::not_found(format!("no recording `{id}`")))
    }
}

/// In a cluster, for a client's call about recording `id` owned by another node: that node's
/// answer to the same call (or, when it is gone, `gone(node, last document)`). `None`: answer
/// here.
async fn elsewhere(
    app: &App,
    headers: &HeaderMap,
    id: &str,
    method: Method,
    path: &str,
    gone: fn(&str, Option<RecordingDoc>) -> Result<Response, ApiError>,
) -> Result<Option<Response>, ApiError> {
    let Some(scope) = cluster::scope(app, headers) else {
        return Ok(None);
    };
    let Some((node, url, doc)) = cluster::owner(&scope, id).await? else {
        return Ok(None);
    };
    match url {
        Some(url) => {
            let answer = cluster::proxy(&scope, &node, &url, method, path, headers, None).await;
            match answer {
                Ok(response) => Ok(Some(response)),
                Err(_) => gone(&node, doc).map(Some),
            }
        }
        None => gone(&node, doc).map(Some),
    }
}

/// The owner of a recording is gone and the call needs it.
fn owner_gone(node: &str, _doc: Option<RecordingDoc>) -> Result<Response, ApiError> {
    Err(crate::cluster::ClusterError::Node(node.into(), "no heartbeat".into()).into())
}

async fn get_recording(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = checked_id(&id)?;
    let path = format!("/api/recordings/{id}");
    if let Some(answer) =
        elsewhere(&app, &headers, id, Method::GET, &path, cluster::last_known).await?
    {
        return Ok(answer);
    }
    Ok(Json(app.services.store.get(id)?.doc()).into_response())
}

async fn stop_recording(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = checked_id(&id)?;
    let path = format!("/api/recordings/{id}/stop");
    if let Some(answer) = elsewhere(&app, &headers, id, Method::POST, &path, owner_gone).await? {
        return Ok(answer);
    }
    let recording = app.services.store.get(id)?;
    recorder::stop(&app.services, &recording, StopReason::Requested).await;
    if let Some(node) = &app.cluster {
        node.finished(&recording).await?;
    }
    Ok(Json(recording.doc()).into_response())
}

/// `POST /api/recordings/{id}/pause` (SPEC §11): 404 unknown, 409 `not-recording` unless the
/// state is `recording`; pausing a paused recording is a no-op that answers 200.
async fn pause_recording(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RecordingDoc>, ApiError> {
    let recording = app.services.store.get(checked_id(&id)?)?;
    recording.pause().map_err(pause_error)?;
    Ok(Json(recording.doc()))
}

/// `POST /api/recordings/{id}/resume` (SPEC §11): 404 unknown, 409 `not-recording` unless the
/// state is `recording`, 409 `not-paused` when it is not paused.
async fn resume_recording(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RecordingDoc>, ApiError> {
    let recording = app.services.store.get(checked_id(&id)?)?;
    recording.resume().map_err(pause_error)?;
    Ok(Json(recording.doc()))
}

fn pause_error(e: crate::record::session::PauseError) -> ApiError {
    use crate::record::session::PauseError;
    let code = match e {
        PauseError::NotRecording => "not-recording",
        PauseError::NotPaused => "not-paused",
    };
    ApiError::new(StatusCode::CONFLICT, code, e.to_string())
}

async fn delete_recording(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = checked_id(&id)?;
    let path = format!("/api/recordings/{id}");
    let scope = cluster::scope(&app, &headers);
    if let Some(answer) = elsewhere(&app, &headers, id, Method::DELETE, &path, owner_gone).await? {
        if answer.status() == StatusCode::NO_CONTENT {
            if let Some(scope) = &scope {
                scope.forget(id).await?;
            }
        }
        return Ok(answer);
    }
    let recording = app.services.store.get(id)?;
    if recording.state().is_active() {
        return Err(crate::record::store::RecordError::Active(id.to_owned()).into());
    }
    // Objects first: a store that cannot delete them leaves the recording whole (and listed).
    let _paused = match &app.services.storage {
        Some(storage) => Some(storage.delete_objects(&recording).await.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "storage-unavailable",
                format!("the recording's objects could not be deleted: {e}"),
            )
        })?),
        None => None,
    };
    app.services.store.delete(id)?;
    if let Some(scope) = &scope {
        scope.forget(id).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_file(
    State(app): State<Arc<App>>,
    Path((id, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = format!("/api/recordings/{}/files/{name}", checked_id(&id)?);
    if files::plain_file_name(&name) {
        // A file written before a takeover is on the node that wrote it, not the owner's.
        if let Some(scope) = cluster::scope(&app, &headers) {
            if let Some(node) = scope.file_node(&id, &name).await? {
                if node != scope.node_id() {
                    let Some(url) = scope.node_url(&node).await? else {
                        return owner_gone(&node, None);
                    };
                    return Ok(
                        cluster::proxy(&scope, &node, &url, method, &path, &headers, None).await?,
                    );
                }
                // Here: answered below, from this node's folder.
                if app.services.store.get(&id).is_ok() {
                    return serve_local(&app, &id, &name, &method, &headers).await;
                }
            }
        }
        if let Some(answer) =
            elsewhere(&app, &headers, &id, method.clone(), &path, owner_gone).await?
        {
            return Ok(answer);
        }
    }
    serve_local(&app, &id, &name, &method, &headers).await
}

/// A file of a recording of this node.
async fn serve_local(
    app: &App,
    id: &str,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let name = name.to_owned();
    let recording = app.services.store.get(checked_id(id)?)?;
    let listed = name == crate::record::manifest::MANIFEST_FILE
        || recording.doc().files.iter().any(|f| f.name == name);
    if !files::plain_file_name(&name) || !listed {
        return Err(ApiError::not_found(format!(
            "no file `{name}` in recording `{id}`"
        )));
    }
    let path = recording.dir().join(&name);
    if let Some(storage) = &app.services.storage {
        // Uploaded and deleted locally: streamed from the store (Range included).
        let uploaded = recording.file_upload(&name) == Some(UploadState::Uploaded);
        if uploaded && !path.exists() {
            return Ok(files::serve_object(storage, &recording, &name, method, headers).await);
        }
    }
    Ok(files::serve(&path, &name, method, headers).await)
}

/// `GET /healthz`: `200 {"status": "ok"}`; in a cluster, `503 {"status": "draining"}` from
/// the moment a drain starts, so load balancers send nothing new.
async fn healthz(State(app): State<Arc<App>>) -> Response {
    if app.cluster.as_ref().is_some_and(|c| c.is_draining()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "draining"})),
        )
            .into_response();
    }
    Json(serde_json::json!({"status": "ok"})).into_response()
}

#[derive(Debug, Deserialize)]
struct HandoverQuery {
    from: String,
}

/// `POST /api/cluster/handover/{id}?from=NODE` (internal, between the nodes of a cluster): the
/// draining node `from` hands recording `id` to this node; answered once the new recorder
/// receives. `404` without a cluster.
async fn accept_handover(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<HandoverQuery>,
) -> Result<Json<RecordingDoc>, ApiError> {
    let Some(node) = &app.cluster else {
        return Err(ApiError::not_found("no such route"));
    };
    Ok(Json(
        node.accept_handover(checked_id(&id)?, &query.from).await?,
    ))
}

async fn list_rooms(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let rooms: Vec<serde_json::Value> = app
        .services
        .hub
        .snapshot()
        .into_iter()
        .map(|(room, peers)| serde_json::json!({"room": room, "peers": peers}))
        .collect();
    Json(serde_json::json!({ "rooms": rooms }))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    use crate::telemetry as t;
    let Some(handle) = t::handle() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics-unavailable",
            "another metrics recorder is installed in this process",
        )
        .into_response();
    };
    let (rooms, peers) = app.services.hub.counts();
    metrics::gauge!(t::ROOMS).set(rooms as f64);
    metrics::gauge!(t::PEERS).set(peers as f64);
    metrics::gauge!(t::RECORDINGS_ACTIVE).set(app.services.store.active().len() as f64);
    metrics::gauge!(t::WHIP_SESSIONS).set(app.services.whip.len() as f64);
    if let Some(storage) = &app.services.storage {
        let backlog = storage.backlog();
        metrics::gauge!(t::UPLOADS_PENDING).set(backlog.pending as f64);
        metrics::gauge!(t::UPLOAD_OLDEST_PENDING).set(backlog.oldest_s);
    }
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
        + app.services.factory.media_tasks();
    metrics::gauge!(t::TASKS).set(tasks as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default, deserialize_with = "whole_number")]
        n: Option<u64>,
    }

    fn read(json: &str) -> Result<Option<u64>, String> {
        serde_json::from_str::<Body>(json)
            .map(|b| b.n)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let read = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            bearer(&headers).map(str::to_owned)
        };
        for value in ["Bearer t0k", "bearer t0k", "BEARER  t0k", "bEaReR t0k "] {
            assert_eq!(read(value).as_deref(), Some("t0k"), "{value}");
        }
        for value in ["Basic t0k", "Bearer", "Bearer ", "Bearert0k", "t0k"] {
            assert_eq!(read(value), None, "{value}");
        }
    }

    #[test]
    fn hosts_served_without_a_token() {
        let allowed = vec!["recbot.lan".to_owned(), "box:9000".into(), "fd00::5".into()];
        for host in [
            "localhost",
            "localhost:8080",
            "LocalHost:1",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[::1]",
            "recbot.lan",
            "RECBOT.lan:8080",
            "box:9000",
            "[fd00::5]:8080",
        ] {
            assert!(host_allowed(&allowed, host), "{host}");
        }
        for host in [
            "",
            "rebind.attacker.example:8080",
            "localhost.attacker.example",
            "127.0.0.1.nip.io:8080",
            "box:9001",
            "box",
            "user@localhost:8080",
            "localhost:port",
            "10.0.0.1:8080",
        ] {
            assert!(!host_allowed(&allowed, host), "{host}");
        }
        assert!(!host_allowed(&[], "recbot.lan"));
        assert!(!host_allowed(&[String::new()], "recbot.lan"));
    }

    #[test]
    fn whole_numbers_in_every_spelling() {
        assert_eq!(read(r#"{"n": 5}"#), Ok(Some(5)));
        assert_eq!(read(r#"{"n": 5.0}"#), Ok(Some(5)));
        assert_eq!(read(r#"{"n": 5e0}"#), Ok(Some(5)));
        assert_eq!(read(r#"{"n": -0.0}"#), Ok(Some(0)));
        assert_eq!(read(r#"{"n": 18446744073709551615}"#), Ok(Some(u64::MAX)));
        assert_eq!(read(r#"{"n": null}"#), Ok(None));
        assert_eq!(read(r#"{}"#), Ok(None));
        for bad in ["5.5", "-1", "-1.0", "1e20", "\"5\"", "true", "[5]"] {
            let err = read(&format!(r#"{{"n": {bad}}}"#)).unwrap_err();
            assert!(err.contains("whole non-negative number"), "{bad}: {err}");
        }
        assert!(
            read(r#"{"n": 1, "m": 2}"#).is_err(),
            "unknown fields stay refused"
        );
    }
}
