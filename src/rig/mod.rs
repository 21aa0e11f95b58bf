//! The test bench, apart from the product: the veth rig (this file), the processes on it
//! ([`procs`]), traffic tools ([`traffic`]), the keyer that plays the IKE daemon ([`keyer`]),
//! `espd demo` ([`demo`]), `espd bench` ([`bench`]) and their command-line arguments ([`cli`]).
//! It drives espd from outside (its binary, its control socket); no product module imports
//! from here (tests/layout.rs checks).
//!
//! The veth test rig: five network namespaces on one machine.
//!
//! ```text
//!  host-a ── gw-a (espd) ── wan (bridge, capture, attacks) ── gw-b (espd) ── host-b
//!  192.0.2.2   .1 | 203.0.113.1                    203.0.113.2 | 198.51.100.1   .2
//!  fd00:a::2  ::1 |                                            | fd00:b::1     ::2
//! ```
//!
//! Every address exists only inside these namespaces (documentation prefixes and fd00::/8).
//! Veths carry several queues so several workers share the load. Checksum offload and
//! segmentation offload are switched off on every veth (FACTS.md: a veth hands over partial
//! checksums, and GSO frames do not fit AF_XDP frames). [`Rig::up`] removes leftovers first;
//! dropping the [`Rig`] (or `espd rig down`) deletes the namespaces, which removes the veths and
//! any XDP program on them, also after a crash, and the generated gateway configs (they hold
//! keys).

pub mod bench;
pub mod cli;
pub mod demo;
pub mod ike;
pub mod keyer;
pub mod procs;
pub mod swarm;
pub mod traffic;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const NAMESPACES: [&str; 5] = ["host-a", "gw-a", "wan", "gw-b", "host-b"];
/// Where `espd rig up` writes the gateway configs unless told otherwise.
pub const DEFAULT_DIR: &str = "/run/espd-rig";

#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("cannot run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("the rig needs root (network namespaces)")]
    NotRoot,
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("the gateway config with the [dataplane] lines given: {0}")]
    Dataplane(String),
}

