//! Replays the checked-in fuzz corpus (and any crashes saved under fuzz/artifacts) through
//! the fuzz entry points, so every `cargo test` re-checks what the fuzzers found.

use std::path::Path;

fn replay(target: &str, f: impl Fn(&[u8])) -> usize {
    let mut n = 0;
    for dir in ["corpus", "artifacts"] {
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join(dir)
            .join(target);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
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
