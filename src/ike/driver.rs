//! The IKE thread: owns the UDP sockets (500 and 4500 on each local address of a peer), feeds
//! the sans-I/O [`Engine`] datagrams, time, operator commands and the control thread's events
//! (soft/hard expiry, main-mode lifetime), and carries out its [`Action`]s through the control
//! thread's typed API ([`ControlHandle`]): every SA it negotiates takes the same path as one
//! from the control socket (key checks, timers, events, make-before-break).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::config::IkePeer;
use super::engine::Engine;
use super::types::{Action, Command, Env, IkeLink, IkeSnapshot, MmEnd, NewChild};
use crate::config::NewSa;
use crate::control::events::{Event, MmCause, ike_failed, spi_str};
use crate::control::types::{Child, MainMode, Rekey};
use crate::control::{Control, ControlHandle};
use crate::sa::Direction;

/// Largest datagram read (IKEv1 messages here stay far below).
const MAX_DATAGRAM: usize = 65_535;
/// The `ike list` snapshot is rebuilt this often, and sooner (but at most every
/// [`STATUS_SOON_NS`]) when the engine reported something: never per datagram, since the
/// snapshot covers every peer (thousands on a concentrator).
const STATUS_EVERY_NS: u64 = 200_000_000;
const STATUS_SOON_NS: u64 = 20_000_000;
/// How long past a main mode's negotiated lifetime its responder waits for the initiator's
/// DELETE before ending it itself (13885 `lifetime`).
const RESPONDER_GRACE_S: u64 = 1;
/// Inputs taken per round of the IKE thread before timers and actions.
const INPUTS_PER_ROUND: usize = 64;

enum Input {
    Datagram {
        local: SocketAddr,
        from: SocketAddr,
        data: Vec<u8>,
    },
    Command(Command),
    Event(Event),
}

