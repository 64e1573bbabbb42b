//! `ferry sync`: run pipelines from the project file, with persisted state.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::{json, Value};

use super::{print_stdout, summary, Globals};
use crate::cli::SyncArgs;
use crate::error::{config_error, exit, exit_code, Failure};
use crate::project::{ConnectorKind, Pipeline, Project};
use crate::runner::{
    self, ExternalTap, ExternalTarget, RunOptions, RunStats, Sink, Source, StateOut,
};
use crate::singer::catalog::keys;
use crate::singer::{state, Catalog};
use crate::state_store::{write_atomic, StateStore};
use crate::taps::{PlanStep, Tap};
use crate::targets::Target;

/// The run report written with `--report`.
#[derive(Debug, Serialize)]
struct Report {
    pipeline: String,
    status: &'static str,
    started_at: String,
    duration_secs: f64,
    streams: Vec<runner::StreamStats>,
    state_commits: u64,
    state_before: Value,
    state_after: Value,
    failed_streams: Vec<FailedStream>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct FailedStream {
    stream: String,
    error: String,
}

/// Runs the named pipelines (or all), one after another.
///
/// # Errors
/// The failure of a single pipeline; with several, a summary failure (partial when some
/// succeeded).
pub async fn run(a: SyncArgs, g: &Globals) -> anyhow::Result<i32> {
    let report_path = a
        .report
        .as_ref()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    let project = Project::load(g.project.as_deref())?;
    let names: Vec<String> = if a.all {
        project.pipelines.iter().map(|p| p.name.clone()).collect()
    } else {
        a.pipelines.clone()
    };
    if names.is_empty() {
        return Err(config_error(
            "name a pipeline to run (ferry sync NAME) or pass --all",
        ));
    }
    // Resolve every name first, so a typo fails before anything runs.
    let pipelines: Vec<&Pipeline> = names
        .iter()
        .map(|n| project.pipeline(n))
        .collect::<anyhow::Result<_>>()?;
    // Relative paths in connector configs are relative to the project folder.
    std::env::set_current_dir(&project.dir)
        .with_context(|| format!("cannot enter {}", project.dir.display()))?;
    let mut reports = Vec::new();
    let mut failures: Vec<(String, anyhow::Error)> = Vec::new();
    // (target schema if the target names one, table) that received rows, for --then-transform.
    let mut loaded: Vec<(Option<String>, String)> = Vec::new();
    for p in pipelines {
        let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut before = Value::Null;
        let result = run_pipeline(p, &a, g, &mut before).await;
        if a.dry_run {
            result?;
            continue;
        }
        if let Ok((stats, _)) = &result {
            let schema = ["default_target_schema", "schema"]
                .iter()
                .find_map(|k| p.target.config.get(*k).and_then(Value::as_str))
                .map(str::to_string);
            for st in stats.streams.iter().filter(|s| s.rows > 0) {
                loaded.push((
                    schema.clone(),
                    crate::targets::names::table_name(&st.stream),
                ));
            }
            // When each table was last synced (its data committed), for source freshness.
            let synced: Vec<String> = stats
                .streams
                .iter()
                .filter(|s| !stats.failed_streams.iter().any(|(f, _)| *f == s.stream))
                .map(|s| {
                    let t = crate::targets::names::table_name(&s.stream);
                    schema.as_ref().map_or(t.clone(), |sc| format!("{sc}.{t}"))
                })
                .collect();
            if !synced.is_empty() {
                let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                if let Err(e) = crate::state_store::record_loaded_at(&p.state, &synced, &now) {
                    tracing::warn!("{e:#}");
                }
            }
        }
        let report = match &result {
            Ok((stats, after)) => make_report(p, started_at, stats, before, after.clone(), None),
            Err(e) => {
                let after = crate::state_store::read_state_file(&p.state).unwrap_or(Value::Null);
                make_report(p, started_at, &RunStats::default(), before, after, Some(e))
            }
        };
        reports.push(report);
        if let Err(e) = result {
            if names.len() == 1 {
                write_report(report_path.as_ref(), &reports)?;
                return Err(e);
            }
            tracing::error!(pipeline = %p.name, error = %crate::secrets::redact(&format!("{e:#}")), "Pipeline failed.");
            failures.push((p.name.clone(), e));
        }
    }
    if a.dry_run {
        return Ok(exit::OK);
    }
    write_report(report_path.as_ref(), &reports)?;
    let partial: Vec<&str> = reports
        .iter()
        .filter(|r| r.status == "partial")
        .map(|r| r.pipeline.as_str())
        .collect();
    if !failures.is_empty() {
        let names: Vec<&str> = failures.iter().map(|(n, _)| n.as_str()).collect();
        let msg = format!("pipelines failed: {}", names.join(", "));
        if failures.len() < reports.len() {
            return Err(anyhow::Error::new(Failure::Partial(msg)));
        }
        return Err(anyhow::anyhow!(msg));
    }
    if !partial.is_empty() {
        if a.then_transform {
            tracing::warn!("Some streams failed; the transform is not run.");
        }
        return Err(anyhow::Error::new(Failure::Partial(format!(
            "some streams failed in: {}",
            partial.join(", ")
        ))));
    }
    if a.then_transform {
        return crate::transform::after_sync(&project, &loaded, g).await;
    }
    Ok(exit::OK)
}

fn make_report(
    p: &Pipeline,
    started_at: String,
    stats: &RunStats,
    before: Value,
    after: Value,
    err: Option<&anyhow::Error>,
) -> Report {
    let status = match err {
        Some(e) if exit_code(e) == exit::PARTIAL => "partial",
        Some(_) => "failed",
        None if !stats.failed_streams.is_empty() => "partial",
        None => "ok",
    };
    Report {
        pipeline: p.name.clone(),
        status,
        started_at,
        duration_secs: stats.duration_secs,
        streams: stats.streams.clone(),
        state_commits: stats.state_commits,
        state_before: before,
        state_after: after,
        failed_streams: stats
            .failed_streams
            .iter()
            .map(|(s, e)| FailedStream {
                stream: s.clone(),
                error: crate::secrets::redact(e),
            })
            .collect(),
        error: err.map(|e| crate::secrets::redact(&format!("{e:#}"))),
    }
}

fn write_report(path: Option<&PathBuf>, reports: &[Report]) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let v = if reports.len() == 1 {
        serde_json::to_value(&reports[0])?
    } else {
        json!({ "pipelines": reports })
    };
    write_atomic(path, serde_json::to_string_pretty(&v)?.as_bytes())
        .with_context(|| format!("cannot write the report {}", path.display()))
}

