//! The loader: connection, DDL from schemas, COPY text encoding, staging, merge, commit.

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use futures_util::SinkExt;
use serde_json::{Map, Value};
use tokio_postgres::Client;

use super::PostgresTargetConfig;
use crate::error::config_error;
use crate::schema::scan::{FieldSpans, FieldValue};
use crate::schema::ColumnType;
use crate::singer::{ActivateVersionMessage, Record, RecordMessage, SchemaMessage, StreamMap};
use crate::sql::{qualified, quote_ident};
use crate::targets::names::{fold, source_schema, table_name};
use crate::targets::table::{
    self, excerpt, flatten_record, record_key_text, Change, PlanOptions, Source, Versions,
    BATCHED_AT, DELETED_AT, TABLE_VERSION,
};
use crate::targets::Recovered;

#[derive(Debug, Clone)]
struct Col {
    name: String,
    /// The Postgres type.
    ty: String,
    logical: ColumnType,
    source: Source,
}

#[derive(Debug)]
struct PgStream {
    schema: String,
    table: String,
    cols: Vec<Col>,
    key_cols: Vec<String>,
    keys: Vec<String>,
    /// The batch being encoded: sealed pieces, then `buf`, the piece being written.
    pieces: Batch,
    buf: Vec<u8>,
    buffered: u64,
    staging: Option<String>,
    /// The table was created by this run: batches are first tried straight into it.
    fresh: bool,
    staged: u64,
    versions: Versions,
    bytes: u64,
    /// Index of the connection it loads on (0: the main one).
    conn: usize,
}

impl PgStream {
    /// Moves the piece being written into the batch.
    fn seal_piece(&mut self) {
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(COPY_PIECE_BYTES));
        self.pieces.push(Bytes::from(full));
    }

    /// The batch encoded so far, leaving the stream an empty one.
    fn take_batch(&mut self) -> Batch {
        if !self.buf.is_empty() {
            self.seal_piece();
        }
        std::mem::take(&mut self.pieces)
    }
}

/// A connection and its transaction.
struct Conn {
    client: std::sync::Arc<Client>,
    task: tokio::task::JoinHandle<()>,
    in_txn: bool,
    staging_seq: u64,
    /// A COPY straight into a table, sent in the background so the next batch is encoded
    /// while Postgres loads this one; settled before the connection's next statement.
    pending: Option<PendingCopy>,
    /// Batches a direct COPY gave back (a repeated key): they go the merge way, re-sent by
    /// their stream's next flush.
    returned: Vec<(String, Batch, u64)>,
}

/// COPY text in pieces of about [`COPY_PIECE_BYTES`], each row whole in one piece. A batch
/// grows piece by piece instead of in one buffer that doubles (and leaves the freed halves to
/// the allocator), and goes to the server piece by piece (the connection copies each message
/// into its write buffer, which keeps the size of the largest message).
#[derive(Debug, Clone, Default)]
struct Batch {
    pieces: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn push(&mut self, piece: Bytes) {
        self.len += piece.len();
        self.pieces.push(piece);
    }

    fn len(&self) -> usize {
        self.len
    }

    /// One buffer (quarantine's row-by-row search needs the rows in one place).
    fn contiguous(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.len);
        for p in &self.pieces {
            out.extend_from_slice(p);
        }
        Bytes::from(out)
    }
}

/// A direct COPY in flight, under the savepoint `ferry_direct`.
struct PendingCopy {
    stream: String,
    table: String,
    data: Batch,
    rows: u64,
    quarantine: bool,
    handle: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Conn {
    async fn open(cfg: &PostgresTargetConfig) -> anyhow::Result<Conn> {
        let (client, task) = crate::pg::connect(
            "target postgres",
            crate::pg::ConnParams {
                host: cfg.host.as_deref(),
                port: cfg.port,
                user: cfg.user.as_deref(),
                password: cfg.password.as_deref(),
                dbname: cfg.dbname.as_deref(),
                url: cfg.url.as_deref(),
                sslmode: cfg.sslmode.as_deref(),
                sslrootcert: cfg.sslrootcert.as_deref(),
                application_name: "ferry",
            },
        )
        .await?;
        Ok(Conn {
            client: std::sync::Arc::new(client),
            task,
            in_txn: false,
            staging_seq: 0,
            pending: None,
            returned: Vec::new(),
        })
    }

    /// Waits for the COPY in flight: keeps it (RELEASE), or, when it repeats a key, rolls it
    /// back to its savepoint and keeps the batch for the merge way.
    async fn settle(&mut self) -> anyhow::Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let res = p
            .handle
            .await
            .map_err(|e| anyhow!("stream {:?}: a COPY task failed: {e}", p.stream))?;
        match res {
            Ok(()) => {
                self.client
                    .batch_execute("RELEASE SAVEPOINT ferry_direct")
                    .await?;
            }
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
                    || (p.quarantine && is_data_error(&e)) =>
            {
                self.client
                    .batch_execute(
                        "ROLLBACK TO SAVEPOINT ferry_direct; RELEASE SAVEPOINT ferry_direct",
                    )
                    .await?;
                tracing::debug!(stream = %p.stream, "A batch repeats keys; merging from now on.");
                self.returned.push((p.stream, p.data, p.rows));
            }
            Err(e) => return Err(copy_error(&p.stream, &p.table, &e)),
        }
        Ok(())
    }

    /// Hands a stream the batches its direct COPYs gave back, in front of what it buffered.
    fn take_returned(&mut self, s: &mut PgStream, stream: &str) {
        let mut i = 0;
        while i < self.returned.len() {
            if self.returned[i].0 == stream {
                let (_, data, rows) = self.returned.remove(i);
                // The returned rows go first, then what was encoded since.
                let later = std::mem::replace(&mut s.pieces, data.clone());
                for p in later.pieces {
                    s.pieces.push(p);
                }
                s.buffered += rows;
                s.bytes = s.bytes.saturating_sub(data.len() as u64);
                s.fresh = false;
            } else {
                i += 1;
            }
        }
    }

