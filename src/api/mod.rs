//! The HTTP surface (SPEC §4): recordings, rooms, bots, health, metrics, the page at `/`, the
//! room WebSocket route and WHIP, with Host (SPEC §1), token and origin checks in front. Its
//! state is [`App`]; its errors are [`ApiError`](error::ApiError)s.

pub mod bots;
pub mod error;
pub mod files;
pub mod state;
pub mod web;
pub mod whip;
pub mod ws;

use crate::bot::recorder;
use crate::record::manifest::{RecordingDoc, StopReason};
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
use serde::Deserialize;
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
        .route("/api/recordings/{id}/files/{name}", get(get_file))
        .route("/api/rooms", get(list_rooms))
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
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRecording {
    room: String,
    #[serde(default)]
    audio: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    pli_interval_ms: Option<u64>,
    #[serde(default, deserialize_with = "whole_number")]
    max_duration_s: Option<u64>,
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
    ApiJson(body): ApiJson<CreateRecording>,
) -> Result<(StatusCode, Json<RecordingDoc>), ApiError> {
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
    let recording = recorder::start(
        &app.services,
        &body.room,
        RecordOptions {
            pli_interval,
            max_duration,
            muxed,
            mix: body.mix || body.composite,
            composite: body.composite.then_some(size),
        },
    )?;
    Ok((StatusCode::CREATED, Json(recording.doc())))
}

async fn list_recordings(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let list: Vec<RecordingDoc> = app.services.store.list().iter().map(|r| r.doc()).collect();
    Json(serde_json::json!({ "recordings": list }))
}

fn checked_id(id: &str) -> Result<&str, ApiError> {
    if valid_id(id) {
        Ok(id)
    } else {
        Err(ApiError::not_found(format!("no recording `{id}`")))
    }
}

async fn get_recording(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RecordingDoc>, ApiError> {
    Ok(Json(app.services.store.get(checked_id(&id)?)?.doc()))
}

async fn stop_recording(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RecordingDoc>, ApiError> {
    let recording = app.services.store.get(checked_id(&id)?)?;
    recorder::stop(&app.services, &recording, StopReason::Requested).await;
    Ok(Json(recording.doc()))
}

async fn delete_recording(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.services.store.delete(checked_id(&id)?)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_file(
    State(app): State<Arc<App>>,
    Path((id, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let recording = app.services.store.get(checked_id(&id)?)?;
    let listed = name == crate::record::manifest::MANIFEST_FILE
        || recording.doc().files.iter().any(|f| f.name == name);
    if !files::plain_file_name(&name) || !listed {
        return Err(ApiError::not_found(format!(
            "no file `{name}` in recording `{id}`"
        )));
    }
    Ok(files::serve(&recording.dir().join(&name), &name, &method, &headers).await)
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
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
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
