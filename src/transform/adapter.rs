//! The warehouse a transform runs in: one connection type over Postgres (tokio-postgres) and
//! DuckDB (the `duckdb` crate), with the few operations the materializations need.

use std::collections::HashMap;

use anyhow::Context;
use futures_util::SinkExt;

use super::project::{scalar_string, AdapterKind, Target};

/// What the warehouse said about a statement, for run_results (`adapter_response`).
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// dbt's `_message` (`CREATE VIEW`, `SELECT 3`, `INSERT 0 5`, `OK`).
    pub message: String,
    /// Rows affected, when known.
    pub rows: Option<u64>,
}

/// A connection.
pub enum Conn {
    /// Postgres, with its connection task.
    Pg(tokio_postgres::Client, tokio::task::JoinHandle<()>),
    /// DuckDB (blocking calls, run with `block_in_place`).
    Duck(duckdb::Connection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Pg(..) => "Conn::Pg",
            Conn::Duck(_) => "Conn::Duck",
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Conn::Pg(_, task) = self {
            task.abort();
        }
    }
}

/// A database error, kept apart so messages read "Database Error in model …".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DbError(pub String);

fn pg_err(e: &tokio_postgres::Error) -> DbError {
    match e.as_db_error() {
        Some(db) => {
            let mut m = db.message().to_string();
            if let Some(d) = db.detail() {
                m.push_str(&format!("\n  DETAIL: {d}"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!("\n  HINT: {h}"));
            }
            DbError(m)
        }
        None => DbError(e.to_string()),
    }
}

fn duck_err(e: &duckdb::Error) -> DbError {
    DbError(e.to_string())
}

/// Opens one connection to the target.
///
/// # Errors
/// The server is unreachable or the file cannot be opened (message without the password).
pub async fn connect(target: &Target) -> anyhow::Result<Conn> {
    match target.kind {
        AdapterKind::Postgres => {
            let f = &target.fields;
            let s = |k: &str| f.get(k).and_then(scalar_string);
            let host = s("host");
            let user = s("user");
            let password = s("password").or_else(|| s("pass"));
            let dbname = s("dbname").or_else(|| s("database"));
            let sslmode = s("sslmode");
            let url = s("url");
            let port = s("port").and_then(|p| p.parse().ok()).unwrap_or(5432);
            let params = crate::pg::ConnParams {
                host: host.as_deref(),
                port,
                user: user.as_deref(),
                password: password.as_deref(),
                dbname: dbname.as_deref(),
                url: url.as_deref(),
                sslmode: sslmode.as_deref(),
                sslrootcert: None,
                application_name: "ferry transform",
            };
            let (client, task) = crate::pg::connect("transform", params).await?;
            // `drop … if exists` and friends would log a NOTICE each.
            client
                .batch_execute("set client_min_messages to warning")
                .await
                .map_err(|e| pg_err(&e))?;
            Ok(Conn::Pg(client, task))
        }
        AdapterKind::DuckDb => {
            let conn = match &target.path {
                Some(p) => {
                    if let Some(dir) = p.parent() {
                        std::fs::create_dir_all(dir).ok();
                    }
                    duckdb::Connection::open(p)
                        .map_err(|e| duck_err(&e))
                        .with_context(|| format!("opening the DuckDB file {}", p.display()))?
                }
                None => duckdb::Connection::open_in_memory().map_err(|e| duck_err(&e))?,
            };
            Ok(Conn::Duck(conn))
        }
    }
}

impl Conn {
    /// Another connection to the same warehouse (a thread of its own).
    ///
    /// # Errors
    /// As [`connect`].
    pub async fn another(&self, target: &Target) -> anyhow::Result<Conn> {
        match self {
            Conn::Duck(c) => Ok(Conn::Duck(c.try_clone().map_err(|e| duck_err(&e))?)),
            Conn::Pg(..) => connect(target).await,
        }
    }

    /// Runs one statement.
    ///
    /// # Errors
    /// A [`DbError`] with the database's message.
    pub async fn execute(&mut self, sql: &str) -> Result<Response, DbError> {
        match self {
            Conn::Pg(c, _) => {
                // The simple protocol: DDL and several statements alike, and the command tag.
                let msgs = c.simple_query(sql).await.map_err(|e| pg_err(&e))?;
                let mut resp = Response::default();
                for m in msgs {
                    if let tokio_postgres::SimpleQueryMessage::CommandComplete(n) = m {
                        resp.rows = Some(n);
                    }
                }
                Ok(resp)
            }
            Conn::Duck(c) => tokio::task::block_in_place(|| {
                c.execute_batch(sql).map_err(|e| duck_err(&e))?;
                Ok(Response {
                    message: "OK".into(),
                    rows: None,
                })
            }),
        }
    }

    /// Runs one statement with text parameters (`$1` on Postgres, `?` on DuckDB: see
    /// [`Conn::placeholder`]); the values never become SQL text. Returns rows affected.
    ///
    /// # Errors
    /// A [`DbError`].
    pub async fn execute_params(&mut self, sql: &str, params: &[String]) -> Result<u64, DbError> {
        match self {
            Conn::Pg(c, _) => {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                c.execute(sql, &refs).await.map_err(|e| pg_err(&e))
            }
            Conn::Duck(c) => tokio::task::block_in_place(|| {
                c.execute(sql, duckdb::params_from_iter(params.iter()))
                    .map(|n| n as u64)
                    .map_err(|e| duck_err(&e))
            }),
        }
    }

    /// The `i`-th (1-based) parameter placeholder of this warehouse.
    pub fn placeholder(&self, i: usize) -> String {
        match self {
            Conn::Pg(..) => format!("${i}"),
            Conn::Duck(_) => "?".to_string(),
        }
    }

    /// The warehouse kind.
    pub fn kind(&self) -> AdapterKind {
        match self {
            Conn::Pg(..) => AdapterKind::Postgres,
            Conn::Duck(_) => AdapterKind::DuckDb,
        }
    }

    /// Runs a query and returns its rows as strings (NULL as `None`), for small results.
    ///
    /// # Errors
    /// A [`DbError`].
    pub async fn query_strings(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, DbError> {
        match self {
            Conn::Pg(c, _) => {
                let msgs = c.simple_query(sql).await.map_err(|e| pg_err(&e))?;
                Ok(msgs
                    .into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                        }
                        _ => None,
                    })
                    .collect())
            }
            Conn::Duck(c) => tokio::task::block_in_place(|| {
                let mut stmt = c.prepare(sql).map_err(|e| duck_err(&e))?;
                let mut rows = stmt.query([]).map_err(|e| duck_err(&e))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next().map_err(|e| duck_err(&e))? {
                    let n = r.as_ref().column_count();
                    let mut row = Vec::with_capacity(n);
                    for i in 0..n {
                        let v: duckdb::types::Value = r.get(i).map_err(|e| duck_err(&e))?;
                        row.push(duck_string(v));
                    }
                    out.push(row);
                }
                Ok(out)
            }),
        }
    }

    /// Runs a statement for `run_query`/`statement`: its column names, its rows as JSON
    /// (numbers and booleans typed, the rest as text) and the warehouse's message.
    ///
    /// # Errors
    /// A [`DbError`].
    pub async fn query_table(&mut self, sql: &str) -> Result<QueryOutput, DbError> {
        match self {
            Conn::Pg(c, _) => {
                // The column types from a prepare (when the text is one statement), the values
                // as text from the simple protocol (every type has a text form).
                let types: Vec<String> = match c.prepare(sql).await {
                    Ok(st) => st
                        .columns()
                        .iter()
                        .map(|c| c.type_().name().to_string())
                        .collect(),
                    Err(_) => Vec::new(),
                };
                let msgs = c.simple_query(sql).await.map_err(|e| pg_err(&e))?;
                let mut out = QueryOutput::default();
                for m in msgs {
                    match m {
                        tokio_postgres::SimpleQueryMessage::RowDescription(cols) => {
                            out.columns = cols.iter().map(|c| c.name().to_string()).collect();
                        }
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            if out.columns.is_empty() {
                                out.columns =
                                    r.columns().iter().map(|c| c.name().to_string()).collect();
                            }
                            out.rows.push(
                                (0..r.len())
                                    .map(|i| pg_json(r.get(i), types.get(i).map(String::as_str)))
                                    .collect(),
                            );
                        }
                        tokio_postgres::SimpleQueryMessage::CommandComplete(n) => {
                            out.rows_affected = n;
                        }
                        _ => {}
                    }
                }
                out.message = format!("SELECT {}", out.rows.len());
                Ok(out)
            }
            Conn::Duck(c) => tokio::task::block_in_place(|| {
                let mut stmt = c.prepare(sql).map_err(|e| duck_err(&e))?;
                let mut out = QueryOutput::default();
                let mut rows = stmt.query([]).map_err(|e| duck_err(&e))?;
                while let Some(r) = rows.next().map_err(|e| duck_err(&e))? {
                    let n = r.as_ref().column_count();
                    let mut row = Vec::with_capacity(n);
                    for i in 0..n {
                        let v: duckdb::types::Value = r.get(i).map_err(|e| duck_err(&e))?;
                        row.push(duck_json(v));
                    }
                    out.rows.push(row);
                }
                drop(rows);
                out.columns = stmt.column_names();
                out.rows_affected = out.rows.len() as u64;
                out.message = "OK".into();
                Ok(out)
            }),
        }
    }

    /// Tables and views in the given schemas: (schema, name) → `table` | `view`.
    ///
    /// # Errors
    /// A [`DbError`].
    pub async fn relations(
        &mut self,
        database: &str,
        schemas: &[String],
    ) -> Result<HashMap<(String, String), &'static str>, DbError> {
        if schemas.is_empty() {
            return Ok(HashMap::new());
        }
        let list = schemas
            .iter()
            .map(|s| sql_string(s))
            .collect::<Vec<_>>()
            .join(", ");
        let catalog = match self {
            Conn::Pg(..) => String::new(),
            Conn::Duck(_) => format!(" and table_catalog = {}", sql_string(database)),
        };
        let rows = self
            .query_strings(&format!(
                "select table_schema, table_name, table_type from information_schema.tables where table_schema in ({list}){catalog}"
            ))
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let mut it = r.into_iter();
                let (s, n, t) = (it.next()??, it.next()??, it.next()??);
                let kind = if t.to_ascii_uppercase().contains("VIEW") {
                    "view"
                } else {
                    "table"
                };
                Some(((s, n), kind))
            })
            .collect())
    }

    /// The views that read a relation, directly or through other views: what `drop … cascade`
    /// takes along on Postgres. DuckDB does not track views' dependencies (none).
    ///
    /// # Errors
    /// A [`DbError`].
    pub async fn dependent_views(
        &mut self,
        schema: &str,
        name: &str,
    ) -> Result<Vec<(String, String)>, DbError> {
        if matches!(self, Conn::Duck(_)) {
            return Ok(Vec::new());
        }
        let (s, n) = (sql_string(schema), sql_string(name));
        // A view's rewrite rule depends on each relation it reads (pg_depend), so walking the
        // rules from the relation finds every view a cascade drops.
        let rows = self
            .query_strings(&format!(
                "with recursive readers(oid) as (\
                   select c.oid from pg_class c join pg_namespace ns on ns.oid = c.relnamespace \
                   where ns.nspname = {s} and c.relname = {n} \
                   union \
                   select r.ev_class from pg_depend d \
                   join pg_rewrite r on r.oid = d.objid \
                   join readers on d.refobjid = readers.oid \
                   where d.classid = 'pg_rewrite'::regclass and d.refclassid = 'pg_class'::regclass) \
                 select ns.nspname, c.relname from readers \
                 join pg_class c on c.oid = readers.oid \
                 join pg_namespace ns on ns.oid = c.relnamespace \
                 where not (ns.nspname = {s} and c.relname = {n})"
            ))
            .await?;
        Ok(pairs(rows))
    }

    /// A relation's columns with their full types (`character varying(10)`), in order;
    /// `relation` as SQL (`"schema"."name"`, or a temporary table's quoted name).
    ///
    /// # Errors
    /// A [`DbError`].
    pub async fn typed_columns(
        &mut self,
        relation: &str,
    ) -> Result<Vec<(String, String)>, DbError> {
        let sql = match self {
            Conn::Pg(..) => format!(
                "select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a \
                 where a.attrelid = {}::regclass and a.attnum > 0 and not a.attisdropped \
                 order by a.attnum",
                sql_string(relation)
            ),
            Conn::Duck(_) => format!("select column_name, column_type from (describe {relation})"),
        };
        let rows = self.query_strings(&sql).await?;
        Ok(pairs(rows))
    }

    /// The column names a query returns, without running it.
    ///
    /// # Errors
    /// A [`DbError`] (the query does not compile).
    pub async fn query_columns(&mut self, sql: &str) -> Result<Vec<String>, DbError> {
        match self {
            Conn::Pg(c, _) => {
                let st = c.prepare(sql).await.map_err(|e| pg_err(&e))?;
                Ok(st.columns().iter().map(|c| c.name().to_string()).collect())
            }
            Conn::Duck(_) => {
                let rows = self
                    .query_strings(&format!(
                        "select column_name from (describe select * from (\n{sql}\n) as __dbt_sbq)"
                    ))
                    .await?;
                Ok(rows
                    .into_iter()
                    .filter_map(|r| r.into_iter().next().flatten())
                    .collect())
            }
        }
    }

    /// Column names of a relation, in order (temporary tables included: `schema` None).
    ///
    /// # Errors
    /// A [`DbError`].
    pub async fn columns(
        &mut self,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Vec<String>, DbError> {
        let filter = match schema {
            Some(s) => format!(" and table_schema = {}", sql_string(s)),
            None => String::new(),
        };
        let rows = self
            .query_strings(&format!(
                "select column_name from information_schema.columns where table_name = {}{filter} order by ordinal_position",
                sql_string(name)
            ))
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect())
    }

    /// Loads a CSV file (with a header) into an existing table, in bulk.
    ///
    /// # Errors
    /// A [`DbError`] (a value that does not fit its column, say).
    pub async fn load_csv(
        &mut self,
        relation: &str,
        columns: &[String],
        path: &std::path::Path,
        delimiter: char,
    ) -> Result<u64, DbError> {
        let cols = columns
            .iter()
            .map(|c| super::jinja::quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        match self {
            Conn::Pg(c, _) => {
                // dbt-postgres inserts the values agate read, where an empty cell and `null`
                // (any case, spaces around) are NULL; COPY would keep `null` and a quoted ""
                // as text. So the rows are rewritten on the way: NULL cells unquoted and empty,
                // every other cell quoted.
                let sql = format!("copy {relation} ({cols}) from stdin with (format csv)");
                let sink = c
                    .copy_in::<_, bytes::Bytes>(&sql)
                    .await
                    .map_err(|e| pg_err(&e))?;
                futures_util::pin_mut!(sink);
                let mut rdr = csv::ReaderBuilder::new()
                    .delimiter(delimiter as u8)
                    .from_path(path)
                    .map_err(|e| DbError(format!("cannot read {}: {e}", path.display())))?;
                let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
                let mut rec = csv::StringRecord::new();
                let mut line = 1u64;
                loop {
                    line += 1;
                    let more = rdr
                        .read_record(&mut rec)
                        .map_err(|e| DbError(format!("{}, line {line}: {e}", path.display())))?;
                    if more {
                        for (i, cell) in rec.iter().enumerate() {
                            if i > 0 {
                                buf.push(b',');
                            }
                            if !super::materialize::is_null_cell(cell) {
                                buf.push(b'"');
                                buf.extend_from_slice(cell.replace('"', "\"\"").as_bytes());
                                buf.push(b'"');
                            }
                        }
                        buf.push(b'\n');
                    }
                    if buf.len() >= 1 << 20 || (!more && !buf.is_empty()) {
                        sink.send(bytes::Bytes::from(std::mem::take(&mut buf)))
                            .await
                            .map_err(|e| pg_err(&e))?;
                    }
                    if !more {
                        break;
                    }
                }
                sink.as_mut().finish().await.map_err(|e| pg_err(&e))
            }
            Conn::Duck(c) => tokio::task::block_in_place(|| {
                let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
                let sql = format!(
                    "copy {relation} ({cols}) from {} (format csv, header true, delimiter {})",
                    sql_string(&abs.to_string_lossy()),
                    sql_string(&delimiter.to_string())
                );
                c.execute(&sql, [])
                    .map(|n| n as u64)
                    .map_err(|e| duck_err(&e))
            }),
        }
    }
}

