//! Logic and cloud nodes on 127.0.0.1:0 that know each other, for the
//! end-to-end tests.

use std::net::SocketAddr;
use std::time::Duration;

use imcloud_auth::Secret;
use imcloud_client::Client;
use imcloud_cloud::{Cloud, CloudConfig};
use imcloud_discovery::ServiceNode;
use imcloud_logic::{Logic, LogicConfig};
use imcloud_proto::logic::logic_client::LogicClient;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

pub struct CloudNode {
    pub cloud: Option<Cloud>,
    pub ws_url: String,
    pub tcp: SocketAddr,
    pub shutdown: CancellationToken,
    config: CloudConfig,
    /// Its TCP, WebSocket, gRPC and HTTP addresses, to start it again on.
    addrs: [SocketAddr; 4],
}

/// A logic node of the cluster, restartable on the same addresses.
pub struct LogicNode {
    logic: Option<Logic>,
    config: LogicConfig,
    /// Its gRPC and HTTP addresses.
    addrs: (SocketAddr, SocketAddr),
    shutdown: CancellationToken,
}

pub struct Cluster {
    /// The first logic node's HTTP base URL and gRPC address.
    pub http: String,
    pub grpc: SocketAddr,
    /// Every logic node's HTTP base URL.
    pub https: Vec<String>,
    pub clouds: Vec<CloudNode>,
    logics: Vec<LogicNode>,
    pub web: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for logic in &self.logics {
            logic.shutdown.cancel();
        }
        for cloud in &self.clouds {
            cloud.shutdown.cancel();
        }
    }
}

/// One logic node and `n` cloud nodes that know each other.
pub async fn cluster(n: usize, tweak: impl Fn(&mut LogicConfig)) -> Cluster {
    cluster_of(1, n, |_, config| tweak(config)).await
}

/// `logics` logic nodes and `n` cloud nodes; cloud node i uses logic node
/// i % logics, and every logic node knows every cloud node.
pub async fn cluster_of(
    logics: usize,
    n: usize,
    tweak: impl Fn(usize, &mut LogicConfig),
) -> Cluster {
    cluster_keyed(logics, n, "", tweak).await
}

/// As [`cluster_of`], every node requiring (and sending) the API key `key`.
pub async fn cluster_keyed(
    logics: usize,
    n: usize,
    key: &str,
    tweak: impl Fn(usize, &mut LogicConfig),
) -> Cluster {
    cluster_tuned(logics, n, key, tweak, |_| {}).await
}

/// As [`cluster_keyed`], with `cloud_tweak` applied to every cloud node's
/// configuration too.
pub async fn cluster_tuned(
    logics: usize,
    n: usize,
    key: &str,
    tweak: impl Fn(usize, &mut LogicConfig),
    cloud_tweak: impl Fn(&mut CloudConfig),
) -> Cluster {
    let mut logic_listeners = Vec::new();
    for _ in 0..logics {
        logic_listeners.push(imcloud_logic::Listeners {
            grpc: bind().await,
            http: bind().await,
        });
    }
    let grpcs: Vec<SocketAddr> = logic_listeners
        .iter()
        .map(|l| l.grpc.local_addr().expect("addr"))
        .collect();
    let https: Vec<String> = logic_listeners
        .iter()
        .map(|l| format!("http://{}", l.http.local_addr().expect("addr")))
        .collect();
    let mut clouds = Vec::new();
    let mut known = Vec::new();
    for i in 0..n {
        let listeners = imcloud_cloud::Listeners {
            tcp: bind().await,
            ws: bind().await,
            grpc: bind().await,
            http: bind().await,
        };
        let ws_url = format!("ws://{}/sub", listeners.ws.local_addr().expect("addr"));
        let tcp = listeners.tcp.local_addr().expect("addr");
        let addrs = [
            &listeners.tcp,
            &listeners.ws,
            &listeners.grpc,
            &listeners.http,
        ]
        .map(|listener| listener.local_addr().expect("addr"));
        let server_id = format!("cloud-{i}");
        known.push(ServiceNode {
            id: server_id.clone(),
            grpc: listeners.grpc.local_addr().expect("addr").to_string(),
            ws: ws_url.clone(),
            tcp: tcp.to_string(),
            load: 0,
        });
        let mut config = CloudConfig {
            server_id,
            logic_addrs: vec![grpcs[i % logics].to_string()],
            online_report_interval: Duration::from_millis(100),
            api_key: Secret::new(key),
            ..CloudConfig::default()
        };
        cloud_tweak(&mut config);
        let shutdown = CancellationToken::new();
        let cloud = Cloud::start(listeners, config.clone(), shutdown.clone()).expect("cloud");
        clouds.push(CloudNode {
            cloud: Some(cloud),
            ws_url,
            tcp,
            shutdown,
            config,
            addrs,
        });
    }
    let mut started = Vec::new();
    for (i, listeners) in logic_listeners.into_iter().enumerate() {
        let mut config = LogicConfig {
            server_id: format!("logic-{i}"),
            cloud_nodes: known.clone(),
            api_key: Secret::new(key),
            // The e2e tests state identities in plain JSON tokens.
            verifier: imcloud_logic::VerifierKind::InsecureJson,
            ..LogicConfig::default()
        };
        tweak(i, &mut config);
        let shutdown = CancellationToken::new();
        let addrs = (
            listeners.grpc.local_addr().expect("addr"),
            listeners.http.local_addr().expect("addr"),
        );
        let logic = Logic::start(listeners, config.clone(), shutdown.clone()).expect("logic");
        started.push(LogicNode {
            logic: Some(logic),
            config,
            addrs,
            shutdown,
        });
    }
    Cluster {
        http: https[0].clone(),
        grpc: grpcs[0],
        https,
        clouds,
        logics: started,
        web: reqwest::Client::new(),
    }
}

