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
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            seconds: 5,
            xdp_mode: "native",
            queues: 2,
            pps: 20_000,
        }
    }
}

/// A child process stopped (SIGTERM, by PID) when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
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
        Ok(Proc {
            name: name.into(),
            child,
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
    pub fn stderr_text(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
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
    let pcap = rig.dir().join("wan.pcap");
    let mut capture = Proc::spawn(
        "tcpdump",
        "wan",
        &[
            "tcpdump",
            "-i",
            "br0",
            "-U",
            "-s",
            "128",
            "-w",
            &pcap.to_string_lossy(),
        ],
    )?;
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
        senders_left.retain_mut(|s| matches!(s.child.try_wait(), Ok(None)));
        if senders_left.is_empty() {
            break;
        }
    }
    drop(senders_left);
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
    println!("== tearing the rig down");
    drop(rig);
    if !all_ok {
        anyhow::bail!("some traffic did not arrive intact");
    }
    Ok(())
}
