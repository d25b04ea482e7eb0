//! `push`: push-by-mid requests against the logic HTTP API, as fast as
//! `concurrency` requests in flight allow, to users that are online (one
//! WebSocket client per mid, connected first, reading every push) or not.
//! With clients, a run counts as done when every push reached its device,
//! and `delivered` says how many did: a push that finds no session costs
//! logic a store lookup and no cloud node call, which is not what users run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Mutex, Notify};

use crate::conns;
use crate::stats::histogram;

/// What to run.
pub struct Plan {
    /// Logic's HTTP API.
    pub api: String,
    pub api_key: String,
    pub requests: u64,
    pub concurrency: usize,
    /// Users pushed to: mids 0..mids, round robin.
    pub mids: u64,
    /// Users named in one request.
    pub per_request: u64,
    /// Connect one client per mid here first (and count what they get).
    pub online: Option<String>,
    /// The token of the client of mid `i`.
    pub token: Arc<dyn Fn(usize) -> String + Send + Sync>,
}

/// One line of results.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub requests: u64,
    pub per_request: u64,
    pub online: bool,
    pub ok: u64,
    pub failed: u64,
    /// User messages numbered and kept (the answers' `stored`).
    pub stored: u64,
    /// Pushes the online clients received (`messages` expected).
    pub delivered: u64,
    pub messages: u64,
    pub seconds: f64,
    pub requests_per_sec: f64,
    pub messages_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

pub async fn run(plan: Plan) -> anyhow::Result<Report> {
    let per_request = plan.per_request.clamp(1, plan.mids.max(1));
    let messages = plan.requests * per_request;
    let delivered = Arc::new(AtomicU64::new(0));
    // Notified when the last expected push arrives.
    let all_delivered = Arc::new(Notify::new());
    if let Some(ws) = &plan.online {
        let token = plan.token.clone();
        let (_, clients) = conns::run(ws, plan.mids as usize, 64, None, |i| token(i)).await?;
        for mut client in clients {
            let (delivered, all_delivered) = (delivered.clone(), all_delivered.clone());
            tokio::spawn(async move {
                while client.recv_push().await.is_ok() {
                    if delivered.fetch_add(1, Ordering::Relaxed) + 1 == messages {
                        all_delivered.notify_one();
                    }
                }
            });
        }
    }
    let web = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(histogram()));
    let failed = Arc::new(AtomicU64::new(0));
    let stored = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..plan.concurrency.max(1))
        .map(|_| {
            let (web, next, latency) = (web.clone(), next.clone(), latency.clone());
            let (failed, stored) = (failed.clone(), stored.clone());
            let (url, key) = (format!("{}/im/push/mids", plan.api), plan.api_key.clone());
            let (requests, mids) = (plan.requests, plan.mids.max(1));
            tokio::spawn(async move {
                let mut local = histogram();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= requests {
                        break;
                    }
                    let first = n * per_request;
                    let targets: Vec<String> = (first..first + per_request)
                        .map(|i| (i % mids).to_string())
                        .collect();
                    let sent = Instant::now();
                    let mut request = web
                        .post(&url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(format!("mids={}&msg=bench", targets.join(",")));
                    if !key.is_empty() {
                        request = request.bearer_auth(&key);
                    }
                    match answered(request).await {
                        Some(count) => {
                            stored.fetch_add(count, Ordering::Relaxed);
                        }
                        None => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let _ = local.record((sent.elapsed().as_micros() as u64).max(1));
                }
                let _ = latency.lock().await.add(&local);
            })
        })
        .collect();
    for worker in workers {
        worker.await?;
    }
    if plan.online.is_some() {
        // Every push written to its device (or ten seconds, then say how many).
        let _ = tokio::time::timeout(Duration::from_secs(10), all_delivered.notified()).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let latency = latency.lock().await;
    let failed = failed.load(Ordering::Relaxed);
    Ok(Report {
        mode: "push",
        requests: plan.requests,
        per_request,
        online: plan.online.is_some(),
        ok: plan.requests - failed,
        failed,
        stored: stored.load(Ordering::Relaxed),
        delivered: delivered.load(Ordering::Relaxed),
        messages,
        seconds,
        requests_per_sec: plan.requests as f64 / seconds,
        messages_per_sec: messages as f64 / seconds,
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
        max_us: latency.max(),
    })
}

/// The answer's `stored`, or `None` when the push failed.
async fn answered(request: reqwest::RequestBuilder) -> Option<u64> {
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: serde_json::Value = response.json().await.ok()?;
    Some(body["data"]["stored"].as_u64().unwrap_or(0))
}
