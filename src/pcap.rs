//! Classic pcap files (Ethernet link type) for `espd pcap`: read, write.

use std::io::{self, Read, Write};

const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Largest record espd accepts (jumbo frames plus margin).
pub const MAX_SNAPLEN: u32 = 65535;

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error(
        "not a pcap file (magic {0:#010x}); pcapng is not supported, convert with `editcap -F pcap`"
    )]
    Magic(u32),
    #[error("link type {0} is not Ethernet (1)")]
    LinkType(u32),
    #[error("record {index}: captured length {len} exceeds {MAX_SNAPLEN}")]
    RecordTooLong { index: usize, len: u32 },
    #[error("record {index}: file ends inside the record")]
    Truncated { index: usize },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub ts_sec: u32,
    pub ts_frac: u32,
    pub data: Vec<u8>,
}

/// Reads all records of a pcap file.
pub fn read(mut r: impl Read) -> Result<Vec<Record>, PcapError> {
    let mut hdr = [0u8; 24];
    r.read_exact(&mut hdr)?;
    let magic_le = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let be = match magic_le {
        MAGIC_US | MAGIC_NS => false,
        m if m.swap_bytes() == MAGIC_US || m.swap_bytes() == MAGIC_NS => true,
        m => return Err(PcapError::Magic(m)),
    };
    let u32_at = |b: &[u8], i: usize| {
        let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if be {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    let link = u32_at(&hdr, 20);
    if link != LINKTYPE_ETHERNET {
        return Err(PcapError::LinkType(link));
    }
    let mut out = Vec::new();
    loop {
        let mut rh = [0u8; 16];
        match r.read_exact(&mut rh) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let index = out.len();
        let incl = u32_at(&rh, 8);
        if incl > MAX_SNAPLEN {
            return Err(PcapError::RecordTooLong { index, len: incl });
        }
        let mut data = vec![0u8; incl as usize];
        r.read_exact(&mut data)
            .map_err(|_| PcapError::Truncated { index })?;
        out.push(Record {
            ts_sec: u32_at(&rh, 0),
            ts_frac: u32_at(&rh, 4),
            data,
        });
    }
    Ok(out)
}

/// Writes a pcap file (microsecond timestamps, little endian, Ethernet).
pub fn write<'a>(
    mut w: impl Write,
    records: impl IntoIterator<Item = (u32, u32, &'a [u8])>,
) -> io::Result<()> {
    let mut hdr = Vec::with_capacity(24);
    hdr.extend_from_slice(&MAGIC_US.to_le_bytes());
    hdr.extend_from_slice(&2u16.to_le_bytes());
    hdr.extend_from_slice(&4u16.to_le_bytes());
    hdr.extend_from_slice(&0i32.to_le_bytes());
    hdr.extend_from_slice(&0u32.to_le_bytes());
    hdr.extend_from_slice(&MAX_SNAPLEN.to_le_bytes());
    hdr.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    w.write_all(&hdr)?;
    for (sec, usec, data) in records {
        w.write_all(&sec.to_le_bytes())?;
        w.write_all(&usec.to_le_bytes())?;
        w.write_all(&(data.len() as u32).to_le_bytes())?;
        w.write_all(&(data.len() as u32).to_le_bytes())?;
        w.write_all(data)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut f = Vec::new();
        let pkts: Vec<Vec<u8>> = vec![vec![1, 2, 3], vec![], vec![9; 1500]];
        write(
            &mut f,
            pkts.iter()
                .enumerate()
                .map(|(i, p)| (i as u32, 7, p.as_slice())),
        )
        .unwrap();
        let r = read(&f[..]).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[2].data, pkts[2]);
        assert_eq!((r[1].ts_sec, r[1].ts_frac), (1, 7));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(read(&[0u8; 24][..]), Err(PcapError::Magic(0))));
        let mut f = Vec::new();
        write(&mut f, [(0, 0, &[1u8, 2, 3][..])]).unwrap();
        f.truncate(f.len() - 1);
        assert!(matches!(
            read(&f[..]),
            Err(PcapError::Truncated { index: 0 })
        ));
        let mut g = Vec::new();
        write(&mut g, std::iter::empty()).unwrap();
        g[20] = 101;
        assert!(matches!(read(&g[..]), Err(PcapError::LinkType(101))));
    }
}
