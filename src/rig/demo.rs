//! `espd demo`: the main job. Builds the rig, starts both gateways, sends UDP and TCP both ways
//! (IPv4 and IPv6 inner traffic) with live per-second throughput, checks every byte at the
//! sinks, captures the wire between the gateways, prints a short report and tears everything
//! down (also on error: the rig is an RAII guard, the children are stopped by PID).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::procs::{Proc, capture_wan, count_wire, start_gateways};
use super::{Rig, RigSpec};

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub seconds: u64,
    pub xdp_mode: &'static str,
    pub queues: u32,
    /// UDP packets per second per flow.
    pub pps: u64,
    /// Interval between rekeys.
    pub rekey_ms: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            seconds: 5,
            xdp_mode: "native",
            queues: 2,
            pps: 20_000,
            rekey_ms: 500,
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
    let rig = Rig::up(RigSpec {
        queues: opts.queues,
        xdp_mode: opts.xdp_mode,
        ..Default::default()
    })?;
    // Headers are enough to count what crosses the wire.
    let (mut capture, pcap) = capture_wan(&rig, Some(128), None)?;
    let (mut gw_a, mut gw_b) = start_gateways(&rig, &exe, &["--stats"])?;
    let (la, lb) = (gw_a.lines(), gw_b.lines());
    println!(
        "== gateways up (pids {} and {}); traffic for {} s",
        gw_a.pid(),
        gw_b.pid(),
        opts.seconds
    );

    let n = opts.pps * opts.seconds;
    let expect = n.to_string();
    let pps = opts.pps.to_string();
    let tcp_bytes: u64 = 20 << 20;
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
            "UDP  IPv6 b→a 1200 B",
            Proc::spawn(
                "sink2",
                "host-a",
                &[
                    &exe,
                    "traffic",
                    "udp-recv",
                    "--bind",
                    "[::]:5002",
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
            "TCP  IPv6 b→a",
            Proc::spawn(
                "sink4",
                "host-a",
                &[
                    &exe,
                    "traffic",
                    "tcp-recv",
                    "--bind",
                    "[::]:6002",
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
                "[fd00:a::2]:5002",
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
                "[fd00:a::2]:6002",
                "--bytes",
                &tb,
            ],
        )?,
    ];
    // The event stream of gw-a, printed live (13885 and rekeys).
    let mut sub = crate::control::api::Client::connect(&rig.socket('a'))?;
    sub.call(&serde_json::json!({"op": "subscribe"}))?;
    let (ev_tx, ev_rx) = mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        while let Ok(e) = sub.read_line() {
            if ev_tx.send(e).is_err() {
                break;
            }
        }
    });
    // The keyer plays the IKE daemon: rekeys every `rekey_ms`, one main mode that expires
    // (13885, lifetime) and one that the peer deletes (13885, peer_delete).
    let stop_keyer = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keyer = {
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
    };
    println!(
        "{:>5}  {:>12} {:>12}   {:>12} {:>12}",
        "t (s)", "gw-a rx/s", "gw-a tx/s", "gw-b rx/s", "gw-b tx/s"
    );
    let start = Instant::now();
    let deadline = Duration::from_secs(opts.seconds + 20);
    let mut senders_left = senders;
    let mut mm_events: Vec<serde_json::Value> = Vec::new();
    let mut rekeys_seen = 0u64;
    while start.elapsed() < deadline {
        let a: Option<serde_json::Value> = la
            .recv_timeout(Duration::from_millis(1200))
            .ok()
            .and_then(|l| serde_json::from_str(&l).ok());
        let b: Option<serde_json::Value> = lb
            .recv_timeout(Duration::from_millis(200))
            .ok()
            .and_then(|l| serde_json::from_str(&l).ok());
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
        while let Ok(e) = ev_rx.try_recv() {
            if e["event"] == "mm_expired" {
                println!(
                    "       event on gw-a: {} {} ({}) cause={} peer={} children={}",
                    e["code"],
                    e["symbol"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or(""),
                    e["cause"],
                    e["peer"],
                    children(&e["children"])
                );
                mm_events.push(e);
            } else if e["event"] == "rekeyed" {
                rekeys_seen += 1;
            }
        }
        senders_left.retain_mut(|s| s.running());
        if senders_left.is_empty() {
            break;
        }
    }
    drop(senders_left);
    stop_keyer.store(true, std::sync::atomic::Ordering::Release);
    let rekeys = keyer
        .join()
        .map_err(|_| anyhow::anyhow!("keyer panicked"))??;
    std::thread::sleep(Duration::from_millis(100));
    while let Ok(e) = ev_rx.try_recv() {
        if e["event"] == "mm_expired" {
            mm_events.push(e);
        } else if e["event"] == "rekeyed" {
            rekeys_seen += 1;
        }
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
    gw_b.stop(Duration::from_secs(5));
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
    let (sa, sb) = (summary(la), summary(lb));
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
    println!(
        "  control: {rekeys} make-before-break rekeys of both directions during the traffic ({rekeys_seen} seen on gw-a's event stream); {} x 13885 ERROR_IPSEC_IKE_MM_EXPIRED (causes: {})",
        mm_events.len(),
        mm_events
            .iter()
            .map(|e| e["cause"].as_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    all_ok &= mm_events.len() == 2 && rekeys > 0;
    println!("== tearing the rig down");
    drop(rig);
    if !all_ok {
        anyhow::bail!("some traffic did not arrive intact");
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
