//! One courier per cloud node: pushes bound for the same node travel
//! together. Each push still gets its own answer, but while calls to the node
//! are in flight the pushes that arrive wait in a queue and leave together
//! in the next `Deliver` call. Under load a node gets a few calls carrying
//! many pushes instead of one call (and one HTTP/2 exchange) per push; a
//! push that finds the courier idle leaves at once, so batching never adds a
//! wait of its own.

use std::collections::VecDeque;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use imcloud_proto::cloud::delivery::Kind;
use imcloud_proto::cloud::{DeliverReq, Delivery};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};
use tracing::warn;

use crate::router::CloudClient;

/// Calls one node has in flight at most. With one, the node would idle
/// while an answer travels back; with a second, the next batch overlaps it.
/// More would only make batches smaller.
const IN_FLIGHT: usize = 2;

/// Encoded bytes one call carries at most (a single larger push still goes,
/// alone): far under the 4 MiB a tonic server decodes by default.
const MAX_CALL_BYTES: usize = 1 << 20;

/// The handle: hands pushes to the node's courier task. Cloning shares the
/// task, which ends once every handle is gone and its calls are answered.
#[derive(Clone, Debug)]
pub(crate) struct Courier {
    tx: mpsc::UnboundedSender<Parcel>,
    queued: Gauge,
}

/// What couriers count, shared by every node's.
#[derive(Clone, Debug)]
pub(crate) struct CourierMetrics {
    /// Pushes per `Deliver` call.
    pub(crate) per_call: Histogram,
    /// Pushes waiting for a call: grows while cloud nodes answer slowly.
    pub(crate) queued: Gauge,
}

/// One push and who waits for its answer.
struct Parcel {
    kind: Kind,
    answer: oneshot::Sender<Result<(), Status>>,
}

impl Courier {
    /// Starts the courier of node `node`, calling it through `client`.
    pub(crate) fn spawn(node: String, client: CloudClient, metrics: CourierMetrics) -> Courier {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = metrics.queued.clone();
        tokio::spawn(run(node, client, rx, metrics));
        Courier { tx, queued }
    }

    /// Delivers one push (by key, or to a room) and says whether the node
    /// took it. The queue is unbounded on purpose: it never holds more than
    /// the pushes whose callers are waiting here.
    pub(crate) async fn deliver(&self, kind: Kind) -> Result<(), Status> {
        let (answer, answered) = oneshot::channel();
        self.queued.inc();
        if self.tx.send(Parcel { kind, answer }).is_err() {
            self.queued.dec();
            return Err(gone());
        }
        answered.await.unwrap_or_else(|_| Err(gone()))
    }
}

fn gone() -> Status {
    Status::unavailable("the cloud node left discovery while the push waited")
}

/// The courier task: queue what arrives, keep up to [`IN_FLIGHT`] calls
/// going, each carrying everything queued (up to [`MAX_CALL_BYTES`]).
async fn run(
    node: String,
    client: CloudClient,
    mut rx: mpsc::UnboundedReceiver<Parcel>,
    metrics: CourierMetrics,
) {
    let mut queue = VecDeque::new();
    let mut calls = FuturesUnordered::new();
    let mut open = true;
    // Set when the node answers `Deliver` as unimplemented (a version that
    // predates it): from then on one `PushMsg` / `BroadcastRoom` per push.
    let mut single = false;
    loop {
        tokio::select! {
            Some(refused) = calls.next(), if !calls.is_empty() => {
                if let Some(parcels) = refused {
                    if !single {
                        warn!(%node, "cloud node does not serve Deliver (an older version): one call per push");
                    }
                    single = true;
                    requeue(&mut queue, parcels, &metrics.queued);
                }
            }
            parcel = rx.recv(), if open => match parcel {
                Some(parcel) => queue.push_back(parcel),
                None => open = false,
            },
            else => break,
        }
        while let Ok(parcel) = rx.try_recv() {
            queue.push_back(parcel);
        }
        while !queue.is_empty() && (single || calls.len() < IN_FLIGHT) {
            let parcels: Vec<Parcel> = if single {
                queue.drain(..1).collect()
            } else {
                let batch = take_batch(&mut queue);
                metrics.per_call.observe(batch.len() as f64);
                batch
            };
            metrics.queued.dec_by(parcels.len() as i64);
            calls.push(call(client.clone(), parcels, single));
        }
    }
}

/// Puts parcels a call gave back at the front of `queue`, in their order.
fn requeue(queue: &mut VecDeque<Parcel>, parcels: Vec<Parcel>, queued: &Gauge) {
    queued.inc_by(parcels.len() as i64);
    for parcel in parcels.into_iter().rev() {
        queue.push_front(parcel);
    }
}

/// Takes from the front of `queue` what one call carries: everything, or
/// as much as fits [`MAX_CALL_BYTES`] (at least one push).
fn take_batch(queue: &mut VecDeque<Parcel>) -> Vec<Parcel> {
    let mut bytes = 0;
    let count = queue
        .iter()
        .take_while(|parcel| {
            bytes += parcel.kind.encoded_len();
            bytes <= MAX_CALL_BYTES
        })
        .count()
        .max(1);
    queue.drain(..count).collect()
}

/// One call carrying `parcels` (one `Deliver`, or with `single` the one
/// push's own RPC), answering each parcel. Gives the parcels back,
/// unanswered, when the node does not serve `Deliver`.
async fn call(mut client: CloudClient, parcels: Vec<Parcel>, single: bool) -> Option<Vec<Parcel>> {
    if single {
        for parcel in parcels {
            let outcome = match parcel.kind {
                Kind::Keys(request) => client.push_msg(request).await.map(drop),
                Kind::Room(request) => client.broadcast_room(request).await.map(drop),
            };
            let _ = parcel.answer.send(outcome);
        }
        return None;
    }
    // Each push is cloned into the request (its body is shared `Bytes`;
    // the keys are copied) so that a node without `Deliver` can still be
    // handed the parcels one by one: tonic keeps no request it refused.
    let request = DeliverReq {
        deliveries: parcels
            .iter()
            .map(|parcel| Delivery {
                kind: Some(parcel.kind.clone()),
            })
            .collect(),
    };
    let results = match client.deliver(request).await {
        Ok(reply) => reply.into_inner().results,
        Err(status) if status.code() == Code::Unimplemented => return Some(parcels),
        Err(status) => return fail(parcels, &status),
    };
    if results.len() != parcels.len() {
        let status = Status::internal(format!(
            "the node answered {} results for {} pushes",
            results.len(),
            parcels.len()
        ));
        return fail(parcels, &status);
    }
    for (parcel, result) in parcels.into_iter().zip(results) {
        let outcome = match Code::from(result.code) {
            Code::Ok => Ok(()),
            code => Err(Status::new(code, result.message)),
        };
        let _ = parcel.answer.send(outcome);
    }
    None
}

/// Answers every parcel with `status`; nothing to give back.
fn fail(parcels: Vec<Parcel>, status: &Status) -> Option<Vec<Parcel>> {
    for parcel in parcels {
        let _ = parcel.answer.send(Err(status.clone()));
    }
    None
}
