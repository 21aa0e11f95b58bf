//! The configuration file (TOML): interfaces, workers, tunnels, policies and static SAs.
//!
//! Parsed into raw serde structs (unknown keys are errors), then validated into typed values
//! before anything starts. Every error names the file, the key and the reason, e.g.
//! `gw.toml: sas[1].key: expected 40 hex digits (AES-128 key + salt) or 72 (AES-256 + salt), got 39`.
//! Key material is zeroized when the config is dropped and never printed.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::datapath::pipeline::{Dataplane, L2, PipelineConfig};
use crate::esp::aead::Backend;
use crate::sa::policy::{Policy, PolicyAction, PortRange, Prefix, Selector, Spd};
use crate::sa::{Direction, Endpoints, Limits, Mode, Sa, SaParams, SaTable, UdpEncap};
use crate::wire::ethernet::Mac;

/// A configuration error: file, key path and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

// ---------- raw file format ----------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    dataplane: RawDataplane,
    interfaces: Option<RawInterfaces>,
    #[serde(default)]
    tunnels: Vec<RawTunnel>,
    #[serde(default)]
    policies: Vec<RawPolicy>,
    #[serde(default)]
    sas: Vec<RawSa>,
    /// A TOML file of named keys (`[keys]`), mode 0600 and root-owned; `[[sas]] secret = "NAME"`.
    secrets_file: Option<PathBuf>,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    ike: crate::ike::config::RawIke,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<PathBuf>,
    metrics: Option<String>,
    rekey_grace_ms: Option<u64>,
    expired_linger_ms: Option<u64>,
    tunnel_capacity: Option<u32>,
    metrics_sa_limit: Option<usize>,
}

/// Where the control socket is unless `control.socket` says otherwise (the path `espd ctl`
/// uses by default). `control.socket = ""` turns the socket off.
pub const DEFAULT_SOCKET: &str = "/run/espd/espd.sock";

/// The control thread's settings (`[control]`).
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Unix socket for the JSON-lines API (mode 0600, root peers only); `None`: off
    /// (`socket = ""`). Default [`DEFAULT_SOCKET`].
    pub socket: Option<PathBuf>,
    /// Prometheus text exposition address.
    pub metrics: Option<std::net::SocketAddr>,
    /// How long an old inbound SA keeps accepting after a rekey.
    pub rekey_grace_ms: u64,
    /// How long a hard-expired SA stays installed (its drops count as 13911) before removal.
    pub expired_linger_ms: u64,
    /// Tunnel slots (tunnels can be added at run time up to this).
    pub tunnel_capacity: u32,
    /// Per-SA metric series are exported for at most this many SAs.
    pub metrics_sa_limit: usize,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    workers: Option<usize>,
    cores: Option<Vec<usize>>,
    sa_capacity: Option<u32>,
    backend: Option<String>,
    replay_window: Option<u32>,
    default_policy: Option<String>,
    complete_checksums: Option<bool>,
    icmp_too_big: Option<bool>,
    icmp_rate: Option<u32>,
    prefetch_above: Option<u32>,
    xdp_mode: Option<String>,
    state_file: Option<PathBuf>,
    idle: Option<String>,
    spin_us: Option<u32>,
    coalesce_us: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterfaces {
    plain: RawIface,
    cipher: RawIface,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIface {
    name: String,
    #[serde(default)]
    addresses: Vec<String>,
    mac: Option<String>,
    next_hop: Option<String>,
    next_hop_mac: Option<String>,
    queues: Option<Vec<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    name: String,
    local: String,
    remote: String,
    mode: Option<String>,
    encap: Option<String>,
    udp_src_port: Option<u16>,
    udp_dst_port: Option<u16>,
    mtu: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    src: String,
    dst: String,
    protocol: Option<toml::Value>,
    src_ports: Option<String>,
    dst_ports: Option<String>,
    action: String,
    tunnel: Option<String>,
}

/// An SPI in a file or a request: a number or a hex string (`"0xa001"`).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(untagged)]
pub enum SpiValue {
    Num(i64),
    Text(#[serde(deserialize_with = "spi_text")] i64),
}

fn spi_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let s = String::deserialize(d)?;
    let t = s.trim();
    let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => i64::from_str_radix(h, 16),
        None => t.parse(),
    };
    v.map_err(|_| {
        serde::de::Error::custom(format!("`{s}` is not an SPI (a number or 0x-prefixed hex)"))
    })
}

impl SpiValue {
    /// The SPI, checked: 256..=2^32-1 (RFC 4303 §2.1 reserves 0-255).
    pub fn get(self) -> Result<u32, String> {
        let v = match self {
            SpiValue::Num(v) | SpiValue::Text(v) => v,
        };
        if !(256..=u32::MAX as i64).contains(&v) {
            return Err(format!(
                "{v} is not between 256 and 4294967295 (0-255 are reserved, RFC 4303 §2.1)"
            ));
        }
        Ok(v as u32)
    }
}

/// One `[[sas]]` of the file: an [`SaSpec`] whose key is given inline (`key`), in a file of its
/// own (`key_file`) or by name in the secrets file (`secret`); exactly one of the three.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSa {
    tunnel: String,
    direction: String,
    spi: SpiValue,
    key: Option<Zeroizing<String>>,
    key_file: Option<PathBuf>,
    secret: Option<String>,
    esn: Option<bool>,
    backend: Option<String>,
    replay_window: Option<u32>,
    lifetime: Option<Limits>,
    state: Option<crate::sa::SaState>,
}

/// The secrets file: `[keys]` maps names to hex keys (key ‖ salt).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    #[serde(default)]
    keys: HashMap<String, Zeroizing<String>>,
}

