//! One SA: immutable parameters (keys zeroized on drop, never printed) plus per-core mutable
//! state on separate cache lines.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::lifetime::{Lifetime, Limits};
use super::policy::Selector;
use crate::esp::aead::{Aead, AeadFailure, AeadKey, Backend, Nonce, TAG_LEN};
use crate::esp::replay::ReplayWindow;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[serde(alias = "in")]
    Inbound,
    #[serde(alias = "out")]
    Outbound,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Tunnel,
    Transport,
}

/// Outer addresses of a tunnel-mode SA, seen from this gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    pub local: IpAddr,
    pub remote: IpAddr,
}

/// RFC 3948 ESP-in-UDP ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpEncap {
    pub src_port: u16,
    pub dst_port: u16,
}

/// Everything needed to build an SA. `keymat` is the RFC 4106 key material: the AES key
/// followed by the 4-byte salt (20 or 36 bytes), as `ip xfrm` and Wireshark take it.
#[derive(Clone)]
pub struct SaParams {
    pub spi: u32,
    pub direction: Direction,
    pub mode: Mode,
    pub endpoints: Option<Endpoints>,
    pub encap: Option<UdpEncap>,
    pub esn: bool,
    pub keymat: Zeroizing<Vec<u8>>,
    pub backend: Backend,
    pub limits: Limits,
    pub replay_window: u32,
    /// Inbound: the decapsulated packet (the inner one in tunnel mode, the packet itself in
    /// transport mode) must match one of these selectors: addresses, protocol and ports
    /// (RFC 4301 §5.2). Empty: no check.
    pub inner: Vec<Selector>,
    /// Largest outer packet (IP header onwards) the cipher side carries.
    pub mtu: u16,
}

impl fmt::Debug for SaParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaParams")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("direction", &self.direction)
            .field("mode", &self.mode)
            .field("endpoints", &self.endpoints)
            .field("encap", &self.encap)
            .field("esn", &self.esn)
            .field("keymat", &"<redacted>")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Why SA parameters were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaError {
    #[error(
        "key: expected 20 bytes (AES-128 key + salt) or 36 bytes (AES-256 key + salt), got {0}"
    )]
    KeyLength(usize),
    #[error("spi: {0:#x} is reserved (RFC 4303 §2.1: SPIs 0-255 are not for SAs)")]
    ReservedSpi(u32),
    #[error("backend: {0} is not built into this binary")]
    Backend(Backend),
    #[error("endpoints: tunnel mode needs local and remote addresses of one family")]
    Endpoints,
    #[error("encap: UDP encapsulation is only supported in tunnel mode")]
    TransportEncap,
    #[error("replay_window: {0} is not a power of two in 64..=4096")]
    ReplayWindow(u32),
    #[error("lifetime: {0}")]
    Lifetime(String),
    #[error("{0}")]
    Successor(SuccessorError),
}

/// The state of an SA that must move with it (to a same-key successor, a standby gateway, or
/// across a restart): RFC 4303's sequence counter and replay window, and the consumed part
/// of its lifetime. `sa_get` returns it and `sa_add` accepts it (PROTOCOL.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaState {
    /// Outbound: the last sequence number used (the next packet carries `seq + 1`). With ESN
    /// the full 64-bit number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Inbound: the highest sequence number accepted (64-bit with ESN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_top: Option<u64>,
    /// Inbound: bit i (of word i / 64, bit i % 64) set when `replay_top - i` was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_bitmap: Option<Vec<u64>>,
    /// Packets and bytes counted against the lifetime so far.
    #[serde(default)]
    pub packets: u64,
    #[serde(default)]
    pub bytes: u64,
    /// Seconds since the SA was first installed (its add-time limits count from then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
}

/// Per-core counters of one SA, written only by their core.
#[derive(Debug, Default)]
pub struct SaCoreStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Packets refused by the replay window (written only on that drop path).
    pub replay_failures: AtomicU64,
    /// Packets whose ICV did not verify (written only on that drop path).
    pub integrity_failures: AtomicU64,
}

