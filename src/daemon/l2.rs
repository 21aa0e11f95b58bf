//! The link layer around the gateway: its own MAC addresses (config or sysfs) and the next
//! hops' MACs, read from the kernel's neighbour table (`ip -j neigh`) and published to the
//! workers through [`L2State`]. The daemon's loop calls [`L2::refresh`] until both next hops
//! are known, then every few seconds.

use std::net::{IpAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::Config;
use crate::datapath::worker::{L2State, pack_mac};
use crate::wire::ethernet::Mac;

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

/// The MAC of `ip` on `iface` from the kernel's neighbour table (`ip -j neigh`).
fn neighbour(iface: &str, ip: IpAddr) -> Option<Mac> {
    let out = Command::new("ip")
        .args(["-j", "neigh", "show", "to"])
        .arg(ip.to_string())
        .args(["dev", iface])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    for e in v.as_array()? {
        let states: Vec<&str> = e["state"]
            .as_array()
            .map(|s| s.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if states.iter().any(|s| matches!(*s, "FAILED" | "INCOMPLETE")) {
            continue;
        }
        if let Some(ll) = e["lladdr"].as_str() {
            let mut m = [0u8; 6];
            let parts: Vec<&str> = ll.split(':').collect();
            if parts.len() == 6
                && parts
                    .iter()
                    .enumerate()
                    .all(|(i, p)| u8::from_str_radix(p, 16).map(|b| m[i] = b).is_ok())
            {
                return Some(m);
            }
        }
    }
    None
}

/// Makes the kernel resolve `ip`: a one-byte datagram to the discard port.
fn provoke(ip: IpAddr) {
    let bind = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.send_to(&[0], (ip, 9));
    }
}

struct Neighbours {
    plain: (String, Option<IpAddr>, Option<Mac>),
    cipher: (String, Option<IpAddr>, Option<Mac>),
}

impl Neighbours {
    /// Refreshes next-hop MACs into `l2`; returns true when both are known.
    fn refresh(&self, l2: &L2State) -> bool {
        let mut known = true;
        for ((iface, ip, fixed), slot) in [
            (&self.plain, &l2.plain_next_hop),
            (&self.cipher, &l2.cipher_next_hop),
        ] {
            let mac = fixed.or_else(|| ip.and_then(|ip| neighbour(iface, ip)));
            match mac {
                Some(m) => slot.store(pack_mac(&m), Ordering::Release),
                None => {
                    known = false;
                    if let Some(ip) = ip {
                        provoke(*ip);
                    }
                }
            }
        }
        known
    }
}

/// The addresses the workers write into Ethernet headers ([`L2::state`]) and where the next
/// hops' come from.
pub struct L2 {
    pub state: Arc<L2State>,
    neighbours: Neighbours,
}

impl L2 {
    /// Own MACs (config, else sysfs) and a first try at the next hops' (the config's fixed
    /// MAC, else the neighbour table; the cipher side's next hop defaults to the first
    /// tunnel's remote end).
    pub fn resolve(cfg: &Config) -> L2 {
        let l2 = Arc::new(L2State::default());
        let own =
            |i: &crate::config::Interface| i.mac.or_else(|| read_mac(&i.name)).unwrap_or_default();
        l2.plain_mac
            .store(pack_mac(&own(&cfg.plain)), Ordering::Release);
        l2.cipher_mac
            .store(pack_mac(&own(&cfg.cipher)), Ordering::Release);
        let neigh = Neighbours {
            plain: (
                cfg.plain.name.clone(),
                cfg.plain.next_hop,
                cfg.plain.next_hop_mac,
            ),
            cipher: (
                cfg.cipher.name.clone(),
                cfg.cipher
                    .next_hop
                    .or_else(|| cfg.tunnels.first().map(|t| t.endpoints.remote)),
                cfg.cipher.next_hop_mac,
            ),
        };
        neigh.refresh(&l2);
        L2 {
            state: l2,
            neighbours: neigh,
        }
    }

    /// Refreshes the next hops' MACs (asking the kernel to resolve a missing one); true when
    /// both are known.
    pub fn refresh(&self) -> bool {
        self.neighbours.refresh(&self.state)
    }
}
