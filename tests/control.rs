//! The control thread in memory through its typed API (no sockets, no root, no JSON requests;
//! the wire protocol is `tests/protocol.rs`): typed errors naming their field, expiry with a
//! mock clock, 13885 for both causes, 13895 on hard expiry, and 10,000 make-before-break
//! rekeys across worker threads without losing a packet.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use crossbeam_queue::ArrayQueue;
use espd::config::{Config, NewPolicy, NewSa};
use espd::control::types::{Child, MainMode, MmCause};
use espd::control::{Control, ControlError, Rekey, Rekeyed};
use espd::datapath::mem::Frame;
use espd::datapath::{Action, CoreStats, DropReason, Pipeline, SaEvent};
use espd::sa::Direction::{Inbound, Outbound};
use espd::sa::Limits;
use serde_json::{Value, json};

const S: u64 = 1_000_000_000;

struct Side {
    ctl: Control,
    dp: Arc<espd::datapath::pipeline::Dataplane>,
    events: Arc<ArrayQueue<SaEvent>>,
    stats: Arc<Vec<CoreStats>>,
    pcfg: espd::datapath::PipelineConfig,
    sub: std::sync::mpsc::Receiver<String>,
}

fn side(name: &str, extra: &str) -> Side {
    let text = example_text(name).replace("workers = 1", "workers = 2") + extra;
    let cfg = Config::parse(std::path::Path::new(name), &text).unwrap();
    let dp = Arc::new(cfg.build_dataplane(1).unwrap());
    let mut ctl = Control::new(&cfg, dp.clone());
    let (tx, sub) = std::sync::mpsc::sync_channel(100_000);
    ctl.subscribe(tx);
    Side {
        ctl,
        dp,
        events: Arc::new(ArrayQueue::new(1024)),
        stats: Arc::new((0..2).map(|_| CoreStats::default()).collect()),
        pcfg: cfg.pipeline_config(),
        sub,
    }
}

impl Side {
    fn run(&self, core: usize, pkts: &[Vec<u8>], now: u64, out: bool) -> Vec<(Action, Vec<u8>)> {
        let mut p = Pipeline::new(&self.dp, core, &self.stats[core], &self.events, self.pcfg);
        let mut frames: Vec<Frame> = pkts.iter().map(|b| Frame::from_packet(b)).collect();
        let mut acts = vec![Action::Punt; frames.len()];
        for (f, a) in frames.chunks_mut(64).zip(acts.chunks_mut(64)) {
            if out {
                p.outbound(f, now, a)
            } else {
                p.inbound(f, now, a)
            }
        }
        frames
            .iter()
            .zip(acts)
            .map(|(f, a)| (a, f.bytes().to_vec()))
            .collect()
    }
    fn events(&self) -> Vec<Value> {
        self.sub
            .try_iter()
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect()
    }
}

fn pkt(n: u8) -> Vec<u8> {
    frame(
        "192.0.2.10",
        "198.51.100.20",
        17,
        1000,
        2000,
        &payload(100, n),
    )
}

