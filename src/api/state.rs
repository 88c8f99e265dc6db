//! [`App`]: the state the HTTP handlers share (axum's router state).

use crate::bot::registry::BotStore;
use crate::bot::Services;
use crate::config::ServerConfig;
use crate::limits::Limits;
use crate::peer::whip::WhipSessions;
use crate::peer::PeerFactory;
use crate::record::disk::DiskGuard;
use crate::record::store::RecordingStore;
use crate::signal::hub::Hub;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Everything the handlers share. Lives in an `Arc`. Built at startup (`server`); the parts
/// bots use are the same objects as in [`App::services`].
pub struct App {
    /// Validated configuration.
    pub config: ServerConfig,
    /// Rooms and members.
    pub hub: Arc<Hub>,
    /// Builds peer connections.
    pub factory: Arc<PeerFactory>,
    /// All recordings.
    pub store: Arc<RecordingStore>,
    /// WHIP publishers' sessions.
    pub whip: Arc<WhipSessions>,
    /// Free space of the recordings directory.
    pub disk: Arc<DiskGuard>,
    /// The answering bots (echo, play, voicemail).
    pub bots: Arc<BotStore>,
    /// What the bots reach of the service (the recorder included).
    pub services: Arc<Services>,
    /// Per-client counters and the file-descriptor budget.
    pub limits: Arc<Limits>,
    /// Cancelled when the service shuts down (WebSocket sessions close on it; they hold child
    /// tokens).
    pub shutdown: CancellationToken,
}
