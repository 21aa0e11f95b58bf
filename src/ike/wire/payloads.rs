//! The payload chain (RFC 2408 §3.2 generic header) and the typed payload views: KE, ID,
//! CERT, CR, HASH, SIG, NONCE, N, D, VID, NAT-D, NAT-OA. The SA payload lives in `sa.rs`.
//!
//! [`parse_payloads`] walks the chain once, checking each generic header (one length check
//! per payload) and each payload's content; the checked [`Payloads`] then iterates without
//! errors. Views borrow the message buffer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::consts::{notify, payload, protocol};
use super::error::{Field, Part, WireError};
use super::header::Cookie;
use super::sa::SaPayload;

/// What may follow the last payload of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trailing {
    /// Nothing (an unencrypted message: its length is the sum of its payloads).
    Forbidden,
    /// Any bytes (RFC 2409 §5.3: the padding of a decrypted body).
    Padding,
}

/// The part a top-level payload type names; `None` for types that are unknown or not
/// allowed at the top level (proposal, transform).
pub(crate) fn part_of(ty: u8) -> Option<Part> {
    Some(match ty {
        payload::SA => Part::Sa,
        payload::KE => Part::KeyExchange,
        payload::ID => Part::Id,
        payload::CERT => Part::Cert,
        payload::CERT_REQ => Part::CertRequest,
        payload::HASH => Part::Hash,
        payload::SIG => Part::Signature,
        payload::NONCE => Part::Nonce,
        payload::NOTIFY => Part::Notify,
        payload::DELETE => Part::Delete,
        payload::VENDOR_ID => Part::VendorId,
        payload::NAT_D | payload::NAT_D_DRAFT => Part::NatD,
        payload::NAT_OA | payload::NAT_OA_DRAFT => Part::NatOa,
        _ => return None,
    })
}

/// One generic payload header at the start of `rest` (RFC 2408 §3.2): returns the next
/// payload type, the payload's content, the whole payload and what follows it.
pub(crate) type Generic<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

#[inline]
pub(crate) fn generic(part: Part, rest: &[u8]) -> Result<Generic<'_>, WireError> {
    let Some(&[next, reserved, l0, l1]) = rest.first_chunk::<4>() else {
        return Err(WireError::at(part, Field::Length));
    };
    if reserved != 0 {
        return Err(WireError::at(part, Field::Reserved));
    }
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    let Some((whole, after)) = rest.split_at_checked(len) else {
        return Err(WireError::at(part, Field::Length));
    };
    let Some(content) = whole.get(4..) else {
        return Err(WireError::at(part, Field::Length));
    };
    Ok((next, content, whole, after))
}

