//! A Postgres table (an application's database) as a reverse-ETL destination: a batch is
//! upserted by key in one transaction (`json_populate_recordset` casts each field to its
//! column's type; values travel as one JSON parameter, never as SQL text); a batch the database
//! refuses is split in halves until the rows at fault are found, so one bad row does not hold
//! back the others.

use serde_json::Value;

use super::changes::{Change, Op};
use super::spec::Mode;
use crate::error::config_error;
use crate::sql::quote_ident;

/// The destination table and how to write it.
#[derive(Debug)]
pub struct PgDest {
    client: tokio_postgres::Client,
    _task: tokio::task::JoinHandle<()>,
    table: String,
    key_column: String,
    mode: Mode,
}

impl PgDest {
    /// Connects with the Postgres target's config keys plus `table` (`schema.table`) and
    /// `key_column` (default: the sync's primary key field).
    ///
    /// # Errors
    /// A config error, or the server unreachable.
    pub async fn connect(
        v: &Value,
        default_key: &str,
        fields: &[String],
        mode: Mode,
        at: &str,
    ) -> anyhow::Result<PgDest> {
        let s = |k: &str| v.get(k).and_then(crate::transform::project::scalar_string);
        crate::secrets::register_config(v);
        let table = s("table").ok_or_else(|| {
            config_error(format!(
                "{at}: a postgres destination needs `table` (schema.table)"
            ))
        })?;
        let key_column = s("key_column").unwrap_or_else(|| default_key.to_string());
        if !fields.is_empty() && !fields.contains(&key_column) {
            return Err(config_error(format!(
                "{at}: the key column {key_column:?} must be a mapped field (fields: {})",
                fields.join(", ")
            )));
        }
        let (host, user, password, dbname, url, sslmode) = (
            s("host"),
            s("user"),
            s("password"),
            s("dbname").or_else(|| s("database")),
            s("url"),
            s("sslmode"),
        );
        let params = crate::pg::ConnParams {
            host: host.as_deref(),
            port: s("port").and_then(|p| p.parse().ok()).unwrap_or(5432),
            user: user.as_deref(),
            password: password.as_deref(),
            dbname: dbname.as_deref(),
            url: url.as_deref(),
            sslmode: sslmode.as_deref(),
            sslrootcert: None,
            application_name: "ferry reverse",
        };
        let (client, task) = crate::pg::connect(at, params).await?;
        let table = table
            .split('.')
            .map(quote_ident)
            .collect::<Vec<_>>()
            .join(".");
        Ok(PgDest {
            client,
            _task: task,
            table,
            key_column,
            mode,
        })
    }

    fn statements(&self, fields: &[String]) -> (String, String) {
        let t = &self.table;
        let k = quote_ident(&self.key_column);
        let cols: Vec<String> = fields.iter().map(|f| quote_ident(f)).collect();
        let list = cols.join(", ");
        let set = cols
            .iter()
            .filter(|c| **c != k)
            .map(|c| format!("{c} = excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = format!("select {list} from json_populate_recordset(null::{t}, $1::text::json)");
        let write = match self.mode {
            Mode::Insert => format!("insert into {t} ({list}) {rows} on conflict ({k}) do nothing"),
            Mode::Update => {
                let upd = cols
                    .iter()
                    .filter(|c| **c != k)
                    .map(|c| format!("{c} = s.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("update {t} as d set {upd} from ({rows}) s where d.{k} = s.{k}")
            }
            _ if set.is_empty() => {
                format!("insert into {t} ({list}) {rows} on conflict ({k}) do nothing")
            }
            _ => format!("insert into {t} ({list}) {rows} on conflict ({k}) do update set {set}"),
        };
        let delete = format!("delete from {t} where {k}::text = any($1::text[])");
        (write, delete)
    }

    /// What would be sent, for `--dry-run`.
    pub fn describe(&self, batch: &[Change]) -> Vec<String> {
        let fields: Vec<String> = batch
            .iter()
            .find(|c| c.op != Op::Remove)
            .map(|c| c.fields.keys().cloned().collect())
            .unwrap_or_default();
        let (w, d) = self.statements(&fields);
        vec![w, d]
    }

    async fn try_batch(&mut self, batch: &[&Change]) -> Result<(), String> {
        let upserts: Vec<Value> = batch
            .iter()
            .filter(|c| c.op != Op::Remove)
            .map(|c| Value::Object(c.fields.clone()))
            .collect();
        let removes: Vec<String> = batch
            .iter()
            .filter(|c| c.op == Op::Remove)
            .map(|c| c.key.clone())
            .collect();
        let fields: Vec<String> = batch
            .iter()
            .find(|c| c.op != Op::Remove)
            .map(|c| c.fields.keys().cloned().collect())
            .unwrap_or_default();
        let (write, delete) = self.statements(&fields);
        let tx = self.client.transaction().await.map_err(|e| err_text(&e))?;
        if !upserts.is_empty() {
            let json = Value::Array(upserts).to_string();
            tx.execute(&write, &[&json])
                .await
                .map_err(|e| err_text(&e))?;
        }
        if !removes.is_empty() {
            tx.execute(&delete, &[&removes])
                .await
                .map_err(|e| err_text(&e))?;
        }
        tx.commit().await.map_err(|e| err_text(&e))
    }

    /// Writes a batch; per row Ok or the database's error for that row.
    ///
    /// # Errors
    /// A lost connection.
    pub async fn deliver(&mut self, batch: &[Change]) -> anyhow::Result<Vec<Result<(), String>>> {
        let mut out: Vec<Result<(), String>> = vec![Ok(()); batch.len()];
        // Halve a refused batch until each refusal is pinned to one row.
        let mut stack: Vec<(usize, usize)> = vec![(0, batch.len())];
        while let Some((a, b)) = stack.pop() {
            if a >= b {
                continue;
            }
            let part: Vec<&Change> = batch[a..b].iter().collect();
            match self.try_batch(&part).await {
                Ok(()) => {}
                Err(_) if self.client.is_closed() => {
                    anyhow::bail!("the destination database closed the connection")
                }
                Err(e) if b - a == 1 => out[a] = Err(e),
                Err(_) => {
                    let mid = a + (b - a) / 2;
                    stack.push((mid, b));
                    stack.push((a, mid));
                }
            }
        }
        Ok(out)
    }
}

fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = db.message().to_string();
            if let Some(d) = db.detail() {
                m.push_str(&format!(" ({d})"));
            }
            m
        }
        None => e.to_string(),
    }
}