/// An inbound failure counted per SA (see [`Sa::count_failure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaFailure {
    Replay,
    Integrity,
}

/// A live SA. Immutable after construction except for atomics.
///
/// `repr(C)` keeps the fields every packet reads together at the start (about two cache
/// lines, which `prefetch_inbound` loads early); the lifetime budgets and the outbound
/// sequence counter sit on their own lines after them.
#[repr(C)]
pub struct Sa {
    pub spi: u32,
    pub direction: Direction,
    pub mode: Mode,
    pub esn: bool,
    pub mtu: u16,
    pub key_bits: u16,
    salt: [u8; 4],
    pub backend: Backend,
    aead: AeadKey,
    pub inner: Box<[Selector]>,
    cores: Box<[CachePadded<SaCoreStats>]>,
    /// Inbound anti-replay window. Shared with the SA's same-key successors (`sa_update`), so
    /// a number accepted before an update is still refused after it.
    pub replay: Option<Arc<ReplayWindow>>,
    pub endpoints: Option<Endpoints>,
    pub encap: Option<UdpEncap>,
    /// Outbound tunnel over IPv4: the outer header with total length and TOS zero, and the
    /// ones'-complement sum of its constant words (the checksum is finished per packet).
    outer_v4: Option<([u8; 20], u32)>,
    /// Set at construction, cleared on drop: lets stress tests catch use after free.
    canary: AtomicU64,
    pub lifetime: Lifetime,
    /// Keyed fingerprint of the key material (see [`key_id`]): lets the control thread refuse
    /// a key installed twice in one direction without keeping a second copy of the key.
    pub key_id: [u8; 16],
    /// Outbound sequence counter. Shared with the SA's same-key successors (`sa_update`): a
    /// key never sees a sequence number (hence a GCM nonce) twice.
    seq: Arc<CachePadded<SeqCounter>>,
    /// Index of the tunnel the SA belongs to (`u32::MAX`: not known yet). Set by the control
    /// thread before the SA is published; read by the metrics endpoint, never per packet.
    tunnel: AtomicU32,
    /// Key ‖ salt, for the key export (`sa_export`) only: never read on the packet path, never
    /// printed, wiped on drop.
    keymat: Zeroizing<Box<[u8]>>,
}

/// Why no sequence number could be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqShort {
    /// RFC 4303 §3.3.3: the space (2^32 - 1, or 2^64 - 1 with ESN) is used up; the SA is dead.
    Exhausted,
    /// The numbers below the space's end are not yet covered by the persisted high-water mark
    /// of a static SA (see `sa::seqstate`): the packet is refused until the control thread
    /// has written the next block to disk.
    Unsaved,
}

/// The outbound sequence counter of one key (RFC 4303 §3.3.3, RFC 4106 §3.1: the IV is the
/// sequence number, so a number must never be used twice under one key).
///
/// Numbers are handed out in blocks by a compare-and-swap loop that never passes `cap`, so a
/// concurrent taker can never wrap the counter and get small numbers again. `cap` is the end
/// of the sequence space, or lower while a static SA's persisted high-water mark lags.
#[derive(Debug)]
pub struct SeqCounter {
    /// Last number handed out (0: none).
    last: crate::sync::atomic::AtomicU64,
    /// Highest number that may be handed out now.
    cap: crate::sync::atomic::AtomicU64,
    /// End of the sequence space.
    max: u64,
}

impl SeqCounter {
    pub fn new(esn: bool) -> Self {
        let max = if esn { u64::MAX } else { u32::MAX as u64 };
        Self {
            last: crate::sync::atomic::AtomicU64::new(0),
            cap: crate::sync::atomic::AtomicU64::new(max),
            max,
        }
    }

