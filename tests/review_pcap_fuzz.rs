//! Review (h-review): `espd::pcap::read_trace` must not panic on mutated pcap/pcapng input.

use std::time::Duration;

fn pcapng_sample() -> Vec<u8> {
    let mut w = espd::pcap::PcapNg::new(
        Vec::new(),
        256,
        &[
            ("lan0".to_string(), "lan0 rx".to_string()),
            ("wan0".to_string(), "wan0 tx".to_string()),
        ],
    )
    .unwrap();
    for i in 0..4u8 {
        w.packet(
            u32::from(i % 2),
            Duration::new(1_700_000_000, u32::from(i) * 1000),
            60 + u32::from(i),
            if i % 2 == 0 {
                espd::pcap::Dir::Inbound
            } else {
                espd::pcap::Dir::Outbound
            },
            &vec![i; 60 + usize::from(i)],
        )
        .unwrap();
    }
    w.into_inner()
}

fn pcap_sample() -> Vec<u8> {
    let mut out = Vec::new();
    let frames: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 60]).collect();
    espd::pcap::write(
        &mut out,
        frames
            .iter()
            .enumerate()
            .map(|(i, f)| (i as u32, 0, f.as_slice())),
    )
    .unwrap();
    out
}

#[test]
fn mutated_files_do_not_panic() {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for base in [pcapng_sample(), pcap_sample()] {
        for round in 0..30_000 {
            let mut b = base.clone();
            let flips = 1 + (next() % 4) as usize;
            for _ in 0..flips {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            if round % 2 == 0 && b.len() > 4 {
                // A 32-bit field (lengths, option codes) set to an edge value.
                let i = ((next() as usize) % (b.len() - 4)) & !3;
                let v: u32 = [
                    0,
                    1,
                    3,
                    4,
                    8,
                    12,
                    0x7fff_ffff,
                    0xffff_fffc,
                    0xffff_ffff,
                    28,
                    32,
                ][(next() % 11) as usize];
                b[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            if round % 3 == 0 {
                let cut = (next() as usize) % b.len();
                b.truncate(cut);
            }
            let r = std::panic::catch_unwind(|| {
                let _ = espd::pcap::read_trace(&b[..]);
            });
            assert!(r.is_ok(), "panic on input {b:02x?}");
        }
    }
}
