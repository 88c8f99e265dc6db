//! One TCP port for the passive ICE-TCP candidates of every connection (`--ice-tcp-port`).
//!
//! webrtc-rs 0.21.1 gives each connection TCP listeners of its own (`with_tcp_addrs`), bound by
//! its driver. With a [`TcpMux`], a connection's driver still binds its own listener (on an
//! ephemeral port, never advertised), but what it accepts comes from the mux: the mux listens
//! on the one shared port, reads the first RFC 4571 frame of each new stream (the remote's
//! first STUN binding request), and hands the stream to the connection whose local ICE
//! username fragment is the first half of the request's USERNAME (`ours:theirs`, RFC 8445
//! §7.2.2). The bytes read are replayed to webrtc-rs, and the stream reports the connection's
//! own listener address as its local address, so that webrtc-rs's ICE agent sees the stream as
//! it would have seen one accepted by its own listener. Candidates are advertised with the
//! shared port ([`super::advertised`]).
//!
//! Invariants: a stream goes to at most one connection, and only after a complete first frame
//! (at most [`MAX_FIRST_FRAME`] bytes, within [`FIRST_FRAME_TIMEOUT`]) naming a registered
//! fragment; anything else is closed. Routes live as long as their connection's runtime.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use webrtc::runtime::{AsyncTcpListener, AsyncTcpStream};

/// Largest first frame read to find the ICE username (a binding request is far smaller).
pub const MAX_FIRST_FRAME: usize = 2048;
/// How long a new stream has to send its first frame.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// Streams waiting for one connection's driver to accept them.
const ACCEPT_QUEUE: usize = 16;
/// Most new streams waiting for their first frame at once; more are closed at once (each
/// holds a descriptor for up to [`FIRST_FRAME_TIMEOUT`]: a flood must not exhaust them).
pub const MAX_PENDING: usize = 128;

/// A stream handed to a connection (its first frame to replay, its halves), and the remote
/// address.
type Accepted = (Replay, OwnedWriteHalf, SocketAddr);

/// The shared ICE-TCP port and its routes (see the module documentation).
#[derive(Debug)]
pub struct TcpMux {
    port: u16,
    routes: Mutex<Routes>,
    /// New streams waiting for their first frame.
    pending: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Default)]
struct Routes {
    /// Per connection (its runtime's key): its listeners, by the IP they are bound on.
    connections: HashMap<u64, HashMap<IpAddr, mpsc::Sender<Accepted>>>,
    /// Local ICE username fragments → connection key.
    ufrags: HashMap<String, u64>,
}

impl TcpMux {
    /// Listens on `port` of every IP of `ips` and starts accepting. An unspecified address
    /// (`0.0.0.0`, `::`) covers the other addresses of its family, which are then not bound
    /// (a second listener on the port would fail). Must run inside a tokio runtime.
    pub fn bind(ips: &[IpAddr], port: u16) -> io::Result<Arc<Self>> {
        let mux = Arc::new(Self {
            port,
            routes: Mutex::new(Routes::default()),
            pending: std::sync::atomic::AtomicUsize::new(0),
        });
        let covered = |ip: &IpAddr| {
            !ip.is_unspecified()
                && ips
                    .iter()
                    .any(|w| w.is_unspecified() && w.is_ipv4() == ip.is_ipv4())
        };
        let mut bound: Vec<IpAddr> = Vec::new();
        for ip in ips.iter().filter(|ip| !covered(ip)) {
            if bound.contains(ip) {
                continue;
            }
            bound.push(*ip);
            let listener = std::net::TcpListener::bind(SocketAddr::new(*ip, port))?;
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(accept_loop(Arc::downgrade(&mux), listener));
        }
        Ok(mux)
    }

    /// The shared port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes connection `key`'s listener bound at `local` the receiver of the streams meant
    /// for it on `local`'s IP.
    pub fn listener(self: &Arc<Self>, key: u64, local: SocketAddr) -> MuxListener {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        self.routes()
            .connections
            .entry(key)
            .or_default()
            .insert(local.ip(), tx);
        MuxListener {
            local,
            rx: tokio::sync::Mutex::new(rx),
        }
    }

    /// Streams whose first request names local fragment `ufrag` go to connection `key`.
    pub fn route(&self, key: u64, ufrag: &str) {
        self.routes().ufrags.insert(ufrag.to_owned(), key);
    }

    /// Forgets connection `key` (its runtime is gone).
    pub fn forget(&self, key: u64) {
        let mut routes = self.routes();
        routes.connections.remove(&key);
        routes.ufrags.retain(|_, k| *k != key);
    }

    /// Where a stream that arrived on `local_ip` with local fragment `ufrag` goes.
    fn target(&self, ufrag: &str, local_ip: IpAddr) -> Option<mpsc::Sender<Accepted>> {
        let routes = self.routes();
        let listeners = routes.connections.get(routes.ufrags.get(ufrag)?)?;
        let ip = local_ip.to_canonical();
        listeners
            .get(&ip)
            .or_else(|| {
                (listeners.len() == 1)
                    .then(|| listeners.values().next())
                    .flatten()
            })
            .cloned()
    }
}

