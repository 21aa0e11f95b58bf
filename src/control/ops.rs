//! The control API: one method per operation, typed arguments and results, typed errors.
//! Every caller (the control socket through `api.rs`, the config file, the built-in IKE) goes
//! through these, so every SA takes the same path: key checks, timers, events,
//! make-before-break. `now` is the control clock (`crate::now_ns()`), passed in so tests can
//! drive time.

use crossbeam_epoch as epoch;

use super::events::{Event, MmCause, spi_str};
use super::mm::MmRecord;
use super::types::{
    IkeCounters, MainMode, MainModeInfo, Rekey, Rekeyed, SaInfo, SaList, SaTotals, Stats,
    TunnelInfo, dir_index,
};
use super::{Control, ControlError, Result, dir_name};
use crate::config::{NewPolicy, NewSa, NewTunnel};
use crate::sa::{Direction, Sa};

impl Control {
    /// Reserves a free inbound SPI (its table slot stays reserved for it).
    pub fn allocate_spi(&mut self) -> Result<u32> {
        Ok(self.dp.sas.allocate_spi()?)
    }

    /// Gives back an SPI from [`Control::allocate_spi`] that will not be installed.
    pub fn release_spi(&mut self, spi: u32) {
        if !self.sas.contains_key(&(spi, Direction::Inbound)) {
            self.dp.sas.release_spi(spi);
        }
    }

    /// Installs one SA. An outbound SA needs a tunnel without one (else use [`Control::rekey`]).
    pub fn install_sa(&mut self, sa: &NewSa, now: u64) -> Result<u32> {
        let (t, s) = self.build(sa, now)?;
        let spi = s.spi;
        self.install(t, s)?;
        Ok(spi)
    }

    /// Installs SAs in order and stops at the first error ([`ControlError::Batch`] says which
    /// and how many went in before it). An item can be the caller's own error (a spec that did
    /// not parse): the batch stops there the same way.
    pub fn install_sas<I>(&mut self, sas: I, now: u64) -> Result<usize>
    where
        I: IntoIterator<Item = Result<NewSa>>,
    {
        let mut installed = 0;
        for (index, sa) in sas.into_iter().enumerate() {
            if let Err(e) = sa.and_then(|sa| self.install_sa(&sa, now)) {
                return Err(ControlError::Batch {
                    index,
                    installed,
                    source: Box::new(e),
                });
            }
            installed += 1;
        }
        Ok(installed)
    }

    /// Replaces the installed SA with the same SPI and direction. With the same key the new SA
    /// continues the old one's sequence counter, replay window and consumed lifetime
    /// (RFC 4106 §3.1, RFC 4303 §3.4.3); inbound, the SA is replaced in one store.
    pub fn update_sa(&mut self, sa: &NewSa, now: u64) -> Result<u32> {
        let (t, p) = self.params(sa)?;
        let key = (p.spi, p.direction);
        if sa.state.is_some() {
            return Err(ControlError::invalid(
                "state",
                "an update continues the installed SA's state; to import state, delete the SA and add it with `state`",
            ));
        }
        let Some(&old_t) = self.sas.get(&key) else {
            return Err(ControlError::NotInstalled {
                spi: key.0,
                direction: key.1,
            });
        };
        if old_t != t {
            return Err(ControlError::invalid(
                "tunnel",
                format!(
                    "{} belongs to tunnel `{}`; an update cannot move it",
                    spi_str(p.spi),
                    self.tunnel_name(old_t).unwrap_or_default()
                ),
            ));
        }
        let g = epoch::pin();
        let prev = self.lookup(key, &g).ok_or(ControlError::NotInstalled {
            spi: key.0,
            direction: key.1,
        })?;
        let s = Sa::successor(&p, self.cores, now, prev)?;
        // A new key starts the counters afresh: the old SA's go to its tunnel's totals. With
        // the same key the successor carries them on; what the old one counts after the copy
        // goes to the totals, so a tunnel's series never step back.
        let carried = if s.key_id == prev.key_id {
            SaTotals::of(&s)
        } else {
            SaTotals::default()
        };
        drop(g);
        self.check_key(&s, Some(key.0))?;
        self.resume_key(&s);
        // An SA waiting for removal after a hard expiry lives on under its new limits.
        self.lingering.retain(|&(_, spi, d)| (spi, d) != key);
        match s.direction {
            Direction::Inbound => {
                self.bank_beyond(Some(key), carried, || self.dp.sas.replace_inbound(s))?
            }
            Direction::Outbound => {
                self.bank_beyond(Some(key), carried, || self.dp.sas.set_outbound(t, Some(s)))?;
            }
        }
        self.forget(key);
        self.register(key, t);
        Ok(key.0)
    }

