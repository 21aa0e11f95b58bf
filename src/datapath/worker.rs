//! The per-core worker loop: rx batch from each side → pipeline → tx on the other side, and
//! what the worker does when both rx rings are empty ([`Idle`], `dataplane.idle`).
//!
//! A worker owns one [`XskPair`] (a UMEM and its plain-side and cipher-side sockets) and one
//! [`Pipeline`]. It never blocks on another thread: lifetime events go to a bounded lock-free
//! queue, counters are single-writer atomics, MAC addresses are read from atomics once per
//! pass that received frames.
//!
//! Cost of a pass that finds both rx rings empty: two loads of the rings' producer indices and
//! nothing else (no clock read, no memset, no syscall); completions are reaped only while
//! transmissions are outstanding. A pass that received frames also loads the capture flag
//! (`espd ctl capture`, see `capture.rs`) once, Relaxed; while no capture runs that is all it
//! costs. The clock is read once per pass that received frames and,
//! while spinning, once every [`CLOCK_EVERY`] empty passes to see whether the spin is over. A
//! batch is whatever the ring holds, up to [`BATCH`] per side: one frame at light load, full
//! batches under load. The kernel is kicked only when a ring's need-wakeup flag asks for it.
//! Sleeping is `poll(2)` on both sockets, woken by the kernel when frames arrive (one wake-up
//! per burst, not per packet); the timeout is only there to notice `stop`.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;

use crossbeam_queue::ArrayQueue;

use super::capture::{Capture, Point, Ring};
use super::pipeline::{Dataplane, FrameMut, FramePool, L2, PipelineConfig};
use super::xsk::{Copy, XskError, XskFrame, XskPair};
use super::{Action, CoreStats, Pipeline, SaEvent};
use crate::wire::ethernet::Mac;

pub const BATCH: u32 = 64;
/// Extra frames a batch may emit (fragments of packets fragmented before encapsulation).
pub const EXTRA: usize = 4 * BATCH as usize;
/// Frames per worker UMEM (16 MiB at 4 KiB).
pub const FRAMES: u32 = 4096;

/// MAC addresses shared by the control side with the workers: 48-bit MAC, bit 48 = known.
#[derive(Debug, Default)]
pub struct L2State {
    pub plain_mac: AtomicU64,
    pub plain_next_hop: AtomicU64,
    pub cipher_mac: AtomicU64,
    pub cipher_next_hop: AtomicU64,
}

pub fn pack_mac(m: &Mac) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(m);
    u64::from_le_bytes(b) | 1 << 48
}

pub fn unpack_mac(v: u64) -> Option<Mac> {
    if v & (1 << 48) == 0 {
        return None;
    }
    let b = v.to_le_bytes();
    Some([b[0], b[1], b[2], b[3], b[4], b[5]])
}

impl L2State {
    fn load(&self) -> (L2, L2, bool) {
        let g = |a: &AtomicU64| unpack_mac(a.load(Ordering::Acquire));
        let (pm, pn, cm, cn) = (
            g(&self.plain_mac),
            g(&self.plain_next_hop),
            g(&self.cipher_mac),
            g(&self.cipher_next_hop),
        );
        let known = pm.is_some() && pn.is_some() && cm.is_some() && cn.is_some();
        (
            L2 {
                mac: pm.unwrap_or_default(),
                next_hop: pn.unwrap_or([0xff; 6]),
            },
            L2 {
                mac: cm.unwrap_or_default(),
                next_hop: cn.unwrap_or([0xff; 6]),
            },
            known,
        )
    }
}

/// The worker takes fragments' frames from its UMEM's free list.
impl FramePool<XskFrame> for XskPair {
    #[inline]
    fn take(&mut self) -> Option<XskFrame> {
        self.alloc()
    }
    #[inline]
    fn give(&mut self, f: XskFrame) {
        self.recycle(&f);
    }
}

