//! `espd bench --ike`: an IKEv1 initiator swarm (many peers, each its own outer IPv6 address)
//! sets up main + quick modes against a responder on the rig, espd or strongSwan, under the
//! same load, and reports setups per second, setup latency percentiles and the responder's CPU
//! per setup.
//!
//! The swarm is espd's own sans-I/O engine ([`Engine`]) with one peer per address, driven by
//! `espd traffic ike-swarm` inside `gw-a`: two wildcard UDP sockets (500 and 4500) speak for
//! all addresses (`IPV6_PKTINFO`). It keeps `window` setups in flight (a closed loop, as
//! strongSwan's `load-tester` does with its initiators), so the responder's capacity, not a
//! timer, sets the rate. The responder runs in `gw-b` with one tunnel and `[[ike.peers]]`
//! entry per swarm peer (espd) or one connection for the whole address range (strongSwan).
//! Both exchanges are identical: AES-256/SHA-256/ECP-256 main mode, forced UDP encapsulation
//! (strongSwan's kernel-libipsec fakes NAT-D), a quick mode for AES-GCM-16-128 without PFS.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::procs::Proc;
use super::{Rig, RigSpec, ns};
use crate::ike::config::{IkePeer, parse_proposal};
use crate::ike::engine::Engine;
use crate::ike::types::{Action, Env};
use crate::sa::UdpEncap;
use crate::sa::policy::{PortRange, Selector};

/// The responder's outer address (gw-b) and the swarm's first one (gw-a; peer `i` has
/// `SWARM_BASE + i`).
const RESPONDER: Ipv6Addr = Ipv6Addr::new(0xfd00, 5, 0, 0, 0, 0, 0, 1);
const SWARM_NEXT_HOP: Ipv6Addr = Ipv6Addr::new(0xfd00, 5, 0, 0, 0, 0, 0, 2);
const SWARM_BASE: u128 = 0xfd00_0005_0000_0000_0000_0000_0001_0000;
/// The protected networks: the responder's (behind gw-b) and the swarm peers' (`/128` each).
const RESPONDER_NET: &str = "fd00:b::/64";
const SWARM_NET_BASE: u128 = 0xfd00_0007_0000_0000_0000_0000_0000_0000;

/// Options of `espd bench --ike`.
#[derive(Clone, Debug)]
pub struct SwarmOptions {
    pub peers: usize,
    pub window: usize,
    /// `espd`, `strongswan`.
    pub systems: Vec<String>,
    /// Runs per system, interleaved (ABAB…); the report gives the median and the range.
    pub runs: usize,
    pub out: PathBuf,
}

fn swarm_addr(i: usize) -> Ipv6Addr {
    Ipv6Addr::from(SWARM_BASE + i as u128)
}

fn swarm_net(i: usize) -> Ipv6Addr {
    Ipv6Addr::from(SWARM_NET_BASE + i as u128)
}

/// One IKE peer of the swarm (peer `i`).
fn swarm_peer(i: usize, psk: &[u8]) -> anyhow::Result<IkePeer> {
    let selector = Selector {
        src: format!("{}/128", swarm_net(i))
            .parse()
            .map_err(anyhow::Error::msg)?,
        dst: RESPONDER_NET.parse().map_err(anyhow::Error::msg)?,
        protocol: None,
        src_ports: PortRange::ANY,
        dst_ports: PortRange::ANY,
    };
    let (local, remote) = (IpAddr::V6(swarm_addr(i)), IpAddr::V6(RESPONDER));
    Ok(IkePeer {
        index: i,
        tunnel_index: i as u32,
        encap: Some(UdpEncap {
            src_port: 4500,
            dst_port: 4500,
        }),
        proposals: vec![parse_proposal("aes256-sha256-ecp256").map_err(anyhow::Error::msg)?],
        esp: vec![128],
        dpd_delay_s: 0,
        initiate: false,
        ..IkePeer::new(&format!("s{i}"), local, remote, psk, selector)
    })
}

struct SwarmEnv {
    spi: u32,
}

impl Env for SwarmEnv {
    fn random(&mut self, buf: &mut [u8]) {
        let _ = aws_lc_rs::rand::fill(buf);
    }
    fn allocate_spi(&mut self) -> Option<u32> {
        self.spi = self.spi.wrapping_add(1).max(0x100);
        Some(self.spi)
    }
}

