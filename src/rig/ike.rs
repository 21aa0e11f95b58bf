//! The rig keyed by IKE: `[[ike.peers]]` for the espd gateways (a random pre-shared key in
//! an owner-only file), or strongSwan 5.9.8 (charon with kernel-libipsec, IKEv1 PSK) as
//! gateway B, in its own mount namespace with a private /run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::procs::Proc;

/// Who runs gateway B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Espd,
    StrongSwan,
}

/// The plugins charon loads on the rig (userspace ESP: kernel-libipsec).
pub const CHARON_PLUGINS: &str = "random nonce aes sha1 sha2 hmac gcm pem pkcs1 x509 pubkey curve25519 gmp kdf openssl kernel-libipsec kernel-netlink socket-default vici updown";

/// IKE settings of both gateways.
#[derive(Clone, Debug)]
pub struct IkeRig {
    pub peer: Peer,
    pub psk: String,
    pub mm_lifetime_s: u64,
    pub qm_lifetime_s: u64,
    pub rekey_margin_s: u64,
    /// `qm_lifetime_kb` and `rekey_margin_kb` of the espd gateways.
    pub qm_lifetime_kb: Option<u64>,
    pub rekey_margin_kb: Option<u64>,
    pub dpd_delay_s: u64,
    pub dpd_timeout_s: u64,
    /// Which espd gateways initiate ('a', 'b').
    pub initiators: Vec<char>,
    /// `pfs_group` of the espd gateways (strongSwan's child proposes modp2048 first).
    pub pfs_group: Option<String>,
    /// Extra `[[ike.peers]]` lines for gateway A and (espd) gateway B.
    pub extra_a: String,
    pub extra_b: String,
    /// strongSwan's phase-1 `proposals`.
    pub sw_proposals: String,
    /// strongSwan: reauthenticate the main mode (`reauth_time`, seconds; 0: never).
    pub sw_reauth_s: u64,
    /// strongSwan: `rekey_time` of the child (seconds; 0: never).
    pub sw_rekey_s: u64,
    /// strongSwan: `life_time` of the child (seconds).
    pub sw_life_s: u64,
}

impl IkeRig {
    /// Defaults for a rig: a random PSK, long lifetimes, gateway A initiates.
    pub fn new(peer: Peer) -> IkeRig {
        IkeRig {
            peer,
            psk: format!("espd-rig-{}", super::random_hex(16)),
            mm_lifetime_s: 28_800,
            qm_lifetime_s: 3_600,
            rekey_margin_s: 540,
            qm_lifetime_kb: None,
            rekey_margin_kb: None,
            dpd_delay_s: 30,
            dpd_timeout_s: 150,
            initiators: vec!['a'],
            pfs_group: (peer == Peer::StrongSwan).then(|| "modp2048".to_string()),
            extra_a: String::new(),
            extra_b: String::new(),
            sw_proposals: "aes256-sha256-ecp256,aes128-sha256-modp2048".into(),
            sw_reauth_s: 0,
            sw_rekey_s: 3_000,
            sw_life_s: 3_600,
        }
    }

    /// strongSwan's kernel-libipsec fakes NAT-D, so ESP goes in UDP: the tunnel says so.
    pub fn udp_encap(&self) -> bool {
        self.peer == Peer::StrongSwan
    }

    /// The `[[ike.peers]]` table of gateway `me`.
    pub fn peer_config(&self, me: char) -> String {
        let mut s = format!(
            "\n[[ike.peers]]\ntunnel = \"peer\"\npsk_file = \"gw-{me}.psk\"\nmm_lifetime_s = {}\nqm_lifetime_s = {}\nrekey_margin_s = {}\ndpd_delay_s = {}\ndpd_timeout_s = {}\ninitiate = {}\n",
            self.mm_lifetime_s,
            self.qm_lifetime_s,
            self.rekey_margin_s,
            self.dpd_delay_s,
            self.dpd_timeout_s,
            self.initiators.contains(&me),
        );
        if let Some(g) = &self.pfs_group {
            let _ = writeln!(s, "pfs_group = \"{g}\"");
        }
        if let Some(kb) = self.qm_lifetime_kb {
            let _ = writeln!(s, "qm_lifetime_kb = {kb}");
        }
        if let Some(kb) = self.rekey_margin_kb {
            let _ = writeln!(s, "rekey_margin_kb = {kb}");
        }
        s.push_str(if me == 'a' {
            &self.extra_a
        } else {
            &self.extra_b
        });
        s
    }

    /// The PSK files (0600) and, for strongSwan, its configuration.
    pub fn write_files(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for me in ['a', 'b'] {
            super::write_private(
                &dir.join(format!("gw-{me}.psk")),
                format!("{}\n", self.psk).as_bytes(),
            )?;
        }
        if self.peer == Peer::StrongSwan {
            std::fs::write(dir.join("strongswan.conf"), self.strongswan_conf(dir))?;
            super::write_private(&dir.join("swanctl.conf"), self.swanctl_conf().as_bytes())?;
        }
        Ok(())
    }