/// Opens `path` for reading without blocking (a FIFO must not hang start-up or a reload) and,
/// unless `follow`, without following a symlink in its last component; checks on the open
/// descriptor (no check-then-open race) that it is a regular file, and returns it with its
/// metadata.
fn open_regular(path: &Path, follow: bool) -> Result<(std::fs::File, std::fs::Metadata), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_NONBLOCK | libc::O_CLOEXEC | if follow { 0 } else { libc::O_NOFOLLOW };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if !follow && e.raw_os_error() == Some(libc::ELOOP) {
                format!(
                    "{} is a symbolic link: a file holding keys must be a regular file (give the path it points to)",
                    path.display()
                )
            } else {
                format!("{}: {e}", path.display())
            }
        })?;
    let meta = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file ({})",
            path.display(),
            file_kind(&meta)
        ));
    }
    Ok((f, meta))
}

/// What a non-regular file is, for errors.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Checks metadata taken from an open file holding keys: mode 0600 or stricter (no group or
/// other bits) and owned by root (or, when espd does not run as root, by the user running it).
/// The error names the file, its mode and its owner.
fn check_secret_meta(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = meta.permissions().mode() & 0o7777;
    let uid = meta.uid();
    let me = if crate::sys::is_root() {
        0
    } else {
        std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
    };
    if mode & 0o077 != 0 || (uid != 0 && uid != me) {
        return Err(format!(
            "{} holds keys but is mode {mode:04o} owned by uid {uid}: a file holding keys must be mode 0600 (no group or other bits) and owned by root (chmod 600 {p}; chown root {p})",
            path.display(),
            p = path.display()
        ));
    }
    Ok(())
}

/// Reads all of `f` into a buffer that is wiped when dropped (and wiped as it grows: no
/// reallocation leaves a copy of the key in freed memory).
fn read_wiping(
    path: &Path,
    f: &mut std::fs::File,
    size: u64,
) -> Result<Zeroizing<Vec<u8>>, String> {
    use std::io::Read;
    let mut out = Zeroizing::new(Vec::with_capacity(size.min(1 << 26) as usize + 1));
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        let n = match f.read(&mut chunk[..]) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if out.capacity() - out.len() < n {
            let mut grown = Zeroizing::new(Vec::with_capacity(2 * (out.len() + n)));
            grown.extend_from_slice(&out);
            out = grown;
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a file holding keys, safely: opened without following a symlink and without blocking
/// on a FIFO, required to be a regular file, mode 0600 or stricter and root-owned (checked on
/// the open descriptor, then read from it: no race between the check and the read). The bytes
/// are wiped when dropped. Key files, the secrets file and IKE `psk_file`s are read with it.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    let (mut f, meta) = open_regular(path, false)?;
    check_secret_meta(path, &meta)?;
    read_wiping(path, &mut f, meta.len())
}

/// Checks that `path` is a file fit to hold keys ([`read_secret_file`]'s checks) without
/// reading it.
pub fn check_secret_file(path: &Path) -> Result<(), String> {
    let (_f, meta) = open_regular(path, false)?;
    check_secret_meta(path, &meta)
}

/// [`read_secret_file`] as UTF-8 text.
fn read_secret_text(path: &Path) -> Result<Zeroizing<String>, String> {
    let mut bytes = read_secret_file(path)?;
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(s) => Ok(Zeroizing::new(s)),
        Err(e) => {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            Err(format!("{} is not UTF-8 text", path.display()))
        }
    }
}

/// Reads a key file (hex, surrounding whitespace ignored) with [`read_secret_file`].
fn read_key_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let text = read_secret_text(path)?;
    Ok(Zeroizing::new(text.trim().to_string()))
}

/// One static or programmed SA: in the config file (`[[sas]]`) and in control requests.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaSpec {
    pub tunnel: String,
    pub direction: String,
    pub spi: SpiValue,
    pub key: Zeroizing<String>,
    pub esn: Option<bool>,
    pub backend: Option<String>,
    pub replay_window: Option<u32>,
    pub lifetime: Option<Limits>,
    /// State to resume from (sequence counter, replay window, consumed lifetime), as `sa_get`
    /// returns it: an SA taken over from another gateway.
    pub state: Option<crate::sa::SaState>,
}

impl SaSpec {
    /// The typed SA this spec describes (syntax only: direction, SPI, key, backend). Errors
    /// are `(field, reason)`.
    pub fn to_new_sa(&self) -> Result<NewSa, (&'static str, String)> {
        let direction = match self.direction.as_str() {
            "in" | "inbound" => Direction::Inbound,
            "out" | "outbound" => Direction::Outbound,
            o => return Err(("direction", format!("`{o}` is not in or out"))),
        };
        let spi = self.spi.get().map_err(|e| ("spi", e))?;
        let keymat = parse_hex_key(&self.key).map_err(|e| ("key", e))?;
        let backend = self
            .backend
            .as_deref()
            .map(parse_backend)
            .transpose()
            .map_err(|e| ("backend", e))?;
        Ok(NewSa {
            tunnel: self.tunnel.clone(),
            direction,
            spi,
            keymat,
            esn: self.esn.unwrap_or(false),
            backend,
            replay_window: self.replay_window,
            limits: self.lifetime.unwrap_or_default(),
            state: self.state.clone(),
        })
    }

    /// Validates the spec against the tunnels and policies in force. Errors are
    /// `(field, reason)`.
    pub fn to_params(
        &self,
        tunnels: &[Tunnel],
        policies: &[Policy],
        backend: Backend,
        replay_window: u32,
    ) -> Result<(u32, SaParams), (&'static str, String)> {
        tunnels
            .iter()
            .find(|t| t.name == self.tunnel)
            .ok_or(("tunnel", format!("no tunnel named `{}`", self.tunnel)))?;
        self.to_new_sa()?
            .to_params(tunnels, policies, backend, replay_window)
    }
}

/// An SA to install, typed: what the control API takes from every caller (the control socket,
/// the config file, the built-in IKE). The tunnel is named; [`NewSa::to_params`] binds it.
pub struct NewSa {
    pub tunnel: String,
    pub direction: Direction,
    pub spi: u32,
    /// AES-GCM key followed by the 4-byte salt (20 or 36 bytes).
    pub keymat: Zeroizing<Vec<u8>>,
    pub esn: bool,
    /// `None`: the config's default backend.
    pub backend: Option<Backend>,
    /// `None`: the config's default window.
    pub replay_window: Option<u32>,
    pub limits: Limits,
    /// State to resume from (an SA taken over from another gateway; see `sa_get`).
    pub state: Option<crate::sa::SaState>,
}

