//! WHIP ingest (RFC 9725, SPEC §3): `POST /rooms/{room}/whip` with an SDP offer.
//!
//! A WHIP session is a publisher whose media ends at the server. Its connection answers the
//! offer with every local candidate in the SDP (no trickle: `PATCH` answers 405). It joins the
//! room as a member with `whip: true`, which nobody negotiates with. Each track it sends is
//! read by one task and fanned out through a [`Relay`]. The room's recording, present or
//! future, subscribes to it ([`WhipSessions::tracks_of`], [`WhipSessions::announcements`]).
//! `DELETE` on the session's Location ends it, and so does a failed connection.
//!
//! A session is named by its publisher's peer id and holds a secret of its own: its Location is
//! `/rooms/{room}/whip/{peer id}.{secret}`. `DELETE` and `PATCH` act only on a session of the
//! room in the path whose secret matches (compared in constant time), with the room token as
//! bearer when one is configured; the API token as bearer ends any session by its peer id
//! (`/rooms/{room}/whip/{peer id}`, for operators). Anything else is `404`.

use super::hub::{MemberKind, Membership};
use super::protocol::{valid_room_name, PeerInfo};
use crate::api::error::ApiError;
use crate::api::{bearer, secret_matches};
use crate::app::App;
use crate::limits::{ClientPermit, FdPermit, SESSION_FDS};
use crate::media::source::{MediaSource, Relay, RemoteSource};
use crate::peer::{CandidatePolicy, Pc, PeerError};
use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnectionEventHandler, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
};

/// How long the answer waits for local candidates to be gathered.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(3);

/// One track a WHIP publisher sends, as recordings subscribe to it.
#[derive(Clone)]
pub struct WhipTrack {
    /// The publisher, as the room sees it.
    pub peer: PeerInfo,
    /// The room.
    pub room: String,
    /// video | audio.
    pub kind: RtpCodecKind,
    /// `video/vp8` or `audio/opus`.
    pub mime: String,
    /// The fan-out of its packets.
    pub relay: Arc<Relay>,
}

struct Session {
    room: String,
    /// 256 random bits in hex: the capability the Location carries.
    secret: String,
    peer: PeerInfo,
    pc: Pc,
    tracks: Vec<WhipTrack>,
    end: watch::Sender<bool>,
    /// Its client's slot and its descriptors, given back when the session is removed.
    _permits: (ClientPermit, FdPermit),
}

/// The WHIP sessions of the service.
pub struct WhipSessions {
    sessions: Mutex<HashMap<String, Session>>,
    announce: broadcast::Sender<WhipTrack>,
}

impl Default for WhipSessions {
    fn default() -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            announce: broadcast::Sender::new(64),
        }
    }
}

impl WhipSessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tracks WHIP publishers send in `room` now.
    pub fn tracks_of(&self, room: &str) -> Vec<WhipTrack> {
        self.lock()
            .values()
            .filter(|s| s.room == room)
            .flat_map(|s| s.tracks.iter().cloned())
            .collect()
    }

    /// Every WHIP track that starts from now on, in any room.
    pub fn announcements(&self) -> broadcast::Receiver<WhipTrack> {
        self.announce.subscribe()
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn add_track(&self, session: &str, track: WhipTrack) {
        let mut sessions = self.lock();
        if let Some(s) = sessions.get_mut(session) {
            s.tracks.push(track.clone());
            let _ = self.announce.send(track);
        }
    }

    /// The key of the session `id` names in `room` (`{peer id}.{secret}`, or the peer id alone
    /// when `operator`), if that session exists there and the secret matches.
    fn find(&self, room: &str, id: &str, operator: bool) -> Option<String> {
        let (key, secret) = match id.split_once('.') {
            Some((key, secret)) => (key, Some(secret)),
            None => (id, None),
        };
        let sessions = self.lock();
        let session = sessions.get(key)?;
        let allowed = session.room == room
            && (operator || secret.is_some_and(|s| secret_matches(s, &session.secret)));
        allowed.then(|| key.to_owned())
    }

    /// Ends a session: closes its connection; its relays end, so do recordings of it.
    fn end(&self, id: &str) -> bool {
        let Some(session) = self.lock().remove(id) else {
            return false;
        };
        session.end.send_replace(true);
        let pc = session.pc;
        tokio::spawn(async move {
            let _ = pc.close().await;
        });
        tracing::info!(room = %session.room, peer = %session.peer.id, "WHIP session ended");
        true
    }
}