/// Everything a worker needs; moved into its thread.
pub struct WorkerSpec {
    pub id: usize,
    pub core: Option<usize>,
    pub plain: String,
    pub plain_queue: u32,
    pub cipher: String,
    pub cipher_queue: u32,
    pub copy: Copy,
    pub null_crypto: bool,
    pub dp: Arc<Dataplane>,
    pub stats: Arc<[CoreStats]>,
    pub events: Arc<ArrayQueue<SaEvent>>,
    pub pcfg: PipelineConfig,
    pub l2: Arc<L2State>,
    pub stop: Arc<AtomicBool>,
    pub idle: Idle,
    /// `espd ctl capture`: read once per pass that received frames.
    pub capture: Arc<Capture>,
}

/// What a worker reports once its sockets are bound (it then starts polling).
pub struct Ready {
    pub id: usize,
    /// Duplicates of the sockets' descriptors for the XSKMAP (closed once registered).
    pub plain_fd: std::os::fd::OwnedFd,
    pub cipher_fd: std::os::fd::OwnedFd,
    pub zero_copy: bool,
}

/// What a worker does when both rx rings are empty (`dataplane.idle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleStrategy {
    /// Sleep in `poll(2)` as soon as both rings are empty: the least CPU; each burst of
    /// traffic after a quiet spell pays one wake-up.
    Sleep,
    /// Keep polling the rings from user space for `spin_us` after the last frame, then sleep:
    /// traffic that comes back within `spin_us` (a reply, the next packet of a flow) finds the
    /// worker awake, at the price of up to `spin_us` of CPU after every burst.
    Spin,
    /// As `Spin`, but each empty pass calls `recvfrom(MSG_DONTWAIT)` on both sockets, which
    /// with SO_PREFER_BUSY_POLL / SO_BUSY_POLL (`spin_us`) / SO_BUSY_POLL_BUDGET runs the
    /// queues' NAPI processing in this thread instead of in softirq.
    BusyPoll,
}

/// The idle strategy, its spin time and wake-up coalescing, validated (`dataplane.idle`,
/// `dataplane.spin_us`, `dataplane.coalesce_us`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idle {
    pub strategy: IdleStrategy,
    /// Spin (or busy-poll) time after the last frame before sleeping; 0 with `Sleep`.
    pub spin_us: u32,
    /// Adaptive wake-up coalescing (0: off), like a NIC's adaptive interrupt moderation: while
    /// the worker's receive rate brings at least [`Density::MIN_BATCH`] frames per
    /// `coalesce_us`, a worker with empty rings sleeps `coalesce_us` on a timer instead of
    /// being woken by the next frame, so each wake-up serves a batch. Below that rate (a
    /// `ping`, a pause in traffic) it sleeps until the next frame as without coalescing.
    pub coalesce_us: u32,
}

impl Idle {
    /// Longest accepted `spin_us` (10 ms): beyond that spinning is polling all the time.
    pub const MAX_SPIN_US: u32 = 10_000;
    /// Default `spin_us` for `spin` and `busy_poll`; see the README (dataplane.spin_us).
    pub const DEFAULT_SPIN_US: u32 = 50;
    /// Longest accepted `coalesce_us` (1 ms): the delay it may add to each traversal.
    pub const MAX_COALESCE_US: u32 = 1_000;

