//! Taps `csv` and `jsonl`: read files, folders or globs, one stream per configured entity, as
//! MeltanoLabs' tap-csv is configured (`files: [{entity, path, keys, delimiter}]`).
//!
//! Schemas come from the catalog, from the entity's `schema`, or are inferred during discovery.
//! Replication is incremental by file: files are read in (modification time, path) order and
//! the bookmark is the last file read (and the record offset within it, so an interrupted run
//! resumes mid-file). `FULL_TABLE` in the catalog reads every file on every run.

mod read;
mod sync;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::about::{About, ConfigKey};
use crate::error::config_error;
use crate::schema::infer::RecordInferrer;
use crate::singer::catalog::keys;
use crate::singer::{state, Catalog, CatalogStream};
use crate::taps::PlanStep;

pub use read::{push_json_str, RowReader};

/// The file format a tap reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma (or other delimiter) separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }

    fn extensions(self) -> &'static [&'static str] {
        match self {
            Format::Csv => &["csv", "tsv", "txt"],
            Format::Jsonl => &["jsonl", "ndjson", "json"],
        }
    }
}

const fn default_state_every_rows() -> u64 {
    10_000
}

const fn default_infer_max_rows() -> u64 {
    100_000
}

/// The tap's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTapConfig {
    /// The entities to read.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// A JSON file holding the `files` list (tap-csv's `csv_files_definition`).
    #[serde(default)]
    pub csv_files_definition: Option<PathBuf>,
    /// Emit a STATE at least every this many records within a file.
    #[serde(default = "default_state_every_rows")]
    pub state_every_rows: u64,
    /// Rows per entity read to infer a schema during discovery.
    #[serde(default = "default_infer_max_rows")]
    pub infer_max_rows: u64,
    /// Add `_sdc_source_file` and `_sdc_source_lineno` to every record.
    #[serde(default)]
    pub add_metadata_columns: bool,
}

/// One entity (stream).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// The stream name.
    pub entity: String,
    /// A file, a folder (every file with the format's extension) or a glob.
    pub path: String,
    /// Key properties.
    #[serde(default)]
    pub keys: Vec<String>,
    /// CSV field delimiter (default `,`).
    #[serde(default)]
    pub delimiter: Option<String>,
    /// CSV quote character (default `"`).
    #[serde(default)]
    pub quotechar: Option<String>,
    /// Only `utf-8` is supported; given for tap-csv compatibility.
    #[serde(default)]
    pub encoding: Option<String>,
    /// A JSON Schema for the records; when absent the schema is inferred.
    #[serde(default)]
    pub schema: Option<Value>,
}

/// The `csv`/`jsonl` tap.
#[derive(Debug)]
pub struct FileTap {
    format: Format,
    config: FileTapConfig,
}

/// A file to read, with the key it is ordered and bookmarked by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceFile {
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// The path as found.
    pub path: String,
}

/// The `--about` of the file taps.
pub fn about(format: Format) -> About {
    About {
        name: format.name().into(),
        description: match format {
            Format::Csv => "Reads CSV files, folders or globs; one stream per entity; incremental by file.",
            Format::Jsonl => "Reads JSON-lines files, folders or globs; one stream per entity; incremental by file.",
        },
        capabilities: vec!["catalog", "discover", "state", "about"],
        settings: vec![
            ConfigKey { name: "files", ty: "array", required: true, description: "Entities: `{entity, path, keys, delimiter, quotechar, schema}`; `path` is a file, a folder or a glob." },
            ConfigKey { name: "csv_files_definition", ty: "string", required: false, description: "A JSON file holding the `files` list instead." },
            ConfigKey { name: "state_every_rows", ty: "integer", required: false, description: "Emit a STATE at least every N records within a file (default 10000)." },
            ConfigKey { name: "infer_max_rows", ty: "integer", required: false, description: "Rows per entity read to infer a schema (default 100000)." },
            ConfigKey { name: "add_metadata_columns", ty: "boolean", required: false, description: "Add `_sdc_source_file` and `_sdc_source_lineno` to records (default false)." },
        ],
    }
}

