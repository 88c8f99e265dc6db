//! RTP sequence-number and timestamp extension, and a reorder buffer.
//!
//! Pure logic: no clock reads (time is always passed in as `now`) and no I/O, so tests can
//! drive minutes of traffic in microseconds.
//!
//! RTP sequence numbers (16 bits) and timestamps (32 bits) wrap. They are extended to
//! `u64` with wrapping arithmetic relative to the highest value seen so far; raw values
//! are never subtracted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The extended value of the first sequence number or timestamp seen is `FIRST_BASE + value`.
///
/// Extended values never fall more than half the wrap range below the highest value seen,
/// and the highest never decreases, so with this base nothing can go below zero: at least
/// `2^32 - 2^15` for sequence numbers and `2^31` for timestamps.
const FIRST_BASE: u64 = 1 << 32;

/// Extends `value` (of `bits` bits) relative to `highest`, the highest extended value so far.
///
/// A value less than half the range ahead (modulo the range) counts as newer, anything else
/// as older; exactly half the range counts as older, like a signed difference would.
fn extend(highest: &mut Option<u64>, value: u64, bits: u32) -> u64 {
    let Some(high) = *highest else {
        let ext = FIRST_BASE + value;
        *highest = Some(ext);
        return ext;
    };
    let range = 1u64 << bits;
    let ahead = value.wrapping_sub(high) & (range - 1);
    let ext = if ahead < range / 2 {
        high.saturating_add(ahead)
    } else {
        high.saturating_sub(range - ahead)
    };
    if ext > high {
        *highest = Some(ext);
    }
    ext
}

/// Extends 16-bit RTP sequence numbers to `u64`.
///
/// The first number seen maps to `2^32 + seq`; later ones are placed within ±2^15 of the
/// highest extended number so far, so packets reordered across the 65535 → 0 wrap land on
/// the right side of it, and packets just before the first one never underflow.
#[derive(Debug, Clone, Default)]
pub struct SeqUnwrapper {
    highest: Option<u64>,
}

impl SeqUnwrapper {
    /// A new unwrapper that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The extended (64-bit) value of `seq`.
    pub fn unwrap(&mut self, seq: u16) -> u64 {
        extend(&mut self.highest, u64::from(seq), 16)
    }
}

/// Extends 32-bit RTP timestamps to `u64`.
///
/// The first timestamp seen maps to `2^32 + ts`; later ones are placed within ±2^31 of the
/// highest extended timestamp so far. A timestamp shortly before the first one therefore
/// yields a smaller value, never an underflow (the minimum possible is `2^31`). To get a
/// signed offset between two extended timestamps, convert both to `i64` first (they stay
/// far below `i64::MAX` for any realistic stream).
#[derive(Debug, Clone, Default)]
pub struct TsUnwrapper {
    highest: Option<u64>,
}

impl TsUnwrapper {
    /// A new unwrapper that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The extended (64-bit) value of `ts`.
    pub fn unwrap(&mut self, ts: u32) -> u64 {
        extend(&mut self.highest, u64::from(ts), 32)
    }
}

/// What [`ReorderBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Buffered; it will come out of [`ReorderBuffer::pop`] in order.
    Accepted,
    /// The same sequence number is buffered or was already released: discarded.
    Duplicate,
    /// Older than what was already released (its slot was given up as lost): discarded.
    TooLate,
}

/// One thing coming out of the reorder buffer, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released<T> {
    /// The packet with this extended sequence number.
    Packet {
        /// Extended sequence number.
        ext_seq: u64,
        /// What was pushed with it.
        item: T,
    },
    /// `count` consecutive sequence numbers starting at `from_seq` were given up.
    Lost {
        /// First extended sequence number given up.
        from_seq: u64,
        /// How many (a `u64`: a big jump reports its size without allocating anything).
        count: u64,
    },
}

/// How many released sequence numbers are remembered to tell duplicates from late packets.
const HISTORY: u64 = 1024;
/// Words of the released-history bitmap.
const HISTORY_WORDS: usize = (HISTORY / 64) as usize;
/// `max_delay` is capped at this, so deadlines are always representable.
const MAX_DELAY_CAP: Duration = Duration::from_secs(3600);
/// Longest start-up hold of the first packet (when `max_delay` is longer). Reordering around
/// the very first packet spans a burst (the packets of one frame), not a NACK round trip, and
/// every held millisecond delays the start of a recording (a track's first keyframe on disk).
pub const START_HOLD: Duration = Duration::from_millis(20);

