//! Sending media to peers: local tracks ([`Outlet`]) and a paced pump that plays a list of
//! pre-encoded frames to every outlet of a kind ([`pump`]). Used by the `publish` client and
//! by the bots that send media (play, voicemail greetings).
//!
//! VP8 goes through webrtc-rs's sample packetizer. Opus goes out as one RTP packet per Opus
//! packet numbered here, so that silence without packets (DTX) jumps the RTP timestamp without
//! skipping sequence numbers (webrtc-rs's sample writer would skip both, which a receiver
//! counts as loss). A new video outlet sends nothing until the next keyframe, so every viewer
//! starts on one.

use super::{Pc, PeerError};
use bytes::Bytes;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::rtp_transceiver::RtpSender;

/// One pre-encoded VP8 frame or Opus packet.
#[derive(Debug, Clone)]
pub struct MediaFrame {
    /// The bitstream.
    pub data: Bytes,
    /// How long it lasts (the time to the next frame).
    pub duration: Duration,
    /// A VP8 keyframe (always true for audio: any packet starts decoding).
    pub keyframe: bool,
    /// Not sent (DTX): time passes and the RTP timestamp jumps over it.
    pub skip: bool,
}

/// The codec parameters recbot sends with.
pub fn codec(kind: RtpCodecKind) -> RTCRtpCodec {
    match kind {
        RtpCodecKind::Video => RTCRtpCodec {
            mime_type: "video/VP8".into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        _ => RTCRtpCodec {
            mime_type: "audio/opus".into(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
            rtcp_feedback: vec![],
        },
    }
}

/// How an outlet puts frames on the wire.
enum Wire {
    /// webrtc-rs packetizes (VP8).
    Sample(Arc<TrackLocalStaticSample>),
    /// One RTP packet per Opus packet, numbered here.
    Rtp {
        track: Arc<TrackLocalStaticRTP>,
        /// Next sequence number and timestamp.
        next: Mutex<(u16, u32)>,
    },
}

/// A sending track on one connection.
pub struct Outlet {
    wire: Wire,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    kind: RtpCodecKind,
    payload_type: Mutex<Option<u8>>,
    waiting_for_keyframe: AtomicBool,
    keyframe_requests: Arc<AtomicU64>,
    /// Forwarding outlets: sequence number and timestamp offsets, fixed at the first packet.
    forward_offsets: Mutex<Option<(u16, u32)>>,
}

impl Outlet {
    /// Adds a sending track of `kind` to `pc`, in media stream `stream`. Keyframe requests
    /// (PLI/FIR) for a video outlet are counted and reported through `on_keyframe_request`.
    pub async fn add(
        pc: &Pc,
        kind: RtpCodecKind,
        stream: &str,
        on_keyframe_request: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Result<Arc<Self>, PeerError> {
        Self::build(pc, kind, stream, on_keyframe_request, false).await
    }

    /// Adds a sending track of `kind` to `pc` that forwards RTP packets received elsewhere
    /// with [`forward`](Self::forward), without depacketizing them (an echo: no transcoding).
    /// Keyframe requests (PLI/FIR) for video are counted and reported through
    /// `on_keyframe_request`, as with [`add`](Self::add). Such an outlet takes packets only:
    /// [`write`](Self::write) is for outlets made by `add`.
    pub async fn add_forwarding(
        pc: &Pc,
        kind: RtpCodecKind,
        stream: &str,
        on_keyframe_request: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Result<Arc<Self>, PeerError> {
        Self::build(pc, kind, stream, on_keyframe_request, true).await
    }

    async fn build(
        pc: &Pc,
        kind: RtpCodecKind,
        stream: &str,
        on_keyframe_request: Option<Arc<dyn Fn() + Send + Sync>>,
        forwarding: bool,
    ) -> Result<Arc<Self>, PeerError> {
        let ssrc = rand::random::<u32>();
        let label = if kind == RtpCodecKind::Video {
            "video"
        } else {
            "audio"
        };
        let description = MediaStreamTrack::new(
            stream.to_owned(),
            format!("{label}-{ssrc:08x}"),
            label.into(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec(kind),
                ..Default::default()
            }],
        );
        let keyframe_requests = Arc::new(AtomicU64::new(0));
        let listen = |track: Arc<dyn TrackLocal>| {
            if kind == RtpCodecKind::Video {
                listen_for_keyframe_requests(
                    track,
                    Arc::clone(&keyframe_requests),
                    on_keyframe_request.clone(),
                );
            }
        };
        // Audio and forwarded packets go out as RTP numbered here; sent VP8 is packetized
        // by webrtc-rs.
        let (wire, sender) = if forwarding || kind == RtpCodecKind::Audio {
            let track = Arc::new(TrackLocalStaticRTP::new(description));
            let sender = pc
                .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                .await?;
            listen(Arc::clone(&track) as Arc<dyn TrackLocal>);
            let next = Mutex::new((rand::random(), rand::random()));
            (Wire::Rtp { track, next }, sender)
        } else {
            let track = Arc::new(TrackLocalStaticSample::new(Instant::now(), description)?);
            let sender = pc
                .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                .await?;
            listen(Arc::clone(&track) as Arc<dyn TrackLocal>);
            (Wire::Sample(track), sender)
        };
        Ok(Arc::new(Self {
            wire,
            sender,
            ssrc,
            kind,
            payload_type: Mutex::new(None),
            // A viewer of sent video starts on a keyframe; forwarded packets pass as they come.
            waiting_for_keyframe: AtomicBool::new(kind == RtpCodecKind::Video && !forwarding),
            keyframe_requests,
            forward_offsets: Mutex::new(None),
        }))
    }

    /// Video or audio.
    pub fn kind(&self) -> RtpCodecKind {
        self.kind
    }

    /// Keyframe requests received so far (video).
    pub fn keyframe_requests(&self) -> u64 {
        self.keyframe_requests.load(Ordering::Relaxed)
    }

    /// Forwards one received RTP packet on a forwarding outlet: this outlet's SSRC and
    /// negotiated payload type, the sequence number and timestamp shifted by offsets fixed at
    /// the first forwarded packet (so losses, reordering and DTX gaps pass through as they
    /// came), the marker bit and payload as received, header extensions left to this
    /// connection's interceptors. Send errors (not connected yet, closed) drop the packet.
    pub async fn forward(&self, packet: rtc::rtp::Packet) {
        let Wire::Rtp { track, next } = &self.wire else {
            return;
        };
        let Some(pt) = self.payload_type().await else {
            return;
        };
        let h = &packet.header;
        let (seq_offset, ts_offset) = {
            let mut offsets = self
                .forward_offsets
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *offsets.get_or_insert_with(|| {
                let base = *next.lock().unwrap_or_else(|e| e.into_inner());
                (
                    base.0.wrapping_sub(h.sequence_number),
                    base.1.wrapping_sub(h.timestamp),
                )
            })
        };
        let out = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: h.marker,
                payload_type: pt,
                sequence_number: h.sequence_number.wrapping_add(seq_offset),
                timestamp: h.timestamp.wrapping_add(ts_offset),
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: packet.payload,
        };
        let _ = track.write_rtp(out).await;
    }

    async fn payload_type(&self) -> Option<u8> {
        let cached = *self.payload_type.lock().unwrap_or_else(|e| e.into_inner());
        if cached.is_some() {
            return cached;
        }
        let params = self.sender.get_parameters().await.ok()?;
        let pt = params
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)?;
        *self.payload_type.lock().unwrap_or_else(|e| e.into_inner()) = Some(pt);
        Some(pt)
    }

    /// Sends `frame`, after `skipped` of media that was not sent (DTX). A video outlet sends
    /// nothing before its first keyframe. Send errors (not connected yet, closed) drop the
    /// frame; the RTP clock runs on as a live sender's would.
    pub async fn write(&self, frame: &MediaFrame, skipped: Duration) {
        if self.waiting_for_keyframe.load(Ordering::Relaxed) {
            if !frame.keyframe {
                return;
            }
            self.waiting_for_keyframe.store(false, Ordering::Relaxed);
        }
        let pt = self.payload_type().await;
        match &self.wire {
            Wire::Sample(track) => {
                let Some(pt) = pt else {
                    return;
                };
                let sample = Sample {
                    data: frame.data.clone(),
                    duration: frame.duration,
                    ..Sample::new(Instant::now())
                };
                let _ = track
                    .sample_writer(self.ssrc, pt)
                    .write_sample(&sample)
                    .await;
            }
            Wire::Rtp { track, next } => {
                let samples = |d: Duration| (d.as_micros() * 48 / 1000) as u32;
                let (seq, ts) = {
                    let mut next = next.lock().unwrap_or_else(|e| e.into_inner());
                    let ts = next.1.wrapping_add(samples(skipped));
                    let seq = next.0;
                    *next = (
                        seq.wrapping_add(1),
                        ts.wrapping_add(samples(frame.duration)),
                    );
                    (seq, ts)
                };
                let Some(pt) = pt else {
                    return;
                };
                let packet = rtc::rtp::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        payload_type: pt,
                        sequence_number: seq,
                        timestamp: ts,
                        ssrc: self.ssrc,
                        ..Default::default()
                    },
                    payload: frame.data.clone(),
                };
                let _ = track.write_rtp(packet).await;
            }
        }
    }
}

