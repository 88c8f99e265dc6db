//! A recorder joining a room that is already full: it offers to every participant at once, and
//! every one of them must be recorded, whatever the order in which checks, answers and
//! candidates cross (issue: binding requests arriving before the answer was applied made
//! webrtc-rs agents fight over the ICE role, and most connections failed).

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Polls the recording until every expected track has written frames, or the deadline passes.
async fn wait_for_tracks(
    srv: &TestServer,
    id: &str,
    want: usize,
    deadline: Duration,
) -> serde_json::Value {
    let end = Instant::now() + deadline;
    loop {
        let (_, rec) = srv.get_json(&format!("/api/recordings/{id}")).await;
        let with_frames = rec["tracks"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter(|t| t["frames"].as_u64().unwrap_or(0) > 0)
                    .count()
            })
            .unwrap_or(0);
        if with_frames >= want || Instant::now() > end {
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_joining_a_room_of_50_records_everyone() {
    let _heavy = heavy().await;
    const N: usize = 50;
    let srv = TestServer::start().await;
    let clip = clip();
    // Multi-homed publishers: each offers a host candidate on several loopback addresses, as
    // a laptop with Wi-Fi, Ethernet, VPN and IPv6 does (browsers trickle 4-10 candidates).
    let mut config = recbot::peer::PeerConfig::loopback();
    config.udp_bind = (1..=24u8)
        .map(|i| std::net::IpAddr::from([127, 0, 0, i]))
        .collect();
    let factory = recbot::peer::PeerFactory::new(config);
    let mut publishers = Vec::new();
    for i in 0..N {
        let p = recbot::client::start(
            &srv.base,
            "crowd",
            &format!("p{i}"),
            clip.clone(),
            factory.clone(),
            Default::default(),
        )
        .await
        .expect("publisher joins");
        publishers.push(p);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, rec) = srv
        .post_json("/api/recordings", serde_json::json!({"room": "crowd"}))
        .await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().expect("id").to_owned();

    let live = wait_for_tracks(&srv, &id, 2 * N, Duration::from_secs(40)).await;
    let (status, done) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{done}");
    let tracks = done["tracks"].as_array().expect("tracks");
    let recorded: std::collections::BTreeSet<(String, String)> = tracks
        .iter()
        .filter(|t| t["frames"].as_u64().unwrap_or(0) > 0)
        .map(|t| {
            (
                t["participant_name"].as_str().unwrap_or("").to_owned(),
                t["kind"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let missing: Vec<String> = (0..N)
        .flat_map(|i| {
            ["video", "audio"]
                .into_iter()
                .map(move |k| (format!("p{i}"), k.to_owned()))
        })
        .filter(|key| !recorded.contains(key))
        .map(|(p, k)| format!("{p}/{k}"))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} tracks have no frames: {missing:?} (live: {} tracks)",
        missing.len(),
        2 * N,
        live["tracks"].as_array().map_or(0, |t| t.len())
    );
    for p in publishers {
        p.leave().await;
    }
    srv.shutdown().await;
}
