//! What the sans-I/O IKE engine and its driver say to each other: the engine takes datagrams,
//! time and operator commands, and hands out [`Action`]s (datagrams to send, SAs to install or
//! remove, events). It never does I/O and never reads a clock; the driver (`driver.rs`) owns
//! the UDP sockets and calls the control thread's typed API.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, mpsc};

use zeroize::Zeroizing;

use crate::codes::Code;
use crate::sa::Limits;
use crate::sa::policy::Selector;

/// What the engine needs from its surroundings besides bytes and time.
pub trait Env {
    /// Cryptographically secure random bytes (cookies, nonces, message IDs, DPD sequence).
    fn random(&mut self, buf: &mut [u8]);
    /// A free inbound SPI, reserved in the SA table (`None`: the table is full). An SPI the
    /// engine does not use in the end goes back with [`Action::ReleaseSpi`].
    fn allocate_spi(&mut self) -> Option<u32>;
}

/// Which exchange an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exchange {
    Main,
    Quick,
    Informational,
}

/// Why a main mode ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmEnd {
    /// An authenticated ISAKMP DELETE for its cookies (13885 `peer_delete`).
    PeerDelete,
    /// A new main mode from the same peer carried INITIAL-CONTACT (13885 `initial_contact`).
    InitialContact,
    /// Its lifetime ran out (13885 `lifetime`; the engine sent its own DELETE).
    Lifetime,
    /// Replaced by our own reauthentication (the engine sent a DELETE for the old one).
    Reauth,
    /// DPD gave up (13886, never 13885; no DELETE sent).
    DpdDead,
    /// The operator terminated it (DELETE sent).
    Terminated,
}

/// One direction of a child SA: SPI and AES-GCM-16 key material (key ‖ 4-byte salt).
pub struct ChildKeys {
    pub spi: u32,
    pub keymat: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ChildKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildKeys")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("keymat", &"<redacted>")
            .finish()
    }
}

/// What the driver must do (or report), in the order the engine produced them.
#[derive(Debug)]
pub enum Action {
    /// Send `data` (an ISAKMP message, without the non-ESP marker: the driver adds it on
    /// port 4500) from our port `local_port` (500 or 4500) to `to`.
    Send {
        peer: usize,
        local_port: u16,
        to: SocketAddr,
        data: Vec<u8>,
    },
    /// A main mode is established (event `mm_up`; the control records it for 13885).
    MainModeUp {
        peer: usize,
        icookie: u64,
        rcookie: u64,
        /// Negotiated lifetime (seconds) and, if any, kilobytes.
        lifetime_s: u64,
        lifetime_kb: Option<u64>,
        /// e.g. `aes256-sha256-ecp256`.
        proposal: String,
        initiator: bool,
    },
    /// A main mode is gone (see [`MmEnd`] for the event each cause gives).
    MainModeDown {
        peer: usize,
        icookie: u64,
        rcookie: u64,
        cause: MmEnd,
    },
    /// A quick mode we answer reached QM2: install our inbound SA now, since the initiator
    /// may send on it as soon as it has sent QM3 (before QM3 reaches us). The `ChildUp` that
    /// follows QM3 names the same inbound SPI; without QM3 a `ChildDown` removes it.
    InboundUp {
        peer: usize,
        inbound: ChildKeys,
        limits: Box<Limits>,
    },
    /// A quick mode completed (boxed: the largest action by far).
    ChildUp(Box<NewChild>),
    /// Remove a child SA pair (the peer's ESP DELETE, DPD with `clear`, terminate).
    /// `inbound`/`outbound` are SPIs; either may be unknown to the data path already.
    ChildDown {
        peer: usize,
        inbound: Option<u32>,
        outbound: Option<u32>,
        /// `peer_delete`, `dpd`, `terminated`, `no QM3`, `quick mode aborted`.
        reason: &'static str,
    },
    /// A negotiation failed (event `mm_failed` / `qm_failed` with `code`).
    Failed {
        peer: usize,
        exchange: Exchange,
        code: Code,
        reason: String,
    },
    /// An SPI from [`Env::allocate_spi`] that will not be installed.
    ReleaseSpi { spi: u32 },
}

/// A quick mode completed: install `inbound` (ours), then make `outbound` the tunnel's SA
/// (make-before-break); `replaces`: the child (inbound SPI, outbound SPI) it rekeys, whose
/// inbound SA retires after the grace period.
#[derive(Debug)]
pub struct NewChild {
    pub peer: usize,
    /// The main mode it was negotiated under.
    pub icookie: u64,
    pub rcookie: u64,
    pub inbound: ChildKeys,
    pub outbound: ChildKeys,
    /// Limits for both SAs (soft: when this side rekeys).
    pub limits: Limits,
    pub replaces: Option<(u32, u32)>,
    /// Negotiated proxy IDs, from our side (`src` ours, `dst` the peer's).
    pub selector: Selector,
    /// UDP-encapsulated (RFC 3948) as negotiated.
    pub udp_encap: bool,
    /// We initiated the quick mode: the peer installs its inbound SA only when our QM3
    /// arrives, so our outbound swap waits a little (`driver::SWAP_DELAY`).
    pub initiator: bool,
}

/// Operator view of one peer (`espd ctl ike list`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PeerStatus {
    pub peer: usize,
    pub tunnel: String,
    pub remote: String,
    /// `idle`, `connecting`, `established`.
    pub state: &'static str,
    pub main_modes: Vec<MainModeStatus>,
    /// Installed children as (inbound SPI, outbound SPI).
    pub children: Vec<(u32, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MainModeStatus {
    pub icookie: String,
    pub rcookie: String,
    pub proposal: String,
    pub initiator: bool,
    pub age_s: u64,
}

/// What an operator asks of the IKE thread (`espd ctl ike initiate|terminate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Initiate(usize),
    Terminate(usize),
}

/// The IKE thread's last snapshot for operators: its peers and its engine's counters.
#[derive(Clone, Debug, Default)]
pub struct IkeSnapshot {
    pub peers: Vec<PeerStatus>,
    pub counters: super::engine::Counters,
}

/// The control thread's link to the IKE thread: commands go out without waiting, the status
/// is the IKE thread's last snapshot (so the control thread never blocks on it).
#[derive(Clone)]
pub struct IkeLink {
    pub commands: mpsc::Sender<Command>,
    pub status: Arc<Mutex<IkeSnapshot>>,
    /// Peer index by tunnel name.
    pub peers: Vec<String>,
    /// IKE datagrams the socket readers dropped because the IKE thread's queue was full.
    pub rx_dropped: Arc<std::sync::atomic::AtomicU64>,
}
