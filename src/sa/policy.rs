//! Security policy database (RFC 4301 §4.4.1): ordered selectors → protect / bypass / discard.
//!
//! Lookup returns the first matching policy of the packet's address family. A short list is
//! scanned; a long one (a concentrator with a policy per tunnel) is indexed by destination
//! prefix (tuple-space search): one hash table per distinct destination prefix length maps a
//! masked destination to the policies with that prefix, so a lookup probes one table per length
//! instead of visiting every policy, and still returns the first match. The SPD is immutable
//! once built; the control side publishes a new one to change it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An address prefix, stored as a 128-bit value (IPv4 in the low 32 bits) and a mask.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    v6: bool,
    addr: u128,
    mask: u128,
    len: u8,
}

impl Prefix {
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, String> {
        let (v6, bits, a) = match addr {
            IpAddr::V4(a) => (false, 32, u32::from(a) as u128),
            IpAddr::V6(a) => (true, 128, u128::from(a)),
        };
        if len > bits {
            return Err(format!("prefix length {len} is longer than {bits}"));
        }
        let mask = if len == 0 {
            0
        } else {
            (!0u128 << (bits - len)) & (!0u128 >> (128 - bits))
        };
        Ok(Self {
            v6,
            addr: a & mask,
            mask,
            len,
        })
    }
    /// `0.0.0.0/0` or `::/0`.
    pub fn any(v6: bool) -> Self {
        Self {
            v6,
            addr: 0,
            mask: 0,
            len: 0,
        }
    }
    pub fn is_ipv6(&self) -> bool {
        self.v6
    }
    #[inline]
    pub fn contains_raw(&self, v6: bool, a: u128) -> bool {
        self.v6 == v6 && a & self.mask == self.addr
    }
    pub fn contains(&self, a: IpAddr) -> bool {
        let (v6, raw) = raw(a);
        self.contains_raw(v6, raw)
    }
    pub fn network(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(self.addr.into())
        } else {
            IpAddr::V4((self.addr as u32).into())
        }
    }
}

/// Address as (is IPv6, 128-bit value).
#[inline]
pub fn raw(a: IpAddr) -> (bool, u128) {
    match a {
        IpAddr::V4(a) => (false, u32::from(a) as u128),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.len)
    }
}
impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{a}` is not an IP address"))?;
        let len = match l {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .map_err(|_| format!("`{l}` is not a prefix length"))?,
            None => {
                if addr.is_ipv4() {
                    32
                } else {
                    128
                }
            }
        };
        Prefix::new(addr, len)
    }
}

impl Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ANY: PortRange = PortRange { lo: 0, hi: 65535 };
    #[inline]
    pub fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let p = |x: &str| {
            x.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{x}` is not a port number"))
        };
        let r = match s.split_once('-') {
            Some((a, b)) => PortRange {
                lo: p(a)?,
                hi: p(b)?,
            },
            None => {
                let v = p(s)?;
                PortRange { lo: v, hi: v }
            }
        };
        if r.lo > r.hi {
            return Err(format!("port range `{s}` is empty"));
        }
        Ok(r)
    }
}

/// What the SPD matches on (RFC 4301 §4.4.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selector {
    pub src: Prefix,
    pub dst: Prefix,
    pub protocol: Option<u8>,
    pub src_ports: PortRange,
    pub dst_ports: PortRange,
}

/// The packet fields a selector looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub v6: bool,
    pub src: u128,
    pub dst: u128,
    pub protocol: u8,
    /// 0 when the packet has no ports (or is a non-first fragment).
    pub src_port: u16,
    pub dst_port: u16,
}

impl FlowKey {
    /// The same flow seen in the other direction.
    pub fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            ..*self
        }
    }
}

impl Selector {
    #[inline]
    pub fn matches(&self, k: &FlowKey) -> bool {
        self.src.contains_raw(k.v6, k.src)
            && self.dst.contains_raw(k.v6, k.dst)
            && self.protocol.is_none_or(|p| p == k.protocol)
            && self.src_ports.contains(k.src_port)
            && self.dst_ports.contains(k.dst_port)
    }

