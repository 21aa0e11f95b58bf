//! The sans-I/O IKEv1 state machine (quinn-proto style): datagrams, time and operator commands
//! in, [`Action`]s out. No sockets, no clock, no threads; the driver (`driver.rs`) owns those.
//!
//! Layout: this file holds the engine's state (main modes, quick modes, children, per-peer
//! intent), the public API the driver calls, the timers and the helpers every exchange uses
//! (sending, failing, sealing and opening encrypted messages). `mm.rs` is main mode (RFC 2409
//! §5, PSK) with NAT-T (RFC 3947), `qm.rs` quick mode (§5.5), `info.rs` the informational
//! exchange (§5.7): N and D, DPD (RFC 3706), INITIAL-CONTACT.
//!
//! Invariants: no input panics (every index is checked, every parse error is a counted drop);
//! a message is acted on only after its HASH checks out, and the CBC IV chain only advances
//! then; a phase-2 message ID used before under the main mode (by either side: the
//! informational HASH does not tell directions apart) is dropped before decryption; nothing
//! unauthenticated ends a main mode past MM3 or moves its addresses; a retransmitted request (same bytes) is answered from the cached response and never
//! processed twice; each SPI from [`Env::allocate_spi`] is either installed ([`Action::ChildUp`])
//! or given back ([`Action::ReleaseSpi`]). Children belong to the peer, not to a main mode
//! (IKEv1): a main mode's end never removes them, except DPD with `dpd_action`.

mod info;
mod mm;
mod qm;

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use zeroize::Zeroizing;

use super::config::{IkeCipher, IkeHash, IkePeer, IkeProposal};
use super::crypto::{BLOCK_LEN, CbcKey, Cipher, DhGroup, DhSecret, EspCipher, Iv, Phase1Keys, Prf};
use super::types::{Action, Env, Exchange, MainModeStatus, MmEnd, PeerStatus};
use super::wire::{self, Builder, Flags, Header, Identity, Message, WireError};
use crate::codes::{self, Code};
use crate::sa::Limits;
use crate::sa::policy::Prefix;

/// An ISAKMP cookie.
pub(crate) type Cookie = [u8; 8];

/// One direction's ESP key material.
type Keymat = Zeroizing<Vec<u8>>;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
/// Retransmission waits of a request (after the first send, then after each resend); the
/// exchange fails when the last one runs out.
const RETX: [u64; 5] = [500 * MS, S, 2 * S, 4 * S, 8 * S];
/// A responder's main mode that is not up by then is dropped (the initiator gives up after
/// the sum of [`RETX`]).
const HALF_OPEN: u64 = 30 * S;
/// How long a finished quick mode is kept to answer retransmissions.
const DONE_KEEP: u64 = 60 * S;
/// NAT-T keepalive interval (RFC 3948 §4; strongSwan's default).
const KEEPALIVE: u64 = 20 * S;
/// Retry back-off of an `initiate = true` peer after a failure (seconds).
const BACKOFF: [u64; 5] = [5, 10, 20, 40, 60];
/// Half-open responder main modes per peer address.
const HALF_OPEN_PER_ADDR: usize = 64;
/// Message IDs remembered per main mode (ours and the peer's, RFC 2409 §5.5/§5.7: unique
/// under it): repeats are dropped before any work; the oldest is forgotten first.
const MIDS_KEPT: usize = 2048;
/// How long a rekeyed (superseded) child is still known to the engine: longer than the
/// control's default rekey grace, after which its inbound SA is retired anyway.
const SUPERSEDED_KEEP: u64 = 60 * S;
/// Nonce length we send.
const NONCE_LEN: usize = 32;

/// What a responder accepts from all peers together (`[ike]` `responder_mm_per_s` and
/// `responder_half_open`): new main modes per second (a token bucket of this size, refilled
/// continuously) and half-open main modes in all. Beyond either, MM1 is refused (13882).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponderLimits {
    pub mm_per_s: u64,
    pub half_open: usize,
}

impl Default for ResponderLimits {
    fn default() -> Self {
        ResponderLimits {
            mm_per_s: 200,
            half_open: 1024,
        }
    }
}

/// Counters of what the engine refused or repeated (`ike_list`, tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Datagrams dropped: malformed, unknown cookies, bad hash, unexpected, over a limit.
    pub dropped: u64,
    /// Requests answered again from the cached response.
    pub duplicates: u64,
    /// Our own retransmissions.
    pub retransmits: u64,
    /// New main modes refused by the half-open or rate limits, and half-open ones evicted
    /// to make room.
    pub limited: u64,
    /// Encrypted messages with a message ID already seen under their main mode (replays,
    /// reflections of our own): dropped before decryption (also counted in `dropped`).
    pub replays: u64,
}

/// The message IDs used under a main mode, both directions, bounded: the newest
/// [`MIDS_KEPT`] are remembered (a set for the lookup, a queue for the age).
#[derive(Default)]
pub(crate) struct MidLog {
    set: HashSet<u32>,
    order: VecDeque<u32>,
}

impl MidLog {
    pub(crate) fn contains(&self, mid: u32) -> bool {
        self.set.contains(&mid)
    }

    /// Remembers `mid`; `false` if it was known already.
    pub(crate) fn insert(&mut self, mid: u32) -> bool {
        if !self.set.insert(mid) {
            return false;
        }
        self.order.push_back(mid);
        while self.order.len() > MIDS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
    }
}

