//! SA state moves with the SA (issue 11, defect 1 and "SA state moves with the SA"), through
//! the typed control API: `update_sa` with the same key continues the sequence counter, the
//! replay window and the consumed lifetime; a key is never installed on two SAs; `sa`
//! exports the state and `install_sa` imports it, so a standby gateway continues an SA without
//! reusing a nonce or accepting an old packet again; an ESN SA imported just below 2^32
//! carries traffic across the boundary, checked by Python `cryptography` with the ESN AAD.

mod common;

use std::sync::Arc;

use common::*;
use crossbeam_queue::ArrayQueue;
use espd::config::{Config, NewSa};
use espd::control::{Control, ControlError, Rekey};
use espd::datapath::mem::Frame;
use espd::datapath::{Action, CoreStats, DropReason, Pipeline, SaEvent};
use espd::sa::Direction::{self, Inbound, Outbound};
use espd::sa::sa::{SaError, SuccessorError};
use espd::sa::{Limits, SaState};
use serde_json::json;

const KEY_AB: &str = "00112233445566778899aabbccddeeff01020304";
const KEY_BA: &str = "ffeeddccbbaa99887766554433221100a0b0c0d0";

struct Side {
    ctl: Control,
    dp: Arc<espd::datapath::pipeline::Dataplane>,
    events: ArrayQueue<SaEvent>,
    stats: CoreStats,
    pcfg: espd::datapath::PipelineConfig,
}

fn side_text(text: &str) -> Side {
    let cfg = Config::parse(std::path::Path::new("t.toml"), text).unwrap();
    let dp = Arc::new(cfg.build_dataplane(1).unwrap());
    Side {
        ctl: Control::new(&cfg, dp.clone()),
        dp,
        events: ArrayQueue::new(1024),
        stats: CoreStats::default(),
        pcfg: cfg.pipeline_config(),
    }
}

fn side(name: &str) -> Side {
    side_text(&example_text(name))
}

impl Side {
    /// Installs `sa` (at t = 1 ns, the time the packets below run at).
    fn install(&mut self, sa: NewSa) {
        let spi = sa.spi;
        assert_eq!(self.ctl.install_sa(&sa, 1), Ok(spi), "{sa:?}");
    }
    fn update(&mut self, sa: NewSa) {
        let spi = sa.spi;
        assert_eq!(self.ctl.update_sa(&sa, 1), Ok(spi), "{sa:?}");
    }
    /// The transferable state of an installed SA.
    fn state(&self, spi: u32, d: Direction) -> SaState {
        let info = self.ctl.sa(spi, d, 1).unwrap();
        info.state.expect("`sa` returns the state")
    }
    fn run(&self, pkts: &[Vec<u8>], out: bool) -> Vec<(Action, Vec<u8>)> {
        let mut p = Pipeline::new(&self.dp, 0, &self.stats, &self.events, self.pcfg);
        let mut frames: Vec<Frame> = pkts.iter().map(|b| Frame::from_packet(b)).collect();
        let mut acts = vec![Action::Punt; frames.len()];
        for (f, a) in frames.chunks_mut(64).zip(acts.chunks_mut(64)) {
            if out {
                p.outbound(f, 1, a)
            } else {
                p.inbound(f, 1, a)
            }
        }
        frames
            .iter()
            .zip(acts)
            .map(|(f, a)| (a, f.bytes().to_vec()))
            .collect()
    }
    fn drops(&self, r: DropReason) -> u64 {
        self.stats.drops[r as usize].get()
    }
}

fn pkts(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            frame(
                "192.0.2.10",
                "198.51.100.20",
                17,
                1000,
                2000,
                &payload(64, i as u8),
            )
        })
        .collect()
}

/// The ESP sequence number of an outer-IPv4 ESP frame (Ethernet + 20-byte IPv4 + SPI).
fn esp_seq(f: &[u8]) -> u32 {
    u32::from_be_bytes(f[38..42].try_into().unwrap())
}

fn sent(out: &[(Action, Vec<u8>)]) -> Vec<Vec<u8>> {
    out.iter()
        .map(|(a, f)| {
            assert_eq!(*a, Action::Tx);
            f.clone()
        })
        .collect()
}

/// A→B's SA 0xa001 as its gateway holds it: gw-a's tunnel is `to-b`, gw-b's `to-a` (gw-b
/// holds the inbound SA of A's traffic).
fn ab(d: Direction, key: &str, limits: Limits) -> NewSa {
    let tunnel = if d == Inbound { "to-a" } else { "to-b" };
    NewSa {
        limits,
        ..new_sa(tunnel, d, 0xa001, key)
    }
}

