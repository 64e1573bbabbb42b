//! Extraction: FULL_TABLE, INCREMENTAL and XMIN, each stream in one snapshot.

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio_postgres::Client;

use super::discover::{tables, ColumnInfo, TableInfo};
use super::PostgresTap;
use crate::runner::{ConsumerGone, Emitter, SourceOutcome};
use crate::singer::{
    state, ActivateVersionMessage, Catalog, CatalogStream, Message, Record, RecordMessage,
    SchemaMessage,
};
use crate::sql::{qualified, quote_ident, quote_literal};
use crate::taps::file::push_json_str;
use crate::taps::PlanStep;

/// How a column's COPY text becomes JSON, so that it matches the discovered schema: decimals as
/// exact strings, non-finite floats as null, infinite and BC dates as null. Reading plain COPY
/// text costs the server no more than `COPY … TO STDOUT` itself; the JSON is built here, on the
/// other core. Arrays are the one kind Postgres renders (`to_json`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Render {
    Number,
    /// NaN and ±Infinity as null.
    Float,
    /// NaN and ±Infinity as `"NaN"`, `"Infinity"`, `"-Infinity"`.
    NamedFloat,
    Decimal,
    Bool,
    Date,
    Timestamp,
    Time,
    Json,
    Text,
}

fn render_of(c: &ColumnInfo) -> Render {
    if c.category == "A" {
        return Render::Json;
    }
    match c.base.as_str() {
        "int2" | "int4" | "int8" | "oid" | "xid" => Render::Number,
        "float4" | "float8" => Render::Float,
        "numeric" => Render::Decimal,
        "bool" => Render::Bool,
        "date" => Render::Date,
        "timestamp" | "timestamptz" => Render::Timestamp,
        "time" | "timetz" => Render::Time,
        "json" | "jsonb" => Render::Json,
        _ => Render::Text,
    }
}

/// Whether a property's schema admits the names of non-finite floats (see discovery).
fn allows_non_finite(schema: &Value) -> bool {
    schema.get("pattern").and_then(Value::as_str) == Some(crate::schema::NON_FINITE_PATTERN)
}

fn expr(c: &ColumnInfo) -> String {
    let q = quote_ident(&c.name);
    if c.category == "A" {
        format!("to_json({q})::text")
    } else {
        q
    }
}

/// Undoes COPY text escaping of one field.
fn unescape(f: &[u8]) -> anyhow::Result<std::borrow::Cow<'_, str>> {
    if !f.contains(&b'\\') {
        return Ok(std::str::from_utf8(f)
            .context("Postgres sent text that is not UTF-8")?
            .into());
    }
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] == b'\\' && i + 1 < f.len() {
            out.push(match f[i + 1] {
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'b' => 8,
                b'f' => 12,
                b'v' => 11,
                other => other,
            });
            i += 2;
        } else {
            out.push(f[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(out)
        .context("Postgres sent text that is not UTF-8")?
        .into())
}

/// A UTC offset written as `+HH` gets its minutes, as ISO 8601 readers expect (`+00:00`).
fn push_with_offset(out: &mut String, t: &str) {
    out.push('"');
    out.push_str(t);
    let b = t.as_bytes();
    if b.len() >= 3
        && matches!(b[b.len() - 3], b'+' | b'-')
        && b[b.len() - 2..].iter().all(u8::is_ascii_digit)
    {
        out.push_str(":00");
    }
    out.push('"');
}

/// One COPY text field as JSON, the way its column's [`Render`] says.
fn push_field(out: &mut String, kind: Render, f: &[u8]) -> anyhow::Result<()> {
    if f == b"\\N" {
        out.push_str("null");
        return Ok(());
    }
    let t = unescape(f)?;
    let finite = || !(t.contains("infinity") || t.ends_with(" BC"));
    match kind {
        Render::Number | Render::Json => out.push_str(&t),
        Render::Float if matches!(t.as_ref(), "NaN" | "Infinity" | "-Infinity") => {
            out.push_str("null");
        }
        Render::Float => out.push_str(&t),
        Render::NamedFloat if matches!(t.as_ref(), "NaN" | "Infinity" | "-Infinity") => {
            push_json_str(out, &t);
        }
        Render::NamedFloat => out.push_str(&t),
        Render::Bool => out.push_str(if t == "t" { "true" } else { "false" }),
        Render::Date | Render::Timestamp if !finite() => out.push_str("null"),
        Render::Date => push_json_str(out, &t),
        Render::Timestamp => push_with_offset(out, &t.replacen(' ', "T", 1)),
        Render::Time => push_with_offset(out, &t),
        Render::Decimal | Render::Text => push_json_str(out, &t),
    }
    Ok(())
}

fn literal(v: &Value, sql_type: &str) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!("{}::{sql_type}", quote_literal(&text))
}

