//! Metrics in Prometheus text format (`GET /metrics`), through the `metrics` facade and
//! `metrics-exporter-prometheus`.
//!
//! Counters are fed in batches (a track task adds its figures when it flushes, about once a
//! second, and when it ends), so the packet path does no metrics work. Gauges are set when
//! `/metrics` is scraped. The recorder is process-wide: several servers in one process (tests)
//! share it.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Rooms with at least one peer (gauge).
pub const ROOMS: &str = "recbot_rooms";
/// Peers in all rooms (gauge).
pub const PEERS: &str = "recbot_peers";
/// Open signaling WebSocket connections (gauge).
pub const WS_CONNECTIONS: &str = "recbot_ws_connections";
/// Recordings in progress (gauge).
pub const RECORDINGS_ACTIVE: &str = "recbot_recordings_active";
/// WHIP sessions (gauge).
pub const WHIP_SESSIONS: &str = "recbot_whip_sessions";
/// Live tokio tasks of the process (gauge).
pub const TASKS: &str = "recbot_tokio_tasks";
/// Recordings started (counter).
pub const RECORDINGS_STARTED: &str = "recbot_recordings_started_total";
/// Bytes written to recording files (counter).
pub const BYTES_WRITTEN: &str = "recbot_bytes_written_total";
/// RTP packets received by recordings (counter).
pub const RTP_PACKETS: &str = "recbot_rtp_packets_total";
/// RTP packets never recovered (counter).
pub const RTP_LOST: &str = "recbot_rtp_packets_lost_total";
/// Frames and packets written (counter).
pub const FRAMES_WRITTEN: &str = "recbot_frames_written_total";
/// Keyframes written (counter).
pub const KEYFRAMES: &str = "recbot_keyframes_total";
/// PLIs sent (counter).
pub const PLIS: &str = "recbot_plis_sent_total";
/// Write errors of recording files (counter).
pub const WRITE_ERRORS: &str = "recbot_write_errors_total";
/// Chat messages written to `chat.jsonl` files (counter).
pub const CHAT_MESSAGES: &str = "recbot_chat_messages_total";
/// Chat messages not written: over 4 KiB, not `{"text": string}`, or sent while paused.
pub const CHAT_DROPPED: &str = "recbot_chat_dropped_total";
/// Time to finalize a recording on stop, seconds (histogram).
pub const FINALIZE_SECONDS: &str = "recbot_finalize_seconds";

/// Files and manifests waiting for their upload to object storage (gauge).
pub const UPLOADS_PENDING: &str = "recbot_uploads_pending";
/// Age of the oldest upload waiting, seconds (gauge).
pub const UPLOAD_OLDEST_PENDING: &str = "recbot_upload_oldest_pending_seconds";
/// Bytes confirmed by object storage (counter).
pub const UPLOAD_BYTES: &str = "recbot_upload_bytes_total";
/// Failed upload attempts (counter; each is retried).
pub const UPLOAD_ERRORS: &str = "recbot_upload_errors_total";
/// Webhook events waiting for delivery, all URLs (gauge).
pub const WEBHOOK_PENDING: &str = "recbot_webhook_events_pending";
/// Webhook events delivered (2xx) (counter).
pub const WEBHOOK_DELIVERED: &str = "recbot_webhook_events_delivered_total";
/// Webhook delivery attempts that failed (non-2xx, timeout, connection) (counter).
pub const WEBHOOK_FAILED_ATTEMPTS: &str = "recbot_webhook_failed_attempts_total";
/// Webhook events given up after 24 h of failures (counter).
pub const WEBHOOK_GIVEN_UP: &str = "recbot_webhook_events_given_up_total";
/// Webhook events dropped: outbox full or not storable (counter).
pub const WEBHOOK_DROPPED: &str = "recbot_webhook_events_dropped_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle, or `None` if another
/// recorder was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(ROOMS, "Rooms with at least one peer.");
    describe_gauge!(PEERS, "Peers in all rooms.");
    describe_gauge!(WS_CONNECTIONS, "Open signaling WebSocket connections.");
    describe_gauge!(RECORDINGS_ACTIVE, "Recordings in progress.");
    describe_gauge!(WHIP_SESSIONS, "WHIP publishers connected.");
    describe_gauge!(TASKS, "Live tokio tasks of the process.");
    describe_counter!(RECORDINGS_STARTED, "Recordings started.");
    describe_counter!(CHAT_MESSAGES, "Chat messages written to chat.jsonl.");
    describe_counter!(
        CHAT_DROPPED,
        "Chat messages dropped: over 4 KiB, not {\"text\": string}, or sent while paused."
    );
    describe_counter!(
        BYTES_WRITTEN,
        Unit::Bytes,
        "Bytes written to recording files."
    );
    describe_counter!(RTP_PACKETS, "RTP packets received by recordings.");
    describe_counter!(RTP_LOST, "RTP packets never recovered.");
    describe_counter!(FRAMES_WRITTEN, "Video frames and audio packets written.");
    describe_counter!(KEYFRAMES, "Video keyframes written.");
    describe_counter!(PLIS, "Picture loss indications sent.");
    describe_counter!(WRITE_ERRORS, "Failed writes to recording files.");
    describe_gauge!(
        UPLOADS_PENDING,
        "Files and manifests waiting for their upload to object storage."
    );
    describe_gauge!(
        UPLOAD_OLDEST_PENDING,
        Unit::Seconds,
        "Age of the oldest upload waiting."
    );
    describe_counter!(
        UPLOAD_BYTES,
        Unit::Bytes,
        "Bytes uploaded to object storage and confirmed."
    );
    describe_counter!(UPLOAD_ERRORS, "Failed upload attempts (each is retried).");
    describe_gauge!(WEBHOOK_PENDING, "Webhook events waiting for delivery.");
    describe_counter!(WEBHOOK_DELIVERED, "Webhook events delivered (2xx).");
    describe_counter!(
        WEBHOOK_FAILED_ATTEMPTS,
        "Webhook delivery attempts that failed (retried)."
    );
    describe_counter!(
        WEBHOOK_GIVEN_UP,
        "Webhook events given up after 24 h of failed attempts."
    );
    describe_counter!(
        WEBHOOK_DROPPED,
        "Webhook events dropped (outbox full or not storable)."
    );
    describe_histogram!(
        FINALIZE_SECONDS,
        Unit::Seconds,
        "Time to finalize a stopped recording."
    );
}
