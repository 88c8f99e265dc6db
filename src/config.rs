//! Command line and environment: every option is a flag and a `RECBOT_*` variable (SPEC §1).
//!
//! `recbot` with no arguments is `recbot serve` on the embedded defaults. [`ServeArgs::validate`]
//! turns the raw options into a [`ServerConfig`] or a clear error before anything is bound.

use crate::signal::protocol::{IceServer, TurnRest};
use clap::{Args, Parser, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options of `recbot serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// HTTP and WebSocket listen address.
    #[arg(long, env = "RECBOT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where recordings are written, one folder each.
    #[arg(long, env = "RECBOT_RECORDINGS_DIR", default_value = "recordings")]
    pub recordings_dir: PathBuf,
    /// Where the play and voicemail bots find their media files.
    #[arg(long, env = "RECBOT_MEDIA_DIR", default_value = "media")]
    pub media_dir: PathBuf,
    /// The consent notice recordings with `"notice": true` speak (Ogg Opus; checked at
    /// startup); without it, a built-in clip ("this meeting is being recorded").
    #[arg(long, env = "RECBOT_NOTICE_MEDIA")]
    pub notice_media: Option<PathBuf>,
    /// Bearer token required on /api and /metrics (never logged).
    #[arg(long, env = "RECBOT_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Token required to join rooms (`?token=` on the WebSocket, bearer on WHIP; never logged).
    #[arg(long, env = "RECBOT_ROOM_TOKEN", hide_env_values = true)]
    pub room_token: Option<String>,
    /// Serve a non-loopback address without an API token anyway.
    #[arg(long, env = "RECBOT_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Browser origins besides the service's own allowed to use /rooms and /api (comma-separated).
    #[arg(long, env = "RECBOT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Host names besides `localhost`, `127.0.0.1` and `[::1]` under which /api, /metrics and
    /// /rooms are served without an API token (comma-separated; `name` matches any port,
    /// `name:port` only that port). Other `Host` headers get 403: this stops DNS rebinding.
    #[arg(long, env = "RECBOT_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Local IPs to bind media (UDP) sockets on, comma-separated. `0.0.0.0` means every
    /// non-loopback interface; loopback is added so local programs can connect.
    #[arg(
        long,
        env = "RECBOT_UDP_BIND",
        value_delimiter = ',',
        default_value = "0.0.0.0,127.0.0.1"
    )]
    pub udp_bind: Vec<IpAddr>,
    /// UDP port range for media, `MIN-MAX` (default: ephemeral ports).
    #[arg(long, env = "RECBOT_UDP_PORTS")]
    pub udp_ports: Option<String>,
    /// Public IP(s) to advertise instead of local ones (NAT 1:1 mapping), comma-separated.
    #[arg(long, env = "RECBOT_PUBLIC_IPS", value_delimiter = ',')]
    pub public_ips: Vec<IpAddr>,
    /// STUN/TURN server URLs for the service's peers and for browsers, comma-separated.
    #[arg(long, env = "RECBOT_ICE_SERVERS", value_delimiter = ',')]
    pub ice_servers: Vec<String>,
    /// Username for the TURN servers in --ice-servers.
    #[arg(long, env = "RECBOT_TURN_USERNAME")]
    pub turn_username: Option<String>,
    /// Credential for the TURN servers in --ice-servers (never logged).
    #[arg(long, env = "RECBOT_TURN_CREDENTIAL", hide_env_values = true)]
    pub turn_credential: Option<String>,
    /// TURN REST API secret (coturn's `use-auth-secret`/`static-auth-secret`): every `welcome`
    /// then carries fresh per-peer credentials for the `turn:`/`turns:` URLs of --ice-servers,
    /// and the service's own peers use such credentials too (never logged).
    #[arg(
        long,
        env = "RECBOT_TURN_SECRET",
        hide_env_values = true,
        conflicts_with_all = ["turn_username", "turn_credential"]
    )]
    pub turn_secret: Option<String>,
    /// Seconds the credentials made from --turn-secret are valid.
    #[arg(long, env = "RECBOT_TURN_TTL", default_value_t = 86_400)]
    pub turn_ttl: u64,
    /// TCP port for passive ICE-TCP host candidates (participants whose UDP is blocked), on
    /// the --udp-bind IPs; every connection shares it.
    #[arg(long, env = "RECBOT_ICE_TCP_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ice_tcp_port: Option<u16>,
    /// Threads dedicated to media: every WebRTC connection's packet processing (and the
    /// recording of its tracks) runs on one of them; 0 runs it on the main runtime
    /// (default: half the cores, at least one).
    #[arg(long, env = "RECBOT_MEDIA_THREADS", value_parser = clap::value_parser!(u16).range(0..=256))]
    pub media_threads: Option<u16>,
    /// Most recordings active at once (more get 503).
    #[arg(long, env = "RECBOT_MAX_RECORDINGS", default_value_t = 16)]
    pub max_recordings: usize,
    /// Most peers in one room.
    #[arg(long, env = "RECBOT_MAX_PEERS_PER_ROOM", default_value_t = 64)]
    pub max_peers_per_room: usize,
    /// Most rooms at once.
    #[arg(long, env = "RECBOT_MAX_ROOMS", default_value_t = 1000)]
    pub max_rooms: usize,
    /// Longest recording, in seconds (a request's `max_duration_s` may only shorten it).
    #[arg(long, env = "RECBOT_MAX_RECORDING_S", default_value_t = 86_400)]
    pub max_recording_s: u64,
    /// Free disk space (MiB) below which active recordings are stopped cleanly and new ones
    /// refused with 507.
    #[arg(long, env = "RECBOT_MIN_FREE_DISK_MB", default_value_t = 512)]
    pub min_free_disk_mb: u64,
    /// Log format.
    #[arg(long, env = "RECBOT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "RECBOT_LOG", default_value = "info")]
    pub log: String,
    /// Rooms kept for API-created recordings and bots: WebSocket and WHIP clients may create
    /// new rooms only while fewer than `--max-rooms` minus this exist (at most half of
    /// `--max-rooms`).
    #[arg(long, env = "RECBOT_RESERVED_ROOMS", default_value_t = 16)]
    pub reserved_rooms: usize,
    /// Most WHIP sessions one client address may hold at once (more get 429).
    #[arg(long, env = "RECBOT_MAX_WHIP_PER_CLIENT", default_value_t = 32)]
    pub max_whip_per_client: usize,
    /// Most open TCP connections from one peer address (more are answered 429 and closed);
    /// trusted proxies are exempt.
    #[arg(long, env = "RECBOT_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,
    /// Seconds a connection may take to send a request's headers, and may stay idle between
    /// requests, before it is closed.
    #[arg(long, env = "RECBOT_HEADER_TIMEOUT_S", default_value_t = 10)]
    pub header_timeout_s: u64,
    /// Seconds a WHIP session has to connect (ICE and DTLS) before it is removed.
    #[arg(long, env = "RECBOT_WHIP_CONNECT_TIMEOUT_S", default_value_t = 10)]
    pub whip_connect_timeout_s: u64,
    /// File descriptors kept out of the session budget (recording files, logs, the runtime);
    /// the budget is the soft `RLIMIT_NOFILE` minus those open at start minus this.
    #[arg(long, env = "RECBOT_FD_HEADROOM", default_value_t = 64)]
    pub fd_headroom: usize,
    /// Reverse proxies whose `Forwarded`/`X-Forwarded-For` name the client (addresses or CIDR
    /// networks, comma-separated); from anyone else those headers are ignored.
    #[arg(long, env = "RECBOT_TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::limits::parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Use only loopback ICE candidates of remote peers (for tests with a local browser).
    #[arg(long, env = "RECBOT_LOOPBACK_CANDIDATES_ONLY", hide = true)]
    pub loopback_candidates_only: bool,
    /// URL that receives every event as a signed POST (SPEC §8); repeatable, comma-separated
    /// in the environment. Needs --webhook-secret.
    #[arg(long, env = "RECBOT_WEBHOOK_URL", value_delimiter = ',')]
    pub webhook_url: Vec<String>,
    /// Signing secret of the webhooks, `whsec_` + base64 of at least 24 bytes (Standard
    /// Webhooks; never logged).
    #[arg(long, env = "RECBOT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Milliseconds before the first retry of a failed webhook delivery (at most 5000; tests
    /// shorten it).
    #[arg(
        long,
        env = "RECBOT_WEBHOOK_FIRST_RETRY_MS",
        default_value_t = 5000,
        hide = true
    )]
    pub webhook_first_retry_ms: u64,
    /// S3-compatible endpoint URL (MinIO, Garage, Ceph RGW…; path-style addressing). Without
    /// it, AWS S3 of --s3-region (virtual-hosted style). Needs --s3-bucket.
    #[arg(long, env = "RECBOT_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Bucket to upload recordings to; setting it turns object storage on. Credentials come
    /// from RECBOT_S3_ACCESS_KEY_ID / RECBOT_S3_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID /
    /// AWS_SECRET_ACCESS_KEY), never from a flag.
    #[arg(long, env = "RECBOT_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// Region of the bucket (signed into every request).
    #[arg(long, env = "RECBOT_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Key prefix: objects are `{prefix}{recording id}/{file name}`.
    #[arg(long, env = "RECBOT_S3_PREFIX", default_value = "recordings/")]
    pub s3_prefix: String,
    /// Keep the local copy of a file after its upload is confirmed.
    #[arg(long, env = "RECBOT_KEEP_LOCAL")]
    pub keep_local: bool,
    /// Joins this node to a cluster sharing this Redis (SPEC §9): `redis://host:port/db` or
    /// `unix:///path/to/redis.sock`. Without it recbot is a single node and needs no Redis.
    #[arg(long, env = "RECBOT_REDIS_URL", hide_env_values = true)]
    pub redis: Option<String>,
    /// This node's name in the cluster (default: host name and listen port).
    #[arg(long, env = "RECBOT_NODE_ID")]
    pub node_id: Option<String>,
    /// This node's base URL as the other nodes reach it (default: the listen address).
    #[arg(long, env = "RECBOT_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
}

