//! The informational exchange (RFC 2409 §5.7): HASH-protected N and D under an established
//! main mode — ISAKMP and ESP DELETEs, INITIAL-CONTACT, quick-mode refusals — and dead peer
//! detection (RFC 3706 R-U-THERE / R-U-THERE-ACK). Unencrypted notifies are believed only as a
//! refusal of a main mode we are initiating.

use std::net::SocketAddr;

use super::{Dpd, Engine, MmState, QmState, S, cookie_u64, header, open, seal};
use crate::codes::{self, Code};
use crate::ike::config::DpdAction;
use crate::ike::crypto::{hash_eq, phase2_iv};
use crate::ike::types::{Action, Env, Exchange, MmEnd};
use crate::ike::wire::{self, Builder, Message, Payload, notify, parse_decrypted, protocol};

/// The code a peer's error notify surfaces as.
fn notify_code(ty: u16) -> Code {
    match ty {
        notify::NO_PROPOSAL_CHOSEN | notify::BAD_PROPOSAL_SYNTAX => codes::IKE_POLICY_MATCH,
        notify::INVALID_HASH_INFORMATION => codes::IKE_INVALID_HASH,
        notify::AUTHENTICATION_FAILED | notify::INVALID_ID_INFORMATION => codes::IKE_AUTH_FAIL,
        notify::INVALID_KEY_INFORMATION => codes::IKE_PROCESS_ERR_KE,
        notify::INVALID_MESSAGE_ID => codes::IKE_UNEXPECTED_MESSAGE_ID,
        notify::INVALID_COOKIE => codes::IKE_INVALID_COOKIE,
        notify::UNSUPPORTED_EXCHANGE_TYPE => codes::IKE_NO_MM_POLICY,
        _ => codes::IKE_GENERAL_PROCESSING_ERROR,
    }
}

fn notify_name(ty: u16) -> String {
    match ty {
        notify::NO_PROPOSAL_CHOSEN => "NO_PROPOSAL_CHOSEN".into(),
        notify::INVALID_HASH_INFORMATION => "INVALID_HASH_INFORMATION".into(),
        notify::AUTHENTICATION_FAILED => "AUTHENTICATION_FAILED".into(),
        notify::INVALID_ID_INFORMATION => "INVALID_ID_INFORMATION".into(),
        notify::PAYLOAD_MALFORMED => "PAYLOAD_MALFORMED".into(),
        t => format!("notify {t}"),
    }
}

