//! The lock-free SA table.
//!
//! Workers look SAs up without locks or allocation: they pin an epoch once per batch
//! (crossbeam-epoch) and load pointers. The control side installs, replaces and retires SAs
//! under its own mutex (never taken by a worker); a retired SA is freed only when no pinned
//! worker can still hold it.
//!
//! * Inbound: SA by SPI in O(1). SPIs that espd allocates encode the slot in their low bits
//!   (`spi & mask`) and a generation in the high bits, so an SPI is not reused right away.
//!   SPIs chosen by an operator work too as long as their slots differ.
//!   Each slot is 16 bytes: a tag word (the SPI and a version) beside the SA pointer, so a
//!   lookup validates the SPI from the slot alone and never touches the SA itself. At 10^6
//!   SAs the slots are 16 MB (on transparent huge pages where the kernel allows), which stays
//!   in the last-level cache, while the SAs themselves are about 1 GB. The tag and the pointer
//!   are read as a seqlock: the control side makes the version odd while it rewrites a slot.
//! * Outbound: one atomic pointer per tunnel to its current SA. Swapping it is the rekey.
//!
//! Invariants (checked by the `loom_table_*` models and the stress tests below):
//!
//! * **Slot seqlock.** The control side makes a slot's version odd, then (release fence)
//!   writes the pointer, then publishes version + 1 beside the new SPI with a release store. A
//!   lookup reads the tag (acquire), the pointer, an acquire fence, and the tag again; it
//!   returns the pointer only if both tag reads are equal, even and carry the SPI asked for. So
//!   a lookup never returns a pointer published under another SPI (or an SA removed and
//!   installed again in between: the version moved), and the SA it returns was fully built
//!   before it was published. (2^31 rewrites of one slot during one lookup would wrap the
//!   version: not a concern.)
//! * **Unlink, then retire.** An SA is retired (freed by crossbeam-epoch once every guard
//!   pinned at that moment is gone) only after it was unlinked: the slot emptied, or the
//!   tunnel pointer swapped away. A worker pins before it looks up, so whatever it loaded
//!   lives until it unpins. A rekey swaps the tunnel pointer with `REKEY` (acquire-release)
//!   and workers load it with `CURRENT` (acquire): a worker sees the old SA or the new one,
//!   each fully built.

use std::ops::ControlFlow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

// The atomics of the protocols the loom models check (src/sync.rs).
use crate::sync::atomic::{AtomicU64, fence};

use crossbeam_epoch::{self as epoch, Guard};

use super::sa::Sa;
use crate::sys::EpochPtr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("spi: {spi:#x} is already installed")]
    DuplicateSpi { spi: u32 },
    #[error(
        "spi: {spi:#x} needs slot {slot}, which SPI {holder:#x} holds; allocate SPIs with `allocate-spi`"
    )]
    SlotTaken { spi: u32, slot: u32, holder: u32 },
    #[error("spi: {spi:#x} is not installed")]
    UnknownSpi { spi: u32 },
    #[error("tunnel: index {0} is outside the table (capacity {1})")]
    TunnelIndex(u32, u32),
    #[error("spi: no free inbound slot left (capacity {0})")]
    Full(u32),
    #[error("direction: SA {spi:#x} is {got:?}, expected {want:?}")]
    Direction {
        spi: u32,
        got: super::Direction,
        want: super::Direction,
    },
}

struct Alloc {
    /// Slot reserved by `allocate_spi` and not yet installed, or installed.
    used: Vec<bool>,
    /// The SPI `allocate_spi` last handed out for each slot: `release_spi` frees only that
    /// reservation (a late release of an older SPI must not free a newer one's slot).
    reserved: Vec<u32>,
    next: u32,
    generation: u32,
}

/// Ordering of the rekey's swap of a tunnel's outbound SA pointer (the `EpochPtr`'s, which
/// the loom model of the swap uses).
#[cfg_attr(not(all(test, feature = "loom")), allow(dead_code))]
const REKEY: Ordering = crate::sys::EPOCH_SWAP;
/// Ordering of a worker's load of a tunnel's outbound SA pointer.
#[cfg_attr(not(all(test, feature = "loom")), allow(dead_code))]
const CURRENT: Ordering = crate::sys::EPOCH_LOAD;

