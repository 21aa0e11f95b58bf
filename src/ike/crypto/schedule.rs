//! The IKEv1 key schedule for pre-shared keys (RFC 2409 §5, §5.4, §5.5, Appendix B): SKEYID and
//! its three children, the phase-1 encryption key and IVs, HASH_I/HASH_R, the quick-mode and
//! informational hashes, and quick-mode KEYMAT. Also NAT-D (RFC 3947 §3.2).
//!
//! Byte strings are passed exactly as they go into the PRF: `ni_b`/`nr_b` are the nonce
//! payload bodies, `sai_b` the initiator's SA payload body (DOI, situation, proposals, without
//! the 4-byte generic header), `idii_b`/`idir_b` the ID payload bodies (ID type, protocol, port,
//! data, without the generic header). M-IDs are the header's 4 bytes in network order.

use std::net::IpAddr;

use zeroize::Zeroizing;

use super::CryptoError;
use super::cbc::{BLOCK_LEN, CbcKey, Cipher, Iv};
use super::prf::Prf;

/// IPsec protocol ID of ESP in quick-mode proposals and KEYMAT (RFC 2407 §4.4.1).
pub const ESP_PROTO: u8 = 3;

/// The ESP transform negotiated in quick mode: AES-GCM with a 16-byte ICV (IPsec transform ID
/// ESP_AES-GCM-16 = 20, RFC 4106 §8.1) and its key length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EspCipher {
    AesGcm16_128,
    AesGcm16_256,
}

impl EspCipher {
    /// IPsec ESP transform ID for AES-GCM with a 16-byte ICV.
    pub const TRANSFORM_ID: u8 = 20;

    /// From the transform ID and the Key Length attribute (bits).
    pub const fn from_attrs(transform_id: u8, key_bits: Option<u16>) -> Option<Self> {
        match (transform_id, key_bits) {
            (Self::TRANSFORM_ID, Some(128)) => Some(Self::AesGcm16_128),
            (Self::TRANSFORM_ID, Some(256)) => Some(Self::AesGcm16_256),
            _ => None,
        }
    }

    pub const fn key_bits(self) -> u16 {
        match self {
            Self::AesGcm16_128 => 128,
            Self::AesGcm16_256 => 256,
        }
    }

    /// KEYMAT bytes per direction: the AES key followed by the 4-byte salt (RFC 4106 §8.1), the
    /// layout of `SaParams::keymat`.
    pub const fn keymat_len(self) -> usize {
        self.key_bits() as usize / 8 + 4
    }
}

/// The public values of one main mode that HASH_I and HASH_R cover (RFC 2409 §5).
#[derive(Clone, Copy, Debug)]
pub struct Phase1Exchange<'a> {
    /// The initiator's KE data.
    pub g_xi: &'a [u8],
    /// The responder's KE data.
    pub g_xr: &'a [u8],
    pub cky_i: [u8; 8],
    pub cky_r: [u8; 8],
    /// The initiator's SA payload body, as the initiator sent it (the responder hashes the
    /// initiator's offer too, not its own answer).
    pub sai_b: &'a [u8],
}

