//! Loads the embedded kernel object, fills the watch maps, attaches every program in the
//! registry, and reports what is running.

use std::{
    fs::File,
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{
        links::FdLink, CgroupAttachMode, CgroupSockAddr, FExit, Lsm, RawTracePoint, TracePoint,
    },
    Btf, Ebpf, EbpfLoader,
};
use phiguard_common::{
    event::KIND_COUNT,
    limits::PATH_LEN,
    maps::{
        db_process, AgentId, ExecIdentity, GrantValue, InodeKey, AGENT, BREAK_GLASS, CONTROL_MAPS,
        DB_JOIN, DB_PORTS, DB_PROCESSES, DB_TEXT_CAPTURE_GLOBAL, DB_UNIX_SOCKETS, EVENTS,
        EXEC_IDENTITY, FANOTIFY_DECIDES_GLOBAL, FAULTS, INODE_SETATTR_IDMAP_GLOBAL, LOST,
        NEVER_KILL, OFFSETS_GLOBAL, SCRIPT_IDENTITY, WATCHED_PREFIXES,
    },
    offsets::KernelOffsets,
    program::{Program, PROGRAM_COUNT},
};

use super::error::LoadError;
use super::{
    bpf_sys,
    identity::ExecIdentities,
    install,
    integrity::{
        self, cgroup_connect_programs, diff, map_data, pin_problem, successor, Finding,
        FindingKind, LinkSnapshot, MapSnapshot,
    },
    pins,
    registry::{self, Hook, ProgramSpec},
};
use crate::{
    config::DatabaseConfig,
    db::existing::{self, Existing},
    paths::FileId,
    policy::{compile::Compiled, enforcement::LsmGaps},
    watch::WatchSet,
};

/// The kernel object built by `agent/build.rs`, embedded in the binary.
pub(super) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/phiguard"));

/// How the programs are to enforce, decided before they load (see [`super::layer`]).
#[derive(Clone, Debug, Default)]
pub struct Enforcement {
    /// Why the BPF LSM programs are not to be attached (`bpf` is not an active LSM: they
    /// would attach and never run); `None`: attach them.
    pub lsm_inactive: Option<String>,
    /// The fanotify layer decides and reports file opens: the open-exit programs report only
    /// the refusals they enforce themselves (opens the layer did not answer: the agent is down).
    pub fanotify_files: bool,
    /// Programs the SIGKILL layer never kills (`[policy] never_kill`).
    pub never_kill: Vec<PathBuf>,
    /// The BPF LSM layer is planned: protected inodes are labelled in the kernel
    /// (`INODE_LABELS`) at each install.
    pub lsm_labels: bool,
    /// Policies may be enforced (a `[policy] dir` is configured): the BPF LSM enforcement
    /// programs are loaded. Without it they are not ([`registry::selected`]).
    pub enforcing: bool,
}

/// How one program fared.
#[derive(Clone, Debug)]
pub struct ProgramStatus {
    /// Registry entry.
    pub spec: ProgramSpec,
    /// `None` when attached, else why not.
    pub error: Option<String>,
}

/// The loaded programs. Dropping it detaches them all, unless they are pinned.
pub struct Sensors {
    /// Attached links, by program name (also pinned under `pin_root` when that is set).
    links: Vec<(&'static str, FdLink)>,
    /// Where the links are pinned (they stay attached after this process exits).
    pin_root: Option<PathBuf>,
    replaced_pins: usize,
    /// Where the cgroup programs are attached.
    cgroup_root: PathBuf,
    /// What the integrity check compares the kernel against.
    pub(super) expected: integrity::Expected,
    /// Protected inodes are labelled in `INODE_LABELS` (the BPF LSM layer is planned).
    lsm_labels: bool,
    ebpf: Ebpf,
    /// Per-program outcome, in registry order.
    pub status: Vec<ProgramStatus>,
}

/// How this kernel's `inode_setattr` LSM hook takes its arguments, for the
/// `INODE_SETATTR_IDMAP` global: 0 for `(dentry, iattr)` (6.1), 1 for `(idmap, dentry, iattr)`
/// (6.12), and 1 when the BTF does not say (no BPF LSM: the program does not attach anyway).
fn inode_setattr_idmap() -> u32 {
    let args = super::btf::running_kernel()
        .ok()
        .and_then(|kernel| kernel.inode_setattr_args);
    tracing::debug!(?args, "inode_setattr LSM hook arguments (BTF)");
    u32::from(args != Some(2))
}

/// The running kernel's BTF as aya reads it, for the LSM and fexit programs' attach points: read once
/// per process (it does not change while the kernel runs; each read took 1–1.3 s under the VM
/// tier's emulation), `None` when it cannot be read.
fn kernel_btf() -> Option<&'static Btf> {
    static READ: OnceLock<Btf> = OnceLock::new();
    if let Some(btf) = READ.get() {
        return Some(btf);
    }
    let btf = Btf::from_sys_fs().ok()?;
    Some(READ.get_or_init(|| btf))
}