/// Orders packets by extended sequence number.
///
/// At the start, the first packet is held for `max_delay` but at most [`START_HOLD`] (or until
/// `max_packets` are buffered), so that packets reordered around the very first one are not
/// lost: a packet just before it is still accepted then. After that, packets in order pass straight
/// through.
///
/// A missing packet (a gap) is waited for at most `max_delay`, counted from the arrival of
/// the earliest packet that arrived after the gap, and only while fewer than `max_packets`
/// packets wait behind it. Then the gap is given up: [`Released::Lost`] is reported and
/// what follows is released.
///
/// Memory is bounded by `max_packets` buffered items, whatever the input:
/// - A packet `max_packets` or more ahead of the next expected one is a big loss (an outage,
///   or a sender jumping): the whole gap is given up at once and reported as one
///   [`Released::Lost`] with its size; no slot is reserved for it.
/// - Packets older than what was released are discarded ([`PushOutcome::Duplicate`] if that
///   sequence number was released within the last 1024, else [`PushOutcome::TooLate`]).
///   After `max_packets` such packets in a row, with nothing buffered, the sender is taken
///   to have restarted its numbering lower down and the buffer resynchronises on the latest.
///
/// The caller must call [`ReorderBuffer::pop`] until it returns `None` after every push,
/// and again at [`ReorderBuffer::next_deadline`].
#[derive(Debug)]
pub struct ReorderBuffer<T> {
    max_delay: Duration,
    max_packets: usize,
    /// Lowest extended sequence number not yet released or given up.
    next: Option<u64>,
    /// Something was released: the start-up hold is over.
    started: bool,
    /// End of the start-up hold.
    start_deadline: Option<Instant>,
    /// Buffered packets with their arrival time.
    buf: BTreeMap<u64, (Instant, T)>,
    /// When the gap at `next` is given up; `None` while there is no gap at the front.
    gap_deadline: Option<Instant>,
    /// Bit per sequence number (modulo [`HISTORY`]): released as a packet (set) or lost.
    released: [u64; HISTORY_WORDS],
    /// Consecutive pushes older than `next`.
    old_in_a_row: usize,
    lost: u64,
    duplicates: u64,
    too_late: u64,
}

impl<T> ReorderBuffer<T> {
    /// A buffer holding a gap for at most `max_delay` (capped at one hour) or while fewer
    /// than `max_packets` (at least 1) packets wait behind it.
    pub fn new(max_delay: Duration, max_packets: usize) -> Self {
        Self {
            max_delay: max_delay.min(MAX_DELAY_CAP),
            max_packets: max_packets.max(1),
            next: None,
            started: false,
            start_deadline: None,
            buf: BTreeMap::new(),
            gap_deadline: None,
            released: [0; HISTORY_WORDS],
            old_in_a_row: 0,
            lost: 0,
            duplicates: 0,
            too_late: 0,
        }
    }

    /// Offers a packet that arrived at `now`.
    pub fn push(&mut self, ext_seq: u64, item: T, now: Instant) -> PushOutcome {
        let next = match self.next {
            None => {
                self.start_deadline = Some(
                    now.checked_add(self.max_delay.min(START_HOLD))
                        .unwrap_or(now),
                );
                ext_seq
            }
            // Reordered around the first packet, before anything was released.
            Some(next)
                if !self.started && ext_seq < next && next - ext_seq < self.max_packets as u64 =>
            {
                ext_seq
            }
            Some(next) => next,
        };
        self.next = Some(next);
        if ext_seq < next {
            self.old_in_a_row = self.old_in_a_row.saturating_add(1);
            if self.old_in_a_row < self.max_packets || !self.buf.is_empty() {
                return if next - ext_seq <= HISTORY && self.was_released(ext_seq) {
                    self.duplicates += 1;
                    PushOutcome::Duplicate
                } else {
                    self.too_late += 1;
                    PushOutcome::TooLate
                };
            }
            // The sender restarted lower down: follow it.
            self.next = Some(ext_seq);
            self.released = [0; HISTORY_WORDS];
        } else if self.buf.contains_key(&ext_seq) {
            self.duplicates += 1;
            return PushOutcome::Duplicate;
        }
        self.old_in_a_row = 0;
        self.buf.insert(ext_seq, (now, item));
        if self.gap_at_front() {
            // Only a push into an empty buffer opens a gap at the front; otherwise the
            // deadline already set belongs to an earlier arrival.
            let deadline = self.deadline_from(now);
            self.gap_deadline.get_or_insert(deadline);
        } else {
            self.gap_deadline = None;
        }
        PushOutcome::Accepted
    }