/// One payload, typed, borrowing the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Sa(SaPayload<'a>),
    /// The public Diffie-Hellman value (its size is checked against the group by the caller).
    KeyExchange(&'a [u8]),
    Id(IdPayload<'a>),
    Cert {
        encoding: u8,
        data: &'a [u8],
    },
    CertRequest {
        cert_type: u8,
        authority: &'a [u8],
    },
    Hash(&'a [u8]),
    Signature(&'a [u8]),
    /// 8 to 256 bytes (RFC 2409 §5).
    Nonce(&'a [u8]),
    Notify(NotifyPayload<'a>),
    Delete(DeletePayload<'a>),
    VendorId(&'a [u8]),
    /// RFC 3947 §3.2; `draft` for payload type 130.
    NatD {
        hash: &'a [u8],
        draft: bool,
    },
    /// RFC 3947 §5.2 (parsed, and ignorable: espd does not use transport mode).
    NatOa {
        addr: IpAddr,
        draft: bool,
    },
}

impl Payload<'_> {
    /// The payload type number on the wire.
    pub fn payload_type(&self) -> u8 {
        match self {
            Payload::Sa(_) => payload::SA,
            Payload::KeyExchange(_) => payload::KE,
            Payload::Id(_) => payload::ID,
            Payload::Cert { .. } => payload::CERT,
            Payload::CertRequest { .. } => payload::CERT_REQ,
            Payload::Hash(_) => payload::HASH,
            Payload::Signature(_) => payload::SIG,
            Payload::Nonce(_) => payload::NONCE,
            Payload::Notify(_) => payload::NOTIFY,
            Payload::Delete(_) => payload::DELETE,
            Payload::VendorId(_) => payload::VENDOR_ID,
            Payload::NatD { draft: false, .. } => payload::NAT_D,
            Payload::NatD { draft: true, .. } => payload::NAT_D_DRAFT,
            Payload::NatOa { draft: false, .. } => payload::NAT_OA,
            Payload::NatOa { draft: true, .. } => payload::NAT_OA_DRAFT,
        }
    }
}

/// An identification payload (RFC 2407 §4.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdPayload<'a> {
    /// IP protocol (0: any; phase 1 uses 0 or 17).
    pub protocol: u8,
    /// Port (0: any; phase 1 uses 0 or 500).
    pub port: u16,
    pub identity: Identity<'a>,
    /// The payload's content after the generic header: IDii_b / IDir_b of RFC 2409 §5.
    pub body: &'a [u8],
}

/// The identification data, by type (RFC 2407 §4.6.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity<'a> {
    Ipv4(Ipv4Addr),
    Fqdn(&'a [u8]),
    UserFqdn(&'a [u8]),
    Ipv4Subnet { addr: Ipv4Addr, mask: Ipv4Addr },
    Ipv6(Ipv6Addr),
    Ipv6Subnet { addr: Ipv6Addr, mask: Ipv6Addr },
    Ipv4Range { start: Ipv4Addr, end: Ipv4Addr },
    Ipv6Range { start: Ipv6Addr, end: Ipv6Addr },
    DerAsn1Dn(&'a [u8]),
    DerAsn1Gn(&'a [u8]),
    KeyId(&'a [u8]),
}

fn v4(b: &[u8]) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::from(*b.first_chunk::<4>()?))
}

fn v6(b: &[u8]) -> Option<Ipv6Addr> {
    Some(Ipv6Addr::from(*b.first_chunk::<16>()?))
}

impl<'a> Identity<'a> {
    /// The identification type number.
    pub fn id_type(&self) -> u8 {
        use super::consts::id_type as t;
        match self {
            Identity::Ipv4(_) => t::IPV4_ADDR,
            Identity::Fqdn(_) => t::FQDN,
            Identity::UserFqdn(_) => t::USER_FQDN,
            Identity::Ipv4Subnet { .. } => t::IPV4_ADDR_SUBNET,
            Identity::Ipv6(_) => t::IPV6_ADDR,
            Identity::Ipv6Subnet { .. } => t::IPV6_ADDR_SUBNET,
            Identity::Ipv4Range { .. } => t::IPV4_ADDR_RANGE,
            Identity::Ipv6Range { .. } => t::IPV6_ADDR_RANGE,
            Identity::DerAsn1Dn(_) => t::DER_ASN1_DN,
            Identity::DerAsn1Gn(_) => t::DER_ASN1_GN,
            Identity::KeyId(_) => t::KEY_ID,
        }
    }

    /// Parses identification data of type `ty`: addresses must have their exact size, the
    /// other types at least one byte.
    pub fn parse(ty: u8, data: &'a [u8]) -> Result<Self, WireError> {
        use super::consts::id_type as t;
        let bad = WireError::at(Part::Id, Field::Data);
        let exact = |n: usize| if data.len() == n { Ok(()) } else { Err(bad) };
        let text = |f: fn(&'a [u8]) -> Identity<'a>| {
            if data.is_empty() {
                Err(bad)
            } else {
                Ok(f(data))
            }
        };
        let (a, b) = data.split_at(data.len() / 2);
        match ty {
            t::IPV4_ADDR => exact(4).and_then(|_| v4(data).map(Identity::Ipv4).ok_or(bad)),
            t::IPV6_ADDR => exact(16).and_then(|_| v6(data).map(Identity::Ipv6).ok_or(bad)),
            t::IPV4_ADDR_SUBNET | t::IPV4_ADDR_RANGE => {
                exact(8)?;
                let (x, y) = (v4(a).ok_or(bad)?, v4(b).ok_or(bad)?);
                Ok(if ty == t::IPV4_ADDR_SUBNET {
                    Identity::Ipv4Subnet { addr: x, mask: y }
                } else {
                    Identity::Ipv4Range { start: x, end: y }
                })
            }
            t::IPV6_ADDR_SUBNET | t::IPV6_ADDR_RANGE => {
                exact(32)?;
                let (x, y) = (v6(a).ok_or(bad)?, v6(b).ok_or(bad)?);
                Ok(if ty == t::IPV6_ADDR_SUBNET {
                    Identity::Ipv6Subnet { addr: x, mask: y }
                } else {
                    Identity::Ipv6Range { start: x, end: y }
                })
            }
            t::FQDN => text(Identity::Fqdn),
            t::USER_FQDN => text(Identity::UserFqdn),
            t::DER_ASN1_DN => text(Identity::DerAsn1Dn),
            t::DER_ASN1_GN => text(Identity::DerAsn1Gn),
            t::KEY_ID => text(Identity::KeyId),
            _ => Err(WireError::at(Part::Id, Field::IdType)),
        }
    }

    /// Appends the identification data (what [`Identity::parse`] reads).
    pub fn write_data(&self, out: &mut Vec<u8>) {
        match *self {
            Identity::Ipv4(a) => out.extend_from_slice(&a.octets()),
            Identity::Ipv6(a) => out.extend_from_slice(&a.octets()),
            Identity::Ipv4Subnet { addr: x, mask: y }
            | Identity::Ipv4Range { start: x, end: y } => {
                out.extend_from_slice(&x.octets());
                out.extend_from_slice(&y.octets());
            }
            Identity::Ipv6Subnet { addr: x, mask: y }
            | Identity::Ipv6Range { start: x, end: y } => {
                out.extend_from_slice(&x.octets());
                out.extend_from_slice(&y.octets());
            }
            Identity::Fqdn(d)
            | Identity::UserFqdn(d)
            | Identity::DerAsn1Dn(d)
            | Identity::DerAsn1Gn(d)
            | Identity::KeyId(d) => out.extend_from_slice(d),
        }
    }

    /// The prefix length of a subnet identity whose mask is contiguous.
    pub fn prefix_len(&self) -> Option<u8> {
        // Left-aligned in 128 bits, so an IPv4 mask has 96 zero bits after it.
        let bits = match *self {
            Identity::Ipv4Subnet { mask, .. } => u128::from(mask.to_bits()) << 96,
            Identity::Ipv6Subnet { mask, .. } => mask.to_bits(),
            _ => return None,
        };
        let ones = bits.leading_ones();
        // Contiguous: nothing set after the leading ones (a shift by 128 is None: all ones).
        (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
    }
}

/// Whether an SPI of `size` bytes is allowed for `proto` in a proposal, notify or delete.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpiUse {
    Proposal,
    Notify,
    Delete,
}

/// RFC 2408 §2.4 / RFC 2407 §4.4.1: ISAKMP SPIs are the cookies (16 bytes; 0 or 8 in
/// proposals and notifies by some peers), ESP and AH SPIs 4 bytes, IPComp CPIs 2 (or 4).
pub(crate) fn check_spi(part: Part, use_: SpiUse, proto: u8, size: u8) -> Result<(), WireError> {
    let ok = match (proto, use_) {
        (0, SpiUse::Notify) => size == 0,
        (protocol::ISAKMP, SpiUse::Delete) => size == 16,
        (protocol::ISAKMP, _) => matches!(size, 0 | 8 | 16),
        (protocol::AH | protocol::ESP, SpiUse::Notify) => matches!(size, 0 | 4),
        (protocol::AH | protocol::ESP, _) => size == 4,
        (protocol::IPCOMP, SpiUse::Notify) => matches!(size, 0 | 2 | 4),
        (protocol::IPCOMP, _) => matches!(size, 2 | 4),
        _ => return Err(WireError::at(part, Field::Protocol)),
    };
    if ok {
        Ok(())
    } else {
        Err(WireError::at(part, Field::SpiSize))
    }
}

/// A notification (RFC 2408 §3.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotifyPayload<'a> {
    /// 0 (ISAKMP) or 1 (IPsec).
    pub doi: u32,
    pub protocol: u8,
    pub notify_type: u16,
    pub spi: &'a [u8],
    pub data: &'a [u8],
}

impl NotifyPayload<'_> {
    /// RFC 3706 §5: the sequence number of an R-U-THERE or R-U-THERE-ACK.
    pub fn dpd_seq(&self) -> Option<u32> {
        match self.notify_type {
            notify::R_U_THERE | notify::R_U_THERE_ACK => {
                Some(u32::from_be_bytes(*self.data.first_chunk::<4>()?))
            }
            _ => None,
        }
    }

    /// The cookies an ISAKMP-protocol notify names in its SPI (DPD, INITIAL-CONTACT).
    pub fn cookies(&self) -> Option<(Cookie, Cookie)> {
        cookies_of(self.protocol, self.spi)
    }
}

fn cookies_of(proto: u8, spi: &[u8]) -> Option<(Cookie, Cookie)> {
    if proto != protocol::ISAKMP {
        return None;
    }
    let (i, r) = spi.split_first_chunk::<8>()?;
    Some((*i, *r.first_chunk::<8>().filter(|_| r.len() == 8)?))
}

/// A deletion (RFC 2408 §3.15): one or more SPIs of one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeletePayload<'a> {
    doi: u32,
    protocol: u8,
    spi_size: u8,
    /// `count` SPIs of `spi_size` bytes, checked.
    spis: &'a [u8],
}

impl<'a> DeletePayload<'a> {
    pub fn doi(&self) -> u32 {
        self.doi
    }
    pub fn protocol(&self) -> u8 {
        self.protocol
    }
    pub fn spi_size(&self) -> u8 {
        self.spi_size
    }
    /// The SPIs, concatenated.
    pub fn spi_bytes(&self) -> &'a [u8] {
        self.spis
    }
    /// Number of SPIs (at least 1).
    pub fn count(&self) -> usize {
        self.spis.len() / usize::from(self.spi_size.max(1))
    }
    /// Each SPI.
    pub fn spis(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        self.spis.chunks_exact(usize::from(self.spi_size.max(1)))
    }
    /// RFC 2408 §3.15: an ISAKMP SA delete names its SA by icookie‖rcookie.
    pub fn isakmp_cookies(&self) -> Option<(Cookie, Cookie)> {
        cookies_of(self.protocol, self.spis)
    }
    /// The SPIs of an ESP (or AH) delete.
    pub fn esp_spis(&self) -> impl Iterator<Item = u32> + use<'a> {
        let four = self.spi_size == 4 && matches!(self.protocol, protocol::ESP | protocol::AH);
        self.spis
            .chunks_exact(4)
            .filter(move |_| four)
            .filter_map(|c| Some(u32::from_be_bytes(*c.first_chunk::<4>()?)))
    }
}

fn be32(b: &[u8]) -> u32 {
    b.first_chunk::<4>().map_or(0, |c| u32::from_be_bytes(*c))
}

/// Parses the content of one payload of type `ty` (whose part is `part`).
pub(crate) fn parse_typed<'a>(ty: u8, part: Part, c: &'a [u8]) -> Result<Payload<'a>, WireError> {
    let bad = |f| WireError::at(part, f);
    let nonempty = |c: &'a [u8]| {
        if c.is_empty() {
            Err(bad(Field::Data))
        } else {
            Ok(c)
        }
    };
    Ok(match ty {
        payload::SA => Payload::Sa(SaPayload::parse(c)?),
        payload::KE => Payload::KeyExchange(nonempty(c)?),
        payload::ID => {
            let Some((&[id_type, protocol, p0, p1], data)) = c.split_first_chunk::<4>() else {
                return Err(bad(Field::Length));
            };
            Payload::Id(IdPayload {
                protocol,
                port: u16::from_be_bytes([p0, p1]),
                identity: Identity::parse(id_type, data)?,
                body: c,
            })
        }
        payload::CERT | payload::CERT_REQ => {
            let Some((&t, data)) = c.split_first() else {
                return Err(bad(Field::Length));
            };
            if ty == payload::CERT {
                Payload::Cert { encoding: t, data }
            } else {
                Payload::CertRequest {
                    cert_type: t,
                    authority: data,
                }
            }
        }
        payload::HASH => Payload::Hash(nonempty(c)?),
        payload::SIG => Payload::Signature(nonempty(c)?),
        payload::NONCE => {
            // RFC 2409 §5: "between 8 and 256 bytes inclusive".
            if !(8..=256).contains(&c.len()) {
                return Err(bad(Field::Data));
            }
            Payload::Nonce(c)
        }
        payload::NOTIFY => {
            let Some((fixed, rest)) = c.split_first_chunk::<8>() else {
                return Err(bad(Field::Length));
            };
            let (doi, proto, spi_size) = (be32(fixed), fixed[4], fixed[5]);
            if doi > 1 {
                return Err(bad(Field::Doi));
            }
            check_spi(part, SpiUse::Notify, proto, spi_size)?;
            let Some((spi, data)) = rest.split_at_checked(usize::from(spi_size)) else {
                return Err(bad(Field::Length));
            };
            let n = NotifyPayload {
                doi,
                protocol: proto,
                notify_type: u16::from_be_bytes([fixed[6], fixed[7]]),
                spi,
                data,
            };
            // RFC 3706 §5: DPD notifies carry exactly the 32-bit sequence number.
            if matches!(n.notify_type, notify::R_U_THERE | notify::R_U_THERE_ACK) && data.len() != 4
            {
                return Err(bad(Field::Data));
            }
            Payload::Notify(n)
        }
        payload::DELETE => {
            let Some((fixed, spis)) = c.split_first_chunk::<8>() else {
                return Err(bad(Field::Length));
            };
            let (doi, proto, spi_size) = (be32(fixed), fixed[4], fixed[5]);
            let count = usize::from(u16::from_be_bytes([fixed[6], fixed[7]]));
            if doi > 1 {
                return Err(bad(Field::Doi));
            }
            check_spi(part, SpiUse::Delete, proto, spi_size)?;
            if count == 0 || count * usize::from(spi_size) != spis.len() {
                return Err(bad(Field::Count));
            }
            Payload::Delete(DeletePayload {
                doi,
                protocol: proto,
                spi_size,
                spis,
            })
        }
        payload::VENDOR_ID => Payload::VendorId(nonempty(c)?),
        payload::NAT_D | payload::NAT_D_DRAFT => Payload::NatD {
            hash: nonempty(c)?,
            draft: ty == payload::NAT_D_DRAFT,
        },
        payload::NAT_OA | payload::NAT_OA_DRAFT => {
            let Some((&[t, r0, r1, r2], a)) = c.split_first_chunk::<4>() else {
                return Err(bad(Field::Length));
            };
            if [r0, r1, r2] != [0; 3] {
                return Err(bad(Field::Reserved));
            }
            use super::consts::id_type;
            let addr = match (t, a.len()) {
                (id_type::IPV4_ADDR, 4) => v4(a).map(IpAddr::V4),
                (id_type::IPV6_ADDR, 16) => v6(a).map(IpAddr::V6),
                (id_type::IPV4_ADDR | id_type::IPV6_ADDR, _) => return Err(bad(Field::Data)),
                _ => return Err(bad(Field::IdType)),
            };
            Payload::NatOa {
                addr: addr.ok_or(bad(Field::Data))?,
                draft: ty == payload::NAT_OA_DRAFT,
            }
        }
        _ => return Err(WireError::InvalidPayloadType(ty)),
    })
}

