//! The subscriber's I/O: a reader task (messages from the publisher, within
//! limits), a writer task (upstream messages), and the I/O task between them
//! and the application's inbox (controls, sequence checks, shared-memory
//! references, status reports and releases).

use super::*;

/// The reader task: messages from the publisher, within `limits`, to the I/O
/// task (one at a time: when the inbox is full, the socket is not read).
pub(super) async fn read_loop(
    mut reader: zmtp::Reader<Box<dyn Rd>>,
    limits: Limits,
    tx: mpsc::Sender<std::result::Result<Msg, String>>,
) {
    loop {
        let m = match reader.next(&limits).await {
            Ok(Incoming::Message(parts)) => Ok(Msg::Parts(parts)),
            Ok(Incoming::Oversized(len)) => Ok(Msg::Oversized(len)),
            // Nothing the publisher may send as a command matters here.
            Ok(Incoming::Command(..)) => continue,
            Err(e) if e.is_eof() => Err(format!("{LOST}: it closed the connection")),
            Err(e) => Err(format!("{LOST}: {e}")),
        };
        let end = m.is_err();
        if tx.send(m).await.is_err() || end {
            return;
        }
    }
}

/// The writer task: upstream messages, in order; on the channel's end, the
/// connection is shut down for writing.
pub(super) async fn write_loop(mut wr: Box<dyn Wr>, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(m) = rx.recv().await {
        let r = tokio::time::timeout(UPSTREAM_WRITE_TIMEOUT, async {
            zmtp::write_message(&mut wr, &[m]).await?;
            wr.flush().await
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not write to the publisher");
                return;
            }
            Err(_) => {
                tracing::debug!("a write to the publisher timed out");
                return;
            }
        }
    }
    let _ = tokio::time::timeout(BYE_TIMEOUT, wr.shutdown()).await;
}

/// What the reader task hands over.
pub(super) enum Msg {
    Parts(Vec<Bytes>),
    /// A message over `max_payload` (plus the envelope), skipped unread.
    Oversized(u64),
}

/// The I/O task's state.
pub(super) struct Io {
    pub(super) msgs: mpsc::Receiver<std::result::Result<Msg, String>>,
    pub(super) up: mpsc::UnboundedSender<Bytes>,
    pub(super) reader: tokio::task::AbortHandle,
    pub(super) writer: tokio::task::JoinHandle<()>,
    /// The publisher is a framewire one (else a plain ZeroMQ PUB).
    pub(super) framewire: bool,
    pub(super) shared: Arc<Shared>,
    pub(super) id: SubscriberId,
    pub(super) prefix: String,
    pub(super) welcome: Welcome,
    pub(super) max_payload: u64,
    pub(super) heartbeat: Duration,
    pub(super) peer_timeout: Duration,
    /// Data frames received since joining.
    pub(super) received: u64,
    /// Frames this subscriber dropped itself (drop-oldest).
    pub(super) dropped: u64,
    /// The lowest sequence number the next frame may carry.
    pub(super) next_seq: u64,
    /// `shm=pool`: the publisher's pool, attached.
    pub(super) att: Option<Att>,
    pub(super) mode: RecvMode,
    /// Views -> this task: slots to release.
    pub(super) rel_tx: mpsc::UnboundedSender<(u32, u64)>,
}

