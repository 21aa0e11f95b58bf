//! The control socket: JSON lines over a Unix socket (mode 0600; peers that are not root are
//! refused, checked with SO_PEERCRED). One request per line, one response per line; a
//! `subscribe` request turns the connection into an event stream. See PROTOCOL.md.
//!
//! Each connection has its own thread that parses nothing: it forwards lines to the control
//! thread over a channel and writes back what it answers. Malformed input gets an error line
//! naming the field; the daemon never dies on input.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Longest request line accepted (a batch of ~10^5 SAs fits).
pub const MAX_LINE: usize = 256 << 20;

/// Messages from connection threads to the control thread.
pub enum ApiMsg {
    /// A request line; the answer goes back on `reply` (`None`: start streaming events).
    Request {
        line: String,
        reply: mpsc::Sender<Option<String>>,
    },
    /// Register an event stream.
    Subscribe { tx: mpsc::SyncSender<String> },
}

/// Binds `path` (replacing a stale socket), restricts it to its owner and serves until `stop`.
pub fn serve(
    path: &Path,
    tx: mpsc::Sender<ApiMsg>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    if let Ok(m) = std::fs::symlink_metadata(path)
        && std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())
    {
        std::fs::remove_file(path)?;
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    let path: PathBuf = path.to_path_buf();
    std::thread::Builder::new()
        .name("espd-api".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                match l.accept() {
                    Ok((s, _)) => {
                        let tx = tx.clone();
                        let _ = std::thread::Builder::new()
                            .name("espd-conn".into())
                            .spawn(move || connection(s, tx));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            let _ = std::fs::remove_file(&path);
        })
}

fn connection(s: UnixStream, tx: mpsc::Sender<ApiMsg>) {
    let _ = s.set_nonblocking(false);
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    match crate::sys::peer_uid(&s) {
        Some(0) => {}
        other => {
            let _ = writeln!(
                w,
                "{}",
                serde_json::json!({ "ok": false, "error": format!("peer: uid {} is not root; the control socket serves root only", other.map_or("unknown".into(), |u| u.to_string())) })
            );
            return;
        }
    }
    let mut r = BufReader::new(s);
    loop {
        let mut buf = Vec::new();
        match r
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.len() > MAX_LINE {
            let _ = writeln!(
                w,
                "{}",
                serde_json::json!({ "ok": false, "error": format!("request: longer than {MAX_LINE} bytes") })
            );
            return;
        }
        let line = match String::from_utf8(buf) {
            Ok(l) => l,
            Err(_) => {
                let _ = writeln!(
                    w,
                    "{}",
                    serde_json::json!({ "ok": false, "error": "request: not UTF-8" })
                );
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let (rtx, rrx) = mpsc::channel();
        if tx.send(ApiMsg::Request { line, reply: rtx }).is_err() {
            return;
        }
        match rrx.recv() {
            Ok(Some(answer)) => {
                if writeln!(w, "{answer}").is_err() {
                    return;
                }
            }
            Ok(None) => {
                // Event stream: one JSON line per event until the peer goes away.
                let (etx, erx) = mpsc::sync_channel(4096);
                if tx.send(ApiMsg::Subscribe { tx: etx }).is_err() {
                    return;
                }
                if writeln!(
                    w,
                    "{}",
                    serde_json::json!({ "ok": true, "subscribed": true })
                )
                .is_err()
                {
                    return;
                }
                for ev in erx {
                    if writeln!(w, "{ev}").is_err() {
                        return;
                    }
                }
                return;
            }
            Err(_) => return,
        }
    }
}

/// A client: one request, one response line.
pub struct Client {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> std::io::Result<Client> {
        let s = UnixStream::connect(path)?;
        Ok(Client {
            w: s.try_clone()?,
            r: BufReader::new(s),
        })
    }
    /// Sends one request (a JSON value) and returns the response.
    pub fn call(&mut self, req: &serde_json::Value) -> std::io::Result<serde_json::Value> {
        self.call_raw(&req.to_string())
    }
    pub fn call_raw(&mut self, line: &str) -> std::io::Result<serde_json::Value> {
        writeln!(self.w, "{line}")?;
        self.read_line()
    }
    /// Reads the next line (responses, then events after `subscribe`).
    pub fn read_line(&mut self) -> std::io::Result<serde_json::Value> {
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "control socket closed",
            ));
        }
        serde_json::from_str(&l)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
    pub fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.r.get_ref().set_read_timeout(d)
    }
}
