//! Replays the checked-in fuzz corpus (and any crashes saved under fuzz/artifacts) through
//! the fuzz entry points, so every `cargo test` re-checks what the fuzzers found.

use std::path::Path;

fn replay(target: &str, mut f: impl FnMut(&[u8])) -> usize {
    let mut n = 0;
    for dir in ["corpus", "artifacts"] {
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join(dir)
            .join(target);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for p in paths {
            if p.is_file() {
                f(&std::fs::read(&p).unwrap());
                n += 1;
            }
        }
    }
    n
}

#[test]
fn wire_corpus() {
    assert!(
        replay("wire", espd::fuzzing::wire) >= 20,
        "the seed corpus is missing"
    );
}

#[test]
fn inbound_corpus() {
    let tx = std::cell::Cell::new(0);
    let n = replay("inbound", |d| {
        if espd::fuzzing::inbound(d) == espd::datapath::Action::Tx {
            tx.set(tx.get() + 1);
        }
    });
    assert!(n >= 20, "the seed corpus is missing");
    // The seeds hold genuine ESP for gateway B (made by espd and by scapy): those decrypt.
    assert!(tx.get() >= 6, "only {} corpus frames decrypted", tx.get());
}

#[test]
fn inbound_sealed_corpus() {
    let (mut inputs, mut reaching, mut frames, mut tx) = (0, 0, 0, 0);
    replay("inbound_sealed", |d| {
        let r = espd::fuzzing::inbound_sealed(d);
        inputs += 1;
        frames += r.frames;
        tx += r.tx;
        reaching += usize::from(r.tx > 0);
    });
    assert!(inputs >= 100, "the corpus is missing ({inputs} inputs)");
    // Sealed under the real keys, a good part of the inputs (the rest explore the refusals) get
    // a frame through decryption, the trailer and selector checks and the replay commit.
    assert!(
        reaching * 3 >= inputs && tx * 4 >= frames,
        "only {reaching} of {inputs} inputs had a frame forwarded ({tx} of {frames} frames)"
    );
}

#[test]
fn outbound_corpus() {
    let (mut inputs, mut reaching, mut icmp) = (0, 0, 0);
    replay("outbound", |d| {
        let r = espd::fuzzing::outbound(d);
        inputs += 1;
        reaching += usize::from(r.tx > 0);
        icmp += r.icmp;
    });
    assert!(inputs >= 100, "the corpus is missing ({inputs} inputs)");
    assert!(
        reaching * 3 >= inputs,
        "only {reaching} of {inputs} inputs had a frame encapsulated and opened by the peer"
    );
    assert!(icmp > 0, "no input made an ICMP error");
}

#[test]
fn control_corpus() {
    let n = replay("control", espd::fuzzing::control);
    assert!(n >= 100, "the corpus is missing ({n} inputs)");
}

#[test]
fn config_corpus() {
    let n = replay("config", espd::fuzzing::config);
    assert!(n >= 100, "the corpus is missing ({n} inputs)");
}

#[test]
fn ike_wire_corpus() {
    let (mut inputs, mut parsed) = (0, 0);
    replay("ike_wire", |d| {
        inputs += 1;
        parsed += usize::from(espd::fuzzing::ike_wire(d) > 0);
    });
    assert!(inputs >= 100, "the corpus is missing ({inputs} inputs)");
    // The corpus holds real strongSwan messages and espd-built ones: many parse to payloads.
    assert!(
        parsed * 3 >= inputs,
        "only {parsed} of {inputs} inputs parsed to at least one payload"
    );
}

#[test]
fn ike_engine_corpus() {
    let (mut inputs, mut total) = (0, espd::fuzzing::IkeEngineRun::default());
    let mut reaching = 0;
    replay("ike_engine", |d| {
        let r = espd::fuzzing::ike_engine(d);
        inputs += 1;
        reaching += usize::from(r.children > 0);
        total.delivered += r.delivered;
        total.rekeys += r.rekeys;
        total.failures += r.failures;
        total.children_down += r.children_down;
    });
    assert!(inputs >= 10, "the corpus is missing ({inputs} inputs)");
    // The seeds (a handshake, rekeys, deletes, DPD, NAT-T, PFS, refusals, strongSwan's MM1,
    // mutated replays) reach established state, rekeys, failures and children taken down.
    assert!(
        reaching * 2 >= inputs,
        "only {reaching} of {inputs} set up a child"
    );
    assert!(
        total.rekeys > 0 && total.failures > 0 && total.children_down > 0,
        "{total:?}"
    );
}

#[test]
fn ike_engine_every_configuration_starts() {
    // Every configuration the first byte picks, with no steps after it: no panic, and the
    // plain ones come up (asserted inside).
    let children: Vec<usize> = (0..=255u8)
        .map(|f| espd::fuzzing::ike_engine(&[f]).children)
        .collect();
    // Without the skip (bit 7) and the refusals (bits 5 and 6), a child on each end (one
    // pair), or two pairs when both ends initiate at once (bit 2): 16 configurations each.
    assert_eq!(children.iter().filter(|c| **c == 2).count(), 16);
    assert_eq!(children.iter().filter(|c| **c == 4).count(), 16);
}

#[test]
fn capture_file_corpus() {
    let mut frames = 0;
    let n = replay("capture_file", |d| frames += espd::fuzzing::capture_file(d));
    assert!(n >= 3, "the seed corpus is missing");
    assert!(frames > 0, "no seed read as a capture file");
}

#[test]
fn netlink_corpus() {
    let n = replay("netlink", |d| {
        espd::fuzzing::netlink(d);
    });
    assert!(n >= 1, "the seed corpus is missing");
}
