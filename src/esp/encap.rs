//! Outbound ESP processing (RFC 4303 §3.3), in place.

use std::net::IpAddr;

use super::{EspError, PAYLOAD_OFFSET, aad};
use crate::sa::{Mode, Sa};
use crate::wire::esp::{HEADER_LEN, ICV_LEN, TRAILER_LEN};
use crate::wire::ipv4::{self, Ipv4Repr};
use crate::wire::ipv6::{self, Ipv6Repr};
use crate::wire::{proto, put16, put32, udp};

/// Default outer TTL / hop limit.
pub const OUTER_TTL: u8 = 64;

/// Bytes added in front of the inner packet (outer IP, UDP, ESP header, IV) and the most added
/// behind it (padding ≤ 3, trailer, ICV).
#[inline]
pub fn overhead(sa: &Sa) -> (usize, usize) {
    let outer = match (sa.mode, sa.endpoints) {
        (Mode::Tunnel, Some(e)) if e.local.is_ipv6() => ipv6::HEADER_LEN,
        (Mode::Tunnel, _) => ipv4::MIN_HEADER_LEN,
        (Mode::Transport, _) => 0,
    };
    let udp = if sa.encap.is_some() {
        udp::HEADER_LEN
    } else {
        0
    };
    (outer + udp + PAYLOAD_OFFSET, 3 + TRAILER_LEN + ICV_LEN)
}

/// Writes padding and trailer after `len` payload bytes at `buf[at..]`; returns the padded
/// length (payload + padding + trailer), a multiple of 4 (RFC 4303 §2.4, §2.5).
#[inline]
fn write_trailer(buf: &mut [u8], at: usize, len: usize, next_header: u8) -> usize {
    let pad = (4 - (len + TRAILER_LEN) % 4) % 4;
    let t = at + len;
    for i in 0..pad {
        buf[t + i] = (i + 1) as u8;
    }
    buf[t + pad] = pad as u8;
    buf[t + pad + 1] = next_header;
    len + pad + TRAILER_LEN
}

/// Seals the ESP packet at `esp` (header, IV, then `ct_len` bytes of payload+trailer, then room
/// for the ICV): writes SPI, seq, IV, encrypts and appends the ICV.
#[inline]
pub fn seal_at(
    sa: &Sa,
    seq: u64,
    iv: [u8; 8],
    esp: &mut [u8],
    ct_len: usize,
) -> Result<(), EspError> {
    put32(esp, 0, sa.spi);
    put32(esp, 4, seq as u32);
    esp[HEADER_LEN..PAYLOAD_OFFSET].copy_from_slice(&iv);
    let mut a = [0u8; 12];
    let alen = aad(sa.spi, seq, sa.esn, &mut a);
    let nonce = sa.nonce(&iv);
    let (body, rest) = esp[PAYLOAD_OFFSET..].split_at_mut(ct_len);
    let tag: &mut [u8; ICV_LEN] = (&mut rest[..ICV_LEN])
        .try_into()
        .map_err(|_| EspError::NoRoom)?;
    sa.seal(&nonce, &a[..alen], body, tag)
        .map_err(|_| EspError::Seal)
}

/// Encapsulates the IP packet at `buf[start..start + len]` with `seq` (also used as the IV,
/// RFC 4106 §3.1). Returns the new `(start, len)` of the outer packet (IP header onwards).
pub fn encap(
    sa: &Sa,
    seq: u64,
    buf: &mut [u8],
    start: usize,
    len: usize,
) -> Result<(usize, usize), EspError> {
    let end = start.checked_add(len).ok_or(EspError::Malformed)?;
    if end > buf.len() || len == 0 {
        return Err(EspError::Malformed);
    }
    match sa.mode {
        Mode::Tunnel => encap_tunnel(sa, seq, buf, start, len),
        Mode::Transport => encap_transport(sa, seq, buf, start, len),
    }
}

