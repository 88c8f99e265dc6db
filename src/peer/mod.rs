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
pub mod tcpmux;
pub mod threads;
pub mod whip;

use crate::signal::protocol::TurnRest;
use rtc::ice::mdns::MulticastDnsMode;
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
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceConnectionState, RTCIceGatheringState, RTCPeerConnectionIceErrorEvent,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSignalingState, Registry,
};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
};

/// Payload type recbot offers for Opus.
pub const OPUS_PAYLOAD_TYPE: u8 = 111;
/// Payload type recbot offers for VP8.
pub const VP8_PAYLOAD_TYPE: u8 = 96;

/// How long ICE waits for a better pair before nominating a peer-reflexive one: not at all.
/// A remote's checks reach us before its trickled candidates do (those go through
/// signaling), so the first working pair is nearly always peer-reflexive, and it is the path
/// the remote's own check just took. webrtc-rs waits 1 s by default; 100 ms was most of the
/// time to a first keyframe.
pub const PRFLX_ACCEPTANCE_WAIT: std::time::Duration = std::time::Duration::ZERO;

/// How often ICE checks candidate pairs while connecting (webrtc-rs's default is 200 ms).
/// Nomination happens on a check tick, so this tick is most of the time from an answer to a
/// connected pair; with 200 ms the first keyframe came 100–300 ms later than it needed to.
/// Browsers pace their checks at about 50 ms too.
pub const ICE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Most connectivity checks one candidate pair gets before it is given up: with
/// [`ICE_CHECK_INTERVAL`] a pair is tried for 1 s. This bounds what a remote that lists
/// addresses that never answer gets sent to each: at most `ICE_MAX_BINDING_REQUESTS + 1`
/// datagrams per local candidate (webrtc-rs's default is 7 at 200 ms, 1.4 s). An answer that
/// comes later still counts: webrtc-rs keeps a check's transaction for 4 s.
pub const ICE_MAX_BINDING_REQUESTS: u16 = 20;

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

/// Most remote ICE candidates one connection accepts over its whole life, from SDP and
/// trickle together. Each one is a target of connectivity checks (at most
/// [`ICE_MAX_BINDING_REQUESTS`]` + 1` STUN requests per local candidate): without a cap, one offer listing hundreds of candidates makes recbot send
/// datagrams to hundreds of chosen ports (a reflector). Browsers list far fewer.
pub const MAX_REMOTE_CANDIDATES: usize = 20;

/// Why a remote candidate is not given to webrtc-rs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateRefusal {
    /// Not a candidate line webrtc-rs can use (too few fields, a bad number, no `typ`).
    Malformed,
    /// An address nobody can be reached at: unspecified (`0.0.0.0/8`, `::`), multicast,
    /// broadcast or reserved (`240.0.0.0/4`), link-local (`169.254/16`, `fe80::/10`).
    Address,
    /// Port 0, or a privileged port (< 1024) on a candidate that is not a TURN relay (relays
    /// legitimately listen on 443 and such).
    Port,
    /// A host name other than an mDNS `.local` name.
    Hostname,
    /// Not a loopback address while [`PeerConfig::loopback_candidates_only`] is set.
    NotLoopback,
    /// The connection already accepted [`MAX_REMOTE_CANDIDATES`].
    OverCap,
}

/// What identifies a remote candidate to webrtc-rs (its `Candidate::equal`): a second line
/// with the same identity adds no pair, so it is let through without counting.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CandidateIdentity {
    transport: String,
    kind: String,
    address: String,
    port: u16,
    tcp_type: String,
    related_address: String,
}

/// The remote ICE candidates of one connection: which ones are given to webrtc-rs, from the
/// SDP of offers and answers ([`CandidatePolicy::filter_sdp`]) and from trickle
/// ([`CandidatePolicy::admit`]) alike.
///
/// Invariants: at most `max` distinct candidates are ever admitted; none names an address of
/// [`CandidateRefusal::Address`], a port of [`CandidateRefusal::Port`], or a host name other
/// than `.local`; with `loopback_only`, only loopback addresses are admitted. Pure: no I/O.
#[derive(Debug, Clone)]
pub struct CandidatePolicy {
    max: usize,
    loopback_only: bool,
    admitted: Vec<CandidateIdentity>,
}

impl CandidatePolicy {
    /// A policy admitting at most `max` candidates (only loopback ones with `loopback_only`).
    pub fn new(max: usize, loopback_only: bool) -> Self {
        Self {
            max,
            loopback_only,
            admitted: Vec::new(),
        }
    }

    /// The policy of a connection built with `config`: [`MAX_REMOTE_CANDIDATES`], and
    /// [`PeerConfig::loopback_candidates_only`].
    pub fn for_config(config: &PeerConfig) -> Self {
        Self::new(MAX_REMOTE_CANDIDATES, config.loopback_candidates_only)
    }

    /// Number of distinct candidates admitted so far.
    pub fn admitted(&self) -> usize {
        self.admitted.len()
    }

    /// Checks a candidate (`candidate:...`, with or without `a=`) without counting it.
    pub fn check(&self, line: &str) -> Result<(), CandidateRefusal> {
        let identity = parse_candidate(line)?;
        self.check_target(&identity)
    }

    fn check_target(&self, c: &CandidateIdentity) -> Result<(), CandidateRefusal> {
        match c.address.parse::<IpAddr>() {
            Ok(ip) => {
                let ip = ip.to_canonical();
                if unreachable_address(ip) {
                    return Err(CandidateRefusal::Address);
                }
                if self.loopback_only && !ip.is_loopback() {
                    return Err(CandidateRefusal::NotLoopback);
                }
            }
            Err(_) => {
                if !c.address.to_ascii_lowercase().ends_with(".local") {
                    return Err(CandidateRefusal::Hostname);
                }
                if self.loopback_only {
                    return Err(CandidateRefusal::NotLoopback);
                }
            }
        }
        if c.port == 0 || (c.port < 1024 && !c.kind.eq_ignore_ascii_case("relay")) {
            return Err(CandidateRefusal::Port);
        }
        Ok(())
    }

