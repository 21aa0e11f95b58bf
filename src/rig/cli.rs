//! The command lines of the test bench's subcommands: `espd rig`, `espd traffic`,
//! `espd keyer`, `espd demo` and `espd bench` — their arguments and the entry points that run
//! them and print their results.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::daemon::cli::XdpModeArg;

use super::traffic;

// The arguments of `espd rig` (help texts: the subcommand's doc comment in main.rs).
#[derive(clap::Args)]
pub struct RigArgs {
    #[command(subcommand)]
    pub op: RigOp,
}

#[derive(clap::Subcommand)]
pub enum RigOp {
    /// Build the rig and write gateway configs (left in place until `down`).
    Up {
        /// Queues (and gateway workers) per veth.
        #[arg(long, default_value_t = 2)]
        queues: u32,
        /// XDP attach mode written into the gateway configs.
        #[arg(long, value_enum, default_value = "native")]
        xdp_mode: XdpModeArg,
        /// Directory for the gateway configs.
        #[arg(long, default_value = super::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Remove every namespace of the rig and the configs `up` wrote (works after a crash too).
    Down {
        /// Directory of the gateway configs to remove.
        #[arg(long, default_value = super::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Show what exists.
    Status,
}

/// `espd rig up|down|status`.
pub fn rig(a: RigArgs) -> anyhow::Result<()> {
    match a.op {
        RigOp::Up {
            queues,
            xdp_mode,
            dir,
        } => {
            let spec = super::RigSpec {
                queues,
                xdp_mode: xdp_mode.name(),
                dir,
                ..Default::default()
            };
            let rig = super::Rig::up(spec)?;
            println!(
                "rig up: configs {} and {}",
                rig.gw_a.display(),
                rig.gw_b.display()
            );
            rig.keep();
        }
        RigOp::Down { dir } => {
            super::teardown(&dir);
            println!("rig down");
        }
        RigOp::Status => print!("{}", super::status()),
    }
    Ok(())
}

// The arguments of `espd traffic`.
#[derive(clap::Args)]
pub struct TrafficArgs {
    #[command(subcommand)]
    pub op: TrafficOp,
}

#[derive(clap::Subcommand)]
pub enum TrafficOp {
    /// Sends --count numbered datagrams to --dst, paced at --pps.
    UdpSend {
        /// Destination address:port.
        #[arg(long)]
        dst: SocketAddr,
        /// Flow id written into every datagram.
        #[arg(long, default_value_t = 0)]
        flow: u32,
        /// Datagrams to send.
        #[arg(long)]
        count: u64,
        /// UDP payload bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Datagrams per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        pps: u64,
        /// Stop after this many seconds even if `count` is not reached.
        #[arg(long)]
        seconds: Option<f64>,
    },
    /// Receives numbered datagrams and checks them (duplicates, order, losses).
    UdpRecv {
        /// Address:port to listen on.
        #[arg(long)]
        bind: SocketAddr,
        /// Distinct datagrams expected per flow.
        #[arg(long)]
        expect: u64,
        /// Flows expected.
        #[arg(long, default_value_t = 1)]
        flows: u32,
        /// Stop when nothing arrived for this many seconds.
        #[arg(long, default_value_t = 3.0)]
        idle: f64,
    },
    /// As fast as possible (sendmmsg) or at --pps, for --seconds; --size 0 is IMIX.
    Blast {
        /// Destination address:port.
        #[arg(long)]
        dst: SocketAddr,
        /// Flow id written into every datagram.
        #[arg(long, default_value_t = 0)]
        flow: u32,
        /// IP packet bytes (0: IMIX).
        #[arg(long)]
        size: usize,
        /// How long to send.
        #[arg(long)]
        seconds: f64,
        /// Packets per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        pps: u64,
    },
    /// Counts datagrams (recvmmsg) of one flow (or all) until SIGTERM, then until nothing
    /// arrived for --idle seconds; prints `ready` once bound.
    Sink {
        /// Address:port to listen on.
        #[arg(long)]
        bind: SocketAddr,
        /// Count only this flow (default: every flow).
        #[arg(long)]
        flow: Option<u32>,
        /// After SIGTERM, stop when nothing arrived for this many seconds.
        #[arg(long, default_value_t = 0.2)]
        idle: f64,
        /// Datagrams more than this many seconds after SIGTERM also count as late.
        #[arg(long, default_value_t = 2.0)]
        grace: f64,
        /// Stop after this many seconds in any case.
        #[arg(long, default_value_t = 120.0)]
        max: f64,
    },
    /// The IKEv1 initiator swarm of `espd bench --ike` (run inside gw-a).
    IkeSwarm {
        /// Initiators, each with its own outer address.
        #[arg(long, default_value_t = 1000)]
        peers: usize,
        /// Setups in flight at once.
        #[arg(long, default_value_t = 50)]
        window: usize,
        /// File holding the pre-shared key.
        #[arg(long)]
        psk_file: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 180.0)]
        timeout: f64,
    },
    /// Request/response responder: echoes every datagram until SIGTERM or --max seconds;
    /// prints `ready` once bound.
    Echo {
        /// Address:port to listen on.
        #[arg(long)]
        bind: SocketAddr,
        /// Stop after this many seconds in any case.
        #[arg(long, default_value_t = 120.0)]
        max: f64,
    },
    /// Round trips to an `echo` responder (like netperf UDP_RR; like `ping` with
    /// --interval-us): --count requests of --size-byte IP packets, --outstanding in flight.
    Rr {
        /// The echo responder's address:port.
        #[arg(long)]
        dst: SocketAddr,
        /// IP packet bytes of each request.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Requests to send.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Request i leaves no earlier than i × this after the start (0: back to back).
        #[arg(long, default_value_t = 0)]
        interval_us: u64,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 1)]
        outstanding: u32,
        /// A request unanswered for this long is lost.
        #[arg(long, default_value_t = 200)]
        timeout_ms: u64,
    },
    /// Connects to --dst and writes --bytes of a checkable pattern.
    TcpSend {
        /// Destination address:port.
        #[arg(long)]
        dst: SocketAddr,
        /// Bytes to write.
        #[arg(long)]
        bytes: u64,
    },
    /// Accepts one connection and checks every byte of the pattern until EOF.
    TcpRecv {
        /// Address:port to listen on.
        #[arg(long)]
        bind: SocketAddr,
        /// Bytes expected.
        #[arg(long)]
        expect: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
}

