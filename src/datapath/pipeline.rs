//! THE hot path: a batch of frames in, one action per frame out (plus the further fragments of
//! packets fragmented before encapsulation, in frames from a pool).
//!
//! Outbound (plain side → cipher side):
//!   Ethernet → inner IP → SPD lookup (bypass: new MACs, `Tx` in the clear) → tunnel's current
//!   SA → inner TTL / hop limit → MTU check (IPv4 without DF: fragments, each taken through
//!   the rest on its own frame)
//!   → lifetime check (inline, clock read once per batch by the caller) → sequence number →
//!   ESP encap/seal in place → outer Ethernet → `Tx`.
//! Inbound (cipher side → plain side):
//!   Ethernet → outer IP → ESP (raw or UDP/4500) → SA by SPI → replay pre-check → open →
//!   replay commit (once for the batch: numbers of one SA and window block together) →
//!   trailer checks → lifetime count (after authentication) → selector check
//!   → ECN (RFC 6040) and inner TTL / hop limit (tunnel mode) → inner Ethernet → `Tx`.
//! An inner packet whose TTL / hop limit runs out is answered with ICMP time exceeded: back to
//! the plain side at the encapsulator, through the tunnel (the outbound path) at the
//! decapsulator; both leave through the interface the packet came in on (`TxBack`).
//!
//! Pure: no syscalls, no locks, no allocation, no clock reads, no `dyn`. Drops are counted per
//! core under a [`DropReason`]; lifetime notifications go to a bounded lock-free queue (a full
//! queue is counted, never waited on).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;

use crossbeam_epoch::{self as epoch, Guard};
use crossbeam_queue::ArrayQueue;

use super::frag::{self, FragError};
use super::{CoreStats, DropReason, Path};
use crate::esp::{self, EspError};
use crate::sa::policy::{FlowKey, Lookup, PolicyAction, raw};
use crate::sa::{Admit, Direction, Mode, Sa, SaFailure, SaTable, SeqShort, Spd};
use crate::wire::esp::{ICV_LEN, TRAILER_LEN};
use crate::wire::ethernet::{self, ETHERTYPE_IPV4, ETHERTYPE_IPV6, Mac};
use crate::wire::ipv4::{self, Ipv4Packet, Ipv4Repr};
use crate::wire::ipv6::{self, Ipv6Packet, Ipv6Repr};
use crate::wire::{be16, checksum, proto, put16, udp};

/// What to do with a frame after the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send out of the other interface (the frame was rewritten).
    Tx,
    /// Send back out of the interface it came from (an ICMP error was written into it).
    TxBack,
    /// Drop and count.
    Drop(DropReason),
    /// Hand to the kernel unchanged (ARP, ND, IKE, traffic for the gateway itself).
    Punt,
}

/// A frame buffer with the packet at `offset..offset + len`; the rest is headroom/tailroom.
pub trait FrameMut {
    fn buf_mut(&mut self) -> &mut [u8];
    fn offset(&self) -> usize;
    fn len(&self) -> usize;
    fn set(&mut self, offset: usize, len: usize);
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the pipeline takes empty frames when one input frame becomes several output frames
/// (IPv4 fragmented before encapsulation). The worker's pool is its UMEM's free list.
pub trait FramePool<F> {
    /// An empty frame of the batch's frame size, or `None` when none is free.
    fn take(&mut self) -> Option<F>;
    /// Gives back a frame taken but not sent.
    fn give(&mut self, f: F);
}

/// Spare frames held in a vector (tests, offline use).
impl<F> FramePool<F> for Vec<F> {
    fn take(&mut self) -> Option<F> {
        self.pop()
    }
    fn give(&mut self, f: F) {
        self.push(f);
    }
}

/// No spare frames: a packet that must be fragmented is dropped as `no_frame`.
pub struct NoFrames;

impl<F> FramePool<F> for NoFrames {
    fn take(&mut self) -> Option<F> {
        None
    }
    fn give(&mut self, _: F) {}
}

/// A lifetime notification from a worker to the control thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaEvent {
    pub spi: u32,
    pub direction: Direction,
    pub kind: SaEventKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaEventKind {
    /// A soft limit was crossed: rekey.
    Soft,
    /// A hard limit was reached: the SA refuses traffic.
    Hard,
}

/// Everything the workers share: SAs, the SPD and the gateway's own addresses.
pub struct Dataplane {
    pub sas: SaTable,
    spd: crate::sys::EpochPtr<Spd>,
    local: Vec<(bool, u128)>,
    /// A worker found the queue to the control thread full: some SA fired a lifetime
    /// notification the control thread has not heard of (it looks for it, see `Control::tick`).
    lost_events: std::sync::atomic::AtomicBool,
}

impl Dataplane {
    pub fn new(sas: SaTable, spd: Spd, local: &[IpAddr]) -> Self {
        Self {
            sas,
            spd: crate::sys::EpochPtr::new(spd),
            local: local.iter().map(|a| raw(*a)).collect(),
            lost_events: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// True (once) when a lifetime notification could not be queued since the last call.
    pub fn take_lost_events(&self) -> bool {
        self.lost_events.load(Ordering::Relaxed) && self.lost_events.swap(false, Ordering::AcqRel)
    }

    /// Publishes a new SPD; the old one is freed when no worker holds it.
    pub fn set_spd(&self, spd: Spd) {
        self.spd.swap(Some(spd), &epoch::pin());
    }

    /// The current SPD (cloned, for the control side).
    pub fn spd_snapshot(&self) -> Spd {
        let g = epoch::pin();
        self.spd(&g).clone()
    }

    #[inline]
    fn spd<'g>(&self, g: &'g Guard) -> &'g Spd {
        self.spd.load(g).expect("SPD is never null")
    }

    #[inline]
    fn is_local(&self, v6: bool, a: u128) -> bool {
        self.local.iter().any(|&(l6, l)| l6 == v6 && l == a)
    }
}

/// MAC addresses for frames leaving one interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2 {
    pub mac: Mac,
    pub next_hop: Mac,
}

/// Per-worker settings, validated before start.
#[derive(Clone, Copy, Debug, Default)]
pub struct PipelineConfig {
    /// Complete TCP/UDP checksums that arrive partial (veth checksum offload, FACTS.md).
    pub complete_checksums: bool,
    /// Answer too-big packets with ICMP "fragmentation needed" / ICMPv6 "packet too big".
    pub icmp_too_big: bool,
    /// ICMP errors per second per core (RFC 1812 §4.3.2.8 rate limit).
    pub icmp_rate: u32,
    /// Batches prefetch SA state (in extra passes) once more than this many inbound SAs, or
    /// tunnels with an outbound SA, are installed: below, the state stays cached and the passes
    /// cost more (~11 ns per packet) than they save.
    pub prefetch_above: u32,
    pub plain: L2,
    pub cipher: L2,
    /// Source addresses for ICMP errors sent to the plain side.
    pub plain_v4: Option<Ipv4Addr>,
    pub plain_v6: Option<Ipv6Addr>,
}

