//! `ferry reverse`: reverse ETL. A sync in ferry.yml takes the rows of a warehouse query (or a
//! table, or a transform model), maps columns to destination fields and keeps a destination in
//! step, sending only rows that changed since the last successful delivery.
//!
//! Flow: [`spec`] reads `syncs:`; [`changes::prepare`] checks the query and mapping and builds
//! the change set inside the warehouse (a join against the sync's snapshot table); pages of it
//! go to the destination ([`http`], [`postgres`], [`redis`]); [`changes::record`] marks what
//! the destination confirmed (and records what it rejected, to retry next run).

pub mod changes;
pub mod http;
pub mod postgres;
pub mod redis;
pub mod singer;
pub mod spec;

use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

use crate::cli::ReverseArgs;
use crate::commands::Globals;
use crate::error::{config_error, exit, Failure};
use changes::{Change, Counts, Op};
use spec::{DestSpec, SyncSpec};

/// A connected destination.
#[derive(Debug)]
enum Dest {
    Http(Box<http::HttpDest>),
    Pg(postgres::PgDest),
    Redis(redis::Redis),
}

impl Dest {
    async fn connect(spec: &SyncSpec, fields: &[String]) -> anyhow::Result<Dest> {
        let at = format!("sync {}", spec.name);
        Ok(match &spec.destination {
            DestSpec::Singer(_) => {
                anyhow::bail!("{at}: a Singer target is run through the runner, not connected here")
            }
            DestSpec::Http { file, config } => Dest::Http(Box::new(http::HttpDest::new(
                file, config, spec.mode, fields, &at,
            )?)),
            DestSpec::Postgres(cfg) => Dest::Pg(
                postgres::PgDest::connect(cfg, &spec.primary_key, fields, spec.mode, &at).await?,
            ),
            DestSpec::Redis(cfg) => {
                let c = redis::RedisConfig::parse(cfg, fields, &at)?;
                Dest::Redis(redis::Redis::connect(c).await?)
            }
        })
    }

    fn batch_size(&self) -> usize {
        match self {
            Dest::Http(h) => h.batch_size(),
            Dest::Pg(_) => 5000,
            Dest::Redis(_) => 500,
        }
    }

    fn describe(&self, batch: &[Change]) -> Vec<String> {
        match self {
            Dest::Http(h) => h.describe(batch),
            Dest::Pg(p) => p.describe(batch),
            Dest::Redis(r) => r.describe(batch),
        }
    }

    async fn deliver(
        &mut self,
        batch: &[Change],
    ) -> anyhow::Result<Vec<Result<Option<String>, String>>> {
        Ok(match self {
            Dest::Http(h) => h.deliver(batch).await?,
            Dest::Pg(p) => p
                .deliver(batch)
                .await?
                .into_iter()
                .map(|r| r.map(|()| None))
                .collect(),
            Dest::Redis(r) => r
                .deliver(batch)
                .await?
                .into_iter()
                .map(|r| r.map(|()| None))
                .collect(),
        })
    }
}

/// What one sync did, for the summary and `--report`.
#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    /// The sync.
    pub sync: String,
    /// `ok`, `partial` (rows rejected), `failed`, `dry-run`.
    pub status: String,
    /// The change set.
    pub counts: Counts,
    /// Rows unchanged since their last delivery (not sent).
    pub unchanged: u64,
    /// Rows sent.
    pub sent: u64,
    /// Rows the destination confirmed.
    pub confirmed: u64,
    /// Rows the destination rejected (retried next run).
    pub rejected: u64,
    /// The first rejections: key and error.
    pub first_errors: Vec<(String, String)>,
    /// Seconds.
    pub duration_secs: f64,
    /// `--dry-run`: a sample of each kind of change and the first requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Value>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The fields the mapping produces (or the source's columns without a mapping).
fn field_names(spec: &SyncSpec, columns: &[String]) -> Vec<String> {
    if spec.mapping.is_empty() {
        columns.to_vec()
    } else {
        spec.mapping.iter().map(|(f, _)| f.clone()).collect()
    }
}

