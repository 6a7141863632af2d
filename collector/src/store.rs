//! The collector's store: one hash chain per agent, in append-only segment files.
//!
//! - Every record carries sha256(previous hash ‖ record) (see [`crate::chain`]).
//! - A batch is written and fsync'd before [`Store::append`] returns, so an ack means stored.
//! - Dedup by (agent, seq): an event whose seq is not above the agent's highest stored seq is
//!   a resend and is skipped (at-least-once delivery, exactly-once storage).
//! - A seq jump (events the agent numbered that never arrived) is recorded as a
//!   `CollectorAlert` record just before the event after the gap, and logged.
//! - Sealed segments have a small JSON sidecar (`.idx`) with their index, seq and time
//!   ranges: the segment index used for time-range replay and retention.
//! - Retention removes whole sealed segments older than the maximum age, or the oldest ones
//!   while the store is over its size limit; each removal is logged in `retention.jsonl` with
//!   the removed segment's last hash, so `verify` can tell retention from deletion.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, BufReader, Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use pbjson_types::Timestamp;
use phiguard_proto::v1::{self, event::Body};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    chain::{
        self, encode_record, framed_len, record_hash, Hash, RecordReader, SegmentHeader, GENESIS,
        HEADER_LEN, SEGMENT_MAGIC,
    },
    faults::{self, Step},
    fence::{Fence, FenceError, FenceHeld},
    identity,
};

/// Directory (under the store root) holding one directory per agent.
pub const AGENTS_DIR: &str = "agents";
/// File (under the store root) logging every segment removed by retention.
pub const RETENTION_LOG: &str = "retention.jsonl";
/// Extension of segment index sidecars.
pub const INDEX_EXT: &str = "idx";

/// How the store is laid out and kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Root directory.
    pub dir: PathBuf,
    /// A segment is sealed once it holds this many bytes.
    pub segment_max_bytes: u64,
    /// A segment is sealed once it is this old.
    pub segment_max_age: Duration,
    /// Sealed segments whose newest record is older than this are removed.
    pub retention_max_age: Duration,
    /// The oldest sealed segments are removed while the store is larger (None: no limit).
    pub retention_max_bytes: Option<u64>,
    /// Largest jump accepted above an agent's last stored seq. Further is refused, never
    /// acknowledged: one message with a huge seq (a stolen certificate) could otherwise make
    /// every later event of the real agent look like a resend.
    pub max_seq_jump: u64,
    /// Most new instances (streams with an instance id the agent's chain has not seen) one
    /// agent certificate may start in an hour; more are refused, never acknowledged. A real
    /// agent starts one per spool reset or reinstall; a stolen certificate inventing instance
    /// ids cannot open sequence spaces without bound.
    pub max_new_instances_per_hour: u32,
}

/// Default [`StoreConfig::max_new_instances_per_hour`].
pub const DEFAULT_MAX_NEW_INSTANCES_PER_HOUR: u32 = 4;

/// Default [`StoreConfig::max_seq_jump`]: more events than a full default spool (256 MiB)
/// holds, so only events the agent numbered and then dropped can come near it.
pub const DEFAULT_MAX_SEQ_JUMP: u64 = 10_000_000;

impl StoreConfig {
    /// Defaults for a store in `dir`: 64 MiB or one-day segments, six years' retention
    /// (HIPAA), no size limit.
    pub fn new(dir: PathBuf) -> StoreConfig {
        StoreConfig {
            dir,
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age: Duration::from_secs(24 * 3600),
            retention_max_age: Duration::from_secs(6 * 365 * 24 * 3600 + 2 * 24 * 3600),
            retention_max_bytes: None,
            max_seq_jump: DEFAULT_MAX_SEQ_JUMP,
            max_new_instances_per_hour: DEFAULT_MAX_NEW_INSTANCES_PER_HOUR,
        }
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A segment could not be read.
    #[error("{}: {source}", path.display())]
    Chain {
        /// The segment.
        path: PathBuf,
        /// Why.
        #[source]
        source: chain::ChainError,
    },
    /// The stored chain does not hold together (run `phiguard-collector verify`).
    #[error("{}: {message} (run `phiguard-collector verify`)", path.display())]
    Broken {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An agent directory whose name is not a valid identity.
    #[error("{0:?} is not a valid agent identity")]
    BadAgent(String),
    /// A seq too far above the agent's last stored one: refused, nothing stored.
    #[error("agent {agent}: seq {seq} is {jump} above the last stored seq {last} (at most {max} accepted): refused")]
    SeqJump {
        /// The agent.
        agent: String,
        /// The last stored seq.
        last: u64,
        /// The seq that arrived.
        seq: u64,
        /// How far above.
        jump: u64,
        /// The limit (`max_seq_jump`).
        max: u64,
    },
    /// A stream of a new instance beyond [`StoreConfig::max_new_instances_per_hour`]:
    /// refused, nothing stored.
    #[error("agent {agent}: new instance {instance} refused: {started} new instances started within the last hour (at most {max})")]
    InstanceLimit {
        /// The agent.
        agent: String,
        /// The instance that was refused.
        instance: String,
        /// New instances started within the last hour.
        started: usize,
        /// The limit.
        max: u32,
    },
    /// The fleet writer's fence could not be read ([`crate::fence`]).
    #[error(transparent)]
    Fence(FenceError),
    /// A sidecar index could not be parsed.
    #[error("{}: {source}", path.display())]
    Index {
        /// The sidecar.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// The file system is full (ENOSPC) or the store's quota is used up (EDQUOT): freeing
    /// space lets storing resume.
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded))
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Unix time of `t` in seconds (0 before 1970).
fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `t` as a protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The time a record is indexed by: the event's own time, else when it was received.
pub fn record_time(record: &v1::StoredRecord) -> i64 {
    record
        .event
        .as_ref()
        .and_then(|e| e.time.as_ref())
        .or(record.received.as_ref())
        .map_or(0, |t| t.seconds)
}

/// What the segment index knows about one segment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// Index of its first record.
    pub first_index: u64,
    /// Index of its last record (first_index - 1 when empty).
    pub last_index: u64,
    /// Highest event seq of the current instance (`instance`) stored up to and including this
    /// segment.
    pub last_seq: u64,
    /// Each agent instance's highest seq stored up to and including this segment ("" for the
    /// legacy stream of agents that send no instance). Absent from sidecars written before
    /// instances existed: their chains hold only the legacy stream, whose seq is `last_seq`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub instances: BTreeMap<String, u64>,
    /// The instance whose events were stored last ("" for the legacy stream).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// Earliest record time (Unix s; event time, else received time).
    pub min_time: i64,
    /// Latest record time.
    pub max_time: i64,
    /// When its newest record was received (Unix s).
    pub max_received: i64,
    /// Bytes on disk (header included).
    pub bytes: u64,
    /// Hash of its last record (hex; the previous segment's for an empty one).
    pub last_hash: String,
    /// When it was created (Unix s).
    pub created: i64,
}

impl SegmentMeta {
    fn empty(header: &SegmentHeader, prev: Option<&SegmentMeta>) -> SegmentMeta {
        SegmentMeta {
            first_index: header.first_index,
            last_index: header.first_index - 1,
            last_seq: prev.map_or(0, |p| p.last_seq),
            instances: prev.map(|p| p.instances.clone()).unwrap_or_default(),
            instance: prev.map(|p| p.instance.clone()).unwrap_or_default(),
            min_time: i64::MAX,
            max_time: i64::MIN,
            max_received: header.created,
            bytes: HEADER_LEN,
            last_hash: hex::encode(header.prev_hash),
            created: header.created,
        }
    }

    fn add(&mut self, record: &v1::StoredRecord, framed: u64, hash: &Hash) {
        self.last_index = record.index;
        if let Some(event) = &record.event {
            let instance = event.host.as_ref().map_or("", |h| h.instance_id.as_str());
            let started = matches!(&event.body, Some(Body::Alert(a)) if a.kind == v1::AlertKind::InstanceStarted as i32);
            if event.seq > 0 || started {
                if self.instance != instance {
                    self.instance = instance.to_owned();
                }
                let last = self.instances.entry(instance.to_owned()).or_default();
                *last = (*last).max(event.seq);
                self.last_seq = *last;
            }
        }
        let time = record_time(record);
        self.min_time = self.min_time.min(time);
        self.max_time = self.max_time.max(time);
        if let Some(received) = &record.received {
            self.max_received = self.max_received.max(received.seconds);
        }
        self.bytes += framed;
        self.last_hash = hex::encode(hash);
    }

    fn records(&self) -> u64 {
        self.last_index + 1 - self.first_index
    }

    /// A sidecar from before instances: its chain held only the legacy stream.
    fn upgrade(&mut self) {
        if self.instances.is_empty() && self.last_seq > 0 {
            self.instances.insert(String::new(), self.last_seq);
        }
    }
}

/// The head of an agent's chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// Index of the last record (0: empty chain).
    pub index: u64,
    /// Hash of the last record.
    pub hash: Hash,
    /// Highest event seq stored of the instance that stored last (see [`Store::instance_seq`]).
    pub seq: u64,
}

