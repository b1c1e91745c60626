//! Connecting: the rendezvous, the handshake (HELLO, the channel, READY)
//! and the checks on what the publisher passes with it.

use super::*;

/// The next descriptor received, checked to be an anchor (a pipe's write end).
pub(super) fn take_anchor(rx: &mut RecvBuf, what: &str) -> Result<Arc<OwnedFd>> {
    check_anchor(rx.take_fd(), what)
}

/// `fd`, checked to be an anchor (a pipe's write end).
pub(super) fn check_anchor(fd: Option<OwnedFd>, what: &str) -> Result<Arc<OwnedFd>> {
    let fd = fd
        .ok_or_else(|| Error::protocol("shm-pool", format!("{what} arrived without its anchor")))?;
    match sys::is_pipe_write_end(fd.as_fd()) {
        Ok(true) => Ok(Arc::new(fd)),
        Ok(false) => Err(Error::protocol(
            "shm-pool",
            format!("{what} came with an anchor that is not a pipe's write end"),
        )),
        Err(e) => Err(Error::io(format!("checking the anchor of {what}"), e)),
    }
}

pub(super) fn refused(name: &str, reason: String) -> Error {
    Error::Backend {
        backend: "shm-pool",
        source: format!("the publisher of `{name}` refused this subscriber: {reason}").into(),
    }
}

