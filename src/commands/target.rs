//! `ferry target NAME`: a built-in target reading Singer messages from stdin (or `--input`),
//! writing each state to stdout once the records before it are durable.

use std::io::BufReader;

use anyhow::Context;

use super::{load_config, print_about, print_list, summary, Globals};
use crate::cli::TargetArgs;
use crate::runner::{self, RunOptions, Sink, Source, StateOut};
use crate::targets::Target;

/// Runs the target.
///
/// # Errors
/// Config errors, bad input (with its line), load errors.
pub async fn run(a: TargetArgs, g: &Globals) -> anyhow::Result<i32> {
    if a.list {
        return print_list(&crate::targets::list());
    }
    let name = a.name.clone().unwrap_or_default();
    if a.about {
        return print_about(&Target::about(&name)?, a.format);
    }
    let config = load_config(a.config.as_deref())?;
    let target = Target::new(&name, &config, None).await?;
    let source = match &a.input {
        Some(p) => {
            let f = std::fs::File::open(p)
                .with_context(|| format!("cannot open --input {}", p.display()))?;
            Source::Lines(BufReader::with_capacity(1 << 16, Box::new(f)))
        }
        None => Source::Lines(BufReader::with_capacity(
            1 << 16,
            Box::new(std::io::stdin()),
        )),
    };
    let opts = RunOptions {
        on_invalid: a.on_invalid,
        rejects_dir: a.rejects_dir.clone(),
        ..RunOptions::default()
    };
    let (stats, _) = runner::run(source, Sink::Load(target), StateOut::Stdout, opts).await?;
    summary(&format!("target {}", name), &stats, g.quiet);
    Ok(0)
}
