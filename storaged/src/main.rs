//! `storaged`: the storage daemon, and the check of its audit log.
//!
//! It never depends on the `crypto` crate: it cannot open a chunk, by construction. The site
//! administrator's commands are another program (`vault-admin`), so the daemon does not even
//! link the code that unlocks the administrator's key.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use cli::{Cli, NoOptions, Program};
use identity::Fingerprint;
use storaged::anchor::{self, AnchorCheck};
use storaged::audit::Verdict;
use storaged::config::{Config, ServeArgs};

const PROGRAM: Program = cli::program!(
    "storaged",
    "Vault storage daemon: metadata, ciphertext chunk files, access control, audit"
);

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon (logs go to stderr; RUST_LOG sets the level, default info).
    Serve(ServeArgs),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Copy the metadata as of now into a new directory, while the daemon runs.
    Backup(storaged::backup::BackupArgs),
    /// Put a backup's metadata back as a new vault's (then copy the chunk files in).
    Restore(storaged::backup::RestoreArgs),
    /// Check records against chunk files without a key. Exit 0: clean, 3: leftovers only, 4: damage.
    Fsck(storaged::fsck::FsckArgs),
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Walk the hash chain of the audit log, report the first break, check it against the
    /// administrator's anchor, and print its head (exit 2 when broken).
    Verify(VerifyArgs),
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// The administrator key's fingerprint, from the administrator (not from the database,
    /// which whoever holds it could replace): the anchor must be signed by that key.
    #[arg(long)]
    admin_fingerprint: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::<NoOptions, Command>::parse_for(&PROGRAM);
    cli::init_logging("info");
    let work = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| anyhow::anyhow!("starting the async runtime: {error}"))
        .and_then(|runtime| runtime.block_on(run(&cli.command)));
    cli.finish(&PROGRAM, work)
}

async fn run(command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            storaged::server::serve(Config::resolve(args)?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup(args) => storaged::backup::backup(args).await,
        Command::Restore(args) => storaged::backup::restore(args).await,
        Command::Fsck(args) => storaged::fsck::run(args).await,
        Command::Audit(AuditCommand::Verify(args)) => verify_audit(args).await,
    }
}

async fn verify_audit(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let expected = args
        .admin_fingerprint
        .as_deref()
        .map(|text| Fingerprint::from_hex(text).context("bad --admin-fingerprint"))
        .transpose()?;
    let config = Config::resolve(&args.serve)?;
    storaged::server::require_existing_store(&config)?;
    let store = storaged::server::open_store(&config, None).await?;
    let report = anchor::check(&*store, expected).await?;
    let mut broken = false;
    match &report.walk.verdict {
        Verdict::Intact { entries } => println!("audit log intact: {entries} entries"),
        Verdict::Broken { seq, reason } => {
            println!("audit log BROKEN at entry {seq}: {reason}");
            broken = true;
        }
    }
    if let Some((seq, hash)) = report.walk.head {
        println!("head: entry {seq}, hash {}", hex::encode(hash));
    }
    match &report.anchor {
        AnchorCheck::Holds { seq, admin } if expected.is_some() => {
            println!("anchor: entry {seq}, signed by the expected administrator key {admin}");
        }
        AnchorCheck::Holds { seq, admin } => println!(
            "anchor: entry {seq}, signed by the vault's administrator key {admin} (compare \
             it, or pass --admin-fingerprint)"
        ),
        AnchorCheck::None => {
            println!("anchor: none (the administrator signs the head: vault-admin audit anchor)");
        }
        AnchorCheck::Broken(reason) => {
            println!("anchor BROKEN: {reason}");
            broken = true;
        }
    }
    Ok(if broken {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

cli::test_command_line!(cli::NoOptions, Command);
