//! One clock per recording: mapping each track's RTP timestamps onto it.
//!
//! The recording's clock is seconds since the create call was accepted ([`RecordingClock`]).
//! A track reaches it in one of two ways ([`TrackClock`]):
//! - **Sender reports** (RFC 3550 §6.4.1): an SR ties the sender's RTP clock to its wallclock
//!   (NTP). All tracks of one participant share a [`SenderClock`], which maps that wallclock
//!   onto the recording's clock with an offset estimated from arrivals (`ntp − arrival` of the
//!   samples that travelled fastest). Audio and video of one sender therefore sit where the
//!   sender captured them, whatever their network delays.
//!
//!   Both inputs can be wrong in one direction under load, and a single wrong sample must not
//!   move a participant: an SR pairs its NTP time with the RTP time of the last packet *sent*,
//!   so a packet sent late (a starved sender) stamps the whole report late; a track therefore
//!   keeps its last [`REPORTS_KEPT`] SRs and maps through the one that puts a given RTP time
//!   earliest. Arrivals are only ever late (a busy or bunched receiver), and the offset is a
//!   windowed minimum-delay filter: the fastest sample of each [`OFFSET_WINDOW`], and of the
//!   last [`OFFSET_WINDOWS`] windows a value that several agree on (an early-stamped outlier
//!   in one window is ignored). Old windows expire, so the estimate follows clock drift.
//!   Samples are kept per track in RTP seconds, so a track's better report re-maps its past
//!   samples too (a late-stamped first report does not linger in the filter).
//! - **Arrival**, until the track's first SR: the first packet's arrival anchors the track, and
//!   its RTP clock runs from there.
//!
//! Inside a file, positions are integer RTP differences ([`FileTimeline`]), so loss and DTX keep
//! their time exactly. They are pulled back to the recording's clock only when they drift from it
//! by more than [`MAX_FILE_DRIFT`], so drift between sender clocks does not accumulate. A
//! track whose RTP time disagrees with arrival by more than [`REANCHOR_AFTER`] (a restarted or
//! hostile sender) re-anchors to arrival.

use std::time::{Duration, Instant};

/// Disagreement between RTP time and arrival time that makes a track re-anchor.
pub const REANCHOR_AFTER: Duration = Duration::from_secs(3);
/// Largest disagreement between a file's own positions and the recording's clock before the
/// file is re-aligned (by a gap, or by dropping what overlaps).
pub const MAX_FILE_DRIFT: Duration = Duration::from_millis(30);
/// While a file is younger than this, a disagreement with the recording's clock (over
/// [`PLACEMENT_TOLERANCE`]) moves the file's start instead of its positions: it comes from the sender-offset estimate settling
/// (its first fast packet), not from drift.
pub const PLACEMENT_WINDOW: Duration = Duration::from_secs(10);
/// While a file is in its [`PLACEMENT_WINDOW`], a disagreement larger than this moves its start.
/// Much less than [`MAX_FILE_DRIFT`]: moving a start costs nothing (positions stay exact), and
/// leaving each of a participant's files up to [`MAX_FILE_DRIFT`] from the estimate could put
/// its audio and video twice that apart.
pub const PLACEMENT_TOLERANCE: Duration = Duration::from_millis(2);
/// Length of one window of the sender-offset filter (its fastest sample is kept).
pub const OFFSET_WINDOW: Duration = Duration::from_secs(1);
/// Windows the sender-offset filter remembers.
pub const OFFSET_WINDOWS: usize = 8;
/// Sender reports a track keeps to choose its mapping from.
pub const REPORTS_KEPT: usize = 8;

/// The clock of one recording: its zero instant, and its pauses.
///
/// [`RecordingClock::seconds`] is wall time since zero: the time base of every estimate (track
/// anchors, sender offsets), which a pause must not disturb. Media are placed in files by
/// *recorded* time ([`RecordingClock::recorded`]): wall time with every paused span cut out, so
/// a pause leaves no gap in any file. Clones share the pauses: every consumer that places
/// media (track files, chat lines, a live mix) sees the same cut.
#[derive(Debug, Clone)]
pub struct RecordingClock {
    zero: Instant,
    pauses: std::sync::Arc<std::sync::Mutex<Pauses>>,
}

impl RecordingClock {
    /// A clock whose zero is `zero` (when the recording was accepted), never paused yet.
    pub fn new(zero: Instant) -> Self {
        Self {
            zero,
            pauses: Default::default(),
        }
    }

    /// Seconds from zero to `t` (negative before zero), wall time: pauses included.
    pub fn seconds(&self, t: Instant) -> f64 {
        if t >= self.zero {
            t.duration_since(self.zero).as_secs_f64()
        } else {
            -self.zero.duration_since(t).as_secs_f64()
        }
    }

    fn pauses(&self) -> std::sync::MutexGuard<'_, Pauses> {
        self.pauses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a pause at `at`; false when already paused.
    pub fn pause(&self, at: Instant) -> bool {
        let at = self.seconds(at);
        self.pauses().pause(at)
    }

    /// Ends the pause at `at`; false when not paused.
    pub fn resume(&self, at: Instant) -> bool {
        let at = self.seconds(at);
        self.pauses().resume(at)
    }