/// A message waiting for its answer, resent on a back-off.
pub(crate) struct Retx {
    data: Vec<u8>,
    local_port: u16,
    to: SocketAddr,
    /// Index into [`RETX`] of the wait now running.
    step: usize,
    next_at: u64,
}

impl Retx {
    fn new(now: u64, data: Vec<u8>, local_port: u16, to: SocketAddr) -> Self {
        Retx {
            data,
            local_port,
            to,
            step: 0,
            next_at: now + RETX[0],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MmState {
    /// Initiator: MM1 sent, waiting for MM2.
    I1,
    /// MM3 sent.
    I3,
    /// MM5 sent.
    I5,
    /// Responder: MM2 sent, waiting for MM3.
    R2,
    /// MM4 sent.
    R4,
    Up,
}

/// One main mode (ISAKMP SA).
pub(crate) struct Mm {
    peer: usize,
    icookie: Cookie,
    rcookie: Cookie,
    initiator: bool,
    state: MmState,
    created: u64,
    established: u64,
    /// Our address and port in use, and the peer's (both follow the float to 4500 and the
    /// peer's NAT mapping).
    local: SocketAddr,
    remote: SocketAddr,
    prop: Option<IkeProposal>,
    lifetime_s: u64,
    lifetime_kb: Option<u64>,
    /// The initiator's SA payload body (SAi_b).
    sai_b: Vec<u8>,
    dh: Option<DhSecret>,
    ke_i: Vec<u8>,
    ke_r: Vec<u8>,
    ni: Vec<u8>,
    nr: Vec<u8>,
    keys: Option<Phase1Keys>,
    cbc: Option<CbcKey>,
    /// Phase-1 CBC chain; once up, the last block of phase 1 (the base of phase-2 IVs).
    iv: Iv,
    /// The peer's NAT-T vendor ID: `Some(true)` RFC 3947, `Some(false)` drafts only.
    nat_t: Option<bool>,
    peer_dpd: bool,
    /// A NAT was seen (or faked, for `encap = udp`): IKE on 4500, ESP in UDP.
    nat: bool,
    send_ic: bool,
    reauth_of: Option<(Cookie, Cookie)>,
    reauth_at: Option<u64>,
    reauth_started: bool,
    retx: Option<Retx>,
    /// Digest of the last request processed and the answer sent to it.
    last_in: Vec<u8>,
    last_out: Option<Vec<u8>>,
    /// Message IDs used under this main mode (ours and the peer's), bounded.
    mids: MidLog,
    qms: Vec<Qm>,
    last_seen: u64,
    dpd: Option<Dpd>,
    dpd_seq: u32,
    /// The highest R-U-THERE sequence number of the peer so far (RFC 3706 §7).
    peer_dpd_seq: Option<u32>,
    keepalive_at: u64,
    /// A failure of the exchange already reported (an undecryptable MM5/MM6, an
    /// unauthenticated refusal): the timeout that may follow reports no second one.
    reported: bool,
    /// When an undecryptable MM5 was last reported (at most one report in 5 s).
    garbage_at: Option<u64>,
    /// Why the exchange is likely to fail, for the timeout's event: an MM5/MM6 that did not
    /// decrypt, or the peer's unauthenticated refusal.
    suspect: Option<(Code, String)>,
    dead: bool,
}

pub(crate) struct Dpd {
    started: u64,
    next_at: u64,
    /// The sequence number of this round's first R-U-THERE (resends take the next ones).
    first_seq: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QmState {
    /// Initiator: QM1 sent, waiting for QM2.
    I1,
    /// Initiator: QM3 sent, child up (kept to answer a retransmitted QM2).
    IDone,
    /// Responder: QM2 sent, waiting for QM3.
    R2,
    /// Responder: child up.
    RDone,
}

/// One quick mode under a main mode.
pub(crate) struct Qm {
    mid: u32,
    /// The peer configuration the child is for (a main mode may carry several tunnels to
    /// the same gateway).
    peer: usize,
    state: QmState,
    iv: Iv,
    created: u64,
    ni: Vec<u8>,
    nr: Vec<u8>,
    our_spi: u32,
    peer_spi: u32,
    esp: EspCipher,
    life_s: u64,
    life_kb: Option<u64>,
    dh: Option<DhSecret>,
    udp: bool,
    replaces: Option<(u32, u32)>,
    retx: Option<Retx>,
    last_in: Vec<u8>,
    last_out: Option<Vec<u8>>,
    /// Responder: the KEYMAT (inbound, outbound), computed at QM2, handed out at QM3.
    km: Option<(Keymat, Keymat)>,
}

/// An installed child SA pair.
pub(crate) struct Child {
    peer: usize,
    inbound: u32,
    outbound: u32,
    /// Creation order (the clock may not move between two children).
    created: u64,
    /// A newer child was negotiated to replace it (when).
    superseded: bool,
    superseded_at: u64,
    /// The inbound SPI of the child this one replaced (restored if this one fails to install).
    replaced: Option<u32>,
    /// Its soft limit was reached.
    soft: bool,
    /// A rekey of it is under way.
    rekeying: bool,
}

/// What a peer wants and its retry state.
#[derive(Default)]
pub(crate) struct PeerRt {
    /// A child is wanted (initiate was called, and not terminated).
    want: bool,
    /// Quick modes to start once a main mode is up: `None` a new child, `Some` a rekey.
    pending: Vec<Option<(u32, u32)>>,
    retry_at: Option<u64>,
    backoff: usize,
    /// INITIAL-CONTACT was sent (or a main mode came up) once.
    contacted: bool,
}

/// The IKEv1 engine for all configured peers.
pub struct Engine {
    peers: Vec<IkePeer>,
    /// Each peer's gateway: the lowest index of the peers with the same local and remote
    /// address and PSK (they share main modes).
    gw: Vec<usize>,
    rt: Vec<PeerRt>,
    mms: Vec<Mm>,
    children: Vec<Child>,
    actions: VecDeque<Action>,
    counters: Counters,
    limits: ResponderLimits,
    /// Token bucket for new responder main modes (tokens × 1e9) and its last refill.
    tokens: u64,
    tokens_at: u64,
    /// When the last MM_LIMIT failure was reported (at most one a second).
    limit_reported: Option<u64>,
    /// When the last refused aggressive mode was reported.
    refusal_reported: Option<u64>,
    /// Children created so far (their creation order).
    child_seq: u64,
}

impl Engine {
    pub fn new(peers: Vec<IkePeer>) -> Engine {
        let rt = peers.iter().map(|_| PeerRt::default()).collect();
        let mut first: std::collections::HashMap<(IpAddr, IpAddr, &[u8]), usize> =
            std::collections::HashMap::new();
        let gw = peers
            .iter()
            .enumerate()
            .map(|(i, p)| *first.entry((p.local, p.remote, &p.psk[..])).or_insert(i))
            .collect();
        Engine {
            gw,
            peers,
            rt,
            mms: Vec::new(),
            children: Vec::new(),
            actions: VecDeque::new(),
            counters: Counters::default(),
            limits: ResponderLimits::default(),
            tokens: ResponderLimits::default().mm_per_s * S,
            tokens_at: 0,
            limit_reported: None,
            refusal_reported: None,
            child_seq: 0,
        }
    }

    /// Sets the responder's limits (`[ike]` in the config); the token bucket starts full.
    pub fn set_responder_limits(&mut self, limits: ResponderLimits) {
        self.tokens = limits.mm_per_s.saturating_mul(S);
        self.limits = limits;
    }

    /// A datagram arrived on `local` (our address and port, 500 or 4500; the non-ESP marker
    /// of port 4500 already stripped) from `from`.
    pub fn receive(
        &mut self,
        env: &mut dyn Env,
        now: u64,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) {
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(WireError::AggressiveMode) => {
                self.counters.dropped += 1;
                // Reported at most once a second (the offer is unauthenticated).
                let quiet = self.refusal_reported.is_some_and(|t| now < t + S);
                if !quiet && let Some(p) = self.peer_by_addr(local.ip(), from.ip()) {
                    self.refusal_reported = Some(now);
                    self.failed(
                        p,
                        Exchange::Main,
                        WireError::AggressiveMode.code(),
                        "aggressive mode offered by the peer: refused (main mode only)".into(),
                    );
                }
                return;
            }
            Err(_) => {
                self.counters.dropped += 1;
                return;
            }
        };
        match msg.header.exchange {
            wire::Exchange::Main => self.recv_main(env, now, local, from, data, &msg),
            wire::Exchange::Quick => self.recv_quick(env, now, local, from, data, &msg),
            wire::Exchange::Informational => self.recv_info(env, now, local, from, &msg),
        }
        self.sweep(env, now);
    }

    /// Timers: retransmissions, DPD, reauthentication, half-open expiry, keepalives, retries,
    /// the end of rekeyed children.
    pub fn tick(&mut self, env: &mut dyn Env, now: u64) {
        // A rekeyed child is forgotten once its inbound SA has retired (the control retires it
        // after the grace period; nothing else tells the engine): no DELETE for it later.
        self.children
            .retain(|c| !c.superseded || now < c.superseded_at + SUPERSEDED_KEEP);
        let mut newest = self.newest_table();
        for mi in 0..self.mms.len() {
            if self.mms[mi].dead {
                continue;
            }
            self.tick_mm(env, now, mi, &mut newest);
        }
        for p in 0..self.peers.len() {
            if self.rt[p].retry_at.is_some_and(|t| t <= now) {
                self.rt[p].retry_at = None;
                self.retry(env, now, p);
            }
        }
        self.sweep(env, now);
    }

    fn tick_mm(&mut self, env: &mut dyn Env, now: u64, mi: usize, newest: &mut [Option<usize>]) {
        // Main-mode retransmission (initiator) or half-open expiry (responder).
        if self.mms[mi].state != MmState::Up {
            if !self.mms[mi].initiator && now >= self.mms[mi].created + HALF_OPEN {
                let m = &mut self.mms[mi];
                m.dead = true;
                if m.state == MmState::R4 && !m.reported {
                    let p = m.peer;
                    self.failed(
                        p,
                        Exchange::Main,
                        codes::IKE_TIMED_OUT,
                        "main mode (responder): no MM5 from the initiator".into(),
                    );
                }
                return;
            }
            if let Some(gave_up) = self.retransmit_mm(now, mi)
                && gave_up
            {
                let m = &mut self.mms[mi];
                m.dead = true;
                let (p, st, reported) = (m.peer, m.state, m.reported);
                let (code, reason) = m.suspect.take().unwrap_or_else(|| {
                    (
                        codes::IKE_TIMED_OUT,
                        format!("main mode: no answer from the peer ({st:?} retransmitted)"),
                    )
                });
                if !reported {
                    self.failed(p, Exchange::Main, code, reason);
                }
                self.schedule_retry(now, p);
            }
            return;
        }
        self.tick_qms(env, now, mi);
        if self.mms[mi].dead {
            return;
        }
        if !self.is_newest(newest, mi) {
            return;
        }
        self.tick_dpd(env, now, mi);
        if self.mms[mi].dead {
            return;
        }
        let m = &mut self.mms[mi];
        if m.nat && now >= m.keepalive_at {
            m.keepalive_at = now + KEEPALIVE;
            let (p, to) = (m.peer, SocketAddr::new(m.remote.ip(), 4500));
            self.send(p, 4500, to, vec![0xff]);
        }
        let m = &mut self.mms[mi];
        if !m.reauth_started && m.reauth_at.is_some_and(|t| now >= t) {
            m.reauth_started = true;
            let (p, old) = (m.peer, (m.icookie, m.rcookie));
            self.start_mm(env, now, p, Some(old));
        }
    }

    /// Resends the main mode's pending request if due; `Some(true)` when it gave up.
    fn retransmit_mm(&mut self, now: u64, mi: usize) -> Option<bool> {
        let m = &mut self.mms[mi];
        let r = m.retx.as_mut()?;
        if now < r.next_at {
            return Some(false);
        }
        if r.step + 1 >= RETX.len() {
            m.retx = None;
            return Some(true);
        }
        r.step += 1;
        r.next_at = now + RETX[r.step];
        let (data, port, to) = (r.data.clone(), r.local_port, r.to);
        let p = m.peer;
        self.counters.retransmits += 1;
        self.send(p, port, to, data);
        Some(false)
    }

    /// When [`Engine::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let mut d: Option<u64> = None;
        let mut at = |t: u64| d = Some(d.map_or(t, |x| x.min(t)));
        let newest = self.newest_table();
        for r in &self.rt {
            if let Some(t) = r.retry_at {
                at(t);
            }
        }
        for c in self.children.iter().filter(|c| c.superseded) {
            at(c.superseded_at + SUPERSEDED_KEEP);
        }
        for (mi, m) in self.mms.iter().enumerate() {
            if m.dead {
                continue;
            }
            if m.state != MmState::Up {
                if let Some(r) = &m.retx {
                    at(r.next_at);
                }
                if !m.initiator {
                    at(m.created + HALF_OPEN);
                }
                continue;
            }
            for q in &m.qms {
                match &q.retx {
                    Some(r) => at(r.next_at),
                    None => at(q.created + DONE_KEEP),
                }
            }
            if self.gw.get(m.peer).and_then(|&g| newest[g]) != Some(mi) {
                continue;
            }
            if let Some(t) = self.dpd_deadline(m) {
                at(t);
            }
            if m.nat {
                at(m.keepalive_at);
            }
            if !m.reauth_started
                && let Some(t) = m.reauth_at
            {
                at(t);
            }
        }
        d
    }

    /// Main mode if none, then quick mode; an `initiate = true` peer keeps retrying after
    /// failures with a back-off.
    pub fn initiate(&mut self, env: &mut dyn Env, now: u64, peer: usize) {
        if peer >= self.peers.len() {
            return;
        }
        self.rt[peer].want = true;
        self.rt[peer].retry_at = None;
        let has_child = self
            .children
            .iter()
            .any(|c| c.peer == peer && !c.superseded);
        let fresh_pending = self.rt[peer].pending.contains(&None);
        let fresh_running = self.mms.iter().any(|m| {
            !m.dead
                && m.qms
                    .iter()
                    .any(|q| q.peer == peer && q.state == QmState::I1 && q.replaces.is_none())
        });
        if !has_child && !fresh_pending && !fresh_running {
            self.rt[peer].pending.push(None);
        }
        self.kick(env, now, peer);
        self.sweep(env, now);
    }

    /// ESP DELETEs for the peer's children and ISAKMP DELETEs for its main modes;
    /// `ChildDown{terminated}` and `MainModeDown{Terminated}`. No retry follows.
    pub fn terminate(&mut self, env: &mut dyn Env, now: u64, peer: usize) {
        if peer >= self.peers.len() {
            return;
        }
        let rt = &mut self.rt[peer];
        rt.want = false;
        rt.pending.clear();
        rt.retry_at = None;
        rt.backoff = 0;
        let kids: Vec<(u32, u32)> = self
            .children
            .iter()
            .filter(|c| c.peer == peer)
            .map(|c| (c.inbound, c.outbound))
            .collect();
        if !kids.is_empty() {
            let ins: Vec<u32> = kids.iter().map(|k| k.0).collect();
            if let Some(mi) = self.newest_up(peer) {
                self.send_delete_esp(env, mi, &ins);
            }
            self.children.retain(|c| c.peer != peer);
            for (i, o) in kids {
                self.actions.push_back(Action::ChildDown {
                    peer,
                    inbound: Some(i),
                    outbound: Some(o),
                    reason: "terminated",
                });
            }
        }
        for mi in 0..self.mms.len() {
            let m = &self.mms[mi];
            if m.dead || m.peer != peer {
                continue;
            }
            // Quick modes of other tunnels under this main mode go on; ours stop.
            self.abort_qms(mi, Some(peer), false);
            if self.mms[mi].peer != peer {
                continue;
            }
            if self.mms[mi].state == MmState::Up {
                self.send_delete_isakmp(env, mi);
                let m = &mut self.mms[mi];
                m.dead = true;
                let (i, r) = (cookie_u64(&m.icookie), cookie_u64(&m.rcookie));
                self.actions.push_back(Action::MainModeDown {
                    peer,
                    icookie: i,
                    rcookie: r,
                    cause: MmEnd::Terminated,
                });
            } else {
                self.mms[mi].dead = true;
            }
        }
        self.sweep(env, now);
    }

    /// The data path's soft limit (time or bytes) of one of our SAs: rekey its child (a new
    /// quick mode under an established main mode, or a new main mode first).
    pub fn child_soft_expired(&mut self, env: &mut dyn Env, now: u64, spi: u32, outbound: bool) {
        let Some(ci) = self.child_by_spi(spi, outbound) else {
            return;
        };
        let c = &mut self.children[ci];
        c.soft = true;
        if c.rekeying || c.superseded {
            return;
        }
        let (peer, created) = (c.peer, c.created);
        // A newer sibling (simultaneous rekey) carries on; this one just runs out.
        if self
            .children
            .iter()
            .any(|o| o.peer == peer && !o.superseded && o.created > created)
        {
            return;
        }
        let c = &mut self.children[ci];
        c.rekeying = true;
        let pair = (c.inbound, c.outbound);
        self.rt[peer].pending.push(Some(pair));
        self.kick(env, now, peer);
        self.sweep(env, now);
    }

    /// The data path's hard limit: send the ESP DELETE for the pair, forget it.
    pub fn child_hard_expired(&mut self, env: &mut dyn Env, now: u64, spi: u32, outbound: bool) {
        let Some(ci) = self.child_by_spi(spi, outbound) else {
            return;
        };
        let c = self.children.remove(ci);
        if let Some(mi) = self.newest_up(c.peer) {
            self.send_delete_esp(env, mi, &[c.inbound]);
        }
        let peer = c.peer;
        if self.rt[peer].want && !self.children.iter().any(|o| o.peer == peer) {
            self.schedule_retry_at(now, peer, now);
        }
        self.sweep(env, now);
    }

    /// The control retired the inbound SA of a rekeyed child (`retired after rekey`): the
    /// child is forgotten (no DELETE for it later).
    pub fn child_retired(&mut self, inbound_spi: u32) {
        if let Some(ci) = self.child_by_spi(inbound_spi, false)
            && self.children[ci].superseded
        {
            self.children.remove(ci);
        }
    }

    /// Installing a negotiated child failed in the driver (it removed what went in and gave
    /// the SPI back): the child is forgotten, the one it was to replace stays in service, the
    /// peer is told with an ESP DELETE (it installed its side), `qm_failed` is reported and
    /// a retry follows if the child is wanted.
    pub fn child_install_failed(
        &mut self,
        env: &mut dyn Env,
        now: u64,
        inbound_spi: u32,
        reason: String,
    ) {
        let Some(ci) = self.child_by_spi(inbound_spi, false) else {
            return;
        };
        let c = self.children.remove(ci);
        if let Some(old) = c.replaced
            && let Some(o) = self.children.iter_mut().find(|o| o.inbound == old)
        {
            o.superseded = false;
        }
        if let Some(mi) = self.newest_up(c.peer) {
            self.send_delete_esp(env, mi, &[c.inbound]);
        }
        self.failed(
            c.peer,
            Exchange::Quick,
            codes::IKE_GENERAL_PROCESSING_ERROR,
            format!("quick mode: installing the SAs failed ({reason})"),
        );
        self.schedule_retry(now, c.peer);
        self.sweep(env, now);
    }

    /// The control thread ended a main mode's lifetime (it emitted 13885 `lifetime`): send
    /// the ISAKMP DELETE and forget it.
    pub fn main_mode_expired(&mut self, env: &mut dyn Env, now: u64, icookie: u64, rcookie: u64) {
        let (i, r) = (icookie.to_be_bytes(), rcookie.to_be_bytes());
        let Some(mi) = self
            .mms
            .iter()
            .position(|m| !m.dead && m.icookie == i && m.rcookie == r)
        else {
            return;
        };
        if self.mms[mi].state == MmState::Up {
            self.send_delete_isakmp(env, mi);
        }
        self.end_mm(env, now, mi, MmEnd::Lifetime);
        self.sweep(env, now);
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// What the engine refused or repeated so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The operator's view of every peer, built in one pass over main modes and children
    /// (linear in their number: a concentrator has thousands of peers).
    pub fn status(&self, now: u64) -> Vec<PeerStatus> {
        let n = self.peers.len();
        let mut main_modes: Vec<Vec<MainModeStatus>> = vec![Vec::new(); n];
        let mut busy = vec![false; n];
        for m in self.mms.iter().filter(|m| !m.dead) {
            for q in &m.qms {
                if matches!(q.state, QmState::I1 | QmState::R2) && q.peer < n {
                    busy[q.peer] = true;
                }
            }
            if m.peer >= n {
                continue;
            }
            if m.state != MmState::Up {
                busy[m.peer] = true;
                continue;
            }
            main_modes[m.peer].push(MainModeStatus {
                icookie: format!("{:016x}", cookie_u64(&m.icookie)),
                rcookie: format!("{:016x}", cookie_u64(&m.rcookie)),
                proposal: m.prop.map(proposal_name).unwrap_or_default(),
                initiator: m.initiator,
                age_s: now.saturating_sub(m.established) / S,
            });
        }
        let mut children: Vec<Vec<(u32, u32)>> = vec![Vec::new(); n];
        for c in self.children.iter().filter(|c| c.peer < n) {
            children[c.peer].push((c.inbound, c.outbound));
        }
        self.peers
            .iter()
            .zip(main_modes.into_iter().zip(children))
            .enumerate()
            .map(|(i, (p, (main_modes, children)))| {
                let state = if !main_modes.is_empty() || !children.is_empty() {
                    "established"
                } else if busy[i] {
                    "connecting"
                } else {
                    "idle"
                };
                PeerStatus {
                    peer: i,
                    tunnel: p.tunnel.clone(),
                    remote: p.remote.to_string(),
                    state,
                    main_modes,
                    children,
                }
            })
            .collect()
    }

    // ---------------------------------------------------------------------------------------
    // Peers, main modes and children.

    /// The configured peer for a datagram between `local` and `remote`.
    fn peer_by_addr(&self, local: IpAddr, remote: IpAddr) -> Option<usize> {
        self.peers
            .iter()
            .position(|p| p.remote == remote && p.local == local)
    }

    /// Whether two peer configurations talk to the same gateway (one main mode serves both).
    fn same_gateway(&self, a: usize, b: usize) -> bool {
        matches!((self.gw.get(a), self.gw.get(b)), (Some(x), Some(y)) if x == y)
    }

    /// [`Engine::newest_up`] of every gateway at once (indexed by gateway), in one pass:
    /// the timers visit every main mode, and asking per main mode would cost O(n²).
    fn newest_table(&self) -> Vec<Option<usize>> {
        let mut best: Vec<Option<usize>> = vec![None; self.peers.len()];
        for (i, m) in self.mms.iter().enumerate() {
            if m.dead || m.state != MmState::Up {
                continue;
            }
            let Some(&g) = self.gw.get(m.peer) else {
                continue;
            };
            if best[g].is_none_or(|b| self.mms[b].established <= m.established) {
                best[g] = Some(i);
            }
        }
        best
    }

    /// Whether main mode `mi` is its gateway's newest established one, with `table` from
    /// [`Engine::newest_table`] refreshed for the gateway when its entry died since.
    fn is_newest(&self, table: &mut [Option<usize>], mi: usize) -> bool {
        let p = self.mms[mi].peer;
        let Some(&g) = self.gw.get(p) else {
            return false;
        };
        if table[g].is_none_or(|b| self.mms[b].dead || self.mms[b].state != MmState::Up) {
            table[g] = self.newest_up(p);
        }
        table[g] == Some(mi)
    }

    /// The newest established main mode that can carry `peer`'s quick modes.
    fn newest_up(&self, peer: usize) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, m) in self.mms.iter().enumerate() {
            if m.dead || m.state != MmState::Up || !self.same_gateway(m.peer, peer) {
                continue;
            }
            if best.is_none_or(|b| self.mms[b].established <= m.established) {
                best = Some(i);
            }
        }
        best
    }

    fn child_by_spi(&self, spi: u32, outbound: bool) -> Option<usize> {
        self.children.iter().position(|c| {
            if outbound {
                c.outbound == spi
            } else {
                c.inbound == spi
            }
        })
    }

    /// Starts what the peer's pending list asks for: quick modes under an established main
    /// mode, or a main mode first.
    fn kick(&mut self, env: &mut dyn Env, now: u64, peer: usize) {
        if self.rt[peer].pending.is_empty() {
            return;
        }
        if let Some(mi) = self.newest_up(peer) {
            let pending = std::mem::take(&mut self.rt[peer].pending);
            for r in pending {
                self.start_qm(env, now, mi, peer, r);
            }
            return;
        }
        // A main mode under way (ours, or the peer's past MM3: an MM1 alone proves nothing).
        let connecting = self.mms.iter().any(|m| {
            !m.dead
                && (m.initiator && m.state != MmState::Up || m.state == MmState::R4)
                && self.same_gateway(m.peer, peer)
        });
        if !connecting {
            self.start_mm(env, now, peer, None);
        }
    }

    /// A retry after a failure: the wanted child, and rekeys of children past their soft
    /// limit whose rekey failed.
    fn retry(&mut self, env: &mut dyn Env, now: u64, peer: usize) {
        for c in self.children.iter_mut() {
            if c.peer == peer && c.soft && !c.rekeying && !c.superseded {
                c.rekeying = true;
                self.rt[peer].pending.push(Some((c.inbound, c.outbound)));
            }
        }
        let has_child = self.children.iter().any(|c| c.peer == peer);
        if self.rt[peer].want && !has_child && !self.rt[peer].pending.contains(&None) {
            self.rt[peer].pending.push(None);
        }
        self.kick(env, now, peer);
    }

    /// After a failure of an exchange we started: try again later if anything is wanted.
    fn schedule_retry(&mut self, now: u64, peer: usize) {
        let Some(cfg) = self.peers.get(peer) else {
            return;
        };
        let rt = &self.rt[peer];
        let soft = self.children.iter().any(|c| c.peer == peer && c.soft);
        if !((cfg.initiate && rt.want) || !rt.pending.is_empty() || soft) {
            return;
        }
        let step = BACKOFF[rt.backoff.min(BACKOFF.len() - 1)];
        self.schedule_retry_at(now, peer, now + step * S);
        let rt = &mut self.rt[peer];
        rt.backoff = (rt.backoff + 1).min(BACKOFF.len() - 1);
    }

    fn schedule_retry_at(&mut self, _now: u64, peer: usize, at: u64) {
        let rt = &mut self.rt[peer];
        rt.retry_at = Some(rt.retry_at.map_or(at, |t| t.min(at)));
    }

    /// Ends a main mode with `cause` (no DELETE sent here). Its unfinished quick modes stop;
    /// the ones we started are queued again.
    fn end_mm(&mut self, env: &mut dyn Env, now: u64, mi: usize, cause: MmEnd) {
        let m = &mut self.mms[mi];
        if m.dead {
            return;
        }
        m.dead = true;
        let (peer, up) = (m.peer, m.state == MmState::Up);
        let (i, r) = (cookie_u64(&m.icookie), cookie_u64(&m.rcookie));
        self.abort_qms(mi, None, true);
        if up {
            self.actions.push_back(Action::MainModeDown {
                peer,
                icookie: i,
                rcookie: r,
                cause,
            });
        }
        for p in 0..self.peers.len() {
            if !self.rt[p].pending.is_empty() && self.same_gateway(p, peer) {
                self.kick(env, now, p);
            }
        }
    }

    /// Stops the unfinished quick modes of a main mode (of one peer, or all): their SPIs go
    /// back; with `requeue`, the ones we started are queued again for the next main mode.
    fn abort_qms(&mut self, mi: usize, peer: Option<usize>, requeue: bool) {
        let qms = std::mem::take(&mut self.mms[mi].qms);
        let mut keep = Vec::new();
        for q in qms {
            if peer.is_some_and(|p| p != q.peer) {
                keep.push(q);
                continue;
            }
            match q.state {
                QmState::I1 | QmState::R2 => {
                    if q.state == QmState::R2 {
                        // Our inbound SA went in at QM2 (`InboundUp`): out again.
                        self.actions.push_back(Action::ChildDown {
                            peer: q.peer,
                            inbound: Some(q.our_spi),
                            outbound: None,
                            reason: "quick mode aborted",
                        });
                    }
                    // (After the removal: the table frees only a reservation of this SPI.)
                    self.actions
                        .push_back(Action::ReleaseSpi { spi: q.our_spi });
                    if requeue && q.state == QmState::I1 {
                        let alive = q.replaces.is_none_or(|(i, _)| {
                            self.children
                                .iter()
                                .any(|c| c.inbound == i && !c.superseded)
                        });
                        if alive && (q.replaces.is_some() || self.rt[q.peer].want) {
                            self.rt[q.peer].pending.push(q.replaces);
                        }
                    }
                }
                QmState::IDone | QmState::RDone => {}
            }
        }
        self.mms[mi].qms = keep;
    }

    /// Drops dead main modes.
    fn sweep(&mut self, _env: &mut dyn Env, _now: u64) {
        self.mms.retain(|m| !m.dead);
    }

    // ---------------------------------------------------------------------------------------
    // Output.

    fn send(&mut self, peer: usize, local_port: u16, to: SocketAddr, data: Vec<u8>) {
        self.actions.push_back(Action::Send {
            peer,
            local_port,
            to,
            data,
        });
    }

    fn failed(&mut self, peer: usize, exchange: Exchange, code: Code, reason: String) {
        tracing::debug!(peer, ?exchange, code = code.code, "ike: {reason}");
        self.actions.push_back(Action::Failed {
            peer,
            exchange,
            code,
            reason,
        });
    }

    fn random_u32(env: &mut dyn Env) -> u32 {
        let mut b = [0u8; 4];
        env.random(&mut b);
        u32::from_be_bytes(b)
    }

    fn random_cookie(env: &mut dyn Env) -> Cookie {
        let mut c = [0u8; 8];
        while c == [0; 8] {
            env.random(&mut c);
        }
        c
    }

    fn nonce(env: &mut dyn Env) -> Vec<u8> {
        let mut n = vec![0u8; NONCE_LEN];
        env.random(&mut n);
        n
    }

    /// A fresh message ID, unique under the main mode.
    fn new_mid(env: &mut dyn Env, m: &mut Mm) -> u32 {
        loop {
            let mid = Self::random_u32(env);
            if mid != 0 && m.mids.insert(mid) {
                return mid;
            }
        }
    }
}

// -------------------------------------------------------------------------------------------
// Helpers shared by the exchanges.

pub(crate) fn cookie_u64(c: &Cookie) -> u64 {
    u64::from_be_bytes(*c)
}

/// A digest of a datagram, to recognise retransmissions.
pub(crate) fn digest(data: &[u8]) -> Vec<u8> {
    Prf::HmacSha256.hash(&[data])
}

pub(crate) fn header(i: Cookie, r: Cookie, exchange: wire::Exchange, mid: u32) -> Header {
    Header {
        icookie: i,
        rcookie: r,
        next_payload: 0,
        exchange,
        flags: Flags::default(),
        message_id: mid,
        length: 0,
    }
}

/// Builds an encrypted message: `f` writes the payloads; the body is padded and encrypted
/// with `iv`. Returns the datagram and the next IV of the chain.
pub(crate) fn seal(
    cbc: &CbcKey,
    iv: &Iv,
    h: &Header,
    f: impl FnOnce(&mut Builder<'_>),
) -> Option<(Vec<u8>, Iv)> {
    let mut buf = Vec::with_capacity(256);
    let mut b = Builder::new(&mut buf, h);
    f(&mut b);
    let range = b.finish_padded(BLOCK_LEN).ok()?;
    let next = cbc.encrypt(iv, buf.get_mut(range)?).ok()?;
    Some((buf, next))
}

/// Decrypts an encrypted message's body with `iv`: the plaintext (payloads and padding) and
/// the next IV of the chain.
pub(crate) fn open(cbc: &CbcKey, iv: &Iv, msg: &Message<'_>) -> Option<(Vec<u8>, Iv)> {
    if !msg.header.flags.encrypted
        || msg.body.is_empty()
        || !msg.body.len().is_multiple_of(BLOCK_LEN)
    {
        return None;
    }
    let mut plain = msg.body.to_vec();
    let next = cbc.decrypt(iv, &mut plain).ok()?;
    Some((plain, next))
}

pub(crate) fn prf_of(h: IkeHash) -> Prf {
    match h {
        IkeHash::Sha256 => Prf::HmacSha256,
        IkeHash::Sha384 => Prf::HmacSha384,
        IkeHash::Sha512 => Prf::HmacSha512,
    }
}

pub(crate) fn cipher_of(c: IkeCipher) -> Cipher {
    match c {
        IkeCipher::AesCbc128 => Cipher::Aes128Cbc,
        IkeCipher::AesCbc256 => Cipher::Aes256Cbc,
    }
}

pub(crate) fn group_name(g: u16) -> &'static str {
    match g {
        14 => "modp2048",
        19 => "ecp256",
        20 => "ecp384",
        31 => "curve25519",
        _ => "unknown",
    }
}

/// `aes256-sha256-ecp256`.
pub(crate) fn proposal_name(p: IkeProposal) -> String {
    let c = match p.cipher {
        IkeCipher::AesCbc128 => "aes128",
        IkeCipher::AesCbc256 => "aes256",
    };
    let h = match p.hash {
        IkeHash::Sha256 => "sha256",
        IkeHash::Sha384 => "sha384",
        IkeHash::Sha512 => "sha512",
    };
    format!("{c}-{h}-{}", group_name(p.group))
}

/// A fresh Diffie-Hellman half for an IANA group.
pub(crate) fn dh_generate(group: u16) -> Option<(DhSecret, Vec<u8>)> {
    DhSecret::generate(DhGroup::from_iana(group)?).ok()
}

/// The prefix length of a [`Prefix`] (from its `a/len` form; the type keeps it private).
pub(crate) fn prefix_len(p: &Prefix) -> u8 {
    p.to_string()
        .rsplit_once('/')
        .and_then(|(_, l)| l.parse().ok())
        .unwrap_or(0)
}

/// A quick-mode proxy ID for a prefix (IPV4_ADDR_SUBNET / IPV6_ADDR_SUBNET).
pub(crate) fn prefix_identity(p: &Prefix) -> Identity<'static> {
    let len = prefix_len(p);
    match p.network() {
        IpAddr::V4(a) => Identity::Ipv4Subnet {
            addr: a,
            mask: Ipv4Addr::from(if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len.min(32)))
            }),
        },
        IpAddr::V6(a) => Identity::Ipv6Subnet {
            addr: a,
            mask: Ipv6Addr::from(if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len.min(128)))
            }),
        },
    }
}