pub fn token(mid: i64, key: Option<&str>, room: &str, accepts: &[i32]) -> String {
    json!({"mid": mid, "key": key, "room_id": room, "accepts": accepts}).to_string()
}

impl Cluster {
    /// Stops logic node `i` and starts it again on the same addresses with
    /// the same configuration: a memory store comes back empty.
    pub async fn restart_logic(&mut self, i: usize) {
        assert!(self.logics[i].logic.is_some(), "running");
        self.stop_logic(i).await;
        self.start_logic(i).await;
    }

    /// Starts stopped logic node `i` again on its addresses.
    pub async fn start_logic(&mut self, i: usize) {
        let node = &mut self.logics[i];
        let listeners = imcloud_logic::Listeners {
            grpc: TcpListener::bind(node.addrs.0).await.expect("rebind grpc"),
            http: TcpListener::bind(node.addrs.1).await.expect("rebind http"),
        };
        node.shutdown = CancellationToken::new();
        node.logic = Some(
            Logic::start(listeners, node.config.clone(), node.shutdown.clone()).expect("restart"),
        );
    }

    /// Stops logic node `i` (until [`Cluster::start_logic`]).
    pub async fn stop_logic(&mut self, i: usize) {
        let node = &mut self.logics[i];
        node.shutdown.cancel();
        if let Some(logic) = node.logic.take() {
            logic.wait().await.expect("stopped");
        }
    }

    /// Stops cloud node `i` (it drains and exits); logic still knows it, so
    /// pushes for it fail as they would with the node down.
    pub async fn stop_cloud(&mut self, i: usize) {
        let node = &mut self.clouds[i];
        node.shutdown.cancel();
        if let Some(cloud) = node.cloud.take() {
            cloud.wait().await.expect("stopped");
        }
    }

    /// Starts stopped cloud node `i` again on its addresses.
    pub async fn start_cloud(&mut self, i: usize) {
        let node = &mut self.clouds[i];
        let [tcp, ws, grpc, http] = node.addrs;
        let rebind = async |addr| TcpListener::bind(addr).await.expect("rebind");
        let listeners = imcloud_cloud::Listeners {
            tcp: rebind(tcp).await,
            ws: rebind(ws).await,
            grpc: rebind(grpc).await,
            http: rebind(http).await,
        };
        node.shutdown = CancellationToken::new();
        node.cloud = Some(
            Cloud::start(listeners, node.config.clone(), node.shutdown.clone()).expect("restart"),
        );
    }

    /// Pushes `msg` to `mid` until a push finds the user's session, as it
    /// must once the cloud nodes have registered their sessions again.
    pub async fn push_until_routed(&self, logic: usize, mid: i64, msg: &str) {
        let form = format!("mids={mid}&msg={msg}");
        crate::eventually("a push by mid routed to the user", async || {
            let (status, body) = self.post_form_to(logic, "/im/push/mids", &form).await;
            status == 200 && body["data"]["keys"] == 1
        })
        .await;
    }

    /// A gRPC client of the first logic node (no API key).
    pub async fn logic_grpc(&self) -> LogicClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        LogicClient::new(channel)
    }

    pub async fn ws(&self, node: usize, token: String) -> Client {
        let mut client = Client::connect_ws(&self.clouds[node].ws_url)
            .await
            .expect("ws");
        client.auth(token).await.expect("auth");
        client
    }

    pub async fn tcp(&self, node: usize, token: String) -> Client {
        let mut client = Client::connect_tcp(self.clouds[node].tcp)
            .await
            .expect("tcp");
        client.auth(token).await.expect("auth");
        client
    }

    /// POSTs a form; returns the status and the JSON answer.
    pub async fn post_form(&self, path: &str, form: &str) -> (u16, Value) {
        self.post_form_to(0, path, form).await
    }

    /// POSTs a form to logic node `logic`.
    pub async fn post_form_to(&self, logic: usize, path: &str, form: &str) -> (u16, Value) {
        let response = self
            .web
            .post(format!("{}{path}", self.https[logic]))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned())
            .send()
            .await
            .expect("post");
        (
            response.status().as_u16(),
            response.json().await.expect("json"),
        )
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let response = self
            .web
            .post(format!("{}{path}", self.http))
            .body(body)
            .send()
            .await
            .expect("post");
        (
            response.status().as_u16(),
            response.json().await.expect("json"),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_from(0, path).await
    }

    /// GETs from logic node `logic`.
    pub async fn get_from(&self, logic: usize, path: &str) -> (u16, Value) {
        let response = self
            .web
            .get(format!("{}{path}", self.https[logic]))
            .send()
            .await
            .expect("get");
        (
            response.status().as_u16(),
            response.json().await.expect("json"),
        )
    }

    /// Waits (up to 10 s) until `path` answers `data` that satisfies `done`:
    /// online counts change when cloud nodes report, every 100 ms here.
    pub async fn eventually(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.eventually_at(0, path, done).await
    }

    /// As [`Cluster::eventually`], on logic node `logic`.
    pub async fn eventually_at(
        &self,
        logic: usize,
        path: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        crate::eventually(path, async || {
            let (status, body) = self.get_from(logic, path).await;
            last = body["data"].clone();
            status == 200 && done(&last)
        })
        .await;
        last
    }
}
