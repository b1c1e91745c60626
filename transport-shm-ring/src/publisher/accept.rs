//! The rendezvous socket: binding it, admitting subscribers (the handshake
//! that hands each its reader page and the ring), and watching each one's
//! socket until it goes.

use super::*;

/// Binds the rendezvous socket. A publisher of this process that was just
/// dropped releases the name when the runtime drops its accept task, so an
/// `AddrInUse` is retried for a moment (yielding to the runtime) before it is
/// reported as another live publisher.
pub(super) async fn bind(
    cfg: &Config,
    endpoint: &Endpoint,
    url: &str,
) -> Result<std::os::unix::net::UnixListener> {
    let mut tries = 0;
    loop {
        match sys::bind_abstract(&cfg.socket_name()) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(Error::InvalidEndpoint {
                    url: endpoint.url().to_owned(),
                    reason: "another publisher serves this name; pick another name".into(),
                });
            }
            Err(e) => {
                return Err(Error::io(
                    format!("binding the rendezvous socket of {url}"),
                    e,
                ));
            }
        }
    }
}

pub(super) async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(admit(stream, shared.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Handshake with one subscriber, then watch its socket until it goes.
async fn admit(stream: UnixStream, shared: Arc<Shared>) {
    let timeout = shared.cfg.handshake_timeout;
    let admitted = match tokio::time::timeout(timeout, handshake(stream, &shared)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return tracing::warn!(error = %e, "refusing a subscriber"),
        Err(_) => return tracing::warn!("a subscriber did not complete the handshake in time"),
    };
    let (stream, slot) = admitted;
    let watch = tokio::spawn(watch(stream, slot.clone(), shared.clone()));
    *transport_core::sync::lock(&slot.task) = Some(watch.abort_handle());
    // The publisher may have been dropped between registration and now.
    if shared.closed.load(Ordering::Acquire) {
        slot.hang_up();
    }
}

async fn handshake(
    stream: UnixStream,
    shared: &Shared,
) -> Result<(Arc<UnixStream>, Arc<ReaderSlot>)> {
    let uid = sys::peer_uid(stream.as_fd())
        .map_err(|e| Error::io("reading the peer's credentials", e))?;
    if uid != sys::my_uid() {
        return Err(Error::protocol(
            "shm-ring",
            format!(
                "a process of uid {uid} tried to subscribe; only uid {} may",
                sys::my_uid()
            ),
        ));
    }
    let mut hello = [0u8; CLIENT_HELLO_LEN];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < CLIENT_HELLO_LEN {
        let (n, more) = stream
            .async_io(Interest::READABLE, || {
                sys::recv_with_fds(stream.as_fd(), &mut hello[got..])
            })
            .await
            .map_err(|e| Error::io("reading a subscriber's hello", e))?;
        fds.extend(more);
        if n == 0 {
            return Err(Error::disconnected(
                "shm-ring",
                "the subscriber hung up during the handshake",
            ));
        }
        got += n;
    }
    if let Err(e) = proto::check_client_hello(&hello) {
        if matches!(e, Error::VersionMismatch { .. }) {
            // Tell it our version so that it can report the mismatch.
            let reply = ServerHello {
                version: proto::VERSION,
                capacity: 0,
                data_offset: 0,
                start: 0,
                next_seq: 0,
                max_records: 0,
            };
            let _ = stream.try_write(&reply.encode());
        }
        return Err(e);
    }
    let [page_fd] = <[OwnedFd; 1]>::try_from(fds).map_err(|fds| {
        Error::protocol(
            "shm-ring",
            format!(
                "a subscriber's hello carried {} descriptors, not 1",
                fds.len()
            ),
        )
    })?;
    let info = sys::inspect_shared_fd(page_fd.as_fd()).map_err(|e| {
        Error::protocol("shm-ring", format!("a subscriber's page is unusable: {e}")).with_source(e)
    })?;
    let need = sys::SealFlags::SHRINK | sys::SealFlags::GROW;
    if info.len < sys::page_size() as u64 || !info.seals.contains(need) {
        return Err(Error::protocol(
            "shm-ring",
            format!(
                "a subscriber's page must be a memfd of at least one page sealed against shrinking \
             and growing (got {} bytes, seals {:?})",
                info.len, info.seals
            ),
        ));
    }
    let page = PageMap::attach(page_fd.as_fd())
        .map_err(|e| Error::io("mapping a subscriber's page", e))?;
    drop(page_fd);
    if page.get().magic.load(Ordering::Relaxed) != READER_MAGIC {
        return Err(Error::protocol(
            "shm-ring",
            "a subscriber's page does not start with the reader magic",
        ));
    }
    let stream = Arc::new(stream);
    // Register before answering: once `subscribe` returns, every frame
    // committed after `start` reaches this subscriber, and the writer counts
    // it when it makes room.
    let (slot, reply) = {
        let mut readers = shared.readers();
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::disconnected("shm-ring", "the publisher is closing"));
        }
        let start = shared.head.load(Ordering::Relaxed);
        let slot = Arc::new(ReaderSlot {
            page,
            floor: start,
            stream: stream.clone(),
            woken: AtomicU64::new(0),
            task: Mutex::new(None),
        });
        readers.push(slot.clone());
        let reply = ServerHello {
            version: proto::VERSION,
            capacity: shared.cfg.capacity,
            data_offset: sys::page_size() as u64,
            start,
            next_seq: shared.next_seq.load(Ordering::Relaxed),
            max_records: shared.cfg.max_records,
        };
        (slot, reply)
    };
    shared.members.joined();
    if let Err(e) = send_hello(&stream, &reply, shared).await {
        shared.remove(&slot);
        return Err(e);
    }
    Ok((stream, slot))
}

async fn send_hello(stream: &UnixStream, hello: &ServerHello, shared: &Shared) -> Result<()> {
    let bytes = hello.encode();
    let mut sent = 0;
    while sent < bytes.len() {
        // The ring's fd travels with the first byte.
        let fd = (sent == 0).then(|| shared.ring_fd.as_fd());
        let n = stream
            .async_io(Interest::WRITABLE, || {
                sys::send_with_fd(stream.as_fd(), &bytes[sent..], fd)
            })
            .await
            .map_err(|e| Error::io("answering a subscriber's hello", e))?;
        if n == 0 {
            return Err(Error::disconnected(
                "shm-ring",
                "the subscriber hung up during the handshake",
            ));
        }
        sent += n;
    }
    Ok(())
}

/// Reads a subscriber's progress nudges until its socket closes (EOF: it
/// exited, was killed, or dropped its subscriber); then forgets it, so that
/// its cursor holds the writer back no more.
async fn watch(stream: Arc<UnixStream>, slot: Arc<ReaderSlot>, shared: Arc<Shared>) {
    let mut buf = [0u8; 64];
    loop {
        if stream.readable().await.is_err() {
            break;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => break,
            Ok(_) => shared.space.notify_waiters(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::debug!(error = %e, "subscriber socket failed");
                break;
            }
        }
    }
    shared.remove(&slot);
}
