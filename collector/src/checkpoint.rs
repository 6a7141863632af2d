//! Signed checkpoints: every N records or T seconds, the head of each agent's chain (index
//! and hash) is signed with the collector's ed25519 key and exported off the store — appended
//! to a JSON-lines file and/or sent as a syslog line — so that even someone able to rewrite a
//! whole chain (and its hashes) cannot make it match what was exported before.
//!
//! The signature covers the canonical bytes:
//!
//! ```text
//! "phiguard.v1.Checkpoint\0" | agent | "\0" | index u64 BE | chain_hash [32] | seconds i64 BE | nanos i32 BE
//!   [ | "clock\0" | boottime_ns u64 BE | monotonic_ns u64 BE | boot_id ]   (when `clock` is set)
//! ```
//!
//! Each checkpoint also records the collector's own clocks ([`ClockState`](v1::ClockState)):
//! the wall clock can be set by root, the boot-time clock cannot be set back, so `verify` can
//! tell a wall-clock step between two checkpoints of the same boot.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::{
        fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
        net::UnixDatagram,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use phiguard_proto::v1;
use ring::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519},
};
use tracing::{info, warn};

use crate::{
    fence::{Fence, FenceError},
    store::{self, Head},
};

/// Domain separation prefix of the signed bytes.
const DOMAIN: &[u8] = b"phiguard.v1.Checkpoint\0";
/// The key's file name where collectors before key custody created it, in the store
/// directory.
pub const LEGACY_KEY_NAME: &str = "checkpoint.key";
/// The signing key's default path: its own state directory beside the store's (the packaged
/// unit's `StateDirectory=phiguard-collector-key`), never inside it.
pub const DEFAULT_KEY: &str = "/var/lib/phiguard-collector-key/checkpoint.key";
/// Where syslog listens.
const SYSLOG_SOCKET: &str = "/dev/log";

/// Checkpoint signing, export or reading failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The fleet writer's fence could not be read ([`crate::fence`]).
    #[error(transparent)]
    Fence(FenceError),
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The signing key file is not a key.
    #[error("{}: not an ed25519 key written by phiguard-collector ({reason})", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A checkpoint line could not be parsed.
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The signature does not verify under the trusted key.
    #[error("checkpoint for agent {agent} at index {index}: {reason}")]
    BadSignature {
        /// The agent.
        agent: String,
        /// The index.
        index: u64,
        /// Why.
        reason: &'static str,
    },
    /// A public key that is not 32 bytes of hex.
    #[error("public key: {0}")]
    PublicKey(String),
    /// The signing key is kept where it would not protect anything (in the store directory,
    /// readable by others, owned by someone else): the collector does not start.
    #[error("checkpoint signing key {}: {problem}", path.display())]
    Custody {
        /// The key file.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The chain is shorter than a checkpoint this key signed before: it is not signed again.
    #[error("agent {agent}: the chain ends at record {head} but record {signed} was signed before: records were removed; not signing a shortened chain (run `phiguard-collector verify`)")]
    Shortened {
        /// The agent.
        agent: String,
        /// The chain's head now.
        head: u64,
        /// The highest index signed before.
        signed: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The bytes a checkpoint's signature covers.
pub fn canonical_bytes(cp: &v1::Checkpoint) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + cp.agent.len() + 64);
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(cp.agent.as_bytes());
    out.push(0);
    out.extend_from_slice(&cp.index.to_be_bytes());
    out.extend_from_slice(&cp.chain_hash);
    let time = cp.time.unwrap_or_default();
    out.extend_from_slice(&time.seconds.to_be_bytes());
    out.extend_from_slice(&time.nanos.to_be_bytes());
    if let Some(clock) = &cp.clock {
        out.extend_from_slice(b"clock\0");
        out.extend_from_slice(&clock.boottime_ns.to_be_bytes());
        out.extend_from_slice(&clock.monotonic_ns.to_be_bytes());
        out.extend_from_slice(clock.boot_id.as_bytes());
    }
    out
}

