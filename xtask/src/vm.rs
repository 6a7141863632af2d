//! `cargo xtask vm`: the VM test tier. The privileged test binaries (the `phiguard-tests`
//! crate: `tests/tests/*.rs`) run again inside QEMU (TCG: software emulation, since nested KVM
//! fails on these machines) on Debian's 6.12 cloud kernel, which has BPF LSM.
//!
//! The attack tests thus run on four kernels in `cargo xtask test`: the host (no BPF LSM: the
//! fanotify layer), this 6.12 with BPF LSM, the same 6.12 with `bpf` left out of `lsm=` (the
//! `no-bpf` boot, a subset: fanotify must decide), and Debian 12's own 6.1 kernel with BPF LSM
//! (the `bookworm-6.1-*` boots: `attacks` and `subjects` in full, [`BOOKWORM_BINARIES`]; its
//! default `CONFIG_LSM` already names `bpf`). On each, `/init` sets
//! `PHIGUARD_EXPECT_FILE_LAYER` from the active LSMs and a weaker layer fails the tests.
//! `cargo xtask vm --kernel 6.1` runs the 6.1 boot alone (`--test`/`-- FILTER` narrow it).
//!
//! Steps: build the test binaries and the agent (the same debug build as the host tier), fetch
//! the kernel once ([`vm_kernel`]), pack an initramfs ([`initramfs`]) whose `/init`
//! (`vm_init.sh`) mounts what a server has, checks that BPF LSM is active, runs each test
//! binary with `--test-threads=1` and prints `PHIGUARD-VM-RESULT rc=N`; then boot it and read
//! the serial console. A missing result line, a failed test, BPF LSM not active or the time
//! limit all fail the tier, loudly, with the console saved to `target/vm/console.log`.
//!
//! # Adding tests
//!
//! - A new file `tests/tests/NAME.rs` is picked up by itself: it runs on the host tier and here
//!   (except the e2e files in [`HOST_ONLY_TESTS`]).
//!   `cargo xtask vm --test NAME` runs only that file; `cargo xtask vm -- FILTER` passes
//!   libtest arguments (a name filter, `--nocapture`, `--exact` …) to every test binary.
//! - Tests for what only this kernel has (BPF LSM) can read `PHIGUARD_TIER`, which `/init`
//!   sets to `vm`; better, check the feature itself (e.g. `/sys/kernel/security/lsm`) and fail
//!   rather than skip where it must be there.
//! - A test that runs another host program (`/usr/bin/head` …) needs it listed in
//!   [`initramfs::HOST_PROGRAMS`]; its shared libraries come with it.
//! - A test file that needs a whole server the initramfs cannot hold (PostgreSQL: a cluster
//!   directory, `initdb`, the `postgres` user, share files) is host tier only: list its name
//!   in [`HOST_ONLY_TESTS`]. It is not built into the VM run (not even with `--test NAME`),
//!   and the initramfs program check skips it.
//! - Inside the VM: root, hostname `phiguard-vm`, `/tmp` and `/dev/shm` are tmpfs, cgroup v2 at
//!   `/sys/fs/cgroup`, securityfs mounted; bpffs and tracefs are not (the agent mounts them);
//!   `lo` is up, no other network. `PHIGUARD_BIN` names the agent binary.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::{
    cmd::{self, Counts},
    initramfs, setup,
    vm_kernel::{self, Series, VmKernel},
};

/// The line `/init` prints last: `PHIGUARD-VM-RESULT rc=N`, N the first non-zero exit status
/// of the test binaries (0 when all passed).
const RESULT_MARKER: &str = "PHIGUARD-VM-RESULT rc=";
/// The line with the active LSMs (`/sys/kernel/security/lsm`).
const LSM_MARKER: &str = "PHIGUARD-VM-LSM ";
/// The line with bpftool's verdict on program type `lsm`.
const LSM_PROG_MARKER: &str = "PHIGUARD-VM-LSM-PROG ";
/// A line `/init` prints when a mount or set-up command failed.
const INIT_ERROR_MARKER: &str = "PHIGUARD-VM-INIT-ERROR";

/// Memory and CPUs of the VM.
const MEMORY_MIB: u32 = 2048;
const CPUS: u32 = 2;
/// How long QEMU may take to power off after the result line.
const POWER_OFF_GRACE: Duration = Duration::from_secs(30);

