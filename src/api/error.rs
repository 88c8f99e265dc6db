//! The one place where errors of every layer become the SPEC's JSON errors:
//! `{"error": {"code": "...", "message": "..."}}` with a 4xx/5xx status.

use crate::bot::recorder::StartError;
use crate::record::store::RecordError;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
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
            StartError::Join(e @ crate::signal::hub::JoinError::AtCapacity) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server-busy",
                e.to_string(),
            ),
            StartError::Join(e) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "room-full", e.to_string())
            }
            e @ StartError::DiskFull(_) => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, "disk-full", e.to_string())
            }
        }
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