    /// Admits a candidate (`candidate:...`, with or without `a=`): `Ok` when webrtc-rs may
    /// have it, counting it unless the same candidate was admitted before.
    pub fn admit(&mut self, line: &str) -> Result<(), CandidateRefusal> {
        let identity = parse_candidate(line)?;
        self.check_target(&identity)?;
        if self.admitted.contains(&identity) {
            return Ok(());
        }
        if self.admitted.len() >= self.max {
            return Err(CandidateRefusal::OverCap);
        }
        self.admitted.push(identity);
        Ok(())
    }

    /// `sdp` without the `a=candidate` lines this policy refuses (the others are admitted and
    /// counted), and the number of lines removed. Every other line is kept as it is.
    pub fn filter_sdp(&mut self, sdp: &str) -> (String, usize) {
        let mut out = String::with_capacity(sdp.len());
        let mut removed = 0;
        for line in sdp.split_inclusive('\n') {
            let content = line.trim_end_matches(['\r', '\n']);
            if content.starts_with("a=candidate:") {
                if let Err(refusal) = self.admit(content) {
                    tracing::debug!(candidate = content, ?refusal, "remote candidate refused");
                    removed += 1;
                    continue;
                }
            }
            out.push_str(line);
        }
        (out, removed)
    }
}

/// Whether this host can open webrtc-rs's mDNS socket (bound to 5353, joined to the IPv4
/// mDNS group). Asked for every connection, so that it follows interfaces coming and going.
fn multicast_dns_available() -> bool {
    rtc::mdns::MulticastSocket::new().into_std().is_ok()
}

/// One of our own candidates (`candidate:...`, with or without `a=`) as it may be sent to a
/// remote, or `None` when it must not be.
///
/// - A candidate at an address nobody can reach (see [`CandidateRefusal::Address`]) is not
///   sent: webrtc-rs binds a wildcard socket as it is when the host has no interface to expand
///   it to (only `lo`), and then offers `0.0.0.0` as a host candidate.
/// - With `public_ips` (NAT 1:1), a host candidate (UDP or TCP) at a local address that is not
///   loopback is sent with the first public IP of its family instead. webrtc-rs 0.21.1 keeps
///   `SettingEngine::with_nat_1to1_ips` but never reads it, and its TCP candidates would not
///   get it anyway. Loopback candidates stay (programs on this host).
/// - With `tcp_port` (the [`tcpmux::TcpMux`] port), a passive TCP candidate is sent with that
///   port: the connection's own listener port is never dialled.
///
/// A line that does not parse is passed as it is, for the remote to judge.
pub fn advertised(candidate: &str, public_ips: &[IpAddr], tcp_port: Option<u16>) -> Option<String> {
    let Ok(c) = parse_candidate(candidate) else {
        return Some(candidate.to_owned());
    };
    let Ok(ip) = c.address.parse::<IpAddr>() else {
        return Some(candidate.to_owned());
    };
    let ip = ip.to_canonical();
    if unreachable_address(ip) {
        return None;
    }
    let public = public_ips
        .iter()
        .find(|p| p.is_ipv4() == ip.is_ipv4())
        .filter(|_| c.kind == "host" && !ip.is_loopback());
    let port = tcp_port.filter(|_| c.transport == "tcp" && c.tcp_type == "passive");
    if public.is_none() && port.is_none() {
        return Some(candidate.to_owned());
    }
    // The address and port are the fifth and sixth fields; the rest is kept as written.
    let mut out = String::with_capacity(candidate.len() + 8);
    for (i, field) in candidate.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        match (i, public, port) {
            (4, Some(public), _) => out.push_str(&public.to_string()),
            (5, _, Some(port)) => out.push_str(&port.to_string()),
            _ => out.push_str(field),
        }
    }
    Some(out)
}

/// Our own `sdp` as it may be sent: every `a=candidate` line through [`advertised`] (dropped
/// or rewritten); every other line is kept as it is.
pub fn advertised_sdp(sdp: &str, public_ips: &[IpAddr], tcp_port: Option<u16>) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let content = line.trim_end_matches(['\r', '\n']);
        let Some(candidate) = content.strip_prefix("a=") else {
            out.push_str(line);
            continue;
        };
        if !candidate.starts_with("candidate:") {
            out.push_str(line);
            continue;
        }
        if let Some(candidate) = advertised(candidate, public_ips, tcp_port) {
            out.push_str("a=");
            out.push_str(&candidate);
            out.push_str(&line[content.len()..]);
        }
    }
    out
}

