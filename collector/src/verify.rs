//! `phiguard-collector verify`: walks every agent's chain from its first segment to its
//! last record, and reports the first broken, missing or reordered record of each agent
//! (agent, segment, byte offset, index). It then checks the chain against the exported,
//! signed checkpoints, so a chain rewritten from scratch — consistent in itself — still fails.
//!
//! What is checked, per agent:
//! - framing (length, truncation) and that each record decodes;
//! - each record's hash = sha256(previous hash ‖ record): an altered record fails here;
//! - indexes run 1, 2, 3… across segments (a deleted record or segment shows as missing, a
//!   swapped one as out of order); each segment header continues the previous segment's hash;
//! - event seqs increase within each agent instance (`host.instance_id`; "" for agents that
//!   send none), every seq jump is announced by a gap alert just before it, and every change
//!   of instance by an ALERT_KIND_INSTANCE_STARTED alert naming the new instance;
//! - an oldest segment that does not start at index 1 is explained by `retention.jsonl`;
//! - every checkpoint's signature verifies under the trusted key, and the chain's hash at
//!   the checkpoint's index equals the signed one (and the chain reaches that index).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    fs::File,
    io::{self, BufReader},
    path::{Path, PathBuf},
};

use phiguard_proto::v1::{self, event::Body};
use prost::Message as _;

use crate::{
    chain::{self, record_hash, Hash, RecordReader, SegmentHeader, GENESIS, HEADER_LEN},
    checkpoint::{self, CheckpointError},
    identity,
    store::{self, StoreError, AGENTS_DIR},
};

/// What `verify` could not even start on.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The store directory could not be listed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Checkpoints or the key could not be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What to verify.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The store's root directory.
    pub store_dir: PathBuf,
    /// Only this agent.
    pub agent: Option<String>,
    /// Checkpoint files (JSON lines or syslog lines) or directories of them (every regular
    /// file in it, e.g. an `export_dir`): the chains are checked against all of them.
    pub checkpoint_files: Vec<PathBuf>,
    /// The store's own checkpoint file (`[checkpoint] file`): every checkpoint found in the
    /// other copies must also be in it, or checkpoints were deleted from the store's file.
    pub store_checkpoints: Option<PathBuf>,
    /// The ed25519 public key checkpoints must be signed with (32 bytes).
    pub trusted_key: Option<Vec<u8>>,
    /// A chain with records that no signed checkpoint covers is a problem (when any
    /// checkpoint was read at all): its checkpoints were removed from every copy given, or
    /// a chain was added behind the collector's back. Every chain is signed at its first
    /// record, so only a collector killed in that instant leaves one legitimately.
    pub require_checkpoints: bool,
    /// The configured retention age: removals by age in `retention.jsonl` are checked against
    /// it and the newest stored record (a removal made on a clock far ahead is not
    /// legitimate retention).
    pub retention_max_age: Option<std::time::Duration>,
}

/// The first problem found in an agent's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The agent.
    pub agent: String,
    /// The segment file, when the problem is in one.
    pub segment: Option<String>,
    /// Byte offset in the segment.
    pub offset: Option<u64>,
    /// The chain index concerned.
    pub index: Option<u64>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent {}", self.agent)?;
        if let Some(segment) = &self.segment {
            write!(f, ", segment {segment}")?;
        }
        if let Some(offset) = self.offset {
            write!(f, ", offset {offset}")?;
        }
        if let Some(index) = self.index {
            write!(f, ", record {index}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The result for one agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// The agent.
    pub agent: String,
    /// Segments read.
    pub segments: usize,
    /// Records that checked out.
    pub records: u64,
    /// Index of the first retained record.
    pub first_index: u64,
    /// Checkpoints matched against the chain.
    pub checkpoints: usize,
    /// Checkpoints older than the retained chain (removed by retention).
    pub checkpoints_pruned: usize,
    /// When the collector received the newest record (Unix s; 0 without records).
    pub newest_received: i64,
    /// The first problem, if any.
    pub problem: Option<Problem>,
}

/// The result of a verification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// One entry per agent, by name.
    pub agents: Vec<AgentReport>,
    /// Problems not tied to a readable chain (forged checkpoints, missing chains).
    pub problems: Vec<Problem>,
    /// Checkpoints read.
    pub checkpoints_read: usize,
    /// Findings that are not failures: the collector's wall clock stepped between two
    /// checkpoints of one boot (see [`clock_steps`]).
    pub notes: Vec<String>,
}

