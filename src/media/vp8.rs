//! VP8 frame assembly from RTP packets (RFC 7741).
//!
//! Packets go through a [`ReorderBuffer`]; frames come out in order, complete and
//! decodable, or not at all. A frame is every packet with one RTP timestamp, from the
//! packet with S=1 and PID=0 to the packet with the marker bit, with no sequence number
//! missing in between. After a loss or a corrupt frame every later frame is dropped until
//! the next keyframe (an inter frame would decode corrupt), and
//! [`Vp8Event::KeyframeNeeded`] tells the caller to send a PLI.
//!
//! The payload descriptor is parsed here, from scratch for every packet, rather than with
//! `rtc::rtp::codec::vp8::Vp8Packet`: that depacketizer refuses every payload under 4
//! bytes (a valid last fragment of a frame can be 2 bytes: a 1-byte descriptor and 1 byte
//! of data), and it keeps its I/L/T/K bits from the previous packet when X=0, so a reused
//! instance misparses.
//!
//! Pure logic: no clock reads (time is passed in as `now`), no I/O.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::rtp::{Released, ReorderBuffer, SeqUnwrapper, TsUnwrapper};

/// A frame growing beyond this many bytes is dropped as corrupt (it also bounds memory
/// under an endless run of packets without a marker).
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// Packets the reorder buffer may hold behind a gap (about a second of 5 Mbit/s video).
const REORDER_MAX_PACKETS: usize = 512;

/// One complete VP8 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vp8Frame {
    /// Extended RTP timestamp (90 kHz; see [`TsUnwrapper`]: the first timestamp seen maps
    /// to `2^32 + ts`, and the low 32 bits are always the RTP timestamp).
    pub rtp_ts: u64,
    /// The VP8 bitstream frame, payload descriptors stripped.
    pub data: Bytes,
    /// A keyframe (P bit of the frame tag clear).
    pub keyframe: bool,
    /// Width and height from the keyframe header (14 bits each); `None` for inter frames.
    pub size: Option<(u16, u16)>,
    /// RTP packets the frame came in.
    pub packets: u32,
    /// Arrival time of the earliest of its packets.
    pub first_arrival: Instant,
}

/// Why a keyframe is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeReason {
    /// Packets were lost beyond what the reorder window (and NACK) recovered.
    PacketLoss,
    /// A payload or frame was malformed (bad descriptor, frame tag, keyframe header, a
    /// frame without its marker).
    Corrupt,
    /// A frame grew beyond [`MAX_FRAME_BYTES`].
    TooLarge,
}

/// What [`Vp8Assembler::poll`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vp8Event {
    /// The next complete, decodable frame.
    Frame(Vp8Frame),
    /// A frame could not be completed (packets lost beyond the reorder window) or arrived
    /// corrupt: the caller should send a PLI (rate-limiting them is the caller's job).
    /// Frames are dropped from here until the next keyframe; emitted once per such event,
    /// and never before the first keyframe.
    KeyframeNeeded {
        /// What went wrong.
        reason: KeyframeReason,
    },
}

/// Counters of a [`Vp8Assembler`] (for the manifest and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vp8Stats {
    /// RTP packets pushed (duplicates and padding included).
    pub packets: u64,
    /// Sequence numbers given up as lost by the reorder buffer (never recovered). A big
    /// sequence jump counts in full.
    pub packets_lost: u64,
    /// Duplicate packets discarded.
    pub duplicates: u64,
    /// Packets discarded because they arrived after their slot was given up.
    pub too_late: u64,
    /// Frames emitted.
    pub frames_emitted: u64,
    /// Keyframes among them.
    pub keyframes: u64,
    /// Frames seen (at least one packet) but not emitted: incomplete, corrupt, before the
    /// first keyframe, or after a loss before the next keyframe.
    pub frames_dropped: u64,
    /// Bytes of emitted frame data.
    pub bytes: u64,
}

/// PictureID from the payload descriptor: 7 or 15 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PictureId {
    value: u16,
    long: bool,
}

impl PictureId {
    /// True if `self` is the picture right after `prev`.
    fn follows(self, prev: PictureId) -> bool {
        let mask = if self.long { 0x7fff } else { 0x7f };
        self.long == prev.long && self.value == prev.value.wrapping_add(1) & mask
    }
}

/// What the payload descriptor says about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Descriptor {
    /// S=1 and PID=0: the first packet of a frame.
    frame_start: bool,
    picture_id: Option<PictureId>,
}

/// Whether an RTP payload is the first packet of a VP8 keyframe (S=1, PID=0, and the frame
/// tag's P bit clear). Never panics, whatever the bytes.
pub fn payload_starts_keyframe(payload: &[u8]) -> bool {
    parse_descriptor(payload)
        .is_some_and(|(d, data)| d.frame_start && data.first().is_some_and(|b| b & 0x01 == 0))
}

/// Parses the RFC 7741 payload descriptor; returns it with the VP8 data after it, or
/// `None` if the descriptor runs past the payload or no data follows.
fn parse_descriptor(payload: &[u8]) -> Option<(Descriptor, &[u8])> {
    let (&b0, mut rest) = payload.split_first()?;
    let mut picture_id = None;
    if b0 & 0x80 != 0 {
        // X: |I|L|T|K| RSV |
        let (&x, r) = rest.split_first()?;
        rest = r;
        if x & 0x80 != 0 {
            // I: |M| PictureID (7 or 15 bits) |
            let (&m, r) = rest.split_first()?;
            rest = r;
            picture_id = Some(if m & 0x80 != 0 {
                let (&low, r) = rest.split_first()?;
                rest = r;
                PictureId {
                    value: u16::from(m & 0x7f) << 8 | u16::from(low),
                    long: true,
                }
            } else {
                PictureId {
                    value: u16::from(m),
                    long: false,
                }
            });
        }
        if x & 0x40 != 0 {
            // L: TL0PICIDX
            rest = rest.get(1..)?;
        }
        if x & 0x30 != 0 {
            // T or K: |TID|Y| KEYIDX |
            rest = rest.get(1..)?;
        }
    }
    if rest.is_empty() {
        return None;
    }
    let descriptor = Descriptor {
        frame_start: b0 & 0x10 != 0 && b0 & 0x07 == 0,
        picture_id,
    };
    Some((descriptor, rest))
}

