//! Inbound ESP processing (RFC 4303 §3.4), in place.
//!
//! Order: replay pre-check, ICV verification and decryption, replay commit (only after
//! authentication, so forged packets never move the window), then trailer checks.

use super::{EspError, PAYLOAD_OFFSET, aad};
use crate::sa::{Mode, Sa};
use crate::wire::esp::{EspPacket, ICV_LEN};
use crate::wire::{ipv4, ipv6, proto, put16};

/// Where the decapsulated packet lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decapped {
    /// Start and length of the inner IP packet (tunnel) or the rebuilt packet (transport).
    pub start: usize,
    pub len: usize,
    /// The full 64-bit sequence number.
    pub seq: u64,
    /// True when the packet is IPv6.
    pub v6: bool,
}

/// An ESP packet authenticated and decrypted in place whose sequence number is not yet
/// committed to the replay window (see [`open_only`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The full 64-bit sequence number.
    pub seq: u64,
    /// Start and length of the decrypted ciphertext (payload, padding, trailer).
    data: usize,
    ct_len: usize,
}

/// Opens the ESP packet `buf[esp_at..esp_at + esp_len]` of `sa` (SPI already matched).
/// Returns the decrypted payload range (payload without padding and trailer) and the next
/// header value.
#[inline]
pub fn open_at(
    sa: &Sa,
    buf: &mut [u8],
    esp_at: usize,
    esp_len: usize,
) -> Result<(usize, usize, u8, u64), EspError> {
    let o = open_only(sa, buf, esp_at, esp_len)?;
    commit(sa, &o)?;
    let (data_len, next_header) = trailer(buf, &o)?;
    Ok((o.data, data_len, next_header, o.seq))
}

/// The first half of [`open_at`]: the replay pre-check and the ICV verification with
/// decryption, without the replay commit. The caller commits the number ([`commit`], or
/// `ReplayWindow::commit_block` for several numbers of a batch at once) before it looks at
/// the trailer ([`finish`]), so that every authenticated packet moves the window.
#[inline]
pub fn open_only(
    sa: &Sa,
    buf: &mut [u8],
    esp_at: usize,
    esp_len: usize,
) -> Result<Opened, EspError> {
    let esp = buf
        .get_mut(esp_at..esp_at.saturating_add(esp_len))
        .ok_or(EspError::Malformed)?;
    let p = EspPacket::new_checked(&*esp).map_err(|_| EspError::Malformed)?;
    let ct_len = p.ciphertext_len();
    if ct_len % 4 != 0 {
        return Err(EspError::BadAlignment);
    }
    let replay = sa.replay.as_ref().ok_or(EspError::BadNextHeader)?;
    let seq = if sa.esn {
        replay.infer_esn(p.seq())
    } else {
        p.seq() as u64
    };
    // RFC 4303 §3.4.3: the replay check comes before the ICV check.
    replay.check(seq).map_err(|_| EspError::Replay)?;
    let nonce = sa.nonce(&p.iv());
    let mut a = [0u8; 12];
    let alen = aad(sa.spi, seq, sa.esn, &mut a);
    let (body, tag) = esp[PAYLOAD_OFFSET..].split_at_mut(ct_len);
    let tag: &[u8; ICV_LEN] = (&*tag).try_into().map_err(|_| EspError::Malformed)?;
    sa.open(&nonce, &a[..alen], body, tag)
        .map_err(|_| EspError::Integrity)?;
    Ok(Opened {
        seq,
        data: esp_at + PAYLOAD_OFFSET,
        ct_len,
    })
}

/// RFC 4303 §3.4.3: the window is updated only after the ICV verified.
#[inline]
pub fn commit(sa: &Sa, o: &Opened) -> Result<(), EspError> {
    let replay = sa.replay.as_ref().ok_or(EspError::BadNextHeader)?;
    replay.commit(o.seq).map_err(|_| EspError::Replay)
}

/// The trailer of an opened packet: payload length and next header.
#[inline]
fn trailer(buf: &[u8], o: &Opened) -> Result<(usize, u8), EspError> {
    let body = buf
        .get(o.data..o.data + o.ct_len)
        .ok_or(EspError::Malformed)?;
    let ct_len = o.ct_len;
    let next_header = body[ct_len - 1];
    let pad_len = body[ct_len - 2] as usize;
    if pad_len + 2 > ct_len {
        return Err(EspError::BadPadding);
    }
    let data_len = ct_len - 2 - pad_len;
    // §2.4: default padding is 1, 2, 3, ...
    if body[data_len..data_len + pad_len]
        .iter()
        .enumerate()
        .any(|(i, b)| *b as usize != i + 1)
    {
        return Err(EspError::BadPadding);
    }
    Ok((data_len, next_header))
}

