//! The deploy files (docker-compose, Kubernetes, systemd, Grafana) parse,
//! and every config file they name exists, parses and validates, so a
//! renamed key or file breaks this test instead of a deployment.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use imcloud::{CloudFile, LogicFile, load};
use imcloud_discovery::DiscoveryKind;
use serde::Deserialize;
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// Every YAML document of a file, as JSON values.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path:?}: {err}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|err| panic!("{path:?}: {err}")))
        .collect()
}

/// Parses and validates a node config; `mode` is the binary's subcommand.
fn check_config(mode: &str, path: &Path) -> DiscoveryKind {
    match mode {
        "cloud" => {
            let file: CloudFile = load(Some(path)).unwrap_or_else(|err| panic!("{err:#}"));
            file.cloud
                .validate()
                .unwrap_or_else(|err| panic!("{path:?}: {err}"));
            file.discovery.kind
        }
        "logic" => {
            let file: LogicFile = load(Some(path)).unwrap_or_else(|err| panic!("{err:#}"));
            file.logic
                .validate()
                .unwrap_or_else(|err| panic!("{path:?}: {err}"));
            file.discovery.kind
        }
        other => panic!("{path:?}: unknown mode {other}"),
    }
}

/// `["cloud", "--config", "/etc/x.toml"]` -> ("cloud", "/etc/x.toml").
fn mode_and_config(args: &[String]) -> (String, String) {
    let config = args
        .iter()
        .position(|arg| arg == "--config")
        .and_then(|at| args.get(at + 1))
        .unwrap_or_else(|| panic!("{args:?} names no --config"));
    (args[0].clone(), config.clone())
}