fn hard_packets(n: u64) -> Limits {
    Limits {
        hard_packets: Some(n),
        ..Limits::default()
    }
}

#[test]
fn update_with_same_key_continues_the_outbound_sequence() {
    // Failed before the fix: after the update the sequence restarted at 1 (same key, same
    // nonces: GCM's confidentiality and integrity are gone).
    let mut a = side("gw-a.toml");
    let before: Vec<u32> = sent(&a.run(&pkts(3), true))
        .iter()
        .map(|f| esp_seq(f))
        .collect();
    assert_eq!(before, [1, 2, 3]);
    a.update(ab(Outbound, KEY_AB, hard_packets(1000)));
    let after: Vec<u32> = sent(&a.run(&pkts(3), true))
        .iter()
        .map(|f| esp_seq(f))
        .collect();
    assert_eq!(after, [4, 5, 6], "sequence numbers (nonces) reused");
    let st = a.state(0xa001, Outbound);
    assert_eq!(st.seq, Some(6), "{st:?}");
    // A new key under the same SPI starts a new sequence: its nonces are new.
    let key2 = "0f0e0d0c0b0a09080706050403020100aabbccdd";
    a.update(ab(Outbound, key2, Limits::default()));
    assert_eq!(esp_seq(&sent(&a.run(&pkts(1), true))[0]), 1);
}

#[test]
fn update_with_same_key_keeps_the_replay_window() {
    // Failed before the fix: the updated inbound SA started with an empty window and accepted
    // every captured packet a second time.
    let a = side("gw-a.toml");
    let mut b = side("gw-b.toml");
    let esp = sent(&a.run(&pkts(5), true));
    assert!(b.run(&esp, false).iter().all(|(act, _)| *act == Action::Tx));
    b.update(ab(
        Inbound,
        KEY_AB,
        Limits {
            hard_bytes: Some(1_000_000),
            ..Limits::default()
        },
    ));
    let again = b.run(&esp, false);
    assert!(
        again
            .iter()
            .all(|(act, _)| *act == Action::Drop(DropReason::Replay)),
        "replayed packets accepted after sa_update: {:?}",
        again.iter().map(|x| x.0).collect::<Vec<_>>()
    );
    // New packets still pass (the window moved on, nothing was lost).
    let esp = sent(&a.run(&pkts(3), true));
    assert!(b.run(&esp, false).iter().all(|(act, _)| *act == Action::Tx));
    let st = b.state(0xa001, Inbound);
    assert_eq!(st.replay_top, Some(8), "{st:?}");
    assert_eq!(
        st.replay_bitmap.as_ref().and_then(|w| w.first()),
        Some(&0xff),
        "{st:?}"
    );
}

#[test]
fn update_with_same_key_keeps_the_consumed_budget() {
    // Failed before the fix: each update reset the budget, so 6 + 6 packets passed a hard
    // limit of 10.
    let mut a = side("gw-a.toml");
    a.update(ab(Outbound, KEY_AB, hard_packets(10)));
    let n = |r: &[(Action, Vec<u8>)]| r.iter().filter(|x| x.0 == Action::Tx).count();
    assert_eq!(n(&a.run(&pkts(6), true)), 6);
    a.update(ab(Outbound, KEY_AB, hard_packets(10)));
    assert_eq!(
        n(&a.run(&pkts(6), true)),
        4,
        "hard limit exceeded across updates"
    );
    assert_eq!(a.drops(DropReason::LifetimeExpired), 2);
    // Raising the limit lets the same key carry on from where it was.
    a.update(ab(Outbound, KEY_AB, hard_packets(12)));
    assert_eq!(n(&a.run(&pkts(6), true)), 2);
    // Updating lifetimes keeps the add-time clock: an SA does not get younger.
    let st = a.state(0xa001, Outbound);
    assert_eq!(st.packets, 12, "{st:?}");
}