/// Every refusal of the control API is a typed error that names its field (the texts on the
/// wire are pinned in `tests/protocol.rs`), and a refused call changes nothing. After all of
/// them the control thread still serves: tunnels and policies can be added at run time.
#[test]
fn typed_errors_name_their_field_and_change_nothing() {
    use espd::sa::sa::SaError;
    let mut a = side("gw-a.toml", "");
    let fresh = "40112233445566778899aabbccddeeff01020304";
    let refused = |r: Result<u32, ControlError>| r.expect_err("refused");
    let e = refused(a.ctl.install_sa(&new_sa("to-b", Inbound, 0xb001, fresh), 1));
    assert_eq!(
        e,
        ControlError::AlreadyInstalled {
            spi: 0xb001,
            direction: Inbound
        }
    );
    assert_eq!(e.field(), "spi");
    let e = refused(a.ctl.install_sa(&new_sa("nope", Inbound, 4096, fresh), 1));
    assert_eq!(
        e,
        ControlError::NoTunnel {
            field: "tunnel",
            name: "nope".into()
        }
    );
    assert_eq!(e.field(), "tunnel");
    let e = refused(a.ctl.install_sa(&new_sa("to-b", Inbound, 7, fresh), 1));
    assert_eq!(e, ControlError::Sa(SaError::ReservedSpi(7)));
    assert_eq!(e.field(), "spi");
    let e = refused(a.ctl.install_sa(&new_sa("to-b", Inbound, 4096, "0011"), 1));
    assert_eq!(e, ControlError::Sa(SaError::KeyLength(2)));
    assert_eq!(e.field(), "key");
    // A second outbound SA for a tunnel is the job of rekey.
    let e = refused(
        a.ctl
            .install_sa(&new_sa("to-b", Outbound, 0xa002, fresh), 1),
    );
    assert_eq!(e, ControlError::OutboundInUse { spi: 0xa001 });
    assert_eq!(e.field(), "tunnel");
    let e = refused(a.ctl.update_sa(&new_sa("to-b", Inbound, 0x9999, fresh), 1));
    assert_eq!(
        e,
        ControlError::NotInstalled {
            spi: 0x9999,
            direction: Inbound
        }
    );
    let e = a.ctl.remove_sa(0x9999, Inbound, 1).expect_err("refused");
    assert_eq!(
        e,
        ControlError::NotInstalled {
            spi: 0x9999,
            direction: Inbound
        }
    );
    assert_eq!(e.field(), "spi");
    // 0xb001 is installed inbound only.
    let e = a.ctl.sa(0xb001, Outbound, 1).expect_err("refused");
    assert_eq!(
        e,
        ControlError::NotInstalled {
            spi: 0xb001,
            direction: Outbound
        }
    );
    let e = a
        .ctl
        .main_mode_delete(1, 2, MmCause::PeerDelete, 1)
        .expect_err("refused");
    assert_eq!(
        e,
        ControlError::NoMainMode {
            icookie: 1,
            rcookie: 2
        }
    );
    assert_eq!(e.field(), "icookie/rcookie");
    let mm = MainMode {
        icookie: 1,
        rcookie: 2,
        peer: "203.0.113.2".parse().unwrap(),
        lifetime_s: 0,
        lifetime_kb: None,
        children: vec![],
    };
    let e = a.ctl.main_mode_up(mm, 1).expect_err("refused");
    assert_eq!(e.field(), "lifetime_s");
    let e = refused(a.ctl.add_tunnel(new_tunnel("t2", "203.0.113.1", "fd00::9")));
    assert_eq!(
        e,
        ControlError::invalid("remote", "must be the same address family as local")
    );
    let e = refused(
        a.ctl
            .add_tunnel(new_tunnel("to-b", "203.0.113.1", "203.0.113.9")),
    );
    assert_eq!(e, ControlError::TunnelExists("to-b".into()));
    assert_eq!(e.field(), "name");
    let e = a.ctl.remove_tunnel("nope").expect_err("refused");
    assert_eq!(
        e,
        ControlError::NoTunnel {
            field: "name",
            name: "nope".into()
        }
    );
    let e = a
        .ctl
        .add_policy(&new_policy(
            "192.0.2.0/24",
            "198.51.100.0/24",
            protect("nope"),
        ))
        .expect_err("refused");
    assert_eq!(e, ControlError::invalid("tunnel", "no tunnel named `nope`"));
    let mut ports = new_policy(
        "192.0.2.0/24",
        "198.51.100.0/24",
        espd::config::NewAction::Bypass,
    );
    ports.selector.dst_ports = "80".parse().unwrap();
    let e = a.ctl.add_policy(&ports).expect_err("refused");
    assert_eq!(
        e,
        ControlError::invalid("protocol", "port ranges need protocol tcp or udp")
    );
    let e = a.ctl.remove_policy(2).expect_err("refused");
    assert_eq!(e.field(), "index");
    let rekey = |tunnel: &str, outbound, retire_inbound| Rekey {
        tunnel: tunnel.into(),
        outbound,
        inbound: None,
        retire_inbound,
        grace_ms: None,
    };
    let e = a
        .ctl
        .rekey(rekey("to-b", new_sa("to-b", Inbound, 4096, fresh), None), 1)
        .expect_err("refused");
    assert_eq!(
        e,
        ControlError::invalid("outbound", "must be an outbound SA of the same tunnel")
    );
    let e = a
        .ctl
        .rekey(
            rekey("nope", new_sa("nope", Outbound, 4096, fresh), None),
            1,
        )
        .expect_err("refused");
    assert_eq!(
        e,
        ControlError::NoTunnel {
            field: "tunnel",
            name: "nope".into()
        }
    );
    let e = a
        .ctl
        .rekey(
            rekey("to-b", new_sa("to-b", Outbound, 4096, fresh), Some(0x9999)),
            1,
        )
        .expect_err("refused");
    assert_eq!(e.field(), "retire_inbound");
    // Nothing changed: no SA, tunnel, policy, main mode, counter or event.
    let s = a.ctl.stats();
    assert_eq!((s.sas, s.tunnels, s.policies, s.main_modes), (2, 1, 2, 0));
    assert_eq!(
        (
            s.control.rekeys,
            s.control.sas_installed,
            s.control.sas_removed
        ),
        (0, 0, 0)
    );
    assert_eq!(a.ctl.sa_list(None, 1000, 1).total, 2);
    assert_eq!(
        a.ctl.sa(0xa001, Outbound, 1).map(|i| i.spi),
        Ok(0xa001),
        "the tunnel keeps its outbound SA"
    );
    assert!(a.events().is_empty());

    // Still serving; tunnels and policies can be added at run time.
    assert_eq!(
        a.ctl
            .add_tunnel(new_tunnel("t2", "203.0.113.1", "203.0.113.9")),
        Ok(1)
    );
    assert_eq!(
        a.ctl.add_policy(&new_policy(
            "192.0.2.0/24",
            "203.0.113.128/25",
            protect("t2")
        )),
        Ok(2)
    );
    assert_eq!((a.ctl.tunnels().len(), a.ctl.policies().len()), (2, 3));
    assert_eq!(
        a.ctl.policies()[2].action,
        espd::sa::PolicyAction::Protect(1)
    );
    let spi = a.ctl.allocate_spi().unwrap();
    let key = "20112233445566778899aabbccddeeff01020304";
    assert_eq!(
        a.ctl.install_sa(&new_sa("to-b", Inbound, spi, key), 1),
        Ok(spi)
    );
    let got = a.ctl.sa(spi, Inbound, 1).unwrap();
    assert_eq!(
        (got.spi, got.direction, got.tunnel.as_deref(), got.key_bits),
        (spi, Inbound, Some("to-b"), 128)
    );
    assert_eq!(a.ctl.stats().control.sas_installed, 1);
}

