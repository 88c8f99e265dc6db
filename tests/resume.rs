//! Signaling resume (SPEC §10): a client whose WebSocket drops (no close frame) reconnects
//! with `?resume=TOKEN` and keeps its peer id, its queued messages, its connections and its
//! recordings; the others see nothing. Bad tokens get `401` before the upgrade; a seat not
//! resumed within the grace leaves as before.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_base(base: &str) -> String {
    base.replacen("http://", "ws://", 1)
}

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connects")
        .0
}

/// The status and JSON body of a refused upgrade.
async fn refused(url: &str) -> (u16, Value) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (response.status().as_u16(), body)
        }
        Ok(_) => panic!("{url} was accepted"),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// Next JSON text message (skipping pings) within `within`, or `None`.
async fn next_within(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next()).await.ok()?;
        match frame {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    next_within(ws, Duration::from_secs(5))
        .await
        .expect("a message within 5 s")
}

async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .expect("send");
}

fn hub(srv: &TestServer) -> &std::sync::Arc<recbot::signal::hub::Hub> {
    &srv.server.as_ref().unwrap().app.services.hub
}

#[tokio::test]
async fn a_dropped_socket_resumes_its_seat_and_its_queued_messages() {
    let srv = TestServer::start().await;
    let proxy = CutProxy::start(srv.server.as_ref().unwrap().addr).await;
    let ws = ws_base(&srv.base);
    let mut alice = connect(&format!("{}/rooms/r/ws?name=alice", ws_base(&proxy.base()))).await;
    let welcome = next_json(&mut alice).await;
    let alice_id = welcome["id"].as_str().unwrap().to_owned();
    let token = welcome["resume"]
        .as_str()
        .expect("welcome.resume")
        .to_owned();
    assert!(welcome.get("resumed").is_none(), "{welcome}");
    let mut bob = connect(&format!("{ws}/rooms/r/ws?name=bob")).await;
    let bob_id = next_json(&mut bob).await["id"].as_str().unwrap().to_owned();
    assert_eq!(next_json(&mut alice).await["type"], "peer-joined");

    // The network drops: no close frame reaches the server.
    let cut_at = Instant::now();
    assert_eq!(proxy.cut(), 1);
    drop(alice);
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(
        &mut bob,
        json!({"type": "offer", "to": alice_id, "sdp": "v=0 while away"}),
    )
    .await;
    send(
        &mut bob,
        json!({"type": "candidate", "to": alice_id, "candidate": null}),
    )
    .await;
    let mut carol = connect(&format!("{ws}/rooms/r/ws?name=carol")).await;
    let carol_welcome = next_json(&mut carol).await;
    assert_eq!(
        carol_welcome["peers"].as_array().unwrap().len(),
        2,
        "a detached peer is still in the room: {carol_welcome}"
    );
    let carol_id = carol_welcome["id"].as_str().unwrap().to_owned();

    let mut alice = connect(&format!("{ws}/rooms/r/ws?resume={token}")).await;
    let again = next_json(&mut alice).await;
    let resumed_after = cut_at.elapsed();
    assert_eq!(again["type"], "welcome");
    assert_eq!(again["id"], alice_id.as_str(), "same peer id");
    assert_eq!(again["resumed"], true);
    let ids: Vec<&str> = again["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [bob_id.as_str(), carol_id.as_str()]);
    let fresh = again["resume"].as_str().unwrap().to_owned();
    assert_ne!(fresh, token, "a resumed session gets a fresh token");
    // What was sent meanwhile follows, bob's messages in order (carol's arrival raced them).
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(next_json(&mut alice).await);
    }
    let from_bob: Vec<&Value> = queued
        .iter()
        .filter(|m| m["from"] == bob_id.as_str())
        .collect();
    assert_eq!(
        from_bob,
        [
            &json!({"type": "offer", "from": bob_id, "sdp": "v=0 while away"}),
            &json!({"type": "candidate", "from": bob_id, "candidate": null}),
        ]
    );
    assert!(
        queued
            .iter()
            .any(|m| m["type"] == "peer-joined" && m["peer"]["id"] == carol_id.as_str()),
        "{queued:?}"
    );
    // The others heard nothing of it but carol's arrival.
    assert_eq!(next_json(&mut bob).await["type"], "peer-joined");
    assert_eq!(
        next_within(&mut bob, Duration::from_millis(500)).await,
        None
    );
    println!("WS drop → resumed welcome: {resumed_after:?}");

    // A used token, a wrong one, one of another room: 401 before the upgrade.
    for (what, url) in [
        ("reused", format!("{ws}/rooms/r/ws?resume={token}")),
        (
            "wrong",
            format!("{ws}/rooms/r/ws?resume=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ),
        (
            "of another room",
            format!("{ws}/rooms/other/ws?resume={fresh}"),
        ),
    ] {
        let (status, body) = refused(&url).await;
        assert_eq!(status, 401, "{what} token");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    }

    // The fresh token takes the seat over even while the old socket still looks alive (a
    // socket the server has not seen die): the old one is dropped, the room sees nothing.
    let mut alice2 = connect(&format!("{ws}/rooms/r/ws?resume={fresh}")).await;
    let third = next_json(&mut alice2).await;
    assert_eq!(
        (third["id"].as_str(), &third["resumed"]),
        (Some(alice_id.as_str()), &json!(true))
    );
    match tokio::time::timeout(Duration::from_secs(5), alice.next()).await {
        Ok(None | Some(Err(_))) => {}
        other => panic!("the replaced socket ends, got {other:?}"),
    }
    assert_eq!(
        next_within(&mut bob, Duration::from_millis(500)).await,
        None
    );
    send(
        &mut bob,
        json!({"type": "answer", "to": alice_id, "sdp": "v=0 b"}),
    )
    .await;
    assert_eq!(next_json(&mut alice2).await["from"], bob_id.as_str());

    // A close frame of the client's own is a leave: peer-left at once, no resume.
    let last = third["resume"].as_str().unwrap().to_owned();
    alice2.close(None).await.unwrap();
    assert_eq!(
        next_json(&mut bob).await,
        json!({"type": "peer-left", "id": alice_id})
    );
    let (status, _) = refused(&format!("{ws}/rooms/r/ws?resume={last}")).await;
    assert_eq!(status, 401, "a peer that left on purpose cannot resume");
    srv.shutdown().await;
}

#[tokio::test]
async fn a_seat_not_resumed_within_the_grace_leaves() {
    let srv = TestServer::start().await;
    let grace = Duration::from_secs(2);
    hub(&srv).set_resume_grace(grace);
    let proxy = CutProxy::start(srv.server.as_ref().unwrap().addr).await;
    let ws = ws_base(&srv.base);
    let mut alice = connect(&format!("{}/rooms/g/ws?name=alice", ws_base(&proxy.base()))).await;
    let welcome = next_json(&mut alice).await;
    let alice_id = welcome["id"].as_str().unwrap().to_owned();
    let token = welcome["resume"].as_str().unwrap().to_owned();
    let mut bob = connect(&format!("{ws}/rooms/g/ws?name=bob")).await;
    next_json(&mut bob).await;

    let cut_at = Instant::now();
    proxy.cut();
    let left = next_within(&mut bob, Duration::from_secs(10))
        .await
        .expect("peer-left after the grace");
    let after = cut_at.elapsed();
    assert_eq!(left, json!({"type": "peer-left", "id": alice_id}));
    assert!(after >= grace, "peer-left only after the grace: {after:?}");
    println!("peer-left {after:?} after the drop (grace {grace:?})");
    let (status, body) = refused(&format!("{ws}/rooms/g/ws?resume={token}")).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );

    // `leave` is not resumable either.
    let mut carol = connect(&format!("{ws}/rooms/g/ws?name=carol")).await;
    let token = next_json(&mut carol).await["resume"]
        .as_str()
        .unwrap()
        .to_owned();
    next_json(&mut bob).await;
    send(&mut carol, json!({"type": "leave"})).await;
    assert_eq!(next_json(&mut bob).await["type"], "peer-left");
    let (status, _) = refused(&format!("{ws}/rooms/g/ws?resume={token}")).await;
    assert_eq!(status, 401);
    srv.shutdown().await;
}

/// A publisher in a recorded room loses its WebSocket (the TCP connection cut, no close
/// frame) and resumes: same id, no peer-left to the others, its connection to the recorder
/// untouched, and the recording's files for it continue (no new file index).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_continues_across_a_signaling_drop() {
    let _heavy = heavy().await;
    let srv = TestServer::start().await;
    let proxy = CutProxy::start(srv.server.as_ref().unwrap().addr).await;
    let ws = ws_base(&srv.base);
    let mut watcher = connect(&format!("{ws}/rooms/rec/ws?name=watcher")).await;
    next_json(&mut watcher).await;
    let alice = recbot::client::start(
        &proxy.base(),
        "rec",
        "alice",
        clip(),
        factory(),
        Default::default(),
    )
    .await
    .expect("alice joins");
    let (status, rec) = srv
        .post_json("/api/recordings", json!({"room": "rec"}))
        .await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_owned();
    let frames_of_alice = |doc: &Value| -> u64 {
        doc["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["participant"] == alice.id.as_str())
            .map(|t| t["frames"].as_u64().unwrap_or(0))
            .sum()
    };
    let started = Instant::now();
    loop {
        let (_, doc) = srv.get_json(&format!("/api/recordings/{id}")).await;
        if frames_of_alice(&doc) > 20 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "alice is recorded: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What the watcher heard so far (alice's arrival, the recorder's) is not the point.
    while next_within(&mut watcher, Duration::from_millis(100))
        .await
        .is_some()
    {}
    let cut_at = Instant::now();
    assert_eq!(proxy.cut(), 1, "alice's signaling went through the proxy");
    let (_, doc) = srv.get_json(&format!("/api/recordings/{id}")).await;
    let frames_at_cut = frames_of_alice(&doc);
    while alice.stats.resumes.load(Ordering::SeqCst) == 0 {
        assert!(cut_at.elapsed() < Duration::from_secs(30), "alice resumes");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let resumed_after = cut_at.elapsed();
    println!("WS drop → resumed signaling (client): {resumed_after:?}");
    assert_eq!(proxy.accepted(), 2, "one reconnect");
    let ids: Vec<String> = hub(&srv).peers("rec").into_iter().map(|p| p.id).collect();
    assert!(ids.contains(&alice.id), "{ids:?}");
    assert_eq!(ids.len(), 3, "watcher, alice, recorder: {ids:?}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, done) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), json!({}))
        .await;
    assert_eq!(done["state"], "stopped", "{done}");
    assert!(
        frames_of_alice(&done) > frames_at_cut + 20,
        "frames after the drop: {} at the cut, {} at the end",
        frames_at_cut,
        frames_of_alice(&done)
    );
    let files: Vec<&str> = done["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["participant"] == alice.id.as_str())
        .map(|t| t["file"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 2, "one video and one audio track: {files:?}");
    assert!(
        files.iter().all(|f| f.contains("-1.")),
        "no new file index: {files:?}"
    );
    // The watcher heard nothing of alice's drop (the recording's stop only).
    let mut seen = Vec::new();
    while let Some(m) = next_within(&mut watcher, Duration::from_millis(300)).await {
        seen.push(m);
    }
    assert!(
        !seen
            .iter()
            .any(|m| m["id"] == alice.id.as_str() || m["peer"]["id"] == alice.id.as_str()),
        "the others see no peer-left or peer-joined of alice: {seen:?}"
    );
    alice.leave().await;
    srv.shutdown().await;
}

/// The page's own reconnect (src/web/call.js, run by Node against the server): its socket is
/// cut, and it resumes by itself with its token: same id, "reconnecting" then "reconnected",
/// and the room saw nothing.
#[tokio::test]
async fn the_page_reconnects_by_itself() {
    use tokio::io::AsyncBufReadExt;
    if !tool_available("node") {
        return;
    }
    let srv = TestServer::start().await;
    let proxy = CutProxy::start(srv.server.as_ref().unwrap().addr).await;
    let mut watcher = connect(&format!("{}/rooms/page/ws?name=w", ws_base(&srv.base))).await;
    next_json(&mut watcher).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/resume_page.mjs");
    let mut child = tokio::process::Command::new("node")
        .arg("--experimental-websocket")
        .arg(&script)
        .args([proxy.base().as_str(), "page"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_event = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(40), lines.next_line())
            .await
            .expect("the script reports in time")
            .unwrap()
            .expect("a line");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("JSON line: {line}"))
    };
    let joined = next_event().await;
    assert_eq!(joined["event"], "joined", "{joined}");
    let id = joined["id"].as_str().unwrap().to_owned();
    assert_eq!(joined["connections"], 1, "a link toward the watcher");
    assert_eq!(next_json(&mut watcher).await["type"], "peer-joined");
    assert_eq!(proxy.cut(), 1);
    let reconnecting = next_event().await;
    assert_eq!(reconnecting["event"], "reconnecting", "{reconnecting}");
    let reconnected = next_event().await;
    assert_eq!(reconnected["event"], "reconnected", "{reconnected}");
    assert_eq!(reconnected["id"], id.as_str(), "same id");
    assert_eq!(
        reconnected["connections"], 1,
        "the link stays up: {reconnected}"
    );
    println!("page: WS drop → resumed in {} ms", reconnected["after_ms"]);
    // The watcher hears only the page's final leave, never a drop.
    assert_eq!(
        next_json(&mut watcher).await,
        json!({"type": "peer-left", "id": id}),
        "the page's leave, after the resume"
    );
    assert_eq!(proxy.accepted(), 2);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    srv.shutdown().await;
}
