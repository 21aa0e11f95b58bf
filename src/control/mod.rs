//! The control thread: SA install/replace/retire, rekeys (make-before-break), timers, IKE
//! main-mode records and 13885, the event stream, and the counters behind the metrics.
//!
//! It is the only writer of the SA table and the SPD. Workers reach it only through a bounded
//! lock-free queue ([`SaEvent`]s; a full queue is counted by the worker, never waited on); the
//! control socket reaches it through a channel. Nothing here blocks a worker.

pub mod api;
pub mod audit;
pub mod error;
pub mod events;
pub mod handle;
pub mod metrics;
pub mod mm;
mod ops;
pub mod reload;
pub mod seqstate;
pub mod socket;
pub mod types;

pub use error::{ControlError, Result};
pub use handle::ControlHandle;
pub use types::{MainMode, MainModeInfo, Rekey, Rekeyed, SaInfo, SaList, Stats};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::config::{Config, NewSa, Tunnel};
use crate::datapath::pipeline::Dataplane;
use crate::datapath::{SaEvent, SaEventKind};
use crate::sa::policy::{Policy, PolicyAction, Spd};
use crate::sa::{Direction, Sa, SaParams, SaState};
use crossbeam_epoch as epoch;
use crossbeam_queue::ArrayQueue;
use events::{Event, MmCause, spi_str};
use mm::MmTable;

/// `in`/`inbound` or `out`/`outbound`.
pub fn dir(s: &str) -> std::result::Result<Direction, String> {
    match s {
        "in" | "inbound" => Ok(Direction::Inbound),
        "out" | "outbound" => Ok(Direction::Outbound),
        o => Err(format!("direction: `{o}` is not in or out")),
    }
}

/// `inbound` or `outbound`.
pub fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

