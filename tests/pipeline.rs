//! The pipeline over in-memory frames: a gateway pair A ⇄ B, and every malformed-input class
//! dropped under the right code without a panic.

mod common;

use common::*;
use espd::datapath::{Action, DropReason, SaEventKind};
use espd::esp::encap;
use espd::sa::{Direction, Sa, SaParams};
use espd::wire::ipv4::Ipv4Packet;
use proptest::prelude::*;
use rand::SeedableRng;
use zeroize::Zeroizing;

fn pair() -> (Gw, Gw) {
    (Gw::example("gw-a.toml"), Gw::example("gw-b.toml"))
}

fn code(a: Action) -> u32 {
    match a {
        Action::Drop(r) => r.code().code,
        other => panic!("expected a drop, got {other:?}"),
    }
}

/// Inner IP packet of a frame (after the Ethernet header).
fn ip(f: &[u8]) -> &[u8] {
    &f[14..]
}

#[test]
fn a_to_b_and_back_every_byte() {
    let (a, b) = pair();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let flows = [
        ("192.0.2.10", "198.51.100.20", 17u8),
        ("192.0.2.10", "198.51.100.20", 6),
        ("fd00:a::10", "fd00:b::20", 17),
        ("fd00:a::10", "fd00:b::20", 6),
    ];
    for (i, (s, d, p)) in flows.iter().enumerate() {
        for _ in 0..50 {
            let n = rng.random_range(0..1400);
            let pkt = frame(s, d, *p, 40000 + i as u16, 5001, &payload(n, i as u8));
            let (act, out) = through_pair(&a, &b, &pkt);
            assert_eq!(act, Action::Tx);
            assert_eq!(ip(&out), ip(&pkt), "A→B inner packet changed");
            assert_eq!(
                &out[..6],
                &b.cfg.plain.next_hop_mac.unwrap(),
                "B addresses its LAN next hop"
            );
            // And back: B encrypts, A decrypts.
            let back = frame(d, s, *p, 5001, 40000 + i as u16, &payload(n, 99));
            let (act, out) = through_pair(&b, &a, &back);
            assert_eq!(act, Action::Tx);
            assert_eq!(ip(&out), ip(&back), "B→A inner packet changed");
        }
    }
    assert_eq!(a.stats.drops_by_code().len(), 0);
    assert_eq!(b.stats.drops_by_code().len(), 0);
}

#[test]
fn outer_header_is_esp_between_the_gateways() {
    let (a, _) = pair();
    let pkt = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, b"x");
    let out = a.out(&[pkt.clone(), pkt]);
    for (i, (act, f)) in out.iter().enumerate() {
        assert_eq!(*act, Action::Tx);
        assert_eq!(&f[..6], &a.cfg.cipher.next_hop_mac.unwrap());
        let p = Ipv4Packet::new_checked(ip(f)).unwrap();
        assert_eq!(p.protocol(), 50);
        assert_eq!(p.src().to_string(), "203.0.113.1");
        assert_eq!(p.dst().to_string(), "203.0.113.2");
        assert!(p.verify_checksum());
        let esp = p.payload();
        assert_eq!(&esp[..4], &0xa001u32.to_be_bytes());
        assert_eq!(
            &esp[4..8],
            &(i as u32 + 1).to_be_bytes(),
            "sequence numbers start at 1"
        );
    }
}

/// A valid ESP frame from A to B, plus B.
fn esp_from_a() -> (Gw, Gw, Vec<u8>) {
    let (a, b) = pair();
    let pkt = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, &payload(100, 1));
    let (act, esp) = a.out(&[pkt]).remove(0);
    assert_eq!(act, Action::Tx);
    (a, b, esp)
}

/// Rewrites the IPv4 total length and checksum after a change to the frame's length.
fn fix_ipv4(f: &mut [u8]) {
    let len = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&len.to_be_bytes());
    espd::wire::ipv4::fill_checksum(&mut f[14..]);
}

