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
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Handler, Outcome};
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
    while let Some(message) = messages.next().await {
        let message = message.map_err(|err| IngestError::Consume(err.to_string()))?;
        let (attempt, pending, published, engine_id) =
            message.info().map_or((1, 0, None, None), |info| {
                let engine_id = format!("nats:{}:{}", config.stream, info.stream_sequence);
                let published = Some(info.published);
                (info.delivered, info.pending, published, Some(engine_id))
            });
        let outcome = match handler.handle(&message.payload, engine_id.as_deref()).await {
            Outcome::Retry(reason) if attempt >= config.max_deliver => {
                Outcome::Reject(format!("failed {attempt} times, the last: {reason}"))
            }
            outcome => outcome,
        };
        let latency = published.map(|at| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as i128);
            (now - at.unix_timestamp_nanos()).max(0) as f64 / 1e9
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
            Outcome::Retry(reason) | Outcome::Wait(reason) => {
                tracing::debug!(attempt, reason, "ingest command retried");
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
        acked.map_err(|err| IngestError::Consume(err.to_string()))?;
    }
    Err(IngestError::Consume(
        "the consumer's stream ended".to_owned(),
    ))
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
