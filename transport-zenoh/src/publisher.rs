//! The publishing side: one Zenoh session and publisher per framewire publisher.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use transport_core::{
    Endpoint, Error, Frame, Policy, Publisher, Result, StatCounters, Stats, wait_until,
};
use zenoh::Wait;
use zenoh::bytes::ZBytes;
use zenoh::key_expr::KeyExpr;
use zenoh::qos::CongestionControl;
use zenoh::query::{ConsolidationMode, QueryTarget};
use zenoh::sample::SampleKind;

use crate::{Config, FLUSH_PREFIX, PUB_PREFIX, SUB_PREFIX, backend_err, close_session, wire};

/// Subscribers seen through their liveliness tokens.
#[derive(Default)]
struct SubSet {
    ids: Mutex<HashSet<String>>,
    changed: Notify,
}

/// A publisher on a Zenoh key expression.
pub struct ZenohPublisher {
    endpoint: Endpoint,
    cfg: Config,
    /// `None` only while dropping.
    session: Option<zenoh::Session>,
    publisher: zenoh::pubsub::Publisher<'static>,
    policy: Policy,
    trace_name: Option<String>,
    pub_id: u64,
    next_seq: u64,
    stats: Arc<StatCounters>,
    subs: Arc<SubSet>,
    _watch: zenoh::pubsub::Subscriber<()>,
    _token: zenoh::liveliness::LivelinessToken,
    lost: HashMap<u64, u64>,
    ended: bool,
}

impl std::fmt::Debug for ZenohPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZenohPublisher")
            .field("endpoint", &self.endpoint.url())
            .field("pub_id", &self.pub_id)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// Runs a call that may block the thread (a put under congestion control
/// Block) without stalling the other tasks of a multi-thread runtime.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

pub(crate) fn id_of(session: &zenoh::Session) -> u64 {
    let b = session.zid().to_le_bytes();
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w) | 1
}

/// The endpoint to hand to subscribers: `listen=` locators with port 0 are
/// replaced by `connect=` with the ports the system picked.
fn public_endpoint(endpoint: &Endpoint, cfg: &Config, locators: &[String]) -> Result<Endpoint> {
    let ephemeral = cfg.listen.iter().any(|l| l.ends_with(":0"));
    if !ephemeral || locators.is_empty() {
        return Ok(endpoint.clone());
    }
    let mut url = format!("zenoh://{}", endpoint.address());
    let mut sep = '?';
    for (k, v) in endpoint.params() {
        if k == "listen" || k == "connect" {
            continue;
        }
        url.push(sep);
        sep = '&';
        url.push_str(&format!("{k}={v}"));
    }
    url.push(sep);
    url.push_str("connect=");
    url.push_str(&locators.join(","));
    Endpoint::parse(&url)
}

pub(crate) async fn open(
    endpoint: &Endpoint,
    cfg: Config,
    policy: Policy,
    trace_name: Option<String>,
) -> Result<ZenohPublisher> {
    let (session, locators) = cfg.open().await?;
    let key: KeyExpr<'static> = KeyExpr::try_from(cfg.key.clone()).map_err(backend_err)?;
    let publisher = session
        .declare_publisher(key.clone())
        .congestion_control(match policy {
            Policy::DropOldest => CongestionControl::Drop,
            _ => CongestionControl::Block,
        })
        .await
        .map_err(backend_err)?;
    let subs = Arc::new(SubSet::default());
    let stats = Arc::new(StatCounters::default());
    let watch = {
        let subs = subs.clone();
        let stats = stats.clone();
        let key = key.clone();
        session
            .liveliness()
            .declare_subscriber(format!("{SUB_PREFIX}/**"))
            .history(true)
            .callback(move |sample| {
                let k = sample.key_expr().as_str();
                let Some((id, their)) = k
                    .strip_prefix(SUB_PREFIX)
                    .and_then(|r| r.strip_prefix('/'))
                    .and_then(|r| r.split_once('/'))
                else {
                    return;
                };
                let Ok(their) = KeyExpr::try_from(their) else {
                    return;
                };
                if !their.intersects(&key) {
                    return;
                }
                let Ok(mut ids) = subs.ids.lock() else {
                    return;
                };
                match sample.kind() {
                    SampleKind::Put => ids.insert(id.to_owned()),
                    SampleKind::Delete => ids.remove(id),
                };
                stats.subscribers.store(ids.len() as u64, Ordering::Relaxed);
                drop(ids);
                subs.changed.notify_waiters();
            })
            .await
            .map_err(backend_err)?
    };
    let public = public_endpoint(endpoint, &cfg, &locators)?;
    let pub_id = id_of(&session);
    // Subscribers end this publisher's stream when the token is gone for
    // longer than their `gone_after` (the process died without its DELETE).
    let token = session
        .liveliness()
        .declare_token(format!("{PUB_PREFIX}/{pub_id:016x}/{}", cfg.key))
        .await
        .map_err(backend_err)?;
    let session = Some(session);
    tracing::debug!(endpoint = %public, pub_id, "zenoh publisher ready");
    Ok(ZenohPublisher {
        endpoint: public,
        cfg,
        session,
        publisher,
        policy,
        trace_name,
        pub_id,
        next_seq: 0,
        stats,
        subs,
        _watch: watch,
        _token: token,
        lost: HashMap::new(),
        ended: false,
    })
}

