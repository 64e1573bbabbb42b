//! Tap `postgres`: discovery of tables, views and materialized views, and extraction by
//! FULL_TABLE (key-range chunks, resumable), INCREMENTAL (by a replication key) or XMIN (by
//! transaction id), each stream in one read-only REPEATABLE READ snapshot.
//!
//! Rows are rendered as JSON by Postgres itself (`row_to_json` over per-column expressions that
//! fix the representation of decimals, non-finite floats and dates) and streamed with
//! `COPY … TO STDOUT`; each line becomes a raw record with no re-encoding.

mod discover;
mod sync;

use serde::Deserialize;
use serde_json::Value;
use tokio_postgres::Client;

use crate::about::{About, ConfigKey};
use crate::error::config_error;

const fn default_port() -> u16 {
    5432
}
const fn default_state_every() -> u64 {
    10_000
}
const fn default_chunk_rows() -> u64 {
    100_000
}

/// How NaN and ±Infinity in float columns travel (JSON has no literal for them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFiniteFloats {
    /// As the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
    #[default]
    String,
    /// As null.
    Null,
}

/// The tap's config: pipelinewise-tap-postgres' keys plus `url`, `schemas`, `sslmode`,
/// `application_name`, `statement_timeout_secs`, `state_every_rows`, `chunk_rows`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTapConfig {
    /// Server host.
    #[serde(default)]
    pub host: Option<String>,
    /// Server port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// User.
    #[serde(default)]
    pub user: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<String>,
    /// Database.
    #[serde(default)]
    pub dbname: Option<String>,
    /// A `postgres://` URL instead of the fields.
    #[serde(default)]
    pub url: Option<String>,
    /// `disable`, `allow`, `prefer` (default), `require`, `verify-ca` or `verify-full`.
    #[serde(default)]
    pub sslmode: Option<String>,
    /// PEM file of the certificate authority for `verify-ca`/`verify-full` (default: the
    /// public web roots).
    #[serde(default)]
    pub sslrootcert: Option<String>,
    /// PipelineWise: comma-separated schemas to discover.
    #[serde(default)]
    pub filter_schemas: Option<String>,
    /// Schemas to discover (default: every non-system schema).
    #[serde(default)]
    pub schemas: Option<Vec<String>>,
    /// `application_name` of the session.
    #[serde(default)]
    pub application_name: Option<String>,
    /// Statement timeout, seconds (default: the server's).
    #[serde(default)]
    pub statement_timeout_secs: Option<u64>,
    /// Emit a STATE at least every N rows.
    #[serde(default = "default_state_every")]
    pub state_every_rows: u64,
    /// Rows per key-range chunk of a FULL_TABLE read.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: u64,
    /// INCREMENTAL: re-read this much before the bookmark (an interval such as `"10 minutes"`
    /// for date and timestamp keys, a number for numeric keys), for rows whose transaction
    /// committed after a run with a key value below that run's bookmark.
    #[serde(default)]
    pub lookback: Option<String>,
    /// How discovery describes `real`/`double precision` columns, whose NaN and ±Infinity JSON
    /// cannot write: `string` (default) sends them as `"NaN"`, `"Infinity"`, `"-Infinity"` (the
    /// schema says so, with `anyOf`); `null` sends null instead (lossy; for targets that
    /// accept only numbers). A sync follows what its catalog says.
    #[serde(default)]
    pub non_finite_floats: NonFiniteFloats,
    /// PipelineWise key, accepted (ssl is decided by `sslmode`).
    #[serde(default)]
    pub ssl: Option<Value>,
    /// PipelineWise keys accepted and ignored.
    #[serde(default)]
    pub tap_id: Option<String>,
    /// Accepted and ignored.
    #[serde(default)]
    pub max_run_seconds: Option<u64>,
    /// Accepted and ignored (logical replication is not used).
    #[serde(default)]
    pub logical_poll_total_seconds: Option<u64>,
    /// Accepted and ignored.
    #[serde(default)]
    pub break_at_end_lsn: Option<bool>,
    /// Accepted and ignored.
    #[serde(default)]
    pub debug_lsn: Option<Value>,
    /// FULL_TABLE of a table with a single integer key: read this many key ranges at once, each
    /// on its own connection, all in one exported snapshot (default 1).
    #[serde(default)]
    pub table_parallelism: Option<u32>,
    /// Skip (with a warning) a selected table the user may not read, instead of failing it.
    #[serde(default)]
    pub skip_unreadable: bool,
    /// Streams read at once, each on its own connection and snapshot (default 1).
    #[serde(default)]
    pub max_parallel_streams: Option<u32>,
}

