//! Shared helpers for the integration tests: packet builders and an in-memory gateway.
#![allow(dead_code)]

#[cfg(feature = "rig")]
pub mod rig;
pub mod vectors;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crossbeam_queue::ArrayQueue;
use espd::config::Config;
use espd::datapath::mem::Frame;
use espd::datapath::pipeline::{Dataplane, PipelineConfig};
use espd::datapath::{Action, CoreStats, Pipeline, SaEvent};
use espd::wire::checksum;

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub const MAC_A: [u8; 6] = [2, 0, 0, 0, 0xaa, 1];
pub const MAC_B: [u8; 6] = [2, 0, 0, 0, 0xbb, 1];

pub fn eth(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + l3.len());
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

fn fill_l4_checksum(l4: &mut [u8], proto: u8, acc: u64) {
    let off = if proto == 6 { 16 } else { 6 };
    l4[off] = 0;
    l4[off + 1] = 0;
    let c = !checksum::fold(checksum::sum(acc, l4));
    let c = if c == 0 && proto == 17 { 0xffff } else { c };
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
}

/// UDP (17) or TCP (6) segment with `payload`.
pub fn l4(proto: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    if proto == 17 {
        s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        s.extend_from_slice(&[0, 0]);
    } else {
        s.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    }
    s.extend_from_slice(payload);
    s
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, mut l4: Vec<u8>) -> Vec<u8> {
    if proto == 6 || proto == 17 {
        let acc = checksum::pseudo_v4(src, dst, proto, l4.len() as u16);
        fill_l4_checksum(&mut l4, proto, acc);
    }
    let mut p = vec![0u8; 20];
    espd::wire::ipv4::Ipv4Repr {
        src,
        dst,
        protocol: proto,
        payload_len: l4.len(),
        tos: 0,
        ttl: 64,
        dont_frag: true,
    }
    .emit(&mut p);
    p.extend_from_slice(&l4);
    p
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, mut l4: Vec<u8>) -> Vec<u8> {
    if proto == 6 || proto == 17 {
        let acc = checksum::pseudo_v6(&src, &dst, proto, l4.len() as u32);
        fill_l4_checksum(&mut l4, proto, acc);
    }
    let mut p = vec![0u8; 40];
    espd::wire::ipv6::Ipv6Repr {
        src,
        dst,
        next_header: proto,
        payload_len: l4.len(),
        traffic_class: 0,
        hop_limit: 64,
    }
    .emit(&mut p);
    p.extend_from_slice(&l4);
    p
}

/// An Ethernet frame carrying UDP/TCP between `src` and `dst` (same family).
pub fn frame(src: &str, dst: &str, proto: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let seg = l4(proto, sport, dport, payload);
    match (
        src.parse::<IpAddr>().unwrap(),
        dst.parse::<IpAddr>().unwrap(),
    ) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth(0x0800, &ipv4(s, d, proto, seg)),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth(0x86dd, &ipv6(s, d, proto, seg)),
        _ => panic!("mixed families"),
    }
}

/// A deterministic payload.
pub fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// One gateway over in-memory frames.
pub struct Gw {
    pub cfg: Config,
    pub dp: Dataplane,
    pub stats: CoreStats,
    pub events: ArrayQueue<SaEvent>,
    pub pcfg: PipelineConfig,
}

impl Gw {
    pub fn from_toml(text: &str) -> Gw {
        let cfg = Config::parse(Path::new("test.toml"), text).unwrap();
        Self::from_config(cfg)
    }
    pub fn example(name: &str) -> Gw {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        Self::from_config(Config::load(&path).unwrap())
    }
    pub fn from_config(cfg: Config) -> Gw {
        let dp = cfg.build_dataplane(1).unwrap();
        let pcfg = cfg.pipeline_config();
        Gw {
            cfg,
            dp,
            stats: CoreStats::default(),
            events: ArrayQueue::new(1024),
            pcfg,
        }
    }

    fn run(&self, pkts: &[Vec<u8>], now: u64, outbound: bool) -> Vec<(Action, Vec<u8>)> {
        let mut p = Pipeline::new(&self.dp, 0, &self.stats, &self.events, self.pcfg);
        let mut frames: Vec<Frame> = pkts.iter().map(|b| Frame::from_packet(b)).collect();
        let mut acts = vec![Action::Punt; frames.len()];
        for (fs, as_) in frames.chunks_mut(64).zip(acts.chunks_mut(64)) {
            if outbound {
                p.outbound(fs, now, as_);
            } else {
                p.inbound(fs, now, as_);
            }
        }
        frames
            .iter()
            .zip(acts)
            .map(|(f, a)| (a, f.bytes().to_vec()))
            .collect()
    }
    /// Plain side in (encrypt).
    pub fn out(&self, pkts: &[Vec<u8>]) -> Vec<(Action, Vec<u8>)> {
        self.run(pkts, 1, true)
    }
    pub fn out_at(&self, pkts: &[Vec<u8>], now: u64) -> Vec<(Action, Vec<u8>)> {
        self.run(pkts, now, true)
    }
    /// Cipher side in (decrypt).
    pub fn inn(&self, pkts: &[Vec<u8>]) -> Vec<(Action, Vec<u8>)> {
        self.run(pkts, 1, false)
    }
    pub fn inn_at(&self, pkts: &[Vec<u8>], now: u64) -> Vec<(Action, Vec<u8>)> {
        self.run(pkts, now, false)
    }
    pub fn events(&self) -> Vec<SaEvent> {
        let mut v = Vec::new();
        while let Some(e) = self.events.pop() {
            v.push(e);
        }
        v
    }
}

