//! `espd bench` on the rig (root; network namespaces; SKIPPED without root, a failure in CI):
//! a short run of the whole suite on kernel routing and espd, two runs each, interleaved. Its
//! round trips agree with `ping` on the same rig and system, and the report carries every
//! figure (RTT percentiles, CPU per packet, NDR ≤ PDR, maximum delivered, medians with their
//! spread) in report.json, report.txt and the plots.
#![cfg(feature = "rig")]

use std::process::Command;

mod common;
use common::rig::{EXE, serial};

/// The bench's median p50 round trip against `ping`'s on the same rig and system: no more than
/// max(30 %, 20 µs) below it, no more than max(150 %, 50 µs) above it. Not symmetric, because
/// the bench's UDP round trip carries work that `ping` skips: two process wake-ups (an echo
/// process answers, and the requester reads the reply; ping's echo is answered by host-b's
/// kernel and ping takes its receive time from the kernel's timestamp), and, through espd, one
/// gateway wake-up (host-b's kernel answers ping inside gw-b's own transmit, so gw-b's worker
/// is still awake for the way back; the UDP reply comes after it went to sleep). Measured on
/// this rig (2 vCPUs, medians of 3 runs, others compiling), bench vs ping p50: release build
/// kernel 29 vs 14 µs, espd 126 vs 85, null 125 vs 84, strongSwan 263 vs 270; debug build
/// (what `cargo test` runs) kernel 40 vs 14, espd 742 vs 327, null 549 vs 255. The one-way
/// figure the bench reported before failed this by far (kernel p90 1,469 µs, ping 19 µs).
fn agrees_with_ping(bench_p50: f64, ping_p50: f64) -> bool {
    let d = bench_p50 - ping_p50;
    d >= -(0.3 * ping_p50).max(20.0) && d <= (1.5 * ping_p50).max(50.0)
}

fn med(v: &serde_json::Value) -> f64 {
    v["median"].as_f64().unwrap_or(f64::NAN)
}

