//! Windows IPsec error codes used by espd, with their exact symbols and messages
//! (from `winerror.h`; see `shared/reference/windows-ipsec-error-codes.tsv`).
//!
//! Dataplane drops are counted by [`crate::datapath::DropReason`], each of which maps to one of
//! these codes; control-plane events (main-mode and quick-mode expiry) carry them too.

use serde::Serialize;

/// One Windows IPsec error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Code {
    pub code: u32,
    pub symbol: &'static str,
    pub message: &'static str,
}

impl Code {
    /// `0x363D` style hexadecimal form, as Windows prints it.
    pub fn hex(&self) -> String {
        format!("0x{:04X}", self.code)
    }
}

macro_rules! codes {
    ($($name:ident = $num:literal, $sym:literal, $msg:literal;)*) => {
        $(pub const $name: Code = Code { code: $num, symbol: $sym, message: $msg };)*
        /// Every code espd uses, in numeric order.
        pub const ALL: &[Code] = &[$($name),*];
    };
}

codes! {
    IKE_AUTH_FAIL = 13801, "ERROR_IPSEC_IKE_AUTH_FAIL",
        "IKE authentication credentials are unacceptable.";
    IKE_GENERAL_PROCESSING_ERROR = 13804, "ERROR_IPSEC_IKE_GENERAL_PROCESSING_ERROR",
        "General processing error.";
    IKE_TIMED_OUT = 13805, "ERROR_IPSEC_IKE_TIMED_OUT",
        "Negotiation timed out.";
    IKE_INVALID_HEADER = 13824, "ERROR_IPSEC_IKE_INVALID_HEADER",
        "Invalid header.";
    IKE_PROCESS_ERR_SA = 13830, "ERROR_IPSEC_IKE_PROCESS_ERR_SA",
        "Error processing SA payload.";
    IKE_PROCESS_ERR_PROP = 13831, "ERROR_IPSEC_IKE_PROCESS_ERR_PROP",
        "Error processing Proposal payload.";
    IKE_PROCESS_ERR_TRANS = 13832, "ERROR_IPSEC_IKE_PROCESS_ERR_TRANS",
        "Error processing Transform payload.";
    IKE_PROCESS_ERR_KE = 13833, "ERROR_IPSEC_IKE_PROCESS_ERR_KE",
        "Error processing KE payload.";
    IKE_PROCESS_ERR_ID = 13834, "ERROR_IPSEC_IKE_PROCESS_ERR_ID",
        "Error processing ID payload.";
    IKE_PROCESS_ERR_CERT = 13835, "ERROR_IPSEC_IKE_PROCESS_ERR_CERT",
        "Error processing Cert payload.";
    IKE_PROCESS_ERR_CERT_REQ = 13836, "ERROR_IPSEC_IKE_PROCESS_ERR_CERT_REQ",
        "Error processing Certificate Request payload.";
    IKE_PROCESS_ERR_HASH = 13837, "ERROR_IPSEC_IKE_PROCESS_ERR_HASH",
        "Error processing Hash payload.";
    IKE_PROCESS_ERR_SIG = 13838, "ERROR_IPSEC_IKE_PROCESS_ERR_SIG",
        "Error processing Signature payload.";
    IKE_PROCESS_ERR_NONCE = 13839, "ERROR_IPSEC_IKE_PROCESS_ERR_NONCE",
        "Error processing Nonce payload.";
    IKE_PROCESS_ERR_NOTIFY = 13840, "ERROR_IPSEC_IKE_PROCESS_ERR_NOTIFY",
        "Error processing Notify payload.";
    IKE_PROCESS_ERR_DELETE = 13841, "ERROR_IPSEC_IKE_PROCESS_ERR_DELETE",
        "Error processing Delete Payload.";
    IKE_PROCESS_ERR_VENDOR = 13842, "ERROR_IPSEC_IKE_PROCESS_ERR_VENDOR",
        "Error processing VendorId payload.";
    IKE_INVALID_PAYLOAD = 13843, "ERROR_IPSEC_IKE_INVALID_PAYLOAD",
        "Invalid payload received.";
    IKE_INVALID_COOKIE = 13846, "ERROR_IPSEC_IKE_INVALID_COOKIE",
        "Invalid cookie received.";
    IKE_NO_MM_POLICY = 13850, "ERROR_IPSEC_IKE_NO_MM_POLICY",
        "There is no available Main Mode IKE policy.";
    IKE_OUT_OF_MEMORY = 13859, "ERROR_IPSEC_IKE_OUT_OF_MEMORY",
        "Memory allocation failed.";
    IKE_UNKNOWN_DOI = 13862, "ERROR_IPSEC_IKE_UNKNOWN_DOI",
        "Invalid DOI.";
    IKE_INVALID_SITUATION = 13863, "ERROR_IPSEC_IKE_INVALID_SITUATION",
        "Invalid situation.";
    IKE_DH_FAILURE = 13864, "ERROR_IPSEC_IKE_DH_FAILURE",
        "Diffie-Hellman failure.";
    IKE_DECRYPT = 13867, "ERROR_IPSEC_IKE_DECRYPT",
        "Error decrypting payload.";
    IKE_POLICY_MATCH = 13868, "ERROR_IPSEC_IKE_POLICY_MATCH",
        "Policy match error.";
    IKE_UNSUPPORTED_ID = 13869, "ERROR_IPSEC_IKE_UNSUPPORTED_ID",
        "Unsupported ID.";
    IKE_INVALID_HASH = 13870, "ERROR_IPSEC_IKE_INVALID_HASH",
        "Hash verification failed.";
    IKE_INVALID_MAJOR_VERSION = 13880, "ERROR_IPSEC_IKE_INVALID_MAJOR_VERSION",
        "The recipient cannot handle version of IKE specified in the header.";
    IKE_MM_LIMIT = 13882, "ERROR_IPSEC_IKE_MM_LIMIT",
        "Max number of established MM SAs to peer exceeded.";
    IKE_MM_EXPIRED = 13885, "ERROR_IPSEC_IKE_MM_EXPIRED",
        "Main mode SA lifetime expired or peer sent a main mode delete.";
    IKE_PEER_MM_ASSUMED_INVALID = 13886, "ERROR_IPSEC_IKE_PEER_MM_ASSUMED_INVALID",
        "Main mode SA assumed to be invalid because peer stopped responding.";
    IKE_UNEXPECTED_MESSAGE_ID = 13888, "ERROR_IPSEC_IKE_UNEXPECTED_MESSAGE_ID",
        "Received unexpected message ID.";
    IKE_PROCESS_ERR_NATOA = 13893, "ERROR_IPSEC_IKE_PROCESS_ERR_NATOA",
        "Error processing NatOA payload.";
    IKE_INVALID_MM_FOR_QM = 13894, "ERROR_IPSEC_IKE_INVALID_MM_FOR_QM",
        "Parameters of the main mode are invalid for this quick mode.";
    IKE_QM_EXPIRED = 13895, "ERROR_IPSEC_IKE_QM_EXPIRED",
        "Quick mode SA was expired by IPsec driver.";
    BAD_SPI = 13910, "ERROR_IPSEC_BAD_SPI",
        "The SPI in the packet does not match a valid IPsec SA.";
    SA_LIFETIME_EXPIRED = 13911, "ERROR_IPSEC_SA_LIFETIME_EXPIRED",
        "Packet was received on an IPsec SA whose lifetime has expired.";
    WRONG_SA = 13912, "ERROR_IPSEC_WRONG_SA",
        "Packet was received on an IPsec SA that does not match the packet characteristics.";
    REPLAY_CHECK_FAILED = 13913, "ERROR_IPSEC_REPLAY_CHECK_FAILED",
        "Packet sequence number replay check failed.";
    INVALID_PACKET = 13914, "ERROR_IPSEC_INVALID_PACKET",
        "IPsec header and/or trailer in the packet is invalid.";
    INTEGRITY_CHECK_FAILED = 13915, "ERROR_IPSEC_INTEGRITY_CHECK_FAILED",
        "IPsec integrity check failed.";
    CLEAR_TEXT_DROP = 13916, "ERROR_IPSEC_CLEAR_TEXT_DROP",
        "IPsec dropped a clear text packet.";
}

/// Looks a code up by number.
pub fn by_number(n: u32) -> Option<Code> {
    ALL.iter().copied().find(|c| c.code == n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code matches the reference table byte for byte.
    #[test]
    fn codes_match_reference_table() {
        let tsv = include_str!("../tests/data/windows-ipsec-error-codes.tsv");
        for c in ALL {
            let line = tsv
                .lines()
                .find(|l| l.starts_with(&format!("{}\t", c.code)))
                .unwrap_or_else(|| panic!("{} missing from the reference", c.code));
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f[1], c.hex(), "hex of {}", c.code);
            assert_eq!(f[2], c.symbol, "symbol of {}", c.code);
            assert_eq!(f[3], c.message, "message of {}", c.code);
        }
        assert_eq!(IKE_MM_EXPIRED.hex(), "0x363D");
    }
}