/// What `espd traffic ike-swarm` does: sets up `peers` main + quick modes against
/// `RESPONDER`, `window` at a time; returns the report (JSON).
pub fn client(
    peers: usize,
    window: usize,
    psk_file: &Path,
    timeout_s: f64,
) -> anyhow::Result<Value> {
    anyhow::ensure!(
        peers >= 1 && window >= 1,
        "--peers and --window must be at least 1"
    );
    let psk = crate::ike::config::read_psk(psk_file).map_err(anyhow::Error::msg)?;
    let list = (0..peers)
        .map(|i| swarm_peer(i, &psk))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut engine = Engine::new(list);
    let mut env = SwarmEnv { spi: 0x100 };
    let (tx, rx) = mpsc::sync_channel::<(u16, SocketAddrV6, Ipv6Addr, Vec<u8>)>(8192);
    let mut socks = Vec::new();
    for port in [500u16, 4500] {
        let s = UdpSocket::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))?;
        crate::sys::enable_pktinfo6(&s)?;
        crate::sys::set_rcvbuf(&s, 4 << 20);
        let r = s.try_clone()?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, from, to)) = crate::sys::recv_from_to6(&r, &mut buf) {
                let Some(to) = to else { continue };
                let data = if port == 4500 {
                    // Non-ESP marker, then ISAKMP; anything else (ESP) is not ours.
                    match buf[..n].strip_prefix(&[0u8; 4]) {
                        Some(d) => d.to_vec(),
                        None => continue,
                    }
                } else {
                    buf[..n].to_vec()
                };
                if tx.send((port, from, to, data)).is_err() {
                    return;
                }
            }
        });
        socks.push((port, s));
    }
    drop(tx);
    let clock = Instant::now();
    let now = || 1_000_000_000 + clock.elapsed().as_nanos() as u64;
    let mut started: Vec<Option<u64>> = vec![None; peers];
    let mut latencies: Vec<u64> = Vec::with_capacity(peers);
    let (mut next, mut done, mut failed, mut in_flight) = (0usize, 0usize, 0usize, 0usize);
    let mut failures: VecDeque<String> = VecDeque::new();
    let mut sent = 0u64;
    let deadline = Duration::from_secs_f64(timeout_s);
    while done + failed < peers {
        if clock.elapsed() > deadline {
            break;
        }
        while in_flight < window && next < peers {
            let t = now();
            started[next] = Some(t);
            engine.initiate(&mut env, t, next);
            next += 1;
            in_flight += 1;
        }
        while let Some(a) = engine.poll_action() {
            match a {
                Action::Send {
                    peer,
                    local_port,
                    to,
                    data,
                } => {
                    let SocketAddr::V6(to) = to else { continue };
                    let mut msg = Vec::with_capacity(data.len() + 4);
                    if local_port == 4500 {
                        msg.extend_from_slice(&[0u8; 4]);
                    }
                    msg.extend_from_slice(&data);
                    if let Some((_, s)) = socks.iter().find(|(p, _)| *p == local_port) {
                        let _ = crate::sys::send_from6(s, &msg, to, swarm_addr(peer));
                        sent += 1;
                    }
                }
                Action::ChildUp(c) => {
                    if let Some(t0) = started.get_mut(c.peer).and_then(Option::take) {
                        latencies.push(now().saturating_sub(t0));
                        done += 1;
                        in_flight -= 1;
                    }
                }
                Action::Failed { peer, reason, .. }
                    if started.get_mut(peer).and_then(Option::take).is_some() =>
                {
                    failed += 1;
                    in_flight -= 1;
                    if failures.len() < 5 {
                        failures.push_back(format!("peer {peer}: {reason}"));
                    }
                }
                _ => {}
            }
        }
        if done + failed >= peers {
            break;
        }
        let wait = engine
            .next_deadline()
            .map(|d| Duration::from_nanos(d.saturating_sub(now())))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        match rx.recv_timeout(wait) {
            Ok((port, from, to, data)) => {
                let t = now();
                engine.receive(
                    &mut env,
                    t,
                    SocketAddr::new(IpAddr::V6(to), port),
                    SocketAddr::V6(from),
                    &data,
                );
                // Drain what else is queued before the next round of actions.
                while let Ok((port, from, to, data)) = rx.try_recv() {
                    engine.receive(
                        &mut env,
                        now(),
                        SocketAddr::new(IpAddr::V6(to), port),
                        SocketAddr::V6(from),
                        &data,
                    );
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!("the sockets closed"),
        }
        engine.tick(&mut env, now());
    }
    let elapsed = clock.elapsed().as_secs_f64();
    let own_cpu = cpu_seconds(std::process::id()).unwrap_or(0.0);
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[i.clamp(1, latencies.len()) - 1] as f64 / 1e6
    };
    let c = engine.counters();
    Ok(json!({
        "peers": peers,
        "window": window,
        "setups": done,
        "failed": failed,
        "unfinished": peers - done - failed,
        "seconds": elapsed,
        "setups_per_s": done as f64 / elapsed,
        "latency_ms": {"p50": pct(50.0), "p90": pct(90.0), "p99": pct(99.0), "max": pct(100.0)},
        "datagrams_sent": sent,
        "swarm_cpu_ms_per_setup": own_cpu * 1e3 / (done.max(1) as f64),
        "retransmits": c.retransmits,
        "first_failures": failures.into_iter().collect::<Vec<_>>(),
    }))
}

