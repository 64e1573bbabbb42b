//! External Singer executables run as child processes: config and catalog handed over in
//! private temp files, stderr forwarded to ferry's log (secrets masked) with the last lines
//! kept for error messages, and the child killed if ferry stops first.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::task::JoinHandle;

use crate::error::config_error;
use crate::secrets;

/// Lines of a child's stderr kept for the error message when it fails.
const STDERR_TAIL_LINES: usize = 20;

/// A running external connector.
#[derive(Debug)]
pub struct ChildConnector {
    /// The process; killed on drop.
    pub child: tokio::process::Child,
    label: String,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr_task: Option<JoinHandle<()>>,
    // Config and catalog files live as long as the child.
    _files: tempfile::TempDir,
}

/// Files to hand to a child, written into a private temp folder.
#[derive(Debug)]
pub struct ChildFiles {
    dir: tempfile::TempDir,
}

impl ChildFiles {
    /// A new private folder.
    ///
    /// # Errors
    /// When no temp folder can be created.
    pub fn new() -> anyhow::Result<ChildFiles> {
        Ok(ChildFiles {
            dir: tempfile::Builder::new().prefix("ferry-child-").tempdir()?,
        })
    }

    /// Writes `value` as JSON to `name` inside the folder (mode 0600: configs hold secrets).
    ///
    /// # Errors
    /// Any I/O error.
    pub fn write_json(&self, name: &str, value: &Value) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.path().join(name);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        opts.mode(0o600);
        let mut f = opts
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        f.write_all(serde_json::to_string(value)?.as_bytes())?;
        Ok(path)
    }
}

/// The argument list for a Singer executable: its extra arguments first (so `command: python,
/// args: [-m, tap_x]` and `command: ferry, args: [tap, csv]` work), then `--config FILE`.
///
/// # Errors
/// When the config file cannot be written.
pub fn singer_args(
    extra: &[String],
    files: &ChildFiles,
    config: &Value,
) -> anyhow::Result<Vec<String>> {
    let mut args = extra.to_vec();
    args.push("--config".to_owned());
    args.push(
        files
            .write_json("config.json", config)?
            .display()
            .to_string(),
    );
    Ok(args)
}

impl ChildConnector {
    /// Starts `program args…` with piped stdout, optionally piped stdin, and forwarded stderr.
    ///
    /// # Errors
    /// A config error when the program cannot be started (not installed, not executable).
    pub fn spawn(
        program: &str,
        args: &[String],
        files: ChildFiles,
        pipe_stdin: bool,
    ) -> anyhow::Result<ChildConnector> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(if pipe_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            config_error(format!(
                "cannot start {program:?}: {e}; is it installed and on PATH?"
            ))
        })?;
        let label = program.rsplit('/').next().unwrap_or(program).to_owned();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
        let stderr_task = child.stderr.take().map(|stderr| {
            let tail = Arc::clone(&tail);
            let label = label.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = secrets::redact(&line);
                    tracing::info!(connector = %label, "{line}");
                    let mut t = tail
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if t.len() == STDERR_TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            })
        });
        Ok(ChildConnector {
            child,
            label,
            tail,
            stderr_task,
            _files: files.dir,
        })
    }

    /// The program's short name.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The last lines the child wrote on stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let t = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if t.is_empty() {
            "(it wrote nothing on stderr)".into()
        } else {
            t.iter().map(|l| format!("\n  | {l}")).collect()
        }
    }

    /// Waits for the child to exit and for its stderr to be drained.
    ///
    /// # Errors
    /// When it exits unsuccessfully, with its status and the last lines of its stderr.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        let status = self
            .child
            .wait()
            .await
            .with_context(|| format!("waiting for {}", self.label))?;
        if let Some(t) = self.stderr_task.take() {
            let _ = t.await;
        }
        if status.success() {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "{} exited with {status}; its last stderr lines:{}",
                self.label,
                self.stderr_tail()
            ))
        }
    }

    /// Builds the error for a child that stopped talking early: waits briefly for its exit
    /// status so the message can say how it died.
    pub async fn died(mut self, what: &str) -> anyhow::Error {
        let status =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.child.wait()).await;
        if let Some(t) = self.stderr_task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
        }
        let status = match status {
            Ok(Ok(s)) => s.to_string(),
            _ => "no exit status (killed by ferry)".into(),
        };
        anyhow::anyhow!(
            "{} {what} ({status}); its last stderr lines:{}",
            self.label,
            self.stderr_tail()
        )
    }
}
