//! Thin, safe wrappers over the system calls the pool needs: memfds and their
//! seals, the abstract-namespace rendezvous socket, and non-blocking
//! `sendmsg`/`recvmsg` with file descriptors attached.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::time::Duration;

use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Most file descriptors accepted with one `recvmsg`: a SEGMENT's fd and its
/// anchors is the most the protocol sends with one message (`wire` checks
/// at compile time that this is `2 + wire::MAX_ANCHORS`).
pub(crate) const MAX_FDS_PER_READ: usize = 10;

/// The effective uid of this process.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The system's page size.
pub(crate) fn page_size() -> usize {
    rustix::param::page_size()
}

/// Rounds `n` up to a multiple of the page size, `None` on overflow.
pub(crate) fn page_align(n: u64) -> Option<u64> {
    let p = page_size() as u64;
    n.checked_add(p - 1).map(|v| v / p * p)
}

/// Creates a memfd of `len` bytes that accepts seals.
pub(crate) fn memfd(name: &str, len: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len)?;
    Ok(fd)
}

/// Seals a memfd's size (no shrink, no grow) and then its seals.
///
/// With `future_write`, no new writable mapping or `write(2)` is possible any
/// more (the caller's existing writable mapping keeps working); kernels older
/// than 5.1 lack that seal and go on without it.
pub(crate) fn seal(fd: BorrowedFd<'_>, future_write: bool) -> io::Result<()> {
    rustix::fs::fcntl_add_seals(fd, SealFlags::SHRINK | SealFlags::GROW)?;
    if future_write {
        match rustix::fs::fcntl_add_seals(fd, SealFlags::FUTURE_WRITE) {
            Ok(()) | Err(Errno::INVAL) => {}
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::fcntl_add_seals(fd, SealFlags::SEAL)?;
    Ok(())
}

/// Checks that `fd` is a memfd that can neither shrink nor be unsealed, and
/// holds at least `len` bytes: mapping `len` bytes of it can never SIGBUS.
pub(crate) fn check_sealed(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the peer's file descriptor is not a sealable memfd ({e})"),
        )
    })?;
    let need = SealFlags::SHRINK | SealFlags::SEAL;
    if !seals.contains(need) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the peer's memfd lacks the seals {need:?} (has {seals:?})"),
        ));
    }
    let size = rustix::fs::fstat(fd)?.st_size;
    if u64::try_from(size).unwrap_or(0) < len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the peer's memfd holds {size} bytes, {len} announced"),
        ));
    }
    check_tmpfs(fd)
}

/// `f_type` of tmpfs (`TMPFS_MAGIC`): where every ordinary memfd lives.
const TMPFS_MAGIC: u64 = 0x0102_1994;
/// `f_type` of hugetlbfs (`HUGETLBFS_MAGIC`): where an `MFD_HUGETLB` memfd lives.
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

/// Checks that `fd` lives on tmpfs, as an ordinary memfd does, and not on
/// hugetlbfs (an `MFD_HUGETLB` memfd) or anything else: a hugetlb page that
/// cannot be allocated when it is first touched is a `SIGBUS`, not an
/// error, so such a segment must never be mapped by a reader. A tmpfs page
/// is allocated like any other memory (a failure is the OOM killer's, the
/// same as for the process's own heap).
pub(crate) fn check_tmpfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    let magic = (rustix::fs::fstatfs(fd)?.f_type as u64) & 0xffff_ffff;
    if magic == TMPFS_MAGIC {
        return Ok(());
    }
    let what = if magic == HUGETLBFS_MAGIC {
        "a hugetlbfs (MFD_HUGETLB) memfd, whose pages can fault with SIGBUS when the huge-page pool runs out".to_owned()
    } else {
        format!("on a file system of type {magic:#x}, not tmpfs")
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the peer's segment is {what}; only ordinary memfds are mapped"),
    ))
}

/// Checks that the first `len` bytes of the memfd `fd` have no hole: every
/// page is allocated (a publisher of this crate pre-faults its whole pool).
/// Then mapping and pre-faulting them allocates no memory in this process
/// (only page tables), however large the announced size. Moves `fd`'s file
/// offset, which nothing uses (the segment is only ever mapped).
pub(crate) fn check_allocated(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let hole = rustix::fs::seek(fd, rustix::fs::SeekFrom::Hole(0))?;
    if hole < len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the peer's segment has unallocated pages from byte {hole} of the {len} announced; \
                 refusing to map it (a publisher pre-faults its whole segment, and reading a hole \
                 would allocate memory here)"
            ),
        ));
    }
    Ok(())
}

/// The inode number of a file: the identity of a memfd segment (the same in
/// every process that holds it).
pub(crate) fn inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_ino)
}

/// True when `fd` was opened read-only.
pub(crate) fn is_read_only(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let fl = rustix::fs::fcntl_getfl(fd)?;
    Ok(!fl.intersects(OFlags::WRONLY | OFlags::RDWR))
}