    async fn begin(&mut self) -> anyhow::Result<()> {
        self.settle().await?;
        if !self.in_txn {
            self.client.batch_execute("BEGIN").await.context("BEGIN")?;
            self.in_txn = true;
        }
        Ok(())
    }

    async fn commit(&mut self) -> anyhow::Result<()> {
        self.settle().await?;
        if let Some((stream, ..)) = self.returned.first() {
            bail!("stream {stream:?}: a batch was not loaded before the commit");
        }
        if self.in_txn {
            self.client
                .batch_execute("COMMIT")
                .await
                .context("COMMIT")?;
            self.in_txn = false;
        }
        Ok(())
    }
}

/// The `postgres` target.
pub struct PostgresTarget {
    cfg: PostgresTargetConfig,
    /// `conns[0]` is the main connection: append-only streams, DDL of schemas, the state table.
    /// Keyed streams get connections of their own, up to the configured parallelism.
    conns: Vec<Conn>,
    parallel: usize,
    streams: StreamMap<PgStream>,
    /// Schemas known to exist (made outside transactions when loading in parallel).
    made_schemas: std::collections::HashSet<String>,
    scope: String,
    received_at: String,
    /// `--on-invalid quarantine`: rows the database rejects go to `_ferry_rejects`.
    quarantine: bool,
}

impl std::fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTarget")
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresTarget {
    fn drop(&mut self) {
        // An open transaction dies with the connection: nothing uncommitted survives.
        for c in &self.conns {
            c.task.abort();
        }
    }
}

/// The Postgres type for a logical column type.
fn pg_type(ty: &ColumnType, hint: Option<&str>, double: bool) -> String {
    if let Some(h) = hint.filter(|h| *ty != ColumnType::Json && is_safe_type(h)) {
        return h.to_lowercase();
    }
    match ty {
        ColumnType::Integer => "bigint".into(),
        ColumnType::Number if double => "double precision".into(),
        ColumnType::Number => "numeric".into(),
        ColumnType::Decimal {
            precision: Some(p),
            scale,
        } => format!("numeric({p},{})", scale.unwrap_or(0)),
        ColumnType::Decimal { .. } => "numeric".into(),
        ColumnType::Boolean => "boolean".into(),
        ColumnType::String { .. } => "text".into(),
        ColumnType::DateTime => "timestamp with time zone".into(),
        ColumnType::Date => "date".into(),
        ColumnType::Time => "time without time zone".into(),
        ColumnType::Json => "jsonb".into(),
    }
}

/// An `x-sql-datatype` hint is used only when it names a built-in scalar type (`uuid`,
/// `numeric(12,2)`, `inet`, `interval`, …): it goes into DDL, and a custom type or an array
/// type of the source may not exist here or take the JSON form of the value.
fn is_safe_type(h: &str) -> bool {
    const BUILTIN: [&str; 29] = [
        "smallint",
        "integer",
        "bigint",
        "real",
        "double precision",
        "numeric",
        "decimal",
        "character varying",
        "varchar",
        "character",
        "char",
        "text",
        "boolean",
        "date",
        "time without time zone",
        "time with time zone",
        "time",
        "timestamp without time zone",
        "timestamp with time zone",
        "timestamp",
        "interval",
        "uuid",
        "inet",
        "cidr",
        "macaddr",
        "macaddr8",
        "money",
        "bytea",
        "xml",
    ];
    let h = h.trim().to_ascii_lowercase();
    let base = h.split('(').next().unwrap_or("").trim();
    let args_ok = h[base.len()..].trim().is_empty()
        || h[base.len()..]
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .is_some_and(|a| {
                a.chars()
                    .all(|c| c.is_ascii_digit() || c == ',' || c == ' ')
            });
    BUILTIN.contains(&base) && args_ok
}

/// The logical type of an existing Postgres column, for widening decisions.
fn logical(pg: &str) -> Option<ColumnType> {
    Some(match pg {
        "bigint" | "integer" | "smallint" => ColumnType::Integer,
        "double precision" | "real" => ColumnType::Number,
        t if t.starts_with("numeric") => ColumnType::Number,
        "boolean" => ColumnType::Boolean,
        "text" => ColumnType::String { max_length: None },
        t if t.starts_with("character") => ColumnType::String { max_length: None },
        "timestamp with time zone" | "timestamp without time zone" => ColumnType::DateTime,
        "date" => ColumnType::Date,
        t if t.starts_with("time") => ColumnType::Time,
        "jsonb" | "json" => ColumnType::Json,
        _ => return None,
    })
}

/// How an existing column of Postgres type `have` takes values of logical type `want` (shared
/// rule: [`table::evolve`]): `None` to keep it, `Some(type)` to alter it in place.
///
/// # Errors
/// When no change keeps every value (e.g. text to jsonb), with what to do.
fn evolve(
    table: &str,
    col: &str,
    have: &str,
    want: &ColumnType,
    want_pg: &str,
    double: bool,
) -> anyhow::Result<Option<String>> {
    if have == want_pg {
        return Ok(None);
    }
    // A type ferry does not reason about (uuid, inet, …) is kept: Postgres checks each value.
    let Some(h) = logical(have) else {
        return Ok(None);
    };
    Ok(match table::evolve(table, col, &h, want)? {
        Change::Keep => None,
        Change::Widen(t) => Some(pg_type(&t, None, double)),
    })
}

