//! A thread that reads one fanotify group until it is told to stop: the poll loop the response
//! loop and the change reporter share, and the stop signal (a flag and a pipe) that ends it.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

/// Bytes read from a group at once.
const BUFFER: usize = 64 * 1024;

/// The owner's side of a reading thread: dropping it stops the thread and waits for it.
#[derive(Debug)]
pub(super) struct Worker {
    stop: Arc<AtomicBool>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

/// The thread's side: whether it is told to stop, and the pipe that wakes its poll then.
#[derive(Debug)]
pub(super) struct Stop {
    flag: Arc<AtomicBool>,
    wake: OwnedFd,
}

/// What a reading thread does with the events still queued when it is told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OnStop {
    /// Leaves them (closing the group answers them).
    Leave,
    /// Reads and handles them first.
    Drain,
}

/// How a wait for a group's events ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// Nothing within a second.
    Timeout,
    /// Told to stop (the group may have events too).
    Woken,
    /// The group has events.
    Ready,
}

impl Worker {
    /// Starts thread `name` running `body`, which gets the thread's [`Stop`].
    pub(super) fn spawn(
        name: &str,
        body: impl FnOnce(Stop) + Send + 'static,
    ) -> io::Result<Worker> {
        let (wake_read, wake) = nix::unistd::pipe()?;
        let stop = Arc::new(AtomicBool::new(false));
        let signal = Stop {
            flag: Arc::clone(&stop),
            wake: wake_read,
        };
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(signal))?;
        Ok(Worker {
            stop,
            wake,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    /// Tells the thread to stop, wakes its poll and waits for it to end.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = nix::unistd::write(&self.wake, &[1]);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Stop {
    /// Whether the thread is told to stop.
    fn stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Waits up to a second for events on `group` or the stop signal.
    fn wait(&self, group: BorrowedFd<'_>) -> Wait {
        let mut fds = [
            libc::pollfd {
                fd: group.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
        if ready <= 0 {
            Wait::Timeout
        } else if fds[1].revents != 0 {
            Wait::Woken
        } else {
            Wait::Ready
        }
    }

    /// Polls `group` and hands every event `read` takes from it to `handle`, until told to
    /// stop (then, with [`OnStop::Drain`], once the queue is empty). `read` fills the buffer
    /// and returns the events (none: nothing was pending); a failed read is logged as
    /// "reading `what`" and retried after 10 ms.
    pub(super) fn serve<E>(
        &self,
        group: BorrowedFd<'_>,
        on_stop: OnStop,
        what: &str,
        mut read: impl FnMut(&mut [u8]) -> io::Result<Vec<E>>,
        mut handle: impl FnMut(E),
    ) {
        let mut buf = vec![0u8; BUFFER];
        loop {
            let stopping = self.stopped();
            if stopping && on_stop == OnStop::Leave {
                return;
            }
            if !stopping {
                match self.wait(group) {
                    Wait::Timeout => continue,
                    Wait::Woken if on_stop == OnStop::Leave => continue,
                    Wait::Woken | Wait::Ready => {}
                }
            }
            match read(&mut buf) {
                Ok(events) if !events.is_empty() => events.into_iter().for_each(&mut handle),
                result => {
                    if on_stop == OnStop::Drain && (stopping || self.stopped()) {
                        return;
                    }
                    if let Err(e) = result {
                        tracing::error!("reading {what}: {e}");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{os::fd::AsFd as _, sync::mpsc};

    use super::*;

    /// Starts a worker that, once it is (almost certainly) told to stop, serves the read end
    /// of a non-blocking pipe holding `b"queued"`; returns what it handled.
    fn served_after_stop(on_stop: OnStop) -> Vec<u8> {
        let (read_end, write_end) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
                .unwrap();
        nix::unistd::write(&write_end, b"queued").unwrap();
        let (tx, rx) = mpsc::channel();
        let worker = Worker::spawn("phiguard-test", move |stop| {
            std::thread::sleep(Duration::from_millis(500));
            stop.serve(
                read_end.as_fd(),
                on_stop,
                "a test pipe",
                |buf| super::super::sys::read(read_end.as_fd(), buf).map(|n| buf[..n].to_vec()),
                |byte| tx.send(byte).unwrap(),
            );
        })
        .unwrap();
        drop(worker);
        rx.try_iter().collect()
    }

    #[test]
    fn a_draining_worker_handles_what_is_queued_when_stopped() {
        assert_eq!(served_after_stop(OnStop::Drain), b"queued");
    }

    #[test]
    fn a_leaving_worker_stops_without_reading() {
        assert!(served_after_stop(OnStop::Leave).is_empty());
    }
}
