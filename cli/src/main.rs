//! `autostandby`: an operator tool that shows what libautostandby sees and would decide.
//!
//! It never acts on a VM: decisions are displayed, not executed. Each subcommand lives
//! in a module of its own with its arguments (`Args`) and its `run`; adding one is a
//! module, a variant of [`Command`] and an arm in [`main`].

mod common;
mod flows;
mod recommend;
mod stats;
mod watch;

use std::process::ExitCode;
use std::sync::LazyLock;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use common::Failure;

/// `--version`: this tool's, the library's and the C ABI's versions, read from the
/// library it is linked with.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} (libautostandby {}, C ABI {})",
        env!("CARGO_PKG_VERSION"),
        autostandby::VERSION,
        autostandby::ffi::AUTOSTANDBY_ABI_VERSION
    )
});

/// Shows what libautostandby sees in the conntrack table and what it would decide.
///
/// Reads the conntrack table of a network namespace (the current one by default); needs
/// root or CAP_NET_ADMIN. Never puts a VM into standby or wakes one.
#[derive(Debug, Parser)]
#[command(name = "autostandby", arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Watch(watch::Args),
    Flows(flows::Args),
    Stats(stats::Args),
    Recommend(recommend::Args),
}

fn main() -> ExitCode {
    let mut command = Cli::command().version(VERSION.as_str());
    let matches = command.try_get_matches_from_mut(std::env::args_os());
    let subcommand = matches
        .as_ref()
        .ok()
        .and_then(|m| m.subcommand_name())
        .unwrap_or_default()
        .to_owned();
    let cli = match matches.and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout, errors to stderr; a closed pipe is not
            // worth a message.
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    let result = match cli.command {
        Command::Watch(args) => watch::run(&args),
        Command::Flows(args) => flows::run(&args),
        Command::Stats(args) => stats::run(&args),
        Command::Recommend(args) => recommend::run(&args),
    };
    match result {
        Ok(()) | Err(Failure::BrokenPipe) => ExitCode::SUCCESS,
        Err(Failure::Message(e)) => {
            eprintln!("autostandby: {e}");
            ExitCode::FAILURE
        }
        Err(Failure::Usage(e)) => {
            // Told as clap tells its own errors, with the subcommand's usage line.
            command.build();
            let e = match command.find_subcommand_mut(&subcommand) {
                Some(sub) => sub.error(clap::error::ErrorKind::ValueValidation, e),
                None => command.error(clap::error::ErrorKind::ValueValidation, e),
            };
            let _ = e.print();
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
