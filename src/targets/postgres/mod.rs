//! Target `postgres`: a table per stream, typed from the shared schema layer, loaded with COPY
//! into a staging table and merged in one transaction per commit.
//!
//! Each commit is one transaction: schema changes, every staged row (deduplicated by key and
//! upserted, or appended), ACTIVATE_VERSION deletions and, with `state_table`, the pipeline state
//! itself. Nothing of a batch is visible until it commits; a failure rolls all of it back.
//! Config keys follow pipelinewise-target-postgres so its `config.json` keeps working.

mod load;

pub use load::PostgresTarget;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::about::{About, ConfigKey};

const fn default_port() -> u16 {
    5432
}
fn default_schema() -> String {
    "public".into()
}
// A batch is encoded while the one before it loads, so two are held: 30,000 rows keep a
// 10-column stream's sync under 100 MB and were as fast as 100,000 (docs/BENCHMARKS.md).
const fn default_batch_rows() -> u64 {
    30_000
}
const fn default_batch_bytes() -> u64 {
    16 << 20
}
const fn default_true() -> bool {
    true
}

/// The target's config (pipelinewise-target-postgres' keys, plus `url`, `sslmode`,
/// `state_table`, `batch_size_bytes` and `use_double_for_number`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTargetConfig {
    /// Server host.
    #[serde(default)]
    pub host: Option<String>,
    /// Server port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// User.
    #[serde(default)]
    pub user: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<String>,
    /// Database.
    #[serde(default)]
    pub dbname: Option<String>,
    /// A `postgres://` URL instead of the fields above.
    #[serde(default)]
    pub url: Option<String>,
    /// `disable`, `allow`, `prefer` (default), `require`, `verify-ca` or `verify-full`.
    #[serde(default)]
    pub sslmode: Option<String>,
    /// PEM file of the certificate authority for `verify-ca`/`verify-full` (default: the
    /// public web roots).
    #[serde(default)]
    pub sslrootcert: Option<String>,
    /// Schema for tables (created if missing).
    #[serde(default = "default_schema")]
    pub default_target_schema: String,
    /// Per source schema: `{"public": {"target_schema": "raw"}}`.
    #[serde(default)]
    pub schema_mapping: Option<Map<String, Value>>,
    /// Rows buffered per stream before they are copied into staging.
    #[serde(default = "default_batch_rows")]
    pub batch_size_rows: u64,
    /// Bytes buffered per stream before they are copied into staging.
    #[serde(default = "default_batch_bytes")]
    pub batch_size_bytes: u64,
    /// Delete rows whose `_sdc_deleted_at` is set (and rows of old versions) instead of keeping
    /// them flagged.
    #[serde(default)]
    pub hard_delete: bool,
    /// Add `_sdc_extracted_at`, `_sdc_received_at`, `_sdc_batched_at`, `_sdc_deleted_at`,
    /// `_sdc_table_version`.
    #[serde(default)]
    pub add_metadata_columns: bool,
    /// Refuse streams without key properties.
    #[serde(default = "default_true")]
    pub primary_key_required: bool,
    /// Accepted for compatibility; ferry validates every record against its schema.
    #[serde(default)]
    pub validate_records: Option<bool>,
    /// Flatten nested objects into `parent__child` columns down to this depth (0: objects and
    /// arrays as jsonb).
    #[serde(default)]
    pub data_flattening_max_level: u32,
    /// Map `number` to double precision instead of numeric.
    #[serde(default)]
    pub use_double_for_number: bool,
    /// Keep the pipeline state in this table, committed with the data.
    #[serde(default)]
    pub state_table: Option<String>,
    /// Most connections opened (the main one included; default 16).
    #[serde(default)]
    pub max_parallelism: Option<u32>,
    /// PipelineWise's meaning: 0 (default) a connection per keyed stream up to
    /// `max_parallelism`, -1 one per CPU core, N at most N.
    #[serde(default)]
    pub parallelism: Option<i32>,
    /// Accepted for compatibility and ignored.
    #[serde(default)]
    pub flush_all_streams: Option<bool>,
    /// Accepted for compatibility and ignored.
    #[serde(default)]
    pub temp_dir: Option<String>,
}

/// The `--about` of the Postgres target.
pub fn about() -> About {
    About {
        name: "postgres".into(),
        description: "Loads streams into PostgreSQL tables: COPY into staging, merge by key, one transaction per commit.",
        capabilities: vec!["about", "schema-evolution", "activate-version", "hard-delete", "state-table"],
        settings: vec![
            ConfigKey { name: "host, port, user, password, dbname", ty: "string", required: true, description: "Connection (or `url`). The password is never logged." },
            ConfigKey { name: "url", ty: "string", required: false, description: "`postgres://user:pass@host:port/db` instead of the fields." },
            ConfigKey { name: "sslmode", ty: "string", required: false, description: "`disable`, `allow`, `prefer` (default), `require`, `verify-ca`, `verify-full`; with `sslrootcert` (PEM) for the last two." },
            ConfigKey { name: "default_target_schema", ty: "string", required: false, description: "Schema for the tables (default `public`), created if missing." },
            ConfigKey { name: "schema_mapping", ty: "object", required: false, description: "`{\"<source schema>\": {\"target_schema\": \"<schema>\"}}` for streams named `<schema>-<table>`." },
            ConfigKey { name: "batch_size_rows", ty: "integer", required: false, description: "Rows per stream buffered before COPY into staging (default 30000)." },
            ConfigKey { name: "batch_size_bytes", ty: "integer", required: false, description: "Bytes per stream buffered before COPY into staging (default 16 MiB)." },
            ConfigKey { name: "hard_delete", ty: "boolean", required: false, description: "Delete rows flagged `_sdc_deleted_at` and rows of replaced versions (default false: keep them flagged)." },
            ConfigKey { name: "add_metadata_columns", ty: "boolean", required: false, description: "Add the `_sdc_*` metadata columns (default false)." },
            ConfigKey { name: "primary_key_required", ty: "boolean", required: false, description: "Refuse streams without key properties (default true)." },
            ConfigKey { name: "use_double_for_number", ty: "boolean", required: false, description: "`number` as double precision instead of numeric (default false)." },
            ConfigKey { name: "state_table", ty: "string", required: false, description: "Keep the pipeline state in this table, in the same transaction as the data." },
            ConfigKey { name: "max_parallelism, parallelism", ty: "integer", required: false, description: "Keyed streams load on connections of their own, at most `max_parallelism` (16) connections; `parallelism` as PipelineWise (0: one per stream, -1: one per core)." },
        ],
    }
}