/// Appends a value to a COPY text row.
fn push_text(buf: &mut Vec<u8>, s: &str) -> Result<(), &'static str> {
    if s.as_bytes().contains(&0) {
        return Err("a NUL byte (\\u0000), which Postgres text cannot hold");
    }
    let mut start = 0;
    let b = s.as_bytes();
    for (i, c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        buf.extend_from_slice(&b[start..i]);
        buf.extend_from_slice(esc);
        start = i + 1;
    }
    buf.extend_from_slice(&b[start..]);
    Ok(())
}

impl PostgresTarget {
    /// Connects.
    ///
    /// # Errors
    /// A config error for a bad config; a connection error naming host, port, database and user
    /// (never the password).
    pub async fn new(config: &Value, scope: Option<&str>) -> anyhow::Result<PostgresTarget> {
        let cfg: PostgresTargetConfig = serde_json::from_value(config.clone())
            .map_err(|e| config_error(format!("target postgres config: {e}")))?;
        crate::pg::check_sslmode("target postgres", cfg.sslmode.as_deref())?;
        let main = Conn::open(&cfg).await?;
        // PipelineWise's meaning: `parallelism` 0 = a connection per stream up to
        // `max_parallelism` (16), -1 = one per CPU core, N = N.
        let max = cfg.max_parallelism.unwrap_or(16).max(1) as usize;
        let parallel = match cfg.parallelism.unwrap_or(0) {
            0 => max,
            n if n < 0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        }
        .min(max)
        .max(1);
        Ok(PostgresTarget {
            cfg,
            conns: vec![main],
            parallel,
            streams: StreamMap::default(),
            made_schemas: std::collections::HashSet::new(),
            scope: scope.unwrap_or("pipe").to_owned(),
            received_at: chrono::Utc::now().to_rfc3339(),
            quarantine: false,
        })
    }

    /// The connection a stream loads on: its own if it has one; the one of another stream
    /// writing the same table; for a keyed stream, a new connection up to the parallelism (or
    /// the least busy); the main connection for append-only streams, whose rows must commit
    /// with the state.
    async fn conn_for(
        &mut self,
        stream: &str,
        schema: &str,
        table: &str,
        keyed: bool,
    ) -> anyhow::Result<usize> {
        if let Some(s) = self.streams.get(stream) {
            return Ok(s.conn);
        }
        if let Some(o) = self
            .streams
            .values()
            .find(|o| o.schema == schema && o.table == table)
        {
            return Ok(o.conn);
        }
        if !keyed || self.parallel <= 1 || self.quarantine {
            return Ok(0);
        }
        if self.conns.len() < self.parallel {
            self.conns.push(Conn::open(&self.cfg).await?);
            tracing::info!(
                stream,
                connections = self.conns.len(),
                "Keyed stream loads on a connection of its own."
            );
            return Ok(self.conns.len() - 1);
        }
        let load = |i: usize| self.streams.values().filter(|s| s.conn == i).count();
        Ok((1..self.conns.len()).min_by_key(|i| load(*i)).unwrap_or(0))
    }

