//! Prometheus text exposition (version 0.0.4) on a configurable address: per-core packets and
//! bytes (also per pipeline path), drops by code and reason, per-SA packets, bytes, replay and
//! integrity failures and lifetime consumed (labelled by SPI, direction and tunnel), per-tunnel
//! totals that survive rekeys (`espd_tunnel_*`), rekeys, events by code, queue-full counts.
//! Served by its own thread, one short-lived thread per connection (a few at a time, each with
//! a deadline); it only reads counters and the SA table. [`METRIC_NAMES`] lists every metric
//! (the Grafana dashboard in dist/grafana/ is checked against it).

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use super::ControlCounters;
use super::types::{SaTotals, dir_index};
use crate::datapath::pipeline::Dataplane;
use crate::datapath::{CoreStats, DropReason, Path};

/// Label values of `direction`, by [`dir_index`].
const DIRECTIONS: [&str; 2] = ["inbound", "outbound"];

/// The `tunnel` label of an SA: its tunnel's name (empty while unknown).
fn tunnel_label(names: &BTreeMap<u32, String>, t: Option<u32>) -> String {
    t.and_then(|t| names.get(&t).cloned()).unwrap_or_default()
}

/// Escapes a label value (Prometheus text format: backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every metric name [`MetricsSource::render`] emits (the Grafana dashboard's test checks its
/// queries against this list).
pub const METRIC_NAMES: &[&str] = &[
    "espd_rx_packets_total",
    "espd_rx_bytes_total",
    "espd_tx_packets_total",
    "espd_tx_bytes_total",
    "espd_path_rx_packets_total",
    "espd_path_rx_bytes_total",
    "espd_path_tx_packets_total",
    "espd_path_tx_bytes_total",
    "espd_punted_total",
    "espd_bypassed_total",
    "espd_prefragmented_total",
    "espd_tx_ring_full_total",
    "espd_event_queue_full_total",
    "espd_bad_descriptors_total",
    "espd_drops_total",
    "espd_sa_packets_total",
    "espd_sa_bytes_total",
    "espd_sa_lifetime_consumed_ppm",
    "espd_sa_replay_failures_total",
    "espd_sa_integrity_failures_total",
    "espd_tunnel_packets_total",
    "espd_tunnel_bytes_total",
    "espd_tunnel_replay_failures_total",
    "espd_tunnel_integrity_failures_total",
    "espd_tunnel_sas",
    "espd_sas",
    "espd_rekeys_total",
    "espd_events_total",
    "espd_events_by_code_total",
    "espd_subscriber_lag_drops_total",
];

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
            per_core(&|c| c.rx_packets()),
        );
        metric(
            "espd_rx_bytes_total",
            "counter",
            "Bytes received by the workers.",
            per_core(&|c| c.rx_bytes()),
        );
        metric(
            "espd_tx_packets_total",
            "counter",
            "Frames transmitted by the workers.",
            per_core(&|c| c.tx_packets()),
        );
        metric(
            "espd_tx_bytes_total",
            "counter",
            "Bytes transmitted by the workers.",
            per_core(&|c| c.tx_bytes()),
        );
        let per_path = |f: &dyn Fn(&crate::datapath::PathStats) -> u64| -> Vec<(String, u64)> {
            let mut v = Vec::new();
            for (i, c) in self.stats.iter().enumerate() {
                for (p, name) in [(Path::Inbound, "inbound"), (Path::Outbound, "outbound")] {
                    v.push((format!("{{core=\"{i}\",path=\"{name}\"}}"), f(c.path(p))));
                }
            }
            v
        };
        metric(
            "espd_path_rx_packets_total",
            "counter",
            "Frames received by each pipeline path (inbound: cipher side in; outbound: plain side in).",
            per_path(&|p| p.rx_packets.get()),
        );
        metric(
            "espd_path_rx_bytes_total",
            "counter",
            "Bytes received by each pipeline path.",
            per_path(&|p| p.rx_bytes.get()),
        );
        metric(
            "espd_path_tx_packets_total",
            "counter",
            "Frames sent by each pipeline path (inbound: plain side out; outbound: cipher side out).",
            per_path(&|p| p.tx_packets.get()),
        );
        metric(
            "espd_path_tx_bytes_total",
            "counter",
            "Bytes sent by each pipeline path.",
            per_path(&|p| p.tx_bytes.get()),
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
        let mut sa_r = Vec::new();
        let mut sa_i = Vec::new();
        let now = crate::now_ns();
        let (mut n, mut bytes) = (0usize, 0usize);
        let totals = self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tunnel_totals
            .clone();
        // Held while the live SAs are summed: the control thread banks a removed SA's
        // counters under it, so each SA is counted once, live or banked (see `TunnelTotals`).
        let tt = totals.lock().unwrap_or_else(|e| e.into_inner());
        let mut per_tunnel: BTreeMap<u32, [SaTotals; 2]> = tt.removed.clone();
        let mut live: BTreeMap<u32, [u64; 2]> = BTreeMap::new();
        self.dp.sas.for_each(|_, sa| {
            let d = dir_index(sa.direction);
            let t = SaTotals::of(sa);
            if let Some(ti) = sa.tunnel() {
                per_tunnel.entry(ti).or_default()[d] += t;
                live.entry(ti).or_default()[d] += 1;
            }
            n += 1;
            if n > self.sa_limit || bytes > MAX_SA_SERIES_BYTES {
                return std::ops::ControlFlow::Continue(());
            }
            let l = format!(
                "{{spi=\"{:#010x}\",direction=\"{}\",tunnel=\"{}\"}}",
                sa.spi,
                DIRECTIONS[d],
                escape(&tunnel_label(&tt.names, sa.tunnel())),
            );
            // Five series of name + labels + a value of at most 20 digits.
            bytes += 5 * (l.len() + 64);
            sa_c.push((
                l.clone(),
                (sa.lifetime.consumed(t.packets, t.bytes, now) * 1e6) as u64,
            ));
            sa_p.push((l.clone(), t.packets));
            sa_b.push((l.clone(), t.bytes));
            sa_r.push((l.clone(), t.replay_failures));
            sa_i.push((l, t.integrity_failures));
            std::ops::ControlFlow::Continue(())
        });
        let names = tt.names.clone();
        drop(tt);
        metric("espd_sa_packets_total", "counter", "Packets per SA.", sa_p);
        metric("espd_sa_bytes_total", "counter", "Bytes per SA.", sa_b);
        metric(
            "espd_sa_lifetime_consumed_ppm",
            "gauge",
            "Most consumed hard lifetime per SA, parts per million.",
            sa_c,
        );
        metric(
            "espd_sa_replay_failures_total",
            "counter",
            "Inbound packets an SA refused as replayed or too old.",
            sa_r,
        );
        metric(
            "espd_sa_integrity_failures_total",
            "counter",
            "Inbound packets of an SA whose ICV did not verify.",
            sa_i,
        );
        let tunnel_series = |f: &dyn Fn(&SaTotals) -> u64| -> Vec<(String, u64)> {
            let mut v = Vec::new();
            for (ti, name) in &names {
                let sums = per_tunnel.get(ti).copied().unwrap_or_default();
                for (d, dir) in DIRECTIONS.iter().enumerate() {
                    v.push((
                        format!("{{tunnel=\"{}\",direction=\"{dir}\"}}", escape(name)),
                        f(&sums[d]),
                    ));
                }
            }
            v
        };
        metric(
            "espd_tunnel_packets_total",
            "counter",
            "Packets per tunnel and direction, over all its SAs (removed and replaced ones included: survives rekeys).",
            tunnel_series(&|t| t.packets),
        );
        metric(
            "espd_tunnel_bytes_total",
            "counter",
            "Bytes per tunnel and direction, over all its SAs (survives rekeys).",
            tunnel_series(&|t| t.bytes),
        );
        metric(
            "espd_tunnel_replay_failures_total",
            "counter",
            "Inbound packets refused as replays, per tunnel over all its SAs.",
            tunnel_series(&|t| t.replay_failures),
        );
        metric(
            "espd_tunnel_integrity_failures_total",
            "counter",
            "Inbound packets failing the ICV check, per tunnel over all its SAs.",
            tunnel_series(&|t| t.integrity_failures),
        );
        let mut sas_of = Vec::new();
        for (ti, name) in &names {
            let c = live.get(ti).copied().unwrap_or_default();
            for (d, dir) in DIRECTIONS.iter().enumerate() {
                sas_of.push((
                    format!("{{tunnel=\"{}\",direction=\"{dir}\"}}", escape(name)),
                    c[d],
                ));
            }
        }
        metric(
            "espd_tunnel_sas",
            "gauge",
            "Installed SAs per tunnel and direction.",
            sas_of,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::control::Control;
    use crate::control::api::{Reply, handle};

    fn control() -> (Control, MetricsSource) {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gw-a.toml"))
                .unwrap();
        let cfg = Config::parse(std::path::Path::new("gw-a.toml"), &text).unwrap();
        let dp = Arc::new(cfg.build_dataplane(1).unwrap());
        let c = Control::new(&cfg, dp.clone());
        let src = MetricsSource {
            stats: (0..2).map(|_| CoreStats::default()).collect(),
            dp,
            counters: c.counters.clone(),
            sa_limit: 1000,
        };
        (c, src)
    }

    fn ok(c: &mut Control, req: &str) {
        match handle(c, req, 1) {
            Reply::Line(l) => assert!(l.contains("\"ok\":true"), "{req} → {l}"),
            Reply::Subscribe => panic!("{req}"),
        }
    }

    /// The value of the series `name{labels}` in `text`.
    fn value(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Metric names of the exposition (its `# TYPE` lines).
    fn names(text: &str) -> BTreeSet<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
            .collect()
    }

    #[test]
    fn the_exposition_has_exactly_the_listed_metrics() {
        let (_c, src) = control();
        let text = src.render();
        let want: BTreeSet<&str> = METRIC_NAMES.iter().copied().collect();
        assert_eq!(names(&text), want);
        // Every sample belongs to a declared metric.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            assert!(want.contains(name), "{l}");
        }
        assert!(
            text.contains(
                "espd_sa_packets_total{spi=\"0x0000a001\",direction=\"outbound\",tunnel=\"to-b\"} 0"
            ),
            "{text}"
        );
        assert!(text.contains("espd_path_rx_packets_total{core=\"1\",path=\"inbound\"} 0"));
        assert_eq!(
            value(
                &text,
                "espd_tunnel_sas{tunnel=\"to-b\",direction=\"inbound\"}"
            ),
            Some(1)
        );
    }

    /// A tunnel's series keep counting across a rekey and a removal: what the old SAs counted
    /// stays in `espd_tunnel_*` after they are gone, and the per-SA series carry the tunnel.
    #[test]
    fn tunnel_totals_survive_rekeys_and_removals() {
        let (mut c, src) = control();
        let g = crossbeam_epoch::pin();
        let out = src.dp.sas.outbound(0, &g).unwrap();
        out.count(0, 1000);
        out.count(0, 500);
        let inb = src.dp.sas.inbound(0xb001, &g).unwrap();
        inb.count(0, 700);
        inb.count_failure(0, crate::sa::SaFailure::Replay);
        inb.count_failure(0, crate::sa::SaFailure::Integrity);
        inb.count_failure(0, crate::sa::SaFailure::Integrity);
        drop(g);
        let series = |d: &str| format!("{{tunnel=\"to-b\",direction=\"{d}\"}}");
        let before = src.render();
        assert_eq!(
            value(
                &before,
                &format!("espd_tunnel_bytes_total{}", series("outbound"))
            ),
            Some(1500)
        );
        assert_eq!(
            value(
                &before,
                "espd_sa_integrity_failures_total{spi=\"0x0000b001\",direction=\"inbound\",tunnel=\"to-b\"}"
            ),
            Some(2)
        );
        ok(
            &mut c,
            r#"{"op":"rekey","tunnel":"to-b","outbound":{"tunnel":"to-b","direction":"out","spi":"0xa002","key":"a1b2c3d4e5f60718293a4b5c6d7e8f9011223344"}}"#,
        );
        let g = crossbeam_epoch::pin();
        src.dp.sas.outbound(0, &g).unwrap().count(0, 100);
        drop(g);
        // An update with the same key carries the counters on (nothing counted twice); one
        // with a new key starts afresh and the old counts stay in the tunnel's totals.
        ok(
            &mut c,
            r#"{"op":"sa_update","sa":{"tunnel":"to-b","direction":"in","spi":"0xb001","key":"ffeeddccbbaa99887766554433221100a0b0c0d0"}}"#,
        );
        let mid = src.render();
        assert_eq!(
            value(
                &mid,
                &format!("espd_tunnel_bytes_total{}", series("inbound"))
            ),
            Some(700)
        );
        ok(
            &mut c,
            r#"{"op":"sa_update","sa":{"tunnel":"to-b","direction":"in","spi":"0xb001","key":"0102030405060708090a0b0c0d0e0f1011121314"}}"#,
        );
        let g = crossbeam_epoch::pin();
        src.dp.sas.inbound(0xb001, &g).unwrap().count(0, 50);
        drop(g);
        ok(
            &mut c,
            r#"{"op":"sa_delete","spi":"0xb001","direction":"in"}"#,
        );
        let after = src.render();
        assert!(
            !after.contains("spi=\"0x0000a001\""),
            "the old SA's series is gone"
        );
        assert_eq!(
            value(
                &after,
                &format!("espd_tunnel_bytes_total{}", series("outbound"))
            ),
            Some(1600)
        );
        assert_eq!(
            value(
                &after,
                &format!("espd_tunnel_packets_total{}", series("outbound"))
            ),
            Some(3)
        );
        assert_eq!(
            value(
                &after,
                &format!("espd_tunnel_bytes_total{}", series("inbound"))
            ),
            Some(750)
        );
        assert_eq!(
            value(
                &after,
                &format!("espd_tunnel_integrity_failures_total{}", series("inbound"))
            ),
            Some(2)
        );
        assert_eq!(
            value(
                &after,
                &format!("espd_tunnel_replay_failures_total{}", series("inbound"))
            ),
            Some(1)
        );
        assert_eq!(
            value(&after, &format!("espd_tunnel_sas{}", series("inbound"))),
            Some(0)
        );
        // `tunnel_list` sums the same way.
        let t = &c.tunnel_list()[0];
        assert_eq!((t.outbound.bytes, t.inbound.bytes), (1600, 750));
        assert_eq!(t.inbound.integrity_failures, 2);
        // A deleted tunnel's series go with it.
        ok(&mut c, r#"{"op":"tunnel_delete","name":"to-b"}"#);
        assert!(!src.render().contains("tunnel=\"to-b\""));
    }

    /// Every metric the Grafana dashboard queries is one the endpoint emits.
    #[test]
    fn the_grafana_dashboard_queries_only_emitted_metrics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/dist/grafana/espd-dashboard.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut exprs = Vec::new();
        fn walk<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, x) in m {
                        match (k.as_str(), x) {
                            ("expr" | "query", serde_json::Value::String(s)) => out.push(s),
                            _ => walk(x, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        walk(&v, &mut exprs);
        assert!(exprs.len() >= 8, "{exprs:?}");
        let mut used = BTreeSet::new();
        for e in &exprs {
            let b = e.as_bytes();
            let mut i = 0;
            while let Some(at) = e[i..].find("espd_") {
                let s = i + at;
                let mut j = s;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                used.insert(&e[s..j]);
                i = j;
            }
        }
        for m in &used {
            assert!(
                METRIC_NAMES.contains(m),
                "the dashboard queries {m}, which espd does not emit"
            );
        }
        for m in [
            "espd_tunnel_bytes_total",
            "espd_drops_total",
            "espd_sa_replay_failures_total",
        ] {
            assert!(used.contains(m), "the dashboard shows {m}");
        }
    }
}
