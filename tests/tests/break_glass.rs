//! Host and VM tiers, break-glass emergency access: `phiguard break-glass` lifts the
//! allow-lists for one user for a limited time. A real agent binary enforces a real policy
//! against a real unprivileged process (`nobody` running `head`): refused, allowed under the
//! grant (the event names it), still allowed while the agent restarts and after, refused again
//! once the grant's time is up — the kernel ends it by itself — and the end is reported. Root
//! only; one at a time (`--test-threads=1`).

use std::{
    ffi::OsStr,
    fs,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use phiguard_proto::v1::{self, event::Body};
use phiguard_tests::{
    agent::{binary, AgentProcess},
    file_open, process, require_root, Tree, UnloadOnDrop,
};

const NOBODY: u32 = 65534;

/// `phiguard run --policies POLICIES` with grants in `grants` and its own status file.
fn start_agent(policies: &Path, grants: &Path, status_file: &Path) -> AgentProcess {
    AgentProcess::start([
        OsStr::new("--policies"),
        policies.as_os_str(),
        OsStr::new("--break-glass-dir"),
        grants.as_os_str(),
        OsStr::new("--status-file"),
        status_file.as_os_str(),
    ])
}

/// A protected file `nobody` may read by its mode, a policy that lets only `cat` read it, and a
/// root-only break-glass directory.
struct Setup {
    /// Removed last (after the pins: the test process is not on the allow-list).
    _tree: Tree,
    file: PathBuf,
    policies: tempfile::TempDir,
    grants: PathBuf,
    /// The agent's status file (its own, not the system's).
    status_file: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        require_root();
        let tree = Tree::new();
        let file = tree.watched.join("rec.txt");
        fs::write(&file, "patient 1\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let policies = tempfile::Builder::new()
            .prefix("phiguard-policies-")
            .tempdir()
            .unwrap();
        fs::write(
            policies.path().join("test.yaml"),
            format!(
                "name: records-test\nmode: enforce\nrules:\n  - name: patient-files\n    files:\n      - path: {}/**\n        access: [read, write]\n    allow:\n      - exe: /usr/bin/cat\n",
                tree.watched.display()
            ),
        )
        .unwrap();
        let grants = tree.dir.path().join("break-glass");
        let status_file = tree.dir.path().join("status.json");
        Setup {
            _tree: tree,
            file,
            policies,
            grants,
            status_file,
        }
    }

    fn agent(&self) -> AgentProcess {
        start_agent(self.policies.path(), &self.grants, &self.status_file)
    }

    /// `head FILE` as `nobody`.
    fn read_as_nobody(&self) -> Output {
        Command::new("/usr/bin/head")
            .arg(&self.file)
            .uid(NOBODY)
            .gid(NOBODY)
            .stderr(Stdio::null())
            .output()
            .expect("spawn head")
    }

    /// `phiguard break-glass ARGS` against this directory.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .arg("break-glass")
            .args(args)
            .env("PHIGUARD_BREAK_GLASS_DIR", &self.grants)
            .output()
            .unwrap()
    }

    /// `phiguard status ARGS` against this agent's status file.
    fn status(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .arg("status")
            .args(args)
            .arg("--status-file")
            .arg(&self.status_file)
            .output()
            .unwrap()
    }

    /// A grant for `nobody`; returns its id.
    fn grant(&self, reason: &str, duration: &str) -> String {
        let out = self.cli(&["--reason", reason, "--for", duration, "--user", "65534"]);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let id = text.lines().next().unwrap().to_owned();
        assert!(id.starts_with("bg-"), "{text}");
        id
    }
}

fn refused(status: ExitStatus, eperm: bool) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    if eperm {
        !status.success() && status.signal().is_none()
    } else {
        status.signal() == Some(libc::SIGKILL)
    }
}

fn break_glass_event<'a>(
    event: &'a v1::Event,
    id: &str,
    action: v1::BreakGlassAction,
) -> Option<&'a v1::BreakGlass> {
    match &event.body {
        Some(Body::BreakGlass(b)) if b.grant_id == id && b.action == action as i32 => Some(b),
        _ => None,
    }
}

/// An open of `file` by `nobody` that grant `id` allowed.
fn allowed_by_grant(event: &v1::Event, file: &Path, id: &str) -> bool {
    let Some(d) = &event.decision else {
        return false;
    };
    d.verdict == v1::Verdict::Allow as i32
        && d.layer == v1::EnforcementLayer::BreakGlass as i32
        && d.break_glass.as_ref().is_some_and(|b| b.grant_id == id)
        && file_open(event).is_some_and(|f| f.path == file.display().to_string())
        && process(event).user.as_ref().and_then(|u| u.id) == Some(NOBODY)
}

