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
            assert_eq!(ip(&out), ip(&aged(&pkt, 2)), "A→B inner packet changed");
            assert_eq!(
                &out[..6],
                &b.cfg.plain.next_hop_mac.unwrap(),
                "B addresses its LAN next hop"
            );
            // And back: B encrypts, A decrypts.
            let back = frame(d, s, *p, 5001, 40000 + i as u16, &payload(n, 99));
            let (act, out) = through_pair(&b, &a, &back);
            assert_eq!(act, Action::Tx);
            assert_eq!(ip(&out), ip(&aged(&back, 2)), "B→A inner packet changed");
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

/// The replay window is committed once per batch (numbers of one SA and block together):
/// inside one batch a duplicate is still refused, a forgery still never moves the window, and
/// a jump ahead makes the batch's later old numbers too old, as packet by packet.
#[test]
fn replay_inside_one_batch() {
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
    let mut forged = esp[4].clone();
    *forged.last_mut().unwrap() ^= 1;
    let batch = [
        esp[3].clone(),
        esp[3].clone(),
        forged,
        esp[4].clone(),
        esp[35].clone(),
        esp[5].clone(),
        esp[3].clone(),
    ];
    let got: Vec<Action> = b.inn(&batch).into_iter().map(|(a, _)| a).collect();
    use Action::{Drop, Tx};
    use DropReason::{Integrity, Replay};
    assert_eq!(
        got,
        [Tx, Drop(Replay), Drop(Integrity), Tx, Tx, Tx, Drop(Replay)]
    );
    // Seq 7, then 1100 (the window moves to 77..1100), then 8: too old by then.
    let got: Vec<Action> = b
        .inn(&[esp[6].clone(), esp[1099].clone(), esp[7].clone()])
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert_eq!(got, [Tx, Tx, Drop(Replay)]);
    // Every frame of a full batch of consecutive numbers, and again: all replays.
    let next: Vec<Vec<u8>> = esp[1000..1099].to_vec();
    assert!(b.inn(&next).iter().all(|(a, _)| *a == Tx));
    assert!(b.inn(&next).iter().all(|(a, _)| *a == Drop(Replay)));
    assert_eq!(b.stats.drops_by_code()[&13913], 3 + 99);
    // The SA counts its own replays and forgeries (on the drop paths only).
    let g = crossbeam_epoch::pin();
    let sa = b.dp.sas.inbound(0xa001, &g).expect("B's inbound SA");
    assert_eq!(sa.failures(), (3 + 99, 1));
    // Every frame on its path: B's inbound path took 208 and sent 105; A's outbound all.
    use espd::datapath::Path;
    let (bi, ao) = (b.stats.path(Path::Inbound), a.stats.path(Path::Outbound));
    assert_eq!(
        (bi.rx_packets.get(), bi.tx_packets.get()),
        (7 + 3 + 99 + 99, 4 + 2 + 99)
    );
    assert_eq!(b.stats.path(Path::Outbound).rx_packets.get(), 0);
    assert_eq!((ao.rx_packets.get(), ao.tx_packets.get()), (1100, 1100));
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
    assert_eq!(
        ip(&out),
        ip(&aged(&good, 2)),
        "checksum completed before sealing"
    );
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
    assert_eq!(ip(&out), ip(&aged(&pkt, 2)));
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

/// The name of the drop reason of `a` (a drop expected).
fn reason(a: Action) -> &'static str {
    match a {
        Action::Drop(r) => r.name(),
        other => panic!("expected a drop, got {other:?}"),
    }
}

/// Gateway B whose only IPv4 protect policy is the given one (IPv6 policy kept).
fn b_with_policy(extra: &str) -> Gw {
    let text = example_text("gw-b.toml").replacen(
        "dst = \"192.0.2.0/24\"\n",
        &format!("dst = \"192.0.2.0/24\"\n{extra}"),
        1,
    );
    Gw::from_toml(&text)
}

/// An IPv4 frame from A's LAN with the flags/fragment-offset word set to `frag`.
fn fragment(proto: u8, sport: u16, dport: u16, frag: u16) -> Vec<u8> {
    let mut f = frame(
        "192.0.2.10",
        "198.51.100.20",
        proto,
        sport,
        dport,
        b"fragment",
    );
    f[14 + 6..14 + 8].copy_from_slice(&frag.to_be_bytes());
    espd::wire::ipv4::fill_checksum(&mut f[14..]);
    f
}

