//! The NATS JetStream source: one durable pull consumer shared by every
//! logic node. The stream and the consumer are created when missing, so a
//! fresh NATS needs no setup. NATS down: the client reconnects by itself;
//! the outage is logged once when it starts and once when it ends.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, stream};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Outcome, handle};
use crate::config::IngestConfig;
use crate::push::Pusher;

/// The header a dead-lettered command carries its reason in.
const REASON_HEADER: &str = "imcloud-reason";

/// Consumes commands until `stop`, reconnecting after any failure.
pub(crate) async fn consume(config: IngestConfig, pusher: Arc<Pusher>, stop: CancellationToken) {
    let mut down = false;
    loop {
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = consume_once(&config, &pusher, &mut down) => result,
        };
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
    pusher: &Pusher,
    down: &mut bool,
) -> Result<(), IngestError> {
    let client = async_nats::connect(&config.nats_url).await?;
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
                max_deliver: config.max_deliver,
                ..Default::default()
            },
        )
        .await
        .map_err(|err| IngestError::Setup(err.to_string()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|err| IngestError::Setup(err.to_string()))?;
    if std::mem::replace(down, false) {
        info!("ingest consuming again");
    } else {
        info!(stream = %config.stream, subject = %config.subject, consumer = %config.consumer, "ingest consuming");
    }
    while let Some(message) = messages.next().await {
        let message = message.map_err(|err| IngestError::Consume(err.to_string()))?;
        let attempt = message.info().map_or(1, |info| info.delivered);
        let outcome = match handle(pusher, &message.payload).await {
            Outcome::Retry(reason) if attempt >= config.max_deliver => {
                Outcome::Reject(format!("failed {attempt} times, the last: {reason}"))
            }
            outcome => outcome,
        };
        let acked = match outcome {
            Outcome::Done => message.ack().await,
            Outcome::Retry(reason) => {
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
