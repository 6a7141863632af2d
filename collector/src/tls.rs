//! Mutual TLS for the collector: TLS 1.3 only, a client certificate required and verified
//! against the configured CA, the peer's identity taken from that certificate. The client
//! side (subscribers, `tail`) is [`phiguard_support::tls`], re-exported here.
//!
//! rustls is built without its `tls12` feature, so TLS 1.2 cannot even be offered; the
//! configurations below also name TLS 1.3 explicitly. Handshakes run outside the gRPC server
//! with a timeout, so a slow or hostile client cannot hold up anyone else's connection.
//!
//! Connections that have not finished their handshake are unauthenticated: anyone who can
//! reach the port can open them. They are bounded on their own ([`AcceptLimits::max_handshakes`])
//! and, when the bound is reached, the oldest one still in its handshake is closed to make
//! room: a flood of idle TCP connections only pushes out its own, while a real client's
//! handshake, done in milliseconds, finishes long before the flood could push it out. The
//! accept loop never waits: only authenticated connections count against
//! [`AcceptLimits::max_connections`], and one over it is closed after its handshake.

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use rustls::{crypto::ring as provider, server::WebPkiClientVerifier, ServerConfig};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, watch, Semaphore},
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

pub use phiguard_support::tls::{client_config, connect, host_of, TlsFiles};
use phiguard_support::{
    pem::{load_certs, load_key, load_roots},
    tls::ALPN_H2,
};

use crate::{
    crl::Crls,
    identity::{identity_from_cert, Peer},
    revocation::{Credential, Revocation},
};

pub use phiguard_support::tls::TlsError;

/// The server side: TLS 1.3 only, client certificates required and verified against
/// `files.ca` (and, given CRLs, not revoked by them: see [`crate::crl`]), ALPN h2.
pub fn server_config(files: &TlsFiles, crls: Option<&Crls>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(provider::default_provider());
    let roots = Arc::new(load_roots(&files.ca)?);
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if let Some(crls) = crls {
        // End-entity certificates only: the CA file's roots are trusted as they are; a
        // client whose issuer has no CRL in the file is refused (unknown status).
        builder = builder
            .with_crls(crls.ders.iter().cloned())
            .only_check_end_entity_revocation();
    }
    let verifier = builder.build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// An accepted, authenticated TLS connection.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    peer: Peer,
    /// The connection's slot under [`AcceptLimits::max_connections`], freed on drop.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Connected for TlsConn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Limits on connection set-up.
#[derive(Clone, Copy, Debug)]
pub struct AcceptLimits {
    /// A handshake not finished in this time is dropped.
    pub handshake_timeout: Duration,
    /// Most authenticated connections open at once (one more is closed after its handshake).
    pub max_connections: usize,
    /// Most connections in their TLS handshake at once; one more closes the oldest of them.
    pub max_handshakes: usize,
}

/// How often a summary of handshakes dropped for room is logged (at most).
const EVICTION_LOG_EVERY: Duration = Duration::from_secs(10);

/// The connections still in their handshake, oldest first.
struct Pending {
    max: usize,
    next_id: u64,
    /// Dropping an entry's sender ends that handshake.
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
    evicted: u64,
    logged: Option<Instant>,
}

impl Pending {
    fn new(max: usize) -> Pending {
        Pending {
            max: max.max(1),
            next_id: 0,
            queue: VecDeque::new(),
            evicted: 0,
            logged: None,
        }
    }

    /// Registers a new handshake, closing the oldest one if the set is full. The receiver
    /// completes when the handshake is closed to make room.
    fn admit(&mut self) -> (u64, oneshot::Receiver<()>) {
        while self.queue.len() >= self.max {
            self.queue.pop_front();
            self.evicted += 1;
        }
        if self.evicted > 0
            && self
                .logged
                .is_none_or(|t| t.elapsed() >= EVICTION_LOG_EVERY)
        {
            warn!(
                dropped = self.evicted,
                max_handshakes = self.max,
                "unfinished TLS handshakes closed to make room for new connections (a flood of idle connections?)"
            );
            self.evicted = 0;
            self.logged = Some(Instant::now());
        }
        let (tx, rx) = oneshot::channel();
        self.next_id += 1;
        self.queue.push_back((self.next_id, tx));
        (self.next_id, rx)
    }

    /// The handshake `id` is over (done, failed or timed out).
    fn done(&mut self, id: u64) {
        if let Some(at) = self.queue.iter().position(|(i, _)| *i == id) {
            self.queue.remove(at);
        }
    }
}

/// Accepts TCP connections on `listener`, runs each TLS handshake in its own task (with a
/// timeout), and yields the authenticated connections. Failures are logged with the peer's
/// address and reason and never reach the server.
///
/// Each handshake uses the configuration `config` holds at that moment (a reload takes effect
/// for the next connection).
pub fn incoming(
    listener: TcpListener,
    config: watch::Receiver<Arc<ServerConfig>>,
    revocation: Arc<Revocation>,
    limits: AcceptLimits,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let pending = Arc::new(Mutex::new(Pending::new(limits.max_handshakes)));
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config.borrow().clone());
            let tx = tx.clone();
            let revocation = revocation.clone();
            let slots = slots.clone();
            let pending = pending.clone();
            let (id, evicted) = lock(&pending).admit();
            tokio::spawn(async move {
                let shaken = tokio::select! {
                    shaken = handshake(acceptor, tcp, addr, limits.handshake_timeout) => shaken,
                    _ = evicted => {
                        debug!(peer = %addr, "unfinished TLS handshake closed to make room");
                        return;
                    }
                };
                lock(&pending).done(id);
                let mut conn = match shaken {
                    Ok(conn) => conn,
                    Err(reason) => {
                        warn!(peer = %addr, %reason, "TLS connection refused");
                        return;
                    }
                };
                let Ok(permit) = slots.try_acquire_owned() else {
                    warn!(peer = %addr, identity = %conn.peer.identity, max_connections = limits.max_connections, "TLS connection refused: max_connections are open");
                    return;
                };
                if let Some(entry) = revocation.current().denies(&conn.peer.credential) {
                    warn!(peer = %addr, identity = %conn.peer.identity, revoked = %entry, "TLS connection refused: certificate revoked");
                    return;
                }
                debug!(peer = %addr, identity = %conn.peer.identity, "TLS connection accepted");
                conn._slot = Some(permit);
                if tx.send(Ok(conn)).await.is_err() {
                    debug!("server stopped; dropping connection");
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TlsConn, String> {
    let stream = tokio::time::timeout(timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| format!("handshake not finished within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    let (_, session) = stream.get_ref();
    if session.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Err("not TLS 1.3".into());
    }
    let cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no client certificate")?;
    let identity = identity_from_cert(cert.as_ref()).map_err(|e| e.to_string())?;
    let credential = Credential::from_der(cert.as_ref())?;
    Ok(TlsConn {
        inner: stream,
        peer: Peer {
            identity: Arc::from(identity.as_str()),
            addr,
            credential,
        },
        _slot: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pending_set_closes_its_oldest_handshake() {
        let mut pending = Pending::new(2);
        let (a, mut a_closed) = pending.admit();
        let (_, mut b_closed) = pending.admit();
        pending.done(a);
        assert!(a_closed
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
        let (_, mut c_closed) = pending.admit();
        assert_eq!(pending.queue.len(), 2, "a was done: room for c");
        let (_, mut d_closed) = pending.admit();
        assert_eq!(
            b_closed.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "the oldest, b, closed for d"
        );
        assert_eq!(
            c_closed.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        assert_eq!(
            d_closed.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
    }
}
