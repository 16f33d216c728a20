//! Drive operations: create (encrypted, key wrapped to its owner), delete, attach and detach
//! (live when the VM runs). A drive has one writer: it is attached to at most one VM.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::controller::{OwnerKey, Vmctl};
use crate::domain::DriveSpec;
use crate::drive;
use crate::error::{Error, Result};
use crate::lifecycle::{is_running, unlock};
use crate::limits;
use crate::store::{DriveRecord, check_name};

/// A drive as `drive list` shows it.
#[derive(Debug, Clone)]
pub struct DriveInfo {
    pub name: String,
    pub size_gib: u64,
    pub owner_fingerprint: String,
    pub attached_to: Option<String>,
    pub target: Option<String>,
    pub path: std::path::PathBuf,
}

impl Vmctl {
    /// Creates an encrypted drive of `size_gib` whose key is wrapped to the owner of
    /// `owner_key_file` (its public part: no passphrase needed).
    pub fn drive_create(&self, name: &str, size_gib: u64, owner_key_file: &Path) -> Result<()> {
        check_name("drive", name, limits::DRIVE_NAME_BYTES_MAX)?;
        if !(1..=limits::DRIVE_GIB_MAX).contains(&size_gib) {
            return Err(Error::Invalid {
                what: "drive size",
                reason: format!(
                    "{size_gib} GiB is not between 1 and {} GiB",
                    limits::DRIVE_GIB_MAX
                ),
            });
        }
        let owner = keystore::read_key_file(owner_key_file)?.public();
        self.store.update(|state| {
            let path = self.store.drive_path(name);
            if state.drives.contains_key(name) || path.exists() {
                return Err(Error::DuplicateDrive(name.to_string()));
            }
            let (record, key) = drive::new_record(&state.site, size_gib, &owner)?;
            drive::create_image(&path, size_gib, &key)?;
            state.drives.insert(name.to_string(), record);
            Ok(())
        })
    }

    /// Deletes a drive that no VM has attached: its file and its wrapped key.
    pub fn drive_delete(&self, name: &str) -> Result<()> {
        self.store.update(|state| {
            let record = state.drive(name)?;
            if let Some(vm) = &record.attached_to {
                return Err(Error::DriveInUse {
                    drive: name.to_string(),
                    vm: vm.clone(),
                });
            }
            let path = self.store.drive_path(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(crate::error::io_error("removing", path)(e)),
            }
            state.drives.remove(name);
            Ok(())
        })
    }

    pub fn drives(&self) -> Result<Vec<DriveInfo>> {
        let state = self.store.read()?;
        Ok(state
            .drives
            .iter()
            .map(|(name, record)| DriveInfo {
                name: name.clone(),
                size_gib: record.size_gib,
                owner_fingerprint: drive::owner_fingerprint(record),
                attached_to: record.attached_to.clone(),
                target: record.target.clone(),
                path: self.store.drive_path(name),
            })
            .collect())
    }

    /// Attaches a drive to a VM (live if it runs, which needs the owner's key). Returns the
    /// guest device name.
    pub fn drive_attach(&self, drive: &str, vm: &str, key: Option<&OwnerKey>) -> Result<String> {
        self.store.update(|state| {
            let record = state.drive(drive)?.clone();
            let vm_record = state.vm(vm)?.clone();
            if let Some(writer) = &record.attached_to {
                return Err(Error::DriveInUse {
                    drive: drive.to_string(),
                    vm: writer.clone(),
                });
            }
            let target = free_target(&vm_record.drives, state)?;
            let host = self.connect(&vm_record.host)?;
            let domain = host.domain(vm)?;
            let live = is_running(&host, &domain)?;
            let spec = self.drive_spec(drive, &record, &target);
            let secrets = if live {
                let owner = unlock(vm, &format!("encrypted drives ({drive})"), key)?;
                self.drive_secrets(&host, vm, &[drive.to_string()], state, &owner)?
            } else {
                Vec::new()
            };
            host.change_device(&domain, &spec.to_xml(), true, live)?;
            drop(secrets);
            let record = state.drives.get_mut(drive).expect("checked above");
            record.attached_to = Some(vm.to_string());
            record.target = Some(target.clone());
            if let Some(vm_record) = state.vms.get_mut(vm) {
                vm_record.drives.push(drive.to_string());
            }
            Ok(target)
        })
    }

    /// Detaches a drive from its VM (live if it runs: waits until the guest let it go).
    pub fn drive_detach(&self, drive: &str) -> Result<String> {
        self.store.update(|state| {
            let record = state.drive(drive)?.clone();
            let vm = record
                .attached_to
                .clone()
                .ok_or_else(|| Error::DriveNotAttached {
                    drive: drive.to_string(),
                    vm: "any VM".into(),
                })?;
            let vm_record = state.vm(&vm)?.clone();
            let host = self.connect(&vm_record.host)?;
            let domain = host.domain(&vm)?;
            let live = is_running(&host, &domain)?;
            let target = record.target.clone().unwrap_or_default();
            let spec = self.drive_spec(drive, &record, &target);
            host.change_device(&domain, &spec.to_xml(), false, live)?;
            if live {
                let path = spec.path.display().to_string();
                let started = Instant::now();
                let timeout = Duration::from_secs(limits::DETACH_TIMEOUT_S);
                let looks = timeout.as_millis() / u128::from(limits::POLL_MS) + 1;
                let mut gone = false;
                for _ in 0..looks {
                    gone = !host.xml(&domain, false)?.contains(&path);
                    if gone || started.elapsed() > timeout {
                        break;
                    }
                    sleep(Duration::from_millis(limits::POLL_MS));
                }
                if !gone {
                    return Err(Error::Invalid {
                        what: "detach",
                        reason: format!(
                            "the guest of VM `{vm}` did not release drive `{drive}` within {} s \
                             (it stays detached from the VM's definition)",
                            limits::DETACH_TIMEOUT_S
                        ),
                    });
                }
            }
            let record = state.drives.get_mut(drive).expect("checked above");
            record.attached_to = None;
            record.target = None;
            if let Some(vm_record) = state.vms.get_mut(&vm) {
                vm_record.drives.retain(|d| d != drive);
            }
            Ok(vm)
        })
    }

    fn drive_spec(&self, drive: &str, record: &DriveRecord, target: &str) -> DriveSpec {
        DriveSpec {
            path: self.store.drive_path(drive),
            target: target.to_string(),
            serial: drive.to_string(),
            secret_uuid: record.secret_uuid.clone(),
        }
    }
}

/// The first guest device from `vdb` that none of the VM's drives uses.
fn free_target(drives: &[String], state: &crate::store::State) -> Result<String> {
    let used: Vec<&str> = drives
        .iter()
        .filter_map(|d| state.drives.get(d)?.target.as_deref())
        .collect();
    (b'b'..=b'z')
        .map(|letter| format!("vd{}", letter as char))
        .find(|target| !used.contains(&target.as_str()))
        .ok_or_else(|| Error::Invalid {
            what: "attach",
            reason: format!("a VM takes at most {} drives", limits::DRIVES_PER_VM_MAX),
        })
}
