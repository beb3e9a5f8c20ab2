//! The console's TLS listener for `axum::serve`. Handshakes run off the
//! accept path, each in its own task with a deadline and under a bound on
//! how many run at once, so a client that connects and then says nothing
//! holds up no one else; a connection whose handshake fails or runs out of
//! time is dropped (and logged at debug) without ever reaching the pages.
//! Connections are bounded in number, and one that neither reads nor
//! writes for [`IDLE_TIMEOUT`] is closed ([`Guarded`]): `axum::serve` sets
//! no timeouts of its own.

use axum::serve::Listener;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; past it, new connections wait in the
/// kernel's backlog until one finishes or times out.
const MAX_HANDSHAKES: usize = 64;
/// Handshakes in progress at once from one address group (an IPv4 address,
/// an IPv6 /64); a connection past it is closed at once, so one client
/// cannot fill [`MAX_HANDSHAKES`].
const MAX_HANDSHAKES_PER_ADDRESS: usize = 8;
/// Connections open at once, handshaking or served; past it, new ones wait
/// in the kernel's backlog.
const MAX_CONNECTIONS: usize = 512;
/// A connection that neither reads nor writes this long is closed (a live
/// view writes every second).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// TLS connections, handshaken, for `axum::serve`.
pub(crate) struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(Guarded<TlsStream<TcpStream>>, SocketAddr)>,
    accepting: JoinHandle<()>,
}

/// A served connection: counted among [`MAX_CONNECTIONS`] while open, and
/// closed after [`IDLE_TIMEOUT`] without a byte either way.
pub(crate) struct Guarded<T> {
    io: T,
    idle: Pin<Box<Sleep>>,
    _room: OwnedSemaphorePermit,
}

impl<T> Guarded<T> {
    fn new(io: T, room: OwnedSemaphorePermit) -> Guarded<T> {
        Guarded {
            io,
            idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
            _room: room,
        }
    }

    fn active(&mut self) {
        self.idle.as_mut().reset(Instant::now() + IDLE_TIMEOUT);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(done) => {
                self.active();
                Poll::Ready(done)
            }
            Poll::Pending if self.idle.as_mut().poll(cx).is_ready() => Poll::Ready(Err(
                io::Error::new(io::ErrorKind::TimedOut, "console connection idle"),
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if written.is_ready() {
            self.active();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Handshakes in progress per address group.
#[derive(Clone, Default)]
struct Handshaking(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One handshake counted for its address group while alive.
struct HandshakeSlot {
    all: Handshaking,
    group: IpAddr,
}

impl Handshaking {
    fn admit(&self, peer: IpAddr) -> Option<HandshakeSlot> {
        let group = flowd_fnap::session::address_group(peer);
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(group).or_insert(0);
        if *count >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(HandshakeSlot {
            all: self.clone(),
            group,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut counts = self.all.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.group) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.group);
            }
        }
    }
}

impl TlsListener {
    /// Accepts on `listener` and handshakes with `config`.
    pub(crate) fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (done, ready) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor = TlsAcceptor::from(config);
        let room = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let handshaking = Handshaking::default();
        let accepting = tokio::spawn(async move {
            loop {
                let Ok(connection) = connections.clone().acquire_owned().await else {
                    return;
                };
                let Ok(permit) = room.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(connection) => connection,
                    Err(e) => {
                        // Out of descriptors, or a connection reset while
                        // queued: wait a little rather than spin.
                        tracing::debug!("console accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(slot) = handshaking.admit(peer.ip()) else {
                    tracing::debug!(%peer, "console: too many handshakes from that address");
                    continue; // dropped: the connection is closed
                };
                let acceptor = acceptor.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = done.send((Guarded::new(tls, connection), peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "console TLS handshake: {e}"),
                        Err(_) => tracing::debug!(%peer, "console TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            ready,
            accepting,
        })
    }
}

impl Listener for TlsListener {
    type Io = Guarded<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task is gone: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}