/// Whether no remote peer can be reached at `ip` (see [`CandidateRefusal::Address`]).
fn unreachable_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let first = v4.octets()[0];
            first == 0 || first >= 224 || v4.is_link_local()
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Parses `[a=]candidate:FOUNDATION COMPONENT TRANSPORT PRIORITY ADDRESS PORT typ TYPE [...]`
/// as webrtc-rs does (RFC 8839 §5.1).
fn parse_candidate(line: &str) -> Result<CandidateIdentity, CandidateRefusal> {
    let line = line.trim();
    let line = line.strip_prefix("a=").unwrap_or(line);
    let line = line.strip_prefix("candidate:").unwrap_or(line);
    let fields: Vec<&str> = line.split_whitespace().collect();
    let malformed = CandidateRefusal::Malformed;
    if fields.len() < 8 || fields[6] != "typ" {
        return Err(malformed);
    }
    fields[1].parse::<u16>().map_err(|_| malformed)?;
    fields[3].parse::<u32>().map_err(|_| malformed)?;
    let port = fields[5].parse::<u16>().map_err(|_| malformed)?;
    let mut related_address = String::new();
    let mut tcp_type = String::new();
    for pair in fields[8..].chunks(2) {
        match pair {
            ["raddr", value] => related_address = value.to_ascii_lowercase(),
            ["tcptype", value] => tcp_type = value.to_ascii_lowercase(),
            _ => {}
        }
    }
    Ok(CandidateIdentity {
        transport: fields[2].to_ascii_lowercase(),
        kind: fields[7].to_ascii_lowercase(),
        address: fields[4].to_ascii_lowercase(),
        port,
        tcp_type,
        related_address,
    })
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
    /// Fresh TURN credentials for our own connections (user `recbot`), replacing the static
    /// ones of the TURN entries of `ice_servers`.
    pub turn_rest: Option<TurnRest>,
    /// The port of passive ICE-TCP host candidates on the `udp_bind` IPs, shared by every
    /// connection through a [`tcpmux::TcpMux`]; no TCP candidates without it.
    pub tcp_port: Option<u16>,
    /// Dedicated threads the connections' drivers (and the tasks their events spawn) run on
    /// ([`threads::MediaThreads`]); 0: on the runtime that builds them.
    pub media_threads: usize,
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
            turn_rest: None,
            tcp_port: None,
            media_threads: 0,
        }
    }
}

/// Builds RTCPeerConnections with recbot's codecs, interceptors and network settings.
pub struct PeerFactory {
    config: PeerConfig,
    next_port: AtomicU32,
    /// The shared ICE-TCP port, bound at the first build (`None` inside: binding failed).
    tcp_mux: tokio::sync::OnceCell<Option<Arc<tcpmux::TcpMux>>>,
    /// Connections built here → their key in the mux (see [`PeerFactory::route_tcp`]);
    /// entries of connections gone are pruned at each build.
    tcp_keys: std::sync::Mutex<TcpKeys>,
    next_tcp_key: AtomicU64,
    /// [`DtlsKick`]s consumed by the connections built here.
    dtls_kicks: Arc<AtomicU64>,
    /// Where the connections' drivers run, with `media_threads` set (`None`: on the runtime
    /// that builds them). Each connection's runtime adapter holds it too, so the threads
    /// outlive every connection on them.
    threads: Option<Arc<threads::MediaThreads>>,
}

/// A built connection, shareable between tasks.
pub type Pc = Arc<dyn PeerConnection>;

/// Connections (by [`pc_id`]) and their key in the ICE-TCP mux.
type TcpKeys = std::collections::HashMap<usize, (std::sync::Weak<dyn PeerConnection>, u64)>;

/// A connection's identity while it lives (its address).
fn pc_id(pc: &Pc) -> usize {
    Arc::as_ptr(pc).cast::<()>() as usize
}

impl PeerFactory {
    /// A factory for `config`.
    pub fn new(config: PeerConfig) -> Arc<Self> {
        let threads = match config.media_threads {
            0 => None,
            n => match threads::MediaThreads::start(n) {
                Ok(pool) => Some(Arc::new(pool)),
                Err(e) => {
                    tracing::warn!(error = %e, "media threads not started: connections run on the main runtime");
                    None
                }
            },
        };
        Arc::new(Self {
            threads,
            config,
            next_port: AtomicU32::new(0),
            tcp_mux: tokio::sync::OnceCell::new(),
            tcp_keys: Default::default(),
            next_tcp_key: AtomicU64::new(0),
            dtls_kicks: Arc::default(),
        })
    }

    /// How many [`DtlsKick`]s the connections built here consumed (one per connection whose
    /// ICE connected, normally).
    pub fn dtls_kicks_applied(&self) -> u64 {
        self.dtls_kicks.load(Ordering::Relaxed)
    }

