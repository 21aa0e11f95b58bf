//! The `espd` command line. All logic lives in the library; this file only parses arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use espd::config::Config;
use espd::offline::{Direction, run_pcap};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "espd",
    version,
    about = "Userspace IPsec ESP (AES-GCM) dataplane"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Dir {
    Outbound,
    Inbound,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Native,
    Generic,
}

#[derive(Subcommand)]
enum CtlOp {
    /// SAs: list, get, add, del.
    Sa {
        #[command(subcommand)]
        op: SaOp,
    },
    /// Make-before-break rekey of a tunnel's outbound SA (optionally with its new inbound SA).
    Rekey {
        #[arg(long)]
        tunnel: String,
        #[arg(long)]
        out_spi: String,
        #[arg(long)]
        out_key: String,
        #[arg(long)]
        in_spi: Option<String>,
        #[arg(long)]
        in_key: Option<String>,
        /// Inbound SA to retire after the grace period.
        #[arg(long)]
        retire: Option<String>,
    },
    /// IKE main-mode records.
    Mm {
        #[command(subcommand)]
        op: MmOp,
    },
    /// Follow the event stream (one JSON line per event).
    Events,
    /// Counters.
    Stats,
    /// Send raw JSON request lines (`-`: read them from stdin).
    Raw { request: String },
}

#[derive(Subcommand)]
enum SaOp {
    List {
        #[arg(long)]
        direction: Option<String>,
    },
    Get {
        spi: String,
        direction: String,
    },
    Add {
        #[arg(long)]
        tunnel: String,
        #[arg(long)]
        direction: String,
        #[arg(long)]
        spi: String,
        /// key‖salt in hex (prefer `ctl raw -` to keep keys out of the process list).
        #[arg(long)]
        key: String,
        #[arg(long)]
        esn: bool,
    },
    Del {
        spi: String,
        direction: String,
    },
}

#[derive(Subcommand)]
enum MmOp {
    Add {
        #[arg(long)]
        icookie: String,
        #[arg(long)]
        rcookie: String,
        #[arg(long)]
        peer: String,
        #[arg(long)]
        lifetime: u64,
        #[arg(long)]
        kb: Option<u64>,
        /// A child SA and its direction, `in:SPI` or `out:SPI` (repeatable).
        #[arg(long = "child")]
        children: Vec<String>,
    },
    /// Report that the peer deleted the main mode (surfaces 13885).
    Delete {
        #[arg(long)]
        icookie: String,
        #[arg(long)]
        rcookie: String,
    },
    List,
}

