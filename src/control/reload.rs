//! Reload without loss (SIGHUP, the `load` request, `espd ctl load [FILE]`): read the config
//! file again, compute its difference against the config that is running ([`diff`], pure),
//! check everything, then apply it through the control API's make-before-break paths.
//!
//! What a reload touches is what came from the file: the control thread keeps the config it
//! last applied ([`FromFile`]). Tunnels, policies and SAs added over the control socket (or by
//! the built-in IKE) are not in it and a reload leaves them alone; running policies are the
//! file's, in file order, followed by the others in their order.
//!
//! Live: tunnels added or removed, the policy list, static SAs added (inbound) or removed or
//! changed with the same key (lifetimes, backend, an inbound SA's selectors after a policy
//! change: replaced in one store, the sequence counter and replay window continue), and the
//! settings `dataplane.default_policy`, `dataplane.backend`, `dataplane.replay_window` (for
//! SAs added later: static SAs taking the default keep theirs, so a change is restart-only
//! unless they set `replay_window` themselves), `control.rekey_grace_ms`,
//! `control.expired_linger_ms`. A new static outbound SA is tracked in the sequence state
//! file before its first packet ([`SeqTrack`]: a key the file does not know starts at 1, the
//! file knowing a key continues after its mark) and replaces the tunnel's outbound SA from the
//! old file in one pointer store, as a rekey does (the old SA's counts go to the tunnel's
//! totals). Everything else needs a restart and is refused by name, as are a changed tunnel
//! (add one under a new name instead), a new key under an installed SPI (use a new SPI), a key
//! moved to another SPI (the old SA holds it until the new one is in: give it a new key), an
//! inbound SPI whose table slot is taken (also by an SA the reload removes: it accepts for
//! the grace period), and, for tunnels of `[[ike.peers]]`, a change of the first protect
//! policy (the IKE peer's proxy IDs) or of the pre-shared key file's contents.
//!
//! A refused reload changes nothing: every check runs, every new SA is built and every new
//! static outbound SA is tracked in the state file before the first change. Then, so that
//! existing flows keep forwarding: new tunnels, new inbound SAs, new outbound SAs, SAs changed
//! in place, the SPD in one publication (every SA it points at is in), SAs gone from the file
//! (inbound ones after the grace period), tunnels gone from the file, and the live settings
//! last. Should a step still fail, the error says which and what went in before it, and later
//! reloads compare against what went in (`Applied`), not the old file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::events::{Event, spi_str};
use super::{Control, ControlError, Result, dir_name};
use crate::config::{Config, Interface, NewAction, NewPolicy, NewSa, NewTunnel, Tunnel};
use crate::sa::policy::{Policy, PolicyAction};
use crate::sa::{Direction, SaParams};

/// The config the running state came from, and whom to tell about reloads.
pub struct FromFile {
    pub config: Config,
    notifier: Option<crate::daemon::notify::Notifier>,
    seq: Option<std::sync::mpsc::Sender<SeqTrack>>,
}

impl FromFile {
    pub fn new(config: &Config) -> FromFile {
        FromFile {
            config: config.clone(),
            notifier: None,
            seq: None,
        }
    }
}

/// A request to the thread that owns the sequence state file: track this new static outbound
/// SA ([`crate::control::seqstate::SeqStore::track`]) and answer once its first block is saved.
pub struct SeqTrack {
    pub spi: u32,
    pub keymat: zeroize::Zeroizing<Vec<u8>>,
    pub seq: std::sync::Arc<crossbeam_utils::CachePadded<crate::sa::SeqCounter>>,
    pub reply: std::sync::mpsc::SyncSender<std::result::Result<(), String>>,
}

/// Added, removed and changed items of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

/// What a reload changed (the `load` answer and the `reloaded` event).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Reloaded {
    pub file: PathBuf,
    pub tunnels: Counts,
    pub policies: Counts,
    pub sas: Counts,
    /// Live settings that changed (`control.rekey_grace_ms`, ...).
    pub settings: Vec<&'static str>,
}

/// An SA of the file, by name: its tunnel and everything but the table slot.
#[derive(Debug)]
pub struct FileSa {
    pub tunnel: String,
    pub params: SaParams,
}

/// The difference between two configs (pure: no running state).
#[derive(Debug, Default)]
pub struct Diff {
    /// Settings that differ and need a restart (`dataplane.workers`, `interfaces.plain.name`).
    pub restart: Vec<String>,
    /// Changes a reload refuses, each with its reason (`tunnels[0] `to-b`: remote changed ...`).
    pub refused: Vec<String>,
    pub tunnels_added: Vec<NewTunnel>,
    pub tunnels_removed: Vec<String>,
    /// The new file's policies, by tunnel name, when the list changed.
    pub policies: Option<Vec<NewPolicy>>,
    pub policy_counts: Counts,
    pub sas_added: Vec<FileSa>,
    pub sas_removed: Vec<(u32, Direction)>,
    pub sas_changed: Vec<FileSa>,
    pub settings: Vec<&'static str>,
}

impl Diff {
    /// True when applying it would change nothing.
    pub fn is_empty(&self) -> bool {
        self.restart.is_empty()
            && self.refused.is_empty()
            && self.tunnels_added.is_empty()
            && self.tunnels_removed.is_empty()
            && self.policies.is_none()
            && self.sas_added.is_empty()
            && self.sas_removed.is_empty()
            && self.sas_changed.is_empty()
            && self.settings.is_empty()
    }
}

fn tunnel_name(cfg: &Config, index: u32) -> String {
    cfg.tunnels
        .iter()
        .find(|t| t.index == index)
        .map_or_else(String::new, |t| t.name.clone())
}

/// The policies of `cfg` with their tunnels by name.
fn named_policies(cfg: &Config) -> Vec<NewPolicy> {
    cfg.policies
        .iter()
        .map(|p| NewPolicy {
            selector: p.selector,
            action: match p.action {
                PolicyAction::Protect(t) => NewAction::Protect(tunnel_name(cfg, t)),
                PolicyAction::Bypass => NewAction::Bypass,
                PolicyAction::Discard => NewAction::Discard,
            },
        })
        .collect()
}

fn same_policy(a: &NewPolicy, b: &NewPolicy) -> bool {
    a.selector == b.selector && a.action == b.action
}

/// How many of `a` have no partner in `b` (as multisets).
fn unmatched(a: &[NewPolicy], b: &[NewPolicy]) -> usize {
    let mut used = vec![false; b.len()];
    a.iter()
        .filter(
            |p| match (0..b.len()).find(|&j| !used[j] && same_policy(p, &b[j])) {
                Some(j) => {
                    used[j] = true;
                    false
                }
                None => true,
            },
        )
        .count()
}

fn same_tunnel(a: &Tunnel, b: &Tunnel) -> Option<&'static str> {
    if a.endpoints.local != b.endpoints.local {
        Some("local")
    } else if a.endpoints.remote != b.endpoints.remote {
        Some("remote")
    } else if a.mode != b.mode {
        Some("mode")
    } else if a.encap != b.encap {
        Some("encap")
    } else if a.mtu != b.mtu {
        Some("mtu")
    } else {
        None
    }
}

fn interface_changes(name: &str, a: &Interface, b: &Interface, out: &mut Vec<String>) {
    let mut field = |f: &str, differs: bool| {
        if differs {
            out.push(format!("interfaces.{name}.{f}"));
        }
    };
    field("name", a.name != b.name);
    field("addresses", a.addresses != b.addresses);
    field("mac", a.mac != b.mac);
    field("next_hop", a.next_hop != b.next_hop);
    field("next_hop_mac", a.next_hop_mac != b.next_hop_mac);
    field("queues", a.queues != b.queues);
}

