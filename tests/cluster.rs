//! A cluster of real `recbot serve --redis` processes on loopback (SPEC §9): a real
//! `redis-server` on a Unix socket in a temp dir, the nodes and HAProxy (the README's config)
//! started and stopped by PID. Under CI=true a missing redis-server or haproxy fails the test.

mod common;

use common::*;
use futures::SinkExt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A child process killed (by its PID) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A redis-server on a Unix socket in `dir`, no persistence.
fn start_redis(dir: &Path) -> (Proc, String) {
    let socket = dir.join("redis.sock");
    let child = Command::new("redis-server")
        .args(["--port", "0", "--save", "", "--appendonly", "no"])
        .arg("--unixsocket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "redis-server made no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), format!("unix://{}", socket.display()))
}

/// A node: `recbot serve --redis URL --node-id ID` on a free port.
struct Node {
    proc: Proc,
    base: String,
    id: String,
    dir: tempfile::TempDir,
}

fn start_node(redis: &str, id: &str) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let (proc, base) = spawn_node(redis, id, dir.path());
    Node {
        proc,
        base,
        id: id.into(),
        dir,
    }
}

/// `recbot serve --redis URL --node-id ID` on a free port, recording into `dir`.
fn spawn_node(redis: &str, id: &str, dir: &Path) -> (Proc, String) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_recbot"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--udp-bind",
            "127.0.0.1",
            "--log-format",
            "json",
            "--log",
            "info",
        ])
        .args(["--redis", redis, "--node-id", id])
        .arg("--recordings-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("recbot starts");
    let mut proc = Proc(child);
    let stderr = proc.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["fields"]["message"] == "listening" {
                    let _ = tx.send(());
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the node says it listens");
    (proc, format!("http://127.0.0.1:{port}"))
}

/// HAProxy with the README's configuration in front of `nodes`.
fn start_haproxy(dir: &Path, nodes: &[&Node]) -> (Proc, String) {
    let port = free_port();
    let servers: String = nodes
        .iter()
        .map(|n| {
            format!(
                "    server {} {} check inter 1s\n",
                n.id,
                n.base.trim_start_matches("http://")
            )
        })
        .collect();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let start = readme
        .find("# recbot-haproxy-begin")
        .expect("README has the HAProxy config");
    let end = readme.find("# recbot-haproxy-end").expect("end marker");
    let config = readme[start..end]
        .replace("127.0.0.1:80", &format!("127.0.0.1:{port}"))
        .replace("    server node1 10.0.0.1:8080 check inter 1s\n", &servers)
        .replace("    server node2 10.0.0.2:8080 check inter 1s\n", "");
    let path: PathBuf = dir.join("haproxy.cfg");
    std::fs::write(&path, config).expect("config");
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "haproxy does not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), format!("http://127.0.0.1:{port}"))
}

async fn call(
    method: reqwest::Method,
    url: String,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

async fn post(base: &str, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    call(reqwest::Method::POST, format!("{base}{path}"), Some(body)).await
}

/// Waits until the node at `base`, just sent SIGTERM, drains: `true` once its /healthz answers
/// 503, `false` if it is gone first. kill(1) returns once the signal is sent and the node sees
/// it a moment later, so asking at once races with it. (A bound against a hang, 5 s, not a
/// speed check.)
async fn draining(base: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match reqwest::get(format!("{base}/healthz")).await {
            Ok(r) if r.status().as_u16() == 503 => return true,
            Ok(_) => assert!(
                Instant::now() < deadline,
                "{base} still healthy 5 s after SIGTERM"
            ),
            Err(_) => return false,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(base: &str, path: &str) -> (u16, serde_json::Value) {
    call(reqwest::Method::GET, format!("{base}{path}"), None).await
}

/// Node A (a process of its own, which a test may kill, stop or restart on `a_dir`) and node
/// B on one Redis; publisher `name` on node B in `room`, recorded by node A.
struct RecordedOnA {
    nodes: TwoNodes,
    publisher: recbot::client::PublisherHandle,
    id: String,
}

/// Redis, node A (a process of its own on `a_dir`, which a test may kill, stop or restart)
/// and node B.
struct TwoNodes {
    _tmp: tempfile::TempDir,
    _redis: Proc,
    url: String,
    a_dir: tempfile::TempDir,
    a_proc: Proc,
    a_base: String,
    b: Node,
}

fn two_nodes() -> TwoNodes {
    let tmp = tempfile::tempdir().unwrap();
    let (redis, url) = start_redis(tmp.path());
    let a_dir = tempfile::tempdir().unwrap();
    let (a_proc, a_base) = spawn_node(&url, "node-a", a_dir.path());
    let b = start_node(&url, "node-b");
    TwoNodes {
        _tmp: tmp,
        _redis: redis,
        url,
        a_dir,
        a_proc,
        a_base,
        b,
    }
}

/// Waits (at most `within`) for `proc` to exit, and returns how.
async fn exit_of(proc: &mut Proc, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(exit) = proc.0.try_wait().unwrap() {
            return exit;
        }
        assert!(Instant::now() < deadline, "the node did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn recorded_on_a(room: &str, name: &str) -> RecordedOnA {
    let nodes = two_nodes();
    let publisher = recbot::client::start(
        &nodes.b.base,
        room,
        name,
        clip(),
        factory(),
        Default::default(),
    )
    .await
    .expect("the publisher joins node B");
    let id = record_here(&nodes.a_base, room).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    RecordedOnA {
        nodes,
        publisher,
        id,
    }
}

/// Starts recording `room` on the node at `base` itself (the internal header that keeps a
/// create on the node it reached, as placement does); returns the Recording.
async fn record_here(base: &str, room: &str) -> serde_json::Value {
    create_here(base, "/api/recordings", serde_json::json!({"room": room})).await
}

/// Starts an echo bot in `room` on the node at `base` itself (no placement), as `record_here`.
async fn bot_here(base: &str, room: &str) -> serde_json::Value {
    create_here(
        base,
        "/api/bots",
        serde_json::json!({"room": room, "mode": "echo"}),
    )
    .await
}

/// POSTs `body` to `path` on the node at `base`, marked node-local; expects 201 and returns
/// the created document.
async fn create_here(base: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("x-recbot-node-local", "1")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    assert_eq!(status, 201, "{body}");
    body
}

/// Sends `signal` (`-TERM`, `-STOP`, `-CONT`...) to process `pid` with kill(1).
fn signal(pid: &str, signal: &str) {
    assert!(
        Command::new("kill")
            .args([signal, pid])
            .status()
            .unwrap()
            .success(),
        "kill {signal} {pid}"
    );
}

/// Total commands Redis has run (INFO commandstats), if redis-cli answers.
fn redis_calls(socket: &str) -> Option<u64> {
    let out = Command::new("redis-cli")
        .args(["-s", socket, "INFO", "commandstats"])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum(),
    )
}

/// Redis commands per minute over `span`.
async fn redis_rate(socket: &str, span: Duration) -> Option<f64> {
    let before = redis_calls(socket)?;
    tokio::time::sleep(span).await;
    let after = redis_calls(socket)?;
    Some((after - before) as f64 * 60.0 / span.as_secs_f64())
}

fn tools() -> bool {
    ["redis-server", "haproxy"]
        .iter()
        .all(|t| tool_available(t))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_recording_per_room_placement_and_one_api_behind_haproxy() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, url) = start_redis(tmp.path());
    let a = start_node(&url, "node-a");
    let b = start_node(&url, "node-b");
    let (_lb, lb) = start_haproxy(tmp.path(), &[&a, &b]);

    let (status, first) = post(&lb, "/api/recordings", serde_json::json!({"room": "r1"})).await;
    assert_eq!(status, 201, "{first}");
    let id1 = first["id"].as_str().expect("id").to_owned();
    let owner1 = first["node"].as_str().expect("node").to_owned();
    assert_eq!(first["takeovers"], 0);
    // The room is busy on every node, whichever the call lands on.
    for node in [&a, &b] {
        let (status, body) = post(
            &node.base,
            "/api/recordings",
            serde_json::json!({"room": "r1"}),
        )
        .await;
        assert_eq!(status, 409, "{} answered {body}", node.id);
        assert_eq!(body["error"]["code"], "room-busy");
    }
    // The next recording goes to the node with more spare capacity: the other one.
    let (status, second) = post(&lb, "/api/recordings", serde_json::json!({"room": "r2"})).await;
    assert_eq!(status, 201, "{second}");
    let id2 = second["id"].as_str().unwrap().to_owned();
    assert_ne!(second["node"], first["node"], "placed on the idle node");

    // Every node answers for every recording.
    for node in [&a, &b] {
        let (status, list) = get(&node.base, "/api/recordings").await;
        assert_eq!(status, 200);
        let ids: Vec<&str> = list["recordings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["id"].as_str())
            .collect();
        assert!(
            ids.contains(&id1.as_str()) && ids.contains(&id2.as_str()),
            "{}: {list}",
            node.id
        );
        let (status, one) = get(&node.base, &format!("/api/recordings/{id1}")).await;
        assert_eq!(status, 200, "{one}");
        assert_eq!(one["node"], owner1.as_str());
        assert_eq!(one["state"], "recording");
    }
    let other = if owner1 == a.id { &b } else { &a };
    // Stop and delete through the node that does not own it.
    let (status, stopped) = post(
        &other.base,
        &format!("/api/recordings/{id1}/stop"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["state"], "stopped");
    let (status, again) = post(&lb, "/api/recordings", serde_json::json!({"room": "r1"})).await;
    assert_eq!(status, 201, "the room is free again: {again}");
    let (status, _) = call(
        reqwest::Method::DELETE,
        format!("{}/api/recordings/{id1}", other.base),
        None,
    )
    .await;
    assert_eq!(status, 204);
    for node in [&a, &b] {
        let (status, _) = get(&node.base, &format!("/api/recordings/{id1}")).await;
        assert_eq!(status, 404, "{}", node.id);
    }
    // Bots too: one made on node A is listed, read and removed through node B.
    let (status, bot) = post(
        &a.base,
        "/api/bots",
        serde_json::json!({"room": "b1", "mode": "echo"}),
    )
    .await;
    assert_eq!(status, 201, "{bot}");
    let bot_id = bot["id"].as_str().unwrap();
    let (_, bots) = get(&b.base, "/api/bots").await;
    assert!(bots.to_string().contains(bot_id), "{bots}");
    let (status, one) = get(&b.base, &format!("/api/bots/{bot_id}")).await;
    assert_eq!((status, one["id"].as_str()), (200, Some(bot_id)));
    let (status, _) = call(
        reqwest::Method::DELETE,
        format!("{}/api/bots/{bot_id}", b.base),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = get(&a.base, &format!("/api/bots/{bot_id}")).await;
    assert_eq!(status, 404);
}

async fn connect(base: &str, room: &str, name: &str) -> Ws {
    let url = format!(
        "ws://{}/rooms/{room}/ws?name={name}",
        base.trim_start_matches("http://")
    );
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connects")
        .0
}

async fn send(ws: &mut Ws, value: serde_json::Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .expect("send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_nodes_and_a_recorder_on_one_records_a_publisher_on_the_other() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, url) = start_redis(tmp.path());
    let a = start_node(&url, "node-a");
    let b = start_node(&url, "node-b");

    let mut alice = connect(&a.base, "span", "alice").await;
    let welcome = next_json(&mut alice).await;
    let alice_id = welcome["id"].as_str().unwrap().to_owned();
    // Node B knows of alice once her join went through Redis (bob's welcome would list her
    // even before: joins are ordered cluster-wide, see the simultaneous-join test).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !get(&b.base, "/api/rooms")
        .await
        .1
        .to_string()
        .contains(&alice_id)
    {
        assert!(Instant::now() < deadline, "node B never saw alice");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut bob = connect(&b.base, "span", "bob").await;
    let welcome = next_json(&mut bob).await;
    let bob_id = welcome["id"].as_str().unwrap().to_owned();
    let listed: Vec<&str> = welcome["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(
        listed,
        vec![alice_id.as_str()],
        "bob's welcome lists alice of the other node"
    );
    let joined = next_json(&mut alice).await;
    assert_eq!(joined["type"], "peer-joined");
    assert_eq!(joined["peer"]["id"], bob_id.as_str());

    // Signaling crosses nodes in order, with `from` set; latency measured.
    let mut delays = Vec::new();
    for i in 0..20 {
        let sent = Instant::now();
        send(
            &mut alice,
            serde_json::json!({"type": "offer", "to": bob_id, "sdp": format!("v=0 {i}")}),
        )
        .await;
        let got = next_json(&mut bob).await;
        delays.push(sent.elapsed());
        assert_eq!(got["type"], "offer");
        assert_eq!(got["from"], alice_id.as_str());
        assert_eq!(got["sdp"], format!("v=0 {i}"));
    }
    delays.sort();
    println!(
        "cross-node signaling: median {:?}, max {:?}",
        delays[10], delays[19]
    );
    send(
        &mut alice,
        serde_json::json!({"type": "answer", "to": "nobody1234", "sdp": "x"}),
    )
    .await;
    let refused = next_json(&mut alice).await;
    assert_eq!(refused["code"], "unknown-peer");
    // /api/rooms on either node shows both.
    for node in [&a, &b] {
        let (_, rooms) = get(&node.base, "/api/rooms").await;
        let peers = rooms["rooms"][0]["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(peers.len(), 2, "{}: {rooms}", node.id);
    }
    send(&mut bob, serde_json::json!({"type": "leave"})).await;
    let left = next_json(&mut alice).await;
    assert_eq!(left["type"], "peer-left");
    assert_eq!(left["id"], bob_id.as_str());
    drop(alice);

    // Media: a publisher on node A, the recording on node B (asked of B alone).
    let _heavy = heavy().await;
    let socket = url.trim_start_matches("unix://").to_owned();
    let idle = redis_rate(&socket, Duration::from_secs(4)).await;
    let publisher = recbot::client::start(
        &a.base,
        "media",
        "carol",
        clip(),
        factory(),
        Default::default(),
    )
    .await
    .expect("carol joins node A");
    let rec = record_here(&b.base, "media").await;
    assert_eq!(rec["node"], "node-b");
    let id = rec["id"].as_str().unwrap().to_owned();
    let busy = redis_rate(&socket, Duration::from_secs(4)).await;
    if let (Some(idle), Some(busy)) = (idle, busy) {
        println!(
            "Redis commands per minute: 2 idle nodes {idle:.0}; recording 1 participant {busy:.0} \
             (+{:.0} per recorded participant-minute)",
            busy - idle
        );
    }
    let (_, doc) = post(
        &a.base,
        &format!("/api/recordings/{id}/stop"),
        serde_json::json!({}),
    )
    .await;
    publisher.leave().await;
    let frames: u64 = doc["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["frames"].as_u64().unwrap_or(0))
        .sum();
    assert!(doc["tracks"].as_array().unwrap().len() >= 2, "{doc}");
    assert!(frames > 50, "carol on node A recorded on node B: {doc}");
    assert!(b.dir.path().join(&id).is_dir());
    drop(a.proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_503_and_recovers_by_itself() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (redis, url) = start_redis(tmp.path());
    let a = start_node(&url, "node-a");
    let (status, rec) = post(
        &a.base,
        "/api/recordings",
        serde_json::json!({"room": "d1"}),
    )
    .await;
    assert_eq!(status, 201, "{rec}");
    drop(redis);
    let _ = std::fs::remove_file(tmp.path().join("redis.sock"));
    let (status, body) = post(
        &a.base,
        "/api/recordings",
        serde_json::json!({"room": "d2"}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "cluster-unavailable");
    let (status, _) = get(&a.base, "/healthz").await;
    assert_eq!(status, 200);
    // The recording in progress goes on; Redis returns (empty) and the node works again.
    let (_redis, _) = start_redis(tmp.path());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = post(
            &a.base,
            "/api/recordings",
            serde_json::json!({"room": "d2"}),
        )
        .await;
        if status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {status} {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let id = rec["id"].as_str().unwrap();
    let doc = std::fs::read_to_string(a.dir.path().join(id).join("manifest.json")).unwrap();
    assert!(doc.contains("\"recording\""), "{doc}");
    // The new Redis is empty: the holder writes its recording into the index again, and the
    // room's claim with it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, list) = get(&a.base, "/api/recordings").await;
    assert!(list.to_string().contains(id), "{list}");
    let (status, _) = post(
        &a.base,
        "/api/recordings",
        serde_json::json!({"room": "d1"}),
    )
    .await;
    assert_eq!(status, 409);
}

fn track_of<'a>(doc: &'a serde_json::Value, file_part: &str) -> Option<&'a serde_json::Value> {
    doc["tracks"]
        .as_array()?
        .iter()
        .find(|t| t["file"].as_str().is_some_and(|f| f.contains(file_part)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_recording_is_taken_over_and_its_return_does_not_fight() {
    if !tools() {
        return;
    }
    let _heavy = heavy().await;
    let RecordedOnA {
        nodes: n,
        publisher,
        id,
    } = recorded_on_a("tk", "carol").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, before) = get(&n.b.base, &format!("/api/recordings/{id}")).await;
    assert_eq!(before["node"], "node-a", "{before}");
    assert!(
        track_of(&before, "video-1").is_some_and(|t| t["frames"].as_u64() > Some(10)),
        "{before}"
    );

    drop(n.a_proc); // SIGKILL
    let killed = Instant::now();
    let mut taken = None;
    let mut resumed = None;
    let mut doc = serde_json::Value::Null;
    while killed.elapsed() < Duration::from_secs(40) {
        let (status, d) = get(&n.b.base, &format!("/api/recordings/{id}")).await;
        if status == 200 {
            doc = d;
            if taken.is_none() && doc["node"] == "node-b" {
                taken = Some(killed.elapsed());
            }
            if track_of(&doc, "video-2").is_some_and(|t| t["frames"].as_u64() > Some(0)) {
                resumed = Some(killed.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let taken = taken.unwrap_or_else(|| panic!("no takeover: {doc}"));
    let resumed = resumed.unwrap_or_else(|| panic!("no media after the takeover: {doc}"));
    println!("takeover after SIGKILL: lease moved in {taken:?}, media again in {resumed:?}");
    assert_eq!(doc["state"], "recording");
    assert_eq!(doc["takeovers"], 1);
    assert!(
        track_of(&doc, "video-1").is_some(),
        "the earlier files stay listed: {doc}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The killed node comes back: it repairs its files, never writes the shared state.
    let (_a_proc, a_base) = spawn_node(&n.url, "node-a", n.a_dir.path());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, seen) = get(&a_base, &format!("/api/recordings/{id}")).await;
    assert_eq!(seen["node"], "node-b", "{seen}");
    assert_eq!(seen["state"], "recording", "{seen}");
    let (_, stopped) = post(
        &a_base,
        &format!("/api/recordings/{id}/stop"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    publisher.leave().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, after) = get(&n.b.base, &format!("/api/recordings/{id}")).await;
    assert_eq!(
        after["state"], "stopped",
        "the returned node did not overwrite it: {after}"
    );
    assert_eq!(after["node"], "node-b");
    // The file the dead node wrote is downloadable from any node (from node A, repaired).
    let first = track_of(&after, "video-1").unwrap()["file"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = reqwest::get(format!("{}/api/recordings/{id}/files/{first}", n.b.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    assert!(bytes.len() > 1000);
    let local = std::fs::read_to_string(n.a_dir.path().join(&id).join("manifest.json")).unwrap();
    assert!(
        local.contains("interrupted"),
        "node A marks its own copy: {local}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_node_with_its_recording_handed_over_without_a_gap() {
    if !tools() {
        return;
    }
    let _heavy = heavy().await;
    let RecordedOnA {
        nodes: mut n,
        publisher,
        id,
    } = recorded_on_a("dr", "dave").await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let pid = n.a_proc.0.id().to_string();
    signal(&pid, "-TERM");
    assert!(
        draining(&n.a_base).await,
        "node A answers 503 on /healthz once it drains"
    );
    let (status, _) = post(
        &n.a_base,
        "/api/recordings",
        serde_json::json!({"room": "other"}),
    )
    .await;
    assert_eq!(status, 503, "no new work on a draining node");
    let exit = exit_of(&mut n.a_proc, Duration::from_secs(40)).await;
    assert!(exit.success(), "exit 0: {exit:?}");

    let (_, doc) = get(&n.b.base, &format!("/api/recordings/{id}")).await;
    assert_eq!(doc["node"], "node-b", "{doc}");
    assert_eq!(doc["state"], "recording");
    assert_eq!(doc["takeovers"], 1);
    let second = track_of(&doc, "video-2")
        .cloned()
        .unwrap_or_else(|| panic!("{doc}"));
    assert!(second["frames"].as_u64() > Some(0), "{doc}");
    // The old node's final figures of its file, on its own disk.
    let local: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(n.a_dir.path().join(&id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let first = track_of(&local, "video-1")
        .cloned()
        .unwrap_or_else(|| panic!("{local}"));
    let end_first =
        first["start_offset_ms"].as_i64().unwrap() + first["duration_ms"].as_i64().unwrap();
    let start_second = second["start_offset_ms"].as_i64().unwrap();
    let hole = start_second - end_first;
    println!("drain handover: hole {hole} ms (negative: overlap)");
    assert!(
        hole <= 100,
        "the new recorder records before the old one leaves: {hole} ms"
    );
    publisher.leave().await;
    let (_, stopped) = post(
        &n.b.base,
        &format!("/api/recordings/{id}/stop"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(stopped["state"], "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_past_its_lease_is_fenced_out_when_it_wakes() {
    if !tools() {
        return;
    }
    let _heavy = heavy().await;
    let RecordedOnA {
        nodes: n,
        publisher,
        id,
    } = recorded_on_a("fz", "erin").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = n.a_proc.0.id().to_string();
    // Frozen, not dead: its sockets stay open, it will wake up believing it still records.
    signal(&pid, "-STOP");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, doc) = get(&n.b.base, &format!("/api/recordings/{id}")).await;
        if doc["node"] == "node-b" {
            break;
        }
        assert!(Instant::now() < deadline, "no takeover: {doc}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    signal(&pid, "-CONT");
    // Its next heartbeat tries to write its (old) document: refused by the fence; its
    // recorder stops there.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let local = reqwest::Client::new()
            .get(format!("{}/api/recordings/{id}", n.a_base))
            .header("x-recbot-node-local", "1")
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        if local["state"] == "stopped" {
            break;
        }
        assert!(Instant::now() < deadline, "node A still records: {local}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for base in [&n.a_base, &n.b.base] {
        let (_, doc) = get(base, &format!("/api/recordings/{id}")).await;
        assert_eq!(doc["node"], "node-b", "{doc}");
        assert_eq!(doc["state"], "recording", "{doc}");
        assert_eq!(doc["takeovers"], 1, "{doc}");
    }
    publisher.leave().await;
}

/// A participant that sends the test tone to the bots of its room and counts the audio
/// packets they send back (an echo bot's echo).
struct EchoProbe {
    outlets: recbot::peer::outlet::SharedOutlets,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait::async_trait]
impl recbot::peer::room::Behaviour for EchoProbe {
    fn wants(&self, peer: &recbot::signal::protocol::PeerInfo) -> bool {
        peer.bot
    }

    async fn setup(
        &self,
        peer: &recbot::signal::protocol::PeerInfo,
        pc: &recbot::peer::Pc,
        _role: recbot::peer::negotiation::Role,
    ) -> Result<(), recbot::peer::PeerError> {
        let outlet = recbot::peer::outlet::Outlet::add(
            pc,
            rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio,
            "probe",
            None,
        )
        .await?;
        self.outlets.lock().unwrap().add(&peer.id, outlet);
        Ok(())
    }

    async fn on_track(
        &self,
        _peer: &recbot::signal::protocol::PeerInfo,
        track: std::sync::Arc<dyn webrtc::media_stream::track_remote::TrackRemote>,
    ) {
        use webrtc::media_stream::track_remote::TrackRemoteEvent;
        while let Some(event) = track.poll().await {
            if let TrackRemoteEvent::OnRtpPacket(_) = event {
                self.received
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    async fn peer_left(&self, peer: &recbot::signal::protocol::PeerInfo) {
        self.outlets.lock().unwrap().remove_peer(&peer.id);
    }
}

/// An [`EchoProbe`] in a room of the node at `base`, sending the tone in a loop.
struct Prober {
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    leave: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Prober {
    async fn join(base: &str, room: &str, name: &str) -> Self {
        use recbot::peer::outlet::{pump, MediaFrame, PumpOptions};
        let tone = recbot::record::ogg::read_ogg_opus(
            std::fs::File::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tone.ogg"))
                .unwrap(),
        )
        .unwrap();
        let frames: Vec<MediaFrame> = tone
            .packets
            .into_iter()
            .map(|p| MediaFrame {
                duration: Duration::from_micros(u64::from(p.samples) * 1_000_000 / 48_000),
                data: bytes::Bytes::from(p.data),
                keyframe: true,
                skip: false,
            })
            .collect();
        let outlets = recbot::peer::outlet::SharedOutlets::default();
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let behaviour = std::sync::Arc::new(EchoProbe {
            outlets: std::sync::Arc::clone(&outlets),
            received: std::sync::Arc::clone(&received),
        });
        let url = format!(
            "ws://{}/rooms/{room}/ws?name={name}",
            base.trim_start_matches("http://")
        );
        let connection = recbot::client::connect_room(&url, name, factory(), behaviour)
            .await
            .expect("the probe joins");
        tokio::spawn(pump(
            frames.into(),
            outlets,
            PumpOptions {
                kind: rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio,
                looping: true,
                keyframe_wanted: None,
                sent: Default::default(),
            },
            connection.leave.clone(),
        ));
        Self {
            received,
            leave: connection.leave,
            task: connection.task,
        }
    }

    fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `more` packets past `from` came back; the time it took.
    async fn echoed(&self, from: u64, more: u64, limit: Duration) -> Duration {
        let start = Instant::now();
        while self.received() < from + more {
            assert!(
                start.elapsed() < limit,
                "no echo: {} packets back",
                self.received() - from
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        start.elapsed()
    }

    async fn leave(self) {
        self.leave.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// The bots node `base` itself runs (a node-local call).
async fn local_bots(base: &str) -> Vec<serde_json::Value> {
    let list: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/api/bots"))
        .header("x-recbot-node-local", "1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["bots"].as_array().cloned().unwrap_or_default()
}

/// Whether `peer` is a bot member of `room` as node `base` sees it.
async fn bot_in_room(base: &str, room: &str, peer: &str) -> bool {
    let (_, rooms) = get(base, "/api/rooms").await;
    rooms["rooms"].as_array().is_some_and(|rooms| {
        rooms.iter().any(|r| {
            r["room"] == room
                && r["peers"]
                    .as_array()
                    .is_some_and(|peers| peers.iter().any(|p| p["id"] == peer && p["bot"] == true))
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_is_placed_by_capacity_and_restarted_with_its_id_when_its_node_dies() {
    if !tools() {
        return;
    }
    let _heavy = heavy().await;
    let n = two_nodes();
    // Node B is busier (it records a room): a bot asked of node B goes to node A.
    record_here(&n.b.base, "busy").await;
    let (status, bot) = post(
        &n.b.base,
        "/api/bots",
        serde_json::json!({"room": "eb", "mode": "echo"}),
    )
    .await;
    assert_eq!(status, 201, "{bot}");
    assert_eq!(bot["node"], "node-a", "placed by spare capacity: {bot}");
    assert_eq!(bot["restarts"], 0, "{bot}");
    let id = bot["id"].as_str().unwrap().to_owned();
    let (status, doomed) = post(
        &n.b.base,
        "/api/bots",
        serde_json::json!({"room": "eb2", "mode": "echo"}),
    )
    .await;
    assert_eq!(
        (status, &doomed["node"]),
        (201, &"node-a".into()),
        "{doomed}"
    );
    let doomed = doomed["id"].as_str().unwrap().to_owned();
    // A participant on node B hears itself through the bot on node A.
    let probe = Prober::join(&n.b.base, "eb", "alice").await;
    probe.echoed(0, 50, Duration::from_secs(20)).await;

    drop(n.a_proc); // SIGKILL
    let killed = Instant::now();
    // A bot deleted while its node is dead is not restarted.
    let (status, _) = call(
        reqwest::Method::DELETE,
        format!("{}/api/bots/{doomed}", n.b.base),
        None,
    )
    .await;
    assert_eq!(status, 204);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = probe.received();
    let mut doc = serde_json::Value::Null;
    let restarted = loop {
        let (status, d) = get(&n.b.base, &format!("/api/bots/{id}")).await;
        if status == 200 && d["node"] == "node-b" && d["state"] == "running" {
            doc = d;
            break killed.elapsed();
        }
        if status == 200 {
            doc = d;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "the bot was not restarted: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(doc["id"], id.as_str());
    assert_eq!(doc["room"], "eb");
    assert_eq!(doc["mode"], "echo");
    assert_eq!(doc["restarts"], 1, "{doc}");
    assert_eq!(doc["started_at"], bot["started_at"], "{doc}");
    let peer = doc["bot_peer"].as_str().expect("in the room").to_owned();
    assert_ne!(peer, bot["bot_peer"].as_str().unwrap());
    assert!(bot_in_room(&n.b.base, "eb", &peer).await, "a member again");
    let (status, gone) = get(&n.b.base, &format!("/api/bots/{doomed}")).await;
    assert_eq!(status, 404, "the deleted bot: {gone}");
    assert_eq!(
        local_bots(&n.b.base).await.len(),
        1,
        "only the live bot restarted"
    );
    let heard = probe.echoed(before, 50, Duration::from_secs(20)).await;
    println!(
        "bot restart after SIGKILL: running on node B in {restarted:?}, echo heard again {:?} later",
        heard
    );

    // The killed node comes back (same id, same data): it does not run the bot again, and
    // the index still names node B.
    let (_a_proc, a_base) = spawn_node(&n.url, "node-a", n.a_dir.path());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let here = local_bots(&a_base).await;
    assert!(
        !here.iter().any(|b| b["id"] == id.as_str()),
        "node A runs it again: {here:?}"
    );
    for base in [&a_base, &n.b.base] {
        let (status, doc) = get(base, &format!("/api/bots/{id}")).await;
        assert_eq!(status, 200, "{doc}");
        assert_eq!(doc["node"], "node-b", "{doc}");
        assert_eq!(doc["state"], "running", "{doc}");
        assert_eq!(doc["restarts"], 1, "{doc}");
    }
    let (_, bots) = get(&a_base, "/api/bots").await;
    let listed = bots["bots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["id"] == id.as_str())
        .count();
    assert_eq!(listed, 1, "one bot of that id in the cluster: {bots}");
    probe.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_moves_a_nodes_bots_to_another_node() {
    if !tools() {
        return;
    }
    let _heavy = heavy().await;
    let mut n = two_nodes();
    let bot = bot_here(&n.a_base, "db").await;
    assert_eq!(bot["node"], "node-a");
    let id = bot["id"].as_str().unwrap().to_owned();
    let probe = Prober::join(&n.b.base, "db", "bob").await;
    probe.echoed(0, 50, Duration::from_secs(20)).await;

    let pid = n.a_proc.0.id().to_string();
    signal(&pid, "-TERM");
    let termed = Instant::now();
    // No new bots on a draining node (a node already gone takes none either).
    draining(&n.a_base).await;
    let answer = reqwest::Client::new()
        .post(format!("{}/api/bots", n.a_base))
        .json(&serde_json::json!({"room": "other", "mode": "echo"}))
        .send()
        .await;
    if let Ok(r) = answer {
        assert_eq!(r.status(), 503, "no new bots on a draining node");
    }
    let exit = exit_of(&mut n.a_proc, Duration::from_secs(40)).await;
    assert!(exit.success(), "exit 0: {exit:?}");
    let (status, doc) = get(&n.b.base, &format!("/api/bots/{id}")).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["node"], "node-b", "{doc}");
    assert_eq!(doc["state"], "running", "{doc}");
    assert_eq!(doc["restarts"], 1, "{doc}");
    let peer = doc["bot_peer"].as_str().unwrap();
    assert!(bot_in_room(&n.b.base, "db", peer).await);
    let before = probe.received();
    probe.echoed(before, 50, Duration::from_secs(20)).await;
    println!(
        "bot drain: node A exited {:?} after SIGTERM",
        termed.elapsed()
    );
    probe.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bots_node_cut_off_past_its_lease_stops_its_copy_when_it_wakes() {
    if !tools() {
        return;
    }
    let _heavy = heavy().await;
    let n = two_nodes();
    let bot = bot_here(&n.a_base, "fb").await;
    let id = bot["id"].as_str().unwrap().to_owned();
    let pid = n.a_proc.0.id().to_string();
    // Frozen, not dead: it wakes up believing it still runs the bot.
    signal(&pid, "-STOP");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, doc) = get(&n.b.base, &format!("/api/bots/{id}")).await;
        if doc["node"] == "node-b" && doc["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "no restart: {doc}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    signal(&pid, "-CONT");
    // Its next heartbeat's write is refused by the fence: its copy stops there.
    let deadline = Instant::now() + Duration::from_secs(15);
    while local_bots(&n.a_base)
        .await
        .iter()
        .any(|b| b["id"] == id.as_str())
    {
        assert!(Instant::now() < deadline, "node A still runs the bot");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for base in [&n.a_base, &n.b.base] {
        let (status, doc) = get(base, &format!("/api/bots/{id}")).await;
        assert_eq!(status, 200, "{doc}");
        assert_eq!(doc["node"], "node-b", "{doc}");
        assert_eq!(doc["state"], "running", "{doc}");
        assert_eq!(doc["restarts"], 1, "{doc}");
    }
    assert_eq!(local_bots(&n.b.base).await.len(), 1);
}

/// The next message of `ws` other than pings, or `None` if none came within `within`.
async fn next_json_within(ws: &mut Ws, within: Duration) -> Option<serde_json::Value> {
    tokio::time::timeout(within, next_json(ws)).await.ok()
}

fn lists(welcome: &serde_json::Value, id: &str) -> bool {
    welcome["peers"]
        .as_array()
        .is_some_and(|peers| peers.iter().any(|p| p["id"] == id))
}

/// How one round of two simultaneous joins went.
#[derive(Debug, PartialEq)]
enum Pairing {
    /// Exactly one listed the other in its welcome, the other heard `peer-joined`, and an
    /// offer and its answer crossed.
    Negotiated,
    /// Neither welcome listed the other: nobody offers (the race).
    NobodyOffers,
    /// Both welcomes listed the other: both offer (glare on every pair).
    BothOffer,
    /// The one not listed in a welcome never heard `peer-joined`.
    NotTold,
    /// The offer or its answer did not arrive.
    NoAnswer,
}

/// Two peers join `room` at the same instant, one on each node; the pairing is checked.
async fn simultaneous_join(a: &str, b: &str, room: &str) -> (Pairing, [Duration; 2]) {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let join = |base: String, name: &'static str| {
        let barrier = std::sync::Arc::clone(&barrier);
        let room = room.to_owned();
        async move {
            barrier.wait().await;
            let started = Instant::now();
            let mut ws = connect(&base, &room, name).await;
            let welcome = next_json(&mut ws).await;
            assert_eq!(welcome["type"], "welcome", "{welcome}");
            (ws, welcome, started.elapsed())
        }
    };
    let ((mut wa, welcome_a, ta), (mut wb, welcome_b, tb)) =
        tokio::join!(join(a.to_owned(), "left"), join(b.to_owned(), "right"));
    let (ida, idb) = (
        welcome_a["id"].as_str().unwrap().to_owned(),
        welcome_b["id"].as_str().unwrap().to_owned(),
    );
    let outcome = match (lists(&welcome_a, &idb), lists(&welcome_b, &ida)) {
        (false, false) => Pairing::NobodyOffers,
        (true, true) => Pairing::BothOffer,
        (a_offers, _) => {
            // The newcomer (who listed the other) offers; the other hears `peer-joined` first.
            let (offerer, offerer_id, answerer, answerer_id) = if a_offers {
                (&mut wa, &ida, &mut wb, &idb)
            } else {
                (&mut wb, &idb, &mut wa, &ida)
            };
            let told = next_json_within(answerer, Duration::from_secs(5)).await;
            if !told.as_ref().is_some_and(|m| {
                m["type"] == "peer-joined" && m["peer"]["id"] == offerer_id.as_str()
            }) {
                Pairing::NotTold
            } else {
                send(
                    offerer,
                    serde_json::json!({"type": "offer", "to": answerer_id, "sdp": "v=0 offer"}),
                )
                .await;
                let offer = next_json_within(answerer, Duration::from_secs(5)).await;
                let offered = offer
                    .as_ref()
                    .is_some_and(|m| m["type"] == "offer" && m["from"] == offerer_id.as_str());
                send(
                    answerer,
                    serde_json::json!({"type": "answer", "to": offerer_id, "sdp": "v=0 answer"}),
                )
                .await;
                let answer = next_json_within(offerer, Duration::from_secs(5)).await;
                let answered = answer
                    .as_ref()
                    .is_some_and(|m| m["type"] == "answer" && m["from"] == answerer_id.as_str());
                if offered && answered {
                    Pairing::Negotiated
                } else {
                    Pairing::NoAnswer
                }
            }
        }
    };
    (outcome, [ta, tb])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_joining_one_room_on_two_nodes_at_once_always_negotiate() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, url) = start_redis(tmp.path());
    let a = start_node(&url, "node-a");
    let b = start_node(&url, "node-b");
    const ROUNDS: usize = 20;
    let mut failed = Vec::new();
    let mut latencies = Vec::new();
    for round in 0..ROUNDS {
        let (outcome, times) = simultaneous_join(&a.base, &b.base, &format!("race{round}")).await;
        latencies.extend(times);
        if outcome != Pairing::Negotiated {
            failed.push((round, outcome));
        }
    }
    latencies.sort();
    println!(
        "simultaneous cross-node joins: {} of {ROUNDS} rounds failed; connect-to-welcome median {:?}",
        failed.len(),
        latencies[latencies.len() / 2]
    );
    // One join at a time, on a cluster node and on one node without Redis: what the
    // cluster-wide order (one Redis round trip) adds to a join.
    let single = TestServer::start().await;
    for (label, base) in [("a cluster node", &a.base), ("no cluster", &single.base)] {
        let mut alone = Vec::new();
        for round in 0..ROUNDS {
            let started = Instant::now();
            let mut ws = connect(base, &format!("solo{round}"), "solo").await;
            let _welcome = next_json(&mut ws).await;
            alone.push(started.elapsed());
        }
        alone.sort();
        println!(
            "one join at a time, connect-to-welcome on {label}: median {:?}",
            alone[ROUNDS / 2]
        );
    }
    assert!(
        failed.is_empty(),
        "{} of {ROUNDS} rounds did not negotiate: {failed:?}",
        failed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_joins_go_on_on_their_node() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (redis, url) = start_redis(tmp.path());
    let a = start_node(&url, "node-a");
    drop(redis);
    let _ = std::fs::remove_file(tmp.path().join("redis.sock"));
    // Unordered, on this node alone (as on a single node): the join does not wait for Redis
    // beyond the order timeout, and later joins there do not ask it again for a while.
    let started = Instant::now();
    let mut first = connect(&a.base, "down", "first").await;
    let welcome = next_json(&mut first).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let first_id = welcome["id"].as_str().unwrap().to_owned();
    let mut second = connect(&a.base, "down", "second").await;
    let welcome = next_json(&mut second).await;
    println!(
        "joins with Redis down: both welcomed in {:?}",
        started.elapsed()
    );
    assert!(lists(&welcome, &first_id), "{welcome}");
    let joined = next_json(&mut first).await;
    assert_eq!(joined["type"], "peer-joined", "{joined}");
}

/// The frames recorded of participant `who` in a Recording.
fn frames_of_participant(doc: &serde_json::Value, who: &str) -> u64 {
    doc["tracks"]
        .as_array()
        .map(|tracks| {
            tracks
                .iter()
                .filter(|t| t["participant_name"] == who)
                .map(|t| t["frames"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_media_reaches_the_rooms_recorder_on_another_node() {
    if !tools() {
        return;
    }
    let _heavy = heavy().await;
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, url) = start_redis(tmp.path());
    let a = start_node(&url, "node-a");
    let b = start_node(&url, "node-b");
    // Node B is busier (one recording): placement alone would pick node A.
    let busy = record_here(&b.base, "busy").await;
    assert_eq!(busy["node"], "node-b");
    let busy_id = busy["id"].as_str().unwrap().to_owned();

    // 1. A WHIP publisher on node B, no recording yet: the recording asked of node A goes
    // where the publisher is.
    let cam = recbot::client::start_whip(
        &format!("{}/rooms/wp/whip?name=cam", b.base),
        None,
        clip(),
        factory(),
    )
    .await
    .expect("WHIP on node B");
    let (status, wp) = post(
        &a.base,
        "/api/recordings",
        serde_json::json!({"room": "wp"}),
    )
    .await;
    assert_eq!(status, 201, "{wp}");
    assert_eq!(
        wp["node"], "node-b",
        "placed with the room's WHIP session: {wp}"
    );
    let wp_id = wp["id"].as_str().unwrap().to_owned();

    // 2. A WHIP publisher posting to node A for the room node B records: its session is
    // opened on node B, and its Location works through node A (PATCH, DELETE).
    let cam2 = recbot::client::start_whip(
        &format!("{}/rooms/busy/whip?name=cam2", a.base),
        None,
        clip(),
        factory(),
    )
    .await
    .expect("WHIP through node A");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let session = format!("{}/rooms/busy/whip/{}", a.base, cam2.id);
    let http = reqwest::Client::new();
    let r = http
        .patch(&session)
        .header("content-type", "application/trickle-ice-sdpfrag")
        .body("a=end-of-candidates")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405, "PATCH reaches the session's node");
    let (_, busy_doc) = post(
        &a.base,
        &format!("/api/recordings/{busy_id}/stop"),
        serde_json::json!({}),
    )
    .await;
    let (_, wp_doc) = post(
        &a.base,
        &format!("/api/recordings/{wp_id}/stop"),
        serde_json::json!({}),
    )
    .await;
    let r = http.delete(&session).send().await.unwrap();
    assert_eq!(r.status(), 200, "DELETE through node A ends it on node B");
    cam2.leave().await;
    cam.leave().await;
    let (cam_frames, cam2_frames) = (
        frames_of_participant(&wp_doc, "cam"),
        frames_of_participant(&busy_doc, "cam2"),
    );
    println!("WHIP across nodes: cam {cam_frames} frames recorded, cam2 {cam2_frames}");
    assert!(cam_frames > 50, "cam (node B) recorded on node B: {wp_doc}");
    assert!(
        cam2_frames > 50,
        "cam2 (via node A) recorded on node B: {busy_doc}"
    );
}

/// A recorder starting on node A while a participant joins the room on node B at the same
/// instant: the recorder's join is ordered like a client's, so either the participant's
/// `welcome` lists the recorder (the participant offers) or the recorder offers to it; never
/// both waiting for the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_and_a_participant_joining_on_two_nodes_at_once_always_pair() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, url) = start_redis(tmp.path());
    let a = start_node(&url, "node-a");
    let b = start_node(&url, "node-b");
    const ROUNDS: usize = 24;
    let mut stranded = Vec::new();
    let (mut listed, mut offers) = (0, 0);
    for round in 0..ROUNDS {
        let room = format!("recrace{round}");
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let (doc, (mut ws, welcome)) = tokio::join!(
            {
                let barrier = std::sync::Arc::clone(&barrier);
                let (base, room) = (a.base.clone(), room.clone());
                async move {
                    barrier.wait().await;
                    record_here(&base, &room).await
                }
            },
            {
                let barrier = std::sync::Arc::clone(&barrier);
                let (base, room) = (b.base.clone(), room.clone());
                async move {
                    barrier.wait().await;
                    // Staggered by 0-5 ms across rounds, to sweep the window where each
                    // node's view of the room lags the other's.
                    tokio::time::sleep(Duration::from_micros(500 * (round % 12) as u64)).await;
                    let mut ws = connect(&base, &room, "pat").await;
                    let welcome = next_json(&mut ws).await;
                    (ws, welcome)
                }
            }
        );
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let recorder = doc["bot_peer"].as_str().expect("bot_peer").to_owned();
        // When the participant's welcome lists the recorder, the participant is the newcomer
        // and offers; else the recorder is, and its offer must come.
        let participant_offers = lists(&welcome, &recorder);
        if participant_offers {
            listed += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut offered = false;
        while !participant_offers && Instant::now() < deadline {
            match next_json_within(&mut ws, deadline - Instant::now()).await {
                Some(m) if m["type"] == "offer" && m["from"] == recorder.as_str() => {
                    offered = true;
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
        if offered {
            offers += 1;
        } else if !participant_offers {
            stranded.push(round);
        }
        let _ = ws.close(None).await;
        let _ = post(
            &a.base,
            &format!("/api/recordings/{}/stop", doc["id"].as_str().unwrap()),
            serde_json::json!({}),
        )
        .await;
    }
    println!(
        "recorder/participant races: participant's welcome listed the recorder {listed}, \
         recorder offered {offers}, neither {}",
        stranded.len()
    );
    assert!(
        stranded.is_empty(),
        "rounds where neither the recorder nor the participant offered: {stranded:?}"
    );
}