    /// Takes up to `n` (≥ 1) consecutive numbers: `(first, last)`, inclusive.
    #[inline]
    pub fn take(&self, n: u64) -> Result<(u64, u64), SeqShort> {
        let mut cur = self.last.load(Ordering::Acquire);
        loop {
            let cap = self.cap.load(Ordering::Acquire);
            if cur >= cap {
                return Err(if cur >= self.max {
                    SeqShort::Exhausted
                } else {
                    SeqShort::Unsaved
                });
            }
            let end = cur.saturating_add(n.max(1)).min(cap);
            match self
                .last
                .compare_exchange_weak(cur, end, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok((cur + 1, end)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Last number handed out.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// End of the sequence space.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Highest number that may be handed out now.
    pub fn cap(&self) -> u64 {
        self.cap.load(Ordering::Acquire)
    }

    /// Sets the highest number that may be handed out (clamped to the space's end).
    pub fn set_cap(&self, cap: u64) {
        self.cap.store(cap.min(self.max), Ordering::Release);
    }

    /// Continues after `last` (import, tests). Never moves the counter backwards.
    pub fn advance_to(&self, last: u64) {
        self.last.fetch_max(last.min(self.max), Ordering::AcqRel);
    }
}

/// A keyed fingerprint of key material: HMAC-SHA-256 under a random key drawn once per
/// process, truncated to 128 bits. Equal keys give equal ids within one process; the id says
/// nothing about the key to anyone without the process key.
pub fn key_id(keymat: &[u8]) -> [u8; 16] {
    use aws_lc_rs::{hmac, rand};
    use std::sync::OnceLock;
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    let k = KEY.get_or_init(|| {
        hmac::Key::generate(hmac::HMAC_SHA256, &rand::SystemRandom::new())
            .expect("the system random source works")
    });
    let tag = hmac::sign(k, keymat);
    let mut id = [0u8; 16];
    id.copy_from_slice(&tag.as_ref()[..16]);
    id
}

/// Why an SA cannot succeed another under the same key (`sa_update`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SuccessorError {
    #[error(
        "esn: cannot change on an update that keeps the key (the sequence space would change); install a new SA with a new key"
    )]
    Esn,
    #[error(
        "replay_window: cannot change from {0} to {1} on an update that keeps the key; install a new SA with a new key"
    )]
    ReplayWindow(u64, u64),
    #[error("direction: an update cannot change the direction")]
    Direction,
}

const CANARY: u64 = 0x5a5a_e5d0_0000_0000;

impl Sa {
    /// Builds an SA for `cores` workers, installed at `now` (ns).
    pub fn new(p: &SaParams, cores: usize, now: u64) -> Result<Self, SaError> {
        if p.spi < 256 {
            return Err(SaError::ReservedSpi(p.spi));
        }
        let key_len = match p.keymat.len() {
            20 => 16,
            36 => 32,
            n => return Err(SaError::KeyLength(n)),
        };
        if !Backend::available().contains(&p.backend) {
            return Err(SaError::Backend(p.backend));
        }
        match (p.mode, p.endpoints) {
            (Mode::Tunnel, Some(e)) if e.local.is_ipv4() == e.remote.is_ipv4() => {}
            (Mode::Tunnel, _) => return Err(SaError::Endpoints),
            _ => {}
        }
        if p.mode == Mode::Transport && p.encap.is_some() {
            return Err(SaError::TransportEncap);
        }
        if !(64..=4096).contains(&p.replay_window) || !p.replay_window.is_power_of_two() {
            return Err(SaError::ReplayWindow(p.replay_window));
        }
        p.limits.validate().map_err(SaError::Lifetime)?;
        let aead = AeadKey::new(p.backend, &p.keymat[..key_len])
            .map_err(|AeadFailure| SaError::KeyLength(p.keymat.len()))?;
        let mut salt = [0u8; 4];
        salt.copy_from_slice(&p.keymat[key_len..]);
        Ok(Self {
            key_id: key_id(&p.keymat),
            spi: p.spi,
            direction: p.direction,
            mode: p.mode,
            endpoints: p.endpoints,
            encap: p.encap,
            esn: p.esn,
            mtu: p.mtu,
            inner: p.inner.clone().into_boxed_slice(),
            backend: p.backend,
            key_bits: (key_len * 8) as u16,
            aead,
            salt,
            lifetime: Lifetime::new(p.limits, now, cores),
            replay: (p.direction == Direction::Inbound)
                .then(|| Arc::new(ReplayWindow::new(p.replay_window))),
            seq: Arc::new(CachePadded::new(SeqCounter::new(p.esn))),
            cores: (0..cores.max(1))
                .map(|_| CachePadded::new(SaCoreStats::default()))
                .collect(),
            canary: AtomicU64::new(CANARY | p.spi as u64),
            outer_v4: outer_v4_template(p),
            tunnel: AtomicU32::new(u32::MAX),
            keymat: Zeroizing::new(p.keymat.as_slice().into()),
        })
    }

