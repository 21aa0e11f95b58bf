//! The control thread: SA install/replace/retire, rekeys (make-before-break), timers, IKE
//! main-mode records and 13885, the event stream, and the counters behind the metrics.
//!
//! It is the only writer of the SA table and the SPD. Workers reach it only through a bounded
//! lock-free queue ([`SaEvent`]s; a full queue is counted by the worker, never waited on); the
//! control socket reaches it through a channel. Nothing here blocks a worker.

pub mod api;
pub mod events;
pub mod metrics;
pub mod mm;
pub mod seqstate;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crossbeam_epoch as epoch;
use crossbeam_queue::ArrayQueue;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{Config, PolicySpec, SaSpec, SpiValue, Tunnel, TunnelSpec};
use crate::datapath::pipeline::Dataplane;
use crate::datapath::{SaEvent, SaEventKind};
use crate::sa::policy::{Policy, PolicyAction, Spd};
use crate::sa::{Direction, Sa, SaParams, SaState};
use events::{Event, MmCause, spi_str};
use mm::{MmRecord, MmTable};

/// Counters shown by `stats` and the metrics endpoint.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ControlCounters {
    pub rekeys: u64,
    pub sas_installed: u64,
    pub sas_removed: u64,
    pub events_by_name: BTreeMap<&'static str, u64>,
    pub events_by_code: BTreeMap<u32, u64>,
    pub subscriber_lag_drops: u64,
}

/// A control request (one JSON object per line, `"op"` names it). Unknown fields are errors.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[allow(clippy::large_enum_variant)] // parsed once per request, never stored
pub enum Request {
    AllocateSpi {},
    SaAdd {
        sa: SaSpec,
    },
    SaAddBatch {
        sas: Vec<SaSpec>,
    },
    SaUpdate {
        sa: SaSpec,
    },
    SaDelete {
        spi: SpiValue,
        direction: String,
    },
    SaGet {
        spi: SpiValue,
        direction: String,
    },
    SaList {
        direction: Option<String>,
        limit: Option<usize>,
    },
    SaFlush {
        direction: Option<String>,
    },
    TunnelAdd {
        name: String,
        local: String,
        remote: String,
        mode: Option<String>,
        encap: Option<String>,
        mtu: Option<u16>,
    },
    TunnelDelete {
        name: String,
    },
    PolicyAdd {
        src: String,
        dst: String,
        protocol: Option<u8>,
        src_ports: Option<String>,
        dst_ports: Option<String>,
        action: String,
        tunnel: Option<String>,
    },
    /// Several policies appended with one SPD rebuild (all or none).
    PolicyAddBatch {
        policies: Vec<PolicyItem>,
    },
    PolicyDelete {
        index: usize,
    },
    PolicyList {},
    /// Make-before-break: install `inbound` (if given), make `outbound` the tunnel's SA, and
    /// retire `retire_inbound` after the grace period.
    Rekey {
        tunnel: String,
        outbound: SaSpec,
        inbound: Option<SaSpec>,
        retire_inbound: Option<SpiValue>,
        #[serde(default, deserialize_with = "crate::config::deserialize_grace_ms")]
        grace_ms: Option<u64>,
    },
    MmAdd {
        icookie: String,
        rcookie: String,
        peer: String,
        lifetime_s: u64,
        lifetime_kb: Option<u64>,
        #[serde(default)]
        children: Vec<mm::ChildSpec>,
    },
    MmDelete {
        icookie: String,
        rcookie: String,
    },
    MmList {},
    Stats {},
    Subscribe {},
}

/// One policy of `policy_add_batch` (the fields of `policy_add`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyItem {
    src: String,
    dst: String,
    protocol: Option<u8>,
    src_ports: Option<String>,
    dst_ports: Option<String>,
    action: String,
    tunnel: Option<String>,
}

impl PolicyItem {
    fn build(&self, tunnels: &[Tunnel]) -> Result<Policy, String> {
        PolicySpec {
            src: &self.src,
            dst: &self.dst,
            protocol: self.protocol,
            src_ports: self.src_ports.as_deref(),
            dst_ports: self.dst_ports.as_deref(),
            action: &self.action,
            tunnel: self.tunnel.as_deref(),
        }
        .build(tunnels)
        .map_err(|(f, r)| format!("{f}: {r}"))
    }
}

