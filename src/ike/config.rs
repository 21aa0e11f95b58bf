//! The built-in IKE's configuration: `[[ike.peers]]` in the config file, checked into
//! [`IkePeer`]s. Every error names the key (`ike.peers[0].psk_file: ...`). Pre-shared keys are
//! read from their own file, which must not be readable by group or others.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use super::engine::ResponderLimits;
use crate::config::Tunnel;
use crate::sa::policy::{Policy, PolicyAction, Selector};
use crate::sa::{Mode, UdpEncap};

/// `[ike]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawIke {
    #[serde(default)]
    pub peers: Vec<RawPeer>,
    /// New responder main modes accepted per second from all peers (default 200).
    pub responder_mm_per_s: Option<u64>,
    /// Half-open responder main modes in all (default 1024).
    pub responder_half_open: Option<u64>,
}

/// `[ike]` `responder_mm_per_s` and `responder_half_open`, checked (errors: `(key, reason)`).
pub fn responder_limits(raw: &RawIke) -> Result<ResponderLimits, (String, String)> {
    let d = ResponderLimits::default();
    let check = |key: &str, v: Option<u64>, default: u64| match v {
        None => Ok(default),
        Some(v) if (1..=1_000_000).contains(&v) => Ok(v),
        Some(v) => Err((
            format!("ike.{key}"),
            format!("{v} is not between 1 and 1000000"),
        )),
    };
    Ok(ResponderLimits {
        mm_per_s: check("responder_mm_per_s", raw.responder_mm_per_s, d.mm_per_s)?,
        half_open: check(
            "responder_half_open",
            raw.responder_half_open,
            d.half_open as u64,
        )? as usize,
    })
}

/// One `[[ike.peers]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    tunnel: String,
    remote: Option<String>,
    psk_file: PathBuf,
    local_id: Option<String>,
    remote_id: Option<String>,
    proposals: Option<Vec<String>>,
    esp: Option<Vec<String>>,
    pfs_group: Option<String>,
    mm_lifetime_s: Option<u64>,
    qm_lifetime_s: Option<u64>,
    qm_lifetime_kb: Option<u64>,
    rekey_margin_s: Option<u64>,
    rekey_margin_kb: Option<u64>,
    reauth: Option<bool>,
    dpd_delay_s: Option<u64>,
    dpd_timeout_s: Option<u64>,
    dpd_action: Option<String>,
    initiate: Option<bool>,
}

/// Phase 1 cipher (AES-CBC, RFC 3602).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IkeCipher {
    AesCbc128,
    AesCbc256,
}

/// Phase 1 hash and PRF (HMAC, RFC 4868).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IkeHash {
    Sha256,
    Sha384,
    Sha512,
}

/// A phase 1 proposal: cipher, hash (and its HMAC as the PRF), Diffie-Hellman group (IANA
/// number: 14 MODP-2048, 19 ECP-256, 20 ECP-384, 31 Curve25519).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IkeProposal {
    pub cipher: IkeCipher,
    pub hash: IkeHash,
    pub group: u16,
}

/// An identity (ID payload, RFC 2407 §4.6.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IkeId {
    Addr(IpAddr),
    Fqdn(String),
}

/// What to do when DPD declares the peer dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpdAction {
    /// Remove the children (traffic stops; `initiate` sets up anew when the peer returns).
    Clear,
    /// Remove the children and initiate a new main mode at once.
    Restart,
}

