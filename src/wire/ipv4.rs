//! IPv4 headers (RFC 791), with options.

use std::net::Ipv4Addr;

use super::{WireError, be16, checksum, put16};

pub const MIN_HEADER_LEN: usize = 20;

pub mod field {
    use crate::wire::Field;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

/// Don't Fragment flag in the flags/fragment-offset word.
pub const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET: u16 = 0x1fff;

/// A checked view of an IPv4 packet: header length and total length are consistent with the
/// buffer. Bytes past `total_len` (Ethernet padding) are ignored.
#[derive(Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Checks version, header length and total length against the buffer.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 4 {
            return Err(WireError::Malformed);
        }
        let ihl = ((b[0] & 0x0f) as usize) * 4;
        let total = be16(b, field::TOTAL_LEN) as usize;
        if ihl < MIN_HEADER_LEN || total < ihl {
            return Err(WireError::Malformed);
        }
        if total > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(Self { buf })
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }
    #[inline]
    pub fn header_len(&self) -> usize {
        ((self.b()[0] & 0x0f) as usize) * 4
    }
    #[inline]
    pub fn total_len(&self) -> usize {
        be16(self.b(), field::TOTAL_LEN) as usize
    }
    #[inline]
    pub fn tos(&self) -> u8 {
        self.b()[field::TOS]
    }
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }
    #[inline]
    pub fn flags_frag(&self) -> u16 {
        be16(self.b(), field::FLAGS_FRAG)
    }
    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.flags_frag() & FLAG_DF != 0
    }
    /// True for any fragment (more-fragments set or a non-zero offset).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.flags_frag() & (FLAG_MF | FRAG_OFFSET) != 0
    }
    /// True for a fragment other than the first (non-zero offset): it has no upper-layer header.
    #[inline]
    pub fn is_later_fragment(&self) -> bool {
        self.flags_frag() & FRAG_OFFSET != 0
    }
    #[inline]
    pub fn src(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }
    #[inline]
    pub fn dst(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }
    /// True when the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(0, &self.b()[..self.header_len()])) == 0xffff
    }
    /// The payload after the header, up to `total_len`.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len()]
    }
}

/// Recomputes the header checksum of the IPv4 header at the start of `hdr`
/// (header length taken from the IHL field; caller checked it).
#[inline]
pub fn fill_checksum(hdr: &mut [u8]) {
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    put16(hdr, field::CHECKSUM, 0);
    let c = checksum::checksum(&hdr[..ihl]);
    put16(hdr, field::CHECKSUM, c);
}

/// True when the header checksum of the IPv4 header `hdr` (exactly the header) verifies.
#[inline]
pub fn checksum_ok(hdr: &[u8]) -> bool {
    checksum::fold(checksum::sum(0, hdr)) == 0xffff
}

/// Sets byte `at` of the IPv4 header at the start of `hdr` and updates the checksum
/// incrementally (RFC 1624).
#[inline]
fn set_byte(hdr: &mut [u8], at: usize, v: u8) {
    let w = at & !1;
    let old = be16(hdr, w);
    hdr[at] = v;
    let c = checksum::update(be16(hdr, field::CHECKSUM), old, be16(hdr, w));
    put16(hdr, field::CHECKSUM, c);
}

/// RFC 1812 §5.3.1: decrements the TTL of the IPv4 header at the start of `hdr` (checksum
/// updated, RFC 1624). Returns false, leaving the header as it is, when the TTL would reach 0.
#[inline]
pub fn decrement_ttl(hdr: &mut [u8]) -> bool {
    let ttl = hdr[field::TTL];
    if ttl <= 1 {
        return false;
    }
    set_byte(hdr, field::TTL, ttl - 1);
    true
}

/// The ECN field (RFC 3168 §5) of the IPv4 header at the start of `hdr`.
#[inline]
pub fn ecn(hdr: &[u8]) -> u8 {
    hdr[field::TOS] & 3
}

/// Sets the ECN field of the IPv4 header at the start of `hdr` (checksum updated).
#[inline]
pub fn set_ecn(hdr: &mut [u8], ecn: u8) {
    set_byte(hdr, field::TOS, (hdr[field::TOS] & !3) | (ecn & 3));
}

/// The fields of an option-less IPv4 header that espd emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub payload_len: usize,
    pub tos: u8,
    pub ttl: u8,
    pub dont_frag: bool,
}

impl Ipv4Repr {
    /// Writes a 20-byte header with its checksum into `hdr`.
    #[inline]
    pub fn emit(&self, hdr: &mut [u8]) {
        let h = &mut hdr[..MIN_HEADER_LEN];
        h[field::VER_IHL] = 0x45;
        h[field::TOS] = self.tos;
        put16(
            h,
            field::TOTAL_LEN,
            (MIN_HEADER_LEN + self.payload_len) as u16,
        );
        // RFC 6864 §4.1: the ID of an atomic datagram (DF set) has no meaning; use zero.
        put16(h, field::IDENT, 0);
        put16(
            h,
            field::FLAGS_FRAG,
            if self.dont_frag { FLAG_DF } else { 0 },
        );
        h[field::TTL] = self.ttl;
        h[field::PROTOCOL] = self.protocol;
        h[field::SRC].copy_from_slice(&self.src.octets());
        h[field::DST].copy_from_slice(&self.dst.octets());
        fill_checksum(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_then_parse() {
        let r = Ipv4Repr {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::new(198, 51, 100, 7),
            protocol: 17,
            payload_len: 8,
            tos: 0x10,
            ttl: 64,
            dont_frag: true,
        };
        let mut b = [0u8; 28];
        r.emit(&mut b);
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!((p.src(), p.dst(), p.protocol()), (r.src, r.dst, 17));
        assert_eq!((p.header_len(), p.total_len(), p.tos()), (20, 28, 0x10));
        assert!(p.dont_frag() && !p.is_fragment());
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(
            Ipv4Packet::new_checked(&[0x45u8; 10][..]).unwrap_err(),
            WireError::Truncated
        );
        let mut b = [0u8; 20];
        b[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
        b[0] = 0x44; // IHL 16 bytes
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
        b[0] = 0x46; // IHL 24 with 20-byte buffer
        put16(&mut b, field::TOTAL_LEN, 24);
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn ttl_and_ecn_keep_the_checksum_valid() {
        let mut b = [0u8; 20];
        Ipv4Repr {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::new(198, 51, 100, 7),
            protocol: 6,
            payload_len: 0,
            tos: 0xb8 | 2,
            ttl: 2,
            dont_frag: true,
        }
        .emit(&mut b);
        assert!(decrement_ttl(&mut b));
        assert_eq!(b[field::TTL], 1);
        assert!(checksum_ok(&b));
        let before = b;
        assert!(!decrement_ttl(&mut b), "TTL 1 would reach 0");
        assert_eq!(b, before);
        b[field::TTL] = 0;
        fill_checksum(&mut b);
        assert!(!decrement_ttl(&mut b));
        set_ecn(&mut b, 3);
        assert_eq!((b[field::TOS], ecn(&b)), (0xbb, 3));
        assert!(checksum_ok(&b));
        assert!(Ipv4Packet::new_checked(&b[..]).unwrap().verify_checksum());
    }

    #[test]
    fn options_are_skipped() {
        let mut b = [0u8; 32];
        b[0] = 0x46;
        put16(&mut b, field::TOTAL_LEN, 32);
        b[field::PROTOCOL] = 6;
        fill_checksum(&mut b);
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.payload().len(), 8);
        assert!(p.verify_checksum());
    }
}
