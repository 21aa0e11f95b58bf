//! Quick mode (RFC 2409 §5.5), both roles: ESP AES-GCM-16 (RFC 4106) in tunnel or
//! UDP-encapsulated tunnel mode (RFC 3947 §5.1), with or without PFS, proxy IDs from the
//! tunnel's protect policy, SA life in seconds and kilobytes, KEYMAT into [`ChildKeys`].

use std::net::SocketAddr;

use super::{
    Child, Engine, Mm, Qm, QmState, Retx, child_limits, cookie_u64, dh_generate, digest, header,
    identity_prefix, keymat, open, prefix_identity,
};
use crate::codes::{self, Code};
use crate::ike::config::IkePeer;
use crate::ike::crypto::{DhGroup, EspCipher, hash_eq, phase2_iv};
use crate::ike::types::{Action, ChildKeys, Env, Exchange, NewChild};
use crate::ike::wire::{
    self, AttrWriter, IdPayload, Message, Payload, RawPayload, SaPayload, encap, esp_attr,
    esp_transform, life_type, notify, parse_decrypted, payload, protocol,
};
use crate::sa::policy::Selector;

/// RFC 2407 §4.5: without a life attribute, 8 hours.
const DEFAULT_LIFE_S: u64 = 28_800;

/// The ESP transform both sides agreed on.
struct Chosen {
    prop_num: u8,
    t_num: u8,
    esp: EspCipher,
    life_s: u64,
    life_kb: Option<u64>,
    encap_mode: u16,
    group: Option<u16>,
    peer_spi: u32,
}

/// The encapsulation mode for a main mode: UDP tunnel behind a NAT (the draft number if the
/// peer only spoke the drafts), plain tunnel otherwise.
fn encap_mode(m: &Mm) -> u16 {
    match (m.nat, m.nat_t) {
        (true, Some(false)) => encap::UDP_TUNNEL_DRAFT,
        (true, _) => encap::UDP_TUNNEL,
        (false, _) => encap::TUNNEL,
    }
}

fn esp_attrs(
    a: &mut AttrWriter<'_, '_>,
    bits: u16,
    mode: u16,
    life_s: u64,
    life_kb: Option<u64>,
    group: Option<u16>,
) {
    a.basic(esp_attr::KEY_LENGTH, bits);
    a.basic(esp_attr::ENCAPSULATION_MODE, mode);
    a.basic(esp_attr::SA_LIFE_TYPE, life_type::SECONDS);
    a.number(esp_attr::SA_LIFE_DURATION, life_s);
    if let Some(kb) = life_kb {
        a.basic(esp_attr::SA_LIFE_TYPE, life_type::KILOBYTES);
        a.number(esp_attr::SA_LIFE_DURATION, kb);
    }
    if let Some(g) = group {
        a.basic(esp_attr::GROUP_DESCRIPTION, g);
    }
}

/// Protocol and port of a selector side for its ID payload (0: any).
fn id_proto_port(sel: &Selector, ours: bool) -> (u8, u16) {
    let ports = if ours { sel.src_ports } else { sel.dst_ports };
    let port = if ports.lo == ports.hi { ports.lo } else { 0 };
    (sel.protocol.unwrap_or(0), port)
}

/// Picks the first acceptable ESP transform of an offer. `modes`: the encapsulation modes
/// this main mode allows. Errors say why nothing fit.
fn select_esp(
    cfg: &IkePeer,
    sa: &SaPayload<'_>,
    modes: &[u16],
    nat: bool,
    responder: bool,
) -> Result<Chosen, String> {
    let mut why = Vec::new();
    for p in sa.proposals() {
        if p.protocol != protocol::ESP {
            why.push(format!(
                "proposal {}: protocol {} is not ESP",
                p.number, p.protocol
            ));
            continue;
        }
        let Some(peer_spi) = p.spi_u32() else {
            continue;
        };
        // RFC 4303 §2.1: SPIs 1..=255 are reserved, 0 is never sent.
        if peer_spi < 256 {
            why.push(format!("proposal {}: SPI {peer_spi} is reserved", p.number));
            continue;
        }
        for t in p.transforms() {
            match esp_transform_ok(cfg, &t, modes, nat, responder) {
                Ok((esp, life_s, life_kb, mode, group)) => {
                    return Ok(Chosen {
                        prop_num: p.number,
                        t_num: t.number,
                        esp,
                        life_s,
                        life_kb,
                        encap_mode: mode,
                        group,
                        peer_spi,
                    });
                }
                Err(e) => why.push(e),
            }
        }
    }
    Err(why.join("; "))
}

type EspOk = (EspCipher, u64, Option<u64>, u16, Option<u16>);

