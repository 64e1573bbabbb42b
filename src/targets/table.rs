//! What every table-shaped target (Postgres, DuckDB, Parquet) shares, so they keep one set of
//! table semantics: the columns of a stream planned from its SCHEMA (names folded and kept
//! distinct, PipelineWise flattening, `_sdc_*` metadata columns, key columns), the rule for
//! evolving an existing column, ACTIVATE_VERSION bookkeeping, and the excerpts errors quote.
//!
//! A target maps each planned [`ColumnType`] to its own type names and does the I/O.

use anyhow::bail;
use serde_json::{Map, Value};

use super::names::column_names;
use crate::schema::{self, ColumnType};
use crate::singer::{RecordMessage, SchemaMessage};
use crate::sql::quote_ident;

/// `time_extracted` of the record.
pub const EXTRACTED_AT: &str = "_sdc_extracted_at";
/// When ferry received the record.
pub const RECEIVED_AT: &str = "_sdc_received_at";
/// When the batch was merged (a column default).
pub const BATCHED_AT: &str = "_sdc_batched_at";
/// Set by taps on deleted rows; set by ACTIVATE_VERSION on rows of replaced versions.
pub const DELETED_AT: &str = "_sdc_deleted_at";
/// The record's table version.
pub const TABLE_VERSION: &str = "_sdc_table_version";

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A record property (after flattening).
    Prop(String),
    /// `time_extracted` of the message.
    Extracted,
    /// When ferry received the record.
    Received,
    /// `version` of the message.
    Version,
}

/// One column of a stream's table.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedCol {
    /// The column name (folded, distinct).
    pub name: String,
    /// Its logical type.
    pub ty: ColumnType,
    /// The source's SQL type (`x-sql-datatype`), for targets that honour it.
    pub hint: Option<String>,
    /// The property's own JSON Schema (for nested types), `Null` for metadata columns.
    pub schema: Value,
    /// Where the value comes from.
    pub source: Source,
}

/// What shapes a stream's table, from the target's config.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// `add_metadata_columns`.
    pub metadata: bool,
    /// `data_flattening_max_level`.
    pub flatten: u32,
    /// `primary_key_required`.
    pub primary_key_required: bool,
}

/// The planned table of a stream.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Columns in order: properties, then metadata columns.
    pub cols: Vec<PlannedCol>,
    /// The key columns' names, in key order.
    pub key_cols: Vec<String>,
}

/// Plans the columns of a stream from its SCHEMA.
///
/// # Errors
/// A stream without keys when they are required, a key property missing from the schema, an
/// unusable schema.
pub fn plan(msg: &SchemaMessage, opts: PlanOptions) -> anyhow::Result<Plan> {
    if msg.key_properties.is_empty() && opts.primary_key_required {
        bail!(
            "stream {:?} has no key properties and primary_key_required is on; set key properties in the tap \
             (or the catalog), or set primary_key_required: false to append",
            msg.stream
        );
    }
    let flat;
    let schema_value = if opts.flatten > 0 {
        flat = flatten_schema(&msg.schema, opts.flatten);
        &flat
    } else {
        &msg.schema
    };
    let columns = schema::columns(schema_value)?;
    let props: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    let mut taken = Vec::new();
    let names = column_names(&props, &mut taken);
    let prop_schemas = schema_value.get("properties").and_then(Value::as_object);
    let mut cols: Vec<PlannedCol> = columns
        .into_iter()
        .zip(names)
        .map(|(c, name)| PlannedCol {
            schema: prop_schemas
                .and_then(|p| p.get(&c.name))
                .cloned()
                .unwrap_or(Value::Null),
            name,
            ty: c.ty,
            hint: c.sql_hint,
            source: Source::Prop(c.name),
        })
        .collect();
    if opts.metadata {
        for (name, ty, source) in [
            (EXTRACTED_AT, ColumnType::DateTime, Source::Extracted),
            (RECEIVED_AT, ColumnType::DateTime, Source::Received),
            (
                DELETED_AT,
                ColumnType::DateTime,
                Source::Prop(DELETED_AT.into()),
            ),
            (TABLE_VERSION, ColumnType::Integer, Source::Version),
        ] {
            cols.retain(|c| c.name != name);
            cols.push(PlannedCol {
                name: name.into(),
                ty,
                hint: None,
                schema: Value::Null,
                source,
            });
        }
    }
    let mut key_cols = Vec::new();
    for k in &msg.key_properties {
        let Some(c) = cols.iter().find(|c| c.source == Source::Prop(k.clone())) else {
            bail!(
                "stream {:?}: key property {k:?} is not in the schema's properties",
                msg.stream
            );
        };
        key_cols.push(c.name.clone());
    }
    Ok(Plan { cols, key_cols })
}

