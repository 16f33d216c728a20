//! `storaged admin ...`: the site administrator's commands. They run with the administrator's
//! key file on the administrator's side and talk to the daemon as any client does; the daemon
//! never holds the private key.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use client::{Connection, Fingerprint, Target};
use identity::{Identity, KeyKind, PublicIdentity};
use keystore::PassphraseSource;
use proto::v1::{
    ApproveRequest, CreateGroupRequest, GetGroupRequest, GetUserRequest, ListPendingRequest,
    SetGroupMemberRequest,
};
use storaged::config::default_data_dir;

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Create the site administrator's key pair and key file; print its fingerprint. With
    /// --data-dir, also write the public key where `storaged serve` looks for it.
    Init(InitArgs),
    /// Print the admin key file's public keys and fingerprint.
    Show(KeyArgs),
    /// List registrations waiting for approval.
    Pending(ServerArgs),
    /// Approve a registration: sign the user's name, uid and keys with the admin key.
    Approve(ApproveArgs),
    /// Manage groups (principals for sharing).
    #[command(subcommand)]
    Group(GroupCommand),
}

#[derive(Args, Debug)]
pub struct KeyArgs {
    /// The site admin key file [default: ~/.config/vault/admin.vkey].
    #[arg(long, env = "VAULT_ADMIN_KEY_FILE")]
    admin_key: Option<PathBuf>,
    /// Read the passphrase from this file instead of VAULT_PASSPHRASE or a prompt.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

impl KeyArgs {
    fn path(&self) -> PathBuf {
        self.admin_key
            .clone()
            .unwrap_or_else(|| keystore::default_path("admin.vkey"))
    }

