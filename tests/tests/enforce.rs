//! Host and VM tiers, enforcement: allow-list policies loaded into the running kernel deny
//! what they do not list. Where the kernel has BPF LSM (the VM tier's 6.12) file opens, execs
//! and unix connects fail with EPERM; without it (the host) opens and execs are enforced with
//! SIGKILL and unix sockets are not enforced. TCP connects fail with EPERM from the cgroup
//! program on both. The tests read which layer the agent chose and hold it to that layer's
//! promise. Root only; one at a time (`--test-threads=1`).

use std::{
    ffi::OsStr,
    fs,
    io::ErrorKind,
    net::TcpListener,
    os::unix::{fs::symlink, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use phiguard::{
    config::Config,
    kernel::layer::{fanotify_permission_events, FileLayer},
};
use phiguard_proto::v1::{self, event::Body};
use phiguard_tests::{agent::AgentProcess, file_open, process, Harness, Tree, UnloadOnDrop};

/// A policy directory with one file, removed on drop.
struct PolicyDir {
    dir: tempfile::TempDir,
}

impl PolicyDir {
    fn new(text: &str) -> PolicyDir {
        let dir = tempfile::Builder::new()
            .prefix("phiguard-policies-")
            .tempdir()
            .unwrap();
        let policies = PolicyDir { dir };
        policies.write(text);
        policies
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("test.yaml")
    }

    /// Replaces the policy file in one rename, as configuration management does.
    fn write(&self, text: &str) {
        let tmp = self.dir.path().join(".test.yaml.tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, self.file()).unwrap();
    }

    fn config(&self) -> Config {
        Config::default().with_policy_dir(self.dir.path()).unwrap()
    }
}

fn records_policy(mode: &str, dir: &Path, allowed: &[&str]) -> String {
    let allow: String = allowed
        .iter()
        .map(|exe| format!("      - exe: {exe}\n"))
        .collect();
    format!(
        "name: records-test\ndescription: test\nmode: {mode}\nrules:\n  - name: patient-files\n    files:\n      - path: {}/**\n        access: [read, write]\n    allow:\n{allow}",
        dir.display()
    )
}

fn status_of(cmd: &mut Command) -> ExitStatus {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn")
}

fn killed(status: ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

/// Refused the way the enforcing layer refuses: an error exit (EPERM) under BPF LSM (and, for
/// file opens, under fanotify), SIGKILL otherwise.
fn refused(status: ExitStatus, eperm: bool) -> bool {
    if eperm {
        !status.success() && status.signal().is_none()
    } else {
        killed(status)
    }
}

/// On the VM tier (Debian's 6.12, BPF LSM active) the agent must have chosen BPF LSM: a
/// fallback there would be a regression, not a skip.
fn check_layer_choice(lsm: bool) {
    if std::env::var("PHIGUARD_TIER").is_ok_and(|t| t == "vm") {
        assert!(lsm, "this kernel has BPF LSM: the LSM programs must attach");
    }
}

/// The layer file-open and exec denials are enforced at: BPF LSM, else fanotify (both `EPERM`)
/// where the kernel has permission events, SIGKILL only where it has neither.
fn file_layer(layer: FileLayer) -> i32 {
    match layer {
        FileLayer::Lsm => v1::EnforcementLayer::Lsm as i32,
        FileLayer::Fanotify => v1::EnforcementLayer::Fanotify as i32,
        FileLayer::Signal => v1::EnforcementLayer::Signal as i32,
    }
}

/// On the host (no BPF LSM, fanotify permission events available) file opens must go to the
/// fanotify layer: SIGKILL there would be a regression, not a skip.
fn check_file_layer(h: &Harness) {
    if !h.lsm && fanotify_permission_events() {
        assert_eq!(
            h.file_layer,
            FileLayer::Fanotify,
            "fanotify must decide file opens"
        );
    }
}

fn decision(event: &v1::Event) -> Option<&v1::Decision> {
    event.decision.as_ref()
}

fn verdict_is(event: &v1::Event, verdict: v1::Verdict) -> bool {
    decision(event).is_some_and(|d| d.verdict == verdict as i32)
}

#[test]
fn only_listed_binaries_may_open_protected_files_by_any_path() {
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    fs::write(&file, "patient 1").unwrap();
    // A hard link made before the policy loads, and a symlink, both outside the directory.
    let hard = tree.other.join("hard-link.txt");
    fs::hard_link(&file, &hard).unwrap();
    let soft = tree.other.join("soft-link.txt");
    symlink(&file, &soft).unwrap();
    let policies = PolicyDir::new(&records_policy("enforce", &tree.watched, &["/usr/bin/cat"]));
    let mut h = Harness::start_with(&policies.config());
    check_layer_choice(h.lsm);
    check_file_layer(&h);

    let status = status_of(Command::new("/usr/bin/cat").arg(&file));
    assert!(status.success(), "cat is allowed: {status:?}");
    let allowed = h.expect("allow decision for cat", |e| {
        verdict_is(e, v1::Verdict::Allow) && process(e).exe == "/usr/bin/cat"
    });
    let d = decision(&allowed).unwrap();
    assert_eq!(
        (d.policy.as_str(), d.rule.as_str()),
        ("records-test", "patient-files")
    );
    assert_eq!(d.access, ["read"]);
    assert_eq!(d.generation, 1);
    assert_eq!(d.policy_file, policies.file().display().to_string());

    for (how, path, cwd) in [
        ("absolute path", file.clone(), None),
        (
            "relative path",
            PathBuf::from("./rec.txt"),
            Some(&tree.watched),
        ),
        ("symlink", soft.clone(), None),
        ("hard link", hard.clone(), None),
    ] {
        let mut head = Command::new("/usr/bin/head");
        head.arg(&path);
        if let Some(cwd) = cwd {
            head.current_dir(cwd);
        }
        let status = status_of(&mut head);
        assert!(
            refused(status, h.file_eperm()),
            "head through a {how} must be refused: {status:?}"
        );
        let requested = path.display().to_string();
        let denied = h.expect(&format!("deny decision for head via {how}"), |e| {
            verdict_is(e, v1::Verdict::Deny)
                && file_open(e).is_some_and(|f| f.requested_path == requested)
        });
        let d = decision(&denied).unwrap();
        assert_eq!(d.rule, "patient-files");
        assert_eq!(d.layer, file_layer(h.file_layer));
        if h.file_eperm() {
            assert_eq!(
                file_open(&denied).unwrap().result,
                Some(-i64::from(libc::EPERM))
            );
        }
        assert_eq!(process(&denied).exe, "/usr/bin/head");
    }
    // Writing is governed too: cat may, tee may not.
    let status = status_of(
        Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("echo x | /usr/bin/tee -a {}", file.display())),
    );
    assert!(!status.success(), "tee is not allowed to write");
    h.expect("deny decision for tee's write", |e| {
        verdict_is(e, v1::Verdict::Deny)
            && decision(e).is_some_and(|d| d.access.contains(&"write".to_owned()))
    });
    assert_eq!(fs::read_to_string(&file).unwrap(), "patient 1");
    // Files elsewhere are left alone.
    let outside = tree.other.join("note.txt");
    fs::write(&outside, "not ePHI").unwrap();
    assert!(status_of(Command::new("/usr/bin/head").arg(&outside)).success());
    h.stop();
}

#[test]
fn audit_mode_lets_the_read_happen_and_reports_would_deny() {
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    fs::write(&file, "patient 1").unwrap();
    let policies = PolicyDir::new(&records_policy("audit", &tree.watched, &["/usr/bin/cat"]));
    let mut h = Harness::start_with(&policies.config());
    let status = status_of(Command::new("/usr/bin/head").arg(&file));
    assert!(status.success(), "audit mode blocks nothing: {status:?}");
    let event = h.expect("would-deny decision for head", |e| {
        verdict_is(e, v1::Verdict::WouldDeny) && process(e).exe == "/usr/bin/head"
    });
    let d = decision(&event).unwrap();
    assert_eq!(d.layer, v1::EnforcementLayer::Unspecified as i32);
    assert_eq!(d.policy, "records-test");
    h.stop();
}

fn bash_connect(port: u16, as_nobody: bool) -> ExitStatus {
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
    if as_nobody {
        status_of(Command::new("/usr/bin/setpriv").args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/bin/bash",
            "-c",
            &script,
        ]))
    } else {
        status_of(Command::new("/bin/bash").args(["-c", &script]))
    }
}

#[test]
fn unlisted_process_cannot_connect_to_the_protected_database_port() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let policy = format!(
        "name: db-test\nmode: enforce\nrules:\n  - name: clients\n    database:\n      - port: {port}\n    allow:\n      - exe: /usr/bin/bash\n        user: root\n"
    );
    let policies = PolicyDir::new(&policy);
    let mut h = Harness::start_with(&policies.config());

    // bash as root is the listed client; bash as nobody is not.
    assert!(bash_connect(port, false).success(), "root's bash connects");
    h.expect("allow decision for root's bash", |e| {
        verdict_is(e, v1::Verdict::Allow)
            && matches!(&e.body, Some(Body::Connect(c)) if c.port == u32::from(port))
    });
    assert!(
        !bash_connect(port, true).success(),
        "nobody's bash is refused"
    );
    let denied = h.expect("deny decision for nobody's connect", |e| {
        verdict_is(e, v1::Verdict::Deny)
            && matches!(&e.body, Some(Body::Connect(c)) if c.port == u32::from(port))
    });
    let p = process(&denied);
    assert_eq!(
        (p.exe.as_str(), p.user.as_ref().unwrap().id),
        ("/usr/bin/bash", Some(65534))
    );
    let d = decision(&denied).unwrap();
    assert_eq!(d.layer, v1::EnforcementLayer::Cgroup as i32);
    assert_eq!((d.policy.as_str(), d.rule.as_str()), ("db-test", "clients"));
    // Other ports are left alone.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    assert!(bash_connect(other_port, true).success());
    drop(listener);
    h.stop();
}

