//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus replay test
//! (`tests/fuzz_corpus.rs`). Each must return without panicking on any input: a panic is a
//! finding (a crash of the code under test, or a broken invariant, asserted here).
//!
//! * [`wire`], [`inbound`]: arbitrary bytes into the packet views and the example gateway.
//! * [`inbound_sealed`]: frames built from fuzzed fields (outer family, UDP encapsulation, SPI,
//!   sequence number, inner packet, padding, pad length, next header, TFC) and **sealed under
//!   the SA's real key**, so every input reaches the trailer checks, inner parsing, the selector
//!   check and the replay commit. A run is a sequence of batches through one fresh gateway.
//! * [`outbound`]: fuzzed inner packets through SPD, MTU, ICMP errors and encapsulation; every
//!   frame sent is opened again by the peer gateway's inbound pipeline.
//! * [`control`]: JSON lines (raw or generated) into the control thread's request handler.
//! * [`config`]: text (raw or generated TOML) into the config parser.
//! * [`ike_wire`]: bytes into the ISAKMP parser and builder.
//! * [`ike_engine`]: two IKE engines after a real handshake, joined by a network the input
//!   controls (delivery order, drops, duplicates, made-up and mutated datagrams, the clock,
//!   lifetime events).
//!
//! The structure-aware targets read their input as a stream of choices ([`Choices`]); past its
//! end every choice is 0, and 0 always picks the ordinary case, so short inputs are valid
//! traffic. Only public APIs are used, so the targets keep compiling while the pipeline changes.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;

use crossbeam_queue::ArrayQueue;
use serde_json::{Value, json};

use crate::config::Config;
use crate::datapath::mem::Frame;
use crate::datapath::pipeline::Dataplane;
use crate::datapath::{Action, CoreStats, Pipeline, PipelineConfig, SaEvent};
use crate::sa::policy::{PolicyAction, PortRange, Selector};
use crate::sa::{Direction, Mode, Sa, SaState, SaTable, Spd};
use crate::wire::{checksum, esp, ethernet, ipv4, ipv6, proto, udp};

/// Every packet view over `data`.
pub fn wire(data: &[u8]) {
    let _ = ethernet::ethertype(data);
    if let Ok(p) = ipv4::Ipv4Packet::new_checked(data) {
        let _ = (
            p.src(),
            p.dst(),
            p.payload().len(),
            p.verify_checksum(),
            p.is_fragment(),
        );
    }
    if let Ok(p) = ipv6::Ipv6Packet::new_checked(data) {
        let _ = ipv6::upper_layer(data, p.total_len());
    }
    let _ = udp::parse(data);
    if let Ok(p) = esp::EspPacket::new_checked(data) {
        let _ = (p.spi(), p.seq(), p.iv(), p.ciphertext_len());
    }
    let _ = crate::pcap::read(data);
}

struct Gw {
    dp: Dataplane,
    cfg: crate::datapath::PipelineConfig,
}

fn gateway() -> &'static Gw {
    static GW: OnceLock<Gw> = OnceLock::new();
    GW.get_or_init(|| {
        let text = include_str!("../examples/gw-b.toml");
        let cfg = Config::parse(std::path::Path::new("gw-b.toml"), text).expect("example config");
        Gw {
            dp: cfg.build_dataplane(1).expect("example dataplane"),
            cfg: cfg.pipeline_config(),
        }
    })
}

/// `data` as a frame arriving on the cipher side of the example gateway B (and, mirrored, on
/// its plain side). Returns the inbound action.
pub fn inbound(data: &[u8]) -> Action {
    let gw = gateway();
    let stats = CoreStats::default();
    let events: ArrayQueue<SaEvent> = ArrayQueue::new(16);
    let mut p = Pipeline::new(&gw.dp, 0, &stats, &events, gw.cfg);
    let mut f = [Frame::from_packet(data)];
    let mut a = [Action::Punt];
    p.inbound(&mut f, 1, &mut a);
    let mut g = [Frame::from_packet(data)];
    let mut b = [Action::Punt];
    p.outbound(&mut g, 1, &mut b);
    a[0]
}

/// Findings already reported, tolerated while a fuzzing campaign runs
/// (`ESPD_FUZZ_KNOWN=tag,...`) so that it keeps looking for new ones. The corpus replay test
/// sets nothing: it tolerates none.
fn known(tag: &str) -> bool {
    static KNOWN: OnceLock<String> = OnceLock::new();
    KNOWN
        .get_or_init(|| std::env::var("ESPD_FUZZ_KNOWN").unwrap_or_default())
        .split(',')
        .any(|t| t == tag)
}

// ---------- the choice stream ----------

/// Fuzz input read as a stream of choices. Past the end every read is 0.
pub struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        (self.u16() as u32) << 16 | self.u16() as u32
    }
    pub fn u64(&mut self) -> u64 {
        (self.u32() as u64) << 32 | self.u32() as u64
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        match n {
            0 | 1 => 0,
            2..=256 => self.u8() as usize % n,
            _ => self.u32() as usize % n,
        }
    }
    /// True about once in `k` reads (never past the end of the input).
    pub fn rare(&mut self, k: u8) -> bool {
        k > 1 && self.u8() % k == 1
    }
    /// Up to `n` raw bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

// ---------- the gateway pair of the structure-aware targets ----------

const GW_B: &str = include_str!("../fuzz/configs/gw-b.toml");
const GW_A: &str = include_str!("../fuzz/configs/gw-a.toml");

/// Seals ESP for one of B's inbound SAs: an outbound SA with the same SPI and key.
struct Sealer {
    spi: u32,
    tunnel: u32,
    esn: bool,
    window: u64,
    transport: bool,
    sa: Sa,
}

struct Pair {
    b: Config,
    a: Config,
    /// B's inbound SAs, in config order.
    seal: Vec<Sealer>,
    /// Every key of both configs, lower-case hex: none may ever be printed.
    keys: Vec<String>,
}

fn pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let b = Config::parse(Path::new("fuzz/configs/gw-b.toml"), GW_B).expect("fuzz config B");
        let a = Config::parse(Path::new("fuzz/configs/gw-a.toml"), GW_A).expect("fuzz config A");
        let seal = b
            .sas
            .iter()
            .filter(|(_, p)| p.direction == Direction::Inbound)
            .map(|(t, p)| {
                let mut q = p.clone();
                q.direction = Direction::Outbound;
                Sealer {
                    spi: p.spi,
                    tunnel: *t,
                    esn: p.esn,
                    window: p.replay_window as u64,
                    transport: p.mode == Mode::Transport,
                    sa: Sa::new(&q, 1, 1).expect("sealer SA"),
                }
            })
            .collect();
        let keys = config_keys(GW_B)
            .into_iter()
            .chain(config_keys(GW_A))
            .collect();
        Pair { b, a, seal, keys }
    })
}

/// A fresh dataplane for `cfg`, each SA loaded with the state `state` gives it.
fn dataplane(cfg: &Config, state: impl Fn(u32, Direction) -> Option<SaState>) -> Dataplane {
    let table = SaTable::new(
        cfg.sa_capacity,
        cfg.control.tunnel_capacity.max(1),
        cfg.workers,
    );
    for (t, p) in &cfg.sas {
        let sa = Sa::new(p, cfg.workers, 1).expect("fuzz config SA");
        if let Some(st) = state(p.spi, p.direction) {
            sa.import_state(&st).expect("fuzz SA state");
        }
        match p.direction {
            Direction::Inbound => table.install_inbound(sa).expect("install"),
            Direction::Outbound => {
                table.set_outbound(*t, Some(sa)).expect("install");
            }
        }
    }
    let spd = Spd::new(cfg.policies.clone(), cfg.default_policy);
    let local: Vec<IpAddr> = cfg
        .plain
        .addresses
        .iter()
        .chain(cfg.cipher.addresses.iter())
        .copied()
        .collect();
    Dataplane::new(table, spd, &local)
}

/// Pipeline settings with the fuzzed knobs: prefetch passes on or off, ICMP rate.
fn pipeline_config(cfg: &Config, r: &mut Choices) -> PipelineConfig {
    let mut pc = cfg.pipeline_config();
    if r.rare(4) {
        pc.prefetch_above = 0;
    }
    if r.rare(8) {
        pc.icmp_rate = r.below(3) as u32;
    }
    pc
}

/// The next batch's clock: mostly a microsecond later, sometimes seconds or much more.
fn advance(r: &mut Choices, now: u64) -> u64 {
    now + match r.below(16) {
        0..=12 => 1_000,
        13 | 14 => 1_000_000_000 * (1 + r.below(4) as u64),
        _ => r.u32() as u64 * 1_000,
    }
}

// ---------- packet building ----------

const MAC_PEER: [u8; 6] = [2, 0, 0, 0, 0x0a, 0x11];
const MAC_HOST: [u8; 6] = [2, 0, 0, 0, 0x0b, 0x02];

const V4_POOL: [[u8; 4]; 16] = [
    [192, 0, 2, 10],
    [192, 0, 2, 70],
    [192, 0, 2, 140],
    [192, 0, 2, 170],
    [192, 0, 2, 200],
    [192, 0, 2, 230],
    [198, 51, 100, 20],
    [198, 51, 100, 1],
    [203, 0, 113, 2],
    [203, 0, 113, 5],
    [203, 0, 113, 1],
    [192, 0, 2, 63],
    [192, 0, 2, 64],
    [0, 0, 0, 0],
    [224, 0, 0, 1],
    [255, 255, 255, 255],
];

