//! `ferry transform source freshness`: how old the newest row of each source table is, held
//! against its `warn_after`/`error_after`, as dbt checks it; results in `target/sources.json`.

use std::time::Instant;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use super::adapter::{self, Conn};
use super::nodes::{Graph, Source};
use super::project::{AdapterKind, Target};
use crate::error::config_error;

/// A `warn_after` or `error_after`: a count of minutes, hours or days.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Time {
    /// How many.
    pub count: Option<i64>,
    /// `minute`, `hour` or `day`.
    pub period: Option<String>,
}

impl Time {
    /// dbt's truth value: both a count and a period.
    fn is_set(&self) -> bool {
        self.seconds().is_some()
    }

    fn seconds(&self) -> Option<i64> {
        let unit = match self.period.as_deref()? {
            "minute" => 60,
            "hour" => 3600,
            "day" => 86_400,
            _ => return None,
        };
        Some(self.count? * unit)
    }

    /// dbt's test: older than the threshold (not equal).
    fn exceeded(&self, age: f64) -> bool {
        self.seconds().is_some_and(|s| age > s as f64)
    }

    fn json(&self) -> Value {
        json!({"count": self.count, "period": self.period})
    }

    /// `None` for an explicit `null`.
    fn parse(v: &Value, at: &str) -> anyhow::Result<Option<Time>> {
        let o = match v {
            Value::Null => return Ok(None),
            Value::Object(o) => o,
            v => {
                return Err(config_error(format!(
                    "{at}: expected {{count: N, period: minute|hour|day}}, got {v}"
                )))
            }
        };
        let mut t = Time::default();
        if let Some(c) = o.get("count").filter(|c| !c.is_null()) {
            t.count = Some(c.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
                config_error(format!("{at}: `count` must be a whole number, not {c}"))
            })?);
        }
        match o.get("period") {
            None | Some(Value::Null) => {}
            Some(Value::String(p)) if matches!(p.as_str(), "minute" | "hour" | "day") => {
                t.period = Some(p.clone());
            }
            Some(p) => {
                return Err(config_error(format!(
                    "{at}: `period` must be minute, hour or day, not {p}"
                )))
            }
        }
        Ok(Some(t))
    }
}

/// dbt's `merge_freshness_time_thresholds`: a complete threshold replaces, an explicit
/// `null` clears, a partial one (a count without a period) is ignored.
fn merge_time(base: Option<Time>, update: Option<Time>) -> Option<Time> {
    match (base, update) {
        (_, None) => None,
        (Some(b), Some(u)) if !u.is_set() => Some(b),
        (_, u) => u,
    }
}

/// A source table's `freshness:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Threshold {
    /// Warn when the newest row is older.
    pub warn_after: Time,
    /// Fail when the newest row is older.
    pub error_after: Time,
    /// A `where` clause limiting the rows looked at.
    pub filter: Option<String>,
}

/// One layer as dbt holds it while merging (an explicitly null threshold is `None`).
#[derive(Debug, Clone, Default)]
struct Layer {
    warn_after: Option<Time>,
    error_after: Option<Time>,
    filter: Option<String>,
}

impl Layer {
    fn parse(v: Option<&Value>, at: &str) -> anyhow::Result<Option<Layer>> {
        let o = match v {
            // Not written: an empty threshold, which leaves what is above it in place.
            None => {
                return Ok(Some(Layer {
                    warn_after: Some(Time::default()),
                    error_after: Some(Time::default()),
                    filter: None,
                }))
            }
            Some(Value::Null) => return Ok(None),
            Some(Value::Object(o)) => o,
            Some(other) => {
                return Err(config_error(format!(
                    "{at}: `freshness` must be a mapping (warn_after, error_after, filter) or null, not {other}"
                )))
            }
        };
        let mut l = Layer {
            warn_after: Some(Time::default()),
            error_after: Some(Time::default()),
            filter: None,
        };
        for (k, v) in o {
            match k.as_str() {
                "warn_after" => l.warn_after = Time::parse(v, &format!("{at}.warn_after"))?,
                "error_after" => l.error_after = Time::parse(v, &format!("{at}.error_after"))?,
                "filter" => l.filter = v.as_str().map(str::to_string),
                other => {
                    return Err(config_error(format!(
                        "{at}: unknown key {other:?}; freshness takes warn_after, error_after and filter"
                    )))
                }
            }
        }
        Ok(Some(l))
    }

