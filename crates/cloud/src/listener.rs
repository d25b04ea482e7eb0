//! Accepting clients: one loop per listener, one task per connection.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, warn};

use crate::conn::{self, ConnContext};
use crate::transport::TcpTransport;
use crate::ws::{self, Upgrade, WsSettings};

/// Which protocol a listener speaks.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Tcp,
    Ws,
}

/// Longest pause after failing accepts (out of file descriptors, say).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// What the accept loops need: who may come in, how WebSocket clients are
/// upgraded, and what their connections are given.
pub(crate) struct Doorway {
    pub(crate) admission: Admission,
    pub(crate) ws: WsSettings,
    pub(crate) conns: Arc<ConnContext>,
}

/// The connection limits checked before a client is served.
#[derive(Debug)]
pub(crate) struct Admission {
    /// Connection slots (`max_connections`).
    slots: Arc<Semaphore>,
    /// Connections per client address (`max_connections_per_ip`, 0 = no limit).
    per_ip: Arc<PerIp>,
    per_ip_limit: usize,
}

impl Admission {
    pub(crate) fn new(max_connections: usize, per_ip_limit: usize) -> Self {
        Admission {
            slots: Arc::new(Semaphore::new(max_connections)),
            per_ip: Arc::new(PerIp::default()),
            per_ip_limit,
        }
    }
}

/// Accepts clients until the node stops. Accept errors back off and are
/// logged here; a connection's errors stay in its own task.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    doorway: Arc<Doorway>,
    tracker: TaskTracker,
) {
    let stop = doorway.conns.shutdown.stop.clone();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(err) => {
                warn!(error = %err, ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        // A connection logs at debug level only, so its span exists only
        // then: an idle connection's state would otherwise carry it.
        let span = match kind {
            Kind::Tcp => debug_span!("conn", %peer, transport = "tcp"),
            Kind::Ws => debug_span!("conn", %peer, transport = "ws"),
        };
        let connection = handle(stream, kind, &doorway);
        if span.is_disabled() {
            tracker.spawn(connection);
        } else {
            tracker.spawn(connection.instrument(span));
        }
    }
}

/// Open connections per client address, for `max_connections_per_ip`.
#[derive(Debug, Default)]
pub(crate) struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place under the node's limits, held for its whole life
/// and given back on drop. The per-address slot is boxed: it is off by
/// default, and this sits in every connection's state.
pub(crate) struct Admitted {
    _slot: OwnedSemaphorePermit,
    _per_ip: Option<Box<IpSlot>>,
}

impl Admitted {
    /// A place under `max_connections` alone.
    pub(crate) fn new(slot: OwnedSemaphorePermit) -> Self {
        Admitted {
            _slot: slot,
            _per_ip: None,
        }
    }
}

/// One connection's place in [`PerIp`]; freed on drop.
struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<IpSlot> {
        let mut counts = self.counts.lock();
        let count = counts.entry(ip).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.per_ip.counts.lock();
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl Doorway {
    /// Takes a connection slot and, when limited, a per-address slot; `None`
    /// (with the limit counted) when either is exhausted.
    fn admit(&self, ip: IpAddr) -> Option<Admitted> {
        let metrics = &self.conns.metrics;
        let Ok(permit) = self.admission.slots.clone().try_acquire_owned() else {
            metrics.limit_hit("connections");
            return None;
        };
        let limit = self.admission.per_ip_limit;
        if limit == 0 {
            return Some(Admitted::new(permit));
        }
        match self.admission.per_ip.acquire(ip, limit) {
            Some(slot) => Some(Admitted {
                _slot: permit,
                _per_ip: Some(Box::new(slot)),
            }),
            None => {
                metrics.limit_hit("connections_per_ip");
                None
            }
        }
    }
}

/// Serves one accepted socket. Not an async fn: what only the accept needs
/// (the stream, the doorway) is used here and stays out of the
/// connection's state, and each transport gets its own future, so a TCP
/// connection's state is not sized for a WebSocket's.
fn handle(
    stream: TcpStream,
    kind: Kind,
    doorway: &Doorway,
) -> impl Future<Output = ()> + Send + use<> {
    let _ = stream.set_nodelay(true);
    let ip = stream
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |peer| peer.ip());
    let permit = doorway.admit(ip);
    let conns = doorway.conns.clone();
    match kind {
        Kind::Tcp => {
            let transport = TcpTransport::new(stream, doorway.ws.max_body);
            Either::Left(conn::serve(transport, conns, String::new(), permit))
        }
        Kind::Ws => {
            let settings = doorway.ws.clone();
            // Boxed, and handing back what the connection keeps: the
            // handshake's state is freed once it is done.
            let upgrade = Box::pin(async move {
                let upgraded = tokio::time::timeout(
                    conns.limits.handshake_timeout,
                    ws::accept(stream, &settings),
                )
                .await;
                (upgraded, conns, permit)
            });
            Either::Right(async move {
                let (transport, cookie, conns, permit) = match upgrade.await {
                    (Ok(Ok(Upgrade { transport, cookie })), conns, permit) => {
                        (transport, cookie, conns, permit)
                    }
                    (Ok(Err(err)), ..) => return debug!(error = %err, "websocket upgrade refused"),
                    (Err(_), ..) => return debug!("websocket upgrade timed out"),
                };
                conn::serve(transport, conns, cookie, permit).await;
            })
        }
    }
}
