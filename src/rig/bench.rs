//! `espd bench`: throughput and latency on the rig against baselines, in one run.
//!
//! Systems, same rig and traffic: `espd` (ESP, AES-GCM-128), `null` (espd with crypto off:
//! plain AF_XDP forwarding, the I/O ceiling), `kernel` (plain kernel routing through the
//! gateway namespaces, no IPsec) and `strongswan` (kernel-libipsec; reported as skipped when
//! charon is not installed: the bench installs nothing). For each: maximal offered load per
//! size (64, 512, 1400, IMIX) → received pps, Gbit/s, loss; fixed load → one-way latency
//! percentiles (timestamps in the payload, one clock). Then espd under the same fixed load with
//! a rekey every `rekey_ms`, next to the run without. Writes report.json, throughput.svg and
//! latency.svg; `--compare old.json` prints the change.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::procs::{Proc, start_gateways};
use super::{Rig, RigSpec, ns};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub seconds: f64,
    pub sizes: Vec<usize>,
    pub systems: Vec<String>,
    pub latency_pps: u64,
    pub rekey_ms: u64,
    pub out: PathBuf,
    pub compare: Option<PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            seconds: 4.0,
            sizes: vec![64, 512, 1372, 1400, 0],
            systems: vec![
                "espd".into(),
                "null".into(),
                "kernel".into(),
                "strongswan".into(),
            ],
            latency_pps: 10_000,
            rekey_ms: 100,
            out: PathBuf::from("bench-out"),
            compare: None,
        }
    }
}

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

