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

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(2));
    targets = lookup
}
criterion_main!(benches);
