//! Loading and attaching the XDP program of `bpf/xdp_espd.c` (compiled by `build.rs`,
//! embedded here) with aya. One object per interface: each has its own XSKMAP (FACTS.md: a
//! shared map lets the second socket overwrite the first).
//!
//! Attachment uses a BPF link where the kernel offers one, so the program goes away with the
//! process even when it is killed; dropping [`XdpProgram`] detaches it.

use std::net::IpAddr;

use aya::maps::{HashMap, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_espd.o"));

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("{iface}: loading the XDP program: {source}")]
    Load {
        iface: String,
        source: Box<aya::EbpfError>,
    },
    #[error("{iface}: {what}: {source}")]
    Program {
        iface: String,
        what: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("{iface}: map {map}: {source}")]
    Map {
        iface: String,
        map: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("{iface}: the XDP object lacks {0}", iface = .1)]
    Missing(&'static str, String),
}

/// The program attached to one interface.
pub struct XdpProgram {
    pub iface: String,
    ebpf: Ebpf,
}

/// Counters kept by the program: redirected to espd, passed to the kernel, dropped because no
/// socket was bound on the queue.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct XdpStats {
    pub redirected: u64,
    pub passed: u64,
    pub no_socket: u64,
}

impl XdpProgram {
    /// Loads a fresh copy of the program for `iface`, fills its local-address map, attaches it.
    pub fn attach(
        iface: &str,
        cipher_side: bool,
        native: bool,
        local: &[IpAddr],
    ) -> Result<XdpProgram, XdpError> {
        let side: u32 = cipher_side.into();
        let mut ebpf = EbpfLoader::new()
            .override_global("cipher_side", &side, true)
            .load(OBJECT)
            .map_err(|e| XdpError::Load {
                iface: iface.into(),
                source: Box::new(e),
            })?;
        {
            let map = ebpf
                .map_mut("local_addrs")
                .ok_or_else(|| XdpError::Missing("local_addrs", iface.into()))?;
            let mut m: HashMap<_, [u8; 16], u8> =
                HashMap::try_from(map).map_err(|e| XdpError::Map {
                    iface: iface.into(),
                    map: "local_addrs",
                    source: Box::new(e),
                })?;
            for a in local {
                let key = match a {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    IpAddr::V6(v6) => v6.octets(),
                };
                m.insert(key, 1, 0).map_err(|e| XdpError::Map {
                    iface: iface.into(),
                    map: "local_addrs",
                    source: Box::new(e),
                })?;
            }
        }
        let prog: &mut Xdp = ebpf
            .program_mut("espd_xdp")
            .ok_or_else(|| XdpError::Missing("program espd_xdp", iface.into()))?
            .try_into()
            .map_err(|e| XdpError::Program {
                iface: iface.into(),
                what: "program type",
                source: Box::new(e),
            })?;
        prog.load().map_err(|e| XdpError::Program {
            iface: iface.into(),
            what: "verifier",
            source: Box::new(e),
        })?;
        let mode = if native {
            XdpMode::Driver
        } else {
            XdpMode::Skb
        };
        prog.attach(iface, mode).map_err(|e| XdpError::Program {
            iface: iface.into(),
            what: "attach (is another XDP program attached? `ip link set dev IFACE xdp off`)",
            source: Box::new(e),
        })?;
        Ok(XdpProgram {
            iface: iface.into(),
            ebpf,
        })
    }

    /// Points rx queue `queue` at the AF_XDP socket `fd`.
    pub fn register(
        &mut self,
        queue: u32,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), XdpError> {
        let iface = self.iface.clone();
        let map = self
            .ebpf
            .map_mut("xsks")
            .ok_or_else(|| XdpError::Missing("xsks", iface.clone()))?;
        let mut m = XskMap::try_from(map).map_err(|e| XdpError::Map {
            iface: iface.clone(),
            map: "xsks",
            source: Box::new(e),
        })?;
        m.set(queue, fd, 0).map_err(|e| XdpError::Map {
            iface,
            map: "xsks",
            source: Box::new(e),
        })
    }

    /// The program's counters, summed over CPUs.
    pub fn stats(&self) -> XdpStats {
        let Some(map) = self.ebpf.map("stats") else {
            return XdpStats::default();
        };
        let Ok(a) = PerCpuArray::<_, u64>::try_from(map) else {
            return XdpStats::default();
        };
        let get = |i: u32| a.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        XdpStats {
            redirected: get(0),
            passed: get(1),
            no_socket: get(2),
        }
    }
}