/// One worker's view of the pipeline.
pub struct Pipeline<'a> {
    dp: &'a Dataplane,
    core: usize,
    pub stats: &'a CoreStats,
    events: &'a ArrayQueue<SaEvent>,
    cfg: PipelineConfig,
    icmp_tokens: u32,
    icmp_second: u64,
    /// Sequence numbers taken for the SA used last in this batch: (SA address, next, last).
    /// Taken in blocks of up to `SEQ_BLOCK` (bounded by the frames left in the batch) to save
    /// atomic operations; leftovers are dropped at the end of the batch, so a block never
    /// outlives its batch and reordering between cores stays within a few packets.
    seq_block: (usize, u64, u64),
}

/// Most sequence numbers taken with one atomic operation.
const SEQ_BLOCK: u64 = 8;

/// An inbound packet authenticated and decrypted, waiting for its replay commit.
#[derive(Clone, Copy)]
struct Opened<'g> {
    sa: &'g Sa,
    esp: esp::decap::Opened,
    /// Outer IP header: offset, length up to ESP, offset of the byte naming ESP, family.
    ip_at: usize,
    ip_hdr_len: usize,
    nh_field: usize,
    v6: bool,
}

/// Commits the sequence numbers of a batch's opened packets to their SAs' replay windows
/// (RFC 4303 §3.4.3: after the ICV verified, before anything else looks at the packet).
/// Packets of one SA whose numbers share a block of the window (32 numbers), in a row in
/// the batch (other frames between them apart), commit with one `commit_block`: when
/// workers share an inbound SA, its window's lines move between cores once per block
/// instead of once per packet. A packet whose number is refused (a duplicate, also of an
/// earlier packet of the run, or too old) is dropped as `replay` and leaves `opened`.
fn commit_replay(opened: &mut [Option<Opened<'_>>], acts: &mut [Action], core: usize) {
    let mut i = 0;
    while i < opened.len() {
        let Some(first) = opened[i] else {
            i += 1;
            continue;
        };
        let block = first.esp.seq >> 5;
        // The run: frames i..end, of which `members` (bit k: frame i + k) are in it.
        let (mut bits, mut members, mut end) = (0u32, 0u64, i);
        while end < opened.len() {
            match opened[end] {
                Some(o) if std::ptr::eq(o.sa, first.sa) && o.esp.seq >> 5 == block => {
                    let bit = 1u32 << (o.esp.seq & 31);
                    if bits & bit != 0 {
                        // The same number twice in the run: the later one is a replay.
                        opened[end] = None;
                        acts[end] = Action::Drop(DropReason::Replay);
                        o.sa.count_failure(core, SaFailure::Replay);
                    } else {
                        bits |= bit;
                        members |= 1 << (end - i);
                    }
                }
                Some(_) => break,
                None => {}
            }
            end += 1;
        }
        let won = match &first.sa.replay {
            Some(r) => r.commit_block(block, bits),
            None => 0,
        };
        while members != 0 {
            let k = i + members.trailing_zeros() as usize;
            members &= members - 1;
            if let Some(o) = opened[k]
                && won & (1 << (o.esp.seq & 31)) == 0
            {
                opened[k] = None;
                acts[k] = Action::Drop(DropReason::Replay);
                o.sa.count_failure(core, SaFailure::Replay);
            }
        }
        i = end;
    }
}

/// Parsed L3 facts about a frame's IP packet.
struct L3 {
    /// Offset of the IP header in the buffer.
    at: usize,
    /// IP total length (Ethernet padding excluded).
    len: usize,
    v6: bool,
    /// Header length up to the upper layer (IPv4 options, IPv6 extension headers).
    hdr_len: usize,
    /// Offset (from `at`) of the Next Header byte naming the upper layer.
    nh_field: usize,
    fragment: bool,
    /// A fragment other than the first: no upper-layer header in it.
    later_fragment: bool,
    key: FlowKey,
}

impl<'a> Pipeline<'a> {
    pub fn new(
        dp: &'a Dataplane,
        core: usize,
        stats: &'a CoreStats,
        events: &'a ArrayQueue<SaEvent>,
        cfg: PipelineConfig,
    ) -> Self {
        Self {
            dp,
            core,
            stats,
            events,
            cfg,
            icmp_tokens: cfg.icmp_rate,
            icmp_second: 0,
            seq_block: (0, 1, 0),
        }
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// Updates the MAC addresses (the worker refreshes them from the neighbour table).
    pub fn set_l2(&mut self, plain: L2, cipher: L2) {
        self.cfg.plain = plain;
        self.cfg.cipher = cipher;
    }

    /// Processes a batch of frames from the plain side. `now`: monotonic ns, read once. With
    /// no spare frames, a packet that must be fragmented is dropped (`no_frame`): see
    /// [`Pipeline::outbound_with`].
    pub fn outbound<F: FrameMut>(&mut self, frames: &mut [F], now: u64, actions: &mut [Action]) {
        self.outbound_with(frames, now, actions, &mut NoFrames, &mut Vec::new());
    }

    /// [`Pipeline::outbound`] for packets that may become several frames: an IPv4 packet
    /// without DF that does not fit its tunnel is fragmented (RFC 4301 §8.1); its first
    /// fragment stays in its frame (action `Tx`), the others go in frames taken from `pool`,
    /// appended to `extra` in order, each sealed and ready to send out of the cipher side
    /// after the batch's `Tx` frames. `extra` never grows past its capacity: a packet whose
    /// fragments do not all find a frame is dropped whole (`no_frame`).
    pub fn outbound_with<F: FrameMut, P: FramePool<F>>(
        &mut self,
        frames: &mut [F],
        now: u64,
        actions: &mut [Action],
        pool: &mut P,
        extra: &mut Vec<F>,
    ) {
        let guard = epoch::pin();
        let spd = self.dp.spd(&guard);
        self.refill_icmp(now);
        let n = frames.len();
        let prefetch = self.dp.sas.outbound_len() > self.cfg.prefetch_above;
        let mut i = 0;
        for (fs, acts) in frames.chunks_mut(64).zip(actions.chunks_mut(64)) {
            // With many tunnels, a first pass looks every frame's policy up and starts loading
            // its SA, so the batch's misses overlap; the second pass reuses the lookups.
            let mut hints = [None; 64];
            if prefetch {
                for (f, h) in fs.iter_mut().zip(hints.iter_mut()) {
                    *h = self.policy_hint(f, spd, &guard);
                }
            }
            for ((f, a), hint) in fs.iter_mut().zip(acts.iter_mut()).zip(hints) {
                let path = self.stats.path(Path::Outbound);
                path.rx_packets.add(1);
                path.rx_bytes.add(f.len() as u64);
                let left = (n - i) as u64;
                *a = self.outbound_one(f, now, spd, &guard, left, hint, pool, extra);
                self.account(f, *a, Path::Outbound);
                i += 1;
            }
        }
        self.seq_block = (0, 1, 0);
    }

    /// The SPD verdict of a frame, when it is one the outbound path will look up, with the
    /// loading of its tunnel's SA started.
    fn policy_hint<F: FrameMut>(&self, f: &mut F, spd: &Spd, guard: &Guard) -> Option<Lookup> {
        let (off, flen) = (f.offset(), f.len());
        let frame = f.buf_mut().get(off..off + flen)?;
        let l3 = parse_l3(frame, off).ok()??;
        if self.dp.is_local(l3.v6, l3.key.dst) {
            return None;
        }
        let l = spd.lookup(&l3.key);
        if let Lookup::Matched(PolicyAction::Protect(t)) | Lookup::Default(PolicyAction::Protect(t)) =
            l
            && let Some(sa) = self.dp.sas.outbound(t, guard)
        {
            sa.prefetch_head();
        }
        Some(l)
    }

    /// Processes a batch of frames from the cipher side.
    pub fn inbound<F: FrameMut>(&mut self, frames: &mut [F], now: u64, actions: &mut [Action]) {
        let guard = epoch::pin();
        let spd = self.dp.spd(&guard);
        self.refill_icmp(now);
        let prefetch = self.dp.sas.inbound_len() > self.cfg.prefetch_above;
        for (fs, acts) in frames.chunks_mut(64).zip(actions.chunks_mut(64)) {
            if prefetch {
                self.prefetch_inbound(fs, &guard);
            }
            // Three passes: open (up to the ICV), commit the replay window for the batch,
            // finish. Numbers of one SA and block commit together (see `commit_replay`).
            let mut opened: [Option<Opened<'_>>; 64] = [None; 64];
            for ((f, a), o) in fs.iter_mut().zip(acts.iter_mut()).zip(opened.iter_mut()) {
                let path = self.stats.path(Path::Inbound);
                path.rx_packets.add(1);
                path.rx_bytes.add(f.len() as u64);
                match self.inbound_open(f, now, spd, &guard) {
                    Ok(p) => *o = Some(p),
                    Err(done) => *a = done,
                }
            }
            commit_replay(&mut opened[..fs.len()], acts, self.core);
            for ((f, a), o) in fs.iter_mut().zip(acts.iter_mut()).zip(opened) {
                if let Some(o) = o {
                    *a = self.inbound_finish(f, &o, now, spd, &guard);
                }
                self.account(f, *a, Path::Inbound);
            }
        }
    }

    /// Starts loading the SA state up to 64 frames will touch, in three passes so that each
    /// pass issues independent cache misses that overlap instead of being paid one by one: the
    /// slots (16 MB at 10^6 SAs), then each SA's hot lines, then what hangs off them (replay
    /// word, per-core counters and leases).
    fn prefetch_inbound<F: FrameMut>(&self, frames: &mut [F], guard: &Guard) {
        let mut esp = [None; 64];
        for (f, e) in frames.iter_mut().zip(esp.iter_mut()) {
            let off = f.offset();
            *e = f.buf_mut().get(off..).and_then(guess_esp);
            if let Some((spi, _)) = *e {
                self.dp.sas.prefetch_inbound(spi);
            }
        }
        let mut sas: [Option<&Sa>; 64] = [None; 64];
        for (e, s) in esp.iter().zip(sas.iter_mut()) {
            *s = e.and_then(|(spi, _)| self.dp.sas.inbound(spi, guard));
            if let Some(sa) = s {
                sa.prefetch_head();
            }
        }
        for (e, s) in esp.iter().zip(sas) {
            if let (Some((_, seq)), Some(sa)) = (e, s) {
                sa.prefetch_state(self.core, u64::from(*seq));
            }
        }
    }

    #[inline]
    fn account<F: FrameMut>(&self, f: &F, a: Action, path: Path) {
        match a {
            Action::Tx | Action::TxBack => {
                let p = self.stats.path(path);
                p.tx_packets.add(1);
                p.tx_bytes.add(f.len() as u64);
            }
            Action::Drop(r) => self.stats.drop(r),
            Action::Punt => self.stats.punted.add(1),
        }
    }

    #[inline]
    fn notify(&self, sa: &Sa, kind: SaEventKind) {
        if self
            .events
            .push(SaEvent {
                spi: sa.spi,
                direction: sa.direction,
                kind,
            })
            .is_err()
        {
            // The SA's fired flag is already set: the control thread finds it from this flag.
            self.stats.events_dropped.add(1);
            self.dp.lost_events.store(true, Ordering::Release);
        }
    }

    /// Applies a lifetime verdict; `Some(drop)` when refused.
    #[inline]
    fn lifetime(&self, sa: &Sa, verdict: Admit) -> Option<DropReason> {
        match verdict {
            Admit::Pass => None,
            Admit::PassSoft => {
                self.notify(sa, SaEventKind::Soft);
                None
            }
            Admit::Refuse => Some(DropReason::LifetimeExpired),
            Admit::RefuseHard => {
                self.notify(sa, SaEventKind::Hard);
                Some(DropReason::LifetimeExpired)
            }
        }
    }

    /// The next sequence number of `sa`, from this batch's block when it has one left.
    #[inline]
    fn next_seq(&mut self, sa: &Sa, frames_left: u64) -> Result<u64, SeqShort> {
        self.next_seqs(sa, 1, frames_left)
    }

    #[allow(clippy::too_many_arguments)]
    fn outbound_one<F: FrameMut, P: FramePool<F>>(
        &mut self,
        f: &mut F,
        now: u64,
        spd: &Spd,
        guard: &Guard,
        left: u64,
        hint: Option<Lookup>,
        pool: &mut P,
        extra: &mut Vec<F>,
    ) -> Action {
        let (off, flen) = (f.offset(), f.len());
        let buf = f.buf_mut();
        let Some(frame) = buf.get(off..off + flen) else {
            return Action::Drop(DropReason::Malformed);
        };
        let l3 = match parse_l3(frame, off) {
            Ok(Some(l3)) => l3,
            Ok(None) => return Action::Punt,
            Err(r) => return Action::Drop(r),
        };
        if self.dp.is_local(l3.v6, l3.key.dst) {
            return Action::Punt;
        }
        // `hint` is this frame's lookup in the same SPD, made by the prefetch pass.
        let tunnel = match hint.unwrap_or_else(|| spd.lookup(&l3.key)) {
            Lookup::Matched(PolicyAction::Protect(t))
            | Lookup::Default(PolicyAction::Protect(t)) => t,
            Lookup::Matched(PolicyAction::Bypass) | Lookup::Default(PolicyAction::Bypass) => {
                return self.bypass(buf, off, self.cfg.cipher);
            }
            Lookup::Matched(PolicyAction::Discard) => {
                return Action::Drop(DropReason::PolicyDiscard);
            }
            Lookup::Default(PolicyAction::Discard) => return Action::Drop(DropReason::ClearText),
        };
        let Some(sa) = self.dp.sas.outbound(tunnel, guard) else {
            return Action::Drop(DropReason::NoSa);
        };
        // RFC 4303 §3.3.4: transport mode ESP applies to whole datagrams only, in both
        // families; fragments cross a gateway in tunnel mode (RFC 4301 §7).
        if sa.mode == Mode::Transport && l3.fragment {
            return Action::Drop(DropReason::Fragment);
        }
        // RFC 4301 §5.1.2.1: the forwarding encapsulator decrements the inner TTL / hop limit
        // (tunnel mode; transport mode protects the packet end to end and leaves it alone).
        if sa.mode == Mode::Tunnel && !decrement_hops(&mut buf[l3.at..l3.at + l3.len], l3.v6) {
            return match self.expired(buf, off, &l3) {
                Some((start, len)) => {
                    // The packet itself is dropped (counted); the ICMP error goes back.
                    self.stats.drop(DropReason::TtlExceeded);
                    f.set(start, len);
                    Action::TxBack
                }
                None => Action::Drop(DropReason::TtlExceeded),
            };
        }
        // MTU: the outer packet must fit (RFC 4301 §8: PMTU handling by the gateway).
        let (head, _) = esp::overhead(sa);
        let ct = (l3.len + TRAILER_LEN).div_ceil(4) * 4;
        if head + ct + ICV_LEN > sa.mtu as usize {
            // ICMP "fragmentation needed" is for DF packets only (RFC 1191): IPv4 without DF
            // is fragmented before encapsulation (RFC 4301 §8.1) where the mode allows.
            if !l3.v6 && buf[l3.at + ipv4::field::FLAGS_FRAG] & 0x40 == 0 {
                if sa.mode == Mode::Tunnel {
                    return self.prefragment(f, now, &l3, sa, head, left, pool, extra);
                }
                return Action::Drop(DropReason::TooBig);
            }
            return match self.too_big(buf, off, &l3, sa, head) {
                Some((start, len)) => {
                    // The packet itself is dropped (counted); the ICMP error goes back.
                    self.stats.drop(DropReason::TooBig);
                    f.set(start, len);
                    Action::TxBack
                }
                None => Action::Drop(DropReason::TooBig),
            };
        }
        if self.cfg.complete_checksums && !l3.fragment && complete_checksum(buf, &l3) {
            self.stats.checksums_completed.add(1);
        }
        if let Some(r) = self.lifetime(sa, sa.lifetime.admit(self.core, l3.len as u64, now)) {
            return Action::Drop(r);
        }
        let seq = match self.next_seq(sa, left) {
            Ok(seq) => seq,
            Err(SeqShort::Exhausted) => {
                // RFC 4303 §3.3.3: the counter must not cycle; the SA is dead.
                if sa.lifetime.expire() {
                    self.notify(sa, SaEventKind::Hard);
                }
                return Action::Drop(DropReason::SeqExhausted);
            }
            Err(SeqShort::Unsaved) => return Action::Drop(DropReason::SeqUnsaved),
        };
        match self.encap_frame(sa, seq, buf, l3.at, l3.len) {
            Ok((eth, len)) => {
                f.set(eth, len);
                Action::Tx
            }
            Err(r) => Action::Drop(r),
        }
    }

    /// ESP-encapsulates the inner packet at `buf[at..at + len]` and puts the cipher side's
    /// Ethernet header in front; returns the frame's new bounds.
    #[inline]
    fn encap_frame(
        &self,
        sa: &Sa,
        seq: u64,
        buf: &mut [u8],
        at: usize,
        len: usize,
    ) -> Result<(usize, usize), DropReason> {
        let (start, outer_len) = match esp::encap(sa, seq, buf, at, len) {
            Ok(r) => r,
            Err(EspError::NoRoom | EspError::TooLong) => return Err(DropReason::TooBig),
            Err(_) => return Err(DropReason::Malformed),
        };
        sa.count(self.core, len as u64);
        let outer_v6 = buf[start] >> 4 == 6;
        let eth = start - ethernet::HEADER_LEN;
        let l2 = self.cfg.cipher;
        ethernet::emit(
            &mut buf[eth..],
            &l2.next_hop,
            &l2.mac,
            if outer_v6 {
                ETHERTYPE_IPV6
            } else {
                ETHERTYPE_IPV4
            },
        );
        Ok((eth, outer_len + ethernet::HEADER_LEN))
    }

    /// Forwards a frame in the clear out of the other interface (a bypass policy, RFC 4301
    /// §4.4.1: BYPASS): only the MAC addresses change, to that side's own and next hop's.
    #[inline]
    fn bypass(&self, buf: &mut [u8], off: usize, l2: L2) -> Action {
        buf[off..off + 6].copy_from_slice(&l2.next_hop);
        buf[off + 6..off + 12].copy_from_slice(&l2.mac);
        self.stats.bypassed.add(1);
        Action::Tx
    }

    /// `n` consecutive sequence numbers of `sa` (the first is returned), from this batch's
    /// block when it has that many left.
    #[inline]
    fn next_seqs(&mut self, sa: &Sa, n: u64, frames_left: u64) -> Result<u64, SeqShort> {
        let addr = sa as *const Sa as usize;
        let (cur, next, last) = self.seq_block;
        if cur == addr && next <= last && last - next >= n - 1 {
            self.seq_block.1 += n;
            return Ok(next);
        }
        let (first, last) = sa.take_seqs(n.max(frames_left.clamp(1, SEQ_BLOCK)))?;
        if last - first < n - 1 {
            // The space (or the saved part of it) ends inside the run: the numbers left are
            // useless to this packet.
            self.seq_block = (0, 1, 0);
            return Err(if last >= sa.seq_counter().max() {
                SeqShort::Exhausted
            } else {
                SeqShort::Unsaved
            });
        }
        self.seq_block = (addr, first + n, last);
        Ok(first)
    }

    /// RFC 4301 §8.1 pre-fragmentation: splits an inner IPv4 packet without DF that does not
    /// fit the tunnel into fragments that do (RFC 791), each encapsulated in its own ESP packet
    /// with consecutive sequence numbers. Fragment 0 stays in `f`; the others take frames from
    /// `pool` and are appended to `extra`. The destination host reassembles.
    #[allow(clippy::too_many_arguments)]
    fn prefragment<F: FrameMut, P: FramePool<F>>(
        &mut self,
        f: &mut F,
        now: u64,
        l3: &L3,
        sa: &Sa,
        head: usize,
        left: u64,
        pool: &mut P,
        extra: &mut Vec<F>,
    ) -> Action {
        // Largest inner packet that fits: ciphertext is a multiple of 4 and holds the trailer.
        let max =
            ((sa.mtu as usize).saturating_sub(head + ICV_LEN) & !3).saturating_sub(TRAILER_LEN);
        let buf = f.buf_mut();
        if self.cfg.complete_checksums && !l3.fragment && complete_checksum(buf, l3) {
            self.stats.checksums_completed.add(1);
        }
        let plan = match frag::plan(&buf[l3.at..l3.at + l3.len], max) {
            Ok(p) if p.pieces >= 2 => p,
            Ok(_) | Err(FragError::TooSmall) => return Action::Drop(DropReason::TooBig),
            Err(FragError::Malformed) => return Action::Drop(DropReason::Malformed),
        };
        // Every fragment's frame first: a shortage drops the whole packet, never a part.
        let mark = extra.len();
        if extra.capacity() - mark < plan.pieces - 1 {
            return Action::Drop(DropReason::NoFrame);
        }
        let tail = TRAILER_LEN + 3 + ICV_LEN;
        for k in 1..plan.pieces {
            let Some(mut piece) = pool.take() else {
                give_back(pool, extra, mark);
                return Action::Drop(DropReason::NoFrame);
            };
            let out = piece.buf_mut();
            if l3.at + plan.len(k) + tail > out.len() {
                // Pool frames are as large as the batch's: not reached.
                pool.give(piece);
                give_back(pool, extra, mark);
                return Action::Drop(DropReason::TooBig);
            }
            plan.write(&buf[l3.at..], k, &mut out[l3.at..]);
            extra.push(piece);
        }
        plan.trim_first(&mut buf[l3.at..]);
        self.stats.prefragmented.add(1);
        if let Some(r) = self.lifetime(sa, sa.lifetime.admit(self.core, plan.len(0) as u64, now)) {
            give_back(pool, extra, mark);
            return Action::Drop(r);
        }
        let seq = match self.next_seqs(sa, plan.pieces as u64, left) {
            Ok(seq) => seq,
            Err(short) => {
                give_back(pool, extra, mark);
                if short == SeqShort::Unsaved {
                    return Action::Drop(DropReason::SeqUnsaved);
                }
                // RFC 4303 §3.3.3: the counter must not cycle; the SA is dead.
                if sa.lifetime.expire() {
                    self.notify(sa, SaEventKind::Hard);
                }
                return Action::Drop(DropReason::SeqExhausted);
            }
        };
        let (eth, len) = match self.encap_frame(sa, seq, buf, l3.at, plan.len(0)) {
            Ok(r) => r,
            Err(r) => {
                give_back(pool, extra, mark);
                return Action::Drop(r);
            }
        };
        f.set(eth, len);
        for k in 1..plan.pieces {
            let len = plan.len(k);
            let at = mark + k - 1;
            let sealed = match self.lifetime(sa, sa.lifetime.admit(self.core, len as u64, now)) {
                Some(r) => Err(r),
                None => self.encap_frame(sa, seq + k as u64, extra[at].buf_mut(), l3.at, len),
            };
            match sealed {
                Ok((eth, len)) => {
                    extra[at].set(eth, len);
                    let p = self.stats.path(Path::Outbound);
                    p.tx_packets.add(1);
                    p.tx_bytes.add(len as u64);
                }
                Err(r) => {
                    // The fragments sent so far cannot be reassembled; send no more.
                    self.stats.drop(r);
                    give_back(pool, extra, at);
                    break;
                }
            }
        }
        Action::Tx
    }

    /// The inbound path up to the ICV: a frame that is an authenticated ESP packet of one of
    /// our SAs, decrypted in place, comes back `Ok` with its sequence number not yet committed
    /// to the replay window; any other frame comes back with its action.
    fn inbound_open<'g, F: FrameMut>(
        &mut self,
        f: &mut F,
        now: u64,
        spd: &Spd,
        guard: &'g Guard,
    ) -> Result<Opened<'g>, Action> {
        let (off, flen) = (f.offset(), f.len());
        let buf = f.buf_mut();
        let Some(frame) = buf.get(off..off + flen) else {
            return Err(Action::Drop(DropReason::Malformed));
        };
        let l3 = match parse_l3(frame, off) {
            Ok(Some(l3)) => l3,
            Ok(None) => return Err(Action::Punt),
            Err(r) => return Err(Action::Drop(r)),
        };
        // RFC 1122 §3.2.1.2: a datagram whose header checksum fails is discarded.
        if !l3.v6 && !ipv4::checksum_ok(&buf[l3.at..l3.at + l3.hdr_len]) {
            return Err(Action::Drop(DropReason::IpChecksum));
        }
        let to_us = self.dp.is_local(l3.v6, l3.key.dst);
        let ul = l3.at + l3.hdr_len;
        let ul_len = l3.len - l3.hdr_len;
        let (esp_at, esp_len) = match l3.key.protocol {
            proto::ESP if to_us => (ul, ul_len),
            proto::UDP if to_us && l3.key.dst_port == udp::NAT_T_PORT && !l3.fragment => {
                // The UDP length (checked: at least the header, at most the IP payload) bounds
                // the ESP packet (RFC 768, RFC 3948 §2.2); IP payload bytes after it are not ESP.
                let Ok((_, _, ulen)) = udp::parse(&buf[ul..ul + ul_len]) else {
                    return Err(Action::Drop(DropReason::Malformed));
                };
                let payload = &buf[ul + udp::HEADER_LEN..ul + ulen];
                // RFC 3948 §2.2: a zero non-ESP marker means IKE; §2.3: 0xFF is a keepalive.
                if payload.len() < 4 || payload[..4] == [0, 0, 0, 0] {
                    return Err(Action::Punt);
                }
                (ul + udp::HEADER_LEN, payload.len())
            }
            _ if to_us => return Err(Action::Punt),
            _ => {
                // Cleartext crossing the gateway from the cipher side.
                return Err(match spd.lookup(&l3.key.reversed()) {
                    Lookup::Matched(PolicyAction::Protect(_))
                    | Lookup::Default(PolicyAction::Protect(_)) => {
                        Action::Drop(DropReason::ClearText)
                    }
                    Lookup::Matched(PolicyAction::Discard) => {
                        Action::Drop(DropReason::PolicyDiscard)
                    }
                    Lookup::Default(PolicyAction::Discard) => Action::Drop(DropReason::ClearText),
                    Lookup::Matched(PolicyAction::Bypass)
                    | Lookup::Default(PolicyAction::Bypass) => {
                        self.bypass(buf, off, self.cfg.plain)
                    }
                });
            }
        };
        if l3.fragment {
            return Err(Action::Drop(DropReason::Fragment));
        }
        let Some(spi) = crate::wire::esp::peek_spi(&buf[esp_at..esp_at + esp_len]) else {
            return Err(Action::Drop(DropReason::Malformed));
        };
        let Some(sa) = self.dp.sas.inbound(spi, guard) else {
            return Err(Action::Drop(DropReason::BadSpi));
        };
        if let Some(r) = self.lifetime(sa, sa.lifetime.check_time(now)) {
            return Err(Action::Drop(r));
        }
        match esp::decap::open_only(sa, buf, esp_at, esp_len) {
            Ok(esp) => Ok(Opened {
                sa,
                esp,
                ip_at: l3.at,
                ip_hdr_len: l3.hdr_len,
                nh_field: l3.nh_field,
                v6: l3.v6,
            }),
            Err(e) => {
                // Per-SA failure counts: written on these drop paths only.
                match e {
                    EspError::Replay => sa.count_failure(self.core, SaFailure::Replay),
                    EspError::Integrity => sa.count_failure(self.core, SaFailure::Integrity),
                    _ => {}
                }
                Err(Action::Drop(esp_drop(e)))
            }
        }
    }

    /// The inbound path after the replay commit: trailer checks, lifetime, selectors, ECN,
    /// inner TTL, inner Ethernet header.
    fn inbound_finish<F: FrameMut>(
        &mut self,
        f: &mut F,
        o: &Opened<'_>,
        now: u64,
        spd: &Spd,
        guard: &Guard,
    ) -> Action {
        let sa = o.sa;
        let buf = f.buf_mut();
        let d = match esp::decap::finish(sa, buf, o.ip_at, o.ip_hdr_len, o.nh_field, &o.esp) {
            Ok(d) => d,
            Err(e) => return Action::Drop(esp_drop(e)),
        };
        // Counted only now: after authentication and the replay check.
        if let Some(r) = self.lifetime(sa, sa.lifetime.admit(self.core, d.len as u64, now)) {
            return Action::Drop(r);
        }
        // The decapsulated packet: the inner one (tunnel) or the rebuilt one (transport).
        let Ok(inner) = parse_ip(&buf[d.start..d.start + d.len], d.start, d.v6) else {
            return Action::Drop(DropReason::BadNextHeader);
        };
        if !inner_matches(sa, &inner) {
            return Action::Drop(DropReason::WrongSa);
        }
        if sa.mode == Mode::Tunnel {
            // RFC 6040 §4.2 (normal mode): the outer ECN field onto the inner one.
            let outer_ecn = ecn_of(&buf[o.ip_at..], o.v6);
            let pkt = &mut buf[d.start..d.start + d.len];
            let inner_ecn = ecn_of(pkt, d.v6);
            match esp::decap::ecn_decap(inner_ecn, outer_ecn) {
                None => return Action::Drop(DropReason::EcnNotEct),
                Some(e) if e != inner_ecn => set_ecn(pkt, d.v6, e),
                Some(_) => {}
            }
            // RFC 4301 §5.1.2.1: the forwarding decapsulator decrements the inner TTL too.
            if !decrement_hops(pkt, d.v6) {
                return self.expired_inbound(f, &inner, now, spd, guard);
            }
        }
        sa.count(self.core, d.len as u64);
        let eth = d.start - ethernet::HEADER_LEN;
        let l2 = self.cfg.plain;
        ethernet::emit(
            &mut buf[eth..],
            &l2.next_hop,
            &l2.mac,
            if d.v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 },
        );
        f.set(eth, d.len + ethernet::HEADER_LEN);
        Action::Tx
    }

    /// Rewrites the frame into an ICMP error for a packet too big to encapsulate (RFC 1191,
    /// RFC 8201), rate-limited. Returns the new frame bounds, or `None` to just drop.
    fn too_big(
        &mut self,
        buf: &mut [u8],
        off: usize,
        l3: &L3,
        sa: &Sa,
        head: usize,
    ) -> Option<(usize, usize)> {
        // RFC 1812 §4.3.2.7 / RFC 4443 §2.4: no error about an ICMP error, a non-first
        // fragment, or a multicast/broadcast/unspecified address (found by the outbound fuzzer).
        if !self.cfg.icmp_too_big || self.icmp_tokens == 0 || !may_answer(buf, l3) {
            return None;
        }
        // Largest inner packet that fits: ciphertext is a multiple of 4 and holds 2 trailer bytes.
        let mtu =
            ((sa.mtu as usize).saturating_sub(head + ICV_LEN) & !3).saturating_sub(TRAILER_LEN);
        let (dst_mac, src_mac) = ethernet::addrs(&buf[off..]);
        let (start, len) = if l3.v6 {
            icmp6_too_big(buf, l3, self.cfg.plain_v6?, mtu as u32)?
        } else {
            icmp4_too_big(buf, l3, self.cfg.plain_v4?, mtu as u16)?
        };
        self.icmp_tokens -= 1;
        self.stats.icmp_sent.add(1);
        let eth = start - ethernet::HEADER_LEN;
        // Back to the sender: swap the MAC addresses.
        ethernet::emit(
            &mut buf[eth..],
            &src_mac,
            &dst_mac,
            if l3.v6 {
                ETHERTYPE_IPV6
            } else {
                ETHERTYPE_IPV4
            },
        );
        Some((eth, len + ethernet::HEADER_LEN))
    }

    /// Writes ICMP time exceeded in transit (RFC 792 type 11 code 0, RFC 4443 §3.3 type 3
    /// code 0) for the packet `l3` in front of it, from the gateway's LAN address, quoting at
    /// most `quote` bytes; rate-limited with the other ICMP errors. Returns the bounds of the
    /// ICMP packet (IP header onwards), or `None` when no answer may or can be sent.
    fn time_exceeded(&mut self, buf: &mut [u8], l3: &L3, quote: usize) -> Option<(usize, usize)> {
        if self.icmp_tokens == 0 || !may_answer(buf, l3) {
            return None;
        }
        let r = if l3.v6 {
            icmp6_error(buf, l3, self.cfg.plain_v6?, [3, 0, 0, 0, 0, 0, 0, 0], quote)?
        } else {
            icmp4_error(
                buf,
                l3,
                self.cfg.plain_v4?,
                [11, 0, 0, 0, 0, 0, 0, 0],
                quote,
            )?
        };
        self.icmp_tokens -= 1;
        Some(r)
    }

    /// Rewrites the frame of a packet from the plain side whose TTL ran out into ICMP time
    /// exceeded back to its sender. Returns the new frame bounds, or `None` to just drop.
    fn expired(&mut self, buf: &mut [u8], off: usize, l3: &L3) -> Option<(usize, usize)> {
        let (dst_mac, src_mac) = ethernet::addrs(&buf[off..]);
        let (start, len) = self.time_exceeded(buf, l3, usize::MAX)?;
        self.stats.icmp_sent.add(1);
        let eth = start - ethernet::HEADER_LEN;
        ethernet::emit(&mut buf[eth..], &src_mac, &dst_mac, ethertype(l3.v6));
        Some((eth, len + ethernet::HEADER_LEN))
    }

    /// An inner packet whose TTL ran out at decapsulation: dropped (counted) and answered with
    /// ICMP time exceeded to its source, which lies behind the tunnel. The answer takes the
    /// outbound path (SPD, SA, encapsulation) like a packet from the LAN and leaves through the
    /// cipher-side interface the packet came in on; without a policy protecting it, or an SA,
    /// it is not sent.
    fn expired_inbound<F: FrameMut>(
        &mut self,
        f: &mut F,
        inner: &L3,
        now: u64,
        spd: &Spd,
        guard: &Guard,
    ) -> Action {
        let buf = f.buf_mut();
        let Some((start, len)) = self.time_exceeded(buf, inner, TUNNEL_QUOTE) else {
            return Action::Drop(DropReason::TtlExceeded);
        };
        // The outbound path reads the frame from its Ethernet header and writes a new one.
        let eth = start - ethernet::HEADER_LEN;
        ethernet::emit(&mut buf[eth..], &[0; 6], &[0; 6], ethertype(inner.v6));
        f.set(eth, len + ethernet::HEADER_LEN);
        let sent = self.outbound_one(f, now, spd, guard, 1, None, &mut NoFrames, &mut Vec::new());
        self.seq_block = (0, 1, 0);
        if sent != Action::Tx {
            return Action::Drop(DropReason::TtlExceeded);
        }
        self.stats.drop(DropReason::TtlExceeded);
        self.stats.icmp_sent.add(1);
        Action::TxBack
    }

    #[inline]
    fn refill_icmp(&mut self, now: u64) {
        let sec = now / 1_000_000_000;
        if sec != self.icmp_second {
            self.icmp_second = sec;
            self.icmp_tokens = self.cfg.icmp_rate;
        }
    }
}