    fn is_set(&self) -> bool {
        self.warn_after.as_ref().is_some_and(Time::is_set)
            || self.error_after.as_ref().is_some_and(Time::is_set)
    }

    fn into_threshold(self) -> Threshold {
        Threshold {
            warn_after: self.warn_after.unwrap_or_default(),
            error_after: self.error_after.unwrap_or_default(),
            filter: self.filter,
        }
    }
}

impl Threshold {
    /// Whether anything is checked (dbt's `has_freshness`).
    pub fn is_set(&self) -> bool {
        self.warn_after.is_set() || self.error_after.is_set()
    }

    /// `pass`, `warn` or `error` for an age in seconds.
    pub fn status(&self, age: f64) -> &'static str {
        if self.error_after.exceeded(age) {
            "error"
        } else if self.warn_after.exceeded(age) {
            "warn"
        } else {
            "pass"
        }
    }

    /// As the manifest and sources.json write it.
    pub fn json(&self) -> Value {
        json!({
            "warn_after": self.warn_after.json(),
            "error_after": self.error_after.json(),
            "filter": self.filter,
        })
    }
}

/// A table's threshold as dbt merges it (`merge_source_freshness`): the source's `freshness:`,
/// the source's `config.freshness`, the table's, the table's `config.freshness`, each over the
/// one before; `null` turns freshness off. When none of them sets a threshold, `+freshness`
/// from dbt_project.yml (`project`) applies.
///
/// # Errors
/// A config error naming `at` for a malformed threshold.
pub fn resolve(
    layers: [Option<&Value>; 4],
    project: Option<&Value>,
    at: &str,
) -> anyhow::Result<Option<Threshold>> {
    let mut merged: Option<Layer> = Layer::parse(layers[0], at)?;
    for v in &layers[1..] {
        let update = Layer::parse(*v, at)?;
        merged = match (merged, update) {
            (Some(b), Some(u)) => Some(Layer {
                warn_after: merge_time(b.warn_after, u.warn_after),
                error_after: merge_time(b.error_after, u.error_after),
                filter: u.filter.or(b.filter),
            }),
            (None, Some(u)) if u.is_set() => Some(u),
            _ => None,
        };
    }
    match merged {
        None => Ok(None),
        Some(l) if l.is_set() => Ok(Some(l.into_threshold())),
        Some(l) => match project {
            Some(p) if !p.is_null() => Ok(Layer::parse(Some(p), at)?.map(Layer::into_threshold)),
            _ => Ok(Some(l.into_threshold())),
        },
    }
}

/// One table's outcome.
struct Checked {
    unique_id: String,
    /// `pass`, `warn`, `error`, or `runtime error`.
    status: &'static str,
    max_loaded_at: Option<DateTime<Utc>>,
    snapshotted_at: Option<DateTime<Utc>>,
    age: f64,
    criteria: Value,
    message: Option<String>,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
    secs: f64,
    adapter_response: Value,
}

/// Python's `isoformat()` of a UTC datetime, which dbt writes (microseconds only when not 0).
fn iso(t: DateTime<Utc>) -> String {
    if t.timestamp_subsec_micros() == 0 {
        t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
    }
}

fn from_epoch(s: &str) -> Option<DateTime<Utc>> {
    let secs: f64 = s.trim().parse().ok()?;
    let micros = (secs * 1e6).round() as i64;
    Utc.timestamp_micros(micros).single()
}

/// The newest `loaded_at_field` and the warehouse's clock, as epoch seconds. A timestamp
/// without time zone counts as UTC, as dbt assumes.
async fn measure(
    conn: &mut Conn,
    src: &Source,
    field: &str,
    filter: Option<&str>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
    let mut sql = format!(
        "select extract(epoch from max({field})), extract(epoch from current_timestamp) from {}",
        src.relation()
    );
    if let Some(f) = filter {
        sql.push_str(&format!(" where {f}"));
    }
    let rows = conn.query_strings(&sql).await.map_err(|e| e.0)?;
    let row = rows.into_iter().next().unwrap_or_default();
    let now = row
        .get(1)
        .cloned()
        .flatten()
        .and_then(|s| from_epoch(&s))
        .ok_or("the warehouse returned no current time")?;
    let max = match row.first().cloned().flatten() {
        Some(s) => from_epoch(&s).ok_or_else(|| format!("max({field}) is not a timestamp: {s}"))?,
        // No rows (or none past the filter): dbt takes the earliest datetime there is, so the
        // table is as stale as can be.
        None => chrono::NaiveDate::from_ymd_opt(1, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc())
            .ok_or("no earliest datetime")?,
    };
    Ok((max, now))
}

