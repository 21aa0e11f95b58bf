//! Processes on the rig: [`Proc`] (a child in a namespace, stopped by PID when dropped), the two
//! gateways started on a built rig ([`start_gateways`]), and the capture of the wire between
//! them ([`capture_wan`]) with its classification ([`count_wire`]: ESP, cleartext leaks, ...).
//! Shared by `espd demo`, `espd bench` and the rig tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Rig;

/// A child process stopped (SIGTERM, by PID) when dropped. Its stderr is drained all the
/// time (a full pipe would block the child: a gateway logging a rekey must never stall), and
/// the last 64 KiB are kept.
pub struct Proc {
    pub name: String,
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Proc {
    pub fn spawn(name: &str, ns: &str, args: &[&str]) -> std::io::Result<Proc> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut child = child;
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(mut e) = child.stderr.take() {
            let b = buf.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = std::io::Read::read(&mut e, &mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let mut v = b.lock().unwrap_or_else(|p| p.into_inner());
                    v.extend_from_slice(&chunk[..n]);
                    let excess = v.len().saturating_sub(64 << 10);
                    v.drain(..excess);
                }
            });
        }
        Ok(Proc {
            name: name.into(),
            child,
            stderr: buf,
        })
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// True while the child has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    /// Lines of stdout, delivered on a channel as they come.
    pub fn lines(&mut self) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel();
        if let Some(out) = self.child.stdout.take() {
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        rx
    }
    /// The last 64 KiB the child wrote to stderr.
    pub fn stderr_text(&mut self) -> String {
        std::thread::sleep(Duration::from_millis(50));
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
    /// SIGTERM, then wait (SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let _ = crate::sys::kill(self.pid(), libc::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if start.elapsed() > grace {
                let _ = self.child.kill();
                return self.child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    pub fn wait_output(mut self, timeout: Duration) -> Option<String> {
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                _ if start.elapsed() > timeout => {
                    self.stop(Duration::from_secs(1));
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let mut s = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut o, &mut s);
        }
        Some(s)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop(Duration::from_secs(2));
        }
    }
}

/// Frames seen on the wire between the gateways.
#[derive(Debug, Default, serde::Serialize)]
pub struct WireCount {
    pub esp: u64,
    pub esp_in_udp: u64,
    /// Cleartext with a LAN address (192.0.2.0/24, 198.51.100.0/24, fd00:a::/64, fd00:b::/64):
    /// a leak. Must be 0.
    pub cleartext_lan: u64,
    /// Other IP between the gateways' own addresses (neighbour probes, ICMP).
    pub gateway_own: u64,
    pub non_ip: u64,
}

pub fn count_wire(pcap: &Path) -> WireCount {
    let mut c = WireCount::default();
    let Ok(f) = std::fs::File::open(pcap) else {
        return c;
    };
    let Ok(recs) = crate::pcap::read(std::io::BufReader::new(f)) else {
        return c;
    };
    for r in recs {
        let d = &r.data;
        if d.len() < 34 {
            c.non_ip += 1;
            continue;
        }
        let lan4 = |a: &[u8]| a[..3] == [192, 0, 2] || a[..3] == [198, 51, 100];
        let lan6 = |a: &[u8]| {
            a.len() >= 16
                && (a[..8] == [0xfd, 0, 0, 0xa, 0, 0, 0, 0]
                    || a[..8] == [0xfd, 0, 0, 0xb, 0, 0, 0, 0])
        };
        match (
            u16::from_be_bytes([d[12], d[13]]),
            if d[12..14] == [0x86, 0xdd] {
                d[20]
            } else {
                d[23]
            },
        ) {
            (0x0800, 50) => c.esp += 1,
            (0x0800, 17) if d.len() >= 38 && u16::from_be_bytes([d[36], d[37]]) == 4500 => {
                c.esp_in_udp += 1
            }
            (0x0800, _) if lan4(&d[26..30]) || lan4(&d[30..34]) => c.cleartext_lan += 1,
            (0x86dd, _) if d.len() >= 54 && (lan6(&d[22..38]) || lan6(&d[38..54])) => {
                c.cleartext_lan += 1
            }
            (0x0800, _) | (0x86dd, _) => c.gateway_own += 1,
            _ => c.non_ip += 1,
        }
    }
    c
}

/// Captures the wire between the gateways (the `wan` bridge) into `<rig dir>/wan.pcap`, with
/// an optional snap length and tcpdump filter. Stop the returned process to flush the file.
pub fn capture_wan(
    rig: &Rig,
    snaplen: Option<u32>,
    filter: Option<&str>,
) -> std::io::Result<(Proc, std::path::PathBuf)> {
    let pcap = rig.dir().join("wan.pcap");
    let file = pcap.to_string_lossy().to_string();
    let snap = snaplen.unwrap_or(0).to_string();
    let mut args = vec![
        "tcpdump",
        "-i",
        "br0",
        // Without it, frames still in a TPACKET_V3 block when tcpdump is stopped are never
        // written: "N packets captured" then falls short of "received by filter".
        "--immediate-mode",
        "-U",
        "-s",
        snap.as_str(),
        "-w",
        file.as_str(),
    ];
    args.extend(filter);
    Ok((Proc::spawn("tcpdump", "wan", &args)?, pcap))
}

/// Starts both gateways of `rig` with `extra` arguments; waits until both run.
pub fn start_gateways(rig: &Rig, exe: &str, extra: &[&str]) -> anyhow::Result<(Proc, Proc)> {
    let mut gws = Vec::new();
    for (name, cfg) in [("gw-a", &rig.gw_a), ("gw-b", &rig.gw_b)] {
        let cfg = cfg.to_string_lossy().to_string();
        let mut args = vec![exe, "run", "--config", cfg.as_str()];
        args.extend_from_slice(extra);
        gws.push(Proc::spawn(name, name, &args)?);
    }
    // Running = attached, bound and next hops resolved: wait until gw-a forwards a probe.
    std::thread::sleep(Duration::from_millis(1500));
    for g in gws.iter_mut() {
        if let Ok(Some(s)) = g.child.try_wait() {
            let err = g.stderr_text();
            anyhow::bail!("{} exited at start ({s}): {}", g.name, err.trim());
        }
    }
    let b = gws.pop().expect("two");
    let a = gws.pop().expect("two");
    Ok((a, b))
}
