//! Client token verification: a token goes in, an identity comes out.

use async_trait::async_trait;
use serde::Deserialize;

/// Who a client is, as its token says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Identity {
    /// The user id.
    pub mid: i64,
    /// The connection key; logic generates one when absent.
    #[serde(default)]
    pub key: Option<String>,
    /// The room to join at auth (`type://id`), empty for none.
    #[serde(default)]
    pub room_id: String,
    /// The client's platform (`web`, `ios`...).
    #[serde(default)]
    pub platform: String,
    /// Business ops this connection wants from broadcasts.
    #[serde(default)]
    pub accepts: Vec<i32>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The token does not parse or lacks a claim.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token parses but names something impossible.
    #[error("token refused: {0}")]
    Refused(String),
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
        if identity.key.as_deref() == Some("") {
            return Err(VerifyError::Refused(
                "key must not be empty when given".to_owned(),
            ));
        }
        if !identity.room_id.is_empty() && !identity.room_id.contains("://") {
            return Err(VerifyError::Refused(format!(
                "room_id {:?} must look like type://id",
                identity.room_id
            )));
        }
        Ok(identity)
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