#[test]
fn truncated_at_every_length() {
    let (_, b, esp) = esp_from_a();
    for cut in 0..esp.len() {
        let f = esp[..cut].to_vec();
        let (act, _) = b.inn(&[f]).remove(0);
        assert_eq!(code(act), 13914, "truncated to {cut} bytes: {act:?}");
        // With the IP length fixed up the ESP part is short or fails authentication.
        if cut >= 34 {
            let mut f = esp[..cut].to_vec();
            fix_ipv4(&mut f);
            let (act, _) = b.inn(&[f]).remove(0);
            assert!(
                [13914, 13915].contains(&code(act)),
                "ESP truncated to {cut}: {act:?}"
            );
        }
    }
}

#[test]
fn flipped_icv_and_ciphertext() {
    let (_, b, esp) = esp_from_a();
    for pos in [14 + 20 + 8, 14 + 20 + 30, esp.len() - 1] {
        let mut f = esp.clone();
        f[pos] ^= 1;
        assert_eq!(b.inn(&[f]).remove(0).0, Action::Drop(DropReason::Integrity));
    }
    // The genuine packet still passes: forgeries did not move the window.
    assert_eq!(b.inn(&[esp]).remove(0).0, Action::Tx);
}

#[test]
fn unknown_spi() {
    let (_, b, mut esp) = esp_from_a();
    esp[34..38].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    assert_eq!(b.inn(&[esp]).remove(0).0, Action::Drop(DropReason::BadSpi));
    assert_eq!(b.stats.drops_by_code()[&13910], 1);
}

#[test]
fn replay_and_too_old() {
    let (a, b) = pair();
    let pkts: Vec<Vec<u8>> = (0..1100)
        .map(|i| {
            frame(
                "192.0.2.10",
                "198.51.100.20",
                17,
                1,
                2,
                &payload(20, i as u8),
            )
        })
        .collect();
    let esp: Vec<Vec<u8>> = a.out(&pkts).into_iter().map(|(_, f)| f).collect();
    assert_eq!(b.inn(&[esp[5].clone()]).remove(0).0, Action::Tx);
    assert_eq!(
        b.inn(&[esp[5].clone()]).remove(0).0,
        Action::Drop(DropReason::Replay)
    );
    // Deliver the rest, then the first packet is older than the 1024 window.
    assert!(b.inn(&esp[6..200]).iter().all(|(a, _)| *a == Action::Tx));
    assert!(b.inn(&esp[201..]).iter().all(|(a, _)| *a == Action::Tx));
    assert_eq!(
        b.inn(&[esp[0].clone()]).remove(0).0,
        Action::Drop(DropReason::Replay)
    );
    // A duplicate inside the window is refused; a late packet inside the window is fine.
    assert_eq!(
        b.inn(&[esp[1000].clone()]).remove(0).0,
        Action::Drop(DropReason::Replay)
    );
    assert_eq!(b.inn(&[esp[200].clone()]).remove(0).0, Action::Tx);
    assert_eq!(b.stats.drops_by_code()[&13913], 3);
}

/// Seals an arbitrary ESP payload (with trailer) under B's inbound SA key, for attacks that
/// need a valid ICV: bad padding, bad next header, wrong inner addresses.
fn craft(inner_with_trailer: &[u8], seq: u64) -> Vec<u8> {
    let p = SaParams {
        spi: 0xa001,
        direction: Direction::Outbound,
        mode: espd::sa::Mode::Tunnel,
        endpoints: Some(espd::sa::Endpoints {
            local: "203.0.113.1".parse().unwrap(),
            remote: "203.0.113.2".parse().unwrap(),
        }),
        encap: None,
        esn: false,
        keymat: Zeroizing::new(hex("00112233445566778899aabbccddeeff01020304")),
        backend: Default::default(),
        limits: Default::default(),
        replay_window: 1024,
        inner: vec![],
        mtu: 1500,
    };
    let sa = Sa::new(&p, 1, 0).unwrap();
    let mut esp = vec![0u8; 16 + inner_with_trailer.len() + 16];
    esp[16..16 + inner_with_trailer.len()].copy_from_slice(inner_with_trailer);
    encap::seal_at(
        &sa,
        seq,
        seq.to_be_bytes(),
        &mut esp,
        inner_with_trailer.len(),
    )
    .unwrap();
    eth(
        0x0800,
        &ipv4(
            "203.0.113.1".parse().unwrap(),
            "203.0.113.2".parse().unwrap(),
            50,
            esp,
        ),
    )
}

