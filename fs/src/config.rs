//! The client's settings file (`~/.config/vault/client.toml`): which server, which user, and
//! what was pinned at first contact (the server's TLS certificate and the vault's
//! administrator key). Written by `vaultfs register` and `vaultfs login`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use client::Target;
use identity::{CertificateFingerprint, Fingerprint, PublicIdentity};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// unix:PATH or https://HOST:PORT
    pub server: Option<String>,
    /// The TLS certificate fingerprint of an https:// server (sha256:...).
    pub server_fingerprint: Option<String>,
    /// The vault user name.
    pub name: Option<String>,
    /// The vault's ID, pinned at first contact.
    pub vault: Option<String>,
    /// The vault administrator's public keys (hex, signing then wrapping), pinned at first
    /// contact: every other user's key is checked against them before a file key is wrapped.
    pub admin_key: Option<String>,
    /// The administrator key's fingerprint as the administrator gave it, out of band
    /// (`--admin-fingerprint`): what first contact must find before it pins anything. Never
    /// saved: once pinned, the key itself is.
    #[serde(skip)]
    pub expected_admin: Option<Fingerprint>,
}

pub fn default_path() -> PathBuf {
    keystore::default_path("client.toml")
}

impl ClientConfig {
    pub fn load(path: &Path) -> anyhow::Result<ClientConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("client config {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClientConfig::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = toml::to_string(self).context("encoding the client config")?;
        let temp = path.with_extension("toml.tmp");
        std::fs::write(&temp, text).with_context(|| format!("writing {}", temp.display()))?;
        std::fs::rename(&temp, path).with_context(|| format!("replacing {}", path.display()))
    }

    pub fn target(&self) -> anyhow::Result<Target> {
        let server = self
            .server
            .as_deref()
            .context("no server: give --server unix:PATH or https://HOST:PORT")?;
        let pin = self
            .server_fingerprint
            .as_deref()
            .map(|f| CertificateFingerprint::from_hex(f).context("bad server fingerprint"))
            .transpose()?;
        Ok(Target::parse(server, pin)?)
    }

    pub fn name(&self) -> anyhow::Result<&str> {
        self.name
            .as_deref()
            .context("no user name: give --name (register first)")
    }

    /// Pins the vault and its administrator key on first contact, only when the key's
    /// fingerprint is the one expected (a server's word alone is no proof: an impostor would
    /// present its own key); afterwards refuses a server that presents different ones.
    pub fn pin(&mut self, vault: &[u8], admin: &PublicIdentity) -> anyhow::Result<()> {
        let vault_hex = hex::encode(vault);
        let admin_hex = format!(
            "{} {}",
            hex::encode(admin.signing),
            hex::encode(admin.wrapping)
        );
        match (&self.vault, &self.admin_key) {
            (Some(v), Some(a)) if *v == vault_hex && *a == admin_hex => Ok(()),
            (Some(_), Some(_)) => bail!(
                "the server presents vault {vault_hex} with administrator key {}, not the ones pinned in the \
                 client config: refusing (a different or impostor server)",
                admin.fingerprint()
            ),
            _ => {
                check_first_contact(admin, self.expected_admin.as_ref())?;
                self.vault = Some(vault_hex);
                self.admin_key = Some(admin_hex);
                Ok(())
            }
        }
    }

    pub fn admin(&self) -> anyhow::Result<PublicIdentity> {
        let text = self
            .admin_key
            .as_deref()
            .context("no pinned administrator key: run `vaultfs login` first")?;
        let (signing, wrapping) = text
            .split_once(' ')
            .context("malformed admin_key in the client config")?;
        let (signing, wrapping) = (hex::decode(signing), hex::decode(wrapping));
        match (signing, wrapping) {
            (Ok(s), Ok(w)) => PublicIdentity::from_slices(&s, &w)
                .context("malformed admin_key in the client config"),
            _ => bail!("malformed admin_key in the client config"),
        }
    }
}

/// On first contact, the administrator key the server presents must have the fingerprint the
/// user was given.
fn check_first_contact(
    admin: &PublicIdentity,
    expected: Option<&Fingerprint>,
) -> anyhow::Result<()> {
    let found = admin.fingerprint();
    match expected {
        Some(expected) if *expected == found => Ok(()),
        Some(expected) => bail!(
            "the server presents an administrator key with fingerprint {found}, not the \
             {expected} you were given: refusing (a different or impostor server)"
        ),
        None => bail!(
            "first contact with this vault: its administrator key has fingerprint {found}; \
             compare it with the one your administrator gave you and pass it as \
             --admin-fingerprint '{found}'"
        ),
    }
}