/// A close-on-exec pipe, both ends non-blocking: `(read end, write end)`.
/// The publisher keeps the read end of one per subscriber (its *anchor*) and
/// hands out the write end: the read end reports end of file once every copy
/// of the write end, in every process, is closed.
pub(crate) fn anchor_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )?)
}

/// True when `fd` is the write end of a pipe (what an anchor must be).
pub(crate) fn is_pipe_write_end(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let st = rustix::fs::fstat(fd)?;
    let fl = rustix::fs::fcntl_getfl(fd)?;
    Ok(rustix::fs::FileType::from_raw_mode(st.st_mode).is_fifo()
        && fl.contains(OFlags::WRONLY)
        && !fl.contains(OFlags::RDWR))
}

/// Whether some process still holds the write end of the pipe whose read
/// end is `fd`: false once the read end reports `POLLHUP`. Reads nothing, so
/// whatever a peer wrote into the pipe cannot keep the caller busy.
pub(crate) fn pipe_has_writers(fd: BorrowedFd<'_>) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        match rustix::event::poll(&mut fds, Some(&now)) {
            Ok(_) => return Ok(!fds[0].revents().contains(PollFlags::HUP)),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Opens a second, read-only file description of `fd` through `/proc/self/fd`:
/// what subscribers get, so that they cannot map the segment writable at all.
pub(crate) fn reopen_read_only(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn abstract_addr(name: &str) -> io::Result<std::os::unix::net::SocketAddr> {
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

/// Listens on `name` in the abstract namespace (nothing on disk).
///
/// A name still held by a publisher being torn down is retried for a moment.
pub(crate) async fn listen(name: &str) -> io::Result<tokio::net::UnixListener> {
    let addr = abstract_addr(name)?;
    let mut tries = 0;
    loop {
        match std::os::unix::net::UnixListener::bind_addr(&addr) {
            Ok(l) => {
                l.set_nonblocking(true)?;
                return tokio::net::UnixListener::from_std(l);
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 25 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Connects to `name` in the abstract namespace without blocking the thread.
pub(crate) async fn connect(name: &str) -> io::Result<tokio::net::UnixStream> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let addr = SocketAddrUnix::new_abstract_name(name.as_bytes())?;
    let mut tries = 0;
    loop {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => {
                return tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd));
            }
            // The listener's backlog is full: it is busy accepting; try again shortly.
            Err(Errno::AGAIN) if tries < 500 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The uid of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub(crate) fn peer_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(fd)?.uid.as_raw())
}

/// One non-blocking `send` (no `SIGPIPE`).
pub(crate) fn send_nb(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(
        fd,
        buf,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    )?)
}

/// One non-blocking `sendmsg` carrying `pass` with `SCM_RIGHTS`; the
/// descriptors travel with the first byte sent.
pub(crate) fn send_fd_nb(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    pass: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if pass.is_empty() {
        return send_nb(fd, buf);
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_READ))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if pass.len() > MAX_FDS_PER_READ || !control.push(SendAncillaryMessage::ScmRights(pass)) {
        return Err(io::Error::other(format!(
            "{} descriptors do not fit one message (at most {MAX_FDS_PER_READ})",
            pass.len()
        )));
    }
    Ok(rustix::net::sendmsg(
        fd,
        &[io::IoSlice::new(buf)],
        &mut control,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    )?)
}

/// One non-blocking `recvmsg` into `buf`; descriptors that arrive are appended
/// to `fds` (close-on-exec). Returns the bytes read, 0 at end of stream.
pub(crate) fn recv_nb(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_READ))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        fd,
        &mut [io::IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )?;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer sent more file descriptors than the protocol allows",
        ));
    }
    Ok(msg.bytes)
}

/// Sends all of `buf` (with `pass` attached to its first byte), waiting for
/// the socket to accept it. For the handshake; frames use the queues.
pub(crate) async fn send_all(
    stream: &tokio::net::UnixStream,
    buf: &[u8],
    mut pass: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut pos = 0;
    while pos < buf.len() {
        stream.writable().await?;
        let r = stream.try_io(tokio::io::Interest::WRITABLE, || {
            send_fd_nb(stream.as_fd(), &buf[pos..], pass)
        });
        match r {
            Ok(n) => {
                pos += n;
                pass = &[];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An epoll instance watching `fd` for nothing but its hang-up (and
/// errors, which epoll always reports): the returned descriptor becomes
/// readable, and stays so, once the peer of the socket `fd` has closed its
/// end entirely (it exited or was killed). A peer that only shut down its
/// writing side (`shutdown(SHUT_WR)`) does not count.
pub(crate) fn hangup_watch(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use rustix::event::epoll;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(
        &ep,
        fd,
        epoll::EventData::new_u64(0),
        epoll::EventFlags::empty(),
    )?;
    Ok(ep)
}
