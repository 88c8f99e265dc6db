//! Production behaviour: the systemd unit verifies, a full disk stops recordings cleanly and
//! refuses new ones, limits answer as documented, metrics are served, and a matrix of hostile
//! input gets its documented answer at every entry point.

mod common;

use common::*;
use recbot::record::ogg::read_ogg_opus;
use recbot::record::webm_reader::read_webm;
use std::process::Command;
use std::time::Duration;

/// `systemd-analyze verify` on the unit as written, with its man-page check on: the
/// `Documentation=man:recbot(1)` link must resolve to the page `recbot man` generates (looked up
/// by `man` through MANPATH, as after the README's install step).
#[test]
fn the_systemd_unit_verifies() {
    if !tool_available("systemd-analyze") || !tool_available("man") {
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/recbot.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("Documentation=man:recbot(1)"));
    // The install step writes the pages with the binary itself; here into a temp MANPATH, so
    // that a page installed on this machine cannot stand in for the generated one.
    let dir = tempfile::tempdir().unwrap();
    let man_dir = dir.path().join("man");
    let out = Command::new(env!("CARGO_BIN_EXE_recbot"))
        .arg("man")
        .arg("--out")
        .arg(man_dir.join("man1"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = std::fs::read_to_string(man_dir.join("man1/recbot.1")).unwrap();
    assert!(page.contains(".TH recbot 1"), "{page}");
    for sub in ["serve", "publish", "repair", "inspect"] {
        assert!(
            man_dir.join(format!("man1/recbot-{sub}.1")).is_file(),
            "{sub}"
        );
    }
    // Verify the unit as written, with ExecStart pointing at the binary just built.
    let unit = unit.replace("/usr/local/bin/recbot", env!("CARGO_BIN_EXE_recbot"));
    let path = dir.path().join("recbot.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", &man_dir)
        .output()
        .expect("systemd-analyze runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("recbot.service"))
        .collect();
    assert!(out.status.success() && problems.is_empty(), "{text}");
    // What `man recbot` shows is the real command line: subcommands and RECBOT_* settings.
    let shown = Command::new("man")
        .args(["-P", "cat", "1", "recbot"])
        .env("MANPATH", &man_dir)
        .env("MANWIDTH", "200")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    for needle in [
        "recbot-serve(1)",
        "--recordings-dir",
        "RECBOT_RECORDINGS_DIR",
    ] {
        assert!(shown.contains(needle), "{needle} not in:\n{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_recordings_cleanly_and_refuses_new_ones() {
    let _serial = heavy().await;
    let srv = TestServer::start().await;
    let publisher = recbot::client::start(
        &srv.base,
        "disk",
        "d",
        clip(),
        factory(),
        Default::default(),
    )
    .await
    .unwrap();
    let (status, rec) = srv
        .post_json("/api/recordings", serde_json::json!({"room": "disk"}))
        .await;
    assert_eq!(status, 201);
    let id = rec["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let app = std::sync::Arc::clone(&srv.server.as_ref().unwrap().app);
    app.services.disk.set_min_free(u64::MAX);
    let mut doc = serde_json::Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        doc = srv.get_json(&format!("/api/recordings/{id}")).await.1;
        if doc["state"] == "failed" {
            break;
        }
    }
    assert_eq!(doc["state"], "failed", "{doc}");
    assert_eq!(doc["stop_reason"], "disk-full");
    assert!(doc["error"].as_str().unwrap().contains("disk full"));
    for track in doc["tracks"].as_array().unwrap() {
        let path = srv
            .dir
            .path()
            .join(&id)
            .join(track["file"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        if track["kind"] == "video" {
            let info = read_webm(std::io::Cursor::new(&bytes[..])).unwrap();
            assert!(!info.cues.is_empty() && info.duration_ms.unwrap_or(0.0) > 1000.0);
        } else {
            assert!(read_ogg_opus(std::io::Cursor::new(&bytes[..])).unwrap().eos);
        }
        ffmpeg_decodes_cleanly(&path);
    }
    let (status, err) = srv
        .post_json("/api/recordings", serde_json::json!({"room": "disk"}))
        .await;
    assert_eq!(status, 507, "{err}");
    assert_eq!(err["error"]["code"], "disk-full");
    app.services.disk.set_min_free(0);
    tokio::time::sleep(recbot::record::disk::CHECK_EVERY + Duration::from_millis(500)).await;
    let (status, _) = srv
        .post_json("/api/recordings", serde_json::json!({"room": "disk"}))
        .await;
    assert_eq!(status, 201, "recording again once there is space");
    publisher.leave().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn limits_and_metrics() {
    let srv = TestServer::start_with(|a| {
        a.max_rooms = 1;
        a.max_peers_per_room = 1;
    })
    .await;
    let (mut a, _) = tokio_tungstenite::connect_async(srv.ws_url("/rooms/one/ws"))
        .await
        .unwrap();
    use futures::StreamExt;
    let _ = a.next().await;
    for room in ["one", "two"] {
        match tokio_tungstenite::connect_async(srv.ws_url(&format!("/rooms/{room}/ws"))).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 503, "{room}")
            }
            other => panic!("{room}: expected 503, got {other:?}"),
        }
    }
    let r = srv.http.get(srv.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for name in [
        "recbot_rooms",
        "recbot_peers",
        "recbot_ws_connections",
        "recbot_recordings_active",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing in:\n{text}"
        );
    }
    srv.shutdown().await;
}

/// Every entry point with bad input: the documented status, a JSON error, nothing crashes.
#[tokio::test]
async fn hostile_input_matrix() {
    let srv = TestServer::start_with(|a| {
        a.api_token = Some("api-secret".into());
        a.room_token = Some("room-secret".into());
    })
    .await;
    let http = &srv.http;
    let huge = "x".repeat(200 * 1024);
    // (method, path, token, content type, body, expected status)
    type Case<'a> = (
        &'a str,
        String,
        Option<&'a str>,
        Option<&'a str>,
        String,
        u16,
    );
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/api/recordings".into(),
            None,
            None,
            String::new(),
            401,
        ),
        (
            "GET",
            "/api/recordings".into(),
            Some("wrong"),
            None,
            String::new(),
            401,
        ),
        ("GET", "/metrics".into(), None, None, String::new(), 401),
        (
            "POST",
            "/api/recordings".into(),
            Some("api-secret"),
            Some("application/json"),
            "{".into(),
            400,
        ),
        (
            "POST",
            "/api/recordings".into(),
            Some("api-secret"),
            Some("application/json"),
            r#"{"room": ["x"]}"#.into(),
            400,
        ),
        (
            "POST",
            "/api/recordings".into(),
            Some("api-secret"),
            Some("application/json"),
            r#"{"room": "a", "pli_interval_ms": "fast"}"#.into(),
            400,
        ),
        (
            "POST",
            "/api/recordings".into(),
            Some("api-secret"),
            Some("application/json"),
            r#"{"room": "a", "max_duration_s": -1}"#.into(),
            400,
        ),
        (
            "POST",
            "/api/recordings".into(),
            Some("api-secret"),
            Some("application/json"),
            format!(r#"{{"room": "{huge}"}}"#),
            413,
        ),
        (
            "POST",
            "/api/recordings".into(),
            Some("api-secret"),
            Some("text/plain"),
            r#"{"room": "a"}"#.into(),
            415,
        ),
        (
            "GET",
            "/api/recordings/..%2F..%2Fetc".into(),
            Some("api-secret"),
            None,
            String::new(),
            404,
        ),
        (
            "GET",
            "/api/recordings/x/files/..%2Fmanifest.json".into(),
            Some("api-secret"),
            None,
            String::new(),
            404,
        ),
        (
            "DELETE",
            "/api/recordings/none".into(),
            Some("api-secret"),
            None,
            String::new(),
            404,
        ),
        (
            "POST",
            "/api/recordings/none/stop".into(),
            Some("api-secret"),
            None,
            String::new(),
            404,
        ),
        (
            "POST",
            "/rooms/r/whip".into(),
            None,
            Some("application/sdp"),
            "v=0".into(),
            401,
        ),
        (
            "POST",
            "/rooms/r/whip".into(),
            Some("room-secret"),
            Some("application/sdp"),
            "\u{0}\u{1}garbage".into(),
            400,
        ),
        (
            "POST",
            "/rooms/r/whip".into(),
            Some("room-secret"),
            Some("application/sdp"),
            huge.clone(),
            413,
        ),
        (
            "POST",
            "/rooms/r/whip".into(),
            Some("api-secret"),
            Some("application/sdp"),
            "v=0".into(),
            401,
        ),
        ("GET", "/nowhere".into(), None, None, String::new(), 404),
    ];
    for (method, path, token, ctype, body, expected) in cases {
        let mut req = http
            .request(method.parse().unwrap(), srv.url(&path))
            .body(body.clone());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(c) = ctype {
            req = req.header("content-type", c);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(
            status,
            expected,
            "{method} {} → {text}",
            &path[..path.len().min(60)]
        );
        if status >= 400 && status != 413 {
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
            assert!(v["error"]["code"].is_string(), "{v}");
        }
    }
    // The room token on the WebSocket, and nothing of it in the logs' error texts.
    for query in ["", "?token=", "?token=api-secret"] {
        match tokio_tungstenite::connect_async(srv.ws_url(&format!("/rooms/r/ws{query}"))).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 401)
            }
            other => panic!("{query}: expected 401, got {other:?}"),
        }
    }
    // Health needs no token.
    assert_eq!(
        http.get(srv.url("/healthz")).send().await.unwrap().status(),
        200
    );
    srv.shutdown().await;
}

/// Manifest temp files a crash left (the old fixed name and the unique ones) are removed by
/// the startup recovery, in finished and unfinished recordings alike, and never listed.
#[test]
fn stale_manifest_temps_are_removed_at_startup_and_never_listed() {
    use recbot::record::manifest::{read_manifest, write_manifest, RecordingDoc, State};
    let root = tempfile::tempdir().unwrap();
    let ids = ["20261120-210000-00000a", "20261120-210100-00000b"];
    for (id, state) in ids.iter().zip([State::Recording, State::Stopped]) {
        let dir = root.path().join(id);
        std::fs::create_dir(&dir).unwrap();
        let doc = RecordingDoc {
            id: (*id).into(),
            room: "demo".into(),
            state,
            bot_peer: None,
            started_at: "2026-11-20T21:00:00.000Z".into(),
            stopped_at: None,
            error: None,
            stop_reason: None,
            tracks: vec![],
            files: vec![],
            paused: false,
            paused_ms: 0,
            chat_messages: 0,
            chat_dropped: 0,
            upload: None,
            node: None,
            takeovers: None,
            composite: None,
        };
        write_manifest(&dir, &doc).unwrap();
        for name in [".manifest.json.tmp", ".manifest.k3Jx9Q.tmp"] {
            std::fs::write(dir.join(name), br#"{"id": "torn"#).unwrap();
        }
    }
    let store = recbot::record::store::RecordingStore::open(root.path(), 4).unwrap();
    assert_eq!(store.list().len(), 2);
    for id in ids {
        let dir = root.path().join(id);
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["manifest.json".to_owned()], "{id}");
        let doc = store.get(id).unwrap().doc();
        assert!(doc.files.is_empty(), "{:?}", doc.files);
        assert_eq!(read_manifest(&dir).unwrap().files, doc.files);
    }
}
