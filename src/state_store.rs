//! The state file of a pipeline: read at the start of a run, replaced atomically (temp file,
//! fsync, rename, fsync of the folder) after each commit, pretty-printed with sorted keys so it
//! diffs cleanly in git, and guarded by a lock file so overlapping runs cannot clobber it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use crate::error::{config_error, Failure};
use crate::singer::state;

/// An open, locked state file.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    // Held for the life of the store: the OS releases the lock when the file is closed,
    // including when the process is killed.
    _lock: Option<File>,
}

/// The lock file that sits beside a state file.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

impl StateStore {
    /// Opens the state file at `path` and takes its lock.
    ///
    /// # Errors
    /// [`Failure::Locked`] when another run holds the lock; an I/O error when the folder
    /// cannot be created.
    pub fn open_locked(path: &Path) -> anyhow::Result<StateStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the state folder {}", dir.display()))?;
        }
        let lp = lock_path(path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lp)
            .with_context(|| format!("cannot open the state lock {}", lp.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(anyhow::Error::new(Failure::Locked(format!(
                    "another run of this pipeline holds the state lock {}; wait for it to finish \
                     (a lock left by a killed run is released by the OS automatically)",
                    lp.display()
                ))))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", lp.display()))
            }
        }
        Ok(StateStore {
            path: path.to_owned(),
            _lock: Some(lock),
        })
    }

    /// A store without a lock, for read-only use (`ferry state show`, `--dry-run`).
    pub fn unlocked(path: &Path) -> StateStore {
        StateStore {
            path: path.to_owned(),
            _lock: None,
        }
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the saved state; a missing file is the empty state.
    ///
    /// # Errors
    /// A config error when the file exists but is not a JSON object.
    pub fn read(&self) -> anyhow::Result<Value> {
        read_state_file(&self.path)
    }

    /// Replaces the state file atomically.
    ///
    /// # Errors
    /// Any I/O error; the previous state file is then left intact.
    pub fn write(&self, value: &Value) -> anyhow::Result<()> {
        write_atomic(&self.path, state::to_pretty(value).as_bytes())
            .with_context(|| format!("cannot write the state file {}", self.path.display()))
    }
}

/// Reads a state file; a missing file is the empty state.
///
/// # Errors
/// A config error when the file exists but is not a JSON object.
pub fn read_state_file(path: &Path) -> anyhow::Result<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state::empty()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the state file {}", path.display()))
        }
    };
    if text.trim().is_empty() {
        return Ok(state::empty());
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        config_error(format!(
            "state file {} is not valid JSON: {e}; fix it or remove it with `ferry state clear`",
            path.display()
        ))
    })?;
    if !v.is_object() {
        return Err(config_error(format!(
            "state file {} must hold a JSON object",
            path.display()
        )));
    }
    Ok(v)
}

/// Writes `bytes` to `path` so that a reader sees the old content or the new, never a mix:
/// a temp file in the same folder, fsync, rename over, fsync of the folder.
///
/// # Errors
/// Any I/O error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".ferry-tmp-")
        .tempfile_in(&dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename is durable only once the folder entry is.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The file beside a pipeline's state file that records when each table was last synced
/// (`<state>.loaded_at.json`), for `ferry transform source freshness` on sources without a
/// `loaded_at_field`.
pub fn loaded_at_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".loaded_at.json");
    state.with_file_name(name)
}

/// Records that these tables (`schema.table`, or `table` when the target names no schema)
/// were synced at `at`, keeping the other tables' times; keys sorted, so it diffs cleanly.
///
/// # Errors
/// The file cannot be written.
pub fn record_loaded_at(state: &Path, tables: &[String], at: &str) -> anyhow::Result<()> {
    let path = loaded_at_path(state);
    let mut map: std::collections::BTreeMap<String, String> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for t in tables {
        map.insert(t.clone(), at.to_string());
    }
    let mut text = serde_json::to_string_pretty(&map)?;
    text.push('\n');
    write_atomic(&path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// When a table was last synced, from every pipeline's record (the newest).
pub fn loaded_at(
    states: &[&Path],
    schema: &str,
    table: &str,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let keys = [
        format!("{schema}.{table}").to_lowercase(),
        table.to_lowercase(),
    ];
    states
        .iter()
        .filter_map(|s| std::fs::read(loaded_at_path(s)).ok())
        .filter_map(|b| {
            serde_json::from_slice::<std::collections::BTreeMap<String, String>>(&b).ok()
        })
        .flat_map(|m| m.into_iter())
        .filter(|(k, _)| keys.contains(&k.to_lowercase()))
        .filter_map(|(_, v)| chrono::DateTime::parse_from_rfc3339(&v).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn write_read_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state/p.json");
        let store = StateStore::open_locked(&p).unwrap();
        assert_eq!(store.read().unwrap(), json!({}));
        store
            .write(&json!({"bookmarks": {"b": 1, "a": 2}}))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\n  \"bookmarks\": {\n    \"a\": 2,\n    \"b\": 1\n  }\n}\n"
        );
        let second = StateStore::open_locked(&p).unwrap_err();
        assert_eq!(crate::error::exit_code(&second), crate::error::exit::LOCKED);
        drop(store);
        StateStore::open_locked(&p).unwrap();
    }
}