/// Options of `cargo xtask vm`.
#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// Only this test target of the phiguard-tests crate (a file in tests/tests/ without `.rs`,
    /// e.g. `host`); repeatable. Default: all.
    #[arg(long = "test", value_name = "NAME")]
    tests: Vec<String>,
    /// Fail if the VM has not reported within this many seconds (boot, tests, power-off).
    #[arg(long, default_value_t = DEFAULT_TIMEOUT, value_name = "SECONDS")]
    timeout: u64,
    /// Only the boot without `bpf` in `lsm=` (the attack tests that must find the fanotify
    /// layer there); the full tier runs it after the main boot.
    #[arg(long, conflicts_with_all = ["tests", "args", "kernel"])]
    no_bpf: bool,
    /// Only one boot, on this kernel: `6.12` (Debian's backport, the main boots) or `6.1`
    /// (Debian 12's own kernel; default tests there: [`BOOKWORM_BINARIES`]), with `--test`
    /// and libtest arguments as given.
    #[arg(long, value_name = "SERIES")]
    kernel: Option<Series>,
    /// Arguments for every test binary (libtest: a name filter, `--nocapture` …), after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

/// Each boot's hang guard, seconds (a guard against a hung VM, not a time limit on the tests).
/// The longest boot took about 2260 s in CI with both boots side by side (the kernel's
/// verifier is slow under emulation: every agent start verifies every program, and the
/// open-exit program takes about 450 ms on the host already).
const DEFAULT_TIMEOUT: u64 = 3000;

impl VmArgs {
    /// Every test, default time limit (what `cargo xtask test` runs).
    pub fn all() -> VmArgs {
        VmArgs {
            tests: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            no_bpf: false,
            kernel: None,
            args: Vec::new(),
        }
    }
}

fn step(what: &str) {
    println!("vm: {what}");
}

/// `cargo xtask vm`: set up, then run the tier and print its tally.
pub fn vm(args: &VmArgs) -> anyhow::Result<()> {
    setup::setup()?;
    let mut counts = Counts::default();
    let result = run_tier(args, &mut counts);
    println!(
        "vm: tests: {} passed, {} failed",
        counts.passed,
        if result.is_err() {
            counts.failed.max(1)
        } else {
            counts.failed
        }
    );
    result
}

