//! Operating the agent as a service: readiness and watchdog through sd_notify, the status file
//! and `phiguard status`, and the Prometheus endpoint (counters that move with events, losses
//! when the ring buffer overflows). `cargo xtask test` passes the binary in `PHIGUARD_BIN`.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use phiguard::config::Config;
use phiguard_proto::v1::event::Body;
use phiguard_tests::{require_root, Harness, Tree};

fn binary() -> String {
    std::env::var("PHIGUARD_BIN").unwrap_or_else(|_| {
        panic!("PHIGUARD_BIN is not set: run the host tier through `cargo xtask test`, which builds target/debug/phiguard")
    })
}

/// `GET /metrics` from `addr`; the body.
fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The value of the sample `name` (with its labels, as exposed), 0 when absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The agent, killed if the test fails before stopping it.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(file: &Path, json: bool) -> Output {
    let mut command = Command::new(binary());
    command.arg("status").arg("--status-file").arg(file);
    if json {
        command.arg("--json");
    }
    command.output().unwrap()
}

/// Receives notify messages until one contains `what` (or `limit` passes).
fn await_notify(socket: &UnixDatagram, what: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    let mut seen = String::new();
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if message.lines().any(|l| l == what) {
                return message;
            }
            seen.push_str(&message);
        }
    }
    panic!("no {what} on NOTIFY_SOCKET within {limit:?}; received: {seen:?}");
}

#[test]
fn binary_notifies_ready_reports_status_and_serves_metrics() {
    require_root();
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    std::fs::write(&file, "x").unwrap();
    let dir = tree.dir.path();
    let status_file = dir.join("run/status.json");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[watch]\npaths = [\"{}\"]\n[output]\nstdout = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            tree.watched.display()
        ),
    )
    .unwrap();
    // systemd's side of Type=notify: a datagram socket named in NOTIFY_SOCKET.
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    // No agent yet: status says so and exits 3.
    let before = status(&status_file, false);
    assert_eq!(before.status.code(), Some(3), "{before:?}");
    assert!(String::from_utf8_lossy(&before.stdout).contains("agent: NOT RUNNING"));

    let mut agent = Agent(
        Command::new(binary())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--status-file")
            .arg(&status_file)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready = await_notify(&notify, "READY=1", phiguard_tests::STARTUP_LIMIT);
    assert!(ready.contains("STATUS="), "{ready}");
    // The watchdog keep-alive comes from the event loop's tick.
    await_notify(&notify, "WATCHDOG=1", Duration::from_secs(10));

    // Ready means attached and the status written.
    let text = status(&status_file, false);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(text.status.success(), "{text:?}");
    assert!(stdout.contains("agent: running (pid"), "{stdout}");
    assert!(
        stdout.contains("programs: ") && stdout.contains(" attached"),
        "{stdout}"
    );
    assert!(stdout.contains("enforcement layers:"), "{stdout}");
    assert!(stdout.contains("tcp    cgroup connect4/6"), "{stdout}");
    let json = status(&status_file, true);
    assert!(json.status.success());
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["agent"], "running");
    assert_eq!(report["status"]["pid"], agent.0.id());
    let programs = report["status"]["programs"].as_array().unwrap();
    assert!(programs
        .iter()
        .any(|p| p["name"] == "file_sys_exit_openat" && p["attached"] == true));
    let addr = report["status"]["metrics"]
        .as_str()
        .expect("the status names the metrics endpoint")
        .to_owned();

    // Counters move when events flow.
    let first = scrape(&addr);
    assert_eq!(
        sample(&first, "phiguard_programs_known"),
        programs.len() as f64
    );
    let listed_attached = programs.iter().filter(|p| p["attached"] == true).count();
    assert_eq!(
        sample(&first, "phiguard_programs_attached"),
        listed_attached as f64,
        "{first}"
    );
    // Every program attaches, but BPF LSM ones on a kernel without BPF LSM and fexit ones
    // on a kernel without trampolines (or where the LSM one does the job).
    for p in programs.iter().filter(|p| p["attached"] != true) {
        assert!(
            p["hook"]
                .as_str()
                .is_some_and(|h| h.starts_with("lsm/") || h.starts_with("fexit/")),
            "not attached: {p}"
        );
    }
    assert!(
        first.contains("phiguard_kernel_events_lost_total{kind=\"FileOpen\"} 0"),
        "{first}"
    );
    let opens = "phiguard_events_total{kind=\"file_open\"}";
    let before = sample(&first, opens);
    for _ in 0..5 {
        let cat = Command::new("/usr/bin/cat")
            .arg(&file)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(cat.success());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut now = first;
    while sample(&now, opens) < before + 5.0 {
        assert!(
            Instant::now() < deadline,
            "{opens} did not grow by 5 from {before}:\n{now}"
        );
        std::thread::sleep(Duration::from_millis(200));
        now = scrape(&addr);
    }

    // SIGTERM: STOPPING=1, a clean exit, the status file removed.
    kill(Pid::from_raw(agent.0.id() as i32), Signal::SIGTERM).unwrap();
    await_notify(&notify, "STOPPING=1", Duration::from_secs(10));
    let exit = agent.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(!status_file.exists(), "the status file outlived the agent");
    let after = status(&status_file, false);
    assert_eq!(after.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&after.stdout);
    assert!(stdout.contains("agent: NOT RUNNING"), "{stdout}");
    assert!(stdout.contains("pinned: nothing under"), "{stdout}");
}

