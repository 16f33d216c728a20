//! The one path every call takes: authenticate (unless the call is public), settle leases,
//! answer, then record metrics, log, audit a refusal, and map an error to a status. Each
//! request type answers itself through [`Call`] or [`PublicCall`], so a call's own code is
//! what it does, never this.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use proto::v1::Attr;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::leases::{Names, settle_leases};
use super::{Service, State, wire};
use crate::audit;
use crate::leases::Holder;
use crate::meta::{self, Inode, Txn, Version};
use crate::ops::{Caller, OpError};

/// A call that needs a session: its request message answers it with a `Reply`.
pub(super) trait Call<Reply>: Names + Send + Sized + 'static {
    /// The reply to this request from the authenticated caller of `at`.
    fn answer(self, at: Context) -> impl Future<Output = Result<Reply, OpError>> + Send;
}

/// A call that needs no session (hello, register, challenge, login): its request message
/// answers it with a `Reply`.
pub(super) trait PublicCall<Reply>: Send + Sized + 'static {
    fn answer(self, state: Arc<State>) -> impl Future<Output = Result<Reply, OpError>> + Send;
}

/// What an authenticated call is answered with: the daemon's state, who asks, and what the
/// transport tells of them.
pub(super) struct Context {
    pub state: Arc<State>,
    pub caller: Caller,
    /// The session token the call came with.
    pub token: String,
    /// The client that named itself (`vault-client`), if any.
    pub client: Option<u64>,
    /// The user ID of the peer, for a call over the Unix socket (from this machine).
    pub local_uid: Option<u32>,
}

impl Context {
    /// Runs `op` as the caller in a read transaction.
    pub async fn read<T, F>(&self, mut op: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn Txn, &Caller) -> Result<T, OpError> + Send + 'static,
    {
        let who = self.caller.clone();
        self.state.read(move |txn| op(txn, &who)).await
    }

    /// Runs `op` as the caller in a write transaction, answered once it is visible if `lazy`,
    /// else once it is durable.
    pub async fn write<T, F>(&self, lazy: bool, mut op: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn Txn, &Caller) -> Result<T, OpError> + Send + 'static,
    {
        let who = self.caller.clone();
        self.state.write_as(lazy, move |txn| op(txn, &who)).await
    }

    /// Runs `op` as the caller in a write transaction, answered once it is durable: for
    /// requests that cannot ask for less.
    pub async fn write_durably<T, F>(&self, op: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn Txn, &Caller) -> Result<T, OpError> + Send + 'static,
    {
        self.write(false, op).await
    }

    /// The caller's view of an inode.
    pub fn attr(&self, inode: &Inode) -> Attr {
        wire::attr(inode, &self.caller)
    }

    /// The caller's view of an inode that a change gave a name in a directory now at
    /// `parent_version` (none: no name was added).
    pub fn named(&self, inode: &Inode, parent_version: Option<Version>) -> Attr {
        Attr {
            parent_version: parent_version.map_or(0, Version::get),
            ..self.attr(inode)
        }
    }
}

impl Service {
    /// Answers the authenticated call `op` (its name in logs, metrics and the audit log).
    pub(super) async fn call<Q: Call<R>, R>(
        &self,
        op: &'static str,
        request: Request<Q>,
    ) -> Result<Response<R>, Status> {
        let span = tracing::info_span!("request", op, uid = tracing::field::Empty);
        self.run(op, span, self.authenticated(op, request)).await
    }

    /// Answers the call `op`, which needs no session.
    pub(super) async fn call_public<Q: PublicCall<R>, R>(
        &self,
        op: &'static str,
        request: Request<Q>,
    ) -> Result<Response<R>, Status> {
        let span = tracing::info_span!("request", op);
        let answer = request.into_inner().answer(self.state.clone());
        self.run(op, span, answer).await
    }

    /// The caller, then the answer, with an audit event when access is denied.
    async fn authenticated<Q: Call<R>, R>(
        &self,
        op: &'static str,
        request: Request<Q>,
    ) -> Result<R, OpError> {
        let state = self.state.clone();
        let token = bearer(&request)?;
        let caller = state.auth.authenticate(&*state.store, &token).await?;
        tracing::Span::current().record("uid", caller.uid);
        let uid = caller.uid;
        let client = client_of(&request);
        let local_uid = peer_uid(&request);
        let me = client.map(|client| Holder { uid, client });
        let request = request.into_inner();
        let _in_progress = settle_leases(&state, &caller, me, &request).await;
        let at = Context {
            state: state.clone(),
            caller,
            token,
            client,
            local_uid,
        };
        let outcome = request.answer(at).await;
        if let Err(OpError::AccessDenied(reason)) = &outcome {
            tracing::warn!(%reason, "access denied");
            let detail = format!("{op}: {reason}");
            state
                .audit(uid, "access-denied", audit::NO_FILE, detail)
                .await;
        }
        outcome
    }

