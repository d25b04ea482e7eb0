//! Generated gRPC code for imcloud: `im.cloud` (served by cloud nodes) and
//! `im.logic` (served by logic nodes). Nothing here is written by hand: edit
//! `proto/*.proto` instead.

/// The proto packages, nested as in the `.proto` files so that `im.logic`'s
/// references to `im.cloud.Proto` resolve.
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod im {
    /// `im.cloud`: the cloud node's service.
    pub mod cloud {
        tonic::include_proto!("im.cloud");
    }
    /// `im.logic`: the logic node's service.
    pub mod logic {
        tonic::include_proto!("im.logic");
    }
}

pub use im::{cloud, logic};
