//! `espd ctl`: a client for the control socket. Each subcommand sends one JSON request and
//! prints the JSON answer; `events` follows the event stream; `raw` sends request lines read
//! from its argument or, with `-`, from stdin (keeps keys off the command line). The
//! subcommands' arguments ([`CtlArgs`]) live here; [`run`] turns them into requests.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::control::api::Client;

/// One request; prints the answer. Returns false when the answer is an error.
pub fn call(socket: &Path, req: Value) -> anyhow::Result<bool> {
    let mut c =
        Client::connect(socket).map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
    let v = c.call(&req)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(v["ok"] == true)
}

/// Sends raw request lines (from `arg`, or stdin when it is `-`).
pub fn raw(socket: &Path, arg: &str) -> anyhow::Result<bool> {
    let mut c =
        Client::connect(socket).map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
    let mut ok = true;
    // Lines can carry keys: each is wiped when dropped.
    let lines: Vec<Zeroizing<String>> = if arg == "-" {
        std::io::stdin()
            .lock()
            .lines()
            .map_while(Result::ok)
            .map(Zeroizing::new)
            .collect()
    } else {
        vec![Zeroizing::new(arg.to_string())]
    };
    for l in lines.iter().filter(|l| !l.trim().is_empty()) {
        let v = c.call_raw(l)?;
        ok &= v["ok"] == true;
        println!("{v}");
    }
    Ok(ok)
}

/// Follows the event stream until the daemon goes away.
pub fn events(socket: &Path) -> anyhow::Result<bool> {
    let mut c =
        Client::connect(socket).map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
    let first = c.call(&json!({ "op": "subscribe" }))?;
    if first["ok"] != true {
        println!("{first}");
        return Ok(false);
    }
    loop {
        match c.read_line() {
            Ok(v) => println!("{v}"),
            Err(_) => return Ok(true),
        }
    }
}

// The arguments of `espd ctl` (its help text is the subcommand's doc comment in main.rs).
#[derive(clap::Args)]
pub struct CtlArgs {
    #[arg(long, default_value = "/run/espd/espd.sock")]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub op: CtlOp,
}

#[derive(clap::Subcommand)]
pub enum CtlOp {
    /// SAs: list, get, add, del.
    Sa {
        #[command(subcommand)]
        op: SaOp,
    },
    /// Make-before-break rekey of a tunnel's outbound SA (optionally with its new inbound SA).
    Rekey {
        #[arg(long)]
        tunnel: String,
        #[arg(long)]
        out_spi: String,
        #[arg(long)]
        out_key: String,
        #[arg(long)]
        in_spi: Option<String>,
        #[arg(long)]
        in_key: Option<String>,
        /// Inbound SA to retire after the grace period.
        #[arg(long)]
        retire: Option<String>,
    },
    /// IKE main-mode records (for an external IKE daemon that programs SAs over the socket;
    /// the built-in IKE records its own).
    Mm {
        #[command(subcommand)]
        op: MmOp,
    },
    /// The built-in IKE: list its peers, initiate or terminate a tunnel's SAs.
    Ike {
        #[command(subcommand)]
        op: IkeOp,
    },
    /// Follow the event stream (one JSON line per event).
    Events,
    /// Counters.
    Stats,
    /// Send raw JSON request lines (`-`: read them from stdin).
    Raw { request: String },
    /// Record what the workers receive and send on both interfaces (the XDP redirect hides
    /// it from tcpdump) for some seconds, into FILE as pcapng (mode 0600).
    Capture {
        /// How long to capture (at most 300).
        #[arg(long)]
        seconds: f64,
        /// Bytes kept of each frame (64 to 4096).
        #[arg(long, default_value_t = crate::datapath::capture::DEFAULT_SNAPLEN)]
        snaplen: u32,
        /// Largest file, in MiB; frames beyond it are counted, not written (at most 512).
        #[arg(long, default_value_t = 64)]
        max_mb: u64,
        /// Where to write the pcapng file (created 0600).
        file: PathBuf,
    },
}

#[derive(clap::Subcommand)]
pub enum IkeOp {
    /// Peers, their main modes and children.
    List,
    /// Set the tunnel up (main mode if needed, then quick mode).
    Initiate { tunnel: String },
    /// ESP and ISAKMP DELETEs to the peer; the tunnel's SAs are removed.
    Terminate { tunnel: String },
}

