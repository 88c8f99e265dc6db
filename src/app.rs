//! The running service's shared state and its lifecycle: bind, serve, shut down cleanly.

use crate::config::ServerConfig;
use crate::peer::{PeerConfig, PeerFactory};
use crate::record::manifest::StopReason;
use crate::record::store::{RecordError, RecordingStore};
use crate::signal::hub::Hub;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Everything the handlers and bots share. Lives in an `Arc`.
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
    pub whip: Arc<crate::signal::whip::WhipSessions>,
    /// Turns true when the service shuts down (WebSocket sessions close on it).
    pub shutdown: watch::Sender<bool>,
}

/// Errors of starting the service.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The recordings directory could not be opened.
    #[error(transparent)]
    Store(#[from] RecordError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Http(std::io::Error),
}

impl App {
    /// Builds the shared state (loads existing recordings).
    pub fn new(config: ServerConfig) -> Result<Arc<Self>, ServeError> {
        let args = &config.args;
        let store = RecordingStore::open(&args.recordings_dir, args.max_recordings)?;
        let hub = Hub::new(config.ice_servers.clone(), args.max_peers_per_room);
        let factory = PeerFactory::new(PeerConfig {
            udp_bind: args.udp_bind.clone(),
            udp_ports: config.udp_ports,
            public_ips: args.public_ips.clone(),
            ice_servers: config.ice_servers.clone(),
            outbound_loss: None,
            loopback_candidates_only: args.loopback_candidates_only,
        });
        Ok(Arc::new(Self {
            config,
            hub,
            factory,
            store,
            whip: Arc::default(),
            shutdown: watch::Sender::new(false),
        }))
    }
}

/// A service listening on a socket.
pub struct Server {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// Its shared state.
    pub app: Arc<App>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Binds the listen address of `config` and starts serving.
    pub async fn start(config: ServerConfig) -> Result<Self, ServeError> {
        let listen = config.args.listen;
        let app = App::new(config)?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| ServeError::Bind(listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServeError::Bind(listen, e))?;
        let router = crate::api::router(Arc::clone(&app));
        let mut shutdown = app.shutdown.subscribe();
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await
        });
        tracing::info!(%addr, "listening");
        Ok(Self { addr, app, task })
    }

    /// Stops every active recording cleanly (files finalized, manifests written), closes the
    /// WebSocket sessions, and waits for the HTTP server to finish.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let active = self.app.store.active();
        tracing::info!(recordings = active.len(), "shutting down");
        let stops = active.iter().map(|recording| {
            crate::bot::recorder::stop(&self.app, recording, StopReason::Shutdown)
        });
        futures::future::join_all(stops).await;
        self.app.shutdown.send_replace(true);
        match tokio::time::timeout(std::time::Duration::from_secs(10), self.task).await {
            Ok(Ok(result)) => result.map_err(ServeError::Http),
            Ok(Err(e)) => Err(ServeError::Http(std::io::Error::other(e))),
            Err(_) => {
                tracing::warn!("HTTP connections did not close in time");
                Ok(())
            }
        }
    }
}

/// Serves until SIGTERM or SIGINT, then shuts down cleanly.
pub async fn run(config: ServerConfig) -> Result<(), ServeError> {
    let server = Server::start(config).await?;
    wait_for_signal().await;
    server.shutdown().await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
