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

/// Whether `unshare -n` (a network namespace of our own, as root) works here; under CI=true
/// it must.
pub fn netns_available() -> bool {
    let ok = Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("`unshare -n` (root, util-linux) is required under CI=true");
        }
        eprintln!("skipping: `unshare -n` does not work here (not root?)");
    }
    ok
}

/// Runs the ignored test `name` of this test binary inside a fresh network namespace that has
/// only `lo` (`unshare -n`), with its output passed through, and asserts that it passed. The
/// inner test starts with [`netns_setup`]. Returns false (skip) where `unshare -n` is not
/// available outside CI.
pub fn run_in_netns(name: &str) -> bool {
    if !netns_available() {
        return false;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let status = Command::new("unshare")
        .arg("-n")
        .arg(exe)
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RECBOT_IN_NETNS", "1")
        .env(
            "RECBOT_TEST_LOG",
            std::env::var("RECBOT_TEST_LOG").unwrap_or_else(|_| "error".into()),
        )
        .status()
        .expect("unshare runs");
    assert!(status.success(), "{name} failed inside the namespace");
    true
}

/// First step of a test run by [`run_in_netns`]: checks that it runs in such a namespace (only
/// `lo`) and brings `lo` up.
pub fn netns_setup() {
    assert_eq!(
        std::env::var("RECBOT_IN_NETNS").as_deref(),
        Ok("1"),
        "run through run_in_netns, inside `unshare -n`"
    );
    // /proc/net is the calling process's namespace (/sys/class/net is the mount's).
    let dev = std::fs::read_to_string("/proc/net/dev").expect("/proc/net/dev");
    let interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| Some(l.split_once(':')?.0.trim()))
        .collect();
    assert_eq!(interfaces, ["lo"], "a namespace with only lo");
    run_ok("ip", &["link", "set", "lo", "up"]);
}