/// Runs one packet from A's plain side through A and B; returns B's output frame.
pub fn through_pair(a: &Gw, b: &Gw, pkt: &[u8]) -> (Action, Vec<u8>) {
    let (act, esp) = a.out(&[pkt.to_vec()]).remove(0);
    assert_eq!(act, Action::Tx, "gateway A refused the packet");
    b.inn(&[esp]).remove(0)
}

pub fn example_text(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .unwrap()
}

/// `f` (an Ethernet frame with an IPv4 or IPv6 packet) as it leaves after `hops` routers
/// decremented its TTL / hop limit (the IPv4 header checksum recomputed).
pub fn aged(f: &[u8], hops: u8) -> Vec<u8> {
    let mut f = f.to_vec();
    if f[14] >> 4 == 4 {
        f[14 + 8] -= hops;
        espd::wire::ipv4::fill_checksum(&mut f[14..]);
    } else {
        f[14 + 7] -= hops;
    }
    f
}

/// Sets the TTL / hop limit of the frame's IP packet (IPv4 checksum recomputed).
pub fn with_ttl(f: &[u8], ttl: u8) -> Vec<u8> {
    let mut f = f.to_vec();
    if f[14] >> 4 == 4 {
        f[14 + 8] = ttl;
        espd::wire::ipv4::fill_checksum(&mut f[14..]);
    } else {
        f[14 + 7] = ttl;
    }
    f
}

/// The ECN field (RFC 3168) of the frame's IP packet.
pub fn ecn(f: &[u8]) -> u8 {
    if f[14] >> 4 == 4 {
        f[15] & 3
    } else {
        (f[15] >> 4) & 3
    }
}

/// Sets the ECN field of the frame's IP packet (IPv4 checksum recomputed).
pub fn with_ecn(f: &[u8], ecn: u8) -> Vec<u8> {
    let mut f = f.to_vec();
    if f[14] >> 4 == 4 {
        f[15] = (f[15] & !3) | ecn;
        espd::wire::ipv4::fill_checksum(&mut f[14..]);
    } else {
        f[15] = (f[15] & !0x30) | (ecn << 4);
    }
    f
}

// ---------- the typed control API ----------

use espd::config::{NewAction, NewPolicy, NewSa, NewTunnel};
use espd::sa::policy::PortRange;
use espd::sa::{Direction, Endpoints, Limits, Mode, Selector};

/// An SA for `Control::install_sa` and friends: `key` is hex key‖salt; no lifetime, no state,
/// the config's backend and replay window (change fields with `NewSa { .., ..new_sa(..) }`).
pub fn new_sa(tunnel: &str, direction: Direction, spi: u32, key: &str) -> NewSa {
    NewSa {
        tunnel: tunnel.to_string(),
        direction,
        spi,
        keymat: hex(key).into(),
        esn: false,
        backend: None,
        replay_window: None,
        limits: Limits::default(),
        state: None,
    }
}

/// A tunnel-mode tunnel without UDP encapsulation, MTU 1500.
pub fn new_tunnel(name: &str, local: &str, remote: &str) -> NewTunnel {
    NewTunnel {
        name: name.to_string(),
        endpoints: Endpoints {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
        },
        mode: Mode::Tunnel,
        encap: None,
        mtu: 1500,
    }
}

/// A policy on prefixes (any protocol, any ports).
pub fn new_policy(src: &str, dst: &str, action: NewAction) -> NewPolicy {
    NewPolicy {
        selector: Selector {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: None,
            src_ports: PortRange::ANY,
            dst_ports: PortRange::ANY,
        },
        action,
    }
}

/// Protect into tunnel `name`.
pub fn protect(name: &str) -> NewAction {
    NewAction::Protect(name.to_string())
}

/// A key‖salt of `len` bytes, each in 0xa0..=0xff: no run of its hex digits can be mistaken
/// for an SPI, a cookie or a decimal number in an answer.
pub fn secret(n: u8, len: usize) -> String {
    // xorshift64, seeded by `n`: different keys share no run of bytes.
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(n);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:02x}", 0xa0 + x % 0x60)
        })
        .collect()
}

/// An answer that contains 4 consecutive bytes of one of `keys` (hex, either case).
pub fn leaked<'k>(answer: &str, keys: &'k [String]) -> Option<&'k str> {
    let text = answer.to_ascii_lowercase();
    keys.iter()
        .find(|k| {
            (0..=k.len() - 8)
                .step_by(2)
                .any(|i| text.contains(&k[i..i + 8]))
        })
        .map(String::as_str)
}

/// A writer for a test subscriber (`tracing_subscriber::fmt().with_writer(move || w.clone())`):
/// everything logged lands in one buffer.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
