//! `drain`: the reference for `ingest`. The same stream setup and the same
//! publishing, consumed by one durable pull consumer that acknowledges each
//! message as it arrives and does nothing else: what NATS JetStream allows
//! on this machine for a consumer that handles one message at a time, as a
//! logic node does. The ingest's rate over this is the share of the
//! ceiling the delivery work leaves.

use std::time::Instant;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::stream;
use futures_util::StreamExt;
use serde::Serialize;

use crate::jetstream::Publisher;

/// The reference's own stream, made afresh for each run.
const STREAM: &str = "IMBENCH_DRAIN";
const SUBJECT: &str = "imbench.drain";

/// One line of results.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub commands: u64,
    pub size: usize,
    pub publish_secs: f64,
    pub seconds: f64,
    pub commands_per_sec: f64,
}

/// Publishes `commands` messages of `size` bytes and consumes them.
pub async fn run(nats: &str, commands: u64, size: usize) -> anyhow::Result<Report> {
    let js = async_nats::jetstream::new(async_nats::connect(nats).await?);
    let _ = js.delete_stream(STREAM).await;
    let stream = js
        .create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECT.to_owned()],
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("imbench".to_owned()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let drained = tokio::spawn(async move {
        let mut count = 0;
        while count < commands {
            let Some(Ok(message)) = messages.next().await else {
                break;
            };
            message
                .ack()
                .await
                .map_err(|err| anyhow::anyhow!("{err}"))?;
            count += 1;
        }
        Ok::<_, anyhow::Error>((count, Instant::now()))
    });
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let started = Instant::now();
    let mut publisher = Publisher::new(js.clone());
    for _ in 0..commands {
        publisher.publish(SUBJECT, payload.clone()).await?;
    }
    publisher.stored().await?;
    let publish_secs = started.elapsed().as_secs_f64();
    let (count, done) = drained.await??;
    anyhow::ensure!(count == commands, "drained {count} of {commands}");
    let seconds = (done - started).as_secs_f64();
    js.delete_stream(STREAM).await?;
    Ok(Report {
        mode: "drain",
        commands,
        size,
        publish_secs,
        seconds,
        commands_per_sec: commands as f64 / seconds,
    })
}