#[test]
fn update_that_changes_esn_or_window_under_the_same_key_is_refused() {
    let mut b = side("gw-b.toml");
    let esn = NewSa {
        esn: true,
        ..ab(Inbound, KEY_AB, Limits::default())
    };
    let e = b.ctl.update_sa(&esn, 1).expect_err("refused");
    assert_eq!(e, ControlError::Sa(SaError::Successor(SuccessorError::Esn)));
    assert_eq!(e.field(), "esn");
    let window = NewSa {
        replay_window: Some(64),
        ..ab(Inbound, KEY_AB, Limits::default())
    };
    let e = b.ctl.update_sa(&window, 1).expect_err("refused");
    assert_eq!(
        e,
        ControlError::Sa(SaError::Successor(SuccessorError::ReplayWindow(1024, 64)))
    );
    assert_eq!(e.field(), "replay_window");
    // Both refusals left the SA as it was.
    let info = b.ctl.sa(0xa001, Inbound, 1).unwrap();
    assert!(!info.esn);
    assert_eq!(
        info.state.and_then(|s| s.replay_bitmap).map(|w| w.len()),
        Some(1024 / 64)
    );
}

#[test]
fn a_key_is_refused_on_a_second_sa_of_the_same_direction() {
    // Failed before the fix: all three were accepted (two SAs under one key reuse every
    // nonce).
    let mut a = side("gw-a.toml");
    let e = a
        .ctl
        .install_sa(&new_sa("to-b", Inbound, 0xb002, KEY_BA), 1)
        .expect_err("refused");
    let in_use_by_b001 = ControlError::KeyInUse {
        direction: Inbound,
        spi: 0xb001,
    };
    assert_eq!(e, in_use_by_b001);
    assert_eq!(e.field(), "key");
    let rekey = Rekey {
        tunnel: "to-b".into(),
        outbound: new_sa("to-b", Outbound, 0xa002, KEY_AB),
        inbound: None,
        retire_inbound: None,
        grace_ms: None,
    };
    let e = a.ctl.rekey(rekey, 1).expect_err("refused");
    assert_eq!(e.field(), "outbound.key");
    assert!(
        matches!(&e, ControlError::In { part, source } if part == "outbound"
            && **source == ControlError::KeyInUse { direction: Outbound, spi: 0xa001 }),
        "{e:?}"
    );
    let twin = "aa112233445566778899aabbccddeeff01020304";
    let batch = [
        Ok(new_sa("to-b", Inbound, 0xb003, twin)),
        Ok(new_sa("to-b", Inbound, 0xb004, twin)),
    ];
    let e = a.ctl.install_sas(batch, 1).expect_err("refused");
    assert_eq!(e.field(), "sas[1].key");
    assert!(
        matches!(&e, ControlError::Batch { index: 1, installed: 1, source }
            if **source == ControlError::KeyInUse { direction: Inbound, spi: 0xb003 }),
        "{e:?}"
    );
    // Nor in the other direction: the peer would encrypt under it too (nonces repeat on the
    // wire), and our own packets reflected back to us would pass.
    let e = a
        .ctl
        .install_sa(&new_sa("to-b", Inbound, 0xb005, KEY_AB), 1)
        .expect_err("refused");
    assert_eq!(
        e,
        ControlError::KeyInUse {
            direction: Outbound,
            spi: 0xa001
        }
    );
    // Nothing of the refused SAs went in (the batch's first item did).
    assert_eq!(
        a.ctl
            .sa_list(Some(Inbound), 1000, 1)
            .sas
            .iter()
            .map(|s| s.spi)
            .collect::<Vec<_>>(),
        [0xb001, 0xb003]
    );
    assert_eq!(
        a.ctl.sa(0xa001, Outbound, 1).map(|s| s.spi),
        Ok(0xa001),
        "the refused rekey kept the outbound SA"
    );
    // The config file refuses it too, naming the field.
    let text = example_text("gw-a.toml")
        + "\n[[sas]]\ntunnel = \"to-b\"\ndirection = \"in\"\nspi = 0xb009\nkey = \""
        + KEY_BA
        + "\"\n";
    let e = Config::parse(std::path::Path::new("gw.toml"), &text)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("sas[2].key: the same key is already used by sas[1]"),
        "{e}"
    );
}