fn run(args: &[&str]) -> Result<Output, RigError> {
    let cmd = args.join(" ");
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RigError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(RigError::Command {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Runs `args` inside namespace `ns`.
pub fn ns(ns: &str, args: &[&str]) -> Result<Output, RigError> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    run(&v)
}

/// Options for building the rig.
#[derive(Clone, Debug)]
pub struct RigSpec {
    /// Queues per veth (and workers per gateway).
    pub queues: u32,
    /// `native` or `generic` XDP in the generated configs.
    pub xdp_mode: &'static str,
    /// Where the generated gateway configs go.
    pub dir: PathBuf,
    /// MTU of the LAN links (the tunnel carries 1500-byte outer packets).
    pub lan_mtu: u32,
    /// Keys from the built-in IKE instead of static SAs (see `ike.rs`).
    pub ike: Option<ike::IkeRig>,
    /// TOML lines added at the top of the gateways' `[dataplane]` section (`espd bench
    /// --dataplane`), checked before anything is built.
    pub dataplane: String,
}

impl Default for RigSpec {
    fn default() -> Self {
        RigSpec {
            queues: 2,
            xdp_mode: "native",
            dir: PathBuf::from(DEFAULT_DIR),
            lan_mtu: 1400,
            ike: None,
            dataplane: String::new(),
        }
    }
}

/// A live rig; deleted on drop.
pub struct Rig {
    pub spec: RigSpec,
    pub gw_a: PathBuf,
    pub gw_b: PathBuf,
    /// key‖salt of the SAs A→B and B→A (for tshark).
    pub key_ab: String,
    pub key_ba: String,
    keep: bool,
}

pub const SPI_AB: u32 = 0x0000_a001;
pub const SPI_BA: u32 = 0x0000_b001;

/// Writes `data` to `path` as a new owner-only (0600) file: keys and PSKs ([`crate::ctl::write_private`]).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    crate::ctl::write_private(path, data).map_err(|e| std::io::Error::other(e.to_string()))
}

pub(crate) fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

impl Rig {
    /// Builds the rig (after removing any leftover of an earlier one).
    pub fn up(spec: RigSpec) -> Result<Rig, RigError> {
        // Nothing built yet: dropping `r` on an early error deletes nothing (`keep`).
        let mut r = Rig {
            gw_a: spec.dir.join("gw-a.toml"),
            gw_b: spec.dir.join("gw-b.toml"),
            key_ab: random_hex(20),
            key_ba: random_hex(20),
            spec,
            keep: true,
        };
        // Extra [dataplane] lines are checked in the configs they go into before anything is
        // built or torn down: a mistake costs no rig set-up. They touch `[dataplane]` only, so
        // the configs are checked with static keys: an IKE rig's config names PSK files that
        // exist only once the rig is written.
        if !r.spec.dataplane.is_empty() {
            let check = Rig {
                spec: RigSpec {
                    ike: None,
                    ..r.spec.clone()
                },
                gw_a: r.gw_a.clone(),
                gw_b: r.gw_b.clone(),
                key_ab: r.key_ab.clone(),
                key_ba: r.key_ba.clone(),
                keep: true,
            };
            for (p, me) in [(&check.gw_a, 'a'), (&check.gw_b, 'b')] {
                crate::config::Config::parse(p, &check.config(me))
                    .map_err(|e| RigError::Dataplane(e.to_string()))?;
            }
        }
        if !crate::sys::is_root() {
            return Err(RigError::NotRoot);
        }
        down();
        // From here on, a failure drops `r`, which deletes whatever was built.
        r.keep = false;
        r.build()?;
        r.write_configs()?;
        Ok(r)
    }

    /// Leaves the rig in place when dropped (`espd rig up`).
    pub fn keep(mut self) {
        self.keep = true;
    }

    fn build(&self) -> Result<(), RigError> {
        for n in NAMESPACES {
            run(&["ip", "netns", "add", n])?;
            ns(n, &["ip", "link", "set", "lo", "up"])?;
            ns(
                n,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            )?;
        }
        let q = self.spec.queues.to_string();
        let pair = |a: &str, ans: &str, b: &str, bns: &str| -> Result<(), RigError> {
            run(&[
                "ip",
                "link",
                "add",
                a,
                "netns",
                ans,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "type",
                "veth",
                "peer",
                "name",
                b,
                "netns",
                bns,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
            ])?;
            Ok(())
        };
        pair("eth0", "host-a", "lan0", "gw-a")?;
        pair("wan0", "gw-a", "wan-a", "wan")?;
        pair("wan0", "gw-b", "wan-b", "wan")?;
        pair("lan0", "gw-b", "eth0", "host-b")?;
        ns("wan", &["ip", "link", "add", "br0", "type", "bridge"])?;
        for p in ["wan-a", "wan-b"] {
            ns("wan", &["ip", "link", "set", p, "master", "br0"])?;
        }
        let mtu = self.spec.lan_mtu.to_string();
        let links: [(&str, &str, &str); 8] = [
            ("host-a", "eth0", &mtu),
            ("gw-a", "lan0", &mtu),
            ("gw-a", "wan0", "1500"),
            ("wan", "wan-a", "1500"),
            ("wan", "wan-b", "1500"),
            ("gw-b", "wan0", "1500"),
            ("gw-b", "lan0", &mtu),
            ("host-b", "eth0", &mtu),
        ];
        for (n, l, m) in links {
            ns(n, &["ip", "link", "set", l, "mtu", m, "up"])?;
            // Complete checksums and no GSO/GRO: AF_XDP sees every frame as it is on the wire.
            ns(
                n,
                &[
                    "ethtool", "-K", l, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
                ],
            )?;
        }
        ns("wan", &["ip", "link", "set", "br0", "up"])?;
        // The wan namespace is a wire. With br_netfilter loaded (a container runtime loads it)
        // a new namespace's bridge would send every frame through the iptables, ip6tables and
        // arptables hooks: about 13 % of a gateway worker's CPU at 20k pps, spent in its own
        // transmit call (veth delivers in the sender's softirq). Off, when the module is there
        // and the switches are per namespace (Linux ≥ 5.3; before, they were the host's).
        let per_netns = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|r| {
                let mut v = r.trim().split(['.', '-']).map(|x| x.parse::<u32>().ok());
                Some((v.next()??, v.next()??))
            })
            .is_some_and(|v| v >= (5, 3));
        for t in ["iptables", "ip6tables", "arptables"]
            .into_iter()
            .filter(|_| per_netns)
        {
            let key = format!("/proc/sys/net/bridge/bridge-nf-call-{t}");
            ns(
                "wan",
                &["sh", "-c", &format!("[ ! -e {key} ] || echo 0 > {key}")],
            )?;
        }
        let addr =
            |n: &str, l: &str, a: &str| ns(n, &["ip", "addr", "add", a, "dev", l]).map(|_| ());
        addr("host-a", "eth0", "192.0.2.2/24")?;
        addr("host-a", "eth0", "fd00:a::2/64")?;
        addr("gw-a", "lan0", "192.0.2.1/24")?;
        addr("gw-a", "lan0", "fd00:a::1/64")?;
        addr("gw-a", "wan0", "203.0.113.1/24")?;
        addr("gw-b", "wan0", "203.0.113.2/24")?;
        addr("gw-b", "lan0", "198.51.100.1/24")?;
        addr("gw-b", "lan0", "fd00:b::1/64")?;
        addr("host-b", "eth0", "198.51.100.2/24")?;
        addr("host-b", "eth0", "fd00:b::2/64")?;
        ns(
            "host-a",
            &["ip", "route", "add", "default", "via", "192.0.2.1"],
        )?;
        ns(
            "host-a",
            &["ip", "-6", "route", "add", "default", "via", "fd00:a::1"],
        )?;
        ns(
            "host-b",
            &["ip", "route", "add", "default", "via", "198.51.100.1"],
        )?;
        ns(
            "host-b",
            &["ip", "-6", "route", "add", "default", "via", "fd00:b::1"],
        )?;
        Ok(())
    }

    fn config(&self, me: char) -> String {
        let (lan_net, lan_net6, lan_addr, lan_addr6, host, wan, peer, other_net, other_net6) =
            if me == 'a' {
                (
                    "192.0.2.0/24",
                    "fd00:a::/64",
                    "192.0.2.1",
                    "fd00:a::1",
                    "192.0.2.2",
                    "203.0.113.1",
                    "203.0.113.2",
                    "198.51.100.0/24",
                    "fd00:b::/64",
                )
            } else {
                (
                    "198.51.100.0/24",
                    "fd00:b::/64",
                    "198.51.100.1",
                    "fd00:b::1",
                    "198.51.100.2",
                    "203.0.113.2",
                    "203.0.113.1",
                    "192.0.2.0/24",
                    "fd00:a::/64",
                )
            };
        let (out_spi, out_key, in_spi, in_key) = if me == 'a' {
            (SPI_AB, &self.key_ab, SPI_BA, &self.key_ba)
        } else {
            (SPI_BA, &self.key_ba, SPI_AB, &self.key_ab)
        };
        let w = self.spec.queues;
        let cores: Vec<String> = (0..w).map(|i| (i % 2).to_string()).collect();
        let queues: Vec<String> = (0..w).map(|i| i.to_string()).collect();
        format!(
            r#"# Generated by `espd rig up` for gateway {me}. Keys are random per rig.
[dataplane]
{extra}workers = {w}
cores = [{cores}]
xdp_mode = "{mode}"
default_policy = "discard"
# Two workers on a shared 2-core VM: a preempted worker can hold a batch for milliseconds
# while the other advances the same SA; the widest window absorbs that reordering.
replay_window = 4096

[interfaces.plain]
name = "lan0"
addresses = ["{lan_addr}", "{lan_addr6}"]
next_hop = "{host}"
queues = [{queues}]

[interfaces.cipher]
name = "wan0"
addresses = ["{wan}"]
next_hop = "{peer}"
queues = [{queues}]

[[tunnels]]
name = "peer"
local = "{wan}"
remote = "{peer}"
{encap}
[[policies]]
src = "{lan_net}"
dst = "{other_net}"
action = "protect"
tunnel = "peer"

{v6_policy}{keys}
[control]
socket = "{socket}"
metrics = "127.0.0.1:9477"
rekey_grace_ms = 1000
"#,
            v6_policy = if self
                .spec
                .ike
                .as_ref()
                .is_some_and(|i| i.peer == ike::Peer::StrongSwan)
            {
                // strongSwan's IKEv1 negotiates one pair of proxy IDs per child: IPv4 only.
                String::new()
            } else {
                format!(
                    "[[policies]]\nsrc = \"{lan_net6}\"\ndst = \"{other_net6}\"\naction = \"protect\"\ntunnel = \"peer\"\n"
                )
            },
            keys = match &self.spec.ike {
                None => format!(
                    "\n[[sas]]\ntunnel = \"peer\"\ndirection = \"out\"\nspi = {out_spi:#x}\nkey = \"{out_key}\"\n\n[[sas]]\ntunnel = \"peer\"\ndirection = \"in\"\nspi = {in_spi:#x}\nkey = \"{in_key}\"\n"
                ),
                Some(i) => i.peer_config(me),
            },
            encap = if self.spec.ike.as_ref().is_some_and(|i| i.udp_encap()) {
                "encap = \"udp\"\n"
            } else {
                ""
            },
            socket = self.socket(me).display(),
            cores = cores.join(", "),
            queues = queues.join(", "),
            mode = self.spec.xdp_mode,
            extra = if self.spec.dataplane.is_empty() {
                String::new()
            } else {
                format!("{}\n", self.spec.dataplane.trim_end())
            },
        )
    }

    fn write_configs(&self) -> Result<(), RigError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.spec.dir)
            .map_err(|e| RigError::Io(self.spec.dir.clone(), e))?;
        let _ = std::fs::set_permissions(&self.spec.dir, std::fs::Permissions::from_mode(0o700));
        if let Some(i) = &self.spec.ike {
            i.write_files(&self.spec.dir)
                .map_err(|e| RigError::Io(self.spec.dir.clone(), e))?;
        }
        for (p, me) in [(&self.gw_a, 'a'), (&self.gw_b, 'b')] {
            if me == 'b'
                && self
                    .spec
                    .ike
                    .as_ref()
                    .is_some_and(|i| i.peer == ike::Peer::StrongSwan)
            {
                continue;
            }
            write_private(p, self.config(me).as_bytes()).map_err(|e| RigError::Io(p.clone(), e))?;
            // The rig made these keys just now: their sequence state starts fresh.
            let cfg = crate::config::Config::load(p)
                .map_err(|e| RigError::Io(p.clone(), std::io::Error::other(e.to_string())))?;
            crate::control::seqstate::write_fresh(&cfg.state_file, &cfg)
                .map_err(|e| RigError::Io(cfg.state_file.clone(), e))?;
        }
        Ok(())
    }

    /// The control socket of gateway `me` ('a' or 'b').
    pub fn socket(&self, me: char) -> PathBuf {
        self.spec.dir.join(format!("gw-{me}.sock"))
    }

    /// tshark's `esp_sa` entries for both SAs.
    pub fn tshark_sas(&self) -> Vec<String> {
        vec![
            esp_sa_uat("203.0.113.1", "203.0.113.2", SPI_AB, &self.key_ab),
            esp_sa_uat("203.0.113.2", "203.0.113.1", SPI_BA, &self.key_ba),
        ]
    }

    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if !self.keep {
            down();
            let _ = std::fs::remove_dir_all(&self.spec.dir);
        }
    }
}

