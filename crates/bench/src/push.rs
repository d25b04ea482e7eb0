//! `push`: push-by-mid requests against the logic HTTP API, as fast as
//! `concurrency` requests in flight allow.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Mutex;

use crate::stats::histogram;

/// One line of results.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub seconds: f64,
    pub requests_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

pub async fn run(
    api: &str,
    key: &str,
    requests: u64,
    concurrency: usize,
    mids: u64,
) -> anyhow::Result<Report> {
    let web = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(histogram()));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (web, next, latency, failed) = (web.clone(), next.clone(), latency.clone(), failed.clone());
            let (url, key) = (format!("{api}/goim/push/mids"), key.to_owned());
            tokio::spawn(async move {
                let mut local = histogram();
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= requests {
                        break;
                    }
                    let sent = Instant::now();
                    let mut request = web.post(format!("{url}?operation=1000&mids={}", n % mids.max(1))).body("bench");
                    if !key.is_empty() {
                        request = request.bearer_auth(&key);
                    }
                    let ok = matches!(request.send().await, Ok(response) if response.status().is_success());
                    if !ok {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    let seconds = started.elapsed().as_secs_f64();
    let latency = latency.lock().await;
    let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Report {
        mode: "push",
        requests,
        ok: requests - failed,
        failed,
        seconds,
        requests_per_sec: requests as f64 / seconds,
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
        max_us: latency.max(),
    })
}
