//! `espd bench`: the rig measured the way the field measures, against baselines, in one run.
//!
//! Systems, same rig and traffic: `espd` (ESP, AES-GCM-128), `null` (espd with crypto off:
//! plain AF_XDP forwarding, the I/O ceiling), `kernel` (plain kernel routing through the
//! gateway namespaces, no IPsec) and `strongswan` (kernel-libipsec; reported as skipped when
//! charon is not installed: the bench installs nothing). For each:
//! - round trips (request/response through both gateways, like netperf UDP_RR or `ping`),
//!   p50/p90/p99/p99.9, with `ping` on the same rig alongside when it is installed;
//! - CPU per forwarded packet at fixed offered loads below saturation (the gateway processes'
//!   utime+stime; the machine's busy time minus the load tools' for every system);
//! - RFC 2544 throughput: the no-drop rate (NDR) and the partial-drop rate (PDR, ≤ 0.5 % loss)
//!   per size, found by a search over offered rates (short trials first, then full-length
//!   trials, after FD.io CSIT's MLRsearch), and the flood figure as "maximum delivered".
//!
//! Every figure is measured `runs` times (default 3), systems interleaved (run 1: every system,
//! run 2: every system, ...), and reported as the median with its min–max spread. Then espd
//! under a fixed load with a rekey every `rekey_ms`, next to the run without. Writes
//! report.json, report.txt and the plots throughput.svg, latency.svg and cpu.svg;
//! `--compare old.json` flags the changes bigger than the spread.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::procs::{Proc, start_gateways};
use super::{Rig, RigSpec, ns};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Full trial duration: the final RFC 2544 trials, the flood, the CPU window.
    pub seconds: f64,
    /// Duration of the search's first, shorter trials.
    pub trial_seconds: f64,
    /// The search stops when a bound's interval is narrower than this fraction of its upper end.
    pub precision: f64,
    /// Measurements of every figure (median and min–max reported).
    pub runs: usize,
    pub sizes: Vec<usize>,
    pub systems: Vec<String>,
    /// Offered loads (pps) and sizes of the CPU-per-packet points.
    pub cpu_loads: Vec<u64>,
    pub cpu_sizes: Vec<usize>,
    /// Round trips per run, the gap between requests (0: back to back) and how many in flight.
    pub rtt_count: u64,
    pub rtt_interval_us: u64,
    pub rtt_outstanding: u32,
    pub rekey_ms: u64,
    pub rekey_pps: u64,
    /// Skip the throughput search (RTT and CPU only).
    pub no_throughput: bool,
    pub out: PathBuf,
    pub compare: Option<PathBuf>,
    /// TOML lines added to the `[dataplane]` section of the espd and null gateways (e.g.
    /// `coalesce_us = 200`); empty: the rig's defaults.
    pub dataplane: String,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            seconds: 4.0,
            trial_seconds: 1.0,
            precision: 0.05,
            runs: 3,
            sizes: vec![64, 512, 1372, 1400, 0],
            systems: vec![
                "espd".into(),
                "null".into(),
                "kernel".into(),
                "strongswan".into(),
            ],
            cpu_loads: vec![10_000, 20_000, 50_000],
            cpu_sizes: vec![64, 1400],
            rtt_count: 2000,
            rtt_interval_us: 2000,
            rtt_outstanding: 1,
            rekey_ms: 100,
            rekey_pps: 10_000,
            no_throughput: false,
            out: PathBuf::from("bench-out"),
            compare: None,
            dataplane: String::new(),
        }
    }
}

/// The partial-drop rate's loss limit (RFC 2544 throughput allows none: that is the NDR).
pub const PDR_LOSS: f64 = 0.005;
/// How long after a trial's sender stopped its packets still count as forwarded: RFC 2544
/// waits 2 s after a 60 s trial; shorter trials get the same 1/30 share, at least 0.1 s (the
/// bench's own stop signal takes a few ms). A system that queues without bound would
/// otherwise "pass" any rate by delivering it seconds later.
pub fn grace(seconds: f64) -> f64 {
    (seconds / 30.0).clamp(0.1, 2.0)
}

/// A trial offered its rate when the sender sent at least this fraction of it.
const OFFERED_OK: f64 = 0.97;
/// /proc/PID/stat and /proc/stat count in USER_HZ ticks, 100 per second on Linux.
const TICKS_PER_S: f64 = 100.0;

fn size_name(s: usize) -> String {
    if s == 0 {
        "imix".into()
    } else {
        format!("{s}")
    }
}

fn json_line(s: &str) -> Value {
    s.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Median, min and max of per-run values (NaN when a run produced none).
pub fn stat(runs: &[f64]) -> Value {
    let mut v: Vec<f64> = runs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    json!({ "median": median, "min": v[0], "max": v[n - 1], "runs": runs })
}

/// Nearest-rank quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// One criterion of the rate search: the highest rate seen to pass and the lowest seen to
/// fail, in this phase; until one is known, the rate to try for it (`guess_*`) and how far
/// the next guess moves if that one is wrong (`step`, doubled each time).
#[derive(Clone, Copy, Debug)]
struct Bound {
    lo: Option<f64>,
    hi: Option<f64>,
    guess_lo: f64,
    guess_hi: f64,
    step: f64,
}

/// The search for the NDR (loss 0) and the PDR (loss ≤ `PDR_LOSS`) over offered rates, in
/// phases of growing trial duration (MLRsearch's idea: short trials narrow the interval cheaply,
/// full-length trials then re-check its ends and re-narrow where they moved). Every trial
/// counts for both criteria. Pure logic: the caller runs the trials.
#[derive(Clone, Debug)]
pub struct RateSearch {
    crit: [Bound; 2],
    max_rate: f64,
    precision: f64,
}

impl RateSearch {
    /// The first phase: rate 0 passes by definition; the first try is `guess` (≤ `max_rate`,
    /// the most the sender can offer).
    pub fn new(max_rate: f64, guess: f64, precision: f64) -> RateSearch {
        let g = guess.clamp(1.0, max_rate.max(1.0));
        let b = Bound {
            lo: Some(0.0),
            hi: None,
            guess_lo: 0.0,
            guess_hi: g,
            step: g / 2.0,
        };
        RateSearch {
            crit: [b; 2],
            max_rate: max_rate.max(1.0),
            precision,
        }
    }

    /// The next phase: this phase's bounds become guesses to re-check with longer trials.
    pub fn next_phase(&self) -> RateSearch {
        let mut s = self.clone();
        for c in s.crit.iter_mut() {
            let lo = c.lo.unwrap_or(0.0);
            let hi = c.hi.unwrap_or(self.max_rate);
            c.step = (hi - lo).max(self.precision * hi).max(1.0);
            c.guess_lo = lo;
            c.guess_hi = hi;
            c.lo = (lo <= 0.0).then_some(0.0);
            c.hi = None;
        }
        s
    }

    /// The lowest rate worth a trial.
    fn floor(&self) -> f64 {
        self.max_rate * 1e-3
    }

    /// The next rate to try, or None when both intervals are narrow enough.
    pub fn next(&self) -> Option<f64> {
        for c in &self.crit {
            let Some(lo) = c.lo else {
                return Some(c.guess_lo);
            };
            let Some(hi) = c.hi else {
                if lo >= self.max_rate {
                    continue;
                }
                return Some(c.guess_hi.min(self.max_rate));
            };
            // Down at the floor, "nothing passes" is the answer.
            if hi - lo > self.precision * hi && hi > self.floor() {
                return Some((lo + hi) / 2.0);
            }
        }
        None
    }

    /// A trial at `rate` lost `loss` (a fraction of what was offered).
    pub fn record(&mut self, rate: f64, loss: f64) {
        let floor = self.floor();
        for (i, c) in self.crit.iter_mut().enumerate() {
            let pass = if i == 0 {
                loss <= 0.0
            } else {
                loss <= PDR_LOSS
            };
            if pass {
                if c.lo.is_none_or(|l| rate > l) {
                    c.lo = Some(rate);
                }
                if c.hi.is_some_and(|h| h <= rate) {
                    // Noise: a pass above a failure; search upward again from here.
                    c.hi = None;
                    c.guess_hi = rate;
                }
                if c.hi.is_none() && rate >= c.guess_hi.min(self.max_rate) {
                    c.guess_hi = (rate + c.step).min(self.max_rate);
                    c.step *= 2.0;
                }
            } else {
                if c.hi.is_none_or(|h| rate < h) {
                    c.hi = Some(rate);
                }
                if c.lo.is_some_and(|l| l >= rate) {
                    // Noise: a failure below a pass; search downward again from here.
                    c.lo = None;
                    c.guess_lo = rate;
                }
                if c.lo.is_none() && rate <= c.guess_lo {
                    c.guess_lo = rate - c.step;
                    c.step *= 2.0;
                    if c.guess_lo < floor {
                        c.lo = Some(0.0);
                    }
                }
            }
        }
    }

    /// The NDR (criterion 0) or the PDR (1): the highest rate that passed in this phase.
    pub fn result(&self, i: usize) -> f64 {
        self.crit[i].lo.unwrap_or(0.0)
    }
}

/// A traffic tool that reports `ready` once bound, stopped with SIGTERM when the bench is
/// done with it (it then prints its report).
struct Tool {
    proc: Proc,
    lines: mpsc::Receiver<String>,
}

impl Tool {
    fn start(name: &str, netns: &str, args: &[&str]) -> anyhow::Result<Tool> {
        let mut proc = Proc::spawn(name, netns, args)?;
        let lines = proc.lines();
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l == "ready" => Ok(Tool { proc, lines }),
            _ => anyhow::bail!("{name} did not start: {}", proc.stderr_text().trim()),
        }
    }

    /// SIGTERM, then the report it prints.
    fn finish(mut self, timeout: Duration) -> Value {
        let _ = crate::sys::kill(self.proc.pid(), libc::SIGTERM);
        let end = Instant::now() + timeout;
        let mut last = Value::Null;
        while let Ok(l) = self
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                last = v;
            }
        }
        self.proc.stop(Duration::from_secs(1));
        last
    }
}

