//! ferry: a single-binary ELT tool that speaks the Singer protocol.
//!
//! # Layout
//!
//! - [`singer`]: the protocol types (messages, catalog, state) and the JSON-lines codec, shared
//!   by every tap, target and the runner.
//! - [`schema`]: the shared schema layer: JSON Schema to column types, the record validator and
//!   schema inference.
//! - [`runner`]: the one loop that moves messages from a source to a sink and commits state only
//!   after the data before it is durable.
//! - [`taps`] and [`targets`]: built-in connectors (enum dispatch), plus external Singer
//!   executables run as child processes.
//! - [`definitions`]: the REST definitions (and their catalogs) that ship inside the binary.
//! - [`project`]: `ferry.yml`, `${ENV}` interpolation and pipeline resolution.
//! - [`sql`]: quoting of identifiers and literals built from source names.
//! - [`pg`]: connecting to PostgreSQL, shared by its tap and target.
//! - [`state_store`]: the state file: atomic writes, sorted keys, a lock against overlapping runs.
//! - [`cli`] and [`commands`]: clap types and one module per subcommand.
//! - [`about`]: `--about` descriptions of connectors.
//! - [`error`]: the failure kinds that decide the process exit code.
//! - [`secrets`]: redaction of secret values from every message a user sees.
//! - [`progress`]: progress bars on a terminal, plain log lines elsewhere, and the run summary.

pub mod about;
pub mod cli;
pub mod commands;
pub mod definitions;
pub mod error;
pub mod http;
pub mod pg;
pub mod process;
pub mod progress;
pub mod project;
pub mod reverse;
pub mod runner;
pub mod schema;
pub mod secrets;
pub mod singer;
pub mod sql;
pub mod state_store;
pub mod taps;
pub mod targets;
pub mod transform;
