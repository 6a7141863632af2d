//! `cargo xtask package`: the agent's and the collector's ([`crate::package_collector`])
//! Debian packages, built with `dpkg-deb --build` from staged trees (no cargo-deb: nothing to
//! install, and every file's place is written here), and the package tier of
//! `cargo xtask test`, which installs both into a fresh root with `dpkg --root`, checks their
//! layout, verifies both systemd units with `systemd-analyze`, rates their exposure, and
//! removes and purges the packages again.
//!
//! Layout (documented in README.md, checked by [`test`]):
//!
//! | path | what |
//! | --- | --- |
//! | `/usr/bin/phiguard` | the agent (release build, kernel programs embedded) |
//! | `/lib/systemd/system/phiguard.service` | the hardened unit (`packaging/phiguard.service`) |
//! | `/etc/phiguard/agent.toml` | configuration (a conffile: upgrades keep local edits) |
//! | `/etc/phiguard/policies/` | the live policy directory, shipped empty |
//! | `/usr/share/doc/phiguard/examples/policies/` | the example policies (never enforced as shipped) |
//! | `/usr/share/man/man1/phiguard.1.gz` | the man page, generated from the command line |

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _};

use crate::{cmd, package_collector};

/// The copyright file of both packages.
pub const COPYRIGHT: &str =
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
     Upstream-Name: phiguard\n\nFiles: *\nLicense: Apache-2.0\n \
     On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n";

/// The package name.
const NAME: &str = "phiguard";

/// Files the package must lay out (relative to the root), checked after installing.
pub const INSTALLED: &[&str] = &[
    "usr/bin/phiguard",
    "lib/systemd/system/phiguard.service",
    "etc/phiguard/agent.toml",
    "etc/phiguard/policies",
    "usr/share/doc/phiguard/README.md",
    "usr/share/doc/phiguard/policies.md",
    "usr/share/doc/phiguard/copyright",
    "usr/share/doc/phiguard/examples/policies",
    "usr/share/man/man1/phiguard.1.gz",
];

const POSTINST: &str = r#"#!/bin/sh
# phiguard postinst: register the unit with systemd, as dh_installsystemd --no-enable would. Not
# enabled or started here: review /etc/phiguard/agent.toml, then `systemctl enable --now phiguard`.
set -e
case "$1" in
configure|abort-upgrade|abort-deconfigure|abort-remove)
    deb-systemd-helper update-state phiguard.service >/dev/null || true
    if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        # An upgrade restarts a running agent (a stopped one stays stopped); pinned enforcement
        # stays in force meanwhile and the new agent takes it over.
        if [ -n "$2" ] && systemctl --quiet is-active phiguard.service; then
            deb-systemd-invoke restart phiguard.service >/dev/null || true
        fi
    fi
    ;;
esac
"#;

const PRERM: &str = r#"#!/bin/sh
# phiguard prerm: on removal stop the agent and remove its pinned programs, so no enforcement
# outlives the package (an upgrade keeps both).
set -e
if [ "$1" = remove ] && [ -z "${DPKG_ROOT:-}" ]; then
    if [ -d /run/systemd/system ]; then deb-systemd-invoke stop phiguard.service >/dev/null || true; fi
    /usr/bin/phiguard unload || true
fi
"#;

const POSTRM: &str = r#"#!/bin/sh
# phiguard postrm, as dh_installsystemd writes it: removal masks the unit (its conffiles stay),
# purge forgets it. Purge removes the configuration but KEEPS the local audit trail
# (/var/log/phiguard) and the events not yet acknowledged by a collector (/var/lib/phiguard):
# records of who touched patient data outlive the package unless the operator says otherwise
# with PHIGUARD_PURGE_AUDIT_TRAIL=yes.
set -e
if [ "$1" = remove ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = remove ] && [ -x "${DPKG_ROOT:-}/usr/bin/deb-systemd-helper" ]; then
    deb-systemd-helper mask phiguard.service >/dev/null || true
