//! Main mode with pre-shared keys (RFC 2409 §5), both roles, with NAT-T (RFC 3947): vendor
//! IDs in MM1/MM2, NAT-D in MM3/MM4, the float to port 4500 at MM5/MM6. With `encap = udp` our
//! own NAT-D is the hash of a random address, so both sides see a NAT and ESP goes in UDP even
//! without one (as strongSwan's kernel-libipsec does).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{
    Cookie, Engine, HALF_OPEN_PER_ADDR, Mm, MmState, Retx, S, cipher_of, cookie_u64, dh_generate,
    digest, header, open, prf_of, proposal_name, seal,
};
use crate::codes;
use crate::ike::config::{IkeCipher, IkeHash, IkeId, IkeProposal};
use crate::ike::crypto::{
    Cipher, DhGroup, Phase1Exchange, Phase1Keys, Prf, hash_eq, nat_d, phase1_iv,
};
use crate::ike::types::{Action, Env, Exchange, MmEnd};
use crate::ike::wire::{
    self, AttrWriter, Builder, DOI_IPSEC, Identity, KEY_IKE, Message, Payload, Transform,
    auth_method, ike_attr, life_type, notify, parse_decrypted, protocol, vendor_id,
};

/// RFC 2407 §4.5 / RFC 2409 Appendix A: without a life attribute, 8 hours.
const DEFAULT_LIFE_S: u64 = 28_800;

/// A phase-1 transform as offered: the proposal, life seconds and kilobytes.
struct P1 {
    prop: IkeProposal,
    life_s: Option<u64>,
    life_kb: Option<u64>,
}

/// Reads a phase-1 transform; `None` for what espd does not implement (other ciphers,
/// hashes, groups, authentication methods, explicit PRFs or custom groups).
fn parse_p1(t: &Transform<'_>) -> Option<P1> {
    if t.id != KEY_IKE {
        return None;
    }
    let (mut enc, mut klen, mut hash, mut group, mut auth) = (None, None, None, None, None);
    let (mut lt, mut life_s, mut life_kb) = (None, None, None);
    for a in t.attrs() {
        let n = a.number();
        match a.ty {
            ike_attr::ENCRYPTION_ALGORITHM => enc = n,
            ike_attr::KEY_LENGTH => klen = n,
            ike_attr::HASH_ALGORITHM => hash = n,
            ike_attr::GROUP_DESCRIPTION => group = n,
            ike_attr::AUTHENTICATION_METHOD => auth = n,
            ike_attr::LIFE_TYPE => lt = n,
            ike_attr::LIFE_DURATION => match lt {
                Some(v) if v == u64::from(life_type::SECONDS) => life_s = n,
                Some(v) if v == u64::from(life_type::KILOBYTES) => life_kb = n,
                _ => return None,
            },
            // PRF, custom groups, field size, group order: not offered by espd.
            _ => return None,
        }
    }
    let small = |v: Option<u64>| v.and_then(|v| u16::try_from(v).ok());
    let cipher = match Cipher::from_attrs(small(enc)?, small(klen))? {
        Cipher::Aes128Cbc => IkeCipher::AesCbc128,
        Cipher::Aes256Cbc => IkeCipher::AesCbc256,
    };
    let hash = match Prf::from_hash_attr(small(hash)?)? {
        Prf::HmacSha256 => IkeHash::Sha256,
        Prf::HmacSha384 => IkeHash::Sha384,
        Prf::HmacSha512 => IkeHash::Sha512,
    };
    let group = small(group)?;
    DhGroup::from_iana(group)?;
    if small(auth)? != auth_method::PRE_SHARED_KEY {
        return None;
    }
    Some(P1 {
        prop: IkeProposal {
            cipher,
            hash,
            group,
        },
        life_s,
        life_kb,
    })
}

/// Writes a phase-1 transform's attributes (strongSwan's order).
fn p1_attrs(a: &mut AttrWriter<'_, '_>, p: &IkeProposal, life_s: u64, life_kb: Option<u64>) {
    let c = cipher_of(p.cipher);
    a.basic(ike_attr::ENCRYPTION_ALGORITHM, Cipher::AES_CBC_ATTR);
    a.basic(ike_attr::KEY_LENGTH, c.key_bits());
    a.basic(ike_attr::HASH_ALGORITHM, prf_of(p.hash).hash_attr());
    a.basic(ike_attr::GROUP_DESCRIPTION, p.group);
    a.basic(ike_attr::AUTHENTICATION_METHOD, auth_method::PRE_SHARED_KEY);
    a.basic(ike_attr::LIFE_TYPE, life_type::SECONDS);
    a.number(ike_attr::LIFE_DURATION, life_s);
    if let Some(kb) = life_kb {
        a.basic(ike_attr::LIFE_TYPE, life_type::KILOBYTES);
        a.number(ike_attr::LIFE_DURATION, kb);
    }
}