/// Decapsulates an ESP packet. `ip_start` is the outer IP header, `ip_hdr_len` its length
/// (including IPv6 extension headers in front of ESP), `esp_at`/`esp_len` the ESP packet,
/// `nh_field` the offset (from `ip_start`) of the byte that names ESP (transport mode).
pub fn decap(
    sa: &Sa,
    buf: &mut [u8],
    ip_start: usize,
    ip_hdr_len: usize,
    nh_field: usize,
    esp_at: usize,
    esp_len: usize,
) -> Result<Decapped, EspError> {
    let o = open_only(sa, buf, esp_at, esp_len)?;
    commit(sa, &o)?;
    finish(sa, buf, ip_start, ip_hdr_len, nh_field, &o)
}

/// The second half of [`decap`], once `o`'s sequence number is committed: trailer checks,
/// then the inner packet (tunnel) or the rebuilt one (transport).
pub fn finish(
    sa: &Sa,
    buf: &mut [u8],
    ip_start: usize,
    ip_hdr_len: usize,
    nh_field: usize,
    o: &Opened,
) -> Result<Decapped, EspError> {
    let (data_len, next_header) = trailer(buf, o)?;
    let (data, seq) = (o.data, o.seq);
    if next_header == proto::IPV6_NONXT {
        return Err(EspError::Dummy);
    }
    match sa.mode {
        Mode::Tunnel => {
            let v6 = match next_header {
                proto::IPV4 => false,
                proto::IPV6 => true,
                _ => return Err(EspError::BadNextHeader),
            };
            let inner = &buf[data..data + data_len];
            // The inner length comes from the inner header: anything after it is TFC padding.
            let len = if v6 {
                ipv6::Ipv6Packet::new_checked(inner)
                    .map_err(|_| EspError::BadNextHeader)?
                    .total_len()
            } else {
                ipv4::Ipv4Packet::new_checked(inner)
                    .map_err(|_| EspError::BadNextHeader)?
                    .total_len()
            };
            Ok(Decapped {
                start: data,
                len,
                seq,
                v6,
            })
        }
        Mode::Transport => {
            let v6 = buf[ip_start] >> 4 == 6;
            // Move the IP header up against the payload and fix it.
            let new_start = data - ip_hdr_len;
            buf.copy_within(ip_start..ip_start + ip_hdr_len, new_start);
            let len = ip_hdr_len + data_len;
            let h = &mut buf[new_start..];
            h[nh_field] = next_header;
            if v6 {
                put16(h, ipv6::field::PAYLOAD_LEN, (len - ipv6::HEADER_LEN) as u16);
            } else {
                put16(h, ipv4::field::TOTAL_LEN, len as u16);
                ipv4::fill_checksum(h);
            }
            Ok(Decapped {
                start: new_start,
                len,
                seq,
                v6,
            })
        }
    }
}

/// ECN codepoints (RFC 3168 §5).
pub mod ecn {
    pub const NOT_ECT: u8 = 0;
    pub const ECT1: u8 = 1;
    pub const ECT0: u8 = 2;
    pub const CE: u8 = 3;
}

/// RFC 6040 §4.2 (normal mode): the ECN field the inner header leaves the decapsulator with,
/// given the arriving inner and outer ECN fields; `None`: the packet must be dropped (outer CE
/// on a Not-ECT inner packet: the congestion mark cannot be passed on).
#[inline]
pub fn ecn_decap(inner: u8, outer: u8) -> Option<u8> {
    use ecn::*;
    match (inner & 3, outer & 3) {
        (NOT_ECT, CE) => None,
        (NOT_ECT, _) => Some(NOT_ECT),
        (_, CE) => Some(CE),
        (ECT0, ECT1) => Some(ECT1),
        (i, _) => Some(i),
    }
}

#[cfg(test)]
mod tests {
    use super::ecn::*;
    use super::ecn_decap;

    /// The table of RFC 6040 §4.2, row by row (inner) and column by column (outer).
    #[test]
    fn rfc6040_table() {
        let cols = [NOT_ECT, ECT0, ECT1, CE];
        let table = [
            (NOT_ECT, [Some(NOT_ECT), Some(NOT_ECT), Some(NOT_ECT), None]),
            (ECT0, [Some(ECT0), Some(ECT0), Some(ECT1), Some(CE)]),
            (ECT1, [Some(ECT1), Some(ECT1), Some(ECT1), Some(CE)]),
            (CE, [Some(CE), Some(CE), Some(CE), Some(CE)]),
        ];
        for (inner, row) in table {
            for (outer, want) in cols.iter().zip(row) {
                assert_eq!(
                    ecn_decap(inner, *outer),
                    want,
                    "inner {inner} outer {outer}"
                );
            }
        }
    }
}