    fn source(&self) -> PassphraseSource {
        PassphraseSource {
            file: self.passphrase_file.clone(),
            ..Default::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// Also write `<DIR>/admin.pub` for the daemon serving from DIR.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// The daemon: unix:PATH or https://HOST:PORT [default: unix:<default data dir>/storaged.sock].
    #[arg(long, env = "VAULT_SERVER")]
    server: Option<String>,
    /// The TLS certificate fingerprint (sha256:...) of an https:// server.
    #[arg(long, env = "VAULT_SERVER_FINGERPRINT")]
    server_fingerprint: Option<String>,
}

#[derive(Args, Debug)]
pub struct ApproveArgs {
    #[command(flatten)]
    server: ServerArgs,
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
pub enum GroupCommand {
    /// Create a group.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        name: String,
    },
    /// Add a user to a group.
    Add {
        #[command(flatten)]
        server: ServerArgs,
        group: String,
        user: String,
    },
    /// Remove a user from a group.
    Remove {
        #[command(flatten)]
        server: ServerArgs,
        group: String,
        user: String,
    },
}

pub async fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Init(args) => init(args),
        AdminCommand::Show(args) => {
            let path = args.path();
            println!(
                "{}",
                keystore::describe(&path, &keystore::read_key_file(&path)?)
            );
            Ok(())
        }
        AdminCommand::Pending(args) => {
            let connection = connect(&args).await?;
            let pending = connection
                .api()
                .list_pending(ListPendingRequest {})
                .await?
                .into_inner();
            if pending.users.is_empty() {
                println!("no registrations are waiting");
            }
            for user in pending.users {
                let public = PublicIdentity::from_slices(&user.signing_key, &user.wrapping_key)
                    .context("the server sent malformed keys")?;
                println!(
                    "{}\tuid {}\tfingerprint {}",
                    user.name,
                    user.uid,
                    public.fingerprint()
                );
            }
            Ok(())
        }
        AdminCommand::Approve(args) => approve(args).await,
        AdminCommand::Group(command) => group(command).await,
    }
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let path = args.key.path();
    let public = keystore::create(&path, KeyKind::SiteAdmin, &args.key.source())?;
    println!("created {}", path.display());
    println!("fingerprint {}", public.fingerprint());
    if let Some(dir) = args.data_dir {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pub_path = dir.join("admin.pub");
        std::fs::write(&pub_path, storaged::server::admin_key_text(&public))
            .with_context(|| format!("writing {}", pub_path.display()))?;
        println!("wrote {}", pub_path.display());
    }
    Ok(())
}

/// Unlocks the admin key file and logs in with it.
async fn connect(args: &ServerArgs) -> anyhow::Result<Connection> {
    let identity = keystore::unlock(&args.key.path(), KeyKind::SiteAdmin, &args.key.source())?;
    connect_with(args, &identity).await
}

async fn approve(args: ApproveArgs) -> anyhow::Result<()> {
    let identity = keystore::unlock(
        &args.server.key.path(),
        KeyKind::SiteAdmin,
        &args.server.key.source(),
    )?;
    let connection = connect_with(&args.server, &identity).await?;
    let vault = connection.hello().await?.vault_id;
    let user = connection
        .api()
        .get_user(GetUserRequest {
            by: Some(proto::v1::get_user_request::By::Name(args.name.clone())),
        })
        .await
        .with_context(|| format!("looking up {}", args.name))?
        .into_inner();
    if !user.certificate.is_empty() {
        bail!("{} is already approved", args.name);
    }
    let public = PublicIdentity::from_slices(&user.signing_key, &user.wrapping_key)
        .context("the server sent malformed keys")?;
    let shown = public.fingerprint();
    match (&args.fingerprint, args.yes) {
        (Some(given), _) => {
            let given = identity::Fingerprint::from_hex(given).context("bad --fingerprint")?;
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
    let message = proto::certificate_message(
        &vault,
        user.uid,
        &user.name,
        &public.signing,
        &public.wrapping,
    );
    let certificate = identity.sign(proto::domains::USER_CERTIFICATE, &message);
    connection
        .api()
        .approve(ApproveRequest {
            name: user.name.clone(),
            uid: user.uid,
            certificate: certificate.to_vec(),
        })
        .await?;
    println!(
        "approved {} (uid {}, fingerprint {shown})",
        user.name, user.uid
    );
    Ok(())
}

async fn connect_with(args: &ServerArgs, identity: &Identity) -> anyhow::Result<Connection> {
    let text = args.server.clone().unwrap_or_else(|| {
        format!(
            "unix:{}",
            default_data_dir().join("storaged.sock").display()
        )
    });
    let pin = args
        .server_fingerprint
        .as_deref()
        .map(|f| Fingerprint::parse(f).context("bad --server-fingerprint"))
        .transpose()?;
    let connection = Connection::new(&Target::parse(&text, pin)?)?;
    connection
        .login(storaged::ops::users::ADMIN_NAME, identity)
        .await
        .with_context(|| format!("logging in to {text} as the site administrator"))?;
    Ok(connection)
}

async fn group(command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Create { server, name } => {
            let connection = connect(&server).await?;
            let group = connection
                .api()
                .create_group(CreateGroupRequest { name })
                .await?
                .into_inner();
            println!("created group {} (gid {})", group.name, group.gid);
        }
        GroupCommand::Add {
            server,
            group,
            user,
        }
        | GroupCommand::Remove {
            server,
            group,
            user,
        } => {
            let member = std::env::args().any(|a| a == "add");
            let connection = connect(&server).await?;
            let gid = connection
                .api()
                .get_group(GetGroupRequest {
                    by: Some(proto::v1::get_group_request::By::Name(group.clone())),
                })
                .await
                .with_context(|| format!("looking up group {group}"))?
                .into_inner()
                .gid;
            let uid = connection
                .api()
                .get_user(GetUserRequest {
                    by: Some(proto::v1::get_user_request::By::Name(user.clone())),
                })
                .await
                .with_context(|| format!("looking up user {user}"))?
                .into_inner()
                .uid;
            let group = connection
                .api()
                .set_group_member(SetGroupMemberRequest { gid, uid, member })
                .await?
                .into_inner();
            println!("group {} now has members {:?}", group.name, group.members);
        }
    }
    Ok(())
}
