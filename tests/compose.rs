//! The meeting, whole (SPEC §11): the live mix `room-mix.ogg` checked by content (each
//! participant's tone where its own file has it), with real publishers over loopback.

mod common;

use common::*;
use recbot::record::ogg::{read_ogg_opus, OggOpusWriter};
use std::path::Path;
use std::time::Duration;

/// Amplitude of each test tone: three at once sum to 1.35, past full scale.
const AMP: f32 = 0.45;

/// Writes `seconds` of a `hz` sine as Ogg Opus (20 ms packets, 48 kHz mono) to `path`.
fn tone_clip(path: &Path, hz: f32, seconds: f32) {
    let mut enc =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = OggOpusWriter::new(std::io::BufWriter::new(file), 7, 1, 312).unwrap();
    let frames = (seconds * 50.0) as usize;
    for k in 0..frames {
        let pcm: Vec<f32> = (k * 960..(k + 1) * 960)
            .map(|i| AMP * (2.0 * std::f32::consts::PI * hz * i as f32 / 48_000.0).sin())
            .collect();
        let packet = enc.encode_vec_float(&pcm, 4000).unwrap();
        w.write_packet(&packet, (k * 960) as u64).unwrap();
    }
    w.finalize(None).unwrap();
}

/// Decodes an Ogg Opus file to mono samples; with `drop_pre_skip`, the way players do.
fn decode(bytes: &[u8], drop_pre_skip: bool) -> Vec<f32> {
    let info = read_ogg_opus(std::io::Cursor::new(bytes)).expect("valid Ogg Opus");
    let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0f32; 5760];
    for p in &info.packets {
        let n = dec.decode_float(&p.data, &mut buf, false).expect("decodes");
        out.extend_from_slice(&buf[..n]);
    }
    if let Some(total) = info.final_granule {
        out.truncate(total as usize);
    }
    if drop_pre_skip {
        out.drain(..usize::from(info.pre_skip).min(out.len()));
    }
    out
}

/// Goertzel magnitude of `hz` in `x`, normalized so that a sine of amplitude A gives A / 2.
fn goertzel(x: &[f32], hz: f32) -> f32 {
    let w = 2.0 * std::f32::consts::PI * hz / 48_000.0;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &v in x {
        let s = v + c * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2).max(0.0).sqrt() / x.len().max(1) as f32
}

/// Whether `hz` sounds in the 100 ms window of `samples` centred on `t` (seconds), for a
/// track whose sample 0 sits at `offset` seconds; false outside the track.
fn sounds(samples: &[f32], offset: f64, t: f64, hz: f32) -> bool {
    let from = ((t - 0.05 - offset) * 48_000.0).round();
    if from < 0.0 || from as usize + 4800 > samples.len() {
        return false;
    }
    let from = from as usize;
    goertzel(&samples[from..from + 4800], hz) > 0.04
}

