//! Capture files and Wireshark's key table, through the pcap-file crate: reading classic pcap
//! (microsecond and nanosecond, either byte order) and pcapng (any `if_tsresol`) for
//! `espd pcap` and the tests; writing classic pcap at the input's timestamp resolution, and
//! pcapng with one interface per (interface, direction) for `espd ctl capture`; and the
//! `esp_sa` UAT lines with which Wireshark/tshark decrypt ESP (`espd ctl sa export`).

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapParser, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgParser, PcapNgWriter};
use pcap_file::{DataLink, Endianness, TsResolution};

pub const LINKTYPE_ETHERNET: u32 = 1;
/// Largest record espd accepts (jumbo frames plus margin).
pub const MAX_SNAPLEN: u32 = 65535;
/// Largest capture file `read` accepts.
pub const MAX_FILE: u64 = 1 << 30;

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error(
        "not a pcap file, nor pcapng (it starts with `{}`; pcap starts with a1b2c3d4 or a1b23c4d in either byte order, pcapng with 0a0d0d0a)",
        hex(.0)
    )]
    Magic(Vec<u8>),
    #[error("link type {0} is not Ethernet (1)")]
    LinkType(u32),
    #[error("record {index}: captured length {len} exceeds {MAX_SNAPLEN}")]
    RecordTooLong { index: usize, len: u32 },
    #[error("record {index}: file ends inside the record")]
    Truncated { index: usize },
    #[error("record {index}: {reason}")]
    Invalid { index: usize, reason: String },
    #[error("file larger than {MAX_FILE} bytes")]
    TooLarge,
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Timestamp resolution of a classic pcap file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    Micro,
    Nano,
}

impl Resolution {
    fn ts(self) -> TsResolution {
        match self {
            Resolution::Micro => TsResolution::MicroSecond,
            Resolution::Nano => TsResolution::NanoSecond,
        }
    }
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Time since the Unix epoch, to the file's resolution.
    pub ts: Duration,
    pub data: Vec<u8>,
}

/// The frames of a capture file and the finest timestamp resolution it had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// `Nano` for nanosecond pcap, and for pcapng with an interface finer than 1 µs.
    pub resolution: Resolution,
    pub records: Vec<Record>,
}

/// Reads all records of a pcap or pcapng file (see [`read_trace`]).
pub fn read(r: impl Read) -> Result<Vec<Record>, PcapError> {
    Ok(read_trace(r)?.records)
}

/// Reads a classic pcap (µs or ns, either byte order) or pcapng file of Ethernet frames.
pub fn read_trace(r: impl Read) -> Result<Trace, PcapError> {
    let mut data = Vec::new();
    r.take(MAX_FILE + 1).read_to_end(&mut data)?;
    if data.len() as u64 > MAX_FILE {
        return Err(PcapError::TooLarge);
    }
    if data.len() >= 4 && data[..4] == PCAPNG_MAGIC {
        read_pcapng(&data)
    } else {
        read_pcap(&data)
    }
}

fn invalid(index: usize, e: pcap_file::PcapError) -> PcapError {
    match e {
        pcap_file::PcapError::IncompleteBuffer => PcapError::Truncated { index },
        e => PcapError::Invalid {
            index,
            reason: e.to_string(),
        },
    }
}