    /// Match for a packet whose ports cannot be read (a fragment: RFC 4301 §4.4.1.1 OPAQUE,
    /// §7): addresses and protocol as usual, and only a selector that allows any port matches.
    #[inline]
    pub fn matches_without_ports(&self, k: &FlowKey) -> bool {
        self.src.contains_raw(k.v6, k.src)
            && self.dst.contains_raw(k.v6, k.dst)
            && self.protocol.is_none_or(|p| p == k.protocol)
            && self.src_ports == PortRange::ANY
            && self.dst_ports == PortRange::ANY
    }

    /// The selector of the same traffic seen in the other direction (an inbound SA's
    /// selectors are the reverse of the outbound policy's, RFC 4301 §4.4.2).
    pub fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            protocol: self.protocol,
            src_ports: self.dst_ports,
            dst_ports: self.src_ports,
        }
    }
}

/// What to do with a matching packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyAction {
    /// Encrypt into the tunnel with this index.
    Protect(u32),
    /// Leave it to the kernel (not encrypted).
    Bypass,
    /// Drop it.
    Discard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub selector: Selector,
    pub action: PolicyAction,
}

/// The security policy database.
#[derive(Clone, Debug)]
pub struct Spd {
    v4: Family,
    v6: Family,
    /// Action for packets no policy matches (Discard is counted as 13916).
    pub default: PolicyAction,
}

/// Families with more policies than this are indexed; shorter ones are scanned (faster).
const SCAN_MAX: usize = 16;

/// The policies of one address family, in priority order, and their index when long.
#[derive(Clone, Debug, Default)]
struct Family {
    list: Vec<Policy>,
    /// `None` when the list is scanned.
    index: Option<Box<Index>>,
}

#[derive(Clone, Debug)]
struct Index {
    /// By ascending smallest policy position.
    tuples: Vec<Tuple>,
    /// Policy positions, grouped per (tuple, masked destination), ascending within a group.
    ids: Vec<u32>,
}

/// The policies whose destination prefix has one length.
#[derive(Clone, Debug)]
struct Tuple {
    mask: u128,
    /// Smallest policy position in this tuple.
    first: u32,
    /// Masked destination → range of `Family::ids`.
    buckets: std::collections::HashMap<u128, (u32, u32), FoldHash>,
}

/// Hash for masked addresses (trusted keys from the configuration, not from packets).
#[derive(Clone, Copy, Debug, Default)]
struct FoldHash;

impl std::hash::BuildHasher for FoldHash {
    type Hasher = FoldHasher;
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher(0)
    }
}

struct FoldHasher(u64);

impl std::hash::Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u128(&mut self, v: u128) {
        let x = (v as u64) ^ ((v >> 64) as u64).rotate_left(32);
        self.0 = (self.0 ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 ^= self.0 >> 29;
    }
}

impl Family {
    fn new(list: Vec<Policy>) -> Self {
        if list.len() <= SCAN_MAX {
            return Self {
                list,
                ..Default::default()
            };
        }
        // (prefix length, masked destination, position), grouped by the first two.
        let mut keyed: Vec<(u8, u128, u32)> = list
            .iter()
            .enumerate()
            .map(|(i, p)| (p.selector.dst.len, p.selector.dst.addr, i as u32))
            .collect();
        keyed.sort_unstable();
        let mut tuples: Vec<Tuple> = Vec::new();
        let mut ids = Vec::with_capacity(keyed.len());
        let mut i = 0;
        while i < keyed.len() {
            let (len, addr, _) = keyed[i];
            let start = ids.len() as u32;
            while i < keyed.len() && keyed[i].0 == len && keyed[i].1 == addr {
                ids.push(keyed[i].2);
                i += 1;
            }
            let range = (start, ids.len() as u32);
            let first = ids[start as usize];
            match tuples.last_mut() {
                Some(t) if t.mask == list[first as usize].selector.dst.mask => {
                    t.first = t.first.min(first);
                    t.buckets.insert(addr, range);
                }
                _ => {
                    let mut buckets = std::collections::HashMap::with_hasher(FoldHash);
                    buckets.insert(addr, range);
                    tuples.push(Tuple {
                        mask: list[first as usize].selector.dst.mask,
                        first,
                        buckets,
                    });
                }
            }
        }
        tuples.sort_by_key(|t| t.first);
        Self {
            list,
            index: Some(Box::new(Index { tuples, ids })),
        }
    }