#[derive(clap::Subcommand)]
pub enum SaOp {
    List {
        #[arg(long)]
        direction: Option<String>,
    },
    Get {
        spi: String,
        direction: String,
    },
    Add {
        #[arg(long)]
        tunnel: String,
        #[arg(long)]
        direction: String,
        #[arg(long)]
        spi: String,
        /// key‖salt in hex (prefer `ctl raw -` to keep keys out of the process list).
        #[arg(long)]
        key: String,
        #[arg(long)]
        esn: bool,
    },
    Del {
        spi: String,
        direction: String,
    },
    /// Write every SA's key to FILE as Wireshark's `esp_sa` table (created 0600; keys are
    /// never printed).
    Export {
        /// The `esp_sa` UAT file to write (copy it into Wireshark's profile directory).
        #[arg(long, value_name = "FILE")]
        wireshark: PathBuf,
    },
}

#[derive(clap::Subcommand)]
pub enum MmOp {
    Add {
        #[arg(long)]
        icookie: String,
        #[arg(long)]
        rcookie: String,
        #[arg(long)]
        peer: String,
        #[arg(long)]
        lifetime: u64,
        #[arg(long)]
        kb: Option<u64>,
        /// A child SA and its direction, `in:SPI` or `out:SPI` (repeatable).
        #[arg(long = "child")]
        children: Vec<String>,
    },
    /// Report that the peer deleted the main mode (surfaces 13885).
    Delete {
        #[arg(long)]
        icookie: String,
        #[arg(long)]
        rcookie: String,
    },
    List,
}

/// `espd ctl`: one request (or the event stream, or raw lines); fails when the daemon refuses.
pub fn run(a: CtlArgs) -> anyhow::Result<()> {
    let socket = a.socket;
    let ok = match a.op {
        CtlOp::Sa { op } => match op {
            SaOp::List { direction } => {
                call(&socket, json!({"op": "sa_list", "direction": direction}))?
            }
            SaOp::Get { spi, direction } => call(
                &socket,
                json!({"op": "sa_get", "spi": spi, "direction": direction}),
            )?,
            SaOp::Add {
                tunnel,
                direction,
                spi,
                key,
                esn,
            } => call(
                &socket,
                json!({"op": "sa_add", "sa": {"tunnel": tunnel, "direction": direction, "spi": spi, "key": key, "esn": esn}}),
            )?,
            SaOp::Del { spi, direction } => call(
                &socket,
                json!({"op": "sa_delete", "spi": spi, "direction": direction}),
            )?,
            SaOp::Export { wireshark } => sa_export(&socket, &wireshark)?,
        },
        CtlOp::Rekey {
            tunnel,
            out_spi,
            out_key,
            in_spi,
            in_key,
            retire,
        } => {
            let inbound = match (in_spi, in_key) {
                (Some(s), Some(k)) => {
                    json!({"tunnel": tunnel, "direction": "in", "spi": s, "key": k})
                }
                (None, None) => Value::Null,
                _ => anyhow::bail!("--in-spi and --in-key go together"),
            };
            call(
                &socket,
                json!({"op": "rekey", "tunnel": tunnel, "outbound": {"tunnel": tunnel, "direction": "out", "spi": out_spi, "key": out_key}, "inbound": inbound, "retire_inbound": retire}),
            )?
        }
        CtlOp::Mm { op } => match op {
            MmOp::Add {
                icookie,
                rcookie,
                peer,
                lifetime,
                kb,
                children,
            } => call(
                &socket,
                json!({"op": "mm_add", "icookie": icookie, "rcookie": rcookie, "peer": peer, "lifetime_s": lifetime, "lifetime_kb": kb, "children": children}),
            )?,
            MmOp::Delete { icookie, rcookie } => call(
                &socket,
                json!({"op": "mm_delete", "icookie": icookie, "rcookie": rcookie}),
            )?,
            MmOp::List => call(&socket, json!({"op": "mm_list"}))?,
        },
        CtlOp::Ike { op } => match op {
            IkeOp::List => call(&socket, json!({"op": "ike_list"}))?,
            IkeOp::Initiate { tunnel } => {
                call(&socket, json!({"op": "ike_initiate", "tunnel": tunnel}))?
            }
            IkeOp::Terminate { tunnel } => {
                call(&socket, json!({"op": "ike_terminate", "tunnel": tunnel}))?
            }
        },
        CtlOp::Events => events(&socket)?,
        CtlOp::Stats => call(&socket, json!({"op": "stats"}))?,
        CtlOp::Raw { request } => raw(&socket, &request)?,
        CtlOp::Capture {
            seconds,
            snaplen,
            max_mb,
            file,
        } => capture(&socket, seconds, snaplen, max_mb, &file)?,
    };
    if !ok {
        anyhow::bail!("the daemon refused the request");
    }
    Ok(())
}