/// The first two columns of each row, where both are set.
fn pairs(rows: Vec<Vec<Option<String>>>) -> Vec<(String, String)> {
    rows.into_iter()
        .filter_map(|r| {
            let mut it = r.into_iter();
            Some((it.next()??, it.next()??))
        })
        .collect()
}

/// What `run_query` returns, before it becomes an agate-like table.
#[derive(Debug, Clone, Default)]
pub struct QueryOutput {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows.
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Rows returned or affected.
    pub rows_affected: u64,
    /// The warehouse's message.
    pub message: String,
}

/// A Postgres value in text form as JSON, typed by the column's type name.
fn pg_json(v: Option<&str>, ty: Option<&str>) -> serde_json::Value {
    use serde_json::Value as J;
    let Some(v) = v else { return J::Null };
    match ty {
        Some("int2" | "int4" | "int8" | "oid") => {
            v.parse::<i64>().map_or_else(|_| J::from(v), J::from)
        }
        Some("float4" | "float8" | "numeric") => match v.parse::<i64>() {
            Ok(i) if ty == Some("numeric") && !v.contains('.') => J::from(i),
            _ => v
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map_or_else(|| J::from(v), J::from),
        },
        Some("bool") => J::from(v == "t"),
        _ => J::from(v),
    }
}

