//! The collector's Debian package, staged like the agent's (see [`crate::package`]) and
//! checked by the same package tier.
//!
//! Layout (documented in README.md, checked by [`crate::package::test`]):
//!
//! | path | what |
//! | --- | --- |
//! | `/usr/bin/phiguard-collector` | the collector (release build) |
//! | `/lib/systemd/system/phiguard-collector.service` | the hardened unit (`packaging/phiguard-collector.service`) |
//! | `/etc/phiguard/collector.toml` | configuration (a conffile) |
//! | `/usr/lib/sysusers.d/phiguard-collector.conf` | the `phiguard-collector` system user and group (postinst applies it) |
//! | `/usr/share/man/man1/phiguard-collector.1.gz` | the man page, generated from the command line |
//! | `/usr/share/doc/phiguard-collector/` | README, copyright |
//!
//! The store (`/var/lib/phiguard-collector`) holds audit records under retention: neither
//! removal nor purge deletes it.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{ensure, Context as _};

use crate::{
    cmd,
    package::{build_deb, copy, installed_kib, mkdir, write, COPYRIGHT},
};

/// The package name.
pub const NAME: &str = "phiguard-collector";

/// Files the package must lay out (relative to the root), checked after installing.
pub const INSTALLED: &[&str] = &[
    "usr/bin/phiguard-collector",
    "lib/systemd/system/phiguard-collector.service",
    "etc/phiguard/collector.toml",
    "usr/lib/sysusers.d/phiguard-collector.conf",
    "usr/share/doc/phiguard-collector/README.md",
    "usr/share/doc/phiguard-collector/copyright",
    "usr/share/man/man1/phiguard-collector.1.gz",
];

/// The service's user and group: the unit runs as it (`DynamicUser=` takes a static user of
/// the unit's name when one exists) and `SupplementaryGroups=` names the group that may read
/// the TLS key.
pub const SYSUSERS: &str = "# phiguard collector: the service's user and group (systemd-sysusers).\n\
g phiguard-collector -\n\
u phiguard-collector -:phiguard-collector \"phiguard collector\" /var/lib/phiguard-collector /usr/sbin/nologin\n";

const POSTINST: &str = r#"#!/bin/sh
# phiguard-collector postinst: create the service's user and group, register the unit with
# systemd as dh_installsystemd --no-enable would. Not enabled or started here: put the TLS files
# in place (README.md), review /etc/phiguard/collector.toml, then
# `systemctl enable --now phiguard-collector`.
set -e
case "$1" in
configure|abort-upgrade|abort-deconfigure|abort-remove)
    if [ "$1" = configure ]; then
        systemd-sysusers ${DPKG_ROOT:+--root="$DPKG_ROOT"} phiguard-collector.conf
    fi
    deb-systemd-helper update-state phiguard-collector.service >/dev/null || true
    if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        # An upgrade restarts a running collector; a stopped one stays stopped.
        if [ -n "$2" ] && systemctl --quiet is-active phiguard-collector.service; then
            deb-systemd-invoke restart phiguard-collector.service >/dev/null || true
        fi
    fi
    ;;
esac
"#;

