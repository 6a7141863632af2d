//! The VM tier's kernels, each fetched once with `apt-get download` and cached outside the build
//! tree (under `$XDG_CACHE_HOME/phiguard`, else `~/.cache/phiguard`), so `cargo clean` keeps them:
//!
//! - [`Series::V6_12`]: Debian's 6.12 cloud kernel for bookworm (a backport published through
//!   `bookworm-security`; `linux-image-6.12.N+debM-cloud-amd64`), cached in `phiguard/vm`.
//!   `CONFIG_BPF_LSM=y` with `bpf` in its default LSM list. Every boot but `bookworm-6.1`.
//! - [`Series::V6_1`]: Debian 12's own kernel, 6.1 LTS (`linux-image-6.1.0-ABI-cloud-amd64`
//!   from bookworm / bookworm-security), cached in `phiguard/vm-6.1`: what a bookworm server
//!   runs unless its admin installed the backport. Its config (6.1.0-57, checked here) has
//!   `CONFIG_BPF_LSM=y`, `CONFIG_DEBUG_INFO_BTF=y`, kprobes, fentry, fanotify permission events,
//!   and `CONFIG_LSM="landlock,lockdown,yama,loadpin,safesetid,integrity,apparmor,selinux,smack,
//!   tomoyo,bpf"`: `bpf` is in the default list, so it boots without `lsm=` (were it missing,
//!   [`VmKernel::lsm_param`] would add it, as an admin enabling BPF LSM would).
//!
//! Each series is cached in its own directory because [`ensure`] prunes everything in its
//! directory but the kernel it chose.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::cmd::{self, output};

/// The Debian flavour the tier boots.
const FLAVOUR: &str = "cloud-amd64";

/// A kernel series the tier boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Series {
    /// Debian's 6.12 cloud kernel for bookworm (the backport).
    #[value(name = "6.12")]
    V6_12,
    /// Debian 12's own 6.1 cloud kernel.
    #[value(name = "6.1")]
    V6_1,
}

impl Series {
    /// `6.12`, `6.1`.
    pub fn name(self) -> &'static str {
        match self {
            Series::V6_12 => "6.12",
            Series::V6_1 => "6.1",
        }
    }

    /// `apt-cache search --names-only` pattern of its image packages.
    fn pattern(self) -> String {
        match self {
            Series::V6_12 => format!("^linux-image-6\\.12\\.[0-9]+\\+deb[0-9]+-{FLAVOUR}$"),
            Series::V6_1 => format!("^linux-image-6\\.1\\.0-[0-9]+-{FLAVOUR}$"),
        }
    }

    /// The cache directory's name under `phiguard/`.
    fn cache_name(self) -> &'static str {
        match self {
            // The name from before there were two series: other checkouts share it.
            Series::V6_12 => "vm",
            Series::V6_1 => "vm-6.1",
        }
    }

    /// The order of an image package name of this series (higher is newer), or `None` for
    /// any other package: `linux-image-6.12.117+deb12-cloud-amd64` → (117, 12),
    /// `linux-image-6.1.0-57-cloud-amd64` → (57, 0).
    fn patch_level(self, package: &str) -> Option<(u32, u32)> {
        let rest = package.strip_prefix("linux-image-")?;
        match self {
            Series::V6_12 => {
                let rest = rest
                    .strip_prefix("6.12.")?
                    .strip_suffix(FLAVOUR)?
                    .strip_suffix('-')?;
                let (patch, deb) = rest.split_once("+deb")?;
                Some((patch.parse().ok()?, deb.parse().ok()?))
            }
            Series::V6_1 => {
                let abi = rest
                    .strip_prefix("6.1.0-")?
                    .strip_suffix(FLAVOUR)?
                    .strip_suffix('-')?;
                Some((abi.parse().ok()?, 0))
            }
        }
    }
}

/// Kernel options the tier relies on, and what for. A kernel without one is refused.
const REQUIRED_CONFIG: &[(&str, &str)] = &[
    (
        "CONFIG_BPF_LSM",
        "BPF LSM programs, the reason for this tier",
    ),
    (
        "CONFIG_DEBUG_INFO_BTF",
        "/sys/kernel/btf/vmlinux, where the agent reads struct offsets",
    ),
    ("CONFIG_BLK_DEV_INITRD", "booting from an initramfs"),
    ("CONFIG_RD_GZIP", "the initramfs is gzip-compressed"),
    (
        "CONFIG_SERIAL_8250_CONSOLE",
        "console=ttyS0, the only way results come back",
    ),
];