    /// Key ‖ salt (RFC 4106 key material), for `sa_export` (Wireshark's `esp_sa` table) only.
    pub fn keymat(&self) -> &[u8] {
        &self.keymat
    }

    /// Builds the SA that replaces `prev` under the same SPI (`sa_update`). With the same key
    /// it takes over `prev`'s state: the outbound sequence counter and the inbound replay
    /// window are shared (not copied, so numbers `prev` hands out or accepts while workers
    /// still hold it count for both), and the lifetime continues from what `prev` consumed
    /// (install time, first use, bytes and packets; see [`Lifetime::succeed`]). With a new
    /// key it starts afresh: new nonces, and old packets fail authentication.
    pub fn successor(p: &SaParams, cores: usize, now: u64, prev: &Sa) -> Result<Self, SaError> {
        let mut sa = Sa::new(p, cores, now)?;
        if sa.key_id != prev.key_id {
            return Ok(sa);
        }
        if sa.direction != prev.direction {
            return Err(SaError::Successor(SuccessorError::Direction));
        }
        if sa.esn != prev.esn {
            return Err(SaError::Successor(SuccessorError::Esn));
        }
        if let (Some(a), Some(b)) = (&prev.replay, &sa.replay)
            && a.window() != b.window()
        {
            return Err(SaError::Successor(SuccessorError::ReplayWindow(
                a.window(),
                b.window(),
            )));
        }
        sa.seq = prev.seq.clone();
        sa.replay = prev.replay.clone();
        let totals = prev.totals();
        sa.lifetime = Lifetime::succeed(p.limits, cores, &prev.lifetime, totals);
        // The counters continue too, so `sa_get` and metrics stay cumulative.
        sa.cores[0].packets.store(totals.0, Ordering::Relaxed);
        sa.cores[0].bytes.store(totals.1, Ordering::Relaxed);
        let (replay, integrity) = prev.failures();
        sa.cores[0].replay_failures.store(replay, Ordering::Relaxed);
        sa.cores[0]
            .integrity_failures
            .store(integrity, Ordering::Relaxed);
        sa.set_tunnel(prev.tunnel().unwrap_or(u32::MAX));
        Ok(sa)
    }

    /// The SA's state: what must move with it to a successor or a standby gateway.
    pub fn state(&self, now: u64) -> SaState {
        let (packets, bytes) = self.lifetime.used(self.totals());
        let mut st = SaState {
            seq: (self.direction == Direction::Outbound).then(|| self.seq.last()),
            replay_top: None,
            replay_bitmap: None,
            packets,
            bytes,
            age_seconds: Some(now.saturating_sub(self.lifetime.installed_ns()) / 1_000_000_000),
        };
        if let Some(r) = &self.replay {
            let top = r.top();
            st.replay_top = Some(top);
            // Bit i: number top - i was accepted (i < window).
            let w = r.window();
            let mut bits = vec![0u64; w.div_ceil(64) as usize];
            // Anything the window would not take now is marked accepted (a number that fell
            // out of the window while we looked was accepted or is too old: refused either way).
            for i in 0..w.min(top) {
                if r.check(top - i).is_err() {
                    bits[(i / 64) as usize] |= 1 << (i % 64);
                }
            }
            st.replay_bitmap = Some(bits);
        }
        st
    }

