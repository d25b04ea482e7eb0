//! Client token verification: a token goes in, an identity comes out.

use std::time::Duration;

use async_trait::async_trait;
use imcloud_protocol::{RoomId, RoomPattern};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Who a client is, as its token says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Identity {
    /// The user id.
    pub mid: i64,
    /// The connection key; logic generates one when absent.
    #[serde(default)]
    pub key: Option<String>,
    /// The room to join at auth (`""` in a token for none).
    #[serde(default, with = "imcloud_protocol::room::optional")]
    pub room_id: Option<RoomId>,
    /// The client's platform (`web`, `ios`...).
    #[serde(default)]
    pub platform: String,
    /// Business ops this connection wants from broadcasts.
    #[serde(default)]
    pub accepts: Vec<i32>,
    /// More rooms to join at auth, after `room_id`.
    #[serde(default)]
    pub rooms: Vec<RoomId>,
    /// What the connection may join later (op 22, op 12): room ids, or
    /// prefixes ending in `*`. Empty: any room.
    #[serde(default)]
    pub allow_rooms: Vec<String>,
}

/// Why a token was refused, each with its own reason for the client.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The token does not parse or lacks a claim.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` is still ahead.
    #[error("token not yet valid")]
    NotYetValid,
    /// The signature does not match (forged, or signed with another key or algorithm).
    #[error("bad token signature")]
    BadSignature,
    /// The token parses but names something impossible, or the backend said no.
    #[error("token refused: {0}")]
    Refused(String),
    /// The verifier could not decide (webhook down or too slow).
    #[error("token verifier unavailable: {0}")]
    Unavailable(String),
}

impl From<VerifyError> for tonic::Status {
    fn from(err: VerifyError) -> Self {
        match err {
            VerifyError::Unavailable(_) => tonic::Status::unavailable(err.to_string()),
            other => tonic::Status::unauthenticated(other.to_string()),
        }
    }
}

/// Checks what every verifier must guarantee of an identity.
fn checked(identity: Identity) -> Result<Identity, VerifyError> {
    if identity.key.as_deref() == Some("") {
        return Err(VerifyError::Refused(
            "key must not be empty when given".to_owned(),
        ));
    }
    for pattern in &identity.allow_rooms {
        RoomPattern::parse(pattern).map_err(|err| VerifyError::Refused(err.to_string()))?;
    }
    Ok(identity)
}

/// Turns a client's token into an identity.
#[async_trait]
pub trait TokenVerifier: Send + Sync + 'static {
    /// Verifies `token`.
    async fn verify(&self, token: &[u8]) -> Result<Identity, VerifyError>;
}

/// goim's trusted JSON token: the client states its own identity. Anyone can
/// claim any user, so this is for development only; the node warns at start.
#[derive(Debug, Default)]
pub struct InsecureJson;

#[async_trait]
impl TokenVerifier for InsecureJson {
    async fn verify(&self, token: &[u8]) -> Result<Identity, VerifyError> {
        let identity: Identity =
            serde_json::from_slice(token).map_err(|err| VerifyError::Malformed(err.to_string()))?;
        checked(identity)
    }
}

/// Signed JWTs: HS256 with a shared secret, or RS256 with a public key.
pub struct Jwt {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// The claims imcloud reads (and `imcloud token` writes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Claims {
    /// The user id as a string (`sub`), when `mid` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<i64>,
    /// The connection key, when the backend assigns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The room joined at auth.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub room_id: String,
    /// The client's platform.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub platform: String,
    /// Ops wanted from broadcasts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepts: Vec<i32>,
    /// More rooms joined at auth.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    /// Rooms the connection may join later: ids, or prefixes ending in `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_rooms: Vec<String>,
    /// Expiry, unix seconds (required).
    pub exp: u64,
    /// Not before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

impl Jwt {
    /// An HS256 verifier with a shared secret.
    pub fn hs256(secret: &[u8], leeway: Duration) -> Jwt {
        Jwt::new(DecodingKey::from_secret(secret), Algorithm::HS256, leeway)
    }

