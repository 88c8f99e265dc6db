//! The service's lifecycle: builds the shared state, binds, serves, guards the disk, and
//! shuts down cleanly. The top of the stack: it may use every module, none uses it.

use crate::api::App;
use crate::bot::Services;
use crate::config::ServerConfig;
use crate::events::{EventKind, Events};
use crate::peer::whip::WhipSessions;
use crate::peer::{PeerConfig, PeerFactory};
use crate::record::manifest::StopReason;
use crate::record::store::{RecordError, RecordingStore};
use crate::signal::hub::Hub;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Errors of starting the service.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The recordings directory could not be opened.
    #[error(transparent)]
    Store(#[from] RecordError),
    /// `--notice-media` is not a usable Ogg Opus file.
    #[error("--notice-media: {0}")]
    NoticeMedia(String),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Http(std::io::Error),
    /// Object storage is configured but unusable (the message names the flag).
    #[error("{0}")]
    Storage(String),
    /// The webhook outbox could not be opened, or its HTTP client built.
    #[error("webhook outbox: {0}")]
    Events(std::io::Error),
    /// The cluster could not be joined.
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Where the webhook outbox lives, inside the recordings directory (not a recording: the
/// store skips names that are not recording ids).
pub const OUTBOX_DIR: &str = ".events";

/// Ids of the recordings that the store will find unfinished (and mark failed) when it opens
/// `dir`: each gets a `recording.failed` event once loaded.
fn unfinished_recordings(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            if !crate::record::store::valid_id(&name) {
                return None;
            }
            let doc = crate::record::manifest::read_manifest(&entry.path()).ok()?;
            (doc.id == name && doc.state.is_active()).then_some(name)
        })
        .collect()
}

/// Builds the shared state (loads existing recordings; checks the bucket when object storage
/// is configured).
async fn build_app(
    config: ServerConfig,
    tuning: crate::store::Tuning,
) -> Result<Arc<App>, ServeError> {
    // Counters count from the start, not from the first scrape.
    let _ = crate::telemetry::handle();
    let args = &config.args;
    let events = match config.webhooks.clone() {
        Some(webhooks) => Events::open(&args.recordings_dir.join(OUTBOX_DIR), webhooks)
            .map_err(ServeError::Events)?,
        None => Events::disabled(),
    };
    let unfinished = if events.enabled() {
        unfinished_recordings(&args.recordings_dir)
    } else {
        Vec::new()
    };
    let store = RecordingStore::open(&args.recordings_dir, args.max_recordings)?;
    let storage = match &config.storage {
        Some(settings) => Some(
            crate::store::Storage::connect(settings, Arc::clone(&store), tuning)
                .await
                .map_err(ServeError::Storage)?,
        ),
        None => None,
    };
    if let Some(storage) = &storage {
        // A manifest in the bucket means the recording there is complete (SPEC §7, §8).
        let events = events.clone();
        storage.set_on_uploaded(Arc::new(move |doc| {
            events.emit(EventKind::RecordingUploaded, Some(&doc.id), doc)
        }));
    }
    for id in unfinished {
        if let Ok(recording) = store.get(&id) {
            events.emit(EventKind::RecordingFailed, Some(&id), &recording.doc());
        }
    }
    let disk = Arc::new(crate::record::disk::DiskGuard::new(
        &args.recordings_dir,
        args.min_free_disk_mb.saturating_mul(1024 * 1024),
    ));
    let fds = crate::limits::FdBudget::for_process(args.fd_headroom);
    let limits = Arc::new(crate::limits::Limits::new(
        Arc::clone(&fds),
        args.max_whip_per_client,
        args.max_connections_per_ip,
        args.trusted_proxies.clone(),
    ));
    let hub = Hub::with_limits(
        crate::signal::protocol::IceConfig {
            servers: config.ice_servers.clone(),
            turn_rest: config.turn_rest.clone(),
        },
        args.max_peers_per_room,
        args.max_rooms,
        args.reserved_rooms,
        fds,
    );
    let factory = PeerFactory::new(PeerConfig {
        udp_bind: args.udp_bind.clone(),
        udp_ports: config.udp_ports,
        public_ips: args.public_ips.clone(),
        ice_servers: config.ice_servers.clone(),
        outbound_loss: None,
        loopback_candidates_only: args.loopback_candidates_only,
        turn_rest: config.turn_rest.clone(),
        tcp_port: config.args.ice_tcp_port,
        media_threads: config.media_threads,
    });
    let services = Arc::new(Services {
        hub,
        factory,
        store,
        whip: Arc::<WhipSessions>::default(),
        disk,
        media_dir: args.media_dir.clone(),
        max_recording: std::time::Duration::from_secs(args.max_recording_s),
        notice: crate::bot::recorder::notice_clip(args.notice_media.as_deref())
            .map_err(ServeError::NoticeMedia)?,
        storage,
        events,
    });
    Ok(Arc::new(App {
        config,
        bots: crate::bot::registry::BotStore::new(),
        services,
        limits,
        cluster: None,
        shutdown: CancellationToken::new(),
    }))
}

