//! Messages POSTed to the backend: client messages (op 4, the receive
//! webhook) and messages no device acknowledged in time (the offline
//! webhook), both the same way: the body as it came, the rest in headers.
//! And questions the backend answers yes or no (the join webhook).

use bytes::Bytes;
use serde::Serialize;

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

/// A backend's answer to a question.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Yes,
    /// 401 or 403, with the answer's body as the reason.
    No(String),
}

/// Longest reason taken from a refusal's body.
const MAX_REASON: usize = 200;

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

    /// POSTs `question` as JSON: a 2xx is yes, 401/403 no (its body the
    /// reason), anything else an error (the backend could not decide).
    pub(crate) async fn ask(&self, question: &impl Serialize) -> Result<Verdict, WebhookError> {
        let response = self.client.post(&self.url).json(question).send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(Verdict::Yes);
        }
        if status != reqwest::StatusCode::UNAUTHORIZED && status != reqwest::StatusCode::FORBIDDEN {
            return Err(WebhookError::Refused(status));
        }
        let body = response.text().await.unwrap_or_default();
        let mut reason: String = body.trim().chars().take(MAX_REASON).collect();
        if reason.is_empty() {
            reason = format!("the join webhook answered {status}");
        }
        Ok(Verdict::No(reason))
    }
}