#[test]
fn bench_round_trips_agree_with_ping_and_the_report_has_every_figure() {
    let name = "bench_round_trips_agree_with_ping_and_the_report_has_every_figure";
    let Some(_g) = serial(name) else { return };
    let has_ping = Command::new("sh")
        .args(["-c", "command -v ping"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_ping {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name}: ping is missing (apt-get install iputils-ping)"
        );
        eprintln!("SKIPPED {name}: ping is not installed (apt-get install iputils-ping)");
        return;
    }
    let out = std::env::temp_dir().join(format!("espd-bench-test-{}", std::process::id()));
    let o = Command::new(EXE)
        .args([
            "bench",
            "--systems",
            "kernel,espd",
            "--sizes",
            "64",
            "--runs",
            "2",
            "--seconds",
            "0.5",
            "--trial-seconds",
            "0.2",
            "--precision",
            "0.1",
            "--cpu-loads",
            "5000",
            "--cpu-sizes",
            "64",
            "--rtt-count",
            "500",
            "--rtt-interval-us",
            "2000",
            "--rekey-ms",
            "0",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("espd bench");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "espd bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let text = std::fs::read_to_string(out.join("report.txt")).unwrap();
    let svgs: Vec<String> = ["throughput.svg", "latency.svg", "cpu.svg"]
        .iter()
        .map(|f| std::fs::read_to_string(out.join(f)).unwrap())
        .collect();
    let _ = std::fs::remove_dir_all(&out);
    println!("{text}");
    assert_eq!(report["config"]["runs"], 2);
    for sys in ["kernel", "espd"] {
        let r = &report["results"][sys];
        assert_eq!(r["errors"], serde_json::json!([]), "{sys}: {stdout}");
        // Round trips: every request answered, percentiles ordered, two runs.
        let t = &r["rtt"];
        assert_eq!(t["lost"], 0, "{sys}: {t}");
        assert_eq!(t["p50_us"]["runs"].as_array().map(Vec::len), Some(2));
        let p: Vec<f64> = ["p50_us", "p90_us", "p99_us", "p999_us"]
            .iter()
            .map(|k| med(&t[*k]))
            .collect();
        assert!(
            p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]),
            "{sys}: {p:?}"
        );
        let ping = med(&t["ping"]["p50_us"]);
        assert_eq!(
            t["ping"]["received"],
            serde_json::json!([500, 500]),
            "{sys}: {}",
            t["ping"]
        );
        assert!(
            agrees_with_ping(p[0], ping),
            "{sys}: bench RTT p50 {:.0} µs, ping p50 {ping:.0} µs\n{text}",
            p[0]
        );
        // CPU per packet at 5,000 pps of 64 B: below saturation; process CPU for espd only.
        let c = &r["cpu"][0];
        assert_eq!(
            (c["size"].as_str(), c["offered_pps"].as_u64()),
            (Some("64"), Some(5000))
        );
        assert_eq!(c["saturated"], false, "{sys}: {c}");
        assert!(med(&c["machine_busy_us_per_pkt"]) > 0.0, "{sys}: {c}");
        // The machine's busy time includes the load tools' CPU (to /proc's tick rounding: two
        // ticks at each end of the window, 10 ms each).
        for t in c["trials"].as_array().unwrap() {
            let cpu = &t["cpu"];
            let slack = 4.0 * 10_000.0 / cpu["packets"].as_f64().unwrap();
            assert!(
                cpu["machine_busy_us_per_pkt"].as_f64().unwrap()
                    >= cpu["load_tools_us_per_pkt"].as_f64().unwrap() - slack,
                "{sys}: {cpu}"
            );
        }
        assert!(med(&c["machine_net_us_per_pkt"]).is_finite(), "{sys}: {c}");
        if sys == "espd" {
            assert!(med(&c["process_us_per_pkt"]) > 0.0, "{c}");
        } else {
            assert!(c["process_us_per_pkt"].is_null(), "{c}");
        }
        // RFC 2544: 0 < NDR ≤ PDR ≤ what the sender offered; maximum delivered kept apart.
        let tp = &r["throughput"][0];
        let (ndr, pdr) = (med(&tp["ndr"]["pps"]), med(&tp["pdr"]["pps"]));
        let offered = med(&tp["max_delivered"]["offered_pps"]);
        assert!(
            0.0 < ndr && ndr <= pdr && pdr <= offered,
            "{sys}: NDR {ndr}, PDR {pdr}, sender {offered}"
        );
        assert!(med(&tp["max_delivered"]["pps"]) > 0.0, "{sys}: {tp}");
        assert_eq!(tp["trials_per_phase"].as_array().map(Vec::len), Some(2));
    }
    assert!(report["ratios"]["espd/kernel NDR@64"].as_f64().is_some());
    for heading in [
        "Round trip (RTT)",
        "CPU per forwarded packet",
        "RFC 2544",
        "NDR",
        "PDR",
    ] {
        assert!(
            text.contains(heading),
            "report.txt lacks {heading}:\n{text}"
        );
    }
    for s in &svgs {
        assert!(
            s.contains("kernel")
                && s.contains("espd")
                && s.contains("<polyline") | s.contains("<rect")
        );
    }
    // The bench removed its rig.
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ns.stdout).contains("gw-a"),
        "the rig outlived the bench"
    );
}

/// `--dataplane` lines are checked in the gateway configs before the rig is built: a bad line
/// fails at once with the config's own error, naming the key, and nothing is set up (no root
/// needed to see it).
#[test]
fn bad_dataplane_lines_fail_before_the_rig_is_built() {
    // Serial with the bench test above even without root: should the check ever let the lines
    // through, this bench must not take down that test's rig.
    let _g = common::rig::lock();
    let out = std::env::temp_dir().join(format!("espd-bench-dp-{}", std::process::id()));
    for (lines, want) in [
        (
            "coalesce_us = 5000",
            "dataplane.coalesce_us: 5000 is more than 1000",
        ),
        ("idle = \"nap\"", "dataplane.idle"),
    ] {
        let o = Command::new(EXE)
            .args([
                "bench",
                "--systems",
                "espd",
                "--runs",
                "1",
                "--seconds",
                "0.1",
            ])
            .args(["--dataplane", lines, "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{lines}: accepted");
        assert!(
            err.contains("--dataplane: ") && err.contains(want),
            "{lines}: {err}"
        );
        assert!(
            !out.join("rig").exists(),
            "{lines}: the rig's files were written"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
