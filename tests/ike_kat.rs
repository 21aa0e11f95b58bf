//! Known answers for src/ike/crypto: every value strongSwan 5.9.8 printed during recorded IKEv1
//! PSK main modes + quick modes (tests/data/ike/*.log, made by scripts/ike-kat-record.sh) is
//! recomputed from its inputs, plus the published vectors of the primitives (RFC 5903 for ECP-256
//! and ECP-384, RFC 7748 for X25519, RFC 4231 for HMAC-SHA2, NIST SP 800-38A for AES-CBC) and an
//! OpenSSL-made MODP-2048 exchange.

use std::net::{IpAddr, Ipv4Addr};

use espd::ike::crypto::{
    CbcKey, Cipher, CryptoError, DhGroup, DhSecret, ESP_PROTO, EspCipher, Iv, Phase1Exchange,
    Phase1Keys, Prf, hash_eq, nat_d, phase1_iv, phase2_iv,
};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The recorded strongSwan exchanges.

/// One heading line of a charon log and the hex dump under it.
#[derive(Debug)]
struct Entry {
    /// The line without its "[TAG] " prefix, e.g. "SKEYID => 32 bytes".
    text: String,
    data: Vec<u8>,
}

/// A charon log as a cursor over its entries: `next` finds the next entry whose text starts
/// with a prefix, so the tests follow the exchange in the order charon logged it.
struct Log {
    name: String,
    entries: Vec<Entry>,
    pos: usize,
}

impl Log {
    fn load(name: &str) -> Self {
        let path = format!("{}/tests/data/ike/{name}.log", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut entries: Vec<Entry> = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
                continue;
            };
            let body = rest.1;
            // A dump line: "   16: AB CD ..." (offset, colon, up to 16 hex bytes).
            let t = body.trim_start();
            if let Some((off, bytes)) = t.split_once(": ")
                && !off.is_empty()
                && off.chars().all(|c| c.is_ascii_digit())
                && body.starts_with(' ')
            {
                let e = entries.last_mut().expect("dump line before any heading");
                assert_eq!(
                    off.parse::<usize>().unwrap(),
                    e.data.len(),
                    "{name}: {line}"
                );
                e.data.extend(hex(bytes));
                continue;
            }
            entries.push(Entry {
                text: body.to_string(),
                data: Vec::new(),
            });
        }
        Self {
            name: name.to_string(),
            entries,
            pos: 0,
        }
    }

    fn next(&mut self, prefix: &str) -> &Entry {
        let i = self.entries[self.pos..]
            .iter()
            .position(|e| e.text.starts_with(prefix))
            .unwrap_or_else(|| panic!("{}: no '{prefix}' after entry {}", self.name, self.pos));
        self.pos += i + 1;
        &self.entries[self.pos - 1]
    }

    fn data(&mut self, prefix: &str) -> Vec<u8> {
        let e = self.next(prefix);
        let len: usize = e
            .text
            .split("=> ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no length in '{}'", e.text));
        assert_eq!(e.data.len(), len, "{}", e.text);
        e.data.clone()
    }

    fn iv(&mut self, prefix: &str) -> Iv {
        self.data(prefix).try_into().expect("16-byte IV")
    }

    /// The M-ID in "generating QUICK_MODE request 2002254968 [ ... ]".
    fn mid(&mut self, prefix: &str) -> u32 {
        let e = self.next(prefix);
        e.text[prefix.len()..]
            .split(' ')
            .find(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no M-ID in '{}'", e.text))
    }

    /// The pre-shared key from "key: 65:73:...".
    fn psk(&mut self) -> Vec<u8> {
        let e = self.next("key: ");
        hex(&e.text["key: ".len()..])
    }
}

/// ISAKMP payload types used here (RFC 2408 §3.1, RFC 3947).
const SA: u8 = 1;
const KE: u8 = 4;
const ID: u8 = 5;
const HASH: u8 = 8;
const NONCE: u8 = 10;
const D: u8 = 12;
const NAT_D: u8 = 20;

