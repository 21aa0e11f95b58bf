//! `espd ctl`: a client for the control socket. Each subcommand sends one JSON request and
//! prints the answer: as aligned tables for operators (`status`, `sa list`, `tunnel list`,
//! `policy list`, `ike list`, `mm list`, `stats`), or with `--json` as one JSON document.
//! `events` follows the event stream; `raw` sends request lines read from its argument or,
//! with `-`, from stdin. Keys never travel on the command line: `--key-file FILE` (or `-`
//! for stdin) reads them into buffers wiped on drop. The subcommands' arguments
//! ([`CtlArgs`]) live here; [`run`] turns them into requests.

use std::io::{BufRead, Read};
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

/// Sends one request line (it may carry a key: the caller's buffer is wiped on drop).
fn ask(socket: &Path, line: &str) -> anyhow::Result<Value> {
    let mut c =
        Client::connect(socket).map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
    Ok(c.call_raw(line)?)
}

/// Prints an answer: `--json` as one pretty JSON document, else `human(answer)`; an error as
/// `error: ...`. Returns false for an error.
fn show(json: bool, v: &Value, human: impl Fn(&Value) -> String) -> bool {
    let ok = v["ok"] == true;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        );
    } else if !ok {
        println!("error: {}", v["error"].as_str().unwrap_or("(no message)"));
    } else {
        print!("{}", human(v));
    }
    ok
}

/// The most bytes a key file may hold (hex of a 36-byte key‖salt is 72 digits; the rest is
/// room for whitespace and a `0x`).
const MAX_KEY_FILE: usize = 4096;

/// Reads a key (hex of key‖salt) from `src`, or from stdin when it is `-`: whitespace and a
/// leading `0x` are removed, the digits are checked to be hexadecimal, and every buffer that
/// held them is wiped on drop. Errors never quote the file's content.
pub fn read_key(src: &Path) -> anyhow::Result<Zeroizing<String>> {
    let mut buf = Zeroizing::new(vec![0u8; MAX_KEY_FILE + 1]);
    let mut n = 0;
    let mut fill = |r: &mut dyn Read| -> std::io::Result<()> {
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let name = src.display().to_string();
    if src == Path::new("-") {
        fill(&mut std::io::stdin().lock())
    } else {
        std::fs::File::open(src).and_then(|mut f| fill(&mut f))
    }
    .map_err(|e| anyhow::anyhow!("key file {name}: {e}"))?;
    if n > MAX_KEY_FILE {
        anyhow::bail!("key file {name}: longer than {MAX_KEY_FILE} bytes: not a key");
    }
    parse_key(&buf[..n]).map_err(|e| anyhow::anyhow!("key file {name}: {e}"))
}

/// The hex digits of `text` (whitespace and a leading `0x` removed), checked.
fn parse_key(text: &[u8]) -> Result<Zeroizing<String>, &'static str> {
    let mut key = Zeroizing::new(String::with_capacity(text.len()));
    for &b in text.iter().filter(|b| !b.is_ascii_whitespace()) {
        key.push(char::from(b));
    }
    if key.starts_with("0x") || key.starts_with("0X") {
        key.replace_range(..2, "");
    }
    if key.is_empty() {
        return Err("empty: expected the key‖salt in hex");
    }
    if !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("not hexadecimal (expected the key‖salt in hex)");
    }
    Ok(key)
}

