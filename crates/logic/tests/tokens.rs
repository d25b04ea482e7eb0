//! Client tokens end to end: signed JWTs and the webhook verifier, over
//! both transports; every bad token refused with its own reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imcloud_auth::Secret;
use imcloud_client::{Client, ClientError};
use imcloud_logic::{
    Claims, DEVELOPMENT_SECRET, Jwt, Listeners, Logic, LogicConfig, LogicError, VerifierKind,
};
use imcloud_protocol::CloseReason;
use imcloud_testkit::cluster::{Cluster, bind, cluster_of};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "a-test-secret-of-some-length";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn claims(mid: i64, exp: u64) -> Claims {
    Claims {
        mid: Some(mid),
        room_id: "live://1".into(),
        exp,
        ..Claims::default()
    }
}

async fn jwt_cluster() -> Cluster {
    cluster_of(1, 1, |_, config| {
        config.verifier = VerifierKind::Jwt;
        config.jwt.secret = Secret::new(SECRET);
    })
    .await
}

/// Connects over WebSocket or TCP and authenticates with `token`.
async fn auth(
    cluster: &Cluster,
    tcp: bool,
    token: &str,
) -> Result<imcloud_client::AuthReply, ClientError> {
    let mut client = if tcp {
        Client::connect_tcp(cluster.clouds[0].tcp)
            .await
            .expect("tcp")
    } else {
        Client::connect_ws(&cluster.clouds[0].ws_url)
            .await
            .expect("ws")
    };
    client.auth(token.to_owned()).await
}

#[tokio::test]
async fn bad_tokens_are_refused_with_distinct_reasons_over_both_transports() {
    let cluster = jwt_cluster().await;
    let good = Jwt::mint_hs256(SECRET.as_bytes(), &claims(7, now() + 60)).expect("mint");
    let expired = Jwt::mint_hs256(SECRET.as_bytes(), &claims(7, now() - 120)).expect("mint");
    let wrong_key =
        Jwt::mint_hs256(b"somebody-else-s-secret", &claims(7, now() + 60)).expect("mint");
    // A real signature over a payload claiming another user.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = Jwt::mint_hs256(b"x", &claims(1, now() + 60))
        .expect("mint")
        .split('.')
        .nth(1)
        .expect("payload")
        .to_owned();
    let forged = parts.join(".");
    let goim_json = r#"{"mid":7,"room_id":"live://1"}"#.to_owned();

    for tcp in [false, true] {
        let me = auth(&cluster, tcp, &good).await.expect("a good token");
        assert_eq!(me.mid, 7);
        for (token, reason) in [
            (&expired, "token expired"),
            (&wrong_key, "bad token signature"),
            (&forged, "bad token signature"),
            (&goim_json, "malformed token"),
            (&"garbage".to_owned(), "malformed token"),
        ] {
            match auth(&cluster, tcp, token).await {
                Err(ClientError::Closed(body)) => {
                    assert_eq!(
                        body.close_reason(),
                        Some(CloseReason::AuthFailed),
                        "{body:?}"
                    );
                    assert!(
                        body.reason.contains(reason),
                        "tcp={tcp} {reason}: {}",
                        body.reason
                    );
                    assert!(!body.reconnect);
                }
                other => panic!("tcp={tcp} {reason}: {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn the_webhook_verifier_asks_a_real_backend() {
    use axum::routing::post;
    let backend = bind().await;
    let url = format!("http://{}/verify", backend.local_addr().expect("addr"));
    let app = axum::Router::new().route(
        "/verify",
        post(|body: bytes::Bytes| async move {
            match &body[..] {
                b"alice" => (
                    axum::http::StatusCode::OK,
                    r#"{"mid":1,"room_id":"live://1"}"#.to_owned(),
                ),
                b"down" => (axum::http::StatusCode::BAD_GATEWAY, String::new()),
                _ => (
                    axum::http::StatusCode::FORBIDDEN,
                    "unknown session".to_owned(),
                ),
            }
        }),
    );
    tokio::spawn(async move { axum::serve(backend, app).await });
    let cluster = cluster_of(1, 1, move |_, config| {
        config.verifier = VerifierKind::Webhook;
        config.token_webhook.url = url.clone();
        config.token_webhook.timeout = Duration::from_secs(2);
    })
    .await;

    for tcp in [false, true] {
        assert_eq!(auth(&cluster, tcp, "alice").await.expect("alice").mid, 1);
        match auth(&cluster, tcp, "mallory").await {
            Err(ClientError::Closed(body)) => {
                assert_eq!(body.close_reason(), Some(CloseReason::AuthFailed));
                assert!(body.reason.contains("unknown session"), "{}", body.reason);
            }
            other => panic!("{other:?}"),
        }
        match auth(&cluster, tcp, "down").await {
            Err(ClientError::Closed(body)) => {
                assert_eq!(
                    body.close_reason(),
                    Some(CloseReason::LogicUnavailable),
                    "{body:?}"
                );
                assert!(body.reconnect, "the backend may come back");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn the_development_secret_is_refused_off_loopback() {
    let listeners = Listeners {
        grpc: bind().await,
        http: tokio::net::TcpListener::bind("0.0.0.0:0")
            .await
            .expect("bind"),
    };
    let config = LogicConfig {
        api_key: Secret::new("some-api-key"),
        ..LogicConfig::default()
    };
    assert_eq!(config.jwt.secret.expose(), DEVELOPMENT_SECRET);
    match Logic::start(listeners, config, CancellationToken::new()) {
        Err(LogicError::DevelopmentSecret(addr)) => assert!(addr.ip().is_unspecified()),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("started with the development secret on 0.0.0.0"),
    }
}