struct Payload {
    kind: u8,
    /// The body after the 4-byte generic header (what the RFC calls "_b").
    body: Vec<u8>,
    /// Offset just past the payload.
    end: usize,
}

/// Walks a payload chain starting with type `first` at `buf[at..]`; stops at next-payload 0.
fn payloads(first: u8, buf: &[u8], at: usize) -> Vec<Payload> {
    let mut out = Vec::new();
    let (mut kind, mut at) = (first, at);
    while kind != 0 {
        let next = buf[at];
        let len = usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
        assert!(len >= 4 && at + len <= buf.len(), "payload overruns");
        out.push(Payload {
            kind,
            body: buf[at + 4..at + len].to_vec(),
            end: at + len,
        });
        kind = next;
        at += len;
    }
    out
}

/// A whole ISAKMP message (header + clear payloads).
fn message(buf: &[u8]) -> Vec<Payload> {
    payloads(buf[16], buf, 28)
}

fn body(ps: &[Payload], kind: u8) -> Vec<u8> {
    ps.iter()
        .find(|p| p.kind == kind)
        .map(|p| p.body.clone())
        .unwrap_or_else(|| panic!("no payload of type {kind}"))
}

/// The SPI of the first proposal in an SA payload body (DOI, situation, proposal header).
fn proposal_spi(sa_b: &[u8]) -> u32 {
    assert_eq!(sa_b[8 + 6], 4, "SPI size");
    u32::from_be_bytes(sa_b[16..20].try_into().unwrap())
}

struct Run {
    name: &'static str,
    prf: Prf,
    cipher: Cipher,
    group: DhGroup,
    esp: EspCipher,
    pfs: bool,
}

const RUNS: [Run; 4] = [
    Run {
        name: "ecp256-sha256-aes256",
        prf: Prf::HmacSha256,
        cipher: Cipher::Aes256Cbc,
        group: DhGroup::Ecp256,
        esp: EspCipher::AesGcm16_256,
        pfs: false,
    },
    Run {
        name: "modp2048-sha256-aes128-pfs",
        prf: Prf::HmacSha256,
        cipher: Cipher::Aes128Cbc,
        group: DhGroup::Modp2048,
        esp: EspCipher::AesGcm16_128,
        pfs: true,
    },
    Run {
        name: "ecp384-sha384-aes256-pfs",
        prf: Prf::HmacSha384,
        cipher: Cipher::Aes256Cbc,
        group: DhGroup::Ecp384,
        esp: EspCipher::AesGcm16_256,
        pfs: true,
    },
    Run {
        name: "x25519-sha512-aes128",
        prf: Prf::HmacSha512,
        cipher: Cipher::Aes128Cbc,
        group: DhGroup::Curve25519,
        esp: EspCipher::AesGcm16_128,
        pfs: false,
    },
];

/// Replays one CBC encryption logged as "encrypting payloads: IV, plain, padding, encrypted";
/// checks the IV is `iv` and returns (plaintext without padding, last ciphertext block).
fn replay_encrypt(log: &mut Log, key: &CbcKey, iv: &Iv) -> (Vec<u8>, Iv) {
    log.next("encrypting payloads");
    assert_eq!(&log.iv("IV =>"), iv, "{}: IV", log.name);
    let plain = log.data("plain =>");
    let padding = log.data("padding =>");
    let encrypted = log.data("encrypted =>");
    // strongSwan pads with zeros to the block, a whole block when already aligned.
    assert!(padding.iter().all(|&b| b == 0) && (1..=16).contains(&padding.len()));
    let mut buf = [plain.clone(), padding].concat();
    let last = key.encrypt(iv, &mut buf).unwrap();
    assert_eq!(buf, encrypted, "{}: ciphertext", log.name);
    (plain, last)
}

