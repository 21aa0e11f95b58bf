//! Prometheus text exposition (version 0.0.4) on a configurable address: per-core and per-SA
//! packets and bytes, drops by code and reason, lifetime consumed, rekeys, events by code,
//! queue-full counts. Served by its own thread, one short-lived thread per connection (a few at
//! a time, each with a deadline); it only reads counters and the SA table.

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ControlCounters;
use crate::datapath::pipeline::Dataplane;
use crate::datapath::{CoreStats, DropReason};

pub struct MetricsSource {
    pub stats: Arc<[CoreStats]>,
    pub dp: Arc<Dataplane>,
    pub counters: Arc<Mutex<ControlCounters>>,
    pub sa_limit: usize,
}

impl MetricsSource {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        let per_core = |f: &dyn Fn(&CoreStats) -> u64| -> Vec<(String, u64)> {
            self.stats
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{{core=\"{i}\"}}"), f(c)))
                .collect()
        };
        metric(
            "espd_rx_packets_total",
            "counter",
            "Frames received by the workers.",
            per_core(&|c| c.rx_packets.get()),
        );
        metric(
            "espd_rx_bytes_total",
            "counter",
            "Bytes received by the workers.",
            per_core(&|c| c.rx_bytes.get()),
        );
        metric(
            "espd_tx_packets_total",
            "counter",
            "Frames transmitted by the workers.",
            per_core(&|c| c.tx_packets.get()),
        );
        metric(
            "espd_tx_bytes_total",
            "counter",
            "Bytes transmitted by the workers.",
            per_core(&|c| c.tx_bytes.get()),
        );
        metric(
            "espd_punted_total",
            "counter",
            "Frames the pipeline left to the kernel.",
            per_core(&|c| c.punted.get()),
        );
        metric(
            "espd_bypassed_total",
            "counter",
            "Frames a bypass policy forwarded in the clear.",
            per_core(&|c| c.bypassed.get()),
        );
        metric(
            "espd_prefragmented_total",
            "counter",
            "Inner IPv4 packets fragmented before encapsulation.",
            per_core(&|c| c.prefragmented.get()),
        );
        metric(
            "espd_tx_ring_full_total",
            "counter",
            "Frames dropped because a tx ring was full.",
            per_core(&|c| c.tx_ring_full.get()),
        );
        metric(
            "espd_event_queue_full_total",
            "counter",
            "Lifetime notifications lost to a full worker queue.",
            per_core(&|c| c.events_dropped.get()),
        );
        metric(
            "espd_bad_descriptors_total",
            "counter",
            "Descriptors from the kernel outside the UMEM, dropped.",
            per_core(&|c| c.bad_descs.get()),
        );
        let mut drops = Vec::new();
        for (i, c) in self.stats.iter().enumerate() {
            for r in DropReason::ALL {
                drops.push((
                    format!(
                        "{{core=\"{i}\",code=\"{}\",reason=\"{}\"}}",
                        r.code().code,
                        r.name()
                    ),
                    c.drops_of(r),
                ));
            }
        }
        metric(
            "espd_drops_total",
            "counter",
            "Dropped frames by Windows IPsec code and reason.",
            drops,
        );
        let mut sa_p = Vec::new();
        let mut sa_b = Vec::new();
        let mut sa_c = Vec::new();
        let now = crate::now_ns();
        let (mut n, mut bytes) = (0usize, 0usize);
        self.dp.sas.for_each(|_, sa| {
            n += 1;
            if n > self.sa_limit || bytes > MAX_SA_SERIES_BYTES {
                return std::ops::ControlFlow::Break(());
            }
            let (p, b) = sa.totals();
            let l = format!(
                "{{spi=\"{:#010x}\",direction=\"{}\"}}",
                sa.spi,
                if sa.direction == crate::sa::Direction::Inbound {
                    "inbound"
                } else {
                    "outbound"
                }
            );
            // Three series of name + labels + a value of at most 20 digits.
            bytes += 3 * (l.len() + 64);
            sa_c.push((l.clone(), (sa.lifetime.consumed(p, b, now) * 1e6) as u64));
            sa_p.push((l.clone(), p));
            sa_b.push((l, b));
            std::ops::ControlFlow::Continue(())
        });
        metric("espd_sa_packets_total", "counter", "Packets per SA.", sa_p);
        metric("espd_sa_bytes_total", "counter", "Bytes per SA.", sa_b);
        metric(
            "espd_sa_lifetime_consumed_ppm",
            "gauge",
            "Most consumed hard lifetime per SA, parts per million.",
            sa_c,
        );
        metric(
            "espd_sas",
            "gauge",
            "Installed SAs.",
            vec![(String::new(), self.dp.sas.len() as u64)],
        );
        let c = self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        metric(
            "espd_rekeys_total",
            "counter",
            "Outbound SA swaps.",
            vec![(String::new(), c.rekeys)],
        );
        metric(
            "espd_events_total",
            "counter",
            "Control events by name.",
            c.events_by_name
                .iter()
                .map(|(k, v)| (format!("{{event=\"{k}\"}}"), *v))
                .collect(),
        );
        metric(
            "espd_events_by_code_total",
            "counter",
            "Control events by Windows code (13885, 13895).",
            c.events_by_code
                .iter()
                .map(|(k, v)| (format!("{{code=\"{k}\"}}"), *v))
                .collect(),
        );
        metric(
            "espd_subscriber_lag_drops_total",
            "counter",
            "Events a slow subscriber missed.",
            vec![(String::new(), c.subscriber_lag_drops)],
        );
        s
    }
}

