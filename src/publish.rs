//! `recbot publish`: joins a room over the WebSocket signaling as ordinary peer(s) and sends
//! pre-encoded VP8 (IVF) and Opus (Ogg) at real-time pace, looping. The manual test client,
//! the integration tests' publisher and the load generator.
//!
//! It uses the same room machinery as the bots ([`crate::peer::room`]). By default it connects
//! only to bots (a recorder needs its media; other publishers do not); `--mesh` connects to
//! everyone. Like an encoder, it answers a keyframe request (PLI/FIR) by jumping to the
//! clip's next keyframe.

use crate::media::ivf::IvfReader;
use crate::peer::negotiation::Role;
use crate::peer::room::{Behaviour, RoomPeer};
use crate::peer::{Pc, PeerConfig, PeerError, PeerFactory};
use crate::record::ogg::read_ogg_opus;
use crate::signal::protocol::{PeerInfo, ServerMessage};
use async_trait::async_trait;
use bytes::Bytes;
use clap::Args;
use futures::{SinkExt, StreamExt};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::rtp_transceiver::RtpSender;

/// Options of `recbot publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Base URL of the service.
    #[arg(long, env = "RECBOT_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Room to join.
    #[arg(long)]
    pub room: String,
    /// VP8 clip (IVF) to send.
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Opus clip (Ogg) to send.
    #[arg(long)]
    pub audio: Option<PathBuf>,
    /// Display name (with `--count`, `-N` is appended).
    #[arg(long, default_value = "publisher")]
    pub name: String,
    /// How many publishers to run.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Room token.
    #[arg(long, env = "RECBOT_ROOM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Connect to every peer, not only to bots.
    #[arg(long)]
    pub mesh: bool,
    /// Simulate a bad network: drop this fraction of outgoing RTP packets (e.g. 0.05).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
}

/// How a publisher behaves.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Room token.
    pub token: Option<String>,
    /// Connect to every peer, not only to bots.
    pub mesh: bool,
    /// Ignore keyframe requests (keep the clip's own pace; audio and video stay in step).
    pub ignore_keyframe_requests: bool,
}

/// Errors of the publisher.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A clip could not be read.
    #[error("clip {0}: {1}")]
    Clip(PathBuf, String),
    /// Neither video nor audio given.
    #[error("nothing to send: give --video and/or --audio")]
    NoMedia,
    /// The signaling connection failed.
    #[error("signaling: {0}")]
    Signal(String),
}

/// One video frame or Opus packet of a clip.
#[derive(Debug, Clone)]
struct ClipFrame {
    data: Bytes,
    duration: Duration,
    /// A VP8 keyframe (always true for audio: any packet starts decoding).
    keyframe: bool,
    /// Not sent (DTX): time passes and the RTP timestamp jumps over it.
    skip: bool,
}

/// Media to publish, loaded once and shared by every publisher.
#[derive(Debug, Default, Clone)]
pub struct Clip {
    video: Vec<ClipFrame>,
    audio: Vec<ClipFrame>,
}

impl Clip {
    /// Loads an IVF (VP8) and/or Ogg Opus clip.
    pub fn load(video: Option<&Path>, audio: Option<&Path>) -> Result<Arc<Self>, PublishError> {
        let mut clip = Clip::default();
        if let Some(path) = video {
            clip.video = load_ivf(path)?;
        }
        if let Some(path) = audio {
            let err = |e: String| PublishError::Clip(path.to_owned(), e);
            let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
            let info =
                read_ogg_opus(std::io::BufReader::new(file)).map_err(|e| err(e.to_string()))?;
            clip.audio = info
                .packets
                .into_iter()
                .filter(|p| p.samples > 0)
                .map(|p| ClipFrame {
                    duration: Duration::from_micros(u64::from(p.samples) * 1_000_000 / 48_000),
                    data: Bytes::from(p.data),
                    keyframe: true,
                    skip: false,
                })
                .collect();
            if clip.audio.is_empty() {
                return Err(err("no audio packets".into()));
            }
        }
        if clip.video.is_empty() && clip.audio.is_empty() {
            return Err(PublishError::NoMedia);
        }
        Ok(Arc::new(clip))
    }

    /// Like [`load`](Self::load) with several IVF clips played one after the other (sizes may
    /// differ: a resolution change mid-stream).
    pub fn load_sequence(
        videos: &[&Path],
        audio: Option<&Path>,
    ) -> Result<Arc<Self>, PublishError> {
        let mut clip = Self::load(None, audio)
            .map(|c| (*c).clone())
            .unwrap_or_default();
        for path in videos {
            clip.video.extend(load_ivf(path)?);
        }
        if clip.video.is_empty() && clip.audio.is_empty() {
            return Err(PublishError::NoMedia);
        }
        Ok(Arc::new(clip))
    }