    /// Creates a schema if missing. With several connections it is made outside any load's
    /// transaction (two open transactions creating the same schema would wait on each other).
    async fn ensure_schema(&mut self, idx: usize, schema: &str) -> anyhow::Result<()> {
        let sql = format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema));
        if self.parallel <= 1 {
            self.conns[idx].begin().await?;
            self.conns[idx]
                .client
                .batch_execute(&sql)
                .await
                .with_context(|| format!("creating schema {schema:?}"))?;
            return Ok(());
        }
        if self.made_schemas.contains(schema) {
            return Ok(());
        }
        let exists = self.conns[0]
            .client
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
            .await?
            .is_some();
        if !exists {
            let c = Conn::open(&self.cfg).await?;
            let res = c.client.batch_execute(&sql).await;
            c.task.abort();
            res.with_context(|| format!("creating schema {schema:?}"))?;
        }
        self.made_schemas.insert(schema.to_owned());
        Ok(())
    }

    fn target_schema(&self, stream: &str) -> String {
        source_schema(stream)
            .and_then(|s| {
                self.cfg
                    .schema_mapping
                    .as_ref()?
                    .get(s)?
                    .get("target_schema")?
                    .as_str()
            })
            .map_or_else(|| self.cfg.default_target_schema.clone(), str::to_owned)
    }

    async fn existing_columns(
        client: &Client,
        schema: &str,
        table: &str,
    ) -> anyhow::Result<Option<Vec<(String, String)>>> {
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&schema, &table],
            )
            .await
            .context("reading the table's columns")?;
        if rows.is_empty() {
            let exists = client
                .query_opt("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2", &[&schema, &table])
                .await?;
            return Ok(exists.map(|_| Vec::new()));
        }
        Ok(Some(
            rows.iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect(),
        ))
    }

    /// Creates or evolves the stream's table (in the open transaction).
    ///
    /// # Errors
    /// A stream without keys when they are required, a change that cannot be made safely, SQL
    /// errors.
    pub async fn schema(&mut self, msg: &SchemaMessage) -> anyhow::Result<()> {
        // Rows buffered under the old schema are merged first, in the old layout.
        if self
            .streams
            .get(&msg.stream)
            .is_some_and(|s| s.buffered > 0 || s.staging.is_some())
        {
            self.flush_stream(&msg.stream, true).await?;
        }
        let plan = table::plan(
            msg,
            PlanOptions {
                metadata: self.cfg.add_metadata_columns,
                flatten: self.cfg.data_flattening_max_level,
                primary_key_required: self.cfg.primary_key_required,
            },
        )?;
        let double = self.cfg.use_double_for_number;
        let mut cols: Vec<Col> = plan
            .cols
            .into_iter()
            .map(|c| Col {
                ty: pg_type(&c.ty, c.hint.as_deref(), double),
                logical: c.ty,
                name: c.name,
                source: c.source,
            })
            .collect();
        let key_cols = plan.key_cols;
        let schema_name = self.target_schema(&msg.stream);
        let table = table_name(&msg.stream);
        let qt = qualified(&schema_name, &table);
        let idx = self
            .conn_for(&msg.stream, &schema_name, &table, !key_cols.is_empty())
            .await?;
        self.ensure_schema(idx, &schema_name).await?;
        self.conns[idx].begin().await?;
        let mut created = false;
        match Self::existing_columns(&self.conns[idx].client, &schema_name, &table).await? {
            None => {
                let create = table::create_table_sql(
                    &qt,
                    cols.iter().map(|c| (c.name.as_str(), c.ty.as_str())),
                    &key_cols,
                    true,
                    self.cfg.add_metadata_columns.then(|| {
                        format!(
                            "{} timestamp with time zone DEFAULT now()",
                            quote_ident(BATCHED_AT)
                        )
                    }),
                );
                self.conns[idx]
                    .client
                    .batch_execute(&create)
                    .await
                    .with_context(|| format!("creating table {qt}"))?;
                tracing::info!(stream = %msg.stream, table = %qt, "Table created.");
                created = true;
            }
            Some(existing) => {
                for c in &mut cols {
                    match existing.iter().find(|(n, _)| *n == c.name) {
                        None => {
                            self.conns[idx]
                                .client
                                .batch_execute(&format!(
                                    "ALTER TABLE {qt} ADD COLUMN {} {}",
                                    quote_ident(&c.name),
                                    c.ty
                                ))
                                .await
                                .with_context(|| format!("adding column {:?} to {qt}", c.name))?;
                            tracing::info!(table = %qt, column = %c.name, ty = %c.ty, "Column added.");
                        }
                        Some((_, have)) => {
                            match evolve(&qt, &c.name, have, &c.logical, &c.ty, double)? {
                                None => c.ty.clone_from(have),
                                Some(to) => {
                                    self.conns[idx].client
                                    .batch_execute(&format!(
                                        "ALTER TABLE {qt} ALTER COLUMN {col} TYPE {to} USING {col}::{to}",
                                        col = quote_ident(&c.name)
                                    ))
                                    .await
                                    .with_context(|| format!("widening column {:?} of {qt} from {have} to {to}", c.name))?;
                                    tracing::info!(table = %qt, column = %c.name, from = %have, to = %to, "Column widened in place.");
                                    c.ty = to;
                                }
                            }
                        }
                    }
                }
                if self.cfg.add_metadata_columns && !existing.iter().any(|(n, _)| n == BATCHED_AT) {
                    self.conns[idx]
                        .client
                        .batch_execute(&format!(
                            "ALTER TABLE {qt} ADD COLUMN {} timestamp with time zone DEFAULT now()",
                            quote_ident(BATCHED_AT)
                        ))
                        .await?;
                }
            }
        }
        let prev = self.streams.remove(&msg.stream);
        self.streams.insert(
            msg.stream.clone(),
            PgStream {
                schema: schema_name,
                table,
                cols,
                key_cols,
                keys: msg.key_properties.clone(),
                pieces: Batch::default(),
                buf: Vec::with_capacity(COPY_PIECE_BYTES),
                buffered: 0,
                staging: None,
                staged: 0,
                fresh: created || prev.as_ref().is_some_and(|p| p.fresh),
                versions: prev
                    .as_ref()
                    .map(|p| p.versions.clone())
                    .unwrap_or_default(),
                bytes: prev.map_or(0, |p| p.bytes),
                conn: idx,
            },
        );
        Ok(())
    }

    /// Encodes one record into the stream's COPY buffer.
    ///
    /// # Errors
    /// A value Postgres cannot hold (a NUL byte), with stream, key and column.
    pub async fn record(
        &mut self,
        msg: &RecordMessage,
        fields: Option<&FieldSpans>,
    ) -> anyhow::Result<()> {
        let received_at = &self.received_at;
        let s = self
            .streams
            .get_mut(&msg.stream)
            .ok_or_else(|| anyhow!("no SCHEMA seen for stream {:?}", msg.stream))?;
        s.versions.record(msg);
        let start = s.buf.len();
        let encoded = match &msg.record {
            _ if self.cfg.data_flattening_max_level > 0 => match msg.record.to_map() {
                Ok(m) => {
                    let mut flat = Map::new();
                    flatten_record(&m, "", 0, self.cfg.data_flattening_max_level, &mut flat);
                    encode_map(s, &flat, msg, received_at)
                }
                Err(_) => Err(("(record)".to_owned(), String::new(), "not a JSON object")),
            },
            Record::Raw(raw) => encode_raw(s, raw.get(), fields, msg, received_at),
            Record::Map(m) => encode_map(s, m, msg, received_at),
        };
        if let Err((column, value, why)) = encoded {
            s.buf.truncate(start);
            let key = record_key_text(&s.keys, msg);
            bail!("stream {:?}{key}, column {column:?}: value {value} has {why}; clean it at the source", msg.stream);
        }
        s.buf.push(b'\n');
        s.buffered += 1;
        if s.buf.len() >= COPY_PIECE_BYTES {
            s.seal_piece();
        }
        if s.buffered >= self.cfg.batch_size_rows
            || (s.pieces.len() + s.buf.len()) as u64 >= self.cfg.batch_size_bytes
        {
            let stream = msg.stream.clone();
            self.flush_stream(&stream, false).await?;
        }
        Ok(())
    }

    /// Copies the buffer into the stream's staging table; with `merge`, merges staging into the
    /// table too. Everything stays inside the open transaction.
    async fn flush_stream(&mut self, stream: &str, merge: bool) -> anyhow::Result<()> {
        let Some(s) = self.streams.get_mut(stream) else {
            return Ok(());
        };
        flush(
            &mut self.conns[s.conn],
            s,
            &self.cfg,
            self.quarantine,
            stream,
            merge,
        )
        .await
    }
}

