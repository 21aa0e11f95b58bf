//! encap → decap round trips for every mode, address family, key size, backend, ESN and
//! UDP encapsulation, inner sizes 0..=9000 bytes of payload.

mod common;

use std::net::IpAddr;

use common::{ipv4, ipv6, l4, payload};
use espd::esp::aead::Backend;
use espd::esp::{decap, encap};
use espd::sa::{Direction, Endpoints, Mode, Sa, SaParams, UdpEncap};
use espd::wire::ipv4::Ipv4Packet;
use espd::wire::ipv6::{self as v6, Ipv6Packet};
use proptest::prelude::*;
use zeroize::Zeroizing;

const HEAD: usize = 128;

#[derive(Clone, Copy, Debug)]
struct Case {
    mode: Mode,
    inner_v6: bool,
    outer_v6: bool,
    key_len: usize,
    backend: Backend,
    esn: bool,
    udp: bool,
}

fn params(c: &Case, dir: Direction) -> SaParams {
    let (l, r): (IpAddr, IpAddr) = if c.outer_v6 {
        ("fd00:e::1".parse().unwrap(), "fd00:e::2".parse().unwrap())
    } else {
        (
            "203.0.113.1".parse().unwrap(),
            "203.0.113.2".parse().unwrap(),
        )
    };
    SaParams {
        spi: 0x1234_5678,
        direction: dir,
        mode: c.mode,
        endpoints: (c.mode == Mode::Tunnel).then_some(Endpoints {
            local: l,
            remote: r,
        }),
        encap: c.udp.then_some(UdpEncap {
            src_port: 4500,
            dst_port: 4500,
        }),
        esn: c.esn,
        keymat: Zeroizing::new(
            (0..c.key_len as u8 + 4)
                .map(|i| i.wrapping_mul(7))
                .collect(),
        ),
        backend: c.backend,
        limits: Default::default(),
        replay_window: 1024,
        inner: vec![],
        mtu: 9216,
    }
}

fn inner_packet(v6: bool, n: usize) -> Vec<u8> {
    let seg = l4(17, 1000, 2000, &payload(n, n as u8));
    if v6 {
        ipv6(
            "fd00:a::5".parse().unwrap(),
            "fd00:b::6".parse().unwrap(),
            17,
            seg,
        )
    } else {
        ipv4(
            "192.0.2.5".parse().unwrap(),
            "198.51.100.6".parse().unwrap(),
            17,
            seg,
        )
    }
}

/// Encapsulates, checks the outer packet, decapsulates and compares.
fn roundtrip(c: &Case, n: usize, seq: u64) {
    let out = Sa::new(&params(c, Direction::Outbound), 1, 0).unwrap();
    let inb = Sa::new(&params(c, Direction::Inbound), 1, 0).unwrap();
    let pkt = inner_packet(c.inner_v6, n);
    let mut buf = vec![0u8; HEAD + pkt.len() + 64];
    buf[HEAD..HEAD + pkt.len()].copy_from_slice(&pkt);
    let (start, len) = encap::encap(&out, seq, &mut buf, HEAD, pkt.len()).unwrap();
    // The outer header is well formed and names ESP (or UDP); find the ESP header.
    let outer_v6 = buf[start] >> 4 == 6;
    let (hdr_len, nh_field, proto, total) = if outer_v6 {
        let p = Ipv6Packet::new_checked(&buf[start..start + len]).unwrap();
        let u = v6::upper_layer(&buf[start..start + len], p.total_len()).unwrap();
        (u.offset, u.nh_field, u.protocol, p.total_len())
    } else {
        let p = Ipv4Packet::new_checked(&buf[start..start + len]).unwrap();
        assert!(p.verify_checksum());
        (p.header_len(), 9, p.protocol(), p.total_len())
    };
    assert_eq!(total, len);
    assert_eq!(
        outer_v6,
        if c.mode == Mode::Tunnel {
            c.outer_v6
        } else {
            c.inner_v6
        }
    );
    assert_eq!(proto, if c.udp { 17 } else { 50 });
    let esp_at = start + hdr_len + if c.udp { 8 } else { 0 };
    assert_eq!(&buf[esp_at..esp_at + 4], &0x1234_5678u32.to_be_bytes());
    assert_eq!(&buf[esp_at + 4..esp_at + 8], &(seq as u32).to_be_bytes());
    assert_eq!(
        &buf[esp_at + 8..esp_at + 16],
        &seq.to_be_bytes(),
        "IV is the 64-bit sequence number"
    );
    assert_eq!(
        (len - (esp_at - start) - 16 - 16) % 4,
        0,
        "ciphertext is 4-byte aligned"
    );
    if c.esn && seq > 1 {
        inb.replay.as_ref().unwrap().commit(seq - 1).unwrap();
    }
    let d = decap::decap(
        &inb,
        &mut buf,
        start,
        hdr_len,
        nh_field,
        esp_at,
        start + len - esp_at,
    )
    .unwrap();
    assert_eq!(d.seq, seq);
    assert_eq!(&buf[d.start..d.start + d.len], &pkt[..], "{c:?} n={n}");
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for backend in Backend::available() {
        for key_len in [16, 32] {
            for inner_v6 in [false, true] {
                for esn in [false, true] {
                    v.push(Case {
                        mode: Mode::Transport,
                        inner_v6,
                        outer_v6: inner_v6,
                        key_len,
                        backend: *backend,
                        esn,
                        udp: false,
                    });
                    for outer_v6 in [false, true] {
                        for udp in [false, true] {
                            v.push(Case {
                                mode: Mode::Tunnel,
                                inner_v6,
                                outer_v6,
                                key_len,
                                backend: *backend,
                                esn,
                                udp,
                            });
                        }
                    }
                }
            }
        }
    }
    v
}

