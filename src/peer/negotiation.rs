//! One RTCPeerConnection toward one remote peer, driven by signaling messages.
//!
//! A [`Link`] owns the connection and runs a task that applies, in order, every offer, answer
//! and candidate for it, so the SDP state machine never sees two operations at once. Glare is
//! resolved by W3C perfect negotiation: the polite side rolls back its own offer and accepts
//! the remote one; the impolite side ignores the remote offer. Candidates that arrive before
//! the remote description are queued. What the link does with media is up to its [`LinkMedia`].
//!
//! Every remote candidate, in an offer's or answer's SDP or trickled, goes through the link's
//! [`CandidatePolicy`]: at most [`MAX_REMOTE_CANDIDATES`] over the connection's life, none at an
//! unreachable address or a privileged port. Refused ones are removed from the SDP before
//! webrtc-rs sees it, so a remote cannot direct connectivity checks at hundreds of targets.
//!
//! The DTLS role of the association is fixed by the first completed offer/answer and kept by
//! every renegotiation (RFC 8842). webrtc-rs keeps it internally, but writes `a=setup` of every
//! answer from its configured answering role (`active`), even when it is the DTLS server of the
//! association; a browser then refuses the answer to its renegotiation ("Failed to set SSL
//! role"). So the link remembers its role ([`established_setup`]) and puts it into the answers
//! it sends ([`with_setup`]). Our own offers say `actpass`, which subsequent offers may say.

use super::{CandidatePolicy, Pc, PeerError, PeerFactory, MAX_REMOTE_CANDIDATES};
use crate::signal::protocol::{Candidate, CandidateField, ClientMessage};
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::mpsc;
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
};

/// Where a link's outgoing signaling goes (the hub for bots, a WebSocket for clients).
pub trait SignalSink: Send + Sync + 'static {
    /// Sends one message toward the remote peer.
    fn send(&self, message: ClientMessage);
}

/// Which side of the first negotiation this link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We send the first offer.
    Offerer,
    /// The remote offered first.
    Answerer,
}

/// What a link's owner does with media. Called from the link's tasks; must not block.
#[async_trait]
pub trait LinkMedia: Send + Sync + 'static {
    /// Adds tracks or transceivers before the first offer or answer.
    async fn setup(&self, pc: &Pc, role: Role) -> Result<(), PeerError>;
    /// A remote track started (its first packets arrived).
    async fn on_track(&self, remote: &str, track: Arc<dyn TrackRemote>);
    /// The connection state changed.
    async fn on_state(&self, _remote: &str, _state: RTCPeerConnectionState) {}
    /// The remote opened a DataChannel (channels this side creates in `setup` are its own).
    async fn on_data_channel(&self, _remote: &str, _channel: Arc<dyn DataChannel>) {}
}

/// Inputs to a link's task.
#[derive(Debug)]
enum Input {
    Offer(String),
    Answer(String),
    Candidate(Option<Candidate>),
    Negotiate,
    /// The connection's state changed (from its event handler).
    State(RTCPeerConnectionState),
}

/// How long a connection may stay `disconnected` or `failed` before the link restarts ICE
/// itself (new credentials, a new offer): the remote's network changed and it may not notice.
pub const ICE_RESTART_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// How long after its first ICE restart that did not bring the connection back the link
/// tries again; each further try waits twice as long, up to [`ICE_RESTART_RETRY_MAX`].
///
/// A restart's checks are decided within about a second (each pair gets
/// [`super::ICE_MAX_BINDING_REQUESTS`] checks every [`super::ICE_CHECK_INTERVAL`], and a pair
/// that failed is not tried again, even when the remote's checks arrive later), so a network
/// that comes back just after a restart only connects at the next one: this keeps that wait
/// short while the outage is short, and the retries sparse while it lasts.
pub const ICE_RESTART_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest wait between two ICE restarts of a connection that stays down.
pub const ICE_RESTART_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// The wait before the next ICE restart after `done` restarts that did not bring the
/// connection back: [`ICE_RESTART_RETRY`], doubled per restart, at most
/// [`ICE_RESTART_RETRY_MAX`].
pub fn ice_restart_retry(done: u32) -> std::time::Duration {
    ICE_RESTART_RETRY
        .saturating_mul(1u32 << done.min(16))
        .min(ICE_RESTART_RETRY_MAX)
}

