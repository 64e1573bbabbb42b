//! Target `duckdb`: an embedded analytical warehouse in one file, a table per stream, with the
//! Postgres target's table semantics (the shared [`crate::targets::table`] layer): typed columns,
//! evolution without loss, upsert by key with in-batch dedupe, ACTIVATE_VERSION, metadata
//! columns, and the pipeline state committed in the same transaction as the data.
//!
//! Records are turned into Arrow batches ([`crate::targets::arrow`]) and appended through
//! DuckDB's appender into a staging table, then merged; each commit is one transaction.

mod load;

use serde::Deserialize;
use serde_json::Value;

pub use load::DuckDbTarget;

use crate::about::{About, ConfigKey};

fn default_path() -> String {
    "warehouse.duckdb".into()
}
const fn default_batch_rows() -> u64 {
    // Measured: 20k-row batches load as fast as 100k ones and keep the process ~50 MB smaller.
    20_000
}
const fn default_batch_bytes() -> u64 {
    64 << 20
}
const fn default_true() -> bool {
    true
}
fn default_memory_limit() -> Option<String> {
    // A load appends and merges batch by batch; a bigger buffer pool only caches more of the
    // table (measured: 64MB and 256MB load at the same speed, 256MB ~40 MB bigger).
    Some("64MB".into())
}
fn default_state_table() -> Option<String> {
    Some("_ferry_state".into())
}

/// How objects and arrays are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Nested {
    /// A JSON column.
    #[default]
    Json,
    /// STRUCT and LIST columns typed from the JSON Schema (JSON where it says too little).
    Struct,
}

/// The target's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DuckDbTargetConfig {
    /// The database file (created if missing), relative to the project folder in `ferry sync`.
    #[serde(default = "default_path", alias = "filepath")]
    pub path: String,
    /// Schema for the tables: default the pipeline's name in `ferry sync`, `main` in pipes.
    #[serde(default, alias = "default_target_schema")]
    pub schema: Option<String>,
    /// Rows buffered per stream before they are appended to staging.
    #[serde(default = "default_batch_rows")]
    pub batch_size_rows: u64,
    /// Bytes (of record JSON) buffered per stream before they are appended to staging.
    #[serde(default = "default_batch_bytes")]
    pub batch_size_bytes: u64,
    /// Add the `_sdc_*` metadata columns.
    #[serde(default)]
    pub add_metadata_columns: bool,
    /// Delete rows flagged `_sdc_deleted_at` and rows of replaced versions.
    #[serde(default)]
    pub hard_delete: bool,
    /// Refuse streams without key properties.
    #[serde(default = "default_true")]
    pub primary_key_required: bool,
    /// Flatten nested objects into `parent__child` columns down to this depth.
    #[serde(default)]
    pub data_flattening_max_level: u32,
    /// Objects and arrays as `json` (default) or `struct` (STRUCT/LIST).
    #[serde(default)]
    pub nested: Nested,
    /// The table (in the target schema) that keeps the pipeline state with the data; `null` to
    /// keep it only in the state file.
    #[serde(default = "default_state_table")]
    pub state_table: Option<String>,
    /// DuckDB's `threads` setting.
    #[serde(default)]
    pub threads: Option<u32>,
    /// DuckDB's `memory_limit` setting (default 256MB: its buffer pool spills beyond it, though
    /// DuckDB's other memory grows with the table); `null` for DuckDB's own default (80% of RAM).
    #[serde(default = "default_memory_limit")]
    pub memory_limit: Option<String>,
}

impl DuckDbTargetConfig {
    /// Parses the config.
    ///
    /// # Errors
    /// A config error naming the bad key.
    pub fn from_value(config: &Value) -> anyhow::Result<DuckDbTargetConfig> {
        serde_json::from_value(config.clone())
            .map_err(|e| crate::error::config_error(format!("target duckdb config: {e}")))
    }
}

/// The `--about` of the DuckDB target.
pub fn about() -> About {
    About {
        name: "duckdb".into(),
        description: "Loads streams into a DuckDB database file: Arrow batches appended to staging, merged by key, one transaction per commit.",
        capabilities: vec!["about", "schema-evolution", "activate-version", "hard-delete", "state-table"],
        settings: vec![
            ConfigKey { name: "path", ty: "string", required: false, description: "The database file (default `warehouse.duckdb`, beside ferry.yml in `ferry sync`)." },
            ConfigKey { name: "schema", ty: "string", required: false, description: "Schema for the tables (default: the pipeline's name; `main` in pipes). Alias `default_target_schema`." },
            ConfigKey { name: "batch_size_rows", ty: "integer", required: false, description: "Rows per stream buffered before they are appended to staging (default 20000)." },
            ConfigKey { name: "batch_size_bytes", ty: "integer", required: false, description: "Bytes of records per stream buffered before they are appended (default 64 MiB)." },
            ConfigKey { name: "add_metadata_columns", ty: "boolean", required: false, description: "Add the `_sdc_*` metadata columns (default false)." },
            ConfigKey { name: "hard_delete", ty: "boolean", required: false, description: "Delete rows flagged `_sdc_deleted_at` and rows of replaced versions (default false)." },
            ConfigKey { name: "primary_key_required", ty: "boolean", required: false, description: "Refuse streams without key properties (default true)." },
            ConfigKey { name: "data_flattening_max_level", ty: "integer", required: false, description: "Flatten nested objects into `parent__child` columns down to this depth (default 0)." },
            ConfigKey { name: "nested", ty: "string", required: false, description: "Objects and arrays as `json` (default) or `struct` (STRUCT/LIST typed from the schema)." },
            ConfigKey { name: "state_table", ty: "string", required: false, description: "Table keeping the pipeline state with the data (default `_ferry_state`; null: off)." },
            ConfigKey { name: "threads", ty: "integer", required: false, description: "DuckDB's `threads` setting for the load." },
            ConfigKey { name: "memory_limit", ty: "string", required: false, description: "DuckDB's `memory_limit` for the load (default `64MB`: DuckDB's buffer pool spills beyond it; the whole process stays under about 200 MB however long the table; null: DuckDB's default, 80% of RAM)." },
        ],
    }
}