/// The catalog a pipeline runs with: its catalog file, else the default
/// `catalogs/<pipeline>.json` if present, else (built-in taps) discovered now with every stream
/// selected.
async fn pipeline_catalog(p: &Pipeline, tap: Option<&Tap>) -> anyhow::Result<Option<Catalog>> {
    if let Some(path) = &p.tap.catalog {
        if !path.is_file() {
            return Err(config_error(format!(
                "catalog {} does not exist; create it with `ferry discover {}`",
                path.display(),
                p.name
            )));
        }
        return Ok(Some(Catalog::load(path)?));
    }
    let default = default_catalog_path(p);
    if default.is_file() {
        return Ok(Some(Catalog::load(&default)?));
    }
    match tap {
        Some(t) => {
            let mut c = t.discover().await?;
            for s in &mut c.streams {
                s.set_metadata(&[], keys::SELECTED, json!(true));
            }
            Ok(Some(c))
        }
        None => Ok(None),
    }
}

/// `catalogs/<pipeline>.json` under the project folder.
pub fn default_catalog_path(p: &Pipeline) -> PathBuf {
    p.state
        .parent()
        .and_then(|d| d.parent())
        .map_or_else(|| PathBuf::from("catalogs"), |root| root.join("catalogs"))
        .join(format!("{}.json", p.name))
}

/// Applies `--select`: only streams matching a glob run. Returns the ids that will run.
fn apply_select(catalog: &mut Catalog, patterns: &[String]) -> anyhow::Result<Vec<String>> {
    if !patterns.is_empty() {
        let globs: Vec<glob::Pattern> = patterns
            .iter()
            .map(|p| {
                glob::Pattern::new(p).map_err(|e| config_error(format!("--select {p:?}: {e}")))
            })
            .collect::<anyhow::Result<_>>()?;
        for (g, p) in globs.iter().zip(patterns) {
            if !catalog
                .streams
                .iter()
                .any(|s| g.matches(s.tap_stream_id()) || g.matches(s.stream_name()))
            {
                let ids: Vec<&str> = catalog.streams.iter().map(|s| s.tap_stream_id()).collect();
                return Err(config_error(format!(
                    "--select {p:?} matches no stream; streams: {}",
                    ids.join(", ")
                )));
            }
        }
        for s in &mut catalog.streams {
            let hit = globs
                .iter()
                .any(|g| g.matches(s.tap_stream_id()) || g.matches(s.stream_name()));
            s.set_metadata(&[], keys::SELECTED, json!(hit));
        }
    }
    Ok(catalog
        .selected()
        .map(|s| s.tap_stream_id().to_owned())
        .collect())
}

