//! imcloud's logic node: verifies client tokens, owns the session map
//! (mid -> keys -> cloud node), turns backend push requests (HTTP and gRPC)
//! into calls on the right cloud nodes, and merges room online counts.
//!
//! [`run`] takes already-bound listeners and a shutdown token, so tests bind
//! `127.0.0.1:0` and read the addresses back.

pub mod config;
mod courier;
mod dedupe;
mod grpc;
mod http;
mod idempotent;
mod inbox;
mod ingest;
mod memory;
mod metrics;
mod node;
mod nodes;
mod offline;
mod params;
mod presence;
mod push;
mod redis_inbox;
mod redis_store;
mod router;
mod session;
mod timed_store;
mod verifier;
mod webhook;

pub use config::{
    DEVELOPMENT_SECRET, IngestConfig, JwtAlgorithm, JwtConfig, LogicConfig, SessionStoreKind,
    TokenWebhookConfig, VerifierKind,
};
pub use dedupe::{Dedupe, MemoryDedupe, Taken};
pub use inbox::{Acked, InboxLimits, InboxStore, Kept, MemoryInbox, NoInbox, Since, Unacked};
pub use ingest::check_command;
pub use memory::MemoryStore;
pub use metrics::Metrics;
pub use node::{Listeners, Logic, LogicError, Stores, run};
pub use push::{DEFAULT_OPERATION, Delivered, Message, PushError};
pub use redis_store::RedisStore;
pub use session::{Online, Route, SessionStore, StoreError};
pub use verifier::{Claims, Identity, InsecureJson, Jwt, TokenVerifier, VerifyError, Webhook};
