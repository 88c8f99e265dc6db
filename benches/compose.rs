//! The cost of SPEC §11's outputs. Run: `cargo bench --bench compose`
//! (MIX_SECONDS=60 MIX_INPUTS=1,4,8 COMPOSITE_SECONDS=30 COMPOSITE_PARTICIPANTS=4).
//!
//! - Mix: N synthetic Opus inputs (20 ms packets, a different tone each) through the pure
//!   mixer (decode, place, sum, limit) and the mix's Opus encoder; prints ns per 20 ms frame per
//!   input and the share of one core per mixed participant (the target is ≤ 2 %).
//! - Composite: a meeting of P participants (640x480 VP8 at 30 fps with moving content, the
//!   room mix) rendered to a 1280x720 `room.webm`; prints the speed against real time (the
//!   target is > 1 on this 2-core machine). Single-threaded, like the worker.

mod common;

use common::env_or;
use recbot::compose::mix::{Mixer, FRAME};
use recbot::compose::render::{render, Job, VideoSource};
use recbot::compose::vpx::{Encoder, EncoderConfig, I420};
use std::time::Instant;

fn tone_packets(hz: f32, count: usize) -> Vec<Vec<u8>> {
    let mut enc =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    (0..count)
        .map(|k| {
            let pcm: Vec<f32> = (k * FRAME..(k + 1) * FRAME)
                .map(|i| 0.3 * (2.0 * std::f32::consts::PI * hz * i as f32 / 48_000.0).sin())
                .collect();
            enc.encode_vec_float(&pcm, 4000).unwrap()
        })
        .collect()
}

fn bench_mix(seconds: usize, inputs: usize) {
    let frames = seconds * 50;
    let packets: Vec<Vec<Vec<u8>>> = (0..inputs)
        .map(|i| tone_packets(300.0 + 110.0 * i as f32, frames))
        .collect();
    let names: Vec<String> = (0..inputs).map(|i| format!("t{i}")).collect();
    let mut encoder =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio).unwrap();
    let mut mixer = Mixer::new(0);
    let mut out = vec![0.0f32; FRAME];
    let mut packet = vec![0u8; 4000];
    let (mut mixing, mut encoding) = (0.0f64, 0.0f64);
    for k in 0..frames {
        let t0 = Instant::now();
        for (name, p) in names.iter().zip(&packets) {
            mixer.push(name, (k * FRAME) as i64, &p[k]).unwrap();
        }
        let now = ((k + 1) * FRAME) as i64;
        assert!(mixer.ready(now, 0, 14_400));
        mixer.mix(&mut out);
        let t1 = Instant::now();
        encoder.encode_float(&out, &mut packet).unwrap();
        mixing += (t1 - t0).as_secs_f64();
        encoding += t1.elapsed().as_secs_f64();
    }
    let per_input_ns = mixing / frames as f64 / inputs as f64 * 1e9;
    let encode_ns = encoding / frames as f64 * 1e9;
    println!(
        "mix: {inputs} inputs, {seconds} s: {per_input_ns:.0} ns per 20 ms frame per input \
         ({:.3} % of a core per participant), + {encode_ns:.0} ns per frame for the mix's \
         encoder ({:.3} % of a core per mixed recording)",
        per_input_ns / 20e6 * 100.0,
        encode_ns / 20e6 * 100.0
    );
}

/// A 640x480 clip of `seconds` at 30 fps: a colour per participant with a moving bar, a
/// keyframe every 2 s.
fn video(participant: usize, seconds: usize) -> Vec<(i64, Vec<u8>)> {
    let (w, h) = (640u32, 480u32);
    let mut enc = Encoder::new(EncoderConfig {
        width: w,
        height: h,
        fps: 30,
        bitrate_kbps: 600,
        threads: 1,
    })
    .unwrap();
    let colour = [(81, 90, 240), (145, 54, 34), (41, 240, 110), (170, 166, 16)][participant % 4];
    let mut frames = Vec::new();
    for i in 0..seconds as i64 * 30 {
        let mut picture = I420::filled(w, h, colour);
        let [(y, stride), _, _] = picture.planes_mut();
        let x0 = (i as usize * 7) % (w as usize - 40);
        for row in 0..h as usize {
            let at = row * stride + x0;
            for (j, px) in y[at..at + 40].iter_mut().enumerate() {
                *px = ((row + j + i as usize) % 220 + 16) as u8;
            }
        }
        for p in enc.encode(&picture, i, i % 60 == 0).unwrap() {
            frames.push((i * 1000 / 30, p.data));
        }
    }
    frames
}

fn bench_composite(seconds: usize, participants: usize) {
    let dir = tempfile::tempdir().unwrap();
    // The room mix (a tone) as the audio track.
    let mix = dir.path().join("room-mix.ogg");
    {
        let file = std::fs::File::create(&mix).unwrap();
        let mut w =
            recbot::record::ogg::OggOpusWriter::new(std::io::BufWriter::new(file), 1, 1, 312)
                .unwrap();
        for (k, p) in tone_packets(440.0, seconds * 50).iter().enumerate() {
            w.write_packet(p, (k * FRAME) as u64).unwrap();
        }
        w.finalize(None).unwrap();
    }
    let sources: Vec<VideoSource> = (0..participants)
        .map(|i| VideoSource {
            name: format!("participant {i}"),
            start_ms: 0,
            end_ms: seconds as i64 * 1000,
            frames: video(i, seconds),
        })
        .collect();
    let out = dir.path().join("room.webm");
    let started = Instant::now();
    let rendered = render(
        Job {
            sources,
            mix: Some(&mix),
            size: (1280, 720),
            duration_ms: seconds as u64 * 1000,
        },
        &out,
        |_| true,
    )
    .unwrap();
    let took = started.elapsed().as_secs_f64();
    println!(
        "composite: {participants} participants, {seconds} s of 640x480 → 1280x720: rendered in \
         {took:.2} s = {:.2}x real time ({} frames, {:.1} ms each, {} KiB)",
        seconds as f64 / took,
        rendered.frames,
        took * 1000.0 / rendered.frames.max(1) as f64,
        std::fs::metadata(&out).unwrap().len() / 1024
    );
}

fn main() {
    let seconds: usize = env_or("MIX_SECONDS", 60);
    let inputs: String = env_or("MIX_INPUTS", "1,4,8".to_owned());
    for n in inputs.split(',').filter_map(|n| n.trim().parse().ok()) {
        bench_mix(seconds, n);
    }
    bench_composite(
        env_or("COMPOSITE_SECONDS", 30),
        env_or("COMPOSITE_PARTICIPANTS", 4),
    );
}