/// Builds, boots and checks the VMs, adding the tests run inside to `counts`.
///
/// The tests are split into boots ([`plan`]) that run side by side, as many at a time as the
/// host has CPUs: each QEMU runs its guest on one host thread (`tcg,thread=single`), so one
/// boot leaves the other CPUs idle.
pub fn run_tier(args: &VmArgs, counts: &mut Counts) -> anyhow::Result<()> {
    let started = Instant::now();
    let work = cmd::target_dir().join("vm");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    step("building the test binaries and the agent");
    let no_bpf_binaries: Vec<String> = NO_BPF_BINARIES.iter().map(|b| (*b).to_owned()).collect();
    let bookworm_binaries: Vec<String> =
        BOOKWORM_BINARIES.iter().map(|b| (*b).to_owned()).collect();
    let tests = test_binaries(if args.no_bpf {
        &no_bpf_binaries
    } else if args.kernel == Some(Series::V6_1) && args.tests.is_empty() {
        &bookworm_binaries
    } else {
        &args.tests
    })?;
    if tests.is_empty() {
        bail!("no test binaries matched {:?}", args.tests);
    }
    let agent = agent_binary()?;
    let opener = crate::fixtures::opener()?;
    let fixtures = crate::fixtures::subjects()?;

    let boots = plan(args, &tests)?;
    let mut kernels = Vec::new();
    for series in [Series::V6_12, Series::V6_1] {
        if !boots.iter().any(|b| b.series == series) {
            continue;
        }
        step(&format!(
            "kernel: looking for Debian's {} cloud kernel",
            series.name()
        ));
        let kernel = vm_kernel::ensure(series)?;
        step(&format!(
            "kernel: {} {} (default LSMs: {})",
            kernel.package,
            kernel.version,
            kernel.lsm.join(",")
        ));
        kernels.push(kernel);
    }

    let parallel = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(boots.len());
    step(&format!(
        "{} boot(s), {parallel} at a time: {}",
        boots.len(),
        boots
            .iter()
            .map(|b| format!("{} ({})", b.name, b.describe()))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    let shared = Shared {
        kernels: &kernels,
        agent: &agent,
        opener: &opener,
        fixtures: &fixtures,
        work: &work,
        timeout: Duration::from_secs(args.timeout),
        tagged: boots.len() > 1,
    };
    let queue = std::sync::Mutex::new(boots.iter());
    let outcomes = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| loop {
                let next = queue.lock().expect("boot queue").next();
                let Some(boot) = next else { break };
                let outcome = boot.run(&shared);
                outcomes
                    .lock()
                    .expect("boot outcomes")
                    .push((boot.name.as_str(), outcome));
            });
        }
    });
    let mut problems = Vec::new();
    for (name, outcome) in outcomes.into_inner().expect("boot outcomes") {
        match outcome {
            Ok(boot_counts) => {
                counts.passed += boot_counts.passed;
                counts.failed += boot_counts.failed;
            }
            Err(error) => {
                counts.failed += 1;
                problems.push(format!("{name}: {error:#}"));
            }
        }
    }
    step(&format!(
        "{} in {:.0} s ({} passed, {} failed)",
        if problems.is_empty() { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64(),
        counts.passed,
        counts.failed
    ));
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

/// Groups of test files that get a boot of their own, beside the boot of all the others
/// (`main`), so that the boots take about as long. In CI on the 2-CPU machine alone (`.ci/run`
/// at b32d7e9, seconds): `attacks`+`break_glass`+`cli`+`kernel`+`subjects` 1761 for 39
/// tests (every agent start verifies every BPF LSM program under emulation), `main` (`enforce`,
/// `host`, `ops`) 1465 for 31; earlier runs put `cli` at about 81 and `kernel` at 72, so those
/// two now boot with `main`. The boot without `bpf` in `lsm=` (80) is queued after the others.
const OWN_BOOTS: &[&[&str]] = &[&["attacks", "subjects", "break_glass"]];

/// The boots for `args`: with a full run, each group of [`OWN_BOOTS`] alone, the other files
/// together, then the boots on Debian 12's own 6.1 kernel (`attacks`, then `subjects`), then
/// the boot without `bpf` in `lsm=`; with `--no-bpf`, that one alone; with `--kernel`, one boot
/// on that kernel.
///
/// The queue is taken in this order by as many workers as the host has CPUs: on the 2-CPU
/// machine the long 6.1 boot (`attacks`) starts when `main` ends, beside the tail of the
/// longest 6.12 boot; the short ones (6.1 `subjects`, then `no-bpf`) follow that one.
fn plan(args: &VmArgs, tests: &[(String, PathBuf)]) -> anyhow::Result<Vec<Boot>> {
    if args.no_bpf {
        return Ok(vec![Boot::without_bpf(tests)?]);
    }
    if let Some(series) = args.kernel {
        return Ok(vec![Boot {
            name: match series {
                Series::V6_12 => "main".to_owned(),
                Series::V6_1 => BOOKWORM_BOOT.to_owned(),
            },
            tests: tests.to_vec(),
            lsm: Lsm::WithBpf,
            series,
            args: args.args.clone(),
        }]);
    }
    let boot = |name: String, tests: Vec<(String, PathBuf)>| Boot {
        name,
        tests,
        lsm: Lsm::WithBpf,
        series: Series::V6_12,
        args: args.args.clone(),
    };
    let mut boots = Vec::new();
    let mut rest: Vec<(String, PathBuf)> = tests.to_vec();
    for group in OWN_BOOTS {
        let (own, others): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|(name, _)| group.contains(&name.as_str()));
        rest = others;
        if !own.is_empty() {
            let name = own
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join("+");
            boots.push(boot(name, own));
        }
    }
    if !rest.is_empty() {
        boots.push(boot("main".to_owned(), rest));
    }
    if args.tests.is_empty() && args.args.is_empty() {
        for binary in BOOKWORM_BINARIES {
            boots.push(Boot::bookworm(tests, binary)?);
        }
        boots.push(Boot::without_bpf(tests)?);
    }
    Ok(boots)
}

/// What every boot shares.
struct Shared<'a> {
    /// The kernels the boots need, one per series.
    kernels: &'a [VmKernel],
    agent: &'a Path,
    opener: &'a Path,
    fixtures: &'a Path,
    /// `target/vm`: the boot named `main` writes here, the others in a folder of their name.
    work: &'a Path,
    timeout: Duration,
    /// Whether console lines get the boot's name in front (more than one boot runs).
    tagged: bool,
}

