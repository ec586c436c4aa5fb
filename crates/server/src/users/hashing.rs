//! The password-hashing pool. argon2id at OWASP parameters costs ~19 MiB and tens of milliseconds per
//! hash, so hashes run on a fixed set of threads (one per core by default), never on the async runtime.
//! A login flood queues here; past `queue_limit` waiting jobs, callers get [`Overloaded`] at once (503)
//! instead of memory growing without bound. Fixed threads (rather than `spawn_blocking`) also keep the
//! allocator's per-thread arenas, and so the RSS, bounded. Each thread reuses one argon2 working buffer
//! while it is busy and gives it back after `IDLE_RELEASE` without work, so an idle server stays small.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use portcullis_core::passwords::{Hasher, PasswordHashing, Scratch};

type Job = Box<dyn FnOnce(&mut Hasher<'_>) + Send>;

/// A hashing thread frees its ~19 MiB working buffer after this long without a job.
const IDLE_RELEASE: Duration = Duration::from_secs(5);

/// The queue is full.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("password hashing queue is full")]
pub struct Overloaded;

pub struct HashPool {
    /// One queue per thread, dealt round-robin (argon2 jobs all cost the same), so that each thread
    /// can notice on its own that it has been idle and free its buffer.
    senders: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
    waiting: Arc<AtomicUsize>,
    queue_limit: usize,
    threads: usize,
}

impl HashPool {
    pub fn new(
        hashing: PasswordHashing,
        threads: usize,
        queue_limit: usize,
    ) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let mut senders = Vec::with_capacity(threads);
        for i in 0..threads {
            let (sender, receiver) = mpsc::channel::<Job>();
            let hashing = hashing.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    let mut scratch = Scratch::new();
                    loop {
                        match receiver.recv_timeout(IDLE_RELEASE) {
                            Ok(job) => job(&mut hashing.with_scratch(&mut scratch)),
                            Err(mpsc::RecvTimeoutError::Timeout) => scratch.release(),
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                })?;
            senders.push(sender);
        }
        Ok(Self {
            senders,
            next: AtomicUsize::new(0),
            waiting: Arc::new(AtomicUsize::new(0)),
            queue_limit,
            threads,
        })
    }

    /// Jobs queued or running.
    pub fn in_flight(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Runs `f` on a hashing thread and waits for its result.
    pub async fn run<R, F>(&self, f: F) -> Result<R, Overloaded>
    where
        R: Send + 'static,
        F: FnOnce(&mut Hasher<'_>) -> R + Send + 'static,
    {
        let previous = self.waiting.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(Arc::clone(&self.waiting));
        if previous >= self.queue_limit + self.threads {
            return Err(Overloaded);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |h| {
            let _guard = guard;
            let _ = tx.send(f(h));
        });
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        let sent = self.senders.get(slot).is_some_and(|s| s.send(job).is_ok());
        if !sent {
            return Err(Overloaded);
        }
        rx.await.map_err(|_| Overloaded)
    }
}

/// Decrements the in-flight count when a job finishes or is dropped unrun.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
