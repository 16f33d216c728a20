//! Wiring: open the stores, initialise or load the vault, then serve the API on the Unix
//! socket (and TCP with TLS when asked), metrics, and garbage collection, until SIGTERM or
//! SIGINT.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use identity::PublicIdentity;
use proto::v1::vault_server::VaultServer;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Identity as TlsCert, Server, ServerTlsConfig};

use crate::api::{Service, State};
use crate::auth::Auth;
use crate::chunkstore::{ChunkStore, DirChunkStore};
use crate::config::{Config, MetaBackend};
use crate::leases::Leases;
use crate::meta::{self, MetaStore, mongo::MongoStore, now, sqlite::SqliteStore};
use crate::metrics::Metrics;
use crate::ops::OpError;
use crate::settings::{self, VaultSettings};
use crate::{gc, tls};

/// Reads the site administrator's public key file (`admin.pub`).
pub fn read_admin_key(path: &Path) -> anyhow::Result<PublicIdentity> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading the site administrator's public key {} (create it with `vault-admin init \
             --data-dir DIR`)",
            path.display()
        )
    })?;
    PublicIdentity::from_admin_key_text(&text).with_context(|| format!("in {}", path.display()))
}

/// Opens the configured metadata store. `chunks`: the chunk store whose files its records
/// name, when the daemon serves: an embedded store then defers syncing them (see
/// `meta::Barrier`).
pub async fn open_store(
    config: &Config,
    chunks: Option<Arc<DirChunkStore>>,
) -> anyhow::Result<Arc<dyn MetaStore>> {
    match &config.meta {
        MetaBackend::Sqlite(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let barrier = chunks.map(|chunks| -> meta::Barrier {
                Arc::new(move || chunks.sync_pending().map_err(|e| e.to_string()))
            });
            let store = SqliteStore::open(path, barrier)
                .with_context(|| format!("opening the metadata database {}", path.display()))?;
            Ok(Arc::new(store))
        }
        MetaBackend::Mongo(url) => {
            let store = MongoStore::open(url)
                .await
                .context("opening the MongoDB metadata store")?;
            Ok(Arc::new(store))
        }
    }
}

/// Refuses a configuration whose embedded store does not exist yet: the tools that inspect an
/// existing vault (`audit verify`, `fsck`) must not make an empty store (and its directory)
/// where a mistyped `--data-dir` points, which a later restore would then refuse.
pub fn require_existing_store(config: &Config) -> anyhow::Result<()> {
    if let MetaBackend::Sqlite(path) = &config.meta
        && !path.is_file()
    {
        bail!(
            "no metadata database at {}: not a vault's data directory",
            path.display()
        );
    }
    Ok(())
}

/// Runs the daemon until a signal stops it.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    crate::private::make_private(&config)?;
    let (state, vault) = start(&config).await?;
    let (stop, stopped) = watch::channel(false);
    stop_on_signal(state.leases.clone(), stop);
    tokio::spawn(gc::run(state.clone(), config.gc_interval, config.gc_grace));
    if let Some(addr) = config.metrics_addr {
        let metrics = state.metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve(addr, metrics).await {
                tracing::error!(%error, %addr, "metrics endpoint failed");
            }
        });
    }
    let listener = bind_socket(&config.socket)?;
    let descriptor_socket = proto::descriptor_socket(&config.socket);
    let descriptor_listener = bind_socket(&descriptor_socket)?
        .into_std()
        .and_then(|listener| {
            listener.set_nonblocking(false)?;
            Ok(listener)
        })
        .context("the descriptor socket")?;
    crate::descriptors::serve(descriptor_listener, state.descriptors.clone())
        .context("starting the descriptor socket thread")?;
    let serving = servers(&config, &state, &vault, listener, &stopped)?;
    let served = until_stopped(serving, stopped).await;
    let _ = std::fs::remove_file(&config.socket);
    let _ = std::fs::remove_file(&descriptor_socket);
    state.audit.flush().await;
    // Everything acknowledged becomes durable before the daemon goes.
    if let Err(error) = state.store.sync().await {
        tracing::error!(%error, "could not make the metadata durable while stopping");
    }
    served.context("serving")?;
    tracing::info!("storaged stopped");
    Ok(())
}

