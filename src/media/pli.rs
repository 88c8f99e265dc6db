//! When to ask a video sender for a keyframe (RTCP PLI), as a pure state machine.
//!
//! SPEC §5: a PLI as soon as a video track starts, repeated every [`AWAIT_REPEAT`] until a
//! keyframe arrives; one when a frame is lost beyond what NACK recovered (at most one per
//! [`MIN_GAP`]); and every `pli_interval` when the recording asks for it. Time is an input.

use std::time::{Duration, Instant};

/// Repeat period while no keyframe has arrived yet.
pub const AWAIT_REPEAT: Duration = Duration::from_millis(500);
/// Least time between two loss-triggered PLIs.
pub const MIN_GAP: Duration = Duration::from_millis(250);

/// Why a PLI is sent (logged with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PliReason {
    /// The track just started.
    TrackStart,
    /// Still no keyframe since the start or since a loss.
    AwaitingKeyframe,
    /// A frame could not be completed.
    FrameLost,
    /// The recording's `pli_interval_ms`.
    Periodic,
}

/// PLI schedule of one video track.
#[derive(Debug)]
pub struct PliPolicy {
    interval: Option<Duration>,
    last_sent: Option<Instant>,
    last_periodic: Instant,
    loss_pending: bool,
    sent: u64,
}

impl PliPolicy {
    /// A policy for a track starting at `now`; the first [`poll`](Self::poll) sends at once.
    pub fn new(now: Instant, interval: Option<Duration>) -> Self {
        Self {
            interval: interval.filter(|d| !d.is_zero()),
            last_sent: None,
            last_periodic: now,
            loss_pending: false,
            sent: 0,
        }
    }

    /// A frame was lost: ask for a keyframe as soon as the rate limit allows.
    pub fn frame_lost(&mut self) {
        self.loss_pending = true;
    }

    /// Whether a PLI is due at `now`, and why. `awaiting_keyframe`: no decodable keyframe since
    /// the start or the last loss. Counts the PLI as sent when it returns `Some`.
    pub fn poll(&mut self, now: Instant, awaiting_keyframe: bool) -> Option<PliReason> {
        let reason = match self.last_sent {
            None => Some(PliReason::TrackStart),
            Some(last) => {
                let since = now.saturating_duration_since(last);
                if self.loss_pending && since >= MIN_GAP {
                    Some(PliReason::FrameLost)
                } else if awaiting_keyframe && since >= AWAIT_REPEAT {
                    Some(PliReason::AwaitingKeyframe)
                } else {
                    match self.interval {
                        Some(i) if now.saturating_duration_since(self.last_periodic) >= i => {
                            Some(PliReason::Periodic)
                        }
                        _ => None,
                    }
                }
            }
        }?;
        self.last_sent = Some(now);
        self.loss_pending = false;
        if reason == PliReason::Periodic || self.interval.is_some() {
            self.last_periodic = now;
        }
        self.sent += 1;
        Some(reason)
    }

    /// The next instant at which [`poll`](Self::poll) may return `Some`.
    pub fn next_deadline(&self, awaiting_keyframe: bool) -> Option<Instant> {
        let Some(last) = self.last_sent else {
            return Some(self.last_periodic);
        };
        let mut next: Option<Instant> = self.interval.map(|i| self.last_periodic + i);
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if self.loss_pending {
            consider(last + MIN_GAP);
        }
        if awaiting_keyframe {
            consider(last + AWAIT_REPEAT);
        }
        next
    }

    /// PLIs sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_then_repeat_until_keyframe() {
        let t0 = Instant::now();
        let mut p = PliPolicy::new(t0, None);
        assert_eq!(p.poll(t0, true), Some(PliReason::TrackStart));
        assert_eq!(p.poll(t0 + Duration::from_millis(100), true), None);
        assert_eq!(p.next_deadline(true), Some(t0 + AWAIT_REPEAT));
        assert_eq!(
            p.poll(t0 + AWAIT_REPEAT, true),
            Some(PliReason::AwaitingKeyframe)
        );
        // Keyframe arrived: nothing more without loss or interval.
        assert_eq!(p.poll(t0 + Duration::from_secs(5), false), None);
        assert_eq!(p.next_deadline(false), None);
        assert_eq!(p.sent(), 2);
    }

    #[test]
    fn loss_is_rate_limited() {
        let t0 = Instant::now();
        let mut p = PliPolicy::new(t0, None);
        p.poll(t0, false);
        p.frame_lost();
        assert_eq!(p.poll(t0 + Duration::from_millis(10), false), None);
        assert_eq!(p.poll(t0 + MIN_GAP, false), Some(PliReason::FrameLost));
        p.frame_lost();
        assert_eq!(p.next_deadline(false), Some(t0 + MIN_GAP + MIN_GAP));
    }

    #[test]
    fn periodic_interval() {
        let t0 = Instant::now();
        let i = Duration::from_secs(2);
        let mut p = PliPolicy::new(t0, Some(i));
        p.poll(t0, false);
        assert_eq!(p.poll(t0 + Duration::from_secs(1), false), None);
        assert_eq!(p.poll(t0 + i, false), Some(PliReason::Periodic));
        assert_eq!(p.next_deadline(false), Some(t0 + i + i));
    }
}