/// RFC 4301 §5.2: a peer allowed only UDP from source port 2000 cannot send TCP/22 (or UDP
/// from another port) through the tunnel; fragments, whose ports are not examined, pass only
/// SAs whose selectors allow any port.
#[test]
fn inbound_selectors_check_protocol_and_ports() {
    let (a, any) = pair();
    let b = b_with_policy("protocol = \"udp\"\ndst_ports = \"2000\"\n");
    let send = |b: &Gw, pkt: Vec<u8>| {
        let (act, esp) = a.out(&[pkt]).remove(0);
        assert_eq!(act, Action::Tx);
        b.inn(&[esp]).remove(0).0
    };
    let allowed = frame("192.0.2.10", "198.51.100.20", 17, 2000, 53, b"dns");
    assert_eq!(send(&b, allowed), Action::Tx);
    let ssh = frame("192.0.2.10", "198.51.100.20", 6, 2000, 22, b"ssh");
    assert_eq!(reason(send(&b, ssh)), "wrong_sa");
    let other_port = frame("192.0.2.10", "198.51.100.20", 17, 2001, 53, b"dns");
    assert_eq!(reason(send(&b, other_port)), "wrong_sa");
    let ssh6 = frame(
        "fd00:a::10",
        "fd00:b::20",
        6,
        2000,
        22,
        b"v6 policy allows any",
    );
    assert_eq!(send(&b, ssh6), Action::Tx);
    // Fragments: first (MF) and later (offset 8) ones carry no ports the selector can use.
    for frag in [0x2000, 0x0001, 0x2001] {
        assert_eq!(reason(send(&b, fragment(17, 2000, 53, frag))), "wrong_sa");
        assert_eq!(send(&any, fragment(17, 2000, 53, frag)), Action::Tx);
    }
    assert_eq!(b.stats.drops_by_code()[&13912], 5);
}

/// Transport-mode SAs check their selectors too: they apply to the packet itself.
#[test]
fn transport_mode_inbound_checks_selectors() {
    let text = example_text("gw-b.toml")
        .replace("mtu = 1500", "mtu = 1500\nmode = \"transport\"")
        .replacen(
            "src = \"198.51.100.0/24\"\ndst = \"192.0.2.0/24\"\n",
            "src = \"203.0.113.2/32\"\ndst = \"203.0.113.1/32\"\nprotocol = \"udp\"\ndst_ports = \"2000\"\n",
            1,
        );
    let b = Gw::from_toml(&text);
    let mut p = b.cfg.sa_params(Direction::Inbound).unwrap().clone();
    p.direction = Direction::Outbound;
    let twin = Sa::new(&p, 1, 1).unwrap();
    let esp = |proto: u8, sport: u16, dport: u16, seq: u64| {
        let pkt = frame("203.0.113.1", "203.0.113.2", proto, sport, dport, b"hello");
        let mut f = vec![0u8; 512];
        f[128..128 + pkt.len() - 14].copy_from_slice(&pkt[14..]);
        let (start, len) = encap(&twin, seq, &mut f, 128, pkt.len() - 14).unwrap();
        let mut e = pkt[..14].to_vec();
        e.extend_from_slice(&f[start..start + len]);
        (e, pkt)
    };
    let (ok, plain) = esp(17, 2000, 53, 1);
    let (act, out) = b.inn(&[ok]).remove(0);
    assert_eq!(act, Action::Tx);
    assert_eq!(ip(&out), ip(&plain), "transport mode leaves the TTL alone");
    assert_eq!(
        reason(b.inn(&[esp(6, 2000, 22, 2).0]).remove(0).0),
        "wrong_sa"
    );
    assert_eq!(
        reason(b.inn(&[esp(17, 2001, 53, 3).0]).remove(0).0),
        "wrong_sa"
    );
    assert_eq!(b.stats.drops_by_code()[&13912], 2);
}

/// RFC 4301 §5.1.2.1: the encapsulator and the decapsulator each decrement the inner TTL /
/// hop limit (IPv4 checksum updated); the payload is untouched.
#[test]
fn inner_ttl_is_decremented_on_both_sides() {
    let (a, b) = pair();
    for (s, d) in [
        ("192.0.2.10", "198.51.100.20"),
        ("fd00:a::10", "fd00:b::20"),
    ] {
        let pkt = with_ttl(&frame(s, d, 17, 1, 2, &payload(99, 5)), 3);
        let (act, out) = through_pair(&a, &b, &pkt);
        assert_eq!(act, Action::Tx);
        assert_eq!(ip(&out), ip(&aged(&pkt, 2)));
        if s.contains('.') {
            assert!(Ipv4Packet::new_checked(ip(&out)).unwrap().verify_checksum());
        }
    }
}

/// The ICMP message in an Ethernet frame (IPv4: after a 20-byte header, IPv6: after 40).
fn icmp_of(f: &[u8]) -> &[u8] {
    if f[14] >> 4 == 4 { &f[34..] } else { &f[54..] }
}

