//! IKEv1 cryptography: Diffie-Hellman groups, the PRF and hash, the phase-1 PSK key schedule,
//! CBC with IKEv1's IV chaining, and the quick-mode hashes and KEYMAT (RFC 2409).
//!
//! Contract: pure functions over caller-supplied bytes. Nothing here does I/O or reads a clock;
//! only [`DhSecret::generate`] draws randomness. Nothing panics on peer input: wrong lengths and
//! invalid public values come back as [`CryptoError`]. Secrets (DH private values and shared
//! secrets, SKEYID*, the encryption key, KEYMAT) live in `Zeroizing` buffers or `ZeroizeOnDrop`
//! types, and every `Debug` impl here prints `<redacted>` for them. Allocation is fine here: this
//! is the control side, a few dozen operations per negotiation, never per packet.
//!
//! Primitives: aws-lc-rs for HMAC, digests, ECDH (P-256, P-384, X25519) and AES-CBC without
//! padding with a caller-supplied IV; crypto-bigint for the constant-time MODP exponentiation.

mod cbc;
mod dh;
mod prf;
mod schedule;

pub use cbc::{BLOCK_LEN, CbcKey, Cipher, Iv};
pub use dh::{DhGroup, DhSecret};
pub use prf::Prf;
pub use schedule::{
    ESP_PROTO, EspCipher, Phase1Exchange, Phase1Keys, hash_eq, nat_d, phase1_iv, phase2_iv,
};

/// Why a cryptographic operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The peer's KE data has the wrong length for the negotiated group.
    #[error("KE data for group {group}: expected {expected} bytes, got {got}")]
    KeLength {
        group: u16,
        expected: usize,
        got: usize,
    },
    /// The peer's public value is not acceptable: outside 1 < y < p-1 (MODP), not a point on
    /// the curve (ECP), or one that gives an all-zero secret (X25519).
    #[error("KE data for group {group}: invalid public value")]
    InvalidPublic { group: u16 },
    /// A private value given for a known-answer test is out of range or the wrong length.
    #[error("private value for group {group}: invalid")]
    InvalidPrivate { group: u16 },
    /// A key has the wrong length for the cipher.
    #[error("key: expected {expected} bytes, got {got}")]
    KeyLength { expected: usize, got: usize },
    /// CBC input that is not a whole number of 16-byte blocks.
    #[error("CBC data: {0} bytes is not a multiple of the 16-byte block")]
    NotBlockAligned(usize),
    /// The system random number generator failed.
    #[error("random number generator failed")]
    Rng,
    /// aws-lc-rs refused an operation it should not have (reported, never unwrapped).
    #[error("crypto backend failed")]
    Backend,
}
