//! The benchmarks' hook floor: empty programs attached wherever the agent would attach its
//! real ones for a configuration, so `cargo xtask bench` can separate what the kernel charges
//! for running any program at a hook from what the agent's programs do there.
//!
//! The attach points come from the registry ([`registry::selected`]), never from a list of
//! its own: when the agent changes hooks, the floor follows.
//!
//! The empty programs are an object of their own, embedded only when the agent is built with
//! the `bench-floor` feature (as `cargo xtask bench` does); the product object has none.

use std::{fs::File, path::Path};

use aya::{
    programs::{CgroupAttachMode, CgroupSockAddr, FExit, Lsm, RawTracePoint, TracePoint},
    Btf, Ebpf,
};
use aya_obj::{programs::CgroupSockAddrAttachType, ProgramSection};

use super::{
    loader::OBJECT,
    registry::{self, Hook, ProgramSpec},
};

/// The floor object (`agent-ebpf/src/floor.rs`); empty without the `bench-floor` feature.
static FLOOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/phiguard-floor"));

/// Empty program for classic tracepoints.
const FLOOR_TRACEPOINT: &str = "floor_tracepoint";
/// Empty program for raw tracepoints.
const FLOOR_RAW_TRACEPOINT: &str = "floor_raw_tracepoint";
/// Empty `cgroup/connect4` program.
const FLOOR_CONNECT4: &str = "floor_connect4";
/// Empty `cgroup/connect6` program.
const FLOOR_CONNECT6: &str = "floor_connect6";
/// Empty BPF LSM program.
const FLOOR_LSM: &str = "floor_lsm";
/// Empty fexit program.
const FLOOR_FEXIT: &str = "floor_fexit";