/// One key range of a parallel FULL_TABLE read, as kept in the state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct KeyRange {
    /// First key of the range.
    from: i64,
    /// First key after the range; none for the last range.
    to: Option<i64>,
    /// Last key read so far.
    after: Option<i64>,
    /// Whether the range is read to its end.
    done: bool,
}

/// The tap's state, shared by streams read in parallel. A bookmark is set only after the
/// stream's records before it are in the channel (the emitter is flushed first), so a STATE that
/// any stream emits never covers records still waiting in another stream's buffer.
#[derive(Clone)]
struct Shared(Arc<tokio::sync::Mutex<Value>>);

impl Shared {
    async fn bookmark(&self, id: &str) -> Option<Value> {
        state::bookmark(&*self.0.lock().await, id).cloned()
    }

    /// Flushes this stream's records, then sets its bookmark to what `mark` computes and emits
    /// the STATE, all under the lock: STATEs leave in the order their bookmarks were set, so no
    /// stream's bookmark ever goes back.
    async fn commit_with(
        &self,
        id: &str,
        emitter: &mut Emitter,
        mark: impl FnOnce() -> anyhow::Result<Value>,
    ) -> anyhow::Result<()> {
        emitter.flush().await?;
        let mut g = self.0.lock().await;
        state::set_bookmark(&mut g, id, Some(mark()?));
        let snapshot = g.clone();
        emitter.emit(Message::state(snapshot)).await
    }

    async fn commit(&self, id: &str, mark: Value, emitter: &mut Emitter) -> anyhow::Result<()> {
        self.commit_with(id, emitter, || Ok(mark)).await
    }
}

/// Splits COPY output into lines, each turned into a record's JSON text by `render`.
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    fn push<T>(
        &mut self,
        chunk: &[u8],
        out: &mut Vec<T>,
        render: impl Fn(&[u8]) -> anyhow::Result<T>,
    ) -> anyhow::Result<()> {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(off) = memchr::memchr(b'\n', &self.pending[start..]) {
            out.push(render(&self.pending[start..start + off])?);
            start += off + 1;
        }
        self.pending.drain(..start);
        Ok(())
    }
}

/// Above this many rows at one key value a key-less stream's bookmark is large; a warning says so.
const TIES_WARN: usize = 10_000;

/// A multiset of row digests ([`row_digest`]), kept in a bookmark under [`state::ROWS_SENT`]:
/// rows a stream without key properties has sent and that the next run reads again, so it
/// skips them. Identical rows are counted, so a duplicate in the source stays a duplicate.
#[derive(Default)]
struct RowSet(std::collections::BTreeMap<String, u64>);

impl RowSet {
    fn from_bookmark(saved: Option<&Value>) -> RowSet {
        RowSet(
            saved
                .and_then(|b| b.get(state::ROWS_SENT))
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(d, n)| Some((d.clone(), n.as_u64()?)))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    fn add(&mut self, digest: String) {
        *self.0.entry(digest).or_insert(0) += 1;
    }

    /// Takes one `digest` out; false when there is none left.
    fn take(&mut self, digest: &str) -> bool {
        match self.0.get_mut(digest) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }

    /// Distinct rows.
    fn len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    fn to_value(&self) -> Value {
        json!(self.0)
    }
}

/// Exactly-once for an INCREMENTAL stream without key properties. Rows are read from the
/// bookmark's value on (`>=`, so rows that share it and committed later are not missed), and a
/// target can only append them; so the bookmark also lists every row already sent at its value
/// (a [`RowSet`]), and the next run skips exactly those.
struct Ties {
    /// Rows sent at the bookmark's value by earlier runs, still to skip.
    skip: RowSet,
    /// The key value (COPY text) of the rows being read.
    value: Vec<u8>,
    /// The rows read at `value` in this run, skipped ones included: together they are every
    /// row at that value the target holds once these are committed.
    at_value: RowSet,
}

impl Ties {
    fn resume(saved: Option<&Value>) -> Ties {
        Ties {
            skip: RowSet::from_bookmark(saved),
            value: Vec::new(),
            at_value: RowSet::default(),
        }
    }

    /// Notes a row read with key value `key` (COPY text) and record text `text`; false when an
    /// earlier run sent it already.
    fn read(&mut self, key: &[u8], text: &str) -> bool {
        if key != self.value.as_slice() {
            self.value.clear();
            self.value.extend_from_slice(key);
            self.at_value.clear();
        }
        let digest = row_digest(text);
        let fresh = !self.skip.take(&digest);
        self.at_value.add(digest);
        fresh
    }

    fn rows_at_value(&self) -> usize {
        self.at_value.len()
    }