/// The serve options alone, as the command line parses them without a subcommand (for
/// [`ServeArgs::default`]; the whole command line is [`crate::cli::Cli`]).
#[derive(Debug, Parser)]
struct ServeOnly {
    #[command(flatten)]
    serve: ServeArgs,
}

impl Default for ServeArgs {
    fn default() -> Self {
        // Parsing an empty command line can only fail on a bad environment variable; then the
        // caller gets the embedded defaults and the bad value is reported when it parses for real.
        let cli = ServeOnly::try_parse_from(["recbot"]);
        match cli {
            Ok(cli) => cli.serve,
            Err(_) => Self {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                recordings_dir: "recordings".into(),
                media_dir: "media".into(),
                notice_media: None,
                api_token: None,
                room_token: None,
                allow_unauthenticated: false,
                allowed_origins: vec![],
                allowed_hosts: vec![],
                udp_bind: vec![IpAddr::from([0, 0, 0, 0]), IpAddr::from([127, 0, 0, 1])],
                udp_ports: None,
                public_ips: vec![],
                ice_servers: vec![],
                turn_username: None,
                turn_credential: None,
                turn_secret: None,
                turn_ttl: 86_400,
                ice_tcp_port: None,
                media_threads: None,
                max_recordings: 16,
                max_peers_per_room: 64,
                max_rooms: 1000,
                max_recording_s: 86_400,
                min_free_disk_mb: 512,
                log_format: LogFormat::Text,
                log: "info".into(),
                reserved_rooms: 16,
                max_whip_per_client: 32,
                max_connections_per_ip: 256,
                header_timeout_s: 10,
                whip_connect_timeout_s: 10,
                fd_headroom: 64,
                trusted_proxies: vec![],
                loopback_candidates_only: false,
                webhook_url: vec![],
                webhook_secret: None,
                webhook_first_retry_ms: 5000,
                s3_endpoint: None,
                s3_bucket: None,
                s3_region: "us-east-1".into(),
                s3_prefix: "recordings/".into(),
                keep_local: false,
                redis: None,
                node_id: None,
                advertise_url: None,
            },
        }
    }
}