/// One boot of the VM: an initramfs with `tests`, run under `lsm`.
struct Boot {
    /// `main`, a test file's name, or `no-bpf`.
    name: String,
    tests: Vec<(String, PathBuf)>,
    lsm: Lsm,
    /// Which kernel it boots.
    series: Series,
    /// libtest arguments for every test binary.
    args: Vec<String>,
}

impl Boot {
    /// The boot with `bpf` left out of `lsm=`, running [`NO_BPF_TESTS`] of
    /// [`NO_BPF_BINARIES`].
    fn without_bpf(tests: &[(String, PathBuf)]) -> anyhow::Result<Boot> {
        let chosen: Vec<(String, PathBuf)> = tests
            .iter()
            .filter(|(name, _)| NO_BPF_BINARIES.contains(&name.as_str()))
            .cloned()
            .collect();
        for binary in NO_BPF_BINARIES {
            if !chosen.iter().any(|(name, _)| name == binary) {
                bail!("the {binary} test binary was not built");
            }
        }
        Ok(Boot {
            name: "no-bpf".to_owned(),
            tests: chosen,
            lsm: Lsm::WithoutBpf,
            series: Series::V6_12,
            args: NO_BPF_TESTS.iter().map(|t| (*t).to_owned()).collect(),
        })
    }

    /// A boot on Debian 12's own 6.1 kernel, BPF LSM on, running every test of `binary` (one
    /// of [`BOOKWORM_BINARIES`]; a boot each, so the short one can run beside the tail of the
    /// longest 6.12 boot while the long one follows `main`).
    fn bookworm(tests: &[(String, PathBuf)], binary: &str) -> anyhow::Result<Boot> {
        let chosen: Vec<(String, PathBuf)> = tests
            .iter()
            .filter(|(name, _)| name == binary)
            .cloned()
            .collect();
        if chosen.is_empty() {
            bail!("the {binary} test binary was not built");
        }
        Ok(Boot {
            name: format!("{BOOKWORM_BOOT}-{binary}"),
            tests: chosen,
            lsm: Lsm::WithBpf,
            series: Series::V6_1,
            args: Vec::new(),
        })
    }

    /// The kernel this boot runs.
    fn kernel<'k>(&self, shared: &Shared<'k>) -> anyhow::Result<&'k VmKernel> {
        shared
            .kernels
            .iter()
            .find(|k| k.series == self.series)
            .with_context(|| format!("no {} kernel was fetched", self.series.name()))
    }

    /// The test files, for the plan's line.
    fn describe(&self) -> String {
        let names: Vec<&str> = self.tests.iter().map(|(n, _)| n.as_str()).collect();
        match self.lsm {
            Lsm::WithBpf => format!("{} on {}", names.join(", "), self.series.name()),
            Lsm::WithoutBpf => format!(
                "{} on {} without bpf in lsm=",
                names.join(", "),
                self.series.name()
            ),
        }
    }

    /// Packs, boots and checks this boot: its test counts, or why it failed.
    fn run(&self, shared: &Shared) -> anyhow::Result<Counts> {
        let started = Instant::now();
        let kernel = self.kernel(shared)?;
        let work = if self.name == "main" {
            shared.work.to_path_buf()
        } else {
            shared.work.join(&self.name)
        };
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let initrd = initramfs::build(
            &initramfs::Contents {
                tests: &self.tests,
                agent: shared.agent,
                opener: shared.opener,
                fixtures: shared.fixtures,
                args: &self.args,
            },
            &work,
        )?;
        let size = fs::metadata(&initrd)?.len();
        let log = work.join("console.log");
        step(&format!(
            "{}: initramfs {} ({:.1} MiB); booting {} under QEMU (TCG, {CPUS} CPUs, \
             {MEMORY_MIB} MiB, {}; limit {} s); console in {}",
            self.name,
            initrd.display(),
            size as f64 / (1024.0 * 1024.0),
            kernel.package,
            match self.lsm {
                Lsm::WithBpf => kernel
                    .lsm_param()
                    .map_or_else(|| "BPF LSM".to_owned(), |p| format!("BPF LSM, {p}")),
                Lsm::WithoutBpf => kernel.lsm_param_without_bpf(),
            },
            shared.timeout.as_secs(),
            log.display()
        ));
        let tag = if shared.tagged {
            format!("[{}] ", self.name)
        } else {
            String::new()
        };
        let report = boot(kernel, &initrd, &log, &tag, shared.timeout, self.lsm)?;
        let mut verdict = report.verdict(&log, self.lsm);
        if verdict.is_ok()
            && self.lsm == Lsm::WithoutBpf
            && report.counts.passed < NO_BPF_TESTS.len() as u64
        {
            verdict = Err(anyhow::anyhow!(
                "the boot without BPF LSM ran {} of the {} tests it should; console in {}",
                report.counts.passed,
                NO_BPF_TESTS.len(),
                log.display()
            ));
        }
        step(&format!(
            "{}: {} in {:.0} s ({} passed, {} failed)",
            self.name,
            if verdict.is_ok() { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64(),
            report.counts.passed,
            report.counts.failed
        ));
        verdict.map(|()| report.counts)
    }
}

