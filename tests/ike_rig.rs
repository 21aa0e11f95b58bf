//! The built-in IKEv1 on the veth rig (root): gateway A is espd negotiating its SAs, gateway B
//! is strongSwan 5.9.8 (charon, kernel-libipsec) or espd. Outside CI these print SKIPPED
//! without root or without charon; with CI=true a skip is a failure.
#![cfg(feature = "rig")]

use std::time::{Duration, Instant};

use espd::control::api::Client;
use espd::rig::ike::{IkeRig, Peer, StrongSwan, charon_path};
use espd::rig::procs::{Proc, start_gateways};
use espd::rig::{Rig, RigSpec, esp_sa_uat};
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
        dataplane: String::new(),
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

/// The first child's keys as charon logged them (level 4): `(initiator key, responder key)`,
/// hex key‖salt, in the order `encryption initiator key` / `encryption responder key`.
fn charon_child_keys(log: &str) -> Option<(String, String)> {
    let mut keys = Vec::new();
    let mut lines = log.lines();
    while let Some(l) = lines.next() {
        let Some(rest) = l
            .split_once("encryption initiator key => ")
            .or_else(|| l.split_once("encryption responder key => "))
            .map(|(_, r)| r)
        else {
            continue;
        };
        let want: usize = rest.split_whitespace().next()?.parse().ok()?;
        let mut hex = String::new();
        for d in lines.by_ref() {
            let Some((_, bytes)) = d.split_once(": ") else {
                break;
            };
            // `   0: 1D 72 67 ... 16 bytes ...  .rgp.s..k` (an ASCII column may follow).
            hex.extend(
                bytes
                    .split_whitespace()
                    .take_while(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()))
                    .take(16)
                    .map(|b| b.to_lowercase()),
            );
            if hex.len() >= 2 * want {
                break;
            }
        }
        keys.push(hex);
        if keys.len() == 2 {
            return Some((keys[0].clone(), keys[1].clone()));
        }
    }
    None
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

