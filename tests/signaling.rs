//! The signaling hub over real WebSockets: welcome, join/leave notices, relaying by `to` →
//! `from`, and every bad input with its SPEC answer on a connection that stays open.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn connect(srv: &TestServer, room: &str, name: &str) -> Ws {
    let url = srv.ws_url(&format!("/rooms/{room}/ws?name={name}"));
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connects")
        .0
}

async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.to_owned().into()))
        .await
        .expect("send");
}

#[tokio::test]
async fn welcome_join_relay_leave() {
    let srv = TestServer::start().await;
    let mut a = connect(&srv, "r1", "alice").await;
    let welcome_a = next_json(&mut a).await;
    assert_eq!(welcome_a["type"], "welcome");
    assert_eq!(welcome_a["room"], "r1");
    assert_eq!(welcome_a["peers"], serde_json::json!([]));
    assert!(welcome_a["ice_servers"].is_array());
    let a_id = welcome_a["id"].as_str().unwrap().to_owned();

    let mut b = connect(&srv, "r1", "bob").await;
    let welcome_b = next_json(&mut b).await;
    assert_eq!(welcome_b["peers"][0]["id"], a_id.as_str());
    assert_eq!(welcome_b["peers"][0]["name"], "alice");
    assert_eq!(welcome_b["peers"][0]["bot"], false);
    let b_id = welcome_b["id"].as_str().unwrap().to_owned();
    let joined = next_json(&mut a).await;
    assert_eq!(joined["type"], "peer-joined");
    assert_eq!(joined["peer"]["id"], b_id.as_str());

    send_text(
        &mut b,
        &serde_json::json!({"type":"offer","to":a_id,"sdp":"v=0 fake"}).to_string(),
    )
    .await;
    let offer = next_json(&mut a).await;
    assert_eq!(
        offer,
        serde_json::json!({"type":"offer","from":b_id,"sdp":"v=0 fake"})
    );
    send_text(
        &mut a,
        &serde_json::json!({"type":"candidate","to":b_id,"candidate":{"candidate":""}}).to_string(),
    )
    .await;
    let cand = next_json(&mut b).await;
    assert_eq!(
        cand,
        serde_json::json!({"type":"candidate","from":a_id,"candidate":{"candidate":""}})
    );

    // The rooms API lists both.
    let (status, rooms) = srv.get_json("/api/rooms").await;
    assert_eq!(status, 200);
    assert_eq!(rooms["rooms"][0]["room"], "r1");
    assert_eq!(rooms["rooms"][0]["peers"].as_array().unwrap().len(), 2);

    send_text(&mut b, r#"{"type":"leave"}"#).await;
    let left = next_json(&mut a).await;
    assert_eq!(left, serde_json::json!({"type":"peer-left","id":b_id}));
    match tokio::time::timeout(Duration::from_secs(5), b.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected close 1000, got {other:?}"),
    }

    // A vanished peer (socket dropped without leave or close frame) is announced too, once
    // its seat was not resumed in time (SPEC §10; tests/resume.rs covers the resume).
    let hub = &srv.server.as_ref().unwrap().app.services.hub;
    hub.set_resume_grace(Duration::from_millis(300));
    let mut c = connect(&srv, "r1", "carol").await;
    let c_id = next_json(&mut c).await["id"].as_str().unwrap().to_owned();
    assert_eq!(next_json(&mut a).await["type"], "peer-joined");
    drop(c);
    let left = next_json(&mut a).await;
    assert_eq!(left, serde_json::json!({"type":"peer-left","id":c_id}));
    srv.shutdown().await;
}

/// SPEC §2: the server adds `from` and relays the rest unchanged: both spellings of end of
/// candidates arrive as sent, and so do keys recbot does not know.
#[tokio::test]
async fn candidates_are_relayed_unchanged() {
    let srv = TestServer::start().await;
    let mut a = connect(&srv, "rc", "alice").await;
    let a_id = next_json(&mut a).await["id"].as_str().unwrap().to_owned();
    let mut b = connect(&srv, "rc", "bob").await;
    let b_id = next_json(&mut b).await["id"].as_str().unwrap().to_owned();
    let _ = next_json(&mut a).await; // peer-joined
    for candidate in [
        serde_json::json!({"candidate": ""}),
        serde_json::json!({"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "u1"}),
        serde_json::json!({"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
            "sdpMid": null, "sdpMLineIndex": 0, "usernameFragment": null, "x-browser": {"n": 1}}),
        serde_json::Value::Null,
    ] {
        send_text(
            &mut a,
            &serde_json::json!({"type":"candidate","to":b_id,"candidate":candidate}).to_string(),
        )
        .await;
        assert_eq!(
            next_json(&mut b).await,
            serde_json::json!({"type":"candidate","from":a_id,"candidate":candidate})
        );
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_errors_and_the_connection_stays_open() {
    let srv = TestServer::start().await;
    let mut a = connect(&srv, "r2", "alice").await;
    let _ = next_json(&mut a).await;
    let mut b = connect(&srv, "r2", "bob").await;
    let b_id = next_json(&mut b).await["id"].as_str().unwrap().to_owned();
    let _ = next_json(&mut a).await; // peer-joined

    let cases: Vec<(String, &str, serde_json::Value)> = vec![
        ("{not json".into(), "bad-message", serde_json::Value::Null),
        (
            r#"{"type":"dance","to":"x"}"#.into(),
            "bad-message",
            serde_json::json!({"type":"dance","to":"x"}),
        ),
        (
            r#"{"to":"x"}"#.into(),
            "bad-message",
            serde_json::json!({"to":"x"}),
        ),
        (
            r#"{"type":"offer","to":"x"}"#.into(),
            "bad-message",
            serde_json::json!({"type":"offer","to":"x"}),
        ),
        (
            r#"{"type":"offer","to":7,"sdp":"v=0"}"#.into(),
            "bad-message",
            serde_json::json!({"type":"offer"}),
        ),
        (
            r#"{"type":"offer","to":"nobody","sdp":"v=0"}"#.into(),
            "unknown-peer",
            serde_json::json!({"type":"offer","to":"nobody"}),
        ),
        (r#"[1,2,3]"#.into(), "bad-message", serde_json::Value::Null),
        (
            format!(
                r#"{{"type":"offer","to":"{b_id}","sdp":"{}"}}"#,
                "a".repeat(70 * 1024)
            ),
            "too-large",
            serde_json::Value::Null,
        ),
    ];
    for (text, code, reference) in cases {
        send_text(&mut a, &text).await;
        let reply = next_json(&mut a).await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(
            reply["code"],
            code,
            "for {}: {reply}",
            &text[..text.len().min(60)]
        );
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
        if !reference.is_null() {
            assert_eq!(reply["ref"], reference);
        }
    }
    a.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(next_json(&mut a).await["code"], "bad-message");

    // Nothing reached bob, and alice can still talk to him.
    send_text(
        &mut a,
        &serde_json::json!({"type":"answer","to":b_id,"sdp":"v=0"}).to_string(),
    )
    .await;
    let got = next_json(&mut b).await;
    assert_eq!(got["type"], "answer");
    assert_eq!(got["sdp"], "v=0");
    srv.shutdown().await;
}

#[tokio::test]
async fn refused_before_the_upgrade() {
    let srv = TestServer::start_with(|a| a.room_token = Some("s3cret".into())).await;
    let url = srv.ws_url("/rooms/bad%20room/ws");
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 400),
        other => panic!("expected 400, got {other:?}"),
    }
    for query in ["", "?token=wrong"] {
        let url = srv.ws_url(&format!("/rooms/ok/ws{query}"));
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 401)
            }
            other => panic!("expected 401, got {other:?}"),
        }
    }
    let url = srv.ws_url("/rooms/ok/ws?token=s3cret");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("right token joins");
    assert_eq!(next_json(&mut ws).await["type"], "welcome");

    // A foreign browser origin is refused; the service's own origin is fine.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = srv
        .ws_url("/rooms/ok/ws?token=s3cret")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let mut req = srv
        .ws_url("/rooms/ok/ws?token=s3cret")
        .into_client_request()
        .unwrap();
    let own = srv.base.clone();
    req.headers_mut().insert("Origin", own.parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    srv.shutdown().await;
}

/// SPEC §2: a client that keeps sending garbage is closed with 1008 and a reason — a real close
/// frame the client reads, not a cut connection (1006). The client keeps sending while the
/// server closes, as a flooding client does.
#[tokio::test]
async fn a_garbage_flood_is_closed_with_1008_and_a_reason() {
    let srv = TestServer::start().await;
    let mut ws = connect(&srv, "flood", "mallory").await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    let (mut tx, mut rx) = ws.split();
    let flood = tokio::spawn(async move {
        for _ in 0..500 {
            if tx.send(Message::Text("{garbage".into())).await.is_err() {
                break;
            }
        }
        tx
    });
    let close = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Close(frame))) => return Ok(frame),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("error instead of a close frame: {e}")),
                None => return Err("stream ended without a close frame".to_owned()),
            }
        }
    })
    .await
    .expect("closed within 20 s");
    let _ = flood.await;
    let frame = close
        .expect("a close frame")
        .expect("the close frame has a code");
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    assert!(!frame.reason.is_empty(), "{frame:?}");
    srv.shutdown().await;
}