/// Routes of WHIP ingest.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/rooms/{room}/whip", post(create))
        .route(
            "/rooms/{room}/whip/{id}",
            axum::routing::delete(delete).patch(patch),
        )
}

/// Query of the WHIP endpoint.
#[derive(Debug, Deserialize)]
pub struct WhipQuery {
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
}

/// Whether the request carries the API token (when one is configured).
fn is_operator(app: &App, headers: &HeaderMap) -> bool {
    app.config
        .args
        .api_token
        .as_deref()
        .is_some_and(|expected| bearer(headers).is_some_and(|t| secret_matches(t, expected)))
}

/// The session a `DELETE`/`PATCH` on `/rooms/{room}/whip/{id}` may act on (see the module
/// doc): `401` without the room token (unless the API token is presented), `404` for a
/// session that is not there, in another room, or named without its secret.
fn authorize(app: &App, room: &str, id: &str, headers: &HeaderMap) -> Result<String, ApiError> {
    let operator = is_operator(app, headers);
    if !operator {
        check_room_token(app, headers)?;
    }
    app.whip
        .find(room, id, operator)
        .ok_or_else(|| ApiError::not_found(format!("no such WHIP session in room `{room}`")))
}

/// A new session secret: 256 random bits in lowercase hex.
fn new_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_room_token(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(expected) = &app.config.args.room_token {
        if !bearer(headers).is_some_and(|t| secret_matches(t, expected)) {
            return Err(ApiError::unauthorized(
                "a valid `Authorization: Bearer <room token>` is required",
            ));
        }
    }
    Ok(())
}

struct Handler {
    app: Arc<App>,
    session: String,
    peer: PeerInfo,
    room: String,
    gathered: watch::Sender<bool>,
    connected: watch::Sender<bool>,
    end: watch::Receiver<bool>,
}

#[async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            self.connected.send_replace(true);
        }
        if matches!(
            state,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
        ) {
            self.app.whip.end(&self.session);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(ssrc) = track.ssrcs().await.first().copied() else {
            return;
        };
        let kind = track.kind().await;
        let mime = track
            .codec(ssrc)
            .await
            .map(|c| c.mime_type.to_ascii_lowercase())
            .unwrap_or_default();
        let (relay, mut keyframes) = Relay::new();
        self.app.whip.add_track(
            &self.session,
            WhipTrack {
                peer: self.peer.clone(),
                room: self.room.clone(),
                kind,
                mime,
                relay: Arc::clone(&relay),
            },
        );
        let mut end = self.end.clone();
        tokio::spawn(async move {
            let mut source = RemoteSource::new(track, ssrc);
            loop {
                tokio::select! {
                    event = source.next() => match event {
                        Some(event) => relay.publish(event),
                        None => break,
                    },
                    Some(()) = keyframes.recv() => source.request_keyframe().await,
                    _ = crate::util::until_true(&mut end) => break,
                }
            }
            relay.close();
        });
    }
}

/// A refusal for lack of capacity: JSON error with `Retry-After`.
fn busy(status: StatusCode, code: &'static str, message: String, retry_after: u64) -> Response {
    (
        [(header::RETRY_AFTER, retry_after.to_string())],
        ApiError::new(status, code, message),
    )
        .into_response()
}

