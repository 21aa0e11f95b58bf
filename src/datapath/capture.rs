//! `espd ctl capture` (like VPP's `pcap trace`): copies of what the workers receive and send on
//! both interfaces, which the XDP redirect hides from tcpdump on the gateway.
//!
//! Each worker reads the capture flag once per pass that received frames (one Relaxed load;
//! nothing else happens while no capture runs). While a capture runs, it copies each frame it
//! receives or hands to a tx ring (up to the snap length) into a preallocated slot taken from
//! its own ring of free slots and puts the slot on its ring of full slots: two lock-free queue
//! operations and a copy per frame, no allocation. A frame that finds no free slot is counted
//! (`dropped_ring_full`) and not copied. The flag is the running capture's number (0: none);
//! a pass records its frames for the number it read, and each slot knows the capture that
//! allocated it, so a frame late for its capture (handed over after that capture's end) never
//! goes into the next capture's file and is counted once, as `dropped_late`: by its own
//! capture when its slot was still held at that capture's give-up, else by the next capture. The capture thread ([`Capture::run`], started by the
//! control socket's `capture` request on its own thread, so neither the control thread nor
//! the workers wait for it) allocates the slots when the capture starts, drains the full rings
//! every millisecond into pcapng (one interface per interface and direction, nanosecond
//! timestamps, `epb_flags` inbound/outbound), hands the slots back, and frees them at the end.
//! The timestamp of a frame is the worker's clock read of its pass (monotonic, turned into
//! wall-clock time by the capture thread).
//!
//! Memory: the file grows in chunks of [`CHUNK`] bytes, each allocated once at the size it
//! keeps (never reallocated or copied), so it holds at most `max_bytes` (≤ [`MAX_MAX_BYTES`])
//! plus one chunk's slack; the answer's base64 is written straight from the chunks into the
//! one answer string, each chunk freed once encoded ([`PcapBuf::base64_into`]). A capture ends
//! after its `seconds`, on [`Capture::cancel`], when the daemon stops (its stop flag, see
//! [`Capture::stops_with`]) or when its client hangs up (the flag of [`Claim::ends_when`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Counter;
use crate::pcap::{Dir, PcapNg};
// The capture's own flags and rings are loom's under the `loom` feature (src/sync.rs); the
// stop and hang-up flags come from the daemon and the control socket and stay `std`'s.
use crate::sync::ArrayQueue;
use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use clock::Deadline;

/// Slots per worker: what a worker can capture between two drains (1 ms apart).
pub const SLOTS: usize = 2048;
pub const DEFAULT_SNAPLEN: u32 = 256;
/// Frames are at most one UMEM chunk.
pub const MAX_SNAPLEN: u32 = 4096;
pub const MAX_SECONDS: f64 = 300.0;
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Largest `max_bytes`: the file and its base64 answer (4/3 of it) are in memory at once.
pub const MAX_MAX_BYTES: u64 = 128 << 20;
/// The file's allocation step (a multiple of 3: the chunks' base64 texts join up).
pub const CHUNK: usize = 3 << 20;

/// Where a frame was seen. Also its interface id in the pcapng file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Point {
    PlainRx = 0,
    PlainTx = 1,
    CipherRx = 2,
    CipherTx = 3,
}

impl Point {
    pub const ALL: [Point; 4] = [
        Point::PlainRx,
        Point::PlainTx,
        Point::CipherRx,
        Point::CipherTx,
    ];
    #[inline]
    pub fn rx(plain: bool) -> Point {
        if plain {
            Point::PlainRx
        } else {
            Point::CipherRx
        }
    }
    #[inline]
    pub fn tx(plain: bool) -> Point {
        if plain {
            Point::PlainTx
        } else {
            Point::CipherTx
        }
    }
    fn plain(self) -> bool {
        matches!(self, Point::PlainRx | Point::PlainTx)
    }
    fn dir(self) -> Dir {
        match self {
            Point::PlainRx | Point::CipherRx => Dir::Inbound,
            Point::PlainTx | Point::CipherTx => Dir::Outbound,
        }
    }
    /// `rx` or `tx`.
    pub fn way(self) -> &'static str {
        match self.dir() {
            Dir::Inbound => "rx",
            Dir::Outbound => "tx",
        }
    }
}

/// One frame copy.
struct Slot {
    /// The capture that allocated the slot: only its own slots go back to the free rings.
    owner: u32,
    /// The capture the frame in it was recorded for (the number the worker read): only its
    /// own frames go into a capture's file.
    of: u32,
    buf: Box<[u8]>,
    len: u32,
    orig_len: u32,
    ts: u64,
    point: Point,
}

/// One worker's rings: slots to fill, slots filled. Producer: the worker; consumer: the
/// capture thread.
pub struct Ring {
    free: ArrayQueue<Slot>,
    full: ArrayQueue<Slot>,
    /// Frames that found no free slot (single writer: the worker).
    dropped: Counter,
    /// `dropped` as the last capture read it at its end (written by the capture thread only):
    /// what a worker drops after that read is a frame late for that capture, reported by the
    /// next one.
    reported: AtomicU64,
}

