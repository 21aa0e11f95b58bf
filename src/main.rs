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
            eprintln!("espd: {e:#}");
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
            };
            let summary = espd::daemon::run(&c, &opts)?;
            println!("{}", serde_json::to_string(&summary)?);
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
        } => {
            let c = Config::load(&config)?;
            let d = match direction {
                Dir::Outbound => Direction::Outbound,
                Dir::Inbound => Direction::Inbound,
            };
            let summary = run_pcap(&c, d, &input, &output)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
    }
}
