//! The durable spool between the event pipeline and the collector link.
//!
//! Events are appended to segment files (`{first seq:020}.spool`) in `dir`; each record is
//! `len u32 LE | crc32 u32 LE | Event protobuf`. Writes are buffered and fsync'd in batches
//! (at most every `sync_interval`, and at every tick of the agent); the publisher only reads
//! what is fsync'd. A segment is deleted once the collector has acknowledged its last event;
//! the acknowledged seq is kept in `acked`, so the agent's sequence numbers continue across
//! restarts and nothing is resent needlessly.
//!
//! The spool is bounded in bytes. When it is full, events are dropped and counted — new ones
//! (`keep_oldest`) or the oldest unacknowledged segment (`keep_newest`) — and the agent emits
//! an `EventsLost` event (source `LOSS_SOURCE_SPOOL`) once there is room again. Appending
//! never waits for the network: the kernel reader is never blocked by the collector.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, BufReader, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use phiguard_proto::v1;
use prost::Message as _;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::sink::{Sink, SinkLoss};

/// Extension of spool segment files.
const SEGMENT_EXT: &str = "spool";
/// File holding the highest acknowledged seq.
const ACKED_FILE: &str = "acked";
/// File (in the spool directory) holding the spool's instance id: made once, when the spool
/// has none (a new spool, a deleted or reset one, a reinstall), and sent on every stream.
pub const INSTANCE_FILE: &str = "instance";

/// Reads the spool's instance id from `dir`, making (and durably writing: temporary file,
/// fsync, rename, fsync of the directory) a new random one when there is none or it is not
/// a UUID. The collector keeps one sequence space per instance: a new spool starts a new
/// stream instead of looking like resends of the old one.
fn instance_id(dir: &Path) -> Result<String, SpoolError> {
    let path = dir.join(INSTANCE_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => match uuid::Uuid::parse_str(text.trim()) {
            Ok(id) if !id.is_nil() => return Ok(id.hyphenated().to_string()),
            _ => warn!(file = %path.display(), "unreadable instance id; starting a new instance"),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(SpoolError::Io { path, source }),
    }
    let id = uuid::Uuid::now_v7().hyphenated().to_string();
    let tmp = dir.join("instance.tmp");
    let written = File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(format!("{id}\n").as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &path))
        .and_then(|()| File::open(dir)?.sync_all());
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(SpoolError::Io { path, source });
    }
    info!(instance = %id, "new spool instance");
    Ok(id)
}
/// Largest record accepted (one event).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Bytes buffered in memory before they are written out.
const WRITE_BUFFER: usize = 256 * 1024;
/// Record header: length and crc32.
const RECORD_HEADER: u64 = 8;

pub use crate::config::collector::{FullPolicy, SpoolConfig};

/// Bytes per segment file for `config`: an eighth of the spool, within 4 KiB and 16 MiB.
fn segment_bytes(config: &SpoolConfig) -> u64 {
    (config.max_bytes / 8).clamp(4096, 16 * 1024 * 1024)
}

/// The spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An event larger than a record may be.
    #[error("event seq {seq} is {bytes} bytes, more than the spool's {MAX_RECORD_BYTES}")]
    TooLarge {
        /// Its seq.
        seq: u64,
        /// Its size.
        bytes: usize,
    },
    /// Another process (another agent) holds the spool directory.
    #[error("spool directory {} is in use by another phiguard agent ({holder}): two agents cannot share one spool (give each its own `spool_dir`)", dir.display())]
    Locked {
        /// The spool directory.
        dir: PathBuf,
        /// Who holds it, as far as the lock file says.
        holder: String,
    },
    /// An event whose seq does not follow the spooled ones.
    #[error("event seq {seq} is not after the spool's last seq {last}")]
    OutOfOrder {
        /// Its seq.
        seq: u64,
        /// The spool's last seq.
        last: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What happened to one appended event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Spooled (not yet fsync'd).
    Spooled,
    /// The spool was full: the event was dropped (`keep_oldest`).
    Dropped,
    /// Spooled after dropping this many older events (`keep_newest`).
    ReplacedOldest(u64),
}

#[derive(Clone, Debug)]
struct Segment {
    first_seq: u64,
    last_seq: u64,
    path: PathBuf,
    /// Bytes written to the file (buffered bytes excluded).
    written: u64,
    /// Bytes fsync'd.
    synced: u64,
    /// Highest seq fsync'd.
    synced_seq: u64,
    events: u64,
}

struct Inner {
    config: SpoolConfig,
    segments: VecDeque<Segment>,
    /// The active (last) segment's file.
    file: Option<File>,
    buffer: Vec<u8>,
    /// Seq of the last event in `buffer` (0: empty).
    buffered_last: u64,
    buffered_events: u64,
    bytes: u64,
    last_seq: u64,
    acked: u64,
    last_sync: Instant,
    dropped_pending: u64,
    dropped_total: u64,
}

/// Counters of the spool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Bytes on disk (and buffered).
    pub bytes: u64,
    /// Highest seq spooled.
    pub last_seq: u64,
    /// Highest seq fsync'd.
    pub synced_seq: u64,
    /// Highest seq the collector acknowledged.
    pub acked: u64,
    /// Events dropped since start.
    pub dropped: u64,
    /// Segments on disk.
    pub segments: usize,
}