#[derive(Subcommand)]
enum RigOp {
    /// Build the rig and write gateway configs (left in place until `down`).
    Up {
        #[arg(long, default_value_t = 2)]
        queues: u32,
        #[arg(long, value_enum, default_value = "native")]
        xdp_mode: Mode,
        #[arg(long, default_value = espd::rig::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Remove every namespace of the rig and the configs `up` wrote (works after a crash too).
    Down {
        #[arg(long, default_value = espd::rig::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Show what exists.
    Status,
}

#[derive(Subcommand)]
enum TrafficOp {
    UdpSend {
        #[arg(long)]
        dst: std::net::SocketAddr,
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
        bind: std::net::SocketAddr,
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
        dst: std::net::SocketAddr,
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
        bind: std::net::SocketAddr,
        #[arg(long, default_value_t = 1.0)]
        idle: f64,
        #[arg(long, default_value_t = 120.0)]
        max: f64,
    },
    TcpSend {
        #[arg(long)]
        dst: std::net::SocketAddr,
        #[arg(long)]
        bytes: u64,
    },
    TcpRecv {
        #[arg(long)]
        bind: std::net::SocketAddr,
        #[arg(long)]
        expect: u64,
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway: XDP programs, AF_XDP workers, until SIGINT/SIGTERM.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Print a JSON line of statistics every second.
        #[arg(long)]
        stats: bool,
        /// Forward without ESP (the I/O ceiling baseline for benchmarks).
        #[arg(long)]
        null_crypto: bool,
        /// Override the config's XDP mode.
        #[arg(long, value_enum)]
        xdp_mode: Option<Mode>,
        /// Force copy mode (default: zero-copy when the driver supports it).
        #[arg(long)]
        copy: bool,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Static outbound SAs with no saved sequence state start at 1: say this only when
        /// their keys are new (otherwise their GCM nonces would repeat).
        #[arg(long)]
        fresh_keys: bool,
    },
    /// The main job: two gateways on the veth rig with live traffic, then a report.
    Demo {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, value_enum, default_value = "native")]
        xdp_mode: Mode,
        #[arg(long, default_value_t = 20_000)]
        pps: u64,
    },
    /// Talk to a running daemon over its control socket.
    Ctl {
        #[arg(long, default_value = "/run/espd/espd.sock")]
        socket: PathBuf,
        #[command(subcommand)]
        op: CtlOp,
    },
    /// The rig's keyer: rekeys the tunnel between two gateways over their control sockets.
    #[command(hide = true)]
    Keyer {
        #[arg(long)]
        a: PathBuf,
        #[arg(long)]
        b: PathBuf,
        #[arg(long, default_value = "peer")]
        tunnel: String,
        #[arg(long, default_value_t = 10)]
        count: u64,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
    },
    /// Benchmark suite on the rig: espd against crypto-off forwarding, kernel routing and
    /// strongSwan; throughput, latency, rekeys under load; JSON report and SVG plots.
    Bench {
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
        /// Comma-separated IP packet sizes; 0 or imix for IMIX.
        #[arg(long, default_value = "64,512,1372,1400,imix")]
        sizes: String,
        #[arg(long, default_value = "espd,null,kernel,strongswan")]
        systems: String,
        #[arg(long, default_value_t = 10_000)]
        latency_pps: u64,
        #[arg(long, default_value_t = 100)]
        rekey_ms: u64,
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        #[arg(long)]
        compare: Option<PathBuf>,
    },
    /// The veth test rig (network namespaces host-a, gw-a, wan, gw-b, host-b).
    Rig {
        #[command(subcommand)]
        op: RigOp,
    },
    /// Traffic generator and checking sink (run inside the rig's host namespaces).
    #[command(hide = true)]
    Traffic {
        #[command(subcommand)]
        op: TrafficOp,
    },
    /// Validate a configuration file and print a summary.
    CheckConfig { file: PathBuf },
    /// Run the exact pipeline over a pcap file (Ethernet) and print a JSON summary.
    Pcap {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum)]
        direction: Dir,
        input: PathBuf,
        output: PathBuf,
        /// Static outbound SAs with no saved sequence state start at 1 (new keys only).
        #[arg(long)]
        fresh_keys: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ESPD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("espd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run {
            config,
            stats,
            null_crypto,
            xdp_mode,
            copy,
            duration,
            fresh_keys,
        } => {
            let c = Config::load(&config)?;
            let opts = espd::daemon::RunOptions {
                stats,
                null_crypto,
                xdp_mode: xdp_mode.map(|m| match m {
                    Mode::Native => espd::config::XdpMode::Native,
                    Mode::Generic => espd::config::XdpMode::Generic,
                }),
                copy: if copy {
                    espd::datapath::xsk::Copy::Force
                } else {
                    espd::datapath::xsk::Copy::Auto
                },
                duration: duration.map(std::time::Duration::from_secs_f64),
                fresh_keys,
            };
            let summary = espd::daemon::run(&c, &opts)?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        }
        Cmd::Demo {
            seconds,
            xdp_mode,
            pps,
        } => espd::rig::demo::run(&espd::rig::demo::DemoOptions {
            seconds,
            pps,
            xdp_mode: match xdp_mode {
                Mode::Native => "native",
                Mode::Generic => "generic",
            },
            ..Default::default()
        }),
        Cmd::Ctl { socket, op } => {
            use serde_json::json;
            let ok = match op {
                CtlOp::Sa { op } => match op {
                    SaOp::List { direction } => {
                        espd::ctl::call(&socket, json!({"op": "sa_list", "direction": direction}))?
                    }
                    SaOp::Get { spi, direction } => espd::ctl::call(
                        &socket,
                        json!({"op": "sa_get", "spi": spi, "direction": direction}),
                    )?,
                    SaOp::Add {
                        tunnel,
                        direction,
                        spi,
                        key,
                        esn,
                    } => espd::ctl::call(
                        &socket,
                        json!({"op": "sa_add", "sa": {"tunnel": tunnel, "direction": direction, "spi": spi, "key": key, "esn": esn}}),
                    )?,
                    SaOp::Del { spi, direction } => espd::ctl::call(
                        &socket,
                        json!({"op": "sa_delete", "spi": spi, "direction": direction}),
                    )?,
                },
                CtlOp::Rekey {
                    tunnel,
                    out_spi,
                    out_key,
                    in_spi,
                    in_key,
                    retire,
                } => {
                    let inbound = match (in_spi, in_key) {
                        (Some(s), Some(k)) => {
                            json!({"tunnel": tunnel, "direction": "in", "spi": s, "key": k})
                        }
                        (None, None) => serde_json::Value::Null,
                        _ => anyhow::bail!("--in-spi and --in-key go together"),
                    };
                    espd::ctl::call(
                        &socket,
                        json!({"op": "rekey", "tunnel": tunnel, "outbound": {"tunnel": tunnel, "direction": "out", "spi": out_spi, "key": out_key}, "inbound": inbound, "retire_inbound": retire}),
                    )?
                }
                CtlOp::Mm { op } => match op {
                    MmOp::Add {
                        icookie,
                        rcookie,
                        peer,
                        lifetime,
                        kb,
                        children,
                    } => espd::ctl::call(
                        &socket,
                        json!({"op": "mm_add", "icookie": icookie, "rcookie": rcookie, "peer": peer, "lifetime_s": lifetime, "lifetime_kb": kb, "children": children}),
                    )?,
                    MmOp::Delete { icookie, rcookie } => espd::ctl::call(
                        &socket,
                        json!({"op": "mm_delete", "icookie": icookie, "rcookie": rcookie}),
                    )?,
                    MmOp::List => espd::ctl::call(&socket, json!({"op": "mm_list"}))?,
                },
                CtlOp::Events => espd::ctl::events(&socket)?,
                CtlOp::Stats => espd::ctl::call(&socket, json!({"op": "stats"}))?,
                CtlOp::Raw { request } => espd::ctl::raw(&socket, &request)?,
            };
            if !ok {
                anyhow::bail!("the daemon refused the request");
            }
            Ok(())
        }
        Cmd::Keyer {
            a,
            b,
            tunnel,
            count,
            interval_ms,
        } => {
            let mut k = espd::rig::keyer::Keyer::connect(
                &a,
                &b,
                &tunnel,
                Some(espd::rig::SPI_BA),
                Some(espd::rig::SPI_AB),
            )?;
            for i in 0..count {
                let t = std::time::Instant::now();
                let (ab, ba) = k.rekey()?;
                println!(
                    "rekey {} a→b {ab} b→a {ba} in {:.1} ms",
                    i + 1,
                    t.elapsed().as_secs_f64() * 1e3
                );
                std::thread::sleep(std::time::Duration::from_millis(interval_ms));
            }
            Ok(())
        }
        Cmd::Bench {
            seconds,
            sizes,
            systems,
            latency_pps,
            rekey_ms,
            out,
            compare,
        } => {
            let sizes = sizes
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
            espd::rig::bench::run(&espd::rig::bench::BenchOptions {
                seconds,
                sizes,
                systems: systems.split(',').map(|s| s.trim().to_string()).collect(),
                latency_pps,
                rekey_ms,
                out,
                compare,
            })?;
            Ok(())
        }
        Cmd::Rig { op } => {
            match op {
                RigOp::Up {
                    queues,
                    xdp_mode,
                    dir,
                } => {
                    let spec = espd::rig::RigSpec {
                        queues,
                        xdp_mode: match xdp_mode {
                            Mode::Native => "native",
                            Mode::Generic => "generic",
                        },
                        dir,
                        ..Default::default()
                    };
                    let rig = espd::rig::Rig::up(spec)?;
                    println!(
                        "rig up: configs {} and {}",
                        rig.gw_a.display(),
                        rig.gw_b.display()
                    );
                    rig.keep();
                }
                RigOp::Down { dir } => {
                    espd::rig::teardown(&dir);
                    println!("rig down");
                }
                RigOp::Status => print!("{}", espd::rig::status()),
            }
            Ok(())
        }
        Cmd::Traffic { op } => {
            use espd::rig::traffic;
            let json = match op {
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
                    seconds.map(std::time::Duration::from_secs_f64),
                )?)?,
                TrafficOp::UdpRecv {
                    bind,
                    expect,
                    flows,
                    idle,
                } => serde_json::to_string(&traffic::udp_recv(
                    bind,
                    expect,
                    std::time::Duration::from_secs_f64(idle),
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
                    std::time::Duration::from_secs_f64(idle),
                    std::time::Duration::from_secs_f64(max),
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
                    std::time::Duration::from_secs_f64(timeout),
                )?)?,
            };
            println!("{json}");
            Ok(())
        }
        Cmd::CheckConfig { file } => {
            let c = Config::load(&file)?;
            c.build_dataplane(espd::now_ns())?;
            println!(
                "{}: ok: {} worker(s), {} tunnel(s), {} polic(ies), {} static SA(s)",
                file.display(),
                c.workers,
                c.tunnels.len(),
                c.policies.len(),
                c.sas.len()
            );
            Ok(())
        }
        Cmd::Pcap {
            config,
            direction,
            input,
            output,
            fresh_keys,
        } => {
            let c = Config::load(&config)?;
            let d = match direction {
                Dir::Outbound => Direction::Outbound,
                Dir::Inbound => Direction::Inbound,
            };
            let summary = run_pcap(&c, d, &input, &output, fresh_keys)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
    }
}
