//! Command-line and environment overrides of a configuration file: what
//! differs between replicas that share one file (the server id, the pod's
//! address) and secrets that come from a secret store, not the file.

use anyhow::bail;
use imcloud_auth::Secret;

use crate::config::{CloudFile, LogicFile, StandaloneFile};

/// Values that replace the file's, when given.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `server_id` of the node (both nodes, in standalone mode).
    pub server_id: Option<String>,
    /// `[discovery] advertise_host`.
    pub advertise_host: Option<String>,
    /// The cluster's `api_key`.
    pub api_key: Option<String>,
    /// Logic's `[logic.jwt] secret`.
    pub jwt_secret: Option<String>,
}

impl Overrides {
    /// A cloud node's file. A JWT secret means nothing to a cloud node.
    pub fn cloud(&self, file: &mut CloudFile) -> anyhow::Result<()> {
        if self.jwt_secret.is_some() {
            bail!("--jwt-secret is a logic node's setting: a cloud node verifies no token");
        }
        set(&mut file.cloud.server_id, &self.server_id);
        set(&mut file.discovery.advertise_host, &self.advertise_host);
        set_secret(&mut file.cloud.api_key, &self.api_key);
        Ok(())
    }

    /// A logic node's file.
    pub fn logic(&self, file: &mut LogicFile) -> anyhow::Result<()> {
        set(&mut file.logic.server_id, &self.server_id);
        set(&mut file.discovery.advertise_host, &self.advertise_host);
        set_secret(&mut file.logic.api_key, &self.api_key);
        set_secret(&mut file.logic.jwt.secret, &self.jwt_secret);
        Ok(())
    }

    /// Standalone: both nodes take the server id and API key. There is no
    /// discovery to advertise to, so an advertised host is refused rather
    /// than silently ignored.
    pub fn standalone(&self, file: &mut StandaloneFile) -> anyhow::Result<()> {
        if self.advertise_host.is_some() {
            bail!(
                "--advertise-host is for nodes registered in Consul; standalone registers nowhere"
            );
        }
        set(&mut file.cloud.server_id, &self.server_id);
        set(&mut file.logic.server_id, &self.server_id);
        set_secret(&mut file.cloud.api_key, &self.api_key);
        set_secret(&mut file.logic.api_key, &self.api_key);
        set_secret(&mut file.logic.jwt.secret, &self.jwt_secret);
        Ok(())
    }
}

fn set(field: &mut String, value: &Option<String>) {
    if let Some(value) = value {
        field.clone_from(value);
    }
}

fn set_secret(field: &mut Secret, value: &Option<String>) {
    if let Some(value) = value {
        *field = Secret::new(value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_gives_both_nodes_the_id_and_the_key() {
        let overrides = Overrides {
            server_id: Some("pod-7".to_owned()),
            api_key: Some("k3y".to_owned()),
            jwt_secret: Some("s3cret".to_owned()),
            advertise_host: None,
        };
        let mut file = StandaloneFile::default();
        overrides.standalone(&mut file).expect("applies");
        assert_eq!(file.cloud.server_id, "pod-7");
        assert_eq!(file.logic.server_id, "pod-7");
        assert_eq!(file.cloud.api_key.expose(), "k3y");
        assert_eq!(file.logic.api_key.expose(), "k3y");
        assert_eq!(file.logic.jwt.secret.expose(), "s3cret");
    }

    #[test]
    fn settings_a_mode_cannot_use_are_refused() {
        let host = Overrides {
            advertise_host: Some("10.0.0.7".to_owned()),
            ..Overrides::default()
        };
        let err = host
            .standalone(&mut StandaloneFile::default())
            .expect_err("standalone advertises nowhere");
        assert!(err.to_string().contains("--advertise-host"), "{err}");
        let secret = Overrides {
            jwt_secret: Some("s".to_owned()),
            ..Overrides::default()
        };
        assert!(secret.cloud(&mut CloudFile::default()).is_err());
    }
}