/// One stored record, as replayed and streamed.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The agent identity.
    pub agent: Arc<str>,
    /// Position in the agent's chain (0: a live notice that is in no chain).
    pub index: u64,
    /// The event (host.agent_id set from the certificate).
    pub event: v1::Event,
    /// When the collector received it (Unix s).
    pub received: i64,
}

/// What one append did.
#[derive(Clone, Debug, Default)]
pub struct Appended {
    /// Every event with seq <= this is stored (or recorded as missing).
    pub acked_seq: u64,
    /// New events stored.
    pub stored: u64,
    /// Resent events skipped.
    pub duplicates: u64,
    /// Records written (events and gap alerts), in chain order.
    pub records: Vec<Arc<Record>>,
    /// The chain's head afterwards.
    pub head: Head,
}

/// The segment being appended to.
struct Active {
    path: PathBuf,
    file: File,
    meta: SegmentMeta,
}

/// What a chain looked like before a batch: restored when the batch fails, so the chain in
/// memory never runs ahead of what is durable on disk.
#[derive(Clone, Debug)]
struct Snapshot {
    head: Head,
    sealed: usize,
    active: Option<(PathBuf, SegmentMeta)>,
}

/// One agent's chain.
struct Chain {
    agent: Arc<str>,
    dir: PathBuf,
    sealed: Vec<SegmentMeta>,
    active: Option<Active>,
    head: Head,
    /// Segment files created by the batch in progress (removed again if it fails).
    created: Vec<PathBuf>,
    /// A failed batch whose bytes could not yet be cut off the disk (tried again before the
    /// next batch).
    rollback: Option<Snapshot>,
    /// When new instances were started (within the last hour; in memory only).
    instance_starts: Vec<SystemTime>,
}

/// A repair the store made while opening: bytes that provably never held an acknowledged
/// record (a torn write after the last fsync, a segment whose creation was cut short).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    /// The agent.
    pub agent: Arc<str>,
    /// The segment file.
    pub segment: PathBuf,
    /// Where the cut starts.
    pub offset: u64,
    /// Bytes removed.
    pub bytes: u64,
    /// Why they were provably unacknowledged.
    pub reason: String,
}

/// An entry of `retention.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionEntry {
    /// The agent.
    pub agent: String,
    /// First index of the removed segment.
    pub first_index: u64,
    /// Last index of the removed segment.
    pub last_index: u64,
    /// Hash of its last record (hex): the next segment's `prev_hash`.
    pub last_hash: String,
    /// When it was removed (Unix s).
    pub removed: i64,
    /// "age" or "size".
    pub reason: String,
    /// When the collector received the removed segment's newest record (Unix s; absent in
    /// entries of older collectors): `verify` checks an "age" removal against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_received: Option<i64>,
    /// ed25519 signature (hex) of [`RetentionEntry::signed_bytes`] with the checkpoint key;
    /// `verify` accepts only signed entries as retention when it has the trusted key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signature: String,
}

impl RetentionEntry {
    /// The bytes the signature covers: `"phiguard.v1.Retention\0" | agent | "\0" |
    /// first_index u64 BE | last_index u64 BE | last_hash | "\0" | removed i64 BE | reason |
    /// "\0" | newest_received i64 BE (i64::MIN when absent)`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = b"phiguard.v1.Retention\0".to_vec();
        out.extend_from_slice(self.agent.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.first_index.to_be_bytes());
        out.extend_from_slice(&self.last_index.to_be_bytes());
        out.extend_from_slice(self.last_hash.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.removed.to_be_bytes());
        out.extend_from_slice(self.reason.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.newest_received.unwrap_or(i64::MIN).to_be_bytes());
        out
    }
}

/// Signs retention entries (the checkpoint key).
pub type RetentionSigner = Box<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// How far the clock may be ahead of the newest record the store received before retention
/// by age stops trusting it (one day). Agents send a heartbeat every 30 s by default, so a
/// store whose newest record is older than this has no agent sending; and a clock years ahead
/// (a wrong RTC, a bad NTP answer) must not make fresh segments look expired.
pub const RETENTION_CLOCK_BOUND: Duration = Duration::from_secs(24 * 3600);

/// A position for reading an agent's chain in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The agent.
    pub agent: Arc<str>,
    /// Next index wanted.
    pub next_index: u64,
    /// Segment (by first index) and byte offset where reading continues, when known.
    position: Option<(u64, u64)>,
}

impl Cursor {
    /// A cursor at `index` of `agent`'s chain.
    pub fn new(agent: Arc<str>, index: u64) -> Cursor {
        Cursor {
            agent,
            next_index: index.max(1),
            position: None,
        }
    }
}

/// The store: every agent's chain.
pub struct Store {
    config: StoreConfig,
    chains: Mutex<BTreeMap<Arc<str>, Arc<Mutex<Chain>>>>,
    repairs: Mutex<Vec<Repair>>,
    retention_signer: Mutex<Option<RetentionSigner>>,
    /// The fleet writer's fence ([`crate::fence`]): every append and retention pass holds it.
    fence: OnceLock<Arc<Fence>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    faults::check(Step::DirSync)
        .and_then(|()| File::open(dir))
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn index_path(segment: &Path) -> PathBuf {
    segment.with_extension(INDEX_EXT)
}

/// Suffix of files being written that are renamed into place once complete.
const TMP_SUFFIX: &str = ".tmp";

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TMP_SUFFIX);
    PathBuf::from(name)
}

/// A cut that [`scan_segment`] made: offset, bytes removed, and why they were torn.
type Cut = (u64, u64, String);

/// Whether a complete-looking last record is a torn write rather than an altered one: the
/// file system zero-filled what never reached the disk (its hash, or its tail, is zeros).
/// An altered record (a valid-looking record with a wrong hash) is never cut.
fn zero_filled(raw: &chain::RawRecord) -> bool {
    raw.hash == GENESIS || raw.body.iter().rev().take(16).all(|b| *b == 0)
}

/// Scans a segment file: checks the chain inside it, returns its meta, the head and what was
/// cut. With `repair` (the newest segment, at start-up), a torn last record — the file ends
/// inside it, or the file system zero-filled it — is cut off: it was written after the last
/// fsync, so it was never acknowledged. Anything else that does not verify is refused.
fn scan_segment(
    path: &Path,
    expected_first: Option<u64>,
    expected_prev: Option<Hash>,
    prev: Option<&SegmentMeta>,
    repair: bool,
) -> Result<(SegmentMeta, Hash, Option<Cut>), StoreError> {
    let file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut reader = BufReader::new(file);
    let chain_err = |source| StoreError::Chain {
        path: path.to_owned(),
        source,
    };
    let header = SegmentHeader::read_from(&mut reader).map_err(chain_err)?;
    let broken = |message: String| StoreError::Broken {
        path: path.to_owned(),
        message,
    };
    if let Some(first) = expected_first {
        if header.first_index != first {
            return Err(broken(format!(
                "segment starts at index {}, {first} expected",
                header.first_index
            )));
        }
    }
    if let Some(prev) = expected_prev {
        if header.prev_hash != prev {
            return Err(broken("segment does not continue the chain".into()));
        }
    }
    let mut meta = SegmentMeta::empty(&header, prev);
    let mut hash = header.prev_hash;
    let records = RecordReader::new(reader, HEADER_LEN, None);
    let mut cut = None;
    for item in records {
        let raw = match item {
            Ok(raw) => raw,
            Err(chain::ChainError::Framing { offset, reason }) if repair => {
                cut = Some((offset, reason));
                break;
            }
            Err(e) => return Err(chain_err(e)),
        };
        let computed = record_hash(&hash, &raw.body);
        let decoded = v1::StoredRecord::decode(raw.body.as_slice());
        let at_end = raw.offset + raw.framed_len() == file_len;
        let problem = match &decoded {
            _ if computed != raw.hash => Some("hash mismatch".to_owned()),
            Err(e) => Some(format!("undecodable record: {e}")),
            Ok(r) if r.index != meta.last_index + 1 => Some(format!(
                "record index {} where {} was expected",
                r.index,
                meta.last_index + 1
            )),
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            if repair && at_end && zero_filled(&raw) {
                cut = Some((raw.offset, format!("zero-filled last record ({problem})")));
                break;
            }
            let altered = if at_end {
                " (the last record was altered, not torn: it is not cut)"
            } else {
                ""
            };
            return Err(broken(format!("offset {}: {problem}{altered}", raw.offset)));
        }
        let record = decoded.map_err(|e| broken(e.to_string()))?;
        meta.add(&record, raw.framed_len(), &raw.hash);
        hash = raw.hash;
    }
    let cut = match cut {
        Some((offset, reason)) => {
            warn!(segment = %path.display(), offset, cut = file_len - offset, %reason, "cutting a torn write off the end of the newest segment");
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_err(path))?;
            file.set_len(offset).map_err(io_err(path))?;
            file.sync_all().map_err(io_err(path))?;
            meta.bytes = offset;
            Some((offset, file_len - offset, reason))
        }
        None => None,
    };
    Ok((meta, hash, cut))
}

