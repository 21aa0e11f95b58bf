//! The few places outside AF_XDP where espd needs `unsafe`: epoch-protected pointers.
#![allow(unsafe_code)]

use crossbeam_epoch::{Guard, Shared};

/// Dereferences a pointer loaded from an `Atomic` under a pinned guard.
#[inline]
pub fn epoch_deref<'g, T>(p: Shared<'g, T>) -> Option<&'g T> {
    // SAFETY: every `Shared` passed here was loaded from an `Atomic` while the guard of lifetime
    // 'g was pinned. Objects are only ever published fully built (`Owned::new` then a Release
    // store/swap) and only freed through `epoch_retire` (`defer_destroy`), which waits until
    // every guard pinned at retirement has been dropped. So the pointee lives for 'g.
    unsafe { p.as_ref() }
}

/// Frees `p` once no pinned guard can still hold it. `p` must already be unlinked.
#[inline]
pub fn epoch_retire<T>(p: Shared<'_, T>, guard: &Guard) {
    if !p.is_null() {
        // SAFETY: callers unlink `p` from its `Atomic` (swap/store) before retiring it, and
        // retire each pointer exactly once, so no new reader can load it and the deferred drop
        // runs after every current reader's guard is gone.
        unsafe { guard.defer_destroy(p) };
    }
}

/// True when running as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Borrows a raw descriptor owned elsewhere (an AF_XDP socket of a running worker).
pub fn borrow_fd<'a>(fd: i32) -> std::os::fd::BorrowedFd<'a> {
    // SAFETY: callers pass descriptors of sockets that stay open for longer than the borrow:
    // the daemon registers worker sockets in the XSKMAP while the workers, which own them,
    // are running and joined only afterwards.
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

/// The uid of the process at the other end of a Unix socket (SO_PEERCRED).
pub fn peer_uid(s: &impl std::os::fd::AsRawFd) -> Option<u32> {
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
    (r == 0).then_some(cred.uid)
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
