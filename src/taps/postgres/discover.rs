//! Discovery: tables, views and materialized views, their columns as JSON Schema, keys and
//! metadata.

use anyhow::Context;
use serde_json::{json, Map, Value};
use tokio_postgres::Client;

use super::{NonFiniteFloats, PostgresTap};
use crate::schema::NON_FINITE_PATTERN;
use crate::singer::catalog::keys;
use crate::singer::{Catalog, CatalogStream};

/// A column as the catalog of Postgres describes it.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// `format_type` of the column (the `x-sql-datatype`).
    pub sql_type: String,
    /// Whether NULL is impossible.
    pub not_null: bool,
    /// Name of the base type (domains resolved).
    pub base: String,
    /// Type category (`N` numeric, `D` date/time, `A` array, `E` enum, …).
    pub category: String,
    /// Element type of an array.
    pub element: Option<String>,
    /// Labels of an enum.
    pub labels: Option<Vec<String>>,
    /// Declared array dimensions (`int[][]` is 2; 0 when not declared, as in views).
    pub dims: i32,
}

/// A relation to read.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Schema.
    pub schema: String,
    /// Table, view or materialized view name.
    pub name: String,
    /// `r`/`p` table, `v` view, `m` materialized view.
    pub kind: String,
    /// The planner's row estimate.
    pub estimate: i64,
    /// Columns in order.
    pub columns: Vec<ColumnInfo>,
    /// Primary key, or the first unique index over NOT NULL columns.
    pub key: Vec<String>,
}

impl TableInfo {
    /// `<schema>-<table>`.
    pub fn stream_id(&self) -> String {
        format!("{}-{}", self.schema, self.name)
    }
}

const COLUMNS_SQL: &str = "
SELECT n.nspname::text, c.relname::text, c.relkind::text, greatest(c.reltuples, 0)::bigint,
       a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       bt.typname::text, bt.typcategory::text, et.typname::text,
       (SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = bt.oid),
       a.attndims
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
WHERE c.relkind IN ('r', 'p', 'v', 'm') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND ($1::text[] IS NULL OR n.nspname = ANY($1))
  AND ($2::text IS NULL OR c.relname = $2)
ORDER BY n.nspname, c.relname, a.attnum";

const KEYS_SQL: &str = "
SELECT n.nspname::text, c.relname::text, i.indisprimary,
       array_agg(a.attname::text ORDER BY k.ord), bool_and(a.attnotnull)
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE (i.indisprimary OR i.indisunique) AND i.indexprs IS NULL AND i.indpred IS NULL
  AND ($1::text[] IS NULL OR n.nspname = ANY($1))
  AND ($2::text IS NULL OR c.relname = $2)
GROUP BY n.nspname, c.relname, i.indexrelid, i.indisprimary
ORDER BY n.nspname, c.relname, i.indisprimary DESC, i.indexrelid";

