//! `cargo xtask setup`: installs, idempotently, everything the build and the tests need, one
//! progress line per step.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context as _};

use crate::{
    cmd::{self, output},
    vm_kernel,
};

/// The nightly the project's eBPF objects were built and checked with.
const EXPECTED_NIGHTLY: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)";

/// Debian packages the tests and tools use: bpftool (inspect programs), dwarves (pahole,
/// cross-checks BTF offsets), util-linux (setpriv, to open files as another user), iproute2,
/// procps, coreutils (the commands the host tests run); for the VM tier qemu-system-x86 (boots
/// the second kernel), busybox-static (the VM's `/init` and its tools) and cpio (packs the
/// initramfs); postgresql and mariadb-server/mariadb-client (the database-audit tests'
/// throwaway servers and their clients, and the pgbench benchmark), python3 (a client that
/// reads and writes with readv/writev/sendmsg/recvmsg); systemd
/// (systemd-analyze verifies the units) and man-db (renders the packaged man page) for the
/// package tier; systemd-container (systemd-nspawn) and debootstrap for the systemd tier (a
/// booted Debian 12 running both packages as services); auditd (the incumbent the benchmarks compare against);
/// faketime and e2fsprogs (the store-fault tests: a collector on a clock years ahead, ext4 on a
/// loop device that fails writes); rsyslog and rsyslog-gnutls (the SIEM export test's private
/// rsyslogd, receiving syslog over TLS); nats-server (the fleet tier's three-node JetStream
/// cluster, run as private processes: the package's own service is disabled and stopped).
pub const DEBIAN_PACKAGES: &[&str] = &[
    "bpftool",
    "dwarves",
    "iproute2",
    "procps",
    "coreutils",
    "util-linux",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "postgresql",
    "mariadb-server",
    "mariadb-client",
    "python3",
    "systemd",
    "systemd-container",
    "debootstrap",
    "man-db",
    "auditd",
    "faketime",
    "e2fsprogs",
    "rsyslog",
    "rsyslog-gnutls",
    "nats-server",
];

fn step(what: &str, outcome: &str) {
    println!("setup: {what:<40} {outcome}");
}

/// Runs every set-up step.
pub fn setup() -> anyhow::Result<()> {
    let nightly = nightly()?;
    rust_src(&nightly)?;
    bpf_linker()?;
    cargo_fuzz()?;
    debian_packages()?;
    kernel()?;
    step(
        "VM kernel (Debian 6.12 cloud)",
        &vm_kernel::ensure_apt_source()?,
    );
    step(
        "VM kernel (Debian 12's own 6.1 cloud)",
        &vm_kernel::ensure_apt_source_6_1()?,
    );
    Ok(())
}

fn nightly() -> anyhow::Result<String> {
    let Some(version) = output(Command::new("rustc").arg("+nightly").arg("--version")) else {
        bail!("no `nightly` toolchain: the eBPF programs build with nightly (`rustup toolchain install nightly`)");
    };
    let version = version.trim().to_owned();
    if version == EXPECTED_NIGHTLY {
        step("nightly toolchain", &format!("ok ({version})"));
    } else {
        step("nightly toolchain", &format!("WARNING: {version}, the project was built with {EXPECTED_NIGHTLY}; eBPF objects may differ"));
    }
    Ok(version)
}

fn rust_src(_nightly: &str) -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        step("rust-src for nightly", "ok (present)");
        return Ok(());
    }
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))?;
    step("rust-src for nightly", "installed");
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(version) = output(Command::new("bpf-linker").arg("--version")) {
        step("bpf-linker", &format!("ok ({})", version.trim()));
        return Ok(());
    }
    // Link bpf-linker against the nightly's own LLVM shared library: no LLVM download, and the
    // same LLVM rustc emits bitcode for.
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("nightly sysroot")?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let llvm = fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|name| name.starts_with("libLLVM") && name.ends_with(".so"))
        .with_context(|| {
            format!(
                "no libLLVM-*.so in {} (the nightly must ship it)",
                libdir.display()
            )
        })?;
    let lib = llvm
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_owned();
    let major: String = lib
        .trim_start_matches("LLVM-")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if major.is_empty() {
        bail!("cannot read the LLVM version from {llvm}");
    }
    step(
        "bpf-linker",
        &format!("building against {llvm} (about a minute)"),
    );
    let rustflags = format!(
        "-L {dir} -l dylib={lib} -C link-arg=-Wl,-rpath,{dir}",
        dir = libdir.display()
    );
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major},no-llvm-linking"))
            .env("RUSTFLAGS", rustflags),
    )?;
    step("bpf-linker", "installed");
    Ok(())
}

/// `cargo-fuzz`, for the decoder fuzz targets in `agent/fuzz` (`cargo +nightly fuzz run …`).
fn cargo_fuzz() -> anyhow::Result<()> {
    if let Some(version) = output(Command::new("cargo").args(["fuzz", "--version"])) {
        step("cargo-fuzz", &format!("ok ({})", version.trim()));
        return Ok(());
    }
    step("cargo-fuzz", "installing (about a minute)");
    cmd::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    step("cargo-fuzz", "installed");
    Ok(())
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        step("Debian packages", "ok (present)");
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "Debian packages missing: {}; run as root (sudo) so setup can install them",
            missing.join(" ")
        );
    }
    step(
        "Debian packages",
        &format!("installing {}", missing.join(" ")),
    );
    cmd::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    step("Debian packages", "installed");
    quiet_nats_service();
    Ok(())
}

/// The fleet tests start their own `nats-server` processes on their own ports; the package's
/// service (enabled by its postinst where systemd runs) would hold 4222 and keep a JetStream
/// store of its own, so it is stopped and disabled. Best effort: without systemd there is
/// nothing to stop.
fn quiet_nats_service() {
    let stopped = Command::new("systemctl")
        .args(["disable", "--now", "nats-server.service"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    step(
        "nats-server service",
        if stopped {
            "disabled (tests run their own)"
        } else {
            "not running (no systemd here)"
        },
    );
}

fn kernel() -> anyhow::Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("/sys/kernel/btf/vmlinux is missing: the kernel has no BTF (CONFIG_DEBUG_INFO_BTF), which phiguard needs");
    }
    let release = output(Command::new("uname").arg("-r")).unwrap_or_default();
    step("kernel", &format!("ok ({}, BTF present)", release.trim()));
    Ok(())
}
