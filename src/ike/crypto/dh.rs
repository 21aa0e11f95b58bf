//! Diffie-Hellman for IKEv1 KE payloads: MODP-2048 (group 14, RFC 3526 §3), ECP-256 and ECP-384
//! (groups 19 and 20, RFC 5903) and Curve25519 (group 31, RFC 8031).
//!
//! Encodings, as strongSwan 5.9.8 sends them: MODP public values and shared secrets are
//! big-endian, left-padded with zeros to the 256-byte modulus; ECP KE data is x ‖ y without the
//! SEC1 0x04 prefix and the shared secret is the x coordinate (RFC 5903 §7, §9); X25519 KE data is
//! the 32-byte u-coordinate and the shared secret the 32-byte X25519 output (RFC 8031 §2).

use aws_lc_rs::agreement::{self, ECDH_P256, ECDH_P384, PrivateKey, UnparsedPublicKey, X25519};
use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{Odd, U2048};
use zeroize::{Zeroize, Zeroizing};

use super::CryptoError;

/// A Diffie-Hellman group, by its IANA number (Group Description attribute in IKEv1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DhGroup {
    Modp2048,
    Ecp256,
    Ecp384,
    Curve25519,
}

impl DhGroup {
    /// From the IANA group number (14, 19, 20, 31); `None` for anything else.
    pub const fn from_iana(n: u16) -> Option<Self> {
        match n {
            14 => Some(Self::Modp2048),
            19 => Some(Self::Ecp256),
            20 => Some(Self::Ecp384),
            31 => Some(Self::Curve25519),
            _ => None,
        }
    }

    /// The IANA group number.
    pub const fn iana(self) -> u16 {
        match self {
            Self::Modp2048 => 14,
            Self::Ecp256 => 19,
            Self::Ecp384 => 20,
            Self::Curve25519 => 31,
        }
    }

    /// Length of the KE payload's key exchange data.
    pub const fn ke_len(self) -> usize {
        match self {
            Self::Modp2048 => MODP_LEN,
            Self::Ecp256 => 64,
            Self::Ecp384 => 96,
            Self::Curve25519 => 32,
        }
    }

    /// Length of the shared secret g^xy.
    pub const fn secret_len(self) -> usize {
        match self {
            Self::Modp2048 => MODP_LEN,
            Self::Ecp256 => 32,
            Self::Ecp384 => 48,
            Self::Curve25519 => 32,
        }
    }

    fn ecdh_alg(self) -> Option<&'static agreement::Algorithm> {
        match self {
            Self::Modp2048 => None,
            Self::Ecp256 => Some(&ECDH_P256),
            Self::Ecp384 => Some(&ECDH_P384),
            Self::Curve25519 => Some(&X25519),
        }
    }

    /// ECP groups carry x ‖ y on the wire; aws-lc-rs wants the SEC1 uncompressed form.
    const fn is_ecp(self) -> bool {
        matches!(self, Self::Ecp256 | Self::Ecp384)
    }
}

impl TryFrom<u16> for DhGroup {
    type Error = u16;
    fn try_from(n: u16) -> Result<Self, u16> {
        Self::from_iana(n).ok_or(n)
    }
}

const MODP_LEN: usize = 256;

/// RFC 3526 §3, the 2048-bit MODP group: p = 2^2048 - 2^1984 - 1 + 2^64 * { [2^1918 pi] +
/// 124476 }, generator 2.
const MODP2048_P: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1",
    "29024E088A67CC74020BBEA63B139B22514A08798E3404DD",
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245",
    "E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D",
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F",
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D",
    "670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9",
    "DE2BCBF6955817183995497CEA956AE515D2261898FA0510",
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
);

/// The modulus as an odd integer, its Montgomery parameters computed once at compile time (the
/// modulus is public, so the variable-time setup leaks nothing).
const MODP2048: FixedMontyParams<{ U2048::LIMBS }> =
    FixedMontyParams::new_vartime(Odd::<U2048>::from_be_hex(MODP2048_P));

/// Bits of a generated MODP private exponent: RFC 3526 §8 gives 320 as the exponent size for
/// the 2048-bit group's upper strength estimate (160 bits). Exponents given for known-answer
/// tests may be up to 2048 bits.
const MODP_EXPONENT_BITS: u32 = 320;

enum Private {
    /// The exponent (boxed: 256 bytes) and how many of its low bits the (constant-time)
    /// exponentiation walks.
    Modp { x: Box<Zeroizing<U2048>>, bits: u32 },
    /// aws-lc-rs frees (and cleanses) the scalar when the key drops.
    Ecdh(PrivateKey),
}

/// Our half of one Diffie-Hellman exchange: used once, by [`DhSecret::agree`].
pub struct DhSecret {
    group: DhGroup,
    private: Private,
}

impl std::fmt::Debug for DhSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhSecret")
            .field("group", &self.group)
            .field("private", &"<redacted>")
            .finish()
    }
}

