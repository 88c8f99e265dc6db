//! One task per received track: RTP in, reorder and assemble, map to the recording's clock,
//! write, flush every second, finalize on stop or when the participant leaves.
//!
//! A pipeline keeps only RTP → reorder/assemble → placement on the file's timeline; its
//! [`Sink`] writes (own file or a muxed file's lane). The task loop does the rest: deadlines,
//! keyframe requests, stop handling, manifest rewrites and error reports.
//!
//! The task reads the webrtc-rs track directly and owns its sink, so a packet never crosses
//! another task or lock on its way to an own file. It sleeps only until the next deadline (a
//! reorder timeout, a PLI, a flush).

use super::manifest::Kind;
use super::mux::MuxFile;
use super::session::{TrackContext, TrackEntry};
use super::sink::{clock_rate, MediaTime, Sample, Sink, Start};
use crate::media::clock::{FileTimeline, TrackClock};
use crate::media::pli::{PliPolicy, Request};
use crate::media::rtp::{Released, ReorderBuffer, SeqUnwrapper, TsUnwrapper};
use crate::media::source::{MediaSource, SourceEvent};
use crate::media::vp8::{payload_starts_keyframe, Vp8Assembler, Vp8Event, Vp8Frame};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often buffered file bytes are pushed to the OS (bounds what a crash loses).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long a missing video packet is waited for (NACK retransmissions arrive within it).
pub const VIDEO_REORDER: Duration = Duration::from_millis(300);
/// How long a gap in the video may stay open before it counts as a loss for keyframe
/// requests (the reorder window still waits [`VIDEO_REORDER`] for the packet): webrtc-rs sends
/// NACKs every 100 ms, so a retransmission normally lands within this.
pub const VIDEO_LOSS_SUSPECT: Duration = Duration::from_millis(150);
/// How long a missing audio packet is waited for.
pub const AUDIO_REORDER: Duration = Duration::from_millis(120);

/// What ended a track.
enum End {
    /// Stop requested at this instant.
    Stop(Instant),
    /// The participant left or the track ended at this instant.
    Gone(Instant),
}

impl End {
    fn at(&self) -> Instant {
        match self {
            Self::Stop(t) | Self::Gone(t) => *t,
        }
    }
}

/// What a pipeline does with the packets and deadlines of its track.
trait Pipeline {
    fn packet(&mut self, ctx: &TrackContext, packet: rtc::rtp::Packet, now: Instant);
    fn clock(&mut self) -> &mut TrackClock;
    fn tick(&mut self, ctx: &TrackContext, now: Instant) -> Option<PictureLossIndicationDue>;
    fn next_deadline(&self) -> Option<Instant>;
    fn flush(&mut self, ctx: &TrackContext);
    fn finish(self, ctx: &TrackContext, end: Instant);
}

/// A keyframe request (PLI or FIR) the pipeline wants sent.
struct PictureLossIndicationDue(crate::media::pli::Request);

/// Runs the recording of one track until the stop, the participant leaving or the track's end.
/// With `mux`, the track writes into its participant's muxed file instead of a file of its own.
pub async fn run<S: MediaSource>(mut ctx: TrackContext, source: S, mux: Option<Arc<MuxFile>>) {
    let clock = TrackClock::new(ctx.recording.clock(), clock_rate(ctx.entry.kind));
    let sink = match mux {
        Some(mux) => Sink::lane(Arc::clone(&ctx.entry), mux),
        None => Sink::own(Arc::clone(&ctx.entry), ctx.path.clone()),
    };
    let bytes_are_mine = sink.bytes_are_mine();
    match ctx.entry.kind {
        Kind::Video => {
            let pli_interval = ctx.recording.options().pli_interval;
            let pipeline = VideoPipeline::new(clock, sink, Instant::now(), pli_interval);
            drive(&mut ctx, source, pipeline, bytes_are_mine).await
        }
        Kind::Audio => {
            let pipeline = AudioPipeline::new(clock, sink);
            drive(&mut ctx, source, pipeline, bytes_are_mine).await
        }
    }
}

/// What a track task last added to the process-wide counters.
#[derive(Default)]
struct Reported {
    /// Whether this track reports its file's bytes (not the audio lane of a muxed file, whose
    /// video lane reports the same file).
    bytes_are_mine: bool,
    packets: u64,
    lost: u64,
    bytes: u64,
    frames: u64,
    keyframes: u64,
    plis: u64,
}

