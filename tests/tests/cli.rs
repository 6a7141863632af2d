//! The `phiguard` binary itself: start-up line, JSON lines on stdout, clean exit on SIGTERM,
//! and a clear refusal without privileges. `cargo xtask test` builds the binary and passes its
//! path in `PHIGUARD_BIN`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use phiguard_tests::{require_root, Tree};

fn binary() -> String {
    std::env::var("PHIGUARD_BIN").unwrap_or_else(|_| {
        panic!("PHIGUARD_BIN is not set: run the host tier through `cargo xtask test`, which builds target/debug/phiguard")
    })
}

#[test]
fn runs_streams_json_and_exits_cleanly_on_sigterm() {
    require_root();
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    std::fs::write(&file, "x").unwrap();
    let mut agent = Command::new(binary())
        .args(["run", "--watch"])
        .arg(&tree.watched)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(agent.stderr.take().unwrap());
    let deadline = Instant::now() + phiguard_tests::STARTUP_LIMIT;
    let mut line = String::new();
    let mut start_up = String::new();
    while !line.contains("events are flowing") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "agent exited before it was ready"
        );
        start_up.push_str(&line);
        assert!(
            Instant::now() < deadline,
            "no start-up line within {:?}",
            phiguard_tests::STARTUP_LIMIT
        );
    }
    assert!(line.contains("programs attached"), "{line}");
    // Without a policy directory there is no BPF LSM layer to be incomplete, whatever the
    // kernel: a refused LSM program (ptrace taint, where BPF LSM is listed but does not load)
    // is not reported as one.
    assert!(
        !start_up.contains("BPF LSM layer is not complete"),
        "an agent without policies claims a BPF LSM layer:\n{start_up}"
    );
    let status = Command::new("/usr/bin/cat")
        .arg(&file)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).unwrap();
    let output = agent.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "exit status after SIGTERM: {:?}",
        output.status
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let opened = events
        .iter()
        .find(|e| e["fileOpen"]["path"] == file.display().to_string());
    assert!(
        opened.is_some(),
        "no fileOpen event for {} in:\n{stdout}",
        file.display()
    );
    assert_eq!(opened.unwrap()["process"]["exe"], "/usr/bin/cat");
    let rest = std::io::read_to_string(stderr).unwrap();
    assert!(rest.contains("programs detached"), "{rest}");
}

#[test]
fn refuses_to_start_without_privileges_and_says_why() {
    require_root();
    let output = Command::new("/usr/bin/setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(binary())
        .arg("run")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("run it as root"), "{stderr}");
    assert!(stderr.contains("CAP_BPF"), "{stderr}");
}

#[test]
fn bad_config_is_rejected_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[watch]\nports = [5432]\npathz = [\"/tmp\"]\n").unwrap();
    let output = Command::new(binary())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:3:1: unknown field `pathz`", config.display())),
        "{stderr}"
    );
}

#[test]
fn policy_check_prints_protections_and_rejects_a_bad_file_with_its_location() {
    let tree = Tree::new();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("records.yaml");
    std::fs::write(
        &policy,
        format!(
            "name: records\nmode: enforce\nrules:\n  - name: files\n    files:\n      - path: {}/**\n        access: [read]\n    allow:\n      - exe: /usr/bin/cat\n  - name: db\n    database:\n      - port: 5432\n    allow:\n      - user: postgres-nobody-here\n",
            tree.watched.display()
        ),
    )
    .unwrap();
    let output = Command::new(binary())
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("1 policies valid: records"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{}/** read: records/files (enforce)",
            tree.watched.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("tcp port 5432 connect"), "{stdout}");
    assert!(
        stdout.contains("EPERM"),
        "names the enforcement layer: {stdout}"
    );
    // The layer that really runs: on a kernel without active BPF LSM but with fanotify
    // permission events (the host), file opens are decided by fanotify.
    let lsm_active = std::fs::read_to_string(phiguard::kernel::layer::LSM_LIST)
        .is_ok_and(|l| phiguard::kernel::layer::lsm_list_has_bpf(&l))
        && phiguard::kernel::loader::lsm_usable().unwrap_or(false);
    if !lsm_active && phiguard::kernel::layer::fanotify_permission_events() {
        assert!(
            stdout.contains("file opens decided by fanotify")
                && stdout.contains("fanotify permission event"),
            "names the fanotify layer for files: {stdout}"
        );
    }
    assert!(
        stdout.contains("warning: policy records rule db: no user postgres-nobody-here"),
        "{stdout}"
    );

    std::fs::write(
        dir.path().join("broken.yaml"),
        "name: broken\nmode: enforce\nrules:\n  - name: r\n    files:\n      - path: /srv/*.txt\n        access: [read]\n    allow:\n      - user: root\n",
    )
    .unwrap();
    let output = Command::new(binary())
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a bad file fails the check");
    let located = format!(
        "{}:6:15: rules[0].files[0].path",
        dir.path().join("broken.yaml").display()
    );
    assert!(stderr.contains(&located), "{stderr}");
}
