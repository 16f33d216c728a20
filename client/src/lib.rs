//! A connection to `storaged`, for `vaultfs`, the administration commands, tests and
//! benchmarks: the transport (a Unix socket, or TLS pinned to the server's certificate
//! fingerprint), login by signing a challenge, the session token on every call, and errors
//! carrying the server's machine-readable [`ErrorKind`].

mod args;
mod tls;

pub use args::ServerArgs;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use hyper_util::rt::TokioIo;
use identity::{CertificateFingerprint, Identity};
use proto::ErrorKind;
use proto::v1::vault_client::VaultClient;
use proto::v1::{ChallengeRequest, HelloReply, HelloRequest, LoginRequest};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Where a server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    /// `host:port`, and the SHA-256 of the server's certificate (printed by storaged).
    Tls {
        address: String,
        pin: CertificateFingerprint,
    },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("bad server address {0:?}: use unix:PATH or https://HOST:PORT")]
    BadTarget(String),
    #[error("bad server fingerprint {0:?}: use sha256: and 64 hex digits, as storaged prints it")]
    BadFingerprint(String),
    #[error("cannot reach storaged at {target}: {reason}")]
    Connect { target: String, reason: String },
    /// The server refused or failed the call.
    #[error("{message}")]
    Server {
        kind: ErrorKind,
        code: tonic::Code,
        message: String,
    },
}

impl ClientError {
    /// The server's error kind; transport failures count as `Unavailable`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Server { kind, .. } => *kind,
            ClientError::BadTarget(_) | ClientError::BadFingerprint(_) => ErrorKind::Invalid,
            ClientError::Connect { .. } => ErrorKind::Unavailable,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        let kind = status
            .metadata()
            .get(proto::ERROR_KIND_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorKind::from_wire_name)
            .unwrap_or(match status.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ErrorKind::Unavailable,
                tonic::Code::Unauthenticated => ErrorKind::Unauthenticated,
                tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => ErrorKind::TooLarge,
                _ => ErrorKind::Internal,
            });
        ClientError::Server {
            kind,
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
            Target::Tls { address, .. } => write!(f, "https://{address}"),
        }
    }
}

impl Target {
    /// Parses `unix:PATH` or `https://HOST:PORT` (the latter needs the certificate pin).
    pub fn parse(text: &str, pin: Option<CertificateFingerprint>) -> Result<Target, ClientError> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ClientError::BadTarget(text.into()));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        if let Some(address) = text.strip_prefix("https://") {
            let address = address.trim_end_matches('/');
            if address.is_empty() || !address.contains(':') {
                return Err(ClientError::BadTarget(text.into()));
            }
            let pin = pin.ok_or_else(|| {
                ClientError::BadTarget(format!(
                    "{text} (a TLS server needs its certificate fingerprint)"
                ))
            })?;
            return Ok(Target::Tls {
                address: address.to_string(),
                pin,
            });
        }
        Err(ClientError::BadTarget(text.into()))
    }
}

/// The largest message either side sends: one sealed chunk and its request fields.
const MESSAGE_BYTES_MAX: usize = proto::limits::MESSAGE_BYTES_MAX;

/// Opens a channel to `target`. The channel connects lazily and reconnects by itself, so a
/// restarted server is reached again without a new channel.
pub fn channel(target: &Target) -> Result<Channel, ClientError> {
    let endpoint = Endpoint::from_static("http://storaged.invalid")
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(proto::limits::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(proto::limits::CONNECTION_WINDOW_BYTES)
        .max_frame_size(proto::limits::FRAME_BYTES_MAX);
    match target.clone() {
        Target::Unix(path) => Ok(endpoint.connect_with_connector_lazy(tower::service_fn(
            move |_| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(TokioIo::new)
                }
            },
        ))),
        Target::Tls { address, pin } => {
            let connector = tls::connector(pin);
            Ok(
                endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
                    let (address, connector) = (address.clone(), connector.clone());
                    async move { tls::connect(&connector, &address).await.map(TokioIo::new) }
                })),
            )
        }
    }
}

/// Adds the session token, and the client's name for leases, to every call.
#[derive(Clone, Debug)]
pub struct TokenInterceptor {
    token: Arc<RwLock<Option<String>>>,
    client: MetadataValue<tonic::metadata::Ascii>,
}

impl Default for TokenInterceptor {
    fn default() -> Self {
        let client = u64::from_le_bytes(identity::random_bytes());
        TokenInterceptor {
            token: Arc::default(),
            client: MetadataValue::try_from(format!("{client:016x}")).expect("hex is ASCII"),
        }
    }
}

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = self.token.read().expect("token lock poisoned").as_ref() {
            let value = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| tonic::Status::internal("session token is not ASCII"))?;
            request.metadata_mut().insert("authorization", value);
        }
        request
            .metadata_mut()
            .insert(proto::CLIENT_KEY, self.client.clone());
        Ok(request)
    }
}

pub type Api = VaultClient<InterceptedService<Channel, TokenInterceptor>>;

/// A connection with (after [`Connection::login`]) a session.
#[derive(Clone, Debug)]
pub struct Connection {
    api: Api,
    token: TokenInterceptor,
    pub target: Target,
}

/// Who logged in.
#[derive(Clone, Debug)]
pub struct LoggedIn {
    pub uid: u32,
    pub admin: bool,
    pub expires_unix: i64,
}

impl Connection {
    pub fn new(target: &Target) -> Result<Connection, ClientError> {
        Connection::over_new_channel(target, TokenInterceptor::default())
    }

    fn over_new_channel(
        target: &Target,
        token: TokenInterceptor,
    ) -> Result<Connection, ClientError> {
        let api = VaultClient::with_interceptor(channel(target)?, token.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        Ok(Connection {
            api,
            token,
            target: target.clone(),
        })
    }

    /// The same server and session over a channel of its own, whose tasks run on the runtime
    /// this is called in (so a thread driving its own runtime makes its calls without
    /// handing them to another thread).
    pub fn another_channel(&self) -> Result<Connection, ClientError> {
        Connection::over_new_channel(&self.target, self.token.clone())
    }

    /// The generated client, carrying this connection's session token.
    pub fn api(&self) -> Api {
        self.api.clone()
    }

    pub async fn hello(&self) -> Result<HelloReply, ClientError> {
        Ok(self.api().hello(HelloRequest {}).await?.into_inner())
    }

    /// Logs in as `name` by signing a fresh challenge with `identity`.
    pub async fn login(&self, name: &str, identity: &Identity) -> Result<LoggedIn, ClientError> {
        let vault = self.hello().await?.vault_id;
        let challenge = self
            .api()
            .challenge(ChallengeRequest { name: name.into() })
            .await?
            .into_inner()
            .challenge;
        let message = proto::login_message(&vault, &challenge);
        let signature = identity.sign(proto::domains::LOGIN, &message);
        let reply = self
            .api()
            .login(LoginRequest {
                name: name.into(),
                challenge,
                signature: signature.to_vec(),
            })
            .await?
            .into_inner();
        *self.token.token.write().expect("token lock poisoned") = Some(reply.token);
        Ok(LoggedIn {
            uid: reply.uid,
            admin: reply.admin,
            expires_unix: reply.expires_unix,
        })
    }

    /// Uses an existing session token (for example one a test forged or let expire).
    pub fn set_token(&self, token: Option<String>) {
        *self.token.token.write().expect("token lock poisoned") = token;
    }
}
