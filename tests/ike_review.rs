//! Review findings against the sans-I/O IKEv1 engine, each as an in-memory test (the harness is
//! the one of `tests/ike_engine.rs`: two engines back to back, a fake network, clock and
//! environment). Each test named for a finding failed before its fix (they were marked
//! `#[ignore = "finding N"]`); the tests after them cover fixes the review did not prove.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use espd::codes::{self, Code};
use espd::ike::config::IkePeer;
use espd::ike::engine::Engine;
use espd::ike::types::{Action, Env, Exchange, MmEnd, NewChild};
use espd::sa::policy::{PortRange, Selector};
use zeroize::Zeroizing;

include!("common/ike_harness.rs");

// Helpers of the review.

const EVIL: &str = "198.51.100.99";

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// ISAKMP exchange type of a datagram (2 main, 5 informational, 32 quick).
fn exch(d: &[u8]) -> u8 {
    d.get(18).copied().unwrap_or(0)
}

fn encrypted(d: &[u8]) -> bool {
    d.get(19).is_some_and(|f| f & 1 != 0)
}

/// A genuine MM1 of A's configuration, from a throwaway engine.
fn an_mm1(now: u64) -> Vec<u8> {
    let mut e = Engine::new(vec![peer(true)]);
    let mut env = TestEnv::new(0x0bad_5eed, 0x7000_0000);
    e.initiate(&mut env, now, 0);
    while let Some(a) = e.poll_action() {
        if let Action::Send { data, .. } = a {
            return data;
        }
    }
    panic!("no MM1");
}

/// Every action of an engine, Sends included.
fn drain(e: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| e.poll_action()).collect()
}

// -------------------------------------------------------------------------------------------

/// Finding 1: the informational HASH (RFC 2409 §5.7) does not depend on the direction, so A's
/// own R-U-THERE, reflected back to A by an on-path attacker, decrypts and verifies; A takes
/// it as proof of life (`authenticated`) and never declares the dead peer dead. Nor is an
/// R-U-THERE-ACK's sequence number checked (RFC 3706 §5.3).
#[test]
fn reflected_r_u_there_does_not_keep_a_dead_peer_alive() {
    assert!(
        dead_peer_declared(true),
        "120 s after B died A still has it alive: its own reflected R-U-THEREs count as B's"
    );
}

/// The control of finding 1: without the reflection, A declares B dead.
#[test]
fn dead_peer_is_declared_dead_without_reflection() {
    assert!(dead_peer_declared(false));
}

/// B dies after setup (A's DPD 10 s / 30 s); with `reflect`, an on-path attacker sends each
/// informational of A straight back to A as if from B. Whether A declared B dead in 120 s.
fn dead_peer_declared(reflect: bool) -> bool {
    let mut a = peer(true);
    a.dpd_delay_s = 10;
    a.dpd_timeout_s = 30;
    let mut w = World::new(a, peer(false));
    setup(&mut w);
    w.tap = Box::new(|_, _| Fate::Drop);
    let mut seen = w.wire.len();
    for _ in 0..120 {
        w.advance(S);
        let mine: Vec<(u16, Vec<u8>)> = w.wire[seen..]
            .iter()
            .filter(|(from_a, _, d)| reflect && *from_a && exch(d) == 5)
            .map(|(_, p, d)| (*p, d.clone()))
            .collect();
        seen = w.wire.len();
        for (port, d) in mine {
            w.a.e
                .receive(&mut w.a.env, w.now, sa(A_IP, port), sa(B_IP, port), &d);
        }
        w.pump();
    }
    w.a.mm_down().iter().any(|d| d.2 == MmEnd::DpdDead)
}

/// A and B with only B doing DPD (10 s), set up, and B's first R-U-THERE captured.
fn world_with_a_captured_r_u_there() -> (World, Vec<(u16, Vec<u8>)>) {
    let mut a = peer(true);
    a.dpd_delay_s = 0;
    let mut b = peer(false);
    b.dpd_delay_s = 10;
    let mut w = World::new(a, b);
    setup(&mut w);
    let start = w.wire.len();
    w.advance(11 * S);
    let infos: Vec<(u16, Vec<u8>)> = w.wire[start..]
        .iter()
        .filter(|(from_a, _, d)| !*from_a && exch(d) == 5)
        .map(|(_, p, d)| (*p, d.clone()))
        .collect();
    assert_eq!(infos.len(), 1, "B's R-U-THERE");
    (w, infos)
}

