//! How imcloud nodes find each other. A [`Discovery`] publishes the current
//! set of healthy nodes of a service as a `watch` channel, so a node's gRPC
//! clients follow the set as it changes: static addresses from config now,
//! or Consul's health-checked catalog behind the same trait.

mod consul;
mod health;

use std::collections::BTreeMap;

use serde::Deserialize;
use tokio::sync::watch;

pub use consul::{ConsulConfig, ConsulDiscovery, ConsulError, Registration};

/// Service name of cloud nodes.
pub const CLOUD_SERVICE: &str = "im-cloud";
/// Service name of logic nodes.
pub const LOGIC_SERVICE: &str = "im-logic";

/// One node of a service, as discovery knows it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNode {
    /// The node's unique id (a cloud node's `server_id`).
    pub id: String,
    /// Its gRPC address, `host:port`.
    pub grpc: String,
    /// Public WebSocket URL clients should use (cloud nodes).
    #[serde(default)]
    pub ws: String,
    /// Public TCP address clients should use (cloud nodes).
    #[serde(default)]
    pub tcp: String,
    /// The node's load (connections) as it last reported it; 0 when unknown.
    #[serde(default)]
    pub load: u64,
}

/// Which discovery a node uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiscoveryKind {
    /// Addresses from configuration.
    #[default]
    Static,
    /// Consul: nodes register themselves and watch each other.
    Consul,
}

/// The `[discovery]` section of a node's configuration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// `static` (the default) or `consul`.
    pub kind: DiscoveryKind,
    /// Host other nodes and clients reach this node at (registered in
    /// Consul); empty = the listeners' own address, if it is not a wildcard.
    pub advertise_host: String,
    /// Consul settings, for `kind = "consul"`.
    pub consul: ConsulConfig,
}

/// The healthy nodes of each service, kept current.
pub trait Discovery: Send + Sync + 'static {
    /// The nodes of `service` now, and every later change.
    fn watch(&self, service: &str) -> watch::Receiver<Vec<ServiceNode>>;
}

/// Discovery from configuration: the sets never change.
#[derive(Debug, Default)]
pub struct StaticDiscovery {
    services: BTreeMap<String, watch::Sender<Vec<ServiceNode>>>,
}

impl StaticDiscovery {
    /// A discovery with no services.
    pub fn new() -> Self {
        StaticDiscovery::default()
    }

    /// Adds (or replaces) a service's nodes.
    pub fn with(mut self, service: &str, nodes: Vec<ServiceNode>) -> Self {
        self.services
            .insert(service.to_owned(), watch::Sender::new(nodes));
        self
    }
}

impl Discovery for StaticDiscovery {
    fn watch(&self, service: &str) -> watch::Receiver<Vec<ServiceNode>> {
        match self.services.get(service) {
            Some(sender) => sender.subscribe(),
            // An unknown service has no nodes, and never will.
            None => watch::Sender::new(Vec::new()).subscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> ServiceNode {
        ServiceNode {
            id: id.to_owned(),
            grpc: format!("127.0.0.1:{}", id.len()),
            ws: String::new(),
            tcp: String::new(),
            load: 0,
        }
    }

    #[test]
    fn static_discovery_answers_the_configured_nodes() {
        let discovery = StaticDiscovery::new()
            .with(CLOUD_SERVICE, vec![node("a"), node("bb")])
            .with(LOGIC_SERVICE, vec![node("l")]);
        assert_eq!(
            *discovery.watch(CLOUD_SERVICE).borrow(),
            vec![node("a"), node("bb")]
        );
        assert_eq!(*discovery.watch(LOGIC_SERVICE).borrow(), vec![node("l")]);
        assert!(discovery.watch("other").borrow().is_empty());
    }
}