/// The spool, shared by the agent's sink (writer) and the publisher (reader, acks).
pub struct Spool {
    inner: Mutex<Inner>,
    /// Woken when newly fsync'd events are available.
    ready: Notify,
    /// The exclusive lock on the directory, held as long as the spool is open.
    _lock: nix::fcntl::Flock<File>,
    /// The spool's instance id ([`INSTANCE_FILE`]).
    instance: String,
}

/// File (in the spool directory) whose exclusive `flock` the open spool holds.
pub const LOCK_FILE: &str = "lock";

/// Takes the spool directory's lock (non-blocking) and writes our pid into the lock file.
/// The spool is the agent's sequence memory: two agents appending to one would number their
/// events over each other, and the collector would drop one's as resends.
fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<File>, SpoolError> {
    use std::io::Read as _;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let pid = format!("{}\n", std::process::id());
            lock.set_len(0)
                .and_then(|()| lock.seek(io::SeekFrom::Start(0)))
                .and_then(|_| lock.write_all(pid.as_bytes()))
                .map_err(io_err(&path))?;
            Ok(lock)
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "pid unknown".to_owned(),
                pid => format!("pid {pid}"),
            };
            Err(SpoolError::Locked {
                dir: dir.to_owned(),
                holder,
            })
        }
        Err((_, errno)) => Err(SpoolError::Io {
            path,
            source: io::Error::from(errno),
        }),
    }
}

/// Where a reader is in the spool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadCursor {
    /// Events with seq <= this were read.
    pub after: u64,
    position: Option<(u64, u64)>,
}

