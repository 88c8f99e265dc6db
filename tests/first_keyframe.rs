//! Time from `POST /api/recordings` to the first keyframe on disk (issue 15), measured with
//! `recbot::publish` peers on loopback against an in-process server.
//!
//! The measurement is `#[ignore]`d (a figure, not a pass/fail check; debug builds on a shared
//! machine): `cargo test --test first_keyframe -- --ignored --nocapture`, with `ROUNDS=n`
//! (default 8). With `RECBOT_TEST_LOG=warn,recbot=debug,rtc_ice=debug,rtc_dtls=debug,rtc=debug`
//! the log gives the timeline of each connection (offer, answer, pair selected, DTLS flights,
//! first RTP, PLI, keyframe).

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Milliseconds from the create call to the first video keyframe counted by the recording's
/// track (counted when it is written), `None` after 10 s.
async fn first_keyframe_ms(srv: &TestServer, room: &str) -> Option<(u128, String)> {
    let t0 = Instant::now();
    let (status, doc) = srv
        .post_json("/api/recordings", serde_json::json!({ "room": room }))
        .await;
    assert!(status == 201 || status == 200, "create: {status} {doc}");
    let id = doc["id"].as_str().expect("recording id").to_owned();
    let path = format!("/api/recordings/{id}");
    while t0.elapsed() < Duration::from_secs(10) {
        let (_, doc) = srv.get_json(&path).await;
        let keyed = doc["tracks"].as_array().is_some_and(|tracks| {
            tracks
                .iter()
                .any(|t| t["kind"] == "video" && t["keyframes"].as_u64().unwrap_or(0) > 0)
        });
        if keyed {
            return Some((t0.elapsed().as_millis(), id));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// `ROUNDS` rounds (default 8) of: a publisher from `start` joins a fresh room, then the time
/// from the create call to the first keyframe; prints each round and the spread as `label`.
async fn measure<F, Fut>(label: &str, start: F)
where
    F: Fn(TestServer, String) -> Fut,
    Fut: std::future::Future<Output = (TestServer, recbot::client::PublisherHandle)>,
{
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut srv = TestServer::start().await;
    let mut figures = Vec::new();
    for round in 0..rounds {
        let room = format!("fk{round}");
        let (back, publisher) = start(srv, room.clone()).await;
        srv = back;
        tokio::time::sleep(Duration::from_millis(500)).await;
        tracing::info!(round, "POST /api/recordings");
        let (ms, id) = first_keyframe_ms(&srv, &room)
            .await
            .expect("a keyframe within 10 s");
        tracing::info!(round, ms, "first keyframe on disk");
        println!("round {round}: first keyframe {ms} ms after the create call");
        figures.push(ms);
        srv.post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
            .await;
        publisher.leave().await;
    }
    figures.sort_unstable();
    println!(
        "{label}, {rounds} rounds: min {} / median {} / max {} ms",
        figures[0],
        figures[figures.len() / 2],
        figures[figures.len() - 1]
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: prints the time from the create call to the first keyframe"]
async fn first_keyframe_after_create_with_publish_peers() {
    measure("publish peers", |srv, room| async move {
        let publisher = recbot::client::start(
            &srv.base,
            &room,
            "alice",
            clip(),
            factory(),
            Default::default(),
        )
        .await
        .expect("publisher joins");
        (srv, publisher)
    })
    .await;
}

/// The same figure with a WHIP publisher (`recbot publish --whip`): its media reaches the
/// recorder inside the server, and the recorder's PLI is passed to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: prints the time from the create call to the first keyframe"]
async fn first_keyframe_after_create_with_a_whip_publisher() {
    measure("WHIP publisher", |srv, room| async move {
        let publisher = recbot::client::start_whip(
            &srv.url(&format!("/rooms/{room}/whip?name=cam")),
            None,
            clip(),
            factory(),
        )
        .await
        .expect("WHIP publisher starts");
        (srv, publisher)
    })
    .await;
}
