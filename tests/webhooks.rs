//! Webhooks (SPEC §8) end to end: a real HTTP receiver on 127.0.0.1 that checks every
//! delivery with the `standardwebhooks` crate's verifier (not ours) and answers as each test
//! scripts it. Covered: order per recording with a retried 500 (same webhook-id), 410 stops a
//! URL, a receiver that hangs or is down never holds up a recording and gets its events once
//! it answers, events survive a SIGKILL, bot events, and bad flags refused at startup.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    kind: String,
    data: Value,
    /// What the receiver answered.
    status: u16,
}

/// Decides the status of a request: given the event and how many requests with its
/// webhook-id came before it.
type Script = Arc<dyn Fn(&Delivery, usize) -> u16 + Send + Sync>;

/// A webhook receiver on 127.0.0.1.
struct Receiver {
    url: String,
    log: Arc<Mutex<Vec<Delivery>>>,
    /// Requests wait while this is false.
    open: tokio::sync::watch::Sender<bool>,
    held: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(script: Script) -> Self {
        Self::on("127.0.0.1:0".parse().unwrap(), script).await
    }

    async fn on(addr: SocketAddr, script: Script) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let (open, opened) = tokio::sync::watch::channel(true);
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handler = {
            let log = Arc::clone(&log);
            let held = Arc::clone(&held);
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let log = Arc::clone(&log);
                let script = Arc::clone(&script);
                let mut opened = opened.clone();
                let held = Arc::clone(&held);
                async move {
                    let verifier = standardwebhooks::Webhook::new(SECRET).unwrap();
                    if let Err(e) = verifier.verify(&body, &headers) {
                        panic!("delivery not verified: {e:?}");
                    }
                    assert_eq!(headers["content-type"], "application/json");
                    let doc: Value = serde_json::from_slice(&body).expect("JSON body");
                    assert!(doc["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
                    held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = opened.wait_for(|o| *o).await;
                    held.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    let mut delivery = Delivery {
                        id: headers["webhook-id"].to_str().unwrap().to_owned(),
                        kind: doc["type"].as_str().unwrap().to_owned(),
                        data: doc["data"].clone(),
                        status: 0,
                    };
                    let mut log = log.lock().unwrap();
                    let before = log.iter().filter(|d| d.id == delivery.id).count();
                    delivery.status = script(&delivery, before);
                    log.push(delivery.clone());
                    axum::http::StatusCode::from_u16(delivery.status).unwrap()
                }
            }
        };
        let app = axum::Router::new().route("/hook", axum::routing::post(handler));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            log,
            open,
            held,
            task,
        }
    }

    fn log(&self) -> Vec<Delivery> {
        self.log.lock().unwrap().clone()
    }

    /// The accepted (2xx) deliveries.
    fn accepted(&self) -> Vec<Delivery> {
        self.log()
            .into_iter()
            .filter(|d| (200..300).contains(&d.status))
            .collect()
    }

    /// Waits until `done` holds of the log (at most `limit`).
    async fn until(&self, limit: Duration, done: impl Fn(&[Delivery]) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.log()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "receiver log: {:#?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn ok() -> Script {
    Arc::new(|_, _| 200)
}

