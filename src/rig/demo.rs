//! `espd demo`: the main job. Builds the rig, starts both gateways, sends UDP and TCP both ways
//! (IPv4 and IPv6 inner traffic) with live per-second throughput, checks every byte at the
//! sinks, captures the wire between the gateways, prints a short report and tears everything
//! down (also on error: the rig is an RAII guard, the children are stopped by PID).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::ike::{IkeRig, Peer, StrongSwan};
use super::procs::{Proc, capture_wan, count_wire, start_gateways};
use super::{Rig, RigSpec};

/// The demo's IKE: quick modes of 10 s rekeyed 6 s before they end (every ~4 s), main modes
/// of 10 s without reauthentication: gw-a's (the initiator's) ends by lifetime (13885
/// `lifetime`) and its DELETE reaches gw-b (13885 `peer_delete`), which as responder would
/// end it only a second later; the next rekey sets up a new main mode first.
///
/// With strongSwan as gw-b the main mode is strongSwan's to end: it reauthenticates after
/// 6 s (a new main mode adopts the children) and deletes the old one (13885 `peer_delete` on
/// gw-a). espd's own lifetime is not used there: strongSwan removes an IKEv1 SA's children
/// with it, so a lifetime end without reauthentication would stop the traffic.
fn demo_ike(peer: Peer) -> IkeRig {
    let mut i = IkeRig::new(peer);
    i.mm_lifetime_s = if peer == Peer::StrongSwan { 3_600 } else { 10 };
    i.qm_lifetime_s = 10;
    i.rekey_margin_s = 6;
    i.sw_rekey_s = 6;
    i.sw_life_s = 12;
    i.sw_reauth_s = 6;
    i
}

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub seconds: u64,
    pub xdp_mode: &'static str,
    pub queues: u32,
    /// UDP packets per second per flow.
    pub pps: u64,
    /// Interval between rekeys (keyer only).
    pub rekey_ms: u64,
    /// Keys from the built-in IKE with this gateway B (`None`: the keyer).
    pub ike: Option<Peer>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            seconds: 5,
            xdp_mode: "native",
            queues: 2,
            pps: 20_000,
            rekey_ms: 500,
            ike: Some(Peer::Espd),
        }
    }
}