    /// The bookmark after the rows read so far: the current key value (as JSON) and its rows.
    fn bookmark(&self, rk: &str, value: Value) -> Value {
        let mut m = Map::new();
        m.insert("replication_key".into(), json!(rk));
        m.insert(state::REPLICATION_KEY_VALUE.into(), value);
        m.insert(state::ROWS_SENT.into(), self.at_value.to_value());
        Value::Object(m)
    }
}

/// A row's digest: SHA-256 of its record text, first 16 bytes in hex (stable across versions,
/// since it is kept in state).
fn row_digest(text: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(32);
    for b in &d[..16] {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out
}

struct Ctx<'a> {
    id: &'a str,
    table: TableInfo,
    cols: Vec<ColumnInfo>,
    renders: Vec<Render>,
    /// `"name":` per column, escaped once.
    keys_json: Vec<String>,
    time_extracted: String,
}

impl Ctx<'_> {
    fn qualified(&self) -> String {
        qualified(&self.table.schema, &self.table.name)
    }

    fn select(&self, where_: &str, order: &str, limit: Option<u64>) -> String {
        let exprs: Vec<String> = self.cols.iter().map(expr).collect();
        format!(
            "COPY (SELECT {} FROM {} {where_} {order}{}) TO STDOUT",
            exprs.join(", "),
            self.qualified(),
            limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default()
        )
    }

    /// One COPY text row as the record's JSON text.
    fn render(&self, line: &[u8]) -> anyhow::Result<String> {
        let mut out = String::with_capacity(line.len() * 2 + 2);
        out.push('{');
        let mut fields = line.split(|b| *b == b'\t');
        for (i, kind) in self.renders.iter().enumerate() {
            let f = fields.next().ok_or_else(|| {
                anyhow!("stream {:?}: a row has fewer fields than columns", self.id)
            })?;
            if i > 0 {
                out.push(',');
            }
            out.push_str(&self.keys_json[i]);
            push_field(&mut out, *kind, f)?;
        }
        out.push('}');
        Ok(out)
    }

    /// The COPY text of column `i` of a row (still escaped).
    fn raw_field<'l>(&self, line: &'l [u8], i: usize) -> anyhow::Result<&'l [u8]> {
        line.split(|b| *b == b'\t')
            .nth(i)
            .ok_or_else(|| anyhow!("stream {:?}: a row has fewer fields than columns", self.id))
    }

    /// Column `i`'s COPY text as the JSON value its record holds.
    fn field_value(&self, i: usize, raw: &[u8]) -> anyhow::Result<Value> {
        let mut out = String::new();
        push_field(&mut out, self.renders[i], raw)?;
        serde_json::from_str(&out).context("Postgres rendered a value that is not JSON")
    }

    fn column(&self, name: &str) -> anyhow::Result<&ColumnInfo> {
        self.table
            .columns
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| anyhow!("stream {:?}: column {name:?} no longer exists in {}; run `ferry discover` and choose again", self.id, self.qualified()))
    }

    fn record(&self, line: String, version: Option<i64>) -> anyhow::Result<Message> {
        // Valid by construction: strings are escaped here, and what is pasted (numbers, json,
        // `to_json` arrays) is JSON as Postgres prints it; so it is not parsed again (a test
        // parses every type's rendering).
        let record =
            Record::from_own_json(line).context("Postgres rendered a row that is not JSON")?;
        Ok(Message::Record(RecordMessage {
            stream: self.id.to_owned(),
            record,
            version,
            time_extracted: Some(self.time_extracted.clone()),
            extra: Map::new(),
        }))
    }
}

fn field(line: &str, name: &str) -> anyhow::Result<Value> {
    let m: Map<String, Value> = serde_json::from_str(line)?;
    Ok(m.get(name).cloned().unwrap_or(Value::Null))
}

impl PostgresTap {
    /// Reads the selected streams, each in its own snapshot.
    ///
    /// # Errors
    /// Connection failures and [`ConsumerGone`]; a failure confined to one stream (a dropped
    /// table, permission denied) is reported in the outcome and the other streams go on.
    pub async fn sync(
        self,
        catalog: Catalog,
        st: Value,
        mut emitter: Emitter,
    ) -> anyhow::Result<SourceOutcome> {
        let limit = self.cfg.max_parallel_streams.unwrap_or(1).max(1) as usize;
        let streams: Vec<CatalogStream> = catalog.selected().cloned().collect();
        let shared = Shared(Arc::new(tokio::sync::Mutex::new(st)));
        let tap = Arc::new(self);
        let mut outcome = SourceOutcome::default();
        // Up to `max_parallel_streams` streams at once, each on its own connection and in its
        // own snapshot, each with its own emitter into the one channel.
        let mut queue = streams.into_iter();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < limit {
                let Some(s) = queue.next() else { break };
                let (tap, shared, mut em) = (Arc::clone(&tap), shared.clone(), emitter.sibling());
                running.spawn(async move {
                    let id = s.tap_stream_id().to_owned();
                    let r = async {
                        let (client, _conn) = tap.connect().await?;
                        tap.sync_stream(&client, &s, &shared, &mut em).await?;
                        em.flush().await
                    }
                    .await;
                    (id, r)
                });
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            let (id, r) = done.context("a stream task failed")?;
            if let Err(e) = r {
                if e.is::<ConsumerGone>() {
                    return Err(e);
                }
                let denied = e.chain().any(|c| {
                    c.downcast_ref::<tokio_postgres::Error>()
                        .and_then(tokio_postgres::Error::code)
                        .is_some_and(|code| {
                            *code == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE
                        })
                });
                if denied && tap.cfg.skip_unreadable {
                    tracing::warn!(stream = %id, "Permission denied; skipped (skip_unreadable).");
                    continue;
                }
                let msg = format!("{e:#}");
                tracing::error!(stream = %id, error = %crate::secrets::redact(&msg), "Stream failed; the other streams go on.");
                outcome.failed_streams.push((id, msg));
            }
        }
        let fin = {
            let mut g = shared.0.lock().await;
            if let Value::Object(m) = &mut *g {
                m.insert(state::CURRENTLY_SYNCING.into(), Value::Null);
            }
            g.clone()
        };
        if state::rejection(&fin).is_none() {
            emitter.emit(Message::state(fin)).await?;
        }
        emitter.flush().await?;
        Ok(outcome)
    }

