//! The next hop's MAC changes under traffic (root; the veth rig): gateway A learns it from the
//! kernel's neighbour notifications (rtnetlink), not from a poll every few seconds, so
//! forwarding follows the change at once. Checked on delivered counts in one-second windows.
#![cfg(feature = "rig")]

use std::time::Duration;

use espd::rig::procs::{Proc, start_gateways};
use espd::rig::{Rig, RigSpec};

mod common;
use common::rig::*;

/// Packets gateway B has sent towards host B so far (its metrics).
fn delivered() -> u64 {
    let m = espd::rig::ns("gw-b", &["curl", "-sf", "http://127.0.0.1:9477/metrics"])
        .expect("gw-b metrics");
    String::from_utf8_lossy(&m.stdout)
        .lines()
        .filter(|l| l.starts_with("espd_tx_packets_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Delivered during the next `secs` seconds (a measurement window, not a wait for an event).
fn window(secs: f64) -> u64 {
    let before = delivered();
    std::thread::sleep(Duration::from_secs_f64(secs));
    delivered() - before
}

fn sh(ns: &str, args: &[&str]) {
    espd::rig::ns(ns, args).unwrap_or_else(|e| panic!("{ns}: {args:?}: {e}"));
}

#[test]
fn next_hop_mac_change_is_followed_at_once() {
    let Some(_rig_lock) = serial("next_hop_mac_change_is_followed_at_once") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("espd-rig-neigh-{}", std::process::id()));
    let r = Rig::up(RigSpec {
        queues: 2,
        xdp_mode: "native",
        dir,
        ..Default::default()
    })
    .expect("rig up");
    let (a, b) = start_gateways(&r, EXE, &[]).unwrap();
    let mut sink = Proc::spawn(
        "sink",
        "host-b",
        &[
            EXE,
            "traffic",
            "sink",
            "--bind",
            "0.0.0.0:5001",
            "--max",
            "60",
        ],
    )
    .unwrap();
    assert_eq!(
        sink.lines()
            .recv_timeout(Duration::from_secs(10))
            .as_deref(),
        Ok("ready")
    );
    // 2000 packets per second from host A to host B for the whole test.
    let mut blast = Proc::spawn(
        "blast",
        "host-a",
        &[
            EXE,
            "traffic",
            "blast",
            "--dst",
            "198.51.100.2:5001",
            "--size",
            "200",
            "--seconds",
            "20",
            "--pps",
            "2000",
        ],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let flowing = window(1.0);
    assert!(
        flowing > 1000,
        "traffic before the change: {flowing} in 1 s"
    );

    // 1. The neighbour entry points somewhere the wire drops: the bridge in `wan` is told
    //    that MAC lives behind gateway A's own port, so frames to it go nowhere. Gateway A
    //    must stop delivering at once (a 5-second poll would keep the old MAC for seconds).
    let nowhere = "02:de:ad:00:00:01";
    sh(
        "wan",
        &[
            "bridge", "fdb", "add", nowhere, "dev", "wan-a", "master", "static",
        ],
    );
    sh(
        "gw-a",
        &[
            "ip",
            "neigh",
            "replace",
            "203.0.113.2",
            "lladdr",
            nowhere,
            "dev",
            "wan0",
            "nud",
            "permanent",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let cut = window(1.0);
    assert!(
        cut < flowing / 10,
        "still delivered {cut} in 1 s after the next hop's MAC went nowhere (before: {flowing})"
    );

    // 2. Gateway B comes back with a new MAC (a failover), announced as a gratuitous ARP
    //    would update gateway A's table: delivery resumes at once, not after a poll.
    let new_mac = "02:00:00:00:bb:77";
    sh(
        "gw-b",
        &["ip", "link", "set", "dev", "wan0", "address", new_mac],
    );
    sh(
        "gw-a",
        &[
            "ip",
            "neigh",
            "replace",
            "203.0.113.2",
            "lladdr",
            new_mac,
            "dev",
            "wan0",
            "nud",
            "reachable",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let resumed = window(1.0);
    assert!(
        resumed > flowing / 2,
        "delivered only {resumed} in 1 s after the new MAC was learned (before: {flowing})"
    );

    eprintln!("delivered per second: before {flowing}, MAC nowhere {cut}, new MAC {resumed}");
    blast.stop(Duration::from_secs(5));
    sink.stop(Duration::from_secs(5));
    let (mut a, mut b) = (a, b);
    let (la, lb) = (a.stderr_text(), b.stderr_text());
    let _ = (stop(a), stop(b));
    // Both changes were logged: gateway A's next hop, gateway B's own MAC (link notification).
    assert!(
        la.contains("next hop's MAC") && la.contains(nowhere) && la.contains(new_mac),
        "gw-a log: {la}"
    );
    assert!(
        lb.contains("own MAC") && lb.contains(new_mac),
        "gw-b log: {lb}"
    );
}
