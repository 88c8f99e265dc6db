//! Hostile peers (issue 17, items 1 and 5): a remote that lists hundreds of ICE candidates
//! must not turn recbot into a UDP reflector, and a session that never connects must not fill
//! the log. Everything stays on loopback: the "victims" are UDP sockets of this test, and the
//! datagrams recbot's connectivity checks send them are counted.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde_json::json;
use std::io::BufRead;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use webrtc::peer_connection::PeerConnectionEventHandler;

/// The per-connection cap of remote candidates the README promises (`MAX_REMOTE_CANDIDATES`).
const CAP: usize = 20;
/// Target ports a hostile remote names (well above the cap, bounded for the test machine).
const TARGETS: usize = 100;
/// How long the checks toward the targets are watched: every pair gets all its checks within
/// `ICE_MAX_BINDING_REQUESTS` check intervals (about 1 s).
const WINDOW: Duration = Duration::from_secs(4);

/// UDP sockets on loopback that count the datagrams they receive.
struct Targets {
    ports: Vec<u16>,
    counts: Arc<Vec<AtomicU64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Targets {
    async fn bind(n: usize) -> Self {
        let counts: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let mut ports = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            ports.push(socket.local_addr().unwrap().port());
            let counts = Arc::clone(&counts);
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                while socket.recv_from(&mut buf).await.is_ok() {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        Self {
            ports,
            counts,
            tasks,
        }
    }

    /// Indexes of the targets that received at least one datagram.
    fn hit(&self) -> Vec<usize> {
        (0..self.ports.len())
            .filter(|&i| self.counts[i].load(Ordering::Relaxed) > 0)
            .collect()
    }

    fn datagrams(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// How many datagrams each target that was hit received.
    fn per_hit(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .filter(|&n| n > 0)
            .collect()
    }

    /// A host candidate line (without `a=`) naming target `i`.
    fn candidate(&self, i: usize) -> String {
        format!(
            "candidate:{i} 1 udp 2130706431 127.0.0.1 {} typ host",
            self.ports[i]
        )
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Quiet;
impl PeerConnectionEventHandler for Quiet {}

/// A genuine audio+video offer (webrtc-rs's own, ICE credentials and fingerprint included)
/// whose candidates are replaced by `candidates` (lines without `a=`), put at the end of the
/// first media section.
async fn offer_with(candidates: &[String]) -> String {
    let pc = factory().build(Arc::new(Quiet)).await.unwrap();
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        pc.add_transceiver_from_kind(
            kind,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    }
    let offer = pc.create_offer(None).await.unwrap();
    let _ = pc.close().await;
    let mut out = String::new();
    let mut sections = 0;
    let mut inserted = false;
    let insert = |out: &mut String| {
        for c in candidates {
            out.push_str("a=");
            out.push_str(c);
            out.push_str("\r\n");
        }
    };
    for line in offer.sdp.lines() {
        if line.starts_with("a=candidate:") || line.starts_with("a=end-of-candidates") {
            continue;
        }
        if line.starts_with("m=") {
            sections += 1;
            if sections == 2 && !inserted {
                insert(&mut out);
                inserted = true;
            }
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    if !inserted {
        insert(&mut out);
    }
    out
}

async fn post_whip(base: &str, path: &str, sdp: String) -> (u16, String, Option<String>) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/sdp")
        .body(sdp)
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, response.text().await.unwrap_or_default(), location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_offer_listing_100_candidates_gets_checks_to_at_most_20() {
    let _heavy = heavy().await;
    let srv = TestServer::start().await;
    let targets = Targets::bind(TARGETS).await;
    let candidates: Vec<String> = (0..TARGETS).map(|i| targets.candidate(i)).collect();
    let (status, body, location) =
        post_whip(&srv.base, "/rooms/r/whip", offer_with(&candidates).await).await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(WINDOW).await;
    let hit = targets.hit();
    eprintln!(
        "WHIP offer with {TARGETS} candidates: {} datagrams to {} ports in {WINDOW:?}",
        targets.datagrams(),
        hit.len()
    );
    assert!(
        hit.len() <= CAP,
        "{} of {TARGETS} target ports were sent checks: {hit:?}",
        hit.len()
    );
    // Each target that never answers gets exactly the checks one pair is allowed (the test
    // server has one local candidate, on 127.0.0.1): recbot's setting, not webrtc-rs's
    // default of 8, and never more however fast they are paced.
    let allowed = u64::from(recbot::peer::ICE_MAX_BINDING_REQUESTS) + 1;
    assert!(
        targets.per_hit().iter().all(|&n| n == allowed),
        "datagrams per target {:?}, expected {allowed} each",
        targets.per_hit()
    );
    // The candidates kept are the first ones listed, and they are checked.
    assert!(!hit.is_empty(), "no connectivity check was sent at all");
    assert!(hit.iter().all(|&i| i < CAP), "{hit:?}");
    if let Some(location) = location {
        let _ = srv.http.delete(srv.url(&location)).send().await;
    }
    srv.shutdown().await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("stream open")
            .expect("frame");
        if let Message::Text(t) = frame {
            return serde_json::from_str(t.as_str()).expect("server sends JSON");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_in_the_offer_and_trickled_to_an_echo_bot_share_one_cap() {
    let _heavy = heavy().await;
    let srv = TestServer::start().await;
    let (status, bot) = srv
        .post_json("/api/bots", json!({"room": "reflect", "mode": "echo"}))
        .await;
    assert_eq!(status, 201, "{bot}");
    let bot_peer = bot["bot_peer"].as_str().expect("bot_peer").to_owned();
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url("/rooms/reflect/ws?name=evil"))
        .await
        .expect("connects");
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");

    let targets = Targets::bind(TARGETS).await;
    // 10 candidates in the offer, then 90 trickled.
    const IN_SDP: usize = 10;
    let in_sdp: Vec<String> = (0..IN_SDP).map(|i| targets.candidate(i)).collect();
    let offer = json!({"type": "offer", "to": bot_peer, "sdp": offer_with(&in_sdp).await});
    ws.send(Message::text(offer.to_string())).await.unwrap();
    loop {
        let message = next_json(&mut ws).await;
        assert_ne!(message["type"], "error", "{message}");
        if message["type"] == "answer" {
            break;
        }
    }
    for i in IN_SDP..TARGETS {
        let candidate = json!({"type": "candidate", "to": bot_peer, "candidate": {
            "candidate": targets.candidate(i), "sdpMid": "0", "sdpMLineIndex": 0}});
        ws.send(Message::text(candidate.to_string())).await.unwrap();
    }
    let deadline = Instant::now() + WINDOW;
    while Instant::now() < deadline {
        // Keep reading (pings, the bot's candidates) so the socket stays healthy.
        let _ = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
    }
    let hit = targets.hit();
    eprintln!(
        "echo bot, {IN_SDP} candidates in the offer + {} trickled: {} datagrams to {} ports in {WINDOW:?}",
        TARGETS - IN_SDP,
        targets.datagrams(),
        hit.len()
    );
    assert!(
        hit.len() <= CAP,
        "{} of {TARGETS} target ports were sent checks: {hit:?}",
        hit.len()
    );
    // The offer's candidates were accepted and count toward the cap.
    assert!((0..IN_SDP).all(|i| hit.contains(&i)), "{hit:?}");
    let _ = ws.close(None).await;
    srv.shutdown().await;
}

/// The real binary, default log settings, stderr collected line by line.
struct Binary {
    child: Child,
    base: String,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Binary {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = Command::new(env!("CARGO_BIN_EXE_recbot"));
        command
            .arg("serve")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--recordings-dir")
            .arg(dir.path())
            .arg("--udp-bind")
            .arg("127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The default filter: no RECBOT_* setting and no RUST_LOG from the environment.
        for (key, _) in std::env::vars() {
            if key.starts_with("RECBOT_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        let mut child = command.spawn().expect("recbot starts");
        let stderr = child.stderr.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            base: format!("http://{listen}"),
            lines,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_for(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.lines().iter().any(|l| l.contains(needle)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_session_that_never_connects_logs_a_few_lines_at_the_default_level() {
    let _heavy = heavy().await;
    let bin = Binary::start();
    assert!(
        bin.wait_for("listening", Duration::from_secs(20)).await,
        "{:?}",
        bin.lines()
    );
    let before = bin.lines().len();
    // An offer without a single candidate: recbot has nothing to check, ever.
    let (status, body, location) =
        post_whip(&bin.base, "/rooms/dead/whip", offer_with(&[]).await).await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    if let Some(location) = location {
        let r = reqwest::Client::new()
            .delete(format!("{}{location}", bin.base))
            .send()
            .await
            .expect("DELETE");
        assert_eq!(r.status().as_u16(), 200);
    }
    assert!(
        bin.wait_for("WHIP session ended", Duration::from_secs(5))
            .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = bin.lines();
    let session: Vec<&String> = lines[before..].iter().collect();
    eprintln!("{} lines for one dead WHIP session", session.len());
    // peer joined, WHIP session started, WHIP session ended, peer left, and one DTLS setup
    // warning of webrtc-rs: a handful, however long the session stayed dead (it was 30 lines
    // more for these 6 s: one ICE agent warning every 200 ms).
    assert!(session.len() <= 6, "{} lines: {session:#?}", session.len());
    assert!(
        !session.iter().any(|l| l.contains("pingAllCandidates")),
        "{session:#?}"
    );
}