/// Where the kernel tells which boot this is.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; the clock ids are constants.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The collector's clocks now (boot time, monotonic time, boot id).
pub fn clock_state() -> v1::ClockState {
    v1::ClockState {
        boottime_ns: clock_ns(libc::CLOCK_BOOTTIME),
        monotonic_ns: clock_ns(libc::CLOCK_MONOTONIC),
        boot_id: fs::read_to_string(BOOT_ID)
            .map(|id| id.trim().to_owned())
            .unwrap_or_default(),
    }
}

/// Checks `cp`'s signature under `trusted` (32-byte ed25519 public key).
pub fn verify_signature(cp: &v1::Checkpoint, trusted: &[u8]) -> Result<(), CheckpointError> {
    let fail = |reason| CheckpointError::BadSignature {
        agent: cp.agent.clone(),
        index: cp.index,
        reason,
    };
    if cp.public_key != trusted {
        return Err(fail(
            "signed by a key that is not the trusted checkpoint key",
        ));
    }
    if cp.chain_hash.len() != 32 {
        return Err(fail("chain hash is not 32 bytes"));
    }
    UnparsedPublicKey::new(&ED25519, trusted)
        .verify(&canonical_bytes(cp), &cp.signature)
        .map_err(|_| fail("signature does not verify"))
}

/// Checks a retention entry's signature under `trusted`.
pub fn verify_retention(entry: &store::RetentionEntry, trusted: &[u8]) -> Result<(), &'static str> {
    if entry.signature.is_empty() {
        return Err("not signed");
    }
    let signature = hex::decode(&entry.signature).map_err(|_| "signature is not hex")?;
    UnparsedPublicKey::new(&ED25519, trusted)
        .verify(&entry.signed_bytes(), &signature)
        .map_err(|_| "signature does not verify under the trusted checkpoint key")
}

