//! Batch install: one `sa_add_batch` request with 100,000 SAs through the control thread's
//! request handler (JSON parsing, validation, key setup, table insert). Target: < 2 s.
//! Timers: one control-thread tick with 100,000 idle SAs (one-hour lifetimes, a third of them
//! counted from first use), as the daemon runs it every 20 ms. Policies: one
//! `policy_add_batch` of 100,000 host policies.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use espd::config::Config;
use espd::control::Control;
use espd::control::api::{Reply, handle};

const N: usize = 100_000;

fn cfg() -> Config {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gw-a.toml"))
            .unwrap()
            + "\n[dataplane.extra]\n";
    let text = text
        .replace("[dataplane.extra]\n", "")
        .replace("workers = 1", "workers = 1\nsa_capacity = 262144");
    Config::parse(Path::new("gw-a.toml"), &text).unwrap()
}

/// Times one request on a fresh control thread per iteration; its answer must contain `want`.
fn time_request(c: &mut Criterion, name: &str, secs: u64, req: &str, want: &str) {
    let cfg = cfg();
    let mut g = c.benchmark_group("control");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(secs));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let dp = Arc::new(cfg.build_dataplane(1).unwrap());
                let mut ctl = Control::new(&cfg, dp);
                let s = Instant::now();
                let r = handle(&mut ctl, req, 1);
                t += s.elapsed();
                match r {
                    Reply::Line(l) => assert!(l.contains(want), "{}", &l[..l.len().min(300)]),
                    Reply::Subscribe => unreachable!(),
                }
            }
            t
        })
    });
    g.finish();
}

fn batch(c: &mut Criterion) {
    let sas: Vec<serde_json::Value> = (0..N)
        .map(|i| {
            serde_json::json!({"tunnel": "to-b", "direction": "in", "spi": 0x10000 + i,
                "key": format!("{:040x}", (i as u128) * 0x9e37_79b9_7f4a_7c15 + 1)})
        })
        .collect();
    let req = serde_json::json!({"op": "sa_add_batch", "sas": sas}).to_string();
    time_request(c, "sa_add_batch_100k", 20, &req, "\"installed\":100000");
}

fn tick(c: &mut Criterion) {
    let cfg = cfg();
    let sas: Vec<serde_json::Value> = (0..N)
        .map(|i| {
            let lifetime = if i % 3 == 0 {
                serde_json::json!({"soft_use_seconds": 3000, "hard_use_seconds": 3600})
            } else {
                serde_json::json!({"soft_seconds": 3000, "hard_seconds": 3600})
            };
            serde_json::json!({"tunnel": "to-b", "direction": "in", "spi": 0x10000 + i,
                "key": format!("{:040x}", (i as u128) * 0x9e37_79b9_7f4a_7c15 + 1),
                "lifetime": lifetime})
        })
        .collect();
    let req = serde_json::json!({"op": "sa_add_batch", "sas": sas}).to_string();
    let dp = Arc::new(cfg.build_dataplane(1).unwrap());
    let mut ctl = Control::new(&cfg, dp);
    match handle(&mut ctl, &req, 1) {
        Reply::Line(l) => assert!(
            l.contains("\"installed\":100000"),
            "{}",
            &l[..l.len().min(300)]
        ),
        Reply::Subscribe => unreachable!(),
    }
    let events = crossbeam_queue::ArrayQueue::new(64);
    let mut now = 1_000_000_000u64;
    let mut g = c.benchmark_group("control");
    g.bench_function("tick_100k_idle_sas", |b| {
        b.iter(|| {
            // 20 ms apart, as the daemon ticks: every fifth tick is a timer pass.
            now += 20_000_000;
            ctl.tick(now, &events);
        })
    });
    g.finish();
}

/// One `policy_add_batch` of 100,000 host policies (parse, validate, one SPD rebuild with its
/// index).
fn policies(c: &mut Criterion) {
    let list: Vec<serde_json::Value> = (0..N)
        .map(|i| {
            serde_json::json!({"src": "fd00:a::/64", "dst": format!("fd00:c::{:x}:{:x}/128", i >> 16, i & 0xffff),
                "action": "protect", "tunnel": "to-b"})
        })
        .collect();
    let req = serde_json::json!({"op": "policy_add_batch", "policies": list}).to_string();
    time_request(c, "policy_add_batch_100k", 10, &req, "\"added\":100000");
}

criterion_group!(benches, batch, tick, policies);
criterion_main!(benches);
