//! Per-core scaling (issue 13, item 4): the pipeline on 1 and 2 pinned threads, 64-byte packets,
//! in four cases: each thread its own SA, outbound and inbound (`own_out`, `own_in`); both
//! threads one inbound SA (`shared_in`: replay window, lifetime budgets, counters); both
//! threads one outbound SA (`shared_out`: sequence counter). Every SA carries soft and hard
//! byte, packet and time limits, so both lifetime budgets are on the path.
//!
//! One round: each thread fills `ROUND` batches of 64 frames (untimed: plain packets outbound,
//! ESP sealed by an outbound twin of the SA inbound), the threads meet at a spinning barrier,
//! then each runs its batches through its own `Pipeline` (clock read once per batch, as the
//! worker does). A round lasts from the first thread's start to the last thread's end.
//! Inbound sequence numbers of a round are consecutive per SA (a shared SA's packets alternate
//! between the threads) and span no more than the replay window, so no packet is refused
//! whatever the scheduling; every frame must come out `Tx`.
//!
//! Criterion reports each case per thread count (one iteration = one round; elements =
//! packets). After them, `ratios` measures each case on 1 and 2 threads alternately (1, 2,
//! 1, 2, ...), `REPS` pairs of `ROUNDS` rounds, and prints throughput(2) ÷ throughput(1):
//! the median of the pairs' ratios, their spread, and the goal. Under `cargo test --benches`
//! everything runs a few rounds only (a smoke test: the ratios printed then mean nothing).

#[path = "common/mod.rs"]
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::udp_frame_to;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use espd::config::Config;
use espd::datapath::mem::Frame;
use espd::datapath::pipeline::{Dataplane, Pipeline, PipelineConfig};
use espd::datapath::{Action, CoreStats, SaEvent};
use espd::sa::policy::{Policy, PortRange, Prefix};
use espd::sa::{Direction, Limits, PolicyAction, Sa, SaParams, Selector};
use zeroize::Zeroizing;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 64;
/// Batches per thread per round. Two threads' rounds on one inbound SA span
/// 2 × 8 × 64 = 1024 sequence numbers: the example configs' replay window.
const ROUND: usize = 8;
const IP_LEN: usize = 64;
const THREADS: [usize; 2] = [1, 2];

/// The second SA's key (cases with one SA per thread). An example: never reuse it.
const KEY2: [u8; 20] = [
    0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2, 0xe1, 0xf0,
    0x11, 0x22, 0x33, 0x44,
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Out,
    In,
}

#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    dir: Dir,
    shared: bool,
    goal: f64,
}

const CASES: [Case; 4] = [
    Case {
        name: "own_out",
        dir: Dir::Out,
        shared: false,
        goal: 1.9,
    },
    Case {
        name: "own_in",
        dir: Dir::In,
        shared: false,
        goal: 1.9,
    },
    Case {
        name: "shared_in",
        dir: Dir::In,
        shared: true,
        goal: 1.7,
    },
    Case {
        name: "shared_out",
        dir: Dir::Out,
        shared: true,
        goal: 1.7,
    },
];

/// True under `cargo bench` (criterion's `--bench`), false under `cargo test --benches`.
fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn example(name: &str) -> Config {
    Config::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .unwrap()
}

/// Limits as an IKE-negotiated SA might carry them, far from being reached here.
fn limits() -> Limits {
    Limits {
        soft_bytes: Some(9 << 40),
        hard_bytes: Some(10 << 40),
        soft_packets: Some(9 << 32),
        hard_packets: Some(10 << 32),
        soft_seconds: Some(3000),
        hard_seconds: Some(3600),
        ..Limits::default()
    }
}

/// SA parameters `p` with the lifetime limits, and for `second` another SPI and key.
fn variant(p: &SaParams, second: bool) -> SaParams {
    let mut p = p.clone();
    p.limits = limits();
    if second {
        p.spi += 1;
        p.keymat = Zeroizing::new(KEY2.to_vec());
    }
    p
}

/// A dataplane with two workers' state, set up for one case.
struct Setup {
    case: Case,
    dp: Dataplane,
    stats: Arc<[CoreStats]>,
    events: ArrayQueue<SaEvent>,
    pcfg: PipelineConfig,
    /// Per thread: the plain packet it sends (outbound) or its twin seals (inbound).
    pkts: [Vec<u8>; 2],
    /// Inbound, per thread: the outbound twin of the SA its packets are for.
    twins: Vec<Sa>,
    /// Inbound, per SA: sequence numbers used so far.
    used: [u64; 2],
}

