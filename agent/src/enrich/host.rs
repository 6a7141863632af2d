//! The host an event happened on, and the clock that turns kernel time into wall time.

use std::fs;

use nix::time::{clock_gettime, ClockId};

/// Identity of this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// Hostname (configured override, else the system's).
    pub hostname: String,
    /// `/etc/machine-id` (empty when absent or not 32 lowercase hex digits).
    pub machine_id: String,
}

impl HostInfo {
    /// Reads the system's identity; `hostname_override` wins when not empty.
    pub fn detect(hostname_override: &str) -> HostInfo {
        let hostname = if hostname_override.is_empty() {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            hostname_override.to_owned()
        };
        let machine_id = fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let machine_id = if phiguard_proto::valid_machine_id(&machine_id) {
            machine_id
        } else {
            tracing::warn!(
                file = "/etc/machine-id",
                "not a machine id (32 lowercase hex digits): events carry none"
            );
            String::new()
        };
        HostInfo {
            hostname,
            machine_id,
        }
    }
}

/// Converts `CLOCK_BOOTTIME` nanoseconds (what the programs stamp) to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    /// `CLOCK_REALTIME - CLOCK_BOOTTIME`, in ns.
    realtime_minus_boot_ns: i128,
}

fn now_ns(clock: ClockId) -> i128 {
    clock_gettime(clock)
        .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
        .unwrap_or(0)
}

impl BootClock {
    /// Measures the offset now. Call again to follow wall-clock adjustments.
    pub fn measure() -> BootClock {
        let boot = now_ns(ClockId::CLOCK_BOOTTIME);
        let real = now_ns(ClockId::CLOCK_REALTIME);
        BootClock {
            realtime_minus_boot_ns: real - boot,
        }
    }

    /// Unix time (seconds, nanoseconds) of a boot-time stamp.
    pub fn to_unix(self, boot_ns: u64) -> (i64, i32) {
        let unix = boot_ns as i128 + self.realtime_minus_boot_ns;
        (
            unix.div_euclid(1_000_000_000) as i64,
            unix.rem_euclid(1_000_000_000) as i32,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_maps_to_now() {
        let clock = BootClock::measure();
        let (secs, _) = clock.to_unix(now_ns(ClockId::CLOCK_BOOTTIME) as u64);
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((secs - real).abs() <= 1, "{secs} vs {real}");
    }

    #[test]
    fn override_wins() {
        assert_eq!(HostInfo::detect("ehr-db-1").hostname, "ehr-db-1");
        assert!(!HostInfo::detect("").hostname.is_empty());
    }
}
