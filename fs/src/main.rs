//! `vaultfs`: the user's command line: key file, registration, login, mount, unmount, status.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command as Process, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use cli::{Cli, NoOptions, Program};
use identity::{Identity, KeyKind};
use keystore::PassphraseSource;
use vaultfs::config::{self, ClientConfig};
use vaultfs::mount::{self, MountSettings};
use vaultfs::shared::Limits;

const PROGRAM: Program = cli::program!(
    "vaultfs",
    "End-to-end encrypted vault: client and user tools"
);

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage your key file (your private keys, under a passphrase).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Ask for an account: send your public keys to storaged for the administrator to approve.
    Register(SessionArgs),
    /// Check the passphrase and the server, and pin the vault's administrator key.
    Login(SessionArgs),
    /// Mount the vault (in the background unless --foreground).
    Mount(MountArgs),
    /// Unmount a vault (its dirty data is flushed first).
    Unmount { mountpoint: PathBuf },
    /// List mounts with their cache use and server state.
    Status,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Create a new key pair and its key file, and print its fingerprint.
    Init(KeyArgs),
    /// Print the public keys and fingerprint of a key file (no passphrase needed).
    Show(KeyFileArg),
}

#[derive(Args, Debug, Clone)]
struct KeyFileArg {
    /// The key file [default: ~/.config/vault/user.vkey].
    #[arg(long, env = "VAULT_KEY_FILE")]
    key_file: Option<PathBuf>,
}

impl KeyFileArg {
    fn path(&self) -> PathBuf {
        keystore::path_or_default(self.key_file.as_deref(), "user.vkey")
    }
}

#[derive(Args, Debug, Clone)]
struct KeyArgs {
    #[command(flatten)]
    key_file: KeyFileArg,
    /// Read the passphrase from this file instead of VAULT_PASSPHRASE or a prompt.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Read the passphrase from the first line of standard input.
    #[arg(long, hide = true)]
    passphrase_stdin: bool,
}

impl KeyArgs {
    fn source(&self) -> PassphraseSource {
        PassphraseSource {
            file: self.passphrase_file.clone(),
            stdin: self.passphrase_stdin,
        }
    }

    fn unlock(&self) -> anyhow::Result<Identity> {
        Ok(keystore::unlock(
            &self.key_file.path(),
            KeyKind::User,
            &self.source(),
        )?)
    }
}

#[derive(Args, Debug, Clone)]
struct SessionArgs {
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    daemon: client::ServerArgs,
    /// Your vault user name [default: from the client config].
    #[arg(long, env = "VAULT_USER")]
    name: Option<String>,
    /// The client config file [default: ~/.config/vault/client.toml].
    #[arg(long, env = "VAULT_CLIENT_CONFIG")]
    config: Option<PathBuf>,
}

impl SessionArgs {
    fn config_path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(config::default_path)
    }

    /// The saved config with this command's flags on top.
    fn config(&self) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::load(&self.config_path())?;
        if let Some(server) = &self.daemon.server {
            if config.server.as_ref() != Some(server) {
                config.server_fingerprint = None;
            }
            config.server = Some(server.clone());
        }
        if let Some(fingerprint) = &self.daemon.server_fingerprint {
            config.server_fingerprint = Some(fingerprint.clone());
        }
        if let Some(name) = &self.name {
            config.name = Some(name.clone());
        }
        Ok(config)
    }
}

#[derive(Args, Debug)]
struct MountArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// Where to mount.
    mountpoint: PathBuf,
    /// Stay in the foreground (logs go to stderr).
    #[arg(long)]
    foreground: bool,
    /// Plaintext chunk cache, MiB (memory only) [default: an eighth of the machine's
    /// memory, from 256 MiB to 4 GiB]
    #[arg(long)]
    cache_mib: Option<usize>,
    /// Written data held before it must be sent, MiB [default: a sixteenth of the machine's
    /// memory, from 128 MiB to 2 GiB]
    #[arg(long)]
    dirty_mib: Option<usize>,
    /// Written data no one wrote to for this long is sent to storaged without waiting for a
    /// flush, seconds.
    #[arg(long, default_value_t = vaultfs::writeback::IDLE_DEFAULT.as_secs())]
    dirty_idle_seconds: u64,
    /// How long an operation waits for an unreachable storaged before it fails, seconds
    /// (and how long unmounting waits for it in all, to flush what it holds).
    #[arg(long, default_value_t = 30)]
    server_wait_seconds: u64,
    /// Take no directory leases: every close waits for storaged (and reports its refusal of a
    /// new file), and a killed client loses nothing it closed, at the cost of one round trip
    /// per new file.
    #[arg(long)]
    no_leases: bool,
}

