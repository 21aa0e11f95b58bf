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
    IKE_OUT_OF_MEMORY = 13859, "ERROR_IPSEC_IKE_OUT_OF_MEMORY",
        "Memory allocation failed.";
    IKE_MM_EXPIRED = 13885, "ERROR_IPSEC_IKE_MM_EXPIRED",
        "Main mode SA lifetime expired or peer sent a main mode delete.";
    IKE_PEER_MM_ASSUMED_INVALID = 13886, "ERROR_IPSEC_IKE_PEER_MM_ASSUMED_INVALID",
        "Main mode SA assumed to be invalid because peer stopped responding.";
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
