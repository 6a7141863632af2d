//! The VM tier's initramfs: busybox, the test binaries and the agent, the host programs the tests
//! run (at their host paths, with the shared libraries `ldd` lists), a few `/etc` files and the
//! `/init` script in `vm_init.sh`, packed as a gzip-compressed `newc` cpio archive.

use std::{
    fs::{self, File},
    os::unix::fs::{symlink, PermissionsExt as _},
    path::{Component, Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use crate::cmd;

/// Host programs the VM needs, copied from the host at the same paths (the tests assert on
/// paths such as `/usr/bin/cat`). A test that runs another program must add it here; a unit
/// test (`tests_name_no_program_the_vm_lacks`) finds those the test sources name and this list
/// misses.
pub const HOST_PROGRAMS: &[&str] = &[
    // host.rs, cli.rs, enforce.rs: the allowed reader of watched and protected files.
    "/usr/bin/cat",
    // enforce.rs: the reader the policies deny.
    "/usr/bin/head",
    // enforce.rs: the writer the policies deny.
    "/usr/bin/tee",
    // attacks.rs: a hard link made by the attacker, a directory walker.
    "/usr/bin/ln",
    "/usr/bin/find",
    // enforce.rs: the exec allow-list's listed and unlisted binaries.
    "/usr/bin/true",
    "/usr/bin/id",
    // `sh -c "cd … && cat …"` and friends (dash on Debian).
    "/bin/sh",
    // host.rs, enforce.rs: connects through /dev/tcp.
    "/bin/bash",
    // host.rs: exec events and argv.
    "/bin/echo",
    // host.rs, cli.rs, enforce.rs: run as nobody, without capabilities.
    "/usr/bin/setpriv",
    // /init: the smoke check that the kernel accepts BPF LSM programs.
    "/usr/sbin/bpftool",
];

/// Directories that are symlinks on merged-/usr hosts (`/bin -> usr/bin`): copied as they are,
/// so `/bin/sh` and `/usr/bin/sh` name the same file in the VM as on the host.
const TOP_LEVEL: &[&str] = &["/bin", "/sbin", "/lib", "/lib64"];

/// Host files copied as they are: account names for the events' user and group names.
const HOST_FILES: &[&str] = &["/etc/passwd", "/etc/group"];

/// Files written as they are.
const GENERATED: &[(&str, &str)] = &[
    (
        "etc/nsswitch.conf",
        "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
    ),
    ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
];

/// Empty directories the `/init` script mounts on or uses.
const DIRS: &[&str] = &["proc", "sys", "dev", "tmp", "run", "root", "etc"];

/// The `/init` script.
pub const INIT: &str = include_str!("vm_init.sh");

/// Where busybox-static installs busybox.
const BUSYBOX: &str = "/bin/busybox";

/// What goes into the image.
#[derive(Debug)]
pub struct Contents<'a> {
    /// Test executables as (name in the VM, host path), run in this order.
    pub tests: &'a [(String, PathBuf)],
    /// The `phiguard` binary (`PHIGUARD_BIN` in the VM).
    pub agent: &'a Path,
    /// The attack tests' opener, built on the host (`PHIGUARD_OPENER` in the VM).
    pub opener: &'a Path,
    /// The subject tests' fixtures, built on the host: a directory copied whole
    /// (`PHIGUARD_FIXTURES` in the VM).
    pub fixtures: &'a Path,
    /// Arguments for every test binary, after `--test-threads=1`.
    pub args: &'a [String],
}

/// Builds the image under `work` (staging tree `work/root`) and returns the archive's path.
pub fn build(contents: &Contents, work: &Path) -> anyhow::Result<PathBuf> {
    let root = work.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::create_dir_all(&root)?;
    for dir in DIRS {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(root.join("root"), fs::Permissions::from_mode(0o700))?;
    for dir in TOP_LEVEL {
        if Path::new(dir).exists() {
            install(&root, Path::new(dir))?;
        }
    }
    for program in HOST_PROGRAMS.iter().chain([&BUSYBOX]) {
        install_with_libraries(&root, Path::new(program))?;
    }
    busybox_applets(&root)?;
    for file in HOST_FILES {
        install(&root, Path::new(file))?;
    }
    for (path, text) in GENERATED {
        fs::write(root.join(path), text)?;
    }

    let phiguard = root.join("phiguard");
    fs::create_dir_all(phiguard.join("tests"))?;
    fs::create_dir_all(phiguard.join("bin"))?;
    for (name, path) in contents.tests {
        stripped_copy(path, &phiguard.join("tests").join(name))?;
        install_libraries(&root, path)?;
    }
    stripped_copy(contents.agent, &phiguard.join("bin/phiguard"))?;
    install_libraries(&root, contents.agent)?;
    stripped_copy(contents.opener, &phiguard.join("bin/opener"))?;
    install_libraries(&root, contents.opener)?;
    let fixtures = phiguard.join("fixtures");
    fs::create_dir_all(&fixtures)?;
    for entry in fs::read_dir(contents.fixtures)
        .with_context(|| format!("reading {}", contents.fixtures.display()))?
    {
        let path = entry?.path();
        let name = path.file_name().context("fixture without a name")?;
        fs::copy(&path, fixtures.join(name))
            .with_context(|| format!("copying {}", path.display()))?;
        install_libraries(&root, &path)?;
    }
    let list: String = contents
        .tests
        .iter()
        .map(|(n, _)| format!("{n}\n"))
        .collect();
    fs::write(phiguard.join("tests.txt"), list)?;
    if let Some(bad) = contents.args.iter().find(|a| a.contains('\n')) {
        bail!("test arguments cannot contain a newline: {bad:?}");
    }
    let args: String = contents.args.iter().map(|a| format!("{a}\n")).collect();
    fs::write(phiguard.join("args"), args)?;
    fs::write(root.join("init"), INIT)?;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;

    let archive = work.join("initramfs.gz");
    pack(&root, &archive)?;
    Ok(archive)
}

/// Copies a host path into the tree at the same place, reproducing every symlink met on the
/// way (and what it points to), so the path resolves in the VM as it does on the host.
pub fn install(root: &Path, path: &Path) -> anyhow::Result<()> {
    install_following(root, path, 0)
}

fn install_following(root: &Path, path: &Path, depth: u32) -> anyhow::Result<()> {
    if depth > 32 {
        bail!("too many symlinks resolving {}", path.display());
    }
    if !path.is_absolute() {
        bail!("not an absolute path: {}", path.display());
    }
    let mut host = PathBuf::from("/");
    let mut components = path.components();
    components.next(); // the root
    while let Some(component) = components.next() {
        host.push(component);
        let staged = root.join(host.strip_prefix("/")?);
        let meta = fs::symlink_metadata(&host)
            .with_context(|| format!("{} (needed in the VM)", host.display()))?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&host)?;
            if fs::symlink_metadata(&staged).is_err() {
                symlink(&target, &staged)
                    .with_context(|| format!("linking {}", staged.display()))?;
            }
            let parent = host.parent().unwrap_or(Path::new("/"));
            let resolved = normalize(&parent.join(target).join(components.as_path()));
            return install_following(root, &resolved, depth + 1);
        }
        if meta.is_dir() {
            fs::create_dir_all(&staged)?;
        } else if fs::symlink_metadata(&staged).is_err() {
            fs::copy(&host, &staged).with_context(|| format!("copying {}", host.display()))?;
        }
    }
    Ok(())
}

