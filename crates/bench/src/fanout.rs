//! `fanout`: N WebSocket clients in one room; K messages published to
//! imcloud (logic's HTTP API or the cloud's gRPC) or to a raw writer; every
//! client checks what arrives: nothing lost, nothing twice, and how late.
//!
//! The harness has to be faster than what it measures, on the same cores:
//! each client is one task with one fixed read buffer that frames are
//! parsed in place from, and a message's arrival is one store into a
//! preallocated array (its time taken once per read). No allocation, lock
//! or histogram per message; one shared atomic add per read. Latencies are
//! built once at the end from the publisher's send times.
//!
//! `--window W` at rate 0: message i is published only once messages up to
//! i - W reached every client (a 1 s wait gives up and counts a stall), so
//! what is measured is delivery, not how much a server can queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{StreamExt, stream};
use imcloud_proto::cloud::cloud_client::CloudClient;
use imcloud_proto::cloud::{BroadcastRoomReq, Proto};
use imcloud_protocol::{Op, Packet};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::timeout;

use crate::stats::{cpu_secs, histogram, own_cpu_secs, source};
use crate::wsframe;

/// Where messages are published.
#[derive(Clone, Debug)]
pub enum Publisher {
    /// imcloud's cloud gRPC `BroadcastRoom` (address, API key).
    CloudGrpc(String, String),
    /// imcloud's logic HTTP `/goim/push/room` (base URL, API key).
    LogicHttp(String, String),
    /// A raw writer's publish socket: `[u32 BE len][payload]` (address).
    Raw(String),
}

/// What a WebSocket frame from the server carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Framing {
    /// goim packets (imcloud, `imbench raw`).
    Goim,
    /// The message itself (`fanbench serve-raw --ws`); the upgrade is
    /// the subscription.
    Bare,
    /// goim packets back to back on TCP, no WebSocket (`--ws tcp://ADDR`:
    /// imcloud's TCP port, `imbench raw --tcp`).
    Tcp,
}

/// What to run.
#[derive(Clone)]
pub struct Plan {
    pub ws_url: String,
    pub framing: Framing,
    pub publisher: Publisher,
    pub clients: usize,
    pub messages: u32,
    pub size: usize,
    /// Messages per second; 0 = as fast as the window allows.
    pub rate: u32,
    /// See the module docs.
    pub window: u32,
    /// The server's pid, for its CPU time over the run.
    pub server_pid: Option<u32>,
    /// Token for client `i` (a raw writer ignores it).
    pub token: Arc<dyn Fn(usize) -> String + Send + Sync>,
}

/// One line of results.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub target: String,
    pub clients: usize,
    pub subscribed: usize,
    pub messages: u32,
    pub size: usize,
    pub rate: u32,
    pub window: u32,
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
    pub window_stalls: u64,
    /// From the first publish to the last arrival.
    pub seconds: f64,
    pub deliveries_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Deliveries per `read()` on the clients' side: how well writes coalesce.
    pub deliveries_per_read: f64,
    pub harness_cpu_secs: f64,
    /// The server's CPU time over the same phase, when `--pid` is given.
    pub server_cpu_secs: Option<f64>,
    /// Server CPU per delivery, in µs.
    pub server_cpu_us_per_delivery: Option<f64>,
}

/// Bytes read at once per client; a frame larger than this grows it.
const READ_BUFFER: usize = 16 * 1024;
/// Connects (with their upgrade and auth) in flight at once.
const CONNECTS_IN_FLIGHT: usize = 128;
/// A run ends when nothing arrived for this long.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The length of the sequence number that starts each message (hex digits).
const SEQ_DIGITS: usize = 16;

/// The room every fanout client joins on imcloud.
pub fn room() -> &'static str {
    "bench://1"
}