impl Report {
    /// Whether everything checked out.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.agents.iter().all(|a| a.problem.is_none())
    }
}

struct Walk<'a> {
    agent: String,
    wanted: &'a BTreeSet<u64>,
    hashes: BTreeMap<u64, Hash>,
    report: AgentReport,
    last_index: u64,
}

impl Walk<'_> {
    fn fail(
        &mut self,
        segment: &Path,
        offset: Option<u64>,
        index: Option<u64>,
        message: String,
    ) -> Option<()> {
        self.report.problem = Some(Problem {
            agent: self.agent.clone(),
            segment: segment
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
            offset,
            index,
            message,
        });
        None
    }

    /// Walks the whole chain; `None` once a problem is recorded.
    fn run(&mut self, dir: &Path, retention: &[store::RetentionEntry]) -> Option<()> {
        let segments = match store::list_segments(dir) {
            Ok(s) => s,
            Err(e) => return self.fail(dir, None, None, e.to_string()),
        };
        let mut hash = GENESIS;
        let mut expected = 1;
        // Each instance's last seq, the instance that stored last, an announced change.
        let mut last_seqs: BTreeMap<String, u64> = BTreeMap::new();
        let mut current = String::new();
        let mut announced_instance: Option<String> = None;
        let mut announced_gap: Option<(u64, u64)> = None;
        for (i, (named_first, path)) in segments.iter().enumerate() {
            self.report.segments += 1;
            let file = match File::open(path) {
                Ok(f) => f,
                Err(e) => return self.fail(path, None, None, e.to_string()),
            };
            let mut reader = BufReader::new(file);
            let header = match SegmentHeader::read_from(&mut reader) {
                Ok(h) => h,
                Err(e) => return self.fail(path, Some(0), None, e.to_string()),
            };
            if header.first_index != *named_first {
                return self.fail(
                    path,
                    Some(0),
                    Some(header.first_index),
                    format!(
                        "header says the segment starts at record {}, its name says {named_first}",
                        header.first_index
                    ),
                );
            }
            if i == 0 {
                self.report.first_index = header.first_index;
                if header.first_index == 1 {
                    if header.prev_hash != GENESIS {
                        return self.fail(
                            path,
                            Some(0),
                            Some(1),
                            "first segment does not start the chain (previous hash not zero)"
                                .into(),
                        );
                    }
                } else {
                    let explained = retention.iter().any(|r| {
                        r.agent == self.agent
                            && r.last_index + 1 == header.first_index
                            && r.last_hash == hex::encode(header.prev_hash)
                    });
                    if !explained {
                        return self.fail(
                            path,
                            Some(0),
                            Some(header.first_index),
                            format!(
                                "records 1..{} are missing and retention removed no such segment",
                                header.first_index
                            ),
                        );
                    }
                }
                hash = header.prev_hash;
                expected = header.first_index;
            } else {
                if header.first_index != expected {
                    return self.fail(
                        path,
                        Some(0),
                        Some(expected),
                        format!(
                            "segment starts at record {}, record {expected} expected: records missing",
                            header.first_index
                        ),
                    );
                }
                if header.prev_hash != hash {
                    return self.fail(
                        path,
                        Some(0),
                        Some(expected),
                        "segment header does not continue the previous segment's hash".into(),
                    );
                }
            }
            for item in RecordReader::new(reader, HEADER_LEN, None) {
                let raw = match item {
                    Ok(raw) => raw,
                    Err(chain::ChainError::Framing { offset, reason }) => {
                        return self.fail(path, Some(offset), Some(expected), reason)
                    }
                    Err(e) => return self.fail(path, None, Some(expected), e.to_string()),
                };
                let computed = record_hash(&hash, &raw.body);
                let record = match v1::StoredRecord::decode(raw.body.as_slice()) {
                    Ok(r) => r,
                    Err(e) => {
                        return self.fail(
                            path,
                            Some(raw.offset),
                            Some(expected),
                            format!("record altered: undecodable ({e})"),
                        )
                    }
                };
                if record.index != expected {
                    let message = if record.index > expected {
                        format!(
                            "record {} found where record {expected} was expected: record(s) missing or out of order",
                            record.index
                        )
                    } else {
                        format!(
                            "record {} found after record {}: out of order",
                            record.index,
                            expected - 1
                        )
                    };
                    return self.fail(path, Some(raw.offset), Some(expected), message);
                }
                if computed != raw.hash {
                    return self.fail(
                        path,
                        Some(raw.offset),
                        Some(expected),
                        "record altered: hash mismatch (its bytes, its hash or the record before it changed)".into(),
                    );
                }
                if let Some(received) = &record.received {
                    self.report.newest_received = self.report.newest_received.max(received.seconds);
                }
                let event = record.event.unwrap_or_default();
                let instance = event.host.as_ref().map_or("", |h| h.instance_id.as_str());
                if let Some(Body::Alert(alert)) = &event.body {
                    if alert.kind == v1::AlertKind::SequenceGap as i32 {
                        announced_gap = Some((alert.expected_seq, alert.received_seq));
                    }
                    if alert.kind == v1::AlertKind::InstanceStarted as i32 {
                        announced_instance = Some(instance.to_owned());
                    }
                } else if event.seq > 0 {
                    if instance != current {
                        // The first instance met (the chain's start or what retention left)
                        // needs no announcement; any later change does.
                        if !last_seqs.is_empty() && announced_instance.as_deref() != Some(instance)
                        {
                            return self.fail(
                                path,
                                Some(raw.offset),
                                Some(expected),
                                format!(
                                    "event seq {} of instance {} follows instance {} with no instance alert",
                                    event.seq,
                                    store::short_instance(instance),
                                    store::short_instance(&current)
                                ),
                            );
                        }
                        instance.clone_into(&mut current);
                    }
                    announced_instance = None;
                    let last_seq = last_seqs.get(instance).copied().unwrap_or(0);
                    if event.seq <= last_seq {
                        return self.fail(
                            path,
                            Some(raw.offset),
                            Some(expected),
                            format!("event seq {} after seq {last_seq}: out of order", event.seq),
                        );
                    }
                    if event.seq > last_seq + 1
                        && announced_gap != Some((last_seq + 1, event.seq))
                        // The oldest retained record may follow removed ones.
                        && !(last_seq == 0 && expected > 1)
                    {
                        return self.fail(
                            path,
                            Some(raw.offset),
                            Some(expected),
                            format!(
                                "events seq {}..{} missing with no gap alert",
                                last_seq + 1,
                                event.seq
                            ),
                        );
                    }
                    last_seqs.insert(instance.to_owned(), event.seq);
                    announced_gap = None;
                }
                hash = raw.hash;
                if self.wanted.contains(&record.index) {
                    self.hashes.insert(record.index, hash);
                }
                self.report.records += 1;
                self.last_index = record.index;
                expected += 1;
            }
        }
        Some(())
    }
}

