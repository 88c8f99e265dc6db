//! End to end: real webrtc-rs publishers over loopback UDP, a real server on an ephemeral
//! port, the files downloaded over HTTP and checked by recbot's readers, libopus and ffmpeg.

mod common;

use common::*;
use recbot::record::ogg::read_ogg_opus;
use recbot::record::webm_reader::read_webm;
use std::time::Duration;

fn decode_opus(packets: &[Vec<u8>], channels: u8) -> Vec<f32> {
    let ch = if channels == 2 {
        opus::Channels::Stereo
    } else {
        opus::Channels::Mono
    };
    let mut decoder = opus::Decoder::new(48_000, ch).expect("decoder");
    let mut out = Vec::new();
    let mut buf = vec![0f32; 5760 * 2];
    for p in packets {
        let n = decoder
            .decode_float(p, &mut buf, false)
            .expect("valid opus packet");
        // Keep the first channel only.
        out.extend(
            buf[..n * usize::from(channels)]
                .iter()
                .step_by(usize::from(channels)),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_present_and_late_publishers_to_webm_and_ogg() {
    let srv = TestServer::start().await;
    let clip = clip();
    let factory = factory();
    let alice = recbot::client::start(
        &srv.base,
        "demo",
        "alice",
        clip.clone(),
        factory.clone(),
        Default::default(),
    )
    .await
    .expect("alice joins");
    let bob = recbot::client::start(
        &srv.base,
        "demo",
        "bob",
        clip.clone(),
        factory.clone(),
        Default::default(),
    )
    .await
    .expect("bob joins");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, rec) = srv
        .post_json("/api/recordings", serde_json::json!({"room": "demo"}))
        .await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().expect("id").to_owned();
    assert_eq!(rec["state"], "recording");
    assert!(rec["bot_peer"].is_string());

    tokio::time::sleep(Duration::from_secs(3)).await;
    let carol = recbot::client::start(
        &srv.base,
        "demo",
        "carol",
        clip.clone(),
        factory.clone(),
        Default::default(),
    )
    .await
    .expect("carol joins");
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Live figures while recording.
    let (status, live) = srv.get_json(&format!("/api/recordings/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(live["state"], "recording");
    let live_frames: u64 = live["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["frames"].as_u64().unwrap())
        .sum();
    assert!(live_frames > 0, "live figures move: {live}");

    let (status, done) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(done["state"], "stopped", "{done}");
    assert_eq!(done["stop_reason"], "requested");

    let tracks = done["tracks"].as_array().expect("tracks");
    let names: Vec<&str> = tracks.iter().map(|t| t["file"].as_str().unwrap()).collect();
    for who in ["alice", "bob", "carol"] {
        for kind in ["video", "audio"] {
            assert!(
                tracks
                    .iter()
                    .any(|t| t["participant_name"] == who && t["kind"] == kind),
                "missing {who} {kind} in {names:?}"
            );
        }
    }
    assert_eq!(done["files"].as_array().unwrap().len(), 6, "{done}");

    let work = tempfile::tempdir().unwrap();
    for track in tracks {
        let file = track["file"].as_str().unwrap();
        let who = track["participant_name"].as_str().unwrap();
        let resp = srv
            .http
            .get(srv.url(&format!("/api/recordings/{id}/files/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
        let bytes = resp.bytes().await.unwrap();
        assert_eq!(
            bytes.len() as u64,
            track["bytes"].as_u64().unwrap(),
            "{file}"
        );
        let duration_ms = track["duration_ms"].as_u64().unwrap() as f64;
        // Alice and Bob were there for ~6 s, Carol for ~3 s (minus the time to connect).
        let expected = if who == "carol" { 3000.0 } else { 6000.0 };
        assert!(
            duration_ms > expected - 1500.0 && duration_ms < expected + 500.0,
            "{file}: duration {duration_ms} ms, expected about {expected}"
        );
        let path = save(work.path(), file, &bytes);
        if track["kind"] == "video" {
            assert_eq!(ctype, "video/webm");
            let info = read_webm(std::io::Cursor::new(&bytes[..])).expect("webm parses");
            let first = info.blocks.first().expect("has frames");
            assert!(first.keyframe, "{file}: first block must be a keyframe");
            assert_eq!(first.ts_ms, 0, "{file}: timestamps start at 0");
            assert_eq!(info.blocks.len() as u64, track["frames"].as_u64().unwrap());
            assert!(!info.cues.is_empty(), "{file}: Cues");
            let d = info.duration_ms.expect("Duration");
            assert!(
                (d - duration_ms).abs() < 1.0,
                "{file}: Duration {d} vs {duration_ms}"
            );
            assert!(info.has_seekhead, "{file}: SeekHead");
            // 30 fps clip: frames match the duration within a few frames.
            let fps_frames = duration_ms / 1000.0 * 30.0;
            let frames = info.blocks.len() as f64;
            assert!(
                (frames - fps_frames).abs() <= 4.0,
                "{file}: {frames} frames for {duration_ms} ms"
            );
            assert_eq!(track["width"], 320);
            assert_eq!(track["height"], 240);
        } else {
            assert_eq!(ctype, "audio/ogg");
            let info = read_ogg_opus(std::io::Cursor::new(&bytes[..])).expect("ogg parses");
            assert!(info.eos, "{file}: end-of-stream page");
            let samples = info.duration_samples().expect("final granule");
            let ogg_ms = samples as f64 / 48.0;
            assert!(
                (ogg_ms - duration_ms).abs() <= 50.0,
                "{file}: {ogg_ms} vs {duration_ms}"
            );
            let packets: Vec<Vec<u8>> = info.packets.iter().map(|p| p.data.clone()).collect();
            let pcm = decode_opus(&packets, info.channels);
            let skip = usize::from(info.pre_skip);
            let middle = &pcm[skip + 24_000..pcm.len().min(skip + 72_000)];
            let hz = zero_crossing_hz(middle);
            assert!((hz - 440.0).abs() < 10.0, "{file}: tone at {hz} Hz");
            assert!(rms(middle) > 0.05, "{file}: audible");
        }
        if ffmpeg_decodes_cleanly(&path) {
            let probed = ffprobe_duration(&path).expect("ffprobe duration");
            assert!(
                (probed * 1000.0 - duration_ms).abs() < 100.0,
                "{file}: ffprobe says {probed} s, manifest {duration_ms} ms"
            );
        }
    }

    // Range: 206 with exactly the requested bytes.
    let file = done["files"][0]["name"].as_str().unwrap();
    let url = srv.url(&format!("/api/recordings/{id}/files/{file}"));
    let full = srv
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let resp = srv
        .http
        .get(&url)
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"].to_str().unwrap(),
        format!("bytes 100-199/{}", full.len())
    );
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(&resp.bytes().await.unwrap()[..], &full[100..200]);
    let resp = srv.http.head(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"].to_str().unwrap(),
        full.len().to_string()
    );
    let resp = srv
        .http
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    let resp = srv
        .http
        .get(&url)
        .header("Range", format!("bytes={}-", full.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    // The manifest is downloadable and equals the API's document.
    let (status, manifest) = srv
        .get_json(&format!("/api/recordings/{id}/files/manifest.json"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(manifest, done);

    for p in [alice, bob, carol] {
        p.leave().await;
    }
    srv.shutdown().await;
}