/// Settings that only take effect at start.
fn restart_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |f: &str, differs: bool| {
        if differs {
            out.push(f.to_string());
        }
    };
    field("dataplane.workers", old.workers != new.workers);
    field("dataplane.cores", old.cores != new.cores);
    field("dataplane.sa_capacity", old.sa_capacity != new.sa_capacity);
    field("dataplane.xdp_mode", old.xdp_mode != new.xdp_mode);
    field("dataplane.idle", old.idle.strategy != new.idle.strategy);
    field("dataplane.spin_us", old.idle.spin_us != new.idle.spin_us);
    field(
        "dataplane.coalesce_us",
        old.idle.coalesce_us != new.idle.coalesce_us,
    );
    field("dataplane.state_file", old.state_file != new.state_file);
    field(
        "dataplane.complete_checksums",
        old.complete_checksums != new.complete_checksums,
    );
    field(
        "dataplane.icmp_too_big",
        old.icmp_too_big != new.icmp_too_big,
    );
    field("dataplane.icmp_rate", old.icmp_rate != new.icmp_rate);
    field(
        "dataplane.prefetch_above",
        old.prefetch_above != new.prefetch_above,
    );
    field("control.socket", old.control.socket != new.control.socket);
    field(
        "control.metrics",
        old.control.metrics != new.control.metrics,
    );
    field(
        "control.tunnel_capacity",
        old.control.tunnel_capacity != new.control.tunnel_capacity,
    );
    field(
        "control.metrics_sa_limit",
        old.control.metrics_sa_limit != new.control.metrics_sa_limit,
    );
    field("ike", old.ike_raw != new.ike_raw);
    if old.ike_raw == new.ike_raw {
        ike_changes(old, new, &mut out);
    }
    interface_changes("plain", &old.plain, &new.plain, &mut out);
    interface_changes("cipher", &old.cipher, &new.cipher, &mut out);
    out
}

/// What the built-in IKE took from outside `[ike]` when it started: each peer's proxy IDs
/// (its tunnel's first protect policy) and pre-shared key (its file's contents). The running
/// IKE keeps them, so a change needs a restart.
fn ike_changes(old: &Config, new: &Config, out: &mut Vec<String>) {
    for (i, n) in new.ike.iter().enumerate() {
        let Some(o) = old.ike.iter().find(|o| o.index == n.index) else {
            continue;
        };
        if o.selector != n.selector {
            out.push(format!(
                "ike.peers[{i}] proxy IDs (the first protect policy of tunnel `{}`, which the IKE peer negotiates)",
                n.tunnel
            ));
        }
        if o.psk != n.psk {
            out.push(format!("ike.peers[{i}].psk_file (its contents)"));
        }
    }
}

fn live_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (name, differs) in [
        (
            "dataplane.default_policy",
            old.default_policy != new.default_policy,
        ),
        ("dataplane.backend", old.backend != new.backend),
        (
            "dataplane.replay_window",
            old.replay_window != new.replay_window,
        ),
        (
            "control.rekey_grace_ms",
            old.control.rekey_grace_ms != new.control.rekey_grace_ms,
        ),
        (
            "control.expired_linger_ms",
            old.control.expired_linger_ms != new.control.expired_linger_ms,
        ),
    ] {
        if differs {
            out.push(name);
        }
    }
    out
}

/// Whether two static SAs of the same SPI and direction differ (endpoints, mode and MTU follow
/// the tunnel, which a reload does not change in place).
fn sa_differs(a: &SaParams, b: &SaParams) -> bool {
    a.keymat != b.keymat
        || a.esn != b.esn
        || a.backend != b.backend
        || a.limits != b.limits
        || (a.direction == Direction::Inbound && a.replay_window != b.replay_window)
        || a.inner != b.inner
        || a.endpoints != b.endpoints
        || a.encap != b.encap
        || a.mode != b.mode
        || a.mtu != b.mtu
}

/// The difference from `old` to `new`, with what a reload refuses. Pure.
pub fn diff(old: &Config, new: &Config) -> Diff {
    let mut d = Diff {
        restart: restart_changes(old, new),
        settings: live_changes(old, new),
        ..Diff::default()
    };
    // Tunnels, by name.
    for (i, t) in new.tunnels.iter().enumerate() {
        match old.tunnels.iter().find(|o| o.name == t.name) {
            None => d.tunnels_added.push(NewTunnel {
                name: t.name.clone(),
                endpoints: t.endpoints,
                mode: t.mode,
                encap: t.encap,
                mtu: t.mtu,
            }),
            Some(o) => {
                if let Some(f) = same_tunnel(o, t) {
                    d.refused.push(format!(
                        "tunnels[{i}].{f}: tunnel `{}` changed; a tunnel does not change in place (add it under a new name and remove the old one, or restart)",
                        t.name
                    ));
                }
            }
        }
    }
    for o in &old.tunnels {
        if !new.tunnels.iter().any(|t| t.name == o.name) {
            d.tunnels_removed.push(o.name.clone());
        }
    }
    // Policies: an ordered list; any difference replaces the file's part of the SPD.
    let (po, pn) = (named_policies(old), named_policies(new));
    if po.len() != pn.len() || po.iter().zip(&pn).any(|(a, b)| !same_policy(a, b)) {
        let added = unmatched(&pn, &po);
        let removed = unmatched(&po, &pn);
        d.policy_counts = Counts {
            added,
            removed,
            // Same policies, another order.
            changed: usize::from(added == 0 && removed == 0),
        };
        d.policies = Some(pn);
    }
    // Static SAs, by SPI and direction.
    let key = |p: &SaParams| (p.spi, p.direction);
    let old_sas: BTreeMap<(u32, Direction), &(u32, SaParams)> =
        old.sas.iter().map(|s| (key(&s.1), s)).collect();
    // SAs whose window follows `dataplane.replay_window` (it is resolved at parse time).
    let mut window_default = Vec::new();
    for (i, (t, p)) in new.sas.iter().enumerate() {
        let tunnel = tunnel_name(new, *t);
        let what = format!("sas[{i}] ({} {})", dir_name(p.direction), spi_str(p.spi));
        let item = || FileSa {
            tunnel: tunnel.clone(),
            params: p.clone(),
        };
        match old_sas.get(&key(p)) {
            None => d.sas_added.push(item()),
            Some((ot, op)) => {
                if tunnel_name(old, *ot) != tunnel {
                    d.refused.push(format!(
                        "{what}.tunnel: moved from `{}` to `{tunnel}`; an SA does not change tunnel (use a new SPI)",
                        tunnel_name(old, *ot)
                    ));
                } else if op.keymat != p.keymat {
                    d.refused.push(format!(
                        "{what}.key: a new key needs a new SPI (the peer cannot switch keys at the same instant; packets in flight would fail)"
                    ));
                } else if op.esn != p.esn {
                    d.refused
                        .push(format!("{what}.esn: cannot change under the same key"));
                } else if p.direction == Direction::Inbound && op.replay_window != p.replay_window {
                    if op.replay_window == old.replay_window && p.replay_window == new.replay_window
                    {
                        window_default.push(format!("sas[{i}]"));
                    } else {
                        d.refused.push(format!(
                            "{what}.replay_window: cannot change under the same key"
                        ));
                    }
                } else if sa_differs(op, p) {
                    d.sas_changed.push(item());
                }
            }
        }
    }
    for (_, p) in &old.sas {
        if !new.sas.iter().any(|(_, n)| key(n) == key(p)) {
            d.sas_removed.push(key(p));
        }
    }
    if !window_default.is_empty() {
        // Live only for SAs added later: an installed SA keeps its window under its key.
        d.restart.push(format!(
            "dataplane.replay_window (the window of static SA(s) {} that take the default; an installed SA keeps its window: set `replay_window = {}` on them to reload without a restart)",
            window_default.join(", "),
            old.replay_window
        ));
    }
    d
}

fn new_sa(s: &FileSa) -> NewSa {
    let p = &s.params;
    NewSa {
        tunnel: s.tunnel.clone(),
        direction: p.direction,
        spi: p.spi,
        keymat: p.keymat.clone(),
        esn: p.esn,
        backend: Some(p.backend),
        replay_window: Some(p.replay_window),
        limits: p.limits,
        state: None,
    }
}

impl Control {
    /// Where new static outbound SAs are tracked (the daemon's sequence-state thread). Without
    /// it a reload refuses them.
    pub fn set_seq_tracker(&mut self, tx: std::sync::mpsc::Sender<SeqTrack>) {
        self.from_file.seq = Some(tx);
    }

    /// Tells `notifier` (systemd) `RELOADING=1` and `READY=1` around every reload.
    pub fn set_reload_notifier(&mut self, notifier: crate::daemon::notify::Notifier) {
        self.from_file.notifier = Some(notifier);
    }

    /// Reads `path` (default: the file last loaded) and applies its difference; refused as a
    /// whole when something in it needs a restart or cannot change live. The file becomes the
    /// one later reloads read.
    pub fn reload(&mut self, path: Option<&Path>, now: u64) -> Result<Reloaded> {
        let path = path.map_or_else(|| self.from_file.config.file.clone(), Path::to_path_buf);
        if let Some(n) = &self.from_file.notifier {
            n.reloading();
        }
        let r = Config::load_checked(&path)
            .map_err(|e| ControlError::invalid("config", e.to_string()))
            .and_then(|new| self.apply_config(new, now));
        if let Some(n) = &self.from_file.notifier {
            n.ready();
        }
        // A success is logged as its `reloaded` event.
        if let Err(e) = &r {
            tracing::error!(file = %path.display(), "reload refused: {e}");
        }
        r
    }