async fn accept_loop(mux: Weak<TcpMux>, listener: tokio::net::TcpListener) {
    loop {
        let accepted = listener.accept().await;
        let Some(mux) = mux.upgrade() else {
            return;
        };
        match accepted {
            Ok((stream, peer)) => {
                use std::sync::atomic::Ordering;
                if mux.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
                    mux.pending.fetch_sub(1, Ordering::AcqRel);
                    tracing::debug!(%peer, "ICE-TCP: too many streams pending, closed");
                    continue;
                }
                tokio::spawn(async move {
                    dispatch(&mux, stream, peer).await;
                    mux.pending.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "ICE-TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads the first frame of `stream` and hands it, replayed, to its connection.
async fn dispatch(mux: &TcpMux, mut stream: tokio::net::TcpStream, peer: SocketAddr) {
    let first = tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_first_frame(&mut stream)).await;
    let frame = match first {
        Ok(Ok(frame)) => frame,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "ICE-TCP stream without a usable first frame");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "ICE-TCP stream sent no first frame in time");
            return;
        }
    };
    let Some(ufrag) = local_ufrag(&frame[2..]) else {
        tracing::debug!(%peer, "ICE-TCP first frame is not a STUN request with a USERNAME");
        return;
    };
    let Ok(arrived_on) = stream.local_addr() else {
        return;
    };
    let Some(target) = mux.target(&ufrag, arrived_on.ip()) else {
        tracing::debug!(%peer, ufrag, "ICE-TCP stream for no known connection");
        return;
    };
    let (read, write) = stream.into_split();
    // ok: the channel's receiver is the connection's listener; a full queue or a gone
    // listener drops this stream, which the remote sees as a failed check.
    let replay = Replay {
        prefix: frame,
        at: 0,
        rest: read,
    };
    let _ = target.try_send((replay, write, peer));
}

/// Reads one RFC 4571 frame (2-byte length, then that many bytes), returned whole.
async fn read_first_frame(stream: &mut tokio::net::TcpStream) -> io::Result<Vec<u8>> {
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).await?;
    let length = usize::from(u16::from_be_bytes(length));
    if !(20..=MAX_FIRST_FRAME).contains(&length) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame size"));
    }
    let mut frame = vec![0u8; 2 + length];
    frame[..2].copy_from_slice(&(length as u16).to_be_bytes());
    stream.read_exact(&mut frame[2..]).await?;
    Ok(frame)
}

/// The receiver's (our) fragment of a STUN binding request's USERNAME (`ours:theirs`).
pub fn local_ufrag(message: &[u8]) -> Option<String> {
    const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    if message.len() < 20 || message[0..2] != [0x00, 0x01] || message[4..8] != MAGIC {
        return None;
    }
    let declared = usize::from(u16::from_be_bytes([message[2], message[3]]));
    let attributes = message.get(20..20 + declared)?;
    let mut at = 0;
    while at + 4 <= attributes.len() {
        let kind = u16::from_be_bytes([attributes[at], attributes[at + 1]]);
        let length = usize::from(u16::from_be_bytes([attributes[at + 2], attributes[at + 3]]));
        let value = attributes.get(at + 4..at + 4 + length)?;
        if kind == 0x0006 {
            let username = std::str::from_utf8(value).ok()?;
            let (ours, _) = username.split_once(':')?;
            return (!ours.is_empty()).then(|| ours.to_owned());
        }
        at += 4 + length.div_ceil(4) * 4;
    }
    None
}

/// The bytes read to route a stream, then the stream itself.
#[derive(Debug)]
struct Replay {
    prefix: Vec<u8>,
    at: usize,
    rest: OwnedReadHalf,
}

/// A routed stream as webrtc-rs sees it: the first frame replayed, and the connection's own
/// listener address as its local address.
#[derive(Debug)]
struct MuxStream {
    read: tokio::sync::Mutex<Replay>,
    write: tokio::sync::Mutex<OwnedWriteHalf>,
    /// The address of the connection's own listener.
    local: SocketAddr,
    peer: SocketAddr,
}

impl AsyncTcpStream for MuxStream {
    fn read<'a, 'b>(
        &'a self,
        buf: &'b mut [u8],
    ) -> Pin<Box<dyn Future<Output = io::Result<usize>> + Send + 'b>>
    where
        'a: 'b,
    {
        Box::pin(async move {
            let mut read = self.read.lock().await;
            if read.at < read.prefix.len() {
                let n = buf.len().min(read.prefix.len() - read.at);
                buf[..n].copy_from_slice(&read.prefix[read.at..read.at + n]);
                read.at += n;
                if read.at == read.prefix.len() {
                    read.prefix = Vec::new();
                    read.at = 0;
                }
                return Ok(n);
            }
            read.rest.read(buf).await
        })
    }

