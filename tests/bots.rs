//! SPEC §6 answering bots over real loopback peers: echo, play, voicemail, and the API's
//! refusals. The test peer ([`Probe`]) is a `RoomPeer` over the real WebSocket signaling that
//! can send clips and keeps every RTP packet it receives, with its arrival time.

mod common;

use bytes::Bytes;
use common::*;
use recbot::media::ivf::IvfReader;
use recbot::media::vp8::{Vp8Assembler, Vp8Event, Vp8Frame};
use recbot::peer::negotiation::Role;
use recbot::peer::outlet::{pump, MediaFrame, Outlet, PumpOptions, SharedOutlets};
use recbot::peer::room::Behaviour;
use recbot::peer::{Pc, PeerError};
use recbot::record::ogg::read_ogg_opus;
use recbot::record::webm_reader::read_webm;
use recbot::signal::protocol::PeerInfo;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The frames of an IVF clip.
fn ivf_frames(path: &Path) -> Vec<MediaFrame> {
    let file = std::fs::File::open(path).unwrap();
    let (mut reader, header) = IvfReader::new(std::io::BufReader::new(file)).unwrap();
    let tick = header.pts_to_duration(1).unwrap();
    let mut out = Vec::new();
    while let Some(frame) = reader.next_frame().unwrap() {
        out.push(MediaFrame {
            keyframe: frame.data[0] & 1 == 0,
            data: Bytes::from(frame.data),
            duration: tick,
            skip: false,
        });
    }
    out
}

/// The packets of an Ogg Opus clip.
fn ogg_frames(path: &Path) -> Vec<MediaFrame> {
    let info = read_ogg_opus(std::fs::File::open(path).unwrap()).unwrap();
    info.packets
        .into_iter()
        .map(|p| MediaFrame {
            duration: Duration::from_micros(u64::from(p.samples) * 1_000_000 / 48_000),
            data: Bytes::from(p.data),
            keyframe: true,
            skip: false,
        })
        .collect()
}

type Packets = Mutex<Vec<(Instant, rtc::rtp::Packet)>>;

/// What a probe received.
#[derive(Default)]
struct Received {
    video: Packets,
    audio: Packets,
    tracks: Mutex<Vec<Arc<dyn TrackRemote>>>,
}

impl Received {
    fn video(&self) -> Vec<(Instant, rtc::rtp::Packet)> {
        self.video.lock().unwrap().clone()
    }
    fn audio(&self) -> Vec<(Instant, rtc::rtp::Packet)> {
        self.audio.lock().unwrap().clone()
    }
}

struct ProbeBehaviour {
    sends_video: bool,
    sends_audio: bool,
    outlets: SharedOutlets,
    keyframe_wanted: Arc<AtomicBool>,
    received: Arc<Received>,
}

#[async_trait::async_trait]
impl Behaviour for ProbeBehaviour {
    fn wants(&self, peer: &PeerInfo) -> bool {
        peer.bot
    }

    async fn setup(&self, peer: &PeerInfo, pc: &Pc, role: Role) -> Result<(), PeerError> {
        for (sends, kind) in [
            (self.sends_video, RtpCodecKind::Video),
            (self.sends_audio, RtpCodecKind::Audio),
        ] {
            if sends {
                let wanted = Arc::clone(&self.keyframe_wanted);
                let callback: Option<Arc<dyn Fn() + Send + Sync>> = (kind == RtpCodecKind::Video)
                    .then(|| {
                        Arc::new(move || wanted.store(true, Ordering::Relaxed))
                            as Arc<dyn Fn() + Send + Sync>
                    });
                let outlet = Outlet::add(pc, kind, "probe", callback).await?;
                self.outlets.lock().unwrap().add(&peer.id, outlet);
            } else if role == Role::Offerer {
                pc.add_transceiver_from_kind(
                    kind,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        ..Default::default()
                    }),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn on_track(&self, _peer: &PeerInfo, track: Arc<dyn TrackRemote>) {
        let ssrc = track.ssrcs().await.first().copied().unwrap();
        let mime = track.codec(ssrc).await.unwrap().mime_type.to_lowercase();
        self.received
            .tracks
            .lock()
            .unwrap()
            .push(Arc::clone(&track));
        let list = if mime == "video/vp8" {
            &self.received.video
        } else {
            &self.received.audio
        };
        while let Some(event) = track.poll().await {
            if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                list.lock().unwrap().push((Instant::now(), packet));
            }
        }
    }
}

/// A test peer in a room: sends what its pumps give its outlets, keeps what it receives.
struct Probe {
    id: String,
    outlets: SharedOutlets,
    keyframe_wanted: Arc<AtomicBool>,
    received: Arc<Received>,
    leave: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    async fn join(srv: &TestServer, room: &str, name: &str, video: bool, audio: bool) -> Self {
        let url = srv.ws_url(&format!("/rooms/{room}/ws?name={name}"));
        let outlets = SharedOutlets::default();
        let keyframe_wanted = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Received::default());
        let behaviour = Arc::new(ProbeBehaviour {
            sends_video: video,
            sends_audio: audio,
            outlets: Arc::clone(&outlets),
            keyframe_wanted: Arc::clone(&keyframe_wanted),
            received: Arc::clone(&received),
        });
        let connection = recbot::client::connect_room(&url, name, factory(), behaviour)
            .await
            .expect("joins the room");
        Self {
            id: connection.id,
            outlets,
            keyframe_wanted,
            received,
            leave: connection.leave,
            task: connection.task,
        }
    }