/// Payload sizes: every size 0..=64 (all padding lengths), then a spread up to 9000.
fn sizes() -> impl Iterator<Item = usize> {
    (0..=64)
        .chain((65..9000).step_by(211))
        .chain([1372, 1400, 1472, 8952, 9000])
}

#[test]
fn every_combination_and_size() {
    for c in cases() {
        for n in sizes() {
            roundtrip(&c, n, 1 + n as u64);
        }
    }
}

#[test]
fn esn_high_half_crosses_2_32() {
    for c in cases().into_iter().filter(|c| c.esn) {
        for seq in [
            (1u64 << 32) - 1,
            1 << 32,
            (1 << 32) + 1,
            (7 << 32) | 0xffff_fff0,
        ] {
            roundtrip(&c, 100, seq);
        }
    }
}

#[test]
fn transport_ipv6_with_extension_headers() {
    // Hop-by-hop and destination options: ESP goes after hop-by-hop and before dest options.
    let c = Case {
        mode: Mode::Transport,
        inner_v6: true,
        outer_v6: true,
        key_len: 16,
        backend: Backend::AwsLc,
        esn: false,
        udp: false,
    };
    let out = Sa::new(&params(&c, Direction::Outbound), 1, 0).unwrap();
    let inb = Sa::new(&params(&c, Direction::Inbound), 1, 0).unwrap();
    let mut pkt = ipv6(
        "fd00:a::5".parse().unwrap(),
        "fd00:b::6".parse().unwrap(),
        0,
        vec![],
    );
    let seg = l4(17, 1, 2, b"hello");
    pkt.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop → dest opts
    pkt.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // dest opts → UDP
    pkt.extend_from_slice(&seg);
    let plen = (pkt.len() - 40) as u16;
    pkt[4..6].copy_from_slice(&plen.to_be_bytes());
    let mut buf = vec![0u8; HEAD + pkt.len() + 64];
    buf[HEAD..HEAD + pkt.len()].copy_from_slice(&pkt);
    let (start, len) = encap::encap(&out, 1, &mut buf, HEAD, pkt.len()).unwrap();
    let u = v6::upper_layer(&buf[start..start + len], len).unwrap();
    assert_eq!(u.protocol, 50);
    assert_eq!(u.offset, 48, "ESP follows the hop-by-hop header");
    let d = decap::decap(
        &inb,
        &mut buf,
        start,
        u.offset,
        u.nh_field,
        start + u.offset,
        len - u.offset,
    )
    .unwrap();
    assert_eq!(&buf[d.start..d.start + d.len], &pkt[..]);
}

#[test]
fn no_room_is_an_error_not_a_panic() {
    let c = cases()[0];
    let out = Sa::new(&params(&c, Direction::Outbound), 1, 0).unwrap();
    let pkt = inner_packet(false, 50);
    // No headroom.
    let mut buf = pkt.clone();
    buf.extend_from_slice(&[0; 64]);
    assert!(encap::encap(&out, 1, &mut buf, 0, pkt.len()).is_err());
    // No tailroom.
    let mut buf = vec![0u8; HEAD + pkt.len()];
    buf[HEAD..].copy_from_slice(&pkt);
    assert!(encap::encap(&out, 1, &mut buf, HEAD, pkt.len()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_cases(ci in 0usize..48, n in 0usize..3000, seq in 1u64..u32::MAX as u64) {
        let cs = cases();
        roundtrip(&cs[ci % cs.len()], n, seq);
    }
}