/// A packet whose TTL / hop limit runs out at the encapsulator is dropped (counted) and
/// answered with ICMP time exceeded back to its sender, from the gateway's LAN address.
#[test]
fn ttl_expiry_at_encapsulation_answers_time_exceeded() {
    let (a, _) = pair();
    let pkt = with_ttl(
        &frame("192.0.2.10", "198.51.100.20", 17, 1, 2, &payload(30, 1)),
        1,
    );
    let (act, f) = a.out(std::slice::from_ref(&pkt)).remove(0);
    assert_eq!(act, Action::TxBack);
    assert_eq!(&f[..6], &pkt[6..12], "sent back to the sender's MAC");
    let p = Ipv4Packet::new_checked(ip(&f)).unwrap();
    assert!(p.verify_checksum());
    assert_eq!(
        (p.protocol(), p.src().to_string(), p.dst().to_string()),
        (1, "192.0.2.1".into(), "192.0.2.10".into())
    );
    let icmp = p.payload();
    assert_eq!((icmp[0], icmp[1]), (11, 0));
    assert_eq!(espd::wire::checksum::checksum(icmp), 0);
    assert_eq!(
        &icmp[8..],
        ip(&pkt),
        "the expired packet is quoted as it arrived"
    );
    // TTL 2 still passes (1 on the wire).
    let two = with_ttl(&pkt, 2);
    assert_eq!(a.out(&[two]).remove(0).0, Action::Tx);
    // IPv6: ICMPv6 time exceeded (type 3 code 0) from the LAN address.
    let pkt6 = with_ttl(&frame("fd00:a::10", "fd00:b::20", 17, 1, 2, b"six"), 1);
    let (act, f) = a.out(std::slice::from_ref(&pkt6)).remove(0);
    assert_eq!(act, Action::TxBack);
    assert_eq!(
        (f[14 + 6], &f[14 + 8..14 + 24]),
        (
            58,
            &[0xfd, 0, 0, 0xa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1][..]
        )
    );
    let icmp6 = icmp_of(&f);
    assert_eq!((icmp6[0], icmp6[1]), (3, 0));
    let psum = espd::wire::checksum::pseudo_v6(
        &"fd00:a::1".parse().unwrap(),
        &"fd00:a::10".parse().unwrap(),
        58,
        icmp6.len() as u32,
    );
    assert_eq!(
        espd::wire::checksum::fold(espd::wire::checksum::sum(psum, icmp6)),
        0xffff
    );
    assert_eq!(&icmp6[8..], ip(&pkt6));
    assert_eq!(a.stats.drops_by_code()[&13914], 2);
    assert_eq!(a.stats.icmp_sent.get(), 2);
}

/// A packet whose TTL runs out at the decapsulator is answered with ICMP time exceeded to its
/// source, on the far side of the tunnel: the answer is encrypted into the tunnel and leaves
/// through the interface the packet came in on.
#[test]
fn ttl_expiry_at_decapsulation_answers_through_the_tunnel() {
    let (a, b) = pair();
    let pkt = with_ttl(&frame("192.0.2.10", "198.51.100.20", 6, 1, 2, b"ttl 2"), 2);
    let (act, back) = through_pair(&a, &b, &pkt);
    assert_eq!(act, Action::TxBack);
    assert_eq!(&back[..6], &b.cfg.cipher.next_hop_mac.unwrap());
    let outer = Ipv4Packet::new_checked(ip(&back)).unwrap();
    assert_eq!(
        (outer.protocol(), outer.dst().to_string()),
        (50, "203.0.113.1".into())
    );
    assert_eq!(b.stats.drops_by_code()[&13914], 1);
    // A decrypts it: ICMP 11/0 from B's LAN address to the sender, quoting the packet as it
    // reached B (TTL 1).
    let (act, f) = a.inn(&[back]).remove(0);
    assert_eq!(act, Action::Tx);
    let p = Ipv4Packet::new_checked(ip(&f)).unwrap();
    assert!(p.verify_checksum());
    assert_eq!(
        (p.protocol(), p.src().to_string(), p.dst().to_string()),
        (1, "198.51.100.1".into(), "192.0.2.10".into())
    );
    let icmp = p.payload();
    assert_eq!((icmp[0], icmp[1]), (11, 0));
    assert_eq!(espd::wire::checksum::checksum(icmp), 0);
    assert_eq!(&icmp[8..], ip(&aged(&pkt, 1)));
    // IPv6 the same way.
    let pkt6 = with_ttl(&frame("fd00:a::10", "fd00:b::20", 17, 1, 2, b"six"), 2);
    let (act, back) = through_pair(&a, &b, &pkt6);
    assert_eq!(act, Action::TxBack);
    let (act, f) = a.inn(&[back]).remove(0);
    assert_eq!(act, Action::Tx);
    assert_eq!((f[14 + 6], icmp_of(&f)[0], icmp_of(&f)[1]), (58, 3, 0));
    assert_eq!(&icmp_of(&f)[8..], ip(&aged(&pkt6, 1)));
}

