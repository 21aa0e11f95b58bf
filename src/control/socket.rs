//! The control socket's I/O: JSON lines over a Unix socket (mode 0600; peers that are not root
//! are refused, checked with SO_PEERCRED). One request per line, one response per line; a
//! `subscribe` request turns the connection into an event stream. See PROTOCOL.md; the lines
//! are understood by `api.rs`.
//!
//! Each connection has its own thread that parses nothing: it forwards lines to the control
//! thread over a channel and writes back what it answers. Malformed input gets an error line
//! naming the field; the daemon never dies on input. Request lines can carry keys: they are
//! read through [`LineReader`] and travel as `Zeroizing` buffers, wiped once handled. Each
//! request carries its peer's uid and pid to the control thread for the audit log
//! (`audit.rs`).

use std::io::{Read, Write};

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;
use zeroize::{Zeroize, Zeroizing};

/// Longest request line accepted (a batch of ~10^5 SAs fits).
pub const MAX_LINE: usize = 256 << 20;

/// Messages from connection threads to the control thread.
pub enum ApiMsg {
    /// A request line; the answer goes back on `reply` (`None`: start streaming events).
    /// The line can carry keys: it is wiped when dropped; so is the answer (`sa_export`'s
    /// carries every key).
    Request {
        line: Zeroizing<String>,
        reply: mpsc::Sender<Option<Zeroizing<String>>>,
        /// Who sent it (SO_PEERCRED), for the audit log.
        peer: Option<super::audit::Peer>,
        /// Set when the peer hangs up before the answer (a `capture` then ends early);
        /// `None` in process.
        closed: Option<Arc<AtomicBool>>,
    },
    /// Register an event stream.
    Subscribe { tx: mpsc::SyncSender<String> },
    /// A typed call run on the control thread with the control and its clock (see
    /// [`super::handle::ControlHandle`]: how the built-in IKE reaches the control API).
    Call(ControlCall),
}

/// A typed call for the control thread: runs with the control and the control clock.
pub type ControlCall = Box<dyn FnOnce(&mut super::Control, u64) + Send>;

/// Binds `path`, restricts it to its owner and serves until `stop`. A socket already at `path`
/// is replaced only when stale (nothing answers a connect); one that a live daemon serves is
/// left alone and the call fails (`AddrInUse`). On exit the socket file is removed only if it
/// is still the one bound here (same device and inode).
pub fn serve(
    path: &Path,
    tx: mpsc::Sender<ApiMsg>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    clear_stale(path)?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let l = UnixListener::bind(path)?;
    let ours = std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()))?;
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
            remove_if_ours(&path, ours);
        })
}

/// Makes way for binding `path`: nothing there, or a stale socket (removed). A socket that
/// answers is another daemon's: an error naming what to do. Anything else is left for `bind`
/// to refuse.
fn clear_stale(path: &Path) -> std::io::Result<()> {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !m.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists and is not a socket; remove it or set control.socket to another path",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another espd is serving this control socket; stop it or set control.socket to another path",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            // Stale: its daemon is gone.
            std::fs::remove_file(path)
        }
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("a socket is there but cannot be probed ({e}); not replacing it"),
        )),
    }
}

/// Removes the socket file at `path` if it is still the one with device and inode `ours` (a
/// daemon started since may have replaced a socket it found stale: that one is not ours).
fn remove_if_ours(path: &Path, ours: (u64, u64)) {
    if let Ok(m) = std::fs::symlink_metadata(path)
        && (m.dev(), m.ino()) == ours
    {
        let _ = std::fs::remove_file(path);
    }
}

