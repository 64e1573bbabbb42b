//! The command line: clap types only. Their `///` docs are the `--help` text.
//!
//! `tap` and `target` follow the Singer CLI contract (`--config`, `--catalog`/`--properties`,
//! `--state`, `--discover`, `--about`), so Meltano and other orchestrators can run ferry's
//! connectors as they run Python ones.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::runner::OnInvalid;

/// ferry: move data into your warehouse and back out, speaking the Singer protocol.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
pub struct Cli {
    /// The project file (default: ferry.yml in the working directory).
    #[arg(long, global = true, env = "FERRY_PROJECT")]
    pub project: Option<PathBuf>,
    /// Only warnings and errors on stderr; no progress bars, no summary.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More detail on stderr (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// No progress bars even on a terminal.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `--about` output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AboutFormat {
    /// JSON.
    Json,
    /// Markdown.
    Markdown,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a built-in tap: Singer messages on stdout.
    Tap(TapArgs),
    /// Run a built-in target: Singer messages on stdin (or --input), committed states on stdout.
    Target(TargetArgs),
    /// Run pipelines from the project file, with persisted state.
    Sync(SyncArgs),
    /// Discover a pipeline's streams and write its catalog file.
    Discover(DiscoverArgs),
    /// Select streams (and their replication method) in a pipeline's catalog.
    Select(SelectArgs),
    /// Show, set or clear a pipeline's state.
    State(StateArgs),
    /// Run a dbt-style project's SQL models, seeds and tests inside the warehouse.
    Transform(TransformArgs),
    /// Reverse ETL: send what changed in warehouse query results to APIs, databases, Redis.
    Reverse(ReverseArgs),
    /// Write a starter project: a commented ferry.yml, catalogs/, state/ and a .gitignore
    /// (never overwriting a file).
    Init(InitArgs),
}

/// `ferry init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The project folder (default: the working directory); created if missing.
    pub dir: Option<PathBuf>,
    /// The source: a built-in tap (`ferry tap --list`).
    #[arg(long, default_value = "postgres")]
    pub tap: String,
    /// The destination: a built-in target (`ferry target --list`).
    #[arg(long, default_value = "duckdb")]
    pub target: String,
    /// The pipeline's name.
    #[arg(long, default_value = "main")]
    pub pipeline: String,
}

/// `ferry reverse`.
#[derive(Debug, Args)]
pub struct ReverseArgs {
    /// Syncs to run (from `syncs:` in ferry.yml).
    pub syncs: Vec<String>,
    /// Run every sync.
    #[arg(long, conflicts_with = "syncs")]
    pub all: bool,
    /// Count adds, changes and removals, show samples and the first requests; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write a JSON run report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// What `ferry transform` does (dbt's commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransformCommand {
    /// Build the selected models.
    Run,
    /// Run the selected tests.
    Test,
    /// Seeds, models and tests in DAG order; what depends on a failure is skipped.
    Build,
    /// Load the seed CSVs.
    Seed,
    /// Run the snapshots (slowly changing dimensions).
    Snapshot,
    /// Install packages.yml's packages into dbt_packages/ and write package-lock.yml.
    Deps,
    /// Render SQL into target/compiled without running it.
    Compile,
    /// Read the project and write target/manifest.json, without connecting.
    Parse,
    /// Write target/index.html: lineage from pipelines to models, and every node's docs.
    Docs,
    /// `source freshness`: how old each source table's newest row is, against its thresholds.
    Source,
}

/// `ferry transform`.
#[derive(Debug, Args)]
pub struct TransformArgs {
    /// The command.
    #[arg(value_enum)]
    pub command: TransformCommand,
    /// `docs generate` is accepted as dbt spells it.
    #[arg(hide = true)]
    pub rest: Vec<String>,
    /// The dbt-style project folder (default: `transform:` in ferry.yml, else the working
    /// directory).
    #[arg(long)]
    pub project_dir: Option<PathBuf>,
    /// Where profiles.yml is (default: $DBT_PROFILES_DIR, the project folder, ~/.dbt).
    #[arg(long)]
    pub profiles_dir: Option<PathBuf>,
    /// The profile's output to use (default: the profile's `target`).
    #[arg(long, short = 't')]
    pub target: Option<String>,
    /// Nodes to act on: names, +name, name+, tag:…, path:…, source:…; several are a union,
    /// comma-joined ones an intersection.
    #[arg(long, short = 's', visible_alias = "models", short_alias = 'm', num_args = 1..)]
    pub select: Vec<String>,
    /// Nodes to leave out (same grammar).
    #[arg(long, num_args = 1..)]
    pub exclude: Vec<String>,
    /// Rebuild incremental models and seeds from scratch.
    #[arg(long)]
    pub full_refresh: bool,
    /// Models built at once (default: the profile's `threads`).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Variables for `var()`, as YAML: `--vars '{start_date: 2026-01-01}'`.
    #[arg(long)]
    pub vars: Option<String>,
    /// `source freshness`: where to write the results (default: target/sources.json).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

/// `ferry tap`.
#[derive(Debug, Args)]
pub struct TapArgs {
    /// The tap: a built-in name (`ferry tap --list`) or a REST definition file (`my_api.yml`).
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// List the built-in taps, a line on each.
    #[arg(long, conflicts_with_all = ["name", "discover", "about"])]
    pub list: bool,
    /// Config file (JSON, or YAML by extension); `${ENV}` is substituted.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Catalog file selecting streams (`--properties` is the old name).
    #[arg(long, visible_alias = "properties")]
    pub catalog: Option<PathBuf>,
    /// State file to resume from.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Write the catalog of available streams instead of reading data.
    #[arg(long)]
    pub discover: bool,
    /// Describe the tap (config keys, capabilities) instead of running it.
    #[arg(long)]
    pub about: bool,
    /// Format of --about.
    #[arg(long, value_enum, default_value_t = AboutFormat::Json)]
    pub format: AboutFormat,
}

/// `ferry target`.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The target: a built-in name (`ferry target --list`).
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// List the built-in targets and reverse-ETL destinations, a line on each.
    #[arg(long, conflicts_with_all = ["name", "about"])]
    pub list: bool,
    /// Config file (JSON, or YAML by extension); `${ENV}` is substituted.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Read messages from this file instead of stdin.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Describe the target instead of running it.
    #[arg(long)]
    pub about: bool,
    /// Format of --about.
    #[arg(long, value_enum, default_value_t = AboutFormat::Json)]
    pub format: AboutFormat,
    /// What to do with records that do not match their schema.
    #[arg(long, value_enum, default_value_t = OnInvalid::Fail)]
    pub on_invalid: OnInvalid,
    /// Folder for rejected records with --on-invalid quarantine.
    #[arg(long, default_value = "rejects")]
    pub rejects_dir: PathBuf,
}