/// Where bookworm gets the 6.12 kernel (a backport published through the security archive).
const BOOKWORM_SOURCE_FILE: &str = "/etc/apt/sources.list.d/phiguard-vm-kernel.sources";
const BOOKWORM_SOURCE: &str = "\
# Added by `cargo xtask setup` (phiguard): Debian's 6.12 kernel for bookworm, booted by the VM tier.
Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// A cached kernel, checked and ready to boot.
#[derive(Debug)]
pub struct VmKernel {
    pub series: Series,
    /// The Debian package it came from, e.g. `linux-image-6.12.117+deb12-cloud-amd64`.
    pub package: String,
    /// The package's version, e.g. `6.12.117-1~deb12u1`.
    pub version: String,
    /// The compressed kernel image.
    pub vmlinuz: PathBuf,
    /// Its built-in default LSM list (`CONFIG_LSM`).
    pub lsm: Vec<String>,
}

impl VmKernel {
    /// The `lsm=` boot parameter, needed only when `bpf` is not in the default list.
    pub fn lsm_param(&self) -> Option<String> {
        if self.lsm.iter().any(|l| l == "bpf") {
            return None;
        }
        let mut list = self.lsm.clone();
        list.push("bpf".into());
        Some(format!("lsm={}", list.join(",")))
    }
}

impl VmKernel {
    /// The `lsm=` boot parameter naming the default list without `bpf`: a stock distribution
    /// kernel on which BPF LSM programs load and attach but never run.
    pub fn lsm_param_without_bpf(&self) -> String {
        let list: Vec<&str> = self
            .lsm
            .iter()
            .map(String::as_str)
            .filter(|l| *l != "bpf")
            .collect();
        format!("lsm={}", list.join(","))
    }
}

/// Where kernels of `series` are cached.
fn cache_dir(series: Series) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| cmd::workspace_root().join("target"));
    base.join("phiguard").join(series.cache_name())
}

/// Kernel image packages of `series` apt knows of, newest first.
fn available(series: Series) -> Vec<String> {
    let listing =
        output(Command::new("apt-cache").args(["search", "--names-only", &series.pattern()]))
            .unwrap_or_default();
    newest_first(series, &listing)
}

/// Package names from `apt-cache search` output that are kernel images of `series`, newest
/// first.
fn newest_first(series: Series, listing: &str) -> Vec<String> {
    let mut names: Vec<(u32, u32, String)> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| {
            series
                .patch_level(name)
                .map(|(p, d)| (p, d, name.to_owned()))
        })
        .collect();
    names.sort();
    names.dedup();
    names.into_iter().rev().map(|(_, _, name)| name).collect()
}