/// `path` with `.` and `..` removed lexically (its prefix up to each `..` has no symlinks).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The shared libraries (and the dynamic loader) `ldd` lists for `binary`; none when static.
fn libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // `ldd` fails on static binaries ("not a dynamic executable"), such as busybox-static.
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&text))
}

/// Paths in `ldd` output: `libc.so.6 => /lib/…/libc.so.6 (0x…)` and `/lib64/ld-linux….so.2 (0x…)`.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

fn install_libraries(root: &Path, binary: &Path) -> anyhow::Result<()> {
    for library in libraries(binary)? {
        install(root, &library)?;
    }
    Ok(())
}

fn install_with_libraries(root: &Path, program: &Path) -> anyhow::Result<()> {
    install(root, program)?;
    install_libraries(root, program)
}

/// Copies a binary without its debug information (a tenth of the size, same code).
fn stripped_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    cmd::run(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(from)
            .arg(to),
    )
}

/// Links every busybox applet that no real program already provides into `/usr/bin` or
/// `/usr/sbin` (the host programs win: `cat` is coreutils' `cat`, as on the host).
fn busybox_applets(root: &Path) -> anyhow::Result<()> {
    let list = cmd::output(Command::new(BUSYBOX).arg("--list-full"))
        .context("busybox --list-full (is busybox-static installed?)")?;
    let busybox = fs::canonicalize(BUSYBOX)?;
    for entry in list.lines() {
        let path = Path::new(entry);
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            continue;
        };
        let dir = match dir.to_str() {
            Some("bin" | "usr/bin") => "usr/bin",
            Some("sbin" | "usr/sbin") => "usr/sbin",
            _ => continue,
        };
        let link = root.join(dir).join(name);
        if fs::symlink_metadata(&link).is_err() {
            fs::create_dir_all(root.join(dir))?;
            symlink(&busybox, &link).with_context(|| format!("linking {}", link.display()))?;
        }
    }
    Ok(())
}

