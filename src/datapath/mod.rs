//! The packet path: drop reasons, per-core counters, frames and the pipeline.

pub mod capture;
pub mod frag;
pub mod mem;
pub mod pipeline;
pub mod worker;
pub mod xdp;
pub mod xsk;

use crate::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use crate::codes::{self, Code};

pub use pipeline::{
    Action, Dataplane, FrameMut, FramePool, NoFrames, Pipeline, PipelineConfig, SaEvent,
    SaEventKind,
};

/// Why the pipeline dropped a frame. `Copy`, counted per core, never formatted on the hot path.
/// Each maps to one Windows IPsec code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Inbound SPI matches no SA (13910).
    BadSpi,
    /// Outbound policy names a tunnel that has no SA (13910).
    NoSa,
    /// SA past a hard lifetime limit (13911).
    LifetimeExpired,
    /// Sequence number space exhausted: the SA must be replaced (13911).
    SeqExhausted,
    /// Sequence numbers past the persisted high-water mark of a static SA: refused until the
    /// control thread has saved the next block (13911).
    SeqUnsaved,
    /// Inner packet does not match the SA's selectors (13912).
    WrongSa,
    /// Replayed or too old (13913).
    Replay,
    /// Truncated or malformed header (13914).
    Malformed,
    /// Bad padding or pad length (13914).
    BadPadding,
    /// Next header not allowed for the SA, or inner packet does not parse (13914).
    BadNextHeader,
    /// ESP ciphertext not a multiple of 4 bytes (13914).
    BadAlignment,
    /// Fragmented ESP (espd does not reassemble) (13914).
    Fragment,
    /// TFC dummy packet, dropped silently as RFC 4303 §2.6 says (13914).
    Dummy,
    /// Too big to encapsulate within the MTU; ICMP sent when possible (13914).
    TooBig,
    /// ICV verification failed (13915).
    Integrity,
    /// Cleartext that no policy allows, or cleartext aimed at a protected prefix (13916).
    ClearText,
    /// An explicit discard policy matched (13916).
    PolicyDiscard,
    /// No free frame for a fragment of a pre-fragmented packet (13859).
    NoFrame,
    /// Inner TTL / hop limit ran out at the encapsulator or decapsulator; ICMP time exceeded
    /// sent when possible (13914).
    TtlExceeded,
    /// Outer CE on a Not-ECT inner packet: RFC 6040 §4.2 drops it (13914).
    EcnNotEct,
    /// Outer IPv4 header checksum wrong (13914).
    IpChecksum,
}

impl DropReason {
    pub const ALL: [DropReason; 21] = [
        DropReason::BadSpi,
        DropReason::NoSa,
        DropReason::LifetimeExpired,
        DropReason::SeqExhausted,
        DropReason::SeqUnsaved,
        DropReason::WrongSa,
        DropReason::Replay,
        DropReason::Malformed,
        DropReason::BadPadding,
        DropReason::BadNextHeader,
        DropReason::BadAlignment,
        DropReason::Fragment,
        DropReason::Dummy,
        DropReason::TooBig,
        DropReason::Integrity,
        DropReason::ClearText,
        DropReason::PolicyDiscard,
        DropReason::NoFrame,
        DropReason::TtlExceeded,
        DropReason::EcnNotEct,
        DropReason::IpChecksum,
    ];

    pub fn code(self) -> Code {
        use DropReason::*;
        match self {
            BadSpi | NoSa => codes::BAD_SPI,
            LifetimeExpired | SeqExhausted | SeqUnsaved => codes::SA_LIFETIME_EXPIRED,
            WrongSa => codes::WRONG_SA,
            Replay => codes::REPLAY_CHECK_FAILED,
            Malformed | BadPadding | BadNextHeader | BadAlignment | Fragment | Dummy | TooBig
            | TtlExceeded | EcnNotEct | IpChecksum => codes::INVALID_PACKET,
            Integrity => codes::INTEGRITY_CHECK_FAILED,
            ClearText | PolicyDiscard => codes::CLEAR_TEXT_DROP,
            NoFrame => codes::IKE_OUT_OF_MEMORY,
        }
    }

