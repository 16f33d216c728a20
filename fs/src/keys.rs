//! File keys: unwrapping them with the user's private key (cached per open file), wrapping a
//! new file's key to its owner and to everyone its directory is shared with, and checking
//! every recipient's public key against the site administrator's signature first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crypto::{ChunkCipher, DataKey, WrapContext, WrapKind};
use format::ids::{FileId, VaultId};
use identity::PublicIdentity;
use proto::ErrorKind;
use proto::v1::{
    GetAclRequest, GetUserRequest, GetWrappedKeysRequest, Principal, WrappedKey, get_user_request,
    principal,
};

use crate::error::FsError;
use crate::remote::Remote;

#[derive(Debug)]
pub struct Keys {
    remote: Remote,
    vault: VaultId,
    /// The site administrator's key, pinned when the user logged in first.
    admin: PublicIdentity,
    uid: u32,
    ciphers: Mutex<HashMap<FileId, Arc<ChunkCipher>>>,
    users: Mutex<HashMap<u32, PublicIdentity>>,
    acls: Mutex<HashMap<FileId, (std::time::Instant, Vec<u32>)>>,
    /// Wraps to this user's own key prepared ahead (see [`crypto::PreparedWrap`]): a new
    /// file's key is wrapped without X25519 work on the creating thread.
    own_wraps: Arc<Mutex<Vec<crypto::PreparedWrap>>>,
    /// A refill of `own_wraps` is under way.
    refilling: Arc<std::sync::atomic::AtomicBool>,
    /// To the thread that refills `own_wraps` (see [`start_refiller`]), once started.
    refiller: Mutex<Option<std::sync::mpsc::Sender<PublicIdentity>>>,
}

/// `own_wraps` is refilled to [`OWN_WRAPS_MAX`] when it falls below [`OWN_WRAPS_LOW`].
const OWN_WRAPS_LOW: usize = 16;
const OWN_WRAPS_MAX: usize = 64;