/// Every path under `root`, relative to it, parents before children (for cpio).
fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        out.push(path.strip_prefix(root)?.to_path_buf());
        if fs::symlink_metadata(&path)?.is_dir() {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}

/// Packs `root` into a gzip-compressed newc cpio archive, every file owned by root.
fn pack(root: &Path, archive: &Path) -> anyhow::Result<()> {
    let mut paths = Vec::new();
    walk(root, root, &mut paths)?;
    let list: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    let mut cpio = Command::new("cpio")
        .args(["--quiet", "--create", "--format=newc", "--owner=0:0"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cpio (is it installed?)")?;
    let cpio_out = cpio.stdout.take().context("cpio stdout")?;
    let mut gzip = Command::new("gzip")
        .arg("-1")
        .stdin(cpio_out)
        .stdout(File::create(archive).with_context(|| format!("creating {}", archive.display()))?)
        .spawn()
        .context("starting gzip")?;
    {
        use std::io::Write as _;
        let mut stdin = cpio.stdin.take().context("cpio stdin")?;
        stdin.write_all(list.as_bytes())?;
    }
    let cpio_status = cpio.wait()?;
    let gzip_status = gzip.wait()?;
    if !cpio_status.success() || !gzip_status.success() {
        bail!("packing the initramfs failed (cpio: {cpio_status}, gzip: {gzip_status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f0f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn normalizes_lexically() {
        assert_eq!(
            normalize(Path::new("/usr/lib64/../lib/./x/ld.so")),
            PathBuf::from("/usr/lib/x/ld.so")
        );
    }

    #[test]
    fn reproduces_symlinks_on_the_way() {
        let host = tempfile_dir("host");
        let root = tempfile_dir("root");
        fs::create_dir_all(host.join("usr/bin")).unwrap();
        fs::write(host.join("usr/bin/tool"), "x").unwrap();
        symlink("usr/bin", host.join("bin")).unwrap();
        symlink("tool", host.join("usr/bin/alias")).unwrap();
        install(&root, &host.join("bin/alias")).unwrap();
        let staged = root.join(host.strip_prefix("/").unwrap());
        assert_eq!(
            fs::read_link(staged.join("bin")).unwrap(),
            PathBuf::from("usr/bin")
        );
        assert_eq!(
            fs::read_link(staged.join("usr/bin/alias")).unwrap(),
            PathBuf::from("tool")
        );
        assert_eq!(fs::read(staged.join("usr/bin/tool")).unwrap(), b"x");
        let _ = fs::remove_dir_all(&host);
        let _ = fs::remove_dir_all(&root);
    }

    /// Absolute program paths (`/usr/bin/x`, `/bin/x`, …) named anywhere in `text`.
    fn programs_named_in(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for prefix in ["/usr/sbin/", "/usr/bin/", "/sbin/", "/bin/"] {
            let mut rest = text;
            while let Some(at) = rest.find(prefix) {
                let inside_longer_path = rest[..at]
                    .chars()
                    .last()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '/');
                rest = &rest[at + prefix.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "._+-".contains(*c))
                    .collect();
                if !name.is_empty() && !inside_longer_path {
                    found.push(format!("{prefix}{name}"));
                }
            }
        }
        found
    }

    #[test]
    fn finds_program_paths_in_sources() {
        assert_eq!(
            programs_named_in(r#"Command::new("/usr/bin/head"); "exec /bin/true" x/usr/bin/no"#),
            ["/usr/bin/head", "/bin/true"]
        );
    }

    #[test]
    fn tests_name_no_program_the_vm_lacks() {
        let in_vm: Vec<PathBuf> = HOST_PROGRAMS
            .iter()
            .filter_map(|p| fs::canonicalize(p).ok())
            .collect();
        let dir = cmd::workspace_root().join("tests/tests");
        let mut missing = Vec::new();
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if crate::vm::HOST_ONLY_TESTS.contains(&stem) {
                continue;
            }
            let text = fs::read_to_string(&path).unwrap();
            for program in programs_named_in(&text) {
                // Only programs this host has can be copied (and run on the host tier).
                let Ok(real) = fs::canonicalize(&program) else {
                    continue;
                };
                if !in_vm.contains(&real) {
                    missing.push(format!("{program} ({})", path.display()));
                }
            }
        }
        missing.sort();
        missing.dedup();
        assert!(
            missing.is_empty(),
            "tests name programs the VM tier's initramfs lacks; add them to \
             initramfs::HOST_PROGRAMS: {missing:?}"
        );
    }

    fn tempfile_dir(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "xtask-initramfs-{what}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::canonicalize(dir).unwrap()
    }
}
