//! Which enforcement layer really runs on this kernel, decided once at start-up and named
//! everywhere a layer is named (start line, `policy check`, status, metrics, decision events).
//!
//! A kernel built with BPF LSM whose active LSM list does not name `bpf` (Ubuntu's default) loads
//! and attaches LSM programs that never run: only `/sys/kernel/security/lsm` tells. So the LSM
//! layer is chosen only when `bpf` is in that list *and* an LSM program loads. Without it, file
//! opens go to fanotify permission events when the kernel has them
//! (`CONFIG_FANOTIFY_ACCESS_PERMISSIONS`), and to the SIGKILL tracepoints only when it has
//! neither.

use std::{fs, io};

/// Where securityfs lists the active LSMs.
pub const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// How opens of protected files are decided and refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileLayer {
    /// BPF LSM `file_open`: `EPERM`, before a descriptor exists.
    Lsm,
    /// fanotify `FAN_OPEN_PERM`, answered by the agent: `EPERM`, before a descriptor exists.
    Fanotify,
    /// The open-exit tracepoints kill the opener (`bpf_send_signal(SIGKILL)`).
    Signal,
}

impl FileLayer {
    /// Its name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            FileLayer::Lsm => "lsm",
            FileLayer::Fanotify => "fanotify",
            FileLayer::Signal => "signal",
        }
    }
}

/// What the kernel offers for enforcement, read before anything is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLayers {
    /// The active LSM list (`/sys/kernel/security/lsm`), `None` when it cannot be read.
    pub lsm_list: Option<String>,
    /// Whether a `FAN_CLASS_CONTENT` fanotify group (permission events) can be created.
    pub fanotify: bool,
}

impl KernelLayers {
    /// Reads the active LSM list and probes fanotify permission events.
    pub fn detect() -> KernelLayers {
        KernelLayers {
            lsm_list: fs::read_to_string(LSM_LIST).ok(),
            fanotify: fanotify_permission_events(),
        }
    }

    /// Whether `bpf` is an active LSM: only then can BPF LSM programs run.
    pub fn bpf_lsm_active(&self) -> bool {
        self.lsm_list.as_deref().is_some_and(lsm_list_has_bpf)
    }

    /// Why the LSM programs are not attached, when `bpf` is not active.
    pub fn lsm_inactive_reason(&self) -> String {
        match &self.lsm_list {
            Some(list) => format!(
                "BPF LSM is not active on this kernel ({LSM_LIST}: {}); LSM programs would attach and never run",
                list.trim()
            ),
            None => format!("{LSM_LIST} cannot be read (securityfs not mounted?): BPF LSM is not assumed active"),
        }
    }

    /// Why the LSM programs are not attached when `bpf` is listed active but a BPF LSM
    /// program does not load (a kernel built without `CONFIG_BPF_LSM` that lists it anyway).
    pub fn lsm_refused_reason(&self) -> String {
        format!(
            "{LSM_LIST} lists bpf ({}), but this kernel refuses BPF LSM programs",
            self.lsm_list.as_deref().unwrap_or_default().trim()
        )
    }

    /// The layer file opens will get, decided before the programs load: BPF LSM when `bpf` is
    /// an active LSM and `lsm_loads` (an LSM program passes the verifier), else fanotify where
    /// it works, else SIGKILL.
    pub fn plan(&self, lsm_loads: impl FnOnce() -> bool) -> FileLayer {
        if self.bpf_lsm_active() && lsm_loads() {
            FileLayer::Lsm
        } else if self.fanotify {
            FileLayer::Fanotify
        } else {
            FileLayer::Signal
        }
    }

    /// The layer file opens get, given whether the BPF LSM programs attached.
    pub fn file_layer(&self, lsm_attached: bool) -> FileLayer {
        if lsm_attached {
            FileLayer::Lsm
        } else if self.fanotify {
            FileLayer::Fanotify
        } else {
            FileLayer::Signal
        }
    }
}

/// Whether a comma-separated LSM list names `bpf`.
pub fn lsm_list_has_bpf(list: &str) -> bool {
    list.trim().split(',').any(|name| name.trim() == "bpf")
}

/// Whether this kernel lets this process create a fanotify group for permission events.
pub fn fanotify_permission_events() -> bool {
    // SAFETY: plain system call; the descriptor is closed at once.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint,
        )
    };
    if fd < 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "fanotify permission events unavailable");
        return false;
    }
    // SAFETY: `fd` is ours and open.
    unsafe { libc::close(fd) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_must_be_named_in_the_active_list() {
        assert!(lsm_list_has_bpf(
            "lockdown,capability,landlock,yama,apparmor,bpf"
        ));
        assert!(lsm_list_has_bpf("bpf\n"));
        assert!(!lsm_list_has_bpf(
            "lockdown,capability,landlock,yama,apparmor"
        ));
        assert!(!lsm_list_has_bpf("bpfx,xbpf"));
        let layers = KernelLayers {
            lsm_list: Some("capability,yama".into()),
            fanotify: true,
        };
        assert!(!layers.bpf_lsm_active());
        assert_eq!(layers.file_layer(false), FileLayer::Fanotify);
        assert_eq!(layers.file_layer(true), FileLayer::Lsm);
        let none = KernelLayers {
            lsm_list: None,
            fanotify: false,
        };
        assert!(!none.bpf_lsm_active());
        assert_eq!(none.file_layer(false), FileLayer::Signal);
    }
}
