//! Accepting connections so that no port can be used to take the node down.
//!
//! Measured before this existed: 25,000 idle TCP connections to a primary's REST
//! port used up its file descriptors (limit 20,000); `accept` failed with EMFILE, the
//! supervisor could no longer open files in the data dir, and the primary gave up
//! its lease: a failover any client on the network could trigger.
//!
//! Invariants:
//! - Every accepted socket holds a [`Ticket`] of its port's [`Gate`]; a port never
//!   holds more than its cap, nor one client address more than the per-address cap.
//!   The caps of all ports together stay below the descriptor limit minus a reserve
//!   for Raft's own connections, sled, PostgreSQL's pipes and the data dir
//!   ([`fit_caps`]), so a flood degrades only the port it floods.
//! - A connection over a cap is accepted and closed at once, not left in the
//!   kernel's backlog, so the backlog keeps moving for other clients.
//! - A connection that sends nothing within the handshake timeout is closed
//!   ([`Admitted`]); REST adds a header timeout that also ends idle keep-alives.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

use crate::tls::{ConnInfo, ServerTls, TlsConn};

/// How often a port logs that it refuses connections, at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The connections one port admits at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_ip: usize,
}

/// Counts a port's open connections, in all and per client address.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

struct GateInner {
    port: &'static str,
    caps: Caps,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
    refused: u64,
    last_warn: Option<std::time::Instant>,
}

/// One admitted connection's place in its gate, given back on drop.
pub struct Ticket {
    gate: Arc<GateInner>,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

impl Gate {
    /// `port` names the port in log lines ("REST", "gRPC").
    pub fn new(port: &'static str, caps: Caps) -> Self {
        Self {
            inner: Arc::new(GateInner {
                port,
                caps,
                open: Mutex::new(Open::default()),
            }),
        }
    }