/// Returns the frames `extra[from..]` to the pool.
#[inline]
fn give_back<F, P: FramePool<F>>(pool: &mut P, extra: &mut Vec<F>, from: usize) {
    for f in extra.drain(from..) {
        pool.give(f);
    }
}

#[inline]
fn esp_drop(e: EspError) -> DropReason {
    match e {
        EspError::Replay => DropReason::Replay,
        EspError::Integrity => DropReason::Integrity,
        EspError::BadPadding => DropReason::BadPadding,
        EspError::BadNextHeader => DropReason::BadNextHeader,
        EspError::BadAlignment => DropReason::BadAlignment,
        EspError::Dummy => DropReason::Dummy,
        EspError::NoRoom | EspError::TooLong => DropReason::TooBig,
        EspError::Malformed | EspError::Seal => DropReason::Malformed,
    }
}

/// Parses Ethernet and IP. `Ok(None)`: not IP (punt). `frame` starts at buffer offset `off`.
#[inline]
fn parse_l3(frame: &[u8], off: usize) -> Result<Option<L3>, DropReason> {
    let v6 = match ethernet::ethertype(frame).map_err(|_| DropReason::Malformed)? {
        ETHERTYPE_IPV4 => false,
        ETHERTYPE_IPV6 => true,
        _ => return Ok(None),
    };
    parse_ip(
        &frame[ethernet::HEADER_LEN..],
        off + ethernet::HEADER_LEN,
        v6,
    )
    .map(Some)
}