/// The phase-1 (ISAKMP SA) keys of a pre-shared-key main mode. Every key is zeroized on drop;
/// `Debug` shows only the algorithms.
pub struct Phase1Keys {
    prf: Prf,
    cipher: Cipher,
    skeyid: Zeroizing<Vec<u8>>,
    skeyid_d: Zeroizing<Vec<u8>>,
    skeyid_a: Zeroizing<Vec<u8>>,
    skeyid_e: Zeroizing<Vec<u8>>,
    enc_key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Phase1Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phase1Keys")
            .field("prf", &self.prf)
            .field("cipher", &self.cipher)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl Phase1Keys {
    /// RFC 2409 §5 (pre-shared keys) and Appendix B:
    /// SKEYID = prf(pre-shared-key, Ni_b | Nr_b);
    /// SKEYID_d = prf(SKEYID, g^xy | CKY-I | CKY-R | 0);
    /// SKEYID_a = prf(SKEYID, SKEYID_d | g^xy | CKY-I | CKY-R | 1);
    /// SKEYID_e = prf(SKEYID, SKEYID_a | g^xy | CKY-I | CKY-R | 2);
    /// the encryption key is SKEYID_e truncated, or expanded when it is too short.
    #[allow(clippy::too_many_arguments)] // the RFC's inputs, each a distinct byte string
    pub fn psk(
        prf: Prf,
        cipher: Cipher,
        psk: &[u8],
        ni_b: &[u8],
        nr_b: &[u8],
        g_xy: &[u8],
        cky_i: &[u8; 8],
        cky_r: &[u8; 8],
    ) -> Self {
        let skeyid = prf.prf(psk, &[ni_b, nr_b]);
        let skeyid_d = prf.prf(&skeyid, &[g_xy, cky_i, cky_r, &[0]]);
        let skeyid_a = prf.prf(&skeyid, &[&skeyid_d, g_xy, cky_i, cky_r, &[1]]);
        let skeyid_e = prf.prf(&skeyid, &[&skeyid_a, g_xy, cky_i, cky_r, &[2]]);
        let enc_key = expand_enc_key(prf, &skeyid_e, cipher.key_len());
        Self {
            prf,
            cipher,
            skeyid,
            skeyid_d,
            skeyid_a,
            skeyid_e,
            enc_key,
        }
    }

    pub fn prf(&self) -> Prf {
        self.prf
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    pub fn skeyid(&self) -> &[u8] {
        &self.skeyid
    }

    pub fn skeyid_d(&self) -> &[u8] {
        &self.skeyid_d
    }

    pub fn skeyid_a(&self) -> &[u8] {
        &self.skeyid_a
    }

    pub fn skeyid_e(&self) -> &[u8] {
        &self.skeyid_e
    }

    /// The phase-1 encryption key (`cipher().key_len()` bytes).
    pub fn enc_key(&self) -> &[u8] {
        &self.enc_key
    }

    /// The CBC key for phase-1, quick-mode and informational payloads.
    pub fn cbc_key(&self) -> Result<CbcKey, CryptoError> {
        CbcKey::new(self.cipher, &self.enc_key)
    }

    /// HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b) (RFC 2409 §5).
    pub fn hash_i(&self, ex: &Phase1Exchange<'_>, idii_b: &[u8]) -> Vec<u8> {
        let h = self.prf.prf(
            &self.skeyid,
            &[ex.g_xi, ex.g_xr, &ex.cky_i, &ex.cky_r, ex.sai_b, idii_b],
        );
        h.to_vec()
    }

    /// HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b) (RFC 2409 §5).
    pub fn hash_r(&self, ex: &Phase1Exchange<'_>, idir_b: &[u8]) -> Vec<u8> {
        let h = self.prf.prf(
            &self.skeyid,
            &[ex.g_xr, ex.g_xi, &ex.cky_r, &ex.cky_i, ex.sai_b, idir_b],
        );
        h.to_vec()
    }

    /// Quick mode HASH(1) = prf(SKEYID_a, M-ID | SA | Ni [| KE] [| IDci | IDcr]) (RFC 2409
    /// §5.5): `rest` is every payload after the HASH payload, generic headers included, up to
    /// the end of the message's payloads (not the CBC padding).
    pub fn qm_hash1(&self, mid: u32, rest: &[u8]) -> Vec<u8> {
        self.prf
            .prf(&self.skeyid_a, &[&mid.to_be_bytes(), rest])
            .to_vec()
    }

    /// Quick mode HASH(2) = prf(SKEYID_a, M-ID | Ni_b | SA | Nr [| KE] [| IDci | IDcr]).
    pub fn qm_hash2(&self, mid: u32, ni_b: &[u8], rest: &[u8]) -> Vec<u8> {
        self.prf
            .prf(&self.skeyid_a, &[&mid.to_be_bytes(), ni_b, rest])
            .to_vec()
    }

    /// Quick mode HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b).
    pub fn qm_hash3(&self, mid: u32, ni_b: &[u8], nr_b: &[u8]) -> Vec<u8> {
        self.prf
            .prf(&self.skeyid_a, &[&[0], &mid.to_be_bytes(), ni_b, nr_b])
            .to_vec()
    }

    /// Informational HASH(1) = prf(SKEYID_a, M-ID | N/D) (RFC 2409 §5.7): `rest` is the
    /// payloads after the HASH payload (the N or D payload, generic header included).
    pub fn info_hash(&self, mid: u32, rest: &[u8]) -> Vec<u8> {
        self.qm_hash1(mid, rest)
    }

    /// KEYMAT = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b), expanded
    /// K1 | K2 | ... with Kn = prf(SKEYID_d, Kn-1 | [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b)
    /// to `len` bytes (RFC 2409 §5.5). One call per direction: `spi` is the SPI the receiving
    /// side of that direction chose.
    pub fn keymat(
        &self,
        g_qm_xy: Option<&[u8]>,
        protocol: u8,
        spi: u32,
        ni_b: &[u8],
        nr_b: &[u8],
        len: usize,
    ) -> Zeroizing<Vec<u8>> {
        let g = g_qm_xy.unwrap_or(&[]);
        let spi = spi.to_be_bytes();
        let seed: [&[u8]; 5] = [g, &[protocol], &spi, ni_b, nr_b];
        let mut out = Zeroizing::new(Vec::with_capacity(len + self.prf.output_len()));
        let mut k = self.prf.prf(&self.skeyid_d, &seed);
        loop {
            out.extend_from_slice(&k);
            if out.len() >= len {
                break;
            }
            let mut parts: [&[u8]; 6] = [&[]; 6];
            parts[0] = &k;
            parts[1..].copy_from_slice(&seed);
            k = self.prf.prf(&self.skeyid_d, &parts);
        }
        out.truncate(len);
        out
    }

    /// ESP KEYMAT for one direction in espd's layout (AES key then 4-byte salt).
    pub fn esp_keymat(
        &self,
        esp: EspCipher,
        g_qm_xy: Option<&[u8]>,
        spi: u32,
        ni_b: &[u8],
        nr_b: &[u8],
    ) -> Zeroizing<Vec<u8>> {
        self.keymat(g_qm_xy, ESP_PROTO, spi, ni_b, nr_b, esp.keymat_len())
    }
}

/// RFC 2409 Appendix B: the first `len` bytes of SKEYID_e, or, when SKEYID_e is shorter,
/// K1 | K2 | ... with K1 = prf(SKEYID_e, 0) (one zero octet) and Kn = prf(SKEYID_e, Kn-1).
fn expand_enc_key(prf: Prf, skeyid_e: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    if skeyid_e.len() >= len {
        return Zeroizing::new(skeyid_e[..len].to_vec());
    }
    let mut out = Zeroizing::new(Vec::with_capacity(len + prf.output_len()));
    let mut k = prf.prf(skeyid_e, &[&[0]]);
    loop {
        out.extend_from_slice(&k);
        if out.len() >= len {
            break;
        }
        k = prf.prf(skeyid_e, &[&k]);
    }
    out.truncate(len);
    out
}

/// The first phase-1 IV: hash(g^xi | g^xr) truncated to the block (RFC 2409 Appendix B).
pub fn phase1_iv(prf: Prf, g_xi: &[u8], g_xr: &[u8]) -> Iv {
    truncate_iv(&prf.hash(&[g_xi, g_xr]))
}

/// The first IV of a quick mode or informational exchange: hash(last CBC block of phase 1 |
/// M-ID) truncated to the block (RFC 2409 Appendix B). Later messages of the same exchange
/// chain from the last ciphertext block of the previous one.
pub fn phase2_iv(prf: Prf, last_phase1_block: &Iv, mid: u32) -> Iv {
    truncate_iv(&prf.hash(&[last_phase1_block, &mid.to_be_bytes()]))
}

fn truncate_iv(h: &[u8]) -> Iv {
    // Every hash here is at least 32 bytes long.
    let mut iv = [0u8; BLOCK_LEN];
    iv.copy_from_slice(&h[..BLOCK_LEN]);
    iv
}

/// NAT-D = hash(CKY-I | CKY-R | IP | Port) (RFC 3947 §3.2): the address as 4 or 16 bytes, the
/// port in network order.
pub fn nat_d(prf: Prf, cky_i: &[u8; 8], cky_r: &[u8; 8], ip: IpAddr, port: u16) -> Vec<u8> {
    let port = port.to_be_bytes();
    match ip {
        IpAddr::V4(a) => prf.hash(&[cky_i, cky_r, &a.octets(), &port]),
        IpAddr::V6(a) => prf.hash(&[cky_i, cky_r, &a.octets(), &port]),
    }
}

/// Compares a received hash with the expected one in constant time.
pub fn hash_eq(expected: &[u8], received: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(expected, received).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(cipher: Cipher) -> Phase1Keys {
        Phase1Keys::psk(
            Prf::HmacSha256,
            cipher,
            b"psk",
            b"ni",
            b"nr",
            b"gxy",
            &[1; 8],
            &[2; 8],
        )
    }

    #[test]
    fn enc_key_truncates_or_expands() {
        // SHA-256 gives 32 bytes: AES-128 takes the first 16.
        let k = keys(Cipher::Aes128Cbc);
        assert_eq!(k.enc_key(), &k.skeyid_e()[..16]);
        // Expansion, checked against the RFC's formula spelled out.
        let p = Prf::HmacSha256;
        let e = [7u8; 20];
        let k1 = p.prf(&e, &[&[0]]);
        let k2 = p.prf(&e, &[&k1]);
        let got = expand_enc_key(p, &e, 40);
        assert_eq!(&got[..32], &k1[..]);
        assert_eq!(&got[32..], &k2[..8]);
    }

    #[test]
    fn keymat_expansion_matches_formula() {
        let k = keys(Cipher::Aes256Cbc);
        let p = Prf::HmacSha256;
        let spi = 0x1234_5678u32.to_be_bytes();
        let k1 = p.prf(k.skeyid_d(), &[&[3], &spi, b"ni", b"nr"]);
        let k2 = p.prf(k.skeyid_d(), &[&k1, &[3], &spi, b"ni", b"nr"]);
        let got = k.keymat(None, 3, 0x1234_5678, b"ni", b"nr", 50);
        assert_eq!(&got[..32], &k1[..]);
        assert_eq!(&got[32..], &k2[..18]);
        assert_eq!(
            k.esp_keymat(EspCipher::AesGcm16_128, None, 0x1234_5678, b"ni", b"nr")[..],
            got[..20]
        );
        let pfs = k.keymat(Some(b"g"), 3, 0x1234_5678, b"ni", b"nr", 20);
        assert_eq!(
            &pfs[..],
            &p.prf(k.skeyid_d(), &[b"g", &[3], &spi, b"ni", b"nr"])[..20]
        );
    }

    #[test]
    fn esp_attrs() {
        assert_eq!(
            EspCipher::from_attrs(20, Some(128)),
            Some(EspCipher::AesGcm16_128)
        );
        assert_eq!(
            EspCipher::from_attrs(20, Some(256)),
            Some(EspCipher::AesGcm16_256)
        );
        assert_eq!(EspCipher::from_attrs(20, None), None);
        assert_eq!(EspCipher::from_attrs(18, Some(128)), None);
        assert_eq!(EspCipher::AesGcm16_128.keymat_len(), 20);
        assert_eq!(EspCipher::AesGcm16_256.keymat_len(), 36);
    }

    #[test]
    fn debug_is_redacted_and_hash_eq() {
        let k = keys(Cipher::Aes128Cbc);
        let s = format!("{k:?}");
        assert!(s.contains("redacted"));
        for b in k.skeyid().iter().take(4) {
            assert!(!s.contains(&format!("{b}, ")));
        }
        assert!(hash_eq(b"abc", b"abc"));
        assert!(!hash_eq(b"abc", b"abd"));
        assert!(!hash_eq(b"abc", b"ab"));
    }
}