    /// Applies `new` against the config last applied: every check first (a refused reload
    /// changes nothing), then the changes in an order that keeps existing flows forwarding.
    pub fn apply_config(&mut self, new: Config, now: u64) -> Result<Reloaded> {
        self.apply_config_observed(new, now, &mut |_| Ok(()))
    }

    /// [`Control::apply_config`], calling `at_publish` just before the new SPD is published
    /// (tests check what is installed at that moment, or make the step fail).
    fn apply_config_observed(
        &mut self,
        new: Config,
        now: u64,
        at_publish: &mut dyn FnMut(&Control) -> Result<()>,
    ) -> Result<Reloaded> {
        let d = diff(&self.from_file.config, &new);
        if !d.restart.is_empty() {
            return Err(ControlError::invalid(
                "config",
                format!(
                    "{} changed; these need a restart (nothing was changed)",
                    d.restart.join(", ")
                ),
            ));
        }
        if !d.refused.is_empty() {
            return Err(ControlError::invalid(
                "config",
                format!("{} (nothing was changed)", d.refused.join("; ")),
            ));
        }
        let plan = self.check(&d, &new, now)?;
        let mut done = Reloaded {
            file: new.file.clone(),
            ..Reloaded::default()
        };
        let mut applied = Applied::new(&self.from_file.config, &new);
        if let Err((step, e)) = self.apply(&d, &new, plan, now, &mut done, &mut applied, at_publish)
        {
            // Later reloads compare against what is running now, not the old file.
            self.from_file.config = applied.cfg;
            let msg = format!(
                "stopped while {step}: {e}; applied before it: tunnels {:?}, policies {:?}, SAs {:?}, settings {:?} (the next reload compares against what was applied)",
                done.tunnels, done.policies, done.sas, done.settings
            );
            return Err(ControlError::invalid("reload", msg));
        }
        self.from_file.config = new;
        self.emit(Event::Reloaded {
            file: done.file.display().to_string(),
            tunnels: done.tunnels,
            policies: done.policies,
            sas: done.sas,
            settings: done.settings.clone(),
            time: Self::time(now),
        });
        Ok(done)
    }

    /// The running tunnels with `add` in the slots [`Control::add_tunnel`] will give them.
    fn tunnels_after(&self, add: &[NewTunnel]) -> Vec<Tunnel> {
        let mut list = self.tunnels.clone();
        for t in add {
            let index =
                super::ops::free_tunnel_slot(&list, self.tunnel_capacity).unwrap_or(u32::MAX);
            list.push(t.clone().into_tunnel(index));
        }
        list
    }

    /// A file SA built against the tunnels and policies the reload leads to.
    fn build_file_sa(
        &self,
        s: &NewSa,
        tunnels: &[Tunnel],
        policies: &[Policy],
        now: u64,
    ) -> Result<(u32, SaParams, crate::sa::Sa)> {
        let what = format!("{} SA {}", dir_name(s.direction), spi_str(s.spi));
        let (t, p) = s
            .to_params(tunnels, policies, self.defaults.0, self.defaults.1)
            .map_err(|(f, r)| ControlError::invalid(format!("{what}.{f}"), r))?;
        let sa = crate::sa::Sa::new(&p, self.cores, now)
            .map_err(|e| ControlError::invalid("config", format!("{what}: {e}")))?;
        sa.set_tunnel(t);
        Ok((t, p, sa))
    }

