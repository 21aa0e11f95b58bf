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
    /// Re-read the config file (or FILE) and apply what changed, like SIGHUP; refused as a
    /// whole when a change needs a restart. Prints what was added, removed and changed.
    Load {
        /// Config to apply instead of the file last loaded (it becomes the one SIGHUP reads).
        file: Option<PathBuf>,
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
        CtlOp::Load { file } => {
            // The daemon runs elsewhere: a relative path is made absolute here.
            let path = file.map(|f| std::fs::canonicalize(&f).unwrap_or(f));
            call(&socket, json!({"op": "load", "path": path}))?
        }
    };
    if !ok {
        anyhow::bail!("the daemon refused the request");
    }
    Ok(())
}
