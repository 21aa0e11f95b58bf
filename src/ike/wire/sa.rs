//! The SA payload (RFC 2408 §3.4, RFC 2407 §4.6.1) with its proposals (§3.5), transforms
//! (§3.6) and data attributes (§3.3, TV and TLV forms).
//!
//! [`SaPayload::parse`] checks everything nested once; the iterators then walk the checked
//! bytes again without errors (they stop, never panic, if the bytes were not checked).

use super::consts::{DOI_IPSEC, SIT_IDENTITY_ONLY, payload, protocol};
use super::error::{Field, Part, WireError};
use super::payloads::{SpiUse, check_spi, generic};

/// Attribute values longer than this cannot be numeric (`u64`).
pub const MAX_NUMERIC_ATTR_LEN: usize = 8;

/// An SA payload: DOI 1, situation SIT_IDENTITY_ONLY, one or more proposals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaPayload<'a> {
    body: &'a [u8],
    proposals: &'a [u8],
}

impl<'a> SaPayload<'a> {
    pub(crate) fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let Some((fixed, proposals)) = body.split_first_chunk::<8>() else {
            return Err(WireError::at(Part::Sa, Field::Length));
        };
        let doi = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
        let sit = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        if doi != DOI_IPSEC {
            return Err(WireError::at(Part::Sa, Field::Doi));
        }
        if sit != SIT_IDENTITY_ONLY {
            return Err(WireError::at(Part::Sa, Field::Situation));
        }
        let mut walk = ProposalWalk::new(proposals);
        while let Some(p) = walk.next_checked() {
            let p = p?;
            let mut tw = TransformWalk::new(p.transforms, p.protocol);
            let mut n = 0usize;
            while let Some(t) = tw.next_checked() {
                let t = t?;
                n += 1;
                let mut aw = AttrWalk::new(t.attrs, p.protocol);
                while let Some(a) = aw.next_checked() {
                    a?;
                }
            }
            if n != usize::from(p.transform_count) {
                return Err(WireError::at(Part::Proposal, Field::Count));
            }
        }
        Ok(SaPayload { body, proposals })
    }

    pub fn doi(&self) -> u32 {
        DOI_IPSEC
    }
    pub fn situation(&self) -> u32 {
        SIT_IDENTITY_ONLY
    }
    /// The payload's content after the generic header: SAi_b of RFC 2409 §5.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
    /// The proposals, in order (at least one).
    pub fn proposals(&self) -> impl Iterator<Item = Proposal<'a>> + use<'a> {
        let mut w = ProposalWalk::new(self.proposals);
        std::iter::from_fn(move || w.next_checked()?.ok())
    }
}

/// A proposal (RFC 2408 §3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal<'a> {
    pub number: u8,
    /// `protocol::ISAKMP` or `protocol::ESP` (AH and IPComp parse; espd offers neither).
    pub protocol: u8,
    /// 0, 8 or 16 bytes for ISAKMP; 4 for ESP/AH; 2 or 4 for IPComp.
    pub spi: &'a [u8],
    transform_count: u8,
    transforms: &'a [u8],
}

impl<'a> Proposal<'a> {
    /// The ESP/AH SPI.
    pub fn spi_u32(&self) -> Option<u32> {
        let spi: &[u8; 4] = self.spi.try_into().ok()?;
        Some(u32::from_be_bytes(*spi))
    }
    /// The number of transforms (as counted and as declared: they are equal).
    pub fn transform_count(&self) -> u8 {
        self.transform_count
    }
    /// The transforms, in order (at least one).
    pub fn transforms(&self) -> impl Iterator<Item = Transform<'a>> + use<'a> {
        let mut w = TransformWalk::new(self.transforms, self.protocol);
        std::iter::from_fn(move || w.next_checked()?.ok())
    }
}

/// A transform (RFC 2408 §3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transform<'a> {
    pub number: u8,
    /// `KEY_IKE` in an ISAKMP proposal; an ESP transform id (`esp_transform::*`) in an ESP one.
    pub id: u8,
    protocol: u8,
    attrs: &'a [u8],
}

impl<'a> Transform<'a> {
    /// The SA attributes, in order.
    pub fn attrs(&self) -> impl Iterator<Item = Attr<'a>> + use<'a> {
        let mut w = AttrWalk::new(self.attrs, self.protocol);
        std::iter::from_fn(move || w.next_checked()?.ok())
    }
    /// The first attribute of type `ty`.
    pub fn attr(&self, ty: u16) -> Option<Attr<'a>> {
        self.attrs().find(|a| a.ty == ty)
    }
    /// The numeric value of the first attribute of type `ty`.
    pub fn number(&self, ty: u16) -> Option<u64> {
        self.attr(ty)?.number()
    }
    /// The attributes' bytes.
    pub fn attr_bytes(&self) -> &'a [u8] {
        self.attrs
    }
}

/// A data attribute (RFC 2408 §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr<'a> {
    /// The type without the AF bit.
    pub ty: u16,
    pub value: AttrValue<'a>,
}

/// The two attribute forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrValue<'a> {
    /// TV (AF = 1): a 2-byte value.
    Basic(u16),
    /// TLV (AF = 0): a variable value; a numeric attribute's is 1 to 8 bytes.
    Variable(&'a [u8]),
}

impl Attr<'_> {
    /// The value as a number: a TV value, or a TLV value of at most 8 bytes (big endian).
    pub fn number(&self) -> Option<u64> {
        match self.value {
            AttrValue::Basic(v) => Some(u64::from(v)),
            AttrValue::Variable(b) if b.len() <= MAX_NUMERIC_ATTR_LEN => {
                Some(b.iter().fold(0u64, |n, &x| (n << 8) | u64::from(x)))
            }
            AttrValue::Variable(_) => None,
        }
    }
}

