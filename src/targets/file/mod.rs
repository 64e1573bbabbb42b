//! Targets `csv` and `jsonl`: one file per stream in a folder (`destination_path`, as the
//! Python target-jsonl has it), appended to.
//!
//! Durability: `commit` writes what is buffered, fsyncs each file, then records each file's
//! committed length (and the state) in a commit log beside them. When a file is opened and is
//! longer than its committed length, the tail was written by an interrupted run after its last
//! commit: it is cut off, because the re-run will send those records again. So a killed run
//! followed by a re-run neither loses nor duplicates a record.
//!
//! CSV schema changes: a new property adds a column. The file is rewritten with the wider
//! header (old rows get empty cells), under a temporary name and renamed over.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Recovered;
use crate::about::{About, ConfigKey};
use crate::error::config_error;
use crate::singer::{ActivateVersionMessage, RecordMessage, SchemaMessage};
use crate::state_store::write_atomic;

/// Bytes buffered per stream before they are written to the file (not yet committed).
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// The file format a target writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// CSV with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    fn ext(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

fn default_destination() -> PathBuf {
    PathBuf::from(".")
}

/// The target's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTargetConfig {
    /// The folder the files go in (created if missing).
    #[serde(default = "default_destination")]
    pub destination_path: PathBuf,
    /// CSV delimiter (default `,`).
    #[serde(default)]
    pub delimiter: Option<String>,
    /// CSV quote character (default `"`).
    #[serde(default)]
    pub quotechar: Option<String>,
    /// The pipeline this target loads for; set by `ferry sync`, so pipelines sharing a folder
    /// keep their states apart in its commit log.
    #[serde(default)]
    pub commit_scope: Option<String>,
}

/// The `--about` of the file targets.
pub fn about(format: Format) -> About {
    About {
        name: format.ext().into(),
        description: match format {
            Format::Csv => "Writes one CSV file per stream (with a header row) into a folder; new properties add columns.",
            Format::Jsonl => "Writes one JSON-lines file per stream into a folder.",
        },
        capabilities: vec!["about", "stream-maps-free", "schema-evolution"],
        settings: vec![
            ConfigKey { name: "destination_path", ty: "string", required: false, description: "Folder for the files (default: the working directory)." },
            ConfigKey { name: "delimiter", ty: "string", required: false, description: "CSV delimiter (default `,`)." },
            ConfigKey { name: "quotechar", ty: "string", required: false, description: "CSV quote character (default `\"`)." },
        ],
    }
}