pub async fn run(plan: Plan) -> anyhow::Result<Report> {
    let connect_started = Instant::now();
    let subs: Vec<TcpStream> = stream::iter(0..plan.clients)
        .map(|i| subscribe(&plan, i))
        .buffer_unordered(CONNECTS_IN_FLIGHT)
        .filter_map(|sub| async move { sub.ok() })
        .collect()
        .await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    anyhow::ensure!(!subs.is_empty(), "no client could subscribe");
    let subscribed = subs.len();

    let cpu_before = (own_cpu_secs(), plan.server_pid.and_then(cpu_secs));
    let base = Instant::now();
    let total = Arc::new(Progress::default());
    let sockets: Vec<Arc<TcpStream>> = subs.into_iter().map(Arc::new).collect();
    let readers: Vec<_> = sockets
        .iter()
        .map(|socket| {
            tokio::spawn(read(
                socket.clone(),
                plan.framing,
                base,
                plan.messages,
                total.clone(),
            ))
        })
        .collect();

    let sent = Arc::new(
        (0..plan.messages)
            .map(|_| AtomicU64::new(0))
            .collect::<Vec<_>>(),
    );
    let window_stalls = publish(&plan, base, subscribed as u64, &total, &sent).await?;

    // Until everything arrived, or nothing more does.
    let expected = subscribed as u64 * u64::from(plan.messages);
    total.until(expected, DRAIN_TIMEOUT).await;
    for socket in &sockets {
        let _ = socket2::SockRef::from(&**socket).shutdown(std::net::Shutdown::Both);
    }
    let harness_cpu_secs = own_cpu_secs() - cpu_before.0;
    let server_cpu_secs = cpu_before
        .1
        .zip(plan.server_pid.and_then(cpu_secs))
        .map(|(before, after)| after - before);

    let mut latency = histogram();
    let (mut delivered, mut duplicated, mut reads, mut last) = (0u64, 0u64, 0u64, 0u64);
    let (mut closed_by_server, mut close_reason) = (0, None);
    for reader in readers {
        let got = reader.await?;
        if let Some(reason) = got.closed {
            closed_by_server += 1;
            close_reason.get_or_insert(reason);
        }
        duplicated += got.duplicated;
        reads += got.reads;
        for (seq, arrived) in got.arrived.iter().enumerate() {
            if *arrived == 0 {
                continue;
            }
            delivered += 1;
            let arrived = u64::from(*arrived);
            last = last.max(arrived);
            let sent = sent[seq].load(Ordering::Relaxed);
            let _ = latency.record(arrived.saturating_sub(sent).max(1));
        }
    }
    let seconds = (last as f64 / 1e6).max(1e-9);
    Ok(Report {
        mode: "fanout",
        target: match &plan.publisher {
            Publisher::CloudGrpc(..) => "imcloud-grpc".to_owned(),
            Publisher::LogicHttp(..) => "imcloud-http".to_owned(),
            Publisher::Raw(_) => "raw".to_owned(),
        },
        clients: plan.clients,
        subscribed,
        messages: plan.messages,
        size: plan.size,
        rate: plan.rate,
        window: plan.window,
        connect_secs,
        expected,
        delivered,
        lost: expected - delivered,
        duplicated,
        closed_by_server,
        close_reason,
        window_stalls,
        seconds,
        deliveries_per_sec: delivered as f64 / seconds,
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
        max_us: latency.max(),
        deliveries_per_read: delivered as f64 / reads.max(1) as f64,
        harness_cpu_secs,
        server_cpu_secs,
        server_cpu_us_per_delivery: server_cpu_secs.map(|cpu| cpu * 1e6 / delivered.max(1) as f64),
    })
}

/// Connects client `i` from its source address, upgrades, and with goim
/// framing authenticates (op 7) and waits for op 8.
async fn subscribe(plan: &Plan, i: usize) -> anyhow::Result<TcpStream> {
    let url = plan
        .ws_url
        .strip_prefix("ws://")
        .or_else(|| plan.ws_url.strip_prefix("tcp://"))
        .unwrap_or(&plan.ws_url);
    let (host, path) = url.split_once('/').unwrap_or((url, ""));
    let addr: SocketAddr = tokio::net::lookup_host(host)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host}: no address"))?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source(i), 0))?;
    let mut stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    if plan.framing == Framing::Tcp {
        let auth = Packet::new(Op::AUTH, 1, (plan.token)(i)).encode()?;
        stream.write_all(auth.as_bytes()).await?;
        let mut rest = BytesMut::new();
        let reply = wsframe::read_packet(&mut stream, &mut rest).await?;
        anyhow::ensure!(
            reply.op == Op::AUTH_REPLY,
            "not subscribed: {:?}",
            String::from_utf8_lossy(&reply.body)
        );
        anyhow::ensure!(rest.is_empty(), "pushed to before it subscribed");
        return Ok(stream);
    }
    let mut buf = wsframe::client_upgrade(&mut stream, host, &format!("/{path}")).await?;
    if plan.framing == Framing::Goim {
        let auth = Packet::new(Op::AUTH, 1, (plan.token)(i)).encode()?;
        stream
            .write_all(&wsframe::client_frame(auth.as_bytes()))
            .await?;
        let (_, header, len) = wsframe::read_frame(&mut stream, &mut buf).await?;
        let payload = &buf[header..header + len];
        anyhow::ensure!(
            payload.get(8..12) == Some(&Op::AUTH_REPLY.0.to_be_bytes()[..]),
            "not subscribed: {:?}",
            String::from_utf8_lossy(payload)
        );
        buf.drain(..header + len);
    }
    anyhow::ensure!(buf.is_empty(), "pushed to before it subscribed");
    Ok(stream)
}

