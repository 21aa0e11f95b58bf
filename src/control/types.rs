//! Arguments and results of the control API (`Control`'s methods), typed: what the control
//! socket's JSON adapter (`api.rs`) and the built-in IKE both speak.

use std::net::IpAddr;

pub use super::events::MmCause;
pub use super::mm::{Child, MmRecord};
pub use crate::config::{NewAction, NewPolicy, NewSa, NewTunnel};
use crate::esp::aead::Backend;
use crate::sa::{Direction, Limits, Mode, SaState};

/// A make-before-break rekey of one tunnel (see `Control::rekey`).
#[derive(Debug)]
pub struct Rekey {
    pub tunnel: String,
    /// The tunnel's next outbound SA (an outbound SA of the same tunnel).
    pub outbound: NewSa,
    /// The peer's next SA towards us, installed first.
    pub inbound: Option<NewSa>,
    /// The old inbound SA, removed after the grace period.
    pub retire_inbound: Option<u32>,
    /// The grace period (`None`: the configured `rekey_grace_ms`).
    pub grace_ms: Option<u64>,
}

/// What a rekey swapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rekeyed {
    pub old_spi: Option<u32>,
    pub new_spi: u32,
}

/// An IKE main mode (phase 1 SA) to record: it ends with 13885 on its lifetime or a delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MainMode {
    pub icookie: u64,
    pub rcookie: u64,
    pub peer: IpAddr,
    pub lifetime_s: u64,
    pub lifetime_kb: Option<u64>,
    pub children: Vec<Child>,
}

/// One installed SA as `sa_get`/`sa_list` show it (never its key).
#[derive(Clone, Debug, PartialEq)]
pub struct SaInfo {
    pub spi: u32,
    pub direction: Direction,
    pub tunnel: Option<String>,
    pub mode: Mode,
    pub key_bits: u16,
    pub backend: Backend,
    pub esn: bool,
    pub packets: u64,
    pub bytes: u64,
    /// Outbound: the last sequence number used; inbound: the highest accepted.
    pub last_seq: Option<u64>,
    pub lifetime: Limits,
    /// The largest fraction of a hard limit used (0.0 ..= 1.0 and beyond once expired).
    pub consumed: f64,
    pub expired: bool,
    pub age_s: f64,
    /// Seconds until the earliest hard time limit (`None`: no time limit, or one counted from
    /// a first use not seen yet).
    pub lifetime_left_s: Option<f64>,
    /// Inbound packets this SA refused as replays (counted on that drop path only).
    pub replay_failures: u64,
    /// Inbound packets of this SA whose ICV did not verify.
    pub integrity_failures: u64,
    /// What a standby gateway needs to take the SA over (`sa` only; `sa_list` leaves it out).
    pub state: Option<SaState>,
}

/// `sa_list`: how many SAs match and the first `limit` of them.
#[derive(Clone, Debug, PartialEq)]
pub struct SaList {
    pub total: usize,
    pub sas: Vec<SaInfo>,
}

/// A main mode with its remaining lifetime.
#[derive(Clone, Debug, PartialEq)]
pub struct MainModeInfo {
    pub record: MmRecord,
    pub expires_in_s: f64,
}

/// Sizes of the tables and the control thread's counters.
#[derive(Clone, Debug)]
pub struct Stats {
    pub sas: usize,
    pub tunnels: usize,
    pub policies: usize,
    pub main_modes: usize,
    pub control: super::ControlCounters,
    /// Installed SAs by direction.
    pub sas_inbound: usize,
    pub sas_outbound: usize,
    /// Worker threads (cores) of the dataplane.
    pub workers: usize,
    /// Seconds since the control thread started.
    pub uptime_s: f64,
    /// Built-in IKE peers in state `established`.
    pub ike_peers_up: usize,
    /// The workers' counters, summed over cores (`None` until the daemon attached them).
    pub dataplane: Option<DataplaneStats>,
}

/// Frames and bytes one pipeline path received and sent, summed over cores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PathCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// The workers' counters (`CoreStats`) summed over cores, every one named: `stats`'s
/// `dataplane`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DataplaneStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// The inbound path (cipher side in, plain side out: decapsulation).
    pub inbound: PathCounters,
    /// The outbound path (plain side in, cipher side out: encapsulation).
    pub outbound: PathCounters,
    pub punted: u64,
    pub bypassed: u64,
    pub prefragmented: u64,
    pub icmp_sent: u64,
    pub events_dropped: u64,
    pub checksums_completed: u64,
    pub tx_ring_full: u64,
    pub kernel_rx_dropped: u64,
    pub kernel_fill_empty: u64,
    pub bad_descriptors: u64,
    pub idle_sleeps: u64,
    pub coalesced_sleeps: u64,
    /// Every drop, all reasons.
    pub drops: u64,
    /// Drops by reason name (every reason, zeros included).
    pub drops_by_reason: std::collections::BTreeMap<&'static str, u64>,
    /// Drops by Windows IPsec code (codes with drops only).
    pub drops_by_code: std::collections::BTreeMap<u32, u64>,
}