/// Connections served at once; more are closed unanswered (a scraper retries).
pub const MAX_CONNECTIONS: usize = 4;
/// Longest request read (one read; the request line and headers of a scrape fit).
pub const MAX_REQUEST: usize = 4096;
/// Per-SA series stop at this many bytes of body (as well as at `metrics_sa_limit` SAs).
pub const MAX_SA_SERIES_BYTES: usize = 32 << 20;
/// A client gets this long to send its request...
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// ...and this long to take the whole response; then the connection is closed.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Longest single blocking write, so a handler notices `stop` and its deadline.
const WRITE_SLICE: Duration = Duration::from_millis(200);

/// Serves `GET /metrics` (any path) until `stop`.
///
/// The returned thread only accepts: each connection is served by a thread of its own (at most
/// [`MAX_CONNECTIONS`] at a time) with a read timeout and a deadline for the whole response,
/// so a client that never reads delays neither other scrapes nor shutdown, which joins only the
/// acceptor. Connection threads give up within [`WRITE_SLICE`] of `stop`.
pub fn serve(
    addr: SocketAddr,
    src: MetricsSource,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    serve_on(TcpListener::bind(addr)?, src, stop)
}

/// Serves on a bound listener (tests bind port 0).
pub fn serve_on(
    l: TcpListener,
    src: MetricsSource,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    l.set_nonblocking(true)?;
    let src = Arc::new(src);
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("espd-metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                match l.accept() {
                    Ok((s, _)) => {
                        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                            active.fetch_sub(1, Ordering::AcqRel);
                            continue; // dropped: closed unanswered
                        }
                        let (src, stop, done) = (src.clone(), stop.clone(), active.clone());
                        let spawned = std::thread::Builder::new()
                            .name("espd-metrics-conn".into())
                            .spawn(move || {
                                answer(s, &src, &stop);
                                done.fetch_sub(1, Ordering::AcqRel);
                            });
                        if spawned.is_err() {
                            active.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
}

/// Reads one request (bounded in size and time) and writes the exposition before the
/// deadline, or gives up.
fn answer(mut s: TcpStream, src: &MetricsSource, stop: &AtomicBool) {
    if s.set_nonblocking(false).is_err() || s.set_read_timeout(Some(READ_TIMEOUT)).is_err() {
        return;
    }
    let mut req = [0u8; MAX_REQUEST];
    if s.read(&mut req).is_err() {
        return;
    }
    let body = src.render();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let deadline = Instant::now() + WRITE_DEADLINE;
    if write_by(&mut s, head.as_bytes(), deadline, stop) {
        write_by(&mut s, body.as_bytes(), deadline, stop);
    }
}

/// Writes all of `buf` unless `deadline` passes or `stop` is set first; true when written.
fn write_by(s: &mut TcpStream, mut buf: &[u8], deadline: Instant, stop: &AtomicBool) -> bool {
    while !buf.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stop.load(Ordering::Acquire) {
            return false;
        }
        if s.set_write_timeout(Some(left.min(WRITE_SLICE))).is_err() {
            return false;
        }
        match s.write(buf) {
            Ok(0) => return false,
            Ok(n) => buf = &buf[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return false,
        }
    }
    true
}