/// `bash -c 'exec 3<>/dev/tcp/HOST/PORT'` (bash resolves numeric hosts of either family) as
/// root or as `nobody`.
fn bash_connect_to(host: &str, port: u16, as_nobody: bool) -> ExitStatus {
    let script = format!("exec 3<>/dev/tcp/{host}/{port}");
    let mut cmd = Command::new("/usr/bin/setpriv");
    if as_nobody {
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    }
    status_of(cmd.args(["/bin/bash", "-c", &script]))
}

#[test]
fn an_address_limited_rule_holds_for_every_form_of_the_address() {
    // A dual-stack listener answers every form below.
    let listener = std::net::TcpListener::bind("[::]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let policy = format!(
        "name: db-test\nmode: enforce\nrules:\n  - name: clients\n    database:\n      - port: {port}\n        address: 127.0.0.1\n    allow:\n      - exe: /usr/bin/bash\n        user: root\n"
    );
    let policies = PolicyDir::new(&policy);
    let mut h = Harness::start_with(&policies.config());
    for form in [
        "127.0.0.1",
        "::ffff:127.0.0.1",
        "127.0.0.2",
        "0.0.0.0",
        "::1",
        "::",
    ] {
        assert!(
            bash_connect_to(form, port, false).success(),
            "{form}: reaches the listener (root's bash is allowed)"
        );
        assert!(
            !bash_connect_to(form, port, true).success(),
            "{form}: nobody's bash is refused"
        );
        h.expect(&format!("a deny decision for {form}"), |e| {
            verdict_is(e, v1::Verdict::Deny)
                && matches!(&e.body, Some(Body::Connect(c)) if c.port == u32::from(port))
                && decision(e).is_some_and(|d| d.layer == v1::EnforcementLayer::Cgroup as i32)
        });
    }
    drop(listener);
    h.stop();
}