    /// The next packet or loss report that can be released at `now`, in sequence order.
    pub fn pop(&mut self, now: Instant) -> Option<Released<T>> {
        self.pop_at(Some(now))
    }

    /// End of stream: everything buffered, in order, with the gaps reported as lost.
    pub fn drain(&mut self) -> Vec<Released<T>> {
        let mut out = Vec::with_capacity(self.buf.len());
        while let Some(released) = self.pop_at(None) {
            out.push(released);
        }
        out
    }

    /// When [`ReorderBuffer::pop`] can next release something because a gap (or the
    /// start-up hold) times out; `None` when nothing waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.start_deadline.or(self.gap_deadline)
    }

    /// While a gap waits at the front: the arrival of the first packet waiting behind it (when
    /// the gap became visible). `None` when nothing is missing.
    pub fn gap_since(&self) -> Option<Instant> {
        self.gap_deadline?;
        self.buf.first_key_value().map(|(_, (arrival, _))| *arrival)
    }

    /// Sequence numbers given up as lost so far (a packet arriving after that is still
    /// counted here, and as too late).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Duplicate packets discarded so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Packets discarded because they came after their slot was given up.
    pub fn too_late(&self) -> u64 {
        self.too_late
    }

    /// Packets currently buffered.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Releases the front; `now == None` forces gaps to be given up (drain).
    fn pop_at(&mut self, now: Option<Instant>) -> Option<Released<T>> {
        let next = self.next?;
        let first = *self.buf.first_key_value()?.0;
        if !self.started {
            let hold = now.is_some_and(|now| {
                self.buf.len() < self.max_packets
                    && self.start_deadline.is_some_and(|deadline| now < deadline)
            });
            if hold {
                return None;
            }
            self.started = true;
            self.start_deadline = None;
        }
        if first == next {
            let (_, item) = self.buf.pop_first()?.1;
            self.set_released(first, true);
            self.next = Some(first.saturating_add(1));
            self.refresh_deadline();
            return Some(Released::Packet {
                ext_seq: first,
                item,
            });
        }
        // Keys are never below `next`, and `first != next` here.
        let count = first - next;
        let give_up = match now {
            None => true,
            Some(now) => {
                self.buf.len() >= self.max_packets
                    || count >= self.max_packets as u64
                    || self.gap_deadline.is_some_and(|deadline| now >= deadline)
            }
        };
        if !give_up {
            return None;
        }
        for seq in next.max(first.saturating_sub(HISTORY))..first {
            self.set_released(seq, false);
        }
        self.lost = self.lost.saturating_add(count);
        self.next = Some(first);
        self.gap_deadline = None;
        Some(Released::Lost {
            from_seq: next,
            count,
        })
    }

    /// True when something is buffered but the next expected packet is missing.
    fn gap_at_front(&self) -> bool {
        match (self.next, self.buf.first_key_value()) {
            (Some(next), Some((&first, _))) => first > next,
            _ => false,
        }
    }

    /// Sets the deadline of a gap now at the front from its earliest arrival behind it.
    fn refresh_deadline(&mut self) {
        self.gap_deadline = if self.gap_at_front() {
            self.buf
                .values()
                .map(|(arrival, _)| *arrival)
                .min()
                .map(|earliest| self.deadline_from(earliest))
        } else {
            None
        };
    }

    fn deadline_from(&self, arrival: Instant) -> Instant {
        // The delay is capped, so this only falls back for an absurd `arrival`.
        arrival.checked_add(self.max_delay).unwrap_or(arrival)
    }

    fn set_released(&mut self, seq: u64, released: bool) {
        let bit = seq % HISTORY;
        let word = &mut self.released[(bit / 64) as usize];
        if released {
            *word |= 1 << (bit % 64);
        } else {
            *word &= !(1 << (bit % 64));
        }
    }

    fn was_released(&self, seq: u64) -> bool {
        let bit = seq % HISTORY;
        self.released[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn pop_all<T>(buf: &mut ReorderBuffer<T>, now: Instant) -> Vec<Released<T>> {
        std::iter::from_fn(|| buf.pop(now)).collect()
    }

    fn packets<T: Clone>(released: &[Released<T>]) -> Vec<T> {
        released
            .iter()
            .filter_map(|r| match r {
                Released::Packet { item, .. } => Some(item.clone()),
                Released::Lost { .. } => None,
            })
            .collect()
    }

    #[test]
    fn seq_unwrap_across_wrap_with_reordering() {
        let mut u = SeqUnwrapper::new();
        let base = u.unwrap(65530);
        assert_eq!(base, (1 << 32) + 65530);
        // Reordered around the wrap: 65532, 65531, 1, 65535, 0, 2, 65534, 3.
        let order = [65532u16, 65531, 1, 65535, 0, 2, 65534, 3];
        let expect = [2u64, 1, 7, 5, 6, 8, 4, 9];
        for (seq, off) in order.iter().zip(expect) {
            assert_eq!(u.unwrap(*seq), base + off, "seq {seq}");
        }
        // Several full wraps in steps.
        let mut seq = 3u16;
        let mut ext = base + 9;
        for _ in 0..10_000 {
            seq = seq.wrapping_add(100);
            ext += 100;
            assert_eq!(u.unwrap(seq), ext);
        }
        // A late packet from just before the first never underflows.
        let mut u = SeqUnwrapper::new();
        let first = u.unwrap(0);
        assert_eq!(u.unwrap(65535), first - 1);
        assert_eq!(u.unwrap(32768), first - 32768);
    }

    #[test]
    fn ts_unwrap_across_wrap_with_reordering() {
        let mut u = TsUnwrapper::new();
        let start = u32::MAX - 3000;
        let base = u.unwrap(start);
        assert_eq!(base, (1 << 32) + u64::from(start));
        // 90 kHz frames at 30 fps, neighbours swapped around the wrap.
        let ts: Vec<u32> = (0..10u32).map(|i| start.wrapping_add(i * 3000)).collect();
        for pair in ts.chunks(2) {
            for &t in pair.iter().rev() {
                let off = u64::from(t.wrapping_sub(start));
                assert_eq!(u.unwrap(t), base + off);
            }
        }
        // Before the first: smaller, no underflow.
        assert_eq!(u.unwrap(start.wrapping_sub(90_000)), base - 90_000);
        // Long run across many wraps.
        let mut t = start;
        let mut ext = base;
        for _ in 0..100_000 {
            t = t.wrapping_add(1 << 20);
            ext += 1 << 20;
            assert_eq!(u.unwrap(t), ext);
        }
        let mut u = TsUnwrapper::new();
        let first = u.unwrap(5);
        assert_eq!(u.unwrap(u32::MAX), first - 6);
    }

    /// A buffer whose start-up hold is over: `first` was pushed and released.
    /// Returns it and the time it was released at.
    fn started<T>(max_packets: usize, first: u64, item: T) -> (ReorderBuffer<T>, Instant) {
        let t = Instant::now();
        let mut b = ReorderBuffer::new(100 * MS, max_packets);
        assert_eq!(b.push(first, item, t), PushOutcome::Accepted);
        let t0 = t + 100 * MS;
        assert!(matches!(b.pop(t0), Some(Released::Packet { ext_seq, .. }) if ext_seq == first));
        assert!(b.pop(t0).is_none());
        (b, t0)
    }

    #[test]
    fn first_packet_is_held_for_reordering_around_it() {
        let t = Instant::now();
        let mut b = ReorderBuffer::new(100 * MS, 64);
        b.push(12, 12, t);
        b.push(11, 11, t + MS);
        b.push(14, 14, t + 2 * MS);
        b.push(10, 10, t + 3 * MS);
        // The start-up hold is START_HOLD (shorter than max_delay)...
        assert_eq!(b.pop(t + START_HOLD - MS), None);
        assert_eq!(b.next_deadline(), Some(t + START_HOLD));
        let out = pop_all(&mut b, t + START_HOLD);
        assert_eq!(packets(&out), vec![10, 11, 12]);
        // ...while a gap after it still waits max_delay from the arrival behind it.
        assert_eq!(b.next_deadline(), Some(t + 102 * MS));
        b.push(13, 13, t + 99 * MS);
        let out = pop_all(&mut b, t + 99 * MS);
        assert_eq!(packets(&out), vec![13, 14]);
        assert_eq!(out.len(), 2);
        // Once started, a packet before the first is too late.
        assert_eq!(b.push(9, 9, t + 100 * MS), PushOutcome::TooLate);
        // The hold also ends once max_packets are buffered.
        let mut b = ReorderBuffer::new(100 * MS, 4);
        for s in 0..3u64 {
            b.push(s, s, t);
            assert_eq!(b.pop(t), None);
        }
        b.push(3, 3, t);
        assert_eq!(packets(&pop_all(&mut b, t)), vec![0, 1, 2, 3]);
    }

    #[test]
    fn in_order_pass_through() {
        let (mut b, now) = started(64, 9, 9);
        for s in 10..20u64 {
            assert_eq!(b.push(s, s, now), PushOutcome::Accepted);
            assert_eq!(
                b.pop(now),
                Some(Released::Packet {
                    ext_seq: s,
                    item: s
                })
            );
            assert_eq!(b.pop(now), None);
            assert_eq!(b.next_deadline(), None);
        }
        assert_eq!((b.lost(), b.duplicates(), b.too_late()), (0, 0, 0));
    }

    #[test]
    fn reordered_come_out_ordered_and_gap_filled_in_time() {
        let (mut b, t0) = started(64, 0, 0);
        let mut out = Vec::new();
        for (i, s) in [1u64, 3, 2, 5, 4, 6, 9, 7, 8].into_iter().enumerate() {
            let now = t0 + MS * i as u32;
            assert_eq!(b.push(s, s, now), PushOutcome::Accepted);
            out.extend(pop_all(&mut b, now));
        }
        assert_eq!(packets(&out), (1..=9).collect::<Vec<_>>());
        assert_eq!(out.len(), 9);
        assert_eq!(b.lost(), 0);

        // A gap resolved just before the deadline.
        b.push(11, 11, t0);
        assert_eq!(b.pop(t0), None);
        assert_eq!(b.next_deadline(), Some(t0 + 100 * MS));
        assert_eq!(b.pop(t0 + 99 * MS), None);
        b.push(10, 10, t0 + 99 * MS);
        let out = pop_all(&mut b, t0 + 99 * MS);
        assert_eq!(packets(&out), vec![10, 11]);
        assert_eq!(b.next_deadline(), None);
        assert_eq!(b.lost(), 0);
    }

    #[test]
    fn gap_given_up_after_max_delay() {
        let (mut b, t0) = started(64, 1, 1);
        // 2 and 3 missing; 5 missing too.
        b.push(4, 4, t0 + 10 * MS);
        b.push(6, 6, t0 + 20 * MS);
        assert_eq!(b.pop(t0 + 50 * MS), None);
        assert_eq!(b.next_deadline(), Some(t0 + 110 * MS));
        assert_eq!(b.pop(t0 + 109 * MS), None);
        let out = pop_all(&mut b, t0 + 110 * MS);
        // The second gap's first later packet (6) arrived at 20 ms: still waiting.
        assert_eq!(
            out,
            vec![
                Released::Lost {
                    from_seq: 2,
                    count: 2
                },
                Released::Packet {
                    ext_seq: 4,
                    item: 4
                }
            ]
        );
        assert_eq!(b.next_deadline(), Some(t0 + 120 * MS));
        let out = pop_all(&mut b, t0 + 120 * MS);
        assert_eq!(
            out,
            vec![
                Released::Lost {
                    from_seq: 5,
                    count: 1
                },
                Released::Packet {
                    ext_seq: 6,
                    item: 6
                }
            ]
        );
        assert_eq!(b.lost(), 3);
        // The lost ones arriving now are too late.
        assert_eq!(b.push(2, 2, t0 + 130 * MS), PushOutcome::TooLate);
        assert_eq!(b.push(5, 5, t0 + 130 * MS), PushOutcome::TooLate);
        assert_eq!(b.too_late(), 2);
    }

    #[test]
    fn gap_given_up_when_max_packets_buffered() {
        let (mut b, t0) = started(8, 0, 0);
        for s in 2..9u64 {
            b.push(s, s, t0);
            assert_eq!(b.pop(t0), None, "7 behind the gap are held");
        }
        b.push(9, 9, t0);
        let out = pop_all(&mut b, t0);
        assert_eq!(
            out[0],
            Released::Lost {
                from_seq: 1,
                count: 1
            }
        );
        assert_eq!(packets(&out), (2..10).collect::<Vec<_>>());
        assert_eq!(b.buffered(), 0);
    }

    #[test]
    fn duplicates_and_too_late() {
        let (mut b, t0) = started(64, 100, 'a');
        b.push(102, 'c', t0);
        assert_eq!(b.push(102, 'x', t0), PushOutcome::Duplicate);
        assert_eq!(b.push(100, 'x', t0), PushOutcome::Duplicate);
        pop_all(&mut b, t0 + 200 * MS);
        assert_eq!(b.push(101, 'x', t0), PushOutcome::TooLate);
        assert_eq!(b.push(102, 'x', t0), PushOutcome::Duplicate);
        assert_eq!(b.push(5, 'x', t0), PushOutcome::TooLate);
        assert_eq!((b.duplicates(), b.too_late(), b.lost()), (3, 2, 1));
    }

    #[test]
    fn huge_jump_is_a_big_loss_without_allocation() {
        let (mut b, t0) = started(64, 1000, 0u32);
        assert_eq!(b.push(31_000, 1, t0), PushOutcome::Accepted);
        assert_eq!(b.buffered(), 1);
        let out = pop_all(&mut b, t0);
        assert_eq!(
            out,
            vec![
                Released::Lost {
                    from_seq: 1001,
                    count: 29_999
                },
                Released::Packet {
                    ext_seq: 31_000,
                    item: 1
                }
            ]
        );
        // A jump to the far end of u64 is just as harmless.
        b.push(u64::MAX, 2, t0);
        assert_eq!(pop_all(&mut b, t0).len(), 2);
        assert_eq!(b.push(u64::MAX, 3, t0), PushOutcome::Accepted);
        assert_eq!(pop_all(&mut b, t0).len(), 1);
        assert_eq!(b.buffered(), 0);
    }

    #[test]
    fn restart_lower_down_resynchronises() {
        let (mut b, t0) = started(16, 5000, 5000);
        for s in 5001..5010u64 {
            b.push(s, s, t0);
            pop_all(&mut b, t0);
        }
        let mut accepted = Vec::new();
        for s in 100..200u64 {
            if b.push(s, s, t0) == PushOutcome::Accepted {
                accepted.extend(packets(&pop_all(&mut b, t0)));
            }
        }
        assert_eq!(accepted, (115..200).collect::<Vec<_>>());
        assert_eq!(b.too_late(), 15);
    }

    #[test]
    fn drain_releases_everything_in_order() {
        let t0 = Instant::now();
        let mut b = ReorderBuffer::new(100 * MS, 64);
        b.push(1, 1, t0);
        b.push(4, 4, t0);
        b.push(3, 3, t0);
        b.push(7, 7, t0);
        let out = b.drain();
        assert_eq!(
            out,
            vec![
                Released::Packet {
                    ext_seq: 1,
                    item: 1
                },
                Released::Lost {
                    from_seq: 2,
                    count: 1
                },
                Released::Packet {
                    ext_seq: 3,
                    item: 3
                },
                Released::Packet {
                    ext_seq: 4,
                    item: 4
                },
                Released::Lost {
                    from_seq: 5,
                    count: 2
                },
                Released::Packet {
                    ext_seq: 7,
                    item: 7
                },
            ]
        );
        assert_eq!(b.next_deadline(), None);
        assert_eq!(b.push(8, 8, t0), PushOutcome::Accepted);
        assert_eq!(packets(&pop_all(&mut b, t0)), vec![8]);
    }

    #[test]
    fn random_input_stays_bounded() {
        let t0 = Instant::now();
        let mut b = ReorderBuffer::new(50 * MS, 32);
        let mut u = SeqUnwrapper::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let now = t0 + Duration::from_micros(u64::from(i) * 100);
            let ext = if x & 0x100_0000 == 0 {
                u.unwrap(x as u16)
            } else {
                x >> 1
            };
            b.push(ext, i, now);
            while b.pop(now).is_some() {}
            assert!(b.buffered() <= 32);
        }
    }
}
