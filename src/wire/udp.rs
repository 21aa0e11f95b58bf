//! UDP headers (RFC 768) and ESP-in-UDP demultiplexing (RFC 3948).

use super::{WireError, be16, put16};

pub const HEADER_LEN: usize = 8;
/// IKE and ESP-in-UDP port (RFC 3948 §2).
pub const NAT_T_PORT: u16 = 4500;

pub mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// Source port, destination port and length of the UDP header in `b`, checked against `b`.
#[inline]
pub fn parse(b: &[u8]) -> Result<(u16, u16, usize), WireError> {
    if b.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let len = be16(b, field::LENGTH) as usize;
    if len < HEADER_LEN {
        return Err(WireError::Malformed);
    }
    if len > b.len() {
        return Err(WireError::Truncated);
    }
    Ok((be16(b, field::SRC_PORT), be16(b, field::DST_PORT), len))
}

/// Writes a UDP header with a zero checksum (caller fills it where needed).
#[inline]
pub fn emit(hdr: &mut [u8], src_port: u16, dst_port: u16, len: usize) {
    put16(hdr, field::SRC_PORT, src_port);
    put16(hdr, field::DST_PORT, dst_port);
    put16(hdr, field::LENGTH, len as u16);
    put16(hdr, field::CHECKSUM, 0);
}