fn read_pcap(data: &[u8]) -> Result<Trace, PcapError> {
    let (mut rest, parser) = PcapParser::new(data).map_err(|e| match e {
        pcap_file::PcapError::InvalidField(_) | pcap_file::PcapError::IncompleteBuffer => {
            PcapError::Magic(data[..data.len().min(4)].to_vec())
        }
        e => invalid(0, e),
    })?;
    let h = parser.header();
    let link = u32::from(h.datalink);
    if link != LINKTYPE_ETHERNET {
        return Err(PcapError::LinkType(link));
    }
    let resolution = match h.ts_resolution {
        TsResolution::MicroSecond => Resolution::Micro,
        TsResolution::NanoSecond => Resolution::Nano,
    };
    let mut records = Vec::new();
    while !rest.is_empty() {
        let index = records.len();
        // Raw records: a snap length shorter than the frames (`tcpdump -s 64`) is valid.
        let (r, p) = parser
            .next_raw_packet(rest)
            .map_err(|e| invalid(index, e))?;
        if p.incl_len > MAX_SNAPLEN {
            return Err(PcapError::RecordTooLong {
                index,
                len: p.incl_len,
            });
        }
        let nanos = match resolution {
            Resolution::Micro => u64::from(p.ts_frac) * 1000,
            Resolution::Nano => u64::from(p.ts_frac),
        };
        if nanos >= 1_000_000_000 {
            return Err(PcapError::Invalid {
                index,
                reason: format!("timestamp fraction {} is a second or more", p.ts_frac),
            });
        }
        records.push(Record {
            ts: Duration::new(u64::from(p.ts_sec), nanos as u32),
            data: p.data.into_owned(),
        });
        rest = r;
    }
    Ok(Trace {
        resolution,
        records,
    })
}

/// `if_tsresol` of an interface: units per second as (base, exponent); default 10^-6.
fn tsresol(idb: &InterfaceDescriptionBlock) -> (u32, u32) {
    for o in &idb.options {
        if let InterfaceDescriptionOption::IfTsResol(v) = o {
            return if v & 0x80 == 0 {
                (10, u32::from(*v))
            } else {
                (2, u32::from(v & 0x7f))
            };
        }
    }
    (10, 6)
}

/// A pcapng timestamp in `units` of the interface's resolution, as a duration.
fn units_to_duration(units: u64, (base, exp): (u32, u32)) -> Option<Duration> {
    let units = u128::from(units);
    let nanos = if base == 10 {
        if exp <= 9 {
            units.checked_mul(10u128.checked_pow(9 - exp)?)?
        } else {
            units / 10u128.checked_pow(exp - 9)?
        }
    } else {
        units.checked_mul(1_000_000_000)? >> exp.min(127)
    };
    Some(Duration::from_nanos(u64::try_from(nanos).ok()?))
}

fn read_pcapng(data: &[u8]) -> Result<Trace, PcapError> {
    let (mut rest, mut parser) = PcapNgParser::new(data).map_err(|e| invalid(0, e))?;
    let mut resolution = Resolution::Micro;
    let mut records = Vec::new();
    while !rest.is_empty() {
        let index = records.len();
        let (r, block) = parser.next_block(rest).map_err(|e| invalid(index, e))?;
        rest = r;
        let (iface, ts, pkt) = match block {
            Block::EnhancedPacket(p) => (p.interface_id, Some(p.timestamp), p.data),
            Block::SimplePacket(p) => (0, None, p.data),
            Block::Packet(p) => (
                u32::from(p.interface_id),
                Some(Duration::from_nanos(p.timestamp)),
                p.data,
            ),
            _ => continue,
        };
        let Some(idb) = parser.interfaces().get(iface as usize) else {
            return Err(PcapError::Invalid {
                index,
                reason: format!("interface {iface} is not described"),
            });
        };
        let link = u32::from(idb.linktype);
        if link != LINKTYPE_ETHERNET {
            return Err(PcapError::LinkType(link));
        }
        if pkt.len() > MAX_SNAPLEN as usize {
            return Err(PcapError::RecordTooLong {
                index,
                len: pkt.len() as u32,
            });
        }
        let res = tsresol(idb);
        if (res.0 == 10 && res.1 > 6) || (res.0 == 2 && res.1 >= 20) {
            resolution = Resolution::Nano;
        }
        // pcap-file keeps the raw 64-bit count of units in the Duration's nanoseconds.
        let ts = match ts {
            Some(t) => {
                let units = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
                units_to_duration(units, res).ok_or_else(|| PcapError::Invalid {
                    index,
                    reason: "timestamp out of range".into(),
                })?
            }
            None => Duration::ZERO,
        };
        records.push(Record {
            ts,
            data: pkt.into_owned(),
        });
    }
    Ok(Trace {
        resolution,
        records,
    })
}

