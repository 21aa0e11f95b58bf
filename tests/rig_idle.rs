//! The workers' idle strategies on the rig (issue 13): both gateways run with
//! `dataplane.idle = "sleep"`, `"spin"` and `"busy_poll"` in turn; with each, UDP both ways at
//! a light and a heavier fixed rate arrives complete (0 lost, 0 dropped), and the gateway
//! reports the strategy it ran (startup log and stop summary). A fourth run adds wake-up
//! coalescing (`coalesce_us = 200`) to `sleep`: the same traffic arrives complete, and the
//! steady 20k pps made the workers take timed sleeps. Not a timing test: the figures
//! come from `scripts/rig-idle.py`. Root only (network namespaces, XDP); SKIPPED otherwise, a
//! failure in CI.
#![cfg(feature = "rig")]

use espd::rig::procs::start_gateways;
use espd::rig::{Rig, RigSpec};

mod common;
use common::rig::*;

/// Adds `lines` to the `[dataplane]` section of a generated gateway config.
fn set_dataplane(cfg: &std::path::Path, lines: &str) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let text = text.replacen("[dataplane]\n", &format!("[dataplane]\n{lines}"), 1);
    std::fs::write(cfg, text).unwrap();
}

/// The log without terminal colour codes (ESC [ ... m).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (false, c) => out.push(c),
            (true, 'm') => esc = false,
            (true, _) => {}
        }
    }
    out
}

fn strategy(name: &str, lines: &str, spin_us: u64, coalesce_us: u64) {
    let dir = std::env::temp_dir().join(format!(
        "espd-rig-idle-{name}-{coalesce_us}-{}",
        std::process::id()
    ));
    let r = Rig::up(RigSpec {
        queues: 1,
        xdp_mode: "native",
        dir,
        ..Default::default()
    })
    .expect("rig up");
    for cfg in [&r.gw_a, &r.gw_b] {
        set_dataplane(cfg, lines);
    }
    let (mut a, b) = start_gateways(&r, EXE, &["--fresh-keys"]).unwrap();
    // Light traffic (every packet after a quiet spell: the wake-up path) and a steady 20k pps
    // (the spin/sleep alternation), both ways.
    for (n, pps, size) in [(500, 200, 64), (20_000, 20_000, 64), (5_000, 5_000, 1300)] {
        assert_all_arrived(
            &udp(
                "host-a",
                "host-b",
                "198.51.100.2:5001",
                "0.0.0.0:5001",
                n,
                size,
                pps,
            ),
            n,
            &format!("{name}: UDP a→b, {pps} pps of {size} B"),
        );
        assert_all_arrived(
            &udp(
                "host-b",
                "host-a",
                "192.0.2.2:5001",
                "0.0.0.0:5001",
                n,
                size,
                pps,
            ),
            n,
            &format!("{name}: UDP b→a, {pps} pps of {size} B"),
        );
    }
    // Traffic passed, so gw-a has long logged its start.
    let log = strip_ansi(&a.stderr_text());
    assert!(
        log.contains(&format!("idle={name}")),
        "{name}: the startup log does not name the strategy: {log}"
    );
    let (sa, sb) = (stop(a), stop(b));
    for s in [&sa, &sb] {
        assert_eq!(s["idle"], name, "{name}: summary names the strategy: {s}");
        assert_eq!(s["spin_us"], spin_us, "{s}");
        assert_eq!(s["coalesce_us"], coalesce_us, "{s}");
        // 20k pps (each way in turn) is 4 frames per 200 µs at each gateway: timed sleeps
        // happen; with coalescing off there are none.
        assert!(s["coalesced_sleeps"].as_u64().is_some(), "{s}");
        assert_eq!(
            s["coalesced_sleeps"].as_u64() > Some(0),
            coalesce_us > 0,
            "{name}, coalesce_us = {coalesce_us}: {s}"
        );
        assert_eq!(s["drops_by_code"], serde_json::json!({}), "no drops: {s}");
        assert_eq!(s["tx_ring_full"], 0, "{s}");
        assert_eq!(s["kernel_rx_dropped"], 0, "{s}");
        assert_eq!(s["rx_packets"], s["tx_packets"], "{s}");
        // Between the bursts there were quiet spells: every strategy sleeps in them.
        assert!(
            s["idle_sleeps"].as_u64() > Some(0),
            "{name}: never slept: {s}"
        );
    }
    drop(r);
}

#[test]
fn every_idle_strategy_forwards_without_loss() {
    let Some(_rig_lock) = serial("every_idle_strategy_forwards_without_loss") else {
        return;
    };
    strategy("sleep", "idle = \"sleep\"\n", 0, 0);
    strategy("spin", "idle = \"spin\"\nspin_us = 30\n", 30, 0);
    strategy("busy_poll", "idle = \"busy_poll\"\n", 50, 0);
    strategy("sleep", "idle = \"sleep\"\ncoalesce_us = 200\n", 0, 200);
}