    pub fn name(&self) -> &'static str {
        match self.strategy {
            IdleStrategy::Sleep => "sleep",
            IdleStrategy::Spin => "spin",
            IdleStrategy::BusyPoll => "busy_poll",
        }
    }

    /// Parses `dataplane.idle`, `dataplane.spin_us` and `dataplane.coalesce_us`; the error says
    /// which is wrong and why.
    pub fn parse(
        idle: Option<&str>,
        spin_us: Option<u32>,
        coalesce_us: Option<u32>,
    ) -> Result<Idle, (&'static str, String)> {
        let strategy = match idle.unwrap_or("sleep") {
            "sleep" => IdleStrategy::Sleep,
            "spin" => IdleStrategy::Spin,
            "busy_poll" => IdleStrategy::BusyPoll,
            o => {
                return Err((
                    "dataplane.idle",
                    format!("`{o}` is not sleep, spin or busy_poll"),
                ));
            }
        };
        let spin_us = match (strategy, spin_us) {
            (IdleStrategy::Sleep, None) => 0,
            (IdleStrategy::Sleep, Some(_)) => {
                return Err((
                    "dataplane.spin_us",
                    "is used by idle = \"spin\" and \"busy_poll\"; idle = \"sleep\" never spins"
                        .into(),
                ));
            }
            (_, None) => Self::DEFAULT_SPIN_US,
            (_, Some(us)) if (1..=Self::MAX_SPIN_US).contains(&us) => us,
            (_, Some(us)) => {
                return Err((
                    "dataplane.spin_us",
                    format!("{us} is not between 1 and {} (µs)", Self::MAX_SPIN_US),
                ));
            }
        };
        let coalesce_us = coalesce_us.unwrap_or(0);
        if coalesce_us > Self::MAX_COALESCE_US {
            return Err((
                "dataplane.coalesce_us",
                format!(
                    "{coalesce_us} is more than {} (µs; 0 turns coalescing off)",
                    Self::MAX_COALESCE_US
                ),
            ));
        }
        Ok(Idle {
            strategy,
            spin_us,
            coalesce_us,
        })
    }
}

impl Default for Idle {
    fn default() -> Self {
        Idle {
            strategy: IdleStrategy::Sleep,
            spin_us: 0,
            coalesce_us: 0,
        }
    }
}

impl std::fmt::Display for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.strategy {
            IdleStrategy::Sleep => f.write_str("sleep")?,
            _ => write!(f, "{} {} µs", self.name(), self.spin_us)?,
        }
        if self.coalesce_us > 0 {
            write!(f, ", coalesce {} µs", self.coalesce_us)?;
        }
        Ok(())
    }
}

/// The receive rate a worker sees, for wake-up coalescing (`dataplane.coalesce_us`): frames
/// counted over windows of at least [`Density::WINDOW_NS`], updated only on passes that
/// received frames (the clock is read there anyway).
#[derive(Debug, Default)]
pub struct Density {
    start: u64,
    frames: u64,
    /// The last full window brought at least `MIN_BATCH` frames per coalescing period.
    dense: bool,
    /// The last sleep was a timed one and no frame has come since.
    napped: bool,
}

impl Density {
    /// A window: long enough to hold many coalescing periods, short enough to follow a change
    /// of load within a millisecond or two.
    pub const WINDOW_NS: u64 = 1_000_000;
    /// Frames a timed sleep must be expected to collect: below two, a wake-up per frame costs
    /// no more than the timer's.
    pub const MIN_BATCH: u64 = 2;

    /// Counts `n` frames received at `now`; closes the window when it is long enough. A window
    /// that spans a pause (no frames for a while) shows a low rate, so coalescing stops at the
    /// first pass after a pause.
    #[inline]
    pub fn observe(&mut self, now: u64, n: u64, coalesce_ns: u64) {
        self.frames += n;
        self.napped = false;
        let elapsed = now.saturating_sub(self.start);
        if elapsed >= Self::WINDOW_NS {
            self.dense = self.frames.saturating_mul(coalesce_ns) >= Self::MIN_BATCH * elapsed;
            self.start = now;
            self.frames = 0;
        }
    }

    /// Whether the next sleep should be a timed one.
    #[inline]
    pub fn dense(&self) -> bool {
        self.dense
    }

    /// A timed sleep found nothing: traffic paused, wait for it with `poll` again, and measure
    /// afresh (a window that still held the traffic before the pause could otherwise turn
    /// coalescing back on at the next lone frame).
    #[inline]
    pub fn paused(&mut self) {
        *self = Density::default();
    }