fn check_checkpoints(walk: &mut Walk<'_>, checkpoints: &[&v1::Checkpoint]) {
    if walk.report.problem.is_some() {
        return;
    }
    for cp in checkpoints {
        if cp.index < walk.report.first_index {
            walk.report.checkpoints_pruned += 1;
            continue;
        }
        let problem = if cp.index > walk.last_index {
            Some(format!(
                "the chain ends at record {} but a signed checkpoint covers record {}: records removed from the end",
                walk.last_index, cp.index
            ))
        } else if walk.hashes.get(&cp.index).map(|h| h.as_slice()) != Some(cp.chain_hash.as_slice())
        {
            Some(format!(
                "record {} does not match the signed checkpoint of {}: the chain was rewritten",
                cp.index,
                cp.time
                    .map_or_else(String::new, |t| crate::tail::rfc3339(&t))
            ))
        } else {
            None
        };
        if let Some(message) = problem {
            walk.report.problem = Some(Problem {
                agent: walk.agent.clone(),
                segment: None,
                offset: None,
                index: Some(cp.index),
                message,
            });
            return;
        }
        walk.report.checkpoints += 1;
    }
}

/// Verifies the store.
pub fn verify(options: &VerifyOptions) -> Result<Report, VerifyError> {
    let mut report = Report::default();
    let mut checkpoints = Vec::new();
    let mut sources = Vec::new();
    for file in checkpoint_sources(&options.checkpoint_files)? {
        for cp in checkpoint::read_file(&file)? {
            checkpoints.push(cp);
            sources.push(file.clone());
        }
    }
    report.checkpoints_read = checkpoints.len();
    let mut valid: BTreeMap<String, Vec<&v1::Checkpoint>> = BTreeMap::new();
    let mut exported: BTreeMap<&str, Vec<(&v1::Checkpoint, &Path)>> = BTreeMap::new();
    for (cp, source) in checkpoints.iter().zip(&sources) {
        if options.agent.as_ref().is_some_and(|a| *a != cp.agent) {
            continue;
        }
        let trusted = match &options.trusted_key {
            Some(key) => key,
            None => {
                report.problems.push(Problem {
                    agent: cp.agent.clone(),
                    segment: None,
                    offset: None,
                    index: Some(cp.index),
                    message: "no trusted checkpoint key to check signatures with".into(),
                });
                break;
            }
        };
        match checkpoint::verify_signature(cp, trusted) {
            Ok(()) => {
                valid.entry(cp.agent.clone()).or_default().push(cp);
                exported.entry(&cp.agent).or_default().push((cp, source));
            }
            Err(e) => report.problems.push(Problem {
                agent: cp.agent.clone(),
                segment: None,
                offset: None,
                index: Some(cp.index),
                message: e.to_string(),
            }),
        }
    }
    if let Some(store_file) = &options.store_checkpoints {
        check_store_copy(&mut report, store_file, &exported)?;
    }
    report.notes = clock_steps(valid.values().flatten().copied());
    let mut retention = store::read_retention_log(&options.store_dir)?;
    if let Some(trusted) = &options.trusted_key {
        // Only signed entries explain removed records: anyone who can delete a segment can
        // also append a line.
        retention.retain(|r| match checkpoint::verify_retention(r, trusted) {
            Ok(()) => true,
            Err(why) => {
                report.problems.push(Problem {
                    agent: r.agent.clone(),
                    segment: Some(chain::segment_file_name(r.first_index)),
                    offset: None,
                    index: Some(r.first_index),
                    message: format!(
                        "{}: retention entry for records {}..={}: {why} (forged, or written by a collector before signed retention)",
                        store::RETENTION_LOG,
                        r.first_index,
                        r.last_index
                    ),
                });
                false
            }
        });
    }
    let agents_dir = options.store_dir.join(AGENTS_DIR);
    let mut agents = BTreeSet::new();
    match std::fs::read_dir(&agents_dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|source| VerifyError::Io {
                    path: agents_dir.clone(),
                    source,
                })?;
                agents.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(VerifyError::Io {
                path: agents_dir,
                source,
            })
        }
    }
    if let Some(only) = &options.agent {
        agents.retain(|a| a == only);
    }
    for agent in valid.keys() {
        if !agents.contains(agent) {
            report.problems.push(Problem {
                agent: agent.clone(),
                segment: None,
                offset: None,
                index: None,
                message: "signed checkpoints exist but the agent's chain is missing".into(),
            });
        }
    }
    for agent in agents {
        if !identity::valid_identity(&agent) {
            report.problems.push(Problem {
                agent: agent.clone(),
                segment: None,
                offset: None,
                index: None,
                message: "not a valid agent directory name".into(),
            });
            continue;
        }
        let cps = valid.get(&agent).cloned().unwrap_or_default();
        let wanted: BTreeSet<u64> = cps.iter().map(|c| c.index).collect();
        let mut walk = Walk {
            agent: agent.clone(),
            wanted: &wanted,
            hashes: BTreeMap::new(),
            report: AgentReport {
                agent: agent.clone(),
                first_index: 1,
                ..Default::default()
            },
            last_index: 0,
        };
        let dir = agents_dir.join(&agent);
        if walk.run(&dir, &retention).is_some() {
            check_checkpoints(&mut walk, &cps);
        }
        let r = &mut walk.report;
        if options.require_checkpoints
            && report.checkpoints_read > 0
            && r.problem.is_none()
            && r.records > 0
            && r.checkpoints == 0
            && r.checkpoints_pruned == 0
        {
            r.problem = Some(Problem {
                agent: agent.clone(),
                segment: None,
                offset: None,
                index: Some(r.first_index),
                message: format!(
                    "{} records and no signed checkpoint covers any of them: its checkpoints were removed from every copy read, or the chain was added behind the collector's back (--allow-no-checkpoints checks it alone)",
                    r.records
                ),
            });
        }
        report.agents.push(walk.report);
    }
    if options.agent.is_none() {
        if let Some(max_age) = options.retention_max_age {
            let newest = report.agents.iter().map(|a| a.newest_received).max();
            if let Some(newest) = newest.filter(|n| *n > 0) {
                check_retention_times(&mut report, &retention, max_age, newest);
            }
        }
    }
    Ok(report)
}

