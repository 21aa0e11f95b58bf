//! `espd run`: the gateway daemon. Starts the XDP programs and one worker per configured core,
//! resolves next-hop MAC addresses from the kernel's neighbour table ([`l2`]), runs the control
//! thread, prints statistics, and on SIGINT/SIGTERM stops the workers and detaches its programs.
//! [`run`] reads as its steps: check the setup, attach XDP, build the dataplane, start the
//! workers, start control (socket) and metrics, tell systemd it is ready ([`notify`]), wait,
//! tear down. SIGHUP re-reads the config and applies what changed (`control::reload`).
//! Its arguments: [`cli`].
//!
//! Start-up errors are one line each and leave nothing attached (the programs are BPF links
//! owned by this process; dropping them, or the process dying, detaches them).

pub mod cli;
pub mod l2;
pub mod notify;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use serde::Serialize;

use crate::config::{Config, XdpMode};
use crate::control::Control;
use crate::control::api::ApiMsg;
use crate::control::metrics::MetricsSource;
use crate::control::seqstate::SeqStore;
use crate::datapath::worker::{self, Ready, WorkerSpec};
use crate::datapath::xdp::{XdpProgram, XdpStats};
use crate::datapath::xsk::{Copy, XskError};
use crate::datapath::{CoreStats, Dataplane, DropReason, SaEvent};

