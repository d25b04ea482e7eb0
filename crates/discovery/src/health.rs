//! The one Consul endpoint consulrs 0.1 lacks: the cluster-wide
//! `/v1/health/service/<name>?passing`, with blocking queries.

use std::collections::HashMap;

use consulrs::api::Features;
use consulrs::api::features::{Blocking, FeaturedEndpoint};
use rustify_derive::Endpoint;
use serde::Deserialize;

/// `GET /v1/health/service/<name>?passing[&dc=]`: the service's instances
/// whose every check passes, anywhere in the datacenter.
#[derive(Debug, Default, Endpoint)]
#[endpoint(path = "health/service/{self.name}", response = "Vec<ServiceEntry>")]
pub(crate) struct HealthServiceRequest {
    #[endpoint(skip)]
    pub(crate) name: String,
    #[endpoint(skip)]
    pub(crate) blocking: Option<(u64, String)>,
    #[endpoint(query)]
    pub(crate) passing: bool,
    #[endpoint(query)]
    pub(crate) dc: Option<String>,
}

impl FeaturedEndpoint for HealthServiceRequest {
    fn features(&self) -> Option<Features> {
        let (index, wait) = self.blocking.clone()?;
        Some(Features {
            blocking: Some(Blocking {
                index,
                wait: Some(wait),
            }),
            ..Features::default()
        })
    }
}

/// One instance in the answer.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ServiceEntry {
    pub(crate) node: EntryNode,
    pub(crate) service: EntryService,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EntryNode {
    #[serde(default)]
    pub(crate) address: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EntryService {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) address: String,
    #[serde(default)]
    pub(crate) port: u16,
    #[serde(default)]
    pub(crate) meta: Option<HashMap<String, String>>,
}
