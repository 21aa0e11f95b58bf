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
}

/// `ike_list`'s `counters`: the IKE engine's (flattened) and the input queue's drops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IkeCounters {
    #[serde(flatten)]
    pub engine: crate::ike::engine::Counters,
    /// Datagrams the socket readers dropped because the IKE thread's queue was full.
    pub rx_queue_full: u64,
}