/// Runs `program args` and asserts that it succeeded.
pub fn run_ok(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bare WebSocket member of a room that only listens: what other peers send it (offers,
/// answers, candidates) is collected for inspection.
pub struct Spy {
    pub id: String,
    pub welcome: serde_json::Value,
    pub messages: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Spy {
    /// Joins over the WebSocket at `url` and collects every message after the `welcome`.
    pub async fn join(url: &str) -> Self {
        use futures::StreamExt;
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("spy connects");
        let (_tx, mut rx) = ws.split();
        let welcome = loop {
            let frame = rx.next().await.expect("welcome").expect("frame");
            if let Ok(text) = frame.into_text() {
                let v: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
                if v["type"] == "welcome" {
                    break v;
                }
            }
        };
        let messages = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        let task = tokio::spawn(async move {
            let _keep = _tx;
            while let Some(Ok(frame)) = rx.next().await {
                if let Ok(text) = frame.into_text() {
                    if let Ok(v) = serde_json::from_str(text.as_str()) {
                        sink.lock().unwrap().push(v);
                    }
                }
            }
        });
        Self {
            id: welcome["id"].as_str().expect("id").to_owned(),
            welcome,
            messages,
            task,
        }
    }

    /// Every candidate line `from` sent: in its offers' and answers' SDP and trickled.
    pub fn candidates_from(&self, from: &str) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.messages.lock().unwrap().iter() {
            if m["from"] != from {
                continue;
            }
            if let Some(sdp) = m["sdp"].as_str() {
                out.extend(
                    sdp.lines()
                        .filter_map(|l| l.strip_prefix("a="))
                        .filter(|l| l.starts_with("candidate:"))
                        .map(str::to_owned),
                );
            }
            if let Some(c) = m["candidate"]["candidate"].as_str() {
                if !c.is_empty() {
                    out.push(c.to_owned());
                }
            }
        }
        out
    }

    /// Whether `from` sent an offer.
    pub fn got_offer_from(&self, from: &str) -> bool {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m["type"] == "offer" && m["from"] == from)
    }
}

impl Drop for Spy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The address field of a candidate line (`candidate:F C T P ADDRESS PORT typ ...`).
pub fn candidate_address(line: &str) -> String {
    line.trim_start_matches("a=")
        .split_whitespace()
        .nth(4)
        .unwrap_or_default()
        .to_owned()
}

/// Polls the recording `id` until `done` holds for its document, or panics after `limit`.
pub async fn wait_recording(
    srv: &TestServer,
    id: &str,
    limit: std::time::Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = std::time::Instant::now() + limit;
    loop {
        let (_, doc) = srv.get_json(&format!("/api/recordings/{id}")).await;
        if done(&doc) {
            return doc;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}: {doc}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Sum of a recording document's `frames` over its tracks of `kind`.
pub fn frames_of(doc: &serde_json::Value, kind: &str) -> u64 {
    doc["tracks"]
        .as_array()
        .map(|tracks| {
            tracks
                .iter()
                .filter(|t| t["kind"] == kind)
                .filter_map(|t| t["frames"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// Chromium for the browser tests (`RECBOT_CHROMIUM` or Debian's).
pub fn chromium_path() -> PathBuf {
    std::env::var_os("RECBOT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Whether the browser scripts (node, `npm ci --prefix tests/browser`, Chromium) can run here;
/// under CI=true they must.
pub fn browser_available() -> bool {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let why = if !Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Some("node is not installed".to_owned())
    } else if !dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        Some("run `npm ci --prefix tests/browser`".to_owned())
    } else if !chromium_path().is_file() {
        Some(format!("{} is missing", chromium_path().display()))
    } else {
        None
    };
    let Some(why) = why else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the browser test is required under CI=true: {why}");
    }
    eprintln!("skipping the browser test: {why}");
    false
}

/// Runs `node tests/browser/<script> <args>` (killed after `limit`) and returns whether it
/// exited 0 and the JSON summary it printed last on stdout; its stderr is echoed.
pub async fn run_browser_script(
    script: &str,
    args: &[&str],
    limit: std::time::Duration,
) -> (bool, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let child = tokio::process::Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .env("RECBOT_CHROMIUM", chromium_path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish in {limit:?}"))
        .expect("node runs");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary from {script}: {stdout}"));
    (out.status.success(), summary)
}

/// A free TCP port on 127.0.0.1 (bound and released: a later bind may race, rarely).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A free UDP port on 127.0.0.1 (bound and released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port()
}

/// A coturn (`turnserver`) on 127.0.0.1 with TURN REST credentials (`use-auth-secret`),
/// stopped by PID when dropped.
pub struct Coturn {
    pub port: u16,
    pub secret: String,
    child: std::process::Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Coturn {
    /// Starts one; `None` (skip) when `turnserver` is missing outside CI.
    pub fn start(secret: &str) -> Option<Self> {
        let ok = Command::new("turnserver").arg("-h").output().is_ok();
        if !ok {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("turnserver (coturn) is required under CI=true");
            }
            eprintln!("skipping: turnserver (coturn) is not installed");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_udp_port();
        let log = dir.path().join("turn.log");
        let child = Command::new("turnserver")
            .args([
                "-n",
                "--listening-ip",
                "127.0.0.1",
                "--relay-ip",
                "127.0.0.1",
            ])
            .args(["--listening-port", &port.to_string()])
            .args(["--use-auth-secret", "--static-auth-secret", secret])
            .args([
                "--realm",
                "recbot.test",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
            ])
            .args(["--allow-loopback-peers", "--fingerprint", "--no-tcp-relay"])
            .args(["--min-port", "40000", "--max-port", "40999"])
            .arg("--pidfile")
            .arg(dir.path().join("turn.pid"))
            .arg("--userdb")
            .arg(dir.path().join("turn.db"))
            .arg("--log-file")
            .arg(&log)
            .args(["--simple-log", "--no-stdout-log", "--verbose"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("turnserver starts");
        // Ready once it answers on its port: a STUN binding request gets a response.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        socket
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .expect("timeout");
        let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        request.extend_from_slice(&[7; 12]);
        let mut buf = [0u8; 512];
        let ready = (0..50).any(|_| {
            let _ = socket.send_to(&request, ("127.0.0.1", port));
            socket
                .recv(&mut buf)
                .is_ok_and(|n| n >= 20 && buf[0] == 0x01)
        });
        let turn = Self {
            port,
            secret: secret.to_owned(),
            child,
            log,
            _dir: dir,
        };
        assert!(ready, "turnserver did not answer on 127.0.0.1:{port}");
        Some(turn)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drops every UDP packet leaving this network namespace (nft), and checks that it works: a
/// datagram to a bound loopback socket does not arrive. Only for tests in their own namespace.
pub fn drop_udp_in_namespace() {
    assert_eq!(std::env::var("RECBOT_IN_NETNS").as_deref(), Ok("1"));
    run_ok("nft", &["add", "table", "inet", "reach_tcp_only"]);
    run_ok(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "reach_tcp_only",
            "out",
            "{ type filter hook output priority 0 ; }",
        ],
    );
    run_ok(
        "nft",
        &[
            "add",
            "rule",
            "inet",
            "reach_tcp_only",
            "out",
            "meta",
            "l4proto",
            "udp",
            "drop",
        ],
    );
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    rx.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .expect("timeout");
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let _ = tx.send_to(b"x", rx.local_addr().expect("addr"));
    let mut buf = [0u8; 8];
    assert!(rx.recv(&mut buf).is_err(), "UDP still passes");
}

/// A WebSocket client connection of the tests.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text message of `ws` (pings and pongs skipped), within 5 s; any other frame
/// fails the test.
pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("stream open")
            .expect("frame");
        match frame {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str()).expect("server sends JSON")
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}