fn esp_transform_ok(
    cfg: &IkePeer,
    t: &wire::Transform<'_>,
    modes: &[u16],
    nat: bool,
    responder: bool,
) -> Result<EspOk, String> {
    if t.id != esp_transform::AES_GCM_16 {
        return Err(format!("ESP transform {} is not AES-GCM-16", t.id));
    }
    let (mut bits, mut mode, mut group, mut lt) = (None, None, None, None);
    let (mut life_s, mut life_kb) = (None, None);
    for a in t.attrs() {
        let n = a.number();
        match a.ty {
            esp_attr::KEY_LENGTH => bits = n,
            esp_attr::ENCAPSULATION_MODE => mode = n,
            esp_attr::GROUP_DESCRIPTION => group = n,
            esp_attr::SA_LIFE_TYPE => lt = n,
            esp_attr::SA_LIFE_DURATION => match lt {
                Some(1) => life_s = n,
                Some(2) => life_kb = n,
                _ => return Err("life duration without life type".into()),
            },
            esp_attr::EXTENDED_SEQUENCE_NUMBER if n == Some(0) => {}
            esp_attr::EXTENDED_SEQUENCE_NUMBER => return Err("ESN not supported".into()),
            esp_attr::AUTHENTICATION_ALGORITHM => {
                return Err("an authentication algorithm with AES-GCM".into());
            }
            o => return Err(format!("ESP attribute {o} not supported")),
        }
    }
    let small = |v: Option<u64>| v.and_then(|v| u16::try_from(v).ok());
    let esp = EspCipher::from_attrs(esp_transform::AES_GCM_16, small(bits))
        .filter(|e| cfg.esp.contains(&e.key_bits()))
        .ok_or_else(|| format!("AES-GCM-16 key length {bits:?} not configured"))?;
    let mode = small(mode).unwrap_or(encap::TUNNEL);
    if !modes.contains(&mode) {
        return Err(if nat {
            format!(
                "encapsulation mode {mode}: a NAT is between us and tunnel `{}` has no encap = \"udp\"",
                cfg.tunnel
            )
        } else {
            format!("encapsulation mode {mode} (no NAT between us: tunnel mode 1 expected)")
        });
    }
    let group = small(group);
    // A responder without PFS configured takes the initiator's PFS (strongSwan offers
    // `aes128gcm16-modp2048,aes128gcm16` as one PFS proposal); never the other way round.
    let pfs_ok = match (cfg.pfs_group, group) {
        (Some(a), Some(b)) => a == b,
        (None, None) => true,
        (None, Some(g)) => responder && DhGroup::from_iana(g).is_some(),
        (Some(_), None) => false,
    };
    if !pfs_ok {
        return Err(format!(
            "PFS group {group:?} where {:?} is configured",
            cfg.pfs_group
        ));
    }
    let life_s = life_s
        .unwrap_or(DEFAULT_LIFE_S)
        .min(cfg.qm_lifetime_s)
        .max(1);
    let life_kb = match (life_kb, cfg.qm_lifetime_kb) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok((esp, life_s, life_kb, mode, group))
}

/// Whether QM2's IDs are the ones our QM1 sent (IDci ours, IDcr the peer's side).
fn ids_as_sent(cfg: &IkePeer, ids: &[IdPayload<'_>]) -> Result<(), String> {
    let [ci, cr] = ids else {
        return Err(format!("{} ID payloads", ids.len()));
    };
    let sel = &cfg.selector;
    let (proto, sport) = id_proto_port(sel, true);
    let (_, dport) = id_proto_port(sel, false);
    let ok = identity_prefix(&ci.identity) == Some(sel.src)
        && identity_prefix(&cr.identity) == Some(sel.dst)
        && (ci.protocol, ci.port) == (proto, sport)
        && (cr.protocol, cr.port) == (proto, dport);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} {}/{} === {:?} {}/{}",
            identity_prefix(&ci.identity),
            ci.protocol,
            ci.port,
            identity_prefix(&cr.identity),
            cr.protocol,
            cr.port
        ))
    }
}

/// The payloads of a decrypted quick-mode message after its leading HASH.
#[derive(Default)]
struct QmBody<'a> {
    sa: Option<SaPayload<'a>>,
    nonce: Option<&'a [u8]>,
    ke: Option<&'a [u8]>,
    ids: Vec<IdPayload<'a>>,
    nat_oa: bool,
}

/// Splits a decrypted chain into its leading HASH, the bytes after it, and the rest.
pub(super) fn split_hash<'a>(ps: &wire::Payloads<'a>) -> Option<(&'a [u8], &'a [u8])> {
    let first: RawPayload<'a> = ps.raw().next()?;
    if first.payload_type != payload::HASH {
        return None;
    }
    let rest = ps.chain().get(first.bytes.len()..)?;
    Some((first.body(), rest))
}