/// utime + stime of a process (all its threads), in ticks.
fn proc_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses: state is 3rd.
    let rest = &s[s.rfind(')')? + 1..];
    let v: Vec<&str> = rest.split_whitespace().collect();
    Some(v.get(11)?.parse::<u64>().ok()? + v.get(12)?.parse::<u64>().ok()?)
}

/// The machine's idle ticks (idle + iowait, summed over CPUs) and its number of CPUs. With
/// NO_HZ the kernel measures idle time from the idle loop's own timestamps (not by sampling ticks,
/// as it does user/system/softirq), so wall time × CPUs − idle is the busy time to the resolution
/// /proc/stat prints (one tick), however short the bursts of work: sampled busy ticks read 0 over
/// half a second of kernel routing at 5,000 pps on a CI machine whose tools used 100 ms.
fn machine_idle_ticks() -> Option<(u64, u32)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let cpus = s
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some((v.get(3)? + v.get(4)?, u32::try_from(cpus).ok()?.max(1)))
}

/// CPU counters at one instant.
struct CpuSample {
    at: Instant,
    gateways: Option<u64>,
    tools: Option<u64>,
    idle: Option<(u64, u32)>,
}

fn cpu_sample(gateways: &[u32], tools: &[u32]) -> CpuSample {
    let sum = |p: &[u32]| p.iter().map(|&p| proc_ticks(p)).sum::<Option<u64>>();
    CpuSample {
        at: Instant::now(),
        gateways: (!gateways.is_empty()).then(|| sum(gateways)).flatten(),
        tools: sum(tools),
        idle: machine_idle_ticks(),
    }
}

/// The measuring context of one bench run: the binary, a fresh flow id per trial (a sink
/// counts only its own trial's packets, never an earlier trial's still draining).
struct Ctx {
    exe: String,
    flow: std::cell::Cell<u32>,
}

/// Where a trial samples CPU: the gateway processes, after `warm` seconds, for `window`.
struct CpuProbe<'a> {
    gateways: &'a [u32],
    warm: f64,
    window: f64,
}

impl Ctx {
    /// One trial: a sink in host-b counting this trial's flow, a sender in host-a offering
    /// `pps` (0: as fast as it can) of `size`-byte IP packets for `seconds`. Loss is what the
    /// sink did not count, also after the sender stopped (a deep queue still delivers).
    fn trial(
        &self,
        size: usize,
        seconds: f64,
        pps: u64,
        cpu: Option<CpuProbe>,
    ) -> anyhow::Result<Value> {
        let flow = self.flow.get() + 1;
        self.flow.set(flow);
        let fl = flow.to_string();
        let sink = Tool::start(
            "sink",
            "host-b",
            &[
                &self.exe,
                "traffic",
                "sink",
                "--bind",
                "0.0.0.0:5001",
                "--flow",
                &fl,
                "--idle",
                "0.2",
                "--grace",
                &format!("{}", grace(seconds)),
                "--max",
                &format!("{}", seconds + 60.0),
            ],
        )?;
        let blast = Proc::spawn(
            "blast",
            "host-a",
            &[
                &self.exe,
                "traffic",
                "blast",
                "--dst",
                "198.51.100.2:5001",
                "--flow",
                &fl,
                "--size",
                &size.to_string(),
                "--seconds",
                &seconds.to_string(),
                "--pps",
                &pps.to_string(),
            ],
        )?;
        let mut cpu_window = None;
        if let Some(p) = &cpu {
            // The window lies inside the sending period: steady state, no start or drain.
            let tools = [blast.pid(), sink.proc.pid()];
            std::thread::sleep(Duration::from_secs_f64(p.warm));
            let a = cpu_sample(p.gateways, &tools);
            std::thread::sleep(Duration::from_secs_f64(p.window));
            cpu_window = Some((a, cpu_sample(p.gateways, &tools)));
        }
        let sent = blast
            .wait_output(Duration::from_secs_f64(seconds + 30.0))
            .map(|o| json_line(&o))
            .unwrap_or(Value::Null);
        let got = sink.finish(Duration::from_secs(60));
        let (tx, rx) = (f(&sent["sent"]).max(0.0), f(&got["received"]).max(0.0));
        let late = f(&got["late"]).max(0.0);
        let send_secs = f(&sent["seconds"]).max(1e-9);
        // Late packets were not forwarded at the rate offered: they count as lost.
        let loss = if tx > 0.0 {
            (tx - (rx - late)).max(0.0) / tx
        } else {
            1.0
        };
        // The delivery rate: received over the time packets kept arriving (a system with a
        // deep queue delivers after the sender stopped).
        let secs = send_secs.max(f(&got["seconds"]).max(0.0));
        let mut r = json!({
            "size": size_name(size),
            "target_pps": pps,
            "offered_pps": tx / send_secs,
            "sent": tx,
            "send_errors": sent["errors"],
            "received": rx,
            "late": late,
            "loss": loss,
            "pps": rx / secs,
            "gbps": f(&got["bytes"]).max(0.0) * 8.0 / secs / 1e9,
            "seconds": seconds,
        });
        if let Some((a, b)) = cpu_window {
            let w = b.at.duration_since(a.at).as_secs_f64();
            // Packets forwarded in the window, at the trial's delivery rate (received over the
            // time they kept arriving: below saturation the offered rate, above it the rate a
            // queueing system drains at).
            let pkts = (rx / secs * w).max(1.0);
            let per = |x: Option<u64>, y: Option<u64>| -> Value {
                match (x, y) {
                    (Some(x), Some(y)) => {
                        json!(y.saturating_sub(x) as f64 / TICKS_PER_S / pkts * 1e6)
                    }
                    _ => Value::Null,
                }
            };
            // Busy = wall × CPUs − idle, never below 0 (both ends are rounded to a tick).
            let busy = match (a.idle, b.idle) {
                (Some((x, n)), Some((y, _))) => {
                    let idle = y.saturating_sub(x) as f64 / TICKS_PER_S;
                    json!((w * f64::from(n) - idle).max(0.0) / pkts * 1e6)
                }
                _ => Value::Null,
            };
            let tools = per(a.tools, b.tools);
            r["cpu"] = json!({
                "window_s": w,
                "packets": pkts,
                "process_us_per_pkt": per(a.gateways, b.gateways),
                "machine_busy_us_per_pkt": busy,
                "load_tools_us_per_pkt": tools,
                "machine_net_us_per_pkt": match (busy.as_f64(), tools.as_f64()) {
                    (Some(b), Some(t)) => json!(b - t),
                    _ => Value::Null,
                },
            });
        }
        Ok(r)
    }

