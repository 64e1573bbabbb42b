//! The DuckDB loader: DDL from the planned columns, Arrow batches appended to a staging table,
//! merge (dedupe + upsert, or append), ACTIVATE_VERSION and the state table, one transaction
//! per commit.

use std::collections::HashSet;

use anyhow::{anyhow, bail, Context};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use duckdb::Connection;
use serde_json::Value;

use super::{DuckDbTargetConfig, Nested};
use crate::schema::scan::FieldSpans;
use crate::schema::ColumnType;
use crate::singer::{ActivateVersionMessage, RecordMessage, SchemaMessage, StreamMap};
use crate::sql::{qualified, quote_ident};
use crate::targets::arrow::{self as farrow, BatchBuilder, SEQ};
use crate::targets::names::{fold, table_name};
use crate::targets::table::{
    self, record_key_text, Change, PlanOptions, PlannedCol, Versions, BATCHED_AT, DELETED_AT,
    TABLE_VERSION,
};
use crate::targets::Recovered;

#[derive(Debug)]
struct Col {
    planned: PlannedCol,
    /// The DuckDB type of the table column.
    ty: String,
}

#[derive(Debug)]
struct DuckStream {
    table: String,
    cols: Vec<Col>,
    key_cols: Vec<String>,
    keys: Vec<String>,
    batch: BatchBuilder,
    seq: i64,
    staging: Option<String>,
    /// Rows appended to staging and not merged yet.
    staged: u64,
    /// Bytes of records appended to staging and not merged yet.
    staged_bytes: u64,
    versions: Versions,
    bytes: u64,
    /// Whether batches can go straight into the table, skipping staging and the merge.
    direct: Direct,
}

/// Batches are appended straight into a stream's table while that cannot conflict: the table was
/// empty when this run first flushed the stream, and no key has come twice since (tracked by
/// hash; a false alarm only sends the rest through staging). The first load of a table then
/// costs DuckDB one append instead of an append, a copy and a merge.
#[derive(Debug, Default)]
enum Direct {
    /// Not known until the first flush.
    #[default]
    Undecided,
    /// Straight in; the keys appended so far (none for a stream without keys).
    Keys(Seen),
    /// Through staging and the merge.
    Off,
}

/// Key hashes tracked for straight appends at most (about 16 bytes each); beyond it, batches
/// go through staging, so memory stays flat however long the table.
const DIRECT_KEYS_MAX: usize = 1_000_000;

/// Runs of consecutive integer keys tracked at most (ids that arrive in order take one run
/// however many they are; keys in no order would take a run each).
const DIRECT_RUNS_MAX: usize = 65_536;

/// The keys appended straight so far: one integer key column as runs of consecutive values,
/// anything else as hashes.
#[derive(Debug, Default)]
struct Seen {
    /// Run start → run end (inclusive).
    runs: std::collections::BTreeMap<i64, i64>,
    hashes: KeySet,
}

impl Seen {
    /// Adds `k`; false when it was there already.
    fn insert_int(&mut self, k: i64) -> bool {
        let before = self.runs.range(..=k).next_back().map(|(s, e)| (*s, *e));
        if let Some((_, e)) = before {
            if e >= k {
                return false;
            }
        }
        let after = k
            .checked_add(1)
            .and_then(|n| self.runs.get(&n).map(|e| (n, *e)));
        match (before, after) {
            (Some((s, e)), Some((n, ne))) if e.checked_add(1) == Some(k) => {
                self.runs.remove(&n);
                self.runs.insert(s, ne);
            }
            (Some((s, e)), _) if e.checked_add(1) == Some(k) => {
                self.runs.insert(s, k);
            }
            (_, Some((n, ne))) => {
                self.runs.remove(&n);
                self.runs.insert(k, ne);
            }
            _ => {
                self.runs.insert(k, k);
            }
        }
        true
    }
}