    /// A place for a connection from `ip`, or None when the port or that address
    /// is at its cap (counted, and logged at most every [`WARN_EVERY`]).
    pub fn admit(&self, ip: IpAddr) -> Option<Ticket> {
        let mut open = self.inner.open.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = open.by_ip.get(&ip).copied().unwrap_or(0);
        let caps = self.inner.caps;
        if open.total >= caps.total || from_ip >= caps.per_ip {
            open.refused += 1;
            let now = std::time::Instant::now();
            if open
                .last_warn
                .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
            {
                open.last_warn = Some(now);
                tracing::warn!(
                    port = self.inner.port,
                    open = open.total,
                    cap = caps.total,
                    from = %ip,
                    from_open = from_ip,
                    per_address_cap = caps.per_ip,
                    refused_so_far = open.refused,
                    "refusing connections: the port is at its connection cap; if these \
                     clients are legitimate, raise [limits] in the config (and the \
                     descriptor limit, LimitNOFILE)"
                );
            }
            return None;
        }
        open.total += 1;
        *open.by_ip.entry(ip).or_insert(0) += 1;
        Some(Ticket {
            gate: self.inner.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .total
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.inner
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .refused
    }
}

/// An admitted TCP connection: its ticket, and a deadline for its first byte.
pub struct Admitted {
    io: TcpStream,
    remote: SocketAddr,
    first_byte: Option<Pin<Box<Sleep>>>,
    _ticket: Ticket,
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.first_byte = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this
                    .first_byte
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client sent nothing within the handshake timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A served connection: plaintext, or after its TLS handshake. Handlers find its
/// [`ConnInfo`] (who the client is) in each request's extensions.
pub enum Conn {
    Plain(Admitted),
    Tls(Box<TlsConn<Admitted>>),
}

impl Conn {
    pub fn info(&self) -> ConnInfo {
        match self {
            Conn::Plain(a) => ConnInfo {
                remote: a.remote,
                identity: None,
            },
            Conn::Tls(t) => t.info.clone(),
        }
    }

    /// The handshake `tls` asks for (none without it), within `handshake`.
    pub async fn open(
        a: Admitted,
        tls: Option<&ServerTls>,
        handshake: Duration,
        port: &'static str,
    ) -> Option<Conn> {
        let Some(tls) = tls else {
            return Some(Conn::Plain(a));
        };
        let remote = a.remote;
        match tokio::time::timeout(handshake, tls.accept(a, remote)).await {
            Ok(Ok(c)) => Some(Conn::Tls(Box::new(c))),
            Ok(Err(e)) => {
                // A certificate refused is worth the operator's eye (another CA, an
                // expired or foreign certificate); garbage and scans are not.
                let text = e.to_string().to_lowercase();
                if text.contains("certificate") || text.contains("unknownca") {
                    tracing::warn!(port, from = %remote, error = %e, "TLS handshake refused");
                } else {
                    tracing::debug!(port, from = %remote, error = %e, "TLS handshake failed");
                }
                None
            }
            Err(_) => None,
        }
    }
}

macro_rules! both {
    ($self:ident, $c:ident => $e:expr) => {
        match &mut *$self {
            Conn::Plain($c) => $e,
            Conn::Tls($c) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        both!(self, c => Pin::new(c).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        both!(self, c => Pin::new(c).poll_write(cx, buf))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self, c => Pin::new(c).poll_flush(cx))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self, c => Pin::new(c).poll_shutdown(cx))
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info()
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The next connection `gate` admits, with `handshake` to send its first byte.
/// Errors of one connection (reset before accept) are skipped; running out of
/// descriptors waits briefly instead of spinning (the caps are meant to prevent it,
/// but other code of the process shares the limit).
pub async fn accept(listener: &TcpListener, gate: &Gate, handshake: Duration) -> Admitted {
    loop {
        let (io, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if out_of_descriptors(&e) => {
                tracing::error!(
                    port = gate.inner.port,
                    error = %e,
                    "accept: the process is out of file descriptors; raise LimitNOFILE \
                     or lower the [limits] connection caps"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => continue,
        };
        let Some(ticket) = gate.admit(remote.ip()) else {
            drop(io);
            continue;
        };
        // Small replies must not wait for the peer's delayed ACK (Nagle): ~40 ms
        // stalls on Raft writes without this.
        let _ = io.set_nodelay(true);
        return Admitted {
            io,
            remote,
            first_byte: Some(Box::pin(tokio::time::sleep(handshake))),
            _ticket: ticket,
        };
    }
}

/// [`accept`] and [`Conn::open`] as a stream, for tonic's `serve_with_incoming`.
/// Each handshake runs in a task of its own, so a slow client holds up no other.
pub fn incoming(
    listener: TcpListener,
    gate: Gate,
    handshake: Duration,
    tls: Option<Arc<ServerTls>>,
) -> impl futures::Stream<Item = io::Result<Conn>> + Send + 'static {
    // Unbounded, but the gate bounds what can be in it.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let port = gate.inner.port;
    tokio::spawn(async move {
        loop {
            let a = tokio::select! {
                a = accept(&listener, &gate, handshake) => a,
                () = tx.closed() => return,
            };
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                if let Some(c) = Conn::open(a, tls.as_deref(), handshake, port).await {
                    let _ = tx.send(Ok(c));
                }
            });
        }
    });
    tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
}

/// The soft descriptor limit raised to the hard one, as (before, after).
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        let before = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok((before, lim.rlim_cur))
    }
}

/// The connection caps of the REST and gRPC ports once they fit the descriptor
/// `limit` with `reserve` kept for everything else; scaled down together when the
/// configured ones do not fit. `rest` is None on a node without a REST port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fitted {
    pub grpc: Caps,
    pub rest: Option<Caps>,
    /// The configured caps did not fit and were lowered.
    pub lowered: bool,
}

pub fn fit_caps(limit: u64, reserve: usize, grpc: Caps, rest: Option<Caps>) -> Fitted {
    let wanted = grpc.total + rest.map_or(0, |r| r.total);
    let avail = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(reserve);
    if wanted <= avail {
        return Fitted {
            grpc,
            rest,
            lowered: false,
        };
    }
    // Scaled in proportion, at least a handful each so the node stays reachable.
    let scale = |c: Caps| {
        let total = (c.total * avail / wanted.max(1)).max(8);
        Caps {
            total,
            per_ip: c.per_ip.min(total),
        }
    };
    Fitted {
        grpc: scale(grpc),
        rest: rest.map(scale),
        lowered: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn caps(total: usize, per_ip: usize) -> Caps {
        Caps { total, per_ip }
    }

    #[test]
    fn caps_that_fit_are_kept() {
        let f = fit_caps(20_000, 512, caps(1024, 128), Some(caps(512, 128)));
        assert_eq!(
            f,
            Fitted {
                grpc: caps(1024, 128),
                rest: Some(caps(512, 128)),
                lowered: false
            }
        );
    }

    #[test]
    fn caps_that_do_not_fit_are_scaled_below_the_limit_minus_the_reserve() {
        let f = fit_caps(1024, 256, caps(1024, 128), Some(caps(512, 128)));
        assert!(f.lowered);
        assert_eq!(f.grpc, caps(512, 128));
        assert_eq!(f.rest, Some(caps(256, 128)));
        assert!(f.grpc.total + f.rest.unwrap().total <= 1024 - 256);
        let tiny = fit_caps(100, 256, caps(1024, 128), None);
        assert_eq!(tiny.grpc, caps(8, 8));
    }

    #[test]
    fn a_gate_counts_per_port_and_per_address_and_frees_on_drop() {
        let g = Gate::new("test", caps(3, 2));
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let t1 = g.admit(a).unwrap();
        let _t2 = g.admit(a).unwrap();
        assert!(g.admit(a).is_none(), "per-address cap");
        let _t3 = g.admit(b).unwrap();
        assert!(g.admit(b).is_none(), "port cap");
        assert_eq!((g.open(), g.refused()), (3, 2));
        drop(t1);
        assert!(g.admit(a).is_some(), "a dropped ticket frees its place");
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_handshake_timeout_and_its_place_freed() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let g = Gate::new("test", caps(4, 4));
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut c = accept(&l, &g, Duration::from_millis(200)).await;
        assert_eq!(g.open(), 1);
        let mut buf = [0u8; 8];
        let e = c.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(c);
        assert_eq!(g.open(), 0);
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_is_closed_at_once_and_the_next_one_admitted() {
        use tokio::io::AsyncWriteExt;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let g = Gate::new("test", caps(1, 1));
        let _first = TcpStream::connect(addr).await.unwrap();
        let held = accept(&l, &g, Duration::from_secs(60)).await;
        let mut refused = TcpStream::connect(addr).await.unwrap();
        let accepting = tokio::spawn({
            let g = g.clone();
            async move { accept(&l, &g, Duration::from_secs(60)).await }
        });
        // The refused one reads EOF (closed by the server), not a hang.
        let mut buf = [0u8; 1];
        let n = refused.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
        drop(held);
        let mut next = TcpStream::connect(addr).await.unwrap();
        next.write_all(b"x").await.unwrap();
        let mut c = accepting.await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"x");
        assert_eq!(g.refused(), 1);
    }
}