/// The demo.
pub fn run(opts: &DemoOptions) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?.to_string_lossy().to_string();
    println!(
        "== building the rig: host-a ─ gw-a ═ ESP ═ gw-b ─ host-b ({} queues, {} XDP)",
        opts.queues, opts.xdp_mode
    );
    let mut spec = RigSpec {
        queues: opts.queues,
        xdp_mode: opts.xdp_mode,
        ike: opts.ike.map(demo_ike),
        ..Default::default()
    };
    if opts.ike == Some(Peer::StrongSwan) {
        // charon runs with a private /run: its files (and the vici socket) live elsewhere.
        spec.dir = std::env::temp_dir().join(format!("espd-demo-{}", std::process::id()));
    }
    let rig = Rig::up(spec)?;
    // Headers are enough to count what crosses the wire.
    let (mut capture, pcap) = capture_wan(&rig, Some(128), None)?;
    let strongswan = opts.ike == Some(Peer::StrongSwan);
    let (mut gw_a, mut gw_b, swan) = if strongswan {
        let sw = StrongSwan::start(rig.dir())?;
        let cfg = rig.gw_a.to_string_lossy().to_string();
        let a = Proc::spawn("gw-a", "gw-a", &[&exe, "run", "--config", &cfg, "--stats"])?;
        (a, None, Some(sw))
    } else {
        let (a, b) = start_gateways(&rig, &exe, &["--stats"])?;
        (a, Some(b), None)
    };
    let la = gw_a.lines();
    let lb = gw_b.as_mut().map(|b| b.lines());
    // Events of both gateways, printed live (IKE, 13885, rekeys).
    let (ev_tx, ev_rx) = mpsc::channel::<(char, serde_json::Value)>();
    for me in ['a', 'b'] {
        if me == 'b' && strongswan {
            continue;
        }
        let mut sub = super::ike::subscribe(&rig.socket(me), Duration::from_secs(10))?;
        let tx = ev_tx.clone();
        std::thread::spawn(move || {
            while let Ok(e) = sub.read_line() {
                if tx.send((me, e)).is_err() {
                    break;
                }
            }
        });
    }
    let mut mm_events: Vec<(char, serde_json::Value)> = Vec::new();
    let mut rekeys_seen = 0u64;
    let mut qm_rekeys = 0u64;
    let mut show = |me: char, e: serde_json::Value| match e["event"].as_str() {
        Some("mm_expired") => {
            println!(
                "       gw-{me}: {} {} ({}) cause={} peer={} children={}",
                e["code"],
                e["symbol"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or(""),
                e["cause"],
                e["peer"],
                children(&e["children"])
            );
            mm_events.push((me, e));
        }
        Some("mm_up") => println!(
            "       gw-{me}: IKE main mode up {}/{} {} lifetime {} s{}",
            e["icookie"].as_str().unwrap_or(""),
            e["rcookie"].as_str().unwrap_or(""),
            e["proposal"].as_str().unwrap_or(""),
            e["lifetime_s"],
            if e["initiator"] == true {
                " (initiator)"
            } else {
                ""
            }
        ),
        Some("qm_up") => {
            if e["rekey"] == true {
                qm_rekeys += 1;
            }
            println!(
                "       gw-{me}: IKE quick mode {} in {} out {} ({} ↔ {})",
                if e["rekey"] == true { "rekey" } else { "up" },
                e["inbound_spi"].as_str().unwrap_or(""),
                e["outbound_spi"].as_str().unwrap_or(""),
                e["local_ts"].as_str().unwrap_or(""),
                e["remote_ts"].as_str().unwrap_or("")
            );
        }
        Some("mm_failed" | "qm_failed" | "mm_dead") => println!(
            "       gw-{me}: {} {} {}",
            e["event"].as_str().unwrap_or(""),
            e["code"],
            e["reason"].as_str().unwrap_or("")
        ),
        Some("rekeyed") if me == 'a' => rekeys_seen += 1,
        _ => {}
    };
    if opts.ike.is_some() {
        let t = Instant::now();
        while !super::ike::tunnel_up(&rig.socket('a')) {
            while let Ok((me, e)) = ev_rx.try_recv() {
                show(me, e);
            }
            if t.elapsed() > Duration::from_secs(20) {
                anyhow::bail!("the built-in IKE did not set the tunnel up within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!(
        "== gateways up (gw-a pid {}, gw-b {}); traffic for {} s",
        gw_a.pid(),
        gw_b.as_ref()
            .map_or("strongSwan".to_string(), |b| format!("pid {}", b.pid())),
        opts.seconds
    );

    let n = opts.pps * opts.seconds;
    let expect = n.to_string();
    let pps = opts.pps.to_string();
    // strongSwan's kernel-libipsec forwards a few thousand packets per second: smaller TCP
    // transfers, so that they do not crowd the UDP flows out of its queues.
    let tcp_bytes: u64 = if strongswan { 2 << 20 } else { 20 << 20 };
    let tb = tcp_bytes.to_string();
    let sinks = vec![
        (
            "UDP  IPv4 a→b 512 B",
            Proc::spawn(
                "sink1",
                "host-b",
                &[
                    &exe,
                    "traffic",
                    "udp-recv",
                    "--bind",
                    "0.0.0.0:5001",
                    "--expect",
                    &expect,
                ],
            )?,
        ),
        (
            if strongswan {
                "UDP  IPv4 b→a 1200 B"
            } else {
                "UDP  IPv6 b→a 1200 B"
            },
            Proc::spawn(
                "sink2",
                "host-a",
                &[
                    &exe,
                    "traffic",
                    "udp-recv",
                    "--bind",
                    if strongswan {
                        "0.0.0.0:5002"
                    } else {
                        "[::]:5002"
                    },
                    "--expect",
                    &expect,
                ],
            )?,
        ),
        (
            "TCP  IPv4 a→b",
            Proc::spawn(
                "sink3",
                "host-b",
                &[
                    &exe,
                    "traffic",
                    "tcp-recv",
                    "--bind",
                    "0.0.0.0:6001",
                    "--expect",
                    &tb,
                    "--timeout",
                    "30",
                ],
            )?,
        ),
        (
            if strongswan {
                "TCP  IPv4 b→a"
            } else {
                "TCP  IPv6 b→a"
            },
            Proc::spawn(
                "sink4",
                "host-a",
                &[
                    &exe,
                    "traffic",
                    "tcp-recv",
                    "--bind",
                    if strongswan {
                        "0.0.0.0:6002"
                    } else {
                        "[::]:6002"
                    },
                    "--expect",
                    &tb,
                    "--timeout",
                    "30",
                ],
            )?,
        ),
    ];
    std::thread::sleep(Duration::from_millis(300));
    let senders = vec![
        Proc::spawn(
            "src1",
            "host-a",
            &[
                &exe,
                "traffic",
                "udp-send",
                "--dst",
                "198.51.100.2:5001",
                "--count",
                &expect,
                "--size",
                "512",
                "--pps",
                &pps,
            ],
        )?,
        Proc::spawn(
            "src2",
            "host-b",
            &[
                &exe,
                "traffic",
                "udp-send",
                "--dst",
                if strongswan {
                    "192.0.2.2:5002"
                } else {
                    "[fd00:a::2]:5002"
                },
                "--count",
                &expect,
                "--size",
                "1200",
                "--pps",
                &pps,
            ],
        )?,
        Proc::spawn(
            "src3",
            "host-a",
            &[
                &exe,
                "traffic",
                "tcp-send",
                "--dst",
                "198.51.100.2:6001",
                "--bytes",
                &tb,
            ],
        )?,
        Proc::spawn(
            "src4",
            "host-b",
            &[
                &exe,
                "traffic",
                "tcp-send",
                "--dst",
                if strongswan {
                    "192.0.2.2:6002"
                } else {
                    "[fd00:a::2]:6002"
                },
                "--bytes",
                &tb,
            ],
        )?,
    ];
    // Without the built-in IKE, the keyer plays the IKE daemon: rekeys every `rekey_ms`, one
    // main mode that expires (13885, lifetime) and one that the peer deletes (13885,
    // peer_delete).
    let stop_keyer = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keyer = opts.ike.is_none().then(|| {
        let (a, b, stop, every) = (
            rig.socket('a'),
            rig.socket('b'),
            stop_keyer.clone(),
            opts.rekey_ms,
        );
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut k = super::keyer::Keyer::for_rig(&a, &b)?;
            k.main_mode(2)?;
            let mut step = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(every));
                k.rekey()?;
                step += 1;
                if step == 3 {
                    let (ic, rc) = k.main_mode(3600)?;
                    std::thread::sleep(Duration::from_millis(200));
                    k.main_mode_delete(&ic, &rc)?;
                }
            }
            Ok(k.rekeys)
        })
    });
    println!(
        "{:>5}  {:>12} {:>12}   {:>12} {:>12}",
        "t (s)", "gw-a rx/s", "gw-a tx/s", "gw-b rx/s", "gw-b tx/s"
    );
    let start = Instant::now();
    let deadline = Duration::from_secs(opts.seconds + 20);
    let mut senders_left = senders;
    while start.elapsed() < deadline {
        let a: Option<serde_json::Value> = la
            .recv_timeout(Duration::from_millis(1200))
            .ok()
            .and_then(|l| serde_json::from_str(&l).ok());
        let b: Option<serde_json::Value> = match &lb {
            Some(lb) => lb
                .recv_timeout(Duration::from_millis(200))
                .ok()
                .and_then(|l| serde_json::from_str(&l).ok()),
            None => Some(serde_json::Value::Null),
        };
        if let (Some(a), Some(b)) = (a, b) {
            println!(
                "{:>5.0}  {:>12.0} {:>12.0}   {:>12.0} {:>12.0}",
                start.elapsed().as_secs_f64(),
                a["rx_pps"].as_f64().unwrap_or(0.0),
                a["tx_pps"].as_f64().unwrap_or(0.0),
                b["rx_pps"].as_f64().unwrap_or(0.0),
                b["tx_pps"].as_f64().unwrap_or(0.0)
            );
        }
        while let Ok((me, e)) = ev_rx.try_recv() {
            show(me, e);
        }
        senders_left.retain_mut(|s| s.running());
        if senders_left.is_empty() {
            break;
        }
    }
    drop(senders_left);
    stop_keyer.store(true, std::sync::atomic::Ordering::Release);
    let rekeys = match keyer {
        Some(k) => k.join().map_err(|_| anyhow::anyhow!("keyer panicked"))??,
        None => 0,
    };
    std::thread::sleep(Duration::from_millis(100));
    while let Ok((me, e)) = ev_rx.try_recv() {
        show(me, e);
    }
    let mut results = Vec::new();
    for (label, s) in sinks {
        let out = s.wait_output(Duration::from_secs(8)).unwrap_or_default();
        results.push((
            label,
            serde_json::from_str::<serde_json::Value>(out.trim()).unwrap_or_default(),
        ));
    }
    gw_a.stop(Duration::from_secs(5));
    if let Some(b) = gw_b.as_mut() {
        b.stop(Duration::from_secs(5));
    }
    drop(swan);
    let summary = |rx: mpsc::Receiver<String>| -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l)
                && v.get("workers").is_some()
            {
                last = v;
            }
        }
        last
    };
    let (sa, sb) = (summary(la), lb.map_or(serde_json::Value::Null, summary));
    std::thread::sleep(Duration::from_millis(300));
    capture.stop(Duration::from_secs(2));
    let wire = count_wire(&pcap);

    println!("\n== report");
    let mut all_ok = true;
    for (label, r) in &results {
        let ok = if r.get("unique").is_some() {
            r["lost"] == 0 && r["corrupt"] == 0 && r["duplicates"] == 0
        } else {
            r["ok"] == true
        };
        all_ok &= ok;
        if r.get("unique").is_some() {
            println!(
                "  {label:22} {:>8} packets received of {expect}, {} lost, {} corrupt, {} duplicated  {}",
                r["unique"],
                r["lost"],
                r["corrupt"],
                r["duplicates"],
                if ok { "ok" } else { "FAILED" }
            );
        } else {
            let mbps = r["bytes"].as_f64().unwrap_or(0.0) * 8.0
                / r["seconds"].as_f64().unwrap_or(1.0).max(1e-9)
                / 1e6;
            println!(
                "  {label:22} {:>8} bytes, every byte checked, {mbps:.0} Mbit/s  {}",
                r["bytes"],
                if ok { "ok" } else { "FAILED" }
            );
        }
    }
    for (name, s) in [("gw-a", &sa), ("gw-b", &sb)] {
        if s.is_null() {
            continue;
        }
        println!(
            "  {name}: {} packets in, {} out, {} bytes out; drops by code {}; xdp passed to kernel {}",
            s["rx_packets"],
            s["tx_packets"],
            s["tx_bytes"],
            s["drops_by_code"],
            s["xdp_plain"]["passed"].as_u64().unwrap_or(0)
                + s["xdp_cipher"]["passed"].as_u64().unwrap_or(0)
        );
    }
    println!(
        "  wire between the gateways (tcpdump in wan): {} ESP, {} ESP-in-UDP, {} cleartext with LAN addresses, {} gateways' own (neighbour probes), {} non-IP (ARP)",
        wire.esp, wire.esp_in_udp, wire.cleartext_lan, wire.gateway_own, wire.non_ip
    );
    all_ok &= wire.cleartext_lan == 0;
    let causes: Vec<String> = mm_events
        .iter()
        .map(|(me, e)| format!("gw-{me} {}", e["cause"].as_str().unwrap_or("?")))
        .collect();
    let has = |c: &str| mm_events.iter().any(|(_, e)| e["cause"] == c);
    if opts.ike.is_some() {
        println!(
            "  IKE: {qm_rekeys} quick-mode rekeys (make-before-break) during the traffic; {} x 13885 ERROR_IPSEC_IKE_MM_EXPIRED ({})",
            mm_events.len(),
            causes.join(", ")
        );
        all_ok &= qm_rekeys > 0 && has("peer_delete") && (strongswan || has("lifetime"));
    } else {
        println!(
            "  control: {rekeys} make-before-break rekeys of both directions during the traffic ({rekeys_seen} seen on gw-a's event stream); {} x 13885 ERROR_IPSEC_IKE_MM_EXPIRED (causes: {})",
            mm_events.len(),
            causes.join(", ")
        );
        all_ok &= mm_events.iter().filter(|(me, _)| *me == 'a').count() == 2 && rekeys > 0;
    }
    println!("== tearing the rig down");
    drop(rig);
    if !all_ok {
        anyhow::bail!("some traffic did not arrive intact, or an expected event is missing");
    }
    Ok(())
}

/// The children of a 13885 event, each with its direction: `[in 0x00040002, out 0x00040002]`.
fn children(v: &serde_json::Value) -> String {
    let list: Vec<String> = v
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let d = match c["direction"].as_str() {
                Some("inbound") => "in",
                Some("outbound") => "out",
                _ => "?",
            };
            format!("{d} {}", c["spi"].as_str().unwrap_or("?"))
        })
        .collect();
    format!("[{}]", list.join(", "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn mm_event_children_are_printed_with_their_direction() {
        let e = serde_json::json!([
            {"spi": "0x00040002", "direction": "inbound"},
            {"spi": "0x00040002", "direction": "outbound"}
        ]);
        assert_eq!(super::children(&e), "[in 0x00040002, out 0x00040002]");
    }
}