#[test]
fn a_standby_takes_over_an_sa_without_reusing_a_nonce_or_a_packet() {
    let a = side("gw-a.toml");
    let b = side("gw-b.toml");
    let esp = sent(&a.run(&pkts(40), true));
    // Packet 3 is held back by the network; the rest arrive.
    let (late, early): (Vec<_>, Vec<_>) =
        esp.iter().cloned().enumerate().partition(|(i, _)| *i == 3);
    let early: Vec<Vec<u8>> = early.into_iter().map(|x| x.1).collect();
    assert!(b.run(&early, false).iter().all(|x| x.0 == Action::Tx));
    let out_state = a.state(0xa001, Outbound);
    let in_state = b.state(0xa001, Inbound);
    assert_eq!(out_state.seq, Some(40));
    assert_eq!(in_state.replay_top, Some(40));

    // Standbys: the same configs without the static SAs, which arrive with their state.
    let strip = |name: &str| {
        let t = example_text(name);
        t[..t.find("[[sas]]").unwrap()].to_string()
    };
    let mut a2 = side_text(&strip("gw-a.toml"));
    let mut b2 = side_text(&strip("gw-b.toml"));
    a2.install(NewSa {
        state: Some(out_state),
        ..ab(Outbound, KEY_AB, Limits::default())
    });
    b2.install(NewSa {
        state: Some(in_state),
        ..ab(Inbound, KEY_AB, Limits::default())
    });
    // The standby continues the sequence...
    let next = sent(&a2.run(&pkts(2), true));
    assert_eq!((esp_seq(&next[0]), esp_seq(&next[1])), (41, 42));
    assert!(b2.run(&next, false).iter().all(|x| x.0 == Action::Tx));
    // ... refuses what the active gateway accepted ...
    let replays = b2.run(&early, false);
    assert!(
        replays
            .iter()
            .all(|x| x.0 == Action::Drop(DropReason::Replay))
    );
    // ... and still takes the packet that was late (never accepted before).
    assert_eq!(b2.run(&[late[0].1.clone()], false)[0].0, Action::Tx);

    // Bad state is refused with the field named.
    let with_state = |tunnel: &str, d, state| NewSa {
        state: Some(state),
        ..new_sa(tunnel, d, 0xb001, KEY_BA)
    };
    let refused = |side: &mut Side, sa: NewSa| side.ctl.install_sa(&sa, 1).expect_err("refused");
    let seq = |seq| SaState {
        seq: Some(seq),
        ..SaState::default()
    };
    // An inbound SA has no sequence counter; 2^33 is beyond a 32-bit one.
    let e = refused(&mut a2, with_state("to-b", Inbound, seq(5)));
    assert_eq!(e.field(), "state.seq", "{e}");
    let e = refused(&mut b2, with_state("to-a", Outbound, seq(1 << 33)));
    assert_eq!(e.field(), "state.seq", "{e}");
    let old = SaState {
        age_seconds: Some(u64::MAX),
        ..SaState::default()
    };
    let e = refused(&mut b2, with_state("to-a", Outbound, old));
    assert_eq!(e.field(), "state.age_seconds", "{e}");
    assert!(a2.ctl.sa(0xb001, Inbound, 1).is_err());
    assert!(b2.ctl.sa(0xb001, Outbound, 1).is_err());
    // (A state with an unknown field is refused on the wire: `tests/protocol.rs`.)
}

/// Runs Python `cryptography` (an independent AES-GCM) over ESN ESP packets. Skipped
/// outside CI when Python or the module is missing; a failure in CI.
fn python_decrypts(
    key: &str,
    spi: u32,
    frames: &[Vec<u8>],
    seq_hi: &[u32],
) -> Option<Vec<Vec<u8>>> {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !probe {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("python3 with cryptography is required in CI");
        }
        eprintln!("SKIPPED: python3 cryptography not available");
        return None;
    }
    let script = r#"
import sys, json
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
req = json.load(sys.stdin)
km = bytes.fromhex(req["key"]); key, salt = km[:-4], km[-4:]
out = []
for f, hi in zip(req["frames"], req["seq_hi"]):
    f = bytes.fromhex(f)
    esp = f[14 + 20:]
    spi, lo = esp[:4], esp[4:8]
    assert int.from_bytes(spi, "big") == req["spi"]
    iv = esp[8:16]
    # RFC 4106 section 5: with ESN the AAD is SPI || seq high || seq low, and the IV
    # espd sends is the full 64-bit sequence number.
    aad = spi + hi.to_bytes(4, "big") + lo
    assert iv == hi.to_bytes(4, "big") + lo, "IV is not the 64-bit sequence number"
    pt = AESGCM(key).decrypt(salt + iv, esp[16:], aad)
    out.append(pt.hex())
print(json.dumps(out))
"#;
    let input = json!({
        "key": key, "spi": spi,
        "frames": frames.iter().map(|f| f.iter().map(|b| format!("{b:02x}")).collect::<String>()).collect::<Vec<_>>(),
        "seq_hi": seq_hi,
    });
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "python: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Vec<String> = serde_json::from_slice(&o.stdout).unwrap();
    Some(v.iter().map(|h| hex(h)).collect())
}