async fn run_sync(spec: &SyncSpec, dry_run: bool, quiet: bool) -> anyhow::Result<SyncReport> {
    let t0 = Instant::now();
    // A file snapshot is guarded like a pipeline's state: one run at a time.
    let _lock = match &spec.state_file {
        Some(p) if !dry_run => Some(crate::state_store::StateStore::open_locked(p)?),
        _ => None,
    };
    let mut conn = crate::transform::adapter::connect(&spec.warehouse).await?;
    if conn.kind() == crate::transform::project::AdapterKind::DuckDb {
        // The change set is a temporary table: bounded memory, DuckDB spills the rest to disk.
        conn.execute("set memory_limit = '256MB'")
            .await
            .map_err(|e| anyhow::anyhow!("sync {}: {}", spec.name, e.0))?;
    }
    let (counts, typed) = changes::prepare(&mut conn, spec).await?;
    let columns: Vec<String> = typed.iter().map(|(c, _)| c.clone()).collect();
    let fields = field_names(spec, &columns);
    if let DestSpec::Singer(sd) = &spec.destination {
        return singer_sync(&mut conn, spec, sd, &typed, counts, dry_run, t0).await;
    }
    let mut dest = Dest::connect(spec, &fields).await?;
    let mut rep = SyncReport {
        sync: spec.name.clone(),
        status: "ok".into(),
        unchanged: counts.unchanged(),
        counts: counts.clone(),
        ..SyncReport::default()
    };
    // A sync may send smaller batches than the destination allows, never larger.
    let batch = spec
        .batch_size
        .map_or(dest.batch_size(), |b| b.min(dest.batch_size()))
        .max(1);
    if dry_run {
        let first = changes::page(&mut conn, spec, 0, batch).await?;
        let sample = |op: Op| -> Vec<Value> {
            first
                .iter()
                .filter(|c| c.op == op)
                .take(3)
                .map(|c| json!({"key": c.key, "fields": c.fields}))
                .collect()
        };
        rep.plan = Some(json!({
            "add": sample(Op::Add),
            "change": sample(Op::Change),
            "remove": sample(Op::Remove),
            "first_requests": dest.describe(&first).into_iter().take(5).collect::<Vec<_>>(),
        }));
        rep.status = "dry-run".into();
        changes::finish(&mut conn, spec).await;
        rep.duration_secs = t0.elapsed().as_secs_f64();
        return Ok(rep);
    }
    let total = counts.adds + counts.changes + counts.removes;
    let mut after = 0u64;
    loop {
        let page = changes::page(&mut conn, spec, after, batch).await?;
        if page.is_empty() {
            break;
        }
        let start = after;
        after += page.len() as u64;
        let results = dest.deliver(&page).await?;
        rep.sent += page.len() as u64;
        let mut confirmed = 0u64;
        let mut ids = Vec::new();
        let mut rejected = Vec::new();
        for (c, r) in page.iter().zip(results) {
            match r {
                Ok(id) => {
                    confirmed += 1;
                    if let Some(id) = id {
                        ids.push((c, id));
                    }
                }
                Err(e) => {
                    let e = crate::secrets::redact(&e);
                    if rep.first_errors.len() < 5 {
                        rep.first_errors.push((c.key.clone(), e.clone()));
                    }
                    rejected.push((c, e));
                }
            }
        }
        changes::record(&mut conn, spec, (start, after), &ids, &rejected).await?;
        changes::save_state(&mut conn, spec).await?;
        rep.confirmed += confirmed;
        rep.rejected += rejected.len() as u64;
        if !quiet {
            tracing::info!(sync = %spec.name, "Sent {} of {total}: {} confirmed, {} rejected.", rep.sent, rep.confirmed, rep.rejected);
        }
    }
    changes::finish(&mut conn, spec).await;
    if rep.rejected > 0 {
        rep.status = "partial".into();
    }
    rep.duration_secs = t0.elapsed().as_secs_f64();
    Ok(rep)
}

/// A sync into a Singer target: the change set through the runner, then what the target
/// committed recorded as delivered.
async fn singer_sync(
    conn: &mut crate::transform::adapter::Conn,
    spec: &SyncSpec,
    dest: &singer::SingerDest,
    typed: &[(String, String)],
    counts: Counts,
    dry_run: bool,
    t0: Instant,
) -> anyhow::Result<SyncReport> {
    let mut rep = SyncReport {
        sync: spec.name.clone(),
        status: "ok".into(),
        unchanged: counts.unchanged(),
        counts,
        ..SyncReport::default()
    };
    let batch = spec.batch_size.unwrap_or(10_000);
    if dry_run {
        let first = changes::page(conn, spec, 0, 3).await?;
        rep.plan = Some(json!({
            "first_records": first.iter().map(|c| json!({"op": c.op.as_str(), "key": c.key, "fields": c.fields})).collect::<Vec<_>>(),
        }));
        rep.status = "dry-run".into();
        changes::finish(conn, spec).await;
        return Ok(rep);
    }
    if rep.counts.adds + rep.counts.changes + rep.counts.removes == 0 {
        changes::finish(conn, spec).await;
        rep.duration_secs = t0.elapsed().as_secs_f64();
        return Ok(rep);
    }
    let (sent, confirmed, err) = singer::deliver(conn, spec, dest, typed, batch).await?;
    singer::record_up_to(conn, spec, confirmed).await?;
    changes::save_state(conn, spec).await?;
    changes::finish(conn, spec).await;
    rep.sent = sent;
    rep.confirmed = confirmed;
    rep.duration_secs = t0.elapsed().as_secs_f64();
    if let Some(e) = err {
        return Err(e.context(format!(
            "the target committed {confirmed} of {sent} rows; those are recorded, the rest is sent next run"
        )));
    }
    Ok(rep)
}

