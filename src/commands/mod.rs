//! One module per subcommand. Each takes its parsed arguments and returns the exit code.

pub mod discover;
pub mod init;
pub mod state;
pub mod sync;
pub mod tap;
pub mod target;

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::{Map, Value};

use crate::about::About;
use crate::cli::{AboutFormat, Cli, Command};
use crate::error::config_error;
use crate::project::read_config_file;
use crate::runner::RunStats;

/// Global flags every command sees.
#[derive(Debug, Clone)]
pub struct Globals {
    /// `--project`.
    pub project: Option<std::path::PathBuf>,
    /// `--quiet`.
    pub quiet: bool,
}

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the command fails with; `main` reports it.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let g = Globals {
        project: cli.project,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Tap(a) => tap::run(a, &g).await,
        Command::Target(a) => target::run(a, &g).await,
        Command::Sync(a) => sync::run(a, &g).await,
        Command::Discover(a) => discover::run(a, &g).await,
        Command::Select(a) => discover::select(a, &g),
        Command::State(a) => state::run(a, &g).await,
        Command::Transform(a) => crate::transform::run(a, &g).await,
        Command::Reverse(a) => crate::reverse::run(a, &g).await,
        Command::Init(a) => init::run(a, &g),
    }
}

/// Reads a connector config file, or an empty config when none is given.
///
/// # Errors
/// A config error naming the file.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Value> {
    match path {
        Some(p) => read_config_file(p),
        None => Ok(Value::Object(Map::new())),
    }
}

/// Prints `--list`: a name and a line on it per connector, aligned.
///
/// # Errors
/// A broken stdout.
pub fn print_list(items: &[(&str, String)]) -> anyhow::Result<i32> {
    let width = items.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let text: String = items
        .iter()
        .map(|(n, d)| format!("{n:width$}  {d}\n"))
        .collect();
    print_stdout(&text)?;
    Ok(0)
}

/// Writes data (a catalog, an about page, a plan) to stdout.
///
/// # Errors
/// I/O errors, a broken pipe included.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .context("writing to stdout")?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Prints an `--about` description.
///
/// # Errors
/// I/O errors.
pub fn print_about(about: &About, format: AboutFormat) -> anyhow::Result<i32> {
    print_stdout(&match format {
        AboutFormat::Json => about.to_json(),
        AboutFormat::Markdown => about.to_markdown(),
    })?;
    Ok(0)
}

/// Requires a file to exist, as a config error otherwise.
///
/// # Errors
/// A config error naming what the file is for.
pub fn require_file(path: &Path, what: &str) -> anyhow::Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(config_error(format!(
            "{what} {} does not exist",
            path.display()
        )))
    }
}

/// The end-of-run summary on stderr: rows per stream, duration, rate.
pub fn summary(label: &str, stats: &RunStats, quiet: bool) {
    if quiet {
        return;
    }
    let secs = stats.duration_secs.max(1e-9);
    let mut s = format!(
        "{label}: {} rows in {:.2}s ({:.0} rows/s)\n",
        stats.rows(),
        stats.duration_secs,
        stats.rows() as f64 / secs
    );
    for st in &stats.streams {
        s.push_str(&format!("  {:<30} {:>12} rows", st.stream, st.rows));
        if st.rejects > 0 {
            s.push_str(&format!("  {:>8} rejected", st.rejects));
        }
        s.push('\n');
    }
    for (stream, err) in &stats.failed_streams {
        s.push_str(&format!(
            "  {stream:<30} FAILED: {}\n",
            crate::secrets::redact(err)
        ));
    }
    let _ = std::io::stderr().lock().write_all(s.as_bytes());
}
