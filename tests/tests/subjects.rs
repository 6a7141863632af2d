//! Subjects tier: who is allowed must be unforgeable. A policy lists one program (a copy of
//! `cat`) for one protected directory; an unprivileged process (`nobody`; the files are mode
//! 0666, so only the policy stands in the way) tries to pass for that program. Each test
//! asserts that the data was not obtained and that the decision event names the real program.
//!
//! The fixtures (`tests/fixtures/*.c`) are built ahead of time by xtask (`PHIGUARD_FIXTURES`), or
//! here with `gcc` when that is unset. Root only; one at a time (`--test-threads=1`), under the
//! shared kernel lock.

use std::{
    fs,
    os::unix::{
        fs::{chown, PermissionsExt as _},
        process::{CommandExt as _, ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use phiguard::{config::Config, kernel::layer::FileLayer};
use phiguard_proto::v1;
use phiguard_tests::{file_open, process, Harness, Tree};

/// The forger's source (`forge EXE PATH`).
const FORGE_C: &str = include_str!("../fixtures/forge.c");
/// A library whose constructor reads `PHIGUARD_TARGET`.
const PRELOAD_C: &str = include_str!("../fixtures/preload.c");
/// An allowed program that loads a plugin from a memfd (`plugin_host SO`).
const PLUGIN_HOST_C: &str = include_str!("../fixtures/plugin_host.c");
/// An allowed service holding a protected file open (`holder PATH`).
const HOLDER_C: &str = include_str!("../fixtures/holder.c");
/// Takes another process's descriptor (`thief PID FD`).
const THIEF_C: &str = include_str!("../fixtures/thief.c");
/// Receives a descriptor on a unix socket and reads it (`receiver SOCKET`).
const RECEIVER_C: &str = include_str!("../fixtures/receiver.c");
/// Runs a program traced (`ptracer PROGRAM ARGS...`).
const PTRACER_C: &str = include_str!("../fixtures/ptracer.c");
/// An allowed service reading the protected file on request, with a marker in its memory
/// (`service PATH`).
const SERVICE_C: &str = include_str!("../fixtures/service.c");
/// Reads or writes another process's memory (`peek write|read|readv|proc PID …`).
const PEEK_C: &str = include_str!("../fixtures/peek.c");
/// The unprivileged attacker.
const NOBODY: u32 = 65534;
/// What the protected file holds.
const SECRET: &[u8] = b"patient 2: results confidential\n";
/// The forger's exit status when the forge itself failed: 100 + the step.
const FORGE_FAILED: std::ops::RangeInclusive<i32> = 100..=104;

/// The agent enforcing a policy that lists only `allowed` for `tree.watched`, a protected file
/// in it, and a directory of test programs. Fields drop in order: the agent first.
struct Setup {
    h: Harness,
    file: PathBuf,
    allowed: PathBuf,
    /// A second listed program, built here: it loads plugins from a memfd.
    plugin_host: PathBuf,
    /// A third, built here: it holds the protected file open.
    holder: PathBuf,
    /// A fourth: a copy of the `receiver` fixture (another inode, so the fixture itself stays
    /// unlisted).
    allowed_receiver: PathBuf,
    /// A fifth: a copy of the `thief` fixture.
    allowed_taker: PathBuf,
    /// A sixth, built here: it reads the protected file on request.
    service: PathBuf,
    bin: tempfile::TempDir,
    _policies: tempfile::TempDir,
    _tree: Tree,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_mode("enforce")
    }

    /// The same policy in `mode` (`enforce` or `audit`).
    fn with_mode(mode: &str) -> Setup {
        let bin = tempfile::Builder::new()
            .prefix("phiguard-subjects-bin-")
            .tempdir()
            .unwrap();
        fs::set_permissions(bin.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let allowed = bin.path().join("allowed-cat");
        fs::copy("/usr/bin/cat", &allowed).unwrap();
        fs::set_permissions(&allowed, fs::Permissions::from_mode(0o755)).unwrap();
        let plugin_host = build(bin.path(), "plugin_host", PLUGIN_HOST_C, &["-ldl"]);
        let holder = build(bin.path(), "holder", HOLDER_C, &[]);
        let allowed_receiver = bin.path().join("allowed-receiver");
        fs::copy(
            build(bin.path(), "receiver", RECEIVER_C, &[]),
            &allowed_receiver,
        )
        .unwrap();
        let allowed_taker = bin.path().join("allowed-thief");
        fs::copy(build(bin.path(), "thief", THIEF_C, &[]), &allowed_taker).unwrap();
        let service = build(bin.path(), "service", SERVICE_C, &[]);
        let tree = Tree::new();
        let file = tree.watched.join("results.txt");
        fs::write(&file, SECRET).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
        chown(&tree.other, Some(NOBODY), Some(NOBODY)).unwrap();
        let policies = tempfile::Builder::new()
            .prefix("phiguard-policies-")
            .tempdir()
            .unwrap();
        fs::write(
            policies.path().join("subjects.yaml"),
            format!(
                "name: subjects\nmode: {mode}\nrules:\n  - name: results\n    files:\n      - path: {}/**\n        access: [read, write]\n    allow:\n      - exe: {}\n      - exe: {}\n      - exe: {}\n      - exe: {}\n      - exe: {}\n      - exe: {}\n",
                tree.watched.display(),
                allowed.display(),
                plugin_host.display(),
                holder.display(),
                allowed_receiver.display(),
                allowed_taker.display(),
                service.display()
            ),
        )
        .unwrap();
        let config = Config::default().with_policy_dir(policies.path()).unwrap();
        let h = Harness::start_with(&config);
        Setup {
            h,
            file,
            allowed,
            plugin_host,
            holder,
            allowed_receiver,
            allowed_taker,
            service,
            bin,
            _policies: policies,
            _tree: tree,
        }
    }

    /// Builds a fixture into the bin directory with extra `gcc` arguments.
    fn build(&self, name: &str, source: &str, args: &[&str]) -> PathBuf {
        build(self.bin.path(), name, source, args)
    }

    /// Runs `program args` as the attacker with `env`.
    fn as_nobody(&self, program: &Path, args: &[&Path], env: &[(&str, &Path)]) -> Output {
        let mut cmd = Command::new(program);
        cmd.args(args).uid(NOBODY).gid(NOBODY);
        for (key, value) in env {
            cmd.env(key, value);
        }
        cmd.output().expect("spawn")
    }

    /// The route failed the way this kernel's layer refuses, without the data, and a deny
    /// decision on the protected file names `exe`.
    fn assert_refused(&mut self, route: &str, out: &Output, exe: &Path) -> v1::Event {
        assert!(
            !out.stdout.windows(16).any(|w| w == &SECRET[..16]),
            "{route}: the protected data came out: {out:?}"
        );
        if self.h.file_eperm() {
            assert_eq!(
                out.status.code(),
                Some(libc::EPERM),
                "{route}: refused: {out:?}"
            );
        } else {
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGKILL),
                "{route}: killed: {out:?}"
            );
        }
        let event = self.expect_deny(route, exe);
        assert_eq!(
            event.decision.as_ref().unwrap().layer,
            self.layer(),
            "{route}"
        );
        event
    }

    /// The deny decision on the protected file naming `exe` (within 10 s).
    fn expect_deny(&mut self, route: &str, exe: &Path) -> v1::Event {
        let (exe, file) = (exe.display().to_string(), self.file.display().to_string());
        self.h
            .wait_for(Duration::from_secs(10), |e| {
                e.decision
                    .as_ref()
                    .is_some_and(|d| d.verdict == v1::Verdict::Deny as i32)
                    && file_open(e).is_some_and(|f| f.path == file)
                    && process(e).exe == exe
            })
            .unwrap_or_else(|| panic!("{route}: no deny decision naming {exe}: {}", self.h.dump()))
    }

    /// The allowed program, on its own, still reads.
    fn assert_allowed_still_reads(&self) {
        let out = self.as_nobody(&self.allowed, &[&self.file], &[]);
        assert_eq!(out.stdout, SECRET, "the allowed program reads: {out:?}");
    }

    /// The allow decision on the protected file for the allowed program (within 10 s).
    fn expect_allowed_read(&mut self) -> v1::Event {
        let (exe, file) = (
            self.allowed.display().to_string(),
            self.file.display().to_string(),
        );
        self.h
            .wait_for(Duration::from_secs(10), |e| {
                e.decision
                    .as_ref()
                    .is_some_and(|d| d.verdict == v1::Verdict::Allow as i32)
                    && file_open(e).is_some_and(|f| f.path == file)
                    && process(e).exe == exe
            })
            .unwrap_or_else(|| panic!("no allow decision naming {exe}: {}", self.h.dump()))
    }

    /// sha256 of a file, as the agent writes it.
    fn sha256_of(path: &Path) -> String {
        let out = Command::new("sha256sum").arg(path).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    /// The layer file-open denials carry on this kernel.
    fn layer(&self) -> i32 {
        match self.h.file_layer {
            FileLayer::Lsm => v1::EnforcementLayer::Lsm as i32,
            FileLayer::Fanotify => v1::EnforcementLayer::Fanotify as i32,
            FileLayer::Signal => v1::EnforcementLayer::Signal as i32,
        }
    }
}

#[test]
fn a_process_that_points_its_exe_link_at_the_allowed_program_is_still_refused() {
    let mut s = Setup::new();
    let forge = s.build(
        "forge",
        FORGE_C,
        &["-static", "-fno-stack-protector", "-fcf-protection=none"],
    );
    let out = Command::new(&forge)
        .arg(&s.allowed)
        .arg(&s.file)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The forge must have worked, or the test proves nothing.
    assert!(
        !out.status.code().is_some_and(|c| FORGE_FAILED.contains(&c)),
        "the forge itself failed (user namespaces or PR_SET_MM_MAP refused?): {out:?}"
    );
    assert_eq!(
        stderr.lines().next(),
        Some(s.allowed.display().to_string().as_str()),
        "after the forge /proc/self/exe names the allowed program: {out:?}"
    );
    assert!(
        !out.stdout.windows(16).any(|w| w == &SECRET[..16]),
        "the protected data came out: {out:?}"
    );
    if s.h.file_eperm() {
        assert_eq!(out.status.code(), Some(libc::EPERM), "refused: {out:?}");
    } else {
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "killed: {out:?}");
    }
    let forge_path = forge.display().to_string();
    let file = s.file.display().to_string();
    let event =
        s.h.wait_for(Duration::from_secs(10), |e| {
            e.decision
                .as_ref()
                .is_some_and(|d| d.verdict == v1::Verdict::Deny as i32)
                && file_open(e).is_some_and(|f| f.path == file)
        })
        .unwrap_or_else(|| panic!("no deny decision for {file}: {}", s.h.dump()));
    let p = process(&event);
    assert_eq!(
        p.exe,
        forge_path,
        "the decision names the program that ran, not the one it claimed: {event:?}\n{}",
        s.h.dump()
    );
    assert_ne!(
        p.binary_sha256,
        Setup::sha256_of(&s.allowed),
        "the hash is not the allowed program's"
    );
    assert_eq!(event.decision.as_ref().unwrap().layer, s.layer());

    // The allowed program itself still reads.
    let out = Command::new(&s.allowed)
        .arg(&s.file)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert_eq!(out.stdout, SECRET, "the allowed program reads: {out:?}");
    s.h.stop();
}

/// A fixture in `dir`: copied from the directory `PHIGUARD_FIXTURES` names (built ahead of time
/// by xtask, from the same sources with the same arguments: the VM has no compiler), or built
/// here from `source` with extra `gcc` arguments when that is unset.
fn build(dir: &Path, name: &str, source: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    if let Some(built) = std::env::var_os("PHIGUARD_FIXTURES") {
        let built = Path::new(&built).join(name);
        fs::copy(&built, &out)
            .unwrap_or_else(|e| panic!("copying the fixture {}: {e}", built.display()));
        return out;
    }
    let src = dir.join(format!("{name}.c"));
    fs::write(&src, source).unwrap();
    let built = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .args(args)
        .output()
        .expect("gcc runs (the subject tests build their fixtures with it)");
    assert!(built.status.success(), "building {name}: {built:?}");
    out
}

#[test]
fn a_library_preloaded_into_the_allowed_program_makes_it_an_unlisted_subject() {
    let mut s = Setup::new();
    let lib = s.build("preload.so", PRELOAD_C, &["-shared", "-fPIC"]);
    // The attacker's own file.
    chown(&lib, Some(NOBODY), Some(NOBODY)).unwrap();
    let (allowed, file) = (s.allowed.clone(), s.file.clone());
    let out = s.as_nobody(
        &allowed,
        &[Path::new("/dev/null")],
        &[("LD_PRELOAD", &lib), ("PHIGUARD_TARGET", &file)],
    );
    s.assert_refused("LD_PRELOAD of a user's library", &out, &allowed);
    // A library root installed is code the administrator allowed: preloading it changes
    // nothing.
    let system_lib = fs::canonicalize("/lib/x86_64-linux-gnu/libm.so.6").unwrap();
    let out = s.as_nobody(&allowed, &[&file], &[("LD_PRELOAD", &system_lib)]);
    assert_eq!(out.stdout, SECRET, "root's library preloaded: {out:?}");
    s.assert_allowed_still_reads();
    s.h.stop();
}

#[test]
fn a_plugin_loaded_from_a_memfd_makes_the_allowed_program_an_unlisted_subject() {
    let mut s = Setup::new();
    let lib = s.build("plugin.so", PRELOAD_C, &["-shared", "-fPIC"]);
    let (host, file) = (s.plugin_host.clone(), s.file.clone());
    let out = s.as_nobody(&host, &[&lib], &[("PHIGUARD_TARGET", &file)]);
    assert_ne!(
        out.status.code(),
        Some(2),
        "the plugin did not load: {out:?}"
    );
    s.assert_refused("a plugin mapped from a memfd", &out, &host);
    s.assert_allowed_still_reads();
    s.h.stop();
}

#[test]
fn the_allowed_program_run_under_a_tracer_is_an_unlisted_subject() {
    let mut s = Setup::new();
    let tracer = s.build("ptracer", PTRACER_C, &[]);
    let (allowed, file) = (s.allowed.clone(), s.file.clone());
    let out = s.as_nobody(&tracer, &[&allowed, &file], &[]);
    // cat reports the refused open and exits 1; the tracer passes that on.
    assert!(
        !out.stdout.windows(16).any(|w| w == &SECRET[..16]),
        "the protected data came out: {out:?}"
    );
    let refused = if s.h.file_eperm() {
        out.status.code() == Some(1)
    } else {
        out.status.code() == Some(128 + libc::SIGKILL)
    };
    assert!(refused, "the traced program was refused: {out:?}");
    s.expect_deny("the traced program", &allowed);
    s.assert_allowed_still_reads();
    s.h.stop();
}

/// The allowed `service` running as the attacker's user (so the kernel's ptrace access check
/// lets that user reach its memory), answering one request per line on its standard input.
struct Service {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// Its pid and its marker's address (hex), as it printed them.
    pid: PathBuf,
    marker: PathBuf,
}

impl Service {
    fn start(s: &Setup) -> Service {
        use std::io::BufRead as _;
        let mut child = Command::new(&s.service)
            .arg(&s.file)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let (pid, marker) = line
            .trim()
            .split_once(' ')
            .unwrap_or_else(|| panic!("the service's first line: {line:?}"));
        let (pid, marker) = (PathBuf::from(pid), PathBuf::from(marker));
        Service {
            child,
            stdout,
            pid,
            marker,
        }
    }

    /// One request: its marker, and what opening the protected file gave (`read FIRST-LINE`
    /// or `errno N`; `killed` when it died of it).
    fn ask(&mut self) -> (String, String) {
        use std::io::{BufRead as _, Write as _};
        let stdin = self.child.stdin.as_mut().unwrap();
        if stdin.write_all(b"\n").and_then(|()| stdin.flush()).is_err() {
            return (String::new(), "killed".into());
        }
        let mut line = String::new();
        if self.stdout.read_line(&mut line).unwrap_or(0) == 0 {
            return (String::new(), "killed".into());
        }
        let (marker, outcome) = line.trim_end().split_once(' ').unwrap_or(("", ""));
        (marker.to_owned(), outcome.to_owned())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the service answers when it reads the protected file.
fn read_outcome() -> String {
    format!("read {}", String::from_utf8_lossy(SECRET).trim_end())
}

/// Whether a program that taints at the kernel's ptrace access check is attached, checked
/// against what this kernel offers: BPF LSM's `ptrace_access_check` where BPF LSM runs, else
/// an fexit on `ptrace_may_access` where the kernel can trace it; neither on a kernel without
/// both (the host tier's), where the agent warns instead.
fn access_check_taints(h: &Harness) -> bool {
    let attached = |name: &str| {
        !h.not_attached
            .iter()
            .any(|n| n.starts_with(&format!("{name} ")))
    };
    let covered = attached("taint_ptrace_access_check") || attached("taint_ptrace_may_access");
    let traceable =
        fs::read_to_string("/sys/kernel/tracing/available_filter_functions").is_ok_and(|all| {
            all.lines()
                .any(|l| l.split_whitespace().next() == Some("ptrace_may_access"))
        });
    assert_eq!(
        covered,
        h.lsm || traceable,
        "the ptrace access check's taint is attached where the kernel allows it (BPF LSM: {}, \
         ptrace_may_access traceable: {traceable}); not attached: {:?}",
        h.lsm,
        h.not_attached
    );
    covered
}

#[test]
fn writing_the_allowed_services_memory_through_proc_pid_mem_makes_it_an_unlisted_subject() {
    let mut s = Setup::new();
    let peek = s.build("peek", PEEK_C, &[]);
    let covered = access_check_taints(&s.h);
    let mut service = Service::start(&s);
    assert_eq!(
        service.ask(),
        ("original".into(), read_outcome()),
        "before: the service reads"
    );
    let (pid, marker) = (service.pid.clone(), service.marker.clone());
    let out = s.as_nobody(
        &peek,
        &[Path::new("write"), &pid, &marker, Path::new("written")],
        &[],
    );
    assert!(
        out.status.success(),
        "the write into /proc/PID/mem: {out:?}"
    );
    let (seen, outcome) = service.ask();
    assert_eq!(seen, "written", "the write reached the service's memory");
    if covered {
        let refused = if s.h.file_eperm() {
            format!("errno {}", libc::EPERM)
        } else {
            "killed".into()
        };
        assert_eq!(outcome, refused, "the written-into service is refused");
        let exe = s.service.clone();
        let event = s.expect_deny("the service after /proc/PID/mem was written", &exe);
        assert_eq!(event.decision.as_ref().unwrap().layer, s.layer());
    } else {
        // Documented as not covered on a kernel with neither BPF LSM nor fexit.
        assert_eq!(outcome, read_outcome(), "uncovered here: still reads");
    }
    drop(service);
    // A process that nobody wrote into still reads.
    s.assert_allowed_still_reads();
    s.h.stop();
}

#[test]
fn reading_the_allowed_services_memory_or_its_proc_files_taints_nothing() {
    let mut s = Setup::new();
    let peek = s.build("peek", PEEK_C, &[]);
    access_check_taints(&s.h);
    let mut service = Service::start(&s);
    let (pid, marker) = (service.pid.clone(), service.marker.clone());
    // PTRACE_MODE_READ: /proc/PID/status and environ.
    let out = s.as_nobody(&peek, &[Path::new("proc"), &pid], &[]);
    assert!(out.status.success(), "reading /proc/PID files: {out:?}");
    // PTRACE_MODE_ATTACH, reads only: /proc/PID/mem opened read-only, process_vm_readv.
    for how in ["read", "readv"] {
        let out = s.as_nobody(&peek, &[Path::new(how), &pid, &marker], &[]);
        assert_eq!(
            (out.status.code(), out.stdout.as_slice()),
            (Some(0), &b"original\n"[..]),
            "peek {how}: {out:?}"
        );
    }
    assert_eq!(
        service.ask(),
        ("original".into(), read_outcome()),
        "the service read from still reads"
    );
    s.h.stop();
}

#[test]
fn a_refused_process_cannot_take_the_allowed_services_descriptor() {
    use std::io::{BufRead as _, BufReader};
    let mut s = Setup::new();
    let thief = s.build("thief", THIEF_C, &[]);
    // The allowed service, as the attacker's own user (so pidfd_getfd's ptrace check passes).
    let mut holder = Command::new(&s.holder)
        .arg(&s.file)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let fd = PathBuf::from(line.trim());
    assert!(!line.trim().is_empty(), "the holder opened the file");
    let pid = PathBuf::from(holder.id().to_string());
    let out = s.as_nobody(&thief, &[&pid, &fd], &[]);
    drop(holder.stdin.take());
    let _ = holder.wait();
    assert_ne!(out.status.code(), Some(100), "pidfd_open failed: {out:?}");
    assert!(
        !out.stdout.windows(16).any(|w| w == &SECRET[..16]),
        "the taken descriptor gave the data: {out:?}"
    );
    let (layer, refused) = if s.h.lsm {
        (
            v1::EnforcementLayer::Lsm,
            out.status.code() == Some(libc::EPERM),
        )
    } else {
        // No other layer sees a taken descriptor: SIGKILL before the call returns.
        (
            v1::EnforcementLayer::Signal,
            out.status.signal() == Some(libc::SIGKILL),
        )
    };
    assert!(refused, "the thief was refused: {out:?}");
    let event = s.expect_deny("pidfd_getfd", &thief);
    assert_eq!(event.decision.as_ref().unwrap().layer, layer as i32);
    assert_eq!(
        file_open(&event).unwrap().syscall,
        "pidfd_getfd or SCM_RIGHTS (a descriptor received)"
    );
    s.assert_allowed_still_reads();
    s.h.stop();
}

/// The allowed holder hands its descriptor of the protected file (`SCM_RIGHTS`) to `receiver`,
/// which bound its socket first; both run as the attacker's user. Returns the receiver's exit
/// status, what it read through the descriptor, and the holder (still running, holding the
/// file until its stdin closes).
fn hand_over(
    s: &Setup,
    receiver: &Path,
) -> (std::process::ExitStatus, Vec<u8>, std::process::Child) {
    use std::{
        io::{BufRead as _, BufReader, Read as _},
        process::Stdio,
    };
    let socket = PathBuf::from(format!("phiguard-scm-{}", std::process::id()));
    let mut taker = Command::new(receiver)
        .arg(&socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut taken = BufReader::new(taker.stdout.take().unwrap());
    let mut line = String::new();
    taken.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the receiver bound its socket");
    let mut holder = Command::new(&s.holder)
        .arg(&s.file)
        .arg(&socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sent = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut sent)
        .unwrap();
    assert!(
        !sent.trim().is_empty(),
        "the holder opened and sent the file"
    );
    let mut data = Vec::new();
    taken.read_to_end(&mut data).unwrap();
    (taker.wait().unwrap(), data, holder)
}

/// The decision `verdict` on a received descriptor of the protected file naming `exe`, within
/// 10 s (a panic with the events seen otherwise).
fn wait_for_receive(s: &mut Setup, verdict: v1::Verdict, exe: &Path) -> v1::Event {
    let (exe, file) = (exe.display().to_string(), s.file.display().to_string());
    s.h.wait_for(Duration::from_secs(10), |e| {
        e.decision
            .as_ref()
            .is_some_and(|d| d.verdict == verdict as i32)
            && file_open(e).is_some_and(|f| f.path == file && f.syscall == RECEIVED)
            && process(e).exe == exe
    })
    .unwrap_or_else(|| panic!("no {verdict:?} decision naming {exe}: {}", s.h.dump()))
}

/// [`hand_over`] where the receiver may read: asserts it did, lets the holder go and returns
/// its pid (the sender the events should name).
fn hand_over_and_read(s: &Setup, receiver: &Path, who: &str) -> u32 {
    let (status, data, mut holder) = hand_over(s, receiver);
    assert_eq!(
        status.code(),
        Some(0),
        "{who} read the file (programs not attached: {:?})",
        s.h.not_attached
    );
    assert_eq!(data, SECRET, "the handed-over descriptor reads");
    let holder_pid = holder.id();
    drop(holder.stdin.take());
    let _ = holder.wait();
    holder_pid
}

/// The received-descriptor events (`syscall` RECEIVE) on the protected file naming `exe`.
fn receives<'a>(s: &'a Setup, exe: &Path) -> Vec<&'a v1::Event> {
    let (exe, file) = (exe.display().to_string(), s.file.display().to_string());
    s.h.seen
        .iter()
        .filter(|e| {
            file_open(e).is_some_and(|f| f.path == file && f.syscall == RECEIVED)
                && process(e).exe == exe
        })
        .collect()
}

/// `FileOpen.syscall` of a received descriptor.
const RECEIVED: &str = "pidfd_getfd or SCM_RIGHTS (a descriptor received)";

/// Asserts that `event` names the holder (`pid`) as the sender of the descriptor.
fn assert_sender(s: &Setup, event: &v1::Event, pid: u32) {
    let sender = file_open(event)
        .unwrap()
        .sender
        .as_ref()
        .unwrap_or_else(|| panic!("the event names the sender: {event:?}"));
    assert_eq!(sender.pid, pid, "the sender's pid: {event:?}");
    assert_eq!(
        sender.exe,
        s.holder.display().to_string(),
        "the sender's exe: {event:?}"
    );
}

#[test]
fn a_descriptor_handed_over_on_a_unix_socket_is_reported_with_its_sender() {
    let mut s = Setup::new();
    let receiver = s.build("receiver", RECEIVER_C, &[]);
    let (status, data, mut holder) = hand_over(&s, &receiver);
    if s.h.lsm {
        // `file_receive` refuses the descriptor: the message arrives without it.
        assert!(
            !data.windows(16).any(|w| w == &SECRET[..16]),
            "the handed-over descriptor gave the data"
        );
        assert_eq!(status.code(), Some(libc::EPERM), "the receiver was refused");
        let event = s.expect_deny("SCM_RIGHTS", &receiver);
        assert_eq!(
            event.decision.as_ref().unwrap().layer,
            v1::EnforcementLayer::Lsm as i32
        );
        assert_eq!(file_open(&event).unwrap().syscall, RECEIVED);
        assert_sender(&s, &event, holder.id());
    } else {
        // No hook sees a received descriptor without BPF LSM: the hand-over is the allowed
        // program's choice (docs/policies.md, "Descriptors of protected files").
        assert_eq!(
            status.code(),
            Some(0),
            "the receiver read the file (programs not attached: {:?})",
            s.h.not_attached
        );
        assert_eq!(data, SECRET, "the handed-over descriptor reads");
    }
    drop(holder.stdin.take());
    let _ = holder.wait();
    s.assert_allowed_still_reads();
    s.h.stop();
}

#[test]
fn an_allowed_receive_of_a_handed_over_descriptor_is_reported_with_both_ends() {
    let mut s = Setup::new();
    let receiver = s.allowed_receiver.clone();
    let holder_pid = hand_over_and_read(&s, &receiver, "the listed receiver");
    if s.h.lsm {
        let event = wait_for_receive(&mut s, v1::Verdict::Allow, &receiver);
        assert_eq!(
            event.decision.as_ref().unwrap().layer,
            v1::EnforcementLayer::Unspecified as i32,
            "allowed: no layer enforced anything"
        );
        let open = file_open(&event).unwrap();
        assert_eq!(open.access, v1::Access::Read as i32, "{event:?}");
        // `file_receive` runs before the descriptor has a number.
        assert_eq!(open.result, Some(0), "{event:?}");
        assert_sender(&s, &event, holder_pid);
        s.assert_allowed_still_reads();
        s.expect_allowed_read();
        assert_eq!(
            receives(&s, &receiver).len(),
            1,
            "one event per received descriptor: {}",
            s.h.dump()
        );
    } else {
        // No hook sees the transfer: nothing is reported for it (docs/policies.md). The
        // allowed program's later read is reported; the receive before it was not.
        s.assert_allowed_still_reads();
        s.expect_allowed_read();
        assert!(
            receives(&s, &receiver).is_empty(),
            "a receive event without BPF LSM: the docs say none is seen: {}",
            s.h.dump()
        );
    }
    s.h.stop();
}

#[test]
fn an_allowed_take_of_a_descriptor_is_reported_once() {
    use std::io::{BufRead as _, BufReader};
    let mut s = Setup::new();
    let mut holder = Command::new(&s.holder)
        .arg(&s.file)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(!line.trim().is_empty(), "the holder opened the file");
    let (fd, pid) = (
        PathBuf::from(line.trim()),
        PathBuf::from(holder.id().to_string()),
    );
    let taker = s.allowed_taker.clone();
    let out = s.as_nobody(&taker, &[&pid, &fd], &[]);
    drop(holder.stdin.take());
    let _ = holder.wait();
    assert_eq!(
        out.stdout, SECRET,
        "the listed taker read the file: {out:?}"
    );
    let event = wait_for_receive(&mut s, v1::Verdict::Allow, &taker);
    // BPF LSM `file_receive` decides and reports it (before the descriptor has a number); else
    // the call's exit program, with the number.
    let open = file_open(&event).unwrap();
    if s.h.lsm {
        assert_eq!(open.result, Some(0), "{event:?}");
    } else {
        // After stdin, stdout, stderr and the pidfd.
        assert!(open.result.is_some_and(|fd| fd > 3), "{event:?}");
    }
    // Allowed: no layer enforced anything.
    assert_eq!(
        event.decision.as_ref().unwrap().layer,
        v1::EnforcementLayer::Unspecified as i32
    );
    assert_eq!(open.sender, None, "taken, not handed over: {event:?}");
    s.assert_allowed_still_reads();
    s.expect_allowed_read();
    assert_eq!(
        receives(&s, &taker).len(),
        1,
        "one event per taken descriptor: {}",
        s.h.dump()
    );
    s.h.stop();
}

#[test]
fn a_handed_over_descriptor_in_audit_mode_is_a_would_deny_with_both_ends() {
    let mut s = Setup::with_mode("audit");
    let receiver = s.build("receiver", RECEIVER_C, &[]);
    // Audit mode refuses nothing.
    let holder_pid = hand_over_and_read(&s, &receiver, "the receiver");
    if s.h.lsm {
        let event = wait_for_receive(&mut s, v1::Verdict::WouldDeny, &receiver);
        assert_eq!(file_open(&event).unwrap().result, Some(0), "{event:?}");
        assert_sender(&s, &event, holder_pid);
        s.assert_allowed_still_reads();
        s.expect_allowed_read();
        assert_eq!(receives(&s, &receiver).len(), 1, "{}", s.h.dump());
    } else {
        // Not seen without BPF LSM, as in enforce mode.
        s.assert_allowed_still_reads();
        s.expect_allowed_read();
        assert!(receives(&s, &receiver).is_empty(), "{}", s.h.dump());
    }
    s.h.stop();
}

/// A `#!/bin/sh` script that prints the first line of the file it is given (`$1`), read by the
/// shell itself (a redirection of a built-in: no other program runs), by a subshell (`$2` =
/// `subshell`: a forked child), or by `cat` it execs (`$2` = `exec`).
const READER_SCRIPT: &str = r#"#!/bin/sh
case "$2" in
  subshell) (IFS= read -r line < "$1" && printf '%s\n' "$line") ;;
  exec) exec /bin/cat "$1" ;;
  *) IFS= read -r line < "$1" || exit 3; printf '%s\n' "$line" ;;
