//! The audio mixer, pure: Opus packets placed on the recording's clock in, mixed 48 kHz mono
//! frames out. Time is an input (the live loop passes "now"), so tests and benches drive it.
//!
//! Each input (one audio track) is decoded with libopus into a buffer that sits on the
//! recording's clock: a packet at `at` lands at `at`, whatever came before it. A short hole
//! (a lost packet, up to [`PLC_MAX`]) is concealed by libopus; a longer one (DTX, a sender
//! that paused) stays silent. Nothing ever shifts an input in time. Frames are mixed in order
//! from a cursor; a packet that arrives after its frame was mixed is dropped (counted).
//!
//! The sum goes through a [`Limiter`] with a soft knee: below the knee a sample is untouched,
//! above it the gain follows a peak envelope so that no output sample reaches the ceiling (no
//! clipping, no wrap-around), whatever the number of inputs.

use std::collections::{HashMap, VecDeque};

/// Samples per second of the mix (and of Opus).
pub const RATE: i64 = 48_000;
/// Samples of one mixed frame (20 ms).
pub const FRAME: usize = 960;
/// Longest hole in an input that is concealed (libopus PLC); longer ones are silence.
pub const PLC_MAX: i64 = 3 * FRAME as i64;
/// Largest decoded packet (120 ms at 48 kHz).
const MAX_PACKET: usize = 5760;
/// An input may run this far ahead of the mix cursor (a broken mapping cannot grow a buffer
/// without bound); packets beyond are dropped.
const MAX_AHEAD: i64 = 10 * RATE;

/// The soft-knee peak limiter of the mix.
///
/// Invariant: for any finite input, `|output| < ceiling` (the envelope is never below the
/// current sample, and the gain maps the envelope under the ceiling). Non-finite input gives 0.
#[derive(Debug, Clone)]
pub struct Limiter {
    env: f32,
    release: f32,
    knee: f32,
    ceiling: f32,
}

impl Default for Limiter {
    /// Knee at −6 dBFS, ceiling −1.5 dBFS (Opus coding of the mix overshoots it by up to about 10 %), release time constant 100 ms.
    fn default() -> Self {
        Self::new(0.5, 0.84, 0.1)
    }
}

impl Limiter {
    /// A limiter leaving levels up to `knee` alone, never reaching `ceiling` (`0 < knee <
    /// ceiling`), whose gain recovers with time constant `release_s`.
    pub fn new(knee: f32, ceiling: f32, release_s: f32) -> Self {
        let ceiling = ceiling.max(knee + 1e-3);
        Self {
            env: 0.0,
            release: (-1.0 / (release_s.max(1e-3) * RATE as f32)).exp(),
            knee,
            ceiling,
        }
    }

    /// Output level for envelope level `level` (above the knee): approaches the ceiling
    /// smoothly (slope 1 at the knee).
    fn curve(&self, level: f32) -> f32 {
        let room = self.ceiling - self.knee;
        self.knee + room * ((level - self.knee) / room).tanh()
    }

    /// Limits one sample.
    pub fn process(&mut self, x: f32) -> f32 {
        if !x.is_finite() {
            return 0.0;
        }
        let a = x.abs();
        self.env = a.max(self.env * self.release);
        if self.env <= self.knee {
            return x;
        }
        let out = x * (self.curve(self.env) / self.env);
        // Rounding could put a sample a hair over the curve; the ceiling is a promise.
        out.clamp(-self.ceiling * 0.9999, self.ceiling * 0.9999)
    }
}

/// Figures of a mixer, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MixStats {
    /// Packets that came after their frame was mixed (or too far ahead).
    pub late: u64,
    /// Packets libopus refused.
    pub undecodable: u64,
    /// Samples concealed by PLC.
    pub concealed: u64,
    /// Frames mixed.
    pub frames: u64,
}