/// Three publishers with tones of 440, 880 and 1320 Hz: alice there from the start, bob
/// joining 1.5 s in with 0.6 s DTX gaps (no packets), carol joining 3 s in and leaving at
/// about 5.5 s. Every 50 ms of the mix: each tone sounds exactly where its sender's own file
/// has it (placed at its `start_offset_ms`), ±60 ms at the edges; the mix is listed, as long
/// as the recording, and never clips although the tones sum past full scale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mix_holds_each_tone_where_its_sender_sent_it() {
    let _heavy = heavy().await;
    let srv = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let factory = factory();
    let mut clips = Vec::new();
    for (name, hz) in [("alice", 440.0), ("bob", 880.0), ("carol", 1320.0)] {
        let path = work.path().join(format!("{name}.ogg"));
        tone_clip(&path, hz, 3.0);
        let clip = recbot::client::Clip::load(None, Some(&path)).expect("clip");
        clips.push(clip);
    }
    // Bob's clip (looping every 3 s) skips 0.6 s from 1 s on: a sender in DTX.
    clips[1] = clips[1].with_audio_gap(Duration::from_millis(1000), Duration::from_millis(600));
    let join = |name: &'static str, clip| {
        recbot::client::start(
            &srv.base,
            "mixed",
            name,
            clip,
            factory.clone(),
            Default::default(),
        )
    };
    let alice = join("alice", clips[0].clone()).await.expect("alice joins");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, rec) = srv
        .post_json(
            "/api/recordings",
            serde_json::json!({"room": "mixed", "mix": true}),
        )
        .await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_owned();
    assert!(
        rec["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "room-mix.ogg"),
        "the mix is listed from the start: {rec}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let bob = join("bob", clips[1].clone()).await.expect("bob joins");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let carol = join("carol", clips[2].clone()).await.expect("carol joins");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    carol.leave().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // What a crash would leave now: the live file reads and decodes up to about a second
    // ago, and repair finishes a copy of it.
    let live = std::fs::read(srv.dir.path().join(&id).join("room-mix.ogg")).unwrap();
    let (status, now) = srv.get_json(&format!("/api/recordings/{id}")).await;
    assert_eq!(status, 200);
    let elapsed = (time::OffsetDateTime::now_utc()
        - time::OffsetDateTime::parse(
            now["started_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap())
    .as_seconds_f64();
    let live_info = read_ogg_opus(std::io::Cursor::new(&live)).expect("the live mix reads");
    assert!(!live_info.eos);
    let live_s = decode(&live, true).len() as f64 / 48_000.0;
    assert!(
        live_s > elapsed - 2.0,
        "live mix {live_s:.2} s after {elapsed:.2} s"
    );
    let copy = save(work.path(), "crashed-mix.ogg", &live);
    recbot::record::repair::repair_ogg(&copy).expect("repaired");
    assert!(
        read_ogg_opus(std::fs::File::open(&copy).unwrap())
            .unwrap()
            .eos
    );
    let (status, done) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(done["state"], "stopped", "{done}");
    assert!(done["error"].is_null(), "{done}");
    bob.leave().await;
    alice.leave().await;

    let get = |name: String| {
        let url = srv.url(&format!("/api/recordings/{id}/files/{name}"));
        let http = srv.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{name}");
            r.bytes().await.unwrap().to_vec()
        }
    };
    let mix_doc = done["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "room-mix.ogg")
        .cloned()
        .expect("room-mix.ogg listed");
    let mix_bytes = get("room-mix.ogg".into()).await;
    assert_eq!(mix_bytes.len() as u64, mix_doc["bytes"].as_u64().unwrap());
    let info = read_ogg_opus(std::io::Cursor::new(&mix_bytes)).unwrap();
    assert!(info.eos, "finalized");
    let mix = decode(&mix_bytes, true);

    // As long as the recording: started_at → stopped_at (both ms on the wall clock).
    let wall = |s: &serde_json::Value| {
        time::OffsetDateTime::parse(
            s.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let length = (wall(&done["stopped_at"]) - wall(&done["started_at"])).as_seconds_f64();
    let mix_length = mix.len() as f64 / 48_000.0;
    assert!(
        (mix_length - length).abs() < 0.05,
        "mix {mix_length:.3} s, recording {length:.3} s"
    );

    let (at, peak) =
        mix.iter().enumerate().fold(
            (0, 0f32),
            |m, (i, s)| if s.abs() > m.1 { (i, s.abs()) } else { m },
        );
    assert!(
        peak < 1.0,
        "the mix clips: peak {peak} at {:.3} s",
        at as f64 / 48_000.0
    );

    // Each sender's own file, decoded with its pre-skip samples (its packets' positions count
    // them), placed at its start offset.
    let mut refs = Vec::new();
    for (name, hz) in [("alice", 440.0f32), ("bob", 880.0), ("carol", 1320.0)] {
        let track = done["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["participant_name"] == name && t["kind"] == "audio")
            .unwrap_or_else(|| panic!("{name}'s audio track in {done}"));
        let offset = track["start_offset_ms"].as_i64().unwrap() as f64 / 1000.0;
        let own = decode(
            &get(track["file"].as_str().unwrap().to_owned()).await,
            false,
        );
        refs.push((name, hz, offset, own));
    }
    let (mut checked, mut wrong) = (0, Vec::new());
    let mut heard = [0usize; 3];
    let mut t = 0.1;
    while t < mix_length - 0.1 {
        for (i, (name, hz, offset, own)) in refs.iter().enumerate() {
            let expected = sounds(own, *offset, t, *hz);
            // Near an edge of the sender's sound the window straddles it: not judged.
            let steady = [-0.06, 0.06]
                .iter()
                .all(|d| sounds(own, *offset, t + d, *hz) == expected);
            if !steady {
                continue;
            }
            checked += 1;
            let got = sounds(&mix, 0.0, t, *hz);
            if got {
                heard[i] += 1;
            }
            if got != expected {
                wrong.push(format!(
                    "{name} at {t:.2} s: mix {got}, own file {expected}"
                ));
            }
        }
        t += 0.05;
    }
    // Every tone was heard (bob's and carol's late, carol's not after she left), and the mix
    // agrees with the files everywhere but for a few windows a loaded machine may lose.
    assert!(heard.iter().all(|&h| h > 20), "heard {heard:?}");
    assert!(
        wrong.len() * 100 <= checked * 2,
        "{} of {checked} windows disagree: {wrong:#?}",
        wrong.len()
    );
    // Bob's DTX gaps are silent in the mix: some window after his start has no 880 Hz.
    let bob_start = refs[1].2;
    let gaps = (0..((mix_length - bob_start - 0.2) / 0.05) as usize)
        .map(|k| bob_start + 0.1 + k as f64 * 0.05)
        .filter(|&t| !sounds(&mix, 0.0, t, 880.0))
        .count();
    assert!(gaps >= 8, "bob's gaps in the mix: {gaps} windows");
    eprintln!(
        "mix: {mix_length:.3} s (recording {length:.3} s), peak {peak:.3} at {:.3} s, {checked} windows, {} disagree",
        at as f64 / 48_000.0,
        wrong.len()
    );
    srv.shutdown().await;
}

/// Colours of the composite test's senders (BT.601 video range Y, U, V).
const RED: (u8, u8, u8) = (81, 90, 240);
const GREEN: (u8, u8, u8) = (145, 54, 34);
const BLUE: (u8, u8, u8) = (41, 240, 110);

/// Writes a 2 s, 30 fps VP8 clip of one colour (`width × height`, a keyframe each second)
/// as IVF, encoded with recbot's own libvpx wrapper.
fn colour_clip(path: &Path, colour: (u8, u8, u8), width: u16, height: u16) {
    use recbot::compose::vpx::{Encoder, EncoderConfig, I420};
    let mut enc = Encoder::new(EncoderConfig {
        width: width.into(),
        height: height.into(),
        fps: 30,
        bitrate_kbps: 200,
        threads: 1,
    })
    .unwrap();
    let picture = I420::filled(width.into(), height.into(), colour);
    let mut frames = Vec::new();
    for i in 0..60 {
        for p in enc.encode(&picture, i, i % 30 == 0).unwrap() {
            frames.push((i as u64, p.data));
        }
    }
    let mut ivf = Vec::new();
    ivf.extend_from_slice(b"DKIF");
    ivf.extend_from_slice(&0u16.to_le_bytes());
    ivf.extend_from_slice(&32u16.to_le_bytes());
    ivf.extend_from_slice(b"VP80");
    ivf.extend_from_slice(&width.to_le_bytes());
    ivf.extend_from_slice(&height.to_le_bytes());
    ivf.extend_from_slice(&30u32.to_le_bytes());
    ivf.extend_from_slice(&1u32.to_le_bytes());
    ivf.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    ivf.extend_from_slice(&0u32.to_le_bytes());
    for (pts, data) in frames {
        ivf.extend_from_slice(&(data.len() as u32).to_le_bytes());
        ivf.extend_from_slice(&pts.to_le_bytes());
        ivf.extend_from_slice(&data);
    }
    std::fs::write(path, ivf).unwrap();
}

/// Which of the test colours cover more than 2 % of a picture (by its chroma samples).
fn colours_in(picture: &recbot::compose::vpx::I420) -> Vec<&'static str> {
    let [_, (u, _), (v, _)] = picture.planes();
    let mut found = Vec::new();
    for (name, (_, cu, cv)) in [("red", RED), ("green", GREEN), ("blue", BLUE)] {
        let near = u
            .iter()
            .zip(v)
            .filter(|(&a, &b)| a.abs_diff(cu) < 20 && b.abs_diff(cv) < 20)
            .count();
        if near * 50 > u.len() {
            found.push(name);
        }
    }
    found
}

/// Three publishers (red, green and blue video with tones): alice (red) there throughout,
/// carol (blue, 640x480) from the start and leaving about 4.5 s in, bob (green) joining
/// about 3 s in. After the stop `room.webm` is rendered in the background: the composite goes
/// pending → done with `progress` 1, is listed, lasts the recording's length within one frame,
/// is 1280x720 with Cues, has the mix as its audio, and at times well inside each span shows
/// exactly the tiles of those present (counted by colour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_shows_who_was_there_when() {
    let _heavy = heavy().await;
    let hooks = HookReceiver::start().await;
    let srv = TestServer::start_with(|args| hooks.configure(args)).await;
    let work = tempfile::tempdir().unwrap();
    let factory = factory();
    let mut clips = Vec::new();
    for (name, hz, colour, (w, h)) in [
        ("alice", 440.0, RED, (320, 240)),
        ("bob", 880.0, GREEN, (320, 240)),
        ("carol", 1320.0, BLUE, (640, 480)),
    ] {
        let audio = work.path().join(format!("{name}.ogg"));
        let video = work.path().join(format!("{name}.ivf"));
        tone_clip(&audio, hz, 2.0);
        colour_clip(&video, colour, w, h);
        clips.push(recbot::client::Clip::load(Some(&video), Some(&audio)).expect("clip"));
    }
    let join = |name: &'static str, clip| {
        recbot::client::start(
            &srv.base,
            "grid",
            name,
            clip,
            factory.clone(),
            Default::default(),
        )
    };
    let alice = join("alice", clips[0].clone()).await.expect("alice joins");
    let carol = join("carol", clips[2].clone()).await.expect("carol joins");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, rec) = srv
        .post_json(
            "/api/recordings",
            serde_json::json!({"room": "grid", "composite": true}),
        )
        .await;
    assert_eq!(status, 201, "{rec}");
    assert_eq!(rec["composite"]["state"], "pending", "{rec}");
    let id = rec["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let bob = join("bob", clips[1].clone()).await.expect("bob joins");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    carol.leave().await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (status, done) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(done["state"], "stopped", "{done}");
    bob.leave().await;
    alice.leave().await;

    // The render runs in the background; wait for it.
    let mut doc = done.clone();
    for _ in 0..600 {
        let (_, now) = srv.get_json(&format!("/api/recordings/{id}")).await;
        doc = now;
        if doc["composite"]["state"] == "done" || doc["composite"]["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(doc["composite"]["state"], "done", "{doc}");
    assert_eq!(doc["composite"]["progress"], 1.0);
    // The webhook `recording.composited` (SPEC §11) carries the finished Recording.
    let events = hooks
        .until(Duration::from_secs(10), |events| {
            events.iter().any(|e| e["type"] == "recording.composited")
        })
        .await;
    let composited: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "recording.composited")
        .collect();
    assert_eq!(composited.len(), 1, "{events:#?}");
    assert_eq!(composited[0]["data"]["id"], id.as_str());
    assert_eq!(composited[0]["data"]["composite"]["state"], "done");
    let order: Vec<&str> = events
        .iter()
        .filter(|e| e["data"]["id"] == id.as_str())
        .map(|e| e["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        order,
        [
            "recording.started",
            "recording.stopped",
            "recording.composited"
        ]
    );
    assert!(doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "room.webm"));
    let resp = srv
        .http
        .get(srv.url(&format!("/api/recordings/{id}/files/room.webm")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap().to_vec();
    let path = save(work.path(), "room.webm", &bytes);

    let wall = |s: &serde_json::Value| {
        time::OffsetDateTime::parse(
            s.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let length = (wall(&doc["stopped_at"]) - wall(&doc["started_at"])).as_seconds_f64();
    let info = recbot::record::webm_reader::read_webm(std::io::Cursor::new(&bytes)).unwrap();
    assert!(!info.cues.is_empty(), "Cues");
    let video = info
        .tracks
        .iter()
        .find(|t| t.kind == recbot::record::webm_reader::WebmTrackKind::Video)
        .unwrap();
    assert_eq!((video.width, video.height), (Some(1280), Some(720)));
    assert!(
        info.tracks
            .iter()
            .any(|t| t.kind == recbot::record::webm_reader::WebmTrackKind::Audio),
        "the mix is the audio"
    );
    let duration = info.duration_ms.unwrap() / 1000.0;
    assert!(
        (duration - length).abs() <= 1.0 / 30.0 + 0.002,
        "composite {duration:.3} s, recording {length:.3} s"
    );
    if let Some(probed) = ffprobe_duration(&path) {
        assert!(
            (probed - length).abs() <= 1.0 / 30.0 + 0.002,
            "ffprobe {probed:.3} s, recording {length:.3} s"
        );
        assert!(ffmpeg_decodes_cleanly(&path));
    }

    // Who is expected when: each video track's span on the recording's clock.
    let spans: Vec<(&str, f64, f64)> = doc["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "video")
        .map(|t| {
            let colour = match t["participant_name"].as_str().unwrap() {
                "alice" => "red",
                "bob" => "green",
                _ => "blue",
            };
            let start = t["start_offset_ms"].as_f64().unwrap() / 1000.0;
            (
                colour,
                start,
                start + t["duration_ms"].as_f64().unwrap() / 1000.0,
            )
        })
        .collect();
    assert_eq!(spans.len(), 3, "{doc}");
    // Decode the composite and look at frames away from every span's edges.
    let mut decoder = recbot::compose::vpx::Decoder::new().unwrap();
    let (mut checked, mut counts) = (0, Vec::new());
    for block in info.blocks.iter().filter(|b| b.track == video.number) {
        let pictures = decoder.decode(&block.data).expect("the composite decodes");
        let t = block.ts_ms as f64 / 1000.0;
        if block.ts_ms % 500 > 33 {
            continue;
        }
        let near_edge = spans
            .iter()
            .any(|(_, a, b)| (t - a).abs() < 0.4 || (t - b).abs() < 0.4);
        if near_edge {
            continue;
        }
        let mut expected: Vec<&str> = spans
            .iter()
            .filter(|(_, a, b)| *a <= t && t < *b)
            .map(|(c, _, _)| *c)
            .collect();
        expected.sort();
        let picture = pictures.last().expect("a picture per frame");
        let mut got = colours_in(picture);
        got.sort();
        assert_eq!(got, expected, "at {t:.2} s");
        checked += 1;
        counts.push(expected.len());
    }
    assert!(checked >= 8, "{checked} frames checked");
    for n in [2, 3] {
        assert!(
            counts.contains(&n),
            "a time with {n} tiles was checked: {counts:?}"
        );
    }
    srv.shutdown().await;
}

/// The new request fields are checked: a composite size must be `WIDTHxHEIGHT` with even
/// sides in range, `mix` and `composite` are booleans; a refused request starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_options_are_validated() {
    let srv = TestServer::start().await;
    for body in [
        serde_json::json!({"room": "v", "composite": true, "composite_size": "1281x720"}),
        serde_json::json!({"room": "v", "composite": true, "composite_size": "1280"}),
        serde_json::json!({"room": "v", "composite": true, "composite_size": "8000x720"}),
        serde_json::json!({"room": "v", "mix": "yes"}),
        serde_json::json!({"room": "v", "composite": 1}),
    ] {
        let (status, reply) = srv.post_json("/api/recordings", body.clone()).await;
        assert_eq!(status, 400, "{body} → {reply}");
    }
    let (_, list) = srv.get_json("/api/recordings").await;
    assert_eq!(list["recordings"].as_array().unwrap().len(), 0);
    let (status, rec) = srv
        .post_json(
            "/api/recordings",
            serde_json::json!({"room": "v", "composite": true, "composite_size": "640x360"}),
        )
        .await;
    assert_eq!(status, 201, "{rec}");
    assert_eq!(rec["composite"]["state"], "pending");
    let names: Vec<&str> = rec["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["room-mix.ogg"], "composite implies the mix");
    let id = rec["id"].as_str().unwrap();
    let (status, _) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200);
    srv.shutdown().await;
}

/// A pause cuts the same span out of the mix as out of every file (SPEC §11): with one
/// participant sending a steady tone through record 2 s, pause 1.5 s, record 2 s, the mix
/// is as long as the recorded time (wall time less `paused_ms`), as long as the
/// participant's own file, and the tone goes on after the resume (packets after a pause are
/// not taken for late ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_is_cut_from_the_mix_as_from_the_files() {
    let _heavy = heavy().await;
    let srv = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("alice.ogg");
    tone_clip(&path, 440.0, 3.0);
    let clip = recbot::client::Clip::load(None, Some(&path)).expect("clip");
    let alice = recbot::client::start(
        &srv.base,
        "paused-mix",
        "alice",
        clip,
        factory(),
        Default::default(),
    )
    .await
    .expect("alice joins");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, rec) = srv
        .post_json(
            "/api/recordings",
            serde_json::json!({"room": "paused-mix", "mix": true}),
        )
        .await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (status, _) = srv
        .post_json(
            &format!("/api/recordings/{id}/pause"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _) = srv
        .post_json(
            &format!("/api/recordings/{id}/resume"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (status, done) = srv
        .post_json(&format!("/api/recordings/{id}/stop"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200);
    alice.leave().await;
    let paused = done["paused_ms"].as_f64().expect("paused_ms") / 1000.0;
    assert!((1.4..2.5).contains(&paused), "paused {paused} s: {done}");

    let read = |name: &str| std::fs::read(srv.dir.path().join(&id).join(name)).unwrap();
    let mix = decode(&read("room-mix.ogg"), true);
    let mix_length = mix.len() as f64 / 48_000.0;
    let wall = |s: &serde_json::Value| {
        time::OffsetDateTime::parse(
            s.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let recorded =
        (wall(&done["stopped_at"]) - wall(&done["started_at"])).as_seconds_f64() - paused;
    assert!(
        (mix_length - recorded).abs() < 0.1,
        "mix {mix_length:.3} s, recorded time {recorded:.3} s"
    );
    let track = done["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "audio")
        .cloned()
        .expect("alice's audio");
    let own_end = (track["start_offset_ms"].as_f64().unwrap()
        + track["duration_ms"].as_f64().unwrap())
        / 1000.0;
    assert!(
        (own_end - mix_length).abs() < 0.15,
        "alice's file ends at {own_end:.3} s, the mix at {mix_length:.3} s"
    );
    // The tone sounds all along, after the resume too: no hole where the pause was cut, and
    // no packets dropped as late after it.
    let start = track["start_offset_ms"].as_f64().unwrap() / 1000.0;
    let (mut windows, mut silent) = (0, Vec::new());
    let mut t = start + 0.2;
    while t < mix_length - 0.2 {
        windows += 1;
        if !sounds(&mix, 0.0, t, 440.0) {
            silent.push(format!("{t:.2}"));
        }
        t += 0.05;
    }
    assert!(windows > 50, "{windows} windows");
    assert!(
        silent.len() * 100 <= windows * 3,
        "the tone is missing from the mix at {} of {windows} windows: {silent:?}",
        silent.len()
    );
    srv.shutdown().await;
}
