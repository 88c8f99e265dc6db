//! Shared helpers of the integration tests: a real server on an ephemeral loopback port,
//! HTTP helpers, and the external checks (ffprobe/ffmpeg) that must fail under CI=true when
//! the tool is missing.
#![allow(dead_code)]

use recbot::client::Clip;
use recbot::config::ServeArgs;
use recbot::peer::{PeerConfig, PeerFactory};
use recbot::server::Server;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// A running server with its own recordings folder.
pub struct TestServer {
    pub server: Option<Server>,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

/// Serializes the media-heavy tests of one test binary: they measure timing, and on a
/// 2-core machine several of them at once would measure each other. Hold the guard for the
/// whole test.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    LOCK.get_or_init(Default::default).lock().await
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RECBOT_TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServeArgs)) -> Self {
        init_logs();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = ServeArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            recordings_dir: dir.path().to_owned(),
            udp_bind: vec![IpAddr::from([127, 0, 0, 1])],
            ..ServeArgs::default()
        };
        tweak(&mut args);
        let config = args.validate().expect("valid config");
        let server = Server::start(config).await.expect("server starts");
        let base = format!("http://{}", server.addr);
        Self {
            server: Some(server),
            base,
            dir,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.base.trim_start_matches("http://"), path)
    }

    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.http.get(self.url(path)).send().await.expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }
}

/// The test clips.
pub fn clip() -> Arc<Clip> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    Clip::load(Some(&data.join("clip.ivf")), Some(&data.join("tone.ogg"))).expect("clips load")
}

/// A factory for test publishers: loopback only.
pub fn factory() -> Arc<PeerFactory> {
    PeerFactory::new(PeerConfig::loopback())
}

/// Whether `tool` can be run; under CI=true a missing tool panics (the check must not be
/// skipped there), elsewhere it is reported and the caller skips its check.
pub fn tool_available(tool: &str) -> bool {
    let ok = Command::new(tool).arg("-version").output().is_ok();
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} is required under CI=true but is not installed");
        }
        eprintln!("skipping the {tool} check: {tool} is not installed");
    }
    ok
}

/// Decodes `path` fully with ffmpeg and asserts it printed no error; a WebM is also checked by
/// `mkvinfo --check-mode`. Returns false when ffmpeg is missing outside CI.
///
/// Video frames reach ffmpeg's null muxer in the file's own time base (`-enc_time_base:v -1`,
/// 1 ms for WebM), so a repeated or backwards timestamp in the file is an error, while frames
/// closer than ffmpeg's guessed frame interval are not: by default ffmpeg rounds them to its
/// guess of the frame rate (from the first frames, e.g. 20 fps), and two real frames 7–38 ms
/// apart (a sender's capture stall) land on one tick and fail "non monotonically increasing dts".
pub fn ffmpeg_decodes_cleanly(path: &Path) -> bool {
    if !tool_available("ffmpeg") {
        return false;
    }
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-enc_time_base:v", "-1", "-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "ffmpeg reported errors for {}: {stderr}",
        path.display()
    );
    if path.extension().is_some_and(|e| e == "webm") && tool_available("mkvinfo") {
        let out = Command::new("mkvinfo")
            .args(["--all", "--check-mode"])
            .arg(path)
            .output()
            .expect("mkvinfo runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("Error") || l.contains("Warning") || l.contains("nknown element")
            })
            .collect();
        assert!(
            out.status.success() && bad.is_empty(),
            "mkvinfo complains about {}: {bad:?}",
            path.display()
        );
    }
    true
}

/// ffprobe's format duration in seconds.
pub fn ffprobe_duration(path: &Path) -> Option<f64> {
    if !tool_available("ffprobe") {
        return None;
    }
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(out.status.success(), "ffprobe failed on {}", path.display());
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Writes `bytes` to a temp file named `name` in `dir` and returns its path.
pub fn save(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

/// Dominant frequency of `samples` (48 kHz) by counting zero crossings.
pub fn zero_crossing_hz(samples: &[f32]) -> f64 {
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    crossings as f64 / 2.0 / (samples.len() as f64 / 48_000.0)
}

/// RMS of `samples`.
pub fn rms(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples
        .iter()
        .map(|s| f64::from(*s) * f64::from(*s))
        .sum::<f64>()
        / samples.len() as f64)
        .sqrt()
}

/// A TCP relay on a free loopback port toward `target`, whose connections a test can cut:
/// both sides are closed at once with no WebSocket close frame, as when a network drops.
pub struct CutProxy {
    pub addr: std::net::SocketAddr,
    links: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let links: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (l, a) = (Arc::clone(&links), Arc::clone(&accepted));
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                l.lock().unwrap().push(link);
            }
        });
        Self {
            addr,
            links,
            accepted,
            accept,
        }
    }

    /// `http://` base URL of the proxy.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every relayed connection now (both sockets dropped); returns how many.
    pub fn cut(&self) -> usize {
        let links: Vec<_> = self.links.lock().unwrap().drain(..).collect();
        for link in &links {
            link.abort();
        }
        links.len()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The webhook secret the tests' receivers verify with.
pub const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A webhook receiver on 127.0.0.1 that accepts (204) every delivery after checking its
/// signature with the `standardwebhooks` crate's verifier (not ours), and keeps the bodies.
pub struct HookReceiver {
    /// Where to point `--webhook-url`.
    pub url: String,
    events: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HookReceiver {
    /// Starts one on an ephemeral loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let events: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Arc::default();
        let kept = Arc::clone(&events);
        let handler = move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let kept = Arc::clone(&kept);
            async move {
                standardwebhooks::Webhook::new(HOOK_SECRET)
                    .unwrap()
                    .verify(&body, &headers)
                    .expect("a delivery signed with the secret");
                let doc: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
                kept.lock().unwrap().push(doc);
                axum::http::StatusCode::NO_CONTENT
            }
        };
        let task = tokio::spawn(async move {
            let app = axum::Router::new().route("/hook", axum::routing::post(handler));
            let _ = axum::serve(listener, app).await;
        });
        Self { url, events, task }
    }

    /// Sets `args` to deliver every event here (first retry after 100 ms).
    pub fn configure(&self, args: &mut ServeArgs) {
        args.webhook_url = vec![self.url.clone()];
        args.webhook_secret = Some(HOOK_SECRET.into());
        args.webhook_first_retry_ms = 100;
    }

    /// The events received so far, in arrival order.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) until `done` holds of the events, and returns them.
    pub async fn until(
        &self,
        limit: std::time::Duration,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "webhook events: {events:#?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
