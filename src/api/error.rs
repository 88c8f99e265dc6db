//! The one place where errors of every layer become the SPEC's JSON errors:
//! `{"error": {"code": "...", "message": "..."}}` with a 4xx/5xx status.

use crate::bot::recorder::StartError;
use crate::record::store::RecordError;
use crate::signal::hub::JoinError;
use axum::extract::rejection::JsonRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// An HTTP error reply.
#[derive(Debug)]
pub struct ApiError {
    /// Status code.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 bad-request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    /// 404 not-found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    /// 401 unauthorized.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 400 bad-room: a room name (in a path or a body) that is not 1-64 characters of
    /// `[A-Za-z0-9_-]`. Every route refuses a bad room name with this one code.
    pub fn bad_room() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-room",
            "`room` must be 1-64 characters of A-Z a-z 0-9 _ -",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

/// The `code` of an error reply that no handler wrote (an extractor's rejection, a method the
/// route does not have): kebab-case, like the codes the handlers use.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad-request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::NOT_ACCEPTABLE => "not-acceptable",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::CONFLICT => "conflict",
        StatusCode::LENGTH_REQUIRED => "length-required",
        StatusCode::PAYLOAD_TOO_LARGE => "too-large",
        StatusCode::URI_TOO_LONG => "uri-too-long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::RANGE_NOT_SATISFIABLE => "range-not-satisfiable",
        StatusCode::UNPROCESSABLE_ENTITY => "bad-request",
        StatusCode::UPGRADE_REQUIRED => "upgrade-required",
        StatusCode::TOO_MANY_REQUESTS => "rate-limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "bad-request",
        _ => "internal",
    }
}

/// Longest plain-text rejection body kept as the `message` of its JSON error.
const MAX_REJECTION_TEXT: usize = 1024;

/// Response middleware: gives every 4xx/5xx reply the JSON error shape (SPEC §4), also those no
/// handler wrote: axum's extractor rejections (a body over the limit, a path or query that is
/// not UTF-8 or does not parse, a missing upgrade), `405` of the method router, an empty `416`.
/// Their text becomes the `message`; their other headers (`Allow`, `Content-Range`, CORS) stay.
/// Replies already in JSON pass unchanged.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_TEXT)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    let message = text.unwrap_or_else(|| match parts.headers.get(header::ALLOW) {
        Some(allow) if status == StatusCode::METHOD_NOT_ALLOWED => format!(
            "method not allowed here; allowed: {}",
            allow.to_str().unwrap_or_default()
        ),
        _ => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    });
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut reply = ApiError::new(status, code_for(status), message).into_response();
    for (name, value) in parts.headers.iter() {
        reply.headers_mut().append(name, value.clone());
    }
    reply
}

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        let (status, code) = match &e {
            RecordError::RoomBusy(..) => (StatusCode::CONFLICT, "room-busy"),
            RecordError::TooMany(_) => (StatusCode::SERVICE_UNAVAILABLE, "too-many-recordings"),
            RecordError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            RecordError::Active(_) => (StatusCode::CONFLICT, "recording-active"),
            RecordError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        Self::new(status, code, e.to_string())
    }
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Record(e) => e.into(),
            StartError::Join(e) => e.into(),
            e @ StartError::DiskFull(_) => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, "disk-full", e.to_string())
            }
            e @ StartError::Mix(_) => {
                tracing::error!(error = %e, "recording failed to start");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

/// The code of a hub refusal, the same on every route that joins a room (WebSocket, WHIP,
/// recordings, bots): one per cause.
pub fn join_code(e: &JoinError) -> &'static str {
    match e {
        JoinError::RoomFull(_) => "room-full",
        JoinError::TooManyRooms => "too-many-rooms",
        JoinError::AtCapacity => "server-busy",
    }
}

/// A hub refusal: `503` with its [`join_code`].
impl From<JoinError> for ApiError {
    fn from(e: JoinError) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            join_code(&e),
            e.to_string(),
        )
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        let status = match e {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        let code = match status {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
            StatusCode::PAYLOAD_TOO_LARGE => "too-large",
            _ => "bad-request",
        };
        Self::new(status, code, e.body_text())
    }
}

/// A cluster error: `409 room-busy` for a room recorded on another node, `503` when Redis or
/// the owning node cannot be reached or this node drains.
impl From<crate::cluster::ClusterError> for ApiError {
    fn from(e: crate::cluster::ClusterError) -> Self {
        use crate::cluster::ClusterError as C;
        let (status, code) = match &e {
            C::RoomBusy(..) => (StatusCode::CONFLICT, "room-busy"),
            C::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "cluster-unavailable"),
            C::Node(..) => (StatusCode::SERVICE_UNAVAILABLE, "node-unavailable"),
            C::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
        };
        tracing::warn!(error = %e, "cluster request failed");
        Self::new(status, code, e.to_string())
    }
}

impl From<crate::cluster::StartLocalError> for ApiError {
    fn from(e: crate::cluster::StartLocalError) -> Self {
        match e {
            crate::cluster::StartLocalError::Cluster(e) => e.into(),
            crate::cluster::StartLocalError::Start(e) => e.into(),
        }
    }
}
