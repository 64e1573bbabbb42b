//! Any Singer target as a reverse-ETL destination: ferry's built-in ones (`target: duckdb`,
//! `postgres`, `jsonl`, …) or an external executable (`command: target-x`). The change set is
//! written as Singer messages (SCHEMA, RECORDs, a STATE after every batch; removals as records
//! with `_sdc_deleted_at`) into a spooled file, then the same runner as `ferry sync` moves them
//! into the target. Rows up to the last STATE the target committed count as delivered.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::changes::{self, Op};
use super::spec::{FieldSource, Mode, SyncSpec};
use crate::runner::{self, ExternalTarget, RunOptions, Sink, Source, StateOut};
use crate::state_store::StateStore;
use crate::transform::adapter::Conn;

/// Where a Singer destination is.
#[derive(Debug, Clone)]
pub enum SingerDest {
    /// A built-in target by name, with its config.
    Builtin(String, Value),
    /// An external Singer target.
    Command(ExternalTarget),
}

/// The field that carries the key (the one mapped from `primary_key`, else a field of that name).
pub fn key_field(spec: &SyncSpec) -> String {
    spec.mapping
        .iter()
        .find(|(_, s)| *s == FieldSource::Column(spec.primary_key.clone()))
        .map_or_else(|| spec.primary_key.clone(), |(f, _)| f.clone())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        _ => "string",
    }
}

/// The JSON Schema of a warehouse column type, so the target's table is typed the same on
/// every run, whatever rows happen to change.
fn schema_of(sql_type: &str) -> Value {
    let t = sql_type.to_ascii_lowercase();
    let base = t.split(['(', ' ']).next().unwrap_or_default();
    match base {
        "smallint" | "integer" | "int" | "bigint" | "hugeint" | "tinyint" | "int2" | "int4"
        | "int8" | "ubigint" | "uinteger" | "usmallint" | "utinyint" => {
            json!({"type": ["null", "integer"]})
        }
        "numeric" | "decimal" => json!({"type": ["null", "string"], "format": "x-singer.decimal"}),
        "double" | "real" | "float" | "float4" | "float8" => json!({"type": ["null", "number"]}),
        "boolean" | "bool" => json!({"type": ["null", "boolean"]}),
        "date" => json!({"type": ["null", "string"], "format": "date"}),
        "timestamp" => json!({"type": ["null", "string"], "format": "date-time"}),
        "json" | "jsonb" | "struct" => {
            json!({"type": ["null", "object", "array", "string", "number", "boolean"]})
        }
        _ if t.starts_with("timestamp") => {
            json!({"type": ["null", "string"], "format": "date-time"})
        }
        _ if t.starts_with("double") => json!({"type": ["null", "number"]}),
        _ => json!({"type": ["null", "string"]}),
    }
}

/// A SCHEMA for the mapped fields, typed from the source columns (constants from their value).
fn schema_message(spec: &SyncSpec, typed: &[(String, String)]) -> Value {
    let mut props = Map::new();
    let col_type = |c: &str| typed.iter().find(|(n, _)| n == c).map(|(_, t)| t.as_str());
    if spec.mapping.is_empty() {
        for (c, t) in typed {
            props.insert(c.clone(), schema_of(t));
        }
    }
    for (f, src) in &spec.mapping {
        let s = match src {
            FieldSource::Column(c) => schema_of(col_type(c).unwrap_or("text")),
            FieldSource::Const(v) => json!({"type": ["null", json_type(v)]}),
        };
        props.insert(f.clone(), s);
    }
    if spec.mode == Mode::Mirror {
        props.insert(
            "_sdc_deleted_at".into(),
            json!({"type": ["null", "string"], "format": "date-time"}),
        );
    }
    json!({
        "type": "SCHEMA",
        "stream": spec.name,
        "schema": {"type": "object", "properties": props},
        "key_properties": [key_field(spec)],
    })
}

