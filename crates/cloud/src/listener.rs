//! Accepting clients: one loop per listener, one task per connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::conn;
use crate::node::Node;
use crate::transport::TcpTransport;
use crate::ws::{self, Upgrade};

/// Which protocol a listener speaks.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Tcp,
    Ws,
}

/// Longest pause after failing accepts (out of file descriptors, say).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts clients until the node stops. Accept errors back off and are
/// logged here; a connection's errors stay in its own task.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    node: Arc<Node>,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = node.stop.cancelled() => return,
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
        let span = match kind {
            Kind::Tcp => info_span!("conn", %peer, transport = "tcp"),
            Kind::Ws => info_span!("conn", %peer, transport = "ws"),
        };
        tracker.spawn(handle(stream, kind, node.clone()).instrument(span));
    }
}

/// Open connections per client address, for `max_connections_per_ip`.
#[derive(Debug, Default)]
pub(crate) struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PerIp`]; freed on drop.
pub(crate) struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<IpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
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
        let mut counts = self
            .per_ip
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Takes a connection slot and, when limited, a per-address slot; `None`
/// (with the limit counted) when either is exhausted.
fn admit(node: &Node, ip: IpAddr) -> Option<(OwnedSemaphorePermit, Option<IpSlot>)> {
    let Ok(permit) = node.slots.clone().try_acquire_owned() else {
        node.metrics.limit_hit("connections");
        return None;
    };
    let limit = node.config.max_connections_per_ip;
    if limit == 0 {
        return Some((permit, None));
    }
    match node.per_ip.acquire(ip, limit) {
        Some(slot) => Some((permit, Some(slot))),
        None => {
            node.metrics.limit_hit("connections_per_ip");
            None
        }
    }
}

async fn handle(stream: TcpStream, kind: Kind, node: Arc<Node>) {
    let _ = stream.set_nodelay(true);
    let ip = stream
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |peer| peer.ip());
    let permit = admit(&node, ip);
    match kind {
        Kind::Tcp => {
            let transport = TcpTransport::new(stream, node.config.max_body);
            conn::serve(transport, node, String::new(), permit).await;
        }
        Kind::Ws => {
            let upgrade = tokio::time::timeout(
                node.config.handshake_timeout,
                ws::accept(stream, &node.config),
            );
            // Boxed, and taken apart in its own statement: the handshake
            // future, a match around the `serve` call, or a half-moved
            // `Upgrade` would otherwise stay in the connection's state for
            // its whole life.
            let (transport, cookie) = match Box::pin(upgrade).await {
                Ok(Ok(Upgrade { transport, cookie })) => (transport, cookie),
                Ok(Err(err)) => return debug!(error = %err, "websocket upgrade refused"),
                Err(_) => return debug!("websocket upgrade timed out"),
            };
            conn::serve(transport, node, cookie, permit).await;
        }
    }
}
