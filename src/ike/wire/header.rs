//! The ISAKMP header (RFC 2408 §3.1) and [`Message`], a datagram split into header and body.

use super::consts::{VERSION_1_0, exchange, flags};
use super::error::{Field, Part, WireError};
use super::payloads::{Payloads, Trailing, parse_payloads};

/// The fixed ISAKMP header.
pub const HEADER_LEN: usize = 28;

/// Byte offsets inside the header.
pub mod field {
    use crate::wire::Field;
    pub const ICOOKIE: Field = 0..8;
    pub const RCOOKIE: Field = 8..16;
    pub const NEXT_PAYLOAD: usize = 16;
    pub const VERSION: usize = 17;
    pub const EXCHANGE: usize = 18;
    pub const FLAGS: usize = 19;
    pub const MESSAGE_ID: Field = 20..24;
    pub const LENGTH: Field = 24..28;
}

/// An initiator or responder cookie.
pub type Cookie = [u8; 8];

/// The exchanges espd takes part in (aggressive mode is refused with its own error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exchange {
    /// Identity protection (RFC 2409 §5).
    Main,
    /// RFC 2408 §4.8.
    Informational,
    /// RFC 2409 §5.5.
    Quick,
}

impl Exchange {
    /// The exchange type number on the wire.
    pub const fn number(self) -> u8 {
        match self {
            Exchange::Main => exchange::IDENTITY_PROTECTION,
            Exchange::Informational => exchange::INFORMATIONAL,
            Exchange::Quick => exchange::QUICK,
        }
    }

    fn from_number(n: u8) -> Result<Self, WireError> {
        match n {
            exchange::IDENTITY_PROTECTION => Ok(Exchange::Main),
            exchange::INFORMATIONAL => Ok(Exchange::Informational),
            exchange::QUICK => Ok(Exchange::Quick),
            exchange::AGGRESSIVE => Err(WireError::AggressiveMode),
            _ => Err(WireError::at(Part::Header, Field::Exchange)),
        }
    }
}

/// RFC 2408 §3.1 flags. espd never sets `commit` when it builds a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    /// E: the body after the header is encrypted.
    pub encrypted: bool,
    /// C: the commit bit (parsed; RFC 2409 §5.5 lets a responder ask for CONNECTED).
    pub commit: bool,
    /// A: authentication only (not supported by espd, parsed for the caller to refuse).
    pub auth_only: bool,
}

impl Flags {
    pub const fn bits(self) -> u8 {
        (self.encrypted as u8 * flags::ENCRYPTION)
            | (self.commit as u8 * flags::COMMIT)
            | (self.auth_only as u8 * flags::AUTHENTICATION_ONLY)
    }
}

/// A parsed ISAKMP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    pub icookie: Cookie,
    pub rcookie: Cookie,
    /// Type of the first payload (opaque while the body is encrypted).
    pub next_payload: u8,
    pub exchange: Exchange,
    pub flags: Flags,
    pub message_id: u32,
    /// Length of the whole message, header included.
    pub length: u32,
}

/// The two cookies of whatever starts `buf`, if it is long enough: lets a caller answer (or
/// count) a message the header parser refused, e.g. an aggressive-mode offer.
pub fn peek_cookies(buf: &[u8]) -> Option<(Cookie, Cookie)> {
    let i = buf.get(field::ICOOKIE)?.try_into().ok()?;
    let r = buf.get(field::RCOOKIE)?.try_into().ok()?;
    Some((i, r))
}

impl Header {
    /// Parses and checks the header of the datagram `buf` (the non-ESP marker of port 4500
    /// already stripped). The length field must equal `buf.len()`.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        let bad = |f| WireError::at(Part::Header, f);
        let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
            return Err(bad(Field::Length));
        };
        let version = h[field::VERSION];
        if version >> 4 != VERSION_1_0 >> 4 {
            return Err(bad(Field::MajorVersion));
        }
        if version & 0x0f != VERSION_1_0 & 0x0f {
            return Err(bad(Field::MinorVersion));
        }
        let length = u32::from_be_bytes([h[24], h[25], h[26], h[27]]);
        if usize::try_from(length).ok() != Some(buf.len()) {
            return Err(bad(Field::Length));
        }
        let exchange = Exchange::from_number(h[field::EXCHANGE])?;
        let f = h[field::FLAGS];
        if f & !(flags::ENCRYPTION | flags::COMMIT | flags::AUTHENTICATION_ONLY) != 0 {
            return Err(bad(Field::Flags));
        }
        let mut icookie = [0u8; 8];
        icookie.copy_from_slice(&h[field::ICOOKIE]);
        let mut rcookie = [0u8; 8];
        rcookie.copy_from_slice(&h[field::RCOOKIE]);
        // RFC 2408 §3.1: the initiator cookie is never zero.
        if icookie == [0; 8] {
            return Err(bad(Field::Cookie));
        }
        let message_id = u32::from_be_bytes([h[20], h[21], h[22], h[23]]);
        // RFC 2409 §5: phase 1 uses message id 0; §5.5: a quick mode's is random, not 0.
        match exchange {
            Exchange::Main if message_id != 0 => return Err(bad(Field::MessageId)),
            Exchange::Quick if message_id == 0 => return Err(bad(Field::MessageId)),
            _ => {}
        }
        Ok(Header {
            icookie,
            rcookie,
            next_payload: h[field::NEXT_PAYLOAD],
            exchange,
            flags: Flags {
                encrypted: f & flags::ENCRYPTION != 0,
                commit: f & flags::COMMIT != 0,
                auth_only: f & flags::AUTHENTICATION_ONLY != 0,
            },
            message_id,
            length,
        })
    }

    /// The 28 header bytes (with `self.length` and `self.flags` as they are).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[field::ICOOKIE].copy_from_slice(&self.icookie);
        b[field::RCOOKIE].copy_from_slice(&self.rcookie);
        b[field::NEXT_PAYLOAD] = self.next_payload;
        b[field::VERSION] = VERSION_1_0;
        b[field::EXCHANGE] = self.exchange.number();
        b[field::FLAGS] = self.flags.bits();
        b[field::MESSAGE_ID].copy_from_slice(&self.message_id.to_be_bytes());
        b[field::LENGTH].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A datagram split into its checked header and its body (borrowed, not copied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub header: Header,
    /// Everything after the header: a payload chain, or ciphertext if `flags.encrypted`.
    pub body: &'a [u8],
}

impl<'a> Message<'a> {
    /// [`Header::parse`], keeping the body.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let header = Header::parse(buf)?;
        let body = buf.get(HEADER_LEN..).unwrap_or_default();
        Ok(Message { header, body })
    }

    /// The checked payload chain of an unencrypted message (no bytes may follow the last
    /// payload). An encrypted body is decrypted elsewhere and given to
    /// [`parse_decrypted`](super::parse_decrypted).
    pub fn payloads(&self) -> Result<Payloads<'a>, WireError> {
        if self.header.flags.encrypted {
            return Err(WireError::Encrypted);
        }
        parse_payloads(self.header.next_payload, self.body, Trailing::Forbidden)
    }
}