fn inner_v4(src: &str, dst: &str) -> Vec<u8> {
    ipv4(
        src.parse().unwrap(),
        dst.parse().unwrap(),
        17,
        l4(17, 1, 2, b"abcdefgh"),
    )
}

#[test]
fn bad_padding_next_header_and_selectors() {
    let (_, b) = pair();
    let inner = inner_v4("192.0.2.10", "198.51.100.20"); // 36 bytes
    let with = |pad: &[u8], padlen: u8, nh: u8| {
        let mut v = inner.clone();
        v.extend_from_slice(pad);
        v.push(padlen);
        v.push(nh);
        v
    };
    // Valid: 36 + 2 = 38 → 2 bytes of padding.
    assert_eq!(
        b.inn(&[craft(&with(&[1, 2], 2, 4), 1)]).remove(0).0,
        Action::Tx
    );
    // Padding bytes not 1, 2.
    assert_eq!(
        b.inn(&[craft(&with(&[1, 3], 2, 4), 2)]).remove(0).0,
        Action::Drop(DropReason::BadPadding)
    );
    // Pad length larger than the payload.
    assert_eq!(
        b.inn(&[craft(&with(&[1, 2], 250, 4), 3)]).remove(0).0,
        Action::Drop(DropReason::BadPadding)
    );
    // Next header UDP in a tunnel-mode SA.
    assert_eq!(
        b.inn(&[craft(&with(&[1, 2], 2, 17), 4)]).remove(0).0,
        Action::Drop(DropReason::BadNextHeader)
    );
    // Next header IPv6 but an IPv4 packet inside.
    assert_eq!(
        b.inn(&[craft(&with(&[1, 2], 2, 41), 5)]).remove(0).0,
        Action::Drop(DropReason::BadNextHeader)
    );
    // TFC dummy packet (next header 59).
    assert_eq!(
        b.inn(&[craft(&with(&[1, 2], 2, 59), 6)]).remove(0).0,
        Action::Drop(DropReason::Dummy)
    );
    // Ciphertext not a multiple of 4.
    assert_eq!(
        b.inn(&[craft(&with(&[1], 1, 4), 7)]).remove(0).0,
        Action::Drop(DropReason::BadAlignment)
    );
    // Authentic, but the inner source is outside the SA's selectors.
    let spoof = {
        let mut v = inner_v4("10.9.9.9", "198.51.100.20");
        v.extend_from_slice(&[1, 2, 2, 4]);
        v
    };
    assert_eq!(
        b.inn(&[craft(&spoof, 8)]).remove(0).0,
        Action::Drop(DropReason::WrongSa)
    );
    let by = b.stats.drops_by_code();
    assert_eq!((by[&13914], by[&13912]), (6, 1));
}

#[test]
fn cleartext_and_policy() {
    let (a, b) = pair();
    // Cleartext aimed at B's protected prefix, arriving on B's cipher side.
    let clear = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, b"sneaky");
    assert_eq!(
        b.inn(&[clear]).remove(0).0,
        Action::Drop(DropReason::ClearText)
    );
    // Plain traffic that no policy covers: default discard, 13916.
    let other = frame("192.0.2.10", "203.0.113.99", 17, 1, 2, b"x");
    assert_eq!(
        a.out(&[other]).remove(0).0,
        Action::Drop(DropReason::ClearText)
    );
    assert_eq!(a.stats.drops_by_code()[&13916], 1);
}

