//! storaged's settings: defaults, then a TOML config file, then environment variables, then
//! flags (clap handles the last two; `--help` lists every setting).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

use crate::meta::{Capabilities, mongo::MongoStore, sqlite::SqliteStore};

/// Settings given on the command line or in the environment.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Directory for the metadata database, the chunk root, TLS files and the socket.
    /// [default: /var/lib/vault-storaged as root, else ~/.local/share/vault-storaged]
    #[arg(long, env = "VAULT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML config file (keys as the long flags, with underscores).
    /// [default: DATA_DIR/storaged.toml, when it exists]
    #[arg(long, env = "VAULT_STORAGED_CONFIG")]
    pub config: Option<PathBuf>,
    /// Unix socket for local clients. [default: DATA_DIR/storaged.sock]
    #[arg(long, env = "VAULT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Also listen on TCP with TLS, for remote clients and VMs (e.g. 0.0.0.0:7443).
    #[arg(long, env = "VAULT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Metadata store: "sqlite" (embedded, in the data dir) or a mongodb:// URL of a replica
    /// set, the database in its path (default "vault"), e.g.
    /// mongodb://db1,db2,db3/vault?replicaSet=rs0.
    /// [default: sqlite]
    #[arg(long, env = "VAULT_META")]
    pub meta: Option<String>,
    /// Where chunk files go. [default: DATA_DIR/chunks]
    #[arg(long, env = "VAULT_CHUNK_ROOT")]
    pub chunk_root: Option<PathBuf>,
    /// The site administrator's public key file (written by `vault-admin init`).
    /// [default: DATA_DIR/admin.pub]
    #[arg(long, env = "VAULT_ADMIN_PUBLIC_KEY")]
    pub admin_public_key: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "VAULT_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// How long a login session lasts, in seconds. [default: 43200]
    #[arg(long, env = "VAULT_SESSION_SECONDS")]
    pub session_seconds: Option<u64>,
    /// How often superseded chunk files are deleted, in seconds. [default: 5]
    #[arg(long, env = "VAULT_GC_SECONDS")]
    pub gc_seconds: Option<u64>,
    /// How long a superseded chunk file is kept before it is deleted, in seconds: a copy of
    /// the chunk root that ends within this time after `storaged backup` is complete (0: no
    /// grace, for vaults without backups). [default: 86400]
    #[arg(long, env = "VAULT_GC_GRACE_SECONDS")]
    pub gc_grace_seconds: Option<u64>,
}

/// The config file: every key optional, unknown keys refused.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    listen: Option<SocketAddr>,
    meta: Option<String>,
    chunk_root: Option<PathBuf>,
    admin_public_key: Option<PathBuf>,
    metrics_addr: Option<SocketAddr>,
    session_seconds: Option<u64>,
    gc_seconds: Option<u64>,
    gc_grace_seconds: Option<u64>,
}

/// Where metadata lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaBackend {
    Sqlite(PathBuf),
    Mongo(String),
}

impl MetaBackend {
    /// What the store of this backend will report as its
    /// [`capabilities`](crate::meta::MetaStore::capabilities), for what must be decided
    /// before it opens (the chunk store whose files its barrier syncs).
    pub fn capabilities(&self) -> Capabilities {
        match self {
            MetaBackend::Sqlite(_) => SqliteStore::CAPABILITIES,
            MetaBackend::Mongo(_) => MongoStore::CAPABILITIES,
        }
    }
}

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    pub meta: MetaBackend,
    pub chunk_root: PathBuf,
    pub admin_public_key: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub session_lifetime: Duration,
    pub gc_interval: Duration,
    pub gc_grace: Duration,
}

pub use proto::default_data_dir;

/// How long superseded chunk files stay by default: a day, for backups of the chunk root.
pub const GC_GRACE_DEFAULT_SECONDS: u64 = 86_400;

