//! Messages POSTed to the backend: client messages (op 4, the receive
//! webhook) and messages no device acknowledged in time (the offline
//! webhook). Both the same way: the body as it came, the rest in headers.

use bytes::Bytes;

/// A backend endpoint messages are POSTed to.
#[derive(Clone, Debug)]
pub(crate) struct Webhook {
    url: String,
    client: reqwest::Client,
}

/// Why a webhook call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebhookError {
    #[error("{0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("answered {0}")]
    Refused(reqwest::StatusCode),
}

/// One message as the backend gets it.
pub(crate) struct Posted {
    pub(crate) mid: i64,
    pub(crate) op: i32,
    pub(crate) seq: u64,
    pub(crate) body: Bytes,
}

impl Webhook {
    /// POSTs to `url`, each call bounded by `timeout`.
    pub(crate) fn new(url: String, timeout: std::time::Duration) -> Self {
        Webhook {
            url,
            client: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
        }
    }

    /// Posts one message; success is a 2xx answer.
    pub(crate) async fn post(&self, message: Posted) -> Result<(), WebhookError> {
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/octet-stream")
            .header("x-imcloud-mid", message.mid)
            .header("x-imcloud-op", message.op)
            .header("x-imcloud-seq", message.seq)
            .body(message.body)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(WebhookError::Refused(response.status()));
        }
        Ok(())
    }
}
