//! What every command line of the workspace shares, written once: parsing with a global
//! `--verbose`, logging to stderr under `RUST_LOG`, and errors as one readable line with a
//! non-zero exit (`--verbose` prints the chain of causes one per line instead).
//!
//! It holds no command's logic and knows nothing of the vault.

use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// A program as `--help` and error lines name it.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    pub name: &'static str,
    pub version: &'static str,
    pub about: &'static str,
}

/// The [`Program`] of the crate this is used in: `program!(name, about)`.
#[macro_export]
macro_rules! program {
    ($name:literal, $about:expr) => {
        $crate::Program {
            name: $name,
            version: env!("CARGO_PKG_VERSION"),
            about: $about,
        }
    };
}

/// A test that clap finds the program's options consistent (`Cli::check`):
/// `cli::test_command_line!(Options, Command);` in the program's `main.rs`.
#[macro_export]
macro_rules! test_command_line {
    ($global:ty, $command:ty) => {
        #[cfg(test)]
        #[test]
        fn the_command_line_is_well_formed() {
            $crate::Cli::<$global, $command>::check();
        }
    };
}

/// A command line: options every subcommand takes (`G`, [`NoOptions`] when there are none),
/// then one subcommand (`C`).
#[derive(Parser, Debug)]
pub struct Cli<G: Args, C: Subcommand> {
    /// On error, print the causes one per line (by default they share one line).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(flatten)]
    pub global: G,
    #[command(subcommand)]
    pub command: C,
}

/// For a program whose options all belong to its subcommands.
#[derive(Args, Debug, Clone, Copy)]
pub struct NoOptions {}

impl<G: Args, C: Subcommand> Cli<G, C> {
    /// Parses the process's arguments; prints help, the version or a usage error and exits
    /// when that is what they ask for or are.
    pub fn parse_for(program: &Program) -> Cli<G, C> {
        let matches = Self::command()
            .name(program.name)
            .bin_name(program.name)
            .version(program.version)
            .about(program.about)
            .get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }

    /// Panics when the options contradict each other (two with one name, say), which clap
    /// finds only when that part of the command line is parsed: for each program's tests.
    pub fn check() {
        Self::command().debug_assert();
    }

    /// Reports how `work` ended: its exit code, or the error on stderr as one line prefixed
    /// with the program's name (with `--verbose`, one cause per line) and a failure code.
    pub fn finish(&self, program: &Program, work: anyhow::Result<ExitCode>) -> ExitCode {
        match work {
            Ok(code) => code,
            Err(error) => {
                eprintln!("{}: {}", program.name, describe(&error, self.verbose));
                ExitCode::FAILURE
            }
        }
    }
}

/// Whether `name` is one of the subcommands (or an alias) of the command line `Cli<G, C>`.
pub fn is_subcommand<G: Args, C: Subcommand>(name: &str) -> bool {
    Cli::<G, C>::command().find_subcommand(name).is_some() || name == "help"
}

/// An error as one line (`outer: cause: root cause`), or with `verbose` as the message and
/// its causes one per line.
pub fn describe(error: &anyhow::Error, verbose: bool) -> String {
    if verbose {
        format!("{error:?}")
    } else {
        format!("{error:#}")
    }
}

/// Logs to stderr at `default_level` (`error`, `warn`, `info`, ...) unless `RUST_LOG` says
/// otherwise.
pub fn init_logging(default_level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn an_error_is_one_line_unless_verbose() {
        let error = Err::<(), _>(anyhow::anyhow!("no such file"))
            .context("reading the key file")
            .expect_err("an error");
        assert_eq!(
            describe(&error, false),
            "reading the key file: no such file"
        );
        let verbose = describe(&error, true);
        assert!(verbose.lines().count() > 1, "{verbose}");
        assert!(verbose.contains("Caused by"), "{verbose}");
    }

    #[derive(Subcommand, Debug, PartialEq)]
    enum Command {
        Run { name: String },
    }

    #[test]
    fn verbose_is_global_and_the_subcommand_parses() {
        let cli =
            Cli::<NoOptions, Command>::try_parse_from(["prog", "run", "x", "-v"]).expect("parses");
        assert!(cli.verbose);
        assert_eq!(cli.command, Command::Run { name: "x".into() });
    }
}
