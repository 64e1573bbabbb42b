//! What each materialization sends to the warehouse, in dbt's order: views and tables built
//! under `__dbt_tmp` and swapped in one transaction, incremental models merged from a
//! temporary table, seeds created (or truncated) and bulk-loaded, tests counted.

use std::collections::HashMap;

use serde_json::Value;

use super::adapter::{Conn, DbError};
use super::jinja::{quote, Relation};
use super::nodes::Node;
use super::project::AdapterKind;

/// Known relations: (schema, identifier) → `table` | `view`.
pub type Relations = HashMap<(String, String), &'static str>;

/// dbt's relation cache: the relations there are, shared by every worker and kept current as
/// nodes build (a drop with cascade forgets the views it took along).
pub type Cache = std::sync::Mutex<Relations>;

/// What ran, for the run results and `target/run/`.
#[derive(Debug, Default)]
pub struct Outcome {
    /// dbt's message (`CREATE VIEW`, `SELECT 3`, `INSERT 0 5`, `OK`).
    pub message: String,
    /// Rows affected by the main statement.
    pub rows: Option<u64>,
    /// Every statement, in order.
    pub statements: Vec<String>,
    /// For tests: failures, and whether they warn or error.
    pub test: Option<(i64, bool, bool)>,
}

/// Statements sent on one connection, recorded for `target/run/`.
pub(super) struct Tx<'a> {
    pub(super) conn: &'a mut Conn,
    pub(super) out: Outcome,
}

impl Tx<'_> {
    pub(super) async fn run(&mut self, sql: String) -> Result<Option<u64>, DbError> {
        let r = self.conn.execute(&sql).await;
        self.out.statements.push(sql);
        Ok(r?.rows)
    }

    /// Runs statements between BEGIN and COMMIT; on failure rolls back and keeps the error.
    pub(super) async fn transaction(&mut self, stmts: Vec<String>) -> Result<Option<u64>, DbError> {
        self.conn.execute("begin").await?;
        let mut first_rows = None;
        for (i, s) in stmts.into_iter().enumerate() {
            match self.run(s).await {
                Ok(r) => {
                    if i == 0 {
                        first_rows = r;
                    }
                }
                Err(e) => {
                    let _ = self.conn.execute("rollback").await;
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.conn.execute("commit").await {
            let _ = self.conn.execute("rollback").await;
            return Err(e);
        }
        Ok(first_rows)
    }
}

fn kind_word(kind: &str) -> &'static str {
    if kind == "view" {
        "view"
    } else {
        "table"
    }
}

pub(super) fn cached(cache: &Cache, rel: &Relation) -> Option<&'static str> {
    cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&(
            rel.schema.clone().unwrap_or_default(),
            rel.identifier.clone(),
        ))
        .copied()
}

pub(super) fn set_cache(cache: &Cache, rel: &Relation, kind: Option<&'static str>) {
    let key = (
        rel.schema.clone().unwrap_or_default(),
        rel.identifier.clone(),
    );
    let mut cache = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match kind {
        Some(k) => {
            cache.insert(key, k);
        }
        None => {
            cache.remove(&key);
        }
    }
}

/// Forgets relations that are gone (the views a `drop … cascade` took along), so the next
/// build of such a view creates it instead of renaming one that is not there.
fn forget(cache: &Cache, gone: &[(String, String)]) {
    let mut cache = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for key in gone {
        cache.remove(key);
    }
}

/// Drops a relation with cascade, as dbt does, and returns the views that went with it.
async fn drop_cascade(
    tx: &mut Tx<'_>,
    kind: &str,
    rel: &Relation,
) -> Result<Vec<(String, String)>, DbError> {
    let readers = tx
        .conn
        .dependent_views(rel.schema.as_deref().unwrap_or_default(), &rel.identifier)
        .await?;
    tx.run(format!("drop {} if exists {rel} cascade", kind_word(kind)))
        .await?;
    Ok(readers)
}

/// Postgres cuts identifiers at 63 bytes; suffixed names are made to fit, as dbt does.
fn suffixed(adapter: AdapterKind, base: &str, suffix: &str) -> String {
    let mut b = base.to_string();
    if adapter == AdapterKind::Postgres {
        while b.len() + suffix.len() > 63 {
            b.pop();
        }
    }
    format!("{b}{suffix}")
}

