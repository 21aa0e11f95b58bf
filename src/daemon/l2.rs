//! The link layer around the gateway: its own MAC addresses (config, else sysfs, then kept
//! current from link notifications) and the next hops' MACs from the kernel's neighbour table
//! over rtnetlink: one RTM_GETNEIGH dump at start, then a thread ("espd-neigh") reading the
//! RTNLGRP_NEIGH and RTNLGRP_LINK notifications, so a changed MAC (a failover, a gratuitous
//! ARP) reaches the workers within milliseconds. Everything is published through [`L2State`]
//! (atomics the workers read once per batch); nothing here runs on the packet path.

use std::net::{IpAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use crate::config::Config;
use crate::datapath::worker::{L2State, pack_mac, unpack_mac};
use crate::wire::ethernet::Mac;

/// Why the neighbour table cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    #[error("neighbour table: {what}: {source}")]
    Netlink {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("neighbour table: the kernel refused the dump (errno {0})")]
    Refused(i32),
}

fn nl(what: &'static str) -> impl FnOnce(std::io::Error) -> L2Error {
    move |source| L2Error::Netlink { what, source }
}

/// What the neighbour thread did, for the logs and the operator.
#[derive(Debug, Default)]
pub struct L2Counters {
    /// Neighbour and link messages that concerned a watched next hop or interface.
    pub updates: AtomicU64,
    /// Times a watched MAC (next hop or own) changed value.
    pub changes: AtomicU64,
    /// Resolutions asked of the kernel for a next hop without a usable entry.
    pub resolutions: AtomicU64,
    /// Notifications lost to a full socket buffer (ENOBUFS); each is followed by a new dump.
    pub overruns: AtomicU64,
    /// Messages that did not parse, and receive errors.
    pub errors: AtomicU64,
}

fn mac_text(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn read_mac(iface: &str) -> Option<Mac> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).ok()?;
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

fn read_ifindex(iface: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// One change the kernel reported, reduced to what the gateway needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// `ip` on link `ifindex` has a usable entry at `mac`.
    Neighbour { ifindex: u32, ip: IpAddr, mac: Mac },
    /// `ip` on link `ifindex` has no usable entry any more (deleted, INCOMPLETE, FAILED).
    Unresolved { ifindex: u32, ip: IpAddr },
    /// Link `ifindex`'s own address.
    Link { ifindex: u32, mac: Mac },
}

/// What one datagram from a route netlink socket says.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub changes: Vec<Change>,
    /// NLMSG_DONE: the end of a dump.
    pub done: bool,
    /// An NLMSG_ERROR with a non-zero code (negative errno).
    pub error: Option<i32>,
    /// Messages that did not parse (skipped, counted).
    pub malformed: u64,
}

fn neighbour_change(m: &NeighbourMessage, deleted: bool) -> Option<Change> {
    let ip = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(IpAddr::V4(*v)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => Some(IpAddr::V6(*v)),
        _ => None,
    })?;
    let ifindex = m.header.ifindex;
    let mac = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => <Mac>::try_from(l.as_slice()).ok(),
        _ => None,
    });
    // As `ip neigh` shows them: an entry without a resolved address is INCOMPLETE or FAILED;
    // every other state (REACHABLE, STALE, DELAY, PROBE, PERMANENT, NOARP) holds a usable one.
    let usable = !deleted
        && !matches!(
            m.header.state,
            NeighbourState::Incomplete | NeighbourState::Failed
        );
    Some(match mac {
        Some(mac) if usable => Change::Neighbour { ifindex, ip, mac },
        _ => Change::Unresolved { ifindex, ip },
    })
}

fn link_change(m: &LinkMessage) -> Option<Change> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(l) => Some(Change::Link {
            ifindex: m.header.index,
            mac: <Mac>::try_from(l.as_slice()).ok()?,
        }),
        _ => None,
    })
}