impl fmt::Debug for NewSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSa")
            .field("tunnel", &self.tunnel)
            .field("direction", &self.direction)
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("keymat", &"<redacted>")
            .field("esn", &self.esn)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl NewSa {
    /// Binds the SA to its tunnel (endpoints, mode, encapsulation, MTU; inbound: the reversed
    /// protect selectors of the tunnel) and checks every value. Errors are `(field, reason)`.
    pub fn to_params(
        &self,
        tunnels: &[Tunnel],
        policies: &[Policy],
        backend: Backend,
        replay_window: u32,
    ) -> Result<(u32, SaParams), (&'static str, String)> {
        let tun = tunnels
            .iter()
            .find(|t| t.name == self.tunnel)
            .ok_or(("tunnel", format!("no tunnel named `{}`", self.tunnel)))?;
        let t = tun.index;
        let direction = self.direction;
        // SPI range and key length are checked by `Sa::new` (errors `spi: ...`, `key: ...`).
        let spi = self.spi;
        let backend = self.backend.unwrap_or(backend);
        let replay_window = check_window(self.replay_window.unwrap_or(replay_window))
            .map_err(|e| ("replay_window", e))?;
        let limits = self.limits;
        check_time_limits(&limits)?;
        limits.validate().map_err(|e| ("lifetime", e))?;
        // Inbound selectors: the reverse of the tunnel's protect policies (RFC 4301 §5.2), in
        // both modes (transport: they apply to the packet itself).
        let inner = if direction == Direction::Inbound {
            policies
                .iter()
                .filter(|p| p.action == PolicyAction::Protect(t))
                .map(|p| p.selector.reversed())
                .collect()
        } else {
            Vec::new()
        };
        let endpoints = if direction == Direction::Outbound {
            tun.endpoints
        } else {
            Endpoints {
                local: tun.endpoints.remote,
                remote: tun.endpoints.local,
            }
        };
        Ok((
            t,
            SaParams {
                spi,
                direction,
                mode: tun.mode,
                endpoints: Some(endpoints),
                encap: tun.encap,
                esn: self.esn,
                keymat: self.keymat.clone(),
                backend,
                limits,
                replay_window,
                inner,
                mtu: tun.mtu,
            },
        ))
    }
}

// ---------- typed config ----------

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Driver (native) mode.
    Native,
    /// Generic (skb) mode.
    Generic,
}

#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub mac: Option<Mac>,
    /// The neighbour frames leave for (its MAC comes from the kernel's neighbour table).
    pub next_hop: Option<IpAddr>,
    pub next_hop_mac: Option<Mac>,
    pub queues: Vec<u32>,
}

#[derive(Clone, Debug)]
pub struct Tunnel {
    pub name: String,
    pub index: u32,
    pub endpoints: Endpoints,
    pub mode: Mode,
    pub encap: Option<UdpEncap>,
    pub mtu: u16,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    pub workers: usize,
    pub cores: Vec<usize>,
    pub sa_capacity: u32,
    pub backend: Backend,
    pub replay_window: u32,
    pub default_policy: PolicyAction,
    pub complete_checksums: bool,
    pub icmp_too_big: bool,
    pub icmp_rate: u32,
    /// Prefetch passes above this many inbound SAs (outbound: tunnels with an SA).
    pub prefetch_above: u32,
    /// Where the sequence-number high-water marks of static outbound SAs are kept
    /// (`dataplane.state_file`; default: next to the config, `NAME.seq`).
    pub state_file: PathBuf,
    pub xdp_mode: XdpMode,
    /// What a worker does when both rx rings are empty (`dataplane.idle`, `dataplane.spin_us`).
    pub idle: crate::datapath::worker::Idle,
    pub plain: Interface,
    pub cipher: Interface,
    pub tunnels: Vec<Tunnel>,
    pub policies: Vec<Policy>,
    /// Static SAs with the index of their tunnel.
    pub sas: Vec<(u32, SaParams)>,
    /// `[[ike.peers]]`: tunnels whose SAs the built-in IKE negotiates.
    pub ike: Vec<crate::ike::config::IkePeer>,
    /// `[ike]` responder limits (for all peers together).
    pub ike_limits: crate::ike::engine::ResponderLimits,
    pub control: ControlConfig,
    /// Some `[[sas]]` hold their key inline (the file must then be 0600 and root-owned:
    /// [`Config::load_checked`]).
    pub inline_keys: bool,
    /// The `[ike]` table as written (a reload compares it: IKE changes need a restart).
    pub ike_raw: Option<toml::Value>,
}

/// The `[ike]` table of `text` (no keys: pre-shared keys live in their own files).
fn ike_table(text: &str) -> Option<toml::Value> {
    #[derive(Deserialize)]
    struct IkeOnly {
        ike: Option<toml::Value>,
    }
    toml::from_str::<IkeOnly>(text).ok().and_then(|i| i.ike)
}

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Fields whose values are key material: a parse error located in one must not quote it.
const KEY_FIELDS: [&str; 2] = ["key", "psk"];

/// When byte `at` of the TOML `text` lies in the value of a key field (`key = ...`, also in an
/// inline table or under a dotted name), that field's name.
fn key_field_at(text: &str, at: usize) -> Option<&'static str> {
    let before = text.get(..at).unwrap_or(text);
    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
    // The last `name =` before the value, after any `{` or `,` of an inline table.
    let (lhs, _) = line.rsplit_once('=')?;
    let lhs = lhs.rsplit(['{', ',']).next().unwrap_or(lhs).trim();
    let name = lhs.rsplit('.').next().unwrap_or(lhs).trim();
    let name = name.trim_matches(|c| c == '"' || c == '\'');
    KEY_FIELDS.iter().copied().find(|f| *f == name)
}

fn parse_mac(s: &str) -> Result<Mac, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!(
            "`{s}` is not a MAC address (six hex pairs separated by colons)"
        ));
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).map_err(|_| format!("`{s}` is not a MAC address"))?;
    }
    Ok(m)
}