/// Builds a view or table under a temporary name, then swaps it in: readers see the old
/// relation or the new one, never a half-built one.
async fn swap_in(
    conn: &mut Conn,
    adapter: AdapterKind,
    rel: &Relation,
    kind: &'static str,
    sql: &str,
    cache: &Cache,
) -> Result<Outcome, DbError> {
    let tmp = rel.with_identifier(suffixed(adapter, &rel.identifier, "__dbt_tmp"));
    let backup = rel.with_identifier(suffixed(adapter, &rel.identifier, "__dbt_backup"));
    let mut tx = Tx {
        conn,
        out: Outcome::default(),
    };
    // Leftovers of an interrupted run.
    for leftover in [&tmp, &backup] {
        if let Some(k) = cached(cache, leftover) {
            tx.run(format!(
                "drop {} if exists {leftover} cascade",
                kind_word(k)
            ))
            .await?;
            set_cache(cache, leftover, None);
        }
    }
    let existing = cached(cache, rel);
    let mut stmts = vec![format!("create {kind} {tmp} as (\n{sql}\n)")];
    if let Some(k) = existing {
        stmts.push(format!(
            "alter {} {rel} rename to {}",
            kind_word(k),
            quote(&backup.identifier)
        ));
    }
    stmts.push(format!(
        "alter {kind} {tmp} rename to {}",
        quote(&rel.identifier)
    ));
    let rows = tx.transaction(stmts).await?;
    set_cache(cache, rel, Some(kind));
    if let Some(k) = existing {
        let gone = drop_cascade(&mut tx, k, &backup).await?;
        forget(cache, &gone);
    }
    let mut out = tx.out;
    out.rows = rows;
    out.message = match (adapter, kind) {
        (AdapterKind::Postgres, "view") => "CREATE VIEW".into(),
        (AdapterKind::Postgres, _) => format!("SELECT {}", rows.unwrap_or(0)),
        _ => "OK".into(),
    };
    Ok(out)
}

/// `create table … as (…)` in one transaction, for a relation that is not there yet (a first
/// incremental run, a first snapshot), with dbt's message.
///
/// # Errors
/// A [`DbError`]; the transaction is rolled back.
pub(super) async fn create_table(
    conn: &mut Conn,
    adapter: AdapterKind,
    rel: &Relation,
    sql: &str,
    cache: &Cache,
) -> Result<Outcome, DbError> {
    let mut tx = Tx {
        conn,
        out: Outcome::default(),
    };
    let rows = tx
        .transaction(vec![format!("create table {rel} as (\n{sql}\n)")])
        .await?;
    set_cache(cache, rel, Some("table"));
    let mut out = tx.out;
    out.rows = rows;
    out.message = match adapter {
        AdapterKind::Postgres => format!("SELECT {}", rows.unwrap_or(0)),
        AdapterKind::DuckDb => "OK".into(),
    };
    Ok(out)
}

