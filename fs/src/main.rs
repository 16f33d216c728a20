//! `vaultfs`: the user's command line: key file, registration, login, mount, unmount, status,
//! and sharing (`share_cli`).

mod share_cli;

use std::io::{BufRead, BufReader, IsTerminal, Write};
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
    /// Open every chunk of every file you can read under a path; list those that do not open.
    /// Exit 0: all open, 4: some do not.
    Fsck {
        #[command(flatten)]
        session: SessionArgs,
        #[command(flatten)]
        check: vaultfs::fsck::FsckArgs,
    },
    /// Let a user or @GROUP read (and --write) a file or directory (-r: all of it).
    Share(share_cli::ShareArgs),
    /// Revoke a user's or @GROUP's access; files they could read get new keys.
    Unshare(share_cli::UnshareArgs),
    /// Show who may read and write a path, with each principal's fingerprint.
    Acl(share_cli::PathArgs),
    /// Re-seal a file's chunks (-r: a tree's) under a new key, dropping its older keys.
    Rekey(share_cli::PathArgs),
    /// Inside a VM that vmctl started: take the key vmctl hands over and mount (foreground).
    GuestMount(vaultfs::guest::GuestMountArgs),
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Create a new key pair and its key file, and print its fingerprint.
    Init(KeyArgs),
    /// Print the public keys and fingerprint of a key file (no passphrase needed).
    Show(KeyFileArg),
    /// Change the key file's passphrase (the keys stay the same).
    Passwd(share_cli::PasswdArgs),
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
    /// The vault administrator key's fingerprint, as your administrator gave it to you (out
    /// of band): checked at first contact before anything is pinned. Without it, register
    /// and login show the key's fingerprint and ask.
    #[arg(long, env = "VAULT_ADMIN_FINGERPRINT")]
    admin_fingerprint: Option<String>,
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
        if let Some(text) = &self.admin_fingerprint {
            let fingerprint = identity::Fingerprint::from_hex(text)
                .context("bad --admin-fingerprint: 32 hex digits, spaces allowed")?;
            config.expected_admin = Some(fingerprint);
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
    /// Written data of a file no one wrote to for this long is sent to storaged without
    /// waiting for a flush, seconds (a chunk not written for 30 s is sent anyway).
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
    /// How long another client's change may take to show here, seconds (fractions allowed):
    /// the kernel's entry and attribute timeout, and how long this mount trusts the names and
    /// listings it knows. Longer saves round trips where one mount is the only writer.
    #[arg(long, default_value = "1", value_parser = parse_coherence)]
    coherence_seconds: Duration,
    /// Also read files whose keys are wrapped unsigned (vaults written before signed keys);
    /// each gets a signed new key before this mount writes it.
    #[arg(long)]
    legacy_keys: bool,
    /// Forget which manifests this client saw, accepting earlier states of files: only after
    /// your administrator restored the vault from a backup (docs/format.md section 5.5).
    #[arg(long)]
    forget_seen: bool,
}

/// A coherence window: more than nothing, at most a day.
fn parse_coherence(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.001..=86_400.0).contains(&seconds) {
        return Err(format!("{seconds} s is outside 0.001 s to a day"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn main() -> ExitCode {
    vaultfs::helper::run_if_mount_helper(cli::is_subcommand::<NoOptions, Command>);
    let cli = Cli::<NoOptions, Command>::parse_for(&PROGRAM);
    let mounting = matches!(cli.command, Command::Mount(_) | Command::GuestMount(_));
    cli::init_logging(if mounting { "info" } else { "warn" });
    if let Err(error) = keystore::memory::forbid_dumps() {
        tracing::warn!(%error, "could not make this process non-dumpable");
    }
    let work = match &cli.command {
        Command::Fsck { session, check } => fsck(session, check),
        command => run(command).map(|()| ExitCode::SUCCESS),
    };
    cli.finish(&PROGRAM, work)
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
        Command::Fsck { .. } => unreachable!("main() runs fsck for its exit code"),
        Command::Key(KeyCommand::Passwd(args)) => share_cli::passwd(args),
        Command::Share(args) => share_cli::share(args),
        Command::Unshare(args) => share_cli::unshare(args),
        Command::Acl(args) => share_cli::acl(args),
        Command::Rekey(args) => share_cli::rekey(args),
        Command::GuestMount(args) => vaultfs::guest::run(args),
    }
}

fn fsck(session: &SessionArgs, check: &vaultfs::fsck::FsckArgs) -> anyhow::Result<ExitCode> {
    vaultfs::fsck::run(session.config()?, session.key.unlock()?, check)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn register(args: &SessionArgs) -> anyhow::Result<()> {
    let mut config = args.config()?;
    ask_for_admin_fingerprint(&mut config)?;
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
    let mut config = args.config()?;
    ask_for_admin_fingerprint(&mut config)?;
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

/// At first contact without `--admin-fingerprint`, at a terminal: shows the fingerprint of the
/// administrator key the server presents and asks whether it is the one the user was given.
/// Elsewhere the pinning itself refuses, saying what to pass.
fn ask_for_admin_fingerprint(config: &mut ClientConfig) -> anyhow::Result<()> {
    if config.admin_key.is_some()
        || config.expected_admin.is_some()
        || !std::io::stdin().is_terminal()
    {
        return Ok(());
    }
    let target = config.target()?;
    let hello = runtime()?.block_on(async {
        let connection = client::Connection::new(&target)?;
        connection.hello().await
    });
    let hello = hello.with_context(|| format!("reaching storaged at {target}"))?;
    let admin =
        identity::PublicIdentity::from_slices(&hello.admin_signing_key, &hello.admin_wrapping_key)
            .context("the server sent a malformed administrator key")?;
    let found = admin.fingerprint();
    print!(
        "The vault's administrator key has fingerprint\n  {found}\nIs this the fingerprint \
         your administrator gave you? [y/N] "
    );
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !answer.trim().eq_ignore_ascii_case("y") {
        bail!("the administrator key was not confirmed: nothing pinned");
    }
    config.expected_admin = Some(found);
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
            coherence: args.coherence_seconds,
            ..Limits::default()
        },
        server_wait: Duration::from_secs(args.server_wait_seconds),
        leases: !args.no_leases,
        legacy_keys: args.legacy_keys,
    })
}

fn mount_foreground(args: &MountArgs) -> anyhow::Result<()> {
    let settings = settings(args)?;
    if args.forget_seen {
        vaultfs::seen::SeenFile::forget(&settings.config_path)?;
    }
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
    let log_dir = vaultfs::status::private_runtime_dir()?;
    let log_path = log_dir.join(format!(
        "vaultfs-{}.log",
        args.mountpoint.display().to_string().replace('/', "_")
    ));
    let log = vaultfs::status::create_private(&log_path)
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
