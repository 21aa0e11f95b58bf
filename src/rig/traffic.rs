//! A small traffic generator and checking sink for the rig (`espd traffic ...`, run inside the
//! host namespaces). Every UDP datagram carries a flow id, a sequence number and a payload
//! derived from both, so the sink checks every byte, and counts losses and duplicates. TCP
//! streams a deterministic byte pattern that the sink checks byte for byte.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
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
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
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
}

/// IMIX (7:4:1 of 64, 576 and 1400-byte IP packets; 1400 is the rig's LAN MTU).
pub const IMIX: [(usize, u32); 3] = [(64, 7), (576, 4), (1400, 1)];

#[derive(Debug, Default, Serialize)]
pub struct BlastReport {
    pub sent: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// Sends datagrams for `seconds` as fast as possible (sendmmsg, 32 per call) or at `pps`.
/// `ip_size`: IP packet size (the UDP payload is 28 bytes less); 0 means IMIX. Each datagram
/// carries the flow id, a sequence number and CLOCK_MONOTONIC at send time.
pub fn blast(
    dst: SocketAddr,
    flow: u32,
    ip_size: usize,
    seconds: f64,
    pps: u64,
) -> std::io::Result<BlastReport> {
    let s = sender_socket(dst)?;
    let hdr = if dst.is_ipv4() { 28 } else { 48 };
    let sizes: Vec<usize> = if ip_size == 0 {
        IMIX.iter()
            .flat_map(|(sz, n)| std::iter::repeat_n(*sz, *n as usize))
            .collect()
    } else {
        vec![ip_size]
    };
    let batch = if pps > 0 && pps <= 100_000 { 1 } else { 32 };
    let mut bufs: Vec<Vec<u8>> = (0..batch)
        .map(|i| {
            let mut b = vec![0u8; sizes[i % sizes.len()].saturating_sub(hdr).max(HEADER)];
            fill(&mut b, flow, 0, 0);
            b
        })
        .collect();
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    let mut r = BlastReport::default();
    let mut seq = 0u64;
    while start.elapsed() < limit {
        if let Some(ns) = seq.saturating_mul(1_000_000_000).checked_div(pps) {
            let due = Duration::from_nanos(ns);
            while start.elapsed() < due {
                std::hint::spin_loop();
            }
        }
        let ts = crate::sys::monotonic_ns();
        for b in bufs.iter_mut() {
            b[8..16].copy_from_slice(&seq.to_be_bytes());
            b[16..24].copy_from_slice(&ts.to_be_bytes());
            seq += 1;
        }
        let n = if batch == 1 {
            s.send(&bufs[0]).map(|_| 1).unwrap_or(0)
        } else {
            crate::sys::send_batch(&s, &mut bufs)
        };
        r.sent += n as u64;
        r.bytes += bufs[..n]
            .iter()
            .map(|b| (b.len() + hdr) as u64)
            .sum::<u64>();
        if n < bufs.len() {
            seq -= (bufs.len() - n) as u64;
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    Ok(r)
}

#[derive(Debug, Default, Serialize)]
pub struct SinkReport {
    pub received: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// One-way latency percentiles in microseconds.
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// (latency µs, cumulative fraction) for plotting.
    pub cdf: Vec<(f64, f64)>,
}

/// Receives (recvmmsg) until nothing arrived for `idle` after the first datagram, or `max`.
pub fn sink(
    bind: SocketAddr,
    idle: Duration,
    max: Duration,
    ip_hdr: usize,
) -> std::io::Result<SinkReport> {
    let s = sink_socket(bind, Duration::from_millis(50))?;
    let mut bufs: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; 2048]).collect();
    let mut lens = [0usize; 64];
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .expect("histogram bounds");
    let mut r = SinkReport::default();
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    loop {
        let n = crate::sys::recv_batch(&s, &mut bufs, &mut lens);
        let now = crate::sys::monotonic_ns();
        if n == 0 {
            if first.is_some_and(|_| last.elapsed() > idle) || start.elapsed() > max {
                break;
            }
            continue;
        }
        last = Instant::now();
        first.get_or_insert(last);
        for (b, &l) in bufs.iter().zip(lens.iter()).take(n) {
            if l < HEADER || b[..4] != MAGIC.to_be_bytes() {
                continue;
            }
            r.received += 1;
            r.bytes += (l + ip_hdr) as u64;
            let ts = u64::from_be_bytes(b[16..24].try_into().unwrap_or_default());
            let _ = h.record(now.saturating_sub(ts).max(1));
        }
    }
    r.seconds = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    (r.p50_us, r.p90_us, r.p99_us, r.p999_us, r.max_us) = (
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0,
    );
    for q in [
        0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0,
    ] {
        r.cdf.push((us(q), q));
    }
    Ok(r)
}
