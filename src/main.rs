//! The `espd` command line: the list of subcommands and the dispatch to the modules that run
//! them. Each subcommand's arguments live with its module (`daemon::cli`, `ctl`, `offline`,
//! `rig::cli`); this file only names them, sets up logging (`espd::logging`) and generates the
//! shell completions and man pages from the same command tree. The rig's subcommands exist only
//! with the cargo feature `rig` (default on; the production build and the .deb leave it out).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use espd::logging::LogFormat;
#[cfg(feature = "rig")]
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
    /// Log output: plain text or JSON lines on stderr, or native systemd journal entries.
    /// ESPD_LOG sets the filter (default info, e.g. ESPD_LOG=espd=debug).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "ESPD_LOG_FORMAT",
        default_value_t = LogFormat::Plain
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway: XDP programs, AF_XDP workers, until SIGINT/SIGTERM.
    Run(espd::daemon::cli::RunArgs),
    /// The main job: two gateways on the veth rig with live traffic, then a report.
    #[cfg(feature = "rig")]
    Demo(rig::DemoArgs),
    /// Talk to a running daemon over its control socket.
    Ctl(espd::ctl::CtlArgs),
    /// The rig's keyer: rekeys the tunnel between two gateways over their control sockets.
    #[cfg(feature = "rig")]
    #[command(hide = true)]
    Keyer(rig::KeyerArgs),
    /// Benchmark suite on the rig: espd against crypto-off forwarding, kernel routing and
    /// strongSwan; round trips, CPU per packet, RFC 2544 throughput (NDR/PDR), rekeys under
    /// load; median of --runs; JSON and text reports, SVG plots.
    #[cfg(feature = "rig")]
    Bench(rig::BenchArgs),
    /// The veth test rig (network namespaces host-a, gw-a, wan, gw-b, host-b).
    #[cfg(feature = "rig")]
    Rig(rig::RigArgs),
    /// Traffic generator and checking sink (run inside the rig's host namespaces).
    #[cfg(feature = "rig")]
    #[command(hide = true)]
    Traffic(rig::TrafficArgs),
    /// Validate a configuration file and print a summary.
    CheckConfig(espd::offline::CheckConfigArgs),
    /// Run the exact pipeline over a pcap file (Ethernet) and print a JSON summary.
    Pcap(espd::offline::PcapArgs),
    /// Print a shell completion script on stdout (e.g. `espd completions bash >
    /// /usr/share/bash-completion/completions/espd`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (espd.1 and one espd-<subcommand>.1 per subcommand) into DIR.
    Man {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
    },
}

/// `espd man DIR`: one page for the command and one per (nested) subcommand, named like git's
/// (`espd-ctl-sa.1`). Hidden subcommands get none.
fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))
}

/// `espd completions SHELL`: the script on stdout. Generated into memory first (clap_complete
/// panics when its writer fails); a closed pipe (`| head`) is not an error.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "espd", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::anyhow!("stdout: {e}")),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = match espd::logging::init(cli.log_format) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("espd: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.cmd {
        Cmd::Run(a) => espd::daemon::cli::run(a),
        #[cfg(feature = "rig")]
        Cmd::Demo(a) => rig::demo(a),
        Cmd::Ctl(a) => espd::ctl::run(a),
        #[cfg(feature = "rig")]
        Cmd::Keyer(a) => rig::keyer(a),
        #[cfg(feature = "rig")]
        Cmd::Bench(a) => rig::bench(a),
        #[cfg(feature = "rig")]
        Cmd::Rig(a) => rig::rig(a),
        #[cfg(feature = "rig")]
        Cmd::Traffic(a) => rig::traffic(a),
        Cmd::CheckConfig(a) => espd::offline::check_config(a),
        Cmd::Pcap(a) => espd::offline::pcap(a),
        Cmd::Completions { shell } => completions(shell),
        Cmd::Man { dir } => man_pages(&dir),
    };
    // Every line logged so far reaches stderr before the error does.
    logging.finish();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("espd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every subcommand has help text (clap's own --help/--version aside).
    #[test]
    fn every_argument_has_help() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") || a.is_global_set() && path != "espd" {
                    continue;
                }
                let help = a.get_help().or(a.get_long_help()).map(|h| h.to_string());
                if help.is_none_or(|h| h.trim().is_empty()) {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        walk(&cmd, "espd", &mut missing);
        assert!(
            missing.is_empty(),
            "arguments without help text: {missing:#?}"
        );
    }

    /// The man pages come out of the same tree: one per visible subcommand, each a roff page.
    #[test]
    fn man_pages_are_written() {
        let dir = std::env::temp_dir().join(format!("espd-man-{}", std::process::id()));
        man_pages(&dir).unwrap();
        let page = std::fs::read_to_string(dir.join("espd-run.1")).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        assert!(page.contains("config"), "{page}");
        assert!(dir.join("espd.1").exists() && dir.join("espd-ctl.1").exists());
        assert!(
            !dir.join("espd-traffic.1").exists(),
            "hidden subcommand got a page"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every shell's script comes out of the same tree and names the subcommands.
    #[test]
    fn completions_for_every_shell() {
        use clap::ValueEnum;
        for shell in clap_complete::Shell::value_variants() {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "espd", &mut script);
            let text = String::from_utf8(script).unwrap();
            assert!(
                text.contains("check-config") && text.contains("log-format"),
                "{shell}: {text}"
            );
        }
    }
}
