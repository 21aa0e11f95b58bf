//! ISAKMP/IKEv1 numbers: payload and exchange types, protocol ids, SA attributes, notify
//! types and vendor IDs, named as in the RFCs (RFC 2407, 2408, 2409, 3706, 3947, 4106) and
//! the IANA "Internet Key Exchange (IKE) Attributes" / "Internet Security Association and
//! Key Management Protocol (ISAKMP) Identifiers" registries.

/// RFC 2407 §4.2: the IPsec DOI.
pub const DOI_IPSEC: u32 = 1;
/// RFC 2407 §4.6.2: the only situation espd accepts.
pub const SIT_IDENTITY_ONLY: u32 = 1;
/// RFC 2408 §3.1: major version 1, minor version 0.
pub const VERSION_1_0: u8 = 0x10;

/// RFC 2408 §3.1 next-payload types (plus RFC 3947 NAT-D / NAT-OA and their draft numbers).
pub mod payload {
    pub const NONE: u8 = 0;
    pub const SA: u8 = 1;
    pub const PROPOSAL: u8 = 2;
    pub const TRANSFORM: u8 = 3;
    pub const KE: u8 = 4;
    pub const ID: u8 = 5;
    pub const CERT: u8 = 6;
    pub const CERT_REQ: u8 = 7;
    pub const HASH: u8 = 8;
    pub const SIG: u8 = 9;
    pub const NONCE: u8 = 10;
    pub const NOTIFY: u8 = 11;
    pub const DELETE: u8 = 12;
    pub const VENDOR_ID: u8 = 13;
    /// RFC 3947 §3.2.
    pub const NAT_D: u8 = 20;
    /// RFC 3947 §5.2.
    pub const NAT_OA: u8 = 21;
    /// draft-ietf-ipsec-nat-t-ike-02/03 (private-use number, still sent by old peers).
    pub const NAT_D_DRAFT: u8 = 130;
    pub const NAT_OA_DRAFT: u8 = 131;
}

/// RFC 2408 §3.1 / RFC 2409 exchange types.
pub mod exchange {
    pub const BASE: u8 = 1;
    /// Main mode.
    pub const IDENTITY_PROTECTION: u8 = 2;
    pub const AUTHENTICATION_ONLY: u8 = 3;
    pub const AGGRESSIVE: u8 = 4;
    pub const INFORMATIONAL: u8 = 5;
    /// Mode config (draft-dukes-ike-mode-cfg); not supported.
    pub const TRANSACTION: u8 = 6;
    /// RFC 2409 §5.5.
    pub const QUICK: u8 = 32;
    pub const NEW_GROUP: u8 = 33;
}

/// RFC 2408 §3.1 header flags.
pub mod flags {
    pub const ENCRYPTION: u8 = 0x01;
    pub const COMMIT: u8 = 0x02;
    pub const AUTHENTICATION_ONLY: u8 = 0x04;
}

/// RFC 2407 §4.4.1 protocol ids (proposal, notify, delete).
pub mod protocol {
    pub const ISAKMP: u8 = 1;
    pub const AH: u8 = 2;
    pub const ESP: u8 = 3;
    pub const IPCOMP: u8 = 4;
}

/// RFC 2407 §4.4.2: the ISAKMP transform id.
pub const KEY_IKE: u8 = 1;

/// RFC 2409 Appendix A: phase-1 (ISAKMP) SA attribute types.
pub mod ike_attr {
    pub const ENCRYPTION_ALGORITHM: u16 = 1;
    pub const HASH_ALGORITHM: u16 = 2;
    pub const AUTHENTICATION_METHOD: u16 = 3;
    pub const GROUP_DESCRIPTION: u16 = 4;
    pub const GROUP_TYPE: u16 = 5;
    pub const GROUP_PRIME: u16 = 6;
    pub const GROUP_GENERATOR_ONE: u16 = 7;
    pub const GROUP_GENERATOR_TWO: u16 = 8;
    pub const GROUP_CURVE_A: u16 = 9;
    pub const GROUP_CURVE_B: u16 = 10;
    pub const LIFE_TYPE: u16 = 11;
    pub const LIFE_DURATION: u16 = 12;
    pub const PRF: u16 = 13;
    pub const KEY_LENGTH: u16 = 14;
    pub const FIELD_SIZE: u16 = 15;
    pub const GROUP_ORDER: u16 = 16;
}

/// Phase-1 encryption algorithms (IKE attribute 1).
pub mod ike_encr {
    pub const DES_CBC: u16 = 1;
    pub const TRIPLE_DES_CBC: u16 = 5;
    /// RFC 3602; with a key length attribute of 128 or 256.
    pub const AES_CBC: u16 = 7;
}

