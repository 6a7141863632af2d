//! Puts the machine back however a benchmark ends: each change a benchmark makes (auditd
//! started, audit rules added, a sysctl set, enforcement pinned, a cgroup made) registers the
//! action that undoes it. The action runs when its guard drops (success or error) or, on
//! SIGINT, SIGTERM or SIGHUP, from a watcher thread that undoes everything pending and exits.

use std::{
    sync::{
        atomic::{AtomicI32, AtomicU64, Ordering},
        Mutex, Once,
    },
    thread,
    time::Duration,
};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

type Action = Box<dyn FnOnce() + Send>;

/// Undo actions not run yet, oldest first.
static PENDING: Mutex<Vec<(u64, Action)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
static SIGNALS: Once = Once::new();

/// An undo action; it runs when this drops, unless [`Undo::disarm`]ed.
pub struct Undo(u64);

impl Undo {
    /// Registers `action` to undo a change just made (or about to be made).
    pub fn register(action: impl FnOnce() + Send + 'static) -> Undo {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        lock().push((id, Box::new(action)));
        Undo(id)
    }

    /// The change was undone another way: forget the action.
    pub fn disarm(self) {
        take(self.0);
        std::mem::forget(self);
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(action) = take(self.0) {
            action();
        }
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<(u64, Action)>> {
    PENDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn take(id: u64) -> Option<Action> {
    let mut pending = lock();
    let index = pending.iter().position(|(i, _)| *i == id)?;
    Some(pending.remove(index).1)
}

/// The signal received, 0 while none.
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: i32) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(signal, Ordering::SeqCst);
}

/// Catches SIGINT, SIGTERM and SIGHUP (child processes get the default handlers back when
/// they exec) and watches for them in a thread of its own: undo everything pending, newest
/// first, and exit with 128 + the signal. Call it once the benchmarks start.
pub fn on_signals_undo_all() {
    SIGNALS.call_once(|| {
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            // SAFETY: the handler only stores to an atomic.
            if let Err(e) = unsafe { sigaction(signal, &action) } {
                eprintln!("bench: cannot catch {signal} ({e}); it will not clean up");
            }
        }
        thread::spawn(|| loop {
            thread::sleep(Duration::from_millis(50));
            let signal = SIGNALLED.load(Ordering::SeqCst);
            if signal == 0 {
                continue;
            }
            eprintln!("bench: signal {signal}: restoring the machine before exiting");
            let actions: Vec<(u64, Action)> = std::mem::take(&mut *lock());
            for (_, action) in actions.into_iter().rev() {
                action();
            }
            std::process::exit(128 + signal);
        });
    });
}
