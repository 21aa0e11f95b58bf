//! The pipeline at scale, every packet of a batch for a random SA or tunnel, so each packet
//! meets cold state: inbound with 10^3 vs 10^6 SAs, outbound with 10 vs 10^5 tunnels (one host
//! policy each), and the large cases again with the prefetch passes off
//! (`prefetch_above = u32::MAX`), each case on a fresh dataplane. Uses the daemon's allocator
//! (mimalloc): where an SA's pieces land in memory is part of what is measured.

#[path = "common/mod.rs"]
mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use common::udp_frame;
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use crossbeam_queue::ArrayQueue;
use espd::config::Config;
use espd::datapath::mem::Frame;
use espd::datapath::pipeline::{Dataplane, FrameMut, Pipeline, PipelineConfig};
use espd::datapath::{Action, CoreStats};
use espd::esp::aead::Backend;
use espd::sa::policy::{Policy, PortRange, Prefix};
use espd::sa::{Direction, PolicyAction, Sa, Selector};
use rand::{RngExt, SeedableRng};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 64;

fn example(name: &str) -> Config {
    Config::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .unwrap()
}

/// The pipeline settings of `cfg`, with the prefetch passes off unless `prefetch`, and the
/// benchmark name suffix that says so.
fn settings(cfg: &Config, prefetch: bool) -> (&'static str, PipelineConfig) {
    let on = cfg.pipeline_config();
    if prefetch {
        ("", on)
    } else {
        let off = PipelineConfig {
            prefetch_above: u32::MAX,
            ..on
        };
        ("_noprefetch", off)
    }
}

/// Times `run` over `frames` after `prepare` has filled them (outside the timed region); every
/// frame must come out as `Tx`.
fn bench_batches(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    frames: &mut [Frame],
    mut prepare: impl FnMut(&mut [Frame]),
    mut run: impl FnMut(&mut [Frame], u64, &mut [Action]),
) {
    let mut acts = [Action::Punt; BATCH];
    g.bench_function(id, |bch| {
        bch.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                prepare(frames);
                let now = espd::now_ns();
                let s = Instant::now();
                run(frames, now, &mut acts);
                t += s.elapsed();
                assert!(acts.iter().all(|a| *a == Action::Tx), "{acts:?}");
            }
            t
        })
    });
}