/// An ID payload's identity for one of ours.
pub(super) fn identity_of(id: &IkeId) -> Identity<'_> {
    match id {
        IkeId::Addr(IpAddr::V4(a)) => Identity::Ipv4(*a),
        IkeId::Addr(IpAddr::V6(a)) => Identity::Ipv6(*a),
        IkeId::Fqdn(s) => Identity::Fqdn(s.as_bytes()),
    }
}

fn id_matches(got: &Identity<'_>, want: &IkeId) -> bool {
    match (got, want) {
        (Identity::Ipv4(a), IkeId::Addr(IpAddr::V4(b))) => a == b,
        (Identity::Ipv6(a), IkeId::Addr(IpAddr::V6(b))) => a == b,
        (Identity::Fqdn(f), IkeId::Fqdn(s)) => f.eq_ignore_ascii_case(s.as_bytes()),
        _ => false,
    }
}

fn id_text(id: &Identity<'_>) -> String {
    match id {
        Identity::Ipv4(a) => a.to_string(),
        Identity::Ipv6(a) => a.to_string(),
        Identity::Fqdn(f) | Identity::UserFqdn(f) => String::from_utf8_lossy(f).into_owned(),
        o => format!("{o:?}"),
    }
}

/// What MM1..MM4 carry besides the SA.
#[derive(Default)]
struct Clear<'a> {
    sa: Option<wire::SaPayload<'a>>,
    ke: Option<&'a [u8]>,
    nonce: Option<&'a [u8]>,
    natd: Vec<&'a [u8]>,
    nat_t: Option<bool>,
    dpd: bool,
}

fn clear_payloads<'a>(ps: &wire::Payloads<'a>) -> Clear<'a> {
    let mut c = Clear::default();
    for p in ps.iter() {
        match p {
            Payload::Sa(s) if c.sa.is_none() => c.sa = Some(s),
            Payload::KeyExchange(k) if c.ke.is_none() => c.ke = Some(k),
            Payload::Nonce(n) if c.nonce.is_none() => c.nonce = Some(n),
            Payload::NatD { hash, .. } => c.natd.push(hash),
            Payload::VendorId(v) => {
                if let Some(rfc) = vendor_id::nat_t(v) {
                    c.nat_t = Some(c.nat_t.unwrap_or(false) || rfc);
                }
                if v == vendor_id::DPD {
                    c.dpd = true;
                }
            }
            // Unknown vendor IDs, status notifies, anything else: ignored.
            _ => {}
        }
    }
    c
}

impl Mm {
    fn new(
        peer: usize,
        icookie: Cookie,
        initiator: bool,
        now: u64,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Mm {
        Mm {
            peer,
            icookie,
            rcookie: [0; 8],
            initiator,
            state: if initiator { MmState::I1 } else { MmState::R2 },
            created: now,
            established: 0,
            local,
            remote,
            prop: None,
            lifetime_s: 0,
            lifetime_kb: None,
            sai_b: Vec::new(),
            dh: None,
            ke_i: Vec::new(),
            ke_r: Vec::new(),
            ni: Vec::new(),
            nr: Vec::new(),
            keys: None,
            cbc: None,
            iv: [0; 16],
            nat_t: None,
            peer_dpd: false,
            nat: false,
            send_ic: false,
            reauth_of: None,
            reauth_at: None,
            reauth_started: false,
            retx: None,
            last_in: Vec::new(),
            last_out: None,
            mids: Default::default(),
            qms: Vec::new(),
            last_seen: now,
            dpd: None,
            dpd_seq: 0,
            peer_dpd_seq: None,
            keepalive_at: now,
            reported: false,
            garbage_at: None,
            suspect: None,
            dead: false,
        }
    }

    fn exchange(&self) -> Phase1Exchange<'_> {
        Phase1Exchange {
            g_xi: &self.ke_i,
            g_xr: &self.ke_r,
            cky_i: self.icookie,
            cky_r: self.rcookie,
            sai_b: &self.sai_b,
        }
    }

    fn prf(&self) -> Prf {
        self.prop.map_or(Prf::HmacSha256, |p| prf_of(p.hash))
    }
}

impl Engine {
    pub(super) fn recv_main(
        &mut self,
        env: &mut dyn Env,
        now: u64,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
        msg: &Message<'_>,
    ) {
        let h = &msg.header;
        if h.rcookie == [0; 8] {
            if let Some(mi) = self
                .mms
                .iter()
                .position(|m| !m.dead && !m.initiator && m.icookie == h.icookie)
            {
                self.duplicate_mm(mi, data);
                return;
            }
            self.mm1(env, now, local, from, data, msg);
            return;
        }
        let Some(mi) = self.mms.iter().position(|m| {
            !m.dead
                && m.icookie == h.icookie
                && (m.rcookie == h.rcookie
                    || (m.initiator && m.state == MmState::I1 && m.rcookie == [0; 8]))
        }) else {
            self.counters.dropped += 1;
            return;
        };
        if self.duplicate_mm(mi, data) {
            return;
        }
        match (self.mms[mi].initiator, self.mms[mi].state) {
            (true, MmState::I1) => self.mm2(env, now, mi, from, data, msg),
            (false, MmState::R2) => self.mm3(env, now, mi, local, from, data, msg),
            (true, MmState::I3) => self.mm4(env, now, mi, from, data, msg),
            (false, MmState::R4) => self.mm5(env, now, mi, local, from, data, msg),
            (true, MmState::I5) => self.mm6(env, now, mi, from, msg),
            _ => self.counters.dropped += 1,
        }
    }

