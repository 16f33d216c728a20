//! Logging in and checking sessions.
//!
//! A client asks for a challenge, signs it with its signing key, and gets a session token
//! that expires. Challenges are stateless (a MAC under a secret all storaged instances of the
//! vault share, with a timestamp), so a login may land on another instance than its
//! challenge. A challenge answered is recorded in the metadata store until it expires, in the
//! transaction that opens the session, so that no instance, before or after a restart,
//! accepts the same login twice. Tokens are stored only as their SHA-256.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::audit::{self, AuditQueue};
use crate::login_failures::FailedLogins;
use crate::meta::{self, MetaStore, Session, Time, now};
use crate::ops::names::check_principal_name;
use crate::ops::users::ADMIN_NAME;
use crate::ops::{Caller, OpError};
use crate::settings::VaultSettings;

/// A challenge: issue time (i64 LE), 16 random bytes, 16 bytes of MAC.
pub const CHALLENGE_BYTES: usize = 40;
const CHALLENGE_LIFETIME: Duration = Duration::from_secs(120);
/// How long the record of an answered challenge outlives the challenge: instances whose clocks
/// lag by up to this much still find it while they would take the challenge.
const CHALLENGE_RECORD_MARGIN: Duration = Duration::from_secs(60);
/// How long a session's caller stays cached in memory: a logout or revocation reaches every
/// instance within this time.
const CALLER_CACHE_LIFETIME: Duration = Duration::from_secs(10);
const CALLER_CACHE_ENTRIES_MAX: usize = 10_000;

#[derive(Debug)]
pub struct Auth {
    settings: VaultSettings,
    session_lifetime: Duration,
    callers: Mutex<HashMap<[u8; 32], (Caller, Time, Time)>>,
    failures: FailedLogins,
}

/// A new session.
#[derive(Debug, Clone)]
pub struct Login {
    pub token: String,
    pub expires: Time,
    pub uid: u32,
    pub admin: bool,
}

