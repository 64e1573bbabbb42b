//! Built-in targets, dispatched by enum.
//!
//! A target sees messages in order and makes them durable on `commit`; the runner decides when
//! to commit and writes the state only afterwards (see [`crate::runner`]). A target that can
//! store the state in the same transaction as the data (`commit(Some(state))`) reports it back
//! through `recover`, so a crash between its commit and the state file's can be rolled forward.
//!
//! To add one: a folder `src/targets/<name>/`, a variant here, its name in [`BUILTIN`], and arms
//! in each `match` below.

pub mod arrow;
pub mod duckdb;
pub mod file;
pub mod names;
pub mod parquet;
pub mod postgres;
pub mod table;

use serde_json::Value;

use crate::about::About;
use crate::error::config_error;
use crate::schema::scan::FieldSpans;
use crate::singer::{ActivateVersionMessage, RecordMessage, SchemaMessage};

/// Names of the built-in targets.
pub const BUILTIN: &[&str] = &["csv", "jsonl", "postgres", "duckdb", "parquet"];

/// A built-in target, configured.
#[derive(Debug)]
pub enum Target {
    /// `csv` and `jsonl`: a file per stream in a folder.
    File(file::FileTarget),
    /// `postgres`: a table per stream.
    Postgres(Box<postgres::PostgresTarget>),
    /// `duckdb`: a table per stream in a DuckDB file.
    DuckDb(Box<duckdb::DuckDbTarget>),
    /// `parquet`: Parquet files, a folder per stream, and a manifest.
    Parquet(Box<parquet::ParquetTarget>),
}

/// State a target committed together with its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    /// The state committed before the last one.
    pub prev: Value,
    /// The last state committed with the data.
    pub state: Value,
}

impl Target {
    /// Builds a target from its name and config.
    /// `scope` names the pipeline (in `ferry sync`), so targets that keep their own commit
    /// records keep one per pipeline.
    ///
    /// # Errors
    /// A config error for an unknown name or a bad config.
    pub async fn new(name: &str, config: &Value, scope: Option<&str>) -> anyhow::Result<Target> {
        match name {
            "postgres" => Ok(Target::Postgres(Box::new(
                postgres::PostgresTarget::new(config, scope).await?,
            ))),
            "duckdb" => Ok(Target::DuckDb(Box::new(duckdb::DuckDbTarget::new(
                config, scope,
            )?))),
            "parquet" => Ok(Target::Parquet(Box::new(parquet::ParquetTarget::new(
                config, scope,
            )?))),
            "csv" => Ok(Target::File(file::FileTarget::new(
                file::Format::Csv,
                config,
                scope,
            )?)),
            "jsonl" => Ok(Target::File(file::FileTarget::new(
                file::Format::Jsonl,
                config,
                scope,
            )?)),
            other => Err(unknown(other)),
        }
    }

    /// The `--about` description of a built-in target.
    ///
    /// # Errors
    /// A config error for an unknown name.
    pub fn about(name: &str) -> anyhow::Result<About> {
        match name {
            "csv" => Ok(file::about(file::Format::Csv)),
            "jsonl" => Ok(file::about(file::Format::Jsonl)),
            "postgres" => Ok(postgres::about()),
            "duckdb" => Ok(duckdb::about()),
            "parquet" => Ok(parquet::about()),
            other => Err(unknown(other)),
        }
    }

    /// Applies a SCHEMA: creates or evolves the stream's destination.
    ///
    /// # Errors
    /// When the destination cannot follow the schema.
    pub async fn schema(&mut self, msg: &SchemaMessage) -> anyhow::Result<()> {
        match self {
            Target::File(t) => t.schema(msg),
            Target::Postgres(t) => t.schema(msg).await,
            Target::DuckDb(t) => t.schema(msg).await,
            Target::Parquet(t) => t.schema(msg),
        }
    }

    /// Whether this target reads values straight from raw records' text, and so takes where
    /// their properties lie ([`Target::record`]'s `fields`) when the runner's validation found it.
    pub fn reads_fields(&self) -> bool {
        matches!(
            self,
            Target::Postgres(_) | Target::DuckDb(_) | Target::Parquet(_)
        )
    }