/// One IKE peer, checked.
#[derive(Clone)]
pub struct IkePeer {
    /// Index in `[[ike.peers]]`.
    pub index: usize,
    /// The tunnel whose SAs this peer negotiates.
    pub tunnel: String,
    pub tunnel_index: u32,
    /// Our address (the tunnel's local end) and the peer's.
    pub local: IpAddr,
    pub remote: IpAddr,
    /// ESP in UDP (the tunnel's `encap = "udp"`): IKE floats to port 4500 (RFC 3947).
    pub encap: Option<UdpEncap>,
    pub psk: Zeroizing<Vec<u8>>,
    pub local_id: IkeId,
    pub remote_id: IkeId,
    /// In order of preference.
    pub proposals: Vec<IkeProposal>,
    /// AES-GCM-16 key sizes (128, 256) in order of preference.
    pub esp: Vec<u16>,
    pub pfs_group: Option<u16>,
    pub mm_lifetime_s: u64,
    pub qm_lifetime_s: u64,
    pub qm_lifetime_kb: Option<u64>,
    pub rekey_margin_s: u64,
    /// With `qm_lifetime_kb`: the quick mode's initiator rekeys this many kilobytes before
    /// the end (its responder half as many); `None`: at 90% (responder 95%) of the
    /// kilobytes. The margin must carry the traffic of a quick mode (and, with traffic one
    /// way only, of `driver::SWAP_DELAY_NS` more), or packets are refused at the hard limit.
    pub rekey_margin_kb: Option<u64>,
    pub reauth: bool,
    /// 0: no DPD.
    pub dpd_delay_s: u64,
    pub dpd_timeout_s: u64,
    pub dpd_action: DpdAction,
    pub initiate: bool,
    /// Quick-mode proxy IDs: the tunnel's first protect policy (`src`: our side, `dst`: the
    /// peer's). Other protect policies of the tunnel ride the same SAs.
    pub selector: Selector,
}

impl IkePeer {
    /// A peer with the defaults a `[[ike.peers]]` table gets (IDs: the addresses; strongSwan's
    /// proposals; ESP 128 then 256; no PFS; 28800 s / 3600 s, margin 540 s; DPD 30 s / 150 s,
    /// clear; initiate; no UDP encapsulation). Callers that build peers without a config file
    /// (benchmarks, the IKE swarm, tests) change what they need with `..IkePeer::new(..)`.
    pub fn new(
        tunnel: &str,
        local: IpAddr,
        remote: IpAddr,
        psk: &[u8],
        selector: Selector,
    ) -> IkePeer {
        IkePeer {
            index: 0,
            tunnel: tunnel.to_string(),
            tunnel_index: 0,
            local,
            remote,
            encap: None,
            psk: Zeroizing::new(psk.to_vec()),
            local_id: IkeId::Addr(local),
            remote_id: IkeId::Addr(remote),
            proposals: DEFAULT_PROPOSALS
                .iter()
                .filter_map(|s| parse_proposal(s).ok())
                .collect(),
            esp: vec![128, 256],
            pfs_group: None,
            mm_lifetime_s: 28_800,
            qm_lifetime_s: 3_600,
            qm_lifetime_kb: None,
            rekey_margin_s: 540,
            rekey_margin_kb: None,
            reauth: false,
            dpd_delay_s: 30,
            dpd_timeout_s: 150,
            dpd_action: DpdAction::Clear,
            initiate: true,
            selector,
        }
    }
}

impl std::fmt::Debug for IkePeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IkePeer")
            .field("tunnel", &self.tunnel)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("psk", &"<redacted>")
            .field("proposals", &self.proposals)
            .finish_non_exhaustive()
    }
}

/// Groups espd implements (IANA numbers).
pub const GROUPS: [u16; 4] = [14, 19, 20, 31];

/// The default phase 1 proposals: strongSwan's IKEv1 defaults that we implement.
const DEFAULT_PROPOSALS: [&str; 2] = ["aes256-sha256-ecp256", "aes128-sha256-modp2048"];

/// Parses `aes256-sha256-ecp256` (strongSwan's spelling).
pub fn parse_proposal(s: &str) -> Result<IkeProposal, String> {
    let parts: Vec<&str> = s.split('-').collect();
    let [c, h, g] = parts[..] else {
        return Err(format!(
            "`{s}` is not cipher-hash-group (e.g. aes256-sha256-ecp256)"
        ));
    };
    let cipher = match c {
        "aes128" => IkeCipher::AesCbc128,
        "aes256" => IkeCipher::AesCbc256,
        o => return Err(format!("`{o}` is not a supported cipher (aes128, aes256)")),
    };
    let hash = match h {
        "sha256" => IkeHash::Sha256,
        "sha384" => IkeHash::Sha384,
        "sha512" => IkeHash::Sha512,
        o => {
            return Err(format!(
                "`{o}` is not a supported hash (sha256, sha384, sha512)"
            ));
        }
    };
    Ok(IkeProposal {
        cipher,
        hash,
        group: parse_group(g)?,
    })
}