    /// Whether a pause is open.
    pub fn is_paused(&self) -> bool {
        self.pauses().is_paused()
    }

    /// Total paused time up to `now` (an open pause counts to `now`).
    pub fn paused_total(&self, now: Instant) -> Duration {
        let now = self.seconds(now);
        Duration::from_secs_f64(self.pauses().total(now).max(0.0))
    }

    /// Recorded time of wall time `t` (seconds, as [`Self::seconds`]): `t` minus the pauses
    /// before it; `None` when `t` falls inside a pause (nothing of it is recorded).
    pub fn recorded(&self, t: f64) -> Option<f64> {
        self.pauses().recorded(t)
    }

    /// Recorded time of wall time `t`, a time inside a pause counting as that pause's start
    /// (for the end of a file stopped while paused).
    pub fn recorded_clamped(&self, t: f64) -> f64 {
        self.pauses().recorded_clamped(t)
    }

    /// How many pauses were started: changes at every pause, so a file can tell that a cut
    /// lies between two of its samples.
    pub fn cuts(&self) -> usize {
        self.pauses().count()
    }
}

/// The paused spans of a recording, in wall seconds of its clock, in order; only the last may
/// be open. Pure: times are inputs.
///
/// Invariants: spans do not overlap, each starts at or after the previous one's end, and an end
/// is never before its start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pauses {
    spans: Vec<(f64, Option<f64>)>,
}

impl Pauses {
    /// Opens a pause at `at` (moved to the last pause's end if earlier); false when one is open.
    pub fn pause(&mut self, at: f64) -> bool {
        if self.is_paused() {
            return false;
        }
        let at = self
            .spans
            .last()
            .and_then(|(_, end)| *end)
            .map_or(at, |end| at.max(end));
        self.spans.push((at, None));
        true
    }

    /// Closes the open pause at `at` (not before its start); false when none is open.
    pub fn resume(&mut self, at: f64) -> bool {
        match self.spans.last_mut() {
            Some((start, end @ None)) => {
                *end = Some(at.max(*start));
                true
            }
            _ => false,
        }
    }

    /// Whether a pause is open.
    pub fn is_paused(&self) -> bool {
        matches!(self.spans.last(), Some((_, None)))
    }

    /// Pauses started so far.
    pub fn count(&self) -> usize {
        self.spans.len()
    }

    /// Paused seconds up to wall time `now`.
    pub fn total(&self, now: f64) -> f64 {
        self.spans
            .iter()
            .map(|(start, end)| (end.unwrap_or(now).min(now) - start).max(0.0))
            .sum()
    }

    /// `t` minus the pauses before it, or `None` inside a pause (`start <= t < end`).
    pub fn recorded(&self, t: f64) -> Option<f64> {
        let mut cut = 0.0;
        for (start, end) in &self.spans {
            if t < *start {
                break;
            }
            match end {
                Some(end) if t >= *end => cut += end - start,
                _ => return None,
            }
        }
        Some(t - cut)
    }

    /// As [`Self::recorded`], a time inside a pause counting as the pause's start.
    pub fn recorded_clamped(&self, t: f64) -> f64 {
        let mut cut = 0.0;
        for (start, end) in &self.spans {
            if t < *start {
                break;
            }
            match end {
                Some(end) if t >= *end => cut += end - start,
                _ => return start - cut,
            }
        }
        t - cut
    }
}

/// Converts a 64-bit NTP timestamp (32.32 fixed point) to seconds.
pub fn ntp_seconds(ntp: u64) -> f64 {
    (ntp >> 32) as f64 + (ntp & 0xffff_ffff) as f64 / 4_294_967_296.0
}

/// Maps one sender's wallclock (seconds, from its SRs) onto the recording's clock. Shared by
/// all tracks of that sender.
///
/// The offset is `ntp − arrival` of the fastest sample per [`OFFSET_WINDOW`] of arrival time,
/// over the last [`OFFSET_WINDOWS`] windows: the value that at least a quarter of them (and at
/// least two, once two exist) reach, so one early-stamped sample cannot move it and late
/// (bunched, starved) arrivals never do.
///
/// A sample's `ntp` comes from its track's current sender-report mapping, which changes when a
/// better report arrives (the first one may have been stamped late). Samples are therefore
/// kept per track as `rtp seconds − arrival`, with the track's mapping (`base`: the wallclock
/// of its RTP time 0) applied when the offset is read: a track's new mapping re-expresses all
/// its past samples at once, and none keeps the old (wrong) mapping alive in the filter until
/// its window expires.
#[derive(Debug, Clone, Default)]
pub struct SenderClock {
    /// (window index, per track: (track id, largest `rtp seconds − arrival` in it)), oldest
    /// first, indices increasing.
    windows: std::collections::VecDeque<(i64, Vec<(u64, f64)>)>,
    /// Per track id: the wallclock of its RTP time 0 (`ntp = base + rtp seconds`).
    bases: Vec<(u64, f64)>,
    /// The estimate from `windows` and `bases` as they are now ([`SenderClock::estimate`]),
    /// kept up to date by [`SenderClock::observe_track`], the only place that changes them:
    /// it is read for every packet placed, and changes far less often.
    current: Option<f64>,
    /// The estimate last logged (changes are logged at debug level).
    logged: Option<f64>,
}

