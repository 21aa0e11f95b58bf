//! SA lifetimes (RFC 4301 §4.4.2.1): soft and hard limits on bytes, packets and time since
//! install, and optionally time since first use. Checked inline on every packet.
//!
//! Byte and packet limits hold **exactly** across cores. Each limit is a [`Budget`]: a global
//! remainder plus one lease per core. A core spends its lease with a compare-and-swap on its own
//! cache line; when the lease runs dry it takes a new one from the remainder with one atomic
//! operation. A core that cannot get enough first steals every other core's unused lease back
//! into the remainder, so the admitted total never exceeds the limit and reaches it (to within
//! one packet's size for bytes; exactly for packets) when demand exceeds it. Leases shrink as the
//! remainder shrinks (at most 1/64 of it, and of the limit, shared by the cores).
//!
//! Soft byte and packet limits fire within a known tolerance: never before the amount admitted
//! reaches the soft value, and at most `min(soft, hard - soft) / 64` (`soft / 64` without a
//! hard limit) plus one packet after it, whatever the number of cores. Until the soft limit is
//! crossed each lease is capped at `q = min(soft, hard - soft) / (64 cores)`, and the crossing
//! is decided on the refill that brings the amount leased, other cores' leases apart, to
//! `soft + (cores - 1) q`. Soft time limits fire on the first packet at or after their
//! deadline. Every hard limit, of any kind, holds on the packet path by itself.

use crate::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};

/// Lifetime limits of one SA. `None`: no limit. Times are in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub soft_bytes: Option<u64>,
    pub hard_bytes: Option<u64>,
    pub soft_packets: Option<u64>,
    pub hard_packets: Option<u64>,
    pub soft_seconds: Option<u64>,
    pub hard_seconds: Option<u64>,
    /// Soft limit counted from the first packet instead of install.
    pub soft_use_seconds: Option<u64>,
    pub hard_use_seconds: Option<u64>,
}

impl Limits {
    /// Checks that every soft limit is below its hard limit and no limit is zero.
    pub fn validate(&self) -> Result<(), String> {
        let pairs = [
            ("bytes", self.soft_bytes, self.hard_bytes),
            ("packets", self.soft_packets, self.hard_packets),
            ("seconds", self.soft_seconds, self.hard_seconds),
            ("use_seconds", self.soft_use_seconds, self.hard_use_seconds),
        ];
        for (name, soft, hard) in pairs {
            if soft == Some(0) {
                return Err(format!("soft_{name} must be greater than 0"));
            }
            if hard == Some(0) {
                return Err(format!("hard_{name} must be greater than 0"));
            }
            if let (Some(s), Some(h)) = (soft, hard)
                && s >= h
            {
                return Err(format!("soft_{name} ({s}) must be below hard_{name} ({h})"));
            }
        }
        Ok(())
    }
}

/// What the lifetime check decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Pass,
    /// Passed, and a soft limit was crossed for the first time: notify (exactly once).
    PassSoft,
    /// Refused: the SA is past a hard limit.
    Refuse,
    /// Refused, and this is the first refusal: notify hard expiry (exactly once).
    RefuseHard,
}

const NS: u64 = 1_000_000_000;
const FIRED_SOFT: u8 = 1;
const FIRED_HARD: u8 = 2;

/// A lease is at most `1/SHARE` of what is left (and of the limit), split among the cores.
/// The loom models use tiny limits, so there every lease is a real share.
#[cfg(not(feature = "loom"))]
const SHARE: u64 = 64;
#[cfg(feature = "loom")]
const SHARE: u64 = 1;

/// Outcome of taking from a [`Budget`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Taken. `true` once the soft limit has been crossed (see `Budget::soft_point`).
    Ok(bool),
    /// Not enough left. `true` when the budget is certainly exhausted (no lease in flight).
    Short(bool),
}

/// An exact, lock-free budget shared by cores (see the module docs).
#[derive(Debug)]
#[repr(C)]
pub struct Budget {
    leases: Box<[CachePadded<AtomicU64>]>,
    limit: u64,
    soft: u64,
    inflight: AtomicU32,
    /// Refills that have finished (see `refill`).
    exits: AtomicU64,
    /// Not padded: written only on refills (once per lease chunk); padding it made every
    /// SA 400 bytes larger.
    left: AtomicU64,
}

impl Budget {
    /// Starts loading the lease of `core`, the line `take` touches first.
    #[inline]
    pub fn prefetch(&self, core: usize) {
        if let Some(l) = self.leases.get(core) {
            crate::sys::prefetch(l);
        }
    }

