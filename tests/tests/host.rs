//! Host tier: the real programs in the running kernel, observed through the real pipeline.
//! Root only; run one at a time (`--test-threads=1`): they share the kernel's hooks.

use std::{
    fs,
    io::Write as _,
    net::TcpListener,
    os::unix::fs::{symlink, PermissionsExt as _},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use phiguard_proto::v1::{self, event::Body};
use phiguard_tests::{file_open, process, Harness, Tree};

fn run(cmd: &mut Command) {
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    let _ = status;
}

fn path_of(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn cat_of_watched_file_is_reported_with_process_and_result() {
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    fs::write(&file, "patient 1").unwrap();
    let mut h = Harness::start(std::slice::from_ref(&tree.watched), &[]);
    run(Command::new("/usr/bin/cat").arg(&file));
    let event = h.expect("for cat of the watched file", |e| {
        file_open(e).is_some_and(|f| f.path == path_of(&file)) && process(e).exe == "/usr/bin/cat"
    });
    let open = file_open(&event).unwrap();
    assert!(
        open.result.is_some_and(|r| r >= 0),
        "fd expected, got {:?}",
        open.result
    );
    assert_eq!(open.error, "");
    assert_eq!(open.access, v1::Access::Read as i32);
    assert_eq!(open.watch, path_of(&tree.watched));
    let p = process(&event);
    assert_eq!(p.user.as_ref().unwrap().id, Some(0));
    assert_eq!(p.user.as_ref().unwrap().name, "root");
    assert_eq!(p.argv, [String::from("/usr/bin/cat"), path_of(&file)]);
    assert_eq!(p.ppid, std::process::id());
    assert_eq!(p.binary_sha256.len(), 64, "sha256 of /usr/bin/cat");
    assert!(!event.id.is_empty() && event.seq > 0 && event.time.is_some());
    assert!(!event.host.as_ref().unwrap().hostname.is_empty());
    h.stop();
}

#[test]
fn relative_open_inside_watched_dir_resolves_to_absolute_path() {
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    fs::write(&file, "x").unwrap();
    let mut h = Harness::start(std::slice::from_ref(&tree.watched), &[]);
    run(Command::new("/bin/sh")
        .arg("-c")
        .arg("cd \"$1\" && cat ./rec.txt")
        .arg("sh")
        .arg(&tree.watched));
    let event = h.expect("for cat ./rec.txt", |e| {
        file_open(e).is_some_and(|f| f.requested_path == "./rec.txt")
    });
    let open = file_open(&event).unwrap();
    assert_eq!(open.path, path_of(&file));
    assert!(open.path_resolved);
    assert!(open.result.is_some_and(|r| r >= 0));
    h.stop();
}

#[test]
fn open_through_symlink_into_watched_dir_is_caught() {
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    fs::write(&file, "x").unwrap();
    let link = tree.other.join("link");
    symlink(&file, &link).unwrap();
    let mut h = Harness::start(std::slice::from_ref(&tree.watched), &[]);
    run(Command::new("/usr/bin/cat").arg(&link));
    let event = h.expect("for cat through a symlink", |e| {
        file_open(e).is_some_and(|f| f.requested_path == path_of(&link))
    });
    assert_eq!(file_open(&event).unwrap().path, path_of(&file));
    h.stop();
}

#[test]
fn dirfd_relative_open_is_resolved() {
    let tree = Tree::new();
    let sub = tree.watched.join("sub");
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("rec.txt"), "x").unwrap();
    let mut h = Harness::start(std::slice::from_ref(&tree.watched), &[]);
    // `find -exec` is not needed: python-free openat(dirfd, "rec.txt") via the test process.
    let dir = fs::File::open(&sub).unwrap();
    let fd = nix::fcntl::openat(
        &dir,
        "rec.txt",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    drop(fd);
    let event = h.expect("for openat(dirfd, \"rec.txt\")", |e| {
        file_open(e).is_some_and(|f| f.requested_path == "rec.txt")
    });
    assert_eq!(
        file_open(&event).unwrap().path,
        path_of(&sub.join("rec.txt"))
    );
    h.stop();
}

#[test]
fn failed_opens_carry_errno() {
    let tree = Tree::new();
    let secret = tree.watched.join("secret.txt");
    fs::write(&secret, "x").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let missing = tree.watched.join("missing.txt");
    let mut h = Harness::start(std::slice::from_ref(&tree.watched), &[]);
    run(Command::new("/usr/bin/cat").arg(&missing));
    run(Command::new("/usr/bin/setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/cat",
        ])
        .arg(&secret));
    let enoent = h.expect("ENOENT for the missing file", |e| {
        file_open(e).is_some_and(|f| f.path == path_of(&missing))
    });
    let open = file_open(&enoent).unwrap();
    assert_eq!((open.result, open.error.as_str()), (Some(-2), "ENOENT"));
    let eacces = h.expect("EACCES for the 0600 file opened as nobody", |e| {
        file_open(e).is_some_and(|f| f.path == path_of(&secret) && f.result.is_some_and(|r| r < 0))
    });
    let open = file_open(&eacces).unwrap();
    assert_eq!((open.result, open.error.as_str()), (Some(-13), "EACCES"));
    assert_eq!(process(&eacces).user.as_ref().unwrap().id, Some(65534));
    h.stop();
}

#[test]
fn deep_opens_resolve_name_by_name_and_overlong_ones_are_marked_truncated() {
    let tree = Tree::new();
    // Twelve levels below the watch: every name between the file and the watch is copied.
    let deep = (1..=12).fold(tree.watched.clone(), |dir, level| {
        dir.join(format!("d{level}"))
    });
    fs::create_dir_all(&deep).unwrap();
    let file = deep.join("rec.txt");
    fs::write(&file, "x").unwrap();
    // Three 200-byte names: more than the record's 512 bytes of names.
    let long = (0..3).fold(tree.watched.clone(), |dir, i| {
        dir.join(format!("{i}{}", "n".repeat(199)))
    });
    fs::create_dir_all(&long).unwrap();
    let long_file = long.join("rec.txt");
    fs::write(&long_file, "x").unwrap();
    let mut h = Harness::start(std::slice::from_ref(&tree.watched), &[]);
    run(Command::new("/usr/bin/cat").arg(&file));
    // A failed relative open is matched by its base directory, the same walk from the cwd.
    run(Command::new("/bin/sh")
        .arg("-c")
        .arg("cd \"$1\" && cat ./missing.txt")
        .arg("sh")
        .arg(&deep));
    run(Command::new("/usr/bin/cat").arg(&long_file));
    let open = h.expect("for the file twelve levels down", |e| {
        file_open(e).is_some_and(|f| f.requested_path == path_of(&file))
    });
    let open = file_open(&open).unwrap();
    assert_eq!(open.path, path_of(&file));
    assert!(!open.truncated);
    let missing = h.expect("for ./missing.txt twelve levels down", |e| {
        file_open(e).is_some_and(|f| f.requested_path == "./missing.txt")
    });
    let missing = file_open(&missing).unwrap();
    assert_eq!(missing.path, path_of(&deep.join("missing.txt")));
    assert_eq!(missing.error, "ENOENT");
    // The requested path is cut too (256 bytes): find the open by its start.
    let overlong = h.expect("for the file below three long names", |e| {
        file_open(e).is_some_and(|f| {
            !f.requested_path.is_empty() && path_of(&long_file).starts_with(&f.requested_path)
        }) && process(e).exe == "/usr/bin/cat"
    });
    let overlong = file_open(&overlong).unwrap();
    assert!(overlong.truncated, "names past 512 bytes: {overlong:?}");
    assert_eq!(overlong.watch, path_of(&tree.watched));
    h.stop();
}

#[test]
fn unwatched_open_yields_no_event() {
    let tree = Tree::new();
    let unwatched = tree.other.join("plain.txt");
    let sentinel = tree.watched.join("sentinel.txt");
    fs::write(&unwatched, "x").unwrap();
    fs::write(&sentinel, "x").unwrap();
    let mut h = Harness::start(std::slice::from_ref(&tree.watched), &[]);
    run(Command::new("/usr/bin/cat").arg(&unwatched));
    run(Command::new("/usr/bin/cat").arg(tree.other.join("missing")));
    // The sentinel comes after: once it is seen, anything about the unwatched files would
    // have been seen too (one ring buffer, in order).
    run(Command::new("/usr/bin/cat").arg(&sentinel));
    h.expect("for the sentinel", |e| {
        file_open(e).is_some_and(|f| f.path == path_of(&sentinel))
    });
    let leaked: Vec<_> = h
        .seen
        .iter()
        .filter_map(file_open)
        .filter(|f| {
            f.path.starts_with(&path_of(&tree.other))
                || f.requested_path.starts_with(&path_of(&tree.other))
        })
        .collect();
    assert!(leaked.is_empty(), "unwatched opens reported: {leaked:?}");
    h.stop();
}

#[test]
fn exec_reports_argv_and_parent() {
    let mut h = Harness::start(&[], &[]);
    let child = Command::new("/bin/sh")
        .args(["-c", "exec /bin/echo a b c"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let event = h.expect("exec of /bin/echo", |e| {
        matches!(&e.body, Some(Body::Exec(x)) if x.filename == "/bin/echo") && process(e).pid == pid
    });
    let p = process(&event);
    assert_eq!(p.argv, ["/bin/echo", "a", "b", "c"]);
    assert!(!p.argv_truncated);
    assert_eq!(p.ppid, std::process::id(), "parent is the test process");
    assert_eq!(
        event.ancestry.first().map(|a| a.pid),
        Some(std::process::id())
    );
    h.stop();
}

#[test]
fn long_argv_is_truncated_and_marked() {
    let mut h = Harness::start(&[], &[]);
    let args: Vec<String> = (0..40).map(|i| format!("arg{i}")).collect();
    run(Command::new("/bin/echo").args(&args));
    let event = h.expect("exec of echo with 40 args", |e| {
        matches!(&e.body, Some(Body::Exec(_)))
            && process(e).argv.get(1).is_some_and(|a| a == "arg0")
    });
    let p = process(&event);
    assert_eq!(p.argv.len(), 32);
    assert!(p.argv_truncated);
    h.stop();
}

#[test]
fn process_that_exited_before_user_space_saw_it_is_still_enriched() {
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    fs::write(&file, "x").unwrap();
    // Attached but not reading: the records wait in the ring buffer while cat runs and exits.
    let mut h = Harness::attach_only(std::slice::from_ref(&tree.watched), &[]);
    let status = Command::new("/usr/bin/cat")
        .arg(&file)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    h.start_reading();
    let event = h.expect("for the exited cat", |e| {
        file_open(e).is_some_and(|f| f.path == path_of(&file))
    });
    let p = process(&event);
    assert_eq!(p.exe, "/usr/bin/cat");
    assert_eq!(p.argv, [String::from("/usr/bin/cat"), path_of(&file)]);
    assert_eq!(p.ppid, std::process::id());
    h.expect("exit of cat", |e| {
        matches!(&e.body, Some(Body::Exit(x)) if x.exit_status == Some(0))
            && process(e).pid == p.pid
    });
    h.stop();
}

#[test]
fn tcp_connect_to_watched_port_is_seen_on_both_sides() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut h = Harness::start(&[], &[port]);
    let accept = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let _ = stream.write_all(b"hi");
    });
    let child = Command::new("/bin/bash")
        .args([
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; cat <&3 >/dev/null"),
        ])
        .spawn()
        .unwrap();
    let pid = child.id();
    let _ = child.wait_with_output();
    accept.join().unwrap();
    let connect = h.expect(
        "connect to the watched port",
        |e| matches!(&e.body, Some(Body::Connect(c)) if c.port == u32::from(port)),
    );
    assert_eq!(process(&connect).pid, pid);
    assert_eq!(process(&connect).exe, "/usr/bin/bash");
    let Some(Body::Connect(c)) = &connect.body else {
        unreachable!()
    };
    assert_eq!(
        (c.address.as_str(), c.family.as_str(), c.protocol.as_str()),
        ("127.0.0.1", "inet", "tcp")
    );
    let inbound = h.expect("accepted-side ESTABLISHED", |e| {
        matches!(&e.body, Some(Body::TcpState(t)) if t.direction == v1::Direction::Inbound as i32
            && t.new_state == "ESTABLISHED" && t.local_port == u32::from(port))
    });
    assert!(
        inbound.process.is_none(),
        "softirq context: no process claimed"
    );
    let outbound = h.expect("connecting-side ESTABLISHED", |e| {
        matches!(&e.body, Some(Body::TcpState(t)) if t.direction == v1::Direction::Outbound as i32
            && t.new_state == "ESTABLISHED" && t.remote_port == u32::from(port))
    });
    assert_eq!(process(&outbound).pid, pid);
    h.expect("connection closed", |e| {
        matches!(&e.body, Some(Body::TcpState(t)) if t.new_state == "CLOSE" && (t.remote_port == u32::from(port) || t.local_port == u32::from(port)))
    });
    h.stop();
}

