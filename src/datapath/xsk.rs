//! AF_XDP sockets and UMEM frames (xdpilone): the only datapath module with `unsafe`.
//!
//! One [`XskPair`] per worker: a UMEM of `frames` chunks shared by the worker's plain-side and
//! cipher-side sockets, so a frame received on one side is transmitted on the other without a
//! copy. Every chunk is at any time in exactly one place: the free list, a fill ring, an rx
//! ring, the worker's batch, a tx ring or a completion ring. The worker owns the chunks it holds;
//! [`XskFrame`] hands the pipeline a `&mut [u8]` over one chunk.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::num::NonZeroU32;
use std::ptr::NonNull;

use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig};

use super::pipeline::{Action, FrameMut};

/// Chunk size: room for a 1500-byte frame, 256 bytes of XDP headroom and the ESP overhead
/// (FACTS.md: 2048-byte frames are too tight once encapsulated).
pub const FRAME_SIZE: u32 = 4096;
pub const RING_SIZE: u32 = 2048;

/// How sockets are bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copy {
    /// Zero-copy, falling back to copy mode when the driver refuses (veth always does).
    Auto,
    /// Copy mode.
    Force,
}

#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("{op} on {iface} queue {queue}: {source}")]
    Socket {
        op: &'static str,
        iface: String,
        queue: u32,
        source: io::Error,
    },
    #[error("UMEM of {frames} frames: {source}")]
    Umem { frames: u32, source: io::Error },
}

fn errno(e: xdpilone::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.get_raw())
}

/// The mmap'd memory behind a UMEM.
///
/// 2 MB aligned and marked for transparent huge pages (`MADV_HUGEPAGE`), like DPDK's and
/// VPP's hugepage buffer pools: a worker cycles through all of its 4096 frames (the fill ring
/// hands them to the kernel in order), one 4 KB page each, more than the TLB covers, so with
/// small pages the first read of nearly every received frame also walked the page tables (a
/// two-level walk in a VM). 16 MB is then 8 TLB entries. Huge pages are advisory: where the
/// kernel has none to give (THP off, memory fragmented) the area is made of small pages and
/// works the same.
struct Area {
    ptr: NonNull<u8>,
    /// The UMEM's length: what the kernel is given and what descriptors are checked against.
    len: usize,
    /// The mapping's length (`len` rounded up to whole huge pages): what `drop` unmaps.
    map_len: usize,
}

impl Area {
    fn new(len: usize) -> io::Result<Area> {
        let (ptr, map_len) = crate::sys::map_huge(len, false)?;
        // Fault the area in now (what MAP_POPULATE did), not on the first packets.
        for page in (0..len).step_by(4096) {
            // SAFETY: `page` < `len` <= `map_len`: inside the writable mapping.
            unsafe { ptr.as_ptr().add(page).write_volatile(0) };
        }
        Ok(Area { ptr, len, map_len })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`map_len` are exactly the mapping made in `new`; the sockets using it
        // were dropped before (field order in `XskPair`).
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.map_len) };
    }
}

/// One bound socket: its fill/completion rings and its rx/tx rings.
pub struct Port {
    pub iface: String,
    pub queue: u32,
    pub zero_copy: bool,
    device: DeviceQueue,
    rx: RingRx,
    tx: RingTx,
}

impl Port {
    /// The socket's file descriptor, for the XSKMAP.
    pub fn fd(&self) -> i32 {
        self.rx.as_raw_fd()
    }
}

/// A frame in the UMEM, handed to the pipeline.
pub struct XskFrame {
    chunk: *mut u8,
    /// Offset of the chunk in the UMEM (the kernel's address space).
    chunk_addr: u64,
    off: usize,
    len: usize,
}

impl XskFrame {
    /// The descriptor that sends this frame.
    #[inline]
    pub fn desc(&self) -> XdpDesc {
        XdpDesc {
            addr: self.chunk_addr + self.off as u64,
            len: self.len as u32,
            options: 0,
        }
    }
    #[inline]
    pub fn chunk_addr(&self) -> u64 {
        self.chunk_addr
    }
}

