//! The `ferry` binary: parse the command line, set up logging and the runtime, run the
//! command, and report an error once, choosing the exit code from its kind.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use ferry::cli::{Cli, LogFormat};
use ferry::error::{exit_code, is_broken_pipe, Failure};
use ferry::{progress, secrets};

/// mimalloc: the hot paths (JSON records, SQL text, Jinja values) make many small allocations.
/// Version 2 (the `v2` feature): it returns freed memory after 10 ms where version 3 waits a
/// second, which kept whole batches resident (the Parquet target: 125 → 75 MB, same speed).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter);
    match cli.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).with_target(false).init();
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    progress::init(cli.quiet, cli.no_progress);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {e}"
            );
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = ferry::commands::run(cli) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::Error::new(Failure::Interrupted)),
        }
    });
    // Children are killed on drop; don't wait for blocking readers stuck on stdin.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = secrets::redact(&format!("{e:#}"));
            let _ = writeln!(std::io::stderr(), "error: {msg}");
            ExitCode::from(u8::try_from(exit_code(&e)).unwrap_or(1))
        }
    }
}