    /// Round trips host-a → host-b → host-a through both gateways: an echo responder in
    /// host-b, the request/response client in host-a.
    fn rtt(&self, o: &BenchOptions) -> anyhow::Result<Value> {
        let echo = Tool::start(
            "echo",
            "host-b",
            &[&self.exe, "traffic", "echo", "--bind", "0.0.0.0:5002"],
        )?;
        let rr = Proc::spawn(
            "rr",
            "host-a",
            &[
                &self.exe,
                "traffic",
                "rr",
                "--dst",
                "198.51.100.2:5002",
                "--size",
                "64",
                "--count",
                &o.rtt_count.to_string(),
                "--interval-us",
                &o.rtt_interval_us.to_string(),
                "--outstanding",
                &o.rtt_outstanding.to_string(),
            ],
        )?;
        let budget = o.rtt_count as f64 * (o.rtt_interval_us as f64 * 1e-6 + 0.01) + 30.0;
        let r = rr
            .wait_output(Duration::from_secs_f64(budget))
            .map(|s| json_line(&s))
            .unwrap_or(Value::Null);
        echo.finish(Duration::from_secs(5));
        Ok(r)
    }
}

/// `ping` host-a → host-b on the same rig, the same count and gap (`-A`, one in flight, when
/// the bench's requests go back to back), 64-byte IP packets. None without ping.
fn ping(o: &BenchOptions) -> Option<Value> {
    if !which("ping") {
        return None;
    }
    let count = o.rtt_count.to_string();
    let gap = format!("{:.6}", o.rtt_interval_us as f64 * 1e-6);
    let mut args = vec!["ping", "-n", "-c", &count, "-s", "36", "-W", "1"];
    if o.rtt_interval_us == 0 {
        args.push("-A");
    } else {
        args.extend(["-i", gap.as_str()]);
    }
    args.push("198.51.100.2");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", "host-a"])
        .args(&args)
        .output()
        .ok()?;
    let mut v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .map(|ms: f64| ms * 1000.0)
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    Some(json!({
        "command": format!("ip netns exec host-a {}", args.join(" ")),
        "received": v.len(),
        "p50_us": quantile(&v, 0.5),
        "p90_us": quantile(&v, 0.9),
        "p99_us": quantile(&v, 0.99),
        "p999_us": quantile(&v, 0.999),
        "max_us": v.last().copied().unwrap_or(f64::NAN),
    }))
}

/// A system under test, up on the rig.
enum Up {
    Gateways(Proc, Proc),
    Kernel,
    StrongSwan(Vec<Proc>),
}

impl Up {
    /// The processes whose CPU is the system's (none for kernel routing).
    fn pids(&self) -> Vec<u32> {
        match self {
            Up::Gateways(a, b) => vec![a.pid(), b.pid()],
            Up::Kernel => vec![],
            Up::StrongSwan(p) => p.iter().map(|p| p.pid()).collect(),
        }
    }

    fn down(self) -> anyhow::Result<()> {
        match self {
            Up::Gateways(mut a, mut b) => {
                a.stop(Duration::from_secs(5));
                b.stop(Duration::from_secs(5));
            }
            Up::Kernel => kernel_routing(false)?,
            Up::StrongSwan(procs) => {
                for mut c in procs {
                    c.stop(Duration::from_secs(5));
                }
                kernel_routing(false)?;
            }
        }
        Ok(())
    }
}

fn system_up(name: &str, rig: &Rig, ctx: &Ctx, charon: &str) -> anyhow::Result<Up> {
    Ok(match name {
        "espd" | "null" => {
            let extra: &[&str] = if name == "null" {
                &["--null-crypto"]
            } else {
                &[]
            };
            // One more try: on a loaded machine an XDP attach has failed once in a while.
            let (a, b) = start_gateways(rig, &ctx.exe, extra)
                .or_else(|_| start_gateways(rig, &ctx.exe, extra))?;
            Up::Gateways(a, b)
        }
        "kernel" => {
            kernel_routing(true)?;
            Up::Kernel
        }
        "strongswan" => {
            kernel_routing(false)?;
            let procs = strongswan_up(rig.dir(), charon)?;
            // IKE done is not yet traffic flowing: probe until the tunnel carries.
            for _ in 0..10 {
                if f(&ctx.trial(64, 0.3, 1000, None)?["received"]) > 0.0 {
                    return Ok(Up::StrongSwan(procs));
                }
            }
            Up::StrongSwan(procs).down()?;
            anyhow::bail!("the strongSwan tunnel carried nothing")
        }
        other => anyhow::bail!("unknown system `{other}`"),
    })
}

/// The RFC 2544 search on a system that is up: NDR and PDR of one size. `flood`: the
/// maximum-delivered trial (the sender's ceiling and the first guess).
fn search(ctx: &Ctx, o: &BenchOptions, size: usize, flood: &Value) -> anyhow::Result<Value> {
    let max_rate = f(&flood["offered_pps"]).max(1000.0);
    let guess = (f(&flood["pps"]) * 1.05).max(0.02 * max_rate);
    let mut s = RateSearch::new(max_rate, guess, o.precision);
    let mut phases = vec![o.trial_seconds.min(o.seconds)];
    if o.trial_seconds < o.seconds {
        phases.push(o.seconds);
    }
    let mut trials = Vec::new();
    for (pi, &secs) in phases.iter().enumerate() {
        if pi > 0 {
            s = s.next_phase();
        }
        let mut phase_trials: Vec<Value> = Vec::new();
        while let Some(rate) = s.next() {
            if phase_trials.len() >= 40 {
                break;
            }
            let t = ctx.trial(size, secs, rate.round().max(1.0) as u64, None)?;
            // A rate the sender could not offer (its CPU, or backpressure from the system)
            // did not pass.
            let short = f(&t["offered_pps"]) < OFFERED_OK * rate;
            s.record(rate, if short { 1.0 } else { f(&t["loss"]) });
            phase_trials.push(t);
        }
        trials.push(phase_trials);
    }
    let last = trials.last().cloned().unwrap_or_default();
    let at = |rate: f64| -> Value {
        if rate <= 0.0 {
            return json!({ "pps": 0.0, "gbps": 0.0, "offered_pps": 0.0, "loss": 0.0, "sender_limited": false });
        }
        let t = last
            .iter()
            .rev()
            .find(|t| f(&t["target_pps"]) == rate.round().max(1.0))
            .cloned()
            .unwrap_or_default();
        let offered = f(&t["offered_pps"]);
        json!({
            "pps": rate,
            "gbps": rate * super::traffic::mean_ip_size(size) * 8.0 / 1e9,
            "offered_pps": offered,
            "loss": t["loss"],
            // Near the sender's ceiling: the bound may be the sender's, not the system's.
            "sender_limited": rate >= 0.9 * max_rate,
        })
    };
    Ok(json!({
        "ndr": at(s.result(0)),
        "pdr": at(s.result(1)),
        "trials": trials.iter().map(|p| p.len()).collect::<Vec<_>>(),
        // [trial seconds, rate asked, rate offered, loss] in the order run.
        "trial_log": trials.iter().flatten().map(|t| json!([t["seconds"], t["target_pps"], t["offered_pps"], t["loss"]])).collect::<Vec<_>>(),
    }))
}

fn progress(run: usize, runs: usize, what: &str) {
    println!("[run {}/{runs}] {what}", run + 1);
}

fn kernel_routing(on: bool) -> anyhow::Result<()> {
    let v = if on { "1" } else { "0" };
    for (gw, net, via) in [
        ("gw-a", "198.51.100.0/24", "203.0.113.2"),
        ("gw-b", "192.0.2.0/24", "203.0.113.1"),
    ] {
        ns(gw, &["sysctl", "-qw", &format!("net.ipv4.ip_forward={v}")])?;
        if on {
            ns(gw, &["ip", "route", "replace", net, "via", via])?;
        } else {
            let _ = ns(gw, &["ip", "route", "del", net]);
        }
    }
    Ok(())
}