/// A configuration error, reported before the service binds anything.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Non-loopback listen address without a token.
    #[error(
        "refusing to serve {0} without --api-token: anyone who can reach it could record rooms. \
         Set --api-token (RECBOT_API_TOKEN), listen on 127.0.0.1, or pass --allow-unauthenticated"
    )]
    Unauthenticated(SocketAddr),
    /// Bad `--udp-ports`.
    #[error("--udp-ports must be MIN-MAX with 1 <= MIN <= MAX <= 65535, got `{0}`")]
    PortRange(String),
    /// Bad `--ice-servers` entry.
    #[error("--ice-servers entry `{0}` is not a stun:, turn: or turns: URL")]
    IceServer(String),
    /// Recordings dir unusable.
    #[error("recordings directory {path}: {source}")]
    RecordingsDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An empty token.
    #[error("{0} must not be empty")]
    EmptyToken(&'static str),
    /// Zero limits.
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
    /// Bad `--redis`.
    #[error("--redis must be a redis://, rediss:// or unix:// URL, got `{0}`")]
    RedisUrl(String),
    /// Bad `--advertise-url` or `--node-id`.
    #[error("{0}")]
    Cluster(String),
    /// A `--webhook-url` that is not an absolute http(s) URL.
    #[error("--webhook-url `{0}` is not an http:// or https:// URL with a host")]
    WebhookUrl(String),
    /// `--webhook-url` without `--webhook-secret`.
    #[error("--webhook-url needs --webhook-secret (RECBOT_WEBHOOK_SECRET): whsec_ + base64 of 24 to 64 random bytes")]
    WebhookSecretMissing,
    /// A `--webhook-secret` of the wrong shape (the value is not repeated here).
    #[error("--webhook-secret {0}")]
    WebhookSecret(#[from] crate::events::sign::SecretError),
    /// `--webhook-first-retry-ms` out of range.
    #[error("--webhook-first-retry-ms must be 1 to 5000")]
    WebhookFirstRetry,
    /// Bad object storage settings (the message names the flag or variable).
    #[error("{0}")]
    Storage(String),
}

/// Object storage credentials (SPEC §7), from the environment only. The secret is never
/// printed: `Debug` shows the key id alone.
#[derive(Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Validated object storage settings (`--s3-*`, `--keep-local`).
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Endpoint (http or https, with a host); AWS's regional endpoint without `--s3-endpoint`.
    pub endpoint: reqwest::Url,
    /// Path-style addressing (whenever `--s3-endpoint` is set).
    pub path_style: bool,
    /// Bucket name.
    pub bucket: String,
    /// Region.
    pub region: String,
    /// Key prefix.
    pub prefix: String,
    /// Keep local copies after upload.
    pub keep_local: bool,
    /// Credentials.
    pub credentials: S3Credentials,
}

