//! The `wgkeep` binary: parse, run, report errors.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{error::ErrorKind, CommandFactory, Parser};

use cli::{Cli, Command};
use wgkeep_agent::{driver, lab, probe_cmd};

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
        Command::Agent(args) => {
            let config = args.config().unwrap_or_else(|e| usage_error("agent", e));
            init_logging(args.verbose);
            // One thread for the loop; a few for blocking device calls (each thread that
            // allocates gets its own malloc arena, so fewer threads keep the RSS down).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(4)
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async move {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let metrics = std::sync::Arc::new(wgkeep_agent::metrics::Metrics::new());
                let signals = tokio::spawn(driver::stop_on_signal(stop_tx));
                let connector = std::sync::Arc::new(driver::SystemConnector);
                let result = driver::run(config, connector, metrics, stop_rx).await;
                signals.abort();
                result
            })?;
        }
        Command::Probe(args) => {
            let config = args.config().unwrap_or_else(|e| usage_error("probe", e));
            init_logging(0);
            let out = probe_cmd::ProbeOutput {
                json: args.json,
                plot: args.plot.clone(),
                quiet: args.quiet,
            };
            runtime()?.block_on(probe_cmd::probe_command(&args.reflector, config, out))?;
        }
        Command::Reflect(args) => {
            let key = probe_cmd::read_key(args.psk_file.as_deref())
                .unwrap_or_else(|e| usage_error("reflect", e));
            init_logging(args.verbose);
            runtime()?.block_on(probe_cmd::reflect_command(
                args.listen,
                key,
                args.metrics_listen.0,
            ))?;
        }
        Command::Completions(args) => {
            wgkeep_agent::docs_cmd::completions(Cli::command(), &args, &mut std::io::stdout())?;
        }
        Command::Man(args) => {
            wgkeep_agent::docs_cmd::man(Cli::command(), &args, &mut std::io::stdout())?;
        }
    }
    Ok(())
}

/// A single-threaded runtime: every command is one loop around sockets.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Logs to stderr: plain lines without colours or timestamps under systemd (journald adds its
/// own), with timestamps on a terminal. `RUST_LOG` overrides the level.
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("wgkeep={level},wgkeep_agent={level}")));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(!journald && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
