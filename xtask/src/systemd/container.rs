//! A Debian 12 container booted with its own systemd (systemd-nspawn), for the systemd tier.
//!
//! The root file system is made once with `debootstrap --variant=minbase` and cached outside
//! the build tree (`$XDG_CACHE_HOME/phiguard/systemd`, like the VM kernels); each run boots a
//! copy, so a run never sees what an earlier one installed. PID 1 of this machine is not
//! systemd: nspawn registers nothing (`--register=no`, `--keep-unit`) and runs in a cgroup
//! made for it under every hierarchy. The container gets its own bpffs (never the host's: its
//! pins vanish with it), tracefs and securityfs mounted as a host's systemd mounts them, the
//! agent's system calls beyond nspawn's own filter (`bpf`, `perf_event_open`, fanotify's, and
//! `process_vm_readv`), and a private network (loopback only).
//!
//! Commands run inside with `nsenter` into every namespace of the container's systemd.
//! [`Container`] powers the container off and removes its cgroups, bpffs and files when it is
//! dropped, pass or fail.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

use crate::cmd;

/// The Debian release the container runs (systemd 252).
const SUITE: &str = "bookworm";
/// Packages on top of minbase: an init system, D-Bus for systemctl, and what the tier's
/// checks use inside.
const INCLUDE: &str = "systemd,dbus,init-system-helpers,procps";
/// Bump when the root file system's recipe changes, so an old cache is not used.
const ROOTFS_VERSION: u32 = 1;
/// How long booting may take before the tier fails.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// Where root file systems are cached.
fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("phiguard/systemd")
}

/// The Debian mirror apt uses here (`debootstrap`'s own default when none is found).
fn apt_mirror() -> Option<String> {
    let sources = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let deb822 = sources
        .split("\n\n")
        .filter(|stanza| {
            stanza
                .lines()
                .any(|l| l.starts_with("Suites:") && l.split_whitespace().any(|s| s == SUITE))
        })
        .find_map(|stanza| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix("URIs:"))
                .and_then(|uris| uris.split_whitespace().next())
                .map(str::to_owned)
        });
    deb822.or_else(|| {
        let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
        list.lines().find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            (words.len() >= 3 && words[0] == "deb" && words[2] == SUITE)
                .then(|| words[1].to_owned())
        })
    })
}

/// The cached root file system, made with debootstrap the first time (about a minute).
pub fn rootfs() -> anyhow::Result<PathBuf> {
    let dir = cache_dir().join(format!("{SUITE}-minbase-v{ROOTFS_VERSION}"));
    if dir.join("usr/lib/systemd/systemd").exists() {
        println!("systemd: root file system cached in {}", dir.display());
        return Ok(dir);
    }
    let partial = dir.with_extension("partial");
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    fs::create_dir_all(cache_dir())?;
    println!(
        "systemd: debootstrap {SUITE} (minbase + {INCLUDE}) into {} (once; about a minute)",
        dir.display()
    );
    let started = Instant::now();
    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
        .arg(&partial);
    if let Some(mirror) = apt_mirror() {
        debootstrap.arg(mirror);
    }
    let out = debootstrap
        .output()
        .context("starting debootstrap (apt-get install debootstrap)")?;
    if !out.status.success() {
        let log =
            fs::read_to_string(partial.join("debootstrap/debootstrap.log")).unwrap_or_default();
        bail!(
            "debootstrap failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
    }
    // A fixed machine id and hostname: the container is always the same "machine".
    fs::write(partial.join("etc/hostname"), "phiguard-systemd-tier\n")?;
    fs::rename(&partial, &dir)?;
    println!(
        "systemd: root file system ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(dir)
}

/// A booted container; powered off and removed when dropped.
pub struct Container {
    dir: PathBuf,
    cgroups: Vec<PathBuf>,
    nspawn: Option<Child>,
    leader: u32,
}

/// Mount points of `fstype` in this mount namespace.
fn mounts_of(fstype: &str) -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next() == Some(fstype))
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .collect()
}