fn v6(groups: [u16; 8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    for (i, g) in groups.iter().enumerate() {
        a[2 * i..2 * i + 2].copy_from_slice(&g.to_be_bytes());
    }
    a
}

fn v6_pool(i: usize) -> [u8; 16] {
    match i {
        0 => v6([0xfd00, 0xa, 0, 0, 0, 0, 0, 0x10]),
        1 => v6([0xfd00, 0xa1, 0, 0, 0, 0, 0, 0x10]),
        2 => v6([0xfd00, 0xa, 0, 0, 0, 0, 0, 0x20]),
        3 => v6([0xfd00, 0xa, 0xffff, 0, 0, 0, 0, 1]),
        4 => v6([0xfd00, 0xab, 0, 0, 0, 0, 0, 1]),
        5 => v6([0xfd00, 0xc, 0, 0, 0, 0, 0, 5]),
        6 => v6([0xfd00, 0xb, 0, 0, 0, 0, 0, 0x20]),
        7 => v6([0xfd00, 0xb, 0, 0, 0, 0, 0, 1]),
        8 => v6([0xfd00, 0xc, 0, 0, 0, 0, 0, 2]),
        9 => v6([0xfd00, 0xc, 0, 0, 0, 0, 0, 1]),
        10 => v6([0xfd00, 0xb, 0, 0, 0xffff, 0, 0, 3]),
        11 => v6([0, 0, 0, 0, 0, 0, 0, 0]),
        12 => v6([0xff02, 0, 0, 0, 0, 0, 0, 1]),
        _ => v6([0xfd00, 0xb, 0, 0, 0, 0, 0, 0x30]),
    }
}

/// An address for `role` (0: the remote side, 6: the local side): from the pool, sometimes
/// fuzzed outright. Returned as 16 bytes (IPv4 in the first 4).
fn addr(r: &mut Choices, v6: bool, role: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    let i = r.below(20);
    if i >= 16 {
        let b = r.bytes(if v6 { 16 } else { 4 });
        a[..b.len()].copy_from_slice(b);
    } else if v6 {
        a = v6_pool((i + role) % 14);
    } else {
        a[..4].copy_from_slice(&V4_POOL[(i + role) % 16]);
    }
    a
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn raw_addr(b: &[u8]) -> u128 {
    if b.len() == 4 {
        be32(b, 0) as u128
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        u128::from_be_bytes(a)
    }
}

/// Pseudo-header sum of a packet between `src` and `dst` (4 or 16 bytes each).
fn pseudo(src: &[u8], dst: &[u8], protocol: u8, len: usize) -> u64 {
    let acc = checksum::sum(0, src);
    let acc = checksum::sum(acc, dst);
    acc + protocol as u64 + len as u64
}

/// The checksum over `seg` (a TCP, UDP or ICMPv6 segment) with `pseudo`, as it belongs in the
/// header (the field read as zero).
fn l4_checksum(pseudo: u64, seg: &[u8], field: usize) -> u16 {
    let mut acc = checksum::sum(pseudo, &seg[..field]);
    if seg.len() > field + 2 {
        acc = checksum::sum(acc, &seg[field + 2..]);
    }
    !checksum::fold(acc)
}

/// Offset of the checksum field of an upper-layer protocol.
fn checksum_field(protocol: u8) -> Option<usize> {
    match protocol {
        proto::TCP => Some(16),
        proto::UDP => Some(6),
        proto::ICMP | proto::ICMPV6 => Some(2),
        _ => None,
    }
}

/// True when the upper-layer segment `seg` of `protocol` carries a correct checksum (or one
/// that is not checked: UDP over IPv4 with 0, protocols without one).
fn l4_checksum_ok(protocol: u8, src: &[u8], dst: &[u8], seg: &[u8]) -> bool {
    let Some(field) = checksum_field(protocol) else {
        return true;
    };
    if seg.len() < field + 2 {
        return true;
    }
    let p = match protocol {
        proto::ICMP => 0,
        _ => pseudo(src, dst, protocol, seg.len()),
    };
    let want = l4_checksum(p, seg, field);
    let got = be16(seg, field);
    got == want || (protocol == proto::UDP && (got == 0 && src.len() == 4 || want == 0))
}

/// An upper-layer segment: UDP, TCP, ICMP(v6) or another protocol, with fuzzed fields, its
/// checksum computed for `src`/`dst` (mostly right, sometimes partial, zero or wrong).
/// `size` is the length the segment aims at. Returns the protocol.
fn segment(
    r: &mut Choices,
    v6: bool,
    src: &[u8],
    dst: &[u8],
    size: usize,
    out: &mut Vec<u8>,
) -> u8 {
    const PORTS: [u16; 10] = [40000, 53, 443, 2000, 22, 4500, 500, 1023, 0, 65535];
    let protocol = match r.below(8) {
        0..=2 => proto::UDP,
        3 | 4 => proto::TCP,
        5 | 6 => {
            if v6 {
                proto::ICMPV6
            } else {
                proto::ICMP
            }
        }
        _ => r.u8(),
    };
    let start = out.len();
    let port = |r: &mut Choices| {
        if r.rare(6) { r.u16() } else { r.pick(&PORTS) }
    };
    let hdr = match protocol {
        proto::UDP => {
            let (s, d) = (port(r), port(r));
            out.extend_from_slice(&s.to_be_bytes());
            out.extend_from_slice(&d.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0]);
            8
        }
        proto::TCP => {
            let (s, d) = (port(r), port(r));
            out.extend_from_slice(&s.to_be_bytes());
            out.extend_from_slice(&d.to_be_bytes());
            out.extend_from_slice(&r.u32().to_be_bytes());
            out.extend_from_slice(&r.u32().to_be_bytes());
            let opt_words = if r.rare(6) { r.below(11) } else { 0 };
            out.push(((5 + opt_words) as u8) << 4);
            out.push(if r.rare(4) { r.u8() } else { 0x18 });
            out.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            out.extend(std::iter::repeat_n(1u8, opt_words * 4));
            20 + opt_words * 4
        }
        proto::ICMP | proto::ICMPV6 => {
            let t = if r.rare(3) {
                r.u8()
            } else if v6 {
                128
            } else {
                8
            };
            out.extend_from_slice(&[t, if r.rare(4) { r.u8() } else { 0 }, 0, 0]);
            out.extend_from_slice(&r.u32().to_be_bytes());
            8
        }
        _ => 0,
    };
    let seed = r.u8();
    let n = size.saturating_sub(hdr).min(9000);
    out.extend((0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    let seg_len = out.len() - start;
    if protocol == proto::UDP {
        let l = if r.rare(16) { r.u16() } else { seg_len as u16 };
        put16(out, start + 4, l);
    }
    if let Some(field) = checksum_field(protocol)
        && seg_len >= field + 2
    {
        let p = if protocol == proto::ICMP {
            0
        } else {
            pseudo(src, dst, protocol, seg_len)
        };
        let c = match r.below(16) {
            0..=12 => l4_checksum(p, &out[start..], field),
            // Left partial by checksum offload: the folded pseudo-header sum.
            13 => checksum::fold(p),
            14 => 0,
            _ => r.u16(),
        };
        put16(out, start + field, c);
    }
    protocol
}

/// What a generated IP packet is.
#[derive(Clone, Copy, Debug, Default)]
struct IpFacts {
    /// TTL / hop limit.
    ttl: u8,
    /// Its header checksum was right when built (IPv4).
    checksum_ok: bool,
}

/// An IPv4 or IPv6 packet with fuzzed header fields (options, extension headers, fragments,
/// TTL, ECN) around a [`segment`]; sometimes raw bytes. `role` picks the address pools: 0 for
/// traffic from the remote side, 6 for traffic from the local side. `size` is the total length
/// aimed at.
fn ip_packet(r: &mut Choices, v6: bool, role: usize, size: usize, out: &mut Vec<u8>) -> IpFacts {
    let start = out.len();
    if r.rare(24) {
        let n = r.below(120);
        out.extend_from_slice(r.bytes(n));
        return IpFacts {
            ttl: out
                .get(start + if v6 { 7 } else { 8 })
                .copied()
                .unwrap_or(0),
            ..IpFacts::default()
        };
    }
    let src = addr(r, v6, role);
    let dst = addr(r, v6, 6 - role.min(6));
    let (src, dst) = if v6 {
        (&src[..], &dst[..])
    } else {
        (&src[..4], &dst[..4])
    };
    let ttl = match r.u8() {
        0 => 64,
        t => t,
    };
    let tos = if r.rare(3) { r.u8() } else { 0 };
    let flags = if r.rare(4) { r.u8() } else { 0 };
    let dont_frag = flags & 1 == 0;
    let more = flags & 2 != 0;
    let offset = if flags & 4 != 0 { r.u16() & 0x1fff } else { 0 };
    let mut facts = IpFacts {
        ttl,
        checksum_ok: true,
    };
    if !v6 {
        let opt_words = if r.rare(8) { r.below(11) } else { 0 };
        let hl = 20 + 4 * opt_words;
        out.extend_from_slice(&[0x40 | (hl / 4) as u8, tos, 0, 0]);
        out.extend_from_slice(&r.u16().to_be_bytes());
        let ff = (if dont_frag { 0x4000 } else { 0 }) | (if more { 0x2000 } else { 0 }) | offset;
        out.extend_from_slice(&ff.to_be_bytes());
        out.extend_from_slice(&[ttl, 0, 0, 0]);
        out.extend_from_slice(src);
        out.extend_from_slice(dst);
        for _ in 0..opt_words {
            let w = if r.rare(3) {
                r.u32().to_be_bytes()
            } else {
                [1, 1, 1, 1]
            };
            out.extend_from_slice(&w);
        }
        let p = segment(r, false, src, dst, size.saturating_sub(hl), out);
        out[start + 9] = p;
        let total = out.len() - start;
        let tl = if r.rare(24) { r.u16() } else { total as u16 };
        put16(out, start + 2, tl);
        let c = checksum::checksum(&out[start..start + hl]);
        if r.rare(24) {
            put16(out, start + 10, !c);
            facts.checksum_ok = false;
        } else {
            put16(out, start + 10, c);
        }
    } else {
        let flow = r.u32() & 0xfffff;
        out.extend_from_slice(&[0x60 | tos >> 4, (tos << 4) | (flow >> 16) as u8]);
        out.extend_from_slice(&(flow as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, ttl]);
        out.extend_from_slice(src);
        out.extend_from_slice(dst);
        let mut nh_at = start + 6;
        let exts = if r.rare(4) { r.below(4) } else { 0 };
        for i in 0..exts {
            let kind = match r.below(4) {
                0 if i == 0 => proto::HOPOPT,
                0 | 1 => proto::IPV6_OPTS,
                2 => proto::IPV6_ROUTE,
                _ => proto::IPV6_FRAG,
            };
            out[nh_at] = kind;
            nh_at = out.len();
            if kind == proto::IPV6_FRAG {
                let fo = (offset << 3) | more as u16;
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&fo.to_be_bytes());
                out.extend_from_slice(&r.u32().to_be_bytes());
            } else if kind == proto::IPV6_ROUTE {
                out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
            } else {
                // PadN with four bytes of padding.
                out.extend_from_slice(&[0, 0, 1, 4, 0, 0, 0, 0]);
            }
        }
        let hl = out.len() - start;
        let p = segment(r, true, src, dst, size.saturating_sub(hl), out);
        out[nh_at] = p;
        let total = out.len() - start;
        let pl = if r.rare(24) {
            r.u16()
        } else {
            (total - 40) as u16
        };
        put16(out, start + 4, pl);
    }
    facts
}

/// Ethernet header in front of an IP packet of family `v6`.
fn eth(out: &mut Vec<u8>, dst: [u8; 6], src: [u8; 6], v6: bool) {
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out.extend_from_slice(&if v6 { [0x86, 0xdd] } else { [0x08, 0x00] });
}

// ---------- what a forwarded packet must look like ----------

/// The addresses, protocol and ports of an IP packet, and whether it is a fragment.
#[derive(Clone, Copy)]
struct Flow {
    v6: bool,
    src: u128,
    dst: u128,
    protocol: u8,
    ports: Option<(u16, u16)>,
    fragment: bool,
}

/// Parses a whole IP packet (`pkt` is exactly the packet). `None` when it is not well formed.
fn flow(pkt: &[u8]) -> Option<Flow> {
    let (v6, src, dst, protocol, l4, fragment) = match pkt.first()? >> 4 {
        4 => {
            let p = ipv4::Ipv4Packet::new_checked(pkt).ok()?;
            if p.total_len() != pkt.len() {
                return None;
            }
            let hl = p.header_len();
            (
                false,
                raw_addr(&pkt[12..16]),
                raw_addr(&pkt[16..20]),
                p.protocol(),
                hl,
                p.is_fragment(),
            )
        }
        6 => {
            let p = ipv6::Ipv6Packet::new_checked(pkt).ok()?;
            if p.total_len() != pkt.len() {
                return None;
            }
            let u = ipv6::upper_layer(pkt, pkt.len()).ok()?;
            (
                true,
                raw_addr(&pkt[8..24]),
                raw_addr(&pkt[24..40]),
                u.protocol,
                u.offset,
                u.fragment,
            )
        }
        _ => return None,
    };
    let seg = &pkt[l4..];
    let ports = (matches!(protocol, proto::TCP | proto::UDP) && seg.len() >= 4 && !fragment)
        .then(|| (be16(seg, 0), be16(seg, 2)));
    Some(Flow {
        v6,
        src,
        dst,
        protocol,
        ports,
        fragment,
    })
}

/// RFC 4301 §5.2 / §4.4.1.1 for a packet seen in the direction of `sel` (a fragment carries no
/// ports: only a selector that allows any port can match it).
fn selector_matches(sel: &Selector, f: &Flow, reversed: bool) -> bool {
    let (src, dst) = if reversed {
        (f.dst, f.src)
    } else {
        (f.src, f.dst)
    };
    let (sp, dp) = match (f.ports, reversed) {
        (Some((s, d)), false) => (s, d),
        (Some((s, d)), true) => (d, s),
        (None, _) => (0, 0),
    };
    let ports_ok = if f.fragment {
        sel.src_ports == PortRange::ANY && sel.dst_ports == PortRange::ANY
    } else {
        sel.src_ports.contains(sp) && sel.dst_ports.contains(dp)
    };
    sel.src.contains_raw(f.v6, src)
        && sel.dst.contains_raw(f.v6, dst)
        && sel.protocol.is_none_or(|p| p == f.protocol)
        && ports_ok
}

/// The packet `f` arriving through tunnel `t` of `cfg` is one its policies protect.
fn inbound_allowed(cfg: &Config, t: u32, f: &Flow) -> bool {
    cfg.policies
        .iter()
        .any(|p| p.action == PolicyAction::Protect(t) && selector_matches(&p.selector, f, true))
}

/// What `cfg`'s SPD does with a packet leaving through it (first match; the default).
fn spd_action(cfg: &Config, f: &Flow) -> PolicyAction {
    cfg.policies
        .iter()
        .find(|p| {
            p.selector.src.is_ipv6() == f.v6
                && selector_matches(
                    &p.selector,
                    &Flow {
                        fragment: false,
                        ..*f
                    },
                    false,
                )
        })
        .map_or(cfg.default_policy, |p| p.action)
}

/// RFC 6040 §4.2 (normal mode): the ECN field a decapsulator forwards for an inner and an
/// outer ECN field (`None`: drop).
fn ecn_decap(inner: u8, outer: u8) -> Option<u8> {
    match (inner, outer) {
        (0, 3) => None,
        (0, _) => Some(0),
        (3, _) | (_, 3) => Some(3),
        (2, 1) => Some(1),
        (i, _) => Some(i),
    }
}

/// Asserts that the forwarded IP packet `got` is the packet `want` (the same length) up to
/// what a forwarding gateway may change: the TTL / hop limit (down by at most `hops`), the ECN
/// field (as RFC 6040 combines it with `outer_ecn`, if decapsulated from a header that had
/// one), the IPv4 header checksum (which must then verify when `want`'s did) and, when
/// `l4_fixed`, a transport checksum (which must then verify).
fn assert_same_packet(
    got: &[u8],
    want: &[u8],
    hops: u8,
    outer_ecn: Option<u8>,
    l4_fixed: bool,
    what: &str,
) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: forwarded packet has {} bytes, sent {}",
        got.len(),
        want.len()
    );
    let v6 = want[0] >> 4 == 6;
    let (ttl_at, ecn_byte, ecn_mask, ecn_shift) =
        if v6 { (7, 1, 0x30, 4) } else { (8, 1, 0x03, 0) };
    let ttl = got[ttl_at];
    assert!(
        ttl <= want[ttl_at] && want[ttl_at] - ttl <= hops,
        "{what}: TTL {} forwarded as {ttl}",
        want[ttl_at]
    );
    let (e_in, e_out) = (
        (want[ecn_byte] & ecn_mask) >> ecn_shift,
        (got[ecn_byte] & ecn_mask) >> ecn_shift,
    );
    assert!(
        e_in == e_out || outer_ecn.and_then(|o| ecn_decap(e_in, o)) == Some(e_out),
        "{what}: ECN {e_in} (outer {outer_ecn:?}) forwarded as {e_out}"
    );
    let hl = if v6 {
        40
    } else {
        ((want[0] & 0xf) as usize * 4).min(want.len())
    };
    let l4 = flow(want).map(|f| (f.protocol, f.fragment));
    let l4_at = if v6 {
        ipv6::upper_layer(want, want.len()).map_or(want.len(), |u| u.offset)
    } else {
        hl
    };
    let l4_field = match l4 {
        Some((p, false)) if l4_fixed => checksum_field(p)
            .map(|f| l4_at + f)
            .filter(|f| f + 2 <= want.len()),
        _ => None,
    };
    for i in 0..want.len() {
        let skip = i == ttl_at
            || (i == ecn_byte)
            || (!v6 && (i == 10 || i == 11))
            || l4_field.is_some_and(|f| i == f || i == f + 1);
        if skip {
            continue;
        }
        assert_eq!(
            got[i], want[i],
            "{what}: byte {i} of the packet changed ({:#04x} sent, {:#04x} forwarded)",
            want[i], got[i]
        );
    }
    assert_eq!(
        got[ecn_byte] & !ecn_mask,
        want[ecn_byte] & !ecn_mask,
        "{what}: traffic class changed"
    );
    if !v6 {
        let was_ok = checksum::fold(checksum::sum(0, &want[..hl])) == 0xffff;
        let is_ok = checksum::fold(checksum::sum(0, &got[..hl])) == 0xffff;
        assert!(
            !was_ok || is_ok || got[8] == want[8],
            "{what}: IPv4 header checksum broken on the way"
        );
    }
    if let Some(f) = l4_field
        && be16(got, f) != be16(want, f)
    {
        let (s, d) = if v6 {
            (&got[8..24], &got[24..40])
        } else {
            (&got[12..16], &got[16..20])
        };
        let (p, _) = l4.unwrap_or_default();
        assert!(
            l4_checksum_ok(p, s, d, &got[l4_at..]),
            "{what}: transport checksum rewritten to a wrong value"
        );
    }
}

