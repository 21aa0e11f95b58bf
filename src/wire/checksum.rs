//! The Internet checksum (RFC 1071) and the TCP/UDP pseudo-header sums.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Adds `data` to a running ones'-complement sum (not yet folded).
#[inline]
pub fn sum(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64;
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u16::from_be_bytes([rest[i], rest[i + 1]]) as u64;
        i += 2;
    }
    if i < rest.len() {
        acc += (rest[i] as u64) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits (not complemented).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for `data` (complement of the folded sum).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// RFC 1624 eqn. 3: the new value of checksum field `field` after a 16-bit word it covers
/// changed from `old` to `new` (HC' = ~(~HC + ~m + m')).
#[inline]
pub fn update(field: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!field) + u64::from(!old) + u64::from(new))
}

/// Pseudo-header sum for IPv4 (RFC 768 / RFC 793).
#[inline]
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u64 {
    let mut acc = sum(0, &src.octets());
    acc = sum(acc, &dst.octets());
    acc + proto as u64 + len as u64
}

/// Pseudo-header sum for IPv6 (RFC 8200 §8.1).
#[inline]
pub fn pseudo_v6(src: &Ipv6Addr, dst: &Ipv6Addr, proto: u8, len: u32) -> u64 {
    let mut acc = sum(0, &src.octets());
    acc = sum(acc, &dst.octets());
    acc + proto as u64 + len as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &d)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn incremental_update_equals_recomputation() {
        // Every value of one word, against a full recomputation (RFC 1624 §4: no -0 result).
        let mut h: [u8; 20] = [
            0x45, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0, 0, 192, 0, 2, 1, 198,
            51, 100, 7,
        ];
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        for v in 0..=u16::MAX {
            let mut g = h;
            let old = u16::from_be_bytes([g[8], g[9]]);
            g[8..10].copy_from_slice(&v.to_be_bytes());
            let inc = update(c, old, v);
            g[10..12].copy_from_slice(&[0, 0]);
            assert_eq!(inc, checksum(&g), "word {v:#06x}");
        }
    }

    #[test]
    fn odd_length() {
        assert_eq!(fold(sum(0, &[0xab])), 0xab00);
        assert_eq!(fold(sum(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }
}