#[test]
fn punts_what_the_kernel_must_see() {
    let (a, b) = pair();
    let arp = {
        let mut f = eth(0x0806, &[0u8; 28]);
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        f
    };
    assert_eq!(a.out(std::slice::from_ref(&arp)).remove(0).0, Action::Punt);
    assert_eq!(b.inn(&[arp]).remove(0).0, Action::Punt);
    // IKE on 500, and on 4500 with the zero non-ESP marker.
    let ike = frame("203.0.113.1", "203.0.113.2", 17, 500, 500, &[0u8; 40]);
    assert_eq!(b.inn(&[ike]).remove(0).0, Action::Punt);
    let ike_nat = frame("203.0.113.1", "203.0.113.2", 17, 4500, 4500, &[0u8; 40]);
    assert_eq!(b.inn(&[ike_nat]).remove(0).0, Action::Punt);
    // Traffic for the gateway's own LAN address.
    let to_gw = frame("192.0.2.10", "192.0.2.1", 17, 1, 2, b"hi");
    assert_eq!(a.out(&[to_gw]).remove(0).0, Action::Punt);
}

#[test]
fn too_big_gets_icmp_frag_needed() {
    let (a, _) = pair();
    let big = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, &payload(1472, 3)); // 1500-byte IP
    let (act, f) = a.out(std::slice::from_ref(&big)).remove(0);
    assert_eq!(act, Action::TxBack);
    assert_eq!(&f[..6], &big[6..12], "sent back to the sender's MAC");
    let p = Ipv4Packet::new_checked(ip(&f)).unwrap();
    assert!(p.verify_checksum());
    assert_eq!(
        (p.protocol(), p.src().to_string(), p.dst().to_string()),
        (1, "192.0.2.1".into(), "192.0.2.10".into())
    );
    let icmp = p.payload();
    assert_eq!((icmp[0], icmp[1]), (3, 4));
    assert_eq!(espd::wire::checksum::checksum(icmp), 0);
    let mtu = u16::from_be_bytes([icmp[6], icmp[7]]) as usize;
    // The advertised size fits exactly: one more byte of inner packet would not.
    let fits = frame(
        "192.0.2.10",
        "198.51.100.20",
        17,
        1,
        2,
        &payload(mtu - 28, 3),
    );
    assert_eq!(a.out(&[fits]).remove(0).0, Action::Tx);
    let over = frame(
        "192.0.2.10",
        "198.51.100.20",
        17,
        1,
        2,
        &payload(mtu - 27, 3),
    );
    assert_eq!(a.out(&[over]).remove(0).0, Action::TxBack);
    assert_eq!(a.stats.drops_of(DropReason::TooBig), 2);
    // IPv6: ICMPv6 packet too big.
    let big6 = frame("fd00:a::10", "fd00:b::20", 17, 1, 2, &payload(1452, 3));
    let (act, f) = a.out(&[big6]).remove(0);
    assert_eq!(act, Action::TxBack);
    assert_eq!((f[14 + 6], f[14 + 40]), (58, 2));
}

const LIFETIME_CFG_EXTRA: &str = "\n[sas.lifetime]\nsoft_packets = 3\nhard_packets = 5\n";

#[test]
fn lifetime_expiry_in_the_pipeline() {
    // Outbound SA of A limited to 5 packets (soft at 3).
    let text = example_text("gw-a.toml");
    let (head, tail) = text.split_at(text.find("# B → A").unwrap());
    let a = Gw::from_toml(&format!("{head}{LIFETIME_CFG_EXTRA}\n{tail}"));
    let pkt = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, b"x");
    let acts: Vec<Action> = a.out(&vec![pkt; 8]).into_iter().map(|(a, _)| a).collect();
    assert_eq!(&acts[..5], &[Action::Tx; 5]);
    assert_eq!(&acts[5..], &[Action::Drop(DropReason::LifetimeExpired); 3]);
    let ev = a.events();
    assert_eq!(
        ev.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![SaEventKind::Soft, SaEventKind::Hard]
    );
    assert_eq!(a.stats.drops_by_code()[&13911], 3);
}