/// Test files (`tests/tests/NAME.rs`) that run on the host tier only, and why:
/// - `collector`, `agent_collector`: the e2e tier (agent → collector → subscriber over loopback):
///   processes and TLS, nothing kernel-specific beyond what the host tier covers.
/// - `store_faults`: the collector's store on a full tmpfs and on a loop device that fails
///   writes (mount, losetup, mkfs.ext4 on the host).
/// - `db`: starts real PostgreSQL and MariaDB servers (`initdb`, `pg_ctl`, `psql`, `pgbench`,
///   `mariadb-install-db`, `mariadbd`, `mariadb`).
/// - `subscribers`: the collector's subscriber scopes and audited subscriptions (processes and
///   TLS, like `collector`).
/// - `trail`: the collector's key custody, exported checkpoints and metrics (processes, TLS
///   and files, like `collector`).
/// - `siem`: the collector's OCSF and CEF export, to files and to a real `rsyslogd` over TLS
///   (validated by a Python script).
pub const HOST_ONLY_TESTS: &[&str] = &[
    "collector",
    "agent_collector",
    "fleet",
    "store_faults",
    "db",
    "subscribers",
    "trail",
    "siem",
];

/// The `phiguard-tests` executables `cargo test --no-run` builds, as (name, path): the
/// library's unit tests first, then each test file by name (the order `cargo test` runs them).
/// Without `only`, the e2e files ([`HOST_ONLY_TESTS`]) are left out.
fn test_binaries(only: &[String]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut cargo = cmd::cargo();
    cargo.args(["test", "-p", "phiguard-tests", "--no-run"]);
    for name in only {
        cargo.args(["--test", name]);
    }
    let mut found: Vec<(bool, String, PathBuf)> = artifacts(&mut cargo)?
        .into_iter()
        .filter(|a| a["profile"]["test"] == true)
        .filter(|a| {
            a["target"]["name"]
                .as_str()
                .is_none_or(|name| !HOST_ONLY_TESTS.contains(&name))
        })
        .filter_map(|a| {
            let is_lib = a["target"]["kind"].as_array()?.iter().any(|k| k == "lib");
            Some((
                !is_lib,
                a["target"]["name"].as_str()?.to_owned(),
                PathBuf::from(a["executable"].as_str()?),
            ))
        })
        .collect();
    found.sort();
    Ok(found
        .into_iter()
        .filter(|(is_file, name, _)| {
            !only.is_empty() || !*is_file || !HOST_ONLY_TESTS.contains(&name.as_str())
        })
        .map(|(_, name, path)| (name, path))
        .collect())
}

/// Builds `target/debug/phiguard` (what the CLI tests run) and returns its path.
fn agent_binary() -> anyhow::Result<PathBuf> {
    let mut cargo = cmd::cargo();
    cargo.args(["build", "-p", "phiguard-agent", "--bin", "phiguard"]);
    artifacts(&mut cargo)?
        .into_iter()
        .filter(|a| a["target"]["name"] == "phiguard")
        .find_map(|a| Some(PathBuf::from(a["executable"].as_str()?)))
        .context("cargo built no phiguard executable")
}

/// Runs a cargo build command and returns its `compiler-artifact` messages that have an
/// executable; cargo's progress and diagnostics go to the terminal.
fn artifacts(cargo: &mut Command) -> anyhow::Result<Vec<Value>> {
    cargo
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    let out = cargo
        .output()
        .with_context(|| format!("starting {cargo:?}"))?;
    if !out.status.success() {
        bail!("{cargo:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["executable"].is_string())
        .collect())
}

/// Which LSM list a boot gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lsm {
    /// The kernel's default list, with `bpf` (added when the default lacks it).
    WithBpf,
    /// The default list without `bpf`: LSM programs load and attach but never run.
    WithoutBpf,
}