/// What the frame header says, if it is plausible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameInfo {
    keyframe: bool,
    size: Option<(u16, u16)>,
}

/// Checks the frame tag (RFC 6386 §9.1) and, for a keyframe, the start code and size.
fn inspect_frame(data: &[u8]) -> Option<FrameInfo> {
    let tag = data.get(..3)?;
    let raw = u32::from(tag[0]) | u32::from(tag[1]) << 8 | u32::from(tag[2]) << 16;
    let keyframe = raw & 1 == 0;
    let version = (raw >> 1) & 7;
    let first_partition = (raw >> 5) as usize;
    let header_len = if keyframe { 10 } else { 3 };
    if version > 3 || first_partition > data.len().checked_sub(header_len)? {
        return None;
    }
    if !keyframe {
        return Some(FrameInfo {
            keyframe,
            size: None,
        });
    }
    if data[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u16::from_le_bytes([data[6], data[7]]) & 0x3fff;
    let height = u16::from_le_bytes([data[8], data[9]]) & 0x3fff;
    if width == 0 || height == 0 {
        return None;
    }
    Some(FrameInfo {
        keyframe,
        size: Some((width, height)),
    })
}

/// A packet waiting in the reorder buffer.
#[derive(Debug)]
struct Packet {
    arrival: Instant,
    kind: PacketKind,
}

#[derive(Debug)]
enum PacketKind {
    /// Empty payload (RTP padding only): occupies a sequence number, carries nothing.
    Padding,
    /// Unparseable payload descriptor.
    Corrupt,
    /// VP8 data.
    Media {
        ts: u64,
        marker: bool,
        descriptor: Descriptor,
        data: Vec<u8>,
    },
}

/// The frame being assembled.
#[derive(Debug)]
struct Partial {
    ts: u64,
    /// Collected data; emptied once the frame is known to be unusable.
    data: Vec<u8>,
    /// The frame cannot be emitted (a packet missing, corrupt, too large).
    broken: bool,
    packets: u32,
    first_arrival: Instant,
    picture_id: Option<PictureId>,
}

impl Partial {
    fn break_off(&mut self) {
        self.broken = true;
        self.data = Vec::new();
    }
}

/// Turns RTP packets of one VP8 stream into complete frames, in order.
///
/// Use: [`Vp8Assembler::push`] each packet, then [`Vp8Assembler::poll`] until `None`; when
/// idle, poll again at [`Vp8Assembler::next_deadline`]; at the end of the stream,
/// [`Vp8Assembler::finish`]. Memory is bounded: at most 512 packets wait in the reorder
/// buffer, and a frame holds at most [`MAX_FRAME_BYTES`].
#[derive(Debug)]
pub struct Vp8Assembler {
    seq: SeqUnwrapper,
    ts: TsUnwrapper,
    reorder: ReorderBuffer<Packet>,
    /// Events ready for `poll` (at most a few: processing stops once one is queued).
    events: VecDeque<Vp8Event>,
    cur: Option<Partial>,
    /// Something was lost or corrupt since the last processed media packet.
    gap: Option<KeyframeReason>,
    /// Every frame since the last keyframe was emitted: inter frames are decodable.
    chain_ok: bool,
    /// A keyframe was emitted at some point.
    had_keyframe: bool,
    /// PictureID of the last frame whose marker was seen.
    last_picture_id: Option<PictureId>,
    /// The keyframe whose packets are arriving, watched at push time (before reordering).
    watch: Option<KeyframeWatch>,
    /// A keyframe was seen to arrive with a packet missing (see `take_keyframe_incomplete`).
    keyframe_incomplete: bool,
    stats: Vp8Stats,
}

/// Packets of one keyframe as they arrive.
#[derive(Debug)]
struct KeyframeWatch {
    ts: u32,
    first: u64,
    end: Option<u64>,
    got: u64,
}

impl Vp8Assembler {
    /// An assembler waiting at most `max_reorder_delay` for a missing packet.
    pub fn new(max_reorder_delay: Duration) -> Self {
        Self {
            seq: SeqUnwrapper::new(),
            ts: TsUnwrapper::new(),
            reorder: ReorderBuffer::new(max_reorder_delay, REORDER_MAX_PACKETS),
            events: VecDeque::new(),
            cur: None,
            gap: None,
            chain_ok: false,
            had_keyframe: false,
            last_picture_id: None,
            watch: None,
            keyframe_incomplete: false,
            stats: Vp8Stats::default(),
        }
    }

    /// Feeds one RTP packet that arrived at `now`: sequence number, timestamp, marker bit
    /// and payload (RTP padding already removed; an empty payload is taken as a padding
    /// packet). Never panics, whatever the payload.
    pub fn push(&mut self, seq: u16, ts: u32, marker: bool, payload: &[u8], now: Instant) {
        self.stats.packets += 1;
        let kind = if payload.is_empty() {
            PacketKind::Padding
        } else {
            match parse_descriptor(payload) {
                None => PacketKind::Corrupt,
                Some((descriptor, data)) => PacketKind::Media {
                    ts: self.ts.unwrap(ts),
                    marker,
                    descriptor,
                    data: data.to_vec(),
                },
            }
        };
        let ext_seq = self.seq.unwrap(seq);
        self.watch_keyframe(ext_seq, ts, marker, payload);
        let packet = Packet { arrival: now, kind };
        self.reorder.push(ext_seq, packet, now);
    }

    /// Follows a keyframe's packets as they arrive: once a later frame's packet comes, the
    /// keyframe is complete only if every sequence number from its start to its marker came.
    fn watch_keyframe(&mut self, ext_seq: u64, ts: u32, marker: bool, payload: &[u8]) {
        if let Some(w) = &mut self.watch {
            if ts == w.ts {
                w.got += 1;
                if marker {
                    w.end = Some(ext_seq);
                }
                if w.end
                    .is_some_and(|end| w.got == end.saturating_sub(w.first) + 1)
                {
                    self.watch = None;
                }
                return;
            }
            if ext_seq > w.first {
                // A later frame started while the keyframe lacks a packet (or its marker).
                self.keyframe_incomplete = true;
                self.watch = None;
            }
        }
        if payload_starts_keyframe(payload) {
            self.watch = Some(KeyframeWatch {
                ts,
                first: ext_seq,
                end: marker.then_some(ext_seq),
                got: 1,
            });
            if marker {
                self.watch = None;
            }
        }
    }

    /// Whether a keyframe was seen arriving with a packet missing since the last call (known
    /// as soon as the next frame's first packet arrives, long before the reorder window
    /// gives the packet up).
    pub fn take_keyframe_incomplete(&mut self) -> bool {
        std::mem::take(&mut self.keyframe_incomplete)
    }

    /// While packets are missing: when the gap became visible (its later packets arrived).
    pub fn gap_since(&self) -> Option<Instant> {
        self.reorder.gap_since()
    }

    /// The next event ready at `now`: frames in order, [`Vp8Event::KeyframeNeeded`] where
    /// the stream broke. Gaps whose wait ran out by `now` are given up here.
    pub fn poll(&mut self, now: Instant) -> Option<Vp8Event> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            let released = self.reorder.pop(now)?;
            self.process(released);
        }
    }

    /// End of stream: every remaining complete, decodable frame, in order (only
    /// [`Vp8Event::Frame`] events; an unfinished frame is dropped). The assembler stays
    /// usable.
    pub fn finish(&mut self) -> Vec<Vp8Event> {
        for released in self.reorder.drain() {
            self.process(released);
        }
        if self.cur.take().is_some() {
            self.stats.frames_dropped += 1;
        }
        self.gap = None;
        self.events
            .drain(..)
            .filter(|event| matches!(event, Vp8Event::Frame(_)))
            .collect()
    }

    /// When [`Vp8Assembler::poll`] may next have something because a wait for a missing
    /// packet runs out (poll until `None` first).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.reorder.next_deadline()
    }

    /// True until a keyframe arrives, at the start and after a loss.
    pub fn waiting_for_keyframe(&self) -> bool {
        !self.chain_ok
    }

    /// Packets lost so far (never recovered): [`Vp8Stats::packets_lost`].
    pub fn packets_lost(&self) -> u64 {
        self.stats.packets_lost
    }

    /// The counters so far.
    pub fn stats(&self) -> Vp8Stats {
        Vp8Stats {
            duplicates: self.reorder.duplicates(),
            too_late: self.reorder.too_late(),
            ..self.stats
        }
    }

    fn process(&mut self, released: Released<Packet>) {
        match released {
            Released::Lost { count, .. } => {
                self.stats.packets_lost = self.stats.packets_lost.saturating_add(count);
                self.gap = Some(KeyframeReason::PacketLoss);
            }
            Released::Packet { item, .. } => match item.kind {
                PacketKind::Padding => {}
                PacketKind::Corrupt => self.gap = Some(KeyframeReason::Corrupt),
                PacketKind::Media {
                    ts,
                    marker,
                    descriptor,
                    data,
                } => self.media(ts, marker, descriptor, data, item.arrival),
            },
        }
    }

    fn media(
        &mut self,
        ts: u64,
        marker: bool,
        descriptor: Descriptor,
        data: Vec<u8>,
        arrival: Instant,
    ) {
        let gap = self.gap.take();
        if let Some(reason) = gap {
            // Something is missing right before this packet. Harmless only between two
            // frames whose PictureIDs show nothing was skipped (lost padding).
            let between_frames = self.cur.is_none() && descriptor.frame_start;
            let consecutive = match (self.last_picture_id, descriptor.picture_id) {
                (Some(prev), Some(this)) => this.follows(prev),
                _ => false,
            };
            if let Some(cur) = &mut self.cur {
                cur.break_off();
            }
            if !(between_frames && consecutive) {
                self.damage(reason);
            }
        }

        if let Some(cur) = &mut self.cur {
            if cur.ts != ts {
                // The frame ended without its marker.
                let was_broken = cur.broken;
                self.cur = None;
                self.stats.frames_dropped += 1;
                if !was_broken {
                    self.damage(KeyframeReason::Corrupt);
                }
            } else if descriptor.frame_start && !cur.broken {
                // A second frame start within one frame.
                cur.break_off();
                self.damage(KeyframeReason::Corrupt);
            }
        }

        let cur = match &mut self.cur {
            Some(cur) => cur,
            None => {
                if !descriptor.frame_start && gap.is_none() {
                    // A continuation with nothing lost before it: only possible at the
                    // very start of the stream, or from a broken sender.
                    self.damage(KeyframeReason::Corrupt);
                }
                self.cur.insert(Partial {
                    ts,
                    data: Vec::new(),
                    broken: !descriptor.frame_start,
                    packets: 0,
                    first_arrival: arrival,
                    picture_id: descriptor.picture_id,
                })
            }
        };
        cur.packets = cur.packets.saturating_add(1);
        cur.first_arrival = cur.first_arrival.min(arrival);
        let mut too_large = false;
        if !cur.broken {
            if cur.data.len().saturating_add(data.len()) > MAX_FRAME_BYTES {
                cur.break_off();
                too_large = true;
            } else if cur.data.is_empty() {
                cur.data = data;
            } else {
                cur.data.extend_from_slice(&data);
            }
        }
        if too_large {
            self.damage(KeyframeReason::TooLarge);
        }
        if marker {
            if let Some(done) = self.cur.take() {
                self.last_picture_id = done.picture_id;
                self.complete(done);
            }
        }
    }

    /// A frame got its marker: emit it if it is whole, plausible and decodable.
    fn complete(&mut self, frame: Partial) {
        if frame.broken {
            self.stats.frames_dropped += 1;
            return;
        }
        let Some(info) = inspect_frame(&frame.data) else {
            self.stats.frames_dropped += 1;
            self.damage(KeyframeReason::Corrupt);
            return;
        };
        if info.keyframe {
            self.chain_ok = true;
            self.had_keyframe = true;
        } else if !self.chain_ok {
            self.stats.frames_dropped += 1;
            return;
        }
        self.stats.frames_emitted += 1;
        self.stats.keyframes += u64::from(info.keyframe);
        self.stats.bytes += frame.data.len() as u64;
        self.events.push_back(Vp8Event::Frame(Vp8Frame {
            rtp_ts: frame.ts,
            data: Bytes::from(frame.data),
            keyframe: info.keyframe,
            size: info.size,
            packets: frame.packets,
            first_arrival: frame.first_arrival,
        }));
    }

    /// The decoding chain broke: drop inter frames until a keyframe; ask for one (not
    /// before the first keyframe, and not twice in a row without a poll in between).
    fn damage(&mut self, reason: KeyframeReason) {
        self.chain_ok = false;
        if self.had_keyframe && !matches!(self.events.back(), Some(Vp8Event::KeyframeNeeded { .. }))
        {
            self.events.push_back(Vp8Event::KeyframeNeeded { reason });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ivf::IvfReader;
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    /// 90 kHz ticks per frame at 30 fps.
    const TICKS: u32 = 3000;

    /// Deterministic xorshift PRNG.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn read_frames(name: &str) -> Vec<Vec<u8>> {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        let file = std::fs::File::open(path).unwrap();
        let (mut reader, _) = IvfReader::new(std::io::BufReader::new(file)).unwrap();
        std::iter::from_fn(|| reader.next_frame().unwrap())
            .map(|f| f.data)
            .collect()
    }

    #[derive(Debug, Clone)]
    struct TestPacket {
        seq: u16,
        ts: u32,
        marker: bool,
        payload: Vec<u8>,
    }

    #[derive(Debug, Clone, Copy)]
    enum Desc {
        /// The 1-byte descriptor.
        Simple,
        /// X with I (15-bit PictureID) on even frames; I, L, T and K on odd ones.
        Extended,
    }

    /// RFC 7741 packetization: `mtu` bytes of VP8 data per packet, the marker on the last;
    /// with `tiny_tail` the last byte of each frame goes alone in its own packet.
    fn packetize(
        frames: &[Vec<u8>],
        seq0: u16,
        ts0: u32,
        desc: Desc,
        mtu: usize,
        tiny_tail: bool,
    ) -> Vec<TestPacket> {
        let mut out = Vec::new();
        let mut seq = seq0;
        for (i, frame) in frames.iter().enumerate() {
            let picture_id = (i as u16).wrapping_add(32_700) & 0x7fff;
            let (body, tail) = if tiny_tail {
                frame.split_at(frame.len() - 1)
            } else {
                (&frame[..], &[][..])
            };
            let mut chunks: Vec<&[u8]> = body.chunks(mtu).collect();
            if tiny_tail {
                chunks.push(tail);
            }
            let n = chunks.len();
            for (k, chunk) in chunks.into_iter().enumerate() {
                let s = if k == 0 { 0x10 } else { 0 };
                let mut payload = match desc {
                    Desc::Simple => vec![s],
                    Desc::Extended if i % 2 == 0 => vec![
                        0x80 | s,
                        0x80,
                        0x80 | (picture_id >> 8) as u8,
                        picture_id as u8,
                    ],
                    Desc::Extended => vec![
                        0x80 | s,
                        0xf0,
                        0x80 | (picture_id >> 8) as u8,
                        picture_id as u8,
                        i as u8,
                        0x40 | (i % 32) as u8,
                    ],
                };
                payload.extend_from_slice(chunk);
                out.push(TestPacket {
                    seq,
                    ts: ts0.wrapping_add(i as u32 * TICKS),
                    marker: k + 1 == n,
                    payload,
                });
                seq = seq.wrapping_add(1);
            }
        }
        out
    }

    /// Feeds packets 1 ms apart, polling after each; then polls at the deadlines, then
    /// finishes. Returns every event and the assembler.
    fn run(packets: &[TestPacket]) -> (Vec<Vp8Event>, Vp8Assembler) {
        let t0 = Instant::now();
        let mut a = Vp8Assembler::new(50 * MS);
        let mut events = Vec::new();
        let mut now = t0;
        for (i, p) in packets.iter().enumerate() {
            now = t0 + MS * i as u32;
            a.push(p.seq, p.ts, p.marker, &p.payload, now);
            events.extend(std::iter::from_fn(|| a.poll(now)));
            assert!(a.reorder.buffered() <= REORDER_MAX_PACKETS);
        }
        while let Some(deadline) = a.next_deadline() {
            assert!(deadline >= now);
            now = deadline;
            events.extend(std::iter::from_fn(|| a.poll(now)));
        }
        events.extend(a.finish());
        (events, a)
    }

    fn frames_of(events: &[Vp8Event]) -> Vec<&Vp8Frame> {
        events
            .iter()
            .filter_map(|e| match e {
                Vp8Event::Frame(f) => Some(f),
                Vp8Event::KeyframeNeeded { .. } => None,
            })
            .collect()
    }

    fn keyframe_requests(events: &[Vp8Event]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, Vp8Event::KeyframeNeeded { .. }))
            .count()
    }

    /// Checks the emitted frames are exactly `expect` (indices into `frames`), each
    /// byte-identical with the right flags, timestamps and size.
    fn check_frames(events: &[Vp8Event], frames: &[Vec<u8>], ts0: u32, expect: &[usize]) {
        let got = frames_of(events);
        let indices: Vec<usize> = got
            .iter()
            .map(|f| ((f.rtp_ts as u32).wrapping_sub(ts0) / TICKS) as usize)
            .collect();
        assert_eq!(indices, expect);
        for (f, &i) in got.iter().zip(expect) {
            assert_eq!(f.data, frames[i], "frame {i}");
            assert_eq!(f.keyframe, i % 30 == 0, "frame {i}");
            assert_eq!(f.size, f.keyframe.then_some((320, 240)), "frame {i}");
            assert!(f.packets >= 1);
        }
        for pair in got.windows(2) {
            assert!(pair[1].rtp_ts > pair[0].rtp_ts);
            assert_eq!((pair[1].rtp_ts - pair[0].rtp_ts) % u64::from(TICKS), 0);
        }
    }

    const SEQ0: u16 = 65_500;
    const TS0: u32 = u32::MAX - 7 * TICKS;

    #[test]
    fn in_order_frames_come_out_identical() {
        let frames = read_frames("clip.ivf");
        assert_eq!(frames.len(), 150);
        let all: Vec<usize> = (0..150).collect();
        for (desc, mtu, tiny_tail) in [
            (Desc::Simple, 1000, false),
            (Desc::Extended, 1000, false),
            (Desc::Simple, 300, true),
            (Desc::Extended, 1200, true),
        ] {
            let packets = packetize(&frames, SEQ0, TS0, desc, mtu, tiny_tail);
            let (events, a) = run(&packets);
            check_frames(&events, &frames, TS0, &all);
            assert_eq!(keyframe_requests(&events), 0);
            let s = a.stats();
            assert_eq!(s.packets, packets.len() as u64);
            assert_eq!(
                (s.frames_emitted, s.keyframes, s.frames_dropped),
                (150, 5, 0)
            );
            assert_eq!((s.packets_lost, s.duplicates, s.too_late), (0, 0, 0));
            let total: usize = frames.iter().map(Vec::len).sum();
            assert_eq!(s.bytes, total as u64);
            assert!(!a.waiting_for_keyframe());
        }
        // Extended timestamps run on across the 32-bit wrap.
        let packets = packetize(&frames, SEQ0, TS0, Desc::Simple, 1000, false);
        let (events, _) = run(&packets);
        let first = frames_of(&events)[0].rtp_ts;
        assert_eq!(first, (1 << 32) + u64::from(TS0));
        assert_eq!(
            frames_of(&events)[149].rtp_ts,
            first + 149 * u64::from(TICKS)
        );
    }

    #[test]
    fn reordered_frames_come_out_identical() {
        let frames = read_frames("clip.ivf");
        let all: Vec<usize> = (0..150).collect();
        let packets = packetize(&frames, SEQ0, TS0, Desc::Extended, 1000, false);
        // Neighbours swapped.
        let mut swapped = packets.clone();
        for pair in swapped.chunks_mut(2) {
            pair.reverse();
        }
        // Shuffled within windows of 5.
        let mut rng = Rng(0x5eed);
        let mut shuffled = packets.clone();
        for window in shuffled.chunks_mut(5) {
            for i in (1..window.len()).rev() {
                window.swap(i, rng.below(i + 1));
            }
        }
        for order in [swapped, shuffled] {
            let (events, a) = run(&order);
            check_frames(&events, &frames, TS0, &all);
            assert_eq!(keyframe_requests(&events), 0);
            assert_eq!(a.stats().packets_lost, 0);
        }
    }

    #[test]
    fn duplicates_are_harmless() {
        let frames = read_frames("clip.ivf");
        let packets = packetize(&frames, SEQ0, TS0, Desc::Simple, 1000, false);
        let doubled: Vec<TestPacket> = packets
            .iter()
            .flat_map(|p| [p.clone(), p.clone()])
            .collect();
        let (events, a) = run(&doubled);
        check_frames(&events, &frames, TS0, &(0..150).collect::<Vec<_>>());
        assert_eq!(a.stats().duplicates, packets.len() as u64);
    }

    /// Frame indices expected after losing `dropped` packets: a frame comes out if all its
    /// packets arrived and so did every frame back to the last keyframe.
    fn expected_after_loss(packets: &[TestPacket], dropped: &[bool], ts0: u32) -> Vec<usize> {
        let mut intact = [true; 150];
        for (p, &d) in packets.iter().zip(dropped) {
            if d {
                intact[(p.ts.wrapping_sub(ts0) / TICKS) as usize] = false;
            }
        }
        let mut chain = false;
        let mut out = Vec::new();
        for (i, &ok) in intact.iter().enumerate() {
            chain = ok && (i % 30 == 0 || chain);
            if chain {
                out.push(i);
            }
        }
        out
    }

    #[test]
    fn loss_drops_frames_until_next_keyframe() {
        let frames = read_frames("clip.ivf");
        for (seed, desc) in [(1u64, Desc::Simple), (2, Desc::Extended), (3, Desc::Simple)] {
            let packets = packetize(&frames, SEQ0, TS0, desc, 1000, false);
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut dropped: Vec<bool> = packets.iter().map(|_| rng.below(100) < 5).collect();
            // Keep the first and last packets so every loss is between two arrivals.
            dropped[0] = false;
            let last = dropped.len() - 1;
            dropped[last] = false;
            let kept: Vec<TestPacket> = packets
                .iter()
                .zip(&dropped)
                .filter(|(_, &d)| !d)
                .map(|(p, _)| p.clone())
                .collect();
            let (events, a) = run(&kept);
            let expect = expected_after_loss(&packets, &dropped, TS0);
            assert!(expect.len() < 150 && !expect.is_empty(), "seed {seed}");
            check_frames(&events, &frames, TS0, &expect);
            assert!(keyframe_requests(&events) >= 1);
            // After a request, the next frame out is a keyframe.
            let mut requested = false;
            for e in &events {
                match e {
                    Vp8Event::KeyframeNeeded { .. } => requested = true,
                    Vp8Event::Frame(f) => {
                        assert!(!requested || f.keyframe);
                        requested = false;
                    }
                }
            }
            let s = a.stats();
            let lost = dropped.iter().filter(|&&d| d).count() as u64;
            assert_eq!(s.packets_lost, lost);
            assert_eq!(a.packets_lost(), lost);
            assert_eq!(s.frames_emitted, expect.len() as u64);
            // Frames lost whole were never seen, so not counted as dropped.
            assert!(s.frames_emitted + s.frames_dropped <= 150);
            assert!(s.frames_dropped >= 150 - expect.len() as u64 - lost);
        }
    }

    #[test]
    fn keyframe_needed_once_per_loss_and_only_after_first_keyframe() {
        let frames = read_frames("clip.ivf");
        let packets = packetize(&frames, 0, 0, Desc::Simple, 1000, false);
        let first_of = |frame: usize| {
            packets
                .iter()
                .position(|p| p.ts == frame as u32 * TICKS)
                .unwrap()
        };
        // Lose the first packet of frame 5 and of frame 10 (both in the first GOP).
        let kept: Vec<TestPacket> = packets
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != first_of(5) && *i != first_of(10))
            .map(|(_, p)| p.clone())
            .collect();
        let (events, a) = run(&kept);
        let expect: Vec<usize> = (0..5).chain(30..150).collect();
        check_frames(&events, &frames, 0, &expect);
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(
                    e,
                    Vp8Event::KeyframeNeeded {
                        reason: KeyframeReason::PacketLoss
                    }
                ))
                .count(),
            2
        );
        // The first request comes right after frame 4.
        let pos = events
            .iter()
            .position(|e| matches!(e, Vp8Event::KeyframeNeeded { .. }))
            .unwrap();
        assert_eq!(frames_of(&events[..pos]).len(), 5);
        // Frames 5..30 are dropped, except those lost whole (single-packet frames).
        let single = |f: usize| packets.iter().filter(|p| p.ts == f as u32 * TICKS).count() == 1;
        let whole_lost = u64::from(single(5)) + u64::from(single(10));
        assert_eq!(a.stats().frames_dropped, 25 - whole_lost);
    }

    #[test]
    fn stream_starting_mid_gop_waits_for_keyframe() {
        let frames = read_frames("clip.ivf");
        let packets = packetize(&frames, SEQ0, TS0, Desc::Extended, 1000, false);
        // Start in the middle of frame 10.
        let start = packets
            .iter()
            .position(|p| p.ts == TS0.wrapping_add(10 * TICKS))
            .unwrap()
            + 1;
        let t0 = Instant::now();
        let mut a = Vp8Assembler::new(50 * MS);
        assert!(a.waiting_for_keyframe());
        let mut events = Vec::new();
        for (i, p) in packets[start..].iter().enumerate() {
            let now = t0 + MS * i as u32;
            a.push(p.seq, p.ts, p.marker, &p.payload, now);
            events.extend(std::iter::from_fn(|| a.poll(now)));
            if events.is_empty() {
                assert!(a.waiting_for_keyframe());
            }
        }
        events.extend(a.finish());
        assert!(!a.waiting_for_keyframe());
        check_frames(&events, &frames, TS0, &(30..150).collect::<Vec<_>>());
        assert_eq!(keyframe_requests(&events), 0);
        // Every frame seen before the keyframe (10 only if it had more than one packet).
        let seen: std::collections::BTreeSet<u32> = packets[start..]
            .iter()
            .map(|p| p.ts.wrapping_sub(TS0) / TICKS)
            .filter(|&i| i < 30)
            .collect();
        assert_eq!(a.stats().frames_dropped, seen.len() as u64);
        assert!(seen.len() >= 19);
    }

    #[test]
    fn padding_keeps_the_chain_and_lost_padding_with_picture_ids_too() {
        let frames = read_frames("clip.ivf");
        let packets = packetize(&frames[..30], 0, 0, Desc::Extended, 1000, false);
        // A padding packet after every marker: sequence numbers shift by one per frame.
        let mut with_padding = Vec::new();
        let mut seq = 0u16;
        for p in &packets {
            with_padding.push(TestPacket { seq, ..p.clone() });
            seq = seq.wrapping_add(1);
            if p.marker {
                with_padding.push(TestPacket {
                    seq,
                    ts: p.ts,
                    marker: false,
                    payload: Vec::new(),
                });
                seq = seq.wrapping_add(1);
            }
        }
        let (events, _) = run(&with_padding);
        check_frames(&events, &frames, 0, &(0..30).collect::<Vec<_>>());
        // Lose every padding packet: consecutive PictureIDs prove no frame was lost.
        let no_padding: Vec<TestPacket> = with_padding
            .iter()
            .filter(|p| !p.payload.is_empty())
            .cloned()
            .collect();
        let (events, a) = run(&no_padding);
        check_frames(&events, &frames, 0, &(0..30).collect::<Vec<_>>());
        assert_eq!(keyframe_requests(&events), 0);
        assert_eq!(a.stats().packets_lost, 29);
        // Without PictureIDs the same loss cannot be told apart from a lost frame.
        let simple = packetize(&frames[..30], 0, 0, Desc::Simple, 1000, false);
        let gappy: Vec<TestPacket> = simple
            .iter()
            .scan(0u16, |extra, p| {
                let q = TestPacket {
                    seq: p.seq.wrapping_add(*extra),
                    ..p.clone()
                };
                if p.marker {
                    *extra += 1;
                }
                Some(q)
            })
            .collect();
        let (events, _) = run(&gappy);
        check_frames(&events, &frames, 0, &[0]);
        // One request per loss (the caller rate-limits).
        assert_eq!(keyframe_requests(&events), 29);
    }

    #[test]
    fn lost_marker_and_corrupt_frames() {
        let frames = read_frames("small.ivf");
        let ts = |i: u32| i * TICKS;
        let t0 = Instant::now();
        let mut a = Vp8Assembler::new(50 * MS);
        let mut seq = 0u16;
        let mut send = |a: &mut Vp8Assembler, ts: u32, marker: bool, payload: &[u8]| {
            a.push(seq, ts, marker, payload, t0);
            seq = seq.wrapping_add(1);
            std::iter::from_fn(|| a.poll(t0 + Duration::from_secs(1))).collect::<Vec<_>>()
        };
        let with = |d: u8, data: &[u8]| [&[d][..], data].concat();
        // Keyframe 0 whole.
        let ev = send(&mut a, ts(0), true, &with(0x10, &frames[0]));
        assert!(
            matches!(&ev[..], [Vp8Event::Frame(f)] if f.keyframe && f.size == Some((160, 120)))
        );
        // Frame 1 split in two, but its second half has no marker; frame 2 follows.
        let (h1, t1) = frames[1].split_at(10);
        assert!(send(&mut a, ts(1), false, &with(0x10, h1)).is_empty());
        assert!(send(&mut a, ts(1), false, &with(0x00, t1)).is_empty());
        let ev = send(&mut a, ts(2), true, &with(0x10, &frames[2]));
        assert_eq!(
            ev,
            vec![Vp8Event::KeyframeNeeded {
                reason: KeyframeReason::Corrupt
            }]
        );
        assert!(a.waiting_for_keyframe());
        // A keyframe with a broken start code: dropped, another request.
        let mut bad = frames[0].clone();
        bad[4] = 0;
        let ev = send(&mut a, ts(3), true, &with(0x10, &bad));
        assert_eq!(
            ev,
            vec![Vp8Event::KeyframeNeeded {
                reason: KeyframeReason::Corrupt
            }]
        );
        // A keyframe of size 0x0.
        let mut bad = frames[0].clone();
        bad[6..10].copy_from_slice(&[0, 0xc0, 0, 0]);
        assert_eq!(send(&mut a, ts(4), true, &with(0x10, &bad)).len(), 1);
        // A frame claiming a first partition longer than itself.
        let ev = send(&mut a, ts(5), true, &with(0x10, &[0xff, 0xff, 0xff, 1, 2]));
        assert_eq!(ev.len(), 1);
        // A good keyframe ends it.
        let ev = send(&mut a, ts(6), true, &with(0x10, &frames[0]));
        assert!(matches!(&ev[..], [Vp8Event::Frame(f)] if f.keyframe));
        assert!(!a.waiting_for_keyframe());
        // A frame without its start packet (S=0 only, no loss before it): corrupt.
        let ev = send(&mut a, ts(7), true, &with(0x00, &frames[1]));
        assert_eq!(ev.len(), 1);
        assert!(matches!(ev[0], Vp8Event::KeyframeNeeded { .. }));
        let s = a.stats();
        assert_eq!((s.frames_emitted, s.keyframes), (2, 2));
        assert_eq!(s.frames_dropped, 6);
    }

    #[test]
    fn endless_frame_is_capped() {
        let frames = read_frames("small.ivf");
        let t0 = Instant::now();
        let mut a = Vp8Assembler::new(50 * MS);
        a.push(0, 0, true, &[&[0x10][..], &frames[0]].concat(), t0);
        assert!(matches!(
            a.poll(t0 + Duration::from_secs(1)),
            Some(Vp8Event::Frame(_))
        ));
        let chunk = vec![0x55u8; 1200];
        let mut events = Vec::new();
        for i in 1..10_000u16 {
            let mut payload = vec![if i == 1 { 0x10 } else { 0 }];
            payload.extend_from_slice(&chunk);
            let now = t0 + MS * u32::from(i);
            a.push(i, TICKS, false, &payload, now);
            events.extend(std::iter::from_fn(|| a.poll(now)));
            let held = a.cur.as_ref().map_or(0, |c| c.data.capacity());
            assert!(held <= 2 * MAX_FRAME_BYTES);
        }
        assert_eq!(
            events,
            vec![Vp8Event::KeyframeNeeded {
                reason: KeyframeReason::TooLarge
            }]
        );
        assert!(a
            .cur
            .as_ref()
            .is_some_and(|c| c.data.is_empty() && c.broken));
    }

    /// Issue 10 item 6: a keyframe missing a packet is known when the next frame's first
    /// packet arrives, not when the reorder window gives the packet up; a whole one is not.
    #[test]
    fn an_incomplete_keyframe_is_seen_on_arrival() {
        let t0 = Instant::now();
        let key_start = [0x10u8, 0x00, 1, 2];
        let part = [0x00u8, 7, 7];
        let inter_start = [0x10u8, 0x01, 3];
        let mut a = Vp8Assembler::new(Duration::from_millis(300));
        // Whole keyframe (seq 1..=3, marker on 3), then an inter frame.
        a.push(1, 900, false, &key_start, t0);
        a.push(2, 900, false, &part, t0);
        a.push(3, 900, true, &part, t0);
        a.push(4, 3900, true, &inter_start, t0);
        while a.poll(t0 + Duration::from_secs(1)).is_some() {}
        assert!(!a.take_keyframe_incomplete());
        // Keyframe 5..=7 with 6 lost: seen when 8 (the next frame) arrives.
        a.push(5, 6900, false, &key_start, t0);
        a.push(7, 6900, true, &part, t0);
        while a.poll(t0).is_some() {}
        assert!(!a.take_keyframe_incomplete());
        assert_eq!(a.gap_since(), Some(t0));
        a.push(8, 9900, true, &inter_start, t0);
        assert!(a.take_keyframe_incomplete());
        assert!(!a.take_keyframe_incomplete());
        // Keyframe whose marker packet is lost.
        a.push(9, 12900, false, &key_start, t0);
        a.push(11, 15900, true, &inter_start, t0);
        assert!(a.take_keyframe_incomplete());
    }

    #[test]
    fn descriptor_parsing() {
        let p = |b: &[u8]| parse_descriptor(b).map(|(d, data)| (d, data.to_vec()));
        let short = |v: u16| {
            Some(PictureId {
                value: v,
                long: false,
            })
        };
        let long = |v: u16| {
            Some(PictureId {
                value: v,
                long: true,
            })
        };
        let d = |frame_start: bool, picture_id: Option<PictureId>| Descriptor {
            frame_start,
            picture_id,
        };
        assert_eq!(p(&[0x10, 7]), Some((d(true, None), vec![7])));
        assert_eq!(p(&[0x11, 7]), Some((d(false, None), vec![7])));
        assert_eq!(p(&[0x00, 7, 8]), Some((d(false, None), vec![7, 8])));
        assert_eq!(
            p(&[0x90, 0x80, 0x05, 9]),
            Some((d(true, short(5)), vec![9]))
        );
        assert_eq!(
            p(&[0x90, 0x80, 0x81, 0x02, 9]),
            Some((d(true, long(0x102)), vec![9]))
        );
        assert_eq!(
            p(&[0x90, 0xf0, 0xff, 0xff, 1, 2, 9]),
            Some((d(true, long(0x7fff)), vec![9]))
        );
        assert_eq!(p(&[0x90, 0x40, 1, 9]), Some((d(true, None), vec![9])));
        assert_eq!(p(&[0x90, 0x10, 1, 9]), Some((d(true, None), vec![9])));
        assert_eq!(p(&[0x90, 0x00, 9]), Some((d(true, None), vec![9])));
        // Extensions claimed beyond the payload, or nothing after the descriptor.
        for bad in [
            &[][..],
            &[0x10],
            &[0x80],
            &[0x90, 0x80],
            &[0x90, 0x80, 0x80],
            &[0x90, 0x80, 0x80, 1],
            &[0x90, 0x40],
            &[0x90, 0x40, 1],
            &[0x90, 0x20],
            &[0x90, 0xf0, 0x80, 1, 2],
            &[0x90, 0xf0, 0x80, 1, 2, 3],
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        assert!(PictureId {
            value: 0,
            long: true
        }
        .follows(PictureId {
            value: 0x7fff,
            long: true
        }));
        assert!(PictureId {
            value: 0,
            long: false
        }
        .follows(PictureId {
            value: 0x7f,
            long: false
        }));
        assert!(!PictureId {
            value: 1,
            long: false
        }
        .follows(PictureId {
            value: 0,
            long: true
        }));
    }

    #[test]
    fn hostile_input_never_panics_and_stays_bounded() {
        let frames = read_frames("small.ivf");
        let t0 = Instant::now();
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let mut a = Vp8Assembler::new(30 * MS);
        let mut seq = 0u16;
        let mut ts = 0u32;
        for i in 0..200_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 200);
            let r = rng.next();
            // Mostly plausible sequences with random jumps, timestamps and payloads.
            seq = match r % 16 {
                0 => rng.next() as u16,
                1 => seq.wrapping_sub(rng.below(50) as u16),
                _ => seq.wrapping_add(1),
            };
            ts = match (r >> 8) % 8 {
                0 => rng.next() as u32,
                1 | 2 => ts.wrapping_add(TICKS),
                _ => ts,
            };
            let len = match (r >> 16) % 4 {
                0 => rng.below(4),
                1 => rng.below(40),
                _ => rng.below(1500),
            };
            let mut payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if (r >> 24).is_multiple_of(4) && !payload.is_empty() {
                // Sometimes a real frame behind a real-looking descriptor.
                let f = &frames[rng.below(frames.len())];
                payload.truncate(1);
                payload[0] &= 0xf0;
                payload.extend_from_slice(&f[..rng.below(f.len()) + 1]);
            }
            a.push(seq, ts, (r >> 32).is_multiple_of(3), &payload, now);
            while a.poll(now).is_some() {}
            assert!(a.reorder.buffered() <= REORDER_MAX_PACKETS);
            assert!(a.cur.as_ref().map_or(0, |c| c.data.len()) <= MAX_FRAME_BYTES);
            assert!(a.events.len() <= 2);
        }
        a.finish();
        // Degenerate payloads one by one.
        let mut a = Vp8Assembler::new(30 * MS);
        for (i, payload) in [
            &[][..],
            &[0x80],
            &[0xff],
            &[0xff, 0xff],
            &[0xff, 0xff, 0xff],
            &[0xff, 0xff, 0xff, 0xff],
            &[0x90, 0xf0, 0xff],
            &[0x10, 0x00],
            &[0x10, 0x00, 0x00, 0x00],
            &[
                0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0xff, 0xff, 0xff, 0xff,
            ],
        ]
        .into_iter()
        .enumerate()
        {
            for marker in [false, true] {
                a.push(i as u16 * 2 + u16::from(marker), 0, marker, payload, t0);
                while a.poll(t0 + Duration::from_secs(1)).is_some() {}
            }
        }
        assert!(a.finish().is_empty());
        assert_eq!(a.stats().frames_emitted, 0);
    }
}