    async fn sync_stream(
        &self,
        client: &Client,
        s: &CatalogStream,
        st: &Shared,
        emitter: &mut Emitter,
    ) -> anyhow::Result<()> {
        let id = s.tap_stream_id();
        let schema = s
            .stream_meta("schema-name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let table = s
            .stream_meta("table-name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (Some(schema), Some(table)) = (schema, table) else {
            bail!("stream {id:?}: the catalog lacks schema-name/table-name metadata; run `ferry discover` again");
        };
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let info = tables(client, Some(std::slice::from_ref(&schema)), Some(&table))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("stream {id:?}: {schema}.{table} no longer exists; deselect it or run `ferry discover` again"))?;
        let method = s
            .replication_method()
            .unwrap_or("FULL_TABLE")
            .to_ascii_uppercase();
        if method == "FULL_TABLE" {
            crate::progress::expect_rows(id, u64::try_from(info.estimate).unwrap_or(0));
        }
        let rk = s.replication_key().map(str::to_owned);
        let mut keys = s.key_properties();
        if keys.is_empty() {
            keys.clone_from(&info.key);
        }
        let mut wanted: Vec<String> = info
            .columns
            .iter()
            .filter(|c| s.is_property_selected(&c.name))
            .map(|c| c.name.clone())
            .collect();
        for k in keys.iter().chain(rk.iter()) {
            if !wanted.contains(k) {
                wanted.push(k.clone());
            }
        }
        let mut ctx = Ctx {
            id,
            table: info,
            cols: Vec::new(),
            renders: Vec::new(),
            keys_json: Vec::new(),
            time_extracted: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        };
        for w in &wanted {
            let c = ctx.column(w)?.clone();
            // Non-finite floats as their names only where the catalog's schema allows it.
            let named = s
                .schema()
                .get("properties")
                .and_then(|p| p.get(w))
                .is_some_and(allows_non_finite);
            ctx.renders.push(match render_of(&c) {
                Render::Float if named => Render::NamedFloat,
                r => r,
            });
            let mut k = String::new();
            push_json_str(&mut k, &c.name);
            k.push(':');
            ctx.keys_json.push(k);
            ctx.cols.push(c);
        }
        let props: Map<String, Value> = s
            .schema()
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| {
                p.iter()
                    .filter(|(k, _)| wanted.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        emitter
            .emit(Message::Schema(SchemaMessage {
                stream: id.to_owned(),
                schema: json!({"type": "object", "properties": props}),
                key_properties: keys.clone(),
                bookmark_properties: rk.clone().map(|k| vec![k]),
                extra: Map::new(),
            }))
            .await?;
        let rows = match method.as_str() {
            "INCREMENTAL" => {
                let rk = rk.ok_or_else(|| anyhow!("stream {id:?}: INCREMENTAL needs a replication-key; set one with `ferry select … --key COLUMN`"))?;
                self.incremental(client, &ctx, &rk, keys.is_empty(), st, emitter)
                    .await?
            }
            "XMIN" => self.xmin(client, &ctx, keys.is_empty(), st, emitter).await?,
            "FULL_TABLE" => self.full_table(client, &ctx, &keys, st, emitter).await?,
            other => bail!("stream {id:?}: replication method {other:?} is not supported (FULL_TABLE, INCREMENTAL, XMIN)"),
        };
        client.batch_execute("COMMIT").await?;
        tracing::info!(stream = %id, rows, method = %method, "Stream read.");
        Ok(())
    }

    async fn emit_rows(
        &self,
        client: &Client,
        ctx: &Ctx<'_>,
        sql: &str,
        version: Option<i64>,
        emitter: &mut Emitter,
    ) -> anyhow::Result<(u64, Option<String>)> {
        self.emit_rows_where(client, ctx, sql, version, emitter, |_| true)
            .await
    }

    /// [`Self::emit_rows`] of the rows `keep` accepts.
    async fn emit_rows_where(
        &self,
        client: &Client,
        ctx: &Ctx<'_>,
        sql: &str,
        version: Option<i64>,
        emitter: &mut Emitter,
        mut keep: impl FnMut(&str) -> bool,
    ) -> anyhow::Result<(u64, Option<String>)> {
        // Lines are collected per COPY chunk and emitted after; the last one is kept so the
        // caller can read its bookmark without another copy.
        let mut held: Vec<String> = Vec::new();
        let stream = client
            .copy_out(sql)
            .await
            .with_context(|| format!("stream {:?}: reading {}", ctx.id, ctx.qualified()))?;
        futures_util::pin_mut!(stream);
        let mut lines = Lines::default();
        let mut n = 0u64;
        let mut last: Option<String> = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("stream {:?}: reading rows", ctx.id))?;
            lines.push(&chunk, &mut held, |l| ctx.render(l))?;
            for l in held.drain(..).filter(|l| keep(l)) {
                if let Some(prev) = last.replace(l) {
                    emitter.emit(ctx.record(prev, version)?).await?;
                    n += 1;
                }
            }
        }
        Ok((n, last))
    }