// ---------- inbound_sealed ----------

/// What one run of [`inbound_sealed`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SealedRun {
    /// Frames built and offered.
    pub frames: usize,
    /// Of those, forwarded to the plain side.
    pub tx: usize,
}

/// The harness's model of one inbound SA's replay window.
struct WindowModel {
    /// Highest number known accepted (a lower bound of the real top).
    top: u64,
    window: u64,
    /// Numbers accepted (imported or forwarded).
    accepted: HashSet<u64>,
    /// Numbers sent so far (to replay).
    sent: Vec<u64>,
}

/// What the harness knows of a frame it built.
struct Sent {
    si: usize,
    /// Not a genuine packet of SA `si` (other key, unknown SPI, bits flipped): never forwarded.
    forged: bool,
    seq: u64,
    transport: bool,
    /// The plaintext before padding: the inner packet and TFC padding (tunnel), the upper
    /// layer (transport). `None` when the pad length leaves nothing.
    data: Option<Vec<u8>>,
    /// Transport: the outer IP header length (the rebuilt packet keeps it) and next header.
    outer_hl: usize,
    /// The ECN field of the outer header.
    outer_ecn: u8,
    /// Addressed to the gateway (else cleartext crossing it: forwarded only by a bypass
    /// policy, unchanged).
    to_us: bool,
    /// The frame as built.
    frame: Vec<u8>,
    next_header: u8,
    facts: IpFacts,
}

/// The sequence number of the next frame for an SA, in its 64-bit form.
fn choose_seq(r: &mut Choices, m: &WindowModel, esn: bool) -> u64 {
    let s = match r.below(12) {
        0..=4 => m.top + 1,
        5 => m.top + 2 + r.below(64) as u64,
        6 => match m.sent.len() {
            0 => m.top,
            n => m.sent[r.below(n)],
        },
        7 => m.top.saturating_sub(r.below(m.window as usize + 2) as u64),
        8 => m.top + r.u32() as u64,
        9 => 0,
        10 => (1u64 << 32) - 4 + r.below(8) as u64,
        _ => r.u32() as u64,
    };
    if esn { s } else { s & 0xffff_ffff }
}

/// One frame for B's cipher side: ESP for one of its inbound SAs, sealed under that SA's key
/// (or a deliberate mistake), with the inner packet, padding and trailer fuzzed.
fn sealed_frame(r: &mut Choices, pair: &Pair, models: &[WindowModel]) -> (Vec<u8>, Sent) {
    let n = pair.seal.len();
    let sel = r.below(n + 2);
    let si = if sel < n { sel } else { r.below(n) };
    let ki = if r.rare(24) { r.below(n) } else { si };
    let s = &pair.seal[si];
    let spi = match sel {
        _ if sel < n => s.spi,
        x if x == n => r.u32(),
        _ => 0x2001,
    };
    let mut forged = ki != si || spi != s.spi;
    let seq = choose_seq(r, &models[si], s.esn);
    let tunnel = &pair.b.tunnels[s.tunnel as usize];
    let tunnel_v6 = tunnel.endpoints.local.is_ipv6();
    let outer_v6 = tunnel_v6 != r.rare(8);
    let udp_encap = tunnel.encap.is_some() != r.rare(8);

    // The plaintext: inner packet (tunnel) or upper layer (transport), then TFC padding.
    let mut pt = Vec::with_capacity(1600);
    let (outer_src, outer_dst) = {
        let ours = |v6: bool| {
            let mut a = [0u8; 16];
            let x = if v6 {
                v6_pool(8).to_vec()
            } else {
                vec![203, 0, 113, 2]
            };
            a[..x.len()].copy_from_slice(&x);
            a
        };
        let theirs = |v6: bool| {
            let mut a = [0u8; 16];
            match (v6, tunnel.endpoints.remote) {
                (false, IpAddr::V4(x)) => a[..4].copy_from_slice(&x.octets()),
                (true, IpAddr::V6(x)) => a = x.octets(),
                (false, _) => a[..4].copy_from_slice(&[203, 0, 113, 1]),
                (true, _) if s.transport => a = v6_pool(5),
                (true, _) => a = v6_pool(9),
            }
            a
        };
        let src = if r.rare(8) {
            addr(r, outer_v6, 0)
        } else {
            theirs(outer_v6)
        };
        let dst = if r.rare(16) {
            addr(r, outer_v6, 6)
        } else {
            ours(outer_v6)
        };
        (src, dst)
    };
    let alen = if outer_v6 { 16 } else { 4 };
    let size = match r.below(4) {
        0 | 1 => 40 + r.below(200),
        2 => r.below(1500),
        _ => 1200 + r.below(400),
    };
    let (facts, default_nh) = if s.transport {
        let p = segment(
            r,
            outer_v6,
            &outer_src[..alen],
            &outer_dst[..alen],
            size,
            &mut pt,
        );
        (IpFacts::default(), p)
    } else {
        let inner_v6 = r.below(3) == 2;
        let f = ip_packet(r, inner_v6, 0, size, &mut pt);
        (f, if inner_v6 { proto::IPV6 } else { proto::IPV4 })
    };
    if r.rare(4) {
        let tfc = r.below(64);
        pt.extend(std::iter::repeat_n(0u8, tfc));
    }
    let base = (4 - (pt.len() + 2) % 4) % 4;
    let pad = base + if r.rare(6) { 4 * r.below(8) } else { 0 };
    let pad_at = pt.len();
    pt.extend((1..=pad).map(|i| i as u8));
    if pad > 0 && r.rare(16) {
        let i = pad_at + r.below(pad);
        pt[i] ^= r.u8() | 1;
    }
    let pad_len = if r.rare(24) { r.u8() } else { pad as u8 };
    let next_header = match r.below(16) {
        0..=11 => default_nh,
        12 => proto::IPV6_NONXT,
        13 => {
            if default_nh == proto::IPV4 {
                proto::IPV6
            } else {
                proto::IPV4
            }
        }
        14 => 0,
        _ => r.u8(),
    };
    pt.push(pad_len);
    pt.push(next_header);
    if r.rare(32) {
        match r.below(2) {
            0 => pt.truncate(pt.len() - 1 - r.below(2)),
            _ => pt.extend(std::iter::repeat_n(0u8, 1 + r.below(3))),
        }
    }
    let data =
        (pad_len as usize + 2 <= pt.len()).then(|| pt[..pt.len() - 2 - pad_len as usize].to_vec());

    // The frame: Ethernet, outer IP, UDP, ESP header, IV, ciphertext, ICV.
    let mut f = Vec::with_capacity(pt.len() + 128);
    eth(&mut f, [2, 0, 0, 0, 0x0b, 0x11], MAC_PEER, outer_v6);
    let ip_at = f.len();
    let hop_by_hop = outer_v6 && r.rare(16);
    let outer_hl = if outer_v6 {
        40 + if hop_by_hop { 8 } else { 0 }
    } else {
        20
    };
    f.resize(ip_at + outer_hl, 0);
    let udp_at = f.len();
    if udp_encap {
        f.resize(udp_at + 8, 0);
    }
    let esp_at = f.len();
    let esp_len = esp::HEADER_LEN + esp::IV_LEN + pt.len() + esp::ICV_LEN;
    f.resize(esp_at + esp_len, 0);
    f[esp_at + 16..esp_at + 16 + pt.len()].copy_from_slice(&pt);
    let iv = if r.rare(16) {
        r.u64().to_be_bytes()
    } else {
        seq.to_be_bytes()
    };
    let sealed = crate::esp::encap::seal_at(&pair.seal[ki].sa, seq, iv, &mut f[esp_at..], pt.len());
    if sealed.is_err() {
        forged = true;
    }
    f[esp_at..esp_at + 4].copy_from_slice(&spi.to_be_bytes());
    if r.rare(24) {
        let i = esp_at + r.below(esp_len);
        f[i] ^= r.u8() | 1;
        forged = true;
    }
    let l4_len = f.len() - udp_at;
    let l4_proto = if udp_encap { proto::UDP } else { proto::ESP };
    if udp_encap {
        let sport = if r.rare(8) { r.u16() } else { 4500 };
        let dport = if r.rare(16) { r.u16() } else { 4500 };
        let ulen = if r.rare(16) { r.u16() } else { l4_len as u16 };
        put16(&mut f, udp_at, sport);
        put16(&mut f, udp_at + 2, dport);
        put16(&mut f, udp_at + 4, ulen);
        if outer_v6 {
            let p = pseudo(&outer_src, &outer_dst, proto::UDP, l4_len);
            let c = l4_checksum(p, &f[udp_at..], 6);
            put16(&mut f, udp_at + 6, if c == 0 { 0xffff } else { c });
        }
    }
    let tos = if r.rare(4) { r.u8() } else { 0 };
    if outer_v6 {
        let h = &mut f[ip_at..];
        h[0] = 0x60 | tos >> 4;
        h[1] = tos << 4;
        let pl = if r.rare(24) {
            r.u16()
        } else {
            (outer_hl - 40 + l4_len) as u16
        };
        put16(h, 4, pl);
        h[6] = if hop_by_hop { proto::HOPOPT } else { l4_proto };
        h[7] = 64;
        h[8..24].copy_from_slice(&outer_src);
        h[24..40].copy_from_slice(&outer_dst);
        if hop_by_hop {
            h[40..48].copy_from_slice(&[l4_proto, 0, 1, 4, 0, 0, 0, 0]);
        }
    } else {
        let total = if r.rare(24) {
            r.u16()
        } else {
            (20 + l4_len) as u16
        };
        let ff = if r.rare(16) { r.u16() } else { 0x4000 };
        let ttl = if r.rare(16) { r.u8() } else { 64 };
        let id = r.u16();
        let h = &mut f[ip_at..ip_at + 20];
        h[0] = 0x45;
        h[1] = tos;
        put16(h, 2, total);
        put16(h, 4, id);
        put16(h, 6, ff);
        h[8] = ttl;
        h[9] = l4_proto;
        h[12..16].copy_from_slice(&outer_src[..4]);
        h[16..20].copy_from_slice(&outer_dst[..4]);
        let c = checksum::checksum(h);
        put16(h, 10, if r.rare(32) { !c } else { c });
    }
    if r.rare(16) {
        // Ethernet padding after the IP packet.
        let n = r.below(16);
        f.extend(std::iter::repeat_n(0u8, n));
    }
    let to_us = pair
        .b
        .plain
        .addresses
        .iter()
        .chain(&pair.b.cipher.addresses)
        .any(|a| match a {
            IpAddr::V4(x) => !outer_v6 && x.octets() == outer_dst[..4],
            IpAddr::V6(x) => outer_v6 && x.octets() == outer_dst,
        });
    (
        f.clone(),
        Sent {
            si,
            forged,
            seq,
            transport: s.transport,
            data,
            outer_hl,
            outer_ecn: tos & 3,
            to_us,
            frame: f,
            next_header,
            facts,
        },
    )
}

/// Asserts that `out`, a frame B forwarded to its plain side, is `sent`'s packet (well formed,
/// intact up to what forwarding may change) and within the SA's selectors.
fn check_forwarded(pair: &Pair, out: &[u8], sent: &Sent) {
    let s = &pair.seal[sent.si];
    assert!(out.len() >= 14, "forwarded frame shorter than Ethernet");
    let l2 = pair.b.pipeline_config().plain;
    assert_eq!(
        out[..6],
        l2.next_hop,
        "forwarded frame: wrong destination MAC"
    );
    let pkt = &out[14..];
    let f = flow(pkt).unwrap_or_else(|| {
        panic!(
            "SA {:#x}: forwarded a packet that is not well formed",
            s.spi
        )
    });
    let et = be16(out, 12);
    assert_eq!(
        et,
        if f.v6 { 0x86dd } else { 0x0800 },
        "forwarded frame: wrong ethertype"
    );
    let data = sent.data.as_deref().unwrap_or_else(|| {
        panic!(
            "SA {:#x}: forwarded a frame whose pad length is larger than its payload",
            s.spi
        )
    });
    let what = format!("SA {:#x} seq {}", s.spi, sent.seq);
    if sent.transport {
        assert_eq!(
            pkt.len(),
            sent.outer_hl + data.len(),
            "{what}: transport packet rebuilt with the wrong length"
        );
        assert_eq!(
            &pkt[sent.outer_hl..],
            data,
            "{what}: transport payload changed"
        );
        if !f.v6 {
            assert_eq!(pkt[9], sent.next_header, "{what}: wrong protocol restored");
        }
    } else {
        assert!(
            pkt.len() <= data.len(),
            "{what}: forwarded {} bytes from {} of plaintext",
            pkt.len(),
            data.len()
        );
        assert_same_packet(
            pkt,
            &data[..pkt.len()],
            1,
            Some(sent.outer_ecn),
            false,
            &what,
        );
    }
    assert!(
        inbound_allowed(&pair.b, s.tunnel, &f),
        "{what}: forwarded a packet outside the SA's selectors (protocol {}, ports {:?}, fragment {})",
        f.protocol,
        f.ports,
        f.fragment
    );
}