    /// Tasks alive on the media threads (0 without them): the process's task gauge adds them.
    pub fn media_tasks(&self) -> usize {
        self.threads.as_ref().map_or(0, |t| t.alive_tasks())
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
        let tcp = self
            .mux()
            .await
            .map(|mux| (mux, self.next_tcp_key.fetch_add(1, Ordering::Relaxed)));
        let pc = self.build_ports(handler, tcp.clone()).await?;
        if let Some((_, key)) = tcp {
            let mut keys = self.keys();
            keys.retain(|_, (pc, _)| pc.strong_count() > 0);
            keys.insert(pc_id(&pc), (Arc::downgrade(&pc), key));
        }
        Ok(pc)
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, TcpKeys> {
        self.tcp_keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shared ICE-TCP port's mux, bound on first use; `None` without `tcp_port` or when
    /// it cannot be bound (logged once: connections then have no TCP candidates).
    async fn mux(&self) -> Option<Arc<tcpmux::TcpMux>> {
        let port = self.config.tcp_port?;
        self.tcp_mux
            .get_or_init(|| async {
                match tcpmux::TcpMux::bind(&self.config.udp_bind, port) {
                    Ok(mux) => Some(mux),
                    Err(e) => {
                        tracing::error!(port, error = %e, "ICE-TCP port not bound: no TCP candidates");
                        None
                    }
                }
            })
            .await
            .clone()
    }

    /// Tells the ICE-TCP mux that `pc`'s local ICE username fragment is now the one of
    /// `local_sdp` (call after each `set_local_description`: restarts change it). Nothing
    /// without ICE-TCP.
    pub fn route_tcp(&self, pc: &Pc, local_sdp: &str) {
        let Some(Some(mux)) = self.tcp_mux.get() else {
            return;
        };
        let Some(key) = self.keys().get(&pc_id(pc)).map(|(_, key)| *key) else {
            return;
        };
        let ufrag = local_sdp
            .lines()
            .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"));
        if let Some(ufrag) = ufrag {
            mux.route(key, ufrag.trim());
        }
    }

    /// The port advertised in passive TCP candidates, when ICE-TCP is on.
    pub fn tcp_port(&self) -> Option<u16> {
        self.tcp_mux.get()?.as_ref().map(|m| m.port())
    }

    async fn build_ports(
        &self,
        handler: Arc<dyn PeerConnectionEventHandler>,
        tcp: Option<(Arc<tcpmux::TcpMux>, u64)>,
    ) -> Result<Pc, PeerError> {
        let Some((min, max)) = self.config.udp_ports else {
            return self.build_on(Arc::clone(&handler), 0, tcp).await;
        };
        let span = u32::from(max - min) + 1;
        let mut last = None;
        // Each attempt takes the next port of the range, so concurrent builds spread out; a port
        // that is taken fails the bind and the next one is tried.
        for _ in 0..span.min(64) {
            let offset = self.next_port.fetch_add(1, Ordering::Relaxed) % span;
            let port = min + offset as u16;
            match self.build_on(Arc::clone(&handler), port, tcp.clone()).await {
                Ok(pc) => return Ok(pc),
                Err(e) => last = Some(e),
            }
        }
        tracing::warn!(?last, "no UDP port free in range");
        Err(PeerError::NoPort(min, max))
    }

    /// The ICE servers our connections use: the configured ones, with fresh TURN REST
    /// credentials when configured.
    fn ice_servers(&self) -> Vec<crate::signal::protocol::IceServer> {
        match &self.config.turn_rest {
            Some(rest) => rest.apply(
                &self.config.ice_servers,
                "recbot",
                std::time::SystemTime::now(),
            ),
            None => self.config.ice_servers.clone(),
        }
    }

    async fn build_on(
        &self,
        handler: Arc<dyn PeerConnectionEventHandler>,
        port: u16,
        tcp: Option<(Arc<tcpmux::TcpMux>, u64)>,
    ) -> Result<Pc, PeerError> {
        let mut media_engine = media_engine()?;
        let mut registry = register_default_interceptors(Registry::new(), &mut media_engine)?
            .with(Slot::from(12_500), RtcpTap::default());
        if let Some(loss) = self.config.outbound_loss {
            registry = registry.with(Slot::from(500), LossInjector::new(loss));
        }
        let ice_servers = self
            .ice_servers()
            .into_iter()
            .map(|s| RTCIceServer {
                urls: s.urls,
                username: s.username.unwrap_or_default(),
                credential: s.credential.unwrap_or_default(),
            })
            .collect();
        let configuration = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers)
            .build();
        // A remote's checks often arrive before its trickled candidates, so the first pair is
        // peer-reflexive; webrtc-rs's default waits a whole second before accepting one.
        let mut settings = SettingEngineBuilder::new()
            .with_prflx_acceptance_min_wait(Some(PRFLX_ACCEPTANCE_WAIT))
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS));
        if self.config.udp_bind.iter().any(IpAddr::is_loopback) {
            settings = settings.with_include_loopback_candidate(true);
        }
        // webrtc-rs opens an mDNS socket (joined to 224.0.0.251) for every connection by
        // default, and fails the whole build when it cannot: on a host whose only interface is
        // a loopback without multicast, every connection would fail with "No such device".
        // Without it, remote `.local` candidates are not resolved; the remote's checks still
        // reach us and become peer-reflexive pairs.
        if !multicast_dns_available() {
            tracing::debug!("no multicast-capable interface: mDNS off");
            settings = settings.with_multicast_dns_mode(MulticastDnsMode::Disabled);
        }
        // webrtc-rs 0.21.1 does not read this setting (kept for when it does): what we
        // advertise gets the public IPs from [`advertised`].
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
        // The driver's own listeners, on ephemeral ports: what they accept comes from the mux.
        let tcp_addrs: Vec<SocketAddr> = match tcp {
            Some(_) => self
                .config
                .udp_bind
                .iter()
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect(),
            None => Vec::new(),
        };
        // See [`DtlsKick`]: without it, the DTLS client's first flight waits for the next
        // ICE tick (up to 200 ms) after the pair is selected.
        let kick = Arc::new(DtlsKick::counted_in(Arc::clone(&self.dtls_kicks)));
        let runtime =
            KickRuntime::new(Arc::clone(&kick), tcp, self.threads.clone()).ok_or_else(|| {
                PeerError::WebRtc(webrtc::error::Error::Other(
                    "no async runtime for webrtc-rs".to_owned(),
                ))
            })?;
        let handler = Arc::new(KickHandler {
            inner: handler,
            kick,
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_media_engine(media_engine)
            .with_setting_engine(settings.build())
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_runtime(Arc::new(runtime))
            .with_udp_addrs(addrs)
            .with_tcp_addrs(tcp_addrs)
            // Non-zero: webrtc-rs hands the driver to `spawn_reactor`, which puts it on our
            // media threads (the size itself is not used beyond that).
            .with_dedicated_reactor_pool_size(self.threads.as_ref().map_or(0, |t| t.len()))
            .build()
            .await?;
        Ok(Arc::new(pc))
    }
}

/// A request that a connection's webrtc-rs driver run its timers at once, made when ICE
/// connects.
///
/// Why: in webrtc-rs 0.21.1, when ICE selects a pair, the DTLS client's `connect()` (in
/// `rtc`'s `DtlsHandler::handle_event`) puts the ClientHello into the DTLS endpoint's
/// transmit queue, and only the handler's `handle_timeout`, `handle_read` and `handle_write`
/// of DTLS records move that queue to the socket. Nothing is read or written until the
/// handshake starts, so the ClientHello waits for the next timer of the driver: the ICE
/// check tick, up to 200 ms later (measured: 200 ms, every time). [`KickHandler`] requests
/// a kick when ICE connects (the driver calls it after the DTLS handler has queued the
/// ClientHello, in the same loop iteration), and [`KickRuntime`] makes the driver's next
/// timer, armed right after in that iteration, due at once; its expiry runs the
/// connection's `handle_timeout`, which sends the ClientHello. A DTLS server only gets one
/// extra timer pass. Nothing in webrtc-rs is patched.
///
/// Invariant: a requested kick is consumed by exactly one timer of the connection's runtime.
#[derive(Debug, Default)]
pub struct DtlsKick {
    pending: AtomicBool,
    applied: Arc<AtomicU64>,
}

impl DtlsKick {
    /// A kick whose consumptions are added to `applied` (shared by a factory's connections).
    pub fn counted_in(applied: Arc<AtomicU64>) -> Self {
        Self {
            pending: AtomicBool::new(false),
            applied,
        }
    }

