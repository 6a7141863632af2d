//! The Prometheus endpoint both the agent and the collector serve: `GET /metrics` on a
//! loopback address, one bounded request per connection, the exposition rendered at each
//! scrape.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, info};

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address is not a loopback address.
    #[error("metrics.listen: {0} is not a loopback address; the endpoint only listens on loopback (127.0.0.1 or ::1)")]
    NotLoopback(SocketAddr),
    /// The socket could not be bound.
    #[error("binding the metrics endpoint to {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The longest request head read (bytes), and how long it may take to arrive.
const MAX_REQUEST_HEAD: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` (loopback only) and serves `GET /metrics` with what `render` gives at each
/// scrape, until the runtime stops. Must be called inside a tokio runtime. Returns the bound
/// address (port 0 picks one).
pub fn serve(
    addr: SocketAddr,
    render: impl Fn() -> String + Send + Sync + 'static,
) -> Result<SocketAddr, MetricsError> {
    if !addr.ip().is_loopback() {
        return Err(MetricsError::NotLoopback(addr));
    }
    let bind = || {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?;
        Ok((TcpListener::from_std(listener)?, bound))
    };
    let (listener, bound) =
        bind().map_err(|source: std::io::Error| MetricsError::Bind { addr, source })?;
    info!(listen = %bound, "metrics endpoint: http://{bound}/metrics");
    let render = Arc::new(render);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let render = Arc::clone(&render);
                    tokio::spawn(async move {
                        if let Err(error) = answer(stream, &*render).await {
                            debug!(%error, "metrics request failed");
                        }
                    });
                }
                Err(error) => debug!(%error, "metrics accept failed"),
            }
        }
    });
    Ok(bound)
}

/// Answers one HTTP/1.x request and closes the connection.
async fn answer(
    mut stream: TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (words.next(), words.next());
    let (status, content_type, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(),
        ),
        (Some(b"GET"), _) => (
            "404 Not Found",
            "text/plain",
            "only /metrics is served\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn serves_metrics_renders_at_each_scrape_and_refuses_the_rest() {
        let scrapes = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = Arc::clone(&scrapes);
        let addr = serve("127.0.0.1:0".parse().unwrap(), move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            format!("scrapes {n}\n")
        })
        .unwrap();
        let first = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
        assert!(first.ends_with("scrapes 1\n"), "{first}");
        let second = get(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(second.ends_with("scrapes 2\n"), "{second}");
        assert!(get(addr, "GET /other HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405"));
    }

    #[tokio::test]
    async fn only_loopback() {
        assert!(matches!(
            serve("0.0.0.0:0".parse().unwrap(), String::new),
            Err(MetricsError::NotLoopback(_))
        ));
    }
}