    /// An RS256 verifier with an RSA public key in PEM.
    pub fn rs256(public_pem: &[u8], leeway: Duration) -> Result<Jwt, VerifyError> {
        let key = DecodingKey::from_rsa_pem(public_pem)
            .map_err(|err| VerifyError::Malformed(format!("RS256 public key: {err}")))?;
        Ok(Jwt::new(key, Algorithm::RS256, leeway))
    }

    fn new(key: DecodingKey, algorithm: Algorithm, leeway: Duration) -> Jwt {
        let mut validation = Validation::new(algorithm);
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        Jwt { key, validation }
    }

    /// Signs `claims` with an HS256 secret (development tokens, tests).
    pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, VerifyError> {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .map_err(|err| VerifyError::Malformed(err.to_string()))
    }
}

#[async_trait]
impl TokenVerifier for Jwt {
    async fn verify(&self, token: &[u8]) -> Result<Identity, VerifyError> {
        let token = std::str::from_utf8(token)
            .map_err(|_| VerifyError::Malformed("token is not UTF-8".to_owned()))?;
        let claims = jsonwebtoken::decode::<Claims>(token.trim(), &self.key, &self.validation)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => VerifyError::Expired,
                ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    VerifyError::BadSignature
                }
                _ => VerifyError::Malformed(err.to_string()),
            })?
            .claims;
        let mid = match (claims.mid, claims.sub.as_deref()) {
            (Some(mid), _) => mid,
            (None, Some(sub)) => sub
                .parse()
                .map_err(|_| VerifyError::Malformed(format!("sub {sub:?} is not a user id")))?,
            (None, None) => return Err(VerifyError::Malformed("no mid or sub claim".to_owned())),
        };
        let room_id = match claims.room_id.as_str() {
            "" => None,
            room => Some(RoomId::parse(room).map_err(|err| VerifyError::Refused(err.to_string()))?),
        };
        let rooms = claims
            .rooms
            .iter()
            .map(|room| RoomId::parse(room).map_err(|err| VerifyError::Refused(err.to_string())))
            .collect::<Result<_, _>>()?;
        checked(Identity {
            mid,
            key: claims.key,
            room_id,
            platform: claims.platform,
            accepts: claims.accepts,
            rooms,
            allow_rooms: claims.allow_rooms,
        })
    }
}

/// Asks a backend: POSTs the token and reads back the identity JSON
/// (200), a refusal (401/403, its body the reason), or is unavailable.
#[derive(Debug)]
pub struct Webhook {
    url: String,
    client: reqwest::Client,
}

impl Webhook {
    /// A verifier posting to `url`, each call within `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Webhook {
        Webhook {
            url: url.to_owned(),
            client: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
        }
    }
}

#[async_trait]
impl TokenVerifier for Webhook {
    async fn verify(&self, token: &[u8]) -> Result<Identity, VerifyError> {
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/octet-stream")
            .body(token.to_vec())
            .send()
            .await
            .map_err(|err| VerifyError::Unavailable(err.to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|err| VerifyError::Unavailable(err.to_string()))?;
        match status.as_u16() {
            200 => checked(serde_json::from_slice(&body).map_err(|err| {
                VerifyError::Unavailable(format!("backend answered no identity: {err}"))
            })?),
            401 | 403 => Err(VerifyError::Refused(
                String::from_utf8_lossy(&body).trim().to_owned(),
            )),
            other => Err(VerifyError::Unavailable(format!(
                "backend answered {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn goim_tokens_parse_and_bad_ones_are_refused() {
        let identity = InsecureJson
            .verify(
                br#"{"mid":123,"room_id":"live://1000","platform":"web","accepts":[1000,1001]}"#,
            )
            .await
            .expect("goim token");
        assert_eq!(identity.mid, 123);
        assert_eq!(identity.key, None);
        assert_eq!(identity.accepts, [1000, 1001]);
        for bad in [
            &b"not json"[..],
            br#"{"room_id":"live://1"}"#,
            br#"{"mid":1,"room_id":"lobby"}"#,
        ] {
            assert!(
                InsecureJson.verify(bad).await.is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