esac
"#;

/// The agent enforcing a policy that lists two scripts for `tree.watched`: `export.sh` by its
/// link `export` with `exe: /bin/sh`, and `alone.sh` by itself; both in a directory of root's.
struct ScriptSetup {
    h: Harness,
    file: PathBuf,
    script: PathBuf,
    link: PathBuf,
    alone: PathBuf,
    /// The interpreter as decisions name it.
    shell: PathBuf,
    other: PathBuf,
    _bin: tempfile::TempDir,
    _policies: tempfile::TempDir,
    _tree: Tree,
}

impl ScriptSetup {
    fn new() -> ScriptSetup {
        let bin = tempfile::Builder::new()
            .prefix("phiguard-scripts-")
            .tempdir()
            .unwrap();
        fs::set_permissions(bin.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let script = bin.path().join("export.sh");
        let alone = bin.path().join("alone.sh");
        for s in [&script, &alone] {
            fs::write(s, READER_SCRIPT).unwrap();
            fs::set_permissions(s, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let link = bin.path().join("export");
        std::os::unix::fs::symlink("export.sh", &link).unwrap();
        let tree = Tree::new();
        let file = tree.watched.join("results.txt");
        fs::write(&file, SECRET).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
        chown(&tree.other, Some(NOBODY), Some(NOBODY)).unwrap();
        let policies = tempfile::Builder::new()
            .prefix("phiguard-policies-")
            .tempdir()
            .unwrap();
        fs::write(
            policies.path().join("scripts.yaml"),
            format!(
                "name: scripts\nmode: enforce\nrules:\n  - name: results\n    files:\n      - path: {}/**\n        access: [read, write]\n    allow:\n      - script: {}\n        exe: /bin/sh\n      - script: {}\n",
                tree.watched.display(),
                link.display(),
                alone.display(),
            ),
        )
        .unwrap();
        let config = Config::default().with_policy_dir(policies.path()).unwrap();
        let h = Harness::start_with(&config);
        ScriptSetup {
            h,
            file,
            script,
            link,
            alone,
            shell: fs::canonicalize("/bin/sh").unwrap(),
            other: tree.other.clone(),
            _bin: bin,
            _policies: policies,
            _tree: tree,
        }
    }

    /// Runs `cmd` as the attacker.
    fn as_nobody(&self, mut cmd: Command) -> Output {
        cmd.uid(NOBODY)
            .gid(NOBODY)
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        cmd.output().expect("spawn")
    }

    /// The route read the protected file, and the allow decision names the interpreter.
    fn assert_allowed(&mut self, route: &str, out: &Output) -> v1::Event {
        assert_eq!(out.stdout, SECRET, "{route}: the script reads: {out:?}");
        let shell = self.shell.clone();
        self.expect_decision(route, v1::Verdict::Allow, &shell)
    }

    /// The route did not get the data, and a deny decision names the interpreter.
    fn assert_refused(&mut self, route: &str, out: &Output) {
        let shell = self.shell.clone();
        self.assert_refused_naming(route, out, &shell);
    }

    /// [`ScriptSetup::assert_refused`], the decision naming `exe`.
    fn assert_refused_naming(&mut self, route: &str, out: &Output, exe: &Path) {
        assert!(
            !out.stdout.windows(16).any(|w| w == &SECRET[..16]),
            "{route}: the protected data came out: {out:?}"
        );
        let event = self.expect_decision(route, v1::Verdict::Deny, exe);
        assert_eq!(
            process(&event).script,
            None,
            "{route}: a refusal names no script"
        );
        let layer = match self.h.file_layer {
            FileLayer::Lsm => v1::EnforcementLayer::Lsm,
            FileLayer::Fanotify => v1::EnforcementLayer::Fanotify,
            FileLayer::Signal => v1::EnforcementLayer::Signal,
        };
        assert_eq!(
            event.decision.as_ref().unwrap().layer,
            layer as i32,
            "{route}: refused by this kernel's file layer"
        );
    }

    fn expect_decision(&mut self, route: &str, verdict: v1::Verdict, exe: &Path) -> v1::Event {
        let (exe, file) = (exe.display().to_string(), self.file.display().to_string());
        let event = self
            .h
            .wait_for(Duration::from_secs(10), |e| {
                e.decision
                    .as_ref()
                    .is_some_and(|d| d.verdict == verdict as i32)
                    && file_open(e).is_some_and(|f| f.path == file)
                    && process(e).exe == exe
            })
            .unwrap_or_else(|| panic!("{route}: no {verdict:?} naming {exe}: {}", self.h.dump()));
        // The next route's decision must be its own.
        self.h.seen.clear();
        event
    }
}

#[test]
fn a_listed_script_run_by_its_shebang_reads_and_every_forgery_of_it_is_refused() {
    let mut s = ScriptSetup::new();
    let file = s.file.clone();
    // Allowed: executed by its shebang, by the listed link and by its canonical path.
    let mut cmd = Command::new(&s.link);
    cmd.arg(&file);
    let out = s.as_nobody(cmd);
    let event = s.assert_allowed("the listed link", &out);
    // The decision names the script whose identity allowed it, with its hash.
    let named = process(&event).script.clone().expect("process.script");
    assert_eq!(named.path, s.link.display().to_string());
    assert_eq!(named.sha256, Setup::sha256_of(&s.script));
    let mut cmd = Command::new(&s.script);
    cmd.arg(&file);
    let out = s.as_nobody(cmd);
    s.assert_allowed("the script's own path", &out);
    let mut cmd = Command::new(&s.alone);
    cmd.arg(&file);
    let out = s.as_nobody(cmd);
    let event = s.assert_allowed("a script listed alone", &out);
    let named = process(&event).script.clone().expect("process.script");
    assert_eq!(named.path, s.alone.display().to_string());
    // Refused: the interpreter run on it directly, with or without a forged argv.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg(&s.script).arg(&file);
    let out = s.as_nobody(cmd);
    s.assert_refused("sh SCRIPT", &out);
    let mut cmd = Command::new("/bin/sh");
    cmd.arg0(&s.script).arg(&s.script).arg(&file);
    let out = s.as_nobody(cmd);
    s.assert_refused("a forged argv[0]", &out);
    // Refused: a copy elsewhere, and the script reached by a link the caller controls (the
    // path the interpreter reopens could be swapped under it).
    let copy = s.other.join("export.sh");
    fs::copy(&s.script, &copy).unwrap();
    chown(&copy, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut cmd = Command::new(&copy);
    cmd.arg(&file);
    let out = s.as_nobody(cmd);
    s.assert_refused("a copy", &out);
    let theirs = s.other.join("mine");
    std::os::unix::fs::symlink(&s.script, &theirs).unwrap();
    std::os::unix::fs::lchown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut cmd = Command::new(&theirs);
    cmd.arg(&file);
    let out = s.as_nobody(cmd);
    s.assert_refused("a link the caller controls", &out);
    // Refused: a variable that makes an interpreter run other code.
    for (name, value) in [
        ("BASH_ENV", "/dev/null"),
        ("ENV", "/dev/null"),
        ("PYTHONPATH", "/tmp"),
        ("PERL5OPT", "-w"),
        ("NODE_OPTIONS", "--no-warnings"),
    ] {
        let mut cmd = Command::new(&s.script);
        cmd.arg(&file);
        cmd.uid(NOBODY)
            .gid(NOBODY)
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        // After a long variable, so the scan must cross chunk boundaries to see it.
        cmd.env("FILLER", "x".repeat(1000)).env(name, value);
        let out = cmd.output().expect("spawn");
        s.assert_refused(name, &out);
    }
    let mut cmd = Command::new(&s.script);
    cmd.arg(&file);
    let out = s.as_nobody(cmd);
    s.assert_allowed("the script again, after the refusals", &out);
}

#[test]
fn a_scripts_identity_passes_to_its_children_and_not_across_an_exec_or_a_tracer() {
    let mut s = ScriptSetup::new();
    let file = s.file.clone();
    let mut cmd = Command::new(&s.script);
    cmd.arg(&file).arg("subshell");
    let out = s.as_nobody(cmd);
    s.assert_allowed("a subshell (a forked child)", &out);
    // `alone.sh` is listed without an `exe`: only its script identity stands between `cat`
    // (or the traced shell) and the file.
    let mut cmd = Command::new(&s.alone);
    cmd.arg(&file).arg("exec");
    let out = s.as_nobody(cmd);
    let cat = fs::canonicalize("/bin/cat").unwrap();
    s.assert_refused_naming("a program the script execs", &out, &cat);
    let ptracer = build(s._bin.path(), "ptracer", PTRACER_C, &[]);
    let mut cmd = Command::new(&ptracer);
    cmd.arg(&s.alone).arg(&file);
    let out = s.as_nobody(cmd);
    s.assert_refused("the script run under a tracer", &out);
}
