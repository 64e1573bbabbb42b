//! `ferry tap NAME`: a built-in tap writing Singer messages to stdout.

use serde_json::json;

use super::{load_config, print_about, print_list, print_stdout, summary, Globals};
use crate::cli::TapArgs;
use crate::error::{config_error, Failure};
use crate::runner::{self, RunOptions, Sink, Source, StateOut};
use crate::singer::catalog::keys;
use crate::singer::Catalog;
use crate::state_store::read_state_file;
use crate::taps::Tap;

/// Runs the tap.
///
/// # Errors
/// Config errors, source errors, a broken stdout.
pub async fn run(a: TapArgs, g: &Globals) -> anyhow::Result<i32> {
    if a.list {
        return print_list(&crate::taps::list());
    }
    let name = a.name.clone().unwrap_or_default();
    if a.about {
        return print_about(&Tap::about(&name)?, a.format);
    }
    let config = load_config(a.config.as_deref())?;
    let tap = Tap::new(&name, &config)?;
    if a.discover {
        let catalog = tap.discover().await?;
        print_stdout(&serde_json::to_string_pretty(&catalog.to_value())?)?;
        return Ok(0);
    }
    let catalog = match &a.catalog {
        Some(p) => Catalog::load(p)?,
        None => {
            // Without a catalog every stream the tap finds is read, as tap-csv does.
            let mut c = tap.discover().await?;
            for s in &mut c.streams {
                s.set_metadata(&[], keys::SELECTED, json!(true));
            }
            c
        }
    };
    let state = match &a.state {
        Some(p) => {
            if !p.is_file() {
                return Err(config_error(format!(
                    "state file {} does not exist",
                    p.display()
                )));
            }
            read_state_file(p)?
        }
        None => crate::singer::state::empty(),
    };
    let (stats, _) = runner::run(
        Source::Builtin {
            tap,
            catalog,
            state,
        },
        Sink::Stdout,
        StateOut::Discard,
        RunOptions::default(),
    )
    .await?;
    summary(&format!("tap {}", name), &stats, g.quiet);
    if !stats.failed_streams.is_empty() {
        let names: Vec<&str> = stats
            .failed_streams
            .iter()
            .map(|(s, _)| s.as_str())
            .collect();
        return Err(anyhow::Error::new(Failure::Partial(format!(
            "streams failed: {}",
            names.join(", ")
        ))));
    }
    Ok(0)
}