/// Time-exceeded answers share the ICMP rate limit, and ICMP errors are never answered.
#[test]
fn time_exceeded_is_rate_limited_and_not_sent_for_icmp_errors() {
    let a = Gw::from_toml(&example_text("gw-a.toml").replace(
        "complete_checksums = true",
        "complete_checksums = true\nicmp_rate = 2",
    ));
    let pkt = with_ttl(&frame("192.0.2.10", "198.51.100.20", 17, 1, 2, b"x"), 1);
    let acts: Vec<Action> = a.out(&vec![pkt; 3]).into_iter().map(|(a, _)| a).collect();
    assert_eq!(&acts[..2], &[Action::TxBack; 2]);
    assert_eq!(reason(acts[2]), "ttl_exceeded");
    let a = Gw::example("gw-a.toml");
    let mut err = vec![11, 0, 0, 0, 0, 0, 0, 0];
    err.extend_from_slice(&payload(28, 1));
    let c = espd::wire::checksum::checksum(&err);
    err[2..4].copy_from_slice(&c.to_be_bytes());
    let icmp_err = with_ttl(
        &eth(
            0x0800,
            &ipv4(
                "192.0.2.10".parse().unwrap(),
                "198.51.100.20".parse().unwrap(),
                1,
                err,
            ),
        ),
        1,
    );
    assert_eq!(reason(a.out(&[icmp_err]).remove(0).0), "ttl_exceeded");
    assert_eq!(a.stats.icmp_sent.get(), 0);
}

/// RFC 6040 §4.2 (normal mode) at decapsulation: outer CE marks an ECN-capable inner packet
/// CE, and drops a Not-ECT one; outer ECT(1) onto ECT(0) gives ECT(1); otherwise the inner
/// ECN field is kept. DSCP is never touched.
#[test]
fn ecn_at_decapsulation_follows_rfc6040() {
    let (a, b) = pair();
    // (inner, outer) → inner after decapsulation; None: dropped.
    let table = [
        (0, 0, Some(0)),
        (0, 1, Some(0)),
        (0, 2, Some(0)),
        (0, 3, None),
        (2, 0, Some(2)),
        (2, 2, Some(2)),
        (2, 1, Some(1)),
        (2, 3, Some(3)),
        (1, 0, Some(1)),
        (1, 2, Some(1)),
        (1, 3, Some(3)),
        (3, 0, Some(3)),
        (3, 1, Some(3)),
    ];
    let mut dropped = 0;
    for (s, d) in [
        ("192.0.2.10", "198.51.100.20"),
        ("fd00:a::10", "fd00:b::20"),
    ] {
        for (inner, outer, want) in table {
            let mut pkt = frame(s, d, 17, 1, 2, b"ecn");
            // DSCP AF41 (0x88) stays as it is.
            if s.contains('.') {
                pkt[15] = 0x88;
            } else {
                pkt[14] = 0x68;
            }
            let pkt = with_ecn(&pkt, inner);
            let (act, esp) = a.out(std::slice::from_ref(&pkt)).remove(0);
            assert_eq!(act, Action::Tx);
            assert_eq!(
                ecn(&esp),
                inner,
                "RFC 6040 §4.1: the encapsulator copies ECN"
            );
            let (act, out) = b.inn(&[with_ecn(&esp, outer)]).remove(0);
            match want {
                Some(e) => {
                    assert_eq!(act, Action::Tx, "{s} inner {inner} outer {outer}");
                    assert_eq!(
                        ip(&out),
                        ip(&aged(&with_ecn(&pkt, e), 2)),
                        "{s} inner {inner} outer {outer}"
                    );
                }
                None => {
                    assert_eq!(
                        reason(act),
                        "ecn_not_ect",
                        "{s} inner {inner} outer {outer}"
                    );
                    dropped += 1;
                }
            }
        }
    }
    assert_eq!(b.stats.drops_by_code()[&13914], dropped);
}

/// Defect 12: the outer IPv4 header checksum is verified on inbound (13914).
#[test]
fn outer_ipv4_checksum_is_verified() {
    let (_, b, esp) = esp_from_a();
    let mut bad = esp.clone();
    bad[14 + 10] ^= 0x40;
    assert_eq!(reason(b.inn(&[bad]).remove(0).0), "bad_ip_checksum");
    assert_eq!(b.stats.drops_by_code()[&13914], 1);
    // The genuine packet still passes: nothing was consumed by the bad one.
    assert_eq!(b.inn(&[esp]).remove(0).0, Action::Tx);
}