    pub fn new(limit: u64, soft: Option<u64>, cores: usize) -> Self {
        Self {
            limit,
            soft: soft.unwrap_or(u64::MAX),
            left: AtomicU64::new(limit),
            inflight: AtomicU32::new(0),
            exits: AtomicU64::new(0),
            leases: (0..cores.max(1))
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Amount not yet handed out to any core.
    pub fn unleased(&self) -> u64 {
        self.left.load(Ordering::Acquire)
    }

    /// The lease cap before the soft limit is crossed, `q`, and the crossing point `t`: the
    /// soft limit counts as crossed on the refill that brings the amount leased, apart from
    /// the other cores' leases, to `t = soft + (cores - 1) q`. Every lease granted before then
    /// is at most `q`, so the amount actually spent is at least `soft` then, and at most
    /// `soft + cores q` plus one take (see the module docs). `q` is at most `1/SHARE` of the
    /// soft value and of the room between soft and hard, shared by the cores.
    #[inline]
    fn soft_point(&self) -> (u64, u64) {
        if self.soft == u64::MAX {
            return (u64::MAX, u64::MAX);
        }
        let n = self.leases.len() as u64;
        let q = self.soft.min(self.limit - self.soft) / (SHARE * n);
        (q, self.soft + (n - 1) * q)
    }

    /// The spare amount to lease along with a take that leaves `rest` unleased.
    #[inline]
    fn chunk(&self, rest: u64, (q, t): (u64, u64)) -> u64 {
        let n = self.leases.len() as u64;
        let c = (rest / (SHARE * n))
            .min(self.limit / (SHARE * n))
            .min(1 << 20);
        if self.limit - rest < t { c.min(q) } else { c }
    }

    /// Takes `need` units for `core`.
    #[inline]
    pub fn take(&self, core: usize, need: u64) -> Take {
        let lease = &self.leases[core % self.leases.len()];
        let mut cur = lease.load(Ordering::Acquire);
        while cur >= need {
            match lease.compare_exchange_weak(cur, cur - need, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Take::Ok(false),
                Err(a) => cur = a,
            }
        }
        self.refill(core % self.leases.len(), need)
    }

    #[cold]
    fn refill(&self, core: usize, need: u64) -> Take {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        let lease = &self.leases[core];
        let local = lease.swap(0, Ordering::AcqRel);
        let want = need.saturating_sub(local);
        let soft = self.soft_point();
        let taken = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                (left >= want).then(|| left - (want + self.chunk(left - want, soft)).min(left))
            });
        let result = match taken {
            Ok(prev) => {
                let grant = (want + self.chunk(prev - want, soft)).min(prev);
                let rest = local + grant - need;
                if rest > 0 {
                    lease.fetch_add(rest, Ordering::AcqRel);
                }
                Take::Ok(self.limit - (prev - want) >= soft.1)
            }
            Err(_) => {
                // Steal every other core's unused lease back, then try again.
                let mut pool = local;
                loop {
                    let exits = self.exits.load(Ordering::Acquire);
                    for (i, l) in self.leases.iter().enumerate() {
                        if i != core {
                            pool += l.swap(0, Ordering::AcqRel);
                        }
                    }
                    let r = self
                        .left
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                            (left + pool >= need).then(|| left + pool - need)
                        });
                    if let Ok(prev) = r {
                        break Take::Ok(self.limit - (prev + pool - need) >= soft.1);
                    }
                    // Budget moves only inside refills (leases published, pools returned,
                    // both before a refill exits). No refill in flight now and none exited
                    // during our attempt: what we saw was all there is.
                    let others = self.inflight.load(Ordering::Acquire) - 1;
                    let exited = self.exits.load(Ordering::Acquire) != exits;
                    if others == 0 && !exited {
                        self.left.fetch_add(pool, Ordering::AcqRel);
                        break Take::Short(true);
                    }
                    if others > 0 {
                        // Someone else holds budget in flight: refuse this packet, uncertain.
                        self.left.fetch_add(pool, Ordering::AcqRel);
                        break Take::Short(false);
                    }
                    // A refill finished while we looked: what it returned may now be visible.
                }
            }
        };
        self.exits.fetch_add(1, Ordering::AcqRel);
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        result
    }

    /// Gives `n` units back to `core`'s lease (a packet refused by another limit).
    #[inline]
    pub fn give_back(&self, core: usize, n: u64) {
        self.leases[core % self.leases.len()].fetch_add(n, Ordering::AcqRel);
    }
}

/// The lifetime state of one SA (`repr(C)`: what every packet reads comes first).
#[derive(Debug)]
#[repr(C)]
pub struct Lifetime {
    expired: AtomicBool,
    fired: AtomicU8,
    /// Notifications the control thread has announced (`FIRED_*` bits; see `announce`).
    announced: AtomicU8,
    /// A use-time limit is set (`first_use` is kept).
    by_use: bool,
    /// The earlier of the two deadlines below: the one compare every packet makes.
    next_deadline: u64,
    soft_deadline: u64,
    hard_deadline: u64,
    /// First use time + 1 (0: not used yet).
    first_use: AtomicU64,
    installed_ns: u64,
    limits: Limits,
    packets: Option<Budget>,
    bytes: Option<Budget>,
}