/// The name of the boot on Debian 12's own kernel.
const BOOKWORM_BOOT: &str = "bookworm-6.1";

/// The test files the boots on Debian 12's own 6.1 kernel run, every test of each, one boot
/// per file in the full tier (`bookworm-6.1-attacks`, `bookworm-6.1-subjects`; both in one
/// boot with `--kernel 6.1`): the attack routes and the forged-identity routes, with the BPF
/// LSM layer required (as on 6.12). Each alone on the 2-CPU machine (seconds, 6.1.0-57):
/// `attacks` 770 for 26 tests, `subjects` 139 for 6.
const BOOKWORM_BINARIES: &[&str] = &["attacks", "subjects"];

/// The test files the boot without `bpf` in `lsm=` runs (filtered by [`NO_BPF_TESTS`]).
const NO_BPF_BINARIES: &[&str] = &["attacks", "subjects"];

/// The tests the boot without `bpf` in `lsm=` runs (libtest filters, OR'ed, given to each of
/// [`NO_BPF_BINARIES`]; each name belongs to one file). From `attacks`: enough to prove the
/// agent sees that LSM programs would not run and falls back to fanotify (the tests fail on
/// any other layer), that fanotify refuses an open there, that a change without an open is
/// reported, and that files the layer stopped asking about are asked about again once they
/// move into the protected tree (tmpfs here, ext4 on the host), and that a 32-bit `openat2`
/// with a forged upper register half is decided by the flags the kernel uses (the fanotify
/// layer's reading of `/proc/PID/syscall` on a second kernel). From `subjects`: every forged-identity and code-injection route, as issue 16
/// asks for every kernel of the tier (a distribution kernel whose BPF LSM is off).
const NO_BPF_TESTS: &[&str] = &[
    "plain_open_by_an_unlisted_program_is_refused",
    "a_32_bit_openat2_is_decided_by_the_flags_the_kernel_uses_not_a_forged_upper_register_half",
    "a_hard_link_made_after_the_policy_loaded_is_refused",
    "truncate_of_a_protected_file_is_refused_under_lsm",
    "unprotected_files_waved_through_then_moved_or_linked_into_the_tree_are_protected",
    "a_process_that_points_its_exe_link_at_the_allowed_program_is_still_refused",
    "a_library_preloaded_into_the_allowed_program_makes_it_an_unlisted_subject",
    "a_plugin_loaded_from_a_memfd_makes_the_allowed_program_an_unlisted_subject",
    "the_allowed_program_run_under_a_tracer_is_an_unlisted_subject",
    "a_refused_process_cannot_take_the_allowed_services_descriptor",
    "a_descriptor_handed_over_on_a_unix_socket_is_reported_with_its_sender",
    "an_allowed_receive_of_a_handed_over_descriptor_is_reported_with_both_ends",
    "an_allowed_take_of_a_descriptor_is_reported_once",
    "a_handed_over_descriptor_in_audit_mode_is_a_would_deny_with_both_ends",
    "a_listed_script_run_by_its_shebang_reads_and_every_forgery_of_it_is_refused",
    "a_scripts_identity_passes_to_its_children_and_not_across_an_exec_or_a_tracer",
    "writing_the_allowed_services_memory_through_proc_pid_mem_makes_it_an_unlisted_subject",
    "reading_the_allowed_services_memory_or_its_proc_files_taints_nothing",
];

/// QEMU, killed when dropped (every way out of [`boot`]).
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What follows `marker` in `line` (the console can put other output before it).
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

/// What the console said.
#[derive(Debug, Default)]
struct Report {
    /// The exit status in the result line.
    result: Option<i32>,
    /// The active LSMs.
    lsm: Option<String>,
    /// bpftool's line on program type `lsm`.
    lsm_prog: Option<String>,
    /// `/init` set-up failures.
    init_errors: Vec<String>,
    /// The tests' tally.
    counts: Counts,
    /// Why the console ended early, if it did.
    cut_short: Option<String>,
}