/// `espd rig down`: deletes the namespaces and the files `espd rig up` wrote in `dir` (the
/// gateway configs hold keys). Idempotent.
pub fn teardown(dir: &Path) {
    down();
    remove_configs(dir);
}

/// Removes what the rig writes in `dir` (gateway configs, their sequence state files, control
/// sockets), then `dir` itself if nothing else is in it. Never removes other files: `dir` is
/// the operator's choice.
pub fn remove_configs(dir: &Path) {
    for gw in ["gw-a", "gw-b"] {
        for ext in ["toml", "toml.seq", "toml.seq.lock", "sock", "psk"] {
            let _ = std::fs::remove_file(dir.join(format!("{gw}.{ext}")));
        }
        // A temporary state file left by a crash mid-write: `gw-a.toml.seq.tmpPID`.
        let tmp = format!("{gw}.toml.seq.tmp");
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name
                    .strip_prefix(&tmp)
                    .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    ike::remove_files(dir);
    let _ = std::fs::remove_dir(dir);
}

/// tshark's `esp_sa` entry (`-o uat:esp_sa:...`) for an AES-GCM-16 SA; `key`: hex key‖salt.
pub fn esp_sa_uat(src: &str, dst: &str, spi: u32, key: &str) -> String {
    let sa = crate::pcap::EspSa {
        src: src.parse().ok(),
        dst: dst.parse().ok(),
        spi,
        key_hex: key,
    };
    format!("uat:esp_sa:{}", crate::pcap::esp_sa_line(&sa))
}

/// Deletes every namespace of the rig (and with them veths and XDP programs). Idempotent.
pub fn down() {
    for n in NAMESPACES {
        let _ = Command::new("ip")
            .args(["netns", "pids", n])
            .output()
            .map(|o| {
                // Processes still inside (a gateway that outlived its parent): stop them first.
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse() {
                        let _ = crate::sys::kill(pid, libc::SIGTERM);
                    }
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", n])
            .stderr(Stdio::null())
            .status();
    }
}

/// One line per namespace: does it exist, what links and XDP programs does it hold.
pub fn status() -> String {
    let mut s = String::new();
    for n in NAMESPACES {
        match ns(n, &["ip", "-br", "link"]) {
            Ok(o) => {
                let links: Vec<String> = String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.starts_with("lo "))
                    .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                    .collect();
                let xdp = ns(n, &["ip", "-o", "link"])
                    .map(|o| String::from_utf8_lossy(&o.stdout).matches(" xdp").count())
                    .unwrap_or(0);
                let _ = writeln!(s, "{n:7} up   {} (xdp programs: {xdp})", links.join(", "));
            }
            Err(_) => {
                let _ = writeln!(s, "{n:7} absent");
            }
        }
    }
    s
}
