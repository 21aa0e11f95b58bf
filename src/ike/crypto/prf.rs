//! The IKEv1 PRF (HMAC) and hash, chosen by the phase-1 Hash Algorithm attribute.

use aws_lc_rs::{digest, hmac};
use zeroize::Zeroizing;

/// The negotiated hash: the PRF is its HMAC (RFC 2409 §4: no PRF attribute means HMAC of the
/// hash). IKEv1 Hash Algorithm attribute values (IANA "IPSEC Hash Algorithm", RFC 4868 §2.4 for
/// the SHA-2 ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prf {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl Prf {
    /// From the phase-1 Hash Algorithm attribute (4, 5, 6); `None` for anything else.
    pub const fn from_hash_attr(v: u16) -> Option<Self> {
        match v {
            4 => Some(Self::HmacSha256),
            5 => Some(Self::HmacSha384),
            6 => Some(Self::HmacSha512),
            _ => None,
        }
    }

    /// The Hash Algorithm attribute value.
    pub const fn hash_attr(self) -> u16 {
        match self {
            Self::HmacSha256 => 4,
            Self::HmacSha384 => 5,
            Self::HmacSha512 => 6,
        }
    }

    /// Output length of both the PRF and the hash, in bytes.
    pub const fn output_len(self) -> usize {
        match self {
            Self::HmacSha256 => 32,
            Self::HmacSha384 => 48,
            Self::HmacSha512 => 64,
        }
    }

    fn hmac_alg(self) -> hmac::Algorithm {
        match self {
            Self::HmacSha256 => hmac::HMAC_SHA256,
            Self::HmacSha384 => hmac::HMAC_SHA384,
            Self::HmacSha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest_alg(self) -> &'static digest::Algorithm {
        match self {
            Self::HmacSha256 => &digest::SHA256,
            Self::HmacSha384 => &digest::SHA384,
            Self::HmacSha512 => &digest::SHA512,
        }
    }

    /// prf(key, data[0] | data[1] | ...). The output may be key material, so it is zeroized.
    pub fn prf(self, key: &[u8], data: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        let key = hmac::Key::new(self.hmac_alg(), key);
        let mut ctx = hmac::Context::with_key(&key);
        for d in data {
            ctx.update(d);
        }
        Zeroizing::new(ctx.sign().as_ref().to_vec())
    }

    /// hash(data[0] | data[1] | ...).
    pub fn hash(self, data: &[&[u8]]) -> Vec<u8> {
        let mut ctx = digest::Context::new(self.digest_alg());
        for d in data {
            ctx.update(d);
        }
        ctx.finish().as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_round_trip_and_unknown_refused() {
        for p in [Prf::HmacSha256, Prf::HmacSha384, Prf::HmacSha512] {
            assert_eq!(Prf::from_hash_attr(p.hash_attr()), Some(p));
            assert_eq!(p.prf(b"k", &[b"d"]).len(), p.output_len());
            assert_eq!(p.hash(&[b"d"]).len(), p.output_len());
        }
        for v in [0, 1, 2, 3, 7, 0xffff] {
            assert_eq!(Prf::from_hash_attr(v), None);
        }
    }

    #[test]
    fn pieces_concatenate() {
        let p = Prf::HmacSha256;
        assert_eq!(
            p.prf(b"key", &[b"ab", b"", b"cd"]),
            p.prf(b"key", &[b"abcd"])
        );
        assert_eq!(p.hash(&[b"a", b"bcd"]), p.hash(&[b"abcd"]));
    }
}
