//! Abuse from the network, part 2 (issue 17 items 6, 8, 9), on loopback: names that would forge
//! log lines or reorder text, WHIP sessions ended from another room or without their secret,
//! error replies that left the JSON shape, a lowercase bearer scheme, duplicate JSON keys.

mod common;

use common::*;
use futures::SinkExt;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Percent-encodes every byte outside the URL's unreserved set.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn connect(url: String) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connects")
        .0
}

/// A name with CR/LF (a forged log line), NUL, an ANSI colour sequence, a bidi override and
/// isolate, zero-width characters, a line separator, and letters that must stay.
const HOSTILE: &str =
    "eve\r\nERROR forged line\0\u{1b}[31mred\u{202e}txt\u{2066}\u{200b}\u{feff}\u{2028} Zoë 李";
/// What a room shows for it.
const CLEANED: &str = "eveERROR forged line[31mredtxt Zoë 李";

/// Item 6: names are cleaned where a peer joins (WebSocket and WHIP): what the other peers and
/// `/api/rooms` show has no control or format character; the real binary's log, on a pipe,
/// has no ANSI code and no raw CR/LF/ESC/NUL/bidi character from the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_are_cleaned_and_the_log_stays_plain() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_recbot"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--udp-bind",
            "127.0.0.1",
        ])
        .arg("--recordings-dir")
        .arg(dir.path())
        .args(["--log", "info"])
        .env_remove("NO_COLOR")
        .env_remove("RECBOT_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("recbot starts");
    let log = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut stderr = child.stderr.take().unwrap();
    let reader = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                log.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        })
    };
    // The address from the "listening" line.
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
            if let Some(line) = text.lines().find(|l| l.contains("listening")) {
                let at = line.find("127.0.0.1:").expect("address in the line");
                let addr: String = line[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                return addr;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("recbot listens within 20 s");
    let base = format!("http://{addr}");

    let mut alice = connect(format!("ws://{addr}/rooms/h/ws?name=alice")).await;
    assert_eq!(next_json(&mut alice).await["type"], "welcome");
    let before = log.lock().unwrap().len();
    let mut eve = connect(format!("ws://{addr}/rooms/h/ws?name={}", encode(HOSTILE))).await;
    let welcome = next_json(&mut eve).await;
    assert_eq!(welcome["peers"][0]["name"], "alice");
    let joined = next_json(&mut alice).await;
    assert_eq!(joined["type"], "peer-joined");
    let eve_id = joined["peer"]["id"].as_str().unwrap().to_owned();
    let join_log = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let new = log.lock().unwrap()[before..].to_vec();
            if String::from_utf8_lossy(&new).contains(&eve_id) {
                return new;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the join is logged");
    eprintln!(
        "log bytes for one hostile WebSocket join: {} ({:?})",
        join_log.len(),
        String::from_utf8_lossy(&join_log)
    );
    assert_eq!(joined["peer"]["name"], CLEANED, "{joined}");

    let cam = recbot::client::start_whip(
        &format!("{base}/rooms/h/whip?name={}", encode(HOSTILE)),
        None,
        clip(),
        factory(),
    )
    .await
    .expect("WHIP publisher starts");
    let joined = next_json(&mut alice).await;
    assert_eq!(joined["type"], "peer-joined");
    assert_eq!(joined["peer"]["whip"], true);
    assert_eq!(joined["peer"]["name"], CLEANED, "{joined}");

    let rooms: serde_json::Value = reqwest::get(format!("{base}/api/rooms"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let peers = rooms["rooms"][0]["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3, "{rooms}");
    for peer in peers.iter().filter(|p| p["name"] != "alice") {
        assert_eq!(peer["name"], CLEANED, "{rooms}");
    }
    cam.leave().await;
    drop(eve);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();

    let log = log.lock().unwrap().clone();
    let text = String::from_utf8(log.clone()).expect("the log is UTF-8");
    assert!(
        text.contains(&eve_id) && text.contains(CLEANED),
        "the hostile join is logged: {text}"
    );
    for (what, bad) in [
        ("ESC (ANSI)", '\u{1b}'),
        ("CR", '\r'),
        ("NUL", '\0'),
        ("a bidi override", '\u{202e}'),
        ("a bidi isolate", '\u{2066}'),
        ("a zero-width space", '\u{200b}'),
        ("a line separator", '\u{2028}'),
    ] {
        assert!(!text.contains(bad), "the log holds {what}: {text:?}");
    }
    for line in text.lines() {
        assert!(
            !line.trim_start().starts_with("ERROR forged"),
            "a forged log line: {text}"
        );
    }
}

/// Item 8: a WHIP session is ended only through its own Location (its room, its secret, the
/// room token as bearer) or by the API token; another room or a missing or wrong secret is
/// `404` and leaves the session running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_sessions_end_only_through_their_own_location() {
    let srv = TestServer::start_with(|a| {
        a.room_token = Some("rt".into());
        a.api_token = Some("at".into());
    })
    .await;
    let publish = |room: &str, name: &str| {
        let url = srv.url(&format!("/rooms/{room}/whip?name={name}"));
        async move { recbot::client::start_whip(&url, Some("rt"), clip(), factory()).await }
    };
    let cam_a = publish("a", "cam-a").await.expect("WHIP in room a");
    let cam_b = publish("b", "cam-b").await.expect("WHIP in room b");
    let whip_peer = |room: &'static str| {
        let http = srv.http.clone();
        let url = srv.url("/api/rooms");
        async move {
            let rooms: serde_json::Value = http
                .get(url)
                .bearer_auth("at")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            rooms["rooms"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["room"] == room)
                .and_then(|r| r["peers"][0]["id"].as_str().map(str::to_owned))
        }
    };
    let a_peer = whip_peer("a").await.expect("cam-a in room a");
    let b_peer = whip_peer("b").await.expect("cam-b in room b");
    // The Location's last segment is `{peer id}.{secret}` (checked below).
    let a_secret = cam_a.id.split_once('.').map_or("", |(_, s)| s);

    let delete = |path: String, token: &'static str| {
        srv.http.delete(srv.url(&path)).bearer_auth(token).send()
    };
    let refused = [
        format!("/rooms/b/whip/{}", cam_a.id),
        format!("/rooms/a/whip/{a_peer}"),
        format!("/rooms/a/whip/{a_peer}."),
        format!("/rooms/a/whip/{a_peer}.{}", "0".repeat(a_secret.len())),
        format!("/rooms/a/whip/{}", cam_b.id),
    ];
    for path in &refused {
        let r = delete(path.clone(), "rt").await.unwrap();
        assert_eq!(r.status(), 404, "DELETE {path}");
        let r = srv
            .http
            .patch(srv.url(path))
            .bearer_auth("rt")
            .body("a=end-of-candidates")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "PATCH {path}");
    }
    // Without the room token even the right Location is refused.
    let r = srv
        .http
        .delete(srv.url(&format!("/rooms/a/whip/{}", cam_a.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(whip_peer("a").await.as_deref(), Some(a_peer.as_str()));
    assert_eq!(whip_peer("b").await.as_deref(), Some(b_peer.as_str()));
    assert_eq!(
        cam_a.id.split_once('.').map(|(id, _)| id),
        Some(a_peer.as_str()),
        "the session is named by its peer id"
    );
    assert!(a_secret.len() >= 32, "a secret of its own: {}", cam_a.id);

    // The owner ends its session through its Location.
    let r = delete(format!("/rooms/a/whip/{}", cam_a.id), "rt")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(whip_peer("a").await, None);
    assert_eq!(whip_peer("b").await.as_deref(), Some(b_peer.as_str()));
    // An operator ends one by its peer id with the API token, in its room only.
    let r = delete(format!("/rooms/a/whip/{b_peer}"), "at")
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = delete(format!("/rooms/b/whip/{b_peer}"), "at")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(whip_peer("b").await, None);
    cam_a.leave().await;
    cam_b.leave().await;
    srv.shutdown().await;
}

/// Asserts the SPEC §4 error shape: JSON `{"error": {code, message}}` with `status`.
async fn assert_json_error(r: reqwest::Response, status: u16, what: &str) -> serde_json::Value {
    assert_eq!(r.status().as_u16(), status, "{what}");
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = r.text().await.unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{what}: {content_type} {body:?}"
    );
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["error"]["code"].is_string() && json["error"]["message"].is_string(),
        "{what}: {json}"
    );
    json
}

/// Item 9: every rejection is a JSON error (413, 415, 400 for a path, a query or a body, 405,
/// a WebSocket route without an upgrade); `Authorization: bearer` in any case works; a
/// signaling message with a duplicate key is refused with `bad-message`, not executed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_slips_are_closed() {
    let srv = TestServer::start_with(|a| a.api_token = Some("at".into())).await;
    let http = &srv.http;
    let big = "a".repeat(65 * 1024);

    let r = http
        .post(srv.url("/rooms/r/whip"))
        .header("content-type", "application/sdp")
        .body(format!("v=0\r\n{big}"))
        .send()
        .await
        .unwrap();
    let e = assert_json_error(r, 413, "WHIP body over 64 KiB").await;
    assert_eq!(e["error"]["code"], "too-large");
    let r = http
        .post(srv.url("/api/recordings"))
        .bearer_auth("at")
        .header("content-type", "application/json")
        .body(format!("{{\"room\": \"{big}\"}}"))
        .send()
        .await
        .unwrap();
    assert_json_error(r, 413, "API body over 64 KiB").await;
    let r = http
        .post(srv.url("/api/recordings"))
        .bearer_auth("at")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_json_error(r, 415, "API body not JSON").await;
    let r = http
        .post(srv.url("/api/recordings"))
        .bearer_auth("at")
        .header("content-type", "application/json")
        .body("{\"room\": ")
        .send()
        .await
        .unwrap();
    assert_json_error(r, 400, "broken JSON").await;
    for path in [
        "/api/recordings/%FF%FE",
        "/rooms/%FF/ws",
        "/rooms/%C3%28/whip/x",
        "/rooms/r/ws?name=%FF",
    ] {
        let r = http
            .get(srv.url(path))
            .bearer_auth("at")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
        let status = r.status().as_u16();
        assert_json_error(r, status, path).await;
    }
    let r = http
        .delete(srv.url("/rooms/%C3%28/whip/x"))
        .send()
        .await
        .unwrap();
    assert_json_error(r, 400, "DELETE with a path that is not UTF-8").await;
    let r = http
        .put(srv.url("/api/recordings"))
        .bearer_auth("at")
        .send()
        .await
        .unwrap();
    let allow = r.headers().get("allow").cloned();
    let e = assert_json_error(r, 405, "PUT /api/recordings").await;
    assert_eq!(e["error"]["code"], "method-not-allowed");
    assert!(allow.is_some(), "405 keeps its Allow header");

    // RFC 9110: the auth scheme is case-insensitive.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = http
            .get(srv.url("/api/rooms"))
            .header("authorization", format!("{scheme} at"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    let r = http
        .get(srv.url("/api/rooms"))
        .header("authorization", "bearer wrong")
        .send()
        .await
        .unwrap();
    assert_json_error(r, 401, "a wrong token").await;

    // Duplicate keys: refused, and nothing reaches either `to`.
    let mut a = connect(srv.ws_url("/rooms/d/ws?name=a")).await;
    let a_id = next_json(&mut a).await["id"].as_str().unwrap().to_owned();
    let mut b = connect(srv.ws_url("/rooms/d/ws?name=b")).await;
    let b_id = next_json(&mut b).await["id"].as_str().unwrap().to_owned();
    assert_eq!(next_json(&mut a).await["type"], "peer-joined");
    let mut c = connect(srv.ws_url("/rooms/d/ws?name=c")).await;
    next_json(&mut c).await;
    assert_eq!(next_json(&mut a).await["type"], "peer-joined");
    assert_eq!(next_json(&mut b).await["type"], "peer-joined");
    let text = format!(r#"{{"type":"offer","to":"{a_id}","to":"{b_id}","sdp":"v=0"}}"#);
    c.send(Message::Text(text.into())).await.unwrap();
    let reply = next_json(&mut c).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "bad-message", "{reply}");
    // A marker the hub does relay, sent after: whatever reaches a or b first shows whether
    // the duplicate-key offer was relayed.
    for to in [&a_id, &b_id] {
        let text = format!(r#"{{"type":"candidate","to":"{to}","candidate":null}}"#);
        c.send(Message::Text(text.into())).await.unwrap();
    }
    for ws in [&mut a, &mut b] {
        let first = next_json(ws).await;
        assert_eq!(
            first["type"], "candidate",
            "nothing before the marker: {first}"
        );
    }
    srv.shutdown().await;
}