/// Writes a little-endian classic pcap file of Ethernet frames at `resolution`.
pub fn write_trace<'a>(
    w: impl Write,
    resolution: Resolution,
    records: impl IntoIterator<Item = (Duration, &'a [u8])>,
) -> io::Result<()> {
    let header = PcapHeader {
        version_major: 2,
        version_minor: 4,
        ts_correction: 0,
        ts_accuracy: 0,
        snaplen: MAX_SNAPLEN,
        datalink: DataLink::ETHERNET,
        ts_resolution: resolution.ts(),
        endianness: Endianness::Little,
    };
    let mut pw = PcapWriter::with_header(w, header).map_err(io_err)?;
    for (ts, data) in records {
        pw.write_packet(&PcapPacket::new(ts, data.len() as u32, data))
            .map_err(io_err)?;
    }
    pw.into_writer().flush()
}

/// Writes a microsecond pcap file; records are (seconds, microseconds, frame).
pub fn write<'a>(
    w: impl Write,
    records: impl IntoIterator<Item = (u32, u32, &'a [u8])>,
) -> io::Result<()> {
    write_trace(
        w,
        Resolution::Micro,
        records
            .into_iter()
            .map(|(s, us, d)| (Duration::new(u64::from(s), us.min(999_999) * 1000), d)),
    )
}

fn io_err(e: pcap_file::PcapError) -> io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    }
}

/// Writes pcapng: a section, one Ethernet interface per name in `interfaces` (nanosecond
/// timestamps, the given snap length), then [`PcapNg::packet`]s.
pub struct PcapNg<W: Write> {
    w: PcapNgWriter<W>,
}

/// Packet direction of an enhanced packet block (`epb_flags` bits 0-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Inbound,
    Outbound,
}

impl<W: Write> PcapNg<W> {
    /// `interfaces`: (if_name, if_description) of each interface, in id order.
    pub fn new(w: W, snaplen: u32, interfaces: &[(String, String)]) -> io::Result<Self> {
        let mut w = PcapNgWriter::new(w).map_err(io_err)?;
        for (name, descr) in interfaces {
            let idb = InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Borrowed(name)),
                    InterfaceDescriptionOption::IfDescription(Cow::Borrowed(descr)),
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            };
            w.write_pcapng_block(idb).map_err(io_err)?;
        }
        Ok(PcapNg { w })
    }

    /// One frame (`data`, cut to the snap length by the caller) of `orig_len` bytes.
    pub fn packet(
        &mut self,
        interface: u32,
        ts: Duration,
        orig_len: u32,
        dir: Dir,
        data: &[u8],
    ) -> io::Result<usize> {
        let flags = match dir {
            Dir::Inbound => 1,
            Dir::Outbound => 2,
        };
        let epb = EnhancedPacketBlock {
            interface_id: interface,
            timestamp: ts,
            original_len: orig_len.max(data.len() as u32),
            data: Cow::Borrowed(data),
            options: vec![EnhancedPacketOption::Flags(flags)],
        };
        self.w.write_pcapng_block(epb).map_err(io_err)
    }

    pub fn into_inner(self) -> W {
        self.w.into_inner()
    }

    pub fn get_ref(&self) -> &W {
        self.w.get_ref()
    }
}

/// An AES-GCM-16 SA as Wireshark's `esp_sa` UAT wants it.
pub struct EspSa<'a> {
    /// Outer source and destination; `None` (transport mode without endpoints) is a wildcard.
    pub src: Option<std::net::IpAddr>,
    pub dst: Option<std::net::IpAddr>,
    pub spi: u32,
    /// Key ‖ salt in hex (20 or 36 bytes).
    pub key_hex: &'a str,
}

/// One line of the `esp_sa` UAT file (the same text follows `-o uat:esp_sa:` on tshark's
/// command line): protocol, source, destination, SPI as 0x…, "AES-GCM with 16 octet ICV
/// [RFC4106]", 0x key‖salt, authentication "NULL" (tshark refuses anything else with GCM, which
/// authenticates itself; it checks the ICV with the key), empty authentication key. An SA
/// without addresses gets wildcards under "IPv4" (see [`esp_sa_lines`] for both versions).
pub fn esp_sa_line(sa: &EspSa) -> String {
    let v6 = matches!(sa.src.or(sa.dst), Some(std::net::IpAddr::V6(_)));
    esp_sa_line_for(sa, if v6 { "IPv6" } else { "IPv4" })
}