/// Defect 12: ESP in UDP is as long as the UDP length says; bytes after the UDP datagram in
/// the IP payload are not ESP. A UDP length past the IP payload, or one that leaves no room
/// for ESP, is malformed.
#[test]
fn esp_in_udp_length_comes_from_the_udp_header() {
    let enc = |t: &str| t.replace("mtu = 1500", "mtu = 1500\nencap = \"udp\"");
    let a = Gw::from_toml(&enc(&example_text("gw-a.toml")));
    let b = Gw::from_toml(&enc(&example_text("gw-b.toml")));
    let pkt = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, &payload(200, 4));
    let (act, esp) = a.out(std::slice::from_ref(&pkt)).remove(0);
    assert_eq!(act, Action::Tx);
    // Four bytes after the UDP datagram, inside the IP packet.
    let mut longer = esp.clone();
    longer.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    fix_ipv4(&mut longer);
    let (act, out) = b.inn(&[longer]).remove(0);
    assert_eq!(act, Action::Tx);
    assert_eq!(ip(&out), ip(&aged(&pkt, 2)));
    // A UDP length past the IP payload.
    let mut over = esp.clone();
    let ulen = u16::from_be_bytes([over[38], over[39]]);
    over[38..40].copy_from_slice(&(ulen + 4).to_be_bytes());
    assert_eq!(reason(b.inn(&[over]).remove(0).0), "malformed");
    // A UDP length that leaves 12 bytes: a non-zero marker but no ESP packet.
    let mut short = esp.clone();
    short[38..40].copy_from_slice(&20u16.to_be_bytes());
    assert_eq!(reason(b.inn(&[short]).remove(0).0), "malformed");
}

/// gw-a's example config with `extra` policies placed before the protect ones (first match
/// wins) and `default_policy` set to `default`.
fn with_policies(name: &str, extra: &str, default: &str) -> Gw {
    let text = example_text(name).replace(
        "default_policy = \"discard\"",
        &format!("default_policy = \"{default}\""),
    );
    let at = text.find("[[policies]]").unwrap();
    Gw::from_toml(&format!("{}{extra}\n{}", &text[..at], &text[at..]))
}

/// Defect 7: a bypass policy forwards the packet in the clear out of the other interface, to
/// that side's next hop, unchanged above Ethernet; a discard policy drops it (13916). Both
/// directions, and the default policy `bypass` too.
#[test]
fn bypass_forwards_in_the_clear_and_discard_drops() {
    let a = with_policies(
        "gw-a.toml",
        r#"[[policies]]
src = "192.0.2.0/24"
dst = "198.51.100.0/24"
protocol = "udp"
dst_ports = "7000"
action = "bypass"

[[policies]]
src = "192.0.2.0/24"
dst = "198.51.100.0/24"
protocol = "udp"
dst_ports = "7001"
action = "discard"
"#,
        "bypass",
    );
    let clear = frame(
        "192.0.2.10",
        "198.51.100.20",
        17,
        4000,
        7000,
        b"in the clear",
    );
    let (act, out) = a.out(std::slice::from_ref(&clear)).remove(0);
    assert_eq!(act, Action::Tx, "bypass is forwarded");
    assert_eq!(&out[..6], &a.cfg.cipher.next_hop_mac.unwrap());
    assert_eq!(&out[6..12], &a.cfg.cipher.mac.unwrap());
    assert_eq!(&out[12..], &clear[12..], "nothing above Ethernet changes");
    let discard = frame("192.0.2.10", "198.51.100.20", 17, 4000, 7001, b"never");
    assert_eq!(
        a.out(&[discard]).remove(0).0,
        Action::Drop(DropReason::PolicyDiscard)
    );
    // No policy matches: the default, here bypass.
    let other = frame("192.0.2.10", "203.0.113.99", 17, 1, 2, b"x");
    let (act, out) = a.out(std::slice::from_ref(&other)).remove(0);
    assert_eq!(act, Action::Tx);
    assert_eq!(&out[12..], &other[12..]);
    // Protected traffic is still encrypted.
    let prot = frame("192.0.2.10", "198.51.100.20", 17, 4000, 5001, b"secret");
    let (act, out) = a.out(&[prot]).remove(0);
    assert_eq!((act, out[14 + 9]), (Action::Tx, 50));
    assert_eq!(a.stats.bypassed.get(), 2);
    assert_eq!(a.stats.drops_by_code()[&13916], 1);
    // B: cleartext from A's LAN arriving on its cipher side, allowed by a bypass policy
    // (matched in reverse, as for protect), goes to B's LAN next hop.
    let b = with_policies(
        "gw-b.toml",
        r#"[[policies]]
src = "198.51.100.0/24"
dst = "192.0.2.0/24"
protocol = "udp"
src_ports = "7000"
action = "bypass"
"#,
        "discard",
    );
    let (act, back) = b.inn(std::slice::from_ref(&out_of(&clear, &a))).remove(0);
    assert_eq!(act, Action::Tx, "bypass is forwarded inbound too");
    assert_eq!(&back[..6], &b.cfg.plain.next_hop_mac.unwrap());
    assert_eq!(&back[6..12], &b.cfg.plain.mac.unwrap());
    assert_eq!(&back[12..], &clear[12..]);
    assert_eq!(b.stats.bypassed.get(), 1);
    // Still 13916 for cleartext a bypass policy does not cover.
    let other = frame("192.0.2.10", "198.51.100.20", 17, 4000, 7001, b"x");
    assert_eq!(
        b.inn(&[other]).remove(0).0,
        Action::Drop(DropReason::ClearText)
    );
}