/// `modp2048`, `ecp256`, `ecp384`, `curve25519` (or `x25519`).
pub fn parse_group(s: &str) -> Result<u16, String> {
    Ok(match s {
        "modp2048" => 14,
        "ecp256" => 19,
        "ecp384" => 20,
        "curve25519" | "x25519" => 31,
        o => {
            return Err(format!(
                "`{o}` is not a supported group (modp2048, ecp256, ecp384, curve25519)"
            ));
        }
    })
}

/// `aes128gcm16` / `aes256gcm16` (strongSwan's spelling): the key size.
fn parse_esp(s: &str) -> Result<u16, String> {
    match s {
        "aes128gcm16" => Ok(128),
        "aes256gcm16" => Ok(256),
        o => Err(format!(
            "`{o}` is not a supported ESP proposal (aes128gcm16, aes256gcm16)"
        )),
    }
}

fn parse_id(s: &str) -> IkeId {
    match s.parse::<IpAddr>() {
        Ok(a) => IkeId::Addr(a),
        Err(_) => IkeId::Fqdn(s.trim_start_matches('@').to_string()),
    }
}

/// Reads a pre-shared key file: owner-only (mode 0600 or stricter), not empty, one secret (a
/// trailing newline is not part of it).
pub fn read_psk(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    // Owner-only and root-owned, a regular file, checked on the descriptor it is read from.
    let mut bytes = crate::config::read_secret_file(path)?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(bytes)
}