/// Whether the newest segment file `path` is a segment whose creation was cut short (by a
/// crash or a full disk, before its header was complete): it then holds no record at all.
/// Its bytes must be a prefix of the header its name implies, or zeros.
fn torn_creation(path: &Path, first_index: u64) -> Result<bool, StoreError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    if bytes.len() > HEADER_LEN as usize || SegmentHeader::decode(&bytes).is_ok() {
        return Ok(false);
    }
    let mut expected = Vec::from(&SEGMENT_MAGIC[..]);
    expected.extend_from_slice(&first_index.to_le_bytes());
    let n = bytes.len().min(expected.len());
    Ok(bytes.iter().all(|b| *b == 0) || bytes[..n] == expected[..n])
}

fn write_index(path: &Path, meta: &SegmentMeta) -> Result<(), StoreError> {
    let idx = index_path(path);
    let tmp = tmp_path(&idx);
    let text = serde_json::to_vec(meta).map_err(|source| StoreError::Index {
        path: idx.clone(),
        source,
    })?;
    let written = faults::check(Step::IndexWrite)
        .and_then(|()| File::create(&tmp))
        .and_then(|mut file| {
            file.write_all(&text)?;
            file.sync_all()
        })
        .map_err(io_err(&tmp))
        .and_then(|()| {
            faults::check(Step::IndexRename)
                .and_then(|()| fs::rename(&tmp, &idx))
                .map_err(io_err(&idx))
        });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn read_index(path: &Path) -> Result<Option<SegmentMeta>, StoreError> {
    let idx = index_path(path);
    match fs::read(&idx) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Index { path: idx, source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io { path: idx, source }),
    }
}

/// The segment files of an agent directory, sorted by first index.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if let Some(first) = name.to_str().and_then(chain::parse_segment_file_name) {
            segments.push((first, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Removes half-written temporary files (a segment or sidecar that was never renamed into
/// place holds nothing the chain refers to).
fn remove_temporaries(dir: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
            fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
        }
    }
    Ok(())
}

impl Chain {
    /// Opens an agent's chain from disk. The newest segment is scanned (a torn tail is cut,
    /// a segment whose creation was cut short is removed; each such repair is returned);
    /// older ones come from their sidecar when it matches the file, else they are scanned.
    fn open(agent: Arc<str>, dir: PathBuf) -> Result<(Chain, Vec<Repair>), StoreError> {
        remove_temporaries(&dir)?;
        let mut segments = list_segments(&dir)?;
        let mut repairs = Vec::new();
        if let Some((first, path)) = segments.last().cloned() {
            if torn_creation(&path, first)? {
                let bytes = fs::metadata(&path).map_err(io_err(&path))?.len();
                warn!(agent = %agent, segment = %path.display(), bytes, "removing a segment whose creation was cut short (no record in it)");
                fs::remove_file(&path).map_err(io_err(&path))?;
                let _ = fs::remove_file(index_path(&path));
                fsync_dir(&dir)?;
                repairs.push(Repair {
                    agent: agent.clone(),
                    segment: path,
                    offset: 0,
                    bytes,
                    reason: format!(
                        "segment creation cut short ({bytes} of {HEADER_LEN} header bytes, no record)"
                    ),
                });
                segments.pop();
            }
        }
        let mut chain = Chain {
            agent,
            dir,
            sealed: Vec::new(),
            active: None,
            head: Head::default(),
            created: Vec::new(),
            rollback: None,
            instance_starts: Vec::new(),
        };
        let count = segments.len();
        for (i, (_, path)) in segments.into_iter().enumerate() {
            let last = i + 1 == count;
            let expected_first = (i > 0).then_some(chain.head.index + 1);
            let expected_prev = (i > 0).then_some(chain.head.hash);
            let len = fs::metadata(&path).map_err(io_err(&path))?.len();
            let sidecar = read_index(&path)?.filter(|m| !last && m.bytes == len);
            let meta = match sidecar {
                Some(mut meta) => {
                    meta.upgrade();
                    let mut hash = GENESIS;
                    hex::decode_to_slice(&meta.last_hash, &mut hash).map_err(|e| {
                        StoreError::Broken {
                            path: index_path(&path),
                            message: format!("bad last_hash: {e}"),
                        }
                    })?;
                    chain.head = Head {
                        index: meta.last_index,
                        hash,
                        seq: meta.last_seq,
                    };
                    meta
                }
                None => {
                    let (meta, hash, cut) = scan_segment(
                        &path,
                        expected_first,
                        expected_prev,
                        chain.sealed.last(),
                        last,
                    )?;
                    if let Some((offset, bytes, reason)) = cut {
                        repairs.push(Repair {
                            agent: chain.agent.clone(),
                            segment: path.clone(),
                            offset,
                            bytes,
                            reason,
                        });
                    }
                    if !last {
                        write_index(&path, &meta)?;
                    }
                    chain.head = Head {
                        index: meta.last_index,
                        hash,
                        seq: meta.last_seq,
                    };
                    meta
                }
            };
            if last {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                chain.active = Some(Active { path, file, meta });
            } else {
                chain.sealed.push(meta);
            }
        }
        Ok((chain, repairs))
    }

    /// Seals the active segment (fsync'd, sidecar written) and starts a new one. The new
    /// segment is written in full under a temporary name, fsync'd and renamed into place, so
    /// a segment file never exists without its header; nothing changes in memory unless
    /// every step succeeded.
    fn rotate(&mut self, now: SystemTime) -> Result<(), StoreError> {
        if let Some(active) = &self.active {
            faults::check(Step::SealSync)
                .and_then(|()| active.file.sync_all())
                .map_err(io_err(&active.path))?;
            write_index(&active.path, &active.meta)?;
        }
        let header = SegmentHeader {
            first_index: self.head.index + 1,
            prev_hash: self.head.hash,
            created: unix_secs(now),
        };
        let path = self.dir.join(chain::segment_file_name(header.first_index));
        let tmp = tmp_path(&path);
        let created = (|| {
            faults::check(Step::SegmentCreate)?;
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            faults::check(Step::SegmentHeader)?;
            file.write_all(&header.encode())?;
            faults::check(Step::SegmentSync)?;
            file.sync_all()?;
            Ok(file)
        })()
        .map_err(io_err(&tmp));
        let renamed = created.and_then(|file| {
            if path.exists() {
                return Err(StoreError::Broken {
                    path: path.clone(),
                    message: "a segment with this first index exists already".into(),
                });
            }
            faults::check(Step::SegmentRename)
                .and_then(|()| fs::rename(&tmp, &path))
                .map_err(io_err(&path))?;
            Ok(file)
        });
        let file = match renamed {
            Ok(file) => file,
            Err(error) => {
                let _ = fs::remove_file(&tmp);
                return Err(error);
            }
        };
        self.created.push(path.clone());
        fsync_dir(&self.dir)?;
        drop(file);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if let Some(active) = self.active.take() {
            self.sealed.push(active.meta);
        }
        self.active = Some(Active {
            path,
            file,
            meta: SegmentMeta::empty(&header, self.latest()),
        });
        Ok(())
    }

    fn needs_rotation(&self, config: &StoreConfig, now: SystemTime, next: u64) -> bool {
        match &self.active {
            None => true,
            Some(active) => {
                let has_records = active.meta.records() > 0;
                let full = active.meta.bytes + next > config.segment_max_bytes;
                let old = unix_secs(now) - active.meta.created
                    >= i64::try_from(config.segment_max_age.as_secs()).unwrap_or(i64::MAX);
                has_records && (full || old)
            }
        }
    }

    fn write_pending(&mut self, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        if buf.is_empty() {
            return Ok(());
        }
        let active = self.active.as_mut().expect("an active segment exists");
        faults::check(Step::Append)
            .and_then(|()| active.file.write_all(buf))
            .map_err(io_err(&active.path))?;
        buf.clear();
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            head: self.head,
            sealed: self.sealed.len(),
            active: self
                .active
                .as_ref()
                .map(|a| (a.path.clone(), a.meta.clone())),
        }
    }

    /// Appends a batch in write-ahead order: records written, fsync'd, and only then the
    /// chain in memory moves on. If any step fails, the chain in memory goes back to what
    /// it was and the batch's bytes are cut off the disk again ([`Chain::undo`]).
    fn append(
        &mut self,
        config: &StoreConfig,
        events: Vec<v1::Event>,
        now: SystemTime,
    ) -> Result<Appended, StoreError> {
        if let Some(snapshot) = self.rollback.take() {
            self.undo(snapshot)?;
        }
        let snapshot = self.snapshot();
        self.created.clear();
        match self.write(config, events, now) {
            Ok(appended) => {
                self.created.clear();
                Ok(appended)
            }
            Err(error) => {
                if let Err(again) = self.undo(snapshot) {
                    warn!(agent = %self.agent, error = %again, "could not yet cut a failed batch off the disk; trying again before the next batch");
                }
                Err(error)
            }
        }
    }

    /// Restores the chain to `snapshot`: in memory first (so nothing reads past what is
    /// durable), then on disk: segments the failed batch created are removed, the segment it
    /// sealed loses its sidecar, and the segment that was active is cut back to its committed
    /// length and fsync'd. If a disk step fails, the rest is tried again before the next
    /// batch (and a restart finds at most unacknowledged, complete records).
    fn undo(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.head = snapshot.head;
        self.sealed.truncate(snapshot.sealed);
        self.active = match &snapshot.active {
            Some((path, meta)) => {
                OpenOptions::new()
                    .append(true)
                    .open(path)
                    .ok()
                    .map(|file| Active {
                        path: path.clone(),
                        file,
                        meta: meta.clone(),
                    })
            }
            None => None,
        };
        let result = (|| {
            for path in self.created.clone() {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(StoreError::Io { path, source }),
                }
                let _ = fs::remove_file(index_path(&path));
            }
            if let Some((path, meta)) = &snapshot.active {
                let _ = fs::remove_file(index_path(path));
                let active = self.active.as_ref().ok_or_else(|| StoreError::Io {
                    path: path.clone(),
                    source: io::Error::other("cannot reopen the active segment"),
                })?;
                faults::check(Step::Rollback)
                    .and_then(|()| active.file.set_len(meta.bytes))
                    .and_then(|()| active.file.sync_all())
                    .map_err(io_err(path))?;
            }
            fsync_dir(&self.dir)
        })();
        match result {
            Ok(()) => {
                self.created.clear();
                Ok(())
            }
            Err(error) => {
                self.rollback = Some(snapshot);
                Err(error)
            }
        }
    }

    fn write(
        &mut self,
        config: &StoreConfig,
        events: Vec<v1::Event>,
        now: SystemTime,
    ) -> Result<Appended, StoreError> {
        // The batch's instance: validation stamped every agent event with its stream's.
        let instance = events
            .iter()
            .find(|e| e.seq > 0)
            .and_then(|e| e.host.as_ref())
            .map_or(String::new(), |h| h.instance_id.clone());
        let known = self
            .latest()
            .is_some_and(|m| m.instances.contains_key(&instance));
        // A new instance's sequence space starts at its first event: an agent upgraded on a
        // spool numbered from before instances keeps its numbering, and whatever a forged
        // instance starts at, it numbers only its own space (its start is recorded).
        let first_seq = events.iter().map(|e| e.seq).filter(|s| *s > 0).min();
        let stored_seq = match first_seq {
            Some(first) if !known && !instance.is_empty() => first - 1,
            _ => self.instance_seq(&instance),
        };
        // The window is checked before anything changes: a refused batch stores nothing.
        // Each instance has its own sequence space, so its own window.
        let mut last = stored_seq;
        for event in events.iter().filter(|e| e.seq > 0) {
            if event.seq > last.saturating_add(config.max_seq_jump) {
                return Err(StoreError::SeqJump {
                    agent: self.agent.to_string(),
                    last: stored_seq,
                    seq: event.seq,
                    jump: event.seq - stored_seq,
                    max: config.max_seq_jump,
                });
            }
            last = last.max(event.seq);
        }
        let new_events = events.iter().any(|e| e.seq > stored_seq);
        let current = self.latest().map_or(String::new(), |m| m.instance.clone());
        // The first instance of a chain starts silently (its events name it); any later
        // change of instance is recorded before the first event it stores.
        let before = self.latest().is_some_and(|m| !m.instances.is_empty());
        let switch = new_events && instance != current && before;
        if new_events && !known && !instance.is_empty() {
            let hour = Duration::from_secs(3600);
            self.instance_starts
                .retain(|t| now.duration_since(*t).unwrap_or_default() < hour);
            if self.instance_starts.len() >= config.max_new_instances_per_hour as usize {
                return Err(StoreError::InstanceLimit {
                    agent: self.agent.to_string(),
                    instance,
                    started: self.instance_starts.len(),
                    max: config.max_new_instances_per_hour,
                });
            }
            self.instance_starts.push(now);
        }
        let received = timestamp(now);
        let mut out = Appended::default();
        let mut buf = Vec::new();
        let mut records = Vec::new();
        if switch {
            let since = self.latest().map(|m| m.max_received);
            let previous = self.latest().and_then(|m| {
                m.instances
                    .get(&m.instance)
                    .map(|seq| (m.instance.clone(), *seq))
            });
            warn!(agent = %self.agent, instance = %instance, previous = ?previous, known, "another instance of the agent stores now");
            records.push(instance_alert(
                &self.agent,
                &instance,
                known,
                previous,
                since.map(|t| received.seconds.saturating_sub(t)),
                &received,
            ));
        }
        let mut head_seq = stored_seq;
        for event in events {
            // The collector's own alerts and audit records (seq 0; agents cannot send them)
            // join the chain without touching the agent's numbering.
            if event.seq == 0 && matches!(event.body, Some(Body::Alert(_) | Body::Subscription(_)))
            {
                records.push(event);
                continue;
            }
            if event.seq <= head_seq {
                out.duplicates += 1;
                continue;
            }
            if event.seq > head_seq + 1 {
                let expected = head_seq + 1;
                warn!(agent = %self.agent, instance = %instance, expected, received = event.seq, "sequence gap: events never arrived");
                let mut gap = gap_alert(&self.agent, expected, event.seq, &received);
                if let Some(host) = gap.host.as_mut() {
                    host.instance_id.clone_from(&instance);
                }
                records.push(gap);
            }
            head_seq = event.seq;
            out.stored += 1;
            records.push(event);
        }
        for event in records {
            let mut record = v1::StoredRecord {
                index: self.head.index + 1,
                received: Some(received),
                event: Some(event),
            };
            let body = record.encode_to_vec();
            let framed = framed_len(body.len());
            if self.needs_rotation(config, now, framed) {
                self.write_pending(&mut buf)?;
                self.rotate(now)?;
            }
            let hash = record_hash(&self.head.hash, &body);
            encode_record(&mut buf, &body, &hash);
            let active = self.active.as_mut().expect("an active segment exists");
            active.meta.add(&record, framed, &hash);
            self.head.index = record.index;
            self.head.hash = hash;
            out.records.push(Arc::new(Record {
                agent: self.agent.clone(),
                index: record.index,
                event: record.event.take().unwrap_or_default(),
                received: received.seconds,
            }));
        }
        self.write_pending(&mut buf)?;
        if let Some(active) = &self.active {
            if !out.records.is_empty() {
                faults::check(Step::AppendSync)
                    .and_then(|()| active.file.sync_data())
                    .map_err(io_err(&active.path))?;
            }
        }
        self.head.seq = self.latest().map_or(0, |m| m.last_seq);
        out.acked_seq = head_seq;
        out.head = self.head;
        Ok(out)
    }

    fn all_segments(&self) -> impl Iterator<Item = &SegmentMeta> {
        self.sealed
            .iter()
            .chain(self.active.as_ref().map(|a| &a.meta))
    }

    /// The newest segment's meta: the agent's instances as of the chain's head.
    fn latest(&self) -> Option<&SegmentMeta> {
        self.active
            .as_ref()
            .map(|a| &a.meta)
            .or_else(|| self.sealed.last())
    }

    /// The highest seq stored of `instance` ("" for the legacy stream).
    fn instance_seq(&self, instance: &str) -> u64 {
        self.latest()
            .and_then(|m| m.instances.get(instance).copied())
            .unwrap_or(0)
    }

    fn first_index(&self) -> u64 {
        self.all_segments().next().map_or(1, |m| m.first_index)
    }
}