    /// Takes one record (validated by the runner). `fields`: where the raw record's top-level
    /// properties lie in its text, as validation found them (empty when unknown).
    ///
    /// # Errors
    /// When it cannot be written.
    pub async fn record(&mut self, msg: RecordMessage, fields: &FieldSpans) -> anyhow::Result<()> {
        let fields = (!fields.is_empty()).then_some(fields);
        match self {
            Target::File(t) => t.record(&msg),
            Target::Postgres(t) => t.record(&msg, fields).await,
            Target::DuckDb(t) => t.record(&msg, fields).await,
            Target::Parquet(t) => t.record(&msg, fields),
        }
    }

    /// Handles ACTIVATE_VERSION.
    ///
    /// # Errors
    /// When the destination cannot apply it.
    pub async fn activate_version(&mut self, msg: &ActivateVersionMessage) -> anyhow::Result<()> {
        match self {
            Target::File(t) => {
                t.activate_version(msg);
                Ok(())
            }
            Target::Postgres(t) => {
                t.activate_version(msg);
                Ok(())
            }
            Target::DuckDb(t) => {
                t.activate_version(msg);
                Ok(())
            }
            Target::Parquet(t) => {
                t.activate_version(msg);
                Ok(())
            }
        }
    }

    /// Makes everything received so far durable, with `state` if the target keeps it.
    ///
    /// # Errors
    /// When the data cannot be made durable; nothing of it may then be considered committed.
    pub async fn commit(&mut self, state: Option<&Value>) -> anyhow::Result<()> {
        match self {
            Target::File(t) => t.commit(state),
            Target::Postgres(t) => t.commit(state).await,
            Target::DuckDb(t) => t.commit(state).await,
            Target::Parquet(t) => t.commit(state),
        }
    }

    /// The state this target last committed with its data, if it keeps one.
    ///
    /// # Errors
    /// When the target's own record is unreadable.
    pub async fn recover(&self) -> anyhow::Result<Option<Recovered>> {
        match self {
            Target::File(t) => t.recover(),
            Target::Postgres(t) => t.recover().await,
            Target::DuckDb(t) => t.recover().await,
            Target::Parquet(t) => t.recover(),
        }
    }

    /// `--on-invalid quarantine`: a target that can set aside rows its destination rejects does.
    pub fn set_quarantine(&mut self, on: bool) {
        match self {
            Target::Postgres(t) => t.set_quarantine(on),
            Target::DuckDb(t) => t.set_quarantine(on),
            Target::File(_) | Target::Parquet(_) => {}
        }
    }

    /// Forgets the state this target committed with its data (after `ferry state set/clear`),
    /// so that recovery does not bring the old state back.
    ///
    /// # Errors
    /// When the target's own record cannot be changed.
    pub async fn forget_state(&mut self) -> anyhow::Result<()> {
        match self {
            Target::File(t) => t.forget_state(),
            Target::Postgres(t) => t.forget_state().await,
            Target::DuckDb(t) => t.forget_state().await,
            Target::Parquet(t) => t.forget_state(),
        }
    }

    /// Bytes written for a stream in this run.
    pub fn bytes_written(&self, stream: &str) -> u64 {
        match self {
            Target::File(t) => t.bytes_written(stream),
            Target::Postgres(t) => t.bytes_written(stream),
            Target::DuckDb(t) => t.bytes_written(stream),
            Target::Parquet(t) => t.bytes_written(stream),
        }
    }
}

fn unknown(name: &str) -> anyhow::Error {
    config_error(format!(
        "unknown target {name:?}; built-in targets: {}; for any other Singer target use `command: {name}` in ferry.yml",
        BUILTIN.join(", ")
    ))
}

/// The built-in targets, then the shipped reverse-ETL destinations (`ferry reverse`), each with
/// a line on it, for `ferry target --list`.
pub fn list() -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = BUILTIN
        .iter()
        .map(|n| {
            let about = Target::about(n).map(|a| a.description.to_owned());
            (*n, about.unwrap_or_default())
        })
        .collect();
    for s in crate::definitions::DESTINATIONS {
        out.push((
            s.name,
            format!(
                "reverse-ETL destination (ferry reverse): {}",
                crate::definitions::description(s)
            ),
        ));
    }
    out
}
