//! SPEC §11 over real loopback peers: chat over DataChannels into `chat.jsonl`, pause/resume
//! cutting the paused span out of every file, and the consent notice.

mod common;

use common::*;
use recbot::peer::negotiation::Role;
use recbot::peer::room::Behaviour;
use recbot::peer::{Pc, PeerError};
use recbot::record::chat::{read_chat, CHANNEL_LABEL};
use recbot::record::webm_reader::read_webm;
use recbot::signal::protocol::PeerInfo;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

/// A test peer toward bots: opens a `chat` DataChannel in its offers (or takes the one the
/// bot opens), receives audio, and counts the audio packets it gets.
#[derive(Default)]
struct Listener {
    channel: Mutex<Option<Arc<dyn DataChannel>>>,
    open: Arc<AtomicBool>,
    audio_packets: Arc<AtomicU64>,
}

impl Listener {
    fn keep(&self, channel: Arc<dyn DataChannel>) {
        *self.channel.lock().unwrap() = Some(Arc::clone(&channel));
        let open = Arc::clone(&self.open);
        tokio::spawn(async move {
            while let Some(event) = channel.poll().await {
                if matches!(event, DataChannelEvent::OnOpen) {
                    open.store(true, Ordering::Relaxed);
                }
            }
        });
    }

    async fn send(&self, text: &str) {
        let channel = self
            .channel
            .lock()
            .unwrap()
            .clone()
            .expect("a chat channel");
        channel.send_text(text).await.expect("sent");
    }
}

#[async_trait::async_trait]
impl Behaviour for Listener {
    fn wants(&self, peer: &PeerInfo) -> bool {
        peer.bot
    }

    async fn setup(&self, _peer: &PeerInfo, pc: &Pc, role: Role) -> Result<(), PeerError> {
        if role == Role::Offerer {
            pc.add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await?;
            self.keep(pc.create_data_channel(CHANNEL_LABEL, None).await?);
        }
        Ok(())
    }