/// One payload's raw bytes, as the chain walk found them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawPayload<'a> {
    pub payload_type: u8,
    /// The whole payload, generic header included.
    pub bytes: &'a [u8],
}

impl<'a> RawPayload<'a> {
    /// The content after the generic header.
    pub fn body(&self) -> &'a [u8] {
        self.bytes.get(4..).unwrap_or_default()
    }
}

/// One step of the chain walk: the payload of type `ty` at the start of `rest`.
fn step<'a>(
    ty: u8,
    rest: &'a [u8],
) -> Result<(Payload<'a>, RawPayload<'a>, u8, &'a [u8]), WireError> {
    let part = part_of(ty).ok_or(WireError::InvalidPayloadType(ty))?;
    let (next, content, whole, after) = generic(part, rest)?;
    let p = parse_typed(ty, part, content)?;
    let raw = RawPayload {
        payload_type: ty,
        bytes: whole,
    };
    Ok((p, raw, next, after))
}

/// A checked payload chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payloads<'a> {
    first: u8,
    chain: &'a [u8],
    padding: &'a [u8],
}

/// Walks and checks the chain that starts with a payload of type `first` at the start of
/// `body`. Every payload's generic header and content are checked here, once.
pub fn parse_payloads(
    first: u8,
    body: &[u8],
    trailing: Trailing,
) -> Result<Payloads<'_>, WireError> {
    let (mut ty, mut rest) = (first, body);
    while ty != payload::NONE {
        let (_, _, next, after) = step(ty, rest)?;
        (ty, rest) = (next, after);
    }
    if trailing == Trailing::Forbidden && !rest.is_empty() {
        // The header's length is not the sum of the payloads' lengths.
        return Err(WireError::at(Part::Header, Field::Length));
    }
    let (chain, padding) = body.split_at(body.len() - rest.len());
    Ok(Payloads {
        first,
        chain,
        padding,
    })
}