fn qm_body<'a>(ps: &wire::Payloads<'a>) -> QmBody<'a> {
    let mut b = QmBody::default();
    for p in ps.iter().skip(1) {
        match p {
            Payload::Sa(s) if b.sa.is_none() => b.sa = Some(s),
            Payload::Nonce(n) if b.nonce.is_none() => b.nonce = Some(n),
            Payload::KeyExchange(k) if b.ke.is_none() => b.ke = Some(k),
            Payload::Id(i) => b.ids.push(i),
            Payload::NatOa { .. } => b.nat_oa = true,
            _ => {}
        }
    }
    b
}

impl Engine {
    /// Starts a quick mode under main mode `mi` for `peer`'s tunnel (QM1).
    pub(super) fn start_qm(
        &mut self,
        env: &mut dyn Env,
        now: u64,
        mi: usize,
        peer: usize,
        replaces: Option<(u32, u32)>,
    ) {
        let m = &self.mms[mi];
        let cfg = &self.peers[peer];
        let unrekey = |e: &mut Engine| {
            if let Some((i, _)) = replaces
                && let Some(c) = e.children.iter_mut().find(|c| c.inbound == i)
            {
                c.rekeying = false;
            }
        };
        if m.nat != cfg.encap.is_some() {
            let reason = if m.nat {
                format!(
                    "a NAT is between us and {} but tunnel `{}` has no encap = \"udp\"",
                    m.remote.ip(),
                    cfg.tunnel
                )
            } else {
                format!(
                    "tunnel `{}` needs UDP encapsulation but the peer does not speak NAT-T (RFC 3947)",
                    cfg.tunnel
                )
            };
            unrekey(self);
            self.failed(peer, Exchange::Quick, codes::IKE_INVALID_MM_FOR_QM, reason);
            return;
        }
        let Some(spi) = env.allocate_spi() else {
            unrekey(self);
            self.failed(
                peer,
                Exchange::Quick,
                codes::IKE_OUT_OF_MEMORY,
                "no free inbound SPI".into(),
            );
            self.schedule_retry(now, peer);
            return;
        };
        let dh = match cfg.pfs_group {
            Some(g) => match dh_generate(g) {
                Some(x) => Some(x),
                None => {
                    self.actions.push_back(Action::ReleaseSpi { spi });
                    unrekey(self);
                    self.failed(
                        peer,
                        Exchange::Quick,
                        codes::IKE_DH_FAILURE,
                        "no Diffie-Hellman value".into(),
                    );
                    return;
                }
            },
            None => None,
        };
        let ni = Self::nonce(env);
        let mid = Self::new_mid(env, &mut self.mms[mi]);
        let m = &self.mms[mi];
        let cfg = &self.peers[peer];
        let (Some(keys), Some(cbc)) = (&m.keys, &m.cbc) else {
            return;
        };
        let prf = keys.prf();
        let iv = phase2_iv(prf, &m.iv, mid);
        let mode = encap_mode(m);
        let (proto, sport) = id_proto_port(&cfg.selector, true);
        let (_, dport) = id_proto_port(&cfg.selector, false);
        let h = header(m.icookie, m.rcookie, wire::Exchange::Quick, mid);
        let sealed = super::seal(cbc, &iv, &h, |b| {
            let hr = b.hash_placeholder(prf.output_len());
            b.sa(|s| {
                s.proposal(1, protocol::ESP, &spi.to_be_bytes(), |pb| {
                    for (n, bits) in cfg.esp.iter().enumerate() {
                        let n = u8::try_from(n + 1).unwrap_or(u8::MAX);
                        pb.transform(n, esp_transform::AES_GCM_16, |a| {
                            esp_attrs(
                                a,
                                *bits,
                                mode,
                                cfg.qm_lifetime_s,
                                cfg.qm_lifetime_kb,
                                cfg.pfs_group,
                            )
                        });
                    }
                })
            });
            b.nonce(&ni);
            if let Some((_, ke)) = &dh {
                b.ke(ke);
            }
            b.id(proto, sport, &prefix_identity(&cfg.selector.src));
            b.id(proto, dport, &prefix_identity(&cfg.selector.dst));
            let rest = b.bytes().get(hr.end..).unwrap_or_default().to_vec();
            b.fill(hr, &keys.qm_hash1(mid, &rest));
        });
        let Some((buf, next)) = sealed else {
            self.actions.push_back(Action::ReleaseSpi { spi });
            return;
        };
        let (port, to) = (m.local.port(), m.remote);
        let udp = m.nat;
        let qm = Qm {
            mid,
            peer,
            state: QmState::I1,
            iv: next,
            created: now,
            ni,
            nr: Vec::new(),
            our_spi: spi,
            peer_spi: 0,
            esp: EspCipher::AesGcm16_128,
            life_s: cfg.qm_lifetime_s,
            life_kb: cfg.qm_lifetime_kb,
            dh: dh.map(|(d, _)| d),
            udp,
            replaces,
            retx: Some(Retx::new(now, buf.clone(), port, to)),
            last_in: Vec::new(),
            last_out: None,
            km: None,
        };
        self.mms[mi].qms.push(qm);
        self.send(peer, port, to, buf);
    }

