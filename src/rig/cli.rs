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
        #[arg(long, default_value_t = 2)]
        queues: u32,
        #[arg(long, value_enum, default_value = "native")]
        xdp_mode: XdpModeArg,
        #[arg(long, default_value = super::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Remove every namespace of the rig and the configs `up` wrote (works after a crash too).
    Down {
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
    UdpSend {
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long, default_value_t = 0)]
        flow: u32,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 0)]
        pps: u64,
        /// Stop after this many seconds even if `count` is not reached.
        #[arg(long)]
        seconds: Option<f64>,
    },
    UdpRecv {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        expect: u64,
        #[arg(long, default_value_t = 1)]
        flows: u32,
        #[arg(long, default_value_t = 3.0)]
        idle: f64,
    },
    /// As fast as possible (sendmmsg) or at --pps, for --seconds; --size 0 is IMIX.
    Blast {
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long, default_value_t = 0)]
        flow: u32,
        #[arg(long)]
        size: usize,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 0)]
        pps: u64,
    },
    /// Counts datagrams (recvmmsg) and their one-way latency.
    Sink {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long, default_value_t = 1.0)]
        idle: f64,
        #[arg(long, default_value_t = 120.0)]
        max: f64,
    },
    /// The IKEv1 initiator swarm of `espd bench --ike` (run inside gw-a).
    IkeSwarm {
        #[arg(long, default_value_t = 1000)]
        peers: usize,
        #[arg(long, default_value_t = 50)]
        window: usize,
        #[arg(long)]
        psk_file: PathBuf,
        #[arg(long, default_value_t = 180.0)]
        timeout: f64,
    },
    TcpSend {
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long)]
        bytes: u64,
    },
    TcpRecv {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        expect: u64,
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
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
        TrafficOp::Sink { bind, idle, max } => serde_json::to_string(&traffic::sink(
            bind,
            Duration::from_secs_f64(idle),
            Duration::from_secs_f64(max),
            if bind.is_ipv4() { 28 } else { 48 },
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
    #[arg(long)]
    pub a: PathBuf,
    #[arg(long)]
    pub b: PathBuf,
    #[arg(long, default_value = "peer")]
    pub tunnel: String,
    #[arg(long, default_value_t = 10)]
    pub count: u64,
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
    #[arg(long, default_value_t = 12)]
    pub seconds: u64,
    /// Gateway B: `espd`, or `strongswan` (charon with kernel-libipsec; IPv4 flows only).
    #[arg(long, value_enum, default_value = "espd")]
    pub peer: DemoPeer,
    /// Keys from the rig's keyer over the control sockets (the simulation of an external IKE
    /// daemon) instead of the built-in IKE.
    #[arg(long)]
    pub keyer: bool,
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
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Comma-separated IP packet sizes; 0 or imix for IMIX.
    #[arg(long, default_value = "64,512,1372,1400,imix")]
    pub sizes: String,
    #[arg(long, default_value = "espd,null,kernel,strongswan")]
    pub systems: String,
    #[arg(long, default_value_t = 10_000)]
    pub latency_pps: u64,
    #[arg(long, default_value_t = 100)]
    pub rekey_ms: u64,
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
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
    /// Runs per responder, interleaved (with --ike).
    #[arg(long, default_value_t = 1)]
    pub ike_runs: usize,
}

/// `espd bench`: checks `--sizes` (64..=1400 or IMIX), then runs the suite.
pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
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
            runs: a.ike_runs.max(1),
            out: a.out,
        })?;
        return Ok(());
    }
    let sizes = a
        .sizes
        .split(',')
        .map(|s| match s.trim() {
            "imix" | "0" => Ok(0),
            n => n
                .parse::<usize>()
                .map_err(|_| anyhow::anyhow!("--sizes: `{n}` is not a size")),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(bad) = sizes.iter().find(|s| **s != 0 && !(64..=1400).contains(*s)) {
        anyhow::bail!("--sizes: {bad} is outside 64..=1400 (the rig's LAN MTU is 1400)");
    }
    super::bench::run(&super::bench::BenchOptions {
        seconds: a.seconds,
        sizes,
        systems: a.systems.split(',').map(|s| s.trim().to_string()).collect(),
        latency_pps: a.latency_pps,
        rekey_ms: a.rekey_ms,
        out: a.out,
        compare: a.compare,
    })?;
    Ok(())
}