impl Ring {
    fn new(slots: usize) -> Ring {
        Ring {
            free: ArrayQueue::new(slots),
            // One more than the slots: besides them, one slot of an earlier capture, held by
            // the worker past that capture's end, can come back after the next one's start.
            full: ArrayQueue::new(slots + 1),
            dropped: Counter::default(),
            reported: AtomicU64::new(0),
        }
    }

    /// Copies `frame` (seen at `point` at monotonic time `now`) into a free slot, for
    /// capture number `capture` (what [`Capture::running`] returned to this pass).
    #[inline]
    pub fn record(&self, capture: u32, point: Point, now: u64, frame: &[u8]) {
        let Some(mut s) = self.free.pop() else {
            self.dropped.add(1);
            return;
        };
        s.of = capture;
        let n = frame.len().min(s.buf.len());
        s.buf[..n].copy_from_slice(&frame[..n]);
        s.len = n as u32;
        s.orig_len = frame.len() as u32;
        s.ts = now;
        s.point = point;
        // At most `slots` of the running capture's slots and the one earlier slot this worker
        // may still have held at its start are in circulation, and `full` holds one more than
        // `slots`: this push cannot fail.
        if let Err(s) = self.full.push(s) {
            let _ = self.free.push(s);
            self.dropped.add(1);
        }
    }
}

/// What one capture asks for.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub duration: Duration,
    pub snaplen: u32,
    /// Largest pcapng file; frames beyond it are counted, not written.
    pub max_bytes: u64,
}

impl Params {
    /// Checks the request's values; the error names the field.
    pub fn new(
        seconds: f64,
        snaplen: Option<u32>,
        max_bytes: Option<u64>,
    ) -> Result<Params, (&'static str, String)> {
        if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
            return Err(("seconds", format!("{seconds} is not in (0, {MAX_SECONDS}]")));
        }
        let snaplen = snaplen.unwrap_or(DEFAULT_SNAPLEN);
        if !(64..=MAX_SNAPLEN).contains(&snaplen) {
            return Err((
                "snaplen",
                format!("{snaplen} is not between 64 and {MAX_SNAPLEN}"),
            ));
        }
        let max_bytes = max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if !(4096..=MAX_MAX_BYTES).contains(&max_bytes) {
            return Err((
                "max_bytes",
                format!("{max_bytes} is not between 4096 and {MAX_MAX_BYTES}"),
            ));
        }
        Ok(Params {
            duration: Duration::from_secs_f64(seconds),
            snaplen,
            max_bytes,
        })
    }
}

/// The outcome of a capture.
#[derive(Debug)]
pub struct Outcome {
    /// The pcapng file.
    pub pcapng: PcapBuf,
    /// Frames written, by [`Point`].
    pub frames: [u64; 4],
    /// Frames not copied: the worker's ring was full.
    pub dropped_ring_full: u64,
    /// Frames copied but not written: the file reached `max_bytes`.
    pub dropped_size_limit: u64,
    /// Frames recorded for a capture after it ended, never written to any file: those a
    /// worker still held when this capture gave up waiting for its slots ([`GIVE_UP`] after
    /// its end: a worker stalled that long), and those of the previous capture that a worker
    /// handed over after that capture's end (into this capture's slots, or dropped for want
    /// of a slot in between): reported here, by the next capture.
    pub dropped_late: u64,
}

/// The capture rings of all workers and the flag they read.
pub struct Capture {
    /// The number of the capture that runs, 0 when none: the flag the workers read.
    running: AtomicU32,
    /// The last capture number given out.
    numbers: AtomicU32,
    /// A capture runs (one at a time).
    claimed: AtomicBool,
    /// Ends the running capture early.
    cancel: AtomicBool,
    /// The daemon's stop flag: ends the running capture when set.
    stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    rings: Box<[Ring]>,
    /// Slots per ring: [`SLOTS`] (fewer in the loom models).
    slots: usize,
    /// How long `run` waits for the workers to hand the last slots back: [`GIVE_UP`].
    give_up: Duration,
    plain: String,
    cipher: String,
}