/// `clear` as gateway A sends it (re-addressed to A's cipher next hop).
fn out_of(clear: &[u8], a: &Gw) -> Vec<u8> {
    let mut f = clear.to_vec();
    f[..6].copy_from_slice(&a.cfg.cipher.next_hop_mac.unwrap());
    f[6..12].copy_from_slice(&a.cfg.cipher.mac.unwrap());
    f
}

/// An IPv4 frame with the given flags/fragment-offset word (header checksum fixed).
fn v4_with_frag(mut f: Vec<u8>, flags_frag: u16) -> Vec<u8> {
    f[14 + 6..14 + 8].copy_from_slice(&flags_frag.to_be_bytes());
    espd::wire::ipv4::fill_checksum(&mut f[14..]);
    f
}

/// An IPv6 frame whose UDP segment sits behind a Fragment header (`off_flags`: offset << 3
/// | M).
fn v6_fragment(off_flags: u16) -> Vec<u8> {
    let seg = l4(17, 1, 2, &payload(64, 9));
    let mut p = vec![0u8; 40];
    espd::wire::ipv6::Ipv6Repr {
        src: "fd00:a::10".parse().unwrap(),
        dst: "fd00:b::20".parse().unwrap(),
        next_header: 44,
        payload_len: 8 + seg.len(),
        traffic_class: 0,
        hop_limit: 64,
    }
    .emit(&mut p);
    p.extend_from_slice(&[17, 0]);
    p.extend_from_slice(&off_flags.to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(&seg);
    eth(0x86dd, &p)
}

/// Defect 11: RFC 4303 §3.3.4: transport mode ESP applies to whole datagrams only, so a
/// transport-mode SA refuses fragments of both families (13914 `fragment`); a tunnel-mode SA
/// carries them (a gateway's case: RFC 4301 §7).
#[test]
fn transport_mode_refuses_fragments_of_both_families() {
    let transport = Gw::from_toml(
        &example_text("gw-a.toml").replace("mtu = 1500", "mtu = 1500\nmode = \"transport\""),
    );
    let tunnel = Gw::example("gw-a.toml");
    let whole4 = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, &payload(64, 9));
    let frags = [
        v4_with_frag(whole4.clone(), 0x2000), // first fragment (MF)
        v4_with_frag(whole4.clone(), 0x0010), // last fragment (offset 128)
        v6_fragment(0x0001),                  // first fragment (M)
        v6_fragment(16 << 3),                 // last fragment (offset 128)
    ];
    for (i, f) in frags.iter().enumerate() {
        assert_eq!(
            transport.out(std::slice::from_ref(f)).remove(0).0,
            Action::Drop(DropReason::Fragment),
            "transport mode, fragment {i}"
        );
        assert_eq!(
            tunnel.out(std::slice::from_ref(f)).remove(0).0,
            Action::Tx,
            "tunnel mode, fragment {i}"
        );
    }
    assert_eq!(transport.stats.drops_of(DropReason::Fragment), 4);
    // Whole datagrams of both families still pass in transport mode.
    let whole6 = frame("fd00:a::10", "fd00:b::20", 17, 1, 2, &payload(64, 9));
    for f in [whole4, whole6] {
        let (act, out) = transport.out(&[f]).remove(0);
        assert_eq!(act, Action::Tx);
        let nh = if out[12] == 0x86 {
            out[14 + 6]
        } else {
            out[14 + 9]
        };
        assert_eq!(nh, 50, "ESP follows the IP header");
    }
}

