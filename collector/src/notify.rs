//! What the collector tells its service manager (systemd, `Type=notify`; every call is a
//! no-op without `$NOTIFY_SOCKET`): ready, in which state (`STATUS=`), and that it is alive
//! (`WATCHDOG=1`) when the unit sets `WatchdogSec=`.
//!
//! A fleet store writer's standby reports ready as soon as it waits for the lease, with a
//! status saying so: it is up and doing its job (standing by), and a unit's start timeout
//! must not kill it however long the writer lives. Once it holds the lease it reports its new
//! status, and ready again once it listens.

use std::time::Duration;

/// Ready, with `status` as the unit's status line.
pub fn ready(status: &str) {
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&one_line(status)),
    ]);
}

/// A new status line, readiness unchanged.
pub fn status(status: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&one_line(status))]);
}

/// `text` as one line of at most 200 characters: a status may quote what another process
/// wrote (the lease holder's name), and a newline in it would add assignments of its own.
pub(crate) fn one_line(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// When the unit sets `WatchdogSec=` (`$WATCHDOG_USEC`, for this process): pings the
/// watchdog at half its period for as long as the runtime runs its tasks — standing by,
/// taking over and serving alike. Nothing otherwise.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()?;
    let every = (period / 2).max(Duration::from_millis(100));
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_stays_one_line() {
        assert_eq!(one_line("held by a\nREADY=1"), "held by a?READY=1");
        assert_eq!(one_line(&"x".repeat(500)).len(), 200);
    }
}
