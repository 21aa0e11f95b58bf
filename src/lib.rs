//! espd: a userspace IPsec ESP (AES-GCM) dataplane.
//!
//! Module map and contracts:
//! * [`wire`], [`esp`], [`sa`], [`datapath::pipeline`]: the pure packet path. No syscalls, no
//!   locks on the worker side, no allocation per packet, no clock reads: callers pass `now`
//!   and buffers. Nothing in them panics on any input.
//! * [`sa::table`]: lock-free for readers (crossbeam-epoch); writers (the control side)
//!   serialize on a mutex no worker ever takes.
//! * [`config`], [`pcap`]: setup and offline I/O; errors name the file, key and reason.
//! * [`control`], [`daemon`], [`ctl`], [`offline`]: the control thread, `espd run` (its named
//!   start-up steps), the control socket client, `espd check-config` / `espd pcap`.
//! * [`ike`]: the built-in IKEv1 (sans-I/O wire, crypto and state machine; a UDP driver thread
//!   that calls the control thread's typed API).
//! * [`rig`]: the test bench (veth rig, traffic tools, keyer, `espd demo`, `espd bench`). It
//!   drives the product from outside; no product module imports from it (tests/layout.rs).
//!   Behind the default-on cargo feature `rig`; the production build leaves it out.
//! * Each subcommand's arguments live with the module that runs it (`daemon::cli`, `ctl`,
//!   `offline`, the rig's `cli`); `main.rs` only dispatches.
//! * [`logging`]: where log lines go (plain/JSON on stderr through a non-blocking writer, or
//!   the systemd journal).
//! * `unsafe` is denied everywhere except [`sys`] (epoch-protected pointers).
#![deny(unsafe_code)]

pub mod codes;
pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod datapath;
pub mod esp;
pub mod fuzzing;
pub mod ike;
pub mod logging;
pub mod offline;
pub mod pcap;
#[cfg(feature = "rig")]
pub mod rig;
pub mod sa;
pub mod sync;
pub mod sys;
pub mod wire;

/// Monotonic nanoseconds since the first call (the pipeline's clock; read once per batch).
pub fn now_ns() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}