/// A cgroup v2 directory for one test, removed on drop.
struct TestCgroup {
    path: PathBuf,
    relative: PathBuf,
}

impl TestCgroup {
    fn new() -> TestCgroup {
        let root = phiguard::kernel::mounts::cgroup2_root().expect("cgroup v2 is mounted");
        let name = format!("phiguard-test-{}", std::process::id());
        let path = root.join(&name);
        fs::create_dir(&path).expect("create test cgroup");
        TestCgroup {
            path,
            relative: PathBuf::from("/").join(name),
        }
    }

    /// Runs `script` with `sh`, moved into this cgroup first.
    fn run(&self, script: &str) -> ExitStatus {
        let procs = self.path.join("cgroup.procs");
        status_of(
            Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("echo $$ > {} && {script}", procs.display())),
        )
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Its processes have exited; an empty cgroup can be removed.
        for _ in 0..50 {
            match fs::remove_dir(&self.path) {
                Err(e) if e.kind() == ErrorKind::ResourceBusy => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => return,
            }
        }
    }
}

#[test]
fn exec_allow_list_stops_unlisted_binaries_in_its_cgroup_only() {
    let cgroup = TestCgroup::new();
    let policy = format!(
        "name: exec-test\nmode: enforce\nrules:\n  - name: service-binaries\n    exec:\n      allow: [/usr/bin/sh, /usr/bin/dash, /usr/bin/true]\n      cgroup: {}\n",
        cgroup.relative.display()
    );
    let policies = PolicyDir::new(&policy);
    let mut h = Harness::start_with(&policies.config());
    assert!(cgroup.run("exec /usr/bin/true").success(), "true is listed");
    let status = cgroup.run("exec /usr/bin/id");
    assert!(
        refused(status, h.file_eperm()),
        "id is not listed: {status:?}"
    );
    let denied = h.expect("deny decision for the exec of id", |e| {
        verdict_is(e, v1::Verdict::Deny)
            && matches!(&e.body, Some(Body::Exec(x)) if x.filename == "/usr/bin/id")
    });
    // Under BPF LSM and fanotify the exec never happened: the process still runs the shell.
    let expected_exe = if h.file_eperm() {
        "/usr/bin/dash"
    } else {
        "/usr/bin/id"
    };
    assert_eq!(process(&denied).exe, expected_exe);
    let d = decision(&denied).unwrap();
    assert_eq!(d.access, ["exec"]);
    assert_eq!(d.layer, file_layer(h.file_layer));
    h.expect("allow decision for true", |e| {
        verdict_is(e, v1::Verdict::Allow) && process(e).exe == "/usr/bin/true"
    });
    // Outside the cgroup nothing is restricted.
    assert!(status_of(&mut Command::new("/usr/bin/id")).success());
    h.stop();
}