/// The files behind `paths`: a file as it is, a directory's regular files by name.
fn checkpoint_sources(paths: &[PathBuf]) -> Result<Vec<PathBuf>, VerifyError> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push(path.clone());
            continue;
        }
        let io = |source| VerifyError::Io {
            path: path.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_type().map_err(io)?.is_file() {
                files.push(entry.path());
            }
        }
        files.sort();
        out.extend(files);
    }
    Ok(out)
}

/// Every signed checkpoint in a copy other than the store's own file must also be in that
/// file: the collector writes the store's file first and exports only what it holds, so one
/// missing there was deleted from it (and a rewritten file would have hidden it).
fn check_store_copy(
    report: &mut Report,
    store_file: &Path,
    copies: &BTreeMap<&str, Vec<(&v1::Checkpoint, &Path)>>,
) -> Result<(), VerifyError> {
    let same = |a: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(store_file)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == store_file,
    };
    let in_store: BTreeSet<(String, u64, Vec<u8>)> = checkpoint::read_file(store_file)?
        .into_iter()
        .map(|cp| (cp.agent, cp.index, cp.signature))
        .collect();
    for (agent, cps) in copies {
        let mut missing: Vec<(&v1::Checkpoint, &Path)> = cps
            .iter()
            .filter(|(cp, source)| {
                !same(source)
                    && !in_store.contains(&(cp.agent.clone(), cp.index, cp.signature.clone()))
            })
            .copied()
            .collect();
        if missing.is_empty() {
            continue;
        }
        missing.sort_by_key(|(cp, _)| cp.index);
        missing.dedup_by_key(|(cp, _)| (cp.index, cp.signature.clone()));
        let (first, source) = missing[0];
        let last = missing[missing.len() - 1].0;
        report.problems.push(Problem {
            agent: (*agent).to_owned(),
            segment: None,
            offset: None,
            index: Some(first.index),
            message: format!(
                "{} signed checkpoint(s) (records {}..={}) are in {} but not in the store's checkpoint file {}: checkpoints were deleted from the store",
                missing.len(),
                first.index,
                last.index,
                source.display(),
                store_file.display()
            ),
        });
    }
    Ok(())
}