/// Counts keyframe requests (PLI/FIR) arriving as RTCP on a sent track, and reports each.
fn listen_for_keyframe_requests(
    track: Arc<dyn TrackLocal>,
    count: Arc<AtomicU64>,
    callback: Option<Arc<dyn Fn() + Send + Sync>>,
) {
    tokio::spawn(async move {
        while let Some(event) = track.poll().await {
            let TrackLocalEvent::OnRtcpPacket(packets) = event else {
                continue;
            };
            let asks = packets.iter().any(|p| {
                let any = p.as_any();
                any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
            });
            if asks {
                count.fetch_add(1, Ordering::Relaxed);
                if let Some(callback) = &callback {
                    callback();
                }
            }
        }
    });
}

/// The outlets a pump sends to, by remote peer; add and remove them while it runs.
#[derive(Default)]
pub struct Outlets {
    list: Vec<(String, Arc<Outlet>)>,
}

impl Outlets {
    /// Adds an outlet toward `peer`.
    pub fn add(&mut self, peer: &str, outlet: Arc<Outlet>) {
        self.list.push((peer.to_owned(), outlet));
    }

    /// Removes every outlet toward `peer`.
    pub fn remove_peer(&mut self, peer: &str) {
        self.list.retain(|(p, _)| p != peer);
    }