/// Checks `[[ike.peers]]` against the tunnels and policies. `base`: the config file's folder
/// (relative `psk_file`s are relative to it). Errors are `(key, reason)`.
pub fn build(
    raw: &RawIke,
    base: &Path,
    tunnels: &[Tunnel],
    policies: &[Policy],
) -> Result<Vec<IkePeer>, (String, String)> {
    let mut out: Vec<IkePeer> = Vec::new();
    for (i, p) in raw.peers.iter().enumerate() {
        let k = |f: &str| format!("ike.peers[{i}].{f}");
        let tun = tunnels
            .iter()
            .find(|t| t.name == p.tunnel)
            .ok_or_else(|| (k("tunnel"), format!("no tunnel named `{}`", p.tunnel)))?;
        if tun.mode != Mode::Tunnel {
            return Err((
                k("tunnel"),
                "the built-in IKE negotiates tunnel mode only".into(),
            ));
        }
        if let Some(o) = out.iter().find(|o| o.tunnel == p.tunnel) {
            return Err((
                k("tunnel"),
                format!(
                    "tunnel `{}` is already negotiated by ike.peers[{}]",
                    p.tunnel, o.index
                ),
            ));
        }
        let policy = policies
            .iter()
            .find(|x| x.action == PolicyAction::Protect(tun.index))
            .ok_or_else(|| {
                (
                    k("tunnel"),
                    format!(
                        "tunnel `{}` has no protect policy (the quick mode's proxy IDs come from it)",
                        p.tunnel
                    ),
                )
            })?;
        let remote = match &p.remote {
            Some(r) => r
                .parse::<IpAddr>()
                .map_err(|_| (k("remote"), format!("`{r}` is not an IP address")))?,
            None => tun.endpoints.remote,
        };
        if remote.is_ipv4() != tun.endpoints.local.is_ipv4() {
            return Err((
                k("remote"),
                "must be the same address family as the tunnel's local address".into(),
            ));
        }
        let psk_path = if p.psk_file.is_relative() {
            base.join(&p.psk_file)
        } else {
            p.psk_file.clone()
        };
        let psk = read_psk(&psk_path).map_err(|e| (k("psk_file"), e))?;
        let proposals = match &p.proposals {
            Some(v) if v.is_empty() => {
                return Err((k("proposals"), "is empty".into()));
            }
            Some(v) => v
                .iter()
                .map(|s| parse_proposal(s))
                .collect::<Result<Vec<_>, _>>(),
            None => DEFAULT_PROPOSALS
                .iter()
                .map(|s| parse_proposal(s))
                .collect(),
        }
        .map_err(|e| (k("proposals"), e))?;
        let esp = match &p.esp {
            Some(v) if v.is_empty() => return Err((k("esp"), "is empty".into())),
            Some(v) => v
                .iter()
                .map(|s| parse_esp(s))
                .collect::<Result<Vec<_>, _>>(),
            None => Ok(vec![128, 256]),
        }
        .map_err(|e| (k("esp"), e))?;
        let pfs_group = match p.pfs_group.as_deref() {
            None | Some("none") => None,
            Some(g) => Some(parse_group(g).map_err(|e| (k("pfs_group"), e))?),
        };
        let secs = |f: &str, v: Option<u64>, d: u64, min: u64| -> Result<u64, (String, String)> {
            let v = v.unwrap_or(d);
            if v < min || v > u64::from(u32::MAX) {
                return Err((k(f), format!("{v} is not between {min} and 4294967295")));
            }
            Ok(v)
        };
        let mm_lifetime_s = secs("mm_lifetime_s", p.mm_lifetime_s, 28_800, 10)?;
        let qm_lifetime_s = secs("qm_lifetime_s", p.qm_lifetime_s, 3_600, 10)?;
        let rekey_margin_s = match p.rekey_margin_s {
            Some(m) if m == 0 || m >= qm_lifetime_s => {
                return Err((
                    k("rekey_margin_s"),
                    format!("{m} must be above 0 and below qm_lifetime_s ({qm_lifetime_s})"),
                ));
            }
            Some(m) => m,
            None => 540.min(qm_lifetime_s / 3).max(1),
        };
        if let Some(kb) = p.qm_lifetime_kb
            && !(10..=(1u64 << 44)).contains(&kb)
        {
            return Err((
                k("qm_lifetime_kb"),
                format!("{kb} is not between 10 and 2^44"),
            ));
        }
        let rekey_margin_kb = match (p.rekey_margin_kb, p.qm_lifetime_kb) {
            (None, _) => None,
            (Some(_), None) => {
                return Err((
                    k("rekey_margin_kb"),
                    "needs qm_lifetime_kb (the kilobytes it is a margin of)".into(),
                ));
            }
            (Some(m), Some(kb)) if m == 0 || m >= kb => {
                return Err((
                    k("rekey_margin_kb"),
                    format!("{m} must be above 0 and below qm_lifetime_kb ({kb})"),
                ));
            }
            (Some(m), Some(_)) => Some(m),
        };
        let dpd_delay_s = secs("dpd_delay_s", p.dpd_delay_s, 30, 0)?;
        let dpd_timeout_s = secs("dpd_timeout_s", p.dpd_timeout_s, 150, 1)?;
        let dpd_action = match p.dpd_action.as_deref().unwrap_or("clear") {
            "clear" => DpdAction::Clear,
            "restart" => DpdAction::Restart,
            o => {
                return Err((k("dpd_action"), format!("`{o}` is not clear or restart")));
            }
        };
        out.push(IkePeer {
            index: i,
            tunnel: p.tunnel.clone(),
            tunnel_index: tun.index,
            local: tun.endpoints.local,
            remote,
            encap: tun.encap,
            psk,
            local_id: p
                .local_id
                .as_deref()
                .map_or(IkeId::Addr(tun.endpoints.local), parse_id),
            remote_id: p.remote_id.as_deref().map_or(IkeId::Addr(remote), parse_id),
            proposals,
            esp,
            pfs_group,
            mm_lifetime_s,
            qm_lifetime_s,
            qm_lifetime_kb: p.qm_lifetime_kb,
            rekey_margin_s,
            rekey_margin_kb,
            reauth: p.reauth.unwrap_or(false),
            dpd_delay_s,
            dpd_timeout_s,
            dpd_action,
            initiate: p.initiate.unwrap_or(true),
            selector: policy.selector,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::os::unix::fs::PermissionsExt;

    fn parse(extra: &str, psk_mode: u32) -> Result<Config, String> {
        let dir = std::env::temp_dir().join(format!(
            "espd-ike-cfg-{}-{:x}",
            std::process::id(),
            crate::now_ns()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let psk = dir.join("peer.psk");
        std::fs::write(&psk, "a-test-secret\n").unwrap();
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(psk_mode)).unwrap();
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gw-a.toml"))
                .unwrap()
                + extra;
        let r = Config::parse(&dir.join("gw.toml"), &text).map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    const PEER: &str = "\n[[ike.peers]]\ntunnel = \"to-b\"\npsk_file = \"peer.psk\"\n";

    #[test]
    fn a_peer_gets_defaults_and_its_proxy_ids_from_the_tunnel() {
        let c = parse(PEER, 0o600).unwrap();
        let p = &c.ike[0];
        assert_eq!(&p.psk[..], b"a-test-secret");
        assert_eq!(p.remote.to_string(), "203.0.113.2");
        assert_eq!(p.local_id, super::IkeId::Addr(p.local));
        assert_eq!(p.proposals.len(), 2);
        assert_eq!(p.proposals[0].group, 19);
        assert_eq!((p.mm_lifetime_s, p.qm_lifetime_s), (28_800, 3_600));
        assert!(p.rekey_margin_s < p.qm_lifetime_s);
        assert_eq!(p.selector.src.to_string(), "192.0.2.0/24");
        assert_eq!(p.selector.dst.to_string(), "198.51.100.0/24");
        assert!(!format!("{p:?}").contains("a-test-secret"));
        assert_eq!((p.qm_lifetime_kb, p.rekey_margin_kb), (None, None));
    }

    #[test]
    fn a_kilobyte_margin_goes_with_a_kilobyte_lifetime() {
        let c = parse(
            &(PEER.to_string() + "qm_lifetime_kb = 180\nrekey_margin_kb = 110\n"),
            0o600,
        )
        .unwrap();
        assert_eq!(
            (c.ike[0].qm_lifetime_kb, c.ike[0].rekey_margin_kb),
            (Some(180), Some(110))
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (PEER.to_string(), 0o644, "ike.peers[0].psk_file:"),
            (PEER.replace("to-b", "nope"), 0o600, "ike.peers[0].tunnel:"),
            (
                PEER.to_string() + "proposals = [\"aes256-md5-modp1024\"]\n",
                0o600,
                "ike.peers[0].proposals: `md5`",
            ),
            (
                PEER.to_string() + "pfs_group = \"modp1024\"\n",
                0o600,
                "ike.peers[0].pfs_group:",
            ),
            (
                PEER.to_string() + "qm_lifetime_s = 60\nrekey_margin_s = 60\n",
                0o600,
                "ike.peers[0].rekey_margin_s:",
            ),
            (
                PEER.to_string() + "rekey_margin_kb = 100\n",
                0o600,
                "ike.peers[0].rekey_margin_kb: needs qm_lifetime_kb",
            ),
            (
                PEER.to_string() + "qm_lifetime_kb = 100\nrekey_margin_kb = 100\n",
                0o600,
                "ike.peers[0].rekey_margin_kb: 100 must be above 0 and below qm_lifetime_kb (100)",
            ),
            (
                PEER.to_string() + "qm_lifetime_kb = 100\nrekey_margin_kb = 0\n",
                0o600,
                "ike.peers[0].rekey_margin_kb: 0 must be above 0",
            ),
            (
                PEER.to_string() + "dpd_action = \"hold\"\n",
                0o600,
                "ike.peers[0].dpd_action:",
            ),
            (
                PEER.repeat(2),
                0o600,
                "ike.peers[1].tunnel: tunnel `to-b` is already",
            ),
        ];
        for (extra, mode, want) in cases {
            let e = parse(&extra, mode).unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }

    #[test]
    fn responder_limits_default_and_are_checked() {
        let d = super::ResponderLimits::default();
        assert_eq!(parse(PEER, 0o600).unwrap().ike_limits, d);
        let c = parse(
            &format!("\n[ike]\nresponder_mm_per_s = 5000\nresponder_half_open = 20000\n{PEER}"),
            0o600,
        )
        .unwrap();
        assert_eq!(
            (c.ike_limits.mm_per_s, c.ike_limits.half_open),
            (5000, 20_000)
        );
        for (k, v) in [
            ("responder_mm_per_s", 0),
            ("responder_half_open", 1_000_001),
        ] {
            let e = parse(&format!("\n[ike]\n{k} = {v}\n{PEER}"), 0o600).unwrap_err();
            assert!(e.contains(&format!("ike.{k}: {v} is not between")), "{e}");
        }
    }
}
