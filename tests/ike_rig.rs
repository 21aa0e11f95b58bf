//! The built-in IKEv1 on the veth rig (root): gateway A is espd negotiating its SAs, gateway B
//! is strongSwan 5.9.8 (charon, kernel-libipsec) or espd. Outside CI these print SKIPPED
//! without root or without charon; with CI=true a skip is a failure.

use std::time::{Duration, Instant};

use espd::control::api::Client;
use espd::rig::ike::{IkeRig, Peer, StrongSwan, charon_path};
use espd::rig::procs::{Proc, start_gateways};
use espd::rig::{Rig, RigSpec};
use serde_json::{Value, json};

mod common;
use common::rig::*;

/// The rig lock, or `None` after SKIPPED (root and, for `strongswan`, charon).
fn ready(name: &str, strongswan: bool) -> Option<std::sync::MutexGuard<'static, ()>> {
    let g = serial(name)?;
    if strongswan && (charon_path().is_none() || !which("swanctl")) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name}: strongSwan (charon, swanctl) is not installed; CI installs it");
        }
        eprintln!("SKIPPED {name}: strongSwan (charon, swanctl) is not installed");
        return None;
    }
    Some(g)
}

fn which(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ike_rig(name: &str, ike: IkeRig) -> Rig {
    Rig::up(RigSpec {
        queues: 1,
        xdp_mode: "native",
        dir: std::env::temp_dir().join(format!("espd-ike-{name}-{}", std::process::id())),
        lan_mtu: 1400,
        ike: Some(ike),
    })
    .expect("rig up")
}

/// Gateway A (espd) alone, for a strongSwan gateway B.
fn start_a(r: &Rig) -> Proc {
    let cfg = r.gw_a.to_string_lossy().to_string();
    let mut a = Proc::spawn("gw-a", "gw-a", &[EXE, "run", "--config", &cfg]).unwrap();
    let t = Instant::now();
    while !r.socket('a').exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(a.running(), "gw-a exited: {}", a.stderr_text());
    a
}

fn ctl(r: &Rig, me: char, req: Value) -> Value {
    Client::connect(&r.socket(me))
        .and_then(|mut c| c.call(&req))
        .unwrap_or(Value::Null)
}

/// Waits until gateway `me` has an inbound and an outbound SA and a main mode; returns its
/// `mm_list` entry.
fn wait_up(r: &Rig, me: char, within: Duration) -> Value {
    let t = Instant::now();
    loop {
        let sas = ctl(r, me, json!({"op": "sa_list"}));
        let mms = ctl(r, me, json!({"op": "mm_list"}));
        let dirs: Vec<&str> = sas["sas"]
            .as_array()
            .map(|v| v.iter().filter_map(|s| s["direction"].as_str()).collect())
            .unwrap_or_default();
        if dirs.contains(&"inbound")
            && dirs.contains(&"outbound")
            && mms["main_modes"].as_array().is_some_and(|m| !m.is_empty())
        {
            return mms["main_modes"][0].clone();
        }
        assert!(
            t.elapsed() < within,
            "gw-{me}: no SAs after {within:?}: {sas} {mms} {}",
            ctl(r, me, json!({"op": "ike_list"}))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// strongSwan's IKE SA cookies (`swanctl --list-sas`: `..., IKEv1, 9a0c..._i 0011..._r*`).
fn swan_cookies(s: &StrongSwan) -> Vec<(String, String)> {
    let out = s
        .swanctl(&["--list-sas", "--ike", "espd"])
        .unwrap_or_default();
    out.lines()
        .filter(|l| l.contains("IKEv1"))
        .filter_map(|l| {
            let mut i = None;
            let mut rr = None;
            for w in l.split_whitespace() {
                let w = w.trim_end_matches(',').trim_end_matches('*');
                if let Some(c) = w.strip_suffix("_i") {
                    i = Some(c.to_string());
                }
                if let Some(c) = w.strip_suffix("_r") {
                    rr = Some(c.to_string());
                }
            }
            Some((i?, rr?))
        })
        .collect()
}

fn udp_both_ways(n: u64) {
    assert_all_arrived(
        &udp(
            "host-a",
            "host-b",
            "198.51.100.2:5001",
            "0.0.0.0:5001",
            n,
            1000,
            2000,
        ),
        n,
        "UDP a→b",
    );
    assert_all_arrived(
        &udp(
            "host-b",
            "host-a",
            "192.0.2.2:5001",
            "0.0.0.0:5001",
            n,
            200,
            2000,
        ),
        n,
        "UDP b→a",
    );
}

fn check_setup_with_strongswan(name: &str, espd_initiates: bool) {
    let Some(_g) = ready(name, true) else {
        return;
    };
    let mut ike = IkeRig::new(Peer::StrongSwan);
    if !espd_initiates {
        ike.initiators.clear();
    }
    let r = ike_rig(name, ike);
    let sw = StrongSwan::start(r.dir()).unwrap();
    let _a = start_a(&r);
    if !espd_initiates {
        sw.swanctl(&["--initiate", "--child", "net", "--timeout", "20"])
            .unwrap();
    }
    let mm = wait_up(&r, 'a', Duration::from_secs(20));
    let cookies = swan_cookies(&sw);
    assert_eq!(
        cookies,
        vec![(
            mm["icookie"].as_str().unwrap().to_string(),
            mm["rcookie"].as_str().unwrap().to_string()
        )],
        "espd's main mode vs strongSwan's: {mm}"
    );
    udp_both_ways(2000);
    let t = tcp(
        "host-a",
        "host-b",
        "198.51.100.2:5003",
        "0.0.0.0:5003",
        2_000_000,
    );
    assert_eq!(t["ok"], true, "TCP a→b: {t}");
}

#[test]
fn espd_initiates_to_strongswan_and_traffic_flows() {
    check_setup_with_strongswan("espd_initiates_to_strongswan_and_traffic_flows", true);
}

#[test]
fn strongswan_initiates_to_espd_and_traffic_flows() {
    check_setup_with_strongswan("strongswan_initiates_to_espd_and_traffic_flows", false);
}

#[test]
fn espd_to_espd_setup_and_traffic() {
    let Some(_g) = ready("espd_to_espd_setup_and_traffic", false) else {
        return;
    };
    let r = ike_rig("e2e", IkeRig::new(Peer::Espd));
    let (_a, _b) = start_gateways(&r, EXE, &[]).unwrap();
    let ma = wait_up(&r, 'a', Duration::from_secs(20));
    let mb = wait_up(&r, 'b', Duration::from_secs(20));
    assert_eq!(
        (&ma["icookie"], &ma["rcookie"]),
        (&mb["icookie"], &mb["rcookie"])
    );
    udp_both_ways(2000);
}