    async fn full_table(
        &self,
        client: &Client,
        ctx: &Ctx<'_>,
        keys: &[String],
        st: &Shared,
        emitter: &mut Emitter,
    ) -> anyhow::Result<u64> {
        let id = ctx.id;
        let mark = st.bookmark(id).await.unwrap_or(Value::Null);
        let resume: Option<Vec<Value>> = mark.get("last_pk").and_then(Value::as_array).cloned();
        // An interrupted read (sequential or by ranges) keeps its table version.
        let resuming = resume.is_some() || mark.get("ranges").is_some();
        let version = match mark.get("version").and_then(Value::as_i64) {
            Some(v) if resuming => v,
            _ => chrono::Utc::now().timestamp_millis(),
        };
        let mut total = 0u64;
        if keys.is_empty() {
            let sql = ctx.select("", "", None);
            let (n, last) = self
                .emit_rows(client, ctx, &sql, Some(version), emitter)
                .await?;
            if let Some(l) = last {
                emitter.emit(ctx.record(l, Some(version))?).await?;
                total += 1;
            }
            total += n;
        } else if let Some(ranges) = self.ranges(client, ctx, keys, &mark).await? {
            total += self
                .full_table_ranges(client, ctx, &keys[0], version, ranges, st, emitter)
                .await?;
        } else {
            let key_cols: Vec<&ColumnInfo> = keys
                .iter()
                .map(|k| ctx.column(k))
                .collect::<anyhow::Result<_>>()?;
            let key_list = key_cols
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", ");
            let mut after = resume;
            if after.is_some() {
                tracing::info!(stream = %id, "Resuming an interrupted full-table read after its last key.");
            }
            loop {
                let where_ = match &after {
                    Some(vals) => format!(
                        "WHERE ({key_list}) > ({})",
                        key_cols
                            .iter()
                            .zip(vals)
                            .map(|(c, v)| literal(v, &c.sql_type))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => String::new(),
                };
                let sql = ctx.select(
                    &where_,
                    &format!("ORDER BY {key_list}"),
                    Some(self.cfg.chunk_rows),
                );
                let (n, last) = self
                    .emit_rows(client, ctx, &sql, Some(version), emitter)
                    .await?;
                let Some(last) = last else { break };
                let vals: Vec<Value> = keys
                    .iter()
                    .map(|k| field(&last, k))
                    .collect::<anyhow::Result<_>>()?;
                emitter.emit(ctx.record(last, Some(version))?).await?;
                total += n + 1;
                after = Some(vals.clone());
                // A chunk ends at a key: a crash resumes after it, not from the start.
                st.commit(id, json!({"version": version, "last_pk": vals}), emitter)
                    .await?;
                if n + 1 < self.cfg.chunk_rows {
                    break;
                }
            }
        }
        emitter
            .emit(Message::ActivateVersion(ActivateVersionMessage {
                stream: id.to_owned(),
                version,
                extra: Map::new(),
            }))
            .await?;
        st.commit(id, json!({"version": version}), emitter).await?;
        Ok(total)
    }

