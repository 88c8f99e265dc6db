//! SPEC §5 fidelity over real loopback peers: audio/video sync on one timeline (separate files
//! placed by `start_offset_ms`, and muxed), DTX keeping its time, a lossy path, and a
//! resolution change mid-stream.

mod common;

use common::*;
use recbot::client::{Clip, PublishOptions};
use recbot::peer::{LossSpec, PeerConfig, PeerFactory};
use recbot::record::ogg::read_ogg_opus;
use recbot::record::webm_reader::{read_webm, WebmInfo};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Records `room` with `clip` published by one peer for `seconds`; returns the stopped doc and
/// the downloaded files by name.
async fn record(
    srv: &TestServer,
    room: &str,
    body: serde_json::Value,
    clip: Arc<Clip>,
    factory: Arc<PeerFactory>,
    options: PublishOptions,
    seconds: f64,
) -> (
    serde_json::Value,
    Vec<(String, Vec<u8>)>,
    recbot::client::PublisherHandle,
) {
    let (status, rec) = srv.post_json("/api/recordings", body).await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_owned();
    let publisher = recbot::client::start(&srv.base, room, "pub", clip, factory, options)
        .await
        .expect("publisher joins");
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let (status, done) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(done["state"], "stopped", "{done}");
    let mut files = Vec::new();
    for f in done["files"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap().to_owned();
        let bytes = srv
            .http
            .get(srv.url(&format!("/api/recordings/{id}/files/{name}")))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        files.push((name, bytes));
    }
    (done, files, publisher)
}

fn track<'a>(doc: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    doc["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} track in {doc}"))
}

fn file<'a>(files: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &files
        .iter()
        .find(|f| f.0 == name)
        .expect("file downloaded")
        .1
}

/// Times (s, file time) of frames much brighter than the previous one, by ffprobe.
fn flash_times(path: &Path) -> Option<Vec<f64>> {
    ffprobe_duration(path)?;
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("movie={},signalstats", path.display()))
        .args([
            "-show_entries",
            "frame=pts_time:frame_tags=lavfi.signalstats.YAVG",
            "-of",
            "csv=p=0",
        ])
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut flashes = Vec::new();
    let mut previous = 255.0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut parts = line.split(',');
        let (Some(t), Some(y)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(t), Ok(y)) = (t.parse::<f64>(), y.parse::<f64>()) else {
            continue;
        };
        if y > 128.0 && previous < 64.0 {
            flashes.push(t);
        }
        previous = y;
    }
    Some(flashes)
}

/// Onsets (s) of beeps in `pcm` (48 kHz): loud after at least 300 ms of quiet.
fn onsets(pcm: &[f32]) -> Vec<f64> {
    let mut out = Vec::new();
    let mut quiet = 0usize;
    for (i, x) in pcm.iter().enumerate() {
        if x.abs() > 0.1 {
            if quiet >= 14_400 {
                out.push(i as f64 / 48_000.0);
            }
            quiet = 0;
        } else {
            quiet += 1;
        }
    }
    out
}

fn decoder(channels: u8) -> opus::Decoder {
    let ch = if channels == 2 {
        opus::Channels::Stereo
    } else {
        opus::Channels::Mono
    };
    opus::Decoder::new(48_000, ch).unwrap()
}

/// Decodes an Ogg Opus file to mono PCM on its playback timeline (pre-skip removed).
fn decode_ogg(bytes: &[u8]) -> Vec<f32> {
    let info = read_ogg_opus(std::io::Cursor::new(bytes)).expect("ogg parses");
    let mut dec = decoder(info.channels);
    let ch = usize::from(info.channels);
    let mut pcm = Vec::new();
    let mut buf = vec![0f32; 5760 * 2];
    for p in &info.packets {
        let n = dec
            .decode_float(&p.data, &mut buf, false)
            .expect("valid packet");
        pcm.extend(buf[..n * ch].iter().step_by(ch));
    }
    pcm.drain(..usize::from(info.pre_skip).min(pcm.len()));
    pcm
}