    /// A repeat of the last request: the responder answers from its cache; the initiator
    /// ignores it (its own timer resends). `true` if it was one.
    fn duplicate_mm(&mut self, mi: usize, data: &[u8]) -> bool {
        let m = &self.mms[mi];
        if m.last_in.is_empty() || m.last_in != digest(data) {
            if m.state == MmState::R2 && m.rcookie != [0; 8] && data.get(8..16) == Some(&[0; 8]) {
                // An MM1 that differs from the one we answered: not ours to process.
                self.counters.dropped += 1;
                return true;
            }
            return false;
        }
        self.counters.duplicates += 1;
        if !m.initiator
            && let Some(out) = m.last_out.clone()
        {
            let (p, port, to) = (m.peer, m.local.port(), m.remote);
            self.send(p, port, to, out);
        }
        true
    }

    /// Whether a new responder main mode from `ip` fits the limits (and takes a token). At
    /// the half-open limit (of the address, or in all) the oldest half-open main mode that
    /// has not reached MM3 gives way: it cost us no Diffie-Hellman yet, and it is all that a
    /// spoofed MM1 can create, so spoofed MM1s cannot lock the genuine peer out. Refused only
    /// when every half-open one is past MM3 (the initiator proved its address).
    fn admit(&mut self, now: u64, ip: IpAddr) -> bool {
        let el = now.saturating_sub(self.tokens_at);
        self.tokens_at = now;
        self.tokens = self
            .tokens
            .saturating_add(el.saturating_mul(self.limits.mm_per_s))
            .min(self.limits.mm_per_s.saturating_mul(S));
        if self.tokens < S {
            return false;
        }
        let half = |m: &&Mm| !m.dead && !m.initiator && m.state != MmState::Up;
        let total = self.mms.iter().filter(half).count();
        if total >= self.limits.half_open && !self.evict_half_open(None) {
            return false;
        }
        let here = self
            .mms
            .iter()
            .filter(half)
            .filter(|m| m.remote.ip() == ip)
            .count();
        if here >= HALF_OPEN_PER_ADDR && !self.evict_half_open(Some(ip)) {
            return false;
        }
        self.tokens -= S;
        true
    }

