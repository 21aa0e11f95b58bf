//! A small traffic generator and checking sink for the rig (`espd traffic ...`, run inside the
//! host namespaces). Every UDP datagram carries a flow id, a sequence number and a payload
//! derived from both, so the sink checks every byte, and counts losses and duplicates. TCP
//! streams a deterministic byte pattern that the sink checks byte for byte. For `espd bench`:
//! a paced or flooding sender ([`blast`]) and a counting [`sink`] for throughput and CPU
//! trials, and request/response round trips ([`rr`] against an [`echo`] responder).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Header of each datagram: magic, flow, sequence number, send time (ns, CLOCK_MONOTONIC).
const MAGIC: u32 = 0xe5d0_7e57;
pub const HEADER: usize = 4 + 4 + 8 + 8;

/// A UDP socket connected to `dst` from an unspecified address of its family.
fn sender_socket(dst: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = if dst.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let s = UdpSocket::bind(any)?;
    s.connect(dst)?;
    Ok(s)
}

/// A receiving socket with a deep buffer (a sink shares two cores with both gateways and the
/// sender) and a read timeout.
fn sink_socket(bind: SocketAddr, timeout: Duration) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(bind)?;
    crate::sys::set_rcvbuf(&s, 64 << 20);
    s.set_read_timeout(Some(timeout))?;
    Ok(s)
}

#[inline]
fn pattern(flow: u32, seq: u64, i: usize) -> u8 {
    (seq as u8)
        .wrapping_mul(31)
        .wrapping_add(flow as u8)
        .wrapping_add((i as u8).wrapping_mul(7))
}

/// Fills `buf` (≥ HEADER bytes) with datagram `seq` of `flow`.
pub fn fill(buf: &mut [u8], flow: u32, seq: u64, ts: u64) {
    buf[..4].copy_from_slice(&MAGIC.to_be_bytes());
    buf[4..8].copy_from_slice(&flow.to_be_bytes());
    buf[8..16].copy_from_slice(&seq.to_be_bytes());
    buf[16..24].copy_from_slice(&ts.to_be_bytes());
    for (i, b) in buf[HEADER..].iter_mut().enumerate() {
        *b = pattern(flow, seq, i);
    }
}

/// Checks a datagram; returns (flow, seq) when every byte is as sent.
pub fn check(buf: &[u8]) -> Option<(u32, u64)> {
    if buf.len() < HEADER || buf[..4] != MAGIC.to_be_bytes() {
        return None;
    }
    let flow = u32::from_be_bytes(buf[4..8].try_into().ok()?);
    let seq = u64::from_be_bytes(buf[8..16].try_into().ok()?);
    buf[HEADER..]
        .iter()
        .enumerate()
        .all(|(i, b)| *b == pattern(flow, seq, i))
        .then_some((flow, seq))
}

#[derive(Debug, Default, Serialize)]
pub struct SendReport {
    pub sent: u64,
    pub bytes: u64,
    pub errors: u64,
    pub seconds: f64,
}