/// Parses the IP packet `ip` (of the family `v6` says), which starts at buffer offset `at`.
#[inline]
fn parse_ip(ip: &[u8], at: usize, v6: bool) -> Result<L3, DropReason> {
    let mut l3 = match v6 {
        false => {
            let p = Ipv4Packet::new_checked(ip).map_err(|_| DropReason::Malformed)?;
            L3 {
                at,
                len: p.total_len(),
                v6: false,
                hdr_len: p.header_len(),
                nh_field: ipv4::field::PROTOCOL,
                fragment: p.is_fragment(),
                later_fragment: p.is_later_fragment(),
                key: FlowKey {
                    v6: false,
                    src: u32::from(p.src()) as u128,
                    dst: u32::from(p.dst()) as u128,
                    protocol: p.protocol(),
                    src_port: 0,
                    dst_port: 0,
                },
            }
        }
        true => {
            let p = Ipv6Packet::new_checked(ip).map_err(|_| DropReason::Malformed)?;
            let u = ipv6::upper_layer(ip, p.total_len()).map_err(|_| DropReason::Malformed)?;
            L3 {
                at,
                len: p.total_len(),
                v6: true,
                hdr_len: u.offset,
                nh_field: u.nh_field,
                fragment: u.fragment,
                later_fragment: u.later_fragment,
                key: FlowKey {
                    v6: true,
                    src: u128::from(p.src()),
                    dst: u128::from(p.dst()),
                    protocol: u.protocol,
                    src_port: 0,
                    dst_port: 0,
                },
            }
        }
    };
    let l4 = &ip[l3.hdr_len..l3.len];
    if matches!(l3.key.protocol, proto::TCP | proto::UDP) && l4.len() >= 4 && !l3.fragment {
        l3.key.src_port = be16(l4, 0);
        l3.key.dst_port = be16(l4, 2);
    }
    Ok(l3)
}