/// [`PostgresTarget::flush_stream`] on the stream's own connection.
async fn flush(
    conn: &mut Conn,
    s: &mut PgStream,
    cfg: &PostgresTargetConfig,
    quarantine: bool,
    stream: &str,
    merge: bool,
) -> anyhow::Result<()> {
    {
        conn.begin().await?;
        conn.take_returned(s, stream);
        let qt = qualified(&s.schema, &s.table);
        let cols = s
            .cols
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        // Rows without keys, and rows for a table this run created (as long as no batch repeats
        // a key), go by COPY straight into the table: that skips the staging copy and the merge,
        // most of an initial load's cost. A repeated key rolls back to the savepoint and the
        // batch goes the merge way.
        if s.buffered > 0 && s.staging.is_none() && (s.fresh || s.key_cols.is_empty()) {
            let data = s.take_batch();
            conn.client.batch_execute("SAVEPOINT ferry_direct").await?;
            let client = conn.client.clone();
            let sql = format!("COPY {qt} ({cols}) FROM STDIN");
            let sent = data.clone();
            conn.pending = Some(PendingCopy {
                stream: stream.to_owned(),
                table: qt.clone(),
                rows: s.buffered,
                quarantine,
                handle: tokio::spawn(async move {
                    let sink = client.copy_in::<_, Bytes>(&sql).await?;
                    futures_util::pin_mut!(sink);
                    send_in_pieces(sink.as_mut(), sent).await?;
                    sink.as_mut().finish().await.map(|_| ())
                }),
                data,
            });
            s.bytes += conn.pending.as_ref().map_or(0, |p| p.data.len() as u64);
            s.buffered = 0;
            // A merge (and quarantine, which must know at once) needs the outcome now.
            if merge || quarantine {
                conn.settle().await?;
                conn.take_returned(s, stream);
            }
        }
        if s.buffered > 0 {
            let stg = match &s.staging {
                Some(n) => n.clone(),
                None => {
                    conn.staging_seq += 1;
                    let n = format!("_ferry_stg_{}", conn.staging_seq);
                    let defs: Vec<String> = s
                        .cols
                        .iter()
                        .map(|c| format!("{} {}", quote_ident(&c.name), c.ty))
                        .collect();
                    conn.client
                        .batch_execute(&format!(
                            "CREATE TEMP TABLE {} ({}, _ferry_seq bigserial) ON COMMIT DROP",
                            quote_ident(&n),
                            defs.join(", ")
                        ))
                        .await
                        .context("creating a staging table")?;
                    s.staging = Some(n.clone());
                    n
                }
            };
            let data = s.take_batch();
            s.bytes += data.len() as u64;
            let into = format!("{} ({cols})", quote_ident(&stg));
            if quarantine {
                conn.client.batch_execute("SAVEPOINT ferry_batch").await?;
                match copy_rows(&conn.client, &into, data.clone()).await {
                    Ok(()) => {
                        conn.client
                            .batch_execute("RELEASE SAVEPOINT ferry_batch")
                            .await?
                    }
                    Err(e) if is_data_error(&e) => {
                        conn.client
                            .batch_execute(
                                "ROLLBACK TO SAVEPOINT ferry_batch; RELEASE SAVEPOINT ferry_batch",
                            )
                            .await?;
                        let schema = cfg.default_target_schema.clone();
                        isolate(&conn.client, stream, &into, &schema, &data.contiguous()).await?;
                    }
                    Err(e) => return Err(copy_error(stream, &qt, &e)),
                }
            } else {
                copy_rows(&conn.client, &into, data)
                    .await
                    .map_err(|e| copy_error(stream, &qt, &e))?;
            }
            s.staged += s.buffered;
            s.buffered = 0;
        }
        if merge {
            if let Some(stg) = s.staging.take() {
                let list = table::ident_list(s.cols.iter().map(|c| c.name.as_str()));
                let sql = if s.key_cols.is_empty() {
                    format!(
                        "INSERT INTO {qt} ({list}) SELECT {list} FROM {} ORDER BY _ferry_seq",
                        quote_ident(&stg)
                    )
                } else {
                    let keys = table::ident_list(s.key_cols.iter().map(String::as_str));
                    let action = table::upsert_action(
                        s.cols.iter().map(|c| c.name.as_str()),
                        &s.key_cols,
                        cfg.add_metadata_columns,
                    );
                    // Within a batch the last record of a key wins.
                    format!(
                        "INSERT INTO {qt} ({list}) SELECT {list} FROM (SELECT DISTINCT ON ({keys}) * FROM {} ORDER BY {keys}, _ferry_seq DESC) s \
                         ON CONFLICT ({keys}) {action}",
                        quote_ident(&stg)
                    )
                };
                conn.client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| copy_error(stream, &qt, &e))?;
                conn.client
                    .batch_execute(&format!("DROP TABLE {}", quote_ident(&stg)))
                    .await?;
                s.staged = 0;
            }
            if cfg.hard_delete && cfg.add_metadata_columns {
                conn.client
                    .batch_execute(&format!(
                        "DELETE FROM {qt} WHERE {} IS NOT NULL",
                        quote_ident(DELETED_AT)
                    ))
                    .await?;
            }
        }
        Ok(())
    }
}

impl PostgresTarget {
    /// Sets aside rows the database rejects instead of failing the batch.
    pub fn set_quarantine(&mut self, on: bool) {
        self.quarantine = on;
    }