    /// Key ranges for a parallel FULL_TABLE read: from an interrupted parallel read's state, or
    /// split evenly between the key's minimum and maximum. `None` when the read is sequential.
    async fn ranges(
        &self,
        client: &Client,
        ctx: &Ctx<'_>,
        keys: &[String],
        mark: &Value,
    ) -> anyhow::Result<Option<Vec<KeyRange>>> {
        if let Some(saved) = mark.get("ranges").and_then(Value::as_array) {
            let r: Vec<KeyRange> = serde_json::from_value(Value::Array(saved.clone()))?;
            return Ok(Some(r));
        }
        let parts = i64::from(self.cfg.table_parallelism.unwrap_or(1));
        if parts < 2 || keys.len() != 1 || mark.get("last_pk").is_some() {
            return Ok(None);
        }
        let key = ctx.column(&keys[0])?;
        if !matches!(key.base.as_str(), "int2" | "int4" | "int8") || key.category == "A" {
            return Ok(None);
        }
        let q = quote_ident(&key.name);
        let row = client
            .query_one(
                &format!(
                    "SELECT min({q})::bigint, max({q})::bigint FROM {}",
                    ctx.qualified()
                ),
                &[],
            )
            .await?;
        let (Some(lo), Some(hi)): (Option<i64>, Option<i64>) = (row.get(0), row.get(1)) else {
            return Ok(None);
        };
        // In i128: a key span can cover the whole of i64. The last range has no upper bound.
        let span = (i128::from(hi) - i128::from(lo)) / i128::from(parts) + 1;
        let mut out = Vec::new();
        for i in 0..i128::from(parts) {
            let from = i128::from(lo) + i * span;
            if from > i128::from(hi) {
                break;
            }
            let to = from + span;
            let to = (to <= i128::from(hi)).then(|| i64::try_from(to).unwrap_or(i64::MAX));
            out.push(KeyRange {
                from: i64::try_from(from).unwrap_or(i64::MAX),
                to,
                after: None,
                done: false,
            });
        }
        if let Some(last) = out.last_mut() {
            last.to = None;
        }
        Ok(Some(out))
    }

    /// Reads key ranges at once, each on its own connection in the snapshot this stream's
    /// transaction exports, so together they see exactly one consistent table. Each range's
    /// progress is in the state, and an interrupted read resumes every range after its last key.
    #[allow(clippy::too_many_arguments)]
    async fn full_table_ranges(
        &self,
        client: &Client,
        ctx: &Ctx<'_>,
        key: &str,
        version: i64,
        ranges: Vec<KeyRange>,
        st: &Shared,
        emitter: &mut Emitter,
    ) -> anyhow::Result<u64> {
        let id = ctx.id;
        // The SCHEMA goes out before any reader's records.
        emitter.flush().await?;
        // The stream's own snapshot (the one the ranges were computed in) is exported; its
        // transaction stays open while the readers run in it.
        let snapshot: String = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await?
            .get(0);
        let progress = Arc::new(Mutex::new(ranges));
        let n_ranges = progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        tracing::info!(stream = %id, ranges = n_ranges, "Reading key ranges in parallel in one snapshot.");
        let q = quote_ident(key);
        let readers = (0..n_ranges).map(|i| {
            let (progress, snapshot, q, mut em) = (Arc::clone(&progress), snapshot.clone(), q.clone(), emitter.sibling());
            async move {
                let (client, _conn) = self.connect().await?;
                client
                    .batch_execute(&format!("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}", quote_literal(&snapshot)))
                    .await?;
                let mut rows = 0u64;
                loop {
                    let r = progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[i].clone();
                    if r.done {
                        break;
                    }
                    let lower = r.after.map_or_else(|| format!("{q} >= {}", r.from), |a| format!("{q} > {a}"));
                    let upper = r.to.map(|t| format!(" AND {q} < {t}")).unwrap_or_default();
                    let sql = ctx.select(&format!("WHERE {lower}{upper}"), &format!("ORDER BY {q}"), Some(self.cfg.chunk_rows));
                    let (n, last) = self.emit_rows(&client, ctx, &sql, Some(version), &mut em).await?;
                    let after = match last {
                        Some(l) => {
                            let k = field(&l, key)?.as_i64();
                            em.emit(ctx.record(l, Some(version))?).await?;
                            rows += n + 1;
                            k
                        }
                        None => None,
                    };
                    // The progress moves only after this reader's rows are in the channel, and under
                    // the state lock, so no STATE covers rows another reader still holds.
                    let chunk_full = n + 1 >= self.cfg.chunk_rows;
                    st.commit_with(id, &mut em, || {
                        let mut g = progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        g[i].after = after.or(g[i].after);
                        g[i].done = after.is_none() || !chunk_full;
                        Ok(json!({"version": version, "ranges": serde_json::to_value(&*g)?}))
                    })
                    .await?;
                }
                client.batch_execute("COMMIT").await?;
                anyhow::Ok(rows)
            }
        });
        let counts = futures_util::future::try_join_all(readers).await?;
        Ok(counts.into_iter().sum())
    }

