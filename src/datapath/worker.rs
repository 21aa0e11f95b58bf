//! The per-core worker loop: rx batch from each side → pipeline → tx on the other side.
//!
//! A worker owns one [`XskPair`] (a UMEM and its plain-side and cipher-side sockets) and one
//! [`Pipeline`]. It never blocks on another thread: lifetime events go to a bounded lock-free
//! queue, counters are single-writer atomics, MAC addresses are read from atomics once per
//! loop. When both rx rings stay empty it sleeps in `poll(2)` for up to a millisecond.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;

use crossbeam_queue::ArrayQueue;

use super::pipeline::{Dataplane, FramePool, L2, PipelineConfig};
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
}

/// What a worker reports once its sockets are bound (it then starts polling).
pub struct Ready {
    pub id: usize,
    /// Duplicates of the sockets' descriptors for the XSKMAP (closed once registered).
    pub plain_fd: std::os::fd::OwnedFd,
    pub cipher_fd: std::os::fd::OwnedFd,
    pub zero_copy: bool,
}

/// Runs a worker until `stop` is set. Sends `Ready` (or the bind error) on `ready` first.
pub fn run(spec: WorkerSpec, ready: Sender<Result<Ready, (usize, XskError)>>) {
    if let Some(c) = spec.core {
        core_affinity::set_for_current(core_affinity::CoreId { id: c });
    }
    let mut xsk = match XskPair::open(
        &spec.plain,
        spec.plain_queue,
        &spec.cipher,
        spec.cipher_queue,
        FRAMES,
        spec.copy,
    ) {
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
    let mut idle = 0u32;
    let (mut plain_l2, mut cipher_l2, _) = spec.l2.load();
    pipe.set_l2(plain_l2, cipher_l2);
    while !spec.stop.load(Ordering::Relaxed) {
        let now = crate::now_ns();
        let (p, c, _) = spec.l2.load();
        if p != plain_l2 || c != cipher_l2 {
            (plain_l2, cipher_l2) = (p, c);
            pipe.set_l2(p, c);
        }
        xsk.reap();
        xsk.refill(2 * BATCH as usize);
        let mut busy = false;
        for from_plain in [true, false] {
            xsk.receive(from_plain, BATCH, &mut frames);
            if frames.is_empty() {
                continue;
            }
            busy = true;
            let acts = &mut actions[..frames.len()];
            if spec.null_crypto {
                forward_plain(
                    &mut frames,
                    acts,
                    if from_plain { &cipher_l2 } else { &plain_l2 },
                    stats,
                );
            } else if from_plain {
                pipe.outbound_with(&mut frames, now, acts, &mut xsk, &mut extra);
            } else {
                pipe.inbound(&mut frames, now, acts);
            }
            // Fragments after the batch's own frames (the first fragment is among those).
            let full = xsk.send_batch(!from_plain, &frames, acts, Action::Tx)
                + xsk.send_batch(!from_plain, &extra, &extra_acts[..extra.len()], Action::Tx)
                + xsk.send_batch(from_plain, &frames, acts, Action::TxBack);
            extra.clear();
            stats.tx_ring_full.add(full);
            for (f, a) in frames.iter().zip(acts.iter()) {
                if matches!(a, Action::Drop(_) | Action::Punt) {
                    xsk.recycle(f);
                }
            }
            xsk.flush(!from_plain);
            xsk.flush(from_plain);
        }
        let bad = xsk.take_bad_descs();
        if bad > 0 {
            stats.bad_descs.add(bad);
        }
        if busy {
            idle = 0;
        } else {
            idle += 1;
            if idle > 256 && !xsk.rx_ready() {
                xsk.wait(1);
            }
        }
    }
    let (d0, f0, e0) = xsk.kernel_stats(true);
    let (d1, f1, e1) = xsk.kernel_stats(false);
    stats.kernel_rx_dropped.add(d0 + d1 + f0 + f1);
    stats.kernel_fill_empty.add(e0 + e1);
}

/// The crypto-off baseline: forward frames unchanged between the interfaces (new MACs only).
fn forward_plain(frames: &mut [XskFrame], acts: &mut [Action], l2: &L2, stats: &CoreStats) {
    use super::pipeline::FrameMut;
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