/// Errors of the mixer.
#[derive(Debug, thiserror::Error)]
pub enum MixError {
    /// libopus could not make a decoder.
    #[error("opus decoder: {0}")]
    Decoder(#[from] opus::Error),
}

/// One input: its decoder and its decoded samples from `start` on (the recording's clock).
struct Input {
    decoder: opus::Decoder,
    /// Clock position of `buf[0]`; never before the mix cursor after a mix.
    start: i64,
    buf: VecDeque<f32>,
    /// The track goes on (the mix waits for its data, up to the allowance).
    live: bool,
    /// The decoder has produced audio (PLC makes sense only after that).
    primed: bool,
}

impl Input {
    fn end(&self) -> i64 {
        self.start + self.buf.len() as i64
    }

    /// Appends `samples` starting at `self.end()`, dropping any part before `cursor`.
    fn append(&mut self, samples: &[f32], cursor: i64) {
        let end = self.end();
        if end < cursor {
            let skip = (cursor - end).min(samples.len() as i64) as usize;
            self.buf.clear();
            self.start = end + skip as i64;
            self.buf.extend(&samples[skip..]);
        } else {
            self.buf.extend(samples);
        }
    }

    /// Appends `n` samples of silence.
    fn silence(&mut self, n: i64, cursor: i64) {
        let end = self.end();
        if end + n <= cursor {
            self.buf.clear();
            self.start = end + n;
        } else if end < cursor {
            self.buf.clear();
            self.start = cursor;
            self.buf.resize((end + n - cursor) as usize, 0.0);
        } else {
            self.buf.resize(self.buf.len() + n as usize, 0.0);
        }
    }
}

/// The mixer: inputs by track id, the cursor (clock position of the next frame), the limiter.
pub struct Mixer {
    inputs: HashMap<String, Input>,
    cursor: i64,
    limiter: Limiter,
    scratch: Vec<f32>,
    sum: Vec<f32>,
    stats: MixStats,
}

impl Mixer {
    /// A mixer whose first frame starts at clock position `start` (48 kHz samples).
    pub fn new(start: i64) -> Self {
        Self {
            inputs: HashMap::new(),
            cursor: start,
            limiter: Limiter::default(),
            scratch: vec![0.0; MAX_PACKET],
            sum: vec![0.0; FRAME],
            stats: MixStats::default(),
        }
    }

    /// Clock position of the next frame.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// The figures so far.
    pub fn stats(&self) -> MixStats {
        self.stats
    }

    /// Inputs that still have data or are live.
    pub fn inputs(&self) -> usize {
        self.inputs.len()
    }

    /// Takes one Opus packet of input `track` whose first sample sits at `at`. Never fails
    /// on the packet's content (an undecodable one is counted and its span left silent).
    pub fn push(&mut self, track: &str, at: i64, packet: &[u8]) -> Result<(), MixError> {
        let cursor = self.cursor;
        if !self.inputs.contains_key(track) {
            let input = Input {
                decoder: opus::Decoder::new(48_000, opus::Channels::Mono)?,
                start: at.max(cursor),
                buf: VecDeque::new(),
                live: true,
                primed: false,
            };
            self.inputs.insert(track.to_owned(), input);
        }
        let Some(input) = self.inputs.get_mut(track) else {
            return Ok(());
        };
        let samples = crate::media::opus::opus_packet_samples(packet).map_or(0, i64::from);
        if at + samples <= cursor || at > cursor + MAX_AHEAD {
            self.stats.late += 1;
            return Ok(());
        }
        let end = input.end();
        if at > end {
            let hole = at - end;
            let mut left = hole;
            if input.primed && hole <= PLC_MAX {
                // Loss concealment in whole 2.5 ms steps (what libopus accepts).
                while left >= 120 {
                    let n = ((left / 120) * 120).min(MAX_PACKET as i64) as usize;
                    match input
                        .decoder
                        .decode_float(&[], &mut self.scratch[..n], false)
                    {
                        Ok(got) if got > 0 => {
                            input.append(&self.scratch[..got], cursor);
                            left -= got as i64;
                            self.stats.concealed += got as u64;
                        }
                        _ => break,
                    }
                }
            }
            input.silence(left, cursor);
        }
        match input.decoder.decode_float(packet, &mut self.scratch, false) {
            Ok(got) => {
                input.primed = true;
                // An overlap with what the input already holds (a re-placed start, a
                // duplicate) keeps the earlier samples: nothing moves.
                let skip = (input.end() - at).clamp(0, got as i64) as usize;
                input.append(&self.scratch[skip..got], cursor);
            }
            Err(_) => {
                self.stats.undecodable += 1;
                if at + samples > input.end() {
                    input.silence(at + samples - input.end(), cursor);
                }
            }
        }
        Ok(())
    }

