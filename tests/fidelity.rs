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

/// Records one publisher whose outgoing RTP loses `drop` (and reorders as many) and checks the
/// video: only complete, original frames, starting on a keyframe, duration = live time.
/// Returns (frames written, packets, packets lost, keyframe requests).
async fn lossy_run(
    srv: &TestServer,
    room: &str,
    drop: f64,
    sticky: bool,
    seed: u64,
) -> (usize, u64, u64, u64) {
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
        6.0,
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
    println!(
        "{room} ({:.0}% drop, sticky {sticky}): {} frames written, video packets {} lost {}, keyframe requests {requests}, duration error {:.1} ms",
        drop * 100.0,
        info.blocks.len(),
        video["packets"],
        video["packets_lost"],
        duration - live
    );
    publisher.leave().await;
    (
        info.blocks.len(),
        video["packets"].as_u64().unwrap(),
        video["packets_lost"].as_u64().unwrap(),
        requests,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_path_gives_complete_frames_and_keyframe_requests() {
    let _serial = heavy().await;
    let srv = TestServer::start().await;
    // 5 %: NACK retransmissions recover it. 5 % sticky: retransmissions of a lost packet are
    // lost too, so frames are dropped until the next keyframe and PLIs are sent on loss.
    let (light, heavy) = tokio::join!(
        lossy_run(&srv, "lossy", 0.05, false, 7),
        lossy_run(&srv, "lossy-sticky", 0.05, true, 11)
    );
    assert!(light.3 >= 1, "the initial PLI was sent");
    assert!(heavy.2 > 0, "heavy loss is not all recovered: {heavy:?}");
    assert!(heavy.3 >= 2, "PLIs on loss: {heavy:?}");
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
