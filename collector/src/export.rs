//! SIEM export (`[export.NAME]`): every stored record, as OCSF ([`crate::ocsf`]), to rotated
//! JSON-lines files or to syslog (RFC 5424 over TLS, octet-counted as RFC 5425 says).
//!
//! Each export reads the store, never the ingest path: it follows every chain from the
//! position it last delivered, so a slow or unreachable target never holds up an agent (the
//! store is the buffer), and nothing stored is skipped. Delivery is at-least-once: a chunk is
//! written and flushed (files: fsync'd; syslog: written to the TLS stream and flushed) before
//! the export's positions (per chain, the last index delivered) are written, fsync'd and
//! renamed into place. A collector stopped between the two sends that chunk again after its
//! restart; nothing is ever skipped. Each export runs in its own thread.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::metrics::gauge::Gauge;
use rustls::{pki_types::ServerName, ClientConnection, StreamOwned};
use tracing::{info, warn};

use crate::{
    metrics::Metrics,
    ocsf,
    store::{Cursor, Record, Store},
    tls::TlsFiles,
};

/// Records read from the store and sent per step.
const CHUNK: usize = 512;
/// Pause when every chain is delivered (or after a failure, doubled up to [`MAX_BACKOFF`]).
const IDLE: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The format of the exported records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OCSF JSON ([`crate::ocsf`]).
    Ocsf,
    /// ArcSight CEF ([`crate::cef`]).
    Cef,
}

impl Format {
    /// One record in this format (one line).
    pub fn line(self, record: &Record) -> String {
        match self {
            Format::Ocsf => ocsf::record(record).to_string(),
            Format::Cef => crate::cef::record(record),
        }
    }
}

/// One `[export.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportConfig {
    /// The NAME.
    pub name: String,
    /// The records' format.
    pub format: Format,
    /// Where the positions are kept.
    pub position: PathBuf,
    /// Where the records go.
    pub target: Target,
}

/// Where an export's records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// JSON lines, one OCSF event per line, rotated by size.
    File {
        /// The file written (`NAME.1`, `NAME.2`… are the rotated ones, `.1` the newest).
        path: PathBuf,
        /// Rotate once the file reaches this size.
        max_bytes: u64,
        /// Rotated files kept.
        keep: u32,
    },
    /// Syslog, RFC 5424 messages over TLS (RFC 5425).
    Syslog {
        /// `host:port`.
        address: String,
        /// Name checked in the server's certificate (default: the host of `address`).
        server_name: String,
        /// CA that signed the server's certificate, and the client certificate and key.
        tls: TlsFiles,
        /// APP-NAME of the messages.
        app_name: String,
    },
}

/// Why an export step failed (counted, logged, tried again).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Writing or syncing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Connecting to or writing to the syslog server.
    #[error("syslog {address}: {message}")]
    Syslog {
        /// `host:port`.
        address: String,
        /// What failed.
        message: String,
    },
    /// Reading the store.
    #[error("reading the store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The last index delivered per chain, kept in a JSON file written atomically.
#[derive(Debug, Default)]
pub struct Positions {
    path: PathBuf,
    delivered: BTreeMap<String, u64>,
}

impl Positions {
    /// Reads `path` (none yet: every chain from its start).
    pub fn load(path: &Path) -> Result<Positions, ExportError> {
        let io = |source| ExportError::Io {
            path: path.to_owned(),
            source,
        };
        let delivered = match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io(io::Error::new(io::ErrorKind::InvalidData, e)))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(e)),
        };
        Ok(Positions {
            path: path.to_owned(),
            delivered,
        })
    }

    /// The last index delivered of `agent`'s chain (0: none).
    pub fn get(&self, agent: &str) -> u64 {
        self.delivered.get(agent).copied().unwrap_or(0)
    }

    fn set_and_save(&mut self, agent: &str, index: u64) -> Result<(), ExportError> {
        self.delivered.insert(agent.to_owned(), index);
        let io = |source| ExportError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("tmp");
        let bytes = serde_json::to_vec(&self.delivered)
            .map_err(io::Error::other)
            .map_err(io)?;
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &self.path).map_err(io)?;
        sync_dir(&self.path).map_err(io)
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// An open target.
trait Sink {
    /// Delivers the lines (one record each, in the export's format) and flushes them.
    fn send(&mut self, lines: &[(Arc<Record>, String)]) -> Result<(), ExportError>;
}

struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<(File, u64)>,
}