fi
if [ "$1" = purge ]; then
    if [ -x "${DPKG_ROOT:-}/usr/bin/deb-systemd-helper" ]; then
        deb-systemd-helper purge phiguard.service >/dev/null || true
        deb-systemd-helper unmask phiguard.service >/dev/null || true
    fi
    rm -rf "${DPKG_ROOT:-}/run/phiguard"
    if [ "${PHIGUARD_PURGE_AUDIT_TRAIL:-}" = yes ]; then
        rm -rf "${DPKG_ROOT:-}/var/log/phiguard" "${DPKG_ROOT:-}/var/lib/phiguard"
    else
        for kept in /var/log/phiguard /var/lib/phiguard; do
            if [ -d "${DPKG_ROOT:-}$kept" ]; then
                echo "phiguard: $kept is kept (audit records); delete it by hand, or purge with PHIGUARD_PURGE_AUDIT_TRAIL=yes" >&2
            fi
        done
    fi
fi
"#;

/// Builds both release binaries, the agent and the collector, in one cargo invocation: the
/// dependencies they share (tokio, tonic, rustls…) are built once, with one feature set. Both
/// packagers call this same invocation, so the second finds everything built (as two
/// invocations with different feature sets, the package tier spent 177 s and 169 s building
/// in CI at c02e761; each rebuilt what the other had built with other features).
pub(crate) fn build_release_binaries() -> anyhow::Result<()> {
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "phiguard-agent",
        "-p",
        "phiguard-collector",
    ]))
}

