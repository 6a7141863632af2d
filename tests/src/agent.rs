//! A `phiguard run` process for the tests that drive the agent directly: started with its
//! JSON events on stdout and its JSON log on stderr, ready once it says events are flowing.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use phiguard_proto::v1;

/// The agent binary under test (`PHIGUARD_BIN`, set by `cargo xtask test`).
pub fn binary() -> String {
    std::env::var("PHIGUARD_BIN").unwrap_or_else(|_| {
        panic!("PHIGUARD_BIN is not set: run the host tier through `cargo xtask test`")
    })
}

/// A running `phiguard run`; SIGKILLed on drop if still running.
pub struct AgentProcess {
    child: Child,
    stdout: BufReader<ChildStdout>,
    /// Its stderr up to the start-up line.
    pub startup: String,
}

impl AgentProcess {
    /// Starts `phiguard run --log-format json ARGS…` and waits (at most
    /// [`crate::STARTUP_LIMIT`]) until it says events are flowing; its later log lines are
    /// echoed to the test's stderr, prefixed `agent: `.
    pub fn start<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> AgentProcess {
        let mut child = Command::new(binary())
            .args(["run", "--log-format", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut startup = String::new();
        let deadline = Instant::now() + crate::STARTUP_LIMIT;
        while !startup.contains("events are flowing") {
            let mut line = String::new();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "agent exited before it was ready: {startup}"
            );
            startup.push_str(&line);
            assert!(
                Instant::now() < deadline,
                "not ready within {:?}: {startup}",
                crate::STARTUP_LIMIT
            );
        }
        // Keep draining stderr so the agent never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
            }
        });
        AgentProcess {
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
            startup,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Whether its refusals are `EPERM` (BPF LSM, or the fanotify layer) rather than SIGKILL.
    pub fn eperm(&self) -> bool {
        self.startup.contains("\"lsm\":true") || self.startup.contains("\"files\":\"fanotify\"")
    }

    /// Reads events until one matches `pred`; the agent is SIGKILLed after two minutes, so a
    /// missing event fails the test instead of hanging it.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&v1::Event) -> bool) -> v1::Event {
        let _watchdog = self.kill_after(Duration::from_secs(120));
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "agent output ended without {what}"
            );
            let event: v1::Event = serde_json::from_str(&line).expect("a JSON event per line");
            if pred(&event) {
                return event;
            }
        }
    }

    /// SIGKILLs the agent after `limit` unless the returned guard is dropped first: a test
    /// reading its output never waits forever for an event that does not come.
    pub fn kill_after(&self, limit: Duration) -> Watchdog {
        let pid = self.pid();
        let (done, wait) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if wait.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
        });
        Watchdog { _done: done }
    }

    /// Sends `signal` and waits for the agent to end, reading what it still writes (a clean
    /// stop flushes its last events: with nobody reading, it would block on the full pipe).
    pub fn kill(&mut self, signal: Signal) {
        let _ = nix::sys::signal::kill(self.pid(), signal);
        let mut rest = String::new();
        while self.stdout.read_line(&mut rest).is_ok_and(|n| n > 0) {
            rest.clear();
        }
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Disarms [`AgentProcess::kill_after`] when dropped.
pub struct Watchdog {
    _done: mpsc::Sender<()>,
}