/// Counters shown by `stats` and the metrics endpoint.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ControlCounters {
    pub rekeys: u64,
    pub sas_installed: u64,
    pub sas_removed: u64,
    pub events_by_name: BTreeMap<&'static str, u64>,
    pub events_by_code: BTreeMap<u32, u64>,
    pub subscriber_lag_drops: u64,
    /// Per-tunnel counters of removed SAs, for the metrics endpoint (not serialised).
    #[serde(skip)]
    pub tunnel_totals: Arc<Mutex<types::TunnelTotals>>,
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
    /// The built-in IKE, if configured.
    ike: Option<crate::ike::types::IkeLink>,
    /// Typed event subscribers (the built-in IKE): the same events, not serialised.
    watchers: Vec<std::sync::mpsc::SyncSender<Event>>,
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
    /// The workers' counters, once the daemon attached them (`stats`'s `dataplane`).
    core_stats: Option<Arc<[crate::datapath::CoreStats]>>,
    /// When the control started (ns, control clock): `stats`'s `uptime_s`.
    started_ns: u64,
    /// The same as `counters.tunnel_totals` (see [`types::TunnelTotals`]).
    tunnel_totals: Arc<Mutex<types::TunnelTotals>>,
    /// The config the running state came from (what a reload compares against).
    from_file: reload::FromFile,
    /// The workers' capture rings (`capture` request), when workers run.
    capture: Option<Arc<crate::datapath::capture::Capture>>,
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
            watchers: Vec::new(),
            ike: None,
            counters: Arc::new(Mutex::new(ControlCounters::default())),
            core_stats: None,
            started_ns: crate::now_ns(),
            tunnel_totals: Arc::default(),
            cores: cfg.workers,
            grace_ns: cfg.control.rekey_grace_ms * 1_000_000,
            linger_ns: cfg.control.expired_linger_ms * 1_000_000,
            tunnel_capacity: cfg.control.tunnel_capacity,
            next_scan: 0,
            timers: BinaryHeap::new(),
            unused: BTreeSet::new(),
            unused_cursor: None,
            from_file: reload::FromFile::new(cfg),
            capture: None,
        };
        c.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tunnel_totals = c.tunnel_totals.clone();
        c.sync_tunnel_names();
        for (t, p) in &cfg.sas {
            c.register((p.spi, p.direction), *t);
        }
        c
    }

    /// Gives `stats` the workers' counters (the daemon, once they exist).
    pub fn attach_core_stats(&mut self, stats: Arc<[crate::datapath::CoreStats]>) {
        self.core_stats = Some(stats);
    }

    /// Publishes the tunnels' names to the per-tunnel totals (and forgets the totals of
    /// tunnels that are gone). Call after the tunnel list changes.
    fn sync_tunnel_names(&self) {
        let mut tt = self.tunnel_totals.lock().unwrap_or_else(|e| e.into_inner());
        tt.names = self
            .tunnels
            .iter()
            .map(|t| (t.index, t.name.clone()))
            .collect();
        let types::TunnelTotals { names, removed } = &mut *tt;
        removed.retain(|t, _| names.contains_key(t));
    }

    /// Adds the counters of the registered SA `key` (if any) to its tunnel's totals and runs
    /// `f`, the dataplane change that takes the SA out, under the same lock: the metrics
    /// endpoint sums the live SAs under it too, so it sees the SA either live or banked,
    /// never both or neither, and a tunnel's counters never go backwards. Packets a worker
    /// still counts on the SA after `f` (in flight at its removal) are not added.
    fn bank<R>(&self, key: Option<(u32, Direction)>, f: impl FnOnce() -> R) -> R {
        self.bank_beyond(key, types::SaTotals::default(), f)
    }

    /// [`Control::bank`] of what the SA counted beyond `carried` (the counters a same-key
    /// successor took over and goes on from).
    fn bank_beyond<R>(
        &self,
        key: Option<(u32, Direction)>,
        carried: types::SaTotals,
        f: impl FnOnce() -> R,
    ) -> R {
        let mut tt = self.tunnel_totals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = key
            && let Some(&t) = self.sas.get(&key)
        {
            let g = epoch::pin();
            if let Some(sa) = self.lookup(key, &g) {
                tt.removed.entry(t).or_default()[types::dir_index(key.1)] +=
                    types::SaTotals::of(sa).beyond(carried);
            }
        }
        f()
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
            sa.set_tunnel(t);
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
    fn check_key(&self, sa: &Sa, except: Option<u32>) -> Result<()> {
        match self.keys.get(&sa.key_id) {
            Some(&(direction, spi)) if !(direction == sa.direction && Some(spi) == except) => {
                return Err(ControlError::KeyInUse { direction, spi });
            }
            _ => {}
        }
        match self.retired.get(&sa.key_id) {
            Some(&(direction, _)) if direction != sa.direction => {
                Err(ControlError::KeyOtherDirection { direction })
            }
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
        self.watchers.retain(|s| match s.try_send(ev.clone()) {
            Ok(()) => true,
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                lag += 1;
                true
            }
            Err(_) => false,
        });
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

    /// Streams every event, as its JSON line (the control socket's `subscribe`).
    pub fn subscribe(&mut self, tx: std::sync::mpsc::SyncSender<String>) {
        self.subscribers.push(tx);
    }

    /// Streams every event, typed. A watcher that does not keep up loses events (counted in
    /// `subscriber_lag_drops`), as a socket subscriber does.
    pub fn watch(&mut self, tx: std::sync::mpsc::SyncSender<Event>) {
        self.watchers.push(tx);
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

    /// Binds `sa` to its tunnel and checks it against the tunnels and policies in force.
    fn params(&self, sa: &NewSa) -> Result<(u32, SaParams)> {
        sa.to_params(
            &self.tunnels,
            &self.policies,
            self.defaults.0,
            self.defaults.1,
        )
        .map_err(|(f, r)| {
            if f == "tunnel" {
                ControlError::NoTunnel {
                    field: "tunnel",
                    name: sa.tunnel.clone(),
                }
            } else {
                ControlError::invalid(f, r)
            }
        })
    }

    fn build(&self, spec: &NewSa, now: u64) -> Result<(u32, Sa)> {
        let (t, p) = self.params(spec)?;
        // An imported SA keeps its age: its add-time limits count from its first install.
        let installed = match spec.state.as_ref().and_then(|st| st.age_seconds) {
            Some(age) if age > MAX_AGE_SECONDS => {
                return Err(ControlError::invalid(
                    "state.age_seconds",
                    format!("{age} is out of range (0..={MAX_AGE_SECONDS})"),
                ));
            }
            Some(age) => now.saturating_sub(age * 1_000_000_000),
            None => now,
        };
        let sa = Sa::new(&p, self.cores, installed)?;
        sa.set_tunnel(t);
        if let Some(st) = &spec.state {
            sa.import_state(st).map_err(|e| {
                let (f, r) = e.split_once(": ").unwrap_or(("state", &e));
                ControlError::invalid(f, r)
            })?;
        }
        Ok((t, sa))
    }

    fn install(&mut self, t: u32, sa: Sa) -> Result<()> {
        let key = (sa.spi, sa.direction);
        if self.sas.contains_key(&key) {
            return Err(ControlError::AlreadyInstalled {
                spi: sa.spi,
                direction: sa.direction,
            });
        }
        self.check_key(&sa, None)?;
        self.resume_key(&sa);
        match sa.direction {
            Direction::Inbound => self.dp.sas.install_inbound(sa)?,
            Direction::Outbound => {
                let g = epoch::pin();
                if let Some(cur) = self.dp.sas.outbound(t, &g) {
                    return Err(ControlError::OutboundInUse { spi: cur.spi });
                }
                drop(g);
                self.dp.sas.set_outbound(t, Some(sa))?;
            }
        }
        self.register(key, t);
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sas_installed += 1;
        Ok(())
    }

    fn remove(&mut self, spi: u32, d: Direction) -> Result<()> {
        let t = *self
            .sas
            .get(&(spi, d))
            .ok_or(ControlError::NotInstalled { spi, direction: d })?;
        match d {
            Direction::Inbound => self.bank(Some((spi, d)), || self.dp.sas.remove_inbound(spi))?,
            Direction::Outbound => {
                let g = epoch::pin();
                let current = self.dp.sas.outbound(t, &g).map(|s| s.spi);
                drop(g);
                if current == Some(spi) {
                    self.bank(Some((spi, d)), || self.dp.sas.set_outbound(t, None))?;
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

    fn publish_spd(&self) {
        self.dp
            .set_spd(Spd::new(self.policies.clone(), self.default_policy));
    }
}

/// One installed SA with its key, for `sa_export` (Wireshark's `esp_sa` table). Not `Debug`:
/// it holds the key.
pub struct ExportedSa {
    pub spi: u32,
    pub direction: Direction,
    pub tunnel: Option<String>,
    /// Outer source and destination as the packets carry them (none in transport mode).
    pub src: Option<std::net::IpAddr>,
    pub dst: Option<std::net::IpAddr>,
    pub encap: Option<crate::sa::UdpEncap>,
    pub esn: bool,
    pub key_bits: u16,
    /// Key ‖ salt in hex; wiped when dropped.
    pub key_hex: zeroize::Zeroizing<String>,
}

/// Key export and packet capture (`sa_export`, `capture`).
impl Control {
    /// Gives the control the workers' capture rings (the daemon does, once workers run).
    pub fn attach_capture(&mut self, c: Arc<crate::datapath::capture::Capture>) {
        self.capture = Some(c);
    }

    /// The workers' capture rings, if workers run.
    pub fn capture(&self) -> Option<&Arc<crate::datapath::capture::Capture>> {
        self.capture.as_ref()
    }

    /// Every installed SA with its key, in (SPI, direction) order: the one control call that
    /// returns key material.
    pub fn sa_export(&self) -> Vec<ExportedSa> {
        use std::fmt::Write;
        let g = epoch::pin();
        self.sas
            .iter()
            .filter_map(|(&key, &t)| {
                let sa = self.lookup(key, &g)?;
                // An SA's endpoints are its packets' outer source and destination (an inbound
                // SA's `local` is the peer: see `NewSa::to_params`).
                let (src, dst) = sa
                    .endpoints
                    .map_or((None, None), |e| (Some(e.local), Some(e.remote)));
                let mut key_hex = zeroize::Zeroizing::new(String::with_capacity(72));
                for b in sa.keymat() {
                    let _ = write!(key_hex, "{b:02x}");
                }
                Some(ExportedSa {
                    spi: key.0,
                    direction: key.1,
                    tunnel: self.tunnel_name(t),
                    src,
                    dst,
                    encap: sa.encap,
                    esn: sa.esn,
                    key_bits: sa.key_bits,
                    key_hex,
                })
            })
            .collect()
    }
}