/// `unique_key` as a list of SQL expressions.
fn unique_keys(node: &Node) -> Vec<String> {
    match node.config.get("unique_key") {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether the node is rebuilt from scratch: its `full_refresh` config wins over the flag.
pub fn full_refresh(node: &Node, flag: bool) -> bool {
    node.config
        .get("full_refresh")
        .and_then(Value::as_bool)
        .unwrap_or(flag)
}

/// True when an incremental model will be merged into an existing table this run.
pub fn is_incremental(node: &Node, cache: &Cache, flag: bool) -> bool {
    node.materialized() == "incremental"
        && cached(cache, &node.relation()) == Some("table")
        && !full_refresh(node, flag)
}

/// Runs a model's materialization with its compiled SQL.
///
/// # Errors
/// A [`DbError`] with the warehouse's message; the transaction is rolled back.
pub async fn model(
    conn: &mut Conn,
    adapter: AdapterKind,
    node: &Node,
    sql: &str,
    cache: &Cache,
    full_refresh_flag: bool,
) -> Result<Outcome, DbError> {
    let rel = node.relation();
    match node.materialized() {
        "view" => swap_in(conn, adapter, &rel, "view", sql, cache).await,
        "table" => swap_in(conn, adapter, &rel, "table", sql, cache).await,
        "incremental" => {
            if !is_incremental(node, cache, full_refresh_flag) {
                if cached(cache, &rel).is_some() {
                    return swap_in(conn, adapter, &rel, "table", sql, cache).await;
                }
                return create_table(conn, adapter, &rel, sql, cache).await;
            }
            incremental(conn, adapter, node, &rel, sql).await
        }
        other => Err(DbError(format!(
            "materialization {other:?} is not supported; use view, table, incremental or ephemeral"
        ))),
    }
}

async fn incremental(
    conn: &mut Conn,
    adapter: AdapterKind,
    node: &Node,
    rel: &Relation,
    sql: &str,
) -> Result<Outcome, DbError> {
    let stamp = chrono::Utc::now();
    let suffix = match adapter {
        AdapterKind::Postgres => stamp.format("__dbt_tmp%H%M%S%6f").to_string(),
        AdapterKind::DuckDb => stamp.format("__dbt_tmp%Y%m%d%H%M%S%6f").to_string(),
    };
    let tmp_name = suffixed(adapter, &rel.identifier, &suffix);
    let tmp = quote(&tmp_name);
    let mut tx = Tx {
        conn,
        out: Outcome::default(),
    };
    tx.run(format!("create temporary table {tmp} as (\n{sql}\n)"))
        .await?;
    let dest = tx
        .conn
        .columns(rel.schema.as_deref(), &rel.identifier)
        .await?;
    let cols = dest.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
    let keys = unique_keys(node);
    let strategy = node
        .config
        .get("incremental_strategy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            if keys.is_empty() {
                "append".into()
            } else {
                "delete+insert".into()
            }
        });
    let insert = format!("insert into {rel} ({cols})\n(\n    select {cols}\n    from {tmp}\n)");
    let stmts = match strategy.as_str() {
        "append" => vec![insert],
        "delete+insert" if !keys.is_empty() => {
            let delete = if keys.len() == 1 {
                let k = &keys[0];
                format!(
                    "delete from {rel} as DBT_INTERNAL_DEST\nwhere ({k}) in (\n    select distinct {k}\n    from {tmp} as DBT_INTERNAL_SOURCE\n)"
                )
            } else {
                let on = keys
                    .iter()
                    .map(|k| format!("{tmp}.{k} = {rel}.{k}"))
                    .collect::<Vec<_>>()
                    .join(" and ");
                format!("delete from {rel}\nusing {tmp}\nwhere ({on})")
            };
            vec![delete, insert]
        }
        "merge" if !keys.is_empty() => {
            let on = keys
                .iter()
                .map(|k| format!("DBT_INTERNAL_SOURCE.{k} = DBT_INTERNAL_DEST.{k}"))
                .collect::<Vec<_>>()
                .join(" and ");
            let set = dest
                .iter()
                .map(|c| format!("{} = DBT_INTERNAL_SOURCE.{}", quote(c), quote(c)))
                .collect::<Vec<_>>()
                .join(", ");
            let vals = dest
                .iter()
                .map(|c| format!("DBT_INTERNAL_SOURCE.{}", quote(c)))
                .collect::<Vec<_>>()
                .join(", ");
            vec![format!(
                "merge into {rel} as DBT_INTERNAL_DEST\nusing {tmp} as DBT_INTERNAL_SOURCE\non ({on})\nwhen matched then update set {set}\nwhen not matched then insert ({cols}) values ({vals})"
            )]
        }
        other => {
            return Err(DbError(format!(
                "incremental_strategy {other:?} needs a unique_key, or is not one of append, delete+insert, merge"
            )))
        }
    };
    let n = stmts.len();
    tx.conn.execute("begin").await?;
    let mut rows = None;
    for (i, s) in stmts.into_iter().enumerate() {
        match tx.run(s).await {
            Ok(r) => {
                if i + 1 == n {
                    rows = r;
                }
            }
            Err(e) => {
                let _ = tx.conn.execute("rollback").await;
                let _ = tx
                    .conn
                    .execute(&format!("drop table if exists {tmp}"))
                    .await;
                return Err(e);
            }
        }
    }
    tx.conn.execute("commit").await?;
    tx.run(format!("drop table if exists {tmp}")).await?;
    let mut out = tx.out;
    out.rows = rows;
    out.message = match adapter {
        AdapterKind::Postgres => format!("INSERT 0 {}", rows.unwrap_or(0)),
        AdapterKind::DuckDb => "OK".into(),
    };
    Ok(out)
}