use l2::L2;

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Print a statistics line every second.
    pub stats: bool,
    /// Forward without ESP (the I/O ceiling baseline).
    pub null_crypto: bool,
    /// Override the config's XDP mode.
    pub xdp_mode: Option<XdpMode>,
    pub copy: Copy,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    /// Static outbound SAs without saved sequence state start at 1 (their keys are new).
    pub fresh_keys: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    L2(#[from] l2::L2Error),
    #[error("espd run needs root (CAP_NET_ADMIN and CAP_BPF) to attach XDP programs")]
    NotRoot,
    #[error("interface {0} does not exist (in this network namespace)")]
    NoInterface(String),
    #[error(
        "interface {iface} has no rx queue {queue} (it has {count}); create it with more queues or change interfaces.*.queues"
    )]
    NoQueue {
        iface: String,
        queue: u32,
        count: u32,
    },
    #[error("interfaces.{0}.next_hop: needed by `espd run` to find the next hop's MAC address")]
    NoNextHop(&'static str),
    #[error(transparent)]
    Xdp(#[from] crate::datapath::xdp::XdpError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("worker {worker}: {source}")]
    Xsk {
        worker: usize,
        #[source]
        source: XskError,
    },
    #[error("{0}: {1}")]
    Socket(String, std::io::Error),
    #[error("worker {0} did not start")]
    WorkerLost(usize),
    #[error(transparent)]
    SeqState(#[from] crate::control::seqstate::SeqStateError),
    /// The built-in IKE could not start (e.g. a port already bound).
    #[error("{0}")]
    Ike(String),
}

/// What `espd run` prints (as JSON) when it stops.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub workers: usize,
    pub zero_copy: bool,
    pub null_crypto: bool,
    /// The workers' idle strategy (`dataplane.idle`) and spin time (0 with `sleep`).
    pub idle: &'static str,
    pub spin_us: u32,
    /// Times a worker went to sleep with both rx rings empty.
    pub idle_sleeps: u64,
    /// `dataplane.coalesce_us` (0: off) and the timed sleeps it took.
    pub coalesce_us: u32,
    pub coalesced_sleeps: u64,
    pub seconds: f64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub punted: u64,
    pub bypassed: u64,
    pub prefragmented: u64,
    pub icmp_sent: u64,
    pub tx_ring_full: u64,
    pub kernel_rx_dropped: u64,
    pub drops_by_code: BTreeMap<String, u64>,
    pub drops_by_reason: BTreeMap<&'static str, u64>,
    pub soft_events: u64,
    pub hard_events: u64,
    pub rekeys: u64,
    pub events_by_code: BTreeMap<String, u64>,
    pub events_dropped: u64,
    pub xdp_plain: XdpStats,
    pub xdp_cipher: XdpStats,
}

fn rx_queues(iface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(0)
}

fn check_setup(cfg: &Config) -> Result<(), DaemonError> {
    if !crate::sys::is_root() {
        return Err(DaemonError::NotRoot);
    }
    for i in [&cfg.plain, &cfg.cipher] {
        if !Path::new(&format!("/sys/class/net/{}", i.name)).exists() {
            return Err(DaemonError::NoInterface(i.name.clone()));
        }
        let count = rx_queues(&i.name);
        for &q in &i.queues {
            if q >= count {
                return Err(DaemonError::NoQueue {
                    iface: i.name.clone(),
                    queue: q,
                    count,
                });
            }
        }
    }
    if cfg.plain.next_hop.is_none() && cfg.plain.next_hop_mac.is_none() {
        return Err(DaemonError::NoNextHop("plain"));
    }
    Ok(())
}

/// Runs the gateway until SIGINT/SIGTERM (or `opts.duration`).
pub fn run(cfg: &Config, opts: &RunOptions) -> Result<Summary, DaemonError> {
    check_setup(cfg)?;
    let mut xdp = attach_xdp(cfg, opts)?;
    let (dp, seqs) = build_dataplane(cfg, opts)?;
    let shared = Shared::new(cfg, dp)?;
    let workers = start_workers(cfg, opts, &shared, &mut xdp)?;

    // The control thread is this one: it owns `control` and runs it in `wait`.
    let mut control = crate::control::Control::new(cfg, shared.dp.clone());
    control.attach_core_stats(shared.stats.clone());
    control.set_reload_notifier(notify::Notifier::from_env());
    control.attach_capture(shared.capture.clone());
    let mut threads = Vec::new();
    let (seq_tx, seq_rx) = std::sync::mpsc::channel();
    control.set_seq_tracker(seq_tx);
    threads.push(spawn_seq_saver(seqs, seq_rx, shared.stop.clone()));
    let services = (|| {
        let (api_tx, api_rx, socket) = start_control_socket(cfg, &shared)?;
        threads.extend(socket);
        threads.extend(start_metrics(cfg, &control, &shared)?);
        let ike = start_ike(cfg, &mut control, api_tx, &shared)?;
        Ok((api_rx, ike))
    })();
    let (api_rx, ike) = match services {
        Ok(s) => s,
        Err(e) => {
            // Nothing half-started stays behind: stop and join what runs already.
            shared.stop.store(true, Ordering::Release);
            for h in workers.handles.into_iter().chain(threads) {
                let _ = h.join();
            }
            return Err(e);
        }
    };

    let running = Running {
        xdp,
        shared,
        workers,
        threads,
        start: Instant::now(),
    };
    // Workers run with their sockets registered, control socket and metrics listen.
    let mut notifier = notify::Notifier::from_env();
    notifier.ready();
    notifier.status(&status_line(&control));
    wait(&mut control, &api_rx, &running, opts, &mut notifier);
    notifier.stopping();
    stop_ike(ike, &mut control, &api_rx, &running);
    Ok(tear_down(control, running, cfg, opts))
}

/// The XDP programs on both interfaces (BPF links: dropping them detaches them).
struct Xdp {
    plain: XdpProgram,
    cipher: XdpProgram,
    native: bool,
}

/// Attaches the XDP programs (native unless the config or `--xdp-mode` says generic); they
/// pass everything to the kernel until the workers' sockets are registered.
fn attach_xdp(cfg: &Config, opts: &RunOptions) -> Result<Xdp, DaemonError> {
    let native = opts.xdp_mode.unwrap_or(cfg.xdp_mode) == XdpMode::Native;
    let local: Vec<IpAddr> = cfg
        .plain
        .addresses
        .iter()
        .chain(&cfg.cipher.addresses)
        .copied()
        .collect();
    let plain = XdpProgram::attach(&cfg.plain.name, false, native, &local)?;
    let cipher = XdpProgram::attach(&cfg.cipher.name, true, native, &local)?;
    Ok(Xdp {
        plain,
        cipher,
        native,
    })
}

/// The SA table, SPD and tunnels from the config, and the sequence state of its static
/// outbound SAs.
fn build_dataplane(
    cfg: &Config,
    opts: &RunOptions,
) -> Result<(Arc<Dataplane>, SeqStore), DaemonError> {
    let dp = Arc::new(
        cfg.build_dataplane(crate::now_ns())
            .map_err(|e| DaemonError::NoInterface(e.to_string()))?,
    );
    // Static outbound SAs resume after their saved sequence numbers before any worker runs.
    let seqs = SeqStore::open(&cfg.state_file, cfg, &dp, opts.fresh_keys)?;
    Ok((dp, seqs))
}

/// What the workers, the control thread and the metrics share.
struct Shared {
    dp: Arc<Dataplane>,
    stats: Arc<[CoreStats]>,
    events: Arc<ArrayQueue<SaEvent>>,
    /// Set by SIGINT/SIGTERM, or by the daemon when it stops.
    stop: Arc<AtomicBool>,
    /// Set by SIGHUP: re-read the config.
    reload: Arc<AtomicBool>,
    l2: L2,
    /// `espd ctl capture`'s rings, one per worker.
    capture: Arc<crate::datapath::capture::Capture>,
}

impl Shared {
    fn new(cfg: &Config, dp: Arc<Dataplane>) -> Result<Shared, DaemonError> {
        let stats: Arc<[CoreStats]> = (0..cfg.workers).map(|_| CoreStats::default()).collect();
        let events: Arc<ArrayQueue<SaEvent>> = Arc::new(ArrayQueue::new(4096));
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let _ = signal_hook::flag::register(sig, stop.clone());
        }
        let reload = Arc::new(AtomicBool::new(false));
        let _ = signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone());
        Ok(Shared {
            dp,
            stats,
            events,
            stop: stop.clone(),
            reload,
            l2: L2::start(cfg)?,
            // A capture ends when the daemon stops.
            capture: Arc::new(
                crate::datapath::capture::Capture::new(
                    cfg.workers,
                    &cfg.plain.name,
                    &cfg.cipher.name,
                )
                .stops_with(stop),
            ),
        })
    }
}