#[test]
fn full_ring_buffer_is_counted_and_reported() {
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    fs::write(&file, "x").unwrap();
    let mut h = Harness::attach_only(std::slice::from_ref(&tree.watched), &[]);
    // ~900 bytes a record into a 16 MiB buffer nobody reads: it overflows.
    for _ in 0..40_000 {
        drop(fs::File::open(&file).unwrap());
    }
    h.start_reading();
    // Other processes' records (forks, execs) may be lost too while the buffer is full: the
    // accounting is checked for this kind.
    let lost = h.expect(
        "an EventsLost report for FileOpen",
        |e| matches!(&e.body, Some(Body::EventsLost(l)) if l.kind == "FileOpen"),
    );
    let Some(Body::EventsLost(l)) = &lost.body else {
        unreachable!()
    };
    assert!(l.count > 0 && l.total >= l.count);
    assert_eq!(l.source, v1::LossSource::KernelRingBuffer as i32);
    std::thread::sleep(Duration::from_millis(200));
    let stats = h.stop();
    let reports: Vec<&v1::EventsLost> = h
        .seen
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::EventsLost(l)) => Some(l),
            _ => None,
        })
        .collect();
    let all_kinds: u64 = reports.iter().map(|l| l.count).sum();
    assert_eq!(stats.kernel_lost, all_kinds, "every loss is reported");
    let file_opens_lost: u64 = reports
        .iter()
        .filter(|l| l.kind == "FileOpen")
        .map(|l| l.count)
        .sum();
    let delivered = h.seen.iter().filter(|e| file_open(e).is_some()).count() as u64;
    assert_eq!(
        delivered + file_opens_lost,
        40_000,
        "every open is either delivered or counted lost"
    );
}

