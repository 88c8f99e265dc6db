//! webrtc-rs setup shared by every peer recbot runs: the recorder and the answering bots on the
//! server side, and the `recbot publish` test client.
//!
//! [`PeerFactory`] builds RTCPeerConnections that speak only VP8 and Opus (what recbot can
//! record without transcoding), with NACK, RTCP reports and TWCC, plus [`RtcpTap`], which lets
//! sender reports and keyframe requests through to the application (webrtc-rs stops inbound RTCP
//! at the end of its interceptor chain by default). [`negotiation`] holds the per-remote-peer
//! signaling state machine (perfect negotiation, trickle ICE).

pub mod negotiation;
pub mod outlet;
pub mod room;

use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::transport::{RTCIceCandidateType, RTCIceServer};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, Registry,
};

/// Payload type recbot offers for Opus.
pub const OPUS_PAYLOAD_TYPE: u8 = 111;
/// Payload type recbot offers for VP8.
pub const VP8_PAYLOAD_TYPE: u8 = 96;

/// How long ICE waits for a better pair before nominating a peer-reflexive one.
pub const PRFLX_ACCEPTANCE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Errors of the peer layer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// webrtc-rs refused an operation.
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    /// No UDP port of the configured range could be bound.
    #[error("no free UDP port in {0}-{1}")]
    NoPort(u16, u16),
    /// The remote sent an SDP we cannot use.
    #[error("bad SDP: {0}")]
    BadSdp(String),
}

/// Network settings for the peers a process builds.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// IPs to bind UDP sockets on; `0.0.0.0`/`::` mean every non-loopback interface.
    pub udp_bind: Vec<IpAddr>,
    /// Inclusive port range, or ephemeral ports when `None`.
    pub udp_ports: Option<(u16, u16)>,
    /// Public IPs advertised in place of local host candidates (NAT 1:1).
    pub public_ips: Vec<IpAddr>,
    /// STUN/TURN servers.
    pub ice_servers: Vec<crate::signal::protocol::IceServer>,
    /// Simulated network trouble on outgoing RTP (tests and `recbot publish --loss`).
    pub outbound_loss: Option<LossSpec>,
    /// Ignore remote ICE candidates that are not loopback addresses (tests with a browser on
    /// the same machine: connectivity checks stay on 127.0.0.1).
    pub loopback_candidates_only: bool,
}

/// Simulated loss and reordering of outgoing RTP, applied where packets leave (after the NACK
/// responder and the pacer), so retransmissions cross it too: like a bad network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossSpec {
    /// Fraction of RTP packets dropped (0..1).
    pub drop: f64,
    /// Fraction of RTP packets held back and sent after the next one.
    pub reorder: f64,
    /// Seed of the deterministic random sequence.
    pub seed: u64,
    /// A dropped packet stays lost: its retransmissions are dropped too (loss that NACK
    /// cannot recover).
    pub sticky: bool,
}

impl PeerConfig {
    /// Every interface and loopback, ephemeral ports: for the `publish` client.
    pub fn loopback_and_all() -> Self {
        Self {
            udp_bind: vec![IpAddr::from([0, 0, 0, 0]), IpAddr::from([127, 0, 0, 1])],
            ..Self::loopback()
        }
    }

    /// Loopback only, ephemeral ports: for tests and local tools.
    pub fn loopback() -> Self {
        Self {
            udp_bind: vec![IpAddr::from([127, 0, 0, 1])],
            udp_ports: None,
            public_ips: vec![],
            ice_servers: vec![],
            outbound_loss: None,
            loopback_candidates_only: false,
        }
    }
}

/// Builds RTCPeerConnections with recbot's codecs, interceptors and network settings.
pub struct PeerFactory {
    config: PeerConfig,
    next_port: AtomicU32,
}

/// A built connection, shareable between tasks.
pub type Pc = Arc<dyn PeerConnection>;

