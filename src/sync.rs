//! Atomics and queues used by the lock-free protocols (replay window, lifetime leases, SA
//! slots, capture rings).
//!
//! Normally these are `std`'s. With the `loom` feature they are loom's, so the model tests
//! (`cargo test --release --features loom --lib loom_`) explore every interleaving of the
//! protocols' atomic operations. Only the `loom_*` tests may run in that configuration: loom
//! atomics panic outside `loom::model`.

#[cfg(feature = "loom")]
pub use loom::sync::atomic;
#[cfg(feature = "loom")]
pub use loom::thread;

#[cfg(not(feature = "loom"))]
pub use std::sync::atomic;
#[cfg(not(feature = "loom"))]
pub use std::thread;

/// The bounded lock-free queue (the capture rings). Under loom, crossbeam's `ArrayQueue` (not
/// loom-aware) is replaced by [`loom_queue::ArrayQueue`], with the same API and capacity
/// semantics, so the models explore espd's own flags and hand-offs around it.
#[cfg(not(feature = "loom"))]
pub use crossbeam_queue::ArrayQueue;
#[cfg(feature = "loom")]
pub use loom_queue::ArrayQueue;

#[cfg(feature = "loom")]
mod loom_queue {
    use std::collections::VecDeque;

    /// A `loom::sync::Mutex<VecDeque>` with `crossbeam_queue::ArrayQueue`'s `new`/`push`/
    /// `pop`/`len`: each operation is one atomic step, as crossbeam's are linearizable.
    pub struct ArrayQueue<T> {
        q: loom::sync::Mutex<VecDeque<T>>,
        cap: usize,
    }

    impl<T> ArrayQueue<T> {
        pub fn new(cap: usize) -> Self {
            assert!(cap > 0, "capacity must be non-zero");
            Self {
                q: loom::sync::Mutex::new(VecDeque::with_capacity(cap)),
                cap,
            }
        }
        /// `Err(value)` when full.
        pub fn push(&self, value: T) -> Result<(), T> {
            let mut q = self.q.lock().unwrap();
            if q.len() == self.cap {
                return Err(value);
            }
            q.push_back(value);
            Ok(())
        }
        pub fn pop(&self) -> Option<T> {
            self.q.lock().unwrap().pop_front()
        }
        pub fn len(&self) -> usize {
            self.q.lock().unwrap().len()
        }
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }
    }
}

/// Runs `f` in every interleaving loom explores with up to `preemptions` preemptions, and
/// prints how many it ran (the models of `sa/table.rs` and `datapath/capture.rs`).
#[cfg(all(test, feature = "loom"))]
pub fn loom_model(preemptions: usize, f: impl Fn() + Send + Sync + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = runs.clone();
    b.check(move || {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    println!(
        "{} executions",
        runs.load(std::sync::atomic::Ordering::Relaxed)
    );
}
