//! [`App`]: the state the HTTP handlers share (axum's router state).

use crate::bot::registry::BotStore;
use crate::bot::Services;
use crate::config::ServerConfig;
use crate::limits::Limits;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Everything the handlers share. Lives in an `Arc`. Built at startup (`server`); the parts
/// below the API are reached through [`App::services`], the handle the bots get too.
pub struct App {
    /// Validated configuration.
    pub config: ServerConfig,
    /// The answering bots (echo, play, voicemail).
    pub bots: Arc<BotStore>,
    /// The shared parts below the API (hub, peer factory, recordings, WHIP sessions, disk
    /// guard): the same handle the bots get, so there is one place that holds them.
    pub services: Arc<Services>,
    /// Per-client counters and the file-descriptor budget.
    pub limits: Arc<Limits>,
    /// In a cluster (`--redis`): this node's handle on it; `None` on a single node.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Cancelled when the service shuts down (WebSocket sessions close on it; they hold child
    /// tokens).
    pub shutdown: CancellationToken,
}