/// The alert recorded when another instance of `agent` starts storing: `known` when it stored
/// before (the agent switched back), `previous` the instance that stored last and its last
/// seq, `since` seconds since the previous instance last stored.
pub fn instance_alert(
    agent: &str,
    instance: &str,
    known: bool,
    previous: Option<(String, u64)>,
    since: Option<i64>,
    at: &Timestamp,
) -> v1::Event {
    let what = if known { "resumed" } else { "started" };
    let previous = match (previous, since) {
        (Some((old, seq)), Some(since)) => format!(
            " after instance {} (last seq {seq}, last stored {since} s ago)",
            short_instance(&old)
        ),
        (Some((old, seq)), None) => {
            format!(" after instance {} (last seq {seq})", short_instance(&old))
        }
        _ => String::new(),
    };
    v1::Event {
        id: uuid::Uuid::now_v7().to_string(),
        seq: 0,
        time: Some(*at),
        host: Some(v1::Host {
            hostname: agent.to_owned(),
            agent_id: agent.to_owned(),
            instance_id: instance.to_owned(),
            ..Default::default()
        }),
        body: Some(Body::Alert(v1::CollectorAlert {
            kind: v1::AlertKind::InstanceStarted as i32,
            message: format!(
                "agent {agent}: instance {} {what}{previous}; its seqs count anew. A spool reset or reinstall does this; if the agent was not reset, someone may hold its certificate",
                short_instance(instance)
            ),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// An instance id in short form (its first 8 characters; `legacy` for the empty one).
pub fn short_instance(instance: &str) -> &str {
    if instance.is_empty() {
        "legacy"
    } else {
        instance.get(..8).unwrap_or(instance)
    }
}

/// The alert recorded in place of events that never arrived.
pub fn gap_alert(agent: &str, expected: u64, received: u64, at: &Timestamp) -> v1::Event {
    v1::Event {
        id: uuid::Uuid::now_v7().to_string(),
        seq: 0,
        time: Some(*at),
        host: Some(v1::Host {
            hostname: agent.to_owned(),
            agent_id: agent.to_owned(),
            ..Default::default()
        }),
        body: Some(Body::Alert(v1::CollectorAlert {
            kind: v1::AlertKind::SequenceGap as i32,
            message: format!(
                "agent {agent}: events {expected}..={} never arrived",
                received - 1
            ),
            expected_seq: expected,
            received_seq: received,
            ..Default::default()
        })),
        ..Default::default()
    }
}

impl Store {
    /// Opens (creating if needed) the store and recovers every agent's chain: sealed
    /// segments from their index, the active one by scanning it (a torn last record is cut).
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let agents_dir = config.dir.join(AGENTS_DIR);
        fs::create_dir_all(&agents_dir).map_err(io_err(&agents_dir))?;
        let mut chains = BTreeMap::new();
        let mut repairs = Vec::new();
        for entry in fs::read_dir(&agents_dir).map_err(io_err(&agents_dir))? {
            let entry = entry.map_err(io_err(&agents_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !identity::valid_identity(&name) {
                return Err(StoreError::BadAgent(name));
            }
            let agent: Arc<str> = Arc::from(name.as_str());
            let (chain, repaired) = Chain::open(agent.clone(), entry.path())?;
            info!(agent = %agent, records = chain.head.index, seq = chain.head.seq, "chain recovered");
            chains.insert(agent, Arc::new(Mutex::new(chain)));
            repairs.extend(repaired);
        }
        Ok(Store {
            config,
            chains: Mutex::new(chains),
            repairs: Mutex::new(repairs),
            retention_signer: Mutex::new(None),
            fence: OnceLock::new(),
        })
    }

    /// Puts the store under `fence` (a fleet store writer's, raised before the store was
    /// opened): from now on every append and retention pass holds it, and the first one
    /// that finds it raised by another writer ends the process before writing anything
    /// ([`crate::fence::FENCED_EXIT`]). Set once; a second fence is ignored.
    pub fn set_fence(&self, fence: Arc<Fence>) {
        let token = fence.token();
        if self.fence.set(fence).is_ok() {
            info!(
                token,
                "store fenced: appends only while the fence holds this writer's token"
            );
        }
    }

    /// Checks the fence, when there is one, without writing: ends the process, as an append
    /// would, when another writer raised it. For what a stale writer must not do outside the
    /// store either (such as remaking the JetStream consumer its successor reads).
    pub fn check_fence(&self) -> Result<(), StoreError> {
        self.hold_fence().map(drop)
    }

    /// Holds the fence for one write, when there is one. A fence raised by another writer
    /// ends the process at once: this one lost the store, and nothing may be written.
    fn hold_fence(&self) -> Result<Option<FenceHeld>, StoreError> {
        self.fence
            .get()
            .map(|fence| fence.hold_or_end("store"))
            .transpose()
            .map_err(StoreError::Fence)
    }

    /// Signs every retention entry from now on with `sign`.
    pub fn set_retention_signer(&self, sign: RetentionSigner) {
        *lock(&self.retention_signer) = Some(sign);
    }

    /// The repairs made while opening (each cut a torn, never acknowledged write), handed
    /// out once: the server records each as an alert in the agent's chain.
    pub fn take_repairs(&self) -> Vec<Repair> {
        std::mem::take(&mut *lock(&self.repairs))
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn chain(&self, agent: &str) -> Result<Arc<Mutex<Chain>>, StoreError> {
        if !identity::valid_identity(agent) {
            return Err(StoreError::BadAgent(agent.to_owned()));
        }
        let mut chains = lock(&self.chains);
        if let Some(chain) = chains.get(agent) {
            return Ok(chain.clone());
        }
        let dir = self.config.dir.join(AGENTS_DIR).join(agent);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        fsync_dir(&self.config.dir.join(AGENTS_DIR))?;
        let agent: Arc<str> = Arc::from(agent);
        let (chain, repaired) = Chain::open(agent.clone(), dir)?;
        lock(&self.repairs).extend(repaired);
        let chain = Arc::new(Mutex::new(chain));
        chains.insert(agent, chain.clone());
        Ok(chain)
    }

    /// The head of `agent`'s chain (default for an unknown agent).
    pub fn head(&self, agent: &str) -> Head {
        let chain = lock(&self.chains).get(agent).cloned();
        chain.map(|c| lock(&c).head).unwrap_or_default()
    }

    /// The highest seq stored of `agent`'s `instance` ("" for the legacy stream): what the
    /// opening response of that instance's stream acknowledges.
    pub fn instance_seq(&self, agent: &str, instance: &str) -> u64 {
        let chain = lock(&self.chains).get(agent).cloned();
        chain.map_or(0, |c| lock(&c).instance_seq(instance))
    }

    /// Every agent's head.
    pub fn heads(&self) -> BTreeMap<Arc<str>, Head> {
        let chains: Vec<_> = lock(&self.chains)
            .iter()
            .map(|(a, c)| (a.clone(), c.clone()))
            .collect();
        chains
            .into_iter()
            .map(|(a, c)| (a, lock(&c).head))
            .collect()
    }

    /// Appends `events` (already validated, in seq order) to `agent`'s chain, fsyncs, and
    /// calls `committed` with the new records while still holding the chain (so records reach
    /// subscribers in chain order).
    pub fn append(
        &self,
        agent: &str,
        events: Vec<v1::Event>,
        committed: impl FnOnce(&Appended),
    ) -> Result<Appended, StoreError> {
        self.append_at(agent, events, SystemTime::now(), committed)
    }

    /// [`Store::append`] with the time of receipt given.
    pub(crate) fn append_at(
        &self,
        agent: &str,
        events: Vec<v1::Event>,
        now: SystemTime,
        committed: impl FnOnce(&Appended),
    ) -> Result<Appended, StoreError> {
        // Held until the batch is fsync'd: a newer writer's raise waits for it to end.
        let _fence = self.hold_fence()?;
        let chain = self.chain(agent)?;
        let mut chain = lock(&chain);
        match chain.append(&self.config, events, now) {
            Ok(appended) => {
                committed(&appended);
                Ok(appended)
            }
            Err(error) => {
                warn!(agent, %error, "append failed; the batch is not stored and the chain is as before it");
                Err(error)
            }
        }
    }

    /// The first index of `agent`'s chain whose segment may hold records at or after `time`
    /// (Unix s): the segment index lookup for time-range replay.
    pub fn first_index_since(&self, agent: &str, time: i64) -> u64 {
        let Some(chain) = lock(&self.chains).get(agent).cloned() else {
            return 1;
        };
        let chain = lock(&chain);
        let first = chain
            .all_segments()
            .find(|m| m.records() > 0 && m.max_time >= time)
            .map_or(chain.head.index + 1, |m| m.first_index);
        first
    }

    /// Reads up to `max` records from `cursor` on, advancing it. Returns an empty vector at
    /// the end of the chain.
    pub fn read(&self, cursor: &mut Cursor, max: usize) -> Result<Vec<Arc<Record>>, StoreError> {
        let Some(chain) = lock(&self.chains).get(&*cursor.agent).cloned() else {
            return Ok(Vec::new());
        };
        // Snapshot which segments to read and how far they are committed.
        let segments: Vec<(u64, u64, u64)> = {
            let chain = lock(&chain);
            if cursor.next_index < chain.first_index() {
                cursor.next_index = chain.first_index();
                cursor.position = None;
            }
            chain
                .all_segments()
                .filter(|m| m.last_index >= cursor.next_index)
                .map(|m| (m.first_index, m.last_index, m.bytes))
                .collect()
        };
        let mut out = Vec::new();
        for (first, last, committed) in segments {
            if out.len() >= max {
                break;
            }
            let path = self
                .config
                .dir
                .join(AGENTS_DIR)
                .join(&*cursor.agent)
                .join(chain::segment_file_name(first));
            let offset = match cursor.position {
                Some((segment, offset)) if segment == first => offset,
                _ => HEADER_LEN,
            };
            let mut file = match File::open(&path) {
                Ok(file) => file,
                // Removed by retention meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(StoreError::Io { path, source }),
            };
            file.seek(SeekFrom::Start(offset)).map_err(io_err(&path))?;
            let reader = RecordReader::new(BufReader::new(file), offset, Some(committed));
            let mut reader = reader.peekable();
            while out.len() < max {
                let Some(item) = reader.next() else { break };
                let raw = item.map_err(|source| StoreError::Chain {
                    path: path.clone(),
                    source,
                })?;
                let next_offset = raw.offset + raw.framed_len();
                let record = v1::StoredRecord::decode(raw.body.as_slice()).map_err(|e| {
                    StoreError::Broken {
                        path: path.clone(),
                        message: format!("offset {}: {e}", raw.offset),
                    }
                })?;
                cursor.position = Some((first, next_offset));
                if record.index < cursor.next_index {
                    continue;
                }
                cursor.next_index = record.index + 1;
                out.push(Arc::new(Record {
                    agent: cursor.agent.clone(),
                    index: record.index,
                    received: record.received.map_or(0, |t| t.seconds),
                    event: record.event.unwrap_or_default(),
                }));
            }
            if cursor.next_index > last {
                cursor.position = None;
            }
        }
        Ok(out)
    }

    /// Removes sealed segments past the retention age, then the oldest ones while the store
    /// is over its size limit. Returns the removed segments.
    ///
    /// Removal by age needs a clock that agrees with the store: when the clock is more than
    /// [`RETENTION_CLOCK_BOUND`] ahead of the newest record received, nothing is removed by
    /// age (logged; removal by size goes on).
    pub fn apply_retention(&self, now: SystemTime) -> Result<Vec<RetentionEntry>, StoreError> {
        let _fence = self.hold_fence()?;
        let chains: Vec<Arc<Mutex<Chain>>> = lock(&self.chains).values().cloned().collect();
        let max_age = i64::try_from(self.config.retention_max_age.as_secs()).unwrap_or(i64::MAX);
        let clock = unix_secs(now);
        let cutoff = clock.saturating_sub(max_age);
        let newest = chains
            .iter()
            .filter_map(|c| lock(c).all_segments().map(|m| m.max_received).max())
            .max();
        let bound = i64::try_from(RETENTION_CLOCK_BOUND.as_secs()).unwrap_or(i64::MAX);
        let trusted = match newest {
            Some(newest) if clock > newest.saturating_add(bound) => {
                warn!(
                    ahead_secs = clock - newest,
                    bound_secs = bound,
                    "retention by age paused: the clock is further ahead of the newest stored record than the bound (a wrong clock, or no agent has sent anything since)"
                );
                false
            }
            _ => true,
        };
        let mut removed = Vec::new();
        for chain in chains.iter().filter(|_| trusted) {
            let mut chain = lock(chain);
            while chain
                .sealed
                .first()
                .is_some_and(|m| m.max_received < cutoff)
            {
                removed.push(self.remove_oldest(&mut chain, now, "age")?);
            }
        }
        if let Some(limit) = self.config.retention_max_bytes {
            loop {
                let mut total = 0;
                let mut oldest: Option<(i64, &Arc<Mutex<Chain>>)> = None;
                for chain in &chains {
                    let c = lock(chain);
                    total += c.all_segments().map(|m| m.bytes).sum::<u64>();
                    if let Some(first) = c.sealed.first() {
                        if oldest.is_none_or(|(t, _)| first.max_received < t) {
                            oldest = Some((first.max_received, chain));
                        }
                    }
                }
                match oldest {
                    Some((_, chain)) if total > limit => {
                        let mut chain = lock(chain);
                        removed.push(self.remove_oldest(&mut chain, now, "size")?);
                    }
                    _ => break,
                }
            }
        }
        Ok(removed)
    }

    fn remove_oldest(
        &self,
        chain: &mut Chain,
        now: SystemTime,
        reason: &str,
    ) -> Result<RetentionEntry, StoreError> {
        let meta = chain.sealed[0].clone();
        let mut entry = RetentionEntry {
            agent: chain.agent.to_string(),
            first_index: meta.first_index,
            last_index: meta.last_index,
            last_hash: meta.last_hash.clone(),
            removed: unix_secs(now),
            reason: reason.to_owned(),
            newest_received: Some(meta.max_received),
            signature: String::new(),
        };
        if let Some(sign) = lock(&self.retention_signer).as_ref() {
            entry.signature = hex::encode(sign(&entry.signed_bytes()));
        }
        // Log first: a removal is never unexplained. The segment leaves the chain in memory
        // only once it is gone from the disk.
        let log = self.config.dir.join(RETENTION_LOG);
        let mut line = serde_json::to_vec(&entry).map_err(|source| StoreError::Index {
            path: log.clone(),
            source,
        })?;
        line.push(b'\n');
        append_line(&log, &line)?;
        let path = chain.dir.join(chain::segment_file_name(meta.first_index));
        fs::remove_file(&path).map_err(io_err(&path))?;
        chain.sealed.remove(0);
        let _ = fs::remove_file(index_path(&path));
        fsync_dir(&chain.dir)?;
        info!(agent = %chain.agent, first_index = meta.first_index, last_index = meta.last_index, reason, "retention removed a segment");
        Ok(entry)
    }

    #[cfg(test)]
    fn all_sealed_received_after(&self, t: i64) -> bool {
        lock(&self.chains)
            .values()
            .all(|c| lock(c).sealed.iter().all(|m| m.max_received >= t))
    }

    /// The agents with a chain.
    pub fn agents(&self) -> Vec<Arc<str>> {
        lock(&self.chains).keys().cloned().collect()
    }

    /// Total bytes of every segment.
    pub fn bytes(&self) -> u64 {
        let chains: Vec<_> = lock(&self.chains).values().cloned().collect();
        chains
            .iter()
            .map(|c| lock(c).all_segments().map(|m| m.bytes).sum::<u64>())
            .sum()
    }
}

/// Appends `line` to the log at `path` and fsyncs it; on failure (a full disk) the file is
/// cut back to its previous length, so a half-written line never makes the log unreadable.
pub fn append_line(path: &Path, line: &[u8]) -> Result<(), StoreError> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    let before = file.metadata().map_err(io_err(path))?.len();
    let written = file.write_all(line).and_then(|()| file.sync_all());
    if let Err(source) = written {
        let _ = file.set_len(before).and_then(|()| file.sync_all());
        return Err(StoreError::Io {
            path: path.to_owned(),
            source,
        });
    }
    Ok(())
}

/// Reads `retention.jsonl` (missing: empty).
pub fn read_retention_log(store_dir: &Path) -> Result<Vec<RetentionEntry>, StoreError> {
    let path = store_dir.join(RETENTION_LOG);
    let mut text = String::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_string(&mut text).map_err(io_err(&path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StoreError::Io { path, source }),
    }
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|source| StoreError::Index {
                path: path.clone(),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn event(agent: &str, seq: u64) -> v1::Event {
        v1::Event {
            id: format!("id-{seq}"),
            seq,
            time: Some(Timestamp {
                seconds: 1_700_000_000 + i64::try_from(seq).unwrap(),
                nanos: 0,
            }),
            host: Some(v1::Host {
                hostname: agent.into(),
                agent_id: agent.into(),
                ..Default::default()
            }),
            body: Some(Body::FileOpen(v1::FileOpen {
                path: format!("/srv/ephi/{seq}"),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn of(instance: &str, seq: u64) -> v1::Event {
        let mut e = event("a", seq);
        e.host.as_mut().unwrap().instance_id = instance.into();
        e
    }

    #[test]
    fn each_instance_counts_its_own_seqs_and_a_change_is_recorded_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = small(dir.path());
        let store = Store::open(config.clone()).unwrap();
        let a = store
            .append("a", (1..=5).map(|s| of("i1", s)).collect(), |_| {})
            .unwrap();
        assert_eq!(
            (a.acked_seq, a.stored, a.records.len()),
            (5, 5, 5),
            "the first instance starts silently"
        );
        // A resend of the same instance: duplicates, acknowledged once.
        let a = store
            .append("a", (3..=5).map(|s| of("i1", s)).collect(), |_| {})
            .unwrap();
        assert_eq!((a.acked_seq, a.stored, a.duplicates), (5, 0, 3));
        // A new instance starts at 1: stored, after an alert naming both.
        let a = store
            .append("a", (1..=2).map(|s| of("i2", s)).collect(), |_| {})
            .unwrap();
        assert_eq!((a.acked_seq, a.stored, a.duplicates), (2, 2, 0));
        let Some(Body::Alert(alert)) = &a.records[0].event.body else {
            panic!("{:?}", a.records[0])
        };
        assert_eq!(alert.kind, v1::AlertKind::InstanceStarted as i32);
        assert!(
            alert
                .message
                .contains("instance i2 started after instance i1 (last seq 5"),
            "{}",
            alert.message
        );
        // The window is per instance: a new instance's space starts at its first event, and
        // a jump past the window from there is refused.
        let a = store.append("a", vec![of("i3", 1 << 40)], |_| {}).unwrap();
        assert_eq!((a.acked_seq, a.stored), (1 << 40, 1));
        let refused = store
            .append("a", vec![of("i3", (1 << 40) + (1 << 30))], |_| {})
            .unwrap_err();
        assert!(
            matches!(refused, StoreError::SeqJump { last, .. } if last == 1 << 40),
            "{refused}"
        );
        // Back to the first one: it continues where it was.
        let a = store.append("a", vec![of("i1", 6)], |_| {}).unwrap();
        assert_eq!((a.acked_seq, a.stored, a.records.len()), (6, 1, 2));
        assert!(a.records[0].event.host.as_ref().unwrap().instance_id == "i1");
        drop(store);
        let store = Store::open(config).unwrap();
        assert_eq!(
            (store.instance_seq("a", "i1"), store.instance_seq("a", "i2")),
            (6, 2)
        );
        assert_eq!(store.instance_seq("a", ""), 0);
        let a = store
            .append("a", vec![of("i2", 2), of("i2", 3)], |_| {})
            .unwrap();
        assert_eq!((a.acked_seq, a.stored, a.duplicates), (3, 1, 1));
        // Legacy (no instance) is one more sequence space of its own.
        let a = store.append("a", vec![event("a", 1)], |_| {}).unwrap();
        assert_eq!((a.acked_seq, a.stored), (1, 1));
        let report = crate::verify::verify(&crate::verify::VerifyOptions {
            store_dir: dir.path().to_owned(),
            agent: None,
            checkpoint_files: vec![],
            store_checkpoints: None,
            trusted_key: None,
            require_checkpoints: false,
            retention_max_age: None,
        })
        .unwrap();
        assert!(report.ok(), "{report:?}");
    }

    #[test]
    fn verify_fails_a_change_of_instance_no_alert_announces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(small(dir.path())).unwrap();
        store.append("a", vec![of("i1", 1)], |_| {}).unwrap();
        // Not what the server does (it stamps a batch with one instance): a record of another
        // instance slipped in without the alert, as a rewrite of the store might.
        store
            .append("a", vec![of("i1", 2), of("i2", 3)], |_| {})
            .unwrap();
        let report = crate::verify::verify(&crate::verify::VerifyOptions {
            store_dir: dir.path().to_owned(),
            agent: None,
            checkpoint_files: vec![],
            store_checkpoints: None,
            trusted_key: None,
            require_checkpoints: false,
            retention_max_age: None,
        })
        .unwrap();
        let problem = report.agents[0].problem.as_ref().expect("a problem");
        assert!(
            problem
                .message
                .contains("of instance i2 follows instance i1 with no instance alert"),
            "{problem}"
        );
    }

    #[test]
    fn new_instances_are_bounded_per_hour() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            max_new_instances_per_hour: 2,
            ..small(dir.path())
        };
        let store = Store::open(config).unwrap();
        let t0 = SystemTime::now();
        store.append_at("a", vec![of("i1", 1)], t0, |_| {}).unwrap();
        store.append_at("a", vec![of("i2", 1)], t0, |_| {}).unwrap();
        let refused = store
            .append_at("a", vec![of("i3", 1)], t0, |_| {})
            .unwrap_err();
        assert!(
            matches!(
                refused,
                StoreError::InstanceLimit {
                    started: 2,
                    max: 2,
                    ..
                }
            ),
            "{refused}"
        );
        // Known instances go on; an hour later a new one is accepted.
        store.append_at("a", vec![of("i1", 2)], t0, |_| {}).unwrap();
        let later = t0 + Duration::from_secs(3601);
        store
            .append_at("a", vec![of("i3", 1)], later, |_| {})
            .unwrap();
        assert_eq!(store.instance_seq("a", "i3"), 1);
    }

    fn small(dir: &Path) -> StoreConfig {
        StoreConfig {
            segment_max_bytes: 1024,
            ..StoreConfig::new(dir.to_owned())
        }
    }

    fn all_records(store: &Store, agent: &str) -> Vec<Arc<Record>> {
        let mut cursor = Cursor::new(Arc::from(agent), 1);
        let mut all = Vec::new();
        loop {
            let chunk = store.read(&mut cursor, 64).unwrap();
            if chunk.is_empty() {
                return all;
            }
            all.extend(chunk);
        }
    }

    fn assert_chain(dir: &Path, agent: &str, seqs: std::ops::RangeInclusive<u64>) {
        let store = Store::open(small(dir)).unwrap_or_else(|e| panic!("store opens again: {e}"));
        let records = all_records(&store, agent);
        let got: Vec<u64> = records.iter().map(|r| r.event.seq).collect();
        assert_eq!(got, seqs.collect::<Vec<_>>(), "every event once, no alert");
        let indexes: Vec<u64> = records.iter().map(|r| r.index).collect();
        assert_eq!(indexes, (1..=records.len() as u64).collect::<Vec<_>>());
        let report = crate::verify::verify(&crate::verify::VerifyOptions {
            store_dir: dir.to_owned(),
            ..Default::default()
        })
        .unwrap();
        assert!(
            report.agents.iter().all(|a| a.problem.is_none()),
            "{report:?}"
        );
    }

    #[test]
    fn a_failure_at_any_write_step_stores_nothing_and_the_retry_stores_everything_once() {
        let mut cases = 0;
        for step in Step::ALL {
            for errno in [libc::ENOSPC, libc::EIO] {
                for skip in 0..2 {
                    let dir = tempfile::tempdir().unwrap();
                    let store = Store::open(small(dir.path())).unwrap();
                    store
                        .append("a", (1..=10).map(|s| event("a", s)).collect(), |_| {})
                        .unwrap();
                    let before = store.head("a");
                    // The rollback step only runs after a failure: fail a write first.
                    if step == Step::Rollback {
                        faults::fail_at(Step::Append, skip, errno, 1);
                        faults::fail_at(step, 0, errno, 1);
                    } else {
                        faults::fail_at(step, skip, errno, 1);
                    }
                    let mut published = false;
                    let failed =
                        store.append("a", (11..=40).map(|s| event("a", s)).collect(), |_| {
                            published = true
                        });
                    let planned_left = faults::planned();
                    faults::clear();
                    if planned_left.contains(&step) {
                        // This step did not run this often in the batch: nothing to prove.
                        assert!(failed.is_ok());
                        continue;
                    }
                    cases += 1;
                    let error = failed.expect_err("the batch fails");
                    assert_eq!(error.is_full(), errno == libc::ENOSPC, "{error}");
                    assert!(!published, "{step:?}: a failed batch reaches no subscriber");
                    assert_eq!(store.head("a"), before, "{step:?}: memory never runs ahead");
                    // The disk has room again: the resend stores every event once.
                    let retried = store
                        .append("a", (11..=40).map(|s| event("a", s)).collect(), |_| {})
                        .unwrap_or_else(|e| panic!("{step:?} {errno} skip {skip}: {e}"));
                    assert_eq!((retried.stored, retried.duplicates), (30, 0), "{step:?}");
                    assert_eq!(retried.head.seq, 40);
                    drop(store);
                    assert_chain(dir.path(), "a", 1..=40);
                }
            }
        }
        assert!(cases >= 2 * Step::ALL.len(), "{cases} cases ran");
    }

    #[test]
    fn a_segment_whose_creation_was_cut_short_is_removed_and_reported() {
        for bytes in [Vec::new(), b"PGCHA".to_vec(), vec![0; 40], vec![0; 64]] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(small(dir.path())).unwrap();
            store
                .append("a", (1..=20).map(|s| event("a", s)).collect(), |_| {})
                .unwrap();
            let head = store.head("a");
            drop(store);
            let torn = dir
                .path()
                .join("agents/a")
                .join(chain::segment_file_name(head.index + 1));
            fs::write(&torn, &bytes).unwrap();
            let store = Store::open(small(dir.path())).unwrap();
            assert_eq!(store.head("a"), head);
            let repairs = store.take_repairs();
            assert_eq!(repairs.len(), 1, "{repairs:?}");
            assert_eq!(repairs[0].segment, torn);
            assert!(!torn.exists());
            let next = store.append("a", vec![event("a", 21)], |_| {}).unwrap();
            assert_eq!(next.head.seq, 21);
            drop(store);
            assert_chain(dir.path(), "a", 1..=21);
        }
        // Bytes that are not the start of this segment's header are not a torn creation.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(small(dir.path())).unwrap();
        store.append("a", vec![event("a", 1)], |_| {}).unwrap();
        drop(store);
        let other = dir
            .path()
            .join("agents/a")
            .join(chain::segment_file_name(2));
        fs::write(&other, b"something else").unwrap();
        assert!(Store::open(small(dir.path())).is_err());
        assert!(other.exists());
    }

    #[test]
    fn an_altered_last_record_is_refused_but_a_zero_filled_one_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path().to_owned())).unwrap();
        store
            .append("a", (1..=3).map(|s| event("a", s)).collect(), |_| {})
            .unwrap();
        drop(store);
        let (_, seg) = list_segments(&dir.path().join("agents/a")).unwrap()[0].clone();
        let good = fs::read(&seg).unwrap();
        let mut altered = good.clone();
        let n = altered.len();
        altered[n - 40] ^= 0x01;
        fs::write(&seg, &altered).unwrap();
        let error = Store::open(StoreConfig::new(dir.path().to_owned()))
            .err()
            .expect("an altered last record is refused");
        assert!(error.to_string().contains("altered, not torn"), "{error}");
        assert_eq!(fs::read(&seg).unwrap(), altered, "nothing was cut");
        let mut zeroed = good.clone();
        zeroed[n - 32..].fill(0);
        fs::write(&seg, &zeroed).unwrap();
        let store = Store::open(StoreConfig::new(dir.path().to_owned())).unwrap();
        assert_eq!(store.head("a").seq, 2);
        assert_eq!(store.take_repairs().len(), 1);
    }

    #[test]
    fn a_seq_far_above_the_last_one_is_refused_and_the_real_sequence_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            max_seq_jump: 1000,
            ..small(dir.path())
        };
        let store = Store::open(config.clone()).unwrap();
        store
            .append("a", (1..=10).map(|s| event("a", s)).collect(), |_| {})
            .unwrap();
        for forged in [
            vec![event("a", 1 << 62)],
            vec![event("a", 11), event("a", 1012)],
        ] {
            let error = store
                .append("a", forged, |_| panic!("nothing published"))
                .unwrap_err();
            assert!(
                matches!(
                    error,
                    StoreError::SeqJump {
                        last: 10,
                        max: 1000,
                        ..
                    }
                ),
                "{error}"
            );
        }
        assert_eq!(store.head("a").seq, 10);
        // Within the window: a gap, stored and announced.
        let ok = store.append("a", vec![event("a", 1010)], |_| {}).unwrap();
        assert_eq!((ok.acked_seq, ok.stored), (1010, 1));
        let real = store
            .append("a", (11..=1011).map(|s| event("a", s)).collect(), |_| {})
            .unwrap();
        assert_eq!((real.stored, real.acked_seq), (1, 1011));
        drop(store);
        let store = Store::open(config).unwrap();
        assert_eq!(store.head("a").seq, 1011);
    }

    #[test]
    fn collector_alerts_join_the_chain_without_touching_the_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(small(dir.path())).unwrap();
        store
            .append("a", (1..=3).map(|s| event("a", s)).collect(), |_| {})
            .unwrap();
        let alert = crate::liveness::silent_alert(
            "a",
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(3),
        );
        let raised = store.append("a", vec![alert], |_| {}).unwrap();
        assert_eq!((raised.acked_seq, raised.stored), (3, 0));
        assert_eq!((raised.head.index, raised.head.seq), (4, 3));
        let next = store.append("a", vec![event("a", 4)], |_| {}).unwrap();
        assert_eq!(next.records.len(), 1, "no gap: the alert took no seq");
        assert_eq!((next.head.index, next.head.seq), (5, 4));
    }

    #[test]
    fn dedup_gaps_rotation_and_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(small(dir.path())).unwrap();
        let a = store
            .append("a", (1..=20).map(|s| event("a", s)).collect(), |_| {})
            .unwrap();
        assert_eq!((a.acked_seq, a.stored, a.duplicates), (20, 20, 0));
        // Resend 15..=25: 15..=20 are duplicates.
        let b = store
            .append("a", (15..=25).map(|s| event("a", s)).collect(), |_| {})
            .unwrap();
        assert_eq!((b.acked_seq, b.stored, b.duplicates), (25, 5, 6));
        // A gap: 26..=29 never arrive.
        let c = store.append("a", vec![event("a", 30)], |_| {}).unwrap();
        assert_eq!(c.records.len(), 2, "alert + event");
        assert!(matches!(
            &c.records[0].event.body,
            Some(Body::Alert(x)) if x.expected_seq == 26 && x.received_seq == 30
        ));
        assert_eq!(c.head.index, 27);
        let segments = list_segments(&dir.path().join("agents/a")).unwrap();
        assert!(segments.len() > 2, "rotated: {segments:?}");
        drop(store);
        let store = Store::open(small(dir.path())).unwrap();
        assert_eq!(store.head("a"), c.head);
        let mut cursor = Cursor::new(Arc::from("a"), 1);
        let mut all = Vec::new();
        loop {
            let chunk = store.read(&mut cursor, 7).unwrap();
            if chunk.is_empty() {
                break;
            }
            all.extend(chunk);
        }
        let indexes: Vec<u64> = all.iter().map(|r| r.index).collect();
        assert_eq!(indexes, (1..=27).collect::<Vec<_>>());
        let seqs: Vec<u64> = all.iter().map(|r| r.event.seq).filter(|&s| s > 0).collect();
        assert_eq!(seqs, (1..=25).chain([30]).collect::<Vec<_>>());
        let since = store.first_index_since("a", 1_700_000_020);
        assert!(since > 1 && since <= 20, "{since}");
    }

    #[test]
    fn torn_tail_is_cut_but_tampering_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path().to_owned())).unwrap();
        store
            .append("a", (1..=3).map(|s| event("a", s)).collect(), |_| {})
            .unwrap();
        drop(store);
        let (_, seg) = list_segments(&dir.path().join("agents/a")).unwrap()[0].clone();
        let len = fs::metadata(&seg).unwrap().len();
        // Torn: half a record at the end.
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        file.set_len(len - 10).unwrap();
        let store = Store::open(StoreConfig::new(dir.path().to_owned())).unwrap();
        assert_eq!(store.head("a").seq, 2);
        let next = store.append("a", vec![event("a", 3)], |_| {}).unwrap();
        assert_eq!(next.head.index, 3);
        drop(store);
        // Tampered in the middle: refused.
        let mut bytes = fs::read(&seg).unwrap();
        bytes[HEADER_LEN as usize + 10] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        assert!(Store::open(StoreConfig::new(dir.path().to_owned())).is_err());
    }

    #[test]
    fn a_clock_years_ahead_removes_nothing_by_age_and_verify_refuses_such_a_removal() {
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        let config = StoreConfig {
            retention_max_age: day,
            ..small(dir.path())
        };
        let store = Store::open(config).unwrap();
        let now = SystemTime::now();
        store
            .append_at(
                "a",
                (1..=30).map(|s| event("a", s)).collect(),
                now - 3 * day,
                |_| {},
            )
            .unwrap();
        store
            .append_at("a", (31..=60).map(|s| event("a", s)).collect(), now, |_| {})
            .unwrap();
        let sealed_before = lock(&store.chain("a").unwrap()).sealed.len();
        assert!(sealed_before > 4);
        // Three years ahead: nothing goes.
        let ahead = store.apply_retention(now + 3 * 365 * day).unwrap();
        assert!(ahead.is_empty(), "{ahead:?}");
        // The right clock: only what was received three days ago goes.
        let removed = store.apply_retention(now).unwrap();
        assert!(!removed.is_empty());
        let cutoff = unix_secs(now) - 86_400;
        assert!(removed.iter().all(|r| r.newest_received.unwrap() < cutoff));
        assert!(
            store.all_sealed_received_after(cutoff),
            "fresh segments stay"
        );
        let options = crate::verify::VerifyOptions {
            store_dir: dir.path().to_owned(),
            retention_max_age: Some(day),
            ..Default::default()
        };
        let report = crate::verify::verify(&options).unwrap();
        assert!(report.ok(), "legitimate retention: {report:?}");
        // What an older collector with its clock ahead logged: a fresh segment "expired".
        let fresh = lock(&store.chain("a").unwrap()).sealed[0].clone();
        let mut forged = removed.last().unwrap().clone();
        forged.first_index = fresh.first_index;
        forged.last_index = fresh.last_index;
        forged.newest_received = Some(fresh.max_received);
        forged.removed = unix_secs(now + 3 * 365 * day);
        append_line(
            &dir.path().join(RETENTION_LOG),
            format!("{}\n", serde_json::to_string(&forged).unwrap()).as_bytes(),
        )
        .unwrap();
        let report = crate::verify::verify(&options).unwrap();
        assert!(!report.ok());
        let text = format!("{:?}", report.problems);
        assert!(text.contains("not legitimate retention"), "{text}");
    }

    #[test]
    fn retention_entries_are_signed_and_verify_takes_no_forged_or_unsigned_one() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Arc::new(
            crate::checkpoint::Signer::load_or_create(&dir.path().join("keys/cp.key")).unwrap(),
        );
        let trusted = signer.public_key().to_vec();
        let store_dir = dir.path().join("store");
        let store = Store::open(StoreConfig {
            retention_max_bytes: Some(3000),
            ..small(&store_dir)
        })
        .unwrap();
        let s = signer.clone();
        store.set_retention_signer(Box::new(move |b| s.sign_bytes(b)));
        store
            .append("a", (1..=60).map(|s| event("a", s)).collect(), |_| {})
            .unwrap();
        let removed = store.apply_retention(SystemTime::now()).unwrap();
        assert!(!removed.is_empty());
        let options = crate::verify::VerifyOptions {
            store_dir: store_dir.clone(),
            trusted_key: Some(trusted),
            ..Default::default()
        };
        let report = crate::verify::verify(&options).unwrap();
        assert!(
            report.ok(),
            "signed retention explains the removal: {report:?}"
        );
        // Someone deletes the next segment and appends an entry for it, unsigned, then one
        // copied from a real entry with the indexes changed.
        let oldest = lock(&store.chain("a").unwrap()).sealed[0].clone();
        drop(store);
        fs::remove_file(
            store_dir
                .join("agents/a")
                .join(chain::segment_file_name(oldest.first_index)),
        )
        .unwrap();
        let mut forged = removed.last().unwrap().clone();
        forged.first_index = oldest.first_index;
        forged.last_index = oldest.last_index;
        forged.last_hash = oldest.last_hash.clone();
        let mut unsigned = forged.clone();
        unsigned.signature.clear();
        for entry in [&forged, &unsigned] {
            append_line(
                &store_dir.join(RETENTION_LOG),
                format!("{}\n", serde_json::to_string(entry).unwrap()).as_bytes(),
            )
            .unwrap();
        }
        let report = crate::verify::verify(&options).unwrap();
        let text = format!("{report:?}");
        assert!(text.contains("signature does not verify"), "{text}");
        assert!(text.contains("not signed"), "{text}");
        assert!(
            text.contains("retention removed no such segment"),
            "the deletion stays unexplained: {text}"
        );
    }

    #[test]
    fn retention_by_size_logs_removals() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            retention_max_bytes: Some(3000),
            ..small(dir.path())
        };
        let store = Store::open(config).unwrap();
        store
            .append("a", (1..=60).map(|s| event("a", s)).collect(), |_| {})
            .unwrap();
        let before = store.bytes();
        let removed = store.apply_retention(SystemTime::now()).unwrap();
        assert!(!removed.is_empty());
        assert!(store.bytes() <= 3000 && store.bytes() < before);
        assert_eq!(read_retention_log(dir.path()).unwrap(), removed);
        // Reading from index 1 starts at the oldest retained record.
        let mut cursor = Cursor::new(Arc::from("a"), 1);
        let first = store.read(&mut cursor, 1).unwrap();
        assert_eq!(first[0].index, removed.last().unwrap().last_index + 1);
        assert!(store.append("../x", vec![], |_| {}).is_err());
    }
}
