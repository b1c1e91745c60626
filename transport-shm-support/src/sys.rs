//! Operating-system helpers (Linux): sealed memfds, shared mappings including
//! the mirrored ring mapping, abstract-namespace Unix sockets, fd passing with
//! `SCM_RIGHTS`, and peer credentials.
//!
//! Nothing here knows about rings, pools or frames. Every function returns
//! [`std::io::Error`]; callers add context.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::ptr::NonNull;

use rustix::fs::{FileType, MemfdFlags, Mode, OFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

pub use rustix::fs::SealFlags;

/// The size of a memory page on this host.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// Rounds `n` up to a multiple of the page size, `None` on overflow.
pub fn page_align(n: u64) -> Option<u64> {
    let p = page_size() as u64;
    n.checked_add(p - 1).map(|v| v / p * p)
}

/// The real user id of this process.
pub fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The user id of the process at the other end of a connected Unix socket
/// (`SO_PEERCRED`: the credentials it had when it connected or listened).
pub fn peer_uid(sock: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(sock)?.uid.as_raw())
}

/// Creates an anonymous shared-memory file of `len` bytes: close-on-exec,
/// mode 0600, never executable where the kernel supports it, and sealed
/// against shrinking and growing so that no holder of an fd can truncate it
/// under a mapping (which would SIGBUS the mapper).
///
/// The seals can still be added to (see [`seal_future_write`]).
pub fn memfd_sealed(name: &str, len: u64) -> io::Result<OwnedFd> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let fd = match rustix::fs::memfd_create(name, flags | MemfdFlags::NOEXEC_SEAL) {
        // Kernels before 6.3 do not know MFD_NOEXEC_SEAL.
        Err(Errno::INVAL) => rustix::fs::memfd_create(name, flags)?,
        other => other?,
    };
    rustix::fs::fchmod(&fd, Mode::RUSR | Mode::WUSR)?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW)?;
    Ok(fd)
}

/// Seals a memfd against every *future* writable mapping and `write(2)`,
/// whatever fd is used (including a reopen through `/proc/PID/fd`), and
/// against further sealing. Mappings that exist already stay writable.
pub fn seal_future_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    rustix::fs::fcntl_add_seals(fd, SealFlags::FUTURE_WRITE | SealFlags::SEAL)?;
    Ok(())
}

/// As [`seal_future_write`], but on kernels older than 5.1, which lack the
/// future-write seal, seals only against further sealing. Returns whether
/// the future-write seal is in force.
pub fn seal_future_write_if_supported(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let sealed = match rustix::fs::fcntl_add_seals(fd, SealFlags::FUTURE_WRITE) {
        Ok(()) => true,
        Err(Errno::INVAL) => false,
        Err(e) => return Err(e.into()),
    };
    seal_seals(fd)?;
    Ok(sealed)
}

/// Seals a memfd against further sealing.
pub fn seal_seals(fd: BorrowedFd<'_>) -> io::Result<()> {
    rustix::fs::fcntl_add_seals(fd, SealFlags::SEAL)?;
    Ok(())
}

/// Opens a new, read-only file description for the file behind `fd` through
/// `/proc/self/fd/N`. Handing this one to a peer gives it no way to write
/// through the fd, nor to map it writable.
pub fn reopen_read_only(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `statfs` type of tmpfs/shmem, where plain memfds live.
pub const TMPFS_MAGIC: u32 = 0x0102_1994;
/// `statfs` type of hugetlbfs, where `MFD_HUGETLB` memfds live.
pub const HUGETLBFS_MAGIC: u32 = 0x9584_58f6;

/// What a received file descriptor is, before anything trusts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFdInfo {
    /// Size of the file in bytes.
    pub len: u64,
    /// Bytes of memory the file has allocated (`st_blocks * 512`; for
    /// tmpfs, pages in memory or in swap). A file smaller than its `len` is
    /// sparse: faulting its holes in allocates memory in the faulting process.
    pub allocated: u64,
    /// Type of the file system the file is on (`statfs`'s `f_type`):
    /// [`TMPFS_MAGIC`] for a plain memfd, [`HUGETLBFS_MAGIC`] for a
    /// huge-page one.
    pub fs_magic: u32,
    /// Seals in force (empty for files that cannot be sealed).
    pub seals: SealFlags,
    /// The fd was opened read-only.
    pub read_only: bool,
    /// The inode number: the identity of a memfd, the same in every process
    /// that holds it.
    pub inode: u64,
}

impl SharedFdInfo {
    /// The file is a plain (not huge-page) memfd or other tmpfs file.
    pub fn on_tmpfs(&self) -> bool {
        self.fs_magic == TMPFS_MAGIC
    }

    /// The file is on hugetlbfs: a read of a page not yet allocated needs a
    /// free huge page, and raises SIGBUS when the pool has none.
    pub fn hugetlb(&self) -> bool {
        self.fs_magic == HUGETLBFS_MAGIC
    }
}