/// Completes a TCP/UDP checksum left partial by checksum offload: the field then holds the
/// folded pseudo-header sum. Returns true when it completed one.
#[inline]
fn complete_checksum(buf: &mut [u8], l3: &L3) -> bool {
    let csum_off = match l3.key.protocol {
        proto::TCP => 16,
        proto::UDP => 6,
        _ => return false,
    };
    let l4_at = l3.at + l3.hdr_len;
    let l4_len = l3.len - l3.hdr_len;
    if l4_len < csum_off + 2 {
        return false;
    }
    let psum = if l3.v6 {
        let (s, d) = (Ipv6Addr::from(l3.key.src), Ipv6Addr::from(l3.key.dst));
        checksum::pseudo_v6(&s, &d, l3.key.protocol, l4_len as u32)
    } else {
        let s = Ipv4Addr::from(l3.key.src as u32);
        let d = Ipv4Addr::from(l3.key.dst as u32);
        checksum::pseudo_v4(s, d, l3.key.protocol, l4_len as u16)
    };
    let field = be16(buf, l4_at + csum_off);
    if field != checksum::fold(psum) {
        return false;
    }
    let l4 = &mut buf[l4_at..l4_at + l4_len];
    if checksum::fold(checksum::sum(psum, l4)) == 0xffff {
        return false; // already complete (and happens to equal the partial sum)
    }
    put16(l4, csum_off, 0);
    let c = !checksum::fold(checksum::sum(psum, l4));
    put16(
        l4,
        csum_off,
        if c == 0 && l3.key.protocol == proto::UDP {
            0xffff
        } else {
            c
        },
    );
    true
}

