//! WHIP ingest (SPEC §3): a WHIP publisher is a peer of its room (`whip: true`), recorded like
//! any other, next to a WebSocket publisher; bad requests get clear answers.

mod common;

use common::*;
use recbot::record::ogg::read_ogg_opus;
use recbot::record::webm_reader::read_webm;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publishers_are_recorded_next_to_websocket_ones() {
    let _serial = heavy().await;
    let srv = TestServer::start().await;
    let whip_url = |name: &str| srv.url(&format!("/rooms/mix/whip?name={name}"));
    let cam = recbot::client::start_whip(&whip_url("cam"), None, clip(), factory())
        .await
        .expect("WHIP publisher starts");
    let ws = recbot::client::start(
        &srv.base,
        "mix",
        "ws",
        clip(),
        factory(),
        Default::default(),
    )
    .await
    .unwrap();
    let (_, rooms) = srv.get_json("/api/rooms").await;
    let peers = rooms["rooms"][0]["peers"].as_array().unwrap().clone();
    let cam_peer = peers
        .iter()
        .find(|p| p["name"] == "cam")
        .expect("WHIP peer listed");
    assert_eq!(cam_peer["whip"], true);
    assert_eq!(cam_peer["bot"], false);

    // The recording starts with the WHIP publisher present; a second one joins later.
    let (status, rec) = srv
        .post_json("/api/recordings", serde_json::json!({"room": "mix"}))
        .await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cam2 = recbot::client::start_whip(&whip_url("cam2"), None, clip(), factory())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, done) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
        .await;
    assert_eq!(done["state"], "stopped");
    let tracks = done["tracks"].as_array().unwrap();
    for who in ["cam", "ws", "cam2"] {
        for kind in ["video", "audio"] {
            assert!(
                tracks
                    .iter()
                    .any(|t| t["participant_name"] == who && t["kind"] == kind),
                "{who} {kind} missing: {done}"
            );
        }
    }
    let work = tempfile::tempdir().unwrap();
    for track in tracks {
        let name = track["file"].as_str().unwrap();
        let bytes = std::fs::read(srv.dir.path().join(&id).join(name)).unwrap();
        if track["kind"] == "video" {
            let info = read_webm(std::io::Cursor::new(&bytes[..])).unwrap();
            assert!(info.blocks[0].keyframe, "{name}");
            assert!(
                info.blocks.len() > 20,
                "{name}: {} frames",
                info.blocks.len()
            );
        } else {
            let info = read_ogg_opus(std::io::Cursor::new(&bytes[..])).unwrap();
            assert!(
                info.eos && info.duration_samples().unwrap_or(0) > 48_000,
                "{name}"
            );
        }
        ffmpeg_decodes_cleanly(&save(work.path(), name, &bytes));
    }

    // DELETE ends the session: the peer leaves the room.
    cam.leave().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, rooms) = srv.get_json("/api/rooms").await;
    let names: Vec<String> = rooms["rooms"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!names.contains(&"cam".to_owned()), "{names:?}");
    cam2.leave().await;
    ws.leave().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn bad_whip_requests_get_clear_answers() {
    let srv = TestServer::start_with(|a| a.room_token = Some("rt".into())).await;
    let http = &srv.http;
    let url = srv.url("/rooms/w/whip");
    let post = |body: &'static str, ctype: Option<&'static str>, token: Option<&'static str>| {
        let mut r = http.post(&url).body(body);
        if let Some(c) = ctype {
            r = r.header("content-type", c);
        }
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(post("v=0", Some("application/sdp"), None).await.unwrap()),
        401
    );
    assert_eq!(
        status(
            post("v=0", Some("application/sdp"), Some("no"))
                .await
                .unwrap()
        ),
        401
    );
    assert_eq!(status(post("v=0", None, Some("rt")).await.unwrap()), 415);
    assert_eq!(
        status(
            post("hello", Some("application/sdp"), Some("rt"))
                .await
                .unwrap()
        ),
        400
    );
    let r = post("v=0\r\no=garbage\r\n", Some("application/sdp"), Some("rt"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let err: serde_json::Value = r.json().await.unwrap();
    assert!(err["error"]["message"].is_string(), "{err}");
    let r = http
        .post(srv.url("/rooms/bad%20room/whip"))
        .header("content-type", "application/sdp")
        .bearer_auth("rt")
        .body("v=0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .delete(srv.url("/rooms/w/whip/nope"))
        .bearer_auth("rt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .delete(srv.url("/rooms/w/whip/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A real session: PATCH (trickle) is 405, DELETE 200, then 404.
    let publisher = recbot::client::start_whip(
        &srv.url("/rooms/w/whip?name=cam"),
        Some("rt"),
        clip(),
        factory(),
    )
    .await
    .expect("WHIP with the room token");
    let session = srv.url(&format!("/rooms/w/whip/{}", publisher.id));
    let r = http
        .patch(&session)
        .bearer_auth("rt")
        .header("content-type", "application/trickle-ice-sdpfrag")
        .body("a=end-of-candidates")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // A WebSocket peer sees the WHIP peer but cannot negotiate with it.
    use futures::{SinkExt, StreamExt};
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url("/rooms/w/ws?name=x&token=rt"))
        .await
        .unwrap();
    let welcome: serde_json::Value = loop {
        if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = ws.next().await {
            break serde_json::from_str(t.as_str()).unwrap();
        }
    };
    let whip_id = welcome["peers"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(welcome["peers"][0]["whip"], true);
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        serde_json::json!({"type":"offer","to":whip_id,"sdp":"v=0"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let reply: serde_json::Value = loop {
        if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = ws.next().await {
            break serde_json::from_str(t.as_str()).unwrap();
        }
    };
    assert_eq!(reply["code"], "not-negotiable", "{reply}");
    let r = http
        .delete(&session)
        .bearer_auth("rt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .delete(&session)
        .bearer_auth("rt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    publisher.leave().await;
    srv.shutdown().await;
}

/// SPEC §1, DNS rebinding: without an API token WHIP answers only loopback names and
/// `--allowed-hosts` names in `Host`; others get `403 forbidden-host` (on DELETE too).
#[tokio::test]
async fn foreign_hosts_are_refused() {
    let srv = TestServer::start_with(|a| a.allowed_hosts = vec!["recbot.test".into()]).await;
    let port = srv.base.rsplit(':').next().unwrap().to_owned();
    let post = |host: String| {
        srv.http
            .post(srv.url("/rooms/h/whip"))
            .header("host", host)
            .header("content-type", "application/sdp")
            .body("not an offer")
            .send()
    };
    let foreign = format!("rebind.attacker.example:{port}");
    let r = post(foreign.clone()).await.unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden-host", "{body}");
    let r = srv
        .http
        .delete(srv.url("/rooms/h/whip/abc"))
        .header("host", foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Allowed names reach the WHIP handler, which judges the (bad) offer itself.
    for host in [format!("127.0.0.1:{port}"), format!("recbot.test:{port}")] {
        let r = post(host.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{host}");
    }
    srv.shutdown().await;
}
