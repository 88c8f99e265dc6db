//! Object storage (SPEC §7) against a real S3 server that we did not write: `s3s` + `s3s-fs`
//! (a directory served over the S3 API, SigV4 checked), in-process on loopback. Uploads with
//! checksums, local deletion, downloads (Range) from the store, multipart, a store that goes
//! away and comes back, credentials the store stops accepting, a missing bucket, a SIGKILL of
//! recbot mid-queue, secrets kept out of logs, and DELETE removing the objects.

mod common;
#[path = "common/s3.rs"]
mod s3;

use common::*;
use recbot::config::ServeArgs;
use recbot::server::{ServeError, Server};
use recbot::store::Tuning;
use s3::S3Server;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "recbot-test-key";
const SECRET: &str = "SECRET-never-in-a-log-4c1d";
const BUCKET: &str = "recs";

/// A store root with the test bucket.
fn store_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join(BUCKET)).unwrap();
    root
}

fn storage_args(dir: &Path, s3: &S3Server, bucket: &str, keep_local: bool) -> ServeArgs {
    ServeArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        recordings_dir: dir.to_owned(),
        udp_bind: vec![[127, 0, 0, 1].into()],
        s3_endpoint: Some(s3.endpoint()),
        s3_bucket: Some(bucket.into()),
        keep_local,
        ..ServeArgs::default()
    }
}

/// Starts recbot in-process with storage on `s3` (credentials passed, not from the process
/// environment) and small parts and retry delays.
async fn start_recbot(
    dir: &Path,
    s3: &S3Server,
    bucket: &str,
    keep_local: bool,
    tuning: Tuning,
) -> Result<Server, ServeError> {
    start_recbot_with(dir, s3, bucket, keep_local, tuning, |_| {}).await
}

/// [`start_recbot`] with more settings made by `more`.
async fn start_recbot_with(
    dir: &Path,
    s3: &S3Server,
    bucket: &str,
    keep_local: bool,
    tuning: Tuning,
    more: impl FnOnce(&mut ServeArgs),
) -> Result<Server, ServeError> {
    init_logs();
    let mut args = storage_args(dir, s3, bucket, keep_local);
    more(&mut args);
    let storage = args
        .s3_settings(|name| match name {
            "RECBOT_S3_ACCESS_KEY_ID" => Some(KEY.into()),
            "RECBOT_S3_SECRET_ACCESS_KEY" => Some(SECRET.into()),
            _ => None,
        })
        .expect("storage settings");
    let mut plain = args.clone();
    plain.s3_bucket = None;
    plain.s3_endpoint = None;
    let mut config = plain.validate().expect("valid config");
    config.args = args;
    config.storage = storage;
    Server::start_tuned(config, tuning).await
}

fn fast() -> Tuning {
    Tuning {
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_millis(800),
        ..Tuning::default()
    }
}

