//! Reaching participants (SPEC §10): hosts with only loopback, ICE-TCP, TURN REST credentials,
//! ICE restart.
//!
//! Tests that need a network of their own run this test binary again inside a fresh network
//! namespace (`unshare -n`, root): the outer test is a normal test, the inner one is
//! `#[ignore]`d and only meant to run there (see `common::run_in_netns`). Under `CI=true` a
//! missing tool fails the test; elsewhere it is skipped with a message.

mod common;

use common::*;
use recbot::peer::{PeerConfig, PeerFactory};
use std::net::IpAddr;
use std::time::Duration;

/// The candidate addresses nobody can reach at: what must never be advertised.
fn unspecified(address: &str) -> bool {
    address
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_unspecified())
}

#[test]
fn a_host_with_only_loopback_records_and_advertises_no_wildcard() {
    run_in_netns("netns_loopback_only_host");
}

/// Inside a namespace with only `lo` (no multicast): the server with its default media binds
/// (`0.0.0.0,127.0.0.1`) records a publisher that binds like `recbot publish` (every
/// interface and loopback). A listening member of the room sees the recorder's and the
/// publisher's offers and candidates: none names `0.0.0.0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs inside `unshare -n` through a_host_with_only_loopback_records_and_advertises_no_wildcard"]
async fn netns_loopback_only_host() {
    netns_setup();
    let srv = TestServer::start_with(|args| {
        args.udp_bind = vec![IpAddr::from([0, 0, 0, 0]), IpAddr::from([127, 0, 0, 1])];
    })
    .await;
    let spy = Spy::join(&srv.ws_url("/rooms/odd/ws?name=spy")).await;
    let (status, rec) = srv
        .post_json("/api/recordings", serde_json::json!({"room": "odd"}))
        .await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().expect("id").to_owned();
    let recorder = rec["bot_peer"].as_str().expect("bot_peer").to_owned();
    let publisher = recbot::client::start(
        &srv.base,
        "odd",
        "pub",
        clip(),
        PeerFactory::new(PeerConfig::loopback_and_all()),
        recbot::client::PublishOptions {
            mesh: true,
            ..Default::default()
        },
    )
    .await
    .expect("publisher joins");
    let doc = wait_recording(&srv, &id, Duration::from_secs(30), "recorded media", |d| {
        frames_of(d, "video") > 30 && frames_of(d, "audio") > 50
    })
    .await;
    eprintln!(
        "recorded: video {} frames, audio {} packets",
        frames_of(&doc, "video"),
        frames_of(&doc, "audio")
    );
    let (status, done) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["files"].as_array().map(Vec::len), Some(2), "{done}");

    for (who, peer) in [
        ("recorder", recorder.as_str()),
        ("publisher", &publisher.id),
    ] {
        assert!(spy.got_offer_from(peer), "the {who} offered to the spy");
        let candidates = spy.candidates_from(peer);
        eprintln!("{who} advertised: {candidates:#?}");
        assert!(
            !candidates.is_empty(),
            "the {who} advertised no candidate at all"
        );
        let bad: Vec<&String> = candidates
            .iter()
            .filter(|c| unspecified(&candidate_address(c)))
            .collect();
        assert!(bad.is_empty(), "the {who} advertised {bad:?}");
    }
    publisher.leave().await;
    srv.shutdown().await;
}