/// One inbound slot: `tag` = version << 32 | SPI (version odd while the control side
/// rewrites the slot, SPI 0 when empty), `sa` = the SA installed under that SPI. Generic over
/// the pointer cell only so that the loom model runs this very seqlock over a loom atomic.
#[repr(C, align(16))]
struct Slot<P = EpochPtr<Sa>> {
    tag: AtomicU64,
    sa: P,
}

impl<P: Default> Default for Slot<P> {
    fn default() -> Self {
        Self {
            tag: AtomicU64::new(0),
            sa: P::default(),
        }
    }
}

impl<P> Slot<P> {
    /// Control side only (under the table mutex): publishes a pointer (or empties the slot)
    /// under `spi` (0 when empty); `store` writes it into the cell with (at least) the
    /// ordering given.
    fn publish(&self, spi: u32, store: impl FnOnce(&P, Ordering)) {
        let v = (self.tag.load(Ordering::Relaxed) >> 32) as u32;
        let odd = u64::from(v.wrapping_add(1) | 1);
        self.tag.store(odd << 32, Ordering::Relaxed);
        fence(Ordering::Release);
        store(&self.sa, Ordering::Release);
        self.tag.store(
            (odd.wrapping_add(1) & 0xffff_ffff) << 32 | u64::from(spi),
            Ordering::Release,
        );
    }

    /// Worker side: the pointer published under `spi` (`load` reads the cell with the
    /// ordering given), or `None` when the slot holds another SPI or is being rewritten.
    #[inline]
    fn read<R>(&self, spi: u32, load: impl FnOnce(&P, Ordering) -> R) -> Option<R> {
        let t1 = self.tag.load(Ordering::Acquire);
        if t1 as u32 != spi || spi == 0 || (t1 >> 32) & 1 == 1 {
            return None;
        }
        #[cfg(all(test, not(feature = "loom")))]
        tests::race_window();
        let p = load(&self.sa, Ordering::Acquire);
        #[cfg(all(test, not(feature = "loom")))]
        tests::race_window();
        fence(Ordering::Acquire);
        // Unchanged tag: `p` is the pointer published under `spi` (a rewrite in between makes
        // the version odd or moves it on; 2^31 rewrites within one lookup cannot happen).
        if self.tag.load(Ordering::Relaxed) != t1 {
            return None;
        }
        Some(p)
    }
}

pub struct SaTable {
    inbound: crate::sys::HugeSlice<Slot>,
    mask: u32,
    slot_bits: u32,
    tunnels: Box<[EpochPtr<Sa>]>,
    /// Installed inbound SAs (written under `alloc`, read by workers once per batch).
    installed: AtomicU32,
    /// Tunnels with an outbound SA (likewise).
    outbound_installed: AtomicU32,
    cores: usize,
    alloc: Mutex<Alloc>,
}

/// How many generations fit above `slot_bits` slot bits in a 32-bit SPI.
fn max_generation(slot_bits: u32) -> u32 {
    if slot_bits >= 32 {
        1
    } else {
        (u32::MAX >> slot_bits).max(1)
    }
}

impl SaTable {
    /// `capacity` inbound slots (rounded up to a power of two, at least 256), `tunnels` outbound
    /// tunnel slots, per-core state for `cores` workers.
    pub fn new(capacity: u32, tunnels: u32, cores: usize) -> Self {
        let cap = capacity.max(256).next_power_of_two();
        // Allocated SPIs start at a random generation: two gateways (or two runs) do not hand
        // out the same numbers. IKEv1's KEYMAT depends on the SPI, so a pair of equal SPIs
        // would give both directions one key.
        let mut r = [0u8; 4];
        let _ = aws_lc_rs::rand::fill(&mut r);
        let slot_bits = cap.trailing_zeros();
        Self {
            inbound: crate::sys::HugeSlice::new(cap as usize),
            mask: cap - 1,
            slot_bits,
            tunnels: (0..tunnels).map(|_| EpochPtr::null()).collect(),
            installed: AtomicU32::new(0),
            outbound_installed: AtomicU32::new(0),
            cores: cores.max(1),
            alloc: Mutex::new(Alloc {
                used: vec![false; cap as usize],
                reserved: vec![0; cap as usize],
                next: 0,
                generation: u32::from_ne_bytes(r) % max_generation(slot_bits),
            }),
        }
    }

