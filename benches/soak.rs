//! Soak: 1,000 peers join and leave a recorded room a few at a time, against a real
//! `recbot serve` process; its RSS, open file descriptors and live tasks are sampled and must
//! come back near their baseline. Run: `cargo bench --bench soak` (PEERS=… BATCH=… SETTLE_S=… to change).

mod common;

use common::{env_or, fds, status_kib, Server};
use recbot::client::{Clip, PublishOptions};
use recbot::peer::{PeerConfig, PeerFactory};
use std::path::Path;
use std::time::{Duration, Instant};

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

#[tokio::main]
async fn main() {
    let peers: usize = env_or("PEERS", 1000);
    let batch: usize = env_or("BATCH", 5);
    let settle: u64 = env_or("SETTLE_S", 5);
    let server = Server::start(&["--udp-bind", "127.0.0.1", "--max-peers-per-room", "2000"]);
    let pid = server.pid();
    let base = server.base.clone();
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
    let rss_kib = |pid| status_kib(pid, "VmRSS:");
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
    let mut bots = 0;
    let mut baseline = None;
    while joined < peers {
        let mut handles = Vec::new();
        for i in 0..batch.min(peers - joined) {
            let name = format!("p{}", joined + i);
            match recbot::client::start(
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
        // Bots come and go too: every 10th batch an echo bot joins the room with the peers.
        let bot = if (joined / batch).is_multiple_of(10) {
            let created: serde_json::Value = http
                .post(format!("{base}/api/bots"))
                .json(&serde_json::json!({"room": "soak", "mode": "echo"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or_default();
            created["id"].as_str().map(str::to_owned)
        } else {
            None
        };
        tokio::time::sleep(Duration::from_millis(700)).await;
        if let Some(id) = bot {
            bots += 1;
            let _ = http.delete(format!("{base}/api/bots/{id}")).send().await;
        }
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
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let t = tasks(&base).await;
    sample("settled", t);
    let (rss0, fds0, t0) = baseline.unwrap();
    println!("{bots} echo bots came and went");
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
}
