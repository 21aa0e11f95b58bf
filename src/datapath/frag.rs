//! IPv4 fragmentation before encapsulation (RFC 4301 §8.1 "pre-fragmentation", RFC 791 §3.2).
//!
//! An inner IPv4 packet without DF that does not fit the tunnel is split into fragments that
//! each fit; each fragment is then encapsulated in its own ESP packet and reassembled by the
//! destination host, never by the peer gateway. Pure: offsets and headers only, no allocation.

use crate::wire::be16;
use crate::wire::ipv4::{self, FLAG_DF};
use crate::wire::put16;

const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET: u16 = 0x1fff;
/// Largest IPv4 options area (IHL 15).
const MAX_OPTIONS: usize = 40;

/// How one packet splits: the first fragment keeps the whole header, the others carry only the
/// options whose "copied" flag is set (RFC 791 §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Header length of the original packet (and of the first fragment).
    pub ihl: usize,
    /// Header length of the other fragments (20 + copied options, padded to 4).
    pub ihl_rest: usize,
    /// Payload bytes in the first fragment and in each of the others (multiples of 8 but the
    /// last).
    pub first: usize,
    pub rest: usize,
    /// Payload bytes of the original packet.
    pub payload: usize,
    /// Number of fragments (at least 2).
    pub pieces: usize,
    /// Copied options, padded with end-of-options (0) to `ihl_rest - 20` bytes.
    options: [u8; MAX_OPTIONS],
}

/// Why a packet cannot be fragmented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragError {
    /// Malformed options or an offset that would not fit the 13-bit field.
    Malformed,
    /// `max` leaves no room for 8 bytes of payload after the header.
    TooSmall,
}

/// Plans the fragments of the IPv4 packet `pkt` (checked by the caller: header and total
/// length agree with the slice) so that each is at most `max` bytes.
pub fn plan(pkt: &[u8], max: usize) -> Result<Plan, FragError> {
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(be16(pkt, ipv4::field::TOTAL_LEN));
    if ihl < ipv4::MIN_HEADER_LEN || total < ihl || total > pkt.len() {
        return Err(FragError::Malformed);
    }
    let mut options = [0u8; MAX_OPTIONS];
    let copied = copied_options(&pkt[ipv4::MIN_HEADER_LEN..ihl], &mut options)?;
    let ihl_rest = ipv4::MIN_HEADER_LEN + copied.next_multiple_of(4);
    let first = max.saturating_sub(ihl) & !7;
    let rest = max.saturating_sub(ihl_rest) & !7;
    if first == 0 || rest == 0 {
        return Err(FragError::TooSmall);
    }
    let payload = total - ihl;
    // The last fragment's offset (in 8-byte units, after the original's own) must fit.
    let base = usize::from(be16(pkt, ipv4::field::FLAGS_FRAG) & FRAG_OFFSET) * 8;
    if base + payload > 65535 {
        return Err(FragError::Malformed);
    }
    let pieces = if payload <= first {
        1
    } else {
        1 + (payload - first).div_ceil(rest)
    };
    Ok(Plan {
        ihl,
        ihl_rest,
        first,
        rest,
        payload,
        pieces,
        options,
    })
}

/// Copies the options with the copied flag (type bit 0x80) into `out`; returns their length.
fn copied_options(opts: &[u8], out: &mut [u8; MAX_OPTIONS]) -> Result<usize, FragError> {
    let (mut i, mut n) = (0, 0);
    while i < opts.len() {
        match opts[i] {
            0 => break,  // end of options
            1 => i += 1, // no-operation (not copied)
            t => {
                let len = usize::from(*opts.get(i + 1).ok_or(FragError::Malformed)?);
                if len < 2 || i + len > opts.len() {
                    return Err(FragError::Malformed);
                }
                if t & 0x80 != 0 {
                    out[n..n + len].copy_from_slice(&opts[i..i + len]);
                    n += len;
                }
                i += len;
            }
        }
    }
    Ok(n)
}

impl Plan {
    /// Payload offset and length of fragment `k`.
    #[inline]
    pub fn span(&self, k: usize) -> (usize, usize) {
        if k == 0 {
            return (0, self.first.min(self.payload));
        }
        let off = self.first + (k - 1) * self.rest;
        (off, self.rest.min(self.payload - off))
    }

    /// Length of fragment `k` (header included).
    #[inline]
    pub fn len(&self, k: usize) -> usize {
        let hdr = if k == 0 { self.ihl } else { self.ihl_rest };
        hdr + self.span(k).1
    }

    /// Writes fragment `k ≥ 1` of `pkt` into `out` (at least `self.len(k)` bytes).
    pub fn write(&self, pkt: &[u8], k: usize, out: &mut [u8]) {
        let (off, len) = self.span(k);
        let h = self.ihl_rest;
        out[..ipv4::MIN_HEADER_LEN].copy_from_slice(&pkt[..ipv4::MIN_HEADER_LEN]);
        out[ipv4::MIN_HEADER_LEN..h].copy_from_slice(&self.options[..h - ipv4::MIN_HEADER_LEN]);
        out[0] = 0x40 | (h / 4) as u8;
        let from = self.ihl + off;
        out[h..h + len].copy_from_slice(&pkt[from..from + len]);
        self.fix_header(pkt, k, &mut out[..h + len]);
    }

