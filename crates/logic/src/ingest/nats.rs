//! The NATS JetStream source: one durable pull consumer shared by every
//! logic node. The stream and the consumer are created when missing, so a
//! fresh NATS needs no setup. NATS down: the client reconnects by itself;
//! the outage is logged once when it starts and once when it ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, stream};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Busy, Command, Handler, Lanes, Outcome};
use crate::config::IngestConfig;
use crate::metrics::Metrics;

/// The header a dead-lettered command carries its reason in.
const REASON_HEADER: &str = "imcloud-reason";

/// Consumes commands until `stop`, reconnecting after any failure.
pub(crate) async fn consume(
    config: IngestConfig,
    handler: Arc<Handler>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut down = false;
    loop {
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = consume_once(&config, &handler, metrics.clone(), &mut down) => result,
        };
        metrics.set_ingest_consuming(false);
        if let Err(err) = result
            && !std::mem::replace(&mut down, true)
        {
            warn!(error = %err, nats = %config.nats_url, "ingest not consuming; retrying");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Connects, sets up the stream and consumer, and handles commands until
/// something fails.
async fn consume_once(
    config: &IngestConfig,
    handler: &Handler,
    metrics: Arc<Metrics>,
    down: &mut bool,
) -> Result<(), IngestError> {
    let client = async_nats::ConnectOptions::new()
        .event_callback(connection_events(metrics.clone()))
        .connect(&config.nats_url)
        .await?;
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![config.subject.clone()],
            ..Default::default()
        })
        .await
        .map_err(|err| IngestError::Setup(err.to_string()))?;
    let consumer: PullConsumer = stream
        .get_or_create_consumer(
            &config.consumer,
            pull::Config {
                durable_name: Some(config.consumer.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                // Counted here (a command waiting for another node's
                // delivery of its id is not failing): NATS never gives up.
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|err| IngestError::Setup(err.to_string()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|err| IngestError::Setup(err.to_string()))?;
    metrics.set_ingest_consuming(true);
    if std::mem::replace(down, false) {
        info!("ingest consuming again");
    } else {
        info!(stream = %config.stream, subject = %config.subject, consumer = %config.consumer, "ingest consuming");
    }
    deliver_all(&client, config, handler, &metrics, &mut messages).await
}

/// Delivers the consumer's commands, up to `concurrency` at once, each
/// receiver's in order (see `lanes.rs`), until the consumer fails.
async fn deliver_all(
    client: &async_nats::Client,
    config: &IngestConfig,
    handler: &Handler,
    metrics: &Metrics,
    messages: &mut pull::Stream,
) -> Result<(), IngestError> {
    let mut busy = Busy::default();
    let mut running = FuturesUnordered::new();
    // The next command, waiting for its receivers to be free: nothing after
    // it starts meanwhile, so no receiver's order is overtaken.
    let mut waiting: Option<(Received, Command, Lanes)> = None;
    loop {
        if let Some((_, _, lanes)) = &waiting
            && busy.free(lanes)
            && let Some((received, command, lanes)) = waiting.take()
        {
            busy.start(&lanes);
            running.push(deliver(handler, received, command, lanes));
        }
        tokio::select! {
            Some((received, lanes, outcome)) = running.next(), if !running.is_empty() => {
                busy.finish(&lanes);
                settle(client, config, metrics, received, outcome).await?;
            }
            message = messages.next(), if waiting.is_none() && busy.running() < config.concurrency => {
                let message = match message {
                    Some(Ok(message)) => message,
                    failed => {
                        // Deliveries under way finish and are settled first:
                        // dropped, they would only be delivered again.
                        while let Some((received, lanes, outcome)) = running.next().await {
                            busy.finish(&lanes);
                            let _ = settle(client, config, metrics, received, outcome).await;
                        }
                        return Err(IngestError::Consume(match failed {
                            Some(Err(err)) => err.to_string(),
                            _ => "the consumer's stream ended".to_owned(),
                        }));
                    }
                };
                let received = Received::new(message, &config.stream);
                match handler.parse(&received.message.payload) {
                    Err(reason) => {
                        settle(client, config, metrics, received, Outcome::Reject(reason)).await?;
                    }
                    // Started at the top of the loop once its receivers are free.
                    Ok(command) => {
                        let lanes = Lanes::of(&command.target);
                        waiting = Some((received, command, lanes));
                    }
                }
            }
        }
    }
}

/// A message taken from the consumer, with what settling it needs.
struct Received {
    message: jetstream::Message,
    /// This delivery's number (1: the first).
    attempt: i64,
    /// Messages left in the consumer after this one (the lag).
    pending: u64,
    /// When it was published (ns since the epoch).
    published: Option<i128>,
    /// The stream's number for the message, as an idempotency key.
    engine_id: Option<String>,
}

impl Received {
    fn new(message: jetstream::Message, stream: &str) -> Received {
        let info = message.info().ok().map(|info| {
            let engine_id = format!("nats:{stream}:{}", info.stream_sequence);
            let published = info.published.unix_timestamp_nanos();
            (info.delivered, info.pending, published, engine_id)
        });
        let (attempt, pending, published, engine_id) = match info {
            Some((attempt, pending, published, id)) => {
                (attempt, pending, Some(published), Some(id))
            }
            None => (1, 0, None, None),
        };
        Received {
            message,
            attempt,
            pending,
            published,
            engine_id,
        }
    }
}

/// Delivers one command; hands back what settling it needs.
async fn deliver(
    handler: &Handler,
    received: Received,
    command: Command,
    lanes: Lanes,
) -> (Received, Lanes, Outcome) {
    let outcome = handler
        .deliver(command, received.engine_id.as_deref())
        .await;
    (received, lanes, outcome)
}

/// Acknowledges, retries or dead-letters a handled message, and counts it.
async fn settle(
    client: &async_nats::Client,
    config: &IngestConfig,
    metrics: &Metrics,
    received: Received,
    outcome: Outcome,
) -> Result<(), IngestError> {
    let Received {
        message,
        attempt,
        pending,
        published,
        ..
    } = received;
    let outcome = match outcome {
        Outcome::Retry(reason) if attempt >= config.max_deliver => {
            Outcome::Reject(format!("failed {attempt} times, the last: {reason}"))
        }
        outcome => outcome,
    };
    let latency = published.map(|at| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as i128);
        (now - at).max(0) as f64 / 1e9
    });
    let result = match outcome {
        Outcome::Done => "delivered",
        Outcome::Duplicate => "duplicate",
        Outcome::Retry(_) | Outcome::Wait(_) => "retried",
        Outcome::Reject(_) => "dead_lettered",
    };
    metrics.ingested(result, pending, latency);
    let acked = match outcome {
        Outcome::Done | Outcome::Duplicate => message.ack().await,
        Outcome::Retry(reason) => {
            tracing::debug!(attempt, reason, "ingest command retried");
            let delay = backoff(config.retry_delay, attempt);
            message.ack_with(AckKind::Nak(Some(delay))).await
        }
        Outcome::Wait(reason) => {
            tracing::debug!(attempt, reason, "ingest command waits for its id");
            message
                .ack_with(AckKind::Nak(Some(config.retry_delay)))
                .await
        }
        Outcome::Reject(reason) => {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(REASON_HEADER, reason.as_str());
            client
                .publish_with_headers(
                    config.dead_letter_subject.clone(),
                    headers,
                    message.payload.clone(),
                )
                .await
                .map_err(|err| IngestError::Consume(err.to_string()))?;
            warn!(reason, "ingest command dead-lettered");
            message.ack().await
        }
    };
    acked.map_err(|err| IngestError::Consume(err.to_string()))
}

/// How long a command that failed `attempt` times waits: `retry_delay`,
/// doubling with each failure (at most 64 times it), so a long outage is not
/// hammered by every command in the stream.
fn backoff(retry_delay: Duration, attempt: i64) -> Duration {
    retry_delay * (1 << (attempt.clamp(1, 7) - 1))
}

/// Follows the connection: the client reconnects by itself and the consumer
/// goes on, so a lost connection is not an error of the loop; it is logged
/// once when lost and once when back, and `ingest_consuming` follows it.
fn connection_events(
    metrics: Arc<Metrics>,
) -> impl Fn(async_nats::Event) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>> + Send + Sync
{
    let lost = Arc::new(AtomicBool::new(false));
    move |event| {
        let (metrics, lost) = (metrics.clone(), lost.clone());
        Box::pin(async move {
            match event {
                async_nats::Event::Disconnected => {
                    metrics.set_ingest_consuming(false);
                    if !lost.swap(true, Ordering::Relaxed) {
                        warn!("ingest lost its NATS connection; reconnecting");
                    }
                }
                async_nats::Event::Connected => {
                    metrics.set_ingest_consuming(true);
                    if lost.swap(false, Ordering::Relaxed) {
                        info!("ingest reconnected to NATS");
                    }
                }
                _ => {}
            }
        })
    }
}

/// Why the ingest stopped consuming (it starts again by itself).
#[derive(Debug, thiserror::Error)]
enum IngestError {
    #[error("cannot connect: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("cannot set up the stream and consumer: {0}")]
    Setup(String),
    #[error("{0}")]
    Consume(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_doubling_up_to_64_times_the_delay() {
        let second = Duration::from_secs(1);
        let delays: Vec<u64> = (1..=9).map(|n| backoff(second, n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
    }
}