/// Replays one logged decryption with `iv`; returns (plaintext incl. padding, last block).
fn replay_decrypt(log: &mut Log, key: &CbcKey, iv: &Iv) -> (Vec<u8>, Iv) {
    log.next("decrypting payloads");
    let mut buf = log.data("encrypted =>");
    let plain = log.data("plain =>");
    let last = key.decrypt(iv, &mut buf).unwrap();
    assert_eq!(buf, plain, "{}: plaintext", log.name);
    (plain, last)
}

/// The initiator's log, followed message by message: main mode, quick mode, two deletes.
fn check_initiator(run: &Run) {
    let mut log = Log::load(&format!("{}-a", run.name));
    let prf = run.prf;
    let psk = log.psk();
    assert_eq!(psk, b"espd-ike-kat-throwaway-psk");

    // MM1 (SA) out, MM2 in: SAi_b is the body of the initiator's SA payload.
    log.next("generating ID_PROT request 0 [ SA");
    let mm1 = log.data("generated data of this generator");
    let cky_i: [u8; 8] = mm1[0..8].try_into().unwrap();
    let sai_b = body(&message(&mm1), SA);

    // MM3 (KE, Ni, NAT-D) out, MM4 (KE, Nr, NAT-D) in.
    log.next("generating ID_PROT request 0 [ KE No");
    let mm3 = log.data("generated data of this generator");
    let mm3 = message(&mm3);
    let (g_xi, ni_b) = (body(&mm3, KE), body(&mm3, NONCE));
    let mm4 = log.data("parsing payload from");
    let cky_r: [u8; 8] = mm4[8..16].try_into().unwrap();
    let mm4p = message(&mm4);
    let (g_xr, nr_b) = (body(&mm4p, KE), body(&mm4p, NONCE));
    assert_eq!(g_xi.len(), run.group.ke_len());
    assert_eq!(g_xr.len(), run.group.ke_len());

    // The key schedule.
    let g_xy = log.data("shared Diffie Hellman secret");
    assert_eq!(g_xy.len(), run.group.secret_len());
    let keys = Phase1Keys::psk(prf, run.cipher, &psk, &ni_b, &nr_b, &g_xy, &cky_i, &cky_r);
    assert_eq!(log.data("SKEYID =>"), keys.skeyid(), "{}", run.name);
    assert_eq!(log.data("SKEYID_d =>"), keys.skeyid_d(), "{}", run.name);
    assert_eq!(log.data("SKEYID_a =>"), keys.skeyid_a(), "{}", run.name);
    assert_eq!(log.data("SKEYID_e =>"), keys.skeyid_e(), "{}", run.name);
    assert_eq!(
        log.data("encryption key Ka =>"),
        keys.enc_key(),
        "{}",
        run.name
    );
    let iv0 = phase1_iv(prf, &g_xi, &g_xr);
    assert_eq!(log.iv("initial IV =>"), iv0, "{}", run.name);
    let cbc = keys.cbc_key().unwrap();

    // NAT-D: every hash charon computed, and the ones MM3/MM4 carry, from cookies, IP, port.
    let mut natd = 0;
    while log.entries[log.pos..]
        .iter()
        .take_while(|e| !e.text.starts_with("HASH_I data"))
        .any(|e| e.text.starts_with("natd_chunk"))
    {
        let chunk = log.data("natd_chunk =>");
        let h = log.data("natd_hash =>");
        assert_eq!(&chunk[..8], &cky_i);
        assert_eq!(&chunk[8..16], &cky_r);
        let ip = IpAddr::V4(Ipv4Addr::new(chunk[16], chunk[17], chunk[18], chunk[19]));
        let port = u16::from_be_bytes([chunk[20], chunk[21]]);
        assert_eq!(nat_d(prf, &cky_i, &cky_r, ip, port), h, "{}", run.name);
        natd += 1;
    }
    assert!(natd >= 2);
    for p in mm3.iter().chain(&mm4p).filter(|p| p.kind == NAT_D) {
        assert_eq!(p.body.len(), prf.output_len());
    }

    // MM5 (IDii, HASH_I, INITIAL-CONTACT) encrypted with the initial IV.
    let ex = Phase1Exchange {
        g_xi: &g_xi,
        g_xr: &g_xr,
        cky_i,
        cky_r,
        sai_b: &sai_b,
    };
    let hash_i_data = log.data("HASH_I data =>");
    let hash_i = log.data("HASH_I =>");
    let (mm5, last) = replay_encrypt(&mut log, &cbc, &iv0);
    let mm5 = payloads(ID, &mm5, 0);
    let idii_b = body(&mm5, ID);
    assert_eq!(
        hash_i_data,
        [&g_xi[..], &g_xr, &cky_i, &cky_r, &sai_b, &idii_b].concat()
    );
    assert_eq!(keys.hash_i(&ex, &idii_b), hash_i, "{}", run.name);
    assert!(hash_eq(&hash_i, &body(&mm5, HASH)));
    assert_eq!(log.iv("next IV for MID 0 =>"), last);

    // MM6 (IDir, HASH_R) decrypted with the last block of MM5.
    let (mm6, last) = replay_decrypt(&mut log, &cbc, &last);
    let mm6 = payloads(ID, &mm6, 0);
    let idir_b = body(&mm6, ID);
    assert_eq!(log.iv("next IV for MID 0 =>"), last);
    let last_p1 = last;
    let hash_r_data = log.data("HASH_R data =>");
    assert_eq!(
        hash_r_data,
        [&g_xr[..], &g_xi, &cky_r, &cky_i, &sai_b, &idir_b].concat()
    );
    let hash_r = log.data("HASH_R =>");
    assert_eq!(keys.hash_r(&ex, &idir_b), hash_r, "{}", run.name);
    assert_eq!(body(&mm6, HASH), hash_r);

    // Quick mode 1: HASH(1) SA Ni [KE] IDci IDcr, first IV from the last phase-1 block.
    let h1 = log.data("Hash(1) =>");
    let mid = log.mid("generating QUICK_MODE request");
    let iv = log.iv(&format!("next IV for MID {mid} =>"));
    assert_eq!(iv, phase2_iv(prf, &last_p1, mid), "{}", run.name);
    let (qm1, last) = replay_encrypt(&mut log, &cbc, &iv);
    assert_eq!(log.iv(&format!("next IV for MID {mid} =>")), last);
    let qm1p = payloads(HASH, &qm1, 0);
    let end = qm1p.last().unwrap().end;
    assert_eq!(end, qm1.len());
    assert_eq!(
        keys.qm_hash1(mid, &qm1[qm1p[0].end..end]),
        h1,
        "{}",
        run.name
    );
    assert_eq!(body(&qm1p, HASH), h1);
    let ni_qm = body(&qm1p, NONCE);
    let spi_i = proposal_spi(&body(&qm1p, SA));
    assert_eq!(qm1p.iter().any(|p| p.kind == KE), run.pfs);

    // Quick mode 2: HASH(2) SA Nr [KE] IDci IDcr, chained IV; the plaintext carries padding.
    let (qm2, last) = replay_decrypt(&mut log, &cbc, &last);
    let qm2p = payloads(HASH, &qm2, 0);
    let end = qm2p.last().unwrap().end;
    assert!(qm2[end..].iter().all(|&b| b == 0));
    let h2 = log.data("Hash(2) =>");
    assert_eq!(
        keys.qm_hash2(mid, &ni_qm, &qm2[qm2p[0].end..end]),
        h2,
        "{}",
        run.name
    );
    assert_eq!(body(&qm2p, HASH), h2);
    assert_eq!(log.iv(&format!("next IV for MID {mid} =>")), last);
    let nr_qm = body(&qm2p, NONCE);
    let spi_r = proposal_spi(&body(&qm2p, SA));

    // KEYMAT, both directions: "initiator" is initiator → responder, under the responder's SPI.
    let g_qm = run.pfs.then(|| log.data("DH secret =>"));
    if let Some(g) = &g_qm {
        assert_eq!(g.len(), run.group.secret_len());
    }
    let g_qm = g_qm.as_deref();
    let seed = |spi: u32| {
        [
            g_qm.unwrap_or(&[]),
            &[ESP_PROTO],
            &spi.to_be_bytes(),
            &ni_qm,
            &nr_qm,
        ]
        .concat()
    };
    assert_eq!(log.data("initiator SA seed =>"), seed(spi_r));
    assert_eq!(log.data("responder SA seed =>"), seed(spi_i));
    let k_i = keys.esp_keymat(run.esp, g_qm, spi_r, &ni_qm, &nr_qm);
    let k_r = keys.esp_keymat(run.esp, g_qm, spi_i, &ni_qm, &nr_qm);
    assert_eq!(
        &log.data("encryption initiator key =>"),
        &*k_i,
        "{}",
        run.name
    );
    assert_eq!(
        &log.data("encryption responder key =>"),
        &*k_r,
        "{}",
        run.name
    );
    let sas = std::fs::read_to_string(format!(
        "{}/tests/data/ike/{}-sas.txt",
        env!("CARGO_MANIFEST_DIR"),
        run.name
    ))
    .unwrap();
    let hex8 = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert!(sas.contains(&format!("{}_i* {}_r", hex8(&cky_i), hex8(&cky_r))));
    assert!(sas.contains(&format!("in  {spi_i:08x}")));
    assert!(sas.contains(&format!("out {spi_r:08x}")));

    // Quick mode 3: HASH(3), chained IV.
    let h3 = log.data("Hash(3) =>");
    assert_eq!(keys.qm_hash3(mid, &ni_qm, &nr_qm), h3, "{}", run.name);
    let (qm3, last) = replay_encrypt(&mut log, &cbc, &last);
    assert_eq!(payloads(HASH, &qm3, 0)[0].body, h3);
    assert_eq!(log.iv(&format!("next IV for MID {mid} =>")), last);

    // Two informational DELETEs (ESP with our inbound SPI, then ISAKMP with both cookies),
    // each with its own M-ID and an IV fresh from the last phase-1 block.
    for (proto, spi) in [
        (ESP_PROTO, spi_i.to_be_bytes().to_vec()),
        (1, [cky_i, cky_r].concat()),
    ] {
        let h = log.data("Hash =>");
        let mid = log.mid("generating INFORMATIONAL_V1 request");
        let iv = log.iv(&format!("next IV for MID {mid} =>"));
        assert_eq!(iv, phase2_iv(prf, &last_p1, mid), "{}", run.name);
        let (info, _) = replay_encrypt(&mut log, &cbc, &iv);
        let ps = payloads(HASH, &info, 0);
        assert_eq!(keys.info_hash(mid, &info[ps[0].end..]), h, "{}", run.name);
        assert_eq!(body(&ps, HASH), h);
        // D body: DOI(4) protocol(1) SPI size(1) #SPIs(2) SPI.
        let d = body(&ps, D);
        assert_eq!((d[4], usize::from(d[5])), (proto, spi.len()));
        assert_eq!(&d[8..], &spi[..]);
    }
}