    pub fn cores(&self) -> usize {
        self.cores
    }
    pub fn capacity(&self) -> u32 {
        self.mask + 1
    }
    pub fn tunnel_capacity(&self) -> u32 {
        self.tunnels.len() as u32
    }
    /// Number of installed inbound SAs.
    #[inline]
    pub fn inbound_len(&self) -> u32 {
        self.installed.load(Ordering::Relaxed)
    }
    /// Number of tunnels with an outbound SA.
    #[inline]
    pub fn outbound_len(&self) -> u32 {
        self.outbound_installed.load(Ordering::Relaxed)
    }

    // ---- worker side: no locks, no allocation ----

    /// Inbound SA for `spi`, valid while `guard` is pinned. Reads only the 16-byte slot; the
    /// SA is not touched.
    #[inline]
    pub fn inbound<'g>(&self, spi: u32, guard: &'g Guard) -> Option<&'g Sa> {
        let slot = &self.inbound[(spi & self.mask) as usize];
        // `EpochPtr::load` is an acquire load, as the seqlock needs.
        slot.read(spi, |sa, _| sa.load(guard))?
    }

    /// Starts loading the slot of `spi` into the cache, so that a batch can issue its misses
    /// together before looking its SAs up.
    #[inline]
    pub fn prefetch_inbound(&self, spi: u32) {
        crate::sys::prefetch(&self.inbound[(spi & self.mask) as usize]);
    }

    /// Current outbound SA of tunnel `t`.
    #[inline]
    pub fn outbound<'g>(&self, t: u32, guard: &'g Guard) -> Option<&'g Sa> {
        self.tunnels.get(t as usize).and_then(|a| a.load(guard))
    }

    // ---- control side ----

    /// Reserves a fresh inbound SPI (slot in the low bits, generation above, never < 256).
    pub fn allocate_spi(&self) -> Result<u32, TableError> {
        let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        let cap = self.mask + 1;
        for _ in 0..cap {
            let slot = a.next;
            a.next = (a.next + 1) & self.mask;
            if !a.used[slot as usize] {
                a.used[slot as usize] = true;
                a.generation = a.generation % max_generation(self.slot_bits) + 1;
                let spi = (a.generation << self.slot_bits) | slot;
                let spi = if spi < 256 {
                    spi | (1 << self.slot_bits)
                } else {
                    spi
                };
                a.reserved[slot as usize] = spi;
                return Ok(spi);
            }
        }
        Err(TableError::Full(cap))
    }

    /// Installs an inbound SA in its slot. Fails if the slot holds another SA.
    pub fn install_inbound(&self, sa: Sa) -> Result<(), TableError> {
        if sa.direction != super::Direction::Inbound {
            return Err(TableError::Direction {
                spi: sa.spi,
                got: sa.direction,
                want: super::Direction::Inbound,
            });
        }
        let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        let slot = sa.spi & self.mask;
        let guard = epoch::pin();
        if let Some(holder) = self.inbound[slot as usize].sa.load(&guard) {
            return Err(if holder.spi == sa.spi {
                TableError::DuplicateSpi { spi: sa.spi }
            } else {
                TableError::SlotTaken {
                    spi: sa.spi,
                    slot,
                    holder: holder.spi,
                }
            });
        }
        a.used[slot as usize] = true;
        let spi = sa.spi;
        self.inbound[slot as usize].publish(spi, |p, _| {
            // An acquire-release swap: at least the release the seqlock needs.
            p.swap(Some(sa), &guard);
        });
        self.installed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Removes the inbound SA `spi`; it is freed once no worker can hold it.
    pub fn remove_inbound(&self, spi: u32) -> Result<(), TableError> {
        let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (spi & self.mask) as usize;
        let guard = epoch::pin();
        match self.inbound[slot].sa.load(&guard) {
            Some(sa) if sa.spi == spi => {}
            _ => return Err(TableError::UnknownSpi { spi }),
        }
        // Emptying the slot retires the SA: freed once no worker can hold it.
        self.inbound[slot].publish(0, |p, _| {
            p.swap(None, &guard);
        });
        self.installed.fetch_sub(1, Ordering::Relaxed);
        a.used[slot] = false;
        Ok(())
    }

    /// Replaces the installed inbound SA of `sa.spi` in one store: a packet finds the old SA
    /// or the new one, never neither (`sa_update`). The old SA is retired.
    pub fn replace_inbound(&self, sa: Sa) -> Result<(), TableError> {
        let _a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        let spi = sa.spi;
        let slot = (spi & self.mask) as usize;
        let guard = epoch::pin();
        match self.inbound[slot].sa.load(&guard) {
            Some(old) if old.spi == spi && sa.direction == super::Direction::Inbound => {}
            _ => return Err(TableError::UnknownSpi { spi }),
        }
        // Same SPI: the tag (SPI + version) stays as it is, so a lookup racing with the store
        // validates and gets the old SA or the new one, both of this SPI; it never misses.
        // The swap retires the old SA.
        self.inbound[slot].sa.swap(Some(sa), &guard);
        Ok(())
    }

    /// Releases an SPI reserved by `allocate_spi` that was never installed (a no-op if the
    /// slot is reserved for another SPI meanwhile, or holds an SA).
    pub fn release_spi(&self, spi: u32) {
        let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (spi & self.mask) as usize;
        let guard = epoch::pin();
        if a.reserved.get(slot) == Some(&spi) && self.inbound[slot].sa.load(&guard).is_none() {
            a.used[slot] = false;
            a.reserved[slot] = 0;
        }
    }

    /// Makes `sa` the outbound SA of tunnel `t` (the rekey primitive); the previous SA is
    /// retired. Returns the SPI of the previous SA.
    pub fn set_outbound(&self, t: u32, sa: Option<Sa>) -> Result<Option<u32>, TableError> {
        if let Some(sa) = &sa
            && sa.direction != super::Direction::Outbound
        {
            return Err(TableError::Direction {
                spi: sa.spi,
                got: sa.direction,
                want: super::Direction::Outbound,
            });
        }
        let cell = self
            .tunnels
            .get(t as usize)
            .ok_or(TableError::TunnelIndex(t, self.tunnels.len() as u32))?;
        let _a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        let guard = epoch::pin();
        let installs = sa.is_some();
        let old_spi = cell.swap(sa, &guard).map(|s| s.spi);
        match (old_spi.is_none(), installs) {
            (true, true) => _ = self.outbound_installed.fetch_add(1, Ordering::Relaxed),
            (false, false) => _ = self.outbound_installed.fetch_sub(1, Ordering::Relaxed),
            _ => {}
        }
        Ok(old_spi)
    }

    /// Installed SAs, inbound and outbound.
    pub fn len(&self) -> usize {
        self.inbound_len() as usize + self.outbound_len() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Visits installed SAs (inbound first, then outbound with its tunnel index) until `f`
    /// breaks.
    pub fn for_each(&self, mut f: impl FnMut(Option<u32>, &Sa) -> ControlFlow<()>) {
        let guard = epoch::pin();
        for a in self.inbound.iter() {
            if let Some(sa) = a.sa.load(&guard)
                && f(None, sa).is_break()
            {
                return;
            }
        }
        for (i, a) in self.tunnels.iter().enumerate() {
            if let Some(sa) = a.load(&guard)
                && f(Some(i as u32), sa).is_break()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sa::sa::{Direction, Endpoints, Mode, SaParams};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use zeroize::Zeroizing;

    thread_local! {
        /// Set by reader threads of the race tests: `inbound` yields between its loads at
        /// every third call, so a writer can run inside the window a real race would need.
        static WIDEN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    #[cfg(not(feature = "loom"))]
    pub(super) fn race_window() {
        let n = WIDEN.with(|w| {
            let n = w.get();
            if n > 0 {
                w.set(n + 1);
            }
            n
        });
        if n > 0 && n.is_multiple_of(3) {
            std::thread::yield_now();
        }
    }

    pub(crate) fn params(spi: u32, dir: Direction) -> SaParams {
        SaParams {
            spi,
            direction: dir,
            mode: Mode::Tunnel,
            endpoints: Some(Endpoints {
                local: "203.0.113.1".parse().unwrap(),
                remote: "203.0.113.2".parse().unwrap(),
            }),
            encap: None,
            esn: false,
            keymat: Zeroizing::new(vec![7u8; 20]),
            backend: Default::default(),
            limits: Default::default(),
            replay_window: 64,
            inner: Vec::new(),
            mtu: 1500,
        }
    }

    #[test]
    fn install_lookup_remove() {
        let t = SaTable::new(1024, 4, 1);
        let spi = t.allocate_spi().unwrap();
        assert!(spi >= 256);
        t.install_inbound(Sa::new(&params(spi, Direction::Inbound), 1, 0).unwrap())
            .unwrap();
        let g = epoch::pin();
        assert_eq!(t.inbound(spi, &g).unwrap().spi, spi);
        assert!(
            t.inbound(spi ^ (1 << 20), &g).is_none(),
            "same slot, other generation"
        );
        assert_eq!(
            t.install_inbound(Sa::new(&params(spi, Direction::Inbound), 1, 0).unwrap()),
            Err(TableError::DuplicateSpi { spi })
        );
        let other = spi + 1024;
        assert!(matches!(
            t.install_inbound(Sa::new(&params(other, Direction::Inbound), 1, 0).unwrap()),
            Err(TableError::SlotTaken { .. })
        ));
        assert_eq!(t.inbound_len(), 1);
        t.remove_inbound(spi).unwrap();
        assert_eq!(t.inbound_len(), 0);
        assert!(t.inbound(spi, &g).is_none());
        assert_eq!(t.remove_inbound(spi), Err(TableError::UnknownSpi { spi }));
        assert_ne!(
            t.allocate_spi().unwrap(),
            spi,
            "SPIs are not reused right away"
        );
    }

    /// A late `release_spi` of an SPI whose SA came and went must not free the slot that a
    /// newer SPI has reserved meanwhile.
    #[test]
    fn release_spi_frees_only_its_own_reservation() {
        let t = SaTable::new(256, 1, 1);
        let a = t.allocate_spi().unwrap();
        t.install_inbound(Sa::new(&params(a, Direction::Inbound), 1, 0).unwrap())
            .unwrap();
        t.remove_inbound(a).unwrap();
        let slot = (a & t.mask) as usize;
        let b = (0..=t.mask)
            .map(|_| t.allocate_spi().unwrap())
            .find(|s| (s & t.mask) as usize == slot)
            .unwrap();
        assert_ne!(a, b);
        t.release_spi(a);
        assert!(t.alloc.lock().unwrap().used[slot], "b's reservation freed");
        t.release_spi(b);
        assert!(!t.alloc.lock().unwrap().used[slot]);
    }

    #[test]
    fn outbound_swap() {
        let t = SaTable::new(256, 2, 1);
        assert_eq!(
            t.set_outbound(
                0,
                Some(Sa::new(&params(0x1000, Direction::Outbound), 1, 0).unwrap())
            ),
            Ok(None)
        );
        assert_eq!(
            t.set_outbound(
                0,
                Some(Sa::new(&params(0x2000, Direction::Outbound), 1, 0).unwrap())
            ),
            Ok(Some(0x1000))
        );
        let g = epoch::pin();
        assert_eq!(t.outbound(0, &g).unwrap().spi, 0x2000);
        assert!(t.outbound(1, &g).is_none());
        assert!(t.outbound(9, &g).is_none());
        assert!(matches!(
            t.set_outbound(9, None),
            Err(TableError::TunnelIndex(9, 2))
        ));
        assert!(
            t.set_outbound(
                1,
                Some(Sa::new(&params(0x3000, Direction::Inbound), 1, 0).unwrap())
            )
            .is_err()
        );
    }

    #[test]
    fn holds_a_million_sas() {
        let t = SaTable::new(1 << 20, 1, 1);
        let mut spis = Vec::with_capacity(1_000_000);
        for _ in 0..1_000_000 {
            let spi = t.allocate_spi().unwrap();
            spis.push(spi);
            let mut p = params(spi, Direction::Inbound);
            p.replay_window = 64;
            t.install_inbound(Sa::new(&p, 1, 0).unwrap()).unwrap();
        }
        let g = epoch::pin();
        let mut n = 0;
        t.for_each(|_, _| {
            n += 1;
            ControlFlow::Continue(())
        });
        assert_eq!(n, 1_000_000);
        assert_eq!(t.inbound_len(), 1_000_000);
        for &spi in spis.iter().step_by(997) {
            assert_eq!(t.inbound(spi, &g).map(|s| s.spi), Some(spi));
        }
    }

    /// One slot passed back and forth between two SPIs while readers look both up: a lookup
    /// returns the SA of the SPI asked for or nothing, never the other SPI's SA (the tag and
    /// the pointer are read as one).
    #[test]
    fn slot_reuse_never_returns_another_spis_sa() {
        let t = Arc::new(SaTable::new(256, 1, 4));
        let (a, b) = (0x105u32, 0x205u32); // both slot 5
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let readers: Vec<_> = (0..std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2))
            .map(|_| {
                let (t, stop, hits) = (t.clone(), stop.clone(), hits.clone());
                std::thread::spawn(move || {
                    WIDEN.with(|w| w.set(1));
                    while !stop.load(Ordering::Relaxed) {
                        let g = epoch::pin();
                        for (i, spi) in [a, b].into_iter().enumerate() {
                            if let Some(sa) = t.inbound(spi, &g) {
                                assert_eq!(sa.spi, spi, "lookup returned another SPI's SA");
                                assert!(sa.canary_ok(), "reader saw a freed SA");
                                hits[i].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        // At least 20,000 hand-overs, and on until both SPIs were found 1,000 times each (a
        // loaded machine may starve the readers), within a minute; a reader that failed ends it.
        let t0 = std::time::Instant::now();
        let mut i = 0u64;
        while (i < 20_000 || hits.iter().any(|h| h.load(Ordering::Relaxed) < 1000))
            && t0.elapsed() < std::time::Duration::from_secs(60)
            && !readers.iter().any(|r| r.is_finished())
        {
            let (old, new) = if i.is_multiple_of(2) { (a, b) } else { (b, a) };
            let _ = t.remove_inbound(old);
            t.install_inbound(Sa::new(&params(new, Direction::Inbound), 4, 0).unwrap())
                .unwrap();
            i += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        let total = [0, 1].map(|i| hits[i].load(Ordering::Relaxed));
        assert!(
            total.iter().all(|&h| h >= 1000),
            "both SPIs were seen: {total:?}"
        );
    }

    /// Readers on every core while SAs are replaced thousands of times: no reader ever sees a
    /// freed or half-built SA.
    #[test]
    fn stress_replace_under_readers() {
        let t = Arc::new(SaTable::new(256, 4, 4));
        let spis: Vec<u32> = (0..8).map(|i| 0x100 + i).collect();
        for &s in &spis {
            t.install_inbound(Sa::new(&params(s, Direction::Inbound), 4, 0).unwrap())
                .unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2))
            .map(|_| {
                let (t, stop, seen, spis) = (t.clone(), stop.clone(), seen.clone(), spis.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let g = epoch::pin();
                        for &s in &spis {
                            if let Some(sa) = t.inbound(s, &g) {
                                assert!(sa.canary_ok(), "reader saw a freed SA");
                                assert_eq!(sa.spi, s);
                                n += 1;
                            }
                            for tn in 0..4 {
                                if let Some(sa) = t.outbound(tn, &g) {
                                    assert!(sa.canary_ok(), "reader saw a freed outbound SA");
                                    assert_eq!(sa.spi & 0xffff, 0x4000 + tn);
                                }
                            }
                        }
                    }
                    seen.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        for i in 0..5000u32 {
            let s = spis[i as usize % spis.len()];
            t.remove_inbound(s).unwrap();
            t.install_inbound(Sa::new(&params(s, Direction::Inbound), 4, 0).unwrap())
                .unwrap();
            let tn = i % 4;
            let o = (i << 16) | (0x4000 + tn);
            t.set_outbound(
                tn,
                Some(Sa::new(&params(o, Direction::Outbound), 4, 0).unwrap()),
            )
            .unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert!(seen.load(Ordering::Relaxed) > 0);
    }
}

/// Loom models of the table's protocols (`cargo test --release --features loom --lib loom_`).
///
/// Covered: the slot seqlock itself (`Slot::publish` and `Slot::read`, with the tag, fences
/// and orderings of the real code, over a loom atomic standing in for the SA pointer), the
/// outbound swap's orderings (`REKEY`, `CURRENT`), and the order "unlink, then retire" of
/// `remove_inbound`/`set_outbound`, mirrored step for step. An SA is a word holding its SPI,
/// written (relaxed) when it is built and overwritten with a poison value when it is freed:
/// loom lets a relaxed load return any store not hidden by happens-before, so a read not
/// ordered after the build or before the free can see 0 or the poison, and the model fails.
/// Not covered: crossbeam-epoch itself (it does not run on these loom atomics; a stand-in
/// with its guarantee takes its place: pin = counter + SeqCst fence, a retired object is
/// freed once the workers pinned at retirement have unpinned), the control mutex, SPI
/// allocation.
#[cfg(all(test, feature = "loom"))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicU32, AtomicUsize};

    const FREED: u32 = 0xdead;
    const PREEMPTIONS: usize = 2;

    /// SAs of a model by index (0 is the null pointer): each holds its SPI once built.
    struct Heap(Vec<AtomicU32>);

    impl Heap {
        fn new(n: usize) -> Self {
            Self((0..=n).map(|_| AtomicU32::new(0)).collect())
        }
        /// `Sa::new` before `Owned::new(sa)`.
        fn build(&self, p: usize, spi: u32) -> usize {
            self.0[p].store(spi, Ordering::Relaxed);
            p
        }
        /// What a worker reads through the pointer: 0 if not built yet, `FREED` once freed.
        fn spi(&self, p: usize) -> u32 {
            self.0[p].load(Ordering::Relaxed)
        }
        fn free(&self, p: usize) {
            self.0[p].store(FREED, Ordering::Relaxed);
        }
    }

    /// Stand-in for crossbeam-epoch's pins: per worker, pins and unpins so far (odd while
    /// pinned). Pinning is followed by a SeqCst fence, as in crossbeam.
    struct Pins(Vec<AtomicUsize>);

    impl Pins {
        fn pin(&self, r: usize) {
            self.0[r].fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
        }
        fn unpin(&self, r: usize) {
            self.0[r].fetch_add(1, Ordering::Release);
        }
    }

    struct World {
        slot: Slot<AtomicUsize>,
        tunnel: AtomicUsize,
        heap: Heap,
        pins: Pins,
    }

    /// Stand-in for crossbeam-epoch's deferred frees, with its guarantee and no more: an
    /// object retired (after it was unlinked) is freed as soon as every worker that was pinned
    /// at that moment has unpinned, and the control thread never waits for that.
    #[derive(Default)]
    struct Retired(Vec<(usize, Vec<usize>)>);

    impl Retired {
        /// `defer_destroy(p)`: notes who is pinned now, then frees what it can.
        fn retire(&mut self, w: &World, p: usize) {
            fence(Ordering::SeqCst);
            let pinned = w.pins.0.iter().map(|c| c.load(Ordering::Acquire)).collect();
            self.0.push((p, pinned));
            self.collect(w, false);
        }
        /// Frees every retired object whose guards are gone; with `wait`, waits for them.
        fn collect(&mut self, w: &World, wait: bool) {
            self.0.retain(|(p, pinned)| {
                loop {
                    let gone = pinned
                        .iter()
                        .zip(&w.pins.0)
                        .all(|(&c, now)| c % 2 == 0 || now.load(Ordering::Acquire) != c);
                    if gone {
                        w.heap.free(*p);
                        return false;
                    }
                    if !wait {
                        return true;
                    }
                    loom::thread::yield_now();
                }
            });
        }
    }

    use crate::sync::loom_model as model;

    /// `inbound(spi)` under a pinned guard, then a read of the SA it returned.
    fn lookup(w: &World, reader: usize, spi: u32) -> Option<u32> {
        w.pins.pin(reader);
        let got = w
            .slot
            .read(spi, |p, order| p.load(order))
            .filter(|&p| p != 0)
            .map(|p| w.heap.spi(p));
        w.pins.unpin(reader);
        got
    }

    /// One slot handed from SPI A to SPI B and back to A (a new SA), as `remove_inbound` and
    /// `install_inbound` do, while two workers look both SPIs up: a lookup returns an SA of
    /// the SPI asked for or nothing, never another SPI's SA, never a freed or unbuilt one.
    #[test]
    fn loom_table_slot_reuse() {
        const A: u32 = 0x105;
        const B: u32 = 0x205;
        model(PREEMPTIONS, || {
            let w = Arc::new(World {
                slot: Slot::default(),
                tunnel: AtomicUsize::new(0),
                heap: Heap::new(3),
                pins: Pins((0..3).map(|_| AtomicUsize::new(0)).collect()),
            });
            let first = w.heap.build(1, A);
            w.slot.publish(A, |p, order| p.store(first, order));
            let readers: Vec<_> = [[A, B], [B, A]]
                .into_iter()
                .enumerate()
                .map(|(r, spis)| {
                    let w = w.clone();
                    loom::thread::spawn(move || {
                        for spi in spis {
                            if let Some(got) = lookup(&w, r, spi) {
                                assert_eq!(
                                    got, spi,
                                    "lookup of {spi:#x} returned {got:#x} (0: unbuilt, {FREED:#x}: freed)"
                                );
                            }
                        }
                    })
                })
                .collect();
            // Control thread: remove A, install B, then replace B by a new SA of A in one
            // publish (the table empties a slot first; the seqlock does not need it to).
            let mut retired = Retired::default();
            w.slot.publish(0, |c, order| c.store(0, order));
            retired.retire(&w, first);
            let second = w.heap.build(2, B);
            w.slot.publish(B, |c, order| c.store(second, order));
            let third = w.heap.build(3, A);
            w.slot.publish(A, |c, order| c.store(third, order));
            retired.retire(&w, second);
            retired.collect(&w, true);
            for r in readers {
                r.join().unwrap();
            }
            assert_eq!(lookup(&w, 2, A), Some(A));
            assert_eq!(lookup(&w, 2, B), None);
        });
    }

    /// Two rekeys of one tunnel (`set_outbound`: swap, then retire the old SA) while two
    /// workers read the tunnel's SA twice: each read is the old or a new SA, fully built and
    /// not freed, and a worker never goes back to an older SA.
    #[test]
    fn loom_table_outbound_swap() {
        model(PREEMPTIONS, || {
            let w = Arc::new(World {
                slot: Slot::default(),
                tunnel: AtomicUsize::new(0),
                heap: Heap::new(3),
                pins: Pins((0..3).map(|_| AtomicUsize::new(0)).collect()),
            });
            let first = w.heap.build(1, 0x1000);
            w.tunnel.store(first, Ordering::Release);
            let readers: Vec<_> = (0..2)
                .map(|r| {
                    let w = w.clone();
                    loom::thread::spawn(move || {
                        let mut last = 0;
                        for _ in 0..2 {
                            w.pins.pin(r);
                            let p = w.tunnel.load(CURRENT);
                            let spi = w.heap.spi(p);
                            w.pins.unpin(r);
                            assert!(
                                [0x1000, 0x2000, 0x3000].contains(&spi),
                                "read {spi:#x} (0: unbuilt, {FREED:#x}: freed)"
                            );
                            assert!(spi >= last, "went back from {last:#x} to {spi:#x}");
                            last = spi;
                        }
                    })
                })
                .collect();
            let mut retired = Retired::default();
            for (p, spi) in [(2, 0x2000), (3, 0x3000)] {
                let new = w.heap.build(p, spi);
                let old = w.tunnel.swap(new, REKEY);
                retired.retire(&w, old);
            }
            retired.collect(&w, true);
            for r in readers {
                r.join().unwrap();
            }
        });
    }
}