/// RFC 4301 §5.2: the decapsulated packet must match one of the SA's selectors: addresses,
/// protocol and ports. A fragment (first or later) is matched without ports (RFC 4301 §7,
/// OPAQUE), so only selectors that allow any port carry fragments; the outbound SPD lookup,
/// which reads no ports from fragments either, sends them the same way.
#[inline]
fn inner_matches(sa: &Sa, inner: &L3) -> bool {
    sa.inner.is_empty()
        || if inner.fragment {
            sa.inner.iter().any(|s| s.matches_without_ports(&inner.key))
        } else {
            sa.inner.iter().any(|s| s.matches(&inner.key))
        }
}

/// Most bytes of an expired packet quoted in a time-exceeded answer that goes into a tunnel:
/// the answer (≤ 48 + 400 bytes) then fits the smallest tunnel MTU (576) after the largest
/// encapsulation overhead (IPv6, UDP, ESP: 85 bytes).
const TUNNEL_QUOTE: usize = 400;

#[inline]
fn ethertype(v6: bool) -> u16 {
    if v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 }
}

#[inline]
fn ecn_of(ip: &[u8], v6: bool) -> u8 {
    if v6 { ipv6::ecn(ip) } else { ipv4::ecn(ip) }
}

#[inline]
fn set_ecn(ip: &mut [u8], v6: bool, ecn: u8) {
    if v6 {
        ipv6::set_ecn(ip, ecn)
    } else {
        ipv4::set_ecn(ip, ecn)
    }
}

