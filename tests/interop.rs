//! Interop through `espd pcap`: tshark and scapy are independent ESP implementations.
//! ESP made by espd decrypts in tshark (`esp.icv_good == 1`, inner packet dissected) and in
//! scapy; ESP made by scapy decrypts in espd. Skipped with a message when the tools are
//! missing, except in CI (`CI=true`), where a missing tool fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn tool(name: &str, probe: &[&str]) -> bool {
    let ok = Command::new(name)
        .args(probe)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name} is required in CI (install it in .ci/run)");
        }
        eprintln!("SKIPPED: {name} not available");
    }
    ok
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("espd-interop-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn espd_pcap(cfg: &str, dir: &str, input: &Path, output: &Path) -> serde_json::Value {
    // A private copy of the config, so its sequence state file (NAME.seq) lands in the
    // test's directory; the example keys are fresh there.
    let copy = tmp(&format!(
        "{}-{cfg}",
        output.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(cfg),
        &copy,
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_espd"))
        .args(["pcap", "--fresh-keys", "--config"])
        .arg(&copy)
        .args(["--direction", dir])
        .arg(input)
        .arg(output)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "espd pcap failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let f = std::fs::File::create(path).unwrap();
    espd::pcap::write(
        f,
        frames
            .iter()
            .enumerate()
            .map(|(i, d)| (i as u32, 0, d.as_slice())),
    )
    .unwrap();
}

fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    espd::pcap::read(std::fs::File::open(path).unwrap())
        .unwrap()
        .into_iter()
        .map(|r| r.data)
        .collect()
}

fn plain_frames() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    // Ports no Wireshark dissector claims: a dissector exception on a tiny inner payload would
    // stop tshark before it reports the ICV. Sizes stay within the 1500-byte tunnel MTU.
    for (i, n) in [0usize, 1, 2, 3, 64, 200, 777, 1000, 1300, 1380]
        .iter()
        .enumerate()
    {
        v.push(frame(
            "192.0.2.10",
            "198.51.100.20",
            17,
            50000 + i as u16,
            33333,
            &payload(*n, i as u8),
        ));
        v.push(frame(
            "192.0.2.10",
            "198.51.100.20",
            6,
            50100 + i as u16,
            33334,
            &payload(*n, 7),
        ));
        v.push(frame(
            "fd00:a::10",
            "fd00:b::20",
            17,
            50200 + i as u16,
            33333,
            &payload(*n, 9),
        ));
    }
    v
}

const TSHARK_SA: &str = r#"uat:esp_sa:"IPv4","203.0.113.1","203.0.113.2","0x0000a001","AES-GCM with 16 octet ICV [RFC4106]","0x00112233445566778899aabbccddeeff01020304","NULL","""#;

#[test]
fn tshark_decrypts_espd_output() {
    if !tool("tshark", &["--version"]) {
        return;
    }
    let (plain, esp) = (tmp("t-plain.pcap"), tmp("t-esp.pcap"));
    let frames = plain_frames();
    write_pcap(&plain, &frames);
    let s = espd_pcap("gw-a.toml", "outbound", &plain, &esp);
    assert_eq!(s["frames_out"], frames.len());
    let o = Command::new("tshark")
        .arg("-r")
        .arg(&esp)
        .args([
            "-o",
            "esp.enable_encryption_decode:TRUE",
            "-o",
            "esp.enable_authentication_check:TRUE",
            "-o",
            TSHARK_SA,
        ])
        .args([
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "esp.icv_good",
            "-e",
            "ip.src",
            "-e",
            "ipv6.src",
            "-e",
            "udp.length",
            "-e",
            "tcp.len",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), frames.len());
    for (i, l) in lines.iter().enumerate() {
        let f: Vec<&str> = l.split('|').collect();
        assert_eq!(f[0], "1", "frame {i}: tshark says the ICV is not good: {l}");
        let inner_ok = f[1].contains("192.0.2.10") || f[2] == "fd00:a::10";
        assert!(inner_ok, "frame {i}: inner packet not dissected: {l}");
        assert!(
            !f[3].is_empty() || !f[4].is_empty(),
            "frame {i}: no inner transport header: {l}"
        );
    }
}

#[test]
fn scapy_and_espd_interoperate_both_ways() {
    if !tool(
        "python3",
        &["-c", "import scapy.layers.ipsec, cryptography"],
    ) {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/scapy_esp.py");
    // scapy → espd.
    let (s_esp, s_plain, e_out) = (tmp("s-esp.pcap"), tmp("s-plain.pcap"), tmp("s-dec.pcap"));
    let st = Command::new("python3")
        .arg(&script)
        .arg("encrypt")
        .arg(&s_esp)
        .arg(&s_plain)
        .status()
        .unwrap();
    assert!(st.success());
    let s = espd_pcap("gw-b.toml", "inbound", &s_esp, &e_out);
    assert_eq!(s["dropped"], 0, "{s}");
    let want = read_pcap(&s_plain);
    let got = read_pcap(&e_out);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            &g[14..],
            &w[14..],
            "espd's decryption of scapy's ESP differs"
        );
    }
    // espd → scapy.
    let (plain, esp, dec) = (tmp("e-plain.pcap"), tmp("e-esp.pcap"), tmp("e-dec.pcap"));
    let frames = plain_frames();
    write_pcap(&plain, &frames);
    espd_pcap("gw-a.toml", "outbound", &plain, &esp);
    let o = Command::new("python3")
        .arg(&script)
        .arg("decrypt")
        .arg(&esp)
        .arg(&dec)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "scapy could not decrypt espd's ESP: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got = read_pcap(&dec);
    assert_eq!(got.len(), frames.len());
    for (g, w) in got.iter().zip(&frames) {
        assert_eq!(
            &g[14..],
            &w[14..],
            "scapy's decryption of espd's ESP differs"
        );
    }
}

#[test]
fn pcap_summary_counts_drops_by_code() {
    let (plain, esp, twice, out) = (
        tmp("d-plain.pcap"),
        tmp("d-esp.pcap"),
        tmp("d-twice.pcap"),
        tmp("d-out.pcap"),
    );
    let frames = plain_frames();
    write_pcap(&plain, &frames);
    espd_pcap("gw-a.toml", "outbound", &plain, &esp);
    let mut e = read_pcap(&esp);
    // The last packet is only ever delivered with a flipped ICV; the others twice.
    let mut forged = e.pop().unwrap();
    let n = e.len();
    e.extend(e.clone());
    let l = forged.len();
    forged[l - 1] ^= 0xff;
    e.push(forged);
    write_pcap(&twice, &e);
    let s = espd_pcap("gw-b.toml", "inbound", &twice, &out);
    assert_eq!(s["frames_out"], n);
    assert_eq!(s["drops_by_code"]["13913"], n, "{s}");
    assert_eq!(s["drops_by_code"]["13915"], 1, "{s}");
    assert_eq!(s["dropped"], n + 1);
}

#[test]
fn bad_input_files_are_clear_errors() {
    let junk = tmp("junk.pcap");
    std::fs::write(&junk, b"this is not a pcap file at all....").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_espd"))
        .args([
            "pcap",
            "--config",
            "examples/gw-a.toml",
            "--direction",
            "inbound",
        ])
        .arg(&junk)
        .arg(tmp("x.pcap"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("junk.pcap") && err.contains("not a pcap file"),
        "{err}"
    );
}