#[test]
fn time_lifetime_with_mock_clock() {
    let text = example_text("gw-b.toml");
    let (head, tail) = text.split_at(text.find("# B → A").unwrap());
    let b = Gw::from_toml(&format!(
        "{head}\n[sas.lifetime]\nsoft_seconds = 10\nhard_seconds = 20\n\n{tail}"
    ));
    let (a, _) = pair();
    let pkt = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, b"x");
    let esp: Vec<Vec<u8>> = a.out(&vec![pkt; 3]).into_iter().map(|(_, f)| f).collect();
    let s = 1_000_000_000u64;
    assert_eq!(b.inn_at(&[esp[0].clone()], 5 * s).remove(0).0, Action::Tx);
    assert_eq!(b.inn_at(&[esp[1].clone()], 15 * s).remove(0).0, Action::Tx);
    assert_eq!(
        b.inn_at(&[esp[2].clone()], 25 * s).remove(0).0,
        Action::Drop(DropReason::LifetimeExpired)
    );
    let kinds: Vec<_> = b.events().iter().map(|e| (e.kind, e.direction)).collect();
    assert_eq!(
        kinds,
        vec![
            (SaEventKind::Soft, Direction::Inbound),
            (SaEventKind::Hard, Direction::Inbound)
        ]
    );
}

#[test]
fn completes_partial_checksums() {
    let (a, b) = pair();
    let mut pkt = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, &payload(64, 1));
    // What a veth with tx checksum offload hands over: the folded pseudo-header sum.
    let psum = espd::wire::checksum::pseudo_v4(
        "192.0.2.10".parse().unwrap(),
        "198.51.100.20".parse().unwrap(),
        17,
        72,
    );
    pkt[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&espd::wire::checksum::fold(psum).to_be_bytes());
    let (act, out) = through_pair(&a, &b, &pkt);
    assert_eq!(act, Action::Tx);
    let good = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, &payload(64, 1));
    assert_eq!(ip(&out), ip(&good), "checksum completed before sealing");
    assert_eq!(a.stats.checksums_completed.get(), 1);
}

#[test]
fn udp_encapsulation_pair() {
    let enc = |t: &str| t.replace("mtu = 1500", "mtu = 1500\nencap = \"udp\"");
    let a = Gw::from_toml(&enc(&example_text("gw-a.toml")));
    let b = Gw::from_toml(&enc(&example_text("gw-b.toml")));
    let pkt = frame("192.0.2.10", "198.51.100.20", 6, 1, 2, &payload(500, 4));
    let (act, esp) = a.out(std::slice::from_ref(&pkt)).remove(0);
    assert_eq!(act, Action::Tx);
    assert_eq!(esp[14 + 9], 17);
    assert_eq!(
        &esp[14 + 20..14 + 24],
        &[0x11, 0x94, 0x11, 0x94],
        "UDP 4500 → 4500"
    );
    let (act, out) = b.inn(&[esp]).remove(0);
    assert_eq!(act, Action::Tx);
    assert_eq!(ip(&out), ip(&pkt));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Arbitrary bytes, and arbitrary mutations of a valid ESP frame, never panic and never
    /// pass unless they are the genuine packet.
    #[test]
    fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200),
                    flips in prop::collection::vec((0usize..200, any::<u8>()), 1..4)) {
        let (a, b) = pair();
        let _ = a.out(std::slice::from_ref(&bytes));
        let _ = b.inn(&[bytes]);
        let pkt = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, &payload(60, 1));
        let (_, mut esp) = a.out(&[pkt]).remove(0);
        let orig = esp.clone();
        for (pos, x) in flips {
            let l = esp.len();
            esp[pos % l] ^= x;
        }
        let (act, _) = b.inn(&[esp.clone()]).remove(0);
        if esp[14..] != orig[14..] && esp[14 + 20..] != orig[14 + 20..] {
            prop_assert!(act != Action::Tx, "a modified ESP payload passed");
        }
    }
}