impl Config {
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Config> {
        let data_dir_hint = args.data_dir.clone().unwrap_or_else(default_data_dir);
        let (file, explicit) = match &args.config {
            Some(path) => (path.clone(), true),
            None => (data_dir_hint.join("storaged.toml"), false),
        };
        let settings = if explicit || file.exists() {
            read_file(&file)?
        } else {
            FileSettings::default()
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(settings.data_dir)
            .unwrap_or(data_dir_hint);
        let meta = match args.meta.clone().or(settings.meta).as_deref() {
            None | Some("sqlite") => MetaBackend::Sqlite(data_dir.join("meta.db")),
            Some(url) if url.starts_with("mongodb://") => MetaBackend::Mongo(url.to_string()),
            Some(url) if url.starts_with("mongodb+srv://") => anyhow::bail!(
                "meta = mongodb+srv://...: this storaged is built without the DNS resolver SRV \
                 lookups need; list the replica set's hosts in a mongodb:// URL instead"
            ),
            Some(other) => {
                anyhow::bail!("meta = {other:?}: expected \"sqlite\" or a mongodb:// URL")
            }
        };
        let seconds = |value: Option<u64>, default: u64, name: &str| -> anyhow::Result<Duration> {
            match value.unwrap_or(default) {
                0 => anyhow::bail!("{name} must be at least 1 second"),
                s => Ok(Duration::from_secs(s)),
            }
        };
        Ok(Config {
            socket: args
                .socket
                .clone()
                .or(settings.socket)
                .unwrap_or_else(|| data_dir.join("storaged.sock")),
            listen: args.listen.or(settings.listen),
            meta,
            chunk_root: args
                .chunk_root
                .clone()
                .or(settings.chunk_root)
                .unwrap_or_else(|| data_dir.join("chunks")),
            admin_public_key: args
                .admin_public_key
                .clone()
                .or(settings.admin_public_key)
                .unwrap_or_else(|| data_dir.join("admin.pub")),
            metrics_addr: args.metrics_addr.or(settings.metrics_addr),
            session_lifetime: seconds(
                args.session_seconds.or(settings.session_seconds),
                43_200,
                "session_seconds",
            )?,
            gc_interval: seconds(args.gc_seconds.or(settings.gc_seconds), 5, "gc_seconds")?,
            gc_grace: Duration::from_secs(
                args.gc_grace_seconds
                    .or(settings.gc_grace_seconds)
                    .unwrap_or(GC_GRACE_DEFAULT_SECONDS),
            ),
            data_dir,
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("storaged.toml");
        std::fs::write(&file, "gc_seconds = 9\nsocket = \"/tmp/x.sock\"\n").expect("write");
        let args = ServeArgs {
            data_dir: Some(dir.path().to_path_buf()),
            socket: Some("/tmp/flag.sock".into()),
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args).expect("resolve");
        assert_eq!(config.gc_interval, Duration::from_secs(9));
        assert_eq!(config.gc_grace, Duration::from_secs(86_400));
        assert_eq!(config.socket, PathBuf::from("/tmp/flag.sock"));
        assert_eq!(config.meta, MetaBackend::Sqlite(dir.path().join("meta.db")));

        std::fs::write(&file, "gc_secnds = 9\n").expect("write");
        let error = Config::resolve(&args).expect_err("unknown key").to_string();
        assert!(error.contains("storaged.toml"), "{error}");
        std::fs::write(&file, "gc_seconds = \"soon\"\n").expect("write");
        assert!(Config::resolve(&args).is_err());
        std::fs::write(&file, "gc_seconds = 0\n").expect("write");
        assert!(Config::resolve(&args).is_err());
        std::fs::write(&file, "meta = \"postgres://x\"\n").expect("write");
        assert!(Config::resolve(&args).is_err());
        std::fs::write(&file, "meta = \"mongodb+srv://db.example\"\n").expect("write");
        let error = Config::resolve(&args)
            .expect_err("no SRV lookups")
            .to_string();
        assert!(error.contains("mongodb://"), "{error}");
        std::fs::write(&file, "meta = \"mongodb://db1,db2/v?replicaSet=rs\"\n").expect("write");
        let config = Config::resolve(&args).expect("a MongoDB URL");
        assert_eq!(
            config.meta,
            MetaBackend::Mongo("mongodb://db1,db2/v?replicaSet=rs".into())
        );
    }
}