/// `ferry sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Pipelines to run.
    pub pipelines: Vec<String>,
    /// Run every pipeline in the project file.
    #[arg(long, conflicts_with = "pipelines")]
    pub all: bool,
    /// Only these streams (globs on the stream id).
    #[arg(long, num_args = 1..)]
    pub select: Vec<String>,
    /// Ignore saved bookmarks of the streams being run (others keep theirs).
    #[arg(long)]
    pub full_refresh: bool,
    /// Print the plan (streams, methods, starting bookmarks) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write a JSON run report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// What to do with records that do not match their schema.
    #[arg(long, value_enum, default_value_t = OnInvalid::Fail)]
    pub on_invalid: OnInvalid,
    /// Then build (`ferry transform build`) the models downstream of the tables that received
    /// rows, in the project named by `transform:` in ferry.yml.
    #[arg(long)]
    pub then_transform: bool,
}

/// `ferry discover`.
#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// The pipeline.
    pub pipeline: String,
    /// Where to write the catalog (default: the pipeline's `catalog`, else catalogs/<pipeline>.json).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Replication methods a stream can be set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Method {
    /// Read everything every run.
    FullTable,
    /// Read from the bookmark on, by a replication key.
    Incremental,
    /// Read changed rows by Postgres transaction id.
    Xmin,
    /// Read a change log (logical replication).
    LogBased,
}

impl Method {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::FullTable => "FULL_TABLE",
            Method::Incremental => "INCREMENTAL",
            Method::Xmin => "XMIN",
            Method::LogBased => "LOG_BASED",
        }
    }
}

/// `ferry select`.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// The pipeline.
    pub pipeline: String,
    /// Stream globs (`public-*`, `orders`); none with --list.
    pub streams: Vec<String>,
    /// Replication method for the matched streams.
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// Replication key for the matched streams (INCREMENTAL).
    #[arg(long)]
    pub key: Option<String>,
    /// Deselect instead of select.
    #[arg(long)]
    pub deselect: bool,
    /// List streams and their selection.
    #[arg(long)]
    pub list: bool,
}

/// `ferry state`.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: StateAction,
}

/// State operations.
#[derive(Debug, Subcommand)]
pub enum StateAction {
    /// Print the state (or one stream's bookmark).
    Show {
        /// The pipeline.
        pipeline: String,
        /// Only this stream's bookmark.
        #[arg(long)]
        stream: Option<String>,
    },
    /// Replace the state (or one stream's bookmark) with a JSON value.
    Set {
        /// The pipeline.
        pipeline: String,
        /// The JSON value.
        value: String,
        /// Only this stream's bookmark.
        #[arg(long)]
        stream: Option<String>,
    },
    /// Remove the state (or one stream's bookmark): the next run starts over.
    Clear {
        /// The pipeline.
        pipeline: String,
        /// Only this stream's bookmark.
        #[arg(long)]
        stream: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn properties_is_an_alias_of_catalog() {
        let cli = Cli::try_parse_from([
            "ferry",
            "tap",
            "csv",
            "--config",
            "c.json",
            "--properties",
            "p.json",
        ])
        .unwrap();
        let Command::Tap(t) = cli.command else {
            panic!()
        };
        assert_eq!(t.catalog, Some(PathBuf::from("p.json")));
    }

    #[test]
    fn sync_flags() {
        let cli = Cli::try_parse_from([
            "ferry",
            "sync",
            "orders",
            "--select",
            "a",
            "b*",
            "--full-refresh",
        ])
        .unwrap();
        let Command::Sync(s) = cli.command else {
            panic!()
        };
        assert_eq!(s.pipelines, ["orders"]);
        assert_eq!(s.select, ["a", "b*"]);
        assert!(s.full_refresh);
        assert!(Cli::try_parse_from(["ferry", "sync", "a", "--all"]).is_err());
        let cli = Cli::try_parse_from(["ferry", "select", "p", "x", "--method", "XMIN"]).unwrap();
        let Command::Select(s) = cli.command else {
            panic!()
        };
        assert_eq!(s.method, Some(Method::Xmin));
    }
}