#[test]
fn the_sigkill_layer_spares_never_kill_programs_and_reports_their_refusals() {
    use std::os::unix::fs::PermissionsExt as _;
    let cgroup = TestCgroup::new();
    let bin = tempfile::Builder::new()
        .prefix("phiguard-never-kill-")
        .tempdir()
        .unwrap();
    fs::set_permissions(bin.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // Scripts the exec rule lists, run by interpreters it does not: the SIGKILL layer decides
    // the interpreter once it is in place (fanotify and LSM see the script's exec).
    let script = |name: &str| {
        let interpreter = bin.path().join(format!("{name}-interp"));
        fs::copy("/usr/bin/true", &interpreter).unwrap();
        let script = bin.path().join(format!("{name}.sh"));
        fs::write(&script, format!("#!{}\n", interpreter.display())).unwrap();
        for p in [&interpreter, &script] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        (interpreter, script)
    };
    let (spared_interp, spared_script) = script("spared");
    let (killed_interp, killed_script) = script("killed");
    let policy = format!(
        "name: exec-test\nmode: enforce\nrules:\n  - name: service-binaries\n    exec:\n      allow: [/usr/bin/sh, /usr/bin/dash, {}, {}]\n      cgroup: {}\n",
        spared_script.display(),
        killed_script.display(),
        cgroup.relative.display()
    );
    let policies = PolicyDir::new(&policy);
    let mut config = policies.config();
    config.policy.never_kill = vec![spared_interp.clone()];
    let mut h = Harness::start_with(&config);
    let spared = cgroup.run(&format!("exec {}", spared_script.display()));
    let other = cgroup.run(&format!("exec {}", killed_script.display()));
    if h.lsm {
        // bprm_check_security refuses the interpreter with EPERM: no one is killed.
        assert!(
            refused(spared, true) && refused(other, true),
            "{spared:?} {other:?}"
        );
        h.stop();
        return;
    }
    assert!(
        spared.success(),
        "the never-kill interpreter ran: {spared:?}"
    );
    assert!(killed(other), "the other interpreter was killed: {other:?}");
    let report = h.expect("the spared refusal, reported", |e| {
        process(e).exe == spared_interp.display().to_string()
            && decision(e).is_some_and(|d| {
                d.verdict == v1::Verdict::WouldDeny as i32
                    && d.layer == v1::EnforcementLayer::Spared as i32
            })
    });
    let d = decision(&report).unwrap();
    assert_eq!(
        (d.policy.as_str(), d.rule.as_str(), d.access.as_slice()),
        (
            "exec-test",
            "service-binaries",
            ["exec".to_owned()].as_slice()
        )
    );
    h.expect("the enforced refusal", |e| {
        process(e).exe == killed_interp.display().to_string()
            && verdict_is(e, v1::Verdict::Deny)
            && decision(e).is_some_and(|d| d.layer == v1::EnforcementLayer::Signal as i32)
    });
    h.stop();
}

#[test]
fn invalid_policy_is_refused_whole_and_a_valid_edit_takes_effect() {
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    fs::write(&file, "patient 1").unwrap();
    let policies = PolicyDir::new(&records_policy("enforce", &tree.watched, &["/usr/bin/cat"]));
    let mut h = Harness::start_with(&policies.config());
    assert!(refused(
        status_of(Command::new("/usr/bin/head").arg(&file)),
        h.file_eperm()
    ));

    // An unknown field: refused with file:line:column, and the old policy still enforces.
    let bad = records_policy("enforce", &tree.watched, &["/usr/bin/cat", "/usr/bin/head"])
        .replace("    allow:\n", "    allow:\n      - colour: blue\n");
    policies.write(&bad);
    let refusal = h.expect(
        "refused reload",
        |e| matches!(&e.body, Some(Body::PolicyLoad(p)) if !p.ok),
    );
    let Some(Body::PolicyLoad(load)) = &refusal.body else {
        unreachable!()
    };
    let located = format!("{}:10:9", policies.file().display());
    assert!(
        load.error.contains(&located),
        "error names file:line:column: {}",
        load.error
    );
    assert!(
        load.error.contains("colour"),
        "error names the field: {}",
        load.error
    );
    assert_eq!(load.generation, 1, "generation 1 stays in force");
    assert!(
        refused(
            status_of(Command::new("/usr/bin/head").arg(&file)),
            h.file_eperm()
        ),
        "the old policy still enforces"
    );

    // A valid edit allowing head takes effect without a restart.
    let written = Instant::now();
    policies.write(&records_policy(
        "enforce",
        &tree.watched,
        &["/usr/bin/cat", "/usr/bin/head"],
    ));
    h.expect("accepted reload", |e| {
        matches!(&e.body, Some(Body::PolicyLoad(p)) if p.ok && p.generation == 2 && p.trigger == "file change")
    });
    println!(
        "valid edit in force {:?} after the write",
        written.elapsed()
    );
    let status = status_of(Command::new("/usr/bin/head").arg(&file));
    assert!(status.success(), "head is allowed now: {status:?}");
    h.expect("allow decision under generation 2", |e| {
        decision(e).is_some_and(|d| d.generation == 2 && d.verdict == v1::Verdict::Allow as i32)
            && process(e).exe == "/usr/bin/head"
    });

    // An explicit request (SIGHUP in the binary) reloads too.
    h.request_reload();
    h.expect("reload on request", |e| {
        matches!(&e.body, Some(Body::PolicyLoad(p)) if p.ok && p.generation == 3 && p.trigger == "SIGHUP")
    });
    h.stop();
}

/// `phiguard run --policies POLICIES`.
fn start_agent(policies: &Path) -> AgentProcess {
    AgentProcess::start([OsStr::new("--policies"), policies.as_os_str()])
}

#[test]
fn enforcement_survives_sigkill_and_a_restart_adopts_the_pinned_programs() {
    use nix::sys::signal::Signal;
    use phiguard::kernel::pins;
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    fs::write(&file, "patient 1").unwrap();
    let policies = PolicyDir::new(&records_policy("enforce", &tree.watched, &["/usr/bin/cat"]));
    // Declared after the tree: the pins go before the tree is removed.
    let _cleanup = UnloadOnDrop;
    let head = || status_of(Command::new("/usr/bin/head").arg(&file));

    let mut first = start_agent(policies.dir.path());
    let lsm = first.startup.contains("\"lsm\":true");
    // Under fanotify (the host) the running agent refuses with EPERM; once it is gone the
    // pinned open-exit programs take over with SIGKILL.
    let fanotify = first.startup.contains("\"files\":\"fanotify\"");
    if !lsm && fanotify_permission_events() {
        assert!(
            fanotify,
            "fanotify must decide file opens: {}",
            first.startup
        );
    }
    assert!(
        refused(head(), lsm || fanotify),
        "enforced while the agent runs"
    );
    first.kill(Signal::SIGKILL);
    let pinned = pins::pinned_programs(Path::new(pins::PIN_DIR));
    assert!(
        pinned.contains(&"file_sys_exit_openat".to_owned()),
        "pins: {pinned:?}"
    );
    if lsm {
        assert!(
            pinned.contains(&"enforce_file_open".to_owned()),
            "pins: {pinned:?}"
        );
    }
    assert!(
        refused(head(), lsm),
        "still enforced after the agent was SIGKILLed"
    );

    let mut second = start_agent(policies.dir.path());
    let replaced = format!("\"replaced\":{}", pinned.len());
    assert!(
        second.startup.contains(&replaced),
        "the new agent replaces every pinned program ({replaced}): {}",
        second.startup
    );
    assert!(refused(head(), lsm || fanotify));
    second.expect("a deny event from the restarted agent", |e| {
        verdict_is(e, v1::Verdict::Deny) && process(e).exe == "/usr/bin/head"
    });
    second.kill(Signal::SIGTERM);
    assert!(
        refused(head(), lsm),
        "a clean stop leaves enforcement in force too"
    );

    let unload = Command::new(std::env::var("PHIGUARD_BIN").unwrap())
        .arg("unload")
        .output()
        .unwrap();
    assert!(unload.status.success(), "{unload:?}");
    assert!(pins::pinned_programs(Path::new(pins::PIN_DIR)).is_empty());
    assert!(head().success(), "after `phiguard unload` nothing enforces");
}

#[test]
fn refusals_made_while_no_agent_ran_are_reported_by_the_next_agent() {
    use nix::sys::signal::Signal;
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    fs::write(&file, "patient 1").unwrap();
    let marker = tree.watched.join("marker.txt");
    fs::write(&marker, "patient 2").unwrap();
    let policies = PolicyDir::new(&records_policy("enforce", &tree.watched, &["/usr/bin/cat"]));
    let _cleanup = UnloadOnDrop;
    let mut first = start_agent(policies.dir.path());
    let lsm = first.startup.contains("\"lsm\":true");
    first.kill(Signal::SIGKILL);
    // The pinned programs refuse while no agent runs.
    const WHILE_DOWN: usize = 5;
    for _ in 0..WHILE_DOWN {
        assert!(refused(
            status_of(Command::new("/usr/bin/head").arg(&file)),
            lsm
        ));
    }
    let mut second = start_agent(policies.dir.path());
    let _watchdog = second.kill_after(Duration::from_secs(120));
    // One refusal while the new agent runs marks the end of what came before.
    let eperm = lsm || second.startup.contains("\"files\":\"fanotify\"");
    assert!(refused(
        status_of(Command::new("/usr/bin/head").arg(&marker)),
        eperm
    ));
    let refusal_of = |e: &v1::Event, path: &Path| {
        verdict_is(e, v1::Verdict::Deny)
            && process(e).exe == "/usr/bin/head"
            && file_open(e).is_some_and(|f| f.path == path.display().to_string())
    };
    let mut drained = 0;
    loop {
        let event = second.expect("the refusals, then the marker", |e| {
            refusal_of(e, &file) || refusal_of(e, &marker)
        });
        if refusal_of(&event, &marker) {
            break;
        }
        let d = decision(&event).unwrap();
        assert_eq!(
            (d.policy.as_str(), d.rule.as_str()),
            ("records-test", "patient-files"),
            "named after the unchanged policy set: {event:?}"
        );
        drained += 1;
    }
    assert_eq!(
        drained, WHILE_DOWN,
        "every refusal made while no agent ran is an event, once"
    );
    second.kill(Signal::SIGTERM);
}

#[test]
fn an_agent_takes_over_from_one_whose_exemption_had_the_older_layout() {
    use phiguard::kernel::pins;
    let tree = Tree::new();
    let policies = PolicyDir::new(&records_policy("enforce", &tree.watched, &["/usr/bin/cat"]));
    let _cleanup = UnloadOnDrop;
    // What an agent from before the exemption held a start time left pinned: a bare u32.
    let root = Path::new(pins::PIN_DIR);
    pins::create_dir(root).unwrap();
    let agent_pin = pins::agent_map_path(root);
    let created = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&agent_pin)
        .args([
            "type", "array", "key", "4", "value", "4", "entries", "1", "name", "AGENT",
        ])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    assert!(created.status.success(), "{created:?}");
    let mut agent = start_agent(policies.dir.path());
    let shown = Command::new("bpftool")
        .args(["map", "show", "pinned"])
        .arg(&agent_pin)
        .arg("-j")
        .output()
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        shown["bytes_value"], 16,
        "the new agent pinned an exemption of its own layout: {shown}"
    );
    agent.kill(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn a_process_given_the_dead_agents_pid_is_not_exempt() {
    use nix::sys::signal::Signal;
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    fs::write(&file, "patient 1").unwrap();
    let policies = PolicyDir::new(&records_policy("enforce", &tree.watched, &["/usr/bin/cat"]));
    let _cleanup = UnloadOnDrop;
    let mut agent = start_agent(policies.dir.path());
    let lsm = agent.startup.contains("\"lsm\":true");
    let dead = agent.pid().as_raw() as u32;
    agent.kill(Signal::SIGKILL);
    // The pinned programs keep enforcing; the exemption still names the dead agent's pid. An
    // unprivileged user can cycle the pids until it gets that one; here root's ns_last_pid
    // makes it deterministic.
    let impostor = (0..50).find_map(|_| {
        fs::write("/proc/sys/kernel/ns_last_pid", (dead - 1).to_string()).unwrap();
        let child = Command::new("/usr/bin/head")
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        (pid == dead).then_some(out)
    });
    let out = impostor.expect("a process given the dead agent's pid within 50 tries");
    assert!(
        out.stdout.is_empty(),
        "the process holding the dead agent's pid read the protected file: {out:?}"
    );
    assert!(
        refused(out.status, lsm),
        "refused as any unlisted program: {out:?}"
    );
}

/// Connects to the unix socket at `path` from a forked child (the test process itself is the
/// agent, which policies never apply to), as root or as `nobody`. Returns the connect's errno
/// (0: connected).
fn unix_connect_from_child(path: &Path, as_nobody: bool) -> i32 {
    use nix::{
        sys::{
            socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr},
            wait::{waitpid, WaitStatus},
        },
        unistd::{fork, setresuid, ForkResult, Uid},
    };
    let addr = UnixAddr::new(path).unwrap();
    // SAFETY: the child only makes system calls and exits; it allocates nothing.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let nobody = Uid::from_raw(65534);
            if as_nobody && setresuid(nobody, nobody, nobody).is_err() {
                // SAFETY: exiting the forked child without running the parent's destructors.
                unsafe { libc::_exit(100) };
            }
            let code = match socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::empty(),
                None,
            ) {
                Ok(fd) => match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
                    Ok(()) => 0,
                    Err(e) => e as i32,
                },
                Err(_) => 101,
            };
            // SAFETY: as above.
            unsafe { libc::_exit(code) };
        }
        ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
            WaitStatus::Exited(_, code) => code,
            other => panic!("connecting child ended with {other:?}"),
        },
    }
}

