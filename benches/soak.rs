//! Soak: 1,000 peers join and leave a recorded room a few at a time, against a real
//! `recbot serve` process; its RSS, open file descriptors and live tasks are sampled and must
//! come back near their baseline. Run: `cargo bench --bench soak` (PEERS=… BATCH=… to change).

use recbot::peer::{PeerConfig, PeerFactory};
use recbot::publish::{Clip, PublishOptions};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn tasks(base: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("recbot_tokio_tasks "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let peers = env("PEERS", 1000);
    let batch = env("BATCH", 5);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_recbot"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--udp-bind",
            "127.0.0.1",
            "--log-format",
            "json",
        ])
        .args(["--log", "warn,recbot=info", "--max-peers-per-room", "2000"])
        .arg("--recordings-dir")
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = server.id();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["message"] == "listening" {
            break format!("http://{}", v["fields"]["addr"].as_str().unwrap());
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let clip = Clip::load(Some(&data.join("small.ivf")), Some(&data.join("tone.ogg"))).unwrap();
    let factory = PeerFactory::new(PeerConfig::loopback());
    let http = reqwest::Client::new();
    let rec: serde_json::Value = http
        .post(format!("{base}/api/recordings"))
        .json(&serde_json::json!({"room": "soak"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = rec["id"].as_str().unwrap().to_owned();
    let sample = |label: &str, t: u64| {
        println!(
            "{label:>10}: RSS {:>7.1} MiB  fds {:>5}  tasks {:>6}",
            rss_kib(pid) as f64 / 1024.0,
            fds(pid),
            t
        );
    };
    // Warm-up batch, then the baseline.
    let started = Instant::now();
    let mut joined = 0;
    let mut baseline = None;
    while joined < peers {
        let mut handles = Vec::new();
        for i in 0..batch.min(peers - joined) {
            let name = format!("p{}", joined + i);
            match recbot::publish::start(
                &base,
                "soak",
                &name,
                clip.clone(),
                factory.clone(),
                PublishOptions::default(),
            )
            .await
            {
                Ok(h) => handles.push(h),
                Err(e) => eprintln!("{name}: {e}"),
            }
        }
        joined += batch;
        tokio::time::sleep(Duration::from_millis(700)).await;
        for h in handles {
            h.leave().await;
        }
        if baseline.is_none() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let t = tasks(&base).await;
            baseline = Some((rss_kib(pid), fds(pid), t));
            sample("baseline", t);
        } else if joined % (peers / 5).max(batch) == 0 {
            sample(&format!("{joined} peers"), tasks(&base).await);
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = tasks(&base).await;
    sample("settled", t);
    let (rss0, fds0, t0) = baseline.unwrap();
    println!(
        "after {joined} peers in {:.0} s: RSS {:+.1} MiB, fds {:+}, tasks {:+} against the baseline",
        started.elapsed().as_secs_f64(),
        (rss_kib(pid) as f64 - rss0 as f64) / 1024.0,
        fds(pid) as i64 - fds0 as i64,
        t as i64 - t0 as i64
    );
    let doc: serde_json::Value = http
        .post(format!("{base}/api/recordings/{id}/stop"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!(
        "recording: {} tracks, state {}",
        doc["tracks"].as_array().map_or(0, |t| t.len()),
        doc["state"]
    );
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = server.wait();
}