/// Finding 2: informational messages have no replay protection (their message IDs are not
/// remembered): a captured R-U-THERE replayed N times is answered N times (each answer a new
/// message ID kept forever in `Mm::mids`: unbounded memory, decrypt + 2 HMAC + encrypt per
/// datagram).
#[test]
fn replayed_informational_is_not_processed_again() {
    let (mut w, infos) = world_with_a_captured_r_u_there();
    let before = w.wire.len();
    for _ in 0..50 {
        for (port, d) in &infos {
            w.a.e
                .receive(&mut w.a.env, w.now, sa(A_IP, *port), sa(B_IP, *port), d);
        }
    }
    w.pump();
    let answers = w.wire[before..].iter().filter(|(a, _, _)| *a).count();
    assert_eq!(answers, 0, "A answered {answers} replays of one R-U-THERE");
}

/// Finding 3: any HASH-valid informational moves the main mode's peer address
/// (`recv_info`: `m.remote = from`), replays included: one captured datagram replayed from
/// another address sends all of A's later IKE traffic (rekeys, DPD, deletes) there.
#[test]
fn replayed_informational_from_elsewhere_does_not_move_the_peer() {
    let (mut w, infos) = world_with_a_captured_r_u_there();
    let (port, d) = &infos[0];
    w.a.e
        .receive(&mut w.a.env, w.now, sa(A_IP, *port), sa(EVIL, *port), d);
    drain(&mut w.a.e);
    let out = w.a.children()[0].outbound.spi;
    w.a.e.child_soft_expired(&mut w.a.env, w.now, out, true);
    let to: Vec<SocketAddr> = drain(&mut w.a.e)
        .into_iter()
        .filter_map(|a| match a {
            Action::Send { to, .. } => Some(to),
            _ => None,
        })
        .collect();
    assert!(!to.is_empty(), "A's rekey sent nothing");
    let b: IpAddr = B_IP.parse().unwrap();
    assert!(to.iter().all(|t| t.ip() == b), "A's QM1 went to {to:?}");
}

/// Finding 4: 64 MM1s with the peer's source address (any ports, never continued: no DH
/// state) fill its per-address half-open quota for 30 s; the genuine peer's main mode is
/// refused meanwhile. An off-path attacker needs ~2 spoofed datagrams a second per peer
/// (and 16 peers' addresses fill the global 1024).
#[test]
fn spoofed_mm1s_do_not_lock_the_peer_out() {
    let mut w = World::std();
    let mm1 = an_mm1(w.now);
    for n in 0..64u16 {
        let mut m = mm1.clone();
        m[..2].copy_from_slice(&n.to_be_bytes());
        m[2] = 0xee;
        w.b.e
            .receive(&mut w.b.env, w.now, sa(B_IP, 500), sa(A_IP, 20_000 + n), &m);
    }
    drain(&mut w.b.e);
    w.initiate_a();
    w.advance(5 * S);
    assert_eq!(
        w.a.mm_up().len(),
        1,
        "genuine main mode refused: {:?} / B {:?}",
        w.a.failed(),
        w.b.e.counters()
    );
}

/// Finding 5: a responder's quick mode installs its inbound SA at QM2 (`InboundUp`); if the
/// main mode then ends (peer DELETE, INITIAL-CONTACT, lifetime, reauth, terminate, DPD)
/// before QM3, `abort_qms` only emits `ReleaseSpi`, which the control ignores for an
/// installed SPI: the inbound SA (with keys) stays installed until its hard lifetime.
#[test]
fn aborted_responder_quick_mode_removes_its_inbound_sa() {
    let mut w = World::std();
    let n = std::rc::Rc::new(std::cell::Cell::new(0));
    let n2 = n.clone();
    // Lose A's QM3.
    w.tap = Box::new(move |from_a, d| {
        if from_a && exch(d) == 32 {
            n2.set(n2.get() + 1);
            if n2.get() == 2 {
                return Fate::Drop;
            }
        }
        Fate::Pass
    });
    w.initiate_a();
    let inbound: Vec<u32> =
        w.b.ev
            .iter()
            .filter_map(|a| match a {
                Action::InboundUp { inbound, .. } => Some(inbound.spi),
                _ => None,
            })
            .collect();
    assert_eq!(inbound.len(), 1);
    assert!(w.b.children().is_empty(), "QM3 was lost");
    let (i, r, _) = w.b.mm_up()[0];
    w.b.e.main_mode_expired(&mut w.b.env, w.now, i, r);
    w.pump();
    assert!(
        w.b.child_down().iter().any(|c| c.0 == Some(inbound[0])),
        "inbound SA {:#x} installed at QM2 stays installed (only ReleaseSpi {:x?})",
        inbound[0],
        w.b.released
    );
}

