//! Backend API protection shared by cloud and logic nodes: a [`Secret`]
//! that never shows in logs, and the cluster's bearer API key, checked on
//! every backend API (logic HTTP, both gRPC services) and sent on every call
//! one node makes to another.

use std::net::SocketAddr;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A secret value (secrecy's: zeroed when dropped, never in `Debug`, which
/// prints `***`), so configs can be logged whole.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether no secret is set.
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        bool::from(self.expose().as_bytes().ct_eq(other.expose().as_bytes()))
    }
}

impl Eq for Secret {}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_empty() { "\"\"" } else { "***" })
    }
}

/// A node would expose its backend APIs without a key.
#[derive(Debug, thiserror::Error)]
#[error(
    "{api} listens on {addr}, which is not loopback, and no api_key is set: \
     anyone who can reach it could push to every client. Set api_key (or listen on 127.0.0.1)"
)]
pub struct Unprotected {
    api: &'static str,
    addr: SocketAddr,
}

/// The cluster's API key: required from backends and other nodes, sent to
/// other nodes. Empty = no key (allowed only on loopback).
#[derive(Clone, Debug, Default)]
pub struct ApiKey {
    key: Secret,
}

impl ApiKey {
    /// The key of `secret` (empty = none).
    pub fn new(secret: Secret) -> Self {
        ApiKey { key: secret }
    }

    /// Refuses a backend API on a non-loopback address without a key.
    pub fn guard(&self, api: &'static str, addr: SocketAddr) -> Result<(), Unprotected> {
        if self.key.is_empty() && !addr.ip().is_loopback() {
            return Err(Unprotected { api, addr });
        }
        Ok(())
    }

    /// Whether an `Authorization` header value carries the key.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        if self.key.is_empty() {
            return true;
        }
        let presented = authorization.and_then(|value| value.strip_prefix("Bearer "));
        // Constant time: how long the check takes says nothing about how
        // much of a guessed key was right.
        presented.is_some_and(|presented| {
            bool::from(presented.as_bytes().ct_eq(self.key.expose().as_bytes()))
        })
    }

    /// The client-side interceptor that adds the key to every call.
    pub fn sender(&self) -> SendKey {
        SendKey {
            header: self.interceptor().header,
        }
    }

    /// A gRPC interceptor: refuses calls without the key (`Unauthenticated`)
    /// and, on a client, adds the key to outgoing calls.
    pub fn interceptor(&self) -> KeyInterceptor {
        KeyInterceptor {
            key: self.clone(),
            header: (!self.key.is_empty())
                .then(|| MetadataValue::try_from(format!("Bearer {}", self.key.expose())).ok())
                .flatten(),
        }
    }
}

/// The client side of the key, as a tonic interceptor: every call made
/// through an `XxxClient::with_interceptor(channel, key.sender())` carries it.
#[derive(Clone, Debug)]
pub struct SendKey {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Interceptor for SendKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// See [`ApiKey::interceptor`]: the server side, checking incoming calls;
/// [`SendKey`] is the client side.
#[derive(Clone, Debug)]
pub struct KeyInterceptor {
    key: ApiKey,
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Interceptor for KeyInterceptor {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        if self.key.accepts(presented) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong API key (authorization: Bearer <api_key>)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_never_printed() {
        let key = ApiKey::new(Secret::new("k3y"));
        assert!(key.accepts(Some("Bearer k3y")));
        assert!(!key.accepts(Some("Bearer k3")));
        assert!(!key.accepts(Some("k3y")));
        assert!(!key.accepts(None));
        assert!(!format!("{key:?}").contains("k3y"));
        assert!(
            ApiKey::default().accepts(None),
            "no key configured: open (loopback only)"
        );
    }

    #[test]
    fn no_key_is_refused_off_loopback() {
        let open = ApiKey::default();
        assert!(
            open.guard("logic HTTP", "127.0.0.1:3111".parse().expect("addr"))
                .is_ok()
        );
        let err = open
            .guard("logic HTTP", "0.0.0.0:3111".parse().expect("addr"))
            .expect_err("exposed");
        assert!(err.to_string().contains("api_key"), "{err}");
        assert!(
            ApiKey::new(Secret::new("k"))
                .guard("x", "0.0.0.0:1".parse().expect("addr"))
                .is_ok()
        );
    }

    #[test]
    fn the_grpc_interceptor_refuses_calls_without_the_key() {
        let mut interceptor = ApiKey::new(Secret::new("k3y")).interceptor();
        let status = interceptor.call(Request::new(())).expect_err("no key");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let with_key = ApiKey::new(Secret::new("k3y"))
            .sender()
            .call(Request::new(()))
            .expect("the sender adds the key");
        assert!(interceptor.call(with_key).is_ok());
    }
}