    async fn on_track(&self, _peer: &PeerInfo, track: Arc<dyn TrackRemote>) {
        while let Some(event) = track.poll().await {
            if let TrackRemoteEvent::OnRtpPacket(_) = event {
                self.audio_packets.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn on_data_channel(&self, _peer: &PeerInfo, channel: Arc<dyn DataChannel>) {
        self.keep(channel);
    }
}

async fn join(srv: &TestServer, room: &str, name: &str) -> (Arc<Listener>, String) {
    let listener = Arc::new(Listener::default());
    let url = srv.ws_url(&format!("/rooms/{room}/ws?name={name}"));
    let connection = recbot::client::connect_room(&url, name, factory(), listener.clone())
        .await
        .expect("joins");
    (listener, connection.id)
}

async fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Chat from a webrtc-rs peer, over the channel it opened in its offer and over the one the
/// recorder opened in its offer: exact text (non-ASCII, quotes, newlines), `t_ms` on the
/// recording's clock (close to the send time, pauses cut out, monotonic), and bad messages
/// (oversize, not JSON, not a text object) dropped and counted, never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_lines_carry_recorded_time_and_exact_text() {
    let srv = TestServer::start().await;
    // Present at the start: the recorder offers and opens the channel.
    let (early, early_id) = join(&srv, "chat", "früh").await;
    let before = Instant::now();
    let (status, rec) = srv
        .post_json("/api/recordings", json!({"room": "chat"}))
        .await;
    let after = Instant::now();
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_owned();
    // Joins later: it offers and opens the channel.
    let (late, late_id) = join(&srv, "chat", "late").await;
    until("both channels open", Duration::from_secs(15), || {
        early.open.load(Ordering::Relaxed) && late.open.load(Ordering::Relaxed)
    })
    .await;

    // (who, text, sent at); the expected window of t_ms is from the send time.
    let mut sent: Vec<(&str, String, Instant)> = Vec::new();
    let texts = [
        "hello",
        "héllo wörld ✓ 日本語 🎉",
        "a \"quote\", a \\ and\na newline",
    ];
    for (i, text) in texts.iter().enumerate() {
        let (who, peer) = if i % 2 == 0 {
            (&early_id, &early)
        } else {
            (&late_id, &late)
        };
        let at = Instant::now();
        peer.send(&json!({ "text": text }).to_string()).await;
        sent.push((who, (*text).to_owned(), at));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Dropped: over 4 KiB, not JSON, not a text object.
    late.send(&json!({ "text": "x".repeat(5000) }).to_string())
        .await;
    late.send("not json at all").await;
    early.send(r#"{"text": 5}"#).await;
    // Paused: not written (dropped too); after the resume, t_ms skips the pause.
    let (status, doc) = srv
        .post_json(&format!("/api/recordings/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, 200, "{doc}");
    let paused_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    early.send(r#"{"text": "while paused"}"#).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let resumed_at = Instant::now();
    let (status, doc) = srv
        .post_json(&format!("/api/recordings/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 200, "{doc}");
    let at = Instant::now();
    late.send(r#"{"text": "after the pause"}"#).await;
    sent.push((&late_id, "after the pause".into(), at));

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = srv.get_json(&format!("/api/recordings/{id}")).await.1;
        if doc["chat_messages"] == 4 && doc["chat_dropped"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "messages not all handled: {doc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, doc) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), json!({}))
        .await;
    assert_eq!(status, 200);
    let paused_ms = doc["paused_ms"].as_u64().unwrap();
    assert!(
        paused_ms as f64 >= 900.0
            && paused_ms as f64 <= (resumed_at - paused_at).as_millis() as f64 + 500.0,
        "{doc}"
    );
    let file = doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "chat.jsonl")
        .unwrap_or_else(|| panic!("chat.jsonl listed: {doc}"));
    let response = reqwest::get(srv.url(file["url"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        recbot::record::chat::CONTENT_TYPE
    );
    let body = response.bytes().await.unwrap();
    let path = srv.dir.path().join(&id).join("chat.jsonl");
    assert_eq!(body, std::fs::read(&path).unwrap());
    assert_eq!(file["bytes"].as_u64(), Some(body.len() as u64));

    let lines = read_chat(&path).unwrap();
    assert_eq!(lines.len(), sent.len(), "{lines:#?}");
    let mut last = i64::MIN;
    for (line, (who, text, at)) in lines.iter().zip(&sent) {
        assert_eq!(&line.text, text);
        assert_eq!(&line.from, *who);
        assert_eq!(line.name, if *who == early_id { "früh" } else { "late" });
        assert!(line.t_ms >= last, "monotonic: {lines:#?}");
        last = line.t_ms;
        // The recording's zero lies between `before` and `after`; a message after the pause
        // is placed on recorded time (the pause cut out).
        let cut = if *at > resumed_at {
            paused_ms as i64
        } else {
            0
        };
        let earliest = at.saturating_duration_since(after).as_millis() as i64 - cut;
        let latest = at.duration_since(before).as_millis() as i64 - cut + 500;
        assert!(
            (earliest - 5..=latest).contains(&line.t_ms),
            "{text:?}: t_ms {} not in {earliest}..={latest}",
            line.t_ms
        );
    }
    assert!(!std::fs::read_to_string(&path)
        .unwrap()
        .contains("while paused"));
    srv.shutdown().await;
}

/// Record, pause 2 s, resume, stop: `paused_ms` ≈ 2000, every file as long as the recorded
/// time (no 2 s gap), audio and video of the participant still together; the API refuses what
/// it must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_cuts_the_span_out_of_every_file() {
    let srv = TestServer::start().await;
    let alice = recbot::client::start(
        &srv.base,
        "pause",
        "alice",
        clip(),
        factory(),
        Default::default(),
    )
    .await
    .expect("alice joins");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, rec) = srv
        .post_json("/api/recordings", json!({"room": "pause"}))
        .await;
    let created = Instant::now();
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_owned();
    let path = |action: &str| format!("/api/recordings/{id}/{action}");

    let (status, body) = srv.post_json(&path("resume"), json!({})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("not-paused"))
    );
    let (status, _) = srv
        .post_json("/api/recordings/20990101-000000-000000/pause", json!({}))
        .await;
    assert_eq!(status, 404);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, doc) = srv.post_json(&path("pause"), json!({})).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(
        (doc["state"].as_str(), doc["paused"].as_bool()),
        (Some("recording"), Some(true))
    );
    // Idempotent.
    let (status, _) = srv.post_json(&path("pause"), json!({})).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Nothing written while paused (what arrived before the pause was flushed by now).
    let bytes = |doc: &serde_json::Value| -> Vec<u64> {
        doc["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["frames"].as_u64().unwrap())
            .collect()
    };
    let during = bytes(&srv.get_json(&format!("/api/recordings/{id}")).await.1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, doc) = srv.post_json(&path("resume"), json!({})).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(bytes(&doc), during, "frames written while paused");
    assert_eq!(doc["paused"], false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, doc) = srv.post_json(&path("stop"), json!({})).await;
    let stop_wall = created.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(status, 200);
    let (status, body) = srv.post_json(&path("pause"), json!({})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("not-recording"))
    );
    let (status, _) = srv.post_json(&path("resume"), json!({})).await;
    assert_eq!(status, 409);
    alice.leave().await;

    let paused_ms = doc["paused_ms"].as_u64().unwrap() as f64;
    assert!((1900.0..=2800.0).contains(&paused_ms), "{doc}");
    let tracks = doc["tracks"].as_array().unwrap();
    assert_eq!(tracks.len(), 2, "{doc}");
    let recorded_stop = stop_wall - paused_ms;
    let mut ends = Vec::new();
    let mut starts = Vec::new();
    for t in tracks {
        let start = t["start_offset_ms"].as_f64().unwrap();
        let duration = t["duration_ms"].as_f64().unwrap();
        let end = start + duration;
        // Recorded time only: the track ends at the stop on the recorded clock (the stop
        // request's round trip is the slack), not 2 s later.
        assert!(
            end <= recorded_stop + 50.0 && end >= recorded_stop - 600.0,
            "{t}: ends at {end}, recorded stop {recorded_stop}"
        );
        ends.push(end);
        starts.push(start);
        let file = srv.dir.path().join(&id).join(t["file"].as_str().unwrap());
        if tool_available("ffprobe") {
            let probed = ffprobe_duration(&file).expect("ffprobe reads it") * 1000.0;
            assert!(
                (probed - duration).abs() < 100.0,
                "{t}: ffprobe says {probed} ms"
            );
        }
        if t["kind"] == "video" {
            let info = read_webm(std::fs::File::open(&file).unwrap()).unwrap();
            let gap = info
                .blocks
                .windows(2)
                .map(|w| w[1].ts_ms - w[0].ts_ms)
                .max()
                .unwrap();
            assert!(gap < 400, "a {gap} ms gap in the video");
            assert!(
                t["keyframes"].as_u64().unwrap() >= 2,
                "{t}: a keyframe after the resume"
            );
        }
    }
    assert!((ends[0] - ends[1]).abs() < 150.0, "ends {ends:?}");
    assert!((starts[0] - starts[1]).abs() < 150.0, "starts {starts:?}");
    srv.shutdown().await;
}

/// `notice: true`: a listener present at the start and one that joins later each receive the
/// notice (about the clip's packet count); the recording has no track of the recorder.
/// Without `notice`, the recorder sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notice_reaches_present_and_later_participants() {
    let srv = TestServer::start().await;
    let clip_packets = recbot::bot::recorder::notice_clip(None).unwrap().len() as u64;
    let (present, _) = join(&srv, "notice", "present").await;
    let (status, rec) = srv
        .post_json("/api/recordings", json!({"room": "notice", "notice": true}))
        .await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_owned();
    let (silent, _) = join(&srv, "quiet", "silent").await;
    let (status, _) = srv
        .post_json("/api/recordings", json!({"room": "quiet"}))
        .await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (later, _) = join(&srv, "notice", "later").await;
    let enough = clip_packets * 9 / 10;
    until("the notice at both", Duration::from_secs(12), || {
        present.audio_packets.load(Ordering::Relaxed) >= enough
            && later.audio_packets.load(Ordering::Relaxed) >= enough
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for listener in [&present, &later] {
        let got = listener.audio_packets.load(Ordering::Relaxed);
        assert!(got <= clip_packets + 2, "{got} packets of {clip_packets}");
    }
    assert_eq!(silent.audio_packets.load(Ordering::Relaxed), 0);
    let (_, doc) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), json!({}))
        .await;
    let bot = doc["bot_peer"].as_str().unwrap();
    assert!(
        doc["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["participant"] != bot),
        "{doc}"
    );
    srv.shutdown().await;
}