/// The worker threads, running and registered in both XSKMAPs.
struct Workers {
    handles: Vec<JoinHandle<()>>,
    /// Every socket got zero-copy mode.
    zero_copy: bool,
}

/// Starts one worker per configured core and registers its sockets with both XDP programs
/// once it reports ready. On any failure the workers started so far are stopped and joined.
fn start_workers(
    cfg: &Config,
    opts: &RunOptions,
    shared: &Shared,
    xdp: &mut Xdp,
) -> Result<Workers, DaemonError> {
    let (tx, rx) = std::sync::mpsc::channel::<Result<Ready, (usize, XskError)>>();
    let mut handles = Vec::new();
    for w in 0..cfg.workers {
        let spec = WorkerSpec {
            id: w,
            core: Some(cfg.cores[w]),
            plain: cfg.plain.name.clone(),
            plain_queue: cfg.plain.queues[w],
            cipher: cfg.cipher.name.clone(),
            cipher_queue: cfg.cipher.queues[w],
            copy: opts.copy,
            null_crypto: opts.null_crypto,
            dp: shared.dp.clone(),
            stats: shared.stats.clone(),
            events: shared.events.clone(),
            pcfg: cfg.pipeline_config(),
            l2: shared.l2.state.clone(),
            stop: shared.stop.clone(),
            idle: cfg.idle,
            capture: shared.capture.clone(),
        };
        let tx = tx.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("espd-w{w}"))
                .spawn(move || worker::run(spec, tx))
                .expect("spawn"),
        );
    }
    drop(tx);
    let mut zero_copy = true;
    let mut failure = None;
    for _ in 0..cfg.workers {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(r)) => {
                zero_copy &= r.zero_copy;
                let w = r.id;
                // Duplicates of the worker's sockets: valid whatever the worker does meanwhile;
                // closed here once the XSKMAP holds the sockets.
                use std::os::fd::AsFd;
                let res = xdp
                    .plain
                    .register(cfg.plain.queues[w], r.plain_fd.as_fd())
                    .and_then(|_| {
                        xdp.cipher
                            .register(cfg.cipher.queues[w], r.cipher_fd.as_fd())
                    });
                if let Err(e) = res {
                    failure = Some(DaemonError::from(e));
                }
            }
            Ok(Err((worker, source))) => failure = Some(DaemonError::Xsk { worker, source }),
            Err(_) => failure = Some(DaemonError::WorkerLost(0)),
        }
        if failure.is_some() {
            break;
        }
    }
    if let Some(e) = failure {
        shared.stop.store(true, Ordering::Release);
        for h in handles {
            let _ = h.join();
        }
        return Err(e);
    }
    tracing::info!(
        workers = cfg.workers,
        zero_copy,
        xdp = if xdp.native { "native" } else { "generic" },
        idle = %cfg.idle,
        "espd running on {} (plain) and {} (cipher)",
        cfg.plain.name,
        cfg.cipher.name
    );
    Ok(Workers { handles, zero_copy })
}