/// A flag that SIGTERM and SIGINT set: the sink and the echo responder stop on it and still
/// print their report.
fn stop_on_signal() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let f = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, f.clone());
    }
    f
}

/// Tells the process that started a tool that its socket is bound (the first line of stdout).
fn ready() {
    println!("ready");
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

/// `espd traffic ...`: runs one tool and prints its report as a JSON line.
pub fn traffic(a: TrafficArgs) -> anyhow::Result<()> {
    let json = match a.op {
        TrafficOp::IkeSwarm {
            peers,
            window,
            psk_file,
            timeout,
        } => super::swarm::client(peers, window, &psk_file, timeout)?.to_string(),
        TrafficOp::UdpSend {
            dst,
            flow,
            count,
            size,
            pps,
            seconds,
        } => serde_json::to_string(&traffic::udp_send(
            dst,
            flow,
            count,
            size,
            pps,
            seconds.map(Duration::from_secs_f64),
        )?)?,
        TrafficOp::UdpRecv {
            bind,
            expect,
            flows,
            idle,
        } => serde_json::to_string(&traffic::udp_recv(
            bind,
            expect,
            Duration::from_secs_f64(idle),
            flows,
        )?)?,
        TrafficOp::Blast {
            dst,
            flow,
            size,
            seconds,
            pps,
        } => serde_json::to_string(&traffic::blast(dst, flow, size, seconds, pps)?)?,
        TrafficOp::Sink {
            bind,
            flow,
            idle,
            grace,
            max,
        } => serde_json::to_string(&traffic::sink(
            bind,
            flow,
            Duration::from_secs_f64(idle),
            Duration::from_secs_f64(grace),
            Duration::from_secs_f64(max),
            &stop_on_signal(),
            ready,
        )?)?,
        TrafficOp::Echo { bind, max } => serde_json::to_string(&traffic::echo(
            bind,
            Duration::from_secs_f64(max),
            &stop_on_signal(),
            ready,
        )?)?,
        TrafficOp::Rr {
            dst,
            size,
            count,
            interval_us,
            outstanding,
            timeout_ms,
        } => serde_json::to_string(&traffic::rr(
            dst,
            size,
            count,
            Duration::from_micros(interval_us),
            outstanding,
            Duration::from_millis(timeout_ms),
        )?)?,
        TrafficOp::TcpSend { dst, bytes } => {
            serde_json::to_string(&traffic::tcp_send(dst, bytes)?)?
        }
        TrafficOp::TcpRecv {
            bind,
            expect,
            timeout,
        } => serde_json::to_string(&traffic::tcp_recv(
            bind,
            expect,
            Duration::from_secs_f64(timeout),
        )?)?,
    };
    println!("{json}");
    Ok(())
}

// The arguments of `espd keyer`.
#[derive(clap::Args)]
pub struct KeyerArgs {
    /// Gateway A's control socket.
    #[arg(long)]
    pub a: PathBuf,
    /// Gateway B's control socket.
    #[arg(long)]
    pub b: PathBuf,
    /// The tunnel (its name in both configs) to rekey.
    #[arg(long, default_value = "peer")]
    pub tunnel: String,
    /// Rekeys to do.
    #[arg(long, default_value_t = 10)]
    pub count: u64,
    /// Pause between rekeys, ms.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
}

/// `espd keyer`: `count` rekeys of the tunnel between two gateways, `interval_ms` apart.
pub fn keyer(a: KeyerArgs) -> anyhow::Result<()> {
    let mut k = super::keyer::Keyer::connect(
        &a.a,
        &a.b,
        &a.tunnel,
        Some(super::SPI_BA),
        Some(super::SPI_AB),
    )?;
    for i in 0..a.count {
        let t = Instant::now();
        let (ab, ba) = k.rekey()?;
        println!(
            "rekey {} a→b {ab} b→a {ba} in {:.1} ms",
            i + 1,
            t.elapsed().as_secs_f64() * 1e3
        );
        std::thread::sleep(Duration::from_millis(a.interval_ms));
    }
    Ok(())
}

// The arguments of `espd demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// How long the traffic runs.
    #[arg(long, default_value_t = 12)]
    pub seconds: u64,
    /// Gateway B: `espd`, or `strongswan` (charon with kernel-libipsec; IPv4 flows only).
    #[arg(long, value_enum, default_value = "espd")]
    pub peer: DemoPeer,
    /// Keys from the rig's keyer over the control sockets (the simulation of an external IKE
    /// daemon) instead of the built-in IKE.
    #[arg(long)]
    pub keyer: bool,
    /// XDP attach mode of the gateways.
    #[arg(long, value_enum, default_value = "native")]
    pub xdp_mode: XdpModeArg,
    /// UDP packets per second per flow (default 20000; 1000 with strongSwan, whose
    /// kernel-libipsec forwards a few thousand packets per second).
    #[arg(long)]
    pub pps: Option<u64>,
}