#[test]
fn unix_socket_endpoint_is_enforced_where_the_kernel_has_bpf_lsm() {
    use std::os::unix::{fs::PermissionsExt as _, net::UnixListener};
    let dir = tempfile::Builder::new()
        .prefix("phiguard-socket-")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join(".s.PGSQL.5432");
    let listener = UnixListener::bind(&socket).unwrap();
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o777)).unwrap();
    let me = std::env::current_exe().unwrap();
    let policies = PolicyDir::new(&format!(
        "name: db-socket\nmode: enforce\nrules:\n  - name: local-clients\n    database:\n      - unix: {}\n    allow:\n      - exe: {}\n        user: root\n",
        socket.display(),
        me.display()
    ));
    let mut h = Harness::start_with(&policies.config());
    assert_eq!(
        unix_connect_from_child(&socket, false),
        0,
        "root's client connects"
    );
    let nobody = unix_connect_from_child(&socket, true);
    if !h.lsm {
        // Documented limit: without BPF LSM nothing sees unix connects.
        assert_eq!(nobody, 0, "not enforced without BPF LSM");
        drop(listener);
        h.stop();
        return;
    }
    assert_eq!(nobody, libc::EPERM, "nobody's client is refused");
    let denied = h.expect("deny decision for nobody's unix connect", |e| {
        verdict_is(e, v1::Verdict::Deny)
            && matches!(&e.body, Some(Body::Connect(c)) if c.family == "unix")
    });
    let Some(Body::Connect(c)) = &denied.body else {
        unreachable!()
    };
    assert_eq!(c.address, socket.display().to_string());
    assert_eq!(process(&denied).user.as_ref().unwrap().id, Some(65534));
    let d = decision(&denied).unwrap();
    assert_eq!(d.layer, v1::EnforcementLayer::Lsm as i32);
    assert_eq!(
        (d.policy.as_str(), d.rule.as_str()),
        ("db-socket", "local-clients")
    );
    h.expect("allow decision for root's unix connect", |e| {
        verdict_is(e, v1::Verdict::Allow)
            && matches!(&e.body, Some(Body::Connect(c)) if c.family == "unix")
    });
    drop(listener);
    h.stop();
}
