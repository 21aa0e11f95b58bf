//! The ESP header (RFC 4303 §2) and the AES-GCM framing of RFC 4106 §3.

use super::{WireError, be32};

/// SPI and sequence number.
pub const HEADER_LEN: usize = 8;
/// RFC 4106 §3.1: the explicit IV is 8 bytes.
pub const IV_LEN: usize = 8;
/// RFC 4106 §6: 16-byte ICV (the only size espd offers).
pub const ICV_LEN: usize = 16;
/// Pad length and next header bytes of the trailer.
pub const TRAILER_LEN: usize = 2;
/// The smallest ESP packet with a GCM payload: header, IV, trailer, ICV.
pub const MIN_LEN: usize = HEADER_LEN + IV_LEN + TRAILER_LEN + ICV_LEN;

pub mod field {
    use crate::wire::Field;
    pub const SPI: Field = 0..4;
    pub const SEQ: Field = 4..8;
    pub const IV: Field = 8..16;
}

/// A checked ESP packet: long enough for header, IV, a trailer and the ICV.
#[derive(Debug)]
pub struct EspPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> EspPacket<T> {
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < MIN_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self { buf })
    }
    #[inline]
    pub fn spi(&self) -> u32 {
        be32(self.buf.as_ref(), field::SPI.start)
    }
    /// The low 32 bits of the sequence number, as carried on the wire.
    #[inline]
    pub fn seq(&self) -> u32 {
        be32(self.buf.as_ref(), field::SEQ.start)
    }
    #[inline]
    pub fn iv(&self) -> [u8; IV_LEN] {
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&self.buf.as_ref()[field::IV]);
        iv
    }
    /// Length of the encrypted part (payload, padding, trailer), without the ICV.
    #[inline]
    pub fn ciphertext_len(&self) -> usize {
        self.buf.as_ref().len() - HEADER_LEN - IV_LEN - ICV_LEN
    }
}

/// SPI of the ESP header at the start of `b`, if there is one.
#[inline]
pub fn peek_spi(b: &[u8]) -> Option<u32> {
    (b.len() >= 4).then(|| be32(b, 0))
}
