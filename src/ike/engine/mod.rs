//! The sans-I/O IKEv1 state machine (quinn-proto style): datagrams, time and operator commands
//! in, [`Action`]s out. No sockets, no clock, no threads; the driver (`driver.rs`) owns those.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::config::IkePeer;
use super::types::{Action, Env, PeerStatus};

/// The IKEv1 engine for all configured peers.
pub struct Engine {
    peers: Vec<IkePeer>,
    actions: VecDeque<Action>,
}

impl Engine {
    pub fn new(peers: Vec<IkePeer>) -> Engine {
        Engine {
            peers,
            actions: VecDeque::new(),
        }
    }

    /// A datagram arrived on `local` (our address and port, 500 or 4500; the non-ESP marker
    /// of port 4500 already stripped) from `from`.
    pub fn receive(
        &mut self,
        _env: &mut dyn Env,
        _now: u64,
        _local: SocketAddr,
        _from: SocketAddr,
        _data: &[u8],
    ) {
    }

    /// Timers: retransmissions, DPD, reauthentication, half-open expiry, keepalives.
    pub fn tick(&mut self, _env: &mut dyn Env, _now: u64) {}

    /// When [`Engine::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        None
    }

    /// Main mode if none, then quick mode.
    pub fn initiate(&mut self, _env: &mut dyn Env, _now: u64, _peer: usize) {}

    /// ESP DELETEs for the peer's children, ISAKMP DELETEs for its main modes.
    pub fn terminate(&mut self, _env: &mut dyn Env, _now: u64, _peer: usize) {}

    /// The data path's soft limit of one of our SAs: rekey its child.
    pub fn child_soft_expired(
        &mut self,
        _env: &mut dyn Env,
        _now: u64,
        _spi: u32,
        _outbound: bool,
    ) {
    }

    /// The data path's hard limit: tell the peer (ESP DELETE) and forget the child.
    pub fn child_hard_expired(
        &mut self,
        _env: &mut dyn Env,
        _now: u64,
        _spi: u32,
        _outbound: bool,
    ) {
    }

    /// The control thread ended a main mode's lifetime: DELETE it.
    pub fn main_mode_expired(
        &mut self,
        _env: &mut dyn Env,
        _now: u64,
        _icookie: u64,
        _rcookie: u64,
    ) {
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn status(&self, _now: u64) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .enumerate()
            .map(|(i, p)| PeerStatus {
                peer: i,
                tunnel: p.tunnel.clone(),
                remote: p.remote.to_string(),
                state: "idle",
                main_modes: Vec::new(),
                children: Vec::new(),
            })
            .collect()
    }
}