/// Phase-1 hash algorithms (IKE attribute 2; RFC 4868 for SHA-2).
pub mod ike_hash {
    pub const MD5: u16 = 1;
    pub const SHA1: u16 = 2;
    pub const SHA2_256: u16 = 4;
    pub const SHA2_384: u16 = 5;
    pub const SHA2_512: u16 = 6;
}

/// Authentication methods (IKE attribute 3).
pub mod auth_method {
    pub const PRE_SHARED_KEY: u16 = 1;
}

/// Diffie-Hellman groups (IKE attribute 4, ESP attribute 3).
pub mod group {
    /// RFC 3526.
    pub const MODP_2048: u16 = 14;
    /// RFC 5903.
    pub const ECP_256: u16 = 19;
    pub const ECP_384: u16 = 20;
    /// RFC 8031.
    pub const CURVE25519: u16 = 31;
}

/// Life types (IKE attribute 11, ESP attribute 1).
pub mod life_type {
    pub const SECONDS: u16 = 1;
    pub const KILOBYTES: u16 = 2;
}

/// RFC 2407 §4.5: phase-2 (IPsec SA) attribute types.
pub mod esp_attr {
    pub const SA_LIFE_TYPE: u16 = 1;
    pub const SA_LIFE_DURATION: u16 = 2;
    /// PFS group.
    pub const GROUP_DESCRIPTION: u16 = 3;
    pub const ENCAPSULATION_MODE: u16 = 4;
    pub const AUTHENTICATION_ALGORITHM: u16 = 5;
    pub const KEY_LENGTH: u16 = 6;
    pub const KEY_ROUNDS: u16 = 7;
    pub const COMPRESS_DICTIONARY_SIZE: u16 = 8;
    pub const COMPRESS_PRIVATE_ALGORITHM: u16 = 9;
    /// RFC 3168 §9.2.
    pub const ECN_TUNNEL: u16 = 10;
    /// RFC 4304.
    pub const EXTENDED_SEQUENCE_NUMBER: u16 = 11;
}

/// ESP transform ids (RFC 2407 §4.4.4, RFC 4106 §8.1).
pub mod esp_transform {
    pub const AES_CBC: u8 = 12;
    /// AES-GCM with a 16-byte ICV, with a key length attribute of 128 or 256.
    pub const AES_GCM_16: u8 = 20;
}

/// Encapsulation modes (ESP attribute 4; RFC 2407, RFC 3947 §5.1 and its draft numbers).
pub mod encap {
    pub const TUNNEL: u16 = 1;
    pub const TRANSPORT: u16 = 2;
    pub const UDP_TUNNEL: u16 = 3;
    pub const UDP_TRANSPORT: u16 = 4;
    pub const UDP_TUNNEL_DRAFT: u16 = 61443;
    pub const UDP_TRANSPORT_DRAFT: u16 = 61444;
}

/// RFC 2407 §4.6.2.1 identification types.
pub mod id_type {
    pub const IPV4_ADDR: u8 = 1;
    pub const FQDN: u8 = 2;
    pub const USER_FQDN: u8 = 3;
    pub const IPV4_ADDR_SUBNET: u8 = 4;
    pub const IPV6_ADDR: u8 = 5;
    pub const IPV6_ADDR_SUBNET: u8 = 6;
    pub const IPV4_ADDR_RANGE: u8 = 7;
    pub const IPV6_ADDR_RANGE: u8 = 8;
    pub const DER_ASN1_DN: u8 = 9;
    pub const DER_ASN1_GN: u8 = 10;
    pub const KEY_ID: u8 = 11;
}