/// SPEC §1, DNS rebinding: without an API token the WebSocket answers only loopback names and
/// `--allowed-hosts` names in `Host`; others get 403 before the upgrade.
#[tokio::test]
async fn foreign_hosts_are_refused_before_the_upgrade() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let srv = TestServer::start_with(|a| a.allowed_hosts = vec!["recbot.test".into()]).await;
    let port = srv.base.rsplit(':').next().unwrap().to_owned();
    let request = |host: &str| {
        let mut req = srv.ws_url("/rooms/h/ws").into_client_request().unwrap();
        req.headers_mut().insert("Host", host.parse().unwrap());
        // A rebinding page's origin equals its host: the origin rule alone passes it.
        req.headers_mut()
            .insert("Origin", format!("http://{host}").parse().unwrap());
        req
    };
    match tokio_tungstenite::connect_async(request(&format!("rebind.attacker.example:{port}")))
        .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 403);
            let body: serde_json::Value =
                serde_json::from_slice(r.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["code"], "forbidden-host", "{body}");
        }
        other => panic!("expected 403, got {other:?}"),
    }
    for host in [format!("localhost:{port}"), format!("recbot.test:{port}")] {
        let (mut ws, _) = tokio_tungstenite::connect_async(request(&host))
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(next_json(&mut ws).await["type"], "welcome");
    }
    srv.shutdown().await;
}