/// The control socket (on unless `control.socket = ""`): its thread, and the channel on which it hands
/// requests to the control thread.
#[allow(clippy::type_complexity)]
fn start_control_socket(
    cfg: &Config,
    shared: &Shared,
) -> Result<(Sender<ApiMsg>, Receiver<ApiMsg>, Option<JoinHandle<()>>), DaemonError> {
    let (api_tx, api_rx) = std::sync::mpsc::channel::<ApiMsg>();
    let mut socket = None;
    if let Some(path) = &cfg.control.socket {
        socket = Some(
            crate::control::api::serve(path, api_tx.clone(), shared.stop.clone())
                .map_err(|e| DaemonError::Socket(path.display().to_string(), e))?,
        );
    }
    Ok((api_tx, api_rx, socket))
}

/// The built-in IKE (when `[[ike.peers]]` are configured): its sockets and thread, which reach
/// the control thread through `api_tx` like the control socket does.
fn start_ike(
    cfg: &Config,
    control: &mut Control,
    api_tx: Sender<ApiMsg>,
    shared: &Shared,
) -> Result<Option<crate::ike::driver::IkeThread>, DaemonError> {
    if cfg.ike.is_empty() {
        return Ok(None);
    }
    crate::ike::driver::start(
        cfg.ike.clone(),
        cfg.ike_limits,
        control,
        crate::control::ControlHandle::new(api_tx),
        shared.stop.clone(),
    )
    .map(Some)
    .map_err(DaemonError::Ike)
}

/// After `stop`: the IKE thread sends its DELETEs and removes its SAs through the control
/// thread, so the control thread keeps serving until it is done (at most 3 s).
fn stop_ike(
    ike: Option<crate::ike::driver::IkeThread>,
    control: &mut Control,
    api_rx: &Receiver<ApiMsg>,
    r: &Running,
) {
    let Some(ike) = ike else {
        return;
    };
    r.shared.stop.store(true, Ordering::Release);
    let t = Instant::now();
    while !ike.is_finished() && t.elapsed() < Duration::from_secs(3) {
        if let Ok(msg) = api_rx.recv_timeout(Duration::from_millis(20)) {
            crate::control::api::deliver(control, msg, crate::now_ns());
        }
    }
    if ike.is_finished() {
        ike.join();
    }
}