fn print_summary(reports: &[SyncReport]) {
    let mut s = String::new();
    for r in reports {
        s.push_str(&format!(
            "sync {}: {} — compared {}, unchanged {}, to send {} (add {}, change {}, remove {}), sent {}, confirmed {}, rejected {} in {:.2}s\n",
            r.sync,
            r.status,
            r.counts.compared,
            r.unchanged,
            r.counts.adds + r.counts.changes + r.counts.removes,
            r.counts.adds,
            r.counts.changes,
            r.counts.removes,
            r.sent,
            r.confirmed,
            r.rejected,
            r.duration_secs
        ));
        for (k, e) in &r.first_errors {
            s.push_str(&format!("  rejected {k}: {e}\n"));
        }
        if let Some(e) = &r.error {
            s.push_str(&format!("  FAILED: {e}\n"));
        }
    }
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(s.as_bytes());
}

/// Runs `ferry reverse`.
///
/// # Errors
/// A config error (exit 2) before anything is sent; a failed sync (exit 1); rejected rows give
/// the partial-run code (3).
pub async fn run(args: ReverseArgs, g: &Globals) -> anyhow::Result<i32> {
    let project = crate::project::Project::load(g.project.as_deref())?;
    let mut syncs_v = project.syncs.clone();
    let mut wh_v = project.warehouse.clone();
    for v in [&mut syncs_v, &mut wh_v].into_iter().flatten() {
        crate::project::interpolate(v)?;
    }
    // `source: {model: x}` names a model of the transform project.
    let models = |name: &str| -> Option<String> {
        let t = project.transform.as_ref()?;
        let dir = match t {
            Value::String(p) => project.dir.join(p),
            Value::Object(o) => project.dir.join(o.get("path")?.as_str()?),
            _ => return None,
        };
        let p = crate::transform::project::DbtProject::load(&dir).ok()?;
        let target = crate::transform::project::load_target(&p, None, None, None).ok()?;
        let graph = crate::transform::nodes::parse(&p, &target, &Default::default()).ok()?;
        let n = graph.nodes.values().find(|n| n.name == name)?;
        Some(n.relation().to_string())
    };
    let all = spec::read_syncs(syncs_v.as_ref(), wh_v.as_ref(), &project.dir, &models)?;
    let names: Vec<String> = if args.all {
        all.keys().cloned().collect()
    } else {
        args.syncs.clone()
    };
    if names.is_empty() {
        return Err(config_error(format!(
            "name a sync (ferry reverse NAME) or pass --all; syncs in {}: {}",
            project.file.display(),
            all.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let mut chosen = Vec::new();
    for n in &names {
        chosen.push(all.get(n).ok_or_else(|| {
            config_error(format!(
                "no sync {n:?} in {}; syncs: {}",
                project.file.display(),
                all.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?);
    }
    let mut reports = Vec::new();
    let mut failed = 0;
    for spec in chosen {
        match run_sync(spec, args.dry_run, g.quiet).await {
            Ok(r) => reports.push(r),
            Err(e) => {
                let msg = crate::secrets::redact(&format!("{e:#}"));
                if names.len() == 1 {
                    return Err(e.context(format!("sync {}", spec.name)));
                }
                tracing::error!(sync = %spec.name, "{msg}");
                failed += 1;
                reports.push(SyncReport {
                    sync: spec.name.clone(),
                    status: "failed".into(),
                    error: Some(msg),
                    ..SyncReport::default()
                });
            }
        }
    }
    if let Some(p) = &args.report {
        let text = serde_json::to_string_pretty(&reports)?;
        std::fs::write(p, text + "\n")
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
    }
    if args.dry_run {
        crate::commands::print_stdout(&serde_json::to_string_pretty(&reports)?)?;
    }
    if !g.quiet {
        print_summary(&reports);
    }
    if failed > 0 {
        let msg = format!("{failed} of {} syncs failed", reports.len());
        return Err(if failed < reports.len() {
            anyhow::Error::new(Failure::Partial(msg))
        } else {
            anyhow::anyhow!(msg)
        });
    }
    let rejected: u64 = reports.iter().map(|r| r.rejected).sum();
    if rejected > 0 {
        return Err(anyhow::Error::new(Failure::Partial(format!(
            "{rejected} rows were rejected by the destination; they are retried on the next run"
        ))));
    }
    Ok(exit::OK)
}