/// Cleartext that crossed B from its cipher side (`out`, sent as `orig`): only a bypass
/// policy forwards it, unchanged but for the MAC addresses.
fn check_bypass(pair: &Pair, out: &[u8], orig: &[u8]) {
    let ip = &orig[14..];
    let f = flow(&ip[..ip_len(ip).min(ip.len())])
        .expect("forwarded malformed cleartext from the cipher side");
    let back = Flow {
        src: f.dst,
        dst: f.src,
        ports: f.ports.map(|(s, d)| (d, s)),
        ..f
    };
    assert_eq!(
        spd_action(&pair.b, &back),
        PolicyAction::Bypass,
        "forwarded cleartext from the cipher side without a bypass policy"
    );
    assert_eq!(&out[14..], &orig[14..], "bypass changed the packet");
}

/// Structure-aware inbound: a sequence of batches of ESP frames built from the input and sealed
/// under the keys of gateway B's inbound SAs (fuzz/configs/gw-b.toml), through one fresh
/// gateway. Asserts: a frame forwarded (`Tx`) is genuine, carries a sequence number never
/// forwarded before and not older than the window, and is the packet that was sealed (up to
/// TTL and ECN), well formed and within its SA's selectors; `TxBack` only answers a genuine
/// packet whose TTL ran out.
pub fn inbound_sealed(data: &[u8]) -> SealedRun {
    let pair = pair();
    let mut r = Choices::new(data);
    // Replay windows: empty, or resumed near the 2^32 boundary, or anywhere.
    let mut models: Vec<WindowModel> = pair
        .seal
        .iter()
        .map(|s| {
            let top = match r.below(8) {
                0..=4 => 0,
                5 if s.esn => (1u64 << 32) - 1 - r.below(2 * s.window as usize) as u64,
                5 => u32::MAX as u64 - r.below(300) as u64,
                6 if s.esn => r.u32() as u64 | (r.below(3) as u64) << 32,
                6 => r.u32() as u64,
                _ => r.below(5000) as u64,
            };
            WindowModel {
                top,
                window: s.window,
                accepted: if top > 0 {
                    HashSet::from([top])
                } else {
                    HashSet::new()
                },
                sent: Vec::new(),
            }
        })
        .collect();
    let tops: Vec<(u32, u64)> = pair
        .seal
        .iter()
        .zip(&models)
        .map(|(s, m)| (s.spi, m.top))
        .collect();
    let dp = dataplane(&pair.b, |spi, d| {
        let top = tops
            .iter()
            .find(|(s, _)| *s == spi && d == Direction::Inbound)?
            .1;
        (top > 0).then(|| SaState {
            replay_top: Some(top),
            ..SaState::default()
        })
    });
    let pc = pipeline_config(&pair.b, &mut r);
    let stats = CoreStats::default();
    let events: ArrayQueue<SaEvent> = ArrayQueue::new(64);
    let mut p = Pipeline::new(&dp, 0, &stats, &events, pc);
    let mut run = SealedRun::default();
    let mut now = 1_000;
    while !r.is_empty() && run.frames < 64 {
        now = advance(&mut r, now);
        let n = 1 + if r.rare(3) { r.below(6) } else { 0 };
        let mut frames = Vec::with_capacity(n);
        let mut sent = Vec::with_capacity(n);
        for _ in 0..n {
            let (f, e) = sealed_frame(&mut r, pair, &models);
            models[e.si].sent.push(e.seq);
            frames.push(Frame::from_packet(&f));
            sent.push(e);
        }
        let mut actions = vec![Action::Punt; n];
        p.inbound(&mut frames, now, &mut actions);
        while events.pop().is_some() {}
        for ((f, a), e) in frames.iter().zip(&actions).zip(&sent) {
            run.frames += 1;
            let spi = pair.seal[e.si].spi;
            let m = &mut models[e.si];
            match a {
                Action::Tx if !e.to_us => check_bypass(pair, f.bytes(), &e.frame),
                Action::Tx => {
                    assert!(!e.forged, "SA {spi:#x}: forwarded a forged frame");
                    assert!(e.seq != 0, "SA {spi:#x}: accepted sequence number 0");
                    assert!(
                        !m.accepted.contains(&e.seq),
                        "SA {spi:#x}: accepted sequence number {} twice",
                        e.seq
                    );
                    assert!(
                        e.seq.saturating_add(m.window) > m.top,
                        "SA {spi:#x}: accepted {} behind the window (top {})",
                        e.seq,
                        m.top
                    );
                    check_forwarded(pair, f.bytes(), e);
                    m.accepted.insert(e.seq);
                    m.top = m.top.max(e.seq);
                    run.tx += 1;
                }
                Action::TxBack => {
                    // Only an ICMP time exceeded for a genuine inner packet whose TTL ran out.
                    assert!(e.to_us, "answered cleartext crossing the gateway");
                    assert!(!e.forged, "SA {spi:#x}: answered a forged frame");
                    assert!(
                        !e.transport && e.facts.ttl <= 1,
                        "SA {spi:#x}: sent a frame back for seq {} (inner TTL {})",
                        e.seq,
                        e.facts.ttl
                    );
                    assert!(
                        !m.accepted.contains(&e.seq),
                        "SA {spi:#x}: accepted sequence number {} twice",
                        e.seq
                    );
                    m.accepted.insert(e.seq);
                    m.top = m.top.max(e.seq);
                }
                Action::Drop(_) | Action::Punt => {}
            }
        }
    }
    run
}

// ---------- outbound ----------

/// What one run of [`outbound`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboundRun {
    pub frames: usize,
    /// Frames B encapsulated that A opened and forwarded.
    pub tx: usize,
    /// ICMP errors sent back.
    pub icmp: usize,
}

/// Asserts that `out` (B sent it back to the plain side) is an ICMP error about `orig` (the
/// frame as it came in): too big (RFC 1191, RFC 8201) or time exceeded, from B's plain address,
/// with correct checksums, quoting the start of `orig`, and sent only when RFC 1812 §4.3.2.7 /
/// RFC 4443 §2.4 (e) allow an error at all.
fn check_icmp_error(pair: &Pair, out: &[u8], orig: &[u8]) {
    assert!(out.len() >= 14 + 28, "ICMP error shorter than its headers");
    assert_eq!(
        out[..6],
        orig[6..12],
        "ICMP error not sent back to the sender's MAC"
    );
    let pkt = &out[14..];
    let ip = &orig[14..];
    let ip = &ip[..ip_len(ip).min(ip.len())];
    let f = flow(pkt).expect("ICMP error is not a well-formed IP packet");
    let o = flow(ip);
    let pc = pair.b.pipeline_config();
    if f.v6 {
        let src: [u8; 16] = pc.plain_v6.expect("IPv6 plain address").octets();
        assert_eq!(
            f.protocol,
            proto::ICMPV6,
            "ICMPv6 error has protocol {}",
            f.protocol
        );
        assert_eq!(
            pkt[8..24],
            src,
            "ICMPv6 error not from the gateway's LAN address"
        );
        assert_eq!(
            pkt[24..40],
            ip[8..24],
            "ICMPv6 error not to the packet's source"
        );
        let icmp = &pkt[40..];
        assert!(
            matches!((icmp[0], icmp[1]), (2, 0) | (3, 0)),
            "ICMPv6 error of type {} code {}",
            icmp[0],
            icmp[1]
        );
        assert!(
            l4_checksum_ok(proto::ICMPV6, &pkt[8..24], &pkt[24..40], icmp),
            "ICMPv6 error with a wrong checksum"
        );
        let quoted = &icmp[8..];
        assert!(
            quoted.len() <= ip.len() && pkt.len() <= 1280,
            "ICMPv6 error quotes too much"
        );
        if icmp[0] == 2 {
            let mtu = be32(icmp, 4) as usize;
            assert!(
                mtu >= 1280 - 80 && mtu < ip_len(ip),
                "packet too big with MTU {mtu}"
            );
        }
    } else {
        let src = pc.plain_v4.expect("IPv4 plain address").octets();
        assert_eq!(
            f.protocol,
            proto::ICMP,
            "ICMP error has protocol {}",
            f.protocol
        );
        assert_eq!(
            pkt[12..16],
            src,
            "ICMP error not from the gateway's LAN address"
        );
        assert_eq!(
            pkt[16..20],
            ip[12..16],
            "ICMP error not to the packet's source"
        );
        let hl = (pkt[0] & 0xf) as usize * 4;
        assert!(
            checksum::fold(checksum::sum(0, &pkt[..hl])) == 0xffff,
            "ICMP error with a wrong IP header checksum"
        );
        let icmp = &pkt[hl..];
        assert!(
            matches!((icmp[0], icmp[1]), (3, 4) | (11, 0)),
            "ICMP error of type {} code {}",
            icmp[0],
            icmp[1]
        );
        assert!(
            checksum::fold(checksum::sum(0, icmp)) == 0xffff,
            "ICMP error with a wrong checksum"
        );
        assert!(pkt.len() <= 576, "ICMP error longer than 576 bytes");
        if icmp[0] == 3 {
            // RFC 1191: "fragmentation needed" answers DF packets only (issue 11, defect 15).
            assert!(
                be16(ip, 6) & 0x4000 != 0,
                "fragmentation needed sent for a packet without DF"
            );
            let mtu = be16(icmp, 6) as usize;
            assert!(
                mtu >= 68 && mtu < ip_len(ip),
                "fragmentation needed with MTU {mtu}"
            );
        }
    }
    // RFC 1812 §4.3.2.7, RFC 4443 §2.4 (e): no error about an ICMP error, a fragment other than
    // the first, or a packet from an unspecified, multicast or broadcast source.
    if let Some(o) = o {
        let later = later_fragment(ip);
        let bad_src = if o.v6 {
            o.src == 0 || o.src >> 120 == 0xff
        } else {
            o.src == 0 || o.src >= 0xe000_0000
        };
        // RFC 4443 §2.4 (e.3): packet too big may answer a multicast destination.
        let bad_dst = if o.v6 {
            o.dst >> 120 == 0xff && pkt[40] != 2
        } else {
            o.dst >= 0xe000_0000
        };
        let l4 = if o.v6 {
            ipv6::upper_layer(ip, ip_len(ip)).map_or(ip.len(), |u| u.offset)
        } else {
            (ip[0] & 0xf) as usize * 4
        };
        let icmp_error = match (o.v6, o.protocol, ip.get(l4)) {
            (false, proto::ICMP, Some(t)) => matches!(t, 3 | 4 | 5 | 11 | 12),
            (true, proto::ICMPV6, Some(t)) => *t < 128,
            _ => false,
        };
        assert!(
            known("icmp-error-rules") || !(later || bad_src || bad_dst || icmp_error),
            "ICMP error (type {}) sent about a packet that must not get one (later fragment {later}, source or destination multicast/broadcast/unspecified {}, ICMP error {icmp_error})",
            pkt[if o.v6 { 40 } else { 20 }],
            bad_src || bad_dst
        );
    }
}

/// The IP total length `ip` claims (0 when it claims nothing).
fn ip_len(ip: &[u8]) -> usize {
    match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= 20 => be16(ip, 2) as usize,
        Some(6) if ip.len() >= 40 => 40 + be16(ip, 4) as usize,
        _ => 0,
    }
}

/// A fragment other than the first.
fn later_fragment(ip: &[u8]) -> bool {
    if ip[0] >> 4 == 4 {
        return be16(ip, 6) & 0x1fff != 0;
    }
    // Walk to the fragment header, if any.
    let mut nh = ip[6];
    let mut off = 40;
    for _ in 0..=ipv6::MAX_EXT_HEADERS {
        match nh {
            proto::HOPOPT | proto::IPV6_ROUTE | proto::IPV6_OPTS if off + 2 <= ip.len() => {
                nh = ip[off];
                off += (ip[off + 1] as usize + 1) * 8;
            }
            proto::IPV6_FRAG if off + 4 <= ip.len() => return be16(ip, off + 2) & 0xfff8 != 0,
            _ => return false,
        }
    }
    false
}

/// The ESP packet inside a frame B sent out of its cipher side: (SPI, 32-bit seq, IV, outer IP
/// length), when the frame carries ESP (raw or in UDP/4500).
fn esp_of(out: &[u8]) -> Option<(u32, u32, [u8; 8], usize)> {
    let ip = out.get(14..)?;
    let f = flow(&ip[..ip_len(ip).min(ip.len())])?;
    let l4 = if f.v6 {
        ipv6::upper_layer(ip, ip_len(ip)).ok()?.offset
    } else {
        (ip[0] & 0xf) as usize * 4
    };
    let at = match f.protocol {
        proto::ESP => l4,
        proto::UDP if f.ports.is_some_and(|(_, d)| d == udp::NAT_T_PORT) => l4 + 8,
        _ => return None,
    };
    let e = esp::EspPacket::new_checked(ip.get(at..ip_len(ip))?).ok()?;
    Some((e.spi(), e.seq(), e.iv(), ip_len(ip)))
}