/// Largest difference between the wall clock's and the boot-time clock's advance, between
/// two checkpoints, that is not reported (signing takes time, NTP slews).
pub const CLOCK_STEP_TOLERANCE_NS: i128 = 2_000_000_000;

/// The wall-clock steps the signed clock states show: between consecutive checkpoints (all
/// agents, by boot time) of the same boot, the wall clock should advance as the boot-time
/// clock did. One line per step larger than [`CLOCK_STEP_TOLERANCE_NS`].
pub fn clock_steps<'a>(checkpoints: impl IntoIterator<Item = &'a v1::Checkpoint>) -> Vec<String> {
    let mut by_boot: BTreeMap<&str, Vec<(u64, i128, &v1::Checkpoint)>> = BTreeMap::new();
    for cp in checkpoints {
        let (Some(clock), Some(time)) = (&cp.clock, &cp.time) else {
            continue;
        };
        if clock.boot_id.is_empty() || clock.boottime_ns == 0 {
            continue;
        }
        let wall = i128::from(time.seconds) * 1_000_000_000 + i128::from(time.nanos);
        by_boot
            .entry(clock.boot_id.as_str())
            .or_default()
            .push((clock.boottime_ns, wall, cp));
    }
    let mut out = Vec::new();
    for (boot, mut cps) in by_boot {
        cps.sort_by_key(|(boottime, wall, _)| (*boottime, *wall));
        for pair in cps.windows(2) {
            let ((b0, w0, c0), (b1, w1, c1)) = (pair[0], pair[1]);
            let step = (w1 - w0) - i128::from(b1 - b0);
            if step.abs() > CLOCK_STEP_TOLERANCE_NS {
                let at = |c: &v1::Checkpoint| {
                    c.time
                        .map_or_else(String::new, |t| crate::tail::rfc3339(&t))
                };
                out.push(format!(
                    "the collector's wall clock stepped {:+.1} s (boot {boot}) between the checkpoint of {} record {} signed at {} and that of {} record {} signed at {}",
                    step as f64 / 1e9,
                    c0.agent,
                    c0.index,
                    at(c0),
                    c1.agent,
                    c1.index,
                    at(c1),
                ));
            }
        }
    }
    out
}