impl Reported {
    /// Adds what the track did since the last call to the metrics counters.
    fn report(&mut self, stats: &super::session::TrackStats) {
        use crate::telemetry as t;
        let add = |name: &'static str, last: &mut u64, now: u64| {
            if now > *last {
                metrics::counter!(name).increment(now - *last);
                *last = now;
            }
        };
        add(
            t::RTP_PACKETS,
            &mut self.packets,
            stats.packets.load(Ordering::Relaxed),
        );
        add(
            t::RTP_LOST,
            &mut self.lost,
            stats.packets_lost.load(Ordering::Relaxed),
        );
        if self.bytes_are_mine {
            add(
                t::BYTES_WRITTEN,
                &mut self.bytes,
                stats.bytes.load(Ordering::Relaxed),
            );
        }
        add(
            t::FRAMES_WRITTEN,
            &mut self.frames,
            stats.frames.load(Ordering::Relaxed),
        );
        add(
            t::KEYFRAMES,
            &mut self.keyframes,
            stats.keyframes.load(Ordering::Relaxed),
        );
        add(t::PLIS, &mut self.plis, stats.plis.load(Ordering::Relaxed));
    }
}

async fn drive<S: MediaSource, P: Pipeline>(
    ctx: &mut TrackContext,
    mut source: S,
    mut pipeline: P,
    bytes_are_mine: bool,
) {
    let mut reported = Reported {
        bytes_are_mine,
        ..Reported::default()
    };
    let mut next_flush = Instant::now() + FLUSH_EVERY;
    let mut armed = next_flush;
    let sleep = tokio::time::sleep_until(armed.into());
    tokio::pin!(sleep);
    let end = loop {
        if let Some(at) = *ctx.stop.borrow() {
            break End::Stop(at);
        }
        let now = Instant::now();
        if let Some(PictureLossIndicationDue(request)) = pipeline.tick(ctx, now) {
            tracing::debug!(file = %ctx.entry.file, ?request, "requesting a keyframe");
            ctx.entry.stats.plis.fetch_add(1, Ordering::Relaxed);
            match request {
                Request::Pli(_) => source.request_keyframe().await,
                Request::Fir(_, seq) => source.request_full_intra(seq).await,
            }
        }
        if now >= next_flush {
            pipeline.flush(ctx);
            reported.report(&ctx.entry.stats);
            next_flush = now + FLUSH_EVERY;
        }
        let wake = pipeline
            .next_deadline()
            .map_or(next_flush, |d| d.min(next_flush));
        // One timer for the task, moved only when the deadline moves (not one per packet).
        if wake != armed {
            sleep.as_mut().reset(wake.into());
            armed = wake;
        }
        tokio::select! {
            event = source.next() => match event {
                Some(SourceEvent::Rtp(packet)) => {
                    ctx.entry.stats.packets.fetch_add(1, Ordering::Relaxed);
                    pipeline.packet(ctx, packet, Instant::now());
                }
                Some(SourceEvent::SenderReport { ntp, rtp }) => {
                    pipeline.clock().on_sender_report(ntp, rtp);
                }
                Some(SourceEvent::Missed(n)) => {
                    tracing::warn!(file = %ctx.entry.file, missed = n, "track task fell behind");
                }
                None => break End::Gone(Instant::now()),
            },
            _ = &mut sleep => {}
            _ = ctx.stop.changed() => {}
            left = ctx.left.recv() => match left {
                Ok(id) if id == ctx.entry.participant => break End::Gone(Instant::now()),
                _ => {}
            },
        }
    };
    tracing::debug!(
        file = %ctx.entry.file,
        stopped = matches!(end, End::Stop(_)),
        "track ends"
    );
    pipeline.finish(ctx, end.at());
    reported.report(&ctx.entry.stats);
}

/// A sample of the track before its placement in the file.
struct Unplaced {
    /// Extended RTP timestamp.
    ext: i64,
    /// Recording time (seconds) the track's clock maps it to.
    t: f64,
    keyframe: bool,
    size: Option<(u16, u16)>,
    data: Bytes,
    arrival: Instant,
}