impl ReadCursor {
    /// A cursor at the first event after `seq`.
    pub fn after(seq: u64) -> ReadCursor {
        ReadCursor {
            after: seq,
            position: None,
        }
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.{SEGMENT_EXT}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(&format!(".{SEGMENT_EXT}"))?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

fn encode(event: &v1::Event, out: &mut Vec<u8>) -> Result<(), SpoolError> {
    let body = event.encode_to_vec();
    if body.len() > MAX_RECORD_BYTES {
        return Err(SpoolError::TooLarge {
            seq: event.seq,
            bytes: body.len(),
        });
    }
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Reads records from `reader` (at byte `offset`) up to `end`; stops at the first torn or
/// corrupt record, returning the events and the offset after the last good record.
fn read_records(
    reader: &mut impl io::Read,
    mut offset: u64,
    end: u64,
    mut keep: impl FnMut(v1::Event, u64) -> bool,
) -> (u64, Option<String>) {
    loop {
        if offset + RECORD_HEADER > end {
            let problem = (offset != end).then(|| format!("torn record header at {offset}"));
            return (offset, problem);
        }
        let mut header = [0u8; 8];
        if reader.read_exact(&mut header).is_err() {
            return (offset, Some(format!("unreadable record at {offset}")));
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_RECORD_BYTES || offset + RECORD_HEADER + len as u64 > end {
            return (offset, Some(format!("torn or corrupt record at {offset}")));
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() || crc32fast::hash(&body) != crc {
            return (offset, Some(format!("corrupt record at {offset}")));
        }
        let Ok(event) = v1::Event::decode(body.as_slice()) else {
            return (offset, Some(format!("undecodable record at {offset}")));
        };
        offset += RECORD_HEADER + len as u64;
        if !keep(event, offset) {
            return (offset, None);
        }
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn synced_seq(&self) -> u64 {
        self.segments
            .iter()
            .rev()
            .map(|s| s.synced_seq)
            .find(|&s| s > 0)
            .unwrap_or(self.acked)
            .max(self.acked)
    }

    /// Writes the buffer to the active file.
    fn write_out(&mut self) -> Result<(), SpoolError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let segment = self
            .segments
            .back_mut()
            .expect("buffered data has a segment");
        let file = self.file.as_mut().expect("buffered data has a file");
        file.write_all(&self.buffer)
            .map_err(io_err(&segment.path))?;
        segment.written += self.buffer.len() as u64;
        segment.last_seq = self.buffered_last;
        segment.events += self.buffered_events;
        self.buffer.clear();
        self.buffered_events = 0;
        Ok(())
    }

    /// Writes out and fsyncs the active segment.
    fn sync(&mut self) -> Result<bool, SpoolError> {
        self.write_out()?;
        self.last_sync = Instant::now();
        let Some(segment) = self.segments.back_mut() else {
            return Ok(false);
        };
        if segment.synced == segment.written {
            return Ok(false);
        }
        if let Some(file) = &self.file {
            file.sync_data().map_err(io_err(&segment.path))?;
        }
        segment.synced = segment.written;
        segment.synced_seq = segment.last_seq;
        Ok(true)
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<(), SpoolError> {
        self.sync()?;
        let path = self.config.dir.join(segment_name(first_seq));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        File::open(&self.config.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.config.dir))?;
        self.file = Some(file);
        self.segments.push_back(Segment {
            first_seq,
            last_seq: first_seq - 1,
            path,
            written: 0,
            synced: 0,
            synced_seq: 0,
            events: 0,
        });
        Ok(())
    }

    fn remove_front(&mut self) -> Result<Segment, SpoolError> {
        let segment = self.segments.pop_front().expect("a segment to remove");
        if self.segments.is_empty() {
            self.file = None;
            self.buffer.clear();
            self.buffered_events = 0;
        }
        match fs::remove_file(&segment.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SpoolError::Io {
                    path: segment.path.clone(),
                    source,
                })
            }
        }
        self.bytes = self
            .bytes
            .saturating_sub(segment.written.max(segment.synced));
        Ok(segment)
    }

    fn append(&mut self, event: &v1::Event) -> Result<Appended, SpoolError> {
        if event.seq <= self.last_seq {
            return Err(SpoolError::OutOfOrder {
                seq: event.seq,
                last: self.last_seq,
            });
        }
        let mut record = Vec::new();
        encode(event, &mut record)?;
        let size = record.len() as u64;
        let mut outcome = Appended::Spooled;
        while self.bytes + size > self.config.max_bytes {
            match self.config.full {
                FullPolicy::KeepOldest => {
                    self.last_seq = event.seq;
                    return Ok(Appended::Dropped);
                }
                FullPolicy::KeepNewest if self.segments.len() > 1 => {
                    let removed = self.remove_front()?;
                    let lost = removed.events;
                    outcome = Appended::ReplacedOldest(match outcome {
                        Appended::ReplacedOldest(n) => n + lost,
                        _ => lost,
                    });
                }
                FullPolicy::KeepNewest => {
                    // Only the active segment is left and it does not fit: drop the event.
                    self.last_seq = event.seq;
                    return Ok(Appended::Dropped);
                }
            }
        }
        let rotate = match self.segments.back() {
            // Segments from an earlier run are never appended to.
            _ if self.file.is_none() => true,
            None => true,
            Some(s) => {
                s.written + self.buffer.len() as u64 + size > segment_bytes(&self.config)
                    && s.written + self.buffer.len() as u64 > 0
            }
        };
        if rotate {
            self.start_segment(event.seq)?;
        }
        self.buffer.extend_from_slice(&record);
        self.buffered_last = event.seq;
        self.buffered_events += 1;
        self.bytes += size;
        self.last_seq = event.seq;
        if self.buffer.len() >= WRITE_BUFFER {
            self.write_out()?;
        }
        Ok(outcome)
    }
}

impl Spool {
    /// Opens (creating, mode 0700) the spool in `config.dir`: reads the acknowledged seq,
    /// deletes fully acknowledged segments, and scans the rest, cutting a torn last record
    /// left by a crash.
    pub fn open(config: SpoolConfig) -> Result<Arc<Spool>, SpoolError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)
            .map_err(io_err(&config.dir))?;
        let lock = lock_dir(&config.dir)?;
        let instance = instance_id(&config.dir)?;
        let acked_path = config.dir.join(ACKED_FILE);
        let acked = match fs::read_to_string(&acked_path) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or_else(|_| {
                warn!(file = %acked_path.display(), "unreadable acked seq; resending everything spooled");
                0
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(SpoolError::Io {
                    path: acked_path,
                    source,
                })
            }
        };
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(&config.dir).map_err(io_err(&config.dir))? {
            let entry = entry.map_err(io_err(&config.dir))?;
            if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
                names.push((first, entry.path()));
            }
        }
        names.sort();
        let mut segments = VecDeque::new();
        let mut bytes = 0;
        let mut last_seq = acked;
        for (first_seq, path) in names {
            let file = File::open(&path).map_err(io_err(&path))?;
            let len = file.metadata().map_err(io_err(&path))?.len();
            let mut reader = BufReader::new(file);
            let (mut seg_last, mut events) = (first_seq - 1, 0);
            let (good, problem) = read_records(&mut reader, 0, len, |event, _| {
                seg_last = seg_last.max(event.seq);
                events += 1;
                true
            });
            if let Some(problem) = problem {
                warn!(segment = %path.display(), %problem, "cutting the spool segment after its last good record");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(good).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            if seg_last <= acked || events == 0 {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            last_seq = last_seq.max(seg_last);
            bytes += good;
            segments.push_back(Segment {
                first_seq,
                last_seq: seg_last,
                path,
                written: good,
                synced: good,
                synced_seq: seg_last,
                events,
            });
        }
        // Appends go to a fresh segment.
        let spooled: u64 = segments.iter().map(|s| s.events).sum();
        if spooled > 0 {
            info!(
                events = spooled,
                bytes, acked, "spool holds unacknowledged events from an earlier run"
            );
        }
        Ok(Arc::new(Spool {
            inner: Mutex::new(Inner {
                config,
                segments,
                file: None,
                buffer: Vec::new(),
                buffered_last: 0,
                buffered_events: 0,
                bytes,
                last_seq,
                acked,
                last_sync: Instant::now(),
                dropped_pending: 0,
                dropped_total: 0,
            }),
            ready: Notify::new(),
            _lock: lock,
            instance,
        }))
    }

    /// The spool's instance id: sent on every stream to the collector, which counts seqs
    /// per instance.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// Appends one event (buffered; see [`Spool::flush`]). Never waits for the network.
    pub fn append(&self, event: &v1::Event) -> Result<Appended, SpoolError> {
        let mut inner = lock(&self.inner);
        let result = inner.append(event);
        match &result {
            Ok(Appended::Dropped) | Err(_) => {
                if inner.dropped_pending == 0 {
                    warn!(seq = event.seq, "spool full or failing: dropping events (counted, reported when there is room)");
                }
                inner.dropped_pending += 1;
                inner.dropped_total += 1;
                if result.is_err() {
                    inner.last_seq = inner.last_seq.max(event.seq);
                }
            }
            Ok(Appended::ReplacedOldest(n)) => {
                warn!(
                    dropped = n,
                    "spool full: dropped the oldest unacknowledged events"
                );
                inner.dropped_pending += n;
                inner.dropped_total += n;
            }
            Ok(Appended::Spooled) => {}
        }
        result
    }

    /// Writes buffered events out, and fsyncs them if `sync_interval` has passed (or
    /// `force`). Wakes the publisher when new events are durable.
    pub fn flush(&self, force: bool) -> Result<(), SpoolError> {
        let mut inner = lock(&self.inner);
        let due = force || inner.last_sync.elapsed() >= inner.config.sync_interval;
        let synced = if due {
            inner.sync()?
        } else {
            inner.write_out()?;
            false
        };
        drop(inner);
        if synced {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// When the events spooled but not yet fsync'd are due to be fsync'd (`sync_interval`
    /// after the last fsync), if there are any: the agent flushes then even if no other event
    /// comes, so the last events of a burst do not wait for its next tick.
    pub fn sync_due(&self) -> Option<Instant> {
        let inner = lock(&self.inner);
        let unsynced = !inner.buffer.is_empty()
            || inner
                .segments
                .back()
                .is_some_and(|segment| segment.synced < segment.written);
        unsynced.then(|| inner.last_sync + inner.config.sync_interval)
    }

    /// Waits until new durable events may be available.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// The highest seq spooled or acknowledged (the agent continues after it).
    pub fn last_seq(&self) -> u64 {
        lock(&self.inner).last_seq
    }

    /// Counters.
    pub fn stats(&self) -> SpoolStats {
        let inner = lock(&self.inner);
        SpoolStats {
            bytes: inner.bytes,
            last_seq: inner.last_seq,
            synced_seq: inner.synced_seq(),
            acked: inner.acked,
            dropped: inner.dropped_total,
            segments: inner.segments.len(),
        }
    }

    /// Drops counted since the last report, once there is room again (at least one eighth
    /// of the spool free).
    pub fn take_losses(&self) -> Option<(u64, u64)> {
        let mut inner = lock(&self.inner);
        let room = inner.bytes + inner.config.max_bytes / 8 <= inner.config.max_bytes;
        if inner.dropped_pending == 0 || !room {
            return None;
        }
        let count = std::mem::take(&mut inner.dropped_pending);
        Some((count, inner.dropped_total))
    }

    /// Records that the collector holds every event up to `seq`: deletes the segments it
    /// covers and remembers `seq`.
    pub fn ack(&self, seq: u64) -> Result<(), SpoolError> {
        let mut inner = lock(&self.inner);
        if seq <= inner.acked {
            return Ok(());
        }
        // Never beyond what was spooled (a collector holding more means the spool was lost).
        let seq = seq.min(inner.last_seq);
        inner.acked = seq;
        let path = inner.config.dir.join(ACKED_FILE);
        let tmp = inner.config.dir.join("acked.tmp");
        fs::write(&tmp, format!("{seq}\n"))
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(io_err(&path))?;
        while let Some(front) = inner.segments.front() {
            let fully_acked =
                front.last_seq <= seq && (inner.segments.len() > 1 || inner.buffer.is_empty());
            if !fully_acked {
                break;
            }
            inner.remove_front()?;
        }
        Ok(())
    }

    /// Reads up to `max_events` durable events (at most about `max_bytes`) after `cursor`,
    /// advancing it. Events dropped meanwhile by `keep_newest` are skipped.
    pub fn read(
        &self,
        cursor: &mut ReadCursor,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<v1::Event>, SpoolError> {
        let segments: Vec<Segment> = {
            let inner = lock(&self.inner);
            inner
                .segments
                .iter()
                .filter(|s| s.synced_seq > cursor.after)
                .cloned()
                .collect()
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for segment in segments {
            if out.len() >= max_events || bytes >= max_bytes {
                break;
            }
            let offset = match cursor.position {
                Some((first, offset)) if first == segment.first_seq => offset,
                _ => 0,
            };
            let mut file = match File::open(&segment.path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(SpoolError::Io {
                        path: segment.path,
                        source,
                    })
                }
            };
            file.seek(SeekFrom::Start(offset))
                .map_err(io_err(&segment.path))?;
            let mut reader = BufReader::new(file);
            let after = cursor.after;
            let mut last = after;
            let mut position = offset;
            read_records(&mut reader, offset, segment.synced, |event, next| {
                position = next;
                if event.seq > after {
                    last = event.seq;
                    bytes += event.encoded_len();
                    out.push(event);
                }
                out.len() < max_events && bytes < max_bytes
            });
            cursor.after = last;
            cursor.position = Some((segment.first_seq, position));
        }
        Ok(out)
    }
}

/// The agent-side sink that spools every event.
pub struct SpoolSink(pub Arc<Spool>);

impl Sink for SpoolSink {
    fn write(&mut self, event: &v1::Event) -> io::Result<()> {
        // Drops and failures are counted by the spool and reported as EventsLost; they
        // must not stop the pipeline.
        let _ = self.0.append(event);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush(false).map_err(io::Error::other)
    }

    fn flush_due(&self) -> Option<Instant> {
        self.0.sync_due()
    }

    fn take_losses(&mut self) -> Option<SinkLoss> {
        self.0.take_losses().map(|(count, total)| SinkLoss {
            source: v1::LossSource::Spool,
            count,
            total,
        })
    }

    fn resume_seq(&self) -> Option<u64> {
        Some(self.0.last_seq())
    }
}

impl Drop for SpoolSink {
    fn drop(&mut self) {
        if let Err(error) = self.0.flush(true) {
            warn!(%error, "final spool flush failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn event(seq: u64, pad: usize) -> v1::Event {
        v1::Event {
            id: "x".repeat(pad),
            seq,
            ..Default::default()
        }
    }

    fn config(dir: &Path, max_bytes: u64, full: FullPolicy) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_owned(),
            max_bytes,
            full,
            sync_interval: Duration::from_millis(0),
        }
    }

    fn read_all(spool: &Spool, after: u64) -> Vec<u64> {
        let mut cursor = ReadCursor::after(after);
        let mut seqs = Vec::new();
        loop {
            let chunk = spool.read(&mut cursor, 7, 1 << 20).unwrap();
            if chunk.is_empty() {
                return seqs;
            }
            seqs.extend(chunk.iter().map(|e| e.seq));
        }
    }

    #[test]
    fn two_agents_cannot_share_one_spool_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(config(dir.path(), 1 << 20, FullPolicy::KeepOldest)).unwrap();
        let error = Spool::open(config(dir.path(), 1 << 20, FullPolicy::KeepOldest))
            .err()
            .expect("the second open is refused");
        let text = error.to_string();
        assert!(matches!(error, SpoolError::Locked { .. }), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        Spool::open(config(dir.path(), 1 << 20, FullPolicy::KeepOldest))
            .expect("free again once the first agent is gone");
        // Another process holding the lock (flock(1), as a second agent would).
        let mut holder = std::process::Command::new("flock")
            .arg(dir.path().join(LOCK_FILE))
            .args(["sleep", "30"])
            .spawn()
            .expect("flock(1)");
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let refused = loop {
            match Spool::open(config(dir.path(), 1 << 20, FullPolicy::KeepOldest)) {
                Err(e @ SpoolError::Locked { .. }) => break e,
                Ok(spool) => drop(spool),
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "flock(1) never took the lock");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let _ = holder.kill();
        let _ = holder.wait();
        assert!(
            refused
                .to_string()
                .contains(&dir.path().display().to_string()),
            "{refused}"
        );
    }

    #[test]
    fn only_durable_events_are_read_and_acks_delete_segments() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(config(dir.path(), 1 << 20, FullPolicy::KeepOldest)).unwrap();
        for seq in 1..=10 {
            assert_eq!(spool.append(&event(seq, 10)).unwrap(), Appended::Spooled);
        }
        assert!(read_all(&spool, 0).is_empty(), "nothing fsync'd yet");
        spool.flush(true).unwrap();
        assert_eq!(read_all(&spool, 0), (1..=10).collect::<Vec<_>>());
        assert_eq!(read_all(&spool, 4), (5..=10).collect::<Vec<_>>());
        spool.ack(10).unwrap();
        assert_eq!(spool.stats().segments, 0);
        assert!(matches!(
            spool.append(&event(10, 1)),
            Err(SpoolError::OutOfOrder { .. })
        ));
        drop(spool);
        let spool = Spool::open(config(dir.path(), 1 << 20, FullPolicy::KeepOldest)).unwrap();
        assert_eq!(spool.last_seq(), 10, "the acked seq survives a restart");
    }

    #[test]
    fn a_spool_keeps_its_instance_and_a_new_spool_makes_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let settings = config(dir.path(), 1 << 20, FullPolicy::KeepOldest);
        let first = Spool::open(settings.clone())
            .unwrap()
            .instance_id()
            .to_owned();
        assert!(uuid::Uuid::parse_str(&first).is_ok(), "{first}");
        let on_disk = fs::read_to_string(dir.path().join(INSTANCE_FILE)).unwrap();
        assert_eq!(on_disk.trim(), first);
        assert!(!dir.path().join("instance.tmp").exists());
        assert_eq!(
            Spool::open(settings).unwrap().instance_id(),
            first,
            "reopened"
        );
        let other = tempfile::tempdir().unwrap();
        let second = Spool::open(config(other.path(), 1 << 20, FullPolicy::KeepOldest)).unwrap();
        assert_ne!(second.instance_id(), first, "a new spool, a new instance");
        // An unreadable instance file is replaced by a new instance.
        drop(second);
        fs::write(other.path().join(INSTANCE_FILE), "garbage").unwrap();
        let third = Spool::open(config(other.path(), 1 << 20, FullPolicy::KeepOldest)).unwrap();
        assert!(uuid::Uuid::parse_str(third.instance_id()).is_ok());
    }

    #[test]
    fn unsynced_events_are_due_one_interval_after_the_last_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = config(dir.path(), 1 << 20, FullPolicy::KeepOldest);
        settings.sync_interval = Duration::from_secs(3600);
        let spool = Spool::open(settings).unwrap();
        assert_eq!(spool.sync_due(), None, "nothing to fsync");
        let before = Instant::now();
        spool.append(&event(1, 10)).unwrap();
        let after = Instant::now();
        let due = spool.sync_due().expect("a buffered event is due");
        let hour = Duration::from_secs(3600);
        assert!(due >= before + hour && due <= after + hour);
        spool.flush(false).unwrap();
        assert!(
            read_all(&spool, 0).is_empty(),
            "written out, not yet fsync'd"
        );
        assert_eq!(
            spool.sync_due(),
            Some(due),
            "written but not fsync'd is still due"
        );
        spool.flush(true).unwrap();
        assert_eq!(spool.sync_due(), None);
        assert_eq!(read_all(&spool, 0), vec![1]);
    }

    #[test]
    fn restart_keeps_unacked_events_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(config(dir.path(), 1 << 20, FullPolicy::KeepOldest)).unwrap();
        for seq in 1..=5 {
            spool.append(&event(seq, 10)).unwrap();
        }
        spool.flush(true).unwrap();
        spool.ack(2).unwrap();
        drop(spool);
        // A crash mid-write: half a record at the end.
        let seg = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "spool"))
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2]).unwrap();
        let spool = Spool::open(config(dir.path(), 1 << 20, FullPolicy::KeepOldest)).unwrap();
        assert_eq!(read_all(&spool, 2), [3, 4, 5]);
        assert_eq!(spool.last_seq(), 5);
        spool.append(&event(6, 10)).unwrap();
        spool.flush(true).unwrap();
        assert_eq!(read_all(&spool, 2), [3, 4, 5, 6]);
    }

    #[test]
    fn full_spool_drops_new_or_old_and_reports_when_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        // Records are 8 + ~1010 bytes; 8 KiB holds about 8.
        let spool = Spool::open(config(dir.path(), 8192, FullPolicy::KeepOldest)).unwrap();
        let mut dropped = 0;
        for seq in 1..=20 {
            if spool.append(&event(seq, 1000)).unwrap() == Appended::Dropped {
                dropped += 1;
            }
        }
        spool.flush(true).unwrap();
        assert!(dropped >= 10, "{dropped}");
        let kept = read_all(&spool, 0);
        assert_eq!(
            kept,
            (1..=kept.len() as u64).collect::<Vec<_>>(),
            "oldest kept"
        );
        assert_eq!(spool.take_losses(), None, "no room yet");
        spool.ack(kept[kept.len() - 1]).unwrap();
        assert_eq!(spool.take_losses(), Some((dropped, dropped)));
        assert_eq!(spool.take_losses(), None);

        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(config(dir.path(), 8192, FullPolicy::KeepNewest)).unwrap();
        for seq in 1..=20 {
            assert_ne!(spool.append(&event(seq, 1000)).unwrap(), Appended::Dropped);
            spool.flush(true).unwrap();
        }
        let kept = read_all(&spool, 0);
        assert_eq!(*kept.last().unwrap(), 20, "newest kept");
        assert!(kept[0] > 1);
        assert!(spool.stats().bytes <= 8192);
    }
}
