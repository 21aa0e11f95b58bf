//! Ethernet II frames (IEEE 802.3), without VLAN tags.

use super::{WireError, be16, put16};

pub const HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

pub mod field {
    use crate::wire::Field;
    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    pub const ETHERTYPE: usize = 12;
}

/// A MAC address.
pub type Mac = [u8; 6];

/// Returns the EtherType of `frame`, checking its length once.
#[inline]
pub fn ethertype(frame: &[u8]) -> Result<u16, WireError> {
    if frame.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    Ok(be16(frame, field::ETHERTYPE))
}

/// Writes an Ethernet header into `hdr` (at least 14 bytes).
#[inline]
pub fn emit(hdr: &mut [u8], dst: &Mac, src: &Mac, ethertype: u16) {
    hdr[field::DST].copy_from_slice(dst);
    hdr[field::SRC].copy_from_slice(src);
    put16(hdr, field::ETHERTYPE, ethertype);
}

/// Source and destination MAC of a frame (caller checked the length).
#[inline]
pub fn addrs(frame: &[u8]) -> (Mac, Mac) {
    let mut d = [0; 6];
    let mut s = [0; 6];
    d.copy_from_slice(&frame[field::DST]);
    s.copy_from_slice(&frame[field::SRC]);
    (d, s)
}