/// The Prometheus endpoint (when configured).
fn start_metrics(
    cfg: &Config,
    control: &Control,
    shared: &Shared,
) -> Result<Option<JoinHandle<()>>, DaemonError> {
    let Some(addr) = cfg.control.metrics else {
        return Ok(None);
    };
    let src = MetricsSource {
        stats: shared.stats.clone(),
        dp: shared.dp.clone(),
        counters: control.counters.clone(),
        sa_limit: cfg.control.metrics_sa_limit,
    };
    crate::control::metrics::serve(addr, src, shared.stop.clone())
        .map(Some)
        .map_err(|e| DaemonError::Socket(addr.to_string(), e))
}

/// Everything [`run`] started, for [`wait`] and [`tear_down`].
struct Running {
    xdp: Xdp,
    shared: Shared,
    workers: Workers,
    /// Sequence saver, control socket, metrics.
    threads: Vec<JoinHandle<()>>,
    start: Instant,
}

/// What systemd shows for the daemon (`STATUS=`).
fn status_line(control: &Control) -> String {
    let s = control.stats();
    format!(
        "{} tunnel(s), {} SA(s), {} polic(ies), {} main mode(s)",
        s.tunnels, s.sas, s.policies, s.main_modes
    )
}

/// The control thread's loop until SIGINT/SIGTERM or `opts.duration`: control requests,
/// control ticks every 20 ms, reloads on SIGHUP, next-hop refreshes, systemd's status every
/// 5 s (when it changed), the `--stats` line every second.
fn wait(
    control: &mut Control,
    api_rx: &Receiver<ApiMsg>,
    r: &Running,
    opts: &RunOptions,
    notifier: &mut notify::Notifier,
) {
    let (stats, events, stop, start) = (&r.shared.stats, &r.shared.events, &r.shared.stop, r.start);
    let mut last_status = Instant::now();
    let mut last_print = Instant::now();
    let mut last_neigh = Instant::now();
    let mut last_tick = Instant::now();
    let mut known = false;
    let mut prev = (0u64, 0u64, 0u64);
    while !stop.load(Ordering::Acquire) {
        if let Ok(msg) = api_rx.recv_timeout(Duration::from_millis(20)) {
            crate::control::api::deliver(control, msg, crate::now_ns());
        }
        if last_tick.elapsed() >= Duration::from_millis(20) {
            control.tick(crate::now_ns(), events);
            last_tick = Instant::now();
        }
        if r.shared.reload.swap(false, Ordering::AcqRel) {
            // Logged (and told to systemd) by `reload`; a refused reload changes nothing.
            let _ = control.reload(None, crate::now_ns());
            notifier.status(&status_line(control));
        }
        if last_status.elapsed() >= Duration::from_secs(5) {
            notifier.status(&status_line(control));
            last_status = Instant::now();
        }
        let every = if known {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(200)
        };
        if last_neigh.elapsed() >= every {
            known = r.shared.l2.refresh();
            last_neigh = Instant::now();
        }
        if opts.stats && last_print.elapsed() >= Duration::from_secs(1) {
            let (rx_p, tx_p, drops) = totals(stats);
            let dt = last_print.elapsed().as_secs_f64();
            // A closed stdout (a pipe whose reader left) must not stop the gateway.
            let _ = writeln!(
                std::io::stdout(),
                "{{\"t\":{:.1},\"rx_pps\":{:.0},\"tx_pps\":{:.0},\"drops_per_s\":{:.0},\"rx\":{rx_p},\"tx\":{tx_p},\"drops\":{drops}}}",
                start.elapsed().as_secs_f64(),
                (rx_p - prev.0) as f64 / dt,
                (tx_p - prev.1) as f64 / dt,
                (drops - prev.2) as f64 / dt
            );
            prev = (rx_p, tx_p, drops);
            last_print = Instant::now();
        }
        if opts.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
    }
}