/// Column added with `add_metadata_columns`: the file a record came from.
pub const SOURCE_FILE: &str = "_sdc_source_file";
/// Column added with `add_metadata_columns`: the line (CSV: record) number in that file.
pub const SOURCE_LINENO: &str = "_sdc_source_lineno";

impl FileTap {
    /// Parses the config.
    ///
    /// # Errors
    /// A config error naming what is wrong.
    pub fn new(format: Format, config: &Value) -> anyhow::Result<FileTap> {
        let mut cfg: FileTapConfig = serde_json::from_value(config.clone())
            .map_err(|e| config_error(format!("tap {} config: {e}", format.name())))?;
        if let Some(def) = &cfg.csv_files_definition {
            let text = std::fs::read_to_string(def).map_err(|e| {
                config_error(format!(
                    "cannot read csv_files_definition {}: {e}",
                    def.display()
                ))
            })?;
            let more: Vec<FileSpec> = serde_json::from_str(&text).map_err(|e| {
                config_error(format!("csv_files_definition {}: {e}", def.display()))
            })?;
            cfg.files.extend(more);
        }
        if cfg.files.is_empty() {
            return Err(config_error(format!(
                "tap {} config: `files` is empty; list entities as {{\"entity\": \"orders\", \"path\": \"data/orders*.{}\", \"keys\": [\"id\"]}}",
                format.name(),
                format.extensions()[0]
            )));
        }
        for f in &cfg.files {
            if let Some(enc) = &f.encoding {
                if !enc.eq_ignore_ascii_case("utf-8") && !enc.eq_ignore_ascii_case("utf8") {
                    return Err(config_error(format!(
                        "entity {:?}: encoding {enc:?} is not supported; convert the file to UTF-8",
                        f.entity
                    )));
                }
            }
            for (what, v) in [("delimiter", &f.delimiter), ("quotechar", &f.quotechar)] {
                if let Some(v) = v {
                    if v.len() != 1 {
                        return Err(config_error(format!(
                            "entity {:?}: {what} must be a single ASCII character, got {v:?}",
                            f.entity
                        )));
                    }
                }
            }
        }
        Ok(FileTap {
            format,
            config: cfg,
        })
    }

