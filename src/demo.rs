//! `espd demo`: the main job. Builds the rig, starts both gateways, sends UDP and TCP both ways
//! (IPv4 and IPv6 inner traffic) with live per-second throughput, checks every byte at the
//! sinks, captures the wire between the gateways, prints a short report and tears everything
//! down (also on error: the rig is an RAII guard, the children are stopped by PID).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::rig::{Rig, RigSpec};

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

/// A child process stopped (SIGTERM, by PID) when dropped. Its stderr is drained all the
/// time (a full pipe would block the child: a gateway logging a rekey must never stall), and
/// the last 64 KiB are kept.
pub struct Proc {
    pub name: String,
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Proc {
    pub fn spawn(name: &str, ns: &str, args: &[&str]) -> std::io::Result<Proc> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut child = child;
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(mut e) = child.stderr.take() {
            let b = buf.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = std::io::Read::read(&mut e, &mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let mut v = b.lock().unwrap_or_else(|p| p.into_inner());
                    v.extend_from_slice(&chunk[..n]);
                    let excess = v.len().saturating_sub(64 << 10);
                    v.drain(..excess);
                }
            });
        }
        Ok(Proc {
            name: name.into(),
            child,
            stderr: buf,
        })
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Lines of stdout, delivered on a channel as they come.
    pub fn lines(&mut self) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel();
        if let Some(out) = self.child.stdout.take() {
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        rx
    }
    /// The last 64 KiB the child wrote to stderr.
    pub fn stderr_text(&mut self) -> String {
        std::thread::sleep(Duration::from_millis(50));
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
    /// SIGTERM, then wait (SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg(self.pid().to_string()).status();
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if start.elapsed() > grace {
                let _ = self.child.kill();
                return self.child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    pub fn wait_output(mut self, timeout: Duration) -> Option<String> {
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                _ if start.elapsed() > timeout => {
                    self.stop(Duration::from_secs(1));
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let mut s = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut o, &mut s);
        }
        Some(s)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop(Duration::from_secs(2));
        }
    }
}

/// Frames seen on the wire between the gateways.
#[derive(Debug, Default, serde::Serialize)]
pub struct WireCount {
    pub esp: u64,
    pub esp_in_udp: u64,
    /// Cleartext with a LAN address (192.0.2.0/24, 198.51.100.0/24, fd00:a::/64, fd00:b::/64):
    /// a leak. Must be 0.
    pub cleartext_lan: u64,
    /// Other IP between the gateways' own addresses (neighbour probes, ICMP).
    pub gateway_own: u64,
    pub non_ip: u64,
}

pub fn count_wire(pcap: &Path) -> WireCount {
    let mut c = WireCount::default();
    let Ok(f) = std::fs::File::open(pcap) else {
        return c;
    };
    let Ok(recs) = crate::pcap::read(std::io::BufReader::new(f)) else {
        return c;
    };
    for r in recs {
        let d = &r.data;
        if d.len() < 34 {
            c.non_ip += 1;
            continue;
        }
        let lan4 = |a: &[u8]| a[..3] == [192, 0, 2] || a[..3] == [198, 51, 100];
        let lan6 = |a: &[u8]| {
            a.len() >= 16
                && (a[..8] == [0xfd, 0, 0, 0xa, 0, 0, 0, 0]
                    || a[..8] == [0xfd, 0, 0, 0xb, 0, 0, 0, 0])
        };
        match (
            u16::from_be_bytes([d[12], d[13]]),
            if d[12..14] == [0x86, 0xdd] {
                d[20]
            } else {
                d[23]
            },
        ) {
            (0x0800, 50) => c.esp += 1,
            (0x0800, 17) if d.len() >= 38 && u16::from_be_bytes([d[36], d[37]]) == 4500 => {
                c.esp_in_udp += 1
            }
            (0x0800, _) if lan4(&d[26..30]) || lan4(&d[30..34]) => c.cleartext_lan += 1,
            (0x86dd, _) if d.len() >= 54 && (lan6(&d[22..38]) || lan6(&d[38..54])) => {
                c.cleartext_lan += 1
            }
            (0x0800, _) | (0x86dd, _) => c.gateway_own += 1,
            _ => c.non_ip += 1,
        }
    }
    c
}

/// Captures the wire between the gateways (the `wan` bridge) into `<rig dir>/wan.pcap`, with
/// an optional snap length and tcpdump filter. Stop the returned process to flush the file.
pub fn capture_wan(
    rig: &Rig,
    snaplen: Option<u32>,
    filter: Option<&str>,
) -> std::io::Result<(Proc, std::path::PathBuf)> {
    let pcap = rig.dir().join("wan.pcap");
    let file = pcap.to_string_lossy().to_string();
    let snap = snaplen.unwrap_or(0).to_string();
    let mut args = vec![
        "tcpdump",
        "-i",
        "br0",
        // Without it, frames still in a TPACKET_V3 block when tcpdump is stopped are never
        // written: "N packets captured" then falls short of "received by filter".
        "--immediate-mode",
        "-U",
        "-s",
        snap.as_str(),
        "-w",
        file.as_str(),
    ];
    args.extend(filter);
    Ok((Proc::spawn("tcpdump", "wan", &args)?, pcap))
}

/// Starts both gateways of `rig` with `extra` arguments; waits until both run.
pub fn start_gateways(rig: &Rig, exe: &str, extra: &[&str]) -> anyhow::Result<(Proc, Proc)> {
    let mut gws = Vec::new();
    for (name, cfg) in [("gw-a", &rig.gw_a), ("gw-b", &rig.gw_b)] {
        let cfg = cfg.to_string_lossy().to_string();
        let mut args = vec![exe, "run", "--config", cfg.as_str()];
        args.extend_from_slice(extra);
        gws.push(Proc::spawn(name, name, &args)?);
    }
    // Running = attached, bound and next hops resolved: wait until gw-a forwards a probe.
    std::thread::sleep(Duration::from_millis(1500));
    for g in gws.iter_mut() {
        if let Ok(Some(s)) = g.child.try_wait() {
            let err = g.stderr_text();
            anyhow::bail!("{} exited at start ({s}): {}", g.name, err.trim());
        }
    }
    let b = gws.pop().expect("two");
    let a = gws.pop().expect("two");
    Ok((a, b))
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
            let mut k = crate::keyer::Keyer::for_rig(&a, &b)?;
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
        senders_left.retain_mut(|s| matches!(s.child.try_wait(), Ok(None)));
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