fn which(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// strongSwan 5.9 with kernel-libipsec (userspace ESP over TUN) on the gateway namespaces,
/// IKEv1 main mode with a PSK, ESP aes128gcm16 (the recipe of FACTS.md): one charon per
/// gateway, each in a private mount namespace with its own /run.
fn strongswan_up(dir: &Path, charon: &str) -> anyhow::Result<Vec<Proc>> {
    let mut procs = Vec::new();
    for (me, l, r, ln, rn) in [
        (
            "a",
            "203.0.113.1",
            "203.0.113.2",
            "192.0.2.0/24",
            "198.51.100.0/24",
        ),
        (
            "b",
            "203.0.113.2",
            "203.0.113.1",
            "198.51.100.0/24",
            "192.0.2.0/24",
        ),
    ] {
        let vici = dir.join(format!("charon-{me}.vici"));
        let conf = dir.join(format!("strongswan-{me}.conf"));
        std::fs::write(
            &conf,
            format!(
                "charon {{\n  load_modular = no\n  load = random nonce aes sha1 sha2 hmac gcm pem pkcs1 x509 pubkey curve25519 gmp kdf openssl kernel-libipsec kernel-netlink socket-default vici updown\n  plugins {{\n    vici {{\n      socket = unix://{}\n    }}\n  }}\n}}\n",
                vici.display()
            ),
        )?;
        let sw = dir.join(format!("swanctl-{me}.conf"));
        std::fs::write(
            &sw,
            format!(
                "connections {{\n rig {{\n  version = 1\n  local_addrs = {l}\n  remote_addrs = {r}\n  proposals = aes128-sha256-modp2048\n  local {{\n   auth = psk\n   id = {l}\n  }}\n  remote {{\n   auth = psk\n   id = {r}\n  }}\n  children {{\n   rig {{\n    local_ts = {ln}\n    remote_ts = {rn}\n    esp_proposals = aes128gcm16\n    mode = tunnel\n   }}\n  }}\n }}\n}}\nsecrets {{\n ike-rig {{\n  id-a = 203.0.113.1\n  id-b = 203.0.113.2\n  secret = \"espd-bench-{}\"\n }}\n}}\n",
                std::process::id()
            ),
        )?;
        ns(
            &format!("gw-{me}"),
            &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        )?;
        let script = format!(
            "mount -t tmpfs tmpfs /run && STRONGSWAN_CONF={} exec {charon}",
            conf.display()
        );
        procs.push(Proc::spawn(
            &format!("charon-{me}"),
            &format!("gw-{me}"),
            &[
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ],
        )?);
    }
    let uri = |me: &str| format!("unix://{}", dir.join(format!("charon-{me}.vici")).display());
    let swanctl = |args: &[&str]| -> anyhow::Result<()> {
        for _ in 0..50 {
            let o = std::process::Command::new("swanctl").args(args).output()?;
            if o.status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!("swanctl {} failed", args.join(" "))
    };
    for me in ["a", "b"] {
        let f = dir
            .join(format!("swanctl-{me}.conf"))
            .to_string_lossy()
            .to_string();
        swanctl(&["--load-all", "--uri", &uri(me), "--file", &f])?;
    }
    swanctl(&["--initiate", "--child", "rig", "--uri", &uri("a")])?;
    Ok(procs)
}

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    json!({
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    })
}

/// What one system measured in every run.
#[derive(Default)]
struct Runs {
    rtt: Vec<Value>,
    ping: Vec<Value>,
    /// Per `cpu_sizes` × `cpu_loads` point, one trial per run.
    cpu: Vec<Vec<Value>>,
    /// Per size: (flood, search) per run.
    tput: Vec<Vec<(Value, Value)>>,
    rekey: Value,
    errors: Vec<String>,
}

/// Runs the suite; returns the report.
pub fn run(o: &BenchOptions) -> anyhow::Result<Value> {
    let ctx = Ctx {
        exe: std::env::current_exe()?.to_string_lossy().to_string(),
        flow: std::cell::Cell::new(0),
    };
    std::fs::create_dir_all(&o.out)?;
    let charon = ["/usr/lib/ipsec/charon", "/usr/libexec/ipsec/charon"]
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|s| s.to_string());
    let mut systems: Vec<(String, Option<String>)> = Vec::new();
    for s in &o.systems {
        let skip = match s.as_str() {
            "espd" | "null" | "kernel" => None,
            "strongswan" => match (&charon, which("swanctl")) {
                (Some(_), true) => None,
                _ => Some("strongSwan not installed (apt-get install strongswan strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins; ./scripts/install-deps.sh does)".to_string()),
            },
            other => Some(format!("unknown system `{other}`")),
        };
        systems.push((s.clone(), skip));
    }
    let runnable: Vec<String> = systems
        .iter()
        .filter(|(_, s)| s.is_none())
        .map(|(n, _)| n.clone())
        .collect();
    let cpu_points: Vec<(usize, u64)> = o
        .cpu_sizes
        .iter()
        .flat_map(|&s| o.cpu_loads.iter().map(move |&l| (s, l)))
        .collect();
    let mut all: Vec<Runs> = runnable
        .iter()
        .map(|_| Runs {
            cpu: vec![Vec::new(); cpu_points.len()],
            tput: vec![Vec::new(); o.sizes.len()],
            ..Default::default()
        })
        .collect();
    let started = Instant::now();
    // One worker per gateway: two gateways, a sender and a sink already need four cores' worth.
    let rig = Rig::up(RigSpec {
        queues: 1,
        dir: o.out.join("rig"),
        dataplane: o.dataplane.clone(),
        ..Default::default()
    })
    .map_err(|e| match e {
        super::RigError::Dataplane(m) => anyhow::anyhow!("--dataplane: {m}"),
        e => e.into(),
    })?;
    let charon = charon.unwrap_or_default();
    // Systems interleaved: every run measures every system in turn (ABCD ABCD ...), so a drift
    // of the machine over the bench hits all of them alike.
    for run in 0..o.runs {
        for (name, r) in runnable.iter().zip(all.iter_mut()) {
            progress(run, o.runs, &format!("{name}: up"));
            let mut up = match system_up(name, &rig, &ctx, &charon) {
                Ok(u) => u,
                Err(e) => {
                    r.errors.push(format!("run {}: {e}", run + 1));
                    continue;
                }
            };
            let res = measure_system(&ctx, o, &rig, &charon, name, run, &mut up, r, &cpu_points);
            up.down()?;
            if let Err(e) = res {
                r.errors.push(format!("run {}: {e}", run + 1));
            }
        }
    }
    drop(rig);
    let mut results = serde_json::Map::new();
    for (name, r) in runnable.iter().zip(all.iter()) {
        results.insert(name.clone(), aggregate(o, r, &cpu_points));
    }
    let skipped: Vec<Value> = systems
        .iter()
        .filter_map(|(n, s)| s.as_ref().map(|r| json!({"system": n, "reason": r})))
        .collect();
    let report = json!({
        "machine": machine(),
        "espd_version": env!("CARGO_PKG_VERSION"),
        "config": {
            "runs": o.runs,
            "interleaving": "every run measures every system in turn (ABCD ABCD ...); figures are the median of the runs with their min–max",
            "seconds": o.seconds,
            "trial_seconds": o.trial_seconds,
            "precision": o.precision,
            "pdr_loss": PDR_LOSS,
            "late_after_s": grace(o.seconds),
            "sizes": o.sizes.iter().map(|s| size_name(*s)).collect::<Vec<_>>(),
            "cpu_sizes": o.cpu_sizes.iter().map(|s| size_name(*s)).collect::<Vec<_>>(),
            "cpu_loads": o.cpu_loads,
            "rtt": { "ip_bytes": 64, "count": o.rtt_count, "interval_us": o.rtt_interval_us, "outstanding": o.rtt_outstanding },
            "rekey_ms": o.rekey_ms,
            "rekey_pps": o.rekey_pps,
            "workers_per_gateway": 1,
            "espd_dataplane": o.dataplane,
            "cipher": "AES-GCM-128 (aws-lc-rs)",
            "wall_seconds": started.elapsed().as_secs_f64(),
        },
        "results": results,
        "ratios": ratios(o, &Value::Object(results.clone())),
        "skipped": skipped,
    });
    std::fs::write(
        o.out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(o.out.join("throughput.svg"), throughput_svg(&report))?;
    std::fs::write(o.out.join("latency.svg"), latency_svg(&report))?;
    std::fs::write(o.out.join("cpu.svg"), cpu_svg(&report))?;
    let mut text = report_text(&report);
    if let Some(old) = &o.compare {
        text.push_str(&compare(
            &report,
            &serde_json::from_str(&std::fs::read_to_string(old)?)?,
        ));
    }
    std::fs::write(o.out.join("report.txt"), &text)?;
    print!("\n{text}");
    println!(
        "\nwrote {}/report.json, report.txt, throughput.svg, latency.svg, cpu.svg",
        o.out.display()
    );
    Ok(report)
}

/// Everything one run measures on one system that is up.
#[allow(clippy::too_many_arguments)]
fn measure_system(
    ctx: &Ctx,
    o: &BenchOptions,
    rig: &Rig,
    charon: &str,
    name: &str,
    run: usize,
    up: &mut Up,
    r: &mut Runs,
    cpu_points: &[(usize, u64)],
) -> anyhow::Result<()> {
    if o.rtt_count > 0 {
        progress(
            run,
            o.runs,
            &format!("{name}: {} round trips, 64 B", o.rtt_count),
        );
        r.rtt.push(ctx.rtt(o)?);
        if let Some(p) = ping(o) {
            progress(run, o.runs, &format!("{name}: ping alongside"));
            r.ping.push(p);
        }
    }
    for (i, &(size, load)) in cpu_points.iter().enumerate() {
        progress(
            run,
            o.runs,
            &format!("{name}: CPU at {load} pps of {} B", size_name(size)),
        );
        let pids = up.pids();
        let warm = 0.5;
        let t = ctx.trial(
            size,
            warm + o.seconds + 0.3,
            load,
            Some(CpuProbe {
                gateways: &pids,
                warm,
                window: o.seconds,
            }),
        )?;
        r.cpu[i].push(t);
    }
    if !o.no_throughput {
        for (i, &size) in o.sizes.iter().enumerate() {
            progress(
                run,
                o.runs,
                &format!(
                    "{name}: {} B, maximum delivered ({} s flood)",
                    size_name(size),
                    o.seconds
                ),
            );
            let flood = ctx.trial(size, o.seconds, 0, None)?;
            if matches!(up, Up::StrongSwan(_)) {
                // libipsec queues without bound: after a flood it drains for seconds. Fresh
                // charons for the search.
                std::mem::replace(up, Up::Kernel).down()?;
                *up = system_up(name, rig, ctx, charon)?;
            }
            progress(
                run,
                o.runs,
                &format!("{name}: {} B, NDR/PDR search", size_name(size)),
            );
            let found = search(ctx, o, size, &flood)?;
            r.tput[i].push((flood, found));
        }
    }
    if name == "espd" && run == 0 && o.rekey_ms > 0 {
        progress(
            run,
            o.runs,
            &format!(
                "espd: {} pps, 512 B, rekey every {} ms",
                o.rekey_pps, o.rekey_ms
            ),
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, b, st, every) = (rig.socket('a'), rig.socket('b'), stop.clone(), o.rekey_ms);
        let keyer = std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut k = super::keyer::Keyer::for_rig(&a, &b)?;
            while !st.load(std::sync::atomic::Ordering::Acquire) {
                k.rekey()?;
                std::thread::sleep(Duration::from_millis(every));
            }
            Ok(k.rekeys)
        });
        let with = ctx.trial(512, o.seconds, o.rekey_pps, None);
        stop.store(true, std::sync::atomic::Ordering::Release);
        let rekeys = keyer
            .join()
            .map_err(|_| anyhow::anyhow!("keyer panicked"))??;
        let with = with?;
        progress(run, o.runs, "espd: the same without rekeys");
        let without = ctx.trial(512, o.seconds, o.rekey_pps, None)?;
        r.rekey = json!({ "rekeys": rekeys, "interval_ms": o.rekey_ms, "with_rekeys": with, "without_rekeys": without });
    }
    Ok(())
}