impl Lifetime {
    pub fn new(limits: Limits, installed_ns: u64, cores: usize) -> Self {
        let at = |s: Option<u64>| s.map_or(u64::MAX, |s| installed_ns.saturating_add(s * NS));
        let (soft_deadline, hard_deadline) = (at(limits.soft_seconds), at(limits.hard_seconds));
        Self {
            by_use: limits.soft_use_seconds.is_some() || limits.hard_use_seconds.is_some(),
            limits,
            installed_ns,
            next_deadline: soft_deadline.min(hard_deadline),
            soft_deadline,
            hard_deadline,
            first_use: AtomicU64::new(0),
            expired: AtomicBool::new(false),
            fired: AtomicU8::new(0),
            announced: AtomicU8::new(0),
            packets: limits
                .hard_packets
                .map(|h| Budget::new(h, limits.soft_packets, cores))
                .or_else(|| {
                    limits
                        .soft_packets
                        .map(|s| Budget::new(u64::MAX, Some(s), cores))
                }),
            bytes: limits
                .hard_bytes
                .map(|h| Budget::new(h, limits.soft_bytes, cores))
                .or_else(|| {
                    limits
                        .soft_bytes
                        .map(|s| Budget::new(u64::MAX, Some(s), cores))
                }),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
    /// When the time limits counted from install fall due (ns; `u64::MAX`: never), soft then
    /// hard.
    pub fn deadlines(&self) -> (u64, u64) {
        (self.soft_deadline, self.hard_deadline)
    }

    /// True when a limit counts from the first packet (its deadline is known only then).
    pub fn by_use(&self) -> bool {
        self.by_use
    }

    /// Soft and hard deadlines of the use-time limits, once the SA has been used.
    pub fn use_deadlines(&self) -> Option<(u64, u64)> {
        let first = self.first_use.load(Ordering::Acquire);
        if first == 0 || !self.by_use {
            return None;
        }
        let at = |s: Option<u64>| s.map_or(u64::MAX, |s| (first - 1).saturating_add(s * NS));
        Some((
            at(self.limits.soft_use_seconds),
            at(self.limits.hard_use_seconds),
        ))
    }

    pub fn installed_ns(&self) -> u64 {
        self.installed_ns
    }
    pub fn is_expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }
    pub fn soft_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire) & FIRED_SOFT != 0
    }

    /// Marks the SA hard-expired (time, sequence exhaustion, control request).
    /// Returns true the first time (the caller notifies).
    pub fn expire(&self) -> bool {
        self.expired.store(true, Ordering::Release);
        self.fired.fetch_or(FIRED_HARD, Ordering::AcqRel) & FIRED_HARD == 0
    }

    /// Control thread: records that the soft (`hard == false`) or hard notification of this SA
    /// has been announced. True the first time after it fired, so a notification that reached
    /// the control thread twice (queued, and found by `unannounced`) is announced once. A
    /// notification this SA never fired is stale (it came from the SA this one replaced under
    /// the same SPI, `sa_update`): false, so it cannot expire or remove the new SA.
    pub fn announce(&self, hard: bool) -> bool {
        let bit = if hard { FIRED_HARD } else { FIRED_SOFT };
        if self.fired.load(Ordering::Acquire) & bit == 0 {
            return false;
        }
        self.announced.fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Control thread: the (soft, hard) notifications that fired but were not announced yet,
    /// e.g. because the worker found the queue to the control thread full.
    pub fn unannounced(&self) -> (bool, bool) {
        let open = self.fired.load(Ordering::Acquire) & !self.announced.load(Ordering::Acquire);
        (open & FIRED_SOFT != 0, open & FIRED_HARD != 0)
    }

    #[inline]
    fn fire_soft(&self) -> bool {
        self.fired.load(Ordering::Relaxed) & FIRED_SOFT == 0
            && self.fired.fetch_or(FIRED_SOFT, Ordering::AcqRel) & FIRED_SOFT == 0
    }

    #[inline]
    fn refuse(&self) -> Admit {
        if self.expire() {
            Admit::RefuseHard
        } else {
            Admit::Refuse
        }
    }

    /// Timer check for the control thread (catches SAs that carry no traffic): returns
    /// (soft fired now, hard fired now), each true at most once over the SA's life.
    pub fn tick(&self, now: u64) -> (bool, bool) {
        let (use_soft, use_hard) = self.use_deadlines().unwrap_or((u64::MAX, u64::MAX));
        if now >= self.hard_deadline || now >= use_hard {
            return (false, self.expire());
        }
        let soft = now >= self.soft_deadline || now >= use_soft;
        (soft && self.fire_soft(), false)
    }

    /// Fraction of the most consumed limit (0.0 ..= 1.0), given the SA's packet and byte totals.
    pub fn consumed(&self, packets: u64, bytes: u64, now: u64) -> f64 {
        let mut f: f64 = 0.0;
        if let Some(h) = self.limits.hard_packets {
            f = f.max(packets as f64 / h as f64);
        }
        if let Some(h) = self.limits.hard_bytes {
            f = f.max(bytes as f64 / h as f64);
        }
        if let Some(h) = self.limits.hard_seconds {
            f = f.max(now.saturating_sub(self.installed_ns) as f64 / (h * NS) as f64);
        }
        f.min(1.0)
    }

    /// Starts loading this state and the budgets' headers.
    #[inline]
    pub fn prefetch_head(&self) {
        crate::sys::prefetch(self);
        crate::sys::prefetch(&self.packets);
        crate::sys::prefetch(&self.bytes);
    }

    /// Starts loading the budgets' leases of `core` (after `prefetch_head` has had time).
    #[inline]
    pub fn prefetch_leases(&self, core: usize) {
        for b in [&self.packets, &self.bytes].into_iter().flatten() {
            b.prefetch(core);
        }
    }

    /// Time-only check, for packets refused before any budget is spent.
    #[inline]
    pub fn check_time(&self, now: u64) -> Admit {
        if self.expired.load(Ordering::Acquire) {
            return Admit::Refuse;
        }
        if now >= self.hard_deadline {
            return self.refuse();
        }
        Admit::Pass
    }

    /// Admits one packet of `bytes` on `core` at `now` (ns, read once per batch).
    #[inline]
    pub fn admit(&self, core: usize, bytes: u64, now: u64) -> Admit {
        if self.expired.load(Ordering::Acquire) {
            return Admit::Refuse;
        }
        let mut soft = false;
        // Each time limit holds by itself: one compare against the earlier deadline.
        if now >= self.next_deadline {
            if now >= self.hard_deadline {
                return self.refuse();
            }
            soft = true;
        }
        if self.by_use {
            let first = self.first_use.load(Ordering::Acquire);
            if first == 0 {
                let _ = self.first_use.compare_exchange(
                    0,
                    now + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            } else {
                let used = now.saturating_sub(first - 1);
                if self.limits.hard_use_seconds.is_some_and(|h| used >= h * NS) {
                    return self.refuse();
                }
                soft |= self.limits.soft_use_seconds.is_some_and(|s| used >= s * NS);
            }
        }
        if let Some(p) = &self.packets {
            match p.take(core, 1) {
                Take::Ok(s) => soft |= s,
                Take::Short(certain) => return self.short(certain),
            }
        }
        if let Some(b) = &self.bytes {
            match b.take(core, bytes) {
                Take::Ok(s) => soft |= s,
                Take::Short(certain) => {
                    if let Some(p) = &self.packets {
                        p.give_back(core, 1);
                    }
                    return self.short(certain);
                }
            }
        }
        if soft && self.fire_soft() {
            Admit::PassSoft
        } else {
            Admit::Pass
        }
    }

    #[inline]
    fn short(&self, certain: bool) -> Admit {
        if certain {
            self.refuse()
        } else {
            Admit::Refuse
        }
    }
}

/// State carried from one SA to another (`sa_update` with the same key, state import).
impl Budget {
    /// Amount consumed so far, counting every unspent lease as consumed; afterwards nothing
    /// more can be leased from this budget (its leases already handed out stay spendable).
    fn drain(&self) -> u64 {
        self.limit - self.left.swap(0, Ordering::AcqRel)
    }

    /// Amount admitted so far (leases handed out but unspent are not counted).
    fn used(&self) -> u64 {
        let leased: u64 = self.leases.iter().map(|l| l.load(Ordering::Acquire)).sum();
        self.limit
            .saturating_sub(self.left.load(Ordering::Acquire))
            .saturating_sub(leased)
    }

    /// Counts `n` as already consumed (before the budget is shared with any worker).
    fn charge(&self, n: u64) {
        let _ = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                Some(l.saturating_sub(n))
            });
    }
}

