//! Change detection on the warehouse side: what a sync last delivered lives in a snapshot table
//! in the warehouse (`_ferry.reverse__<sync>`: key, hash of the mapped fields, status, error),
//! and one SQL statement joins the query's rows against it, so unchanged rows never leave the
//! warehouse. Rows are marked delivered only after the destination confirmed them.
//!
//! With `snapshot: state` the snapshot lives in a JSON file instead (for small syncs): it is
//! loaded into a temporary table at the start, the same SQL runs against it, and the file is
//! replaced atomically after every recorded batch.

use serde_json::Value;

use super::spec::{FieldSource, Mode, SyncSpec};
use crate::error::config_error;
use crate::sql::{quote_ident, quote_literal};
use crate::transform::adapter::{Conn, DbError};
use crate::transform::project::AdapterKind;

/// The schema holding the snapshot tables unless a sync names another (`snapshot_schema`).
pub const SNAPSHOT_SCHEMA: &str = "_ferry";

/// What a row is to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Never delivered (or rejected before).
    Add,
    /// Delivered with other values.
    Change,
    /// Delivered, and no longer in the query (mirror).
    Remove,
}

impl Op {
    fn parse(s: &str) -> Op {
        match s {
            "add" => Op::Add,
            "change" => Op::Change,
            _ => Op::Remove,
        }
    }

    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Change => "change",
            Op::Remove => "remove",
        }
    }
}

/// One row to deliver.
#[derive(Debug, Clone)]
pub struct Change {
    /// The primary key, as text.
    pub key: String,
    /// What to do.
    pub op: Op,
    /// The destination fields (constants included); empty for removals.
    pub fields: serde_json::Map<String, Value>,
    /// The destination's own id for the row, when an earlier delivery reported one.
    pub dest_id: Option<String>,
}

/// Counts of one sync's change set.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counts {
    /// Rows the query returned.
    pub compared: u64,
    /// New keys (and keys rejected before).
    pub adds: u64,
    /// Keys whose mapped fields changed.
    pub changes: u64,
    /// Delivered keys that left the query (mirror).
    pub removes: u64,
}

impl Counts {
    /// Rows that did not need sending.
    pub fn unchanged(&self) -> u64 {
        self.compared.saturating_sub(self.adds + self.changes)
    }
}

/// The snapshot table of a sync (a temporary table when the snapshot is kept in a file).
pub fn snapshot_table(spec: &SyncSpec) -> String {
    if spec.state_file.is_some() {
        return quote_ident(&format!("_ferry_snapshot__{}", spec.name));
    }
    format!(
        "{}.{}",
        quote_ident(&spec.snapshot_schema),
        quote_ident(&format!("reverse__{}", spec.name))
    )
}

fn changes_table(sync: &str) -> String {
    quote_ident(&format!("_ferry_changes__{sync}"))
}