/// A live connection toward one remote peer. Dropping it closes the connection.
///
/// The connection is built by the link's own task, not by [`Link::start`]: a peer that joins
/// a room of 50 starts 50 links at once, and the answers, candidates and connectivity checks
/// of the first ones must not wait while the last ones are still being built. Inputs given
/// before the connection exists wait in the link's queue, in order.
pub struct Link {
    remote: String,
    tx: mpsc::UnboundedSender<Input>,
    /// Tells the task to close the connection now; dropping the link does the same.
    close: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The webrtc-rs event handler of a link's connection.
///
/// It holds only weak references. webrtc-rs 0.21 never frees a closed connection that had
/// transceivers: `PeerConnectionRef` and `RtpTransceiverImpl` hold `Arc`s to each other
/// (upstream issue #906), and the handler lives inside `PeerConnectionRef`. With strong
/// references, each closed connection would keep its bot's whole state alive, e.g. the
/// recording with its tracks. With weak ones, only this small struct leaks.
struct Handler {
    remote: String,
    /// The link's own inputs (connection states); weak, so that a connection webrtc-rs never
    /// frees does not keep the link's queue open.
    inputs: mpsc::WeakUnboundedSender<Input>,
    /// NAT 1:1 addresses for what we advertise (see [`super::advertised`]).
    public_ips: Vec<std::net::IpAddr>,
    /// The shared ICE-TCP port put into our passive TCP candidates.
    tcp_port: Option<u16>,
    sink: std::sync::Weak<dyn SignalSink>,
    media: std::sync::Weak<dyn LinkMedia>,
}

#[async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let Some(sink) = self.sink.upgrade() else {
            return;
        };
        match event.candidate.to_json() {
            Ok(init) => {
                let Some(line) =
                    super::advertised(&init.candidate, &self.public_ips, self.tcp_port)
                else {
                    tracing::debug!(remote = %self.remote, candidate = %init.candidate, "local candidate not advertised");
                    return;
                };
                sink.send(ClientMessage::Candidate {
                    to: self.remote.clone(),
                    candidate: Candidate {
                        candidate: line,
                        // webrtc-rs reports mid ""; with BUNDLE the first m-line carries the
                        // transport, which every browser accepts by index alone.
                        sdp_mid: None,
                        sdp_mline_index: Some(0),
                        username_fragment: init.username_fragment,
                    }
                    .into(),
                })
            }
            Err(e) => tracing::debug!(remote = %self.remote, error = %e, "candidate not sent"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        let Some(sink) = self.sink.upgrade() else {
            return;
        };
        if state == RTCIceGatheringState::Complete {
            sink.send(ClientMessage::Candidate {
                to: self.remote.clone(),
                candidate: CandidateField::end(),
            });
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(remote = %self.remote, %state, "connection state");
        if let Some(inputs) = self.inputs.upgrade() {
            let _ = inputs.send(Input::State(state));
        }
        let Some(media) = self.media.upgrade() else {
            return;
        };
        let remote = self.remote.clone();
        tokio::spawn(async move { media.on_state(&remote, state).await });
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(media) = self.media.upgrade() else {
            return;
        };
        let remote = self.remote.clone();
        tokio::spawn(async move { media.on_track(&remote, track).await });
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let Some(media) = self.media.upgrade() else {
            return;
        };
        let remote = self.remote.clone();
        tokio::spawn(async move { media.on_data_channel(&remote, channel).await });
    }
}

impl Link {
    /// Starts the link's task, which builds the connection and then applies every input in
    /// order. An `Offerer` link sends its offer as soon as the connection exists. A connection
    /// that cannot be built is logged; the link then ignores its inputs.
    pub fn start(
        factory: &Arc<PeerFactory>,
        remote: &str,
        polite: bool,
        role: Role,
        sink: Arc<dyn SignalSink>,
        media: Arc<dyn LinkMedia>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (close_tx, close_rx) = tokio::sync::oneshot::channel();
        if role == Role::Offerer {
            let _ = tx.send(Input::Negotiate);
        }
        let builder = Builder {
            inputs: tx.downgrade(),
            factory: Arc::clone(factory),
            remote: remote.to_owned(),
            polite,
            role,
            sink,
            media,
        };
        tokio::spawn(builder.run(rx, close_rx));
        Self {
            remote: remote.to_owned(),
            tx,
            close: Some(close_tx),
        }
    }

    /// The remote peer's id.
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// Applies a remote offer (and answers it).
    pub fn offer(&self, sdp: String) {
        let _ = self.tx.send(Input::Offer(sdp));
    }

    /// Applies a remote answer.
    pub fn answer(&self, sdp: String) {
        let _ = self.tx.send(Input::Answer(sdp));
    }

    /// Adds a remote candidate (`None`: end of candidates).
    pub fn candidate(&self, candidate: Option<Candidate>) {
        let _ = self.tx.send(Input::Candidate(candidate));
    }

    /// Creates and sends a new offer (first negotiation or renegotiation).
    pub fn negotiate(&self) {
        let _ = self.tx.send(Input::Negotiate);
    }

    /// Closes the connection (at once, or as soon as it is built).
    pub fn close(mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
    }
}

/// What a link's task needs to build its connection.
struct Builder {
    inputs: mpsc::WeakUnboundedSender<Input>,
    factory: Arc<PeerFactory>,
    remote: String,
    polite: bool,
    role: Role,
    sink: Arc<dyn SignalSink>,
    media: Arc<dyn LinkMedia>,
}

impl Builder {
    /// Builds the connection, then runs the link's state machine until the link is closed or
    /// dropped, and closes the connection at the end. The link's sink and media live as long
    /// as this task: the connection's event handler only has weak references to them.
    async fn run(
        self,
        rx: mpsc::UnboundedReceiver<Input>,
        mut close: tokio::sync::oneshot::Receiver<()>,
    ) {
        let handler = Arc::new(Handler {
            inputs: self.inputs.clone(),
            remote: self.remote.clone(),
            public_ips: self.factory.config().public_ips.clone(),
            tcp_port: self.factory.config().tcp_port,
            sink: Arc::downgrade(&self.sink),
            media: Arc::downgrade(&self.media),
        });
        let built = tokio::select! {
            built = self.factory.build(handler) => built,
            _ = &mut close => return,
        };
        let pc = match built {
            Ok(pc) => pc,
            Err(e) => {
                tracing::error!(remote = %self.remote, error = %e, "could not build a connection");
                return;
            }
        };
        if let Err(e) = self.media.setup(&pc, self.role).await {
            tracing::error!(remote = %self.remote, error = %e, "could not set up the connection");
            let _ = pc.close().await;
            return;
        }
        let state = State {
            remote: self.remote.clone(),
            pc: Arc::clone(&pc),
            sink: Arc::clone(&self.sink),
            polite: self.polite,
            candidates: CandidatePolicy::for_config(self.factory.config()),
            public_ips: self.factory.config().public_ips.clone(),
            factory: Arc::clone(&self.factory),
            have_local_offer: false,
            have_remote_description: false,
            dtls_setup: None,
            pending_candidates: Vec::new(),
            connected: false,
            restart_at: None,
            restarts: 0,
        };
        tokio::select! {
            _ = state.run(rx) => {}
            _ = &mut close => {}
        }
        if let Err(e) = pc.close().await {
            tracing::debug!(remote = %self.remote, error = %e, "close");
        }
    }
}

struct State {
    remote: String,
    pc: Pc,
    sink: Arc<dyn SignalSink>,
    polite: bool,
    /// Which remote candidates webrtc-rs gets (SDP and trickle share its cap).
    candidates: CandidatePolicy,
    /// NAT 1:1 addresses for what we advertise (see [`super::advertised`]).
    public_ips: Vec<std::net::IpAddr>,
    /// The factory that built the connection (its ICE-TCP routes).
    factory: Arc<PeerFactory>,
    have_local_offer: bool,
    have_remote_description: bool,
    /// Our DTLS role in the association, once the first offer/answer completed.
    dtls_setup: Option<DtlsSetup>,
    pending_candidates: Vec<Candidate>,
    /// Whether the connection is `connected` now.
    connected: bool,
    /// When to restart ICE, while the connection is down after having been up.
    restart_at: Option<tokio::time::Instant>,
    /// ICE restarts of ours since the connection was last `connected`.
    restarts: u32,
}

impl State {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        loop {
            let restart_at = self.restart_at;
            let due = async move {
                match restart_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let input = tokio::select! {
                input = rx.recv() => match input {
                    Some(input) => Some(input),
                    None => break,
                },
                _ = due => None,
            };
            let step = match input {
                Some(Input::Offer(sdp)) => self.on_offer(sdp).await,
                Some(Input::Answer(sdp)) => self.on_answer(sdp).await,
                Some(Input::Candidate(c)) => self.on_candidate(c).await,
                Some(Input::Negotiate) => self.make_offer().await,
                Some(Input::State(state)) => {
                    self.on_state(state);
                    Ok(())
                }
                None => self.restart_ice().await,
            };
            if let Err(e) = step {
                tracing::warn!(remote = %self.remote, error = %e, "negotiation step failed");
            }
        }
    }

    /// Arms the ICE restart when a connection that was up goes `disconnected` or `failed`,
    /// and disarms it when it is `connected` again.
    fn on_state(&mut self, state: RTCPeerConnectionState) {
        match state {
            RTCPeerConnectionState::Connected => {
                self.connected = true;
                self.restart_at = None;
                self.restarts = 0;
            }
            RTCPeerConnectionState::Disconnected | RTCPeerConnectionState::Failed => {
                let was_up = std::mem::replace(&mut self.connected, false);
                if was_up && self.restart_at.is_none() {
                    self.restart_at = Some(tokio::time::Instant::now() + ICE_RESTART_AFTER);
                }
            }
            _ => {}
        }
    }

    /// Restarts ICE (new credentials, sockets bound again) and offers, when the connection is
    /// still down; tries again (see [`ice_restart_retry`]) until it is up. With an offer of
    /// ours still unanswered, only the retry is armed. Media files are not touched: the
    /// tracks stay the same, only their packets pause (SPEC §10).
    async fn restart_ice(&mut self) -> Result<(), PeerError> {
        self.restart_at = None;
        if self.connected {
            return Ok(());
        }
        self.restart_at = Some(tokio::time::Instant::now() + ice_restart_retry(self.restarts));
        if self.have_local_offer {
            return Ok(());
        }
        tracing::info!(remote = %self.remote, restarts = self.restarts, "connection down: restarting ICE");
        self.restarts = self.restarts.saturating_add(1);
        self.pc.restart_ice().await?;
        self.make_offer().await
    }

    async fn make_offer(&mut self) -> Result<(), PeerError> {
        if self.have_local_offer {
            // An offer is already out; the answer to it settles the state first.
            return Ok(());
        }
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        self.have_local_offer = true;
        let sdp = self.local_sdp().await;
        self.sink.send(ClientMessage::Offer {
            to: self.remote.clone(),
            sdp,
        });
        Ok(())
    }

    /// Our local description as we send it: without candidates nobody can reach.
    async fn local_sdp(&self) -> String {
        self.pc
            .local_description()
            .await
            .map(|d| {
                // Each new local description may carry new ICE credentials (a restart).
                self.factory.route_tcp(&self.pc, &d.sdp);
                super::advertised_sdp(&d.sdp, &self.public_ips, self.factory.config().tcp_port)
            })
            .unwrap_or_default()
    }

    async fn on_offer(&mut self, sdp: String) -> Result<(), PeerError> {
        let offer_sdp = sdp.clone();
        let sdp = self.filtered(&sdp);
        let offer =
            RTCSessionDescription::offer(sdp).map_err(|e| PeerError::BadSdp(e.to_string()))?;
        if self.have_local_offer {
            if !self.polite {
                tracing::debug!(remote = %self.remote, "glare: impolite side ignores the remote offer");
                return Ok(());
            }
            tracing::debug!(remote = %self.remote, "glare: polite side rolls back its offer");
            let rollback = RTCSessionDescription::rollback(None)
                .map_err(|e| PeerError::BadSdp(e.to_string()))?;
            self.pc.set_local_description(rollback).await?;
            self.have_local_offer = false;
        }
        self.pc.set_remote_description(offer).await?;
        self.have_remote_description = true;
        self.flush_candidates().await;
        let answer = self.pc.create_answer(None).await?;
        // webrtc-rs refuses a local answer that differs from the one it generated
        // (`ErrSDPDoesNotMatchAnswer`), so the role is put into the SDP we send, not into the
        // one we apply. webrtc-rs reads `a=setup` only when it starts the transports at the
        // first negotiation, and then from the remote description: what its local answer says
        // about the role changes nothing on our side.
        self.pc.set_local_description(answer).await?;
        let generated = self.local_sdp().await;
        // The role this answer states: the association's, or at the first negotiation the one
        // the offer leaves us (the inverse of active/passive; ours for actpass).
        let role = self
            .dtls_setup
            .or_else(|| established_setup(&offer_sdp, &generated));
        self.dtls_setup = role;
        let sdp = match role {
            Some(role) => with_setup(&generated, role),
            None => generated,
        };
        self.sink.send(ClientMessage::Answer {
            to: self.remote.clone(),
            sdp,
        });
        Ok(())
    }

    async fn on_answer(&mut self, sdp: String) -> Result<(), PeerError> {
        if !self.have_local_offer {
            tracing::debug!(remote = %self.remote, "answer without an offer out: ignored");
            return Ok(());
        }
        let answer_sdp = sdp.clone();
        let sdp = self.filtered(&sdp);
        let answer =
            RTCSessionDescription::answer(sdp).map_err(|e| PeerError::BadSdp(e.to_string()))?;
        self.pc.set_remote_description(answer).await?;
        if self.dtls_setup.is_none() {
            self.dtls_setup = established_setup(&answer_sdp, "");
        }
        self.have_local_offer = false;
        self.have_remote_description = true;
        self.flush_candidates().await;
        Ok(())
    }

    async fn on_candidate(&mut self, candidate: Option<Candidate>) -> Result<(), PeerError> {
        let Some(candidate) = candidate else {
            return Ok(());
        };
        if !self.have_remote_description {
            // The cap is counted when they are added; more than it can never all be.
            if self.pending_candidates.len() < MAX_REMOTE_CANDIDATES
                && self.candidates.check(&candidate.candidate).is_ok()
            {
                self.pending_candidates.push(candidate);
            }
            return Ok(());
        }
        self.add_candidate(candidate).await;
        Ok(())
    }

    async fn flush_candidates(&mut self) {
        for candidate in std::mem::take(&mut self.pending_candidates) {
            self.add_candidate(candidate).await;
        }
    }

    /// `sdp` without the candidates the policy refuses.
    fn filtered(&mut self, sdp: &str) -> String {
        let (sdp, removed) = self.candidates.filter_sdp(sdp);
        if removed > 0 {
            tracing::debug!(remote = %self.remote, removed, "remote candidates removed from the SDP");
        }
        sdp
    }

    async fn add_candidate(&mut self, candidate: Candidate) {
        if let Err(refusal) = self.candidates.admit(&candidate.candidate) {
            tracing::debug!(remote = %self.remote, ?refusal, "remote candidate refused");
            return;
        }
        let init = RTCIceCandidateInit {
            candidate: candidate.candidate,
            sdp_mid: candidate.sdp_mid,
            sdp_mline_index: candidate.sdp_mline_index,
            username_fragment: candidate.username_fragment,
            ..Default::default()
        };
        if let Err(e) = self.pc.add_ice_candidate(init).await {
            tracing::debug!(remote = %self.remote, error = %e, "remote candidate refused");
        }
    }
}

/// A side's DTLS role in an association, as SDP `a=setup` says it (RFC 4145, RFC 8842).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtlsSetup {
    /// `a=setup:active`: the DTLS client.
    Active,
    /// `a=setup:passive`: the DTLS server.
    Passive,
}