    /// Plays `frames` to its outlets of `kind` (following keyframe requests for video).
    fn send(
        &self,
        frames: Vec<MediaFrame>,
        kind: RtpCodecKind,
        looping: bool,
    ) -> tokio::task::JoinHandle<()> {
        let options = PumpOptions {
            kind,
            looping,
            keyframe_wanted: (kind == RtpCodecKind::Video)
                .then(|| Arc::clone(&self.keyframe_wanted)),
            sent: Arc::new(AtomicU64::new(0)),
        };
        tokio::spawn(pump(
            frames.into(),
            Arc::clone(&self.outlets),
            options,
            self.leave.clone(),
        ))
    }

    fn outlet(&self, kind: RtpCodecKind) -> Arc<Outlet> {
        self.outlets.lock().unwrap().of(kind).remove(0)
    }

    async fn leave(self) {
        self.leave.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Complete frames of received VP8 packets, and the assembler's count of dropped frames.
fn assemble(packets: &[(Instant, rtc::rtp::Packet)]) -> (Vec<Vp8Frame>, u64) {
    let mut assembler = Vp8Assembler::new(Duration::from_millis(300));
    let mut frames = Vec::new();
    for (at, p) in packets {
        let h = &p.header;
        assembler.push(h.sequence_number, h.timestamp, h.marker, &p.payload, *at);
        while let Some(event) = assembler.poll(*at) {
            if let Vp8Event::Frame(f) = event {
                frames.push(f);
            }
        }
    }
    for event in assembler.finish() {
        if let Vp8Event::Frame(f) = event {
            frames.push(f);
        }
    }
    (frames, assembler.stats().frames_dropped)
}

/// Decodes received Opus packets (in arrival order: loopback keeps the order) to 48 kHz mono.
fn decode(packets: &[(Instant, rtc::rtp::Packet)]) -> Vec<f32> {
    let sorted: Vec<&rtc::rtp::Packet> = packets.iter().map(|(_, p)| p).collect();
    let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut pcm = vec![0f32; 5760];
    let mut out = Vec::new();
    for p in sorted {
        let n = decoder.decode_float(&p.payload, &mut pcm, false).unwrap();
        out.extend_from_slice(&pcm[..n]);
    }
    out
}

/// The middle `fraction` of `samples`.
fn middle(samples: &[f32], fraction: f64) -> &[f32] {
    let cut = (samples.len() as f64 * (1.0 - fraction) / 2.0) as usize;
    &samples[cut..samples.len() - cut]
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until bot `id` lists `n` recordings.
async fn wait_for_recordings(srv: &TestServer, id: &str, n: usize) {
    let start = Instant::now();
    loop {
        let doc = bot_doc(srv, id).await;
        if doc["recordings"].as_array().is_some_and(|r| r.len() == n) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn bot_doc(srv: &TestServer, id: &str) -> serde_json::Value {
    let (status, doc) = srv.get_json(&format!("/api/bots/{id}")).await;
    assert_eq!(status, 200, "{doc}");
    doc
}

async fn delete(srv: &TestServer, path: &str) -> u16 {
    srv.http
        .delete(srv.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_each_peer_its_own_audio_and_video() {
    let srv = TestServer::start().await;
    let probe = Probe::join(&srv, "echo", "alice", true, true).await;
    let clip_video = ivf_frames(&data("clip.ivf"));
    let sending = [
        probe.send(clip_video.clone(), RtpCodecKind::Video, true),
        probe.send(ogg_frames(&data("tone.ogg")), RtpCodecKind::Audio, true),
    ];
    let (status, bot) = srv
        .post_json("/api/bots", json!({"room": "echo", "mode": "echo"}))
        .await;
    assert_eq!(status, 201, "{bot}");
    assert_eq!(bot["mode"], "echo");
    assert_eq!(bot["state"], "running");
    assert_eq!(bot["recordings"], json!([]));
    let id = bot["id"].as_str().unwrap().to_owned();

    // The bot is a peer of the room, flagged as a bot.
    let (_, rooms) = srv.get_json("/api/rooms").await;
    let peers = rooms["rooms"][0]["peers"].as_array().unwrap().clone();
    assert!(
        peers
            .iter()
            .any(|p| p["bot"] == true && p["name"] == "echo" && p["id"] == bot["bot_peer"]),
        "{rooms}"
    );

    // A second peer joins after the bot (it offers, the bot answers) with another clip.
    let late = Probe::join(&srv, "echo", "bob", true, true).await;
    let small_video = ivf_frames(&data("small.ivf"));
    let late_sending = [
        late.send(small_video.clone(), RtpCodecKind::Video, true),
        late.send(ogg_frames(&data("tone.ogg")), RtpCodecKind::Audio, true),
    ];

    tokio::time::sleep(Duration::from_secs(4)).await;
    let doc = bot_doc(&srv, &id).await;
    let mut peers: Vec<String> = serde_json::from_value(doc["peers"].clone()).unwrap();
    peers.sort();
    let mut expected = vec![probe.id.clone(), late.id.clone()];
    expected.sort();
    assert_eq!(peers, expected, "{doc}");

    // The late peer gets its own video back, not the first peer's.
    let (late_frames, late_dropped) = assemble(&late.received.video());
    assert_eq!(late_dropped, 0);
    assert!(late_frames.len() >= 60, "{} frames", late_frames.len());
    assert!(late_frames[0].keyframe);
    for f in &late_frames {
        assert!(
            small_video.iter().any(|c| c.data == f.data),
            "not bob's own video"
        );
    }
    let late_audio = decode(&late.received.audio());
    let hz = zero_crossing_hz(middle(&late_audio, 0.8));
    assert!((hz - 440.0).abs() < 10.0, "bob's echoed tone at {hz} Hz");
    for s in late_sending {
        s.abort();
    }
    late.leave().await;
    let left = Instant::now();
    while bot_doc(&srv, &id).await["peers"] != json!([probe.id]) {
        assert!(
            left.elapsed() < Duration::from_secs(3),
            "bob is still a peer of the bot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Video: complete frames of the clip, the first one a keyframe, nothing dropped.
    let video = probe.received.video();
    assert!(!video.is_empty(), "no echoed video");
    // Loopback keeps the order: the first packet to arrive is the first sent.
    let first = &video[0];
    assert!(
        recbot::media::vp8::payload_starts_keyframe(&first.1.payload),
        "the echo does not start with a keyframe"
    );
    let (frames, dropped) = assemble(&video);
    assert_eq!(dropped, 0, "incomplete or undecodable frames in the echo");
    assert!(frames.len() >= 60, "{} frames in ~3.5 s", frames.len());
    assert!(frames[0].keyframe);
    for f in &frames {
        assert!(
            clip_video.iter().any(|c| c.data == f.data),
            "an echoed frame is not one of the clip's ({} bytes)",
            f.data.len()
        );
    }

    // Audio: the 440 Hz tone.
    let audio = decode(&probe.received.audio());
    assert!(audio.len() > 48_000 * 2, "{} samples", audio.len());
    let hz = zero_crossing_hz(middle(&audio, 0.8));
    assert!((hz - 440.0).abs() < 10.0, "echoed tone at {hz} Hz");
    assert!(rms(middle(&audio, 0.8)) > 0.03);

    // A keyframe request from the viewer of the echo reaches the peer as the sender.
    let echoed_video = {
        let tracks = probe.received.tracks.lock().unwrap().clone();
        let mut found = None;
        for t in tracks {
            if t.kind().await == RtpCodecKind::Video {
                found = Some(t);
            }
        }
        found.expect("an echoed video track")
    };
    let media_ssrc = echoed_video.ssrcs().await[0];
    let sender_outlet = probe.outlet(RtpCodecKind::Video);
    let before = sender_outlet.keyframe_requests();
    echoed_video
        .write_rtcp(vec![Box::new(PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        })])
        .await
        .unwrap();
    wait_for("the PLI to come back", Duration::from_secs(3), || {
        sender_outlet.keyframe_requests() > before
    })
    .await;

    assert_eq!(delete(&srv, &format!("/api/bots/{id}")).await, 204);
    let (status, _) = srv.get_json(&format!("/api/bots/{id}")).await;
    assert_eq!(status, 404);
    let (_, rooms) = srv.get_json("/api/rooms").await;
    assert!(
        !rooms.to_string().contains("\"bot\":true"),
        "the echo bot is still in the room: {rooms}"
    );
    for s in sending {
        s.abort();
    }
    probe.leave().await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_sends_a_file_at_its_own_pace_to_a_late_peer() {
    let media = tempfile::tempdir().unwrap();
    std::fs::copy(data("play10.webm"), media.path().join("play10.webm")).unwrap();
    let dir = media.path().to_owned();
    let srv = TestServer::start_with(|a| a.media_dir = dir).await;
    let asked = Instant::now();
    let (status, bot) = srv
        .post_json(
            "/api/bots",
            json!({"room": "cinema", "mode": "play", "media": "play10.webm"}),
        )
        .await;
    let created = Instant::now();
    assert_eq!(status, 201, "{bot}");
    assert_eq!(bot["loop"], false);
    assert_eq!(bot["media"], "play10.webm");
    let id = bot["id"].as_str().unwrap().to_owned();

    // A peer that joins mid-play.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let probe = Probe::join(&srv, "cinema", "viewer", false, false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bot_doc(&srv, &id).await["peers"], json!([probe.id]));
    let mut state = String::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        state = bot_doc(&srv, &id).await["state"]
            .as_str()
            .unwrap()
            .to_owned();
        if state == "stopped" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        state, "stopped",
        "the bot did not stop at the end of the file"
    );

    let file = read_webm(std::fs::File::open(data("play10.webm")).unwrap()).unwrap();
    let vp8 = file.tracks.iter().find(|t| t.codec_id == "V_VP8").unwrap();
    let file_frames: Vec<&[u8]> = file
        .blocks
        .iter()
        .filter(|b| b.track == vp8.number)
        .map(|b| b.data.as_slice())
        .collect();

    // Video: from a keyframe on, complete frames of the file, in order.
    let video = probe.received.video();
    let (frames, dropped) = assemble(&video);
    assert_eq!(dropped, 0, "the late peer got frames before a keyframe");
    assert!(frames[0].keyframe);
    let first = file_frames
        .iter()
        .position(|f| *f == &frames[0].data[..])
        .expect("a frame of the file");
    assert!(first > 15, "the late peer started at the file's start");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(&f.data[..], file_frames[first + i], "frame {i}");
    }
    assert_eq!(
        first + frames.len(),
        file_frames.len(),
        "frames missing at the end"
    );

    // Audio: the 440 Hz tone.
    let audio_packets = probe.received.audio();
    let audio = decode(&audio_packets);
    let hz = zero_crossing_hz(middle(&audio, 0.8));
    assert!((hz - 440.0).abs() < 10.0, "played tone at {hz} Hz");

    // Timing: the file's 10 s, from the bot's creation to the end of its last packet.
    let last_audio = audio_packets.iter().map(|(at, _)| *at).max().unwrap();
    let last_video = video.iter().map(|(at, _)| *at).max().unwrap();
    let end = last_audio.max(last_video) + Duration::from_millis(20);
    let lasted_max = end.duration_since(asked).as_secs_f64();
    let lasted_min = end.duration_since(created).as_secs_f64();
    eprintln!("played from {lasted_min:.3} to {lasted_max:.3} s");
    assert!(
        lasted_min < 10.1 && lasted_max > 9.9,
        "the 10 s file lasted {lasted_min:.3}..{lasted_max:.3} s"
    );
    // Pace: arrival times follow the RTP timestamps (audio).
    let (t0, p0) = audio_packets.first().unwrap();
    let (t1, p1) = audio_packets.last().unwrap();
    let rtp_span = p1.header.timestamp.wrapping_sub(p0.header.timestamp) as f64 / 48_000.0;
    let wall_span = t1.duration_since(*t0).as_secs_f64();
    assert!(
        (rtp_span - wall_span).abs() < 0.1,
        "RTP {rtp_span:.3} s vs wall {wall_span:.3} s"
    );
    // Audio and video in step: the first video frame after the join is where the file has it.
    probe.leave().await;
    srv.shutdown().await;
}

/// The VP8 frames and Opus packets of a WebM file, in file order.
fn webm_frames(path: &Path) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let file = read_webm(std::fs::File::open(path).unwrap()).unwrap();
    let of = |codec: &str| {
        let number = file
            .tracks
            .iter()
            .find(|t| t.codec_id == codec)
            .unwrap()
            .number;
        file.blocks
            .iter()
            .filter(|b| b.track == number)
            .map(|b| b.data.clone())
            .collect::<Vec<_>>()
    };
    (of("V_VP8"), of("A_OPUS"))
}

/// Seconds of media covered by received packets: from the first packet's RTP timestamp to
/// the end of the last one (`last` long), at `rate` Hz.
fn covered(packets: &[(Instant, rtc::rtp::Packet)], rate: f64, last: f64) -> f64 {
    let first = packets.first().unwrap().1.header.timestamp;
    let end = packets.last().unwrap().1.header.timestamp;
    f64::from(end.wrapping_sub(first)) / rate + last
}

/// Waits (at most `limit`) for bot `id` to stop at the end of its file.
async fn wait_for_stop(srv: &TestServer, id: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let state = bot_doc(srv, id).await["state"].clone();
        if state == "stopped" {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "the bot did not stop at the end of the file within {limit:?}: {state}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts that `probe` received the whole of `play10.webm` from its first sample: every
/// Opus packet and every VP8 frame, in order, covering the clip's 10 s.
fn assert_whole_clip(probe: &Probe) {
    let (file_video, file_audio) = webm_frames(&data("play10.webm"));
    let audio = probe.received.audio();
    assert!(!audio.is_empty(), "no audio");
    let first_audio = file_audio
        .iter()
        .position(|p| p[..] == audio[0].1.payload[..])
        .expect("a packet of the file");
    let audio_covered = covered(&audio, 48_000.0, 0.020);
    let video = probe.received.video();
    let (frames, dropped) = assemble(&video);
    assert_eq!(dropped, 0);
    assert!(!frames.is_empty(), "no video");
    let first_video = file_video
        .iter()
        .position(|f| f[..] == frames[0].data[..])
        .expect("a frame of the file");
    let video_covered = covered(&video, 90_000.0, 0.067);
    eprintln!(
        "audio from packet {first_audio}, {} packets, {audio_covered:.3} s; \
         video from frame {first_video}, {} frames, {video_covered:.3} s",
        audio.len(),
        frames.len()
    );
    assert_eq!(first_audio, 0, "the audio started late");
    assert_eq!(first_video, 0, "the video started late");
    assert_eq!(audio.len(), file_audio.len(), "audio packets missing");
    for (i, (_, p)) in audio.iter().enumerate() {
        assert_eq!(p.payload[..], file_audio[i][..], "audio packet {i}");
    }
    assert_eq!(frames.len(), file_video.len(), "video frames missing");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.data[..], file_video[i][..], "video frame {i}");
    }
    assert!(
        (audio_covered - 10.0).abs() < 0.15,
        "{audio_covered:.3} s of audio"
    );
    assert!(
        (video_covered - 10.0).abs() < 0.15,
        "{video_covered:.3} s of video"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_reaches_the_peers_present_at_creation_from_the_first_sample() {
    let media = tempfile::tempdir().unwrap();
    std::fs::copy(data("play10.webm"), media.path().join("play10.webm")).unwrap();
    let dir = media.path().to_owned();
    let srv = TestServer::start_with(|a| a.media_dir = dir).await;
    let present = Probe::join(&srv, "premiere", "present", false, false).await;
    let (status, bot) = srv
        .post_json(
            "/api/bots",
            json!({"room": "premiere", "mode": "play", "media": "play10.webm"}),
        )
        .await;
    assert_eq!(status, 201, "{bot}");
    let id = bot["id"].as_str().unwrap().to_owned();

    // A late joiner still starts mid-clip, on a keyframe.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let late = Probe::join(&srv, "premiere", "late", false, false).await;
    wait_for_stop(&srv, &id, Duration::from_secs(20)).await;

    assert_whole_clip(&present);

    let (file_video, _) = webm_frames(&data("play10.webm"));
    let (frames, dropped) = assemble(&late.received.video());
    assert_eq!(dropped, 0, "the late peer got frames before a keyframe");
    assert!(frames[0].keyframe);
    let first = file_video
        .iter()
        .position(|f| f[..] == frames[0].data[..])
        .expect("a frame of the file");
    assert!(first > 15, "the late peer started at the file's start");
    let late_audio = late.received.audio();
    let (_, file_audio) = webm_frames(&data("play10.webm"));
    let first_audio = file_audio
        .iter()
        .position(|p| p[..] == late_audio[0].1.payload[..])
        .expect("a packet of the file");
    assert!(
        first_audio > 50,
        "the late peer heard the file from its start"
    );

    late.leave().await;
    present.leave().await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_waits_for_a_present_peer_that_never_connects_only_so_long() {
    use futures::{SinkExt, StreamExt};
    let media = tempfile::tempdir().unwrap();
    std::fs::copy(data("play10.webm"), media.path().join("play10.webm")).unwrap();
    let dir = media.path().to_owned();
    let srv = TestServer::start_with(|a| a.media_dir = dir).await;
    // A member that ignores every offer: its connection never comes up.
    let (mut mute, _) = tokio_tungstenite::connect_async(srv.ws_url("/rooms/stalls/ws?name=mute"))
        .await
        .expect("connects");
    let reading = tokio::spawn(async move {
        while let Some(Ok(frame)) = mute.next().await {
            if let tokio_tungstenite::tungstenite::Message::Ping(p) = frame {
                let _ = mute
                    .send(tokio_tungstenite::tungstenite::Message::Pong(p))
                    .await;
            }
        }
    });
    let present = Probe::join(&srv, "stalls", "present", false, false).await;
    let (status, bot) = srv
        .post_json(
            "/api/bots",
            json!({"room": "stalls", "mode": "play", "media": "play10.webm"}),
        )
        .await;
    assert_eq!(status, 201, "{bot}");
    let id = bot["id"].as_str().unwrap().to_owned();
    // Playing starts after the bound, well before the mute peer's connection gives up (30 s).
    wait_for_stop(&srv, &id, Duration::from_secs(25)).await;
    assert_whole_clip(&present);
    reading.abort();
    present.leave().await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_loops_an_ogg_file() {
    let media = tempfile::tempdir().unwrap();
    std::fs::copy(data("tone.ogg"), media.path().join("tone.ogg")).unwrap();
    let dir = media.path().to_owned();
    let srv = TestServer::start_with(|a| a.media_dir = dir).await;
    let probe = Probe::join(&srv, "loop", "listener", false, false).await;
    let (status, bot) = srv
        .post_json(
            "/api/bots",
            json!({"room": "loop", "mode": "play", "media": "tone.ogg", "loop": true}),
        )
        .await;
    assert_eq!(status, 201, "{bot}");
    let id = bot["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(bot_doc(&srv, &id).await["state"], "running");
    let packets = probe.received.audio();
    let (first, last) = (packets.first().unwrap(), packets.last().unwrap());
    let rtp_span = last
        .1
        .header
        .timestamp
        .wrapping_sub(first.1.header.timestamp) as f64
        / 48_000.0;
    assert!(rtp_span > 6.0, "only {rtp_span:.2} s played: no loop");
    let audio = decode(&packets);
    let hz = zero_crossing_hz(middle(&audio, 0.9));
    assert!((hz - 440.0).abs() < 10.0, "{hz} Hz");

    // A recording of the room records what the bot plays.
    let (status, rec) = srv
        .post_json("/api/recordings", json!({"room": "loop"}))
        .await;
    assert_eq!(status, 201, "{rec}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rec_id = rec["id"].as_str().unwrap();
    let (_, done) = srv
        .post_json(&format!("/api/recordings/{rec_id}/stop"), json!({}))
        .await;
    let played = done["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["participant"] == bot["bot_peer"])
        .unwrap_or_else(|| panic!("the play bot was not recorded: {done}"));
    assert_eq!(played["kind"], "audio");
    assert!(played["duration_ms"].as_u64().unwrap() > 1500, "{done}");

    assert_eq!(delete(&srv, &format!("/api/bots/{id}")).await, 204);
    probe.leave().await;
    srv.shutdown().await;
}

fn parse_time(s: &serde_json::Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        s.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voicemail_greets_records_until_silence_and_says_goodbye() {
    let srv = TestServer::start().await;
    let (status, bot) = srv
        .post_json("/api/bots", json!({"room": "desk", "mode": "voicemail"}))
        .await;
    assert_eq!(status, 201, "{bot}");
    assert_eq!(bot["silence_s"], 3.0);
    assert_eq!(bot["max_duration_s"], 60.0);
    let id = bot["id"].as_str().unwrap().to_owned();
    // A voicemail bot does not make the room "already recorded".
    let (status, rec) = srv
        .post_json("/api/recordings", json!({"room": "desk"}))
        .await;
    assert_eq!(status, 201, "{rec}");
    let recorder = rec["id"].as_str().unwrap().to_owned();
    let (status, _) = srv
        .post_json(&format!("/api/recordings/{recorder}/stop"), json!({}))
        .await;
    assert_eq!(status, 200);

    // The caller stays silent (sends nothing) during the greeting.
    let caller = Probe::join(&srv, "desk", "carol", false, true).await;
    let received = Arc::clone(&caller.received);
    wait_for("the greeting to end", Duration::from_secs(10), || {
        let audio = received.audio();
        audio.len() > 20 && audio.last().unwrap().0.elapsed() > Duration::from_millis(300)
    })
    .await;
    let greeting = caller.received.audio();
    let greeting_pcm = decode(&greeting);
    let hz = zero_crossing_hz(middle(&greeting_pcm, 0.8));
    assert!((hz - 880.0).abs() < 15.0, "greeting at {hz} Hz");
    assert!(greeting.len() >= 45, "{} greeting packets", greeting.len());

    // Then a 3 s tone, then nothing.
    let tone: Vec<MediaFrame> = ogg_frames(&data("tone.ogg"))
        .into_iter()
        .take(150)
        .collect();
    caller.send(tone, RtpCodecKind::Audio, false).await.unwrap();
    let tone_end = time::OffsetDateTime::now_utc();

    let mut doc = json!(null);
    let mut message = json!(null);
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(10) {
        doc = bot_doc(&srv, &id).await;
        if let Some(rec) = doc["recordings"].as_array().and_then(|r| r.first()) {
            let (_, m) = srv
                .get_json(&format!("/api/recordings/{}", rec.as_str().unwrap()))
                .await;
            if m["state"] == "stopped" {
                message = m;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(message["state"], "stopped", "no finished message: {doc}");
    assert_eq!(message["stop_reason"], "silence");
    assert_eq!(message["room"], "desk");
    assert_eq!(message["bot_peer"], bot["bot_peer"]);
    let ended_after = (parse_time(&message["stopped_at"]) - tone_end).as_seconds_f64();
    assert!(
        (2.7..3.6).contains(&ended_after),
        "the message ended {ended_after:.2} s after the tone, not ~3 s"
    );
    let message_id = message["id"].as_str().unwrap().to_owned();
    let (_, all) = srv.get_json("/api/recordings").await;
    assert!(all.to_string().contains(&message_id));

    // The message holds the 3 s tone.
    let track = &message["tracks"][0];
    assert_eq!(track["kind"], "audio");
    assert_eq!(track["participant"], json!(caller.id));
    let name = track["file"].as_str().unwrap();
    let bytes = srv
        .http
        .get(srv.url(&format!("/api/recordings/{message_id}/files/{name}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let info = read_ogg_opus(std::io::Cursor::new(bytes.to_vec())).unwrap();
    assert!(info.eos);
    let packets: Vec<(Instant, rtc::rtp::Packet)> = info
        .packets
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut packet = rtc::rtp::Packet::default();
            packet.header.sequence_number = i as u16;
            packet.payload = Bytes::from(p.data.clone());
            (Instant::now(), packet)
        })
        .collect();
    let pcm = decode(&packets);
    let loud: Vec<usize> = pcm
        .chunks(960)
        .enumerate()
        .filter(|(_, c)| rms(c) > 0.02)
        .map(|(i, _)| i)
        .collect();
    let voiced = loud.len() as f64 * 0.02;
    assert!(
        (voiced - 3.0).abs() < 0.15,
        "{voiced:.2} s of tone in the message"
    );
    let tone_pcm = &pcm[loud[0] * 960..(loud[loud.len() - 1] + 1) * 960];
    let hz = zero_crossing_hz(middle(tone_pcm, 0.8));
    assert!((hz - 440.0).abs() < 10.0, "recorded tone at {hz} Hz");
    let duration = info.duration_samples().unwrap() as f64 / 48_000.0;
    assert!(
        (5.6..6.8).contains(&duration),
        "message lasts {duration:.2} s"
    );

    // Goodbye, then the bot hangs up.
    wait_for("the hang-up", Duration::from_secs(5), || {
        let audio = received.audio();
        audio.len() > greeting.len() + 15
            && audio.last().unwrap().0.elapsed() > Duration::from_millis(500)
    })
    .await;
    let audio = caller.received.audio();
    let goodbye = decode(&audio[greeting.len()..]);
    let hz = zero_crossing_hz(middle(&goodbye, 0.6));
    assert!((hz - 660.0).abs() < 15.0, "goodbye at {hz} Hz");
    let doc = bot_doc(&srv, &id).await;
    assert_eq!(doc["peers"], json!([]), "{doc}");
    assert_eq!(doc["recordings"], json!([message_id]));

    assert_eq!(delete(&srv, &format!("/api/bots/{id}")).await, 204);
    let (status, _) = srv.get_json(&format!("/api/recordings/{message_id}")).await;
    assert_eq!(status, 200, "the message outlives its bot");
    caller.leave().await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voicemail_messages_end_at_max_duration_or_when_the_caller_leaves() {
    let hooks = HookReceiver::start().await;
    let srv = TestServer::start_with(|args| hooks.configure(args)).await;
    let (status, bot) = srv
        .post_json(
            "/api/bots",
            json!({"room": "desk2", "mode": "voicemail", "silence_s": 1, "max_duration_s": 2}),
        )
        .await;
    assert_eq!(status, 201, "{bot}");
    let id = bot["id"].as_str().unwrap().to_owned();
    let talker = Probe::join(&srv, "desk2", "talker", false, true).await;
    let leaver = Probe::join(&srv, "desk2", "leaver", false, true).await;
    let tone = ogg_frames(&data("tone.ogg"));
    let _a = talker.send(tone.clone(), RtpCodecKind::Audio, true);
    let _b = leaver.send(tone, RtpCodecKind::Audio, true);
    wait_for_recordings(&srv, &id, 2).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    leaver.leave().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let doc = bot_doc(&srv, &id).await;
    let mut reasons = Vec::new();
    for rec in doc["recordings"].as_array().unwrap() {
        let (_, m) = srv
            .get_json(&format!("/api/recordings/{}", rec.as_str().unwrap()))
            .await;
        assert_eq!(m["state"], "stopped", "{m}");
        let who = m["tracks"][0]["participant_name"]
            .as_str()
            .unwrap()
            .to_owned();
        reasons.push((who, m["stop_reason"].as_str().unwrap().to_owned()));
    }
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("leaver".to_owned(), "peer-left".to_owned()),
            ("talker".to_owned(), "max-duration".to_owned())
        ]
    );
    // Each message is announced once, after its own recording.stopped (SPEC §8), and the
    // bot's start came first.
    let messages: Vec<String> = doc["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let events = hooks
        .until(Duration::from_secs(10), |events| {
            events
                .iter()
                .filter(|e| e["type"] == "voicemail.message")
                .count()
                == 2
        })
        .await;
    assert_eq!(events[0]["type"], "bot.started", "{events:#?}");
    assert_eq!(events[0]["data"]["id"], id.as_str());
    for message in &messages {
        let of: Vec<&str> = events
            .iter()
            .filter(|e| e["data"]["id"] == message.as_str())
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            of,
            [
                "recording.started",
                "recording.stopped",
                "voicemail.message"
            ],
            "{message}: {events:#?}"
        );
        let announced = events
            .iter()
            .find(|e| e["type"] == "voicemail.message" && e["data"]["id"] == message.as_str())
            .unwrap();
        assert_eq!(announced["data"]["state"], "stopped");
        assert_eq!(announced["data"]["room"], "desk2");
    }
    talker.leave().await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_messages_cleanly() {
    let srv = TestServer::start().await;
    let (status, bot) = srv
        .post_json("/api/bots", json!({"room": "late", "mode": "voicemail"}))
        .await;
    assert_eq!(status, 201, "{bot}");
    let id = bot["id"].as_str().unwrap().to_owned();
    let caller = Probe::join(&srv, "late", "dave", false, true).await;
    let _s = caller.send(ogg_frames(&data("tone.ogg")), RtpCodecKind::Audio, true);
    wait_for_recordings(&srv, &id, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dir = srv.dir.path().to_owned();
    // Shut down, keeping the recordings folder.
    let mut srv = srv;
    srv.server.take().unwrap().shutdown().await.unwrap();
    let folders: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(folders.len(), 1);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folders[0].join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["state"], "stopped");
    assert_eq!(manifest["stop_reason"], "shutdown");
    let file = folders[0].join(manifest["tracks"][0]["file"].as_str().unwrap());
    let info = read_ogg_opus(std::fs::File::open(&file).unwrap()).unwrap();
    assert!(info.eos, "the message was not finalized");
    ffmpeg_decodes_cleanly(&file);
    caller.leave().await;
}

#[tokio::test]
async fn bad_requests_are_refused_and_start_nothing() {
    let media = tempfile::tempdir().unwrap();
    std::fs::copy(data("clip.ivf"), media.path().join("clip.ivf")).unwrap();
    std::fs::copy(data("tone.ogg"), media.path().join("tone.ogg")).unwrap();
    std::fs::write(media.path().join("notes.webm"), b"not a media file at all").unwrap();
    std::fs::write(
        media.path().join("fake.ogg"),
        b"OggS but then nothing useful",
    )
    .unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(data("tone.ogg"), outside.path().join("secret.ogg")).unwrap();
    let dir = media.path().to_owned();
    let srv = TestServer::start_with(|a| a.media_dir = dir).await;
    let secret = outside.path().join("secret.ogg");
    let cases = [
        (
            json!({"room": "r", "mode": "karaoke"}),
            400,
            "bad-request",
            "mode",
        ),
        (
            json!({"room": "r", "mode": "echo", "colour": 1}),
            400,
            "bad-request",
            "colour",
        ),
        (json!({"mode": "echo"}), 400, "bad-request", "room"),
        (
            json!({"room": "bad room", "mode": "echo"}),
            400,
            "bad-room",
            "room",
        ),
        (
            json!({"room": "r", "mode": "play"}),
            400,
            "bad-request",
            "media",
        ),
        (
            json!({"room": "r", "mode": "echo", "media": "tone.ogg"}),
            400,
            "bad-request",
            "media",
        ),
        (
            json!({"room": "r", "mode": "echo", "loop": true}),
            400,
            "bad-request",
            "loop",
        ),
        (
            json!({"room": "r", "mode": "play", "media": "tone.ogg", "silence_s": 2}),
            400,
            "bad-request",
            "silence_s",
        ),
        (
            json!({"room": "r", "mode": "voicemail", "silence_s": 0}),
            400,
            "bad-request",
            "silence_s",
        ),
        (
            json!({"room": "r", "mode": "voicemail", "max_duration_s": -1}),
            400,
            "bad-request",
            "max_duration_s",
        ),
        (
            json!({"room": "r", "mode": "play", "media": "missing.ogg"}),
            400,
            "media-not-found",
            "missing.ogg",
        ),
        (
            json!({"room": "r", "mode": "play", "media": "../tone.ogg"}),
            400,
            "bad-request",
            "plain file name",
        ),
        (
            json!({"room": "r", "mode": "play", "media": secret.to_str().unwrap()}),
            400,
            "bad-request",
            "plain file name",
        ),
        (
            json!({"room": "r", "mode": "voicemail", "media": "sub/tone.ogg"}),
            400,
            "bad-request",
            "plain file name",
        ),
        (
            json!({"room": "r", "mode": "play", "media": "clip.ivf"}),
            400,
            "bad-media",
            "not an Ogg or WebM",
        ),
        (
            json!({"room": "r", "mode": "play", "media": "notes.webm"}),
            400,
            "bad-media",
            "not an Ogg or WebM",
        ),
        (
            json!({"room": "r", "mode": "voicemail", "media": "fake.ogg"}),
            400,
            "bad-media",
            "Ogg Opus",
        ),
    ];
    for (body, status, code, mentions) in cases {
        let (got, reply) = srv.post_json("/api/bots", body.clone()).await;
        assert_eq!(got, status, "{body} → {reply}");
        assert_eq!(reply["error"]["code"], code, "{body} → {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{body} → {message}");
    }
    let (status, reply) = srv.get_json("/api/bots/bnosuchbot0").await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (404, &json!("not-found"))
    );
    assert_eq!(delete(&srv, "/api/bots/bnosuchbot0").await, 404);
    assert_eq!(delete(&srv, "/api/bots/..%2Fx").await, 404);
    // Nothing was started.
    assert_eq!(srv.get_json("/api/bots").await.1, json!({"bots": []}));
    assert_eq!(srv.get_json("/api/rooms").await.1, json!({"rooms": []}));
    assert_eq!(
        srv.get_json("/api/recordings").await.1,
        json!({"recordings": []})
    );
    srv.shutdown().await;
}

/// Load helper for the CPU figures (not part of the suite): joins `RECBOT_CPU_PEERS`
/// receive-only peers to room `RECBOT_CPU_ROOM` of the server at `RECBOT_CPU_SERVER` and stays
/// `RECBOT_CPU_SECONDS`. Run against a release server, e.g.
/// `RECBOT_CPU_SERVER=http://127.0.0.1:8080 cargo test --release --test bots -- --ignored cpu_listeners`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn cpu_listeners() {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let base = var("RECBOT_CPU_SERVER", "http://127.0.0.1:8080");
    let room = var("RECBOT_CPU_ROOM", "cpu");
    let peers: usize = var("RECBOT_CPU_PEERS", "5").parse().unwrap();
    let seconds: u64 = var("RECBOT_CPU_SECONDS", "40").parse().unwrap();
    let srv = TestServer {
        server: None,
        base,
        dir: tempfile::tempdir().unwrap(),
        http: reqwest::Client::new(),
    };
    let mut probes = Vec::new();
    for i in 0..peers {
        probes.push(Probe::join(&srv, &room, &format!("listener-{i}"), false, false).await);
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    for p in &probes {
        eprintln!(
            "{}: {} video, {} audio packets",
            p.id,
            p.received.video().len(),
            p.received.audio().len()
        );
    }
    for p in probes {
        p.leave().await;
    }
}
