//! Images: what a VM boots. An image is a directory `STORE/images/NAME/` with an `image.toml`
//! naming a kernel and an initramfs in that directory (direct kernel boot), the kernel command
//! line, and the line the guest prints on its serial console once it is up.
//!
//! ```toml
//! kernel = "vmlinuz"
//! initrd = "initrd.img"
//! cmdline = "console=ttyS0 quiet"
//! ready_marker = "vault-guest: ready"
//! failed_marker = "vault-guest: vault failed"   # optional: the start failed in the guest
//! vault = true                                  # optional: it mounts the vault (crate::vault)
//! ```
//!
//! vmctl appends the VM's address as the kernel's `ip=` parameter
//! (`ip=ADDRESS::GATEWAY:NETMASK:NAME:eth0:off`), which initramfs-tools and the test guest read.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::limits;
use crate::store::{Store, check_name};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    #[serde(default)]
    cmdline: String,
    ready_marker: Option<String>,
    failed_marker: Option<String>,
    #[serde(default)]
    vault: bool,
}

/// A checked image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// The serial-console line that means the guest is up; without it, running is up.
    pub ready_marker: Option<String>,
    /// The serial-console line that means the guest failed to come up.
    pub failed_marker: Option<String>,
    /// Whether the guest mounts the vault with the key vmctl hands over at start.
    pub vault: bool,
}

impl Image {
    /// Loads and checks image `name` from the store.
    pub fn load(store: &Store, name: &str) -> Result<Image> {
        check_name("image", name, limits::VM_NAME_BYTES_MAX)?;
        let dir = store.image_dir(name);
        let path = dir.join("image.toml");
        let bad = |reason: String| Error::BadImage {
            name: name.to_string(),
            path: path.clone(),
            reason,
        };
        let size = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(_) => {
                return Err(Error::UnknownImage {
                    name: name.to_string(),
                    path,
                });
            }
        };
        if size > limits::IMAGE_FILE_BYTES_MAX {
            return Err(bad("image.toml is too large".into()));
        }
        let text = fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let manifest: Manifest =
            toml::from_str(&text).map_err(|e| bad(e.message().replace('\n', " ")))?;
        let file = |relative: &Path| -> Result<PathBuf> {
            if relative.is_absolute() || relative.components().count() != 1 {
                return Err(bad(format!(
                    "{} must be a file name in the image directory",
                    relative.display()
                )));
            }
            let full = dir.join(relative);
            if !full.is_file() {
                return Err(bad(format!("{} is missing", full.display())));
            }
            Ok(full)
        };
        if manifest.cmdline.contains(" ip=") || manifest.cmdline.starts_with("ip=") {
            return Err(bad(
                "cmdline must not set ip=: vmctl sets the address".into()
            ));
        }
        if manifest.vault
            && manifest
                .ready_marker
                .as_deref()
                .unwrap_or_default()
                .is_empty()
        {
            return Err(bad(
                "an image that mounts the vault needs the ready_marker it prints once mounted"
                    .into(),
            ));
        }
        Ok(Image {
            name: name.to_string(),
            kernel: file(&manifest.kernel)?,
            initrd: manifest.initrd.as_deref().map(file).transpose()?,
            cmdline: manifest.cmdline,
            ready_marker: manifest.ready_marker.filter(|m| !m.is_empty()),
            failed_marker: manifest.failed_marker.filter(|m| !m.is_empty()),
            vault: manifest.vault,
        })
    }

    /// The kernel command line for a VM with this address.
    pub fn cmdline_for(&self, vm: &str, ip: Ipv4Addr, prefix_len: u8, gateway: Ipv4Addr) -> String {
        let netmask = Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0),
        );
        let network = format!("ip={ip}::{gateway}:{netmask}:{vm}:eth0:off");
        if self.cmdline.is_empty() {
            network
        } else {
            format!("{} {network}", self.cmdline)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(manifest: &str) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        let image = store.image_dir("tiny");
        fs::create_dir_all(&image).expect("mkdir");
        fs::write(image.join("vmlinuz"), b"k").expect("kernel");
        fs::write(image.join("image.toml"), manifest).expect("manifest");
        (dir, store)
    }

    #[test]
    fn images_load_and_carry_the_address() {
        let (_dir, store) = store_with("kernel = \"vmlinuz\"\ncmdline = \"console=ttyS0\"\n");
        let image = Image::load(&store, "tiny").expect("load");
        assert_eq!(image.kernel, store.image_dir("tiny").join("vmlinuz"));
        let cmdline = image.cmdline_for("vm1", [10, 10, 0, 5].into(), 24, [10, 10, 0, 1].into());
        assert_eq!(
            cmdline,
            "console=ttyS0 ip=10.10.0.5::10.10.0.1:255.255.255.0:vm1:eth0:off"
        );
    }

    #[test]
    fn bad_images_are_refused() {
        let (_dir, store) = store_with("kernel = \"vmlinuz\"\n");
        assert!(matches!(
            Image::load(&store, "nope"),
            Err(Error::UnknownImage { .. })
        ));
        for manifest in [
            "kernel = \"../vmlinuz\"\n",
            "kernel = \"missing\"\n",
            "kernel = \"vmlinuz\"\ncmdline = \"ip=dhcp\"\n",
            "kernel = \"vmlinuz\"\nextra = 1\n",
            "kernel = \"vmlinuz\"\nvault = true\n",
        ] {
            let (_dir, store) = store_with(manifest);
            let error = Image::load(&store, "tiny").expect_err(manifest);
            assert!(matches!(error, Error::BadImage { .. }), "{error}");
        }
    }
}
