//! `espd pcap` input and output formats (issue 12, item 6): a nanosecond pcap keeps its times
//! (capinfos once printed `First packet time: …14.-540066`), pcapng input (dumpcap's default)
//! is accepted, garbage is a clear error. Uses editcap/capinfos from Wireshark: skipped with a
//! message when they are missing, except in CI (`CI=true`), where that fails the test.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use espd::pcap::{Resolution, read_trace};

fn tool(name: &str) -> bool {
    let ok = Command::new(name)
        .arg("-h")
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

fn tmp(test: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("espd-pcapfiles-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// `espd pcap --direction outbound` with a private 0600 copy of gw-a.toml (its sequence
/// state lands next to it); (success, stdout JSON, stderr).
fn espd_pcap(test: &str, input: &Path, output: &Path) -> (bool, serde_json::Value, String) {
    let cfg = tmp(test, "gw-a.toml");
    std::fs::copy(example("gw-a.toml"), &cfg).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_espd"))
        .args([
            "pcap",
            "--fresh-keys",
            "--direction",
            "outbound",
            "--config",
        ])
        .arg(&cfg)
        .arg(input)
        .arg(output)
        .output()
        .unwrap();
    (
        o.status.success(),
        serde_json::from_slice(&o.stdout).unwrap_or_default(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// capinfos' "First packet time" and "Last packet time" values.
fn capinfos_times(p: &Path) -> Vec<String> {
    run("capinfos", &["-a", "-e", &p.to_string_lossy()])
        .lines()
        .filter_map(|l| {
            l.split_once("packet time:")
                .map(|(_, t)| t.trim().to_string())
        })
        .collect()
}

fn convert(test: &str, format: &str, name: &str) -> PathBuf {
    let out = tmp(test, name);
    run(
        "editcap",
        &[
            "-F",
            format,
            &example("plain.pcap").to_string_lossy(),
            &out.to_string_lossy(),
        ],
    );
    out
}

#[test]
fn nanosecond_pcap_keeps_its_times() {
    if !tool("editcap") || !tool("capinfos") {
        return;
    }
    let t = "ns";
    let input = convert(t, "nsecpcap", "plain-ns.pcap");
    let output = tmp(t, "esp-ns.pcap");
    let (ok, summary, err) = espd_pcap(t, &input, &output);
    assert!(ok, "espd pcap: {err}");
    let inp = read_trace(std::fs::File::open(&input).unwrap()).unwrap();
    let out = read_trace(std::fs::File::open(&output).unwrap()).unwrap();
    assert_eq!(inp.resolution, Resolution::Nano);
    assert_eq!(out.resolution, Resolution::Nano, "ns in, ns out");
    assert_eq!(summary["frames_out"], inp.records.len() as u64, "{summary}");
    assert_eq!(out.records.len(), inp.records.len());
    for (i, (a, b)) in inp.records.iter().zip(&out.records).enumerate() {
        assert_eq!(a.ts, b.ts, "frame {i}: the time of the frame that made it");
    }
    // What capinfos shows: the same first and last times as the input, no negative fraction.
    let (ti, to) = (capinfos_times(&input), capinfos_times(&output));
    assert_eq!(ti.len(), 2, "{ti:?}");
    assert_eq!(ti, to);
    assert!(to.iter().all(|t| !t.contains(".-")), "{to:?}");
    std::fs::remove_dir_all(input.parent().unwrap()).unwrap();
}

#[test]
fn pcapng_input_is_accepted() {
    if !tool("editcap") || !tool("capinfos") {
        return;
    }
    let t = "ng";
    let input = convert(t, "pcapng", "plain.pcapng");
    let output = tmp(t, "esp.pcap");
    let (ok, summary, err) = espd_pcap(t, &input, &output);
    assert!(ok, "espd pcap: {err}");
    let orig = read_trace(std::fs::File::open(example("plain.pcap")).unwrap()).unwrap();
    let ng = read_trace(std::fs::File::open(&input).unwrap()).unwrap();
    assert_eq!(
        ng.records.iter().map(|r| r.ts).collect::<Vec<_>>(),
        orig.records.iter().map(|r| r.ts).collect::<Vec<_>>(),
        "pcapng timestamps read at the interface's resolution"
    );
    assert_eq!(summary["frames_in"], orig.records.len() as u64, "{summary}");
    let out = read_trace(std::fs::File::open(&output).unwrap()).unwrap();
    assert_eq!(out.resolution, Resolution::Micro);
    assert_eq!(out.records.len(), orig.records.len());
    assert_eq!(out.records[0].ts, orig.records[0].ts);
    assert!(out.records[0].ts > Duration::from_secs(1_000_000_000));
    assert_eq!(
        capinfos_times(&output),
        capinfos_times(&example("plain.pcap"))
    );
    std::fs::remove_dir_all(input.parent().unwrap()).unwrap();
}

#[test]
fn garbage_input_is_a_clear_error() {
    let t = "garbage";
    let input = tmp(t, "garbage.pcap");
    std::fs::write(&input, b"this is not a capture file at all\n").unwrap();
    let output = tmp(t, "out.pcap");
    let (ok, _, err) = espd_pcap(t, &input, &output);
    assert!(!ok);
    assert!(
        err.contains("garbage.pcap") && err.contains("not a pcap file, nor pcapng"),
        "{err}"
    );
    // A pcap cut inside a record.
    let good = std::fs::read(example("plain.pcap")).unwrap();
    std::fs::write(&input, &good[..good.len() - 10]).unwrap();
    let (ok, _, err) = espd_pcap(t, &input, &output);
    assert!(!ok);
    assert!(err.contains("file ends inside the record"), "{err}");
    std::fs::remove_dir_all(input.parent().unwrap()).unwrap();
}
