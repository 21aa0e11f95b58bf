//! Prometheus text exposition (version 0.0.4) on a configurable address: per-core and per-SA
//! packets and bytes, drops by code and reason, lifetime consumed, rekeys, events by code,
//! queue-full counts. Served by its own thread; it only reads counters and the SA table.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
        let mut n = 0usize;
        self.dp.sas.for_each(|_, sa| {
            n += 1;
            if n > self.sa_limit {
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

/// Serves `GET /metrics` (any path) until `stop`.
pub fn serve(
    addr: SocketAddr,
    src: MetricsSource,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    std::thread::Builder::new().name("espd-metrics".into()).spawn(move || {
        while !stop.load(Ordering::Acquire) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut req = [0u8; 4096];
                    let _ = s.read(&mut req);
                    let body = src.render();
                    let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
}
