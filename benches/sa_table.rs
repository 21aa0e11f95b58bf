//! SA table lookup by SPI with 1, 10^3 and 10^6 installed SAs (random SPIs from the installed
//! set, 64 lookups per iteration as in a batch): `sa_lookup/N` one lookup after the other,
//! `sa_lookup/batch/N` the pipeline's way (prefetch the 64 slots, then look them up). A lookup
//! returns the validated SA reference without touching the SA; the pipeline's cost of a cold
//! SA at scale is measured by the `scale` group of the pipeline bench.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_epoch as epoch;
use espd::sa::{Direction, Sa, SaParams, SaTable};
use rand::{RngExt, SeedableRng};
use zeroize::Zeroizing;

fn params(spi: u32) -> SaParams {
    SaParams {
        spi,
        direction: Direction::Inbound,
        mode: espd::sa::Mode::Transport,
        endpoints: None,
        encap: None,
        esn: false,
        keymat: Zeroizing::new(vec![0x11; 20]),
        backend: Default::default(),
        limits: Default::default(),
        replay_window: 64,
        inner: vec![],
        mtu: 1500,
    }
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("sa_lookup");
    for n in [1usize, 1_000, 1_000_000] {
        let t = SaTable::new((n as u32).next_power_of_two().max(256), 1, 1);
        let spis: Vec<u32> = (0..n)
            .map(|_| {
                let spi = t.allocate_spi().unwrap();
                t.install_inbound(Sa::new(&params(spi), 1, 0).unwrap())
                    .unwrap();
                spi
            })
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let picks: Vec<u32> = (0..1 << 16).map(|_| spis[rng.random_range(0..n)]).collect();
        let mut i = 0usize;
        g.throughput(Throughput::Elements(64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let guard = epoch::pin();
                let mut acc = 0usize;
                for _ in 0..64 {
                    i = (i + 1) & 0xffff;
                    acc ^= t
                        .inbound(black_box(picks[i]), &guard)
                        .map_or(0, |s| s as *const Sa as usize);
                }
                acc
            })
        });
        // As the inbound pipeline does it: the batch's slots are prefetched first, then looked
        // up.
        let mut j = 0usize;
        g.bench_with_input(BenchmarkId::new("batch", n), &n, |b, _| {
            b.iter(|| {
                let guard = epoch::pin();
                let batch = &picks[j..j + 64];
                j = (j + 64) & 0xffc0;
                for &spi in batch {
                    t.prefetch_inbound(black_box(spi));
                }
                let mut acc = 0usize;
                for &spi in batch {
                    acc ^= t
                        .inbound(black_box(spi), &guard)
                        .map_or(0, |s| s as *const Sa as usize);
                }
                acc
            })
        });
    }
    g.finish();
}

/// SPD lookup with 10, 10^3 and 10^5 policies: one per remote-access client (its /32 address
/// → its tunnel, as a concentrator has), a few site /24s and a final catch-all, random packets
/// to the clients; `spd_lookup/scan/N` is a first-match scan of the same policies.
fn spd(c: &mut Criterion) {
    use espd::sa::policy::{FlowKey, Policy, PolicyAction, PortRange, Prefix, Selector, Spd};
    use std::net::{IpAddr, Ipv4Addr};
    let mut g = c.benchmark_group("spd_lookup");
    for n in [10u32, 1_000, 100_000] {
        let client = |i: u32| Ipv4Addr::from(0x0a00_0000 + i);
        let sel = |dst: Prefix| Selector {
            src: "192.0.2.0/24".parse().unwrap(),
            dst,
            protocol: None,
            src_ports: PortRange::ANY,
            dst_ports: PortRange::ANY,
        };
        let mut list: Vec<Policy> = (0..4)
            .map(|i| Policy {
                selector: sel(Prefix::new(IpAddr::from([198, 51, i, 0]), 24).unwrap()),
                action: PolicyAction::Protect(i.into()),
            })
            .collect();
        list.extend((0..n).map(|i| Policy {
            selector: sel(Prefix::new(IpAddr::V4(client(i)), 32).unwrap()),
            action: PolicyAction::Protect(i),
        }));
        list.push(Policy {
            selector: sel(Prefix::any(false)),
            action: PolicyAction::Discard,
        });
        let spd = Spd::new(list, PolicyAction::Discard);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let keys: Vec<FlowKey> = (0..4096)
            .map(|_| FlowKey {
                v6: false,
                src: u128::from(u32::from(Ipv4Addr::new(192, 0, 2, 10))),
                dst: u128::from(u32::from(client(rng.random_range(0..n)))),
                protocol: 17,
                src_port: 40000,
                dst_port: 5001,
            })
            .collect();
        let mut i = 0usize;
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 4095;
                spd.lookup(black_box(&keys[i]))
            })
        });
        // The same policies scanned in order for the first match: what the SPD did before it
        // had an index, kept as the baseline.
        g.bench_with_input(BenchmarkId::new("scan", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 4095;
                let k = black_box(&keys[i]);
                spd.policies()
                    .find(|p| p.selector.matches(k))
                    .map(|p| p.action)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(2));
    targets = lookup, spd
}
criterion_main!(benches);
