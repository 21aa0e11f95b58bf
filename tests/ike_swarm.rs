//! `espd bench --ike` on the rig (root, and charon for strongSwan): a small swarm sets up every
//! main + quick mode against espd and strongSwan as responders, and the report carries the
//! figures the README quotes (rate, latency percentiles, responder CPU per setup). Outside CI
//! it prints SKIPPED without root or charon; with CI=true a skip is a failure.
#![cfg(feature = "rig")]

use serde_json::Value;

mod common;
use common::rig::*;

#[test]
fn a_small_swarm_sets_up_every_peer_against_espd_and_strongswan() {
    let Some(_g) = serial("ike_swarm") else {
        return;
    };
    if espd::rig::ike::charon_path().is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("ike_swarm: strongSwan (charon) is not installed; CI installs it");
        }
        eprintln!("SKIPPED ike_swarm: strongSwan (charon) is not installed");
        return;
    }
    let out = std::env::temp_dir().join(format!("espd-ike-swarm-test-{}", std::process::id()));
    let o = std::process::Command::new(EXE)
        .args([
            "bench",
            "--ike",
            "--ike-peers",
            "40",
            "--ike-window",
            "8",
            "--runs",
            "1",
        ])
        .args(["--systems", "espd,strongswan", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ike-swarm.json")).unwrap())
            .unwrap();
    let _ = std::fs::remove_dir_all(&out);
    for sys in ["espd", "strongswan"] {
        let t = report["trials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["system"] == sys)
            .unwrap_or_else(|| panic!("no {sys} trial: {report}"));
        assert_eq!(t["setups"], 40, "{sys}: {t}");
        assert_eq!(t["failed"], 0, "{sys}: {t}");
        let l = &t["latency_ms"];
        let (p50, p99) = (l["p50"].as_f64().unwrap(), l["p99"].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p99, "{sys}: {t}");
        assert!(t["setups_per_s"].as_f64().unwrap() > 0.0, "{sys}: {t}");
        // The responder's CPU time was read (/proc/PID/stat; 10 ms ticks, so it may be 0
        // for so few setups).
        assert!(t["responder_cpu_s"].as_f64().is_some(), "{sys}: {t}");
        assert!(text.contains(&format!("| {sys} |")), "{text}");
    }
    assert!(text.contains("espd ÷ strongSwan setups/s"), "{text}");
}