#[test]
fn open_and_openat2_syscalls_are_watched_too() {
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    fs::write(&file, "x").unwrap();
    let mut h = Harness::start(std::slice::from_ref(&tree.watched), &[]);
    let c_path = std::ffi::CString::new(path_of(&file)).unwrap();
    // SAFETY: raw syscalls with a valid NUL-terminated path and a valid open_how.
    unsafe {
        let fd = libc::syscall(libc::SYS_open, c_path.as_ptr(), libc::O_RDONLY);
        assert!(fd >= 0, "open(2) failed");
        libc::close(fd as i32);
        // struct open_how { u64 flags; u64 mode; u64 resolve; }
        let how: [u64; 3] = [libc::O_RDONLY as u64, 0, 0];
        let fd = libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            how.as_ptr(),
            std::mem::size_of_val(&how),
        );
        assert!(fd >= 0, "openat2(2) failed");
        libc::close(fd as i32);
    }
    for syscall in ["open", "openat2"] {
        let event = h.expect(&format!("from {syscall}(2)"), |e| {
            file_open(e).is_some_and(|f| f.syscall == syscall)
        });
        assert_eq!(file_open(&event).unwrap().path, path_of(&file));
    }
    h.stop();
}

#[test]
fn cwd_comes_from_the_kernel_even_across_mounts_and_after_exit() {
    let tree = Tree::new();
    let file = tree.watched.join("rec.txt");
    fs::write(&file, "x").unwrap();
    // Attached but not reading: both processes are gone before user space sees them, so
    // /proc cannot help and the cwd must come from the exec record.
    let mut h = Harness::attach_only(std::slice::from_ref(&tree.watched), &[]);
    run(Command::new("/bin/sh")
        .arg("-c")
        .arg("cd \"$1\" && exec /usr/bin/cat ./rec.txt")
        .arg("sh")
        .arg(&tree.watched));
    // /dev/shm is a mount of its own; /sys/kernel is a directory inside the /sys mount.
    for dir in ["/dev/shm", "/sys/kernel"] {
        run(Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("cd {dir} && exec /usr/bin/cat \"$1\""))
            .arg("sh")
            .arg(&file));
    }
    h.start_reading();
    let relative = h.expect("open of ./rec.txt", |e| {
        file_open(e).is_some_and(|f| f.requested_path == "./rec.txt")
    });
    assert_eq!(process(&relative).cwd, path_of(&tree.watched));
    assert_eq!(file_open(&relative).unwrap().path, path_of(&file));
    let from_shm = h.expect("open from /dev/shm", |e| {
        file_open(e).is_some_and(|f| f.requested_path == path_of(&file))
            && process(e).cwd == "/dev/shm"
    });
    assert_eq!(process(&from_shm).exe, "/usr/bin/cat");
    h.expect("open from /sys/kernel", |e| {
        file_open(e).is_some_and(|f| f.requested_path == path_of(&file))
            && process(e).cwd == "/sys/kernel"
    });
    h.stop();
}

/// The database capture programs are loaded only with a `[database]` section, and the tier
/// runs no database in the VM: this start is what proves that each of them passes this
/// kernel's verifier and attaches.
#[test]
fn every_database_capture_program_loads_and_attaches_on_this_kernel() {
    let mut config = phiguard::config::Config::default();
    config.database.ports = vec![5432];
    let mut h = Harness::start_with(&config);
    let db: Vec<&String> = h
        .not_attached
        .iter()
        .filter(|p| p.starts_with("db_"))
        .collect();
    assert!(db.is_empty(), "database programs not attached: {db:?}");
    h.stop();
}
