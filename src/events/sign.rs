//! Standard Webhooks signing: the secret (`whsec_` + base64) and the `v1` signature of
//! `"{id}.{timestamp}.{body}"` (HMAC-SHA256 keyed by the secret's decoded bytes).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Fewest key bytes accepted (the Standard Webhooks spec: keys of 24 to 64 bytes).
pub const MIN_SECRET_BYTES: usize = 24;

/// A webhook signing key. Its `Debug` never shows the key, so it cannot reach a log.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// Why a `--webhook-secret` value was refused (the value itself is never part of it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No `whsec_` prefix.
    #[error("must start with `whsec_` (whsec_ followed by the base64 of the key)")]
    Prefix,
    /// The rest is not standard base64.
    #[error("is not `whsec_` followed by valid base64")]
    Base64,
    /// The key is too short.
    #[error(
        "decodes to {0} bytes; at least 24 are needed (e.g. whsec_$(openssl rand -base64 32))"
    )]
    TooShort(usize),
}

impl Secret {
    /// Parses `whsec_<base64>` (standard alphabet, padded) of at least [`MIN_SECRET_BYTES`].
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::Prefix)?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::Base64)?;
        if key.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(key.len()));
        }
        Ok(Self(key))
    }

    /// The `webhook-signature` header value for message `id` sent at `timestamp` (Unix
    /// seconds) with `body`: `v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // ok: HMAC accepts keys of any length; this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The known vector of the Standard Webhooks reference libraries (the Rust crate's
    /// `test_sign`, the same in the spec repository's other languages).
    #[test]
    fn signature_matches_the_reference_vector() {
        let secret = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            secret.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    /// A verifier we did not write accepts what we sign (with the current time).
    #[test]
    fn the_reference_verifier_accepts_our_signature() {
        let text = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let secret = Secret::parse(text).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let body = br#"{"type":"recording.started","timestamp":"x","data":{}}"#;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        headers.insert(
            "webhook-signature",
            secret.sign("msg_1", now, body).parse().unwrap(),
        );
        let verifier = standardwebhooks::Webhook::new(text).unwrap();
        verifier.verify(body, &headers).unwrap();
        assert!(verifier.verify(b"{}", &headers).is_err());
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert_eq!(
            Secret::parse("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap_err(),
            SecretError::Prefix
        );
        assert_eq!(
            Secret::parse("whsec_not base64!").unwrap_err(),
            SecretError::Base64
        );
        assert_eq!(
            Secret::parse("whsec_c2hvcnQ=").unwrap_err(),
            SecretError::TooShort(5)
        );
        assert!(!format!(
            "{:?}",
            Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
        )
        .contains("C2FV"));
    }
}
