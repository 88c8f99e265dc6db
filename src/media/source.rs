//! Where a track task's packets come from: a webrtc-rs remote track read directly, or a relay
//! that fans one received track out to several consumers in-process (a WHIP publisher's media
//! goes to whichever recording of its room is running).
//!
//! Both give the same [`SourceEvent`]s, and both take keyframe requests back to the sender.

use async_trait::async_trait;
use rtc::rtcp::payload_feedbacks::full_intra_request::{FirEntry, FullIntraRequest};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

/// Events a consumer of one track sees.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// An RTP packet.
    Rtp(rtc::rtp::Packet),
    /// A sender report of this track: 64-bit NTP time and the RTP timestamp it maps to.
    SenderReport {
        /// NTP timestamp (32.32).
        ntp: u64,
        /// RTP timestamp.
        rtp: u32,
    },
    /// Packets were missed (a relay consumer fell behind).
    Missed(u64),
}

/// A track's packets, as a track task reads them.
#[async_trait]
pub trait MediaSource: Send {
    /// The next event; `None` when the track ended.
    async fn next(&mut self) -> Option<SourceEvent>;
    /// Asks the sender for a keyframe (RTCP PLI).
    async fn request_keyframe(&self);
    /// Asks the sender for a keyframe with an RTCP FIR carrying command sequence number `seq`
    /// (a new number per new request, RFC 5104 §4.3.1).
    async fn request_full_intra(&self, seq: u8);
}

/// A webrtc-rs remote track, read directly.
pub struct RemoteSource {
    track: Arc<dyn TrackRemote>,
    ssrc: u32,
}

impl RemoteSource {
    /// The preamble every `on_track` needs: the track's first SSRC and its codec's MIME type
    /// in lower case (`video/vp8`, `audio/opus`; empty when unknown). `None` when the track has
    /// no SSRC yet.
    pub async fn describe(track: &Arc<dyn TrackRemote>) -> Option<(u32, String)> {
        let ssrc = track.ssrcs().await.first().copied()?;
        let mime = track
            .codec(ssrc)
            .await
            .map(|c| c.mime_type.to_ascii_lowercase())
            .unwrap_or_default();
        Some((ssrc, mime))
    }

    /// Reads `track`, whose media SSRC is `ssrc`.
    pub fn new(track: Arc<dyn TrackRemote>, ssrc: u32) -> Self {
        Self { track, ssrc }
    }
}

#[async_trait]
impl MediaSource for RemoteSource {
    async fn next(&mut self) -> Option<SourceEvent> {
        loop {
            match self.track.poll().await? {
                TrackRemoteEvent::OnRtpPacket(packet) => return Some(SourceEvent::Rtp(packet)),
                TrackRemoteEvent::OnRtcpPacket(packets) => {
                    let report = packets.iter().find_map(|p| {
                        p.as_any()
                            .downcast_ref::<SenderReport>()
                            .filter(|sr| sr.ssrc == self.ssrc)
                            .map(|sr| SourceEvent::SenderReport {
                                ntp: sr.ntp_time,
                                rtp: sr.rtp_time,
                            })
                    });
                    if let Some(report) = report {
                        return Some(report);
                    }
                }
                TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError => return None,
                _ => {}
            }
        }
    }

    async fn request_keyframe(&self) {
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: self.ssrc,
        };
        if let Err(e) = self.track.write_rtcp(vec![Box::new(pli)]).await {
            tracing::debug!(ssrc = self.ssrc, error = %e, "PLI not sent");
        }
    }

    async fn request_full_intra(&self, seq: u8) {
        let fir = FullIntraRequest {
            sender_ssrc: 0,
            media_ssrc: self.ssrc,
            fir: vec![FirEntry {
                ssrc: self.ssrc,
                sequence_number: seq,
            }],
        };
        if let Err(e) = self.track.write_rtcp(vec![Box::new(fir)]).await {
            tracing::debug!(ssrc = self.ssrc, error = %e, "FIR not sent");
        }
    }
}

/// Packets a relay keeps for a slow consumer before it misses some.
pub const RELAY_BUFFER: usize = 1024;

/// One received track fanned out to any number of consumers. The owner reads the track and
/// calls [`publish`](Self::publish); consumers [`subscribe`](Self::subscribe). The track's
/// end is explicit ([`close`](Self::close)), so clones of the relay held elsewhere cannot keep
/// consumers waiting.
pub struct Relay {
    events: broadcast::Sender<SourceEvent>,
    keyframes: mpsc::Sender<()>,
    closed: CancellationToken,
}

impl Relay {
    /// A relay; keyframe requests of its consumers arrive on the returned receiver.
    pub fn new() -> (Arc<Self>, mpsc::Receiver<()>) {
        let (keyframes, rx) = mpsc::channel(8);
        (
            Arc::new(Self {
                events: broadcast::Sender::new(RELAY_BUFFER),
                keyframes,
                closed: CancellationToken::new(),
            }),
            rx,
        )
    }

    /// Hands an event to every current consumer.
    pub fn publish(&self, event: SourceEvent) {
        let _ = self.events.send(event);
    }

    /// A new consumer, from the next event on.
    pub fn subscribe(self: &Arc<Self>) -> RelaySource {
        RelaySource {
            events: self.events.subscribe(),
            keyframes: self.keyframes.clone(),
            closed: self.closed.clone(),
        }
    }

    /// The track ended: consumers get what was published, then the end.
    pub fn close(&self) {
        self.closed.cancel();
    }
}

/// A consumer of a [`Relay`]. Ends when the relay is closed or dropped.
pub struct RelaySource {
    events: broadcast::Receiver<SourceEvent>,
    keyframes: mpsc::Sender<()>,
    closed: CancellationToken,
}

#[async_trait]
impl MediaSource for RelaySource {
    async fn next(&mut self) -> Option<SourceEvent> {
        let received = tokio::select! {
            biased;
            received = self.events.recv() => received,
            _ = self.closed.cancelled() => return None,
        };
        match received {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(SourceEvent::Missed(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    async fn request_keyframe(&self) {
        // A full queue already holds a request: nothing is lost by dropping this one.
        let _ = self.keyframes.try_send(());
    }

    async fn request_full_intra(&self, _seq: u8) {
        // The relay's owner asks its sender; one kind of request is enough there.
        self.request_keyframe().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_relay_fans_out_and_carries_keyframe_requests_back() {
        let (relay, mut keyframes) = Relay::new();
        let mut a = relay.subscribe();
        let mut b = relay.subscribe();
        relay.publish(SourceEvent::SenderReport { ntp: 1, rtp: 2 });
        assert!(matches!(
            a.next().await,
            Some(SourceEvent::SenderReport { ntp: 1, rtp: 2 })
        ));
        assert!(matches!(
            b.next().await,
            Some(SourceEvent::SenderReport { .. })
        ));
        b.request_keyframe().await;
        assert_eq!(keyframes.recv().await, Some(()));
        for _ in 0..RELAY_BUFFER + 5 {
            relay.publish(SourceEvent::Missed(0));
        }
        assert!(matches!(a.next().await, Some(SourceEvent::Missed(5))));
        relay.close();
        let mut rest = 0;
        while b.next().await.is_some() {
            rest += 1;
        }
        assert!(rest > 0, "what was published before the end still arrives");
        assert!(
            relay.subscribe().next().await.is_none(),
            "a late consumer ends at once"
        );
    }
}