/// When a grant ends, by the wall clock (the kernel's boot-time expiry was taken a little
/// earlier, by the same command).
fn expiry(grant: &v1::BreakGlass) -> std::time::SystemTime {
    let t = grant
        .expires_at
        .as_ref()
        .unwrap_or_else(|| panic!("no expiry: {grant:?}"));
    std::time::UNIX_EPOCH
        + Duration::from_secs(t.seconds as u64)
        + Duration::from_nanos(t.nanos as u64)
}

/// Sleeps until a little after `at`.
fn sleep_past(at: std::time::SystemTime) {
    if let Ok(left) = at.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(left);
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// How long the grant that outlives an agent restart lasts: long enough for the restart (a
/// debug agent starts in seconds here, in tens of seconds under the VM tier's emulation).
fn restart_grant() -> (&'static str, Duration) {
    if std::env::var("PHIGUARD_TIER").is_ok_and(|t| t == "vm") {
        ("150s", Duration::from_secs(150))
    } else {
        ("20s", Duration::from_secs(20))
    }
}

#[test]
fn a_grant_allows_survives_an_agent_restart_and_ends_by_itself() {
    let setup = Setup::new();
    let _unload = UnloadOnDrop;
    let mut first = setup.agent();
    let eperm = first.eperm();
    assert!(
        refused(setup.read_as_nobody().status, eperm),
        "nobody is refused without a grant"
    );
    first.expect("the refusal", |e| {
        e.decision
            .as_ref()
            .is_some_and(|d| d.verdict == v1::Verdict::Deny as i32)
            && process(e).user.as_ref().and_then(|u| u.id) == Some(NOBODY)
    });

    let (duration, lasts) = restart_grant();
    let granted_at = Instant::now();
    let id = setup.grant("EHR outage, ticket 4711", duration);
    let dir_mode = fs::metadata(&setup.grants).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "the grants are root's alone");
    let file_mode = fs::metadata(setup.grants.join(format!("{id}.json")))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(file_mode, 0o600);
    let granted = first.expect("the grant event", |e| {
        break_glass_event(e, &id, v1::BreakGlassAction::Granted).is_some()
    });
    let b = break_glass_event(&granted, &id, v1::BreakGlassAction::Granted).unwrap();
    assert_eq!(b.reason, "EHR outage, ticket 4711");
    assert_eq!(b.user.as_ref().and_then(|u| u.id), Some(NOBODY));
    assert_eq!(b.duration_seconds, lasts.as_secs());
    assert!(b.granted_at.is_some(), "{b:?}");
    let expires_at = expiry(b);

    let read = setup.read_as_nobody();
    assert!(read.status.success(), "allowed under the grant: {read:?}");
    assert_eq!(read.stdout, b"patient 1\n");
    let allowed = first.expect("the access the grant allowed", |e| {
        allowed_by_grant(e, &setup.file, &id)
    });
    let d = allowed.decision.as_ref().unwrap();
    assert_eq!(
        (d.policy.as_str(), d.rule.as_str()),
        ("records-test", "patient-files"),
        "names the rule that would have refused"
    );
    assert_eq!(
        d.break_glass.as_ref().unwrap().reason,
        "EHR outage, ticket 4711"
    );

    // The agent dies: the pinned programs keep enforcing, and keep honouring the grant.
    first.kill(Signal::SIGKILL);
    assert!(
        setup.read_as_nobody().status.success(),
        "the grant holds while no agent runs"
    );
    let mut second = setup.agent();
    let read = setup.read_as_nobody();
    assert!(
        read.status.success(),
        "the grant holds after the restart: {read:?}"
    );
    second.expect("the access under the restarted agent", |e| {
        allowed_by_grant(e, &setup.file, &id)
    });
    assert!(
        granted_at.elapsed() < lasts,
        "the restart took longer than the grant lasts: the test proves nothing"
    );

    // Its time runs out: the kernel refuses at once (it checks the expiry itself) and the
    // agent reports the end.
    sleep_past(expires_at);
    assert!(
        refused(setup.read_as_nobody().status, eperm),
        "refused once the grant's time is up"
    );
    second.expect("the expiry event", |e| {
        break_glass_event(e, &id, v1::BreakGlassAction::Expired).is_some()
    });
    let list = setup.cli(&["--list"]);
    assert!(list.status.success(), "{list:?}");
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&id),
        "the expired grant's file is gone: {list:?}"
    );
    second.kill(Signal::SIGTERM);
}

