//! Atomics used by the lock-free protocols (replay window, lifetime leases, SA slots).
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
