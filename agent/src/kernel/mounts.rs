//! Pseudo-filesystems the agent needs, found in `/proc/self/mountinfo` (never hard-coded).

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::mount::{mount, MsFlags};

/// Where bpffs is expected.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Where tracefs is expected.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Where securityfs is expected (the active LSM list is read there).
pub const SECURITYFS: &str = "/sys/kernel/security";

/// Failure to find or mount a pseudo-filesystem.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// `/proc/self/mountinfo` could not be read.
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
    /// No cgroup v2 hierarchy is mounted.
    #[error("no cgroup2 filesystem is mounted (needed to watch connect()); mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup`")]
    NoCgroup2,
    /// Mounting failed.
    #[error("mounting {fstype} at {target}: {source} (mounting needs CAP_SYS_ADMIN; or mount it before starting phiguard: `mount -t {fstype} {fstype} {target}`)")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// Why.
        #[source]
        source: nix::Error,
    },
}

/// Mount points of filesystems of type `fstype` listed in mountinfo text.
pub fn mount_points(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // Fields: id parent major:minor root mount-point options [optional…] - fstype source super-options
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == fstype).then(|| PathBuf::from(unescape(point)))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Mount point of the first mount of the whole filesystem on device `dev` (kernel encoding,
/// `MAJOR << 20 | MINOR`) listed in mountinfo text: a mount whose root is `/`.
pub fn mount_point_of_dev(mountinfo: &str, dev: u32) -> Option<PathBuf> {
    let wanted = format!("{}:{}", dev >> 20, dev & 0xfffff);
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let numbers = fields.nth(2)?;
        let root = fields.next()?;
        let point = fields.next()?;
        (numbers == wanted && root == "/").then(|| PathBuf::from(unescape(point)))
    })
}

/// Mount point of every mount, by mount id (the first mountinfo field, `mount.mnt_id`).
pub fn mount_points_by_id(mountinfo: &str) -> HashMap<u32, PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let id = fields.next()?.parse().ok()?;
            Some((id, PathBuf::from(unescape(fields.nth(3)?))))
        })
        .collect()
}

/// Maps mount ids to mount points, re-reading mountinfo (at most once a second) when an id is
/// unknown.
#[derive(Debug, Default)]
pub struct MountTable {
    by_id: HashMap<u32, PathBuf>,
    read_at: Option<Instant>,
}

impl MountTable {
    /// Where mount `id` is mounted, in the agent's mount namespace.
    pub fn mount_point(&mut self, id: u32) -> Option<&Path> {
        let stale = self
            .read_at
            .is_none_or(|at| at.elapsed() > Duration::from_secs(1));
        if !self.by_id.contains_key(&id) && stale {
            if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
                self.by_id = mount_points_by_id(&info);
            }
            self.read_at = Some(Instant::now());
        }
        self.by_id.get(&id).map(PathBuf::as_path)
    }
}

fn read_mountinfo() -> Result<String, MountError> {
    fs::read_to_string("/proc/self/mountinfo").map_err(MountError::MountInfo)
}

/// The cgroup v2 root (`/sys/fs/cgroup` on most servers, `/sys/fs/cgroup/unified` on hybrid
/// layouts).
pub fn cgroup2_root() -> Result<PathBuf, MountError> {
    mount_points(&read_mountinfo()?, "cgroup2")
        .into_iter()
        .min_by_key(|p| p.as_os_str().len())
        .ok_or(MountError::NoCgroup2)
}

/// Mounts bpffs and tracefs where they are missing. Returns what it mounted.
pub fn ensure_mounted() -> Result<Vec<&'static str>, MountError> {
    let info = read_mountinfo()?;
    let mut mounted = Vec::new();
    for (fstype, target) in [("bpf", BPFFS), ("tracefs", TRACEFS)] {
        if mount_points(&info, fstype)
            .iter()
            .any(|p| p == Path::new(target))
        {
            continue;
        }
        mount(
            Some(fstype),
            target,
            Some(fstype),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| MountError::Mount {
            fstype: if fstype == "bpf" { "bpf" } else { "tracefs" },
            target,
            source,
        })?;
        mounted.push(target);
    }
    Ok(mounted)
}

/// Mounts securityfs where it is missing, so the active LSM list can be read. Not fatal: an
/// agent that cannot read the list does not assume BPF LSM runs. Returns whether it mounted.
pub fn ensure_securityfs() -> Result<bool, MountError> {
    let info = read_mountinfo()?;
    if mount_points(&info, "securityfs")
        .iter()
        .any(|p| p == Path::new(SECURITYFS))
    {
        return Ok(false);
    }
    mount(
        Some("securityfs"),
        SECURITYFS,
        Some("securityfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| MountError::Mount {
        fstype: "securityfs",
        target: SECURITYFS,
        source,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_found_at_the_mount_of_its_whole_filesystem() {
        let info = "22 1 259:1 / / rw - ext4 /dev/root rw\n\
                    30 22 0:31 /sub /bind rw - tmpfs tmpfs rw\n\
                    31 22 0:31 / /tmp rw - tmpfs tmpfs rw\n";
        assert_eq!(mount_point_of_dev(info, 31), Some(PathBuf::from("/tmp")));
        assert_eq!(
            mount_point_of_dev(info, (259 << 20) | 1),
            Some(PathBuf::from("/"))
        );
        assert_eq!(mount_point_of_dev(info, 32), None);
    }

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
31 22 0:27 / /sys/fs/bpf rw,relatime - bpf bpf rw
32 22 0:28 / /mnt/with\\040space rw - tmpfs none rw
";

    #[test]
    fn finds_cgroup2_and_bpffs() {
        assert_eq!(
            mount_points(SAMPLE, "cgroup2"),
            vec![PathBuf::from("/sys/fs/cgroup/unified")]
        );
        assert_eq!(
            mount_points(SAMPLE, "bpf"),
            vec![PathBuf::from("/sys/fs/bpf")]
        );
        assert!(mount_points(SAMPLE, "tracefs").is_empty());
    }

    #[test]
    fn mount_points_by_their_id() {
        let ids = mount_points_by_id(SAMPLE);
        assert_eq!(ids.get(&30), Some(&PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(ids.get(&32), Some(&PathBuf::from("/mnt/with space")));
        let mut table = MountTable::default();
        let root_id: u32 = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .find(|l| l.split(' ').nth(4) == Some("/"))
            .and_then(|l| l.split(' ').next()?.parse().ok())
            .unwrap();
        assert_eq!(table.mount_point(root_id), Some(Path::new("/")));
        assert_eq!(table.mount_point(u32::MAX), None);
    }

    #[test]
    fn unescapes_spaces() {
        assert_eq!(
            mount_points(SAMPLE, "tmpfs"),
            vec![PathBuf::from("/mnt/with space")]
        );
    }
}