/// Inspects a file descriptor received from a peer: it must be a regular file
/// that supports sealing (a memfd); returns its size, seals and access mode.
pub fn inspect_shared_fd(fd: BorrowedFd<'_>) -> io::Result<SharedFdInfo> {
    let st = rustix::fs::fstat(fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the descriptor is not a regular file",
        ));
    }
    let seals = match rustix::fs::fcntl_get_seals(fd) {
        Ok(s) => s,
        Err(Errno::INVAL) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the descriptor is not a sealable memfd",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let mode = rustix::fs::fcntl_getfl(fd)? & OFlags::RWMODE;
    // The magic is a 32-bit value in a `long` (sign-extended on some ABIs).
    let fs_magic = rustix::fs::fstatfs(fd)?.f_type as u32;
    Ok(SharedFdInfo {
        len: u64::try_from(st.st_size).unwrap_or(0),
        allocated: u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512),
        fs_magic,
        seals,
        read_only: mode == OFlags::RDONLY,
        inode: st.st_ino,
    })
}

/// A shared mapping of a file, unmapped on drop.
///
/// The mapping never moves while this value lives, so pointers into it stay
/// valid for as long as the `Mapping` (callers keep it in an `Arc` where
/// pointers outlive a borrow).
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: a `Mapping` is an address range owned by this value; nothing about
// it is tied to a thread. All access to the bytes goes through raw pointers
// whose users uphold the synchronization rules documented where they are used.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes the pointer and the length.
unsafe impl Sync for Mapping {}

fn prot(writable: bool) -> ProtFlags {
    if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    }
}

fn shared_flags(populate: bool) -> MapFlags {
    if populate {
        MapFlags::SHARED | MapFlags::POPULATE
    } else {
        MapFlags::SHARED
    }
}

impl Mapping {
    /// Maps the first `len` bytes of `fd` (shared), read-only or read-write,
    /// pre-faulting every page when `populate` is set.
    pub fn map(
        fd: BorrowedFd<'_>,
        len: usize,
        writable: bool,
        populate: bool,
    ) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        // SAFETY: a fresh mapping at an address the kernel picks; it aliases
        // no Rust object. The file is sealed against shrinking by every caller
        // (checked with `inspect_shared_fd` for received fds), so access within
        // `len` cannot fault.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                prot(writable),
                shared_flags(populate),
                fd,
                0,
            )?
        };
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len, writable })
    }

    /// Maps a ring file laid out as `head_len` bytes of header followed by
    /// `ring_len` bytes of ring, so that the ring appears twice in a row:
    ///
    /// ```text
    /// [ header | ring | ring again ]     (virtual addresses)
    ///  0        head   head+ring      head+2*ring
    /// ```
    ///
    /// Any `len <= ring_len` bytes starting anywhere in the first copy of the
    /// ring are then contiguous in memory, so a record that wraps around the
    /// end of the ring is read and written with one plain copy, and a loan
    /// over it is one `&mut [u8]`. Both lengths must be multiples of the page
    /// size. Pages are pre-faulted in both views when `populate` is set.
    pub fn map_mirrored(
        fd: BorrowedFd<'_>,
        head_len: usize,
        ring_len: usize,
        writable: bool,
        populate: bool,
    ) -> io::Result<Mapping> {
        let page = page_size();
        if head_len == 0
            || ring_len == 0
            || !head_len.is_multiple_of(page)
            || !ring_len.is_multiple_of(page)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mirrored mapping lengths must be non-zero multiples of the page size",
            ));
        }
        let total = ring_len
            .checked_mul(2)
            .and_then(|n| n.checked_add(head_len))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "mapping too large"))?;
        let file_off = u64::try_from(head_len).map_err(io::Error::other)?;
        // SAFETY: reserves address space only (PROT_NONE, no memory behind
        // it); nothing else refers to the range the kernel picks.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                total,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )?
        };
        let base = NonNull::new(base.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        // From here on the reservation is owned by `mapping`, so every early
        // return unmaps the whole range.
        let mapping = Mapping {
            ptr: base,
            len: total,
            writable,
        };
        let flags = shared_flags(populate) | MapFlags::FIXED;
        // SAFETY: MAP_FIXED over the start of our own reservation, which no
        // Rust object refers to yet; the file holds `head_len + ring_len`
        // bytes (checked by callers) and is sealed against shrinking.
        unsafe {
            rustix::mm::mmap(
                base.as_ptr().cast(),
                head_len + ring_len,
                prot(writable),
                flags,
                fd,
                0,
            )?;
        }
        // SAFETY: `head_len + ring_len < total`, so the address is inside
        // the reservation; MAP_FIXED replaces the rest of it with a second
        // view of the ring bytes of the same file.
        unsafe {
            let second = base.as_ptr().add(head_len + ring_len);
            rustix::mm::mmap(second.cast(), ring_len, prot(writable), flags, fd, file_off)?;
        }
        Ok(mapping)
    }

    /// The first byte of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: mappings are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapping was made writable.
    pub fn writable(&self) -> bool {
        self.writable
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range this value owns; every user of
        // pointers into it holds the `Mapping` (directly or through an `Arc`)
        // for as long as it uses them.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The abstract-namespace socket address for `name` (no file is created; the
/// name vanishes with the last socket bound to it, whoever crashed).
pub fn abstract_addr(name: &str) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name.as_bytes())
}