impl Report {
    /// Reads one console line.
    fn add_line(&mut self, line: &str) {
        self.counts.add_line(line);
        if let Some(rc) = after(line, RESULT_MARKER) {
            self.result = rc.trim().parse().ok();
        } else if let Some(rest) = after(line, LSM_PROG_MARKER) {
            self.lsm_prog = Some(rest.trim().to_owned());
        } else if let Some(rest) = after(line, LSM_MARKER) {
            self.lsm = Some(rest.trim().to_owned());
        } else if line.contains(INIT_ERROR_MARKER) {
            self.init_errors.push(line.to_owned());
        }
    }

    /// Whether the tier passed: the VM reported, BPF LSM is active (inactive for
    /// [`Lsm::WithoutBpf`]), every test passed.
    fn verdict(&self, log: &Path, lsm: Lsm) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if let Some(why) = &self.cut_short {
            problems.push(why.clone());
        }
        match self.result {
            None if self.cut_short.is_some() => {}
            None => problems.push(format!(
                "the VM never reported a result (no `{RESULT_MARKER}N` line): it crashed, \
                 panicked, hung or powered off early"
            )),
            Some(0) => {}
            Some(rc) => problems.push(format!(
                "tests failed inside the VM (rc={rc}, {} failed)",
                self.counts.failed
            )),
        }
        if self.result.is_some() && lsm == Lsm::WithoutBpf {
            let active = self.lsm.as_deref().unwrap_or("");
            if active.split(',').any(|l| l == "bpf") {
                problems.push(format!(
                    "BPF LSM is active although `bpf` was left out of lsm= (active LSMs: {active:?})"
                ));
            }
        } else if self.result.is_some() {
            let lsm = self.lsm.as_deref().unwrap_or("");
            if !lsm.split(',').any(|l| l == "bpf") {
                problems.push(format!(
                    "BPF LSM is not active in the VM (active LSMs: {lsm:?})"
                ));
            }
            let prog = self.lsm_prog.as_deref().unwrap_or("");
            if !prog.contains("program_type lsm is available") {
                problems.push(format!(
                    "the VM kernel refuses BPF LSM programs (bpftool: {prog:?})"
                ));
            }
        }
        if !self.init_errors.is_empty() {
            problems.push(format!(
                "/init could not set up the VM: {}",
                self.init_errors.join("; ")
            ));
        }
        if problems.is_empty() {
            return Ok(());
        }
        bail!(
            "the VM tier FAILED: {}; console in {}",
            problems.join("; "),
            log.display()
        )
    }
}

