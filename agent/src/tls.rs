//! Mutual TLS 1.3 to the collector: the agent's certificate and key, the CA the collector's
//! certificate must chain to, and a gRPC channel over them.
//!
//! rustls is built without TLS 1.2 support, and the configuration names TLS 1.3 explicitly.
//! The files are read again on every connection, and [`FilesStamp`] tells the publisher when
//! they change, so renewed certificates take effect without a restart.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{crypto::ring as provider, ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// The agent's TLS files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) the collector's certificate must chain to (PEM).
    pub ca: PathBuf,
    /// The agent's certificate (PEM); its DNS name is the agent's identity.
    pub cert: PathBuf,
    /// The agent's private key (PEM).
    pub key: PathBuf,
}

/// TLS set-up or connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable (never its contents).
    #[error("{}: {message}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Not a usable server name.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// The connection failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
}

fn pem_err(path: &Path, message: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    warn_if_readable_by_others(path);
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::Io(io) => pem_err(path, io),
        _ => pem_err(path, "no usable private key in the file"),
    })
}

/// Builds the client configuration from the files as they are now: TLS 1.3 only, the
/// collector verified against the CA, the agent's certificate presented, ALPN h2.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(&files.ca)? {
        roots
            .add(cert)
            .map_err(|e| pem_err(&files.ca, format!("unusable CA certificate: {e}")))?;
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Connects a gRPC channel to `addr` (`host:port`) over mutual TLS; `server_name` defaults
/// to the host part of `addr`.
pub async fn connect(
    addr: &str,
    server_name: Option<&str>,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Channel, TlsError> {
    let host = server_name.unwrap_or_else(|| host_of(addr)).to_owned();
    let name = ServerName::try_from(host.clone()).map_err(|_| TlsError::ServerName(host))?;
    let connector = TlsConnector::from(config);
    let target = addr.to_owned();
    let connect_err = |source| TlsError::Connect {
        addr: addr.to_owned(),
        source,
    };
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(connect_err)?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let (connector, name, target) = (connector.clone(), name.clone(), target.clone());
            async move {
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(connect_err)
}

/// What the TLS files look like on disk (size, mtime, inode): a change means reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilesStamp(Vec<Option<(u64, i64, i64, u64)>>);

impl FilesStamp {
    /// Stamps the files now.
    pub fn of(files: &TlsFiles) -> FilesStamp {
        FilesStamp(
            [&files.ca, &files.cert, &files.key]
                .iter()
                .map(|p| {
                    fs::metadata(p)
                        .ok()
                        .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
                })
                .collect(),
        )
    }
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