/// utime + stime of `pid` in seconds (`/proc/PID/stat`), or `None` when it is gone.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// gw-b's espd config: one tunnel, protect policy and `[[ike.peers]]` per swarm peer.
fn espd_config(peers: usize, dir: &Path) -> String {
    let mut s = format!(
        r#"# Generated by `espd bench --ike`: the responder of the IKE swarm.
[dataplane]
workers = 1
cores = [1]
xdp_mode = "native"
default_policy = "discard"

[interfaces.plain]
name = "lan0"
addresses = ["198.51.100.1", "fd00:b::1"]
next_hop = "198.51.100.2"
queues = [0]

[interfaces.cipher]
name = "wan0"
addresses = ["{RESPONDER}"]
next_hop = "{SWARM_NEXT_HOP}"
queues = [0]

[control]
socket = "{}"
"#,
        dir.join("gw-b.sock").display()
    );
    for i in 0..peers {
        let _ = write!(
            s,
            "\n[[tunnels]]\nname = \"s{i}\"\nlocal = \"{RESPONDER}\"\nremote = \"{}\"\nencap = \"udp\"\n\n[[policies]]\nsrc = \"{RESPONDER_NET}\"\ndst = \"{}/128\"\naction = \"protect\"\ntunnel = \"s{i}\"\n",
            swarm_addr(i),
            swarm_net(i)
        );
    }
    // The engine's DoS limits would cap the rate at 200 new main modes a second: the bench
    // measures capacity, as strongSwan (no IKEv1 limit by default) is measured.
    s.push_str("\n[ike]\nresponder_mm_per_s = 1000000\nresponder_half_open = 1000000\n");
    for i in 0..peers {
        let _ = write!(
            s,
            "\n[[ike.peers]]\ntunnel = \"s{i}\"\npsk_file = \"swarm.psk\"\nproposals = [\"aes256-sha256-ecp256\"]\nesp = [\"aes128gcm16\"]\ninitiate = false\ndpd_delay_s = 0\n"
        );
    }
    s
}

/// gw-b's strongSwan: one connection for the whole swarm (`remote_addrs` a prefix), the same
/// proposals, no key logging (log levels at charon's defaults).
fn strongswan_files(dir: &Path, psk: &str) -> std::io::Result<()> {
    let conf = format!(
        "charon {{\n  load_modular = no\n  load = {}\n  filelog {{\n    charon {{\n      path = {}\n      default = 1\n      flush_line = yes\n    }}\n  }}\n  plugins {{\n    vici {{\n      socket = unix://{}\n    }}\n  }}\n}}\n",
        super::ike::CHARON_PLUGINS,
        dir.join("charon.log").display(),
        dir.join("charon.vici").display()
    );
    std::fs::write(dir.join("strongswan.conf"), conf)?;
    let swanctl = format!(
        "connections {{\n  swarm {{\n    version = 1\n    local_addrs = {RESPONDER}\n    remote_addrs = fd00:5::/64\n    proposals = aes256-sha256-ecp256\n    aggressive = no\n    reauth_time = 0s\n    rand_time = 0s\n    dpd_delay = 0s\n    send_certreq = no\n    local {{\n      auth = psk\n      id = {RESPONDER}\n    }}\n    remote {{\n      auth = psk\n    }}\n    children {{\n      net {{\n        local_ts = {RESPONDER_NET}\n        remote_ts = fd00:7::/64\n        esp_proposals = aes128gcm16\n        rekey_time = 0s\n        rand_time = 0s\n        mode = tunnel\n        start_action = none\n      }}\n    }}\n  }}\n}}\nsecrets {{\n  ike-swarm {{\n    secret = \"{psk}\"\n  }}\n}}\n"
    );
    super::write_private(&dir.join("swanctl.conf"), swanctl.as_bytes())
}

/// The MAC address of `wan0` in namespace `n`.
fn wan_mac(n: &str) -> anyhow::Result<String> {
    let o = ns(n, &["ip", "-j", "link", "show", "wan0"])?;
    let v: Value = serde_json::from_slice(&o.stdout)?;
    v[0]["address"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("{n}: wan0 has no MAC address"))
}