/// Parses a hex public key.
pub fn parse_public_key(hex_text: &str) -> Result<Vec<u8>, CheckpointError> {
    let bytes =
        hex::decode(hex_text.trim()).map_err(|e| CheckpointError::PublicKey(e.to_string()))?;
    if bytes.len() != 32 {
        return Err(CheckpointError::PublicKey(format!(
            "{} bytes, 32 expected",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The collector's checkpoint key.
pub struct Signer {
    key: Ed25519KeyPair,
}

impl Signer {
    /// Loads the key at `path` (hex PKCS#8, as written by [`Signer::load_or_create`]).
    pub fn load(path: &Path) -> Result<Signer, CheckpointError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        let bad = |reason: String| CheckpointError::BadKey {
            path: path.to_owned(),
            reason,
        };
        let der = hex::decode(text.trim()).map_err(|e| bad(e.to_string()))?;
        let key = Ed25519KeyPair::from_pkcs8(&der).map_err(|e| bad(e.to_string()))?;
        Ok(Signer { key })
    }

    /// Loads the key at `path`, creating it (mode 0600) and its `.pub` file when missing.
    pub fn load_or_create(path: &Path) -> Result<Signer, CheckpointError> {
        if path.exists() {
            return Signer::load(path);
        }
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| {
            CheckpointError::BadKey {
                path: path.to_owned(),
                reason: "key generation failed".into(),
            }
        })?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err(path))?;
        file.write_all(format!("{}\n", hex::encode(pkcs8.as_ref())).as_bytes())
            .map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
        let signer = Signer::load(path)?;
        let public = public_key_path(path);
        fs::write(&public, format!("{}\n", signer.public_key_hex())).map_err(io_err(&public))?;
        info!(key = %path.display(), public_key = %signer.public_key_hex(), "created checkpoint signing key");
        Ok(signer)
    }

    /// Loads (or creates) the key at `path` for a collector whose store is `store_dir`, after
    /// checking its custody: the key must be outside the store directory (a tamperer with the
    /// store would otherwise re-sign a rewritten chain), and the file must be mode 0600 (no
    /// group or other bits) and owned by the user the collector runs as. A key file left in
    /// the store by older collectors (`<store_dir>/checkpoint.key`) is refused too, so an
    /// upgrade never silently signs with a new key while the old one stays beside the data.
    pub fn open_in_custody(path: &Path, store_dir: &Path) -> Result<Signer, CheckpointError> {
        let custody = |problem: String| CheckpointError::Custody {
            path: path.to_owned(),
            problem,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
        }
        let store = fs::canonicalize(store_dir).map_err(io_err(store_dir))?;
        let real_dir = fs::canonicalize(dir).map_err(io_err(dir))?;
        let real_key = match fs::canonicalize(path) {
            Ok(real) => real,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                real_dir.join(path.file_name().unwrap_or_default())
            }
            Err(source) => return Err(io_err(path)(source)),
        };
        if real_key.starts_with(&store) || real_dir.starts_with(&store) {
            return Err(custody(format!(
                "it is inside the store directory {}: anyone able to rewrite the store could re-sign a rewritten chain with it. Set [checkpoint] key to a path outside the store (default {})",
                store.display(),
                DEFAULT_KEY
            )));
        }
        let legacy = store_dir.join(LEGACY_KEY_NAME);
        if legacy.exists() {
            return Err(CheckpointError::Custody {
                path: legacy.clone(),
                problem: format!(
                    "a checkpoint key is in the store directory {} (where collectors before key custody created it): anyone able to rewrite the store could re-sign it. Move it and its .pub file to the configured key path {} (`mv {} {}; mv {}.pub {}.pub`), owned by the collector's user, mode 0600; see docs/collector.md, \"Upgrading: the key out of the store\"",
                    store_dir.display(),
                    path.display(),
                    legacy.display(),
                    path.display(),
                    legacy.display(),
                    path.display(),
                ),
            });
        }
        let signer = Signer::load_or_create(path)?;
        let meta = fs::metadata(path).map_err(io_err(path))?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(custody(format!(
                "mode {mode:04o} lets its group or others read or change it; it must be 0600 (`chmod 600 {}`)",
                path.display()
            )));
        }
        // SAFETY: geteuid cannot fail and has no preconditions.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(custody(format!(
                "owned by uid {}, but the collector runs as uid {me}: the key must be owned by the collector's own user (`chown` it to that user)",
                meta.uid()
            )));
        }
        Ok(signer)
    }

    /// The public key.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// The public key, hex.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key())
    }

    /// Signs `bytes` (a retention entry's [`crate::store::RetentionEntry::signed_bytes`]).
    pub fn sign_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        self.key.sign(bytes).as_ref().to_vec()
    }

    /// Signs the head of `agent`'s chain at wall-clock `time`, with the clocks `clock`.
    pub fn sign(
        &self,
        agent: &str,
        head: &Head,
        time: SystemTime,
        clock: v1::ClockState,
    ) -> v1::Checkpoint {
        let mut cp = v1::Checkpoint {
            agent: agent.to_owned(),
            index: head.index,
            chain_hash: head.hash.to_vec(),
            time: Some(store::timestamp(time)),
            public_key: self.public_key().to_vec(),
            signature: Vec::new(),
            clock: Some(clock),
        };
        cp.signature = self.key.sign(&canonical_bytes(&cp)).as_ref().to_vec();
        cp
    }
}

/// Where the public key of the key at `path` is written.
pub fn public_key_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Where checkpoints go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportConfig {
    /// Append JSON lines here.
    pub file: Option<PathBuf>,
    /// Also send each as a syslog line (authpriv.info) to /dev/log.
    pub syslog: bool,
    /// Also append each to [`EXPORT_FILE_NAME`] in this directory: meant for another file
    /// system the store's writer cannot rewrite (the file append-only, `chattr +a`).
    pub dir: Option<PathBuf>,
}

/// The file checkpoints are appended to in [`ExportConfig::dir`].
pub const EXPORT_FILE_NAME: &str = "checkpoints.jsonl";

/// The exported copy's file in `dir`.
pub fn export_file(dir: &Path) -> PathBuf {
    dir.join(EXPORT_FILE_NAME)
}

/// The append-only inode flag of `FS_IOC_GETFLAGS` (`FS_APPEND_FL` in linux/fs.h).
const FS_APPEND_FL: libc::c_long = 0x20;

/// Whether the file system says `file` is append-only (`chattr +a`); None when it cannot
/// tell (a file system without attributes).
pub fn append_only(file: &File) -> Option<bool> {
    use std::os::fd::AsRawFd as _;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long into `flags`, which we own; the descriptor is
    // open for the whole call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    (rc == 0).then_some(flags & FS_APPEND_FL != 0)
}

