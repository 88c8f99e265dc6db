//! The recordings API's answers to bad and conflicting requests, over real HTTP, with a real
//! publisher so recordings have files.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_limits_and_bad_requests() {
    let _serial = heavy().await;
    let srv = TestServer::start_with(|a| a.max_recordings = 2).await;
    let pub1 = recbot::client::start(&srv.base, "api", "p", clip(), factory(), Default::default())
        .await
        .unwrap();

    // Bad bodies: 400 with the SPEC's error shape.
    for body in [
        serde_json::json!({}),
        serde_json::json!({"room": "bad room"}),
        serde_json::json!({"room": "ok", "extra": 1}),
        serde_json::json!({"room": 5}),
        serde_json::json!({"room": "ok", "audio": "mp3"}),
        serde_json::json!({"room": "ok", "pli_interval_ms": 5}),
        serde_json::json!({"room": "ok", "max_duration_s": 0}),
    ] {
        let (status, err) = srv.post_json("/api/recordings", body.clone()).await;
        assert_eq!(status, 400, "{body} → {err}");
        assert!(err["error"]["code"].is_string(), "{err}");
        assert!(err["error"]["message"].is_string(), "{err}");
    }
    let r = srv
        .http
        .post(srv.url("/api/recordings"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let (status, rec) = srv
        .post_json("/api/recordings", serde_json::json!({"room": "api"}))
        .await;
    assert_eq!(status, 201);
    let id = rec["id"].as_str().unwrap().to_owned();
    let (status, err) = srv
        .post_json("/api/recordings", serde_json::json!({"room": "api"}))
        .await;
    assert_eq!(status, 409, "{err}");
    // The room need not exist yet; the concurrency limit answers 503.
    let (status, other) = srv
        .post_json("/api/recordings", serde_json::json!({"room": "empty"}))
        .await;
    assert_eq!(status, 201);
    let (status, _) = srv
        .post_json("/api/recordings", serde_json::json!({"room": "third"}))
        .await;
    assert_eq!(status, 503);

    // Listing: newest first.
    let (_, list) = srv.get_json("/api/recordings").await;
    let ids: Vec<&str> = list["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![other["id"].as_str().unwrap(), id.as_str()]);

    let (status, _) = srv.get_json("/api/recordings/nope").await;
    assert_eq!(status, 404);
    let r = srv
        .http
        .delete(srv.url(&format!("/api/recordings/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "delete while recording");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, live) = srv.get_json(&format!("/api/recordings/{id}")).await;
    let file = live["files"][0]["name"]
        .as_str()
        .expect("a file while recording")
        .to_owned();
    // Downloads of a growing file work too.
    let r = srv
        .http
        .get(srv.url(&format!("/api/recordings/{id}/files/{file}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Names that try to leave the folder: 404, whatever the encoding.
    for name in [
        "..",
        "..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "..%5C..%5Cwindows",
        ".manifest.json.tmp",
        "%2e%2e",
        "nothing.webm",
    ] {
        let r = srv
            .http
            .get(srv.url(&format!("/api/recordings/{id}/files/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{name}");
    }
    let r = srv
        .http
        .get(srv.url("/api/recordings/..%2F..%2F/files/manifest.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Stop twice: both answer the stopped recording.
    let (s1, a) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
        .await;
    let (s2, b) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
        .await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(a["state"], "stopped");
    assert_eq!(a, b);
    let r = srv
        .http
        .delete(srv.url(&format!("/api/recordings/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(!srv.dir.path().join(&id).exists());
    let (status, _) = srv.get_json(&format!("/api/recordings/{id}")).await;
    assert_eq!(status, 404);

    let r = srv.http.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    pub1.leave().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn api_token_is_required_when_configured() {
    let srv = TestServer::start_with(|a| a.api_token = Some("tok".into())).await;
    let r = srv
        .http
        .get(srv.url("/api/recordings"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = srv
        .http
        .get(srv.url("/api/recordings"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = srv
        .http
        .get(srv.url("/api/recordings"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = srv.http.get(srv.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = srv.http.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    srv.shutdown().await;
}

#[tokio::test]
async fn unfinished_recordings_are_marked_failed_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let rec_dir = dir.path().join("20260101-000000-abcdef");
    std::fs::create_dir_all(&rec_dir).unwrap();
    std::fs::write(
        rec_dir.join("manifest.json"),
        serde_json::json!({
            "id": "20260101-000000-abcdef", "room": "x", "state": "recording", "bot_peer": "b",
            "started_at": "2026-01-01T00:00:00.000Z", "stopped_at": null, "error": null,
            "stop_reason": null, "tracks": [], "files": []
        })
        .to_string(),
    )
    .unwrap();
    let path = dir.path().to_owned();
    let srv = TestServer::start_with(move |a| a.recordings_dir = path).await;
    let (status, rec) = srv.get_json("/api/recordings/20260101-000000-abcdef").await;
    assert_eq!(status, 200);
    assert_eq!(rec["state"], "failed");
    assert_eq!(rec["stop_reason"], "interrupted");
    srv.shutdown().await;
}

/// JSON has one number type: `max_duration_s: 5.0` is five seconds, not a type error; a
/// fraction or a negative number is a 400 that names the field.
#[tokio::test]
async fn whole_numbers_in_any_spelling() {
    let srv = TestServer::start().await;
    let (status, rec) = srv
        .post_json(
            "/api/recordings",
            serde_json::json!({"room": "floats", "max_duration_s": 5.0, "pli_interval_ms": 500.0}),
        )
        .await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_owned();
    let (status, _) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200);
    for (field, value) in [
        ("max_duration_s", serde_json::json!(5.5)),
        ("max_duration_s", serde_json::json!(-1)),
        ("max_duration_s", serde_json::json!(-5.0)),
        ("pli_interval_ms", serde_json::json!(500.25)),
        ("pli_interval_ms", serde_json::json!(-500)),
    ] {
        let mut body = serde_json::json!({"room": "floats2"});
        body[field] = value.clone();
        let (status, err) = srv.post_json("/api/recordings", body).await;
        assert_eq!(status, 400, "{field}: {value} → {err}");
        assert_eq!(err["error"]["code"], "bad-request", "{err}");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{field}: {value} → {message}");
    }
    // Unknown fields stay refused.
    let (status, _) = srv
        .post_json(
            "/api/recordings",
            serde_json::json!({"room": "floats2", "max_duration_s": 5.0, "colour": 1}),
        )
        .await;
    assert_eq!(status, 400);
    srv.shutdown().await;
}

/// SPEC §1, DNS rebinding: without an API token, /api and /metrics answer only requests whose
/// `Host` is a loopback name or a name in `--allowed-hosts`; others get `403 forbidden-host`.
/// `/healthz` and the page stay open (no data). With a token, the token protects instead.
#[tokio::test]
async fn foreign_hosts_are_refused_without_a_token() {
    let srv = TestServer::start_with(|a| a.allowed_hosts = vec!["recbot.test".into()]).await;
    let port = srv.base.rsplit(':').next().unwrap().to_owned();
    let send = |method: reqwest::Method, path: &str, host: String| {
        let mut r = srv
            .http
            .request(method.clone(), srv.url(path))
            .header("host", host.clone());
        if method == reqwest::Method::POST {
            r = r
                .header("origin", format!("http://{host}"))
                .json(&serde_json::json!({"room": "rebound"}));
        }
        r.send()
    };
    let foreign = format!("rebind.attacker.example:{port}");
    for (method, path) in [
        (reqwest::Method::POST, "/api/recordings"),
        (reqwest::Method::GET, "/api/recordings"),
        (reqwest::Method::GET, "/api/rooms"),
        (reqwest::Method::GET, "/api/bots"),
        (reqwest::Method::GET, "/metrics"),
    ] {
        let r = send(method.clone(), path, foreign.clone()).await.unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden-host", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("--allowed-hosts"), "{message}");
    }
    let (_, list) = srv.get_json("/api/recordings").await;
    assert_eq!(
        list["recordings"],
        serde_json::json!([]),
        "nothing was started"
    );
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("recbot.test:{port}"),
        "recbot.test".to_owned(),
    ] {
        for path in ["/api/recordings", "/metrics"] {
            let r = send(reqwest::Method::GET, path, host.clone())
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{host} {path}");
        }
    }
    for path in ["/healthz", "/"] {
        let r = send(reqwest::Method::GET, path, foreign.clone())
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} stays open");
    }
    srv.shutdown().await;

    let srv = TestServer::start_with(|a| a.api_token = Some("tok".into())).await;
    let r = srv
        .http
        .get(srv.url("/api/recordings"))
        .header("host", "recbot.example.com")
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "with a token every Host is served");
    srv.shutdown().await;
}

/// The code of a refused WebSocket upgrade (its JSON error body), with the status.
async fn ws_refusal(srv: &TestServer, path: &str) -> (u16, String) {
    match tokio_tungstenite::connect_async(srv.ws_url(path)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            let body: serde_json::Value =
                serde_json::from_slice(r.body().as_deref().unwrap_or_default()).unwrap_or_default();
            let code = body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (r.status().as_u16(), code)
        }
        other => panic!("expected a refused upgrade on {path}, got {other:?}"),
    }
}

/// Issue 11: one error code per cause on every route. A bad room name is `400 bad-room` on the
/// WebSocket, WHIP, recordings and bots routes; the hub's refusals are `503 room-full` (the room
/// has its peers), `too-many-rooms` (no room left for this kind of member) wherever a member
/// joins.
#[tokio::test]
async fn each_cause_has_one_code_on_every_route() {
    let srv = TestServer::start_with(|a| {
        a.max_rooms = 2;
        a.reserved_rooms = 1;
        a.max_peers_per_room = 1;
    })
    .await;
    let bad = "bad.room";
    assert_eq!(
        ws_refusal(&srv, &format!("/rooms/{bad}/ws")).await,
        (400, "bad-room".to_owned())
    );
    let r = srv
        .http
        .post(srv.url(&format!("/rooms/{bad}/whip")))
        .header("content-type", "application/sdp")
        .body("v=0\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let err: serde_json::Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "bad-room", "{err}");
    for (path, body) in [
        ("/api/recordings", serde_json::json!({"room": bad})),
        (
            "/api/bots",
            serde_json::json!({"room": bad, "mode": "echo"}),
        ),
    ] {
        let (status, err) = srv.post_json(path, body).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (400, Some("bad-room")),
            "{path}: {err}"
        );
    }

    // A client holds the one room clients may open, and fills it (one peer per room).
    use futures::StreamExt;
    let (mut client, _) = tokio_tungstenite::connect_async(srv.ws_url("/rooms/full/ws"))
        .await
        .unwrap();
    let _ = client.next().await; // welcome: joined
    assert_eq!(
        ws_refusal(&srv, "/rooms/full/ws").await,
        (503, "room-full".to_owned())
    );
    assert_eq!(
        ws_refusal(&srv, "/rooms/other/ws").await,
        (503, "too-many-rooms".to_owned())
    );
    for (path, body) in [
        ("/api/recordings", serde_json::json!({"room": "full"})),
        (
            "/api/bots",
            serde_json::json!({"room": "full", "mode": "echo"}),
        ),
    ] {
        let (status, err) = srv.post_json(path, body).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (503, Some("room-full")),
            "{path}: {err}"
        );
    }
    // The reserved room goes to a recording; then no room is left for anyone.
    let (status, rec) = srv
        .post_json("/api/recordings", serde_json::json!({"room": "kept"}))
        .await;
    assert_eq!(status, 201, "{rec}");
    for (path, body) in [
        ("/api/recordings", serde_json::json!({"room": "over"})),
        (
            "/api/bots",
            serde_json::json!({"room": "over", "mode": "echo"}),
        ),
    ] {
        let (status, err) = srv.post_json(path, body).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (503, Some("too-many-rooms")),
            "{path}: {err}"
        );
    }
    drop(client);
    srv.shutdown().await;
}