impl SenderClock {
    /// A sample stamped `ntp` (sender wallclock) arrived at recording time `arrival`, from a
    /// source whose mapping never changes (track id 0, base 0).
    pub fn observe(&mut self, ntp: f64, arrival: f64) {
        self.observe_track(0, 0.0, ntp, arrival);
    }

    /// A sample of track `track`, at `rtp` seconds of its RTP clock, arrived at recording time
    /// `arrival`; the track's current mapping puts RTP time 0 at wallclock `base`.
    pub fn observe_track(&mut self, track: u64, base: f64, rtp: f64, arrival: f64) {
        let sample = rtp - arrival;
        if !sample.is_finite() || !base.is_finite() {
            return;
        }
        // Whether the estimate's inputs changed: most samples are not their window's fastest.
        let mut changed = match self.bases.iter_mut().find(|(id, _)| *id == track) {
            Some((_, b)) => std::mem::replace(b, base) != base,
            None => {
                self.bases.push((track, base));
                true
            }
        };
        let index = (arrival / OFFSET_WINDOW.as_secs_f64()).floor() as i64;
        let newer_exists = self.windows.back().is_some_and(|(i, _)| *i > index);
        match self.windows.iter_mut().rev().find(|(i, _)| *i <= index) {
            Some((i, best)) if *i == index => match best.iter_mut().find(|(id, _)| *id == track) {
                Some((_, b)) if sample > *b => {
                    *b = sample;
                    changed = true;
                }
                Some(_) => {}
                None => {
                    best.push((track, sample));
                    changed = true;
                }
            },
            _ if newer_exists => {
                // Older than the newest window and its own window is gone: too old to count.
            }
            _ => {
                self.windows.push_back((index, vec![(track, sample)]));
                while self.windows.len() > OFFSET_WINDOWS {
                    self.windows.pop_front();
                }
                changed = true;
            }
        }
        if !changed {
            return;
        }
        self.current = self.estimate();
        let offset = self.current;
        if let (Some(now), last) = (offset, self.logged) {
            if last.is_none_or(|l| (now - l).abs() >= 0.001) {
                tracing::debug!(
                    arrival,
                    offset_ms = now * 1e3,
                    moved_ms = last.map(|l| (l - now) * 1e3),
                    sample_ms = (base + sample) * 1e3,
                    "sender offset changed"
                );
                self.logged = offset;
            }
        }
    }

    /// The current offset estimate (sender wallclock − recording time).
    pub fn offset(&self) -> Option<f64> {
        self.current
    }

    /// The offset estimate computed from `windows` and `bases`.
    fn estimate(&self) -> Option<f64> {
        // Sort a copy on the stack, not in a new Vec.
        let mut buf = [0f64; OFFSET_WINDOWS];
        let mut n = 0;
        for (_, tracks) in self.windows.iter().take(OFFSET_WINDOWS) {
            // The window's fastest sample, each track's under its current mapping.
            let best = tracks
                .iter()
                .filter_map(|(id, w)| {
                    let base = self.bases.iter().find(|(b, _)| b == id)?.1;
                    Some(base + w)
                })
                .fold(f64::NEG_INFINITY, f64::max);
            // A window whose tracks have no mapping yet adds no value (and leaves no gap).
            if best.is_finite() {
                buf[n] = best;
                n += 1;
            }
        }
        if n == 0 {
            return None;
        }
        let best = &mut buf[..n];
        best.sort_unstable_by(|a, b| b.total_cmp(a));
        // The k-th largest window value: reached by k+1 windows.
        let k = (best.len() / 4).max(usize::from(best.len() >= 2));
        best.get(k).copied()
    }

    /// Recording time of sender wallclock `ntp`, once anything was observed.
    pub fn to_recording(&self, ntp: f64) -> Option<f64> {
        self.offset().map(|o| ntp - o)
    }
}

/// A sender report as the track clock keeps it: its wallclock and extended RTP timestamp.
#[derive(Debug, Clone, Copy)]
struct Report {
    ntp: f64,
    ext: i64,
}

/// Maps one track's extended RTP timestamps to recording time.
#[derive(Debug, Clone)]
pub struct TrackClock {
    clock: RecordingClock,
    rate: f64,
    anchor: Option<(i64, f64)>,
    /// The last [`REPORTS_KEPT`] sender reports, oldest first.
    reports: std::collections::VecDeque<Report>,
    last_ext: Option<i64>,
    reanchors: u32,
    generation: u32,
    /// Wallclock of RTP time 0 under the report last logged.
    logged_base: Option<f64>,
    /// This track's key in its [`SenderClock`].
    id: u64,
}

/// Source of [`TrackClock`] ids (0 is [`SenderClock::observe`]'s).
static NEXT_TRACK_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A shared [`SenderClock`].
pub type SharedSenderClock = std::sync::Arc<std::sync::Mutex<SenderClock>>;

