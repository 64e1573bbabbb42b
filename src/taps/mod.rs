//! Built-in taps, dispatched by enum (a closed set; no registry machinery).
//!
//! To add one: a folder `src/taps/<name>/` with `mod.rs` (the tap type and its config),
//! a variant here, its name in [`BUILTIN`], and arms in each `match` below. External Singer
//! taps need none of this: a pipeline names them with `command:`.

pub mod file;
pub mod postgres;
pub mod rest;

use serde_json::Value;

use crate::about::About;
use crate::error::config_error;
use crate::runner::{Emitter, SourceOutcome};
use crate::singer::Catalog;

/// Names of the built-in taps.
pub const BUILTIN: &[&str] = &["csv", "jsonl", "postgres"];

/// A built-in tap, configured.
#[derive(Debug)]
pub enum Tap {
    /// `csv` and `jsonl`: files, folders or globs.
    File(file::FileTap),
    /// `postgres`: tables and views.
    Postgres(Box<postgres::PostgresTap>),
    /// A REST API described by a definition: a shipped one by name (`github`), or a file.
    Rest(Box<rest::RestTap>),
}

/// One line of a `--dry-run` plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanStep {
    /// The stream.
    pub stream: String,
    /// FULL_TABLE, INCREMENTAL, …
    pub method: String,
    /// The bookmark the run would start from.
    pub bookmark: Option<Value>,
    /// What would be read (files, a query predicate).
    pub detail: String,
}

impl Tap {
    /// Builds a tap from its name and config.
    ///
    /// # Errors
    /// A config error for an unknown name (listing the known ones) or a bad config.
    pub fn new(name: &str, config: &Value) -> anyhow::Result<Tap> {
        match name {
            "csv" => Ok(Tap::File(file::FileTap::new(file::Format::Csv, config)?)),
            "jsonl" => Ok(Tap::File(file::FileTap::new(file::Format::Jsonl, config)?)),
            "postgres" => Ok(Tap::Postgres(Box::new(postgres::PostgresTap::new(config)?))),
            other => match crate::definitions::Source::tap(other) {
                Some(def) => Ok(Tap::Rest(Box::new(rest::RestTap::new(&def, config)?))),
                None => Err(unknown(other)),
            },
        }
    }

    /// The `--about` description of a built-in tap.
    ///
    /// # Errors
    /// A config error for an unknown name.
    pub fn about(name: &str) -> anyhow::Result<About> {
        match name {
            "csv" => Ok(file::about(file::Format::Csv)),
            "jsonl" => Ok(file::about(file::Format::Jsonl)),
            "postgres" => Ok(postgres::about()),
            other => match crate::definitions::Source::tap(other) {
                Some(def) => rest::about(&def),
                None => Err(unknown(other)),
            },
        }
    }

    /// Discovers the streams the tap can read.
    ///
    /// # Errors
    /// When the source cannot be read.
    pub async fn discover(&self) -> anyhow::Result<Catalog> {
        match self {
            Tap::File(t) => t.discover().await,
            Tap::Postgres(t) => t.discover().await,
            Tap::Rest(t) => t.discover().await,
        }
    }

    /// Reads the selected streams of `catalog`, starting from `state`, into `emitter`.
    ///
    /// # Errors
    /// When the tap cannot go on at all; a failure confined to one stream is reported in the
    /// outcome instead, and the other streams go on.
    pub async fn sync(
        self,
        catalog: Catalog,
        state: Value,
        emitter: Emitter,
    ) -> anyhow::Result<SourceOutcome> {
        match self {
            Tap::File(t) => t.sync(catalog, state, emitter).await,
            Tap::Postgres(t) => t.sync(catalog, state, emitter).await,
            Tap::Rest(t) => t.sync(catalog, state, emitter).await,
        }
    }

    /// What a run would do, without reading any data.
    ///
    /// # Errors
    /// When the source cannot be listed.
    pub fn plan(&self, catalog: &Catalog, state: &Value) -> anyhow::Result<Vec<PlanStep>> {
        match self {
            Tap::File(t) => t.plan(catalog, state),
            Tap::Postgres(t) => t.plan(catalog, state),
            Tap::Rest(t) => t.plan(catalog, state),
        }
    }
}

fn unknown(name: &str) -> anyhow::Error {
    let apis: Vec<&str> = crate::definitions::TAPS.iter().map(|s| s.name).collect();
    config_error(format!(
        "unknown tap {name:?}; built-in taps: {}, and the REST APIs {} (`ferry tap --list`); a REST API definition of your own is a path ending in .yml (my_api.yml); for any other Singer tap use `command: {name}` in ferry.yml",
        BUILTIN.join(", "),
        apis.join(", ")
    ))
}

/// The built-in taps with a line on each, for `ferry tap --list`.
pub fn list() -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = BUILTIN
        .iter()
        .map(|n| {
            let about = Tap::about(n).map(|a| a.description.to_owned());
            (*n, about.unwrap_or_default())
        })
        .collect();
    for s in crate::definitions::TAPS {
        out.push((s.name, crate::definitions::description(s)));
    }
    out
}
