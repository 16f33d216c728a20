//! `vaultfs`: the user's command line. Key management now; mounting arrives with the client.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use identity::KeyKind;
use keystore::PassphraseSource;

#[derive(Parser, Debug)]
#[command(
    name = "vaultfs",
    version,
    about = "End-to-end encrypted vault: client and user tools"
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
    /// Manage your key file (your private keys, under a passphrase).
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Create a new key pair and its key file, and print its fingerprint.
    Init(KeyArgs),
    /// Print the public keys and fingerprint of a key file (no passphrase needed).
    Show(KeyFileArg),
}

#[derive(Args, Debug)]
struct KeyFileArg {
    /// The key file [default: ~/.config/vault/user.vkey].
    #[arg(long, env = "VAULT_KEY_FILE")]
    key_file: Option<PathBuf>,
}

impl KeyFileArg {
    fn path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| keystore::default_path("user.vkey"))
    }
}

#[derive(Args, Debug)]
struct KeyArgs {
    #[command(flatten)]
    key_file: KeyFileArg,
    /// Read the passphrase from this file instead of VAULT_PASSPHRASE or a prompt.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if cli.verbose => {
            eprintln!("vaultfs: {error:?}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("vaultfs: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Key(KeyCommand::Init(args)) => key_init(&args),
        Command::Key(KeyCommand::Show(args)) => key_show(&args),
    }
}

fn key_init(args: &KeyArgs) -> anyhow::Result<()> {
    let path = args.key_file.path();
    let source = PassphraseSource {
        file: args.passphrase_file.clone(),
    };
    let public = keystore::create(&path, KeyKind::User, &source)?;
    println!("created {}", path.display());
    println!("fingerprint {}", public.fingerprint());
    Ok(())
}

fn key_show(args: &KeyFileArg) -> anyhow::Result<()> {
    let path = args.path();
    println!(
        "{}",
        keystore::describe(&path, &keystore::read_key_file(&path)?)
    );
    Ok(())
}