    /// Asks for the connection's next timer to be due at once.
    pub fn request(&self) {
        self.pending.store(true, Ordering::Release);
    }

    /// Whether a kick is pending; consumes it.
    fn take(&self) -> bool {
        let taken = self.pending.swap(false, Ordering::AcqRel);
        if taken {
            self.applied.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// How many kicks a timer has consumed (tests and diagnostics; shared with the other
    /// kicks counted in the same place).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }
}

/// The event handler recbot gives webrtc-rs: forwards every event to the link's handler and
/// requests a [`DtlsKick`] when ICE connects.
struct KickHandler {
    inner: Arc<dyn PeerConnectionEventHandler>,
    kick: Arc<DtlsKick>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for KickHandler {
    async fn on_negotiation_needed(&self) {
        self.inner.on_negotiation_needed().await;
    }

    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        self.inner.on_ice_candidate(event).await;
    }

    async fn on_ice_candidate_error(&self, event: RTCPeerConnectionIceErrorEvent) {
        self.inner.on_ice_candidate_error(event).await;
    }

    async fn on_signaling_state_change(&self, state: RTCSignalingState) {
        self.inner.on_signaling_state_change(state).await;
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        if state == RTCIceConnectionState::Connected {
            self.kick.request();
        }
        self.inner.on_ice_connection_state_change(state).await;
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.inner.on_ice_gathering_state_change(state).await;
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.inner.on_connection_state_change(state).await;
    }

    async fn on_data_channel(&self, data_channel: Arc<dyn DataChannel>) {
        self.inner.on_data_channel(data_channel).await;
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.inner.on_track(track).await;
    }
}

/// webrtc-rs's default runtime (tokio) for one connection, except that: the first timer
/// armed after a [`DtlsKick`] request is due at once; its TCP listeners are fed by the
/// ICE-TCP mux; and its driver, handed to `spawn_reactor`, runs on the media threads.
#[derive(Debug)]
pub struct KickRuntime {
    inner: Arc<dyn Runtime>,
    kick: Arc<DtlsKick>,
    /// The shared ICE-TCP port and this connection's key in it: TCP listeners are fed by it.
    tcp: Option<(Arc<tcpmux::TcpMux>, u64)>,
    /// Where `spawn_reactor` puts the driver (`None`: webrtc-rs's own pool, never asked for).
    threads: Option<Arc<threads::MediaThreads>>,
}

impl KickRuntime {
    /// Wraps webrtc-rs's default runtime; `None` when it has none (no runtime feature). With
    /// `tcp`, the connection's TCP listeners accept what the mux routes to `key`; with
    /// `threads`, its driver runs there.
    pub fn new(
        kick: Arc<DtlsKick>,
        tcp: Option<(Arc<tcpmux::TcpMux>, u64)>,
        threads: Option<Arc<threads::MediaThreads>>,
    ) -> Option<Self> {
        Some(Self {
            inner: webrtc::runtime::default_runtime()?,
            kick,
            tcp,
            threads,
        })
    }
}

impl Drop for KickRuntime {
    fn drop(&mut self) {
        if let Some((mux, key)) = &self.tcp {
            mux.forget(*key);
        }
    }
}

/// A driver's task on the [`threads::MediaThreads`], as webrtc-rs holds it.
struct MediaTask(tokio::task::JoinHandle<()>);

impl JoinHandle for MediaTask {
    fn detach(&self) {}

    fn abort(&self) {
        self.0.abort();
    }

    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Runtime for KickRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        match &self.threads {
            Some(threads) => Box::new(MediaTask(threads.spawn(future))),
            None => self.inner.spawn_reactor(reactor_pool_size, future),
        }
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn AsyncUdpSocket>> {
        self.inner.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> std::io::Result<Arc<dyn AsyncTcpListener>> {
        match &self.tcp {
            // The driver's own listener only names the address; the mux feeds it.
            Some((mux, key)) => Ok(Arc::new(mux.listener(*key, listener.local_addr()?))),
            None => self.inner.wrap_tcp_listener(listener),
        }
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        if self.kick.take() {
            self.inner.sleep(Duration::ZERO)
        } else {
            self.inner.sleep(duration)
        }
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        self.inner.name()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn host(address: &str, port: u16) -> String {
        format!("candidate:1 1 udp 2130706431 {address} {port} typ host")
    }

    /// A handler that only counts ICE state changes (what the kick handler forwards).
    #[derive(Default)]
    struct Counting(AtomicU64);

    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Counting {
        async fn on_ice_connection_state_change(&self, _state: RTCIceConnectionState) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn ice_connected_requests_a_kick_and_events_are_forwarded() {
        let inner = Arc::new(Counting::default());
        let kick = Arc::new(DtlsKick::default());
        let handler = KickHandler {
            inner: inner.clone(),
            kick: kick.clone(),
        };
        handler
            .on_ice_connection_state_change(RTCIceConnectionState::Checking)
            .await;
        assert!(!kick.take(), "no kick while checking");
        handler
            .on_ice_connection_state_change(RTCIceConnectionState::Connected)
            .await;
        assert_eq!(inner.0.load(Ordering::Relaxed), 2);
        assert!(kick.take(), "ICE connected requests a kick");
        assert!(!kick.take(), "a kick is consumed once");
        assert_eq!(kick.applied(), 1);
    }

    #[tokio::test]
    async fn a_kick_makes_the_next_timer_due_at_once_and_only_that_one() {
        let kick = Arc::new(DtlsKick::default());
        let runtime = KickRuntime::new(kick.clone(), None, None).expect("tokio runtime");
        const HOUR: Duration = Duration::from_secs(3600);
        // Bounds far from an hour tell "due now" from "due in an hour"; they time nothing.
        let fires_within =
            |timer, bound| async move { tokio::time::timeout(bound, timer).await.is_ok() };
        assert!(!fires_within(runtime.sleep(HOUR), Duration::from_millis(50)).await);
        kick.request();
        assert!(fires_within(runtime.sleep(HOUR), Duration::from_secs(60)).await);
        assert!(!fires_within(runtime.sleep(HOUR), Duration::from_millis(50)).await);
        assert_eq!(kick.applied(), 1);
    }

    /// Forwards trickled candidates into a channel and reports connection states.
    struct Signal {
        candidates: tokio::sync::mpsc::UnboundedSender<RTCPeerConnectionIceEvent>,
        state: tokio::sync::watch::Sender<RTCPeerConnectionState>,
    }

    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Signal {
        async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
            let _ = self.candidates.send(event);
        }
        async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
            self.state.send_replace(state);
        }
    }

    async fn connection(
        factory: &PeerFactory,
    ) -> (
        Pc,
        tokio::sync::mpsc::UnboundedReceiver<RTCPeerConnectionIceEvent>,
        tokio::sync::watch::Receiver<RTCPeerConnectionState>,
    ) {
        let (candidates, candidates_rx) = tokio::sync::mpsc::unbounded_channel();
        let (state, state_rx) = tokio::sync::watch::channel(RTCPeerConnectionState::New);
        let pc = factory
            .build(Arc::new(Signal { candidates, state }))
            .await
            .expect("connection");
        (pc, candidates_rx, state_rx)
    }

    fn trickle(mut from: tokio::sync::mpsc::UnboundedReceiver<RTCPeerConnectionIceEvent>, to: Pc) {
        tokio::spawn(async move {
            while let Some(event) = from.recv().await {
                if let Ok(init) = event.candidate.to_json() {
                    let _ = to.add_ice_candidate(init).await;
                }
            }
        });
    }

    /// Two connections of `factory`, one offering to receive video, connected over loopback.
    async fn connected_pair(factory: &PeerFactory) -> (Pc, Pc) {
        use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
        let (offerer, offerer_candidates, mut offerer_state) = connection(factory).await;
        let (answerer, answerer_candidates, mut answerer_state) = connection(factory).await;
        offerer
            .add_transceiver_from_kind(
                RtpCodecKind::Video,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await
            .expect("transceiver");
        let offer = offerer.create_offer(None).await.expect("offer");
        offerer
            .set_local_description(offer.clone())
            .await
            .expect("local offer");
        answerer
            .set_remote_description(offer)
            .await
            .expect("remote offer");
        let answer = answerer.create_answer(None).await.expect("answer");
        answerer
            .set_local_description(answer.clone())
            .await
            .expect("local answer");
        offerer
            .set_remote_description(answer)
            .await
            .expect("remote answer");
        trickle(offerer_candidates, Arc::clone(&answerer));
        trickle(answerer_candidates, Arc::clone(&offerer));
        // A generous bound against a hang, not a speed check.
        let connected = |state: RTCPeerConnectionState| state == RTCPeerConnectionState::Connected;
        tokio::time::timeout(Duration::from_secs(20), async {
            offerer_state
                .wait_for(|s| connected(*s))
                .await
                .expect("offerer state");
            answerer_state
                .wait_for(|s| connected(*s))
                .await
                .expect("answerer state");
        })
        .await
        .expect("both sides connect");
        (offerer, answerer)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_built_by_the_factory_get_their_dtls_kick() {
        let factory = PeerFactory::new(PeerConfig::loopback());
        let (offerer, answerer) = connected_pair(&factory).await;
        // Each side's ICE connected once: the DTLS client's kick sent its ClientHello, the
        // server's cost one extra timer pass.
        assert_eq!(factory.dtls_kicks_applied(), 2);
        assert_eq!(factory.media_tasks(), 0, "no media threads asked for");
        let _ = offerer.close().await;
        let _ = answerer.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_media_threads_the_drivers_run_there_and_end_with_their_connections() {
        let factory = PeerFactory::new(PeerConfig {
            media_threads: 1,
            ..PeerConfig::loopback()
        });
        let (offerer, answerer) = connected_pair(&factory).await;
        // The two drivers are on the media thread, and the kick still works from there.
        assert!(factory.media_tasks() >= 2, "{}", factory.media_tasks());
        assert_eq!(factory.dtls_kicks_applied(), 2);
        let (tx, rx) = tokio::sync::oneshot::channel();
        // What a connection's events spawn lands on its driver's thread.
        struct Probe(std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Option<String>>>>);
        #[async_trait::async_trait]
        impl PeerConnectionEventHandler for Probe {
            async fn on_ice_candidate(&self, _event: RTCPeerConnectionIceEvent) {
                let tx = self.0.lock().ok().and_then(|mut t| t.take());
                tokio::spawn(async move {
                    if let Some(tx) = tx {
                        let _ = tx.send(std::thread::current().name().map(str::to_owned));
                    }
                });
            }
        }
        let probe = factory
            .build(Arc::new(Probe(std::sync::Mutex::new(Some(tx)))))
            .await
            .expect("connection");
        probe
            .add_transceiver_from_kind(RtpCodecKind::Audio, None)
            .await
            .expect("transceiver");
        // The local offer starts gathering (a message to the driver): candidates follow.
        let offer = probe.create_offer(None).await.expect("offer");
        probe
            .set_local_description(offer)
            .await
            .expect("local offer");
        let thread = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("a candidate gathered")
            .expect("probe task ran");
        assert_eq!(thread.as_deref(), Some("recbot-media0"));
        for pc in [offerer, answerer, probe] {
            let _ = pc.close().await;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while factory.media_tasks() > 0 {
            assert!(std::time::Instant::now() < deadline, "drivers left running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn usable_candidates_are_admitted() {
        let mut policy = CandidatePolicy::new(MAX_REMOTE_CANDIDATES, false);
        for line in [
            host("192.0.2.7", 50000),
            host("127.0.0.1", 1024),
            host("2001:db8::1", 61000),
            host("fd00::5", 40000),
            host("3c1ee1e2-8f5b-4ab0-a1b2-8d0e7e3a6c55.local", 56000),
            "a=candidate:2 1 UDP 1686052607 203.0.113.9 61000 typ srflx raddr 10.0.0.2 rport 5000"
                .into(),
            "candidate:3 1 udp 41885439 198.51.100.3 443 typ relay raddr 203.0.113.9 rport 61000"
                .into(),
            "candidate:4 1 tcp 1518280447 192.0.2.7 9000 typ host tcptype passive".into(),
        ] {
            assert_eq!(policy.admit(&line), Ok(()), "{line}");
        }
        assert_eq!(policy.admitted(), 8);
    }

    #[test]
    fn unreachable_targets_and_bad_ports_are_refused() {
        let policy = CandidatePolicy::new(MAX_REMOTE_CANDIDATES, false);
        for address in [
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "224.0.0.251",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "169.254.10.20",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "::ffff:169.254.1.1",
            "::ffff:224.0.0.1",
        ] {
            assert_eq!(
                policy.check(&host(address, 50000)),
                Err(CandidateRefusal::Address),
                "{address}"
            );
        }
        assert_eq!(
            policy.check(&host("fec0::1", 50000)),
            Ok(()),
            "fe80::/10 only"
        );
        assert_eq!(
            policy.check(&host("192.0.2.7", 0)),
            Err(CandidateRefusal::Port)
        );
        assert_eq!(
            policy.check(&host("192.0.2.7", 53)),
            Err(CandidateRefusal::Port)
        );
        assert_eq!(
            policy.check("candidate:1 1 udp 1 192.0.2.7 9 typ host tcptype active"),
            Err(CandidateRefusal::Port)
        );
        assert_eq!(
            policy.check("candidate:1 1 udp 1 198.51.100.3 0 typ relay"),
            Err(CandidateRefusal::Port)
        );
        assert_eq!(
            policy.check(&host("victim.example.com", 50000)),
            Err(CandidateRefusal::Hostname)
        );
        assert_eq!(
            policy.check(&host("fe80::1%eth0", 50000)),
            Err(CandidateRefusal::Hostname)
        );
        for garbage in [
            "garbage",
            "candidate:1 1 udp 1 192.0.2.7 5000",
            "candidate:1 1 udp 1 192.0.2.7 5000 type host",
            "candidate:1 x udp 1 192.0.2.7 5000 typ host",
            "candidate:1 1 udp 1 192.0.2.7 70000 typ host",
            "",
        ] {
            assert_eq!(
                policy.check(garbage),
                Err(CandidateRefusal::Malformed),
                "{garbage}"
            );
        }
    }

    #[test]
    fn loopback_only_keeps_loopback_addresses() {
        let policy = CandidatePolicy::new(MAX_REMOTE_CANDIDATES, true);
        assert_eq!(policy.check(&host("127.0.0.1", 50000)), Ok(()));
        assert_eq!(
            policy.check("candidate:1 1 UDP 1 ::1 5000 typ host"),
            Ok(())
        );
        assert_eq!(
            policy.check(&host("10.0.0.2", 50000)),
            Err(CandidateRefusal::NotLoopback)
        );
        assert_eq!(
            policy.check(&host("abcd.local", 50000)),
            Err(CandidateRefusal::NotLoopback)
        );
    }

    #[test]
    fn the_cap_counts_distinct_candidates_over_the_life_of_a_connection() {
        let mut policy = CandidatePolicy::new(3, false);
        let sdp = format!(
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na={}\r\na={}\r\n\
             a=candidate:9 1 udp 1 224.0.0.1 5000 typ host\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
             a=mid:1\r\na={}\r\na=end-of-candidates\r\n",
            host("192.0.2.1", 5001),
            host("192.0.2.2", 5002),
            host("192.0.2.1", 5001),
        );
        let (filtered, removed) = policy.filter_sdp(&sdp);
        // The multicast one goes; the repeat of the first one (webrtc-rs adds no pair for it)
        // stays without counting.
        assert_eq!(removed, 1);
        assert_eq!(
            filtered,
            sdp.replace("a=candidate:9 1 udp 1 224.0.0.1 5000 typ host\r\n", "")
        );
        assert_eq!(policy.admitted(), 2);
        // Trickled ones count toward the same cap.
        assert_eq!(policy.admit(&host("192.0.2.3", 5003)), Ok(()));
        assert_eq!(
            policy.admit(&host("192.0.2.4", 5004)),
            Err(CandidateRefusal::OverCap)
        );
        // A variant with another related address is another candidate to webrtc-rs.
        assert_eq!(
            policy.admit("candidate:1 1 udp 1 192.0.2.1 5001 typ srflx raddr 10.0.0.1 rport 9"),
            Err(CandidateRefusal::OverCap)
        );
        assert_eq!(policy.admit(&host("192.0.2.2", 5002)), Ok(()));
        // A later SDP (renegotiation) cannot add more either.
        let (filtered, removed) =
            policy.filter_sdp(&format!("v=0\na={}\n", host("192.0.2.5", 5005)));
        assert_eq!((filtered.as_str(), removed), ("v=0\n", 1));
        assert_eq!(policy.admitted(), 3);
    }

    #[test]
    fn unspecified_local_candidates_are_not_advertised() {
        let sent = |line: &str| advertised(line, &[], None);
        assert_eq!(sent(&host("0.0.0.0", 50000)), None);
        assert_eq!(sent("candidate:1 1 udp 1 :: 50000 typ host"), None);
        assert_eq!(
            sent("candidate:1 1 tcp 1 0.0.0.0 9000 typ host tcptype passive"),
            None
        );
        for kept in [
            host("127.0.0.1", 50000),
            host("192.0.2.7", 50000),
            "candidate:1 1 udp 1 198.51.100.3 3478 typ relay raddr 0.0.0.0 rport 0".into(),
            "garbage".into(),
        ] {
            assert_eq!(sent(&kept), Some(kept.clone()));
        }
        let sdp = format!(
            "v=0\r\na={}\r\na={}\r\na=end-of-candidates\r\n",
            host("0.0.0.0", 5000),
            host("127.0.0.1", 5001)
        );
        assert_eq!(
            advertised_sdp(&sdp, &[], None),
            format!(
                "v=0\r\na={}\r\na=end-of-candidates\r\n",
                host("127.0.0.1", 5001)
            )
        );
    }

    #[test]
    fn public_ips_replace_local_host_addresses_udp_and_tcp() {
        let public = [
            IpAddr::from([203, 0, 113, 9]),
            "2001:db8::9".parse().unwrap(),
        ];
        let sent = |line: &str| advertised(line, &public, None);
        assert_eq!(
            sent(&host("10.0.0.5", 50000)).as_deref(),
            Some(host("203.0.113.9", 50000).as_str())
        );
        assert_eq!(
            sent("candidate:2 1 tcp 1518280447 10.0.0.5 8443 typ host tcptype passive").as_deref(),
            Some("candidate:2 1 tcp 1518280447 203.0.113.9 8443 typ host tcptype passive")
        );
        assert_eq!(
            sent("candidate:3 1 udp 1 fd00::5 5000 typ host").as_deref(),
            Some("candidate:3 1 udp 1 2001:db8::9 5000 typ host")
        );
        // Loopback, relays and reflexive candidates are what they say.
        for kept in [
            host("127.0.0.1", 50000),
            "candidate:4 1 udp 1 198.51.100.3 3478 typ relay raddr 10.0.0.5 rport 5000".into(),
            "candidate:5 1 udp 1 198.51.100.4 5000 typ srflx raddr 10.0.0.5 rport 5000".into(),
        ] {
            assert_eq!(sent(&kept), Some(kept.clone()));
        }
        // Only an address of the same family replaces one.
        assert_eq!(
            advertised(
                "candidate:3 1 udp 1 fd00::5 5000 typ host",
                &public[..1],
                None
            )
            .as_deref(),
            Some("candidate:3 1 udp 1 fd00::5 5000 typ host")
        );
        assert_eq!(
            advertised_sdp(
                &format!("v=0\na={}\n", host("10.0.0.5", 1234)),
                &public,
                None
            ),
            format!("v=0\na={}\n", host("203.0.113.9", 1234))
        );
    }

    #[test]
    fn passive_tcp_candidates_get_the_shared_port() {
        let passive = "candidate:2 1 tcp 1518280447 10.0.0.5 40123 typ host tcptype passive";
        assert_eq!(
            advertised(passive, &[], Some(8443)).as_deref(),
            Some("candidate:2 1 tcp 1518280447 10.0.0.5 8443 typ host tcptype passive")
        );
        assert_eq!(
            advertised(passive, &[IpAddr::from([203, 0, 113, 9])], Some(8443)).as_deref(),
            Some("candidate:2 1 tcp 1518280447 203.0.113.9 8443 typ host tcptype passive")
        );
        for kept in [
            "candidate:3 1 tcp 1 10.0.0.5 9 typ host tcptype active".to_owned(),
            host("10.0.0.5", 40123),
        ] {
            assert_eq!(advertised(&kept, &[], Some(8443)), Some(kept.clone()));
        }
    }

    #[test]
    fn lines_without_an_end_of_line_are_filtered_too() {
        let mut policy = CandidatePolicy::new(1, false);
        let (filtered, removed) = policy.filter_sdp(&format!(
            "v=0\r\na={}\r\na={}",
            host("192.0.2.1", 5001),
            host("192.0.2.2", 5002)
        ));
        assert_eq!(removed, 1);
        assert_eq!(
            filtered,
            format!("v=0\r\na={}\r\n", host("192.0.2.1", 5001))
        );
    }
}