/// This node's cluster settings (`--redis` given), once the listen address is bound: the node
/// id defaults to the host name and the bound port, the advertised URL to the bound address
/// (the host name when bound to every interface).
fn cluster_settings(
    config: &ServerConfig,
    addr: SocketAddr,
) -> Option<crate::cluster::ClusterSettings> {
    let args = &config.args;
    let redis_url = args.redis.clone()?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let node_id = args
        .node_id
        .clone()
        .unwrap_or_else(|| format!("{host}:{}", addr.port()));
    let advertise_url = match &args.advertise_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None if addr.ip().is_unspecified() => format!("http://{host}:{}", addr.port()),
        None => format!("http://{addr}"),
    };
    Some(crate::cluster::ClusterSettings {
        redis_url,
        node_id,
        advertise_url,
        api_token: args.api_token.clone(),
        max_recordings: args.max_recordings,
    })
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
        Self::start_tuned(config, crate::store::Tuning::default()).await
    }

    /// [`Server::start`] with the object storage's sizes and delays given (tests use small
    /// parts and short retries).
    pub async fn start_tuned(
        config: ServerConfig,
        tuning: crate::store::Tuning,
    ) -> Result<Self, ServeError> {
        let listen = config.args.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| ServeError::Bind(listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServeError::Bind(listen, e))?;
        let settings = cluster_settings(&config, addr);
        let mut app = build_app(config, tuning).await?;
        if let Some(settings) = settings {
            let shutdown = app.shutdown.clone();
            let node = settings.node_id.clone();
            let cluster =
                crate::cluster::Cluster::start(settings, Arc::clone(&app.services), shutdown)
                    .await?;
            // Another node's recording continued here (SPEC §8, §9).
            let events = app.services.events.clone();
            cluster.on_takeover(Box::new(move |doc| {
                events.emit(EventKind::RecordingTakeover, Some(&doc.id), &doc)
            }));
            // Dead or draining nodes' bots run here; this node's bots are indexed.
            cluster.attach_bots(Arc::clone(&app.bots));
            if let Some(app) = Arc::get_mut(&mut app) {
                app.cluster = Some(cluster);
            }
            tracing::info!(node, "cluster node");
        }
        app.services
            .events
            .start(&app.shutdown)
            .map_err(|e| ServeError::Events(std::io::Error::other(e)))?;
        let router = crate::api::router(Arc::clone(&app));
        let task = tokio::spawn(serve_http(listener, router, Arc::clone(&app)));
        tokio::spawn(guard_disk(Arc::clone(&app)));
        if let Some(storage) = &app.services.storage {
            // Resumes every upload a previous run left pending, then takes new ones.
            storage.start(app.shutdown.clone());
        }
        let hub = Arc::clone(&app.services.hub);
        tokio::spawn(crate::limits::trim_memory_after_churn(
            move || hub.counts().1,
            app.shutdown.clone(),
        ));
        tracing::info!(%addr, "listening");
        // Under systemd (Type=notify): ready now. A no-op elsewhere.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        Ok(Self { addr, app, task })
    }

    /// Stops every active recording cleanly (files finalized, manifests written), closes the
    /// WebSocket sessions, and waits for the HTTP server to finish.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        // In a cluster: /healthz 503 and no new work at once; recordings handed over first.
        if let Some(cluster) = &self.app.cluster {
            cluster.drain().await;
        }
        // Bots first: their voicemail messages end as `shutdown` and leave the active list.
        self.app.bots.stop_all(StopReason::Shutdown).await;
        let active = self.app.services.store.active();
        tracing::info!(recordings = active.len(), "shutting down");
        let stops = active.iter().map(|recording| {
            crate::bot::recorder::stop(&self.app.services, recording, StopReason::Shutdown)
        });
        futures::future::join_all(stops).await;
        if let Some(cluster) = &self.app.cluster {
            cluster.settle().await;
        }
        // The last events (recording.stopped, bot.stopped) usually leave now; those that do
        // not wait on disk for the next start.
        self.app
            .services
            .events
            .drain(std::time::Duration::from_secs(3))
            .await;
        self.app.shutdown.cancel();
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

/// Accepts connections and serves HTTP/1.1 on them until shutdown, then lets the open ones
/// finish their requests. Each connection counts against the descriptor budget and its peer
/// address's connection cap for as long as its socket lives (an upgraded WebSocket included);
/// one over either is answered `429`/`503` and closed at once. Headers must arrive within
/// `--header-timeout-s`, and a kept-alive connection idle that long is closed.
async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    app: Arc<App>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let header_timeout = std::time::Duration::from_secs(app.config.args.header_timeout_s);
    let shutdown = app.shutdown.clone();
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors despite the budget, or a connection reset before
                    // accept: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let permits = match crate::limits::admit_connection(&app.limits, peer.ip()) {
            Ok(permits) => permits,
            Err(refusal) => {
                // Best effort, never waiting on the client: the reply, then close.
                let _ = stream.try_write(refusal.as_bytes());
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = router.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        );
        let io = TokioIo::new(crate::limits::Counted::new(stream, permits));
        let shutdown = app.shutdown.child_token();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder
                .serve_connection(io, hyper_util::service::TowerToHyperService::new(service))
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = shutdown.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Every [`CHECK_EVERY`](crate::record::disk::CHECK_EVERY): when free space is low, stops
/// every active recording cleanly (`failed` / `disk-full`), keeping what was written.
async fn guard_disk(app: Arc<App>) {
    let shutdown = app.shutdown.clone();
    let mut tick = tokio::time::interval(crate::record::disk::CHECK_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if !app.services.disk.refresh() {
            continue;
        }
        for recording in app.services.store.active() {
            tracing::error!(recording = %recording.id(), "disk full: stopping the recording");
            let services = Arc::clone(&app.services);
            tokio::spawn(async move {
                crate::bot::recorder::stop(&services, &recording, StopReason::DiskFull).await;
            });
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