/// Structure-aware outbound: fuzzed inner packets (IPv4 with options and fragments, IPv6 with
/// extension headers, several protocols and ports, sizes around the tunnels' MTUs) from B's
/// plain side through SPD, MTU, ICMP and encapsulation (fuzz/configs/gw-b.toml). Asserts: every
/// ESP frame B sends fits its tunnel's MTU, never repeats a nonce, and B's peer A
/// (fuzz/configs/gw-a.toml) opens it back into the original packet (up to TTL); cleartext
/// leaves only for bypass policies, unchanged; `TxBack` frames are ICMP errors allowed by RFC
/// 1812 / RFC 4443.
pub fn outbound(data: &[u8]) -> OutboundRun {
    let pair = pair();
    let mut r = Choices::new(data);
    // Sequence counters: fresh, or resumed near the end of the 32-bit space, or anywhere.
    let starts: Vec<(u32, u64)> = pair
        .b
        .sas
        .iter()
        .filter(|(_, p)| p.direction == Direction::Outbound)
        .map(|(_, p)| {
            let s = match r.below(8) {
                0..=5 => 0,
                6 => u32::MAX as u64 - r.below(12) as u64,
                _ => r.u32() as u64,
            };
            (p.spi, s)
        })
        .collect();
    let start = |spi: u32| starts.iter().find(|(s, _)| *s == spi).map_or(0, |x| x.1);
    let dp_b = dataplane(&pair.b, |spi, d| {
        (d == Direction::Outbound && start(spi) > 0).then(|| SaState {
            seq: Some(start(spi)),
            ..SaState::default()
        })
    });
    let dp_a = dataplane(&pair.a, |spi, d| {
        (d == Direction::Inbound && start(spi) > 0).then(|| SaState {
            replay_top: Some(start(spi)),
            ..SaState::default()
        })
    });
    let pc_b = pipeline_config(&pair.b, &mut r);
    let pc_a = pair.a.pipeline_config();
    let (stats_b, stats_a) = (CoreStats::default(), CoreStats::default());
    let events: ArrayQueue<SaEvent> = ArrayQueue::new(64);
    let mut pb = Pipeline::new(&dp_b, 0, &stats_b, &events, pc_b);
    let mut pa = Pipeline::new(&dp_a, 0, &stats_a, &events, pc_a);
    let mut nonces: HashSet<(u32, [u8; 8])> = HashSet::new();
    let mut run = OutboundRun::default();
    let mut now = 1_000;
    while !r.is_empty() && run.frames < 64 {
        now = advance(&mut r, now);
        let n = 1 + if r.rare(3) { r.below(6) } else { 0 };
        let mut frames = Vec::with_capacity(n);
        let mut origs = Vec::with_capacity(n);
        for _ in 0..n {
            let mut f = Vec::with_capacity(1600);
            let facts = match r.below(24) {
                0 => {
                    // Not IP, or truncated.
                    let k = r.below(64);
                    f.extend_from_slice(r.bytes(k));
                    IpFacts::default()
                }
                k => {
                    let v6 = k % 3 == 0;
                    let size = match r.below(4) {
                        0 | 1 => 28 + r.below(200),
                        2 => {
                            let mtu = r.pick(&[1500usize, 1400, 1280, 576]);
                            (mtu + 8).saturating_sub(r.below(112))
                        }
                        _ => r.below(2000),
                    };
                    eth(&mut f, [2, 0, 0, 0, 0x0b, 0x01], MAC_HOST, v6);
                    ip_packet(&mut r, v6, 6, size, &mut f)
                }
            };
            frames.push(Frame::from_packet(&f));
            origs.push((f, facts));
        }
        let mut actions = vec![Action::Punt; n];
        pb.outbound(&mut frames, now, &mut actions);
        while events.pop().is_some() {}
        for ((f, a), (orig, facts)) in frames.iter().zip(&actions).zip(&origs) {
            run.frames += 1;
            let out = f.bytes();
            match a {
                Action::Tx => {
                    check_sent(pair, &mut pa, now, out, orig, facts, &mut nonces, &mut run);
                }
                Action::TxBack => {
                    check_icmp_error(pair, out, orig);
                    run.icmp += 1;
                }
                Action::Drop(_) | Action::Punt => {}
            }
        }
    }
    run
}

/// A frame B sent out of its cipher side for the plain-side frame `orig`.
#[allow(clippy::too_many_arguments)]
fn check_sent(
    pair: &Pair,
    pa: &mut Pipeline<'_>,
    now: u64,
    out: &[u8],
    orig: &[u8],
    facts: &IpFacts,
    nonces: &mut HashSet<(u32, [u8; 8])>,
    run: &mut OutboundRun,
) {
    let ip = &orig[14..];
    let ip = &ip[..ip_len(ip).min(ip.len())];
    // Cleartext leaves only for a bypass policy, unchanged but for the MAC addresses.
    if let Some(f) = flow(ip)
        && spd_action(&pair.b, &f) == PolicyAction::Bypass
    {
        assert_eq!(&out[14..], &orig[14..], "bypass changed the packet");
        return;
    }
    let (spi, _seq, iv, outer_len) =
        esp_of(out).unwrap_or_else(|| panic!("sent a packet in the clear without a bypass policy"));
    let (t, p) = pair
        .b
        .sas
        .iter()
        .find(|(_, p)| p.spi == spi && p.direction == Direction::Outbound)
        .unwrap_or_else(|| panic!("ESP sent under SPI {spi:#x}, not one of B's outbound SAs"));
    // RFC 4106 §3.1: a nonce is never used twice under one key.
    assert!(
        nonces.insert((spi, iv)),
        "SA {spi:#x}: IV {iv:02x?} used twice"
    );
    let mtu = pair.b.tunnels[*t as usize].mtu as usize;
    assert!(
        outer_len <= mtu,
        "SA {spi:#x}: sent {outer_len} bytes into a tunnel of MTU {mtu}"
    );
    let _ = p;
    let mut fr = [Frame::from_packet(out)];
    let mut act = [Action::Punt];
    pa.inbound(&mut fr, now, &mut act);
    let what = format!("SA {spi:#x}");
    match act[0] {
        Action::Tx => {
            let got = &fr[0].bytes()[14..];
            let transport = pair.b.tunnels[*t as usize].mode == Mode::Transport;
            // The tunnel: two forwarding hops. Transport: the end hosts' own packet.
            let hops = if transport { 0 } else { 2 };
            assert_same_packet(got, ip, hops, None, true, &what);
            run.tx += 1;
        }
        Action::TxBack => {
            assert!(
                facts.ttl <= 2,
                "{what}: the peer answered a packet with TTL {}",
                facts.ttl
            );
        }
        Action::Drop(r) if r.name() == "ttl_exceeded" && facts.ttl <= 2 => {}
        other => panic!("{what}: the peer refused what the gateway sent: {other:?}"),
    }
}

// ---------- control ----------

/// Keys (lower-case hex, no prefix) in the `key` fields of a config text or request line:
/// everything quoted after `key` and `=` or `:`, 32 hex digits or more.
fn config_keys(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(k) = text[i..].find("key") {
        let mut j = i + k + 3;
        i = j;
        while j < b.len() && matches!(b[j], b' ' | b'\t' | b'"' | b'=' | b':') {
            j += 1;
        }
        let end = b[j..]
            .iter()
            .position(|c| !c.is_ascii_alphanumeric())
            .map_or(b.len(), |e| j + e);
        let v = text[j..end].to_ascii_lowercase();
        let v = v.strip_prefix("0x").unwrap_or(&v);
        if v.len() >= 32 && v.bytes().all(|c| c.is_ascii_hexdigit()) {
            out.push(v.to_string());
        }
    }
    out
}

/// Keys present in a JSON request: every string under a `key` field, at any depth.
fn json_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "key"
                    && let Value::String(s) = x
                {
                    let s = s.trim().to_ascii_lowercase();
                    let s = s.strip_prefix("0x").unwrap_or(&s);
                    if s.len() >= 32 {
                        out.push(s.to_string());
                    }
                }
                json_keys(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| json_keys(x, out)),
        _ => {}
    }
}

/// Strings of a JSON request that are not keys (names, addresses...): an answer may echo
/// them, so a key that also appears among them is not a secret the answer leaked.
fn json_other_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.push(k.to_ascii_lowercase());
                match x {
                    Value::String(_) if k == "key" => {}
                    _ => json_other_strings(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| json_other_strings(x, out)),
        Value::String(s) => out.push(s.to_ascii_lowercase()),
        _ => {}
    }
}

const TUNNELS: [&str; 7] = ["v4", "v4udp", "v6", "ports", "transport", "nope", ""];
const INSTALLED: [u32; 11] = [
    0x1001, 0x1002, 0x1003, 0x1004, 0x1005, 0x1006, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005,
];

fn gen_spi(r: &mut Choices) -> Value {
    match r.below(12) {
        0..=3 => json!(r.pick(&INSTALLED)),
        4 => json!(format!("{:#x}", r.pick(&INSTALLED))),
        5..=7 => json!(0x3000 + r.below(16)),
        8 => json!(format!("0x{:08x}", 0x3000 + r.below(16))),
        9 => json!(r.pick(&[0i64, 255, 256, -1, 1 << 32, i64::MAX, i64::MIN])),
        10 => json!(r.pick(&["zz", "", "0x", "0x1g", "4096 ", "1e3"])),
        _ => json!(r.u32()),
    }
}

fn gen_key(r: &mut Choices, keys: &mut Vec<String>) -> Value {
    let seed = r.u32();
    let k = match r.below(10) {
        0..=4 => format!("{seed:08x}cafe{:028x}", seed as u128 * 7919),
        5 => format!("{seed:08x}beef{:060x}", seed as u128 * 104_729),
        6 => pair().keys[r.below(pair().keys.len())].clone(),
        7 => format!("0X{seed:08X}F00D{:028X}", seed as u128 * 31),
        8 => format!("{seed:08x}{}", "0".repeat(r.below(80))),
        _ => r
            .pick(&[
                "",
                "0011",
                "zz",
                "0x",
                "00112233445566778899aabbccddeeff0102030g",
            ])
            .to_string(),
    };
    let norm = k.to_ascii_lowercase();
    let norm = norm.strip_prefix("0x").unwrap_or(&norm);
    if norm.len() >= 32 {
        keys.push(norm.to_string());
    }
    json!(k)
}

fn gen_u64(r: &mut Choices) -> Value {
    json!(match r.below(8) {
        0 => 1,
        1 => 10,
        2 => 1000,
        3 => u32::MAX as u64,
        4 => 18_446_744_074,
        5 => u64::MAX,
        6 => 0,
        _ => r.u64(),
    })
}

fn gen_sa(r: &mut Choices, keys: &mut Vec<String>) -> Value {
    let mut m = serde_json::Map::new();
    if !r.rare(24) {
        m.insert("tunnel".into(), json!(r.pick(&TUNNELS)));
    }
    if !r.rare(24) {
        m.insert(
            "direction".into(),
            json!(r.pick(&["in", "out", "inbound", "outbound", "sideways"])),
        );
    }
    if !r.rare(24) {
        m.insert("spi".into(), gen_spi(r));
    }
    if !r.rare(24) {
        m.insert("key".into(), gen_key(r, keys));
    }
    if r.rare(3) {
        m.insert("esn".into(), json!(r.u8() & 1 == 1));
    }
    if r.rare(8) {
        m.insert(
            "backend".into(),
            json!(r.pick(&["aws-lc", "rust-crypto", "x"])),
        );
    }
    if r.rare(4) {
        m.insert(
            "replay_window".into(),
            json!(r.pick(&[64u64, 128, 1024, 4096, 0, 100, 8192, u32::MAX as u64])),
        );
    }
    if r.rare(3) {
        let mut l = serde_json::Map::new();
        for f in [
            "soft_bytes",
            "hard_bytes",
            "soft_packets",
            "hard_packets",
            "soft_seconds",
            "hard_seconds",
            "soft_use_seconds",
            "hard_use_seconds",
        ] {
            if r.rare(3) {
                l.insert(f.into(), gen_u64(r));
            }
        }
        m.insert("lifetime".into(), Value::Object(l));
    }
    if r.rare(4) {
        let mut s = serde_json::Map::new();
        if r.rare(2) {
            s.insert("seq".into(), gen_u64(r));
        }
        if r.rare(2) {
            s.insert("replay_top".into(), gen_u64(r));
        }
        if r.rare(3) {
            let n = r.below(80);
            s.insert(
                "replay_bitmap".into(),
                json!((0..n).map(|_| r.u64()).collect::<Vec<_>>()),
            );
        }
        if r.rare(3) {
            s.insert("packets".into(), gen_u64(r));
        }
        if r.rare(3) {
            s.insert("bytes".into(), gen_u64(r));
        }
        if r.rare(3) {
            s.insert("age_seconds".into(), gen_u64(r));
        }
        m.insert("state".into(), Value::Object(s));
    }
    if r.rare(32) {
        m.insert("bogus".into(), json!(1));
    }
    Value::Object(m)
}

fn gen_prefix(r: &mut Choices) -> &'static str {
    r.pick(&[
        "198.51.100.0/24",
        "192.0.2.0/24",
        "192.0.2.64/26",
        "fd00:b::/64",
        "fd00:a::/64",
        "0.0.0.0/0",
        "::/0",
        "192.0.2.1/33",
        "300.0.0.0/8",
        "x",
        "",
        "192.0.2.1",
    ])
}

fn gen_policy(r: &mut Choices) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("src".into(), json!(gen_prefix(r)));
    m.insert("dst".into(), json!(gen_prefix(r)));
    if r.rare(2) {
        m.insert(
            "protocol".into(),
            json!(r.pick(&[6i64, 17, 1, 58, 0, 255, 256, -1])),
        );
    }
    for f in ["src_ports", "dst_ports"] {
        if r.rare(3) {
            m.insert(
                f.into(),
                json!(r.pick(&["53", "1024-65535", "2-1", "x", "", "0-65535", "70000"])),
            );
        }
    }
    m.insert(
        "action".into(),
        json!(r.pick(&["protect", "bypass", "discard", "drop"])),
    );
    if r.rare(2) {
        m.insert("tunnel".into(), json!(r.pick(&TUNNELS)));
    }
    Value::Object(m)
}