/// Whether this kernel accepts the BPF LSM programs (loads the object and one LSM program
/// without attaching anything). An error when the object itself cannot load (no privileges).
pub fn lsm_usable() -> Result<bool, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(LoadError::Object)?;
    let Some(btf) = kernel_btf() else {
        return Ok(false);
    };
    let program = ebpf
        .program_mut("enforce_file_open")
        .ok_or(LoadError::MissingProgram("enforce_file_open"))?;
    let Ok(lsm) = <&mut Lsm>::try_from(program) else {
        return Ok(false);
    };
    Ok(lsm.load("file_open", btf).is_ok())
}

impl Sensors {
    /// Loads the object with `offsets`, installs `compiled` (watches and policies) before any
    /// program runs, and attaches all programs (cgroup programs at `cgroup_root`). Optional
    /// programs that fail are reported in `status`; a required one failing is an error. With
    /// `pin_root`, the links are pinned there (replacing a previous agent's) and outlive this
    /// process; see [`super::pins`].
    pub fn load(
        offsets: &KernelOffsets,
        compiled: &Compiled,
        database: &DatabaseConfig,
        cgroup_root: &Path,
        pin_root: Option<&Path>,
        enforcement: &Enforcement,
    ) -> Result<Sensors, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let mut loader = EbpfLoader::new();
        loader.override_global(OFFSETS_GLOBAL, offsets, true);
        let fanotify_decides: u32 = u32::from(enforcement.fanotify_files);
        loader.override_global(FANOTIFY_DECIDES_GLOBAL, &fanotify_decides, true);
        let setattr_idmap = inode_setattr_idmap();
        loader.override_global(INODE_SETATTR_IDMAP_GLOBAL, &setattr_idmap, true);
        let text_capture = database.statement_capture_bytes();
        loader.override_global(DB_TEXT_CAPTURE_GLOBAL, &text_capture, true);
        if let Some(root) = pin_root {
            // Shared with the programs a previous agent pinned (see `pins::claim`).
            pins::create_dir(root)?;
            loader.map_pin_path(AGENT, pins::agent_map_path(root));
            let identities = pins::exec_identity_path(root);
            pins::drop_other_layout(&identities, size_of::<ExecIdentity>());
            loader.map_pin_path(EXEC_IDENTITY, identities);
            let scripts = pins::script_identity_path(root);
            pins::drop_other_layout(&scripts, size_of::<ExecIdentity>());
            loader.map_pin_path(SCRIPT_IDENTITY, scripts);
            let grants = pins::break_glass_path(root);
            pins::drop_other_layout(&grants, size_of::<GrantValue>());
            loader.map_pin_path(BREAK_GLASS, grants);
        }
        let ebpf = loader.load(OBJECT).map_err(LoadError::Object)?;
        let mut sensors = Sensors {
            ebpf,
            status: Vec::new(),
            links: Vec::new(),
            pin_root: None,
            replaced_pins: 0,
            cgroup_root: cgroup_root.to_owned(),
            expected: integrity::Expected::default(),
            lsm_labels: enforcement.lsm_labels,
        };
        {
            let mut agent: Array<_, AgentId> = Array::try_from(sensors.map_mut(AGENT)?)
                .map_err(|source| LoadError::Map { map: AGENT, source })?;
            // The kernel compares the global tgid, which differs from ours in a pid namespace.
            let me = super::identity::this_agent().map_err(LoadError::GlobalPid)?;
            agent
                .set(0, me, 0)
                .map_err(|source| LoadError::Map { map: AGENT, source })?;
        }
        sensors.fill_prefixes(&compiled.watches)?;
        sensors.install(compiled)?;
        let cgroup = File::open(cgroup_root).map_err(|source| LoadError::Cgroup {
            path: cgroup_root.display().to_string(),
            source,
        })?;
        sensors.fill_database(database)?;
        sensors.fill_never_kill(&enforcement.never_kill)?;
        for spec in registry::selected(database.is_enabled(), enforcement.enforcing) {
            let started = std::time::Instant::now();
            let error = match (&spec.hook, &enforcement.lsm_inactive) {
                (Hook::Lsm { .. }, Some(reason)) => Some(reason.clone()),
                _ if spec.program == Program::TaintPtraceMayAccess
                    && sensors.attached(Program::TaintPtraceAccessCheck) =>
                {
                    Some("not needed: lsm/ptrace_access_check taints at the same check".into())
                }
                _ => sensors.attach(spec, &cgroup).err(),
            };
            tracing::debug!(
                program = spec.name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                attached = error.is_none(),
                "program loaded (verifier) and attached"
            );
            if let (true, Some(reason)) = (spec.required, &error) {
                return Err(LoadError::Required {
                    name: spec.name,
                    hook: spec.hook.to_string(),
                    reason: reason.clone(),
                });
            }
            // Only where the LSM layer is planned (its probe program loaded) is a refused
            // program a gap in it; without a policy directory nothing probed, and the one LSM
            // program left (ptrace taint) has its own fallback and warning below.
            if let (Hook::Lsm { hook }, true, Some(reason)) =
                (&spec.hook, enforcement.lsm_labels, &error)
            {
                // BPF LSM runs here, but this kernel refused this program (its verifier, a hook
                // of another shape): say what goes unenforced, not "no BPF LSM".
                let what = spec
                    .missing_means
                    .strip_prefix("no BPF LSM: ")
                    .unwrap_or(spec.missing_means);
                tracing::warn!(
                    program = spec.name,
                    "BPF LSM is active, but this kernel refused the lsm/{hook} program, so the \
                     BPF LSM layer is not complete: {what}: {reason}"
                );
            }
            sensors.status.push(ProgramStatus { spec: *spec, error });
        }
        if !sensors.attached(Program::TaintPtraceAccessCheck)
            && !sensors.attached(Program::TaintPtraceMayAccess)
        {
            tracing::warn!(
                "neither lsm/ptrace_access_check (no BPF LSM) nor fexit/ptrace_may_access (no \
                 fentry/fexit on this kernel) attached: a write into an allowed program's memory \
                 through /proc/PID/mem does not make it an unlisted subject (ptrace attach and \
                 process_vm_writev still do)"
            );
        }
        // After the exec and fork programs are attached: a process started from here on gets
        // its record there, one started before gets it now.
        match sensors.exec_identities().and_then(|map| map.seed()) {
            Ok(added) => tracing::debug!(added, "processes running before the agent recorded"),
            Err(e) => tracing::warn!(
                "recording the processes that ran before the agent: {e}; they match no `exe` subject"
            ),
        }
        if database.is_enabled() {
            // After the capture hooks are attached: a session opened from here on is tracked
            // at its connect or accept, one opened before is joined at its next read or write.
            match existing::find(&database.ports, &database.unix_sockets, std::process::id()) {
                Ok(found) => {
                    sensors.join_sessions(&found)?;
                    tracing::info!(
                        sockets = found.sockets.len(),
                        processes = found.processes.len(),
                        "database sessions opened before the agent started: joined at their next read or write"
                    );
                }
                Err(e) => tracing::warn!(
                    "database sessions opened before the agent started are not audited: {e}"
                ),
            }
        }
        if let Some(root) = pin_root {
            let links = std::mem::take(&mut sensors.links);
            let (links, replaced) = pins::pin_replacing(root, links)?;
            sensors.links = links;
            sensors.pin_root = Some(root.to_owned());
            sensors.replaced_pins = replaced;
        }
        sensors.snapshot_links().map_err(LoadError::Snapshot)?;
        sensors.snapshot_maps().map_err(LoadError::Snapshot)?;
        Ok(sensors)
    }

    /// A handle on the map of what each process executed (for the fanotify layer's decisions).
    pub fn exec_identities(&self) -> std::io::Result<ExecIdentities> {
        let data = self
            .ebpf
            .map(EXEC_IDENTITY)
            .and_then(map_data)
            .ok_or_else(|| std::io::Error::other("the object has no EXEC_IDENTITY hash map"))?;
        let scripts = self
            .ebpf
            .map(SCRIPT_IDENTITY)
            .and_then(map_data)
            .ok_or_else(|| std::io::Error::other("the object has no SCRIPT_IDENTITY hash map"))?;
        Ok(ExecIdentities::new(
            data.fd().as_fd().try_clone_to_owned()?,
            scripts.fd().as_fd().try_clone_to_owned()?,
        ))
    }

    /// A descriptor of the break-glass map (the pinned one while enforcing).
    pub fn break_glass_map(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        let data = self
            .ebpf
            .map(BREAK_GLASS)
            .and_then(map_data)
            .ok_or_else(|| std::io::Error::other("the object has no BREAK_GLASS hash map"))?;
        data.fd().as_fd().try_clone_to_owned()
    }

    /// The loaded object.
    pub(super) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The attached links, by program name.
    pub(super) fn links(&self) -> impl Iterator<Item = (&'static str, &FdLink)> {
        self.links.iter().map(|(name, link)| (*name, link))
    }

    /// Where the cgroup programs are attached.
    pub(super) fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// Where the links are pinned, when they are.
    pub(super) fn pin_root(&self) -> Option<&Path> {
        self.pin_root.as_deref()
    }

    /// Attaches the cgroup program `name` again with a new link (pinned in place of the old
    /// one where links are pinned), and drops the old link.
    pub(super) fn relink_cgroup(&mut self, name: &'static str) -> Result<(), String> {
        let cgroup = File::open(&self.cgroup_root)
            .map_err(|e| format!("{}: {e}", self.cgroup_root.display()))?;
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| LoadError::MissingProgram(name).to_string())?;
        let p: &mut CgroupSockAddr = program.try_into().map_err(|e| error_text(&e))?;
        let mut link = cgroup_link(p, &cgroup)?;
        if let Some(root) = &self.pin_root {
            link = pins::pin_one(root, name, link).map_err(|e| error_text(&e))?;
        }
        self.links.retain(|(n, _)| *n != name);
        self.links.push((name, link));
        Ok(())
    }

    /// How many pinned programs of a previous agent this one replaced.
    pub fn replaced_pins(&self) -> usize {
        self.replaced_pins
    }

    /// Whether the programs are pinned (they outlive this process).
    pub fn is_pinned(&self) -> bool {
        self.pin_root.is_some()
    }

    fn attach(&mut self, spec: &ProgramSpec, cgroup: &File) -> Result<(), String> {
        let symbol = spec.program.name();
        let program = self
            .ebpf
            .program_mut(symbol)
            .ok_or_else(|| LoadError::MissingProgram(symbol).to_string())?;
        let text = |e: &dyn std::error::Error| error_text(e);
        match spec.hook {
            Hook::TracePoint { category, name } => {
                let p: &mut TracePoint = program.try_into().map_err(|e| text(&e))?;
                // A program serving several tracepoints is loaded (verified) at its first.
                if p.fd().is_err() {
                    p.load().map_err(|e| text(&e))?;
                }
                let id = p.attach(category, name).map_err(|e| text(&e))?;
                let link = p.take_link(id).map_err(|e| text(&e))?;
                self.links
                    .push((spec.name, FdLink::try_from(link).map_err(|e| text(&e))?));
            }
            Hook::RawTracePoint { name } => {
                let p: &mut RawTracePoint = program.try_into().map_err(|e| text(&e))?;
                p.load().map_err(|e| text(&e))?;
                let id = p.attach(name).map_err(|e| text(&e))?;
                let link = p.take_link(id).map_err(|e| text(&e))?;
                self.links.push((spec.name, FdLink::from(link)));
            }
            Hook::CgroupConnect => {
                let p: &mut CgroupSockAddr = program.try_into().map_err(|e| text(&e))?;
                p.load().map_err(|e| text(&e))?;
                let link = cgroup_link(p, cgroup)?;
                self.links.push((spec.name, link));
            }
            Hook::Lsm { hook } => {
                let btf = kernel_btf().ok_or("the kernel's BTF cannot be read")?;
                let p: &mut Lsm = program.try_into().map_err(|e| text(&e))?;
                p.load(hook, btf).map_err(|e| text(&e))?;
                let id = p.attach().map_err(|e| text(&e))?;
                let link = p.take_link(id).map_err(|e| text(&e))?;
                self.links.push((spec.name, FdLink::from(link)));
            }
            Hook::FExit { function } => {
                let btf = kernel_btf().ok_or("the kernel's BTF cannot be read")?;
                let p: &mut FExit = program.try_into().map_err(|e| text(&e))?;
                p.load(function, btf).map_err(|e| text(&e))?;
                let id = p.attach().map_err(|e| text(&e))?;
                let link = p.take_link(id).map_err(|e| text(&e))?;
                self.links.push((spec.name, FdLink::from(link)));
            }
        }
        Ok(())
    }

    /// Whether `program` is attached (so far, during the load).
    fn attached(&self, program: Program) -> bool {
        self.status
            .iter()
            .any(|s| s.spec.program == program && s.error.is_none())
    }

    /// Whether BPF LSM decides file opens (`enforce_file_open` is attached): refused opens
    /// fail with `EPERM`. The other BPF LSM programs each add their own hook; one that did not
    /// attach is a gap ([`Sensors::lsm_gaps`]), not the loss of the layer.
    pub fn lsm_active(&self) -> bool {
        self.status
            .iter()
            .any(|s| s.spec.program == Program::EnforceFileOpen && s.error.is_none())
    }

    /// The BPF LSM programs that did not attach, while [`Sensors::lsm_active`].
    pub fn lsm_gaps(&self) -> LsmGaps {
        LsmGaps::of(
            self.status
                .iter()
                .filter(|s| s.error.is_some())
                .map(|s| &s.spec),
        )
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, LoadError> {
        self.ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))
    }

    /// Writes the database ports and unix sockets. A socket path that does not exist yet
    /// (the server is not running) is skipped with a warning.
    /// Lists the programs the SIGKILL layer never kills, by (device, inode); a path that does
    /// not exist now is logged and left out.
    fn fill_never_kill(&mut self, programs: &[PathBuf]) -> Result<(), LoadError> {
        self.fill_inode_set(
            NEVER_KILL,
            programs,
            "never-kill program not listed in the kernel",
        )
    }

    fn fill_database(&mut self, database: &DatabaseConfig) -> Result<(), LoadError> {
        let mut ports: HashMap<_, u32, u32> =
            HashMap::try_from(self.map_mut(DB_PORTS)?).map_err(|source| LoadError::Map {
                map: DB_PORTS,
                source,
            })?;
        for &port in &database.ports {
            ports
                .insert(u32::from(port), 1, 0)
                .map_err(|source| LoadError::Map {
                    map: DB_PORTS,
                    source,
                })?;
        }
        self.fill_inode_set(
            DB_UNIX_SOCKETS,
            &database.unix_sockets,
            "database unix socket not tracked",
        )
    }

    /// Puts the files at `paths` into the set map `name` (`InodeKey` with slot 0 → 1); a path
    /// that cannot be resolved now is logged with `missing` and left out.
    fn fill_inode_set(
        &mut self,
        name: &'static str,
        paths: &[PathBuf],
        missing: &str,
    ) -> Result<(), LoadError> {
        let map_error = |source| LoadError::Map { map: name, source };
        let mut set: HashMap<_, InodeKey, u32> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_error)?;
        for path in paths {
            match FileId::of(path) {
                Ok(id) => {
                    let key = InodeKey {
                        dev: id.dev,
                        slot: 0,
                        ino: id.ino,
                    };
                    set.insert(key, 1, 0).map_err(map_error)?;
                }
                Err(e) => tracing::warn!(path = %path.display(), "{missing}: {e}"),
            }
        }
        Ok(())
    }

    /// Hands the kernel the database sockets open at start-up (`DB_JOIN`) and marks their
    /// processes so their next reads and writes look there.
    fn join_sessions(&mut self, found: &Existing) -> Result<(), LoadError> {
        let map_error = |map| move |source| LoadError::Map { map, source };
        let mut join: HashMap<_, InodeKey, u32> =
            HashMap::try_from(self.map_mut(DB_JOIN)?).map_err(map_error(DB_JOIN))?;
        for s in &found.sockets {
            let key = InodeKey {
                dev: found.sockfs_dev,
                slot: 0,
                ino: s.inode,
            };
            join.insert(key, s.role, 0).map_err(map_error(DB_JOIN))?;
        }
        let mut processes: HashMap<_, u32, u32> =
            HashMap::try_from(self.map_mut(DB_PROCESSES)?).map_err(map_error(DB_PROCESSES))?;
        for &pid in &found.processes {
            processes
                .insert(pid, db_process::JOIN, 0)
                .map_err(map_error(DB_PROCESSES))?;
        }
        Ok(())
    }

    /// Writes the path prefixes of the configured watches (failed opens have no inode).
    fn fill_prefixes(&mut self, watches: &WatchSet) -> Result<(), LoadError> {
        let mut prefixes: LpmTrie<_, [u8; PATH_LEN], u32> =
            LpmTrie::try_from(self.map_mut(WATCHED_PREFIXES)?).map_err(|source| {
                LoadError::Map {
                    map: WATCHED_PREFIXES,
                    source,
                }
            })?;
        for w in watches.paths.iter().filter(|w| w.observed) {
            // Both the configured and the canonical spelling.
            for path in [&w.path, &w.canonical] {
                let bytes = path.as_os_str().as_encoded_bytes();
                if bytes.len() >= PATH_LEN {
                    continue;
                }
                let mut data = [0u8; PATH_LEN];
                data[..bytes.len()].copy_from_slice(bytes);
                let key = Key::new((bytes.len() * 8) as u32, data);
                prefixes
                    .insert(&key, w.id, 0)
                    .map_err(|source| LoadError::Map {
                        map: WATCHED_PREFIXES,
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Installs a compiled policy set (with its watches) and makes it the one in force.
    /// Returns the slot it went into.
    pub fn install(&mut self, compiled: &Compiled) -> Result<u32, LoadError> {
        let slot = install::install(&mut self.ebpf, compiled, self.lsm_labels)?;
        self.snapshot_maps().map_err(LoadError::Snapshot)?;
        Ok(slot)
    }

    /// The policy slot the programs read now.
    pub fn active_slot(&mut self) -> Result<u32, LoadError> {
        install::active_slot(&mut self.ebpf)
    }

    /// Takes the ring buffer for the reader (once).
    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map(EVENTS)
            .ok_or(LoadError::MissingMap(EVENTS))?;
        RingBuf::try_from(map).map_err(|source| LoadError::Map {
            map: EVENTS,
            source,
        })
    }

    /// Records lost in the kernel so far, summed over CPUs, indexed by event kind code.
    pub fn lost(&self) -> Result<[u64; KIND_COUNT as usize], LoadError> {
        let map = self.ebpf.map(LOST).ok_or(LoadError::MissingMap(LOST))?;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| LoadError::Map { map: LOST, source })?;
        let mut totals = [0u64; KIND_COUNT as usize];
        for (kind, total) in totals.iter_mut().enumerate() {
            let values = counters
                .get(&(kind as u32), 0)
                .map_err(|source| LoadError::Map { map: LOST, source })?;
            *total = values.iter().sum();
        }
        Ok(totals)
    }

    /// Program runs that stopped on a fault so far, summed over CPUs, indexed by
    /// [`phiguard_common::program::Program`].
    pub fn faults(&self) -> Result<[u64; PROGRAM_COUNT as usize], LoadError> {
        let map = self.ebpf.map(FAULTS).ok_or(LoadError::MissingMap(FAULTS))?;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| LoadError::Map {
                map: FAULTS,
                source,
            })?;
        let mut totals = [0u64; PROGRAM_COUNT as usize];
        for (program, total) in totals.iter_mut().enumerate() {
            let values = counters
                .get(&(program as u32), 0)
                .map_err(|source| LoadError::Map {
                    map: FAULTS,
                    source,
                })?;
            *total = values.iter().sum();
        }
        Ok(totals)
    }

    /// One line for the log: what is attached and what is not.
    pub fn summary(&self) -> String {
        let attached = self.status.iter().filter(|s| s.error.is_none()).count();
        let missing: Vec<String> = self
            .status
            .iter()
            .filter_map(|s| {
                s.error
                    .as_ref()
                    .map(|e| format!("{} ({}: {})", s.spec.name, s.spec.missing_means, e))
            })
            .collect();
        if missing.is_empty() {
            format!("{attached}/{} programs attached", self.status.len())
        } else {
            format!(
                "{attached}/{} programs attached; not attached: {}",
                self.status.len(),
                missing.join("; ")
            )
        }
    }
}

/// An error with its chain of causes, on one line.
fn error_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Attaches a loaded cgroup program to `cgroup` with a new link.
fn cgroup_link(program: &mut CgroupSockAddr, cgroup: &File) -> Result<FdLink, String> {
    // A bpf_link (Linux 5.7+) coexists with other programs on the cgroup whatever the mode;
    // link_create rejects any flag, so the mode must be the default (0).
    let id = program
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(|e| error_text(&e))?;
    let link = program.take_link(id).map_err(|e| error_text(&e))?;
    FdLink::try_from(link).map_err(|e| error_text(&e))
}

/// The integrity check's side of the sensors (its pure parts are in [`integrity`]).
impl Sensors {
    /// Records the control maps as they are now (after a load or a policy install).
    pub fn snapshot_maps(&mut self) -> io::Result<()> {
        let mut maps = Vec::new();
        for &name in CONTROL_MAPS {
            if let Some(data) = self.ebpf().map(name).and_then(map_data) {
                maps.push(MapSnapshot::take(name, data)?);
            }
        }
        self.expected.maps = maps;
        Ok(())
    }

    /// Records the links as attached (and pinned) now.
    pub(super) fn snapshot_links(&mut self) -> io::Result<()> {
        let mut links = Vec::new();
        for (program, link) in self.links() {
            let info = link.info().map_err(io::Error::other)?;
            let cgroup = self
                .status
                .iter()
                .any(|s| s.spec.name == program && matches!(s.spec.hook, Hook::CgroupConnect));
            let pinned = match self.pin_root() {
                Some(root) => {
                    let fd = bpf_sys::obj_get(&pins::link_path(root, program))?;
                    if bpf_sys::link_id(fd.as_fd())? != info.id() {
                        return Err(io::Error::other(format!(
                            "the pin of {program} is not the link just pinned"
                        )));
                    }
                    Some(fd)
                }
                None => None,
            };
            links.push(LinkSnapshot {
                program,
                link_id: info.id(),
                prog_id: info.program_id(),
                cgroup,
                pinned,
            });
        }
        self.expected.links = links;
        Ok(())
    }

    /// Compares the kernel with what the agent installed, repairs what it can, and returns
    /// what it found (empty: all as installed).
    pub fn check_integrity(&mut self) -> Vec<Finding> {
        let mut found = Vec::new();
        let newer = self
            .ebpf()
            .map(phiguard_common::maps::AGENT)
            .and_then(map_data)
            .and_then(successor);
        if let (Some(pid), None) = (newer, self.expected.superseded_by) {
            self.expected.superseded_by = Some(pid);
            found.push(Finding {
                kind: FindingKind::PinRemoved,
                object: "pins".to_owned(),
                detail: format!(
                    "another phiguard agent (pid {pid}) took over the pins and the exemption; this agent no longer puts them back"
                ),
                repair: Err("superseded by a newer agent".to_owned()),
            });
        }
        let superseded = self.expected.superseded_by.is_some();
        let detached: Vec<(&'static str, String)> = match cgroup_connect_programs(self.cgroup_root()) {
            Ok(attached) => self
                .expected
                .links
                .iter()
                .filter(|l| l.cgroup && !attached.contains(&l.prog_id))
                .map(|l| {
                    let detail = format!(
                        "program {} is no longer attached to cgroup {} (link {} detached or given another program)",
                        l.prog_id,
                        self.cgroup_root().display(),
                        l.link_id
                    );
                    (l.program, detail)
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "integrity check cannot query the cgroup programs");
                Vec::new()
            }
        };
        for (program, detail) in detached {
            let repair = self.reattach(program);
            found.push(Finding {
                kind: FindingKind::ProgramDetached,
                object: program.to_owned(),
                detail,
                repair,
            });
        }
        if let Some(root) = self.pin_root().filter(|_| !superseded).map(Path::to_owned) {
            for link in &self.expected.links {
                let path = pins::link_path(&root, link.program);
                let Some(detail) = pin_problem(&path, link.link_id) else {
                    continue;
                };
                let repair = match &link.pinned {
                    Some(fd) => {
                        pins::repin(&root, link.program, fd.as_fd()).map_err(|e| e.to_string())
                    }
                    None => Err("no descriptor of the link to pin again".to_owned()),
                };
                found.push(Finding {
                    kind: FindingKind::PinRemoved,
                    object: link.program.to_owned(),
                    detail,
                    repair,
                });
            }
        }
        for snapshot in &self.expected.maps {
            if superseded && snapshot.name == phiguard_common::maps::AGENT {
                continue;
            }
            let Some(data) = self.ebpf().map(snapshot.name).and_then(map_data) else {
                continue;
            };
            // A newer agent may have claimed the exemption since this check began: never
            // write it back over a live successor (the next check reports the take-over).
            if snapshot.name == phiguard_common::maps::AGENT && successor(data).is_some() {
                continue;
            }
            let d = match snapshot.current(data) {
                Ok(current) => diff(&snapshot.entries, &current),
                Err(e) => {
                    tracing::warn!(map = snapshot.name, error = %e, "integrity check cannot read map");
                    continue;
                }
            };
            if d.is_empty() {
                continue;
            }
            let repair = snapshot
                .restore(data, &d)
                .and_then(|()| snapshot.current(data))
                .map_err(|e| e.to_string())
                .and_then(|now| match diff(&snapshot.entries, &now) {
                    left if left.is_empty() => Ok(()),
                    left => Err(format!(
                        "still differs after rewriting: {}",
                        left.describe()
                    )),
                });
            found.push(Finding {
                kind: FindingKind::MapModified,
                object: snapshot.name.to_owned(),
                detail: d.describe(),
                repair,
            });
        }
        found
    }

    /// Attaches `program` again in place of a detached or replaced link (cgroup programs:
    /// other links cannot be detached), pins it where links are pinned, and records it.
    fn reattach(&mut self, program: &'static str) -> Result<(), String> {
        let spec = self
            .status
            .iter()
            .find(|s| s.spec.name == program)
            .map(|s| s.spec)
            .ok_or_else(|| format!("{program} is not in the registry"))?;
        if !matches!(spec.hook, Hook::CgroupConnect) {
            return Err(format!(
                "a {} link cannot be detached, only closed: it is gone with the agent's descriptor",
                spec.hook
            ));
        }
        self.relink_cgroup(program)?;
        self.snapshot_links().map_err(|e| e.to_string())
    }
}