/// Parses every netlink message in `buf` (a dump part or a notification). Never panics: a
/// message that does not parse is skipped and counted; a bad length ends the datagram.
pub(crate) fn parse(buf: &[u8]) -> Parsed {
    let mut p = Parsed::default();
    let mut off = 0usize;
    while buf.len().saturating_sub(off) >= 16 {
        let rest = &buf[off..];
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < 16 || len > rest.len() {
            p.malformed += 1;
            break;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len]) {
            Ok(msg) => match msg.payload {
                NetlinkPayload::Done(_) => p.done = true,
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        p.error = Some(code.get());
                    }
                }
                NetlinkPayload::InnerMessage(m) => {
                    let c = match &m {
                        RouteNetlinkMessage::NewNeighbour(n) => neighbour_change(n, false),
                        RouteNetlinkMessage::DelNeighbour(n) => neighbour_change(n, true),
                        RouteNetlinkMessage::NewLink(l) => link_change(l),
                        _ => None,
                    };
                    p.changes.extend(c);
                }
                _ => {}
            },
            Err(_) => p.malformed += 1,
        }
        off += len.next_multiple_of(4);
    }
    p
}

/// One next hop: where its MAC comes from and which slot of [`L2State`] it fills.
struct Hop {
    iface: String,
    ifindex: u32,
    ip: Option<IpAddr>,
    /// The config's `next_hop_mac`: the kernel's table is not consulted.
    fixed: Option<Mac>,
    /// `now_ns` of the last resolution asked for (at most one per [`PROVOKE_EVERY_NS`]).
    last_provoke: AtomicU64,
}

/// One own interface: its MAC follows link notifications unless the config fixes it.
struct Own {
    iface: String,
    ifindex: u32,
    fixed: bool,
}

const PROVOKE_EVERY_NS: u64 = 100_000_000;

/// What the neighbour thread and the daemon's loop share.
struct Watch {
    state: Arc<L2State>,
    plain: Hop,
    cipher: Hop,
    own_plain: Own,
    own_cipher: Own,
    counters: L2Counters,
}

impl Watch {
    /// Own MACs (config, else sysfs) and the next hops to watch (the config's fixed MACs
    /// already in place; the cipher side's next hop defaults to the first tunnel's remote end).
    fn new(cfg: &Config) -> Watch {
        let state = Arc::new(L2State::default());
        let own = |i: &crate::config::Interface, slot: &AtomicU64| {
            let mac = i.mac.or_else(|| read_mac(&i.name)).unwrap_or_default();
            slot.store(pack_mac(&mac), Ordering::Release);
            Own {
                iface: i.name.clone(),
                ifindex: read_ifindex(&i.name).unwrap_or(0),
                fixed: i.mac.is_some(),
            }
        };
        let hop = |i: &crate::config::Interface, ip: Option<IpAddr>, slot: &AtomicU64| {
            if let Some(m) = i.next_hop_mac {
                slot.store(pack_mac(&m), Ordering::Release);
            }
            Hop {
                iface: i.name.clone(),
                ifindex: read_ifindex(&i.name).unwrap_or(0),
                ip,
                fixed: i.next_hop_mac,
                last_provoke: AtomicU64::new(0),
            }
        };
        let cipher_hop = cfg
            .cipher
            .next_hop
            .or_else(|| cfg.tunnels.first().map(|t| t.endpoints.remote));
        Watch {
            own_plain: own(&cfg.plain, &state.plain_mac),
            own_cipher: own(&cfg.cipher, &state.cipher_mac),
            plain: hop(&cfg.plain, cfg.plain.next_hop, &state.plain_next_hop),
            cipher: hop(&cfg.cipher, cipher_hop, &state.cipher_next_hop),
            counters: L2Counters::default(),
            state,
        }
    }

    fn hops(&self) -> [(&Hop, &AtomicU64); 2] {
        [
            (&self.plain, &self.state.plain_next_hop),
            (&self.cipher, &self.state.cipher_next_hop),
        ]
    }

    /// Makes the kernel resolve `hop`'s address, as the daemon always has: a one-byte datagram
    /// to the discard port (the kernel queues it and sends ARP / neighbour solicitation).
    fn provoke(&self, hop: &Hop) {
        let Some(ip) = hop.ip else { return };
        let now = crate::now_ns();
        let last = hop.last_provoke.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < PROVOKE_EVERY_NS {
            return;
        }
        hop.last_provoke.store(now, Ordering::Relaxed);
        self.counters.resolutions.fetch_add(1, Ordering::Relaxed);
        let bind = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        if let Ok(s) = UdpSocket::bind(bind) {
            let _ = s.send_to(&[0], (ip, 9));
        }
        tracing::debug!(%ip, iface = %hop.iface, "next hop unresolved: asked the kernel to resolve it");
    }

