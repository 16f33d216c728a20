//! The connection to storaged, as the filesystem uses it: every call re-logs in once when the
//! session has expired, and waits (bounded) while the server is unreachable, so that a
//! restarted daemon is picked up without remounting.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Api, Connection};
use identity::Identity;
use proto::ErrorKind;

use crate::error::FsError;

#[derive(Clone)]
pub struct Remote {
    connection: Connection,
    name: String,
    identity: Arc<Identity>,
    /// How long a call waits for an unreachable server before it fails.
    wait: Duration,
    relogin: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({} as {})", self.connection.target, self.name)
    }
}

impl Remote {
    pub fn new(
        connection: Connection,
        name: &str,
        identity: Arc<Identity>,
        wait: Duration,
    ) -> Remote {
        Remote {
            connection,
            name: name.to_string(),
            identity,
            wait,
            relogin: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    pub async fn login(&self) -> Result<client::LoggedIn, FsError> {
        let _one_at_a_time = self.relogin.lock().await;
        Ok(self.connection.login(&self.name, &self.identity).await?)
    }

    /// Runs one API call with re-login and bounded waiting for the server.
    pub async fn call<T, F, Fut>(&self, what: &'static str, mut call: F) -> Result<T, FsError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut relogged = false;
        let mut pause = Duration::from_millis(50);
        loop {
            let error: FsError = match call(self.connection.api()).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) => status.into(),
            };
            match error.kind() {
                ErrorKind::Unauthenticated if !relogged => {
                    relogged = true;
                    tracing::info!(what, "session ended; logging in again");
                    self.login().await?;
                }
                ErrorKind::Unavailable if started.elapsed() < self.wait => {
                    tracing::warn!(what, %error, "storaged unreachable; waiting");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                _ => return Err(error),
            }
        }
    }
}
