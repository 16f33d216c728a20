//! `storaged`: the storage daemon and its administration commands.
//!
//! It never depends on the `crypto` crate: it cannot open a chunk, by construction.

mod admin;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use storaged::config::{Config, ServeArgs};

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
    /// Run the daemon (logs go to stderr; RUST_LOG sets the level, default info).
    Serve(ServeArgs),
    /// Site administration with the admin key (held by the administrator, never the daemon).
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Walk the hash chain of the audit log and report the first break.
    Verify(ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("storaged: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
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

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            storaged::server::serve(Config::resolve(&args)?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin(command) => admin::run(command).await.map(|()| ExitCode::SUCCESS),
        Command::Audit(AuditCommand::Verify(args)) => {
            let config = Config::resolve(&args)?;
            let store = storaged::server::open_store(&config, None).await?;
            match storaged::audit::verify(&*store).await? {
                storaged::audit::Verdict::Intact { entries } => {
                    println!("audit log intact: {entries} entries");
                    Ok(ExitCode::SUCCESS)
                }
                storaged::audit::Verdict::Broken { seq, reason } => {
                    println!("audit log BROKEN at entry {seq}: {reason}");
                    Ok(ExitCode::from(2))
                }
            }
        }
    }
}