/// The credentials from the environment `env` (a variable's value by name): the RECBOT_S3_*
/// pair, else the AWS_* pair; an error names what is missing.
pub fn s3_credentials(env: impl Fn(&str) -> Option<String>) -> Result<S3Credentials, ConfigError> {
    let get = |name: &str| env(name).filter(|v| !v.is_empty());
    let pair = |id: &str, secret: &str| Some((get(id)?, get(secret)?));
    let (access_key_id, secret_access_key) =
        pair("RECBOT_S3_ACCESS_KEY_ID", "RECBOT_S3_SECRET_ACCESS_KEY")
            .or_else(|| pair("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
            .ok_or_else(|| {
                ConfigError::Storage(
                    "--s3-bucket needs credentials: set RECBOT_S3_ACCESS_KEY_ID and \
             RECBOT_S3_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                        .into(),
                )
            })?;
    Ok(S3Credentials {
        access_key_id,
        secret_access_key,
    })
}

/// `--media-threads` when not given: half the cores, at least one. On two cores that is one
/// thread, which measured cheapest there (README § Performance), and the main runtime keeps
/// both cores for the rest.
pub fn default_media_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Validated settings of the running service.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The raw arguments (for values used as they are).
    pub args: ServeArgs,
    /// Parsed `--udp-ports`.
    pub udp_ports: Option<(u16, u16)>,
    /// ICE servers for our peers and for `welcome`.
    pub ice_servers: Vec<IceServer>,
    /// Webhook receivers and secret (`None`: no events are sent).
    pub webhooks: Option<crate::events::WebhookConfig>,
    /// Object storage, when `--s3-bucket` is set.
    pub storage: Option<S3Settings>,
    /// Per-peer TURN credentials from `--turn-secret` / `--turn-ttl`.
    pub turn_rest: Option<TurnRest>,
    /// `--media-threads`, its default resolved.
    pub media_threads: usize,
}

impl ServeArgs {
    /// Checks every option and creates the recordings directory.
    pub fn validate(self) -> Result<ServerConfig, ConfigError> {
        if self.api_token.as_deref() == Some("") {
            return Err(ConfigError::EmptyToken("--api-token"));
        }
        if self.room_token.as_deref() == Some("") {
            return Err(ConfigError::EmptyToken("--room-token"));
        }
        if !self.listen.ip().is_loopback()
            && self.api_token.is_none()
            && !self.allow_unauthenticated
        {
            return Err(ConfigError::Unauthenticated(self.listen));
        }
        if self.max_recordings == 0 {
            return Err(ConfigError::ZeroLimit("--max-recordings"));
        }
        if self.max_peers_per_room == 0 {
            return Err(ConfigError::ZeroLimit("--max-peers-per-room"));
        }
        if self.max_rooms == 0 {
            return Err(ConfigError::ZeroLimit("--max-rooms"));
        }
        for (value, flag) in [
            (self.max_whip_per_client, "--max-whip-per-client"),
            (self.max_connections_per_ip, "--max-connections-per-ip"),
            (self.header_timeout_s as usize, "--header-timeout-s"),
            (
                self.whip_connect_timeout_s as usize,
                "--whip-connect-timeout-s",
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit(flag));
            }
        }
        if let Some(url) = &self.redis {
            let scheme_ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
                .iter()
                .any(|s| url.starts_with(s));
            if !scheme_ok || redis::Client::open(url.as_str()).is_err() {
                return Err(ConfigError::RedisUrl(url.clone()));
            }
        }
        if let Some(url) = &self.advertise_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.parse::<axum::http::Uri>().is_err()
            {
                return Err(ConfigError::Cluster(format!(
                    "--advertise-url must be an http:// or https:// base URL, got `{url}`"
                )));
            }
        }
        if let Some(id) = &self.node_id {
            let ok = (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
            if !ok {
                return Err(ConfigError::Cluster(format!(
                    "--node-id must be 1-64 characters of A-Z a-z 0-9 - _ . :, got `{id}`"
                )));
            }
        }
        if self.max_recording_s == 0 {
            return Err(ConfigError::ZeroLimit("--max-recording-s"));
        }
        let udp_ports = match &self.udp_ports {
            None => None,
            Some(text) => Some(parse_port_range(text)?),
        };
        if self.turn_secret.as_deref() == Some("") {
            return Err(ConfigError::EmptyToken("--turn-secret"));
        }
        if self.turn_ttl == 0 {
            return Err(ConfigError::ZeroLimit("--turn-ttl"));
        }
        let turn_rest = self
            .turn_secret
            .as_ref()
            .map(|secret| TurnRest::new(secret, std::time::Duration::from_secs(self.turn_ttl)));
        let mut ice_servers = Vec::new();
        for url in &self.ice_servers {
            let scheme = url.split(':').next().unwrap_or_default();
            let turn = matches!(scheme, "turn" | "turns");
            if !(turn || scheme == "stun" || scheme == "stuns") || !url.contains(':') {
                return Err(ConfigError::IceServer(url.clone()));
            }
            ice_servers.push(IceServer {
                urls: vec![url.clone()],
                username: turn.then(|| self.turn_username.clone()).flatten(),
                credential: turn.then(|| self.turn_credential.clone()).flatten(),
            });
        }
        let webhooks = self.webhooks()?;
        let storage = self.s3_settings(|name| std::env::var(name).ok())?;
        std::fs::create_dir_all(&self.recordings_dir).map_err(|source| {
            ConfigError::RecordingsDir {
                path: self.recordings_dir.clone(),
                source,
            }
        })?;
        let probe = self.recordings_dir.join(".recbot-write-test");
        std::fs::write(&probe, b"")
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|source| ConfigError::RecordingsDir {
                path: self.recordings_dir.clone(),
                source,
            })?;
        let media_threads = self
            .media_threads
            .map_or_else(default_media_threads, usize::from);
        Ok(ServerConfig {
            media_threads,
            args: self,
            udp_ports,
            ice_servers,
            storage,
            webhooks,
            turn_rest,
        })
    }

    /// The webhook settings: each URL absolute http(s) with a host, a well-formed secret
    /// whenever one is given, and one required with a URL.
    fn webhooks(&self) -> Result<Option<crate::events::WebhookConfig>, ConfigError> {
        let mut urls = Vec::new();
        for text in self.webhook_url.iter().map(|u| u.trim()) {
            let bad = || ConfigError::WebhookUrl(text.to_owned());
            let url = reqwest::Url::parse(text).map_err(|_| bad())?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty)
            {
                return Err(bad());
            }
            urls.push(url);
        }
        let secret = match &self.webhook_secret {
            Some(text) => Some(crate::events::sign::Secret::parse(text)?),
            None => None,
        };
        if !(1..=5000).contains(&self.webhook_first_retry_ms) {
            return Err(ConfigError::WebhookFirstRetry);
        }
        if urls.is_empty() {
            return Ok(None);
        }
        let secret = secret.ok_or(ConfigError::WebhookSecretMissing)?;
        Ok(Some(crate::events::WebhookConfig {
            urls,
            secret,
            first_retry: std::time::Duration::from_millis(self.webhook_first_retry_ms),
        }))
    }

    /// The object storage settings, with credentials from `env`: `None` without `--s3-bucket`;
    /// an error naming the flag for a malformed endpoint, region or prefix, or no credentials.
    pub fn s3_settings(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<S3Settings>, ConfigError> {
        let bad = |message: String| Err(ConfigError::Storage(message));
        let Some(bucket) = self.s3_bucket.clone() else {
            if self.s3_endpoint.is_some() {
                return bad("--s3-endpoint needs --s3-bucket".into());
            }
            return Ok(None);
        };
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !bucket_ok {
            return bad(format!(
                "--s3-bucket `{bucket}` is not a bucket name (3-63 of a-z 0-9 . -)"
            ));
        }
        let region = self.s3_region.clone();
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad(format!("--s3-region `{region}` is not a region name"));
        }
        let prefix = self.s3_prefix.clone();
        if prefix.starts_with('/') || prefix.len() > 512 || prefix.chars().any(char::is_control) {
            return bad(format!(
                "--s3-prefix `{prefix}` must not start with `/` nor hold control characters"
            ));
        }
        let (endpoint, path_style) = match &self.s3_endpoint {
            Some(text) => {
                let url = reqwest::Url::parse(text).ok().filter(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host_str().is_some_and(|h| !h.is_empty())
                        && u.query().is_none()
                        && u.username().is_empty()
                        && u.password().is_none()
                });
                match url {
                    Some(url) => (url, true),
                    None => {
                        return bad(format!(
                            "--s3-endpoint `{text}` is not an http(s) URL with a host (and \
                             no credentials or query in it)"
                        ))
                    }
                }
            }
            None => match reqwest::Url::parse(&format!("https://s3.{region}.amazonaws.com")) {
                Ok(url) => (url, false),
                Err(_) => return bad(format!("--s3-region `{region}` is not a region name")),
            },
        };
        Ok(Some(S3Settings {
            endpoint,
            path_style,
            bucket,
            region,
            prefix,
            keep_local: self.keep_local,
            credentials: s3_credentials(env)?,
        }))
    }
}