/// Starts the thread that refills `wraps` to [`OWN_WRAPS_MAX`] for each identity it is sent,
/// clearing `refilling` after each refill; it ends when the sender is dropped. It runs at the
/// lowest priority (nice 19), so that it takes a core only when nothing else wants it: a
/// refill on an ordinary blocking thread took about 3 ms of a core in one burst every 48
/// files, and on two cores the creating threads (this client's, storaged's and the program's)
/// waited behind it, 1.3 to 3 ms at a time.
fn start_refiller(
    wraps: Arc<Mutex<Vec<crypto::PreparedWrap>>>,
    refilling: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<std::sync::mpsc::Sender<PublicIdentity>> {
    let (sender, requests) = std::sync::mpsc::channel::<PublicIdentity>();
    std::thread::Builder::new()
        .name("vaultfs-wraps".into())
        .spawn(move || {
            // `None`: this thread (Linux keeps a nice value per thread).
            if let Err(error) = rustix::process::setpriority_process(None, 19) {
                tracing::debug!(%error, "could not lower the key wrap thread's priority");
            }
            while let Ok(me) = requests.recv() {
                while wraps.lock().expect("wraps poisoned").len() < OWN_WRAPS_MAX {
                    let prepared = crypto::prepare_wrap(&me);
                    wraps.lock().expect("wraps poisoned").push(prepared);
                }
                refilling.store(false, std::sync::atomic::Ordering::Release);
            }
        })?;
    Ok(sender)
}

/// How long a directory's readers are trusted for new files' keys.
const ACL_CACHE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(1);

fn key_error(ino: FileId, reason: impl std::fmt::Display) -> FsError {
    FsError::Key {
        ino,
        reason: reason.to_string(),
    }
}

pub fn user_principal(uid: u32) -> Principal {
    Principal {
        kind: Some(principal::Kind::User(uid)),
    }
}

impl Keys {
    pub fn new(remote: Remote, vault: VaultId, admin: PublicIdentity, uid: u32) -> Keys {
        Keys {
            remote,
            vault,
            admin,
            uid,
            ciphers: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            acls: Mutex::new(HashMap::new()),
            own_wraps: Arc::new(Mutex::new(Vec::new())),
            refilling: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            refiller: Mutex::new(None),
        }
    }

    pub fn vault(&self) -> VaultId {
        self.vault
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    fn context(&self, ino: FileId) -> WrapContext {
        WrapContext {
            vault: self.vault,
            kind: WrapKind::FileKey,
            object: ino.0,
        }
    }

    /// The wrapped keys of a file that this user can open.
    async fn wrapped_keys(&self, ino: FileId) -> Result<Vec<WrappedKey>, FsError> {
        let reply = self
            .remote
            .call("get_wrapped_keys", |mut api| async move {
                api.get_wrapped_keys(GetWrappedKeysRequest { ino: ino.0 })
                    .await
            })
            .await?;
        Ok(reply.keys)
    }

    /// The chunk cipher of a file: from memory, or by unwrapping the file key wrapped to us.
    pub async fn cipher(&self, ino: FileId) -> Result<Arc<ChunkCipher>, FsError> {
        if let Some(cipher) = self.ciphers.lock().expect("key cache poisoned").get(&ino) {
            return Ok(cipher.clone());
        }
        let keys = self.wrapped_keys(ino).await?;
        self.cipher_from(ino, &keys)
    }

    /// The chunk cipher of a file, from memory or from the wrapped keys an `Open` returned.
    pub fn cipher_from(
        &self,
        ino: FileId,
        keys: &[WrappedKey],
    ) -> Result<Arc<ChunkCipher>, FsError> {
        if let Some(cipher) = self.ciphers.lock().expect("key cache poisoned").get(&ino) {
            return Ok(cipher.clone());
        }
        let mine = user_principal(self.uid);
        let blob = keys
            .iter()
            .find(|k| k.principal.as_ref() == Some(&mine))
            .ok_or_else(|| {
                key_error(
                    ino,
                    "no key is wrapped to you (group keys are not supported yet)",
                )
            })?;
        let key = crypto::unwrap(&blob.blob, self.remote.identity(), &self.context(ino))
            .map_err(|e| key_error(ino, e))?;
        Ok(self.remember(ino, &key))
    }

    pub fn remember(&self, ino: FileId, key: &DataKey) -> Arc<ChunkCipher> {
        let cipher = Arc::new(key.chunk_cipher());
        self.ciphers
            .lock()
            .expect("key cache poisoned")
            .insert(ino, cipher.clone());
        cipher
    }

    pub fn forget(&self, ino: FileId) {
        self.ciphers
            .lock()
            .expect("key cache poisoned")
            .remove(&ino);
    }

    /// A user's public keys, after checking the site administrator's certificate on them.
    pub async fn user(&self, uid: u32) -> Result<PublicIdentity, FsError> {
        if let Some(public) = self.users.lock().expect("user cache poisoned").get(&uid) {
            return Ok(*public);
        }
        let user = self
            .remote
            .call("get_user", |mut api| async move {
                api.get_user(GetUserRequest {
                    by: Some(get_user_request::By::Uid(uid)),
                })
                .await
            })
            .await?;
        let public = PublicIdentity::from_slices(&user.signing_key, &user.wrapping_key)
            .ok_or_else(|| {
                FsError::local(ErrorKind::Internal, format!("user {uid}: malformed keys"))
            })?;
        let certificate: [u8; 64] = user.certificate.as_slice().try_into().map_err(|_| {
            FsError::local(
                ErrorKind::AccessDenied,
                format!("user {} is not approved", user.name),
            )
        })?;
        let message = proto::certificate_message(
            &self.vault.0,
            uid,
            &user.name,
            &public.signing,
            &public.wrapping,
        );
        self.admin
            .verify(proto::domains::USER_CERTIFICATE, &message, &certificate)
            .map_err(|_| {
                FsError::local(
                    ErrorKind::AccessDenied,
                    format!(
                        "user {}'s keys are not certified by this vault's administrator",
                        user.name
                    ),
                )
            })?;
        self.users
            .lock()
            .expect("user cache poisoned")
            .insert(uid, public);
        Ok(public)
    }

    /// The wrapped keys a new file in `parent` needs: one for us, and one for every user the
    /// directory's ACL lets read (the file inherits that ACL).
    pub async fn wrap_new_file(
        &self,
        ino: FileId,
        key: &DataKey,
        parent: FileId,
    ) -> Result<Vec<WrappedKey>, FsError> {
        let recipients = self.readers_of(parent).await?;
        let mut wrapped = Vec::with_capacity(recipients.len());
        for uid in recipients {
            let public = if uid == self.uid {
                self.remote.identity().public()
            } else {
                self.user(uid).await?
            };
            let blob = if uid == self.uid {
                crypto::wrap_prepared(self.own_wrap(&public), key, &self.context(ino))
            } else {
                crypto::wrap(key, &public, &self.context(ino))
            };
            wrapped.push(WrappedKey {
                principal: Some(user_principal(uid)),
                blob,
            });
        }
        Ok(wrapped)
    }

    /// A wrap to this user's own key, from the prepared ones if any are left (then the
    /// refiller thread is woken when they run low), else made now.
    fn own_wrap(&self, me: &PublicIdentity) -> crypto::PreparedWrap {
        use std::sync::atomic::Ordering;
        let (taken, left) = {
            let mut wraps = self.own_wraps.lock().expect("wraps poisoned");
            (wraps.pop(), wraps.len())
        };
        if left < OWN_WRAPS_LOW && !self.refilling.swap(true, Ordering::AcqRel) {
            let mut refiller = self.refiller.lock().expect("refiller poisoned");
            if refiller.is_none() {
                match start_refiller(self.own_wraps.clone(), self.refilling.clone()) {
                    Ok(sender) => *refiller = Some(sender),
                    Err(error) => {
                        tracing::warn!(%error, "could not start the thread that prepares key wraps; new files wrap their keys themselves")
                    }
                }
            }
            let woken = refiller.as_ref().is_some_and(|r| r.send(*me).is_ok());
            if !woken {
                // The next file tries again.
                self.refilling.store(false, Ordering::Release);
            }
        }
        match taken {
            Some(prepared) if prepared.is_for(me) => prepared,
            _ => crypto::prepare_wrap(me),
        }
    }

    /// This user and every user a directory's ACL lets read: the recipients of a new file's
    /// key. Cached for a second, so that creating many files costs one ACL lookup.
    async fn readers_of(&self, dir: FileId) -> Result<Vec<u32>, FsError> {
        if let Some((at, readers)) = self.acls.lock().expect("acl cache poisoned").get(&dir)
            && at.elapsed() < ACL_CACHE_LIFETIME
        {
            return Ok(readers.clone());
        }
        let acl = self
            .remote
            .call("get_acl", |mut api| async move {
                api.get_acl(GetAclRequest { ino: dir.0 }).await
            })
            .await?;
        let mut readers = vec![self.uid];
        for entry in acl.entries.iter().filter(|e| e.read) {
            if let Some(principal::Kind::User(uid)) = entry.principal.and_then(|p| p.kind)
                && !readers.contains(&uid)
            {
                readers.push(uid);
            }
        }
        let mut acls = self.acls.lock().expect("acl cache poisoned");
        if acls.len() > 10_000 {
            acls.clear();
        }
        acls.insert(dir, (std::time::Instant::now(), readers.clone()));
        Ok(readers)
    }

    /// The file's key wrapped for another user (for sharing).
    pub async fn wrap_for(&self, ino: FileId, uid: u32) -> Result<Vec<u8>, FsError> {
        let public = self.user(uid).await?;
        let keys = self.wrapped_keys(ino).await?;
        let mine = user_principal(self.uid);
        let blob = keys
            .iter()
            .find(|k| k.principal.as_ref() == Some(&mine))
            .ok_or_else(|| key_error(ino, "no key is wrapped to you"))?;
        let key = crypto::unwrap(&blob.blob, self.remote.identity(), &self.context(ino))
            .map_err(|e| key_error(ino, e))?;
        Ok(crypto::wrap(&key, &public, &self.context(ino)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refiller fills the pool for the identity it is sent, clears `refilling`, and runs
    /// at nice 19; it ends with its sender.
    #[test]
    fn the_refiller_fills_the_pool_at_the_lowest_priority() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let me = identity::Identity::generate().public();
        let wraps = Arc::new(Mutex::new(Vec::new()));
        let refilling = Arc::new(AtomicBool::new(true));
        let sender = start_refiller(wraps.clone(), refilling.clone()).expect("refiller");
        sender.send(me).expect("send");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while refilling.load(Ordering::Acquire) {
            assert!(
                std::time::Instant::now() < deadline,
                "no refill within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let wraps = wraps.lock().expect("wraps");
        assert_eq!(wraps.len(), OWN_WRAPS_MAX);
        assert!(wraps.iter().all(|w| w.is_for(&me)));
        // /proc/self/task/<tid>/stat: the nice value is the 19th field, the 17th after the
        // command name in parentheses.
        let nice: Vec<i64> = std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .filter_map(|task| {
                let task = task.ok()?.path();
                let comm = std::fs::read_to_string(task.join("comm")).ok()?;
                (comm.trim() == "vaultfs-wraps").then_some(())?;
                let stat = std::fs::read_to_string(task.join("stat")).ok()?;
                let after = stat.rsplit_once(')')?.1;
                after.split_whitespace().nth(16)?.parse().ok()
            })
            .collect();
        assert!(
            !nice.is_empty() && nice.iter().all(|&n| n == 19),
            "refiller threads' nice values: {nice:?}"
        );
        drop(sender);
    }
}
