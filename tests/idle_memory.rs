//! Issue 15: an idle signaling connection holds at most 4 KiB of the server's heap, in rooms
//! of 1, 10 and 64. Counted exactly, not by RSS: a counting allocator adds up the bytes
//! allocated and freed on the server runtime's threads, so the clients of this process (run
//! on another runtime) do not count, and neither does what other processes do meanwhile.

mod common;

use common::TestServer;
use futures::StreamExt;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

struct Counting;

thread_local! {
    static SERVER_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Live heap bytes allocated on server threads (frees there subtract).
static LIVE: AtomicI64 = AtomicI64::new(0);

fn counted() -> bool {
    SERVER_THREAD.try_with(Cell::get).unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && counted() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        if counted() {
            LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && counted() {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Connections per measurement.
const PEERS: usize = 128;
/// The target of issue 15.
const BUDGET: i64 = 4096;

/// Connects `PEERS` idle clients in rooms of `room_size` (room names start with `prefix`),
/// waits until each has read every message meant for it (its welcome and one `peer-joined`
/// per later member), and returns the clients' tasks, the server's live heap growth per
/// connection meanwhile, and the most peers a `welcome` listed (every message must parse).
async fn connect_idle(
    srv: &TestServer,
    prefix: &str,
    room_size: usize,
) -> (Vec<tokio::task::JoinHandle<()>>, i64, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let received = Arc::new(AtomicUsize::new(0));
    let listed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    let mut expected = 0;
    for i in 0..PEERS {
        let url = srv.ws_url(&format!("/rooms/{prefix}{}/ws?name=idle{i}", i / room_size));
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
            .await
            .expect("connects");
        let received = Arc::clone(&received);
        let listed = Arc::clone(&listed);
        clients.push(tokio::spawn(async move {
            let mut ws = ws;
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                if json["type"] == "welcome" {
                    let peers = json["peers"].as_array().expect("peers").len();
                    listed.fetch_max(peers, Ordering::Relaxed);
                }
                received.fetch_add(1, Ordering::Relaxed);
            }
        }));
        // Its welcome, and later a `peer-joined` for each member after it.
        let position = i % room_size;
        let members = room_size.min(PEERS - (i - position));
        expected += 1 + (members - 1 - position);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < expected {
        assert!(Instant::now() < deadline, "the clients got their messages");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the server's tasks finish what they were writing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = LIVE.load(Ordering::Relaxed) - before;
    (
        clients,
        grown / PEERS as i64,
        listed.load(Ordering::Relaxed),
    )
}

#[test]
fn an_idle_signaling_connection_holds_at_most_4_kib() {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(|| SERVER_THREAD.with(|c| c.set(true)))
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let srv = server_rt
        .block_on(server_rt.spawn(TestServer::start_with(|a| {
            a.max_peers_per_room = 64;
            a.max_connections_per_ip = 10_000;
        })))
        .unwrap();
    let hub = Arc::clone(&srv.server.as_ref().unwrap().app.services.hub);
    // A dropped client leaves at once instead of keeping its seat for a resume.
    hub.set_resume_grace(Duration::ZERO);
    let mut figures = Vec::new();
    client_rt.block_on(async {
        // Once unmeasured: the runtime, slabs and maps grow to their size for this many.
        let (warm, _, _) = connect_idle(&srv, "warm", 64).await;
        let mut round = vec![("warm", warm)];
        for room_size in [1, 10, 64] {
            let (_, clients) = round.pop().unwrap();
            for client in &clients {
                client.abort();
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while hub.counts().1 > 0 {
                assert!(Instant::now() < deadline, "the clients left");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Their session tasks end just after they leave.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let prefix = format!("s{room_size}x");
            let (clients, per, listed) = connect_idle(&srv, &prefix, room_size).await;
            // Welcomes over the WebSocket layer's buffered size arrive whole too.
            assert_eq!(listed, room_size - 1, "rooms of {room_size}");
            figures.push((room_size, per));
            round.push(("measured", clients));
        }
    });
    for (room_size, per) in &figures {
        println!("rooms of {room_size}: {per} bytes of server heap per idle connection");
    }
    for (room_size, per) in figures {
        assert!(
            per <= BUDGET,
            "rooms of {room_size}: {per} bytes per idle connection, over {BUDGET}"
        );
    }
    server_rt.block_on(async move {
        if let Some(server) = srv.server {
            let _ = server.shutdown().await;
        }
    });
}