impl Lifetime {
    /// The lifetime of an SA that replaces `prev` under the same key: `limits` apply to the
    /// key's whole life. Add-time limits count from `prev`'s install, use-time limits from its
    /// first use, and byte/packet budgets start with what `prev` consumed (`prev`'s unspent
    /// leases count as consumed and `prev` can lease no more, so a hard limit holds exactly
    /// across updates). `prev_totals`: `prev`'s packet and byte counters, for limits that
    /// `prev` did not have.
    ///
    /// `prev` is superseded: it notifies nothing more (a worker still holding it that finds
    /// its drained budget empty refuses the packet without a hard notification, which would
    /// otherwise name the SPI the new SA now holds). A soft notification `prev` already gave
    /// is carried, so one soft limit asks for one rekey.
    pub fn succeed(limits: Limits, cores: usize, prev: &Lifetime, prev_totals: (u64, u64)) -> Self {
        let both = FIRED_SOFT | FIRED_HARD;
        let fired = prev.fired.fetch_or(both, Ordering::AcqRel);
        let announced = prev.announced.fetch_or(both, Ordering::AcqRel);
        let lt = Lifetime::new(limits, prev.installed_ns, cores);
        lt.fired.store(fired & FIRED_SOFT, Ordering::Release);
        lt.announced
            .store(announced & FIRED_SOFT, Ordering::Release);
        lt.first_use
            .store(prev.first_use.load(Ordering::Acquire), Ordering::Release);
        let packets = prev.packets.as_ref().map_or(prev_totals.0, Budget::drain);
        let bytes = prev.bytes.as_ref().map_or(prev_totals.1, Budget::drain);
        lt.charge(packets, bytes);
        lt
    }

    /// Packets and bytes counted against this lifetime so far; `totals` (the SA's counters)
    /// stand in for a quantity without a limit.
    pub fn used(&self, totals: (u64, u64)) -> (u64, u64) {
        (
            self.packets.as_ref().map_or(totals.0, Budget::used),
            self.bytes.as_ref().map_or(totals.1, Budget::used),
        )
    }