    fn apply(&self, c: &Change) {
        match *c {
            Change::Neighbour { ifindex, ip, mac } => {
                for (hop, slot) in self.hops() {
                    if hop.fixed.is_some() || hop.ip != Some(ip) || hop.ifindex != ifindex {
                        continue;
                    }
                    self.counters.updates.fetch_add(1, Ordering::Relaxed);
                    let old = unpack_mac(slot.swap(pack_mac(&mac), Ordering::AcqRel));
                    if old != Some(mac) {
                        self.counters.changes.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%ip, iface = %hop.iface, mac = %mac_text(&mac),
                            previous = %old.map(|m| mac_text(&m)).unwrap_or_else(|| "none".into()),
                            "next hop's MAC");
                    }
                }
            }
            Change::Unresolved { ifindex, ip } => {
                // The workers keep the last known MAC (the entry may come back unchanged).
                for (hop, _) in self.hops() {
                    if hop.fixed.is_none() && hop.ip == Some(ip) && hop.ifindex == ifindex {
                        self.counters.updates.fetch_add(1, Ordering::Relaxed);
                        self.provoke(hop);
                    }
                }
            }
            Change::Link { ifindex, mac } => {
                for (own, slot) in [
                    (&self.own_plain, &self.state.plain_mac),
                    (&self.own_cipher, &self.state.cipher_mac),
                ] {
                    if own.fixed || own.ifindex != ifindex {
                        continue;
                    }
                    self.counters.updates.fetch_add(1, Ordering::Relaxed);
                    let old = unpack_mac(slot.swap(pack_mac(&mac), Ordering::AcqRel));
                    if old != Some(mac) {
                        self.counters.changes.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(iface = %own.iface, mac = %mac_text(&mac), "own MAC");
                    }
                }
            }
        }
    }

    /// Asks for resolution of every next hop still unknown; true when both are known.
    fn check(&self) -> bool {
        let mut known = true;
        for (hop, slot) in self.hops() {
            if unpack_mac(slot.load(Ordering::Acquire)).is_none() {
                known = false;
                self.provoke(hop);
            }
        }
        known
    }

    /// Dumps the kernel's neighbour table (on a socket of its own) and applies it.
    fn dump(&self) -> Result<(), L2Error> {
        let mut s = Socket::new(NETLINK_ROUTE).map_err(nl("opening a NETLINK_ROUTE socket"))?;
        s.bind_auto().map_err(nl("binding the dump socket"))?;
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_DUMP | NLM_F_REQUEST;
        let mut req = NetlinkMessage::new(
            hdr,
            NetlinkPayload::from(RouteNetlinkMessage::GetNeighbour(
                NeighbourMessage::default(),
            )),
        );
        req.finalize();
        let mut out = vec![0u8; req.header.length as usize];
        req.serialize(&mut out);
        s.send(&out, 0).map_err(nl("sending RTM_GETNEIGH"))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = s
                .recv(&mut &mut buf[..], 0)
                .map_err(nl("reading the neighbour dump"))?;
            let p = parse(&buf[..n.min(buf.len())]);
            self.counters
                .errors
                .fetch_add(p.malformed, Ordering::Relaxed);
            for c in &p.changes {
                self.apply(c);
            }
            if let Some(e) = p.error {
                return Err(L2Error::Refused(e));
            }
            if p.done || n == 0 {
                return Ok(());
            }
        }
    }

    /// The subscription socket: neighbour and link notifications, a 100 ms receive timeout
    /// (so the thread sees its stop flag), a 1 MiB buffer.
    fn subscribe() -> Result<Socket, L2Error> {
        let mut s = Socket::new(NETLINK_ROUTE).map_err(nl("opening a NETLINK_ROUTE socket"))?;
        s.bind_auto()
            .map_err(nl("binding the notification socket"))?;
        for g in [libc::RTNLGRP_NEIGH, libc::RTNLGRP_LINK] {
            s.add_membership(g)
                .map_err(nl("joining RTNLGRP_NEIGH / RTNLGRP_LINK"))?;
        }
        crate::sys::set_rcvbuf(&s, 1 << 20);
        crate::sys::set_recv_timeout(&s, Duration::from_millis(100))
            .map_err(nl("setting SO_RCVTIMEO"))?;
        Ok(s)
    }

    /// The thread's loop: notifications until `stop`; after a lost notification (ENOBUFS), a
    /// new dump.
    fn follow(&self, s: &Socket, stop: &AtomicBool) {
        let mut buf = vec![0u8; 1 << 16];
        while !stop.load(Ordering::Relaxed) {
            match s.recv(&mut &mut buf[..], 0) {
                Ok(n) => {
                    let p = parse(&buf[..n.min(buf.len())]);
                    self.counters
                        .errors
                        .fetch_add(p.malformed, Ordering::Relaxed);
                    for c in &p.changes {
                        self.apply(c);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.counters.overruns.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "neighbour notifications lost (socket buffer full): dumping the table again"
                    );
                    if let Err(e) = self.dump() {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("{e}");
                    }
                }
                Err(e) => {
                    // Not expected on a netlink socket; say so once per occurrence and go on
                    // (the daemon's loop still asks for resolution of unknown next hops).
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("neighbour notifications: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// The addresses the workers write into Ethernet headers ([`L2::state`]) and the thread that
/// keeps them current. Dropping it stops and joins the thread.
pub struct L2 {
    pub state: Arc<L2State>,
    watch: Arc<Watch>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl L2 {
    /// Own MACs (config, else sysfs), the next hops' from the kernel's neighbour table (the
    /// config's fixed MAC wins; the cipher side's next hop defaults to the first tunnel's
    /// remote end), then the thread that follows changes. A next hop without an entry is
    /// resolved as traffic would (see [`L2::refresh`]). Errors: the netlink sockets cannot be
    /// opened, or the kernel refuses the dump.
    pub fn start(cfg: &Config) -> Result<L2, L2Error> {
        let watch = Arc::new(Watch::new(cfg));
        // Subscribe first, then dump: a change between the two is in the socket's queue and
        // applied after the dump, never lost.
        let sub = Watch::subscribe()?;
        watch.dump()?;
        watch.check();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (watch, stop) = (watch.clone(), stop.clone());
            std::thread::Builder::new()
                .name("espd-neigh".into())
                .spawn(move || watch.follow(&sub, &stop))
                .map_err(nl("starting the neighbour thread"))?
        };
        Ok(L2 {
            state: watch.state.clone(),
            watch,
            stop,
            thread: Some(thread),
        })
    }

    /// [`L2::start`] for callers that cannot fail: the error is logged loudly and nothing
    /// learns the next hops (unless the config fixes them, forwarded traffic drops, counted).
    /// Prefer `start` and refusing to run.
    pub fn resolve(cfg: &Config) -> L2 {
        L2::start(cfg).unwrap_or_else(|e| {
            tracing::error!(
                "{e}: next-hop MACs will not be learned; forwarding needs next_hop_mac in the config"
            );
            let watch = Arc::new(Watch::new(cfg));
            L2 {
                state: watch.state.clone(),
                watch,
                stop: Arc::new(AtomicBool::new(true)),
                thread: None,
            }
        })
    }

    /// True when both next hops' MACs are known; asks the kernel to resolve a missing one
    /// (counted in [`L2Counters::resolutions`]). Cheap: the thread does the learning.
    pub fn refresh(&self) -> bool {
        self.watch.check()
    }

    /// What the neighbour thread did so far.
    pub fn counters(&self) -> &L2Counters {
        &self.watch.counters
    }
}

impl Drop for L2 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::DoneMessage;
    use netlink_packet_route::AddressFamily;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MAC: Mac = [2, 0, 0, 0, 0xbb, 1];

    fn emit(payload: RouteNetlinkMessage) -> Vec<u8> {
        let mut m = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(payload));
        m.finalize();
        let mut b = vec![0u8; m.buffer_len()];
        m.serialize(&mut b);
        b
    }

    fn neigh(
        ip: IpAddr,
        ifindex: u32,
        state: NeighbourState,
        mac: Option<&[u8]>,
    ) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.ifindex = ifindex;
        m.header.state = state;
        m.attributes
            .push(NeighbourAttribute::Destination(ip.into()));
        if let Some(mac) = mac {
            m.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        }
        m
    }

    /// A datagram as the kernel builds it for `ip neigh replace 203.0.113.2 lladdr
    /// 02:00:00:00:bb:01 dev <7>` (struct nlmsghdr, struct ndmsg, NDA_DST, NDA_LLADDR), by
    /// hand, independent of the crate's emitter.
    #[test]
    fn kernel_layout_new_neighbour() {
        let mut b = Vec::new();
        b.extend_from_slice(&48u32.to_ne_bytes()); // nlmsg_len
        b.extend_from_slice(&28u16.to_ne_bytes()); // RTM_NEWNEIGH
        b.extend_from_slice(&0u16.to_ne_bytes()); // flags
        b.extend_from_slice(&0u32.to_ne_bytes()); // seq
        b.extend_from_slice(&0u32.to_ne_bytes()); // pid
        b.extend_from_slice(&[2, 0, 0, 0]); // ndm_family AF_INET, pad
        b.extend_from_slice(&7i32.to_ne_bytes()); // ndm_ifindex
        b.extend_from_slice(&0x02u16.to_ne_bytes()); // ndm_state NUD_REACHABLE
        b.extend_from_slice(&[0, 1]); // ndm_flags, ndm_type RTN_UNICAST
        b.extend_from_slice(&8u16.to_ne_bytes()); // NDA_DST
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&[203, 0, 113, 2]);
        b.extend_from_slice(&10u16.to_ne_bytes()); // NDA_LLADDR
        b.extend_from_slice(&2u16.to_ne_bytes());
        b.extend_from_slice(&MAC);
        b.extend_from_slice(&[0, 0]); // attribute padding
        assert_eq!(b.len(), 48);
        let p = parse(&b);
        assert_eq!(
            p.changes,
            vec![Change::Neighbour {
                ifindex: 7,
                ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2)),
                mac: MAC
            }]
        );
        assert_eq!((p.done, p.error, p.malformed), (false, None, 0));
        // The same with NUD_FAILED: no usable address.
        b[24..26].copy_from_slice(&0x20u16.to_ne_bytes());
        assert_eq!(
            parse(&b).changes,
            vec![Change::Unresolved {
                ifindex: 7,
                ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2))
            }]
        );
    }

    /// A dump datagram: several messages back to back, then NLMSG_DONE.
    #[test]
    fn dump_of_several_messages_and_done() {
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0xb, 0, 0, 0, 0, 0, 2));
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let mut b = emit(RouteNetlinkMessage::NewNeighbour(neigh(
            v4,
            3,
            NeighbourState::Stale,
            Some(&MAC),
        )));
        b.extend(emit(RouteNetlinkMessage::NewNeighbour(neigh(
            v6,
            4,
            NeighbourState::Incomplete,
            None,
        ))));
        b.extend(emit(RouteNetlinkMessage::DelNeighbour(neigh(
            v4,
            3,
            NeighbourState::Reachable,
            Some(&MAC),
        ))));
        // A bridge FDB entry (AF_BRIDGE, no IP destination) is not a next hop.
        let mut fdb = NeighbourMessage::default();
        fdb.header.family = AddressFamily::Bridge;
        fdb.attributes
            .push(NeighbourAttribute::LinkLayerAddress(MAC.to_vec()));
        b.extend(emit(RouteNetlinkMessage::NewNeighbour(fdb)));
        let mut link = LinkMessage::default();
        link.header.index = 4;
        link.attributes.push(LinkAttribute::Address(MAC.to_vec()));
        b.extend(emit(RouteNetlinkMessage::NewLink(link)));
        let mut m = NetlinkMessage::<RouteNetlinkMessage>::new(
            NetlinkHeader::default(),
            NetlinkPayload::Done(DoneMessage::default()),
        );
        m.finalize();
        let mut d = vec![0u8; m.buffer_len()];
        m.serialize(&mut d);
        b.extend(d);
        let p = parse(&b);
        assert_eq!(
            p.changes,
            vec![
                Change::Neighbour {
                    ifindex: 3,
                    ip: v4,
                    mac: MAC
                },
                Change::Unresolved { ifindex: 4, ip: v6 },
                Change::Unresolved { ifindex: 3, ip: v4 },
                Change::Link {
                    ifindex: 4,
                    mac: MAC
                },
            ]
        );
        assert!(p.done);
        assert_eq!(p.malformed, 0);
    }

    /// Truncated, garbled and random datagrams: no panic, bad ones counted.
    #[test]
    fn bad_datagrams_are_counted_not_fatal() {
        let good = emit(RouteNetlinkMessage::NewNeighbour(neigh(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
            3,
            NeighbourState::Reachable,
            Some(&MAC),
        )));
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
        }
        let mut bad = good.clone();
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(parse(&bad).malformed, 1);
        // A lladdr that is not 6 bytes (an InfiniBand neighbour) is no usable MAC.
        let ib = emit(RouteNetlinkMessage::NewNeighbour(neigh(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
            3,
            NeighbourState::Reachable,
            Some(&[1; 20]),
        )));
        assert!(matches!(
            parse(&ib).changes[..],
            [Change::Unresolved { .. }]
        ));
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut b = good.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize >> 8) % b.len();
                b[i] = x as u8;
            }
            let _ = parse(&b);
        }
    }

    fn watch(fixed_cipher: Option<Mac>) -> Watch {
        let lo = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let hop = |fixed| Hop {
            iface: "lo".into(),
            ifindex: 1,
            ip: Some(lo),
            fixed,
            last_provoke: AtomicU64::new(0),
        };
        let own = |fixed| Own {
            iface: "lo".into(),
            ifindex: 1,
            fixed,
        };
        Watch {
            state: Arc::new(L2State::default()),
            plain: hop(None),
            cipher: hop(fixed_cipher),
            own_plain: own(false),
            own_cipher: own(true),
            counters: L2Counters::default(),
        }
    }

    /// Changes reach the slots the workers read: a new MAC replaces the old one, an
    /// unresolved entry keeps the last MAC and asks for resolution (on loopback here), other
    /// links and addresses and fixed MACs are left alone.
    #[test]
    fn changes_reach_the_workers_slots() {
        let lo = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let w = watch(Some([9; 6]));
        w.state
            .cipher_next_hop
            .store(pack_mac(&[9; 6]), Ordering::Release);
        let at = |s: &AtomicU64| unpack_mac(s.load(Ordering::Acquire));
        assert!(!w.check(), "plain next hop unknown");
        assert_eq!(w.counters.resolutions.load(Ordering::Relaxed), 1);
        w.apply(&Change::Neighbour {
            ifindex: 1,
            ip: lo,
            mac: MAC,
        });
        assert_eq!(at(&w.state.plain_next_hop), Some(MAC));
        assert_eq!(
            at(&w.state.cipher_next_hop),
            Some([9; 6]),
            "fixed by config"
        );
        assert!(w.check());
        let new = [2, 0, 0, 0, 0xcc, 2];
        w.apply(&Change::Neighbour {
            ifindex: 1,
            ip: lo,
            mac: new,
        });
        assert_eq!(at(&w.state.plain_next_hop), Some(new));
        assert_eq!(w.counters.changes.load(Ordering::Relaxed), 2);
        // Same address on another link, another address on this link: not ours.
        w.apply(&Change::Neighbour {
            ifindex: 2,
            ip: lo,
            mac: MAC,
        });
        w.apply(&Change::Neighbour {
            ifindex: 1,
            ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
            mac: MAC,
        });
        assert_eq!(at(&w.state.plain_next_hop), Some(new));
        // A resolution asked "just now" (a clock that never runs out): rate limited.
        w.plain.last_provoke.store(u64::MAX, Ordering::Relaxed);
        w.apply(&Change::Unresolved { ifindex: 1, ip: lo });
        assert_eq!(at(&w.state.plain_next_hop), Some(new), "last MAC kept");
        assert_eq!(
            w.counters.resolutions.load(Ordering::Relaxed),
            1,
            "rate limited"
        );
        w.plain.last_provoke.store(0, Ordering::Relaxed);
        w.apply(&Change::Unresolved { ifindex: 1, ip: lo });
        assert_eq!(w.counters.resolutions.load(Ordering::Relaxed), 2);
        // Own MAC: the plain side follows the link, the cipher side is fixed by config.
        w.apply(&Change::Link {
            ifindex: 1,
            mac: new,
        });
        assert_eq!(at(&w.state.plain_mac), Some(new));
        assert_eq!(at(&w.state.cipher_mac), None);
    }

    /// The table the kernel has right now, through a real socket (no root needed): the dump
    /// ends with NLMSG_DONE and a subscription socket opens.
    #[test]
    fn dump_and_subscribe_on_this_machine() {
        let state = Arc::new(L2State::default());
        let hop = || Hop {
            iface: "lo".into(),
            ifindex: 1,
            ip: None,
            fixed: None,
            last_provoke: AtomicU64::new(0),
        };
        let own = || Own {
            iface: "lo".into(),
            ifindex: 1,
            fixed: true,
        };
        let w = Watch {
            state,
            plain: hop(),
            cipher: hop(),
            own_plain: own(),
            own_cipher: own(),
            counters: L2Counters::default(),
        };
        Watch::subscribe().unwrap();
        w.dump().unwrap();
        assert_eq!(w.counters.errors.load(Ordering::Relaxed), 0);
    }
}
