//! `conns`: open N authenticated clients; connect time and the server's
//! memory per connection.

use std::time::Instant;

use futures_util::StreamExt;
use imcloud_client::Client;
use serde::Serialize;

use crate::stats::{rss_kib, source};

/// One line of results.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub clients: usize,
    pub concurrency: usize,
    pub connect_secs: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub kib_per_connection: Option<f64>,
}

/// Connects `clients` clients (spread over 127.0.0.1-8, `concurrency` at a
/// time), reading the RSS of `pid` (the server) before and after. The
/// clients are returned so the caller decides when they leave.
pub async fn run(
    ws_url: &str,
    clients: usize,
    concurrency: usize,
    pid: Option<u32>,
    token: impl Fn(usize) -> String,
) -> anyhow::Result<(Report, Vec<Client>)> {
    let before = pid.and_then(rss_kib);
    let started = Instant::now();
    let mut open = Vec::with_capacity(clients);
    let connects = futures_util::stream::iter(0..clients).map(|i| {
        let token = token(i);
        async move {
            let mut client = Client::connect_ws_from(ws_url, source(i)).await?;
            client.auth(token).await?;
            Ok::<_, anyhow::Error>(client)
        }
    });
    let mut connects = std::pin::pin!(connects.buffer_unordered(concurrency.max(1)));
    while let Some(client) = connects.next().await {
        open.push(client?);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let after = pid.and_then(rss_kib);
    let per = match (before, after) {
        (Some(before), Some(after)) if clients > 0 => {
            Some(after.saturating_sub(before) as f64 / clients as f64)
        }
        _ => None,
    };
    Ok((
        Report {
            mode: "conns",
            clients,
            concurrency,
            connect_secs,
            rss_before_kib: before,
            rss_after_kib: after,
            kib_per_connection: per,
        },
        open,
    ))
}
