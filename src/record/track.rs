//! One task per received track: RTP in, reorder and assemble, map to the recording's clock,
//! write, flush every second, finalize on stop or when the participant leaves.
//!
//! The task reads the webrtc-rs track directly and owns its writer, so a packet never crosses
//! another task or lock on its way to the file. It sleeps only until the next deadline (a
//! reorder timeout, a PLI, a flush).

use super::manifest::Kind;
use super::mux::{Lane, MuxFile};
use super::ogg::{OggOpusWriter, PacketOutcome};
use super::session::{TrackContext, TrackEntry};
use super::webm::{WebmTrack, WebmWriter};
use crate::media::clock::{FileTimeline, TrackClock};
use crate::media::opus::OPUS_PRE_SKIP;
use crate::media::pli::{PliPolicy, Request};
use crate::media::rtp::{Released, ReorderBuffer, SeqUnwrapper, TsUnwrapper};
use crate::media::source::{MediaSource, SourceEvent};
use crate::media::vp8::{payload_starts_keyframe, Vp8Assembler, Vp8Event, Vp8Frame};
use bytes::Bytes;
use std::fs::File;
use std::io::BufWriter;
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
/// Write buffer per file.
const WRITE_BUFFER: usize = 64 * 1024;

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
    let clock = TrackClock::new(
        ctx.recording.clock(),
        if ctx.entry.kind == Kind::Video {
            90_000
        } else {
            48_000
        },
    );
    match ctx.entry.kind {
        Kind::Video => {
            let mut pipeline =
                VideoPipeline::new(clock, Instant::now(), ctx.recording.options().pli_interval);
            pipeline.mux = mux;
            drive(&mut ctx, source, pipeline, true).await
        }
        Kind::Audio => {
            let mut pipeline = AudioPipeline::new(clock);
            let shares_file = mux.is_some();
            pipeline.mux = mux;
            drive(&mut ctx, source, pipeline, !shares_file).await
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

fn open(ctx: &TrackContext) -> std::io::Result<BufWriter<File>> {
    let file = File::create(&ctx.path)?;
    ctx.entry.stats.file_created.store(true, Ordering::Relaxed);
    Ok(BufWriter::with_capacity(WRITE_BUFFER, file))
}

/// Creates the track's file with `make` and places its first sample (extended timestamp `ext`
/// at recording time `t`). On failure the error is recorded and `None` returned.
fn start_file<W, E: std::fmt::Display>(
    ctx: &TrackContext,
    ext: i64,
    t: f64,
    clock: &TrackClock,
    make: impl FnOnce(BufWriter<File>) -> Result<W, E>,
) -> Option<(W, FileTimeline)> {
    let writer = match open(ctx) {
        Ok(out) => make(out).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match writer {
        Ok(writer) => {
            ctx.entry
                .stats
                .start_offset_ms
                .store(ms(t), Ordering::Relaxed);
            // On disk at once, so a crash leaves the file listed and placed.
            ctx.recording.write_manifest();
            Some((writer, FileTimeline::start(ext, t, clock)))
        }
        Err(e) => {
            ctx.recording.track_error(&ctx.entry, &e);
            None
        }
    }
}

/// A writer that can push its buffered bytes to the OS.
trait Flush {
    fn flush_out(&mut self) -> Result<(), String>;
}

impl<W: std::io::Write + std::io::Seek> Flush for WebmWriter<W> {
    fn flush_out(&mut self) -> Result<(), String> {
        self.flush().map_err(|e| e.to_string())
    }
}

impl<W: std::io::Write> Flush for OggOpusWriter<W> {
    fn flush_out(&mut self) -> Result<(), String> {
        self.flush().map_err(|e| e.to_string())
    }
}

/// Flushes the track's own writer or its muxed file; a failure stops the track's writing.
fn flush_output<F: Flush>(
    ctx: &TrackContext,
    writer: Option<&mut F>,
    mux: Option<&MuxFile>,
    failed: &mut bool,
) {
    let result = match (writer, mux) {
        (Some(writer), _) => writer.flush_out(),
        (None, Some(mux)) => mux.flush().map_err(|e| e.to_string()),
        (None, None) => Ok(()),
    };
    if let Err(e) = result {
        *failed = true;
        ctx.recording.track_error(&ctx.entry, &e);
    }
}

/// After a push into a muxed file: the manifest is rewritten when the push started the file;
/// an error stops the track's writing.
fn after_push(
    ctx: &TrackContext,
    pushed: Result<Option<f64>, super::mux::MuxError>,
    failed: &mut bool,
) {
    match pushed {
        Ok(Some(_started)) => ctx.recording.write_manifest(),
        Ok(None) => {}
        Err(e) => {
            *failed = true;
            ctx.recording.track_error(&ctx.entry, &e);
        }
    }
}

/// The last step of a track's own file: its size to the figures, then flush and fsync. A
/// failure is reported on the track (the file may not be durable), never dropped.
fn close_file(ctx: &TrackContext, out: BufWriter<File>) {
    let file = match out.into_inner() {
        Ok(file) => file,
        Err(e) => {
            let error = format!("flush at finalize: {}", e.error());
            ctx.recording.track_error(&ctx.entry, &error);
            return;
        }
    };
    if let Ok(meta) = file.metadata() {
        ctx.entry.stats.bytes.store(meta.len(), Ordering::Relaxed);
    }
    if let Err(e) = file.sync_all() {
        let error = format!("fsync at finalize: {e} (the file may not be durable)");
        ctx.recording.track_error(&ctx.entry, &error);
    }
}

fn finish_mux(ctx: &TrackContext, mux: &MuxFile, lane: Lane, end: Instant) {
    if let Err(e) = mux.finish(lane, ctx.recording.clock().seconds(end)) {
        ctx.recording.track_error(&ctx.entry, &e);
    }
}

fn ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

struct VideoPipeline {
    assembler: Vp8Assembler,
    pli: PliPolicy,
    clock: TrackClock,
    writer: Option<WebmWriter<BufWriter<File>>>,
    mux: Option<Arc<MuxFile>>,
    timeline: Option<FileTimeline>,
    last_ms: u64,
    size: Option<(u16, u16)>,
    failed: bool,
    /// The gap (by when it became visible) already reported as a loss.
    suspected_gap: Option<Instant>,
}

impl VideoPipeline {
    fn new(clock: TrackClock, now: Instant, pli_interval: Option<Duration>) -> Self {
        Self {
            assembler: Vp8Assembler::new(VIDEO_REORDER),
            pli: PliPolicy::new(now, pli_interval),
            clock,
            writer: None,
            mux: None,
            timeline: None,
            last_ms: 0,
            size: None,
            failed: false,
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
        if self.failed {
            return;
        }
        let stats = &ctx.entry.stats;
        let ext = frame.rtp_ts as i64;
        let t = self.clock.map(ext, frame.first_arrival, &ctx.sender);
        if let Some(stop) = *ctx.stop.borrow() {
            if t > ctx.recording.clock().seconds(stop) {
                return;
            }
        }
        if self.timeline.is_none() && self.mux.is_some() {
            if !frame.keyframe {
                return;
            }
            self.timeline = Some(FileTimeline::start(ext, t, &self.clock));
        }
        if self.timeline.is_none() {
            if !frame.keyframe {
                return;
            }
            let (w, h) = frame.size.unwrap_or((0, 0));
            let track = WebmTrack::Video {
                number: 1,
                width: u32::from(w),
                height: u32::from(h),
            };
            match start_file(ctx, ext, t, &self.clock, |out| {
                WebmWriter::new(out, &[track])
            }) {
                Some((writer, timeline)) => {
                    self.writer = Some(writer);
                    self.timeline = Some(timeline);
                }
                None => {
                    self.failed = true;
                    return;
                }
            }
        }
        let Some(timeline) = self.timeline.as_mut() else {
            return;
        };
        let (position, moved) = timeline.position(ext, t, &self.clock, &ctx.sender);
        if position < 0 {
            return;
        }
        if let Some(mux) = &self.mux {
            if let Some((w, h)) = frame.size.filter(|_| frame.keyframe) {
                stats.width.store(u32::from(w), Ordering::Relaxed);
                stats.height.store(u32::from(h), Ordering::Relaxed);
            }
            let at = timeline.first_t() + position as f64 / 90_000.0;
            let pushed = mux.push_video(at, frame.keyframe, frame.size, frame.data);
            after_push(ctx, pushed, &mut self.failed);
            return;
        }
        if moved {
            stats
                .start_offset_ms
                .store(ms(timeline.first_t()), Ordering::Relaxed);
        }
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        // 90 kHz → ms. The writer keeps the track's timestamps strictly increasing.
        let ts = ((position + 45) / 90) as u64;
        if let Some((w, h)) = frame.size.filter(|_| frame.keyframe) {
            if self.size != Some((w, h)) {
                if self.size.is_some() {
                    tracing::info!(file = %ctx.entry.file, w, h, "resolution changed");
                }
                self.size = Some((w, h));
                writer.note_video_size(1, u32::from(w), u32::from(h));
                stats.width.store(u32::from(w), Ordering::Relaxed);
                stats.height.store(u32::from(h), Ordering::Relaxed);
            }
        }
        match writer.write_frame(1, ts, frame.keyframe, &frame.data) {
            Ok(ts) => {
                self.last_ms = ts;
                stats.frames.fetch_add(1, Ordering::Relaxed);
                if frame.keyframe {
                    stats.keyframes.fetch_add(1, Ordering::Relaxed);
                }
                stats.bytes.store(writer.bytes_written(), Ordering::Relaxed);
                stats.duration_ms.store(ts, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed = true;
                ctx.recording.track_error(&ctx.entry, &e);
            }
        }
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
        flush_output(
            ctx,
            self.writer.as_mut(),
            self.mux.as_deref(),
            &mut self.failed,
        );
    }

    fn finish(mut self, ctx: &TrackContext, end: Instant) {
        for event in self.assembler.finish() {
            self.event(ctx, event);
        }
        self.sync_loss(&ctx.entry);
        if let Some(mux) = self.mux.take() {
            finish_mux(ctx, &mux, Lane::Video, end);
            return;
        }
        let (Some(writer), Some(timeline)) = (self.writer.take(), self.timeline.as_ref()) else {
            return;
        };
        let live = ms(ctx.recording.clock().seconds(end) - timeline.first_t()).max(0) as u64;
        let duration = live.max(self.last_ms + 1);
        match writer.finalize(duration) {
            Ok(out) => {
                close_file(ctx, out);
                ctx.entry
                    .stats
                    .duration_ms
                    .store(duration, Ordering::Relaxed);
            }
            Err(e) => ctx.recording.track_error(&ctx.entry, &e),
        }
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
    writer: Option<OggOpusWriter<BufWriter<File>>>,
    mux: Option<Arc<MuxFile>>,
    timeline: Option<FileTimeline>,
    failed: bool,
}

impl AudioPipeline {
    fn new(clock: TrackClock) -> Self {
        Self {
            reorder: ReorderBuffer::new(AUDIO_REORDER, 64),
            seq: SeqUnwrapper::new(),
            ts: TsUnwrapper::new(),
            clock,
            writer: None,
            mux: None,
            timeline: None,
            failed: false,
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
        if self.failed || packet.payload.is_empty() {
            return;
        }
        let stats = &ctx.entry.stats;
        let ext = self.ts.unwrap(packet.ts) as i64;
        let t = self.clock.map(ext, packet.arrival, &ctx.sender);
        if let Some(stop) = *ctx.stop.borrow() {
            if t > ctx.recording.clock().seconds(stop) {
                return;
            }
        }
        let channels = if packet.payload[0] & 0x04 != 0 { 2 } else { 1 };
        if self.timeline.is_none() && self.mux.is_some() {
            self.timeline = Some(FileTimeline::start(ext, t, &self.clock));
        }
        if self.timeline.is_none() {
            let serial = rand::random::<u32>();
            match start_file(ctx, ext, t, &self.clock, |out| {
                OggOpusWriter::new(out, serial, channels, OPUS_PRE_SKIP)
            }) {
                Some((writer, timeline)) => {
                    self.writer = Some(writer);
                    self.timeline = Some(timeline);
                }
                None => {
                    self.failed = true;
                    return;
                }
            }
        }
        let Some(timeline) = self.timeline.as_mut() else {
            return;
        };
        let (position, moved) = timeline.position(ext, t, &self.clock, &ctx.sender);
        if let Some(mux) = &self.mux {
            if position >= 0 {
                let at = timeline.first_t() + position as f64 / 48_000.0;
                let pushed = mux.push_audio(at, channels, packet.payload, packet.arrival);
                after_push(ctx, pushed, &mut self.failed);
            }
            return;
        }
        if moved {
            stats
                .start_offset_ms
                .store(ms(timeline.first_t()), Ordering::Relaxed);
        }
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        let Ok(pts) = u64::try_from(position) else {
            return;
        };
        match writer.write_packet(&packet.payload, pts) {
            Ok(PacketOutcome::Written { .. }) => {
                stats.frames.fetch_add(1, Ordering::Relaxed);
                stats.bytes.store(writer.bytes_written(), Ordering::Relaxed);
                stats
                    .duration_ms
                    .store(writer.duration_samples() / 48, Ordering::Relaxed);
            }
            Ok(PacketOutcome::Dropped(reason)) => {
                tracing::trace!(file = %ctx.entry.file, ?reason, "audio packet dropped");
            }
            Err(e) => {
                self.failed = true;
                ctx.recording.track_error(&ctx.entry, &e);
            }
        }
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
        flush_output(
            ctx,
            self.writer.as_mut(),
            self.mux.as_deref(),
            &mut self.failed,
        );
    }

    fn finish(mut self, ctx: &TrackContext, end: Instant) {
        let rest: Vec<Released<AudioPacket>> = self.reorder.drain().into_iter().collect();
        for released in rest {
            self.released(ctx, released);
        }
        if let Some(mux) = self.mux.take() {
            finish_mux(ctx, &mux, Lane::Audio, end);
            return;
        }
        let (Some(writer), Some(timeline)) = (self.writer.take(), self.timeline.as_ref()) else {
            return;
        };
        let live = timeline
            .position_at(ctx.recording.clock().seconds(end))
            .max(0) as u64;
        // The file's timeline counts the pre-skip samples (RFC 7845): ending at `live` played
        // samples means a final granule of live + pre-skip.
        let end_pts = live + u64::from(OPUS_PRE_SKIP);
        let duration = writer.duration_samples();
        match writer.finalize(Some(end_pts)) {
            Ok(out) => {
                close_file(ctx, out);
                let samples = duration.max(end_pts - u64::from(OPUS_PRE_SKIP));
                ctx.entry
                    .stats
                    .duration_ms
                    .store(samples / 48, Ordering::Relaxed);
            }
            Err(e) => ctx.recording.track_error(&ctx.entry, &e),
        }
    }
}
