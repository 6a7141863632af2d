//! The client side of mutual TLS 1.3 to the collector: the files, the rustls configuration
//! and a gRPC channel over it.
//!
//! rustls is built without TLS 1.2 support, and the configuration names TLS 1.3 explicitly.
//! The files are read on every call, so a renewed certificate takes effect at the next
//! connection.

use std::{io, path::PathBuf, sync::Arc, time::Duration};

use hyper_util::rt::TokioIo;
use rustls::{crypto::ring as provider, ClientConfig};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pem::{load_certs, load_key, load_roots, PemError};

/// ALPN protocol of gRPC.
pub const ALPN_H2: &[u8] = b"h2";

/// The three files of one side of mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) the peer's certificate must chain to (PEM).
    pub ca: PathBuf,
    /// Our certificate chain (PEM); its DNS name is our identity.
    pub cert: PathBuf,
    /// Our private key (PEM; PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// TLS set-up or connection failed, on either side (the agent's and subscribers' client, the
/// collector's server).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable (never its contents).
    #[error(transparent)]
    Pem(#[from] PemError),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built (server side).
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
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

/// The client configuration from the files as they are now: TLS 1.3 only, the server
/// verified against `files.ca`, our certificate presented, ALPN h2.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(load_roots(&files.ca)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Connects a gRPC channel to `addr` (`host:port`) over mutual TLS; `server_name` defaults
/// to the host part of `addr`. HTTP/2 keep-alives find a dead peer within a minute.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_the_port_and_ipv6_brackets() {
        assert_eq!(host_of("collector.example:7443"), "collector.example");
        assert_eq!(host_of("[::1]:7443"), "::1");
        assert_eq!(host_of("collector"), "collector");
    }
}
