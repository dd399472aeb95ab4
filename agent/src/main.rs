//! The `wgkeep` binary: parse, run, report errors.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{error::ErrorKind, CommandFactory, Parser};

use cli::{Cli, Command};
use wgkeep_agent::lab;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A usage error found after parsing: print it like clap does, with the subcommand's usage, and
/// exit 2.
fn usage_error(subcommand: &str, msg: String) -> ! {
    let mut cmd = Cli::command();
    cmd.build();
    let sub = cmd
        .find_subcommand_mut(subcommand)
        .expect("known subcommand");
    sub.error(ErrorKind::ArgumentConflict, msg).exit()
}

fn try_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Lab(args) => {
            let (config, runs, side) = args.config().unwrap_or_else(|e| usage_error("lab", e));
            let report = lab::run(&config, runs, side);
            let mut out = std::io::stdout().lock();
            if args.json {
                writeln!(out, "{}", lab::render_json(&report))
            } else {
                if args.timeline {
                    write!(out, "{}", lab::render_timeline(&report))?;
                }
                write!(out, "{}", lab::render_human(&report))
            }
            .context("writing the report to stdout")?;
        }
    }
    Ok(())
}