/// A stream name as a safe file stem: anything but letters, digits, `-`, `_` and `.` becomes `_`.
pub fn file_stem(stream: &str) -> String {
    let s: String = stream
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_start_matches('.');
    if s.is_empty() {
        "_".into()
    } else {
        s.to_owned()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct FileMark {
    len: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    /// During a CSV header rewrite: the mark in the old layout, in case the rename never
    /// happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alt: Option<Box<FileMark>>,
}

/// The commit log of a folder: one per folder (every pipeline writing there shares the files'
/// committed lengths), with each pipeline's state kept apart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CommitLog {
    files: BTreeMap<String, FileMark>,
    #[serde(default)]
    states: BTreeMap<String, ScopeState>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ScopeState {
    #[serde(default)]
    state: Option<Value>,
    #[serde(default)]
    prev_state: Option<Value>,
}

struct StreamFile {
    name: String,
    file: File,
    len: u64,
    committed: u64,
    buf: Vec<u8>,
    columns: Vec<String>,
    header: Option<String>,
    bytes: u64,
    warned_extra: bool,
}

impl std::fmt::Debug for StreamFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamFile")
            .field("name", &self.name)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl StreamFile {
    fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes buffered bytes to the file (not yet durable).
    fn drain(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.len += self.buf.len() as u64;
            self.bytes += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

fn read_log_at(path: &Path) -> anyhow::Result<CommitLog> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).with_context(|| {
            format!(
                "the commit log {} is corrupt; remove it to start over",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CommitLog::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_log_at(path: &Path, log: &CommitLog) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(log)?;
    write_atomic(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// The `csv`/`jsonl` target.
#[derive(Debug)]
pub struct FileTarget {
    format: Format,
    delimiter: u8,
    quote: u8,
    dir: PathBuf,
    log_path: PathBuf,
    scope: String,
    streams: HashMap<String, StreamFile>,
    // Held while the target lives: two writers of one commit log would corrupt each other.
    _lock: File,
}

/// Appends one CSV field, quoted only when it must be (it holds the delimiter, the quote, a
/// line break, or leading/trailing space that readers would trim).
fn push_field(buf: &mut Vec<u8>, field: &[u8], delim: u8, quote: u8) {
    let needs = field
        .iter()
        .any(|&b| b == delim || b == quote || b == b'\n' || b == b'\r')
        || field.first().is_some_and(u8::is_ascii_whitespace)
        || field.last().is_some_and(u8::is_ascii_whitespace);
    if !needs {
        buf.extend_from_slice(field);
        return;
    }
    buf.push(quote);
    for &b in field {
        if b == quote {
            buf.push(quote);
        }
        buf.push(b);
    }
    buf.push(quote);
}

fn push_row<'a>(
    buf: &mut Vec<u8>,
    fields: impl IntoIterator<Item = &'a [u8]>,
    delim: u8,
    quote: u8,
) {
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            buf.push(delim);
        }
        push_field(buf, f, delim, quote);
    }
    buf.push(b'\n');
}

fn csv_line(delim: u8, quote: u8, fields: &[String]) -> String {
    let mut buf = Vec::new();
    push_row(&mut buf, fields.iter().map(String::as_bytes), delim, quote);
    String::from_utf8_lossy(&buf).into_owned()
}

impl FileTarget {
    /// Parses the config and creates the folder.
    ///
    /// # Errors
    /// A config error, or the folder cannot be created.
    pub fn new(format: Format, config: &Value, scope: Option<&str>) -> anyhow::Result<FileTarget> {
        let mut cfg: FileTargetConfig = serde_json::from_value(config.clone())
            .map_err(|e| config_error(format!("target {} config: {e}", format.ext())))?;
        if cfg.commit_scope.is_none() {
            cfg.commit_scope = scope.map(str::to_owned);
        }
        let one = |v: &Option<String>, what: &str, d: u8| -> anyhow::Result<u8> {
            match v {
                None => Ok(d),
                Some(s) if s.len() == 1 => Ok(s.as_bytes()[0]),
                Some(s) => Err(config_error(format!(
                    "target {}: {what} must be one ASCII character, got {s:?}",
                    format.ext()
                ))),
            }
        };
        let delimiter = one(&cfg.delimiter, "delimiter", b',')?;
        let quote = one(&cfg.quotechar, "quotechar", b'"')?;
        std::fs::create_dir_all(&cfg.destination_path).with_context(|| {
            format!(
                "cannot create destination_path {}",
                cfg.destination_path.display()
            )
        })?;
        let scope = cfg
            .commit_scope
            .as_deref()
            .map_or_else(|| "pipe".to_owned(), file_stem);
        let log_path = cfg.destination_path.join(".ferry-commit.json");
        let lock_path = cfg.destination_path.join(".ferry-commit.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            return Err(anyhow::Error::new(crate::error::Failure::Locked(format!(
                "another ferry target is writing to {} (lock {}); wait for it to finish",
                cfg.destination_path.display(),
                lock_path.display()
            ))));
        }
        Ok(FileTarget {
            format,
            delimiter,
            quote,
            dir: cfg.destination_path,
            log_path,
            scope,
            streams: HashMap::new(),
            _lock: lock,
        })
    }

    fn read_log(&self) -> anyhow::Result<CommitLog> {
        read_log_at(&self.log_path)
    }

    fn write_log(&self, log: &CommitLog) -> anyhow::Result<()> {
        write_log_at(&self.log_path, log)
    }

    fn read_header(&self, file: &mut File) -> anyhow::Result<(Vec<String>, Option<String>)> {
        file.seek(SeekFrom::Start(0))?;
        let mut first = Vec::new();
        let mut byte = [0u8; 1];
        // Header lines are short; read up to the first newline outside quotes.
        let mut in_quotes = false;
        while file.read(&mut byte)? == 1 {
            first.push(byte[0]);
            if byte[0] == self.quote {
                in_quotes = !in_quotes;
            } else if byte[0] == b'\n' && !in_quotes {
                break;
            }
        }
        if first.is_empty() {
            return Ok((Vec::new(), None));
        }
        let mut r = csv::ReaderBuilder::new()
            .delimiter(self.delimiter)
            .quote(self.quote)
            .has_headers(false)
            .from_reader(&first[..]);
        let cols = match r.records().next() {
            Some(rec) => rec?.iter().map(str::to_owned).collect(),
            None => Vec::new(),
        };
        Ok((cols, Some(String::from_utf8_lossy(&first).into_owned())))
    }

    fn open_stream(&mut self, stream: &str) -> anyhow::Result<()> {
        if self.streams.contains_key(stream) {
            return Ok(());
        }
        let name = format!("{}.{}", file_stem(stream), self.format.ext());
        let path = self.dir.join(&name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut len = file.metadata()?.len();
        let (mut columns, mut header) = (Vec::new(), None);
        if self.format == Format::Csv && len > 0 {
            (columns, header) = self.read_header(&mut file)?;
        }
        let mut log = self.read_log()?;
        if let Some(found) = log.files.get(&name) {
            // A CSV header rewrite interrupted before its rename leaves the old layout: its mark
            // is kept as `alt`.
            let mark = match &found.alt {
                Some(alt)
                    if self.format == Format::Csv
                        && found.header != header
                        && alt.header == header =>
                {
                    alt.as_ref()
                }
                _ => found,
            };
            // An empty committed file has no layout to disagree with.
            let same_layout =
                self.format == Format::Jsonl || mark.header == header || mark.len == 0;
            if len > mark.len && same_layout {
                tracing::warn!(file = %path.display(), bytes = len - mark.len, "Removing the uncommitted tail an interrupted run left; the re-run sends those records again.");
                file.set_len(mark.len)?;
                file.sync_all()?;
                len = mark.len;
            } else if len < mark.len || !same_layout {
                tracing::warn!(file = %path.display(), "The file changed outside ferry since its last commit; appending without repair.");
            }
        } else {
            // First time this file is written: record where our writing starts, so that a run
            // interrupted before its first commit is cut back to here too.
            log.files.insert(
                name.clone(),
                FileMark {
                    len,
                    header: header.clone(),
                    alt: None,
                },
            );
            self.write_log(&log)?;
        }
        file.seek(SeekFrom::End(0))?;
        self.streams.insert(
            stream.to_owned(),
            StreamFile {
                name,
                file,
                len,
                committed: len,
                buf: Vec::with_capacity(1 << 16),
                columns,
                header,
                bytes: 0,
                warned_extra: false,
            },
        );
        Ok(())
    }

    /// Applies a SCHEMA: opens the stream's file; for CSV writes the header or widens it.
    ///
    /// # Errors
    /// When the file cannot be opened or rewritten.
    pub fn schema(&mut self, msg: &SchemaMessage) -> anyhow::Result<()> {
        self.open_stream(&msg.stream)?;
        if self.format == Format::Jsonl {
            return Ok(());
        }
        let props: Vec<String> = crate::schema::columns(&msg.schema)?
            .into_iter()
            .map(|c| c.name)
            .collect();
        let (delim, quote) = (self.delimiter, self.quote);
        let sf = self.streams.get_mut(&msg.stream).context("stream file")?;
        if sf.len == 0 && sf.pending() == 0 {
            sf.columns = props;
            let line = csv_line(delim, quote, &sf.columns);
            sf.buf.extend_from_slice(line.as_bytes());
            sf.header = Some(line);
            return Ok(());
        }
        let new: Vec<String> = props
            .into_iter()
            .filter(|p| !sf.columns.contains(p))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        tracing::info!(stream = %msg.stream, columns = ?new, "New properties: adding columns to the CSV file.");
        self.widen_csv(&msg.stream, new)
    }

    fn widen_csv(&mut self, stream: &str, new: Vec<String>) -> anyhow::Result<()> {
        let (delim, quote, dir, log_path) = (
            self.delimiter,
            self.quote,
            self.dir.clone(),
            self.log_path.clone(),
        );
        let sf = self.streams.get_mut(stream).context("stream file")?;
        sf.drain()?;
        let path = dir.join(&sf.name);
        let mut columns = sf.columns.clone();
        columns.extend(new);
        let mut tmp = tempfile::Builder::new()
            .prefix(".ferry-tmp-")
            .tempfile_in(&dir)?;
        let mut w: Vec<u8> = Vec::with_capacity(1 << 16);
        let header = csv_line(delim, quote, &columns);
        let mut out_len = header.len() as u64;
        tmp.write_all(header.as_bytes())?;
        sf.file.seek(SeekFrom::Start(0))?;
        let mut r = csv::ReaderBuilder::new()
            .delimiter(delim)
            .quote(quote)
            .has_headers(true)
            .from_reader(std::io::BufReader::new(&sf.file));
        r.headers()?;
        // Old rows are copied byte for byte (so `""` stays distinct from an empty cell), with
        // empty cells appended; the CSV reader only finds where each record ends.
        let mut cur = r.position().byte();
        let mut raw = std::io::BufReader::new(File::open(&path)?);
        raw.seek(SeekFrom::Start(cur))?;
        let mut new_committed = None;
        let mut rec = csv::StringRecord::new();
        let mut bytes = Vec::new();
        loop {
            if new_committed.is_none() && cur >= sf.committed {
                new_committed = Some(out_len);
            }
            if !r.read_record(&mut rec)? {
                break;
            }
            let end = r.position().byte();
            bytes.resize(usize::try_from(end - cur)?, 0);
            raw.read_exact(&mut bytes)?;
            cur = end;
            let mut body = &bytes[..];
            while let [rest @ .., b'\n' | b'\r'] = body {
                body = rest;
            }
            w.extend_from_slice(body);
            for _ in rec.len()..columns.len() {
                w.push(delim);
            }
            w.push(b'\n');
            out_len += w.len() as u64;
            tmp.write_all(&w)?;
            w.clear();
        }
        drop(r);
        tmp.as_file().sync_all()?;
        // Before the rename: the committed length in the new layout, with the old layout's mark
        // beside it, so that recovery cuts the right tail whichever file a crash leaves.
        let mut log = read_log_at(&log_path)?;
        let old_mark = FileMark {
            len: sf.committed,
            header: sf.header.clone(),
            alt: None,
        };
        log.files.insert(
            sf.name.clone(),
            FileMark {
                len: new_committed.unwrap_or(out_len),
                header: Some(header.clone()),
                alt: Some(Box::new(old_mark)),
            },
        );
        write_log_at(&log_path, &log)?;
        tmp.persist(&path)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
        file.seek(SeekFrom::End(0))?;
        sf.file = file;
        sf.len = out_len;
        sf.committed = new_committed.unwrap_or(out_len);
        sf.columns = columns;
        sf.header = Some(header);
        Ok(())
    }

    /// Buffers one record.
    ///
    /// # Errors
    /// When the buffer cannot be written to the file.
    pub fn record(&mut self, msg: &RecordMessage) -> anyhow::Result<()> {
        let sf = self
            .streams
            .get_mut(&msg.stream)
            .ok_or_else(|| anyhow!("no SCHEMA seen for stream {:?}", msg.stream))?;
        match self.format {
            Format::Jsonl => {
                serde_json::to_writer(&mut sf.buf, &msg.record)?;
                sf.buf.push(b'\n');
            }
            Format::Csv => {
                let record = msg.record.to_map()?;
                let (delim, quote) = (self.delimiter, self.quote);
                for (i, c) in sf.columns.iter().enumerate() {
                    if i > 0 {
                        sf.buf.push(delim);
                    }
                    match record.get(c) {
                        None | Some(Value::Null) => {}
                        // Quoted empty text, so readers can tell it from null (an empty cell).
                        Some(Value::String(s)) if s.is_empty() => {
                            sf.buf.extend_from_slice(&[quote, quote])
                        }
                        Some(Value::String(s)) => {
                            push_field(&mut sf.buf, s.as_bytes(), delim, quote)
                        }
                        Some(Value::Number(n)) => sf.buf.extend_from_slice(n.as_str().as_bytes()),
                        Some(Value::Bool(b)) => {
                            sf.buf
                                .extend_from_slice(if *b { b"true" } else { b"false" })
                        }
                        Some(other) => push_field(
                            &mut sf.buf,
                            serde_json::to_string(other)?.as_bytes(),
                            delim,
                            quote,
                        ),
                    }
                }
                sf.buf.push(b'\n');
                if !sf.warned_extra && record.len() > sf.columns.len() {
                    if let Some(k) = record.keys().find(|k| !sf.columns.contains(k)) {
                        sf.warned_extra = true;
                        tracing::warn!(stream = %msg.stream, property = %k, "A record has a property its SCHEMA does not declare; CSV keeps only declared columns.");
                    }
                }
            }
        }
        if sf.pending() >= WRITE_BUFFER_BYTES {
            sf.drain()?;
        }
        Ok(())
    }

    /// Files are append-only: a new table version is simply appended.
    pub fn activate_version(&mut self, msg: &ActivateVersionMessage) {
        tracing::debug!(stream = %msg.stream, version = msg.version, "ACTIVATE_VERSION has no effect on an append-only file.");
    }

    /// Writes, fsyncs, and records committed lengths and the state in the commit log.
    ///
    /// # Errors
    /// Any I/O error; the previous commit then stands.
    pub fn commit(&mut self, state: Option<&Value>) -> anyhow::Result<()> {
        let mut changed = state.is_some();
        for sf in self.streams.values_mut() {
            sf.drain()?;
            if sf.len != sf.committed {
                sf.file.sync_data()?;
                sf.committed = sf.len;
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        let mut log = self.read_log()?;
        for sf in self.streams.values() {
            log.files.insert(
                sf.name.clone(),
                FileMark {
                    len: sf.committed,
                    header: sf.header.clone(),
                    alt: None,
                },
            );
        }
        if let Some(s) = state {
            let mine = log.states.entry(self.scope.clone()).or_default();
            mine.prev_state = mine.state.take();
            mine.state = Some(s.clone());
        }
        self.write_log(&log)
    }

    /// The state committed with the data, and the one before it.
    ///
    /// # Errors
    /// When the commit log is unreadable.
    pub fn recover(&self) -> anyhow::Result<Option<Recovered>> {
        let mut log = self.read_log()?;
        let mine = log.states.remove(&self.scope).unwrap_or_default();
        Ok(match (mine.prev_state, mine.state) {
            (Some(prev), Some(state)) => Some(Recovered { prev, state }),
            (None, Some(state)) => Some(Recovered {
                prev: crate::singer::state::empty(),
                state,
            }),
            _ => None,
        })
    }

    /// Drops the state kept in the commit log (file lengths stay).
    ///
    /// # Errors
    /// When the commit log cannot be written.
    pub fn forget_state(&mut self) -> anyhow::Result<()> {
        let mut log = self.read_log()?;
        if log.states.remove(&self.scope).is_none() {
            return Ok(());
        }
        self.write_log(&log)
    }

    /// Bytes appended for a stream in this run.
    pub fn bytes_written(&self, stream: &str) -> u64 {
        self.streams.get(stream).map_or(0, |s| s.bytes)
    }

    /// The folder files go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(props: &[&str]) -> SchemaMessage {
        let p: serde_json::Map<String, Value> = props
            .iter()
            .map(|p| ((*p).to_owned(), json!({"type": "string"})))
            .collect();
        SchemaMessage {
            stream: "s".into(),
            schema: json!({"properties": p}),
            key_properties: vec![],
            bookmark_properties: None,
            extra: serde_json::Map::new(),
        }
    }

    /// A crash in the middle of a CSV header rewrite, on either side of the rename: the next
    /// open cuts the file back to what was committed, in whichever layout it finds.
    #[test]
    fn interrupted_header_rewrite_is_repaired_either_way() {
        for renamed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.csv");
            let (old_h, new_h) = ("a\n".to_owned(), "a,b\n".to_owned());
            // Committed: one row. Uncommitted tail: one more row.
            let file = if renamed {
                "a,b\n1,\n2,\n"
            } else {
                "a\n1\n2\n"
            };
            std::fs::write(&path, file).unwrap();
            let old_mark = FileMark {
                len: (old_h.len() + 2) as u64,
                header: Some(old_h.clone()),
                alt: None,
            };
            let mut log = CommitLog::default();
            log.files.insert(
                "s.csv".into(),
                FileMark {
                    len: (new_h.len() + 3) as u64,
                    header: Some(new_h.clone()),
                    alt: Some(Box::new(old_mark)),
                },
            );
            write_log_at(&dir.path().join(".ferry-commit.json"), &log).unwrap();
            let mut t =
                FileTarget::new(Format::Csv, &json!({"destination_path": dir.path()}), None)
                    .unwrap();
            t.schema(&schema(&["a", "b"])).unwrap();
            t.commit(None).unwrap();
            // The uncommitted row 2 is gone; the committed row 1 is there, in the new layout.
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                "a,b\n1,\n",
                "renamed={renamed}"
            );
        }
    }
}