/// Gateway B of the demo.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DemoPeer {
    Espd,
    Strongswan,
}

/// `espd demo`.
pub fn demo(a: DemoArgs) -> anyhow::Result<()> {
    if a.keyer && matches!(a.peer, DemoPeer::Strongswan) {
        anyhow::bail!("--keyer programs both espd gateways; it cannot key strongSwan");
    }
    super::demo::run(&super::demo::DemoOptions {
        seconds: a.seconds,
        pps: a.pps.unwrap_or(match a.peer {
            DemoPeer::Espd => 20_000,
            DemoPeer::Strongswan => 1_000,
        }),
        xdp_mode: a.xdp_mode.name(),
        ike: (!a.keyer).then_some(match a.peer {
            DemoPeer::Espd => super::ike::Peer::Espd,
            DemoPeer::Strongswan => super::ike::Peer::StrongSwan,
        }),
        ..Default::default()
    })
}

// The arguments of `espd bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Full trial length: RFC 2544 final trials, the flood, the CPU window.
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Length of the throughput search's first, shorter trials.
    #[arg(long, default_value_t = 1.0)]
    pub trial_seconds: f64,
    /// The search stops when NDR and PDR are each known within this fraction.
    #[arg(long, default_value_t = 0.05)]
    pub precision: f64,
    /// Measurements of every figure; the report gives their median and min–max.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Comma-separated IP packet sizes; 0 or imix for IMIX.
    #[arg(long, default_value = "64,512,1372,1400,imix")]
    pub sizes: String,
    /// Comma-separated systems to measure: espd, null (espd without crypto), kernel
    /// (kernel routing, no IPsec), strongswan.
    #[arg(long, default_value = "espd,null,kernel,strongswan")]
    pub systems: String,
    /// Offered loads (pps) of the CPU-per-packet points.
    #[arg(long, default_value = "10000,20000,50000")]
    pub cpu_loads: String,
    /// IP packet sizes of the CPU-per-packet points.
    #[arg(long, default_value = "64,1400")]
    pub cpu_sizes: String,
    /// Round trips per run (0: none).
    #[arg(long, default_value_t = 2000)]
    pub rtt_count: u64,
    /// Gap between round-trip requests, µs (0: back to back, like netperf UDP_RR).
    #[arg(long, default_value_t = 2000)]
    pub rtt_interval_us: u64,
    /// Round-trip requests in flight.
    #[arg(long, default_value_t = 1)]
    pub rtt_outstanding: u32,
    /// Skip the throughput search and the flood (round trips and CPU only).
    #[arg(long)]
    pub no_throughput: bool,
    /// TOML lines added to the [dataplane] section of the espd and null gateways, e.g.
    /// 'coalesce_us = 200' or 'idle = "spin"' (checked in the gateway configs before the rig
    /// is built). `--compare` names a report that ran with other lines.
    #[arg(long, default_value = "")]
    pub dataplane: String,
    /// Rekey interval of the rekeys-under-load check (0: skip it).
    #[arg(long, default_value_t = 100)]
    pub rekey_ms: u64,
    /// Offered load (pps) during the rekeys-under-load check.
    #[arg(long, default_value_t = 10_000)]
    pub rekey_pps: u64,
    /// Directory for the JSON and text reports and the SVG plots.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// An earlier report (JSON) to compare with: changes bigger than the spread are flagged.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Instead of the data-plane suite: an IKEv1 initiator swarm against espd and strongSwan
    /// as responders (`--systems` picks among espd,strongswan).
    #[arg(long)]
    pub ike: bool,
    /// Swarm peers, each with its own outer IPv6 address (with --ike).
    #[arg(long, default_value_t = 1000)]
    pub ike_peers: usize,
    /// Setups in flight at once (with --ike).
    #[arg(long, default_value_t = 50)]
    pub ike_window: usize,
}