/// Sends `count` datagrams of `size` bytes (UDP payload) to `dst`, at `pps` per second
/// (0: as fast as possible), `flow` in the header; stops early after `limit` if given.
pub fn udp_send(
    dst: SocketAddr,
    flow: u32,
    count: u64,
    size: usize,
    pps: u64,
    limit: Option<Duration>,
) -> std::io::Result<SendReport> {
    let s = sender_socket(dst)?;
    let mut buf = vec![0u8; size.max(HEADER)];
    let start = Instant::now();
    let mut r = SendReport::default();
    for seq in 0..count {
        if seq % 1024 == 0 && limit.is_some_and(|l| start.elapsed() >= l) {
            break;
        }
        if let Some(gap) = 1_000_000_000u64.checked_div(pps) {
            let due = Duration::from_nanos(seq * gap);
            while start.elapsed() < due {
                std::hint::spin_loop();
            }
        }
        fill(&mut buf, flow, seq, crate::now_ns());
        match s.send(&buf) {
            Ok(n) => {
                r.sent += 1;
                r.bytes += n as u64;
            }
            Err(_) => r.errors += 1,
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    Ok(r)
}

#[derive(Debug, Default, Serialize)]
pub struct RecvReport {
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub corrupt: u64,
    pub bytes: u64,
    pub lost: u64,
    pub seconds: f64,
}

/// Receives on `bind` until `expect` distinct datagrams arrived or nothing came for `idle`.
/// `expect` is per flow × flows.
pub fn udp_recv(
    bind: SocketAddr,
    expect: u64,
    idle: Duration,
    flows: u32,
) -> std::io::Result<RecvReport> {
    let s = sink_socket(bind, Duration::from_millis(100))?;
    let mut seen: HashSet<(u32, u64)> = HashSet::new();
    let mut r = RecvReport::default();
    let mut buf = vec![0u8; 65536];
    let mut last = Instant::now();
    let mut first: Option<Instant> = None;
    while (seen.len() as u64) < expect * flows as u64 && last.elapsed() < idle {
        match s.recv(&mut buf) {
            Ok(n) => {
                last = Instant::now();
                first.get_or_insert(last);
                r.received += 1;
                r.bytes += n as u64;
                match check(&buf[..n]) {
                    Some(k) => {
                        if !seen.insert(k) {
                            r.duplicates += 1;
                        }
                    }
                    None => r.corrupt += 1,
                }
            }
            Err(e) if timed_out(&e) => {}
            Err(e) => return Err(e),
        }
    }
    r.unique = seen.len() as u64;
    r.lost = (expect * flows as u64).saturating_sub(r.unique);
    r.seconds = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    Ok(r)
}

#[derive(Debug, Default, Serialize)]
pub struct TcpReport {
    pub bytes: u64,
    pub ok: bool,
    pub seconds: f64,
}

#[inline]
fn tcp_byte(i: u64) -> u8 {
    (i as u8).wrapping_mul(13).wrapping_add((i >> 8) as u8)
}

/// Connects to `dst` and writes `bytes` bytes of the pattern.
pub fn tcp_send(dst: SocketAddr, bytes: u64) -> std::io::Result<TcpReport> {
    let start = Instant::now();
    let mut s = connect_retry(dst, Duration::from_secs(5))?;
    let mut buf = vec![0u8; 65536];
    let mut off = 0u64;
    while off < bytes {
        let n = (bytes - off).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = tcp_byte(off + i as u64);
        }
        s.write_all(&buf[..n])?;
        off += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut ack = [0u8; 1];
    let _ = s.read(&mut ack);
    Ok(TcpReport {
        bytes,
        ok: true,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn connect_retry(dst: SocketAddr, within: Duration) -> std::io::Result<TcpStream> {
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() > within => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Accepts one connection on `bind` and checks every byte until EOF.
pub fn tcp_recv(bind: SocketAddr, expect: u64, timeout: Duration) -> std::io::Result<TcpReport> {
    let l = TcpListener::bind(bind)?;
    let (mut s, _) = l.accept()?;
    s.set_read_timeout(Some(timeout))?;
    let start = Instant::now();
    let mut buf = vec![0u8; 65536];
    let mut off = 0u64;
    let mut ok = true;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => {
                ok = false;
                break;
            }
        };
        ok &= buf[..n]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == tcp_byte(off + i as u64));
        off += n as u64;
    }
    let _ = s.write_all(&[1]);
    Ok(TcpReport {
        bytes: off,
        ok: ok && off == expect,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A receive that ended on its timeout (the socket's read timeout), not on an error.
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_roundtrip_and_corruption() {
        let mut b = vec![0u8; 100];
        fill(&mut b, 3, 77, 5);
        assert_eq!(check(&b), Some((3, 77)));
        b[60] ^= 1;
        assert_eq!(check(&b), None);
        assert_eq!(check(&b[..10]), None);
    }

    #[test]
    fn loopback_udp_and_tcp() {
        let rx = std::thread::spawn(|| {
            udp_recv(
                "127.0.0.1:47111".parse().unwrap(),
                200,
                Duration::from_secs(2),
                1,
            )
            .unwrap()
        });
        std::thread::sleep(Duration::from_millis(100));
        udp_send(
            "127.0.0.1:47111".parse().unwrap(),
            0,
            200,
            300,
            20_000,
            None,
        )
        .unwrap();
        let r = rx.join().unwrap();
        assert_eq!((r.unique, r.corrupt, r.duplicates), (200, 0, 0));
        let rx = std::thread::spawn(|| {
            tcp_recv(
                "127.0.0.1:47112".parse().unwrap(),
                1_000_000,
                Duration::from_secs(5),
            )
            .unwrap()
        });
        tcp_send("127.0.0.1:47112".parse().unwrap(), 1_000_000).unwrap();
        assert!(rx.join().unwrap().ok);
    }

    /// Round trips against the echo responder: every request answered and timed once, the
    /// percentiles ordered; paced requests take at least count × interval.
    #[test]
    fn loopback_request_response() {
        static STOP: AtomicBool = AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel();
        let echo = std::thread::spawn(move || {
            echo(
                "127.0.0.1:47113".parse().unwrap(),
                Duration::from_secs(30),
                &STOP,
                || tx.send(()).unwrap(),
            )
            .unwrap()
        });
        rx.recv().unwrap();
        let dst = "127.0.0.1:47113".parse().unwrap();
        let t = Duration::from_secs(1);
        let a = rr(dst, 64, 300, Duration::ZERO, 1, t).unwrap();
        assert_eq!((a.sent, a.received, a.lost, a.late), (300, 300, 0, 0));
        assert!(0.0 < a.p50_us && a.p50_us <= a.p90_us && a.p90_us <= a.p99_us);
        assert!(a.p99_us <= a.p999_us && a.p999_us <= a.max_us);
        let b = rr(dst, 1400, 200, Duration::ZERO, 4, t).unwrap();
        assert_eq!((b.sent, b.received, b.lost), (200, 200, 0));
        let c = rr(dst, 64, 20, Duration::from_millis(2), 1, t).unwrap();
        assert_eq!(c.received, 20);
        assert!(c.seconds >= 0.038, "paced: {} s", c.seconds);
        STOP.store(true, Ordering::Relaxed);
        assert_eq!(echo.join().unwrap().echoed, 520);
    }

    /// The sink counts only its flow, and stops when told (after the idle time).
    #[test]
    fn loopback_blast_into_sink_counts_one_flow() {
        static STOP: AtomicBool = AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = std::thread::spawn(move || {
            sink(
                "127.0.0.1:47114".parse().unwrap(),
                Some(7),
                Duration::from_millis(100),
                Duration::from_secs(1),
                Duration::from_secs(30),
                &STOP,
                || tx.send(()).unwrap(),
            )
            .unwrap()
        });
        rx.recv().unwrap();
        let dst = "127.0.0.1:47114".parse().unwrap();
        let other = blast(dst, 8, 64, 0.05, 2000).unwrap();
        let mine = blast(dst, 7, 0, 0.2, 5000).unwrap();
        // Paced: 5000 pps for 0.2 s is 1000 packets, however late the sender wakes.
        assert_eq!((mine.sent, other.sent), (1000, 100));
        STOP.store(true, Ordering::Relaxed);
        let r = sink.join().unwrap();
        assert_eq!((r.received, r.other, r.late), (mine.sent, other.sent, 0));
        // IMIX: 7:4:1 of 64, 576 and 1400 bytes.
        assert_eq!(r.bytes, mine.bytes);
        assert_eq!(mean_ip_size(0), 346.0);
    }
}

/// IMIX (7:4:1 of 64, 576 and 1400-byte IP packets; 1400 is the rig's LAN MTU).
pub const IMIX: [(usize, u32); 3] = [(64, 7), (576, 4), (1400, 1)];

/// The IP packet sizes of one IMIX cycle (12 packets), or `[ip_size]`.
fn size_cycle(ip_size: usize) -> Vec<usize> {
    if ip_size == 0 {
        IMIX.iter()
            .flat_map(|(sz, n)| std::iter::repeat_n(*sz, *n as usize))
            .collect()
    } else {
        vec![ip_size]
    }
}

/// Mean IP packet size of `ip_size` (0: IMIX).
pub fn mean_ip_size(ip_size: usize) -> f64 {
    let c = size_cycle(ip_size);
    c.iter().sum::<usize>() as f64 / c.len() as f64
}

#[derive(Debug, Default, Serialize)]
pub struct BlastReport {
    pub sent: u64,
    pub bytes: u64,
    /// Send calls that failed (their packets are not counted as sent).
    pub errors: u64,
    pub seconds: f64,
}

/// Sends datagrams for `seconds` as fast as possible (sendmmsg, 32 per call) or at `pps`.
/// `ip_size`: IP packet size (the UDP payload is 28 bytes less); 0 means IMIX. Each datagram
/// carries the flow id, a sequence number and CLOCK_MONOTONIC at send time.
///
/// Pacing at `pps` sleeps while ahead of the schedule (it does not spin: a spinning sender
/// takes one of the rig's two cores from the gateways) and, when behind, sends what is due in
/// one sendmmsg (at most 32): packets leave in bursts no longer than one sleep overshoot
/// (timer slack, ~50-100 µs), and the average rate is exact: ⌈seconds × pps⌉ packets.
pub fn blast(
    dst: SocketAddr,
    flow: u32,
    ip_size: usize,
    seconds: f64,
    pps: u64,
) -> std::io::Result<BlastReport> {
    const BATCH: usize = 32;
    let s = sender_socket(dst)?;
    let hdr = if dst.is_ipv4() { 28 } else { 48 };
    let sizes = size_cycle(ip_size);
    let mut bufs: Vec<Vec<u8>> = (0..BATCH)
        .map(|_| {
            let mut b = Vec::with_capacity(2048);
            b.resize(HEADER, 0);
            fill(&mut b, flow, 0, 0);
            b
        })
        .collect();
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    let mut r = BlastReport::default();
    let mut seq = 0u64;
    // Paced: exactly the packets due within `seconds`, even if the last sleep overshoots.
    let total = (seconds * pps as f64).ceil() as u64;
    loop {
        let el = start.elapsed();
        if (pps == 0 && el >= limit) || (pps > 0 && seq >= total) {
            break;
        }
        // Packets due by now (a whole batch when unpaced).
        let due = if pps == 0 {
            seq + BATCH as u64
        } else {
            ((el.as_nanos() * pps as u128 / 1_000_000_000) as u64 + 1).min(total)
        };
        if seq >= due {
            let next = Duration::from_nanos(seq.saturating_mul(1_000_000_000) / pps.max(1));
            std::thread::sleep(next.saturating_sub(el));
            continue;
        }
        let n = ((due - seq) as usize).min(BATCH);
        let ts = crate::sys::monotonic_ns();
        for (j, b) in bufs[..n].iter_mut().enumerate() {
            let k = seq + j as u64;
            b.resize(
                sizes[(k % sizes.len() as u64) as usize]
                    .saturating_sub(hdr)
                    .max(HEADER),
                0,
            );
            b[8..16].copy_from_slice(&k.to_be_bytes());
            b[16..24].copy_from_slice(&ts.to_be_bytes());
        }
        let sent = if n == 1 {
            s.send(&bufs[0]).map(|_| 1).unwrap_or(0)
        } else {
            crate::sys::send_batch(&s, &mut bufs[..n])
        };
        r.sent += sent as u64;
        r.bytes += bufs[..sent]
            .iter()
            .map(|b| (b.len() + hdr) as u64)
            .sum::<u64>();
        if sent == 0 {
            // An error (ECONNREFUSED after an ICMP unreachable, ENOBUFS): that packet is not
            // offered; the next one is.
            r.errors += 1;
            seq += 1;
        }
        seq += sent as u64;
    }
    r.seconds = start.elapsed().as_secs_f64();
    Ok(r)
}

#[derive(Debug, Default, Serialize)]
pub struct SinkReport {
    /// Datagrams of the flow counted (every flow when none was given).
    pub received: u64,
    /// IP bytes of those datagrams.
    pub bytes: u64,
    /// Of `received`, those that came more than `grace` after the stop: late (a queue
    /// draining), not forwarded at the rate offered.
    pub late: u64,
    /// Datagrams of other flows (an earlier trial still draining) or not ours.
    pub other: u64,
    /// From the first datagram counted to the last datagram received.
    pub seconds: f64,
}

/// Counts datagrams (recvmmsg) of `flow` (or of every flow) until `stop` is set, then until
/// no datagram of any flow arrived for `idle` (a system with a deep queue still delivers after
/// the sender stopped: those packets count, and the next trial starts on a drained system), or
/// until `max` in any case; those that came more than `grace` after the stop are also counted
/// as `late`. `ready` runs once the socket is bound.
pub fn sink(
    bind: SocketAddr,
    flow: Option<u32>,
    idle: Duration,
    grace: Duration,
    max: Duration,
    stop: &AtomicBool,
    ready: impl FnOnce(),
) -> std::io::Result<SinkReport> {
    let s = sink_socket(bind, Duration::from_millis(20))?;
    ready();
    let ip_hdr = if bind.is_ipv4() { 28 } else { 48 };
    let mut bufs: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; 2048]).collect();
    let mut lens = [0usize; 64];
    let mut r = SinkReport::default();
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut stopped: Option<Instant> = None;
    loop {
        let n = crate::sys::recv_batch(&s, &mut bufs, &mut lens);
        if n == 0 {
            if stopped.is_none() && stop.load(Ordering::Relaxed) {
                stopped = Some(Instant::now());
            }
            let quiet = stopped.is_some_and(|t| t.max(last).elapsed() > idle);
            if quiet || start.elapsed() > max {
                break;
            }
            continue;
        }
        for (b, &l) in bufs.iter().zip(lens.iter()).take(n) {
            // Quiet means no datagram at all: an earlier trial's backlog drains first.
            last = Instant::now();
            let ours = l >= HEADER
                && b[..4] == MAGIC.to_be_bytes()
                && flow.is_none_or(|f| b[4..8] == f.to_be_bytes());
            if !ours {
                r.other += 1;
                continue;
            }
            first.get_or_insert(last);
            r.received += 1;
            if stopped.is_some_and(|t| last.duration_since(t) > grace) {
                r.late += 1;
            }
            r.bytes += (l + ip_hdr) as u64;
        }
    }
    r.seconds = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    Ok(r)
}

#[derive(Debug, Default, Serialize)]
pub struct EchoReport {
    pub echoed: u64,
}

/// The request/response responder: sends every datagram back to where it came from, until
/// `stop` is set or `max`. `ready` runs once the socket is bound.
pub fn echo(
    bind: SocketAddr,
    max: Duration,
    stop: &AtomicBool,
    ready: impl FnOnce(),
) -> std::io::Result<EchoReport> {
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(Duration::from_millis(20)))?;
    ready();
    let start = Instant::now();
    let mut buf = vec![0u8; 65536];
    let mut r = EchoReport::default();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                if s.send_to(&buf[..n], from).is_ok() {
                    r.echoed += 1;
                }
            }
            Err(e) if timed_out(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(r)
}

/// Round-trip times of one request/response run, in microseconds.
#[derive(Debug, Default, Serialize)]
pub struct RrReport {
    pub sent: u64,
    pub received: u64,
    /// Requests with no response within the timeout.
    pub lost: u64,
    /// Responses that came after their request was given up.
    pub late: u64,
    pub seconds: f64,
    /// Completed transactions per second.
    pub tps: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// (round trip µs, cumulative fraction) for plotting.
    pub cdf: Vec<(f64, f64)>,
}

/// Percentiles and a CDF of a histogram of nanoseconds, in microseconds.
fn percentiles(h: &hdrhistogram::Histogram<u64>, r: &mut RrReport) {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    (r.p50_us, r.p90_us, r.p99_us, r.p999_us) = (us(0.5), us(0.9), us(0.99), us(0.999));
    r.max_us = h.max() as f64 / 1000.0;
    r.mean_us = h.mean() / 1000.0;
    for q in [
        0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0,
    ] {
        r.cdf.push((us(q), q));
    }
}

/// Request/response round trips (like netperf UDP_RR, or `ping` when paced): `count` requests
/// of `ip_size`-byte IP packets to an echo responder, at most `outstanding` in flight; with
/// `interval` > 0, request i goes out no earlier than i × `interval` after the start. Each
/// round trip is CLOCK_MONOTONIC read right after recv() returns minus the reading right
/// before send(): one request per syscall, no batching. A request unanswered within `timeout`
/// is lost.
pub fn rr(
    dst: SocketAddr,
    ip_size: usize,
    count: u64,
    interval: Duration,
    outstanding: u32,
    timeout: Duration,
) -> std::io::Result<RrReport> {
    const RING: usize = 1024;
    let s = sender_socket(dst)?;
    s.set_read_timeout(Some(timeout))?;
    let hdr = if dst.is_ipv4() { 28 } else { 48 };
    let mut req = vec![0u8; ip_size.saturating_sub(hdr).max(HEADER)];
    fill(&mut req, 0, 0, 0);
    let mut resp = vec![0u8; 65536];
    let k = (outstanding.max(1) as usize).min(RING);
    // slot[seq % RING] = (seq, send time) of a request in flight.
    let mut slot: Vec<Option<(u64, u64)>> = vec![None; RING];
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(std::io::Error::other)?;
    let mut r = RrReport::default();
    let mut in_flight = 0usize;
    let start = Instant::now();
    while r.sent < count || in_flight > 0 {
        if r.sent < count && in_flight < k {
            let due = interval.saturating_mul(r.sent.min(u32::MAX as u64) as u32);
            let el = start.elapsed();
            if due > el {
                if in_flight == 0 {
                    std::thread::sleep(due - el);
                } else {
                    // Wait for responses first; send when due.
                    s.set_read_timeout(Some((due - el).max(Duration::from_micros(1))))?;
                }
            }
            if start.elapsed() >= due {
                let seq = r.sent;
                req[8..16].copy_from_slice(&seq.to_be_bytes());
                let t0 = crate::sys::monotonic_ns();
                if s.send(&req).is_ok() {
                    slot[seq as usize % RING] = Some((seq, t0));
                    in_flight += 1;
                } else {
                    r.lost += 1;
                }
                r.sent += 1;
                s.set_read_timeout(Some(timeout))?;
                if in_flight < k && r.sent < count {
                    continue;
                }
            }
        }
        match s.recv(&mut resp) {
            Ok(n) => {
                let t1 = crate::sys::monotonic_ns();
                if n < HEADER || resp[..4] != MAGIC.to_be_bytes() {
                    continue;
                }
                let seq = u64::from_be_bytes(resp[8..16].try_into().unwrap_or_default());
                match slot[seq as usize % RING] {
                    Some((q, t0)) if q == seq => {
                        let _ = h.record(t1.saturating_sub(t0).max(1));
                        slot[seq as usize % RING] = None;
                        in_flight -= 1;
                        r.received += 1;
                    }
                    _ => r.late += 1,
                }
            }
            Err(e) if timed_out(&e) => {
                // Give up on requests older than the timeout.
                let now = crate::sys::monotonic_ns();
                let t = timeout.as_nanos() as u64;
                for x in slot.iter_mut() {
                    if x.is_some_and(|(_, t0)| now.saturating_sub(t0) >= t) {
                        *x = None;
                        in_flight -= 1;
                        r.lost += 1;
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    r.tps = r.received as f64 / r.seconds.max(1e-9);
    if r.received > 0 {
        percentiles(&h, &mut r);
    }
    Ok(r)
}