impl Setup {
    fn new(case: Case) -> Self {
        let now = espd::now_ns();
        let (near, far) = (
            Ipv4Addr::new(198, 51, 100, 20),
            Ipv4Addr::new(198, 51, 100, 200),
        );
        let second = if case.shared { near } else { far };
        let pkts = [udp_frame_to(IP_LEN, near), udp_frame_to(IP_LEN, second)];
        let a = example("gw-a.toml");
        let out = a.sa_params(Direction::Outbound).unwrap().clone();
        match case.dir {
            Dir::Out => {
                // Two tunnels, one per half of B's LAN; the shared case uses the first only.
                let mut cfg = a;
                cfg.workers = 2;
                cfg.sas.clear();
                cfg.control.tunnel_capacity = 2;
                cfg.policies = [(0u8, 0u32), (128, 1)]
                    .into_iter()
                    .map(|(low, t)| Policy {
                        selector: Selector {
                            src: "192.0.2.0/24".parse().unwrap(),
                            dst: Prefix::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, low)), 25)
                                .unwrap(),
                            protocol: None,
                            src_ports: PortRange::ANY,
                            dst_ports: PortRange::ANY,
                        },
                        action: PolicyAction::Protect(t),
                    })
                    .collect();
                let dp = cfg.build_dataplane(now).unwrap();
                for t in 0..2u32 {
                    let sa = Sa::new(&variant(&out, t == 1), 2, now).unwrap();
                    dp.sas.set_outbound(t, Some(sa)).unwrap();
                }
                Self::with(case, dp, &cfg, pkts, Vec::new())
            }
            Dir::In => {
                let mut cfg = example("gw-b.toml");
                cfg.workers = 2;
                let inb = cfg.sa_params(Direction::Inbound).unwrap().clone();
                cfg.sas.clear();
                let dp = cfg.build_dataplane(now).unwrap();
                let mut twins = Vec::new();
                for t in 0..2 {
                    let second = t == 1 && !case.shared;
                    if t == 0 || second {
                        let sa = Sa::new(&variant(&inb, second), 2, now).unwrap();
                        dp.sas.install_inbound(sa).unwrap();
                    }
                    twins.push(Sa::new(&variant(&out, second), 1, now).unwrap());
                }
                Self::with(case, dp, &cfg, pkts, twins)
            }
        }
    }

    fn with(case: Case, dp: Dataplane, cfg: &Config, pkts: [Vec<u8>; 2], twins: Vec<Sa>) -> Self {
        Self {
            case,
            dp,
            // As the daemon allocates them: one slice, one element per worker.
            stats: (0..2).map(|_| CoreStats::default()).collect(),
            events: ArrayQueue::new(1 << 16),
            pcfg: cfg.pipeline_config(),
            pkts,
            twins,
            used: [0; 2],
        }
    }

    /// Sequence numbers one round takes from SA `s` on `threads` threads.
    fn per_round(&self, threads: usize) -> u64 {
        let users = if self.case.shared { threads } else { 1 };
        (users * ROUND * BATCH) as u64
    }

    /// Runs `rounds` rounds on `threads` pinned threads; returns each round's time.
    fn run(&mut self, threads: usize, rounds: u64) -> Vec<Duration> {
        let per_round = self.per_round(threads);
        let base = self.used;
        for u in &mut self.used {
            *u += per_round * rounds;
        }
        assert!(
            self.used.iter().all(|&u| u < u32::MAX as u64),
            "sequence space of the inbound SAs used up: fewer rounds"
        );
        let barrier = SpinBarrier::new(threads);
        let this = &*self;
        let spans: Vec<Vec<(Instant, Instant)>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let barrier = &barrier;
                    s.spawn(move || this.thread(t, threads, rounds, base, barrier))
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        (0..rounds as usize)
            .map(|r| {
                let start = spans.iter().map(|v| v[r].0).min().unwrap();
                let end = spans.iter().map(|v| v[r].1).max().unwrap();
                end - start
            })
            .collect()
    }

    /// Thread `t` of `threads`: its rounds' (start, end).
    fn thread(
        &self,
        t: usize,
        threads: usize,
        rounds: u64,
        base: [u64; 2],
        barrier: &SpinBarrier,
    ) -> Vec<(Instant, Instant)> {
        core_affinity::set_for_current(core_affinity::CoreId { id: t });
        let mut p = Pipeline::new(&self.dp, t, &self.stats[t], &self.events, self.pcfg);
        let pkt = &self.pkts[t];
        let mut frames: Vec<Frame> = (0..ROUND * BATCH)
            .map(|_| Frame::from_packet(pkt))
            .collect();
        let mut acts = vec![Action::Punt; ROUND * BATCH];
        let sa = if self.case.shared { 0 } else { t };
        let mut spans = Vec::with_capacity(rounds as usize);
        for r in 0..rounds {
            // Untimed: this round's frames.
            let round_base = base[sa] + r * self.per_round(threads);
            for (i, f) in frames.iter_mut().enumerate() {
                f.reset(pkt);
                if self.case.dir == Dir::In {
                    // A shared SA's packets alternate between the threads (as if spread
                    // packet by packet over the queues): the worst case for its window.
                    let slot = if self.case.shared { i * threads + t } else { i };
                    seal(&self.twins[t], round_base + slot as u64 + 1, f);
                }
            }
            barrier.wait();
            let start = Instant::now();
            for (fs, a) in frames.chunks_mut(BATCH).zip(acts.chunks_mut(BATCH)) {
                let now = espd::now_ns();
                match self.case.dir {
                    Dir::Out => p.outbound(fs, now, a),
                    Dir::In => p.inbound(fs, now, a),
                }
            }
            let end = Instant::now();
            spans.push((start, end));
            if let Some(bad) = acts.iter().find(|a| **a != Action::Tx) {
                panic!("{}: thread {t}: a frame came out {bad:?}", self.case.name);
            }
        }
        spans
    }
}