/// A running IKE thread (and its socket readers).
pub struct IkeThread {
    pub link: IkeLink,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl IkeThread {
    /// Whether every thread has ended (after `stop`: the last DELETEs are out).
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for the threads (after `stop` was set).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Binds the sockets and starts the IKE thread, registered with `ctl` (its typed event
/// watcher and the `ike_*` requests); later calls go through `control`. Errors name the
/// address that cannot be bound.
pub fn start(
    peers: Vec<IkePeer>,
    limits: super::engine::ResponderLimits,
    ctl: &mut Control,
    control: ControlHandle,
    stop: Arc<AtomicBool>,
) -> Result<IkeThread, String> {
    let (tx, rx) = mpsc::sync_channel::<Input>(4096);
    let rx_dropped = Arc::new(AtomicU64::new(0));
    let locals: BTreeSet<IpAddr> = peers.iter().map(|p| p.local).collect();
    let mut sockets = HashMap::new();
    let mut threads = Vec::new();
    for ip in locals {
        for port in [500u16, 4500] {
            let addr = SocketAddr::new(ip, port);
            let s = UdpSocket::bind(addr).map_err(|e| format!("ike: cannot bind {addr}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .map_err(|e| format!("ike: {addr}: {e}"))?;
            let r = s.try_clone().map_err(|e| format!("ike: {addr}: {e}"))?;
            sockets.insert(addr, s);
            let (tx, stop, dropped) = (tx.clone(), stop.clone(), rx_dropped.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("espd-ike-{port}"))
                    .spawn(move || read_loop(r, addr, tx, stop, dropped))
                    .map_err(|e| format!("ike: thread: {e}"))?,
            );
        }
    }
    // The control thread's events (expiry, main-mode lifetime) reach the engine through the
    // same input queue.
    let (etx, erx) = mpsc::sync_channel::<Event>(4096);
    ctl.watch(etx);
    {
        let (tx, stop) = (tx.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name("espd-ike-events".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        match erx.recv_timeout(Duration::from_millis(200)) {
                            Ok(e) if relevant(&e) => {
                                let _ = tx.send(Input::Event(e));
                            }
                            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                })
                .map_err(|e| format!("ike: thread: {e}"))?,
        );
    }
    let (ctx, crx) = mpsc::channel::<Command>();
    {
        let (tx, stop) = (tx.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name("espd-ike-cmd".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        match crx.recv_timeout(Duration::from_millis(200)) {
                            Ok(c) => {
                                let _ = tx.send(Input::Command(c));
                            }
                            Err(mpsc::RecvTimeoutError::Timeout) => {}
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                })
                .map_err(|e| format!("ike: thread: {e}"))?,
        );
    }
    let status = Arc::new(Mutex::new(IkeSnapshot::default()));
    let link = IkeLink {
        commands: ctx,
        status: status.clone(),
        peers: peers.iter().map(|p| p.tunnel.clone()).collect(),
        rx_dropped: rx_dropped.clone(),
    };
    ctl.attach_ike(link.clone());
    let mut engine = Engine::new(peers.clone());
    engine.set_responder_limits(limits);
    let mut d = Driver {
        swaps: Vec::new(),
        engine,
        peers,
        sockets,
        control,
        status,
        rx_dropped,
        rx_dropped_seen: 0,
    };
    threads.push(
        std::thread::Builder::new()
            .name("espd-ike".into())
            .spawn(move || d.run(rx, stop))
            .map_err(|e| format!("ike: thread: {e}"))?,
    );
    Ok(IkeThread { link, threads })
}

fn relevant(e: &Event) -> bool {
    matches!(
        e,
        Event::SaSoftExpired { .. }
            | Event::SaHardExpired { .. }
            | Event::MmExpired {
                cause: MmCause::Lifetime,
                ..
            }
            | Event::SaRemoved {
                direction: "inbound",
                reason: RETIRED,
                ..
            }
    )
}

/// The control's `sa_removed` reason for an old inbound SA at the end of a rekey's grace.
const RETIRED: &str = "retired after rekey";

fn read_loop(
    s: UdpSocket,
    local: SocketAddr,
    tx: mpsc::SyncSender<Input>,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !stop.load(Ordering::Acquire) {
        let Ok((n, from)) = s.recv_from(&mut buf) else {
            continue;
        };
        let mut data = &buf[..n];
        if local.port() == 4500 {
            // RFC 3948: IKE behind a 4-byte zero non-ESP marker; a lone 0xFF is a keepalive;
            // anything else is ESP, which the XDP program sends to the workers, not here.
            match data {
                [0, 0, 0, 0, rest @ ..] => data = rest,
                _ => continue,
            }
        }
        match tx.try_send(Input::Datagram {
            local,
            from,
            data: data.to_vec(),
        }) {
            Ok(()) => {}
            // The IKE thread is behind: counted (`IkeLink::rx_dropped`); the peer resends.
            Err(mpsc::TrySendError::Full(_)) => {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return,
        }
    }
}

/// The engine's surroundings: randomness from aws-lc-rs, SPIs from the SA table.
struct DriverEnv<'a> {
    control: &'a ControlHandle,
}

impl Env for DriverEnv<'_> {
    fn random(&mut self, buf: &mut [u8]) {
        // Failure of the system RNG is not recoverable; an all-zero nonce would be worse.
        if aws_lc_rs::rand::fill(buf).is_err() {
            std::process::abort();
        }
    }

    fn allocate_spi(&mut self) -> Option<u32> {
        self.control
            .call(|c: &mut Control, _| c.allocate_spi().ok())
            .ok()
            .flatten()
    }
}

/// How long our outbound swap waits at most after a quick mode we initiated: the peer
/// installs its inbound SA when our QM3 arrives (strongSwan does), and packets on the new SA
/// before that would be lost. The old outbound SA stays valid meanwhile (a rekey starts at
/// soft expiry). The swap comes sooner when the peer is seen to have the new pair (packets
/// arrive on our new inbound SA: it sends on its new outbound SA, which it installs with
/// its inbound one), or when the old outbound SA reaches its hard limit (it refuses every
/// packet from then on).
pub const SWAP_DELAY_NS: u64 = 300_000_000;
/// While a swap waits, the new inbound SA is looked at this often.
const SWAP_POLL_NS: u64 = 2_000_000;

/// An outbound swap waiting for `at` (cancelled if its child goes first).
struct Swap {
    at: u64,
    /// The child's inbound SPI.
    inbound: u32,
    tunnel: String,
    outbound: NewSa,
    retire: Option<u32>,
}

struct Driver {
    swaps: Vec<Swap>,
    engine: Engine,
    peers: Vec<IkePeer>,
    sockets: HashMap<SocketAddr, UdpSocket>,
    control: ControlHandle,
    status: Arc<Mutex<IkeSnapshot>>,
    /// Datagrams the socket readers dropped (queue full), and how many were logged.
    rx_dropped: Arc<AtomicU64>,
    rx_dropped_seen: u64,
}

impl Driver {
    fn run(&mut self, rx: mpsc::Receiver<Input>, stop: Arc<AtomicBool>) {
        let now = crate::now_ns();
        for i in 0..self.peers.len() {
            if self.peers[i].initiate {
                let mut env = DriverEnv {
                    control: &self.control,
                };
                self.engine.initiate(&mut env, now, i);
            }
        }
        self.apply();
        let mut status_at = 0;
        let mut dirty = false;
        while !stop.load(Ordering::Acquire) {
            let now = crate::now_ns();
            // One deadline per round (it visits every main mode): timers that an input sets
            // are in the future, so it also says whether to tick after the inputs.
            let deadline = self.engine.next_deadline();
            let most = if self.swaps.is_empty() {
                100_000_000
            } else {
                SWAP_POLL_NS
            };
            let mut wait = deadline
                .map_or(most, |d| d.saturating_sub(now))
                .clamp(1_000_000, most);
            if dirty {
                wait = wait.min(
                    (status_at + STATUS_SOON_NS)
                        .saturating_sub(now)
                        .max(1_000_000),
                );
            }
            let mut changed = false;
            match rx.recv_timeout(Duration::from_nanos(wait)) {
                Ok(i) => changed |= self.input(i),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // What else is already queued is taken in the same round (up to a bound, so
            // timers still run under a flood).
            for _ in 1..INPUTS_PER_ROUND {
                match rx.try_recv() {
                    Ok(i) => changed |= self.input(i),
                    Err(_) => break,
                }
            }
            let now = crate::now_ns();
            // Timers only when one is due (a datagram does not run them for every peer).
            if deadline.is_some_and(|d| d <= now) {
                let mut env = DriverEnv {
                    control: &self.control,
                };
                self.engine.tick(&mut env, now);
            }
            changed |= self.apply();
            self.swap_due(now);
            dirty |= changed;
            if (dirty && now >= status_at + STATUS_SOON_NS) || now >= status_at + STATUS_EVERY_NS {
                status_at = now;
                dirty = false;
                if let Ok(mut s) = self.status.lock() {
                    *s = IkeSnapshot {
                        peers: self.engine.status(now),
                        counters: self.engine.counters(),
                    };
                }
                let dropped = self.rx_dropped.load(Ordering::Relaxed);
                if dropped != self.rx_dropped_seen {
                    tracing::warn!(
                        "ike: {} datagrams dropped (input queue full)",
                        dropped - self.rx_dropped_seen
                    );
                    self.rx_dropped_seen = dropped;
                }
            }
        }
        // A clean stop tells the peers (DELETEs), as strongSwan does.
        let now = crate::now_ns();
        for i in 0..self.peers.len() {
            let mut env = DriverEnv {
                control: &self.control,
            };
            self.engine.terminate(&mut env, now, i);
        }
        self.apply();
    }

    /// One input to the engine; whether it was an operator command (the status changes).
    fn input(&mut self, input: Input) -> bool {
        let now = crate::now_ns();
        let mut env = DriverEnv {
            control: &self.control,
        };
        match input {
            Input::Datagram { local, from, data } => {
                self.engine.receive(&mut env, now, local, from, &data);
                false
            }
            Input::Command(Command::Initiate(p)) => {
                self.engine.initiate(&mut env, now, p);
                true
            }
            Input::Command(Command::Terminate(p)) => {
                self.engine.terminate(&mut env, now, p);
                true
            }
            Input::Event(e) => {
                self.event(e, now);
                false
            }
        }
    }

    fn event(&mut self, e: Event, now: u64) {
        if let Event::SaHardExpired {
            spi,
            direction: "outbound",
            ..
        } = &e
            && let Some(s) = parse_spi(spi)
        {
            self.swap_if_current(s, now);
        }
        let mut env = DriverEnv {
            control: &self.control,
        };
        match e {
            Event::SaSoftExpired { spi, direction, .. } => {
                if let Some(s) = parse_spi(&spi) {
                    self.engine
                        .child_soft_expired(&mut env, now, s, direction == "outbound");
                }
            }
            Event::SaHardExpired { spi, direction, .. } => {
                if let Some(s) = parse_spi(&spi) {
                    self.engine
                        .child_hard_expired(&mut env, now, s, direction == "outbound");
                }
            }
            Event::SaRemoved { spi, .. } => {
                if let Some(s) = parse_spi(&spi) {
                    self.engine.child_retired(s);
                }
            }
            Event::MmExpired {
                icookie, rcookie, ..
            } => {
                if let (Ok(i), Ok(r)) = (
                    u64::from_str_radix(&icookie, 16),
                    u64::from_str_radix(&rcookie, 16),
                ) {
                    self.engine.main_mode_expired(&mut env, now, i, r);
                }
            }
            _ => {}
        }
    }

    /// The tunnel's outbound SA `spi` reached its hard limit while its replacement waits for
    /// the swap: the replacement goes in now (the old SA refuses every packet anyway).
    fn swap_if_current(&mut self, spi: u32, now: u64) {
        let mut tunnels: Vec<String> = self.swaps.iter().map(|s| s.tunnel.clone()).collect();
        tunnels.dedup();
        for t in tunnels {
            let name = t.clone();
            let current = self
                .control
                .call(move |c: &mut Control, _| c.outbound_spi(&name))
                .ok()
                .flatten();
            if current == Some(spi)
                && let Some(s) = self
                    .swaps
                    .iter_mut()
                    .filter(|s| s.tunnel == t)
                    .min_by_key(|s| s.at)
            {
                s.at = now;
            }
        }
        self.swap_due(now);
    }

    /// Outbound swaps whose delay is over, or whose new inbound SA has carried packets (the
    /// peer has the new pair): make-before-break through `rekey` (the new inbound SA is in
    /// already; the replaced inbound SA retires after the grace period).
    fn swap_due(&mut self, now: u64) {
        if self.swaps.is_empty() {
            return;
        }
        let waiting: Vec<u32> = self
            .swaps
            .iter()
            .filter(|s| s.at > now)
            .map(|s| s.inbound)
            .collect();
        if !waiting.is_empty() {
            let used: Vec<u32> = self
                .control
                .call(move |c: &mut Control, now| {
                    waiting
                        .into_iter()
                        .filter(|spi| {
                            c.sa(*spi, Direction::Inbound, now)
                                .is_ok_and(|i| i.packets > 0)
                        })
                        .collect()
                })
                .unwrap_or_default();
            for s in self.swaps.iter_mut() {
                if used.contains(&s.inbound) {
                    s.at = now;
                }
            }
        }
        let (due, later): (Vec<Swap>, Vec<Swap>) = std::mem::take(&mut self.swaps)
            .into_iter()
            .partition(|s| s.at <= now);
        self.swaps = later;
        for s in due {
            let tunnel = s.tunnel.clone();
            let r = self.control.call(move |c: &mut Control, now| {
                let retire = s
                    .retire
                    .filter(|r| c.sa(*r, Direction::Inbound, now).is_ok());
                c.rekey(
                    Rekey {
                        tunnel: s.tunnel,
                        outbound: s.outbound,
                        inbound: None,
                        retire_inbound: retire,
                        grace_ms: None,
                    },
                    now,
                )
                .map(drop)
                .map_err(|e| e.to_string())
            });
            if let Ok(Err(e)) = r {
                tracing::warn!("ike: {tunnel}: outbound swap: {e}");
            }
        }
    }

    /// Carries out everything the engine asked for, in order; whether anything besides
    /// datagrams was (the status snapshot is then rebuilt).
    fn apply(&mut self) -> bool {
        let mut changed = false;
        while let Some(a) = self.engine.poll_action() {
            changed |= !matches!(a, Action::Send { .. });
            match a {
                Action::Send {
                    local_port,
                    to,
                    data,
                    peer,
                } => self.send(peer, local_port, to, &data),
                Action::MainModeUp {
                    peer,
                    icookie,
                    rcookie,
                    lifetime_s,
                    lifetime_kb,
                    proposal,
                    initiator,
                } => {
                    let (tunnel, remote) = self.who(peer);
                    // The initiator's timer ends the main mode and its DELETE tells us; as
                    // responder we enforce the lifetime only RESPONDER_GRACE_S later. With
                    // equal timers both ends fired within the DELETE's flight time about one
                    // time in five and both reported `lifetime`.
                    let enforced_s = if initiator {
                        lifetime_s
                    } else {
                        lifetime_s.saturating_add(RESPONDER_GRACE_S)
                    };
                    let _ = self.control.call(move |c: &mut Control, now| {
                        let r = c.main_mode_up(
                            MainMode {
                                icookie,
                                rcookie,
                                peer: remote,
                                lifetime_s: enforced_s,
                                lifetime_kb,
                                children: Vec::new(),
                            },
                            now,
                        );
                        if let Err(e) = r {
                            tracing::warn!("ike: main mode {icookie:016x}/{rcookie:016x}: {e}");
                        }
                        c.emit(Event::MmUp {
                            tunnel,
                            peer: remote,
                            icookie: format!("{icookie:016x}"),
                            rcookie: format!("{rcookie:016x}"),
                            proposal,
                            lifetime_s,
                            initiator,
                            time: now as f64 / 1e9,
                        });
                    });
                }
                Action::MainModeDown {
                    peer,
                    icookie,
                    rcookie,
                    cause,
                } => {
                    let (tunnel, _) = self.who(peer);
                    let _ = self.control.call(move |c: &mut Control, now| {
                        let r = match cause {
                            MmEnd::PeerDelete => c
                                .main_mode_delete(icookie, rcookie, MmCause::PeerDelete, now)
                                .map(drop),
                            MmEnd::InitialContact => c
                                .main_mode_delete(icookie, rcookie, MmCause::InitialContact, now)
                                .map(drop),
                            MmEnd::Reauth => c
                                .main_mode_delete(icookie, rcookie, MmCause::Reauth, now)
                                .map(drop),
                            MmEnd::Terminated => c
                                .main_mode_delete(icookie, rcookie, MmCause::Terminated, now)
                                .map(drop),
                            MmEnd::DpdDead => {
                                c.main_mode_lost(icookie, rcookie, tunnel, now).map(drop)
                            }
                            // The control thread ended it (13885 `lifetime` is already out).
                            MmEnd::Lifetime => Ok(()),
                        };
                        if let Err(e) = r {
                            tracing::debug!("ike: main mode {icookie:016x}/{rcookie:016x}: {e}");
                        }
                    });
                }
                Action::InboundUp {
                    peer,
                    inbound,
                    limits,
                } => self.inbound_up(peer, inbound, *limits),
                Action::ChildUp(ch) => self.child_up(*ch),
                Action::ChildDown {
                    peer,
                    inbound,
                    outbound,
                    reason,
                } => self.child_down(peer, inbound, outbound, reason),
                Action::Failed {
                    peer,
                    exchange,
                    code,
                    reason,
                } => {
                    let (tunnel, remote) = self.who(peer);
                    let main = exchange != super::types::Exchange::Quick;
                    let _ = self.control.call(move |c: &mut Control, now| {
                        c.emit(ike_failed(
                            main,
                            code,
                            tunnel,
                            remote,
                            reason,
                            now as f64 / 1e9,
                        ));
                    });
                }
                Action::ReleaseSpi { spi } => {
                    let _ = self
                        .control
                        .call(move |c: &mut Control, _| c.release_spi(spi));
                }
            }
        }
        changed
    }

    fn who(&self, peer: usize) -> (String, IpAddr) {
        self.peers.get(peer).map_or_else(
            || (String::new(), IpAddr::from([0, 0, 0, 0])),
            |p| (p.tunnel.clone(), p.remote),
        )
    }

    fn send(&self, peer: usize, local_port: u16, to: SocketAddr, data: &[u8]) {
        let Some(p) = self.peers.get(peer) else {
            return;
        };
        let Some(s) = self.sockets.get(&SocketAddr::new(p.local, local_port)) else {
            return;
        };
        let r = if local_port == 4500 && data != [0xff] {
            let mut v = Vec::with_capacity(data.len() + 4);
            v.extend_from_slice(&[0, 0, 0, 0]);
            v.extend_from_slice(data);
            s.send_to(&v, to)
        } else {
            s.send_to(data, to)
        };
        if let Err(e) = r {
            tracing::debug!("ike: send to {to}: {e}");
        }
    }

    /// Installs our inbound SA of a quick mode we answer, before our QM2 goes out.
    fn inbound_up(&mut self, peer: usize, k: super::types::ChildKeys, limits: crate::sa::Limits) {
        let Some(p) = self.peers.get(peer) else {
            return;
        };
        let sa = NewSa {
            tunnel: p.tunnel.clone(),
            direction: Direction::Inbound,
            spi: k.spi,
            keymat: k.keymat,
            esn: false,
            backend: None,
            replay_window: None,
            limits,
            state: None,
        };
        let tunnel = p.tunnel.clone();
        if let Ok(Err(e)) = self
            .control
            .call(move |c: &mut Control, now| c.install_sa(&sa, now).map_err(|e| e.to_string()))
        {
            tracing::warn!("ike: {tunnel}: installing the inbound SA: {e}");
        }
    }

    /// Installs a negotiated pair: the new inbound SA first, then the tunnel's outbound swap;
    /// the inbound SA of the child it rekeys retires after the grace period.
    fn child_up(&mut self, ch: NewChild) {
        let Some(p) = self.peers.get(ch.peer) else {
            return;
        };
        let tunnel = p.tunnel.clone();
        let remote = p.remote;
        let (in_spi, out_spi) = (ch.inbound.spi, ch.outbound.spi);
        let rekey = ch.replaces.is_some();
        let sa = |d: Direction, k: super::types::ChildKeys| NewSa {
            tunnel: tunnel.clone(),
            direction: d,
            spi: k.spi,
            keymat: k.keymat,
            esn: false,
            backend: None,
            replay_window: None,
            limits: ch.limits,
            state: None,
        };
        let inbound = sa(Direction::Inbound, ch.inbound);
        let outbound = sa(Direction::Outbound, ch.outbound);
        let retire = ch.replaces.map(|r| r.0);
        let (icookie, rcookie) = (ch.icookie, ch.rcookie);
        let selector = ch.selector;
        let t = tunnel.clone();
        let delay = ch.initiator;
        let r = self.control.call(move |c: &mut Control, now| {
            let has_out = c.outbound_spi(&t).is_some();
            // A responder's inbound SA is in already (`InboundUp` at QM2).
            let inbound = c
                .sa(in_spi, Direction::Inbound, now)
                .is_err()
                .then_some(inbound);
            let r = if has_out && delay {
                // Our QM: the peer installs its inbound SA when our QM3 arrives. Ours goes in
                // now; the outbound swap waits (`Driver::swap_due`).
                inbound
                    .map_or(Ok(0), |i| c.install_sa(&i, now))
                    .map(|_| Some((outbound, retire)))
            } else if has_out {
                let retire = retire.filter(|s| c.sa(*s, Direction::Inbound, now).is_ok());
                c.rekey(
                    Rekey {
                        tunnel: t.clone(),
                        outbound,
                        inbound,
                        retire_inbound: retire,
                        grace_ms: None,
                    },
                    now,
                )
                .map(|_| None)
            } else {
                inbound
                    .map_or(Ok(0), |i| c.install_sa(&i, now))
                    .and_then(|_| c.install_sa(&outbound, now))
                    .map(|_| None)
            };
            if r.is_err() {
                // Nothing of the child stays: a responder's inbound SA (in since QM2, or
                // installed just now) goes, its SPI is free again.
                let _ = c.remove_sa_because(in_spi, Direction::Inbound, "install failed", now);
                c.release_spi(in_spi);
            }
            if r.is_ok() {
                for child in [
                    Child {
                        spi: in_spi,
                        direction: Direction::Inbound,
                    },
                    Child {
                        spi: out_spi,
                        direction: Direction::Outbound,
                    },
                ] {
                    let _ = c.main_mode_add_child(icookie, rcookie, child);
                }
                c.emit(Event::QmUp {
                    tunnel: t,
                    peer: remote,
                    inbound_spi: spi_str(in_spi),
                    outbound_spi: spi_str(out_spi),
                    local_ts: format!("{}", selector.src),
                    remote_ts: format!("{}", selector.dst),
                    rekey,
                    initiator: delay,
                    time: now as f64 / 1e9,
                });
            }
            r.map_err(|e| e.to_string())
        });
        match r {
            Ok(Ok(pending)) => {
                if let Some((outbound, retire)) = pending {
                    self.swaps.push(Swap {
                        at: crate::now_ns() + SWAP_DELAY_NS,
                        inbound: in_spi,
                        tunnel: tunnel.clone(),
                        outbound,
                        retire,
                    });
                }
            }
            Ok(Err(e)) => {
                tracing::warn!("ike: {tunnel}: installing the quick mode's SAs: {e}");
                // The engine forgets the child, tells the peer (ESP DELETE) and reports
                // `qm_failed`; its actions follow in this `apply`.
                let mut env = DriverEnv {
                    control: &self.control,
                };
                self.engine
                    .child_install_failed(&mut env, crate::now_ns(), in_spi, e);
            }
            Err(_) => {}
        }
    }

    fn child_down(
        &mut self,
        _peer: usize,
        inbound: Option<u32>,
        outbound: Option<u32>,
        reason: &'static str,
    ) {
        // A delayed outbound swap of this child must not bring it back.
        self.swaps
            .retain(|s| Some(s.inbound) != inbound && Some(s.outbound.spi) != outbound);
        let _ = self.control.call(move |c: &mut Control, now| {
            if let Some(s) = inbound {
                let _ = c.remove_sa_because(s, Direction::Inbound, reason, now);
            }
            if let Some(s) = outbound {
                let _ = c.remove_sa_because(s, Direction::Outbound, reason, now);
            }
        });
    }
}

fn parse_spi(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}
