//! The `syncs:` section of ferry.yml (and `warehouse:`), read and checked before anything
//! connects: what a reverse-ETL sync reads, how it maps columns to destination fields, and
//! where it sends them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::config_error;
use crate::transform::project::{AdapterKind, Target};

/// How a sync treats the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create or update by key.
    Upsert,
    /// Only rows whose key was never delivered.
    Insert,
    /// Only update (the destination may reject keys it does not have).
    Update,
    /// Upsert, and remove what left the query.
    Mirror,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "upsert" => Mode::Upsert,
            "insert" => Mode::Insert,
            "update" => Mode::Update,
            "mirror" => Mode::Mirror,
            _ => return None,
        })
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Upsert => "upsert",
            Mode::Insert => "insert",
            Mode::Update => "update",
            Mode::Mirror => "mirror",
        }
    }
}

/// A destination field's value: a source column or a constant.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldSource {
    /// A column of the source query.
    Column(String),
    /// The same value for every row.
    Const(Value),
}

/// Where rows go.
#[derive(Debug, Clone)]
pub enum DestSpec {
    /// An HTTP API described by a definition file.
    Http {
        /// The definition: shipped (`name: hubspot`) or a file (resolved).
        file: crate::definitions::Source,
        /// Its config (base_url, tokens).
        config: Value,
    },
    /// A Postgres table in another database.
    Postgres(Value),
    /// Redis.
    Redis(Value),
    /// A Singer target: built-in (`target: duckdb`) or external (`command: target-x`).
    Singer(super::singer::SingerDest),
}

/// One sync.
#[derive(Debug, Clone)]
pub struct SyncSpec {
    /// Its name.
    pub name: String,
    /// The SQL that gives the rows (a `table:` or `model:` becomes `select * from …`).
    pub query: String,
    /// The warehouse to read from.
    pub warehouse: Target,
    /// The key column of the source.
    pub primary_key: String,
    /// Destination field → value, in order.
    pub mapping: Vec<(String, FieldSource)>,
    /// Mode.
    pub mode: Mode,
    /// Destination.
    pub destination: DestSpec,
    /// Rows per delivery batch (default: the destination's).
    pub batch_size: Option<usize>,
    /// The warehouse schema holding the sync's snapshot table (default `_ferry`).
    pub snapshot_schema: String,
    /// `snapshot: state`: the snapshot lives in this JSON file instead of the warehouse (for
    /// small syncs, or a warehouse ferry may not write to); `None`: in the warehouse.
    pub state_file: Option<PathBuf>,
}

/// A `warehouse:` block as a connection target (the same one `ferry transform` uses).
///
/// # Errors
/// A config error for an unknown warehouse or missing keys.
pub fn warehouse_target(v: &Value, dir: &Path, what: &str) -> anyhow::Result<Target> {
    let name = v.get("name").and_then(Value::as_str).unwrap_or("");
    let config = v
        .get("config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let s = |k: &str| {
        config
            .get(k)
            .and_then(crate::transform::project::scalar_string)
    };
    match name {
        "duckdb" => {
            let path = dir.join(s("path").unwrap_or_else(|| "warehouse.duckdb".into()));
            let database = path
                .file_stem()
                .map(|x| x.to_string_lossy().into_owned())
                .unwrap_or_else(|| "warehouse".into());
            Ok(Target {
                profile_name: "ferry".into(),
                name: "reverse".into(),
                kind: AdapterKind::DuckDb,
                schema: s("schema").unwrap_or_else(|| "main".into()),
                database,
                threads: 1,
                fields: config,
                path: Some(path),
            })
        }
        "postgres" => {
            let database = s("dbname")
                .or_else(|| s("database"))
                .unwrap_or_else(|| "postgres".into());
            let mut fields = config.clone();
            fields.insert("dbname".into(), Value::from(database.clone()));
            Ok(Target {
                profile_name: "ferry".into(),
                name: "reverse".into(),
                kind: AdapterKind::Postgres,
                schema: s("default_target_schema")
                    .or_else(|| s("schema"))
                    .unwrap_or_else(|| "public".into()),
                database,
                threads: 1,
                fields,
                path: None,
            })
        }
        other => Err(config_error(format!(
            "{what}: warehouse {other:?} is not one ferry reads from; use `name: duckdb` or `name: postgres` with their config"
        ))),
    }
}

fn ident_ok(s: &str) -> bool {
    !s.is_empty()
}