    /// A copy in which the audio packets from `from` for `length` (clip time) are not sent,
    /// as a sender in DTX would do: the RTP timestamps jump over the silence.
    pub fn with_audio_gap(&self, from: Duration, length: Duration) -> Arc<Self> {
        let mut clip = self.clone();
        let mut at = Duration::ZERO;
        for frame in &mut clip.audio {
            frame.skip = at >= from && at < from + length;
            at += frame.duration;
        }
        Arc::new(clip)
    }

    /// Length of the video and of the audio loop.
    pub fn lengths(&self) -> (Duration, Duration) {
        let sum = |v: &[ClipFrame]| v.iter().map(|f| f.duration).sum();
        (sum(&self.video), sum(&self.audio))
    }
}

fn load_ivf(path: &Path) -> Result<Vec<ClipFrame>, PublishError> {
    let err = |e: String| PublishError::Clip(path.to_owned(), e);
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let (mut reader, header) =
        IvfReader::new(std::io::BufReader::new(file)).map_err(|e| err(e.to_string()))?;
    if &header.fourcc != b"VP80" {
        return Err(err("not a VP8 IVF file".into()));
    }
    let mut frames: Vec<(u64, Bytes)> = Vec::new();
    while let Some(frame) = reader.next_frame().map_err(|e| err(e.to_string()))? {
        frames.push((frame.pts, Bytes::from(frame.data)));
    }
    let tick = header
        .pts_to_duration(1)
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_millis(33));
    let mut out = Vec::with_capacity(frames.len());
    for (i, (pts, data)) in frames.iter().enumerate() {
        let next = frames.get(i + 1).map_or(pts + 1, |f| f.0);
        let duration = header
            .pts_to_duration(next.saturating_sub(*pts).max(1))
            .unwrap_or(tick);
        out.push(ClipFrame {
            skip: false,
            keyframe: data.first().is_some_and(|b| b & 1 == 0),
            data: data.clone(),
            duration,
        });
    }
    if out.first().is_none_or(|f| !f.keyframe) {
        return Err(err("the clip must start with a keyframe".into()));
    }
    Ok(out)
}

/// Counters of one publisher.
#[derive(Debug, Default)]
pub struct PublishStats {
    /// Video frames handed to connections.
    pub video_frames: AtomicU64,
    /// Audio packets handed to connections.
    pub audio_packets: AtomicU64,
    /// Keyframe requests received.
    pub keyframe_requests: AtomicU64,
}

/// How an outlet puts frames on the wire.
enum Wire {
    /// webrtc-rs packetizes (VP8).
    Sample(Arc<TrackLocalStaticSample>),
    /// One RTP packet per Opus packet, numbered here, so that DTX can jump the timestamp
    /// without skipping sequence numbers (webrtc-rs's sample writer skips both).
    Rtp {
        track: Arc<TrackLocalStaticRTP>,
        /// Next sequence number and timestamp.
        next: Mutex<(u16, u32)>,
    },
}

/// Local track of one connection.
struct Outlet {
    wire: Wire,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    payload_type: Mutex<Option<u8>>,
}

impl Outlet {
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

