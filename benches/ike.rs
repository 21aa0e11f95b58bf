//! IKEv1 handshake cost: one full main mode + quick mode (ECP-256, AES-256, SHA-256, no PFS)
//! between two in-memory engines, against the sum of the public-key and hash work it needs
//! measured alone in the same run (two ECDH key pairs and two agreements, and the HMAC/hash
//! calls of both sides). The ratio (target ≤ 1.3) is what the state machine, parsing, building
//! and CBC add. Prints handshakes per second per core.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use espd::ike::config::{IkePeer, parse_proposal};
use espd::ike::crypto::{DhGroup, DhSecret, Prf};
use espd::ike::engine::Engine;
use espd::ike::types::{Action, Env};
use espd::sa::policy::{PortRange, Selector};

struct BenchEnv {
    spi: u32,
}

impl Env for BenchEnv {
    fn random(&mut self, buf: &mut [u8]) {
        let _ = aws_lc_rs::rand::fill(buf);
    }
    fn allocate_spi(&mut self) -> Option<u32> {
        self.spi += 1;
        Some(self.spi)
    }
}

fn peer(a: bool) -> IkePeer {
    let (l, r, src, dst) = if a {
        (
            "203.0.113.1",
            "203.0.113.2",
            "192.0.2.0/24",
            "198.51.100.0/24",
        )
    } else {
        (
            "203.0.113.2",
            "203.0.113.1",
            "198.51.100.0/24",
            "192.0.2.0/24",
        )
    };
    let local: IpAddr = l.parse().unwrap();
    let remote: IpAddr = r.parse().unwrap();
    IkePeer {
        proposals: vec![parse_proposal("aes256-sha256-ecp256").unwrap()],
        esp: vec![128],
        dpd_delay_s: 0,
        ..IkePeer::new(
            "t",
            local,
            remote,
            b"espd-bench-psk",
            Selector {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                protocol: None,
                src_ports: PortRange::ANY,
                dst_ports: PortRange::ANY,
            },
        )
    }
}

/// One handshake: A initiates; datagrams are handed over until both have a child.
fn handshake() -> usize {
    let (mut a, mut b) = (
        Engine::new(vec![peer(true)]),
        Engine::new(vec![peer(false)]),
    );
    let (mut ea, mut eb) = (BenchEnv { spi: 0x1000 }, BenchEnv { spi: 0x2000 });
    let now = 1_000_000_000;
    a.initiate(&mut ea, now, 0);
    let mut wire: VecDeque<(bool, SocketAddr, SocketAddr, Vec<u8>)> = VecDeque::new();
    let mut children = 0;
    let mut messages = 0;
    loop {
        for (from_a, e) in [(true, &mut a), (false, &mut b)] {
            while let Some(act) = e.poll_action() {
                match act {
                    Action::Send {
                        local_port,
                        to,
                        data,
                        ..
                    } => {
                        let me: IpAddr = if from_a { "203.0.113.1" } else { "203.0.113.2" }
                            .parse()
                            .unwrap();
                        wire.push_back((from_a, SocketAddr::new(me, local_port), to, data));
                    }
                    Action::ChildUp(_) => children += 1,
                    _ => {}
                }
            }
        }
        if children >= 2 {
            return messages;
        }
        let Some((from_a, src, dst, data)) = wire.pop_front() else {
            panic!("the handshake stalled after {messages} messages");
        };
        messages += 1;
        if from_a {
            b.receive(&mut eb, now, dst, src, &data);
        } else {
            a.receive(&mut ea, now, dst, src, &data);
        }
    }
}

/// The public-key and hash work of one handshake, alone: per side one ECDH key pair and one
/// agreement; HMAC-SHA-256 calls of both sides (SKEYID and its three derivations, HASH_I/R,
/// QM HASH(1..3) and the KEYMAT of two SAs per side) and the phase 1 IV hash.
fn crypto_alone(hmacs: usize) {
    let (sa, pa) = DhSecret::generate(DhGroup::Ecp256).unwrap();
    let (sb, pb) = DhSecret::generate(DhGroup::Ecp256).unwrap();
    let ka = sa.agree(&pb).unwrap();
    let kb = sb.agree(&pa).unwrap();
    let p = Prf::HmacSha256;
    let mut k = p.prf(&ka, &[&kb]);
    for _ in 0..hmacs {
        k = p.prf(&k, &[&pa, &pb]);
    }
    std::hint::black_box((k, p.hash(&[&pa, &pb])));
}

fn bench(c: &mut Criterion) {
    let messages = handshake();
    assert_eq!(messages, 9, "MM1..MM6 and QM1..QM3");
    // Per side: SKEYID, _d, _a, _e (4), HASH_I or HASH_R computed and checked (2), QM HASH
    // (1), (2), (3) built or checked (3), KEYMAT of two SAs (2): 11, times two sides.
    const HMACS: usize = 22;
    let mut g = c.benchmark_group("ike");
    g.bench_function("main_mode_and_quick_mode", |b| b.iter(handshake));
    g.bench_function("public_key_and_hash_work_alone", |b| {
        b.iter(|| crypto_alone(HMACS))
    });
    g.finish();
    // Handshakes per second per core, measured plainly (criterion prints the times).
    let t = Instant::now();
    let mut n = 0u32;
    while t.elapsed().as_secs_f64() < 2.0 {
        handshake();
        n += 1;
    }
    println!(
        "ike: {:.0} main mode + quick mode handshakes per second on one core (both ends)",
        f64::from(n) / t.elapsed().as_secs_f64()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
