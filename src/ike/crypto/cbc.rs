//! AES-CBC for IKEv1 payload encryption: no padding (IKEv1 pads itself, RFC 2409 Appendix B)
//! and an explicit IV (IKEv1 chains IVs across messages, RFC 2409 Appendix B).
//!
//! aws-lc-rs offers exactly this: `EncryptingKey::cbc` / `DecryptingKey::cbc` are unpadded
//! (`PaddedBlockEncryptingKey` is the padded variant) and `less_safe_encrypt` takes the IV as an
//! `EncryptionContext`; both refuse lengths that are not whole blocks.

use aws_lc_rs::cipher::{
    AES_128, AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext,
    UnboundCipherKey,
};

use super::CryptoError;

/// The AES block length, which is also the IV length.
pub const BLOCK_LEN: usize = 16;

/// A CBC IV. Not secret: derived from public values (RFC 2409 Appendix B).
pub type Iv = [u8; BLOCK_LEN];

/// The phase-1 encryption algorithm: AES-CBC (Encryption Algorithm attribute 7, RFC 3602) with
/// its Key Length attribute (128 or 256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cipher {
    Aes128Cbc,
    Aes256Cbc,
}

impl Cipher {
    /// IKEv1 Encryption Algorithm attribute value for AES-CBC.
    pub const AES_CBC_ATTR: u16 = 7;

    /// From the Encryption Algorithm and Key Length attributes; `None` for anything else
    /// (AES without a key length is refused: RFC 3602 §5.3 makes the attribute mandatory).
    pub const fn from_attrs(enc_alg: u16, key_bits: Option<u16>) -> Option<Self> {
        match (enc_alg, key_bits) {
            (Self::AES_CBC_ATTR, Some(128)) => Some(Self::Aes128Cbc),
            (Self::AES_CBC_ATTR, Some(256)) => Some(Self::Aes256Cbc),
            _ => None,
        }
    }

    /// The Key Length attribute value (bits).
    pub const fn key_bits(self) -> u16 {
        match self {
            Self::Aes128Cbc => 128,
            Self::Aes256Cbc => 256,
        }
    }

    /// Key length in bytes.
    pub const fn key_len(self) -> usize {
        self.key_bits() as usize / 8
    }
}

/// An AES-CBC key for IKEv1 payloads; both directions (IKEv1 uses one key both ways). The
/// expanded AES key schedule is zeroized by aws-lc-rs on drop.
pub struct CbcKey {
    cipher: Cipher,
    enc: EncryptingKey,
    dec: DecryptingKey,
}

impl std::fmt::Debug for CbcKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CbcKey")
            .field("cipher", &self.cipher)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CbcKey {
    /// A key for `cipher` from exactly `cipher.key_len()` bytes.
    pub fn new(cipher: Cipher, key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != cipher.key_len() {
            return Err(CryptoError::KeyLength {
                expected: cipher.key_len(),
                got: key.len(),
            });
        }
        let alg = match cipher {
            Cipher::Aes128Cbc => &AES_128,
            Cipher::Aes256Cbc => &AES_256,
        };
        let unbound = |k| UnboundCipherKey::new(alg, k).map_err(|_| CryptoError::Backend);
        Ok(Self {
            cipher,
            enc: EncryptingKey::cbc(unbound(key)?).map_err(|_| CryptoError::Backend)?,
            dec: DecryptingKey::cbc(unbound(key)?).map_err(|_| CryptoError::Backend)?,
        })
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// Encrypts `buf` in place with `iv`; returns the last ciphertext block (the next IV in the
    /// chain). `buf` must be a non-empty whole number of blocks (the caller has padded it).
    pub fn encrypt(&self, iv: &Iv, buf: &mut [u8]) -> Result<Iv, CryptoError> {
        check_len(buf.len())?;
        self.enc
            .less_safe_encrypt(buf, EncryptionContext::Iv128((*iv).into()))
            .map_err(|_| CryptoError::Backend)?;
        Ok(last_block(buf))
    }

    /// Decrypts `buf` in place with `iv`; returns the last ciphertext block (taken before
    /// decrypting: the next IV in the chain). Same length rule as [`CbcKey::encrypt`]. CBC has
    /// no integrity: the caller checks the HASH payload.
    pub fn decrypt(&self, iv: &Iv, buf: &mut [u8]) -> Result<Iv, CryptoError> {
        check_len(buf.len())?;
        let next = last_block(buf);
        self.dec
            .decrypt(buf, DecryptionContext::Iv128((*iv).into()))
            .map_err(|_| CryptoError::Backend)?;
        Ok(next)
    }
}

fn check_len(len: usize) -> Result<(), CryptoError> {
    if len == 0 || !len.is_multiple_of(BLOCK_LEN) {
        return Err(CryptoError::NotBlockAligned(len));
    }
    Ok(())
}

/// The last block of a buffer whose length `check_len` accepted.
fn last_block(buf: &[u8]) -> Iv {
    let mut iv = [0u8; BLOCK_LEN];
    iv.copy_from_slice(&buf[buf.len() - BLOCK_LEN..]);
    iv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs() {
        assert_eq!(Cipher::from_attrs(7, Some(128)), Some(Cipher::Aes128Cbc));
        assert_eq!(Cipher::from_attrs(7, Some(256)), Some(Cipher::Aes256Cbc));
        assert_eq!(Cipher::from_attrs(7, Some(192)), None);
        assert_eq!(Cipher::from_attrs(7, None), None);
        assert_eq!(Cipher::from_attrs(5, Some(128)), None);
    }

    #[test]
    fn lengths_refused_not_panicking() {
        let k = CbcKey::new(Cipher::Aes128Cbc, &[7; 16]).unwrap();
        let iv = [0; 16];
        for n in [0usize, 1, 15, 17, 31] {
            let mut b = vec![0u8; n];
            assert_eq!(k.encrypt(&iv, &mut b), Err(CryptoError::NotBlockAligned(n)));
            assert_eq!(k.decrypt(&iv, &mut b), Err(CryptoError::NotBlockAligned(n)));
        }
        assert!(matches!(
            CbcKey::new(Cipher::Aes256Cbc, &[0; 16]),
            Err(CryptoError::KeyLength {
                expected: 32,
                got: 16
            })
        ));
        assert!(!format!("{k:?}").contains('7'));
    }

    #[test]
    fn chaining_equals_one_pass() {
        // Encrypting in two calls, the second with the IV the first returned, equals one call:
        // what IKEv1's IV chaining relies on.
        let k = CbcKey::new(Cipher::Aes256Cbc, &[3; 32]).unwrap();
        let iv = [9; 16];
        let mut whole: Vec<u8> = (0..64u8).collect();
        let mut parts = whole.clone();
        let last = k.encrypt(&iv, &mut whole).unwrap();
        let mid = k.encrypt(&iv, &mut parts[..32]).unwrap();
        let last2 = k.encrypt(&mid, &mut parts[32..]).unwrap();
        assert_eq!(whole, parts);
        assert_eq!(last, last2);
        let back = k.decrypt(&iv, &mut whole).unwrap();
        assert_eq!(back, last);
        assert_eq!(whole, (0..64u8).collect::<Vec<_>>());
    }
}