    /// Sends `frame`, after `skipped` of media that was not sent (DTX).
    async fn write(&self, frame: &ClipFrame, skipped: Duration) {
        // Errors mean "not connected yet" or "closed": the frame is simply not sent, but the
        // RTP clock runs on as a live sender's would.
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

#[derive(Default)]
struct Outlets {
    video: Vec<Arc<Outlet>>,
    audio: Vec<Arc<Outlet>>,
}

/// The publisher's behaviour in the room.
struct Publisher {
    clip: Arc<Clip>,
    mesh: bool,
    outlets: Arc<Mutex<Outlets>>,
    keyframe_wanted: Arc<AtomicBool>,
    stats: Arc<PublishStats>,
}

fn codec(kind: RtpCodecKind) -> RTCRtpCodec {
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

impl Publisher {
    async fn add(&self, pc: &Pc, kind: RtpCodecKind) -> Result<Arc<Outlet>, PeerError> {
        let ssrc = rand::random::<u32>();
        let label = if kind == RtpCodecKind::Video {
            "video"
        } else {
            "audio"
        };
        let description = MediaStreamTrack::new(
            "recbot-publish".into(),
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
        if kind == RtpCodecKind::Audio {
            let track = Arc::new(TrackLocalStaticRTP::new(description));
            let sender = pc
                .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                .await?;
            return Ok(Arc::new(Outlet {
                wire: Wire::Rtp {
                    track,
                    next: Mutex::new((rand::random(), rand::random())),
                },
                sender,
                ssrc,
                payload_type: Mutex::new(None),
            }));
        }
        let track = Arc::new(TrackLocalStaticSample::new(Instant::now(), description)?);
        let sender = pc
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await?;
        if kind == RtpCodecKind::Video {
            // Keyframe requests arrive as RTCP on the sent track.
            let wanted = Arc::clone(&self.keyframe_wanted);
            let stats = Arc::clone(&self.stats);
            let events = Arc::clone(&track);
            tokio::spawn(async move {
                while let Some(TrackLocalEvent::OnRtcpPacket(packets)) = events.poll().await {
                    let asks = packets.iter().any(|p| {
                        let any = p.as_any();
                        any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
                    });
                    if asks {
                        stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                        wanted.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
        Ok(Arc::new(Outlet {
            wire: Wire::Sample(track),
            sender,
            ssrc,
            payload_type: Mutex::new(None),
        }))
    }
}

#[async_trait]
impl Behaviour for Publisher {
    fn wants(&self, peer: &PeerInfo) -> bool {
        self.mesh || peer.bot
    }

    async fn setup(&self, _peer: &PeerInfo, pc: &Pc, _role: Role) -> Result<(), PeerError> {
        let video = if self.clip.video.is_empty() {
            None
        } else {
            Some(self.add(pc, RtpCodecKind::Video).await?)
        };
        let audio = if self.clip.audio.is_empty() {
            None
        } else {
            Some(self.add(pc, RtpCodecKind::Audio).await?)
        };
        let mut outlets = self.outlets.lock().unwrap_or_else(|e| e.into_inner());
        outlets.video.extend(video);
        outlets.audio.extend(audio);
        // A new viewer needs a keyframe to start decoding.
        self.keyframe_wanted.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn on_track(&self, _peer: &PeerInfo, track: Arc<dyn TrackRemote>) {
        // Nothing is done with received media; reading it keeps webrtc-rs's queue empty.
        while track.poll().await.is_some() {}
    }
}

/// A running publisher.
pub struct PublisherHandle {
    /// Its peer id in the room.
    pub id: String,
    /// Its counters.
    pub stats: Arc<PublishStats>,
    leave: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl PublisherHandle {
    /// Leaves the room (sends `leave`, closes connections) and waits for it.
    pub async fn leave(self) {
        self.leave.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

fn ws_url(server: &str, room: &str, name: &str, token: Option<&str>) -> String {
    let base = server.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let mut url = format!("{base}/rooms/{room}/ws?name={}", enc(name));
    if let Some(token) = token {
        url.push_str(&format!("&token={}", enc(token)));
    }
    url
}

/// Joins `room` on `server` as `name` and starts sending `clip`.
pub async fn start(
    server: &str,
    room: &str,
    name: &str,
    clip: Arc<Clip>,
    factory: Arc<PeerFactory>,
    options: PublishOptions,
) -> Result<PublisherHandle, PublishError> {
    let url = ws_url(server, room, name, options.token.as_deref());
    let mesh = options.mesh;
    let (ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .map_err(|e| PublishError::Signal(e.to_string()))?;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let welcome = loop {
        match ws_rx.next().await {
            Some(Ok(Message::Text(text))) => {
                match serde_json::from_str::<ServerMessage>(text.as_str()) {
                    Ok(m @ ServerMessage::Welcome { .. }) => break m,
                    Ok(_) | Err(_) => continue,
                }
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(PublishError::Signal(e.to_string())),
            None => return Err(PublishError::Signal("closed before welcome".into())),
        }
    };
    let ServerMessage::Welcome { id, .. } = &welcome else {
        return Err(PublishError::Signal("no welcome".into()));
    };
    let id = id.clone();
    let stats = Arc::new(PublishStats::default());
    let outlets = Arc::new(Mutex::new(Outlets::default()));
    let keyframe_wanted = Arc::new(AtomicBool::new(false));
    let behaviour = Arc::new(Publisher {
        clip: Arc::clone(&clip),
        mesh,
        outlets: Arc::clone(&outlets),
        keyframe_wanted: Arc::clone(&keyframe_wanted),
        stats: Arc::clone(&stats),
    });
    let me = PeerInfo {
        id: id.clone(),
        name: name.to_owned(),
        bot: false,
        whip: false,
    };
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let (in_tx, in_rx) = mpsc::channel(512);
    let (leave_tx, leave_rx) = watch::channel(false);
    let presence = RoomPeer::new(me, factory, behaviour, out_tx);
    let room_task = tokio::spawn(presence.run(in_rx, leave_rx.clone()));
    let _ = in_tx.send(welcome).await;
    let pumps = [
        (clip.video.clone(), RtpCodecKind::Video),
        (clip.audio.clone(), RtpCodecKind::Audio),
    ]
    .map(|(frames, kind)| {
        let keyframes = if options.ignore_keyframe_requests {
            Arc::new(AtomicBool::new(false))
        } else {
            Arc::clone(&keyframe_wanted)
        };
        tokio::spawn(pump(
            frames,
            kind,
            Arc::clone(&outlets),
            keyframes,
            Arc::clone(&stats),
            leave_rx.clone(),
        ))
    });
    let mut leave = leave_rx;
    let task = tokio::spawn(async move {
        tokio::pin!(room_task);
        let mut room_ended = false;
        loop {
            tokio::select! {
                _ = &mut room_task => {
                    room_ended = true;
                    break;
                }
                frame = ws_rx.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Ok(message) = serde_json::from_str::<ServerMessage>(text.as_str()) {
                            if in_tx.send(message).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
                Some(out) = out_rx.recv() => {
                    if ws_tx.send(Message::Text(out.to_json().into())).await.is_err() {
                        break;
                    }
                }
                _ = crate::util::until_true(&mut leave) => {
                    let leave = crate::signal::protocol::ClientMessage::Leave.to_json();
                    let _ = ws_tx.send(Message::Text(leave.into())).await;
                    break;
                }
            }
        }
        drop(in_tx);
        if !room_ended {
            let _ = tokio::time::timeout(Duration::from_secs(3), room_task).await;
        }
        for pump in pumps {
            pump.abort();
        }
        let _ = ws_tx.close().await;
    });
    Ok(PublisherHandle {
        id,
        stats,
        leave: leave_tx,
        task,
    })
}

/// Sends `frames` to the outlets of `kind` at real-time pace, looping, until `leave`. When
/// `keyframe_wanted` is raised, continues from the next keyframe, as an encoder would.
async fn pump(
    frames: Vec<ClipFrame>,
    kind: RtpCodecKind,
    outlets: Arc<Mutex<Outlets>>,
    keyframe_wanted: Arc<AtomicBool>,
    sent: Arc<PublishStats>,
    leave: watch::Receiver<bool>,
) {
    if frames.is_empty() {
        return;
    }
    let start = tokio::time::Instant::now();
    let mut clock = Duration::ZERO;
    let mut index = 0usize;
    let mut skipped = Duration::ZERO;
    while !*leave.borrow() {
        if frames[index].skip {
            skipped += frames[index].duration;
            clock += frames[index].duration;
            index = (index + 1) % frames.len();
            continue;
        }
        tokio::time::sleep_until(start + clock).await;
        if kind == RtpCodecKind::Video
            && keyframe_wanted.swap(false, Ordering::Relaxed)
            && !frames[index].keyframe
        {
            index = (index..frames.len())
                .chain(0..index)
                .find(|&i| frames[i].keyframe)
                .unwrap_or(0);
        }
        let frame = &frames[index];
        let gap = std::mem::take(&mut skipped);
        let targets = {
            let outlets = outlets.lock().unwrap_or_else(|e| e.into_inner());
            if kind == RtpCodecKind::Video {
                outlets.video.clone()
            } else {
                outlets.audio.clone()
            }
        };
        for outlet in &targets {
            outlet.write(frame, gap).await;
        }
        let counter = if kind == RtpCodecKind::Video {
            &sent.video_frames
        } else {
            &sent.audio_packets
        };
        counter.fetch_add(1, Ordering::Relaxed);
        clock += frame.duration;
        index = (index + 1) % frames.len();
    }
}

/// The `recbot publish` command: runs `count` publishers until Ctrl-C or `--duration`.
pub async fn run(args: PublishArgs) -> Result<(), PublishError> {
    let clip = Clip::load(args.video.as_deref(), args.audio.as_deref())?;
    let mut config = PeerConfig::loopback_and_all();
    if args.loss > 0.0 {
        config.outbound_loss = Some(crate::peer::LossSpec {
            drop: args.loss.min(1.0),
            reorder: args.loss.min(1.0),
            seed: rand::random(),
        });
    }
    let factory = PeerFactory::new(config);
    let options = PublishOptions {
        token: args.token.clone(),
        mesh: args.mesh,
        ignore_keyframe_requests: false,
    };
    let mut handles = Vec::new();
    for i in 0..args.count.max(1) {
        let name = if args.count > 1 {
            format!("{}-{}", args.name, i + 1)
        } else {
            args.name.clone()
        };
        let handle = start(
            &args.server,
            &args.room,
            &name,
            Arc::clone(&clip),
            Arc::clone(&factory),
            options.clone(),
        )
        .await?;
        tracing::info!(peer = %handle.id, name, room = %args.room, "publishing");
        handles.push(handle);
    }
    match args.duration {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    for handle in handles {
        handle.leave().await;
    }
    Ok(())
}