    /// Whether a worker whose rings are empty sleeps on a timer now (`may`: nothing forbids it,
    /// e.g. no transmission awaits completion). A timed sleep followed by no frame is a pause:
    /// the next sleep is in poll(2) and the rate is measured afresh.
    #[inline]
    pub fn nap(&mut self, may: bool) -> bool {
        if self.napped {
            self.paused();
            return false;
        }
        self.napped = self.dense && may;
        self.napped
    }
}

/// Empty passes between two clock reads while spinning (user-space spin: an empty pass is two
/// loads, so this is well under a microsecond of spinning).
pub const CLOCK_EVERY: u32 = 64;
/// The same for busy polling, whose empty pass is two `recvfrom` calls (≈ 1 µs).
const CLOCK_EVERY_BUSY_POLL: u32 = 4;
/// Longest sleep in `poll(2)` with nothing outstanding: how soon a sleeping worker notices
/// `stop` (traffic wakes it at once).
const SLEEP_MS: i32 = 100;
/// Longest sleep while the kernel still holds frames of ours to transmit or complete.
const SLEEP_BUSY_MS: i32 = 1;

/// Runs a worker until `stop` is set. Sends `Ready` (or the bind error) on `ready` first.
pub fn run(spec: WorkerSpec, ready: Sender<Result<Ready, (usize, XskError)>>) {
    if let Some(c) = spec.core {
        core_affinity::set_for_current(core_affinity::CoreId { id: c });
    }
    let opened = XskPair::open(
        &spec.plain,
        spec.plain_queue,
        &spec.cipher,
        spec.cipher_queue,
        FRAMES,
        spec.copy,
    )
    .and_then(|x| {
        if spec.idle.strategy == IdleStrategy::BusyPoll {
            x.set_busy_poll(spec.idle.spin_us, BATCH)?;
        }
        Ok(x)
    });
    let mut xsk = match opened {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err((spec.id, e)));
            return;
        }
    };
    let (plain_fd, cipher_fd) = match xsk.dup_fds() {
        Ok(fds) => fds,
        Err(e) => {
            let _ = ready.send(Err((spec.id, e)));
            return;
        }
    };
    let _ = ready.send(Ok(Ready {
        id: spec.id,
        plain_fd,
        cipher_fd,
        zero_copy: xsk.plain.zero_copy && xsk.cipher.zero_copy,
    }));
    drop(ready);
    let stats = &spec.stats[spec.id];
    let mut pipe = Pipeline::new(&spec.dp, spec.id, stats, &spec.events, spec.pcfg);
    let mut frames: Vec<XskFrame> = Vec::with_capacity(BATCH as usize);
    let mut actions = [Action::Punt; BATCH as usize];
    let mut extra: Vec<XskFrame> = Vec::with_capacity(EXTRA);
    let extra_acts = [Action::Tx; EXTRA];
    let (mut plain_l2, mut cipher_l2, _) = spec.l2.load();
    pipe.set_l2(plain_l2, cipher_l2);
    let spin_ns = u64::from(spec.idle.spin_us) * 1000;
    let (spinning, busy_poll) = match spec.idle.strategy {
        IdleStrategy::Sleep => (false, false),
        IdleStrategy::Spin => (true, false),
        IdleStrategy::BusyPoll => (true, true),
    };
    let clock_every = if busy_poll {
        CLOCK_EVERY_BUSY_POLL
    } else {
        CLOCK_EVERY
    };
    // Clock at the last pass that received frames; empty passes since the last clock read.
    let mut last_rx = 0u64;
    let mut empty = 0u32;
    // busy_poll: whether each side's socket was checked for a NAPI id busy polling can reach.
    let mut napi_checked = [!busy_poll; 2];
    // Wake-up coalescing: the receive rate, and whether the last sleep was a timed one.
    let coalesce_ns = u64::from(spec.idle.coalesce_us) * 1000;
    let mut density = Density::default();
    if coalesce_ns > 0 {
        // Timed sleeps of tens of µs: the default 50 µs timer slack would double them.
        crate::sys::set_timer_slack_ns(1_000);
    }
    let ring = spec.capture.ring(spec.id);
    xsk.refill(2 * BATCH as usize);
    while !spec.stop.load(Ordering::Relaxed) {
        let mut now = 0u64;
        let mut capturing = None;
        let mut received = 0u64;
        for from_plain in [true, false] {
            xsk.receive(from_plain, BATCH, &mut frames);
            if frames.is_empty() {
                continue;
            }
            received += frames.len() as u64;
            if now == 0 {
                // Once per pass that received something: the clock and the MAC addresses.
                now = crate::now_ns();
                // The capture flag: one Relaxed load per pass (no capture: nothing more).
                capturing = ring.zip(spec.capture.running());
                let (p, c, _) = spec.l2.load();
                if p != plain_l2 || c != cipher_l2 {
                    (plain_l2, cipher_l2) = (p, c);
                    pipe.set_l2(p, c);
                }
            }
            if !napi_checked[from_plain as usize] {
                napi_checked[from_plain as usize] = true;
                warn_if_no_napi(&xsk, from_plain, spec.id);
            }
            if let Some(r) = capturing {
                capture_rx(r, from_plain, now, &mut frames);
            }
            let acts = &mut actions[..frames.len()];
            if spec.null_crypto {
                forward_plain(
                    &mut frames,
                    acts,
                    if from_plain { &cipher_l2 } else { &plain_l2 },
                    stats.path(if from_plain {
                        super::Path::Outbound
                    } else {
                        super::Path::Inbound
                    }),
                );
            } else if from_plain {
                pipe.outbound_with(&mut frames, now, acts, &mut xsk, &mut extra);
            } else {
                pipe.inbound(&mut frames, now, acts);
            }
            if let Some(r) = capturing {
                capture_tx(r, from_plain, now, &mut frames, acts, &mut extra);
            }
            // Fragments after the batch's own frames (the first fragment is among those).
            let full = xsk.send_batch(!from_plain, &frames, acts, Action::Tx)
                + xsk.send_batch(!from_plain, &extra, &extra_acts[..extra.len()], Action::Tx)
                + xsk.send_batch(from_plain, &frames, acts, Action::TxBack);
            extra.clear();
            if full > 0 {
                stats.tx_ring_full.add(full);
            }
            for (f, a) in frames.iter().zip(acts.iter()) {
                if matches!(a, Action::Drop(_) | Action::Punt) {
                    xsk.recycle(f);
                }
            }
            xsk.flush(!from_plain);
            xsk.flush(from_plain);
        }
        if now != 0 {
            // The fill rings gave frames to what was just received: give them back.
            xsk.reap();
            xsk.refill(2 * BATCH as usize);
            let bad = xsk.take_bad_descs();
            if bad > 0 {
                stats.bad_descs.add(bad);
            }
            last_rx = now;
            empty = 0;
            if coalesce_ns > 0 {
                density.observe(now, received, coalesce_ns);
            }
            continue;
        }
        // Both rx rings empty. Frames still with the kernel (zero-copy completions, or a copy-
        // mode transmit that stopped short) are followed up; otherwise nothing is touched.
        if xsk.tx_outstanding() > 0 {
            xsk.flush(true);
            xsk.flush(false);
            xsk.reap();
            xsk.refill(2 * BATCH as usize);
        }
        if spinning {
            if busy_poll {
                xsk.busy_poll();
            } else {
                std::hint::spin_loop();
            }
            empty += 1;
            if empty < clock_every {
                continue;
            }
            empty = 0;
            if crate::now_ns() < last_rx.saturating_add(spin_ns) {
                // A thread woken on this core (an end host's process on a shared machine, the
                // other gateway) runs now rather than when the spin ends or its slice is due.
                std::thread::yield_now();
                continue;
            }
        }
        // Sleep: the fill rings full and every frame handed over first, so the kernel can
        // deliver whatever comes while we sleep; `poll` returns at once if something already
        // has (no lost wake-up).
        xsk.reap();
        xsk.refill(2 * BATCH as usize);
        if xsk.rx_ready() {
            continue;
        }
        if coalesce_ns > 0 && density.nap(xsk.tx_outstanding() == 0) {
            // Dense traffic: let a batch gather instead of being woken by its first frame.
            stats.coalesced_sleeps.add(1);
            std::thread::sleep(std::time::Duration::from_nanos(coalesce_ns));
            continue;
        }
        stats.idle_sleeps.add(1);
        xsk.wait(if xsk.tx_outstanding() > 0 {
            SLEEP_BUSY_MS
        } else {
            SLEEP_MS
        });
    }
    let (d0, f0, e0) = xsk.kernel_stats(true);
    let (d1, f1, e1) = xsk.kernel_stats(false);
    stats.kernel_rx_dropped.add(d0 + d1 + f0 + f1);
    stats.kernel_fill_empty.add(e0 + e1);
}

