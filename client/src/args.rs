//! How a command line names the daemon: the same two options, with the same environment
//! variables, for `vaultfs` and `vault-admin`.

use identity::CertificateFingerprint;

use crate::{ClientError, Target};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServerArgs {
    /// The daemon: unix:PATH or https://HOST:PORT [default: vaultfs: the client config's;
    /// vault-admin: unix:DATA_DIR/storaged.sock, DATA_DIR as storaged defaults it].
    #[arg(long, env = "VAULT_SERVER")]
    pub server: Option<String>,
    /// The TLS certificate fingerprint of an https:// server (sha256:..., printed by storaged).
    #[arg(long, env = "VAULT_SERVER_FINGERPRINT")]
    pub server_fingerprint: Option<String>,
}

impl ServerArgs {
    /// The daemon these options name, or `default` when `--server` is absent.
    pub fn target_or(&self, default: &str) -> Result<Target, ClientError> {
        let pin = self
            .server_fingerprint
            .as_deref()
            .map(|text| {
                CertificateFingerprint::from_hex(text)
                    .ok_or_else(|| ClientError::BadFingerprint(text.to_string()))
            })
            .transpose()?;
        Target::parse(self.server.as_deref().unwrap_or(default), pin)
    }
}
