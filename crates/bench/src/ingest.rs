//! `ingest`: push commands published to NATS JetStream and delivered by the
//! logic nodes to online WebSocket clients (one per user, connected first).
//! Each command carries its publish time in its body, so every client
//! measures publish-to-device latency on the one machine's clock. At
//! `rate` 0 commands are published as fast as the stream stores them, and
//! the run's rate is the ingest's throughput (commands from the first
//! publish until the last one reached its devices); at a fixed rate the
//! latency is what a device sees under that load.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::conns;
use crate::jetstream::Publisher;
use crate::stats::histogram;

/// Which command.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Pushes by mid: numbered, stored, delivered to each user's device.
    Mids,
    /// Room pushes: every client is in the room.
    Room,
}

/// The room client `i` joins for room commands, of `rooms`.
pub fn room_of(i: usize, rooms: usize) -> String {
    format!("live://ingest-bench-{}", i % rooms.max(1))
}

/// What to run.
pub struct Plan {
    pub nats: String,
    pub subject: String,
    pub ws: String,
    pub kind: Kind,
    pub commands: u64,
    /// Online users (mids 0..clients), one client each.
    pub clients: usize,
    /// Users named in one mids command (round robin).
    pub per_command: usize,
    /// Rooms the clients are spread over (room commands go round robin).
    pub rooms: usize,
    /// Commands per second; 0: as fast as the stream takes them.
    pub rate: u32,
    /// The token of the client of mid `i`.
    pub token: Arc<dyn Fn(usize) -> String + Send + Sync>,
}

/// One line of results.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub kind: Kind,
    pub commands: u64,
    pub clients: usize,
    pub per_command: usize,
    pub rooms: usize,
    pub rate: u32,
    /// Pushes the clients should receive, and did.
    pub deliveries: u64,
    pub delivered: u64,
    pub publish_secs: f64,
    pub seconds: f64,
    pub commands_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

pub async fn run(plan: Plan) -> anyhow::Result<Report> {
    let clients = plan.clients.max(1);
    let rooms = plan.rooms.clamp(1, clients);
    let per_command = match plan.kind {
        Kind::Mids => plan.per_command.clamp(1, clients),
        Kind::Room => clients / rooms,
    };
    // Round robin: user i gets command n when i is among its targets.
    let expected = |i: usize| -> u64 {
        (0..plan.commands)
            .filter(|n| match plan.kind {
                Kind::Room => *n as usize % rooms == i % rooms,
                Kind::Mids => {
                    let first = (*n as usize * per_command) % clients;
                    (i + clients - first) % clients < per_command
                }
            })
            .count() as u64
    };
    let (_, open) = conns::run(&plan.ws, clients, 64, None, |i| (plan.token)(i)).await?;
    let mut readers = Vec::with_capacity(clients);
    for (i, mut client) in open.into_iter().enumerate() {
        let want = expected(i);
        readers.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut got = 0;
            while got < want {
                let Ok(push) = client.recv_push().await else {
                    break;
                };
                let sent: u128 = std::str::from_utf8(&push.body)
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .unwrap_or(0);
                let micros = (now_nanos().saturating_sub(sent) / 1000) as u64;
                let _ = latency.record(micros.max(1));
                got += 1;
            }
            (got, latency, Instant::now())
        }));
    }

    let nats = async_nats::connect(&plan.nats).await?;
    let mut publisher = Publisher::new(async_nats::jetstream::new(nats));
    let started = Instant::now();
    for n in 0..plan.commands {
        if plan.rate > 0 {
            let due = started + Duration::from_secs_f64(n as f64 / f64::from(plan.rate));
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = now_nanos();
        let command = match plan.kind {
            Kind::Mids => {
                let first = n as usize * per_command;
                let mids: Vec<usize> = (first..first + per_command).map(|i| i % clients).collect();
                serde_json::json!({"type": "mids", "mids": mids, "msg": sent.to_string()})
            }
            Kind::Room => {
                let room = room_of(n as usize, rooms);
                serde_json::json!({"type": "room", "room": room, "msg": sent.to_string()})
            }
        };
        publisher
            .publish(&plan.subject, command.to_string().into())
            .await?;
    }
    publisher.stored().await?;
    let publish_secs = started.elapsed().as_secs_f64();

    let mut latency = histogram();
    let (mut delivered, mut last) = (0, started);
    for reader in readers {
        // A client still waiting after a minute: report what arrived.
        let Ok(done) = tokio::time::timeout(Duration::from_secs(60), reader).await else {
            continue;
        };
        let (got, local, at) = done?;
        delivered += got;
        last = last.max(at);
        let _ = latency.add(&local);
    }
    let seconds = (last - started).as_secs_f64();
    let deliveries = (0..clients).map(expected).sum();
    Ok(Report {
        mode: "ingest",
        kind: plan.kind,
        commands: plan.commands,
        clients,
        per_command,
        rooms,
        rate: plan.rate,
        deliveries,
        delivered,
        publish_secs,
        seconds,
        commands_per_sec: plan.commands as f64 / seconds,
        deliveries_per_sec: delivered as f64 / seconds,
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
        max_us: latency.max(),
    })
}
