//! Review tests (h-review, moved here by capfix) of `capture`: its audit line carries the real
//! result, and a capture ends when its client hangs up.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use espd::config::Config;
use espd::control::Control;

const BASE: &str = r#"
[dataplane]
workers = 1
[interfaces.plain]
name = "lan0"
addresses = ["192.0.2.1"]
next_hop_mac = "02:00:00:00:00:02"
[interfaces.cipher]
name = "wan0"
addresses = ["203.0.113.1"]
next_hop_mac = "02:00:00:00:00:03"
[control]
socket = ""
"#;

fn cfg(text: &str) -> Config {
    Config::parse(Path::new("t.toml"), text).unwrap()
}

/// The audit line of a `capture` request is logged `result=ok` before it is even checked: a
/// refused capture (bad `seconds`, another running, no workers) leaves an audit line that
/// says it succeeded.
#[test]
fn a_refused_capture_is_not_audited_as_ok() {
    let buf = common::Captured::default();
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    let c0 = cfg(BASE);
    let dp = Arc::new(c0.build_dataplane(1).unwrap());
    let mut ctl = Control::new(&c0, dp);
    let (tx, rx) = std::sync::mpsc::channel();
    tracing::subscriber::with_default(sub, || {
        espd::control::api::deliver(
            &mut ctl,
            espd::control::api::ApiMsg::Request {
                line: zeroize::Zeroizing::new("{\"op\":\"capture\",\"seconds\":-1}".into()),
                reply: tx,
                peer: None,
                closed: None,
            },
            1,
        );
    });
    let answer = rx.recv().unwrap().unwrap().to_string();
    assert!(answer.contains("\"ok\":false"), "{answer}");
    let log = buf.text();
    assert!(
        !log.contains("op=\"capture\"") || !log.contains("result=ok"),
        "answer {answer}, audit {log}"
    );
}

/// `ctl capture` interrupted (Ctrl-C): the client's connection closes while the capture runs.
/// The capture ends then, not after its 300 s, and the next one is not refused as "another
/// capture is running".
#[test]
fn a_capture_ends_when_its_client_hangs_up() {
    if !espd::sys::is_root() {
        eprintln!("skipped: the control socket serves root only");
        return;
    }
    let dir = std::env::temp_dir().join(format!("espd-review-capture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("espd.sock");
    let c0 = cfg(BASE);
    let dp = Arc::new(c0.build_dataplane(1).unwrap());
    let mut ctl = Control::new(&c0, dp);
    let cap = Arc::new(espd::datapath::capture::Capture::new(1, "lan0", "wan0"));
    ctl.attach_capture(cap.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for m in rx {
            espd::control::api::deliver(&mut ctl, m, 1);
        }
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = espd::control::api::serve(&path, tx, stop.clone()).unwrap();

    let mut a = std::os::unix::net::UnixStream::connect(&path).unwrap();
    writeln!(a, r#"{{"op":"capture","seconds":300}}"#).unwrap();
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let give_up = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < give_up, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    until("the capture starts", &|| cap.active());
    drop(a);
    until("the capture ends once its client left", &|| {
        cap.claim().is_some()
    });
    let mut b = espd::control::api::Client::connect(&path).unwrap();
    let r = b
        .call(&serde_json::json!({"op": "capture", "seconds": 0.05}))
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Release);
    let _ = server.join();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(r["ok"], true, "{r}");
}