fn apt_update() -> anyhow::Result<()> {
    cmd::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Set-up step: makes sure apt can download a 6.12 cloud kernel, refreshing the package lists
/// and, on bookworm, adding the suite that carries it when the sources lack it. Idempotent.
/// Returns a line for setup's report.
pub fn ensure_apt_source() -> anyhow::Result<String> {
    const SERIES: &str = "6.12";
    let series = Series::V6_12;
    if let Some(newest) = available(series).first() {
        return Ok(format!("ok ({newest} available)"));
    }
    if !cmd::is_root() {
        bail!("apt knows no linux-image-{SERIES}.*-{FLAVOUR} package (the VM tier's kernel); run setup as root so it can refresh the package lists");
    }
    apt_update()?;
    if let Some(newest) = available(series).first() {
        return Ok(format!("ok ({newest} available after apt-get update)"));
    }
    let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let bookworm = os_release
        .lines()
        .any(|l| l.trim() == "VERSION_CODENAME=bookworm");
    if !bookworm || Path::new(BOOKWORM_SOURCE_FILE).exists() {
        bail!(
            "no linux-image-{SERIES}.*-{FLAVOUR} package in this machine's apt sources: the VM tier boots Debian's {SERIES} cloud kernel \
             (bookworm: suite bookworm-security, or bookworm-backports; trixie: main). Add such a source and run setup again"
        );
    }
    println!(
        "setup: adding bookworm-security to apt ({BOOKWORM_SOURCE_FILE}): it carries the {SERIES} kernel the VM tier boots"
    );
    fs::write(BOOKWORM_SOURCE_FILE, BOOKWORM_SOURCE)
        .with_context(|| format!("writing {BOOKWORM_SOURCE_FILE}"))?;
    apt_update()?;
    match available(series).first() {
        Some(newest) => Ok(format!("ok ({newest} available from bookworm-security)")),
        None => bail!(
            "still no linux-image-{SERIES}.*-{FLAVOUR} package after adding {BOOKWORM_SOURCE_FILE}"
        ),
    }
}

/// Set-up step: makes sure apt can download bookworm's own 6.1 cloud kernel (bookworm's main
/// suite and bookworm-security carry it; other releases need a bookworm source added by hand).
/// Returns a line for setup's report.
pub fn ensure_apt_source_6_1() -> anyhow::Result<String> {
    if let Some(newest) = available(Series::V6_1).first() {
        return Ok(format!("ok ({newest} available)"));
    }
    if newest_cached(Series::V6_1, &cache_dir(Series::V6_1)).is_some() {
        return Ok("ok (none in apt; a cached one)".to_owned());
    }
    bail!(
        "apt knows no linux-image-6.1.0-*-{FLAVOUR} package (Debian 12's own kernel, booted by the VM tier's \
         `bookworm-6.1` boot): add a bookworm source (suite bookworm or bookworm-security) and run setup again"
    )
}

/// The newest cloud kernel of `series` apt offers, downloaded and unpacked on first use and
/// checked for the options the tier needs. Offline, the newest cached kernel is used.
pub fn ensure(series: Series) -> anyhow::Result<VmKernel> {
    let name = series.name();
    let cache = cache_dir(series);
    let Some(package) = available(series).into_iter().next() else {
        if let Some(cached) = newest_cached(series, &cache) {
            println!("vm: apt offers no {name} kernel; using the cached {cached}");
            return load(series, &cache.join(cached));
        }
        bail!("apt offers no {name} {FLAVOUR} kernel package and none is cached in {}: run `cargo xtask setup` as root", cache.display());
    };
    let fetched = fetch(&cache, &package).or_else(|first| {
        // Stale package lists can name a kernel the archive has already replaced: refresh them
        // and take the newest again.
        if !cmd::is_root() {
            return Err(first);
        }
        println!("vm: downloading {package} failed ({first:#}); refreshing the apt lists");
        apt_update()?;
        let package = available(series)
            .into_iter()
            .next()
            .context("no kernel package after apt-get update")?;
        fetch(&cache, &package)
    });
    let dir = match fetched {
        Ok(dir) => dir,
        Err(error) => match newest_cached(series, &cache) {
            Some(cached) => {
                println!("vm: WARNING: {error:#}; using the cached {cached}");
                cache.join(cached)
            }
            None => return Err(error),
        },
    };
    prune(&cache, &dir);
    load(series, &dir)
}

/// The cache directory of `package`, downloaded first if it is not there yet.
fn fetch(cache: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let dir = cache.join(package);
    if !dir.join("vmlinuz").exists() {
        download(package, &dir)?;
    }
    Ok(dir)
}

/// Downloads `package` and keeps its kernel image and config in `dir` (made atomically).
fn download(package: &str, dir: &Path) -> anyhow::Result<()> {
    let cache = dir.parent().context("cache dir")?;
    let work = cache.join(format!("{package}.download"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    println!(
        "vm: downloading {package} (about 35 MB, once) into {}",
        cache.display()
    );
    cmd::run(
        Command::new("apt-get")
            // apt's sandbox user cannot write into root's cache: download as ourselves.
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
            .current_dir(&work),
    )?;
    let deb = fs::read_dir(&work)?
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let version = output(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))
        .context("reading the package version")?;
    let tree = work.join("tree");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let boot = tree.join("boot");
    let find = |prefix: &str| -> anyhow::Result<PathBuf> {
        fs::read_dir(&boot)?
            .filter_map(|e| Some(e.ok()?.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .with_context(|| format!("{package} has no /boot/{prefix}*"))
    };
    let staged = cache.join(format!("{package}.tmp"));
    let _ = fs::remove_dir_all(&staged);
    fs::create_dir_all(&staged)?;
    fs::rename(find("vmlinuz-")?, staged.join("vmlinuz"))?;
    fs::rename(find("config-")?, staged.join("config"))?;
    fs::write(staged.join("version"), version.trim())?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&staged, dir).with_context(|| format!("moving the kernel to {}", dir.display()))?;
    fs::remove_dir_all(&work)?;
    Ok(())
}

/// The newest kernel of `series` in the cache, by package name.
fn newest_cached(series: Series, cache: &Path) -> Option<String> {
    let listing: String = fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| cache.join(name).join("vmlinuz").exists())
        .collect::<Vec<_>>()
        .join("\n");
    newest_first(series, &listing).into_iter().next()
}

/// Removes everything in the cache but `keep`: older kernels (about 12 MB each) and what an
/// interrupted download left.
fn prune(cache: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for path in entries.filter_map(|e| Some(e.ok()?.path())) {
        if path != keep {
            let _ = fs::remove_dir_all(path);
        }
    }
}

/// Reads a cached kernel and checks its configuration.
fn load(series: Series, dir: &Path) -> anyhow::Result<VmKernel> {
    let package = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("kernel cache dir name")?
        .to_owned();
    let config_path = dir.join("config");
    let config = fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let lsm =
        check_config(&config).with_context(|| format!("{package} cannot serve the VM tier"))?;
    Ok(VmKernel {
        series,
        version: fs::read_to_string(dir.join("version"))
            .unwrap_or_default()
            .trim()
            .to_owned(),
        package,
        vmlinuz: dir.join("vmlinuz"),
        lsm,
    })
}

/// Checks a kernel `.config` for [`REQUIRED_CONFIG`] and returns its `CONFIG_LSM` list.
fn check_config(config: &str) -> anyhow::Result<Vec<String>> {
    let missing: Vec<String> = REQUIRED_CONFIG
        .iter()
        .filter(|(option, _)| !config.lines().any(|l| l == format!("{option}=y")))
        .map(|(option, why)| format!("{option}=y ({why})"))
        .collect();
    if !missing.is_empty() {
        bail!("its config lacks {}", missing.join(", "));
    }
    let lsm = config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_LSM="))
        .context("its config has no CONFIG_LSM line")?;
    Ok(lsm
        .trim_matches('"')
        .split(',')
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_kernel_image() {
        let listing = "\
linux-image-6.12.107+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.117+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.117+deb12-cloud-amd64-dbg - Debug symbols
linux-image-6.12.99+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12-cloud-amd64 - Linux for x86-64 cloud (meta-package)
";
        assert_eq!(
            newest_first(Series::V6_12, listing),
            [
                "linux-image-6.12.117+deb12-cloud-amd64",
                "linux-image-6.12.107+deb12-cloud-amd64",
                "linux-image-6.12.99+deb12-cloud-amd64"
            ]
        );
    }

    #[test]
    fn picks_the_newest_bookworm_kernel_image() {
        let listing = "\
linux-image-6.1.0-9-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-57-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-57-cloud-amd64-dbg - Debug symbols
linux-image-6.12.117+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
";
        assert_eq!(
            newest_first(Series::V6_1, listing),
            [
                "linux-image-6.1.0-57-cloud-amd64",
                "linux-image-6.1.0-56-cloud-amd64",
                "linux-image-6.1.0-9-cloud-amd64"
            ]
        );
        assert_eq!(
            newest_first(Series::V6_12, listing),
            ["linux-image-6.12.117+deb12-cloud-amd64"]
        );
    }

    #[test]
    fn config_needs_bpf_lsm_and_btf() {
        let good = "CONFIG_BPF_LSM=y\nCONFIG_DEBUG_INFO_BTF=y\nCONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\nCONFIG_SERIAL_8250_CONSOLE=y\nCONFIG_LSM=\"landlock,lockdown,yama,bpf\"\n";
        assert_eq!(
            check_config(good).unwrap(),
            ["landlock", "lockdown", "yama", "bpf"]
        );
        let bad = good.replace("CONFIG_BPF_LSM=y", "# CONFIG_BPF_LSM is not set");
        let error = check_config(&bad).unwrap_err().to_string();
        assert!(error.contains("CONFIG_BPF_LSM=y"), "{error}");
    }

    #[test]
    fn bpf_is_added_to_the_lsm_list_only_when_missing() {
        let mut kernel = VmKernel {
            series: Series::V6_12,
            package: String::new(),
            version: String::new(),
            vmlinuz: PathBuf::new(),
            lsm: vec!["lockdown".into(), "bpf".into()],
        };
        assert_eq!(kernel.lsm_param(), None);
        kernel.lsm = vec!["lockdown".into(), "yama".into()];
        assert_eq!(kernel.lsm_param().as_deref(), Some("lsm=lockdown,yama,bpf"));
        assert_eq!(kernel.lsm_param_without_bpf(), "lsm=lockdown,yama");
    }
}