    /// Runs `work` in `span`, then records and logs how it went, and maps an error to a
    /// status.
    async fn run<T>(
        &self,
        op: &'static str,
        span: tracing::Span,
        work: impl Future<Output = Result<T, OpError>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let outcome = work.instrument(span.clone()).await;
        let elapsed = started.elapsed();
        self.state.metrics.record(op, elapsed, outcome.is_ok());
        span.in_scope(|| match &outcome {
            Ok(_) => tracing::debug!(micros = elapsed.as_micros() as u64, "ok"),
            // A filesystem answers these all the time (a lookup before a create, a missing
            // attribute): not worth a log line each.
            Err(
                error @ (OpError::NotFound | OpError::Exists | OpError::NotEmpty | OpError::NoData),
            ) => tracing::debug!(micros = elapsed.as_micros() as u64, %error, "refused"),
            Err(error) => tracing::info!(micros = elapsed.as_micros() as u64, %error, "refused"),
        });
        outcome.map(Response::new).map_err(|e| status(&e))
    }
}

/// The requests of a call that carries several (at most `max`), each done as its own call,
/// in order (the client learns its directories' versions from the replies): the outcome of
/// each.
pub(super) async fn each_in_order<Q, T, Fut>(
    requests: Vec<Q>,
    max: usize,
    mut each: impl FnMut(Q) -> Fut,
) -> Result<Vec<Result<T, OpError>>, OpError>
where
    Fut: Future<Output = Result<T, OpError>>,
{
    if requests.len() > max {
        return Err(OpError::invalid(format!(
            "at most {max} requests in one call"
        )));
    }
    let mut outcomes = Vec::with_capacity(requests.len());
    for request in requests {
        outcomes.push(each(request).await);
    }
    Ok(outcomes)
}

fn bearer<T>(request: &Request<T>) -> Result<String, OpError> {
    let header = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| OpError::Unauthenticated("no session token; log in first".into()))?;
    header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .ok_or_else(|| OpError::Unauthenticated("malformed authorization header".into()))
}

/// The client a call names (`vault-client`), if any.
fn client_of<Q>(request: &Request<Q>) -> Option<u64> {
    let value = request.metadata().get(proto::CLIENT_KEY)?.to_str().ok()?;
    u64::from_str_radix(value, 16).ok()
}

/// The user ID of a peer over the Unix socket (only a client on this machine has one).
fn peer_uid<Q>(request: &Request<Q>) -> Option<u32> {
    request
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|peer| peer.uid())
}

fn status(error: &OpError) -> Status {
    use tonic::Code;
    let code = match error {
        OpError::NotFound | OpError::NoData => Code::NotFound,
        OpError::Exists => Code::AlreadyExists,
        OpError::AccessDenied(_) => Code::PermissionDenied,
        OpError::Unauthenticated(_) => Code::Unauthenticated,
        OpError::StaleGeneration { .. } | OpError::StaleManifest(_) => Code::Aborted,
        OpError::Invalid(_) | OpError::NameTooLong | OpError::BadChunk(_) => Code::InvalidArgument,
        OpError::NotEmpty | OpError::NotDirectory | OpError::IsDirectory => {
            Code::FailedPrecondition
        }
        OpError::TooLarge(_) => Code::OutOfRange,
        OpError::NotSupported(_) => Code::Unimplemented,
        OpError::Store(meta::StoreError::Unavailable(_)) => Code::Unavailable,
        OpError::Store(meta::StoreError::Conflict(_)) => Code::Aborted,
        OpError::Store(meta::StoreError::Corrupt(_)) => Code::DataLoss,
        OpError::Store(meta::StoreError::SchemaTooNew { .. }) => Code::Internal,
    };
    let mut status = Status::new(code, error.to_string());
    if let Ok(value) = error.kind().wire_name().parse() {
        status.metadata_mut().insert(proto::ERROR_KIND_KEY, value);
    }
    status
}
