//! The echo bot: sends every peer its own audio and video back on the same connection (a test
//! call). No transcoding: each received RTP packet is forwarded as it came, with the bot's
//! SSRC and payload type and shifted sequence numbers and timestamps
//! ([`Outlet::forward`]).
//!
//! The returned video starts on a keyframe: packets are held back until the first packet of a
//! keyframe, and the sender is asked for one (PLI) when its video starts and every 500 ms
//! until one comes. When the peer asks for a keyframe of the echo (PLI/FIR), the request goes
//! on to the peer as the sender.

use super::registry::{Bot, BotError};
use super::Behaviour;
use super::Services;
use crate::media::source::{MediaSource, RemoteSource, SourceEvent};
use crate::media::vp8::payload_starts_keyframe as starts_keyframe;
use crate::peer::negotiation::Role;
use crate::peer::outlet::Outlet;
use crate::peer::{Pc, PeerError};
use crate::signal::protocol::PeerInfo;
use async_trait::async_trait;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use webrtc::media_stream::track_remote::TrackRemote;

/// How often the sender is asked for a keyframe while the echo waits for one.
pub const KEYFRAME_RETRY: Duration = Duration::from_millis(500);

/// What the echo sends back to one peer.
struct Mirror {
    audio: Arc<Outlet>,
    video: Arc<Outlet>,
    /// Raised when the peer asks for a keyframe of the echoed video.
    keyframe_wanted: Arc<Notify>,
}

/// The echo bot's behaviour.
struct Echo {
    bot: Arc<Bot>,
    mirrors: Mutex<HashMap<String, Arc<Mirror>>>,
}

impl Echo {
    fn mirrors(&self) -> MutexGuard<'_, HashMap<String, Arc<Mirror>>> {
        self.mirrors.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Behaviour for Echo {
    fn wants(&self, peer: &PeerInfo) -> bool {
        !peer.bot
    }

    async fn setup(&self, peer: &PeerInfo, pc: &Pc, _role: Role) -> Result<(), PeerError> {
        let keyframe_wanted = Arc::new(Notify::new());
        let wanted = Arc::clone(&keyframe_wanted);
        let on_request: Arc<dyn Fn() + Send + Sync> = Arc::new(move || wanted.notify_one());
        let video = Outlet::add_forwarding(
            pc,
            RtpCodecKind::Video,
            super::play::STREAM,
            Some(on_request),
        )
        .await?;
        let audio =
            Outlet::add_forwarding(pc, RtpCodecKind::Audio, super::play::STREAM, None).await?;
        self.mirrors().insert(
            peer.id.clone(),
            Arc::new(Mirror {
                audio,
                video,
                keyframe_wanted,
            }),
        );
        self.bot.add_peer(&peer.id);
        Ok(())
    }

    async fn on_track(&self, peer: &PeerInfo, track: Arc<dyn TrackRemote>) {
        let mirror = self.mirrors().get(&peer.id).cloned();
        let (Some(mirror), Some((ssrc, mime))) = (mirror, RemoteSource::describe(&track).await)
        else {
            super::play::drain(track).await;
            return;
        };
        let source = RemoteSource::new(track, ssrc);
        match mime.as_str() {
            "video/vp8" => echo_video(source, &mirror).await,
            "audio/opus" => echo_audio(source, &mirror.audio).await,
            other => {
                tracing::debug!(peer = %peer.id, codec = other, "not echoed");
                let mut source = source;
                while source.next().await.is_some() {}
            }
        }
        tracing::debug!(peer = %peer.id, %mime, "echo of a track ended");
    }

    async fn peer_left(&self, peer: &PeerInfo) {
        self.mirrors().remove(&peer.id);
        self.bot.remove_peer(&peer.id);
    }
}

async fn echo_audio(mut source: RemoteSource, outlet: &Outlet) {
    while let Some(event) = source.next().await {
        if let SourceEvent::Rtp(packet) = event {
            outlet.forward(packet).await;
        }
    }
}

async fn echo_video(mut source: RemoteSource, mirror: &Mirror) {
    let mut waiting = true;
    source.request_keyframe().await;
    let mut retry = tokio::time::Instant::now() + KEYFRAME_RETRY;
    loop {
        tokio::select! {
            event = source.next() => match event {
                Some(SourceEvent::Rtp(packet)) => {
                    if waiting {
                        if !starts_keyframe(&packet.payload) {
                            continue;
                        }
                        waiting = false;
                    }
                    mirror.video.forward(packet).await;
                }
                Some(_) => {}
                None => break,
            },
            _ = mirror.keyframe_wanted.notified() => {
                tracing::debug!("keyframe request passed on to the sender");
                source.request_keyframe().await;
            }
            _ = tokio::time::sleep_until(retry), if waiting => {
                source.request_keyframe().await;
                retry += KEYFRAME_RETRY;
            }
        }
    }
}

/// Puts echo bot `bot` in its room. Returns its peer id.
pub async fn start(services: &Arc<Services>, bot: &Arc<Bot>) -> Result<String, BotError> {
    let behaviour = Arc::new(Echo {
        bot: Arc::clone(bot),
        mirrors: Mutex::new(HashMap::new()),
    });
    Ok(super::join(
        &services.hub,
        Arc::clone(&services.factory),
        bot.room(),
        "echo",
        behaviour,
        bot.leave_signal(),
    )
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_starts_are_recognized() {
        // S=1, PID=0, no extension; VP8 frame tag with P=0.
        assert!(starts_keyframe(&[0x10, 0x50, 0x01]));
        // Same, but an interframe (P=1).
        assert!(!starts_keyframe(&[0x10, 0x51, 0x01]));
        // Not the start of a partition.
        assert!(!starts_keyframe(&[0x00, 0x50]));
        assert!(!starts_keyframe(&[0x11, 0x50]));
        // X, I with a 15-bit PictureID, L, T/K: four bytes before the frame.
        assert!(starts_keyframe(&[0x90, 0xf0, 0x81, 0x23, 0x05, 0x20, 0x50]));
        assert!(!starts_keyframe(&[
            0x90, 0xf0, 0x81, 0x23, 0x05, 0x20, 0x51
        ]));
        // 7-bit PictureID.
        assert!(starts_keyframe(&[0x90, 0x80, 0x12, 0x50]));
        // Truncated descriptors.
        for cut in [
            &[][..],
            &[0x90],
            &[0x90, 0x80],
            &[0x90, 0x80, 0x92],
            &[0x10],
        ] {
            assert!(!starts_keyframe(cut));
        }
    }
}
