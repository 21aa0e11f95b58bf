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

#[derive(Subcommand)]
enum Cmd {
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