/// What to do with an existing column of logical type `have` for values of type `want`.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The column takes the values as it is.
    Keep,
    /// Alter it in place to this type; every existing value converts.
    Widen(ColumnType),
}

/// The evolution rule every target follows: a type that widens (integer to number, anything to
/// string) is altered in place, keeping the values; a narrower type keeps the column.
///
/// # Errors
/// When no change keeps every value (e.g. text to JSON), with what to do.
pub fn evolve(
    table: &str,
    col: &str,
    have: &ColumnType,
    want: &ColumnType,
) -> anyhow::Result<Change> {
    if have == want {
        return Ok(Change::Keep);
    }
    let wide = schema::widen(have, want);
    // Numbers keep their column: a float column takes decimals, and an exact decimal column
    // keeps exactness (a value with more places than it holds is then an error, not rounded).
    if wide == *have
        || (matches!(have, ColumnType::Number | ColumnType::Decimal { .. })
            && matches!(
                want,
                ColumnType::Integer | ColumnType::Number | ColumnType::Decimal { .. }
            ))
    {
        return Ok(Change::Keep);
    }
    if wide == ColumnType::Json {
        bail!(
            "table {table}, column {col:?} holds {} but the schema now says {}; ferry cannot convert it without losing \
             values. Rename or drop the column (ALTER TABLE … RENAME COLUMN …) and run again, or keep the old schema",
            describe(have),
            describe(want)
        );
    }
    Ok(Change::Widen(wide))
}

/// A logical type in words, for messages.
pub fn describe(t: &ColumnType) -> &'static str {
    match t {
        ColumnType::Integer => "integers",
        ColumnType::Number => "numbers",
        ColumnType::Decimal { .. } => "decimals",
        ColumnType::Boolean => "booleans",
        ColumnType::String { .. } => "text",
        ColumnType::DateTime => "timestamps",
        ColumnType::Date => "dates",
        ColumnType::Time => "times",
        ColumnType::Json => "JSON",
    }
}

/// ACTIVATE_VERSION bookkeeping of one stream: the versions its records carried in this run and
/// the version to activate at the next commit.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    seen: Vec<i64>,
    pending: Option<i64>,
    /// The pending ACTIVATE_VERSION came before any record of its version in this run.
    early: bool,
}

impl Versions {
    /// Notes a record's version. A record of a version whose ACTIVATE_VERSION is pending, when
    /// no record of that version came before the message, shows it was the one taps send before
    /// a reload, not the one after it: it is dropped. (Records after a closing ACTIVATE_VERSION,
    /// e.g. from a log, keep it.)
    pub fn record(&mut self, msg: &RecordMessage) {
        if self.early && msg.version.is_some() && msg.version == self.pending {
            self.pending = None;
            self.early = false;
        }
        if let Some(v) = msg.version {
            if !self.seen.contains(&v) {
                self.seen.push(v);
            }
        }
    }

    /// Notes an ACTIVATE_VERSION; it is applied at commit, after the version's records.
    pub fn activate(&mut self, version: i64) {
        self.pending = Some(version);
        self.early = !self.seen.contains(&version);
    }