/// Runs `pkts` through A's outbound path with `spares` spare frames and room for `room` extra
/// frames; returns the actions, the frames, and the extra frames.
fn out_with(
    a: &Gw,
    pkts: &[Vec<u8>],
    spares: usize,
    room: usize,
) -> (Vec<Action>, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    use espd::datapath::Pipeline;
    use espd::datapath::mem::Frame;
    let mut p = Pipeline::new(&a.dp, 0, &a.stats, &a.events, a.pcfg);
    let mut frames: Vec<Frame> = pkts.iter().map(|b| Frame::from_packet(b)).collect();
    let mut acts = vec![Action::Punt; frames.len()];
    let mut pool: Vec<Frame> = (0..spares).map(|_| Frame::from_packet(&[])).collect();
    let mut extra = Vec::with_capacity(room);
    p.outbound_with(&mut frames, 1, &mut acts, &mut pool, &mut extra);
    assert_eq!(
        pool.len() + extra.len(),
        spares,
        "every spare frame is accounted for"
    );
    let bytes = |v: &[Frame]| v.iter().map(|f| f.bytes().to_vec()).collect();
    (acts, bytes(&frames), bytes(&extra))
}

/// An IPv4 packet without DF with `options` in its header and `n` bytes of UDP payload.
fn no_df(options: &[u8], n: usize, seed: u8) -> Vec<u8> {
    let f = v4_with_frag(
        frame("192.0.2.10", "198.51.100.20", 17, 1, 2, &payload(n, seed)),
        0,
    );
    if options.is_empty() {
        return f;
    }
    let mut g = f[..34].to_vec();
    g.extend_from_slice(options);
    g.extend_from_slice(&f[34..]);
    g[14] = 0x45 + (options.len() / 4) as u8;
    let total = (g.len() - 14) as u16;
    g[16..18].copy_from_slice(&total.to_be_bytes());
    espd::wire::ipv4::fill_checksum(&mut g[14..]);
    g
}

/// Reassembles IPv4 fragments (RFC 791) into the datagram: the first fragment's header with
/// the fragment fields cleared, then the payloads in offset order.
fn reassemble(mut frags: Vec<Vec<u8>>) -> Vec<u8> {
    let off = |p: &[u8]| usize::from(u16::from_be_bytes([p[6], p[7]]) & 0x1fff) * 8;
    frags.sort_by_key(|p| off(p));
    let ihl = usize::from(frags[0][0] & 0xf) * 4;
    let mut d = frags[0][..ihl].to_vec();
    for p in &frags {
        let h = usize::from(p[0] & 0xf) * 4;
        assert_eq!(off(p), d.len() - ihl, "fragments are contiguous");
        assert_eq!(&p[4..6], &frags[0][4..6], "same identification");
        assert!(Ipv4Packet::new_checked(&p[..]).unwrap().verify_checksum());
        d.extend_from_slice(&p[h..]);
    }
    let last = frags.last().unwrap();
    assert_eq!(last[6] & 0x20, 0, "the last fragment has no MF");
    for p in &frags[..frags.len() - 1] {
        assert_eq!(p[6] & 0x20, 0x20, "MF on all but the last");
    }
    let total = d.len() as u16;
    d[2..4].copy_from_slice(&total.to_be_bytes());
    d[6..8].copy_from_slice(&[0, 0]);
    espd::wire::ipv4::fill_checksum(&mut d);
    d
}

/// Compares two IPv4 packets except TTL and header checksum (the TTL is a forwarding matter).
fn same_but_ttl(a: &[u8], b: &[u8]) {
    let strip = |p: &[u8]| {
        let mut p = p.to_vec();
        p[8] = 0;
        p[10..12].copy_from_slice(&[0, 0]);
        p
    };
    assert_eq!(strip(a), strip(b), "reassembled datagram differs");
}