#[test]
fn sequence_numbers_are_consecutive_across_batches_and_never_wrap() {
    let (a, b) = pair();
    let pkt = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, b"x");
    let mut seqs = Vec::new();
    for n in [5usize, 3, 64, 1, 17] {
        for (act, f) in a.out(&vec![pkt.clone(); n]) {
            assert_eq!(act, Action::Tx);
            seqs.push(u32::from_be_bytes(f[38..42].try_into().unwrap()));
        }
    }
    assert_eq!(seqs, (1..=90).collect::<Vec<u32>>());
    // Near the end of the 32-bit space: the last numbers go out, then the SA is dead.
    {
        let g = crossbeam_epoch::pin();
        a.dp.sas
            .outbound(0, &g)
            .unwrap()
            .set_seq(u32::MAX as u64 - 2);
    }
    let out = a.out(&vec![pkt.clone(); 5]);
    let acts: Vec<Action> = out.iter().map(|o| o.0).collect();
    assert_eq!(&acts[..2], &[Action::Tx; 2]);
    // The first refusal names the cause; the SA is then expired (both are 13911).
    assert_eq!(acts[2], Action::Drop(DropReason::SeqExhausted));
    assert_eq!(&acts[3..], &[Action::Drop(DropReason::LifetimeExpired); 2]);
    assert_eq!(
        u32::from_be_bytes(out[1].1[38..42].try_into().unwrap()),
        u32::MAX
    );
    assert_eq!(
        a.events()
            .iter()
            .filter(|e| e.kind == SaEventKind::Hard)
            .count(),
        1
    );
    assert_eq!(
        a.out(&[pkt]).remove(0).0,
        Action::Drop(DropReason::LifetimeExpired)
    );
    let _ = b;
}

/// With more inbound SAs than `prefetch_above` (4096) the pipeline prefetches each batch's SA state in three
/// passes that read the frames unvalidated. Those passes must change nothing: every frame of a
/// batch of valid, malformed, forged and foreign frames gets the same verdict and bytes as on
/// a gateway without them, and valid ESP for the extra SAs is accepted.
#[test]
fn prefetch_passes_change_no_verdict() {
    let (a, big) = pair();
    let (_, small) = pair();
    let template = big.cfg.sa_params(Direction::Inbound).unwrap().clone();
    let mut extra = Vec::new();
    for _ in 0..5000 {
        let mut p = template.clone();
        p.spi = big.dp.sas.allocate_spi().unwrap();
        big.dp
            .sas
            .install_inbound(Sa::new(&p, 1, 1).unwrap())
            .unwrap();
        extra.push(p.spi);
    }
    assert!(
        big.dp.sas.inbound_len() > big.pcfg.prefetch_above,
        "the prefetch passes run"
    );

    let pkts: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            let (s, d) = if i % 2 == 0 {
                ("192.0.2.10", "198.51.100.20")
            } else {
                ("fd00:a::10", "fd00:b::20")
            };
            frame(s, d, 17, 1000 + i, 2, &payload(i as usize * 7, i as u8))
        })
        .collect();
    let esp: Vec<Vec<u8>> = a.out(&pkts).into_iter().map(|(_, f)| f).collect();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    for (i, e) in esp.iter().enumerate() {
        match i % 5 {
            0 => batch.push(e[..(i * 3).min(e.len())].to_vec()),
            1 => {
                let mut f = e.clone();
                let last = f.len() - 1;
                f[last] ^= 1;
                batch.push(f);
            }
            2 => {
                let mut f = e.clone();
                f[34..38].copy_from_slice(&0xdead_beefu32.to_be_bytes());
                batch.push(f);
            }
            _ => {}
        }
        batch.push(e.clone());
    }
    batch.push(vec![0x08; 5]);
    batch.push(pkts[0].clone());
    let got_big = big.inn(&batch);
    let got_small = small.inn(&batch);
    assert_eq!(got_big, got_small);
    assert!(got_big.iter().filter(|(a, _)| *a == Action::Tx).count() >= 40);

    // ESP for some of the extra SAs (made by outbound twins) passes on the big gateway.
    let out_template = a.cfg.sa_params(Direction::Outbound).unwrap().clone();
    let mut frames = Vec::new();
    for &spi in extra.iter().step_by(97) {
        let mut p = out_template.clone();
        p.spi = spi;
        let twin = Sa::new(&p, 1, 1).unwrap();
        let mut f = vec![0u8; 256];
        let pkt = &pkts[0][14..];
        f[128..128 + pkt.len()].copy_from_slice(pkt);
        let (start, len) = encap(&twin, 1, &mut f, 128, pkt.len()).unwrap();
        let mut e = pkts[0][..14].to_vec();
        e[12..14].copy_from_slice(&[8, 0]);
        e.extend_from_slice(&f[start..start + len]);
        frames.push(e);
    }
    let n = frames.len();
    let got = big.inn(&frames);
    assert_eq!(
        got.iter().filter(|(a, _)| *a == Action::Tx).count(),
        n,
        "{got:?}"
    );
}