fn dir(s: &str) -> Result<Direction, String> {
    match s {
        "in" | "inbound" => Ok(Direction::Inbound),
        "out" | "outbound" => Ok(Direction::Outbound),
        o => Err(format!("direction: `{o}` is not in or out")),
    }
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

fn cookie(field: &str, s: &str) -> Result<u64, String> {
    let t = s.trim_start_matches("0x");
    if t.is_empty() || t.len() > 16 {
        return Err(format!(
            "{field}: expected 1 to 16 hex digits (8 bytes), got {}",
            t.len()
        ));
    }
    u64::from_str_radix(t, 16).map_err(|_| format!("{field}: `{s}` is not hexadecimal"))
}

/// What `handle` tells the socket layer.
pub enum Reply {
    /// One JSON line.
    Line(String),
    /// Start streaming events to this connection.
    Subscribe,
}

pub struct Control {
    dp: Arc<Dataplane>,
    defaults: (crate::esp::aead::Backend, u32),
    tunnels: Vec<Tunnel>,
    policies: Vec<Policy>,
    default_policy: PolicyAction,
    /// Installed SAs: (spi, direction) → tunnel index.
    sas: BTreeMap<(u32, Direction), u32>,
    /// Keys in use: (key fingerprint, direction) → SPI. RFC 4106 §3.1: one key on two SAs of
    /// one direction would repeat nonces, so a second install is refused.
    keys: HashMap<[u8; 16], (Direction, u32)>,
    /// The key of each registered SA and a handle on its sequence counter or replay window.
    key_of: HashMap<(u32, Direction), ([u8; 16], KeyUse)>,
    /// Keys whose SAs are gone: direction and the last sequence number used or accepted. A
    /// key that comes back continues after it (oldest forgotten beyond `RETIRED_KEYS`).
    retired: HashMap<[u8; 16], (Direction, u64)>,
    retired_order: VecDeque<[u8; 16]>,
    /// Old inbound SAs to remove at the given time (after a rekey).
    retiring: Vec<(u64, u32)>,
    /// Hard-expired SAs to remove at the given time.
    lingering: Vec<(u64, u32, Direction)>,
    mm: MmTable,
    subscribers: Vec<std::sync::mpsc::SyncSender<String>>,
    pub counters: Arc<Mutex<ControlCounters>>,
    cores: usize,
    grace_ns: u64,
    linger_ns: u64,
    tunnel_capacity: u32,
    next_scan: u64,
    /// Time-limit deadlines of registered SAs, earliest first (soft and hard; stale entries of
    /// removed SAs are skipped when they come up and swept when they pile up).
    timers: BinaryHeap<Reverse<(u64, u32, Direction)>>,
    /// Registered SAs with limits counted from first use whose first use has not been seen:
    /// visited a slice at a time until their deadlines are known.
    unused: BTreeSet<(u32, Direction)>,
    unused_cursor: Option<(u32, Direction)>,
}

/// Keys of removed SAs that carried traffic, remembered (about 50 bytes each, 3.3 MB at most):
/// a key that comes back within the last 2^16 such removals continues its sequence numbers
/// and replay window.
const RETIRED_KEYS: usize = 1 << 16;

/// What a key is used for (see `Control::key_of`).
enum KeyUse {
    Out(Arc<crossbeam_utils::CachePadded<crate::sa::SeqCounter>>),
    In(Arc<crate::esp::replay::ReplayWindow>),
}

/// Largest `state.age_seconds` accepted (100 years; keeps the arithmetic in range).
const MAX_AGE_SECONDS: u64 = 100 * 365 * 86_400;

/// Use-time SAs visited per timer pass (every 100 ms): 10^5 of them take half a second a round.
const UNUSED_PER_PASS: usize = 20_000;

impl Control {
    /// Takes over the dataplane built from `cfg` (its static SAs become registered SAs).
    pub fn new(cfg: &Config, dp: Arc<Dataplane>) -> Control {
        let mut c = Control {
            dp,
            defaults: (cfg.backend, cfg.replay_window),
            tunnels: cfg.tunnels.clone(),
            policies: cfg.policies.clone(),
            default_policy: cfg.default_policy,
            sas: BTreeMap::new(),
            keys: HashMap::new(),
            key_of: HashMap::new(),
            retired: HashMap::new(),
            retired_order: VecDeque::new(),
            retiring: Vec::new(),
            lingering: Vec::new(),
            mm: MmTable::default(),
            subscribers: Vec::new(),
            counters: Arc::new(Mutex::new(ControlCounters::default())),
            cores: cfg.workers,
            grace_ns: cfg.control.rekey_grace_ms * 1_000_000,
            linger_ns: cfg.control.expired_linger_ms * 1_000_000,
            tunnel_capacity: cfg.control.tunnel_capacity,
            next_scan: 0,
            timers: BinaryHeap::new(),
            unused: BTreeSet::new(),
            unused_cursor: None,
        };
        for (t, p) in &cfg.sas {
            c.register((p.spi, p.direction), *t);
        }
        c
    }

    /// The registered SA `key`, if it is still installed.
    fn lookup<'g>(&self, key: (u32, Direction), g: &'g epoch::Guard) -> Option<&'g Sa> {
        let (spi, d) = key;
        match d {
            Direction::Inbound => self.dp.sas.inbound(spi, g),
            Direction::Outbound => {
                let t = *self.sas.get(&key)?;
                self.dp.sas.outbound(t, g).filter(|s| s.spi == spi)
            }
        }
    }

    /// Puts the soft and hard deadlines of `key` (those that exist) on the timer heap.
    fn schedule(&mut self, key: (u32, Direction), (soft, hard): (u64, u64)) {
        for t in [soft, hard] {
            if t != u64::MAX {
                self.timers.push(Reverse((t, key.0, key.1)));
            }
        }
    }

    /// Records the installed SA `key` (of tunnel `t`) and schedules its time limits: every SA
    /// the control thread installs goes through here.
    fn register(&mut self, key: (u32, Direction), t: u32) {
        self.sas.insert(key, t);
        let g = epoch::pin();
        if let Some(sa) = self.lookup(key, &g) {
            let used = match &sa.replay {
                Some(w) => KeyUse::In(w.clone()),
                None => KeyUse::Out(sa.seq_handle()),
            };
            self.keys.insert(sa.key_id, (key.1, key.0));
            self.key_of.insert(key, (sa.key_id, used));
        }
        drop(g);
        self.arm(key);
    }

    /// Drops the record of SA `key` (already out of the dataplane) and frees its key.
    fn forget(&mut self, key: (u32, Direction)) {
        self.sas.remove(&key);
        let Some((id, used)) = self.key_of.remove(&key) else {
            return;
        };
        if self.keys.get(&id) == Some(&(key.1, key.0)) {
            self.keys.remove(&id);
        }
        let last = match used {
            KeyUse::Out(c) => c.last(),
            KeyUse::In(w) => w.top(),
        };
        if last == 0 {
            // Never used: no sequence number to continue, no packet to refuse again.
            return;
        }
        match self.retired.get_mut(&id) {
            Some(r) => r.1 = r.1.max(last),
            None => {
                self.retired.insert(id, (key.1, last));
                self.retired_order.push_back(id);
                if self.retired_order.len() > RETIRED_KEYS
                    && let Some(old) = self.retired_order.pop_front()
                {
                    self.retired.remove(&old);
                }
            }
        }
    }

    /// A key that was used before (by an SA now gone) continues where it stopped: outbound
    /// after its last sequence number, inbound refusing every number up to the last one
    /// accepted (RFC 4106 §3.1, RFC 4303 §3.4.3). Call before `sa` is published.
    fn resume_key(&self, sa: &Sa) {
        if let Some(&(d, last)) = self.retired.get(&sa.key_id)
            && d == sa.direction
            && last > 0
        {
            let st = match d {
                Direction::Outbound => SaState {
                    seq: Some(last),
                    ..SaState::default()
                },
                Direction::Inbound => SaState {
                    replay_top: Some(last),
                    ..SaState::default()
                },
            };
            let _ = sa.import_state(&st);
        }
    }

    /// Refuses `sa` if its key is in use by another SA (not `except`) of its direction.
    fn check_key(&self, sa: &Sa, except: Option<u32>) -> Result<(), String> {
        match self.keys.get(&sa.key_id) {
            Some(&(d, spi)) if !(d == sa.direction && Some(spi) == except) => {
                return Err(format!(
                    "key: already in use by {} SA {} (RFC 4106: one key on two SAs repeats GCM nonces); every SA needs its own key",
                    dir_name(d),
                    spi_str(spi)
                ));
            }
            _ => {}
        }
        match self.retired.get(&sa.key_id) {
            Some(&(d, _)) if d != sa.direction => Err(format!(
                "key: was used by an {} SA before; a key serves one direction only (a peer could reflect packets back)",
                dir_name(d)
            )),
            _ => Ok(()),
        }
    }

    /// Schedules the time limits of the just-registered SA `key`.
    fn arm(&mut self, key: (u32, Direction)) {
        let g = epoch::pin();
        let Some(sa) = self.lookup(key, &g) else {
            return;
        };
        let deadlines = sa.lifetime.deadlines();
        let by_use = sa.lifetime.by_use();
        drop(g);
        self.schedule(key, deadlines);
        if by_use {
            self.unused.insert(key);
        }
        // Entries of removed SAs are dropped lazily; sweep them when they outnumber the live.
        if self.timers.len() > 4 * self.sas.len() + 1024 {
            let sas = &self.sas;
            self.timers
                .retain(|Reverse((_, spi, d))| sas.contains_key(&(*spi, *d)));
        }
    }

    pub fn dataplane(&self) -> &Arc<Dataplane> {
        &self.dp
    }

    fn time(now: u64) -> f64 {
        now as f64 / 1e9
    }

    /// Sends an event to subscribers, the log and the counters.
    pub fn emit(&mut self, ev: Event) {
        {
            let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            *c.events_by_name.entry(ev.name()).or_insert(0) += 1;
            if let Some(code) = ev.code() {
                *c.events_by_code.entry(code.code).or_insert(0) += 1;
            }
        }
        let line = serde_json::to_string(&ev).unwrap_or_default();
        match ev.code() {
            Some(c) => tracing::warn!(code = c.code, symbol = c.symbol, "{line}"),
            None => tracing::info!("{line}"),
        }
        let mut lag = 0;
        // A subscriber that does not keep up loses events (counted) rather than slowing us.
        self.subscribers.retain(|s| match s.try_send(line.clone()) {
            Ok(()) => true,
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                lag += 1;
                true
            }
            Err(_) => false,
        });
        if lag > 0 {
            self.counters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .subscriber_lag_drops += lag;
        }
    }

    pub fn subscribe(&mut self, tx: std::sync::mpsc::SyncSender<String>) {
        self.subscribers.push(tx);
    }

    /// Installed SAs, of one direction or all.
    fn keys(&self, d: Option<Direction>) -> Vec<(u32, Direction)> {
        self.sas
            .keys()
            .filter(|(_, x)| d.is_none_or(|d| d == *x))
            .copied()
            .collect()
    }

    /// Visits the next slice of SAs with use-time limits not yet seen used: those used since
    /// get their deadlines scheduled (and are checked now), those gone are forgotten.
    fn visit_unused(&mut self, due: &mut Vec<(u32, Direction)>) {
        use std::ops::Bound::{Excluded, Unbounded};
        let start = self.unused_cursor.map_or(Unbounded, Excluded);
        let slice: Vec<(u32, Direction)> = self
            .unused
            .range((start, Unbounded))
            .take(UNUSED_PER_PASS)
            .copied()
            .collect();
        self.unused_cursor = if slice.len() < UNUSED_PER_PASS {
            None
        } else {
            slice.last().copied()
        };
        let g = epoch::pin();
        for key in slice {
            let Some(sa) = self.lookup(key, &g) else {
                self.unused.remove(&key);
                continue;
            };
            if let Some(deadlines) = sa.lifetime.use_deadlines() {
                self.unused.remove(&key);
                self.schedule(key, deadlines);
                due.push(key);
            }
        }
    }

    fn tunnel_name(&self, t: u32) -> Option<String> {
        self.tunnels
            .iter()
            .find(|x| x.index == t)
            .map(|x| x.name.clone())
    }

    /// Timers and worker notifications. Call every few tens of milliseconds.
    pub fn tick(&mut self, now: u64, worker_events: &ArrayQueue<SaEvent>) {
        while let Some(e) = worker_events.pop() {
            self.sa_event(e.spi, e.direction, e.kind, now);
        }
        // Idle SAs: time limits fire here even without traffic (at most every 100 ms: the
        // limits have second granularity). Due deadlines come off a heap, so a pass costs
        // nothing for SAs whose time has not come; SAs with use-time limits are visited a
        // slice per pass until their first use fixes their deadlines.
        let mut fired = Vec::new();
        if now >= self.next_scan {
            self.next_scan = now + 100_000_000;
            let mut due = Vec::new();
            while let Some(&Reverse((t, spi, d))) = self.timers.peek() {
                if t > now {
                    break;
                }
                self.timers.pop();
                due.push((spi, d));
            }
            self.visit_unused(&mut due);
            // A worker found the queue full: some notification fired but never reached us.
            // Only then, look at every SA for fired-but-unannounced ones (at most once a pass).
            if self.dp.take_lost_events() {
                self.find_unannounced(&mut fired);
            }
            due.sort_unstable();
            due.dedup();
            let g = epoch::pin();
            for key in due {
                let Some(sa) = self.lookup(key, &g) else {
                    continue;
                };
                let (soft, hard) = sa.lifetime.tick(now);
                if soft {
                    fired.push((key.0, key.1, SaEventKind::Soft));
                }
                if hard {
                    fired.push((key.0, key.1, SaEventKind::Hard));
                }
            }
        }
        for (spi, d, k) in fired {
            self.sa_event(spi, d, k, now);
        }
        // Main modes whose lifetime ended: 13885; their children keep forwarding.
        let mut mm = std::mem::take(&mut self.mm);
        let ended = mm.expire(now, |c| {
            let g = epoch::pin();
            self.lookup((c.spi, c.direction), &g)
                .map_or(0, |s| s.totals().1)
        });
        self.mm = mm;
        for r in ended {
            self.emit(Event::mm_expired(
                MmCause::Lifetime,
                r.peer,
                r.icookie,
                r.rcookie,
                &r.children,
                Self::time(now),
            ));
        }
        // Make-before-break: old inbound SAs go once their grace period is over.
        let due: Vec<u32> = self
            .retiring
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, s)| *s)
            .collect();
        self.retiring.retain(|(t, _)| *t > now);
        for spi in due {
            if self.remove(spi, Direction::Inbound).is_ok() {
                self.emit(Event::SaRemoved {
                    spi: spi_str(spi),
                    direction: "inbound",
                    reason: "retired after rekey",
                    time: Self::time(now),
                });
            }
        }
        let due: Vec<(u32, Direction)> = self
            .lingering
            .iter()
            .filter(|(t, _, _)| *t <= now)
            .map(|(_, s, d)| (*s, *d))
            .collect();
        self.lingering.retain(|(t, _, _)| *t > now);
        for (spi, d) in due {
            if self.remove(spi, d).is_ok() {
                self.emit(Event::SaRemoved {
                    spi: spi_str(spi),
                    direction: dir_name(d),
                    reason: "hard lifetime expired",
                    time: Self::time(now),
                });
            }
        }
    }

    /// Notifications that fired on an installed SA without being announced (the worker's push
    /// failed). Visits every SA: `tick` calls it only after a worker reported a lost event.
    fn find_unannounced(&self, fired: &mut Vec<(u32, Direction, SaEventKind)>) {
        let g = epoch::pin();
        for &key in self.sas.keys() {
            let Some(sa) = self.lookup(key, &g) else {
                continue;
            };
            let (soft, hard) = sa.lifetime.unannounced();
            if soft {
                fired.push((key.0, key.1, SaEventKind::Soft));
            }
            if hard {
                fired.push((key.0, key.1, SaEventKind::Hard));
            }
        }
    }

    fn sa_event(&mut self, spi: u32, d: Direction, kind: SaEventKind, now: u64) {
        {
            // Announced once, whether it came through the queue, was found by
            // `find_unannounced`, or both.
            let g = epoch::pin();
            if let Some(sa) = self.lookup((spi, d), &g)
                && !sa.lifetime.announce(kind == SaEventKind::Hard)
            {
                return;
            }
        }
        let tunnel = self.sas.get(&(spi, d)).and_then(|t| self.tunnel_name(*t));
        match kind {
            SaEventKind::Soft => self.emit(Event::SaSoftExpired {
                spi: spi_str(spi),
                direction: dir_name(d),
                tunnel,
                action: "rekey",
                time: Self::time(now),
            }),
            SaEventKind::Hard => {
                self.emit(Event::sa_hard(spi, dir_name(d), tunnel, Self::time(now)));
                self.lingering.push((now + self.linger_ns, spi, d));
            }
        }
    }

    /// Validates `spec` against the tunnels and policies in force (errors name the field).
    fn params(&self, spec: &SaSpec) -> Result<(u32, SaParams), String> {
        spec.to_params(
            &self.tunnels,
            &self.policies,
            self.defaults.0,
            self.defaults.1,
        )
        .map_err(|(f, r)| format!("{f}: {r}"))
    }

    fn build(&self, spec: &SaSpec, now: u64) -> Result<(u32, Sa), String> {
        let (t, p) = self.params(spec)?;
        // An imported SA keeps its age: its add-time limits count from its first install.
        let installed = match spec.state.as_ref().and_then(|st| st.age_seconds) {
            Some(age) if age > MAX_AGE_SECONDS => {
                return Err(format!(
                    "state.age_seconds: {age} is out of range (0..={MAX_AGE_SECONDS})"
                ));
            }
            Some(age) => now.saturating_sub(age * 1_000_000_000),
            None => now,
        };
        let sa = Sa::new(&p, self.cores, installed).map_err(|e| e.to_string())?;
        if let Some(st) = &spec.state {
            sa.import_state(st)?;
        }
        Ok((t, sa))
    }

    fn install(&mut self, t: u32, sa: Sa) -> Result<(), String> {
        let key = (sa.spi, sa.direction);
        if self.sas.contains_key(&key) {
            return Err(format!(
                "spi: {} ({}) is already installed",
                spi_str(sa.spi),
                dir_name(sa.direction)
            ));
        }
        self.check_key(&sa, None)?;
        self.resume_key(&sa);
        match sa.direction {
            Direction::Inbound => self.dp.sas.install_inbound(sa).map_err(|e| e.to_string())?,
            Direction::Outbound => {
                let g = epoch::pin();
                if let Some(cur) = self.dp.sas.outbound(t, &g) {
                    return Err(format!(
                        "tunnel: already has outbound SA {}; use rekey",
                        spi_str(cur.spi)
                    ));
                }
                drop(g);
                self.dp
                    .sas
                    .set_outbound(t, Some(sa))
                    .map_err(|e| e.to_string())?;
            }
        }
        self.register(key, t);
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sas_installed += 1;
        Ok(())
    }

    fn remove(&mut self, spi: u32, d: Direction) -> Result<(), String> {
        let t = *self
            .sas
            .get(&(spi, d))
            .ok_or_else(|| not_installed(spi, d))?;
        match d {
            Direction::Inbound => self.dp.sas.remove_inbound(spi).map_err(|e| e.to_string())?,
            Direction::Outbound => {
                let g = epoch::pin();
                let current = self.dp.sas.outbound(t, &g).map(|s| s.spi);
                drop(g);
                if current == Some(spi) {
                    self.dp
                        .sas
                        .set_outbound(t, None)
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        self.forget((spi, d));
        self.retiring
            .retain(|(_, s)| !(d == Direction::Inbound && *s == spi));
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sas_removed += 1;
        Ok(())
    }

    fn sa_json(&self, spi: u32, d: Direction, now: u64, with_state: bool) -> Option<Value> {
        let t = *self.sas.get(&(spi, d))?;
        let g = epoch::pin();
        let sa = match d {
            Direction::Inbound => self.dp.sas.inbound(spi, &g)?,
            Direction::Outbound => self.dp.sas.outbound(t, &g).filter(|s| s.spi == spi)?,
        };
        let (packets, bytes) = sa.totals();
        Some(json!({
            "spi": spi_str(spi),
            "direction": dir_name(d),
            "tunnel": self.tunnel_name(t),
            "mode": format!("{:?}", sa.mode).to_lowercase(),
            "cipher": format!("aes-gcm-{}", sa.key_bits),
            "backend": sa.backend.to_string(),
            "esn": sa.esn,
            "packets": packets,
            "bytes": bytes,
            "last_seq": if d == Direction::Outbound { Some(sa.last_seq()) } else { sa.replay.as_ref().map(|r| r.top()) },
            "lifetime": sa.lifetime.limits(),
            "consumed": sa.lifetime.consumed(packets, bytes, now),
            "expired": sa.lifetime.is_expired(),
            "age_s": now.saturating_sub(sa.lifetime.installed_ns()) as f64 / 1e9,
            "state": with_state.then(|| sa.state(now)),
        }))
    }

    fn publish_spd(&self) {
        self.dp
            .set_spd(Spd::new(self.policies.clone(), self.default_policy));
    }

    /// Handles one request line; never panics on input.
    pub fn handle(&mut self, line: &str, now: u64) -> Reply {
        let req: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => return Reply::Line(err(format!("request: {e}"))),
        };
        if let Request::Subscribe {} = req {
            return Reply::Subscribe;
        }
        Reply::Line(match self.dispatch(req, now) {
            Ok(v) => {
                let mut v = v;
                if let Value::Object(m) = &mut v {
                    m.insert("ok".into(), Value::Bool(true));
                }
                v.to_string()
            }
            Err(e) => err(e),
        })
    }

    fn dispatch(&mut self, req: Request, now: u64) -> Result<Value, String> {
        match req {
            Request::AllocateSpi {} => {
                let spi = self.dp.sas.allocate_spi().map_err(|e| e.to_string())?;
                Ok(json!({ "spi": spi_str(spi) }))
            }
            Request::SaAdd { sa } => {
                let (t, s) = self.build(&sa, now)?;
                let spi = s.spi;
                self.install(t, s)?;
                Ok(json!({ "spi": spi_str(spi) }))
            }
            Request::SaAddBatch { sas } => {
                let mut added = 0usize;
                for (i, spec) in sas.iter().enumerate() {
                    let r = self.build(spec, now).and_then(|(t, s)| self.install(t, s));
                    if let Err(e) = r {
                        return Err(format!("sas[{i}].{e} ({added} installed before it)"));
                    }
                    added += 1;
                }
                Ok(json!({ "installed": added }))
            }
            Request::SaUpdate { sa } => {
                let (t, p) = self.params(&sa)?;
                let key = (p.spi, p.direction);
                if sa.state.is_some() {
                    return Err("state: an update continues the installed SA's state; to import state, delete the SA and add it with `state`".into());
                }
                let Some(&old_t) = self.sas.get(&key) else {
                    return Err(not_installed(p.spi, p.direction));
                };
                if old_t != t {
                    return Err(format!(
                        "tunnel: {} belongs to tunnel `{}`; an update cannot move it",
                        spi_str(p.spi),
                        self.tunnel_name(old_t).unwrap_or_default()
                    ));
                }
                // RFC 4106 §3.1 / RFC 4303 §3.4.3: with the same key the new SA continues the
                // old one's sequence counter, replay window and consumed lifetime.
                let g = epoch::pin();
                let prev = self
                    .lookup(key, &g)
                    .ok_or_else(|| not_installed(key.0, key.1))?;
                let s = Sa::successor(&p, self.cores, now, prev).map_err(|e| e.to_string())?;
                drop(g);
                self.check_key(&s, Some(key.0))?;
                self.resume_key(&s);
                // An SA waiting for removal after a hard expiry lives on under its new limits.
                self.lingering.retain(|&(_, spi, d)| (spi, d) != key);
                match s.direction {
                    Direction::Inbound => {
                        self.dp.sas.replace_inbound(s).map_err(|e| e.to_string())?;
                    }
                    Direction::Outbound => {
                        self.dp
                            .sas
                            .set_outbound(t, Some(s))
                            .map_err(|e| e.to_string())?;
                    }
                }
                self.forget(key);
                self.register(key, t);
                Ok(json!({ "spi": spi_str(key.0) }))
            }
            Request::SaDelete { spi, direction } => {
                let (spi, d) = (
                    spi.get().map_err(|e| format!("spi: {e}"))?,
                    dir(&direction)?,
                );
                self.remove(spi, d)?;
                self.emit(Event::SaRemoved {
                    spi: spi_str(spi),
                    direction: dir_name(d),
                    reason: "deleted",
                    time: Self::time(now),
                });
                Ok(json!({}))
            }
            Request::SaGet { spi, direction } => {
                let (spi, d) = (
                    spi.get().map_err(|e| format!("spi: {e}"))?,
                    dir(&direction)?,
                );
                self.sa_json(spi, d, now, true)
                    .ok_or_else(|| not_installed(spi, d))
            }
            Request::SaList { direction, limit } => {
                let d = direction.as_deref().map(dir).transpose()?;
                let keys = self.keys(d);
                let total = keys.len();
                let list: Vec<Value> = keys
                    .into_iter()
                    .take(limit.unwrap_or(1000))
                    .filter_map(|(s, d)| self.sa_json(s, d, now, false))
                    .collect();
                Ok(json!({ "total": total, "sas": list }))
            }
            Request::SaFlush { direction } => {
                let d = direction.as_deref().map(dir).transpose()?;
                let keys = self.keys(d);
                let mut n = 0;
                for (s, d) in keys {
                    if self.remove(s, d).is_ok() {
                        n += 1;
                    }
                }
                Ok(json!({ "removed": n }))
            }
            Request::TunnelAdd {
                name,
                local,
                remote,
                mode,
                encap,
                mtu,
            } => {
                if self.tunnels.iter().any(|t| t.name == name) {
                    return Err(format!("name: tunnel `{name}` exists"));
                }
                let used: Vec<u32> = self.tunnels.iter().map(|t| t.index).collect();
                let index = (0..self.tunnel_capacity)
                    .find(|i| !used.contains(i))
                    .ok_or_else(|| {
                        format!(
                            "name: no tunnel slot left (capacity {})",
                            self.tunnel_capacity
                        )
                    })?;
                let spec = TunnelSpec {
                    name: &name,
                    local: &local,
                    remote: &remote,
                    mode: mode.as_deref(),
                    encap: encap.as_deref(),
                    udp_src_port: None,
                    udp_dst_port: None,
                    mtu: mtu.map(u32::from),
                };
                self.tunnels
                    .push(spec.build(index).map_err(|(f, r)| format!("{f}: {r}"))?);
                Ok(json!({ "index": index }))
            }
            Request::TunnelDelete { name } => {
                let t = self
                    .tunnels
                    .iter()
                    .find(|t| t.name == name)
                    .map(|t| t.index)
                    .ok_or_else(|| format!("name: no tunnel named `{name}`"))?;
                let keys: Vec<(u32, Direction)> = self
                    .sas
                    .iter()
                    .filter(|(_, ti)| **ti == t)
                    .map(|(k, _)| *k)
                    .collect();
                for (s, d) in keys {
                    let _ = self.remove(s, d);
                }
                self.policies
                    .retain(|p| p.action != PolicyAction::Protect(t));
                self.tunnels.retain(|x| x.index != t);
                self.publish_spd();
                Ok(json!({}))
            }
            Request::PolicyAdd {
                src,
                dst,
                protocol,
                src_ports,
                dst_ports,
                action,
                tunnel,
            } => {
                let item = PolicyItem {
                    src,
                    dst,
                    protocol,
                    src_ports,
                    dst_ports,
                    action,
                    tunnel,
                };
                self.policies.push(item.build(&self.tunnels)?);
                self.publish_spd();
                Ok(json!({ "index": self.policies.len() - 1 }))
            }
            Request::PolicyAddBatch { policies } => {
                let built = policies
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        p.build(&self.tunnels)
                            .map_err(|e| format!("policies[{i}].{e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let first = self.policies.len();
                self.policies.extend(built);
                self.publish_spd();
                Ok(json!({ "first_index": first, "added": self.policies.len() - first }))
            }
            Request::PolicyDelete { index } => {
                if index >= self.policies.len() {
                    return Err(format!(
                        "index: {index} is out of range ({} policies)",
                        self.policies.len()
                    ));
                }
                self.policies.remove(index);
                self.publish_spd();
                Ok(json!({}))
            }
            Request::PolicyList {} => {
                let list: Vec<Value> = self
                    .policies
                    .iter()
                    .map(|p| json!({ "src": p.selector.src.to_string(), "dst": p.selector.dst.to_string(), "protocol": p.selector.protocol, "action": format!("{:?}", p.action) }))
                    .collect();
                Ok(json!({ "policies": list }))
            }
            Request::Rekey {
                tunnel,
                outbound,
                inbound,
                retire_inbound,
                grace_ms,
            } => {
                let t = self
                    .tunnels
                    .iter()
                    .find(|x| x.name == tunnel)
                    .map(|x| x.index)
                    .ok_or_else(|| format!("tunnel: no tunnel named `{tunnel}`"))?;
                if outbound.tunnel != tunnel || dir(&outbound.direction)? != Direction::Outbound {
                    return Err("outbound: must be an outbound SA of the same tunnel".into());
                }
                let retire = retire_inbound
                    .map(|s| s.get())
                    .transpose()
                    .map_err(|e| format!("retire_inbound: {e}"))?;
                if let Some(r) = retire
                    && !self.sas.contains_key(&(r, Direction::Inbound))
                {
                    return Err(format!("retire_inbound: {} is not installed", spi_str(r)));
                }
                // Everything is validated and built before anything changes.
                let new_in = inbound
                    .as_ref()
                    .map(|s| self.build(s, now))
                    .transpose()
                    .map_err(|e| format!("inbound.{e}"))?;
                let (_, new_out) = self
                    .build(&outbound, now)
                    .map_err(|e| format!("outbound.{e}"))?;
                if self.sas.contains_key(&(new_out.spi, Direction::Outbound)) {
                    return Err(format!(
                        "outbound.spi: {} is already installed",
                        spi_str(new_out.spi)
                    ));
                }
                self.check_key(&new_out, None)
                    .map_err(|e| format!("outbound.{e}"))?;
                self.resume_key(&new_out);
                // 1. The new inbound SA first: the peer may switch to it at any moment.
                if let Some((ti, s)) = new_in {
                    self.install(ti, s).map_err(|e| format!("inbound.{e}"))?;
                }
                // 2. Swap the outbound pointer: the next packet uses the new SA.
                let new_spi = new_out.spi;
                let old = self
                    .dp
                    .sas
                    .set_outbound(t, Some(new_out))
                    .map_err(|e| e.to_string())?;
                if let Some(o) = old {
                    self.forget((o, Direction::Outbound));
                }
                self.register((new_spi, Direction::Outbound), t);
                // 3. The old inbound SA keeps accepting packets in flight for the grace period.
                if let Some(r) = retire {
                    self.retiring
                        .push((now + grace_ms.map_or(self.grace_ns, |g| g * 1_000_000), r));
                }
                self.counters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .rekeys += 1;
                self.emit(Event::Rekeyed {
                    tunnel,
                    old_spi: old.map(spi_str),
                    new_spi: spi_str(new_spi),
                    retire_inbound: retire.map(spi_str),
                    time: Self::time(now),
                });
                Ok(json!({ "old_spi": old.map(spi_str), "new_spi": spi_str(new_spi) }))
            }
            Request::MmAdd {
                icookie,
                rcookie,
                peer,
                lifetime_s,
                lifetime_kb,
                children,
            } => {
                let i = cookie("icookie", &icookie)?;
                let r = cookie("rcookie", &rcookie)?;
                let peer: IpAddr = peer
                    .parse()
                    .map_err(|_| format!("peer: `{peer}` is not an IP address"))?;
                if lifetime_s == 0 {
                    return Err("lifetime_s: must be greater than 0".into());
                }
                let children = children
                    .into_iter()
                    .enumerate()
                    .map(|(n, c)| c.get().map_err(|e| format!("children[{n}]: {e}")))
                    .collect::<Result<Vec<_>, _>>()?;
                self.mm.add(MmRecord {
                    icookie: i,
                    rcookie: r,
                    peer,
                    lifetime_s,
                    lifetime_kb,
                    children,
                    created_ns: now,
                })?;
                Ok(json!({}))
            }
            Request::MmDelete { icookie, rcookie } => {
                let i = cookie("icookie", &icookie)?;
                let r = cookie("rcookie", &rcookie)?;
                let rec = self
                    .mm
                    .remove(i, r)
                    .ok_or_else(|| format!("icookie/rcookie: no main mode {i:016x}/{r:016x}"))?;
                self.emit(Event::mm_expired(
                    MmCause::PeerDelete,
                    rec.peer,
                    rec.icookie,
                    rec.rcookie,
                    &rec.children,
                    Self::time(now),
                ));
                Ok(json!({}))
            }
            Request::MmList {} => {
                let list: Vec<Value> = self
                    .mm
                    .list()
                    .iter()
                    .map(|r| {
                        json!({
                            "icookie": format!("{:016x}", r.icookie), "rcookie": format!("{:016x}", r.rcookie), "peer": r.peer,
                            "lifetime_s": r.lifetime_s, "lifetime_kb": r.lifetime_kb,
                            "expires_in_s": r.expires_ns().saturating_sub(now) as f64 / 1e9,
                            "children": r.children,
                        })
                    })
                    .collect();
                Ok(json!({ "main_modes": list }))
            }
            Request::Stats {} => {
                let c = self
                    .counters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                Ok(
                    json!({ "sas": self.sas.len(), "tunnels": self.tunnels.len(), "policies": self.policies.len(), "main_modes": self.mm.list().len(), "control": c }),
                )
            }
            Request::Subscribe {} => Ok(json!({})),
        }
    }
}

fn not_installed(spi: u32, d: Direction) -> String {
    format!("spi: {} ({}) is not installed", spi_str(spi), dir_name(d))
}

fn err(e: String) -> String {
    json!({ "ok": false, "error": e }).to_string()
}
