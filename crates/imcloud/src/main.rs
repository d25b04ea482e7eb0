//! `imcloud`: run a cloud node, a logic node, or both in one process.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// jemalloc with a background thread purging freed pages after a second
/// (its options are built in: `.cargo/config.toml`): memory goes back to
/// the system once connections leave (glibc's malloc kept a churn peak for
/// good); measured in BENCHMARKS.md ("Memory after churn").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(version, about = "imcloud: a real-time push gateway")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// Configuration file (TOML); the defaults when absent.
    #[arg(long, short, global = true, env = "IMCLOUD_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter, as RUST_LOG (e.g. `info`, `imcloud_cloud=debug`).
    #[arg(long, global = true, env = "IMCLOUD_LOG", default_value = "info")]
    log: String,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "IMCLOUD_LOG_FORMAT",
        default_value = "plain"
    )]
    log_format: LogFormat,
    /// Overrides the node's `server_id` (e.g. the pod name: replicas of one
    /// Deployment share a config file but need their own ids).
    #[arg(long, global = true, env = "IMCLOUD_SERVER_ID")]
    server_id: Option<String>,
    /// Overrides `[discovery] advertise_host` (e.g. the pod IP).
    #[arg(long, global = true, env = "IMCLOUD_ADVERTISE_HOST")]
    advertise_host: Option<String>,
    /// Overrides the cluster's `api_key`, so it can come from a secret store
    /// rather than the config file.
    #[arg(long, global = true, env = "IMCLOUD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Overrides logic's `[logic.jwt] secret` (HS256), likewise.
    #[arg(
        long,
        global = true,
        env = "IMCLOUD_JWT_SECRET",
        hide_env_values = true
    )]
    jwt_secret: Option<String>,
}

#[derive(Subcommand)]
enum Mode {
    /// A cloud node: holds client connections.
    Cloud,
    /// A logic node: auth, sessions, push API.
    Logic,
    /// One logic and one cloud node in one process, on 127.0.0.1.
    Standalone,
    /// Print a development token signed with the configuration's secret.
    Token(imcloud::TokenArgs),
    /// Publish push commands to NATS JetStream (the logic nodes' ingest).
    Publish(imcloud::PublishArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

/// Crates that log every request at INFO and each failed one three times
/// at ERROR (the Consul client), or every reconnection attempt (the NATS
/// client): discovery and the ingest log registrations and outages
/// themselves, once each. Quiet unless the filter names them.
const CHATTY: &[&str] = &["consulrs", "rustify", "async_nats"];

fn init_tracing(spec: &str, format: LogFormat) -> anyhow::Result<()> {
    let mut filter = EnvFilter::try_new(spec).context("--log")?;
    for target in CHATTY.iter().filter(|target| !spec.contains(*target)) {
        filter = filter.add_directive(format!("{target}=off").parse().context("--log")?);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// SIGINT or SIGTERM cancels the root token: every node drains and exits.
fn on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown signal: draining");
        shutdown.cancel();
    });
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Mode::Token(args) => {
            println!("{}", imcloud::mint_token(cli.config.as_deref(), &args)?);
            return Ok(());
        }
        Mode::Publish(args) => return imcloud::publish(cli.config.as_deref(), args).await,
        _ => {}
    }
    init_tracing(&cli.log, cli.log_format)?;
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone())?;
    let config = cli.config.as_deref();
    let overrides = imcloud::Overrides {
        server_id: cli.server_id,
        advertise_host: cli.advertise_host,
        api_key: cli.api_key,
        jwt_secret: cli.jwt_secret,
    };
    match cli.mode {
        Mode::Cloud => {
            let mut file = imcloud::load(config)?;
            overrides.cloud(&mut file)?;
            imcloud::run_cloud(file, shutdown).await
        }
        Mode::Logic => {
            let mut file = imcloud::load(config)?;
            overrides.logic(&mut file)?;
            imcloud::run_logic(file, shutdown).await
        }
        Mode::Standalone => {
            let mut file = imcloud::load(config)?;
            overrides.standalone(&mut file)?;
            imcloud::run_standalone(file, shutdown).await
        }
        Mode::Token(_) | Mode::Publish(_) => Ok(()),
    }
}
