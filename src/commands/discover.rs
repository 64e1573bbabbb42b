//! `ferry discover` (write a pipeline's catalog) and `ferry select` (edit its selection).

use std::path::PathBuf;

use anyhow::Context;
use serde_json::{json, Value};

use super::sync::default_catalog_path;
use super::{print_stdout, Globals};
use crate::cli::{DiscoverArgs, SelectArgs};
use crate::error::config_error;
use crate::process::{singer_args, ChildConnector, ChildFiles};
use crate::project::{ConnectorKind, Pipeline, Project};
use crate::singer::catalog::{carry_over_selection, keys};
use crate::singer::Catalog;
use crate::state_store::write_atomic;
use crate::taps::Tap;

fn catalog_path(p: &Pipeline) -> PathBuf {
    p.tap
        .catalog
        .clone()
        .unwrap_or_else(|| default_catalog_path(p))
}

/// Runs discovery and writes the catalog, keeping the selections of an existing one.
///
/// # Errors
/// Config errors, a tap that cannot discover.
pub async fn run(a: DiscoverArgs, g: &Globals) -> anyhow::Result<i32> {
    let project = Project::load(g.project.as_deref())?;
    let p = project.pipeline(&a.pipeline)?;
    let out = a
        .output
        .clone()
        .map_or_else(|| catalog_path(p), |o| std::path::absolute(&o).unwrap_or(o));
    std::env::set_current_dir(&project.dir)
        .with_context(|| format!("cannot enter {}", project.dir.display()))?;
    let mut catalog = match &p.tap.kind {
        ConnectorKind::Builtin(name) => Tap::new(name, &p.tap.config)?.discover().await?,
        ConnectorKind::Command(program, args) => {
            discover_external(program, args, &p.tap.config).await?
        }
    };
    if out.is_file() {
        let old = Catalog::load(&out)?;
        carry_over_selection(&mut catalog, &old);
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&catalog.to_value())? + "\n";
    write_atomic(&out, text.as_bytes())
        .with_context(|| format!("cannot write {}", out.display()))?;
    tracing::info!(catalog = %out.display(), streams = catalog.streams.len(), selected = catalog.selected().count(), "Catalog written.");
    Ok(0)
}

async fn discover_external(
    program: &str,
    args: &[String],
    config: &Value,
) -> anyhow::Result<Catalog> {
    let files = ChildFiles::new()?;
    let mut argv = singer_args(args, &files, config)?;
    argv.push("--discover".to_owned());
    let mut child = ChildConnector::spawn(program, &argv, files, false)?;
    let mut stdout = child.child.stdout.take().context("child stdout")?;
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut buf).await?;
    let label = child.label().to_owned();
    child.finish().await?;
    let v: Value = serde_json::from_slice(&buf)
        .with_context(|| format!("{label} --discover did not write a JSON catalog"))?;
    Catalog::from_value(v).with_context(|| format!("the catalog {label} discovered"))
}

/// Edits selection metadata in a pipeline's catalog.
///
/// # Errors
/// A missing catalog, a glob matching nothing, a key that is not a property.
pub fn select(a: SelectArgs, g: &Globals) -> anyhow::Result<i32> {
    let project = Project::load(g.project.as_deref())?;
    let p = project.pipeline(&a.pipeline)?;
    let path = catalog_path(p);
    if !path.is_file() {
        return Err(config_error(format!(
            "catalog {} does not exist; create it with `ferry discover {}`",
            path.display(),
            p.name
        )));
    }
    let mut catalog = Catalog::load(&path)?;
    if a.list || a.streams.is_empty() {
        let mut out = String::new();
        for s in &catalog.streams {
            out.push_str(&format!(
                "[{}] {:<40} {}{}\n",
                if s.is_selected() { "x" } else { " " },
                s.tap_stream_id(),
                s.replication_method().unwrap_or("-"),
                s.replication_key()
                    .map(|k| format!(" by {k}"))
                    .unwrap_or_default()
            ));
        }
        print_stdout(&out)?;
        return Ok(0);
    }
    let globs: Vec<glob::Pattern> = a
        .streams
        .iter()
        .map(|p| glob::Pattern::new(p).map_err(|e| config_error(format!("{p:?}: {e}"))))
        .collect::<anyhow::Result<_>>()?;
    let mut matched = 0;
    for s in &mut catalog.streams {
        if !globs
            .iter()
            .any(|g| g.matches(s.tap_stream_id()) || g.matches(s.stream_name()))
        {
            continue;
        }
        matched += 1;
        s.set_metadata(&[], keys::SELECTED, json!(!a.deselect));
        if let Some(m) = a.method {
            s.set_metadata(&[], keys::REPLICATION_METHOD, json!(m.as_str()));
        }
        if let Some(k) = &a.key {
            if s.schema()
                .pointer(&format!(
                    "/properties/{}",
                    k.replace('~', "~0").replace('/', "~1")
                ))
                .is_none()
            {
                return Err(config_error(format!(
                    "stream {:?} has no property {k:?} to use as replication key",
                    s.tap_stream_id()
                )));
            }
            let valid = s
                .stream_meta(keys::VALID_REPLICATION_KEYS)
                .and_then(Value::as_array);
            if valid.is_some_and(|v| !v.is_empty() && !v.iter().any(|x| x.as_str() == Some(k))) {
                tracing::warn!(stream = %s.tap_stream_id(), key = %k, "The tap does not list this column among its valid replication keys.");
            }
            s.set_metadata(&[], keys::REPLICATION_KEY, json!(k));
        }
    }
    if matched == 0 {
        let ids: Vec<&str> = catalog.streams.iter().map(|s| s.tap_stream_id()).collect();
        return Err(config_error(format!(
            "{} match no stream; streams: {}",
            a.streams.join(", "),
            ids.join(", ")
        )));
    }
    let text = serde_json::to_string_pretty(&catalog.to_value())? + "\n";
    write_atomic(&path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(catalog = %path.display(), streams = matched, "Selection updated.");
    Ok(0)
}
