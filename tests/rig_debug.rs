//! Operator debugging tools on the veth rig (issue 12, item 5):
//! - `espd ctl sa export --wireshark FILE`: tshark, given only that file as its `esp_sa`
//!   table, decrypts every ESP packet captured on the wire between the gateways;
//! - `espd ctl capture --seconds N FILE`: what gw-a's workers receive and send (invisible to
//!   tcpdump on the gateway: XDP redirects it), plaintext on the plain side, ESP on the
//!   cipher side, one for one.
//!
//! Root only (network namespaces, XDP), and tshark is needed: SKIPPED otherwise, a failure
//! in CI (`CI=true`).
#![cfg(feature = "rig")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::rig::{EXE, assert_all_arrived, serial, udp};
use espd::rig::procs::{Proc, capture_wan, start_gateways};
use espd::rig::{Rig, RigSpec};

fn tshark_or_skip(name: &str) -> bool {
    let ok = Command::new("tshark")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name}: tshark is required in CI (install it in .ci/run)");
        }
        eprintln!("SKIPPED {name}: tshark not available");
    }
    ok
}

fn rig(test: &str) -> Rig {
    let dir = std::env::temp_dir().join(format!("espd-rig-debug-{test}-{}", std::process::id()));
    Rig::up(RigSpec {
        queues: 1,
        dir,
        ..Default::default()
    })
    .expect("rig up")
}

