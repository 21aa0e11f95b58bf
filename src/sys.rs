//! The few places outside AF_XDP where espd needs `unsafe`: epoch-protected pointers (with
//! [`EpochPtr`] as their safe interface), a huge-page backed slice for the SA table, and
//! syscalls.
#![allow(unsafe_code)]

use std::sync::atomic::Ordering;

use crossbeam_epoch::{Atomic, Guard, Owned, Shared};

/// Dereferences a pointer loaded from an `Atomic` under a pinned guard.
///
/// # Safety
///
/// `p` is null or was loaded, while the guard of lifetime `'g` was pinned, from an `Atomic`
/// that only ever holds fully built objects (published with `Owned::new` and a Release store
/// or swap) and frees them only through [`epoch_retire`] after unlinking them. (A `Shared` can
/// also be made from any raw pointer, which is why this cannot be a safe function.)
#[inline]
pub unsafe fn epoch_deref<'g, T>(p: Shared<'g, T>) -> Option<&'g T> {
    // SAFETY: by the caller's contract the pointee was published fully built and is freed only
    // by `defer_destroy`, which waits until every guard pinned at retirement (including the
    // one `'g` borrows) has been dropped. So it lives for 'g.
    unsafe { p.as_ref() }
}

/// Frees `p` once no pinned guard can still hold it.
///
/// # Safety
///
/// `p` is null or points to an object allocated by `Owned::new` that has already been
/// unlinked from every `Atomic` (so no new reader can load it), is retired exactly once, and
/// whose type may be dropped on another thread at a later time (`Send + 'static`).
#[inline]
pub unsafe fn epoch_retire<T>(p: Shared<'_, T>, guard: &Guard) {
    if !p.is_null() {
        // SAFETY: the caller unlinked `p` and retires it once, so no new reader can load it,
        // and the deferred drop runs after every current reader's guard is gone.
        unsafe { guard.defer_destroy(p) };
    }
}

/// An atomic pointer to an epoch-reclaimed `T` that it owns: the safe face of
/// [`epoch_deref`] and [`epoch_retire`]. Readers pin a guard and get `&'g T`, valid while the
/// guard is pinned; a writer replaces the value and the old one is freed once no guard pinned
/// before the replacement remains. Lock-free, one allocation per published value.
pub struct EpochPtr<T: Send + Sync + 'static>(Atomic<T>);

/// Ordering of [`EpochPtr::swap`] (a rekey's swap of a tunnel's outbound SA).
pub const EPOCH_SWAP: Ordering = Ordering::AcqRel;
/// Ordering of [`EpochPtr::load`] (a worker's load of an SA pointer).
pub const EPOCH_LOAD: Ordering = Ordering::Acquire;

impl<T: Send + Sync + 'static> EpochPtr<T> {
    /// An empty cell.
    pub fn null() -> Self {
        EpochPtr(Atomic::null())
    }

    /// A cell holding `v`.
    pub fn new(v: T) -> Self {
        EpochPtr(Atomic::new(v))
    }

    /// The current value, valid while `guard` is pinned.
    #[inline]
    pub fn load<'g>(&self, guard: &'g Guard) -> Option<&'g T> {
        // SAFETY: the cell's pointer is only ever set by `new`/`swap` (from `Owned::new`, fully
        // built, AcqRel) and freed only by `swap`/`drop` through `epoch_retire` after unlinking;
        // it is loaded under `guard`.
        unsafe { epoch_deref(self.0.load(EPOCH_LOAD, guard)) }
    }

    /// Publishes `new` (or empties the cell) and retires the previous value, which is
    /// returned: it stays readable while `guard` is pinned.
    pub fn swap<'g>(&self, new: Option<T>, guard: &'g Guard) -> Option<&'g T> {
        let new = new.map_or(Shared::null(), |v| Owned::new(v).into_shared(guard));
        let old = self.0.swap(new, EPOCH_SWAP, guard);
        // SAFETY: `old` came from `new`/`swap` (an `Owned::new` allocation); this swap unlinked
        // it and only this call received it, so it is retired exactly once; T: Send + 'static.
        // It was loaded under `guard` and its destruction waits for `guard`, so the reference
        // returned lives for 'g.
        unsafe {
            epoch_retire(old, guard);
            epoch_deref(old)
        }
    }
}

