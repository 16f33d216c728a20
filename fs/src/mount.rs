//! Mounting: log in, check the pinned administrator key, start the FUSE session, and keep it
//! until it is unmounted or the process is told to stop (then flush and unmount).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use anyhow::{Context, bail};
use client::Connection;
use format::ids::VaultId;
use fuser::{BackgroundSession, Config, Session, SessionACL};
use identity::Identity;

use crate::config::ClientConfig;
use crate::fuse::VaultFs;
use crate::fusermount;
use crate::keys::Keys;
use crate::remote::Remote;
use crate::seen::SeenFile;
use crate::shared::{Limits, Shared};
use crate::status::{self, MountStatus};
use crate::vault::Vault;

/// Everything a mount needs.
#[derive(Debug)]
pub struct MountSettings {
    pub config: ClientConfig,
    /// Where the client config lives: a first mount pins the vault and admin key there.
    pub config_path: PathBuf,
    pub mountpoint: PathBuf,
    pub limits: Limits,
    /// How long operations wait for an unreachable server before failing.
    pub server_wait: Duration,
    /// Take directory leases when the server grants them (see `crate::vault::behind`).
    pub leases: bool,
    /// Read files whose keys are wrapped unsigned (version 1, older vaults).
    pub legacy_keys: bool,
}

/// Connects and logs in, and checks the server against the pinned vault and admin key.
/// Returns the config with the vault and admin key pinned (changed only on first contact).
pub async fn connect(
    config: &ClientConfig,
    identity: Arc<Identity>,
    wait: Duration,
) -> anyhow::Result<(Remote, VaultId, ClientConfig)> {
    let target = config.target()?;
    let name = config.name()?.to_string();
    let connection = Connection::new(&target)?;
    let hello = connection
        .hello()
        .await
        .with_context(|| format!("reaching storaged at {target}"))?;
    let mut pinned = config.clone();
    pinned.pin(
        &hello.vault_id,
        &identity::PublicIdentity::from_slices(&hello.admin_signing_key, &hello.admin_wrapping_key)
            .context("the server sent a malformed administrator key")?,
    )?;
    let vault = VaultId(
        hello
            .vault_id
            .as_slice()
            .try_into()
            .context("the server sent a malformed vault ID")?,
    );
    let remote =
        Remote::new(connection, &name, identity, wait).with_server_features(&hello.features);
    remote
        .login()
        .await
        .with_context(|| format!("logging in to {target} as {name}"))?;
    Ok((remote, vault, pinned))
}

/// Mounts and serves until unmounted or signalled. Calls `ready` once the mount is live.
pub fn run(
    settings: MountSettings,
    identity: Identity,
    ready: impl FnOnce(&str),
) -> anyhow::Result<()> {
    let mountpoint = std::fs::canonicalize(&settings.mountpoint)
        .with_context(|| format!("mount point {}", settings.mountpoint.display()))?;
    if !mountpoint.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("vaultfs-io")
        .build()
        .context("starting the async runtime")?;
    let (mut shared, vault_uid) = runtime.block_on(log_in(&settings, Arc::new(identity)))?;
    let seen = SeenFile::beside(&settings.config_path, shared.keys.vault(), vault_uid);
    shared.manifests = seen.load(&shared.remote.identity().public())?;
    let shared = Arc::new(shared);
    crate::seen::keep_saving(runtime.handle(), seen.clone(), shared.clone());
    let vault = Arc::new(Vault::new(shared.clone()));
    if settings.leases {
        vault.start_behind();
    }
    vault.start_flusher();
    // The control socket stays open as long as the process lives (see `fusermount`).
    let (session, _control) = start_session(&mountpoint, &vault)?;
    raise_readahead(&mountpoint);
    let description = format!("{} (vault user {vault_uid})", mountpoint.display());
    ready(&description);
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    let stop = stop_signals(&runtime);
    let served = serve(&settings, &mountpoint, &vault, &runtime, session, &stop);
    seen.save_if_changed(&shared.manifests, shared.remote.identity());
    served
}

/// Logs in with the pinned vault and admin key (saved on first contact): what every file of
/// the mount shares, and the vault user this is.
async fn log_in(
    settings: &MountSettings,
    identity: Arc<Identity>,
) -> anyhow::Result<(Shared, u32)> {
    let (remote, vault, pinned) = connect(&settings.config, identity, settings.server_wait).await?;
    if pinned != settings.config {
        pinned.save(&settings.config_path)?;
    }
    let logged = remote.login().await?;
    let admin = pinned.admin()?;
    let keys =
        Keys::new(remote.clone(), vault, admin, logged.uid).with_legacy_keys(settings.legacy_keys);
    let runtime = tokio::runtime::Handle::current();
    Ok((
        Shared::new(remote, keys, settings.limits, runtime),
        logged.uid,
    ))
}