/// One trial: a fresh rig, the responder `system` in gw-b, the swarm in gw-a.
fn trial(o: &SwarmOptions, system: &str, exe: &str) -> anyhow::Result<Value> {
    let dir = std::env::temp_dir().join(format!("espd-swarm-{}", std::process::id()));
    let rig = Rig::up(RigSpec {
        queues: 1,
        dir: dir.clone(),
        ..RigSpec::default()
    })?;
    // Addresses, and permanent neighbour entries both ways: the kernel's IPv6 neighbour
    // table holds 1,024 learned entries (gc_thresh3, not per namespace), and permanent ones
    // do not count against it.
    let (mac_a, mac_b) = (wan_mac("gw-a")?, wan_mac("gw-b")?);
    let mut batch_a = format!("addr add {SWARM_NEXT_HOP}/64 dev wan0 nodad\n");
    let mut batch_b = format!("addr add {RESPONDER}/64 dev wan0 nodad\n");
    for i in 0..o.peers {
        let a = swarm_addr(i);
        let _ = writeln!(batch_a, "addr add {a}/64 dev wan0 nodad");
        let _ = writeln!(
            batch_b,
            "neigh replace {a} lladdr {mac_a} dev wan0 nud permanent"
        );
    }
    let _ = writeln!(
        batch_a,
        "neigh replace {RESPONDER} lladdr {mac_b} dev wan0 nud permanent"
    );
    for (n, b) in [("gw-a", batch_a), ("gw-b", batch_b)] {
        let f = dir.join(format!("swarm-{n}.batch"));
        std::fs::write(&f, b)?;
        ns(n, &["ip", "-batch", &f.to_string_lossy()])?;
    }
    let psk = format!("espd-swarm-{}", super::random_hex(16));
    super::write_private(&dir.join("swarm.psk"), format!("{psk}\n").as_bytes())?;
    let responder: Box<dyn std::any::Any> = match system {
        "espd" => {
            let cfg = dir.join("gw-b-swarm.toml");
            super::write_private(&cfg, espd_config(o.peers, &dir).as_bytes())?;
            let cfg = cfg.to_string_lossy().to_string();
            let mut p = Proc::spawn("gw-b", "gw-b", &[exe, "run", "--config", &cfg])?;
            super::ike::subscribe(&dir.join("gw-b.sock"), Duration::from_secs(20))
                .map_err(|e| anyhow::anyhow!("{e}; espd said: {}", p.stderr_text().trim()))?;
            Box::new(p)
        }
        "strongswan" => {
            strongswan_files(&dir, &psk)?;
            Box::new(super::ike::StrongSwan::start(&dir)?)
        }
        other => anyhow::bail!("--systems: `{other}` is not espd or strongswan"),
    };
    let pid = if let Some(p) = responder.downcast_ref::<Proc>() {
        p.pid()
    } else if let Some(s) = responder.downcast_ref::<super::ike::StrongSwan>() {
        s.proc.pid()
    } else {
        0
    };
    let cpu0 = cpu_seconds(pid);
    let psk_file = dir.join("swarm.psk").to_string_lossy().to_string();
    let (peers, window) = (o.peers.to_string(), o.window.to_string());
    let swarm = Proc::spawn(
        "swarm",
        "gw-a",
        &[
            exe,
            "traffic",
            "ike-swarm",
            "--peers",
            &peers,
            "--window",
            &window,
            "--psk-file",
            &psk_file,
        ],
    )?;
    let out = swarm
        .wait_output(Duration::from_secs(200))
        .ok_or_else(|| anyhow::anyhow!("the swarm did not finish"))?;
    let cpu1 = cpu_seconds(pid);
    let mut v: Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .map_err(|e| anyhow::anyhow!("swarm report: {e}: {out}"))?;
    let setups = v["setups"].as_u64().unwrap_or(0).max(1) as f64;
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        v["responder_cpu_s"] = json!(b - a);
        v["responder_cpu_ms_per_setup"] = json!((b - a) * 1e3 / setups);
    }
    v["system"] = json!(system);
    drop(responder);
    drop(rig);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(v)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// `espd bench --ike`: runs the trials (systems interleaved), prints the table, writes