fn main() -> ExitCode {
    let cli = Cli::<NoOptions, Command>::parse_for(&PROGRAM);
    let mounting = matches!(cli.command, Command::Mount(_));
    cli::init_logging(if mounting { "info" } else { "warn" });
    let work = run(&cli.command);
    cli.finish(&PROGRAM, work.map(|()| ExitCode::SUCCESS))
}

fn run(command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Key(KeyCommand::Init(args)) => {
            let path = args.key_file.path();
            let public = keystore::create(&path, KeyKind::User, &args.source())?;
            println!("created {}", path.display());
            println!("fingerprint {}", public.fingerprint());
            Ok(())
        }
        Command::Key(KeyCommand::Show(args)) => {
            let path = args.path();
            println!(
                "{}",
                keystore::describe(&path, &keystore::read_key_file(&path)?)
            );
            Ok(())
        }
        Command::Register(args) => register(args),
        Command::Login(args) => login(args),
        Command::Mount(args) if args.foreground => mount_foreground(args),
        Command::Mount(args) => mount_background(args),
        Command::Unmount { mountpoint } => unmount(mountpoint),
        Command::Status => {
            status();
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn register(args: &SessionArgs) -> anyhow::Result<()> {
    let mut config = args.config()?;
    let name = config.name()?.to_string();
    let identity = args.key.unlock()?;
    let public = identity.public();
    let target = config.target()?;
    let uid = runtime()?.block_on(async {
        let connection = client::Connection::new(&target)?;
        let hello = connection
            .hello()
            .await
            .with_context(|| format!("reaching storaged at {target}"))?;
        let admin = identity::PublicIdentity::from_slices(
            &hello.admin_signing_key,
            &hello.admin_wrapping_key,
        )
        .context("the server sent a malformed administrator key")?;
        config.pin(&hello.vault_id, &admin)?;
        let proof = identity.sign(
            proto::domains::REGISTER,
            &proto::register_message(&hello.vault_id, &name, &public.signing, &public.wrapping),
        );
        let reply = connection
            .api()
            .register(proto::v1::RegisterRequest {
                name: name.clone(),
                signing_key: public.signing.to_vec(),
                wrapping_key: public.wrapping.to_vec(),
                proof: proof.to_vec(),
            })
            .await
            .map_err(client::ClientError::from)
            .with_context(|| format!("registering {name}"))?;
        anyhow::Ok(reply.into_inner().uid)
    })?;
    config.save(&args.config_path())?;
    println!(
        "registered {name} (uid {uid}); fingerprint {}",
        public.fingerprint()
    );
    println!("ask the vault administrator to approve it:");
    println!(
        "  vault-admin approve {name} --fingerprint '{}'",
        public.fingerprint()
    );
    Ok(())
}

fn login(args: &SessionArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let identity = Arc::new(args.key.unlock()?);
    let (logged, pinned) = runtime()?.block_on(async {
        let (remote, _, pinned) = mount::connect(&config, identity, Duration::from_secs(5)).await?;
        anyhow::Ok((remote.login().await?, pinned))
    })?;
    pinned.save(&args.config_path())?;
    println!(
        "logged in to {} as {} (uid {}); the vault's administrator key is pinned",
        pinned.server.as_deref().unwrap_or("?"),
        pinned.name.as_deref().unwrap_or("?"),
        logged.uid
    );
    Ok(())
}

fn settings(args: &MountArgs) -> anyhow::Result<MountSettings> {
    let memory = vaultfs::shared::machine_memory_bytes();
    let cache_bytes = args
        .cache_mib
        .map_or_else(|| vaultfs::shared::default_cache_bytes(memory), |m| m << 20);
    let dirty_bytes = args
        .dirty_mib
        .map_or_else(|| vaultfs::shared::default_dirty_bytes(memory), |m| m << 20);
    if cache_bytes == 0 || dirty_bytes < 16 << 20 {
        bail!("--cache-mib must be at least 1 and --dirty-mib at least 16 (two chunks)");
    }
    Ok(MountSettings {
        config: args.session.config()?,
        config_path: args.session.config_path(),
        mountpoint: args.mountpoint.clone(),
        limits: Limits {
            cache_bytes_max: cache_bytes,
            dirty_bytes_max: dirty_bytes,
            dirty_idle: Duration::from_secs(args.dirty_idle_seconds),
            ..Limits::default()
        },
        server_wait: Duration::from_secs(args.server_wait_seconds),
        leases: !args.no_leases,
    })
}

fn mount_foreground(args: &MountArgs) -> anyhow::Result<()> {
    let settings = settings(args)?;
    let identity = args.session.key.unlock()?;
    if args.session.key.passphrase_stdin {
        // Started by `vaultfs mount` in the background: leave its terminal session.
        let _ = rustix::process::setsid();
    }
    mount::run(settings, identity, |description| {
        println!("mounted {description}");
        let _ = std::io::stdout().flush();
    })
}

/// Reads the passphrase here (where the terminal is), then starts the mount as a child that
/// gets it on its standard input, and returns once the child says it is mounted.
fn mount_background(args: &MountArgs) -> anyhow::Result<()> {
    settings(args)?;
    let passphrase = args.session.key.source().read("Passphrase: ", false)?;
    let log_dir = vaultfs::status::runtime_dir();
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let log_path = log_dir.join(format!(
        "vaultfs-{}.log",
        args.mountpoint.display().to_string().replace('/', "_")
    ));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut child_args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--foreground")
        .collect();
    child_args.retain(|a| !a.starts_with("--passphrase-file"));
    if let Some(i) = std::env::args()
        .skip(1)
        .position(|a| a == "--passphrase-file")
    {
        let value = std::env::args().nth(i + 2).unwrap_or_default();
        child_args.retain(|a| *a != value);
    }
    child_args.extend(["--foreground".to_string(), "--passphrase-stdin".to_string()]);
    let mut child = Process::new(std::env::current_exe().context("finding the vaultfs binary")?)
        .args(&child_args)
        .env_remove("VAULT_PASSPHRASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting the mount process")?;
    {
        let mut stdin = child
            .stdin
            .take()
            .context("the mount process has no stdin")?;
        stdin
            .write_all(&passphrase)
            .and_then(|()| stdin.write_all(b"\n"))
            .context("handing over the passphrase")?;
    }
    let mut line = String::new();
    BufReader::new(
        child
            .stdout
            .take()
            .context("the mount process has no stdout")?,
    )
    .read_line(&mut line)?;
    if let Some(description) = line.trim().strip_prefix("mounted ") {
        println!(
            "mounted {description} (pid {}, log {})",
            child.id(),
            log_path.display()
        );
        println!(
            "unmount with: vaultfs unmount {}",
            args.mountpoint.display()
        );
        return Ok(());
    }
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let reason = log
        .lines()
        .rev()
        .find(|l| l.starts_with("vaultfs:"))
        .unwrap_or("see the log")
        .to_string();
    bail!(
        "mount failed: {} (log {})",
        reason.trim_start_matches("vaultfs: "),
        log_path.display()
    )
}

fn unmount(mountpoint: &std::path::Path) -> anyhow::Result<()> {
    let path =
        std::fs::canonicalize(mountpoint).with_context(|| format!("{}", mountpoint.display()))?;
    let owner = vaultfs::status::read_all()
        .into_iter()
        .find(|s| std::path::Path::new(&s.mountpoint) == path);
    let output = Process::new("fusermount3")
        .arg("-u")
        .arg(&path)
        .output()
        .context("running fusermount3 (install fuse3)")?;
    if !output.status.success() {
        bail!(
            "fusermount3 -u {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    if let Some(status) = owner {
        // The mount process flushes and exits; wait for it, bounded.
        for _ in 0..300 {
            if !std::path::Path::new(&format!("/proc/{}", status.pid)).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("unmounted {}", path.display());
    Ok(())
}

fn status() {
    let mounts = vaultfs::status::read_all();
    if mounts.is_empty() {
        println!("no vaults mounted");
        return;
    }
    println!(
        "{:<30} {:<10} {:>7} {:>16} {:>10} {:>6} {:>7} {:>7}  server",
        "mount point", "user", "pid", "cache MiB", "dirty MiB", "open", "unsent", "leases"
    );
    for m in mounts {
        println!(
            "{:<30} {:<10} {:>7} {:>7}/{:<8} {:>10} {:>6} {:>7} {:>7}  {} ({})",
            m.mountpoint,
            m.user,
            m.pid,
            m.cache_bytes >> 20,
            m.cache_bytes_max >> 20,
            m.dirty_bytes >> 20,
            m.open_files,
            m.unsent_files,
            m.leases,
            m.server,
            if m.server_reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            }
        );
    }
}

cli::test_command_line!(cli::NoOptions, Command);