impl DtlsSetup {
    /// The attribute value (`active` / `passive`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Passive => "passive",
        }
    }

    fn inverse(self) -> Self {
        match self {
            Self::Active => Self::Passive,
            Self::Passive => Self::Active,
        }
    }
}

/// The value of the first `a=setup:` line of an SDP (session or media level), if any.
fn setup_value(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=setup:"))
        .map(str::trim)
}

/// Our DTLS role once an offer/answer between `remote_sdp` and `local_sdp` completed: the
/// inverse of the remote's `a=setup:active|passive`; when the remote said `actpass` (it
/// offered), what our answer `local_sdp` said. `None` while that does not settle it.
pub fn established_setup(remote_sdp: &str, local_sdp: &str) -> Option<DtlsSetup> {
    let parse = |value: Option<&str>| match value? {
        v if v.eq_ignore_ascii_case("active") => Some(DtlsSetup::Active),
        v if v.eq_ignore_ascii_case("passive") => Some(DtlsSetup::Passive),
        _ => None,
    };
    match setup_value(remote_sdp) {
        Some(v) if v.eq_ignore_ascii_case("actpass") => parse(setup_value(local_sdp)),
        remote => parse(remote).map(DtlsSetup::inverse),
    }
}

/// `sdp` with every `a=setup:` line saying `role`; everything else, line endings included,
/// is kept as it is.
pub fn with_setup(sdp: &str, role: DtlsSetup) -> String {
    let mut out = String::with_capacity(sdp.len() + 8);
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("a=setup:") {
            let ending = &line[line.trim_end_matches(['\r', '\n']).len()..];
            out.push_str("a=setup:");
            out.push_str(role.as_str());
            out.push_str(ending);
        } else {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=setup:active\r\na=mid:0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=setup:active\r\na=mid:1\r\n";

    fn sdp_with(setup: &str) -> String {
        ANSWER.replace("a=setup:active", &format!("a=setup:{setup}"))
    }

    #[test]
    fn ice_restarts_back_off_from_2_s_to_10_s() {
        let waits: Vec<u64> = (0..6).map(|n| ice_restart_retry(n).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 10, 10, 10]);
        assert_eq!(ice_restart_retry(u32::MAX), ICE_RESTART_RETRY_MAX);
        // The first retry comes after a restart's checks are all decided.
        let window = crate::peer::ICE_CHECK_INTERVAL
            * (u32::from(crate::peer::ICE_MAX_BINDING_REQUESTS) + 1);
        assert!(ICE_RESTART_RETRY > window, "{window:?}");
    }

    #[test]
    fn established_role_from_the_first_offer_answer() {
        // The remote answered our actpass offer: we are the inverse of its role.
        let offer = sdp_with("actpass");
        assert_eq!(
            established_setup(&sdp_with("active"), &offer),
            Some(DtlsSetup::Passive)
        );
        assert_eq!(
            established_setup(&sdp_with("passive"), &offer),
            Some(DtlsSetup::Active)
        );
        // The remote offered actpass: we are what our answer said.
        assert_eq!(
            established_setup(&offer, &sdp_with("active")),
            Some(DtlsSetup::Active)
        );
        assert_eq!(
            established_setup(&offer, &sdp_with("passive")),
            Some(DtlsSetup::Passive)
        );
        // The remote offered a role: ours is the inverse, whatever we generated.
        assert_eq!(
            established_setup(&sdp_with("active"), &sdp_with("active")),
            Some(DtlsSetup::Passive)
        );
        // Nothing settles it.
        assert_eq!(established_setup(&offer, &offer), None);
        assert_eq!(established_setup(&offer, ""), None);
        assert_eq!(established_setup("v=0\r\n", ""), None);
        assert_eq!(established_setup(&sdp_with("holdconn"), ""), None);
    }

    #[test]
    fn setup_lines_rewritten_and_nothing_else() {
        let passive = with_setup(ANSWER, DtlsSetup::Passive);
        assert_eq!(passive, sdp_with("passive"));
        assert_eq!(passive.matches("a=setup:passive\r\n").count(), 2);
        assert_eq!(with_setup(ANSWER, DtlsSetup::Active), ANSWER);
        // Bare \n line endings and a last line without one are kept.
        assert_eq!(
            with_setup("v=0\na=setup:active\na=setup:actpass", DtlsSetup::Passive),
            "v=0\na=setup:passive\na=setup:passive"
        );
        // No setup line: unchanged.
        assert_eq!(
            with_setup("v=0\r\ns=-\r\n", DtlsSetup::Active),
            "v=0\r\ns=-\r\n"
        );
        // Round trip: the rewritten answer states the role it was given.
        assert_eq!(
            established_setup(&sdp_with("actpass"), &passive),
            Some(DtlsSetup::Passive)
        );
    }
}