fn lock(sender: &SharedSenderClock) -> std::sync::MutexGuard<'_, SenderClock> {
    sender.lock().unwrap_or_else(|e| e.into_inner())
}

impl TrackClock {
    /// A track clock at `clock_rate` Hz on `clock`.
    pub fn new(clock: RecordingClock, clock_rate: u32) -> Self {
        Self {
            clock,
            rate: f64::from(clock_rate.max(1)),
            anchor: None,
            reports: std::collections::VecDeque::new(),
            last_ext: None,
            reanchors: 0,
            generation: 0,
            logged_base: None,
            id: NEXT_TRACK_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The recording's clock this track maps onto.
    pub fn recording(&self) -> &RecordingClock {
        &self.clock
    }

    /// The track's RTP clock rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes a sender report of this track (`ntp`: 64-bit NTP, `rtp`: its RTP timestamp).
    /// Ignored until a packet gave the extended timestamp space a reference.
    pub fn on_sender_report(&mut self, ntp: u64, rtp: u32) {
        let Some(last) = self.last_ext else {
            return;
        };
        // Extend `rtp` next to the latest packet's timestamp (SRs are seconds apart).
        let delta = i64::from(rtp.wrapping_sub(last as u32) as i32);
        if self.reports.is_empty() {
            tracing::debug!(
                rate = self.rate,
                "first sender report: track placed by wallclock"
            );
            self.generation += 1;
        }
        self.reports.push_back(Report {
            ntp: ntp_seconds(ntp),
            ext: last + delta,
        });
        while self.reports.len() > REPORTS_KEPT {
            self.reports.pop_front();
        }
    }

    /// The report the track maps through: of those kept, the one that puts an RTP time at the
    /// earliest wallclock. An SR can only be stamped late (its RTP time is extrapolated from
    /// the last packet's send time, late when the sender was starved), never early.
    fn report(&self) -> Option<Report> {
        self.reports.iter().copied().min_by(|a, b| {
            let a0 = a.ntp - a.ext as f64 / self.rate;
            let b0 = b.ntp - b.ext as f64 / self.rate;
            a0.total_cmp(&b0)
        })
    }

    /// Whether sender reports place this track.
    pub fn synced(&self) -> bool {
        !self.reports.is_empty()
    }

    /// Changes whenever the mapping changes basis (first SR, a re-anchor).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Recording time (seconds) of the sample with extended RTP timestamp `ts`, which arrived at
    /// `arrival`, using `sender` once SRs exist.
    pub fn map(&mut self, ts: i64, arrival: Instant, sender: &SharedSenderClock) -> f64 {
        let arrived = self.clock.seconds(arrival);
        self.last_ext = Some(self.last_ext.map_or(ts, |l| l.max(ts)));
        if let Some(report) = self.report() {
            let base = report.ntp - report.ext as f64 / self.rate;
            if self.logged_base.is_none_or(|b| (b - base).abs() >= 0.001) {
                tracing::debug!(
                    rate = self.rate,
                    arrived,
                    moved_ms = self.logged_base.map(|b| (base - b) * 1e3),
                    "track mapping report changed"
                );
                self.logged_base = Some(base);
            }
            let ntp = report.ntp + (ts - report.ext) as f64 / self.rate;
            let mut sender = lock(sender);
            sender.observe_track(self.id, base, ts as f64 / self.rate, arrived);
            if let Some(t) = sender.to_recording(ntp) {
                if (t - arrived).abs() <= REANCHOR_AFTER.as_secs_f64() {
                    return t;
                }
            }
            drop(sender);
            tracing::warn!("sender report disagrees with arrival; falling back to arrival");
            self.reports.clear();
            self.anchor = None;
            self.generation += 1;
            self.reanchors += 1;
        }
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
            self.generation += 1;
            return arrived;
        }
        t
    }

    /// Recording time of extended timestamp `ts` under the current mapping, without observing
    /// anything (for placing a sample seen earlier).
    pub fn time_of(&self, ts: i64, sender: &SharedSenderClock) -> Option<f64> {
        if let Some(report) = self.report() {
            return lock(sender).to_recording(report.ntp + (ts - report.ext) as f64 / self.rate);
        }
        self.anchor
            .map(|(ts0, t0)| t0 + (ts - ts0) as f64 / self.rate)
    }

    /// How often the track re-anchored.
    pub fn reanchors(&self) -> u32 {
        self.reanchors
    }
}

/// Where a file's samples sit: positions in RTP clock units since the file's first sample.
///
/// Positions come from integer RTP timestamp differences, so consecutive packets never
/// overlap or jitter by a rounding error. When the track's mapping changes basis (its first
/// SR), the file's start is re-placed on the recording's clock; when positions drift from the
/// recording's clock by more than [`MAX_FILE_DRIFT`], they are pulled back to it.
///
/// Times given to a timeline are *recorded* times ([`RecordingClock::recorded`]). A pause
/// between two samples ([`FileTimeline::cut`]) re-aligns the next position to its recorded
/// time at once: the paused span leaves no gap in the file.
#[derive(Debug, Clone)]
pub struct FileTimeline {
    first_ext: i64,
    first_t: f64,
    adjust: i64,
    generation: u32,
    rate: f64,
    realigned: u32,
    /// Paused seconds before the last sample (wall − recorded time).
    cut: Option<f64>,
    /// A pause lies between the last sample and the next: re-align the next one at once.
    cut_pending: bool,
}

impl FileTimeline {
    /// A file whose first sample has extended timestamp `ext` at recording time `t`.
    pub fn start(ext: i64, t: f64, clock: &TrackClock) -> Self {
        Self {
            first_ext: ext,
            first_t: t,
            adjust: 0,
            generation: clock.generation(),
            rate: clock.rate,
            realigned: 0,
            cut: None,
            cut_pending: false,
        }
    }

