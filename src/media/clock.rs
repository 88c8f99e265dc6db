//! Mapping a track's RTP timestamps onto its recording's clock.
//!
//! The recording's clock is seconds since the create call was accepted. A track is placed on it
//! by an anchor: an (extended RTP timestamp, recording time) pair, taken from the arrival of its
//! first packet. From there on, time within the track follows the sender's RTP clock, so a
//! file's own timestamps are exact sample counts and loss or DTX keep their time. If the RTP
//! clock and arrival times disagree by more than [`REANCHOR_AFTER`] (a sender restarting its
//! timestamps, a hostile jump), the track re-anchors to arrival so the timeline stays sane.

use std::time::{Duration, Instant};

/// Disagreement between RTP time and arrival time that makes a track re-anchor.
pub const REANCHOR_AFTER: Duration = Duration::from_secs(3);

/// The clock of one recording: its zero instant.
#[derive(Debug, Clone, Copy)]
pub struct RecordingClock {
    zero: Instant,
}

impl RecordingClock {
    /// A clock whose zero is `zero` (when the recording was accepted).
    pub fn new(zero: Instant) -> Self {
        Self { zero }
    }

    /// Seconds from zero to `t` (negative before zero).
    pub fn seconds(&self, t: Instant) -> f64 {
        if t >= self.zero {
            t.duration_since(self.zero).as_secs_f64()
        } else {
            -self.zero.duration_since(t).as_secs_f64()
        }
    }
}

/// Maps one track's extended RTP timestamps to recording time.
#[derive(Debug, Clone)]
pub struct TrackClock {
    clock: RecordingClock,
    rate: f64,
    anchor: Option<(i64, f64)>,
    reanchors: u32,
}

impl TrackClock {
    /// A track clock at `clock_rate` Hz on `clock`.
    pub fn new(clock: RecordingClock, clock_rate: u32) -> Self {
        Self {
            clock,
            rate: f64::from(clock_rate.max(1)),
            anchor: None,
            reanchors: 0,
        }
    }

    /// Recording time (seconds) of the sample with extended RTP timestamp `ts`, which arrived at
    /// `arrival`.
    pub fn map(&mut self, ts: i64, arrival: Instant) -> f64 {
        let arrived = self.clock.seconds(arrival);
        let Some((ts0, t0)) = self.anchor else {
            self.anchor = Some((ts, arrived));
            return arrived;
        };
        let t = t0 + (ts - ts0) as f64 / self.rate;
        if (t - arrived).abs() > REANCHOR_AFTER.as_secs_f64() {
            tracing::warn!(
                rtp_time = t,
                arrival = arrived,
                "RTP timestamps disagree with arrival; re-anchoring the track"
            );
            self.anchor = Some((ts, arrived));
            self.reanchors += 1;
            return arrived;
        }
        t
    }

    /// How often the track re-anchored.
    pub fn reanchors(&self) -> u32 {
        self.reanchors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_rtp_time_after_the_anchor() {
        let zero = Instant::now();
        let mut c = TrackClock::new(RecordingClock::new(zero), 48_000);
        let t = c.map(1_000_000, zero + Duration::from_millis(250));
        assert!((t - 0.25).abs() < 1e-9);
        // 2 s later by RTP, arriving with 30 ms jitter: RTP time wins.
        let t = c.map(1_000_000 + 96_000, zero + Duration::from_millis(2280));
        assert!((t - 2.25).abs() < 1e-9);
        assert_eq!(c.reanchors(), 0);
    }

    #[test]
    fn file_positions_are_integer_rtp_differences() {
        let zero = Instant::now();
        let mut c = TrackClock::new(RecordingClock::new(zero), 48_000);
        let t = c.map(5_000, zero + Duration::from_millis(7));
        let mut f = FileTimeline::start(5_000, t, &c);
        for i in 1..1000i64 {
            let ext = 5_000 + 960 * i;
            let t = c.map(
                ext,
                zero + Duration::from_millis(7 + 20 * i as u64 + (i % 3) as u64),
            );
            assert_eq!(f.position(ext, t, &c), 960 * i);
        }
        // A jump re-anchors: the position follows arrival time, then RTP again.
        let t = c.map(10_000_000_000, zero + Duration::from_secs(21));
        let p = f.position(10_000_000_000, t, &c);
        assert_eq!(p, f.position_at(t));
        assert_eq!(f.position(10_000_000_960, t + 0.02, &c), p + 960);
    }

    #[test]
    fn re_anchors_on_a_jump() {
        let zero = Instant::now();
        let mut c = TrackClock::new(RecordingClock::new(zero), 90_000);
        c.map(0, zero);
        let t = c.map(90_000 * 3600, zero + Duration::from_secs(1));
        assert!((t - 1.0).abs() < 1e-9);
        assert_eq!(c.reanchors(), 1);
    }
}

/// Where a file's samples sit: positions in RTP clock units since the file's first sample.
///
/// Positions come from integer RTP timestamp differences, so consecutive packets never
/// overlap or jitter by a rounding error; only when the track's clock re-anchors does the
/// position jump, to the re-anchored recording time.
#[derive(Debug, Clone)]
pub struct FileTimeline {
    first_ext: i64,
    first_t: f64,
    adjust: i64,
    reanchors: u32,
    rate: f64,
}

impl FileTimeline {
    /// A file whose first sample has extended timestamp `ext` at recording time `t`.
    pub fn start(ext: i64, t: f64, clock: &TrackClock) -> Self {
        Self {
            first_ext: ext,
            first_t: t,
            adjust: 0,
            reanchors: clock.reanchors(),
            rate: clock.rate,
        }
    }

    /// Recording time (seconds) of the file's first sample.
    pub fn first_t(&self) -> f64 {
        self.first_t
    }

    /// Position (RTP units since the first sample) of the sample `ext` mapped to `t` by
    /// `clock`. Negative for samples older than the first.
    pub fn position(&mut self, ext: i64, t: f64, clock: &TrackClock) -> i64 {
        if clock.reanchors() != self.reanchors {
            self.reanchors = clock.reanchors();
            let wanted = ((t - self.first_t) * self.rate).round() as i64;
            self.adjust = wanted - (ext - self.first_ext);
        }
        ext - self.first_ext + self.adjust
    }

    /// Position of recording time `t` (for the end of the file).
    pub fn position_at(&self, t: f64) -> i64 {
        ((t - self.first_t) * self.rate).round() as i64
    }
}