    pub fn name(self) -> &'static str {
        use DropReason::*;
        match self {
            BadSpi => "bad_spi",
            NoSa => "no_sa",
            LifetimeExpired => "lifetime_expired",
            SeqExhausted => "seq_exhausted",
            SeqUnsaved => "seq_unsaved",
            WrongSa => "wrong_sa",
            Replay => "replay",
            Malformed => "malformed",
            BadPadding => "bad_padding",
            BadNextHeader => "bad_next_header",
            BadAlignment => "bad_alignment",
            Fragment => "fragment",
            Dummy => "dummy",
            TooBig => "too_big",
            Integrity => "integrity",
            ClearText => "clear_text",
            PolicyDiscard => "policy_discard",
            NoFrame => "no_frame",
            TtlExceeded => "ttl_exceeded",
            EcnNotEct => "ecn_not_ect",
            IpChecksum => "bad_ip_checksum",
        }
    }
}

/// A counter with one writer (its core): increments are a load and a store, no atomic RMW.
/// Loom's under the `loom` feature (the capture model reads `dropped_ring_full` through it).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Frames and bytes one path (inbound or outbound) of one core received and sent.
#[derive(Debug, Default)]
pub struct PathStats {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
}

/// Which pipeline path: the inbound one (cipher side → plain side, decapsulation) or the
/// outbound one (plain side → cipher side, encapsulation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Path {
    Inbound = 0,
    Outbound = 1,
}

/// Counters of one core. Written by its worker only; read by anyone. Aligned to two cache
/// lines so that no two cores' counters share a line (adjacent-line prefetch included).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CoreStats {
    /// Frames and bytes received and sent, by path: `paths[Path::Inbound as usize]`,
    /// `paths[Path::Outbound as usize]` (the core's totals are their sums: [`CoreStats::rx_packets`]).
    pub paths: [PathStats; 2],
    pub punted: Counter,
    /// Packets a bypass policy (or the default policy `bypass`) forwarded in the clear.
    pub bypassed: Counter,
    /// Inner IPv4 packets fragmented before encapsulation (RFC 4301 §8.1).
    pub prefragmented: Counter,
    pub icmp_sent: Counter,
    pub events_dropped: Counter,
    pub checksums_completed: Counter,
    /// Frames dropped because the other side's tx ring was full.
    pub tx_ring_full: Counter,
    /// Kernel-side drops on this worker's sockets (rx dropped, rx ring full), read at exit.
    pub kernel_rx_dropped: Counter,
    pub kernel_fill_empty: Counter,
    /// Descriptors from the kernel outside the UMEM or past their chunk, dropped unused.
    pub bad_descs: Counter,
    /// Times the worker went to sleep in poll(2) with both rx rings empty.
    pub idle_sleeps: Counter,
    /// Timed sleeps of `dataplane.coalesce_us` while traffic was dense (wake-up coalescing).
    pub coalesced_sleeps: Counter,
    pub drops: [Counter; DropReason::ALL.len()],
}

impl CoreStats {
    /// The counters of one path.
    #[inline]
    pub fn path(&self, p: Path) -> &PathStats {
        &self.paths[p as usize]
    }
    /// Frames received on both paths.
    pub fn rx_packets(&self) -> u64 {
        self.paths.iter().map(|p| p.rx_packets.get()).sum()
    }
    pub fn rx_bytes(&self) -> u64 {
        self.paths.iter().map(|p| p.rx_bytes.get()).sum()
    }
    /// Frames handed to a tx ring on both paths.
    pub fn tx_packets(&self) -> u64 {
        self.paths.iter().map(|p| p.tx_packets.get()).sum()
    }
    pub fn tx_bytes(&self) -> u64 {
        self.paths.iter().map(|p| p.tx_bytes.get()).sum()
    }
    #[inline]
    pub fn drop(&self, r: DropReason) {
        self.drops[r as usize].add(1);
    }
    pub fn drops_of(&self, r: DropReason) -> u64 {
        self.drops[r as usize].get()
    }
    /// Drops summed by Windows code.
    pub fn drops_by_code(&self) -> std::collections::BTreeMap<u32, u64> {
        let mut m = std::collections::BTreeMap::new();
        for r in DropReason::ALL {
            let n = self.drops_of(r);
            if n > 0 {
                *m.entry(r.code().code).or_insert(0) += n;
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        assert_eq!(DropReason::Replay.code().code, 13913);
        assert_eq!(DropReason::ClearText.code().code, 13916);
    }
}