    fn strongswan_conf(&self, dir: &Path) -> String {
        format!(
            "charon {{\n  load_modular = no\n  load = {CHARON_PLUGINS}\n  filelog {{\n    charon {{\n      path = {}\n      default = 1\n      ike = 2\n      chd = 4\n      time_format = %s\n      flush_line = yes\n    }}\n  }}\n  plugins {{\n    vici {{\n      socket = unix://{}\n    }}\n  }}\n}}\n",
            dir.join("charon.log").display(),
            dir.join("charon.vici").display()
        )
    }

    /// gw-b's swanctl.conf (`version = 1`, PSK, the rig's addresses and subnets).
    pub fn swanctl_conf(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "connections {{\n  espd {{\n    version = 1\n    local_addrs = 203.0.113.2\n    remote_addrs = 203.0.113.1\n    proposals = {}\n    aggressive = no\n    reauth_time = {}s\n    rand_time = 0s\n    dpd_delay = {}s\n    dpd_timeout = {}s\n    send_certreq = no\n    local {{\n      auth = psk\n      id = 203.0.113.2\n    }}\n    remote {{\n      auth = psk\n      id = 203.0.113.1\n    }}\n    children {{\n      net {{\n        local_ts = 198.51.100.0/24\n        remote_ts = 192.0.2.0/24\n        esp_proposals = aes128gcm16-modp2048,aes128gcm16\n        rekey_time = {}s\n        life_time = {}s\n        rand_time = 0s\n        dpd_action = clear\n        mode = tunnel\n        start_action = none\n      }}\n    }}\n  }}\n}}\nsecrets {{\n  ike-espd {{\n    id-a = 203.0.113.1\n    id-b = 203.0.113.2\n    secret = \"{}\"\n  }}\n}}\n",
            self.sw_proposals,
            self.sw_reauth_s,
            self.dpd_delay_s,
            self.dpd_timeout_s,
            self.sw_rekey_s,
            self.sw_life_s,
            self.psk
        );
        s
    }
}

/// Removes what `write_files` and strongSwan left in `dir`.
pub fn remove_files(dir: &Path) {
    for f in [
        "gw-a.psk",
        "gw-b.psk",
        "strongswan.conf",
        "swanctl.conf",
        "charon.log",
        "charon.vici",
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// A charon on gateway B (private /run, kernel-libipsec), with the rig's swanctl.conf loaded.
pub struct StrongSwan {
    pub proc: Proc,
    dir: PathBuf,
}

/// The installed charon, if any.
pub fn charon_path() -> Option<&'static str> {
    ["/usr/lib/ipsec/charon", "/usr/libexec/ipsec/charon"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

impl StrongSwan {
    pub fn start(dir: &Path) -> anyhow::Result<StrongSwan> {
        let charon = charon_path().ok_or_else(|| anyhow::anyhow!("charon is not installed"))?;
        super::ns("gw-b", &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let script = format!(
            "mount -t tmpfs tmpfs /run && STRONGSWAN_CONF={} exec {charon}",
            dir.join("strongswan.conf").display()
        );
        let proc = Proc::spawn(
            "charon-b",
            "gw-b",
            &[
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ],
        )?;
        let s = StrongSwan {
            proc,
            dir: dir.to_path_buf(),
        };
        let conf = dir.join("swanctl.conf").to_string_lossy().to_string();
        s.swanctl_retry(&["--load-all", "--file", &conf])?;
        Ok(s)
    }

    fn uri(&self) -> String {
        format!("unix://{}", self.dir.join("charon.vici").display())
    }

    /// Runs swanctl against this charon; its standard output.
    pub fn swanctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let uri = self.uri();
        let mut v = args.to_vec();
        v.extend_from_slice(&["--uri", &uri]);
        let o = std::process::Command::new("swanctl").args(&v).output()?;
        if !o.status.success() {
            anyhow::bail!(
                "swanctl {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).to_string())
    }

    fn swanctl_retry(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut last = None;
        for _ in 0..50 {
            match self.swanctl(args) {
                Ok(o) => return Ok(o),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("swanctl did not answer")))
    }

    /// The charon log (level 4 for child SAs: it holds the negotiated keys, for tshark).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("charon.log")).unwrap_or_default()
    }
}

impl Drop for StrongSwan {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(3));
    }
}

/// A subscription to a gateway's event stream (retried while the daemon starts).
pub fn subscribe(socket: &Path, within: Duration) -> anyhow::Result<crate::control::api::Client> {
    let t = std::time::Instant::now();
    loop {
        if let Ok(mut c) = crate::control::api::Client::connect(socket)
            && c.call(&serde_json::json!({"op": "subscribe"}))
                .is_ok_and(|r| r["subscribed"] == true)
        {
            return Ok(c);
        }
        if t.elapsed() > within {
            anyhow::bail!("{}: no control socket after {within:?}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the gateway behind `socket` has an inbound and an outbound SA.
pub fn tunnel_up(socket: &Path) -> bool {
    let Ok(mut c) = crate::control::api::Client::connect(socket) else {
        return false;
    };
    let Ok(r) = c.call(&serde_json::json!({"op": "sa_list"})) else {
        return false;
    };
    let dirs: Vec<&str> = r["sas"]
        .as_array()
        .map(|v| v.iter().filter_map(|s| s["direction"].as_str()).collect())
        .unwrap_or_default();
    dirs.contains(&"inbound") && dirs.contains(&"outbound")
}