impl ShmPoolSubscriber {
    pub(crate) async fn connect(
        endpoint: &Endpoint,
        opts: &SubscribeOptions,
    ) -> Result<ShmPoolSubscriber> {
        let cfg = Config::from_endpoint(endpoint)?;
        let mode = opts.resolve_mode(endpoint)?;
        let uid = sys::euid();
        let sock = config::socket_name(uid, &cfg.name);
        let stream = sys::connect(&sock).await.map_err(|e| {
            let what = match e.kind() {
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => format!(
                    "no publisher for shm-pool `{}` (abstract socket @{sock}); start the publisher first",
                    cfg.name
                ),
                _ => format!("connecting to shm-pool `{}` (abstract socket @{sock})", cfg.name),
            };
            Error::io(what, e)
        })?;
        let peer = sys::peer_uid(stream.as_fd()).map_err(|e| Error::io("SO_PEERCRED", e))?;
        if peer != uid {
            // Abstract names carry no permissions: anyone can bind one first.
            return Err(Error::io(
                format!("shm-pool `{}`", cfg.name),
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "the socket @{sock} is served by uid {peer}, not by this user (uid {uid}); refusing it"
                    ),
                ),
            ));
        }
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::handshake(stream, cfg, mode, opts))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(HANDSHAKE_TIMEOUT, "the shm-pool handshake")),
        }
    }

    pub(super) async fn handshake(
        stream: UnixStream,
        cfg: Config,
        mode: RecvMode,
        opts: &SubscribeOptions,
    ) -> Result<ShmPoolSubscriber> {
        let mut rx = RecvBuf::new();
        let subscribe = Msg::Subscribe {
            version: wire::VERSION,
            prefix: opts.topic_prefix.clone(),
        };
        if let Err(e) = wire::send(&stream, &subscribe, None, "SUBSCRIBE").await {
            // A publisher that refuses without a handshake (too many in
            // progress) writes REJECT and closes: report its reason.
            if let Ok(Msg::Reject { reason }) = rx.recv(&stream, "REJECT").await {
                return Err(refused(&cfg.name, reason));
            }
            return Err(e);
        }
        let hello = match rx.recv(&stream, "HELLO").await? {
            Msg::Hello(h) => h,
            Msg::Reject { reason } => return Err(refused(&cfg.name, reason)),
            other => {
                return Err(Error::protocol(
                    "shm-pool",
                    format!("expected HELLO, got {other:?}"),
                ));
            }
        };
        if hello.version != wire::VERSION {
            return Err(Error::VersionMismatch {
                ours: wire::VERSION,
                theirs: hello.version,
            });
        }
        let fd = rx
            .take_fd()
            .ok_or_else(|| Error::protocol("shm-pool", "HELLO arrived without the segment fd"))?;
        let anchor = take_anchor(&mut rx, "HELLO")?;
        let seg = SegmentMap::open(fd, &hello, vec![anchor.clone()])?;
        let entries = wire::claim_entries(hello.slots);
        if hello.claims_len != wire::claims_len(entries) {
            return Err(Error::protocol(
                "shm-pool",
                format!(
                    "HELLO asks for a claim table of {} bytes, {} slots need {}",
                    hello.claims_len,
                    hello.slots,
                    wire::claims_len(entries)
                ),
            ));
        }
        let (claims, claims_fd) = ClaimTable::create(entries)
            .map_err(|e| Error::io("creating the claim table memfd", e))?;
        let msg = Msg::Claims {
            len: hello.claims_len,
        };
        wire::send(&stream, &msg, Some(claims_fd.as_fd()), "CLAIMS").await?;
        drop(claims_fd);
        match rx.recv(&stream, "READY").await? {
            Msg::Ready { .. } => {}
            Msg::Reject { reason } => return Err(refused(&cfg.name, reason)),
            other => {
                return Err(Error::protocol(
                    "shm-pool",
                    format!("expected READY, got {other:?}"),
                ));
            }
        }
        // Frames follow: descriptors carry frame headers up to MAX_MESSAGE.
        rx.open_up(wire::MAX_MESSAGE);
        let (tx, rx_ctl) = mpsc::unbounded_channel();
        let io = Arc::new(LinkIo {
            stream,
            out: Mutex::new(BytesMut::new()),
        });
        tokio::spawn(release_task(io.clone(), rx_ctl));
        // A subscriber that cannot watch for the hang-up still works: its
        // forwarded segments then go at `Disconnected`, as they always do.
        let watch = sys::hangup_watch(io.stream.as_fd())
            .and_then(|ep| {
                // SAFETY: `ep` is an `OwnedFd`: its descriptor stays open,
                // and `as_raw_fd` returns that same descriptor, for as long
                // as the `AsyncFd` owns it.
                unsafe { AsyncFd::register_with_interest(ep, Interest::READABLE) }
                    .map_err(io::Error::from)
            })
            .map_err(|e| tracing::debug!("shm-pool: no hang-up watch: {e}"))
            .ok();
        let (watch_stop, stop) = tokio::sync::oneshot::channel();
        let link = Arc::new(Link {
            io,
            seg,
            claims,
            rel_head: Mutex::new(0),
            tx,
            views: [AtomicUsize::new(0), AtomicUsize::new(0)],
            uncounted: (0..wire::claim_entries(hello.slots))
                .map(|_| AtomicU64::new(0))
                .collect(),
            fwd: Mutex::new((0..wire::MAX_FORWARD_SEGMENTS).map(|_| None).collect()),
            fwd_ranges: Mutex::new(vec![None; hello.slots as usize]),
            dead: AtomicBool::new(false),
            _watch_stop: watch.is_some().then_some(watch_stop),
        });
        link.seg.registered().set_marker(Arc::new(Marker {
            link: Arc::downgrade(&link),
            foreign: None,
        }));
        if let Some(watch) = watch {
            tokio::spawn(hangup_task(watch, Arc::downgrade(&link), stop));
        }
        Ok(ShmPoolSubscriber {
            link,
            rx,
            name: cfg.name,
            mode,
            prefix: opts.topic_prefix.clone(),
            busy_poll: cfg.busy_poll,
            may_reclaim: hello.flags & wire::HELLO_RECLAIMS != 0,
            max_held: wire::hello_max_held(hello.flags),
            over_max_held: AtomicU64::new(0),
            anchor,
            tail: 0,
            tail_unpublished: false,
            spilled: false,
            missed: 0,
            held: None,
            closed: None,
            stats: StatCounters::default(),
        })
    }
}