/// Inbound with 10^3 and 10^6 installed SAs, 64-byte packets. The ESP is made outside the timed
/// region by outbound twins of a pool of at most 65,536 of the SAs (more SA state than the
/// last-level cache holds).
fn inbound(c: &mut Criterion) {
    let out_template = example("gw-a.toml")
        .sa_params(Direction::Outbound)
        .unwrap()
        .clone();
    let pkt = udp_frame(64);
    let mut g = c.benchmark_group("scale");
    g.throughput(Throughput::Elements(BATCH as u64));
    // Each case on a fresh dataplane: a process's memory ages under this kernel (DAMON runs
    // here), so two variants measured one after the other on the same SAs are not comparable.
    for (backend, n, prefetch) in [
        (Backend::AwsLc, 1_000usize, true),
        (Backend::AwsLc, 1_000_000, true),
        (Backend::AwsLc, 1_000_000, false),
        (Backend::RustCrypto, 1_000, true),
        (Backend::RustCrypto, 1_000_000, true),
        (Backend::RustCrypto, 1_000_000, false),
    ] {
        let mut cfg = example("gw-b.toml");
        cfg.sa_capacity = (n as u32).next_power_of_two();
        let mut in_p = cfg.sa_params(Direction::Inbound).unwrap().clone();
        in_p.backend = backend;
        let now = espd::now_ns();
        let rss0 = rss_bytes();
        let dp = cfg.build_dataplane(now).unwrap();
        let mut spis = vec![in_p.spi];
        while spis.len() < n {
            let mut p = in_p.clone();
            p.spi = dp.sas.allocate_spi().unwrap();
            dp.sas
                .install_inbound(Sa::new(&p, 1, now).unwrap())
                .unwrap();
            spis.push(p.spi);
        }
        if n >= 1_000_000 && backend == Backend::AwsLc && prefetch {
            // Resident memory of the table and its SAs (replay window 1024, one worker). Only
            // the first large table: later ones reuse memory the allocator kept.
            println!(
                "memory: {n} inbound SAs ({backend}) take {:.0} bytes each (resident set growth)",
                rss_bytes().saturating_sub(rss0) as f64 / n as f64
            );
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Distinct SAs (a partial Fisher-Yates shuffle), so no two twins share sequence numbers.
        let k = n.min(65_536);
        for i in 0..k {
            let j = rng.random_range(i..n);
            spis.swap(i, j);
        }
        let pool: Vec<Sa> = spis[..k]
            .iter()
            .map(|&spi| {
                let mut p = out_template.clone();
                p.spi = spi;
                p.backend = backend;
                Sa::new(&p, 1, now).unwrap()
            })
            .collect();
        let (stats, events) = (CoreStats::default(), ArrayQueue::new(1 << 16));
        let mut frames: Vec<Frame> = (0..BATCH).map(|_| Frame::from_packet(&pkt)).collect();
        let mut prepare = |frames: &mut [Frame]| {
            for f in frames.iter_mut() {
                f.reset(&pkt);
                let twin = &pool[rng.random_range(0..pool.len())];
                let (at, len) = (f.offset() + 14, f.len() - 14);
                let seq = twin.next_seq().unwrap();
                let (start, len) = espd::esp::encap(twin, seq, f.buf_mut(), at, len).unwrap();
                f.buf_mut()[start - 2..start].copy_from_slice(&[8, 0]);
                f.set(start - 14, len + 14);
            }
        };
        let (suffix, pcfg) = settings(&cfg, prefetch);
        let mut p = Pipeline::new(&dp, 0, &stats, &events, pcfg);
        let id = BenchmarkId::new(format!("inbound_x64_{backend}{suffix}"), n);
        bench_batches(&mut g, id, &mut frames, &mut prepare, |f, now, a| {
            p.inbound(f, now, a)
        });
    }
    g.finish();
}

/// Outbound with 10 and 100,000 tunnels, one host policy (/128) and one outbound SA each:
/// the SPD index and cold outbound SAs at scale. 64-byte IPv6 inner packets.
fn outbound(c: &mut Criterion) {
    let src: Ipv6Addr = "fd00:a::10".parse().unwrap();
    let host = |i: u32| Ipv6Addr::from((0xfd00_000c_u128 << 96) | (u128::from(i) + 1));
    let frame = |dst: Ipv6Addr| {
        let mut f = vec![0u8; 14 + 64];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        let ip = &mut f[14..];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&24u16.to_be_bytes());
        ip[6] = 17;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&src.octets());
        ip[24..40].copy_from_slice(&dst.octets());
        ip[40..42].copy_from_slice(&40000u16.to_be_bytes());
        ip[42..44].copy_from_slice(&5001u16.to_be_bytes());
        ip[44..46].copy_from_slice(&24u16.to_be_bytes());
        f
    };
    let mut g = c.benchmark_group("scale");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (n, prefetch) in [(10u32, true), (100_000, true), (100_000, false)] {
        let mut cfg = example("gw-a.toml");
        let template = cfg.sa_params(Direction::Outbound).unwrap().clone();
        cfg.sas.clear();
        cfg.control.tunnel_capacity = n;
        cfg.policies = (0..n)
            .map(|t| Policy {
                selector: Selector {
                    src: "fd00:a::/64".parse().unwrap(),
                    dst: Prefix::new(IpAddr::V6(host(t)), 128).unwrap(),
                    protocol: None,
                    src_ports: PortRange::ANY,
                    dst_ports: PortRange::ANY,
                },
                action: PolicyAction::Protect(t),
            })
            .collect();
        let now = espd::now_ns();
        let dp: Dataplane = cfg.build_dataplane(now).unwrap();
        for t in 0..n {
            let mut p = template.clone();
            p.spi = 0x10_0000 + t;
            dp.sas
                .set_outbound(t, Some(Sa::new(&p, 1, now).unwrap()))
                .unwrap();
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let pkts: Vec<Vec<u8>> = (0..4096)
            .map(|_| frame(host(rng.random_range(0..n))))
            .collect();
        let (stats, events) = (CoreStats::default(), ArrayQueue::new(1 << 16));
        let mut frames: Vec<Frame> = (0..BATCH).map(|_| Frame::from_packet(&pkts[0])).collect();
        let mut k = 0usize;
        let mut prepare = |frames: &mut [Frame]| {
            for f in frames.iter_mut() {
                k = (k + 1) & 4095;
                f.reset(&pkts[k]);
            }
        };
        let (suffix, pcfg) = settings(&cfg, prefetch);
        let mut p = Pipeline::new(&dp, 0, &stats, &events, pcfg);
        let id = BenchmarkId::new(format!("outbound_x64{suffix}"), n);
        bench_batches(&mut g, id, &mut frames, &mut prepare, |f, now, a| {
            p.outbound(f, now, a)
        });
    }
    g.finish();
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = inbound, outbound
}
criterion_main!(benches);