    fn write_all<'a, 'b>(
        &'a self,
        buf: &'b [u8],
    ) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'b>>
    where
        'a: 'b,
    {
        Box::pin(async move { self.write.lock().await.write_all(buf).await })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

/// A connection's ICE-TCP listener fed by the [`TcpMux`] (what webrtc-rs's driver accepts
/// from). Its `local` is the address of the listener the driver bound, never advertised.
#[derive(Debug)]
pub struct MuxListener {
    local: SocketAddr,
    rx: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
}

impl AsyncTcpListener for MuxListener {
    fn accept<'a>(
        &'a self,
    ) -> Pin<Box<dyn Future<Output = io::Result<(Arc<dyn AsyncTcpStream>, SocketAddr)>> + Send + 'a>>
    {
        Box::pin(async move {
            let mut rx = self.rx.lock().await;
            let Some((replay, write, peer)) = rx.recv().await else {
                return std::future::pending().await;
            };
            let stream = MuxStream {
                read: tokio::sync::Mutex::new(replay),
                write: tokio::sync::Mutex::new(write),
                local: self.local,
                peer,
            };
            Ok((Arc::new(stream) as Arc<dyn AsyncTcpStream>, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        // A PRIORITY attribute first, then USERNAME padded to 4 bytes.
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[9; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    }

    #[tokio::test]
    async fn a_stream_goes_to_the_connection_its_request_names_with_the_frame_replayed() {
        let port = free_port();
        let mux = TcpMux::bind(&[IpAddr::from([127, 0, 0, 1])], port).expect("bind");
        let a_local: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let b_local: SocketAddr = "127.0.0.1:40002".parse().unwrap();
        let a = mux.listener(1, a_local);
        let b = mux.listener(2, b_local);
        mux.route(1, "ufraga");
        mux.route(2, "ufragb");
        let mut frame = request("ufragb:remote");
        let length = (frame.len() as u16).to_be_bytes();
        frame.splice(0..0, length);
        let mut client = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        client.write_all(&frame).await.expect("write");
        client.write_all(b"after").await.expect("write");
        let (stream, peer) = tokio::time::timeout(Duration::from_secs(10), b.accept())
            .await
            .expect("routed to b")
            .expect("accepted");
        assert_eq!(peer, client.local_addr().unwrap());
        assert_eq!(
            stream.local_addr().unwrap(),
            b_local,
            "the connection's own address"
        );
        let mut got = vec![0u8; frame.len() + 5];
        let mut at = 0;
        while at < got.len() {
            let n = stream.read(&mut got[at..]).await.expect("read");
            assert!(n > 0, "stream ended early");
            at += n;
        }
        assert_eq!(&got[..frame.len()], &frame[..], "first frame replayed");
        assert_eq!(&got[frame.len()..], b"after");
        stream.write_all(b"back").await.expect("write back");
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.expect("read back");
        assert_eq!(&back, b"back");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), a.accept())
                .await
                .is_err(),
            "nothing for a"
        );
        // Unknown fragments and garbage are closed.
        for bytes in [request("nobody:x"), vec![0, 1, 2]] {
            let mut bad = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            bad.write_all(&framed).await.expect("write");
            let mut buf = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(10), bad.read(&mut buf))
                .await
                .expect("closed")
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
        mux.forget(2);
        assert!(mux.target("ufragb", IpAddr::from([127, 0, 0, 1])).is_none());
    }

    #[tokio::test]
    async fn streams_beyond_the_pending_cap_are_closed_at_once() {
        let port = free_port();
        let mux = TcpMux::bind(&[IpAddr::from([127, 0, 0, 1])], port).expect("bind");
        let mut held = Vec::new();
        for _ in 0..MAX_PENDING {
            held.push(
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect"),
            );
        }
        let pending = || mux.pending.load(std::sync::atomic::Ordering::Acquire);
        tokio::time::timeout(Duration::from_secs(10), async {
            while pending() < MAX_PENDING {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("all pending");
        let mut extra = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut buf = [0u8; 1];
        // Well before FIRST_FRAME_TIMEOUT: closed at once, not after a wait.
        let n = tokio::time::timeout(FIRST_FRAME_TIMEOUT / 2, extra.read(&mut buf))
            .await
            .expect("closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), held[0].read(&mut buf))
                .await
                .is_err(),
            "the pending ones wait for their frame"
        );
    }

    #[test]
    fn the_local_fragment_is_read_from_a_binding_request() {
        assert_eq!(local_ufrag(&request("abcd:wxyz")).as_deref(), Some("abcd"));
        assert_eq!(local_ufrag(&request("a1b:c")).as_deref(), Some("a1b"));
        assert_eq!(local_ufrag(&request("nocolon")), None);
        assert_eq!(local_ufrag(&request(":x")), None);
        let mut response = request("abcd:wxyz");
        response[0..2].copy_from_slice(&[0x01, 0x01]);
        assert_eq!(local_ufrag(&response), None, "only requests");
        let mut truncated = request("abcd:wxyz");
        truncated.truncate(30);
        assert_eq!(local_ufrag(&truncated), None);
        assert_eq!(local_ufrag(&[0; 10]), None);
    }
}
