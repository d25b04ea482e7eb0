//! `fanout`: N clients in one room; K messages published through imcloud's
//! API (or to the raw writer); every client checks what arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use hdrhistogram::Histogram;
use imcloud_client::Client;
use imcloud_proto::cloud::cloud_client::CloudClient;
use imcloud_proto::cloud::{BroadcastRoomReq, Proto};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::stats::{histogram, own_cpu_secs, source};

/// Where messages are published.
#[derive(Clone, Debug)]
pub enum Publisher {
    /// imcloud's cloud gRPC `BroadcastRoom` (address, API key).
    CloudGrpc(String, String),
    /// imcloud's logic HTTP `/im/push/room` (base URL, API key).
    LogicHttp(String, String),
    /// The raw writer's `POST /publish` (base URL).
    Raw(String),
}

/// What to run.
#[derive(Clone)]
pub struct Plan {
    pub ws_url: String,
    pub publisher: Publisher,
    pub clients: usize,
    pub messages: u32,
    pub size: usize,
    /// Messages per second; 0 = as fast as the window allows.
    pub rate: u32,
    /// Publish requests in flight at most.
    pub window: usize,
    /// Token for client `i` (the raw writer ignores it).
    pub token: Arc<dyn Fn(usize) -> String + Send + Sync>,
}

/// One line of results.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub target: String,
    pub clients: usize,
    pub messages: u32,
    pub size: usize,
    pub rate: u32,
    pub connect_secs: f64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Clients the server closed (op 6) before they got everything: a
    /// slow consumer's messages are not lost silently, they are refused.
    pub closed_by_server: u64,
    /// The first such close's reason.
    pub close_reason: Option<String>,
    pub seconds: f64,
    pub deliveries_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub harness_cpu_secs: f64,
}

struct Received {
    /// The server closed this client (op 6), e.g. as a slow consumer.
    closed: Option<String>,
    delivered: u64,
    duplicated: u64,
    latency: Histogram<u64>,
    last: Option<Instant>,
}

const ROOM: &str = "bench://1";

/// The payload: publish time (µs since `base`), sequence, padding to `size`.
fn payload(base: Instant, seq: u32, size: usize) -> Vec<u8> {
    let mut body = BytesMut::with_capacity(size.max(12));
    body.put_u64(base.elapsed().as_micros() as u64);
    body.put_u32(seq);
    body.resize(size.max(12), b'x');
    body.to_vec()
}

pub async fn run(plan: Plan) -> anyhow::Result<Report> {
    let cpu_before = own_cpu_secs();
    let connect_started = Instant::now();
    let mut clients = Vec::with_capacity(plan.clients);
    for i in 0..plan.clients {
        let mut client = Client::connect_ws_from(&plan.ws_url, source(i)).await?;
        client.auth((plan.token)(i)).await?;
        clients.push(client);
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();

    let base = Instant::now();
    let messages = plan.messages;
    let receivers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut seen = vec![false; messages as usize];
                let mut got = Received {
                    closed: None,
                    delivered: 0,
                    duplicated: 0,
                    latency: histogram(),
                    last: None,
                };
                let mut unique = 0u32;
                while unique < messages {
                    // A client that hears nothing for 10 s has lost the rest.
                    let Ok(Ok(packet)) =
                        tokio::time::timeout(Duration::from_secs(10), client.recv_push()).await
                    else {
                        break;
                    };
                    if packet.body.len() < 12 {
                        continue;
                    }
                    let sent = u64::from_be_bytes(packet.body[..8].try_into().unwrap_or_default());
                    let seq = u32::from_be_bytes(packet.body[8..12].try_into().unwrap_or_default())
                        as usize;
                    let now = base.elapsed().as_micros() as u64;
                    got.delivered += 1;
                    got.last = Some(Instant::now());
                    let _ = got.latency.record(now.saturating_sub(sent).max(1));
                    match seen.get_mut(seq) {
                        Some(flag) if *flag => got.duplicated += 1,
                        Some(flag) => {
                            *flag = true;
                            unique += 1;
                        }
                        None => {}
                    }
                }
                got
            })
        })
        .collect();

    publish(&plan, base).await?;

    let mut latency = histogram();
    let (mut delivered, mut duplicated, mut last) = (0u64, 0u64, base);
    let mut closed_by_server = 0u64;
    let mut close_reason = None;
    for receiver in receivers {
        let got = receiver.await?;
        if let Some(reason) = got.closed {
            closed_by_server += 1;
            close_reason.get_or_insert(reason);
        }
        delivered += got.delivered;
        duplicated += got.duplicated;
        let _ = latency.add(&got.latency);
        if let Some(at) = got.last {
            last = last.max(at);
        }
    }
    let expected = plan.clients as u64 * u64::from(plan.messages);
    let seconds = (last - base).as_secs_f64().max(1e-9);
    Ok(Report {
        mode: "fanout",
        target: match &plan.publisher {
            Publisher::CloudGrpc(..) => "imcloud-grpc".to_owned(),
            Publisher::LogicHttp(..) => "imcloud-http".to_owned(),
            Publisher::Raw(_) => "raw".to_owned(),
        },
        clients: plan.clients,
        messages: plan.messages,
        size: plan.size,
        rate: plan.rate,
        connect_secs,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered - duplicated),
        duplicated,
        closed_by_server,
        close_reason,
        seconds,
        deliveries_per_sec: (delivered - duplicated) as f64 / seconds,
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
        max_us: latency.max(),
        harness_cpu_secs: own_cpu_secs() - cpu_before,
    })
}