    /// Input `track` ended: the mix no longer waits for it (what it has is still mixed).
    pub fn end_input(&mut self, track: &str) {
        if let Some(input) = self.inputs.get_mut(track) {
            input.live = false;
        }
    }

    /// Whether the frame at the cursor can be mixed at clock position `now`: it ended at
    /// least `hold` ago and every live input has data up to its end, or it ended at least
    /// `wait` ago (the jitter allowance: an input late by more loses those samples).
    pub fn ready(&self, now: i64, hold: i64, wait: i64) -> bool {
        let frame_end = self.cursor + FRAME as i64;
        if frame_end > now - hold {
            return false;
        }
        frame_end <= now - wait
            || self
                .inputs
                .values()
                .filter(|i| i.live)
                .all(|i| i.end() >= frame_end)
    }

    /// Mixes the `out.len()` samples (at most [`FRAME`]) at the cursor into `out` and moves
    /// the cursor past them.
    pub fn mix(&mut self, out: &mut [f32]) {
        let len = out.len().min(FRAME);
        let sum = &mut self.sum[..len];
        sum.fill(0.0);
        let cursor = self.cursor;
        for input in self.inputs.values_mut() {
            let from = input.start - cursor;
            if from >= len as i64 {
                continue;
            }
            // from >= 0: the input's buffer never starts before the cursor.
            let from = from.max(0) as usize;
            let take = (len - from).min(input.buf.len());
            for (s, x) in sum[from..from + take]
                .iter_mut()
                .zip(input.buf.drain(..take))
            {
                *s += x;
            }
            input.start += take as i64;
            if input.buf.is_empty() {
                input.start = input.start.max(cursor + len as i64);
            }
        }
        self.inputs.retain(|_, i| i.live || !i.buf.is_empty());
        for (o, s) in out[..len].iter_mut().zip(sum.iter()) {
            *o = self.limiter.process(*s);
        }
        self.cursor += len as i64;
        self.stats.frames += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, amp: f32, from: usize, n: usize) -> Vec<f32> {
        (from..from + n)
            .map(|i| amp * (2.0 * std::f32::consts::PI * hz * i as f32 / 48_000.0).sin())
            .collect()
    }