/// One measurement: a sink in host-b, a blaster in host-a.
fn measure(exe: &str, size: usize, seconds: f64, pps: u64) -> Value {
    let sink = Proc::spawn(
        "sink",
        "host-b",
        &[
            exe,
            "traffic",
            "sink",
            "--bind",
            "0.0.0.0:5001",
            "--idle",
            "1.0",
            "--max",
            &format!("{}", seconds + 30.0),
        ],
    );
    let Ok(sink) = sink else { return Value::Null };
    std::thread::sleep(Duration::from_millis(300));
    let src = Proc::spawn(
        "blast",
        "host-a",
        &[
            exe,
            "traffic",
            "blast",
            "--dst",
            "198.51.100.2:5001",
            "--size",
            &size.to_string(),
            "--seconds",
            &seconds.to_string(),
            "--pps",
            &pps.to_string(),
        ],
    );
    let sent = src
        .ok()
        .and_then(|s| s.wait_output(Duration::from_secs_f64(seconds + 20.0)))
        .map(|o| json_line(&o))
        .unwrap_or(Value::Null);
    let got = sink
        .wait_output(Duration::from_secs_f64(seconds + 30.0))
        .map(|o| json_line(&o))
        .unwrap_or(Value::Null);
    // The delivery rate: received over the time packets kept arriving (a system with a deep
    // queue delivers after the sender stopped).
    let secs = sent["seconds"]
        .as_f64()
        .unwrap_or(seconds)
        .max(got["seconds"].as_f64().unwrap_or(0.0))
        .max(1e-9);
    let rx = got["received"].as_u64().unwrap_or(0) as f64;
    let tx = sent["sent"].as_u64().unwrap_or(0) as f64;
    json!({
        "size": size_name(size),
        "offered_pps": tx / secs,
        "pps": rx / secs,
        "gbps": got["bytes"].as_f64().unwrap_or(0.0) * 8.0 / secs / 1e9,
        "loss": if tx > 0.0 { (tx - rx).max(0.0) / tx } else { 0.0 },
        "p50_us": got["p50_us"], "p90_us": got["p90_us"], "p99_us": got["p99_us"], "p999_us": got["p999_us"], "max_us": got["max_us"],
        "cdf": got["cdf"],
    })
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

fn progress(i: usize, n: usize, what: &str) {
    let w = 24;
    let done = w * i / n.max(1);
    println!(
        "[{}{}] {i:>2}/{n} {what}",
        "#".repeat(done),
        ".".repeat(w - done)
    );
}

/// Runs the suite; returns the report.
pub fn run(o: &BenchOptions) -> anyhow::Result<Value> {
    let exe = std::env::current_exe()?.to_string_lossy().to_string();
    std::fs::create_dir_all(&o.out)?;
    let charon = ["/usr/lib/ipsec/charon", "/usr/libexec/ipsec/charon"]
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|s| s.to_string());
    let mut systems: Vec<(String, Option<String>)> = Vec::new();
    for s in &o.systems {
        let skip = match s.as_str() {
            "espd" | "null" => None,
            "kernel" => None,
            "strongswan" => match (&charon, which("swanctl")) {
                (Some(_), true) => None,
                _ => Some("strongSwan not installed (apt-get install strongswan strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins; ./scripts/install-deps.sh does)".to_string()),
            },
            other => Some(format!("unknown system `{other}`")),
        };
        systems.push((s.clone(), skip));
    }
    let runnable: Vec<&String> = systems
        .iter()
        .filter(|(_, s)| s.is_none())
        .map(|(n, _)| n)
        .collect();
    let total = runnable.len() * (o.sizes.len() + 1) + 2;
    let mut step = 0;
    // One worker per gateway: two gateways, a sender and a sink already need four cores' worth.
    let rig = Rig::up(RigSpec {
        queues: 1,
        dir: o.out.join("rig"),
        ..Default::default()
    })?;
    let mut results = serde_json::Map::new();
    for name in &runnable {
        let mut gws = None;
        match name.as_str() {
            "espd" => gws = Some(start_gateways(&rig, &exe, &[])?),
            "null" => gws = Some(start_gateways(&rig, &exe, &["--null-crypto"])?),
            "kernel" => kernel_routing(true)?,
            "strongswan" => kernel_routing(false)?,
            _ => {}
        }
        // strongSwan queues without bound in libipsec: a flood would still be draining during the
        // next measurement, so each of its measurements gets fresh charons (and a warm-up).
        let fresh = name.as_str() == "strongswan";
        let one = |size: usize, pps: u64| -> anyhow::Result<Value> {
            if !fresh {
                return Ok(measure(&exe, size, o.seconds, pps));
            }
            let procs = strongswan_up(rig.dir(), charon.as_deref().unwrap_or_default())?;
            let mut up = false;
            for _ in 0..10 {
                if measure(&exe, 64, 0.3, 1000)["pps"].as_f64().unwrap_or(0.0) > 0.0 {
                    up = true;
                    break;
                }
            }
            let r = if up {
                measure(&exe, size, o.seconds, pps)
            } else {
                json!({"size": size_name(size), "error": "the strongSwan tunnel carried nothing"})
            };
            for mut c in procs {
                c.stop(Duration::from_secs(5));
            }
            Ok(r)
        };
        let mut tput = Vec::new();
        for &size in &o.sizes {
            step += 1;
            progress(
                step,
                total,
                &format!(
                    "{name}: {} B, maximal load, {} s",
                    size_name(size),
                    o.seconds
                ),
            );
            let mut t = one(size, 0)?;
            // A system that collapses under a flood (strongSwan's unbounded libipsec queue)
            // gets a second chance at a moderate offered load; ratios use its best rate.
            let (pps, offered) = (
                t["pps"].as_f64().unwrap_or(0.0),
                t["offered_pps"].as_f64().unwrap_or(0.0),
            );
            if fresh && pps < 0.05 * offered {
                let m = one(size, 20_000)?;
                t["at_20k_pps_offered"] = m.clone();
                t["best_pps"] = json!(pps.max(m["pps"].as_f64().unwrap_or(0.0)));
            }
            tput.push(t);
        }
        step += 1;
        progress(
            step,
            total,
            &format!("{name}: latency at {} pps, 64 B", o.latency_pps),
        );
        let lat = one(64, o.latency_pps)?;
        let mut rekey = Value::Null;
        if name.as_str() == "espd" {
            step += 1;
            progress(
                step,
                total,
                &format!(
                    "espd: {} pps, 512 B, rekey every {} ms",
                    o.latency_pps, o.rekey_ms
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
            let with = measure(&exe, 512, o.seconds, o.latency_pps);
            stop.store(true, std::sync::atomic::Ordering::Release);
            let rekeys = keyer
                .join()
                .map_err(|_| anyhow::anyhow!("keyer panicked"))??;
            step += 1;
            progress(step, total, "espd: the same without rekeys");
            let without = measure(&exe, 512, o.seconds, o.latency_pps);
            rekey = json!({ "rekeys": rekeys, "interval_ms": o.rekey_ms, "with_rekeys": with, "without_rekeys": without });
        }
        if let Some((mut a, mut b)) = gws {
            a.stop(Duration::from_secs(5));
            b.stop(Duration::from_secs(5));
        }
        if matches!(name.as_str(), "kernel" | "strongswan") {
            kernel_routing(false)?;
        }
        results.insert(
            name.to_string(),
            json!({ "throughput": tput, "latency": lat, "rekey": rekey }),
        );
    }
    drop(rig);
    let skipped: Vec<Value> = systems
        .iter()
        .filter_map(|(n, s)| s.as_ref().map(|r| json!({"system": n, "reason": r})))
        .collect();
    let ratio = |a: &str, b: &str, size: &str| -> Option<f64> {
        let get = |s: &str| {
            results.get(s)?["throughput"]
                .as_array()?
                .iter()
                .find(|t| t["size"] == size)
                .and_then(|t| t.get("best_pps").or(t.get("pps")))?
                .as_f64()
        };
        let d = get(b)?;
        (d > 0.0).then(|| get(a).map(|n| n / d)).flatten()
    };
    let mut ratios = serde_json::Map::new();
    for size in o.sizes.iter().map(|s| size_name(*s)) {
        if let Some(r) = ratio("espd", "null", &size) {
            ratios.insert(format!("espd/null@{size}"), json!(r));
        }
        if let Some(r) = ratio("espd", "kernel", &size) {
            ratios.insert(format!("espd/kernel@{size}"), json!(r));
        }
        if let Some(r) = ratio("espd", "strongswan", &size) {
            ratios.insert(format!("espd/strongswan@{size}"), json!(r));
        }
    }
    let report = json!({
        "machine": machine(),
        "espd_version": env!("CARGO_PKG_VERSION"),
        "config": { "seconds": o.seconds, "sizes": o.sizes.iter().map(|s| size_name(*s)).collect::<Vec<_>>(), "latency_pps": o.latency_pps, "rekey_ms": o.rekey_ms, "workers_per_gateway": 1, "cipher": "AES-GCM-128 (aws-lc-rs)" },
        "results": results,
        "ratios": ratios,
        "skipped": skipped,
    });
    std::fs::write(
        o.out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(o.out.join("throughput.svg"), throughput_svg(&report))?;
    std::fs::write(o.out.join("latency.svg"), latency_svg(&report))?;
    print_table(&report);
    if let Some(old) = &o.compare {
        compare(
            &report,
            &serde_json::from_str(&std::fs::read_to_string(old)?)?,
        );
    }
    println!(
        "\nwrote {}/report.json, throughput.svg, latency.svg",
        o.out.display()
    );
    Ok(report)
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

fn print_table(r: &Value) {
    println!(
        "\n{:<8} {:>6} {:>12} {:>12} {:>8} {:>7}",
        "system", "size", "offered pps", "pps", "Gbit/s", "loss"
    );
    for (name, v) in r["results"].as_object().into_iter().flatten() {
        for t in v["throughput"].as_array().into_iter().flatten() {
            println!(
                "{name:<8} {:>6} {:>12.0} {:>12.0} {:>8.3} {:>6.2}%",
                t["size"].as_str().unwrap_or(""),
                t["offered_pps"].as_f64().unwrap_or(0.0),
                t["pps"].as_f64().unwrap_or(0.0),
                t["gbps"].as_f64().unwrap_or(0.0),
                t["loss"].as_f64().unwrap_or(0.0) * 100.0
            );
        }
    }
    println!(
        "\n{:<8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "system", "load pps", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    for (name, v) in r["results"].as_object().into_iter().flatten() {
        let l = &v["latency"];
        let f = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{name:<8} {:>10.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            f("offered_pps"),
            f("p50_us"),
            f("p90_us"),
            f("p99_us"),
            f("p999_us"),
            f("max_us")
        );
    }
    if let Some(k) = r["results"]["espd"]["rekey"].as_object() {
        let (w, wo) = (&k["with_rekeys"], &k["without_rekeys"]);
        println!(
            "\nrekeys under load: {} rekeys every {} ms: loss {:.4}% (without rekeys {:.4}%), {:.0} vs {:.0} pps",
            k["rekeys"],
            k["interval_ms"],
            w["loss"].as_f64().unwrap_or(0.0) * 100.0,
            wo["loss"].as_f64().unwrap_or(0.0) * 100.0,
            w["pps"].as_f64().unwrap_or(0.0),
            wo["pps"].as_f64().unwrap_or(0.0)
        );
    }
    println!("\nratios:");
    for (k, v) in r["ratios"].as_object().into_iter().flatten() {
        println!("  {k:<22} {:.2}", v.as_f64().unwrap_or(0.0));
    }
    for s in r["skipped"].as_array().into_iter().flatten() {
        println!(
            "skipped {}: {}",
            s["system"].as_str().unwrap_or(""),
            s["reason"].as_str().unwrap_or("")
        );
    }
}

fn compare(new: &Value, old: &Value) {
    println!("\nchange against the earlier report (pps):");
    for (name, v) in new["results"].as_object().into_iter().flatten() {
        for t in v["throughput"].as_array().into_iter().flatten() {
            let size = &t["size"];
            let before = old["results"][name]["throughput"]
                .as_array()
                .and_then(|a| a.iter().find(|x| &x["size"] == size))
                .and_then(|x| x["pps"].as_f64());
            if let (Some(b), Some(n)) = (before, t["pps"].as_f64()) {
                println!(
                    "  {name:<8} {:>6} {:>12.0} → {:>12.0} ({:+.1}%)",
                    size.as_str().unwrap_or(""),
                    b,
                    n,
                    (n / b.max(1e-9) - 1.0) * 100.0
                );
            }
        }
    }
}

const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];

fn throughput_svg(r: &Value) -> String {
    let res = r["results"].as_object().cloned().unwrap_or_default();
    let sizes: Vec<String> = r["config"]["sizes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    let max = res
        .values()
        .flat_map(|v| v["throughput"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["pps"].as_f64())
        .fold(1.0f64, f64::max);
    let (w, h, left, bottom) = (720.0, 400.0, 70.0, 40.0);
    let group = (w - left - 20.0) / sizes.len().max(1) as f64;
    let bar = group / (res.len() + 1) as f64;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="18" text-anchor="middle" font-size="14">Received packets per second, maximal offered load</text>"#,
        w / 2.0
    );
    for i in 0..=4 {
        let y = h - bottom - (h - bottom - 40.0) * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{:.0}k</text>"##,
            w - 20.0,
            left - 5.0,
            y + 4.0,
            max * i as f64 / 4.0 / 1000.0
        );
    }
    for (gi, size) in sizes.iter().enumerate() {
        let x0 = left + gi as f64 * group;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{size}</text>"#,
            x0 + group / 2.0,
            h - bottom + 18.0
        );
        for (si, (_, v)) in res.iter().enumerate() {
            let pps = v["throughput"]
                .as_array()
                .and_then(|a| a.iter().find(|t| t["size"] == size.as_str()))
                .and_then(|t| t["pps"].as_f64())
                .unwrap_or(0.0);
            let bh = (h - bottom - 40.0) * pps / max;
            let _ = write!(
                s,
                r#"<rect x="{}" y="{}" width="{}" height="{bh}" fill="{}"/>"#,
                x0 + bar * (si as f64 + 0.5),
                h - bottom - bh,
                bar * 0.9,
                COLORS[si % 4]
            );
        }
    }
    for (si, name) in res.keys().enumerate() {
        legend(&mut s, left, si, name);
    }
    s.push_str("</svg>\n");
    s
}

/// The legend entry (colour swatch and name) of series `si`.
fn legend(s: &mut String, left: f64, si: usize, name: &str) {
    let _ = write!(
        s,
        r#"<rect x="{}" y="30" width="12" height="12" fill="{}"/><text x="{}" y="40">{name}</text>"#,
        left + 10.0 + si as f64 * 110.0,
        COLORS[si % 4],
        left + 26.0 + si as f64 * 110.0
    );
}

fn latency_svg(r: &Value) -> String {
    let res = r["results"].as_object().cloned().unwrap_or_default();
    let (w, h, left, bottom) = (720.0, 400.0, 70.0, 40.0);
    let maxlat = res
        .values()
        .filter_map(|v| v["latency"]["p999_us"].as_f64())
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="18" text-anchor="middle" font-size="14">One-way latency CDF at fixed load (µs, up to p99.9)</text>"#,
        w / 2.0
    );
    let px = |us: f64| left + (w - left - 20.0) * (us / maxlat).min(1.0);
    let py = |q: f64| h - bottom - (h - bottom - 40.0) * q;
    for i in 0..=4 {
        let q = i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{q:.2}</text>"##,
            py(q),
            w - 20.0,
            py(q),
            left - 5.0,
            py(q) + 4.0
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{:.0}</text>"#,
            px(maxlat * q),
            h - bottom + 18.0,
            maxlat * q
        );
    }
    for (si, (name, v)) in res.iter().enumerate() {
        let pts: Vec<String> = v["latency"]["cdf"]
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
        legend(&mut s, left, si, name);
    }
    s.push_str("</svg>\n");
    s
}