/// `busy_poll` reaches a queue's NAPI only through the id the kernel records on the socket
/// when it delivers a frame: without one (veth and generic XDP on this kernel; measured) each
/// `recvfrom` only costs a syscall and `spin` does the same for less. Said once per socket.
#[cold]
fn warn_if_no_napi(xsk: &XskPair, plain: bool, worker: usize) {
    if xsk.napi_id(plain) == 0 {
        let port = if plain { &xsk.plain } else { &xsk.cipher };
        tracing::warn!(
            worker,
            "dataplane.idle = \"busy_poll\": {} queue {} has no NAPI id to busy-poll (veth or generic XDP?): the worker spins in recvfrom without polling the device; idle = \"spin\" gives the same latency for less CPU",
            port.iface,
            port.queue
        );
    }
}

/// Copies a received batch into the capture ring.
#[cold]
#[inline(never)]
fn capture_rx((r, n): (&Ring, u32), from_plain: bool, now: u64, frames: &mut [XskFrame]) {
    for f in frames.iter_mut() {
        let (off, len) = (f.offset(), f.len());
        r.record(n, Point::rx(from_plain), now, &f.buf_mut()[off..off + len]);
    }
}

/// Copies what a batch hands to the tx rings (`Tx` to the other side, `TxBack` to this one,
/// fragments to the other side) into the capture ring.
#[cold]
#[inline(never)]
fn capture_tx(
    (r, n): (&Ring, u32),
    from_plain: bool,
    now: u64,
    frames: &mut [XskFrame],
    acts: &[Action],
    extra: &mut [XskFrame],
) {
    for (f, a) in frames.iter_mut().zip(acts) {
        let plain = match a {
            Action::Tx => !from_plain,
            Action::TxBack => from_plain,
            _ => continue,
        };
        let (off, len) = (f.offset(), f.len());
        r.record(n, Point::tx(plain), now, &f.buf_mut()[off..off + len]);
    }
    for f in extra.iter_mut() {
        let (off, len) = (f.offset(), f.len());
        r.record(n, Point::tx(!from_plain), now, &f.buf_mut()[off..off + len]);
    }
}

/// The crypto-off baseline: forward frames unchanged between the interfaces (new MACs only).
fn forward_plain(frames: &mut [XskFrame], acts: &mut [Action], l2: &L2, stats: &super::PathStats) {
    for (f, a) in frames.iter_mut().zip(acts.iter_mut()) {
        let (off, len) = (f.offset(), f.len());
        stats.rx_packets.add(1);
        stats.rx_bytes.add(len as u64);
        if len < 14 {
            *a = Action::Drop(super::DropReason::Malformed);
            continue;
        }
        let b = f.buf_mut();
        b[off..off + 6].copy_from_slice(&l2.next_hop);
        b[off + 6..off + 12].copy_from_slice(&l2.mac);
        stats.tx_packets.add(1);
        stats.tx_bytes.add(len as u64);
        *a = Action::Tx;
    }
}
