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
use crate::peer::outlet::{pump, MediaFrame, Outlet, PumpOptions, SharedOutlets};
use crate::peer::room::{Behaviour, RoomPeer};
use crate::peer::{Pc, PeerConfig, PeerError, PeerFactory};
use crate::record::ogg::read_ogg_opus;
use crate::signal::protocol::{PeerInfo, ServerMessage};
use async_trait::async_trait;
use bytes::Bytes;
use clap::Args;
use futures::{SinkExt, StreamExt};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::RTCSessionDescription;

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
    /// Publish over WHIP to this endpoint instead of the WebSocket signaling
    /// (e.g. `http://127.0.0.1:8080/rooms/demo/whip`); `--room` is then ignored.
    #[arg(long)]
    pub whip: Option<String>,
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

/// Media to publish, loaded once and shared by every publisher.
#[derive(Debug, Default, Clone)]
pub struct Clip {
    video: Vec<MediaFrame>,
    audio: Vec<MediaFrame>,
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
            let mut packets: Vec<_> = info.packets.into_iter().filter(|p| p.samples > 0).collect();
            let playable = info
                .final_granule
                .map(|g| g.saturating_sub(u64::from(info.pre_skip)));
            let samples: Vec<u32> = packets.iter().map(|p| p.samples).collect();
            packets.truncate(loop_packets(&samples, playable));
            clip.audio = packets
                .into_iter()
                .map(|p| MediaFrame {
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
        let sum = |v: &[MediaFrame]| v.iter().map(|f| f.duration).sum();
        (sum(&self.video), sum(&self.audio))
    }
}

/// How many of an Ogg Opus clip's packets (`samples` each, in order) make one loop whose RTP
/// length is nearest its playable length (`playable`: final granule − pre-skip, RFC 7845).
///
/// Encoders pad the last packet, and the file's final granule trims it: played whole on every
/// loop, that padding (plus the pre-skip the receiver plays as audio at each restart) makes the
/// audio loop longer than the clip (6.02 s for a 6 s clip of 20 ms packets), and a looping
/// publisher's audio drifts one packet later than its video per loop. Packets are kept while
/// the loop's end stays within half a packet of `playable`; all of them without a granule.
pub fn loop_packets(samples: &[u32], playable: Option<u64>) -> usize {
    let Some(playable) = playable else {
        return samples.len();
    };
    let mut total = 0u64;
    for (i, &n) in samples.iter().enumerate() {
        if i > 0 && total + u64::from(n) / 2 > playable {
            return i;
        }
        total += u64::from(n);
    }
    samples.len()
}

fn load_ivf(path: &Path) -> Result<Vec<MediaFrame>, PublishError> {
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
        out.push(MediaFrame {
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
    pub video_frames: Arc<AtomicU64>,
    /// Audio packets handed to connections.
    pub audio_packets: Arc<AtomicU64>,
    /// Keyframe requests received.
    pub keyframe_requests: AtomicU64,
}

/// The publisher's behaviour in the room.
struct Publisher {
    clip: Arc<Clip>,
    mesh: bool,
    outlets: SharedOutlets,
    keyframe_wanted: Arc<AtomicBool>,
    stats: Arc<PublishStats>,
}

impl Publisher {
    async fn add(&self, pc: &Pc, peer: &str, kind: RtpCodecKind) -> Result<(), PeerError> {
        let callback: Option<Arc<dyn Fn() + Send + Sync>> = if kind == RtpCodecKind::Video {
            let wanted = Arc::clone(&self.keyframe_wanted);
            let stats = Arc::clone(&self.stats);
            Some(Arc::new(move || {
                stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                wanted.store(true, Ordering::Relaxed);
            }))
        } else {
            None
        };
        let outlet = Outlet::add(pc, kind, "recbot-publish", callback).await?;
        self.outlets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(peer, outlet);
        Ok(())
    }
}

#[async_trait]
impl Behaviour for Publisher {
    fn wants(&self, peer: &PeerInfo) -> bool {
        self.mesh || peer.bot
    }

    async fn setup(&self, peer: &PeerInfo, pc: &Pc, _role: Role) -> Result<(), PeerError> {
        if !self.clip.video.is_empty() {
            self.add(pc, &peer.id, RtpCodecKind::Video).await?;
        }
        if !self.clip.audio.is_empty() {
            self.add(pc, &peer.id, RtpCodecKind::Audio).await?;
        }
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
    let mut url = format!("{base}/rooms/{room}/ws?name={}", encode_query(name));
    if let Some(token) = token {
        url.push_str(&format!("&token={}", encode_query(token)));
    }
    url
}

/// Percent-encodes a query value.
fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A peer's presence in a room over the WebSocket signaling, driven by a [`Behaviour`].
pub struct RoomConnection {
    /// Its peer id (from the `welcome`).
    pub id: String,
    /// Set to true to leave (sends `leave`, closes the connections and the socket).
    pub leave: watch::Sender<bool>,
    /// Ends once the peer has left.
    pub task: tokio::task::JoinHandle<()>,
}

/// Joins a room over the WebSocket at `url` (`ws://host/rooms/R/ws?name=…`) as `name`, with
/// the shared room machinery ([`RoomPeer`]) running `behaviour`: the client side of what the
/// bots do in-process. Used by `recbot publish` and by tests that need a peer of their own.
pub async fn connect_room(
    url: &str,
    name: &str,
    factory: Arc<PeerFactory>,
    behaviour: Arc<dyn Behaviour>,
) -> Result<RoomConnection, PublishError> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
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
        let _ = ws_tx.close().await;
    });
    Ok(RoomConnection {
        id,
        leave: leave_tx,
        task,
    })
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
    let stats = Arc::new(PublishStats::default());
    let outlets: SharedOutlets = Arc::default();
    let keyframe_wanted = Arc::new(AtomicBool::new(false));
    let behaviour = Arc::new(Publisher {
        clip: Arc::clone(&clip),
        mesh: options.mesh,
        outlets: Arc::clone(&outlets),
        keyframe_wanted: Arc::clone(&keyframe_wanted),
        stats: Arc::clone(&stats),
    });
    let connection = connect_room(&url, name, factory, behaviour).await?;
    let pumps = spawn_pumps(
        &clip,
        &outlets,
        (!options.ignore_keyframe_requests).then(|| Arc::clone(&keyframe_wanted)),
        &stats,
        &connection.leave.subscribe(),
    );
    let room = connection.task;
    let task = tokio::spawn(async move {
        let _ = room.await;
        for pump in pumps {
            pump.abort();
        }
    });
    Ok(PublisherHandle {
        id: connection.id,
        stats,
        leave: connection.leave,
        task,
    })
}

/// Starts the pumps playing `clip` (video and audio, looping) to `outlets`.
fn spawn_pumps(
    clip: &Clip,
    outlets: &SharedOutlets,
    keyframe_wanted: Option<Arc<AtomicBool>>,
    stats: &PublishStats,
    leave: &watch::Receiver<bool>,
) -> [tokio::task::JoinHandle<()>; 2] {
    [
        (&clip.video, RtpCodecKind::Video, &stats.video_frames),
        (&clip.audio, RtpCodecKind::Audio, &stats.audio_packets),
    ]
    .map(|(frames, kind, sent)| {
        let frames: Arc<[MediaFrame]> = frames.as_slice().into();
        tokio::spawn(pump(
            frames,
            Arc::clone(outlets),
            PumpOptions {
                kind,
                looping: true,
                keyframe_wanted: keyframe_wanted
                    .clone()
                    .filter(|_| kind == RtpCodecKind::Video),
                sent: Arc::clone(sent),
            },
            leave.clone(),
        ))
    })
}

/// Signals the end of ICE gathering of a WHIP client's connection.
struct WhipClientHandler {
    gathered: watch::Sender<bool>,
}

#[async_trait]
impl webrtc::peer_connection::PeerConnectionEventHandler for WhipClientHandler {
    async fn on_ice_gathering_state_change(
        &self,
        state: webrtc::peer_connection::RTCIceGatheringState,
    ) {
        if state == webrtc::peer_connection::RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }
}

/// Publishes `clip` to a WHIP endpoint (`url`, e.g. `http://host/rooms/R/whip?name=N`):
/// one offer with every candidate in it, the answer from the `201`, `DELETE` on the session's
/// Location when leaving. Plain HTTP only.
pub async fn start_whip(
    url: &str,
    token: Option<&str>,
    clip: Arc<Clip>,
    factory: Arc<PeerFactory>,
) -> Result<PublisherHandle, PublishError> {
    let signal = |e: &dyn std::fmt::Display| PublishError::Signal(e.to_string());
    let (gathered, mut gathered_rx) = watch::channel(false);
    let pc = factory
        .build(Arc::new(WhipClientHandler { gathered }))
        .await
        .map_err(|e| signal(&e))?;
    let stats = Arc::new(PublishStats::default());
    let outlets: SharedOutlets = Arc::default();
    let keyframe_wanted = Arc::new(AtomicBool::new(false));
    let publisher = Publisher {
        clip: Arc::clone(&clip),
        mesh: false,
        outlets: Arc::clone(&outlets),
        keyframe_wanted: Arc::clone(&keyframe_wanted),
        stats: Arc::clone(&stats),
    };
    for (frames, kind) in [
        (&clip.video, RtpCodecKind::Video),
        (&clip.audio, RtpCodecKind::Audio),
    ] {
        if !frames.is_empty() {
            publisher
                .add(&pc, "whip", kind)
                .await
                .map_err(|e| signal(&e))?;
        }
    }
    let offer = pc.create_offer(None).await.map_err(|e| signal(&e))?;
    pc.set_local_description(offer)
        .await
        .map_err(|e| signal(&e))?;
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        crate::util::until_true(&mut gathered_rx),
    )
    .await;
    let sdp = pc
        .local_description()
        .await
        .map(|d| d.sdp)
        .ok_or_else(|| PublishError::Signal("no local offer".into()))?;
    let http = reqwest::Client::new();
    let mut request = http
        .post(url)
        .header("content-type", "application/sdp")
        .body(sdp);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| signal(&e))?;
    if response.status() != reqwest::StatusCode::CREATED {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let _ = pc.close().await;
        return Err(PublishError::Signal(format!(
            "WHIP answered {status}: {body}"
        )));
    }
    let location = response
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| PublishError::Signal("WHIP answer without Location".into()))?;
    let session = response.url().join(&location).map_err(|e| signal(&e))?;
    let answer = response.text().await.map_err(|e| signal(&e))?;
    let answer = RTCSessionDescription::answer(answer).map_err(|e| signal(&e))?;
    pc.set_remote_description(answer)
        .await
        .map_err(|e| signal(&e))?;
    let (leave_tx, leave_rx) = watch::channel(false);
    let pumps = spawn_pumps(
        &clip,
        &outlets,
        Some(Arc::clone(&keyframe_wanted)),
        &stats,
        &leave_rx,
    );
    let id = session
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or_default()
        .to_owned();
    let token = token.map(str::to_owned);
    let mut leave = leave_rx;
    let task = tokio::spawn(async move {
        crate::util::until_true(&mut leave).await;
        for pump in pumps {
            pump.abort();
        }
        let mut request = http.delete(session);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let _ = request.send().await;
        let _ = pc.close().await;
    });
    Ok(PublisherHandle {
        id,
        stats,
        leave: leave_tx,
        task,
    })
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
            sticky: false,
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
        let handle = match &args.whip {
            Some(url) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                let url = format!("{url}{sep}name={}", encode_query(&name));
                start_whip(
                    &url,
                    args.token.as_deref(),
                    Arc::clone(&clip),
                    Arc::clone(&factory),
                )
                .await?
            }
            None => {
                start(
                    &args.server,
                    &args.room,
                    &name,
                    Arc::clone(&clip),
                    Arc::clone(&factory),
                    options.clone(),
                )
                .await?
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The sync clip (`tests/data/beeps.ogg`): 301 packets of 960 samples, pre-skip 312, final
    /// granule 288 312 (6 s played). Looping all 301 would make the audio loop 6.02 s against
    /// the video's 6 s: 300 packets make it exactly 6 s.
    #[test]
    fn an_audio_loop_lasts_the_clips_playable_length() {
        let samples = vec![960u32; 301];
        assert_eq!(loop_packets(&samples, Some(288_312 - 312)), 300);
        // Nearest whole packet: a clip of 287 600 samples (299.6 packets) loops 300, one of
        // 287 000 (298.96) loops 299.
        assert_eq!(loop_packets(&samples, Some(287_600)), 300);
        assert_eq!(loop_packets(&samples, Some(287_000)), 299);
        // Without a granule (or a tiny clip) every packet is kept; never none.
        assert_eq!(loop_packets(&samples, None), 301);
        assert_eq!(loop_packets(&samples, Some(0)), 1);
        assert_eq!(loop_packets(&samples, Some(10_000_000)), 301);
    }

    /// The sync clips as loaded: audio and video loops of the same length.
    #[test]
    fn the_sync_clips_loop_in_step() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let clip = Clip::load(Some(&data.join("flash.ivf")), Some(&data.join("beeps.ogg")))
            .expect("sync clips load");
        let (video, audio) = clip.lengths();
        // Video frame durations are whole nanoseconds: 6 s within a microsecond.
        assert!(video.abs_diff(Duration::from_secs(6)) < Duration::from_micros(1));
        assert!(
            audio.abs_diff(video) < Duration::from_micros(1),
            "{audio:?} {video:?}"
        );
    }
}