    /// Every check against the running state, and everything built that can be built before
    /// the first change (new SAs; new static outbound SAs tracked in the state file). Changes
    /// nothing that runs: an error here is a refused reload.
    fn check(&self, d: &Diff, new: &Config, now: u64) -> Result<Plan> {
        let running = |name: &str| self.tunnels.iter().any(|t| t.name == name);
        // File tunnels gone from the running state (deleted over the socket) come back.
        let mut add: Vec<NewTunnel> = d.tunnels_added.clone();
        for t in &new.tunnels {
            if !running(&t.name) && !add.iter().any(|a| a.name == t.name) {
                add.push(NewTunnel {
                    name: t.name.clone(),
                    endpoints: t.endpoints,
                    mode: t.mode,
                    encap: t.encap,
                    mtu: t.mtu,
                });
            }
        }
        for t in &d.tunnels_added {
            if running(&t.name) {
                return Err(ControlError::invalid(
                    "config",
                    format!(
                        "tunnel `{}` already runs (added over the control socket); delete it first (nothing was changed)",
                        t.name
                    ),
                ));
            }
        }
        let free = self.tunnel_capacity as usize - self.tunnels.len();
        if add.len() > free {
            return Err(ControlError::invalid(
                "config",
                format!(
                    "{} tunnel(s) to add, {free} slot(s) free (control.tunnel_capacity); nothing was changed",
                    add.len()
                ),
            ));
        }
        for t in &add {
            t.check()
                .map_err(|(f, r)| ControlError::invalid(format!("tunnels.{}.{f}", t.name), r))?;
        }
        let tunnels = self.tunnels_after(&add);
        // The policy list the reload publishes (the file's, then the others).
        let policies = match &d.policies {
            Some(pn) => {
                Some(self.merged_policies(&tunnels, &named_policies(&self.from_file.config), pn)?)
            }
            None => None,
        };
        let policies_after = policies.as_deref().unwrap_or(&self.policies);
        // Every SA the reload installs or replaces: built, its SPI free, its key unused.
        let removed: Vec<(u32, Direction)> = d.sas_removed.clone();
        let mut install = Vec::new();
        let mut update = Vec::new();
        for s in &d.sas_added {
            install.push(s);
        }
        for s in &d.sas_changed {
            if self.sas.contains_key(&(s.params.spi, s.params.direction)) {
                update.push(s);
            } else {
                // Deleted over the socket meanwhile: installed again.
                install.push(s);
            }
        }
        let sa_name = |dir: Direction, spi: u32| format!("{} SA {}", dir_name(dir), spi_str(spi));
        // Keys of the SAs installed so far in this check (one key, one SA).
        let mut new_keys: Vec<([u8; 16], (u32, Direction))> = Vec::new();
        for s in install.iter().chain(update.iter()) {
            let p = &s.params;
            let what = sa_name(p.direction, p.spi);
            let id = crate::sa::sa::key_id(&p.keymat);
            if let Some(&(dir, spi)) = self.keys.get(&id)
                && (spi, dir) != (p.spi, p.direction)
            {
                // An SA the reload removes still holds its key until after the new SAs are
                // in (inbound ones for the grace period): a key does not move to another SPI.
                let reason = if removed.contains(&(spi, dir)) {
                    format!(
                        "{what}: its key is the key of {}, which this reload removes; a key does not move to another SPI in a reload (give {what} a new key, or keep the old SPI) (nothing was changed)",
                        sa_name(dir, spi)
                    )
                } else {
                    format!(
                        "{what}: its key is in use by {} (nothing was changed)",
                        sa_name(dir, spi)
                    )
                };
                return Err(ControlError::invalid("config", reason));
            }
            if let Some((_, (spi, dir))) = new_keys.iter().find(|(k, _)| *k == id) {
                return Err(ControlError::invalid(
                    "config",
                    format!(
                        "{what}: its key is also the key of {} in the file (nothing was changed)",
                        sa_name(*dir, *spi)
                    ),
                ));
            }
            new_keys.push((id, (p.spi, p.direction)));
            if let Some(&(dir, _)) = self.retired.get(&id)
                && dir != p.direction
            {
                return Err(ControlError::invalid(
                    "config",
                    format!(
                        "{what}: its key was used by an {} SA before (nothing was changed)",
                        dir_name(dir)
                    ),
                ));
            }
        }
        for s in &update {
            // The installed SA must still be the file's (same key), not one the socket put
            // under its SPI: an outbound successor under another key would start a sequence
            // counter the state file does not track.
            let p = &s.params;
            let k = (p.spi, p.direction);
            if self.key_of.get(&k).map(|(id, _)| *id) != Some(crate::sa::sa::key_id(&p.keymat)) {
                return Err(ControlError::invalid(
                    "config",
                    format!(
                        "{} was replaced over the control socket (another key); delete it or restart (nothing was changed)",
                        sa_name(p.direction, p.spi)
                    ),
                ));
            }
            // Its successor builds (the one installed is built again when it goes in, so the
            // counters it carries on are the latest).
            let (_, np, _) = self.build_file_sa(&new_sa(s), &tunnels, policies_after, now)?;
            let g = crossbeam_epoch::pin();
            if let Some(prev) = self.lookup(k, &g) {
                crate::sa::Sa::successor(&np, self.cores, now, prev).map_err(|e| {
                    ControlError::invalid("config", format!("{}: {e}", sa_name(k.1, k.0)))
                })?;
            }
        }
        let mut outbound_tunnels = Vec::new();
        // Inbound table slots taken: the installed inbound SAs (those this reload removes too:
        // they accept for the grace period) and the new ones.
        let mask = self.dp.sas.capacity() - 1;
        let mut slots: Vec<(u32, u32, bool)> = self
            .sas
            .keys()
            .filter(|(_, d)| *d == Direction::Inbound)
            .map(|&(spi, _)| {
                (
                    spi & mask,
                    spi,
                    removed.contains(&(spi, Direction::Inbound)),
                )
            })
            .collect();
        for s in &install {
            let p = &s.params;
            let what = sa_name(p.direction, p.spi);
            if self.sas.contains_key(&(p.spi, p.direction)) {
                return Err(ControlError::invalid(
                    "config",
                    format!(
                        "{what} is already installed (added over the control socket?); nothing was changed"
                    ),
                ));
            }
            if p.direction == Direction::Inbound {
                let slot = p.spi & mask;
                if let Some(&(_, holder, going)) = slots.iter().find(|x| x.0 == slot) {
                    return Err(ControlError::invalid(
                        "config",
                        format!(
                            "{what}: its slot in the inbound SA table (SPI & {mask:#x}, dataplane.sa_capacity {}) is taken by inbound SA {}{}; choose an SPI with other low bits (nothing was changed)",
                            mask + 1,
                            spi_str(holder),
                            if going {
                                ", which this reload removes but which accepts for the rekey grace period"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
                slots.push((slot, p.spi, false));
                continue;
            }
            if self.from_file.seq.is_none() {
                return Err(ControlError::invalid(
                    "config",
                    format!(
                        "{what}: a static outbound SA is added only with a sequence state file to track it (the daemon's); nothing was changed"
                    ),
                ));
            }
            // The tunnel's outbound SA must be the old file's, going in this reload (or
            // none): one from the socket is not replaced.
            if let Some(t) = self.tunnels.iter().find(|t| t.name == s.tunnel) {
                let g = crossbeam_epoch::pin();
                let cur = self.dp.sas.outbound(t.index, &g).map(|x| x.spi);
                drop(g);
                if let Some(cur) = cur
                    && !removed.contains(&(cur, Direction::Outbound))
                {
                    return Err(ControlError::invalid(
                        "config",
                        format!(
                            "{what}: tunnel `{}` has outbound SA {} (not from the file, or kept by it); nothing was changed",
                            s.tunnel,
                            spi_str(cur)
                        ),
                    ));
                }
            }
            if outbound_tunnels.contains(&s.tunnel) {
                return Err(ControlError::invalid(
                    "config",
                    format!("{what}: tunnel `{}` gets two outbound SAs", s.tunnel),
                ));
            }
            outbound_tunnels.push(s.tunnel.clone());
        }
        // Build the new SAs.
        let mut inbound = Vec::new();
        let mut outbound = Vec::new();
        for s in &install {
            let (t, _, sa) = self.build_file_sa(&new_sa(s), &tunnels, policies_after, now)?;
            self.resume_key(&sa);
            match sa.direction {
                Direction::Inbound => inbound.push((t, sa)),
                Direction::Outbound => outbound.push((t, sa, s)),
            }
        }
        // Last, as it cannot be taken back: the new outbound SAs go into the state file (their
        // counters capped at the saved mark). A key tracked by a refused reload only moves
        // the mark of that key ahead.
        let mut tracked = Vec::new();
        for (t, sa, s) in outbound {
            let what = sa_name(Direction::Outbound, sa.spi);
            let tracker = self.from_file.seq.clone().ok_or_else(|| {
                ControlError::invalid("config", format!("{what}: no sequence state file"))
            })?;
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let stopped = || {
                ControlError::invalid(
                    "config",
                    format!(
                        "{what}: the sequence state thread did not answer (nothing was changed)"
                    ),
                )
            };
            tracker
                .send(SeqTrack {
                    spi: sa.spi,
                    keymat: s.params.keymat.clone(),
                    seq: sa.seq_handle(),
                    reply: tx,
                })
                .map_err(|_| stopped())?;
            rx.recv_timeout(std::time::Duration::from_secs(10))
                .map_err(|_| stopped())?
                .map_err(|e| {
                    ControlError::invalid(
                        "config",
                        format!("{what}: state file: {e} (nothing was changed)"),
                    )
                })?;
            tracked.push((t, sa));
        }
        Ok(Plan {
            tunnels: add,
            tunnel_list: tunnels,
            policies,
            inbound,
            outbound: tracked,
            update: update.into_iter().map(new_sa).collect(),
        })
    }

    /// The file's policies, resolved against `tunnels`, followed by the running policies that
    /// did not come from the old file.
    fn merged_policies(
        &self,
        tunnels: &[Tunnel],
        old: &[NewPolicy],
        new: &[NewPolicy],
    ) -> Result<Vec<Policy>> {
        let resolve = |p: &NewPolicy| p.resolve(&self.tunnels).ok();
        let mut others: Vec<Policy> = self.policies.clone();
        for p in old.iter().filter_map(resolve) {
            if let Some(i) = others.iter().position(|x| *x == p) {
                others.remove(i);
            }
        }
        let mut list = new
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.resolve(tunnels)
                    .map_err(|e| ControlError::from(e).within(format!("policies[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        list.extend(others);
        Ok(list)
    }

    /// Applies a checked plan: new tunnels, new inbound SAs, new (tracked) outbound SAs, SAs
    /// changed in place, the SPD in one publication, then what the file no longer has (inbound
    /// SAs after the grace period), then the live settings. Each step only adds what the SPD
    /// in force may need, or removes what it no longer points at, so flows keep forwarding.
    /// `applied` follows every step; an error says at which step it stopped.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        d: &Diff,
        new: &Config,
        plan: Plan,
        now: u64,
        done: &mut Reloaded,
        applied: &mut Applied,
        at_publish: &mut dyn FnMut(&Control) -> Result<()>,
    ) -> std::result::Result<(), (&'static str, ControlError)> {
        // 1. New tunnels (nothing uses them until their policies and SAs come).
        for t in plan.tunnels {
            let name = t.name.clone();
            let want = plan
                .tunnel_list
                .iter()
                .find(|x| x.name == name)
                .map(|x| x.index);
            let index = self.add_tunnel(t).map_err(|e| ("adding tunnels", e))?;
            if Some(index) != want {
                // Not expected: the checks computed another slot. Taken back (nothing uses
                // it yet) so the policies cannot point at the wrong tunnel.
                let _ = self.remove_tunnel(&name);
                return Err((
                    "adding tunnels",
                    ControlError::invalid(
                        format!("tunnels.{name}"),
                        format!("got slot {index}, expected {want:?}"),
                    ),
                ));
            }
            applied.tunnel_added(new, &name);
            done.tunnels.added += 1;
        }
        // 2. New inbound SAs (the peer may use them at once; nothing here sends with them).
        for (t, sa) in plan.inbound {
            let key = (sa.spi, sa.direction);
            self.install(t, sa)
                .map_err(|e| ("installing inbound SAs", e))?;
            applied.sa_put(new, key);
            done.sas.added += 1;
        }
        // 3. New static outbound SAs, tracked in the state file by the checks: each replaces
        // its tunnel's outbound SA (the old file's) in one pointer store, the old SA's counts
        // banked into the tunnel's totals.
        for (t, sa) in plan.outbound {
            let spi = sa.spi;
            let old = self
                .install_static_outbound(t, sa, now)
                .map_err(|e| ("installing outbound SAs", e))?;
            if let Some(o) = old {
                applied.sa_gone((o, Direction::Outbound));
                done.sas.removed += 1;
            }
            applied.sa_put(new, (spi, Direction::Outbound));
            done.sas.added += 1;
        }
        // 4. Changed SAs, each replaced in one store (same key: the counters continue); an
        // inbound SA gets the selectors of the policies the reload publishes.
        let old_policies = plan
            .policies
            .as_ref()
            .map(|p| std::mem::replace(&mut self.policies, p.clone()));
        for s in &plan.update {
            if let Err(e) = self.update_sa(s, now) {
                if let Some(old) = old_policies {
                    self.policies = old;
                }
                return Err(("changing SAs", e));
            }
            applied.sa_put(new, (s.spi, s.direction));
            done.sas.changed += 1;
        }
        // 5. The policy list and default policy, in one SPD publication: every SA it points
        // at is in.
        let default_changed = self.default_policy != new.default_policy;
        if plan.policies.is_some() || default_changed {
            if let Err(e) = at_publish(self) {
                if let Some(old) = old_policies {
                    self.policies = old;
                }
                return Err(("publishing the SPD", e));
            }
            self.default_policy = new.default_policy;
            self.publish_spd();
        }
        if plan.policies.is_some() {
            done.policies = d.policy_counts;
        }
        applied.policies(new);
        // 6. SAs gone from the file, now that no policy needs them: inbound ones keep
        // accepting for the grace period (the new one's).
        let grace_ns = new.control.rekey_grace_ms.saturating_mul(1_000_000);
        for &(spi, dir) in &d.sas_removed {
            if !self.sas.contains_key(&(spi, dir)) {
                applied.sa_gone((spi, dir));
                continue;
            }
            match dir {
                Direction::Inbound => self.retiring.push((now.saturating_add(grace_ns), spi)),
                Direction::Outbound => self
                    .remove_sa_because(spi, dir, "reload", now)
                    .map_err(|e| ("removing SAs", e))?,
            }
            applied.sa_gone((spi, dir));
            done.sas.removed += 1;
        }
        // 7. Tunnels gone from the file, with what still uses them.
        for name in &d.tunnels_removed {
            if self.tunnels.iter().any(|t| &t.name == name) {
                self.remove_tunnel(name)
                    .map_err(|e| ("removing tunnels", e))?;
                done.tunnels.removed += 1;
            }
            applied.tunnel_gone(name);
        }
        // 8. Live settings, last.
        self.defaults = (new.backend, new.replay_window);
        self.grace_ns = grace_ns;
        self.linger_ns = new.control.expired_linger_ms.saturating_mul(1_000_000);
        done.settings = d.settings.clone();
        Ok(())
    }
}

impl Control {
    /// Publishes a static outbound SA from the file, already tracked in the sequence state
    /// file, replacing the tunnel's current outbound SA (the old file's, checked) in one
    /// pointer store; the old SA's counts go to the tunnel's totals, as in a rekey. Returns
    /// the SPI it replaced.
    fn install_static_outbound(
        &mut self,
        t: u32,
        sa: crate::sa::Sa,
        now: u64,
    ) -> Result<Option<u32>> {
        let old = self.swap_outbound(t, sa)?;
        if let Some(o) = old {
            self.emit(Event::SaRemoved {
                spi: spi_str(o),
                direction: "outbound",
                reason: "reload",
                time: Self::time(now),
            });
        }
        {
            let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            c.sas_installed += 1;
            c.sas_removed += u64::from(old.is_some());
        }
        Ok(old)
    }
}

/// What [`Control::check`] found to do, with the SAs built.
struct Plan {
    tunnels: Vec<NewTunnel>,
    /// The running tunnels with the new ones in the slots they get.
    tunnel_list: Vec<Tunnel>,
    /// The policy list to publish, when it changes.
    policies: Option<Vec<Policy>>,
    inbound: Vec<(u32, crate::sa::Sa)>,
    /// Tracked in the state file already.
    outbound: Vec<(u32, crate::sa::Sa)>,
    update: Vec<NewSa>,
}

/// The config a reload got to, step by step: if a step fails after the checks (not
/// expected), it becomes what the next reload compares against, so that reload sees what
/// runs (a tunnel already added is not "added again") rather than the old file.
struct Applied {
    cfg: Config,
}

impl Applied {
    fn new(old: &Config, new: &Config) -> Applied {
        let mut cfg = old.clone();
        cfg.file = new.file.clone();
        Applied { cfg }
    }

    /// The index of tunnel `name` in this config.
    fn index(&self, name: &str) -> Option<u32> {
        self.cfg
            .tunnels
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.index)
    }

    /// `new`'s tunnel `name`, under an index free here.
    fn tunnel_added(&mut self, new: &Config, name: &str) {
        let Some(t) = new.tunnels.iter().find(|t| t.name == name) else {
            return;
        };
        if self.index(name).is_some() {
            return;
        }
        let mut t = t.clone();
        t.index = self
            .cfg
            .tunnels
            .iter()
            .map(|x| x.index + 1)
            .max()
            .unwrap_or(0);
        self.cfg.tunnels.push(t);
    }

    /// `new`'s SA `key` (tunnel by name), replacing this config's.
    fn sa_put(&mut self, new: &Config, key: (u32, Direction)) {
        let Some((nt, p)) = new.sas.iter().find(|(_, p)| (p.spi, p.direction) == key) else {
            return;
        };
        let Some(t) = self.index(&tunnel_name(new, *nt)) else {
            return;
        };
        self.sa_gone(key);
        self.cfg.sas.push((t, p.clone()));
    }

    fn sa_gone(&mut self, key: (u32, Direction)) {
        self.cfg.sas.retain(|(_, p)| (p.spi, p.direction) != key);
    }

    /// `new`'s policies (tunnels by name) and default policy.
    fn policies(&mut self, new: &Config) {
        let list = new
            .policies
            .iter()
            .filter_map(|p| {
                let action = match p.action {
                    PolicyAction::Protect(t) => {
                        PolicyAction::Protect(self.index(&tunnel_name(new, t))?)
                    }
                    a => a,
                };
                Some(Policy {
                    selector: p.selector,
                    action,
                })
            })
            .collect();
        self.cfg.policies = list;
        self.cfg.default_policy = new.default_policy;
    }

    fn tunnel_gone(&mut self, name: &str) {
        let Some(t) = self.index(name) else {
            return;
        };
        self.cfg.tunnels.retain(|x| x.index != t);
        self.cfg
            .policies
            .retain(|p| p.action != PolicyAction::Protect(t));
        self.cfg.sas.retain(|(x, _)| *x != t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[dataplane]
workers = 1
[interfaces.plain]
name = "lan0"
addresses = ["192.0.2.1"]
next_hop_mac = "02:00:00:00:00:02"
[interfaces.cipher]
name = "wan0"
addresses = ["203.0.113.1"]
next_hop_mac = "02:00:00:00:00:03"
[[tunnels]]
name = "to-b"
local = "203.0.113.1"
remote = "203.0.113.2"
[[policies]]
src = "192.0.2.0/24"
dst = "198.51.100.0/24"
action = "protect"
tunnel = "to-b"
[[sas]]
tunnel = "to-b"
direction = "out"
spi = 0xa001
key = "00112233445566778899aabbccddeeff01020304"
[[sas]]
tunnel = "to-b"
direction = "in"
spi = 0xb001
key = "ffeeddccbbaa99887766554433221100a0b0c0d0"
[control]
socket = ""
"#;

    const KEY_A: &str = "00112233445566778899aabbccddeeff01020304";

    fn cfg(text: &str) -> Config {
        Config::parse(Path::new("t.toml"), text).unwrap()
    }

    #[test]
    fn the_same_file_is_no_change() {
        assert!(diff(&cfg(BASE), &cfg(BASE)).is_empty());
    }

    #[test]
    fn restart_settings_are_named() {
        let new = BASE
            .replace("workers = 1", "workers = 2")
            .replace("name = \"lan0\"", "name = \"lan1\"")
            .replace("socket = \"\"", "socket = \"/tmp/x.sock\"");
        let d = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(
            d.restart,
            vec![
                "dataplane.workers",
                "dataplane.cores",
                "control.socket",
                "interfaces.plain.name",
                "interfaces.plain.queues",
                "interfaces.cipher.queues",
            ]
        );
        assert!(d.tunnels_added.is_empty() && d.policies.is_none());
    }

    #[test]
    fn a_policy_added_changes_the_inbound_sa_selectors() {
        let new = BASE.replacen(
            "[[sas]]",
            "[[policies]]\nsrc = \"192.0.2.0/24\"\ndst = \"203.0.113.128/25\"\naction = \"protect\"\ntunnel = \"to-b\"\n[[sas]]",
            1,
        );
        let d = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(
            d.policy_counts,
            Counts {
                added: 1,
                removed: 0,
                changed: 0
            }
        );
        assert_eq!(d.policies.as_ref().map(Vec::len), Some(2));
        // The inbound SA's selectors follow its tunnel's protect policies; outbound has none.
        assert_eq!(d.sas_changed.len(), 1);
        assert_eq!(d.sas_changed[0].params.direction, Direction::Inbound);
        assert!(d.refused.is_empty() && d.restart.is_empty());
    }

    #[test]
    fn tunnels_and_inbound_sas_added_and_removed() {
        let new = BASE
            .replace("to-b", "to-c")
            .replace("203.0.113.2", "203.0.113.3")
            .replace(
                "[[sas]]\ntunnel = \"to-c\"\ndirection = \"out\"\nspi = 0xa001\nkey = \"00112233445566778899aabbccddeeff01020304\"\n",
                "",
            );
        let d = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(d.tunnels_added.len(), 1);
        assert_eq!(d.tunnels_added[0].name, "to-c");
        assert_eq!(d.tunnels_removed, vec!["to-b".to_string()]);
        // The inbound SA moved tunnel: refused (an SA keeps its tunnel).
        assert_eq!(d.refused.len(), 1, "{:?}", d.refused);
        assert!(d.refused[0].contains("sas[0] (inbound 0x0000b001).tunnel"));
        assert_eq!(d.sas_removed, vec![(0xa001, Direction::Outbound)]);
    }

    #[test]
    fn lifetimes_change_live_and_new_keys_need_new_spis() {
        let new = BASE.replace(
            "spi = 0xa001\n",
            "spi = 0xa001\nlifetime = { hard_seconds = 3600 }\n",
        );
        let d = diff(&cfg(BASE), &cfg(&new));
        assert!(d.refused.is_empty(), "{:?}", d.refused);
        assert_eq!(d.sas_changed.len(), 1);
        assert_eq!(d.sas_changed[0].params.limits.hard_seconds, Some(3600));

        let new = BASE.replace(
            "00112233445566778899aabbccddeeff01020304",
            "00112233445566778899aabbccddeeff01020399",
        );
        let d = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(d.refused.len(), 1);
        assert!(
            d.refused[0].starts_with("sas[0] (outbound 0x0000a001).key: a new key needs a new SPI"),
            "{}",
            d.refused[0]
        );

        // A new SPI with a new key: one added, one removed (a rekey by the file).
        let new = BASE
            .replace("0xa001", "0xa002")
            .replace(KEY_A, "00112233445566778899aabbccddeeff01020399");
        let d = diff(&cfg(BASE), &cfg(&new));
        assert!(d.refused.is_empty(), "{:?}", d.refused);
        assert_eq!(d.sas_added.len(), 1);
        assert_eq!(d.sas_added[0].params.spi, 0xa002);
        assert_eq!(d.sas_removed, vec![(0xa001, Direction::Outbound)]);
    }

    #[test]
    fn live_settings_and_changed_tunnels() {
        let new = BASE
            .replace("[control]\n", "[control]\nrekey_grace_ms = 500\n")
            .replace("workers = 1", "workers = 1\ndefault_policy = \"bypass\"")
            .replace("remote = \"203.0.113.2\"", "remote = \"203.0.113.9\"");
        let d = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(
            d.settings,
            vec!["dataplane.default_policy", "control.rekey_grace_ms"]
        );
        assert!(d.refused[0].starts_with("tunnels[0].remote: tunnel `to-b` changed"));
    }

    #[test]
    fn policy_order_is_a_change() {
        let two = BASE.replacen(
            "[[sas]]",
            "[[policies]]\nsrc = \"192.0.2.0/24\"\ndst = \"0.0.0.0/0\"\naction = \"bypass\"\n[[sas]]",
            1,
        );
        let swapped = two.replacen(
            "[[policies]]\nsrc = \"192.0.2.0/24\"\ndst = \"198.51.100.0/24\"\naction = \"protect\"\ntunnel = \"to-b\"\n",
            "",
            1,
        ).replace(
            "action = \"bypass\"\n",
            "action = \"bypass\"\n[[policies]]\nsrc = \"192.0.2.0/24\"\ndst = \"198.51.100.0/24\"\naction = \"protect\"\ntunnel = \"to-b\"\n",
        );
        let d = diff(&cfg(&two), &cfg(&swapped));
        assert_eq!(
            d.policy_counts,
            Counts {
                added: 0,
                removed: 0,
                changed: 1
            }
        );
    }

    fn control(text: &str) -> Control {
        let c = cfg(text);
        let dp = std::sync::Arc::new(c.build_dataplane(1).unwrap());
        Control::new(&c, dp)
    }

    const SECOND_FLOW: &str = "[[policies]]\nsrc = \"192.0.2.0/24\"\ndst = \"203.0.113.128/25\"\naction = \"protect\"\ntunnel = \"to-b\"\n[[sas]]";

    #[test]
    fn apply_keeps_what_the_socket_added_and_refusals_change_nothing() {
        let mut c = control(BASE);
        // Over the socket: a tunnel and a policy of its own.
        c.add_tunnel(
            crate::config::TunnelSpec {
                name: "sock",
                local: "203.0.113.1",
                remote: "203.0.113.7",
                mode: None,
                encap: None,
                udp_src_port: None,
                udp_dst_port: None,
                mtu: None,
            }
            .parse()
            .unwrap(),
        )
        .unwrap();
        let sock_policy = crate::config::PolicySpec {
            src: "192.0.2.0/24",
            dst: "198.18.0.0/15",
            protocol: None,
            src_ports: None,
            dst_ports: None,
            action: "protect",
            tunnel: Some("sock"),
        }
        .parse()
        .unwrap();
        c.add_policy(&sock_policy).unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        c.watch(tx);

        // A restart-only change: refused by name, nothing changes.
        let before = (c.tunnels().len(), c.policies().to_vec(), c.stats().sas);
        let e = c
            .apply_config(cfg(&BASE.replace("workers = 1", "workers = 2")), 10)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config: dataplane.workers, dataplane.cores, interfaces.plain.queues"),
            "{e}"
        );
        assert!(e.ends_with("need a restart (nothing was changed)"), "{e}");
        assert_eq!(
            before,
            (c.tunnels().len(), c.policies().to_vec(), c.stats().sas)
        );
        assert!(rx.try_recv().is_err());

        // A second flow on the tunnel, a new inbound SA, a lifetime on the outbound one.
        let new = BASE.replacen("[[sas]]", SECOND_FLOW, 1).replace(
            "spi = 0xa001\n",
            "spi = 0xa001\nlifetime = { hard_seconds = 3600 }\n",
        ) + "[[sas]]\ntunnel = \"to-b\"\ndirection = \"in\"\nspi = 0xb002\nkey = \"1112233445566778899aabbccddeeff001020304\"\n";
        let done = c.apply_config(cfg(&new), 20).unwrap();
        assert_eq!(
            done.policies,
            Counts {
                added: 1,
                removed: 0,
                changed: 0
            }
        );
        assert_eq!(
            done.sas,
            Counts {
                added: 1,
                removed: 0,
                changed: 2
            }
        );
        assert_eq!(done.tunnels, Counts::default());
        // The file's policies first, in file order, then the socket's.
        let names: Vec<String> = c
            .policies()
            .iter()
            .map(|p| p.selector.dst.to_string())
            .collect();
        assert_eq!(
            names,
            ["198.51.100.0/24", "203.0.113.128/25", "198.18.0.0/15"]
        );
        assert_eq!(c.tunnels().len(), 2, "the socket's tunnel stays");
        assert_eq!(c.stats().sas, 3);
        let out = c.sa(0xa001, Direction::Outbound, 21).unwrap();
        assert_eq!(out.lifetime.hard_seconds, Some(3600));
        match rx.try_recv() {
            Ok(Event::Reloaded { sas, policies, .. }) => {
                assert_eq!((sas.added, sas.changed, policies.added), (1, 2, 1))
            }
            other => panic!("expected reloaded, got {other:?}"),
        }

        // Back to the first file: the second flow and the new inbound SA go (the SA after
        // the grace period), the socket's policy and tunnel stay.
        let done = c.apply_config(cfg(BASE), 30).unwrap();
        assert_eq!(
            done.policies,
            Counts {
                added: 0,
                removed: 1,
                changed: 0
            }
        );
        assert_eq!(
            done.sas,
            Counts {
                added: 0,
                removed: 1,
                changed: 2
            }
        );
        assert_eq!(c.policies().len(), 2);
        assert_eq!(
            c.stats().sas,
            3,
            "the removed inbound SA lingers for the grace period"
        );
        c.tick(30 + 2_000_000_001, &crossbeam_queue::ArrayQueue::new(1));
        assert_eq!(c.stats().sas, 2);

        // An SA added over the socket under an SPI the file now wants: refused, unchanged.
        let key = "2112233445566778899aabbccddeeff001020304";
        let sa = crate::config::NewSa {
            tunnel: "to-b".into(),
            direction: Direction::Inbound,
            spi: 0xb003,
            keymat: crate::config::SaSpec::to_new_sa(
                &toml::from_str::<crate::config::SaSpec>(&format!(
                    "tunnel = \"to-b\"\ndirection = \"in\"\nspi = 0xb003\nkey = \"{key}\"\n"
                ))
                .unwrap(),
            )
            .unwrap()
            .keymat,
            esn: false,
            backend: None,
            replay_window: None,
            limits: Default::default(),
            state: None,
        };
        c.install_sa(&sa, 40).unwrap();
        let clash = format!(
            "{BASE}[[sas]]\ntunnel = \"to-b\"\ndirection = \"in\"\nspi = 0xb003\nkey = \"3112233445566778899aabbccddeeff001020304\"\n"
        );
        let e = c.apply_config(cfg(&clash), 41).unwrap_err().to_string();
        assert!(
            e.contains("inbound SA 0x0000b003 is already installed"),
            "{e}"
        );
        assert_eq!(c.stats().sas, 3);
    }

    #[test]
    fn the_load_request_reads_the_file_again() {
        let dir = std::env::temp_dir().join(format!("espd-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        let write = |text: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        write(BASE);
        let c0 = Config::load_checked(&path).unwrap();
        let dp = std::sync::Arc::new(c0.build_dataplane(1).unwrap());
        let mut c = Control::new(&c0, dp);
        write(&BASE.replacen("[[sas]]", SECOND_FLOW, 1));
        let answer = match super::super::api::handle(&mut c, r#"{"op":"load"}"#, 5) {
            super::super::api::Reply::Line(l) => l,
            super::super::api::Reply::Subscribe => unreachable!(),
        };
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["ok"], true, "{answer}");
        assert_eq!(v["policies"]["added"], 1, "{answer}");
        assert_eq!(v["sas"]["changed"], 1, "{answer}");
        assert_eq!(v["file"], path.display().to_string());
        // World-readable with inline keys: refused like at start.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let answer = match super::super::api::handle(&mut c, r#"{"op":"load"}"#, 6) {
            super::super::api::Reply::Line(l) => l,
            super::super::api::Reply::Subscribe => unreachable!(),
        };
        assert!(answer.contains("is mode 0644"), "{answer}");
        assert!(answer.contains("\"ok\":false"), "{answer}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn sa_key(spi: &str, dir: &str, key: &str) -> NewSa {
        let spec: crate::config::SaSpec = toml::from_str(&format!(
            "tunnel = \"to-b\"\ndirection = \"{dir}\"\nspi = \"{spi}\"\nkey = \"{key}\"\n"
        ))
        .unwrap();
        spec.to_new_sa().unwrap()
    }

    #[test]
    fn file_sas_replaced_over_the_socket_are_not_overwritten() {
        let mut c = control(BASE);
        let lifetime = BASE.replace(
            "spi = 0xa001\n",
            "spi = 0xa001\nlifetime = { hard_seconds = 3600 }\n",
        );
        // The outbound SA rekeyed over the socket: the file's 0xa001 is gone.
        c.rekey(
            super::super::types::Rekey {
                tunnel: "to-b".into(),
                outbound: sa_key("0xa0ff", "out", "4112233445566778899aabbccddeeff001020304"),
                inbound: None,
                retire_inbound: None,
                grace_ms: None,
            },
            5,
        )
        .unwrap();
        let e = c.apply_config(cfg(&lifetime), 6).unwrap_err().to_string();
        assert!(
            e.contains("outbound SA 0x0000a001: a static outbound SA is added only with"),
            "{e}"
        );
        assert_eq!(c.outbound_spi("to-b"), Some(0xa0ff));
        // The inbound SA replaced under its SPI with another key (sa_update).
        let mut c = control(BASE);
        c.update_sa(
            &sa_key("0xb001", "in", "5112233445566778899aabbccddeeff001020304"),
            5,
        )
        .unwrap();
        let e = c
            .apply_config(cfg(&BASE.replacen("[[sas]]", SECOND_FLOW, 1)), 6)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("inbound SA 0x0000b001 was replaced over the control socket"),
            "{e}"
        );
        assert_eq!(c.policies().len(), 1, "nothing was applied");
    }

    #[test]
    fn a_tunnel_with_its_policy_and_inbound_sa_comes_and_goes() {
        let mut c = control(BASE);
        let with_c = format!(
            "{BASE}[[tunnels]]\nname = \"to-c\"\nlocal = \"203.0.113.1\"\nremote = \"203.0.113.3\"\n\
             [[policies]]\nsrc = \"192.0.2.0/24\"\ndst = \"198.18.0.0/15\"\naction = \"protect\"\ntunnel = \"to-c\"\n\
             [[sas]]\ntunnel = \"to-c\"\ndirection = \"in\"\nspi = 0xc001\nkey = \"6112233445566778899aabbccddeeff001020304\"\n"
        );
        let done = c.apply_config(cfg(&with_c), 10).unwrap();
        assert_eq!(
            done.tunnels,
            Counts {
                added: 1,
                removed: 0,
                changed: 0
            }
        );
        assert_eq!(
            done.policies,
            Counts {
                added: 1,
                removed: 0,
                changed: 0
            }
        );
        assert_eq!(
            done.sas,
            Counts {
                added: 1,
                removed: 0,
                changed: 0
            }
        );
        let info = c.sa(0xc001, Direction::Inbound, 11).unwrap();
        assert_eq!(info.tunnel.as_deref(), Some("to-c"));
        // Gone again: its tunnel, policy and SA (the SA at once, with its tunnel).
        let done = c.apply_config(cfg(BASE), 20).unwrap();
        assert_eq!(
            done.tunnels,
            Counts {
                added: 0,
                removed: 1,
                changed: 0
            }
        );
        assert_eq!(
            done.policies,
            Counts {
                added: 0,
                removed: 1,
                changed: 0
            }
        );
        assert_eq!(done.sas.removed, 1);
        assert_eq!(c.tunnels().len(), 1);
        assert_eq!(c.policies().len(), 1);
        assert!(c.sa(0xc001, Direction::Inbound, 21).is_err());
        // No slot left for a new tunnel (the socket took it): refused before anything changes.
        let cap2 = |t: &str| t.replace("[control]\n", "[control]\ntunnel_capacity = 2\n");
        let mut full = control(&cap2(BASE));
        full.add_tunnel(
            crate::config::TunnelSpec {
                name: "sock",
                local: "203.0.113.1",
                remote: "203.0.113.7",
                mode: None,
                encap: None,
                udp_src_port: None,
                udp_dst_port: None,
                mtu: None,
            }
            .parse()
            .unwrap(),
        )
        .unwrap();
        let e = full
            .apply_config(cfg(&cap2(&with_c)), 30)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 tunnel(s) to add, 0 slot(s) free"), "{e}");
        assert_eq!(full.policies().len(), 1);
    }

    #[test]
    fn a_new_static_outbound_sa_is_saved_before_it_replaces_the_old_one() {
        let dir = std::env::temp_dir().join(format!("espd-reload-seq-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("gw.seq");
        let text = BASE.replace(
            "workers = 1\n",
            &format!("workers = 1\nstate_file = \"{}\"\n", state.display()),
        );
        let rotated = text
            .replace("0xa001", "0xa002")
            .replace(KEY_A, "7112233445566778899aabbccddeeff001020304");
        // Without the daemon's state thread: refused, nothing changes.
        let mut c = control(&text);
        let e = c.apply_config(cfg(&rotated), 5).unwrap_err().to_string();
        assert!(e.contains("outbound SA 0x0000a002: a static outbound SA is added only with a sequence state file"), "{e}");
        assert_eq!(c.outbound_spi("to-b"), Some(0xa001));

        let c0 = cfg(&text);
        let dp = std::sync::Arc::new(c0.build_dataplane(1).unwrap());
        let mut seqs =
            crate::control::seqstate::SeqStore::open(&c0.state_file, &c0, &dp, true).unwrap();
        let mut c = Control::new(&c0, dp);
        let (tx, rx) = std::sync::mpsc::channel::<SeqTrack>();
        let saver = std::thread::spawn(move || {
            for t in rx {
                let _ = t.reply.send(
                    seqs.track(t.spi, &t.keymat, t.seq)
                        .map_err(|e| e.to_string()),
                );
            }
        });
        c.set_seq_tracker(tx);
        let done = c.apply_config(cfg(&rotated), 10).unwrap();
        assert_eq!(
            done.sas,
            Counts {
                added: 1,
                removed: 1,
                changed: 0
            }
        );
        assert_eq!(c.outbound_spi("to-b"), Some(0xa002));
        assert!(c.sa(0xa001, Direction::Outbound, 11).is_err());
        // The new key is in the state file, and its counter may go up to the saved mark.
        let saved = std::fs::read_to_string(&state).unwrap();
        assert!(
            saved.lines().any(|l| l.starts_with("0x0000a002 ")
                && l.ends_with(&format!(" {}", crate::control::seqstate::BLOCK))),
            "{saved}"
        );
        {
            let g = crossbeam_epoch::pin();
            let sa = c.dp.sas.outbound(0, &g).unwrap();
            assert_eq!(sa.seq_handle().cap(), crate::control::seqstate::BLOCK);
        }
        drop(c);
        saver.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    const TUNNEL_C: &str = "[[tunnels]]\nname = \"to-c\"\nlocal = \"203.0.113.1\"\nremote = \"203.0.113.3\"\n\
         [[policies]]\nsrc = \"192.0.2.0/24\"\ndst = \"198.18.0.0/15\"\naction = \"protect\"\ntunnel = \"to-c\"\n\
         [[sas]]\ntunnel = \"to-c\"\ndirection = \"in\"\nspi = 0xc001\nkey = \"6112233445566778899aabbccddeeff001020304\"\n";

    /// A sequence-state thread that answers `answer` (`None`: drops the request unanswered).
    fn tracker(c: &mut Control, answer: Option<std::result::Result<(), &'static str>>) {
        let (tx, rx) = std::sync::mpsc::channel::<SeqTrack>();
        std::thread::spawn(move || {
            for t in rx {
                if let Some(a) = answer {
                    let _ = t.reply.send(a.map_err(str::to_string));
                }
            }
        });
        c.set_seq_tracker(tx);
    }

    /// What a test compares before and after a refused reload.
    fn running(c: &Control) -> (usize, Vec<Policy>, usize, Option<u32>) {
        (
            c.tunnels().len(),
            c.policies().to_vec(),
            c.stats().sas,
            c.outbound_spi("to-b"),
        )
    }

    #[test]
    fn the_spd_is_published_after_the_sas_it_needs() {
        let mut c = control(BASE);
        tracker(&mut c, Some(Ok(())));
        // A new tunnel with its policy and SAs; to-b's SAs rotated to new SPIs and keys.
        let new = format!(
            "{}{TUNNEL_C}[[sas]]\ntunnel = \"to-c\"\ndirection = \"out\"\nspi = 0xc002\nkey = \"8112233445566778899aabbccddeeff001020304\"\n",
            BASE.replace("0xa001", "0xa002")
                .replace(KEY_A, "9112233445566778899aabbccddeeff001020304")
                .replace("0xb001", "0xb002")
                .replace("a0b0c0d0", "a0b0c0d1")
        );
        let mut seen = false;
        let done = c
            .apply_config_observed(cfg(&new), 10, &mut |c| {
                seen = true;
                let g = crossbeam_epoch::pin();
                // Every tunnel the new SPD protects to has its outbound SA, the new inbound
                // SAs accept, and the old inbound one still does.
                for p in c.policies() {
                    if let PolicyAction::Protect(t) = p.action {
                        assert!(c.dp.sas.outbound(t, &g).is_some(), "tunnel {t}: no SA");
                    }
                }
                for spi in [0xb001, 0xb002, 0xc001] {
                    assert!(c.dp.sas.inbound(spi, &g).is_some(), "{spi:#x}");
                }
                assert_eq!(c.outbound_spi("to-c"), Some(0xc002));
                assert_eq!(c.outbound_spi("to-b"), Some(0xa002));
                Ok(())
            })
            .unwrap();
        assert!(seen, "the SPD was published");
        assert_eq!((done.tunnels.added, done.policies.added), (1, 1));
        assert_eq!((done.sas.added, done.sas.removed), (4, 2));
    }

    #[test]
    fn a_state_file_failure_refuses_the_reload_before_anything_changes() {
        let new = format!(
            "{}{TUNNEL_C}",
            BASE.replace("0xa001", "0xa002")
                .replace(KEY_A, "9112233445566778899aabbccddeeff001020304")
        );
        for (answer, says) in [
            (
                Some(Err("disk full")),
                "state file: disk full (nothing was changed)",
            ),
            (
                None,
                "the sequence state thread did not answer (nothing was changed)",
            ),
        ] {
            let mut c = control(BASE);
            tracker(&mut c, answer);
            let before = running(&c);
            let e = c.apply_config(cfg(&new), 10).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            assert!(e.contains("outbound SA 0x0000a002"), "{e}");
            assert_eq!(running(&c), before);
            // Nothing half-applied: the same file goes in once the state file works.
            tracker(&mut c, Some(Ok(())));
            c.apply_config(cfg(&new), 20).unwrap();
            assert_eq!(c.tunnels().len(), 2);
        }
    }

    #[test]
    fn a_key_does_not_move_to_another_spi() {
        let mut c = control(BASE);
        tracker(&mut c, Some(Ok(())));
        let before = running(&c);
        let e = c
            .apply_config(
                cfg(&format!("{}{TUNNEL_C}", BASE.replace("0xb001", "0xb002"))),
                10,
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("inbound SA 0x0000b002: its key is the key of inbound SA 0x0000b001, which this reload removes"),
            "{e}"
        );
        let e = c
            .apply_config(cfg(&BASE.replace("0xa001", "0xa002")), 10)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outbound SA 0x0000a002: its key is the key of outbound SA 0x0000a001, which this reload removes"),
            "{e}"
        );
        assert_eq!(running(&c), before);
    }

    #[test]
    fn inbound_table_slots_are_checked_first() {
        let small = BASE.replace("workers = 1\n", "workers = 1\nsa_capacity = 256\n");
        let mut c = control(&small);
        let before = running(&c);
        // The slot of an SA the reload removes: it accepts for the grace period.
        let e = c
            .apply_config(
                cfg(&format!(
                    "{}{TUNNEL_C}",
                    small
                        .replace("0xb001", "0xb101")
                        .replace("a0b0c0d0", "a0b0c0d1")
                )),
                10,
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("inbound SA 0x0000b101: its slot in the inbound SA table (SPI & 0xff, dataplane.sa_capacity 256) is taken by inbound SA 0x0000b001, which this reload removes"),
            "{e}"
        );
        // Two new SAs in one slot.
        let e = c
            .apply_config(
                cfg(&format!(
                    "{small}{}[[sas]]\ntunnel = \"to-c\"\ndirection = \"in\"\nspi = 0xc102\nkey = \"7712233445566778899aabbccddeeff001020304\"\n",
                    TUNNEL_C.replace("0xc001", "0xc002")
                )),
                10,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("is taken by inbound SA 0x0000c002;"), "{e}");
        assert_eq!(running(&c), before);
    }

    #[test]
    fn a_reload_stopped_while_applying_leaves_what_went_in_for_the_next() {
        let mut c = control(BASE);
        let new = format!("{BASE}{TUNNEL_C}");
        let e = c
            .apply_config_observed(cfg(&new), 10, &mut |_| {
                Err(ControlError::invalid("test", "injected"))
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("stopped while publishing the SPD: test: injected; applied before it: tunnels Counts { added: 1"),
            "{e}"
        );
        // The tunnel and its SA are in, the policy list is the one published.
        assert_eq!(c.tunnels().len(), 2);
        assert!(c.sa(0xc001, Direction::Inbound, 11).is_ok());
        assert_eq!(c.policies().len(), 1);
        // The next reload compares against what went in: only the policy is left to do.
        let done = c.apply_config(cfg(&new), 20).unwrap();
        assert_eq!(done.tunnels, Counts::default());
        assert_eq!(done.sas, Counts::default());
        assert_eq!(done.policies.added, 1);
        assert_eq!(c.policies().len(), 2);
    }
}