/// Median and min–max over runs of `key` (a JSON pointer) in each value.
fn over(vals: &[&Value], key: &str) -> Value {
    stat(
        &vals
            .iter()
            .map(|v| v.pointer(key).and_then(Value::as_f64).unwrap_or(f64::NAN))
            .collect::<Vec<_>>(),
    )
}

fn aggregate(o: &BenchOptions, r: &Runs, cpu_points: &[(usize, u64)]) -> Value {
    let rtt: Vec<&Value> = r.rtt.iter().collect();
    let ping: Vec<&Value> = r.ping.iter().collect();
    let mut rtt_v = json!({
        "lost": r.rtt.iter().map(|v| v["lost"].as_u64().unwrap_or(0)).sum::<u64>(),
        "cdf": r.rtt.first().map(|v| v["cdf"].clone()).unwrap_or_default(),
        "ping": {
            "command": r.ping.first().map(|p| p["command"].clone()).unwrap_or_default(),
            "received": r.ping.iter().map(|p| p["received"].clone()).collect::<Vec<_>>(),
        },
    });
    for k in [
        "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us", "tps",
    ] {
        rtt_v[k] = over(&rtt, &format!("/{k}"));
    }
    for k in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        rtt_v["ping"][k] = over(&ping, &format!("/{k}"));
    }
    let cpu: Vec<Value> = cpu_points
        .iter()
        .zip(&r.cpu)
        .map(|(&(size, load), runs)| {
            let v: Vec<&Value> = runs.iter().collect();
            let loss = over(&v, "/loss");
            let sent = over(&v, "/offered_pps");
            let delivered = over(&v, "/pps");
            json!({
                "size": size_name(size),
                "offered_pps": load,
                "sent_pps": sent,
                "delivered_pps": delivered,
                "loss": loss,
                // Above the PDR's loss, short of the load asked, or delivering slower than
                // offered (a queue growing), the point is not a fixed load below saturation.
                "saturated": f(&loss["median"]) > PDR_LOSS
                    || f(&sent["median"]) < OFFERED_OK * load as f64
                    || f(&delivered["median"]) < OFFERED_OK * f(&sent["median"]),
                "process_us_per_pkt": over(&v, "/cpu/process_us_per_pkt"),
                "machine_busy_us_per_pkt": over(&v, "/cpu/machine_busy_us_per_pkt"),
                "load_tools_us_per_pkt": over(&v, "/cpu/load_tools_us_per_pkt"),
                "machine_net_us_per_pkt": over(&v, "/cpu/machine_net_us_per_pkt"),
                "trials": runs,
            })
        })
        .collect();
    let tput: Vec<Value> = o
        .sizes
        .iter()
        .zip(&r.tput)
        .filter(|(_, runs)| !runs.is_empty())
        .map(|(&size, runs)| {
            let floods: Vec<&Value> = runs.iter().map(|(fl, _)| fl).collect();
            let found: Vec<&Value> = runs.iter().map(|(_, s)| s).collect();
            let bound = |b: &str| {
                json!({
                    "pps": over(&found, &format!("/{b}/pps")),
                    "gbps": over(&found, &format!("/{b}/gbps")),
                    "offered_pps": over(&found, &format!("/{b}/offered_pps")),
                    "sender_limited": found.iter().any(|s| s[b]["sender_limited"] == true),
                })
            };
            json!({
                "size": size_name(size),
                "mean_ip_bytes": super::traffic::mean_ip_size(size),
                "ndr": bound("ndr"),
                "pdr": bound("pdr"),
                "max_delivered": {
                    "pps": over(&floods, "/pps"),
                    "gbps": over(&floods, "/gbps"),
                    "offered_pps": over(&floods, "/offered_pps"),
                    "loss": over(&floods, "/loss"),
                },
                "trials_per_phase": found.iter().map(|s| s["trials"].clone()).collect::<Vec<_>>(),
                "trial_log": found.iter().map(|s| s["trial_log"].clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "rtt": rtt_v, "cpu": cpu, "throughput": tput, "rekey": r.rekey, "errors": r.errors })
}

fn med(v: &Value) -> Option<f64> {
    v["median"].as_f64()
}

fn ratios(o: &BenchOptions, res: &Value) -> Value {
    let mut out = serde_json::Map::new();
    let tput = |sys: &str, size: &str, b: &str| -> Option<f64> {
        res[sys]["throughput"]
            .as_array()?
            .iter()
            .find(|t| t["size"] == size)
            .and_then(|t| med(&t[b]["pps"]))
    };
    for size in o.sizes.iter().map(|s| size_name(*s)) {
        for base in ["null", "kernel", "strongswan"] {
            for b in ["ndr", "pdr"] {
                if let (Some(n), Some(d)) = (tput("espd", &size, b), tput(base, &size, b))
                    && d > 0.0
                {
                    out.insert(
                        format!("espd/{base} {}@{size}", b.to_uppercase()),
                        json!(n / d),
                    );
                }
            }
        }
    }
    let cpu = |sys: &str, size: &str, load: u64| -> Option<f64> {
        res[sys]["cpu"]
            .as_array()?
            .iter()
            .find(|t| t["size"] == size && t["offered_pps"] == load)
            .filter(|t| t["saturated"] != true)
            .and_then(|t| med(&t["process_us_per_pkt"]))
    };
    for size in o.cpu_sizes.iter().map(|s| size_name(*s)) {
        for &load in &o.cpu_loads {
            for base in ["strongswan", "null"] {
                if let (Some(n), Some(d)) = (cpu("espd", &size, load), cpu(base, &size, load))
                    && d > 0.0
                {
                    out.insert(
                        format!("espd/{base} CPU per packet@{size}B,{load}pps"),
                        json!(n / d),
                    );
                }
            }
        }
    }
    Value::Object(out)
}

/// "median [min–max]" of a stat, `scale`d, with `prec` decimals; "-" when absent.
fn fmt_stat(v: &Value, scale: f64, prec: usize) -> String {
    let (Some(m), Some(lo), Some(hi)) =
        (v["median"].as_f64(), v["min"].as_f64(), v["max"].as_f64())
    else {
        return "-".into();
    };
    let (m, lo, hi) = (m * scale, lo * scale, hi * scale);
    if format!("{lo:.prec$}") == format!("{hi:.prec$}") {
        format!("{m:.prec$}")
    } else {
        format!("{m:.prec$} [{lo:.prec$}–{hi:.prec$}]")
    }
}

/// The text report (also report.txt).
pub fn report_text(r: &Value) -> String {
    let c = &r["config"];
    let mut s = String::new();
    let res = r["results"].as_object().cloned().unwrap_or_default();
    let _ = writeln!(
        s,
        "espd bench: {} run(s) of every figure, systems interleaved; a figure is the median of the runs [min–max].\nmachine: {} ({} cores), kernel {}; one worker per gateway.",
        c["runs"],
        r["machine"]["cpu"].as_str().unwrap_or("?"),
        r["machine"]["cores"],
        r["machine"]["kernel"].as_str().unwrap_or("?"),
    );
    if let Some(d) = c["espd_dataplane"].as_str().filter(|d| !d.is_empty()) {
        let _ = writeln!(
            s,
            "espd and null gateways' [dataplane] additions: {}",
            d.replace('\n', "; ")
        );
    }
    let rt = &c["rtt"];
    let _ = writeln!(
        s,
        "\nRound trip (RTT), µs: 64 B UDP request/response host-a → host-b → host-a through both gateways,\n{} in flight, {}, {} round trips per run; `ping` on the same rig and system, the same count and gap, in each run
(ICMP: host-b's kernel answers inside gw-b's own transmit, so ping skips two process wake-ups and
finds gw-b's worker still awake for the way back: it is the lower bound).",
        rt["outstanding"],
        if rt["interval_us"] == 0 {
            "back to back (netperf UDP_RR)".to_string()
        } else {
            format!("a request every {} µs", rt["interval_us"])
        },
        rt["count"]
    );
    let _ = writeln!(
        s,
        "{:<11} {:>5} {:>18} {:>18} {:>18} {:>18} {:>6}",
        "system", "tool", "p50", "p90", "p99", "p99.9", "lost"
    );
    for (name, v) in &res {
        let t = &v["rtt"];
        for (tool, t, lost) in [
            ("bench", t, t["lost"].to_string()),
            ("ping", &t["ping"], String::new()),
        ] {
            let _ = writeln!(
                s,
                "{name:<11} {tool:>5} {:>18} {:>18} {:>18} {:>18} {lost:>6}",
                fmt_stat(&t["p50_us"], 1.0, 0),
                fmt_stat(&t["p90_us"], 1.0, 0),
                fmt_stat(&t["p99_us"], 1.0, 0),
                fmt_stat(&t["p999_us"], 1.0, 0),
            );
        }
    }
    let _ = writeln!(
        s,
        "\nCPU per forwarded packet at a fixed offered load, µs (= CPU seconds per million packets), both\ngateways together, {} s window in the steady state. process: utime+stime of the gateway processes\n(espd, null: the two espd; strongswan: the two charons). machine−tools: the machine's busy time\n(wall × CPUs − idle, /proc/stat) minus the load tools' own CPU, for every system (the only figure for kernel\nrouting, a lower bound: its forwarding runs mostly in the load tools' sendmsg softirq and is subtracted with them).",
        c["seconds"]
    );
    let _ = writeln!(
        s,
        "{:<11} {:>5} {:>8} {:>14} {:>16} {:>20} {:>20}",
        "system",
        "size",
        "offered",
        "delivered",
        "loss %",
        "process µs/pkt",
        "machine−tools µs/pkt"
    );
    for (name, v) in &res {
        for t in v["cpu"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "{name:<11} {:>5} {:>8} {:>14} {:>16} {:>20} {:>20}{}",
                t["size"].as_str().unwrap_or(""),
                t["offered_pps"],
                fmt_stat(&t["delivered_pps"], 1.0, 0),
                fmt_stat(&t["loss"], 100.0, 2),
                fmt_stat(&t["process_us_per_pkt"], 1.0, 2),
                fmt_stat(&t["machine_net_us_per_pkt"], 1.0, 2),
                if t["saturated"] == true {
                    "  SATURATED (loss > 0.5 %, load not offered, or delivered late)"
                } else {
                    ""
                }
            );
        }
    }
    let _ = writeln!(
        s,
        "\nRFC 2544 throughput, kpps of IP packets offered: NDR (no loss) and PDR (loss ≤ {} %), each the\nhighest rate that passed a {} s trial (what arrived later than {} s after it counts as lost), found\nby a search (trials of {} s first, then {} s; bounds within {} %). Maximum delivered: received while flooded for {} s (not comparable across systems:\nit is loss-blind).",
        f(&c["pdr_loss"]) * 100.0,
        c["seconds"],
        grace(f(&c["seconds"])),
        c["trial_seconds"],
        c["seconds"],
        f(&c["precision"]) * 100.0,
        c["seconds"],
    );
    let _ = writeln!(
        s,
        "{:<11} {:>5} {:>20} {:>20} {:>16} {:>22} {:>9}",
        "system", "size", "NDR kpps", "PDR kpps", "PDR Gbit/s", "max delivered kpps", "its loss"
    );
    for (name, v) in &res {
        for t in v["throughput"].as_array().into_iter().flatten() {
            let lim = |b: &str| {
                if t[b]["sender_limited"] == true {
                    "*"
                } else {
                    ""
                }
            };
            let _ = writeln!(
                s,
                "{name:<11} {:>5} {:>19}{} {:>19}{} {:>16} {:>22} {:>8}%",
                t["size"].as_str().unwrap_or(""),
                fmt_stat(&t["ndr"]["pps"], 1e-3, 1),
                lim("ndr"),
                fmt_stat(&t["pdr"]["pps"], 1e-3, 1),
                lim("pdr"),
                fmt_stat(&t["pdr"]["gbps"], 1.0, 3),
                fmt_stat(&t["max_delivered"]["pps"], 1e-3, 1),
                fmt_stat(&t["max_delivered"]["loss"], 100.0, 0),
            );
        }
    }
    if res
        .values()
        .flat_map(|v| v["throughput"].as_array().cloned().unwrap_or_default())
        .any(|t| t["ndr"]["sender_limited"] == true || t["pdr"]["sender_limited"] == true)
    {
        let _ = writeln!(
            s,
            "* within 10 % of what the sender offers when flooding (in some run): the system may do more."
        );
    }
    if let Some(k) = r["results"]["espd"]["rekey"].as_object() {
        let (w, wo) = (&k["with_rekeys"], &k["without_rekeys"]);
        let _ = writeln!(
            s,
            "\nrekeys under load (espd, run 1): {} rekeys every {} ms at {:.0} pps of 512 B: loss {:.4} % (without rekeys {:.4} %)",
            k["rekeys"],
            k["interval_ms"],
            f(&w["offered_pps"]),
            f(&w["loss"]) * 100.0,
            f(&wo["loss"]) * 100.0,
        );
    }
    let _ = writeln!(s, "\nratios (of medians):");
    for (k, v) in r["ratios"].as_object().into_iter().flatten() {
        let _ = writeln!(s, "  {k:<42} {:.3}", f(v));
    }
    for sk in r["skipped"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "skipped {}: {}",
            sk["system"].as_str().unwrap_or(""),
            sk["reason"].as_str().unwrap_or("")
        );
    }
    for (name, v) in &res {
        for e in v["errors"].as_array().into_iter().flatten() {
            let _ = writeln!(s, "error {name}: {}", e.as_str().unwrap_or(""));
        }
    }
    s
}

/// One figure against an earlier report: flagged only when the medians differ by more than
/// the wider of the two spreads (max − min); with one run there is no spread, and any change
/// shows.
pub fn change(old: &Value, new: &Value) -> Option<(f64, f64, bool)> {
    let (o, n) = (med(old)?, med(new)?);
    let spread = |v: &Value| f(&v["max"]) - f(&v["min"]);
    let s = spread(old).max(spread(new));
    let s = if s.is_finite() { s } else { 0.0 };
    Some((o, n, (n - o).abs() > s))
}

/// The `--compare` section: every figure both reports have, marked CHANGED when the change is
/// bigger than the spread.
pub fn compare(new: &Value, old: &Value) -> String {
    let mut s = String::from(
        "\nchange against the earlier report (medians; CHANGED: the difference is bigger than the\nwider min–max spread of the two reports, else within noise):\n",
    );
    // Settings that change what a figure means: a difference is said before the figures.
    for k in [
        "espd_dataplane",
        "seconds",
        "trial_seconds",
        "workers_per_gateway",
        "cipher",
        "rtt",
    ] {
        let (o, n) = (&old["config"][k], &new["config"][k]);
        // A key the earlier report does not have was not recorded, not different (an empty
        // dataplane addition is what a report from before `--dataplane` ran with).
        let unrecorded = o.is_null() && !(k == "espd_dataplane" && n != "");
        if o != n && !unrecorded {
            let _ = writeln!(
                s,
                "  DIFFERENT SETUP: config.{k} was {o}, now {n}: figures it affects are not like for like"
            );
        }
    }
    let mut found = 0;
    let mut line = |what: String, o: &Value, n: &Value| {
        if let Some((a, b, changed)) = change(o, n) {
            found += 1;
            let _ = writeln!(
                s,
                "  {what:<40} {a:>12.2} → {b:>12.2} ({:+.1} %){}",
                (b / a.max(1e-9) - 1.0) * 100.0,
                if changed {
                    "  CHANGED"
                } else {
                    "  within spread"
                }
            );
        }
    };
    for (name, v) in new["results"].as_object().into_iter().flatten() {
        let ov = &old["results"][name];
        for k in ["p50_us", "p99_us"] {
            line(format!("{name} RTT {k}"), &ov["rtt"][k], &v["rtt"][k]);
        }
        for t in v["throughput"].as_array().into_iter().flatten() {
            let size = &t["size"];
            let Some(ot) = ov["throughput"]
                .as_array()
                .and_then(|a| a.iter().find(|x| &x["size"] == size))
            else {
                continue;
            };
            let sz = size.as_str().unwrap_or("");
            for b in ["ndr", "pdr", "max_delivered"] {
                line(format!("{name} {sz} {b} pps"), &ot[b]["pps"], &t[b]["pps"]);
            }
        }
        for t in v["cpu"].as_array().into_iter().flatten() {
            let Some(ot) = ov["cpu"].as_array().and_then(|a| {
                a.iter()
                    .find(|x| x["size"] == t["size"] && x["offered_pps"] == t["offered_pps"])
            }) else {
                continue;
            };
            for k in ["process_us_per_pkt", "machine_net_us_per_pkt"] {
                line(
                    format!(
                        "{name} {} {}pps {k}",
                        t["size"].as_str().unwrap_or(""),
                        t["offered_pps"]
                    ),
                    &ot[k],
                    &t[k],
                );
            }
        }
    }
    if found == 0 {
        s.push_str(
            "  nothing to compare (the earlier report has none of these figures as medians)\n",
        );
    }
    s
}

const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
const W: f64 = 720.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 40.0;

fn svg_open(title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="18" text-anchor="middle" font-size="14">{title}</text>"#,
        W / 2.0
    )
}

