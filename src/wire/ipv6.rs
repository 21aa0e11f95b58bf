//! IPv6 headers (RFC 8200) and the walk over extension headers.

use std::net::Ipv6Addr;

use super::{WireError, be16, proto, put16};

pub const HEADER_LEN: usize = 40;

pub mod field {
    use crate::wire::Field;
    pub const VER_TC_FLOW: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Field = 8..24;
    pub const DST: Field = 24..40;
}

/// At most this many extension headers are walked; more is treated as malformed
/// (bounds the work an attacker can ask for).
pub const MAX_EXT_HEADERS: usize = 8;

/// A checked view of an IPv6 packet: the payload length fits the buffer.
#[derive(Debug)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        if HEADER_LEN + be16(b, field::PAYLOAD_LEN) as usize > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(Self { buf })
    }
    #[inline]
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }
    #[inline]
    pub fn payload_len(&self) -> usize {
        be16(self.b(), field::PAYLOAD_LEN) as usize
    }
    #[inline]
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.b()[field::NEXT_HEADER]
    }
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.b()[field::HOP_LIMIT]
    }
    /// Traffic class (DSCP and ECN).
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        let b = self.b();
        (b[0] << 4) | (b[1] >> 4)
    }
    #[inline]
    pub fn src(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[field::SRC]);
        Ipv6Addr::from(a)
    }
    #[inline]
    pub fn dst(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[field::DST]);
        Ipv6Addr::from(a)
    }
}

/// RFC 8200 §3: decrements the hop limit of the IPv6 header at the start of `hdr`. Returns
/// false, leaving it as it is, when the hop limit would reach 0.
#[inline]
pub fn decrement_hop_limit(hdr: &mut [u8]) -> bool {
    let h = hdr[field::HOP_LIMIT];
    if h <= 1 {
        return false;
    }
    hdr[field::HOP_LIMIT] = h - 1;
    true
}

/// The ECN field (RFC 3168 §5, the low two bits of the traffic class) of the IPv6 header at
/// the start of `hdr`.
#[inline]
pub fn ecn(hdr: &[u8]) -> u8 {
    (hdr[1] >> 4) & 3
}

/// Sets the ECN field of the IPv6 header at the start of `hdr`.
#[inline]
pub fn set_ecn(hdr: &mut [u8], ecn: u8) {
    hdr[1] = (hdr[1] & !0x30) | ((ecn & 3) << 4);
}

/// Where the upper-layer header starts after the extension headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpperLayer {
    /// Protocol of the upper layer (or of the first header the walk does not skip).
    pub protocol: u8,
    /// Offset of that header from the start of the IPv6 header.
    pub offset: usize,
    /// Offset of the byte holding `protocol` (the Next Header field that points at it).
    pub nh_field: usize,
    /// A Fragment header was crossed.
    pub fragment: bool,
    /// ... with a non-zero offset: what follows it is not a header, and the walk stops there
    /// (`protocol` is the Fragment header's Next Header, `offset` just past it).
    pub later_fragment: bool,
    /// Offset just past the last header that must stay in front of ESP in transport mode
    /// (hop-by-hop, routing, fragment; RFC 4303 §3.1.1).
    pub esp_insert: usize,
    /// Offset of the Next Header byte that points at the header found at `esp_insert`.
    pub esp_insert_nh_field: usize,
}

/// Walks the extension headers of the IPv6 packet `pkt` (checked, length `total`):
/// hop-by-hop, routing, fragment, destination options and AH are skipped.
pub fn upper_layer(pkt: &[u8], total: usize) -> Result<UpperLayer, WireError> {
    let mut nh = pkt[field::NEXT_HEADER];
    let mut nh_field = field::NEXT_HEADER;
    let mut off = HEADER_LEN;
    let mut fragment = false;
    let mut later_fragment = false;
    let mut esp_insert = HEADER_LEN;
    let mut esp_insert_nh_field = field::NEXT_HEADER;
    let mut in_front = true;
    for _ in 0..=MAX_EXT_HEADERS {
        let len = match nh {
            proto::HOPOPT | proto::IPV6_ROUTE | proto::IPV6_OPTS => {
                if off + 2 > total {
                    return Err(WireError::Truncated);
                }
                (pkt[off + 1] as usize + 1) * 8
            }
            proto::IPV6_FRAG => {
                if off + 8 > total {
                    return Err(WireError::Truncated);
                }
                fragment = true;
                // RFC 8200 §4.5: the offset is in the upper 13 bits of bytes 2..4.
                later_fragment = be16(pkt, off + 2) & 0xfff8 != 0;
                8
            }
            proto::AH => {
                if off + 2 > total {
                    return Err(WireError::Truncated);
                }
                (pkt[off + 1] as usize + 2) * 4
            }
            _ => {
                return Ok(UpperLayer {
                    protocol: nh,
                    offset: off,
                    nh_field,
                    fragment,
                    later_fragment,
                    esp_insert,
                    esp_insert_nh_field,
                });
            }
        };
        if off + len > total {
            return Err(WireError::Truncated);
        }
        let front = matches!(nh, proto::HOPOPT | proto::IPV6_ROUTE | proto::IPV6_FRAG);
        in_front &= front;
        nh_field = off;
        nh = pkt[off];
        off += len;
        if in_front {
            esp_insert = off;
            esp_insert_nh_field = nh_field;
        }
        if later_fragment {
            return Ok(UpperLayer {
                protocol: nh,
                offset: off,
                nh_field,
                fragment,
                later_fragment,
                esp_insert,
                esp_insert_nh_field,
            });
        }
    }
    Err(WireError::Malformed)
}