/// Builds the release binaries and the package; returns the `.deb`'s path.
pub fn package() -> anyhow::Result<PathBuf> {
    build_release_binaries()?;
    let root = cmd::workspace_root();
    let binary = cmd::target_dir().join("release/phiguard");
    let out_dir = cmd::target_dir().join("package");
    let stage = out_dir.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let version = env!("CARGO_PKG_VERSION");
    let arch = cmd::output(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg --print-architecture failed: is this Debian or Ubuntu?")?
        .trim()
        .to_owned();

    // The binary, stripped of debug information (the kernel object inside stays intact).
    let bin = stage.join("usr/bin/phiguard");
    copy(&binary, &bin, 0o755)?;
    cmd::run(Command::new("strip").arg("--strip-debug").arg(&bin))?;

    copy(
        &root.join("packaging/phiguard.service"),
        &stage.join("lib/systemd/system/phiguard.service"),
        0o644,
    )?;
    write(
        &stage.join("etc/phiguard/agent.toml"),
        &packaged_config(&fs::read_to_string(root.join("agent.toml"))?)?,
        0o644,
    )?;
    mkdir(&stage.join("etc/phiguard/policies"), 0o755)?;

    let doc = stage.join("usr/share/doc/phiguard");
    copy(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    copy(
        &root.join("docs/policies.md"),
        &doc.join("policies.md"),
        0o644,
    )?;
    write(&doc.join("copyright"), COPYRIGHT, 0o644)?;
    let examples = doc.join("examples/policies");
    mkdir(&examples, 0o755)?;
    for entry in fs::read_dir(root.join("policies"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            copy(
                &path,
                &examples.join(path.file_name().unwrap_or_default()),
                0o644,
            )?;
        }
    }

    // The man page from clap (`phiguard man`), gzipped without a timestamp (reproducible).
    let man = Command::new(&binary)
        .arg("man")
        .output()
        .context("running phiguard man")?;
    ensure!(man.status.success(), "phiguard man failed");
    let man_path = stage.join("usr/share/man/man1/phiguard.1");
    write(&man_path, &String::from_utf8(man.stdout)?, 0o644)?;
    cmd::run(Command::new("gzip").args(["-9nf"]).arg(&man_path))?;

    let debian = stage.join("DEBIAN");
    mkdir(&debian, 0o755)?;
    write(
        &debian.join("conffiles"),
        "/etc/phiguard/agent.toml\n",
        0o644,
    )?;
    write(&debian.join("postinst"), POSTINST, 0o755)?;
    write(&debian.join("prerm"), PRERM, 0o755)?;
    write(&debian.join("postrm"), POSTRM, 0o755)?;
    let installed_kib = installed_kib(&stage)?;
    write(
        &debian.join("control"),
        &format!(
            "Package: {NAME}\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: phiguard maintainers <phiguard@localhost>\n\
             Installed-Size: {installed_kib}\n\
             Depends: libc6, init-system-helpers (>= 1.54~)\n\
             Section: admin\n\
             Priority: optional\n\
             Homepage: https://example.invalid/phiguard\n\
             Description: eBPF host agent auditing and enforcing access to patient records\n \
             phiguard watches file opens under protected paths, database connections and\n \
             program execution with eBPF, enriches every event (process, ancestry, login\n \
             user, binary hash, host) and writes JSON lines. Allow-list policies in\n \
             /etc/phiguard/policies are enforced in the kernel.\n"
        ),
        0o644,
    )?;

    let deb = out_dir.join(format!("{NAME}_{version}_{arch}.deb"));
    build_deb(&stage, &deb)?;
    let size = fs::metadata(&deb)?.len();
    println!(
        "package: {} ({} KiB; installed {installed_kib} KiB)",
        deb.display(),
        size / 1024
    );
    Ok(deb)
}

/// The repository's `agent.toml` as a server's default: events to a file under
/// `/var/log/phiguard` (the journal gets the logs), policies from `/etc/phiguard/policies`
/// once an administrator switches them on.
fn packaged_config(repo: &str) -> anyhow::Result<String> {
    let mut text = repo.to_owned();
    for (from, to) in [
        (
            "# One JSON object per line on stdout (the proto3 JSON of proto/phiguard/v1/event.proto).\nstdout = true\n",
            "# One JSON object per line on stdout (the proto3 JSON of proto/phiguard/v1/event.proto).\n# Under systemd stdout goes to the journal; the file below is the event log.\nstdout = false\n",
        ),
        (
            "# file = \"/var/log/phiguard/events.jsonl\"\n",
            "file = \"/var/log/phiguard/events.jsonl\"\n",
        ),
        (
            "# The repository's policies/ are examples for an EHR server:\n# dir = \"policies\"\n",
            "# Examples for an EHR server are in /usr/share/doc/phiguard/examples/policies: copy what\n# fits into /etc/phiguard/policies, adapt, run `phiguard policy check`, then uncomment:\n# dir = \"/etc/phiguard/policies\"\n",
        ),
    ] {
        ensure!(
            text.contains(from),
            "agent.toml changed: the packaged configuration expects {from:?}"
        );
        text = text.replace(from, to);
    }
    Ok(text)
}

/// The package's installed size in KiB, as dpkg-gencontrol counts it: each file's size
/// rounded up to a KiB, one KiB for each directory and symbolic link (not what `du` says,
/// which depends on the file system the tree was staged on).
pub(crate) fn installed_kib(stage: &Path) -> anyhow::Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> anyhow::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                *total += 1;
                walk(&entry.path(), total)?;
            } else if kind.is_symlink() {
                *total += 1;
            } else {
                *total += entry.metadata()?.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    for entry in fs::read_dir(stage)? {
        let entry = entry?;
        if entry.file_name() == "DEBIAN" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            total += 1;
            walk(&entry.path(), &mut total)?;
        } else {
            total += entry.metadata()?.len().div_ceil(1024);
        }
    }
    Ok(total)
}

/// The time every file in the packages is dated: `SOURCE_DATE_EPOCH` when set, else the last
/// commit's time, so the same source makes byte-identical packages.
fn source_date_epoch() -> String {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| {
            cmd::output(
                Command::new("git")
                    .args(["log", "-1", "--format=%ct"])
                    .current_dir(cmd::workspace_root()),
            )
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
        })
        .unwrap_or_else(|| "0".to_owned())
}