/// Opens the stores, initialises or loads the vault, and makes the state every call shares.
async fn start(config: &Config) -> anyhow::Result<(Arc<State>, VaultSettings)> {
    let admin = read_admin_key(&config.admin_public_key)?;
    // A store that defers durability syncs the chunk files in batches (see `meta::Barrier`);
    // over any other, each chunk file is synced before its commit.
    let capabilities = config.meta.capabilities();
    let chunks = DirChunkStore::open(&config.chunk_root, capabilities.deferred_durability)?;
    if capabilities.sole_instance {
        // Instances that share a store may share the chunk root, and so its spares.
        chunks.keep_spares()?;
    }
    let chunks = Arc::new(chunks);
    let store = open_store(config, Some(chunks.clone())).await?;
    let vault = meta::write(&*store, move |txn| {
        settings::init_or_load(txn, &admin, now())
    })
    .await
    .map_err(|e: OpError| anyhow::anyhow!(e))
    .context("initialising the vault")?;
    let state = Arc::new(State {
        leases: Arc::new(Leases::new(store.capabilities().leases())),
        audit: crate::audit::AuditQueue::start(store.clone()),
        store,
        chunks,
        auth: Auth::new(vault.clone(), config.session_lifetime),
        metrics: Arc::new(Metrics::default()),
        descriptors: Arc::default(),
    });
    Ok((state, vault))
}

/// On SIGTERM or SIGINT, tells everything to stop.
fn stop_on_signal(leases: Arc<Leases>, stop: watch::Sender<bool>) {
    tokio::spawn(async move {
        wait_for_signal().await;
        // A graceful stop waits for every call in progress, and a client listens for
        // recalls as long as it is mounted: end those calls (their leases go with them).
        leases.stop_listening();
        let _ = stop.send(true);
    });
}

/// The API's servers: on the Unix socket `listener`, and on TCP with TLS when asked, each
/// until `stopped`. Announces them.
fn servers(
    config: &Config,
    state: &Arc<State>,
    vault: &VaultSettings,
    listener: tokio::net::UnixListener,
    stopped: &watch::Receiver<bool>,
) -> anyhow::Result<impl Future<Output = Result<(), tonic::transport::Error>> + use<>> {
    let service = VaultServer::new(Service {
        state: state.clone(),
    })
    .max_decoding_message_size(proto::limits::MESSAGE_BYTES_MAX)
    .max_encoding_message_size(proto::limits::MESSAGE_BYTES_MAX);
    let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let mut announce = format!(
        "storaged ready: vault {} ({} metadata) on unix:{}",
        vault.vault,
        state.store.backend(),
        config.socket.display()
    );
    let unix = http2_server().serve_with_incoming_shutdown(
        service.clone(),
        UnixListenerStream::new(listener),
        until_stopped(stopped.clone()),
    );
    let tcp = match config.listen {
        Some(addr) => {
            let identity = tls::load_or_create(&config.data_dir.join("tls"))?;
            announce += &format!(" and https://{addr} (certificate {})", identity.fingerprint);
            let tls = ServerTlsConfig::new()
                .identity(TlsCert::from_pem(identity.cert_pem, identity.key_pem));
            let server = http2_server().tls_config(tls).context("configuring TLS")?;
            Some(server.serve_with_shutdown(addr, service, until_stopped(stopped.clone())))
        }
        None => None,
    };
    println!("{announce}");
    tracing::info!("{announce}");
    Ok(async {
        match tcp {
            Some(tcp) => tokio::try_join!(unix, tcp).map(drop),
            None => unix.await,
        }
    })
}

/// Runs `serving` until it ends, or until the grace period after `stopped` is over.
async fn until_stopped(
    serving: impl Future<Output = Result<(), tonic::transport::Error>>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    // A graceful stop waits for every connection to close, and a client's idle channel may
    // not answer the server's goodbye (each vaultfs thread drives its own channel only while
    // it makes a call): after a grace period the remaining connections are dropped.
    tokio::select! {
        served = serving => served,
        () = async move {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(STOP_GRACE).await;
        } => {
            tracing::info!(seconds = STOP_GRACE.as_secs(), "connections still open after the stop's grace period; dropping them");
            Ok(())
        }
    }
}

/// How long a stop waits for clients' connections to close.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// The gRPC server with flow-control windows sized for 8 MiB chunks.
fn http2_server() -> Server {
    Server::builder()
        .initial_stream_window_size(proto::limits::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(proto::limits::CONNECTION_WINDOW_BYTES)
        .max_frame_size(proto::limits::FRAME_BYTES_MAX)
        .tcp_nodelay(true)
}

/// Binds the Unix socket, replacing a stale socket file but never a live daemon's.
fn bind_socket(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another storaged is already serving on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the socket {}", path.display()))?;
    // Every local user may connect; the API authenticates each call.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("opening up {}", path.display()))?;
    Ok(listener)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