    /// Ends the oldest responder main mode still waiting for MM3 (from `ip`, or any).
    fn evict_half_open(&mut self, ip: Option<IpAddr>) -> bool {
        let victim = self
            .mms
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                !m.dead
                    && !m.initiator
                    && m.state == MmState::R2
                    && ip.is_none_or(|ip| m.remote.ip() == ip)
            })
            .min_by_key(|(_, m)| m.created)
            .map(|(i, _)| i);
        let Some(i) = victim else {
            return false;
        };
        self.mms[i].dead = true;
        self.counters.limited += 1;
        true
    }

    /// Starts a main mode as initiator (MM1). `reauth_of`: the main mode it replaces.
    pub(super) fn start_mm(
        &mut self,
        env: &mut dyn Env,
        now: u64,
        peer: usize,
        reauth_of: Option<(Cookie, Cookie)>,
    ) {
        let Some(cfg) = self.peers.get(peer) else {
            return;
        };
        let icookie = Self::random_cookie(env);
        let local = SocketAddr::new(cfg.local, 500);
        let remote = SocketAddr::new(cfg.remote, 500);
        let mut buf = Vec::with_capacity(256);
        let h = header(icookie, [0; 8], wire::Exchange::Main, 0);
        let mut b = Builder::new(&mut buf, &h);
        let sa = b.sa(|s| {
            s.proposal(1, protocol::ISAKMP, &[], |pb| {
                for (n, p) in cfg.proposals.iter().enumerate() {
                    let n = u8::try_from(n + 1).unwrap_or(u8::MAX);
                    pb.transform(n, KEY_IKE, |a| p1_attrs(a, p, cfg.mm_lifetime_s, None));
                }
            })
        });
        b.vendor_id(&vendor_id::NAT_T_RFC3947);
        b.vendor_id(&vendor_id::DPD);
        if b.finish().is_err() {
            return;
        }
        let mut m = Mm::new(peer, icookie, true, now, local, remote);
        m.sai_b = buf.get(sa).unwrap_or_default().to_vec();
        m.send_ic = !self.rt[peer].contacted && reauth_of.is_none();
        m.reauth_of = reauth_of;
        m.retx = Some(Retx::new(now, buf.clone(), 500, remote));
        self.mms.push(m);
        self.send(peer, 500, remote, buf);
    }

    /// MM1 → MM2 (responder).
    fn mm1(
        &mut self,
        env: &mut dyn Env,
        now: u64,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
        msg: &Message<'_>,
    ) {
        let Some(peer) = self.peer_by_addr(local.ip(), from.ip()) else {
            self.counters.dropped += 1;
            return;
        };
        let Ok(ps) = msg.payloads() else {
            self.counters.dropped += 1;
            return;
        };
        let c = clear_payloads(&ps);
        let Some(sa) = c.sa else {
            self.counters.dropped += 1;
            return;
        };
        if !self.admit(now, from.ip()) {
            self.counters.dropped += 1;
            self.counters.limited += 1;
            if self.limit_reported.is_none_or(|t| now >= t + S) {
                self.limit_reported = Some(now);
                self.failed(
                    peer,
                    Exchange::Main,
                    codes::IKE_MM_LIMIT,
                    format!("new main mode from {from} refused: half-open or rate limit reached"),
                );
            }
            return;
        }
        let cfg = &self.peers[peer];
        let mut chosen = None;
        let mut offered = Vec::new();
        'outer: for p in sa.proposals() {
            if p.protocol != protocol::ISAKMP {
                continue;
            }
            for t in p.transforms() {
                let Some(x) = parse_p1(&t) else {
                    offered.push("(unsupported)".to_string());
                    continue;
                };
                offered.push(proposal_name(x.prop));
                if cfg.proposals.contains(&x.prop) {
                    chosen = Some((p.number, p.spi, t.number, x));
                    break 'outer;
                }
            }
        }
        let rcookie = Self::random_cookie(env);
        let Some((pnum, pspi, tnum, x)) = chosen else {
            let ours: Vec<String> = cfg.proposals.iter().map(|p| proposal_name(*p)).collect();
            let reason = format!(
                "main mode from {from}: no proposal chosen (offered {}; ours {})",
                offered.join(", "),
                ours.join(", ")
            );
            self.failed(peer, Exchange::Main, codes::IKE_POLICY_MATCH, reason);
            self.send_clear_notify(
                env,
                peer,
                msg.header.icookie,
                rcookie,
                local,
                from,
                notify::NO_PROPOSAL_CHOSEN,
            );
            return;
        };
        // A zero lifetime (strongSwan with `reauth_time = 0`) means none was set: the default.
        let life_s = x
            .life_s
            .filter(|&v| v > 0)
            .unwrap_or(DEFAULT_LIFE_S)
            .min(cfg.mm_lifetime_s);
        let life_kb = x.life_kb;
        let mut buf = Vec::with_capacity(256);
        let h = header(msg.header.icookie, rcookie, wire::Exchange::Main, 0);
        let mut b = Builder::new(&mut buf, &h);
        b.sa(|s| {
            s.proposal(pnum, protocol::ISAKMP, pspi, |pb| {
                pb.transform(tnum, KEY_IKE, |a| p1_attrs(a, &x.prop, life_s, life_kb))
            })
        });
        match c.nat_t {
            Some(true) => {
                b.vendor_id(&vendor_id::NAT_T_RFC3947);
            }
            Some(false) => {
                b.vendor_id(&vendor_id::NAT_T_DRAFT_02_N);
            }
            None => {}
        }
        b.vendor_id(&vendor_id::DPD);
        if b.finish().is_err() {
            return;
        }
        let mut m = Mm::new(peer, msg.header.icookie, false, now, local, from);
        m.rcookie = rcookie;
        m.prop = Some(x.prop);
        m.lifetime_s = life_s;
        m.lifetime_kb = life_kb;
        m.sai_b = sa.body().to_vec();
        m.nat_t = c.nat_t;
        m.peer_dpd = c.dpd;
        m.last_in = digest(data);
        m.last_out = Some(buf.clone());
        self.mms.push(m);
        self.send(peer, local.port(), from, buf);
    }

    /// MM2 → MM3 (initiator).
    fn mm2(
        &mut self,
        env: &mut dyn Env,
        now: u64,
        mi: usize,
        from: SocketAddr,
        data: &[u8],
        msg: &Message<'_>,
    ) {
        // Unauthenticated: only from where our MM1 went (anyone who saw the cookie could
        // send one from elsewhere).
        if from != self.mms[mi].remote {
            self.counters.dropped += 1;
            return;
        }
        let Ok(ps) = msg.payloads() else {
            self.counters.dropped += 1;
            return;
        };
        let c = clear_payloads(&ps);
        let peer = self.mms[mi].peer;
        let cfg = &self.peers[peer];
        let x =
            c.sa.and_then(|sa| sa.proposals().next())
                .filter(|p| p.protocol == protocol::ISAKMP)
                .and_then(|p| p.transforms().next())
                .and_then(|t| parse_p1(&t))
                .filter(|x| cfg.proposals.contains(&x.prop));
        let Some(x) = x else {
            if c.sa.is_none() {
                self.counters.dropped += 1;
                return;
            }
            self.mms[mi].dead = true;
            self.failed(
                peer,
                Exchange::Main,
                codes::IKE_POLICY_MATCH,
                "main mode: the responder chose a transform we did not offer".into(),
            );
            self.schedule_retry(now, peer);
            return;
        };
        let Some((dh, ke)) = dh_generate(x.prop.group) else {
            self.mms[mi].dead = true;
            self.failed(
                peer,
                Exchange::Main,
                codes::IKE_DH_FAILURE,
                "main mode: no Diffie-Hellman value".into(),
            );
            self.schedule_retry(now, peer);
            return;
        };
        let ni = Self::nonce(env);
        let life_s = x
            .life_s
            .filter(|&v| v > 0)
            .unwrap_or(DEFAULT_LIFE_S)
            .min(cfg.mm_lifetime_s);
        let force = cfg.encap.is_some();
        let m = &mut self.mms[mi];
        m.rcookie = msg.header.rcookie;
        m.prop = Some(x.prop);
        m.lifetime_s = life_s;
        m.lifetime_kb = x.life_kb;
        m.nat_t = c.nat_t;
        m.peer_dpd = c.dpd;
        m.remote = from;
        m.dh = Some(dh);
        m.ke_i = ke;
        m.ni = ni;
        m.last_in = digest(data);
        let natd = self.natd_pair(env, mi, force);
        let m = &mut self.mms[mi];
        let mut buf = Vec::with_capacity(512);
        let h = header(m.icookie, m.rcookie, wire::Exchange::Main, 0);
        let mut b = Builder::new(&mut buf, &h);
        b.ke(&m.ke_i);
        b.nonce(&m.ni);
        let draft = m.nat_t == Some(false);
        for n in &natd {
            b.nat_d(n, draft);
        }
        if b.finish().is_err() {
            return;
        }
        m.state = MmState::I3;
        let port = m.local.port();
        m.retx = Some(Retx::new(now, buf.clone(), port, from));
        self.send(peer, port, from, buf);
    }

    /// Our NAT-D pair (RFC 3947 §3.2: the peer's address as we see it first, then ours), if
    /// the peer speaks NAT-T. With `force`, ours is the hash of a random address.
    fn natd_pair(&mut self, env: &mut dyn Env, mi: usize, force: bool) -> Vec<Vec<u8>> {
        let m = &self.mms[mi];
        if m.nat_t.is_none() {
            return Vec::new();
        }
        let prf = m.prf();
        let (i, r) = (m.icookie, m.rcookie);
        let (remote, local) = (m.remote, m.local);
        let ours = if force {
            fake_addr(env, local.ip())
        } else {
            local
        };
        vec![
            nat_d(prf, &i, &r, remote.ip(), remote.port()),
            nat_d(prf, &i, &r, ours.ip(), ours.port()),
        ]
    }

    /// Whether the peer's NAT-D shows a NAT between us (or we fake one).
    fn nat_seen(&self, mi: usize, natd: &[&[u8]], force: bool) -> bool {
        let m = &self.mms[mi];
        if m.nat_t.is_none() || natd.is_empty() {
            return false;
        }
        if force {
            return true;
        }
        let prf = m.prf();
        let (i, r) = (m.icookie, m.rcookie);
        let mine = nat_d(prf, &i, &r, m.local.ip(), m.local.port());
        let theirs = nat_d(prf, &i, &r, m.remote.ip(), m.remote.port());
        let we_behind = natd.first().is_none_or(|h| *h != mine.as_slice());
        let they_behind = !natd.iter().skip(1).any(|h| *h == theirs.as_slice());
        we_behind || they_behind
    }

    /// Diffie-Hellman and the key schedule once both KE and nonces are known.
    fn derive(&mut self, mi: usize, peer_ke: &[u8]) -> Result<(), String> {
        let cfg_psk = self.peers[self.mms[mi].peer].psk.clone();
        let m = &mut self.mms[mi];
        let prop = m.prop.ok_or("no proposal")?;
        let dh = m.dh.take().ok_or("no Diffie-Hellman value")?;
        let gxy = dh
            .agree(peer_ke)
            .map_err(|e| format!("Diffie-Hellman: {e}"))?;
        let prf = prf_of(prop.hash);
        let keys = Phase1Keys::psk(
            prf,
            cipher_of(prop.cipher),
            &cfg_psk,
            &m.ni,
            &m.nr,
            &gxy,
            &m.icookie,
            &m.rcookie,
        );
        m.cbc = Some(keys.cbc_key().map_err(|e| e.to_string())?);
        m.keys = Some(keys);
        m.iv = phase1_iv(prf, &m.ke_i, &m.ke_r);
        Ok(())
    }

    /// The clear payloads of MM3 or MM4 with its KE and nonce, if it came from where the
    /// main mode talks to and has both (else a counted drop).
    fn key_exchange<'a>(
        &mut self,
        mi: usize,
        from: SocketAddr,
        msg: &Message<'a>,
    ) -> Option<(Clear<'a>, &'a [u8], &'a [u8])> {
        let c = (from == self.mms[mi].remote)
            .then(|| msg.payloads().ok())
            .flatten()
            .map(|ps| clear_payloads(&ps));
        if let Some(c) = c
            && let (Some(ke), Some(n)) = (c.ke, c.nonce)
        {
            return Some((c, ke, n));
        }
        self.counters.dropped += 1;
        None
    }

    /// MM3 → MM4 (responder).
    #[allow(clippy::too_many_arguments)]
    fn mm3(
        &mut self,
        env: &mut dyn Env,
        _now: u64,
        mi: usize,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
        msg: &Message<'_>,
    ) {
        // Unauthenticated: only from the address and port MM1 came from.
        let Some((c, ke, ni)) = self.key_exchange(mi, from, msg) else {
            return;
        };
        let peer = self.mms[mi].peer;
        let force = self.peers[peer].encap.is_some();
        let group = self.mms[mi].prop.map_or(0, |p| p.group);
        let Some((dh, ke_r)) = dh_generate(group) else {
            self.counters.dropped += 1;
            return;
        };
        {
            let m = &mut self.mms[mi];
            m.local = local;
            m.ke_i = ke.to_vec();
            m.ke_r = ke_r;
            m.ni = ni.to_vec();
            m.nr = Self::nonce(env);
            m.dh = Some(dh);
        }
        if let Err(e) = self.derive(mi, ke) {
            self.mms[mi].dead = true;
            self.failed(
                peer,
                Exchange::Main,
                codes::IKE_DH_FAILURE,
                format!("main mode from {from}: {e}"),
            );
            return;
        }
        let nat = self.nat_seen(mi, &c.natd, force);
        let natd = self.natd_pair(env, mi, force);
        let m = &mut self.mms[mi];
        m.nat = nat;
        let mut buf = Vec::with_capacity(512);
        let h = header(m.icookie, m.rcookie, wire::Exchange::Main, 0);
        let mut b = Builder::new(&mut buf, &h);
        b.ke(&m.ke_r);
        b.nonce(&m.nr);
        let draft = m.nat_t == Some(false);
        for n in &natd {
            b.nat_d(n, draft);
        }
        if b.finish().is_err() {
            return;
        }
        m.state = MmState::R4;
        m.last_in = digest(data);
        m.last_out = Some(buf.clone());
        self.send(peer, local.port(), from, buf);
    }

    /// MM4 → MM5 (initiator): keys, NAT detection, float, ID and HASH_I.
    fn mm4(
        &mut self,
        _env: &mut dyn Env,
        now: u64,
        mi: usize,
        from: SocketAddr,
        data: &[u8],
        msg: &Message<'_>,
    ) {
        // Unauthenticated: only from where MM3 went.
        let Some((c, ke, nr)) = self.key_exchange(mi, from, msg) else {
            return;
        };
        let peer = self.mms[mi].peer;
        let force = self.peers[peer].encap.is_some();
        {
            let m = &mut self.mms[mi];
            m.ke_r = ke.to_vec();
            m.nr = nr.to_vec();
        }
        if let Err(e) = self.derive(mi, ke) {
            self.mms[mi].dead = true;
            self.failed(
                peer,
                Exchange::Main,
                codes::IKE_DH_FAILURE,
                format!("main mode: {e}"),
            );
            self.schedule_retry(now, peer);
            return;
        }
        let nat = self.nat_seen(mi, &c.natd, force);
        let cfg = &self.peers[peer];
        let m = &mut self.mms[mi];
        m.nat = nat;
        m.last_in = digest(data);
        if nat {
            m.local = SocketAddr::new(m.local.ip(), 4500);
            m.remote = SocketAddr::new(m.remote.ip(), 4500);
        }
        let (i, r) = (m.icookie, m.rcookie);
        let send_ic = m.send_ic;
        let (Some(keys), Some(cbc)) = (&m.keys, &m.cbc) else {
            return;
        };
        let ex = m.exchange();
        let sealed = seal(cbc, &m.iv, &header(i, r, wire::Exchange::Main, 0), |b| {
            let idr = b.id(0, 0, &identity_of(&cfg.local_id));
            let idii_b = b.bytes().get(idr).unwrap_or_default().to_vec();
            b.hash(&keys.hash_i(&ex, &idii_b));
            if send_ic {
                b.initial_contact(&i, &r);
            }
        });
        let Some((buf, next)) = sealed else {
            return;
        };
        m.iv = next;
        m.state = MmState::I5;
        let (port, to) = (m.local.port(), m.remote);
        m.retx = Some(Retx::new(now, buf.clone(), port, to));
        if send_ic {
            self.rt[peer].contacted = true;
        }
        self.send(peer, port, to, buf);
    }

    /// MM5 → MM6 (responder): checks HASH_I and the peer's ID; the main mode is up.
    #[allow(clippy::too_many_arguments)]
    fn mm5(
        &mut self,
        env: &mut dyn Env,
        now: u64,
        mi: usize,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
        msg: &Message<'_>,
    ) {
        let peer = self.mms[mi].peer;
        let checked = self.check_auth(mi, msg, true);
        let (next, ic) = match checked {
            Ok(x) => x,
            Err((code, reason, false)) => {
                // RFC 2408 §5: a message that does not decrypt or parse is discarded; the
                // main mode waits for the genuine MM5 (anyone who saw the cookies can send
                // garbage). A wrong pre-shared key looks the same (and the initiator resends
                // it): reported, with a notify to the initiator, at most once every 5 s per
                // main mode; the half-open limit ends it.
                self.counters.dropped += 1;
                let m = &mut self.mms[mi];
                if m.garbage_at.is_some_and(|t| now < t + 5 * S) {
                    return;
                }
                m.garbage_at = Some(now);
                m.reported = true;
                let (i, r) = (m.icookie, m.rcookie);
                self.failed(
                    peer,
                    Exchange::Main,
                    code,
                    format!("main mode from {from}: {reason}"),
                );
                self.send_clear_notify(env, peer, i, r, local, from, notify::AUTHENTICATION_FAILED);
                return;
            }
            Err((code, reason, true)) => {
                let m = &mut self.mms[mi];
                m.dead = true;
                let (i, r) = (m.icookie, m.rcookie);
                self.failed(
                    peer,
                    Exchange::Main,
                    code,
                    format!("main mode from {from}: {reason}"),
                );
                let ty = if code == codes::IKE_INVALID_HASH {
                    notify::INVALID_HASH_INFORMATION
                } else {
                    notify::AUTHENTICATION_FAILED
                };
                self.send_clear_notify(env, peer, i, r, local, from, ty);
                return;
            }
        };
        let cfg = &self.peers[peer];
        let m = &mut self.mms[mi];
        m.local = local;
        m.remote = from;
        m.iv = next;
        let (i, r) = (m.icookie, m.rcookie);
        let (Some(keys), Some(cbc)) = (&m.keys, &m.cbc) else {
            return;
        };
        let ex = m.exchange();
        let sealed = seal(cbc, &m.iv, &header(i, r, wire::Exchange::Main, 0), |b| {
            let idr = b.id(0, 0, &identity_of(&cfg.local_id));
            let idir_b = b.bytes().get(idr).unwrap_or_default().to_vec();
            b.hash(&keys.hash_r(&ex, &idir_b));
        });
        let Some((buf, next)) = sealed else {
            return;
        };
        m.iv = next;
        m.last_in = digest(data);
        m.last_out = Some(buf.clone());
        self.send(peer, local.port(), from, buf);
        self.mm_up(env, now, mi, ic);
    }

    /// MM6 (initiator): checks HASH_R and the peer's ID; the main mode is up.
    fn mm6(&mut self, env: &mut dyn Env, now: u64, mi: usize, from: SocketAddr, msg: &Message<'_>) {
        let peer = self.mms[mi].peer;
        let (next, ic) = match self.check_auth(mi, msg, false) {
            Ok(x) => x,
            Err((code, reason, false)) => {
                // Discarded (see `mm5`); the timeout, if it comes, reports why.
                self.counters.dropped += 1;
                self.mms[mi].suspect = Some((code, format!("main mode: {reason}")));
                return;
            }
            Err((code, reason, true)) => {
                self.mms[mi].dead = true;
                self.failed(peer, Exchange::Main, code, format!("main mode: {reason}"));
                self.schedule_retry(now, peer);
                return;
            }
        };
        let m = &mut self.mms[mi];
        m.iv = next;
        m.remote = from;
        m.retx = None;
        self.mm_up(env, now, mi, ic);
    }

    /// Decrypts MM5/MM6 and checks the peer's HASH and ID: the next IV and whether it carried
    /// INITIAL-CONTACT, or the failure's code, reason and whether the message decrypted and
    /// parsed (only then is the failure the peer's authentication, and final).
    fn check_auth(
        &mut self,
        mi: usize,
        msg: &Message<'_>,
        initiators: bool,
    ) -> Result<([u8; 16], bool), (codes::Code, String, bool)> {
        let m = &self.mms[mi];
        let cfg = &self.peers[m.peer];
        let (Some(keys), Some(cbc)) = (&m.keys, &m.cbc) else {
            return Err((codes::IKE_GENERAL_PROCESSING_ERROR, "no keys".into(), false));
        };
        let mismatch = || {
            (
                codes::IKE_AUTH_FAIL,
                "the encrypted identity does not decrypt: pre-shared key mismatch?".to_string(),
                false,
            )
        };
        let (plain, next) = open(cbc, &m.iv, msg).ok_or_else(mismatch)?;
        let ps = parse_decrypted(msg.header.next_payload, &plain).map_err(|_| mismatch())?;
        let (mut id, mut hash, mut ic) = (None, None, false);
        for p in ps.iter() {
            match p {
                Payload::Id(x) if id.is_none() => id = Some(x),
                Payload::Hash(h) if hash.is_none() => hash = Some(h),
                Payload::Notify(n) if n.notify_type == notify::INITIAL_CONTACT => ic = true,
                _ => {}
            }
        }
        let (Some(id), Some(hash)) = (id, hash) else {
            return Err(mismatch());
        };
        let ex = m.exchange();
        let want = if initiators {
            keys.hash_i(&ex, id.body)
        } else {
            keys.hash_r(&ex, id.body)
        };
        if !hash_eq(&want, hash) {
            return Err((
                codes::IKE_INVALID_HASH,
                format!(
                    "HASH_{} does not verify: pre-shared key mismatch",
                    if initiators { "I" } else { "R" }
                ),
                true,
            ));
        }
        if !id_matches(&id.identity, &cfg.remote_id) {
            return Err((
                codes::IKE_AUTH_FAIL,
                format!(
                    "the peer's identity {} is not remote_id {:?}",
                    id_text(&id.identity),
                    cfg.remote_id
                ),
                true,
            ));
        }
        Ok((next, ic))
    }

    /// The main mode is established: event, INITIAL-CONTACT, reauth, pending quick modes.
    fn mm_up(&mut self, env: &mut dyn Env, now: u64, mi: usize, ic: bool) {
        let m = &mut self.mms[mi];
        let peer = m.peer;
        let cfg = &self.peers[peer];
        m.state = MmState::Up;
        m.established = now;
        m.last_seen = now;
        m.keepalive_at = now + super::KEEPALIVE;
        m.retx = None;
        m.dh = None;
        if cfg.reauth {
            let life = m.lifetime_s.max(2);
            let margin = if m.initiator {
                cfg.rekey_margin_s
            } else {
                cfg.rekey_margin_s / 2
            };
            let after = if margin < life {
                life - margin
            } else {
                life * 9 / 10
            };
            m.reauth_at = Some(now + after.max(1) * S);
        }
        let (i, r) = (cookie_u64(&m.icookie), cookie_u64(&m.rcookie));
        let up = Action::MainModeUp {
            peer,
            icookie: i,
            rcookie: r,
            lifetime_s: m.lifetime_s,
            lifetime_kb: m.lifetime_kb,
            proposal: m.prop.map(proposal_name).unwrap_or_default(),
            initiator: m.initiator,
        };
        let reauth_of = m.reauth_of;
        self.rt[peer].contacted = true;
        self.actions.push_back(up);
        if ic {
            // RFC 2407 §4.6.3.3: the peer has no other state with us. A main mode we are
            // initiating stays: the peer may be answering it right now (both ends initiated
            // at once, each with INITIAL-CONTACT), and it can speak only for what it had
            // when it sent the notify. Ending ours would leave each end with the main mode
            // the other ended, and every quick mode unanswered.
            for oi in 0..self.mms.len() {
                if oi != mi && !self.mms[oi].dead && self.same_gateway(self.mms[oi].peer, peer) {
                    if self.mms[oi].state == MmState::Up {
                        self.end_mm(env, now, oi, MmEnd::InitialContact);
                    } else if !self.mms[oi].initiator {
                        self.abort_qms(oi, None, false);
                        self.mms[oi].dead = true;
                    }
                }
            }
        }
        if let Some((oi, or)) = reauth_of
            && let Some(old) = self
                .mms
                .iter()
                .position(|o| !o.dead && o.icookie == oi && o.rcookie == or)
        {
            if self.mms[old].state == MmState::Up {
                self.send_delete_isakmp(env, old);
            }
            self.end_mm(env, now, old, MmEnd::Reauth);
        }
        for p in 0..self.peers.len() {
            if self.same_gateway(p, peer) {
                self.kick(env, now, p);
            }
        }
    }

    /// An unencrypted informational notify (a phase-1 refusal).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_clear_notify(
        &mut self,
        env: &mut dyn Env,
        peer: usize,
        i: Cookie,
        r: Cookie,
        local: SocketAddr,
        to: SocketAddr,
        ty: u16,
    ) {
        let mid = Self::random_u32(env);
        let mut buf = Vec::with_capacity(64);
        let h = header(i, r, wire::Exchange::Informational, mid);
        let mut b = Builder::new(&mut buf, &h);
        let mut spi = [0u8; 16];
        spi[..8].copy_from_slice(&i);
        spi[8..].copy_from_slice(&r);
        b.notify(DOI_IPSEC, protocol::ISAKMP, &spi, ty, &[]);
        if b.finish().is_ok() {
            self.send(peer, local.port(), to, buf);
        }
    }
}

/// A random address of the family of `like`, and a random port (the fake NAT-D of
/// `encap = udp`).
fn fake_addr(env: &mut dyn Env, like: IpAddr) -> SocketAddr {
    let mut b = [0u8; 18];
    env.random(&mut b);
    let port = u16::from_be_bytes([b[16], b[17]]);
    let ip = match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        IpAddr::V6(_) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            IpAddr::V6(Ipv6Addr::from(a))
        }
    };
    SocketAddr::new(ip, port)
}
