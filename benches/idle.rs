//! Idle signaling: K WebSocket peers join rooms (ROOM_SIZE per room) and stay idle with pings
//! on, against a real `recbot serve` process. Prints its memory per idle connection and its
//! CPU per second of idling. Run: `cargo bench --bench idle`
//! (PEERS=10000 ROOM_SIZE=10 IDLE_SECONDS=60).

mod common;

use common::{cpu_seconds, env_or, status_kib, Server};
use futures::StreamExt;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[tokio::main]
async fn main() {
    let peers: usize = env_or("PEERS", 10_000);
    let room_size: usize = env_or("ROOM_SIZE", 10);
    let idle: u64 = env_or("IDLE_SECONDS", 60);
    let files = recbot::util::raise_open_files_limit();
    println!("open files limit of the bench process: {files:?}");
    let server = Server::start(&[
        "--max-peers-per-room",
        "200",
        "--max-rooms",
        "100000",
        // All the bench's peers come from 127.0.0.1.
        "--max-connections-per-ip",
        "1000000",
    ]);
    let pid = server.pid();
    let addr = server.base.trim_start_matches("http://").to_owned();
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
        "{peers} peers in rooms of {room_size} connected in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let connected_kib = status_kib(pid, "VmRSS:");
    let cpu0 = cpu_seconds(pid);
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let cpu = cpu_seconds(pid) - cpu0;
    let after_kib = status_kib(pid, "VmRSS:");
    let still: usize = readers.iter().filter(|r| !r.is_finished()).count();
    println!(
        "server RSS: {:.1} MiB before, {:.1} MiB with {peers} idle peers, {:.1} MiB after {idle} s idle",
        base_kib as f64 / 1024.0,
        connected_kib as f64 / 1024.0,
        after_kib as f64 / 1024.0
    );
    let seconds = idle_start.elapsed().as_secs_f64();
    println!(
        "memory per idle connection: {:.2} KiB; CPU while idle: {:.2} % of a core ({:.4} core-seconds per second); {still} of {peers} still connected",
        (after_kib.saturating_sub(base_kib)) as f64 / peers as f64,
        cpu / seconds * 100.0,
        cpu / seconds
    );
}