    /// Whether an ACTIVATE_VERSION waits for the next commit.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Takes the pending version to activate, and whether records of it came in this run.
    ///
    /// A tap may send ACTIVATE_VERSION before the version's records as well as after them:
    /// acting on the first would empty the table while the reload runs. So a pending version is
    /// dropped when a record of it follows ([`Versions::record`]), and it counts only once
    /// records of it are in the table: seen in this run, or (the caller checks when this is
    /// false) committed by an earlier run that this one resumes.
    pub fn take(&mut self) -> Option<(i64, bool)> {
        self.early = false;
        self.pending.take().map(|v| (v, self.seen.contains(&v)))
    }
}

/// PipelineWise's flattening: properties of nested objects become columns `parent__child`, down
/// to `max` levels; deeper objects and all arrays stay JSON.
pub fn flatten_schema(schema: &Value, max: u32) -> Value {
    fn walk(
        props: &Map<String, Value>,
        prefix: &str,
        level: u32,
        max: u32,
        out: &mut Map<String, Value>,
    ) {
        for (k, v) in props {
            let name = format!("{prefix}{k}");
            let is_object = match v.get("type") {
                Some(Value::String(t)) => t == "object",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
                _ => false,
            };
            match v.get("properties").and_then(Value::as_object) {
                Some(children) if is_object && level < max => {
                    // A flattened child may be absent whenever its parent is: always nullable.
                    let mut nullable = Map::new();
                    walk(
                        children,
                        &format!("{name}__"),
                        level + 1,
                        max,
                        &mut nullable,
                    );
                    for (ck, mut cv) in nullable {
                        if let Some(Value::String(t)) = cv.get("type").cloned() {
                            cv["type"] = serde_json::json!(["null", t]);
                        }
                        out.insert(ck, cv);
                    }
                }
                _ => {
                    out.insert(name, v.clone());
                }
            }
        }
    }
    let mut out = schema.clone();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        let mut flat = Map::new();
        walk(props, "", 0, max, &mut flat);
        out["properties"] = Value::Object(flat);
    }
    out
}

/// Flattens a record as [`flatten_schema`] flattens its schema.
pub fn flatten_record(
    m: &Map<String, Value>,
    prefix: &str,
    level: u32,
    max: u32,
    out: &mut Map<String, Value>,
) {
    for (k, v) in m {
        let name = format!("{prefix}{k}");
        match v {
            Value::Object(child) if level < max => {
                flatten_record(child, &format!("{name}__"), level + 1, max, out)
            }
            _ => {
                out.insert(name, v.clone());
            }
        }
    }
}

/// `CREATE TABLE qt (…)` for planned columns given as (name, SQL type): key columns NOT NULL
/// and, with `primary_key`, the primary key, plus `extra` column definitions (e.g.
/// `_sdc_batched_at` with its default).
pub fn create_table_sql<'a>(
    qt: &str,
    cols: impl Iterator<Item = (&'a str, &'a str)>,
    key_cols: &[String],
    primary_key: bool,
    extra: Option<String>,
) -> String {
    let mut defs: Vec<String> = cols
        .map(|(name, ty)| {
            let not_null = if key_cols.iter().any(|k| k == name) {
                " NOT NULL"
            } else {
                ""
            };
            format!("{} {ty}{not_null}", quote_ident(name))
        })
        .collect();
    defs.extend(extra);
    if primary_key && !key_cols.is_empty() {
        let keys: Vec<String> = key_cols.iter().map(|k| quote_ident(k)).collect();
        defs.push(format!("PRIMARY KEY ({})", keys.join(", ")));
    }
    format!("CREATE TABLE {qt} ({})", defs.join(", "))
}

/// Quoted identifiers joined by commas.
pub fn ident_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.map(quote_ident).collect::<Vec<_>>().join(", ")
}

/// The `ON CONFLICT` action of an upsert: every non-key column takes the new value (and
/// `_sdc_batched_at` is refreshed with `metadata`); `DO NOTHING` when only keys remain.
pub fn upsert_action<'a>(
    cols: impl Iterator<Item = &'a str>,
    key_cols: &[String],
    metadata: bool,
) -> String {
    let updates: Vec<String> = cols
        .filter(|c| !key_cols.iter().any(|k| k == c))
        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
        .chain(metadata.then(|| format!("{} = now()", quote_ident(BATCHED_AT))))
        .collect();
    if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    }
}