/// The children of `pid` (from /proc/*/stat).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid …: comm may hold spaces, so parse after the last ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|ppid| ppid.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

impl Container {
    /// Copies `rootfs` and boots it; returns once systemd says the system is running.
    pub fn boot(rootfs: &Path) -> anyhow::Result<Container> {
        let dir = PathBuf::from(format!("/var/tmp/phiguard-systemd-{}", std::process::id()));
        let mut container = Container {
            dir: dir.clone(),
            cgroups: Vec::new(),
            nspawn: None,
            leader: 0,
        };
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(dir.join("bpffs"))?;
        cmd::run(
            Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(rootfs)
                .arg(dir.join("root")),
        )?;
        cmd::run(
            Command::new("mount")
                .args(["-t", "bpf", "-o", "mode=700", "bpf"])
                .arg(dir.join("bpffs")),
        )?;
        // A fresh cgroup under every hierarchy for nspawn (v1 cpuset needs its cpus and mems
        // set before a task may join).
        let name = format!("phiguard-systemd-{}", std::process::id());
        for hierarchy in mounts_of("cgroup").into_iter().chain(mounts_of("cgroup2")) {
            let cgroup = hierarchy.join(&name);
            fs::create_dir_all(&cgroup)
                .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
            container.cgroups.push(cgroup.clone());
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(value) = fs::read_to_string(hierarchy.join(file)) {
                    let _ = fs::write(cgroup.join(file), value.trim());
                }
            }
        }
        let joins: String = container
            .cgroups
            .iter()
            .map(|c| format!("echo $$ > {}/cgroup.procs && ", c.display()))
            .collect();
        let console = fs::File::create(dir.join("console.log"))?;
        let script = format!(
            "{joins}exec systemd-nspawn -D {root} --machine=phiguard-systemd-tier --boot \
             --register=no --keep-unit --private-network --capability=all \
             --system-call-filter='bpf perf_event_open fanotify_init fanotify_mark process_vm_readv' \
             --bind={bpffs}:/sys/fs/bpf \
             --console=pipe",
            root = dir.join("root").display(),
            bpffs = dir.join("bpffs").display(),
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .spawn()
            .context("starting systemd-nspawn (apt-get install systemd-container)")?;
        let nspawn_pid = child.id();
        container.nspawn = Some(child);
        let started = Instant::now();
        container.leader = loop {
            if let Some(leader) = children_of(nspawn_pid).into_iter().find(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "systemd")
            }) {
                break leader;
            }
            if let Some(nspawn) = container.nspawn.as_mut() {
                if let Some(status) = nspawn.try_wait()? {
                    bail!(
                        "systemd-nspawn exited ({status}) before systemd started:\n{}",
                        container.console()
                    );
                }
            }
            ensure!(
                started.elapsed() < BOOT_TIMEOUT,
                "no systemd in the container after {BOOT_TIMEOUT:?}:\n{}",
                container.console()
            );
            thread::sleep(Duration::from_millis(50));
        };
        // nspawn's /sys/kernel is sysfs, bound over anything bound below it: mount tracefs and
        // securityfs inside, as a host's systemd does at boot (the service may not mount).
        container.ok("mount -t tracefs tracefs /sys/kernel/tracing && \
             mount -t securityfs securityfs /sys/kernel/security")?;
        // Until systemd's own socket is up, systemctl prints nothing and fails: ask again.
        let state = loop {
            let out = container.sh(&format!(
                "timeout {} systemctl is-system-running --wait",
                BOOT_TIMEOUT.as_secs()
            ))?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !state.is_empty() && state != "initializing" && state != "starting" {
                break state;
            }
            ensure!(
                started.elapsed() < BOOT_TIMEOUT,
                "the container's systemd did not finish booting in {BOOT_TIMEOUT:?} ({}):\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                container.console()
            );
            thread::sleep(Duration::from_millis(200));
        };
        if state != "running" {
            let failed = container.sh("systemctl --failed --no-legend --no-pager")?;
            bail!(
                "the container's systemd says {state:?}, not running; failed units:\n{}\nconsole:\n{}",
                String::from_utf8_lossy(&failed.stdout),
                container.console()
            );
        }
        println!(
            "systemd: container booted in {:.1} s (systemd pid {} on the host)",
            started.elapsed().as_secs_f64(),
            container.leader
        );
        Ok(container)
    }

    /// What the container printed on its console.
    fn console(&self) -> String {
        fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// The container's root directory as seen from the host.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The container's bpffs as seen from the host.
    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    /// A scratch directory on the host, removed with the container.
    pub fn scratch(&self) -> PathBuf {
        self.dir.join("scratch")
    }

    /// `/bin/sh -c script` in every namespace of the container's systemd.
    fn command(&self, script: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg("-t")
            .arg(self.leader.to_string())
            .args([
                "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--", "/bin/sh", "-c",
            ])
            .arg(script)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        command
    }

    /// Runs `script` with /bin/sh inside the container; returns its output, whatever its exit.
    pub fn sh(&self, script: &str) -> anyhow::Result<Output> {
        self.command(script)
            .output()
            .with_context(|| format!("nsenter into the container for {script:?}"))
    }

    /// Starts `script` inside the container and returns at once (stdout piped).
    pub fn spawn_sh(&self, script: &str) -> anyhow::Result<Child> {
        self.command(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("nsenter into the container for {script:?}"))
    }

    /// Runs `script` inside; fails with its output unless it exits 0. Returns its stdout.
    pub fn ok(&self, script: &str) -> anyhow::Result<String> {
        let out = self.sh(script)?;
        ensure!(
            out.status.success(),
            "in the container, `{script}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes `text` to `path` inside the container (mode 0644), creating its directory.
    pub fn write(&self, path: &str, text: &str) -> anyhow::Result<()> {
        let host = self.root().join(path.trim_start_matches('/'));
        if let Some(parent) = host.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut file =
            fs::File::create(&host).with_context(|| format!("writing {}", host.display()))?;
        file.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Copies a host file into the container at `path`.
    pub fn copy_in(&self, from: &Path, path: &str) -> anyhow::Result<()> {
        let to = self.root().join(path.trim_start_matches('/'));
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        Ok(())
    }

    /// Powers the container off (SIGRTMIN+4 asks systemd to), killing it after 30 s.
    fn power_off(&mut self) {
        let Some(mut nspawn) = self.nspawn.take() else {
            return;
        };
        if self.leader != 0 {
            let _ = Command::new("kill")
                .args(["-s", "SIGRTMIN+4", &self.leader.to_string()])
                .status();
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = nspawn.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("systemd: the container did not power off in 30 s; killing it");
        let _ = nspawn.kill();
        if self.leader != 0 {
            let _ = Command::new("kill")
                .args(["-9", &self.leader.to_string()])
                .status();
        }
        let _ = nspawn.wait();
    }
}

/// Removes `dir` and the cgroups below it, deepest first.
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path());
            }
        }
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("systemd: could not remove cgroup {}", dir.display());
}

impl Drop for Container {
    fn drop(&mut self) {
        self.power_off();
        // Whatever outlived the container's init in its cgroups.
        for cgroup in &self.cgroups {
            let _ = fs::write(cgroup.join("cgroup.kill"), "1");
        }
        for cgroup in &self.cgroups {
            remove_cgroup(cgroup);
        }
        // The container's bpffs holds the agent's pins, which keep enforcing its policy — also
        // on this host's processes, which are about to delete the protected files. Unpin
        // first (with no agent left, the programs go with the pins), then unmount.
        let _ = fs::remove_dir_all(self.bpffs().join("phiguard"));
        let _ = Command::new("umount").arg(self.bpffs()).status();
        let mounted_inside = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.split_whitespace()
                    .nth(4)
                    .is_some_and(|m| Path::new(m).starts_with(&self.dir))
            });
        if mounted_inside {
            eprintln!(
                "systemd: something is still mounted under {}; leaving it",
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
