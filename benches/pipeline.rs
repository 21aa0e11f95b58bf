//! The full pipeline over batches of 64 frames (per-packet cost), next to the bare AEAD seal of
//! the same number of bytes measured in the same run: their quotient is the pipeline overhead
//! ratio the README reports (`scripts/bench-ratios.py` prints it).

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{gw, udp_frame};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use espd::datapath::mem::Frame;
use espd::datapath::{Action, Pipeline};
use espd::esp::aead::{Aead, AeadKey, Backend};

const BATCH: usize = 64;
/// IP packet sizes (the inner packet the pipeline encrypts).
const SIZES: [usize; 3] = [64, 512, 1400];

fn pipeline(c: &mut Criterion) {
    let a = gw("gw-a.toml");
    let b = gw("gw-b.toml");
    let mut g = c.benchmark_group("ratio");
    for n in SIZES {
        // Bare AEAD seal of the bytes the pipeline seals: inner packet + padding + trailer.
        let ct = (n + 2).div_ceil(4) * 4;
        let k = AeadKey::new(Backend::AwsLc, &[0x42; 16]).unwrap();
        let mut buf = vec![0u8; ct];
        let mut tag = [0u8; 16];
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("aead_seal", n), &n, |bch, _| {
            bch.iter(|| {
                k.seal(
                    black_box(&[1u8; 12]),
                    black_box(&[0u8; 8]),
                    &mut buf,
                    &mut tag,
                )
                .unwrap()
            })
        });

        // The same seal over 64 frame buffers of 4 KiB, the memory footprint of a batch.
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; 4096]).collect();
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_with_input(BenchmarkId::new("aead_seal_x64", n), &n, |bch, _| {
            bch.iter(|| {
                for b in bufs.iter_mut() {
                    k.seal(
                        black_box(&[1u8; 12]),
                        black_box(&[0u8; 8]),
                        &mut b[256..256 + ct],
                        &mut tag,
                    )
                    .unwrap();
                }
            })
        });

        let pkt = udp_frame(n);
        let mut frames: Vec<Frame> = (0..BATCH).map(|_| Frame::from_packet(&pkt)).collect();
        let mut acts = [Action::Punt; BATCH];
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_with_input(
            BenchmarkId::new("pipeline_outbound_x64", n),
            &n,
            |bch, _| {
                let mut p = Pipeline::new(&a.dp, 0, &a.stats, &a.events, a.pcfg);
                bch.iter_custom(|iters| {
                    let mut t = Duration::ZERO;
                    for _ in 0..iters {
                        for f in frames.iter_mut() {
                            f.reset(&pkt);
                        }
                        let now = espd::now_ns();
                        let s = Instant::now();
                        p.outbound(&mut frames, now, &mut acts);
                        t += s.elapsed();
                        assert_eq!(acts[0], Action::Tx);
                    }
                    t
                })
            },
        );

        let mut esp: Vec<Frame> = (0..BATCH).map(|_| Frame::from_packet(&pkt)).collect();
        g.bench_with_input(BenchmarkId::new("pipeline_inbound_x64", n), &n, |bch, _| {
            let mut pa = Pipeline::new(&a.dp, 0, &a.stats, &a.events, a.pcfg);
            let mut pb = Pipeline::new(&b.dp, 0, &b.stats, &b.events, b.pcfg);
            bch.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    for f in esp.iter_mut() {
                        f.reset(&pkt);
                    }
                    let now = espd::now_ns();
                    pa.outbound(&mut esp, now, &mut acts);
                    let s = Instant::now();
                    pb.inbound(&mut esp, now, &mut acts);
                    t += s.elapsed();
                    assert_eq!(acts[0], Action::Tx);
                }
                t
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = pipeline
}
criterion_main!(benches);