impl Io {
    pub(super) async fn run(
        mut self,
        mut stop: oneshot::Receiver<()>,
        mut rel_rx: mpsc::UnboundedReceiver<(u32, u64)>,
    ) {
        let mut releases: Vec<(u32, u64)> = Vec::new();
        let drop_oldest = self.welcome.policy == Policy::DropOldest;
        let cap = self.welcome.queue as usize;
        let mut tick = tokio::time::interval(self.heartbeat);
        let framewire = self.framewire;
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status_due = false;
        let mut was_reading = false;
        let mut silence_deadline = Instant::now() + self.peer_timeout;
        let shared = self.shared.clone();
        let why = loop {
            let room = drop_oldest || self.shared.lock().frames.len() < cap;
            if room && !was_reading {
                // The publisher's silence counts only while we listen.
                silence_deadline = Instant::now() + self.peer_timeout;
            }
            was_reading = room;
            if status_due {
                status_due = false;
                if framewire {
                    self.status();
                }
            }
            while let Ok(r) = rel_rx.try_recv() {
                releases.push(r);
            }
            if !releases.is_empty() {
                self.release(&mut releases);
            }
            let to_io = shared.to_io.notified();
            tokio::pin!(to_io);
            to_io.as_mut().enable();
            if !room && self.shared.lock().frames.len() < cap {
                continue;
            }
            let r = tokio::select! {
                biased;
                _ = &mut stop => break None,
                r = self.msgs.recv(), if room => r,
                // A plain publisher sends no heartbeats: its connection tells.
                _ = tokio::time::sleep_until(silence_deadline), if room && framewire => {
                    break Some(format!(
                        "nothing from the publisher for {:?} (peer_timeout): it crashed or the network is down",
                        self.peer_timeout
                    ));
                }
                _ = &mut to_io => continue,
                Some(r) = rel_rx.recv() => {
                    releases.push(r);
                    continue;
                }
                _ = tick.tick() => {
                    status_due = true;
                    continue;
                }
            };
            silence_deadline = Instant::now() + self.peer_timeout;
            match self.handle(r, cap, drop_oldest) {
                Ok(ack) => status_due |= ack,
                Err(why) => break Some(why),
            }
        };
        if let Some(why) = why {
            tracing::debug!(subscriber = %self.id, %why, "stream ended");
            self.shared.end(why);
        }
        // Views dropped from here on keep their slots until this process
        // unmaps the pool (the publisher sees its attach connection close).
        while let Ok(r) = rel_rx.try_recv() {
            releases.push(r);
        }
        self.release(&mut releases);
        // Cancel the subscription: the publisher forgets us at once; then
        // the connection closes.
        let _ = self.up.send(wire::subscription(&self.prefix, false));
        let Io {
            up, writer, reader, ..
        } = self;
        drop(up);
        let abort = writer.abort_handle();
        if tokio::time::timeout(BYE_TIMEOUT, writer).await.is_err() {
            abort.abort();
        }
        reader.abort();
    }

    /// Sends the releases collected (in batches), best effort.
    fn release(&mut self, releases: &mut Vec<(u32, u64)>) {
        for batch in releases.chunks(wire::MAX_RELEASES) {
            let _ = self.up.send(wire::encode_release(&self.id, batch));
        }
        releases.clear();
    }

    /// A slot reference: checked, then a view or a copy. Any failure is an
    /// error for this message (the hold, if it was one, goes back).
    fn resolve(&mut self, len: u64, reference: &[u8]) -> Result<bytes::Bytes> {
        #[cfg(feature = "shm")]
        {
            let r = SlotRef::decode(reference)?;
            let release = {
                let tx = self.rel_tx.clone();
                move || {
                    let _ = tx.send((r.index, r.generation));
                }
            };
            let out = if r.len != len {
                Err(Error::invalid_reference(
                    "zmq",
                    format!("it is {} bytes long, the envelope announces {len}", r.len),
                ))
            } else if let Some(att) = &self.att {
                match (att.check(&r), self.mode) {
                    // Checked first, so that a refused reference is released below.
                    (Ok(()), RecvMode::View) => return att.view(&r, release),
                    (Ok(()), _) => att.copy(&r),
                    (Err(e), _) => Err(e),
                }
            } else {
                Err(Error::invalid_reference(
                    "zmq",
                    "the publisher sent a shared-memory reference, but this subscriber did not \
                     attach its pool (it asked for inline payloads)",
                ))
            };
            // A copy, or nothing: the slot goes back (a stale or forged
            // release is ignored by the publisher).
            release();
            out
        }
        #[cfg(not(feature = "shm"))]
        {
            let _ = (len, reference, &self.att, &self.rel_tx, self.mode);
            Err(Error::invalid_reference(
                "zmq",
                "the publisher sent a shared-memory reference, but this build lacks the `shm` \
                 feature",
            ))
        }
    }