#[test]
fn a_revoked_grant_ends_at_once_and_one_that_ran_out_while_no_agent_ran_is_reported() {
    let setup = Setup::new();
    let _unload = UnloadOnDrop;
    let mut agent = setup.agent();
    let eperm = agent.eperm();
    let id = setup.grant("restore from backup", "10m");
    agent.expect("the grant event", |e| {
        break_glass_event(e, &id, v1::BreakGlassAction::Granted).is_some()
    });
    assert!(setup.read_as_nobody().status.success());
    let out = setup.cli(&["--revoke", &id]);
    assert!(out.status.success(), "{out:?}");
    let revoked = agent.expect("the revocation event", |e| {
        break_glass_event(e, &id, v1::BreakGlassAction::Revoked).is_some()
    });
    let b = break_glass_event(&revoked, &id, v1::BreakGlassAction::Revoked).unwrap();
    assert!(b.revoked_at.is_some(), "{b:?}");
    assert!(
        refused(setup.read_as_nobody().status, eperm),
        "refused once revoked"
    );

    // A grant that runs out while no agent runs: the kernel ends it; the next agent says so.
    let short = setup.grant("short", "3s");
    let granted = agent.expect("the short grant's event", |e| {
        break_glass_event(e, &short, v1::BreakGlassAction::Granted).is_some()
    });
    let expires_at =
        expiry(break_glass_event(&granted, &short, v1::BreakGlassAction::Granted).unwrap());
    agent.kill(Signal::SIGKILL);
    sleep_past(expires_at);
    assert!(
        !setup.read_as_nobody().status.success(),
        "the pinned programs refuse once the grant ran out"
    );
    let mut next = setup.agent();
    next.expect(
        "the expiry of the grant that ran out while no agent ran",
        |e| break_glass_event(e, &short, v1::BreakGlassAction::Expired).is_some(),
    );
    next.kill(Signal::SIGTERM);
}

/// Without an agent the pinned programs still honour the grants in the pinned map: a revocation
/// must take the grant out of the kernel itself, at once, not wait for the next agent.
#[test]
fn a_revocation_while_no_agent_runs_ends_the_grant_in_the_kernel_at_once() {
    let setup = Setup::new();
    let _unload = UnloadOnDrop;
    let mut agent = setup.agent();
    let eperm = agent.eperm();
    let id = setup.grant("EHR outage", "10m");
    agent.expect("the grant event", |e| {
        break_glass_event(e, &id, v1::BreakGlassAction::Granted).is_some()
    });
    assert!(
        setup.read_as_nobody().status.success(),
        "allowed under the grant"
    );
    agent.kill(Signal::SIGKILL);
    assert!(
        setup.read_as_nobody().status.success(),
        "the pinned programs honour the grant while no agent runs"
    );
    let out = setup.cli(&["--revoke", &id]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("the kernel no longer honours it"), "{text}");
    // Without an agent the host's fanotify layer is gone: the pinned programs refuse (SIGKILL
    // there, EPERM under BPF LSM).
    assert!(
        !setup.read_as_nobody().status.success(),
        "refused at once after the revocation, with no agent running"
    );
    let mut next = setup.agent();
    next.expect("the revocation, reported by the next agent", |e| {
        break_glass_event(e, &id, v1::BreakGlassAction::Revoked).is_some()
    });
    assert!(
        refused(setup.read_as_nobody().status, eperm),
        "still refused under the next agent"
    );
    next.kill(Signal::SIGTERM);
}