/// Every removal by age must be one the store's own time allows: the removed segment's
/// newest record older than the retention age, and the removal made no further than
/// [`store::RETENTION_CLOCK_BOUND`] past, measured from the newest record stored (the
/// collector pauses retention by age beyond that). A removal made on a clock years ahead
/// fails here.
fn check_retention_times(
    report: &mut Report,
    retention: &[store::RetentionEntry],
    max_age: std::time::Duration,
    newest: i64,
) {
    let bound = i64::try_from(store::RETENTION_CLOCK_BOUND.as_secs()).unwrap_or(i64::MAX);
    let max_age = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    for r in retention.iter().filter(|r| r.reason == "age") {
        // A segment too young to expire, relative to the store's own newest record.
        let too_young = r
            .newest_received
            .map(|t| newest.saturating_sub(t))
            .filter(|age| (*age).max(0).saturating_add(bound) < max_age);
        let why = match too_young {
            Some(age) => format!(
                "its newest record was received {:.1} days before the newest stored record, {} days are kept",
                age as f64 / 86_400.0,
                max_age / 86_400
            ),
            None if r.removed > newest.saturating_add(bound) => format!(
                "it was removed {:.1} days after the newest stored record was received",
                (r.removed - newest) as f64 / 86_400.0
            ),
            None => continue,
        };
        report.problems.push(Problem {
            agent: r.agent.clone(),
            segment: Some(chain::segment_file_name(r.first_index)),
            offset: None,
            index: Some(r.first_index),
            message: format!(
                "retention removed records {}..={} as expired, but {why}: not legitimate retention (was the clock ahead?)",
                r.first_index, r.last_index
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, time::Duration};

    use super::*;
    use crate::{
        checkpoint::{Cadence, Checkpointer, ExportConfig, Signer},
        store::{Store, StoreConfig},
    };

    fn event(seq: u64) -> v1::Event {
        v1::Event {
            id: format!("e{seq}"),
            seq,
            host: Some(v1::Host {
                hostname: "a".into(),
                agent_id: "a".into(),
                ..Default::default()
            }),
            body: Some(Body::Exec(Default::default())),
            ..Default::default()
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        options: VerifyOptions,
    }

    fn fixture(events: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        let store = Store::open(StoreConfig {
            segment_max_bytes: 2048,
            ..StoreConfig::new(store_dir.clone())
        })
        .unwrap();
        let signer = Signer::load_or_create(&dir.path().join("cp.key")).unwrap();
        let trusted = signer.public_key().to_vec();
        let cps = dir.path().join("cp.jsonl");
        let checkpointer = Checkpointer::new(
            signer,
            ExportConfig {
                file: Some(cps.clone()),
                syslog: false,
                dir: None,
            },
            Cadence {
                every_records: 10,
                every: Duration::from_secs(60),
            },
        )
        .unwrap();
        for seq in 1..=events {
            let a = store.append("a", vec![event(seq)], |_| {}).unwrap();
            checkpointer.maybe("a", &a.head, false);
        }
        Fixture {
            options: VerifyOptions {
                store_dir,
                agent: None,
                checkpoint_files: vec![cps],
                store_checkpoints: None,
                require_checkpoints: true,
                trusted_key: Some(trusted),
                retention_max_age: None,
            },
            dir,
        }
    }

    fn segment(f: &Fixture, n: usize) -> PathBuf {
        store::list_segments(&f.options.store_dir.join("agents/a")).unwrap()[n]
            .1
            .clone()
    }

    fn problem(f: &Fixture) -> Problem {
        let report = verify(&f.options).unwrap();
        assert!(!report.ok());
        report.agents[0]
            .problem
            .clone()
            .unwrap_or_else(|| report.problems[0].clone())
    }

    #[test]
    fn intact_chain_verifies() {
        let f = fixture(40);
        let report = verify(&f.options).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.agents[0].records, 40);
        assert!(report.agents[0].checkpoints >= 4);
        assert!(report.agents[0].segments > 1);
    }

    #[test]
    fn a_wall_clock_step_between_checkpoints_of_one_boot_is_noted() {
        let cp = |index: u64, wall_s: i64, boot_s: u64, boot: &str| v1::Checkpoint {
            agent: "a".into(),
            index,
            time: Some(pbjson_types::Timestamp {
                seconds: wall_s,
                nanos: 0,
            }),
            clock: Some(v1::ClockState {
                boottime_ns: boot_s * 1_000_000_000,
                monotonic_ns: boot_s * 1_000_000_000,
                boot_id: boot.into(),
            }),
            ..Default::default()
        };
        let steady = [cp(1, 1000, 10, "b1"), cp(2, 1060, 70, "b1")];
        assert!(clock_steps(&steady).is_empty());
        // A reboot starts boot time again: not a step.
        let rebooted = [cp(1, 1000, 10, "b1"), cp(2, 5000, 5, "b2")];
        assert!(clock_steps(&rebooted).is_empty());
        let stepped = [
            cp(1, 1000, 10, "b1"),
            cp(2, 1060, 70, "b1"),
            cp(3, 1060 + 3600 + 60, 130, "b1"),
        ];
        let notes = clock_steps(&stepped);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("stepped +3600.0 s") && notes[0].contains("a record 2"),
            "{notes:?}"
        );
    }

    #[test]
    fn flipped_byte_is_found() {
        let f = fixture(20);
        let path = segment(&f, 0);
        let mut bytes = fs::read(&path).unwrap();
        let at = HEADER_LEN as usize + 30;
        bytes[at] ^= 0x01;
        fs::write(&path, bytes).unwrap();
        let p = problem(&f);
        assert_eq!(p.segment.as_deref(), Some("00000000000000000001.seg"));
        assert_eq!(p.offset, Some(HEADER_LEN));
        assert_eq!(p.index, Some(1));
    }

    fn records(path: &Path) -> (Vec<u8>, Vec<(usize, usize)>) {
        let bytes = fs::read(path).unwrap();
        let spans = RecordReader::new(&bytes[HEADER_LEN as usize..], HEADER_LEN, None)
            .map(|r| {
                let r = r.unwrap();
                (r.offset as usize, r.framed_len() as usize)
            })
            .collect();
        (bytes, spans)
    }

    #[test]
    fn deleted_and_swapped_records_are_found() {
        let f = fixture(20);
        let path = segment(&f, 0);
        let (bytes, spans) = records(&path);
        assert!(spans.len() >= 3);
        // Delete the second record.
        let (off, len) = spans[1];
        let mut deleted = bytes.clone();
        deleted.drain(off..off + len);
        fs::write(&path, &deleted).unwrap();
        let p = problem(&f);
        assert_eq!((p.offset, p.index), (Some(off as u64), Some(2)));
        assert!(p.message.contains("missing"), "{p}");
        // Swap the second and third.
        let (o2, l2) = spans[1];
        let (o3, l3) = spans[2];
        let mut swapped = bytes[..o2].to_vec();
        swapped.extend_from_slice(&bytes[o3..o3 + l3]);
        swapped.extend_from_slice(&bytes[o2..o2 + l2]);
        swapped.extend_from_slice(&bytes[o3 + l3..]);
        fs::write(&path, &swapped).unwrap();
        let p = problem(&f);
        assert_eq!(p.index, Some(2));
        assert!(
            p.to_string().contains("segment 00000000000000000001.seg"),
            "{p}"
        );
    }

    #[test]
    fn rewritten_chain_fails_against_checkpoints() {
        let f = fixture(25);
        // Rewrite from scratch with the same events: consistent in itself.
        let agent_dir = f.options.store_dir.join("agents/a");
        fs::remove_dir_all(&agent_dir).unwrap();
        let store = Store::open(StoreConfig::new(f.options.store_dir.clone())).unwrap();
        store
            .append("a", (1..=25).map(event).collect(), |_| {})
            .unwrap();
        let without = VerifyOptions {
            checkpoint_files: vec![],
            ..f.options.clone()
        };
        assert!(verify(&without).unwrap().ok(), "consistent in itself");
        let p = problem(&f);
        assert!(p.message.contains("rewritten"), "{p}");
        // A forged checkpoint (other key) is reported too.
        let forger = Signer::load_or_create(&f.dir.path().join("forged.key")).unwrap();
        let forged = forger.sign(
            "a",
            &store.head("a"),
            std::time::SystemTime::now(),
            checkpoint::clock_state(),
        );
        let forged_file = f.dir.path().join("forged.jsonl");
        fs::write(&forged_file, serde_json::to_string(&forged).unwrap()).unwrap();
        let report = verify(&VerifyOptions {
            checkpoint_files: vec![forged_file],
            ..f.options.clone()
        })
        .unwrap();
        assert!(!report.ok() && report.problems[0].message.contains("trusted"));
    }

    #[test]
    fn checkpoints_deleted_from_the_store_file_are_found_from_the_exported_copy() {
        let f = fixture(25);
        let store_file = f.options.checkpoint_files[0].clone();
        let export = f.dir.path().join("export");
        fs::create_dir_all(&export).unwrap();
        fs::copy(&store_file, export.join("checkpoints.jsonl")).unwrap();
        let with_export = VerifyOptions {
            checkpoint_files: vec![export.clone()],
            store_checkpoints: Some(store_file.clone()),
            ..f.options.clone()
        };
        assert!(verify(&with_export).unwrap().ok());
        // Keep only the first line of the store's file.
        let text = fs::read_to_string(&store_file).unwrap();
        fs::write(&store_file, format!("{}\n", text.lines().next().unwrap())).unwrap();
        let report = verify(&with_export).unwrap();
        assert!(!report.ok());
        let p = &report.problems[0];
        assert!(
            p.message.contains("not in the store's checkpoint file")
                && p.message
                    .contains("checkpoints were deleted from the store"),
            "{p}"
        );
        // The store's file alone sees nothing wrong.
        assert!(verify(&VerifyOptions {
            checkpoint_files: vec![store_file.clone()],
            store_checkpoints: Some(store_file),
            ..f.options.clone()
        })
        .unwrap()
        .ok());
    }

    #[test]
    fn a_chain_no_checkpoint_covers_is_a_problem_when_checkpoints_are_required() {
        let f = fixture(25);
        // A second chain added behind the collector's back (no checkpoint of it anywhere).
        let store = Store::open(StoreConfig::new(f.options.store_dir.clone())).unwrap();
        store.append("b", vec![event(1), event(2)], |_| {}).unwrap();
        let report = verify(&f.options).unwrap();
        assert!(!report.ok());
        let b = report.agents.iter().find(|a| a.agent == "b").unwrap();
        let p = b.problem.as_ref().unwrap();
        assert!(
            p.message
                .starts_with("2 records and no signed checkpoint covers any of them"),
            "{p}"
        );
        assert!(report
            .agents
            .iter()
            .find(|a| a.agent == "a")
            .unwrap()
            .problem
            .is_none());
        assert!(verify(&VerifyOptions {
            require_checkpoints: false,
            ..f.options.clone()
        })
        .unwrap()
        .ok());
    }
}
