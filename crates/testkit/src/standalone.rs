//! What the standalone tests share: a node on ports the OS picks, and a
//! Prometheus text scrape.

use std::collections::HashMap;

use imcloud::{Standalone, StandaloneFile};
use tokio_util::sync::CancellationToken;

/// The standalone defaults, on ports the OS picks.
pub fn any_ports() -> StandaloneFile {
    let mut file = StandaloneFile::default();
    let any = "127.0.0.1:0".parse().expect("addr");
    file.cloud_listen.tcp = any;
    file.cloud_listen.ws = any;
    file.cloud_listen.grpc = any;
    file.cloud_listen.http = any;
    file.logic_listen.grpc = any;
    file.logic_listen.http = any;
    file
}

/// A standalone imcloud on ports the OS picks; cancel the token to stop it.
pub async fn standalone() -> (Standalone, CancellationToken) {
    let shutdown = CancellationToken::new();
    let imcloud = Standalone::start(any_ports(), shutdown.clone())
        .await
        .expect("start standalone");
    (imcloud, shutdown)
}

/// Every sample of a `/metrics` page: `name{labels}` -> value.
pub async fn scrape(base: &str) -> HashMap<String, f64> {
    let response = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("metrics text");
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// One sample, 0 when the series does not exist yet.
pub fn sample(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}