impl FrameMut for XskFrame {
    #[inline]
    fn buf_mut(&mut self) -> &mut [u8] {
        // SAFETY: `chunk` points at a FRAME_SIZE chunk inside the live UMEM mapping (built by
        // `XskPair::frame` from a descriptor the kernel handed back). Between rx and tx the
        // chunk belongs to the worker alone: the kernel does not touch a chunk that is in no
        // ring, and each chunk is in one `XskFrame` at a time.
        unsafe { std::slice::from_raw_parts_mut(self.chunk, FRAME_SIZE as usize) }
    }
    #[inline]
    fn offset(&self) -> usize {
        self.off
    }
    #[inline]
    fn len(&self) -> usize {
        self.len
    }
    #[inline]
    fn set(&mut self, offset: usize, len: usize) {
        self.off = offset;
        self.len = len;
    }
}

/// A worker's UMEM and its two sockets.
pub struct XskPair {
    // Field order matters: sockets drop before the UMEM and the UMEM before its memory.
    pub plain: Port,
    pub cipher: Port,
    umem: Umem,
    area: Area,
    free: Vec<u64>,
    /// Descriptors refused by [`rx_frame`] / [`completed_chunk`], not yet taken.
    bad_descs: u64,
    /// Frames queued on either tx ring whose completion has not been reaped yet.
    outstanding: u64,
}

/// Chunk address and offset in the chunk of the frame an rx descriptor describes, if the frame
/// lies inside one chunk of a UMEM of `umem_len` bytes (a whole number of chunks). The kernel
/// only hands back addresses we gave it; this is defence in depth before the address becomes a
/// pointer.
#[inline]
fn rx_frame(addr: u64, len: u32, umem_len: u64) -> Option<(u64, usize)> {
    let chunk = addr & !(FRAME_SIZE as u64 - 1);
    let off = addr - chunk;
    (chunk < umem_len && off + u64::from(len) <= u64::from(FRAME_SIZE))
        .then_some((chunk, off as usize))
}

/// The frame an rx descriptor describes (see [`XskPair::frame`]); a free function so that
/// [`XskPair::receive`] can use it while it borrows an rx ring.
#[inline]
fn frame_in(
    area: &Area,
    free: &mut Vec<u64>,
    bad_descs: &mut u64,
    desc: &XdpDesc,
) -> Option<XskFrame> {
    let Some((chunk_addr, off)) = rx_frame(desc.addr, desc.len, area.len as u64) else {
        *bad_descs += 1;
        let chunk = desc.addr & !(FRAME_SIZE as u64 - 1);
        if chunk < area.len as u64 {
            free.push(chunk);
        }
        return None;
    };
    // SAFETY: `rx_frame` checked `chunk_addr < area.len`, and the UMEM is a whole number of
    // FRAME_SIZE chunks, so the chunk [chunk_addr, chunk_addr + FRAME_SIZE) lies inside the
    // mapping and the addition stays in bounds.
    let chunk = unsafe { area.ptr.as_ptr().add(chunk_addr as usize) };
    Some(XskFrame {
        chunk,
        chunk_addr,
        off,
        len: desc.len as usize,
    })
}

/// The chunk of a completed transmission's address, if it lies inside the UMEM.
#[inline]
fn completed_chunk(addr: u64, umem_len: u64) -> Option<u64> {
    let chunk = addr & !(FRAME_SIZE as u64 - 1);
    (chunk < umem_len).then_some(chunk)
}