/// RFC 2409 §5.3: the payload chain of a decrypted body, whose first payload type is the
/// header's next-payload field; padding after the last payload is allowed.
pub fn parse_decrypted(first: u8, body: &[u8]) -> Result<Payloads<'_>, WireError> {
    parse_payloads(first, body, Trailing::Padding)
}

impl<'a> Payloads<'a> {
    /// The type of the first payload (`0` for an empty chain).
    pub fn first_type(&self) -> u8 {
        self.first
    }
    /// The chain's bytes, without padding (RFC 2409 §5.5: what HASH(1..3) cover ends here).
    pub fn chain(&self) -> &'a [u8] {
        self.chain
    }
    /// Bytes after the last payload (always empty for an unencrypted message).
    pub fn padding(&self) -> &'a [u8] {
        self.padding
    }
    pub fn is_empty(&self) -> bool {
        self.first == payload::NONE
    }
    /// The typed payloads in order.
    pub fn iter(&self) -> PayloadIter<'a> {
        PayloadIter {
            ty: self.first,
            rest: self.chain,
        }
    }
    /// The payloads' raw bytes in order (for hashes over payload bodies and chain parts).
    pub fn raw(&self) -> impl Iterator<Item = RawPayload<'a>> + use<'a> {
        self.iter_both().map(|(_, r)| r)
    }
    fn iter_both(&self) -> impl Iterator<Item = (Payload<'a>, RawPayload<'a>)> + use<'a> {
        let (mut ty, mut rest) = (self.first, self.chain);
        std::iter::from_fn(move || {
            if ty == payload::NONE {
                return None;
            }
            // Checked by parse_payloads: an error cannot happen; end the walk if it did.
            let (p, raw, next, after) = step(ty, rest).ok()?;
            (ty, rest) = (next, after);
            Some((p, raw))
        })
    }
}

impl<'a> IntoIterator for Payloads<'a> {
    type Item = Payload<'a>;
    type IntoIter = PayloadIter<'a>;
    fn into_iter(self) -> PayloadIter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &Payloads<'a> {
    type Item = Payload<'a>;
    type IntoIter = PayloadIter<'a>;
    fn into_iter(self) -> PayloadIter<'a> {
        self.iter()
    }
}

/// Iterator over a checked chain's payloads.
#[derive(Clone, Debug)]
pub struct PayloadIter<'a> {
    ty: u8,
    rest: &'a [u8],
}

impl<'a> Iterator for PayloadIter<'a> {
    type Item = Payload<'a>;
    fn next(&mut self) -> Option<Payload<'a>> {
        if self.ty == payload::NONE {
            return None;
        }
        match step(self.ty, self.rest) {
            Ok((p, _, next, after)) => {
                (self.ty, self.rest) = (next, after);
                Some(p)
            }
            Err(_) => {
                self.ty = payload::NONE;
                None
            }
        }
    }
}