/// `n` datagrams each way at 1,000 per second, at the same time: (a→b, b→a) reports.
fn udp_at_1k_both_ways(n: u64) -> (Value, Value) {
    let back = std::thread::spawn(move || {
        udp(
            "host-b",
            "host-a",
            "192.0.2.2:5002",
            "0.0.0.0:5002",
            n,
            200,
            1000,
        )
    });
    let fwd = udp(
        "host-a",
        "host-b",
        "198.51.100.2:5001",
        "0.0.0.0:5001",
        n,
        200,
        1000,
    );
    (fwd, back.join().unwrap())
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
    let (mut cap, pcap) = espd::rig::procs::capture_wan(&r, None, None).unwrap();
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
    // tshark, given the keys strongSwan logged for the negotiated child, decrypts the wire:
    // every ESP-in-UDP packet with a good ICV (the keys espd derived are the same).
    std::thread::sleep(Duration::from_millis(300));
    cap.stop(Duration::from_secs(2));
    let (ki, kr) = charon_child_keys(&sw.log()).expect("charon logged the child's keys");
    let spi = |dir: &str| {
        ctl(&r, 'a', json!({"op": "sa_list"}))["sas"]
            .as_array()
            .and_then(|v| v.iter().find(|s| s["direction"] == dir))
            .and_then(|s| s["spi"].as_str())
            .and_then(|s| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .unwrap()
    };
    // The quick mode's initiator key protects initiator → responder traffic.
    let (k_ab, k_ba) = if espd_initiates {
        (&ki, &kr)
    } else {
        (&kr, &ki)
    };
    let sas = [
        esp_sa_uat("203.0.113.1", "203.0.113.2", spi("outbound"), k_ab),
        esp_sa_uat("203.0.113.2", "203.0.113.1", spi("inbound"), k_ba),
    ];
    let (esp, stderr) = tshark_esp(&pcap, &sas, "udp.dstport");
    let good = esp.iter().filter(|l| l.starts_with("1\t")).count();
    if esp.len() < 4000 {
        let dump = std::process::Command::new("tshark")
            .arg("-r")
            .arg(&pcap)
            .args(["-c", "40"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        panic!(
            "{} ESP packets on the wire; tshark said {stderr}; first packets:\n{dump}",
            esp.len()
        );
    }
    assert!(
        good * 100 >= esp.len() * 99,
        "tshark found {good} of {} ICVs good with the negotiated keys",
        esp.len()
    );
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
    // The operator's view: `espd ctl ike list`.
    let o = std::process::Command::new(EXE)
        .args(["ctl", "--socket"])
        .arg(r.socket('a'))
        .args(["--json", "ike", "list"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(v["peers"][0]["state"], "established", "{v}");
    assert_eq!(v["peers"][0]["tunnel"], "peer", "{v}");
    assert_eq!(
        v["peers"][0]["main_modes"][0]["icookie"], ma["icookie"],
        "{v}"
    );
}

/// Subscribes to gateway `me`'s events.
fn subscribe(r: &Rig, me: char) -> Client {
    let mut c = Client::connect(&r.socket(me)).unwrap();
    assert_eq!(
        c.call(&json!({"op": "subscribe"})).unwrap()["subscribed"],
        true
    );
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    c
}

/// Events read from `sub` until `until` says stop or `within` passes.
fn events_until(
    sub: &mut Client,
    within: Duration,
    until: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let t = Instant::now();
    let mut v = Vec::new();
    while t.elapsed() < within && !until(&v) {
        if let Ok(e) = sub.read_line()
            && e.get("event").is_some()
        {
            v.push(e);
        }
    }
    v
}

fn named<'a>(ev: &'a [Value], name: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["event"] == name).collect()
}

/// Quick-mode rekeys under 1,000 packets/s each way: every packet arrives. `espd_first`:
/// espd's soft lifetime comes before strongSwan's rekey_time (espd initiates the rekeys),
/// else strongSwan's does.
fn rekeys_with_strongswan(name: &str, espd_first: bool, seconds: u64) {
    let Some(_g) = ready(name, true) else {
        return;
    };
    let mut ike = IkeRig::new(Peer::StrongSwan);
    ike.qm_lifetime_s = 20;
    ike.rekey_margin_s = if espd_first { 13 } else { 8 };
    ike.sw_rekey_s = 9;
    ike.sw_life_s = 30;
    let r = ike_rig(if espd_first { "rekey-e" } else { "rekey-s" }, ike);
    let sw = StrongSwan::start(r.dir()).unwrap();
    let a = start_a(&r);
    wait_up(&r, 'a', Duration::from_secs(20));
    let mut sub = subscribe(&r, 'a');
    let n = seconds * 1000;
    let (fwd, back) = udp_at_1k_both_ways(n);
    let ev = events_until(&mut sub, Duration::from_millis(500), |_| false);
    let qm = named(&ev, "qm_up").len();
    if fwd["unique"] != n || back["unique"] != n {
        // Where the packets went: gw-a's drops by code and its events, strongSwan's view.
        let summary = stop(a);
        let swan = sw.swanctl(&["--list-sas"]).unwrap_or_default();
        panic!(
            "lost across rekeys: a→b {fwd}, b→a {back}; gw-a {summary}; events {ev:?}; strongSwan {swan}"
        );
    }
    assert!(qm >= 2, "{qm} quick modes in {seconds} s: {ev:?}");
    let rekeys: Vec<bool> = named(&ev, "qm_up")
        .iter()
        .filter(|e| e["rekey"] == true)
        .map(|e| e["initiator"] == true)
        .collect();
    assert!(!rekeys.is_empty(), "no rekey in {seconds} s: {ev:?}");
    if espd_first {
        assert!(
            rekeys.iter().all(|i| *i),
            "strongSwan started some: {rekeys:?}"
        );
    } else {
        assert!(
            rekeys.iter().any(|i| !*i),
            "strongSwan started none: {rekeys:?}"
        );
    }
    drop(sw);
}

#[test]
fn rekeys_by_strongswan_under_traffic_lose_nothing() {
    rekeys_with_strongswan("rekeys_by_strongswan_under_traffic_lose_nothing", false, 30);
}

#[test]
fn rekeys_by_espd_under_traffic_lose_nothing() {
    rekeys_with_strongswan("rekeys_by_espd_under_traffic_lose_nothing", true, 25);
}

/// `swanctl --terminate --ike`: strongSwan's ESP DELETEs remove the children, then exactly
/// one 13885 `peer_delete` with strongSwan's cookies, within a second.
#[test]
fn strongswan_terminate_gives_one_13885_peer_delete() {
    let name = "strongswan_terminate_gives_one_13885_peer_delete";
    let Some(_g) = ready(name, true) else {
        return;
    };
    let r = ike_rig("term", IkeRig::new(Peer::StrongSwan));
    let sw = StrongSwan::start(r.dir()).unwrap();
    let _a = start_a(&r);
    wait_up(&r, 'a', Duration::from_secs(20));
    let cookies = swan_cookies(&sw);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let mut sub = subscribe(&r, 'a');
    let t = Instant::now();
    sw.swanctl(&["--terminate", "--ike", "espd", "--timeout", "5"])
        .unwrap();
    let ev = events_until(&mut sub, Duration::from_secs(3), |v| {
        !named(v, "mm_expired").is_empty()
    });
    let took = t.elapsed();
    let mm = named(&ev, "mm_expired");
    assert_eq!(mm.len(), 1, "{ev:?}");
    assert_eq!(mm[0]["cause"], "peer_delete");
    assert_eq!(mm[0]["code"], 13885);
    assert_eq!(
        (
            mm[0]["icookie"].as_str().unwrap(),
            mm[0]["rcookie"].as_str().unwrap()
        ),
        (cookies[0].0.as_str(), cookies[0].1.as_str())
    );
    assert!(
        took < Duration::from_secs(1) + Duration::from_millis(500),
        "{took:?}"
    );
    let removed: Vec<_> = named(&ev, "sa_removed")
        .into_iter()
        .filter(|e| e["reason"] == "peer_delete")
        .collect();
    assert!(!removed.is_empty(), "the children were not deleted: {ev:?}");
    // No more 13885 follows.
    let later = events_until(&mut sub, Duration::from_secs(2), |_| false);
    assert!(named(&later, "mm_expired").is_empty(), "{later:?}");
}

/// espd's own main-mode lifetime (30 s): one 13885 `lifetime` at 30 ± 1 s, and strongSwan's
/// main mode goes away (our DELETE arrived).
#[test]
fn espd_main_mode_lifetime_gives_13885_and_a_delete() {
    let name = "espd_main_mode_lifetime_gives_13885_and_a_delete";
    let Some(_g) = ready(name, true) else {
        return;
    };
    let mut ike = IkeRig::new(Peer::StrongSwan);
    ike.mm_lifetime_s = 30;
    ike.rekey_margin_s = 10;
    let r = ike_rig("life", ike);
    let sw = StrongSwan::start(r.dir()).unwrap();
    let _a = start_a(&r);
    let mm = wait_up(&r, 'a', Duration::from_secs(20));
    let mut sub = subscribe(&r, 'a');
    assert_eq!(mm["lifetime_s"], 30, "{mm}");
    let left = mm["expires_in_s"].as_f64().unwrap();
    let due = Instant::now() + Duration::from_secs_f64(left);
    let ev = events_until(&mut sub, Duration::from_secs(40), |v| {
        !named(v, "mm_expired").is_empty()
    });
    let at = Instant::now();
    let gone = named(&ev, "mm_expired");
    assert_eq!(gone.len(), 1, "{ev:?}");
    assert_eq!(gone[0]["cause"], "lifetime");
    assert_eq!(gone[0]["icookie"], mm["icookie"]);
    let off = if at > due {
        (at - due).as_secs_f64()
    } else {
        -(due - at).as_secs_f64()
    };
    assert!(off.abs() <= 1.0, "13885 {off:+.2} s off its 30 s lifetime");
    let up = [mm.clone()];
    let t = Instant::now();
    while !swan_cookies(&sw)
        .iter()
        .all(|(i, _)| Some(i.as_str()) != up[0]["icookie"].as_str())
    {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "strongSwan still has the main mode"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Freezes process `pid` (gateway B: charon or espd) with SIGSTOP: gw-a (dpd_delay 2 s,
/// dpd_timeout 6 s) gives exactly one 13886 within 2 + 6 + 2 s, never a 13885, and clears the
/// children. The process is thawed before the asserts.
fn assert_dpd_gives_13886(r: &Rig, pid: u32) {
    let mut sub = subscribe(r, 'a');
    let pid = pid.to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success())
    };
    let t = Instant::now();
    assert!(signal("-STOP"), "SIGSTOP to {pid}");
    let ev = events_until(&mut sub, Duration::from_secs(12), |v| {
        !named(v, "mm_dead").is_empty()
    });
    let took = t.elapsed();
    signal("-CONT");
    let dead = named(&ev, "mm_dead");
    assert_eq!(dead.len(), 1, "{ev:?}");
    assert_eq!(dead[0]["code"], 13886);
    assert!(took <= Duration::from_secs(2 + 6 + 2), "{took:?}");
    assert!(
        named(&ev, "mm_expired").is_empty(),
        "DPD is never 13885: {ev:?}"
    );
    let later = events_until(&mut sub, Duration::from_millis(800), |_| false);
    let cleared = named(&ev, "sa_removed").len() + named(&later, "sa_removed").len();
    assert!(cleared >= 2, "children not cleared: {ev:?} {later:?}");
}

/// DPD: charon frozen with SIGSTOP: one 13886 within dpd_delay + dpd_timeout + 2 s, the
/// children cleared (`dpd_action = clear`), and never a 13885.
#[test]
fn dpd_declares_a_frozen_strongswan_dead() {
    let name = "dpd_declares_a_frozen_strongswan_dead";
    let Some(_g) = ready(name, true) else {
        return;
    };
    let mut ike = IkeRig::new(Peer::StrongSwan);
    ike.dpd_delay_s = 2;
    ike.dpd_timeout_s = 6;
    let r = ike_rig("dpd", ike);
    let mut sw = StrongSwan::start(r.dir()).unwrap();
    let _a = start_a(&r);
    wait_up(&r, 'a', Duration::from_secs(20));
    assert_dpd_gives_13886(&r, sw.proc.pid());
    sw.proc.stop(Duration::from_secs(2));
}

/// A wrong pre-shared key: `mm_failed` with an authentication code; the daemon keeps running.
#[test]
fn wrong_psk_fails_with_its_code() {
    let Some(_g) = ready("wrong_psk_fails_with_its_code", false) else {
        return;
    };
    let r = ike_rig("psk", IkeRig::new(Peer::Espd));
    std::fs::write(r.dir().join("gw-b.psk"), "not-the-same-secret\n").unwrap();
    let (mut a, _b) = start_gateways(&r, EXE, &[]).unwrap();
    // The responder finds the initiator's hash wrong (its key did not decrypt MM5 right).
    let mut sub = subscribe(&r, 'b');
    let ev = events_until(&mut sub, Duration::from_secs(15), |v| {
        !named(v, "mm_failed").is_empty()
    });
    let f = named(&ev, "mm_failed");
    assert!(!f.is_empty(), "{ev:?}");
    let code = f[0]["code"].as_u64().unwrap();
    assert!([13801, 13870].contains(&code), "{}", f[0]);
    assert!(named(&ev, "mm_up").is_empty(), "{ev:?}");
    assert!(a.running(), "gw-a died: {}", a.stderr_text());
}

/// strongSwan reauthenticates (a new main mode adopts the children, then it deletes the old
/// one): exactly one 13885 `peer_delete` per reauthentication, with the old cookies, and the
/// traffic goes on without a loss.
#[test]
fn strongswan_reauth_gives_one_13885_and_traffic_goes_on() {
    let name = "strongswan_reauth_gives_one_13885_and_traffic_goes_on";
    let Some(_g) = ready(name, true) else {
        return;
    };
    let mut ike = IkeRig::new(Peer::StrongSwan);
    ike.sw_reauth_s = 8;
    let r = ike_rig("reauth", ike);
    let _sw = StrongSwan::start(r.dir()).unwrap();
    let _a = start_a(&r);
    let first = wait_up(&r, 'a', Duration::from_secs(20));
    let mut sub = subscribe(&r, 'a');
    let n = 12_000;
    let (fwd, back) = udp_at_1k_both_ways(n);
    let ev = events_until(&mut sub, Duration::from_millis(500), |_| false);
    assert_all_arrived(&fwd, n, "a→b across the reauthentication");
    assert_all_arrived(&back, n, "b→a across the reauthentication");
    let gone = named(&ev, "mm_expired");
    assert!(!gone.is_empty(), "no 13885 in 12 s: {ev:?}");
    assert_eq!(gone[0]["cause"], "peer_delete", "{ev:?}");
    assert_eq!(gone[0]["icookie"], first["icookie"], "{ev:?}");
    // One per main mode: no cookie pair ends twice.
    let mut pairs: Vec<(String, String)> = gone
        .iter()
        .map(|e| (e["icookie"].to_string(), e["rcookie"].to_string()))
        .collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), gone.len(), "{ev:?}");
    assert!(
        named(&ev, "mm_up").len() >= gone.len(),
        "a main mode ended without a new one: {ev:?}"
    );
}

/// Garbage, truncated ISAKMP and a flood of MM1s from many ports at gw-a's IKE ports: dropped
/// (counted, or answered by a refusal), no panic, and the established tunnel keeps forwarding.
#[test]
fn garbage_and_an_mm1_flood_leave_the_tunnel_forwarding() {
    let name = "garbage_and_an_mm1_flood_leave_the_tunnel_forwarding";
    let Some(_g) = ready(name, false) else {
        return;
    };
    let r = ike_rig("garbage", IkeRig::new(Peer::Espd));
    let (mut a, _b) = start_gateways(&r, EXE, &[]).unwrap();
    let before = wait_up(&r, 'a', Duration::from_secs(20));
    // From gw-b's namespace (203.0.113.2), ports 20000..: random bytes, every prefix of an
    // ISAKMP header, and 3,000 MM1-shaped messages (random cookies, SA payload garbage).
    let script = r#"
import os, socket, struct
dst = "203.0.113.1"
socks = []
for i in range(64):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("203.0.113.2", 20000 + i))
    socks.append(s)
n = 0
for i in range(2000):
    socks[i % 64].sendto(os.urandom(1 + i % 300), (dst, 500)); n += 1
    socks[i % 64].sendto(b"\0\0\0\0" + os.urandom(1 + i % 300), (dst, 4500)); n += 1
hdr = os.urandom(8) + b"\0" * 8 + bytes([1, 0x10, 2, 0]) + b"\0" * 4 + struct.pack(">I", 28)
for k in range(len(hdr) + 1):
    socks[k % 64].sendto(hdr[:k], (dst, 500)); n += 1
for i in range(3000):
    body = os.urandom(40)
    m = os.urandom(8) + b"\0" * 8 + bytes([1, 0x10, 2, 0]) + b"\0" * 4 + struct.pack(">I", 28 + 4 + len(body))
    m += bytes([0, 0]) + struct.pack(">H", 4 + len(body)) + body
    socks[i % 64].sendto(m, (dst, 500)); n += 1
print(n)
"#;
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", "gw-b", "python3", "-c", script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_secs(1));
    assert!(a.running(), "gw-a died: {}", a.stderr_text());
    // Every one of the 4,000 random datagrams is counted where the operator sees it
    // (`ike_list`): dropped by the engine, or by the full input queue.
    let c = ctl(&r, 'a', json!({"op": "ike_list"}))["counters"].clone();
    let counted = ["dropped", "rx_queue_full", "limited"]
        .iter()
        .map(|k| c[k].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert!(counted >= 4000, "{c}");
    udp_both_ways(2000);
    let after = wait_up(&r, 'a', Duration::from_secs(5));
    assert_eq!(after["icookie"], before["icookie"], "the main mode changed");
}

/// A quick mode's hard expiry with the peer frozen (no rekey can succeed, no DPD): 13895 for
/// both SAs on time, and later packets are counted as 13911.
#[test]
fn quick_mode_hard_expiry_with_a_frozen_peer_gives_13895_then_13911() {
    let name = "quick_mode_hard_expiry_with_a_frozen_peer_gives_13895_then_13911";
    let Some(_g) = ready(name, true) else {
        return;
    };
    let mut ike = IkeRig::new(Peer::StrongSwan);
    ike.qm_lifetime_s = 12;
    ike.rekey_margin_s = 6;
    ike.dpd_delay_s = 0;
    ike.sw_rekey_s = 0;
    ike.sw_life_s = 60;
    let r = ike_rig("hard", ike);
    let sw = StrongSwan::start(r.dir()).unwrap();
    let a = start_a(&r);
    wait_up(&r, 'a', Duration::from_secs(20));
    let sas = ctl(&r, 'a', json!({"op": "sa_list"}));
    let age = sas["sas"][0]["age_s"].as_f64().unwrap();
    let due = Instant::now() + Duration::from_secs_f64(12.0 - age);
    let mut sub = subscribe(&r, 'a');
    let pid = sw.proc.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let ev = events_until(&mut sub, Duration::from_secs(20), |v| {
        named(v, "sa_hard_expired").len() >= 2
    });
    let at = Instant::now();
    let hard = named(&ev, "sa_hard_expired");
    assert_eq!(hard.len(), 2, "{ev:?}");
    assert!(hard.iter().all(|e| e["code"] == 13895), "{ev:?}");
    let dirs: Vec<&str> = hard
        .iter()
        .filter_map(|e| e["direction"].as_str())
        .collect();
    assert!(
        dirs.contains(&"inbound") && dirs.contains(&"outbound"),
        "{dirs:?}"
    );
    let off = if at > due {
        (at - due).as_secs_f64()
    } else {
        -(due - at).as_secs_f64()
    };
    assert!(off.abs() <= 1.5, "13895 {off:+.2} s off the 12 s lifetime");
    // Packets for the expired SA are dropped and counted as 13911 (the SA lingers).
    let _ = udp(
        "host-a",
        "host-b",
        "198.51.100.2:5001",
        "0.0.0.0:5001",
        100,
        200,
        1000,
    );
    let summary = stop(a);
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    let dropped = summary["drops_by_code"]["13911"].as_u64().unwrap_or(0);
    assert!(dropped >= 90, "13911 drops: {summary}");
    drop(sw);
}

/// espd ↔ espd, what the strongSwan tests check without charon: gw-a's main-mode lifetime
/// (12 s) gives 13885 `lifetime` on gw-a and, through its DELETE, 13885 `peer_delete` on gw-b,
/// while both keep forwarding on the children (IKEv1).
#[test]
fn espd_to_espd_main_mode_lifetime_and_delete() {
    let name = "espd_to_espd_main_mode_lifetime_and_delete";
    let Some(_g) = ready(name, false) else {
        return;
    };
    let mut ike = IkeRig::new(Peer::Espd);
    ike.mm_lifetime_s = 12;
    ike.rekey_margin_s = 4;
    let r = ike_rig("e2e-life", ike);
    let (_a, _b) = start_gateways(&r, EXE, &[]).unwrap();
    let mm = wait_up(&r, 'a', Duration::from_secs(20));
    wait_up(&r, 'b', Duration::from_secs(5));
    let (mut sa, mut sb) = (subscribe(&r, 'a'), subscribe(&r, 'b'));
    let (fwd, back) = udp_at_1k_both_ways(14_000);
    assert_all_arrived(&fwd, 14_000, "a→b across the main mode's end");
    assert_all_arrived(&back, 14_000, "b→a across the main mode's end");
    let ea = events_until(&mut sa, Duration::from_secs(2), |v| {
        !named(v, "mm_expired").is_empty()
    });
    let eb = events_until(&mut sb, Duration::from_secs(2), |v| {
        !named(v, "mm_expired").is_empty()
    });
    let (xa, xb) = (named(&ea, "mm_expired"), named(&eb, "mm_expired"));
    assert_eq!(xa.len(), 1, "{ea:?}");
    assert_eq!(xb.len(), 1, "{eb:?}");
    // Whoever's lifetime ran out says `lifetime`; the other heard the DELETE.
    let causes = [xa[0]["cause"].as_str(), xb[0]["cause"].as_str()];
    assert!(
        causes.contains(&Some("lifetime")) && causes.contains(&Some("peer_delete")),
        "{causes:?}"
    );
    assert_eq!(xa[0]["icookie"], mm["icookie"]);
    assert_eq!(xb[0]["icookie"], mm["icookie"]);
}

/// espd ↔ espd: `espd ctl ike terminate` on gw-b gives gw-a its ESP DELETEs (children
/// removed) and one 13885 `peer_delete`.
#[test]
fn espd_to_espd_terminate_deletes_the_children() {
    let name = "espd_to_espd_terminate_deletes_the_children";
    let Some(_g) = ready(name, false) else {
        return;
    };
    let r = ike_rig("e2e-term", IkeRig::new(Peer::Espd));
    let (_a, _b) = start_gateways(&r, EXE, &[]).unwrap();
    wait_up(&r, 'a', Duration::from_secs(20));
    wait_up(&r, 'b', Duration::from_secs(5));
    let mut sa = subscribe(&r, 'a');
    let o = std::process::Command::new(EXE)
        .args(["ctl", "--socket"])
        .arg(r.socket('b'))
        .args(["ike", "terminate", "peer"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let ea = events_until(&mut sa, Duration::from_secs(3), |v| {
        named(v, "sa_removed").len() >= 2 && !named(v, "mm_expired").is_empty()
    });
    let x = named(&ea, "mm_expired");
    assert_eq!(x.len(), 1, "{ea:?}");
    assert_eq!(x[0]["cause"], "peer_delete", "{ea:?}");
    let removed: Vec<_> = named(&ea, "sa_removed")
        .into_iter()
        .filter(|e| e["reason"] == "peer_delete")
        .collect();
    assert!(removed.len() >= 2, "gw-a kept the children: {ea:?}");
}

/// espd ↔ espd DPD: gw-b frozen (SIGSTOP): gw-a gives one 13886 within dpd_delay +
/// dpd_timeout + 2 s and clears the children; never 13885.
#[test]
fn espd_to_espd_dpd_declares_a_frozen_peer_dead() {
    let name = "espd_to_espd_dpd_declares_a_frozen_peer_dead";
    let Some(_g) = ready(name, false) else {
        return;
    };
    let mut ike = IkeRig::new(Peer::Espd);
    ike.dpd_delay_s = 2;
    ike.dpd_timeout_s = 6;
    let r = ike_rig("e2e-dpd", ike);
    let (_a, b) = start_gateways(&r, EXE, &[]).unwrap();
    wait_up(&r, 'a', Duration::from_secs(20));
    assert_dpd_gives_13886(&r, b.pid());
}

/// Collects gateway `me`'s events on a thread until the flag is set (a long run gives more
/// events than a subscriber's queue holds if nobody reads them meanwhile).
fn collect_events(
    r: &Rig,
    me: char,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<Vec<Value>>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut sub = subscribe(r, me);
    let flag = stop.clone();
    let t = std::thread::spawn(move || {
        events_until(&mut sub, Duration::from_secs(600), |_| {
            flag.load(std::sync::atomic::Ordering::Acquire)
        })
    });
    (stop, t)
}

/// Acceptance 9: 100 quick-mode rekeys under load, espd ↔ espd, and not one packet lost.
/// The rekeys come from the kilobyte lifetime (a time lifetime cannot go below 10 s): 180 kB
/// with a 110 kB margin, so gw-a (the quick modes' initiator) rekeys after 70 kB, about
/// every 0.3 s at 1,000 datagrams of 200 bytes per second each way, and the last 110 kB
/// (about 0.5 s) carry the quick mode and the delayed outbound swap.
#[test]
fn espd_to_espd_100_rekeys_under_load_lose_nothing() {
    let name = "espd_to_espd_100_rekeys_under_load_lose_nothing";
    let Some(_g) = ready(name, false) else {
        return;
    };
    let mut ike = IkeRig::new(Peer::Espd);
    ike.qm_lifetime_kb = Some(180);
    ike.rekey_margin_kb = Some(110);
    let r = ike_rig("e2e-100", ike);
    let (a, b) = start_gateways(&r, EXE, &[]).unwrap();
    wait_up(&r, 'a', Duration::from_secs(20));
    wait_up(&r, 'b', Duration::from_secs(5));
    let ((stop_a, ta), (stop_b, tb)) = (collect_events(&r, 'a'), collect_events(&r, 'b'));
    let n = 50_000;
    let t = Instant::now();
    let (fwd, back) = udp_at_1k_both_ways(n);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    for s in [&stop_a, &stop_b] {
        s.store(true, std::sync::atomic::Ordering::Release);
    }
    let (ea, eb) = (ta.join().unwrap(), tb.join().unwrap());
    let rekeys = |ev: &[Value], initiator: bool| {
        named(ev, "qm_up")
            .iter()
            .filter(|e| e["rekey"] == true && e["initiator"] == initiator)
            .count()
    };
    let (ra, rb) = (rekeys(&ea, true), rekeys(&eb, true));
    let sas = (
        ctl(&r, 'a', json!({"op": "sa_list"})),
        ctl(&r, 'b', json!({"op": "sa_list"})),
    );
    let (sa, sb) = (stop(a), stop(b));
    let lost = |x: &Value| n.saturating_sub(x["unique"].as_u64().unwrap_or(0));
    eprintln!(
        "{name}: {} rekeys started by gw-a, {} by gw-b in {took:.1?}; lost a→b {}, b→a {}; \
         drops gw-a {}, gw-b {}",
        ra,
        rb,
        lost(&fwd),
        lost(&back),
        sa["drops_by_code"],
        sb["drops_by_code"]
    );
    let failed = [named(&ea, "qm_failed"), named(&eb, "qm_failed")];
    let ok = fwd["unique"] == n
        && back["unique"] == n
        && [&fwd, &back]
            .iter()
            .all(|x| x["corrupt"] == 0 && x["duplicates"] == 0)
        && ra + rb >= 100;
    if !ok {
        let tail = |ev: &[Value]| ev[ev.len().saturating_sub(30)..].to_vec();
        panic!(
            "{ra} + {rb} rekeys (100 wanted); a→b {fwd}; b→a {back}\n\
             gw-a {sa}\ngw-b {sb}\nSAs a {}\nSAs b {}\nqm_failed {failed:?}\n\
             last events a {:?}\nlast events b {:?}",
            sas.0,
            sas.1,
            tail(&ea),
            tail(&eb)
        );
    }
    assert!(
        failed.iter().all(|f| f.is_empty()),
        "quick modes failed: {failed:?}"
    );
}

/// `espd ctl ike initiate peer` on gateway `me`.
fn ike_initiate(r: &Rig, me: char) {
    let o = std::process::Command::new(EXE)
        .args(["ctl", "--socket"])
        .arg(r.socket(me))
        .args(["ike", "initiate", "peer"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

/// gw-a initiates (it was told not to at start, so nothing is missed); then both ends'
/// events until each reported `event` (`mm_failed` or `qm_failed`).
fn failures_on_both(r: &Rig, event: &str, within: Duration) -> (Vec<Value>, Vec<Value>) {
    let (mut sa, mut sb) = (subscribe(r, 'a'), subscribe(r, 'b'));
    ike_initiate(r, 'a');
    let t = Instant::now();
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    while t.elapsed() < within && (named(&ea, event).is_empty() || named(&eb, event).is_empty()) {
        ea.extend(events_until(&mut sa, Duration::from_millis(200), |_| false));
        eb.extend(events_until(&mut sb, Duration::from_millis(200), |_| false));
    }
    (ea, eb)
}

/// Acceptance 8, no common proposal: espd ↔ espd with disjoint phase-1 proposals. The
/// responder refuses MM1 with 13868 (and a NO_PROPOSAL_CHOSEN notify), the initiator reports
/// the refusal with 13868 too; nothing comes up and both daemons keep running.
#[test]
fn espd_to_espd_no_common_proposal_gives_13868_on_both_ends() {
    let name = "espd_to_espd_no_common_proposal_gives_13868_on_both_ends";
    let Some(_g) = ready(name, false) else {
        return;
    };
    let mut ike = IkeRig::new(Peer::Espd);
    ike.extra_a = "proposals = [\"aes256-sha256-ecp256\", \"aes128-sha256-modp2048\"]\n".into();
    ike.extra_b = "proposals = [\"aes128-sha512-ecp384\"]\n".into();
    ike.initiators.clear();
    let r = ike_rig("e2e-noprop", ike);
    let (mut a, mut b) = start_gateways(&r, EXE, &[]).unwrap();
    let (ea, eb) = failures_on_both(&r, "mm_failed", Duration::from_secs(15));
    let (fa, fb) = (named(&ea, "mm_failed"), named(&eb, "mm_failed"));
    assert!(!fa.is_empty() && !fb.is_empty(), "a {ea:?}\nb {eb:?}");
    assert_eq!(fa[0]["code"], 13868, "initiator: {}", fa[0]);
    assert_eq!(fb[0]["code"], 13868, "responder: {}", fb[0]);
    assert!(
        fb[0]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("no proposal chosen")),
        "{}",
        fb[0]
    );
    assert!(named(&ea, "mm_up").is_empty() && named(&eb, "mm_up").is_empty());
    assert!(a.running(), "gw-a died: {}", a.stderr_text());
    assert!(b.running(), "gw-b died: {}", b.stderr_text());
    assert!(!tunnel_has_sas(&r, 'a') && !tunnel_has_sas(&r, 'b'));
}

fn tunnel_has_sas(r: &Rig, me: char) -> bool {
    ctl(r, me, json!({"op": "sa_list"}))["sas"]
        .as_array()
        .is_some_and(|v| !v.is_empty())
}

/// Acceptance 8, no common ESP proposal: the main mode comes up, the quick mode (AES-GCM
/// 128 offered, 256 only accepted) fails with `qm_failed` 13868 on both ends and no SA is
/// installed.
#[test]
fn espd_to_espd_no_common_esp_gives_qm_failed_13868() {
    let name = "espd_to_espd_no_common_esp_gives_qm_failed_13868";
    let Some(_g) = ready(name, false) else {
        return;
    };
    let mut ike = IkeRig::new(Peer::Espd);
    ike.extra_a = "esp = [\"aes128gcm16\"]\n".into();
    ike.extra_b = "esp = [\"aes256gcm16\"]\n".into();
    ike.initiators.clear();
    let r = ike_rig("e2e-noesp", ike);
    let (mut a, mut b) = start_gateways(&r, EXE, &[]).unwrap();
    let (ea, eb) = failures_on_both(&r, "qm_failed", Duration::from_secs(15));
    let (fa, fb) = (named(&ea, "qm_failed"), named(&eb, "qm_failed"));
    assert!(!fa.is_empty() && !fb.is_empty(), "a {ea:?}\nb {eb:?}");
    assert_eq!(fa[0]["code"], 13868, "initiator: {}", fa[0]);
    assert_eq!(fb[0]["code"], 13868, "responder: {}", fb[0]);
    assert!(named(&ea, "qm_up").is_empty() && named(&eb, "qm_up").is_empty());
    assert!(!tunnel_has_sas(&r, 'a') && !tunnel_has_sas(&r, 'b'));
    assert!(a.running(), "gw-a died: {}", a.stderr_text());
    assert!(b.running(), "gw-b died: {}", b.stderr_text());
}

/// Acceptance 8, no common proposal from a third party while a tunnel is up: an MM1 from
/// gw-b's address (another port) offering only AES-128/SHA-512/ECP-384 gets a
/// NO_PROPOSAL_CHOSEN notify back and 13868 on gw-a's stream; the tunnel keeps forwarding
/// on the same main mode.
#[test]
fn an_mm1_with_no_common_proposal_leaves_the_tunnel_forwarding() {
    let name = "an_mm1_with_no_common_proposal_leaves_the_tunnel_forwarding";
    let Some(_g) = ready(name, false) else {
        return;
    };
    let r = ike_rig("noprop-mm1", IkeRig::new(Peer::Espd));
    let (mut a, _b) = start_gateways(&r, EXE, &[]).unwrap();
    let before = wait_up(&r, 'a', Duration::from_secs(20));
    wait_up(&r, 'b', Duration::from_secs(5));
    let mut sub = subscribe(&r, 'a');
    // MM1: SA (DOI IPsec, identity situation), proposal 1 (ISAKMP), transform 1 (KEY_IKE):
    // AES-CBC 128, SHA2-512, PSK, group 20, 28800 s. The answer must be an informational
    // with notify 14 (NO_PROPOSAL_CHOSEN) for our cookie.
    let script = r#"
import os, socket, struct
attrs = struct.pack(">HHHHHHHHHHHHHHI", 0x8001, 7, 0x800e, 128, 0x8002, 6, 0x8003, 1,
                    0x8004, 20, 0x800b, 1, 0x000c, 4, 28800)
tr = struct.pack(">BBHBBH", 0, 0, 8 + len(attrs), 1, 1, 0) + attrs
prop = struct.pack(">BBHBBBB", 0, 0, 8 + len(tr), 1, 1, 0, 1) + tr
sa = struct.pack(">BBHII", 0, 0, 12 + len(prop), 1, 1) + prop
ic = os.urandom(8)
msg = ic + b"\0" * 8 + bytes([1, 0x10, 2, 0]) + b"\0" * 4 + struct.pack(">I", 28 + len(sa)) + sa
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("203.0.113.2", 20500))
s.settimeout(5)
s.sendto(msg, ("203.0.113.1", 500))
d, _ = s.recvfrom(2048)
assert d[:8] == ic, "another cookie"
assert d[18] == 5, "exchange %d, not informational" % d[18]
assert d[16] == 11, "first payload %d, not a notify" % d[16]
ty = struct.unpack(">H", d[28 + 10:28 + 12])[0]
print(ty)
"#;
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", "gw-b", "python3", "-c", script])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "no refusal came back: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "14",
        "the notify type"
    );
    let ev = events_until(&mut sub, Duration::from_secs(3), |v| {
        !named(v, "mm_failed").is_empty()
    });
    let f = named(&ev, "mm_failed");
    assert_eq!(f.len(), 1, "{ev:?}");
    assert_eq!(f[0]["code"], 13868, "{}", f[0]);
    assert!(a.running(), "gw-a died: {}", a.stderr_text());
    udp_both_ways(2000);
    let after = wait_up(&r, 'a', Duration::from_secs(5));
    assert_eq!(after["icookie"], before["icookie"], "the main mode changed");
}

/// Acceptance 8 against strongSwan: espd offers only AES-128/SHA-512/ECP-384, which
/// strongSwan (`aes256-sha256-ecp256,aes128-sha256-modp2048`) does not take: espd's
/// initiation fails with 13868; strongSwan's initiation towards espd fails too, and espd
/// (the responder) reports 13868.
#[test]
fn no_common_proposal_with_strongswan_gives_13868_both_ways() {
    let name = "no_common_proposal_with_strongswan_gives_13868_both_ways";
    let Some(_g) = ready(name, true) else {
        return;
    };
    let mut ike = IkeRig::new(Peer::StrongSwan);
    ike.extra_a = "proposals = [\"aes128-sha512-ecp384\"]\n".into();
    ike.initiators.clear();
    let r = ike_rig("sw-noprop", ike);
    let sw = StrongSwan::start(r.dir()).unwrap();
    let mut a = start_a(&r);
    let mut sub = subscribe(&r, 'a');
    ike_initiate(&r, 'a');
    let ev = events_until(&mut sub, Duration::from_secs(15), |v| {
        !named(v, "mm_failed").is_empty()
    });
    let f = named(&ev, "mm_failed");
    assert!(!f.is_empty(), "{ev:?}\ncharon: {}", sw.log());
    assert_eq!(f[0]["code"], 13868, "espd as initiator: {}", f[0]);
    let o = sw.swanctl(&["--initiate", "--child", "net", "--timeout", "10"]);
    assert!(o.is_err(), "strongSwan got a tunnel: {o:?}");
    let ev = events_until(&mut sub, Duration::from_secs(5), |v| {
        named(v, "mm_failed").iter().any(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|s| s.contains("main mode from"))
        })
    });
    let f: Vec<_> = named(&ev, "mm_failed")
        .into_iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|s| s.contains("main mode from"))
        })
        .collect();
    assert!(!f.is_empty(), "{ev:?}");
    assert_eq!(f[0]["code"], 13868, "espd as responder: {}", f[0]);
    assert!(a.running(), "gw-a died: {}", a.stderr_text());
}