#[test]
fn strongswan_ecp256_sha256_aes256() {
    check_initiator(&RUNS[0]);
}

#[test]
fn strongswan_modp2048_sha256_aes128_pfs() {
    check_initiator(&RUNS[1]);
}

#[test]
fn strongswan_ecp384_sha384_aes256_pfs() {
    check_initiator(&RUNS[2]);
}

#[test]
fn strongswan_x25519_sha512_aes128() {
    check_initiator(&RUNS[3]);
}

/// The responder derived the same keys, and every encryption either side logged replays
/// (the responder's MM6 and QM2 included).
#[test]
fn strongswan_responder_agrees_and_every_encryption_replays() {
    for run in &RUNS {
        let mut a = Log::load(&format!("{}-a", run.name));
        let mut b = Log::load(&format!("{}-b", run.name));
        let mut keys = None;
        for what in [
            "SKEYID =>",
            "SKEYID_d =>",
            "SKEYID_a =>",
            "SKEYID_e =>",
            "encryption key Ka =>",
            "encryption initiator key =>",
            "encryption responder key =>",
        ] {
            let v = a.data(what);
            assert_eq!(b.data(what), v, "{}: {what}", run.name);
            if what == "encryption key Ka =>" {
                keys = Some(v);
            }
        }
        let cbc = CbcKey::new(run.cipher, &keys.unwrap()).unwrap();
        for mut log in [
            Log::load(&format!("{}-a", run.name)),
            Log::load(&format!("{}-b", run.name)),
        ] {
            let mut n = 0;
            while log.entries[log.pos..]
                .iter()
                .any(|e| e.text.starts_with("encrypting payloads"))
            {
                let at = log.pos;
                log.next("encrypting payloads");
                let iv = log.iv("IV =>");
                log.pos = at;
                replay_encrypt(&mut log, &cbc, &iv);
                n += 1;
            }
            // Initiator: MM5, QM1, QM3, two DELETEs; responder: MM6, QM2.
            assert!(n >= 2, "{}: {n} encryptions", log.name);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Published vectors of the primitives.

/// RFC 5903 §8.1 (256-bit random ECP group): KE data is x ‖ y, the shared secret gir's x.
#[test]
fn rfc5903_ecp256() {
    let i = hex("C88F01F5 10D9AC3F 70A292DA A2316DE5 44E9AAB8 AFE84049 C62A9C57 862D1433");
    let gi = hex(
        "DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF 945D0C37 72581180
         5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58 389E0577 B8990BB3",
    );
    let r = hex("C6EF9C5D 78AE012A 011164AC B397CE20 88685D8F 06BF9BE0 B283AB46 476BEE53");
    let gr = hex(
        "D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63
         56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB",
    );
    let girx = hex("D6840F6B 42F6EDAF D13116E0 E1256520 2FEF8E9E CE7DCE03 812464D0 4B9442DE");
    check_pair(DhGroup::Ecp256, &i, &gi, &r, &gr, &girx);
}

/// RFC 5903 §8.2 (384-bit random ECP group).
#[test]
fn rfc5903_ecp384() {
    let i = hex(
        "099F3C70 34D4A2C6 99884D73 A375A67F 7624EF7C 6B3C0F16 0647B674 14DCE655
         E35B5380 41E649EE 3FAEF896 783AB194",
    );
    let gi = hex(
        "667842D7 D180AC2C DE6F74F3 7551F557 55C7645C 20EF73E3 1634FE72 B4C55EE6
         DE3AC808 ACB4BDB4 C88732AE E95F41AA 9482ED1F C0EEB9CA FC498462 5CCFC23F
         65032149 E0E144AD A0241815 35A0F38E EB9FCFF3 C2C947DA E69B4C63 4573A81C",
    );
    let r = hex(
        "41CB0779 B4BDB85D 47846725 FBEC3C94 30FAB46C C8DC5060 855CC9BD A0AA2942
         E0308312 916B8ED2 960E4BD5 5A7448FC",
    );
    let gr = hex(
        "E558DBEF 53EECDE3 D3FCCFC1 AEA08A89 A987475D 12FD950D 83CFA417 32BC509D
         0D1AC43A 0336DEF9 6FDA41D0 774A3571 DCFBEC7A ACF31964 72169E83 8430367F
         66EEBE3C 6E70C416 DD5F0C68 759DD1FF F83FA401 42209DFF 5EAAD96D B9E6386C",
    );
    let girx = hex(
        "11187331 C279962D 93D60424 3FD592CB 9D0A926F 422E4718 7521287E 7156C5C4
         D6031355 69B9E9D0 9CF5D4A2 70F59746",
    );
    check_pair(DhGroup::Ecp384, &i, &gi, &r, &gr, &girx);
}

/// RFC 7748 §6.1 (X25519), the KE data of group 31 (RFC 8031 §2).
#[test]
fn rfc7748_x25519() {
    let a = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let ga = hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    let b = hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
    let gb = hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
    let k = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    check_pair(DhGroup::Curve25519, &a, &ga, &b, &gb, &k);
}

/// MODP-2048 (group 14): two key pairs and their secret made by OpenSSL 3.0 (`openssl genpkey
/// -algorithm DH -pkeyopt group:modp_2048`, `openssl pkeyutl -derive`), public values padded to
/// 256 bytes. OpenSSL's private values are 224-bit, below what `generate` draws.
#[test]
fn openssl_modp2048() {
    let a = hex("a9d14c7dfac315bbf666cd3d0b27e666bd3851d9229913b07cfb578e");
    let ga = hex(
        "dc1b9bd2461f35dea899dcf75d606d9d9e832547ebc3ece95c287d733475f77920994d63ba8fb251e57d7a914cbb00bf\
         ca7cb52487fe6df1c3fa78df0f6bf1a5a7dfdc9b12b114971f8a2ee0b7fc3a2aefdb849466c6800b2b0ccfdc94636a36\
         a70668ca2134cda78e1bcd9fb4f5004564148a76f77adb985830065fb32853a6bec2748b84f33b28de26bc34fe576cfc\
         9012bbed068435a16d6234f30e81a2d98340fb2badf362b1cea5ca5302715b7b55479ce2383dea12f53373cfcd6e932e\
         608f7bd9bde9e1baaa4c7f48cb37d35847c2aa1b32f4788a8efb24dd64944326206dfc10ca1ec3730ecbe63a8c7a7aef\
         41ae5b632dbceef2ab47952f3830c6fb",
    );
    let b = hex("016abf5f9ba46cefc39ad575313e1744c7eb71345f4cb01a2caa1ac2b5");
    let gb = hex(
        "16980a91153d76e9bee276ca0745466a2dc0b8e8b1d6da0bfac1761a837467c15253e131c785c2e62217544875205d5c\
         ae784f2ca4232519d0e0ea7fd1b8658b8f02649e12f1842bb7edadadedcc9f818bd80f2b8f100dde5bed4b33b50e1e8c\
         eed7b0344d4cb09e269718bdbfaaa8165b3b1502b64f4827837b2217022c04473968dd0a26a6b8038d6d7c571055a454\
         f80f026007a0089f7684170f5bcfb63cbebc6bda150b1c0f6b68e5d8c18ebdb3f536bd75c70546be892592022570ba56\
         09a5bcb439f2ee6a4b1abf503383b6aebd56c75fb7bdebcae7b9155f9d68edde99fb50be7dc278f1b54b3bb60c967dbb\
         2757629050800b5031a7b7ebb32ddf46",
    );
    let k = hex(
        "a6a775ac79a4691722354aa7cd489472fa7432323c56ec5b0d27dd2d05ed991b79d36394cf404f1f3b789c9dfa7b24a0\
         0856bc0e050d589feb11a9869350623f6175039da161282bc92a392c1771a7dc176b13ffa208233166060fd6ab961299\
         5b9b72e5a5bb95194b377c58a624655d088ed9ed7eebf494e7810c5ff499a7c9b07b1b10f799a10a67fc2c2f0b7cd163\
         48343e71bfa4b8f4fb8818c9f312bee62e41b19026eb76e5c524b7dc01c353f7c50959ad9de0cea5fb36d1da25becc9b\
         45f0d4b10c76dcc2a84c785a966ba254003e5010734ef88a313c1301f69c305b1528abcb102db8a3b3f655b6055a0dfc\
         73eb131ac570a6f7456f4efb6383ebc2",
    );
    check_pair(DhGroup::Modp2048, &a, &ga, &b, &gb, &k);
}

/// Both private values give their published public values, both sides derive the published
/// secret, and a corrupted public value is refused or gives a different secret.
fn check_pair(g: DhGroup, a: &[u8], ga: &[u8], b: &[u8], gb: &[u8], k: &[u8]) {
    let (sa, ke_a) = DhSecret::from_private(g, a).unwrap();
    let (sb, ke_b) = DhSecret::from_private(g, b).unwrap();
    assert_eq!(ke_a, ga, "{g:?} public a");
    assert_eq!(ke_b, gb, "{g:?} public b");
    assert_eq!(&*sa.agree(gb).unwrap(), k, "{g:?} a");
    assert_eq!(&*sb.agree(ga).unwrap(), k, "{g:?} b");
    let mut bad = gb.to_vec();
    bad[5] ^= 1;
    let (sa, _) = DhSecret::from_private(g, a).unwrap();
    match sa.agree(&bad) {
        Err(e) => assert_eq!(e, CryptoError::InvalidPublic { group: g.iana() }),
        // X25519 and MODP accept any in-range value: the secret just differs.
        Ok(z) => {
            assert!(matches!(g, DhGroup::Curve25519 | DhGroup::Modp2048));
            assert_ne!(&*z, k);
        }
    }
}

/// RFC 4231 test cases 1 and 2, HMAC-SHA-256/384/512.
#[test]
fn rfc4231_hmac() {
    let cases: [(&[u8], &[u8], [&str; 3]); 2] = [
        (
            &[0x0b; 20],
            b"Hi There",
            [
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
                "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c\
                 faea9ea9076ede7f4af152e8b2fa9cb6",
                "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde\
                 daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
            ],
        ),
        (
            b"Jefe",
            b"what do ya want for nothing?",
            [
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
                "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e\
                 8e2240ca5e69e2c78b3239ecfab21649",
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554\
                 9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
            ],
        ),
    ];
    for (key, data, macs) in cases {
        for (prf, mac) in [Prf::HmacSha256, Prf::HmacSha384, Prf::HmacSha512]
            .into_iter()
            .zip(macs)
        {
            assert_eq!(&*prf.prf(key, &[data]), &hex(mac)[..], "{prf:?}");
        }
    }
}

/// NIST SP 800-38A F.2.1/F.2.2 (CBC-AES128) and F.2.5/F.2.6 (CBC-AES256), and the IV chaining
/// a block at a time.
#[test]
fn sp800_38a_cbc() {
    let iv: Iv = hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
    let pt = hex(
        "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
         30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710",
    );
    for (cipher, key, ct) in [
        (
            Cipher::Aes128Cbc,
            "2b7e151628aed2a6abf7158809cf4f3c",
            "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2
             73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7",
        ),
        (
            Cipher::Aes256Cbc,
            "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
            "f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d
             39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b",
        ),
    ] {
        let k = CbcKey::new(cipher, &hex(key)).unwrap();
        let ct = hex(ct);
        let mut buf = pt.clone();
        let last = k.encrypt(&iv, &mut buf).unwrap();
        assert_eq!(buf, ct, "{cipher:?}");
        assert_eq!(&last[..], &ct[48..]);
        // Block by block, each with the IV the previous call returned.
        let mut chained = iv;
        for (i, block) in pt.chunks(16).enumerate() {
            let mut b = block.to_vec();
            chained = k.encrypt(&chained, &mut b).unwrap();
            assert_eq!(b, ct[i * 16..i * 16 + 16]);
        }
        let back = k.decrypt(&iv, &mut buf).unwrap();
        assert_eq!(buf, pt);
        assert_eq!(&back[..], &ct[48..]);
    }
}
