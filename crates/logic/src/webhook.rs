//! The receive webhook: client messages (op 4) POSTed to the backend, the
//! body as it came and the rest in headers.

use imcloud_proto::cloud::Proto;
use tonic::Status;

/// Where client messages go.
#[derive(Clone, Debug)]
pub(crate) struct ReceiveWebhook {
    pub(crate) url: String,
    pub(crate) client: reqwest::Client,
}

impl ReceiveWebhook {
    /// Posts one message; a failure is the client's op-5 error.
    pub(crate) async fn post(&self, mid: i64, proto: &Proto) -> Result<(), Status> {
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/octet-stream")
            .header("x-imcloud-mid", mid)
            .header("x-imcloud-op", proto.op)
            .header("x-imcloud-seq", proto.seq)
            .body(proto.body.clone())
            .send()
            .await
            .map_err(|err| Status::unavailable(format!("receive webhook: {err}")))?;
        if !response.status().is_success() {
            return Err(Status::unavailable(format!(
                "receive webhook answered {}",
                response.status()
            )));
        }
        Ok(())
    }
}