/// Places a sample on its file's timeline (the sink starts with the first one it takes) and
/// pushes it into the sink; a sample after the requested stop is dropped. The manifest is
/// rewritten when the file started; an error is recorded on the track.
fn place(
    ctx: &TrackContext,
    sink: &mut Sink,
    timeline: &mut Option<FileTimeline>,
    clock: &TrackClock,
    sample: Unplaced,
) {
    if let Some(stop) = *ctx.stop.borrow() {
        if sample.t > ctx.recording.clock().seconds(stop) {
            return;
        }
    }
    if timeline.is_none() {
        match sink.start(sample.keyframe, sample.size, &sample.data, sample.t) {
            Ok(Start::Wait) => return,
            Ok(Start::Open) => {}
            // On disk at once, so a crash leaves the file listed and placed.
            Ok(Start::Created) => ctx.recording.write_manifest(),
            Err(e) => {
                ctx.recording.track_error(&ctx.entry, &e);
                return;
            }
        }
        *timeline = Some(FileTimeline::start(sample.ext, sample.t, clock));
    }
    let Some(timeline) = timeline.as_mut() else {
        return;
    };
    let (position, moved) = timeline.position(sample.ext, sample.t, clock, &ctx.sender);
    let placed = Sample {
        file_start: timeline.first_t(),
        moved,
        position: MediaTime::new(position, clock_rate(ctx.entry.kind)),
        keyframe: sample.keyframe,
        size: sample.size,
        data: sample.data,
        arrival: sample.arrival,
    };
    match sink.push(placed) {
        Ok(true) => ctx.recording.write_manifest(),
        Ok(false) => {}
        Err(e) => ctx.recording.track_error(&ctx.entry, &e),
    }
}

/// Flushes the sink; a failure is recorded (the sink then takes no more samples).
fn flush(ctx: &TrackContext, sink: &mut Sink) {
    if let Err(e) = sink.flush() {
        ctx.recording.track_error(&ctx.entry, &e);
    }
}

/// Ends the sink at `end`; a failure is recorded (the file may not be complete or durable).
fn finish(ctx: &TrackContext, sink: Sink, end: Instant, timeline: Option<&FileTimeline>) {
    if let Err(e) = sink.finish(ctx.recording.clock().seconds(end), timeline) {
        ctx.recording.track_error(&ctx.entry, &e);
    }
}

struct VideoPipeline {
    assembler: Vp8Assembler,
    pli: PliPolicy,
    clock: TrackClock,
    sink: Sink,
    timeline: Option<FileTimeline>,
    /// The gap (by when it became visible) already reported as a loss.
    suspected_gap: Option<Instant>,
}

impl VideoPipeline {
    fn new(clock: TrackClock, sink: Sink, now: Instant, pli_interval: Option<Duration>) -> Self {
        Self {
            assembler: Vp8Assembler::new(VIDEO_REORDER),
            pli: PliPolicy::new(now, pli_interval),
            clock,
            sink,
            timeline: None,
            suspected_gap: None,
        }
    }

    fn drain(&mut self, ctx: &TrackContext, now: Instant) {
        while let Some(event) = self.assembler.poll(now) {
            self.event(ctx, event);
        }
    }

    fn event(&mut self, ctx: &TrackContext, event: Vp8Event) {
        match event {
            Vp8Event::Frame(frame) => self.frame(ctx, frame),
            Vp8Event::KeyframeNeeded { .. } => self.pli.frame_lost(),
        }
    }

    fn frame(&mut self, ctx: &TrackContext, frame: Vp8Frame) {
        if self.sink.failed() {
            return;
        }
        let ext = frame.rtp_ts as i64;
        let t = self.clock.map(ext, frame.first_arrival, &ctx.sender);
        let sample = Unplaced {
            ext,
            t,
            keyframe: frame.keyframe,
            size: frame.size,
            data: frame.data,
            arrival: frame.first_arrival,
        };
        place(ctx, &mut self.sink, &mut self.timeline, &self.clock, sample);
    }

    fn sync_loss(&self, entry: &TrackEntry) {
        entry
            .stats
            .packets_lost
            .store(self.assembler.packets_lost(), Ordering::Relaxed);
    }
}

impl Pipeline for VideoPipeline {
    fn clock(&mut self) -> &mut TrackClock {
        &mut self.clock
    }

    fn packet(&mut self, ctx: &TrackContext, packet: rtc::rtp::Packet, now: Instant) {
        let h = &packet.header;
        if payload_starts_keyframe(&packet.payload) {
            self.pli.keyframe_started();
        }
        self.assembler.push(
            h.sequence_number,
            h.timestamp,
            h.marker,
            &packet.payload,
            now,
        );
        self.drain(ctx, now);
        self.sync_loss(&ctx.entry);
    }

