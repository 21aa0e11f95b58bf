//! AES-GCM behind one small trait, with two backends: `aws-lc-rs` (default; the fastest on
//! this hardware, see FACTS.md) and RustCrypto `aes-gcm` (pure Rust, cargo feature `rustcrypto`).
//!
//! Both encrypt and decrypt in place with a detached 16-byte tag, and produce identical bytes.
//! Keys are held by the backends; the copies espd makes are zeroized on drop.

use std::fmt;

use serde::{Deserialize, Serialize};

/// GCM nonce: 4-byte salt ‖ 8-byte explicit IV (RFC 4106 §4).
pub type Nonce = [u8; 12];
pub const TAG_LEN: usize = 16;

/// The AEAD operation failed: wrong tag on open, or the backend refused the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AeadFailure;

/// One AEAD key, ready to seal and open in place.
pub trait Aead: Send + Sync {
    /// Encrypts `in_out` in place and writes the tag.
    fn seal(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    ) -> Result<(), AeadFailure>;
    /// Verifies `tag` and decrypts `in_out` in place. On failure `in_out` is unspecified.
    fn open(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadFailure>;
}

/// Which implementation holds an SA's key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    #[default]
    AwsLc,
    RustCrypto,
}

impl Backend {
    pub fn available() -> &'static [Backend] {
        if cfg!(feature = "rustcrypto") {
            &[Backend::AwsLc, Backend::RustCrypto]
        } else {
            &[Backend::AwsLc]
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::AwsLc => "aws-lc",
            Backend::RustCrypto => "rust-crypto",
        })
    }
}

/// aws-lc-rs AES-GCM.
pub struct AwsLcGcm(aws_lc_rs::aead::LessSafeKey);

impl AwsLcGcm {
    pub fn new(key: &[u8]) -> Result<Self, AeadFailure> {
        use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, LessSafeKey, UnboundKey};
        let alg = match key.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            _ => return Err(AeadFailure),
        };
        let k = UnboundKey::new(alg, key).map_err(|_| AeadFailure)?;
        Ok(Self(LessSafeKey::new(k)))
    }
}

impl Aead for AwsLcGcm {
    #[inline]
    fn seal(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        use aws_lc_rs::aead::{Aad, Nonce};
        let t = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                in_out,
            )
            .map_err(|_| AeadFailure)?;
        tag.copy_from_slice(t.as_ref());
        Ok(())
    }

    #[inline]
    fn open(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        use aws_lc_rs::aead::{Aad, Nonce};
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                tag,
                in_out,
            )
            .map(|_| ())
            .map_err(|_| AeadFailure)
    }
}

/// RustCrypto `aes-gcm` 0.11 (key schedule zeroized on drop by its `zeroize` feature).
#[cfg(feature = "rustcrypto")]
pub enum RustCryptoGcm {
    Aes128(Box<aes_gcm::Aes128Gcm>),
    Aes256(Box<aes_gcm::Aes256Gcm>),
}

#[cfg(feature = "rustcrypto")]
impl RustCryptoGcm {
    pub fn new(key: &[u8]) -> Result<Self, AeadFailure> {
        use aes_gcm::KeyInit;
        match key.len() {
            16 => aes_gcm::Aes128Gcm::new_from_slice(key)
                .map(|k| Self::Aes128(Box::new(k)))
                .map_err(|_| AeadFailure),
            32 => aes_gcm::Aes256Gcm::new_from_slice(key)
                .map(|k| Self::Aes256(Box::new(k)))
                .map_err(|_| AeadFailure),
            _ => Err(AeadFailure),
        }
    }
}

#[cfg(feature = "rustcrypto")]
impl RustCryptoGcm {
    /// Starts loading the key schedule (first lines) into the cache.
    #[inline]
    fn prefetch(&self) {
        fn lines<T>(k: &T) {
            let p = k as *const T as *const [u8; 64];
            for i in 0..std::mem::size_of::<T>().div_ceil(64).min(8) {
                crate::sys::prefetch(p.wrapping_add(i));
            }
        }
        match self {
            Self::Aes128(k) => lines(&**k),
            Self::Aes256(k) => lines(&**k),
        }
    }
}

#[cfg(feature = "rustcrypto")]
impl Aead for RustCryptoGcm {
    #[inline]
    fn seal(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        use aes_gcm::AeadInOut;
        let n = nonce.into();
        let t = match self {
            Self::Aes128(k) => k.encrypt_inout_detached(n, aad, in_out.into()),
            Self::Aes256(k) => k.encrypt_inout_detached(n, aad, in_out.into()),
        }
        .map_err(|_| AeadFailure)?;
        tag.copy_from_slice(&t);
        Ok(())
    }