/// Horizontal grid lines with y labels `label(i)` for i in 0..=4.
fn y_grid(s: &mut String, label: impl Fn(usize) -> String) {
    for i in 0..=4 {
        let y = H - BOTTOM - (H - BOTTOM - 50.0) * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            W - 20.0,
            LEFT - 5.0,
            y + 4.0,
            label(i)
        );
    }
}

/// NDR (solid) and PDR (pale) per size and system, whiskers min–max of the PDR.
fn throughput_svg(r: &Value) -> String {
    let res = r["results"].as_object().cloned().unwrap_or_default();
    let sizes: Vec<String> = r["config"]["sizes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    let find = |v: &Value, size: &str| -> Value {
        v["throughput"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["size"] == size))
            .cloned()
            .unwrap_or_default()
    };
    let max = res
        .values()
        .flat_map(|v| v["throughput"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["pdr"]["pps"]["max"].as_f64())
        .fold(1.0f64, f64::max)
        * 1.05;
    let ph = H - BOTTOM - 50.0;
    let y = |pps: f64| H - BOTTOM - ph * (pps / max).clamp(0.0, 1.0);
    let mut s = svg_open(&format!(
        "RFC 2544 throughput, pps: NDR (solid), PDR ≤0.5 % loss (pale), median of {} runs, bar: min–max",
        r["config"]["runs"]
    ));
    y_grid(&mut s, |i| format!("{:.0}k", max * i as f64 / 4.0 / 1000.0));
    let group = (W - LEFT - 20.0) / sizes.len().max(1) as f64;
    let bar = group / (res.len() + 1) as f64;
    for (gi, size) in sizes.iter().enumerate() {
        let x0 = LEFT + gi as f64 * group;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{size}</text>"#,
            x0 + group / 2.0,
            H - BOTTOM + 18.0
        );
        for (si, (_, v)) in res.iter().enumerate() {
            let t = find(v, size);
            let x = x0 + bar * (si as f64 + 0.5);
            let col = COLORS[si % 4];
            for (b, op) in [("pdr", 0.35), ("ndr", 1.0)] {
                let p = f(&t[b]["pps"]["median"]);
                if p.is_finite() {
                    let _ = write!(
                        s,
                        r#"<rect x="{x}" y="{}" width="{}" height="{}" fill="{col}" fill-opacity="{op}"/>"#,
                        y(p),
                        bar * 0.9,
                        H - BOTTOM - y(p)
                    );
                }
            }
            let (lo, hi) = (f(&t["pdr"]["pps"]["min"]), f(&t["pdr"]["pps"]["max"]));
            if lo.is_finite() && hi.is_finite() {
                let xm = x + bar * 0.45;
                let _ = write!(
                    s,
                    r#"<line x1="{xm}" y1="{}" x2="{xm}" y2="{}" stroke="black"/>"#,
                    y(lo),
                    y(hi)
                );
            }
        }
    }
    for (si, name) in res.keys().enumerate() {
        legend(&mut s, si, name, false);
    }
    s.push_str("</svg>\n");
    s
}