impl<T: Send + Sync + 'static> Default for EpochPtr<T> {
    fn default() -> Self {
        Self::null()
    }
}

impl<T: Send + Sync + 'static> Drop for EpochPtr<T> {
    fn drop(&mut self) {
        // A reader may still hold `&'g T` from a guard pinned before the cell went away (the
        // reference's lifetime is the guard's, not the cell's): retire rather than free.
        let guard = crossbeam_epoch::pin();
        let old = self.0.swap(Shared::null(), Ordering::AcqRel, &guard);
        // SAFETY: as in `swap`: unlinked by this swap, retired once.
        unsafe { epoch_retire(old, &guard) };
    }
}

/// True when running as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// CLOCK_MONOTONIC in microseconds (systemd's `MONOTONIC_USEC=` in a reload notification).
pub fn monotonic_us() -> u64 {
    monotonic_ns() / 1_000
}

/// Borrows a raw descriptor owned elsewhere.
///
/// # Safety
///
/// `fd` is an open descriptor and stays open (not closed, not reused for another file) for all
/// of `'a`. Prefer passing an `OwnedFd` (e.g. `BorrowedFd::try_clone_to_owned`) across
/// threads: the daemon registers duplicates of the workers' sockets and does not need this.
pub unsafe fn borrow_fd<'a>(fd: i32) -> std::os::fd::BorrowedFd<'a> {
    // SAFETY: the caller guarantees `fd` stays open for 'a.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Raises a socket's receive buffer (SO_RCVBUFFORCE as root, else SO_RCVBUF up to rmem_max).
pub fn set_rcvbuf(sock: &impl std::os::fd::AsRawFd, bytes: i32) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: `sock` is an open socket for the duration of the call; the option value is a
        // valid c_int whose size is passed.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &bytes as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// SO_PREFER_BUSY_POLL (Linux 5.11, asm-generic/socket.h; the `libc` crate does not export it
/// for every target).
pub const SO_PREFER_BUSY_POLL: libc::c_int = 69;
/// SO_BUSY_POLL_BUDGET (Linux 5.11, asm-generic/socket.h).
pub const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

/// SO_INCOMING_NAPI_ID (Linux 4.12, asm-generic/socket.h): the NAPI instance that delivered
/// the socket's last packet, 0 when none has a busy-pollable id.
pub const SO_INCOMING_NAPI_ID: libc::c_int = 56;

/// Reads an integer socket option.
pub fn socket_option(
    sock: std::os::fd::BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> std::io::Result<libc::c_int> {
    use std::os::fd::AsRawFd;
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `sock` is open while borrowed; `v` and `len` are valid for writes of the sizes
    // given.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            name,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if r == 0 {
        Ok(v)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sets an integer socket option; the kernel's refusal (ENOPROTOOPT on a kernel that does not
/// know the option, EPERM, EINVAL) is returned as is.
pub fn set_socket_option(
    sock: std::os::fd::BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `sock` is open while borrowed; the value is a valid c_int whose size is passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The uid of the process at the other end of a Unix socket (SO_PEERCRED).
pub fn peer_uid(s: &impl std::os::fd::AsRawFd) -> Option<u32> {
    peer_cred(s).map(|(uid, _)| uid)
}

/// The uid and pid of the process at the other end of a Unix socket (SO_PEERCRED).
pub fn peer_cred(s: &impl std::os::fd::AsRawFd) -> Option<(u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; the fd is open while
    // `s` is borrowed.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0).then_some((cred.uid, cred.pid.max(0) as u32))
}

/// CLOCK_MONOTONIC in nanoseconds: comparable between processes on one machine (one-way
/// latency from timestamps in the payload).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sends every buffer in `bufs` on the connected socket with one sendmmsg(2) call; returns how
/// many went out.
pub fn send_batch(sock: &impl std::os::fd::AsRawFd, bufs: &mut [Vec<u8>]) -> usize {
    let mut iov = iovecs(bufs);
    let mut msgs = mmsghdrs(&mut iov);
    // SAFETY: every header points at one iovec that points into a live buffer of its length;
    // all outlive the call.
    let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
    n.max(0) as usize
}

fn iovecs(bufs: &mut [Vec<u8>]) -> Vec<libc::iovec> {
    bufs.iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect()
}

/// One message header per iovec (the pointers stay valid while `iov` is alive and unmoved).
fn mmsghdrs(iov: &mut [libc::iovec]) -> Vec<libc::mmsghdr> {
    iov.iter_mut()
        .map(|v| {
            // SAFETY: mmsghdr is plain data; zeroed is a valid empty header.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v as *mut libc::iovec;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect()
}

/// Receives up to `bufs.len()` datagrams with one recvmmsg(2) call; `lens[i]` gets each size.
pub fn recv_batch(
    sock: &impl std::os::fd::AsRawFd,
    bufs: &mut [Vec<u8>],
    lens: &mut [usize],
) -> usize {
    let mut iov = iovecs(bufs);
    let mut msgs = mmsghdrs(&mut iov);
    // SAFETY: headers point at live buffers of their lengths; a null timeout blocks until the
    // socket's SO_RCVTIMEO (set by the caller) or the first datagram.
    let n = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as u32,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    if n <= 0 {
        return 0;
    }
    for (l, m) in lens.iter_mut().zip(msgs.iter()).take(n as usize) {
        *l = m.msg_len as usize;
    }
    n as usize
}

/// Asks the kernel to tell each received IPv6 datagram's destination address
/// (`IPV6_RECVPKTINFO`, read by [`recv_from_to6`]).
pub fn enable_pktinfo6(sock: &impl std::os::fd::AsRawFd) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the option value is a live c_int of the size passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVPKTINFO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram on an IPv6 socket bound to a wildcard address: its length, source
/// and destination address (`None` unless [`enable_pktinfo6`] was called).
pub fn recv_from_to6(
    sock: &impl std::os::fd::AsRawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, std::net::SocketAddrV6, Option<std::net::Ipv6Addr>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: sockaddr_in6 is plain data; zeroed is valid.
    let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_name = (&mut from as *mut libc::sockaddr_in6).cast();
    m.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    m.msg_control = control.as_mut_ptr().cast();
    m.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: the header points at the live source address, buffer and control buffer, each
    // with its length; all outlive the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut m, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut dst = None;
    // SAFETY: the kernel filled `control` up to msg_controllen; CMSG_FIRSTHDR/NXTHDR stay
    // inside it and return null at its end.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&m) };
    while !c.is_null() {
        // SAFETY: `c` is a complete header inside the control buffer (see above).
        let h = unsafe { &*c };
        if h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_PKTINFO {
            // SAFETY: an IPV6_PKTINFO message carries one in6_pktinfo; read_unaligned
            // needs no alignment.
            let info: libc::in6_pktinfo =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast()) };
            dst = Some(std::net::Ipv6Addr::from(info.ipi6_addr.s6_addr));
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        c = unsafe { libc::CMSG_NXTHDR(&m, c) };
    }
    let src = std::net::SocketAddrV6::new(
        std::net::Ipv6Addr::from(from.sin6_addr.s6_addr),
        u16::from_be(from.sin6_port),
        0,
        from.sin6_scope_id,
    );
    Ok((n as usize, src, dst))
}

/// Sends `data` to `to` from the local address `from` (`IPV6_PKTINFO`): one wildcard socket
/// speaks for many local addresses.
pub fn send_from6(
    sock: &impl std::os::fd::AsRawFd,
    data: &[u8],
    to: std::net::SocketAddrV6,
    from: std::net::Ipv6Addr,
) -> std::io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: sockaddr_in6 is plain data; zeroed is valid.
    let mut dst: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    dst.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    dst.sin6_port = to.port().to_be();
    dst.sin6_addr.s6_addr = to.ip().octets();
    dst.sin6_scope_id = to.scope_id();
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_name = (&mut dst as *mut libc::sockaddr_in6).cast();
    m.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    m.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    m.msg_controllen =
        unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::in6_pktinfo>() as u32) } as usize;
    // SAFETY: `control` (64 bytes) holds CMSG_SPACE(20) = 40 bytes; CMSG_FIRSTHDR points at
    // its start, CMSG_DATA inside it, and the writes stay within the header's length.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = libc::IPPROTO_IPV6;
        (*c).cmsg_type = libc::IPV6_PKTINFO;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::in6_pktinfo>() as u32) as usize;
        let info = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: from.octets(),
            },
            ipi6_ifindex: 0,
        };
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
    }
    // SAFETY: the header points at the live destination, data and control buffer.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &m, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A fixed-length, default-initialised slice in its own anonymous mapping, 2 MB aligned and