/// Finding 6: an encrypted quick-mode datagram under a main mode that is not up yields a
/// `Failed` event (a control call, an event and a warn log line) for every datagram, before
/// anything is authenticated and without a rate limit.
#[test]
fn unauthenticated_quick_modes_under_a_half_open_main_mode_make_no_event_flood() {
    let mut w = World::std();
    // The attacker's own MM1 (with the peer's address), and B's MM2 seen on the path.
    let mm1 = an_mm1(w.now);
    w.b.e
        .receive(&mut w.b.env, w.now, sa(B_IP, 500), sa(A_IP, 500), &mm1);
    let mm2 = drain(&mut w.b.e)
        .into_iter()
        .find_map(|a| match a {
            Action::Send { data, .. } => Some(data),
            _ => None,
        })
        .expect("MM2");
    let mut failed = 0;
    for mid in 1..=1000u32 {
        let mut d = Vec::with_capacity(44);
        d.extend_from_slice(&mm2[..16]);
        d.extend_from_slice(&[8, 0x10, 32, 1]);
        d.extend_from_slice(&mid.to_be_bytes());
        d.extend_from_slice(&44u32.to_be_bytes());
        d.extend_from_slice(&[0u8; 16]);
        w.b.e
            .receive(&mut w.b.env, w.now, sa(B_IP, 500), sa(EVIL, 500), &d);
        failed += drain(&mut w.b.e)
            .iter()
            .filter(|a| matches!(a, Action::Failed { .. }))
            .count();
    }
    assert!(
        failed <= 1,
        "{failed} qm_failed events from 1000 forged datagrams"
    );
}

/// Finding 7: a rekeyed (superseded) child is never forgotten by the engine: the driver's
/// control retires the old SAs (outbound replaced, inbound `retired after rekey`), which
/// sends no SaHardExpired, so nothing calls `child_hard_expired` for them. `ike list` shows
/// every child ever made, `terminate`/DPD send ESP DELETEs and ChildDowns for all of them,
/// and `Engine::children` grows by one per rekey for the life of the process.
#[test]
fn rekeyed_children_are_forgotten() {
    let mut w = World::std();
    setup(&mut w);
    for _ in 0..5 {
        let out = w.a.children().last().unwrap().outbound.spi;
        w.a.e.child_soft_expired(&mut w.a.env, w.now, out, true);
        w.pump();
        w.advance(60 * S);
    }
    check_pairs(&w, 6);
    w.advance(600 * S);
    let n = w.a.e.status(w.now)[0].children.len();
    assert!(
        n <= 2,
        "A still lists {n} children, 10 minutes after 5 rekeys"
    );
}

/// Finding 8: an MM2 with a transform we did not offer (forged by anyone who saw the MM1's
/// cookie, with the responder's address as its source) ends our main mode with POLICY_MATCH
/// and, unlike every other initiator failure, schedules no retry: an `initiate = true` peer
/// stays down for good. (From any other address it is not even looked at: the next test.)
#[test]
fn forged_mm2_does_not_stop_an_initiating_peer() {
    forged_mm2(sa(B_IP, 500));
}

/// An MM2 from an address our MM1 did not go to is dropped (counted), not acted on.
#[test]
fn mm2_from_another_address_is_ignored() {
    let w = forged_mm2(sa(EVIL, 500));
    assert!(w.a.failed().is_empty(), "{:?}", w.a.failed());
}