/// A comma-separated list of IP packet sizes (64..=1400, or 0/imix for IMIX).
fn parse_sizes(what: &str, list: &str) -> anyhow::Result<Vec<usize>> {
    let sizes = list
        .split(',')
        .map(|s| match s.trim() {
            "imix" | "0" => Ok(0),
            n => n
                .parse::<usize>()
                .map_err(|_| anyhow::anyhow!("{what}: `{n}` is not a size")),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(bad) = sizes.iter().find(|s| **s != 0 && !(64..=1400).contains(*s)) {
        anyhow::bail!("{what}: {bad} is outside 64..=1400 (the rig's LAN MTU is 1400)");
    }
    Ok(sizes)
}

/// `espd bench`: checks the arguments, then runs the suite.
pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.ike || a.dataplane.is_empty(),
        "--dataplane: not used by --ike (the swarm measures the IKE thread, not the workers)"
    );
    if a.ike {
        let systems: Vec<String> = a
            .systems
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| s == "espd" || s == "strongswan")
            .collect();
        anyhow::ensure!(
            !systems.is_empty(),
            "--systems: --ike compares espd and strongswan responders"
        );
        anyhow::ensure!(
            (1..=60_000).contains(&a.ike_peers),
            "--ike-peers: {} is not between 1 and 60000",
            a.ike_peers
        );
        super::swarm::run(&super::swarm::SwarmOptions {
            peers: a.ike_peers,
            window: a.ike_window.max(1),
            systems,
            runs: a.runs.max(1),
            out: a.out,
        })?;
        return Ok(());
    }
    let sizes = parse_sizes("--sizes", &a.sizes)?;
    let cpu_sizes = parse_sizes("--cpu-sizes", &a.cpu_sizes)?;
    let cpu_loads = a
        .cpu_loads
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| anyhow::anyhow!("--cpu-loads: `{s}` is not a rate in pps"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if a.runs == 0 {
        anyhow::bail!("--runs must be at least 1");
    }
    if !(a.seconds > 0.0 && a.trial_seconds > 0.0) {
        anyhow::bail!("--seconds and --trial-seconds must be positive");
    }
    if !(a.precision > 0.0 && a.precision < 1.0) {
        anyhow::bail!("--precision is a fraction between 0 and 1");
    }
    super::bench::run(&super::bench::BenchOptions {
        seconds: a.seconds,
        trial_seconds: a.trial_seconds,
        precision: a.precision,
        runs: a.runs,
        sizes,
        systems: a.systems.split(',').map(|s| s.trim().to_string()).collect(),
        cpu_loads,
        cpu_sizes,
        rtt_count: a.rtt_count,
        rtt_interval_us: a.rtt_interval_us,
        rtt_outstanding: a.rtt_outstanding,
        no_throughput: a.no_throughput,
        rekey_ms: a.rekey_ms,
        rekey_pps: a.rekey_pps,
        out: a.out,
        compare: a.compare,
        dataplane: a.dataplane,
    })?;
    Ok(())
}