/// Binds and listens on an abstract-namespace Unix socket. Fails with
/// `AddrInUse` while another live socket holds the name.
pub fn bind_abstract(name: &str) -> io::Result<UnixListener> {
    UnixListener::bind_addr(&abstract_addr(name)?)
}

/// Connects to an abstract-namespace Unix socket.
pub fn connect_abstract(name: &str) -> io::Result<UnixStream> {
    UnixStream::connect_addr(&abstract_addr(name)?)
}

/// Most file descriptors one message carries ([`send_with_fds`]) or one
/// receive accepts ([`recv_with_fds_into`]).
pub const MAX_FDS_PER_MSG: usize = 10;

/// One `sendmsg` of `data` with the descriptors `fds` attached
/// (`SCM_RIGHTS`, at most [`MAX_FDS_PER_MSG`]); never raises `SIGPIPE`, and
/// with `nonblocking` fails with `WouldBlock` instead of waiting. Returns how
/// many bytes went out; the descriptors travel with the first. Without
/// descriptors it is a plain `send`.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> io::Result<usize> {
    let flags = if nonblocking {
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL
    } else {
        SendFlags::NOSIGNAL
    };
    if fds.is_empty() {
        return Ok(rustix::net::send(sock, data, flags)?);
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if fds.len() > MAX_FDS_PER_MSG || !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(format!(
            "{} descriptors do not fit one message (at most {MAX_FDS_PER_MSG})",
            fds.len()
        )));
    }
    Ok(rustix::net::sendmsg(
        sock,
        &[io::IoSlice::new(data)],
        &mut control,
        flags,
    )?)
}

/// Sends `data` with at most one file descriptor attached (`SCM_RIGHTS`),
/// waiting for room: [`send_with_fds`] for the handshakes that pass one.
pub fn send_with_fd(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<usize> {
    send_with_fds(sock, data, fd.as_slice(), false)
}

/// One `recvmsg` into `buf`; the descriptors that arrive with the bytes
/// (close-on-exec) are appended to `fds`. More than `max_fds` of them (at
/// most [`MAX_FDS_PER_MSG`] are ever accepted), or a truncated control
/// message, is an `InvalidData` error: the descriptors past `max_fds` are
/// closed (by the kernel, or here). With `nonblocking` it fails with
/// `WouldBlock` instead of waiting. Returns the bytes read, 0 at end of
/// stream.
pub fn recv_with_fds_into(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut impl Extend<OwnedFd>,
    max_fds: usize,
    nonblocking: bool,
) -> io::Result<usize> {
    let flags = if nonblocking {
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC
    } else {
        RecvFlags::CMSG_CLOEXEC
    };
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(sock, &mut [io::IoSliceMut::new(buf)], &mut control, flags)?;
    let mut kept = 0;
    let mut too_many = false;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            for fd in rights {
                if kept < max_fds {
                    fds.extend(Some(fd));
                    kept += 1;
                } else {
                    // Closed here.
                    too_many = true;
                }
            }
        }
    }
    if too_many || msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer sent more file descriptors than expected",
        ));
    }
    Ok(msg.bytes)
}

/// Receives bytes into `buf` and any file descriptors sent with them (at most
/// two; more, or a truncated control message, is an error and the extra
/// descriptors are closed), waiting for them: [`recv_with_fds_into`] for the
/// handshakes. Descriptors are close-on-exec.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut fds = Vec::new();
    let n = recv_with_fds_into(sock, buf, &mut fds, 2, false)?;
    Ok((n, fds))
}