#[test]
fn status_of_a_killed_agent_says_it_is_gone() {
    require_root();
    let tree = Tree::new();
    let status_file = tree.dir.path().join("status.json");
    let mut agent = Agent(
        Command::new(binary())
            .args(["run", "--watch"])
            .arg(&tree.watched)
            .arg("--status-file")
            .arg(&status_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !status_file.exists() {
        assert!(Instant::now() < deadline, "no status file within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = agent.0.id();
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    let output = status(&status_file, false);
    assert_eq!(output.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("agent: NOT RUNNING (pid {pid} is gone")),
        "{stdout}"
    );
    // What it was doing is still shown.
    assert!(
        stdout.contains("programs: ") && stdout.contains(" attached"),
        "{stdout}"
    );
}

#[test]
fn ring_buffer_overflow_shows_in_the_loss_metrics() {
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    std::fs::write(&file, "x").unwrap();
    let config = Config::from_toml_str(
        &format!(
            "[watch]\npaths = [\"{}\"]\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            tree.watched.display()
        ),
        Path::new("test.toml"),
    )
    .unwrap();
    let mut h = Harness::attach_with(&config);
    let addr = h.metrics_addr.clone().expect("metrics endpoint on");
    // As host.rs's full_ring_buffer test: nobody reads, so the buffer overflows.
    for _ in 0..40_000 {
        drop(std::fs::File::open(&file).unwrap());
    }
    h.start_reading();
    let lost = h.expect(
        "an EventsLost report for FileOpen",
        |e| matches!(&e.body, Some(Body::EventsLost(l)) if l.kind == "FileOpen"),
    );
    let Some(Body::EventsLost(l)) = &lost.body else {
        unreachable!()
    };
    let metrics = scrape(&addr);
    let exposed = sample(
        &metrics,
        "phiguard_kernel_events_lost_total{kind=\"FileOpen\"}",
    );
    assert!(
        exposed >= l.count as f64 && exposed > 0.0,
        "reported {} lost, the metric says {exposed}:\n{metrics}",
        l.count
    );
    assert!(sample(&metrics, "phiguard_events_total{kind=\"events_lost\"}") >= 1.0);
    h.stop();
}

/// The capabilities `packaging/phiguard.service` grants, as setpriv's `+name` list.
fn unit_capabilities() -> Vec<String> {
    let unit = include_str!("../../packaging/phiguard.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit names its capabilities");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// Removes the pins, pass or fail.
struct Unload;

impl Drop for Unload {
    fn drop(&mut self) {
        let _ = Command::new(binary()).arg("unload").output();
    }
}

#[test]
fn agent_enforces_with_only_the_units_capabilities() {
    require_root();
    let caps = unit_capabilities();
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    std::fs::write(&file, "x").unwrap();
    let policies = tree.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("records.yaml"),
        format!(
            "name: records\nmode: enforce\nrules:\n  - name: files\n    files:\n      - path: {}/**\n        access: [read]\n    allow:\n      - exe: /usr/bin/cat\n",
            tree.watched.display()
        ),
    )
    .unwrap();
    let status_file = tree.dir.path().join("status.json");
    let bounding = format!(
        "--bounding-set=-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    // Under systemd bpffs and tracefs are mounted at boot; the agent without CAP_SYS_ADMIN
    // cannot mount them itself (the VM's /init leaves them to the agent).
    phiguard::kernel::mounts::ensure_mounted().expect("mounting bpffs and tracefs");
    let _unload = Unload;
    // Root whose bounding set is the unit's: after exec it holds exactly those capabilities,
    // as under systemd.
    let start = |bounding: &str| -> Result<Agent, String> {
        let _ = std::fs::remove_file(&status_file);
        let mut agent = Agent(
            Command::new("/usr/bin/setpriv")
                .arg(bounding)
                .arg(binary())
                .args(["run", "--watch"])
                .arg(&tree.watched)
                .arg("--policies")
                .arg(&policies)
                .arg("--status-file")
                .arg(&status_file)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !status_file.exists() {
            if agent.0.try_wait().unwrap().is_some() {
                let mut stderr = String::new();
                let mut pipe = agent.0.stderr.take().unwrap();
                pipe.read_to_string(&mut stderr).unwrap();
                return Err(stderr);
            }
            assert!(Instant::now() < deadline, "no status file within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(agent)
    };
    // Without CAP_SYS_ADMIN: enough where perf_event_paranoid <= 2; refused, saying why, where
    // a distribution kernel (Debian's, the VM tier's) reserves perf_event_open to it.
    let paranoid: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let without = bounding.replace(",+sys_admin", "");
    assert_ne!(without, bounding, "the unit grants CAP_SYS_ADMIN");
    match (start(&without), paranoid > 2) {
        (Ok(agent), false) => drop(agent),
        (Err(stderr), true) => assert!(
            stderr.contains("CAP_SYS_ADMIN (kernel.perf_event_paranoid is"),
            "{stderr}"
        ),
        (Ok(_), true) => panic!(
            "perf_event_paranoid is {paranoid} and the agent started without CAP_SYS_ADMIN: the unit could drop it"
        ),
        (Err(stderr), false) => panic!(
            "perf_event_paranoid is {paranoid} and the agent did not start without CAP_SYS_ADMIN:\n{stderr}"
        ),
    }
    Command::new(binary()).arg("unload").output().unwrap();
    let start =
        |b: &str| start(b).unwrap_or_else(|e| panic!("the agent did not start with {b}:\n{e}"));
    let mut agent = start(&bounding);
    let report: serde_json::Value =
        serde_json::from_slice(&status(&status_file, true).stdout).unwrap();
    let programs = report["status"]["programs"].as_array().unwrap();
    // Every program a fully privileged process attaches here is attached with the unit's
    // capabilities too: the LSM ones where the kernel has BPF LSM.
    let lsm = phiguard::kernel::loader::lsm_usable().expect("probing for BPF LSM as root");
    for p in programs {
        let name = p["name"].as_str().unwrap();
        let expected = match name {
            "taint_ptrace_access_check" => lsm,
            "taint_ptrace_may_access" => !lsm && traceable("ptrace_may_access"),
            name => !name.starts_with("enforce_") || lsm,
        };
        assert!(
            p["attached"] == expected,
            "{name}: attached {} with {bounding} (BPF LSM here: {lsm}): {}",
            p["attached"],
            p["error"]
        );
    }
    assert_eq!(report["status"]["pinned"], true);
    let read = |exe: &str| {
        Command::new(exe)
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    };
    assert!(read("/usr/bin/cat").success(), "cat is allowed");
    assert!(!read("/usr/bin/head").success(), "head is refused");
    // Killed, the pins keep enforcing; a new agent with the same capabilities takes them over.
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    assert!(
        !read("/usr/bin/head").success(),
        "head is refused with no agent"
    );
    let mut agent = start(&bounding);
    let report: serde_json::Value =
        serde_json::from_slice(&status(&status_file, true).stdout).unwrap();
    assert_eq!(report["agent"], "running");
    assert_eq!(report["status"]["pinned"], true);
    assert!(
        read("/usr/bin/cat").success(),
        "cat is allowed by the new agent"
    );
    assert!(
        !read("/usr/bin/head").success(),
        "head is refused by the new agent"
    );
    kill(Pid::from_raw(agent.0.id() as i32), Signal::SIGTERM).unwrap();
    assert!(agent.0.wait().unwrap().success());
}

#[test]
fn the_agent_knows_its_pid_as_the_kernel_sees_it_also_in_a_pid_namespace() {
    use std::io::Read as _;

    use nix::{
        sys::wait::waitpid,
        unistd::{fork, pipe, write, ForkResult},
    };
    use phiguard::kernel::bpf_sys;

    require_root();
    assert_eq!(bpf_sys::global_tgid_now().unwrap(), std::process::id());
    // A child that enters a new pid namespace, and its first process there (pid 1 to
    // itself): that process must learn the pid the kernel programs see, which its parent
    // knows from fork. The exemption of an agent in a container depends on it.
    let (read_end, write_end) = pipe().unwrap();
    // SAFETY: the child only makes system calls and exits.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let code = (|| {
                // SAFETY: unshare(2) with a flag, no pointers.
                if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
                    return None;
                }
                // SAFETY: as above.
                match unsafe { fork() }.ok()? {
                    ForkResult::Child => {
                        let seen = bpf_sys::global_tgid_now().ok()?;
                        let own = std::process::id();
                        write(&write_end, format!("{own} {seen}\n").as_bytes()).ok()?;
                        Some(0)
                    }
                    ForkResult::Parent { child } => {
                        write(&write_end, format!("{child}\n").as_bytes()).ok()?;
                        waitpid(child, None).ok()?;
                        Some(0)
                    }
                }
            })()
            .unwrap_or(1);
            // SAFETY: leaving the forked child without running the test harness's drops.
            unsafe { libc::_exit(code) };
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            waitpid(child, None).unwrap();
            let mut text = String::new();
            std::fs::File::from(read_end)
                .read_to_string(&mut text)
                .unwrap();
            let mut global = None;
            let mut inside = None;
            for line in text.lines() {
                let numbers: Vec<u32> = line.split(' ').map(|n| n.parse().unwrap()).collect();
                match numbers[..] {
                    [pid] => global = Some(pid),
                    [own, seen] => inside = Some((own, seen)),
                    _ => panic!("unexpected line {line:?}"),
                }
            }
            let global = global.expect("the child's report");
            let (own, seen) = inside.expect("the grandchild's report");
            assert_eq!(own, 1, "the grandchild is its namespace's first process");
            assert_eq!(
                seen, global,
                "the kernel's pid of a process in a pid namespace"
            );
        }
    }
}

/// Whether the kernel lists `function` as traceable (what an fexit program needs; a kernel
/// built without the function tracer lists nothing).
fn traceable(function: &str) -> bool {
    [
        "/sys/kernel/tracing/available_filter_functions",
        "/sys/kernel/debug/tracing/available_filter_functions",
    ]
    .iter()
    .any(|path| {
        std::fs::read_to_string(path).is_ok_and(|text| {
            text.lines()
                .any(|line| line.split_whitespace().next() == Some(function))
        })
    })
}