    #[inline]
    fn open(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        use aes_gcm::AeadInOut;
        let n = nonce.into();
        let t = tag.into();
        match self {
            Self::Aes128(k) => k.decrypt_inout_detached(n, aad, in_out.into(), t),
            Self::Aes256(k) => k.decrypt_inout_detached(n, aad, in_out.into(), t),
        }
        .map_err(|_| AeadFailure)
    }
}

/// An SA's key in the backend the SA was configured with. Dispatch is a `match`, not `dyn`.
pub enum AeadKey {
    AwsLc(AwsLcGcm),
    #[cfg(feature = "rustcrypto")]
    RustCrypto(RustCryptoGcm),
}

impl AeadKey {
    /// Starts loading the key schedule into the cache where it is ours to reach (the
    /// RustCrypto backend; aws-lc keeps its state behind an opaque pointer).
    #[inline]
    pub fn prefetch(&self) {
        match self {
            Self::AwsLc(_) => {}
            #[cfg(feature = "rustcrypto")]
            Self::RustCrypto(k) => k.prefetch(),
        }
    }

    /// Builds a key (16 or 32 bytes) in `backend`.
    pub fn new(backend: Backend, key: &[u8]) -> Result<Self, AeadFailure> {
        match backend {
            Backend::AwsLc => AwsLcGcm::new(key).map(AeadKey::AwsLc),
            #[cfg(feature = "rustcrypto")]
            Backend::RustCrypto => RustCryptoGcm::new(key).map(AeadKey::RustCrypto),
            #[cfg(not(feature = "rustcrypto"))]
            Backend::RustCrypto => Err(AeadFailure),
        }
    }
}

impl Aead for AeadKey {
    #[inline]
    fn seal(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        match self {
            AeadKey::AwsLc(k) => k.seal(nonce, aad, in_out, tag),
            #[cfg(feature = "rustcrypto")]
            AeadKey::RustCrypto(k) => k.seal(nonce, aad, in_out, tag),
        }
    }
    #[inline]
    fn open(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        match self {
            AeadKey::AwsLc(k) => k.open(nonce, aad, in_out, tag),
            #[cfg(feature = "rustcrypto")]
            AeadKey::RustCrypto(k) => k.open(nonce, aad, in_out, tag),
        }
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        match self {
            AeadKey::AwsLc(_) => f.write_str("AeadKey(aws-lc, <redacted>)"),
            #[cfg(feature = "rustcrypto")]
            AeadKey::RustCrypto(_) => f.write_str("AeadKey(rust-crypto, <redacted>)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(backend: Backend, key_len: usize) -> Vec<u8> {
        let key: Vec<u8> = (0..key_len as u8).collect();
        let k = AeadKey::new(backend, &key).unwrap();
        let nonce = [7u8; 12];
        let mut data: Vec<u8> = (0..200u8).collect();
        let mut tag = [0u8; 16];
        k.seal(&nonce, b"aadaadaa", &mut data, &mut tag).unwrap();
        let sealed = [data.clone(), tag.to_vec()].concat();
        let mut d2 = data.clone();
        k.open(&nonce, b"aadaadaa", &mut d2, &tag).unwrap();
        assert_eq!(d2, (0..200u8).collect::<Vec<_>>());
        tag[0] ^= 1;
        assert_eq!(
            k.open(&nonce, b"aadaadaa", &mut data, &tag),
            Err(AeadFailure)
        );
        sealed
    }

    #[test]
    fn backends_agree_byte_for_byte() {
        for kl in [16, 32] {
            let outs: Vec<_> = Backend::available()
                .iter()
                .map(|b| roundtrip(*b, kl))
                .collect();
            assert!(
                outs.windows(2).all(|w| w[0] == w[1]),
                "backends differ for {kl}-byte keys"
            );
        }
    }

    #[test]
    fn rejects_bad_key_lengths() {
        for b in Backend::available() {
            for kl in [0, 15, 24, 33] {
                assert!(AeadKey::new(*b, &vec![0; kl]).is_err());
            }
        }
    }

    #[test]
    fn debug_redacts() {
        let k = AeadKey::new(Backend::AwsLc, &[0x41; 16]).unwrap();
        assert!(format!("{k:?}").contains("redacted"));
    }
}