impl ZenohPublisher {
    /// This publisher's id, carried in every frame's attachment trailer:
    /// subscribers keep sequence numbers and lag per publisher id.
    pub fn publisher_id(&self) -> u64 {
        self.pub_id
    }

    fn send_end(&self) -> Result<()> {
        let att = wire::end_attachment(self.pub_id);
        blocking(|| self.publisher.delete().attachment(ZBytes::from(att)).wait())
            .map_err(backend_err)
    }
}

#[async_trait]
impl Publisher for ZenohPublisher {
    async fn send(&mut self, mut frame: Frame) -> Result<()> {
        let len = frame.payload.len() as u64;
        if len > self.cfg.max_payload {
            return Err(Error::PayloadTooLarge {
                len,
                limit: self.cfg.max_payload,
                option: "max_payload",
            });
        }
        frame.stamp_for_send(self.next_seq, self.trace_name.as_deref())?;
        let att = wire::encode_attachment(&frame, self.pub_id, self.policy)?;
        // `Bytes` goes into the sample as is: no copy of ours.
        let payload = ZBytes::from(std::mem::take(&mut frame.payload));
        blocking(|| {
            self.publisher
                .put(payload)
                .attachment(ZBytes::from(att))
                .wait()
        })
        .map_err(backend_err)?;
        self.next_seq += 1;
        StatCounters::add(&self.stats.frames_sent, 1);
        StatCounters::add(&self.stats.bytes_sent, len);
        Ok(())
    }

    async fn loan(&mut self, len: usize) -> Result<transport_core::Loan> {
        if len as u64 > self.cfg.max_payload {
            return Err(Error::PayloadTooLarge {
                len: len as u64,
                limit: self.cfg.max_payload,
                option: "max_payload",
            });
        }
        Ok(transport_core::Loan::heap(len))
    }

    /// Asks every matching subscriber (a query on `@framewire/flush/...`,
    /// which travels behind the frames) and waits for all their replies.
    async fn flush(&mut self) -> Result<()> {
        let key = format!("{FLUSH_PREFIX}/{:016x}/{}", self.pub_id, self.cfg.key);
        let session = self
            .session
            .as_ref()
            .ok_or_else(|| Error::disconnected("zenoh", "the zenoh session is closed"))?;
        let replies = session
            .get(key)
            .target(QueryTarget::All)
            .consolidation(ConsolidationMode::None)
            .timeout(self.cfg.flush_timeout)
            .await
            .map_err(backend_err)?;
        let mut timed_out = false;
        while let Ok(reply) = replies.recv_async().await {
            match reply.result() {
                Ok(sample) => {
                    if let Ok((sub, lost)) = wire::decode_flush_reply(&sample.payload().to_bytes())
                    {
                        self.lost.insert(sub, lost);
                    }
                }
                Err(e) => {
                    if e.payload().to_bytes().as_ref() == b"Timeout" {
                        timed_out = true;
                    }
                }
            }
        }
        self.stats
            .dropped
            .store(self.lost.values().sum(), Ordering::Relaxed);
        if timed_out {
            return Err(Error::timeout(
                self.cfg.flush_timeout,
                "for subscribers to confirm a flush; raise `flush_timeout` or read faster",
            ));
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.flush().await?;
        self.send_end()?;
        self.ended = true;
        self.flush().await
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn subscriber_count(&self) -> Option<usize> {
        self.subs.ids.lock().ok().map(|s| s.len())
    }

    async fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let subs = self.subs.clone();
        wait_until(&subs.changed, timeout, "for zenoh subscribers", || {
            subs.ids.lock().map(|s| s.len() >= n).unwrap_or(false)
        })
        .await
    }

    fn stats(&self) -> Stats {
        self.stats.snapshot()
    }
}

impl Drop for ZenohPublisher {
    fn drop(&mut self) {
        // Never blocks behind a stalled subscriber: congestion control Drop
        // (if it is dropped, subscribers still see the liveliness token go).
        if !self.ended
            && let Some(s) = &self.session
            && let Err(e) = s
                .delete(self.cfg.key.clone())
                .congestion_control(CongestionControl::Drop)
                .attachment(ZBytes::from(wire::end_attachment(self.pub_id)))
                .wait()
        {
            tracing::debug!("zenoh publisher: end of stream not sent: {e}");
        }
        if let Some(s) = self.session.take() {
            close_session(s);
        }
    }
}