#[test]
fn main_mode_13885_for_both_causes_and_children_keep_forwarding() {
    let mut a = side("gw-a.toml", "");
    let b = side("gw-b.toml", "");
    let mm = |icookie, rcookie, lifetime_s, children| MainMode {
        icookie,
        rcookie,
        peer: "203.0.113.2".parse().unwrap(),
        lifetime_s,
        lifetime_kb: None,
        children,
    };
    let children = vec![
        Child {
            spi: 0xa001,
            direction: Outbound,
        },
        Child {
            spi: 0xb001,
            direction: Inbound,
        },
    ];
    let r = a.ctl.main_mode_up(
        mm(0x1111_1111_1111_1111, 0x2222_2222_2222_2222, 10, children),
        S,
    );
    assert_eq!(r, Ok(()));
    assert_eq!(a.ctl.main_mode_up(mm(0x33, 0x44, 1000, vec![]), S), Ok(()));
    assert_eq!(a.ctl.main_mode_up(mm(0x55, 0x66, 1000, vec![]), S), Ok(()));
    let listed: Vec<(u64, f64)> = a
        .ctl
        .main_modes(S)
        .iter()
        .map(|m| (m.record.icookie, m.expires_in_s))
        .collect();
    assert_eq!(
        listed,
        vec![
            (0x1111_1111_1111_1111, 10.0),
            (0x33, 1000.0),
            (0x55, 1000.0)
        ]
    );
    a.ctl.tick(5 * S, &a.events.clone());
    assert!(a.events().is_empty(), "nothing expired yet");
    // Lifetime: 10 s after registration at t=1 s.
    a.ctl.tick(11 * S, &a.events.clone());
    let ev = a.events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    let e = &ev[0];
    assert_eq!(e["event"], "mm_expired");
    assert_eq!(e["code"], 13885);
    assert_eq!(e["hex"], "0x363D");
    assert_eq!(e["symbol"], "ERROR_IPSEC_IKE_MM_EXPIRED");
    assert_eq!(
        e["message"],
        "Main mode SA lifetime expired or peer sent a main mode delete."
    );
    assert_eq!(e["cause"], "lifetime");
    assert_eq!(e["peer"], "203.0.113.2");
    assert_eq!(
        (e["icookie"].as_str(), e["rcookie"].as_str()),
        (Some("1111111111111111"), Some("2222222222222222"))
    );
    assert_eq!(
        e["children"],
        json!([{"spi": "0x0000a001", "direction": "outbound"}, {"spi": "0x0000b001", "direction": "inbound"}])
    );
    // Peer delete, and INITIAL-CONTACT from a new main mode of the same peer.
    let gone = a
        .ctl
        .main_mode_delete(0x33, 0x44, MmCause::PeerDelete, 12 * S)
        .unwrap();
    assert_eq!((gone.icookie, gone.rcookie), (0x33, 0x44));
    let ev = a.events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0]["cause"].as_str(), ev[0]["code"].as_u64()),
        (Some("peer_delete"), Some(13885))
    );
    a.ctl
        .main_mode_delete(0x55, 0x66, MmCause::InitialContact, 12 * S)
        .unwrap();
    let ev = a.events();
    assert_eq!(
        (ev[0]["cause"].as_str(), ev[0]["icookie"].as_str()),
        (Some("initial_contact"), Some("0000000000000055"))
    );
    assert!(a.ctl.main_modes(12 * S).is_empty());
    // IKEv1: the child SAs keep forwarding.
    for (act, esp) in a.run(0, &[pkt(1), pkt(2)], 12 * S, true) {
        assert_eq!(act, Action::Tx);
        assert_eq!(b.run(0, &[esp], 12 * S, false)[0].0, Action::Tx);
    }
    let stats = a.ctl.stats();
    assert_eq!(stats.control.events_by_code.get(&13885), Some(&3));
    assert_eq!(stats.main_modes, 0);
}