async fn get_json(base: &str, path: &str) -> serde_json::Value {
    reqwest::get(format!("{base}{path}"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("json")
}

/// Polls recording `id` until `done` holds (or panics after `secs`).
async fn wait_for(
    base: &str,
    id: &str,
    secs: u64,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let doc = get_json(base, &format!("/api/recordings/{id}")).await;
        if done(&doc) {
            return doc;
        }
        assert!(Instant::now() < deadline, "timed out: {doc:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records `room` with one publisher for about `secs` seconds and stops; returns the id.
async fn record(base: &str, room: &str, secs: u64) -> String {
    let publisher =
        recbot::client::start(base, room, "alice", clip(), factory(), Default::default())
            .await
            .expect("publisher joins");
    let http = reqwest::Client::new();
    let rec: serde_json::Value = http
        .post(format!("{base}/api/recordings"))
        .json(&serde_json::json!({"room": room}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = rec["id"].as_str().expect("id").to_owned();
    assert_eq!(rec["upload"], "pending", "{rec}");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let stopped: serde_json::Value = http
        .post(format!("{base}/api/recordings/{id}/stop"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert_eq!(stopped["files"].as_array().unwrap().len(), 2, "{stopped}");
    publisher.leave().await;
    id
}

fn files_of(doc: &serde_json::Value) -> Vec<serde_json::Value> {
    doc["files"].as_array().cloned().unwrap_or_default()
}

/// The webhook `recording.uploaded` (SPEC §8) goes out once the manifest is in the bucket:
/// after `recording.stopped`, with every file `uploaded`, checked by the Standard Webhooks
/// crate's verifier on a real receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uploaded_event_follows_the_manifest_into_the_bucket() {
    const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let _serial = heavy().await;
    let root = store_root();
    let s3 = S3Server::start(root.path(), "127.0.0.1:0".parse().unwrap(), KEY, SECRET).await;
    let bucket = root.path().join(BUCKET);
    // The receiver notes each event's type and whether the manifest was in the bucket then.
    let got: Arc<Mutex<Vec<(String, serde_json::Value, bool)>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let handler = {
        let got = Arc::clone(&got);
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let got = Arc::clone(&got);
            let bucket = bucket.clone();
            async move {
                standardwebhooks::Webhook::new(HOOK_SECRET)
                    .unwrap()
                    .verify(&body, &headers)
                    .expect("a verified delivery");
                let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let id = doc["data"]["id"].as_str().unwrap_or_default();
                let in_bucket = bucket
                    .join(format!("recordings/{id}/manifest.json"))
                    .is_file();
                let kind = doc["type"].as_str().unwrap_or_default().to_owned();
                got.lock()
                    .unwrap()
                    .push((kind, doc["data"].clone(), in_bucket));
                axum::http::StatusCode::NO_CONTENT
            }
        }
    };
    let receiver = tokio::spawn(async move {
        let app = axum::Router::new().route("/hook", axum::routing::post(handler));
        let _ = axum::serve(listener, app).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let server = start_recbot_with(dir.path(), &s3, BUCKET, false, fast(), |args| {
        args.webhook_url = vec![hook];
        args.webhook_secret = Some(HOOK_SECRET.into());
        args.webhook_first_retry_ms = 100;
    })
    .await
    .expect("starts");
    let base = format!("http://{}", server.addr);
    let id = record(&base, "store-hook", 2).await;
    wait_for(&base, &id, 60, |d| d["upload"] == "uploaded").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events = got.lock().unwrap().clone();
        if events
            .iter()
            .any(|(kind, _, _)| kind == "recording.uploaded")
        {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "no recording.uploaded: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kinds: Vec<&str> = events.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "recording.started",
            "recording.stopped",
            "recording.uploaded"
        ],
        "{events:#?}"
    );
    let (_, data, in_bucket) = &events[2];
    assert!(*in_bucket, "the manifest was not in the bucket yet");
    assert_eq!(data["id"], id.as_str());
    assert_eq!(data["upload"], "uploaded", "{data:#}");
    assert!(
        files_of(data).iter().all(|f| f["upload"] == "uploaded"),
        "{data:#}"
    );
    server.shutdown().await.expect("clean shutdown");
    receiver.abort();
}

/// A recording uploads: every file confirmed, deleted locally, its object whole (WebM with
/// Cues, Ogg with EOS) under `recordings/{id}/`, the manifest last (the hook sees every media
/// object already there) and saying `uploaded`; downloads (Range too) come from the store;
/// metrics count it; DELETE removes the objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_verify_free_the_disk_serve_ranges_and_delete() {
    let _serial = heavy().await;
    let root = store_root();
    let s3 = S3Server::start(root.path(), "127.0.0.1:0".parse().unwrap(), KEY, SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_recbot(dir.path(), &s3, BUCKET, false, fast())
        .await
        .expect("starts");
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    {
        let seen = Arc::clone(&seen);
        let bucket = root.path().join(BUCKET);
        server
            .app
            .services
            .storage
            .as_ref()
            .expect("storage")
            .set_on_uploaded(Arc::new(move |doc| {
                let all_there = doc.files.iter().all(|f| {
                    f.object
                        .as_deref()
                        .is_some_and(|k| bucket.join(k).is_file())
                });
                seen.lock().unwrap().push((doc.id.clone(), all_there));
            }));
    }
    let base = format!("http://{}", server.addr);
    let id = record(&base, "store-a", 3).await;
    let doc = wait_for(&base, &id, 60, |d| d["upload"] == "uploaded").await;
    assert_eq!(*seen.lock().unwrap(), vec![(id.clone(), true)]);

    let manifest: serde_json::Value = serde_json::from_slice(
        &s3.object_in(BUCKET, &format!("recordings/{id}/manifest.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["upload"], "uploaded", "{manifest:#}");
    assert_eq!(manifest["state"], "stopped");
    for file in files_of(&doc) {
        let name = file["name"].as_str().unwrap();
        let key = format!("recordings/{id}/{name}");
        assert_eq!(file["upload"], "uploaded", "{doc:#}");
        assert_eq!(file["object"], key.as_str());
        assert!(file["upload_error"].is_null());
        assert!(
            !dir.path().join(&id).join(name).exists(),
            "{name} deleted locally"
        );
        let object = s3.object_in(BUCKET, &key).expect("object stored");
        assert_eq!(
            object.len() as u64,
            file["bytes"].as_u64().unwrap(),
            "{name}"
        );
        if name.ends_with(".webm") {
            let info = recbot::record::webm_reader::read_webm(std::io::Cursor::new(&object[..]))
                .expect("whole webm");
            assert!(!info.cues.is_empty() && info.blocks[0].keyframe);
        } else {
            let info = recbot::record::ogg::read_ogg_opus(std::io::Cursor::new(&object[..]))
                .expect("whole ogg");
            assert!(info.eos);
        }
        // Downloads come from the store now: whole, and a Range.
        let url = format!("{base}{}", file["url"].as_str().unwrap());
        let whole = reqwest::get(&url).await.unwrap();
        assert_eq!(whole.status(), 200);
        assert_eq!(whole.bytes().await.unwrap().as_ref(), &object[..]);
        let part = reqwest::Client::new()
            .get(&url)
            .header("range", "bytes=10-109")
            .send()
            .await
            .unwrap();
        assert_eq!(part.status(), 206, "{name}");
        assert_eq!(
            part.headers()["content-range"].to_str().unwrap(),
            format!("bytes 10-109/{}", object.len())
        );
        let want = if name.ends_with(".webm") {
            "video/webm"
        } else {
            "audio/ogg"
        };
        assert_eq!(part.headers()["content-type"], want);
        assert_eq!(part.bytes().await.unwrap().as_ref(), &object[10..110]);
    }
    // The manifest stays local (the service lists recordings from it).
    assert!(dir.path().join(&id).join("manifest.json").is_file());

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(value("recbot_upload_bytes_total") > 1000.0);
    assert_eq!(value("recbot_uploads_pending "), 0.0);
    assert_eq!(value("recbot_upload_oldest_pending_seconds "), 0.0);

    let deleted = reqwest::Client::new()
        .delete(format!("{base}/api/recordings/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let left: Vec<_> = std::fs::read_dir(root.path().join(BUCKET).join("recordings"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let objects_left = left.iter().any(|n| n.to_string_lossy() == id)
        && std::fs::read_dir(root.path().join(BUCKET).join("recordings").join(&id))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
    assert!(!objects_left, "objects of {id} left: {left:?}");
    assert!(!dir.path().join(&id).exists());
    server.shutdown().await.unwrap();
    s3.stop().await;
}

/// A manifest on disk with a pending upload (as a crash or a stop leaves it) is resumed at
/// startup; a file above the threshold goes up in parts (5 MiB, the store's minimum) and
/// arrives byte for byte; a recording made without storage stays local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_uploads_resume_at_startup_in_parts() {
    use recbot::record::manifest::{write_manifest, FileDoc, RecordingDoc, State, UploadState};
    let root = store_root();
    let s3 = S3Server::start(root.path(), "127.0.0.1:0".parse().unwrap(), KEY, SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..(11u32 << 20) + 1234)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let doc = |id: &str, upload: Option<UploadState>| RecordingDoc {
        id: id.into(),
        room: "r".into(),
        state: State::Stopped,
        bot_peer: None,
        started_at: "2026-11-20T21:00:00.000Z".into(),
        stopped_at: None,
        error: None,
        stop_reason: None,
        tracks: vec![],
        files: vec![FileDoc {
            name: "big-video-1.webm".into(),
            bytes: big.len() as u64,
            url: format!("/api/recordings/{id}/files/big-video-1.webm"),
            upload,
            upload_error: None,
            object: None,
        }],
        paused: false,
        paused_ms: 0,
        chat_messages: 0,
        chat_dropped: 0,
        upload,
        node: None,
        takeovers: None,
        composite: None,
    };
    for (id, upload) in [
        ("20261120-210000-00000a", Some(UploadState::Uploading)),
        ("20261120-210000-00000b", None),
    ] {
        let folder = dir.path().join(id);
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("big-video-1.webm"), &big).unwrap();
        write_manifest(&folder, &doc(id, upload)).unwrap();
    }
    let tuning = Tuning {
        multipart_threshold: 1 << 20,
        part_size: 5 << 20,
        ..fast()
    };
    let server = start_recbot(dir.path(), &s3, BUCKET, true, tuning)
        .await
        .expect("starts");
    let base = format!("http://{}", server.addr);
    let id = "20261120-210000-00000a";
    let done = wait_for(&base, id, 60, |d| d["upload"] == "uploaded").await;
    let key = format!("recordings/{id}/big-video-1.webm");
    assert_eq!(done["files"][0]["object"], key.as_str());
    assert!(
        s3.object_in(BUCKET, &key).unwrap() == big,
        "the object is the file"
    );
    // It went up in three parts: the store's ETag of a multipart object says so.
    let storage = server.app.services.storage.as_ref().expect("storage");
    let head = storage
        .s3()
        .fetch(&key, true, Default::default())
        .await
        .expect("HEAD");
    let etag = head.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.trim_matches('"').ends_with("-3"), "{etag}");
    // --keep-local: the local copy stays.
    assert!(dir.path().join(id).join("big-video-1.webm").is_file());
    let local = get_json(&base, "/api/recordings/20261120-210000-00000b").await;
    assert!(local["upload"].is_null(), "{local}");
    assert!(s3
        .object_in(BUCKET, "recordings/20261120-210000-00000b/big-video-1.webm")
        .is_none());
    server.shutdown().await.unwrap();
    s3.stop().await;
}

/// The store goes away after startup: the recording's files stay local and `retrying` with the
/// store's last answer; the store comes back refusing our signature (403, visible); then it
/// accepts it again and every upload completes, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_is_retried_until_it_takes_everything() {
    let _serial = heavy().await;
    let root = store_root();
    let s3 = S3Server::start(root.path(), "127.0.0.1:0".parse().unwrap(), KEY, SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_recbot(dir.path(), &s3, BUCKET, false, fast())
        .await
        .expect("starts");
    let base = format!("http://{}", server.addr);
    let addr = s3.stop().await;

    let id = record(&base, "store-c", 2).await;
    let down = wait_for(&base, &id, 30, |d| {
        files_of(d).iter().any(|f| f["upload"] == "retrying")
    })
    .await;
    assert_eq!(down["upload"], "retrying", "{down:#}");
    let error = files_of(&down)
        .iter()
        .find_map(|f| f["upload_error"].as_str().map(str::to_owned))
        .expect("upload_error");
    assert!(error.contains("unreachable"), "{error}");
    for f in files_of(&down) {
        assert!(dir
            .path()
            .join(&id)
            .join(f["name"].as_str().unwrap())
            .is_file());
    }

    // Back, but with other credentials: 403 in upload_error, still retrying, files kept.
    let s3 = S3Server::start(root.path(), addr, KEY, "another-secret").await;
    let refused = wait_for(&base, &id, 30, |d| {
        files_of(d).iter().any(|f| {
            f["upload_error"]
                .as_str()
                .is_some_and(|e| e.starts_with("403"))
        })
    })
    .await;
    assert_eq!(refused["upload"], "retrying", "{refused:#}");
    assert!(s3
        .object_in(BUCKET, &format!("recordings/{id}/manifest.json"))
        .is_none());
    let addr = s3.stop().await;

    // Back for real: everything goes up.
    let s3 = S3Server::start(root.path(), addr, KEY, SECRET).await;
    let done = wait_for(&base, &id, 60, |d| d["upload"] == "uploaded").await;
    for f in files_of(&done) {
        assert!(f["upload_error"].is_null(), "{done:#}");
        let key = f["object"].as_str().unwrap();
        assert_eq!(
            s3.object_in(BUCKET, key).unwrap().len() as u64,
            f["bytes"].as_u64().unwrap()
        );
    }
    assert!(s3
        .object_in(BUCKET, &format!("recordings/{id}/manifest.json"))
        .is_some());
    server.shutdown().await.unwrap();
    s3.stop().await;
}

/// A bucket that does not exist, or credentials the store refuses, stop the start with a
/// message naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_or_refused_credentials_stop_the_start() {
    let root = store_root();
    let s3 = S3Server::start(root.path(), "127.0.0.1:0".parse().unwrap(), KEY, SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let err = match start_recbot(dir.path(), &s3, "no-such-bucket", false, fast()).await {
        Ok(_) => panic!("started without a bucket"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("--s3-bucket `no-such-bucket` does not exist"),
        "{err}"
    );
    let addr = s3.stop().await;
    let s3 = S3Server::start(root.path(), addr, KEY, "not-ours").await;
    let err = match start_recbot(dir.path(), &s3, BUCKET, false, fast()).await {
        Ok(_) => panic!("started with refused credentials"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("access denied") && err.contains("--s3-bucket"),
        "{err}"
    );
    s3.stop().await;
}

/// A child process killed when dropped, with every stderr line kept.
struct Recbot {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Recbot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the recbot binary with storage on `endpoint`, credentials in its environment, debug
/// logs. `Err(log)` when it exits before listening.
fn spawn_recbot(dir: &Path, endpoint: &str, bucket: &str) -> Result<Recbot, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_recbot"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--udp-bind",
            "127.0.0.1",
        ])
        .args(["--log-format", "json", "--log", "debug"])
        .args(["--s3-endpoint", endpoint, "--s3-bucket", bucket])
        .arg("--recordings-dir")
        .arg(dir)
        .env("RECBOT_S3_ACCESS_KEY_ID", KEY)
        .env("RECBOT_S3_SECRET_ACCESS_KEY", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("recbot starts");
    let stderr = child.stderr.take().expect("stderr");
    let log: Arc<Mutex<String>> = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["fields"]["message"] == "listening" {
                        let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or("").to_owned());
                    }
                }
            }
        });
    }
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => Ok(Recbot {
            child,
            base: format!("http://{addr}"),
            log,
        }),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            let text = log.lock().unwrap().clone();
            Err(text)
        }
    }
}

/// recbot is SIGKILLed with uploads queued (the store down): the next start resumes them and
/// the recording completes in the bucket. Neither run logs the secret key, and a start
/// against a missing bucket fails with a message naming the flag (and no secret either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_queue_resumes_and_no_secret_is_logged() {
    let _serial = heavy().await;
    init_logs();
    let root = store_root();
    let s3 = S3Server::start(root.path(), "127.0.0.1:0".parse().unwrap(), KEY, SECRET).await;
    let endpoint = s3.endpoint();
    let dir = tempfile::tempdir().unwrap();

    let failed = spawn_recbot(dir.path(), &endpoint, "missing-bucket")
        .err()
        .expect("no start without the bucket");
    assert!(
        failed.contains("--s3-bucket `missing-bucket` does not exist"),
        "{failed}"
    );
    assert!(!failed.contains(SECRET));

    let first = spawn_recbot(dir.path(), &endpoint, BUCKET).expect("starts");
    let addr = s3.stop().await;
    let id = record(&first.base, "store-k", 2).await;
    wait_for(&first.base, &id, 30, |d| d["upload"] == "retrying").await;
    // The state is visible a moment before the failure is logged: the log must hold it
    // (with its error) before the kill, for the secret check below to mean something.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !first.log.lock().unwrap().contains("upload failed") {
        assert!(
            Instant::now() < deadline,
            "the first run logged no failed upload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut first = first;
    first.child.kill().expect("SIGKILL");
    first.child.wait().unwrap();
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(&id).join("manifest.json")).unwrap())
            .unwrap();
    assert_ne!(on_disk["upload"], "uploaded", "{on_disk:#}");

    let s3 = S3Server::start(root.path(), addr, KEY, SECRET).await;
    let second = spawn_recbot(dir.path(), &endpoint, BUCKET).expect("restarts");
    let done = wait_for(&second.base, &id, 60, |d| d["upload"] == "uploaded").await;
    for f in files_of(&done) {
        assert!(
            s3.object_in(BUCKET, f["object"].as_str().unwrap())
                .is_some(),
            "{done:#}"
        );
        assert!(!dir
            .path()
            .join(&id)
            .join(f["name"].as_str().unwrap())
            .exists());
    }
    assert!(s3
        .object_in(BUCKET, &format!("recordings/{id}/manifest.json"))
        .is_some());
    for (run, log) in [("first", &first.log), ("second", &second.log)] {
        let log = log.lock().unwrap();
        assert!(log.contains("upload"), "{run} run logged its uploads");
        assert!(!log.contains(SECRET), "{run} run logged the secret");
    }
    drop(second);
    s3.stop().await;
}

/// Benchmark (run by hand: `cargo test --release --test storage -- --ignored --nocapture`):
/// upload throughput of a 96 MiB file (6 parts of 16 MiB, MD5 and checks included) to the
/// in-process s3s-fs server on loopback, from the pending queue at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_upload_throughput() {
    use recbot::record::manifest::{write_manifest, FileDoc, RecordingDoc, State, UploadState};
    let root = store_root();
    let s3 = S3Server::start(root.path(), "127.0.0.1:0".parse().unwrap(), KEY, SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let id = "20261120-210000-0000be";
    let size = 96usize << 20;
    let data: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let folder = dir.path().join(id);
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("big-video-1.webm"), &data).unwrap();
    write_manifest(
        &folder,
        &RecordingDoc {
            id: id.into(),
            room: "r".into(),
            state: State::Stopped,
            bot_peer: None,
            started_at: "2026-11-20T21:00:00.000Z".into(),
            stopped_at: None,
            error: None,
            stop_reason: None,
            tracks: vec![],
            files: vec![FileDoc {
                name: "big-video-1.webm".into(),
                bytes: size as u64,
                url: String::new(),
                upload: Some(UploadState::Pending),
                upload_error: None,
                object: None,
            }],
            paused: false,
            paused_ms: 0,
            chat_messages: 0,
            chat_dropped: 0,
            upload: Some(UploadState::Pending),
            node: None,
            takeovers: None,
            composite: None,
        },
    )
    .unwrap();
    let started = Instant::now();
    let server = start_recbot(dir.path(), &s3, BUCKET, false, Tuning::default())
        .await
        .expect("starts");
    let base = format!("http://{}", server.addr);
    wait_for(&base, id, 300, |d| d["upload"] == "uploaded").await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "uploaded {} MiB in {secs:.2} s: {:.1} MiB/s",
        size >> 20,
        (size >> 20) as f64 / secs
    );
    server.shutdown().await.unwrap();
    s3.stop().await;
}
