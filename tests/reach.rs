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

/// Longest a browser script may run.
const SCRIPT_LIMIT: Duration = Duration::from_secs(150);

/// A server for a browser in the same namespace: loopback media, loopback candidates only.
async fn browser_server(tweak: impl FnOnce(&mut recbot::config::ServeArgs)) -> TestServer {
    TestServer::start_with(|args| {
        args.loopback_candidates_only = true;
        tweak(args);
    })
    .await
}

/// Stops recording `id` and returns its document.
async fn stop(srv: &TestServer, id: &str) -> serde_json::Value {
    let (status, done) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["state"], "stopped", "{done}");
    done
}

/// The recording's files of `kind`, inspected.
fn inspect_files(
    srv: &TestServer,
    doc: &serde_json::Value,
    kind: &str,
) -> Vec<recbot::record::inspect::FileReport> {
    let id = doc["id"].as_str().expect("id");
    doc["tracks"]
        .as_array()
        .expect("tracks")
        .iter()
        .filter(|t| t["kind"] == kind)
        .map(|t| {
            let path = srv
                .dir
                .path()
                .join(id)
                .join(t["file"].as_str().expect("file"));
            recbot::record::inspect::inspect(&path).expect("inspect")
        })
        .collect()
}

#[test]
fn chromium_without_udp_is_recorded_over_ice_tcp() {
    if browser_available() {
        run_in_netns("netns_ice_tcp");
    }
}

/// Inside a namespace with only `lo` and every UDP packet dropped: two Chromium participants,
/// in two rooms recorded at once, are recorded through passive ICE-TCP candidates on the one
/// `--ice-tcp-port` that every connection shares.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "runs inside `unshare -n` through chromium_without_udp_is_recorded_over_ice_tcp"]
async fn netns_ice_tcp() {
    netns_setup();
    drop_udp_in_namespace();
    let tcp_port = free_tcp_port();
    let srv = browser_server(|args| args.ice_tcp_port = Some(tcp_port)).await;
    let (args_a, args_b) = ([&srv.base, "tcp-a", "tcp"], [&srv.base, "tcp-b", "tcp"]);
    let ((ok_a, a), (ok_b, b)) = tokio::join!(
        run_browser_script("reach.mjs", &args_a, SCRIPT_LIMIT),
        run_browser_script("reach.mjs", &args_b, SCRIPT_LIMIT),
    );
    for (ok, summary) in [(ok_a, &a), (ok_b, &b)] {
        eprintln!("{summary:#}");
        assert!(ok, "the browser script failed: {summary}");
        let pair = &summary["selected_pair"];
        assert_eq!(pair["local"]["protocol"], "tcp", "{pair}");
        assert_eq!(pair["remote"]["protocol"], "tcp", "{pair}");
        assert_eq!(pair["remote"]["port"], tcp_port, "the shared port: {pair}");
        let id = summary["recording_id"].as_str().expect("id");
        let done = stop(&srv, id).await;
        let video = inspect_files(&srv, &done, "video");
        assert_eq!(video.len(), 1, "{done}");
        let frames = video[0].tracks[0].frames;
        assert!(frames > 40, "only {frames} video frames recorded over TCP");
    }
    srv.shutdown().await;
}

#[test]
fn chromium_relay_only_is_recorded_through_coturn_with_rest_credentials() {
    if browser_available() {
        run_in_netns("netns_turn_relay");
    }
}

