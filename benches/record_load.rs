//! Load bench: N publishers (VP8 640x480 30 fps ~1 Mbit/s + Opus ~32 kbit/s, from files) in
//! one room, recorded for S seconds by a real `recbot serve` process. Prints, for the server
//! process alone: CPU seconds per stream-minute, peak RSS and RSS per participant, RTP packets
//! per second, frames written against frames expected, packets lost, time from the create call
//! to the first keyframe on disk (all participants present), and time to finalize on stop.
//!
//! Run: `cargo bench --bench record_load` (N_LIST=1,10,50,100 SECONDS=30 by default).
//! Participants are split into rooms of at most ROOM_SIZE (default 50), one recording each.
//! ORDER=peers-first (default: everyone is present when the recordings start, the order in
//! which a recorder offers to a whole room at once) or ORDER=recorder-first (the recordings
//! start in empty rooms and every participant joins afterwards).
//! STORAGE=1 also uploads every recording to an S3 server (s3s-fs, in this bench process) and
//! prints the server's CPU for the uploads, per recorded participant-minute, and their speed.
//! Needs ffmpeg (libvpx, libopus) to make the clips once, into target/bench-media/.

mod common;
#[path = "../tests/common/s3.rs"]
mod s3;

use common::{cpu_seconds, env_or, status_kib, Server};
use recbot::client::{Clip, PublishOptions};
use recbot::peer::{PeerConfig, PeerFactory};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn clips() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-media");
    std::fs::create_dir_all(&dir).unwrap();
    let video = dir.join("vga-1mbit.ivf");
    let audio = dir.join("voice-32k.ogg");
    let run = |args: &[&str]| {
        let ok = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "ffmpeg (with libvpx and libopus) is needed to make the bench clips"
        );
    };
    if !video.exists() {
        run(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x480:rate=30",
            "-t",
            "10",
            "-c:v",
            "libvpx",
            "-b:v",
            "1M",
            "-minrate",
            "1M",
            "-maxrate",
            "1M",
            "-g",
            "60",
            "-auto-alt-ref",
            "0",
            "-lag-in-frames",
            "0",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            video.to_str().unwrap(),
        ]);
    }
    if !audio.exists() {
        run(&[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=300:sample_rate=48000",
            "-t",
            "10",
            "-c:a",
            "libopus",
            "-b:a",
            "32k",
            "-frame_duration",
            "20",
            audio.to_str().unwrap(),
        ]);
    }
    (video, audio)
}