/// The accepted deliveries about recording `id`, as (type, state).
fn about(log: &[Delivery], id: &str) -> Vec<(String, String)> {
    log.iter()
        .filter(|d| (200..300).contains(&d.status) && d.data["id"] == id)
        .map(|d| {
            (
                d.kind.clone(),
                d.data["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn server_with(urls: &[&str]) -> TestServer {
    let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
    TestServer::start_with(move |args| {
        args.webhook_url = urls;
        args.webhook_secret = Some(SECRET.into());
        args.webhook_first_retry_ms = 100;
    })
    .await
}

async fn record_and_stop(srv: &TestServer, room: &str) -> String {
    let (status, doc) = srv
        .post_json("/api/recordings", json!({"room": room}))
        .await;
    assert_eq!(status, 201, "{doc}");
    let id = doc["id"].as_str().unwrap().to_owned();
    let (status, doc) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), json!({}))
        .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["state"], "stopped");
    id
}

#[tokio::test]
async fn a_recordings_events_arrive_in_order_and_a_500_is_retried_with_the_same_id() {
    // The first attempt of recording.started fails: recording.stopped, emitted meanwhile,
    // must wait for it.
    let receiver = Receiver::start(Arc::new(|d: &Delivery, before| {
        if d.kind == "recording.started" && before == 0 {
            500
        } else {
            200
        }
    }))
    .await;
    let srv = server_with(&[&receiver.url]).await;
    let id = record_and_stop(&srv, "order").await;
    receiver
        .until(Duration::from_secs(20), |log| about(log, &id).len() == 2)
        .await;
    let log = receiver.log();
    assert_eq!(
        about(&log, &id),
        [
            ("recording.started".to_owned(), "recording".to_owned()),
            ("recording.stopped".to_owned(), "stopped".to_owned())
        ]
    );
    let kinds: Vec<(&str, u16)> = log.iter().map(|d| (d.kind.as_str(), d.status)).collect();
    assert_eq!(
        kinds,
        [
            ("recording.started", 500),
            ("recording.started", 200),
            ("recording.stopped", 200)
        ],
        "stopped never overtakes the retried started"
    );
    assert_eq!(log[0].id, log[1].id, "a retry keeps its webhook-id");
    assert_ne!(log[1].id, log[2].id, "each event has its own webhook-id");
    assert_eq!(log[2].data["stop_reason"], "requested");
    // Delivered events leave the outbox; the figures are in /metrics.
    let events = srv.server.as_ref().unwrap().app.services.events.clone();
    assert_eq!(events.pending(), 0);
    let metrics = srv
        .http
        .get(srv.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "recbot_webhook_events_pending",
        "recbot_webhook_events_delivered_total",
        "recbot_webhook_failed_attempts_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn a_410_stops_delivery_to_that_url_only() {
    let gone = Receiver::start(Arc::new(|_, _| 410)).await;
    let fine = Receiver::start(ok()).await;
    let srv = server_with(&[&gone.url, &fine.url]).await;
    let first = record_and_stop(&srv, "gone-1").await;
    let second = record_and_stop(&srv, "gone-2").await;
    fine.until(Duration::from_secs(20), |log| {
        about(log, &first).len() == 2 && about(log, &second).len() == 2
    })
    .await;
    let events = srv.server.as_ref().unwrap().app.services.events.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events.pending() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events still pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        gone.log().len(),
        1,
        "after its 410 the URL gets nothing more: {:?}",
        gone.log()
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn a_hanging_receiver_never_holds_up_a_recording() {
    let receiver = Receiver::start(ok()).await;
    receiver.open.send_replace(false);
    let srv = server_with(&[&receiver.url]).await;
    let (status, doc) = srv
        .post_json("/api/recordings", json!({"room": "hang"}))
        .await;
    assert_eq!(status, 201, "{doc}");
    let id = doc["id"].as_str().unwrap().to_owned();
    // recording.started is at the receiver, unanswered...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while receiver.held.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and the stop completes all the same, while it is still unanswered.
    let (status, doc) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), json!({}))
        .await;
    assert_eq!((status, doc["state"].as_str()), (200, Some("stopped")));
    assert_eq!(receiver.held.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(receiver.log().is_empty());
    receiver.open.send_replace(true);
    receiver
        .until(Duration::from_secs(20), |log| about(log, &id).len() == 2)
        .await;
    assert_eq!(about(&receiver.log(), &id)[1].0, "recording.stopped");
    srv.shutdown().await;
}

/// A loopback port with nothing listening (just freed).
fn free_port() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_events_once_it_is_up() {
    let addr = free_port();
    let url = format!("http://{addr}/hook");
    let srv = server_with(&[&url]).await;
    let id = record_and_stop(&srv, "down").await;
    let (status, doc) = srv.get_json(&format!("/api/recordings/{id}")).await;
    assert_eq!((status, doc["state"].as_str()), (200, Some("stopped")));
    let events = srv.server.as_ref().unwrap().app.services.events.clone();
    assert_eq!(
        events.pending(),
        2,
        "both events wait while the receiver is down"
    );
    // Let a few attempts fail, then bring the receiver up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let receiver = Receiver::on(addr, ok()).await;
    receiver
        .until(Duration::from_secs(30), |log| about(log, &id).len() == 2)
        .await;
    assert_eq!(about(&receiver.log(), &id)[0].0, "recording.started");
    srv.shutdown().await;
}

#[tokio::test]
async fn bot_events_carry_the_bot() {
    let receiver = Receiver::start(ok()).await;
    let srv = server_with(&[&receiver.url]).await;
    let (status, bot) = srv
        .post_json("/api/bots", json!({"room": "bots", "mode": "echo"}))
        .await;
    assert_eq!(status, 201, "{bot}");
    let id = bot["id"].as_str().unwrap().to_owned();
    let deleted = srv
        .http
        .delete(srv.url(&format!("/api/bots/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    receiver
        .until(Duration::from_secs(20), |log| about(log, &id).len() == 2)
        .await;
    let got = about(&receiver.log(), &id);
    assert_eq!(
        got,
        [
            ("bot.started".to_owned(), "running".to_owned()),
            ("bot.stopped".to_owned(), "stopped".to_owned())
        ]
    );
    srv.shutdown().await;
}

/// A child process killed (SIGKILL) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `recbot serve` sending webhooks to `url`; returns it and its base URL.
fn spawn_server(dir: &Path, url: &str) -> (Guard, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_recbot"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--udp-bind",
            "127.0.0.1",
        ])
        .args(["--log-format", "json", "--log", "info"])
        .args(["--webhook-url", url, "--webhook-first-retry-ms", "100"])
        .env("RECBOT_WEBHOOK_SECRET", SECRET)
        .arg("--recordings-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("recbot starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            assert!(!line.contains("MfKQ9r8G"), "the secret was logged: {line}");
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["fields"]["message"] == "listening" {
                    let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or_default().to_owned());
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server says where it listens");
    (Guard(child), format!("http://{addr}"))
}

#[tokio::test]
async fn events_not_delivered_at_a_sigkill_are_delivered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let url = format!("http://{addr}/hook");
    let (mut child, base) = spawn_server(dir.path(), &url);
    let created: Value = reqwest::Client::new()
        .post(format!("{base}/api/recordings"))
        .json(&json!({"room": "killed"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("a recording").to_owned();
    // Its recording.started is on disk, undeliverable (nothing listens yet).
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.0.kill().expect("SIGKILL");
    let _ = child.0.wait();
    let receiver = Receiver::on(addr, ok()).await;
    let (_child, _base) = spawn_server(dir.path(), &url);
    receiver
        .until(Duration::from_secs(30), |log| about(log, &id).len() == 2)
        .await;
    let got = about(&receiver.log(), &id);
    assert_eq!(got[0], ("recording.started".into(), "recording".into()));
    assert_eq!(got[1], ("recording.failed".into(), "failed".into()));
    let failed = receiver
        .accepted()
        .into_iter()
        .find(|d| d.kind == "recording.failed")
        .unwrap();
    assert_eq!(failed.data["stop_reason"], "interrupted");
}

#[test]
fn bad_webhook_flags_are_refused_at_startup_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (args, secret, flag) in [
        (
            vec!["--webhook-url", "http://127.0.0.1:9/h"],
            None,
            "--webhook-secret",
        ),
        (
            vec!["--webhook-url", "http://127.0.0.1:9/h"],
            Some("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "--webhook-secret",
        ),
        (
            vec!["--webhook-url", "http://127.0.0.1:9/h"],
            Some("whsec_MfKQ9r8G!!"),
            "--webhook-secret",
        ),
        (
            vec!["--webhook-url", "localhost:9/h"],
            Some(SECRET),
            "--webhook-url",
        ),
        (
            vec!["--webhook-url", "http://"],
            Some(SECRET),
            "--webhook-url",
        ),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_recbot"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--recordings-dir")
            .arg(dir.path())
            .args(&args)
            .env_remove("RECBOT_WEBHOOK_SECRET");
        if let Some(secret) = secret {
            command.args(["--webhook-secret", secret]);
        }
        // A refused configuration exits at once; one accepted would serve (killed on drop).
        let mut child = Guard(
            command
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("recbot runs"),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "{args:?} accepted");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{args:?} accepted");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("MfKQ9r8G"),
            "the secret was printed: {stderr}"
        );
    }
}