    /// Remembers an ACTIVATE_VERSION; applied at commit, after the version's records.
    pub fn activate_version(&mut self, msg: &ActivateVersionMessage) {
        if let Some(s) = self.streams.get_mut(&msg.stream) {
            s.versions.activate(msg.version);
        }
    }
}

/// Applies a stream's pending ACTIVATE_VERSION on its connection, after its merge.
async fn activate(
    conn: &mut Conn,
    s: &mut PgStream,
    cfg: &PostgresTargetConfig,
    stream: &str,
) -> anyhow::Result<()> {
    conn.settle().await?;
    {
        let Some((v, seen)) = s.versions.take() else {
            return Ok(());
        };
        let qt = qualified(&s.schema, &s.table);
        if !s.cols.iter().any(|c| c.name == TABLE_VERSION) {
            tracing::info!(stream, "ACTIVATE_VERSION needs add_metadata_columns (the _sdc_table_version column); rows of older versions are kept.");
            return Ok(());
        }
        // Only once records of the version are in the table (see `Versions::take`).
        if !seen {
            let present: bool = conn
                .client
                .query_one(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM {qt} WHERE {} = $1)",
                        quote_ident(TABLE_VERSION)
                    ),
                    &[&v],
                )
                .await?
                .get(0);
            if !present {
                tracing::debug!(
                    stream,
                    version = v,
                    "ACTIVATE_VERSION before any record of that version; nothing to replace yet."
                );
                return Ok(());
            }
        }
        let ver = quote_ident(TABLE_VERSION);
        let n = if cfg.hard_delete {
            conn.client
                .execute(
                    &format!("DELETE FROM {qt} WHERE {ver} IS DISTINCT FROM $1"),
                    &[&v],
                )
                .await?
        } else {
            conn.client
                .execute(
                    &format!(
                        "UPDATE {qt} SET {} = now() WHERE {ver} IS DISTINCT FROM $1 AND {} IS NULL",
                        quote_ident(DELETED_AT),
                        quote_ident(DELETED_AT)
                    ),
                    &[&v],
                )
                .await?
        };
        tracing::info!(
            stream,
            version = v,
            rows = n,
            "Rows of older table versions removed."
        );
        Ok(())
    }
}

impl PostgresTarget {
    /// Commits: stages what is buffered, merges, applies ACTIVATE_VERSION and the state table,
    /// then COMMIT.
    ///
    /// # Errors
    /// SQL errors; the transaction is then rolled back and nothing of it is visible.
    pub async fn commit(&mut self, state: Option<&Value>) -> anyhow::Result<()> {
        let work = self
            .streams
            .values()
            .any(|s| s.buffered > 0 || s.staging.is_some() || s.versions.is_pending());
        if !work
            && !self.conns.iter().any(|c| c.in_txn)
            && (state.is_none() || self.cfg.state_table.is_none())
        {
            return Ok(());
        }
        if state.is_some() && self.cfg.state_table.is_some() {
            let schema = self.cfg.default_target_schema.clone();
            self.ensure_schema(0, &schema).await?;
        }
        {
            let cfg = &self.cfg;
            let quarantine = self.quarantine;
            let mut groups: Vec<Vec<(&String, &mut PgStream)>> =
                (0..self.conns.len()).map(|_| Vec::new()).collect();
            for (n, s) in &mut self.streams {
                groups[s.conn].push((n, s));
            }
            let mut groups = groups.into_iter();
            let main_group = groups.next().unwrap_or_default();
            let (main, workers) = self
                .conns
                .split_first_mut()
                .ok_or_else(|| anyhow!("no connection"))?;
            // Keyed streams on connections of their own merge and commit first, all at once. A
            // crash before the main commit below replays them from the older state: upserts of
            // the same rows, so nothing is duplicated. Append-only streams commit with the state.
            let work = workers
                .iter_mut()
                .zip(groups)
                .map(|(conn, group)| async move {
                    for (n, s) in group {
                        flush(conn, s, cfg, quarantine, n, true).await?;
                        activate(conn, s, cfg, n).await?;
                    }
                    conn.commit().await
                });
            futures_util::future::try_join_all(work).await?;
            main.begin().await?;
            for (n, s) in main_group {
                flush(main, s, cfg, quarantine, n, true).await?;
                activate(main, s, cfg, n).await?;
            }
        }
        if let (Some(st), Some(table)) = (state, self.cfg.state_table.clone()) {
            let qt = qualified(&self.cfg.default_target_schema, &fold(&table));
            self.conns[0].client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {qt} (pipeline text PRIMARY KEY, state jsonb NOT NULL, \
                     prev_state jsonb, committed_at timestamptz NOT NULL DEFAULT now())",
                    quote_ident(&self.cfg.default_target_schema)
                ))
                .await?;
            let text = st.to_string();
            self.conns[0].client
                .execute(
                    &format!(
                        "INSERT INTO {qt} (pipeline, state) VALUES ($1, $2::text::jsonb) ON CONFLICT (pipeline) DO UPDATE \
                         SET prev_state = {qt}.state, state = EXCLUDED.state, committed_at = now()"
                    ),
                    &[&self.scope, &text],
                )
                .await
                .context("writing the state table")?;
        }
        self.conns[0].commit().await
    }

    /// The state committed with the data (`state_table`), and the one before it.
    ///
    /// # Errors
    /// SQL errors other than a missing table.
    pub async fn recover(&self) -> anyhow::Result<Option<Recovered>> {
        let Some(table) = &self.cfg.state_table else {
            return Ok(None);
        };
        let qt = qualified(&self.cfg.default_target_schema, &fold(table));
        let exists = self.conns[0]
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qt])
            .await?
            .get::<_, bool>(0);
        if !exists {
            return Ok(None);
        }
        let row = self.conns[0]
            .client
            .query_opt(
                &format!("SELECT state::text, prev_state::text FROM {qt} WHERE pipeline = $1"),
                &[&self.scope],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let state: Value = serde_json::from_str(&row.get::<_, String>(0))?;
        let prev: Value = row
            .get::<_, Option<String>>(1)
            .map_or(Ok(crate::singer::state::empty()), |t| {
                serde_json::from_str(&t)
            })?;
        Ok(Some(Recovered { prev, state }))
    }

    /// Deletes this pipeline's row of the state table.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn forget_state(&mut self) -> anyhow::Result<()> {
        let Some(table) = &self.cfg.state_table else {
            return Ok(());
        };
        let qt = qualified(&self.cfg.default_target_schema, &fold(table));
        let exists: bool = self.conns[0]
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qt])
            .await?
            .get(0);
        if exists {
            self.conns[0]
                .client
                .execute(
                    &format!("DELETE FROM {qt} WHERE pipeline = $1"),
                    &[&self.scope],
                )
                .await?;
        }
        Ok(())
    }

    /// Bytes copied for a stream.
    pub fn bytes_written(&self, stream: &str) -> u64 {
        self.streams.get(stream).map_or(0, |s| s.bytes)
    }
}