async fn create(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    Query(query): Query<WhipQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !valid_room_name(&room) {
        return Err(ApiError::bad_room());
    }
    check_room_token(&app, &headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/sdp") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "the body must be an SDP offer with Content-Type: application/sdp",
        ));
    }
    let sdp = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the SDP offer is not UTF-8"))?
        .to_owned();
    if !sdp.starts_with("v=0") {
        return Err(ApiError::bad_request("the body is not an SDP offer"));
    }
    // Only the candidates the policy admits reach webrtc-rs (at most MAX_REMOTE_CANDIDATES).
    let (sdp, _refused) = CandidatePolicy::for_config(app.factory.config()).filter_sdp(&sdp);
    let offer = RTCSessionDescription::offer(sdp)
        .map_err(|e| ApiError::bad_request(format!("bad SDP offer: {e}")))?;

    // Per client, then global capacity; both held by the session until it is removed.
    let reap_after = Duration::from_secs(app.config.args.whip_connect_timeout_s);
    let client = app.limits.client_ip(remote, &headers);
    let Some(client_permit) = app.limits.whip.take(client) else {
        tracing::warn!(%client, "WHIP session refused: per-client limit");
        return Ok(busy(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-sessions",
            format!(
                "this client already has {} WHIP sessions",
                app.config.args.max_whip_per_client
            ),
            reap_after.as_secs(),
        ));
    };
    let Some(fd_permit) = app.limits.fds.take(SESSION_FDS) else {
        tracing::warn!("WHIP session refused: file descriptor budget spent");
        return Ok(busy(
            StatusCode::SERVICE_UNAVAILABLE,
            "server-busy",
            "the server is at its session capacity".to_owned(),
            reap_after.as_secs(),
        ));
    };
    let joined = app.hub.join(
        &room,
        query.name.as_deref().unwrap_or("whip"),
        MemberKind::Whip,
    );
    let (membership, _welcome, mut queue) = match joined {
        Ok(joined) => joined,
        Err(e) => {
            let refusal = ApiError::from(e);
            return Ok(busy(
                refusal.status,
                refusal.code,
                refusal.message,
                reap_after.as_secs(),
            ));
        }
    };
    let peer = membership.info().clone();
    let session = peer.id.clone();
    let secret = new_secret();
    let (gathered, mut gathered_rx) = watch::channel(false);
    let (end, end_rx) = watch::channel(false);
    let (connected, connected_rx) = watch::channel(false);
    let handler = Arc::new(Handler {
        app: Arc::clone(&app),
        session: session.clone(),
        peer: peer.clone(),
        room: room.clone(),
        gathered,
        connected,
        end: end_rx.clone(),
    });
    let pc = app.factory.build(handler).await.map_err(peer_error)?;
    let answer = async {
        pc.set_remote_description(offer).await?;
        let answer = pc.create_answer(None).await?;
        pc.set_local_description(answer).await?;
        Ok::<(), webrtc::error::Error>(())
    }
    .await;
    if let Err(e) = answer {
        let _ = pc.close().await;
        return Err(ApiError::bad_request(format!(
            "the offer cannot be answered: {e}"
        )));
    }
    let _ = tokio::time::timeout(GATHER_TIMEOUT, crate::util::until_true(&mut gathered_rx)).await;
    let Some(local) = pc.local_description().await else {
        let _ = pc.close().await;
        return Err(peer_error(PeerError::BadSdp("no local description".into())));
    };
    app.whip.lock().insert(
        session.clone(),
        Session {
            room: room.clone(),
            secret: secret.clone(),
            peer: peer.clone(),
            pc: Arc::clone(&pc),
            tracks: Vec::new(),
            end,
            _permits: (client_permit, fd_permit),
        },
    );
    reap_if_unconnected(&app, &session, reap_after, connected_rx, end_rx.clone());
    // The membership lives as long as the session; its queue is drained (nobody negotiates
    // with a WHIP peer, but room notices still arrive).
    let mut end_rx = end_rx;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                message = queue.recv() => if message.is_none() { break },
                _ = crate::util::until_true(&mut end_rx) => break,
            }
        }
        drop::<Membership>(membership);
    });
    tracing::info!(room, peer = %peer.id, "WHIP session started");
    let location = format!("/rooms/{room}/whip/{session}.{secret}");
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, location),
        ],
        local.sdp,
    )
        .into_response())
}

/// Removes the session if its connection is not up within `after` (ICE never succeeded: a
/// publisher that went away, or offers sent only to take a room), freeing its slots.
fn reap_if_unconnected(
    app: &Arc<App>,
    session: &str,
    after: Duration,
    mut connected: watch::Receiver<bool>,
    mut end: watch::Receiver<bool>,
) {
    let app = Arc::clone(app);
    let session = session.to_owned();
    tokio::spawn(async move {
        tokio::select! {
            _ = crate::util::until_true(&mut connected) => {}
            _ = crate::util::until_true(&mut end) => {}
            _ = tokio::time::sleep(after) => {
                if app.whip.end(&session) {
                    tracing::warn!(session, "WHIP session removed: not connected in time");
                }
            }
        }
    });
}

fn peer_error(e: PeerError) -> ApiError {
    tracing::error!(error = %e, "WHIP connection failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "peer-error",
        e.to_string(),
    )
}

async fn delete(
    State(app): State<Arc<App>>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let key = authorize(&app, &room, &id, &headers)?;
    if app.whip.end(&key) {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::not_found(format!(
            "no such WHIP session in room `{room}`"
        )))
    }
}

async fn patch(
    State(app): State<Arc<App>>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &room, &id, &headers)?;
    // Trickle ICE is not supported: the answer carried every candidate.
    Ok((
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "DELETE")],
        axum::Json(serde_json::json!({"error": {
            "code": "method-not-allowed",
            "message": "trickle ICE (PATCH) is not supported: the answer has every candidate"
        }})),
    )
        .into_response())
}
