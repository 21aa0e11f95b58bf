//! One SA: immutable parameters (keys zeroized on drop, never printed) plus per-core mutable
//! state on separate cache lines.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

/// Per-core counters of one SA, written only by their core.
#[derive(Debug, Default)]
pub struct SaCoreStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
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
    pub replay: Option<ReplayWindow>,
    pub endpoints: Option<Endpoints>,
    pub encap: Option<UdpEncap>,
    /// Outbound tunnel over IPv4: the outer header with total length and TOS zero, and the
    /// ones'-complement sum of its constant words (the checksum is finished per packet).
    outer_v4: Option<([u8; 20], u32)>,
    /// Set at construction, cleared on drop: lets stress tests catch use after free.
    canary: AtomicU64,
    pub lifetime: Lifetime,
    /// Last sequence number sent (outbound).
    seq: CachePadded<AtomicU64>,
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
            replay: (p.direction == Direction::Inbound).then(|| ReplayWindow::new(p.replay_window)),
            seq: CachePadded::new(AtomicU64::new(0)),
            cores: (0..cores.max(1))
                .map(|_| CachePadded::new(SaCoreStats::default()))
                .collect(),
            canary: AtomicU64::new(CANARY | p.spi as u64),
            outer_v4: outer_v4_template(p),
        })
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

    /// Takes the next outbound sequence number. `None` when the sequence space is exhausted
    /// (RFC 4303 §3.3.3: never wrap; the SA must be replaced).
    #[inline]
    pub fn next_seq(&self) -> Option<u64> {
        self.take_seqs(1).map(|(first, _)| first)
    }

    /// Takes a block of up to `n` (≥ 1) consecutive sequence numbers with one atomic
    /// operation: `(first, last)`, inclusive. `None` when the space is exhausted.
    #[inline]
    pub fn take_seqs(&self, n: u64) -> Option<(u64, u64)> {
        let max = if self.esn { u64::MAX } else { u32::MAX as u64 };
        let s = self.seq.fetch_add(n, Ordering::AcqRel);
        if s >= max || s.checked_add(n).is_none() {
            self.seq.store(max, Ordering::Release);
            return if s >= max { None } else { Some((s + 1, max)) };
        }
        Some((s + 1, (s + n).min(max)))
    }

    /// Last sequence number sent.
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Test and rekey hook: continue the sequence from `seq`.
    pub fn set_seq(&self, seq: u64) {
        self.seq.store(seq, Ordering::Release);
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