/// A console line without its line ending, terminal escape sequences (the firmware clears the
/// screen) and other control characters.
fn printable(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ parameters final-byte; otherwise ESC and one character.
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Boots the VM, echoing its console to the terminal (each line after `tag`) and to `log`,
/// until it powers off or `limit` passes.
fn boot(
    kernel: &VmKernel,
    initrd: &Path,
    log: &Path,
    tag: &str,
    limit: Duration,
    lsm: Lsm,
) -> anyhow::Result<Report> {
    let mut append = String::from("console=ttyS0 quiet panic=-1");
    let param = match lsm {
        Lsm::WithBpf => kernel.lsm_param(),
        Lsm::WithoutBpf => Some(kernel.lsm_param_without_bpf()),
    };
    if let Some(param) = param {
        append.push(' ');
        append.push_str(&param);
    }
    let mut qemu = Command::new("qemu-system-x86_64");
    // One host thread for both vCPUs: with multi-threaded TCG the guest kernel's live code
    // patching (int3-based `text_poke_bp`, run at every tracepoint attach and detach) raced
    // with the other vCPU's translated code once in three runs here, and the guest died with
    // "Oops: int3" in `syscall_trace_enter`.
    qemu.args(["-accel", "tcg,thread=single", "-cpu", "max"])
        .args(["-m", &MEMORY_MIB.to_string(), "-smp", &CPUS.to_string()])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut qemu = Qemu(
        qemu.spawn()
            .context("starting qemu-system-x86_64 (package qemu-system-x86)")?,
    );
    let stdout = qemu.0.stdout.take().context("qemu stdout")?;
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = printable(&String::from_utf8_lossy(&buf));
            buf.clear();
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut report = Report::default();
    let start = Instant::now();
    let mut deadline = start + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                println!("{tag}{line}");
                writeln!(file, "{line}")?;
                let had_result = report.result.is_some();
                report.add_line(&line);
                if !had_result && report.result.is_some() {
                    deadline = Instant::now() + POWER_OFF_GRACE;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if report.result.is_none() {
                    report.cut_short = Some(format!(
                        "no result within {} s (raise it with `cargo xtask vm --timeout`)",
                        limit.as_secs()
                    ));
                }
                // Powered off too slowly after reporting: not a failure, but stop it.
                break;
            }
        }
    }
    let status = qemu.0.try_wait().ok().flatten();
    drop(qemu);
    if report.result.is_none() && report.cut_short.is_none() {
        if let Some(status) = status.filter(|s| !s.success()) {
            report.cut_short = Some(format!("qemu exited with {status} before any result"));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_prints_the_markers_the_runner_reads() {
        for marker in [
            RESULT_MARKER,
            LSM_MARKER,
            LSM_PROG_MARKER,
            INIT_ERROR_MARKER,
        ] {
            assert!(initramfs::INIT.contains(marker.trim_end()), "{marker}");
        }
    }

    fn report(console: &str) -> Report {
        let mut report = Report::default();
        for line in console.lines() {
            report.add_line(line);
        }
        report
    }

    const GOOD: &str = "\
PHIGUARD-VM-LSM lockdown,capability,landlock,yama,bpf,ipe
PHIGUARD-VM-LSM-PROG eBPF program_type lsm is available
test result: ok. 13 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.1s
PHIGUARD-VM-RESULT rc=0
";

    #[test]
    fn the_full_tier_queues_the_6_1_boots_after_main_and_before_no_bpf() {
        let tests: Vec<(String, PathBuf)> =
            ["lib", "attacks", "break_glass", "enforce", "subjects"]
                .iter()
                .map(|n| ((*n).to_owned(), PathBuf::from(n)))
                .collect();
        let boots = plan(&VmArgs::all(), &tests).unwrap();
        let names: Vec<(&str, Series, Lsm)> = boots
            .iter()
            .map(|b| (b.name.as_str(), b.series, b.lsm))
            .collect();
        assert_eq!(
            names,
            [
                ("attacks+break_glass+subjects", Series::V6_12, Lsm::WithBpf),
                ("main", Series::V6_12, Lsm::WithBpf),
                ("bookworm-6.1-attacks", Series::V6_1, Lsm::WithBpf),
                ("bookworm-6.1-subjects", Series::V6_1, Lsm::WithBpf),
                ("no-bpf", Series::V6_12, Lsm::WithoutBpf),
            ]
        );
        for (boot, file) in boots[2..4].iter().zip(BOOKWORM_BINARIES) {
            let names: Vec<&str> = boot.tests.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, [*file]);
            assert!(boot.args.is_empty(), "every test of the file");
        }
    }

    #[test]
    fn console_lines_lose_escape_sequences() {
        assert_eq!(
            printable("c\u{1b}[?7l\u{1b}[2J\u{1b}cPHIGUARD-VM-LSM bpf\r\n"),
            "cPHIGUARD-VM-LSM bpf"
        );
    }

    #[test]
    fn a_clean_run_passes_and_is_counted() {
        let r = report(GOOD);
        assert!(r.verdict(Path::new("log"), Lsm::WithBpf).is_ok());
        assert_eq!(r.result, Some(0));
        assert_eq!(r.counts.passed, 13);
    }

    #[test]
    fn missing_result_failed_tests_and_no_bpf_lsm_all_fail() {
        let log = Path::new("log");
        let no_result = GOOD.replace("PHIGUARD-VM-RESULT rc=0", "Kernel panic");
        assert!(report(&no_result).verdict(log, Lsm::WithBpf).is_err());
        let failed = GOOD.replace("rc=0", "rc=101");
        let error = report(&failed)
            .verdict(log, Lsm::WithBpf)
            .unwrap_err()
            .to_string();
        assert!(error.contains("rc=101"), "{error}");
        let no_bpf = GOOD.replace(",bpf,", ",");
        let error = report(&no_bpf)
            .verdict(log, Lsm::WithBpf)
            .unwrap_err()
            .to_string();
        assert!(error.contains("BPF LSM is not active"), "{error}");
        let inactive = report(&no_bpf);
        assert!(inactive.verdict(log, Lsm::WithoutBpf).is_ok());
        let error = report(GOOD)
            .verdict(log, Lsm::WithoutBpf)
            .unwrap_err()
            .to_string();
        assert!(error.contains("left out of lsm="), "{error}");
        let refused = GOOD.replace("is available", "is NOT available");
        assert!(report(&refused).verdict(log, Lsm::WithBpf).is_err());
    }
}