/// A's MM2 is captured (and lost), then forged (a group A did not offer) and delivered from
/// `from`; A must come up in the end.
fn forged_mm2(from: SocketAddr) -> World {
    let mut w = World::std();
    let cap = std::rc::Rc::new(std::cell::RefCell::new(None::<Vec<u8>>));
    let c2 = cap.clone();
    w.tap = Box::new(move |from_a, d| {
        if !from_a && exch(d) == 2 && !encrypted(d) && c2.borrow().is_none() {
            *c2.borrow_mut() = Some(d.to_vec());
            return Fate::Drop;
        }
        Fate::Pass
    });
    w.initiate_a();
    let mut forged = cap.borrow().clone().expect("MM2");
    // Group 19 (ECP-256, chosen) becomes 20 (ECP-384, not offered by A).
    let at = forged
        .windows(4)
        .position(|x| x == [0x80, 0x04, 0x00, 0x13])
        .expect("group attribute");
    forged[at + 3] = 0x14;
    let dropped = w.a.e.counters().dropped;
    w.a.e
        .receive(&mut w.a.env, w.now, sa(A_IP, 500), from, &forged);
    w.pump();
    if from.ip() == B_IP.parse::<IpAddr>().unwrap() {
        assert!(
            w.a.failed().iter().any(|f| f.1 == codes::IKE_POLICY_MATCH),
            "{:?}",
            w.a.failed()
        );
    } else {
        assert_eq!(w.a.e.counters().dropped, dropped + 1);
    }
    w.advance(300 * S);
    assert_eq!(w.a.mm_up().len(), 1, "A never retried after one forged MM2");
    w
}

/// Finding 9: one corrupted MM5 (anyone who saw the cookies; it cannot be decrypted, so it
/// proves nothing) kills the responder's main mode (`mm5` marks it dead and sends
/// AUTHENTICATION_FAILED); the genuine MM5 right after it is dropped. RFC 2408 §5 has a
/// message that fails to verify discarded, not the SA torn down. `mm6` does the same to the
/// initiator.
#[test]
fn garbage_mm5_does_not_kill_the_responder_main_mode() {
    let mut w = World::std();
    let cap = std::rc::Rc::new(std::cell::RefCell::new(None::<Vec<u8>>));
    let c2 = cap.clone();
    w.tap = Box::new(move |from_a, d| {
        if from_a && exch(d) == 2 && encrypted(d) && c2.borrow().is_none() {
            *c2.borrow_mut() = Some(d.to_vec());
            return Fate::Drop;
        }
        Fate::Pass
    });
    w.initiate_a();
    let mm5 = cap.borrow().clone().expect("MM5");
    let mut bad = mm5.clone();
    bad[28] ^= 0xff;
    w.b.e
        .receive(&mut w.b.env, w.now, sa(B_IP, 500), sa(A_IP, 500), &bad);
    w.b.e
        .receive(&mut w.b.env, w.now, sa(B_IP, 500), sa(A_IP, 500), &mm5);
    w.pump();
    assert_eq!(w.b.mm_up().len(), 1, "B: {:?}", w.b.failed());
}

// -------------------------------------------------------------------------------------------
// Tests of the fixes without a proving test in the review.

/// Finding 9 (initiator side): an MM6 that does not decrypt is discarded; the genuine one
/// after it brings the main mode up.
#[test]
fn garbage_mm6_does_not_kill_the_initiator_main_mode() {
    let mut w = World::std();
    let cap = std::rc::Rc::new(std::cell::RefCell::new(None::<Vec<u8>>));
    let c2 = cap.clone();
    w.tap = Box::new(move |from_a, d| {
        if !from_a && exch(d) == 2 && encrypted(d) && c2.borrow().is_none() {
            *c2.borrow_mut() = Some(d.to_vec());
            return Fate::Drop;
        }
        Fate::Pass
    });
    w.initiate_a();
    let mm6 = cap.borrow().clone().expect("MM6");
    let mut bad = mm6.clone();
    bad[28] ^= 0xff;
    let port = w.wire.iter().rev().find(|x| x.0).unwrap().1;
    let dropped = w.a.e.counters().dropped;
    w.a.e
        .receive(&mut w.a.env, w.now, sa(A_IP, port), sa(B_IP, port), &bad);
    assert_eq!(w.a.e.counters().dropped, dropped + 1);
    w.a.e
        .receive(&mut w.a.env, w.now, sa(A_IP, port), sa(B_IP, port), &mm6);
    w.pump();
    assert_eq!(w.a.mm_up().len(), 1, "A: {:?}", w.a.failed());
    check_pairs(&w, 1);
}