    /// The outlets of `kind`.
    pub fn of(&self, kind: RtpCodecKind) -> Vec<Arc<Outlet>> {
        self.list
            .iter()
            .filter(|(_, o)| o.kind() == kind)
            .map(|(_, o)| Arc::clone(o))
            .collect()
    }
}

/// Shared handle on a set of outlets.
pub type SharedOutlets = Arc<Mutex<Outlets>>;

/// What a [`pump`] does.
#[derive(Clone)]
pub struct PumpOptions {
    /// Which outlets (video or audio).
    pub kind: RtpCodecKind,
    /// Start again at the end.
    pub looping: bool,
    /// When raised, continue from the next keyframe (an encoder answering a PLI); `None` to
    /// keep the frames' own pace.
    pub keyframe_wanted: Option<Arc<AtomicBool>>,
    /// Counts frames sent.
    pub sent: Arc<AtomicU64>,
}

/// Sends `frames` to the outlets of `options.kind` at real-time pace from the frames' own
/// durations, until `leave` is cancelled (or the end, without looping). Returns when done.
pub async fn pump(
    frames: Arc<[MediaFrame]>,
    outlets: SharedOutlets,
    options: PumpOptions,
    leave: CancellationToken,
) {
    if frames.is_empty() {
        return;
    }
    let start = tokio::time::Instant::now();
    let mut clock = Duration::ZERO;
    let mut index = 0usize;
    let mut skipped = Duration::ZERO;
    while !leave.is_cancelled() {
        if index == frames.len() {
            if !options.looping {
                return;
            }
            index = 0;
        }
        if frames[index].skip {
            skipped += frames[index].duration;
            clock += frames[index].duration;
            index += 1;
            continue;
        }
        tokio::time::sleep_until(start + clock).await;
        if let Some(wanted) = &options.keyframe_wanted {
            if wanted.swap(false, Ordering::Relaxed) && !frames[index].keyframe {
                index = (index..frames.len())
                    .chain(0..index)
                    .find(|&i| frames[i].keyframe)
                    .unwrap_or(0);
            }
        }
        let frame = &frames[index];
        let gap = std::mem::take(&mut skipped);
        let targets = outlets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .of(options.kind);
        for outlet in &targets {
            outlet.write(frame, gap).await;
        }
        options.sent.fetch_add(1, Ordering::Relaxed);
        clock += frame.duration;
        index += 1;
    }
}