/// marked for transparent huge pages (`MADV_HUGEPAGE`) when it spans at least 2 MB, so random
/// lookups in a large table do not miss the TLB on every access. Falls back to the heap when
/// the mapping fails.
pub struct HugeSlice<T: Default> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
    /// Length of the mapping in bytes; 0 when the slice lives on the heap.
    map_len: usize,
}

// SAFETY: HugeSlice owns its elements like a Box<[T]>; sending or sharing it is sound exactly
// when sending or sharing the elements is.
unsafe impl<T: Default + Send> Send for HugeSlice<T> {}
// SAFETY: as above; `&HugeSlice` only hands out `&[T]`.
unsafe impl<T: Default + Sync> Sync for HugeSlice<T> {}

/// Huge page size (x86-64 and aarch64 with 4 KB base pages).
pub const HUGE: usize = 2 << 20;

/// An anonymous private, writable mapping of `len` bytes rounded up to whole huge pages, 2 MB
/// aligned and marked for transparent huge pages (`MADV_HUGEPAGE`) before any page is touched,
/// so that the first touch of each 2 MB can find a huge page (advisory: where the kernel has
/// none, the mapping is made of small pages and works the same). `noreserve`: no swap space
/// is reserved (`MAP_NORESERVE`). Returns the start and the mapping's length; the caller
/// unmaps it. A length too large to round up is `ENOMEM`.
pub(crate) fn map_huge(
    len: usize,
    noreserve: bool,
) -> std::io::Result<(std::ptr::NonNull<u8>, usize)> {
    // The mapping, and the extra huge page mapped to align it.
    let Some((map_len, over)) = len
        .max(1)
        .checked_next_multiple_of(HUGE)
        .and_then(|m| Some((m, m.checked_add(HUGE)?)))
        .filter(|&(_, over)| over <= isize::MAX as usize)
    else {
        return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
    };
    let flags = if noreserve { libc::MAP_NORESERVE } else { 0 };
    // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
    // result is checked against MAP_FAILED.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            over,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE);
    // SAFETY: [start, aligned) and [aligned + map_len, start + over) lie inside the mapping
    // just created and nothing refers to them; unmapping them trims it to the aligned part.
    // madvise on the aligned part is advisory (an error only means no huge pages).
    unsafe {
        if aligned > start {
            libc::munmap(raw, aligned - start);
        }
        let tail = start + over - (aligned + map_len);
        if tail > 0 {
            libc::munmap((aligned + map_len) as *mut libc::c_void, tail);
        }
        libc::madvise(aligned as *mut libc::c_void, map_len, libc::MADV_HUGEPAGE);
    }
    // SAFETY: mmap succeeded, so `aligned` (at or after its non-null start) is non-null.
    Ok((
        unsafe { std::ptr::NonNull::new_unchecked(aligned as *mut u8) },
        map_len,
    ))
}

