//! `vault-admin`: the site administrator's commands. They run with the administrator's key
//! file on the administrator's side and talk to the daemon as any client does; the daemon
//! never holds the private key, and this program is not part of the daemon's crate, so the
//! daemon cannot even link the code that unlocks it.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use cli::{Cli, NoOptions, Program};
use client::Connection;
use identity::{Fingerprint, Identity, KeyKind, PublicIdentity};
use keystore::PassphraseSource;
use proto::v1::{
    AnchorAuditRequest, ApproveRequest, AuditHead, CreateGroupRequest, GetAuditHeadRequest,
    GetUserRequest, ListPendingRequest, User, get_user_request,
};

mod groups;

const PROGRAM: Program = cli::program!(
    "vault-admin",
    "The vault's site administration, with the administrator key (never the daemon's)"
);

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the site administrator's key pair and key file; print its fingerprint. With
    /// --data-dir, also write the public key where `storaged serve` looks for it.
    Init(InitArgs),
    /// Print the admin key file's public keys and fingerprint.
    Show(KeyArgs),
    /// List registrations waiting for approval.
    Pending(AdminSession),
    /// Approve a registration: sign the user's name, uid and keys with the admin key.
    Approve(ApproveArgs),
    /// Manage groups (principals for sharing).
    #[command(subcommand)]
    Group(GroupCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Sign the audit log's last entry with the administrator key, so that a rewrite of the
    /// log up to it no longer verifies (`storaged audit verify`). Run it regularly.
    Anchor(AdminSession),
}

#[derive(Args, Debug)]
struct KeyArgs {
    /// The site admin key file [default: ~/.config/vault/admin.vkey].
    #[arg(long, env = "VAULT_ADMIN_KEY_FILE")]
    admin_key: Option<PathBuf>,
    /// Read the passphrase from this file instead of VAULT_PASSPHRASE or a prompt.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct InitArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// Also write `<DIR>/admin.pub` for the daemon serving from DIR.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct AdminSession {
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    daemon: client::ServerArgs,
}

#[derive(Args, Debug)]
struct ApproveArgs {
    #[command(flatten)]
    server: AdminSession,
    /// The user to approve.
    name: String,
    /// The fingerprint the user read to you (from `vaultfs key show`): approval proceeds
    /// only if it matches.
    #[arg(long)]
    fingerprint: Option<String>,
    /// Approve without comparing fingerprints (scripts that checked another way).
    #[arg(long)]
    yes: bool,
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// Create a group.
    Create {
        #[command(flatten)]
        server: AdminSession,
        name: String,
    },
    /// Add a user to a group.
    Add(MemberArgs),
    /// Remove a user from a group.
    Remove(MemberArgs),
}

#[derive(Args, Debug)]
struct MemberArgs {
    #[command(flatten)]
    server: AdminSession,
    group: String,
    user: String,
}

impl KeyArgs {
    fn path(&self) -> PathBuf {
        keystore::path_or_default(self.admin_key.as_deref(), "admin.vkey")
    }

    fn unlock(&self) -> anyhow::Result<Identity> {
        let source = PassphraseSource::from_file(self.passphrase_file.clone());
        Ok(keystore::unlock(&self.path(), KeyKind::SiteAdmin, &source)?)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::<NoOptions, Command>::parse_for(&PROGRAM);
    cli::init_logging("warn");
    if let Err(error) = keystore::memory::forbid_dumps() {
        tracing::warn!(%error, "could not make this process non-dumpable");
    }
    let work = run(&cli.command).await;
    cli.finish(&PROGRAM, work.map(|()| ExitCode::SUCCESS))
}

async fn run(command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Init(args) => init(args),
        Command::Show(args) => {
            let path = args.path();
            let file = keystore::read_key_file(&path)?;
            println!("{}", keystore::describe(&path, &file));
            Ok(())
        }
        Command::Pending(args) => pending(args).await,
        Command::Approve(args) => approve(args).await,
        Command::Group(command) => group(command).await,
        Command::Audit(AuditCommand::Anchor(args)) => anchor_audit(args).await,
    }
}

async fn anchor_audit(args: &AdminSession) -> anyhow::Result<()> {
    let identity = args.key.unlock()?;
    let connection = connect_with(args, &identity).await?;
    let vault = connection.hello().await?.vault_id;
    let head = connection
        .api()
        .get_audit_head(GetAuditHeadRequest {})
        .await?;
    let AuditHead { seq, hash } = head.into_inner();
    if seq == 0 {
        bail!("the audit log is empty: nothing to anchor");
    }
    let message = proto::audit_anchor_message(&vault, seq, &hash);
    let signature = identity.sign(proto::domains::AUDIT_ANCHOR, &message);
    let request = AnchorAuditRequest {
        seq,
        hash: hash.clone(),
        signature: signature.to_vec(),
    };
    connection.api().anchor_audit(request).await?;
    println!(
        "anchored the audit log at entry {seq}, hash {}",
        hex::encode(&hash)
    );
    Ok(())
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let path = args.key.path();
    let source = PassphraseSource::from_file(args.key.passphrase_file.clone());
    let public = keystore::create(&path, KeyKind::SiteAdmin, &source)?;
    println!("created {}", path.display());
    println!("fingerprint {}", public.fingerprint());
    if let Some(dir) = &args.data_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pub_path = dir.join("admin.pub");
        std::fs::write(&pub_path, public.to_admin_key_text())
            .with_context(|| format!("writing {}", pub_path.display()))?;
        println!("wrote {}", pub_path.display());
    }
    Ok(())
}