fn encap_tunnel(
    sa: &Sa,
    seq: u64,
    buf: &mut [u8],
    start: usize,
    len: usize,
) -> Result<(usize, usize), EspError> {
    let (inner_v6, tos) = match buf[start] >> 4 {
        4 if len >= ipv4::MIN_HEADER_LEN => (false, buf[start + 1]),
        6 if len >= ipv6::HEADER_LEN => (true, (buf[start] << 4) | (buf[start + 1] >> 4)),
        _ => return Err(EspError::Malformed),
    };
    let (head, tail) = overhead(sa);
    if start < head {
        return Err(EspError::NoRoom);
    }
    if start + len + tail > buf.len() {
        return Err(EspError::NoRoom);
    }
    let nh = if inner_v6 { proto::IPV6 } else { proto::IPV4 };
    let ct_len = write_trailer(buf, start, len, nh);
    let esp_at = start - PAYLOAD_OFFSET;
    let esp_len = PAYLOAD_OFFSET + ct_len + ICV_LEN;
    seal_at(sa, seq, seq.to_be_bytes(), &mut buf[esp_at..], ct_len)?;
    let ep = sa.endpoints.ok_or(EspError::Malformed)?;
    let udp_len = if sa.encap.is_some() {
        udp::HEADER_LEN
    } else {
        0
    };
    let outer_start = start - head;
    let l4_at = esp_at - udp_len;
    let l4_len = esp_len + udp_len;
    let protocol = if sa.encap.is_some() {
        proto::UDP
    } else {
        proto::ESP
    };
    // RFC 4301 §5.1.2.1: DSCP copied from the inner header; ECN copied (RFC 6040 normal mode).
    match (ep.local, ep.remote) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let total = ipv4::MIN_HEADER_LEN + l4_len;
            if total > 65535 {
                return Err(EspError::TooLong);
            }
            match sa.outer_v4() {
                Some((tmpl, base)) => {
                    // Template plus the two varying words: no full checksum per packet.
                    let h = &mut buf[outer_start..outer_start + ipv4::MIN_HEADER_LEN];
                    h.copy_from_slice(tmpl);
                    h[1] = tos;
                    put16(h, 2, total as u16);
                    let sum = *base as u64 + tos as u64 + total as u64;
                    put16(h, 10, !crate::wire::checksum::fold(sum));
                }
                None => Ipv4Repr {
                    src,
                    dst,
                    protocol,
                    payload_len: l4_len,
                    tos,
                    ttl: OUTER_TTL,
                    dont_frag: true,
                }
                .emit(&mut buf[outer_start..]),
            }
            if let Some(u) = sa.encap {
                // RFC 3948 §2.1: the UDP checksum is zero over IPv4.
                udp::emit(&mut buf[l4_at..], u.src_port, u.dst_port, l4_len);
            }
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            if l4_len > 65535 {
                return Err(EspError::TooLong);
            }
            Ipv6Repr {
                src,
                dst,
                next_header: protocol,
                payload_len: l4_len,
                traffic_class: tos,
                hop_limit: OUTER_TTL,
            }
            .emit(&mut buf[outer_start..]);
            if let Some(u) = sa.encap {
                udp::emit(&mut buf[l4_at..], u.src_port, u.dst_port, l4_len);
                // IPv6 needs a real UDP checksum (RFC 8200 §8.1).
                let acc = crate::wire::checksum::pseudo_v6(&src, &dst, proto::UDP, l4_len as u32);
                let c = !crate::wire::checksum::fold(crate::wire::checksum::sum(
                    acc,
                    &buf[l4_at..l4_at + l4_len],
                ));
                put16(buf, l4_at + 6, if c == 0 { 0xffff } else { c });
            }
        }
        _ => return Err(EspError::Malformed),
    }
    Ok((outer_start, head + ct_len + ICV_LEN))
}

/// Transport mode: the IP header (and IPv6 headers that must precede ESP) moves 16 bytes
/// towards the headroom; ESP header and IV go in the gap; the payload is encrypted in place.
/// Fragments of either family are refused: RFC 4303 §3.3.4 applies transport mode ESP to
/// whole datagrams only (the pipeline counts them as `fragment` before getting here).
fn encap_transport(
    sa: &Sa,
    seq: u64,
    buf: &mut [u8],
    start: usize,
    len: usize,
) -> Result<(usize, usize), EspError> {
    let pkt = &buf[start..start + len];
    let (hdr_len, next_header, nh_field, v6) = match pkt[0] >> 4 {
        4 => {
            let p = ipv4::Ipv4Packet::new_checked(pkt).map_err(|_| EspError::Malformed)?;
            if p.total_len() != len || p.is_fragment() {
                return Err(EspError::Malformed);
            }
            (p.header_len(), p.protocol(), ipv4::field::PROTOCOL, false)
        }
        6 => {
            let p = ipv6::Ipv6Packet::new_checked(pkt).map_err(|_| EspError::Malformed)?;
            if p.total_len() != len {
                return Err(EspError::Malformed);
            }
            let u = ipv6::upper_layer(pkt, len).map_err(|_| EspError::Malformed)?;
            if u.fragment {
                return Err(EspError::Malformed);
            }
            (
                u.esp_insert,
                pkt[u.esp_insert_nh_field],
                u.esp_insert_nh_field,
                true,
            )
        }
        _ => return Err(EspError::Malformed),
    };
    if start < PAYLOAD_OFFSET {
        return Err(EspError::NoRoom);
    }
    let payload_at = start + hdr_len;
    let payload_len = len - hdr_len;
    if payload_at + payload_len + 3 + TRAILER_LEN + ICV_LEN > buf.len() {
        return Err(EspError::NoRoom);
    }
    let new_start = start - PAYLOAD_OFFSET;
    buf.copy_within(start..payload_at, new_start);
    let ct_len = write_trailer(buf, payload_at, payload_len, next_header);
    let esp_at = payload_at - PAYLOAD_OFFSET;
    seal_at(sa, seq, seq.to_be_bytes(), &mut buf[esp_at..], ct_len)?;
    let new_len = hdr_len + PAYLOAD_OFFSET + ct_len + ICV_LEN;
    if new_len > 65535 {
        return Err(EspError::TooLong);
    }
    let h = &mut buf[new_start..];
    h[nh_field] = proto::ESP;
    if v6 {
        put16(
            h,
            ipv6::field::PAYLOAD_LEN,
            (new_len - ipv6::HEADER_LEN) as u16,
        );
    } else {
        put16(h, ipv4::field::TOTAL_LEN, new_len as u16);
        ipv4::fill_checksum(h);
    }
    Ok((new_start, new_len))
}