/// Whether `batch` can be appended straight into the table; turns `direct` off for good when
/// it cannot (a key seen before, or too many keys to track).
fn direct_ok(direct: &mut Direct, batch: &RecordBatch, key_cols: &[String]) -> bool {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    let Direct::Keys(seen) = direct else {
        return false;
    };
    if key_cols.is_empty() {
        return true;
    }
    let ints = match key_cols {
        [k] => batch
            .column_by_name(k)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .filter(|a| a.null_count() == 0),
        _ => None,
    };
    let ok = match ints {
        Some(a) if seen.hashes.is_empty() => {
            a.values().iter().all(|k| seen.insert_int(*k)) && seen.runs.len() <= DIRECT_RUNS_MAX
        }
        _ => {
            seen.runs.is_empty()
                && seen.hashes.len() + batch.num_rows() <= DIRECT_KEYS_MAX
                && key_hashes(batch, key_cols)
                    .is_some_and(|hashes| hashes.into_iter().all(|h| seen.hashes.insert(h)))
        }
    };
    if !ok {
        tracing::debug!(
            "A key repeats (or too many to track): the rest goes through staging and the merge."
        );
        *direct = Direct::Off;
    }
    ok
}

/// A hash of each row's key values, or None for a key column of a type not hashed here.
fn key_hashes(batch: &RecordBatch, key_cols: &[String]) -> Option<Vec<u64>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    use std::hash::BuildHasher;
    let cols: Vec<&dyn Array> = key_cols
        .iter()
        .map(|k| batch.column_by_name(k).map(|c| c.as_ref()))
        .collect::<Option<_>>()?;
    if !cols
        .iter()
        .all(|c| matches!(c.data_type(), DataType::Int64 | DataType::Utf8))
    {
        return None;
    }
    // Fixed keys: the same values hash the same in every batch of the run.
    let strings =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    Some(
        (0..batch.num_rows())
            .map(|row| {
                cols.iter().fold(0x9e37_79b9_7f4a_7c15u64, |acc, c| {
                    let v = if c.is_null(row) {
                        0
                    } else if let Some(a) = c.as_primitive_opt::<Int64Type>() {
                        a.value(row) as u64
                    } else {
                        strings.hash_one(c.as_string::<i32>().value(row))
                    };
                    mix(acc ^ v)
                })
            })
            .collect(),
    )
}

/// splitmix64's finalizer: spreads an integer's bits over the whole hash.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key hashes are hashes already: the set uses them as they are.
#[derive(Default, Clone, Copy)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeySet = HashSet<u64, std::hash::BuildHasherDefault<Prehashed>>;

/// The `duckdb` target.
pub struct DuckDbTarget {
    cfg: DuckDbTargetConfig,
    conn: Connection,
    schema: String,
    /// The database file's catalog name (its file stem), to qualify every table with: a
    /// schema named like the file (`shop` in `shop.duckdb`) is otherwise ambiguous to DuckDB.
    catalog: String,
    streams: StreamMap<DuckStream>,
    in_txn: bool,
    staging_seq: u64,
    scope: String,
    received_at: i64,
    quarantine: bool,
}

impl std::fmt::Debug for DuckDbTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DuckDbTarget")
            .field("path", &self.cfg.path)
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

/// Runs DuckDB work (synchronous, CPU-bound) without stalling the other tasks of the runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// `"catalog"."schema"."name"`: fully qualified, so a schema named like the database file's
/// catalog is not ambiguous.
fn full_name(catalog: &str, schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(catalog), qualified(schema, name))
}

/// Appends a batch (to staging or straight to the table) and flushes it into the transaction.
fn append(
    app: &mut duckdb::Appender<'_>,
    batch: RecordBatch,
    stream: &str,
    qt: &str,
) -> anyhow::Result<()> {
    app.append_record_batch(batch)
        .and_then(|()| app.flush())
        .map_err(|e| {
            anyhow!("stream {stream:?}: appending a batch for {qt} failed: {e}; nothing of this batch was committed")
        })
}

