//! Publishing over WHIP: one offer with every candidate, the answer from the `201`, `DELETE`
//! on the session's Location when leaving.

use super::{spawn_pumps, Clip, PublishError, PublishStats, Publisher, PublisherHandle};
use crate::peer::outlet::SharedOutlets;
use crate::peer::PeerFactory;
use async_trait::async_trait;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use webrtc::peer_connection::RTCSessionDescription;

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
        .map(|d| crate::peer::advertised_sdp(&d.sdp, &[], None))
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
    let leave = CancellationToken::new();
    let pumps = spawn_pumps(
        &clip,
        &outlets,
        Some(Arc::clone(&keyframe_wanted)),
        &stats,
        &leave,
    );
    let id = session
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or_default()
        .to_owned();
    let token = token.map(str::to_owned);
    let leave_tx = leave.clone();
    let task = tokio::spawn(async move {
        leave.cancelled().await;
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
