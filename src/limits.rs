//! Limits against abuse from the network (README "Security"): who a client is (its address,
//! or the forwarded one behind a trusted proxy), per-client counters of WHIP sessions and of
//! TCP connections, and the process-wide file-descriptor budget derived from `RLIMIT_NOFILE`.
//!
//! Every counter is held by an RAII permit: dropping the permit gives the slot back, so a
//! session or connection that ends by any path frees what it took.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// File descriptors a WHIP session (one peer connection: its UDP sockets and their helpers)
/// is budgeted at. Measured at 3 with the default `--udp-bind`; one spare.
pub const SESSION_FDS: usize = 4;

/// The process's file-descriptor budget: `RLIMIT_NOFILE` minus the descriptors open at start
/// and a headroom for recording files, the listener and the runtime. Connections take one unit
/// each, WHIP sessions [`SESSION_FDS`]; new work is refused while the budget cannot cover it,
/// so the process never meets `EMFILE`.
#[derive(Debug)]
pub struct FdBudget {
    capacity: usize,
    used: AtomicUsize,
}

impl FdBudget {
    /// A budget of `capacity` descriptors.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            used: AtomicUsize::new(0),
        })
    }

    /// The budget of this process: soft `RLIMIT_NOFILE` minus what is open now minus
    /// `headroom`.
    pub fn for_process(headroom: usize) -> Arc<Self> {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let open = std::fs::read_dir("/proc/self/fd").map_or(32, |d| d.count());
        let capacity = limit.saturating_sub(open).saturating_sub(headroom);
        tracing::info!(nofile = limit, open, capacity, "file descriptor budget");
        Self::new(capacity)
    }

    /// Descriptors the budget may hand out in all.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Descriptors handed out now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether `cost` more descriptors fit now (without taking them).
    pub fn fits(&self, cost: usize) -> bool {
        self.used().saturating_add(cost) <= self.capacity
    }

    /// Takes `cost` descriptors, or `None` when they do not fit.
    pub fn take(self: &Arc<Self>, cost: usize) -> Option<FdPermit> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let next = used.checked_add(cost)?;
                (next <= self.capacity).then_some(next)
            })
            .ok()?;
        Some(FdPermit {
            budget: Arc::clone(self),
            cost,
        })
    }
}

/// Descriptors taken from an [`FdBudget`]; given back on drop.
#[derive(Debug)]
pub struct FdPermit {
    budget: Arc<FdBudget>,
    cost: usize,
}

impl Drop for FdPermit {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.cost, Ordering::AcqRel);
    }
}

/// Counts of something per client address, each at most `max`.
#[derive(Debug)]
pub struct PerClient {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    /// At most `max` per address.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Every critical section is a whole update of one entry: consistent after a panic.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one slot for `client`, or `None` when it already holds `max`.
    pub fn take(self: &Arc<Self>, client: IpAddr) -> Option<ClientPermit> {
        let mut counts = self.lock();
        let count = counts.entry(client).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientPermit {
            owner: Arc::clone(self),
            client,
        })
    }

    /// Slots `client` holds now.
    pub fn held(&self, client: IpAddr) -> usize {
        self.lock().get(&client).copied().unwrap_or(0)
    }
}

/// One slot of a client in a [`PerClient`]; given back on drop.
#[derive(Debug)]
pub struct ClientPermit {
    owner: Arc<PerClient>,
    client: IpAddr,
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        let mut counts = self.owner.lock();
        if let Some(count) = counts.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

/// The limits of one running service.
#[derive(Debug)]
pub struct Limits {
    /// The descriptor budget.
    pub fds: Arc<FdBudget>,
    /// WHIP sessions per client address.
    pub whip: Arc<PerClient>,
    /// Open TCP connections per peer address.
    pub connections: Arc<PerClient>,
    trusted_proxies: Vec<IpNet>,
}

impl Limits {
    /// Limits with these budgets and proxies whose forwarded addresses are believed.
    pub fn new(
        fds: Arc<FdBudget>,
        whip_per_client: usize,
        connections_per_ip: usize,
        trusted_proxies: Vec<IpNet>,
    ) -> Self {
        Self {
            fds,
            whip: PerClient::new(whip_per_client),
            connections: PerClient::new(connections_per_ip),
            trusted_proxies,
        }
    }