fn gen_child(r: &mut Choices) -> Value {
    match r.below(4) {
        0 => gen_spi(r),
        1 => json!(format!(
            "{}:{:#x}",
            r.pick(&["in", "out", "x"]),
            r.pick(&INSTALLED)
        )),
        2 => json!({"spi": gen_spi(r), "direction": r.pick(&["in", "out", "up"])}),
        _ => json!([1, 2]),
    }
}

fn gen_cookie(r: &mut Choices) -> Value {
    match r.below(6) {
        0..=2 => json!(format!("{:016x}", r.below(4))),
        3 => json!(format!("0x{:x}", r.u64())),
        4 => json!("zz"),
        _ => json!("00112233445566778"),
    }
}

/// One generated control request (or `None`: let time pass).
fn gen_request(r: &mut Choices, keys: &mut Vec<String>) -> Option<Value> {
    let dirs = ["in", "out", "inbound", "outbound", "x"];
    Some(match r.below(22) {
        0 => json!({"op": "allocate_spi"}),
        1 | 2 => json!({"op": "sa_add", "sa": gen_sa(r, keys)}),
        3 => {
            let n = r.below(5);
            let sas: Vec<Value> = (0..n).map(|_| gen_sa(r, keys)).collect();
            json!({"op": "sa_add_batch", "sas": sas})
        }
        4 => json!({"op": "sa_update", "sa": gen_sa(r, keys)}),
        5 => json!({"op": "sa_delete", "spi": gen_spi(r), "direction": r.pick(&dirs)}),
        6 => json!({"op": "sa_get", "spi": gen_spi(r), "direction": r.pick(&dirs)}),
        7 => {
            json!({"op": "sa_list", "direction": r.pick(&[None, Some("in"), Some("out"), Some("x")]), "limit": r.pick(&[None, Some(0), Some(3), Some(usize::MAX)])})
        }
        8 => json!({"op": "sa_flush", "direction": r.pick(&[None, Some("in"), Some("out")])}),
        9 => json!({
            "op": "tunnel_add",
            "name": r.pick(&["t9", "v4", "t10", ""]),
            "local": r.pick(&["203.0.113.2", "fd00:c::2", "192.0.2.1", "x"]),
            "remote": r.pick(&["203.0.113.9", "fd00:c::9", "y"]),
            "mode": r.pick(&[None, Some("tunnel"), Some("transport"), Some("x")]),
            "encap": r.pick(&[None, Some("udp"), Some("none"), Some("tcp")]),
            "mtu": r.pick(&[None, Some(0u32), Some(576), Some(9216), Some(65535), Some(70000)]),
        }),
        10 => json!({"op": "tunnel_delete", "name": r.pick(&TUNNELS)}),
        11 => {
            let mut p = gen_policy(r);
            p["op"] = json!("policy_add");
            p
        }
        12 => {
            let n = r.below(4);
            let ps: Vec<Value> = (0..n).map(|_| gen_policy(r)).collect();
            json!({"op": "policy_add_batch", "policies": ps})
        }
        13 => json!({"op": "policy_delete", "index": r.pick(&[0i64, 3, 10, 100, -1])}),
        14 => json!({"op": "policy_list"}),
        15 => {
            let mut out = gen_sa(r, keys);
            let t = r.pick(&TUNNELS);
            if !r.rare(8) {
                out["tunnel"] = json!(t);
                out["direction"] = json!("out");
            }
            let mut m = json!({"op": "rekey", "tunnel": t, "outbound": out});
            if r.rare(2) {
                let mut i = gen_sa(r, keys);
                i["tunnel"] = json!(t);
                i["direction"] = json!("in");
                m["inbound"] = i;
            }
            if r.rare(2) {
                m["retire_inbound"] = gen_spi(r);
            }
            if r.rare(3) {
                m["grace_ms"] = gen_u64(r);
            }
            m
        }
        16 => {
            let n = r.below(4);
            let children: Vec<Value> = (0..n).map(|_| gen_child(r)).collect();
            json!({
                "op": "mm_add",
                "icookie": gen_cookie(r),
                "rcookie": gen_cookie(r),
                "peer": r.pick(&["203.0.113.1", "fd00:c::1", "x"]),
                "lifetime_s": gen_u64(r),
                "lifetime_kb": r.pick(&[None, Some(1u64), Some(1 << 60)]),
                "children": children,
            })
        }
        17 => json!({"op": "mm_delete", "icookie": gen_cookie(r), "rcookie": gen_cookie(r)}),
        18 => json!({"op": r.pick(&["mm_list", "stats", "subscribe", "frobnicate"])}),
        _ => return None,
    })
}

/// Asserts that `answer` to a request is one JSON object line with `ok` (and `error` when not
/// ok) and that it holds none of `keys` (hex, lower case) unless `others` does.
fn check_answer(answer: &str, keys: &[String], others: &[String]) {
    assert!(
        !answer.contains('\n') && !answer.contains('\r'),
        "answer is not one line: {answer:?}"
    );
    let v: Value = serde_json::from_str(answer)
        .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {answer:?}"));
    let ok = v
        .get("ok")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("answer without a boolean `ok`: {answer}"));
    if !ok {
        assert!(
            v.get("error")
                .and_then(Value::as_str)
                .is_some_and(|e| !e.is_empty()),
            "error answer without an error message: {answer}"
        );
    }
    let lower = answer.to_ascii_lowercase();
    for k in keys {
        if lower.contains(k.as_str()) && !others.iter().any(|o| o.contains(k.as_str())) {
            panic!("answer echoes a key: {answer}");
        }
    }
}

/// The control thread's request handler (gateway B of the structure-aware targets, in memory):
/// raw lines (input starting with an even byte) or generated requests (odd), with time passing
/// between them. Asserts: no panic, every answer is one JSON line with `ok`, and no answer
/// holds the hex of any key in the input or the configuration.
pub fn control(data: &[u8]) {
    let pair = pair();
    let dp = std::sync::Arc::new(dataplane(&pair.b, |_, _| None));
    let mut ctl = crate::control::Control::new(&pair.b, dp);
    let events: ArrayQueue<SaEvent> = ArrayQueue::new(16);
    let mut r = Choices::new(data);
    let mut now = 1_000_000_000u64;
    let mut keys = pair.keys.clone();
    let mut others: Vec<String> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    if r.u8().is_multiple_of(2) {
        let text = String::from_utf8_lossy(r.bytes(usize::MAX));
        for l in text.split('\n').take(64) {
            if let Ok(v) = serde_json::from_str::<Value>(l) {
                json_keys(&v, &mut keys);
                json_other_strings(&v, &mut others);
            }
            lines.push(l.to_string());
        }
    } else {
        while !r.is_empty() && lines.len() < 48 {
            match gen_request(&mut r, &mut keys) {
                Some(v) => {
                    json_other_strings(&v, &mut others);
                    let mut l = v.to_string();
                    if r.rare(16) {
                        // A damaged line: cut short or one byte changed.
                        let i = r.below(l.len() + 1);
                        if r.rare(2) {
                            let mut i = i.min(l.len());
                            while !l.is_char_boundary(i) {
                                i -= 1;
                            }
                            l.truncate(i);
                        } else if l.is_char_boundary(i) && i < l.len() {
                            l.replace_range(i..i + 1, "\u{1}");
                        }
                    }
                    lines.push(l);
                }
                None => lines.push(format!("#tick {}", r.below(5))),
            }
        }
    }
    // Keys the input itself spells elsewhere (as a name, say) are not secrets it leaked.
    others.retain(|o| o.len() >= 32);
    for l in &lines {
        if let Some(t) = l.strip_prefix("#tick ") {
            now += [
                1_000_000u64,
                100_000_000,
                1_000_000_000,
                10_000_000_000,
                3_600_000_000_000,
            ][t.parse::<usize>().unwrap_or(0) % 5];
            ctl.tick(now, &events);
            continue;
        }
        now += 1_000_000;
        match crate::control::api::handle(&mut ctl, l, now) {
            crate::control::api::Reply::Line(a) => check_answer(&a, &keys, &others),
            crate::control::api::Reply::Subscribe => {}
        }
    }
    ctl.tick(now + 100_000_000_000, &events);
    for l in [
        r#"{"op":"sa_list","limit":100000}"#,
        r#"{"op":"stats"}"#,
        r#"{"op":"mm_list"}"#,
        r#"{"op":"policy_list"}"#,
    ] {
        match crate::control::api::handle(&mut ctl, l, now + 100_000_000_000) {
            crate::control::api::Reply::Line(a) => check_answer(&a, &keys, &others),
            crate::control::api::Reply::Subscribe => {}
        }
    }
}

// ---------- config ----------

fn gen_value(r: &mut Choices, good: &[&str], bad: &[&str]) -> String {
    if r.rare(5) {
        r.pick(bad).to_string()
    } else {
        r.pick(good).to_string()
    }
}

/// A generated config file: the sections and fields of the real format with values good and
/// bad, some left out. Returns the text and the keys it holds.
fn gen_config(r: &mut Choices) -> (String, Vec<String>) {
    use std::fmt::Write;
    let mut t = String::new();
    let mut keys = Vec::new();
    let field = |r: &mut Choices, t: &mut String, name: &str, good: &[&str], bad: &[&str]| {
        if !r.rare(6) {
            let _ = writeln!(t, "{name} = {}", gen_value(r, good, bad));
        }
    };
    if !r.rare(8) {
        t.push_str("[dataplane]\n");
        field(
            r,
            &mut t,
            "workers",
            &["1", "2"],
            &["0", "300", "-1", "\"1\""],
        );
        if r.rare(4) {
            field(r, &mut t, "cores", &["[0]", "[0, 1]"], &["[]", "[-1]", "3"]);
        }
        field(
            r,
            &mut t,
            "sa_capacity",
            &["256", "1024"],
            &["0", "16777217", "255"],
        );
        field(
            r,
            &mut t,
            "backend",
            &["\"aws-lc\"", "\"rust-crypto\""],
            &["\"x\"", "1"],
        );
        field(
            r,
            &mut t,
            "replay_window",
            &["64", "1024", "4096"],
            &["0", "100", "8192"],
        );
        field(
            r,
            &mut t,
            "default_policy",
            &["\"discard\"", "\"bypass\""],
            &["\"protect\"", "true"],
        );
        field(
            r,
            &mut t,
            "complete_checksums",
            &["true", "false"],
            &["\"yes\""],
        );
        field(r, &mut t, "icmp_too_big", &["true", "false"], &["1"]);
        field(
            r,
            &mut t,
            "icmp_rate",
            &["1000", "0"],
            &["-5", "4294967296"],
        );
        field(r, &mut t, "prefetch_above", &["4096", "0"], &["-1"]);
        field(
            r,
            &mut t,
            "xdp_mode",
            &["\"native\"", "\"generic\""],
            &["\"zero\""],
        );
        if r.rare(4) {
            field(
                r,
                &mut t,
                "state_file",
                &["\"gw.seq\"", "\"/tmp/x.seq\""],
                &["3"],
            );
        }
    }
    if r.rare(2) {
        t.push_str("[control]\n");
        field(
            r,
            &mut t,
            "rekey_grace_ms",
            &["2000", "0"],
            &["18446744073709551615", "-1"],
        );
        field(
            r,
            &mut t,
            "expired_linger_ms",
            &["10000"],
            &["18446744073709551615"],
        );
        field(
            r,
            &mut t,
            "tunnel_capacity",
            &["8", "64"],
            &["0", "2000000"],
        );
        field(
            r,
            &mut t,
            "metrics",
            &["\"127.0.0.1:9100\""],
            &["\"x\"", "\"127.0.0.1\""],
        );
        field(r, &mut t, "metrics_sa_limit", &["100"], &["-1"]);
        if r.rare(4) {
            field(r, &mut t, "socket", &["\"/run/espd.sock\""], &["1"]);
        }
    }
    let ifaces = [("plain", "198.51.100.1"), ("cipher", "203.0.113.2")];
    for (name, a) in ifaces {
        if r.rare(12) {
            continue;
        }
        let _ = writeln!(t, "[interfaces.{name}]");
        let n = format!("\"{name}0\"");
        field(
            r,
            &mut t,
            "name",
            &[&n],
            &["\"\"", "\"sixteen-chars-xx\"", "\"plain0\""],
        );
        let addrs = format!("[\"{a}\", \"fd00:c::2\"]");
        field(
            r,
            &mut t,
            "addresses",
            &[&addrs, "[]"],
            &["[\"x\"]", "\"203.0.113.2\""],
        );
        field(
            r,
            &mut t,
            "mac",
            &["\"02:00:00:00:00:01\""],
            &["\"02:00\"", "\"zz:00:00:00:00:01\""],
        );
        field(
            r,
            &mut t,
            "next_hop_mac",
            &["\"02:00:00:00:00:02\""],
            &["\"x\""],
        );
        if r.rare(4) {
            field(r, &mut t, "next_hop", &["\"203.0.113.1\""], &["\"x\""]);
        }
        if r.rare(4) {
            field(r, &mut t, "queues", &["[0]", "[0, 1]"], &["[]", "[-1]"]);
        }
    }
    let names = ["\"t0\"", "\"t1\"", "\"t2\""];
    for _ in 0..r.below(4) {
        t.push_str("[[tunnels]]\n");
        field(r, &mut t, "name", &names, &["\"\"", "3"]);
        field(
            r,
            &mut t,
            "local",
            &["\"203.0.113.2\"", "\"fd00:c::2\""],
            &["\"192.0.2.9\"", "\"x\""],
        );
        field(
            r,
            &mut t,
            "remote",
            &["\"203.0.113.1\"", "\"fd00:c::1\""],
            &["\"y\""],
        );
        if r.rare(3) {
            field(
                r,
                &mut t,
                "mode",
                &["\"tunnel\"", "\"transport\""],
                &["\"x\""],
            );
        }
        if r.rare(3) {
            field(r, &mut t, "encap", &["\"udp\"", "\"none\""], &["\"tcp\""]);
        }
        if r.rare(4) {
            field(r, &mut t, "udp_src_port", &["4500", "1"], &["70000", "-1"]);
        }
        field(
            r,
            &mut t,
            "mtu",
            &["1500", "576", "9216"],
            &["575", "9217", "0", "-1"],
        );
    }
    for _ in 0..r.below(4) {
        t.push_str("[[policies]]\n");
        let p = [
            "\"198.51.100.0/24\"",
            "\"192.0.2.0/24\"",
            "\"fd00:b::/64\"",
            "\"0.0.0.0/0\"",
        ];
        field(r, &mut t, "src", &p, &["\"1.2.3.4/33\"", "\"x\""]);
        field(r, &mut t, "dst", &p, &["\"::/129\"", "\"\""]);
        if r.rare(2) {
            field(
                r,
                &mut t,
                "protocol",
                &["\"udp\"", "\"tcp\"", "6", "\"any\""],
                &["256", "\"sctp\"", "-1", "1.5"],
            );
        }
        if r.rare(3) {
            field(
                r,
                &mut t,
                "dst_ports",
                &["\"53\"", "\"1-1024\""],
                &["\"2-1\"", "\"x\"", "53"],
            );
        }
        if r.rare(3) {
            field(r, &mut t, "src_ports", &["\"1024-65535\""], &["\"70000\""]);
        }
        field(
            r,
            &mut t,
            "action",
            &["\"protect\"", "\"bypass\"", "\"discard\""],
            &["\"allow\""],
        );
        field(r, &mut t, "tunnel", &names, &["\"nope\""]);
    }
    for _ in 0..r.below(5) {
        t.push_str("[[sas]]\n");
        field(r, &mut t, "tunnel", &names, &["\"nope\""]);
        field(r, &mut t, "direction", &["\"in\"", "\"out\""], &["\"up\""]);
        field(
            r,
            &mut t,
            "spi",
            &["4097", "\"0x1002\"", "4097"],
            &["7", "\"0xzz\"", "4294967296", "-1"],
        );
        let seed = r.u16();
        let key = match r.below(6) {
            0..=2 => format!("{seed:04x}{:036x}", seed as u128 * 7),
            3 => format!("{seed:04x}{:068x}", seed as u128 * 11),
            4 => format!("0x{seed:04x}{:036x}", seed as u128 * 13),
            _ => format!("{seed:04x}{}", "z".repeat(r.below(70))),
        };
        if !r.rare(8) {
            let k = key.trim_start_matches("0x").to_ascii_lowercase();
            if k.len() >= 32 {
                keys.push(k);
            }
            let _ = writeln!(t, "key = \"{key}\"");
        }
        if r.rare(3) {
            field(r, &mut t, "esn", &["true", "false"], &["\"no\""]);
        }
        if r.rare(4) {
            field(r, &mut t, "replay_window", &["64"], &["65"]);
        }
        if r.rare(3) {
            let v = ["1", "100", "4294967295"];
            let bad = ["0", "4294967296", "18446744073709551615", "-1"];
            let _ = writeln!(
                t,
                "lifetime = {{ soft_seconds = {}, hard_seconds = {}, hard_bytes = {} }}",
                gen_value(r, &v, &bad),
                gen_value(r, &v, &bad),
                gen_value(r, &v, &bad)
            );
        }
        if r.rare(8) {
            t.push_str("state = { seq = 5 }\n");
        }
    }
    if r.rare(16) {
        t.push_str("bogus = 1\n");
    }
    (t, keys)
}