/// A fingerprint of the mapping: changing it re-sends every row.
fn fingerprint(spec: &SyncSpec) -> String {
    use md5::{Digest as _, Md5};
    let text = format!("{:?}{}", spec.mapping, spec.primary_key);
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn db(e: DbError, what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", e.0)
}

/// Columns the mapping reads (all source columns when there is no mapping).
fn mapped_columns(spec: &SyncSpec, columns: &[String]) -> Vec<(String, String)> {
    if spec.mapping.is_empty() {
        return columns.iter().map(|c| (c.clone(), c.clone())).collect();
    }
    spec.mapping
        .iter()
        .filter_map(|(f, s)| match s {
            FieldSource::Column(c) => Some((f.clone(), c.clone())),
            FieldSource::Const(_) => None,
        })
        .collect()
}

/// Checks the query and the mapping and builds the change set in a temporary table.
///
/// # Errors
/// Before anything is sent: a mapping that names a missing column, a missing key column,
/// duplicate or NULL keys (with examples), or the warehouse's error for the query.
pub async fn prepare(
    conn: &mut Conn,
    spec: &SyncSpec,
) -> anyhow::Result<(Counts, Vec<(String, String)>)> {
    let at = format!("sync {}", spec.name);
    // The query's columns.
    let probe = quote_ident(&format!("_ferry_probe__{}", spec.name));
    conn.execute(&format!("drop table if exists {probe}"))
        .await
        .map_err(|e| db(e, &at))?;
    conn.execute(&format!(
        "create temporary table {probe} as select * from (\n{}\n) q limit 0",
        spec.query
    ))
    .await
    .map_err(|e| db(e, &format!("{at}: the source query failed")))?;
    let typed = conn
        .query_strings(&format!(
            "select column_name, data_type from information_schema.columns where table_name = {} order by ordinal_position",
            quote_literal(&format!("_ferry_probe__{}", spec.name))
        ))
        .await
        .map_err(|e| db(e, &at))?;
    let typed: Vec<(String, String)> = typed
        .into_iter()
        .filter_map(|r| Some((r.first()?.clone()?, r.get(1)?.clone().unwrap_or_default())))
        .collect();
    let columns: Vec<String> = typed.iter().map(|(c, _)| c.clone()).collect();
    conn.execute(&format!("drop table if exists {probe}"))
        .await
        .map_err(|e| db(e, &at))?;
    if !columns.contains(&spec.primary_key) {
        return Err(config_error(format!(
            "{at}: primary_key {:?} is not a column of the source (columns: {})",
            spec.primary_key,
            columns.join(", ")
        )));
    }
    for (field, src) in &spec.mapping {
        if let FieldSource::Column(c) = src {
            if !columns.contains(c) {
                return Err(config_error(format!(
                    "{at}: mapping.{field} names column {c:?}, which the source does not have (columns: {})",
                    columns.join(", ")
                )));
            }
        }
    }
    let kind = conn.kind();
    let text = match kind {
        AdapterKind::Postgres => "text",
        AdapterKind::DuckDb => "varchar",
    };
    let pairs = mapped_columns(spec, &columns)
        .iter()
        .map(|(f, c)| format!("{}, src.{}", quote_literal(f), quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let payload = match kind {
        AdapterKind::Postgres => format!("json_build_object({pairs})::text"),
        AdapterKind::DuckDb => format!("json_object({pairs})::varchar"),
    };
    let fp = quote_literal(&fingerprint(spec));
    let snap = snapshot_table(spec);
    let columns_sql = format!(
        "(k {text} primary key, h {text}, status {text} not null, error {text}, dest_id {text}, updated_at timestamp)"
    );
    match &spec.state_file {
        Some(path) => {
            conn.execute(&format!("drop table if exists {snap}"))
                .await
                .map_err(|e| db(e, &at))?;
            conn.execute(&format!("create temporary table {snap} {columns_sql}"))
                .await
                .map_err(|e| db(e, &at))?;
            load_state_file(conn, &snap, path, &at).await?;
        }
        None => {
            conn.execute(&format!(
                "create schema if not exists {}",
                quote_ident(&spec.snapshot_schema)
            ))
            .await
            .map_err(|e| db(e, &at))?;
            conn.execute(&format!("create table if not exists {snap} {columns_sql}"))
                .await
                .map_err(|e| db(e, &at))?;
        }
    }
    let pk = quote_ident(&spec.primary_key);
    let m = format!(
        "with src as (\n{}\n), m as (select cast(src.{pk} as {text}) as k, {payload} as p from src)",
        spec.query
    );
    // Keys must be unique and present, or the destination would get a random one of them.
    let nulls = conn
        .query_strings(&format!("{m} select count(*) from m where k is null"))
        .await
        .map_err(|e| db(e, &at))?;
    let n_null = nulls
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default();
    if n_null != "0" {
        return Err(config_error(format!(
            "{at}: {n_null} rows have a NULL {}; every row needs a key (filter them out in the query)",
            spec.primary_key
        )));
    }
    let dups = conn
        .query_strings(&format!(
            "{m} select k, count(*) from m group by k having count(*) > 1 order by k limit 5"
        ))
        .await
        .map_err(|e| db(e, &at))?;
    if !dups.is_empty() {
        let ex: Vec<String> = dups
            .iter()
            .map(|r| {
                format!(
                    "{} ({} rows)",
                    r[0].clone().unwrap_or_default(),
                    r[1].clone().unwrap_or_default()
                )
            })
            .collect();
        return Err(config_error(format!(
            "{at}: primary_key {} repeats in the source: {}; make it unique in the query",
            spec.primary_key,
            ex.join(", ")
        )));
    }
    let changes = changes_table(&spec.name);
    conn.execute(&format!("drop table if exists {changes}"))
        .await
        .map_err(|e| db(e, &at))?;
    let hash = format!("md5(m.p || {fp})");
    let wanted = match spec.mode {
        Mode::Insert => "s.k is null or s.status <> 'ok'".to_string(),
        _ => format!("s.k is null or s.h is distinct from {hash} or s.status <> 'ok'"),
    };
    let mut inner = format!(
        "select m.k, {hash} as h, m.p, case when s.k is null or s.h is null then 'add' else 'change' end as op, s.dest_id\nfrom m left join {snap} s on s.k = m.k\nwhere {wanted}"
    );
    if spec.mode == Mode::Mirror {
        inner.push_str(&format!(
            "\nunion all\nselect s.k, null, null, 'remove', s.dest_id from {snap} s where s.h is not null and not exists (select 1 from m where m.k = s.k)"
        ));
    }
    // Numbered, so pages are read by position without putting keys into SQL.
    let sql = format!(
        "create temporary table {changes} as\n{m}\nselect c.*, row_number() over (order by c.k) as n from (\n{inner}\n) c"
    );
    conn.execute(&sql)
        .await
        .map_err(|e| db(e, &format!("{at}: computing the changes")))?;
    let counts = conn
        .query_strings(&format!(
            "{m} select (select count(*) from m), (select count(*) from {changes} where op = 'add'), (select count(*) from {changes} where op = 'change'), (select count(*) from {changes} where op = 'remove')"
        ))
        .await
        .map_err(|e| db(e, &at))?;
    let row = counts.into_iter().next().unwrap_or_default();
    let n = |i: usize| {
        row.get(i)
            .cloned()
            .flatten()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    Ok((
        Counts {
            compared: n(0),
            adds: n(1),
            changes: n(2),
            removes: n(3),
        },
        typed,
    ))
}

/// The page of changes after position `after` (keyset pagination on the row number: memory
/// stays flat however many rows changed).
///
/// # Errors
/// The warehouse's error.
pub async fn page(
    conn: &mut Conn,
    spec: &SyncSpec,
    after: u64,
    limit: usize,
) -> anyhow::Result<Vec<Change>> {
    let changes = changes_table(&spec.name);
    let rows = conn
        .query_strings(&format!(
            "select k, op, p, dest_id from {changes} where n > {after} order by n limit {limit}"
        ))
        .await
        .map_err(|e| db(e, &format!("sync {}: reading changes", spec.name)))?;
    let consts: Vec<(&String, &Value)> = spec
        .mapping
        .iter()
        .filter_map(|(f, s)| match s {
            FieldSource::Const(v) => Some((f, v)),
            FieldSource::Column(_) => None,
        })
        .collect();
    rows.into_iter()
        .map(|r| {
            let key = r.first().cloned().flatten().unwrap_or_default();
            let op = Op::parse(&r.get(1).cloned().flatten().unwrap_or_default());
            let mut fields = match r.get(2).cloned().flatten() {
                Some(p) => match serde_json::from_str::<Value>(&p) {
                    Ok(Value::Object(o)) => o,
                    _ => serde_json::Map::new(),
                },
                None => serde_json::Map::new(),
            };
            if op != Op::Remove {
                // Constants in mapping order, after the columns.
                for (f, v) in &consts {
                    fields.insert((*f).clone(), (*v).clone());
                }
                // Keep the mapping's field order.
                if !spec.mapping.is_empty() {
                    let mut ordered = serde_json::Map::new();
                    for (f, _) in &spec.mapping {
                        if let Some(v) = fields.remove(f) {
                            ordered.insert(f.clone(), v);
                        }
                    }
                    fields = ordered;
                }
            }
            let dest_id = r.get(3).cloned().flatten();
            Ok(Change {
                key,
                op,
                fields,
                dest_id,
            })
        })
        .collect()
}

/// Records what the destination confirmed and rejected.
///
/// # Errors
/// The warehouse's error (the run stops; the destination already has the rows, so the next
/// run sends them again: delivery is at least once, and destinations upsert by key).
pub async fn record(
    conn: &mut Conn,
    spec: &SyncSpec,
    positions: (u64, u64),
    ids: &[(&Change, String)],
    rejected: &[(&Change, String)],
) -> anyhow::Result<()> {
    let at = format!("sync {}: recording deliveries", spec.name);
    let snap = snapshot_table(spec);
    let changes = changes_table(&spec.name);
    let (a, b) = positions;
    // Every row of the page by position (numbers of our own), except the rejected keys (few,
    // as parameters).
    let keys: Vec<String> = rejected.iter().map(|(c, _)| c.key.clone()).collect();
    let not_rejected = if keys.is_empty() {
        String::new()
    } else {
        let ph: Vec<String> = (1..=keys.len()).map(|i| conn.placeholder(i)).collect();
        format!(" and k not in ({})", ph.join(", "))
    };
    conn.execute_params(
        &format!(
            "insert into {snap} (k, h, status, error, updated_at) select k, h, 'ok', null, current_timestamp from {changes} where n > {a} and n <= {b} and op <> 'remove'{not_rejected} on conflict (k) do update set h = excluded.h, status = 'ok', error = null, updated_at = excluded.updated_at"
        ),
        &keys,
    )
    .await
    .map_err(|e| db(e, &at))?;
    conn.execute_params(
        &format!(
            "delete from {snap} where k in (select k from {changes} where n > {a} and n <= {b} and op = 'remove'{not_rejected})"
        ),
        &keys,
    )
    .await
    .map_err(|e| db(e, &at))?;
    // Ids the destination gave the rows, for deleting them later.
    for (c, id) in ids {
        if c.op != Op::Remove {
            let sql = format!(
                "update {snap} set dest_id = {} where k = {}",
                conn.placeholder(1),
                conn.placeholder(2)
            );
            conn.execute_params(&sql, &[id.clone(), c.key.clone()])
                .await
                .map_err(|e| db(e, &at))?;
        }
    }
    for (c, err) in rejected {
        // A rejected add keeps no hash (so it is an add again next run); a rejected change or
        // removal keeps the last delivered hash.
        let sql = format!(
            "insert into {snap} (k, h, status, error, updated_at) values ({}, null, 'rejected', {}, current_timestamp) on conflict (k) do update set status = 'rejected', error = excluded.error, updated_at = excluded.updated_at",
            conn.placeholder(1),
            conn.placeholder(2)
        );
        conn.execute_params(&sql, &[c.key.clone(), err.clone()])
            .await
            .map_err(|e| db(e, &at))?;
    }
    Ok(())
}

/// The fields of a snapshot row in a state file.
const STATE_FIELDS: [&str; 4] = ["h", "status", "error", "dest_id"];

/// Above this many rows a file snapshot is slow to rewrite after every batch: say so.
const STATE_FILE_ROWS_WARN: usize = 100_000;

/// Loads a state-file snapshot (`{"sync": …, "rows": {key: {h, status, error, dest_id}}}`)
/// into the temporary snapshot table. Values go in as parameters; NULL travels as ''.
async fn load_state_file(
    conn: &mut Conn,
    snap: &str,
    path: &std::path::Path,
    at: &str,
) -> anyhow::Result<()> {
    let state = crate::state_store::read_state_file(path)?;
    let empty = serde_json::Map::new();
    let rows = match state.get("rows") {
        None => &empty,
        Some(Value::Object(r)) => r,
        Some(_) => {
            return Err(config_error(format!(
                "{at}: state file {}: `rows` must be an object; remove the file to send every row again",
                path.display()
            )))
        }
    };
    if rows.len() > STATE_FILE_ROWS_WARN {
        tracing::warn!(
            "{at}: the snapshot in {} holds {} rows; `snapshot: warehouse` (the default) scales better",
            path.display(),
            rows.len()
        );
    }
    let all: Vec<(&String, &Value)> = rows.iter().collect();
    for chunk in all.chunks(200) {
        let mut params = Vec::with_capacity(chunk.len() * 5);
        let mut tuples = Vec::with_capacity(chunk.len());
        for (k, v) in chunk {
            let base = params.len();
            params.push((*k).clone());
            for f in STATE_FIELDS {
                params.push(match v.get(f) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                });
            }
            let ph = |i: usize| conn.placeholder(base + i);
            tuples.push(format!(
                "({}, nullif({}, ''), coalesce(nullif({}, ''), 'ok'), nullif({}, ''), nullif({}, ''), null)",
                ph(1),
                ph(2),
                ph(3),
                ph(4),
                ph(5)
            ));
        }
        conn.execute_params(
            &format!("insert into {snap} values {}", tuples.join(", ")),
            &params,
        )
        .await
        .map_err(|e| {
            db(
                e,
                &format!("{at}: loading the snapshot from {}", path.display()),
            )
        })?;
    }
    Ok(())
}

/// With `snapshot: state`, writes the snapshot table to the state file (sorted by key, so it
/// diffs cleanly), replacing it atomically. Without, nothing to do.
///
/// # Errors
/// The warehouse's error, or the file cannot be written.
pub async fn save_state(conn: &mut Conn, spec: &SyncSpec) -> anyhow::Result<()> {
    let Some(path) = &spec.state_file else {
        return Ok(());
    };
    let at = format!("sync {}: saving the snapshot", spec.name);
    let rows = conn
        .query_strings(&format!(
            "select k, h, status, error, dest_id from {} order by k",
            snapshot_table(spec)
        ))
        .await
        .map_err(|e| db(e, &at))?;
    let mut out = serde_json::Map::new();
    for r in rows {
        let mut it = r.into_iter();
        let Some(Some(k)) = it.next() else { continue };
        let mut o = serde_json::Map::new();
        for (f, v) in STATE_FIELDS.iter().zip(it) {
            if let Some(v) = v {
                o.insert((*f).to_string(), Value::String(v));
            }
        }
        out.insert(k, Value::Object(o));
    }
    let doc = serde_json::json!({"sync": spec.name, "rows": out});
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("{at}: creating {}: {e}", dir.display()))?;
    }
    crate::state_store::write_atomic(path, crate::singer::state::to_pretty(&doc).as_bytes())
        .map_err(|e| anyhow::anyhow!("{at}: writing {}: {e}", path.display()))
}

/// Drops the change set.
pub async fn finish(conn: &mut Conn, spec: &SyncSpec) {
    let _ = conn
        .execute(&format!(
            "drop table if exists {}",
            changes_table(&spec.name)
        ))
        .await;
}
