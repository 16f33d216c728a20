//! VMs that mount the vault. At create, the vault settings (the client config `vaultfs login`
//! wrote: server, certificate fingerprint, user name, pinned vault and administrator key; none
//! of it secret) and the vault user's public key are recorded with the VM. At every start the
//! user's key file is unlocked here and the identity goes, with the settings, as one hand-off
//! message (docs/format.md section 11) into the VM's virtio-serial channel: through libvirt's
//! stream to QEMU's socket, never into a file, a command line or libvirt's XML. The channel
//! stays open until the guest said whether it mounted, then closes.

use identity::{HANDOFF_CHANNEL, HANDOFF_SETTINGS_BYTES_MAX, Handoff, Identity, KeyKind};
use serde::{Deserialize, Serialize};
use virt::domain::Domain;

use crate::error::{Error, Result, io_error};
use crate::host::{ChannelGuard, Host};

/// What a VM needs to mount the vault, as recorded at create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSeed {
    /// The client config handed to the guest (TOML), checked at create.
    pub settings: String,
    /// The vault user's public identity (signing and wrapping keys, hex): only the key file
    /// holding it is handed over.
    pub owner: String,
    /// The vault user name and server, for display.
    pub user: String,
    pub server: String,
}

/// The keys of a client config a guest needs, each a string. The guest refuses any other.
const SETTINGS_KEYS: [&str; 5] = ["server", "server_fingerprint", "name", "vault", "admin_key"];

/// `--vault CONFIG --owner KEY_FILE` of `create`.
#[derive(Debug, Clone)]
pub struct VaultRequest {
    pub config: std::path::PathBuf,
    pub owner: std::path::PathBuf,
}

impl VaultRequest {
    /// Reads and checks the client config and the owner's public key.
    pub fn seed(&self) -> Result<VaultSeed> {
        let path = &self.config;
        let bad = |reason: String| Error::BadVaultConfig {
            path: path.clone(),
            reason,
        };
        let size = std::fs::metadata(path)
            .map_err(io_error("reading", path))?
            .len();
        if size > HANDOFF_SETTINGS_BYTES_MAX as u64 {
            return Err(bad(format!(
                "larger than {HANDOFF_SETTINGS_BYTES_MAX} bytes"
            )));
        }
        let settings = std::fs::read_to_string(path).map_err(io_error("reading", path))?;
        let table: toml::Table =
            toml::from_str(&settings).map_err(|e| bad(e.message().replace('\n', " ")))?;
        let text = |key: &str| table.get(key).and_then(|v| v.as_str()).unwrap_or_default();
        if let Some(key) = table.keys().find(|k| !SETTINGS_KEYS.contains(&k.as_str())) {
            return Err(bad(format!("`{key}` is no client setting")));
        }
        if let Some(key) = SETTINGS_KEYS.iter().find(|k| text(k).is_empty()) {
            return Err(bad(format!(
                "no `{key}`: run `vaultfs login --server https://...` first, which pins the vault"
            )));
        }
        if !text("server").starts_with("https://") {
            return Err(bad("the server must be https://HOST:PORT for a VM".into()));
        }
        if identity::CertificateFingerprint::from_hex(text("server_fingerprint")).is_none() {
            return Err(bad("`server_fingerprint` is no sha256 fingerprint".into()));
        }
        let owner = keystore::read_key_file(&self.owner)?.public();
        Ok(VaultSeed {
            owner: hex::encode(owner.to_bytes()),
            user: text("name").to_string(),
            server: text("server").to_string(),
            settings,
        })
    }
}

/// Checks that `owner` is the VM's vault user before anything of it is handed over.
pub(crate) fn check_owner(vm: &str, seed: &VaultSeed, owner: &Identity) -> Result<()> {
    if hex::encode(owner.public().to_bytes()) == seed.owner {
        return Ok(());
    }
    Err(Error::NotVaultOwner {
        vm: vm.to_string(),
        user: seed.user.clone(),
        fingerprint: owner.public().fingerprint().to_string(),
    })
}

/// Sends the hand-off into the VM's channel. The returned guard keeps the channel open (the
/// guest reads it when it is ready) and closes it when dropped.
pub(crate) fn hand_off(
    host: &Host,
    vm: &str,
    domain: &Domain,
    seed: &VaultSeed,
    owner: &Identity,
) -> Result<ChannelGuard> {
    check_owner(vm, seed, owner)?;
    let message =
        Handoff::encode(owner, KeyKind::User, &seed.settings).map_err(|e| Error::Invalid {
            what: "vault settings",
            reason: e.to_string(),
        })?;
    host.send_to_channel(vm, domain, HANDOFF_CHANNEL, &message)
}

/// The settings of a seed, as `status` shows them.
pub fn describe(seed: &VaultSeed) -> String {
    let fingerprint = crate::drive::fingerprint_of(&seed.owner);
    format!("{} at {} (key {fingerprint})", seed.user, seed.server)
}

/// How the vault mount of a VM's last start went, as `status` shows it: from the guest's
/// failure line and whether its mounted line is on the console (both of this start: a start
/// clears the console), and whether the VM runs.
pub(crate) fn mount_state(failed: Option<&str>, mounted: bool, running: bool) -> String {
    match (failed, mounted, running) {
        (Some(line), _, _) => format!("not mounted: the guest reported `{line}`"),
        (None, true, true) => "mounted at the start".into(),
        (None, false, true) => "not mounted yet".into(),
        (None, _, false) => "not mounted (the VM is off)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::mount_state;

    #[test]
    fn the_mount_state_says_what_the_console_says() {
        let failed = "vault-guest: vault failed: reaching storaged at https://10.10.0.2:7000";
        for running in [true, false] {
            let state = mount_state(Some(failed), false, running);
            assert!(
                state.starts_with("not mounted: the guest reported"),
                "{state}"
            );
            assert!(state.contains("reaching storaged"), "{state}");
        }
        assert_eq!(mount_state(None, true, true), "mounted at the start");
        assert_eq!(mount_state(None, false, true), "not mounted yet");
        assert_eq!(
            mount_state(None, true, false),
            "not mounted (the VM is off)"
        );
    }
}
