//! Connections as a server admits them, for the engine and the delivery node alike: at most
//! `connections_per_peer_max` from one peer (an IP address; IPv6 by its /64, which one
//! holder usually has whole) and `connections_max` in all, and a new connection must send
//! its first bytes (the HTTP/2 preface) within `preface_ms` or it is closed. A connection
//! past a cap is closed as soon as it is accepted, before hyper reads a byte of it, and
//! counted (`Refusal`); a peer's connections never take another peer's share.
//!
//! What is not here: anything about requests (the engine's front door and the node's
//! request guard bound those), TLS (tonic wraps these streams in it when configured).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long the accept loop pauses after an accept error (out of file descriptors, say),
/// so it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The connection limits of one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections one peer may hold open at once.
    pub connections_per_peer_max: usize,
    /// Connections open at once, over every peer.
    pub connections_max: usize,
    /// Longest wait for a new connection's first bytes, in ms.
    pub preface_ms: u64,
}

/// Which limit closed a connection, named as in the configuration and in /metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    ConnectionsPerPeerMax,
    ConnectionsMax,
    PrefaceMs,
}

impl Refusal {
    pub fn limit_name(self) -> &'static str {
        match self {
            Refusal::ConnectionsPerPeerMax => "connections_per_peer_max",
            Refusal::ConnectionsMax => "connections_max",
            Refusal::PrefaceMs => "preface_ms",
        }
    }
}

/// The peer a connection is counted against: its IP address, an IPv6 address by its /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer(IpAddr);

impl Peer {
    pub fn of(addr: &SocketAddr) -> Peer {
        match addr.ip() {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Peer(IpAddr::V6(prefix.into()))
            }
            IpAddr::V6(v6) => Peer(IpAddr::V4(v6.to_ipv4_mapped().expect("checked above"))),
            ip => Peer(ip),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The open connections, by peer. Shared by the accept loop and every admitted stream.
pub struct Admission {
    limits: ConnectionLimits,
    open: Mutex<(HashMap<Peer, usize>, usize)>,
    refused: Arc<dyn Fn(Refusal) + Send + Sync>,
}

impl Admission {
    /// `refused` is told of every connection a limit closed (for the metrics).
    pub fn new(limits: ConnectionLimits, refused: Arc<dyn Fn(Refusal) + Send + Sync>) -> Arc<Self> {
        Arc::new(Self { limits, open: Mutex::new((HashMap::new(), 0)), refused })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<Peer, usize>, usize)> {
        self.open.lock().expect("the admission lock is never poisoned")
    }

    /// Counts a connection from `peer` in, or says which limit it is over.
    fn enter(self: &Arc<Self>, peer: Peer) -> Result<Slot, Refusal> {
        let mut open = self.lock();
        let (by_peer, total) = &mut *open;
        if *total >= self.limits.connections_max {
            return Err(Refusal::ConnectionsMax);
        }
        let count = by_peer.entry(peer).or_insert(0);
        if *count >= self.limits.connections_per_peer_max {
            return Err(Refusal::ConnectionsPerPeerMax);
        }
        *count += 1;
        *total += 1;
        Ok(Slot { admission: Arc::clone(self), peer })
    }

    /// Connections open now: from `peer`, and in all.
    pub fn open(&self, peer: Peer) -> (usize, usize) {
        let open = self.lock();
        (open.0.get(&peer).copied().unwrap_or(0), open.1)
    }
}

/// One admitted connection's place in the counts, given back when it closes.
struct Slot {
    admission: Arc<Admission>,
    peer: Peer,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.admission.lock();
        let (by_peer, total) = &mut *open;
        *total -= 1;
        if let Some(count) = by_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                by_peer.remove(&self.peer);
            }
        }
    }
}

/// An admitted connection: the TCP stream, its place in the counts, and the deadline for
/// its first bytes (gone once a byte arrived).
pub struct PeerStream {
    stream: TcpStream,
    _slot: Slot,
    preface: Option<Pin<Box<tokio::time::Sleep>>>,
    refused: Arc<dyn Fn(Refusal) + Send + Sync>,
}

impl AsyncRead for PeerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.preface = None,
            Poll::Pending => {
                if let Some(deadline) = self.preface.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    self.preface = None;
                    (self.refused)(Refusal::PrefaceMs);
                    return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no HTTP/2 preface within preface_ms")));
                }
            }
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

use std::future::Future as _;

/// The connections `listener` accepts that the limits admit, with TCP_NODELAY set (a
/// response's last small write is not held for the client's delayed ACK).
pub fn incoming(listener: TcpListener, admission: Arc<Admission>) -> impl futures::Stream<Item = Result<PeerStream, std::io::Error>> + Send + 'static {
    futures::stream::unfold((listener, admission), |(listener, admission)| async move {
        loop {
            let (stream, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "accept failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let peer = Peer::of(&addr);
            match admission.enter(peer) {
                Ok(slot) => {
                    let _ = stream.set_nodelay(true);
                    let preface = Some(Box::pin(tokio::time::sleep(Duration::from_millis(admission.limits.preface_ms))));
                    let admitted = PeerStream { stream, _slot: slot, preface, refused: Arc::clone(&admission.refused) };
                    return Some((Ok(admitted), (listener, admission)));
                }
                Err(refusal) => {
                    (admission.refused)(refusal);
                    tracing::debug!(%peer, limit = refusal.limit_name(), "connection closed at accept: over a limit");
                    drop(stream);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_peer_is_its_64_and_a_mapped_ipv4_its_address() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:1".parse().expect("addr");
        let b: SocketAddr = "[2001:db8:1:2:bbbb::9]:2".parse().expect("addr");
        let c: SocketAddr = "[2001:db8:1:3::1]:3".parse().expect("addr");
        assert_eq!(Peer::of(&a), Peer::of(&b), "one /64");
        assert_ne!(Peer::of(&a), Peer::of(&c), "another /64");
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:4".parse().expect("addr");
        let plain: SocketAddr = "10.0.0.1:5".parse().expect("addr");
        assert_eq!(Peer::of(&mapped), Peer::of(&plain));
    }

    #[test]
    fn a_peer_past_its_cap_is_refused_and_a_closed_connection_frees_its_place() {
        let limits = ConnectionLimits { connections_per_peer_max: 2, connections_max: 3, preface_ms: 1000 };
        let admission = Admission::new(limits, Arc::new(|_| {}));
        let one = Peer::of(&"10.0.0.1:1".parse().expect("addr"));
        let two = Peer::of(&"10.0.0.2:1".parse().expect("addr"));
        let first = admission.enter(one).expect("first");
        let _second = admission.enter(one).expect("second");
        assert_eq!(admission.enter(one).err(), Some(Refusal::ConnectionsPerPeerMax));
        // Control: another peer still gets in, until the total is reached.
        let _third = admission.enter(two).expect("another peer");
        assert_eq!(admission.enter(two).err(), Some(Refusal::ConnectionsMax));
        drop(first);
        assert_eq!(admission.open(one), (1, 2));
        let _again = admission.enter(one).expect("a place came back");
    }
}