fn esp_sa_line_for(sa: &EspSa, proto: &str) -> String {
    let addr = |a: Option<std::net::IpAddr>| a.map_or_else(|| "*".to_string(), |a| a.to_string());
    format!(
        r#""{proto}","{}","{}","{:#010x}","AES-GCM with 16 octet ICV [RFC4106]","0x{}","NULL","""#,
        addr(sa.src),
        addr(sa.dst),
        sa.spi,
        sa.key_hex
    )
}

/// The `esp_sa` lines of one SA: one, or for an SA without addresses (transport mode) one
/// for IPv4 and one for IPv6 (tshark has no "any version").
pub fn esp_sa_lines(sa: &EspSa) -> Vec<String> {
    if sa.src.is_none() && sa.dst.is_none() {
        vec![esp_sa_line_for(sa, "IPv4"), esp_sa_line_for(sa, "IPv6")]
    } else {
        vec![esp_sa_line(sa)]
    }
}

/// The `esp_sa` UAT file: a comment line, then [`esp_sa_lines`] of each SA.
pub fn esp_sa_file<'a>(sas: impl IntoIterator<Item = &'a EspSa<'a>>) -> zeroize::Zeroizing<String> {
    const HEAD: &str =
        "# esp_sa: Wireshark ESP SAs written by `espd ctl sa export --wireshark` (holds keys)\n";
    let lines: Vec<zeroize::Zeroizing<String>> = sas
        .into_iter()
        .flat_map(esp_sa_lines)
        .map(zeroize::Zeroizing::new)
        .collect();
    // Sized up front: no reallocation leaves a copy of a key behind.
    let mut s = zeroize::Zeroizing::new(String::with_capacity(
        HEAD.len() + lines.iter().map(|l| l.len() + 1).sum::<usize>(),
    ));
    s.push_str(HEAD);
    for l in &lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(Duration, Vec<u8>)> {
        vec![
            (Duration::new(1_700_000_014, 123_456_789), vec![1, 2, 3]),
            (Duration::new(1_700_000_015, 0), vec![]),
            (Duration::new(1_700_000_015, 999_999_999), vec![9; 1500]),
        ]
    }

    #[test]
    fn roundtrip_micro_and_nano() {
        for res in [Resolution::Micro, Resolution::Nano] {
            let mut f = Vec::new();
            write_trace(
                &mut f,
                res,
                sample().iter().map(|(t, d)| (*t, d.as_slice())),
            )
            .unwrap();
            let t = read_trace(&f[..]).unwrap();
            assert_eq!(t.resolution, res);
            assert_eq!(t.records.len(), 3);
            for (r, (ts, d)) in t.records.iter().zip(sample()) {
                assert_eq!(r.data, d);
                let want = match res {
                    Resolution::Nano => ts,
                    Resolution::Micro => Duration::new(ts.as_secs(), ts.subsec_micros() * 1000),
                };
                assert_eq!(r.ts, want, "{res:?}");
            }
        }
        // The microsecond writer of the tests.
        let mut f = Vec::new();
        write(&mut f, [(1, 7, &[1u8, 2, 3][..])]).unwrap();
        assert_eq!(read(&f[..]).unwrap()[0].ts, Duration::new(1, 7000));
    }

    #[test]
    fn big_endian_pcap_and_short_snaplen() {
        // Big-endian ns pcap, snaplen 4, one record cut from 10 bytes to 4.
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2_3c4du32.to_be_bytes());
        f.extend_from_slice(&2u16.to_be_bytes());
        f.extend_from_slice(&4u16.to_be_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&4u32.to_be_bytes());
        f.extend_from_slice(&1u32.to_be_bytes());
        for v in [5u32, 6, 4, 10] {
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        let t = read_trace(&f[..]).unwrap();
        assert_eq!(t.resolution, Resolution::Nano);
        assert_eq!(t.records[0].ts, Duration::new(5, 6));
        assert_eq!(t.records[0].data, [1, 2, 3, 4]);
    }

    #[test]
    fn pcapng_roundtrip_keeps_nanoseconds() {
        let ifs = [
            ("p".to_string(), "p rx".to_string()),
            ("c".to_string(), "c tx".to_string()),
        ];
        let mut w = PcapNg::new(Vec::new(), 256, &ifs).unwrap();
        for (i, (ts, d)) in sample().iter().enumerate() {
            w.packet(i as u32 % 2, *ts, d.len() as u32 + 5, Dir::Inbound, d)
                .unwrap();
        }
        let t = read_trace(&w.into_inner()[..]).unwrap();
        assert_eq!(t.resolution, Resolution::Nano);
        let want: Vec<Record> = sample()
            .into_iter()
            .map(|(ts, data)| Record { ts, data })
            .collect();
        assert_eq!(t.records, want);
    }

    #[test]
    fn pcapng_resolutions() {
        let d = (10, 6);
        assert_eq!(
            units_to_duration(1_500_000, d),
            Some(Duration::new(1, 500_000_000))
        );
        assert_eq!(units_to_duration(3, (10, 9)), Some(Duration::from_nanos(3)));
        assert_eq!(
            units_to_duration(12345, (10, 12)),
            Some(Duration::from_nanos(12))
        );
        assert_eq!(
            units_to_duration(3 << 20, (2, 20)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(units_to_duration(u64::MAX, (10, 0)), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(read(&[0u8; 24][..]), Err(PcapError::Magic(_))));
        assert!(matches!(read(&b"hello"[..]), Err(PcapError::Magic(_))));
        assert!(matches!(read(&[][..]), Err(PcapError::Magic(_))));
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
        // pcapng magic followed by garbage, and every prefix of a good pcapng: errors only.
        let mut ng = PCAPNG_MAGIC.to_vec();
        ng.extend_from_slice(&[0xff; 40]);
        assert!(read(&ng[..]).is_err());
        let mut w = PcapNg::new(Vec::new(), 64, &[("x".into(), "y".into())]).unwrap();
        w.packet(0, Duration::ZERO, 3, Dir::Outbound, &[1, 2, 3])
            .unwrap();
        let good = w.into_inner();
        for n in 0..good.len() {
            let _ = read(&good[..n]);
        }
        let mut x = good.clone();
        for i in 0..x.len() {
            x[i] ^= 0x55;
            let _ = read(&x[..]);
            x[i] ^= 0x55;
        }
    }

    #[test]
    fn esp_sa_table_lines() {
        let sa = EspSa {
            src: Some("203.0.113.1".parse().unwrap()),
            dst: Some("203.0.113.2".parse().unwrap()),
            spi: 0xa001,
            key_hex: "00112233445566778899aabbccddeeff01020304",
        };
        assert_eq!(
            esp_sa_line(&sa),
            r#""IPv4","203.0.113.1","203.0.113.2","0x0000a001","AES-GCM with 16 octet ICV [RFC4106]","0x00112233445566778899aabbccddeeff01020304","NULL","""#
        );
        let v6 = EspSa {
            src: Some("fd00::1".parse().unwrap()),
            dst: Some("fd00::2".parse().unwrap()),
            ..sa
        };
        assert!(esp_sa_line(&v6).starts_with(r#""IPv6","fd00::1","fd00::2","0x0000a001""#));
        let any = EspSa {
            src: None,
            dst: None,
            ..v6
        };
        let l = esp_sa_lines(&any);
        assert!(l[0].starts_with(r#""IPv4","*","*","0x0000a001""#));
        assert!(l[1].starts_with(r#""IPv6","*","*","0x0000a001""#));
        let f = esp_sa_file([&sa, &any]);
        assert_eq!(f.lines().count(), 4);
        assert!(f.starts_with('#'));
    }
}