/// The config parser: raw text (input starting with an even byte) or a generated file (odd).
/// Asserts: no panic; an error names a field (or the line and column); neither an error nor a
/// parsed config's debug output holds a key of the input.
pub fn config(data: &[u8]) {
    let mut r = Choices::new(data);
    let (text, keys) = if r.u8().is_multiple_of(2) {
        let text = String::from_utf8_lossy(r.bytes(usize::MAX)).into_owned();
        let keys = config_keys(&text);
        (text, keys)
    } else {
        gen_config(&mut r)
    };
    // A key the text also spells outside a `key` field is not a secret.
    let secret = |k: &String| text.matches(k.as_str()).count() <= 1;
    let no_key = |s: &str, what: &str| {
        let lower = s.to_ascii_lowercase();
        for k in keys.iter().filter(|k| secret(k)) {
            assert!(!lower.contains(k.as_str()), "{what} holds a key: {s}");
        }
    };
    match Config::parse(Path::new("fuzz.toml"), &text) {
        Err(e) => {
            assert!(!e.key.is_empty(), "config error names no field: {e}");
            no_key(&e.to_string(), "config error");
        }
        Ok(cfg) => {
            no_key(&format!("{cfg:?}"), "config debug output");
            let _ = cfg.pipeline_config();
            // Only small tables: a 2^24-slot table per input would be all the fuzzer does.
            if cfg.sa_capacity <= 4096
                && cfg.control.tunnel_capacity <= 4096
                && let Err(e) = cfg.build_dataplane(1)
            {
                assert!(!e.key.is_empty(), "dataplane error names no field: {e}");
                no_key(&e.to_string(), "dataplane error");
            }
        }
    }
}

/// Arbitrary bytes into the ISAKMP parser ([`crate::ike::wire`]), twice: as a datagram
/// (header, then the payload chain of an unencrypted body), and as a decrypted body whose
/// first payload type is the first byte (padding allowed). Whatever parses must build back
/// to the same bytes (the commit flag cleared: espd never sets it), and every accessor and
/// error mapping runs. Returns how many payloads parsed (for the corpus replay).
pub fn ike_wire(data: &[u8]) -> usize {
    use crate::ike::wire::{self as w, Builder, Message, Payload, Payloads};
    fn touch(ps: &Payloads<'_>) -> usize {
        let mut n = 0;
        for (p, raw) in ps.iter().zip(ps.raw()) {
            n += 1;
            assert_eq!(p.payload_type(), raw.payload_type);
            assert_eq!(raw.bytes.len(), raw.body().len() + 4);
            match p {
                Payload::Sa(sa) => {
                    assert_eq!(sa.body(), raw.body());
                    for pr in sa.proposals() {
                        let _ = pr.spi_u32();
                        assert_eq!(pr.transforms().count(), usize::from(pr.transform_count()));
                        for t in pr.transforms() {
                            for a in t.attrs() {
                                let num = a.number();
                                if w::numeric_attr(pr.protocol, a.ty) {
                                    assert!(num.is_some(), "numeric attribute without a number");
                                }
                            }
                        }
                    }
                }
                Payload::Id(id) => {
                    assert_eq!(id.body, raw.body());
                    let _ = id.identity.prefix_len();
                }
                Payload::Notify(nt) => {
                    let _ = (nt.dpd_seq(), nt.cookies());
                }
                Payload::Delete(d) => {
                    assert_eq!(d.spis().count(), d.count());
                    assert!(d.count() >= 1);
                    let _ = (d.isakmp_cookies(), d.esp_spis().count());
                }
                _ => {}
            }
        }
        n
    }
    let note = |e: w::WireError| {
        let _ = (e.code(), e.notify_type());
    };
    let mut n = 0;
    match Message::parse(data) {
        Err(e) => {
            note(e);
            let _ = w::peek_cookies(data);
        }
        Ok(m) if m.header.flags.encrypted => {
            let mut out = m.header.to_bytes().to_vec();
            out.extend_from_slice(m.body);
            assert_eq!(out, data, "encrypted message does not rebuild");
        }
        Ok(m) => match m.payloads() {
            Err(e) => note(e),
            Ok(ps) => {
                n += touch(&ps);
                let mut out = Vec::new();
                let mut b = Builder::new(&mut out, &m.header);
                for p in &ps {
                    b.push(&p);
                }
                b.finish().expect("a parsed message builds");
                let mut want = data.to_vec();
                want[w::header_field::FLAGS] &= !w::flags::COMMIT;
                assert_eq!(out, want, "parse → build is not the identity");
            }
        },
    }
    if let Some((&first, body)) = data.split_first() {
        match w::parse_decrypted(first, body) {
            Err(e) => note(e),
            Ok(ps) => {
                n += touch(&ps);
                assert_eq!(ps.chain().len() + ps.padding().len(), body.len());
                let mut out = Vec::new();
                let mut b = Builder::chain(&mut out);
                for p in &ps {
                    b.push(&p);
                }
                assert_eq!(b.first_type(), first);
                b.finish().expect("a parsed chain builds");
                assert_eq!(
                    out,
                    ps.chain(),
                    "decrypted chain: parse → build is not the identity"
                );
            }
        }
    }
    n
}

// ---------- ike_engine: two IKE engines and a hostile network ----------

/// What one [`ike_engine`] run reached (for the corpus replay).
#[derive(Clone, Copy, Debug, Default)]
pub struct IkeEngineRun {
    /// Datagrams handed to an engine (real, replayed, mutated or made up).
    pub delivered: usize,
    /// Main modes and quick modes that came up, on both sides.
    pub main_modes: usize,
    pub children: usize,
    /// Quick modes that replaced a child (rekeys), on both sides.
    pub rekeys: usize,
    /// `Failed` actions (`mm_failed` / `qm_failed`) and children taken down.
    pub failures: usize,
    pub children_down: usize,
}

/// Seeded randomness and counter SPIs; remembers what it handed out.
struct FuzzEnv {
    rng: u64,
    next_spi: u32,
    allocated: HashSet<u32>,
}

impl crate::ike::types::Env for FuzzEnv {
    fn random(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            // xorshift64*
            let mut x = self.rng;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.rng = x;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_be_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    fn allocate_spi(&mut self) -> Option<u32> {
        // A full SA table now and then (every 61st SPI).
        self.next_spi = self.next_spi.wrapping_add(1);
        if self.next_spi.is_multiple_of(61) {
            return None;
        }
        self.allocated.insert(self.next_spi);
        Some(self.next_spi)
    }
}

/// One engine of the pair and what it said so far.
struct FuzzSide {
    e: crate::ike::engine::Engine,
    env: FuzzEnv,
    ip: IpAddr,
    /// (icookie, rcookie) of the main modes that came up.
    mms: Vec<(u64, u64)>,
    /// SPIs of its children (inbound, outbound), for lifetime events.
    spis: Vec<(u32, u32)>,
}

/// A datagram in flight: to A or B, on our port `port`, from `from`.
struct InFlight {
    to_a: bool,
    port: u16,
    from: std::net::SocketAddr,
    data: Vec<u8>,
}

const S_NS: u64 = 1_000_000_000;
const IKE_A: [u8; 4] = [203, 0, 113, 1];
const IKE_B: [u8; 4] = [203, 0, 113, 2];

/// Gateway A's or B's `[[ike.peers]]` entry as the fuzz input's first byte shapes it:
/// bit 0 ESP in UDP (NAT-T on 4500), bit 1 PFS, bit 3 DPD (2 s / 5 s, `restart` on A),
/// bit 4 short lifetimes (10 s quick modes with a kB limit, 20 s main modes, reauth),
/// bit 5 disjoint ESP proposals, bit 6 disjoint phase-1 proposals.
fn fuzz_peer(a: bool, flags: u8) -> crate::ike::config::IkePeer {
    use crate::ike::config::{DpdAction, IkeId, IkePeer, parse_proposal};
    let (l, r, src, dst) = if a {
        (IKE_A, IKE_B, "192.0.2.0/24", "198.51.100.0/24")
    } else {
        (IKE_B, IKE_A, "198.51.100.0/24", "192.0.2.0/24")
    };
    let (local, remote) = (IpAddr::from(l), IpAddr::from(r));
    // Only the fast groups: a MODP-2048 handshake per input would be most of the run.
    let proposals = if flags & 0x40 != 0 && !a {
        vec![parse_proposal("aes128-sha512-curve25519").expect("proposal")]
    } else {
        vec![
            parse_proposal("aes256-sha256-ecp256").expect("proposal"),
            parse_proposal("aes128-sha384-curve25519").expect("proposal"),
        ]
    };
    let esp = match (flags & 0x20 != 0, a) {
        (true, true) => vec![128],
        (true, false) => vec![256],
        _ => vec![128, 256],
    };
    let short = flags & 0x10 != 0;
    IkePeer {
        index: 0,
        tunnel: "t".into(),
        tunnel_index: 0,
        local,
        remote,
        encap: (flags & 1 != 0).then_some(crate::sa::UdpEncap {
            src_port: 4500,
            dst_port: 4500,
        }),
        psk: zeroize::Zeroizing::new(b"espd-fuzz-psk".to_vec()),
        local_id: IkeId::Addr(local),
        remote_id: IkeId::Addr(remote),
        proposals,
        esp,
        pfs_group: (flags & 2 != 0).then_some(19),
        mm_lifetime_s: if short { 20 } else { 28_800 },
        qm_lifetime_s: if short { 10 } else { 3_600 },
        qm_lifetime_kb: short.then_some(100),
        rekey_margin_s: if short { 3 } else { 540 },
        rekey_margin_kb: short.then_some(40),
        reauth: short,
        dpd_delay_s: if flags & 8 != 0 { 2 } else { 0 },
        dpd_timeout_s: 5,
        dpd_action: if a && flags & 8 != 0 {
            DpdAction::Restart
        } else {
            DpdAction::Clear
        },
        initiate: a || flags & 4 != 0,
        selector: Selector {
            src: src.parse().expect("prefix"),
            dst: dst.parse().expect("prefix"),
            protocol: None,
            src_ports: PortRange::ANY,
            dst_ports: PortRange::ANY,
        },
    }
}

struct IkeWorld {
    a: FuzzSide,
    b: FuzzSide,
    now: u64,
    q: std::collections::VecDeque<InFlight>,
    /// Every datagram sent so far (bounded), with its sender (`true`: A) and our port.
    sent: Vec<(bool, u16, Vec<u8>)>,
    run: IkeEngineRun,
}

/// Deliveries per input at most (two engines can answer each other for ever, e.g. a notify
/// for a notify, and the fuzzer must not spend its time there).
const IKE_DELIVERIES: usize = 400;
const IKE_SENT_KEPT: usize = 64;

impl IkeWorld {
    fn side(&mut self, a: bool) -> &mut FuzzSide {
        if a { &mut self.a } else { &mut self.b }
    }

