//! AEAD seal/open and ESP encap/decap per packet size and backend.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use espd::esp::aead::{Aead, AeadKey, Backend};
use espd::esp::{decap, encap};
use espd::sa::{Direction, Endpoints, Mode, Sa, SaParams};
use std::hint::black_box;
use zeroize::Zeroizing;

const SIZES: [usize; 6] = [64, 256, 512, 1024, 1400, 9000];

fn sa(dir: Direction, backend: Backend) -> Sa {
    let p = SaParams {
        spi: 0x1000,
        direction: dir,
        mode: Mode::Tunnel,
        endpoints: Some(Endpoints {
            local: "203.0.113.1".parse().unwrap(),
            remote: "203.0.113.2".parse().unwrap(),
        }),
        encap: None,
        esn: false,
        keymat: Zeroizing::new(vec![0x42; 20]),
        backend,
        limits: Default::default(),
        replay_window: 4096,
        inner: vec![],
        mtu: 9216,
    };
    Sa::new(&p, 1, 0).unwrap()
}

fn aead(c: &mut Criterion) {
    for backend in Backend::available() {
        let mut g = c.benchmark_group(format!("aead_seal/{backend}"));
        let k = AeadKey::new(*backend, &[0x42; 16]).unwrap();
        for n in SIZES {
            let mut buf = vec![0u8; n];
            let mut tag = [0u8; 16];
            g.throughput(Throughput::Bytes(n as u64));
            g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    k.seal(
                        black_box(&[1u8; 12]),
                        black_box(&[0u8; 8]),
                        &mut buf,
                        &mut tag,
                    )
                    .unwrap()
                })
            });
        }
        g.finish();
        let mut g = c.benchmark_group(format!("aead_open/{backend}"));
        for n in SIZES {
            let mut buf = vec![0u8; n];
            let mut tag = [0u8; 16];
            k.seal(&[1u8; 12], &[0u8; 8], &mut buf, &mut tag).unwrap();
            let ct = buf.clone();
            g.throughput(Throughput::Bytes(n as u64));
            g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    buf.copy_from_slice(&ct);
                    k.open(black_box(&[1u8; 12]), &[0u8; 8], &mut buf, &tag)
                        .unwrap()
                })
            });
        }
        g.finish();
    }
}

/// ESP encap (tunnel, IPv4) of an inner packet of `n` bytes, in place.
fn esp_encap(c: &mut Criterion) {
    for backend in Backend::available() {
        let mut g = c.benchmark_group(format!("esp_encap/{backend}"));
        let s = sa(Direction::Outbound, *backend);
        for n in SIZES {
            let mut buf = vec![0u8; 128 + n + 64];
            buf[128] = 0x45;
            let mut seq = 0u64;
            g.throughput(Throughput::Bytes(n as u64));
            g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    seq += 1;
                    buf[128] = 0x45;
                    encap::encap(&s, seq, &mut buf, 128, n).unwrap()
                })
            });
        }
        g.finish();
    }
}

/// ESP decap (tunnel, IPv4): ICV check, decrypt, replay window, trailer checks, through the
/// library's one-packet API (`decap::decap`, whose replay step is `ReplayWindow::commit`).
/// The workers' pipeline commits a batch's numbers together per SA and
/// block (`ReplayWindow::commit_block`); `benches/pipeline.rs` and `benches/cores.rs` measure
/// that path.
fn esp_decap(c: &mut Criterion) {
    for backend in Backend::available() {
        let mut g = c.benchmark_group(format!("esp_decap/{backend}"));
        let out = sa(Direction::Outbound, *backend);
        for n in SIZES {
            let mut inner = vec![0u8; n];
            inner[0] = 0x45;
            inner[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            g.throughput(Throughput::Bytes(n as u64));
            g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                let inb = sa(Direction::Inbound, *backend);
                let mut seq = 0u64;
                let mut buf = vec![0u8; 128 + n + 64];
                b.iter_batched_ref(
                    || {
                        seq += 1;
                        buf[128..128 + n].copy_from_slice(&inner);
                        let (s, l) = encap::encap(&out, seq, &mut buf, 128, n).unwrap();
                        (buf.clone(), s, l)
                    },
                    |(b, s, l)| decap::decap(&inb, b, *s, 20, 9, *s + 20, *l - 20).unwrap(),
                    criterion::BatchSize::SmallInput,
                )
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = aead, esp_encap, esp_decap
}
criterion_main!(benches);
