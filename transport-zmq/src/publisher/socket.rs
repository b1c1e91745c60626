//! The publisher's listening socket: TCP, or a Unix socket file that it
//! creates owner-only and removes when dropped.

use std::path::{Path, PathBuf};

use transport_core::{Endpoint, Error, Result};

use crate::config::Address;
use crate::conn::Listener;
use crate::wire;

/// Binds `address`; returns the listener, the endpoint subscribers should use
/// (with the port the OS picked for `:0`), and the socket file to remove.
pub(super) async fn listen(
    endpoint: &Endpoint,
    address: &Address,
) -> Result<(Listener, Endpoint, Option<SocketFile>)> {
    let mut socket_file = None;
    let (listener, reported) = match address {
        Address::Tcp(addr) => {
            let l = bind_tcp(addr)
                .await
                .map_err(|e| Error::io(format!("binding {addr}"), e))?;
            let local = l
                .local_addr()
                .map_err(|e| Error::io("reading the bound address", e))?;
            // The port the OS picked for `:0`, with the same parameters.
            let mut url = format!("zmq+tcp://{local}");
            let query: Vec<String> = endpoint.params().map(|(k, v)| format!("{k}={v}")).collect();
            if !query.is_empty() {
                url.push('?');
                url.push_str(&query.join("&"));
            }
            (Listener::Tcp(l), Endpoint::parse(&url)?)
        }
        Address::Ipc(path) => {
            let (l, file) = bind_unix(path)?;
            let l = l
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixListener::from_std(l));
            let l = match l {
                Ok(l) => l,
                Err(e) => {
                    file.remove();
                    return Err(Error::io("registering the socket with tokio", e));
                }
            };
            socket_file = Some(file);
            (Listener::Unix(l), endpoint.clone())
        }
    };
    Ok((listener, reported, socket_file))
}

/// What the kernel may buffer of what one peer sends us (accepted
/// connections inherit it from the listener). A subscriber only ever sends
/// small messages (subscriptions, status reports, slot releases), so this
/// costs it nothing; without it, every hostile connection could make the
/// kernel take megabytes of garbage (loopback autotuning) before the
/// publisher has read the 10 bytes it needs to refuse it, and an attacker
/// reconnecting at once kept the machine busy copying gigabytes.
const UPSTREAM_RCVBUF: u32 = 16 << 10;

/// Binds a TCP listener on `addr` (host:port, resolved) with a small receive
/// buffer (see [`UPSTREAM_RCVBUF`]).
async fn bind_tcp(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let s = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }?;
        s.set_reuseaddr(true)?;
        s.set_recv_buffer_size(UPSTREAM_RCVBUF)?;
        match s.bind(a).and_then(|()| s.listen(1024)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            "the address resolves to nothing",
        )
    }))
}

/// A Unix socket file this publisher created, removed when it is dropped
/// (unless another publisher has replaced it meanwhile).
#[derive(Debug)]
pub(super) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub(super) fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                let _ = std::fs::remove_file(&self.path);
            }
            _ => {}
        }
    }
}

/// Binds a Unix socket at `path`, sweeping a socket file left by a crashed
/// publisher, refusing one a live publisher serves, and making it owner-only.
///
/// The socket is bound under a temporary name, made owner-only and renamed
/// into place, so that it is never reachable with wider permissions. We
/// remove `path` ourselves, synchronously, when the publisher is dropped.
fn bind_unix(path: &Path) -> Result<(std::os::unix::net::UnixListener, SocketFile)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};
    let url = || format!("zmq+ipc://{}", path.display());
    let io = |what: &str, e| Error::io(format!("{what} {}", path.display()), e);
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting", e)),
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(Error::InvalidEndpoint {
                    url: url(),
                    reason: "the path exists and is not a socket; pick another path".into(),
                });
            }
            if UnixStream::connect(path).is_ok() {
                return Err(Error::InvalidEndpoint {
                    url: url(),
                    reason: "another publisher is listening on this path; pick another path".into(),
                });
            }
            tracing::info!(path = %path.display(), "removing a stale socket left by a previous run");
            std::fs::remove_file(path).map_err(|e| io("removing", e))?;
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{}.{:x}.tmp",
        std::process::id(),
        wire::random_u64()
    ));
    let tmp = PathBuf::from(tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| io("binding next to", e))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        // Owner-only, like every framewire rendezvous point: connecting needs write access.
        .map_err(|e| io("restricting to its owner", e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| io("moving a socket to", e)))
        .and_then(|()| std::fs::symlink_metadata(path).map_err(|e| io("inspecting", e)));
    match placed {
        Ok(m) => Ok((
            listener,
            SocketFile {
                path: path.to_owned(),
                dev: m.dev(),
                ino: m.ino(),
            },
        )),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