    pub(super) fn recv_quick(
        &mut self,
        env: &mut dyn Env,
        now: u64,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
        msg: &Message<'_>,
    ) {
        let h = &msg.header;
        let Some(mi) = self
            .mms
            .iter()
            .position(|m| !m.dead && m.icookie == h.icookie && m.rcookie == h.rcookie)
        else {
            self.counters.dropped += 1;
            return;
        };
        // Under a main mode not yet up nothing can be authenticated: a counted drop, no
        // event (anyone who saw the cookies could make one per datagram).
        if self.mms[mi].state != super::MmState::Up || !h.flags.encrypted {
            self.counters.dropped += 1;
            return;
        }
        let mid = h.message_id;
        if let Some(qi) = self.mms[mi].qms.iter().position(|q| q.mid == mid) {
            let d = digest(data);
            let q = &self.mms[mi].qms[qi];
            if q.last_in == d {
                self.counters.duplicates += 1;
                if let Some(out) = q.last_out.clone() {
                    let m = &self.mms[mi];
                    let (p, port, to) = (q.peer, m.local.port(), m.remote);
                    self.send(p, port, to, out);
                }
                return;
            }
            match q.state {
                QmState::I1 => self.qm2(env, now, mi, qi, data, msg),
                QmState::R2 => self.qm3(now, mi, qi, data, msg),
                QmState::IDone | QmState::RDone => self.counters.dropped += 1,
            }
            return;
        }
        if self.mms[mi].mids.contains(mid) {
            // A message ID already used (a replayed QM1, or one of ours reflected): RFC 2409
            // §5.5 wants it unique.
            self.counters.dropped += 1;
            self.counters.replays += 1;
            return;
        }
        let _ = (local, from);
        self.qm1(env, now, mi, data, msg);
    }

    /// Decrypts and checks a quick-mode message's HASH; `hash_of` computes the expected hash
    /// from the bytes after the HASH payload. Returns the plaintext and the next IV.
    fn qm_open(
        &self,
        mi: usize,
        iv: &[u8; 16],
        msg: &Message<'_>,
        hash_of: impl FnOnce(&crate::ike::crypto::Phase1Keys, &[u8]) -> Vec<u8>,
    ) -> Option<(Vec<u8>, [u8; 16])> {
        let m = &self.mms[mi];
        let (keys, cbc) = (m.keys.as_ref()?, m.cbc.as_ref()?);
        let (plain, next) = open(cbc, iv, msg)?;
        let ok = {
            let ps = parse_decrypted(msg.header.next_payload, &plain).ok()?;
            let (hash, rest) = split_hash(&ps)?;
            hash_eq(&hash_of(keys, rest), hash)
        };
        ok.then_some((plain, next))
    }