#[test]
fn the_compose_cluster_names_configs_that_exist_and_use_consul() {
    let dir = repo("deploy/compose");
    let compose = &yaml_documents(&dir.join("docker-compose.yml"))[0];
    let services = compose["services"].as_object().expect("services");
    let mut nodes = 0;
    for (name, service) in services {
        let Some(command) = service["command"].as_str() else {
            continue;
        };
        if service["build"].is_null() {
            continue; // consul, redis, nats: images of their own
        }
        let args: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        let (mode, config) = mode_and_config(&args);
        // The compose directory is mounted at /etc/imcloud/compose.
        let volumes: Vec<&str> = service["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(volumes.contains(&"./:/etc/imcloud/compose:ro"), "{name}");
        let file = config
            .strip_prefix("/etc/imcloud/compose/")
            .unwrap_or_else(|| panic!("{name}: {config} is not in the mounted directory"));
        assert_eq!(
            check_config(&mode, &dir.join(file)),
            DiscoveryKind::Consul,
            "{name}"
        );
        nodes += 1;
    }
    assert_eq!(nodes, 3, "one logic and two cloud nodes");

    // The logic node consumes from the compose file's NATS, with JetStream.
    let nats = services["nats"]["command"]
        .as_str()
        .expect("a nats service");
    assert!(nats.split_whitespace().any(|arg| arg == "-js"), "{nats}");
    let logic: LogicFile = load(Some(&dir.join("logic.toml"))).expect("logic.toml");
    assert_eq!(logic.logic.ingest.nats_url, "nats://nats:4222");
}

#[test]
fn the_kubernetes_manifests_parse_and_mount_configs_that_exist() {
    let dir = repo("deploy/k8s");
    let kustomization = &yaml_documents(&dir.join("kustomization.yaml"))[0];
    let generator = &kustomization["configMapGenerator"][0];
    let config_map = generator["name"].as_str().expect("configmap name");
    let files: HashSet<&str> = generator["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(Value::as_str)
        .collect();

    let mut deployments = Vec::new();
    let mut services = 0;
    for resource in kustomization["resources"].as_array().expect("resources") {
        let path = dir.join(resource.as_str().expect("resource path"));
        for doc in yaml_documents(&path) {
            match doc["kind"].as_str() {
                Some("Deployment") => deployments.push(doc),
                Some("Service") => services += 1,
                other => panic!("{path:?}: unexpected kind {other:?}"),
            }
        }
    }
    assert_eq!(services, 2);
    let mut modes = Vec::new();
    for deployment in &deployments {
        let spec = &deployment["spec"]["template"]["spec"];
        let volume = &spec["volumes"][0];
        assert_eq!(volume["configMap"]["name"], config_map);
        let container = &spec["containers"][0];
        assert_eq!(container["volumeMounts"][0]["mountPath"], "/etc/imcloud");
        assert_eq!(container["volumeMounts"][0]["name"], volume["name"]);
        let args: Vec<String> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(|arg| arg.as_str().map(str::to_owned))
            .collect();
        let (mode, config) = mode_and_config(&args);
        let file = config
            .strip_prefix("/etc/imcloud/")
            .expect("mounted config");
        assert!(files.contains(file), "{file} is not in the ConfigMap");
        assert_eq!(check_config(&mode, &dir.join(file)), DiscoveryKind::Consul);

        // Readiness is /health on the node's HTTP port.
        let probe = &container["readinessProbe"]["httpGet"];
        assert_eq!(probe["path"], "/health", "{mode}");
        let http = container["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|port| port["name"] == probe["port"])
            .expect("the probe's port is declared");
        let expected = if mode == "cloud" { 3104 } else { 3111 };
        assert_eq!(http["containerPort"], expected, "{mode}");
        modes.push(mode);
    }
    modes.sort();
    assert_eq!(modes, ["cloud", "logic"]);
}

#[test]
fn the_systemd_units_run_the_shipped_configs() {
    for (unit, mode) in [
        ("deploy/systemd/imcloud-cloud.service", "cloud"),
        ("deploy/systemd/imcloud-logic.service", "logic"),
    ] {
        let text = std::fs::read_to_string(repo(unit)).expect("unit");
        let exec = text
            .lines()
            .find_map(|line| line.strip_prefix("ExecStart="))
            .expect("ExecStart");
        let args: Vec<String> = exec.split_whitespace().skip(1).map(str::to_owned).collect();
        let (found, config) = mode_and_config(&args);
        assert_eq!(found, mode);
        // The Dockerfile and the units install config/ as /etc/imcloud.
        let file = config.strip_prefix("/etc/imcloud/").expect("/etc/imcloud");
        check_config(mode, &repo("config").join(file));
        assert!(text.contains("User=imcloud"), "{unit} runs as root");
    }
}

/// Every metric the Grafana dashboard queries exists on a running node.
#[tokio::test]
async fn the_grafana_dashboard_queries_metrics_the_nodes_export() {
    let text = std::fs::read_to_string(repo("deploy/grafana/imcloud.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let (imcloud, shutdown) = imcloud_testkit::standalone::standalone().await;
    // One client and one push, so per-call families (gRPC, store timings) exist.
    let token = imcloud::mint_token(
        None,
        &imcloud::TokenArgs {
            mid: 1,
            room: None,
            accepts: Vec::new(),
            key: None,
            platform: None,
            ttl: std::time::Duration::from_secs(60),
        },
    )
    .expect("token");
    let mut client = imcloud_client::Client::connect_ws(&imcloud.ws_url)
        .await
        .expect("connect");
    client.auth(token).await.expect("auth");
    let pushed = reqwest::Client::new()
        .post(format!("{}/im/push/mids?mids=1&msg=x", imcloud.api_url))
        .send()
        .await
        .expect("push");
    assert_eq!(pushed.status(), 200);
    client.recv_push().await.expect("push arrives");
    let mut exported = HashSet::new();
    for base in [&imcloud.cloud_http_url, &imcloud.api_url] {
        let page = reqwest::get(format!("{base}/metrics"))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text");
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                    continue;
                };
                let suffixes: &[&str] = match kind {
                    "counter" => &["_total"],
                    "histogram" => &["_bucket", "_sum", "_count"],
                    _ => &[""],
                };
                for suffix in suffixes {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("imcloud_"))
            {
                assert!(exported.contains(name), "{name} (panel {})", panel["title"]);
                queried += 1;
            }
        }
    }
    assert!(queried >= 20, "the dashboard queries {queried} series");
    shutdown.cancel();
    imcloud.wait().await.expect("stopped");
}