const PRERM: &str = r#"#!/bin/sh
# phiguard-collector prerm: on removal stop the collector (it signs a final checkpoint).
set -e
if [ "$1" = remove ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop phiguard-collector.service >/dev/null || true
fi
"#;

const POSTRM: &str = r#"#!/bin/sh
# phiguard-collector postrm: removal masks the unit, purge forgets it and removes the
# configuration (dpkg) and nothing else. The store in /var/lib/phiguard-collector holds audit
# records that retention rules may require for years: delete it by hand once they are no longer
# needed. The system user stays (it may still own those files), as Debian does for system users.
set -e
if [ "$1" = remove ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = remove ] && [ -x "${DPKG_ROOT:-}/usr/bin/deb-systemd-helper" ]; then
    deb-systemd-helper mask phiguard-collector.service >/dev/null || true
fi
if [ "$1" = purge ]; then
    if [ -x "${DPKG_ROOT:-}/usr/bin/deb-systemd-helper" ]; then
        deb-systemd-helper purge phiguard-collector.service >/dev/null || true
        deb-systemd-helper unmask phiguard-collector.service >/dev/null || true
    fi
    if [ -d "${DPKG_ROOT:-}/var/lib/phiguard-collector" ] || [ -d "${DPKG_ROOT:-}/var/lib/private/phiguard-collector" ]; then
        echo "phiguard-collector: the store in /var/lib/phiguard-collector is kept (audit records)" >&2
    fi
fi
"#;

/// Builds the collector's release binary and package; returns the `.deb`'s path.
pub fn package() -> anyhow::Result<PathBuf> {
    crate::package::build_release_binaries()?;
    let root = cmd::workspace_root();
    let binary = cmd::target_dir().join("release/phiguard-collector");
    let out_dir = cmd::target_dir().join("package");
    let stage = out_dir.join("stage-collector");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let version = env!("CARGO_PKG_VERSION");
    let arch = cmd::output(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg --print-architecture failed: is this Debian or Ubuntu?")?
        .trim()
        .to_owned();

    let bin = stage.join("usr/bin/phiguard-collector");
    copy(&binary, &bin, 0o755)?;
    cmd::run(Command::new("strip").arg("--strip-debug").arg(&bin))?;
    copy(
        &root.join("packaging/phiguard-collector.service"),
        &stage.join("lib/systemd/system/phiguard-collector.service"),
        0o644,
    )?;
    write(
        &stage.join("etc/phiguard/collector.toml"),
        &packaged_config(&fs::read_to_string(root.join("collector/collector.toml"))?)?,
        0o644,
    )?;
    write(
        &stage.join("usr/lib/sysusers.d/phiguard-collector.conf"),
        SYSUSERS,
        0o644,
    )?;
    let doc = stage.join("usr/share/doc/phiguard-collector");
    copy(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    write(&doc.join("copyright"), COPYRIGHT, 0o644)?;

    let man = Command::new(&binary)
        .arg("man")
        .output()
        .context("running phiguard-collector man")?;
    ensure!(man.status.success(), "phiguard-collector man failed");
    let man_path = stage.join("usr/share/man/man1/phiguard-collector.1");
    write(&man_path, &String::from_utf8(man.stdout)?, 0o644)?;
    cmd::run(Command::new("gzip").args(["-9nf"]).arg(&man_path))?;

    let debian = stage.join("DEBIAN");
    mkdir(&debian, 0o755)?;
    write(
        &debian.join("conffiles"),
        "/etc/phiguard/collector.toml\n",
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
             Depends: libc6, systemd | systemd-sysusers, init-system-helpers (>= 1.54~)\n\
             Section: admin\n\
             Priority: optional\n\
             Homepage: https://example.invalid/phiguard\n\
             Description: phiguard collector: mutual-TLS intake and tamper-evident store\n \
             Receives phiguard agents' events over mutual TLS 1.3, stores each (agent, seq)\n \
             once in hash-chained, fsync'd segments, signs checkpoints of every chain,\n \
             raises alerts for sequence gaps and silent agents, and streams stored and\n \
             live events to subscribers.\n"
        ),
        0o644,
    )?;
    let deb = out_dir.join(format!("{NAME}_{version}_{arch}.deb"));
    build_deb(&stage, &deb)?;
    println!(
        "package: {} ({} KiB; installed {installed_kib} KiB)",
        deb.display(),
        fs::metadata(&deb)?.len() / 1024
    );
    Ok(deb)
}

/// The repository's `collector.toml` as a server's default: TLS files under `/etc/phiguard`
/// (the key readable by the `phiguard-collector` group), the store in the unit's state
/// directory, the checkpoint key in the unit's second state directory (outside the store)
/// and the exported checkpoints in its logs directory.
fn packaged_config(repo: &str) -> anyhow::Result<String> {
    let mut text = repo.to_owned();
    for (from, to) in [
        (
            "ca = \"../certs/ca.pem\"\n",
            "ca = \"/etc/phiguard/ca.pem\"\n",
        ),
        (
            "cert = \"../certs/collector.pem\"\nkey = \"../certs/collector.key\"\n",
            "# The key: mode 0640, owner root, group phiguard-collector.\n\
             cert = \"/etc/phiguard/collector.pem\"\nkey = \"/etc/phiguard/collector.key\"\n",
        ),
        (
            "dir = \"../target/collector-store\"\n",
            "dir = \"/var/lib/phiguard-collector\"\n",
        ),
        (
            "key = \"../target/collector-key/checkpoint.key\"\n",
            "key = \"/var/lib/phiguard-collector-key/checkpoint.key\"\n",
        ),
        (
            "export_dir = \"../target/collector-checkpoints\"\n",
            "export_dir = \"/var/log/phiguard-collector\"\n",
        ),
    ] {
        ensure!(
            text.contains(from),
            "collector/collector.toml changed: the packaged configuration expects {from:?}"
        );
        text = text.replace(from, to);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packaged_config_follows_the_repository_collector_toml() {
        let repo =
            fs::read_to_string(cmd::workspace_root().join("collector/collector.toml")).unwrap();
        let packaged = packaged_config(&repo).unwrap();
        assert!(packaged.contains("\nca = \"/etc/phiguard/ca.pem\"\n"));
        assert!(packaged.contains("\nkey = \"/etc/phiguard/collector.key\"\n"));
        assert!(packaged.contains("\ndir = \"/var/lib/phiguard-collector\"\n"));
        assert!(packaged.contains("\nkey = \"/var/lib/phiguard-collector-key/checkpoint.key\"\n"));
        assert!(packaged.contains("\nexport_dir = \"/var/log/phiguard-collector\"\n"));
        assert!(!packaged.contains("../"), "no repository paths: {packaged}");
    }

    #[test]
    fn the_unit_runs_as_the_packaged_user_without_privilege() {
        let unit =
            fs::read_to_string(cmd::workspace_root().join("packaging/phiguard-collector.service"))
                .unwrap();
        for line in [
            "ExecStart=/usr/bin/phiguard-collector serve --config /etc/phiguard/collector.toml",
            "DynamicUser=yes",
            "SupplementaryGroups=phiguard-collector",
            "StateDirectory=phiguard-collector phiguard-collector-key",
            "LogsDirectory=phiguard-collector",
            "CapabilityBoundingSet=\n",
            "ProtectSystem=strict",
        ] {
            assert!(
                unit.contains(line),
                "packaging/phiguard-collector.service lacks {line}"
            );
        }
        assert!(SYSUSERS.contains("g phiguard-collector"));
        assert!(SYSUSERS.contains("u phiguard-collector -:phiguard-collector"));
    }
}