    /// Loads `st` into a new SA before it is published (an SA taken over from another
    /// gateway, or a static SA resuming after a restart). Sequence numbers continue after
    /// `st.seq`; the replay window accepts nothing at or below its top that `st` marks
    /// accepted, nor anything older than the window; lifetimes continue from what was
    /// consumed.
    pub fn import_state(&self, st: &SaState) -> Result<(), String> {
        if let Some(seq) = st.seq {
            if self.direction != Direction::Outbound {
                return Err("state.seq: only outbound SAs have a sequence counter".into());
            }
            if seq > self.seq.max() {
                return Err(format!(
                    "state.seq: {seq} is beyond the sequence space (at most {} without ESN)",
                    self.seq.max()
                ));
            }
            self.seq.advance_to(seq);
        }
        match (&self.replay, st.replay_top) {
            (None, Some(_)) => {
                return Err("state.replay_top: only inbound SAs have a replay window".into());
            }
            (Some(r), Some(top)) if top > 0 => {
                if !self.esn && top > u32::MAX as u64 {
                    return Err(format!(
                        "state.replay_top: {top} is beyond the 32-bit sequence space of a non-ESN SA"
                    ));
                }
                let w = r.window();
                // No bitmap: every number up to the top counts as accepted (the safe side).
                let all = vec![u64::MAX; w.div_ceil(64) as usize];
                let bits = st.replay_bitmap.as_deref().unwrap_or(&all);
                if bits.len() as u64 > w.div_ceil(64) {
                    return Err(format!(
                        "state.replay_bitmap: {} bits, more than the window ({w})",
                        bits.len() * 64
                    ));
                }
                // Oldest first, so each commit lands inside the window; the top last.
                for i in (1..w.min(top)).rev() {
                    let set = bits
                        .get((i / 64) as usize)
                        .is_some_and(|b| b & (1 << (i % 64)) != 0);
                    if set {
                        let _ = r.commit(top - i);
                    }
                }
                let _ = r.commit(top);
            }
            _ => {}
        }
        self.lifetime.charge(st.packets, st.bytes);
        Ok(())
    }

    /// The outbound sequence counter (shared by the SA and its same-key successors).
    pub fn seq_counter(&self) -> &SeqCounter {
        &self.seq
    }

    /// A handle on the outbound sequence counter, for the state file that persists it.
    pub fn seq_handle(&self) -> Arc<CachePadded<SeqCounter>> {
        self.seq.clone()
    }

    /// The precomputed outer IPv4 header, if this SA sends tunnel mode over IPv4.
    #[inline]
    pub fn outer_v4(&self) -> Option<&([u8; 20], u32)> {
        self.outer_v4.as_ref()
    }

    /// True while the SA has not been dropped (for stress tests).
    pub fn canary_ok(&self) -> bool {
        self.canary.load(Ordering::Acquire) == CANARY | self.spi as u64
    }