/// Shuts a socket down in both directions, so that the peer sees EOF at once
/// even while other handles to the socket are still open.
pub fn shutdown(sock: BorrowedFd<'_>) {
    let _ = rustix::net::shutdown(sock, rustix::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn memfd_is_sealed_private_and_mirrors() {
        let page = page_size();
        let fd = memfd_sealed("framewire-test", (page * 3) as u64).unwrap();
        let st = rustix::fs::fstat(&fd).unwrap();
        assert_eq!(st.st_mode & 0o777, 0o600);
        assert!(
            rustix::fs::ftruncate(&fd, page as u64).is_err(),
            "shrink is sealed"
        );
        assert!(
            rustix::fs::ftruncate(&fd, (page * 4) as u64).is_err(),
            "grow is sealed"
        );
        let m = Mapping::map_mirrored(fd.as_fd(), page, page * 2, true, true).unwrap();
        assert_eq!(m.len(), page * 5);
        let ring = page;
        // SAFETY: inside our own fresh mapping of 5 pages.
        unsafe {
            m.as_ptr().add(ring + 10).write(42);
            assert_eq!(
                m.as_ptr().add(ring + 2 * page + 10).read(),
                42,
                "second view aliases the first"
            );
        }
        seal_future_write(fd.as_fd()).unwrap();
        let ro = reopen_read_only(fd.as_fd()).unwrap();
        let info = inspect_shared_fd(ro.as_fd()).unwrap();
        assert!(info.read_only);
        assert_eq!(info.len, (page * 3) as u64);
        assert!(info.on_tmpfs() && !info.hugetlb(), "{info:?}");
        assert!(
            info.allocated >= (page * 3) as u64,
            "the populated mapping allocated every page: {info:?}"
        );
        assert!(
            info.seals
                .contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::FUTURE_WRITE)
        );
        assert!(
            Mapping::map(ro.as_fd(), page, true, false).is_err(),
            "a read-only fd cannot map writable"
        );
        // Not even a read-write reopen can map it writable now.
        let rw = rustix::fs::open(
            format!("/proc/self/fd/{}", ro.as_raw_fd()).as_str(),
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("the owner may reopen its memfd read-write");
        assert!(
            Mapping::map(rw.as_fd(), page, true, false).is_err(),
            "future writes are sealed"
        );
        assert!(
            rustix::io::write(&rw, b"x").is_err(),
            "write(2) is sealed too"
        );
        let r = Mapping::map_mirrored(ro.as_fd(), page, page * 2, false, true).unwrap();
        // SAFETY: inside the fresh read-only mapping; only reads.
        unsafe { assert_eq!(r.as_ptr().add(ring + 10).read(), 42) };
        // The writer's existing mapping stays writable.
        // SAFETY: inside our own mapping.
        unsafe { m.as_ptr().add(ring + 11).write(7) };
        // SAFETY: inside the read-only mapping; only reads.
        unsafe { assert_eq!(r.as_ptr().add(ring + 2 * page + 11).read(), 7) };
    }

    #[test]
    fn fds_travel_over_abstract_sockets() {
        let name = format!("framewire-test/sys/{}", std::process::id());
        let l = bind_abstract(&name).unwrap();
        assert_eq!(
            bind_abstract(&name).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        let c = connect_abstract(&name).unwrap();
        let (s, _) = l.accept().unwrap();
        assert_eq!(peer_uid(s.as_fd()).unwrap(), my_uid());
        let fd = memfd_sealed("framewire-test", 4096).unwrap();
        assert_eq!(
            send_with_fd(c.as_fd(), b"hello", Some(fd.as_fd())).unwrap(),
            5
        );
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(s.as_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"hello"[..], 1));
        let info = inspect_shared_fd(fds[0].as_fd()).unwrap();
        assert_eq!(
            (info.len, info.allocated),
            (4096, 0),
            "sized, never touched"
        );
        drop((l, s, c));
        // The name is gone with the socket: nothing to sweep after a crash.
        assert!(connect_abstract(&name).is_err());
        assert!(bind_abstract(&name).is_ok());
    }

    #[test]
    fn fds_past_the_limit_are_an_error_and_nonblocking_waits_for_nothing() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 8];
        let e = recv_with_fds_into(b.as_fd(), &mut buf, &mut Vec::new(), 2, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let m: Vec<OwnedFd> = (0..3)
            .map(|_| memfd_sealed("framewire-test", 4096).unwrap())
            .collect();
        let pass: Vec<BorrowedFd<'_>> = m.iter().map(|f| f.as_fd()).collect();
        assert_eq!(send_with_fds(a.as_fd(), b"x", &pass, true).unwrap(), 1);
        let e = recv_with_fds(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert_eq!(send_with_fds(a.as_fd(), b"yz", &pass, false).unwrap(), 2);
        let mut got = std::collections::VecDeque::new();
        assert_eq!(
            recv_with_fds_into(b.as_fd(), &mut buf, &mut got, MAX_FDS_PER_MSG, true).unwrap(),
            2
        );
        assert_eq!(got.len(), 3);
        let too_many: Vec<BorrowedFd<'_>> = (0..=MAX_FDS_PER_MSG).map(|_| m[0].as_fd()).collect();
        assert!(send_with_fds(a.as_fd(), b"x", &too_many, true).is_err());
    }

    #[test]
    fn non_memfds_are_refused() {
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(inspect_shared_fd(f.as_fd()).is_err());
    }
}