impl FileSink {
    fn io(&self, source: io::Error) -> ExportError {
        ExportError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        let _ = fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            match fs::rename(numbered(n), numbered(n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            fs::rename(&self.path, numbered(1))?;
        }
        sync_dir(&self.path)
    }
}

impl Sink for FileSink {
    fn send(&mut self, lines: &[(Arc<Record>, String)]) -> Result<(), ExportError> {
        let mut at = 0;
        while at < lines.len() {
            if self.file.is_none() {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(|e| self.io(e))?;
                let len = f.metadata().map_err(|e| self.io(e))?.len();
                sync_dir(&self.path).map_err(|e| self.io(e))?;
                self.file = Some((f, len));
            }
            let Some((file, len)) = self.file.as_mut() else {
                continue;
            };
            let mut buf = Vec::new();
            let mut size = *len;
            while at < lines.len() && (size < self.max_bytes || buf.is_empty() && size == 0) {
                buf.extend_from_slice(lines[at].1.as_bytes());
                buf.push(b'\n');
                size += lines[at].1.len() as u64 + 1;
                at += 1;
            }
            let written = (|| {
                file.write_all(&buf)?;
                file.sync_data()
            })();
            match written {
                Ok(()) => *len = size,
                Err(e) => {
                    // No half line left behind (a full disk): the chunk is written whole
                    // again on the next try. Reopened then, its length read again.
                    let _ = file.set_len(*len);
                    self.file = None;
                    return Err(self.io(e));
                }
            }
            if size >= self.max_bytes {
                self.rotate().map_err(|e| self.io(e))?;
            }
        }
        Ok(())
    }
}

struct SyslogSink {
    address: String,
    server_name: String,
    tls: TlsFiles,
    app_name: String,
    hostname: String,
    stream: Option<StreamOwned<ClientConnection, TcpStream>>,
}

impl SyslogSink {
    fn err(&self, message: impl std::fmt::Display) -> ExportError {
        ExportError::Syslog {
            address: self.address.clone(),
            message: message.to_string(),
        }
    }

    fn connect(&self) -> Result<StreamOwned<ClientConnection, TcpStream>, ExportError> {
        let config = crate::tls::client_config(&self.tls).map_err(|e| self.err(e))?;
        let mut config = (*config).clone();
        config.alpn_protocols.clear();
        let name = ServerName::try_from(self.server_name.clone()).map_err(|e| self.err(e))?;
        let conn = ClientConnection::new(Arc::new(config), name).map_err(|e| self.err(e))?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&self.address)
            .map_err(|e| self.err(e))?
            .next()
            .ok_or_else(|| self.err("no address"))?;
        let tcp =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| self.err(e))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| self.err(e))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| self.err(e))?;
        let mut stream = StreamOwned::new(conn, tcp);
        // Finish the handshake now: a refused certificate is a failed connection, not a
        // silently lost first chunk.
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| self.err(format!("TLS handshake: {e}")))?;
        }
        Ok(stream)
    }
}

