//! Helpers of the root rig tests: one rig at a time, SKIPPED (or a failure in CI) without
//! root, traffic generators and their reports.

use std::sync::Mutex;
use std::time::Duration;

use espd::rig::procs::Proc;

pub const EXE: &str = env!("CARGO_BIN_EXE_espd");

static ONE_RIG: Mutex<()> = Mutex::new(());

pub fn root_or_skip(name: &str) -> bool {
    if espd::sys::is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{name}: the rig tests need root, and CI runs as root");
    }
    eprintln!("SKIPPED {name}: needs root (network namespaces, XDP)");
    false
}

/// One rig at a time, root only: the lock, or `None` after printing SKIPPED (a failure in CI).
/// The rig tests' lock, taken without the root check (for tests that need no root but must
/// not overlap a rig).
#[allow(dead_code)]
pub fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_RIG.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn serial(name: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    let g = ONE_RIG.lock().unwrap_or_else(|e| e.into_inner());
    root_or_skip(name).then_some(g)
}

pub fn json(s: &str) -> serde_json::Value {
    s.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_default()
}

/// Sends `count` UDP datagrams from `from` to `dst` and returns the sink's report.
pub fn udp(
    from: &str,
    to: &str,
    dst: &str,
    bind: &str,
    count: u64,
    size: usize,
    pps: u64,
) -> serde_json::Value {
    let c = count.to_string();
    let sink = Proc::spawn(
        "sink",
        to,
        &[
            EXE, "traffic", "udp-recv", "--bind", bind, "--expect", &c, "--idle", "3",
        ],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let src = Proc::spawn(
        "src",
        from,
        &[
            EXE,
            "traffic",
            "udp-send",
            "--dst",
            dst,
            "--count",
            &c,
            "--size",
            &size.to_string(),
            "--pps",
            &pps.to_string(),
        ],
    )
    .unwrap();
    let _ = src.wait_output(Duration::from_secs(60));
    json(&sink.wait_output(Duration::from_secs(30)).unwrap())
}

pub fn tcp(from: &str, to: &str, dst: &str, bind: &str, bytes: u64) -> serde_json::Value {
    let b = bytes.to_string();
    let sink = Proc::spawn(
        "sink",
        to,
        &[
            EXE,
            "traffic",
            "tcp-recv",
            "--bind",
            bind,
            "--expect",
            &b,
            "--timeout",
            "30",
        ],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let src = Proc::spawn(
        "src",
        from,
        &[EXE, "traffic", "tcp-send", "--dst", dst, "--bytes", &b],
    )
    .unwrap();
    let _ = src.wait_output(Duration::from_secs(60));
    json(&sink.wait_output(Duration::from_secs(30)).unwrap())
}

pub fn assert_all_arrived(r: &serde_json::Value, count: u64, what: &str) {
    assert_eq!(r["unique"], count, "{what}: {r}");
    assert_eq!(
        (r["corrupt"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(0)),
        "{what}: {r}"
    );
}

pub fn stop(mut gw: Proc) -> serde_json::Value {
    let lines = gw.lines();
    gw.stop(Duration::from_secs(5));
    let mut last = serde_json::Value::Null;
    while let Ok(l) = lines.recv_timeout(Duration::from_millis(300)) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
            last = v;
        }
    }
    last
}

/// tshark over `pcap` with ESP decryption and ICV checks for `sas` (`esp_sa` UAT entries):
/// one line per ESP packet, `esp.icv_good` then `extra` (tab-separated), and tshark's stderr.
pub fn tshark_esp(pcap: &std::path::Path, sas: &[String], extra: &str) -> (Vec<String>, String) {
    let mut cmd = std::process::Command::new("tshark");
    cmd.arg("-r").arg(pcap).args([
        "-o",
        "esp.enable_encryption_decode:TRUE",
        "-o",
        "esp.enable_authentication_check:TRUE",
    ]);
    for sa in sas {
        cmd.args(["-o", sa]);
    }
    let o = cmd
        .args([
            "-Y",
            "esp",
            "-T",
            "fields",
            "-e",
            "esp.icv_good",
            "-e",
            extra,
        ])
        .output()
        .expect("tshark");
    (
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}
