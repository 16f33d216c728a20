//! `storaged`: the storage daemon and its administration commands.
//!
//! It never depends on the `crypto` crate: it cannot open a chunk, by construction.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use identity::KeyKind;
use keystore::PassphraseSource;

#[derive(Parser, Debug)]
#[command(
    name = "storaged",
    version,
    about = "Vault storage daemon and its administration"
)]
struct Cli {
    /// Print the whole chain of causes when something fails.
    #[arg(long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Site administration with the admin key (held by the administrator, never the daemon).
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Create the site administrator's key pair and key file; print its fingerprint.
    Init(AdminKeyArgs),
    /// Print the admin key file's public keys and fingerprint.
    Show(AdminKeyFile),
}

#[derive(Args, Debug)]
struct AdminKeyFile {
    /// The site admin key file [default: ~/.config/vault/admin.vkey].
    #[arg(long, env = "VAULT_ADMIN_KEY_FILE")]
    admin_key: Option<PathBuf>,
}

impl AdminKeyFile {
    fn path(&self) -> PathBuf {
        self.admin_key
            .clone()
            .unwrap_or_else(|| keystore::default_path("admin.vkey"))
    }
}

#[derive(Args, Debug)]
struct AdminKeyArgs {
    #[command(flatten)]
    key_file: AdminKeyFile,
    /// Read the passphrase from this file instead of VAULT_PASSPHRASE or a prompt.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if cli.verbose => {
            eprintln!("storaged: {error:?}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("storaged: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Admin(AdminCommand::Init(args)) => {
            let path = args.key_file.path();
            let source = PassphraseSource {
                file: args.passphrase_file,
            };
            let public = keystore::create(&path, KeyKind::SiteAdmin, &source)?;
            println!("created {}", path.display());
            println!("fingerprint {}", public.fingerprint());
            Ok(())
        }
        Command::Admin(AdminCommand::Show(args)) => {
            let path = args.path();
            println!(
                "{}",
                keystore::describe(&path, &keystore::read_key_file(&path)?)
            );
            Ok(())
        }
    }
}