#[test]
fn child_sa_expiry_soft_then_hard_13895_by_time_packets_and_bytes() {
    // Time (no traffic at all: the control thread's timers fire).
    let lifetime = |l: &str| format!("\n[sas.lifetime]\n{l}\n");
    let text = |l: &str| {
        let t = example_text("gw-a.toml");
        let (h, tail) = t.split_at(t.find("# B → A").unwrap());
        format!("{h}{}\n{tail}", lifetime(l))
    };
    for (limits, drive) in [
        ("soft_seconds = 10\nhard_seconds = 20", "time"),
        ("soft_packets = 3\nhard_packets = 5", "packets"),
        ("soft_bytes = 300\nhard_bytes = 600", "bytes"),
    ] {
        let cfg = Config::parse(std::path::Path::new("a.toml"), &text(limits)).unwrap();
        let dp = Arc::new(cfg.build_dataplane(1).unwrap());
        let mut ctl = Control::new(&cfg, dp.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1000);
        ctl.subscribe(tx);
        let events = ArrayQueue::new(64);
        let stats = CoreStats::default();
        let mut p = Pipeline::new(&dp, 0, &stats, &events, cfg.pipeline_config());
        let mut sent = Vec::new();
        for i in 0..8u64 {
            let now = if drive == "time" { (1 + 3 * i) * S } else { S };
            let mut f = [Frame::from_packet(&pkt(i as u8))];
            let mut a = [Action::Punt];
            p.outbound(&mut f, now, &mut a);
            sent.push(a[0]);
            ctl.tick(now, &events);
        }
        let ev: Vec<Value> = rx
            .try_iter()
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect();
        let names: Vec<&str> = ev.iter().map(|e| e["event"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            vec!["sa_soft_expired", "sa_hard_expired"],
            "{drive}: {ev:?}"
        );
        assert_eq!(ev[0]["action"], "rekey");
        assert_eq!(
            (ev[1]["code"].as_u64(), ev[1]["symbol"].as_str()),
            (Some(13895), Some("ERROR_IPSEC_IKE_QM_EXPIRED")),
            "{drive}"
        );
        assert_eq!(ev[1]["spi"], "0x0000a001");
        // After the hard limit the SA passes nothing: drops count as 13911.
        let passed = sent.iter().filter(|a| **a == Action::Tx).count();
        assert!(
            sent.iter()
                .skip(passed)
                .all(|a| *a == Action::Drop(DropReason::LifetimeExpired)),
            "{drive}: {sent:?}"
        );
        assert!(stats.drops_by_code()[&13911] >= 1, "{drive}");
        // It lingers (drops stay 13911), then the control thread removes it.
        ctl.tick(1000 * S, &events);
        let ev: Vec<Value> = rx
            .try_iter()
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect();
        assert_eq!(ev.last().unwrap()["event"], "sa_removed", "{drive}: {ev:?}");
    }
}

/// 10,000 rekeys of both directions while worker threads carry traffic both ways (A's
/// outbound worker → an in-order "wire" → B's inbound worker, and back): nothing lost, nothing
/// duplicated, no integrity or replay failure.
#[test]
fn ten_thousand_rekeys_across_worker_threads_lose_nothing() {
    let grace = "\n[control]\nrekey_grace_ms = 2000\n";
    let mut a = side("gw-a.toml", grace);
    let mut b = side("gw-b.toml", grace);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    let mut receivers = Vec::new();
    for (from, to, core, p) in [
        (&a, &b, 0usize, pkt(1)),
        (
            &b,
            &a,
            1usize,
            frame(
                "198.51.100.20",
                "192.0.2.10",
                17,
                2000,
                1000,
                &payload(100, 2),
            ),
        ),
    ] {
        let (wire_tx, wire_rx) = crossbeam_channel::bounded::<Vec<Frame>>(64);
        let (dpo, eo, so, po) = (
            from.dp.clone(),
            from.events.clone(),
            from.stats.clone(),
            from.pcfg,
        );
        let (stop, sent) = (stop.clone(), sent.clone());
        threads.push(std::thread::spawn(move || {
            let mut out = Pipeline::new(&dpo, core, &so[core], &eo, po);
            let mut acts = [Action::Punt; 32];
            while !stop.load(Ordering::Relaxed) {
                let mut frames: Vec<Frame> = (0..32).map(|_| Frame::from_packet(&p)).collect();
                out.outbound(&mut frames, espd::now_ns(), &mut acts);
                assert!(acts.iter().all(|a| *a == Action::Tx), "outbound: {acts:?}");
                sent.fetch_add(32, Ordering::Relaxed);
                wire_tx.send(frames).unwrap();
            }
        }));
        let (dpi, ei, si, pi) = (to.dp.clone(), to.events.clone(), to.stats.clone(), to.pcfg);
        receivers.push(std::thread::spawn(move || {
            let mut inn = Pipeline::new(&dpi, core, &si[core], &ei, pi);
            let mut acts = [Action::Punt; 32];
            let mut seen = std::collections::HashSet::new();
            let mut delivered = 0u64;
            for mut frames in wire_rx {
                for f in frames.iter() {
                    let b = f.bytes();
                    seen.insert((
                        u32::from_be_bytes(b[34..38].try_into().unwrap()),
                        u32::from_be_bytes(b[38..42].try_into().unwrap()),
                    ));
                }
                inn.inbound(&mut frames, espd::now_ns(), &mut acts);
                delivered += acts.iter().filter(|a| **a == Action::Tx).count() as u64;
            }
            (delivered, seen.len() as u64)
        }));
    }
    // The rekeyer: the keyer's protocol, in memory, through the typed API.
    let key = |i: u32, s: u8| format!("{:08x}{:02x}{}", i, s, "ab".repeat(15));
    let rekey = |tunnel: &str, spi: u32, key: &str, retire: u32| Rekey {
        tunnel: tunnel.into(),
        outbound: new_sa(tunnel, Outbound, spi, key),
        inbound: None,
        retire_inbound: Some(retire),
        grace_ms: None,
    };
    let (mut in_a, mut in_b) = (0xb001u32, 0xa001u32);
    let (mut out_a, mut out_b) = (0xa001u32, 0xb001u32);
    for i in 0..10_000u32 {
        let now = espd::now_ns();
        let spi_b = b.ctl.allocate_spi().unwrap();
        let spi_a = a.ctl.allocate_spi().unwrap();
        let r = b
            .ctl
            .install_sa(&new_sa("to-a", Inbound, spi_b, &key(i, 1)), now);
        assert_eq!(r, Ok(spi_b));
        let r = a
            .ctl
            .install_sa(&new_sa("to-b", Inbound, spi_a, &key(i, 2)), now);
        assert_eq!(r, Ok(spi_a));
        let r = a.ctl.rekey(rekey("to-b", spi_b, &key(i, 1), in_a), now);
        assert_eq!(
            r,
            Ok(Rekeyed {
                old_spi: Some(out_a),
                new_spi: spi_b
            })
        );
        let r = b.ctl.rekey(rekey("to-a", spi_a, &key(i, 2), in_b), now);
        assert_eq!(
            r,
            Ok(Rekeyed {
                old_spi: Some(out_b),
                new_spi: spi_a
            })
        );
        (in_a, in_b) = (spi_a, spi_b);
        (out_a, out_b) = (spi_b, spi_a);
        a.ctl.tick(now, &a.events.clone());
        b.ctl.tick(now, &b.events.clone());
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let (delivered, unique) = receivers
        .into_iter()
        .map(|r| r.join().unwrap())
        .fold((0, 0), |x, y| (x.0 + y.0, x.1 + y.1));
    let s = sent.load(Ordering::Relaxed);
    assert!(s > 10_000, "traffic flowed during the rekeys ({s} packets)");
    let drops: Vec<_> = a
        .stats
        .iter()
        .chain(b.stats.iter())
        .map(|st| st.drops_by_code())
        .collect();
    assert_eq!(
        delivered, s,
        "every packet sent was delivered; drops {drops:?}"
    );
    assert_eq!(unique, s, "no (SPI, sequence number) pair was sent twice");
    for st in a.stats.iter().chain(b.stats.iter()) {
        assert_eq!(
            st.drops_by_code().len(),
            0,
            "drops: {:?}",
            st.drops_by_code()
        );
    }
    assert_eq!(a.ctl.stats().control.rekeys, 10_000);
    assert_eq!(b.ctl.stats().control.rekeys, 10_000);
}

/// Time limits of idle SAs fire from the control thread's timers: limits counted from install
/// at their deadline, limits counted from first use only after a first use (then at
/// first use + limit, without further traffic), and never for an SA that was never used.
/// 30,000 use-time SAs make the control thread visit them over several passes.
#[test]
fn idle_sa_timers_by_install_and_by_first_use_across_30k_sas() {
    let mut s = side("gw-b.toml", "");
    let cap = s.dp.sas.capacity();
    assert!(cap >= 65536);
    let sas = (0..30_000u32).map(|i| {
        Ok(NewSa {
            limits: Limits {
                soft_use_seconds: Some(10),
                hard_use_seconds: Some(20),
                ..Limits::default()
            },
            ..new_sa(
                "to-a",
                Inbound,
                0x20000 + i,
                &format!("{:040x}", u128::from(i) + 1),
            )
        })
    });
    assert_eq!(s.ctl.install_sas(sas, S), Ok(30_000));
    let by_time = NewSa {
        limits: Limits {
            soft_seconds: Some(7),
            hard_seconds: Some(9),
            ..Limits::default()
        },
        ..new_sa(
            "to-a",
            Inbound,
            0x38000,
            "10112233445566778899aabbccddeeff01020304",
        )
    };
    assert_eq!(s.ctl.install_sa(&by_time, S), Ok(0x38000));
    // The last of the use-time SAs (by SPI) is used once at t = 5 s, the others never.
    let used = 0x20000 + 29_999;
    {
        let g = crossbeam_epoch::pin();
        let sa = s.dp.sas.inbound(used, &g).unwrap();
        assert_eq!(sa.lifetime.admit(0, 100, 5 * S), espd::sa::Admit::Pass);
    }
    let mut seen: Vec<(u64, String, String)> = Vec::new();
    // Ticks every 100 ms from 1 s to 60 s, no traffic.
    for i in 10..600u64 {
        let now = i * S / 10;
        s.ctl.tick(now, &s.events);
        for e in s.events() {
            let name = e["event"].as_str().unwrap().to_string();
            if name.starts_with("sa_") && name.ends_with("expired") {
                seen.push((now, name, e["spi"].as_str().unwrap().to_string()));
            }
        }
    }
    let at = |name: &str, spi: &str| {
        seen.iter()
            .filter(|(_, n, s)| n == name && s == spi)
            .map(|(t, _, _)| *t)
            .collect::<Vec<_>>()
    };
    let by_install = "0x00038000";
    let by_use = format!("0x{used:08x}");
    // Within one 100 ms timer pass of the deadline, exactly once.
    let near = |t: &[u64], want: u64| t.len() == 1 && t[0] >= want && t[0] <= want + S / 10;
    // Installed at 1 s: 7 and 9 s later.
    assert!(near(&at("sa_soft_expired", by_install), 8 * S), "{seen:?}");
    assert!(near(&at("sa_hard_expired", by_install), 10 * S), "{seen:?}");
    assert!(near(&at("sa_soft_expired", &by_use), 15 * S), "{seen:?}");
    assert!(near(&at("sa_hard_expired", &by_use), 25 * S), "{seen:?}");
    assert_eq!(
        seen.len(),
        4,
        "unused SAs never expire by use time: {seen:?}"
    );
}

/// `add_policies` (`policy_add_batch`): 10,000 host policies in one SPD rebuild; the SPD is then indexed and
/// packets to those hosts are protected while others still meet the default; a bad item
/// names its position and field and adds nothing.
#[test]
fn policy_add_batch_ten_thousand_hosts() {
    let mut a = side("gw-a.toml", "");
    let host = |i: u32| format!("fd00:c::{:x}", i + 1);
    let policies: Vec<NewPolicy> = (0..10_000)
        .map(|i| new_policy("fd00:a::/64", &format!("{}/128", host(i)), protect("to-b")))
        .collect();
    let n0 = a.ctl.policies().len();
    assert_eq!(a.ctl.add_policies(&policies), Ok(n0));
    assert_eq!(a.ctl.policies().len(), n0 + 10_000);
    let send = |a: &Side, dst: &str| {
        let f = frame("fd00:a::10", dst, 17, 1000, 2000, &payload(64, 1));
        a.run(0, &[f], S, true).remove(0).0
    };
    assert_eq!(send(&a, &host(0)), Action::Tx);
    assert_eq!(send(&a, &host(9_999)), Action::Tx);
    assert_eq!(
        send(&a, &host(10_000)),
        Action::Drop(DropReason::ClearText),
        "not in the batch: default policy"
    );
    let mut bad: Vec<NewPolicy> = (0..4)
        .map(|i| {
            new_policy(
                "fd00:a::/64",
                &format!("{}/128", host(20_000 + i)),
                protect("to-b"),
            )
        })
        .collect();
    bad[2].selector.dst = "198.51.100.0/24".parse().unwrap();
    let e = a.ctl.add_policies(&bad).expect_err("refused");
    assert_eq!(e.field(), "policies[2].dst", "{e}");
    assert_eq!(
        e,
        ControlError::invalid("dst", "must be the same address family as src")
            .within("policies[2]")
    );
    bad[2] = new_policy("fd00:a::/64", "fd00:c::ffff/128", protect("nope"));
    let e = a.ctl.add_policies(&bad).expect_err("refused");
    assert_eq!(e.field(), "policies[2].tunnel", "{e}");
    assert_eq!(
        a.ctl.policies().len(),
        n0 + 10_000,
        "a refused batch adds nothing"
    );
    assert_eq!(send(&a, &host(20_000)), Action::Drop(DropReason::ClearText));
}

/// Issue 11, defect 8: time limits and grace periods are bounded (seconds at most 2^32 - 1,
/// milliseconds at most 1000 times that) by the control API itself (the wire's texts:
/// `tests/protocol.rs`); nothing overflows, the error names the field and the allowed range,
/// and a refused rekey changes nothing.
#[test]
fn huge_times_in_control_calls_are_refused_with_the_range() {
    let mut a = side("gw-a.toml", "");
    let key = "30112233445566778899aabbccddeeff01020304";
    let sa = |limits: Limits| NewSa {
        limits,
        ..new_sa("to-b", Inbound, 0x4001, key)
    };
    let limit = |field: &str, v: u64| {
        let mut l = Limits::default();
        *match field {
            "hard_seconds" => &mut l.hard_seconds,
            "soft_seconds" => &mut l.soft_seconds,
            "hard_use_seconds" => &mut l.hard_use_seconds,
            "soft_use_seconds" => &mut l.soft_use_seconds,
            _ => unreachable!(),
        } = Some(v);
        l
    };
    // 18446744074 s * 10^9 wraps to 0.29 s in release builds and panics in debug builds.
    for (field, v) in [
        ("hard_seconds", 18_446_744_074u64),
        ("soft_seconds", 4_294_967_296),
        ("hard_use_seconds", u64::MAX),
        ("soft_use_seconds", 18_446_744_074),
    ] {
        let e = a
            .ctl
            .install_sa(&sa(limit(field, v)), S)
            .expect_err("refused");
        assert_eq!(
            e,
            ControlError::invalid(
                format!("lifetime.{field}"),
                "must be at most 4294967295 s (136 years)"
            )
        );
    }
    let e = a
        .ctl
        .install_sas([Ok(sa(limit("hard_seconds", 18_446_744_074)))], S)
        .expect_err("refused");
    assert_eq!(e.field(), "sas[0].lifetime.hard_seconds");
    assert!(
        matches!(
            e,
            ControlError::Batch {
                index: 0,
                installed: 0,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("sas[0].lifetime.hard_seconds: must be at most 4294967295 s"),
        "{e}"
    );
    // The largest allowed value works and is far away.
    assert_eq!(
        a.ctl
            .install_sa(&sa(limit("hard_seconds", 4_294_967_295)), S),
        Ok(0x4001)
    );
    a.ctl.tick(100 * S, &a.events.clone());
    let g = a.ctl.sa(0x4001, Inbound, 100 * S).unwrap();
    assert!(!g.expired, "{g:?}");
    assert_eq!(g.lifetime.hard_seconds, Some(4_294_967_295));
    assert!(a.events().is_empty());

    // rekey: grace_ms * 10^6 overflowed after the outbound SA had already been swapped.
    let rekey = |spi: u32, grace: u64| Rekey {
        tunnel: "to-b".into(),
        outbound: new_sa(
            "to-b",
            Outbound,
            spi,
            "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3",
        ),
        inbound: None,
        retire_inbound: Some(0xb001),
        grace_ms: Some(grace),
    };
    let e = a
        .ctl
        .rekey(rekey(0x5001, u64::MAX), 2 * S)
        .expect_err("refused");
    assert_eq!(
        e,
        ControlError::invalid("grace_ms", "must be at most 4294967295000 ms (136 years)")
    );
    assert_eq!(
        a.ctl.sa(0xa001, Outbound, 2 * S).map(|i| i.spi),
        Ok(0xa001),
        "the refused rekey left the outbound SA"
    );
    assert!(a.ctl.sa(0x5001, Outbound, 2 * S).is_err());
    assert_eq!(a.ctl.stats().control.rekeys, 0);
    assert_eq!(
        a.ctl.rekey(rekey(0x5001, 4_294_967_295_000), 2 * S),
        Ok(Rekeyed {
            old_spi: Some(0xa001),
            new_spi: 0x5001
        })
    );
    a.ctl.tick(3 * S, &a.events.clone());
    assert!(
        a.ctl.sa(0xb001, Inbound, 3 * S).is_ok(),
        "still in its grace period"
    );

    // main_mode_up: a kilobyte lifetime is multiplied by 1024 on every tick.
    let mm = |lifetime_s, lifetime_kb| MainMode {
        icookie: 1,
        rcookie: 2,
        peer: "203.0.113.2".parse().unwrap(),
        lifetime_s,
        lifetime_kb,
        children: vec![],
    };
    let e = a
        .ctl
        .main_mode_up(mm(10, Some(u64::MAX)), 3 * S)
        .expect_err("refused");
    assert_eq!(e.field(), "lifetime_kb");
    assert!(
        e.to_string()
            .starts_with("lifetime_kb: must be at most 18014398509481983"),
        "{e}"
    );
    let e = a
        .ctl
        .main_mode_up(mm(18_446_744_074, None), 3 * S)
        .expect_err("refused");
    assert_eq!(
        e,
        ControlError::invalid("lifetime_s", "must be at most 4294967295 s (136 years)")
    );
    assert!(a.ctl.main_modes(3 * S).is_empty());
    a.ctl.tick(4 * S, &a.events.clone());
}

/// Issue 11, defect 8, the config file: the same bounds, the error names the key.
#[test]
fn huge_times_in_the_config_file_are_refused_with_the_range() {
    let text = example_text("gw-a.toml");
    let parse = |t: String| Config::parse(std::path::Path::new("gw-a.toml"), &t);
    let with_sa_lifetime = text.replacen(
        "spi = 0x0000a001\n",
        "spi = 0x0000a001\nlifetime = { soft_seconds = 10, hard_seconds = 18446744074 }\n",
        1,
    );
    assert_ne!(with_sa_lifetime, text);
    let e = parse(with_sa_lifetime).expect_err("refused");
    assert_eq!(e.key, "sas[0].lifetime.hard_seconds", "{e}");
    assert_eq!(e.reason, "must be at most 4294967295 s (136 years)", "{e}");
    for key in ["rekey_grace_ms", "expired_linger_ms"] {
        let e = parse(format!("{text}\n[control]\n{key} = 9223372036854775807\n"))
            .expect_err("refused");
        assert_eq!(e.key, format!("control.{key}"), "{e}");
        assert_eq!(
            e.reason, "must be at most 4294967295000 ms (136 years)",
            "{e}"
        );
    }
    // The largest allowed values are accepted and the control thread takes them.
    let ok = parse(
        text.replacen(
            "spi = 0x0000a001\n",
            "spi = 0x0000a001\nlifetime = { hard_seconds = 4294967295 }\n",
            1,
        ) + "\n[control]\nrekey_grace_ms = 4294967295000\nexpired_linger_ms = 4294967295000\n",
    )
    .unwrap();
    let dp = Arc::new(ok.build_dataplane(1).unwrap());
    let mut ctl = Control::new(&ok, dp);
    ctl.tick(10 * S, &ArrayQueue::new(4));
}

/// Issue 11, defect 9: a metrics client that connects, sends its request and never reads
/// (tiny receive buffer, 40,000 SAs: a body of megabytes) must not keep the next scrape from
/// being answered, nor shutdown from returning.
#[test]
fn stalled_metrics_client_blocks_neither_the_next_scrape_nor_shutdown() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let mut s = side("gw-b.toml", "");
    let n = 40_000u32;
    let sas = (0..n).map(|i| {
        Ok(new_sa(
            "to-a",
            Inbound,
            0x20000 + i,
            &format!("{:040x}", u128::from(i) + 1),
        ))
    });
    assert_eq!(s.ctl.install_sas(sas, S), Ok(n as usize));
    let src = espd::control::metrics::MetricsSource {
        stats: s.stats.iter().map(|_| CoreStats::default()).collect(),
        dp: s.dp.clone(),
        counters: s.ctl.counters.clone(),
        sa_limit: 100_000,
    };
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = espd::control::metrics::serve_on(l, src, stop.clone()).unwrap();
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    espd::sys::set_rcvbuf(&stalled, 1);
    stalled.write_all(request).unwrap();

    // The next scrape gets the whole body (bounded waits: a failure, not a hang).
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(request).unwrap();
    let mut body = String::new();
    let got = c.read_to_string(&mut body);
    assert!(
        got.is_ok(),
        "next scrape: {got:?} after {} bytes",
        body.len()
    );
    assert!(
        body.starts_with("HTTP/1.1 200 OK"),
        "{}",
        &body[..body.len().min(200)]
    );
    // gw-b has one static SA each way.
    assert!(
        body.contains(&format!("\nespd_sas {}\n", n + 2)),
        "all SAs counted"
    );
    assert!(
        body.contains(
            "espd_sa_packets_total{spi=\"0x00029c3f\",direction=\"inbound\",tunnel=\"to-a\"} 0"
        ),
        "the last SA's series is there"
    );

    // Shutdown returns although the stalled client still holds its connection.
    stop.store(true, Ordering::Release);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(server.join().is_ok());
    });
    assert_eq!(
        done_rx.recv_timeout(Duration::from_secs(10)),
        Ok(true),
        "the metrics thread did not return after stop"
    );
    drop(stalled);
}

/// Issue 11, defect 12: an inbound and an outbound child SA with the same number are named
/// apart in `main_mode_up`, `main_modes` and the 13885 event (the demo printed
/// `children=["0x00040002","0x00040002"]`), and each counts once against `lifetime_kb`.
#[test]
fn main_mode_children_carry_their_direction() {
    let mut a = side("gw-a.toml", "");
    // gw-a sends on 0xa001; give it an inbound SA with the same number.
    let r = a.ctl.install_sa(
        &new_sa(
            "to-b",
            Inbound,
            0xa001,
            "0102030405060708090a0b0c0d0e0f1011121314",
        ),
        S,
    );
    assert_eq!(r, Ok(0xa001));
    // (A bare SPI, ambiguous, is refused on the wire: `tests/protocol.rs`.)
    let children = vec![
        Child {
            spi: 0xa001,
            direction: Inbound,
        },
        Child {
            spi: 0xa001,
            direction: Outbound,
        },
    ];
    let mm = MainMode {
        icookie: 1,
        rcookie: 2,
        peer: "203.0.113.2".parse().unwrap(),
        lifetime_s: 1000,
        lifetime_kb: Some(1),
        children: children.clone(),
    };
    assert_eq!(a.ctl.main_mode_up(mm, S), Ok(()));
    let both = json!([{"spi": "0x0000a001", "direction": "inbound"}, {"spi": "0x0000a001", "direction": "outbound"}]);
    let l = a.ctl.main_modes(S);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].record.children, children);
    // Outbound traffic only: its bytes count once, not once per child with that number.
    let bytes = |a: &Side| a.ctl.sa(0xa001, Outbound, S).unwrap().bytes;
    let mut n = 0u8;
    while bytes(&a) < 600 {
        n += 1;
        assert_eq!(a.run(0, &[pkt(n)], S, true)[0].0, Action::Tx);
    }
    assert!(bytes(&a) < 1024);
    a.ctl.tick(2 * S, &a.events.clone());
    assert!(a.events().is_empty(), "under 1 KiB, counted once");
    while bytes(&a) < 1024 {
        n += 1;
        assert_eq!(a.run(0, &[pkt(n)], S, true)[0].0, Action::Tx);
    }
    a.ctl.tick(3 * S, &a.events.clone());
    let ev = a.events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0]["event"].as_str(), ev[0]["cause"].as_str()),
        (Some("mm_expired"), Some("lifetime"))
    );
    assert_eq!(ev[0]["children"], both);
}

