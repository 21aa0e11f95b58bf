//! `espd run`'s command line: its arguments ([`RunArgs`]) and the entry point that loads the
//! config, runs the daemon and prints its JSON summary. Also the `--xdp-mode` values
//! ([`XdpModeArg`]) that the rig's subcommands share.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, XdpMode};
use crate::datapath::xsk::Copy;

/// `--xdp-mode native|generic`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum XdpModeArg {
    Native,
    Generic,
}

impl XdpModeArg {
    pub fn mode(self) -> XdpMode {
        match self {
            XdpModeArg::Native => XdpMode::Native,
            XdpModeArg::Generic => XdpMode::Generic,
        }
    }

    /// The name the rig writes into gateway configs.
    pub fn name(self) -> &'static str {
        match self {
            XdpModeArg::Native => "native",
            XdpModeArg::Generic => "generic",
        }
    }
}

// The arguments of `espd run` (its help text is the subcommand's doc comment in main.rs).
#[derive(clap::Args)]
pub struct RunArgs {
    /// The gateway's TOML configuration (interfaces, workers, tunnels, policies, SAs).
    #[arg(long)]
    pub config: PathBuf,
    /// Print a JSON line of statistics every second.
    #[arg(long)]
    pub stats: bool,
    /// Forward without ESP (the I/O ceiling baseline for benchmarks).
    #[arg(long)]
    pub null_crypto: bool,
    /// Override the config's XDP mode.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
    /// Force copy mode (default: zero-copy when the driver supports it).
    #[arg(long)]
    pub copy: bool,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Static outbound SAs with no saved sequence state start at 1: say this only when
    /// their keys are new (otherwise their GCM nonces would repeat).
    #[arg(long)]
    pub fresh_keys: bool,
}

/// `espd run`: runs the gateway until SIGINT/SIGTERM (or `--duration`), then prints its summary.
pub fn run(a: RunArgs) -> anyhow::Result<()> {
    // Files holding keys must be 0600 and root-owned, or the daemon does not start.
    let c = Config::load_checked(&a.config)?;
    let opts = super::RunOptions {
        stats: a.stats,
        null_crypto: a.null_crypto,
        xdp_mode: a.xdp_mode.map(XdpModeArg::mode),
        copy: if a.copy { Copy::Force } else { Copy::Auto },
        duration: a.duration.map(Duration::from_secs_f64),
        fresh_keys: a.fresh_keys,
    };
    let summary = super::run(&c, &opts)?;
    // The summary is best effort: a closed stdout (a pipe whose reader left) is not an error.
    let _ = writeln!(std::io::stdout(), "{}", serde_json::to_string(&summary)?);
    Ok(())
}
