//! Delivery to one URL: POST each waiting event, signed, and retry with backoff.
//!
//! A 2xx is success; any other status, a timeout ([`TIMEOUT`]) or a connection error is
//! retried after [`retry_delay`] (first retry after the configured delay, at most 5 s, then
//! doubling up to [`MAX_BACKOFF`]), until [`GIVE_UP_AFTER`] from the event's emission, when it
//! is dropped (logged and counted). A `410 Gone` stops delivery to that URL until restart and
//! drops its waiting events. Up to [`MAX_IN_FLIGHT`] events are sent at once, never two of the
//! same order key.

use super::{now_ms, Inner, Target};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest wait for a receiver's answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest delay between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// An event not delivered this long after it was emitted is given up.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Events sent to one URL at once.
pub const MAX_IN_FLIGHT: usize = 4;

/// The delay before the next attempt after `attempts` failed ones (≥ 1) of an event emitted
/// `age` ago, or `None` once it is to be given up.
pub fn retry_delay(attempts: u32, age: Duration, first: Duration) -> Option<Duration> {
    if age >= GIVE_UP_AFTER {
        return None;
    }
    let doublings = attempts.saturating_sub(1).min(20);
    Some(first.saturating_mul(1 << doublings).min(MAX_BACKOFF))
}

/// The HTTP client of the delivery tasks: [`TIMEOUT`] per request, no redirects (a receiver
/// that moved answers 3xx, which is retried and logged).
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("recbot/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// How one attempt went.
#[derive(Debug)]
enum Outcome {
    /// 2xx (or the event's file is already gone).
    Delivered,
    /// 410: the receiver wants no more events.
    Gone,
    /// Anything else; why.
    Failed(String),
}

async fn attempt(
    client: reqwest::Client,
    inner: Arc<Inner>,
    target: Arc<Target>,
    seq: u64,
) -> Outcome {
    let event = match target.outbox.read(seq).await {
        Ok(event) => event,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::Delivered,
        Err(e) => return Outcome::Failed(format!("outbox read: {e}")),
    };
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = inner
        .secret
        .sign(&event.id, timestamp, event.body.as_bytes());
    let sent = client
        .post(target.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &event.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(event.body)
        .send()
        .await;
    match sent {
        Ok(reply) if reply.status().is_success() => Outcome::Delivered,
        Ok(reply) if reply.status() == reqwest::StatusCode::GONE => Outcome::Gone,
        Ok(reply) => Outcome::Failed(format!("HTTP {}", reply.status().as_u16())),
        Err(e) if e.is_timeout() => Outcome::Failed("no answer within 10 s".into()),
        Err(e) if e.is_connect() => Outcome::Failed("connection failed".into()),
        Err(e) => Outcome::Failed(e.without_url().to_string()),
    }
}

/// Delivers `target`'s events until `shutdown` (or a 410).
pub(super) async fn run(
    inner: Arc<Inner>,
    target: Arc<Target>,
    client: reqwest::Client,
    shutdown: CancellationToken,
) {
    let mut flights = tokio::task::JoinSet::new();
    let mut seqs = std::collections::HashMap::new();
    loop {
        let (ready, wake) = target
            .queue()
            .pick(Instant::now(), MAX_IN_FLIGHT - flights.len());
        for seq in ready {
            let handle = flights.spawn(attempt(
                client.clone(),
                Arc::clone(&inner),
                Arc::clone(&target),
                seq,
            ));
            seqs.insert(handle.id(), seq);
        }
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(joined) = flights.join_next_with_id(), if !flights.is_empty() => {
                let (id, outcome) = match joined {
                    Ok((id, outcome)) => (id, outcome),
                    Err(e) => (e.id(), Outcome::Failed(format!("delivery task: {e}"))),
                };
                let Some(seq) = seqs.remove(&id) else { continue };
                if !settle(&inner, &target, seq, outcome) {
                    return;
                }
            }
            _ = target.wake.notified() => {}
            _ = sleep => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Applies an attempt's outcome; false when the URL is gone.
fn settle(inner: &Inner, target: &Target, seq: u64, outcome: Outcome) -> bool {
    match outcome {
        Outcome::Delivered => {
            forget(inner, target, seq);
            metrics::counter!(crate::telemetry::WEBHOOK_DELIVERED).increment(1);
            true
        }
        Outcome::Gone => {
            target.gone.store(true, Ordering::Relaxed);
            let dropped: Vec<u64> = target.queue().entries.keys().copied().collect();
            tracing::warn!(url = %target.label, dropped = dropped.len(),
                "the receiver answered 410 Gone: no more events to it until restart");
            for seq in dropped {
                forget(inner, target, seq);
            }
            false
        }
        Outcome::Failed(reason) => {
            metrics::counter!(crate::telemetry::WEBHOOK_FAILED_ATTEMPTS).increment(1);
            let mut queue = target.queue();
            let Some(entry) = queue.entries.get_mut(&seq) else {
                return true;
            };
            entry.in_flight = false;
            entry.attempts = entry.attempts.saturating_add(1);
            let age_ms = u64::try_from(now_ms().saturating_sub(entry.created_ms)).unwrap_or(0);
            let attempts = entry.attempts;
            match retry_delay(attempts, Duration::from_millis(age_ms), inner.first_retry) {
                Some(delay) => {
                    entry.next_at = Some(Instant::now() + delay);
                    drop(queue);
                    tracing::warn!(url = %target.label, seq, attempts, %reason,
                        retry_in_s = delay.as_secs_f64(), "webhook delivery failed");
                }
                None => {
                    drop(queue);
                    tracing::error!(url = %target.label, seq, attempts, %reason,
                        "webhook event given up: not delivered within 24 h");
                    metrics::counter!(crate::telemetry::WEBHOOK_GIVEN_UP).increment(1);
                    forget(inner, target, seq);
                }
            }
            true
        }
    }
}

/// Removes event `seq` from the outbox and the queue.
fn forget(inner: &Inner, target: &Target, seq: u64) {
    if let Err(e) = target.outbox.remove(seq) {
        // It would be sent again after a restart: at least once still holds.
        tracing::error!(url = %target.label, seq, error = %e, "delivered event file not removed");
    }
    if target.queue().entries.remove(&seq).is_some() {
        inner.add_pending(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_within_5_s_doubles_to_10_min_and_ends_after_24_h() {
        let first = Duration::from_secs(5);
        let hour = Duration::from_secs(3600);
        let delays: Vec<u64> = (1..=10)
            .map(|n| retry_delay(n, hour, first).unwrap().as_secs())
            .collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
        assert_eq!(retry_delay(u32::MAX, hour, first), Some(MAX_BACKOFF));
        assert_eq!(retry_delay(3, GIVE_UP_AFTER, first), None);
        assert!(retry_delay(3, GIVE_UP_AFTER - Duration::from_secs(1), first).is_some());
        // The schedule reaches 24 h in about 150 attempts, not a tight loop.
        let mut elapsed = Duration::ZERO;
        let mut attempts = 0;
        while let Some(d) = retry_delay(attempts + 1, elapsed, first) {
            elapsed += d;
            attempts += 1;
        }
        assert!((140..=155).contains(&attempts), "{attempts}");
    }
}