    /// The next sample has `cut` paused seconds before it (its wall time minus its recorded
    /// time). When that differs from the previous sample's, a pause lies between them and the
    /// next [`position`](Self::position) is the sample's recorded time: the RTP time the sender
    /// spent during the pause is cut out of the file.
    pub fn cut(&mut self, cut: f64) {
        if let Some(last) = self.cut {
            if (cut - last).abs() > 1e-6 {
                self.cut_pending = true;
            }
        }
        self.cut = Some(cut);
    }

    /// Recording time (seconds) of the file's first sample.
    pub fn first_t(&self) -> f64 {
        self.first_t
    }

    /// How often positions were pulled back to the recording's clock.
    pub fn realigned(&self) -> u32 {
        self.realigned
    }

    /// Position (RTP units since the first sample) of the sample `ext` mapped to `t` by
    /// `clock`. Negative for samples older than the first. Returns whether the file's start
    /// moved (its first SR placed it anew).
    pub fn position(
        &mut self,
        ext: i64,
        t: f64,
        clock: &TrackClock,
        sender: &SharedSenderClock,
    ) -> (i64, bool) {
        let mut moved = false;
        if clock.generation() != self.generation {
            self.generation = clock.generation();
            if clock.synced() && self.adjust == 0 {
                if let Some(first_t) = clock
                    .time_of(self.first_ext, sender)
                    .map(|wall| clock.recording().recorded_clamped(wall))
                {
                    tracing::debug!(
                        by_ms = (first_t - self.first_t) * 1e3,
                        first_t,
                        "file start placed by the first sender report"
                    );
                    self.first_t = first_t;
                    moved = true;
                }
            }
        }
        let position = ext - self.first_ext + self.adjust;
        let wanted = ((t - self.first_t) * self.rate).round() as i64;
        if std::mem::take(&mut self.cut_pending) {
            tracing::debug!(
                cut_ms = (position - wanted) as f64 * 1000.0 / self.rate,
                "paused span cut out of the file"
            );
            self.adjust += wanted - position;
            return (wanted, moved);
        }
        let settling =
            clock.synced() && position < (PLACEMENT_WINDOW.as_secs_f64() * self.rate) as i64;
        let limit = if settling {
            PLACEMENT_TOLERANCE
        } else {
            MAX_FILE_DRIFT
        };
        let limit = (limit.as_secs_f64() * self.rate) as i64;
        if (wanted - position).abs() > limit {
            let by_ms = (wanted - position) as f64 * 1000.0 / self.rate;
            if settling {
                // Still settling: the file starts elsewhere; its positions stay exact.
                self.first_t += (wanted - position) as f64 / self.rate;
                tracing::debug!(
                    by_ms,
                    position,
                    t,
                    "file start re-placed on the recording clock"
                );
                return (position, true);
            }
            tracing::debug!(by_ms, position, t, "file re-aligned to the recording clock");
            self.adjust += wanted - position;
            self.realigned += 1;
            return (wanted, moved);
        }
        (position, moved)
    }