/// An RFC 5424 message for one OCSF event, octet-counted (RFC 5425: `LEN SP MSG`).
pub fn syslog_frame(hostname: &str, app_name: &str, record: &Record, ocsf: &str) -> Vec<u8> {
    let severity = match record.event.decision.as_ref().map(|d| d.verdict) {
        Some(v) if v == phiguard_proto::v1::Verdict::Deny as i32 => 4, // warning
        Some(v) if v == phiguard_proto::v1::Verdict::WouldDeny as i32 => 5, // notice
        _ => 6,                                                        // informational
    };
    // facility 13 (log audit).
    let pri = 13 * 8 + severity;
    let time = crate::tail::rfc3339(&crate::store::timestamp(
        UNIX_EPOCH + Duration::from_secs(u64::try_from(record.received).unwrap_or(0)),
    ));
    let time = record.event.time.map_or(time, |t| crate::tail::rfc3339(&t));
    let field = |s: &str| -> String {
        let s: String = s
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(48)
            .collect();
        if s.is_empty() {
            "-".into()
        } else {
            s
        }
    };
    let msg = format!(
        "<{pri}>1 {time} {} {} - {} [phiguard@32473 agent=\"{}\" index=\"{}\"] {ocsf}",
        field(hostname),
        field(app_name),
        field(crate::stream::kind_name(&record.event)),
        sd_escape(&record.agent),
        record.index
    );
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

/// Whether the server closed the connection. What it sent meanwhile (TLS 1.3 session
/// tickets, a close_notify) is read through the TLS state first.
fn closed_by_peer(stream: &mut StreamOwned<ClientConnection, TcpStream>) -> bool {
    if stream.sock.set_nonblocking(true).is_err() {
        return true;
    }
    let closed = loop {
        match stream.conn.read_tls(&mut stream.sock) {
            Ok(0) => break true,
            Ok(_) => match stream.conn.process_new_packets() {
                Ok(state) if state.peer_has_closed() => break true,
                Ok(_) => continue,
                Err(_) => break true,
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    stream.sock.set_nonblocking(false).is_err() || closed
}

/// RFC 5424 PARAM-VALUE escaping.
fn sd_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(']', "\\]")
}

impl Sink for SyslogSink {
    fn send(&mut self, lines: &[(Arc<Record>, String)]) -> Result<(), ExportError> {
        // A server that closed the connection (a stop, a restart) would swallow what is
        // written next without a word: TLS syslog has no acknowledgement. Look first.
        if self.stream.as_mut().is_some_and(closed_by_peer) {
            self.stream = None;
        }
        if self.stream.is_none() {
            self.stream = Some(self.connect()?);
        }
        let mut buf = Vec::new();
        for (record, line) in lines {
            buf.extend(syslog_frame(&self.hostname, &self.app_name, record, line));
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(self.err("not connected"));
        };
        let written = stream.write_all(&buf).and_then(|()| stream.flush());
        if let Err(e) = written {
            self.stream = None;
            return Err(self.err(e));
        }
        Ok(())
    }
}

/// A running export's lag gauges (shared with the metrics registry).
#[derive(Clone, Debug, Default)]
pub struct Lag {
    /// Stored records not yet delivered.
    pub events: Gauge,
    /// Seconds since the oldest undelivered record was received (0 when none).
    pub seconds: Gauge,
}

/// Starts every configured export in its own thread. `stop` ends them.
pub fn spawn_all(
    exports: &[ExportConfig],
    store: Arc<Store>,
    metrics: Metrics,
    stop: Arc<AtomicBool>,
) -> Result<Vec<std::thread::JoinHandle<()>>, ExportError> {
    let mut handles = Vec::new();
    for config in exports {
        let positions = Positions::load(&config.position)?;
        let sink: Box<dyn Sink + Send> = match &config.target {
            Target::File {
                path,
                max_bytes,
                keep,
            } => Box::new(FileSink {
                path: path.clone(),
                max_bytes: *max_bytes,
                keep: *keep,
                file: None,
            }),
            Target::Syslog {
                address,
                server_name,
                tls,
                app_name,
            } => Box::new(SyslogSink {
                address: address.clone(),
                server_name: server_name.clone(),
                tls: tls.clone(),
                app_name: app_name.clone(),
                hostname: hostname(),
                stream: None,
            }),
        };
        let lag = metrics.export_lag(&config.name);
        let failures = metrics.export_failures(&config.name);
        let delivered = metrics.export_delivered(&config.name);
        let (store, stop, name) = (store.clone(), stop.clone(), config.name.clone());
        let format = config.format;
        info!(export = %name, target = ?config.target, format = ?config.format, "export started (OCSF {})", ocsf::OCSF_VERSION);
        handles.push(
            std::thread::Builder::new()
                .name(format!("export-{name}"))
                .spawn(move || {
                    let mut run = Run {
                        name,
                        format,
                        cursors: BTreeMap::new(),
                        store,
                        positions,
                        sink,
                        lag,
                        failures,
                        delivered,
                    };
                    run.run(&stop);
                })
                .map_err(|source| ExportError::Io {
                    path: config.position.clone(),
                    source,
                })?,
        );
    }
    Ok(handles)
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Sleeps `time`, or less when `stop` turns true (a collector stopping does not wait for a
/// back-off).
fn nap(stop: &AtomicBool, time: Duration) {
    let until = std::time::Instant::now() + time;
    while !stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

struct Run {
    name: String,
    format: Format,
    /// Per chain, where the last delivered chunk ended (kept only once it was delivered).
    cursors: BTreeMap<Arc<str>, Cursor>,
    store: Arc<Store>,
    positions: Positions,
    sink: Box<dyn Sink + Send>,
    lag: Lag,
    failures: prometheus_client::metrics::counter::Counter,
    delivered: prometheus_client::metrics::counter::Counter,
}

impl Run {
    fn run(&mut self, stop: &AtomicBool) {
        let mut backoff = IDLE;
        while !stop.load(Ordering::SeqCst) {
            match self.step() {
                Ok(true) => backoff = IDLE,
                Ok(false) => {
                    backoff = IDLE;
                    nap(stop, IDLE);
                }
                Err(error) => {
                    self.failures.inc();
                    warn!(export = %self.name, %error, "export failed; trying again in {backoff:?} (nothing is skipped)");
                    nap(stop, backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Delivers one chunk of each chain that is behind. Ok(false): nothing to do.
    fn step(&mut self) -> Result<bool, ExportError> {
        let heads = self.store.heads();
        let behind: u64 = heads
            .iter()
            .map(|(agent, head)| head.index.saturating_sub(self.positions.get(agent)))
            .sum();
        self.lag
            .events
            .set(i64::try_from(behind).unwrap_or(i64::MAX));
        if behind == 0 {
            self.lag.seconds.set(0);
            return Ok(false);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut oldest = now;
        let mut any = false;
        for (agent, head) in heads {
            let from = self.positions.get(&agent);
            if head.index <= from {
                continue;
            }
            // The cursor of the last chunk, if it ends where this one starts: reading goes on
            // from its byte offset instead of scanning the segment from its start again.
            let mut cursor = match self.cursors.get(&agent) {
                Some(c) if c.next_index == from + 1 => c.clone(),
                _ => Cursor::new(agent.clone(), from + 1),
            };
            let chunk = self.store.read(&mut cursor, CHUNK)?;
            let Some(last) = chunk.last() else {
                continue;
            };
            oldest = oldest.min(chunk[0].received);
            self.lag.seconds.set((now - oldest).max(0));
            let last = last.index;
            let lines: Vec<_> = chunk
                .into_iter()
                .map(|r| {
                    let line = self.format.line(&r);
                    (r, line)
                })
                .collect();
            self.sink.send(&lines)?;
            self.delivered.inc_by(lines.len() as u64);
            self.positions.set_and_save(&agent, last)?;
            self.cursors.insert(agent, cursor);
            any = true;
        }
        Ok(any)
    }
}