/// The right to run the one capture; released when dropped.
pub struct Claim {
    cap: Arc<Capture>,
    /// Ends this capture when set (its client hung up).
    until: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Claim {
    /// Ends this capture early once `flag` is set (the socket's flag for a client that hung up).
    pub fn ends_when(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Claim {
        self.until = Some(flag);
        self
    }

    /// Whether the capture must end now.
    fn ended(&self) -> bool {
        let set = |f: &std::sync::atomic::AtomicBool| f.load(Ordering::Acquire);
        self.cap.cancel.load(Ordering::Acquire)
            || self.cap.stop.as_deref().is_some_and(set)
            || self.until.as_deref().is_some_and(set)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.cap.running.store(0, Ordering::Release);
        self.cap.claimed.store(false, Ordering::Release);
    }
}

impl Capture {
    /// Rings for `workers` workers forwarding between interfaces `plain` and `cipher`.
    pub fn new(workers: usize, plain: &str, cipher: &str) -> Capture {
        Capture::sized(workers, SLOTS, plain, cipher)
    }

    /// [`Capture::new`] with `slots` slots per worker.
    fn sized(workers: usize, slots: usize, plain: &str, cipher: &str) -> Capture {
        Capture {
            running: AtomicU32::new(0),
            numbers: AtomicU32::new(0),
            claimed: AtomicBool::new(false),
            cancel: AtomicBool::new(false),
            stop: None,
            rings: (0..workers).map(|_| Ring::new(slots)).collect(),
            slots,
            give_up: GIVE_UP,
            plain: plain.to_string(),
            cipher: cipher.to_string(),
        }
    }

    /// Ends every capture once `stop` (the daemon's stop flag) is set.
    pub fn stops_with(mut self, stop: Arc<std::sync::atomic::AtomicBool>) -> Capture {
        self.stop = Some(stop);
        self
    }

    /// The number of the capture that runs, if one does: read by each worker once per pass
    /// that received frames, and given to [`Ring::record`] for that pass's frames.
    #[inline]
    pub fn running(&self) -> Option<u32> {
        match self.running.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Whether a capture runs.
    #[inline]
    pub fn active(&self) -> bool {
        self.running().is_some()
    }

    /// Worker `id`'s ring.
    #[inline]
    pub fn ring(&self, id: usize) -> Option<&Ring> {
        self.rings.get(id)
    }

    /// The capture, unless one runs already.
    pub fn claim(self: &Arc<Self>) -> Option<Claim> {
        self.claimed
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        // A cancel from before this claim is not for this capture; one from now on is.
        self.cancel.store(false, Ordering::Release);
        Some(Claim {
            cap: self.clone(),
            until: None,
        })
    }

    /// Ends the claimed or running capture now (it still collects what the workers copied);
    /// nothing when none is claimed.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }

    /// The pcapng interface names: (if_name, if_description) by [`Point`].
    fn interfaces(&self) -> Vec<(String, String)> {
        Point::ALL
            .iter()
            .map(|p| {
                let name = if p.plain() { &self.plain } else { &self.cipher };
                let side = if p.plain() { "plain" } else { "cipher" };
                (
                    name.clone(),
                    format!("{name} {} ({side} side, espd workers)", p.way()),
                )
            })
            .collect()
    }

    /// Runs the capture `claim` allows for `p.duration` (or until cancelled, see [`Claim`]),
    /// then stops it and collects every slot back. Blocks for the duration: run it on a
    /// thread of its own.
    pub fn run(claim: Claim, p: &Params) -> std::io::Result<Outcome> {
        let cap = &claim.cap;
        // Frames late for an earlier capture that this one reports (see `Outcome::dropped_late`).
        let mut late: u64 = 0;
        // This capture's number (never 0, which means none); the claim makes it the only one.
        let me = loop {
            let n = cap.numbers.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if n != 0 {
                break n;
            }
        };
        for r in cap.rings.iter() {
            // Slots of an earlier capture that did not come back in time.
            while r.full.pop().is_some() {}
            while r.free.pop().is_some() {}
            for _ in 0..cap.slots {
                let _ = r.free.push(Slot {
                    owner: me,
                    of: 0,
                    buf: vec![0u8; p.snaplen as usize].into_boxed_slice(),
                    len: 0,
                    orig_len: 0,
                    ts: 0,
                    point: Point::PlainRx,
                });
            }
        }
        let dropped0: Vec<u64> = cap.rings.iter().map(|r| r.dropped.get()).collect();
        // Frames dropped since the last capture read the counters at its end: late for that
        // capture (no capture ran in between), reported here.
        late += cap
            .rings
            .iter()
            .zip(&dropped0)
            .map(|(r, d)| d.wrapping_sub(r.reported.load(Ordering::Relaxed)))
            .sum::<u64>();
        // Worker clock (monotonic ns since start) to wall-clock time.
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let offset = wall.saturating_sub(Duration::from_nanos(crate::now_ns()));
        let mut w = Writer {
            out: PcapNg::new(
                PcapBuf::new(p.max_bytes as usize),
                p.snaplen,
                &cap.interfaces(),
            )?,
            offset,
            max: p.max_bytes as usize,
            frames: [0; 4],
            over: 0,
        };
        let mut end = Deadline::after(p.duration);
        cap.running.store(me, Ordering::Release);
        while !end.passed() && !claim.ended() {
            let mut n = 0;
            for r in cap.rings.iter() {
                while let Some(s) = r.full.pop() {
                    late += w.take(&s, me)?;
                    // A slot of an earlier capture is freed, not reused.
                    if s.owner == me {
                        let _ = r.free.push(s);
                    }
                    n += 1;
                }
            }
            if n == 0 {
                end.nap();
            }
        }
        cap.running.store(0, Ordering::Release);
        // Every slot comes back: from the full rings (written) or the free rings. A worker
        // that read the flag before it was cleared finishes its pass with slots of ours.
        let total = cap.slots * cap.rings.len();
        let mut back = 0;
        let mut give_up = Deadline::after(cap.give_up);
        while back < total && !give_up.passed() {
            let mut n = 0;
            let mut ours = 0;
            for r in cap.rings.iter() {
                while let Some(s) = r.full.pop() {
                    late += w.take(&s, me)?;
                    ours += usize::from(s.owner == me);
                    n += 1;
                }
                while let Some(s) = r.free.pop() {
                    ours += usize::from(s.owner == me);
                    n += 1;
                }
            }
            back += ours;
            if n == 0 {
                give_up.nap();
            }
        }
        let dropped = cap
            .rings
            .iter()
            .zip(dropped0)
            .map(|(r, d0)| {
                let d = r.dropped.get();
                r.reported.store(d, Ordering::Relaxed);
                d.wrapping_sub(d0)
            })
            .sum();
        drop(claim);
        Ok(Outcome {
            pcapng: w.out.into_inner(),
            frames: w.frames,
            dropped_ring_full: dropped,
            dropped_size_limit: w.over,
            // Each slot of ours not back is one a worker took for a frame and still holds.
            dropped_late: late + total.saturating_sub(back) as u64,
        })
    }
}

/// How long [`Capture::run`] waits, once the capture stopped, for the workers to hand back the
/// slots they still hold (a worker's pass that read the flag before it was cleared).
const GIVE_UP: Duration = Duration::from_secs(1);

/// [`Capture::run`]'s clock: a deadline, and the 1 ms nap of a loop that found nothing to do.
#[cfg(not(feature = "loom"))]
mod clock {
    use std::time::{Duration, Instant};

    pub struct Deadline(Instant);

    impl Deadline {
        pub fn after(d: Duration) -> Deadline {
            Deadline(Instant::now() + d)
        }
        pub fn passed(&self) -> bool {
            Instant::now() >= self.0
        }
        pub fn nap(&mut self) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Loom has no clock, and a model must be deterministic and see every wait: a deadline `d`
/// away passes after `d` in milliseconds naps, each nap a yield to the other threads (in place
/// of the 1 ms sleep). The give-up ([`GIVE_UP`], 1000 naps) then never comes in a model
/// unless the model shortens it; a capture's own duration ends it after that many idle naps.
#[cfg(feature = "loom")]
mod clock {
    use std::time::Duration;

    pub struct Deadline(u128);

    impl Deadline {
        pub fn after(d: Duration) -> Deadline {
            Deadline(d.as_millis())
        }
        pub fn passed(&self) -> bool {
            self.0 == 0
        }
        pub fn nap(&mut self) {
            self.0 = self.0.saturating_sub(1);
            loom::thread::yield_now();
        }
    }
}

struct Writer {
    out: PcapNg<PcapBuf>,
    offset: Duration,
    max: usize,
    frames: [u64; 4],
    over: u64,
}

impl Writer {
    /// A full slot found by capture `me`: writes its frame when it was recorded for `me`. A
    /// frame recorded for an earlier capture (its pass read that capture's number, then the
    /// capture ended) is not written; it is counted here (returns 1) when it sits in one of
    /// our slots, which no one else counts. In a slot of that earlier capture it was counted
    /// there: a slot still held at that capture's end.
    fn take(&mut self, s: &Slot, me: u32) -> std::io::Result<u64> {
        if s.of == me {
            self.write(s)?;
            Ok(0)
        } else {
            Ok(u64::from(s.owner == me))
        }
    }

    fn write(&mut self, s: &Slot) -> std::io::Result<()> {
        // An enhanced packet block: 32 bytes, the data padded to 4, a 12-byte flags option.
        // Only this capture's frames come here, in its own slots (`take`): at most `snaplen`.
        let len = s.len as usize;
        let need = 48 + len.div_ceil(4) * 4;
        if self.out_len() + need > self.max {
            self.over += 1;
            return Ok(());
        }
        self.out.packet(
            s.point as u32,
            self.offset + Duration::from_nanos(s.ts),
            s.orig_len,
            s.point.dir(),
            &s.buf[..len],
        )?;
        self.frames[s.point as usize] += 1;
        Ok(())
    }

    fn out_len(&self) -> usize {
        self.out.get_ref().len()
    }
}

/// The pcapng file of a capture: chunks of [`CHUNK`] bytes (the last one partly filled), each
/// allocated once, at most the size the file can still use.
#[derive(Debug, Default)]
pub struct PcapBuf {
    chunks: Vec<Vec<u8>>,
    len: usize,
    /// The size the file is held to (its writer checks); chunks are not allocated beyond it.
    limit: usize,
    /// [`CHUNK`]; smaller in tests.
    chunk: usize,
}

impl PcapBuf {
    /// An empty file that will hold at most about `limit` bytes.
    pub fn new(limit: usize) -> PcapBuf {
        PcapBuf {
            chunks: Vec::new(),
            len: 0,
            limit,
            chunk: CHUNK,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated for the file.
    pub fn capacity(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }

    /// The file in one buffer (a copy: for tests and small files).
    pub fn to_vec(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    /// Length of the standard base64 text of the file.
    pub fn base64_len(&self) -> usize {
        self.len.div_ceil(3) * 4
    }

    /// Appends the file's standard base64 text to `out`, freeing each chunk once encoded.
    pub fn base64_into(self, out: &mut Vec<u8>) {
        out.reserve(self.base64_len());
        // Every chunk but the last is full, and its size a multiple of 3.
        for c in self.chunks {
            base64_into(out, &c);
        }
    }
}

impl std::io::Write for PcapBuf {
    fn write(&mut self, mut b: &[u8]) -> std::io::Result<usize> {
        let n = b.len();
        while !b.is_empty() {
            let room = self.chunks.last().map_or(0, |c| self.chunk - c.len());
            if room == 0 {
                // Allocated once: a full chunk, or what is left under the limit (the writer
                // stays under it; past it, the chunk grows as a Vec does).
                let left = self.limit.saturating_sub(self.len);
                let size = self.chunk.min(left.max(b.len()));
                self.chunks.push(Vec::with_capacity(size));
                continue;
            }
            let take = room.min(b.len());
            if let Some(c) = self.chunks.last_mut() {
                c.extend_from_slice(&b[..take]);
            }
            self.len += take;
            b = &b[take..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Appends the standard base64 text (with padding) of `data` to `out`.
fn base64_into(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let v = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(v >> (18 - 6 * i) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut s = Vec::new();
    base64_into(&mut s, data);
    // Only ASCII was written.
    String::from_utf8(s).unwrap_or_default()
}

/// Decodes [`base64_encode`]'s output; `None` on anything else.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| B64.iter().position(|&x| x == c).map(|v| v as u32);
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, q) in s.chunks(4).enumerate() {
        let last = i + 1 == s.len() / 4;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut v = 0u32;
        for &c in &q[..4 - pad] {
            v = v << 6 | val(c)?;
        }
        v <<= 6 * pad as u32;
        let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    #[test]
    fn base64_roundtrip() {
        for n in 0..10 {
            let d: Vec<u8> = (0..n as u8).map(|x| x.wrapping_mul(77)).collect();
            assert_eq!(base64_decode(&base64_encode(&d)).as_deref(), Some(&d[..]));
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm9vYg=="), Some(b"foob".to_vec()));
        for bad in ["Zm9", "Zm=v", "Z===", "Zm9v!A==", "Zg==Zg=="] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    /// The chunks' base64 texts join into the base64 of the whole file, wherever the writes
    /// and the chunk ends fall; no chunk is allocated past the limit.
    #[test]
    fn chunked_file_encodes_as_one() {
        use std::io::Write;
        for n in [0usize, 1, 5, 6, 7, 11, 12, 13, 40] {
            let data: Vec<u8> = (0..n as u8).map(|x| x.wrapping_mul(77)).collect();
            let mut b = PcapBuf::new(30);
            b.chunk = 6;
            for part in data.chunks(5) {
                b.write_all(part).unwrap();
            }
            assert_eq!(b.to_vec(), data);
            assert_eq!(b.len(), n);
            if n <= 30 {
                assert!(b.capacity() <= 30, "{n}: {}", b.capacity());
            }
            let mut out = b"x".to_vec();
            let len = b.base64_len();
            b.base64_into(&mut out);
            assert_eq!(out.len(), 1 + len);
            assert_eq!(&out[1..], base64_encode(&data).as_bytes(), "{n}");
        }
        assert!(CHUNK.is_multiple_of(3));
    }

    #[test]
    fn params_are_checked() {
        assert!(Params::new(2.0, None, None).is_ok());
        assert_eq!(Params::new(0.0, None, None).unwrap_err().0, "seconds");
        assert_eq!(Params::new(f64::NAN, None, None).unwrap_err().0, "seconds");
        assert_eq!(Params::new(1.0, Some(10), None).unwrap_err().0, "snaplen");
        assert_eq!(Params::new(1.0, None, Some(1)).unwrap_err().0, "max_bytes");
        assert!(Params::new(1.0, None, Some(MAX_MAX_BYTES)).is_ok());
        assert_eq!(
            Params::new(1.0, None, Some(MAX_MAX_BYTES + 1))
                .unwrap_err()
                .0,
            "max_bytes"
        );
    }

    /// Two "workers" record while a capture runs; every frame is either written or counted,
    /// frames are cut to the snap length, and the file reads back with the right interfaces.
    #[test]
    fn capture_writes_or_counts_every_frame() {
        let cap = Arc::new(Capture::new(2, "lan0", "wan0"));
        let claim = cap.claim().expect("free");
        assert!(cap.claim().is_none(), "one capture at a time");
        let p = Params::new(MAX_SECONDS, Some(128), Some(1 << 20)).unwrap();
        let run = std::thread::spawn(move || Capture::run(claim, &p).unwrap());
        while !cap.active() {
            std::thread::yield_now();
        }
        // More frames than slots: some find the ring full unless the drain keeps up.
        let workers: Vec<_> = (0..2)
            .map(|id| {
                let cap = cap.clone();
                std::thread::spawn(move || {
                    let frame = vec![id as u8; 300];
                    let r = cap.ring(id).unwrap();
                    let n = cap.running().unwrap();
                    for _ in 0..SLOTS {
                        r.record(n, Point::rx(id == 0), crate::now_ns(), &frame);
                        r.record(n, Point::tx(id != 0), crate::now_ns(), &frame[..100]);
                    }
                    2 * SLOTS as u64
                })
            })
            .collect();
        let seen: u64 = workers.into_iter().map(|h| h.join().unwrap()).sum();
        cap.cancel();
        let out = run.join().unwrap();
        let written: u64 = out.frames.iter().sum();
        assert!(written > 0);
        assert_eq!(
            written + out.dropped_ring_full + out.dropped_size_limit,
            seen,
            "{out:?}"
        );
        assert!(cap.claim().is_some(), "released");
        let t = crate::pcap::read_trace(&out.pcapng.to_vec()[..]).unwrap();
        assert_eq!(t.records.len() as u64, written);
        assert!(
            t.records
                .iter()
                .all(|r| r.data.len() == 128 || r.data.len() == 100)
        );
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let first = t.records[0].ts;
        assert!(
            first <= now && now - first < Duration::from_secs(60),
            "{first:?}"
        );
        assert!(out.pcapng.len() <= 1 << 20);
        assert!(
            out.pcapng.capacity() <= 1 << 20,
            "allocated at most max_bytes"
        );
        // Worker 0 records plain rx and cipher tx alternately: equal counts, but for what a
        // full ring or the size limit cost (which of the two a drop hits depends on timing).
        let (p, c) = (
            out.frames[Point::PlainRx as usize],
            out.frames[Point::CipherTx as usize],
        );
        assert!(
            p.abs_diff(c) <= out.dropped_ring_full + out.dropped_size_limit,
            "{out:?}"
        );
    }

    /// Starts a capture of MAX_SECONDS on its own thread; returns once it runs.
    fn start(cap: &Arc<Capture>, claim: Claim) -> std::thread::JoinHandle<(Outcome, Duration)> {
        let p = Params::new(MAX_SECONDS, None, None).unwrap();
        let t0 = Instant::now();
        let h = std::thread::spawn(move || (Capture::run(claim, &p).unwrap(), t0.elapsed()));
        while !cap.active() {
            std::thread::yield_now();
        }
        h
    }

    /// Ends well before its MAX_SECONDS (a generous margin: the machine may be loaded).
    fn ends_early(h: std::thread::JoinHandle<(Outcome, Duration)>) -> Outcome {
        let (out, took) = h.join().unwrap();
        assert!(
            took < Duration::from_secs_f64(MAX_SECONDS / 3.0),
            "{took:?}"
        );
        out
    }

    /// cancel() ends a running capture early, with its file, and frees the capture: a second
    /// one starts (and a cancel from before a claim does not end the next capture).
    #[test]
    fn cancel_ends_a_capture_and_frees_it() {
        let cap = Arc::new(Capture::new(1, "lan0", "wan0"));
        let h = start(&cap, cap.claim().unwrap());
        let n = cap.running().unwrap();
        cap.ring(0)
            .unwrap()
            .record(n, Point::PlainRx, crate::now_ns(), &[7u8; 100]);
        cap.cancel();
        let out = ends_early(h);
        assert_eq!(out.frames.iter().sum::<u64>(), 1, "{out:?}");
        assert!(!cap.active());
        cap.cancel();
        let claim = cap.claim().expect("freed");
        assert!(!claim.ended(), "an earlier cancel is not for this capture");
        let h = start(&cap, claim);
        assert!(cap.claim().is_none());
        cap.cancel();
        ends_early(h);
        assert!(cap.claim().is_some());
    }

    /// The daemon's stop flag ends a running capture and every later one at once.
    #[test]
    fn the_stop_flag_ends_a_capture() {
        let stop = Arc::new(AtomicBool::new(false));
        let cap = Arc::new(Capture::new(2, "lan0", "wan0").stops_with(stop.clone()));
        let h = start(&cap, cap.claim().unwrap());
        stop.store(true, Ordering::Release);
        ends_early(h);
        let claim = cap.claim().expect("freed");
        assert!(claim.ended(), "a stopped daemon captures nothing more");
    }

    /// A claim's own flag (its client hung up) ends that capture.
    #[test]
    fn a_hangup_ends_its_capture() {
        let gone = Arc::new(AtomicBool::new(false));
        let cap = Arc::new(Capture::new(1, "lan0", "wan0"));
        let h = start(&cap, cap.claim().unwrap().ends_when(gone.clone()));
        gone.store(true, Ordering::Release);
        ends_early(h);
        assert!(cap.claim().is_some());
    }
}

/// Loom models of the capture protocol (`cargo test --release --features loom --lib loom_`).
///
/// Covered: the real [`Capture::claim`], [`Capture::run`] (its flags, its drain, its
/// collection of the slots and the give-up, with the model clock of `clock`), [`Claim`]'s
/// drop and [`Ring::record`], against a worker that reads the flag once per pass as
/// `worker.rs` does. The rings are `crate::sync::ArrayQueue`, a loom mutex around a deque in
/// place of crossbeam's queue (whose internals are not modelled: its operations are taken as
/// linearizable). Each frame carries its own number, so the file shows which frames it holds.
/// Not covered: crossbeam's queue itself (the stand-in's mutex orders every push and pop
/// with every earlier one, more than crossbeam's per-slot synchronisation, so interleavings
/// where only that weaker ordering lets a worker see a stale flag are not explored); the stop and hang-up flags are `std` atomics (set
/// by the model before the capture or between loom steps). Frames late for their capture
/// (a slot held past the give-up, or a pass that read an earlier capture's number) are never
/// written into a later capture's file and are counted once, as `dropped_late`
/// (`loom_capture_back_to_back` found the second case uncounted before capture numbers).
#[cfg(all(test, feature = "loom"))]
mod loom_models {
    use super::*;
    use std::sync::atomic::AtomicBool as StdBool;

    const SNAP: u32 = 8;

    use crate::sync::loom_model as model;

    /// A capture of one worker's ring with `slots` slots; `give_up_naps` naps of the capture
    /// thread before it gives up on the slots a worker still holds.
    fn capture(slots: usize, give_up_naps: u64) -> Capture {
        let mut c = Capture::sized(1, slots, "lan0", "wan0");
        c.give_up = Duration::from_millis(give_up_naps);
        c
    }

    fn params(snaplen: u32, ms: u64) -> Params {
        Params {
            duration: Duration::from_millis(ms),
            snaplen,
            max_bytes: 1 << 16,
        }
    }

    /// Frame `n` (8 bytes).
    fn frame(n: u8) -> [u8; 8] {
        [n; 8]
    }

    /// Worker passes (`worker.rs`): each reads the flag once, Relaxed, and if a capture runs
    /// records its frames (numbered from `first`). Returns the frames recorded.
    fn passes(cap: &Capture, first: u8, frames_per_pass: &[u8]) -> Vec<u8> {
        numbered_passes(cap, first, frames_per_pass)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    /// [`passes`], each frame with the capture number its pass read.
    fn numbered_passes(cap: &Capture, first: u8, frames_per_pass: &[u8]) -> Vec<(u8, u32)> {
        let r = cap.ring(0).unwrap();
        let mut n = first;
        let mut recorded = Vec::new();
        for &k in frames_per_pass {
            if let Some(c) = cap.running() {
                for _ in 0..k {
                    r.record(c, Point::PlainRx, 1, &frame(n));
                    recorded.push((n, c));
                    n += 1;
                }
            }
        }
        recorded
    }

    /// The frames in a capture's file (by number), each checked against the snap length.
    fn written(o: &Outcome, snaplen: u32) -> Vec<u8> {
        let t = crate::pcap::read_trace(&o.pcapng.to_vec()[..]).unwrap();
        assert_eq!(t.records.len() as u64, o.frames.iter().sum::<u64>());
        t.records
            .iter()
            .map(|r| {
                assert!(
                    r.data.len() <= snaplen as usize,
                    "a {}-byte frame in a capture of snap length {snaplen}",
                    r.data.len()
                );
                // Slots move by value and loom does not track plain memory: this holds by
                // construction here (a frame's bytes are all its number); kept as a guard.
                assert!(r.data.iter().all(|&b| b == r.data[0]), "torn frame");
                r.data[0]
            })
            .collect()
    }

    /// Every slot is back and freed: both rings are empty.
    fn rings_empty(cap: &Capture) {
        let r = cap.ring(0).unwrap();
        assert_eq!(
            (r.free.len(), r.full.len()),
            (0, 0),
            "a slot outlived its capture"
        );
    }

    /// A worker records three frames into two slots while the capture runs; the capture is
    /// cancelled after them. Every frame is written once or counted in `dropped_ring_full`;
    /// a second claim is refused while it runs and granted after; no slot outlives it.
    #[test]
    fn loom_capture_writes_or_counts_every_frame() {
        model(3, || {
            let cap = std::sync::Arc::new(capture(2, 1000));
            let claim = cap.claim().unwrap();
            let c = cap.clone();
            let run = loom::thread::spawn(move || Capture::run(claim, &params(SNAP, 3_600_000)));
            let c2 = cap.clone();
            let worker = loom::thread::spawn(move || {
                while !c2.active() {
                    loom::thread::yield_now();
                }
                passes(&c2, 0, &[3])
            });
            assert!(cap.claim().is_none(), "a second capture while one runs");
            let recorded = worker.join().unwrap();
            c.cancel();
            let out = run.join().unwrap().unwrap();
            let mut got = written(&out, SNAP);
            assert_eq!(
                got.len() as u64 + out.dropped_ring_full,
                recorded.len() as u64,
                "{out:?}"
            );
            got.sort_unstable();
            got.dedup();
            assert_eq!(
                got.len() as u64,
                out.frames.iter().sum::<u64>(),
                "a frame written twice"
            );
            assert!(!cap.active());
            rings_empty(&cap);
            assert!(cap.claim().is_some(), "released");
        });
    }

    /// How a capture ends.
    #[derive(Clone, Copy)]
    enum End {
        Cancel,
        Stop,
        Hangup,
        Duration,
    }

    /// A capture ended by `end` while a worker's passes (1 frame, then 2) race the end: once
    /// `run` returns, no worker holds a slot (nothing comes back later, the rings stay empty)
    /// and every frame recorded is written once or counted as dropped (in the outcome or, for
    /// a pass that read the flag before it was cleared and recorded after `run` returned, on
    /// the ring's counter); the claim is released.
    fn ends_with_workers_racing(end: End) {
        model(3, move || {
            let stop = std::sync::Arc::new(StdBool::new(false));
            let gone = std::sync::Arc::new(StdBool::new(false));
            let mut c = capture(2, 1000);
            if matches!(end, End::Stop) {
                c = c.stops_with(stop.clone());
            }
            let cap = std::sync::Arc::new(c);
            let claim = cap.claim().unwrap().ends_when(gone.clone());
            let ms = if matches!(end, End::Duration) {
                1
            } else {
                3_600_000
            };
            let run = loom::thread::spawn(move || Capture::run(claim, &params(SNAP, ms)));
            let c2 = cap.clone();
            let worker = loom::thread::spawn(move || passes(&c2, 0, &[1, 2]));
            match end {
                End::Cancel => cap.cancel(),
                End::Stop => stop.store(true, std::sync::atomic::Ordering::Release),
                End::Hangup => gone.store(true, std::sync::atomic::Ordering::Release),
                End::Duration => {}
            }
            let out = run.join().unwrap().unwrap();
            assert!(!cap.active());
            let recorded = worker.join().unwrap();
            let got = written(&out, SNAP);
            let dropped = cap.ring(0).unwrap().dropped.get();
            assert!(out.dropped_ring_full <= dropped);
            assert_eq!(
                got.len() as u64 + dropped,
                recorded.len() as u64,
                "{out:?}, {dropped} dropped in all"
            );
            for n in &got {
                assert!(recorded.contains(n));
            }
            rings_empty(&cap);
            assert!(cap.claim().is_some(), "released");
        });
    }

    #[test]
    fn loom_capture_cancel_races_the_worker() {
        ends_with_workers_racing(End::Cancel);
    }

    #[test]
    fn loom_capture_stop_races_the_worker() {
        ends_with_workers_racing(End::Stop);
    }

    #[test]
    fn loom_capture_hangup_races_the_worker() {
        ends_with_workers_racing(End::Hangup);
    }

    #[test]
    fn loom_capture_duration_races_the_worker() {
        ends_with_workers_racing(End::Duration);
    }

    /// Two captures, one after the other, on one slot (the second with half the snap length),
    /// while a worker's two passes (one frame each) race them; the capture thread gives up on
    /// a slot a worker still holds after `give_up_naps` naps. No frame is written twice or
    /// past its capture's snap length, each file holds only frames recorded for its own
    /// capture (never a late frame of the one before), a frame is written, counted dropped or
    /// counted late, and none is left in a free ring.
    /// `second_naps`: 0, the second capture ends as soon as it runs too; else it runs its
    /// drain loop for that many idle naps.
    fn two_captures(give_up_naps: u64, second_naps: u64) {
        model(4, move || {
            let cap = std::sync::Arc::new(capture(1, give_up_naps));
            let gone = std::sync::Arc::new(StdBool::new(true));
            let stays = std::sync::Arc::new(StdBool::new(second_naps == 0));
            let c = cap.clone();
            let g = gone.clone();
            let run = loom::thread::spawn(move || {
                // The first capture ends as soon as it runs.
                let first = Capture::run(c.claim().unwrap().ends_when(g), &params(SNAP, 3_600_000));
                let second = Capture::run(
                    c.claim().unwrap().ends_when(stays),
                    &params(
                        SNAP / 2,
                        if second_naps == 0 {
                            3_600_000
                        } else {
                            second_naps
                        },
                    ),
                );
                (first.unwrap(), second.unwrap())
            });
            let recorded = numbered_passes(&cap, 0, &[1, 1]);
            let (first, second) = run.join().unwrap();
            // Capture numbers start at 1: the first capture is 1, the second 2.
            let (in_first, in_second) = (written(&first, SNAP), written(&second, SNAP / 2));
            for (file, number) in [(&in_first, 1), (&in_second, 2)] {
                for n in file {
                    assert!(
                        recorded.contains(&(*n, number)),
                        "frame {n} in capture {number}'s file: recorded {recorded:?}"
                    );
                }
            }
            let mut got = [in_first, in_second].concat();
            let n = got.len();
            got.sort_unstable();
            got.dedup();
            assert_eq!(got.len(), n, "a frame written twice");
            let r = cap.ring(0).unwrap();
            // Dropped after the second capture's last read: a later capture would report it.
            let unreported = r.dropped.get() - r.reported.load(Ordering::Relaxed);
            let accounted = n as u64
                + first.dropped_ring_full
                + second.dropped_ring_full
                + first.dropped_late
                + second.dropped_late
                + unreported;
            // Every frame is written by its own capture or counted once in an answer: dropped
            // (ring full) or late (its slot still held at its capture's give-up, or handed
            // over after its capture ended: in the next capture's slot or dropped in between).
            assert_eq!(accounted, recorded.len() as u64, "{first:?} {second:?}");
            if give_up_naps > 1 {
                // Without a give-up `run` waits for every slot: none is left in a ring.
                assert_eq!(r.full.len(), 0);
            }
            assert_eq!(r.free.len(), 0);
        });
    }

    /// Two captures back to back (the first and second end as soon as they run) while a
    /// worker's two passes race them; no give-up: every frame is accounted for.
    #[test]
    fn loom_capture_back_to_back() {
        two_captures(1000, 0);
    }

    /// The same, the second capture draining for two naps while the worker records.
    #[test]
    fn loom_capture_back_to_back_draining() {
        two_captures(1000, 2);
    }

    /// The same with a give-up after one nap of the capture thread (1 s in the daemon).
    #[test]
    fn loom_capture_give_up_then_next_capture() {
        two_captures(1, 0);
    }
}
