//! Subjects tier: who is allowed must be unforgeable. A policy lists one program (a copy of
//! `cat`) for one protected directory; an unprivileged process (`nobody`; the files are mode
//! 0666, so only the policy stands in the way) tries to pass for that program. Each test
//! asserts that the data was not obtained and that the decision event names the real program.
//!
//! Root only; one at a time (`--test-threads=1`), under the shared kernel lock.

use std::{
    fs,
    os::unix::{
        fs::{chown, PermissionsExt as _},
        process::{CommandExt as _, ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use phiguard::{config::Config, kernel::layer::FileLayer};
use phiguard_proto::v1;
use phiguard_tests::{file_open, process, Harness, Tree};

/// The forger's source (`forge EXE PATH`).
const FORGE_C: &str = include_str!("../fixtures/forge.c");
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
    bin: tempfile::TempDir,
    _policies: tempfile::TempDir,
    _tree: Tree,
}

impl Setup {
    fn new() -> Setup {
        let bin = tempfile::Builder::new()
            .prefix("phiguard-subjects-bin-")
            .tempdir()
            .unwrap();
        fs::set_permissions(bin.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let allowed = bin.path().join("allowed-cat");
        fs::copy("/usr/bin/cat", &allowed).unwrap();
        fs::set_permissions(&allowed, fs::Permissions::from_mode(0o755)).unwrap();
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
                "name: subjects\nmode: enforce\nrules:\n  - name: results\n    files:\n      - path: {}/**\n        access: [read, write]\n    allow:\n      - exe: {}\n",
                tree.watched.display(),
                allowed.display()
            ),
        )
        .unwrap();
        let config = Config::default().with_policy_dir(policies.path()).unwrap();
        let h = Harness::start_with(&config);
        Setup {
            h,
            file,
            allowed,
            bin,
            _policies: policies,
            _tree: tree,
        }
    }

    /// Builds a fixture program (static, so it maps no other file) into the bin directory.
    fn build(&self, name: &str, source: &str) -> PathBuf {
        let src = self.bin.path().join(format!("{name}.c"));
        fs::write(&src, source).unwrap();
        let out = self.bin.path().join(name);
        let built = Command::new("gcc")
            .args([
                "-static",
                "-O2",
                "-fno-stack-protector",
                "-fcf-protection=none",
                "-o",
            ])
            .arg(&out)
            .arg(&src)
            .output()
            .expect("gcc runs (the subject tests build their fixtures with it)");
        assert!(built.status.success(), "building {name}: {built:?}");
        out
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
    let forge = s.build("forge", FORGE_C);
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
