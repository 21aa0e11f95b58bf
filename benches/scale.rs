//! The inbound pipeline at scale: 10^3 vs 10^6 installed SAs, every packet of a batch for a
//! random SA, so each packet meets a cold SA (its slot and the SA itself). Uses the daemon's
//! allocator (mimalloc): where an SA's pieces land in memory is part of what is measured.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::udp_frame;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use espd::datapath::Action;
use espd::datapath::mem::Frame;
use espd::datapath::pipeline::FrameMut;
use espd::esp::aead::Backend;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 64;

/// The inbound pipeline with 10^3 and 10^6 installed SAs, each packet of a batch for a random
/// SA: the cost of a cold SA (its slot and the SA itself) at scale. 64-byte packets; the ESP is
/// made outside the timed region by outbound twins of a pool of at most 65,536 of the SAs
/// (78 MB of SAs, more than the last-level cache).
fn scale(c: &mut Criterion) {
    use espd::config::Config;
    use espd::datapath::pipeline::Pipeline as P;
    use espd::sa::{Direction, Sa};
    use rand::{RngExt, SeedableRng};
    use std::path::Path;

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let cfg_a = Config::load(&dir.join("gw-a.toml")).unwrap();
    let out_p = cfg_a
        .sas
        .iter()
        .find(|(_, p)| p.direction == Direction::Outbound)
        .unwrap()
        .1
        .clone();
    let pkt = udp_frame(64);
    let mut g = c.benchmark_group("scale");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (backend, n) in [
        (Backend::AwsLc, 1_000usize),
        (Backend::AwsLc, 1_000_000),
        (Backend::RustCrypto, 1_000),
        (Backend::RustCrypto, 1_000_000),
    ] {
        let mut cfg = Config::load(&dir.join("gw-b.toml")).unwrap();
        cfg.sa_capacity = (n as u32).next_power_of_two();
        let in_p = cfg
            .sas
            .iter()
            .find(|(_, p)| p.direction == Direction::Inbound)
            .unwrap()
            .1
            .clone();
        let mut in_p = in_p;
        in_p.backend = backend;
        let mut out_p = out_p.clone();
        out_p.backend = backend;
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
        if n >= 1_000_000 && backend == Backend::AwsLc {
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
                let mut p = out_p.clone();
                p.spi = spi;
                Sa::new(&p, 1, now).unwrap()
            })
            .collect();
        let (stats, events) = (
            espd::datapath::CoreStats::default(),
            crossbeam_queue::ArrayQueue::new(1 << 16),
        );
        let mut pb = P::new(&dp, 0, &stats, &events, cfg.pipeline_config());
        let mut frames: Vec<Frame> = (0..BATCH).map(|_| Frame::from_packet(&pkt)).collect();
        let mut acts = [Action::Punt; BATCH];
        g.bench_with_input(
            BenchmarkId::new(format!("inbound_x64/{backend}"), n),
            &n,
            |bch, _| {
                bch.iter_custom(|iters| {
                    let mut t = Duration::ZERO;
                    for _ in 0..iters {
                        for f in frames.iter_mut() {
                            f.reset(&pkt);
                            let twin = &pool[rng.random_range(0..pool.len())];
                            let (at, len) = (f.offset() + 14, f.len() - 14);
                            let seq = twin.next_seq().unwrap();
                            let (start, len) =
                                espd::esp::encap(twin, seq, f.buf_mut(), at, len).unwrap();
                            let buf = f.buf_mut();
                            buf[start - 2..start].copy_from_slice(&[8, 0]);
                            f.set(start - 14, len + 14);
                        }
                        let now = espd::now_ns();
                        let s = Instant::now();
                        pb.inbound(&mut frames, now, &mut acts);
                        t += s.elapsed();
                        assert!(acts.iter().all(|a| *a == Action::Tx), "{acts:?}");
                    }
                    t
                })
            },
        );
    }
    g.finish();
}

/// The outbound pipeline with 10 and 100,000 tunnels, one host policy (/128) and one outbound SA
/// each, every packet of a batch for a random tunnel: the SPD index and cold outbound SAs at
/// scale. 64-byte IPv6 inner packets; frames are prepared outside the timed region.
fn outbound_scale(c: &mut Criterion) {
    use espd::config::Config;
    use espd::datapath::pipeline::{Dataplane, Pipeline as P};
    use espd::sa::policy::{Policy, PortRange, Prefix};
    use espd::sa::{Direction, PolicyAction, Sa, SaTable, Selector, Spd};
    use rand::{RngExt, SeedableRng};
    use std::net::{IpAddr, Ipv6Addr};
    use std::path::Path;

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let cfg = Config::load(&dir.join("gw-a.toml")).unwrap();
    let out_p = cfg
        .sas
        .iter()
        .find(|(_, p)| p.direction == Direction::Outbound)
        .unwrap()
        .1
        .clone();
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
    for n in [10u32, 100_000] {
        let now = espd::now_ns();
        let table = SaTable::new(256, n, 1);
        let mut policies = Vec::with_capacity(n as usize);
        for t in 0..n {
            let mut p = out_p.clone();
            p.spi = 0x10_0000 + t;
            p.inner.clear();
            table
                .set_outbound(t, Some(Sa::new(&p, 1, now).unwrap()))
                .unwrap();
            policies.push(Policy {
                selector: Selector {
                    src: "fd00:a::/64".parse().unwrap(),
                    dst: Prefix::new(IpAddr::V6(host(t)), 128).unwrap(),
                    protocol: None,
                    src_ports: PortRange::ANY,
                    dst_ports: PortRange::ANY,
                },
                action: PolicyAction::Protect(t),
            });
        }
        let local: Vec<IpAddr> = cfg
            .plain
            .addresses
            .iter()
            .chain(cfg.cipher.addresses.iter())
            .copied()
            .collect();
        let dp = Dataplane::new(table, Spd::new(policies, PolicyAction::Discard), &local);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let pkts: Vec<Vec<u8>> = (0..4096)
            .map(|_| frame(host(rng.random_range(0..n))))
            .collect();
        let (stats, events) = (
            espd::datapath::CoreStats::default(),
            crossbeam_queue::ArrayQueue::new(1 << 16),
        );
        let mut pa = P::new(&dp, 0, &stats, &events, cfg.pipeline_config());
        let mut frames: Vec<Frame> = (0..BATCH).map(|_| Frame::from_packet(&pkts[0])).collect();
        let mut acts = [Action::Punt; BATCH];
        let mut k = 0usize;
        g.bench_with_input(BenchmarkId::new("outbound_x64", n), &n, |bch, _| {
            bch.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    for f in frames.iter_mut() {
                        k = (k + 1) & 4095;
                        f.reset(&pkts[k]);
                    }
                    let now = espd::now_ns();
                    let s = Instant::now();
                    pa.outbound(&mut frames, now, &mut acts);
                    t += s.elapsed();
                    assert!(acts.iter().all(|a| *a == Action::Tx), "{acts:?}");
                }
                t
            })
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
    targets = scale, outbound_scale
}
criterion_main!(benches);