impl Engine {
    pub(super) fn recv_info(
        &mut self,
        env: &mut dyn Env,
        now: u64,
        local: SocketAddr,
        from: SocketAddr,
        msg: &Message<'_>,
    ) {
        let h = &msg.header;
        if !h.flags.encrypted {
            self.clear_info(now, msg);
            return;
        }
        let Some(mi) = self.mms.iter().position(|m| {
            !m.dead && m.state == MmState::Up && m.icookie == h.icookie && m.rcookie == h.rcookie
        }) else {
            self.counters.dropped += 1;
            return;
        };
        let mid = h.message_id;
        // RFC 2409 §5.7: the informational HASH does not depend on the direction, so our own
        // message reflected back verifies, and so does a replay. Message IDs are unique under
        // a main mode (RFC 2408 §3.1): one used by either side already is refused before any
        // work (a bounded log of the newest ones; R-U-THERE sequence numbers cover older ones).
        if mid == 0 || self.mms[mi].mids.contains(mid) {
            self.counters.dropped += 1;
            self.counters.replays += 1;
            return;
        }
        let m = &self.mms[mi];
        let (Some(keys), Some(cbc)) = (&m.keys, &m.cbc) else {
            return;
        };
        let iv = phase2_iv(keys.prf(), &m.iv, mid);
        let Some((plain, _)) = open(cbc, &iv, msg) else {
            self.counters.dropped += 1;
            return;
        };
        let Ok(ps) = parse_decrypted(h.next_payload, &plain) else {
            self.counters.dropped += 1;
            return;
        };
        let Some((hash, rest)) = super::qm::split_hash(&ps) else {
            self.counters.dropped += 1;
            return;
        };
        if !hash_eq(&keys.info_hash(mid, rest), hash) {
            self.counters.dropped += 1;
            return;
        }
        let m = &mut self.mms[mi];
        m.mids.insert(mid);
        // A fresh, authenticated message: behind a NAT the peer's mapping may have changed
        // (RFC 3947 §5.2 lets the float follow it); without NAT-T the address stays.
        if m.nat && local.port() == 4500 {
            m.local = local;
            m.remote = from;
        }
        let peer = m.peer;
        let (i, r) = (m.icookie, m.rcookie);
        for p in ps.iter().skip(1) {
            match p {
                Payload::Notify(n) => match n.notify_type {
                    notify::R_U_THERE => {
                        if n.cookies().is_none_or(|c| c == (i, r))
                            && let Some(seq) = n.dpd_seq()
                        {
                            self.send_info(env, mi, |b| {
                                b.dpd(true, &i, &r, seq);
                            });
                            // RFC 3706 §7: a sequence number above every earlier one is the
                            // peer's own, fresh probe: it shows the peer alive and defers ours.
                            // It does not end a DPD in flight: only the answer to our own
                            // R-U-THERE does (a proof no replay or reflection can give).
                            let m = &mut self.mms[mi];
                            if m.peer_dpd_seq.is_none_or(|last| serial_after(seq, last)) {
                                m.peer_dpd_seq = Some(seq);
                                m.last_seen = now;
                            }
                        }
                    }
                    // RFC 3706 §5.3: proof of life only as the answer to an R-U-THERE of
                    // ours still outstanding (its sequence number, our cookies).
                    notify::R_U_THERE_ACK => {
                        let m = &self.mms[mi];
                        let answers = n.cookies().is_none_or(|c| c == (i, r))
                            && n.dpd_seq().is_some_and(|seq| {
                                m.dpd.as_ref().is_some_and(|d| {
                                    seq.wrapping_sub(d.first_seq)
                                        <= m.dpd_seq.wrapping_sub(d.first_seq)
                                })
                            });
                        if answers {
                            self.authenticated(mi, now);
                        } else {
                            self.counters.dropped += 1;
                        }
                    }
                    notify::INITIAL_CONTACT => self.initial_contact(env, now, mi),
                    t if t < notify::CONNECTED => {
                        // A refusal of one of our quick modes: by its SPI, or the only one.
                        let spi = n.spi.try_into().ok().map(u32::from_be_bytes);
                        let qms = &self.mms[mi].qms;
                        let qi = qms
                            .iter()
                            .position(|q| q.state == QmState::I1 && Some(q.our_spi) == spi)
                            .or_else(|| {
                                let mut it = qms
                                    .iter()
                                    .enumerate()
                                    .filter(|(_, q)| q.state == QmState::I1);
                                match (it.next(), it.next()) {
                                    (Some((x, _)), None) => Some(x),
                                    _ => None,
                                }
                            });
                        let reason = format!("quick mode refused by the peer: {}", notify_name(t));
                        match qi {
                            Some(qi) => {
                                self.qm_initiator_failed(now, mi, qi, notify_code(t), reason)
                            }
                            None => {
                                self.failed(peer, Exchange::Informational, notify_code(t), reason)
                            }
                        }
                    }
                    // Status notifies (RESPONDER-LIFETIME, REPLAY-STATUS, ...): ignored.
                    _ => {}
                },
                Payload::Delete(d) => match d.protocol() {
                    protocol::ISAKMP => {
                        let Some((di, dr)) = d.isakmp_cookies() else {
                            continue;
                        };
                        if let Some(oi) = self.mms.iter().position(|o| {
                            !o.dead
                                && o.icookie == di
                                && o.rcookie == dr
                                && self.same_gateway(o.peer, peer)
                        }) {
                            self.end_mm(env, now, oi, MmEnd::PeerDelete);
                        }
                    }
                    protocol::ESP => {
                        for spi in d.esp_spis() {
                            self.peer_deleted_child(peer, spi);
                        }
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }

    /// The peer deleted the ESP SA it receives on (our outbound SPI): the pair goes.
    fn peer_deleted_child(&mut self, peer: usize, spi: u32) {
        let Some(ci) = self
            .children
            .iter()
            .position(|c| c.outbound == spi && self.same_gateway(c.peer, peer))
        else {
            return;
        };
        let c = self.children.remove(ci);
        self.actions.push_back(Action::ChildDown {
            peer: c.peer,
            inbound: Some(c.inbound),
            outbound: Some(c.outbound),
            reason: "peer_delete",
        });
    }

    /// INITIAL-CONTACT from the peer under main mode `mi`: its older main modes are gone
    /// (never newer ones: the notify may be a late or replayed one under an old main mode).
    fn initial_contact(&mut self, env: &mut dyn Env, now: u64, mi: usize) {
        let (peer, est) = (self.mms[mi].peer, self.mms[mi].established);
        for oi in 0..self.mms.len() {
            if oi != mi
                && !self.mms[oi].dead
                && self.mms[oi].state == MmState::Up
                && self.mms[oi].established < est
                && self.same_gateway(self.mms[oi].peer, peer)
            {
                self.end_mm(env, now, oi, MmEnd::InitialContact);
            }
        }
    }

    /// An unencrypted informational: only a refusal of a main mode we initiated counts.
    fn clear_info(&mut self, now: u64, msg: &Message<'_>) {
        let h = &msg.header;
        let Some(mi) = self.mms.iter().position(|m| {
            !m.dead
                && m.initiator
                && m.state != MmState::Up
                && m.icookie == h.icookie
                && (m.rcookie == h.rcookie || m.rcookie == [0; 8])
        }) else {
            self.counters.dropped += 1;
            return;
        };
        let Ok(ps) = msg.payloads() else {
            self.counters.dropped += 1;
            return;
        };
        let refusal = ps.iter().find_map(|p| match p {
            Payload::Notify(n) if n.notify_type < notify::CONNECTED => Some(n.notify_type),
            _ => None,
        });
        let Some(t) = refusal else {
            self.counters.dropped += 1;
            return;
        };
        let peer = self.mms[mi].peer;
        let reason = format!("main mode refused by the peer: {}", notify_name(t));
        if self.mms[mi].state == MmState::I5 {
            // After MM5 the peer answers with an encrypted MM6; a clear refusal (a wrong key
            // on either side, or anyone who saw the cookies) does not end the main mode: it
            // is reported once, and the retransmission timeout ends it if no MM6 comes.
            let m = &mut self.mms[mi];
            if !m.reported {
                m.reported = true;
                m.suspect = Some((notify_code(t), reason.clone()));
                self.failed(peer, Exchange::Main, notify_code(t), reason);
            }
            return;
        }
        self.mms[mi].dead = true;
        self.failed(peer, Exchange::Main, notify_code(t), reason);
        self.schedule_retry(now, peer);
    }

    /// A fresh message from the peer that only it could produce (an authenticated quick-mode
    /// message, the answer to our R-U-THERE): proof of life.
    pub(super) fn authenticated(&mut self, mi: usize, now: u64) {
        let m = &mut self.mms[mi];
        m.last_seen = now;
        m.dpd = None;
    }

    /// Sends an informational under main mode `mi`: HASH(1) then what `f` writes.
    pub(super) fn send_info(
        &mut self,
        env: &mut dyn Env,
        mi: usize,
        f: impl FnOnce(&mut Builder<'_>),
    ) {
        let mid = Self::new_mid(env, &mut self.mms[mi]);
        let m = &self.mms[mi];
        let (Some(keys), Some(cbc)) = (&m.keys, &m.cbc) else {
            return;
        };
        let prf = keys.prf();
        let iv = phase2_iv(prf, &m.iv, mid);
        let h = header(m.icookie, m.rcookie, wire::Exchange::Informational, mid);
        let sealed = seal(cbc, &iv, &h, |b| {
            let hr = b.hash_placeholder(prf.output_len());
            f(b);
            let rest = b.bytes().get(hr.end..).unwrap_or_default().to_vec();
            b.fill(hr, &keys.info_hash(mid, &rest));
        });
        if let Some((buf, _)) = sealed {
            let (p, port, to) = (m.peer, m.local.port(), m.remote);
            self.send(p, port, to, buf);
        }
    }

    pub(super) fn send_delete_isakmp(&mut self, env: &mut dyn Env, mi: usize) {
        let (i, r) = (self.mms[mi].icookie, self.mms[mi].rcookie);
        self.send_info(env, mi, |b| {
            b.delete_isakmp(&i, &r);
        });
    }

    /// ESP DELETE of SPIs we receive on.
    pub(super) fn send_delete_esp(&mut self, env: &mut dyn Env, mi: usize, spis: &[u32]) {
        self.send_info(env, mi, |b| {
            b.delete_esp(spis);
        });
    }

    /// When DPD next needs a tick for main mode `m`.
    pub(super) fn dpd_deadline(&self, m: &super::Mm) -> Option<u64> {
        let cfg = self.peers.get(m.peer)?;
        if cfg.dpd_delay_s == 0 || !m.peer_dpd {
            return None;
        }
        Some(match &m.dpd {
            Some(d) => d.next_at.min(d.started + cfg.dpd_timeout_s * S),
            None => m.last_seen + cfg.dpd_delay_s * S,
        })
    }

    /// RFC 3706: R-U-THERE after `dpd_delay_s` of silence, again every few seconds, dead
    /// after `dpd_timeout_s` without an authenticated answer.
    pub(super) fn tick_dpd(&mut self, env: &mut dyn Env, now: u64, mi: usize) {
        let m = &self.mms[mi];
        let Some(cfg) = self.peers.get(m.peer) else {
            return;
        };
        if cfg.dpd_delay_s == 0 || !m.peer_dpd {
            return;
        }
        let delay = cfg.dpd_delay_s * S;
        let timeout = cfg.dpd_timeout_s * S;
        let resend = delay.clamp(S, 5 * S);
        let (i, r) = (m.icookie, m.rcookie);
        match &m.dpd {
            Some(d) if now >= d.started + timeout => {
                self.dpd_dead(env, now, mi);
            }
            Some(d) if now >= d.next_at => {
                let seq = m.dpd_seq.wrapping_add(1);
                let (started, first_seq) = (d.started, d.first_seq);
                let m = &mut self.mms[mi];
                m.dpd_seq = seq;
                m.dpd = Some(Dpd {
                    started,
                    next_at: now + resend,
                    first_seq,
                });
                self.send_info(env, mi, |b| {
                    b.dpd(false, &i, &r, seq);
                });
            }
            Some(_) => {}
            None if now >= m.last_seen + delay => {
                let seq = if m.dpd_seq == 0 {
                    Self::random_u32(env) & 0x7fff_ffff
                } else {
                    m.dpd_seq.wrapping_add(1)
                };
                let m = &mut self.mms[mi];
                m.dpd_seq = seq;
                m.dpd = Some(Dpd {
                    started: now,
                    next_at: now + resend,
                    first_seq: seq,
                });
                self.send_info(env, mi, |b| {
                    b.dpd(false, &i, &r, seq);
                });
            }
            None => {}
        }
    }

    /// DPD gave up: every main mode with the gateway goes without a DELETE (13886), and
    /// with `clear` or `restart` the children go too; `restart` initiates again at once.
    fn dpd_dead(&mut self, env: &mut dyn Env, now: u64, mi: usize) {
        let peer = self.mms[mi].peer;
        let action = self.peers[peer].dpd_action;
        for oi in 0..self.mms.len() {
            let o = &self.mms[oi];
            if o.dead || !self.same_gateway(o.peer, peer) {
                continue;
            }
            let up = o.state == MmState::Up;
            let (p, i, r) = (o.peer, cookie_u64(&o.icookie), cookie_u64(&o.rcookie));
            self.abort_qms(oi, None, false);
            self.mms[oi].dead = true;
            if up {
                self.actions.push_back(Action::MainModeDown {
                    peer: p,
                    icookie: i,
                    rcookie: r,
                    cause: MmEnd::DpdDead,
                });
            }
        }
        let group: Vec<usize> = (0..self.peers.len())
            .filter(|&p| self.same_gateway(p, peer))
            .collect();
        let mut had = Vec::new();
        let kids = std::mem::take(&mut self.children);
        for c in kids {
            if group.contains(&c.peer) {
                had.push(c.peer);
                self.actions.push_back(Action::ChildDown {
                    peer: c.peer,
                    inbound: Some(c.inbound),
                    outbound: Some(c.outbound),
                    reason: "dpd",
                });
            } else {
                self.children.push(c);
            }
        }
        for p in group {
            self.rt[p].pending.clear();
            let wanted = self.rt[p].want || had.contains(&p);
            match action {
                DpdAction::Restart if wanted => {
                    self.rt[p].want = true;
                    self.rt[p].pending.push(None);
                    self.kick(env, now, p);
                }
                _ => {
                    if self.peers[p].initiate && self.rt[p].want {
                        self.schedule_retry(now, p);
                    }
                }
            }
        }
    }
}

/// RFC 1982 serial number order: `a` comes after `b`.
fn serial_after(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}