/// The legend entry (colour swatch and name) of series `si`.
fn legend(s: &mut String, si: usize, name: &str, dashed_note: bool) {
    let _ = write!(
        s,
        r#"<rect x="{}" y="30" width="12" height="12" fill="{}"/><text x="{}" y="40">{name}</text>"#,
        LEFT + 10.0 + si as f64 * 110.0,
        COLORS[si % 4],
        LEFT + 26.0 + si as f64 * 110.0
    );
    if dashed_note && si == 0 {
        let _ = write!(
            s,
            r#"<text x="{}" y="40" text-anchor="end">solid: first size, dashed: others</text>"#,
            W - 20.0
        );
    }
}

/// The round-trip CDF of run 1 per system.
fn latency_svg(r: &Value) -> String {
    let res = r["results"].as_object().cloned().unwrap_or_default();
    let maxlat = res
        .values()
        .filter_map(|v| v["rtt"]["p999_us"]["max"].as_f64())
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut s = svg_open(&format!(
        "Round-trip time CDF, 64 B request/response, µs (up to p99.9), {}",
        if r["config"]["rtt"]["interval_us"] == 0 {
            "back to back".to_string()
        } else {
            format!("every {} µs", r["config"]["rtt"]["interval_us"])
        }
    ));
    let px = |us: f64| LEFT + (W - LEFT - 20.0) * (us / maxlat).clamp(0.0, 1.0);
    let py = |q: f64| H - BOTTOM - (H - BOTTOM - 50.0) * q;
    y_grid(&mut s, |i| format!("{:.2}", i as f64 / 4.0));
    for i in 0..=4 {
        let q = i as f64 / 4.0;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{:.0}</text>"#,
            px(maxlat * q),
            H - BOTTOM + 18.0,
            maxlat * q
        );
    }
    for (si, (name, v)) in res.iter().enumerate() {
        let pts: Vec<String> = v["rtt"]["cdf"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some(format!(
                    "{:.1},{:.1}",
                    px(p[0].as_f64()?),
                    py(p[1].as_f64()?)
                ))
            })
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            COLORS[si % 4],
            pts.join(" ")
        );
        legend(&mut s, si, name, false);
    }
    s.push_str("</svg>\n");
    s
}

