//! `ferry transform`: dbt-style projects (SQL models, seeds, tests, macros) run inside the
//! warehouse ferry loads (Postgres or DuckDB), with dbt's commands, selection, exit codes and
//! artifacts.
//!
//! Flow: [`project`] reads dbt_project.yml and profiles.yml; [`nodes`] parses every file into
//! nodes (rendering each once with [`jinja`] to find `ref`/`source`/`config`); [`select`]
//! picks nodes; [`run`] walks the DAG on `threads` connections ([`adapter`]), compiling each
//! node just before [`materialize`] builds it; [`artifacts`] writes manifest.json and
//! run_results.json; [`docs`] draws the lineage page.

pub mod adapter;
pub mod artifacts;
pub mod deps;
pub mod docs;
pub mod freshness;
pub mod jinja;
pub mod materialize;
pub mod nodes;
pub mod project;
pub mod run;
pub mod select;
pub mod snapshot;
pub mod unit;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::cli::{TransformArgs, TransformCommand};
use crate::commands::Globals;
use crate::error::{config_error, exit};

/// The dbt-core version whose behaviour and artifact schemas ferry follows.
pub const DBT_VERSION: &str = "1.11.16";

/// Maps `f` over `items` on all cores, keeping their order: parsing, compiling and the manifest
/// of a big project are thousands of independent pieces of CPU work.
pub(crate) fn par_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(items.len());
    if workers <= 1 {
        return items.into_iter().map(f).collect();
    }
    let len = items.len();
    let queue = std::sync::Mutex::new(items.into_iter().enumerate());
    let mut slots: Vec<Option<R>> = std::iter::repeat_with(|| None).take(len).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (queue, f) = (&queue, &f);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                        let Some((i, item)) = next else { break };
                        done.push((i, f(item)));
                    }
                    done
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(done) => {
                    for (i, r) in done {
                        slots[i] = Some(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    slots.into_iter().flatten().collect()
}

/// Where the dbt project is, from the flags or ferry.yml's `transform:`.
struct Location {
    dir: PathBuf,
    profiles_dir: Option<PathBuf>,
    target: Option<String>,
    /// The ferry project, when there is one (for the docs' lineage).
    ferry: Option<crate::project::Project>,
}

fn locate(args: &TransformArgs, g: &Globals) -> anyhow::Result<Location> {
    let ferry = match &g.project {
        Some(p) => Some(crate::project::Project::load(Some(p))?),
        None if std::path::Path::new(crate::project::PROJECT_FILE).is_file() => {
            Some(crate::project::Project::load(None)?)
        }
        None => None,
    };
    let mut loc = Location {
        dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        profiles_dir: args.profiles_dir.clone(),
        target: args.target.clone(),
        ferry: None,
    };
    if let Some(f) = &ferry {
        match &f.transform {
            Some(Value::String(p)) => loc.dir = f.dir.join(p),
            Some(Value::Object(o)) => {
                if let Some(p) = o.get("path").and_then(Value::as_str) {
                    loc.dir = f.dir.join(p);
                }
                if loc.profiles_dir.is_none() {
                    loc.profiles_dir = o
                        .get("profiles_dir")
                        .and_then(Value::as_str)
                        .map(|p| f.dir.join(p));
                }
                if loc.target.is_none() {
                    loc.target = o.get("target").and_then(Value::as_str).map(str::to_string);
                }
            }
            Some(other) => {
                return Err(config_error(format!(
                "{}: `transform:` must be a folder or {{path, profiles_dir, target}}, not {other}",
                f.file.display()
            )))
            }
            None => {}
        }
    }
    if let Some(d) = &args.project_dir {
        loc.dir = d.clone();
    }
    loc.dir = std::path::absolute(&loc.dir).unwrap_or(loc.dir);
    loc.ferry = ferry;
    Ok(loc)
}

/// `ferry sync --then-transform`: builds what is downstream of the tables that received rows
/// (`source:<source>.<table>+` for every dbt source naming such a table), or everything when
/// loaded tables match no declared source; nothing when nothing was loaded.
///
/// # Errors
/// As [`run`].
pub async fn after_sync(
    ferry: &crate::project::Project,
    loaded: &[(Option<String>, String)],
    g: &Globals,
) -> anyhow::Result<i32> {
    if ferry.transform.is_none() {
        return Err(config_error(format!(
            "--then-transform: {} has no `transform:` naming the dbt-style project",
            ferry.file.display()
        )));
    }
    if loaded.is_empty() {
        tracing::info!("Nothing was loaded; no models to build.");
        return Ok(exit::OK);
    }
    let g2 = Globals {
        project: Some(ferry.file.clone()),
        quiet: g.quiet,
    };
    let mut args = TransformArgs {
        command: TransformCommand::Build,
        rest: Vec::new(),
        project_dir: None,
        profiles_dir: None,
        target: None,
        select: Vec::new(),
        exclude: Vec::new(),
        full_refresh: false,
        threads: None,
        vars: None,
        output: None,
    };
    // Which declared sources name the loaded tables.
    let loc = locate(&args, &g2)?;
    let project = project::DbtProject::load(&loc.dir)?;
    let target = project::load_target(
        &project,
        loc.profiles_dir.as_deref(),
        loc.target.as_deref(),
        None,
    )?;
    let graph = nodes::parse(&project, &target, &nodes::ParseOptions::default())?;
    let mut select = Vec::new();
    for s in graph.sources.values() {
        let hit = loaded.iter().any(|(schema, table)| {
            s.identifier.eq_ignore_ascii_case(table)
                && schema
                    .as_ref()
                    .is_none_or(|sc| sc.eq_ignore_ascii_case(&s.schema))
        });
        if hit {
            select.push(format!("source:{}.{}+", s.source_name, s.name));
        }
    }
    if select.is_empty() {
        tracing::info!("The loaded tables match no declared source; building every model.");
    } else {
        tracing::info!("Building what depends on: {}.", select.join(" "));
    }
    args.select = select;
    run(args, &g2).await
}

/// Runs `ferry transform <command>`.
///
/// # Errors
/// A config error (exit 2) when the project cannot be read; failures of nodes are reported
/// per node and give exit 1.
pub async fn run(args: TransformArgs, g: &Globals) -> anyhow::Result<i32> {
    let loc = locate(&args, g)?;
    let project = project::DbtProject::load(&loc.dir)?;
    if matches!(args.command, TransformCommand::Deps) {
        let n = deps::install(&project).await?;
        if !g.quiet {
            tracing::info!(
                "Installed {n} packages into {}; wrote package-lock.yml.",
                deps::install_path(&project).display()
            );
        }
        return Ok(exit::OK);
    }
    let target = project::load_target(
        &project,
        loc.profiles_dir.as_deref(),
        loc.target.as_deref(),
        args.threads,
    )?;
    let opts = nodes::ParseOptions {
        vars: nodes::parse_vars(args.vars.as_deref())?,
    };
    let t0 = std::time::Instant::now();
    let graph = Arc::new(nodes::parse(&project, &target, &opts)?);
    tracing::debug!(secs = t0.elapsed().as_secs_f64(), "Parsed the project.");
    if let Some(cycle) = select::find_cycle(&graph) {
        return Err(config_error(format!(
            "Found a cycle: {}",
            cycle.join(" --> ")
        )));
    }
    let which = format!("{:?}", args.command).to_lowercase();
    let inv = artifacts::Invocation::new(
        &which,
        json!({
            "which": which, "select": args.select, "exclude": args.exclude,
            "full_refresh": args.full_refresh, "target": target.name, "threads": target.threads,
            "vars": opts.vars, "project_dir": project.dir.display().to_string(),
        }),
    );
    let target_dir = project.target_dir();
    let count = |r: nodes::Resource| graph.nodes.values().filter(|n| n.resource == r).count();
    let summary = format!(
        "{} models, {} data tests, {} seeds, {} sources, {} macros",
        count(nodes::Resource::Model),
        count(nodes::Resource::Test),
        count(nodes::Resource::Seed),
        graph.sources.len(),
        graph.jinja.macros.len()
    );
    match args.command {
        TransformCommand::Parse => {
            let m = artifacts::manifest(&project, Some(&target), &graph, &Default::default(), &inv);
            tracing::debug!(secs = t0.elapsed().as_secs_f64(), "Built the manifest.");
            artifacts::write_json(&target_dir, "manifest.json", &m)?;
            tracing::debug!(secs = t0.elapsed().as_secs_f64(), "Wrote the manifest.");
            if !g.quiet {
                tracing::info!(
                    "Parsed {summary} in {:.2}s; wrote {}.",
                    t0.elapsed().as_secs_f64(),
                    target_dir.join("manifest.json").display()
                );
            }
            return Ok(exit::OK);
        }
        TransformCommand::Docs => {
            let m = artifacts::manifest(&project, Some(&target), &graph, &Default::default(), &inv);
            artifacts::write_json(&target_dir, "manifest.json", &m)?;
            let html = docs::page(&project, &graph, loc.ferry.as_ref());
            std::fs::create_dir_all(&target_dir)?;
            let path = target_dir.join("index.html");
            std::fs::write(&path, html)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            if !g.quiet {
                tracing::info!("Wrote {} ({summary}).", path.display());
            }
            return Ok(exit::OK);
        }
        TransformCommand::Source => {
            if args.rest.first().map(String::as_str) != Some("freshness") || args.rest.len() > 1 {
                return Err(config_error(format!(
                    "`ferry transform source {}`: the only source command is `source freshness`",
                    args.rest.join(" ")
                )));
            }
            let selected = select::select_sources(&graph, &args.select, &args.exclude)?;
            let output = args
                .output
                .clone()
                .unwrap_or_else(|| target_dir.join("sources.json"));
            return freshness::run(
                &graph,
                &target,
                &selected,
                &output,
                &inv,
                g.quiet,
                loc.ferry.as_ref(),
            )
            .await;
        }
        _ => {}
    }
    let mode = match args.command {
        TransformCommand::Run => run::Mode::Run,
        TransformCommand::Test => run::Mode::Test,
        TransformCommand::Seed => run::Mode::Seed,
        TransformCommand::Build => run::Mode::Build,
        TransformCommand::Snapshot => run::Mode::Snapshot,
        _ => run::Mode::Compile,
    };
    let selected = select::select(&graph, &args.select, &args.exclude)?;
    if !g.quiet {
        tracing::info!(
            "Found {summary}; target {} ({}).",
            target.name,
            adapter::describe(&target)
        );
    }
    let out = run::execute(
        graph.clone(),
        &project,
        &target,
        &selected,
        mode,
        args.full_refresh,
    )
    .await?;
    let t1 = std::time::Instant::now();
    let m = artifacts::manifest(&project, Some(&target), &graph, &out.compiled, &inv);
    tracing::debug!(secs = t1.elapsed().as_secs_f64(), "Built the manifest.");
    artifacts::write_json(&target_dir, "manifest.json", &m)?;
    tracing::debug!(secs = t1.elapsed().as_secs_f64(), "Wrote the manifest.");
    let rr = artifacts::run_results(&out.results, out.elapsed, &inv);
    artifacts::write_json(&target_dir, "run_results.json", &rr)?;
    tracing::debug!(secs = t1.elapsed().as_secs_f64(), "Wrote run_results.json.");
    // The process ends next: freeing these trees (~100k small allocations) would only
    // delay the exit.
    std::mem::forget((m, rr));
    let n = |s: &str| out.results.iter().filter(|r| r.status == s).count();
    let pass = n("success") + n("pass");
    let (warn, error, skip) = (n("warn"), n("error") + n("fail"), n("skipped"));
    if !g.quiet {
        if mode == run::Mode::Compile {
            tracing::info!(
                "Compiled {} nodes into {} in {:.2}s.",
                out.results.len(),
                target_dir.join("compiled").display(),
                out.elapsed
            );
        } else {
            tracing::info!(
                "Finished in {:.2}s. Done. PASS={pass} WARN={warn} ERROR={error} SKIP={skip} NO-OP=0 TOTAL={}",
                out.elapsed,
                out.results.len()
            );
        }
    }
    if mode == run::Mode::Compile && error > 0 {
        return Ok(exit::CONFIG);
    }
    Ok(if error > 0 { exit::FAILED } else { exit::OK })
}
