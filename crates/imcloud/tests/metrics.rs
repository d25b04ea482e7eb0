//! Both nodes' `/metrics`, scraped before and after real traffic: the
//! counters an operator watches must move, with the right labels.

use imcloud::TokenArgs;
use imcloud_client::{Client, ClientError};
use imcloud_protocol::CloseReason;
use imcloud_testkit::standalone::{sample, scrape, standalone};

#[tokio::test]
async fn counters_move_after_a_push() {
    let (imcloud, shutdown) = standalone().await;
    let cloud = &imcloud.cloud_http_url;
    let logic = &imcloud.api_url;
    let before_cloud = scrape(cloud).await;
    let before_logic = scrape(logic).await;
    assert_eq!(
        sample(&before_cloud, "imcloud_cloud_delivered_total{kind=\"key\"}"),
        0.0
    );

    let token = imcloud::mint_token(
        None,
        &TokenArgs {
            mid: 77,
            room: Some("live://metrics".to_owned()),
            accepts: Vec::new(),
            key: None,
            platform: None,
            ttl: std::time::Duration::from_secs(60),
        },
    )
    .expect("token");
    let mut client = Client::connect_ws(&imcloud.ws_url).await.expect("connect");
    client.auth(token).await.expect("auth");
    let mut refused = Client::connect_ws(&imcloud.ws_url).await.expect("connect");
    match refused.auth("not-a-token").await {
        Err(ClientError::Closed(body)) => {
            assert_eq!(body.close_reason(), Some(CloseReason::AuthFailed));
        }
        other => panic!("a bad token must be refused with op 6, got {other:?}"),
    }

    let response = reqwest::Client::new()
        .post(format!("{logic}/im/push/mids"))
        .header("content-type", "application/json")
        .body(r#"{"mids":[77],"msg":"counted"}"#)
        .send()
        .await
        .expect("push");
    assert_eq!(response.status(), 200);
    client.recv_push().await.expect("the push arrives");

    let cloud_after = scrape(cloud).await;
    let moved = |series: &str| sample(&cloud_after, series) - sample(&before_cloud, series);
    assert_eq!(moved("imcloud_cloud_pushed_total{kind=\"key\"}"), 1.0);
    assert_eq!(moved("imcloud_cloud_delivered_total{kind=\"key\"}"), 1.0);
    assert_eq!(moved("imcloud_cloud_auth_ok_total"), 1.0);
    assert_eq!(
        moved("imcloud_cloud_auth_failures_total{reason=\"auth failed\"}"),
        1.0
    );
    assert_eq!(
        moved("imcloud_cloud_closes_total{reason=\"auth failed\"}"),
        1.0
    );
    assert_eq!(
        sample(&cloud_after, "imcloud_cloud_connections{transport=\"ws\"}"),
        1.0
    );
    // The auth reply and the push, at least.
    assert!(moved("imcloud_cloud_written_packets_total") >= 2.0);
    assert!(moved("imcloud_cloud_push_latency_seconds_count") >= 1.0);
    // Observed only when a socket does not take a write at once, which a
    // reading client's never does here: exported, whatever its count.
    assert!(cloud_after.contains_key("imcloud_cloud_send_queue_depth_count"));
    assert_eq!(
        moved("imcloud_cloud_grpc_calls_total{method=\"Deliver\",code=\"OK\"}"),
        1.0
    );

    let logic_after = scrape(logic).await;
    let moved = |series: &str| sample(&logic_after, series) - sample(&before_logic, series);
    assert_eq!(moved("imcloud_logic_pushed_total{kind=\"mids\"}"), 1.0);
    assert_eq!(moved("imcloud_logic_inbox_stored_total"), 1.0);
    assert_eq!(moved("imcloud_logic_cloud_deliveries_per_call_count"), 1.0);
    assert_eq!(moved("imcloud_logic_cloud_deliveries_per_call_sum"), 1.0);
    assert_eq!(
        moved("imcloud_logic_grpc_calls_total{method=\"Connect\",code=\"OK\"}"),
        1.0
    );
    let refused_connects: f64 = logic_after
        .iter()
        .filter(|(series, _)| {
            series.starts_with("imcloud_logic_grpc_calls_total{method=\"Connect\"")
                && !series.contains("code=\"OK\"")
        })
        .map(|(_, value)| value)
        .sum();
    assert_eq!(refused_connects, 1.0, "the refused token is an error call");
    assert!(moved("imcloud_logic_store_seconds_count{op=\"keys_of_mids\"}") >= 1.0);
    assert!(moved("imcloud_logic_store_seconds_count{op=\"connect\"}") >= 1.0);

    shutdown.cancel();
    imcloud.wait().await.expect("stopped");
}