/// Opens (creating) an append-only JSON-lines checkpoint file: `O_APPEND`, so an
/// append-only attribute on it never stops the collector, and never truncated.
fn open_append(path: &Path) -> Result<File, CheckpointError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let created = !path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(io_err(path))?;
    if created {
        // The new name must survive a crash as well as the lines written to it.
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))?;
        }
    }
    Ok(file)
}

/// Appends `line` and a newline to `file` and fsyncs it. On failure the partial line is cut
/// off again when the file allows it (an append-only file does not: the next line then
/// starts on a new line, so only the torn one is unreadable).
fn append_line(
    file: &mut File,
    path: &Path,
    line: &str,
    torn: &mut bool,
) -> Result<(), CheckpointError> {
    let before = file.metadata().map_err(io_err(path))?.len();
    let text = if *torn {
        format!("\n{line}\n")
    } else {
        format!("{line}\n")
    };
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_data());
    match written {
        Ok(()) => {
            *torn = false;
            Ok(())
        }
        Err(source) => {
            if file
                .set_len(before)
                .and_then(|()| file.sync_data())
                .is_err()
            {
                *torn = true;
            }
            Err(io_err(path)(source))
        }
    }
}

/// When to checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cadence {
    /// After this many new records of an agent.
    pub every_records: u64,
    /// After this long, if an agent's chain grew at all.
    pub every: Duration,
}

/// Signs and exports checkpoints on a cadence.
pub struct Checkpointer {
    signer: Signer,
    export: ExportConfig,
    cadence: Cadence,
    /// Per agent: index last checkpointed and when.
    last: Mutex<BTreeMap<String, (u64, Instant)>>,
    file: Mutex<Option<File>>,
    /// The exported copy (in [`ExportConfig::dir`]) and whether its last write was torn.
    exported: Mutex<Option<(File, bool)>>,
    /// When the newest checkpoint was signed (for the metrics).
    latest: Mutex<Option<(SystemTime, Instant)>>,
    /// Counts signed and unexported checkpoints, when set.
    metrics: Option<crate::metrics::Metrics>,
    /// Per agent: the highest index signed with this key (from the checkpoint file and the
    /// exported copy at start).
    signed: Mutex<BTreeMap<String, u64>>,
    /// The fleet writer's fence ([`crate::fence`]): every checkpoint holds it.
    fence: OnceLock<Arc<Fence>>,
}

/// Per agent, the highest index signed by `key` in the export file at `path`. Unreadable
/// lines are skipped (logged): this only guards against signing a shortened chain, `verify`
/// reports the file's problems.
fn highest_signed(path: &Path, key: &[u8]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(text) = fs::read_to_string(path) else {
        return out;
    };
    for (i, line) in text.lines().enumerate() {
        let json = line
            .find("checkpoint {")
            .map_or(line.trim(), |at| &line[at + 11..]);
        if json.is_empty() {
            continue;
        }
        match serde_json::from_str::<v1::Checkpoint>(json) {
            Ok(cp) if verify_signature(&cp, key).is_ok() => {
                let max = out.entry(cp.agent).or_insert(0);
                *max = cp.index.max(*max);
            }
            Ok(_) => {}
            Err(error) => {
                warn!(file = %path.display(), line = i + 1, %error, "unreadable checkpoint line skipped")
            }
        }
    }
    out
}

impl Checkpointer {
    /// A checkpointer signing with `signer`.
    pub fn new(
        signer: Signer,
        export: ExportConfig,
        cadence: Cadence,
    ) -> Result<Checkpointer, CheckpointError> {
        let file = export.file.as_deref().map(open_append).transpose()?;
        let exported = match &export.dir {
            Some(dir) => {
                let path = export_file(dir);
                let file = open_append(&path)?;
                if append_only(&file) != Some(true) {
                    warn!(file = %path.display(), "the exported checkpoint file is not append-only: as root, `chattr +a` it (and keep it on another file system than the store) so the collector's user cannot rewrite it");
                }
                Some((file, false))
            }
            None => None,
        };
        // What this key signed before, from every copy: deleting checkpoints from the store's
        // file does not make a shortened chain signable again.
        let mut signed = BTreeMap::new();
        let copies = export
            .file
            .iter()
            .cloned()
            .chain(export.dir.as_deref().map(export_file));
        for path in copies {
            for (agent, index) in highest_signed(&path, signer.public_key()) {
                let max = signed.entry(agent).or_insert(0);
                *max = index.max(*max);
            }
        }
        Ok(Checkpointer {
            signer,
            export,
            cadence,
            last: Mutex::new(BTreeMap::new()),
            signed: Mutex::new(signed),
            file: Mutex::new(file),
            exported: Mutex::new(exported),
            latest: Mutex::new(None),
            metrics: None,
            fence: OnceLock::new(),
        })
    }