impl PeerFactory {
    /// A factory for `config`.
    pub fn new(config: PeerConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            next_port: AtomicU32::new(0),
        })
    }

    /// The network settings.
    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// Builds a connection that reports its events to `handler`.
    pub async fn build(
        &self,
        handler: Arc<dyn PeerConnectionEventHandler>,
    ) -> Result<Pc, PeerError> {
        let Some((min, max)) = self.config.udp_ports else {
            return self.build_on(Arc::clone(&handler), 0).await;
        };
        let span = u32::from(max - min) + 1;
        let mut last = None;
        // Each attempt takes the next port of the range, so concurrent builds spread out; a port
        // that is taken fails the bind and the next one is tried.
        for _ in 0..span.min(64) {
            let offset = self.next_port.fetch_add(1, Ordering::Relaxed) % span;
            let port = min + offset as u16;
            match self.build_on(Arc::clone(&handler), port).await {
                Ok(pc) => return Ok(pc),
                Err(e) => last = Some(e),
            }
        }
        tracing::warn!(?last, "no UDP port free in range");
        Err(PeerError::NoPort(min, max))
    }

    async fn build_on(
        &self,
        handler: Arc<dyn PeerConnectionEventHandler>,
        port: u16,
    ) -> Result<Pc, PeerError> {
        let mut media_engine = media_engine()?;
        let mut registry = register_default_interceptors(Registry::new(), &mut media_engine)?
            .with(Slot::from(12_500), RtcpTap::default());
        if let Some(loss) = self.config.outbound_loss {
            registry = registry.with(Slot::from(500), LossInjector::new(loss));
        }
        let ice_servers = self
            .config
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        let configuration = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers)
            .build();
        // A remote's checks often arrive before its trickled candidates, so the first pair is
        // peer-reflexive; webrtc-rs's default waits a whole second before accepting one.
        let mut settings =
            SettingEngineBuilder::new().with_prflx_acceptance_min_wait(Some(PRFLX_ACCEPTANCE_WAIT));
        if self.config.udp_bind.iter().any(IpAddr::is_loopback) {
            settings = settings.with_include_loopback_candidate(true);
        }
        if !self.config.public_ips.is_empty() {
            settings = settings.with_nat_1to1_ips(
                self.config
                    .public_ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect(),
                RTCIceCandidateType::Host,
            );
        }
        let addrs: Vec<SocketAddr> = self
            .config
            .udp_bind
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_media_engine(media_engine)
            .with_setting_engine(settings.build())
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(addrs)
            .build()
            .await?;
        Ok(Arc::new(pc))
    }
}

/// VP8 and Opus only, with the feedback recbot uses (NACK, PLI, FIR; TWCC is added by the
/// default interceptors).
fn media_engine() -> Result<MediaEngine, webrtc::error::Error> {
    let mut engine = MediaEngine::default();
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                rtcp_feedback: vec![],
            },
            payload_type: OPUS_PAYLOAD_TYPE,
        },
        RtpCodecKind::Audio,
    )?;
    let feedback = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![feedback("ccm", "fir"), feedback("nack", "pli")],
            },
            payload_type: VP8_PAYLOAD_TYPE,
        },
        RtpCodecKind::Video,
    )?;
    Ok(engine)
}

/// An interceptor that marks inbound sender reports (for the recording timeline) and keyframe
/// requests (PLI, FIR: for senders) for delivery to the application. Everything passes through
/// unchanged; the other RTCP stays with the interceptors.
#[derive(Default)]
pub struct RtcpTap {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

fn wanted_by_application(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<SenderReport>() || any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RtcpTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if packets.iter().any(|p| wanted_by_application(p.as_ref())) {
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

/// Drops and reorders outgoing RTP per a [`LossSpec`] (see there).
pub struct LossInjector {
    spec: LossSpec,
    state: u64,
    held: Option<TaggedPacket>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
    /// (SSRC, sequence number) of packets dropped for good (sticky mode), bounded.
    lost: VecDeque<(u32, u16)>,
    /// Packets dropped so far.
    pub dropped: u64,
}

impl LossInjector {
    /// An injector following `spec`.
    pub fn new(spec: LossSpec) -> Self {
        Self {
            spec,
            state: spec.seed | 1,
            held: None,
            read: VecDeque::new(),
            write: VecDeque::new(),
            lost: VecDeque::new(),
            dropped: 0,
        }
    }

    /// xorshift64*: a uniform number in [0, 1).
    fn next(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for LossInjector {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        let Packet::Rtp(rtp) = &msg.message.packet else {
            self.write.push_back(msg);
            return Ok(());
        };
        let key = (rtp.header.ssrc, rtp.header.sequence_number);
        if self.spec.sticky && self.lost.contains(&key) {
            self.dropped += 1;
            return Ok(());
        }
        if self.next() < self.spec.drop {
            self.dropped += 1;
            if self.spec.sticky {
                if self.lost.len() >= 4096 {
                    self.lost.pop_front();
                }
                self.lost.push_back(key);
            }
            return Ok(());
        }
        if self.held.is_none() && self.next() < self.spec.reorder {
            self.held = Some(msg);
            return Ok(());
        }
        self.write.push_back(msg);
        if let Some(held) = self.held.take() {
            self.write.push_back(held);
        }
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for LossInjector {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

impl Interceptor for RtcpTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
