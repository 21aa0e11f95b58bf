//! systemd's readiness protocol (sd_notify): one unix datagram per state change to the socket
//! named by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract address). Without that
//! variable (not started by systemd as `Type=notify`) every call does nothing. Messages:
//! `READY=1` once the workers run, `RELOADING=1` + `MONOTONIC_USEC=` then `READY=1` around a
//! reload, `STOPPING=1` on shutdown, `STATUS=` with what the daemon holds.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where notifications go (nowhere without `$NOTIFY_SOCKET`).
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// The last `STATUS=` sent (a status is sent only when it changed).
    last_status: String,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`.
    pub fn from_env() -> Notifier {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(v) => Notifier::new(&v.to_string_lossy()).unwrap_or_else(|e| {
                tracing::warn!(
                    "NOTIFY_SOCKET={}: {e}; no readiness notifications",
                    v.display()
                );
                Notifier::none()
            }),
            None => Notifier::none(),
        }
    }

    /// Sends nothing.
    pub fn none() -> Notifier {
        Notifier {
            target: None,
            last_status: String::new(),
        }
    }

    /// To `addr`: a path, or `@name` for a Linux abstract socket.
    pub fn new(addr: &str) -> std::io::Result<Notifier> {
        let sa = match addr.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None if addr.starts_with('/') => SocketAddr::from_pathname(addr)?,
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an @abstract name",
                ));
            }
        };
        Ok(Notifier {
            target: Some((UnixDatagram::unbound()?, sa)),
            last_status: String::new(),
        })
    }

    /// Sends `msg` (newline-separated `KEY=value` lines). Failures are logged, never fatal.
    pub fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(msg.as_bytes(), addr)
        {
            tracing::debug!("sd_notify: {e}");
        }
    }

    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// Before a reload (systemd ≥ 253 wants the monotonic time with it).
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            crate::sys::monotonic_us()
        ));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// `STATUS=status`, only if it differs from the last one sent. Returns whether it was sent.
    pub fn status(&mut self, status: &str) -> bool {
        if status == self.last_status {
            return false;
        }
        self.last_status = status.to_string();
        self.send(&format!("STATUS={status}"));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(s: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("espd-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.ready();
        assert_eq!(recv(&server), "READY=1");
        n.reloading();
        let r = recv(&server);
        let (first, usec) = r.split_once('\n').unwrap();
        assert_eq!(first, "RELOADING=1");
        let usec: u64 = usec
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0 && usec <= crate::sys::monotonic_us());
        assert!(n.status("1 tunnel(s), 2 SA(s)"));
        assert_eq!(recv(&server), "STATUS=1 tunnel(s), 2 SA(s)");
        // Unchanged: nothing sent; the next datagram is the stop.
        assert!(!n.status("1 tunnel(s), 2 SA(s)"));
        n.stopping();
        assert_eq!(recv(&server), "STOPPING=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("espd-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::new(&format!("@{name}")).unwrap();
        n.ready();
        assert_eq!(recv(&server), "READY=1");
    }

    #[test]
    fn bad_or_missing_addresses_send_nothing() {
        assert!(Notifier::new("relative/path").is_err());
        // No target: calls are no-ops (nothing to observe but that they do not fail).
        let mut n = Notifier::none();
        n.ready();
        assert!(n.status("x"));
    }
}
