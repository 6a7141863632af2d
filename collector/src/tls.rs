//! Mutual TLS for the collector: TLS 1.3 only, a client certificate required and verified
//! against the configured CA, the peer's identity taken from that certificate.
//!
//! rustls is built without its `tls12` feature, so TLS 1.2 cannot even be offered; the
//! configurations below also name TLS 1.3 explicitly. Handshakes run outside the gRPC server
//! with a timeout, so a slow or hostile client cannot hold up anyone else's connection.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{
    crypto::ring as provider, server::WebPkiClientVerifier, ClientConfig, RootCertStore,
    ServerConfig,
};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, Semaphore},
};
use tokio_rustls::{server::TlsStream, TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{server::Connected, Channel, Endpoint};
use tracing::{debug, warn};

use crate::identity::{identity_from_cert, Peer};

/// ALPN protocol of gRPC.
const ALPN_H2: &[u8] = b"h2";

/// TLS configuration that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{}: {message}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's contents).
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Not a usable server name.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// The connection could not be set up.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
}

/// The three files of one side of mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) the peer's certificate must chain to (PEM).
    pub ca: PathBuf,
    /// Our certificate chain (PEM).
    pub cert: PathBuf,
    /// Our private key (PEM; PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

fn pem_err(path: &Path, message: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Reads every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// Reads a private key from a PEM file. Errors never include key material.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    warn_if_readable_by_others(path);
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::Io(io) => pem_err(path, io),
        _ => pem_err(path, "no usable private key in the file"),
    })
}

/// A root store holding the CA file's certificates.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| pem_err(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The server side: TLS 1.3 only, client certificates required and verified against
/// `files.ca`, ALPN h2.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(provider::default_provider());
    let roots = Arc::new(load_roots(&files.ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The client side: TLS 1.3 only, the server verified against `files.ca`, our certificate
/// presented, ALPN h2.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(provider::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(load_roots(&files.ca)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
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
    /// Most connections open at once (more wait in the kernel's backlog).
    pub max_connections: usize,
}

/// Accepts TCP connections on `listener`, runs each TLS handshake in its own task (with a
/// timeout), and yields the authenticated connections. Failures are logged with the peer's
/// address and reason and never reach the server.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: AcceptLimits,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut conn = match handshake(acceptor, tcp, addr, limits.handshake_timeout).await
                {
                    Ok(conn) => conn,
                    Err(reason) => {
                        warn!(peer = %addr, %reason, "TLS connection refused");
                        return;
                    }
                };
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
    Ok(TlsConn {
        inner: stream,
        peer: Peer {
            identity: Arc::from(identity.as_str()),
            addr,
        },
        _slot: None,
    })
}

/// Connects a gRPC channel to `addr` (`host:port`) over mutual TLS 1.3. `server_name`
/// defaults to the host part of `addr`.
pub async fn connect(
    addr: &str,
    server_name: Option<&str>,
    config: Arc<ClientConfig>,
) -> Result<Channel, TlsError> {
    let host = server_name
        .map(str::to_owned)
        .unwrap_or_else(|| host_of(addr).to_owned());
    let name = ServerName::try_from(host.clone()).map_err(|_| TlsError::ServerName(host))?;
    let target = addr.to_owned();
    let connector = TlsConnector::from(config);
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|source| TlsError::Connect {
            addr: addr.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            let name = name.clone();
            let target = target.clone();
            async move {
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|source| TlsError::Connect {
            addr: addr.to_owned(),
            source,
        })
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Private keys should be readable by their owner only; say so (once per load) when not.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(key = %path.display(), mode = format!("{mode:o}"), "private key is readable by group or others; chmod 600 it");
        }
    }
}