    /// QM1 → QM2 (responder).
    fn qm1(&mut self, env: &mut dyn Env, now: u64, mi: usize, data: &[u8], msg: &Message<'_>) {
        let mid = msg.header.message_id;
        let Some(prf) = self.mms[mi].keys.as_ref().map(|k| k.prf()) else {
            return;
        };
        let iv0 = phase2_iv(prf, &self.mms[mi].iv, mid);
        let Some((plain, next)) = self.qm_open(mi, &iv0, msg, |k, rest| k.qm_hash1(mid, rest))
        else {
            self.counters.dropped += 1;
            return;
        };
        let Ok(ps) = parse_decrypted(msg.header.next_payload, &plain) else {
            return;
        };
        self.mms[mi].mids.insert(mid);
        self.authenticated(mi, now);
        let body = qm_body(&ps);
        let (Some(sa), Some(ni)) = (body.sa, body.nonce) else {
            self.counters.dropped += 1;
            return;
        };
        let mm_peer = self.mms[mi].peer;
        let first_spi = sa.proposals().next().and_then(|p| p.spi_u32());
        // The tunnel whose proxy IDs these are (IDci: the peer's side, IDcr: ours).
        let peer = match self.match_proxy_ids(mi, &body.ids) {
            Ok(p) => p,
            Err(reason) => {
                self.failed(mm_peer, Exchange::Quick, codes::IKE_POLICY_MATCH, reason);
                self.send_qm_refusal(env, mi, first_spi);
                return;
            }
        };
        let m = &self.mms[mi];
        let cfg = &self.peers[peer];
        let nat = m.nat;
        let modes: &[u16] = match (nat, cfg.encap.is_some()) {
            (true, true) => &[encap::UDP_TUNNEL, encap::UDP_TUNNEL_DRAFT],
            (false, false) => &[encap::TUNNEL],
            _ => &[],
        };
        let chosen = match select_esp(cfg, &sa, modes, nat, true) {
            Ok(c) => c,
            Err(why) => {
                let code = if modes.is_empty() {
                    codes::IKE_INVALID_MM_FOR_QM
                } else {
                    codes::IKE_POLICY_MATCH
                };
                let why = if modes.is_empty() {
                    if nat {
                        format!(
                            "a NAT is between us and the peer but tunnel `{}` has no encap = \"udp\"",
                            cfg.tunnel
                        )
                    } else {
                        format!(
                            "tunnel `{}` needs UDP encapsulation but the peer does not speak NAT-T (RFC 3947)",
                            cfg.tunnel
                        )
                    }
                } else {
                    format!("quick mode: no proposal chosen ({why})")
                };
                self.failed(peer, Exchange::Quick, code, why);
                self.send_qm_refusal(env, mi, first_spi);
                return;
            }
        };
        let (gxy, our_ke) = match chosen.group {
            None => (None, None),
            Some(g) => {
                let Some(ke) = body
                    .ke
                    .filter(|k| DhGroup::from_iana(g).is_some_and(|d| d.ke_len() == k.len()))
                else {
                    self.failed(
                        peer,
                        Exchange::Quick,
                        codes::IKE_PROCESS_ERR_KE,
                        "quick mode: PFS without a valid KE payload".into(),
                    );
                    self.send_qm_refusal(env, mi, first_spi);
                    return;
                };
                let agreed = dh_generate(g).and_then(|(d, pubv)| Some((d.agree(ke).ok()?, pubv)));
                let Some((gxy, pubv)) = agreed else {
                    self.failed(
                        peer,
                        Exchange::Quick,
                        codes::IKE_DH_FAILURE,
                        "quick mode: Diffie-Hellman failed".into(),
                    );
                    return;
                };
                (Some(gxy), Some(pubv))
            }
        };
        let Some(spi) = env.allocate_spi() else {
            self.failed(
                peer,
                Exchange::Quick,
                codes::IKE_OUT_OF_MEMORY,
                "no free inbound SPI".into(),
            );
            return;
        };
        let nr = Self::nonce(env);
        let m = &self.mms[mi];
        let (Some(keys), Some(cbc)) = (&m.keys, &m.cbc) else {
            return;
        };
        let h = header(m.icookie, m.rcookie, wire::Exchange::Quick, mid);
        let sealed = super::seal(cbc, &next, &h, |b| {
            let hr = b.hash_placeholder(prf.output_len());
            b.sa(|s| {
                s.proposal(chosen.prop_num, protocol::ESP, &spi.to_be_bytes(), |pb| {
                    pb.transform(chosen.t_num, esp_transform::AES_GCM_16, |a| {
                        esp_attrs(
                            a,
                            chosen.esp.key_bits(),
                            chosen.encap_mode,
                            chosen.life_s,
                            chosen.life_kb,
                            chosen.group,
                        )
                    })
                })
            });
            b.nonce(&nr);
            if let Some(ke) = &our_ke {
                b.ke(ke);
            }
            for id in &body.ids {
                b.push(&Payload::Id(*id));
            }
            let rest = b.bytes().get(hr.end..).unwrap_or_default().to_vec();
            b.fill(hr, &keys.qm_hash2(mid, ni, &rest));
        });
        let Some((buf, next)) = sealed else {
            self.actions.push_back(Action::ReleaseSpi { spi });
            return;
        };
        let g = gxy.as_ref().map(|g| g.as_slice());
        let km_in = keymat(keys, chosen.esp, g, spi, ni, &nr);
        let km_out = keymat(keys, chosen.esp, g, chosen.peer_spi, ni, &nr);
        // The initiator installs both SAs once it has QM2 and may send before our QM3
        // arrives: our inbound SA goes in before QM2 goes out.
        self.actions.push_back(Action::InboundUp {
            peer,
            inbound: ChildKeys {
                spi,
                keymat: km_in.clone(),
            },
            limits: Box::new(child_limits(
                chosen.life_s,
                chosen.life_kb,
                self.peers[peer].rekey_margin_s,
                self.peers[peer].rekey_margin_kb,
                false,
            )),
        });
        // The child this one replaces: the oldest live one of the tunnel (a rekey by the
        // peer); a child already replaced is named too, never a sibling.
        let replaces = self
            .children
            .iter()
            .filter(|c| c.peer == peer && !c.superseded)
            .min_by_key(|c| c.created)
            .map(|c| (c.inbound, c.outbound));
        let (port, to) = (m.local.port(), m.remote);
        let qm = Qm {
            mid,
            peer,
            state: QmState::R2,
            iv: next,
            created: now,
            ni: ni.to_vec(),
            nr,
            our_spi: spi,
            peer_spi: chosen.peer_spi,
            esp: chosen.esp,
            life_s: chosen.life_s,
            life_kb: chosen.life_kb,
            dh: None,
            udp: nat,
            replaces,
            retx: Some(Retx::new(now, buf.clone(), port, to)),
            last_in: digest(data),
            last_out: Some(buf.clone()),
            km: Some((km_in, km_out)),
        };
        self.mms[mi].qms.push(qm);
        self.send(peer, port, to, buf);
    }

