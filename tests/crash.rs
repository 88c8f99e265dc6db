//! Crash safety (SPEC §5) and clean shutdown (SPEC §1) with the real binary: SIGKILL
//! mid-recording leaves files that decode up to about a second before the kill; the next
//! start marks the recording failed and repairs the files. SIGTERM finalizes and exits 0.

mod common;

use common::*;
use recbot::record::ogg::read_ogg_opus;
use recbot::record::webm_reader::read_webm;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped, so a failing test leaves no server behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Guard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Starts `recbot serve` on an ephemeral port; returns the child and its base URL.
fn spawn_server(dir: &Path) -> (Guard, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_recbot"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--udp-bind",
            "127.0.0.1",
        ])
        .args(["--log-format", "json", "--log", "info"])
        .arg("--recordings-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("recbot starts");
    let mut child = Guard(child);
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["fields"]["message"] == "listening" {
                    let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or_default().to_owned());
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server says where it listens");
    (child, format!("http://{addr}"))
}

async fn post(base: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

async fn get(base: &str, path: &str) -> serde_json::Value {
    reqwest::get(format!("{base}{path}"))
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_at_most_a_second_and_the_restart_repairs() {
    let _serial = heavy().await;
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = spawn_server(dir.path());
    let publisher =
        recbot::client::start(&base, "crash", "pat", clip(), factory(), Default::default())
            .await
            .expect("publisher joins");
    let rec = post(
        &base,
        "/api/recordings",
        serde_json::json!({"room": "crash"}),
    )
    .await;
    let created = Instant::now();
    let id = rec["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let killed_after = created.elapsed().as_secs_f64();
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    publisher.leave().await;

    // What the kill left: every file decodes, and holds media up to ~1 s before the kill.
    let folder = dir.path().join(&id);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("manifest.json")).unwrap()).unwrap();
    let tracks = manifest["tracks"].as_array().unwrap().clone();
    assert_eq!(tracks.len(), 2, "{manifest}");
    let copies = tempfile::tempdir().unwrap();
    for track in &tracks {
        let name = track["file"].as_str().unwrap();
        let offset = track["start_offset_ms"].as_f64().expect("placed on disk") / 1000.0;
        let bytes = std::fs::read(folder.join(name)).expect("file exists");
        let end = if track["kind"] == "video" {
            let info = match read_webm(std::io::Cursor::new(&bytes[..])) {
                Ok(info) => info,
                Err(recbot::record::webm_reader::WebmReadError::Truncated { partial, .. }) => {
                    *partial
                }
                Err(e) => panic!("{name}: {e}"),
            };
            assert!(info.blocks[0].keyframe);
            info.blocks.last().unwrap().ts_ms as f64 / 1000.0
        } else {
            let info = read_ogg_opus(std::io::Cursor::new(&bytes[..])).expect("ogg reads");
            assert!(!info.eos, "no EOS page after a kill");
            info.packets
                .iter()
                .filter_map(|p| p.granule)
                .max()
                .unwrap_or(0) as f64
                / 48_000.0
        };
        let lost = killed_after - (offset + end);
        println!("{name}: media up to {:.2} s before the kill", lost);
        assert!(lost < 1.3, "{name}: {lost:.2} s lost before the kill");
        ffmpeg_decodes_cleanly(&save(copies.path(), name, &bytes));
    }

    // The next start: failed / interrupted, files repaired (Cues, Duration), still decodable.
    let (mut child, base) = spawn_server(dir.path());
    let doc = get(&base, &format!("/api/recordings/{id}")).await;
    assert_eq!(doc["state"], "failed", "{doc}");
    assert_eq!(doc["stop_reason"], "interrupted");
    assert!(doc["error"].is_string());
    assert_eq!(doc["files"].as_array().unwrap().len(), 2, "{doc}");
    for track in doc["tracks"].as_array().unwrap() {
        let name = track["file"].as_str().unwrap();
        let path = folder.join(name);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(track["bytes"].as_u64().unwrap(), bytes.len() as u64);
        if track["kind"] == "video" {
            let info = read_webm(std::io::Cursor::new(&bytes[..])).expect("repaired webm reads");
            assert!(info.segment_size_known);
            assert!(!info.cues.is_empty(), "{name}: Cues");
            assert!(info.duration_ms.unwrap_or(0.0) > 0.0, "{name}: Duration");
            assert!(info.has_seekhead);
        } else {
            let info = read_ogg_opus(std::io::Cursor::new(&bytes[..])).unwrap();
            assert!(info.eos, "{name}: EOS page after repair");
        }
        if ffmpeg_decodes_cleanly(&path) {
            let probed = ffprobe_duration(&path).expect("a duration");
            assert!(probed > 2.0, "{name}: {probed} s");
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finalizes_every_recording_and_exits_0() {
    let _serial = heavy().await;
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = spawn_server(dir.path());
    let publisher =
        recbot::client::start(&base, "term", "tess", clip(), factory(), Default::default())
            .await
            .expect("publisher joins");
    let rec = post(
        &base,
        "/api/recordings",
        serde_json::json!({"room": "term"}),
    )
    .await;
    let id = rec["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "clean exit");
    publisher.leave().await;
    let folder = dir.path().join(&id);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(doc["state"], "stopped");
    assert_eq!(doc["stop_reason"], "shutdown");
    for track in doc["tracks"].as_array().unwrap() {
        let path = folder.join(track["file"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        if track["kind"] == "video" {
            let info = read_webm(std::io::Cursor::new(&bytes[..])).unwrap();
            assert!(info.segment_size_known && !info.cues.is_empty());
        } else {
            assert!(read_ogg_opus(std::io::Cursor::new(&bytes[..])).unwrap().eos);
        }
        ffmpeg_decodes_cleanly(&path);
    }
}