/// Mounts through fusermount3 and starts the FUSE session's threads. Returns the session and
/// fusermount3's control socket, which the caller keeps until the process ends.
fn start_session(
    mountpoint: &Path,
    vault: &Arc<Vault>,
) -> anyhow::Result<(BackgroundSession, fusermount::Control)> {
    let owner = rustix::process::getuid().as_raw();
    // AutoUnmount (fusermount3's `auto_unmount`) needs allow_other; `VaultFs` itself refuses
    // every user but the owner.
    let (device, control) = fusermount::mount(
        mountpoint,
        "fsname=vaultfs,subtype=vaultfs,default_permissions,noatime,allow_other",
    )
    .with_context(|| {
        format!(
            "mounting on {} (is fuse3 installed and /dev/fuse present?)",
            mountpoint.display()
        )
    })?;
    let mut config = Config::default();
    config.n_threads = Some(4);
    config.clone_fd = true;
    let session = Session::from_fd(
        VaultFs::new(vault.clone(), owner),
        device,
        SessionACL::All,
        config,
    )
    .and_then(|session| {
        vault.set_notifier(session.notifier());
        session.spawn()
    })
    .context("starting the FUSE session")?;
    Ok((session, control))
}

/// A message on the returned channel when the process is told to stop (SIGTERM, SIGINT).
fn stop_signals(runtime: &tokio::runtime::Runtime) -> Receiver<()> {
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        let _ = stop_tx.send(());
    });
    stop_rx
}

/// Reports the mount's status every two seconds until it is unmounted (then flushes) or told
/// to stop (then flushes and unmounts).
fn serve(
    settings: &MountSettings,
    mountpoint: &Path,
    vault: &Vault,
    runtime: &tokio::runtime::Runtime,
    session: BackgroundSession,
    stop: &Receiver<()>,
) -> anyhow::Result<()> {
    let status_path = status::path_for(std::process::id());
    loop {
        report(settings, mountpoint, vault, runtime);
        if session.guard.is_finished() {
            tracing::info!("unmounted");
            let _ = std::fs::remove_file(&status_path);
            vault.flush_all().context("flushing after unmount")?;
            return session.join().context("the FUSE session failed");
        }
        if stop.recv_timeout(Duration::from_secs(2)).is_ok() {
            tracing::info!("stopping: flushing and unmounting");
            let flushed = vault.flush_all();
            let _ = std::fs::remove_file(&status_path);
            unmount(mountpoint)?;
            session.join().context("the FUSE session failed")?;
            return flushed.context("flushing at shutdown");
        }
    }
}

/// The kernel reads ahead at most 128 KiB on a FUSE mount unless the mount's backing device
/// info says more, so a sequential reader costs one request per 128 KiB. Root raises it to the
/// request size the client takes (1 MiB, a tenth of the requests); for others it stays.
fn raise_readahead(mountpoint: &Path) {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let Ok(stat) = rustix::fs::stat(mountpoint) else {
        return;
    };
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        rustix::fs::major(stat.st_dev),
        rustix::fs::minor(stat.st_dev)
    );
    let kib = crate::fuse::MAX_WRITE_BYTES / 1024;
    if let Err(error) = std::fs::write(&path, format!("{kib}\n")) {
        tracing::info!(%error, path, "keeping the kernel's readahead");
    }
}

/// Unmounts through fusermount3 (the session was mounted through it, with AutoUnmount); lazily
/// when something still holds the mount busy, so that the process can finish.
fn unmount(mountpoint: &Path) -> anyhow::Result<()> {
    let run = |lazy: bool| {
        let mut command = std::process::Command::new("fusermount3");
        command.arg("-u");
        if lazy {
            command.arg("-z");
        }
        command
            .arg(mountpoint)
            .output()
            .context("running fusermount3 (install fuse3)")
    };
    if run(false)?.status.success() {
        return Ok(());
    }
    let output = run(true)?;
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "unmounting {}: {}",
        mountpoint.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

fn report(
    settings: &MountSettings,
    mountpoint: &Path,
    vault: &Vault,
    runtime: &tokio::runtime::Runtime,
) {
    let (cache_bytes, dirty_bytes, open_files) = vault.usage();
    let (unsent_files, leases) = vault.behind_usage();
    let reachable = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(1),
            vault.shared().remote.connection().hello(),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let written = status::write(&MountStatus {
        pid: std::process::id(),
        mountpoint: mountpoint.display().to_string(),
        server: settings.config.server.clone().unwrap_or_default(),
        user: settings.config.name.clone().unwrap_or_default(),
        cache_bytes,
        cache_bytes_max: settings.limits.cache_bytes_max,
        dirty_bytes,
        open_files,
        unsent_files,
        leases,
        server_reachable: reachable,
        updated_unix: now,
    });
    if let Err(error) = written {
        tracing::debug!(%error, "could not write the status file");
    }
}