async fn run(n: usize, seconds: u64, clip: &std::sync::Arc<Clip>) {
    let room_size: usize = env_or("ROOM_SIZE", 50).max(1);
    let peers_first = env_or("ORDER", "peers-first".to_owned()) != "recorder-first";
    let rooms = n.div_ceil(room_size);
    let max_peers = (room_size + 10).to_string();
    // Every publisher connects from 127.0.0.1: the per-address cap must admit them all.
    let per_ip = (n + 64).max(256).to_string();
    let mut args = vec![
        "--udp-bind",
        "127.0.0.1",
        "--max-peers-per-room",
        &max_peers,
        "--max-connections-per-ip",
        &per_ip,
    ];
    // STORAGE=1: a bucket on an S3 server of this process (the server's CPU is what counts).
    let store_root = tempfile::tempdir().unwrap();
    let storage = if env_or("STORAGE", 0u8) == 1 {
        std::fs::create_dir(store_root.path().join("bench")).unwrap();
        let addr = "127.0.0.1:0".parse().unwrap();
        Some(s3::S3Server::start(store_root.path(), addr, "bench-key", "bench-secret").await)
    } else {
        None
    };
    let endpoint = storage.as_ref().map(|s| s.endpoint()).unwrap_or_default();
    if storage.is_some() {
        args.extend(["--s3-endpoint", &endpoint, "--s3-bucket", "bench"]);
    }
    let server = Server::start_with_env(
        &args,
        &[
            ("RECBOT_S3_ACCESS_KEY_ID", "bench-key"),
            ("RECBOT_S3_SECRET_ACCESS_KEY", "bench-secret"),
        ],
    );
    let pid = server.pid();
    let base = &server.base;
    let factory = PeerFactory::new(PeerConfig::loopback());
    let http = reqwest::Client::new();
    let mut publishers = Vec::new();
    let mut ids = Vec::new();
    let mut created = Instant::now();
    for phase in 0..2 {
        if (phase == 0) == peers_first {
            for i in 0..n {
                let p = recbot::client::start(
                    base,
                    &format!("load{}", i / room_size),
                    &format!("p{i}"),
                    clip.clone(),
                    factory.clone(),
                    PublishOptions::default(),
                )
                .await
                .expect("publisher joins");
                publishers.push(p);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else {
            created = Instant::now();
            for room in 0..rooms {
                let rec: serde_json::Value = http
                    .post(format!("{base}/api/recordings"))
                    .json(&serde_json::json!({"room": format!("load{room}")}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                ids.push(rec["id"].as_str().expect("recording created").to_owned());
            }
        }
    }
    let urls: Vec<String> = ids
        .iter()
        .map(|id| format!("{base}/api/recordings/{id}"))
        .collect();
    // First keyframe on disk: the first and the last participant's.
    let (mut first_key, mut all_keys) = (None, None);
    while all_keys.is_none() && created.elapsed() < Duration::from_secs(20) {
        let mut with_key = 0;
        for url in &urls {
            let doc: serde_json::Value = http.get(url).send().await.unwrap().json().await.unwrap();
            with_key += doc["tracks"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter(|t| {
                            t["kind"] == "video" && t["keyframes"].as_u64().unwrap_or(0) > 0
                        })
                        .count()
                })
                .unwrap_or(0);
        }
        if with_key > 0 && first_key.is_none() {
            first_key = Some(created.elapsed());
        }
        if with_key >= n {
            all_keys = Some(created.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t0 = cpu_seconds(pid);
    let measure_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu = cpu_seconds(pid) - t0;
    let measured = measure_start.elapsed().as_secs_f64();
    let stop_at = Instant::now();
    let cpu_at_stop = cpu_seconds(pid);
    let mut tracks = Vec::new();
    for url in &urls {
        let doc: serde_json::Value = http
            .post(format!("{url}/stop"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tracks.extend(doc["tracks"].as_array().cloned().unwrap_or_default());
    }
    let finalize = stop_at.elapsed();
    let peak_kib = status_kib(pid, "VmHWM:");
    let sum = |kind: &str, field: &str| -> u64 {
        tracks
            .iter()
            .filter(|t| t["kind"] == kind)
            .map(|t| t[field].as_u64().unwrap_or(0))
            .sum()
    };
    let recorded = tracks
        .iter()
        .filter(|t| t["frames"].as_u64().unwrap_or(0) > 0)
        .count();
    let video_ms = sum("video", "duration_ms") as f64;
    let frames = sum("video", "frames");
    let expected = video_ms / 1000.0 * 30.0;
    let packets = sum("video", "packets") + sum("audio", "packets");
    let lost = sum("video", "packets_lost") + sum("audio", "packets_lost");
    let recorded_s = video_ms / 1000.0 / n as f64;
    let fmt = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{} ms", d.as_millis()));
    println!(
        "| {n:>3} | {recorded:>3} / {:>3} | {:>6.3} | {:>6.1}% | {:>7.1} MiB | {:>6.2} MiB | {:>7.0} | {frames:>7} / {expected:>7.0} | {lost:>5} | {:>7} | {:>7} | {:>6} ms |",
        2 * n,
        cpu / (n as f64 * measured / 60.0),
        cpu / measured * 100.0,
        peak_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0 / n as f64,
        packets as f64 / recorded_s.max(0.001),
        fmt(first_key),
        fmt(all_keys),
        finalize.as_millis()
    );
    // From the stop until every file is final (and, with STORAGE=1, complete in the bucket):
    // the server's CPU for finalizing, plus uploading with storage on.
    if let Some(s3) = &storage {
        let started = Instant::now();
        loop {
            let mut done = 0;
            for url in &urls {
                let doc: serde_json::Value =
                    http.get(url).send().await.unwrap().json().await.unwrap();
                done += usize::from(doc["upload"] == "uploaded");
            }
            if done == urls.len() || started.elapsed() > Duration::from_secs(300) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let bytes: u64 = tracks
            .iter()
            .map(|t| t["bytes"].as_u64().unwrap_or(0))
            .sum();
        let took = stop_at.elapsed().as_secs_f64();
        println!(
            "      storage: {:.1} MiB in the bucket {took:.2} s after the stop ({:.1} MiB/s, s3s-fs in the bench process)",
            bytes as f64 / 1048576.0,
            bytes as f64 / 1048576.0 / took.max(1e-9),
        );
        let _ = s3.endpoint();
    }
    let after_stop = cpu_seconds(pid) - cpu_at_stop;
    println!(
        "      stop → {}: server CPU {after_stop:.3} s = {:.4} CPU-s per recorded participant-minute",
        if storage.is_some() { "uploaded" } else { "finalized" },
        after_stop / (video_ms / 60_000.0).max(1e-9)
    );
    for p in publishers {
        p.leave().await;
    }
    if let Some(s3) = storage {
        s3.stop().await;
    }
}

#[tokio::main]
async fn main() {
    let list: Vec<usize> = env_or("N_LIST", "1,10,50,100".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let seconds: u64 = env_or("SECONDS", 30);
    let (video, audio) = clips();
    let clip = Clip::load(Some(&video), Some(&audio)).unwrap();
    println!("recbot serve, {seconds} s of recording per row (server process only)");
    println!(
        "order: {}, rooms of at most {}",
        env_or("ORDER", "peers-first".to_owned()),
        env_or("ROOM_SIZE", 50usize)
    );
    println!("|   N | tracks recorded | CPU s per stream-min | CPU (1 core) | peak RSS | RSS/participant | RTP pkt/s | frames written / expected | lost | first keyframe | all keyframes | finalize |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for n in list {
        run(n, seconds, &clip).await;
    }
}