/// Runs a test's compiled SQL, counting failures as dbt does.
///
/// # Errors
/// A [`DbError`].
/// Where a test keeps its failing rows (`store_failures`, `store_failures_as`): `table`,
/// `view`, or `None` (not kept).
pub fn store_failures_as(node: &Node) -> Option<&'static str> {
    let store = node.config.get("store_failures").and_then(Value::as_bool);
    let store_as = node.config.get("store_failures_as").and_then(Value::as_str);
    match (store, store_as) {
        (Some(false), _) | (_, Some("ephemeral")) => None,
        (_, Some("view")) => Some("view"),
        (Some(true), _) | (_, Some("table")) => Some("table"),
        _ => None,
    }
}

pub async fn test(
    conn: &mut Conn,
    node: &Node,
    sql: &str,
    cache: &Cache,
) -> Result<Outcome, DbError> {
    let get = |k: &str, d: &str| {
        node.config
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or(d)
            .to_string()
    };
    let fail_calc = get("fail_calc", "count(*)");
    let warn_if = get("warn_if", "!= 0");
    let error_if = get("error_if", "!= 0");
    let mut body = match node.config.get("limit").and_then(Value::as_u64) {
        Some(l) => format!("select * from (\n{sql}\n) dbt_limit limit {l}"),
        None => sql.to_string(),
    };
    let mut statements = Vec::new();
    if let Some(kind) = store_failures_as(node) {
        // As dbt: the failing rows replace the audit relation, and the test counts them there.
        let rel = node.relation();
        let mut tx = Tx {
            conn: &mut *conn,
            out: Outcome::default(),
        };
        if let Some(k) = cached(cache, &rel) {
            let gone = drop_cascade(&mut tx, k, &rel).await?;
            forget(cache, &gone);
            set_cache(cache, &rel, None);
        }
        tx.transaction(vec![format!("create {kind} {rel} as (\n{body}\n)")])
            .await?;
        set_cache(cache, &rel, Some(kind));
        statements = tx.out.statements;
        body = format!("select *\n        from {rel}");
    }
    let q = format!(
        "select\n      {fail_calc} as failures,\n      {fail_calc} {warn_if} as should_warn,\n      {fail_calc} {error_if} as should_error\n    from (\n{body}\n    ) dbt_internal_test"
    );
    let rows = conn.query_strings(&q).await?;
    let row = rows.into_iter().next().unwrap_or_default();
    let failures = row
        .first()
        .cloned()
        .flatten()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(0.0) as i64;
    let truth = |i: usize| {
        row.get(i)
            .cloned()
            .flatten()
            .is_some_and(|s| matches!(s.as_str(), "t" | "true" | "1"))
    };
    statements.push(q);
    Ok(Outcome {
        message: String::new(),
        rows: None,
        statements,
        test: Some((failures, truth(1), truth(2))),
    })
}

/// One seed column's inferred type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inferred {
    Empty,
    Boolean,
    Integer,
    BigInt,
    Number,
    Date,
    DateTime,
    Text,
}

/// A seed cell dbt reads as NULL (agate's null values for seeds: empty and `null`, any case,
/// spaces around).
pub fn is_null_cell(v: &str) -> bool {
    let t = v.trim();
    t.is_empty() || t.eq_ignore_ascii_case("null")
}

fn classify(v: &str) -> Inferred {
    let t = v.trim();
    if t.eq_ignore_ascii_case("true") || t.eq_ignore_ascii_case("false") {
        return Inferred::Boolean;
    }
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return match t.parse::<i64>() {
            Ok(n) if i32::try_from(n).is_ok() => Inferred::Integer,
            Ok(_) => Inferred::BigInt,
            Err(_) => Inferred::Number,
        };
    }
    let is_num = !digits.is_empty()
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && t.parse::<f64>().is_ok_and(f64::is_finite);
    if is_num {
        return Inferred::Number;
    }
    if chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").is_ok() {
        return Inferred::Date;
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if chrono::NaiveDateTime::parse_from_str(t, f).is_ok() {
            return Inferred::DateTime;
        }
    }
    Inferred::Text
}

fn widen(a: Inferred, b: Inferred) -> Inferred {
    use Inferred::*;
    match (a, b) {
        (Empty, x) | (x, Empty) => x,
        (x, y) if x == y => x,
        (Integer, BigInt) | (BigInt, Integer) => BigInt,
        (Integer | BigInt | Number, Integer | BigInt | Number) => Number,
        (Date, DateTime) | (DateTime, Date) => DateTime,
        _ => Text,
    }
}

