//! ESP (RFC 4303) with AES-GCM (RFC 4106), in place on a frame buffer.
//!
//! `encap` turns the IP packet at `buf[start..start + len]` into an ESP packet by writing the
//! outer headers into the headroom before it and the trailer and ICV into the tailroom after it;
//! `decap` does the reverse. Neither allocates nor copies the payload: the AEAD encrypts and
//! decrypts where the bytes lie. Both are pure: the caller supplies the SA, the sequence number
//! and the buffer.

pub mod aead;
pub mod decap;
pub mod encap;
pub mod replay;

pub use decap::{Decapped, decap};
pub use encap::{encap, overhead};

use crate::wire::esp::{HEADER_LEN, IV_LEN};

/// Why ESP processing refused a packet. Mapped to drop reasons by the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EspError {
    /// Not enough headroom/tailroom in the frame for the encapsulation.
    NoRoom,
    /// The result would exceed 65535 bytes.
    TooLong,
    /// Truncated or malformed outer or ESP header.
    Malformed,
    /// The ciphertext length is not a multiple of 4 (RFC 4303 §2.4).
    BadAlignment,
    Replay,
    Integrity,
    /// Pad length larger than the payload, or padding bytes not 1, 2, 3, ... (RFC 4303 §2.4).
    BadPadding,
    /// Next header does not fit the SA's mode (or the inner packet does not parse).
    BadNextHeader,
    /// TFC dummy packet (next header 59), dropped silently (RFC 4303 §2.6).
    Dummy,
    /// The SA was refused for sealing (backend error).
    Seal,
}

/// Builds the AAD: SPI ‖ seq (ESN: SPI ‖ seq_hi ‖ seq_lo), RFC 4106 §5. Returns its length.
#[inline]
pub fn aad(spi: u32, seq: u64, esn: bool, out: &mut [u8; 12]) -> usize {
    out[..4].copy_from_slice(&spi.to_be_bytes());
    if esn {
        out[4..12].copy_from_slice(&seq.to_be_bytes());
        12
    } else {
        out[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        8
    }
}

/// Offset of the encrypted payload from the start of the ESP header.
pub const PAYLOAD_OFFSET: usize = HEADER_LEN + IV_LEN;