/// The `postgres` tap.
#[derive(Debug)]
pub struct PostgresTap {
    cfg: PostgresTapConfig,
}

/// The `--about` of the Postgres tap.
pub fn about() -> About {
    About {
        name: "postgres".into(),
        description: "Reads PostgreSQL tables and views: FULL_TABLE (resumable key-range chunks), INCREMENTAL by a replication key, XMIN.",
        capabilities: vec!["catalog", "discover", "state", "about"],
        settings: vec![
            ConfigKey { name: "host, port, user, password, dbname", ty: "string", required: true, description: "Connection (or `url`). The password is never logged." },
            ConfigKey { name: "url", ty: "string", required: false, description: "`postgres://user:pass@host:port/db` instead of the fields." },
            ConfigKey { name: "schemas", ty: "array", required: false, description: "Schemas to discover (or PipelineWise's `filter_schemas`, comma-separated); default every non-system schema." },
            ConfigKey { name: "sslmode", ty: "string", required: false, description: "`disable`, `allow`, `prefer` (default), `require`, `verify-ca`, `verify-full`; with `sslrootcert` (PEM) for the last two." },
            ConfigKey { name: "application_name", ty: "string", required: false, description: "Session application_name (default `ferry`)." },
            ConfigKey { name: "statement_timeout_secs", ty: "integer", required: false, description: "Statement timeout for the tap's queries." },
            ConfigKey { name: "state_every_rows", ty: "integer", required: false, description: "Emit a STATE at least every N rows (default 10000)." },
            ConfigKey { name: "table_parallelism", ty: "integer", required: false, description: "FULL_TABLE of a table with one integer key: key ranges read at once in one exported snapshot (default 1)." },
            ConfigKey { name: "skip_unreadable", ty: "boolean", required: false, description: "Skip a selected table the user may not read, with a warning, instead of failing that stream (default false)." },
            ConfigKey { name: "max_parallel_streams", ty: "integer", required: false, description: "Streams read at once, each on its own connection and snapshot (default 1)." },
            ConfigKey { name: "chunk_rows", ty: "integer", required: false, description: "Rows per key-range chunk of a FULL_TABLE read (default 100000)." },
            ConfigKey { name: "non_finite_floats", ty: "string", required: false, description: "NaN and ±Infinity of real/double columns: `string` (default: \"NaN\", \"Infinity\", \"-Infinity\", described by the schema) or `null` (lossy, for targets that take only numbers). Read at discovery." },
            ConfigKey { name: "lookback", ty: "string", required: false, description: "INCREMENTAL: re-read this much before the bookmark (`\"10 minutes\"` for timestamp keys, a number for numeric keys)." },
        ],
    }
}

impl PostgresTap {
    /// Parses the config.
    ///
    /// # Errors
    /// A config error naming the problem.
    pub fn new(config: &Value) -> anyhow::Result<PostgresTap> {
        let cfg: PostgresTapConfig = serde_json::from_value(config.clone())
            .map_err(|e| config_error(format!("tap postgres config: {e}")))?;
        crate::pg::check_sslmode("tap postgres", cfg.sslmode.as_deref())?;
        Ok(PostgresTap { cfg })
    }

    fn schemas(&self) -> Option<Vec<String>> {
        if let Some(s) = &self.cfg.schemas {
            return Some(s.clone());
        }
        self.cfg.filter_schemas.as_ref().map(|f| {
            f.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
    }

    /// Connects, with the session settings every query relies on (UTC, ISO dates).
    async fn connect(&self) -> anyhow::Result<(Client, tokio::task::JoinHandle<()>)> {
        let c = &self.cfg;
        let (client, task) = crate::pg::connect(
            "tap postgres",
            crate::pg::ConnParams {
                host: c.host.as_deref(),
                port: c.port,
                user: c.user.as_deref(),
                password: c.password.as_deref(),
                dbname: c.dbname.as_deref(),
                url: c.url.as_deref(),
                sslmode: c.sslmode.as_deref(),
                sslrootcert: c.sslrootcert.as_deref(),
                application_name: c.application_name.as_deref().unwrap_or("ferry"),
            },
        )
        .await?;
        let mut setup = String::from("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'iso_8601'; SET extra_float_digits = 3;");
        if let Some(t) = c.statement_timeout_secs {
            setup.push_str(&format!(" SET statement_timeout = '{}s';", t));
        }
        client.batch_execute(&setup).await?;
        Ok((client, task))
    }
}