/// dbt's seed types (agate's inference): integers `integer`, decimals `float8`, dates, date-
/// times `timestamp without time zone`, `true`/`false` `boolean`, else `text`; a column with no
/// values `integer`. One deviation: integers beyond 32 bits are `bigint` (dbt would fail).
///
/// # Errors
/// The file cannot be read as CSV.
pub fn infer_seed(
    path: &std::path::Path,
    delimiter: u8,
) -> anyhow::Result<(Vec<String>, Vec<&'static str>, u64)> {
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_path(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let header: Vec<String> = rdr
        .headers()
        .map_err(|e| anyhow::anyhow!("{}: bad header: {e}", path.display()))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut kinds = vec![Inferred::Empty; header.len()];
    let mut rows = 0u64;
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| anyhow::anyhow!("{}, row {}: {e}", path.display(), i + 2))?;
        rows += 1;
        for (k, v) in kinds.iter_mut().zip(rec.iter()) {
            if !is_null_cell(v) {
                *k = widen(*k, classify(v));
            }
        }
    }
    let types = kinds
        .into_iter()
        .map(|k| match k {
            Inferred::Empty | Inferred::Integer => "integer",
            Inferred::BigInt => "bigint",
            Inferred::Number => "float8",
            Inferred::Boolean => "boolean",
            Inferred::Date => "date",
            Inferred::DateTime => "timestamp without time zone",
            Inferred::Text => "text",
        })
        .collect();
    Ok((header, types, rows))
}

/// Loads a seed: created (or truncated, or recreated with `--full-refresh`) and bulk-loaded in
/// one transaction.
///
/// # Errors
/// A [`DbError`].
pub async fn seed(
    conn: &mut Conn,
    node: &Node,
    path: &std::path::Path,
    cache: &Cache,
    full_refresh_flag: bool,
) -> Result<Outcome, DbError> {
    let delimiter = node
        .config
        .get("delimiter")
        .and_then(Value::as_str)
        .and_then(|d| d.chars().next())
        .unwrap_or(',');
    let (cols, types, _) =
        infer_seed(path, delimiter as u8).map_err(|e| DbError(format!("{e:#}")))?;
    let overrides = node
        .config
        .get("column_types")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let rel = node.relation();
    let existing = cached(cache, &rel);
    let mut tx = Tx {
        conn,
        out: Outcome::default(),
    };
    tx.conn.execute("begin").await?;
    let mut gone = Vec::new();
    let result = async {
        match existing {
            Some("table") if !full_refresh(node, full_refresh_flag) => {
                tx.run(format!("truncate table {rel}")).await?;
            }
            other => {
                if let Some(k) = other {
                    gone = drop_cascade(&mut tx, k, &rel).await?;
                }
                let defs = cols
                    .iter()
                    .zip(&types)
                    .map(|(c, t)| {
                        let t = overrides
                            .get(c)
                            .and_then(Value::as_str)
                            .map_or_else(|| (*t).to_string(), str::to_string);
                        format!("{} {t}", quote(c))
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                tx.run(format!("create table {rel} ({defs})")).await?;
            }
        }
        let n = tx
            .conn
            .load_csv(&rel.to_string(), &cols, path, delimiter)
            .await?;
        tx.out
            .statements
            .push(format!("copy {rel} from {}", path.display()));
        Ok::<u64, DbError>(n)
    }
    .await;
    match result {
        Ok(n) => {
            tx.conn.execute("commit").await?;
            forget(cache, &gone);
            set_cache(cache, &rel, Some("table"));
            let mut out = tx.out;
            out.rows = Some(n);
            out.message = format!("INSERT {n}");
            Ok(out)
        }
        Err(e) => {
            let _ = tx.conn.execute("rollback").await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_types_as_dbt() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.csv");
        std::fs::write(
            &p,
            "id,int_col,dec_col,date_col,datetime_col,bool_col,text_col,all_empty,big\n1,10,1.50,2024-01-02,2024-01-02 03:04:05,true,hello,,1\n2,-3,2.25,2024-02-29,2024-02-29 23:59:59,false,\"with, comma\",,9999999999\n",
        )
        .unwrap();
        let (cols, types, rows) = infer_seed(&p, b',').unwrap();
        assert_eq!(cols.len(), 9);
        assert_eq!(rows, 2);
        assert_eq!(
            types,
            [
                "integer",
                "integer",
                "float8",
                "date",
                "timestamp without time zone",
                "boolean",
                "text",
                "integer",
                "bigint"
            ]
        );
    }
}