/// `ike-swarm.json` under `out`.
pub fn run(o: &SwarmOptions) -> anyhow::Result<Value> {
    if !crate::sys::is_root() {
        anyhow::bail!("espd bench --ike needs root (network namespaces)");
    }
    if o.systems.iter().any(|s| s == "strongswan") && super::ike::charon_path().is_none() {
        anyhow::bail!(
            "--systems strongswan: charon is not installed (apt-get install charon-systemd strongswan-swanctl libstrongswan-extra-plugins libcharon-extra-plugins)"
        );
    }
    let exe = std::env::current_exe()?.to_string_lossy().to_string();
    let mut trials: Vec<Value> = Vec::new();
    for r in 0..o.runs {
        for s in &o.systems {
            eprintln!("ike swarm: run {}/{} against {s}", r + 1, o.runs);
            trials.push(trial(o, s, &exe)?);
        }
    }
    let mut text = format!(
        "IKEv1 setup swarm: {} peers (one outer IPv6 address each), {} in flight, main mode aes256-sha256-ecp256 + quick mode aes128gcm16 (no PFS), median of {} run(s) [range]\n\n",
        o.peers, o.window, o.runs
    );
    let _ = writeln!(
        text,
        "| responder | setups/s | p50 ms | p99 ms | failed | responder CPU ms/setup | swarm CPU ms/setup |"
    );
    let _ = writeln!(text, "|---|---|---|---|---|---|---|");
    let mut summary = serde_json::Map::new();
    for s in &o.systems {
        let mine: Vec<&Value> = trials.iter().filter(|t| t["system"] == *s).collect();
        let col = |f: &dyn Fn(&Value) -> f64| -> Vec<f64> { mine.iter().map(|t| f(t)).collect() };
        let mut rate = col(&|t| t["setups_per_s"].as_f64().unwrap_or(0.0));
        let mut p50 = col(&|t| t["latency_ms"]["p50"].as_f64().unwrap_or(0.0));
        let mut p99 = col(&|t| t["latency_ms"]["p99"].as_f64().unwrap_or(0.0));
        let mut cpu = col(&|t| t["responder_cpu_ms_per_setup"].as_f64().unwrap_or(0.0));
        let mut swarm_cpu = col(&|t| t["swarm_cpu_ms_per_setup"].as_f64().unwrap_or(0.0));
        let failed: u64 = mine
            .iter()
            .map(|t| t["failed"].as_u64().unwrap_or(0) + t["unfinished"].as_u64().unwrap_or(0))
            .sum();
        let range = |v: &[f64]| {
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(0.0, f64::max);
            (lo, hi)
        };
        let (rlo, rhi) = range(&rate);
        let m = json!({
            "setups_per_s": median(&mut rate),
            "setups_per_s_range": [rlo, rhi],
            "p50_ms": median(&mut p50),
            "p99_ms": median(&mut p99),
            "responder_cpu_ms_per_setup": median(&mut cpu),
            "swarm_cpu_ms_per_setup": median(&mut swarm_cpu),
            "failed": failed,
        });
        let _ = writeln!(
            text,
            "| {s} | {:.0} [{rlo:.0}–{rhi:.0}] | {:.1} | {:.1} | {failed} | {:.2} | {:.2} |",
            m["setups_per_s"].as_f64().unwrap_or(0.0),
            m["p50_ms"].as_f64().unwrap_or(0.0),
            m["p99_ms"].as_f64().unwrap_or(0.0),
            m["responder_cpu_ms_per_setup"].as_f64().unwrap_or(0.0),
            m["swarm_cpu_ms_per_setup"].as_f64().unwrap_or(0.0),
        );
        summary.insert(s.clone(), m);
    }
    if let (Some(e), Some(w)) = (summary.get("espd"), summary.get("strongswan")) {
        let (a, b) = (
            e["setups_per_s"].as_f64().unwrap_or(0.0),
            w["setups_per_s"].as_f64().unwrap_or(0.0),
        );
        let (ca, cb) = (
            e["responder_cpu_ms_per_setup"].as_f64().unwrap_or(0.0),
            w["responder_cpu_ms_per_setup"].as_f64().unwrap_or(0.0),
        );
        if b > 0.0 {
            let _ = writeln!(
                text,
                "\nespd ÷ strongSwan setups/s: {:.2} (goal ≥ 3; the swarm shares the cores)",
                a / b
            );
        }
        if ca > 0.0 {
            let _ = writeln!(
                text,
                "strongSwan ÷ espd responder CPU per setup: {:.2} (setups per core-second)",
                cb / ca
            );
        }
    }
    print!("{text}");
    let report = json!({"options": {"peers": o.peers, "window": o.window, "runs": o.runs},
        "summary": summary, "trials": trials});
    std::fs::create_dir_all(&o.out)?;
    std::fs::write(
        o.out.join("ike-swarm.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(o.out.join("ike-swarm.md"), &text)?;
    Ok(report)
}