    /// Counts `packets` and `bytes` as already consumed (state import, before publication).
    pub fn charge(&self, packets: u64, bytes: u64) {
        if let Some(b) = &self.packets {
            b.charge(packets);
        }
        if let Some(b) = &self.bytes {
            b.charge(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn lim() -> Limits {
        Limits::default()
    }

    #[test]
    fn validate_names_the_field() {
        let l = Limits {
            soft_bytes: Some(10),
            hard_bytes: Some(5),
            ..lim()
        };
        assert!(l.validate().unwrap_err().contains("soft_bytes"));
        let l = Limits {
            hard_packets: Some(0),
            ..lim()
        };
        assert!(l.validate().unwrap_err().contains("hard_packets"));
        assert!(
            Limits {
                soft_seconds: Some(1),
                hard_seconds: Some(2),
                ..lim()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn packet_limits_single_core() {
        let l = Lifetime::new(
            Limits {
                soft_packets: Some(5),
                hard_packets: Some(10),
                ..lim()
            },
            0,
            1,
        );
        let got: Vec<Admit> = (0..12).map(|_| l.admit(0, 100, 0)).collect();
        assert_eq!(got.iter().filter(|a| **a == Admit::PassSoft).count(), 1);
        assert_eq!(
            got[..10]
                .iter()
                .filter(|a| matches!(a, Admit::Pass | Admit::PassSoft))
                .count(),
            10
        );
        assert_eq!(got[10], Admit::RefuseHard);
        assert_eq!(got[11], Admit::Refuse);
        assert!(l.is_expired());
    }

    #[test]
    fn soft_fires_at_the_limit_when_leases_are_small() {
        // limit/64 < 1: leases are exact, so soft fires exactly at packet 5.
        let l = Lifetime::new(
            Limits {
                soft_packets: Some(5),
                hard_packets: Some(10),
                ..lim()
            },
            0,
            1,
        );
        for i in 1..=10 {
            let a = l.admit(0, 1, 0);
            assert_eq!(a == Admit::PassSoft, i == 5, "packet {i}: {a:?}");
        }
    }

    #[test]
    fn byte_limit_refuses_the_packet_that_would_cross() {
        let l = Lifetime::new(
            Limits {
                hard_bytes: Some(1000),
                ..lim()
            },
            0,
            1,
        );
        for _ in 0..9 {
            assert_eq!(l.admit(0, 100, 0), Admit::Pass);
        }
        assert_eq!(l.admit(0, 150, 0), Admit::RefuseHard);
        assert_eq!(l.admit(0, 10, 0), Admit::Refuse, "hard expiry is sticky");
    }

    #[test]
    fn time_limits() {
        let s = NS;
        let l = Lifetime::new(
            Limits {
                soft_seconds: Some(10),
                hard_seconds: Some(20),
                ..lim()
            },
            5 * s,
            1,
        );
        assert_eq!(l.admit(0, 1, 14 * s), Admit::Pass);
        assert_eq!(l.admit(0, 1, 15 * s), Admit::PassSoft);
        assert_eq!(l.admit(0, 1, 16 * s), Admit::Pass);
        assert_eq!(l.admit(0, 1, 25 * s), Admit::RefuseHard);
        assert_eq!(l.admit(0, 1, 26 * s), Admit::Refuse);
    }

    #[test]
    fn use_time_counts_from_first_packet() {
        let s = NS;
        let l = Lifetime::new(
            Limits {
                soft_use_seconds: Some(2),
                hard_use_seconds: Some(4),
                ..lim()
            },
            0,
            1,
        );
        assert_eq!(l.admit(0, 1, 100 * s), Admit::Pass);
        assert_eq!(l.admit(0, 1, 101 * s), Admit::Pass);
        assert_eq!(l.admit(0, 1, 102 * s), Admit::PassSoft);
        assert_eq!(l.admit(0, 1, 104 * s), Admit::RefuseHard);
    }

    /// Several threads push one SA past its hard limits: the admitted total never exceeds the
    /// limit, and reaches it (exactly for packets, within one packet for bytes).
    #[test]
    fn hard_limits_exact_across_threads() {
        for (limits, size) in [
            (
                Limits {
                    hard_packets: Some(1_000_003),
                    ..lim()
                },
                1u64,
            ),
            (
                Limits {
                    hard_bytes: Some(50_000_017),
                    ..lim()
                },
                1400,
            ),
            (
                Limits {
                    hard_packets: Some(200_000),
                    hard_bytes: Some(3_000_000_000),
                    ..lim()
                },
                64,
            ),
        ] {
            let threads = 4;
            let l = Arc::new(Lifetime::new(limits, 0, threads));
            let handles: Vec<_> = (0..threads)
                .map(|core| {
                    let l = l.clone();
                    std::thread::spawn(move || {
                        let (mut pkts, mut bytes, mut hard) = (0u64, 0u64, 0u32);
                        // Demand exceeds the limit: push until the SA is expired.
                        while !l.is_expired() {
                            match l.admit(core, size, 0) {
                                Admit::Pass | Admit::PassSoft => {
                                    pkts += 1;
                                    bytes += size;
                                }
                                Admit::RefuseHard => hard += 1,
                                Admit::Refuse => {}
                            }
                        }
                        (pkts, bytes, hard)
                    })
                })
                .collect();
            let res: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let pkts: u64 = res.iter().map(|r| r.0).sum();
            let bytes: u64 = res.iter().map(|r| r.1).sum();
            let hard: u32 = res.iter().map(|r| r.2).sum();
            assert_eq!(hard, 1, "hard expiry notified exactly once");
            if let Some(hp) = limits.hard_packets {
                assert!(pkts <= hp);
                if limits.hard_bytes.is_none() || hp * size < limits.hard_bytes.unwrap() {
                    assert_eq!(pkts, hp, "packet limit reached exactly");
                }
            }
            if let Some(hb) = limits.hard_bytes {
                assert!(bytes <= hb);
                if limits.hard_packets.is_none() {
                    assert!(
                        bytes > hb - size,
                        "byte limit reached within one packet: {bytes}"
                    );
                }
            }
        }
    }
    /// Review finding on `sa_update`: a worker still holding the replaced SA, whose drained
    /// budget runs dry, refused with a hard notification naming the SPI the new SA holds, and
    /// the control thread then removed the new SA. A superseded lifetime notifies nothing;
    /// the new one carries the soft notification already given and the consumed budget.
    #[test]
    fn a_superseded_lifetime_notifies_nothing() {
        let limits = Limits {
            soft_packets: Some(10),
            hard_packets: Some(100_000),
            ..lim()
        };
        let prev = Lifetime::new(limits, 0, 2);
        let soft = (0..20)
            .filter(|_| prev.admit(0, 1, 0) == Admit::PassSoft)
            .count();
        assert_eq!(soft, 1);
        let next = Lifetime::succeed(limits, 2, &prev, (20, 20));
        let mut refused = false;
        for _ in 0..200_000 {
            match prev.admit(0, 1, 0) {
                Admit::Pass => {}
                Admit::Refuse => {
                    refused = true;
                    break;
                }
                other => panic!("a superseded lifetime notified: {other:?}"),
            }
        }
        assert!(refused, "the drained budget ran dry");
        assert_eq!(prev.unannounced(), (false, false));
        assert!(!prev.announce(true) && !prev.announce(false));
        assert!(next.soft_fired(), "the soft notification is carried");
        assert!(
            !next.announce(true),
            "a stale hard event is refused by the new SA"
        );
        assert!(next.announce(false) && !next.announce(false));
        let passed = (0..200_000)
            .filter(|_| matches!(next.admit(1, 1, 0), Admit::Pass | Admit::PassSoft))
            .count();
        assert!(
            passed <= 100_000 - 20,
            "the consumed part admitted again: {passed}"
        );
    }

    #[test]
    fn each_notification_is_announced_once() {
        let l = Lifetime::new(
            Limits {
                soft_packets: Some(1),
                hard_packets: Some(2),
                ..lim()
            },
            0,
            1,
        );
        assert_eq!(l.unannounced(), (false, false));
        assert!(
            !l.announce(false),
            "an event this SA never fired (a replaced SA's) is stale"
        );
        assert_eq!(l.admit(0, 1, 0), Admit::PassSoft);
        assert_eq!(l.unannounced(), (true, false));
        assert!(l.announce(false));
        assert!(!l.announce(false), "announced twice");
        assert_eq!(l.admit(0, 1, 0), Admit::Pass);
        assert_eq!(l.admit(0, 1, 0), Admit::RefuseHard);
        assert_eq!(l.unannounced(), (false, true));
        assert!(l.announce(true));
        assert!(!l.announce(true));
        assert_eq!(l.unannounced(), (false, false));
    }

    /// Packet index (0-based; packet i is sent at i seconds after install, 100 bytes each) at
    /// which each limit of the table below takes effect.
    const SOFT_PACKETS: (u64, u64) = (5, 4);
    const HARD_PACKETS: (u64, u64) = (11, 11);
    const SOFT_BYTES: (u64, u64) = (250, 2);
    const HARD_BYTES: (u64, u64) = (1250, 12);
    const SOFT_SECONDS: (u64, u64) = (7, 7);
    const HARD_SECONDS: (u64, u64) = (9, 9);
    const SOFT_USE: (u64, u64) = (3, 3);
    const HARD_USE: (u64, u64) = (10, 10);

    /// Every combination of the eight limits present or absent (256): each hard limit holds on
    /// the data path by itself (the packet at its index is refused, notified once, and nothing
    /// passes after it), and the earliest soft limit fires once, on the packet at its index.
    #[test]
    fn every_hard_limit_holds_inline_in_every_combination() {
        for mask in 0u32..256 {
            let pick = |bit: u32, (v, i): (u64, u64)| (mask & (1 << bit) != 0).then_some((v, i));
            let table = [
                pick(0, SOFT_PACKETS),
                pick(1, HARD_PACKETS),
                pick(2, SOFT_BYTES),
                pick(3, HARD_BYTES),
                pick(4, SOFT_SECONDS),
                pick(5, HARD_SECONDS),
                pick(6, SOFT_USE),
                pick(7, HARD_USE),
            ];
            let v = |k: usize| table[k].map(|(v, _)| v);
            let limits = Limits {
                soft_packets: v(0),
                hard_packets: v(1),
                soft_bytes: v(2),
                hard_bytes: v(3),
                soft_seconds: v(4),
                hard_seconds: v(5),
                soft_use_seconds: v(6),
                hard_use_seconds: v(7),
            };
            limits.validate().unwrap();
            let first = |odd: usize| {
                (0..8)
                    .filter(|k| k % 2 == odd)
                    .filter_map(|k| table[k].map(|(_, i)| i))
                    .min()
            };
            let hard_at = first(1).unwrap_or(u64::MAX);
            let soft_at = first(0).filter(|s| *s < hard_at);
            // Outbound: one admit per packet. Inbound: the time pre-check, then admit.
            let out = Lifetime::new(limits, 0, 1);
            let inb = Lifetime::new(limits, 0, 1);
            let (mut hard_out, mut hard_in) = (0, 0);
            for i in 0..16u64 {
                let now = i * NS;
                let a = out.admit(0, 100, now);
                let b = match inb.check_time(now) {
                    Admit::Pass => inb.admit(0, 100, now),
                    refused => refused,
                };
                for (a, hard) in [(a, &mut hard_out), (b, &mut hard_in)] {
                    let want_pass = i < hard_at;
                    let passed = matches!(a, Admit::Pass | Admit::PassSoft);
                    assert_eq!(passed, want_pass, "{limits:?} packet {i}: {a:?}");
                    assert_eq!(
                        a == Admit::PassSoft,
                        soft_at == Some(i),
                        "{limits:?} packet {i}: {a:?}"
                    );
                    if a == Admit::RefuseHard {
                        assert_eq!(i, hard_at, "{limits:?}: hard notified late");
                        *hard += 1;
                    }
                }
            }
            let want_hard = u32::from(hard_at < 16);
            assert_eq!((hard_out, hard_in), (want_hard, want_hard), "{limits:?}");
        }
    }

    /// Admits packets of `size` from `cores` cores in a seeded pseudo-random order until the
    /// soft limit fires; returns the total admitted (including the packet that fired).
    fn admitted_when_soft_fires(limits: Limits, cores: usize, size: u64, seed: u64) -> u64 {
        let l = Lifetime::new(limits, 0, cores);
        let mut x = seed | 1;
        let mut total = 0;
        loop {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let a = l.admit((x % cores as u64) as usize, size, 0);
            assert!(
                matches!(a, Admit::Pass | Admit::PassSoft),
                "{limits:?}: {a:?}"
            );
            total += if limits.soft_packets.is_some() {
                1
            } else {
                size
            };
            if a == Admit::PassSoft {
                return total;
            }
        }
    }

    /// A soft byte or packet limit fires no earlier than its value and at most
    /// min(soft, hard - soft)/64 plus one packet after it (soft/64 without a hard limit), on 1
    /// and on 4 cores.
    #[test]
    fn soft_limits_fire_within_tolerance_of_their_value() {
        let cases = [
            // (limits, packet size)
            (
                Limits {
                    soft_packets: Some(1000),
                    ..lim()
                },
                1,
            ),
            (
                Limits {
                    soft_packets: Some(3_000_000),
                    ..lim()
                },
                1,
            ),
            (
                Limits {
                    soft_packets: Some(100_000),
                    hard_packets: Some(120_000),
                    ..lim()
                },
                1,
            ),
            (
                Limits {
                    soft_bytes: Some(4_000_000),
                    ..lim()
                },
                1400,
            ),
            (
                Limits {
                    soft_bytes: Some(4_000_000),
                    hard_bytes: Some(4_100_000),
                    ..lim()
                },
                1400,
            ),
            (
                Limits {
                    soft_bytes: Some(900_000_000),
                    hard_bytes: Some(1_000_000_000),
                    ..lim()
                },
                9000,
            ),
        ];
        for (limits, size) in cases {
            let soft = limits.soft_packets.or(limits.soft_bytes).unwrap();
            let hard = limits
                .hard_packets
                .or(limits.hard_bytes)
                .unwrap_or(u64::MAX);
            let unit = if limits.soft_packets.is_some() {
                1
            } else {
                size
            };
            let late = soft.min(hard - soft) / 64 + unit;
            for cores in [1, 4] {
                for seed in [1, 7, 12345] {
                    let at = admitted_when_soft_fires(limits, cores, size, seed);
                    assert!(
                        at >= soft && at <= soft + late,
                        "{limits:?} on {cores} cores: soft fired at {at}"
                    );
                }
            }
        }
    }
}

/// Loom models of the budget protocol (`cargo test --release --features loom --lib loom_`):
/// cores take leases, refill, steal each other's leases back and refuse, in every interleaving
/// of their atomic operations with up to 3 preemptions (4 for the cheap soft-only model; with
/// 4 the soft+hard and bytes models passed too, in 3-10 minutes each). `SHARE` is 1 here, so
/// even tiny limits are leased in chunks of more than one unit.
#[cfg(all(test, feature = "loom"))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// One core's traffic: packets of `size` until it has passed `want` of them or the SA
    /// expired. Returns (units passed, soft notifications, hard notifications).
    fn drive(l: &Lifetime, core: usize, want: u64, size: u64) -> (u64, u32, u32) {
        let (mut pass, mut soft, mut hard) = (0, 0, 0);
        while pass < want * size && !l.is_expired() {
            match l.admit(core, size, 0) {
                Admit::Pass => pass += size,
                Admit::PassSoft => {
                    pass += size;
                    soft += 1;
                }
                Admit::RefuseHard => hard += 1,
                // Refused while another core holds budget in flight: try again later.
                Admit::Refuse => loom::thread::yield_now(),
            }
        }
        (pass, soft, hard)
    }

    /// Core i sends `want[i]` packets of `size[i]` units (bytes when `limits` limits bytes,
    /// else packets of one unit) to an SA with `limits`; checks the budget's books balance, the
    /// hard limit is never passed and is reached when demand exceeds it (to within one packet
    /// for bytes), and each notification fires exactly once when due.
    fn run(limits: Limits, want: &'static [u64], size: &'static [u64], bound: usize) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(bound);
        b.check(move || {
            let cores = want.len();
            let l = Arc::new(Lifetime::new(limits, 0, cores));
            let handles: Vec<_> = (1..cores)
                .map(|core| {
                    let l = l.clone();
                    loom::thread::spawn(move || drive(&l, core, want[core], size[core]))
                })
                .collect();
            let mut res = vec![drive(&l, 0, want[0], size[0])];
            res.extend(handles.into_iter().map(|h| h.join().unwrap()));
            let passed: u64 = res.iter().map(|r| r.0).sum();
            let soft: u32 = res.iter().map(|r| r.1).sum();
            let hard: u32 = res.iter().map(|r| r.2).sum();
            let (budget, soft_limit, hard_limit) = match &l.packets {
                Some(p) => (p, limits.soft_packets, limits.hard_packets),
                None => (
                    l.bytes.as_ref().unwrap(),
                    limits.soft_bytes,
                    limits.hard_bytes,
                ),
            };
            let held: u64 = budget
                .leases
                .iter()
                .map(|x| x.load(Ordering::Acquire))
                .sum();
            assert_eq!(budget.unleased() + held + passed, budget.limit(), "books");
            let demand: u64 = want.iter().zip(size).map(|(w, s)| w * s).sum();
            let largest = *size.iter().max().unwrap();
            match hard_limit {
                Some(h) => {
                    assert!(passed <= h, "admitted {passed} past the hard limit {h}");
                    if demand > h {
                        assert!(passed > h - largest, "only {passed} of {h} admitted");
                        if largest == 1 {
                            assert_eq!(passed, h, "demand exceeded the limit: all admitted");
                        }
                        assert_eq!(hard, 1, "hard notified exactly once");
                        assert!(l.is_expired());
                    } else {
                        assert_eq!((passed, hard), (demand, 0));
                    }
                }
                None => assert_eq!((passed, hard), (demand, 0)),
            }
            if let Some(s) = soft_limit {
                let (q, _) = budget.soft_point();
                // Certain to be crossed once this much has passed (module docs).
                if passed >= s + cores as u64 * q + largest {
                    assert_eq!(soft, 1, "soft notified exactly once ({passed} passed)");
                } else {
                    assert!(soft <= 1);
                }
            } else {
                assert_eq!(soft, 0);
            }
        });
    }

    /// Two cores against a hard limit of 4 with a soft limit of 2 (leases of 1, stealing at
    /// the end): exactly 4 admitted, one soft and one hard notification.
    #[test]
    fn loom_two_cores_soft_and_hard() {
        let limits = Limits {
            soft_packets: Some(2),
            hard_packets: Some(4),
            ..Limits::default()
        };
        run(limits, &[3, 3], &[1, 1], 3);
    }

    /// Three cores against a hard limit of 5 without a soft limit: leases of 1 and steals
    /// among three, exactly 5 admitted, one hard notification.
    #[test]
    fn loom_three_cores_hard_only() {
        let limits = Limits {
            hard_packets: Some(5),
            ..Limits::default()
        };
        run(limits, &[2, 2, 2], &[1, 1, 1], 3);
    }

    /// Demand below the limit: nothing refused, nothing notified, books balance.
    #[test]
    fn loom_two_cores_under_the_limit() {
        let limits = Limits {
            hard_packets: Some(5),
            ..Limits::default()
        };
        run(limits, &[2, 2], &[1, 1], 3);
    }

    /// A soft limit without a hard one: fires exactly once, leases capped until then.
    #[test]
    fn loom_two_cores_soft_only() {
        let limits = Limits {
            soft_packets: Some(3),
            ..Limits::default()
        };
        run(limits, &[3, 3], &[1, 1], 4);
    }

    /// Bytes, packets of 2 and 1 bytes against 7 (soft 3): never past 7, at least 6 admitted,
    /// one soft and one hard notification.
    #[test]
    fn loom_two_cores_bytes_mixed_sizes() {
        let limits = Limits {
            soft_bytes: Some(3),
            hard_bytes: Some(7),
            ..Limits::default()
        };
        run(limits, &[3, 3], &[2, 1], 3);
    }
}