impl<T: Default> HugeSlice<T> {
    pub fn new(len: usize) -> Self {
        let bytes = len.saturating_mul(std::mem::size_of::<T>());
        if bytes < HUGE || std::mem::align_of::<T>() > 4096 {
            return Self::heap(len);
        }
        let Ok((base, map_len)) = map_huge(bytes, true) else {
            return Self::heap(len);
        };
        let ptr = base.as_ptr() as *mut T;
        for i in 0..len {
            // SAFETY: the mapping is page aligned (so aligned for T, align <= 4096), writable and
            // spans len * size_of::<T>() bytes; element i is in bounds and not yet initialised.
            unsafe { ptr.add(i).write(T::default()) };
        }
        Self {
            ptr: base.cast(),
            len,
            map_len,
        }
    }

    fn heap(len: usize) -> Self {
        let b: Box<[T]> = (0..len).map(|_| T::default()).collect();
        let len = b.len();
        let raw = Box::into_raw(b) as *mut T;
        Self {
            // SAFETY: Box::into_raw never returns null (dangling but non-null when empty).
            ptr: unsafe { std::ptr::NonNull::new_unchecked(raw) },
            len,
            map_len: 0,
        }
    }
}

impl<T: Default> std::ops::Deref for HugeSlice<T> {
    type Target = [T];
    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` initialised elements owned by self (mapping or box),
        // alive until drop.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Default> Drop for HugeSlice<T> {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
        if self.map_len == 0 {
            // SAFETY: `slice` came from Box::into_raw of a Box<[T]> of this length (heap).
            drop(unsafe { Box::from_raw(slice) });
        } else {
            // SAFETY: the elements were initialised in `new` and are dropped once; the mapping
            // [ptr, ptr + map_len) was created in `new` and is unmapped once, after its last use.
            unsafe {
                std::ptr::drop_in_place(slice);
                libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.map_len);
            }
        }
    }
}

/// Asks the CPU to bring the cache line holding `p` closer (a hint: any address is fine, it is
/// never dereferenced and never faults).
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it reads nothing architecturally and cannot fault, and SSE
    // is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Sends signal `sig` (e.g. `libc::SIGTERM`) to process `pid`, like kill(1). Refuses pid 0 and
/// negative pids (process groups, "every process"): only one named process is ever signalled.
pub fn kill(pid: u32, sig: i32) -> std::io::Result<()> {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    if pid <= 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill takes plain integers and touches no memory of ours; pid > 0 names one process.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether the peer of a connected stream socket closed it (POLLHUP: both directions shut; a
/// peer that only shut down its writing side still reads, and is not hung up).
pub fn hung_up(sock: &impl std::os::fd::AsRawFd) -> bool {
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd, its count is 1, and the timeout 0 returns at once; the
    // descriptor is open while `sock` is borrowed.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Sets SO_RCVTIMEO: a blocking receive on `sock` returns EAGAIN after `d` without data.
pub fn set_recv_timeout(
    sock: &impl std::os::fd::AsRawFd,
    d: std::time::Duration,
) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a valid timeval whose size is passed; the descriptor is open while
    // `sock` is borrowed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod kill_tests {
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn kill_terminates_one_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        super::kill(child.id(), libc::SIGTERM).unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn kill_refuses_groups_and_everyone() {
        assert!(super::kill(0, libc::SIGTERM).is_err());
        assert!(super::kill(u32::MAX, libc::SIGTERM).is_err());
    }
}

#[cfg(test)]
mod hung_up_tests {
    use std::os::unix::net::UnixStream;

    /// A peer that shuts down only its writing side still reads: not hung up; closed: hung up.
    #[test]
    fn hung_up_sees_a_closed_peer_only() {
        let (a, b) = UnixStream::pair().unwrap();
        assert!(!super::hung_up(&a));
        b.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(!super::hung_up(&a));
        drop(b);
        assert!(super::hung_up(&a));
    }
}

/// Sets the calling thread's timer slack (`PR_SET_TIMERSLACK`): how late the kernel may end
/// its timed sleeps to merge wake-ups (50 µs by default). Errors are ignored: the sleeps are
/// then only longer.
pub fn set_timer_slack_ns(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes an unsigned long by value and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
}