/// Reads every sync of the project file.
///
/// # Errors
/// A config error naming the sync and the key at fault.
pub fn read_syncs(
    syncs: Option<&Value>,
    warehouse: Option<&Value>,
    dir: &Path,
    models: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<BTreeMap<String, SyncSpec>> {
    let mut out = BTreeMap::new();
    let Some(Value::Object(all)) = syncs else {
        return Ok(out);
    };
    for (name, v) in all {
        let at = format!("syncs.{name}");
        let o = v
            .as_object()
            .ok_or_else(|| config_error(format!("{at}: expected a mapping")))?;
        for k in o.keys() {
            if !matches!(
                k.as_str(),
                "source"
                    | "primary_key"
                    | "mapping"
                    | "mode"
                    | "destination"
                    | "batch_size"
                    | "snapshot_schema"
                    | "snapshot"
                    | "state"
            ) {
                return Err(config_error(format!(
                    "{at}: unknown key {k:?} (keys: source, primary_key, mapping, mode, destination, batch_size, snapshot, snapshot_schema, state)"
                )));
            }
        }
        let state_file = match o.get("snapshot").map(|v| v.as_str()) {
            None | Some(Some("warehouse")) => None,
            Some(Some("state")) => Some(dir.join(
                o.get("state")
                    .and_then(Value::as_str)
                    .map_or_else(|| PathBuf::from("state").join(format!("reverse-{name}.json")), PathBuf::from),
            )),
            Some(other) => {
                return Err(config_error(format!(
                    "{at}: snapshot {other:?}: use `warehouse` (a table in the warehouse, the default) or `state` (a JSON file, for small syncs)"
                )))
            }
        };
        let source = o.get("source").and_then(Value::as_object).ok_or_else(|| {
            config_error(format!(
                "{at}: `source` (query, table or model) is required"
            ))
        })?;
        let query = match (
            source.get("query").and_then(Value::as_str),
            source.get("table").and_then(Value::as_str),
            source.get("model").and_then(Value::as_str),
        ) {
            (Some(q), None, None) => q.trim().trim_end_matches(';').to_string(),
            (None, Some(t), None) => {
                let parts: Vec<String> = t.split('.').map(crate::sql::quote_ident).collect();
                format!("select * from {}", parts.join("."))
            }
            (None, None, Some(m)) => {
                let rel = models(m).ok_or_else(|| {
                    config_error(format!(
                        "{at}: source.model {m:?} is not a model of the transform project (ferry.yml `transform:`)"
                    ))
                })?;
                format!("select * from {rel}")
            }
            _ => {
                return Err(config_error(format!(
                    "{at}: source needs exactly one of `query`, `table` or `model`"
                )))
            }
        };
        let wh = source
            .get("warehouse")
            .or(warehouse)
            .ok_or_else(|| {
                config_error(format!(
                    "{at}: no warehouse to read from: set `warehouse:` at the top of ferry.yml or source.warehouse"
                ))
            })?;
        let warehouse = warehouse_target(wh, dir, &at)?;
        let primary_key = o
            .get("primary_key")
            .and_then(Value::as_str)
            .filter(|s| ident_ok(s))
            .ok_or_else(|| {
                config_error(format!("{at}: `primary_key` (a source column) is required"))
            })?
            .to_string();
        let mut mapping = Vec::new();
        match o.get("mapping") {
            Some(Value::Object(m)) => {
                for (field, src) in m {
                    let fs = match src {
                        Value::String(c) => FieldSource::Column(c.clone()),
                        Value::Object(c) if c.contains_key("const") => {
                            FieldSource::Const(c["const"].clone())
                        }
                        other => {
                            return Err(config_error(format!(
                                "{at}: mapping.{field}: write a source column name or {{const: value}}, not {other}"
                            )))
                        }
                    };
                    mapping.push((field.clone(), fs));
                }
            }
            None => {}
            Some(other) => {
                return Err(config_error(format!(
                    "{at}: mapping must be `destination_field: source_column`, not {other}"
                )))
            }
        }
        let mode_s = o.get("mode").and_then(Value::as_str).unwrap_or("upsert");
        let mode = Mode::parse(mode_s).ok_or_else(|| {
            config_error(format!(
                "{at}: mode {mode_s:?} is not one of upsert, insert, update, mirror"
            ))
        })?;
        let d = o
            .get("destination")
            .and_then(Value::as_object)
            .ok_or_else(|| config_error(format!("{at}: `destination` is required")))?;
        let config = d
            .get("config")
            .cloned()
            .unwrap_or(Value::Object(Map::new()));
        let destination = if let Some(t) = d.get("target").and_then(Value::as_str) {
            DestSpec::Singer(super::singer::SingerDest::Builtin(t.to_string(), config))
        } else if let Some(program) = d.get("command").and_then(Value::as_str) {
            let args = d
                .get("args")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            DestSpec::Singer(super::singer::SingerDest::Command(
                crate::runner::ExternalTarget {
                    program: program.to_string(),
                    args,
                    config,
                },
            ))
        } else {
            match d.get("name").and_then(Value::as_str) {
            Some("postgres") => DestSpec::Postgres(config),
            Some("redis") => DestSpec::Redis(config),
            Some(f) if crate::definitions::is_path(f) => DestSpec::Http {
                file: crate::definitions::Source::File(dir.join(f)),
                config,
            },
            Some(n) if crate::definitions::Source::destination(n).is_some() => DestSpec::Http {
                file: crate::definitions::Source::destination(n)
                    .ok_or_else(|| config_error(format!("{at}: destination {n:?}")))?,
                config,
            },
            other => {
                return Err(config_error(format!(
                    "{at}: destination {other:?}: use a shipped definition (name: hubspot, customerio or webhook), a definition file (name: my_api.yml), name: postgres, name: redis, target: <a built-in ferry target> or command: <a Singer target>"
                )))
            }
            }
        };
        let batch_size = o
            .get("batch_size")
            .and_then(Value::as_u64)
            .map(|n| n.max(1) as usize);
        out.insert(
            name.clone(),
            SyncSpec {
                name: name.clone(),
                query,
                warehouse,
                primary_key,
                mapping,
                mode,
                destination,
                batch_size,
                snapshot_schema: o
                    .get("snapshot_schema")
                    .and_then(Value::as_str)
                    .unwrap_or(super::changes::SNAPSHOT_SCHEMA)
                    .to_string(),
                state_file,
            },
        );
    }
    Ok(out)
}