impl XskPair {
    /// Creates the UMEM and binds one socket on `(plain, plain_q)` and one on
    /// `(cipher, cipher_q)`. `Copy::Auto` tries zero-copy first and, when the driver refuses,
    /// starts over in copy mode.
    pub fn open(
        plain: &str,
        plain_q: u32,
        cipher: &str,
        cipher_q: u32,
        frames: u32,
        copy: Copy,
    ) -> Result<XskPair, XskError> {
        let modes: &[u16] = match copy {
            Copy::Auto => &[SocketConfig::XDP_BIND_ZEROCOPY, SocketConfig::XDP_BIND_COPY],
            Copy::Force => &[SocketConfig::XDP_BIND_COPY],
        };
        let mut last = None;
        for &mode in modes {
            match Self::open_mode(plain, plain_q, cipher, cipher_q, frames, mode) {
                Ok(p) => return Ok(p),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one mode"))
    }

    fn open_mode(
        plain: &str,
        plain_q: u32,
        cipher: &str,
        cipher_q: u32,
        frames: u32,
        mode: u16,
    ) -> Result<XskPair, XskError> {
        let area = Area::new(frames as usize * FRAME_SIZE as usize)
            .map_err(|source| XskError::Umem { frames, source })?;
        let cfg = UmemConfig {
            fill_size: RING_SIZE,
            complete_size: RING_SIZE,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr, area.len);
        // SAFETY: `area` is a page-aligned mapping of `frames * FRAME_SIZE` bytes that lives as
        // long as the UMEM (it is dropped after it, see the field order).
        let umem = unsafe { Umem::new(cfg, slice) }.map_err(|e| XskError::Umem {
            frames,
            source: errno(e),
        })?;
        let plain_port = bind(&umem, plain, plain_q, true, mode)?;
        let cipher_port = bind(&umem, cipher, cipher_q, false, mode)?;
        let free = (0..frames as u64).map(|i| i * FRAME_SIZE as u64).collect();
        Ok(XskPair {
            plain: plain_port,
            cipher: cipher_port,
            umem,
            area,
            free,
            bad_descs: 0,
            outstanding: 0,
        })
    }

    /// Duplicates of both sockets' descriptors (plain, cipher), for the XSKMAP: they stay
    /// valid whatever the worker does meanwhile.
    pub fn dup_fds(&self) -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), XskError> {
        Ok((self.plain.dup_fd()?, self.cipher.dup_fd()?))
    }

    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// Descriptors the kernel handed back that lie outside the UMEM (or run past their chunk)
    /// since the last call; they were dropped.
    #[inline]
    pub fn take_bad_descs(&mut self) -> u64 {
        std::mem::take(&mut self.bad_descs)
    }

    /// The frame an rx descriptor describes, or `None` (counted) when it is not inside one
    /// chunk of the UMEM; a chunk of ours with a bad length goes back to the free list.
    #[inline]
    fn frame(&mut self, desc: &XdpDesc) -> Option<XskFrame> {
        frame_in(&self.area, &mut self.free, &mut self.bad_descs, desc)
    }

    /// Returns completed transmissions of both sockets to the free list (addresses outside
    /// the UMEM are counted and dropped). Touches nothing when no transmission is outstanding.
    #[inline]
    pub fn reap(&mut self) {
        if self.outstanding == 0 {
            return;
        }
        let umem = self.area.len as u64;
        for dev in [&mut self.plain.device, &mut self.cipher.device] {
            let mut c = dev.complete(RING_SIZE);
            while let Some(addr) = c.read() {
                self.outstanding = self.outstanding.saturating_sub(1);
                match completed_chunk(addr, umem) {
                    Some(chunk) => self.free.push(chunk),
                    None => self.bad_descs += 1,
                }
            }
            c.release();
        }
    }

    /// Frames handed to the kernel for transmission whose completion was not reaped yet.
    #[inline]
    pub fn tx_outstanding(&self) -> u64 {
        self.outstanding
    }

    /// Tops up both fill rings from the free list, keeping `reserve` frames back.
    #[inline]
    pub fn refill(&mut self, reserve: usize) {
        for plain in [true, false] {
            let dev = if plain {
                &mut self.plain.device
            } else {
                &mut self.cipher.device
            };
            let mut avail = self.free.len().saturating_sub(reserve) as u32;
            if avail == 0 {
                return;
            }
            // As on tx: a reservation can come back short while the ring has room (xdpilone's
            // cached count), so reserve again until the ring is full or nothing is left.
            while avail > 0 {
                let mut w = dev.fill(avail.min(RING_SIZE));
                let n = w.capacity();
                if n == 0 {
                    break;
                }
                let mut put = 0;
                for _ in 0..n {
                    match self.free.pop() {
                        Some(a) => {
                            w.insert_once(a);
                            put += 1;
                        }
                        None => break,
                    }
                }
                w.commit();
                drop(w);
                avail = avail.saturating_sub(put);
                if put < n {
                    break;
                }
            }
            if dev.needs_wakeup() {
                dev.wake();
            }
        }
    }

    /// Receives up to `max` frames from one side into `out` (cleared first), never more than
    /// `out` has room for (so it never allocates). An empty ring costs one load of its
    /// producer index: nothing is zeroed or written.
    #[inline]
    pub fn receive(&mut self, plain: bool, max: u32, out: &mut Vec<XskFrame>) {
        out.clear();
        let max = max.min(out.capacity().min(u32::MAX as usize) as u32);
        let XskPair {
            plain: p,
            cipher: c,
            area,
            free,
            bad_descs,
            ..
        } = self;
        let rx = if plain { &mut p.rx } else { &mut c.rx };
        if rx.available() == 0 {
            return;
        }
        let mut r = rx.receive(max);
        while let Some(d) = r.read() {
            if let Some(f) = frame_in(area, free, bad_descs, &d) {
                out.push(f);
            }
        }
        r.release();
    }

    /// Queues every frame whose action is `want` for transmission on one side, committing the
    /// ring once per reservation rather than once per frame. Frames that do not fit are freed;
    /// returns how many.
    #[inline]
    pub fn send_batch(
        &mut self,
        plain: bool,
        frames: &[XskFrame],
        acts: &[Action],
        want: Action,
    ) -> u64 {
        let tx = if plain {
            &mut self.plain.tx
        } else {
            &mut self.cipher.tx
        };
        let mut pending = frames
            .iter()
            .zip(acts)
            .filter(|(_, a)| **a == want)
            .map(|(f, _)| f)
            .peekable();
        let mut left = acts.iter().filter(|a| **a == want).count() as u32;
        // xdpilone re-reads the kernel's consumer index only when its cached free count is
        // below one, so a reservation can come back short while the ring has room: reserve
        // again until everything is queued or the ring is really full.
        while left > 0 {
            let mut w = tx.transmit(left);
            let cap = w.capacity();
            if cap == 0 {
                break;
            }
            for _ in 0..cap {
                let Some(f) = pending.next() else { break };
                w.insert_once(f.desc());
                left -= 1;
                self.outstanding += 1;
            }
            w.commit();
        }
        let mut dropped = 0;
        for f in pending {
            self.free.push(f.chunk_addr);
            dropped += 1;
        }
        dropped
    }

    /// An empty frame from the free list (its packet at offset 0, length 0).
    #[inline]
    pub fn alloc(&mut self) -> Option<XskFrame> {
        let addr = self.free.pop()?;
        self.frame(&XdpDesc {
            addr,
            len: 0,
            options: 0,
        })
    }

    /// Gives a frame back (dropped or punted).
    #[inline]
    pub fn recycle(&mut self, frame: &XskFrame) {
        self.free.push(frame.chunk_addr);
    }

    /// Kicks the kernel to transmit, only while the tx ring holds frames and its need-wakeup
    /// flag asks for a kick (always in copy mode, where each `sendto` moves at most 32 frames;
    /// rarely in zero-copy mode).
    #[inline]
    pub fn flush(&mut self, plain: bool) {
        let tx = if plain {
            &mut self.plain.tx
        } else {
            &mut self.cipher.tx
        };
        let mut tries = 0;
        while tries < 8 && tx.pending() > 0 && tx.needs_wakeup() {
            tx.wake();
            tries += 1;
        }
    }

    /// Sets SO_PREFER_BUSY_POLL, SO_BUSY_POLL (`usec`) and SO_BUSY_POLL_BUDGET (`budget`) on
    /// both sockets (`dataplane.idle = "busy_poll"`). The kernel then runs a queue's NAPI
    /// processing in [`busy_poll`](Self::busy_poll) calls instead of in softirq.
    pub fn set_busy_poll(&self, usec: u32, budget: u32) -> Result<(), XskError> {
        for port in [&self.plain, &self.cipher] {
            let opts = [
                (
                    "setsockopt SO_PREFER_BUSY_POLL (dataplane.idle = \"busy_poll\" needs Linux 5.11)",
                    crate::sys::SO_PREFER_BUSY_POLL,
                    1,
                ),
                (
                    "setsockopt SO_BUSY_POLL (dataplane.idle = \"busy_poll\")",
                    libc::SO_BUSY_POLL,
                    usec.min(i32::MAX as u32) as i32,
                ),
                (
                    "setsockopt SO_BUSY_POLL_BUDGET (dataplane.idle = \"busy_poll\" needs Linux 5.11)",
                    crate::sys::SO_BUSY_POLL_BUDGET,
                    budget.min(i32::MAX as u32) as i32,
                ),
            ];
            for (op, opt, v) in opts {
                crate::sys::set_socket_option(port.borrowed_fd(), libc::SOL_SOCKET, opt, v)
                    .map_err(|source| XskError::Socket {
                        op,
                        iface: port.iface.clone(),
                        queue: port.queue,
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// The NAPI id that delivered one side's last frame (SO_INCOMING_NAPI_ID), 0 when it has
    /// none that busy polling can reach (then `busy_poll` only costs syscalls).
    pub fn napi_id(&self, plain: bool) -> u32 {
        let port = if plain { &self.plain } else { &self.cipher };
        crate::sys::socket_option(
            port.borrowed_fd(),
            libc::SOL_SOCKET,
            crate::sys::SO_INCOMING_NAPI_ID,
        )
        .map_or(0, |v| v as u32)
    }

    /// One busy-poll round on both sockets: `recvfrom(MSG_DONTWAIT)` with no buffer, which on
    /// a socket with SO_BUSY_POLL set polls its queue's NAPI once (and in zero-copy mode kicks
    /// rx if the fill ring asks for it). Errors (EAGAIN and the like) are of no interest.
    #[inline]
    pub fn busy_poll(&self) {
        for fd in [self.plain.fd(), self.cipher.fd()] {
            // SAFETY: `fd` is this pair's open socket; a null buffer of length 0 and null
            // address pointers are valid arguments to recvfrom.
            unsafe {
                libc::recvfrom(
                    fd,
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
    }

    /// Waits up to `timeout_ms` for either rx ring to have frames (idle back-off).
    pub fn wait(&self, timeout_ms: i32) {
        let mut fds = [
            libc::pollfd {
                fd: self.plain.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.cipher.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    }

    /// True when either rx ring has frames waiting.
    #[inline]
    pub fn rx_ready(&self) -> bool {
        self.plain.rx.available() > 0 || self.cipher.rx.available() > 0
    }

    /// Kernel drop statistics of a socket (rx dropped, rx ring full, fill ring empty).
    pub fn kernel_stats(&self, plain: bool) -> (u64, u64, u64) {
        let dev = if plain {
            &self.plain.device
        } else {
            &self.cipher.device
        };
        match dev.statistics_v2() {
            Ok(s) => (s.rx_dropped, s.rx_ring_full, s.rx_fill_ring_empty_descs),
            Err(_) => (0, 0, 0),
        }
    }

    #[allow(dead_code)]
    fn umem(&self) -> &Umem {
        &self.umem
    }
}

fn bind(umem: &Umem, iface: &str, queue: u32, first: bool, mode: u16) -> Result<Port, XskError> {
    let err = |op: &'static str| {
        move |e: xdpilone::Errno| XskError::Socket {
            op,
            iface: iface.into(),
            queue,
            source: errno(e),
        }
    };
    let name = CString::new(iface).map_err(|_| XskError::Socket {
        op: "interface name",
        iface: iface.into(),
        queue,
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let mut info = IfInfo::invalid();
    info.from_name(&name).map_err(err("if_nametoindex"))?;
    info.set_queue(queue);
    // The first socket is the UMEM's own; the second shares the UMEM (XDP_SHARED_UMEM) with
    // its own fill and completion rings.
    let sock = if first {
        Socket::with_shared(&info, umem)
    } else {
        Socket::new(&info)
    }
    .map_err(err("socket"))?;
    let device = umem.fq_cq(&sock).map_err(err("fill/completion rings"))?;
    // The UMEM's own socket chooses copy/zero-copy and need-wakeup; a socket sharing the
    // UMEM must bind with no flags but XDP_SHARED_UMEM (added by xdpilone) and inherits them.
    let cfg = SocketConfig {
        rx_size: NonZeroU32::new(RING_SIZE),
        tx_size: NonZeroU32::new(RING_SIZE),
        bind_flags: if first {
            mode | SocketConfig::XDP_BIND_NEED_WAKEUP
        } else {
            0
        },
    };
    let user = umem.rx_tx(&sock, &cfg).map_err(err("rx/tx rings"))?;
    let rx = user.map_rx().map_err(err("mmap rx ring"))?;
    let tx = user.map_tx().map_err(err("mmap tx ring"))?;
    umem.bind(&user).map_err(err("bind"))?;
    Ok(Port {
        iface: iface.into(),
        queue,
        zero_copy: mode == SocketConfig::XDP_BIND_ZEROCOPY,
        device,
        rx,
        tx,
    })
}

impl Port {
    /// A duplicate of the socket's descriptor (it refers to the same socket).
    pub fn dup_fd(&self) -> Result<std::os::fd::OwnedFd, XskError> {
        self.borrowed_fd()
            .try_clone_to_owned()
            .map_err(|source| XskError::Socket {
                op: "dup",
                iface: self.iface.clone(),
                queue: self.queue,
                source,
            })
    }

    /// The socket as a borrowed descriptor (for the XSKMAP).
    pub fn borrowed_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by this port's rings and stays open while `self`
        // is borrowed.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The UMEM area is 2 MB aligned in a mapping of whole huge pages (so that transparent huge
    /// pages can back it), whatever length is asked; the UMEM is the length asked, all usable.
    #[test]
    fn umem_area_is_huge_page_aligned() {
        for frames in [1usize, 512, 4096, 4097] {
            let a = Area::new(frames * FRAME_SIZE as usize).unwrap();
            assert!(
                (a.ptr.as_ptr() as usize).is_multiple_of(crate::sys::HUGE),
                "{frames} frames"
            );
            assert_eq!(a.len, frames * FRAME_SIZE as usize);
            assert!(a.map_len >= a.len && a.map_len.is_multiple_of(crate::sys::HUGE));
            let p = a.ptr.as_ptr();
            // SAFETY: the first and last bytes lie inside the area's writable mapping.
            unsafe {
                p.write(1);
                p.add(a.len - 1).write(2);
                assert_eq!((p.read(), p.add(a.len - 1).read()), (1, 2));
            }
        }
    }

    /// Issue 11, defect 12: every address the kernel hands back is checked against the UMEM
    /// before it becomes a pointer (defence in depth).
    #[test]
    fn descriptors_outside_the_umem_are_refused() {
        let f = FRAME_SIZE as u64;
        let umem = 4 * f;
        assert_eq!(rx_frame(f + 256, 1500, umem), Some((f, 256)));
        assert_eq!(
            rx_frame(3 * f, FRAME_SIZE, umem),
            Some((3 * f, 0)),
            "a whole chunk"
        );
        assert_eq!(
            rx_frame(3 * f + 1, FRAME_SIZE, umem),
            None,
            "runs past its chunk"
        );
        assert_eq!(rx_frame(f + 4000, 200, umem), None, "runs past its chunk");
        assert_eq!(rx_frame(f + 256, u32::MAX, umem), None);
        assert_eq!(rx_frame(4 * f, 64, umem), None, "past the end of the UMEM");
        assert_eq!(rx_frame(u64::MAX, 64, umem), None);
        assert_eq!(completed_chunk(2 * f + 300, umem), Some(2 * f));
        assert_eq!(completed_chunk(0, umem), Some(0));
        assert_eq!(completed_chunk(4 * f, umem), None);
        assert_eq!(completed_chunk(u64::MAX, umem), None);
    }
}