    async fn incremental(
        &self,
        client: &Client,
        ctx: &Ctx<'_>,
        rk: &str,
        keyless: bool,
        st: &Shared,
        emitter: &mut Emitter,
    ) -> anyhow::Result<u64> {
        let id = ctx.id;
        let col = ctx.column(rk)?.clone();
        let q = quote_ident(rk);
        if keyless && self.cfg.lookback.is_some() {
            bail!("stream {id:?}: `lookback` re-reads rows before the bookmark, and a stream without key properties would append them a second time; set key properties (`ferry select … --keys`) or remove `lookback`");
        }
        // The signpost: the key's maximum when reading starts. Rows written later wait for the
        // next run instead of being half-read now.
        let signpost: Option<String> = client
            .query_one(
                &format!("SELECT to_json(max({q}))::text FROM {}", ctx.qualified()),
                &[],
            )
            .await?
            .get(0);
        let signpost: Value = match signpost {
            Some(t) => serde_json::from_str(&t)?,
            None => Value::Null,
        };
        if signpost.is_null() {
            tracing::info!(stream = %id, "The replication key has no values yet; nothing to read.");
            return Ok(0);
        }
        let saved = st.bookmark(id).await;
        let bm = saved
            .as_ref()
            .and_then(|b| b.get(state::REPLICATION_KEY_VALUE).cloned());
        let upper = format!("{q} <= {}", literal(&signpost, &col.sql_type));
        let where_ = match &bm {
            // `>=`: rows sharing the bookmark's value are read again rather than skipped (a
            // stream without keys skips exactly the ones it has already sent, below).
            Some(v) => {
                let mut from = literal(v, &col.sql_type);
                if let Some(lb) = &self.cfg.lookback {
                    // The lookback is a literal too: an interval for dates and times, a number else.
                    let ty = if matches!(col.base.as_str(), "date" | "timestamp" | "timestamptz") {
                        "interval"
                    } else {
                        "numeric"
                    };
                    from = format!("({from} - {}::{ty})", quote_literal(lb));
                }
                format!("WHERE {q} >= {from} AND {upper}")
            }
            // The first run also takes rows whose key is NULL; later runs cannot find them.
            None => format!("WHERE {upper} OR {q} IS NULL"),
        };
        // Ties on the key are ordered by the primary key, so output is deterministic.
        let mut order = format!("ORDER BY {q} NULLS FIRST");
        for k in ctx.table.key.iter().filter(|k| *k != rk) {
            order.push_str(&format!(", {}", quote_ident(k)));
        }
        let sql = ctx.select(&where_, &order, None);
        let stream = client
            .copy_out(&sql)
            .await
            .with_context(|| format!("stream {id:?}: reading {}", ctx.qualified()))?;
        futures_util::pin_mut!(stream);
        let rk_at = ctx
            .cols
            .iter()
            .position(|c| c.name == rk)
            .context("the replication key is read")?;
        let mut ties = keyless.then(|| Ties::resume(saved.as_ref()));
        let mut lines = Lines::default();
        let mut held = Vec::new();
        let mut n = 0u64;
        let mut skipped = 0u64;
        let every = self.cfg.state_every_rows.max(1);
        while let Some(chunk) = stream.next().await {
            lines.push(&chunk.context("reading rows")?, &mut held, |l| {
                let text = ctx.render(l)?;
                // A key-less stream needs each row's key value (COPY text) to follow its ties.
                let key = if keyless {
                    ctx.raw_field(l, rk_at)?.to_vec()
                } else {
                    Vec::new()
                };
                Ok((text, key))
            })?;
            for (l, key) in held.drain(..) {
                if let Some(t) = &mut ties {
                    if !t.read(&key, &l) {
                        skipped += 1;
                        continue;
                    }
                }
                n += 1;
                let mark = if !n.is_multiple_of(every) {
                    None
                } else if let Some(t) = &ties {
                    Some(t.bookmark(rk, ctx.field_value(rk_at, &t.value)?))
                } else {
                    Some(json!({"replication_key": rk, "replication_key_value": field(&l, rk)?}))
                };
                emitter.emit(ctx.record(l, None)?).await?;
                if let Some(m) = mark.filter(|m| !m[state::REPLICATION_KEY_VALUE].is_null()) {
                    st.commit(id, m, emitter).await?;
                }
            }
        }
        if skipped > 0 {
            tracing::info!(stream = %id, rows = skipped, "Skipped rows at the bookmark's key value that an earlier run sent (the stream has no key properties).");
        }
        // Every row up to the signpost was read: it is the bookmark now. A key-less stream's
        // bookmark is its last row's key value (the signpost) with the rows read at it.
        let mark = match &ties {
            Some(t) if t.rows_at_value() > 0 => t.bookmark(rk, ctx.field_value(rk_at, &t.value)?),
            // Nothing read (the rows at the bookmark were deleted): the bookmark stays.
            Some(_) => match saved {
                Some(m) => m,
                None => return Ok(n),
            },
            None => json!({"replication_key": rk, "replication_key_value": signpost}),
        };
        if let Some(t) = &ties {
            if t.rows_at_value() > TIES_WARN {
                tracing::warn!(stream = %id, rows = t.rows_at_value(), "Many rows share the last replication-key value; the bookmark lists a digest of each. A key with fewer ties keeps the state small.");
            }
        }
        st.commit(id, mark, emitter).await?;
        Ok(n)
    }