/// A value as its schema wants it: exact decimals as strings, keys (text) back to numbers.
fn conform(v: &Value, schema: &Value) -> Value {
    let types: Vec<&str> = schema["type"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match v {
        Value::Null => Value::Null,
        Value::Number(n) if schema["format"] == "x-singer.decimal" => json!(n.to_string()),
        Value::String(s) if types.contains(&"integer") => {
            s.parse::<i64>().map_or_else(|_| v.clone(), |i| json!(i))
        }
        Value::String(s) if types.contains(&"number") => {
            serde_json::from_str::<serde_json::Number>(s).map_or_else(|_| v.clone(), Value::Number)
        }
        other if types == ["null", "string"] && !other.is_string() => json!(other.to_string()),
        other => other.clone(),
    }
}

/// Writes the whole change set as Singer messages into `out`, a STATE after every `batch`
/// rows; returns rows written.
async fn spool(
    conn: &mut Conn,
    spec: &SyncSpec,
    typed: &[(String, String)],
    batch: usize,
    out: &mut std::io::BufWriter<std::fs::File>,
) -> anyhow::Result<u64> {
    let schema = schema_message(spec, typed);
    writeln!(out, "{schema}")?;
    let props = schema["schema"]["properties"].clone();
    let key = key_field(spec);
    let now = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let mut after = 0u64;
    loop {
        let page = changes::page(conn, spec, after, batch).await?;
        if page.is_empty() {
            break;
        }
        for c in &page {
            let mut record = match c.op {
                Op::Remove => {
                    let mut m = Map::new();
                    m.insert(key.clone(), json!(c.key));
                    m.insert("_sdc_deleted_at".into(), json!(now));
                    m
                }
                _ => c.fields.clone(),
            };
            for (k, v) in record.iter_mut() {
                if let Some(s) = props.get(k) {
                    *v = conform(v, s);
                }
            }
            writeln!(
                out,
                "{}",
                json!({"type": "RECORD", "stream": spec.name, "record": record})
            )?;
        }
        after += page.len() as u64;
        writeln!(
            out,
            "{}",
            json!({"type": "STATE", "value": {"bookmarks": {"__ferry_reverse": {"position": after}}}})
        )?;
    }
    out.flush()?;
    Ok(after)
}

/// Delivers the change set through the runner. Returns (sent, confirmed position, error).
///
/// # Errors
/// Spooling failures; a failing target is returned as the third value after what it
/// committed has been recorded.
pub async fn deliver(
    conn: &mut Conn,
    spec: &SyncSpec,
    dest: &SingerDest,
    typed: &[(String, String)],
    batch: usize,
) -> anyhow::Result<(u64, u64, Option<anyhow::Error>)> {
    let dir = tempfile::Builder::new()
        .prefix("ferry-reverse-")
        .tempdir()?;
    let spool_path = dir.path().join("messages.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&spool_path)?);
    let sent = spool(conn, spec, typed, batch, &mut out).await?;
    drop(out);
    let state_path = dir.path().join("state.json");
    let store = StateStore::unlocked(&state_path);
    let file: Box<dyn std::io::Read + Send> = Box::new(std::fs::File::open(&spool_path)?);
    let source = Source::Lines(std::io::BufReader::new(file));
    let sink = match dest {
        SingerDest::Builtin(name, config) => {
            Sink::Load(crate::targets::Target::new(name, config, Some(&spec.name)).await?)
        }
        SingerDest::Command(ext) => Sink::Command(ext.clone()),
    };
    let opts = RunOptions {
        commit_rows: batch as u64,
        ..RunOptions::default()
    };
    let result = runner::run(
        source,
        sink,
        StateOut::File {
            store,
            base: json!({}),
        },
        opts,
    )
    .await;
    let confirmed = position(&state_path);
    Ok((sent, confirmed, result.err()))
}

fn position(state_path: &Path) -> u64 {
    crate::state_store::read_state_file(state_path)
        .ok()
        .and_then(|v| {
            v.pointer("/bookmarks/__ferry_reverse/position")
                .and_then(Value::as_u64)
        })
        .unwrap_or(0)
}

/// Records the changes up to `position` as delivered.
///
/// # Errors
/// The warehouse's error.
pub async fn record_up_to(conn: &mut Conn, spec: &SyncSpec, position: u64) -> anyhow::Result<()> {
    changes::record(conn, spec, (0, position), &[], &[]).await
}
