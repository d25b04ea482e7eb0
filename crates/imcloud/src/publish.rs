//! `imcloud publish`: sends push commands to NATS JetStream, to try the
//! ingest by hand or from a script. Each command is checked first as a
//! logic node would check it (a bad one is refused here, not dead-lettered
//! there), and reported once the stream has stored it.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, anyhow};
use async_nats::jetstream;

use crate::config::logic_config;

/// Commands in flight at once: the stream stores them in order either way.
const IN_FLIGHT: usize = 256;

/// Where to publish, and what.
#[derive(Clone, Debug, clap::Args)]
pub struct PublishArgs {
    /// Commands, one JSON object each, e.g.
    /// '{"type":"mids","mids":[123],"msg":"hello"}'; read one per line from
    /// standard input when none is given.
    pub commands: Vec<String>,
    /// The NATS server (default: the config's `[logic.ingest] nats_url`, or
    /// nats://127.0.0.1:4222).
    #[arg(long)]
    pub nats: Option<String>,
    /// The subject (default: the config's `[logic.ingest] subject`).
    #[arg(long)]
    pub subject: Option<String>,
}

/// Publishes every command and prints `<stream> <sequence>` for each, in
/// order, once stored.
pub async fn publish(config: Option<&Path>, args: PublishArgs) -> anyhow::Result<()> {
    let ingest = logic_config(config)?.ingest;
    let url = args
        .nats
        .or((!ingest.nats_url.is_empty()).then_some(ingest.nats_url))
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let subject = args.subject.unwrap_or(ingest.subject);
    let client = async_nats::connect(&url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))?;
    let js = jetstream::new(client);
    let commands: Box<dyn Iterator<Item = std::io::Result<String>>> = if args.commands.is_empty() {
        Box::new(std::io::stdin().lock().lines())
    } else {
        Box::new(args.commands.into_iter().map(Ok))
    };
    let mut in_flight = VecDeque::new();
    for (n, command) in commands.enumerate() {
        let command = command.context("reading the commands")?;
        if command.trim().is_empty() {
            continue;
        }
        imcloud_logic::check_command(command.as_bytes())
            .map_err(|why| anyhow!("command {}: {why}", n + 1))?;
        let ack = js
            .publish(subject.clone(), command.into_bytes().into())
            .await
            .with_context(|| format!("publishing on {subject}"))?;
        in_flight.push_back(ack);
        if in_flight.len() == IN_FLIGHT {
            stored(in_flight.pop_front(), &subject).await?;
        }
    }
    while !in_flight.is_empty() {
        stored(in_flight.pop_front(), &subject).await?;
    }
    Ok(())
}

/// Waits for the stream to store one command, and prints where.
async fn stored(
    ack: Option<jetstream::context::PublishAckFuture>,
    subject: &str,
) -> anyhow::Result<()> {
    let Some(ack) = ack else { return Ok(()) };
    let ack = ack.await.with_context(|| {
        format!(
            "no JetStream stream stored the command: a logic node with \
             [logic.ingest] nats_url creates the stream for {subject} when it starts"
        )
    })?;
    println!("{} {}", ack.stream, ack.sequence);
    Ok(())
}