/// `dpkg-deb --build` of `stage` into `deb`, reproducibly: owner root, every time clamped to
/// [`source_date_epoch`], xz.
pub(crate) fn build_deb(stage: &Path, deb: &Path) -> anyhow::Result<()> {
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(stage)
            .arg(deb)
            .env("SOURCE_DATE_EPOCH", source_date_epoch())
            .stdout(std::process::Stdio::null()),
    )
}

/// Creates `path` and its parents; sets its mode.
pub(crate) fn mkdir(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies `from` to `to` (creating its directory) with `mode`.
pub(crate) fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        mkdir(dir, 0o755)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Writes `text` to `to` (creating its directory) with `mode`.
pub(crate) fn write(to: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        mkdir(dir, 0o755)?;
    }
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// A temporary directory removed when dropped, pass or fail.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs a command and returns (success, stdout, stderr).
fn capture(command: &mut Command) -> anyhow::Result<(bool, String, String)> {
    let out = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `systemd-analyze verify` of `unit` as installed under `root`: passes only when it exits 0
/// and says nothing (it reports unknown or invalid settings as warnings, exit 0).
fn verify_unit(root: &Path, unit: &str) -> anyhow::Result<()> {
    let (ok, out, err) = capture(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(format!("--root={}", root.display()))
            .arg(unit),
    )?;
    let said = format!("{out}{err}");
    ensure!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify {unit}: {}",
        said.trim()
    );
    println!("package: systemd-analyze verify {unit}: ok");
    Ok(())
}

/// The exposure score `systemd-analyze security --offline=yes` gives `unit` under `root`.
fn exposure(root: &Path, unit: &str) -> anyhow::Result<String> {
    let (_, out, err) = capture(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", root.display()))
            .arg(unit),
    )?;
    let line = format!("{out}{err}")
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .map(|l| l.trim_start_matches('→').trim().to_owned())
        .with_context(|| format!("systemd-analyze security {unit} printed no score"))?;
    Ok(line)
}

/// The package tier: build, install into a fresh root, check, verify the units, remove.
pub fn test() -> anyhow::Result<()> {
    ensure!(
        cmd::is_root(),
        "the package tier installs with dpkg --root and needs root"
    );
    let deb = package()?;
    let collector_deb = package_collector::package()?;
    // The same source makes the same bytes (file times, sizes, order).
    let first = (fs::read(&deb)?, fs::read(&collector_deb)?);
    let again = (package()?, package_collector::package()?);
    ensure!(
        first.0 == fs::read(&again.0)? && first.1 == fs::read(&again.1)?,
        "building the packages twice from the same tree gave different bytes: not reproducible"
    );
    println!("package: both packages are byte-identical when built again");
    let dir = TempDir(cmd::target_dir().join("package/root"));
    if dir.0.exists() {
        fs::remove_dir_all(&dir.0)?;
    }
    let root = dir.0.clone();
    // A minimal dpkg database; the maintainer scripts run chroot-less with DPKG_ROOT set and
    // then touch nothing outside the root.
    // Laid out like a Debian (merged /usr) root: /lib and /bin are links into /usr.
    for dir in ["lib", "bin", "sbin"] {
        mkdir(&root.join("usr").join(dir), 0o755)?;
        std::os::unix::fs::symlink(format!("usr/{dir}"), root.join(dir))?;
    }
    mkdir(&root.join("var/lib/dpkg/info"), 0o755)?;
    mkdir(&root.join("var/lib/dpkg/updates"), 0o755)?;
    fs::write(root.join("var/lib/dpkg/status"), "")?;
    fs::write(root.join("var/lib/dpkg/available"), "")?;
    let dpkg = |args: &[&str]| -> anyhow::Result<()> {
        cmd::run(
            Command::new("dpkg")
                .arg(format!("--root={}", root.display()))
                .args([
                    "--force-script-chrootless",
                    "--force-depends",
                    "--log=/dev/null",
                ])
                .args(args),
        )
    };
    dpkg(&[
        "-i",
        &deb.display().to_string(),
        &collector_deb.display().to_string(),
    ])?;
    for path in INSTALLED.iter().chain(package_collector::INSTALLED) {
        ensure!(
            root.join(path).exists(),
            "after dpkg -i: /{path} is missing"
        );
    }
    ensure!(
        fs::read_dir(root.join("etc/phiguard/policies"))?
            .next()
            .is_none(),
        "/etc/phiguard/policies must be empty: shipped example policies would be enforced"
    );
    ensure!(
        fs::read_dir(root.join("usr/share/doc/phiguard/examples/policies"))?.count() > 0,
        "no example policies in /usr/share/doc/phiguard/examples/policies"
    );
    // The packaged configuration and man page are valid.
    let config = root.join("etc/phiguard/agent.toml");
    let (ok, _, err) = capture(
        Command::new(root.join("usr/bin/phiguard"))
            .args(["policy", "check"])
            .arg(root.join("etc/phiguard/policies"))
            .arg("--config")
            .arg(&config),
    )?;
    ensure!(
        ok,
        "phiguard policy check with the packaged agent.toml: {err}"
    );
    let (ok, page, err) = capture(
        Command::new("man")
            .arg("-l")
            .arg(root.join("usr/share/man/man1/phiguard.1.gz"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"),
    )?;
    ensure!(
        ok && page.contains("phiguard status"),
        "the man page does not render (or lacks `phiguard status`): {err}"
    );
    let conffiles = fs::read_to_string(root.join("var/lib/dpkg/info/phiguard.conffiles"))?;
    ensure!(
        conffiles.contains("/etc/phiguard/agent.toml"),
        "agent.toml is not a conffile"
    );
    check_collector(&root)?;

    // systemd-analyze resolves units and ExecStart= inside --root: give the root systemd's own
    // units (targets).
    let units = Path::new("/lib/systemd/system");
    ensure!(
        units.join("multi-user.target").exists() && Path::new("/usr/bin/systemd-analyze").exists(),
        "systemd-analyze or systemd's units are missing (apt-get install systemd)"
    );
    let units_dir = root.join("usr/lib/systemd/system");
    let mut copied = Vec::new();
    for entry in fs::read_dir(units)? {
        let entry = entry?;
        let to = units_dir.join(entry.file_name());
        if entry.file_type()?.is_file() && !to.exists() {
            fs::copy(entry.path(), &to)?;
            copied.push(to);
        }
    }
    verify_unit(&root, "/lib/systemd/system/phiguard.service")?;
    verify_unit(&root, "/lib/systemd/system/phiguard-collector.service")?;
    println!(
        "package: systemd-analyze security phiguard.service: {}",
        exposure(&root, "phiguard.service")?
    );
    println!(
        "package: systemd-analyze security phiguard-collector.service: {}",
        exposure(&root, "phiguard-collector.service")?
    );
    for file in copied {
        fs::remove_file(file)?;
    }

    dpkg(&["-r", NAME, package_collector::NAME])?;
    for path in INSTALLED.iter().chain(package_collector::INSTALLED) {
        let left = root.join(path);
        // dpkg -r keeps conffiles (purge removes them) and the directories holding them.
        let kept = path.starts_with("etc/phiguard/agent.toml")
            || path.starts_with("etc/phiguard/collector.toml");
        if kept {
            ensure!(left.exists(), "dpkg -r removed the conffile /{path}");
        } else {
            ensure!(!left.exists(), "after dpkg -r: /{path} is still there");
        }
    }
    dpkg(&["--purge", NAME, package_collector::NAME])?;
    ensure!(
        !root.join("etc/phiguard").exists(),
        "after dpkg --purge: /etc/phiguard is still there"
    );
    for name in [NAME, package_collector::NAME] {
        if root.join(format!("var/lib/dpkg/info/{name}.list")).exists() {
            bail!("dpkg still lists {name} as installed");
        }
    }
    println!(
        "package: both installed into a fresh root, laid out as documented, removed and purged"
    );
    Ok(())
}

/// The collector package as installed under `root`: its user and group exist, its
/// configuration is a conffile and parses (the collector then stops at the missing TLS
/// files, which the administrator provides), and its man page renders.
fn check_collector(root: &Path) -> anyhow::Result<()> {
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let group = fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    ensure!(
        passwd
            .lines()
            .any(|l| l.starts_with("phiguard-collector:") && l.ends_with(":/usr/sbin/nologin")),
        "postinst did not create the phiguard-collector user: {passwd}"
    );
    ensure!(
        group.lines().any(|l| l.starts_with("phiguard-collector:")),
        "postinst did not create the phiguard-collector group: {group}"
    );
    let conffiles =
        fs::read_to_string(root.join("var/lib/dpkg/info/phiguard-collector.conffiles"))?;
    ensure!(
        conffiles.contains("/etc/phiguard/collector.toml"),
        "collector.toml is not a conffile"
    );
    let (ok, _, err) = capture(
        Command::new(root.join("usr/bin/phiguard-collector"))
            .args(["serve", "--config"])
            .arg(root.join("etc/phiguard/collector.toml"))
            .env("NO_COLOR", "1"),
    )?;
    ensure!(
        !ok && err.contains("/etc/phiguard/ca.pem") && !err.contains("collector.toml:"),
        "the packaged collector.toml should parse and lead to the (missing) TLS files: {err}"
    );
    let (ok, page, err) = capture(
        Command::new("man")
            .arg("-l")
            .arg(root.join("usr/share/man/man1/phiguard-collector.1.gz"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"),
    )?;
    ensure!(
        ok && page.contains("PHIGUARD-COLLECTOR SERVE"),
        "the collector's man page does not render (or lacks serve): {err}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packaged_config_follows_the_repository_agent_toml() {
        let repo = fs::read_to_string(cmd::workspace_root().join("agent.toml")).unwrap();
        let packaged = packaged_config(&repo).unwrap();
        assert!(packaged.contains("\nstdout = false\n"));
        assert!(packaged.contains("\nfile = \"/var/log/phiguard/events.jsonl\"\n"));
        assert!(packaged.contains("# dir = \"/etc/phiguard/policies\"\n"));
        assert!(packaged.contains("# listen = \"127.0.0.1:9464\"\n"));
    }

    #[test]
    fn the_unit_leaves_bpffs_writable_and_the_rest_of_sys_read_only() {
        let unit =
            fs::read_to_string(cmd::workspace_root().join("packaging/phiguard.service")).unwrap();
        let settings: Vec<&str> = unit.lines().filter(|l| !l.starts_with('#')).collect();
        // ProtectKernelTunables=yes makes /sys/fs/bpf read-only whatever ReadWritePaths says:
        // the agent then cannot pin and crash-loops as soon as policies are set.
        assert!(settings.contains(&"ProtectKernelTunables=no"));
        assert!(settings.contains(&"ReadWritePaths=/sys/fs/bpf"));
        assert!(settings
            .iter()
            .any(|l| l.starts_with("ReadOnlyPaths=/sys /proc/sys ")));
        assert!(settings.contains(&"InaccessiblePaths=-/proc/kcore -/sys/kernel/debug"));
        assert!(settings.contains(&"RuntimeDirectoryPreserve=yes"));
        assert!(settings.contains(&"ExecReload=/usr/bin/phiguard reload --pid $MAINPID"));
    }

    #[test]
    fn the_unit_keeps_its_hardening() {
        let unit =
            fs::read_to_string(cmd::workspace_root().join("packaging/phiguard.service")).unwrap();
        for line in [
            "Type=notify",
            "WatchdogSec=",
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "PrivateTmp=yes",
            "StateDirectory=phiguard",
            "RuntimeDirectory=phiguard",
            "LogsDirectory=phiguard",
            "Restart=on-failure",
            "ReadWritePaths=/sys/fs/bpf",
            "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH\n",
        ] {
            assert!(unit.contains(line), "packaging/phiguard.service lacks {line}");
        }
    }
}
