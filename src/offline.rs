//! The offline subcommands, which touch no interface: `espd pcap` (the exact pipeline over a
//! pcap or pcapng file, written out as classic pcap at the input's timestamp resolution, for
//! debugging and black-box tests) and `espd check-config`; their arguments
//! ([`PcapArgs`], [`CheckConfigArgs`]) live here.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use crossbeam_queue::ArrayQueue;
use serde::Serialize;

use crate::config::Config;
use crate::datapath::mem::Frame;
use crate::datapath::{Action, CoreStats, DropReason, Pipeline};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    /// Plaintext frames from the protected side, encapsulated into ESP.
    Outbound,
    /// ESP frames from the unprotected side, decapsulated.
    Inbound,
}

/// JSON summary of an offline run.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub direction: &'static str,
    pub frames_in: u64,
    pub frames_out: u64,
    pub icmp_errors: u64,
    pub punted: u64,
    pub dropped: u64,
    /// Drops by Windows code, e.g. `"13913": 2`.
    pub drops_by_code: BTreeMap<String, u64>,
    /// Drops by espd reason, e.g. `"replay": 2`.
    pub drops_by_reason: BTreeMap<&'static str, u64>,
    pub events: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{path}: {source}")]
    Pcap {
        path: String,
        source: crate::pcap::PcapError,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    SeqState(#[from] crate::control::seqstate::SeqStateError),
}

const BATCH: usize = 64;

/// Runs every frame of `input` through the pipeline in batches of 64 and writes the frames it
/// transmits (`Tx` and `TxBack`) to `output`.
pub fn run_pcap(
    cfg: &Config,
    dir: Direction,
    input: &Path,
    output: &Path,
    fresh_keys: bool,
) -> Result<Summary, OfflineError> {
    fn io_err(p: &Path) -> impl FnOnce(std::io::Error) -> OfflineError + '_ {
        move |e| OfflineError::Io {
            path: p.display().to_string(),
            source: e,
        }
    }
    let f = File::open(input).map_err(io_err(input))?;
    let trace = crate::pcap::read_trace(BufReader::new(f)).map_err(|e| OfflineError::Pcap {
        path: input.display().to_string(),
        source: e,
    })?;
    let records = trace.records;
    let now = crate::now_ns();
    let dp = cfg.build_dataplane(now)?;
    // Encrypting reuses no nonce of an earlier run: static SAs resume from the state file.
    let mut seqs = match dir {
        Direction::Outbound => Some(crate::control::seqstate::SeqStore::open(
            &cfg.state_file,
            cfg,
            &dp,
            fresh_keys,
        )?),
        Direction::Inbound => None,
    };
    let stats = CoreStats::default();
    let events = ArrayQueue::new(1024);
    let mut pipe = Pipeline::new(&dp, 0, &stats, &events, cfg.pipeline_config());
    let mut out: Vec<(std::time::Duration, Vec<u8>)> = Vec::new();
    let mut frames: Vec<Frame> = Vec::with_capacity(BATCH);
    let mut actions = [Action::Punt; BATCH];
    // Frames for the fragments of packets fragmented before encapsulation.
    let mut spare: Vec<Frame> = (0..4 * BATCH).map(|_| Frame::from_packet(&[])).collect();
    let mut extra: Vec<Frame> = Vec::with_capacity(4 * BATCH);
    for chunk in records.chunks(BATCH) {
        if let Some(s) = seqs.as_mut() {
            s.maintain().map_err(io_err(s.path()))?;
        }
        frames.clear();
        frames.extend(chunk.iter().map(|r| Frame::from_packet(&r.data)));
        let acts = &mut actions[..frames.len()];
        match dir {
            Direction::Outbound => {
                pipe.outbound_with(&mut frames, now, acts, &mut spare, &mut extra)
            }
            Direction::Inbound => pipe.inbound(&mut frames, now, acts),
        }
        for ((f, a), r) in frames.iter().zip(acts.iter()).zip(chunk) {
            if matches!(a, Action::Tx | Action::TxBack) {
                out.push((r.ts, f.bytes().to_vec()));
            }
        }
        // Fragments go out after the batch, as `espd run` sends them, stamped with its end.
        if let Some(r) = chunk.last() {
            for f in extra.drain(..) {
                out.push((r.ts, f.bytes().to_vec()));
                spare.push(f);
            }
        }
    }
    let of = File::create(output).map_err(io_err(output))?;
    // The output keeps the input's timestamp resolution (nanosecond pcap in, nanosecond out).
    crate::pcap::write_trace(
        BufWriter::new(of),
        trace.resolution,
        out.iter().map(|(t, d)| (*t, d.as_slice())),
    )
    .map_err(io_err(output))?;
    let mut ev = Vec::new();
    while let Some(e) = events.pop() {
        ev.push(format!("{:?} {:?} spi={:#x}", e.kind, e.direction, e.spi));
    }
    let mut by_reason = BTreeMap::new();
    for r in DropReason::ALL {
        let n = stats.drops_of(r);
        if n > 0 {
            by_reason.insert(r.name(), n);
        }
    }
    Ok(Summary {
        direction: match dir {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        },
        frames_in: records.len() as u64,
        frames_out: out.len() as u64,
        icmp_errors: stats.icmp_sent.get(),
        punted: stats.punted.get(),
        dropped: by_reason.values().sum(),
        drops_by_code: stats
            .drops_by_code()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        drops_by_reason: by_reason,
        events: ev,
    })
}

// The arguments of `espd check-config` (its help text is the subcommand's doc comment in main.rs).
#[derive(clap::Args)]
pub struct CheckConfigArgs {
    /// The TOML configuration to check.
    pub file: PathBuf,
}

/// `espd check-config`: loads the config, builds its dataplane and prints a one-line summary.
pub fn check_config(a: CheckConfigArgs) -> anyhow::Result<()> {
    let file = a.file;
    let c = Config::load_checked(&file)?;
    c.build_dataplane(crate::now_ns())?;
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

// The arguments of `espd pcap` (its help text is the subcommand's doc comment in main.rs).
#[derive(clap::Args)]
pub struct PcapArgs {
    /// The gateway configuration whose SAs and policies the pipeline uses.
    #[arg(long)]
    pub config: PathBuf,
    /// Which side the frames arrive on: outbound (plaintext from the LAN, encrypted) or
    /// inbound (ESP from the WAN, decrypted).
    #[arg(long, value_enum)]
    pub direction: Direction,
    /// The capture to read (Ethernet frames).
    pub input: PathBuf,
    /// Where to write the frames the pipeline transmits (pcap).
    pub output: PathBuf,
    /// Static outbound SAs with no saved sequence state start at 1 (new keys only).
    #[arg(long)]
    pub fresh_keys: bool,
}

/// `espd pcap`: [`run_pcap`], then its summary as pretty JSON.
pub fn pcap(a: PcapArgs) -> anyhow::Result<()> {
    let c = Config::load(&a.config)?;
    let summary = run_pcap(&c, a.direction, &a.input, &a.output, a.fresh_keys)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