    fn tick(&mut self, ctx: &TrackContext, now: Instant) -> Option<PictureLossIndicationDue> {
        self.drain(ctx, now);
        if self.assembler.take_keyframe_incomplete() {
            self.pli.keyframe_incomplete();
        }
        // A gap NACK did not fill in time: the frame is lost, ask now rather than when the
        // reorder window gives it up (each gap once).
        if let Some(since) = self.assembler.gap_since() {
            if now.saturating_duration_since(since) >= VIDEO_LOSS_SUSPECT
                && self.suspected_gap != Some(since)
            {
                self.suspected_gap = Some(since);
                self.pli.frame_lost();
            }
        }
        let awaiting = self.assembler.waiting_for_keyframe();
        self.pli.poll(now, awaiting).map(PictureLossIndicationDue)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let pli = self
            .pli
            .next_deadline(self.assembler.waiting_for_keyframe());
        let gap = self
            .assembler
            .gap_since()
            .filter(|since| self.suspected_gap != Some(*since))
            .map(|since| since + VIDEO_LOSS_SUSPECT);
        [self.assembler.next_deadline(), pli, gap]
            .into_iter()
            .flatten()
            .min()
    }

    fn flush(&mut self, ctx: &TrackContext) {
        flush(ctx, &mut self.sink);
    }

    fn finish(mut self, ctx: &TrackContext, end: Instant) {
        for event in self.assembler.finish() {
            self.event(ctx, event);
        }
        self.sync_loss(&ctx.entry);
        finish(ctx, self.sink, end, self.timeline.as_ref());
    }
}

struct AudioPacket {
    ts: u32,
    payload: Bytes,
    arrival: Instant,
}

struct AudioPipeline {
    reorder: ReorderBuffer<AudioPacket>,
    seq: SeqUnwrapper,
    ts: TsUnwrapper,
    clock: TrackClock,
    sink: Sink,
    timeline: Option<FileTimeline>,
}

impl AudioPipeline {
    fn new(clock: TrackClock, sink: Sink) -> Self {
        Self {
            reorder: ReorderBuffer::new(AUDIO_REORDER, 64),
            seq: SeqUnwrapper::new(),
            ts: TsUnwrapper::new(),
            clock,
            sink,
            timeline: None,
        }
    }

    fn released(&mut self, ctx: &TrackContext, released: Released<AudioPacket>) {
        match released {
            Released::Packet { item, .. } => self.write(ctx, item),
            Released::Lost { count, .. } => {
                ctx.entry
                    .stats
                    .packets_lost
                    .fetch_add(count, Ordering::Relaxed);
            }
        }
    }

    fn write(&mut self, ctx: &TrackContext, packet: AudioPacket) {
        if self.sink.failed() || packet.payload.is_empty() {
            return;
        }
        let ext = self.ts.unwrap(packet.ts) as i64;
        let t = self.clock.map(ext, packet.arrival, &ctx.sender);
        let sample = Unplaced {
            ext,
            t,
            keyframe: false,
            size: None,
            data: packet.payload,
            arrival: packet.arrival,
        };
        place(ctx, &mut self.sink, &mut self.timeline, &self.clock, sample);
    }
}

impl Pipeline for AudioPipeline {
    fn clock(&mut self) -> &mut TrackClock {
        &mut self.clock
    }

    fn packet(&mut self, ctx: &TrackContext, packet: rtc::rtp::Packet, now: Instant) {
        if let Some(tap) = &ctx.audio_tap {
            // Best effort: a listener that cannot keep up misses packets, the file does not.
            let _ = tap.try_send((now, packet.payload.clone()));
        }
        let ext_seq = self.seq.unwrap(packet.header.sequence_number);
        let item = AudioPacket {
            ts: packet.header.timestamp,
            payload: packet.payload,
            arrival: now,
        };
        let _ = self.reorder.push(ext_seq, item, now);
        self.tick(ctx, now);
    }

    fn tick(&mut self, ctx: &TrackContext, now: Instant) -> Option<PictureLossIndicationDue> {
        while let Some(released) = self.reorder.pop(now) {
            self.released(ctx, released);
        }
        None
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.reorder.next_deadline()
    }

    fn flush(&mut self, ctx: &TrackContext) {
        flush(ctx, &mut self.sink);
    }

    fn finish(mut self, ctx: &TrackContext, end: Instant) {
        let rest: Vec<Released<AudioPacket>> = self.reorder.drain().into_iter().collect();
        for released in rest {
            self.released(ctx, released);
        }
        finish(ctx, self.sink, end, self.timeline.as_ref());
    }
}