/// Publishes the messages at the planned rate, or as fast as the in-flight
/// window allows.
async fn publish(plan: &Plan, base: Instant) -> anyhow::Result<()> {
    let web = reqwest::Client::new();
    let grpc = match &plan.publisher {
        Publisher::CloudGrpc(addr, _) => Some(CloudClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        )),
        _ => None,
    };
    let window = Arc::new(Semaphore::new(plan.window.max(1)));
    let mut tick = (plan.rate > 0)
        .then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(plan.rate))));
    let mut sends = Vec::new();
    for seq in 0..plan.messages {
        if let Some(tick) = tick.as_mut() {
            tick.tick().await;
        }
        let permit = window.clone().acquire_owned().await?;
        let body = payload(base, seq, plan.size);
        let (publisher, web, grpc) = (plan.publisher.clone(), web.clone(), grpc.clone());
        sends.push(tokio::spawn(async move {
            let result: anyhow::Result<()> = match publisher {
                Publisher::CloudGrpc(_, key) => {
                    let mut request = tonic::Request::new(BroadcastRoomReq {
                        room_id: ROOM.to_owned(),
                        proto: Some(Proto {
                            ver: 1,
                            op: 1000,
                            seq: 0,
                            body: body.into(),
                        }),
                    });
                    if !key.is_empty() {
                        request
                            .metadata_mut()
                            .insert("authorization", format!("Bearer {key}").parse()?);
                    }
                    match grpc {
                        Some(mut grpc) => grpc
                            .broadcast_room(request)
                            .await
                            .map(drop)
                            .map_err(Into::into),
                        None => Ok(()),
                    }
                }
                Publisher::LogicHttp(url, key) => {
                    let mut request = web
                        .post(format!(
                            "{url}/goim/push/room?operation=1000&type=bench&room=1"
                        ))
                        .body(body);
                    if !key.is_empty() {
                        request = request.bearer_auth(key);
                    }
                    request
                        .send()
                        .await?
                        .error_for_status()
                        .map(drop)
                        .map_err(Into::into)
                }
                Publisher::Raw(url) => web
                    .post(format!("{url}/publish"))
                    .body(body)
                    .send()
                    .await?
                    .error_for_status()
                    .map(drop)
                    .map_err(Into::into),
            };
            drop(permit);
            result
        }));
    }
    for send in sends {
        send.await??;
    }
    Ok(())
}

/// The room every fanout client joins on imcloud.
pub fn room() -> &'static str {
    ROOM
}