/// A coturn with `use-auth-secret` on loopback, recbot with `--turn-secret`: the welcome
/// carries per-peer REST credentials, a Chromium with iceTransportPolicy "relay" is recorded
/// through coturn with them, and the recorder gathers relay candidates of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "runs inside `unshare -n` through chromium_relay_only_is_recorded_through_coturn_with_rest_credentials"]
async fn netns_turn_relay() {
    netns_setup();
    let Some(turn) = Coturn::start("reach-secret") else {
        return;
    };
    let url = format!("turn:127.0.0.1:{}?transport=udp", turn.port);
    let srv = browser_server(|args| {
        args.ice_servers = vec![url.clone()];
        args.turn_secret = Some(turn.secret.clone());
        args.turn_ttl = 600;
    })
    .await;
    let (ok, summary) =
        run_browser_script("reach.mjs", &[&srv.base, "relayed", "relay"], SCRIPT_LIMIT).await;
    eprintln!("{summary:#}");
    assert!(
        ok,
        "the browser script failed: {summary}\n{}",
        turn.log_text()
    );
    // The welcome's credentials: {expiry}:{peer id}, HMAC-SHA1 of it with the secret.
    let servers = summary["welcome_ice_servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 1, "{servers:?}");
    let username = servers[0]["username"].as_str().expect("username");
    let (expiry, peer) = username.split_once(':').expect("expiry:peer");
    assert_eq!(peer, summary["peer_id"].as_str().expect("peer id"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let expiry: u64 = expiry.parse().expect("expiry");
    assert!(
        expiry > now && expiry <= now + 600,
        "expiry {expiry}, now {now}"
    );
    assert_eq!(
        servers[0]["credential"].as_str(),
        Some(
            recbot::signal::protocol::TurnRest::new("reach-secret", Duration::from_secs(600))
                .credential(username)
                .as_str()
        )
    );
    let pair = &summary["selected_pair"];
    assert_eq!(pair["local"]["type"], "relay", "{pair}");
    let recorder = summary["recorder_candidates"].as_array().expect("types");
    assert!(
        recorder.iter().any(|t| t == "udp relay"),
        "the recorder gathered no relay candidate: {recorder:?}"
    );
    let log = turn.log_text();
    assert!(
        log.contains(peer) && log.contains("success"),
        "coturn saw no allocation of the participant: {log}"
    );
    let id = summary["recording_id"].as_str().expect("id");
    let done = stop(&srv, id).await;
    let video = inspect_files(&srv, &done, "video");
    assert_eq!(video.len(), 1, "{done}");
    let frames = video[0].tracks[0].frames;
    assert!(
        frames > 40,
        "only {frames} video frames recorded through TURN"
    );
    srv.shutdown().await;
}

#[test]
fn ice_restarts_keep_recording_into_the_same_files() {
    if browser_available() {
        run_in_netns("netns_ice_restart");
    }
}

/// A Chromium participant restarts ICE (`pc.restartIce()`), then loses UDP for a while: the
/// recorder, seeing its connection down, restarts ICE itself. The recording goes on in the
/// same two files (no new file index), with frames after both restarts, and the video's only
/// long gap is the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "runs inside `unshare -n` through ice_restarts_keep_recording_into_the_same_files"]
async fn netns_ice_restart() {
    netns_setup();
    let srv = browser_server(|_| {}).await;
    let (ok, summary) = run_browser_script(
        "reach.mjs",
        &[&srv.base, "restarts", "restart"],
        SCRIPT_LIMIT,
    )
    .await;
    eprintln!("{summary:#}");
    assert!(ok, "the browser script failed: {summary}");
    let own = &summary["own_restart"];
    assert_ne!(
        own["remote_ufrag_before"], own["remote_ufrag_after"],
        "the recorder answered our restart with new credentials: {own}"
    );
    let outage = &summary["outage"];
    let offers = outage["recorder_offers"].as_array().expect("offers");
    assert!(
        offers
            .iter()
            .all(|o| o["ufrag"] != outage["first_ufrag"] && o["ufrag"] != own["remote_ufrag_after"]),
        "the recorder's restart offer carries new credentials: {outage}"
    );
    eprintln!(
        "restartIce() → video again: {} ms; outage {} ms (recorder's restart offer {} ms after \
         the drop), video again {} ms after UDP came back",
        own["media_ms"],
        outage["outage_ms"],
        outage["restart_offer_ms_after_drop"],
        outage["media_ms_after_udp_back"]
    );
    let id = summary["recording_id"].as_str().expect("id");
    let done = stop(&srv, id).await;
    let files: Vec<&str> = done["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f.as_str().or_else(|| f["name"].as_str()))
        .collect();
    assert_eq!(done["tracks"].as_array().map(Vec::len), Some(2), "{done}");
    assert_eq!(
        files.len(),
        2,
        "one file per track, no new index: {files:?}"
    );
    assert!(
        files.iter().all(|f| f.contains("-1.")),
        "every file keeps index 1: {files:?}"
    );
    let video = &inspect_files(&srv, &done, "video")[0];
    let audio = &inspect_files(&srv, &done, "audio")[0];
    let outage_ms = outage["outage_ms"].as_i64().expect("outage_ms");
    let long: Vec<_> = video.tracks[0]
        .gaps
        .iter()
        .filter(|g| g.length_ms > 1000)
        .collect();
    eprintln!(
        "video: {} frames, {} → {} ms, gaps > 1 s: {long:?}; audio gaps: {:?}",
        video.tracks[0].frames,
        video.tracks[0].first_ts_ms,
        video.tracks[0].last_ts_ms,
        audio.tracks[0].gaps
    );
    assert!(long.len() <= 1, "one outage, one gap at most: {long:?}");
    for gap in &long {
        assert!(
            gap.length_ms <= outage_ms + 5000,
            "the gap {gap:?} is about the outage ({outage_ms} ms), not more"
        );
    }
    // Frames after the outage: the file runs on to the end, past the gap.
    let gap_end = long.first().map_or(0, |g| g.at_ms + g.length_ms);
    assert!(
        video.tracks[0].last_ts_ms > gap_end + 1000,
        "video after the outage: last {} ms, gap ends {gap_end} ms",
        video.tracks[0].last_ts_ms
    );
    // The audio timeline is whole: the same length as the video's, the outage filled.
    let (v, a) = (video.duration_ms, audio.duration_ms);
    let (v, a) = (v.expect("video duration"), a.expect("audio duration"));
    assert!((v - a).abs() < 1500.0, "video {v} ms, audio {a} ms");
    srv.shutdown().await;
}

#[test]
fn public_ips_are_what_the_recorder_advertises_udp_and_tcp() {
    run_in_netns("netns_public_ips");
}

/// In a namespace with only `lo`, which also gets a private address (10.9.9.9, as an interface
/// would; this kernel has no dummy/veth devices), and the default media binds: with
/// `--public-ips 203.0.113.9` and `--ice-tcp-port`, the recorder's offer and candidates name
/// the public address (UDP and TCP host candidates, the TCP one on the shared port), never the
/// private one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs inside `unshare -n` through public_ips_are_what_the_recorder_advertises_udp_and_tcp"]
async fn netns_public_ips() {
    netns_setup();
    run_ok("ip", &["addr", "add", "10.9.9.9/32", "dev", "lo"]);
    let tcp_port = free_tcp_port();
    let srv = TestServer::start_with(|args| {
        args.udp_bind = vec![IpAddr::from([0, 0, 0, 0]), IpAddr::from([127, 0, 0, 1])];
        args.public_ips = vec![IpAddr::from([203, 0, 113, 9])];
        args.ice_tcp_port = Some(tcp_port);
    })
    .await;
    let spy = Spy::join(&srv.ws_url("/rooms/nat/ws?name=spy")).await;
    let (status, rec) = srv
        .post_json("/api/recordings", serde_json::json!({"room": "nat"}))
        .await;
    assert_eq!(status, 201, "{rec}");
    let recorder = rec["bot_peer"].as_str().expect("bot_peer").to_owned();
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let wanted = |c: &Vec<String>| {
        c.iter()
            .any(|l| l.contains(" udp ") && l.contains(" 203.0.113.9 "))
            && c.iter().any(|l| {
                l.to_ascii_lowercase().contains(" tcp ")
                    && l.contains(&format!(" 203.0.113.9 {tcp_port} typ host tcptype passive"))
            })
    };
    let candidates = loop {
        let candidates = spy.candidates_from(&recorder);
        if wanted(&candidates) || std::time::Instant::now() > end {
            break candidates;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("the recorder advertised: {candidates:#?}");
    assert!(
        wanted(&candidates),
        "public UDP and TCP host candidates: {candidates:?}"
    );
    assert!(
        candidates.iter().all(|c| !c.contains("10.9.9.9 ")),
        "the private address leaked: {candidates:?}"
    );
    srv.shutdown().await;
}