    /// First match through the index (long lists only; kept out of line so the short-list
    /// scan stays as tight as it was).
    #[inline(never)]
    fn indexed(&self, ix: &Index, k: &FlowKey) -> Option<&Policy> {
        let mut best = u32::MAX;
        for t in &ix.tuples {
            // Tuples come by their first position: none after this one can do better.
            if t.first >= best {
                break;
            }
            let Some(&(a, b)) = t.buckets.get(&(k.dst & t.mask)) else {
                continue;
            };
            for &i in &ix.ids[a as usize..b as usize] {
                if i >= best {
                    break;
                }
                if self.list[i as usize].selector.matches(k) {
                    best = i;
                    break;
                }
            }
        }
        self.list.get(best as usize)
    }
}

/// Result of an SPD lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Matched(PolicyAction),
    Default(PolicyAction),
}

impl Spd {
    /// Policies in priority order (first match wins).
    pub fn new(policies: Vec<Policy>, default: PolicyAction) -> Self {
        let (v6, v4): (Vec<Policy>, Vec<Policy>) =
            policies.into_iter().partition(|p| p.selector.src.is_ipv6());
        Self {
            v4: Family::new(v4),
            v6: Family::new(v6),
            default,
        }
    }

    pub fn len(&self) -> usize {
        self.v4.list.len() + self.v6.list.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.v4.list.iter().chain(self.v6.list.iter())
    }

