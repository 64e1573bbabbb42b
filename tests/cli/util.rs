//! Test helpers: a temporary project folder and a way to run the real `ferry` binary in it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The binary under test.
pub fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// What a finished command left.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Asserts success, showing stderr otherwise.
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(
            self.code, 0,
            "expected success; stderr:\n{}\nstdout:\n{}",
            self.stderr, self.stdout
        );
        self
    }

    /// Asserts a given exit code.
    #[track_caller]
    pub fn code(self, code: i32) -> Out {
        assert_eq!(
            self.code, code,
            "expected exit {code}; stderr:\n{}",
            self.stderr
        );
        self
    }

    /// Asserts stderr contains `needle`.
    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Out {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }

    /// stdout as JSON lines.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A temp folder to run ferry in.
pub struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.join(rel).exists()
    }

    /// JSON lines of a file.
    pub fn jsonl(&self, rel: &str) -> Vec<Value> {
        self.read(rel)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn json(&self, rel: &str) -> Value {
        serde_json::from_str(&self.read(rel)).unwrap()
    }

    /// A ferry command in this folder, with progress bars and colours off.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(ferry_bin());
        c.args(args)
            .current_dir(self.path())
            .env("FERRY_NO_PROGRESS", "1")
            .env("NO_COLOR", "1")
            .env_remove("FERRY_LOG");
        c
    }

    /// Runs ferry with `args`, feeding `stdin`.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        run(self.cmd(args), stdin)
    }
}

/// Runs a command to completion.
pub fn run(mut c: Command, stdin: Option<&str>) -> Out {
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(input) = stdin {
        let mut si = child.stdin.take().unwrap();
        let input = input.to_owned();
        // Written from a thread so a child that stops reading cannot deadlock the test.
        std::thread::spawn(move || {
            let _ = si.write_all(input.as_bytes());
        });
    }
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Singer messages as JSON lines.
pub fn lines(msgs: &[Value]) -> String {
    msgs.iter().map(|m| format!("{m}\n")).collect()
}

/// Waits until `cond()` holds or `child` has exited: polling a condition, never a fixed time.
///
/// # Panics
/// After a minute without either.
pub fn wait_until(child: &mut std::process::Child, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Runs `ferry -q sync p` in `d` and kills it (SIGKILL): once `reached(n)` holds with
/// `kill_after = Some(n)` (a commit got that far), or at once with `None`.
pub fn sync_killed_after(d: &Dir, kill_after: Option<u64>, mut reached: impl FnMut(u64) -> bool) {
    let mut child = d
        .cmd(&["-q", "sync", "p"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    if let Some(n) = kill_after {
        wait_until(&mut child, "a commit", || reached(n));
    }
    let _ = child.kill();
    child.wait().unwrap();
}