    fn spec(&self, stream: &str) -> anyhow::Result<&FileSpec> {
        self.config.files.iter().find(|f| f.entity == stream).ok_or_else(|| {
            config_error(format!(
                "the catalog selects stream {stream:?} but the tap config has no entity of that name (entities: {})",
                self.config.files.iter().map(|f| f.entity.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Lists an entity's files in (mtime, path) order.
    ///
    /// # Errors
    /// When the path or glob is invalid or a file cannot be inspected.
    pub fn list_files(&self, spec: &FileSpec) -> anyhow::Result<Vec<SourceFile>> {
        let p = Path::new(&spec.path);
        let mut paths: Vec<PathBuf> = Vec::new();
        if p.is_dir() {
            for entry in
                std::fs::read_dir(p).with_context(|| format!("cannot list {}", p.display()))?
            {
                let path = entry?.path();
                let ext_ok = path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    self.format
                        .extensions()
                        .iter()
                        .any(|x| x.eq_ignore_ascii_case(e))
                });
                if path.is_file() && ext_ok {
                    paths.push(path);
                }
            }
        } else if p.is_file() {
            paths.push(p.to_owned());
        } else {
            let pattern = glob::glob(&spec.path).map_err(|e| {
                config_error(format!(
                    "entity {:?}: bad glob {:?}: {e}",
                    spec.entity, spec.path
                ))
            })?;
            for entry in pattern {
                let path = entry?;
                if path.is_file() {
                    paths.push(path);
                }
            }
        }
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("cannot inspect {}", path.display()))?;
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let mtime_ns = match mtime.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => d.as_nanos() as i128,
                Err(e) => -(e.duration().as_nanos() as i128),
            };
            out.push(SourceFile {
                mtime_ns,
                path: path.to_string_lossy().into_owned(),
            });
        }
        out.sort();
        Ok(out)
    }

    fn discover_blocking(&self) -> anyhow::Result<Catalog> {
        let mut catalog = Catalog::default();
        for spec in &self.config.files {
            let mut schema = match &spec.schema {
                Some(s) => s.clone(),
                None => self.infer(spec)?,
            };
            if self.config.add_metadata_columns {
                if let Some(Value::Object(props)) = schema.get_mut("properties") {
                    props.insert(SOURCE_FILE.into(), json!({"type": "string"}));
                    props.insert(SOURCE_LINENO.into(), json!({"type": "integer"}));
                }
            }
            let mut meta = Map::new();
            meta.insert(keys::SELECTED_BY_DEFAULT.into(), json!(true));
            meta.insert(keys::TABLE_KEY_PROPERTIES.into(), json!(spec.keys));
            meta.insert(keys::VALID_REPLICATION_KEYS.into(), json!([]));
            let mut stream = CatalogStream::new(&spec.entity, schema.clone(), meta);
            if let Some(Value::Object(props)) = schema.get("properties") {
                for name in props.keys() {
                    let inclusion = if spec.keys.contains(name) {
                        "automatic"
                    } else {
                        "available"
                    };
                    stream.set_metadata(&["properties", name], keys::INCLUSION, json!(inclusion));
                }
            }
            catalog.streams.push(stream);
        }
        Ok(catalog)
    }

    fn infer(&self, spec: &FileSpec) -> anyhow::Result<Value> {
        let files = self.list_files(spec)?;
        if files.is_empty() {
            return Err(config_error(format!(
                "entity {:?}: no files match {:?}, so no schema can be inferred; add a file or give the entity a `schema`",
                spec.entity, spec.path
            )));
        }
        let mut inf = RecordInferrer::default();
        'files: for f in &files {
            let mut reader = RowReader::open(self.format, spec, &f.path)?;
            if let Some(header) = reader.header() {
                for h in header {
                    inf.declare(h);
                }
            }
            while inf.records() < self.config.infer_max_rows {
                if !reader.infer_next(&mut inf)? {
                    continue 'files;
                }
            }
            break;
        }
        for k in &spec.keys {
            let known = inf
                .schema(&[])
                .pointer(&format!("/properties/{k}"))
                .is_some();
            if !known {
                return Err(config_error(format!(
                    "entity {:?}: key property {k:?} is not a column of {}",
                    spec.entity, spec.path
                )));
            }
        }
        Ok(inf.schema(&spec.keys))
    }

    /// Discovers one stream per entity.
    ///
    /// # Errors
    /// When no file matches an entity without a schema, or a file cannot be read.
    pub async fn discover(&self) -> anyhow::Result<Catalog> {
        // File reading is blocking work; discovery is rare and bounded by infer_max_rows.
        tokio::task::block_in_place(|| self.discover_blocking())
    }

    /// What a run would read.
    ///
    /// # Errors
    /// When the files cannot be listed.
    pub fn plan(&self, catalog: &Catalog, st: &Value) -> anyhow::Result<Vec<PlanStep>> {
        let mut out = Vec::new();
        for s in catalog.selected() {
            let spec = self.spec(s.tap_stream_id())?;
            let full = s.replication_method() == Some("FULL_TABLE");
            let mark = state::bookmark(st, s.tap_stream_id()).cloned();
            let files = self.list_files(spec)?;
            let after = if full {
                None
            } else {
                mark.as_ref().and_then(sync::Bookmark::from_value)
            };
            let pending: Vec<&SourceFile> = files
                .iter()
                .filter(|f| after.as_ref().is_none_or(|b| b.wants(f)))
                .collect();
            out.push(PlanStep {
                stream: s.tap_stream_id().to_owned(),
                method: if full {
                    "FULL_TABLE".into()
                } else {
                    "INCREMENTAL (by file)".into()
                },
                bookmark: mark,
                detail: format!(
                    "{} of {} file(s) to read{}",
                    pending.len(),
                    files.len(),
                    pending
                        .first()
                        .map(|f| format!(", from {}", f.path))
                        .unwrap_or_default()
                ),
            });
        }
        Ok(out)
    }
}