impl DhSecret {
    /// A fresh private value for `group` and our KE data (the public value, encoded for the
    /// KE payload).
    pub fn generate(group: DhGroup) -> Result<(Self, Vec<u8>), CryptoError> {
        let private = match group.ecdh_alg() {
            Some(alg) => Private::Ecdh(PrivateKey::generate(alg).map_err(|_| CryptoError::Rng)?),
            None => {
                let mut bytes = Zeroizing::new([0u8; MODP_LEN]);
                let n = MODP_EXPONENT_BITS as usize / 8;
                aws_lc_rs::rand::fill(&mut bytes[MODP_LEN - n..]).map_err(|_| CryptoError::Rng)?;
                // The top bit set: every exponent walks the same number of bits.
                bytes[MODP_LEN - n] |= 0x80;
                Private::Modp {
                    x: Box::new(Zeroizing::new(U2048::from_be_slice(&bytes[..]))),
                    bits: MODP_EXPONENT_BITS,
                }
            }
        };
        let me = Self { group, private };
        let ke = me.public()?;
        Ok((me, ke))
    }

    /// A known private value (big-endian; MODP up to 256 bytes, P-256 32 bytes, P-384 48 bytes,
    /// X25519 the 32-byte RFC 7748 scalar) and its KE data. For known-answer tests only: a
    /// private value must never be reused across exchanges.
    #[doc(hidden)]
    pub fn from_private(group: DhGroup, private: &[u8]) -> Result<(Self, Vec<u8>), CryptoError> {
        let invalid = CryptoError::InvalidPrivate {
            group: group.iana(),
        };
        let private = match group.ecdh_alg() {
            Some(alg) => {
                Private::Ecdh(PrivateKey::from_private_key(alg, private).map_err(|_| invalid)?)
            }
            None => {
                if private.is_empty() || private.len() > MODP_LEN {
                    return Err(invalid);
                }
                let mut bytes = Zeroizing::new([0u8; MODP_LEN]);
                bytes[MODP_LEN - private.len()..].copy_from_slice(private);
                Private::Modp {
                    x: Box::new(Zeroizing::new(U2048::from_be_slice(&bytes[..]))),
                    bits: 2048,
                }
            }
        };
        let me = Self { group, private };
        let ke = me.public()?;
        Ok((me, ke))
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    fn public(&self) -> Result<Vec<u8>, CryptoError> {
        match &self.private {
            Private::Modp { x, bits } => {
                let g = FixedMontyForm::new(&U2048::from_u8(2), &MODP2048);
                Ok(modp_encode(g.pow_bounded_exp(&***x, *bits)).to_vec())
            }
            Private::Ecdh(k) => {
                let public = k.compute_public_key().map_err(|_| CryptoError::Backend)?;
                let bytes = public.as_ref();
                // SEC1 uncompressed point 0x04 ‖ x ‖ y → x ‖ y (RFC 5903 §7).
                let skip = usize::from(self.group.is_ecp());
                Ok(bytes.get(skip..).ok_or(CryptoError::Backend)?.to_vec())
            }
        }
    }

    /// g^xy from the peer's KE data. Refuses KE data of the wrong length and public values that
    /// are not acceptable (see [`CryptoError::InvalidPublic`]).
    pub fn agree(self, peer_ke: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let group = self.group;
        if peer_ke.len() != group.ke_len() {
            return Err(CryptoError::KeLength {
                group: group.iana(),
                expected: group.ke_len(),
                got: peer_ke.len(),
            });
        }
        let invalid = CryptoError::InvalidPublic {
            group: group.iana(),
        };
        match &self.private {
            Private::Modp { x, bits } => {
                let y = U2048::from_be_slice(peer_ke);
                // RFC 2631 §2.1.5 / SP 800-56A 5.6.2.3.1: 1 < y < p-1 (y is public: vartime
                // comparison is fine). Rules out the order-1 and order-2 elements.
                let p_minus_1 = MODP2048.modulus().as_ref().wrapping_sub(&U2048::ONE);
                if y <= U2048::ONE || y >= p_minus_1 {
                    return Err(invalid);
                }
                let y = FixedMontyForm::new(&y, &MODP2048);
                let mut z = y.pow_bounded_exp(&***x, *bits);
                let out = Zeroizing::new(modp_encode(z).to_vec());
                z.zeroize();
                Ok(out)
            }
            Private::Ecdh(k) => {
                let mut sec1 = Vec::with_capacity(peer_ke.len() + 1);
                if group.is_ecp() {
                    sec1.push(0x04);
                }
                sec1.extend_from_slice(peer_ke);
                let alg = group.ecdh_alg().ok_or(CryptoError::Backend)?;
                // aws-lc-rs checks the point is on the curve, and refuses an all-zero X25519
                // output (a low-order peer point, RFC 7748 §6.1).
                agreement::agree(k, UnparsedPublicKey::new(alg, &sec1), invalid, |z| {
                    Ok(Zeroizing::new(z.to_vec()))
                })
            }
        }
    }
}

/// A MODP element as 256 big-endian bytes (zero-padded, RFC 2409 §5 / RFC 3526).
fn modp_encode(mut v: FixedMontyForm<{ U2048::LIMBS }>) -> Zeroizing<[u8; MODP_LEN]> {
    let mut n = v.retrieve();
    let mut enc = n.to_be_bytes();
    let mut out = Zeroizing::new([0u8; MODP_LEN]);
    out.copy_from_slice(enc.as_slice());
    enc.zeroize();
    n.zeroize();
    v.zeroize();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUPS: [DhGroup; 4] = [
        DhGroup::Modp2048,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Curve25519,
    ];

    #[test]
    fn iana_round_trip() {
        for g in GROUPS {
            assert_eq!(DhGroup::from_iana(g.iana()), Some(g));
            assert_eq!(DhGroup::try_from(g.iana()), Ok(g));
        }
        for n in [0, 1, 2, 5, 15, 21, 32] {
            assert_eq!(DhGroup::from_iana(n), None);
        }
    }

    #[test]
    fn both_sides_agree_for_every_group() {
        for g in GROUPS {
            let (a, a_ke) = DhSecret::generate(g).unwrap();
            let (b, b_ke) = DhSecret::generate(g).unwrap();
            assert_eq!(a_ke.len(), g.ke_len(), "{g:?}");
            assert_ne!(a_ke, b_ke);
            let za = a.agree(&b_ke).unwrap();
            let zb = b.agree(&a_ke).unwrap();
            assert_eq!(za, zb, "{g:?}");
            assert_eq!(za.len(), g.secret_len(), "{g:?}");
        }
    }

    #[test]
    fn wrong_length_refused() {
        for g in GROUPS {
            for n in [0, g.ke_len() - 1, g.ke_len() + 1] {
                let (a, _) = DhSecret::generate(g).unwrap();
                assert_eq!(
                    a.agree(&vec![1u8; n]),
                    Err(CryptoError::KeLength {
                        group: g.iana(),
                        expected: g.ke_len(),
                        got: n
                    })
                );
            }
        }
    }

    #[test]
    fn modp_public_range_checked() {
        let p = MODP2048.modulus().as_ref().to_be_bytes();
        let p = p.as_slice();
        let mut p_minus_1 = p.to_vec();
        p_minus_1[MODP_LEN - 1] -= 1;
        let mut one = vec![0u8; MODP_LEN];
        one[MODP_LEN - 1] = 1;
        let mut two = vec![0u8; MODP_LEN];
        two[MODP_LEN - 1] = 2;
        for bad in [
            vec![0u8; MODP_LEN],
            one,
            p_minus_1,
            p.to_vec(),
            vec![0xff; MODP_LEN],
        ] {
            let (a, _) = DhSecret::generate(DhGroup::Modp2048).unwrap();
            assert_eq!(a.agree(&bad), Err(CryptoError::InvalidPublic { group: 14 }));
        }
        let (a, _) = DhSecret::generate(DhGroup::Modp2048).unwrap();
        assert!(a.agree(&two).is_ok());
    }

    #[test]
    fn invalid_points_refused() {
        // Not on the curve: (1, 1).
        for g in [DhGroup::Ecp256, DhGroup::Ecp384] {
            let mut ke = vec![0u8; g.ke_len()];
            ke[g.ke_len() / 2 - 1] = 1;
            ke[g.ke_len() - 1] = 1;
            let (a, _) = DhSecret::generate(g).unwrap();
            assert_eq!(
                a.agree(&ke),
                Err(CryptoError::InvalidPublic { group: g.iana() })
            );
        }
        // X25519 low-order point u = 0 gives an all-zero secret.
        let (a, _) = DhSecret::generate(DhGroup::Curve25519).unwrap();
        assert_eq!(
            a.agree(&[0u8; 32]),
            Err(CryptoError::InvalidPublic { group: 31 })
        );
    }

    #[test]
    fn debug_is_redacted() {
        let (a, _) = DhSecret::from_private(DhGroup::Modp2048, &[0x5a; 40]).unwrap();
        let s = format!("{a:?}");
        assert!(s.contains("redacted") && !s.contains("5a") && !s.contains("90"));
    }

    #[test]
    fn private_lengths_checked() {
        assert!(DhSecret::from_private(DhGroup::Modp2048, &[]).is_err());
        assert!(DhSecret::from_private(DhGroup::Modp2048, &[1; 257]).is_err());
        assert!(DhSecret::from_private(DhGroup::Ecp256, &[1; 31]).is_err());
        assert!(DhSecret::from_private(DhGroup::Ecp384, &[1; 32]).is_err());
        assert!(DhSecret::from_private(DhGroup::Curve25519, &[1; 31]).is_err());
    }
}
