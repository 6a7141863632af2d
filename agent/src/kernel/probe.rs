//! Start-up checks: can this process, on this kernel, run the programs at all? Each failure
//! says what is missing and what to do.

use std::{fs, path::Path};

/// Capabilities the agent cannot run without: load programs and maps, tracing programs that
/// read kernel memory (and their tracepoints), cgroup network programs. CAP_SYS_ADMIN is
/// needed too where `perf_event_paranoid` is above 2 (see [`CAP_SYS_ADMIN`]) and to mount
/// bpffs or tracefs where they are missing (that mount says so when it fails);
/// CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH make enrichment and policy compilation complete for
/// other users' processes and files (see packaging/phiguard.service).
const NEEDED_CAPS: &[(u32, &str)] = &[(39, "CAP_BPF"), (38, "CAP_PERFMON"), (12, "CAP_NET_ADMIN")];

/// CAP_SYS_ADMIN's bit. Debian and Ubuntu kernels carry a patch that, with
/// `kernel.perf_event_paranoid` above 2 (their default is 3), refuses `perf_event_open` — how
/// tracepoint programs attach — to any process without CAP_SYS_ADMIN, CAP_PERFMON or not.
const CAP_SYS_ADMIN: u32 = 21;

/// Where the kernel's perf_event_paranoid level is.
const PERF_EVENT_PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";

/// Missing capabilities for a `CapEff` hex mask and a `perf_event_paranoid` level.
pub fn missing_caps_for(cap_eff_hex: &str, perf_event_paranoid: Option<i32>) -> Vec<String> {
    let mask = u64::from_str_radix(cap_eff_hex.trim(), 16).unwrap_or(0);
    let mut missing: Vec<String> = missing_caps(cap_eff_hex)
        .into_iter()
        .map(str::to_owned)
        .collect();
    if let Some(level) = perf_event_paranoid.filter(|&l| l > 2) {
        if mask & (1 << CAP_SYS_ADMIN) == 0 {
            missing.push(format!("CAP_SYS_ADMIN (kernel.perf_event_paranoid is {level}: this kernel attaches tracepoints only for CAP_SYS_ADMIN)"));
        }
    }
    missing
}

/// Oldest kernel with everything the programs use (BPF ring buffer: 5.8).
pub const MIN_KERNEL: (u32, u32) = (5, 8);

/// Why the agent cannot start here.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Missing privileges.
    #[error("phiguard loads eBPF programs and lacks {missing}: run it as root (sudo) or grant those capabilities")]
    NotPrivileged {
        /// The capability names missing.
        missing: String,
    },
    /// Kernel too old.
    #[error("kernel {release} is too old: phiguard needs Linux {}.{} or newer (BPF ring buffer)", MIN_KERNEL.0, MIN_KERNEL.1)]
    KernelTooOld {
        /// `uname -r`.
        release: String,
    },
    /// No BTF.
    #[error("{0} is missing: the kernel was built without BTF (CONFIG_DEBUG_INFO_BTF=y is needed to find struct offsets)")]
    NoBtf(String),
    /// BPF syscall disabled.
    #[error("the kernel has no bpf() syscall enabled (CONFIG_BPF_SYSCALL) or it is blocked: {0}")]
    NoBpf(String),
}

/// Parses a kernel release such as `6.18.44-fc-v669` into (major, minor).
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Capability names from `NEEDED_CAPS` absent in a `CapEff` hex mask.
pub fn missing_caps(cap_eff_hex: &str) -> Vec<&'static str> {
    let mask = u64::from_str_radix(cap_eff_hex.trim(), 16).unwrap_or(0);
    NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| mask & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// Runs every check against the running system.
pub fn check(btf_path: &Path) -> Result<(), ProbeError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap_or("0");
    let paranoid = fs::read_to_string(PERF_EVENT_PARANOID)
        .ok()
        .and_then(|l| l.trim().parse().ok());
    let missing = missing_caps_for(cap_eff, paranoid);
    if !missing.is_empty() {
        return Err(ProbeError::NotPrivileged {
            missing: missing.join(", "),
        });
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    match parse_release(&release) {
        Some(version) if version >= MIN_KERNEL => {}
        _ => return Err(ProbeError::KernelTooOld { release }),
    }
    if !btf_path.exists() {
        return Err(ProbeError::NoBtf(btf_path.display().to_string()));
    }
    if !Path::new("/proc/sys/kernel/unprivileged_bpf_disabled").exists() {
        return Err(ProbeError::NoBpf(
            "/proc/sys/kernel/unprivileged_bpf_disabled is absent".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert!(parse_release("5.4.0").unwrap() < MIN_KERNEL);
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn perf_event_paranoid_above_2_needs_cap_sys_admin() {
        let all_but_sys_admin = format!("{:x}", 0x1ff_ffff_ffffu64 & !(1 << 21));
        assert!(missing_caps_for(&all_but_sys_admin, Some(2)).is_empty());
        assert!(missing_caps_for(&all_but_sys_admin, None).is_empty());
        let missing = missing_caps_for(&all_but_sys_admin, Some(3));
        assert_eq!(missing.len(), 1);
        assert!(missing[0].starts_with("CAP_SYS_ADMIN (kernel.perf_event_paranoid is 3"));
        assert!(missing_caps_for("000001ffffffffff", Some(3)).is_empty());
    }

    #[test]
    fn capabilities() {
        assert!(missing_caps("000001ffffffffff").is_empty());
        assert_eq!(missing_caps("0000000000000000").len(), NEEDED_CAPS.len());
        // Everything but CAP_BPF.
        assert_eq!(
            missing_caps(&format!("{:x}", 0x1ff_ffff_ffffu64 & !(1 << 39))),
            vec!["CAP_BPF"]
        );
    }
}