/// Failure to attach the floor.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// The binary was built with `AYA_BUILD_SKIP`.
    #[error("this phiguard binary was built without its eBPF programs")]
    NoObject,
    /// The binary was built without the `bench-floor` feature.
    #[error("this phiguard binary was built without the benchmark floor (build it with `--features bench-floor`, as `cargo xtask bench` does)")]
    NoFloor,
    /// The object did not parse or load.
    #[error("loading the eBPF object: {0}")]
    Object(String),
    /// A required hook could not take an empty program (the agent would refuse to start too).
    #[error("required hook {hook} (of {name}) failed: {reason}")]
    Required {
        /// The registry program whose hook it is.
        name: &'static str,
        /// The hook.
        hook: String,
        /// Why.
        reason: String,
    },
    /// The cgroup v2 root could not be opened.
    #[error("opening cgroup v2 root {path}: {source}")]
    Cgroup {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The attached floor. Dropping it detaches every program.
pub struct Floor {
    /// The floor object holding the shared tracepoint, raw tracepoint and cgroup programs, then one
    /// object per LSM or fexit hook (such a program is bound to its hook when it loads).
    objects: Vec<Ebpf>,
    /// Per registry program: `None` when its hook has an empty program, else why not.
    pub status: Vec<(&'static str, Hook, Option<String>)>,
}

impl Floor {
    /// Attaches an empty program at every hook the agent attaches with the database capture
    /// hooks on or off (`database_enabled`) and policies enforced or not (`enforcing`), cgroup
    /// programs at `cgroup_root`. An optional
    /// hook that fails is recorded in `status`, as the agent would skip it; a required one is
    /// an error.
    pub fn attach(
        database_enabled: bool,
        enforcing: bool,
        cgroup_root: &Path,
    ) -> Result<Floor, FloorError> {
        if OBJECT.is_empty() {
            return Err(FloorError::NoObject);
        }
        if FLOOR_OBJECT.is_empty() {
            return Err(FloorError::NoFloor);
        }
        let cgroup = File::open(cgroup_root).map_err(|source| FloorError::Cgroup {
            path: cgroup_root.display().to_string(),
            source,
        })?;
        let sections = aya_obj::Object::parse(OBJECT)
            .map_err(|e| FloorError::Object(e.to_string()))?
            .programs;
        let mut floor = Floor {
            objects: vec![load()?],
            status: Vec::new(),
        };
        let mut loaded = Vec::new();
        for spec in registry::selected(database_enabled, enforcing) {
            let section = sections.get(spec.program.name()).map(|p| &p.section);
            let error = floor.attach_one(spec, section, &cgroup, &mut loaded).err();
            if let (true, Some(reason)) = (spec.required, &error) {
                return Err(FloorError::Required {
                    name: spec.name,
                    hook: spec.hook.to_string(),
                    reason: reason.clone(),
                });
            }
            floor.status.push((spec.name, spec.hook, error));
        }
        Ok(floor)
    }

    /// How many hooks have an empty program.
    pub fn attached(&self) -> usize {
        self.status.iter().filter(|s| s.2.is_none()).count()
    }

    /// Attaches the empty program of `spec`'s type at `spec`'s hook. `section` is the real
    /// program's section in the object (a cgroup program's attach type lives there); `loaded`
    /// remembers which shared floor programs are loaded already.
    fn attach_one(
        &mut self,
        spec: &ProgramSpec,
        section: Option<&ProgramSection>,
        cgroup: &File,
        loaded: &mut Vec<&'static str>,
    ) -> Result<(), String> {
        let text = |e: &dyn std::error::Error| e.to_string();
        match spec.hook {
            Hook::TracePoint { category, name } => {
                let p: &mut TracePoint = self.program(0, FLOOR_TRACEPOINT)?;
                if !loaded.contains(&FLOOR_TRACEPOINT) {
                    p.load().map_err(|e| text(&e))?;
                    loaded.push(FLOOR_TRACEPOINT);
                }
                p.attach(category, name).map_err(|e| text(&e))?;
            }
            Hook::RawTracePoint { name } => {
                let p: &mut RawTracePoint = self.program(0, FLOOR_RAW_TRACEPOINT)?;
                if !loaded.contains(&FLOOR_RAW_TRACEPOINT) {
                    p.load().map_err(|e| text(&e))?;
                    loaded.push(FLOOR_RAW_TRACEPOINT);
                }
                p.attach(name).map_err(|e| text(&e))?;
            }
            Hook::CgroupConnect => {
                let floor = match section {
                    Some(ProgramSection::CgroupSockAddr {
                        attach_type: CgroupSockAddrAttachType::Connect4,
                    }) => FLOOR_CONNECT4,
                    Some(ProgramSection::CgroupSockAddr {
                        attach_type: CgroupSockAddrAttachType::Connect6,
                    }) => FLOOR_CONNECT6,
                    other => return Err(format!("no floor program for section {other:?}")),
                };
                if loaded.contains(&floor) {
                    return Err(format!("{floor} is attached already"));
                }
                let p: &mut CgroupSockAddr = self.program(0, floor)?;
                p.load().map_err(|e| text(&e))?;
                loaded.push(floor);
                p.attach(cgroup, CgroupAttachMode::Single)
                    .map_err(|e| text(&e))?;
            }
            Hook::Lsm { hook } => {
                let btf = Btf::from_sys_fs().map_err(|e| text(&e))?;
                self.objects.push(load().map_err(|e| e.to_string())?);
                let p: &mut Lsm = self.program(self.objects.len() - 1, FLOOR_LSM)?;
                p.load(hook, &btf).map_err(|e| text(&e))?;
                p.attach().map_err(|e| text(&e))?;
            }
            Hook::FExit { function } => {
                let btf = Btf::from_sys_fs().map_err(|e| text(&e))?;
                self.objects.push(load().map_err(|e| e.to_string())?);
                let p: &mut FExit = self.program(self.objects.len() - 1, FLOOR_FEXIT)?;
                p.load(function, &btf).map_err(|e| text(&e))?;
                p.attach().map_err(|e| text(&e))?;
            }
        }
        Ok(())
    }

    /// The floor program `name` in object `index`, as its type.
    fn program<'a, T>(&'a mut self, index: usize, name: &str) -> Result<&'a mut T, String>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        let ebpf = self.objects.get_mut(index).ok_or("no such object")?;
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} is missing from the eBPF object"))?;
        program.try_into().map_err(|e| format!("{name}: {e}"))
    }
}

fn load() -> Result<Ebpf, FloorError> {
    Ebpf::load(FLOOR_OBJECT).map_err(|e| FloorError::Object(e.to_string()))
}