/// What went wrong encoding a value: the column, an excerpt of the value, the reason.
type EncodeError = (String, String, &'static str);

fn meta_value<'a>(
    c: &Col,
    msg: &'a RecordMessage,
    received_at: &'a str,
) -> Option<std::borrow::Cow<'a, str>> {
    match &c.source {
        Source::Extracted => msg.time_extracted.as_deref().map(Into::into),
        Source::Received => Some(received_at.into()),
        Source::Version => msg.version.map(|v| v.to_string().into()),
        Source::Prop(_) => None,
    }
}

/// Encodes a parsed record as one COPY text row.
fn encode_map(
    s: &mut PgStream,
    record: &Map<String, Value>,
    msg: &RecordMessage,
    received_at: &str,
) -> Result<(), EncodeError> {
    for (i, c) in s.cols.iter().enumerate() {
        if i > 0 {
            s.buf.push(b'\t');
        }
        let v: Option<std::borrow::Cow<'_, str>> = match &c.source {
            Source::Prop(p) => match record.get(p) {
                None | Some(Value::Null) => None,
                Some(Value::String(t)) => Some(t.as_str().into()),
                Some(Value::Number(n)) => Some(n.as_str().into()),
                Some(Value::Bool(b)) => Some(if *b { "true" } else { "false" }.into()),
                Some(other) => Some(other.to_string().into()),
            },
            _ => meta_value(c, msg, received_at),
        };
        match v {
            None => s.buf.extend_from_slice(b"\\N"),
            Some(text) => push_text(&mut s.buf, &text).map_err(|why| {
                (
                    c.name.clone(),
                    excerpt(&Value::String(text.into_owned())),
                    why,
                )
            })?,
        }
    }
    Ok(())
}

/// Encodes a raw record as one COPY text row straight from its JSON text: no tree is built.
/// `fields`: where its properties lie, when validation found it (no scan of the text then).
fn encode_raw(
    s: &mut PgStream,
    text: &str,
    fields: Option<&FieldSpans>,
    msg: &RecordMessage,
    received_at: &str,
) -> Result<(), EncodeError> {
    let mut cells: Vec<Option<FieldValue<'_>>> = vec![None; s.cols.len()];
    let mut cursor = 0usize;
    crate::schema::scan::fields_with(text, fields, |k, v| {
        // Properties usually come in schema order: try the next column first.
        let hit = match s.cols.get(cursor) {
            Some(Col {
                source: Source::Prop(p),
                ..
            }) if *p == k => Some(cursor),
            _ => s
                .cols
                .iter()
                .position(|c| matches!(&c.source, Source::Prop(p) if *p == k)),
        };
        if let Some(i) = hit {
            cells[i] = Some(v);
            cursor = i + 1;
        }
    });
    for (i, c) in s.cols.iter().enumerate() {
        if i > 0 {
            s.buf.push(b'\t');
        }
        let fail = |why| {
            (
                c.name.clone(),
                cells[i]
                    .map_or("", |v| v.text)
                    .chars()
                    .take(60)
                    .collect::<String>(),
                why,
            )
        };
        match (&c.source, cells[i]) {
            (Source::Prop(_), None) => s.buf.extend_from_slice(b"\\N"),
            (
                Source::Prop(_),
                Some(FieldValue {
                    text: v,
                    plain_string,
                }),
            ) => match v.as_bytes().first() {
                Some(b'n') => s.buf.extend_from_slice(b"\\N"),
                Some(b't') => s.buf.extend_from_slice(b"true"),
                Some(b'f') => s.buf.extend_from_slice(b"false"),
                // JSON text holds no raw control characters, so a string without escapes (and a
                // number) needs no COPY escaping at all.
                Some(b'"') if plain_string || !v.contains('\\') => {
                    s.buf.extend_from_slice(&v.as_bytes()[1..v.len() - 1])
                }
                Some(b'-' | b'0'..=b'9') => s.buf.extend_from_slice(v.as_bytes()),
                Some(b'"') => {
                    let owned: String =
                        serde_json::from_str(v).map_err(|_| fail("an unreadable string"))?;
                    push_text(&mut s.buf, &owned).map_err(fail)?;
                }
                _ => push_text(&mut s.buf, v).map_err(fail)?,
            },
            _ => match meta_value(c, msg, received_at) {
                None => s.buf.extend_from_slice(b"\\N"),
                Some(t) => push_text(&mut s.buf, &t).map_err(fail)?,
            },
        }
    }
    Ok(())
}

