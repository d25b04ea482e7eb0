//! imbench's modes on small N against in-process servers: nothing lost,
//! nothing duplicated, every number reported.

use std::sync::Arc;

use imcloud::{Standalone, StandaloneFile};
use imcloud_bench::fanout::{self, Plan, Publisher};
use imcloud_bench::{conns, ingest, push, raw, token};
use imcloud_logic::DEVELOPMENT_SECRET;
use tokio_util::sync::CancellationToken;

async fn standalone() -> (Standalone, CancellationToken) {
    standalone_with(StandaloneFile::default()).await
}

async fn standalone_with(mut file: StandaloneFile) -> (Standalone, CancellationToken) {
    let any = "127.0.0.1:0".parse().expect("addr");
    for addr in [
        &mut file.cloud_listen.tcp,
        &mut file.cloud_listen.ws,
        &mut file.cloud_listen.grpc,
        &mut file.cloud_listen.http,
        &mut file.logic_listen.grpc,
        &mut file.logic_listen.http,
    ] {
        *addr = any;
    }
    let shutdown = CancellationToken::new();
    (
        Standalone::start(file, shutdown.clone())
            .await
            .expect("imcloud"),
        shutdown,
    )
}

fn plan(ws_url: String, publisher: Publisher) -> Plan {
    Plan {
        ws_url,
        framing: fanout::Framing::Goim,
        publisher,
        clients: 20,
        messages: 50,
        size: 64,
        rate: 0,
        window: 8,
        server_pid: Some(std::process::id()),
        token: Arc::new(|i| token(DEVELOPMENT_SECRET, i as i64, fanout::room())),
    }
}

/// Runs `plan` with TCP clients: every message reaches every client once.
async fn over_tcp(mut plan: Plan) {
    plan.framing = fanout::Framing::Tcp;
    let report = fanout::run(plan).await.expect("fanout over TCP");
    assert_eq!(
        (report.delivered, report.lost, report.duplicated),
        (1000, 0, 0),
        "{report:?}"
    );
}

#[tokio::test]
async fn fanout_against_the_raw_writer_loses_nothing() {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listeners = raw::Listeners {
        ws: bind(),
        tcp: Some(bind()),
        publish: bind(),
    };
    let addr = |listener: &std::net::TcpListener| listener.local_addr().expect("addr");
    let ws_url = format!("ws://{}/sub", addr(&listeners.ws));
    let tcp_url = format!("tcp://{}", listeners.tcp.as_ref().map(addr).expect("tcp"));
    let publish = addr(&listeners.publish).to_string();
    // The raw writer runs until the process ends, on its own thread.
    std::thread::spawn(move || raw::serve(listeners));
    let report = fanout::run(plan(ws_url, Publisher::Raw(publish.clone())))
        .await
        .expect("fanout");
    assert_eq!(
        (
            report.expected,
            report.delivered,
            report.lost,
            report.duplicated
        ),
        (1000, 1000, 0, 0),
        "{report:?}"
    );
    assert!(report.deliveries_per_sec > 0.0 && report.p99_us >= report.p50_us);
    assert!(report.deliveries_per_read >= 1.0, "{report:?}");
    assert!(report.server_cpu_us_per_delivery.is_some(), "{report:?}");

    over_tcp(plan(tcp_url, Publisher::Raw(publish))).await;
}

#[tokio::test]
async fn fanout_push_and_conns_against_imcloud() {
    let (imcloud, shutdown) = standalone().await;
    let mut paced = plan(
        imcloud.ws_url.clone(),
        Publisher::LogicHttp(imcloud.api_url.clone(), String::new()),
    );
    paced.rate = 200;
    let report = fanout::run(paced).await.expect("fanout");
    assert_eq!(
        (report.delivered, report.lost, report.duplicated),
        (1000, 0, 0),
        "{report:?}"
    );
    assert_eq!(report.target, "imcloud-http");

    over_tcp(plan(
        format!("tcp://{}", imcloud.tcp),
        Publisher::LogicHttp(imcloud.api_url.clone(), String::new()),
    ))
    .await;

    let report = push::run(push::Plan {
        api: imcloud.api_url.clone(),
        api_key: String::new(),
        requests: 200,
        concurrency: 8,
        mids: 10,
        per_request: 5,
        online: Some(imcloud.ws_url.clone()),
        token: Arc::new(|i| token(DEVELOPMENT_SECRET, i as i64, "")),
    })
    .await
    .expect("push");
    assert_eq!((report.ok, report.failed), (200, 0), "{report:?}");
    assert_eq!(
        (report.stored, report.delivered, report.messages),
        (1000, 1000, 1000),
        "every message numbered and written to its online user: {report:?}"
    );

    let (report, open) = conns::run(&imcloud.ws_url, 30, 8, Some(std::process::id()), |i| {
        token(DEVELOPMENT_SECRET, i as i64, "")
    })
    .await
    .expect("conns");
    assert_eq!((report.clients, open.len()), (30, 30));
    assert!(report.kib_per_connection.is_some(), "{report:?}");
    shutdown.cancel();
}

/// Commands through a real nats-server: every one reaches its devices, by
/// mid and by room, and the report counts them.
#[tokio::test]
async fn ingest_delivers_every_command_to_the_online_clients() {
    let nats = imcloud_testkit::NatsServer::start();
    let mut file = StandaloneFile::default();
    file.logic.ingest.nats_url = nats.url.clone();
    let (imcloud, shutdown) = standalone_with(file).await;
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.expect("nats"));
    imcloud_testkit::eventually("the stream", async || {
        js.get_stream("IMCLOUD_PUSH").await.is_ok()
    })
    .await;
    for kind in [ingest::Kind::Mids, ingest::Kind::Room] {
        let report = ingest::run(ingest::Plan {
            nats: nats.url.clone(),
            subject: "imcloud.push".to_owned(),
            ws: imcloud.ws_url.clone(),
            kind,
            commands: 60,
            clients: 10,
            per_command: 3,
            rooms: 2,
            rate: 0,
            token: Arc::new(move |i| {
                let room = match kind {
                    ingest::Kind::Mids => String::new(),
                    ingest::Kind::Room => ingest::room_of(i, 2),
                };
                token(DEVELOPMENT_SECRET, i as i64, &room)
            }),
        })
        .await
        .expect("ingest");
        // By mid: 3 users per command. To rooms: 2 rooms of 5 clients.
        let deliveries = if kind == ingest::Kind::Mids { 180 } else { 300 };
        assert_eq!(
            (report.deliveries, report.delivered),
            (deliveries, deliveries),
            "{report:?}"
        );
        assert!(
            report.p50_us > 0 && report.max_us >= report.p99_us,
            "{report:?}"
        );
    }
    shutdown.cancel();
}

#[tokio::test]
async fn drain_consumes_every_message() {
    let nats = imcloud_testkit::NatsServer::start();
    let report = imcloud_bench::drain::run(&nats.url, 500, 64)
        .await
        .expect("drain");
    assert_eq!(report.commands, 500);
    assert!(report.commands_per_sec > 0.0, "{report:?}");
}

#[tokio::test]
async fn the_http_floor_answers_a_push_and_refuses_one_naming_nobody() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/im/push/mids", listener.local_addr().unwrap());
    tokio::spawn(imcloud_bench::httpfloor::serve(listener));
    let http = reqwest::Client::new();
    let post = |body: &'static str| {
        http.post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    assert_eq!(post("mids=7&msg=hi").await.unwrap().status(), 200);
    assert_eq!(post("msg=hi").await.unwrap().status(), 400);
}
