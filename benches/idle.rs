//! Idle signaling: K WebSocket peers join rooms (ROOM_SIZE per room) and stay idle with pings
//! on, against a real `recbot serve` process. Prints its memory per idle connection and its
//! CPU per second of idling. Run: `cargo bench --bench idle`
//! (PEERS=10000 ROOM_SIZE=10 IDLE_SECONDS=60).

use futures::StreamExt;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

#[tokio::main]
async fn main() {
    let peers: usize = std::env::var("PEERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let room_size: usize = std::env::var("ROOM_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let idle: u64 = std::env::var("IDLE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let files = recbot::util::raise_open_files_limit();
    println!("open files limit of the bench process: {files:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_recbot"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log",
            "warn,recbot::app=info",
        ])
        .args(["--max-peers-per-room", "200", "--max-rooms", "100000"])
        .arg("--recordings-dir")
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["message"] == "listening" {
            break v["fields"]["addr"].as_str().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base_kib = status_kib(pid, "VmRSS:");
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4096;
    config.write_buffer_size = 0;
    let started = Instant::now();
    let mut readers = Vec::with_capacity(peers);
    for i in 0..peers {
        let url = format!(
            "ws://{addr}/rooms/r{}/ws?name=idle{i}",
            i / room_size.max(1)
        );
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
            .await
            .expect("connects");
        // Reading keeps the connection answering pings; everything else is dropped.
        readers.push(tokio::spawn(async move {
            let mut ws = ws;
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    println!(
        "{peers} peers connected in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let connected_kib = status_kib(pid, "VmRSS:");
    let t0 = cpu_ticks(pid);
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let hz: f64 = 100.0;
    let cpu = (cpu_ticks(pid) - t0) as f64 / hz;
    let after_kib = status_kib(pid, "VmRSS:");
    let still: usize = readers.iter().filter(|r| !r.is_finished()).count();
    println!(
        "server RSS: {:.1} MiB before, {:.1} MiB with {peers} idle peers, {:.1} MiB after {idle} s idle",
        base_kib as f64 / 1024.0,
        connected_kib as f64 / 1024.0,
        after_kib as f64 / 1024.0
    );
    println!(
        "memory per idle connection: {:.2} KiB; CPU while idle: {:.2} % of a core ({:.4} core-seconds per second); {still} of {peers} still connected",
        (after_kib.saturating_sub(base_kib)) as f64 / peers as f64,
        cpu / idle_start.elapsed().as_secs_f64() * 100.0,
        cpu / idle_start.elapsed().as_secs_f64()
    );
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
}