fn parse_port_range(text: &str) -> Result<(u16, u16), ConfigError> {
    let err = || ConfigError::PortRange(text.to_owned());
    let (a, b) = text.split_once('-').ok_or_else(err)?;
    let min: u16 = a.trim().parse().map_err(|_| err())?;
    let max: u16 = b.trim().parse().map_err(|_| err())?;
    if min == 0 || min > max {
        return Err(err());
    }
    Ok((min, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["recbot", "serve"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Some(Command::Serve(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let cli = Cli::try_parse_from(["recbot"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(
            cli.serve.listen,
            "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(cli.serve.recordings_dir, PathBuf::from("recordings"));
    }

    #[test]
    fn refuses_public_bind_without_token() {
        let dir = std::env::temp_dir().join(format!("recbot-cfg-{}", std::process::id()));
        let d = dir.to_str().unwrap();
        let err = args(&["--listen", "0.0.0.0:8080", "--recordings-dir", d])
            .validate()
            .unwrap_err();
        assert!(matches!(err, ConfigError::Unauthenticated(_)));
        assert!(err.to_string().contains("--api-token"));
        args(&[
            "--listen",
            "0.0.0.0:8080",
            "--api-token",
            "s",
            "--recordings-dir",
            d,
        ])
        .validate()
        .unwrap();
        args(&[
            "--listen",
            "0.0.0.0:8080",
            "--allow-unauthenticated",
            "--recordings-dir",
            d,
        ])
        .validate()
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn storage_settings_are_checked_and_name_the_flag() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let creds = env(&[
            ("RECBOT_S3_ACCESS_KEY_ID", "id"),
            ("RECBOT_S3_SECRET_ACCESS_KEY", "s3cr3t"),
        ]);
        assert!(args(&[]).s3_settings(creds).unwrap().is_none());
        let s = args(&[
            "--s3-bucket",
            "rec",
            "--s3-endpoint",
            "http://127.0.0.1:9000",
        ])
        .s3_settings(creds)
        .unwrap()
        .unwrap();
        assert!(s.path_style);
        assert_eq!(s.prefix, "recordings/");
        assert_eq!(s.region, "us-east-1");
        assert!(!format!("{s:?}").contains("s3cr3t"));
        let aws = args(&["--s3-bucket", "rec", "--s3-region", "eu-west-3"])
            .s3_settings(creds)
            .unwrap()
            .unwrap();
        assert!(!aws.path_style);
        assert_eq!(aws.endpoint.as_str(), "https://s3.eu-west-3.amazonaws.com/");
        let fallback = env(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]);
        let s = args(&["--s3-bucket", "rec"])
            .s3_settings(fallback)
            .unwrap()
            .unwrap();
        assert_eq!(s.credentials.access_key_id, "a");
        for (argv, flag) in [
            (
                &["--s3-bucket", "rec", "--s3-endpoint", "localhost:9000"][..],
                "--s3-endpoint",
            ),
            (
                &["--s3-bucket", "rec", "--s3-endpoint", "ftp://x"][..],
                "--s3-endpoint",
            ),
            (&["--s3-endpoint", "http://x"][..], "--s3-bucket"),
            (&["--s3-bucket", "Bad_Bucket"][..], "--s3-bucket"),
            (
                &["--s3-bucket", "rec", "--s3-region", "a/b"][..],
                "--s3-region",
            ),
        ] {
            let err = args(argv).s3_settings(creds).unwrap_err().to_string();
            assert!(err.contains(flag), "{argv:?}: {err}");
        }
        let none = env(&[("RECBOT_S3_ACCESS_KEY_ID", "id")]);
        let err = args(&["--s3-bucket", "rec"]).s3_settings(none).unwrap_err();
        assert!(
            err.to_string().contains("RECBOT_S3_SECRET_ACCESS_KEY"),
            "{err}"
        );
    }

    #[test]
    fn allowed_hosts_is_a_list() {
        assert!(args(&[]).allowed_hosts.is_empty());
        assert_eq!(
            args(&["--allowed-hosts", "recbot.lan,box:9000"]).allowed_hosts,
            vec!["recbot.lan".to_owned(), "box:9000".to_owned()]
        );
    }

    #[test]
    fn port_ranges_and_ice_servers() {
        assert_eq!(parse_port_range("10000-10100").unwrap(), (10000, 10100));
        assert!(parse_port_range("10100-10000").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("abc").is_err());
        let dir = std::env::temp_dir().join(format!("recbot-cfg2-{}", std::process::id()));
        let cfg = args(&[
            "--ice-servers",
            "stun:stun.example:3478,turn:turn.example:3478",
            "--turn-username",
            "u",
            "--turn-credential",
            "p",
            "--recordings-dir",
            dir.to_str().unwrap(),
        ])
        .validate()
        .unwrap();
        assert_eq!(cfg.ice_servers.len(), 2);
        assert_eq!(cfg.ice_servers[0].username, None);
        assert_eq!(cfg.ice_servers[1].credential.as_deref(), Some("p"));
        assert!(args(&["--ice-servers", "http://x"]).validate().is_err());
        let cfg = args(&[
            "--ice-servers",
            "turn:turn.example:3478",
            "--turn-secret",
            "s",
            "--ice-tcp-port",
            "8443",
            "--recordings-dir",
            dir.to_str().unwrap(),
        ])
        .validate()
        .unwrap();
        assert_eq!(cfg.turn_rest.map(|r| r.ttl().as_secs()), Some(86_400));
        assert_eq!(cfg.args.ice_tcp_port, Some(8443));
        let cfg = args(&[
            "--turn-secret",
            "s",
            "--turn-ttl",
            "60",
            "--recordings-dir",
            dir.to_str().unwrap(),
        ])
        .validate()
        .unwrap();
        assert_eq!(cfg.turn_rest.map(|r| r.ttl().as_secs()), Some(60));
        for bad in ["0", "x", "9000-9009", "70000"] {
            let argv = ["recbot", "serve", "--ice-tcp-port", bad];
            assert!(Cli::try_parse_from(argv).is_err(), "{bad}");
        }
        let both = [
            "recbot",
            "serve",
            "--turn-secret",
            "s",
            "--turn-username",
            "u",
        ];
        assert!(
            Cli::try_parse_from(both).is_err(),
            "static or REST, not both"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn media_threads_default_to_half_the_cores_and_zero_means_none() {
        let dir = std::env::temp_dir().join(format!("recbot-cfg-mt-{}", std::process::id()));
        let d = dir.to_str().unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cfg = args(&["--recordings-dir", d]).validate().unwrap();
        assert_eq!(cfg.media_threads, (cores / 2).max(1));
        for (flag, want) in [("0", 0), ("3", 3)] {
            let cfg = args(&["--media-threads", flag, "--recordings-dir", d])
                .validate()
                .unwrap();
            assert_eq!(cfg.media_threads, want);
        }
        for bad in ["-1", "x", "257"] {
            let argv = ["recbot", "serve", "--media-threads", bad];
            assert!(Cli::try_parse_from(argv).is_err(), "{bad}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn webhook_flags_are_checked() {
        const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let ok = args(&[
            "--webhook-url",
            "https://a.example/hook",
            "--webhook-url",
            "http://127.0.0.1:9/x",
            "--webhook-secret",
            SECRET,
        ])
        .webhooks()
        .unwrap()
        .unwrap();
        assert_eq!(ok.urls.len(), 2);
        assert!(args(&[]).webhooks().unwrap().is_none());
        for (argv, flag) in [
            (
                vec!["--webhook-url", "https://a.example/"],
                "--webhook-secret",
            ),
            (
                vec!["--webhook-url", "https://a", "--webhook-secret", "nope"],
                "--webhook-secret",
            ),
            (
                vec![
                    "--webhook-url",
                    "https://a",
                    "--webhook-secret",
                    "whsec_c2hvcnQ=",
                ],
                "--webhook-secret",
            ),
            (
                vec!["--webhook-url", "ftp://a/", "--webhook-secret", SECRET],
                "--webhook-url",
            ),
            (
                vec!["--webhook-url", "not a url", "--webhook-secret", SECRET],
                "--webhook-url",
            ),
        ] {
            let err = args(&argv).webhooks().unwrap_err().to_string();
            assert!(err.contains(flag), "{argv:?}: {err}");
            assert!(!err.contains("C2FV"), "{err}");
        }
    }
}
