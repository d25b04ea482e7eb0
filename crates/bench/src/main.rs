//! imbench: measures imcloud (or the raw WebSocket writer reference) and
//! prints one JSON line of results per run.

use std::sync::Arc;

use clap::{Parser, Subcommand};
use imcloud_bench::fanout::{self, Plan, Publisher};
use imcloud_bench::{conns, drain, httpfloor, ingest, push, raw, token};
use imcloud_logic::DEVELOPMENT_SECRET;

#[derive(Parser)]
#[command(about = "imcloud benchmarks: conns, fanout, push, http-floor, raw")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// JWT secret the clients' tokens are signed with.
    #[arg(long, global = true, default_value = DEVELOPMENT_SECRET)]
    secret: String,
    /// The cluster's API key, for pushes.
    #[arg(long, global = true, default_value = "")]
    api_key: String,
}

#[derive(Subcommand)]
enum Mode {
    /// Open N clients and report connect time and the server's memory per connection.
    Conns {
        #[arg(long, default_value = "ws://127.0.0.1:3102/sub")]
        ws: String,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Connects in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// The server's pid, to read its RSS.
        #[arg(long)]
        pid: Option<u32>,
        /// After the report, keep the clients connected (not reading) until
        /// interrupted: users online for a push load from another tool
        /// (`scripts/bench-push.sh` runs wrk).
        #[arg(long)]
        hold: bool,
    },
    /// N clients in one room, K messages of S bytes at R/s (0 = max).
    Fanout {
        /// Where clients connect: `ws://HOST:PORT/sub`, or `tcp://HOST:PORT`
        /// with `--framing tcp`.
        #[arg(long, default_value = "ws://127.0.0.1:3102/sub")]
        ws: String,
        /// What the server sends: goim packets in WebSocket frames, bare
        /// messages in frames (`fanbench serve-raw --ws`), or goim packets
        /// on TCP.
        #[arg(long, value_enum, default_value = "goim")]
        framing: fanout::Framing,
        /// `http:URL` (logic push), `grpc:HOST:PORT` (cloud BroadcastRoom),
        /// or `raw:HOST:PORT` (a raw writer's publish socket).
        #[arg(long, default_value = "http:http://127.0.0.1:3111")]
        publish: String,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 1000)]
        messages: u32,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// At rate 0, messages ahead of full delivery.
        #[arg(long, default_value_t = 32)]
        window: u32,
        /// The server's pid, for its CPU time per delivery.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Push-by-mid requests against the logic HTTP API.
    Push {
        #[arg(long, default_value = "http://127.0.0.1:3111")]
        api: String,
        #[arg(long, default_value_t = 100_000)]
        requests: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Users pushed to (mids 0..N), round robin.
        #[arg(long, default_value_t = 1000)]
        mids: u64,
        /// Users named in each request.
        #[arg(long, default_value_t = 1)]
        per_request: u64,
        /// Connect one WebSocket client per mid here first; pushes then reach
        /// online users, and the report counts what they received.
        #[arg(long)]
        online: Option<String>,
    },
    /// Push commands through NATS JetStream to online clients: throughput
    /// (rate 0) or publish-to-device latency at a fixed rate.
    Ingest {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        #[arg(long, default_value = "imcloud.push")]
        subject: String,
        #[arg(long, default_value = "ws://127.0.0.1:3102/sub")]
        ws: String,
        #[arg(long, value_enum, default_value = "mids")]
        kind: ingest::Kind,
        #[arg(long, default_value_t = 10_000)]
        commands: u64,
        /// Online users, one client each (all in the room for room commands).
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Users named in one mids command.
        #[arg(long, default_value_t = 1)]
        per_command: usize,
        /// Rooms the clients are spread over, for room commands.
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Commands per second; 0: as fast as the stream takes them.
        #[arg(long, default_value_t = 0)]
        rate: u32,
    },
    /// The reference for `ingest`: a JetStream consumer that only acks.
    Drain {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        #[arg(long, default_value_t = 10_000)]
        commands: u64,
        /// Bytes per message (a mids command of imbench ingest is ~60).
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Serve the HTTP floor for push requests (logic's HTTP stack answering
    /// `POST /im/push/mids`, nothing delivered) until killed.
    HttpFloor {
        #[arg(long, default_value = "127.0.0.1:4111")]
        listen: String,
    },
    /// Run the raw WebSocket writer (the reference) until killed.
    Raw {
        #[arg(long, default_value = "127.0.0.1:4102")]
        ws: String,
        /// Where `[u32 BE len][payload]` messages are published.
        #[arg(long, default_value = "127.0.0.1:4104")]
        publish: String,
        /// Also serve TCP clients here (goim packets back to back).
        #[arg(long)]
        tcp: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let secret = cli.secret.clone();
    let line = match cli.mode {
        Mode::Conns {
            ws,
            clients,
            concurrency,
            pid,
            hold,
        } => {
            let (report, open) = conns::run(&ws, clients, concurrency, pid, |i| {
                token(&secret, i as i64, fanout::room())
            })
            .await?;
            if hold {
                println!("{}", serde_json::to_string(&report)?);
                tokio::signal::ctrl_c().await?;
                drop(open);
                return Ok(());
            }
            serde_json::to_string(&report)?
        }
        Mode::Fanout {
            ws,
            framing,
            publish,
            clients,
            messages,
            size,
            rate,
            window,
            pid,
        } => {
            let publisher = match publish.split_once(':') {
                Some(("grpc", addr)) => Publisher::CloudGrpc(addr.to_owned(), cli.api_key.clone()),
                Some(("http", url)) => Publisher::LogicHttp(url.to_owned(), cli.api_key.clone()),
                Some(("raw", addr)) => Publisher::Raw(addr.to_owned()),
                _ => anyhow::bail!("--publish must be http:URL, grpc:ADDR or raw:ADDR"),
            };
            let token = Arc::new(move |i: usize| token(&secret, i as i64, fanout::room()));
            let plan = Plan {
                ws_url: ws,
                framing,
                publisher,
                clients,
                messages,
                size,
                rate,
                window,
                server_pid: pid,
                token,
            };
            serde_json::to_string(&fanout::run(plan).await?)?
        }
        Mode::Push {
            api,
            requests,
            concurrency,
            mids,
            per_request,
            online,
        } => {
            let plan = push::Plan {
                api,
                api_key: cli.api_key.clone(),
                requests,
                concurrency,
                mids,
                per_request,
                online,
                token: Arc::new(move |i: usize| token(&secret, i as i64, "")),
            };
            serde_json::to_string(&push::run(plan).await?)?
        }
        Mode::Ingest {
            nats,
            subject,
            ws,
            kind,
            commands,
            clients,
            per_command,
            rooms,
            rate,
        } => {
            let in_rooms = kind == ingest::Kind::Room;
            let room = move |i: usize| {
                if in_rooms {
                    ingest::room_of(i, rooms)
                } else {
                    String::new()
                }
            };
            let plan = ingest::Plan {
                nats,
                subject,
                ws,
                kind,
                commands,
                clients,
                per_command,
                rooms,
                rate,
                token: Arc::new(move |i: usize| token(&secret, i as i64, &room(i))),
            };
            serde_json::to_string(&ingest::run(plan).await?)?
        }
        Mode::Drain {
            nats,
            commands,
            size,
        } => serde_json::to_string(&drain::run(&nats, commands, size).await?)?,
        Mode::HttpFloor { listen } => {
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            eprintln!("http floor: http://{}/im/push/mids", listener.local_addr()?);
            // Scripts stop it with SIGINT, which a background job ignores
            // unless it asks for it.
            tokio::select! {
                served = httpfloor::serve(listener) => served?,
                stopped = tokio::signal::ctrl_c() => stopped?,
            }
            return Ok(());
        }
        Mode::Raw { ws, publish, tcp } => {
            let listeners = raw::Listeners {
                ws: std::net::TcpListener::bind(&ws)?,
                tcp: tcp.map(std::net::TcpListener::bind).transpose()?,
                publish: std::net::TcpListener::bind(&publish)?,
            };
            eprintln!(
                "raw writer: ws://{}/ publish {}",
                listeners.ws.local_addr()?,
                listeners.publish.local_addr()?
            );
            // Its own single-threaded runtime: the reference is one loop.
            std::thread::spawn(move || raw::serve(listeners))
                .join()
                .map_err(|_| anyhow::anyhow!("the raw writer panicked"))??;
            return Ok(());
        }
    };
    println!("{line}");
    Ok(())
}