/// The prefix a received proxy ID names (addresses are /32 or /128).
pub(crate) fn identity_prefix(id: &Identity<'_>) -> Option<Prefix> {
    match *id {
        Identity::Ipv4(a) => Prefix::new(a.into(), 32).ok(),
        Identity::Ipv6(a) => Prefix::new(a.into(), 128).ok(),
        Identity::Ipv4Subnet { addr, .. } => Prefix::new(addr.into(), id.prefix_len()?).ok(),
        Identity::Ipv6Subnet { addr, .. } => Prefix::new(addr.into(), id.prefix_len()?).ok(),
        _ => None,
    }
}

/// SA limits for a child: hard at the negotiated life; soft `margin` earlier for the quick
/// mode's initiator and `margin / 2` earlier for its responder (so the initiator rekeys
/// first, and the responder still does if the initiator does not); with a life shorter than
/// the margin, 80% / 90% of it. Bytes likewise with `margin_kb`, or without it (or with a
/// negotiated life not above it) at 90% / 95%.
pub(crate) fn child_limits(
    life_s: u64,
    life_kb: Option<u64>,
    margin_s: u64,
    margin_kb: Option<u64>,
    initiator: bool,
) -> Limits {
    let life_s = life_s.max(2);
    let soft_s = if margin_s < life_s {
        life_s - if initiator { margin_s } else { margin_s / 2 }
    } else if initiator {
        life_s * 8 / 10
    } else {
        life_s * 9 / 10
    };
    let hard_bytes = life_kb.map(|kb| kb.saturating_mul(1024));
    let soft_bytes = life_kb.map(|kb| {
        match margin_kb {
            Some(m) if m < kb => (kb - if initiator { m } else { m / 2 }).saturating_mul(1024),
            _ => {
                let b = kb.saturating_mul(1024);
                if initiator { b / 10 * 9 } else { b / 20 * 19 }
            }
        }
        .max(1)
    });
    Limits {
        soft_bytes,
        hard_bytes,
        soft_seconds: Some(soft_s.clamp(1, life_s - 1)),
        hard_seconds: Some(life_s),
        ..Limits::default()
    }
}

/// The ESP key material of one direction.
pub(crate) fn keymat(
    keys: &Phase1Keys,
    esp: EspCipher,
    gxy: Option<&[u8]>,
    spi: u32,
    ni: &[u8],
    nr: &[u8],
) -> Zeroizing<Vec<u8>> {
    keys.esp_keymat(esp, gxy, spi, ni, nr)
}

#[cfg(test)]
mod tests {
    use super::{MIDS_KEPT, MidLog};

    #[test]
    fn mid_log_is_bounded_and_forgets_the_oldest() {
        let mut l = MidLog::default();
        assert!(l.insert(7));
        assert!(!l.insert(7), "a repeat");
        for m in 1000..1000 + MIDS_KEPT as u32 {
            l.insert(m);
        }
        assert_eq!(l.len(), MIDS_KEPT);
        assert!(!l.contains(7), "the oldest went first");
        assert!(l.contains(1000 + MIDS_KEPT as u32 - 1));
    }
}