/// The record flattened as `data_flattening_max_level` asks (`None` when it is 0).
///
/// # Errors
/// A record that is not a JSON object.
pub fn flat_record(msg: &RecordMessage, max: u32) -> anyhow::Result<Option<Map<String, Value>>> {
    if max == 0 {
        return Ok(None);
    }
    let m = msg
        .record
        .to_map()
        .map_err(|_| anyhow::anyhow!("stream {:?}: a record is not a JSON object", msg.stream))?;
    let mut flat = Map::new();
    flatten_record(&m, "", 0, max, &mut flat);
    Ok(Some(flat))
}

/// The first 60 bytes of a value's JSON text, for error messages.
pub fn excerpt(v: &Value) -> String {
    let s = v.to_string();
    excerpt_str(&s)
}

/// The first 60 bytes of a text, cut on a character boundary.
pub fn excerpt_str(s: &str) -> String {
    let mut end = s.len().min(60);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// ` (key id=7)` for messages about a record of a keyed stream; empty without keys.
pub fn key_text(keys: &[String], record: &Map<String, Value>) -> String {
    if keys.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{k}={}",
                record.get(k).map_or_else(|| "(missing)".into(), excerpt)
            )
        })
        .collect();
    format!(" (key {})", parts.join(", "))
}

/// ` (key …)` for a record message, parsing a raw record if needed.
pub fn record_key_text(keys: &[String], msg: &RecordMessage) -> String {
    msg.record
        .to_map()
        .map(|m| key_text(keys, &m))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evolution_rule() {
        let s = ColumnType::String { max_length: None };
        assert_eq!(
            evolve("t", "c", &ColumnType::Integer, &ColumnType::Number).unwrap(),
            Change::Widen(ColumnType::Number)
        );
        assert_eq!(
            evolve("t", "c", &ColumnType::Number, &ColumnType::Integer).unwrap(),
            Change::Keep
        );
        assert_eq!(
            evolve("t", "c", &ColumnType::Integer, &s).unwrap(),
            Change::Widen(s.clone())
        );
        assert_eq!(
            evolve("t", "c", &s, &ColumnType::Date).unwrap(),
            Change::Keep
        );
        assert!(evolve("t", "c", &s, &ColumnType::Json).is_err());
    }

    #[test]
    fn activate_version_before_a_reload_is_dropped_and_after_it_kept() {
        let rec = |v: i64| RecordMessage {
            stream: "s".into(),
            record: crate::singer::Record::Map(Map::new()),
            version: Some(v),
            time_extracted: None,
            extra: Map::new(),
        };
        let mut v = Versions::default();
        v.activate(2);
        v.record(&rec(2));
        assert_eq!(v.take(), None, "sent before the reload's records");
        v.record(&rec(3));
        v.activate(3);
        v.record(&rec(3));
        assert_eq!(
            v.take(),
            Some((3, true)),
            "sent after them; a late record keeps it"
        );
    }

    #[test]
    fn plans_metadata_and_keys() {
        let msg = SchemaMessage {
            stream: "public-Users".into(),
            schema: json!({"properties": {"ID": {"type": "integer"}, "tags": {"type": "array"}}}),
            key_properties: vec!["ID".into()],
            bookmark_properties: None,
            extra: Map::new(),
        };
        let p = plan(
            &msg,
            PlanOptions {
                metadata: true,
                flatten: 0,
                primary_key_required: true,
            },
        )
        .unwrap();
        let names: Vec<&str> = p.cols.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "tags",
                EXTRACTED_AT,
                RECEIVED_AT,
                DELETED_AT,
                TABLE_VERSION
            ]
        );
        assert_eq!(p.key_cols, ["id"]);
        assert_eq!(p.cols[1].schema, json!({"type": "array"}));
    }
}