/// Beep onsets (s, file time) of the Opus track of a WebM, placing each block at its timestamp.
fn webm_audio_onsets(info: &WebmInfo) -> Vec<f64> {
    let audio = info
        .tracks
        .iter()
        .find(|t| t.codec_id == "A_OPUS")
        .expect("opus track");
    let channels = audio.channels.unwrap_or(2);
    let delay = audio.codec_delay_ns.unwrap_or(0) as f64 / 1e9;
    let mut dec = decoder(channels);
    let ch = usize::from(channels);
    let mut buf = vec![0f32; 5760 * 2];
    let mut out = Vec::new();
    let mut quiet = 0usize;
    for block in info.blocks.iter().filter(|b| b.track == audio.number) {
        let n = dec
            .decode_float(&block.data, &mut buf, false)
            .expect("valid packet");
        for (i, x) in buf[..n * ch].iter().step_by(ch).enumerate() {
            if x.abs() > 0.1 {
                if quiet >= 14_400 {
                    out.push(block.ts_ms as f64 / 1000.0 + i as f64 / 48_000.0 - delay);
                }
                quiet = 0;
            } else {
                quiet += 1;
            }
        }
    }
    out
}

/// Largest distance from each flash to the nearest beep; asserts enough pairs were seen.
fn worst_sync_error(flashes: &[f64], beeps: &[f64]) -> f64 {
    assert!(flashes.len() >= 3, "flashes seen: {flashes:?}");
    assert!(beeps.len() >= 3, "beeps heard: {beeps:?}");
    flashes
        .iter()
        .map(|f| beeps.iter().map(|b| (b - f).abs()).fold(f64::MAX, f64::min))
        .fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_and_video_stay_in_sync_in_separate_and_muxed_files() {
    let _serial = heavy().await;
    let srv = TestServer::start().await;
    let clip = Clip::load(Some(&data("flash.ivf")), Some(&data("beeps.ogg"))).unwrap();
    // Keyframes every 0.5 s in the clip; the publisher keeps A and V in step (no jumps).
    let options = PublishOptions {
        ignore_keyframe_requests: true,
        ..Default::default()
    };
    let separate = record(
        &srv,
        "sync-a",
        serde_json::json!({"room": "sync-a"}),
        clip.clone(),
        factory(),
        options.clone(),
        5.6,
    );
    let muxed = record(
        &srv,
        "sync-b",
        serde_json::json!({"room": "sync-b", "audio": "webm"}),
        clip.clone(),
        factory(),
        options,
        5.6,
    );
    let ((sep_doc, sep_files, p1), (mux_doc, mux_files, p2)) = tokio::join!(separate, muxed);
    let work = tempfile::tempdir().unwrap();

    // Separate files, placed on the recording's timeline by start_offset_ms.
    let video = track(&sep_doc, "video");
    let audio = track(&sep_doc, "audio");
    let vpath = save(
        work.path(),
        "v.webm",
        file(&sep_files, video["file"].as_str().unwrap()),
    );
    let abytes = file(&sep_files, audio["file"].as_str().unwrap());
    ffmpeg_decodes_cleanly(&vpath);
    ffmpeg_decodes_cleanly(&save(work.path(), "a.ogg", abytes));
    let voff = video["start_offset_ms"].as_f64().unwrap() / 1000.0;
    let aoff = audio["start_offset_ms"].as_f64().unwrap() / 1000.0;
    if let Some(flashes) = flash_times(&vpath) {
        let flashes: Vec<f64> = flashes.iter().map(|t| t + voff).collect();
        let beeps: Vec<f64> = onsets(&decode_ogg(abytes))
            .iter()
            .map(|t| t + aoff)
            .collect();
        let err = worst_sync_error(&flashes, &beeps);
        println!(
            "separate files: worst A/V sync error {:.1} ms",
            err * 1000.0
        );
        assert!(err <= 0.040, "flashes {flashes:?} beeps {beeps:?}");
    }

    // Muxed: one file per participant, both tracks on its timeline.
    let files = mux_doc["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{mux_doc}");
    let name = files[0]["name"].as_str().unwrap();
    assert_eq!(track(&mux_doc, "video")["file"], name);
    assert_eq!(track(&mux_doc, "audio")["file"], name);
    assert_eq!(
        track(&mux_doc, "video")["bytes"],
        track(&mux_doc, "audio")["bytes"]
    );
    let bytes = file(&mux_files, name);
    let info = read_webm(std::io::Cursor::new(bytes)).unwrap();
    assert_eq!(info.tracks.len(), 2);
    assert!(info.blocks[0].keyframe && info.blocks[0].ts_ms == 0);
    assert!(!info.cues.is_empty() && info.duration_ms.is_some());
    let audio_track = info.tracks.iter().find(|t| t.codec_id == "A_OPUS").unwrap();
    assert_eq!(audio_track.seek_preroll_ns, Some(80_000_000));
    assert!(audio_track
        .codec_private
        .as_ref()
        .is_some_and(|p| p.starts_with(b"OpusHead")));
    // Blocks are interleaved in timestamp order (within the writer's hold window).
    let mpath = save(work.path(), "m.webm", bytes);
    ffmpeg_decodes_cleanly(&mpath);
    if let Some(flashes) = flash_times(&mpath) {
        let beeps = webm_audio_onsets(&info);
        let err = worst_sync_error(&flashes, &beeps);
        println!("muxed file: worst A/V sync error {:.1} ms", err * 1000.0);
        assert!(err <= 0.040, "flashes {flashes:?} beeps {beeps:?}");
    }
    p1.leave().await;
    p2.leave().await;
    srv.shutdown().await;
}

fn seconds_between(a: &str, b: &str) -> f64 {
    let parse = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339")
    };
    (parse(b) - parse(a)).as_seconds_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_without_packets_keeps_its_time() {
    let _serial = heavy().await;
    let srv = TestServer::start().await;
    // tone.ogg is a 5 s 440 Hz tone; the sender sends nothing from 1 s to 3 s (DTX).
    let clip = Clip::load(None, Some(&data("tone.ogg")))
        .unwrap()
        .with_audio_gap(Duration::from_secs(1), Duration::from_secs(2));
    let (doc, files, publisher) = record(
        &srv,
        "dtx",
        serde_json::json!({"room": "dtx"}),
        clip,
        factory(),
        Default::default(),
        6.5,
    )
    .await;
    let audio = track(&doc, "audio");
    assert_eq!(audio["packets_lost"], 0, "DTX is not loss: {doc}");
    let bytes = file(&files, audio["file"].as_str().unwrap());
    let pcm = decode_ogg(bytes);
    // The silent stretch is 2 s long (the decoder's tail fades within a frame or two).
    let mut runs = Vec::new();
    let mut run = 0usize;
    for x in &pcm {
        if x.abs() < 0.01 {
            run += 1;
        } else {
            if run > 48_000 {
                runs.push(run as f64 / 48_000.0);
            }
            run = 0;
        }
    }
    assert!(!runs.is_empty(), "no silence found");
    for r in &runs {
        assert!(
            (r - 2.0).abs() < 0.06,
            "silence of {r} s, expected 2 s: {runs:?}"
        );
    }
    // Duration = live time: from the first sample to the stop request.
    let live = seconds_between(
        doc["started_at"].as_str().unwrap(),
        doc["stopped_at"].as_str().unwrap(),
    ) - audio["start_offset_ms"].as_f64().unwrap() / 1000.0;
    let duration = audio["duration_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        (duration - live).abs() <= 0.050,
        "duration {duration} vs live {live}"
    );
    println!(
        "dtx: silence {runs:?} s (2 s sent as no packets); duration {duration:.3} s vs live {live:.3} s (error {:.1} ms)",
        (duration - live) * 1000.0
    );
    let played = pcm.len() as f64 / 48_000.0;
    assert!(
        (played - duration).abs() <= 0.025,
        "decoded {played} s vs {duration} s"
    );
    let work = tempfile::tempdir().unwrap();
    ffmpeg_decodes_cleanly(&save(work.path(), "a.ogg", bytes));
    publisher.leave().await;
    srv.shutdown().await;
}

/// What [`lossy_run`] saw.
#[derive(Debug)]
struct LossyRun {
    frames: usize,
    packets: u64,
    packets_lost: u64,
    keyframe_requests: u64,
    /// Largest distance (ms) between consecutive video blocks of the recorded file: the hole a
    /// lost frame leaves until a keyframe is written again.
    largest_gap_ms: u64,
}

/// Largest distance (ms) between consecutive blocks of `info` (one video track).
fn largest_gap_ms(info: &WebmInfo) -> u64 {
    info.blocks
        .windows(2)
        .map(|w| u64::try_from(w[1].ts_ms - w[0].ts_ms).unwrap_or(0))
        .max()
        .unwrap_or(0)
}

/// Records one publisher whose outgoing RTP loses `drop` (and reorders as many) for `seconds`
/// and checks the video: only complete, original frames, starting on a keyframe, duration =
/// live time.
async fn lossy_run(
    srv: &TestServer,
    room: &str,
    drop: f64,
    sticky: bool,
    seed: u64,
    seconds: f64,
) -> LossyRun {
    let originals: HashSet<Vec<u8>> = {
        let file = std::fs::File::open(data("clip.ivf")).unwrap();
        let mut reader = recbot::media::ivf::IvfReader::new(file).unwrap().0;
        std::iter::from_fn(|| reader.next_frame().unwrap().map(|f| f.data)).collect()
    };
    let mut config = PeerConfig::loopback();
    config.outbound_loss = Some(LossSpec {
        drop,
        reorder: 0.05,
        seed,
        sticky,
    });
    let (doc, files, publisher) = record(
        srv,
        room,
        serde_json::json!({"room": room}),
        clip(),
        PeerFactory::new(config),
        Default::default(),
        seconds,
    )
    .await;
    let video = track(&doc, "video");
    let bytes = file(&files, video["file"].as_str().unwrap());
    let info = read_webm(std::io::Cursor::new(bytes)).unwrap();
    assert!(info.blocks[0].keyframe);
    assert!(info.blocks.len() > 30, "{} frames", info.blocks.len());
    for (i, block) in info.blocks.iter().enumerate() {
        assert!(
            originals.contains(&block.data),
            "{room}: frame {i} is not a frame that was sent"
        );
    }
    let requests = publisher
        .stats
        .keyframe_requests
        .load(std::sync::atomic::Ordering::Relaxed);
    let duration = video["duration_ms"].as_f64().unwrap();
    let live = seconds_between(
        doc["started_at"].as_str().unwrap(),
        doc["stopped_at"].as_str().unwrap(),
    ) * 1000.0
        - video["start_offset_ms"].as_f64().unwrap();
    assert!(
        (duration - live).abs() <= 50.0,
        "{room}: duration {duration} vs live {live}"
    );
    let work = tempfile::tempdir().unwrap();
    ffmpeg_decodes_cleanly(&save(work.path(), "v.webm", bytes));
    let audio = track(&doc, "audio");
    ffmpeg_decodes_cleanly(&save(
        work.path(),
        "a.ogg",
        file(&files, audio["file"].as_str().unwrap()),
    ));
    let largest_gap_ms = largest_gap_ms(&info);
    println!(
        "{room} ({:.0}% drop, sticky {sticky}): {} frames written, video packets {} lost {}, keyframe requests {requests}, largest video gap {largest_gap_ms} ms, duration error {:.1} ms",
        drop * 100.0,
        info.blocks.len(),
        video["packets"],
        video["packets_lost"],
        duration - live
    );
    publisher.leave().await;
    LossyRun {
        frames: info.blocks.len(),
        packets: video["packets"].as_u64().unwrap(),
        packets_lost: video["packets_lost"].as_u64().unwrap(),
        keyframe_requests: requests,
        largest_gap_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_path_gives_complete_frames_and_keyframe_requests() {
    let _serial = heavy().await;
    let srv = TestServer::start().await;
    // 5 %: NACK retransmissions recover it. 5 % sticky: retransmissions of a lost packet are
    // lost too, so frames are dropped until the next keyframe and PLIs are sent on loss.
    let (light, heavy) = tokio::join!(
        lossy_run(&srv, "lossy", 0.05, false, 7, 6.0),
        lossy_run(&srv, "lossy-sticky", 0.05, true, 11, 6.0)
    );
    assert!(light.keyframe_requests >= 1, "the initial PLI was sent");
    assert!(
        heavy.packets_lost > 0,
        "heavy loss is not all recovered: {heavy:?}"
    );
    assert!(heavy.keyframe_requests >= 2, "PLIs on loss: {heavy:?}");
    assert!(light.frames > 0 && heavy.packets > 0);
    srv.shutdown().await;
}

/// Longest hole a lost frame may leave in the video when NACK cannot recover it (issue 10
/// item 6): a keyframe is asked for at once (150 ms after the gap opened, NACK's chance), it
/// comes back within a round trip and a frame or two, and an incomplete one is asked for again
/// at once. Waiting for the clip's next periodic keyframe (every 1 s) leaves 1.0–1.1 s.
const MAX_LOSS_HOLE_MS: u64 = 600;

/// Issue 10 item 6 end to end: 5 % loss that NACK cannot recover (retransmissions are lost
/// too), clip keyframes only every second, and the recorded file's largest gap between
/// consecutive video blocks stays well under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrecoverable_loss_leaves_only_short_video_holes() {
    let _serial = heavy().await;
    let srv = TestServer::start().await;
    let mut worst = 0;
    for (room, seed) in [("hole-a", 11), ("hole-b", 23)] {
        let run = lossy_run(&srv, room, 0.05, true, seed, 8.0).await;
        assert!(
            run.packets_lost >= 5,
            "{room}: too little loss to measure: {run:?}"
        );
        worst = worst.max(run.largest_gap_ms);
    }
    println!("unrecoverable 5 % loss: largest video hole {worst} ms");
    assert!(
        worst < MAX_LOSS_HOLE_MS,
        "a lost frame left a {worst} ms hole in the video"
    );
    srv.shutdown().await;
}

/// Width and height of a VP8 keyframe.
fn keyframe_size(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let h = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    Some((w, h))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolution_change_keeps_recording() {
    let _serial = heavy().await;
    let srv = TestServer::start().await;
    // 5 s at 320x240, then 1 s at 160x120, looping.
    let clip = Clip::load_sequence(&[&data("clip.ivf"), &data("small.ivf")], None).unwrap();
    let options = PublishOptions {
        ignore_keyframe_requests: true,
        ..Default::default()
    };
    let (doc, files, publisher) = record(
        &srv,
        "resize",
        serde_json::json!({"room": "resize"}),
        clip,
        factory(),
        options,
        7.5,
    )
    .await;
    let video = track(&doc, "video");
    let bytes = file(&files, video["file"].as_str().unwrap());
    let info = read_webm(std::io::Cursor::new(bytes)).unwrap();
    let sizes: HashSet<(u16, u16)> = info
        .blocks
        .iter()
        .filter(|b| b.keyframe)
        .filter_map(|b| keyframe_size(&b.data))
        .collect();
    assert!(
        sizes.contains(&(320, 240)) && sizes.contains(&(160, 120)),
        "{sizes:?}"
    );
    let last_key = info
        .blocks
        .iter()
        .rev()
        .find(|b| b.keyframe)
        .and_then(|b| keyframe_size(&b.data))
        .unwrap();
    assert_eq!(
        (
            video["width"].as_u64().unwrap(),
            video["height"].as_u64().unwrap()
        ),
        (u64::from(last_key.0), u64::from(last_key.1)),
        "the manifest shows the latest size"
    );
    let work = tempfile::tempdir().unwrap();
    ffmpeg_decodes_cleanly(&save(work.path(), "v.webm", bytes));
    publisher.leave().await;
    srv.shutdown().await;
}

/// Largest distance between a flash and its beep, over the flashes that have a beep within
/// half a second (the clip has one of each per second; the recording's ends may cut one of a
/// pair). At least 3 pairs must match, so a participant placed far off fails.
fn matched_sync_error(flashes: &[f64], beeps: &[f64]) -> f64 {
    let pairs: Vec<f64> = flashes
        .iter()
        .map(|f| beeps.iter().map(|b| (b - f).abs()).fold(f64::MAX, f64::min))
        .filter(|d| *d <= 0.5)
        .collect();
    assert!(
        pairs.len() >= 3,
        "flashes {flashes:?} and beeps {beeps:?} do not pair up"
    );
    pairs.into_iter().fold(0.0, f64::max)
}

/// A child process in its own process group, stopped (TERM, then KILL, by its process-group
/// id) when dropped, on every exit path of the test, panics included.
struct ProcessGroup {
    child: std::process::Child,
}

impl ProcessGroup {
    /// Spawns `command` as the leader of a new process group.
    fn spawn(command: &mut std::process::Command) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt;
        let child = command.process_group(0).spawn()?;
        Ok(Self { child })
    }

    /// Its process id (= its process-group id).
    fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_child(&self.child)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        use rustix::process::{kill_process_group, Signal};
        let group = self.pid();
        let _ = kill_process_group(group, Signal::TERM);
        for _ in 0..40 {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Members that outlived the leader's TERM handling.
        let _ = kill_process_group(group, Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CPU hog beside the server: `stress-ng --cpu N` (normal priority), bounded by its own
/// timeout. `None` when stress-ng is missing outside CI (under CI=true that fails the test,
/// like the other tool checks).
fn cpu_hog(workers: u32, limit: Duration) -> Option<ProcessGroup> {
    let started = ProcessGroup::spawn(
        std::process::Command::new("stress-ng")
            .args(["--cpu", &workers.to_string(), "--quiet", "--timeout"])
            .arg(format!("{}s", limit.as_secs().max(1)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    match started {
        Ok(hog) => Some(hog),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("stress-ng is required under CI=true: {e}")
        }
        Err(e) => {
            eprintln!("skipping the CPU hog: stress-ng does not start: {e}");
            None
        }
    }
}

/// Niceness the load test asks for its publisher process: well above the hog's and the
/// server's (0), so that the hog starves the recorder and not the senders.
const PUBLISHER_NICE: i32 = -10;

/// `count` mesh publishers (`NAME-1` … `NAME-count`) of flash.ivf and beeps.ogg, keeping the
/// clip's pace, as a `recbot publish` child (the real binary) run by `nice -n -10`, its log in
/// `log`, stopping by itself after `limit`. Raising the priority needs root (CAP_SYS_NICE);
/// without it `nice` leaves the niceness as it is and the publishers run at normal priority.
fn start_publishers(
    base: &str,
    room: &str,
    name: &str,
    count: usize,
    log: &Path,
    limit: Duration,
) -> ProcessGroup {
    let log = std::fs::File::create(log).expect("publisher log");
    ProcessGroup::spawn(
        std::process::Command::new("nice")
            .args(["-n", &PUBLISHER_NICE.to_string()])
            .arg(env!("CARGO_BIN_EXE_recbot"))
            .args(["publish", "--server", base, "--room", room, "--name", name])
            .args([
                "--count",
                &count.to_string(),
                "--mesh",
                "--ignore-keyframe-requests",
            ])
            .arg("--video")
            .arg(data("flash.ivf"))
            .arg("--audio")
            .arg(data("beeps.ogg"))
            .args(["--duration", &limit.as_secs().max(1).to_string()])
            .env("RECBOT_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log),
    )
    .expect("nice and recbot start")
}

/// Issue 10 items 9 and 10 under load: a CPU hog (4 busy workers on the 2-core machine)
/// beside the server, three publishers in a mesh (each sends to the two others and to the
/// recorder) and the recorder. Every recorded file decodes cleanly with strictly increasing
/// timestamps, and each participant's flashes and beeps, placed on the recording's timeline
/// by their files' `start_offset_ms`, agree within SPEC §5's 40 ms.
///
/// The publishers run in a separate process at a higher priority (like senders on other
/// machines): sharing the starved process, their sender reports ran 30–100 ms late for
/// seconds (webrtc-rs stamps an SR's RTP time from when its interceptor last handled a
/// packet), which the recorder cannot tell from a real capture-to-send delay. The hog and the
/// server keep normal priority, so the recorder is as starved as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_cpu_load_files_stay_clean_and_participants_in_sync() {
    let _serial = heavy().await;
    let hog = cpu_hog(4, Duration::from_secs(60));
    let srv = TestServer::start().await;
    let room = "load";
    let (status, rec) = srv
        .post_json("/api/recordings", serde_json::json!({ "room": room }))
        .await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_owned();
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("publish.log");
    let names = ["pub-1", "pub-2", "pub-3"];
    let mut publishers = start_publishers(
        &srv.base,
        room,
        "pub",
        names.len(),
        &log,
        Duration::from_secs(60),
    );
    // Joined: every participant's audio and video track is being received.
    let joined = tokio::time::Instant::now();
    loop {
        let (_, doc) = srv.get_json(&format!("/api/recordings/{id}")).await;
        let receiving = doc["tracks"]
            .as_array()
            .map(|tracks| {
                tracks
                    .iter()
                    .filter(|t| t["packets"].as_u64().is_some_and(|p| p > 0))
                    .count()
            })
            .unwrap_or(0);
        if receiving == 2 * names.len() {
            break;
        }
        let exited = publishers.child.try_wait().expect("publisher status");
        assert!(
            exited.is_none() && joined.elapsed() < Duration::from_secs(30),
            "publishers did not all join (exit {exited:?}): {doc}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nice =
        rustix::process::getpriority_process(Some(publishers.pid())).expect("publisher niceness");
    // The senders of a real meeting are on other machines: only the recorder is to be starved.
    // Without the priority (not root), the publishers' own late sender reports would be
    // measured, so the sync bound is then only reported; under CI=true (root) it is required.
    let senders_unstarved = nice == PUBLISHER_NICE;
    if senders_unstarved {
        println!(
            "under load: the publisher process runs at nice {nice}, the hog and the server at 0"
        );
    } else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "under CI=true the publisher process must get nice {PUBLISHER_NICE} (run as root)"
        );
        eprintln!(
            "under load: could not raise the publisher process's priority (nice {nice}, not root?): the publishers share the starved CPU, so the 40 ms bound is reported, not asserted"
        );
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (status, doc) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(doc["state"], "stopped", "{doc}");
    let exited = publishers.child.try_wait().expect("publisher status");
    assert!(
        exited.is_none(),
        "the publishers stopped early ({exited:?}):\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    drop(publishers);
    drop(hog);

    let dir = srv.dir.path().join(&id);
    let files = doc["files"].as_array().unwrap();
    assert_eq!(
        files.len(),
        6,
        "a video and an audio file per participant: {doc}"
    );
    for f in files {
        ffmpeg_decodes_cleanly(&dir.join(f["name"].as_str().unwrap()));
    }
    let tracks = doc["tracks"].as_array().unwrap();
    let mut errors = Vec::new();
    for name in names {
        let of = |kind: &str| {
            tracks
                .iter()
                .find(|t| t["participant_name"] == name && t["kind"] == kind)
                .unwrap_or_else(|| panic!("no {kind} track of {name}: {doc}"))
        };
        let (video, audio) = (of("video"), of("audio"));
        let voff = video["start_offset_ms"].as_f64().unwrap() / 1000.0;
        let aoff = audio["start_offset_ms"].as_f64().unwrap() / 1000.0;
        let vpath = dir.join(video["file"].as_str().unwrap());
        let abytes = std::fs::read(dir.join(audio["file"].as_str().unwrap())).unwrap();
        let Some(flashes) = flash_times(&vpath) else {
            continue;
        };
        let flashes: Vec<f64> = flashes.iter().map(|t| t + voff).collect();
        let beeps: Vec<f64> = onsets(&decode_ogg(&abytes))
            .iter()
            .map(|t| t + aoff)
            .collect();
        let err = matched_sync_error(&flashes, &beeps);
        // Beep − flash per flash (ms), to see when a side moves.
        let each: Vec<String> = flashes
            .iter()
            .filter_map(|f| {
                let b = beeps
                    .iter()
                    .copied()
                    .min_by(|a, b| (a - f).abs().total_cmp(&(b - f).abs()))?;
                ((b - f).abs() <= 0.5).then(|| format!("{:.1}@{:+.0}", f, (b - f) * 1000.0))
            })
            .collect();
        println!(
            "under load, {name}: video start {:.0} ms, audio start {:.0} ms, worst A/V sync error {:.1} ms; beep−flash {}",
            voff * 1000.0,
            aoff * 1000.0,
            err * 1000.0,
            each.join(" ")
        );
        errors.push((name, err, flashes, beeps));
    }
    for (name, err, flashes, beeps) in errors.iter().filter(|_| senders_unstarved) {
        assert!(
            *err <= 0.040,
            "{name}: {:.1} ms off; flashes {flashes:?} beeps {beeps:?}",
            err * 1000.0
        );
    }
    srv.shutdown().await;
}

/// Block times (ms) of a real Chromium video file (`bob-video-1.webm` of a `tests/browser.rs`
/// run whose ffmpeg check failed): 20 fps from the sender's capture timestamps, with two capture
/// stalls (a frame 82 ms late, then frames 38 and 25 ms apart; a frame 96 ms late, then 7 ms).
fn browser_frame_times() -> Vec<u64> {
    let mut times: Vec<u64> = (0..=115).map(|i| i * 50).collect();
    times.extend([5836, 5874, 5925, 5950]);
    times.extend((120..=141).map(|i| i * 50 + 1));
    times.extend([7147, 7154, 7200]);
    times.extend((145..=160).map(|i| i * 50));
    times
}

/// Item 9's check (`ffmpeg_decodes_cleanly`) judges the file's own timestamps: a file whose
/// frames keep the sender's uneven capture spacing is clean (the writer writes those times
/// as given), and the same file with one block's timestamp repeated is refused.
#[test]
fn the_decode_check_takes_uneven_frame_spacing_and_refuses_repeated_times() {
    let frames: Vec<Vec<u8>> = {
        let file = std::fs::File::open(data("clip.ivf")).unwrap();
        let mut reader = recbot::media::ivf::IvfReader::new(file).unwrap().0;
        std::iter::from_fn(|| reader.next_frame().unwrap().map(|f| f.data)).collect()
    };
    let is_key = |f: &[u8]| f[0] & 1 == 0;
    let times = browser_frame_times();
    assert!(frames.len() > 101 && is_key(&frames[0]));
    let track = recbot::record::webm::WebmTrack::Video {
        number: 1,
        width: 320,
        height: 240,
    };
    let mut writer =
        recbot::record::webm::WebmWriter::new(std::io::Cursor::new(Vec::new()), &[track]).unwrap();
    for (i, t) in times.iter().enumerate() {
        let frame = &frames[i % frames.len()];
        let written = writer.write_frame(1, *t, is_key(frame), frame).unwrap();
        assert_eq!(written, *t, "the writer keeps the sender's frame times");
    }
    let bytes = writer.finalize(8_050).unwrap().into_inner();
    let work = tempfile::tempdir().unwrap();
    if !ffmpeg_decodes_cleanly(&save(work.path(), "uneven.webm", &bytes)) {
        return;
    }

    // Block 101 (not a keyframe, so not a cluster's first) gets block 100's time: a SimpleBlock
    // is [track][i16 relative time][flags][frame].
    let k = 101;
    assert!(!is_key(&frames[k]));
    let at = |frame: &[u8]| {
        bytes
            .windows(frame.len())
            .position(|w| w == frame)
            .expect("frame in the file")
            - 3
    };
    let (previous, this) = (at(&frames[k - 1]), at(&frames[k]));
    let mut repeated = bytes.clone();
    repeated.copy_within(previous..previous + 2, this);
    let info = read_webm(std::io::Cursor::new(&repeated)).unwrap();
    assert_eq!(info.blocks[k].ts_ms, info.blocks[k - 1].ts_ms);
    let path = save(work.path(), "repeated.webm", &repeated);
    let refused = std::panic::catch_unwind(|| ffmpeg_decodes_cleanly(&path)).is_err();
    assert!(refused, "a repeated block time passed the check");
}
