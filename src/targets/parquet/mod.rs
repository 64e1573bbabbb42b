//! Target `parquet`: a lake of Parquet files, a folder per stream, with a manifest that lists
//! exactly the files each commit made durable.
//!
//! Files are written under a hidden temporary name; at commit the manifest (the table of
//! contents: files, row counts, schemas, replication-key ranges, table versions, and the
//! pipeline state) is replaced atomically first, then the files are renamed into place. A crash
//! before the manifest leaves only hidden temporary files, removed by the next run; a crash
//! after it is rolled forward by the next run. Readers that go through the manifest, or skip
//! hidden files as Parquet readers do, never see a half-written or uncommitted file.

mod write;

use serde::Deserialize;
use serde_json::Value;

pub use write::ParquetTarget;

use crate::about::{About, ConfigKey};

fn default_path() -> String {
    "lake".into()
}
const fn default_row_group_rows() -> u64 {
    122_880
}
const fn default_file_rows() -> u64 {
    10_000_000
}
const fn default_file_bytes() -> u64 {
    256 << 20
}

/// Parquet compression codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd (level 3).
    #[default]
    Zstd,
    /// Snappy.
    Snappy,
    /// None.
    None,
}

/// How objects and arrays are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Nested {
    /// STRUCT and LIST columns typed from the JSON Schema (JSON text where it says too little).
    #[default]
    Struct,
    /// JSON text columns.
    Json,
}

/// `partition_by`: one property for every stream that has it, or one per stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PartitionBy {
    /// The same property name for all streams.
    All(String),
    /// Per stream name.
    PerStream(std::collections::BTreeMap<String, String>),
}

impl PartitionBy {
    fn for_stream(&self, stream: &str) -> Option<&str> {
        match self {
            PartitionBy::All(p) => Some(p),
            PartitionBy::PerStream(m) => m.get(stream).map(String::as_str),
        }
    }
}

/// The target's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetTargetConfig {
    /// The base folder (relative to the project folder in `ferry sync`).
    #[serde(default = "default_path", alias = "destination_path")]
    pub path: String,
    /// `zstd` (default), `snappy` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Objects and arrays as `struct` (default: STRUCT/LIST) or `json` (text).
    #[serde(default)]
    pub nested: Nested,
    /// Rows per row group.
    #[serde(default = "default_row_group_rows", alias = "batch_size_rows")]
    pub row_group_rows: u64,
    /// A file is closed and a new one started after this many rows.
    #[serde(default = "default_file_rows")]
    pub file_max_rows: u64,
    /// A file is closed and a new one started after about this many bytes.
    #[serde(default = "default_file_bytes")]
    pub file_max_bytes: u64,
    /// Hive-style partitions by the day of a date or date-time property: a property name for
    /// every stream that has it, or `{stream: property}`.
    #[serde(default)]
    pub partition_by: Option<PartitionBy>,
    /// Add the `_sdc_*` metadata columns.
    #[serde(default)]
    pub add_metadata_columns: bool,
    /// Flatten nested objects into `parent__child` columns down to this depth.
    #[serde(default)]
    pub data_flattening_max_level: u32,
    /// Refuse streams without key properties.
    #[serde(default)]
    pub primary_key_required: bool,
}

impl ParquetTargetConfig {
    /// Parses the config.
    ///
    /// # Errors
    /// A config error naming the bad key.
    pub fn from_value(config: &Value) -> anyhow::Result<ParquetTargetConfig> {
        serde_json::from_value(config.clone())
            .map_err(|e| crate::error::config_error(format!("target parquet config: {e}")))
    }
}

/// The `--about` of the Parquet target.
pub fn about() -> About {
    About {
        name: "parquet".into(),
        description: "Writes streams as Parquet files, a folder per stream, with a manifest of exactly what each commit made durable.",
        capabilities: vec!["about", "schema-evolution", "activate-version", "state-in-manifest"],
        settings: vec![
            ConfigKey { name: "path", ty: "string", required: false, description: "Base folder (default `lake`); a folder per stream under it, `_ferry_manifest.json` at its root." },
            ConfigKey { name: "compression", ty: "string", required: false, description: "`zstd` (default), `snappy` or `none`." },
            ConfigKey { name: "nested", ty: "string", required: false, description: "Objects and arrays as `struct` (default; STRUCT/LIST) or `json` (text)." },
            ConfigKey { name: "row_group_rows", ty: "integer", required: false, description: "Rows per row group (default 122880); records reach the encoder in slices of 16,384 rows, so a row group is never held whole as Arrow arrays." },
            ConfigKey { name: "file_max_rows", ty: "integer", required: false, description: "Start a new file after this many rows (default 10000000)." },
            ConfigKey { name: "file_max_bytes", ty: "integer", required: false, description: "Start a new file after about this many bytes (default 256 MiB)." },
            ConfigKey { name: "partition_by", ty: "string|object", required: false, description: "Hive-style day partitions (`<column>_date=YYYY-MM-DD/`) by a date or date-time property; a name, or `{stream: property}`." },
            ConfigKey { name: "add_metadata_columns", ty: "boolean", required: false, description: "Add the `_sdc_*` metadata columns (default false)." },
            ConfigKey { name: "data_flattening_max_level", ty: "integer", required: false, description: "Flatten nested objects into `parent__child` columns down to this depth (default 0)." },
            ConfigKey { name: "primary_key_required", ty: "boolean", required: false, description: "Refuse streams without key properties (default false)." },
        ],
    }
}