    /// Position of recording time `t` (for the end of the file).
    pub fn position_at(&self, t: f64) -> i64 {
        ((t - self.first_t) * self.rate).round() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> SharedSenderClock {
        SharedSenderClock::default()
    }

    #[test]
    fn pauses_cut_recorded_time() {
        let mut p = Pauses::default();
        assert_eq!(p.recorded(5.0), Some(5.0));
        assert!(!p.resume(1.0));
        assert!(p.pause(2.0));
        assert!(!p.pause(2.5), "already paused");
        assert!(p.is_paused());
        assert_eq!(p.recorded(1.5), Some(1.5));
        assert_eq!(p.recorded(2.0), None);
        assert_eq!(
            p.recorded(9.0),
            None,
            "an open pause takes everything after it"
        );
        assert_eq!(p.recorded_clamped(9.0), 2.0);
        assert!((p.total(3.0) - 1.0).abs() < 1e-9);
        assert!(p.resume(4.0));
        assert_eq!(p.recorded(3.9), None);
        assert_eq!(p.recorded(4.0), Some(2.0));
        assert_eq!(p.recorded(5.0), Some(3.0));
        assert!(p.pause(6.0));
        assert!(p.resume(6.5));
        assert_eq!(p.recorded(7.0), Some(4.5));
        assert_eq!(p.recorded_clamped(6.2), 4.0);
        assert!((p.total(100.0) - 2.5).abs() < 1e-9);
        assert_eq!(p.count(), 2);
    }

    /// A sender keeps sending through a 2 s pause: the file's positions go on from where they
    /// were, without the 2 s of RTP time the pause dropped.
    #[test]
    fn a_pause_leaves_no_gap_in_file_positions() {
        let zero = Instant::now();
        let s = sender();
        let rc = RecordingClock::new(zero);
        let mut c = TrackClock::new(rc.clone(), 48_000);
        let mut f: Option<FileTimeline> = None;
        let mut positions = Vec::new();
        for i in 0..250i64 {
            let at = zero + Duration::from_millis(20 * i as u64);
            if i == 100 {
                assert!(rc.pause(at));
            }
            if i == 200 {
                assert!(rc.resume(at));
            }
            let ext = 7_000 + 960 * i;
            if i == 1 {
                // Sender reports place the track (its file then settles its start within
                // PLACEMENT_WINDOW): the pause must still cut, not move the start.
                let ntp = ((1000u64 << 32) as f64 + 0.02 * 4_294_967_296.0) as u64;
                c.on_sender_report(ntp, 7_960);
            }
            let wall = c.map(ext, at, &s);
            let Some(t) = rc.recorded(wall) else {
                continue;
            };
            let f = f.get_or_insert_with(|| FileTimeline::start(ext, t, &c));
            f.cut(wall - t);
            positions.push(f.position(ext, t, &c, &s).0);
        }
        assert_eq!(positions.len(), 150);
        let expected: Vec<i64> = (0..150).map(|i| 960 * i).collect();
        assert_eq!(positions, expected);
        assert!(c.synced());
        assert_eq!(
            rc.paused_total(zero + Duration::from_secs(60)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn follows_rtp_time_after_the_anchor() {
        let zero = Instant::now();
        let s = sender();
        let mut c = TrackClock::new(RecordingClock::new(zero), 48_000);
        let t = c.map(1_000_000, zero + Duration::from_millis(250), &s);
        assert!((t - 0.25).abs() < 1e-9);
        // 2 s later by RTP, arriving with 30 ms jitter: RTP time wins.
        let t = c.map(1_000_000 + 96_000, zero + Duration::from_millis(2280), &s);
        assert!((t - 2.25).abs() < 1e-9);
        assert_eq!(c.reanchors(), 0);
    }

    #[test]
    fn file_positions_are_integer_rtp_differences() {
        let zero = Instant::now();
        let s = sender();
        let mut c = TrackClock::new(RecordingClock::new(zero), 48_000);
        let t = c.map(5_000, zero + Duration::from_millis(7), &s);
        let mut f = FileTimeline::start(5_000, t, &c);
        for i in 1..1000i64 {
            let ext = 5_000 + 960 * i;
            let arrival = zero + Duration::from_millis(7 + 20 * i as u64 + (i % 3) as u64);
            let t = c.map(ext, arrival, &s);
            assert_eq!(f.position(ext, t, &c, &s).0, 960 * i);
        }
        // A jump re-anchors: the position follows arrival time, then RTP again.
        let t = c.map(10_000_000_000, zero + Duration::from_secs(21), &s);
        let (p, _) = f.position(10_000_000_000, t, &c, &s);
        assert_eq!(p, f.position_at(t));
        assert_eq!(f.position(10_000_000_960, t + 0.02, &c, &s).0, p + 960);
    }

    #[test]
    fn re_anchors_on_a_jump() {
        let zero = Instant::now();
        let s = sender();
        let mut c = TrackClock::new(RecordingClock::new(zero), 90_000);
        c.map(0, zero, &s);
        let t = c.map(90_000 * 3600, zero + Duration::from_secs(1), &s);
        assert!((t - 1.0).abs() < 1e-9);
        assert_eq!(c.reanchors(), 1);
    }

    /// Audio and video of one sender, with different network delays and different RTP
    /// offsets, land on the recording clock where the sender captured them.
    #[test]
    fn sender_reports_put_audio_and_video_on_one_timeline() {
        let zero = Instant::now();
        let s = sender();
        let rc = RecordingClock::new(zero);
        let mut audio = TrackClock::new(rc.clone(), 48_000);
        let mut video = TrackClock::new(rc.clone(), 90_000);
        // Sender wallclock 1000.0 s = recording time 0.5 s. Audio RTP 0 and video RTP 777_777
        // both at wallclock 1000.0. Audio travels 20 ms, video 80 ms.
        let sender_to_rec = |ntp: f64| ntp - 1000.0 + 0.5;
        let at = |rec: f64| zero + Duration::from_secs_f64(rec);
        let ntp = |secs: f64| (secs * 4_294_967_296.0) as u64;
        for i in 0..100 {
            let w = 1000.0 + 0.02 * f64::from(i);
            audio.map(
                (48_000.0 * (w - 1000.0)) as i64,
                at(sender_to_rec(w) + 0.020),
                &s,
            );
            video.map(
                777_777 + (90_000.0 * (w - 1000.0)) as i64,
                at(sender_to_rec(w) + 0.080),
                &s,
            );
            if i == 10 {
                audio.on_sender_report(ntp(w), (48_000.0 * (w - 1000.0)) as u32);
                video.on_sender_report(ntp(w), 777_777 + (90_000.0 * (w - 1000.0)) as u32);
            }
        }
        let w = 1003.0;
        let ta = audio.map(144_000, at(sender_to_rec(w) + 0.020), &s);
        let tv = video.map(777_777 + 270_000, at(sender_to_rec(w) + 0.080), &s);
        // Same capture instant: same recording time (placed at the fastest path, +20 ms).
        assert!((ta - tv).abs() < 1e-3, "audio {ta} video {tv}");
        assert!((ta - (sender_to_rec(w) + 0.020)).abs() < 1e-3);
    }

    #[test]
    fn a_files_start_moves_to_the_sender_report_placement() {
        let zero = Instant::now();
        let s = sender();
        let mut c = TrackClock::new(RecordingClock::new(zero), 48_000);
        // Arrival anchoring with a slow first packet (+100 ms), then an SR says it was
        // captured at recording time 1.0.
        let t = c.map(0, zero + Duration::from_millis(1100), &s);
        let mut f = FileTimeline::start(0, t, &c);
        c.on_sender_report((1000u64) << 32, 0);
        let t = c.map(960, zero + Duration::from_millis(1020), &s);
        let (p, moved) = f.position(960, t, &c, &s);
        assert!(moved);
        assert_eq!(p, 960);
        assert!((f.first_t() - 1.0).abs() < 1e-6, "{}", f.first_t());
    }

    /// Both files of a participant follow a settling estimate that moves less than
    /// MAX_FILE_DRIFT (under a CPU hog: a better video SR moved the shared offset 16 ms): each
    /// file's start follows it, so audio and video cannot end up to 2 × 30 ms apart.
    #[test]
    fn a_settling_file_start_follows_small_moves_of_the_estimate() {
        let zero = Instant::now();
        let s = sender();
        let rc = RecordingClock::new(zero);
        let mut audio = TrackClock::new(rc.clone(), 48_000);
        let mut video = TrackClock::new(rc.clone(), 90_000);
        let rec = |w: f64| w - 999.5;
        let at = |r: f64| zero + Duration::from_secs_f64(r);
        let a_ts = |w: f64| (48_000.0 * (w - 1000.0)).round() as i64;
        let v_ts = |w: f64| 777_777 + (90_000.0 * (w - 1000.0)).round() as i64;
        audio.on_sender_report(ntp64(1000.0), 0);
        let (mut fa, mut fv) = (None, None);
        for i in 0..300 {
            let w = 1000.0 + 0.02 * f64::from(i);
            // The video's reports are stamped 20 ms late until a good one comes at 3 s.
            let late = if i < 150 { 0.020 } else { 0.0 };
            if i % 50 == 0 {
                audio.on_sender_report(ntp64(w), a_ts(w) as u32);
                video.on_sender_report(ntp64(w + late), v_ts(w) as u32);
            }
            let ta = audio.map(a_ts(w), at(rec(w) + 0.020), &s);
            let tv = video.map(v_ts(w), at(rec(w) + 0.020), &s);
            let fa = fa.get_or_insert_with(|| FileTimeline::start(a_ts(w), ta, &audio));
            let fv = fv.get_or_insert_with(|| FileTimeline::start(v_ts(w), tv, &video));
            fa.position(a_ts(w), ta, &audio, &s);
            fv.position(v_ts(w), tv, &video, &s);
        }
        let (fa, fv) = (fa.unwrap(), fv.unwrap());
        // Both started with the first sample (wallclock 1000.0): the same recording time.
        let apart = fa.first_t() - fv.first_t();
        assert!(
            apart.abs() < 0.003,
            "audio and video {:.1} ms apart",
            apart * 1e3
        );
        let placed = fa.first_t() - (rec(1000.0) + 0.020);
        assert!(placed.abs() < 0.003, "placed {:.1} ms off", placed * 1e3);
    }

    fn ntp64(secs: f64) -> u64 {
        (secs * 4_294_967_296.0) as u64
    }

    /// Issue 10 item 10: one sender report stamped late (the packet before it was sent 60 ms
    /// late by a starved sender) moves neither that track nor the participant's other track.
    #[test]
    fn a_late_stamped_sender_report_moves_nothing() {
        let zero = Instant::now();
        let s = sender();
        let rc = RecordingClock::new(zero);
        let mut audio = TrackClock::new(rc.clone(), 48_000);
        let mut video = TrackClock::new(rc.clone(), 90_000);
        // Wallclock w is recording time w − 999.5; audio travels 20 ms, video 30 ms.
        let rec = |w: f64| w - 999.5;
        let at = |r: f64| zero + Duration::from_secs_f64(r);
        let a_ts = |w: f64| (48_000.0 * (w - 1000.0)).round() as i64;
        let v_ts = |w: f64| 777_777 + (90_000.0 * (w - 1000.0)).round() as i64;
        let mut worst: f64 = 0.0;
        for i in 0..500 {
            let w = 1000.0 + 0.02 * f64::from(i);
            let ta = audio.map(a_ts(w), at(rec(w) + 0.020), &s);
            let tv = video.map(v_ts(w), at(rec(w) + 0.030), &s);
            if i > 60 {
                worst = worst.max((ta - rec(w) - 0.020).abs());
                worst = worst.max((tv - rec(w) - 0.020).abs());
            }
            if i % 50 == 10 {
                audio.on_sender_report(ntp64(w), a_ts(w) as u32);
                // The 3rd video SR says RTP time v_ts(w) was captured 60 ms later than it was.
                let late = if i == 110 { 0.060 } else { 0.0 };
                video.on_sender_report(ntp64(w + late), v_ts(w) as u32);
            }
        }
        // Placed at the fastest path (+20 ms), within a millisecond, before and after it.
        assert!(worst < 0.001, "worst placement error {:.1} ms", worst * 1e3);
    }

    /// Issue 10 item 10 (seen under a CPU hog): a track's *first* sender report is stamped
    /// 50 ms late and there is no better one yet, so its samples look 50 ms fast. When the next
    /// (good) report re-maps the track, the samples it fed the shared offset filter must follow
    /// at once: before, they stayed in their windows and held the participant 50 ms early until
    /// the windows expired (up to 8 s), which then moved it ~50 ms in one step.
    #[test]
    fn a_late_first_sender_report_stops_counting_once_a_better_one_maps_the_track() {
        let zero = Instant::now();
        let s = sender();
        let rc = RecordingClock::new(zero);
        let mut audio = TrackClock::new(rc.clone(), 48_000);
        let mut video = TrackClock::new(rc.clone(), 90_000);
        // Wallclock w is recording time w − 999.5; audio travels 20 ms, video 30 ms.
        let rec = |w: f64| w - 999.5;
        let at = |r: f64| zero + Duration::from_secs_f64(r);
        let a_ts = |w: f64| (48_000.0 * (w - 1000.0)).round() as i64;
        let v_ts = |w: f64| 777_777 + (90_000.0 * (w - 1000.0)).round() as i64;
        let mut worst: (f64, f64) = (0.0, 0.0);
        for i in 0..600 {
            let w = 1000.0 + 0.02 * f64::from(i);
            let ta = audio.map(a_ts(w), at(rec(w) + 0.020), &s);
            let tv = video.map(v_ts(w), at(rec(w) + 0.030), &s);
            // From the audio's second report on (1.2 s of wallclock, 1.72 s recording time).
            if i > 60 {
                for e in [ta - rec(w) - 0.020, tv - rec(w) - 0.020] {
                    if e.abs() > worst.0.abs() {
                        worst = (e, rec(w));
                    }
                }
            }
            if i == 10 || (i > 10 && i % 50 == 10) {
                // The first audio SR says RTP time a_ts(w) was captured 50 ms later than it was.
                let late = if i == 10 { 0.050 } else { 0.0 };
                audio.on_sender_report(ntp64(w + late), a_ts(w) as u32);
            }
            if i % 50 == 35 {
                video.on_sender_report(ntp64(w), v_ts(w) as u32);
            }
        }
        assert!(
            worst.0.abs() < 0.001,
            "placed {:+.1} ms off at {:.2} s",
            worst.0 * 1e3,
            worst.1
        );
    }

    /// One sample stamped 80 ms early does not move the offset; arrivals processed late in a
    /// bunch (a starved receiver) do not either.
    #[test]
    fn sender_offset_ignores_one_outlier_and_bunched_arrivals() {
        let mut c = SenderClock::default();
        let truth = 1000.0;
        let mut seed = 7u64;
        let mut jitter = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f64 / (1u64 << 24) as f64 * 0.010
        };
        for i in 0..600 {
            let capture = 0.02 * f64::from(i);
            // 5–15 ms network delay; every second, 200 ms worth of packets processed in a
            // bunch up to 150 ms late.
            let mut arrival = capture + 0.005 + jitter();
            if i % 50 < 10 {
                arrival += 0.150 - 0.015 * f64::from(i % 50);
            }
            c.observe(truth + capture, arrival);
            if i == 325 {
                // Early-stamped (or from a late-stamped SR): looks 80 ms faster than possible.
                c.observe(truth + capture + 0.080, arrival);
            }
            if i > 100 {
                let offset = -c.to_recording(0.0).unwrap();
                let error = truth - 0.005 - offset;
                assert!(
                    (-0.001..=0.006).contains(&error),
                    "sample {i}: offset off by {:.1} ms",
                    error * 1e3
                );
            }
        }
    }

    /// The estimate follows a sender clock that drifts (old windows expire).
    #[test]
    fn sender_offset_follows_drift() {
        let mut c = SenderClock::default();
        for i in 0..3000 {
            let t = 0.02 * f64::from(i);
            // Sender wallclock runs 1 ms/s slow against ours.
            c.observe(500.0 + t * 0.999, t + 0.010);
        }
        let t = 0.02 * 2999.0;
        let expect = 500.0 + t * 0.999 - (t + 0.010);
        let offset = -c.to_recording(0.0).unwrap();
        assert!((offset - expect).abs() < 0.010, "{offset} vs {expect}");
    }
}