/// CPU per packet against offered load: process CPU (machine − tools for kernel routing), one
/// line per system and size.
fn cpu_svg(r: &Value) -> String {
    let res = r["results"].as_object().cloned().unwrap_or_default();
    let val = |t: &Value, name: &str| {
        f(&t[if name == "kernel" {
            "machine_net_us_per_pkt"
        } else {
            "process_us_per_pkt"
        }]["median"])
    };
    let pts: Vec<(usize, usize, f64, f64)> = res
        .iter()
        .enumerate()
        .flat_map(|(si, (name, v))| {
            let sizes: Vec<String> = r["config"]["cpu_sizes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(String::from))
                .collect();
            v["cpu"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |t| {
                    let zi = sizes.iter().position(|s| t["size"] == s.as_str())?;
                    let y = val(&t, name);
                    y.is_finite().then(|| (si, zi, f(&t["offered_pps"]), y))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let xmax = pts.iter().map(|p| p.2).fold(1.0f64, f64::max) * 1.05;
    let ymax = pts.iter().map(|p| p.3).fold(1e-3f64, f64::max) * 1.1;
    let px = |x: f64| LEFT + (W - LEFT - 20.0) * (x / xmax).clamp(0.0, 1.0);
    let py = |y: f64| H - BOTTOM - (H - BOTTOM - 50.0) * (y / ymax).clamp(0.0, 1.0);
    let mut s = svg_open(&format!(
        "CPU µs per forwarded packet (both gateways) vs offered pps; sizes {}",
        r["config"]["cpu_sizes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    y_grid(&mut s, |i| format!("{:.1}", ymax * i as f64 / 4.0));
    for i in 0..=4 {
        let x = xmax * i as f64 / 4.0;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{:.0}k</text>"#,
            px(x),
            H - BOTTOM + 18.0,
            x / 1000.0
        );
    }
    for (si, name) in res.keys().enumerate() {
        let zs: std::collections::BTreeSet<usize> =
            pts.iter().filter(|p| p.0 == si).map(|p| p.1).collect();
        for zi in zs {
            let mut line: Vec<(f64, f64)> = pts
                .iter()
                .filter(|p| p.0 == si && p.1 == zi)
                .map(|p| (p.2, p.3))
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            let pts: Vec<String> = line
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="2"{} points="{}"/>"#,
                COLORS[si % 4],
                if zi == 0 {
                    ""
                } else {
                    r#" stroke-dasharray="6 4""#
                },
                pts.join(" ")
            );
        }
        legend(&mut s, si, name, true);
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A system without loss up to `ndr`, loss ≤ 0.5 % up to `pdr`, more above.
    fn model(ndr: f64, pdr: f64) -> impl Fn(f64) -> f64 {
        move |r: f64| {
            if r <= ndr {
                0.0
            } else if r <= pdr {
                PDR_LOSS * (r - ndr) / (pdr - ndr)
            } else {
                PDR_LOSS + (r - pdr) / r
            }
        }
    }

    /// Runs every phase of a search against `loss`; returns (NDR, PDR, trials).
    fn run_search(
        max: f64,
        guess: f64,
        phases: usize,
        loss: impl Fn(f64, usize) -> f64,
    ) -> (f64, f64, usize) {
        let mut s = RateSearch::new(max, guess, 0.05);
        let mut n = 0;
        for p in 0..phases {
            if p > 0 {
                s = s.next_phase();
            }
            while let Some(r) = s.next() {
                assert!(r > 0.0 && r <= max, "rate {r} outside (0, {max}]");
                s.record(r, loss(r, p));
                n += 1;
                assert!(n < 200, "the search does not end");
            }
        }
        (s.result(0), s.result(1), n)
    }

    fn within(x: f64, truth: f64) -> bool {
        x <= truth && x >= truth * 0.95
    }

    #[test]
    fn search_finds_ndr_and_pdr_within_precision() {
        let m = model(100_000.0, 120_000.0);
        for guess in [130_000.0, 20_000.0, 390_000.0, 1.0] {
            let (ndr, pdr, n) = run_search(400_000.0, guess, 2, |r, _| m(r));
            assert!(within(ndr, 100_000.0), "guess {guess}: NDR {ndr}");
            assert!(within(pdr, 120_000.0), "guess {guess}: PDR {pdr}");
            assert!(n <= 40, "guess {guess}: {n} trials");
        }
    }

    /// Longer trials find less (a queue that fills only after a second): the second phase
    /// moves both bounds down from where the short trials left them.
    #[test]
    fn longer_trials_move_the_bounds_down() {
        let short = model(100_000.0, 120_000.0);
        let long = model(70_000.0, 90_000.0);
        let (ndr, pdr, _) = run_search(400_000.0, 130_000.0, 2, |r, p| {
            if p == 0 { short(r) } else { long(r) }
        });
        assert!(within(ndr, 70_000.0), "NDR {ndr}");
        assert!(within(pdr, 90_000.0), "PDR {pdr}");
    }

    /// No loss at all: both bounds end at the sender's ceiling. Loss at every rate: both 0.
    #[test]
    fn search_limits() {
        assert_eq!(
            run_search(50_000.0, 10_000.0, 2, |_, _| 0.0),
            (50_000.0, 50_000.0, 6)
        );
        let (ndr, pdr, _) = run_search(50_000.0, 10_000.0, 2, |_, _| 0.5);
        assert_eq!((ndr, pdr), (0.0, 0.0));
    }

    /// A noisy system (loss at a rate that passed before) still ends, with bounds that passed.
    #[test]
    fn search_survives_noise() {
        let m = model(100_000.0, 120_000.0);
        let k = std::cell::Cell::new(0u32);
        let (ndr, pdr, _) = run_search(400_000.0, 130_000.0, 2, |r, _| {
            k.set(k.get() + 1);
            if k.get().is_multiple_of(5) {
                0.01
            } else {
                m(r)
            }
        });
        assert!(ndr <= 100_000.0 && pdr <= 120_000.0, "{ndr} {pdr}");
    }

    #[test]
    fn stat_and_change_against_the_spread() {
        let s = stat(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!(
            (f(&s["median"]), f(&s["min"]), f(&s["max"])),
            (2.0, 1.0, 3.0)
        );
        assert_eq!(stat(&[f64::NAN]), Value::Null);
        let old = stat(&[100.0, 90.0, 110.0]);
        // Spread 20: a change of 15 is noise, one of 25 is not.
        assert!(!change(&old, &stat(&[115.0, 113.0, 117.0])).unwrap().2);
        assert!(change(&old, &stat(&[125.0, 124.0, 126.0])).unwrap().2);
        // The wider of the two spreads counts.
        assert!(!change(&old, &stat(&[125.0, 100.0, 140.0])).unwrap().2);
        assert_eq!(change(&Value::Null, &old), None);
        assert_eq!(fmt_stat(&old, 1.0, 0), "100 [90–110]");
        assert_eq!(fmt_stat(&stat(&[5.0]), 1.0, 1), "5.0");
    }

    #[test]
    fn quantiles_nearest_rank() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(
            (quantile(&v, 0.5), quantile(&v, 0.99), quantile(&v, 0.999)),
            (500.0, 990.0, 999.0)
        );
        assert!(quantile(&[], 0.5).is_nan());
    }

    /// The report's text and plots come out of a report with missing parts without panicking.
    #[test]
    fn report_renders_partial_results() {
        let r = json!({
            "config": { "runs": 1, "sizes": ["64"], "cpu_sizes": ["64"], "rtt": {"interval_us": 0} },
            "results": { "espd": { "rtt": {}, "cpu": [{"size": "64", "offered_pps": 10000}], "throughput": [{"size": "64"}] }, "kernel": {} },
        });
        assert!(report_text(&r).contains("espd"));
        for svg in [throughput_svg(&r), latency_svg(&r), cpu_svg(&r)] {
            assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        }
        assert!(compare(&r, &r).starts_with("\nchange"));
    }

    /// `--compare` says when the two reports ran a different setup, and only then.
    #[test]
    fn compare_names_a_different_setup() {
        let report = |dataplane: &str| {
            json!({
                "config": { "espd_dataplane": dataplane, "seconds": 2.0 },
                "results": { "espd": { "rtt": { "p50_us": { "median": 40.0, "min": 38.0, "max": 45.0 } } } },
            })
        };
        let (plain, coalesced) = (report(""), report("coalesce_us = 200"));
        assert!(!compare(&plain, &plain).contains("DIFFERENT SETUP"));
        let text = compare(&coalesced, &plain);
        assert!(
            text.contains(
                "DIFFERENT SETUP: config.espd_dataplane was \"\", now \"coalesce_us = 200\""
            ),
            "{text}"
        );
        assert_eq!(text.matches("DIFFERENT SETUP").count(), 1, "{text}");
        // An earlier report without these keys: nothing to say unless the new one has lines.
        let older = json!({ "config": {}, "results": {} });
        assert!(!compare(&plain, &older).contains("DIFFERENT SETUP"));
        assert!(compare(&coalesced, &older).contains("config.espd_dataplane was null"));
    }
}