/// With more tunnels than `prefetch_above` (4096) holding an outbound SA the outbound path first looks every
/// frame's policy up (and prefetches its SA), then reuses those lookups: the verdicts and the
/// bytes on the wire are exactly those of a gateway without the extra tunnels.
#[test]
fn outbound_prefetch_pass_changes_nothing() {
    let text = example_text("gw-a.toml") + "\n[control]\ntunnel_capacity = 8192\n";
    let big = Gw::from_toml(&text);
    let small = Gw::from_toml(&text);
    let template = big.cfg.sa_params(Direction::Outbound).unwrap().clone();
    for t in 1..5000u32 {
        let mut p = template.clone();
        p.spi = 0x10_0000 + t;
        big.dp
            .sas
            .set_outbound(t, Some(Sa::new(&p, 1, 1).unwrap()))
            .unwrap();
    }
    assert!(
        big.dp.sas.outbound_len() > big.pcfg.prefetch_above,
        "the prefetch pass runs"
    );
    let mut batch: Vec<Vec<u8>> = Vec::new();
    for i in 0..150u16 {
        let f = match i % 6 {
            0 => frame(
                "192.0.2.10",
                "198.51.100.20",
                17,
                i,
                2,
                &payload(i as usize, 1),
            ),
            1 => frame(
                "fd00:a::10",
                "fd00:b::20",
                6,
                i,
                2,
                &payload(i as usize * 3, 2),
            ),
            // No policy: the default (discard, 13916).
            2 => frame("192.0.2.10", "203.0.113.99", 17, i, 2, &payload(10, 3)),
            // To the gateway itself: punted.
            3 => frame("192.0.2.10", "192.0.2.1", 17, i, 2, &payload(10, 4)),
            // Truncated.
            4 => frame("192.0.2.10", "198.51.100.20", 17, i, 2, &payload(50, 5))[..30].to_vec(),
            _ => vec![0x86; (i % 20) as usize],
        };
        batch.push(f);
    }
    let got_big = big.out(&batch);
    let got_small = small.out(&batch);
    assert_eq!(got_big, got_small);
    assert_eq!(got_big.iter().filter(|(a, _)| *a == Action::Tx).count(), 50);
}

/// A's configuration with `lifetime` (TOML lines) on its outbound SA.
fn a_with_lifetime(lifetime: &str) -> Gw {
    let text = example_text("gw-a.toml");
    let (head, tail) = text.split_at(text.find("# B → A").unwrap());
    Gw::from_toml(&format!("{head}\n[sas.lifetime]\n{lifetime}\n\n{tail}"))
}

#[test]
fn hard_time_limit_without_soft_holds_on_the_data_path() {
    // No soft_seconds and no control thread: the worker alone refuses after hard_seconds.
    let a = a_with_lifetime("hard_seconds = 20");
    let pkt = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, b"x");
    let s = 1_000_000_000u64;
    assert_eq!(
        a.out_at(std::slice::from_ref(&pkt), 19 * s)[0].0,
        Action::Tx
    );
    let acts: Vec<Action> = a
        .out_at(&[pkt.clone(), pkt], 21 * s)
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert_eq!(acts, vec![Action::Drop(DropReason::LifetimeExpired); 2]);
    let kinds: Vec<_> = a.events().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![SaEventKind::Hard]);
}

#[test]
fn soft_packet_limit_without_hard_fires_at_its_value() {
    let a = a_with_lifetime("soft_packets = 1000");
    let pkt = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, b"x");
    let acts = a.out(&vec![pkt.clone(); 999]);
    assert!(acts.iter().all(|(a, _)| *a == Action::Tx));
    assert_eq!(a.events(), vec![], "soft fired before 1000 packets");
    // Tolerance: at most soft/64 + one packet after the value.
    let acts = a.out(&vec![pkt; 1 + 1000 / 64 + 1]);
    assert!(acts.iter().all(|(a, _)| *a == Action::Tx));
    let kinds: Vec<_> = a.events().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![SaEventKind::Soft]);
}
