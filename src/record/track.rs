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
pub async fn run<S: MediaSource>(ctx: TrackContext, source: S, mux: Option<Arc<MuxFile>>) {
    let clock = TrackClock::new(ctx.recording.clock().clone(), clock_rate(ctx.entry.kind));
    let sink = match mux {
        Some(mux) => Sink::lane(Arc::clone(&ctx.entry), mux),
        None => Sink::own(Arc::clone(&ctx.entry), ctx.path.clone()),
    };
    let bytes_are_mine = sink.bytes_are_mine();
    match ctx.entry.kind {
        Kind::Video => {
            let pli_interval = ctx.recording.options().pli_interval;
            let pipeline = VideoPipeline::new(clock, sink, Instant::now(), pli_interval);
            drive(ctx, source, pipeline, bytes_are_mine).await
        }
        Kind::Audio => {
            let pipeline = AudioPipeline::new(clock, sink);
            drive(ctx, source, pipeline, bytes_are_mine).await
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

async fn drive<S: MediaSource, P: Pipeline + Send + 'static>(
    mut ctx: TrackContext,
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
        if let Some(PictureLossIndicationDue(request)) = pipeline.tick(&ctx, now) {
            tracing::debug!(file = %ctx.entry.file, ?request, "requesting a keyframe");
            ctx.entry.stats.plis.fetch_add(1, Ordering::Relaxed);
            match request {
                Request::Pli(_) => source.request_keyframe().await,
                Request::Fir(_, seq) => source.request_full_intra(seq).await,
            }
        }
        if now >= next_flush {
            pipeline.flush(&ctx);
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
                    pipeline.packet(&ctx, packet, Instant::now());
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
    // Finalizing writes the file's index and fsyncs it: on the blocking pool, so that the
    // connections sharing this task's thread (a media thread) keep their packets moving.
    let span = tracing::Span::current();
    let file = ctx.entry.file.clone();
    let finished = tokio::task::spawn_blocking(move || {
        let _in = span.enter();
        pipeline.finish(&ctx, end.at());
        reported.report(&ctx.entry.stats);
        ctx.entry.stats.ended.store(true, Ordering::Release);
        ctx.recording.files_changed();
    });
    if let Err(e) = finished.await {
        tracing::error!(file = %file, error = %e, "finalizing the track failed");
    }
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
/// pushes it into the sink; a sample after the requested stop, or inside a pause of the
/// recording, is dropped. The file's timeline runs on recorded time (pauses cut out). The
/// manifest is rewritten when the file started; an error is recorded on the track.
fn place(
    ctx: &TrackContext,
    sink: &mut Sink,
    timeline: &mut Option<FileTimeline>,
    clock: &TrackClock,
    sample: Unplaced,
) {
    let wall = sample.t;
    if let Some(stop) = *ctx.stop.borrow() {
        if wall > ctx.recording.clock().seconds(stop) {
            return;
        }
    }
    let Some(t) = ctx.recording.clock().recorded(wall) else {
        return;
    };
    if timeline.is_none() {
        match sink.start(sample.keyframe, sample.size, &sample.data, t) {
            Ok(Start::Wait) => return,
            Ok(Start::Open) => {}
            // On disk within moments (off this thread), so a crash leaves the file listed and placed.
            Ok(Start::Created) => ctx.recording.write_manifest_soon(),
            Err(e) => {
                ctx.recording.track_error(&ctx.entry, &e);
                return;
            }
        }
        *timeline = Some(FileTimeline::start(sample.ext, t, clock));
    }
    let Some(timeline) = timeline.as_mut() else {
        return;
    };
    timeline.cut(wall - t);
    let (position, moved) = timeline.position(sample.ext, t, clock, &ctx.sender);
    if let (Some(tap), Kind::Audio, true) = (
        &ctx.placed_audio,
        ctx.entry.kind,
        position >= 0 && !sink.failed(),
    ) {
        // The mix takes each packet where the file puts it (48 kHz ticks for audio).
        let at = (timeline.first_t() * 48_000.0).round() as i64 + position;
        tap.packet(&ctx.entry, at, &sample.data);
    }
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
        Ok(true) => ctx.recording.write_manifest_soon(),
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
    let clock = ctx.recording.clock();
    let end = clock.recorded_clamped(clock.seconds(end));
    if let Err(e) = sink.finish(end, timeline) {
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
    /// Paused seconds before the last frame written (wall − recorded time).
    written_cut: f64,
    /// A pause lies behind: frames are dropped until a keyframe (one was requested).
    keyframe_after_cut: bool,
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
            written_cut: 0.0,
            keyframe_after_cut: false,
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
        // After a pause the file goes on with a keyframe: what follows the cut must decode
        // without the frames the pause dropped.
        if let Some(recorded) = ctx.recording.clock().recorded(t) {
            let cut = t - recorded;
            if self.timeline.is_some() && cut > self.written_cut + 1e-6 {
                if !frame.keyframe {
                    if !self.keyframe_after_cut {
                        self.keyframe_after_cut = true;
                        self.pli.frame_lost();
                    }
                    return;
                }
                self.keyframe_after_cut = false;
            }
            self.written_cut = cut;
        }
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
        let awaiting = self.assembler.waiting_for_keyframe() || self.keyframe_after_cut;
        self.pli.poll(now, awaiting).map(PictureLossIndicationDue)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let pli = self
            .pli
            .next_deadline(self.assembler.waiting_for_keyframe() || self.keyframe_after_cut);
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
        if let Some(tap) = &ctx.placed_audio {
            tap.track_ended(&ctx.entry);
        }
        finish(ctx, self.sink, end, self.timeline.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::session::Recording;
    use std::path::PathBuf;

    fn rtp(seq: u16, ts: u32, payload: Vec<u8>) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 96,
                sequence_number: seq,
                timestamp: ts,
                marker: true,
                ssrc: 7,
                ..Default::default()
            },
            payload: Bytes::from(payload),
        }
    }

    /// Frame `i` of a 30 fps VP8 track in one packet: a keyframe every 30 frames (16x16, then
    /// 32x24 from the second on), varied sizes.
    fn vp8(i: u32) -> Vec<u8> {
        let mut p = vec![0x10];
        if i.is_multiple_of(30) {
            let w = if i == 0 { 16 } else { 32 };
            p.extend([0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, w, 0, 24, 0]);
        } else {
            p.extend([0x11, 0x00, 0x00]);
        }
        p.extend(0..(i % 50) as u8 + 20);
        p
    }

    /// The Ogg bytes without the random serial and the CRCs that depend on it.
    fn mask_ogg(mut bytes: Vec<u8>) -> Vec<u8> {
        let mut at = 0;
        while at + 27 <= bytes.len() && &bytes[at..at + 4] == b"OggS" {
            let segments = usize::from(bytes[at + 26]);
            let body: usize = bytes[at + 27..at + 27 + segments]
                .iter()
                .map(|s| usize::from(*s))
                .sum();
            bytes[at + 14..at + 18].fill(0);
            bytes[at + 22..at + 26].fill(0);
            at += 27 + segments + body;
        }
        bytes
    }

    use crate::record::test_tools::same_as_golden;

    /// The same RTP (2 s of 30 fps video with a resolution change, 20 ms audio with one packet
    /// lost, at fixed arrivals) through the pipelines into own files and into a muxed file:
    /// the files and the figures stay what they were before the sink was split out of the
    /// pipelines (golden files from that code).
    #[test]
    fn pipelines_write_the_same_files_and_figures() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recording::for_test("r", dir.path());
        rec.set_recording("bot");
        let base = Instant::now();
        let own_v = rec.add_track("q", "bob", Kind::Video, "webm").unwrap();
        let own_a = rec.add_track("q", "bob", Kind::Audio, "ogg").unwrap();
        let (mux_v, mux) = rec.add_muxed_track("p", "alice", Kind::Video).unwrap();
        let (mux_a, _) = rec.add_muxed_track("p", "alice", Kind::Audio).unwrap();
        let mut videos = [video(&own_v, None, base), video(&mux_v, Some(&mux), base)];
        let mut audios = [audio(&own_a, None), audio(&mux_a, Some(&mux))];
        // Arrivals in µs after `base`: audio from 0.3 ms, video from 10.2 ms.
        let mut events: Vec<(u64, bool, rtc::rtp::Packet)> = Vec::new();
        for i in 0..100u32 {
            if i != 40 {
                let packet = rtp(500 + i as u16, 960 * i, vec![0x78, i as u8, 2]);
                events.push((300 + 20_000 * u64::from(i), false, packet));
            }
        }
        for i in 0..60u32 {
            let packet = rtp(9000 + i as u16, 77_000 + 3000 * i, vp8(i));
            events.push((10_200 + 33_333 * u64::from(i), true, packet));
        }
        events.sort_by_key(|e| e.0);
        for (at, is_video, packet) in events {
            let now = base + Duration::from_micros(at);
            if is_video {
                videos[0].packet(&own_v, packet.clone(), now);
                videos[1].packet(&mux_v, packet, now);
            } else {
                audios[0].packet(&own_a, packet.clone(), now);
                audios[1].packet(&mux_a, packet, now);
            }
        }
        let end = base + Duration::from_micros(2_100_300);
        let [own_video, mux_video] = videos;
        let [own_audio, mux_audio] = audios;
        own_video.finish(&own_v, end);
        own_audio.finish(&own_a, end);
        mux_video.finish(&mux_v, end);
        mux_audio.finish(&mux_a, end);

        let read = |p: &PathBuf| std::fs::read(p).unwrap();
        same_as_golden("pipeline-video.webm", &read(&own_v.path));
        same_as_golden("pipeline-audio.ogg.masked", &mask_ogg(read(&own_a.path)));
        same_as_golden("pipeline-av.webm", &read(&dir.path().join(mux.name())));
        // The figures, but the start offsets (they count from the recording's zero, which is
        // not `base`).
        let mut tracks = rec.doc().tracks;
        for t in &mut tracks {
            assert!(t.start_offset_ms.is_some(), "{t:?}");
            t.start_offset_ms = None;
        }
        let figures = serde_json::to_string_pretty(&tracks).unwrap();
        same_as_golden("pipeline-figures.json", figures.as_bytes());
    }

    fn video(ctx: &TrackContext, mux: Option<&Arc<MuxFile>>, now: Instant) -> VideoPipeline {
        let clock = TrackClock::new(ctx.recording.clock().clone(), 90_000);
        let sink = match mux {
            Some(mux) => Sink::lane(Arc::clone(&ctx.entry), Arc::clone(mux)),
            None => Sink::own(Arc::clone(&ctx.entry), ctx.path.clone()),
        };
        VideoPipeline::new(clock, sink, now, None)
    }

    fn audio(ctx: &TrackContext, mux: Option<&Arc<MuxFile>>) -> AudioPipeline {
        let clock = TrackClock::new(ctx.recording.clock().clone(), 48_000);
        let sink = match mux {
            Some(mux) => Sink::lane(Arc::clone(&ctx.entry), Arc::clone(mux)),
            None => Sink::own(Arc::clone(&ctx.entry), ctx.path.clone()),
        };
        AudioPipeline::new(clock, sink)
    }
}