    fn status(&mut self) {
        let s = wire::Status {
            id: self.id,
            received: self.received,
            dropped: self.dropped,
        };
        let _ = self.up.send(wire::encode_status(&s));
    }

    /// Handles one message. `Ok(true)`: report status now; `Err`: the stream ended.
    fn handle(
        &mut self,
        r: Option<std::result::Result<Msg, String>>,
        cap: usize,
        drop_oldest: bool,
    ) -> std::result::Result<bool, String> {
        let parts = match r {
            Some(Ok(Msg::Parts(p))) => p,
            Some(Ok(Msg::Oversized(len))) => {
                let limit = self.max_payload;
                tracing::warn!(subscriber = %self.id, len, "skipped a message over max_payload");
                self.shared.error(Error::PayloadTooLarge {
                    len,
                    limit,
                    option: "max_payload",
                });
                return Ok(false);
            }
            // A reset, or bytes that are not ZMTP: what was in flight is lost.
            Some(Err(why)) => return Err(why),
            None => return Err(LOST.to_owned()),
        };
        let parsed = match wire::parse_downstream(parts, self.framewire, self.max_payload) {
            Ok(Downstream::Shared {
                mut frame,
                len,
                reference,
            }) => match self.resolve(len, &reference) {
                Ok(payload) => {
                    frame.payload = payload;
                    Ok(Downstream::Data(frame))
                }
                Err(e) => Err(e),
            },
            other => other,
        };
        match parsed {
            Ok(Downstream::Data(mut f)) => {
                if f.seq < self.next_seq {
                    self.shared.error(Error::protocol(
                        "zmq",
                        format!(
                            "frame {} arrived after frame {}: sequence numbers went backwards",
                            f.seq,
                            self.next_seq - 1
                        ),
                    ));
                    return Ok(false);
                }
                if !topic_matches(&self.prefix, &f.topic) {
                    self.shared.error(Error::protocol(
                        "zmq",
                        format!(
                            "the publisher sent topic `{}` outside our prefix `{}`",
                            f.topic, self.prefix
                        ),
                    ));
                    return Ok(false);
                }
                self.next_seq = f.seq.saturating_add(1);
                self.received += 1;
                count_received(&self.shared.stats, &mut f);
                let mut inbox = self.shared.lock();
                if inbox.frames.len() >= cap && drop_oldest {
                    inbox.frames.drop_oldest();
                    self.dropped += 1;
                }
                inbox.frames.push(f);
                drop(inbox);
                self.shared.to_app.notify_one();
                // Under drop-oldest the publisher's `flush` waits for this.
                Ok(drop_oldest)
            }
            Ok(Downstream::Control(c)) => match c {
                Control::Lag(n) => {
                    self.shared.lock().frames.add_lag(n);
                    Ok(false)
                }
                Control::Heartbeat => Ok(false),
                Control::Goodbye => Err("the publisher closed the channel".into()),
                Control::Welcome(w) if w.instance != self.welcome.instance => {
                    Err("the publisher was restarted; frames may have been lost".into())
                }
                Control::Welcome(_) => Err(
                    "the connection to the publisher was interrupted; frames may have been lost"
                        .into(),
                ),
                Control::Refuse { reason, .. } => {
                    Err(format!("the publisher refused us: {reason}"))
                }
                // Only before a welcome.
                Control::Shm { .. } => Ok(false),
            },
            Ok(Downstream::Shared { .. }) => Ok(false),
            Err(e) => {
                tracing::warn!(subscriber = %self.id, error = %e, "unreadable message from the publisher");
                self.shared.error(e);
                Ok(false)
            }
        }
    }
}