/// Deliveries counted by every client (one add per read), and a wake-up
/// for whoever waits on them: the publisher's window, the final drain.
#[derive(Default)]
struct Progress {
    delivered: AtomicU64,
    changed: Notify,
}

impl Progress {
    fn add(&self, deliveries: u64) {
        if deliveries > 0 {
            self.delivered.fetch_add(deliveries, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    /// Waits until `count` deliveries were made, or none came for `quiet`;
    /// says whether the count was reached.
    async fn until(&self, count: u64, quiet: Duration) -> bool {
        loop {
            // `notify_one` leaves a permit when nobody waits: an add between
            // the check and the wait still wakes this.
            let changed = self.changed.notified();
            if self.delivered.load(Ordering::Relaxed) >= count {
                return true;
            }
            if timeout(quiet, changed).await.is_err() {
                return self.delivered.load(Ordering::Relaxed) >= count;
            }
        }
    }
}

/// What one client received.
struct Got {
    /// Per message: when it arrived (µs since the run's start, + 1); 0: never.
    arrived: Vec<u32>,
    duplicated: u64,
    reads: u64,
    /// The server closed this client (op 6), e.g. as a slow consumer.
    closed: Option<String>,
}

/// Reads one client's frames until the socket ends.
async fn read(
    socket: Arc<TcpStream>,
    framing: Framing,
    base: Instant,
    messages: u32,
    total: Arc<Progress>,
) -> Got {
    let mut got = Got {
        arrived: vec![0; messages as usize],
        duplicated: 0,
        reads: 0,
        closed: None,
    };
    let mut buf = vec![0u8; READ_BUFFER];
    let (mut start, mut filled) = (0, 0);
    loop {
        if socket.readable().await.is_err() {
            break;
        }
        match socket.try_read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
        got.reads += 1;
        let now = (base.elapsed().as_micros() as u32).saturating_add(1);
        let mut arrived = 0;
        while let Some((op, header, len)) = unit(framing, &buf[start..filled]) {
            if filled - start < header + len {
                if header + len > buf.len() {
                    buf.resize(header + len, 0);
                }
                break;
            }
            let payload = &buf[start + header..start + header + len];
            start += header + len;
            if op == 0x8 {
                got.closed
                    .get_or_insert_with(|| "websocket close".to_owned());
                continue;
            }
            match framing {
                Framing::Bare => arrived += got.record(payload, now),
                Framing::Goim | Framing::Tcp => arrived += got.record_packets(payload, now),
            }
        }
        total.add(arrived);
        // Keep the partial frame, at the front.
        buf.copy_within(start..filled, 0);
        (filled, start) = (filled - start, 0);
        if got.closed.is_some() {
            break;
        }
    }
    got
}

impl Got {
    /// One message; returns 1 if it was new.
    fn record(&mut self, message: &[u8], now: u32) -> u64 {
        let seq = message
            .get(..SEQ_DIGITS)
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| usize::from_str_radix(digits, 16).ok());
        match seq.and_then(|seq| self.arrived.get_mut(seq)) {
            Some(slot) if *slot == 0 => {
                *slot = now;
                1
            }
            Some(_) => {
                self.duplicated += 1;
                0
            }
            None => 0,
        }
    }

    /// The pushes in a frame of goim packets (op 9 batches unpacked); an
    /// op 6 ends the client.
    fn record_packets(&mut self, mut frame: &[u8], now: u32) -> u64 {
        let mut new = 0;
        while frame.len() >= 16 {
            let op = u32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
            let Some(packet) = frame.get(..packet_len(frame)) else {
                break;
            };
            let body = &packet[16..];
            match Op(op) {
                Op::BATCH => new += self.record_packets(body, now),
                Op::DISCONNECT => {
                    self.closed
                        .get_or_insert_with(|| String::from_utf8_lossy(body).into_owned());
                }
                Op(1000) => new += self.record(body, now),
                _ => {}
            }
            frame = &frame[packet.len()..];
        }
        new
    }
}

/// The unit at the start of `buf` once its header is in: (WebSocket opcode,
/// header length, payload length). On TCP the unit is a whole goim packet,
/// read as a binary frame with no header of its own.
fn unit(framing: Framing, buf: &[u8]) -> Option<(u8, usize, usize)> {
    match framing {
        Framing::Tcp => (buf.len() >= 16).then(|| (0x2, 0, packet_len(buf))),
        Framing::Goim | Framing::Bare => wsframe::parse_header(buf),
    }
}

/// The length of the goim packet at the start of `buf` (at least its header).
fn packet_len(buf: &[u8]) -> usize {
    buf.get(..4)
        .map_or(16, |len| {
            u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize
        })
        .max(16)
}

/// `seq` as 16 hex digits, padded with `.` to `size` bytes.
fn payload(seq: u32, size: usize) -> Vec<u8> {
    let mut body = format!("{seq:016x}").into_bytes();
    body.resize(size.max(SEQ_DIGITS), b'.');
    body
}

/// Publishes every message, paced by the rate or by the window; returns
/// how often the window gave up waiting.
async fn publish(
    plan: &Plan,
    base: Instant,
    subscribed: u64,
    total: &Progress,
    sent: &Arc<Vec<AtomicU64>>,
) -> anyhow::Result<u64> {
    let mut sink = Sink::open(&plan.publisher).await?;
    let mut stalls = 0;
    for seq in 0..plan.messages {
        if plan.rate > 0 {
            let due = base + Duration::from_secs_f64(f64::from(seq) / f64::from(plan.rate));
            tokio::time::sleep_until(due.into()).await;
        } else if let Some(behind) = seq.checked_sub(plan.window) {
            // Messages 0..=behind must have reached everyone.
            let needed = (u64::from(behind) + 1) * subscribed;
            let patience = Duration::from_secs(1);
            if !matches!(
                timeout(patience, total.until(needed, patience)).await,
                Ok(true)
            ) {
                stalls += 1;
            }
        }
        sent[seq as usize].store(base.elapsed().as_micros() as u64 + 1, Ordering::Relaxed);
        sink.send(payload(seq, plan.size)).await?;
    }
    sink.finish().await?;
    Ok(stalls)
}

/// Where the publisher writes.
enum Sink {
    Raw(TcpStream),
    /// Requests run concurrently, up to [`REQUESTS_IN_FLIGHT`]; errors
    /// surface at the end.
    Api {
        api: Api,
        in_flight: Arc<Semaphore>,
        sends: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    },
}

/// imcloud's push APIs, connected.
#[derive(Clone)]
enum Api {
    Grpc(CloudClient<tonic::transport::Channel>, String),
    Http(reqwest::Client, String, String),
}

/// Requests in flight at once when publishing through an API.
const REQUESTS_IN_FLIGHT: usize = 64;

impl Sink {
    async fn open(publisher: &Publisher) -> anyhow::Result<Sink> {
        let api = match publisher {
            Publisher::Raw(addr) => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                return Ok(Sink::Raw(stream));
            }
            Publisher::CloudGrpc(addr, key) => Api::Grpc(
                CloudClient::new(
                    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                        .connect()
                        .await?,
                ),
                key.clone(),
            ),
            Publisher::LogicHttp(url, key) => {
                Api::Http(reqwest::Client::new(), url.clone(), key.clone())
            }
        };
        Ok(Sink::Api {
            api,
            in_flight: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT)),
            sends: Vec::new(),
        })
    }

    async fn send(&mut self, body: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Sink::Raw(stream) => {
                let mut message = (body.len() as u32).to_be_bytes().to_vec();
                message.extend_from_slice(&body);
                stream.write_all(&message).await?;
            }
            Sink::Api {
                api,
                in_flight,
                sends,
            } => {
                let permit = in_flight.clone().acquire_owned().await?;
                let api = api.clone();
                sends.push(tokio::spawn(async move {
                    let result = api.push(body).await;
                    drop(permit);
                    result
                }));
            }
        }
        Ok(())
    }

    async fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Raw(mut stream) => stream.flush().await?,
            Sink::Api { sends, .. } => {
                for send in sends {
                    send.await??;
                }
            }
        }
        Ok(())
    }
}

impl Api {
    /// One room push.
    async fn push(self, body: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Api::Grpc(mut grpc, key) => {
                let mut request = tonic::Request::new(BroadcastRoomReq {
                    room_id: room().to_owned(),
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
                grpc.broadcast_room(request).await?;
            }
            Api::Http(web, url, key) => {
                let mut request = web
                    .post(format!(
                        "{url}/goim/push/room?operation=1000&type=bench&room=1"
                    ))
                    .body(body);
                if !key.is_empty() {
                    request = request.bearer_auth(key);
                }
                request.send().await?.error_for_status()?;
            }
        }
        Ok(())
    }
}
