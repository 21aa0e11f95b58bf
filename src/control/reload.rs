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
//! settings `dataplane.default_policy`, `dataplane.backend`, `dataplane.replay_window`,
//! `control.rekey_grace_ms`, `control.expired_linger_ms`. Removed inbound SAs keep accepting
//! for the rekey grace period. A new static outbound SA is tracked in the sequence state file
//! before its first packet ([`SeqTrack`]: a key the file does not know starts at 1, the file
//! knowing a key continues after its mark) and replaces the tunnel's outbound SA from the old
//! file in one pointer store, as a rekey does. Everything else needs a restart and is refused
//! by name, as are a changed tunnel (add one under a new name instead) and a new key under an
//! installed SPI (use a new SPI). A refused reload changes nothing: every check runs before
//! the first change.

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
    interface_changes("plain", &old.plain, &new.plain, &mut out);
    interface_changes("cipher", &old.cipher, &new.cipher, &mut out);
    out
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
        || a.replay_window != b.replay_window
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
                } else if op.replay_window != p.replay_window {
                    d.refused.push(format!(
                        "{what}.replay_window: cannot change under the same key"
                    ));
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

    /// The config the running state came from (the file last loaded).
    pub fn config_file(&self) -> &Path {
        &self.from_file.config.file
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

    /// Applies `new` against the config last applied: all checks first, then the changes.
    pub fn apply_config(&mut self, new: Config, now: u64) -> Result<Reloaded> {
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
        let plan = self.check(&d, &new)?;
        let mut done = Reloaded {
            file: new.file.clone(),
            settings: d.settings.clone(),
            ..Reloaded::default()
        };
        if let Err(e) = self.apply(&d, &new, plan, now, &mut done) {
            let msg = format!(
                "stopped with {e}; applied before it: tunnels {:?}, policies {:?}, SAs {:?}",
                done.tunnels, done.policies, done.sas
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

    /// Every check against the running state; changes nothing.
    fn check(&self, d: &Diff, new: &Config) -> Result<Plan> {
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
        for s in install.iter().chain(update.iter()) {
            let p = &s.params;
            let what = format!("{} SA {}", dir_name(p.direction), spi_str(p.spi));
            crate::sa::Sa::new(p, self.cores, 1)
                .map_err(|e| ControlError::invalid("config", format!("{what}: {e}")))?;
            let id = crate::sa::sa::key_id(&p.keymat);
            if let Some(&(dir, spi)) = self.keys.get(&id)
                && (spi, dir) != (p.spi, p.direction)
                && !removed.contains(&(spi, dir))
            {
                return Err(ControlError::invalid(
                    "config",
                    format!(
                        "{what}: its key is in use by {} SA {} (nothing was changed)",
                        dir_name(dir),
                        spi_str(spi)
                    ),
                ));
            }
            if let Some(&(dir, _)) = self.retired.get(&id)
                && dir != p.direction
            {
                return Err(ControlError::invalid(
                    "config",
                    format!("{what}: its key was used by an {} SA before", dir_name(dir)),
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
                        "{} SA {} was replaced over the control socket (another key); delete it or restart (nothing was changed)",
                        dir_name(p.direction),
                        spi_str(p.spi)
                    ),
                ));
            }
        }
        let mut outbound_tunnels = Vec::new();
        for s in &install {
            let p = &s.params;
            if p.direction == Direction::Outbound {
                let what = format!("outbound SA {}", spi_str(p.spi));
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
            if self.sas.contains_key(&(p.spi, p.direction)) {
                return Err(ControlError::invalid(
                    "config",
                    format!(
                        "{} SA {} is already installed (added over the control socket?); nothing was changed",
                        dir_name(p.direction),
                        spi_str(p.spi)
                    ),
                ));
            }
        }
        Ok(Plan {
            tunnels: add,
            install: install.into_iter().map(new_sa).collect(),
            update: update.into_iter().map(new_sa).collect(),
        })
    }

    /// The file's policies, resolved against the running tunnels, followed by the running
    /// policies that did not come from the old file.
    fn merged_policies(&self, old: &[NewPolicy], new: &[NewPolicy]) -> Result<Vec<Policy>> {
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
                p.resolve(&self.tunnels)
                    .map_err(|e| ControlError::from(e).within(format!("policies[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        list.extend(others);
        Ok(list)
    }

    fn apply(
        &mut self,
        d: &Diff,
        new: &Config,
        plan: Plan,
        now: u64,
        done: &mut Reloaded,
    ) -> Result<()> {
        // 1. Live settings.
        self.defaults = (new.backend, new.replay_window);
        self.grace_ns = new.control.rekey_grace_ms * 1_000_000;
        self.linger_ns = new.control.expired_linger_ms * 1_000_000;
        let default_changed = self.default_policy != new.default_policy;
        self.default_policy = new.default_policy;
        // 2. New tunnels (nothing uses them until their policies and SAs come).
        for t in plan.tunnels {
            self.add_tunnel(t)?;
            done.tunnels.added += 1;
        }
        // 3. The policy list, in one SPD publication. The old file's policies are matched
        // while its tunnels still run.
        if let Some(pn) = &d.policies {
            let po = named_policies(&self.from_file.config);
            self.policies = self.merged_policies(&po, pn)?;
            self.publish_spd();
            done.policies = d.policy_counts;
        } else if default_changed {
            self.publish_spd();
        }
        // 4. Changed SAs, each replaced in one store (same key: the counters continue); an
        // inbound SA gets the selectors of the policies now in force.
        for s in &plan.update {
            self.update_sa(s, now)?;
            done.sas.changed += 1;
        }
        // 5. New SAs: inbound first (the peer may use them at once), then outbound ones, each
        // tracked in the state file before it is published.
        for s in plan
            .install
            .iter()
            .filter(|s| s.direction == Direction::Inbound)
        {
            self.install_sa(s, now)?;
            done.sas.added += 1;
        }
        for s in plan
            .install
            .iter()
            .filter(|s| s.direction == Direction::Outbound)
        {
            if self.install_static_outbound(s, now)? {
                done.sas.removed += 1;
            }
            done.sas.added += 1;
        }
        // 6. SAs gone from the file: inbound ones keep accepting for the grace period.
        for &(spi, dir) in &d.sas_removed {
            if !self.sas.contains_key(&(spi, dir)) {
                continue;
            }
            match dir {
                Direction::Inbound => self.retiring.push((now.saturating_add(self.grace_ns), spi)),
                Direction::Outbound => self.remove_sa_because(spi, dir, "reload", now)?,
            }
            done.sas.removed += 1;
        }
        // 7. Tunnels gone from the file, with what still uses them.
        for name in &d.tunnels_removed {
            if self.tunnels.iter().any(|t| &t.name == name) {
                self.remove_tunnel(name)?;
                done.tunnels.removed += 1;
            }
        }
        Ok(())
    }
}

impl Control {
    /// Installs a static outbound SA from the file: tracked in the sequence state file first
    /// (its counter capped at the saved mark), then published, replacing the tunnel's current
    /// outbound SA (the old file's, checked) in one pointer store. Returns whether it replaced
    /// one.
    fn install_static_outbound(&mut self, s: &NewSa, now: u64) -> Result<bool> {
        let (t, sa) = self.build(s, now)?;
        self.check_key(&sa, None)?;
        self.resume_key(&sa);
        let tracker = self.from_file.seq.clone().ok_or_else(|| {
            ControlError::invalid("config", "no sequence state file to track the SA")
        })?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let stopped = || ControlError::invalid("config", "the sequence state thread has stopped");
        tracker
            .send(SeqTrack {
                spi: sa.spi,
                keymat: s.keymat.clone(),
                seq: sa.seq_handle(),
                reply: tx,
            })
            .map_err(|_| stopped())?;
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .map_err(|_| stopped())?
            .map_err(|e| ControlError::invalid("config", format!("state file: {e}")))?;
        let spi = sa.spi;
        let old = self.dp.sas.set_outbound(t, Some(sa))?;
        if let Some(o) = old {
            self.forget((o, Direction::Outbound));
            self.emit(Event::SaRemoved {
                spi: spi_str(o),
                direction: "outbound",
                reason: "reload",
                time: Self::time(now),
            });
        }
        self.register((spi, Direction::Outbound), t);
        {
            let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            c.sas_installed += 1;
            c.sas_removed += u64::from(old.is_some());
        }
        Ok(old.is_some())
    }
}

/// What [`Control::check`] found to do.
struct Plan {
    tunnels: Vec<NewTunnel>,
    install: Vec<NewSa>,
    update: Vec<NewSa>,
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
}