/// Reads the relations (of `schemas`, or one `table`).
///
/// # Errors
/// SQL errors.
pub async fn tables(
    client: &Client,
    schemas: Option<&[String]>,
    table: Option<&str>,
) -> anyhow::Result<Vec<TableInfo>> {
    let schemas: Option<Vec<String>> = schemas.map(<[String]>::to_vec);
    let rows = client
        .query(COLUMNS_SQL, &[&schemas, &table])
        .await
        .context("reading the catalog of columns")?;
    let mut out: Vec<TableInfo> = Vec::new();
    for r in rows {
        let (schema, name): (String, String) = (r.get(0), r.get(1));
        if out
            .last()
            .is_none_or(|t| t.schema != schema || t.name != name)
        {
            out.push(TableInfo {
                schema,
                name,
                kind: r.get(2),
                estimate: r.get(3),
                columns: Vec::new(),
                key: Vec::new(),
            });
        }
        let t = out.last_mut().context("table")?;
        t.columns.push(ColumnInfo {
            name: r.get(4),
            sql_type: r.get(5),
            not_null: r.get(6),
            base: r.get(7),
            category: r.get(8),
            element: r.get(9),
            labels: r.get(10),
            dims: r.get(11),
        });
    }
    for r in client
        .query(KEYS_SQL, &[&schemas, &table])
        .await
        .context("reading keys")?
    {
        let (schema, name, primary, cols, not_null): (String, String, bool, Vec<String>, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        if let Some(t) = out
            .iter_mut()
            .find(|t| t.schema == schema && t.name == name)
        {
            if t.key.is_empty() && (primary || not_null) {
                t.key = cols;
            }
        }
    }
    Ok(out)
}

/// A number that may also be NaN or ±Infinity, written as their names. A type list (not
/// `anyOf`), which every Singer target reads: pipelinewise-target-postgres makes it a double.
fn number_or_non_finite() -> Value {
    json!({"type": ["number", "string"], "pattern": NON_FINITE_PATTERN})
}

fn scalar_schema(
    base: &str,
    category: &str,
    labels: Option<&Vec<String>>,
    in_array: bool,
    floats: NonFiniteFloats,
) -> Value {
    if let Some(l) = labels {
        return json!({"type": "string", "enum": l});
    }
    match base {
        "int2" | "int4" | "int8" | "oid" | "xid" => json!({"type": "integer"}),
        // Exact decimals travel as strings (the Meltano SDK's x-singer.decimal); inside arrays
        // Postgres renders them as exact JSON numbers, and NaN or ±Infinity as their names.
        "numeric" | "float4" | "float8" if in_array => number_or_non_finite(),
        "numeric" => json!({"type": "string", "format": "x-singer.decimal"}),
        "float4" | "float8" if floats == NonFiniteFloats::String => number_or_non_finite(),
        "float4" | "float8" => json!({"type": "number"}),
        "bool" => json!({"type": "boolean"}),
        "date" => json!({"type": "string", "format": "date"}),
        "timestamp" | "timestamptz" => json!({"type": "string", "format": "date-time"}),
        "time" | "timetz" => json!({"type": "string", "format": "time"}),
        // Any JSON value. A type list rather than no `type` at all: Singer targets read `type`
        // (pipelinewise-target-postgres makes `object`/`array` a jsonb column).
        "json" | "jsonb" => json!({"type": ["object", "array", "string", "number", "boolean"]}),
        _ if category == "A" => json!({"type": "array"}),
        _ => json!({"type": "string"}),
    }
}

/// The JSON Schema of a column.
pub fn column_schema(c: &ColumnInfo, floats: NonFiniteFloats) -> Value {
    let mut s = if c.category == "A" {
        // `to_json` writes an array of N dimensions as N nested JSON arrays; any element may be
        // NULL. Postgres does not enforce the declared dimensions, so the declared count is the
        // best knowledge there is (none declared, as in views, reads as one).
        let elem = c.element.as_deref().unwrap_or("text");
        let mut items = nullable(scalar_schema(elem, "", None, true, floats));
        for _ in 1..c.dims.max(1) {
            items = json!({"type": ["null", "array"], "items": items});
        }
        json!({"type": "array", "items": items})
    } else {
        scalar_schema(&c.base, &c.category, c.labels.as_ref(), false, floats)
    };
    if let Some(p) = c
        .sql_type
        .strip_prefix("numeric(")
        .filter(|_| c.category != "A")
    {
        let mut parts = p.trim_end_matches(')').split(',');
        if let (Some(p), Some(sc)) = (parts.next(), parts.next()) {
            s["precision"] = json!(p.trim().parse::<u32>().unwrap_or(0));
            s["scale"] = json!(sc.trim().parse::<u32>().unwrap_or(0));
        }
    }
    if !c.not_null {
        s = nullable(s);
    }
    s["x-sql-datatype"] = json!(c.sql_type);
    s
}

/// `schema` with null allowed: `"null"` added to its type (and to its enum).
fn nullable(mut s: Value) -> Value {
    match s.get_mut("type") {
        Some(Value::String(t)) => {
            let t = std::mem::take(t);
            s["type"] = json!(["null", t]);
        }
        Some(Value::Array(l)) if !l.iter().any(|t| t == "null") => l.insert(0, json!("null")),
        _ => {}
    }
    if let Some(Value::Array(l)) = s.get_mut("enum") {
        if !l.contains(&Value::Null) {
            l.push(Value::Null);
        }
    }
    s
}

/// Replication keys a column can serve as: integers, dates and timestamps.
fn can_be_replication_key(c: &ColumnInfo) -> bool {
    matches!(
        c.base.as_str(),
        "int2" | "int4" | "int8" | "date" | "timestamp" | "timestamptz" | "numeric"
    )
}

impl PostgresTap {
    /// Discovers every relation of the configured schemas; nothing is selected.
    ///
    /// # Errors
    /// Connection and SQL errors.
    pub async fn discover(&self) -> anyhow::Result<Catalog> {
        let (client, _conn) = self.connect().await?;
        let db: String = client
            .query_one("SELECT current_database()::text", &[])
            .await?
            .get(0);
        let schemas = self.schemas();
        let mut catalog = Catalog::default();
        for t in tables(&client, schemas.as_deref(), None).await? {
            let props: Map<String, Value> = t
                .columns
                .iter()
                .map(|c| (c.name.clone(), column_schema(c, self.cfg.non_finite_floats)))
                .collect();
            let mut meta = Map::new();
            meta.insert(keys::SELECTED_BY_DEFAULT.into(), json!(false));
            meta.insert(keys::TABLE_KEY_PROPERTIES.into(), json!(t.key));
            meta.insert(
                keys::VALID_REPLICATION_KEYS.into(),
                json!(t
                    .columns
                    .iter()
                    .filter(|c| can_be_replication_key(c))
                    .map(|c| &c.name)
                    .collect::<Vec<_>>()),
            );
            meta.insert("is-view".into(), json!(t.kind == "v" || t.kind == "m"));
            meta.insert("row-count".into(), json!(t.estimate));
            meta.insert("database-name".into(), json!(db));
            meta.insert("schema-name".into(), json!(t.schema));
            meta.insert("table-name".into(), json!(t.name));
            let mut s = CatalogStream::new(
                &t.stream_id(),
                json!({"type": "object", "properties": props}),
                meta,
            );
            s.0.insert("table_name".into(), json!(t.name));
            for c in &t.columns {
                let inclusion = if t.key.contains(&c.name) {
                    "automatic"
                } else {
                    "available"
                };
                s.set_metadata(&["properties", &c.name], keys::INCLUSION, json!(inclusion));
                s.set_metadata(&["properties", &c.name], "sql-datatype", json!(c.sql_type));
            }
            catalog.streams.push(s);
        }
        Ok(catalog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(
        sql_type: &str,
        base: &str,
        category: &str,
        element: Option<&str>,
        dims: i32,
    ) -> ColumnInfo {
        ColumnInfo {
            name: "c".into(),
            sql_type: sql_type.into(),
            not_null: false,
            base: base.into(),
            category: category.into(),
            element: element.map(str::to_owned),
            labels: None,
            dims,
        }
    }

    #[test]
    fn floats_say_how_non_finite_values_travel() {
        let f = col("double precision", "float8", "N", None, 0);
        assert_eq!(
            column_schema(&f, NonFiniteFloats::String),
            json!({"type": ["null", "number", "string"], "pattern": "^(NaN|Infinity|-Infinity)$",
                   "x-sql-datatype": "double precision"})
        );
        assert_eq!(
            column_schema(&f, NonFiniteFloats::Null)["type"],
            json!(["null", "number"])
        );
        let (ty, nullable) =
            crate::schema::column_type(&column_schema(&f, NonFiniteFloats::String));
        assert_eq!((ty, nullable), (crate::schema::ColumnType::Number, true));
    }

    #[test]
    fn json_columns_have_a_type_list() {
        let s = column_schema(
            &col("jsonb", "jsonb", "U", None, 0),
            NonFiniteFloats::String,
        );
        assert_eq!(
            s["type"],
            json!(["null", "object", "array", "string", "number", "boolean"])
        );
    }

    #[test]
    fn arrays_nest_by_their_declared_dimensions_with_null_elements() {
        let s = column_schema(
            &col("integer[]", "_int4", "A", Some("int4"), 2),
            NonFiniteFloats::String,
        );
        assert_eq!(
            s,
            json!({"type": ["null", "array"], "items": {"type": ["null", "array"],
                   "items": {"type": ["null", "integer"]}}, "x-sql-datatype": "integer[]"})
        );
        let s = column_schema(
            &col("numeric(10,2)[]", "_numeric", "A", Some("numeric"), 1),
            NonFiniteFloats::String,
        );
        assert_eq!(
            s["items"],
            json!({"type": ["null", "number", "string"], "pattern": "^(NaN|Infinity|-Infinity)$"})
        );
        assert!(s.get("scale").is_none());
        // A view declares no dimensions: one.
        let s = column_schema(
            &col("text[]", "_text", "A", Some("text"), 0),
            NonFiniteFloats::String,
        );
        assert_eq!(s["items"], json!({"type": ["null", "string"]}));
    }
}