    async fn xmin(
        &self,
        client: &Client,
        ctx: &Ctx<'_>,
        keyless: bool,
        st: &Shared,
        emitter: &mut Emitter,
    ) -> anyhow::Result<u64> {
        let id = ctx.id;
        if ctx.table.kind == "v" {
            bail!("stream {id:?}: a view has no xmin; use FULL_TABLE or INCREMENTAL");
        }
        // The horizon of this snapshot: every transaction below it is committed or aborted and
        // visible (or not) now; anything at or above it may still commit later.
        let horizon: i64 = client
            .query_one(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                &[],
            )
            .await?
            .get(0);
        let saved = st.bookmark(id).await;
        let bm = saved
            .as_ref()
            .and_then(|b| b.get("xmin").and_then(Value::as_i64));
        let epoch = |x: i64| x >> 32;
        let low = |x: i64| x & 0xFFFF_FFFF;
        let where_ = match bm {
            Some(b) if epoch(b) == epoch(horizon) => {
                format!("WHERE xmin::text::bigint >= {}", low(b))
            }
            Some(_) => {
                tracing::warn!(stream = %id, "The transaction counter wrapped around since the last run; reading the whole table once.");
                String::new()
            }
            None => String::new(),
        };
        let sql = ctx.select(&where_, "ORDER BY xmin::text::bigint", None);
        // Rows written by transactions at or above the last horizon are read again (they may
        // not have been visible then); a stream without keys skips the ones it sent already.
        let mut sent = if keyless && !where_.is_empty() {
            RowSet::from_bookmark(saved.as_ref())
        } else {
            RowSet::default()
        };
        let (n, last) = self
            .emit_rows_where(client, ctx, &sql, None, emitter, |text| {
                !sent.take(&row_digest(text))
            })
            .await?;
        let mut total = n;
        if let Some(l) = last {
            emitter.emit(ctx.record(l, None)?).await?;
            total += 1;
        }
        let mut mark = Map::new();
        mark.insert("xmin".into(), json!(horizon));
        if keyless {
            // The rows of this snapshot the next run reads again, by digest.
            let again = ctx.select(
                &format!("WHERE xmin::text::bigint >= {}", low(horizon)),
                "",
                None,
            );
            let stream = client
                .copy_out(&again)
                .await
                .with_context(|| format!("stream {id:?}: reading {}", ctx.qualified()))?;
            futures_util::pin_mut!(stream);
            let (mut lines, mut held, mut rows) = (Lines::default(), Vec::new(), RowSet::default());
            while let Some(chunk) = stream.next().await {
                lines.push(&chunk.context("reading rows")?, &mut held, |l| {
                    ctx.render(l).map(|t| row_digest(&t))
                })?;
                held.drain(..).for_each(|d| rows.add(d));
            }
            if rows.len() > 0 {
                mark.insert(state::ROWS_SENT.into(), rows.to_value());
            }
        }
        st.commit(id, Value::Object(mark), emitter).await?;
        Ok(total)
    }

    /// What a run would read.
    ///
    /// # Errors
    /// Never; the plan needs no connection.
    pub fn plan(&self, catalog: &Catalog, st: &Value) -> anyhow::Result<Vec<PlanStep>> {
        Ok(catalog
            .selected()
            .map(|s| {
                let method = s
                    .replication_method()
                    .unwrap_or("FULL_TABLE")
                    .to_ascii_uppercase();
                let mark = state::bookmark(st, s.tap_stream_id()).cloned();
                let table = format!(
                    "{}.{}",
                    s.stream_meta("schema-name")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    s.stream_meta("table-name")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                );
                let detail = match (method.as_str(), &mark) {
                    ("INCREMENTAL", Some(m)) => format!(
                        "{table} WHERE {} >= {} (up to its current maximum)",
                        s.replication_key().unwrap_or("?"),
                        m.get("replication_key_value").unwrap_or(&Value::Null)
                    ),
                    ("INCREMENTAL", None) => format!("{table}: every row (first run)"),
                    ("XMIN", Some(m)) => format!(
                        "{table} WHERE xmin >= {}",
                        m.get("xmin")
                            .and_then(Value::as_i64)
                            .map_or(0, |x| x & 0xFFFF_FFFF)
                    ),
                    ("FULL_TABLE", Some(m)) if m.get("last_pk").is_some() => {
                        format!("{table} after key {} (resuming)", m["last_pk"])
                    }
                    _ => format!("{table}: every row"),
                };
                PlanStep {
                    stream: s.tap_stream_id().to_owned(),
                    method,
                    bookmark: mark,
                    detail,
                }
            })
            .collect())
    }
}