/// Whether attribute `ty` of a `proto` transform must hold a number (RFC 2409 Appendix A
/// classes marked B, plus Life Duration; RFC 2407 §4.5 likewise). Others keep raw bytes.
pub fn numeric_attr(proto: u8, ty: u16) -> bool {
    if proto == protocol::ISAKMP {
        matches!(ty, 1..=5 | 11..=15)
    } else {
        matches!(ty, 1..=8 | 10 | 11)
    }
}

/// A chain of nested payloads (proposals or transforms): after the one whose next field is
/// NONE, nothing may follow.
struct Chain<'a> {
    rest: &'a [u8],
    more: bool,
}

impl<'a> Chain<'a> {
    fn step(&mut self, part: Part, outer: Part, ty: u8) -> Option<Result<&'a [u8], WireError>> {
        if !self.more {
            if self.rest.is_empty() {
                return None;
            }
            self.rest = &[];
            return Some(Err(WireError::at(outer, Field::Trailing)));
        }
        let r = generic(part, self.rest).and_then(|(next, content, _, after)| {
            if next != ty && next != payload::NONE {
                return Err(WireError::at(part, Field::NextPayload));
            }
            self.more = next == ty;
            self.rest = after;
            Ok(content)
        });
        if r.is_err() {
            (self.rest, self.more) = (&[], false);
        }
        Some(r)
    }
}

struct ProposalWalk<'a>(Chain<'a>);

impl<'a> ProposalWalk<'a> {
    fn new(b: &'a [u8]) -> Self {
        ProposalWalk(Chain {
            rest: b,
            more: true,
        })
    }
    fn next_checked(&mut self) -> Option<Result<Proposal<'a>, WireError>> {
        let c = match self.0.step(Part::Proposal, Part::Sa, payload::PROPOSAL)? {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let r = (|| {
            let bad = |f| WireError::at(Part::Proposal, f);
            let (&[number, proto, spi_size, count], rest) =
                c.split_first_chunk::<4>().ok_or(bad(Field::Length))?;
            check_spi(Part::Proposal, SpiUse::Proposal, proto, spi_size)?;
            let (spi, transforms) = rest
                .split_at_checked(usize::from(spi_size))
                .ok_or(bad(Field::Length))?;
            if count == 0 {
                return Err(bad(Field::Count));
            }
            Ok(Proposal {
                number,
                protocol: proto,
                spi,
                transform_count: count,
                transforms,
            })
        })();
        if r.is_err() {
            (self.0.rest, self.0.more) = (&[], false);
        }
        Some(r)
    }
}

struct TransformWalk<'a> {
    chain: Chain<'a>,
    protocol: u8,
}

impl<'a> TransformWalk<'a> {
    fn new(b: &'a [u8], protocol: u8) -> Self {
        TransformWalk {
            chain: Chain {
                rest: b,
                more: true,
            },
            protocol,
        }
    }
    fn next_checked(&mut self) -> Option<Result<Transform<'a>, WireError>> {
        let c = match self
            .chain
            .step(Part::Transform, Part::Proposal, payload::TRANSFORM)?
        {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let r = match c.split_first_chunk::<4>() {
            None => Err(WireError::at(Part::Transform, Field::Length)),
            Some((&[_, _, r0, r1], _)) if [r0, r1] != [0, 0] => {
                Err(WireError::at(Part::Transform, Field::Reserved))
            }
            Some((&[number, id, _, _], attrs)) => Ok(Transform {
                number,
                id,
                protocol: self.protocol,
                attrs,
            }),
        };
        if r.is_err() {
            (self.chain.rest, self.chain.more) = (&[], false);
        }
        Some(r)
    }
}

struct AttrWalk<'a> {
    rest: &'a [u8],
    protocol: u8,
}

impl<'a> AttrWalk<'a> {
    fn new(rest: &'a [u8], protocol: u8) -> Self {
        AttrWalk { rest, protocol }
    }
    fn next_checked(&mut self) -> Option<Result<Attr<'a>, WireError>> {
        if self.rest.is_empty() {
            return None;
        }
        let bad = |f| WireError::at(Part::Attribute, f);
        let r = (|| {
            let (&[t0, t1, v0, v1], after) = self
                .rest
                .split_first_chunk::<4>()
                .ok_or(bad(Field::Length))?;
            let raw = u16::from_be_bytes([t0, t1]);
            let ty = raw & 0x7fff;
            if ty == 0 {
                return Err(bad(Field::AttrType));
            }
            let v = u16::from_be_bytes([v0, v1]);
            if raw & 0x8000 != 0 {
                return Ok((
                    Attr {
                        ty,
                        value: AttrValue::Basic(v),
                    },
                    after,
                ));
            }
            let (value, after) = after
                .split_at_checked(usize::from(v))
                .ok_or(bad(Field::Length))?;
            if numeric_attr(self.protocol, ty)
                && (value.is_empty() || value.len() > MAX_NUMERIC_ATTR_LEN)
            {
                return Err(bad(Field::AttrValue));
            }
            Ok((
                Attr {
                    ty,
                    value: AttrValue::Variable(value),
                },
                after,
            ))
        })();
        Some(match r {
            Ok((a, after)) => {
                self.rest = after;
                Ok(a)
            }
            Err(e) => {
                self.rest = &[];
                Err(e)
            }
        })
    }
}