fn nanos(duration: Duration) -> Time {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// A name that can log in: the administrator's, or one a user could have registered. Checked
/// before anything else, so that no work and no audit entry is spent on any other.
fn check_login_name(name: &str) -> Result<(), OpError> {
    if name == ADMIN_NAME {
        return Ok(());
    }
    check_principal_name(name)
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    pub fn new(settings: VaultSettings, session_lifetime: Duration) -> Auth {
        Auth {
            settings,
            session_lifetime,
            callers: Mutex::new(HashMap::new()),
            failures: FailedLogins::default(),
        }
    }

    pub fn settings(&self) -> &VaultSettings {
        &self.settings
    }

    fn mac(&self, name: &str, issued_and_random: &[u8]) -> [u8; 16] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.settings.challenge_secret)
            .expect("HMAC takes keys of any length");
        mac.update(b"vault/v1 challenge");
        mac.update(&(name.len() as u64).to_le_bytes());
        mac.update(name.as_bytes());
        mac.update(issued_and_random);
        let mut out = [0u8; 16];
        out.copy_from_slice(&mac.finalize().into_bytes()[..16]);
        out
    }

    /// A challenge for `name`, which must be a name a user could have.
    pub fn challenge(&self, name: &str) -> Result<Vec<u8>, OpError> {
        check_login_name(name)?;
        let mut challenge = Vec::with_capacity(CHALLENGE_BYTES);
        challenge.extend_from_slice(&now().to_le_bytes());
        challenge.extend_from_slice(&identity::random_bytes::<16>());
        let mac = self.mac(name, &challenge);
        challenge.extend_from_slice(&mac);
        Ok(challenge)
    }

    /// A challenge this vault issued for `name`, recently: until when its record is kept once
    /// answered. Whether it was answered before is for the store to say
    /// ([`meta::Txn::use_challenge`]).
    fn check_challenge(&self, name: &str, challenge: &[u8]) -> Result<Time, OpError> {
        let challenge: [u8; CHALLENGE_BYTES] = challenge
            .try_into()
            .map_err(|_| OpError::Unauthenticated("malformed challenge".into()))?;
        let expected = self.mac(name, &challenge[..24]);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &expected[..],
            &challenge[24..],
        )) {
            return Err(OpError::Unauthenticated(
                "challenge was not issued for this name".into(),
            ));
        }
        let issued = i64::from_le_bytes(challenge[..8].try_into().expect("8 bytes"));
        let now = now();
        if now - issued > nanos(CHALLENGE_LIFETIME) || issued > now + nanos(Duration::from_secs(5))
        {
            return Err(OpError::Unauthenticated("challenge expired".into()));
        }
        Ok(issued + nanos(CHALLENGE_LIFETIME) + nanos(CHALLENGE_RECORD_MARGIN))
    }

    /// Checks the signed challenge and opens a session. A failure with a well-formed name is
    /// audited, within the bounds of [`FailedLogins`] (queued, not a transaction of its own).
    pub async fn login(
        &self,
        store: &dyn MetaStore,
        audit: &AuditQueue,
        name: &str,
        challenge: &[u8],
        signature: &[u8],
    ) -> Result<Login, OpError> {
        check_login_name(name)?;
        let outcome = self.try_login(store, name, challenge, signature).await;
        if let Err(error) = &outcome {
            for detail in self.failures.note(name, &error.to_string(), now()) {
                audit
                    .record(0, "login-failed", audit::NO_FILE, detail)
                    .await;
            }
        }
        outcome
    }

    async fn try_login(
        &self,
        store: &dyn MetaStore,
        name: &str,
        challenge: &[u8],
        signature: &[u8],
    ) -> Result<Login, OpError> {
        let record_expires = self.check_challenge(name, challenge)?;
        let signature: [u8; 64] = signature
            .try_into()
            .map_err(|_| OpError::Unauthenticated("a signature has 64 bytes".into()))?;
        let (public, uid, admin) = if name == ADMIN_NAME {
            (self.settings.admin, 0, true)
        } else {
            let lookup = name.to_string();
            let user = meta::read(store, move |txn| -> Result<_, OpError> {
                Ok(txn.get_user_by_name(&lookup)?)
            })
            .await?
            .filter(|u| u.is_active())
            .ok_or_else(|| OpError::Unauthenticated("no active user of that name".into()))?;
            let public = identity::PublicIdentity {
                signing: user.signing_key,
                wrapping: user.wrapping_key,
            };
            (public, user.uid, false)
        };
        let message = proto::login_message(&self.settings.vault.0, challenge);
        public
            .verify(proto::domains::LOGIN, &message, &signature)
            .map_err(|_| OpError::Unauthenticated("login signature does not verify".into()))?;

        let token = hex::encode(identity::random_bytes::<32>());
        let session = Session {
            token_hash: token_hash(&token),
            uid,
            admin,
            expires: now() + nanos(self.session_lifetime),
        };
        let stored = session.clone();
        let who = name.to_string();
        let answered: [u8; 32] = Sha256::digest(challenge).into();
        meta::write(store, move |txn| -> Result<(), OpError> {
            txn.delete_expired_challenges(now())?;
            if !txn.use_challenge(&answered, record_expires)? {
                return Err(OpError::Unauthenticated("challenge already used".into()));
            }
            txn.put_session(&stored)?;
            txn.delete_expired_sessions(now())?;
            Ok(audit::append(
                txn,
                uid,
                "login",
                audit::NO_FILE,
                &who,
                now(),
            )?)
        })
        .await?;
        Ok(Login {
            token,
            expires: session.expires,
            uid,
            admin,
        })
    }

    /// The caller behind a session token.
    pub async fn authenticate(
        &self,
        store: &dyn MetaStore,
        token: &str,
    ) -> Result<Caller, OpError> {
        let hash = token_hash(token);
        let now = now();
        if let Some((caller, expires, cached)) = self
            .callers
            .lock()
            .expect("caller cache poisoned")
            .get(&hash)
            .cloned()
            && expires > now
            && now - cached < nanos(CALLER_CACHE_LIFETIME)
        {
            return Ok(caller);
        }
        let (session, groups) = meta::read(store, move |txn| -> Result<_, OpError> {
            let Some(session) = txn.get_session(&hash)? else {
                return Ok(None);
            };
            let groups = txn.groups_of(session.uid)?;
            Ok(Some((session, groups)))
        })
        .await?
        .ok_or_else(|| OpError::Unauthenticated("unknown or ended session".into()))?;
        if session.expires <= now {
            return Err(OpError::Unauthenticated(
                "session expired; log in again".into(),
            ));
        }
        let mut all_groups = vec![crate::ops::access::EVERYONE];
        all_groups.extend(groups);
        let caller = Caller {
            uid: session.uid,
            groups: all_groups,
            admin: session.admin,
        };
        let mut cache = self.callers.lock().expect("caller cache poisoned");
        if cache.len() >= CALLER_CACHE_ENTRIES_MAX {
            cache.retain(|_, (_, expires, cached)| {
                *expires > now && now - *cached < nanos(CALLER_CACHE_LIFETIME)
            });
        }
        cache.insert(hash, (caller.clone(), session.expires, now));
        Ok(caller)
    }

    pub async fn logout(&self, store: &dyn MetaStore, token: &str) -> Result<(), OpError> {
        let hash = token_hash(token);
        self.callers
            .lock()
            .expect("caller cache poisoned")
            .remove(&hash);
        meta::write(store, move |txn| -> Result<(), OpError> {
            Ok(txn.delete_session(&hash)?)
        })
        .await
    }
}
