// The in-memory harness of the IKE engine tests (`tests/ike_engine.rs`, `tests/ike_review.rs`
// include it): seeded randomness and counter SPIs, two engines back to back through a fake
// network that can drop, duplicate or mutate datagrams, and a fake clock.

const S: u64 = 1_000_000_000;
const A_IP: &str = "203.0.113.1";
const B_IP: &str = "203.0.113.2";
const A_NET: &str = "192.0.2.0/24";
const B_NET: &str = "198.51.100.0/24";

/// Seeded randomness and counter SPIs.
struct TestEnv {
    rng: u64,
    next_spi: u32,
    allocated: Vec<u32>,
}

impl TestEnv {
    fn new(seed: u64, spi_base: u32) -> Self {
        TestEnv {
            rng: seed | 1,
            next_spi: spi_base,
            allocated: Vec::new(),
        }
    }
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

impl Env for TestEnv {
    fn random(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_be_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    fn allocate_spi(&mut self) -> Option<u32> {
        self.next_spi += 1;
        self.allocated.push(self.next_spi);
        Some(self.next_spi)
    }
}

fn peer(a_side: bool) -> IkePeer {
    let (l, r, src, dst) = if a_side {
        (A_IP, B_IP, A_NET, B_NET)
    } else {
        (B_IP, A_IP, B_NET, A_NET)
    };
    let local: IpAddr = l.parse().unwrap();
    let remote: IpAddr = r.parse().unwrap();
    IkePeer {
        initiate: a_side,
        ..IkePeer::new(
            if a_side { "to-b" } else { "to-a" },
            local,
            remote,
            b"espd-engine-test-psk",
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

/// The main modes that came up in `ev`: (icookie, rcookie, initiator), in order.
fn mains_up(ev: &[Action]) -> Vec<(u64, u64, bool)> {
    ev.iter()
        .filter_map(|a| match a {
            Action::MainModeUp {
                icookie,
                rcookie,
                initiator,
                ..
            } => Some((*icookie, *rcookie, *initiator)),
            _ => None,
        })
        .collect()
}

struct Side {
    e: Engine,
    env: TestEnv,
    ip: IpAddr,
    /// Every non-Send action, in order.
    ev: Vec<Action>,
    keepalives: usize,
    released: Vec<u32>,
}

impl Side {
    fn new(cfg: IkePeer, seed: u64, spi_base: u32) -> Self {
        let ip = cfg.local;
        Side {
            e: Engine::new(vec![cfg]),
            env: TestEnv::new(seed, spi_base),
            ip,
            ev: Vec::new(),
            keepalives: 0,
            released: Vec::new(),
        }
    }

    fn mm_up(&self) -> Vec<(u64, u64, bool)> {
        mains_up(&self.ev)
    }
    fn mm_down(&self) -> Vec<(u64, u64, MmEnd)> {
        self.ev
            .iter()
            .filter_map(|a| match a {
                Action::MainModeDown {
                    icookie,
                    rcookie,
                    cause,
                    ..
                } => Some((*icookie, *rcookie, *cause)),
                _ => None,
            })
            .collect()
    }
    fn children(&self) -> Vec<&NewChild> {
        self.ev
            .iter()
            .filter_map(|a| match a {
                Action::ChildUp(c) => Some(&**c),
                _ => None,
            })
            .collect()
    }
    fn child_down(&self) -> Vec<(Option<u32>, Option<u32>, &'static str)> {
        self.ev
            .iter()
            .filter_map(|a| match a {
                Action::ChildDown {
                    inbound,
                    outbound,
                    reason,
                    ..
                } => Some((*inbound, *outbound, *reason)),
                _ => None,
            })
            .collect()
    }
    fn failed(&self) -> Vec<(Exchange, Code, String)> {
        self.ev
            .iter()
            .filter_map(|a| match a {
                Action::Failed {
                    exchange,
                    code,
                    reason,
                    ..
                } => Some((*exchange, *code, reason.clone())),
                _ => None,
            })
            .collect()
    }
}

/// What the network does with a datagram.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    Pass,
    Drop,
    #[allow(dead_code)] // some test files never duplicate
    Dup,
}

type Tap = Box<dyn FnMut(bool, &[u8]) -> Fate>;

struct Packet {
    /// From A to B.
    to_b: bool,
    local: SocketAddr,
    from: SocketAddr,
    data: Vec<u8>,
}

struct World {
    a: Side,
    b: Side,
    now: u64,
    q: VecDeque<Packet>,
    /// Decides each datagram's fate (`true`: sent by A).
    tap: Tap,
    /// Every datagram sent, with its sender (`true`: A) and our port.
    wire: Vec<(bool, u16, Vec<u8>)>,
    /// A port-translating NAT in front of A: its ports 500 and 4500 as B sees them.
    nat_a: Option<(u16, u16)>,
}

impl World {
    fn new(a: IkePeer, b: IkePeer) -> Self {
        World {
            a: Side::new(a, 0x5eed_0001, 0xa000_0000),
            b: Side::new(b, 0x5eed_0002, 0xb000_0000),
            now: 1_000 * S,
            q: VecDeque::new(),
            tap: Box::new(|_, _| Fate::Pass),
            wire: Vec::new(),
            nat_a: None,
        }
    }

    fn std() -> Self {
        World::new(peer(true), peer(false))
    }

    fn collect(&mut self) {
        for from_a in [true, false] {
            loop {
                let side = if from_a { &mut self.a } else { &mut self.b };
                let Some(act) = side.e.poll_action() else {
                    break;
                };
                match act {
                    Action::Send {
                        local_port,
                        to,
                        data,
                        ..
                    } => {
                        let sender_ip = side.ip;
                        if local_port == 4500 && data == [0xff] {
                            side.keepalives += 1;
                            continue;
                        }
                        self.wire.push((from_a, local_port, data.clone()));
                        let receiver_ip = if from_a { self.b.ip } else { self.a.ip };
                        assert_eq!(to.ip(), receiver_ip, "sent to the wrong address");
                        // The NAT in front of A: A's ports go out mapped, come back unmapped.
                        let (mut src_port, mut to) = (local_port, to);
                        if let Some((m500, m4500)) = self.nat_a {
                            if from_a {
                                src_port = if local_port == 500 { m500 } else { m4500 };
                            } else if to.port() == m500 {
                                to.set_port(500);
                            } else if to.port() == m4500 {
                                to.set_port(4500);
                            } else {
                                continue;
                            }
                        }
                        let fate = (self.tap)(from_a, &data);
                        let p = || Packet {
                            to_b: from_a,
                            local: to,
                            from: SocketAddr::new(sender_ip, src_port),
                            data: data.clone(),
                        };
                        match fate {
                            Fate::Pass => self.q.push_back(p()),
                            Fate::Dup => {
                                self.q.push_back(p());
                                self.q.push_back(p());
                            }
                            Fate::Drop => {}
                        }
                    }
                    Action::ReleaseSpi { spi } => side.released.push(spi),
                    other => side.ev.push(other),
                }
            }
        }
    }

    /// Delivers everything in flight (and what it causes) at the current time.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            self.collect();
            let Some(p) = self.q.pop_front() else {
                return;
            };
            let side = if p.to_b { &mut self.b } else { &mut self.a };
            side.e
                .receive(&mut side.env, self.now, p.local, p.from, &p.data);
        }
        panic!("the exchange does not settle");
    }

    fn tick(&mut self) {
        self.a.e.tick(&mut self.a.env, self.now);
        self.b.e.tick(&mut self.b.env, self.now);
        self.pump();
    }

    /// Runs the clock to `now + dt`, ticking at every deadline on the way.
    fn advance(&mut self, dt: u64) {
        let end = self.now + dt;
        let mut spins = 0;
        loop {
            let d = [self.a.e.next_deadline(), self.b.e.next_deadline()]
                .into_iter()
                .flatten()
                .min();
            match d {
                Some(d) if d <= end => {
                    if d <= self.now {
                        spins += 1;
                        assert!(
                            spins < 1000,
                            "a deadline in the past that tick does not clear"
                        );
                    } else {
                        spins = 0;
                        self.now = d;
                    }
                    self.tick();
                }
                _ => break,
            }
        }
        self.now = end;
        self.tick();
    }

    fn initiate_a(&mut self) {
        self.a.e.initiate(&mut self.a.env, self.now, 0);
        self.pump();
    }

    #[allow(dead_code)]
    fn initiate_b(&mut self) {
        self.b.e.initiate(&mut self.b.env, self.now, 0);
        self.pump();
    }
}

/// Both sides have exactly `n` children and the i-th of each cross-matches (inbound SPI and
/// key on one side = outbound on the other).
fn check_pairs(w: &World, n: usize) {
    let (ca, cb) = (w.a.children(), w.b.children());
    assert_eq!(ca.len(), n, "children of A: {:?}", w.a.failed());
    assert_eq!(cb.len(), n, "children of B: {:?}", w.b.failed());
    for x in &ca {
        let y = cb
            .iter()
            .find(|y| y.outbound.spi == x.inbound.spi)
            .expect("B's outbound SPI for A's inbound");
        assert_eq!(y.inbound.spi, x.outbound.spi);
        assert_eq!(&x.inbound.keymat[..], &y.outbound.keymat[..]);
        assert_eq!(&x.outbound.keymat[..], &y.inbound.keymat[..]);
        assert_ne!(&x.inbound.keymat[..], &x.outbound.keymat[..]);
        assert_eq!((x.icookie, x.rcookie), (y.icookie, y.rcookie));
        assert_eq!(x.selector.src, y.selector.dst);
        assert_eq!(x.selector.dst, y.selector.src);
        assert_eq!(x.udp_encap, y.udp_encap);
    }
}

fn check_mm(w: &World) -> (u64, u64) {
    let (a, b) = (w.a.mm_up(), w.b.mm_up());
    assert_eq!(a.len(), 1, "A: {:?}", w.a.failed());
    assert_eq!(b.len(), 1, "B: {:?}", w.b.failed());
    assert_eq!((a[0].0, a[0].1), (b[0].0, b[0].1), "equal cookies");
    assert_ne!(a[0].2, b[0].2, "one initiator");
    (a[0].0, a[0].1)
}

fn setup(w: &mut World) {
    w.initiate_a();
    check_mm(w);
    check_pairs(w, 1);
}

// -------------------------------------------------------------------------------------------
