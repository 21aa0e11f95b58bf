//! `espd ctl`: a client for the control socket. Each subcommand sends one JSON request and
//! prints the JSON answer; `events` follows the event stream; `raw` sends request lines read
//! from its argument or, with `-`, from stdin (keeps keys off the command line).

use std::io::BufRead;
use std::path::Path;

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