    /// Whether `ip` is one of `--trusted-proxies`.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client a request comes from: the TCP peer, or, when the TCP peer is a trusted
    /// proxy, the nearest untrusted address of `X-Forwarded-For` (or `Forwarded: for=`).
    pub fn client_ip(&self, peer: SocketAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        let mut client = canonical(peer.ip());
        if !self.is_trusted_proxy(client) {
            return client;
        }
        // Rightmost first: each trusted hop appended the address it saw.
        for hop in forwarded_chain(headers).into_iter().rev() {
            client = hop;
            if !self.is_trusted_proxy(hop) {
                break;
            }
        }
        client
    }
}

/// What an admitted connection holds: its descriptor and its slot of its peer's cap (none for
/// a trusted proxy).
#[derive(Debug)]
pub struct ConnectionPermits {
    _fd: FdPermit,
    _client: Option<ClientPermit>,
}

/// Admits a new TCP connection from `peer`, or returns the complete HTTP reply refusing it:
/// `429` when the address has `--max-connections-per-ip` open, `503` when the descriptor
/// budget is spent.
pub fn admit_connection(limits: &Limits, peer: IpAddr) -> Result<ConnectionPermits, String> {
    let peer = canonical(peer);
    let client = if limits.is_trusted_proxy(peer) {
        None
    } else {
        match limits.connections.take(peer) {
            Some(permit) => Some(permit),
            None => {
                return Err(refusal(
                    "429 Too Many Requests",
                    "too-many-connections",
                    "this address has too many open connections",
                ))
            }
        }
    };
    let Some(fd) = limits.fds.take(1) else {
        return Err(refusal(
            "503 Service Unavailable",
            "server-busy",
            "the server is at its connection capacity",
        ));
    };
    Ok(ConnectionPermits {
        _fd: fd,
        _client: client,
    })
}

/// A whole `Connection: close` HTTP/1.1 reply with the SPEC's JSON error body.
fn refusal(status: &str, code: &str, message: &str) -> String {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 5\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A connection's socket carrying its [`ConnectionPermits`]: they are given back when the
/// socket closes, also after an upgrade to WebSocket hands the socket on.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    _permits: ConnectionPermits,
}

impl<T> Counted<T> {
    /// `inner`, holding `permits` until dropped.
    pub fn new(inner: T, permits: ConnectionPermits) -> Self {
        Self {
            inner,
            _permits: permits,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How often [`trim_memory_after_churn`] looks whether peers went away.
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Gives memory freed by ended peers back to the system. glibc's malloc keeps freed pages of
/// its per-thread arenas mapped (after a flood of 1,000 WHIP sessions: hundreds of MB, never
/// returned); every [`TRIM_EVERY`], if fewer peers are present than at the last look,
/// `malloc_trim(0)` releases them. Ends when `shutdown` is cancelled. A no-op loop elsewhere
/// than glibc.
pub async fn trim_memory_after_churn(
    peers: impl Fn() -> usize + Send + 'static,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut last = peers();
    let mut tick = tokio::time::interval(TRIM_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = peers();
        if now < last {
            let _ = tokio::task::spawn_blocking(release_free_memory).await;
        }
        last = now;
    }
}

/// Gives glibc's free arena pages back to the system. The crate's only unsafe code.
#[allow(unsafe_code)]
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is thread-safe and
    // has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so one client has one key.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The addresses of `Forwarded: for=` (RFC 7239) if present, else of `X-Forwarded-For`, in
/// order (client first). Unparsable entries end the chain there (nothing left of them is used).
fn forwarded_chain(headers: &axum::http::HeaderMap) -> Vec<IpAddr> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_owned())
            .collect()
    };
    let forwarded: Vec<String> = values("forwarded")
        .into_iter()
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                key.eq_ignore_ascii_case("for")
                    .then(|| value.trim_matches('"').to_owned())
            })
        })
        .collect();
    let entries = if forwarded.is_empty() {
        values("x-forwarded-for")
    } else {
        forwarded
    };
    let mut chain = Vec::new();
    for entry in entries.iter().rev() {
        match parse_node(entry) {
            Some(ip) => chain.push(canonical(ip)),
            None => break,
        }
    }
    chain.reverse();
    chain
}

/// `1.2.3.4`, `1.2.3.4:5`, `[::1]`, `[::1]:5` or `::1`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    text.strip_prefix('[')?.split(']').next()?.parse().ok()
}

/// Parses a `--trusted-proxies` entry: an address or a CIDR network.
pub fn parse_proxy(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not an IP address or CIDR network"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn limits(proxies: &[&str]) -> Limits {
        let nets = proxies.iter().map(|p| parse_proxy(p).unwrap()).collect();
        Limits::new(FdBudget::new(10), 2, 2, nets)
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let client = |l: &Limits| l.client_ip(peer, &headers);
        assert_eq!(client(&limits(&[])), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            client(&limits(&["10.0.0.0/8"])),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Only the first hop trusted: the address it saw is the client.
        assert_eq!(
            client(&limits(&["10.0.0.1"])),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        let mut rfc = HeaderMap::new();
        rfc.insert(
            "forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8::1]:80\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            limits(&["10.0.0.1"]).client_ip(peer, &rfc),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn permits_give_back_their_slots() {
        let l = limits(&[]);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = l.whip.take(ip).unwrap();
        let _b = l.whip.take(ip).unwrap();
        assert!(l.whip.take(ip).is_none());
        drop(a);
        assert_eq!(l.whip.held(ip), 1);
        assert!(l.whip.take(ip).is_some());
        let f = l.fds.take(SESSION_FDS).unwrap();
        let g = l.fds.take(SESSION_FDS).unwrap();
        assert!(l.fds.take(SESSION_FDS).is_none());
        drop((f, g));
        assert_eq!(l.fds.used(), 0);
        assert!(l.fds.fits(10) && !l.fds.fits(11));
    }
}