    /// RFC 4106 §4: nonce = salt ‖ explicit IV.
    #[inline]
    pub fn nonce(&self, iv: &[u8; 8]) -> Nonce {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.salt);
        n[4..].copy_from_slice(iv);
        n
    }

    #[inline]
    pub fn seal(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        data: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        self.aead.seal(nonce, aad, data, tag)
    }

    #[inline]
    pub fn open(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        self.aead.open(nonce, aad, data, tag)
    }

    /// Starts loading the SA's own hot lines: the fields every packet reads, the lifetime state
    /// and (outbound) the sequence counter: addresses inside the SA, no load needed to compute
    /// them. The pipeline calls this for a whole batch (inbound then `prefetch_state`).
    #[inline]
    pub fn prefetch_head(&self) {
        crate::sys::prefetch(self);
        crate::sys::prefetch(&self.replay);
        crate::sys::prefetch(&self.outer_v4);
        self.lifetime.prefetch_head();
        if self.direction == Direction::Outbound {
            crate::sys::prefetch(&*self.seq);
        }
    }

    /// Starts loading what packet `seq` on `core` touches behind the SA's pointers: its replay
    /// window word, its per-core counters and budget leases, its inner selectors and, where
    /// reachable (RustCrypto), the AEAD key schedule.
    #[inline]
    pub fn prefetch_state(&self, core: usize, seq: u64) {
        if let Some(r) = &self.replay {
            r.prefetch(seq);
        }
        if let Some(c) = self.cores.get(core) {
            crate::sys::prefetch(c);
        }
        self.lifetime.prefetch_leases(core);
        if let Some(sel) = self.inner.first() {
            crate::sys::prefetch(sel);
        }
        self.aead.prefetch();
    }

    /// Takes the next outbound sequence number (see [`SeqCounter::take`]).
    #[inline]
    pub fn next_seq(&self) -> Result<u64, SeqShort> {
        self.take_seqs(1).map(|(first, _)| first)
    }

    /// Takes a block of up to `n` (≥ 1) consecutive sequence numbers: `(first, last)`,
    /// inclusive. Never wraps (RFC 4303 §3.3.3: the SA must be replaced instead).
    #[inline]
    pub fn take_seqs(&self, n: u64) -> Result<(u64, u64), SeqShort> {
        self.seq.take(n)
    }

    /// Last sequence number sent.
    pub fn last_seq(&self) -> u64 {
        self.seq.last()
    }

    /// Test and import hook, before the SA is published: continue the sequence after `seq`
    /// (never backwards).
    pub fn set_seq(&self, seq: u64) {
        self.seq.advance_to(seq);
    }

    /// Counts one packet of `bytes` on `core` (single writer per core: no atomic RMW).
    #[inline]
    pub fn count(&self, core: usize, bytes: u64) {
        let c = &self.cores[core % self.cores.len()];
        c.packets
            .store(c.packets.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        c.bytes
            .store(c.bytes.load(Ordering::Relaxed) + bytes, Ordering::Relaxed);
    }

    /// Counts one inbound packet refused by the replay window or the ICV check, on `core`.
    /// Only the drop paths call this, on the SA's per-core line: the fast path writes nothing
    /// more.
    #[inline]
    pub fn count_failure(&self, core: usize, f: SaFailure) {
        let c = &self.cores[core % self.cores.len()];
        let n = match f {
            SaFailure::Replay => &c.replay_failures,
            SaFailure::Integrity => &c.integrity_failures,
        };
        n.store(n.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Replay and integrity failures over all cores.
    pub fn failures(&self) -> (u64, u64) {
        self.cores.iter().fold((0, 0), |(r, i), c| {
            (
                r + c.replay_failures.load(Ordering::Relaxed),
                i + c.integrity_failures.load(Ordering::Relaxed),
            )
        })
    }

    /// Records the tunnel the SA belongs to (the control thread, before publishing it).
    pub fn set_tunnel(&self, t: u32) {
        self.tunnel.store(t, Ordering::Relaxed);
    }

    /// The tunnel the SA belongs to, once the control thread has recorded it.
    pub fn tunnel(&self) -> Option<u32> {
        let t = self.tunnel.load(Ordering::Relaxed);
        (t != u32::MAX).then_some(t)
    }

    /// Packets and bytes over all cores.
    pub fn totals(&self) -> (u64, u64) {
        self.cores.iter().fold((0, 0), |(p, b), c| {
            (
                p + c.packets.load(Ordering::Relaxed),
                b + c.bytes.load(Ordering::Relaxed),
            )
        })
    }
}

fn outer_v4_template(p: &SaParams) -> Option<([u8; 20], u32)> {
    use crate::wire::{checksum, ipv4, proto};
    match (p.direction, p.mode, p.endpoints) {
        (
            Direction::Outbound,
            Mode::Tunnel,
            Some(Endpoints {
                local: IpAddr::V4(src),
                remote: IpAddr::V4(dst),
            }),
        ) => {
            let mut h = [0u8; 20];
            let protocol = if p.encap.is_some() {
                proto::UDP
            } else {
                proto::ESP
            };
            ipv4::Ipv4Repr {
                src,
                dst,
                protocol,
                payload_len: 0,
                tos: 0,
                ttl: crate::esp::encap::OUTER_TTL,
                dont_frag: true,
            }
            .emit(&mut h);
            h[2] = 0;
            h[3] = 0;
            h[10] = 0;
            h[11] = 0;
            Some((h, checksum::fold(checksum::sum(0, &h)) as u32))
        }
        _ => None,
    }
}

impl Drop for Sa {
    fn drop(&mut self) {
        self.canary.store(0, Ordering::Release);
        self.salt.zeroize();
    }
}

impl fmt::Debug for Sa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sa")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("direction", &self.direction)
            .field("mode", &self.mode)
            .field("endpoints", &self.endpoints)
            .field("aead", &self.aead)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    /// Defect 10 of issue 11: with the counter near the end of the space, concurrent takers
    /// never get a number twice, never a number at or below the preset, never past the end.
    /// (The old `fetch_add` wrapped past 2^64 before the cap was stored; a concurrent taker
    /// then got small numbers again.)
    fn near_the_end(esn: bool) {
        let max = if esn { u64::MAX } else { u32::MAX as u64 };
        for trial in 0..2000u64 {
            let c = Arc::new(SeqCounter::new(esn));
            let preset = max - 40 - trial % 8;
            c.advance_to(preset);
            let takers: Vec<_> = (0..2)
                .map(|t| {
                    let c = c.clone();
                    std::thread::spawn(move || {
                        let mut got = Vec::new();
                        for i in 0..40u64 {
                            if let Ok((a, b)) = c.take(1 + (i + t) % 7) {
                                got.extend(a..=b);
                            }
                        }
                        got
                    })
                })
                .collect();
            let mut all: Vec<u64> = takers.into_iter().flat_map(|t| t.join().unwrap()).collect();
            all.sort_unstable();
            let n = all.len();
            all.dedup();
            assert_eq!(all.len(), n, "a number was taken twice");
            assert!(all.iter().all(|&s| s > preset && s <= max), "{all:?}");
            assert_eq!(
                all.len() as u64,
                max - preset,
                "every number up to the end used"
            );
            assert_eq!(c.take(1), Err(SeqShort::Exhausted));
            assert_eq!(c.last(), max);
        }
    }

    #[test]
    fn seq_counter_near_the_esn_end() {
        near_the_end(true);
    }

    #[test]
    fn seq_counter_near_the_32_bit_end() {
        near_the_end(false);
    }

    #[test]
    fn seq_counter_cap_refuses_unsaved_numbers_until_raised() {
        let c = SeqCounter::new(false);
        c.set_cap(10);
        assert_eq!(c.take(8), Ok((1, 8)));
        assert_eq!(c.take(8), Ok((9, 10)));
        assert_eq!(c.take(1), Err(SeqShort::Unsaved));
        c.set_cap(12);
        assert_eq!(c.take(1), Ok((11, 11)));
        c.set_cap(u64::MAX);
        assert_eq!(c.cap(), u32::MAX as u64);
        c.advance_to(u64::MAX);
        assert_eq!(c.last(), u32::MAX as u64);
        assert_eq!(c.take(1), Err(SeqShort::Exhausted));
    }
}

#[cfg(all(test, feature = "loom"))]
mod loom_tests {
    use super::*;

    /// Every interleaving of two takers with the counter two numbers before the end of the
    /// ESN space, one asking for more than is left: the numbers handed out are distinct and
    /// all above the preset. (The old `fetch_add` wrapped the counter to 0 before storing the
    /// cap, and the other taker got 1 again.)
    #[test]
    fn loom_seq_counter_never_wraps() {
        loom::model(|| {
            let c = Arc::new(SeqCounter::new(true));
            c.advance_to(u64::MAX - 2);
            let c2 = c.clone();
            let t = loom::thread::spawn(move || c2.take(3));
            let mine = c.take(1);
            let theirs = t.join().unwrap();
            let mut all = Vec::new();
            for r in [mine, theirs].into_iter().flatten() {
                all.extend(r.0..=r.1);
            }
            all.sort_unstable();
            assert_eq!(all, [u64::MAX - 1, u64::MAX]);
        });
    }
}