    #[inline(always)]
    pub fn lookup(&self, k: &FlowKey) -> Lookup {
        let family = if k.v6 { &self.v6 } else { &self.v4 };
        let Some(ix) = &family.index else {
            for p in &family.list {
                if p.selector.matches(k) {
                    return Lookup::Matched(p.action);
                }
            }
            return Lookup::Default(self.default);
        };
        match family.indexed(ix, k) {
            Some(p) => Lookup::Matched(p.action),
            None => Lookup::Default(self.default),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(src: &str, dst: &str, proto: Option<u8>, dports: &str) -> Selector {
        Selector {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: proto,
            src_ports: PortRange::ANY,
            dst_ports: dports.parse().unwrap(),
        }
    }

    fn key(src: &str, dst: &str, proto: u8, dport: u16) -> FlowKey {
        let (v6, s) = raw(src.parse().unwrap());
        let (_, d) = raw(dst.parse().unwrap());
        FlowKey {
            v6,
            src: s,
            dst: d,
            protocol: proto,
            src_port: 1234,
            dst_port: dport,
        }
    }

    #[test]
    fn prefixes() {
        let p: Prefix = "192.0.2.77/24".parse().unwrap();
        assert_eq!(p.to_string(), "192.0.2.0/24");
        assert!(p.contains("192.0.2.1".parse().unwrap()));
        assert!(!p.contains("192.0.3.1".parse().unwrap()));
        assert!(!p.contains("::ffff:192.0.2.1".parse().unwrap()));
        let p6: Prefix = "fd00:1::/32".parse().unwrap();
        assert!(p6.contains("fd00:1::5".parse().unwrap()));
        assert!(
            "10.0.0.0/33"
                .parse::<Prefix>()
                .unwrap_err()
                .contains("longer")
        );
        assert!(
            "0.0.0.0/0"
                .parse::<Prefix>()
                .unwrap()
                .contains("203.0.113.9".parse().unwrap())
        );
        assert!("bogus/8".parse::<Prefix>().is_err());
    }

    #[test]
    fn reversed_and_portless_matching() {
        let s = Selector {
            src_ports: "2000".parse().unwrap(),
            ..sel("198.51.100.0/24", "192.0.2.0/24", Some(17), "53")
        };
        let r = s.reversed();
        let mut k = key("192.0.2.5", "198.51.100.9", 17, 2000);
        k.src_port = 53;
        assert!(r.matches(&k));
        assert!(!s.matches(&k));
        assert_eq!(r.reversed(), s);
        // Without ports only an any-port selector matches; protocol and addresses still count.
        assert!(!r.matches_without_ports(&k));
        let any = sel("192.0.2.0/24", "198.51.100.0/24", Some(17), "0-65535");
        assert!(any.matches_without_ports(&k));
        k.protocol = 6;
        assert!(!any.matches_without_ports(&k));
    }

    #[test]
    fn first_match_wins_and_default_applies() {
        let spd = Spd::new(
            vec![
                Policy {
                    selector: sel("192.0.2.0/24", "198.51.100.0/24", Some(17), "53"),
                    action: PolicyAction::Bypass,
                },
                Policy {
                    selector: sel("192.0.2.0/24", "198.51.100.0/24", None, "0-65535"),
                    action: PolicyAction::Protect(3),
                },
                Policy {
                    selector: sel("fd00:a::/64", "fd00:b::/64", None, "0-65535"),
                    action: PolicyAction::Protect(4),
                },
            ],
            PolicyAction::Discard,
        );
        assert_eq!(
            spd.lookup(&key("192.0.2.5", "198.51.100.9", 17, 53)),
            Lookup::Matched(PolicyAction::Bypass)
        );
        assert_eq!(
            spd.lookup(&key("192.0.2.5", "198.51.100.9", 17, 54)),
            Lookup::Matched(PolicyAction::Protect(3))
        );
        assert_eq!(
            spd.lookup(&key("fd00:a::1", "fd00:b::2", 6, 80)),
            Lookup::Matched(PolicyAction::Protect(4))
        );
        assert_eq!(
            spd.lookup(&key("203.0.113.1", "198.51.100.9", 6, 80)),
            Lookup::Default(PolicyAction::Discard)
        );
        assert!("9-3".parse::<PortRange>().is_err());
    }

    /// The indexed lookup (more than 16 policies) returns exactly what a first-match scan
    /// returns, for random policy sets over a small address space (so prefixes overlap, nest
    /// and repeat) and random packets, both families.
    #[test]
    fn indexed_lookup_equals_first_match_scan() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let v4 = |a: u8, b: u8, len: u8| {
            Prefix::new(IpAddr::from([10, 0, a % 4, b % 8]), len % 33).unwrap()
        };
        let v6 = |a: u8, b: u8, len: u8| {
            let mut o = [0u8; 16];
            o[0] = 0xfd;
            o[14] = a % 4;
            o[15] = b % 8;
            Prefix::new(
                IpAddr::from(o),
                [0, 8, 64, 120, 126, 127, 128][len as usize % 7],
            )
            .unwrap()
        };
        let policy = (any::<(u8, u8, u8, u8, u8, u8)>(), 0u8..4, 0u8..3, 0u32..40);
        let packet = (any::<(u8, u8, u8, u8)>(), 0u8..3, 0u16..4, any::<bool>());
        let mut runner = TestRunner::new(Config {
            cases: 300,
            ..Config::default()
        });
        runner
            .run(
                &(
                    proptest::collection::vec(policy, 0..80),
                    proptest::collection::vec(packet, 50),
                ),
                |(policies, packets)| {
                    let list: Vec<Policy> = policies
                        .iter()
                        .enumerate()
                        .map(|(i, &((sa, sb, sl, da, db, dl), proto, ports, t))| {
                            let six = i % 3 == 0;
                            let pfx = |a, b, l| if six { v6(a, b, l) } else { v4(a, b, l) };
                            Policy {
                                selector: Selector {
                                    src: pfx(sa, sb, sl),
                                    dst: pfx(da, db, dl),
                                    protocol: [None, Some(6), Some(17), None][proto as usize],
                                    src_ports: PortRange::ANY,
                                    dst_ports: [
                                        PortRange::ANY,
                                        PortRange { lo: 1, hi: 1 },
                                        PortRange { lo: 1, hi: 2 },
                                    ][ports as usize],
                                },
                                action: match t % 3 {
                                    0 => PolicyAction::Protect(t),
                                    1 => PolicyAction::Bypass,
                                    _ => PolicyAction::Discard,
                                },
                            }
                        })
                        .collect();
                    let spd = Spd::new(list.clone(), PolicyAction::Discard);
                    for &((sa, sb, da, db), proto, dport, six) in &packets {
                        let addr = |a, b| {
                            if six {
                                v6(a, b, 128).addr
                            } else {
                                v4(a, b, 32).addr
                            }
                        };
                        let k = FlowKey {
                            v6: six,
                            src: addr(sa, sb),
                            dst: addr(da, db),
                            protocol: [6, 17, 1][proto as usize],
                            src_port: 7,
                            dst_port: dport,
                        };
                        let want = list
                            .iter()
                            .filter(|p| p.selector.src.is_ipv6() == six)
                            .find(|p| p.selector.matches(&k))
                            .map_or(Lookup::Default(PolicyAction::Discard), |p| {
                                Lookup::Matched(p.action)
                            });
                        prop_assert_eq!(spd.lookup(&k), want, "{:?}", k);
                    }
                    Ok(())
                },
            )
            .unwrap();
    }
}