/// One COPY of `data` (COPY text rows) into `into` (`table (columns)`).
async fn copy_rows(client: &Client, into: &str, data: Batch) -> Result<(), tokio_postgres::Error> {
    let sink = client
        .copy_in::<_, Bytes>(&format!("COPY {into} FROM STDIN"))
        .await?;
    futures_util::pin_mut!(sink);
    send_in_pieces(sink.as_mut(), data).await?;
    sink.as_mut().finish().await.map(|_| ())
}

/// The size of a [`Batch`] piece.
const COPY_PIECE_BYTES: usize = 256 << 10;

/// Sends a batch of COPY data piece by piece.
async fn send_in_pieces(
    mut sink: std::pin::Pin<&mut tokio_postgres::CopyInSink<Bytes>>,
    data: Batch,
) -> Result<(), tokio_postgres::Error> {
    for piece in data.pieces {
        // `feed` waits for room in the connection's queue, not for the bytes to leave.
        sink.feed(piece).await?;
    }
    sink.flush().await
}

/// A value the database refused (class 22 data exception, 23 integrity violation), as opposed to
/// a connection or server failure.
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

/// `--on-invalid quarantine`: finds the rows of a refused batch that Postgres rejects by halving
/// it under savepoints, loads the rest, and records each rejected row with the reason in
/// `<schema>._ferry_rejects`.
async fn isolate(
    client: &Client,
    stream: &str,
    into: &str,
    schema: &str,
    data: &Bytes,
) -> anyhow::Result<()> {
    let rows: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .filter(|r| !r.is_empty())
        .collect();
    let rejects = qualified(schema, "_ferry_rejects");
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {rejects} (stream text NOT NULL, reason text NOT NULL, row_text text NOT NULL, \
             rejected_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await?;
    let mut stack = vec![(0, rows.len())];
    let mut rejected = 0u64;
    while let Some((from, to)) = stack.pop() {
        let mut chunk = Vec::new();
        for r in &rows[from..to] {
            chunk.extend_from_slice(r);
            chunk.push(b'\n');
        }
        client.batch_execute("SAVEPOINT ferry_rows").await?;
        let mut piece = Batch::default();
        piece.push(Bytes::from(chunk));
        match copy_rows(client, into, piece).await {
            Ok(()) => client.batch_execute("RELEASE SAVEPOINT ferry_rows").await?,
            Err(e) if is_data_error(&e) => {
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT ferry_rows; RELEASE SAVEPOINT ferry_rows")
                    .await?;
                if to - from == 1 {
                    let reason = e
                        .as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_owned());
                    let row = String::from_utf8_lossy(rows[from]).into_owned();
                    client
                        .execute(&format!("INSERT INTO {rejects} (stream, reason, row_text) VALUES ($1, $2, $3)"), &[&stream, &reason, &row])
                        .await?;
                    rejected += 1;
                } else {
                    let mid = from + (to - from) / 2;
                    stack.push((mid, to));
                    stack.push((from, mid));
                }
            }
            Err(e) => return Err(anyhow!("stream {stream:?}: {e}")),
        }
    }
    tracing::warn!(stream, rows = rejected, table = %rejects, "Rows the database rejected were set aside.");
    Ok(())
}

/// A COPY or merge error with the stream, the table and what Postgres said (column and line
/// included when it says them).
fn copy_error(stream: &str, table: &str, e: &tokio_postgres::Error) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) => {
            let mut msg = format!(
                "stream {stream:?}: Postgres rejected the batch for {table}: {}",
                db.message()
            );
            if let Some(c) = db.column() {
                msg.push_str(&format!(" (column {c})"));
            }
            if let Some(w) = db.where_() {
                msg.push_str(&format!("; {w}"));
            }
            if let Some(d) = db.detail() {
                msg.push_str(&format!("; {d}"));
            }
            msg.push_str("; nothing of this batch was committed");
            anyhow!(msg)
        }
        None => anyhow!(
            "stream {stream:?}: loading {table} failed: {e}; nothing of this batch was committed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_evolution() {
        assert_eq!(pg_type(&ColumnType::Integer, None, false), "bigint");
        assert_eq!(pg_type(&ColumnType::Number, None, false), "numeric");
        assert_eq!(pg_type(&ColumnType::Number, None, true), "double precision");
        assert_eq!(
            pg_type(
                &ColumnType::Decimal {
                    precision: Some(12),
                    scale: Some(2)
                },
                None,
                false
            ),
            "numeric(12,2)"
        );
        assert_eq!(
            pg_type(
                &ColumnType::String { max_length: None },
                Some("uuid"),
                false
            ),
            "uuid"
        );
        assert_eq!(
            pg_type(
                &ColumnType::String { max_length: None },
                Some("uuid; drop table x"),
                false
            ),
            "text"
        );
        let ev = |have: &str, want: &str| {
            let w = logical(want).unwrap();
            evolve("t", "c", have, &w, want, false)
        };
        assert_eq!(ev("bigint", "numeric").unwrap(), Some("numeric".into()));
        assert_eq!(ev("numeric", "bigint").unwrap(), None);
        assert_eq!(ev("boolean", "text").unwrap(), Some("text".into()));
        assert_eq!(ev("text", "bigint").unwrap(), None);
        assert_eq!(
            ev("date", "timestamp with time zone").unwrap(),
            Some("timestamp with time zone".into())
        );
        assert!(ev("text", "jsonb")
            .unwrap_err()
            .to_string()
            .contains("cannot convert"));
        let mut b = Vec::new();
        push_text(&mut b, "a\tb\\c\nd").unwrap();
        assert_eq!(b, b"a\\tb\\\\c\\nd");
        assert!(push_text(&mut b, "x\0").is_err());
    }
}