/// Slots are reused: a grant that takes over the slot of an ended one is named in the
/// decisions it allows by its own generation, which the kernel carries in the decision (a
/// decision without it names no grant at all).
#[test]
fn a_grant_in_a_reused_slot_is_named_by_its_generation() {
    let setup = Setup::new();
    let _unload = UnloadOnDrop;
    let mut agent = setup.agent();
    let first = setup.grant("first", "10m");
    agent.expect("the first grant", |e| {
        break_glass_event(e, &first, v1::BreakGlassAction::Granted).is_some()
    });
    assert!(setup.read_as_nobody().status.success());
    agent.expect("the access the first grant allowed", |e| {
        allowed_by_grant(e, &setup.file, &first)
    });
    assert!(setup.cli(&["--revoke", &first]).status.success());
    agent.expect("the first grant's end", |e| {
        break_glass_event(e, &first, v1::BreakGlassAction::Revoked).is_some()
    });
    // The agent removes the ended grant's file right after reporting it: then its slot is free.
    let deadline = Instant::now() + Duration::from_secs(10);
    while setup.grants.join(format!("{first}.json")).exists() {
        assert!(Instant::now() < deadline, "the ended grant's file stays");
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = setup.grant("second", "10m");
    let file = |id: &str| -> serde_json::Value {
        serde_json::from_slice(&fs::read(setup.grants.join(format!("{id}.json"))).unwrap()).unwrap()
    };
    let second_grant = file(&second);
    assert_eq!(
        second_grant["slot"], 0,
        "the slot is reused: {second_grant}"
    );
    assert!(
        second_grant["generation"].as_u64() > Some(0),
        "{second_grant}"
    );
    agent.expect("the second grant", |e| {
        break_glass_event(e, &second, v1::BreakGlassAction::Granted).is_some()
    });
    assert!(setup.read_as_nobody().status.success());
    agent.expect("the access the second grant allowed, named by it", |e| {
        allowed_by_grant(e, &setup.file, &second)
    });
    agent.kill(Signal::SIGTERM);
}

/// `phiguard status` names each grant in force (id, whom, expiry, reason) and counts them.
#[test]
fn status_lists_the_grants_in_force() {
    let setup = Setup::new();
    let _unload = UnloadOnDrop;
    let mut agent = setup.agent();
    let id = setup.grant("ticket 4712: lab results backlog", "10m");
    agent.expect("the grant event", |e| {
        break_glass_event(e, &id, v1::BreakGlassAction::Granted).is_some()
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let out = setup.status(&[]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(&id) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(text.contains("BREAK-GLASS grants in force: 1"), "{text}");
    let line = text.lines().find(|l| l.contains(&id)).unwrap_or_default();
    assert!(line.contains("65534"), "names whom it covers: {line}");
    assert!(line.contains("expires in"), "gives its expiry: {line}");
    assert!(
        line.contains("ticket 4712: lab results backlog"),
        "gives its reason: {line}"
    );
    let json = setup.status(&["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON report");
    let grants = &report["status"]["break_glass"];
    assert_eq!(grants.as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(grants[0]["id"], id.as_str());
    assert!(
        grants[0]["expires_at"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );

    // Revoked: the status no longer lists it.
    assert!(setup.cli(&["--revoke", &id]).status.success());
    agent.expect("the revocation event", |e| {
        break_glass_event(e, &id, v1::BreakGlassAction::Revoked).is_some()
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = String::from_utf8_lossy(&setup.status(&[]).stdout).into_owned();
        if text.contains("break-glass grants in force: none") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked grant is still listed: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.kill(Signal::SIGTERM);
}

/// The kernel decides alone while no agent runs: a user's grant that ran out then stays in the
/// map (nobody removes it), and must not hide a live grant for the program.
#[test]
fn an_expired_user_grant_left_in_the_kernel_hides_no_live_program_grant() {
    let setup = Setup::new();
    let _unload = UnloadOnDrop;
    let mut agent = setup.agent();
    let short = setup.grant("short", "3s");
    let granted = agent.expect("the user's grant event", |e| {
        break_glass_event(e, &short, v1::BreakGlassAction::Granted).is_some()
    });
    let expires_at =
        expiry(break_glass_event(&granted, &short, v1::BreakGlassAction::Granted).unwrap());
    let out = setup.cli(&[
        "--reason",
        "chart review tool",
        "--for",
        "10m",
        "--exe",
        "/usr/bin/head",
    ]);
    assert!(out.status.success(), "{out:?}");
    let program = String::from_utf8(out.stdout).unwrap();
    let program = program.lines().next().unwrap().to_owned();
    agent.expect("the program's grant event", |e| {
        break_glass_event(e, &program, v1::BreakGlassAction::Granted).is_some()
    });
    agent.kill(Signal::SIGKILL);
    sleep_past(expires_at);
    let out = setup.read_as_nobody();
    assert!(
        out.status.success(),
        "head, under a live grant of its own, reads although nobody's grant ran out: {out:?}"
    );
}

#[test]
fn break_glass_refuses_bad_values_naming_the_field_and_anyone_but_root() {
    let setup = Setup::new();
    for (args, field) in [
        (vec!["--reason", "x", "--for", "2d", "--user", "0"], "for:"),
        (vec!["--reason", "x", "--for", "25h", "--user", "0"], "for:"),
        (
            vec!["--reason", " ", "--for", "5m", "--user", "0"],
            "reason:",
        ),
        (
            vec!["--reason", "x", "--for", "5m", "--user", "no-such-user-xyz"],
            "user:",
        ),
        (
            vec!["--reason", "x", "--for", "5m", "--exe", "bin/sh"],
            "exe:",
        ),
        (vec!["--revoke", "../../etc/passwd"], "revoke:"),
    ] {
        let out = setup.cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(field), "{args:?} names {field}: {stderr}");
    }
    assert!(!setup.grants.exists(), "nothing written");
    let out = Command::new(binary())
        .args(["break-glass", "--reason", "x", "--for", "5m", "--user", "0"])
        .env("PHIGUARD_BREAK_GLASS_DIR", &setup.grants)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("root"),
        "{out:?}"
    );
    assert!(!setup.grants.exists(), "nothing written");
}
