//! A small S3 client: requests signed by `rusty-s3` (SigV4, presigned URLs: the secret never
//! leaves the process and never reaches a log) and sent with `reqwest`.
//!
//! Every upload carries `Content-MD5` (the store refuses a body that does not match), and the
//! `ETag` it answers is compared with our own MD5 when it is one (a plain PUT or part: the
//! MD5 in hex; a completed multipart upload: the MD5 of the parts' MD5s, `-` and the count).

use crate::config::S3Settings;
use base64::Engine as _;
use bytes::Bytes;
use md5::{Digest, Md5};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::time::Duration;

/// How long a signed request stays valid (it is sent at once; the margin covers clock skew
/// and a slow part upload).
const SIGN_FOR: Duration = Duration::from_secs(3600);
/// Longest time for one request (a 16 MiB part over a slow link included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// An S3 failure, shown as the store's answer (`upload_error`).
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The store answered with an error status.
    #[error("{status} {code}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// S3 error code (`AccessDenied`, `NoSuchBucket`, …) or the reason phrase.
        code: String,
        /// S3's message, if any.
        message: String,
    },
    /// No answer (refused, reset, timed out).
    #[error("store unreachable: {0}")]
    Transport(String),
    /// The store's answer did not match what we sent.
    #[error("checksum mismatch: {0}")]
    Checksum(String),
    /// An answer we could not read.
    #[error("bad answer from the store: {0}")]
    Protocol(String),
    /// The local file could not be read.
    #[error("local file: {0}")]
    Local(#[from] std::io::Error),
}

impl S3Error {
    /// The HTTP status of a store error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn transport(e: reqwest::Error) -> S3Error {
    // Without the URL: it holds the signature and the access key id.
    S3Error::Transport(e.without_url().to_string())
}

/// The hex form of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// MD5 of `data`.
pub fn md5(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

/// The ETag S3 gives a multipart object made of parts with these MD5s.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut all = Md5::new();
    for m in part_md5s {
        all.update(m);
    }
    format!("{}-{}", hex(&all.finalize()), part_md5s.len())
}

/// Whether the store's `etag` (quotes allowed) confirms `expected`. An ETag of another form
/// (a server-side encrypted object's) cannot be compared: the store checked `Content-MD5`.
fn etag_confirms(etag: &str, expected: &str) -> Result<(), S3Error> {
    let etag = etag.trim().trim_matches('"').to_ascii_lowercase();
    let comparable = match expected.split_once('-') {
        None => etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit()),
        Some(_) => etag.contains('-'),
    };
    if comparable && etag != expected {
        return Err(S3Error::Checksum(format!(
            "the store's ETag {etag} is not our {expected}"
        )));
    }
    Ok(())
}

/// The S3 client of one bucket.
pub struct S3 {
    bucket: Bucket,
    credentials: Credentials,
    http: reqwest::Client,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("bucket", &self.bucket.name())
            .finish_non_exhaustive()
    }
}

/// Reads an S3 error body (`<Error><Code>…</Code><Message>…</Message></Error>`).
fn error_of(status: reqwest::StatusCode, body: &str) -> S3Error {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&format!("</{name}>"))? + start;
        Some(body[start..end].to_owned())
    };
    S3Error::Status {
        status: status.as_u16(),
        code: tag("Code").unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned()),
        message: tag("Message").unwrap_or_default(),
    }
}

async fn check(response: reqwest::Response) -> Result<reqwest::Response, S3Error> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(error_of(status, &body))
}

fn etag_header(response: &reqwest::Response) -> Result<String, S3Error> {
    response
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| S3Error::Protocol("no ETag".into()))
}