async fn run_pipeline(
    p: &Pipeline,
    a: &SyncArgs,
    g: &Globals,
    before: &mut Value,
) -> anyhow::Result<(RunStats, Value)> {
    let store = if a.dry_run {
        StateStore::unlocked(&p.state)
    } else {
        StateStore::open_locked(&p.state)?
    };
    let mut saved = store.read()?;

    // The target first: it may hold a state committed with its data that the state file missed.
    let sink = match &p.target.kind {
        ConnectorKind::Builtin(name) => {
            if a.dry_run {
                None
            } else {
                let target = Target::new(name, &p.target.config, Some(&p.name)).await?;
                if let Some(rec) = target.recover().await? {
                    if rec.state != saved && rec.prev == saved {
                        tracing::info!(pipeline = %p.name, "The target committed a newer state than the state file holds (the last run stopped between the two); rolling the state file forward.");
                        store.write(&rec.state)?;
                        saved = rec.state;
                    }
                }
                Some(Sink::Load(target))
            }
        }
        ConnectorKind::Command(program, args) => Some(Sink::Command(ExternalTarget {
            program: program.clone(),
            args: args.clone(),
            config: p.target.config.clone(),
        })),
    };
    *before = saved.clone();

    let builtin_tap = match &p.tap.kind {
        ConnectorKind::Builtin(name) => Some(Tap::new(name, &p.tap.config)?),
        ConnectorKind::Command(..) => None,
    };
    let mut catalog = pipeline_catalog(p, builtin_tap.as_ref()).await?;
    let run_streams: Option<Vec<String>> = match &mut catalog {
        Some(c) => Some(apply_select(c, &a.select)?),
        None if !a.select.is_empty() => {
            return Err(config_error(format!(
                "--select needs a catalog for pipeline {:?}; create one with `ferry discover {}`",
                p.name, p.name
            )))
        }
        None => None,
    };
    let mut start = saved.clone();
    if a.full_refresh {
        match &run_streams {
            Some(ids) => {
                for id in ids {
                    state::set_bookmark(&mut start, id, None);
                }
            }
            None => start = state::empty(),
        }
    }

    if a.dry_run {
        let steps = plan(builtin_tap.as_ref(), catalog.as_ref(), &start)?;
        let mut out = format!("pipeline {} (state {})\n", p.name, p.state.display());
        if steps.is_empty() {
            out.push_str("  no catalog: the external tap chooses its streams\n");
        }
        for s in steps {
            out.push_str(&format!(
                "  {:<30} {:<24} from {}  {}\n",
                s.stream,
                s.method,
                s.bookmark
                    .map_or_else(|| "the beginning".to_owned(), |b| b.to_string()),
                s.detail
            ));
        }
        print_stdout(&out)?;
        return Ok((RunStats::default(), saved));
    }

    let source = match (builtin_tap, &p.tap.kind) {
        (Some(tap), _) => Source::Builtin {
            tap,
            catalog: catalog.context("catalog")?,
            state: start.clone(),
        },
        (None, ConnectorKind::Command(program, args)) => Source::Command(ExternalTap {
            program: program.clone(),
            args: args.clone(),
            config: p.tap.config.clone(),
            catalog,
            catalog_flag: p.tap.catalog_flag.clone(),
            state: Some(start.clone()),
        }),
        (None, ConnectorKind::Builtin(_)) => unreachable!("a built-in tap was built above"),
    };
    let sink = sink.context("sink")?;
    let mut opts = RunOptions {
        on_invalid: a.on_invalid,
        rejects_dir: PathBuf::from("rejects").join(&p.name),
        ..RunOptions::default()
    };
    if let Some(s) = p.commit_interval_secs {
        opts.commit_interval = Duration::from_secs_f64(s.max(0.0));
    }
    if let Some(r) = p.commit_rows {
        opts.commit_rows = r;
    }
    tracing::info!(pipeline = %p.name, tap = %p.tap.label(), target = %p.target.label(), "Pipeline started.");
    let (stats, state_out) =
        runner::run(source, sink, StateOut::File { store, base: start }, opts).await?;
    summary(&format!("pipeline {}", p.name), &stats, g.quiet);
    let after = state_out.committed().cloned().unwrap_or(Value::Null);
    if !stats.failed_streams.is_empty() {
        let names: Vec<&str> = stats
            .failed_streams
            .iter()
            .map(|(s, _)| s.as_str())
            .collect();
        tracing::warn!(pipeline = %p.name, streams = %names.join(", "), "Some streams failed; the others committed their state.");
    }
    Ok((stats, after))
}

fn plan(
    tap: Option<&Tap>,
    catalog: Option<&Catalog>,
    start: &Value,
) -> anyhow::Result<Vec<PlanStep>> {
    let Some(catalog) = catalog else {
        return Ok(Vec::new());
    };
    if let Some(t) = tap {
        return t.plan(catalog, start);
    }
    Ok(catalog
        .selected()
        .map(|s| PlanStep {
            stream: s.tap_stream_id().to_owned(),
            method: s.replication_method().unwrap_or("(tap default)").to_owned(),
            bookmark: state::bookmark(start, s.tap_stream_id()).cloned(),
            detail: s
                .replication_key()
                .map(|k| format!("replication key {k}"))
                .unwrap_or_default(),
        })
        .collect())
}