/// Decodes hex (optionally `0x`-prefixed) into zeroizing bytes; never echoes the input.
fn parse_hex_key(s: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.len() != 40 && s.len() != 72 {
        return Err(format!(
            "expected 40 hex digits (AES-128 key + 4-byte salt) or 72 (AES-256 key + salt), got {}",
            s.len()
        ));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(s.len() / 2));
    for i in (0..s.len()).step_by(2) {
        let b = u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16)
            .map_err(|_| format!("not hexadecimal at digit {}", i + 1))?;
        out.push(b);
    }
    Ok(out)
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    match s {
        "aws-lc" | "aws-lc-rs" => Ok(Backend::AwsLc),
        "rust-crypto" | "rustcrypto" => {
            if Backend::available().contains(&Backend::RustCrypto) {
                Ok(Backend::RustCrypto)
            } else {
                Err("rust-crypto is not built into this binary (cargo feature `rustcrypto`)".into())
            }
        }
        _ => Err(format!("`{s}` is not a backend (aws-lc, rust-crypto)")),
    }
}

/// Longest time accepted anywhere a duration is given (SA and main-mode lifetimes, grace and
/// linger periods): 2^32 - 1 s, about 136 years. Times become nanoseconds on the monotonic
/// clock; this keeps every deadline far below 2^64 ns (584 years).
pub const MAX_SECONDS: u64 = u32::MAX as u64;
/// The same bound in milliseconds.
pub const MAX_MS: u64 = MAX_SECONDS * 1000;

/// `v` seconds, if within [`MAX_SECONDS`].
pub fn check_seconds(v: u64) -> Result<u64, String> {
    if v <= MAX_SECONDS {
        Ok(v)
    } else {
        Err(format!("must be at most {MAX_SECONDS} s (136 years)"))
    }
}

/// `v` milliseconds, if within [`MAX_MS`].
pub fn check_ms(v: u64) -> Result<u64, String> {
    if v <= MAX_MS {
        Ok(v)
    } else {
        Err(format!("must be at most {MAX_MS} ms (136 years)"))
    }
}

/// Serde `deserialize_with` for an optional millisecond field of a control request: refuses
/// values above [`MAX_MS`] while parsing, before the request does anything.
pub fn deserialize_grace_ms<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u64>, D::Error> {
    Option::<u64>::deserialize(d)?
        .map(check_ms)
        .transpose()
        .map_err(|e| serde::de::Error::custom(format!("grace_ms: {e}")))
}

/// The time limits of `l` within [`MAX_SECONDS`]; the error names the field.
fn check_time_limits(l: &Limits) -> Result<(), (&'static str, String)> {
    for (field, v) in [
        ("lifetime.soft_seconds", l.soft_seconds),
        ("lifetime.hard_seconds", l.hard_seconds),
        ("lifetime.soft_use_seconds", l.soft_use_seconds),
        ("lifetime.hard_use_seconds", l.hard_use_seconds),
    ] {
        if let Some(v) = v {
            check_seconds(v).map_err(|e| (field, e))?;
        }
    }
    Ok(())
}

fn check_window(w: u32) -> Result<u32, String> {
    if (64..=4096).contains(&w) && w.is_power_of_two() {
        Ok(w)
    } else {
        Err(format!("{w} is not a power of two between 64 and 4096"))
    }
}

fn parse_protocol(v: &toml::Value) -> Result<Option<u8>, String> {
    match v {
        toml::Value::String(s) => match s.as_str() {
            "any" => Ok(None),
            "tcp" => Ok(Some(6)),
            "udp" => Ok(Some(17)),
            "icmp" => Ok(Some(1)),
            "icmpv6" => Ok(Some(58)),
            _ => Err(format!(
                "`{s}` is not a protocol (any, tcp, udp, icmp, icmpv6 or a number)"
            )),
        },
        toml::Value::Integer(n) if (0..=255).contains(n) => Ok(Some(*n as u8)),
        _ => Err("expected a protocol name or a number 0-255".into()),
    }
}

/// A tunnel as written in a file or a control request. Errors are `(field, reason)`.
pub struct TunnelSpec<'a> {
    pub name: &'a str,
    pub local: &'a str,
    pub remote: &'a str,
    pub mode: Option<&'a str>,
    pub encap: Option<&'a str>,
    pub udp_src_port: Option<u16>,
    pub udp_dst_port: Option<u16>,
    pub mtu: Option<u32>,
}

impl TunnelSpec<'_> {
    /// The typed tunnel this spec describes.
    pub fn parse(&self) -> Result<NewTunnel, (&'static str, String)> {
        let addr = |f: &'static str, a: &str| {
            a.parse::<IpAddr>()
                .map_err(|_| (f, format!("`{a}` is not an IP address")))
        };
        let (local, remote) = (addr("local", self.local)?, addr("remote", self.remote)?);
        let mode = match self.mode.unwrap_or("tunnel") {
            "tunnel" => Mode::Tunnel,
            "transport" => Mode::Transport,
            o => return Err(("mode", format!("`{o}` is not tunnel or transport"))),
        };
        let encap = match self.encap.unwrap_or("none") {
            "none" => None,
            "udp" => Some(UdpEncap {
                src_port: self.udp_src_port.unwrap_or(4500),
                dst_port: self.udp_dst_port.unwrap_or(4500),
            }),
            o => return Err(("encap", format!("`{o}` is not none or udp"))),
        };
        let mtu = self.mtu.unwrap_or(1500);
        let t = NewTunnel {
            name: self.name.to_string(),
            endpoints: Endpoints { local, remote },
            mode,
            encap,
            mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
        };
        if !(576..=9216).contains(&mtu) {
            return Err(("mtu", format!("{mtu} is not between 576 and 9216")));
        }
        t.check()?;
        Ok(t)
    }

    pub fn build(&self, index: u32) -> Result<Tunnel, (&'static str, String)> {
        Ok(self.parse()?.into_tunnel(index))
    }
}

