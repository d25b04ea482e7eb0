//! Backend APIs require the cluster's API key; nodes send it to each other.

use imcloud_auth::Secret;
use imcloud_logic::{Listeners, Logic, LogicConfig, LogicError};
use imcloud_proto::logic::PushAllReq;
use imcloud_proto::logic::logic_client::LogicClient;
use imcloud_testkit::cluster::{bind, cluster_keyed, token};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn pushes_need_the_key_and_nodes_pass_it_to_each_other() {
    let cluster = cluster_keyed(1, 1, "s3cret-key", |_, _| {}).await;
    // Auth works: the cloud node sends the key to logic's Connect.
    let mut client = cluster.ws(0, token(1, None, "", &[1000])).await;

    for authorization in [None, Some("Bearer wrong"), Some("s3cret-key")] {
        let mut request = cluster
            .web
            .post(format!("{}/im/push/mids", cluster.http))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("mids=1&msg=no");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.expect("post");
        assert_eq!(response.status(), 401, "{authorization:?}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert!(
            body["message"]
                .as_str()
                .expect("message")
                .contains("API key")
        );
    }
    let (status, _) = cluster.get("/im/online/total").await;
    assert_eq!(status, 401, "online routes are backend routes too");
    let (status, _) = cluster.get("/im/nodes").await;
    assert_eq!(status, 200, "clients may ask where to connect");

    // With the key: logic sends it on to the cloud node, and the push lands.
    let response = cluster
        .web
        .post(format!("{}/im/push/mids", cluster.http))
        .header("authorization", "Bearer s3cret-key")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("mids=1&msg=yes")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    assert_eq!(&client.recv_push().await.expect("push").body[..], b"yes");

    // gRPC without the key is refused.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.grpc))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let status = LogicClient::new(channel)
        .push_all(PushAllReq {
            msg: b"x".to_vec().into(),
            operation: 1000,
            speed: 0,
        })
        .await
        .expect_err("no key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn a_node_exposed_off_loopback_without_a_key_refuses_to_start() {
    let listeners = Listeners {
        grpc: bind().await,
        http: tokio::net::TcpListener::bind("0.0.0.0:0")
            .await
            .expect("bind"),
    };
    let refused = Logic::start(listeners, LogicConfig::default(), CancellationToken::new());
    match refused {
        Err(LogicError::Unprotected(err)) => assert!(err.to_string().contains("api_key"), "{err}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("started without a key on 0.0.0.0"),
    }

    let listeners = Listeners {
        grpc: bind().await,
        http: tokio::net::TcpListener::bind("0.0.0.0:0")
            .await
            .expect("bind"),
    };
    let mut config = LogicConfig {
        api_key: Secret::new("k"),
        ..LogicConfig::default()
    };
    config.jwt.secret = Secret::new("a-production-secret-of-length");
    let shutdown = CancellationToken::new();
    assert!(
        Logic::start(listeners, config, shutdown.clone()).is_ok(),
        "with a key it starts"
    );
    shutdown.cancel();
}