    /// Removes an SA at once (event `sa_removed`, reason `deleted`).
    pub fn remove_sa(&mut self, spi: u32, direction: Direction, now: u64) -> Result<()> {
        self.remove_sa_because(spi, direction, "deleted", now)
    }

    /// Removes an SA at once; `reason` goes into the `sa_removed` event (`peer_delete`,
    /// `dpd`, ...).
    pub fn remove_sa_because(
        &mut self,
        spi: u32,
        direction: Direction,
        reason: &'static str,
        now: u64,
    ) -> Result<()> {
        self.remove(spi, direction)?;
        self.emit(Event::SaRemoved {
            spi: spi_str(spi),
            direction: dir_name(direction),
            reason,
            time: Self::time(now),
        });
        Ok(())
    }

    /// One installed SA with its counters and its transferable state.
    pub fn sa(&self, spi: u32, direction: Direction, now: u64) -> Result<SaInfo> {
        self.sa_info(spi, direction, now, true)
            .ok_or(ControlError::NotInstalled { spi, direction })
    }

    /// The installed SAs (of one direction or all), the first `limit` of them in SPI order.
    pub fn sa_list(&self, direction: Option<Direction>, limit: usize, now: u64) -> SaList {
        let keys = self.keys(direction);
        SaList {
            total: keys.len(),
            sas: keys
                .into_iter()
                .take(limit)
                .filter_map(|(s, d)| self.sa_info(s, d, now, false))
                .collect(),
        }
    }

    /// Removes every SA (of one direction or all); returns how many.
    pub fn flush_sas(&mut self, direction: Option<Direction>) -> usize {
        self.keys(direction)
            .into_iter()
            .filter(|&(s, d)| self.remove(s, d).is_ok())
            .count()
    }

    /// Adds a tunnel in the first free slot; returns its index.
    pub fn add_tunnel(&mut self, tunnel: NewTunnel) -> Result<u32> {
        tunnel.check()?;
        if self.tunnels.iter().any(|t| t.name == tunnel.name) {
            return Err(ControlError::TunnelExists(tunnel.name));
        }
        let index = free_tunnel_slot(&self.tunnels, self.tunnel_capacity)
            .ok_or(ControlError::NoTunnelSlot(self.tunnel_capacity))?;
        self.tunnels.push(tunnel.into_tunnel(index));
        self.sync_tunnel_names();
        Ok(index)
    }

    /// Publishes `sa` as tunnel `t`'s outbound SA in one pointer store (the next packet uses
    /// it: the rekey's and the reload's swap). The SA it replaces is unregistered and its
    /// counts go to the tunnel's totals. Returns the SPI replaced.
    pub(super) fn swap_outbound(&mut self, t: u32, sa: Sa) -> Result<Option<u32>> {
        let spi = sa.spi;
        let current = {
            let g = epoch::pin();
            self.dp.sas.outbound(t, &g).map(|s| s.spi)
        };
        let old = self.bank(current.map(|s| (s, Direction::Outbound)), || {
            self.dp.sas.set_outbound(t, Some(sa))
        })?;
        if let Some(o) = old {
            self.forget((o, Direction::Outbound));
        }
        self.register((spi, Direction::Outbound), t);
        Ok(old)
    }