/// The fields of an IPv6 header (no extension headers) that espd emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Repr {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next_header: u8,
    pub payload_len: usize,
    pub traffic_class: u8,
    pub hop_limit: u8,
}

impl Ipv6Repr {
    #[inline]
    pub fn emit(&self, hdr: &mut [u8]) {
        let h = &mut hdr[..HEADER_LEN];
        h[0] = 0x60 | (self.traffic_class >> 4);
        h[1] = self.traffic_class << 4;
        h[2] = 0;
        h[3] = 0;
        put16(h, field::PAYLOAD_LEN, self.payload_len as u16);
        h[field::NEXT_HEADER] = self.next_header;
        h[field::HOP_LIMIT] = self.hop_limit;
        h[field::SRC].copy_from_slice(&self.src.octets());
        h[field::DST].copy_from_slice(&self.dst.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(exts: &[(u8, Vec<u8>)], upper: u8, payload: usize) -> Vec<u8> {
        let ext_len: usize = exts.iter().map(|e| e.1.len()).sum();
        let first = exts.first().map(|e| e.0).unwrap_or(upper);
        let mut b = vec![0u8; HEADER_LEN];
        Ipv6Repr {
            src: "fd00::1".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
            next_header: first,
            payload_len: ext_len + payload,
            traffic_class: 0xb8,
            hop_limit: 64,
        }
        .emit(&mut b);
        for (i, (_, body)) in exts.iter().enumerate() {
            let mut body = body.clone();
            body[0] = exts.get(i + 1).map(|e| e.0).unwrap_or(upper);
            b.extend_from_slice(&body);
        }
        b.extend(std::iter::repeat_n(0xaa, payload));
        b
    }

    #[test]
    fn walks_extension_headers() {
        let hop = vec![0, 0, 0, 0, 0, 0, 0, 0];
        let mut rt = vec![0u8; 24];
        rt[1] = 2;
        let frag = vec![0u8; 8];
        let dst = vec![0u8; 8];
        let p = packet(
            &[
                (proto::HOPOPT, hop),
                (proto::IPV6_ROUTE, rt),
                (proto::IPV6_FRAG, frag),
                (proto::IPV6_OPTS, dst),
            ],
            proto::UDP,
            12,
        );
        let v = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.traffic_class(), 0xb8);
        let u = upper_layer(&p, v.total_len()).unwrap();
        assert_eq!(u.protocol, proto::UDP);
        assert_eq!(u.offset, 40 + 8 + 24 + 8 + 8);
        assert!(u.fragment);
        assert_eq!(u.esp_insert, 40 + 8 + 24 + 8);
        assert_eq!(u.nh_field, 40 + 8 + 24 + 8);
        assert_eq!(u.esp_insert_nh_field, 40 + 8 + 24);
    }

    #[test]
    fn hop_limit_and_ecn() {
        let mut p = packet(&[], proto::UDP, 0);
        p[field::HOP_LIMIT] = 2;
        assert!(decrement_hop_limit(&mut p));
        assert!(!decrement_hop_limit(&mut p));
        assert_eq!(p[field::HOP_LIMIT], 1);
        assert_eq!(ecn(&p), 0); // traffic class 0xb8
        set_ecn(&mut p, 1);
        let v = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!((v.traffic_class(), ecn(&p)), (0xb9, 1));
    }

    #[test]
    fn later_fragment_stops_the_walk() {
        // Offset 8 bytes: the bytes after the Fragment header are payload, not a header.
        let mut frag = vec![0u8; 8];
        frag[3] = 8;
        let mut p = packet(&[(proto::IPV6_FRAG, frag)], proto::IPV6_OPTS, 16);
        p[49] = 0xff; // would be a huge destination-options length if walked
        let u = upper_layer(&p, p.len()).unwrap();
        assert_eq!(
            (u.protocol, u.offset, u.fragment, u.later_fragment),
            (proto::IPV6_OPTS, 48, true, true)
        );
        let first = packet(&[(proto::IPV6_FRAG, vec![0u8; 8])], proto::UDP, 8);
        let u = upper_layer(&first, first.len()).unwrap();
        assert_eq!(
            (u.protocol, u.fragment, u.later_fragment),
            (proto::UDP, true, false)
        );
    }

    #[test]
    fn truncated_and_looping_chains() {
        let p = packet(&[(proto::HOPOPT, vec![0u8; 8])], proto::TCP, 0);
        let mut short = p.clone();
        short[5] = 4; // payload length 4 < hop-by-hop length 8
        short.truncate(44);
        assert_eq!(upper_layer(&short, 44).unwrap_err(), WireError::Truncated);
        let many: Vec<_> = (0..10).map(|_| (proto::IPV6_OPTS, vec![0u8; 8])).collect();
        let p = packet(&many, proto::TCP, 0);
        assert_eq!(upper_layer(&p, p.len()).unwrap_err(), WireError::Malformed);
    }
}