/// An unencrypted ISAKMP notify `ty` for cookies `i`/`r` (what anyone who saw them can send).
fn clear_notify(i: &[u8], r: &[u8], ty: u16) -> Vec<u8> {
    let mut d = Vec::with_capacity(56);
    d.extend_from_slice(i);
    d.extend_from_slice(r);
    d.extend_from_slice(&[11, 0x10, 5, 0]);
    d.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    d.extend_from_slice(&56u32.to_be_bytes());
    d.extend_from_slice(&[0, 0, 0, 28, 0, 0, 0, 1, 1, 16]);
    d.extend_from_slice(&ty.to_be_bytes());
    d.extend_from_slice(i);
    d.extend_from_slice(r);
    d
}

/// Finding 17: after MM5 went out, an unencrypted AUTHENTICATION_FAILED (unauthenticated)
/// is reported but does not end our main mode: the genuine MM6 still brings it up.
#[test]
fn clear_refusal_after_mm5_does_not_end_the_main_mode() {
    let mut w = World::std();
    let cap = std::rc::Rc::new(std::cell::RefCell::new(None::<Vec<u8>>));
    let c2 = cap.clone();
    w.tap = Box::new(move |from_a, d| {
        if !from_a && exch(d) == 2 && encrypted(d) && c2.borrow().is_none() {
            *c2.borrow_mut() = Some(d.to_vec());
            return Fate::Drop;
        }
        Fate::Pass
    });
    w.initiate_a();
    let mm6 = cap.borrow().clone().expect("MM6");
    let port = w.wire.iter().rev().find(|x| x.0).unwrap().1;
    let forged = clear_notify(&mm6[..8], &mm6[8..16], 24);
    w.a.e
        .receive(&mut w.a.env, w.now, sa(A_IP, port), sa(EVIL, port), &forged);
    assert_eq!(w.a.failed().len(), 0, "not collected yet");
    w.collect();
    assert_eq!(w.a.failed().len(), 1, "reported once: {:?}", w.a.failed());
    w.a.e
        .receive(&mut w.a.env, w.now, sa(A_IP, port), sa(B_IP, port), &mm6);
    w.pump();
    assert_eq!(w.a.mm_up().len(), 1, "A: {:?}", w.a.failed());
}

/// Finding 1 (what proves life): once A's DPD is in flight, only the answer to an R-U-THERE
/// of A's ends it; B's own fresh R-U-THEREs (which A answers) do not. Here A's informationals
/// are all lost, B's R-U-THEREs start after A's DPD did: A declares B dead on time.
#[test]
fn only_the_answer_to_our_r_u_there_ends_dpd() {
    let mut a = peer(true);
    a.dpd_delay_s = 10;
    a.dpd_timeout_s = 30;
    let mut b = peer(false);
    b.dpd_delay_s = 20;
    let mut w = World::new(a, b);
    setup(&mut w);
    w.tap = Box::new(|from_a, d| {
        if from_a && exch(d) == 5 {
            return Fate::Drop;
        }
        Fate::Pass
    });
    let before = w.wire.len();
    w.advance(45 * S);
    assert!(
        w.wire[before..].iter().any(|(a, _, d)| !*a && exch(d) == 5),
        "B probed"
    );
    assert!(
        w.a.mm_down().iter().any(|d| d.2 == MmEnd::DpdDead),
        "B's probes ended A's DPD: {:?}",
        w.a.mm_down()
    );
}

/// Finding 2: the message-ID log is per main mode and bounded; a long DPD exchange does not
/// make A refuse B's fresh informationals.
#[test]
fn long_dpd_exchange_keeps_working() {
    let mut a = peer(true);
    a.dpd_delay_s = 1;
    let mut b = peer(false);
    b.dpd_delay_s = 1;
    let mut w = World::new(a, b);
    setup(&mut w);
    w.advance(4000 * S);
    assert!(w.a.mm_down().is_empty() && w.b.mm_down().is_empty());
    assert_eq!(w.a.e.counters().replays, 0);
    assert_eq!(w.b.e.counters().replays, 0);
}