#[test]
fn esn_sa_imported_below_2_pow_32_crosses_the_boundary_both_ways() {
    let strip = |name: &str| {
        let t = example_text(name);
        t[..t.find("[[sas]]").unwrap()].to_string()
    };
    let mut a = side_text(&strip("gw-a.toml"));
    let mut b = side_text(&strip("gw-b.toml"));
    let below = (1u64 << 32) - 3;
    a.install(NewSa {
        esn: true,
        state: Some(SaState {
            seq: Some(below),
            ..SaState::default()
        }),
        ..ab(Outbound, KEY_AB, Limits::default())
    });
    b.install(NewSa {
        esn: true,
        state: Some(SaState {
            replay_top: Some(below),
            replay_bitmap: Some(vec![1]),
            ..SaState::default()
        }),
        ..ab(Inbound, KEY_AB, Limits::default())
    });
    let plain = pkts(6);
    let esp = sent(&a.run(&plain, true));
    let seqs: Vec<u32> = esp.iter().map(|f| esp_seq(f)).collect();
    assert_eq!(seqs, [0xffff_fffe, 0xffff_ffff, 0, 1, 2, 3]);
    let got = b.run(&esp, false);
    for (i, (act, f)) in got.iter().enumerate() {
        assert_eq!(*act, Action::Tx, "packet {i}");
        // Each gateway decrements the inner TTL (RFC 4301 §5.1.2.1).
        assert_eq!(&f[14..], &aged(&plain[i], 2)[14..], "packet {i}");
    }
    let st = b.state(0xa001, Inbound);
    assert_eq!(st.replay_top, Some((1u64 << 32) + 3), "{st:?}");
    // Replays from both sides of the boundary are refused.
    assert!(
        b.run(&esp, false)
            .iter()
            .all(|x| x.0 == Action::Drop(DropReason::Replay))
    );
    // An independent AES-GCM decrypts every packet with the ESN AAD.
    if let Some(pts) = python_decrypts(KEY_AB, 0xa001, &esp, &[0, 0, 1, 1, 1, 1]) {
        for (i, pt) in pts.iter().enumerate() {
            // The plaintext is the inner packet, padding, pad length and next header (4).
            let inner = &aged(&plain[i], 1)[14..];
            assert_eq!(&pt[..inner.len()], inner, "packet {i}");
            assert_eq!(pt[pt.len() - 1], 4, "next header, packet {i}");
        }
    }
}

#[test]
fn a_key_that_comes_back_continues_where_it_stopped() {
    // Review finding: a key that left (delete, update to another key, rekey away) and came back
    // started again at sequence 1, and its inbound window empty.
    let mut a = side("gw-a.toml");
    let mut b = side("gw-b.toml");
    let first = sent(&a.run(&pkts(5), true));
    assert!(b.run(&first, false).iter().all(|x| x.0 == Action::Tx));
    // Outbound: away to another key and back again.
    let key2 = "0f0e0d0c0b0a09080706050403020100aabbccdd";
    a.update(ab(Outbound, key2, Limits::default()));
    assert_eq!(esp_seq(&sent(&a.run(&pkts(1), true))[0]), 1);
    a.update(ab(Outbound, KEY_AB, Limits::default()));
    assert_eq!(
        esp_seq(&sent(&a.run(&pkts(1), true))[0]),
        6,
        "a returning key restarted its sequence numbers"
    );
    // Inbound: deleted and added again under another SPI, the old packets stay refused.
    assert_eq!(b.ctl.remove_sa(0xa001, Inbound, 1), Ok(()));
    assert!(b.ctl.sa(0xa001, Inbound, 1).is_err());
    b.install(ab(Inbound, KEY_AB, Limits::default()));
    assert!(
        b.run(&first, false)
            .iter()
            .all(|x| x.0 == Action::Drop(DropReason::Replay)),
        "a returning inbound key accepted old packets again"
    );
    // A key once used in one direction never serves the other.
    a.update(ab(Outbound, key2, Limits::default()));
    let e = a
        .ctl
        .install_sa(&new_sa("to-b", Inbound, 0xb007, KEY_AB), 1)
        .expect_err("refused");
    assert_eq!(
        e,
        ControlError::KeyOtherDirection {
            direction: Outbound
        }
    );
    assert_eq!(e.field(), "key");
}