    /// Which of the main mode's tunnels the proxy IDs name (IDci the peer's side, IDcr ours).
    fn match_proxy_ids(&self, mi: usize, ids: &[IdPayload<'_>]) -> Result<usize, String> {
        let m = &self.mms[mi];
        let (ci, cr) = match ids {
            [ci, cr] => {
                // Protocol and ports must be the tunnel's too (its SAs carry all of it).
                let sel = &self.peers[m.peer].selector;
                let (proto, sport) = id_proto_port(sel, true);
                let (_, dport) = id_proto_port(sel, false);
                if (ci.protocol, ci.port) != (proto, dport)
                    || (cr.protocol, cr.port) != (proto, sport)
                {
                    return Err(format!(
                        "quick mode: the peer's proxy IDs name protocol/ports {}/{} === {}/{}, tunnel `{}` has {proto}/{dport} === {proto}/{sport}",
                        ci.protocol, ci.port, cr.protocol, cr.port, self.peers[m.peer].tunnel
                    ));
                }
                (identity_prefix(&ci.identity), identity_prefix(&cr.identity))
            }
            [] => {
                // No IDs: the main mode's addresses (RFC 2409 §5.5).
                let host = |ip: std::net::IpAddr| {
                    crate::sa::policy::Prefix::new(ip, if ip.is_ipv4() { 32 } else { 128 }).ok()
                };
                (host(m.remote.ip()), host(m.local.ip()))
            }
            _ => return Err(format!("quick mode with {} ID payloads", ids.len())),
        };
        let (Some(ci), Some(cr)) = (ci, cr) else {
            return Err("quick mode: proxy IDs of an unsupported type".into());
        };
        for p in 0..self.peers.len() {
            if !self.same_gateway(m.peer, p) {
                continue;
            }
            let sel = &self.peers[p].selector;
            if sel.dst == ci && sel.src == cr {
                return Ok(p);
            }
        }
        let ours = &self.peers[m.peer].selector;
        Err(format!(
            "quick mode: the peer's proxy IDs {ci} === {cr} do not match tunnel `{}` ({} === {})",
            self.peers[m.peer].tunnel, ours.dst, ours.src
        ))
    }

    /// An encrypted NO_PROPOSAL_CHOSEN for a refused quick mode.
    fn send_qm_refusal(&mut self, env: &mut dyn Env, mi: usize, spi: Option<u32>) {
        let spi = spi.map(|s| s.to_be_bytes().to_vec()).unwrap_or_default();
        self.send_info(env, mi, |b| {
            b.notify(
                wire::DOI_IPSEC,
                protocol::ESP,
                &spi,
                notify::NO_PROPOSAL_CHOSEN,
                &[],
            );
        });
    }

    /// QM2 → QM3 (initiator): the child is up.
    fn qm2(
        &mut self,
        env: &mut dyn Env,
        now: u64,
        mi: usize,
        qi: usize,
        data: &[u8],
        msg: &Message<'_>,
    ) {
        let mid = msg.header.message_id;
        let iv = self.mms[mi].qms[qi].iv;
        let ni = self.mms[mi].qms[qi].ni.clone();
        let Some((plain, next)) = self.qm_open(mi, &iv, msg, |k, rest| k.qm_hash2(mid, &ni, rest))
        else {
            self.counters.dropped += 1;
            return;
        };
        let Ok(ps) = parse_decrypted(msg.header.next_payload, &plain) else {
            return;
        };
        self.authenticated(mi, now);
        let body = qm_body(&ps);
        let q = &self.mms[mi].qms[qi];
        let peer = q.peer;
        let cfg = &self.peers[peer];
        let mode = encap_mode(&self.mms[mi]);
        let chosen = body
            .sa
            .ok_or_else(|| "no SA payload".to_string())
            .and_then(|sa| select_esp(cfg, &sa, &[mode], self.mms[mi].nat, false));
        let chosen = match chosen {
            Ok(c) => c,
            Err(why) => {
                self.qm_initiator_failed(
                    now,
                    mi,
                    qi,
                    codes::IKE_POLICY_MATCH,
                    format!("quick mode: the responder's choice is not acceptable ({why})"),
                );
                return;
            }
        };
        let Some(nr) = body.nonce else {
            self.counters.dropped += 1;
            return;
        };
        // RFC 2409 §5.5: the responder returns the IDs it was sent.
        if let Err(why) = ids_as_sent(cfg, &body.ids) {
            self.qm_initiator_failed(
                now,
                mi,
                qi,
                codes::IKE_PROCESS_ERR_ID,
                format!("quick mode: the responder's proxy IDs are not ours ({why})"),
            );
            return;
        }
        let q = &mut self.mms[mi].qms[qi];
        let gxy = match (q.dh.take(), body.ke) {
            (None, _) => None,
            (Some(d), Some(ke)) => match d.agree(ke) {
                Ok(g) => Some(g),
                Err(e) => {
                    self.qm_initiator_failed(
                        now,
                        mi,
                        qi,
                        codes::IKE_DH_FAILURE,
                        format!("quick mode: {e}"),
                    );
                    return;
                }
            },
            (Some(_), None) => {
                self.qm_initiator_failed(
                    now,
                    mi,
                    qi,
                    codes::IKE_PROCESS_ERR_KE,
                    "quick mode: PFS but no KE in the answer".into(),
                );
                return;
            }
        };
        let m = &self.mms[mi];
        let (Some(keys), Some(cbc)) = (&m.keys, &m.cbc) else {
            return;
        };
        let q = &m.qms[qi];
        let h = header(m.icookie, m.rcookie, wire::Exchange::Quick, mid);
        let hash3 = keys.qm_hash3(mid, &q.ni, nr);
        let Some((buf, iv3)) = super::seal(cbc, &next, &h, |b| {
            b.hash(&hash3);
        }) else {
            return;
        };
        let g = gxy.as_ref().map(|g| g.as_slice());
        let inbound = keymat(keys, chosen.esp, g, q.our_spi, &q.ni, nr);
        let outbound = keymat(keys, chosen.esp, g, chosen.peer_spi, &q.ni, nr);
        let (port, to) = (m.local.port(), m.remote);
        let (icookie, rcookie) = (cookie_u64(&m.icookie), cookie_u64(&m.rcookie));
        let q = &mut self.mms[mi].qms[qi];
        q.state = QmState::IDone;
        q.iv = iv3;
        q.nr = nr.to_vec();
        q.peer_spi = chosen.peer_spi;
        q.esp = chosen.esp;
        q.life_s = chosen.life_s;
        q.life_kb = chosen.life_kb;
        q.retx = None;
        q.created = now;
        q.last_in = digest(data);
        q.last_out = Some(buf.clone());
        let (our_spi, replaces, udp) = (q.our_spi, q.replaces, q.udp);
        let _ = env;
        // The child (our new inbound SA) before QM3: the responder may send on it as soon as
        // QM3 arrives, and the driver carries actions out in order.
        self.child_up(
            now,
            NewChild {
                peer,
                icookie,
                rcookie,
                inbound: ChildKeys {
                    spi: our_spi,
                    keymat: inbound,
                },
                outbound: ChildKeys {
                    spi: chosen.peer_spi,
                    keymat: outbound,
                },
                limits: child_limits(
                    chosen.life_s,
                    chosen.life_kb,
                    self.peers[peer].rekey_margin_s,
                    self.peers[peer].rekey_margin_kb,
                    true,
                ),
                replaces,
                selector: self.peers[peer].selector,
                udp_encap: udp,
                initiator: true,
            },
        );
        self.send(peer, port, to, buf);
    }

    /// QM3 (responder): the child is up.
    fn qm3(&mut self, now: u64, mi: usize, qi: usize, data: &[u8], msg: &Message<'_>) {
        let mid = msg.header.message_id;
        let q = &self.mms[mi].qms[qi];
        let (iv, ni, nr) = (q.iv, q.ni.clone(), q.nr.clone());
        let Some(keys) = self.mms[mi].keys.as_ref() else {
            return;
        };
        let want = keys.qm_hash3(mid, &ni, &nr);
        let Some((_, next)) = self.qm_open(mi, &iv, msg, |_, _| want) else {
            self.counters.dropped += 1;
            return;
        };
        self.authenticated(mi, now);
        let m = &self.mms[mi];
        let (icookie, rcookie) = (cookie_u64(&m.icookie), cookie_u64(&m.rcookie));
        let q = &mut self.mms[mi].qms[qi];
        q.state = QmState::RDone;
        q.iv = next;
        q.retx = None;
        q.created = now;
        q.last_in = digest(data);
        q.last_out = None;
        let Some((km_in, km_out)) = q.km.take() else {
            return;
        };
        let (peer, our_spi, peer_spi, udp) = (q.peer, q.our_spi, q.peer_spi, q.udp);
        let (life_s, life_kb) = (q.life_s, q.life_kb);
        let replaces = q
            .replaces
            .filter(|(i, _)| self.children.iter().any(|c| c.inbound == *i));
        self.child_up(
            now,
            NewChild {
                peer,
                icookie,
                rcookie,
                inbound: ChildKeys {
                    spi: our_spi,
                    keymat: km_in,
                },
                outbound: ChildKeys {
                    spi: peer_spi,
                    keymat: km_out,
                },
                limits: child_limits(
                    life_s,
                    life_kb,
                    self.peers[peer].rekey_margin_s,
                    self.peers[peer].rekey_margin_kb,
                    false,
                ),
                replaces,
                selector: self.peers[peer].selector,
                udp_encap: udp,
                initiator: false,
            },
        );
    }

    /// Records and announces a new child.
    fn child_up(&mut self, now: u64, ch: NewChild) {
        let peer = ch.peer;
        self.child_seq += 1;
        if let Some((i, _)) = ch.replaces
            && let Some(c) = self.children.iter_mut().find(|c| c.inbound == i)
        {
            c.superseded = true;
            c.superseded_at = now;
            c.rekeying = false;
        }
        self.children.push(Child {
            peer,
            inbound: ch.inbound.spi,
            outbound: ch.outbound.spi,
            created: self.child_seq,
            superseded: false,
            superseded_at: 0,
            replaced: ch.replaces.map(|r| r.0),
            soft: false,
            rekeying: false,
        });
        let rt = &mut self.rt[peer];
        rt.backoff = 0;
        rt.retry_at = None;
        self.actions.push_back(Action::ChildUp(Box::new(ch)));
    }

    /// Our quick mode failed after its HASH checked out (or timed out): event, SPI back,
    /// retry later.
    pub(super) fn qm_initiator_failed(
        &mut self,
        now: u64,
        mi: usize,
        qi: usize,
        code: Code,
        reason: String,
    ) {
        if qi >= self.mms[mi].qms.len() {
            return;
        }
        let q = self.mms[mi].qms.remove(qi);
        self.actions
            .push_back(Action::ReleaseSpi { spi: q.our_spi });
        if let Some((i, _)) = q.replaces
            && let Some(c) = self.children.iter_mut().find(|c| c.inbound == i)
        {
            c.rekeying = false;
        }
        self.failed(q.peer, Exchange::Quick, code, reason);
        self.schedule_retry(now, q.peer);
    }

    /// Retransmissions and expiry of the main mode's quick modes.
    pub(super) fn tick_qms(&mut self, _env: &mut dyn Env, now: u64, mi: usize) {
        let mut qi = 0;
        while qi < self.mms[mi].qms.len() {
            let q = &mut self.mms[mi].qms[qi];
            match q.state {
                QmState::IDone | QmState::RDone => {
                    if now >= q.created + super::DONE_KEEP {
                        self.mms[mi].qms.remove(qi);
                        continue;
                    }
                }
                QmState::I1 | QmState::R2 => {
                    let Some(r) = q.retx.as_mut() else {
                        qi += 1;
                        continue;
                    };
                    if now >= r.next_at {
                        if r.step + 1 >= super::RETX.len() {
                            let initiator = q.state == QmState::I1;
                            if initiator {
                                self.qm_initiator_failed(
                                    now,
                                    mi,
                                    qi,
                                    codes::IKE_TIMED_OUT,
                                    "quick mode: no answer from the peer".into(),
                                );
                            } else {
                                // Its inbound SA went in at QM2: out again.
                                let q = self.mms[mi].qms.remove(qi);
                                self.actions.push_back(Action::ChildDown {
                                    peer: q.peer,
                                    inbound: Some(q.our_spi),
                                    outbound: None,
                                    reason: "no QM3",
                                });
                                self.actions
                                    .push_back(Action::ReleaseSpi { spi: q.our_spi });
                                self.failed(
                                    q.peer,
                                    Exchange::Quick,
                                    codes::IKE_TIMED_OUT,
                                    "quick mode (responder): no QM3 from the initiator".into(),
                                );
                            }
                            continue;
                        }
                        r.step += 1;
                        r.next_at = now + super::RETX[r.step];
                        let (data, port, to, p) = (r.data.clone(), r.local_port, r.to, q.peer);
                        self.counters.retransmits += 1;
                        self.send(p, port, to, data);
                    }
                }
            }
            qi += 1;
        }
    }
}