/// Unlocks the admin key file and logs in with it.
async fn connect(args: &AdminSession) -> anyhow::Result<Connection> {
    connect_with(args, &args.key.unlock()?).await
}

async fn connect_with(args: &AdminSession, identity: &Identity) -> anyhow::Result<Connection> {
    let socket = proto::default_data_dir().join("storaged.sock");
    let target = args
        .daemon
        .target_or(&format!("unix:{}", socket.display()))?;
    let connection = Connection::new(&target)?;
    connection
        .login(proto::ADMIN_NAME, identity)
        .await
        .with_context(|| format!("logging in to {target} as the site administrator"))?;
    Ok(connection)
}

/// The keys a user registered, as the server sent them.
fn keys_of(user: &User) -> anyhow::Result<PublicIdentity> {
    PublicIdentity::from_slices(&user.signing_key, &user.wrapping_key)
        .context("the server sent malformed keys")
}

async fn pending(args: &AdminSession) -> anyhow::Result<()> {
    let connection = connect(args).await?;
    let pending = connection
        .api()
        .list_pending(ListPendingRequest {})
        .await?
        .into_inner();
    if pending.users.is_empty() {
        println!("no registrations are waiting");
    }
    for user in pending.users {
        let fingerprint = keys_of(&user)?.fingerprint();
        println!("{}\tuid {}\tfingerprint {fingerprint}", user.name, user.uid);
    }
    Ok(())
}

async fn user_named(connection: &Connection, name: &str) -> anyhow::Result<User> {
    let by = Some(get_user_request::By::Name(name.to_string()));
    let reply = connection.api().get_user(GetUserRequest { by }).await;
    Ok(reply
        .with_context(|| format!("looking up user {name}"))?
        .into_inner())
}

async fn approve(args: &ApproveArgs) -> anyhow::Result<()> {
    let identity = args.server.key.unlock()?;
    let connection = connect_with(&args.server, &identity).await?;
    let vault = connection.hello().await?.vault_id;
    let user = user_named(&connection, &args.name).await?;
    if !user.certificate.is_empty() {
        bail!("{} is already approved", args.name);
    }
    let public = keys_of(&user)?;
    if identity::is_low_order_wrapping_key(&public.wrapping) {
        bail!(
            "refusing to approve {}: their wrapping key is a low-order X25519 point, so keys wrapped to it would be readable by anyone",
            user.name
        );
    }
    confirm(args, &user, public.fingerprint())?;
    let message = proto::certificate_message(
        &vault,
        user.uid,
        &user.name,
        &public.signing,
        &public.wrapping,
    );
    let certificate = identity.sign(proto::domains::USER_CERTIFICATE, &message);
    let request = ApproveRequest {
        name: user.name.clone(),
        uid: user.uid,
        certificate: certificate.to_vec(),
    };
    connection.api().approve(request).await?;
    let fingerprint = public.fingerprint();
    println!(
        "approved {} (uid {}, fingerprint {fingerprint})",
        user.name, user.uid
    );
    Ok(())
}

/// Approval goes on only when the fingerprint the user read out matches the registered keys
/// (or the administrator says yes at a prompt, or `--yes`).
fn confirm(args: &ApproveArgs, user: &User, shown: Fingerprint) -> anyhow::Result<()> {
    match (&args.fingerprint, args.yes) {
        (Some(given), _) => {
            let given = Fingerprint::from_hex(given).context("bad --fingerprint")?;
            if given != shown {
                bail!(
                    "{} registered keys with fingerprint {shown}, not {given}: not approved",
                    args.name
                );
            }
        }
        (None, true) => {}
        (None, false) if std::io::stdin().is_terminal() => {
            print!(
                "{} (uid {}) has fingerprint {shown}. Approve? [y/N] ",
                args.name, user.uid
            );
            std::io::stdout().flush()?;
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if !answer.trim().eq_ignore_ascii_case("y") {
                bail!("not approved");
            }
        }
        (None, false) => bail!("give --fingerprint (what the user read to you) or --yes"),
    }
    Ok(())
}

async fn group(command: &GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Create { server, name } => {
            let connection = connect(server).await?;
            let request = CreateGroupRequest { name: name.clone() };
            let group = connection.api().create_group(request).await?.into_inner();
            println!("created group {} (gid {})", group.name, group.gid);
            Ok(())
        }
        GroupCommand::Add(args) => set_member(args, true).await,
        GroupCommand::Remove(args) => set_member(args, false).await,
    }
}

async fn set_member(args: &MemberArgs, member: bool) -> anyhow::Result<()> {
    let identity = args.server.key.unlock()?;
    let connection = connect_with(&args.server, &identity).await?;
    let members =
        groups::set_member(&connection, &identity, (&args.group, &args.user), member).await?;
    println!("group {} now has members {members:?}", args.group);
    Ok(())
}

cli::test_command_line!(cli::NoOptions, Command);