/// A value spliced into a request by [`splice`]: JSON text as is, or a string (quoted, not
/// escaped: hex only).
enum Part<'a> {
    Json(&'a str),
    Hex(&'a str),
}

/// `fields` (a JSON object) with `parts` added, as text in a buffer wiped on drop, sized once
/// so that no reallocation leaves a copy of a key behind. Keys never pass through a `Value`.
fn splice(fields: &Value, parts: &[(&str, Part<'_>)]) -> Zeroizing<String> {
    let head = fields.to_string();
    let head = head.strip_suffix('}').unwrap_or(&head);
    let len = head.len()
        + 2
        + parts
            .iter()
            .map(|(k, p)| {
                k.len()
                    + 6
                    + match p {
                        Part::Json(t) | Part::Hex(t) => t.len(),
                    }
            })
            .sum::<usize>();
    let mut s = Zeroizing::new(String::with_capacity(len));
    s.push_str(head);
    for (k, p) in parts {
        if !s.ends_with('{') {
            s.push(',');
        }
        s.push('"');
        s.push_str(k);
        s.push_str("\":");
        match p {
            Part::Json(t) => s.push_str(t),
            Part::Hex(t) => {
                s.push('"');
                s.push_str(t);
                s.push('"');
            }
        }
    }
    s.push('}');
    s
}

/// The arguments of `espd ctl` (its help text is the subcommand's doc comment in main.rs).
#[derive(clap::Args)]
pub struct CtlArgs {
    /// The daemon's control socket (`[control] socket` in its config).
    #[arg(long, global = true, default_value = "/run/espd/espd.sock")]
    pub socket: PathBuf,
    /// Print the daemon's answer as one JSON document (the machine form) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
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
    /// Keys are read from files (`-`: stdin), never from the command line.
    Rekey {
        /// The tunnel whose outbound SA is replaced.
        #[arg(long)]
        tunnel: String,
        /// SPI of the new outbound SA (`0x...` or decimal).
        #[arg(long)]
        out_spi: String,
        /// File holding the new outbound SA's key‖salt in hex (`-`: stdin).
        #[arg(long, value_name = "FILE")]
        out_key_file: PathBuf,
        /// SPI of the new inbound SA, installed first (with --in-key-file).
        #[arg(long)]
        in_spi: Option<String>,
        /// File holding the new inbound SA's key‖salt in hex (`-`: stdin; not both keys).
        #[arg(long, value_name = "FILE")]
        in_key_file: Option<PathBuf>,
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
    /// Counters: the workers' (per path, drops by reason and code) and the control thread's.
    Stats,
    /// Send raw JSON request lines (`-`: read them from stdin).
    Raw {
        /// One request line, or `-` to read lines from stdin.
        request: String,
    },
    /// Uptime, workers, tunnels, SAs by direction, packets and bytes in and out, drops, IKE
    /// peers up, and one line per tunnel.
    Status,
    /// Tunnels: configuration, SAs and counters summed over their SAs (rekeys included).
    Tunnel {
        #[command(subcommand)]
        op: TunnelOp,
    },
    /// The security policy database, in match order.
    Policy {
        #[command(subcommand)]
        op: PolicyOp,
    },
    /// Re-read the config file (or FILE) and apply what changed, like SIGHUP; refused as a
    /// whole when a change needs a restart. Prints what was added, removed and changed.
    Load {
        /// Config to apply instead of the file last loaded (it becomes the one SIGHUP reads).
        file: Option<PathBuf>,
    },
    /// Record what the workers receive and send on both interfaces (the XDP redirect hides
    /// it from tcpdump) for some seconds, into FILE as pcapng (mode 0600).
    Capture {
        /// How long to capture (at most 300).
        #[arg(long)]
        seconds: f64,
        /// Bytes kept of each frame (64 to 4096).
        #[arg(long, default_value_t = crate::datapath::capture::DEFAULT_SNAPLEN)]
        snaplen: u32,
        /// Largest file, in MiB; frames beyond it are counted, not written (at most 128).
        #[arg(long, default_value_t = 64)]
        max_mb: u64,
        /// Where to write the pcapng file (created 0600).
        file: PathBuf,
    },
}

#[derive(clap::Subcommand)]
pub enum TunnelOp {
    /// One line per tunnel.
    List,
}

#[derive(clap::Subcommand)]
pub enum PolicyOp {
    /// One line per policy, first match first.
    List,
}

#[derive(clap::Subcommand)]
pub enum IkeOp {
    /// Peers, their main modes and children.
    List,
    /// Set the tunnel up (main mode if needed, then quick mode).
    Initiate {
        /// The tunnel of an `[[ike.peers]]` entry.
        tunnel: String,
    },
    /// ESP and ISAKMP DELETEs to the peer; the tunnel's SAs are removed.
    Terminate {
        /// The tunnel of an `[[ike.peers]]` entry.
        tunnel: String,
    },
}

#[derive(clap::Subcommand)]
pub enum SaOp {
    /// One line per SA: tunnel, direction, SPI, counters, age, lifetime left, failures.
    List {
        /// Only SAs of this direction (`in` or `out`).
        #[arg(long)]
        direction: Option<String>,
    },
    /// One SA with its counters and transferable state (never its key).
    Get {
        /// The SA's SPI (`0x...` or decimal).
        spi: String,
        /// `in` or `out`.
        direction: String,
    },
    /// Install an SA; its key is read from a file or stdin, never from the command line.
    Add {
        /// The tunnel the SA belongs to.
        #[arg(long)]
        tunnel: String,
        /// `in` or `out`.
        #[arg(long)]
        direction: String,
        /// The SA's SPI (`0x...` or decimal).
        #[arg(long)]
        spi: String,
        /// File holding key‖salt in hex (20 or 36 bytes); `-` reads it from stdin.
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
        /// 64-bit extended sequence numbers (RFC 4303 §2.2.1).
        #[arg(long)]
        esn: bool,
    },
    /// Remove an SA at once.
    Del {
        /// The SA's SPI (`0x...` or decimal).
        spi: String,
        /// `in` or `out`.
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
    /// Record a main mode (phase 1 SA) of an external IKE daemon.
    Add {
        /// Initiator cookie, hex (8 bytes).
        #[arg(long)]
        icookie: String,
        /// Responder cookie, hex (8 bytes).
        #[arg(long)]
        rcookie: String,
        /// The peer's IP address.
        #[arg(long)]
        peer: String,
        /// Lifetime in seconds (13885 when it ends).
        #[arg(long)]
        lifetime: u64,
        /// Lifetime in kilobytes over its children.
        #[arg(long)]
        kb: Option<u64>,
        /// A child SA and its direction, `in:SPI` or `out:SPI` (repeatable).
        #[arg(long = "child")]
        children: Vec<String>,
    },
    /// Report that the peer deleted the main mode (surfaces 13885).
    Delete {
        /// Initiator cookie, hex (8 bytes).
        #[arg(long)]
        icookie: String,
        /// Responder cookie, hex (8 bytes).
        #[arg(long)]
        rcookie: String,
    },
    /// The recorded main modes.
    List,
}

/// `espd ctl`: one request (or the event stream, or raw lines); fails when the daemon refuses.
pub fn run(a: CtlArgs) -> anyhow::Result<()> {
    let socket = a.socket;
    let js = a.json;
    let req = |v: Value| ask(&socket, &Zeroizing::new(v.to_string()));
    let ok = match a.op {
        CtlOp::Sa { op } => match op {
            SaOp::List { direction } => show(
                js,
                &req(json!({"op": "sa_list", "direction": direction}))?,
                table::sa_list,
            ),
            SaOp::Get { spi, direction } => show(
                js,
                &req(json!({"op": "sa_get", "spi": spi, "direction": direction}))?,
                table::fields,
            ),
            SaOp::Add {
                tunnel,
                direction,
                spi,
                key_file,
                esn,
            } => {
                let key = read_key(&key_file)?;
                let sa = splice(
                    &json!({"tunnel": tunnel, "direction": direction, "spi": spi, "esn": esn}),
                    &[("key", Part::Hex(&key))],
                );
                let line = splice(&json!({"op": "sa_add"}), &[("sa", Part::Json(&sa))]);
                show(js, &ask(&socket, &line)?, table::fields)
            }
            SaOp::Del { spi, direction } => show(
                js,
                &req(json!({"op": "sa_delete", "spi": spi, "direction": direction}))?,
                table::fields,
            ),
            SaOp::Export { wireshark } => sa_export(&socket, &wireshark)?,
        },
        CtlOp::Rekey {
            tunnel,
            out_spi,
            out_key_file,
            in_spi,
            in_key_file,
            retire,
        } => {
            let stdin = Path::new("-");
            if out_key_file == stdin && in_key_file.as_deref() == Some(stdin) {
                anyhow::bail!("--out-key-file and --in-key-file cannot both be stdin (`-`)");
            }
            let inbound = match (in_spi, in_key_file) {
                (Some(s), Some(f)) => {
                    let k = read_key(&f)?;
                    Some(splice(
                        &json!({"tunnel": tunnel, "direction": "in", "spi": s}),
                        &[("key", Part::Hex(&k))],
                    ))
                }
                (None, None) => None,
                _ => anyhow::bail!("--in-spi and --in-key-file go together"),
            };
            let k = read_key(&out_key_file)?;
            let outbound = splice(
                &json!({"tunnel": tunnel, "direction": "out", "spi": out_spi}),
                &[("key", Part::Hex(&k))],
            );
            let line = splice(
                &json!({"op": "rekey", "tunnel": tunnel, "retire_inbound": retire}),
                &[
                    ("outbound", Part::Json(&outbound)),
                    (
                        "inbound",
                        Part::Json(inbound.as_deref().map_or("null", |s| s.as_str())),
                    ),
                ],
            );
            show(js, &ask(&socket, &line)?, table::fields)
        }
        CtlOp::Mm { op } => match op {
            MmOp::Add {
                icookie,
                rcookie,
                peer,
                lifetime,
                kb,
                children,
            } => show(
                js,
                &req(
                    json!({"op": "mm_add", "icookie": icookie, "rcookie": rcookie, "peer": peer, "lifetime_s": lifetime, "lifetime_kb": kb, "children": children}),
                )?,
                table::fields,
            ),
            MmOp::Delete { icookie, rcookie } => show(
                js,
                &req(json!({"op": "mm_delete", "icookie": icookie, "rcookie": rcookie}))?,
                table::fields,
            ),
            MmOp::List => show(js, &req(json!({"op": "mm_list"}))?, table::mm_list),
        },
        CtlOp::Ike { op } => match op {
            IkeOp::List => show(js, &req(json!({"op": "ike_list"}))?, table::ike_list),
            IkeOp::Initiate { tunnel } => show(
                js,
                &req(json!({"op": "ike_initiate", "tunnel": tunnel}))?,
                table::fields,
            ),
            IkeOp::Terminate { tunnel } => show(
                js,
                &req(json!({"op": "ike_terminate", "tunnel": tunnel}))?,
                table::fields,
            ),
        },
        CtlOp::Events => events(&socket)?,
        CtlOp::Stats => show(js, &req(json!({"op": "stats"}))?, table::stats),
        CtlOp::Raw { request } => raw(&socket, &request)?,
        CtlOp::Status => {
            let stats = req(json!({"op": "stats"}))?;
            let tunnels = if stats["ok"] == true {
                req(json!({"op": "tunnel_list"}))?
            } else {
                stats.clone()
            };
            let ok = stats["ok"] == true && tunnels["ok"] == true;
            // One document: the stats answer with the tunnels in it.
            let mut doc = stats;
            if let Value::Object(m) = &mut doc {
                m.insert("ok".into(), json!(ok));
                m.insert("tunnel_list".into(), tunnels["tunnels"].clone());
                if !ok && m.get("error").is_none() {
                    m.insert("error".into(), tunnels["error"].clone());
                }
            }
            show(js, &doc, table::status)
        }
        CtlOp::Tunnel { op } => match op {
            TunnelOp::List => show(js, &req(json!({"op": "tunnel_list"}))?, table::tunnel_list),
        },
        CtlOp::Policy { op } => match op {
            PolicyOp::List => show(js, &req(json!({"op": "policy_list"}))?, table::policy_list),
        },
        CtlOp::Load { file } => {
            // The daemon runs elsewhere: a relative path is made absolute here.
            let path = file.map(|f| std::fs::canonicalize(&f).unwrap_or(f));
            show(
                js,
                &req(json!({"op": "load", "path": path}))?,
                table::fields,
            )
        }
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

/// The human forms of the answers: aligned tables and `name: value` lines.
pub mod table {
    use serde_json::Value;
    use std::fmt::Write as _;

    /// Left-aligned columns separated by two spaces; a column whose cells are all numbers
    /// (or `-`) is right-aligned.
    pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
        let n = headers.len();
        let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        let mut numeric = vec![true; n];
        for r in rows {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
                numeric[i] &= c == "-" || c.parse::<f64>().is_ok();
            }
        }
        let mut out = String::new();
        let mut line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut l = String::new();
            for (i, c) in cells.enumerate().take(n) {
                let pad = width[i].saturating_sub(c.chars().count());
                if i > 0 {
                    l.push_str("  ");
                }
                if numeric[i] {
                    l.push_str(&" ".repeat(pad));
                    l.push_str(c);
                } else {
                    l.push_str(c);
                    if i + 1 < n {
                        l.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&mut headers.iter().copied());
        for r in rows {
            line(&mut r.iter().map(String::as_str));
        }
        out
    }

    /// `n` bytes in binary units (`1.5 MiB`).
    pub fn bytes(n: u64) -> String {
        const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut v = n as f64;
        let mut u = 0;
        while v >= 1024.0 && u + 1 < U.len() {
            v /= 1024.0;
            u += 1;
        }
        if u == 0 {
            format!("{n} B")
        } else {
            format!("{v:.2} {}", U[u])
        }
    }

    /// Seconds as `1d 2h 3m 4s` (largest units only).
    pub fn duration(s: f64) -> String {
        let s = s.max(0.0) as u64;
        let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
        match (d, h, m) {
            (0, 0, 0) => format!("{sec}s"),
            (0, 0, _) => format!("{m}m {sec}s"),
            (0, _, _) => format!("{h}h {m}m {sec}s"),
            _ => format!("{d}d {h}h {m}m"),
        }
    }

    fn u(v: &Value) -> u64 {
        v.as_u64().unwrap_or(0)
    }

    fn s(v: &Value) -> String {
        match v {
            Value::Null => "-".into(),
            Value::String(x) => x.clone(),
            other => other.to_string(),
        }
    }

    /// Any answer: one `name: value` line per field but `ok` (nothing for an empty answer).
    pub fn fields(v: &Value) -> String {
        let mut out = String::new();
        if let Value::Object(m) = v {
            for (k, x) in m.iter().filter(|(k, _)| *k != "ok") {
                let _ = writeln!(out, "{k}: {}", s(x));
            }
        }
        if out.is_empty() {
            out.push_str("ok\n");
        }
        out
    }

    /// `sa list`.
    pub fn sa_list(v: &Value) -> String {
        let sas = v["sas"].as_array().cloned().unwrap_or_default();
        let rows: Vec<Vec<String>> = sas
            .iter()
            .map(|a| {
                vec![
                    s(&a["tunnel"]),
                    match a["direction"].as_str() {
                        Some("inbound") => "in".into(),
                        Some("outbound") => "out".into(),
                        _ => s(&a["direction"]),
                    },
                    s(&a["spi"]),
                    s(&a["cipher"]),
                    u(&a["packets"]).to_string(),
                    bytes(u(&a["bytes"])),
                    duration(a["age_s"].as_f64().unwrap_or(0.0)),
                    a["lifetime_left_s"].as_f64().map_or("-".into(), duration),
                    u(&a["replay_failures"]).to_string(),
                    u(&a["integrity_failures"]).to_string(),
                ]
            })
            .collect();
        let mut out = render(
            &[
                "TUNNEL",
                "DIR",
                "SPI",
                "CIPHER",
                "PACKETS",
                "BYTES",
                "AGE",
                "LEFT",
                "REPLAY-FAIL",
                "ICV-FAIL",
            ],
            &rows,
        );
        let total = u(&v["total"]);
        if total as usize > rows.len() {
            let _ = writeln!(out, "({} of {total} SAs shown)", rows.len());
        }
        out
    }

    /// `tunnel list`.
    pub fn tunnel_list(v: &Value) -> String {
        let rows: Vec<Vec<String>> = v["tunnels"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                let ins: Vec<String> = t["inbound_spis"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect())
                    .unwrap_or_default();
                vec![
                    s(&t["name"]),
                    s(&t["local"]),
                    s(&t["remote"]),
                    s(&t["mode"]),
                    s(&t["encap"]),
                    s(&t["mtu"]),
                    s(&t["outbound_spi"]),
                    if ins.is_empty() {
                        "-".into()
                    } else {
                        ins.join(",")
                    },
                    u(&t["inbound"]["packets"]).to_string(),
                    bytes(u(&t["inbound"]["bytes"])),
                    u(&t["outbound"]["packets"]).to_string(),
                    bytes(u(&t["outbound"]["bytes"])),
                    (u(&t["inbound"]["replay_failures"]) + u(&t["inbound"]["integrity_failures"]))
                        .to_string(),
                ]
            })
            .collect();
        render(
            &[
                "TUNNEL",
                "LOCAL",
                "REMOTE",
                "MODE",
                "ENCAP",
                "MTU",
                "OUT-SPI",
                "IN-SPIS",
                "IN-PKTS",
                "IN-BYTES",
                "OUT-PKTS",
                "OUT-BYTES",
                "IN-FAIL",
            ],
            &rows,
        )
    }

    /// `policy list`.
    pub fn policy_list(v: &Value) -> String {
        let rows: Vec<Vec<String>> = v["policies"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let action = p["action"].as_str().unwrap_or("-");
                let action = action.split('(').next().unwrap_or(action).to_lowercase();
                vec![
                    i.to_string(),
                    s(&p["src"]),
                    s(&p["dst"]),
                    p["protocol"]
                        .as_u64()
                        .map_or("any".into(), |x| x.to_string()),
                    p["src_ports"].as_str().unwrap_or("any").to_string(),
                    p["dst_ports"].as_str().unwrap_or("any").to_string(),
                    action,
                    s(&p["tunnel"]),
                ]
            })
            .collect();
        render(
            &[
                "#", "SRC", "DST", "PROTO", "SPORTS", "DPORTS", "ACTION", "TUNNEL",
            ],
            &rows,
        )
    }

    /// `ike list`: one line per peer, then the engine's non-zero counters.
    pub fn ike_list(v: &Value) -> String {
        let rows: Vec<Vec<String>> = v["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| {
                let mms = p["main_modes"].as_array().cloned().unwrap_or_default();
                let children: Vec<String> = p["children"]
                    .as_array()
                    .map(|c| {
                        c.iter()
                            .map(|x| format!("in {:#010x}/out {:#010x}", u(&x[0]), u(&x[1])))
                            .collect()
                    })
                    .unwrap_or_default();
                vec![
                    s(&p["tunnel"]),
                    s(&p["remote"]),
                    s(&p["state"]),
                    mms.len().to_string(),
                    mms.first()
                        .map_or("-".into(), |m| duration(u(&m["age_s"]) as f64)),
                    if children.is_empty() {
                        "-".into()
                    } else {
                        children.join(", ")
                    },
                ]
            })
            .collect();
        let mut out = render(
            &[
                "TUNNEL",
                "REMOTE",
                "STATE",
                "MAIN-MODES",
                "MM-AGE",
                "CHILDREN",
            ],
            &rows,
        );
        if let Value::Object(c) = &v["counters"] {
            let nz: Vec<String> = c
                .iter()
                .filter(|(_, x)| u(x) > 0)
                .map(|(k, x)| format!("{k} {}", u(x)))
                .collect();
            let _ = writeln!(
                out,
                "counters: {}",
                if nz.is_empty() {
                    "all zero".into()
                } else {
                    nz.join(", ")
                }
            );
        }
        out
    }

    /// `mm list`.
    pub fn mm_list(v: &Value) -> String {
        let rows: Vec<Vec<String>> = v["main_modes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                vec![
                    s(&m["icookie"]),
                    s(&m["rcookie"]),
                    s(&m["peer"]),
                    s(&m["lifetime_s"]),
                    duration(m["expires_in_s"].as_f64().unwrap_or(0.0)),
                    m["children"].as_array().map_or(0, |c| c.len()).to_string(),
                ]
            })
            .collect();
        render(
            &[
                "ICOOKIE",
                "RCOOKIE",
                "PEER",
                "LIFETIME-S",
                "EXPIRES-IN",
                "CHILDREN",
            ],
            &rows,
        )
    }

    /// Drops as `total (reason n, ...)`, non-zero reasons only.
    fn drops(dp: &Value) -> String {
        let by: Vec<String> = dp["drops_by_reason"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, x)| u(x) > 0)
                    .map(|(k, x)| format!("{k} {}", u(x)))
                    .collect()
            })
            .unwrap_or_default();
        if by.is_empty() {
            u(&dp["drops"]).to_string()
        } else {
            format!("{} ({})", u(&dp["drops"]), by.join(", "))
        }
    }

    /// `status`: the summary, then one line per tunnel.
    pub fn status(v: &Value) -> String {
        let mut out = String::new();
        let dp = &v["dataplane"];
        let _ = writeln!(
            out,
            "espd: up {}, {} workers",
            duration(v["uptime_s"].as_f64().unwrap_or(0.0)),
            u(&v["workers"])
        );
        let _ = writeln!(
            out,
            "  tunnels: {}  policies: {}  SAs: {} in, {} out  IKE peers up: {}  main modes: {}",
            u(&v["tunnels"]),
            u(&v["policies"]),
            u(&v["sas_inbound"]),
            u(&v["sas_outbound"]),
            u(&v["ike_peers_up"]),
            u(&v["main_modes"])
        );
        if dp.is_object() {
            for (name, p) in [("inbound", &dp["inbound"]), ("outbound", &dp["outbound"])] {
                let _ = writeln!(
                    out,
                    "  {name:<8}  rx {} packets ({})  tx {} packets ({})",
                    u(&p["rx_packets"]),
                    bytes(u(&p["rx_bytes"])),
                    u(&p["tx_packets"]),
                    bytes(u(&p["tx_bytes"]))
                );
            }
            let _ = writeln!(out, "  drops: {}", drops(dp));
        }
        let c = &v["control"];
        let _ = writeln!(
            out,
            "  rekeys: {}  SAs installed: {}  removed: {}",
            u(&c["rekeys"]),
            u(&c["sas_installed"]),
            u(&c["sas_removed"])
        );
        if v["tunnel_list"].as_array().is_some_and(|t| !t.is_empty()) {
            out.push('\n');
            out.push_str(&tunnel_list(
                &serde_json::json!({ "tunnels": v["tunnel_list"] }),
            ));
        }
        out
    }

    /// `stats`: every counter, `name: value`, grouped.
    pub fn stats(v: &Value) -> String {
        let mut out = String::new();
        let dp = &v["dataplane"];
        let mut rows: Vec<Vec<String>> = Vec::new();
        if let Value::Object(m) = dp {
            for (k, x) in m {
                match x {
                    Value::Number(_) => rows.push(vec![format!("dataplane.{k}"), s(x)]),
                    Value::Object(o) => {
                        for (k2, y) in o {
                            rows.push(vec![format!("dataplane.{k}.{k2}"), s(y)]);
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Value::Object(m) = &v["control"] {
            for (k, x) in m {
                match x {
                    Value::Object(o) => {
                        for (k2, y) in o {
                            rows.push(vec![format!("control.{k}.{k2}"), s(y)]);
                        }
                    }
                    other => rows.push(vec![format!("control.{k}"), s(other)]),
                }
            }
        }
        for k in [
            "uptime_s",
            "workers",
            "tunnels",
            "policies",
            "sas",
            "sas_inbound",
            "sas_outbound",
            "main_modes",
            "ike_peers_up",
        ] {
            rows.push(vec![k.to_string(), s(&v[k])]);
        }
        out.push_str(&render(&["COUNTER", "VALUE"], &rows));
        out
    }
}

/// Writes `data` to `path` as a new file of mode 0600: into a temporary file created in the
/// same folder (O_EXCL|O_NOFOLLOW, so never someone else's file or a symlink), synced, then
/// renamed over `path`. A file already at `path`, whoever created it and whatever its mode, is
/// replaced, never reused; a symlink there is replaced, not followed.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{}: not a file name", path.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut tries = 0u32;
    let (tmp, mut f) = loop {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.{stamp:x}.{tries}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
            Err(e) => anyhow::bail!("{}: {e}", tmp.display()),
        }
    };
    let written = (|| {
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("{}: {e}", path.display());
    }
    // Best effort: make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
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
    // A closure, so that the answer's keys are wiped below on every way out of the loop.
    let read = (|| -> anyhow::Result<()> {
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
        Ok(())
    })();
    // The answer's copies of the keys go now.
    if let Some(list) = v["sas"].as_array_mut() {
        for s in list {
            if let Some(Value::String(k)) = s.get_mut("key") {
                k.zeroize();
            }
        }
    }
    read?;
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
        "dropped: {} (worker ring full), {} (file size limit), {} (worker too late)",
        v["dropped_ring_full"], v["dropped_size_limit"], v["dropped_late"]
    );
    println!("wrote {} ({} bytes, pcapng)", file.display(), data.len());
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_as_hex_with_whitespace_removed() {
        let k = parse_key(b"  0x0011 2233\n4455\r\n").unwrap();
        assert_eq!(&*k, "001122334455");
        assert!(parse_key(b"\n").is_err());
        let e = parse_key(b"00112233zz secret").unwrap_err();
        assert!(!e.contains("secret") && !e.contains("zz"), "{e}");
    }

    #[test]
    fn key_files_are_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("espd-ctl-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k");
        std::fs::write(&f, "00112233445566778899aabbccddeeff01020304\n").unwrap();
        assert_eq!(
            &*read_key(&f).unwrap(),
            "00112233445566778899aabbccddeeff01020304"
        );
        std::fs::write(&f, "x".repeat(MAX_KEY_FILE + 1)).unwrap();
        assert!(read_key(&f).unwrap_err().to_string().contains("longer"));
        let missing = read_key(&dir.join("none")).unwrap_err().to_string();
        assert!(missing.contains("none"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn requests_with_keys_are_spliced_as_valid_json() {
        let sa = splice(
            &json!({"tunnel": "t\"x", "direction": "in", "spi": "0x100"}),
            &[("key", Part::Hex("aabb"))],
        );
        let line = splice(
            &json!({"op": "rekey", "retire_inbound": null}),
            &[
                ("outbound", Part::Json(&sa)),
                ("inbound", Part::Json("null")),
            ],
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["outbound"]["key"], "aabb");
        assert_eq!(v["outbound"]["tunnel"], "t\"x");
        assert_eq!(v["inbound"], Value::Null);
        let empty = splice(&json!({}), &[("key", Part::Hex("00"))]);
        assert_eq!(&*empty, "{\"key\":\"00\"}");
        assert!(line.capacity() >= line.len());
    }

    #[test]
    fn tables_align_columns_and_right_align_numbers() {
        let t = table::render(
            &["NAME", "PKTS"],
            &[
                vec!["a".into(), "5".into()],
                vec!["long-name".into(), "12345".into()],
            ],
        );
        assert_eq!(t, "NAME        PKTS\na              5\nlong-name  12345\n");
        assert_eq!(table::bytes(512), "512 B");
        assert_eq!(table::bytes(1536), "1.50 KiB");
        assert_eq!(table::duration(3723.0), "1h 2m 3s");
    }
}

#[cfg(test)]
mod write_private_tests {
    use super::write_private;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A file created beforehand (mode 0644 here; another user's in real life) is replaced by
    /// a new 0600 file, not reused; a symlink is replaced and its target left untouched.
    #[test]
    fn an_existing_file_or_symlink_is_replaced_not_reused() {
        let d = std::env::temp_dir().join(format!("espd-wp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let out = d.join("keys.uat");
        std::fs::write(&out, b"old").unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Someone holding the old file open must not see the new contents.
        let held = std::fs::File::open(&out).unwrap();
        let old_ino = held.metadata().unwrap().ino();
        write_private(&out, b"secret").unwrap();
        let m = std::fs::symlink_metadata(&out).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert_ne!(m.ino(), old_ino, "a new file, not the pre-created one");
        assert_eq!(std::fs::read(&out).unwrap(), b"secret");
        let mut seen = String::new();
        std::io::Read::read_to_string(&mut &held, &mut seen).unwrap();
        assert_eq!(seen, "old");

        let target = d.join("elsewhere");
        std::fs::write(&target, b"theirs").unwrap();
        let link = d.join("link.uat");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_private(&link, b"secret").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(std::fs::read(&target).unwrap(), b"theirs");
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