fn ctl(r: &Rig, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(EXE)
        .arg("ctl")
        .arg("--socket")
        .arg(r.socket('a'))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// tshark over `pcap` with `fields`, one tab-separated line per frame matching `filter`;
/// `config`: a directory tshark takes as its personal configuration (XDG_CONFIG_HOME).
fn tshark(pcap: &Path, config: &Path, opts: &[&str], filter: &str, fields: &[&str]) -> Vec<String> {
    let mut cmd = Command::new("tshark");
    cmd.env("XDG_CONFIG_HOME", config).arg("-r").arg(pcap);
    for o in opts {
        cmd.args(["-o", o]);
    }
    cmd.args(["-Y", filter, "-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let o = cmd.output().expect("tshark");
    assert!(
        o.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn tshark_decrypts_the_wire_with_the_exported_keys() {
    let name = "tshark_decrypts_the_wire_with_the_exported_keys";
    let Some(_g) = serial(name) else { return };
    if !tshark_or_skip(name) {
        return;
    }
    let r = rig("export");
    let (mut cap, pcap) = capture_wan(&r, None, Some("ip proto 50")).unwrap();
    let (a, b) = start_gateways(&r, EXE, &[]).unwrap();
    let n = 300;
    let ab = udp(
        "host-a",
        "host-b",
        "198.51.100.2:5001",
        "0.0.0.0:5001",
        n,
        300,
        1000,
    );
    assert_all_arrived(&ab, n, "UDP a→b");
    let ba = udp(
        "host-b",
        "host-a",
        "192.0.2.2:5002",
        "0.0.0.0:5002",
        n,
        100,
        1000,
    );
    assert_all_arrived(&ba, n, "UDP b→a");
    cap.stop(Duration::from_secs(2));

    // tshark's configuration directory holds nothing but the exported table.
    let config: PathBuf = r.dir().join("wireshark-config");
    std::fs::create_dir_all(config.join("wireshark")).unwrap();
    let table = config.join("wireshark").join("esp_sa");
    let (ok, out, err) = ctl(
        &r,
        &["sa", "export", "--wireshark", &table.to_string_lossy()],
    );
    assert!(ok, "ctl sa export: {out} {err}");
    for k in [&r.key_ab, &r.key_ba] {
        assert!(
            !out.contains(k.as_str()) && !err.contains(k.as_str()),
            "a key printed: {out}"
        );
    }
    assert!(out.contains("wrote 2 SA(s)"), "{out}");
    let meta = std::fs::metadata(&table).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&table).unwrap();
    assert!(
        text.contains(&r.key_ab) && text.contains(&r.key_ba),
        "{text}"
    );

    let esp = espd::pcap::read(std::fs::File::open(&pcap).unwrap()).unwrap();
    // What tcpdump caught (it may miss a few frames on a busy machine): all of it decrypts.
    assert!(esp.len() as u64 > n, "ESP on the wire: {}", esp.len());
    let opts = [
        "esp.enable_encryption_decode:TRUE",
        "esp.enable_authentication_check:TRUE",
    ];
    let lines = tshark(
        &pcap,
        &config,
        &opts,
        "esp",
        &["esp.icv_good", "udp.dstport"],
    );
    assert_eq!(lines.len(), esp.len(), "tshark sees every ESP packet");
    let mut by_port = [0u64; 2];
    for (i, l) in lines.iter().enumerate() {
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(
            f[0],
            "1",
            "frame {i}: ICV not good with the exported keys: {l}\n{}",
            text.replace(&r.key_ab, "KEY_AB")
                .replace(&r.key_ba, "KEY_BA")
        );
        match f.get(1) {
            Some(&"5001") => by_port[0] += 1,
            Some(&"5002") => by_port[1] += 1,
            _ => panic!("frame {i}: no inner UDP after decryption: {l}"),
        }
    }
    assert!(
        by_port[0] > 0 && by_port[1] > 0,
        "both directions: {by_port:?}"
    );
    assert!(by_port[0] <= n && by_port[1] <= n, "{by_port:?}");
    assert_eq!(
        by_port[0] + by_port[1],
        esp.len() as u64,
        "decrypted inner datagrams == ESP packets captured"
    );
    drop((a, b));
}

#[test]
fn capture_records_what_the_workers_receive_and_send() {
    let name = "capture_records_what_the_workers_receive_and_send";
    let Some(_g) = serial(name) else { return };
    if !tshark_or_skip(name) {
        return;
    }
    let r = rig("capture");
    let (a, b) = start_gateways(&r, EXE, &[]).unwrap();
    // 3 s of traffic a→b; a 2 s capture on gw-a inside it.
    let count = 3000u64;
    let c = count.to_string();
    let sink = Proc::spawn(
        "sink",
        "host-b",
        &[
            EXE,
            "traffic",
            "udp-recv",
            "--bind",
            "0.0.0.0:5003",
            "--expect",
            &c,
            "--idle",
            "3",
        ],
    )
    .unwrap();
    // As `common::rig::udp` does: the sink binds before the first datagram.
    std::thread::sleep(Duration::from_millis(300));
    let src = Proc::spawn(
        "src",
        "host-a",
        &[
            EXE,
            "traffic",
            "udp-send",
            "--dst",
            "198.51.100.2:5003",
            "--count",
            &c,
            "--size",
            "400",
            "--pps",
            "1000",
        ],
    )
    .unwrap();
    let file = r.dir().join("workers.pcapng");
    let (ok, out, err) = ctl(&r, &["capture", "--seconds", "2", &file.to_string_lossy()]);
    let _ = src.wait_output(Duration::from_secs(30));
    let got = common::rig::json(&sink.wait_output(Duration::from_secs(30)).unwrap());
    assert!(ok, "ctl capture: {out} {err}");
    assert!(
        out.contains("dropped: 0 (worker ring full), 0 (file size limit)"),
        "{out}"
    );
    assert_eq!(got["unique"], count, "the capture costs no datagram: {got}");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let config = r.dir().join("no-wireshark-config");
    std::fs::create_dir_all(&config).unwrap();
    let fields = [
        "frame.interface_name",
        "frame.packet_flags_direction",
        "esp.spi",
        "udp.dstport",
        "frame.len",
        "frame.cap_len",
    ];
    let lines = tshark(&file, &config, &[], "frame", &fields);
    let (mut plain_rx, mut cipher_tx, mut other) = (0u64, 0u64, 0u64);
    for l in &lines {
        let f: Vec<&str> = l.split('\t').collect();
        match (f[0], f[1], f[2], f[3]) {
            ("lan0", "0x00000001", "", "5003") => plain_rx += 1,
            ("wan0", "0x00000002", "0x0000a001", "") => {
                cipher_tx += 1;
                // Cut to the default snap length of 256 bytes; the original length is kept.
                assert_eq!(f[5], "256", "{l}");
                assert!(f[4].parse::<u32>().unwrap() > 400, "{l}");
            }
            _ => other += 1,
        }
    }
    println!("capture: {out}plain rx {plain_rx}, cipher tx {cipher_tx}, other {other}");
    assert!(
        plain_rx > 0,
        "plaintext datagrams received on lan0: {out}\n{:?}",
        &lines[..lines.len().min(6)]
    );
    assert_eq!(
        cipher_tx, plain_rx,
        "one ESP packet sent on wan0 per datagram received"
    );
    assert!(plain_rx <= count);
    assert!(out.contains(&format!("plain rx {plain_rx},")), "{out}");
    drop((a, b));
}
