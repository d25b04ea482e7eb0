//! Accepting clients: one loop per listener, one task per connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::conn;
use crate::node::Node;
use crate::transport::TcpTransport;
use crate::ws;

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

async fn handle(stream: TcpStream, kind: Kind, node: Arc<Node>) {
    let _ = stream.set_nodelay(true);
    let permit = node.slots.clone().try_acquire_owned().ok();
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
            match upgrade.await {
                Ok(Ok(upgrade)) => {
                    conn::serve(upgrade.transport, node, upgrade.cookie, permit).await
                }
                Ok(Err(err)) => debug!(error = %err, "websocket upgrade refused"),
                Err(_) => debug!("websocket upgrade timed out"),
            }
        }
    }
}
