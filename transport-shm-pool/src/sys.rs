//! The system calls the pool needs on top of the shared-memory support
//! crate ([`transport_shm_support::sys`], re-exported here under the names
//! the pool uses): checks of a peer's segment with the pool's wording, anchor
//! pipes, the async abstract-namespace rendezvous socket, and non-blocking
//! `sendmsg`/`recvmsg` with file descriptors attached.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::fs::OFlags;
use rustix::io::Errno;

/// Most file descriptors accepted with one `recvmsg`: a SEGMENT's fd and its
/// anchors is the most the protocol sends with one message (`wire` checks
/// at compile time that this is `2 + wire::MAX_ANCHORS`).
pub(crate) use transport_shm_support::sys::MAX_FDS_PER_MSG as MAX_FDS_PER_READ;
#[cfg(test)]
pub(crate) use transport_shm_support::sys::page_size;
use transport_shm_support::sys::{HUGETLBFS_MAGIC, SealFlags, SharedFdInfo, TMPFS_MAGIC};
pub(crate) use transport_shm_support::sys::{
    Mapping, bind_abstract, euid, memfd_sealed, page_align, peer_uid, reopen_read_only,
    seal_future_write_if_supported, seal_seals,
};

/// What a received descriptor is (see [`SharedFdInfo`]), with pool wording
/// for a descriptor that is not a sealable memfd.
fn inspect(fd: BorrowedFd<'_>) -> io::Result<SharedFdInfo> {
    transport_shm_support::sys::inspect_shared_fd(fd).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the peer's file descriptor is not a sealable memfd ({e})"),
        )
    })
}

/// Checks that `fd` is a memfd that can neither shrink nor be unsealed, and
/// holds at least `len` bytes: mapping `len` bytes of it can never SIGBUS.
pub(crate) fn check_sealed(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let info = inspect(fd)?;
    let need = SealFlags::SHRINK | SealFlags::SEAL;
    if !info.seals.contains(need) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the peer's memfd lacks the seals {need:?} (has {:?})",
                info.seals
            ),
        ));
    }
    if info.len < len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the peer's memfd holds {} bytes, {len} announced", info.len),
        ));
    }
    check_tmpfs(&info)
}

/// Checks that the file lives on tmpfs, as an ordinary memfd does, and not on
/// hugetlbfs (an `MFD_HUGETLB` memfd) or anything else: a hugetlb page that
/// cannot be allocated when it is first touched is a `SIGBUS`, not an
/// error, so such a segment must never be mapped by a reader. A tmpfs page
/// is allocated like any other memory (a failure is the OOM killer's, the
/// same as for the process's own heap).
fn check_tmpfs(info: &SharedFdInfo) -> io::Result<()> {
    let magic = info.fs_magic;
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

/// Listens on `name` in the abstract namespace (nothing on disk).
///
/// A name still held by a publisher being torn down is retried for a moment.
pub(crate) async fn listen(name: &str) -> io::Result<tokio::net::UnixListener> {
    let mut tries = 0;
    loop {
        match bind_abstract(name) {
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

/// One non-blocking `send` (no `SIGPIPE`).
pub(crate) fn send_nb(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    send_fd_nb(fd, buf, &[])
}

/// One non-blocking `sendmsg` carrying `pass` with `SCM_RIGHTS`; the
/// descriptors travel with the first byte sent.
pub(crate) fn send_fd_nb(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    pass: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    transport_shm_support::sys::send_with_fds(fd, buf, pass, true)
}

/// One non-blocking `recvmsg` into `buf`; descriptors that arrive are appended
/// to `fds` (close-on-exec). Returns the bytes read, 0 at end of stream.
pub(crate) fn recv_nb(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    transport_shm_support::sys::recv_with_fds_into(fd, buf, fds, MAX_FDS_PER_READ, true)
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