impl DataplaneStats {
    /// Sums the workers' counters.
    pub fn of(cores: &[crate::datapath::CoreStats]) -> DataplaneStats {
        use crate::datapath::{DropReason, Path};
        let mut s = DataplaneStats::default();
        for r in DropReason::ALL {
            s.drops_by_reason.insert(r.name(), 0);
        }
        for c in cores {
            s.rx_packets += c.rx_packets();
            s.rx_bytes += c.rx_bytes();
            s.tx_packets += c.tx_packets();
            s.tx_bytes += c.tx_bytes();
            for (p, sum) in [
                (Path::Inbound, &mut s.inbound),
                (Path::Outbound, &mut s.outbound),
            ] {
                let x = c.path(p);
                sum.rx_packets += x.rx_packets.get();
                sum.rx_bytes += x.rx_bytes.get();
                sum.tx_packets += x.tx_packets.get();
                sum.tx_bytes += x.tx_bytes.get();
            }
            s.punted += c.punted.get();
            s.bypassed += c.bypassed.get();
            s.prefragmented += c.prefragmented.get();
            s.icmp_sent += c.icmp_sent.get();
            s.events_dropped += c.events_dropped.get();
            s.checksums_completed += c.checksums_completed.get();
            s.tx_ring_full += c.tx_ring_full.get();
            s.kernel_rx_dropped += c.kernel_rx_dropped.get();
            s.kernel_fill_empty += c.kernel_fill_empty.get();
            s.bad_descriptors += c.bad_descs.get();
            s.idle_sleeps += c.idle_sleeps.get();
            s.coalesced_sleeps += c.coalesced_sleeps.get();
            for r in DropReason::ALL {
                let n = c.drops_of(r);
                s.drops += n;
                *s.drops_by_reason.entry(r.name()).or_insert(0) += n;
                if n > 0 {
                    *s.drops_by_code.entry(r.code().code).or_insert(0) += n;
                }
            }
        }
        s
    }
}

/// Packets, bytes and inbound failures of one SA, or summed over SAs of one tunnel and
/// direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SaTotals {
    pub packets: u64,
    pub bytes: u64,
    pub replay_failures: u64,
    pub integrity_failures: u64,
}

impl SaTotals {
    /// The SA's counters now.
    pub fn of(sa: &crate::sa::Sa) -> SaTotals {
        let (packets, bytes) = sa.totals();
        let (replay_failures, integrity_failures) = sa.failures();
        SaTotals {
            packets,
            bytes,
            replay_failures,
            integrity_failures,
        }
    }
}

impl SaTotals {
    /// What `self` counted beyond `base` (never negative).
    pub fn beyond(self, base: SaTotals) -> SaTotals {
        SaTotals {
            packets: self.packets.saturating_sub(base.packets),
            bytes: self.bytes.saturating_sub(base.bytes),
            replay_failures: self.replay_failures.saturating_sub(base.replay_failures),
            integrity_failures: self
                .integrity_failures
                .saturating_sub(base.integrity_failures),
        }
    }
}

impl std::ops::AddAssign for SaTotals {
    fn add_assign(&mut self, o: SaTotals) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.replay_failures += o.replay_failures;
        self.integrity_failures += o.integrity_failures;
    }
}

/// Per-tunnel counters that outlive SAs: what removed and replaced SAs had counted, by tunnel
/// index and direction (`[inbound, outbound]`), and the tunnels' names. The control thread
/// moves an SA's counters here under this lock in the same step that takes the SA out of the
/// dataplane; the metrics endpoint sums live SAs under it too, so a tunnel's totals never go
/// backwards across rekeys.
#[derive(Debug, Default)]
pub struct TunnelTotals {
    pub names: std::collections::BTreeMap<u32, String>,
    pub removed: std::collections::BTreeMap<u32, [SaTotals; 2]>,
}

/// Index of a direction in `TunnelTotals::removed`'s pairs.
pub fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

/// One tunnel as `tunnel_list` shows it: its configuration, its SAs, and its counters summed
/// over its SAs, removed ones included.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TunnelInfo {
    pub name: String,
    pub index: u32,
    pub local: IpAddr,
    pub remote: IpAddr,
    /// `tunnel` or `transport`.
    pub mode: &'static str,
    /// `none` or `udp:SRC:DST` (RFC 3948).
    pub encap: String,
    pub mtu: u16,
    /// The current outbound SA, `0x...`.
    pub outbound_spi: Option<String>,
    /// The installed inbound SAs, `0x...`.
    pub inbound_spis: Vec<String>,
    pub inbound: SaTotals,
    pub outbound: SaTotals,
}

/// `ike_list`'s `counters`: the IKE engine's (flattened) and the input queue's drops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IkeCounters {
    #[serde(flatten)]
    pub engine: crate::ike::engine::Counters,
    /// Datagrams the socket readers dropped because the IKE thread's queue was full.
    pub rx_queue_full: u64,
}
