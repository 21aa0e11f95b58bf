//! The audit log of the control socket (issue 12): every state-changing request leaves one
//! line on target `espd::audit`, read-only ones none, and no line holds key material.
//!
//! This test has a binary of its own. tracing caches each callsite's interest when the callsite
//! is first hit; in a binary whose other tests call the control API on other threads with no
//! subscriber, a thread that registers the audit callsite while this test's scoped subscriber is
//! being installed can cache "never" over it, and the test then sees no line (it happened once in
//! CI, in `tests/protocol.rs`). Alone in its process, the callsite is first hit on this thread,
//! under the subscriber.

mod common;

use std::sync::Arc;

use common::*;
use espd::config::Config;
use espd::control::Control;
use serde_json::json;

const S: u64 = 1_000_000_000;

fn gw(name: &str) -> Control {
    let cfg = Config::parse(std::path::Path::new(name), &example_text(name)).unwrap();
    let dp = Arc::new(cfg.build_dataplane(1).unwrap());
    Control::new(&cfg, dp)
}

/// Issue 12: every state-changing request leaves one audit line (target `espd::audit`) with
/// who, what and the result; read-only ones leave none; no audit line holds key material.
#[test]
fn state_changes_are_audited_without_keys() {
    use espd::control::api::handle_from;
    use espd::control::audit::Peer;
    let buf = Captured::default();
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || w.clone())
        .finish();
    let mut a = gw("gw-a.toml");
    let (k1, k2) = (secret(1, 20), secret(2, 36));
    let peer = Some(Peer { uid: 0, pid: 777 });
    let reqs = [
        json!({"op": "sa_add", "sa": {"tunnel": "to-b", "direction": "in", "spi": "0x7001", "key": k1}}),
        json!({"op": "sa_list"}),
        json!({"op": "stats"}),
        json!({"op": "tunnel_list"}),
        // Refused: the key is already in use by 0x7001.
        json!({"op": "sa_add", "sa": {"tunnel": "to-b", "direction": "in", "spi": "0x7002", "key": k1}}),
        json!({"op": "rekey", "tunnel": "to-b",
            "outbound": {"tunnel": "to-b", "direction": "out", "spi": "0x7003", "key": k2}}),
        // Does not parse (a key where a number goes): audited without serde's message.
        json!({"op": "sa_delete", "spi": "0x7001", "direction": "in", "grace": k2}),
        json!({"op": "sa_delete", "spi": "0x7001", "direction": "in"}),
    ];
    tracing::subscriber::with_default(sub, || {
        for r in &reqs {
            let _ = handle_from(&mut a, &r.to_string(), S, peer);
        }
    });
    let text = buf.text();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("espd::audit")).collect();
    assert_eq!(lines.len(), 5, "{text}");
    for l in &lines {
        assert!(l.contains("uid=0 pid=777 op="), "{l}");
        assert!(leaked(l, &[k1.clone(), k2.clone()]).is_none(), "key in {l}");
    }
    assert!(
        lines[0].contains(
            "op=\"sa_add\" sa.tunnel=\"to-b\" sa.direction=\"in\" sa.spi=0x7001 result=ok"
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("sa.spi=0x7002 result=error error=\"key: "),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("op=\"rekey\" tunnel=\"to-b\" outbound.tunnel=\"to-b\""),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains("result=error error=\"request did not parse\""),
        "{}",
        lines[3]
    );
    assert!(
        lines[4].ends_with("op=\"sa_delete\" direction=\"in\" spi=0x7001 result=ok"),
        "{}",
        lines[4]
    );
    assert!(
        !text.contains(&k1) && !text.contains(&k2),
        "no key anywhere in the log"
    );
}