/// Finding 7 (exact path): the control's `retired after rekey` makes the engine forget the
/// rekeyed child at once; a later terminate sends no DELETE for it.
#[test]
fn retired_child_is_forgotten_at_once() {
    let mut w = World::std();
    setup(&mut w);
    let old = w.a.children()[0].inbound.spi;
    let out = w.a.children()[0].outbound.spi;
    w.a.e.child_soft_expired(&mut w.a.env, w.now, out, true);
    w.pump();
    check_pairs(&w, 2);
    assert_eq!(w.a.e.status(w.now)[0].children.len(), 2);
    w.a.e.child_retired(old);
    let kids = w.a.e.status(w.now)[0].children.clone();
    assert_eq!(kids.len(), 1);
    assert_ne!(kids[0].0, old);
    w.a.e.terminate(&mut w.a.env, w.now, 0);
    w.collect();
    let down: Vec<_> = w.a.child_down().iter().map(|c| c.0).collect();
    assert_eq!(down, vec![Some(kids[0].0)]);
}

/// Finding 12: a child the driver could not install is forgotten, the peer gets an ESP
/// DELETE, `qm_failed` is reported, the child it was to replace stays, and a retry rekeys.
#[test]
fn failed_child_install_is_fed_back() {
    let mut w = World::std();
    setup(&mut w);
    let (old_in, old_out) = (
        w.a.children()[0].inbound.spi,
        w.a.children()[0].outbound.spi,
    );
    w.a.e.child_soft_expired(&mut w.a.env, w.now, old_out, true);
    w.pump();
    check_pairs(&w, 2);
    let new_in = w.a.children()[1].inbound.spi;
    let new_out = w.a.children()[1].outbound.spi;
    w.a.e
        .child_install_failed(&mut w.a.env, w.now, new_in, "test".into());
    w.pump();
    assert!(
        w.a.failed()
            .iter()
            .any(|f| f.0 == Exchange::Quick && f.1 == codes::IKE_GENERAL_PROCESSING_ERROR),
        "{:?}",
        w.a.failed()
    );
    assert!(
        w.b.child_down()
            .iter()
            .any(|c| c.1 == Some(new_in) && c.0 == Some(new_out) && c.2 == "peer_delete"),
        "B removed the pair: {:?}",
        w.b.child_down()
    );
    assert_eq!(w.a.e.status(w.now)[0].children, vec![(old_in, old_out)]);
    w.advance(30 * S);
    assert_eq!(
        w.a.children().len(),
        3,
        "the rekey was retried: {:?}",
        w.a.failed()
    );
}

/// Finding 16: a peer SPI below 256 is refused (RFC 4303 §2.1 reserves them).
#[test]
fn reserved_peer_spi_is_refused() {
    let mut w = World::std();
    w.b.env.next_spi = 0x10;
    w.initiate_a();
    assert!(w.a.children().is_empty() && w.b.children().is_empty());
    assert!(
        w.a.failed()
            .iter()
            .any(|f| f.1 == codes::IKE_POLICY_MATCH && f.2.contains("reserved")),
        "{:?}",
        w.a.failed()
    );
}

/// Finding 16: QM1 proxy IDs with other ports than the tunnel's are refused.
#[test]
fn proxy_ids_with_other_ports_are_refused() {
    let mut a = peer(true);
    a.selector.protocol = Some(17);
    a.selector.dst_ports = PortRange { lo: 53, hi: 53 };
    let mut w = World::new(a, peer(false));
    w.initiate_a();
    assert!(w.b.children().is_empty());
    assert!(
        w.b.failed()
            .iter()
            .any(|f| f.1 == codes::IKE_POLICY_MATCH && f.2.contains("ports")),
        "{:?}",
        w.b.failed()
    );
}

/// Finding 9 with a wrong pre-shared key: the responder's main mode stays (an MM5 that does
/// not decrypt proves nothing), but the initiator's resent MM5s are reported again (at most
/// one `mm_failed` in 5 s), and both sides end it by timeout; the initiator retries later.
#[test]
fn wrong_psk_is_reported_while_the_initiator_resends() {
    let mut b = peer(false);
    b.psk = Zeroizing::new(b"another-secret".to_vec());
    let mut w = World::new(peer(true), b);
    w.initiate_a();
    assert_eq!(w.b.failed().len(), 1, "{:?}", w.b.failed());
    w.advance(16 * S);
    let fb = w.b.failed();
    assert!((2..=4).contains(&fb.len()), "{fb:?}");
    assert!(fb.iter().all(|f| f.1 == codes::IKE_AUTH_FAIL), "{fb:?}");
    assert!(w.a.mm_up().is_empty() && w.b.mm_up().is_empty());
}
