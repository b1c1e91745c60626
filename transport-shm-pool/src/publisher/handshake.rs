//! Accepting subscribers: the rendezvous socket's accept loop, the bound
//! on handshakes in progress, and the handshake itself (HELLO, the
//! channel, READY).

use super::*;

impl Shared {
    pub(super) fn hello(&self) -> Hello {
        let flags = (if self.policy == Policy::DropOldest {
            wire::HELLO_RECLAIMS
        } else {
            0
        }) | (self.max_held.min(0xffff) as u32) << wire::HELLO_MAX_HELD_SHIFT;
        let claims_len = wire::claims_len(wire::claim_entries(self.pool.geometry().slots));
        self.pool.hello(flags, claims_len)
    }
}

/// Most handshakes a publisher runs at once (each costs a task, a socket and
/// a few KiB until it completes or [`HANDSHAKE_TIMEOUT`] ends it): as many as
/// it can have subscribers, so a legitimate burst of subscribers never meets
/// the limit.
pub(crate) const MAX_PENDING_HANDSHAKES: usize = MAX_SUBSCRIBERS;

/// Refuses a connection without a handshake: one non-blocking REJECT (it
/// fits an empty socket buffer), then the socket closes.
fn refuse_now(stream: &UnixStream, reason: String) {
    let mut b = BytesMut::new();
    wire::encode(&Msg::Reject { reason }, &mut b);
    let _ = sys::send_nb(stream.as_fd(), &b);
}

pub(super) async fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    tracing::debug!(pool = %shared.name, "shm-pool: {MAX_PENDING_HANDSHAKES} handshakes in progress; refusing a connection");
                    refuse_now(
                        &stream,
                        format!(
                            "{MAX_PENDING_HANDSHAKES} subscriber handshakes are already in progress \
                             (each completes or times out within {HANDSHAKE_TIMEOUT:?}); try again"
                        ),
                    );
                    continue;
                };
                let sh = shared.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&sh, stream)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(pool = %sh.name, "shm-pool: subscriber refused: {e}")
                        }
                        Err(_) => {
                            tracing::debug!(pool = %sh.name, "shm-pool: subscriber handshake timed out")
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(pool = %shared.name, "shm-pool: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn handshake(shared: &Arc<Shared>, stream: UnixStream) -> Result<()> {
    let uid = sys::peer_uid(stream.as_fd()).map_err(|e| Error::io("SO_PEERCRED", e))?;
    let me = sys::euid();
    if uid != me {
        // Owner-only: another user's process gets nothing, not even the geometry.
        return Err(Error::io(
            "shm-pool subscriber",
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("peer uid {uid} is not this publisher's uid {me}"),
            ),
        ));
    }
    let mut rx = RecvBuf::new();
    let prefix = match rx.recv(&stream, "SUBSCRIBE").await? {
        Msg::Subscribe { version, prefix } if version == wire::VERSION => prefix,
        Msg::Subscribe { version, .. } => {
            let reason = format!("protocol version {version} is not {}", wire::VERSION);
            wire::send(&stream, &Msg::Reject { reason }, None, "REJECT").await?;
            return Err(Error::VersionMismatch {
                ours: wire::VERSION,
                theirs: version,
            });
        }
        other => {
            return Err(Error::protocol(
                "shm-pool",
                format!("expected SUBSCRIBE, got {other:?}"),
            ));
        }
    };
    let hello = shared.hello();
    // The subscriber's anchor: it gets the write end, this side keeps only
    // the read end (see `wire`, "Anchors").
    let (anchor, anchor_w) =
        sys::anchor_pipe().map_err(|e| Error::io("creating the subscriber's anchor pipe", e))?;
    wire::send_fds(
        &stream,
        &Msg::Hello(hello),
        &[shared.ro_fd.as_fd(), anchor_w.as_fd()],
        "HELLO",
    )
    .await?;
    drop(anchor_w);
    // SAFETY: `anchor` is an `OwnedFd`: its descriptor stays open, and
    // `as_raw_fd` returns that same descriptor, for as long as the
    // `AsyncFd` owns it.
    let anchor = unsafe { AsyncFd::register_with_interest(anchor, Interest::READABLE) }
        .map_err(|e| Error::io("watching the subscriber's anchor", io::Error::from(e)))?;
    match rx.recv(&stream, "CLAIMS").await? {
        Msg::Claims { len } if len == hello.claims_len => {}
        other => {
            return Err(Error::protocol(
                "shm-pool",
                format!("expected CLAIMS, got {other:?}"),
            ));
        }
    }
    let fd = rx
        .take_fd()
        .ok_or_else(|| Error::protocol("shm-pool", "CLAIMS arrived without its memfd"))?;
    let claims = match ClaimTable::open(&fd, wire::claim_entries(hello.slots)) {
        Ok(c) => c,
        Err(e) => return Err(reject(&stream, format!("bad claim table: {e}")).await),
    };
    drop(fd);
    // Subscribers send only RELEASE and UNSUBSCRIBE from now on: the small
    // limit stays, the reads get larger.
    rx.open_up(wire::MAX_HANDSHAKE_MESSAGE);
    let conn = {
        let mut st = lock(&shared.state);
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::disconnected("shm-pool", "the publisher is closing"));
        }
        match st.conns.iter().position(Option::is_none) {
            Some(bit) => {
                let conn = Arc::new(Conn {
                    bit: bit as u32,
                    stream,
                    claims,
                    anchor,
                    prefix,
                    active: AtomicBool::new(true),
                    dead: AtomicBool::new(false),
                    lingering: AtomicBool::new(false),
                    out: Mutex::new(Out::default()),
                    inp: Mutex::new(rx),
                    rel_tail: Mutex::new(0),
                    wake: Notify::new(),
                });
                lock(&conn.out).queue.push_back(Outgoing::Ready(bit as u32));
                st.conns[bit] = Some(conn.clone());
                st.subscribers += 1;
                shared.set_subscribers(&st);
                Ok(conn)
            }
            None => Err(stream),
        }
    };
    match conn {
        Ok(conn) => {
            shared.flush_now(&conn);
            shared.subs_changed.notify_waiters();
            tokio::spawn(conn_task(shared.clone(), conn));
            Ok(())
        }
        Err(stream) => {
            let reason = format!(
                "shm-pool `{}` already serves {MAX_SUBSCRIBERS} subscribers",
                shared.name
            );
            Err(reject(&stream, reason).await)
        }
    }
}

/// Sends REJECT with `reason` to a subscriber mid-handshake; the error to
/// end the handshake with: the protocol error naming `reason`, or the
/// failure to send it.
async fn reject(stream: &UnixStream, reason: String) -> Error {
    let msg = Msg::Reject {
        reason: reason.clone(),
    };
    match wire::send(stream, &msg, None, "REJECT").await {
        Ok(()) => Error::protocol("shm-pool", reason),
        Err(e) => e,
    }
}