/// The DuckDB type of an Arrow type (as the appender maps it).
fn duck_type(dt: &DataType) -> String {
    match dt {
        DataType::Int64 => "BIGINT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMPTZ".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Time64(_) => "TIME".into(),
        DataType::Struct(fields) => format!(
            "STRUCT({})",
            fields
                .iter()
                .map(|f| format!("{} {}", quote_ident(f.name()), duck_type(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        DataType::List(item) => format!("{}[]", duck_type(item.data_type())),
        _ => "VARCHAR".into(),
    }
}

/// The logical type of an existing DuckDB column, for evolution.
fn logical(duck: &str) -> Option<ColumnType> {
    let d = duck.to_ascii_uppercase();
    Some(match d.as_str() {
        "BIGINT" | "INTEGER" | "SMALLINT" | "TINYINT" | "HUGEINT" | "UBIGINT" | "UINTEGER" => {
            ColumnType::Integer
        }
        "DOUBLE" | "FLOAT" | "REAL" => ColumnType::Number,
        "BOOLEAN" => ColumnType::Boolean,
        "VARCHAR" => ColumnType::String { max_length: None },
        "TIMESTAMP WITH TIME ZONE" | "TIMESTAMPTZ" | "TIMESTAMP" => ColumnType::DateTime,
        "DATE" => ColumnType::Date,
        "TIME" => ColumnType::Time,
        "JSON" => ColumnType::Json,
        t if t.starts_with("DECIMAL(") => {
            let inner = t.trim_start_matches("DECIMAL(").trim_end_matches(')');
            let (p, s) = inner.split_once(',')?;
            ColumnType::Decimal {
                precision: p.trim().parse().ok(),
                scale: s.trim().parse().ok(),
            }
        }
        t if t.starts_with("STRUCT") || t.ends_with(']') => ColumnType::Json,
        _ => return None,
    })
}

impl DuckDbTarget {
    /// Opens (or creates) the database file.
    ///
    /// # Errors
    /// A config error for a bad config; the file cannot be opened (locked by another process,
    /// not a DuckDB file).
    pub fn new(config: &Value, scope: Option<&str>) -> anyhow::Result<DuckDbTarget> {
        let cfg = DuckDbTargetConfig::from_value(config)?;
        if let Some(dir) = std::path::Path::new(&cfg.path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the folder of {}", cfg.path))?;
        }
        let conn = Connection::open(&cfg.path).map_err(|e| {
            anyhow!(
                "target duckdb: cannot open {}: {e}; if another program (a duckdb shell, a notebook) has it open, close it \
                 and run again",
                cfg.path
            )
        })?;
        if let Some(t) = cfg.threads {
            conn.execute_batch(&format!("SET threads = {t}"))?;
        }
        if let Some(m) = &cfg.memory_limit {
            conn.execute_batch(&format!(
                "SET memory_limit = {}",
                crate::sql::quote_literal(m)
            ))
            .context("memory_limit")?;
        }

        let schema = cfg
            .schema
            .clone()
            .or_else(|| scope.map(fold))
            .unwrap_or_else(|| "main".into());
        let catalog: String = conn
            .query_row("SELECT current_database()", [], |r| r.get(0))
            .context("reading the database's catalog name")?;
        Ok(DuckDbTarget {
            cfg,
            conn,
            schema,
            catalog,
            streams: StreamMap::default(),
            in_txn: false,
            staging_seq: 0,
            scope: scope.unwrap_or("pipe").to_owned(),
            received_at: chrono::Utc::now().timestamp_micros(),
            quarantine: false,
        })
    }

    /// `"catalog"."schema"."name"`.
    fn qualified(&self, name: &str) -> String {
        full_name(&self.catalog, &self.schema, name)
    }

    /// `"catalog"."schema"`.
    fn schema_ref(&self) -> String {
        qualified(&self.catalog, &self.schema)
    }

    fn begin(&mut self) -> anyhow::Result<()> {
        if !self.in_txn {
            self.conn
                .execute_batch("BEGIN TRANSACTION")
                .context("BEGIN")?;
            self.in_txn = true;
        }
        Ok(())
    }

    fn existing_columns(&self, table: &str) -> anyhow::Result<Option<Vec<(String, String)>>> {
        let mut stmt = self.conn.prepare(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        )?;
        let cols: Vec<(String, String)> = stmt
            .query_map([&self.schema, table], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok((!cols.is_empty()).then_some(cols))
    }

    /// Creates or evolves the stream's table (in the open transaction).
    ///
    /// # Errors
    /// A stream without keys when they are required, a change that cannot be made safely, SQL
    /// errors.
    pub async fn schema(&mut self, msg: &SchemaMessage) -> anyhow::Result<()> {
        blocking(|| self.schema_sync(msg))
    }

    fn schema_sync(&mut self, msg: &SchemaMessage) -> anyhow::Result<()> {
        let plan = table::plan(
            msg,
            PlanOptions {
                metadata: self.cfg.add_metadata_columns,
                flatten: self.cfg.data_flattening_max_level,
                primary_key_required: self.cfg.primary_key_required,
            },
        )?;
        // Rows buffered under the old schema are merged first, in the old layout.
        if self
            .streams
            .get(&msg.stream)
            .is_some_and(|s| s.batch.rows() > 0 || s.staging.is_some())
        {
            self.flush_stream(&msg.stream, true)?;
        }
        let nested = self.cfg.nested == Nested::Struct;
        let mut cols: Vec<Col> = plan
            .cols
            .into_iter()
            .map(|c| {
                let dt = farrow::data_type(&c, nested);
                let ty = match (&c.ty, &dt) {
                    (ColumnType::Json, DataType::Utf8) => "JSON".to_owned(),
                    _ => duck_type(&dt),
                };
                Col { planned: c, ty }
            })
            .collect();
        let key_cols = plan.key_cols;
        let table = table_name(&msg.stream);
        let qt = self.qualified(&table);
        self.begin()?;
        self.conn
            .execute_batch(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                self.schema_ref()
            ))
            .with_context(|| format!("creating schema {:?}", self.schema))?;
        match self.existing_columns(&table)? {
            None => {
                let create = table::create_table_sql(
                    &qt,
                    cols.iter()
                        .map(|c| (c.planned.name.as_str(), c.ty.as_str())),
                    &key_cols,
                    // No primary key: DuckDB keeps a key's index in memory (about 40 bytes a
                    // row), which outgrows `memory_limit` at millions of rows; a merge deletes
                    // the batch's keys and inserts instead.
                    false,
                    self.cfg.add_metadata_columns.then(|| {
                        format!(
                            "{} TIMESTAMPTZ DEFAULT current_timestamp",
                            quote_ident(BATCHED_AT)
                        )
                    }),
                );
                self.conn
                    .execute_batch(&create)
                    .with_context(|| format!("creating table {qt}"))?;
                tracing::info!(stream = %msg.stream, table = %qt, "Table created.");
            }
            Some(existing) => {
                for c in &mut cols {
                    match existing.iter().find(|(n, _)| *n == c.planned.name) {
                        None => {
                            self.conn
                                .execute_batch(&format!(
                                    "ALTER TABLE {qt} ADD COLUMN {} {}",
                                    quote_ident(&c.planned.name),
                                    c.ty
                                ))
                                .with_context(|| {
                                    format!("adding column {:?} to {qt}", c.planned.name)
                                })?;
                            tracing::info!(table = %qt, column = %c.planned.name, ty = %c.ty, "Column added.");
                        }
                        // DuckDB spells types without the quotes ferry puts around field names.
                        Some((_, have))
                            if have
                                .replace('"', "")
                                .eq_ignore_ascii_case(&c.ty.replace('"', "")) => {}
                        // Nested types (STRUCT, LIST, JSON) change when the schema's objects do:
                        // altered in place only if every existing value survives the change.
                        Some((_, have))
                            if logical(have) == Some(ColumnType::Json)
                                && c.planned.ty == ColumnType::Json =>
                        {
                            let col = quote_ident(&c.planned.name);
                            let lost: i64 = self
                                .conn
                                .query_row(
                                    &format!(
                                        "SELECT count(*) FROM {qt} WHERE {col} IS NOT NULL \
                                         AND TRY_CAST(TRY_CAST({col} AS {new}) AS {have}) IS DISTINCT FROM {col}",
                                        new = c.ty
                                    ),
                                    [],
                                    |r| r.get(0),
                                )
                                .with_context(|| {
                                    format!("checking column {:?} of {qt} against {}", c.planned.name, c.ty)
                                })?;
                            if lost > 0 {
                                bail!(
                                    "table {qt}, column {:?} is {have} but the schema now says {}; {lost} existing values would \
                                     lose fields. Rename or drop the column and run again, or load nested data as JSON \
                                     (nested: json)",
                                    c.planned.name,
                                    c.ty
                                );
                            }
                            self.conn
                                .execute_batch(&format!(
                                    "ALTER TABLE {qt} ALTER COLUMN {col} SET DATA TYPE {}",
                                    c.ty
                                ))
                                .with_context(|| {
                                    format!(
                                        "changing column {:?} of {qt} from {have} to {}",
                                        c.planned.name, c.ty
                                    )
                                })?;
                            tracing::info!(table = %qt, column = %c.planned.name, from = %have, to = %c.ty, "Nested column changed in place.");
                        }
                        Some((_, have)) => {
                            let Some(h) = logical(have) else {
                                // A type ferry does not reason about: DuckDB casts each value.
                                c.ty.clone_from(have);
                                continue;
                            };
                            match table::evolve(&qt, &c.planned.name, &h, &c.planned.ty)? {
                                Change::Keep => {
                                    c.planned.ty = h;
                                    c.ty.clone_from(have);
                                }
                                Change::Widen(to) => {
                                    let mut wide = c.planned.clone();
                                    wide.ty = to;
                                    let dt = farrow::data_type(&wide, nested);
                                    let to_ty = match (&wide.ty, &dt) {
                                        (ColumnType::Json, DataType::Utf8) => "JSON".to_owned(),
                                        _ => duck_type(&dt),
                                    };
                                    self.conn
                                        .execute_batch(&format!(
                                            "ALTER TABLE {qt} ALTER COLUMN {} SET DATA TYPE {to_ty}",
                                            quote_ident(&c.planned.name)
                                        ))
                                        .with_context(|| {
                                            format!(
                                                "widening column {:?} of {qt} from {have} to {to_ty}",
                                                c.planned.name
                                            )
                                        })?;
                                    tracing::info!(table = %qt, column = %c.planned.name, from = %have, to = %to_ty, "Column widened in place.");
                                    c.planned = wide;
                                    c.ty = to_ty;
                                }
                            }
                        }
                    }
                }
                if self.cfg.add_metadata_columns && !existing.iter().any(|(n, _)| n == BATCHED_AT) {
                    self.conn.execute_batch(&format!(
                        "ALTER TABLE {qt} ADD COLUMN {} TIMESTAMPTZ DEFAULT current_timestamp",
                        quote_ident(BATCHED_AT)
                    ))?;
                }
            }
        }
        let planned: Vec<PlannedCol> = cols.iter().map(|c| c.planned.clone()).collect();
        let batch = BatchBuilder::new(&planned, nested, true, self.received_at)?;
        let prev = self.streams.remove(&msg.stream);
        self.streams.insert(
            msg.stream.clone(),
            DuckStream {
                table,
                cols,
                key_cols,
                keys: msg.key_properties.clone(),
                batch,
                seq: prev.as_ref().map_or(0, |p| p.seq),
                staging: None,
                staged: 0,
                staged_bytes: 0,
                versions: prev
                    .as_ref()
                    .map(|p| p.versions.clone())
                    .unwrap_or_default(),
                bytes: prev.map_or(0, |p| p.bytes),
                direct: Direct::Undecided,
            },
        );
        Ok(())
    }

    /// Adds one record to the stream's batch.
    ///
    /// # Errors
    /// A value that does not fit its column, with stream, key, column and value.
    pub async fn record(
        &mut self,
        msg: &RecordMessage,
        fields: Option<&FieldSpans>,
    ) -> anyhow::Result<()> {
        let s = self
            .streams
            .get_mut(&msg.stream)
            .ok_or_else(|| anyhow!("no SCHEMA seen for stream {:?}", msg.stream))?;
        s.versions.record(msg);
        let flat = table::flat_record(msg, self.cfg.data_flattening_max_level)?;
        s.seq += 1;
        if let Err(e) = s.batch.push(msg, flat.as_ref(), fields, s.seq) {
            let key = record_key_text(&s.keys, msg);
            if self.quarantine {
                let reason = format!("column {:?}: value {} has {}", e.column, e.value, e.why);
                let stream = msg.stream.clone();
                let text = msg
                    .record
                    .to_map()
                    .map(|m| Value::Object(m.into_owned()).to_string());
                let row = text.unwrap_or_default();
                return blocking(|| self.reject(&stream, &reason, &row));
            }
            bail!(
                "stream {:?}{key}, column {:?}: value {} has {}; clean it at the source, or run with --on-invalid quarantine \
                 to set such records aside",
                msg.stream,
                e.column,
                e.value,
                e.why
            );
        }
        if s.batch.rows() as u64 >= self.cfg.batch_size_rows
            || s.batch.bytes() as u64 >= self.cfg.batch_size_bytes
        {
            let stream = msg.stream.clone();
            // Staging is merged every ten batches too, so a long transaction (one commit for a
            // whole load) keeps memory bounded.
            let merge = s.staged + s.batch.rows() as u64 >= 10 * self.cfg.batch_size_rows
                || s.staged_bytes + s.batch.bytes() as u64 >= 4 * self.cfg.batch_size_bytes;
            blocking(|| self.flush_stream(&stream, merge))?;
        }
        Ok(())
    }

    /// `--on-invalid quarantine`: keeps a record that does not fit in `_ferry_rejects`.
    fn reject(&mut self, stream: &str, reason: &str, row: &str) -> anyhow::Result<()> {
        self.begin()?;
        let rejects = self.qualified("_ferry_rejects");
        self.conn.execute_batch(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {rejects} (stream VARCHAR NOT NULL, reason VARCHAR NOT NULL, \
             row_text VARCHAR NOT NULL, rejected_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)",
            self.schema_ref()
        ))?;
        self.conn.execute(
            &format!("INSERT INTO {rejects} (stream, reason, row_text) VALUES (?, ?, ?)"),
            [stream, reason, row],
        )?;
        tracing::warn!(stream, reason, table = %rejects, "A record that does not fit was set aside.");
        Ok(())
    }

    /// Appends the batch to the stream's staging table; with `merge`, merges staging into the
    /// table too. Everything stays inside the open transaction.
    fn flush_stream(&mut self, stream: &str, merge: bool) -> anyhow::Result<()> {
        self.begin()?;
        let Some(s) = self.streams.get_mut(stream) else {
            return Ok(());
        };
        let qt = full_name(&self.catalog, &self.schema, &s.table);
        if s.batch.rows() > 0 {
            s.bytes += s.batch.bytes() as u64;
            let rows = s.batch.rows() as u64;
            let bytes = s.batch.bytes() as u64;
            let batch = s
                .batch
                .finish()
                .with_context(|| format!("stream {stream:?}: building a batch for {qt}"))?;
            if matches!(s.direct, Direct::Undecided) {
                // Only an empty table, before anything was staged for it in this run.
                let empty: bool = s.staging.is_none()
                    && self
                        .conn
                        .query_row(&format!("SELECT NOT EXISTS (FROM {qt})"), [], |r| r.get(0))
                        .with_context(|| format!("looking into {qt}"))?;
                s.direct = if empty {
                    tracing::debug!(stream, table = %qt, "The table is empty: batches go straight in while no key repeats.");
                    Direct::Keys(Seen::default())
                } else {
                    Direct::Off
                };
            }
            if direct_ok(&mut s.direct, &batch, &s.key_cols) {
                let names: Vec<&str> = s.cols.iter().map(|c| c.planned.name.as_str()).collect();
                let seq = batch.schema().index_of(SEQ)?;
                let cols: Vec<usize> = (0..batch.num_columns()).filter(|i| *i != seq).collect();
                let batch = batch.project(&cols)?;
                let mut app = self
                    .conn
                    .appender_with_columns_to_catalog_and_db(
                        &s.table,
                        &self.catalog,
                        &self.schema,
                        &names,
                    )
                    .with_context(|| format!("opening an appender on {qt}"))?;
                append(&mut app, batch, stream, &qt)?;
            } else {
                let stg = match &s.staging {
                    Some(n) => n.clone(),
                    None => {
                        self.staging_seq += 1;
                        let n = format!("_ferry_stg_{}", self.staging_seq);
                        let defs: Vec<String> = batch
                            .schema()
                            .fields()
                            .iter()
                            .map(|f| {
                                format!("{} {}", quote_ident(f.name()), duck_type(f.data_type()))
                            })
                            .collect();
                        self.conn
                            .execute_batch(&format!(
                                "CREATE TEMP TABLE {} ({})",
                                quote_ident(&n),
                                defs.join(", ")
                            ))
                            .context("creating a staging table")?;
                        s.staging = Some(n.clone());
                        n
                    }
                };
                s.staged += rows;
                s.staged_bytes += bytes;
                let mut app = self
                    .conn
                    .appender(&stg)
                    .context("opening an appender on the staging table")?;
                append(&mut app, batch, stream, &qt)?;
            }
        }
        if merge {
            if let Some(stg) = s.staging.take() {
                let list = table::ident_list(s.cols.iter().map(|c| c.planned.name.as_str()));
                let stg_q = quote_ident(&stg);
                let sql = if s.key_cols.is_empty() {
                    format!("INSERT INTO {qt} ({list}) SELECT {list} FROM {stg_q} ORDER BY {SEQ}")
                } else {
                    let keys = table::ident_list(s.key_cols.iter().map(String::as_str));
                    // Within a batch the last record of a key wins. Most batches repeat no key:
                    // a distinct count (a hash aggregate) is cheaper than the window then. An
                    // empty table (the first load) has no keys to delete.
                    let (repeats, empty): (bool, bool) = self
                        .conn
                        .query_row(
                            &format!(
                                "SELECT count(*) <> count(DISTINCT ({keys})), NOT EXISTS (FROM {qt}) FROM {stg_q}"
                            ),
                            [],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .context("counting keys in staging")?;
                    let dedupe = if repeats {
                        format!(
                            " QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {SEQ} DESC) = 1"
                        )
                    } else {
                        String::new()
                    };
                    // The batch's keys are deleted, then its rows inserted: the same result as
                    // an upsert, with no index (DuckDB pushes the batch's key range into the
                    // table scan, so only the row groups that can hold those keys are read).
                    // Tables made by earlier versions have a primary key; the delete leaves it
                    // nothing to conflict with.
                    let delete = if empty {
                        String::new()
                    } else {
                        let on = s
                            .key_cols
                            .iter()
                            .map(|k| {
                                let k = quote_ident(k);
                                format!("_t.{k} = _s.{k}")
                            })
                            .collect::<Vec<_>>()
                            .join(" AND ");
                        format!("DELETE FROM {qt} AS _t USING {stg_q} AS _s WHERE {on}; ")
                    };
                    format!("{delete}INSERT INTO {qt} ({list}) SELECT {list} FROM {stg_q}{dedupe}")
                };
                self.conn.execute_batch(&sql).map_err(|e| {
                    anyhow!("stream {stream:?}: merging a batch into {qt} failed: {e}; nothing of this batch was committed")
                })?;
                self.conn.execute_batch(&format!("DROP TABLE {stg_q}"))?;
                s.staged = 0;
                s.staged_bytes = 0;
            }
            if self.cfg.hard_delete && self.cfg.add_metadata_columns {
                self.conn.execute_batch(&format!(
                    "DELETE FROM {qt} WHERE {} IS NOT NULL",
                    quote_ident(DELETED_AT)
                ))?;
            }
        }
        Ok(())
    }

    /// Sets aside records whose values do not fit instead of failing the batch.
    pub fn set_quarantine(&mut self, on: bool) {
        self.quarantine = on;
    }

    /// Remembers an ACTIVATE_VERSION; applied at commit, after the version's records.
    pub fn activate_version(&mut self, msg: &ActivateVersionMessage) {
        if let Some(s) = self.streams.get_mut(&msg.stream) {
            s.versions.activate(msg.version);
        }
    }

    fn apply_activate(&mut self, stream: &str) -> anyhow::Result<()> {
        let Some(s) = self.streams.get_mut(stream) else {
            return Ok(());
        };
        let Some((v, seen)) = s.versions.take() else {
            return Ok(());
        };
        let qt = full_name(&self.catalog, &self.schema, &s.table);
        if !s.cols.iter().any(|c| c.planned.name == TABLE_VERSION) {
            tracing::info!(stream, "ACTIVATE_VERSION needs add_metadata_columns (the _sdc_table_version column); rows of older versions are kept.");
            return Ok(());
        }
        let ver = quote_ident(TABLE_VERSION);
        // Only once records of the version are in the table (see `Versions::take`).
        if !seen {
            let present: bool = self.conn.query_row(
                &format!("SELECT EXISTS (SELECT 1 FROM {qt} WHERE {ver} = ?)"),
                [v],
                |r| r.get(0),
            )?;
            if !present {
                return Ok(());
            }
        }
        let n = if self.cfg.hard_delete {
            self.conn.execute(
                &format!("DELETE FROM {qt} WHERE {ver} IS DISTINCT FROM ?"),
                [v],
            )?
        } else {
            let del = quote_ident(DELETED_AT);
            self.conn.execute(
                &format!(
                    "UPDATE {qt} SET {del} = current_timestamp WHERE {ver} IS DISTINCT FROM ? AND {del} IS NULL"
                ),
                [v],
            )?
        };
        tracing::info!(
            stream,
            version = v,
            rows = n,
            "Rows of older table versions removed."
        );
        Ok(())
    }

    fn state_table(&self) -> Option<String> {
        self.cfg
            .state_table
            .as_ref()
            .map(|t| self.qualified(&fold(t)))
    }

    /// Commits: appends what is buffered, merges, applies ACTIVATE_VERSION and the state table,
    /// then COMMIT.
    ///
    /// # Errors
    /// SQL errors; the transaction is then rolled back and nothing of it is visible.
    pub async fn commit(&mut self, state: Option<&Value>) -> anyhow::Result<()> {
        blocking(|| {
            let res = self.commit_sync(state);
            if res.is_err() && self.in_txn {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.in_txn = false;
            }
            res
        })
    }

    fn commit_sync(&mut self, state: Option<&Value>) -> anyhow::Result<()> {
        let work = self
            .streams
            .values()
            .any(|s| s.batch.rows() > 0 || s.staging.is_some() || s.versions.is_pending());
        let state_table = self.state_table();
        if !work && !self.in_txn && (state.is_none() || state_table.is_none()) {
            return Ok(());
        }
        self.begin()?;
        let names: Vec<String> = self.streams.keys().cloned().collect();
        for n in &names {
            self.flush_stream(n, true)?;
            self.apply_activate(n)?;
        }
        if let (Some(st), Some(qt)) = (state, state_table) {
            self.conn.execute_batch(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {qt} (pipeline VARCHAR PRIMARY KEY, state JSON NOT NULL, \
                 prev_state JSON, committed_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)",
                self.schema_ref()
            ))?;
            let prev: Option<String> = self
                .conn
                .query_row(
                    &format!("SELECT state::VARCHAR FROM {qt} WHERE pipeline = ?"),
                    [&self.scope],
                    |r| r.get(0),
                )
                .map(Some)
                .or_else(|e| match e {
                    duckdb::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })
                .context("reading the state table")?;
            // DELETE + INSERT rather than an upsert: DuckDB refuses to update a row twice in
            // one transaction through ON CONFLICT after a delete of the same key.
            self.conn.execute(
                &format!("DELETE FROM {qt} WHERE pipeline = ?"),
                [&self.scope],
            )?;
            self.conn
                .execute(
                    &format!("INSERT INTO {qt} (pipeline, state, prev_state) VALUES (?, ?, ?)"),
                    duckdb::params![&self.scope, st.to_string(), prev],
                )
                .context("writing the state table")?;
        }
        self.conn.execute_batch("COMMIT").context("COMMIT")?;
        self.in_txn = false;
        Ok(())
    }

    /// The state committed with the data, and the one before it.
    ///
    /// # Errors
    /// SQL errors other than a missing table.
    pub async fn recover(&self) -> anyhow::Result<Option<Recovered>> {
        let Some(qt) = self.state_table() else {
            return Ok(None);
        };
        let exists: bool = self.conn.query_row(
            "SELECT count(*) > 0 FROM information_schema.tables WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?",
            [&self.schema, &fold(self.cfg.state_table.as_deref().unwrap_or_default())],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(None);
        }
        let row: Option<(String, Option<String>)> = self
            .conn
            .query_row(
                &format!("SELECT state::VARCHAR, prev_state::VARCHAR FROM {qt} WHERE pipeline = ?"),
                [&self.scope],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                duckdb::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        let Some((state, prev)) = row else {
            return Ok(None);
        };
        Ok(Some(Recovered {
            state: serde_json::from_str(&state)?,
            prev: prev.map_or(Ok(crate::singer::state::empty()), |p| {
                serde_json::from_str(&p)
            })?,
        }))
    }

    /// Deletes this pipeline's row of the state table.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn forget_state(&mut self) -> anyhow::Result<()> {
        if self.recover().await?.is_none() {
            return Ok(());
        }
        if let Some(qt) = self.state_table() {
            self.conn.execute(
                &format!("DELETE FROM {qt} WHERE pipeline = ?"),
                [&self.scope],
            )?;
        }
        Ok(())
    }

    /// Bytes of records loaded for a stream.
    pub fn bytes_written(&self, stream: &str) -> u64 {
        self.streams.get(stream).map_or(0, |s| s.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn integer_keys_are_kept_as_runs_and_repeats_are_found() {
        let mut s = Seen::default();
        assert!((0..100_000).all(|k| s.insert_int(k)));
        assert_eq!(s.runs.len(), 1, "ids in order are one run");
        assert!(!s.insert_int(42));
        assert!(s.insert_int(200_000) && s.insert_int(199_999) && s.insert_int(100_000));
        assert_eq!(s.runs.len(), 2);
        // 100,001..199,998 joins the two runs into one.
        assert!((100_001..199_999).all(|k| s.insert_int(k)));
        assert_eq!(s.runs.len(), 1);
        assert!(!s.insert_int(150_000) && !s.insert_int(0) && !s.insert_int(200_000));
        assert!(s.insert_int(-5) && s.insert_int(i64::MAX) && !s.insert_int(i64::MAX));
        assert!(s.insert_int(i64::MIN) && !s.insert_int(i64::MIN));
    }
}