/// Notify message types: RFC 2408 §3.14.1 errors, RFC 2407 §4.6.3 status, RFC 3706 DPD.
pub mod notify {
    pub const INVALID_PAYLOAD_TYPE: u16 = 1;
    pub const DOI_NOT_SUPPORTED: u16 = 2;
    pub const SITUATION_NOT_SUPPORTED: u16 = 3;
    pub const INVALID_COOKIE: u16 = 4;
    pub const INVALID_MAJOR_VERSION: u16 = 5;
    pub const INVALID_MINOR_VERSION: u16 = 6;
    pub const INVALID_EXCHANGE_TYPE: u16 = 7;
    pub const INVALID_FLAGS: u16 = 8;
    pub const INVALID_MESSAGE_ID: u16 = 9;
    pub const INVALID_PROTOCOL_ID: u16 = 10;
    pub const INVALID_SPI: u16 = 11;
    pub const INVALID_TRANSFORM_ID: u16 = 12;
    pub const ATTRIBUTES_NOT_SUPPORTED: u16 = 13;
    pub const NO_PROPOSAL_CHOSEN: u16 = 14;
    pub const BAD_PROPOSAL_SYNTAX: u16 = 15;
    pub const PAYLOAD_MALFORMED: u16 = 16;
    pub const INVALID_KEY_INFORMATION: u16 = 17;
    pub const INVALID_ID_INFORMATION: u16 = 18;
    pub const INVALID_CERT_ENCODING: u16 = 19;
    pub const INVALID_CERTIFICATE: u16 = 20;
    pub const CERT_TYPE_UNSUPPORTED: u16 = 21;
    pub const INVALID_CERT_AUTHORITY: u16 = 22;
    pub const INVALID_HASH_INFORMATION: u16 = 23;
    pub const AUTHENTICATION_FAILED: u16 = 24;
    pub const INVALID_SIGNATURE: u16 = 25;
    pub const ADDRESS_NOTIFICATION: u16 = 26;
    pub const NOTIFY_SA_LIFETIME: u16 = 27;
    pub const CERTIFICATE_UNAVAILABLE: u16 = 28;
    pub const UNSUPPORTED_EXCHANGE_TYPE: u16 = 29;
    pub const UNEQUAL_PAYLOAD_LENGTHS: u16 = 30;
    /// Status types (RFC 2408 §3.14.1, RFC 2407 §4.6.3).
    pub const CONNECTED: u16 = 16384;
    pub const RESPONDER_LIFETIME: u16 = 24576;
    pub const REPLAY_STATUS: u16 = 24577;
    pub const INITIAL_CONTACT: u16 = 24578;
    /// RFC 3706 §5 (data: a 4-byte sequence number).
    pub const R_U_THERE: u16 = 36136;
    pub const R_U_THERE_ACK: u16 = 36137;
}

/// Vendor IDs espd recognises (all others are ignored).
pub mod vendor_id {
    /// RFC 3947 §3.1: MD5("RFC 3947").
    pub const NAT_T_RFC3947: [u8; 16] =
        *b"\x4a\x13\x1c\x81\x07\x03\x58\x45\x5c\x57\x28\xf2\x0e\x95\x45\x2f";
    /// MD5("draft-ietf-ipsec-nat-t-ike-02").
    pub const NAT_T_DRAFT_02: [u8; 16] =
        *b"\xcd\x60\x46\x43\x35\xdf\x21\xf8\x7c\xfd\xb2\xfc\x68\xb6\xa4\x48";
    /// MD5("draft-ietf-ipsec-nat-t-ike-02\n") (sic: the newline is part of what was hashed).
    pub const NAT_T_DRAFT_02_N: [u8; 16] =
        *b"\x90\xcb\x80\x91\x3e\xbb\x69\x6e\x08\x63\x81\xb5\xec\x42\x7b\x1f";
    /// MD5("draft-ietf-ipsec-nat-t-ike-03").
    pub const NAT_T_DRAFT_03: [u8; 16] =
        *b"\x7d\x94\x19\xa6\x53\x10\xca\x6f\x2c\x17\x9d\x92\x15\x52\x9d\x56";
    /// RFC 3706 §5 (the last two bytes are the major and minor version, 1.0).
    pub const DPD: [u8; 16] = *b"\xaf\xca\xd7\x13\x68\xa1\xf1\xc9\x6b\x86\x96\xfc\x77\x57\x01\x00";
    /// strongSwan's own (MD5("strongSwan")), sent when `send_vendor_id = yes`.
    pub const STRONGSWAN: [u8; 16] =
        *b"\x88\x2f\xe5\x6d\x6f\xd2\x0d\xbc\x22\x51\x61\x3b\x2e\xbe\x5b\xeb";
    /// XAUTH (draft-beaulieu-ike-xauth), sent by strongSwan even without XAUTH configured.
    pub const XAUTH: [u8; 8] = *b"\x09\x00\x26\x89\xdf\xd6\xb7\x12";
    /// Cisco IKE fragmentation (the 16-byte prefix; 4 bytes of capability flags follow).
    pub const CISCO_FRAGMENTATION_PREFIX: [u8; 16] =
        *b"\x40\x48\xb7\xd5\x6e\xbc\xe8\x85\x25\xe7\xde\x7f\x00\xd6\xc2\xd3";

    /// Which NAT-T flavour a vendor ID announces: `Some(true)` for RFC 3947 (NAT-D payload
    /// type 20), `Some(false)` for the drafts (type 130), `None` for anything else.
    pub fn nat_t(vid: &[u8]) -> Option<bool> {
        if vid == NAT_T_RFC3947 {
            Some(true)
        } else if vid == NAT_T_DRAFT_02 || vid == NAT_T_DRAFT_02_N || vid == NAT_T_DRAFT_03 {
            Some(false)
        } else {
            None
        }
    }
}