/// Decrements the TTL / hop limit of the IP packet `ip`; false when it runs out.
#[inline]
fn decrement_hops(ip: &mut [u8], v6: bool) -> bool {
    if v6 {
        ipv6::decrement_hop_limit(ip)
    } else {
        ipv4::decrement_ttl(ip)
    }
}

/// RFC 1812 §4.3.2.7, RFC 4443 §2.4 (e): no ICMP error about an ICMP error, a fragment other
/// than the first, or a packet from an unspecified, multicast or broadcast source or to a
/// multicast or broadcast destination.
fn may_answer(buf: &[u8], l3: &L3) -> bool {
    let (src, dst) = (l3.key.src, l3.key.dst);
    let bad_address = if l3.v6 {
        src == 0 || src >> 120 == 0xff || dst >> 120 == 0xff
    } else {
        src == 0 || src >= 0xe000_0000 || dst >= 0xe000_0000
    };
    if l3.later_fragment || bad_address {
        return false;
    }
    let ul = l3.at + l3.hdr_len;
    let icmp_type = (l3.hdr_len < l3.len).then(|| buf[ul]);
    match (l3.v6, l3.key.protocol) {
        (false, proto::ICMP) => !matches!(icmp_type, Some(3 | 4 | 5 | 11 | 12)),
        (true, proto::ICMPV6) => !matches!(icmp_type, Some(0..128)),
        _ => true,
    }
}