fn adapter_response(kind: AdapterKind) -> Value {
    match kind {
        AdapterKind::Postgres => {
            json!({"_message": "SELECT 1", "code": "SELECT", "rows_affected": 1})
        }
        AdapterKind::DuckDb => json!({"_message": "OK"}),
    }
}

/// Checks every selected source table that has a threshold, in order, on one connection.
/// Returns dbt's exit code: 1 when a table is past `error_after` or could not be checked.
///
/// # Errors
/// The warehouse cannot be reached, or the results cannot be written.
pub async fn run(
    graph: &Graph,
    target: &Target,
    selected: &std::collections::BTreeSet<String>,
    output: &std::path::Path,
    inv: &super::artifacts::Invocation,
    quiet: bool,
    ferry: Option<&crate::project::Project>,
) -> anyhow::Result<i32> {
    let states: Vec<&std::path::Path> = ferry
        .map(|f| f.pipelines.iter().map(|p| p.state.as_path()).collect())
        .unwrap_or_default();
    let t0 = Instant::now();
    let todo: Vec<&Source> = graph
        .sources
        .values()
        .filter(|s| selected.contains(&s.unique_id))
        .filter(|s| s.freshness.as_ref().is_some_and(Threshold::is_set))
        .collect();
    let mut results = Vec::new();
    if todo.is_empty() {
        tracing::warn!("No sources with a freshness threshold are selected; nothing to check.");
    } else {
        let mut conn = adapter::connect(target)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .map_err(|e| e.context(format!("connecting to {}", adapter::describe(target))))?;
        let total = todo.len();
        for (i, src) in todo.into_iter().enumerate() {
            let index = i + 1;
            let what = format!("freshness of {}.{}", src.source_name, src.name);
            if !quiet {
                tracing::info!("{index} of {total} START {what}");
            }
            let criteria = src.freshness.clone().unwrap_or_default();
            let started = Utc::now();
            let t = Instant::now();
            // No column to read: when ferry loads the table, the time of its last sync.
            let synced = match src.loaded_at_field {
                None => crate::state_store::loaded_at(&states, &src.schema, &src.identifier),
                Some(_) => None,
            };
            let measured = match (src.loaded_at_field.as_deref(), synced) {
                (Some(field), _) => {
                    measure(&mut conn, src, field, criteria.filter.as_deref()).await
                }
                (None, Some(at)) => Ok((at, Utc::now())),
                (None, None) => Err(format!(
                    "Could not compute freshness for source {}: no 'loaded_at_field' provided and {} adapter does not support metadata-based freshness checks.",
                    src.name,
                    target.kind.as_str()
                )),
            };
            let mut c = Checked {
                unique_id: src.unique_id.clone(),
                status: "runtime error",
                max_loaded_at: None,
                snapshotted_at: None,
                age: 0.0,
                criteria: criteria.json(),
                message: None,
                started,
                finished: Utc::now(),
                secs: t.elapsed().as_secs_f64(),
                adapter_response: adapter_response(target.kind),
            };
            match measured {
                Ok((max, now)) => {
                    c.age = (now - max).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
                    c.status = criteria.status(c.age);
                    c.max_loaded_at = Some(max);
                    c.snapshotted_at = Some(now);
                }
                Err(e) => c.message = Some(e),
            }
            let secs = c.secs;
            match c.status {
                "pass" => tracing::info!("{index} of {total} PASS {what} [PASS in {secs:.2}s]"),
                "warn" => tracing::warn!("{index} of {total} WARN {what} [WARN in {secs:.2}s]"),
                "error" => tracing::error!(
                    "{index} of {total} ERROR STALE {what} [ERROR STALE in {secs:.2}s]"
                ),
                _ => tracing::error!(
                    "{index} of {total} ERROR {what} [ERROR in {secs:.2}s]: {}",
                    c.message.as_deref().unwrap_or_default()
                ),
            }
            results.push(c);
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    write(output, &results, elapsed, inv)?;
    let n = |s: &str| results.iter().filter(|r| r.status == s).count();
    let failed = n("error") + n("runtime error");
    if !quiet {
        tracing::info!(
            "Finished checking {} sources in {elapsed:.2}s: PASS={} WARN={} ERROR={failed}; wrote {}.",
            results.len(),
            n("pass"),
            n("warn"),
            output.display()
        );
    }
    Ok(if failed > 0 {
        crate::error::exit::FAILED
    } else {
        crate::error::exit::OK
    })
}

/// sources.json as dbt writes it (schema v3): tables that could not be checked are left out
/// of it, as dbt leaves them out, and reported on stderr instead.
fn write(
    output: &std::path::Path,
    results: &[Checked],
    elapsed: f64,
    inv: &super::artifacts::Invocation,
) -> anyhow::Result<()> {
    let ts = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let rows: Vec<Value> = results
        .iter()
        .filter_map(|r| {
            let (max, now) = (r.max_loaded_at?, r.snapshotted_at?);
            Some(json!({
                "unique_id": r.unique_id,
                "max_loaded_at": iso(max),
                "snapshotted_at": iso(now),
                "max_loaded_at_time_ago_in_s": r.age,
                "status": r.status,
                "criteria": r.criteria,
                "adapter_response": r.adapter_response,
                "timing": [
                    {"name": "compile", "started_at": ts(r.started), "completed_at": ts(r.started)},
                    {"name": "execute", "started_at": ts(r.started), "completed_at": ts(r.finished)},
                ],
                "thread_id": "Thread-1 (worker)",
                "execution_time": r.secs,
            }))
        })
        .collect();
    let doc = json!({
        "metadata": {
            "dbt_schema_version": "https://schemas.getdbt.com/dbt/sources/v3.json",
            "dbt_version": super::DBT_VERSION,
            "generated_at": ts(Utc::now()),
            "invocation_id": inv.id,
            "invocation_started_at": inv.started.to_rfc3339(),
            "env": {},
        },
        "results": rows,
        "elapsed_time": elapsed,
    });
    let dir = output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = output
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("sources.json");
    super::artifacts::write_json(dir, name, &doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_merge_as_dbts_and_null_turns_them_off() {
        let source = json!({"warn_after": {"count": 12, "period": "hour"}, "error_after": {"count": 1, "period": "day"}});
        let t = resolve(
            [
                Some(&source),
                None,
                Some(&json!({"warn_after": {"count": 2, "period": "hour"}, "filter": "id > 0"})),
                None,
            ],
            None,
            "x",
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.warn_after.seconds(), Some(7200));
        assert_eq!(t.error_after.seconds(), Some(86_400));
        assert_eq!(t.filter.as_deref(), Some("id > 0"));
        assert_eq!(t.status(7200.0), "pass");
        assert_eq!(t.status(7200.5), "warn");
        assert_eq!(t.status(86_401.0), "error");
        // A count without a period is ignored, as dbt ignores it.
        let partial = json!({"warn_after": {"count": 3}});
        let t = resolve([Some(&source), None, Some(&partial), None], None, "x")
            .unwrap()
            .unwrap();
        assert_eq!(t.warn_after.seconds(), Some(12 * 3600));
        // null on the table turns it off; null warn_after clears only that.
        assert!(
            resolve([Some(&source), None, Some(&Value::Null), None], None, "x")
                .unwrap()
                .is_none()
        );
        let t = resolve(
            [
                Some(&source),
                None,
                Some(&json!({"warn_after": null})),
                None,
            ],
            None,
            "x",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (t.warn_after.seconds(), t.error_after.seconds()),
            (None, Some(86_400))
        );
        // Nothing in the properties file: the project's +freshness.
        let project = json!({"error_after": {"count": 6, "period": "hour"}});
        let t = resolve([None, None, None, None], Some(&project), "x")
            .unwrap()
            .unwrap();
        assert_eq!(t.error_after.seconds(), Some(6 * 3600));
        let bad = json!({"warn_after": {"count": 1, "period": "week"}});
        let e = resolve(
            [Some(&bad), None, None, None],
            None,
            "models/sources.yml: raw.orders",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("period"), "{e:#}");
    }

    #[test]
    fn datetimes_are_written_as_python_isoformat() {
        let t = from_epoch("1733616000").unwrap();
        assert_eq!(iso(t), "2024-12-08T00:00:00+00:00");
        let t = from_epoch("1733616000.25").unwrap();
        assert_eq!(iso(t), "2024-12-08T00:00:00.250000+00:00");
    }
}
