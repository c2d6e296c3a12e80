//! UDP sockets with batched sends and receives (sendmmsg/recvmmsg), and epoll:
//! one system call moves up to a batch of datagrams, so the generator spends
//! less CPU per datagram than the server it measures.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Datagrams per system call.
pub const BATCH: usize = 64;
/// Room for the largest datagram the scenarios use (1200 B payload and headers).
pub const SLOT: usize = 2048;
/// Socket buffers: bursts of a whole window must not overflow the generator's own sockets.
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// A non-blocking UDP socket on `bind`, with large buffers; connected to `to` if given.
pub fn udp(bind: SocketAddrV4, to: Option<SocketAddrV4>) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(bind)?;
    s.set_nonblocking(true)?;
    let fd = s.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // The *FORCE options pass net.core.rmem_max/wmem_max but need CAP_NET_ADMIN.
        if setsockopt_int(fd, force, SOCKET_BUFFER).is_err() {
            let _ = setsockopt_int(fd, plain, SOCKET_BUFFER);
        }
    }
    if let Some(to) = to {
        s.connect(to)?;
    }
    Ok(s)
}

fn setsockopt_int(fd: RawFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: fd is an open socket; the option value is a c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn local_v4(s: &UdpSocket) -> io::Result<SocketAddrV4> {
    match s.local_addr()? {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(_) => Err(io::Error::other("IPv6 socket")),
    }
}

/// Buffers and headers for BATCH datagrams, allocated once and reused.
pub struct Batch {
    data: Vec<u8>,
    lens: [usize; BATCH],
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    pub fn new() -> Batch {
        // SAFETY: all-zero iovec, sockaddr_in and mmsghdr are valid (null pointers, zero lengths).
        let (iov, name, hdr) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed(), std::mem::zeroed()) };
        Batch {
            data: vec![0; BATCH * SLOT],
            lens: [SLOT; BATCH],
            iovs: vec![iov; BATCH],
            names: vec![name; BATCH],
            hdrs: vec![hdr; BATCH],
        }
    }

    /// Slot `i` for writing a datagram to send.
    pub fn slot(&mut self, i: usize) -> &mut [u8] {
        &mut self.data[i * SLOT..(i + 1) * SLOT]
    }

    pub fn set_len(&mut self, i: usize, len: usize) {
        self.lens[i] = len;
    }

    /// Datagram `i` of the last receive.
    pub fn received(&self, i: usize) -> &[u8] {
        &self.data[i * SLOT..i * SLOT + self.lens[i]]
    }

    /// Points the headers at the buffers (again before every call, so no pointer
    /// outlives a borrow of the buffers).
    fn wire(&mut self, n: usize, names: bool) {
        let base = self.data.as_mut_ptr();
        for i in 0..n {
            self.iovs[i].iov_base = base.wrapping_add(i * SLOT).cast();
            self.iovs[i].iov_len = self.lens[i];
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            if names {
                h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
                h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            } else {
                h.msg_name = std::ptr::null_mut();
                h.msg_namelen = 0;
            }
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
    }

    /// Receives up to BATCH datagrams without blocking (with `names`, their sources
    /// are kept for `send_back`). 0 when none is waiting.
    pub fn recv(&mut self, fd: RawFd, names: bool) -> io::Result<usize> {
        self.lens = [SLOT; BATCH];
        self.wire(BATCH, names);
        // SAFETY: hdrs holds BATCH headers whose iovecs point into self.data slots of SLOT bytes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        Ok(n)
    }

    /// Sends datagrams 0..n (lengths from `set_len` or the last receive) on a connected
    /// socket, or with `names` back to where each was received from. Returns how many
    /// the kernel took; the rest were dropped (full send buffer).
    pub fn send(&mut self, fd: RawFd, n: usize, names: bool) -> usize {
        self.wire(n, names);
        let mut done = 0;
        // Bounded: each round either sends some or stops.
        for _ in 0..n {
            if done >= n {
                break;
            }
            // SAFETY: headers done..n are wired to self.data and, with names, to self.names.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs.as_mut_ptr().add(done),
                    (n - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc <= 0 {
                // ECONNREFUSED after an ICMP error, EAGAIN with a full buffer: skip one.
                done += 1;
                continue;
            }
            done += rc as usize;
        }
        done.min(n)
    }
}

/// epoll, level-triggered, with a nanosecond timeout (ppoll on the epoll descriptor
/// when a millisecond is too coarse, as in paced sending).
pub struct Poller {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
    ready: usize,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: plain system call.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned open by epoll_create1 and is owned here only.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Poller {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            ready: 0,
        })
    }

    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: ev lives across the call; fd is an open socket.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn remove(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in add; an fd not registered only gives ENOENT.
        unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// Waits up to `timeout` for readable sockets; their tokens are then in `tokens()`.
    pub fn wait(&mut self, timeout: Duration) -> usize {
        let epfd = self.fd.as_raw_fd();
        let mut ms = 0;
        if !timeout.is_zero() {
            if timeout >= Duration::from_millis(2) {
                ms = timeout.as_millis().min(1000) as libc::c_int;
            } else {
                let mut p = libc::pollfd {
                    fd: epfd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: timeout.as_nanos() as libc::c_long,
                };
                // SAFETY: one pollfd and a timespec that outlive the call.
                let rc = unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
                if rc <= 0 {
                    self.ready = 0;
                    return 0;
                }
            }
        }
        // SAFETY: events has room for its length of entries.
        let n = unsafe {
            libc::epoll_wait(
                epfd,
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                ms,
            )
        };
        self.ready = n.max(0) as usize;
        self.ready
    }

    pub fn token(&self, i: usize) -> u64 {
        // epoll_event is packed on x86_64: copy the field out, never borrow it.
        let ev = self.events[i];
        ev.u64
    }
}

/// Lets this process hold `want` descriptors if the hard limit allows.
pub fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim outlives both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
