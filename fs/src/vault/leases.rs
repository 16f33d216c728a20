//! Directory leases: asking storaged for them, hearing its recalls, and giving them back
//! after sending what was closed under them (see [`super::behind`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use format::ids::FileId;
use proto::v1::{LeaseReply, LeaseRequest, RecallsRequest};

use super::Vault;
use crate::error::FsError;

impl Vault {
    /// Asks storaged, in the background, for a lease on `dir`, where this client just created
    /// a file, unless it holds one, asked already, or gave one back a moment ago.
    pub(super) fn ask_lease(&self, dir: FileId) {
        if !self.may_ask_lease(dir) {
            return;
        }
        let Some(me) = self.me.get().cloned() else {
            self.behind.answered(dir, false);
            return;
        };
        let remote = self.shared.remote.clone();
        self.shared.spawn(async move {
            let reply = lease_call(&remote, dir, false).await;
            if let Err(error) = &reply {
                tracing::debug!(%error, %dir, "no lease");
            }
            if let Some(vault) = me.upgrade() {
                vault.lease_answered(dir, reply.is_ok_and(|r| r.granted));
            }
        });
    }

    /// Whether to ask for a lease on `dir` now (this client may hold one, and holds, asks
    /// for or paused none there); if so, it counts as asked, and the answer goes to
    /// [`Vault::lease_answered`].
    pub(super) fn may_ask_lease(&self, dir: FileId) -> bool {
        self.shared.remote.server_has(proto::features::LEASES)
            && self.recalls_heard()
            && self.behind.should_ask(dir)
    }

    /// The server's answer to asking for `dir`'s lease.
    pub(super) fn lease_answered(&self, dir: FileId, granted: bool) {
        if granted {
            // The closes from now on go unanswered for a moment: what this client knows of
            // the directory must first be proven by a change asked for after the grant
            // (another client may have changed it just before).
            self.shared.dirs().distrust(dir, Instant::now());
        }
        self.behind.answered(dir, granted);
    }

    fn recalls_heard(&self) -> bool {
        self.hearing.load(Ordering::SeqCst)
    }

    /// Starts closing new files under directory leases when the server grants them (see
    /// [`crate::vault::behind`]): the uploader thread, and listening for recalls.
    pub fn start_behind(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        if self.me.set(me.clone()).is_err()
            || !self.shared.remote.server_has(proto::features::LEASES)
        {
            return;
        }
        // One uploader: its calls, and so the directory versions their replies carry, come
        // in order.
        let uploader = me.clone();
        let started = std::thread::Builder::new()
            .name("vaultfs-behind".into())
            .spawn(move || {
                while let Some(vault) = uploader.upgrade() {
                    if vault.behind.stopping() {
                        return;
                    }
                    for dir in vault.behind.idle(crate::vault::behind::LEASE_IDLE) {
                        let giving = vault.clone();
                        vault
                            .shared
                            .spawn(async move { giving.give_back(dir).await });
                    }
                    let queued = vault.behind.next(
                        proto::limits::PUTS_PER_CALL_MAX,
                        std::time::Duration::from_secs(1),
                    );
                    if !queued.is_empty() {
                        vault.send_queued(queued);
                    }
                    // Unlinks answered here go within about a second (see `unlinks`).
                    vault.send_all_unlinks();
                }
            });
        if let Err(error) = started {
            tracing::warn!(%error, "no uploader thread: every close waits for the server");
            return;
        }
        self.shared
            .spawn(hear_recalls(me, self.shared.remote.clone()));
    }

    /// Gives the lease on `dir` back (storaged recalled it, or no close used it for a while):
    /// sends every new file still held there first.
    async fn give_back(&self, dir: FileId) {
        self.behind.recalled(dir);
        self.ahead.drop_dir(dir);
        if let Err(error) = self.send_held_in(Some(dir)).await {
            tracing::error!(%error, %dir, "could not send the files closed under a recalled lease");
        }
        let given = lease_call(&self.shared.remote, dir, true).await;
        if let Err(error) = given {
            tracing::warn!(%error, %dir, "could not give a lease back; the server takes it");
        }
        self.behind.given_back(dir);
    }
}

/// Asks for `dir`'s lease, or gives it back.
async fn lease_call(
    remote: &crate::remote::Remote,
    dir: FileId,
    give_back: bool,
) -> Result<LeaseReply, FsError> {
    remote
        .send(
            "lease",
            LeaseRequest {
                dir: dir.0,
                give_back,
            },
            |mut api, r| async move { api.lease(r).await },
        )
        .await
}

/// Listens for storaged's recalls while the mount lasts. When the call ends (storaged
/// restarted, the connection dropped), the server has forgotten this client's leases: what
/// was closed under them is sent at once, and listening starts again.
async fn hear_recalls(me: std::sync::Weak<Vault>, remote: crate::remote::Remote) {
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        let recalls = remote
            .send("recalls", RecallsRequest {}, |mut api, r| async move {
                api.recalls(r).await
            })
            .await;
        match recalls {
            Ok(mut recalls) => {
                let Some(vault) = me.upgrade() else {
                    return;
                };
                vault.hearing.store(true, Ordering::SeqCst);
                drop(vault);
                pause = std::time::Duration::from_millis(100);
                while let Ok(Some(recall)) = recalls.message().await {
                    let Some(vault) = me.upgrade() else {
                        return;
                    };
                    let dir = FileId(recall.dir);
                    tokio::spawn(async move { vault.give_back(dir).await });
                }
            }
            Err(error) => tracing::debug!(%error, "not listening for lease recalls"),
        }
        let Some(vault) = me.upgrade() else {
            return;
        };
        vault.hearing.store(false, Ordering::SeqCst);
        let lost = vault.behind.lost_all();
        vault.ahead.drop_all();
        if !lost.is_empty()
            && let Err(error) = vault.send_held_in(None).await
        {
            tracing::error!(%error, "could not send the files closed under leases the server forgot");
        }
        if vault.behind.stopping() {
            return;
        }
        drop(vault);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}