    /// Counts checkpoints (signed, not exported) in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Checkpointer {
        self.metrics = Some(metrics);
        self
    }

    /// When the newest checkpoint was signed by this checkpointer (wall clock, and monotonic
    /// for its age); None before the first.
    pub fn latest(&self) -> Option<(SystemTime, Instant)> {
        *self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fails when `agent`'s chain, at `head`, is shorter than what this key signed before.
    pub fn not_shortened(&self, agent: &str, head: u64) -> Result<(), CheckpointError> {
        let signed = self
            .signed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(agent)
            .copied();
        match signed {
            Some(signed) if signed > head => Err(CheckpointError::Shortened {
                agent: agent.to_owned(),
                head,
                signed,
            }),
            _ => Ok(()),
        }
    }

    /// The signing key.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Checkpoints `agent` if its chain grew by `every_records` since the last checkpoint,
    /// or (with `timer`) if it grew at all and `every` has passed.
    pub fn maybe(&self, agent: &str, head: &Head, timer: bool) -> Option<v1::Checkpoint> {
        if head.index == 0 {
            return None;
        }
        let due = {
            let last = self
                .last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match last.get(agent) {
                None => true,
                Some(&(index, when)) => {
                    head.index >= index + self.cadence.every_records
                        || (timer && head.index > index && when.elapsed() >= self.cadence.every)
                }
            }
        };
        // A shortened chain was reported once at start; it is simply not signed.
        if !due || self.not_shortened(agent, head.index).is_err() {
            return None;
        }
        match self.checkpoint(agent, head) {
            Ok(cp) => Some(cp),
            Err(error) => {
                warn!(agent, %error, "checkpoint export failed");
                None
            }
        }
    }

    /// Puts checkpoints under `fence` (a fleet store writer's, the store's own): from now on
    /// each holds it, and a writer fenced off by a newer one ends at once rather than sign
    /// again ([`Fence::hold_or_end`]). Set once; a second fence is ignored.
    pub fn set_fence(&self, fence: Arc<Fence>) {
        let _ = self.fence.set(fence);
    }

    /// Signs and exports a checkpoint of `agent`'s head now.
    pub fn checkpoint(&self, agent: &str, head: &Head) -> Result<v1::Checkpoint, CheckpointError> {
        let _fence = self
            .fence
            .get()
            .map(|fence| fence.hold_or_end("checkpoint"))
            .transpose()
            .map_err(CheckpointError::Fence)?;
        self.not_shortened(agent, head.index)?;
        let cp = self
            .signer
            .sign(agent, head, SystemTime::now(), clock_state());
        let line = serde_json::to_string(&cp).expect("checkpoints serialise");
        if let Some(file) = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            let path = self.export.file.as_deref().unwrap_or(Path::new(""));
            // On a full disk, cut a half-written line off again: one torn line would make
            // the whole file unreadable for `verify`.
            let before = file.metadata().map_err(io_err(path))?.len();
            let written = file
                .write_all(format!("{line}\n").as_bytes())
                .and_then(|()| file.sync_data());
            if let Err(source) = written {
                let _ = file.set_len(before).and_then(|()| file.sync_data());
                return Err(io_err(path)(source));
            }
        }
        // Exported only once in the store's file: the copy never holds a checkpoint the
        // store's file lacks, so `verify` can tell checkpoints deleted from the store.
        if let (Some((file, torn)), Some(dir)) = (
            self.exported
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_mut(),
            self.export.dir.as_deref(),
        ) {
            if let Err(error) = append_line(file, &export_file(dir), &line, torn) {
                warn!(%error, agent, index = head.index, "checkpoint not exported to the second copy");
                if let Some(metrics) = &self.metrics {
                    metrics.checkpoint_export_failures.inc();
                }
            }
        }
        if self.export.syslog {
            if let Err(error) = send_syslog(&format!("checkpoint {line}")) {
                warn!(%error, "checkpoint syslog line not sent");
            }
        }
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(agent.to_owned(), (head.index, Instant::now()));
        *self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((SystemTime::now(), Instant::now()));
        if let Some(metrics) = &self.metrics {
            metrics.checkpoints.inc();
        }
        let mut signed = self
            .signed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let max = signed.entry(agent.to_owned()).or_insert(0);
        *max = head.index.max(*max);
        Ok(cp)
    }
}