/// A tunnel to add, typed (the control API's `add_tunnel`); the control thread gives it its
/// index.
#[derive(Clone, Debug)]
pub struct NewTunnel {
    pub name: String,
    pub endpoints: Endpoints,
    pub mode: Mode,
    pub encap: Option<UdpEncap>,
    /// Largest outer packet, 576..=9216.
    pub mtu: u16,
}

impl NewTunnel {
    /// Checks the values a typed caller could get wrong. Errors are `(field, reason)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.endpoints.local.is_ipv4() != self.endpoints.remote.is_ipv4() {
            return Err(("remote", "must be the same address family as local".into()));
        }
        if self.mode == Mode::Transport && self.encap.is_some() {
            return Err((
                "encap",
                "UDP encapsulation is only supported in tunnel mode".into(),
            ));
        }
        if !(576..=9216).contains(&self.mtu) {
            return Err(("mtu", format!("{} is not between 576 and 9216", self.mtu)));
        }
        Ok(())
    }

    pub fn into_tunnel(self, index: u32) -> Tunnel {
        Tunnel {
            name: self.name,
            index,
            endpoints: self.endpoints,
            mode: self.mode,
            encap: self.encap,
            mtu: self.mtu,
        }
    }
}

/// A policy as written in a file or a control request. Errors are `(field, reason)`.
pub struct PolicySpec<'a> {
    pub src: &'a str,
    pub dst: &'a str,
    pub protocol: Option<u8>,
    pub src_ports: Option<&'a str>,
    pub dst_ports: Option<&'a str>,
    pub action: &'a str,
    pub tunnel: Option<&'a str>,
}

impl PolicySpec<'_> {
    /// The typed policy this spec describes (its tunnel still by name).
    pub fn parse(&self) -> Result<NewPolicy, (&'static str, String)> {
        let src: Prefix = self.src.parse().map_err(|e| ("src", e))?;
        let dst: Prefix = self.dst.parse().map_err(|e| ("dst", e))?;
        let ports = |v: Option<&str>, f: &'static str| {
            v.map_or(Ok(PortRange::ANY), |s| s.parse().map_err(|e| (f, e)))
        };
        let src_ports = ports(self.src_ports, "src_ports")?;
        let dst_ports = ports(self.dst_ports, "dst_ports")?;
        let action = match self.action {
            "protect" => NewAction::Protect(
                self.tunnel
                    .ok_or(("tunnel", "missing: protect needs a tunnel".to_string()))?
                    .to_string(),
            ),
            "bypass" => NewAction::Bypass,
            "discard" => NewAction::Discard,
            o => return Err(("action", format!("`{o}` is not protect, bypass or discard"))),
        };
        let p = NewPolicy {
            selector: Selector {
                src,
                dst,
                protocol: self.protocol,
                src_ports,
                dst_ports,
            },
            action,
        };
        p.check()?;
        Ok(p)
    }

    pub fn build(&self, tunnels: &[Tunnel]) -> Result<Policy, (&'static str, String)> {
        self.parse()?.resolve(tunnels)
    }
}

/// What a new policy does; a protected flow names its tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewAction {
    Protect(String),
    Bypass,
    Discard,
}

/// A policy to add, typed (the control API's `add_policies`).
#[derive(Clone, Debug)]
pub struct NewPolicy {
    pub selector: Selector,
    pub action: NewAction,
}

impl NewPolicy {
    /// Checks the selector. Errors are `(field, reason)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let s = &self.selector;
        if s.src.is_ipv6() != s.dst.is_ipv6() {
            return Err(("dst", "must be the same address family as src".into()));
        }
        if (s.src_ports != PortRange::ANY || s.dst_ports != PortRange::ANY)
            && !matches!(s.protocol, Some(6) | Some(17))
        {
            return Err(("protocol", "port ranges need protocol tcp or udp".into()));
        }
        Ok(())
    }

    /// The policy with its tunnel bound to an index.
    pub fn resolve(&self, tunnels: &[Tunnel]) -> Result<Policy, (&'static str, String)> {
        self.check()?;
        let action = match &self.action {
            NewAction::Protect(name) => {
                let t = tunnels
                    .iter()
                    .find(|t| &t.name == name)
                    .ok_or(("tunnel", format!("no tunnel named `{name}`")))?;
                PolicyAction::Protect(t.index)
            }
            NewAction::Bypass => PolicyAction::Bypass,
            NewAction::Discard => PolicyAction::Discard,
        };
        Ok(Policy {
            selector: self.selector,
            action,
        })
    }
}