fn connection(s: UnixStream, tx: mpsc::Sender<ApiMsg>) {
    let _ = s.set_nonblocking(false);
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let peer = crate::sys::peer_cred(&s).map(|(uid, pid)| super::audit::Peer { uid, pid });
    match peer.map(|p| p.uid) {
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
    let mut r = LineReader::new(s);
    loop {
        let mut buf = match r.read_line(MAX_LINE) {
            Ok(Line::Text(b)) => b,
            Ok(Line::Eof) | Err(_) => return,
            Ok(Line::TooLong) => {
                let _ = writeln!(
                    w,
                    "{}",
                    serde_json::json!({ "ok": false, "error": format!("request: longer than {MAX_LINE} bytes") })
                );
                return;
            }
        };
        if std::str::from_utf8(&buf).is_err() {
            let _ = writeln!(
                w,
                "{}",
                serde_json::json!({ "ok": false, "error": "request: not UTF-8" })
            );
            continue;
        }
        // The bytes move into the String (no copy); both wipe themselves when dropped.
        let line = match String::from_utf8(std::mem::take(&mut *buf)) {
            Ok(l) => Zeroizing::new(l),
            Err(e) => {
                e.into_bytes().zeroize();
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let (rtx, rrx) = mpsc::channel();
        let closed = Arc::new(AtomicBool::new(false));
        if tx
            .send(ApiMsg::Request {
                line,
                reply: rtx,
                peer,
                closed: Some(closed.clone()),
            })
            .is_err()
        {
            return;
        }
        match wait_answer(&rrx, &w, &closed) {
            Ok(Some(answer)) => {
                // Written straight from the wiped buffer (no formatting copy).
                if w.write_all(answer.as_bytes()).is_err() || w.write_all(b"\n").is_err() {
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

/// Waits for the answer on `rrx`, checking every 100 ms whether the peer of `s` hung up (closed
/// its socket): then sets `closed` (a running `capture` ends) and gives up.
fn wait_answer<T>(
    rrx: &mpsc::Receiver<T>,
    s: &UnixStream,
    closed: &AtomicBool,
) -> Result<T, mpsc::RecvError> {
    loop {
        match rrx.recv_timeout(Duration::from_millis(100)) {
            Ok(a) => return Ok(a),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(mpsc::RecvError),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if crate::sys::hung_up(s) {
                    closed.store(true, Ordering::Release);
                    return Err(mpsc::RecvError);
                }
            }
        }
    }
}

/// What [`LineReader::read_line`] found.
pub enum Line {
    /// The stream ended with no partial line.
    Eof,
    /// A line (with its newline, unless the stream ended first); wiped when dropped.
    Text(Zeroizing<Vec<u8>>),
    /// The line ran past the limit (what was read of it is wiped).
    TooLong,
}

/// Size of the read buffer of [`LineReader`].
const READ_CHUNK: usize = 8192;

/// Splits a stream into lines without leaving copies of them behind (request lines can carry
/// keys): bytes pass through one fixed buffer that is wiped as they are consumed, into a line
/// buffer that is wiped when it grows (no reallocation leaves the old bytes in freed memory)
/// and when the line is dropped.
pub struct LineReader<R> {
    r: R,
    buf: Zeroizing<Vec<u8>>,
    start: usize,
    end: usize,
}

impl<R: Read> LineReader<R> {
    pub fn new(r: R) -> Self {
        LineReader {
            r,
            buf: Zeroizing::new(vec![0; READ_CHUNK]),
            start: 0,
            end: 0,
        }
    }

    /// The next line, at most `max` bytes including its newline.
    pub fn read_line(&mut self, max: usize) -> std::io::Result<Line> {
        let mut line = Zeroizing::new(Vec::new());
        loop {
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
                let n = match self.r.read(&mut self.buf[..]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    return Ok(if line.is_empty() {
                        Line::Eof
                    } else {
                        Line::Text(line)
                    });
                }
                self.end = n;
            }
            let avail = &self.buf[self.start..self.end];
            let (take, done) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            if line.len() + take > max {
                self.buf[self.start..self.end].zeroize();
                self.start = self.end;
                return Ok(Line::TooLong);
            }
            push_wiping(&mut line, &avail[..take]);
            self.buf[self.start..self.start + take].zeroize();
            self.start += take;
            if done {
                return Ok(Line::Text(line));
            }
        }
    }

    /// The whole read buffer, consumed part included.
    #[cfg(test)]
    fn raw_buffer(&self) -> &[u8] {
        &self.buf[..]
    }
}

/// A byte buffer for text that holds keys (an answer serialised with `serde_json::to_writer`):
/// wiped when it grows (the old buffer, see [`push_wiping`]) and when dropped.
pub struct WipingBuf(Zeroizing<Vec<u8>>);

impl WipingBuf {
    pub fn with_capacity(n: usize) -> WipingBuf {
        WipingBuf(Zeroizing::new(Vec::with_capacity(n)))
    }

    /// The text, moved (not copied) into a wiped `String`; `None` (and wiped) if not UTF-8.
    pub fn into_string(mut self) -> Option<Zeroizing<String>> {
        match String::from_utf8(std::mem::take(&mut *self.0)) {
            Ok(s) => Some(Zeroizing::new(s)),
            Err(e) => {
                e.into_bytes().zeroize();
                None
            }
        }
    }
}

impl Write for WipingBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        push_wiping(&mut self.0, b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends `bytes`; when `line` must grow, the new buffer is allocated first and the old one
/// wiped as it is dropped.
fn push_wiping(line: &mut Zeroizing<Vec<u8>>, bytes: &[u8]) {
    if line.capacity() - line.len() < bytes.len() {
        let cap = (line.len() + bytes.len()).max(2 * line.capacity());
        let mut grown = Zeroizing::new(Vec::with_capacity(cap));
        grown.extend_from_slice(line);
        *line = grown;
    }
    line.extend_from_slice(bytes);
}

/// A client: one request, one response line. Answers are read through a [`LineReader`] (an
/// `sa_export` answer carries every key): no copy of them is left in its buffers.
pub struct Client {
    r: LineReader<UnixStream>,
    w: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> std::io::Result<Client> {
        let s = UnixStream::connect(path)?;
        Ok(Client {
            w: s.try_clone()?,
            r: LineReader::new(s),
        })
    }
    /// Sends one request (a JSON value) and returns the response.
    pub fn call(&mut self, req: &serde_json::Value) -> std::io::Result<serde_json::Value> {
        // The request can carry a key: its text is wiped once sent.
        let line = Zeroizing::new(req.to_string());
        self.call_raw(&line)
    }
    pub fn call_raw(&mut self, line: &str) -> std::io::Result<serde_json::Value> {
        self.w.write_all(line.as_bytes())?;
        self.w.write_all(b"\n")?;
        self.read_line()
    }
    /// Reads the next line (responses, then events after `subscribe`). The line's bytes are
    /// wiped once parsed; strings in the value are the caller's to wipe.
    pub fn read_line(&mut self) -> std::io::Result<serde_json::Value> {
        // The daemon is trusted: no limit beyond memory (a capture's answer can be large).
        match self.r.read_line(usize::MAX)? {
            Line::Text(l) => serde_json::from_slice(&l)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Line::Eof | Line::TooLong => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "control socket closed",
            )),
        }
    }
    pub fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.r.r.set_read_timeout(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    /// Hands out its input a few bytes at a time (lines cross reads).
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("espd-sock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A socket left by a daemon that died is replaced; a file that is not a socket is not.
    #[test]
    fn a_stale_socket_is_replaced_and_other_files_are_not() {
        let d = scratch("stale");
        let path = d.join("espd.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "the stale socket file stays behind");
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, _rx) = mpsc::channel();
        let h = serve(&path, tx, stop.clone()).expect("a stale socket is replaced");
        assert!(UnixStream::connect(&path).is_ok(), "and served");
        stop.store(true, Ordering::Release);
        h.join().unwrap();
        assert!(!path.exists(), "our socket is removed on exit");

        std::fs::write(&path, b"not a socket").unwrap();
        let (tx, _rx) = mpsc::channel();
        let e = serve(&path, tx, Arc::new(AtomicBool::new(true))).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// On exit a daemon removes its socket only if it is still its own: one bound since at the
    /// same path (by a daemon that found ours stale) stays.
    #[test]
    fn exit_removes_only_our_own_socket() {
        let d = scratch("ours");
        let path = d.join("espd.sock");
        // `first` stays bound while its file is replaced: its inode cannot be reused.
        let _first = UnixListener::bind(&path).unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        let old = (m.dev(), m.ino());
        std::fs::remove_file(&path).unwrap();
        let _second = UnixListener::bind(&path).unwrap();
        remove_if_ours(&path, old);
        assert!(path.exists(), "someone else's socket is left alone");
        let m = std::fs::symlink_metadata(&path).unwrap();
        remove_if_ours(&path, (m.dev(), m.ino()));
        assert!(!path.exists(), "our own is removed");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// serde_json writing into a [`WipingBuf`] through many growths gives the same text as
    /// `to_string`, moved out as a wiped `String`; bytes that are not UTF-8 give `None`.
    #[test]
    fn a_wiping_buffer_serialises_like_to_string() {
        let v: Vec<String> = (0..500).map(|i| format!("{i:040x}")).collect();
        let mut b = WipingBuf::with_capacity(1);
        serde_json::to_writer(&mut b, &v).unwrap();
        let s = b.into_string().unwrap();
        assert_eq!(s.as_str(), serde_json::to_string(&v).unwrap());
        let mut b = WipingBuf::with_capacity(0);
        b.write_all(&[0xff, 0xfe]).unwrap();
        assert!(b.into_string().is_none());
    }

    /// Issue 11, defect 12: a request line that carried a key leaves no copy in the reader
    /// once handed over, and lines come out whole however the stream splits them.
    #[test]
    fn request_lines_leave_no_copy_in_the_reader() {
        let key = "00112233445566778899aabbccddeeff01020304";
        let first = format!("{{\"op\":\"sa_add\",\"sa\":{{\"key\":\"{key}\"}}}}\n");
        let input = format!("{first}{{\"op\":\"stats\"}}\n{{\"op\":\"mm_list\"}}");
        let mut r = LineReader::new(input.as_bytes());
        let Line::Text(l) = r.read_line(MAX_LINE).unwrap() else {
            panic!("a line")
        };
        assert_eq!(&l[..], first.as_bytes());
        assert!(has(r.raw_buffer(), "stats"), "the rest is still buffered");
        assert!(!has(r.raw_buffer(), key), "the handed-over line is wiped");
        drop(l);
        let Line::Text(l) = r.read_line(MAX_LINE).unwrap() else {
            panic!("a line")
        };
        assert_eq!(&l[..], b"{\"op\":\"stats\"}\n");
        let Line::Text(l) = r.read_line(MAX_LINE).unwrap() else {
            panic!("the last line, without newline")
        };
        assert_eq!(&l[..], b"{\"op\":\"mm_list\"}");
        assert!(matches!(r.read_line(MAX_LINE).unwrap(), Line::Eof));
        assert!(r.raw_buffer().iter().all(|&b| b == 0));

        // A 20 kB line read 1000 bytes at a time: whole, and the limit holds.
        let long = format!("{}\n", "x".repeat(20_000));
        let mut r = LineReader::new(Trickle(long.as_bytes(), 1000));
        let Line::Text(l) = r.read_line(MAX_LINE).unwrap() else {
            panic!("a line")
        };
        assert_eq!(l.len(), 20_001);
        let mut r = LineReader::new(Trickle(long.as_bytes(), 1000));
        assert!(matches!(r.read_line(20_000).unwrap(), Line::TooLong));
        assert!(r.raw_buffer().iter().all(|&b| b == 0));
    }
}