/// Defect 15: an IPv4 packet without DF that does not fit the tunnel is fragmented before
/// encapsulation (RFC 4301 §8.1), not refused with ICMP 3/4: each fragment in its own ESP
/// packet within the MTU, consecutive sequence numbers; B decrypts them all and they
/// reassemble into the original. Only copied options follow the first fragment. DF packets
/// still get ICMP (see `too_big_gets_icmp_frag_needed`), IPv6 still gets "packet too big".
#[test]
fn too_big_without_df_is_fragmented_before_encapsulation() {
    let (a, b) = pair();
    // A copied option (0x83, 7 bytes), a NOP, a non-copied one (record route, 7 bytes), EOL.
    let opts = [0x83, 7, 4, 1, 2, 3, 4, 1, 7, 7, 4, 0, 0, 0, 0, 0];
    let cases = [
        (no_df(&[], 1472, 1), 2),   // 1500 bytes: two fragments
        (no_df(&[], 3000, 2), 3),   // 3028 bytes: three
        (no_df(&opts, 2900, 3), 3), // with options
    ];
    let pkts: Vec<Vec<u8>> = cases.iter().map(|(p, _)| p.clone()).collect();
    let (acts, frames, extra) = out_with(&a, &pkts, 16, 16);
    assert_eq!(acts, [Action::Tx; 3]);
    assert_eq!(a.stats.icmp_sent.get(), 0, "no ICMP for packets without DF");
    assert_eq!(a.stats.prefragmented.get(), 3);
    assert_eq!(extra.len(), 1 + 2 + 2);
    let mut extra = extra.into_iter();
    for (i, ((orig, pieces), first)) in cases.iter().zip(frames).enumerate() {
        let mut esp = vec![first];
        esp.extend(extra.by_ref().take(pieces - 1));
        let seqs: Vec<u32> = esp
            .iter()
            .map(|f| {
                let p = Ipv4Packet::new_checked(ip(f)).unwrap();
                assert!(p.total_len() <= 1500, "case {i}: {} bytes", p.total_len());
                assert_eq!(p.protocol(), 50);
                assert_eq!(&f[..6], &a.cfg.cipher.next_hop_mac.unwrap());
                u32::from_be_bytes(p.payload()[4..8].try_into().unwrap())
            })
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "case {i}: sequence numbers {seqs:?}"
        );
        let got = b.inn(&esp);
        let inner: Vec<Vec<u8>> = got
            .into_iter()
            .map(|(act, f)| {
                assert_eq!(act, Action::Tx, "case {i}: B refused a fragment");
                ip(&f).to_vec()
            })
            .collect();
        if i == 2 {
            for p in &inner[1..] {
                assert_eq!(p[0], 0x47, "copied options only, padded: {:02x?}", &p[..28]);
                assert_eq!(&p[20..28], &[0x83, 7, 4, 1, 2, 3, 4, 0]);
            }
        }
        same_but_ttl(&reassemble(inner), ip(orig));
    }
    assert_eq!(a.stats.drops_by_code().len(), 0);
    assert_eq!(b.stats.drops_by_code().len(), 0);
    // A fragment without DF is fragmented further: offsets continue, MF stays on the last.
    let mid = [v4_with_frag(no_df(&[], 1600, 4), 0x2000 | 100)];
    let (acts, frames, extra) = out_with(&a, &mid, 4, 4);
    assert_eq!((acts[0], extra.len()), (Action::Tx, 1));
    let inner: Vec<Vec<u8>> = b
        .inn(&[frames[0].clone(), extra[0].clone()])
        .into_iter()
        .map(|(act, f)| {
            assert_eq!(act, Action::Tx);
            ip(&f).to_vec()
        })
        .collect();
    let words: Vec<u16> = inner
        .iter()
        .map(|p| u16::from_be_bytes([p[6], p[7]]))
        .collect();
    assert_eq!(words[0], 0x2000 | 100);
    assert_eq!(words[1] & 0x2000, 0x2000, "MF kept from the original");
    assert!(words[1] & 0x1fff > 100);
}

/// Defect 15: with no spare frame (or no room for the fragments), the packet is dropped
/// whole and counted (`no_frame`, 13859), nothing half-sent; spare frames go back.
#[test]
fn prefragmentation_without_a_free_frame_is_a_counted_drop() {
    let (a, _) = pair();
    let big = no_df(&[], 3000, 5); // three fragments
    let (acts, _, extra) = out_with(&a, std::slice::from_ref(&big), 1, 8);
    assert_eq!(acts[0], Action::Drop(DropReason::NoFrame));
    assert!(extra.is_empty());
    let (acts, _, extra) = out_with(&a, std::slice::from_ref(&big), 8, 1);
    assert_eq!(acts[0], Action::Drop(DropReason::NoFrame));
    assert!(extra.is_empty());
    // The plain `outbound` has no spare frames.
    assert_eq!(
        a.out(std::slice::from_ref(&big)).remove(0).0,
        Action::Drop(DropReason::NoFrame)
    );
    assert_eq!(a.stats.drops_of(DropReason::NoFrame), 3);
    assert_eq!(a.stats.drops_by_code()[&13859], 3);
    assert_eq!(a.stats.icmp_sent.get(), 0);
    // Nothing was sealed: the next packet gets sequence number 1.
    let small = frame("192.0.2.10", "198.51.100.20", 17, 1, 2, b"x");
    let (_, f) = a.out(&[small]).remove(0);
    assert_eq!(&ip(&f)[24..28], &1u32.to_be_bytes());
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