    /// 20 ms Opus packets of a tone.
    fn packets(hz: f32, amp: f32, count: usize) -> Vec<Vec<u8>> {
        let mut enc =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio).unwrap();
        (0..count)
            .map(|k| {
                enc.encode_vec_float(&tone(hz, amp, k * FRAME, FRAME), 4000)
                    .unwrap()
            })
            .collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|s| s * s).sum::<f32>() / x.len().max(1) as f32).sqrt()
    }

    /// A full-scale square wave summed four times: the limiter keeps every sample under the
    /// ceiling and never flips a sign (no wrap-around); a quiet signal passes untouched.
    #[test]
    fn limiter_never_clips_and_leaves_quiet_audio_alone() {
        let mut l = Limiter::default();
        for i in 0..48_000 {
            let x = if (i / 50) % 2 == 0 { 4.0 } else { -4.0 };
            let y = l.process(x);
            assert!(y.abs() < 0.84, "sample {i}: {y}");
            assert_eq!(y.signum(), f32::signum(x), "sample {i}");
        }
        let mut l = Limiter::default();
        for (i, x) in tone(440.0, 0.4, 0, 4800).into_iter().enumerate() {
            assert_eq!(l.process(x), x, "sample {i}");
        }
        assert_eq!(l.process(f32::NAN), 0.0);
    }

    /// Two inputs, one starting 100 ms after the other, with a 200 ms hole in the first:
    /// each input's sound is in the mix exactly where it was placed, silence in the hole.
    #[test]
    fn inputs_keep_their_time() {
        let mut m = Mixer::new(0);
        let a = packets(440.0, 0.3, 50);
        let b = packets(880.0, 0.3, 50);
        for (k, p) in a.iter().enumerate() {
            // A 200 ms hole (packets 20..30 never sent: DTX).
            if !(20..30).contains(&k) {
                m.push("a", (k * FRAME) as i64, p).unwrap();
            }
        }
        for (k, p) in b.iter().enumerate() {
            m.push("b", (k * FRAME + 4800) as i64, p).unwrap();
        }
        m.end_input("a");
        m.end_input("b");
        let mut out = vec![0.0; 60 * FRAME];
        for chunk in out.chunks_mut(FRAME) {
            m.mix(chunk);
        }
        let win = |ms: usize| &out[ms * 48..(ms + 20) * 48];
        // Only a for the first 100 ms (after the decoder's ramp-up), both later.
        assert!(rms(win(40)) > 0.1, "a plays");
        assert!(rms(win(120)) > 0.2, "a and b play");
        // In a's hole (400..600 ms) only b.
        let hole = win(500);
        let (ga, gb) = (goertzel(hole, 440.0), goertzel(hole, 880.0));
        assert!(ga < gb / 20.0, "a is silent in its hole: {ga} vs {gb}");
        // After b's end (100 + 1000 ms) and a's (1000 ms): silence.
        assert!(rms(win(1150)) < 1e-3);
        assert_eq!(m.stats().late, 0);
    }

    /// A packet that arrives after its frame was mixed is dropped, and the input's later
    /// packets still land at their own time.
    #[test]
    fn late_packets_are_dropped_not_shifted() {
        let mut m = Mixer::new(0);
        let a = packets(440.0, 0.3, 10);
        m.push("a", 0, &a[0]).unwrap();
        let mut out = vec![0.0; FRAME];
        m.mix(&mut out);
        m.mix(&mut out);
        assert!(rms(&out) < 0.05, "frame 1 is the tail of packet 0 only");
        m.push("a", FRAME as i64, &a[1]).unwrap();
        assert_eq!(m.stats().late, 1);
        m.push("a", 2 * FRAME as i64, &a[2]).unwrap();
        m.mix(&mut out);
        assert!(rms(&out) > 0.1);
    }

    /// The mix waits for live inputs, up to the allowance.
    #[test]
    fn ready_waits_for_live_inputs_or_the_allowance() {
        let mut m = Mixer::new(0);
        let a = packets(440.0, 0.3, 2);
        m.push("a", 0, &a[0]).unwrap();
        m.push("b", 0, &a[0]).unwrap();
        assert!(m.ready(2000, 0, 9600));
        let mut out = vec![0.0; FRAME];
        m.mix(&mut out);
        m.push("a", 960, &a[1]).unwrap();
        assert!(!m.ready(2000, 0, 9600), "b has no data for frame 1");
        assert!(m.ready(1920 + 9600, 0, 9600), "the allowance passed");
        m.end_input("b");
        assert!(m.ready(2000, 0, 9600), "b ended");
        assert!(!m.ready(2000, 480, 9600), "the hold");
    }

    fn goertzel(x: &[f32], hz: f32) -> f32 {
        let w = 2.0 * std::f32::consts::PI * hz / 48_000.0;
        let c = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f32, 0.0f32);
        for &v in x {
            let s = v + c * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        (s1 * s1 + s2 * s2 - c * s1 * s2).sqrt() / x.len() as f32
    }
}
