//! `imcloud token`: mints a development token with the configuration's
//! HS256 secret, so the quickstart needs nothing but imcloud itself.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use imcloud_logic::{Claims, Jwt, JwtAlgorithm};

use crate::config::logic_config;

/// What the token says.
#[derive(Clone, Debug, clap::Args)]
pub struct TokenArgs {
    /// The user id.
    #[arg(long)]
    pub mid: i64,
    /// The room to join at auth (`type://id`).
    #[arg(long)]
    pub room: Option<String>,
    /// A business op to accept from broadcasts (repeat for several).
    #[arg(long)]
    pub accepts: Vec<i32>,
    /// A fixed connection key (logic generates one when absent).
    #[arg(long)]
    pub key: Option<String>,
    /// The client's platform.
    #[arg(long)]
    pub platform: Option<String>,
    /// How long the token is valid.
    #[arg(long, default_value = "24h", value_parser = humantime_duration)]
    pub ttl: Duration,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(text).map_err(|err| err.to_string())
}

/// Signs a token for `args` with the configuration's HS256 secret.
pub fn mint_token(config: Option<&Path>, args: &TokenArgs) -> anyhow::Result<String> {
    let logic = logic_config(config)?;
    if logic.jwt.algorithm != JwtAlgorithm::HS256 {
        bail!("imcloud token signs HS256 tokens only; RS256 tokens come from your own signer");
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        mid: Some(args.mid),
        key: args.key.clone(),
        room_id: args.room.clone().unwrap_or_default(),
        platform: args.platform.clone().unwrap_or_default(),
        accepts: args.accepts.clone(),
        exp: now + args.ttl.as_secs(),
        ..Claims::default()
    };
    Ok(Jwt::mint_hs256(
        logic.jwt.secret.expose().as_bytes(),
        &claims,
    )?)
}