fn duck_json(v: duckdb::types::Value) -> serde_json::Value {
    use duckdb::types::Value as V;
    use serde_json::Value as J;
    match v {
        V::Null => J::Null,
        V::Boolean(b) => J::from(b),
        V::TinyInt(x) => J::from(x),
        V::SmallInt(x) => J::from(x),
        V::Int(x) => J::from(x),
        V::BigInt(x) => J::from(x),
        V::UTinyInt(x) => J::from(x),
        V::USmallInt(x) => J::from(x),
        V::UInt(x) => J::from(x),
        V::UBigInt(x) => J::from(x),
        V::Float(x) => J::from(f64::from(x)),
        V::Double(x) => J::from(x),
        V::HugeInt(x) => i64::try_from(x).map_or_else(|_| J::from(x as f64), J::from),
        V::Decimal(d) => {
            let s = d.to_string();
            s.parse::<i64>()
                .map(J::from)
                .or_else(|_| s.parse::<f64>().map(J::from))
                .unwrap_or(J::from(s))
        }
        other => duck_string(other).map_or(J::Null, J::from),
    }
}

fn duck_string(v: duckdb::types::Value) -> Option<String> {
    use duckdb::types::Value as V;
    Some(match v {
        V::Null => return None,
        V::Boolean(b) => b.to_string(),
        V::TinyInt(x) => x.to_string(),
        V::SmallInt(x) => x.to_string(),
        V::Int(x) => x.to_string(),
        V::BigInt(x) => x.to_string(),
        V::HugeInt(x) => x.to_string(),
        V::UTinyInt(x) => x.to_string(),
        V::USmallInt(x) => x.to_string(),
        V::UInt(x) => x.to_string(),
        V::UBigInt(x) => x.to_string(),
        V::Float(x) => x.to_string(),
        V::Double(x) => x.to_string(),
        V::Text(s) => s,
        other => format!("{other:?}"),
    })
}

/// A SQL string literal (single quotes doubled): for catalog lookups, never for data.
pub use crate::sql::quote_literal as sql_string;

/// The connection fields a profile output may carry, for messages (secrets left out).
pub fn describe(target: &Target) -> String {
    match target.kind {
        AdapterKind::Postgres => {
            let g = |k: &str| {
                target
                    .fields
                    .get(k)
                    .and_then(scalar_string)
                    .unwrap_or_default()
            };
            format!(
                "postgres {}:{}/{} schema {}",
                g("host"),
                target
                    .fields
                    .get("port")
                    .and_then(scalar_string)
                    .unwrap_or_else(|| "5432".into()),
                target.database,
                target.schema
            )
        }
        AdapterKind::DuckDb => format!(
            "duckdb {} schema {}",
            target
                .path
                .as_ref()
                .map_or_else(|| ":memory:".to_string(), |p| p.display().to_string()),
            target.schema
        ),
    }
}