    /// Turns `pkt` itself into fragment 0 (its header stays whole).
    pub fn trim_first(&self, pkt: &mut [u8]) {
        let frag = &mut pkt[..self.len(0)];
        let word: [u8; 8] = frag[..8].try_into().unwrap_or([0; 8]);
        self.fix_header(&word, 0, frag);
    }

    /// Total length, flags, offset and checksum of fragment `k` in `frag`; `orig` holds at
    /// least the first 8 bytes of the original header.
    fn fix_header(&self, orig: &[u8], k: usize, frag: &mut [u8]) {
        let word = be16(orig, ipv4::field::FLAGS_FRAG);
        let (off, _) = self.span(k);
        let units = (word & FRAG_OFFSET) + (off / 8) as u16;
        // RFC 791: MF on every fragment but the last; the last keeps the original's MF (the
        // original may itself be a fragment). DF is clear (only such packets are fragmented).
        let mf = if k + 1 < self.pieces {
            FLAG_MF
        } else {
            word & FLAG_MF
        };
        let flags = word & !(FLAG_MF | FLAG_DF | FRAG_OFFSET);
        put16(frag, ipv4::field::TOTAL_LEN, frag.len() as u16);
        put16(frag, ipv4::field::FLAGS_FRAG, flags | mf | units);
        ipv4::fill_checksum(frag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(options: &[u8], payload: usize, flags_frag: u16) -> Vec<u8> {
        let ihl = 20 + options.len();
        let mut p = vec![0u8; ihl + payload];
        p[0] = 0x40 | (ihl / 4) as u8;
        put16(&mut p, 2, (ihl + payload) as u16);
        put16(&mut p, 4, 0xbeef);
        put16(&mut p, 6, flags_frag);
        p[8] = 64;
        p[9] = 17;
        p[12..20].copy_from_slice(&[192, 0, 2, 10, 198, 51, 100, 20]);
        p[20..ihl].copy_from_slice(options);
        for (i, b) in p[ihl..].iter_mut().enumerate() {
            *b = i as u8;
        }
        ipv4::fill_checksum(&mut p);
        p
    }

    /// Splits with `plan` and returns the fragments.
    fn split(p: &[u8], max: usize) -> Vec<Vec<u8>> {
        let plan = plan(p, max).unwrap();
        let mut out = Vec::new();
        let mut first = p.to_vec();
        plan.trim_first(&mut first);
        first.truncate(plan.len(0));
        out.push(first);
        for k in 1..plan.pieces {
            let mut f = vec![0u8; plan.len(k)];
            plan.write(p, k, &mut f);
            out.push(f);
        }
        out
    }

    #[test]
    fn offsets_flags_and_checksums() {
        let p = packet(&[], 1000, 0);
        let f = split(&p, 420);
        let words: Vec<(usize, u16)> = f
            .iter()
            .map(|x| (x.len(), be16(x, ipv4::field::FLAGS_FRAG)))
            .collect();
        // 400 payload bytes per fragment (420 - 20, a multiple of 8), then the rest.
        assert_eq!(words, [(420, 0x2000), (420, 0x2000 | 50), (220, 100)]);
        for x in &f {
            assert!(
                ipv4::Ipv4Packet::new_checked(&x[..])
                    .unwrap()
                    .verify_checksum()
            );
            assert_eq!(be16(x, 4), 0xbeef, "same identification");
        }
    }

    #[test]
    fn only_copied_options_after_the_first() {
        // NOP, a copied option (type 0x83, 7 bytes), record route (7, not copied, 7 bytes),
        // end of options: 16 bytes.
        let opts = [1, 0x83, 7, 4, 1, 2, 3, 4, 7, 7, 4, 0, 0, 0, 0, 0];
        let p = packet(&opts, 100, 0);
        let f = split(&p, 80);
        assert_eq!(
            &f[0][20..36],
            &opts,
            "the first fragment keeps every option"
        );
        for x in &f[1..] {
            assert_eq!(x[0], 0x47, "20 + 7 copied bytes padded to 8");
            assert_eq!(&x[20..28], &[0x83, 7, 4, 1, 2, 3, 4, 0]);
        }
        let mut data = Vec::new();
        for x in &f {
            let ihl = usize::from(x[0] & 0xf) * 4;
            data.extend_from_slice(&x[ihl..]);
        }
        assert_eq!(data, &p[36..]);
    }

    #[test]
    fn a_fragment_is_fragmented_further() {
        // The middle fragment of something larger: offset 100 units, MF set.
        let p = packet(&[], 600, 0x2000 | 100);
        let f = split(&p, 420);
        let words: Vec<u16> = f.iter().map(|x| be16(x, 6)).collect();
        assert_eq!(words, [0x2000 | 100, 0x2000 | 150]);
        // The last fragment of the datagram: its last piece has no MF.
        let p = packet(&[], 600, 100);
        let words: Vec<u16> = split(&p, 420).iter().map(|x| be16(x, 6)).collect();
        assert_eq!(words, [0x2000 | 100, 150]);
    }

    #[test]
    fn refuses_what_cannot_be_split() {
        assert_eq!(plan(&packet(&[], 100, 0), 27), Err(FragError::TooSmall));
        // An option whose length runs past the header.
        assert_eq!(
            plan(&packet(&[0x83, 9, 0, 0], 100, 0), 60),
            Err(FragError::Malformed)
        );
        // An offset that would overflow.
        assert_eq!(
            plan(&packet(&[], 1000, 0x1fff), 420),
            Err(FragError::Malformed)
        );
    }
}