/// A last control tick, then stops and joins every thread, detaches the XDP programs and
/// sums up the run.
fn tear_down(mut control: Control, r: Running, cfg: &Config, opts: &RunOptions) -> Summary {
    control.tick(crate::now_ns(), &r.shared.events);
    let cc = control
        .counters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (soft, hard) = (
        cc.events_by_name
            .get("sa_soft_expired")
            .copied()
            .unwrap_or(0),
        cc.events_by_name
            .get("sa_hard_expired")
            .copied()
            .unwrap_or(0),
    );
    r.shared.stop.store(true, Ordering::Release);
    for h in r.workers.handles.into_iter().chain(r.threads) {
        let _ = h.join();
    }
    let mut s = Summary {
        rekeys: cc.rekeys,
        events_by_code: cc
            .events_by_code
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        workers: cfg.workers,
        zero_copy: r.workers.zero_copy,
        null_crypto: opts.null_crypto,
        idle: cfg.idle.name(),
        spin_us: cfg.idle.spin_us,
        coalesce_us: cfg.idle.coalesce_us,
        seconds: r.start.elapsed().as_secs_f64(),
        soft_events: soft,
        hard_events: hard,
        xdp_plain: r.xdp.plain.stats(),
        xdp_cipher: r.xdp.cipher.stats(),
        ..Default::default()
    };
    s.add_cores(&r.shared.stats);
    drop(r.xdp);
    s
}

impl Summary {
    /// Adds the workers' counters.
    fn add_cores(&mut self, stats: &[CoreStats]) {
        let s = self;
        for c in stats.iter() {
            s.rx_packets += c.rx_packets();
            s.rx_bytes += c.rx_bytes();
            s.tx_packets += c.tx_packets();
            s.tx_bytes += c.tx_bytes();
            s.punted += c.punted.get();
            s.bypassed += c.bypassed.get();
            s.prefragmented += c.prefragmented.get();
            s.icmp_sent += c.icmp_sent.get();
            s.tx_ring_full += c.tx_ring_full.get();
            s.idle_sleeps += c.idle_sleeps.get();
            s.coalesced_sleeps += c.coalesced_sleeps.get();
            s.kernel_rx_dropped += c.kernel_rx_dropped.get();
            s.events_dropped += c.events_dropped.get();
            for r in DropReason::ALL {
                let n = c.drops_of(r);
                if n > 0 {
                    *s.drops_by_reason.entry(r.name()).or_insert(0) += n;
                    *s.drops_by_code
                        .entry(r.code().code.to_string())
                        .or_insert(0) += n;
                }
            }
        }
    }
}

/// Extends the saved sequence marks of static outbound SAs every 20 ms, on a thread of its
/// own so that a slow control request cannot hold the workers at their caps; takes on the
/// static outbound SAs a reload adds (`track`: saved before they are published).
fn spawn_seq_saver(
    mut seqs: SeqStore,
    track: Receiver<crate::control::reload::SeqTrack>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("espd-seq".into())
        .spawn(move || {
            let mut failing = false;
            while !stop.load(Ordering::Acquire) {
                while let Ok(t) = track.try_recv() {
                    let r = seqs
                        .track(t.spi, &t.keymat, t.seq)
                        .map_err(|e| e.to_string());
                    let _ = t.reply.send(r);
                }
                if seqs.is_empty() {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                match seqs.maintain() {
                    // Workers stop at the saved mark (counted as seq_unsaved) until it works.
                    Err(e) if !failing => {
                        tracing::error!(
                            "{}: cannot save sequence state: {e}",
                            seqs.path().display()
                        );
                        failing = true;
                    }
                    Err(_) => {}
                    Ok(_) if failing => {
                        tracing::info!("{}: sequence state saved again", seqs.path().display());
                        failing = false;
                    }
                    Ok(_) => {}
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .expect("spawn")
}

fn totals(stats: &[CoreStats]) -> (u64, u64, u64) {
    stats.iter().fold((0, 0, 0), |(r, t, d), c| {
        (
            r + c.rx_packets(),
            t + c.tx_packets(),
            d + c.drops.iter().map(|x| x.get()).sum::<u64>(),
        )
    })
}