impl S3 {
    /// A client for `settings`' bucket (nothing is sent yet).
    pub fn new(settings: &S3Settings) -> Result<Self, String> {
        let style = if settings.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            settings.endpoint.clone(),
            style,
            settings.bucket.clone(),
            settings.region.clone(),
        )
        .map_err(|e| format!("--s3-endpoint/--s3-bucket: {e}"))?;
        let credentials = Credentials::new(
            settings.credentials.access_key_id.clone(),
            settings.credentials.secret_access_key.clone(),
        );
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            bucket,
            credentials,
            http,
        })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        self.bucket.name()
    }

    /// `HEAD` of the bucket: `Ok` when it exists and the credentials may use it.
    pub async fn head_bucket(&self) -> Result<(), S3Error> {
        let url = self
            .bucket
            .head_bucket(Some(&self.credentials))
            .sign(SIGN_FOR);
        let response = self.http.head(url).send().await.map_err(transport)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // A HEAD answer has no body: name the usual causes.
        let code = match status.as_u16() {
            404 => "NoSuchBucket",
            403 => "AccessDenied",
            301 | 400 => "WrongRegionOrEndpoint",
            _ => status.canonical_reason().unwrap_or(""),
        };
        Err(S3Error::Status {
            status: status.as_u16(),
            code: code.into(),
            message: String::new(),
        })
    }

    /// `PUT` of a whole object whose MD5 is `digest`, verified by `Content-MD5` and the
    /// answered ETag.
    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        digest: [u8; 16],
        content_type: &str,
    ) -> Result<(), S3Error> {
        let md5_b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        let mut action = self.bucket.put_object(Some(&self.credentials), key);
        action.headers_mut().insert("content-md5", md5_b64.clone());
        action
            .headers_mut()
            .insert("content-type", content_type.to_owned());
        let url = action.sign(SIGN_FOR);
        let response = self
            .http
            .put(url)
            .header("content-md5", md5_b64)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(reqwest::header::CONTENT_LENGTH, body.len())
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let response = check(response).await?;
        etag_confirms(&etag_header(&response)?, &hex(&digest))
    }

    /// Starts a multipart upload; returns its id.
    pub async fn create_multipart(&self, key: &str, content_type: &str) -> Result<String, S3Error> {
        let mut action = self
            .bucket
            .create_multipart_upload(Some(&self.credentials), key);
        action
            .headers_mut()
            .insert("content-type", content_type.to_owned());
        let url = action.sign(SIGN_FOR);
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .send()
            .await
            .map_err(transport)?;
        let body = check(response).await?.text().await.map_err(transport)?;
        let parsed = rusty_s3::actions::CreateMultipartUpload::parse_response(&body)
            .map_err(|e| S3Error::Protocol(e.to_string()))?;
        Ok(parsed.upload_id().to_owned())
    }

    /// Uploads part `number` (from 1); returns its ETag once it matches the part's MD5.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        body: Bytes,
        digest: [u8; 16],
    ) -> Result<String, S3Error> {
        let md5_b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        let mut action = self
            .bucket
            .upload_part(Some(&self.credentials), key, number, upload_id);
        action.headers_mut().insert("content-md5", md5_b64.clone());
        let url = action.sign(SIGN_FOR);
        let response = self
            .http
            .put(url)
            .header("content-md5", md5_b64)
            .header(reqwest::header::CONTENT_LENGTH, body.len())
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let response = check(response).await?;
        let etag = etag_header(&response)?;
        etag_confirms(&etag, &hex(&digest))?;
        Ok(etag)
    }

    /// Completes a multipart upload from its parts' ETags and MD5s; verifies the object's ETag.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
        md5s: &[[u8; 16]],
    ) -> Result<(), S3Error> {
        let action = self.bucket.complete_multipart_upload(
            Some(&self.credentials),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGN_FOR);
        let body = action.body();
        let response = self
            .http
            .post(url)
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let text = check(response).await?.text().await.map_err(transport)?;
        // S3 may answer 200 with an error document when the completion failed late.
        if text.contains("<Error>") {
            return Err(error_of(reqwest::StatusCode::OK, &text));
        }
        let parsed = rusty_s3::actions::CompleteMultipartUploadResponse::parse(&text)
            .map_err(|e| S3Error::Protocol(e.to_string()))?;
        etag_confirms(parsed.etag(), &multipart_etag(md5s))
    }

    /// Aborts a multipart upload (best effort: its parts are dropped by the store).
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let url = self
            .bucket
            .abort_multipart_upload(Some(&self.credentials), key, upload_id)
            .sign(SIGN_FOR);
        let response = self.http.delete(url).send().await.map_err(transport)?;
        check(response).await.map(drop)
    }

    /// The size of object `key`, `None` if there is none.
    pub async fn object_size(&self, key: &str) -> Result<Option<u64>, S3Error> {
        let url = self
            .bucket
            .head_object(Some(&self.credentials), key)
            .sign(SIGN_FOR);
        let response = self.http.head(url).send().await.map_err(transport)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = check(response).await?;
        let size = response
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| S3Error::Protocol("no Content-Length".into()))?;
        Ok(Some(size))
    }

    /// Sends a `GET` (or `HEAD`) of object `key` with the given request headers (Range,
    /// If-None-Match, If-Range: forwarded as they came) and returns the store's answer as is.
    pub async fn fetch(
        &self,
        key: &str,
        head: bool,
        headers: reqwest::header::HeaderMap,
    ) -> Result<reqwest::Response, S3Error> {
        let url = if head {
            self.bucket
                .head_object(Some(&self.credentials), key)
                .sign(SIGN_FOR)
        } else {
            self.bucket
                .get_object(Some(&self.credentials), key)
                .sign(SIGN_FOR)
        };
        let request = if head {
            self.http.head(url)
        } else {
            self.http.get(url)
        };
        request.headers(headers).send().await.map_err(transport)
    }

    /// Keys under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, S3Error> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            action.with_prefix(prefix);
            if let Some(token) = &token {
                action.with_continuation_token(token.clone());
            }
            let url = action.sign(SIGN_FOR);
            let response = self.http.get(url).send().await.map_err(transport)?;
            let text = check(response).await?.text().await.map_err(transport)?;
            let parsed = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| S3Error::Protocol(e.to_string()))?;
            keys.extend(parsed.contents.into_iter().map(|c| c.key));
            match parsed.next_continuation_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => return Ok(keys),
            }
        }
    }

    /// Deletes object `key` (no error if it is already gone).
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), key)
            .sign(SIGN_FOR);
        let response = self.http.delete(url).send().await.map_err(transport)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        check(response).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_compared_when_they_are_md5s() {
        let d = md5(b"hello");
        let h = hex(&d);
        assert_eq!(h, "5d41402abc4b2a76b9719d911017c592");
        etag_confirms(&format!("\"{h}\""), &h).unwrap();
        assert!(etag_confirms("\"00000000000000000000000000000000\"", &h).is_err());
        // An encrypted object's ETag is not an MD5: not comparable.
        etag_confirms("\"abc\"", &h).unwrap();
        let parts = [md5(b"a"), md5(b"b")];
        let want = multipart_etag(&parts);
        assert!(want.ends_with("-2"));
        etag_confirms(&want, &want).unwrap();
        assert!(etag_confirms("\"0123-2\"", &want).is_err());
    }

    #[test]
    fn error_documents_are_read() {
        let e = error_of(
            reqwest::StatusCode::FORBIDDEN,
            "<Error><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error>",
        );
        assert_eq!(e.to_string(), "403 SignatureDoesNotMatch: no");
        assert_eq!(e.status(), Some(403));
    }
}
