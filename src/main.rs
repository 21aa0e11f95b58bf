//! The `espd` command line: the list of subcommands and the dispatch to the modules that run
//! them. Each subcommand's arguments live with its module (`daemon::cli`, `ctl`, `offline`,
//! `rig::cli`); this file only names them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use espd::rig::cli as rig;

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

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway: XDP programs, AF_XDP workers, until SIGINT/SIGTERM.
    Run(espd::daemon::cli::RunArgs),
    /// The main job: two gateways on the veth rig with live traffic, then a report.
    Demo(rig::DemoArgs),
    /// Talk to a running daemon over its control socket.
    Ctl(espd::ctl::CtlArgs),
    /// The rig's keyer: rekeys the tunnel between two gateways over their control sockets.
    #[command(hide = true)]
    Keyer(rig::KeyerArgs),
    /// Benchmark suite on the rig: espd against crypto-off forwarding, kernel routing and
    /// strongSwan; round trips, CPU per packet, RFC 2544 throughput (NDR/PDR), rekeys under
    /// load; median of --runs; JSON and text reports, SVG plots.
    Bench(rig::BenchArgs),
    /// The veth test rig (network namespaces host-a, gw-a, wan, gw-b, host-b).
    Rig(rig::RigArgs),
    /// Traffic generator and checking sink (run inside the rig's host namespaces).
    #[command(hide = true)]
    Traffic(rig::TrafficArgs),
    /// Validate a configuration file and print a summary.
    CheckConfig(espd::offline::CheckConfigArgs),
    /// Run the exact pipeline over a pcap file (Ethernet) and print a JSON summary.
    Pcap(espd::offline::PcapArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ESPD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let result = match Cli::parse().cmd {
        Cmd::Run(a) => espd::daemon::cli::run(a),
        Cmd::Demo(a) => rig::demo(a),
        Cmd::Ctl(a) => espd::ctl::run(a),
        Cmd::Keyer(a) => rig::keyer(a),
        Cmd::Bench(a) => rig::bench(a),
        Cmd::Rig(a) => rig::rig(a),
        Cmd::Traffic(a) => rig::traffic(a),
        Cmd::CheckConfig(a) => espd::offline::check_config(a),
        Cmd::Pcap(a) => espd::offline::pcap(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("espd: {e}");
            ExitCode::FAILURE
        }
    }
}