    /// Takes every action of both engines: datagrams into the network, the rest checked and
    /// counted.
    fn collect(&mut self) {
        use crate::ike::types::Action as A;
        for from_a in [true, false] {
            loop {
                let side = self.side(from_a);
                let Some(act) = side.e.poll_action() else {
                    break;
                };
                match act {
                    A::Send {
                        local_port,
                        to,
                        data,
                        ..
                    } => {
                        let side = self.side(from_a);
                        let me = side.ip;
                        assert!(
                            local_port == 500 || local_port == 4500,
                            "sent from port {local_port}"
                        );
                        assert!(data.len() <= 65_535, "a datagram of {} bytes", data.len());
                        // A keepalive never reaches the engine (the driver drops it).
                        if local_port == 4500 && data == [0xff] {
                            continue;
                        }
                        let peer_ip = if from_a { IKE_B } else { IKE_A };
                        if to.ip() != IpAddr::from(peer_ip) {
                            continue;
                        }
                        if self.sent.len() < IKE_SENT_KEPT {
                            self.sent.push((from_a, local_port, data.clone()));
                        }
                        self.q.push_back(InFlight {
                            to_a: !from_a,
                            port: to.port(),
                            from: std::net::SocketAddr::new(me, local_port),
                            data,
                        });
                    }
                    A::MainModeUp {
                        icookie, rcookie, ..
                    } => {
                        self.run.main_modes += 1;
                        self.side(from_a).mms.push((icookie, rcookie));
                    }
                    A::InboundUp { inbound, .. } => {
                        let side = self.side(from_a);
                        assert!(
                            side.env.allocated.contains(&inbound.spi),
                            "inbound SA {:#x} with an SPI never allocated",
                            inbound.spi
                        );
                        assert!([20, 36].contains(&inbound.keymat.len()));
                    }
                    A::ChildUp(c) => {
                        let side = self.side(from_a);
                        assert!(
                            side.env.allocated.contains(&c.inbound.spi),
                            "child with inbound SPI {:#x} never allocated",
                            c.inbound.spi
                        );
                        assert!([20, 36].contains(&c.inbound.keymat.len()));
                        assert_eq!(c.inbound.keymat.len(), c.outbound.keymat.len());
                        assert!(c.limits.validate().is_ok(), "{:?}", c.limits);
                        if side.spis.len() < 16 {
                            side.spis.push((c.inbound.spi, c.outbound.spi));
                        }
                        self.run.children += 1;
                        self.run.rekeys += usize::from(c.replaces.is_some());
                    }
                    A::ChildDown { .. } => self.run.children_down += 1,
                    A::Failed { .. } => self.run.failures += 1,
                    A::MainModeDown { .. } | A::ReleaseSpi { .. } => {}
                }
            }
        }
    }

    fn deliver(&mut self, p: InFlight) {
        if self.run.delivered >= IKE_DELIVERIES {
            return;
        }
        self.run.delivered += 1;
        let now = self.now;
        let side = self.side(p.to_a);
        let local = std::net::SocketAddr::new(side.ip, p.port);
        side.e.receive(&mut side.env, now, local, p.from, &p.data);
        self.collect();
    }

    fn pump_one(&mut self) {
        if let Some(p) = self.q.pop_front() {
            self.deliver(p);
        }
    }

    /// Delivers what is in flight, in order, and what that causes (bounded).
    fn pump(&mut self) {
        while self.run.delivered < IKE_DELIVERIES
            && let Some(p) = self.q.pop_front()
        {
            self.deliver(p);
        }
    }

    fn tick(&mut self) {
        let now = self.now;
        for a in [true, false] {
            let side = self.side(a);
            side.e.tick(&mut side.env, now);
            let _ = (side.e.status(now), side.e.counters());
        }
        self.collect();
    }

    /// Runs the clock `dt` on, ticking at every deadline on the way (datagrams stay in
    /// flight: the fuzzer decides when they arrive).
    fn advance(&mut self, dt: u64) {
        let end = self.now.saturating_add(dt);
        let mut stuck = 0;
        for _ in 0..200 {
            let d = [self.a.e.next_deadline(), self.b.e.next_deadline()]
                .into_iter()
                .flatten()
                .min();
            match d {
                Some(d) if d <= end => {
                    if d <= self.now {
                        stuck += 1;
                        // The driver would wake every millisecond for it.
                        assert!(
                            stuck < 50,
                            "a deadline in the past that tick does not clear"
                        );
                    } else {
                        stuck = 0;
                        self.now = d;
                    }
                    self.tick();
                }
                _ => break,
            }
        }
        self.now = self.now.max(end);
        self.tick();
    }
}

/// Two IKE engines (A initiates; B too with bit 2 of the first byte, see [`fuzz_peer`] for
/// the others) joined by a network the input controls. Unless bit 7 is set they first run a
/// real main mode and quick mode, so the input works on established state. The rest of the input is a list of steps: deliver, drop, duplicate or
/// reorder datagrams in flight, inject made-up datagrams or mutated copies of real ones (to
/// either side, on 500 or 4500, from the peer or a stranger), reflect a side's own messages
/// back at it, move the clock (ticking every deadline), and the data path's and operator's
/// inputs (soft and hard expiry, retirement and failed installs of a child, main-mode
/// expiry, initiate, terminate). Nothing may panic; SPIs installed must have been allocated.
pub fn ike_engine(data: &[u8]) -> IkeEngineRun {
    use crate::ike::engine::Engine;
    let mut c = Choices::new(data);
    let flags = c.u8();
    let side = |a: bool, seed: u64, spi: u32| FuzzSide {
        e: Engine::new(vec![fuzz_peer(a, flags)]),
        env: FuzzEnv {
            rng: seed,
            next_spi: spi,
            allocated: HashSet::new(),
        },
        ip: IpAddr::from(if a { IKE_A } else { IKE_B }),
        mms: Vec::new(),
        spis: Vec::new(),
    };
    let mut w = IkeWorld {
        a: side(true, 0x5eed_000a, 0xa000_0000),
        b: side(false, 0x5eed_000b, 0xb000_0000),
        now: 1_000 * S_NS,
        q: std::collections::VecDeque::new(),
        sent: Vec::new(),
        run: IkeEngineRun::default(),
    };
    if flags & 0x80 == 0 {
        let now = w.now;
        w.a.e.initiate(&mut w.a.env, now, 0);
        if flags & 4 != 0 {
            w.b.e.initiate(&mut w.b.env, now, 0);
        }
        w.collect();
        w.pump();
        if flags & 0x64 == 0 {
            // The plain handshake must work, or the rest of the run tests nothing.
            assert!(
                w.run.main_modes == 2 && w.run.children == 2,
                "the opening handshake failed: {:?}",
                w.run
            );
        }
    }
    for _ in 0..96 {
        if c.is_empty() {
            break;
        }
        match c.u8() % 12 {
            0 | 1 => w.pump_one(),
            2 => {
                w.q.pop_front();
            }
            3 => {
                if let Some(p) = w.q.front() {
                    let copy = InFlight {
                        data: p.data.clone(),
                        ..*p
                    };
                    w.deliver(copy);
                }
            }
            4 => {
                let k = c.below(w.q.len());
                if let Some(p) = w.q.remove(k) {
                    w.deliver(p);
                }
            }
            5 => {
                // A made-up datagram.
                let to_a = c.u8() & 1 == 0;
                let port = c.pick(&[500u16, 4500]);
                let from = c.pick(&[0u8, 0, 1, 2]);
                let from_port = c.pick(&[500u16, 4500, 4500, 1701, 40000]);
                let n = usize::from(c.u16() % 2048);
                let data = c.bytes(n).to_vec();
                let ip = match from {
                    0 => {
                        if to_a {
                            IKE_B
                        } else {
                            IKE_A
                        }
                    }
                    1 => [203, 0, 113, 9],
                    _ => {
                        if to_a {
                            IKE_A
                        } else {
                            IKE_B
                        }
                    }
                };
                w.deliver(InFlight {
                    to_a,
                    port,
                    from: std::net::SocketAddr::new(IpAddr::from(ip), from_port),
                    data,
                });
            }
            6 | 11 => {
                // A real datagram again, mutated (6) or not (11), to its receiver or back
                // to its sender.
                let mutate = c.u8() % 12 == 6;
                let k = c.below(w.sent.len());
                let Some((by_a, port, mut data)) = w.sent.get(k).cloned() else {
                    continue;
                };
                if mutate && !data.is_empty() {
                    for _ in 0..=c.below(4) {
                        let at = c.below(data.len());
                        data[at] ^= c.u8().max(1);
                    }
                    if c.rare(4) {
                        data.truncate(c.below(data.len()));
                    }
                }
                let reflect = c.rare(3);
                let to_a = if reflect { by_a } else { !by_a };
                let from_ip = if by_a { IKE_A } else { IKE_B };
                w.deliver(InFlight {
                    to_a,
                    port: if c.rare(5) {
                        4500 + 500 - port.min(4500)
                    } else {
                        port
                    },
                    from: std::net::SocketAddr::new(IpAddr::from(from_ip), port),
                    data,
                });
            }
            7 => {
                let dt = c.pick(&[
                    1_000_000u64,
                    50_000_000,
                    500_000_000,
                    S_NS,
                    2 * S_NS,
                    5 * S_NS,
                    10 * S_NS,
                    31 * S_NS,
                    121 * S_NS,
                    700 * S_NS,
                    3_700 * S_NS,
                    30_000 * S_NS,
                ]);
                w.advance(dt);
            }
            8 => {
                // The data path's and the control thread's inputs.
                let a = c.u8() & 1 == 0;
                let kind = c.below(6);
                let pick = c.u8();
                let now = w.now;
                let s = w.side(a);
                let (inb, outb) = if s.spis.is_empty() {
                    (u32::from(pick), u32::from(pick))
                } else {
                    s.spis[usize::from(pick) % s.spis.len()]
                };
                let env = &mut s.env;
                match kind {
                    0 => s.e.child_soft_expired(env, now, outb, true),
                    1 => s.e.child_soft_expired(env, now, inb, false),
                    2 => s.e.child_hard_expired(env, now, inb, pick & 1 == 0),
                    3 => s.e.child_retired(inb),
                    4 => s.e.child_install_failed(env, now, inb, "fuzz".into()),
                    _ => {
                        let (i, r) = s
                            .mms
                            .get(usize::from(pick) % s.mms.len().max(1))
                            .copied()
                            .unwrap_or_default();
                        s.e.main_mode_expired(env, now, i, r);
                    }
                }
                w.collect();
            }
            9 => {
                let a = c.u8() & 1 == 0;
                let terminate = c.u8() & 1 == 1;
                let now = w.now;
                let s = w.side(a);
                if terminate {
                    s.e.terminate(&mut s.env, now, 0);
                } else {
                    s.e.initiate(&mut s.env, now, 0);
                }
                w.collect();
            }
            _ => w.pump(),
        }
    }
    w.pump();
    w.advance(S_NS);
    w.pump();
    w.run
}

/// Arbitrary bytes as a capture file (`espd pcap`'s reader: classic pcap in either byte order
/// and resolution, or pcapng). Whatever reads must write back and read again to the same
/// frames and times. Returns how many frames the input held (for the corpus replay).
pub fn capture_file(data: &[u8]) -> usize {
    let Ok(t) = crate::pcap::read_trace(data) else {
        return 0;
    };
    let mut out = Vec::new();
    crate::pcap::write_trace(
        &mut out,
        t.resolution,
        t.records.iter().map(|r| (r.ts, &r.data[..])),
    )
    .expect("espd writes what it read");
    let back = crate::pcap::read_trace(&out[..]).expect("espd reads what it wrote");
    assert_eq!(back.records.len(), t.records.len());
    // A microsecond file keeps times to the microsecond (a pcapng interface with a binary
    // resolution such as 2^-10 s has finer fractions that a µs file cannot hold).
    let unit = match t.resolution {
        crate::pcap::Resolution::Micro => std::time::Duration::from_micros(1),
        crate::pcap::Resolution::Nano => std::time::Duration::from_nanos(1),
    };
    for (a, b) in t.records.iter().zip(&back.records) {
        assert_eq!(a.data, b.data);
        assert!(a.ts.abs_diff(b.ts) < unit, "{:?} became {:?}", a.ts, b.ts);
    }
    t.records.len()
}

/// Arbitrary bytes as one rtnetlink datagram (the next-hop thread's neighbour and link
/// messages). Never panics; every message is a change, DONE, an error or counted malformed.
/// Returns how many changes it held (for the corpus replay).
pub fn netlink(data: &[u8]) -> usize {
    crate::daemon::l2::parse(data).changes.len()
}