/// Encapsulates the plain packet in `f` with `twin` and sequence number `seq`.
fn seal(twin: &Sa, seq: u64, f: &mut Frame) {
    let (at, len) = (f.offset + 14, f.len - 14);
    let (start, len) = espd::esp::encap(twin, seq, &mut f.data, at, len).unwrap();
    f.data[start - 2..start].copy_from_slice(&[8, 0]);
    f.offset = start - 14;
    f.len = len + 14;
}

/// A barrier whose waiters spin (a sleeping barrier's wake-up would be timed as work).
struct SpinBarrier {
    n: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(n: usize) -> Self {
        Self {
            n,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn wait(&self) {
        let g = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == g {
            spins += 1;
            if spins.is_multiple_of(1 << 14) {
                // A busy machine may have descheduled the last thread: let it run.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

fn cores(c: &mut Criterion) {
    check_cores();
    let mut g = c.benchmark_group("cores");
    for case in CASES {
        // A fresh dataplane per case, shared by its thread counts.
        let mut setup = Setup::new(case);
        for threads in THREADS {
            g.throughput(Throughput::Elements((threads * ROUND * BATCH) as u64));
            g.bench_function(BenchmarkId::new(case.name, threads), |b| {
                b.iter_custom(|rounds| setup.run(threads, rounds).iter().sum())
            });
        }
    }
    g.finish();
}

/// Pairs of runs measured for each ratio, and rounds per run.
const REPS: usize = 7;
const ROUNDS: u64 = 1000;

/// Throughput(2) ÷ throughput(1) per case: `REPS` pairs of runs, 1 and 2 threads alternating.
/// Two figures per run: all its packets over the sum of its rounds' times (`wall`), and a
/// round's packets over the median round time (`median`), which leaves out the rounds a
/// busy machine stretched by descheduling a thread.
fn ratios(_: &mut Criterion) {
    let (reps, rounds) = if full_run() { (REPS, ROUNDS) } else { (1, 4) };
    println!(
        "\ncores: throughput(2 threads) / throughput(1 thread), {IP_LEN} B packets, \
         {reps} pairs of runs of {rounds} rounds of {ROUND}x{BATCH} packets per thread{}",
        if full_run() {
            ""
        } else {
            " (test mode: not a measurement)"
        }
    );
    println!(
        "cores: {:<11} {:>8} {:>8} {:>6} {:>11} | {:>8} {:>8} {:>6} {:>11} | {:>4}",
        "case",
        "1T Mpps",
        "2T Mpps",
        "wall",
        "pairs",
        "1T Mpps",
        "2T Mpps",
        "median",
        "pairs",
        "goal"
    );
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.2}-{hi:.2}")
    };
    for case in CASES {
        let mut setup = Setup::new(case);
        // Warm-up: caches, the allocator, the lifetime leases.
        setup.run(1, rounds.div_ceil(10));
        setup.run(2, rounds.div_ceil(10));
        // [wall, median][1 thread, 2 threads]: Mpps per run.
        let mut mpps = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
        for _ in 0..reps {
            for (i, threads) in THREADS.into_iter().enumerate() {
                let times = setup.run(threads, rounds);
                let per_round = (threads * ROUND * BATCH) as f64;
                let total: Duration = times.iter().sum();
                let mut sorted = times.clone();
                sorted.sort();
                let med = sorted[sorted.len() / 2];
                mpps[0][i].push(per_round * rounds as f64 / total.as_secs_f64() / 1e6);
                mpps[1][i].push(per_round / med.as_secs_f64() / 1e6);
            }
        }
        let mut line = format!("cores: {:<11}", case.name);
        let mut below = false;
        for [one, two] in &mpps {
            let pairs: Vec<f64> = one.iter().zip(two).map(|(a, b)| b / a).collect();
            let r = median(&pairs);
            // The goal is judged on the last figure, the median round's.
            below = r < case.goal;
            line += &format!(
                " {:>8.2} {:>8.2} {:>6.2} {:>11} |",
                median(one),
                median(two),
                r,
                spread(&pairs)
            );
        }
        line += &format!(" {:>4.1}", case.goal);
        if full_run() && below {
            line += "  (below goal)";
        }
        println!("{line}");
    }
}

/// Says so when this machine cannot run two threads on two cores.
fn check_cores() {
    let n = core_affinity::get_core_ids().map_or(0, |v| v.len());
    if n < 2 {
        println!("cores: only {n} core(s) usable: the 2-thread figures share a core");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = cores, ratios
}
criterion_main!(benches);
