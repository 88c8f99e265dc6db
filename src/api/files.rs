//! Serving recording files: `GET`/`HEAD` with a single `Range` (206/416), `ETag`,
//! `If-None-Match` (304), `If-Range`, and the right `Content-Type`.
//!
//! Only names the recording lists (or `manifest.json`) are served, so no request can reach a
//! path outside the recording's folder whatever its encoding.
//!
//! A file uploaded to object storage and deleted locally (SPEC §7) is streamed from the store
//! ([`serve_object`]): the client's `Range`, `If-None-Match` and `If-Range` are forwarded and
//! the store's status, length, range and ETag come back. Streaming rather than a `302` to a
//! presigned URL keeps the service's token check, works behind a proxy that cannot reach the
//! store, and never hands out a signed URL.

use super::error::ApiError;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::io::SeekFrom;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Content type by file name.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("webm") => "video/webm",
        Some("ogg") => "audio/ogg",
        Some("json") => "application/json",
        Some("jsonl") => crate::record::chat::CONTENT_TYPE,
        _ => "application/octet-stream",
    }
}

/// Whether `name` is a plain file name (no separators, no leading dot, a safe alphabet).
pub fn plain_file_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// A byte range resolved against a length: inclusive start and end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
}

/// The outcome of reading a `Range` header.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: serve the whole file.
    Full,
    /// One satisfiable range.
    Partial(ByteRange),
    /// A syntactically valid range that lies outside the file.
    Unsatisfiable,
}

/// Parses a `Range` header for a file of `len` bytes. Multiple ranges and unknown units are
/// answered with the full file (allowed by RFC 9110 §14.2).
pub fn parse_range(value: &str, len: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let Ok(suffix) = b.parse::<u64>() else {
            return RangeRequest::Full;
        };
        if suffix == 0 || len == 0 {
            return RangeRequest::Unsatisfiable;
        }
        ByteRange {
            start: len.saturating_sub(suffix),
            end: len - 1,
        }
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return RangeRequest::Full;
        };
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(end) if end >= start => end.min(len.saturating_sub(1)),
                _ => return RangeRequest::Full,
            }
        };
        if start >= len {
            return RangeRequest::Unsatisfiable;
        }
        ByteRange { start, end }
    };
    RangeRequest::Partial(range)
}

fn etag_of(meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("\"{:x}-{:x}\"", meta.len(), mtime)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Serves `path` (already checked to belong to a recording) for `method` and `headers`.
pub async fn serve(path: &Path, name: &str, method: &Method, headers: &HeaderMap) -> Response {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(_) => return ApiError::not_found(format!("no file `{name}`")).into_response(),
    };
    let meta = match file.metadata().await {
        Ok(m) if m.is_file() => m,
        _ => return ApiError::not_found(format!("no file `{name}`")).into_response(),
    };
    let len = meta.len();
    let etag = etag_of(&meta);
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, content_type(name))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(tags) = header_str(headers, header::IF_NONE_MATCH) {
        if tags.split(',').any(|t| t.trim() == etag || t.trim() == "*") {
            return response
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .unwrap_or_default();
        }
    }
    let range_allowed = match header_str(headers, header::IF_RANGE) {
        Some(tag) => tag.trim() == etag,
        None => true,
    };
    let request = match header_str(headers, header::RANGE) {
        Some(value) if range_allowed => parse_range(value, len),
        _ => RangeRequest::Full,
    };
    let (status, start, count) = match request {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Partial(r) => {
            response = response.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{len}", r.start, r.end),
            );
            (StatusCode::PARTIAL_CONTENT, r.start, r.end - r.start + 1)
        }
        RangeRequest::Unsatisfiable => {
            return response
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_default();
        }
    };
    response = response
        .status(status)
        .header(header::CONTENT_LENGTH, HeaderValue::from(count));
    if method == Method::HEAD {
        return response.body(Body::empty()).unwrap_or_default();
    }
    if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
        return ApiError::not_found(format!("no file `{name}`")).into_response();
    }
    let stream = tokio_util::io::ReaderStream::new(file.take(count));
    response.body(Body::from_stream(stream)).unwrap_or_default()
}

/// Serves file `name` of `recording` from object storage for `method` and `headers`.
pub async fn serve_object(
    storage: &crate::store::Storage,
    recording: &crate::record::session::Recording,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let mut forward = HeaderMap::new();
    for h in [header::RANGE, header::IF_NONE_MATCH, header::IF_RANGE] {
        if let Some(v) = headers.get(&h) {
            forward.insert(h, v.clone());
        }
    }
    let head = method == Method::HEAD;
    let answer = match storage.fetch(recording, name, head, forward).await {
        Some(Ok(answer)) => answer,
        Some(Err(e)) => return unavailable(&e.to_string()),
        None => return ApiError::not_found(format!("no file `{name}`")).into_response(),
    };
    let status = answer.status();
    match status.as_u16() {
        200 | 206 | 304 | 416 => {}
        404 => return ApiError::not_found(format!("no file `{name}`")).into_response(),
        other => return unavailable(&format!("the store answered {other}")),
    }
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type(name))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-cache");
    for h in [
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::ETAG,
        header::LAST_MODIFIED,
    ] {
        if let Some(v) = answer.headers().get(&h) {
            response = response.header(h, v.clone());
        }
    }
    if head || status == StatusCode::NOT_MODIFIED {
        return response.body(Body::empty()).unwrap_or_default();
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .unwrap_or_default()
}

fn unavailable(why: &str) -> Response {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "storage-unavailable",
        format!("the file is in object storage, which failed: {why}"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let p = |s| parse_range(s, 1000);
        assert_eq!(
            p("bytes=0-99"),
            RangeRequest::Partial(ByteRange { start: 0, end: 99 })
        );
        assert_eq!(
            p("bytes=900-"),
            RangeRequest::Partial(ByteRange {
                start: 900,
                end: 999
            })
        );
        assert_eq!(
            p("bytes=-100"),
            RangeRequest::Partial(ByteRange {
                start: 900,
                end: 999
            })
        );
        assert_eq!(
            p("bytes=990-2000"),
            RangeRequest::Partial(ByteRange {
                start: 990,
                end: 999
            })
        );
        assert_eq!(p("bytes=1000-"), RangeRequest::Unsatisfiable);
        assert_eq!(p("bytes=-0"), RangeRequest::Unsatisfiable);
        assert_eq!(p("bytes=5-1"), RangeRequest::Full);
        assert_eq!(p("bytes=0-1,5-6"), RangeRequest::Full);
        assert_eq!(p("items=0-1"), RangeRequest::Full);
        assert_eq!(p("bytes=x-1"), RangeRequest::Full);
    }

    #[test]
    fn names() {
        assert!(plain_file_name("alice-video-1.webm"));
        assert!(plain_file_name("manifest.json"));
        for bad in [
            "../x",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "/etc/passwd",
            "",
            "a%2Fb",
        ] {
            assert!(!plain_file_name(bad), "{bad}");
        }
    }
}