/// Soft and hard notifications that find the worker→control queue full are not lost: the
/// control thread delivers each exactly once later (rekey request, 13895, removal), also when
/// the queued copy of an event arrives after the control thread found it on its own.
#[test]
fn lifetime_events_survive_a_full_worker_queue() {
    let text = {
        let t = example_text("gw-a.toml");
        let (h, tail) = t.split_at(t.find("# B → A").unwrap());
        format!("{h}\n[sas.lifetime]\nsoft_packets = 3\nhard_packets = 5\n\n{tail}")
    };
    let dummy = SaEvent {
        spi: 0x999,
        direction: espd::sa::Direction::Inbound,
        kind: espd::datapath::SaEventKind::Soft,
    };
    // capacity 1: both pushes fail; capacity 2: the soft one is queued, the hard one lost.
    for capacity in [1, 2] {
        let cfg = Config::parse(std::path::Path::new("a.toml"), &text).unwrap();
        let dp = Arc::new(cfg.build_dataplane(1).unwrap());
        let mut ctl = Control::new(&cfg, dp.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1000);
        ctl.subscribe(tx);
        let events = ArrayQueue::new(capacity);
        events.push(dummy).unwrap();
        let stats = CoreStats::default();
        let mut p = Pipeline::new(&dp, 0, &stats, &events, cfg.pipeline_config());
        for i in 0..8u8 {
            let mut f = [Frame::from_packet(&pkt(i))];
            let mut a = [Action::Punt];
            p.outbound(&mut f, S, &mut a);
        }
        assert_eq!(stats.events_dropped.get(), 3 - capacity as u64);
        assert_eq!(events.pop(), Some(dummy));
        // The control thread first finds the lost events itself, then drains the queue.
        ctl.tick(S, &ArrayQueue::new(1));
        ctl.tick(S + 1, &events);
        for t in 2..10 {
            ctl.tick(t * S, &events);
        }
        let names = |rx: &std::sync::mpsc::Receiver<String>| -> Vec<(String, String)> {
            rx.try_iter()
                .map(|l| serde_json::from_str::<Value>(&l).unwrap())
                .map(|e| (e["event"].as_str().unwrap().into(), e["spi"].to_string()))
                .collect()
        };
        let got = names(&rx);
        let soft = ("sa_soft_expired".to_string(), "\"0x0000a001\"".to_string());
        let hard = ("sa_hard_expired".to_string(), "\"0x0000a001\"".to_string());
        assert_eq!(got, vec![soft, hard], "capacity {capacity}");
        // The hard expiry still leads to removal.
        ctl.tick(1000 * S, &events);
        let got = names(&rx);
        assert_eq!(got.last().unwrap().0, "sa_removed", "capacity {capacity}");
    }
}