/// Sends one authpriv.info line to the local syslog daemon.
fn send_syslog(message: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    // authpriv (10) * 8 + info (6) = 86.
    let line = format!("<86>phiguard-collector[{}]: {message}", std::process::id());
    socket.send_to(line.as_bytes(), SYSLOG_SOCKET)?;
    Ok(())
}

/// Reads exported checkpoints (JSON lines; syslog lines with a `checkpoint ` prefix are
/// accepted too, so a trail copied from syslog can be checked).
pub fn read_file(path: &Path) -> Result<Vec<v1::Checkpoint>, CheckpointError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CheckpointError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let json = match line.find("checkpoint {") {
            Some(at) => &line[at + "checkpoint ".len()..],
            None => line.trim(),
        };
        if json.is_empty() {
            continue;
        }
        let cp = serde_json::from_str(json).map_err(|e| CheckpointError::Parse {
            path: path.to_owned(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(cp);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_export_read_verify() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("keys/checkpoint.key");
        let signer = Signer::load_or_create(&key).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        let public = fs::read_to_string(public_key_path(&key)).unwrap();
        assert_eq!(public.trim(), signer.public_key_hex());
        let reloaded = Signer::load_or_create(&key).unwrap();
        assert_eq!(reloaded.public_key(), signer.public_key());
        let file = dir.path().join("cp.jsonl");
        let cp = Checkpointer::new(
            signer,
            ExportConfig {
                file: Some(file.clone()),
                syslog: false,
                dir: None,
            },
            Cadence {
                every_records: 10,
                every: Duration::from_secs(3600),
            },
        )
        .unwrap();
        let head = |index| Head {
            index,
            hash: [index as u8; 32],
            seq: index,
        };
        assert!(cp.maybe("a", &head(1), false).is_some(), "first one");
        assert!(cp.maybe("a", &head(5), true).is_none(), "not due");
        assert!(cp.maybe("a", &head(11), false).is_some(), "10 more records");
        let read = read_file(&file).unwrap();
        assert_eq!(read.len(), 2);
        let trusted = parse_public_key(&public).unwrap();
        for c in &read {
            verify_signature(c, &trusted).unwrap();
        }
        let mut forged = read[1].clone();
        forged.chain_hash = vec![9; 32];
        assert!(verify_signature(&forged, &trusted).is_err());
        // Started again on the same file: a shorter chain is never signed.
        let again = Checkpointer::new(
            Signer::load(&key).unwrap(),
            ExportConfig {
                file: Some(file.clone()),
                syslog: false,
                dir: None,
            },
            Cadence {
                every_records: 10,
                every: Duration::from_secs(3600),
            },
        )
        .unwrap();
        let error = again.checkpoint("a", &head(7)).unwrap_err();
        assert!(
            matches!(
                error,
                CheckpointError::Shortened {
                    head: 7,
                    signed: 11,
                    ..
                }
            ),
            "{error}"
        );
        assert!(again.maybe("a", &head(7), true).is_none());
        assert_eq!(read_file(&file).unwrap().len(), 2, "nothing signed");
        assert!(again.checkpoint("a", &head(12)).is_ok());
        let other = Signer::load_or_create(&dir.path().join("other.key")).unwrap();
        let foreign = other.sign("a", &head(11), SystemTime::now(), clock_state());
        assert!(verify_signature(&foreign, &trusted).is_err());
        // The clocks are signed: changed or removed, the signature fails.
        let mut clockless = read[1].clone();
        assert!(clockless.clock.as_ref().unwrap().boottime_ns > 0);
        clockless.clock = None;
        assert!(verify_signature(&clockless, &trusted).is_err());
        let mut earlier = read[1].clone();
        earlier.clock.as_mut().unwrap().boottime_ns -= 1;
        assert!(verify_signature(&earlier, &trusted).is_err());
    }

    #[test]
    fn the_key_is_refused_inside_the_store_readable_by_others_or_owned_by_another() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        fs::create_dir_all(&store).unwrap();
        let custody = |key: &Path| match Signer::open_in_custody(key, &store) {
            Err(e @ CheckpointError::Custody { .. }) => e.to_string(),
            Err(e) => panic!("not a custody error: {e}"),
            Ok(_) => panic!("{} accepted", key.display()),
        };
        let inside = store.join("keys/cp.key");
        let err = custody(&inside);
        assert!(
            err.contains("cp.key: it is inside the store directory"),
            "{err}"
        );
        assert!(!inside.exists(), "no key created inside the store");
        // Through a symlinked directory it is still inside.
        std::os::unix::fs::symlink(&store, dir.path().join("alias")).unwrap();
        let err = custody(&dir.path().join("alias/cp.key"));
        assert!(err.contains("inside the store directory"), "{err}");

        // A sibling whose name starts with the store's is not inside it (the packaged
        // layout: /var/lib/phiguard-collector and /var/lib/phiguard-collector-key).
        Signer::open_in_custody(&dir.path().join("store-key/cp.key"), &store).unwrap();
        let key = dir.path().join("keys/cp.key");
        let signer = Signer::open_in_custody(&key, &store).unwrap();
        assert_eq!(fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(key.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        let err = custody(&key);
        assert!(
            err.contains("mode 0640") && err.contains("chmod 600"),
            "{err}"
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            Signer::open_in_custody(&key, &store).unwrap().public_key(),
            signer.public_key()
        );
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
            let err = custody(&key);
            assert!(
                err.contains("owned by uid 65534, but the collector runs as uid 0"),
                "{err}"
            );
            std::os::unix::fs::chown(&key, Some(0), None).unwrap();
        }
        // The key older collectors left in the store: refused, naming both paths.
        fs::write(store.join(LEGACY_KEY_NAME), "x").unwrap();
        let err = custody(&key);
        assert!(
            err.contains("store/checkpoint.key: a checkpoint key is in the store directory")
                && err.contains(&format!("mv {}", store.join(LEGACY_KEY_NAME).display())),
            "{err}"
        );
    }

    #[test]
    fn checkpoints_are_exported_to_a_second_directory_after_the_store_file() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&dir.path().join("cp.key")).unwrap();
        let file = dir.path().join("store/cp.jsonl");
        let export = dir.path().join("export");
        let cp = Checkpointer::new(
            signer,
            ExportConfig {
                file: Some(file.clone()),
                syslog: false,
                dir: Some(export.clone()),
            },
            Cadence {
                every_records: 10,
                every: Duration::from_secs(3600),
            },
        )
        .unwrap();
        let head = |index| Head {
            index,
            hash: [index as u8; 32],
            seq: index,
        };
        cp.checkpoint("a", &head(3)).unwrap();
        cp.checkpoint("a", &head(9)).unwrap();
        assert_eq!(
            read_file(&file).unwrap(),
            read_file(&export_file(&export)).unwrap()
        );
        assert_eq!(read_file(&export_file(&export)).unwrap().len(), 2);
        // The store's file emptied behind the collector's back: the exported copy still
        // stops it from signing a shortened chain.
        drop(cp);
        fs::write(&file, "").unwrap();
        let again = Checkpointer::new(
            Signer::load(&dir.path().join("cp.key")).unwrap(),
            ExportConfig {
                file: Some(file.clone()),
                syslog: false,
                dir: Some(export.clone()),
            },
            Cadence {
                every_records: 10,
                every: Duration::from_secs(3600),
            },
        )
        .unwrap();
        assert!(matches!(
            again.checkpoint("a", &head(5)),
            Err(CheckpointError::Shortened { signed: 9, .. })
        ));
    }
}