/// Creates (or truncates) `path` with mode 0600, never through a symlink, and writes `data`.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // A file that existed keeps its mode on open: 0600 before anything is written.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// `ctl sa export --wireshark FILE`: the `sa_export` answer as Wireshark's `esp_sa` UAT file
/// (0600); prints the SAs without their keys.
pub fn sa_export(socket: &Path, file: &Path) -> anyhow::Result<bool> {
    use zeroize::Zeroize;
    let mut c =
        Client::connect(socket).map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
    let mut v = c.call(&json!({ "op": "sa_export" }))?;
    if v["ok"] != true {
        println!("{v}");
        return Ok(false);
    }
    let ip = |x: &Value| x.as_str().and_then(|s| s.parse::<std::net::IpAddr>().ok());
    let mut sas = Vec::new();
    let mut shown = Vec::new();
    for s in v["sas"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let spi_s = s["spi"].as_str().unwrap_or_default();
        let spi = u32::from_str_radix(spi_s.trim_start_matches("0x"), 16)
            .map_err(|_| anyhow::anyhow!("sa_export: bad SPI `{spi_s}`"))?;
        let key = s["key"].as_str().unwrap_or_default();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!("sa_export: SA {spi_s} came without a key");
        }
        sas.push((
            ip(&s["src"]),
            ip(&s["dst"]),
            spi,
            Zeroizing::new(key.to_string()),
        ));
        shown.push(format!(
            "  {spi_s} {:<8} {} -> {}  {}  tunnel {}",
            s["direction"].as_str().unwrap_or("?"),
            s["src"].as_str().unwrap_or("*"),
            s["dst"].as_str().unwrap_or("*"),
            s["cipher"].as_str().unwrap_or("?"),
            s["tunnel"].as_str().unwrap_or("-"),
        ));
    }
    // The answer's copies of the keys go now.
    if let Some(list) = v["sas"].as_array_mut() {
        for s in list {
            if let Some(Value::String(k)) = s.get_mut("key") {
                k.zeroize();
            }
        }
    }
    let entries: Vec<crate::pcap::EspSa> = sas
        .iter()
        .map(|(src, dst, spi, key)| crate::pcap::EspSa {
            src: *src,
            dst: *dst,
            spi: *spi,
            key_hex: key,
        })
        .collect();
    let text = crate::pcap::esp_sa_file(&entries);
    write_private(file, text.as_bytes())?;
    println!(
        "wrote {} SA(s) to {} (mode 0600: it holds keys; Wireshark reads it as esp_sa in its profile directory)",
        entries.len(),
        file.display()
    );
    for l in shown {
        println!("{l}");
    }
    Ok(true)
}

/// `ctl capture --seconds N FILE`: waits for the daemon's capture and writes its pcapng file
/// (0600); prints the counts.
pub fn capture(
    socket: &Path,
    seconds: f64,
    snaplen: u32,
    max_mb: u64,
    file: &Path,
) -> anyhow::Result<bool> {
    let mut c =
        Client::connect(socket).map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
    if seconds.is_finite() && seconds > 0.0 {
        c.set_read_timeout(Some(std::time::Duration::from_secs_f64(
            seconds.min(3600.0) + 30.0,
        )))?;
    }
    let v = c.call(&json!({
        "op": "capture",
        "seconds": seconds,
        "snaplen": snaplen,
        "max_bytes": max_mb.saturating_mul(1 << 20),
    }))?;
    if v["ok"] != true {
        println!("{v}");
        return Ok(false);
    }
    let data = v["pcapng"]
        .as_str()
        .and_then(crate::datapath::capture::base64_decode)
        .ok_or_else(|| anyhow::anyhow!("capture: the answer holds no pcapng file"))?;
    write_private(file, &data)?;
    let b = &v["by_point"];
    println!(
        "captured {} frame(s) in {} s (snaplen {}): plain rx {}, plain tx {}, cipher rx {}, cipher tx {}",
        v["frames"],
        v["seconds"],
        v["snaplen"],
        b["plain_rx"],
        b["plain_tx"],
        b["cipher_rx"],
        b["cipher_tx"]
    );
    println!(
        "dropped: {} (worker ring full), {} (file size limit)",
        v["dropped_ring_full"], v["dropped_size_limit"]
    );
    println!("wrote {} ({} bytes, pcapng)", file.display(), data.len());
    Ok(true)
}