    /// Removes a tunnel with its SAs and its protect policies.
    pub fn remove_tunnel(&mut self, name: &str) -> Result<()> {
        let t = self
            .tunnels
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.index)
            .ok_or_else(|| ControlError::NoTunnel {
                field: "name",
                name: name.to_string(),
            })?;
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
            .retain(|p| p.action != crate::sa::PolicyAction::Protect(t));
        self.tunnels.retain(|x| x.index != t);
        self.sync_tunnel_names();
        self.publish_spd();
        Ok(())
    }

    /// Appends one policy (the SPD is rebuilt and published); returns its index.
    pub fn add_policy(&mut self, policy: &NewPolicy) -> Result<usize> {
        let p = policy.resolve(&self.tunnels)?;
        self.policies.push(p);
        self.publish_spd();
        Ok(self.policies.len() - 1)
    }

    /// Appends policies in order with one SPD rebuild, all or none (an error names
    /// `policies[i]`); returns the index of the first.
    pub fn add_policies(&mut self, policies: &[NewPolicy]) -> Result<usize> {
        let built = policies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.resolve(&self.tunnels)
                    .map_err(|e| ControlError::from(e).within(format!("policies[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        let first = self.policies.len();
        self.policies.extend(built);
        self.publish_spd();
        Ok(first)
    }

    /// Removes the policy at `index` (later ones move up).
    pub fn remove_policy(&mut self, index: usize) -> Result<()> {
        if index >= self.policies.len() {
            return Err(ControlError::invalid(
                "index",
                format!("{index} is out of range ({} policies)", self.policies.len()),
            ));
        }
        self.policies.remove(index);
        self.publish_spd();
        Ok(())
    }

    /// The policies in order (first match wins).
    pub fn policies(&self) -> &[crate::sa::policy::Policy] {
        &self.policies
    }

    /// The SPI of the tunnel's outbound SA, if it has one.
    pub fn outbound_spi(&self, tunnel: &str) -> Option<u32> {
        let t = self.tunnels.iter().find(|t| t.name == tunnel)?.index;
        let g = epoch::pin();
        self.dp.sas.outbound(t, &g).map(|s| s.spi)
    }

    /// Connects the built-in IKE (its commands and status for `ike_*` requests).
    pub fn attach_ike(&mut self, link: crate::ike::types::IkeLink) {
        self.ike = Some(link);
    }

    /// The built-in IKE's peers (empty without one).
    pub fn ike_status(&self) -> Vec<crate::ike::types::PeerStatus> {
        self.ike
            .as_ref()
            .and_then(|l| l.status.lock().ok().map(|s| s.peers.clone()))
            .unwrap_or_default()
    }

    /// The built-in IKE's counters (zero without one): what its engine dropped, answered
    /// again, retransmitted, refused by the responder limits and took for replays, and the
    /// datagrams its input queue had no room for.
    pub fn ike_counters(&self) -> IkeCounters {
        let Some(l) = self.ike.as_ref() else {
            return IkeCounters::default();
        };
        IkeCounters {
            engine: l.status.lock().map(|s| s.counters).unwrap_or_default(),
            rx_queue_full: l.rx_dropped.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Asks the built-in IKE to set up (`initiate`) or tear down the tunnel's SAs.
    pub fn ike_command(&mut self, tunnel: &str, initiate: bool) -> Result<()> {
        let link = self
            .ike
            .as_ref()
            .ok_or_else(|| ControlError::invalid("tunnel", "no [[ike.peers]] are configured"))?;
        let p = link.peers.iter().position(|t| t == tunnel).ok_or_else(|| {
            ControlError::invalid("tunnel", format!("no IKE peer for tunnel `{tunnel}`"))
        })?;
        let cmd = if initiate {
            crate::ike::types::Command::Initiate(p)
        } else {
            crate::ike::types::Command::Terminate(p)
        };
        link.commands
            .send(cmd)
            .map_err(|_| ControlError::invalid("tunnel", "the IKE thread has stopped"))
    }

    /// The tunnels.
    pub fn tunnels(&self) -> &[crate::config::Tunnel] {
        &self.tunnels
    }

    /// Make-before-break: installs `inbound` (if given), makes `outbound` the tunnel's SA in one
    /// pointer store, and retires `retire_inbound` after the grace period. Everything is
    /// checked before anything changes: a refused rekey changes nothing.
    pub fn rekey(&mut self, r: Rekey, now: u64) -> Result<Rekeyed> {
        let t = self
            .tunnels
            .iter()
            .find(|x| x.name == r.tunnel)
            .map(|x| x.index)
            .ok_or_else(|| ControlError::NoTunnel {
                field: "tunnel",
                name: r.tunnel.clone(),
            })?;
        if r.outbound.tunnel != r.tunnel || r.outbound.direction != Direction::Outbound {
            return Err(ControlError::invalid(
                "outbound",
                "must be an outbound SA of the same tunnel",
            ));
        }
        if let Some(i) = &r.inbound
            && i.direction != Direction::Inbound
        {
            return Err(ControlError::invalid("inbound.direction", "must be in"));
        }
        if let Some(rs) = r.retire_inbound
            && !self.sas.contains_key(&(rs, Direction::Inbound))
        {
            return Err(ControlError::invalid(
                "retire_inbound",
                format!("{} is not installed", spi_str(rs)),
            ));
        }
        let grace_ns = match r.grace_ms {
            Some(g) => crate::config::check_ms(g)
                .map_err(|e| ControlError::invalid("grace_ms", e))?
                .saturating_mul(1_000_000),
            None => self.grace_ns,
        };
        // Everything is validated and built before anything changes.
        let new_in = r
            .inbound
            .as_ref()
            .map(|s| self.build(s, now))
            .transpose()
            .map_err(|e| e.within("inbound"))?;
        let (_, new_out) = self
            .build(&r.outbound, now)
            .map_err(|e| e.within("outbound"))?;
        if self.sas.contains_key(&(new_out.spi, Direction::Outbound)) {
            return Err(ControlError::invalid(
                "outbound.spi",
                format!("{} is already installed", spi_str(new_out.spi)),
            ));
        }
        self.check_key(&new_out, None)
            .map_err(|e| e.within("outbound"))?;
        self.resume_key(&new_out);
        // 1. The new inbound SA first: the peer may switch to it at any moment.
        if let Some((ti, s)) = new_in {
            self.install(ti, s).map_err(|e| e.within("inbound"))?;
        }
        // 2. Swap the outbound pointer: the next packet uses the new SA.
        let new_spi = new_out.spi;
        let old = self.swap_outbound(t, new_out)?;
        // 3. The old inbound SA keeps accepting packets in flight for the grace period.
        if let Some(rs) = r.retire_inbound {
            self.retiring.push((now.saturating_add(grace_ns), rs));
        }
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rekeys += 1;
        self.emit(Event::Rekeyed {
            tunnel: r.tunnel,
            old_spi: old.map(spi_str),
            new_spi: spi_str(new_spi),
            retire_inbound: r.retire_inbound.map(spi_str),
            time: Self::time(now),
        });
        Ok(Rekeyed {
            old_spi: old,
            new_spi,
        })
    }

    /// Records a main mode (phase 1 SA): its lifetime is watched from `now` (13885 `lifetime`).
    pub fn main_mode_up(&mut self, mm: MainMode, now: u64) -> Result<()> {
        if mm.lifetime_s == 0 {
            return Err(ControlError::invalid(
                "lifetime_s",
                "must be greater than 0",
            ));
        }
        self.mm.add(MmRecord {
            icookie: mm.icookie,
            rcookie: mm.rcookie,
            peer: mm.peer,
            lifetime_s: mm.lifetime_s,
            lifetime_kb: mm.lifetime_kb,
            children: mm.children,
            created_ns: now,
        })
    }

    /// Adds a child SA to a recorded main mode (a quick mode completed under it).
    pub fn main_mode_add_child(
        &mut self,
        icookie: u64,
        rcookie: u64,
        child: super::types::Child,
    ) -> Result<()> {
        self.mm
            .add_child(icookie, rcookie, child)
            .ok_or(ControlError::NoMainMode { icookie, rcookie })
    }

    /// A main mode ended before its lifetime (`cause`: the peer's delete, or an
    /// INITIAL-CONTACT from a new one): 13885. Its children keep forwarding (IKEv1).
    pub fn main_mode_delete(
        &mut self,
        icookie: u64,
        rcookie: u64,
        cause: MmCause,
        now: u64,
    ) -> Result<MmRecord> {
        let rec = self
            .mm
            .remove(icookie, rcookie)
            .ok_or(ControlError::NoMainMode { icookie, rcookie })?;
        self.emit(Event::mm_expired(
            cause,
            rec.peer,
            rec.icookie,
            rec.rcookie,
            &rec.children,
            Self::time(now),
        ));
        Ok(rec)
    }

    /// DPD gave up on a main mode: it is forgotten without 13885 (the event is 13886
    /// `mm_dead`). Its children are not touched here (the IKE's `dpd_action` decides).
    pub fn main_mode_lost(
        &mut self,
        icookie: u64,
        rcookie: u64,
        tunnel: String,
        now: u64,
    ) -> Result<MmRecord> {
        let rec = self
            .mm
            .remove(icookie, rcookie)
            .ok_or(ControlError::NoMainMode { icookie, rcookie })?;
        self.emit(super::events::mm_dead(
            tunnel,
            rec.peer,
            icookie,
            rcookie,
            Self::time(now),
        ));
        Ok(rec)
    }

    /// The recorded main modes with their remaining lifetime.
    pub fn main_modes(&self, now: u64) -> Vec<MainModeInfo> {
        self.mm
            .list()
            .iter()
            .map(|r| MainModeInfo {
                record: r.clone(),
                expires_in_s: r.expires_ns().saturating_sub(now) as f64 / 1e9,
            })
            .collect()
    }

    /// The tunnels with their SAs and their counters summed over their SAs, removed and
    /// replaced ones included (`tunnel_list`).
    pub fn tunnel_list(&self) -> Vec<TunnelInfo> {
        use std::collections::BTreeMap;
        let mut inbound: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let mut live: BTreeMap<u32, [SaTotals; 2]> = BTreeMap::new();
        // Under the totals' lock: no SA moves from live to banked while we sum.
        let tt = self.tunnel_totals.lock().unwrap_or_else(|e| e.into_inner());
        let g = epoch::pin();
        for (&(spi, d), &t) in &self.sas {
            if d == Direction::Inbound {
                inbound.entry(t).or_default().push(spi);
            }
            if let Some(sa) = self.lookup((spi, d), &g) {
                live.entry(t).or_default()[dir_index(d)] += SaTotals::of(sa);
            }
        }
        self.tunnels
            .iter()
            .map(|t| {
                let mut sum = tt.removed.get(&t.index).copied().unwrap_or_default();
                if let Some(l) = live.get(&t.index) {
                    sum[0] += l[0];
                    sum[1] += l[1];
                }
                TunnelInfo {
                    name: t.name.clone(),
                    index: t.index,
                    local: t.endpoints.local,
                    remote: t.endpoints.remote,
                    mode: match t.mode {
                        crate::sa::Mode::Tunnel => "tunnel",
                        crate::sa::Mode::Transport => "transport",
                    },
                    encap: t.encap.map_or("none".into(), |e| {
                        format!("udp:{}:{}", e.src_port, e.dst_port)
                    }),
                    mtu: t.mtu,
                    outbound_spi: self.dp.sas.outbound(t.index, &g).map(|s| spi_str(s.spi)),
                    inbound_spis: inbound
                        .get(&t.index)
                        .map(|v| v.iter().map(|s| spi_str(*s)).collect())
                        .unwrap_or_default(),
                    inbound: sum[0],
                    outbound: sum[1],
                }
            })
            .collect()
    }

    /// Table sizes and the control thread's counters.
    pub fn stats(&self) -> Stats {
        let sas_inbound = self
            .sas
            .keys()
            .filter(|(_, d)| *d == Direction::Inbound)
            .count();
        Stats {
            sas_inbound,
            sas_outbound: self.sas.len() - sas_inbound,
            workers: self.cores,
            uptime_s: crate::now_ns().saturating_sub(self.started_ns) as f64 / 1e9,
            ike_peers_up: self
                .ike_status()
                .iter()
                .filter(|p| p.state == "established")
                .count(),
            dataplane: self
                .core_stats
                .as_deref()
                .map(super::types::DataplaneStats::of),
            sas: self.sas.len(),
            tunnels: self.tunnels.len(),
            policies: self.policies.len(),
            main_modes: self.mm.list().len(),
            control: self
                .counters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn sa_info(&self, spi: u32, d: Direction, now: u64, with_state: bool) -> Option<SaInfo> {
        let t = *self.sas.get(&(spi, d))?;
        let g = epoch::pin();
        let sa = self.lookup((spi, d), &g)?;
        let (packets, bytes) = sa.totals();
        let (replay_failures, integrity_failures) = sa.failures();
        let hard = sa
            .lifetime
            .deadlines()
            .1
            .min(sa.lifetime.use_deadlines().map_or(u64::MAX, |d| d.1));
        Some(SaInfo {
            lifetime_left_s: (hard != u64::MAX).then(|| hard.saturating_sub(now) as f64 / 1e9),
            replay_failures,
            integrity_failures,
            spi,
            direction: d,
            tunnel: self.tunnel_name(t),
            mode: sa.mode,
            key_bits: sa.key_bits,
            backend: sa.backend,
            esn: sa.esn,
            packets,
            bytes,
            last_seq: match d {
                Direction::Outbound => Some(sa.last_seq()),
                Direction::Inbound => sa.replay.as_ref().map(|r| r.top()),
            },
            lifetime: *sa.lifetime.limits(),
            consumed: sa.lifetime.consumed(packets, bytes, now),
            expired: sa.lifetime.is_expired(),
            age_s: now.saturating_sub(sa.lifetime.installed_ns()) as f64 / 1e9,
            state: with_state.then(|| sa.state(now)),
        })
    }
}

/// The first tunnel index below `capacity` that no tunnel of `tunnels` holds: the slot
/// [`Control::add_tunnel`] gives a new tunnel.
pub(super) fn free_tunnel_slot(tunnels: &[crate::config::Tunnel], capacity: u32) -> Option<u32> {
    (0..capacity).find(|i| !tunnels.iter().any(|t| t.index == *i))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;

    fn control() -> Control {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gw-a.toml"))
                .unwrap();
        let cfg = Config::parse(std::path::Path::new("gw-a.toml"), &text).unwrap();
        let dp = Arc::new(cfg.build_dataplane(1).unwrap());
        Control::new(&cfg, dp)
    }

    #[test]
    fn watchers_get_typed_events_and_errors_are_typed() {
        let mut c = control();
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        c.watch(tx);
        let list = c.sa_list(None, 10, 1);
        assert!(list.total >= 2, "the example has static SAs");
        let first = &list.sas[0];
        c.remove_sa(first.spi, first.direction, 5).unwrap();
        match rx.try_recv() {
            Ok(Event::SaRemoved { reason, .. }) => assert_eq!(reason, "deleted"),
            other => panic!("expected sa_removed, got {other:?}"),
        }
        let e = c.remove_sa(first.spi, first.direction, 6).unwrap_err();
        assert_eq!(
            e,
            ControlError::NotInstalled {
                spi: first.spi,
                direction: first.direction
            }
        );
        assert_eq!(e.field(), "spi");
        let e = c
            .main_mode_delete(1, 2, MmCause::PeerDelete, 7)
            .unwrap_err();
        assert_eq!(e.field(), "icookie/rcookie");
        assert!(rx.try_recv().is_err(), "a refused call emits nothing");
    }
}