/// Writes an ICMPv4 "fragmentation needed" (type 3 code 4, RFC 1191) in front of the packet.
fn icmp4_too_big(buf: &mut [u8], l3: &L3, src: Ipv4Addr, mtu: u16) -> Option<(usize, usize)> {
    let mut m = [3, 4, 0, 0, 0, 0, 0, 0];
    put16(&mut m, 6, mtu);
    icmp4_error(buf, l3, src, m, usize::MAX)
}

/// Writes an ICMPv4 error with the 8-byte header `msg` (checksum zero) in front of the packet,
/// quoting at most `quote` bytes of it.
fn icmp4_error(
    buf: &mut [u8],
    l3: &L3,
    src: Ipv4Addr,
    msg: [u8; 8],
    quote: usize,
) -> Option<(usize, usize)> {
    const HDR: usize = ipv4::MIN_HEADER_LEN + 8;
    // RFC 1812 §4.3.2.3: include as much of the original as fits in 576 bytes.
    let quoted = l3.len.min(576 - HDR).min(quote);
    let start = l3.at.checked_sub(HDR + ethernet::HEADER_LEN)? + ethernet::HEADER_LEN;
    let dst = Ipv4Addr::from(l3.key.src as u32);
    let icmp_at = start + ipv4::MIN_HEADER_LEN;
    buf[icmp_at..icmp_at + 8].copy_from_slice(&msg);
    let c = checksum::checksum(&buf[icmp_at..icmp_at + 8 + quoted]);
    put16(buf, icmp_at + 2, c);
    Ipv4Repr {
        src,
        dst,
        protocol: proto::ICMP,
        payload_len: 8 + quoted,
        tos: 0,
        ttl: 64,
        dont_frag: false,
    }
    .emit(&mut buf[start..]);
    Some((start, HDR + quoted))
}

/// Writes an ICMPv6 "packet too big" (type 2, RFC 4443 §3.2) in front of the packet.
fn icmp6_too_big(buf: &mut [u8], l3: &L3, src: Ipv6Addr, mtu: u32) -> Option<(usize, usize)> {
    let mut m = [2, 0, 0, 0, 0, 0, 0, 0];
    m[4..8].copy_from_slice(&mtu.to_be_bytes());
    icmp6_error(buf, l3, src, m, usize::MAX)
}

/// Writes an ICMPv6 error with the 8-byte header `msg` (checksum zero) in front of the packet,
/// quoting at most `quote` bytes of it.
fn icmp6_error(
    buf: &mut [u8],
    l3: &L3,
    src: Ipv6Addr,
    msg: [u8; 8],
    quote: usize,
) -> Option<(usize, usize)> {
    const HDR: usize = ipv6::HEADER_LEN + 8;
    // RFC 4443 §2.4 (c): as much of the original as fits in the minimum IPv6 MTU.
    let quoted = l3.len.min(1280 - HDR).min(quote);
    let start = l3.at.checked_sub(HDR + ethernet::HEADER_LEN)? + ethernet::HEADER_LEN;
    let dst = Ipv6Addr::from(l3.key.src);
    let icmp_at = start + ipv6::HEADER_LEN;
    buf[icmp_at..icmp_at + 8].copy_from_slice(&msg);
    let psum = checksum::pseudo_v6(&src, &dst, proto::ICMPV6, (8 + quoted) as u32);
    let c = !checksum::fold(checksum::sum(psum, &buf[icmp_at..icmp_at + 8 + quoted]));
    put16(buf, icmp_at + 2, c);
    Ipv6Repr {
        src,
        dst,
        next_header: proto::ICMPV6,
        payload_len: 8 + quoted,
        traffic_class: 0,
        hop_limit: 64,
    }
    .emit(&mut buf[start..]);
    Some((start, HDR + quoted))
}

/// The SPI and sequence number of an ESP (or UDP-encapsulated ESP) frame, read without
/// validation: only a hint for prefetching; the real parse happens later.
#[inline]
fn guess_esp(frame: &[u8]) -> Option<(u32, u32)> {
    let be32 = |at: usize| {
        frame
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (proto, l4) = match frame.get(12..14)? {
        [0x08, 0x00] => (
            *frame.get(ethernet::HEADER_LEN + 9)?,
            ethernet::HEADER_LEN + usize::from(frame.get(ethernet::HEADER_LEN)? & 0xf) * 4,
        ),
        [0x86, 0xdd] => (
            *frame.get(ethernet::HEADER_LEN + 6)?,
            ethernet::HEADER_LEN + ipv6::HEADER_LEN,
        ),
        _ => return None,
    };
    let esp = match proto {
        proto::ESP => l4,
        proto::UDP => l4 + udp::HEADER_LEN,
        _ => return None,
    };
    Some((be32(esp)?, be32(esp + 4)?))
}
