//! `ferry state show|set|clear`: operator access to a pipeline's state.

use serde_json::Value;

use super::{print_stdout, Globals};
use crate::cli::{StateAction, StateArgs};
use crate::error::config_error;
use crate::project::Project;
use crate::singer::state;
use crate::state_store::StateStore;

/// A built-in target that keeps the state with its data would otherwise hand the old state back
/// on the next run (it takes it for a state file that missed its last commit).
async fn forget_target_state(p: &crate::project::Pipeline) -> anyhow::Result<()> {
    if let crate::project::ConnectorKind::Builtin(name) = &p.target.kind {
        crate::targets::Target::new(name, &p.target.config, Some(&p.name))
            .await?
            .forget_state()
            .await?;
    }
    Ok(())
}

/// Runs the state operation.
///
/// # Errors
/// Config errors, a held lock, an invalid value.
pub async fn run(a: StateArgs, g: &Globals) -> anyhow::Result<i32> {
    let project = Project::load(g.project.as_deref())?;
    // Target configs name folders relative to the project, as in `ferry sync`.
    std::env::set_current_dir(&project.dir)
        .map_err(|e| anyhow::anyhow!("cannot enter {}: {e}", project.dir.display()))?;
    match a.action {
        StateAction::Show { pipeline, stream } => {
            let p = project.pipeline(&pipeline)?;
            let st = StateStore::unlocked(&p.state).read()?;
            let shown = match &stream {
                Some(s) => state::bookmark(&st, s).cloned().unwrap_or(Value::Null),
                None => st,
            };
            print_stdout(&state::to_pretty(&shown))?;
        }
        StateAction::Set {
            pipeline,
            value,
            stream,
        } => {
            let p = project.pipeline(&pipeline)?;
            let v: Value = serde_json::from_str(&value)
                .map_err(|e| config_error(format!("the value is not JSON: {e}")))?;
            let store = StateStore::open_locked(&p.state)?;
            let mut st = store.read()?;
            match &stream {
                Some(s) => state::set_bookmark(&mut st, s, Some(v)),
                None => {
                    if !v.is_object() {
                        return Err(config_error(
                            "a state must be a JSON object such as {\"bookmarks\": {}}",
                        ));
                    }
                    st = v;
                }
            }
            store.write(&st)?;
            forget_target_state(p).await?;
        }
        StateAction::Clear { pipeline, stream } => {
            let p = project.pipeline(&pipeline)?;
            let store = StateStore::open_locked(&p.state)?;
            let mut st = store.read()?;
            match &stream {
                Some(s) => state::set_bookmark(&mut st, s, None),
                None => st = state::empty(),
            }
            store.write(&st)?;
            forget_target_state(p).await?;
        }
    }
    Ok(0)
}