/// Reads the config file (it can hold keys: the text is wiped when dropped): a symlink is
/// followed, but the file must be a regular file (a FIFO is refused rather than blocking), and
/// the metadata returned is that of the descriptor the text was read from.
fn read_config(path: &Path) -> Result<(Zeroizing<String>, std::fs::Metadata), ConfigError> {
    let err = |reason: String| {
        let prefix = format!("{}: ", path.display());
        let reason = reason.strip_prefix(&prefix).unwrap_or(&reason).to_string();
        ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            reason: format!("cannot read: {reason}"),
        }
    };
    let (mut f, meta) = open_regular(path, true).map_err(err)?;
    let mut bytes = read_wiping(path, &mut f, meta.len()).map_err(err)?;
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(s) => Ok((Zeroizing::new(s), meta)),
        Err(e) => {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            Err(err("not UTF-8 text".into()))
        }
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (text, _) = read_config(path)?;
        Self::parse(path, &text)
    }

    /// [`Config::load`], and refuses a file that holds inline keys (`[[sas]] key`) unless it is
    /// mode 0600 and root-owned (checked on the descriptor the text was read from; key and
    /// secrets files are checked by every load). What `espd run`, `espd check-config` and a
    /// reload use.
    pub fn load_checked(path: &Path) -> Result<Config, ConfigError> {
        let (text, meta) = read_config(path)?;
        let c = Self::parse(path, &text)?;
        if c.inline_keys {
            check_secret_meta(path, &meta).map_err(|reason| {
                // "PATH holds keys but ..." with the path already in front of the error.
                let prefix = format!("{} holds keys", path.display());
                let rest = reason.strip_prefix(&prefix).unwrap_or(&reason);
                ConfigError {
                    file: path.to_path_buf(),
                    key: String::new(),
                    reason: format!(
                        "holds inline keys ([[sas]] key){rest}; or move the keys to a secrets_file or key_file"
                    ),
                }
            })?;
        }
        Ok(c)
    }

    /// Validates the TOML `text` (named `path` in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cx = Ctx { file: path };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map_or((0, 0), |sp| {
                let before = text.get(..sp.start).unwrap_or(text);
                (
                    before.matches('\n').count() + 1,
                    before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1,
                )
            });
            // serde's messages quote the value ("invalid type: integer `1122...`"): never for
            // a key field.
            let reason = match e.span().and_then(|sp| key_field_at(text, sp.start)) {
                Some(field) => format!("{field}: expected a hex string in quotes"),
                None => e.message().trim().to_string(),
            };
            cx.err(format!("line {line} column {col}"), reason)
        })?;
        let d = raw.dataplane;
        let workers = d.workers.unwrap_or(1);
        if workers == 0 || workers > 256 {
            return Err(cx.err(
                "dataplane.workers",
                format!("{workers} is not between 1 and 256"),
            ));
        }
        let cores = d.cores.unwrap_or_else(|| (0..workers).collect());
        if cores.len() != workers {
            return Err(cx.err(
                "dataplane.cores",
                format!("lists {} cores for {workers} workers", cores.len()),
            ));
        }
        let sa_capacity = d.sa_capacity.unwrap_or(65536);
        if !(256..=1 << 24).contains(&sa_capacity) {
            return Err(cx.err(
                "dataplane.sa_capacity",
                format!("{sa_capacity} is not between 256 and 16777216"),
            ));
        }
        let backend = match &d.backend {
            Some(b) => parse_backend(b).map_err(|r| cx.err("dataplane.backend", r))?,
            None => Backend::AwsLc,
        };
        let replay_window = check_window(
            d.replay_window
                .unwrap_or(crate::esp::replay::DEFAULT_WINDOW),
        )
        .map_err(|r| cx.err("dataplane.replay_window", r))?;
        let default_policy = match d.default_policy.as_deref().unwrap_or("discard") {
            "discard" => PolicyAction::Discard,
            "bypass" => PolicyAction::Bypass,
            o => {
                return Err(cx.err(
                    "dataplane.default_policy",
                    format!("`{o}` is not discard or bypass"),
                ));
            }
        };
        let xdp_mode = match d.xdp_mode.as_deref().unwrap_or("native") {
            "native" | "drv" => XdpMode::Native,
            "generic" | "skb" => XdpMode::Generic,
            o => {
                return Err(cx.err(
                    "dataplane.xdp_mode",
                    format!("`{o}` is not native or generic"),
                ));
            }
        };
        let icmp_rate = d.icmp_rate.unwrap_or(1000);
        let idle =
            crate::datapath::worker::Idle::parse(d.idle.as_deref(), d.spin_us, d.coalesce_us)
                .map_err(|(key, reason)| cx.err(key, reason))?;

        let ifs = raw.interfaces.ok_or_else(|| {
            cx.err(
                "interfaces",
                "missing: [interfaces.plain] and [interfaces.cipher] are required",
            )
        })?;
        let iface = |name: &str, r: RawIface| -> Result<Interface, ConfigError> {
            let k = |f: &str| format!("interfaces.{name}.{f}");
            if r.name.is_empty() || r.name.len() > 15 {
                return Err(cx.err(k("name"), "must be 1 to 15 characters (IFNAMSIZ)"));
            }
            let mut addresses = Vec::new();
            for (i, a) in r.addresses.iter().enumerate() {
                addresses.push(a.parse::<IpAddr>().map_err(|_| {
                    cx.err(
                        format!("{}[{i}]", k("addresses")),
                        format!("`{a}` is not an IP address"),
                    )
                })?);
            }
            let mac = r
                .mac
                .as_deref()
                .map(parse_mac)
                .transpose()
                .map_err(|e| cx.err(k("mac"), e))?;
            let next_hop_mac = r
                .next_hop_mac
                .as_deref()
                .map(parse_mac)
                .transpose()
                .map_err(|e| cx.err(k("next_hop_mac"), e))?;
            let next_hop =
                match r.next_hop.as_deref() {
                    Some(a) => Some(a.parse::<IpAddr>().map_err(|_| {
                        cx.err(k("next_hop"), format!("`{a}` is not an IP address"))
                    })?),
                    None => None,
                };
            let queues = r.queues.unwrap_or_else(|| (0..workers as u32).collect());
            if queues.len() != workers {
                return Err(cx.err(
                    k("queues"),
                    format!(
                        "lists {} queues for {workers} workers (one per worker)",
                        queues.len()
                    ),
                ));
            }
            Ok(Interface {
                name: r.name,
                addresses,
                mac,
                next_hop,
                next_hop_mac,
                queues,
            })
        };
        let plain = iface("plain", ifs.plain)?;
        let cipher = iface("cipher", ifs.cipher)?;
        if plain.name == cipher.name {
            return Err(cx.err(
                "interfaces.cipher.name",
                "must differ from interfaces.plain.name",
            ));
        }

        let mut tunnels = Vec::new();
        let mut by_name = HashMap::new();
        for (i, t) in raw.tunnels.into_iter().enumerate() {
            let k = |f: &str| format!("tunnels[{i}].{f}");
            if by_name.insert(t.name.clone(), i as u32).is_some() {
                return Err(cx.err(k("name"), format!("`{}` is defined twice", t.name)));
            }
            let spec = TunnelSpec {
                name: &t.name,
                local: &t.local,
                remote: &t.remote,
                mode: t.mode.as_deref(),
                encap: t.encap.as_deref(),
                udp_src_port: t.udp_src_port,
                udp_dst_port: t.udp_dst_port,
                mtu: t.mtu,
            };
            let tunnel = spec.build(i as u32).map_err(|(f, r)| cx.err(k(f), r))?;
            if !cipher.addresses.contains(&tunnel.endpoints.local) {
                return Err(cx.err(
                    k("local"),
                    format!(
                        "{} is not one of interfaces.cipher.addresses",
                        tunnel.endpoints.local
                    ),
                ));
            }
            tunnels.push(tunnel);
        }

        let mut policies = Vec::new();
        for (i, p) in raw.policies.into_iter().enumerate() {
            let k = |f: &str| format!("policies[{i}].{f}");
            let protocol = match &p.protocol {
                Some(v) => parse_protocol(v).map_err(|e| cx.err(k("protocol"), e))?,
                None => None,
            };
            let spec = PolicySpec {
                src: &p.src,
                dst: &p.dst,
                protocol,
                src_ports: p.src_ports.as_deref(),
                dst_ports: p.dst_ports.as_deref(),
                action: &p.action,
                tunnel: p.tunnel.as_deref(),
            };
            policies.push(spec.build(&tunnels).map_err(|(f, r)| cx.err(k(f), r))?);
        }

        let base = path.parent().unwrap_or(Path::new("."));
        let relative = |f: &Path| {
            if f.is_relative() {
                base.join(f)
            } else {
                f.to_path_buf()
            }
        };
        let secrets = match &raw.secrets_file {
            Some(f) => {
                let f = relative(f);
                let text = read_secret_text(&f).map_err(|e| cx.err("secrets_file", e))?;
                // Never serde's message: it can quote a key ("invalid type: integer `1122...`").
                let s: RawSecrets = toml::from_str(&text).map_err(|e| {
                    let line = e.span().map_or(0, |sp| {
                        text.get(..sp.start).unwrap_or(&text).matches('\n').count() + 1
                    });
                    cx.err(
                        "secrets_file",
                        format!(
                            "{} line {line}: not a valid secrets file: expected a [keys] table of NAME = \"HEX\" (a hex string in quotes)",
                            f.display()
                        ),
                    )
                })?;
                Some((f, s.keys))
            }
            None => None,
        };
        let mut inline_keys = false;
        let mut specs = Vec::new();
        for (i, r) in raw.sas.into_iter().enumerate() {
            let k = |f: &str| format!("sas[{i}].{f}");
            let key = match (r.key, &r.key_file, &r.secret) {
                (Some(key), None, None) => {
                    inline_keys = true;
                    key
                }
                (None, Some(f), None) => {
                    read_key_file(&relative(f)).map_err(|e| cx.err(k("key_file"), e))?
                }
                (None, None, Some(name)) => {
                    let (f, keys) = secrets.as_ref().ok_or_else(|| {
                        cx.err(k("secret"), "needs secrets_file (a file of named keys)")
                    })?;
                    keys.get(name).cloned().ok_or_else(|| {
                        cx.err(
                            k("secret"),
                            format!("`{name}` is not in {} ([keys])", f.display()),
                        )
                    })?
                }
                _ => {
                    return Err(cx.err(k("key"), "give exactly one of key, key_file or secret"));
                }
            };
            specs.push(SaSpec {
                tunnel: r.tunnel,
                direction: r.direction,
                spi: r.spi,
                key,
                esn: r.esn,
                backend: r.backend,
                replay_window: r.replay_window,
                lifetime: r.lifetime,
                state: r.state,
            });
        }
        let mut sas = Vec::new();
        let mut spis = HashMap::new();
        let mut keys = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            if spec.state.is_some() {
                return Err(cx.err(
                    format!("sas[{i}].state"),
                    "is for `sa_add` over the control socket; a static SA resumes its sequence numbers from the state file (dataplane.state_dir)".to_string(),
                ));
            }
            let (t, p) = spec
                .to_params(&tunnels, &policies, backend, replay_window)
                .map_err(|(field, reason)| {
                    let field = if field == "lifetime" {
                        format!("lifetime.{}", reason.split(' ').next().unwrap_or(""))
                    } else {
                        field.to_string()
                    };
                    cx.err(format!("sas[{i}].{field}"), reason)
                })?;
            if let Some(prev) = spis.insert((p.spi, p.direction), i) {
                return Err(cx.err(
                    format!("sas[{i}].spi"),
                    format!("{:#x} is also used by sas[{prev}]", p.spi),
                ));
            }
            // RFC 4106 §3.1: two SAs under one key would reuse nonces (in either direction: the
            // peer encrypts under it too, and could have our own packets reflected to us).
            if let Some(prev) = keys.insert(crate::sa::sa::key_id(&p.keymat), i) {
                return Err(cx.err(
                    format!("sas[{i}].key"),
                    format!(
                        "the same key is already used by sas[{prev}] (GCM nonces would repeat); give every SA its own key"
                    ),
                ));
            }
            sas.push((t, p));
        }
        for t in &tunnels {
            let n = sas
                .iter()
                .filter(|(ti, p)| *ti == t.index && p.direction == Direction::Outbound)
                .count();
            if n > 1 {
                return Err(cx.err(
                    "sas",
                    format!("tunnel `{}` has {n} outbound SAs; at most one", t.name),
                ));
            }
        }
        let rc = raw.control;
        let metrics =
            match rc.metrics.as_deref() {
                Some(m) => Some(m.parse().map_err(|_| {
                    cx.err("control.metrics", format!("`{m}` is not an address:port"))
                })?),
                None => None,
            };
        let tunnel_capacity = rc.tunnel_capacity.unwrap_or(64).max(tunnels.len() as u32);
        if tunnel_capacity > 1 << 20 {
            return Err(cx.err(
                "control.tunnel_capacity",
                format!("{tunnel_capacity} is above 1048576"),
            ));
        }
        let ike_raw = ike_table(text);
        let ike = crate::ike::config::build(
            &raw.ike,
            path.parent().unwrap_or(Path::new(".")),
            &tunnels,
            &policies,
        )
        .map_err(|(k, r)| cx.err(k, r))?;
        let ike_limits =
            crate::ike::config::responder_limits(&raw.ike).map_err(|(k, r)| cx.err(k, r))?;
        let control = ControlConfig {
            socket: match rc.socket {
                None => Some(PathBuf::from(DEFAULT_SOCKET)),
                Some(p) if p.as_os_str().is_empty() => None,
                Some(p) => Some(p),
            },
            metrics,
            rekey_grace_ms: check_ms(rc.rekey_grace_ms.unwrap_or(2000))
                .map_err(|e| cx.err("control.rekey_grace_ms", e))?,
            expired_linger_ms: check_ms(rc.expired_linger_ms.unwrap_or(10_000))
                .map_err(|e| cx.err("control.expired_linger_ms", e))?,
            tunnel_capacity,
            metrics_sa_limit: rc.metrics_sa_limit.unwrap_or(10_000),
        };
        Ok(Config {
            control,
            inline_keys,
            ike_raw,
            file: path.to_path_buf(),
            workers,
            cores,
            sa_capacity,
            backend,
            replay_window,
            default_policy,
            complete_checksums: d.complete_checksums.unwrap_or(false),
            icmp_too_big: d.icmp_too_big.unwrap_or(true),
            icmp_rate,
            prefetch_above: d.prefetch_above.unwrap_or(4096),
            state_file: match &d.state_file {
                Some(f) if f.is_relative() => path.parent().unwrap_or(Path::new(".")).join(f),
                Some(f) => f.clone(),
                None => crate::control::seqstate::default_path(path),
            },
            xdp_mode,
            idle,
            plain,
            cipher,
            ike,
            ike_limits,
            tunnels,
            policies,
            sas,
        })
    }

    /// Builds the SA table, SPD and local addresses. SAs are installed at `now` (ns).
    pub fn build_dataplane(&self, now: u64) -> Result<Dataplane, ConfigError> {
        let table = SaTable::new(
            self.sa_capacity,
            self.control.tunnel_capacity.max(1),
            self.workers,
        );
        for (i, (t, p)) in self.sas.iter().enumerate() {
            let err = |r: String| ConfigError {
                file: self.file.clone(),
                key: format!("sas[{i}]"),
                reason: r,
            };
            let sa = Sa::new(p, self.workers, now).map_err(|e| err(e.to_string()))?;
            match p.direction {
                Direction::Inbound => table.install_inbound(sa).map_err(|e| err(e.to_string()))?,
                Direction::Outbound => {
                    table
                        .set_outbound(*t, Some(sa))
                        .map_err(|e| err(e.to_string()))?;
                }
            }
        }
        let spd = Spd::new(self.policies.clone(), self.default_policy);
        let local: Vec<IpAddr> = self
            .plain
            .addresses
            .iter()
            .chain(self.cipher.addresses.iter())
            .copied()
            .collect();
        Ok(Dataplane::new(table, spd, &local))
    }

    /// The first static SA of direction `d`.
    pub fn sa_params(&self, d: Direction) -> Option<&SaParams> {
        self.sas.iter().map(|(_, p)| p).find(|p| p.direction == d)
    }

    /// Pipeline settings (MACs from the config, if given; the daemon overrides them).
    pub fn pipeline_config(&self) -> PipelineConfig {
        let l2 = |i: &Interface| L2 {
            mac: i.mac.unwrap_or([2, 0, 0, 0, 0, 1]),
            next_hop: i.next_hop_mac.unwrap_or([2, 0, 0, 0, 0, 2]),
        };
        PipelineConfig {
            complete_checksums: self.complete_checksums,
            icmp_too_big: self.icmp_too_big,
            icmp_rate: self.icmp_rate,
            prefetch_above: self.prefetch_above,
            plain: l2(&self.plain),
            cipher: l2(&self.cipher),
            plain_v4: self.plain.addresses.iter().find_map(|a| match a {
                IpAddr::V4(a) => Some(*a),
                _ => None,
            }),
            plain_v6: self.plain.addresses.iter().find_map(|a| match a {
                IpAddr::V6(a) => Some(*a),
                _ => None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("espd-cfg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const KEY: &str = "00112233445566778899aabbccddeeff01020304";

    /// A FIFO (mode 0600, so only its type is wrong) is refused at once instead of hanging
    /// start-up or a reload on the open or the read; so is a symlink to a good key file.
    #[test]
    fn a_fifo_or_a_symlink_is_not_read_as_a_key_file() {
        let d = scratch("kinds");
        let good = d.join("good.key");
        std::fs::write(&good, KEY).unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(&read_key_file(&good).unwrap()[..], KEY);

        let fifo = d.join("fifo.key");
        let st = std::process::Command::new("mkfifo")
            .args(["-m", "600"])
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
        let e = read_key_file(&fifo).unwrap_err();
        assert!(e.contains("is not a regular file (a FIFO)"), "{e}");
        assert!(check_secret_file(&fifo).is_err());
        // The config file itself: also refused, not waited on.
        let e = Config::load(&fifo).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("a FIFO"), "{e}");

        let link = d.join("link.key");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let e = read_key_file(&link).unwrap_err();
        assert!(e.contains("is a symbolic link"), "{e}");
        let e = crate::ike::config::read_psk(&link).unwrap_err();
        assert!(e.contains("is a symbolic link"), "{e}");

        let dir = d.join("dir.key");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = read_key_file(&dir).unwrap_err();
        assert!(e.contains("not a regular file (a directory)"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Parse errors in a key field name the field and line, never the value; elsewhere serde's
    /// message stays (it helps and quotes nothing secret).
    #[test]
    fn parse_errors_in_key_fields_do_not_quote_the_value() {
        for (text, field) in [
            ("key = 1122334455", Some("key")),
            ("sas = [{ tunnel = \"t\", key = 1122334455 }]", Some("key")),
            ("sas.0.\"key\" = 1122334455", Some("key")),
            ("psk = 1122334455", Some("psk")),
            ("spi = \"x\"", None),
            ("key_file = 1122334455", None),
        ] {
            let at = text.find("1122334455").or(text.find("\"x\"")).unwrap();
            assert_eq!(key_field_at(text, at), field, "{text}");
        }
        let e = Config::parse(Path::new("gw.toml"), "[[sas]]\nkey = 1122334455667788\n")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(!e.contains("1122334455667788"), "{e}");
        assert!(
            e.contains("line 2") && e.contains("key: expected a hex string in quotes"),
            "{e}"
        );
    }
}
