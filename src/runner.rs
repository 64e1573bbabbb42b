//! The one runner: a source (built-in tap, JSON lines on stdin, or an external tap) feeds
//! chunks of messages through a bounded channel to a sink (built-in target, JSON lines on
//! stdout, or an external target). State is committed only after the data before it is.
//!
//! # The commit rule
//!
//! A STATE message is never written out when it arrives. It waits until the sink has made every
//! record before it durable (`Target::commit`), and only then is it written to the state file
//! (`ferry sync`) or stdout (`ferry target`). Commits are batched: at most every
//! `commit_rows` rows or `commit_interval` seconds while a STATE is waiting, and at the end.
//! If anything fails, nothing after the last commit is committed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::process::{singer_args, ChildConnector, ChildFiles};
use crate::progress::Progress;
use crate::schema::scan::FieldSpans;
use crate::schema::Validator;
use crate::singer::{codec, state, Catalog, Check, Envelope, Message, Record, StreamMap};
use crate::state_store::StateStore;
use crate::taps::Tap;
use crate::targets::Target;

/// Messages per chunk on the channel.
pub const CHUNK_ROWS: usize = 1000;
/// Chunks in flight between source and sink: bounds memory whatever the speed difference.
pub const CHANNEL_CAPACITY: usize = 16;

/// What travels on the channel.
pub type Chunk = Vec<Envelope>;

/// The sink stopped (it failed or finished); the source should stop too.
#[derive(Debug, thiserror::Error)]
#[error("the loading side stopped before the source finished")]
pub struct ConsumerGone;

/// Checks RECORDs against their stream's schema on the source's side of the channel, so that
/// validation can run on the source's thread while the sink's thread loads (two cores instead
/// of one): for the chunks [`Checker::share`] gives it. The sink checks whatever arrives
/// unchecked ([`Check::Pending`]) itself.
#[derive(Clone)]
struct Checker {
    validate: bool,
    /// Also note where each record's properties lie, for a target that reads them from the
    /// raw text (so it need not scan the text again).
    fields: bool,
    /// How many properties the last record had: the capacity for the next one's spans.
    fields_hint: usize,
    /// Whether records are checked here now, or left to the sink (see [`Checker::share`]).
    active: bool,
    streams: StreamMap<Arc<StreamCtx>>,
}

impl Checker {
    fn new(validate: bool, fields: bool) -> Checker {
        Checker {
            validate,
            fields,
            fields_hint: 16,
            active: true,
            streams: StreamMap::default(),
        }
    }

    /// Decides, before a chunk, which side checks its records, from how many chunks wait in
    /// the channel: a backlog means the sink is the slower side, so the source checks; an
    /// empty channel means the source is, so it leaves the checks to the sink. The split
    /// settles where both sides are equally busy (a reader that decodes and checks every
    /// record was the bottleneck of `ferry target parquet`, the loader thread waiting on it).
    fn share(&mut self, tx: &mpsc::Sender<Chunk>) {
        self.active = tx.max_capacity() - tx.capacity() >= CHANNEL_CAPACITY / 2;
    }

    /// Follows SCHEMA messages and checks RECORDs, in message order, as the sink would.
    fn check(&mut self, env: &mut Envelope) {
        match &env.msg {
            Message::Schema(m) => {
                let validator = if self.validate {
                    match Validator::compile(&m.schema) {
                        Ok(v) => Some(v),
                        // The sink reports an unusable schema, at its line; until then the
                        // stream's records are left to it.
                        Err(_) => {
                            self.streams.remove(&m.stream);
                            return;
                        }
                    }
                } else {
                    None
                };
                self.streams.insert(
                    m.stream.clone(),
                    Arc::new(StreamCtx {
                        validator,
                        keys: m.key_properties.clone(),
                    }),
                );
            }
            Message::Record(r) if self.active => {
                if let Some(ctx) = self.streams.get(&r.stream) {
                    let hint = self.fields.then_some(&mut self.fields_hint);
                    env.check = check_with(ctx, &r.record, hint);
                }
            }
            _ => {}
        }
    }
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

/// The producer end of the channel, batching messages into chunks.
#[derive(Debug)]
pub struct Emitter {
    tx: mpsc::Sender<Chunk>,
    buf: Chunk,
    checker: Option<Checker>,
}

impl Emitter {
    /// Wraps a channel sender.
    pub fn new(tx: mpsc::Sender<Chunk>) -> Emitter {
        Emitter {
            tx,
            buf: Vec::with_capacity(CHUNK_ROWS),
            checker: None,
        }
    }

    fn push(&mut self, msg: Message) -> bool {
        self.push_at(0, msg)
    }

    fn push_at(&mut self, line: u64, msg: Message) -> bool {
        let is_state = matches!(msg, Message::State(_));
        let mut env = Envelope {
            line,
            msg,
            check: Check::Pending,
        };
        if let Some(c) = &mut self.checker {
            if self.buf.is_empty() {
                c.share(&self.tx);
            }
            c.check(&mut env);
        }
        self.buf.push(env);
        is_state || self.buf.len() >= CHUNK_ROWS
    }

    /// Another emitter into the same channel (for a tap that reads streams in parallel). It
    /// knows the schemas this one has seen; a stream's SCHEMA must come from the emitter that
    /// sends its records or before the sibling is made (otherwise the sink checks them).
    pub fn sibling(&self) -> Emitter {
        Emitter {
            checker: self.checker.clone(),
            ..Emitter::new(self.tx.clone())
        }
    }

    /// Queues a message; a full chunk, or any STATE, is sent at once.
    ///
    /// # Errors
    /// [`ConsumerGone`] when the sink has stopped.
    pub async fn emit(&mut self, msg: Message) -> anyhow::Result<()> {
        if self.push(msg) {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends what is queued.
    ///
    /// # Errors
    /// [`ConsumerGone`] when the sink has stopped.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_ROWS));
            self.tx.send(chunk).await.map_err(|_| ConsumerGone)?;
        }
        Ok(())
    }

    /// [`Emitter::emit`] for code on a blocking thread.
    ///
    /// # Errors
    /// [`ConsumerGone`] when the sink has stopped.
    pub fn emit_blocking(&mut self, msg: Message) -> anyhow::Result<()> {
        if self.push(msg) {
            self.flush_blocking()?;
        }
        Ok(())
    }

    /// [`Emitter::flush`] for code on a blocking thread.
    ///
    /// # Errors
    /// [`ConsumerGone`] when the sink has stopped.
    pub fn flush_blocking(&mut self) -> anyhow::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_ROWS));
            self.tx.blocking_send(chunk).map_err(|_| ConsumerGone)?;
        }
        Ok(())
    }
}

/// Where messages come from.
pub enum Source {
    /// A built-in tap with its catalog and the state to start from.
    Builtin {
        /// The tap.
        tap: Tap,
        /// Streams to read (selected ones).
        catalog: Catalog,
        /// Bookmarks to start from.
        state: Value,
    },
    /// JSON lines from stdin or a file (`ferry target`).
    Lines(std::io::BufReader<Box<dyn std::io::Read + Send>>),
    /// An external Singer tap.
    Command(ExternalTap),
}

/// An external tap and what to hand it.
#[derive(Debug, Clone)]
pub struct ExternalTap {
    /// The executable.
    pub program: String,
    /// Extra arguments.
    pub args: Vec<String>,
    /// Its config (written to a private temp file).
    pub config: Value,
    /// Its catalog, if any.
    pub catalog: Option<Catalog>,
    /// `--catalog` or `--properties`.
    pub catalog_flag: String,
    /// The state to start from, if any.
    pub state: Option<Value>,
}

/// Streams a source could not finish while others went on; the run is then partial.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SourceOutcome {
    /// `(stream, error)` for each stream that failed.
    pub failed_streams: Vec<(String, String)>,
}

impl Source {
    async fn run(self, mut emitter: Emitter) -> anyhow::Result<SourceOutcome> {
        match self {
            Source::Builtin {
                tap,
                catalog,
                state,
            } => tap.sync(catalog, state, emitter).await,
            Source::Lines(reader) => {
                let tx = emitter.tx.clone();
                let mut checker = emitter.checker.take();
                drop(emitter);
                tokio::task::spawn_blocking(move || {
                    codec::read_lines(reader, CHUNK_ROWS, |mut c| {
                        if let Some(checker) = &mut checker {
                            checker.share(&tx);
                            c.iter_mut().for_each(|env| checker.check(env));
                        }
                        tx.blocking_send(c)
                            .map_err(|_| anyhow::Error::new(ConsumerGone))
                    })
                })
                .await
                .context("the input reader thread failed")??;
                Ok(SourceOutcome::default())
            }
            Source::Command(ext) => {
                let files = ChildFiles::new()?;
                let mut args = singer_args(&ext.args, &files, &ext.config)?;
                if let Some(cat) = &ext.catalog {
                    args.push(ext.catalog_flag.clone());
                    args.push(
                        files
                            .write_json("catalog.json", &cat.to_value())?
                            .display()
                            .to_string(),
                    );
                }
                if let Some(st) = ext.state.as_ref().filter(|s| state::rejection(s).is_none()) {
                    args.push("--state".into());
                    args.push(files.write_json("state.json", st)?.display().to_string());
                }
                let mut child = ChildConnector::spawn(&ext.program, &args, files, false)?;
                let stdout = child.child.stdout.take().context("child stdout")?;
                let mut reader = tokio::io::BufReader::with_capacity(1 << 16, stdout);
                let mut buf = Vec::with_capacity(4096);
                let mut line = 0u64;
                loop {
                    buf.clear();
                    // About to wait on the tap: pass on what is queued first.
                    if reader.buffer().is_empty() {
                        emitter.flush().await?;
                    }
                    let n = match reader.read_until(b'\n', &mut buf).await {
                        Ok(n) => n,
                        Err(e) => {
                            return Err(child.died(&format!("output could not be read: {e}")).await)
                        }
                    };
                    if n == 0 {
                        break;
                    }
                    line += 1;
                    let text = buf.trim_ascii();
                    if text.is_empty() {
                        continue;
                    }
                    let msg = match codec::decode(text) {
                        Ok(m) => m,
                        Err(kind) => {
                            let label = child.label().to_owned();
                            drop(child);
                            return Err(anyhow::Error::new(codec::DecodeError { line, kind }))
                                .with_context(|| format!("output of the tap {label}"));
                        }
                    };
                    if emitter.push_at(line, msg) {
                        emitter.flush().await?;
                    }
                }
                emitter.flush().await?;
                child.finish().await?;
                Ok(SourceOutcome::default())
            }
        }
    }
}

/// Where messages go.
pub enum Sink {
    /// A built-in target.
    Load(Target),
    /// JSON lines on stdout (`ferry tap`).
    Stdout,
    /// An external Singer target.
    Command(ExternalTarget),
}

/// An external target and its config.
#[derive(Debug, Clone)]
pub struct ExternalTarget {
    /// The executable.
    pub program: String,
    /// Extra arguments.
    pub args: Vec<String>,
    /// Its config.
    pub config: Value,
}

/// Where committed state goes.
pub enum StateOut {
    /// The pipeline's state file; each emitted state is folded into the last committed one.
    File {
        /// The locked store.
        store: StateStore,
        /// The last committed (or starting) state.
        base: Value,
    },
    /// One STATE value per line on stdout, as a Singer target writes it.
    Stdout,
    /// Nowhere (STATE flows on as data, e.g. `ferry tap`).
    Discard,
}

impl StateOut {
    fn resolve(&self, emitted: &Value) -> Value {
        match self {
            StateOut::File { base, .. } => state::merge(base, emitted),
            _ => emitted.clone(),
        }
    }

    fn write(&mut self, value: &Value) -> anyhow::Result<()> {
        match self {
            StateOut::File { store, base } => {
                store.write(value)?;
                *base = value.clone();
            }
            StateOut::Stdout => {
                let mut out = std::io::stdout().lock();
                serde_json::to_writer(&mut out, value)?;
                out.write_all(b"\n")?;
                out.flush()?;
            }
            StateOut::Discard => {}
        }
        Ok(())
    }

    /// The last committed state, for the report.
    pub fn committed(&self) -> Option<&Value> {
        match self {
            StateOut::File { base, .. } => Some(base),
            _ => None,
        }
    }
}

/// What to do with a record that does not match its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// Stop the run; nothing after the last commit is committed.
    #[default]
    Fail,
    /// Write the record and the reason to a rejects file per stream and go on.
    Quarantine,
}

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Validate records against their schema (built-in targets only; external ones validate
    /// for themselves).
    pub validate: bool,
    /// What to do with invalid records.
    pub on_invalid: OnInvalid,
    /// Commit at least this often (rows) while a STATE is waiting.
    pub commit_rows: u64,
    /// Commit at least this often (time) while a STATE is waiting.
    pub commit_interval: Duration,
    /// Where quarantined records go.
    pub rejects_dir: PathBuf,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            validate: true,
            on_invalid: OnInvalid::Fail,
            // Each commit pauses the pipeline while the database finishes the batch in flight
            // (measured: 100k-row commits made a 1M-row Postgres load 1.69x the floor instead
            // of 1.46x), so rows only bound a very fast load; time is the usual trigger.
            commit_rows: 1_000_000,
            commit_interval: Duration::from_secs(5),
            rejects_dir: PathBuf::from("rejects"),
        }
    }
}

/// Per-stream figures of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStats {
    /// The stream.
    pub stream: String,
    /// Records loaded (or passed on).
    pub rows: u64,
    /// Records set aside by `--on-invalid quarantine`.
    pub rejects: u64,
    /// Bytes of the records as JSON (what crossed the pipe or was written).
    pub bytes: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunStats {
    /// Per stream, in order of first appearance.
    pub streams: Vec<StreamStats>,
    /// States committed.
    pub state_commits: u64,
    /// Streams the source could not finish.
    pub failed_streams: Vec<(String, String)>,
    /// Wall time.
    pub duration_secs: f64,
}

impl RunStats {
    fn stream(&mut self, index: &mut HashMap<String, usize>, name: &str) -> usize {
        // Called for every record: a few streams are found faster by comparing names.
        if self.streams.len() <= 4 {
            if let Some(i) = self.streams.iter().position(|s| s.stream == name) {
                return i;
            }
        } else if let Some(i) = index.get(name) {
            return *i;
        }
        self.streams.push(StreamStats {
            stream: name.to_owned(),
            ..Default::default()
        });
        index.insert(name.to_owned(), self.streams.len() - 1);
        self.streams.len() - 1
    }

    /// Total records.
    pub fn rows(&self) -> u64 {
        self.streams.iter().map(|s| s.rows).sum()
    }
}

/// Runs a source into a sink, committing state through `state_out`.
///
/// # Errors
/// The first failure of either side; the other side is stopped at once. Nothing after the last
/// commit is committed.
pub async fn run(
    source: Source,
    sink: Sink,
    state_out: StateOut,
    opts: RunOptions,
) -> anyhow::Result<(RunStats, StateOut)> {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    // The source's verdict: the sink makes its final commit only if the source succeeded
    // (a closed channel alone cannot tell a finished source from a failed one).
    let (verdict_tx, verdict_rx) = oneshot::channel::<bool>();
    let mut emitter = Emitter::new(tx);
    if let Sink::Load(target) = &sink {
        emitter.checker = Some(Checker::new(opts.validate, target.reads_fields()));
    }
    let src = async move {
        let r = source.run(emitter).await;
        let _ = verdict_tx.send(r.is_ok());
        r
    };
    let dst = sink.consume(rx, verdict_rx, state_out, opts);
    tokio::pin!(src);
    tokio::pin!(dst);
    let (outcome, (mut stats, state_out)) = tokio::select! {
        d = &mut dst => match d {
            Ok(d) => (src.await?, d),
            // The sink stopped because the source failed: the source's error is the real one.
            Err(e) if e.is::<SourceFailed>() => return Err(src.await.err().unwrap_or(e)),
            // The sink failed: dropping the source stops it (and kills a child tap).
            Err(e) => return Err(e),
        },
        s = &mut src => match s {
            Ok(outcome) => (outcome, dst.await?),
            Err(e) if e.is::<ConsumerGone>() => {
                // The sink stopped first; its error is the real one.
                dst.await?;
                return Err(e);
            }
            // Dropping the sink here means nothing after its last commit is committed.
            Err(e) => return Err(e),
        }
    };
    stats.failed_streams = outcome.failed_streams;
    stats.duration_secs = started.elapsed().as_secs_f64();
    Ok((stats, state_out))
}

/// The source failed; the sink stops without a final commit.
#[derive(Debug, thiserror::Error)]
#[error("the source failed")]
pub struct SourceFailed;

/// Waits for the source's verdict at the end of the channel.
async fn source_succeeded(verdict: oneshot::Receiver<bool>) -> anyhow::Result<()> {
    if verdict.await.unwrap_or(false) {
        Ok(())
    } else {
        Err(anyhow::Error::new(SourceFailed))
    }
}

/// Counts one more row for stream index `i` in a chunk's tally.
fn bump(counts: &mut Vec<(usize, u64)>, i: usize) {
    match counts.iter_mut().find(|(s, _)| *s == i) {
        Some((_, n)) => *n += 1,
        None => counts.push((i, 1)),
    }
}

fn at(line: u64) -> String {
    if line > 0 {
        format!("line {line}: ")
    } else {
        String::new()
    }
}

struct StreamCtx {
    validator: Option<Validator>,
    keys: Vec<String>,
}

fn key_desc(keys: &[String], record: &Record) -> String {
    if keys.is_empty() {
        return String::new();
    }
    let Ok(record) = record.to_map() else {
        return String::new();
    };
    let parts: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{k}={}",
                record
                    .get(k)
                    .map_or_else(|| "(missing)".into(), Value::to_string)
            )
        })
        .collect();
    format!(" (key {})", parts.join(", "))
}

fn check_keys(keys: &[String], record: &Map<String, Value>) -> Option<String> {
    for k in keys {
        match record.get(k) {
            None => return Some(format!("key property {k:?} is missing")),
            Some(Value::Null) => return Some(format!("key property {k:?} is null")),
            _ => {}
        }
    }
    None
}

/// A record's check against its stream's schema and keys. With `fields` (a capacity hint,
/// updated), a valid raw record also gets where its properties lie.
fn check_with(ctx: &StreamCtx, record: &Record, fields: Option<&mut usize>) -> Check {
    match (record, &ctx.validator, fields) {
        (Record::Raw(raw), Some(v), Some(hint)) => {
            let mut spans = Vec::with_capacity(*hint);
            match v.validate_raw_fields(raw, &ctx.keys, &mut spans) {
                Ok(()) => {
                    *hint = spans.len();
                    Check::Valid(FieldSpans::found_in(raw.get(), spans))
                }
                Err(e) => Check::Invalid(e.to_string()),
            }
        }
        _ => match check_record(ctx, record) {
            None => Check::Valid(FieldSpans::default()),
            Some(problem) => Check::Invalid(problem),
        },
    }
}

fn check_record(ctx: &StreamCtx, record: &Record) -> Option<String> {
    match (record, &ctx.validator) {
        (Record::Raw(raw), Some(v)) => v.validate_raw(raw, &ctx.keys).err().map(|e| e.to_string()),
        (Record::Map(m), Some(v)) => {
            check_keys(&ctx.keys, m).or_else(|| v.validate_record(m).err().map(|e| e.to_string()))
        }
        (_, None) => match record.to_map() {
            Ok(m) => check_keys(&ctx.keys, &m),
            Err(e) => Some(format!("not a JSON object: {e}")),
        },
    }
}

/// Quarantined records, one JSON-lines file per stream.
struct Rejects {
    dir: PathBuf,
    files: HashMap<String, BufWriter<File>>,
}

impl Rejects {
    fn write(
        &mut self,
        stream: &str,
        line: u64,
        reason: &str,
        record: &Record,
    ) -> anyhow::Result<()> {
        if !self.files.contains_key(stream) {
            std::fs::create_dir_all(&self.dir)
                .with_context(|| format!("cannot create {}", self.dir.display()))?;
            let path = self.dir.join(format!(
                "{}.rejects.jsonl",
                crate::targets::file::file_stem(stream)
            ));
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            self.files.insert(stream.to_owned(), BufWriter::new(f));
        }
        let w = self.files.get_mut(stream).context("rejects file")?;
        let mut entry = json!({"stream": stream, "reason": reason, "record": record});
        if line > 0 {
            entry["line"] = json!(line);
        }
        serde_json::to_writer(&mut *w, &entry)?;
        w.write_all(b"\n")?;
        Ok(())
    }

    fn sync(&mut self) -> anyhow::Result<()> {
        for w in self.files.values_mut() {
            w.flush()?;
            w.get_ref().sync_data()?;
        }
        Ok(())
    }
}

impl Sink {
    async fn consume(
        self,
        rx: mpsc::Receiver<Chunk>,
        verdict: oneshot::Receiver<bool>,
        state_out: StateOut,
        opts: RunOptions,
    ) -> anyhow::Result<(RunStats, StateOut)> {
        match self {
            Sink::Load(target) => consume_load(target, rx, verdict, state_out, opts).await,
            Sink::Stdout => {
                let stats = tokio::task::spawn_blocking(move || consume_stdout(rx))
                    .await
                    .context("the output writer thread failed")??;
                source_succeeded(verdict).await?;
                Ok((stats, state_out))
            }
            Sink::Command(ext) => consume_command(ext, rx, verdict, state_out).await,
        }
    }
}

async fn consume_load(
    mut target: Target,
    mut rx: mpsc::Receiver<Chunk>,
    verdict: oneshot::Receiver<bool>,
    mut state_out: StateOut,
    opts: RunOptions,
) -> anyhow::Result<(RunStats, StateOut)> {
    let mut streams: StreamMap<StreamCtx> = StreamMap::default();
    let mut stats = RunStats::default();
    let mut index = HashMap::new();
    let mut progress = Progress::new();
    let mut rejects = Rejects {
        dir: opts.rejects_dir.clone(),
        files: HashMap::new(),
    };
    target.set_quarantine(opts.on_invalid == OnInvalid::Quarantine);
    let reads_fields = target.reads_fields();
    let mut fields_hint = 16;
    let mut pending: Option<Value> = None;
    let mut rows_since_commit = 0u64;
    let mut last_commit = Instant::now();
    let mut chunk_counts: Vec<(usize, u64)> = Vec::new();

    while let Some(chunk) = rx.recv().await {
        chunk_counts.clear();
        for Envelope { line, msg, check } in chunk {
            match msg {
                Message::Schema(m) => {
                    let validator = if opts.validate {
                        Some(Validator::compile(&m.schema).map_err(|e| {
                            anyhow!("{}stream {:?}: the SCHEMA message is not a usable JSON Schema: {e}", at(line), m.stream)
                        })?)
                    } else {
                        None
                    };
                    target.schema(&m).await.with_context(|| {
                        format!("{}stream {:?}: applying its SCHEMA", at(line), m.stream)
                    })?;
                    streams.insert(
                        m.stream.clone(),
                        StreamCtx {
                            validator,
                            keys: m.key_properties.clone(),
                        },
                    );
                    stats.stream(&mut index, &m.stream);
                }
                Message::Record(r) => {
                    let Some(ctx) = streams.get(&r.stream) else {
                        bail!(
                            "{}RECORD for stream {:?} arrived before any SCHEMA for it; a tap must send the stream's SCHEMA message first",
                            at(line),
                            r.stream
                        );
                    };
                    let i = stats.stream(&mut index, &r.stream);
                    let check = match check {
                        Check::Pending => {
                            check_with(ctx, &r.record, reads_fields.then_some(&mut fields_hint))
                        }
                        done => done,
                    };
                    let (problem, fields) = match check {
                        Check::Valid(fields) => (None, fields),
                        Check::Invalid(problem) => (Some(problem), FieldSpans::default()),
                        Check::Pending => (None, FieldSpans::default()),
                    };
                    if let Some(problem) = problem {
                        match opts.on_invalid {
                            OnInvalid::Fail => bail!(
                                "{}stream {:?}{}: record does not match its schema: {problem}; fix the source data or the schema, \
                                 or run with --on-invalid quarantine to set such records aside",
                                at(line),
                                r.stream,
                                key_desc(&ctx.keys, &r.record)
                            ),
                            OnInvalid::Quarantine => {
                                rejects.write(&r.stream, line, &problem, &r.record)?;
                                stats.streams[i].rejects += 1;
                                continue;
                            }
                        }
                    }
                    stats.streams[i].rows += 1;
                    bump(&mut chunk_counts, i);
                    rows_since_commit += 1;
                    let stream = r.stream.clone();
                    target.record(r, &fields).await.with_context(|| {
                        format!("{}stream {stream:?}: loading a record", at(line))
                    })?;
                }
                Message::ActivateVersion(a) => {
                    target.activate_version(&a).await.with_context(|| {
                        format!(
                            "{}stream {:?}: ACTIVATE_VERSION {}",
                            at(line),
                            a.stream,
                            a.version
                        )
                    })?;
                }
                Message::State(s) => match state::rejection(&s.value) {
                    Some(why) => tracing::warn!(
                        line,
                        "Ignoring a STATE message because {why}; the last good state is kept."
                    ),
                    None => {
                        pending = Some(s.value);
                        // Commit only here, right after a STATE: the target then holds exactly
                        // the records before it, so data and state stay in step.
                        if rows_since_commit >= opts.commit_rows
                            || last_commit.elapsed() >= opts.commit_interval
                        {
                            commit(
                                &mut target,
                                &mut rejects,
                                &mut pending,
                                &mut state_out,
                                &mut stats,
                            )
                            .await?;
                            rows_since_commit = 0;
                            last_commit = Instant::now();
                        }
                    }
                },
            }
        }
        for (i, n) in &chunk_counts {
            progress.add(&stats.streams[*i].stream, *n);
        }
    }
    source_succeeded(verdict).await?;
    commit(
        &mut target,
        &mut rejects,
        &mut pending,
        &mut state_out,
        &mut stats,
    )
    .await?;
    for s in &mut stats.streams {
        s.bytes = target.bytes_written(&s.stream);
    }
    progress.finish();
    Ok((stats, state_out))
}

async fn commit(
    target: &mut Target,
    rejects: &mut Rejects,
    pending: &mut Option<Value>,
    state_out: &mut StateOut,
    stats: &mut RunStats,
) -> anyhow::Result<()> {
    let value = pending.take().map(|v| state_out.resolve(&v));
    rejects.sync()?;
    target
        .commit(value.as_ref())
        .await
        .context("committing loaded data")?;
    if let Some(v) = value {
        state_out.write(&v)?;
        stats.state_commits += 1;
        tracing::debug!("State committed.");
    }
    Ok(())
}

fn consume_stdout(mut rx: mpsc::Receiver<Chunk>) -> anyhow::Result<RunStats> {
    let mut stats = RunStats::default();
    let mut index = HashMap::new();
    let mut progress = Progress::new();
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut counts: Vec<(usize, u64)> = Vec::new();
    while let Some(chunk) = rx.blocking_recv() {
        counts.clear();
        for env in &chunk {
            if let Message::Record(r) = &env.msg {
                let i = stats.stream(&mut index, &r.stream);
                stats.streams[i].rows += 1;
                bump(&mut counts, i);
            } else if let Message::Schema(s) = &env.msg {
                stats.stream(&mut index, &s.stream);
            }
            codec::write_message(&mut out, &env.msg).context("writing to stdout")?;
        }
        // Flush per chunk so a downstream target sees STATE promptly.
        out.flush().context("writing to stdout")?;
        for (i, n) in &counts {
            progress.add(&stats.streams[*i].stream, *n);
        }
    }
    out.flush().context("writing to stdout")?;
    progress.finish();
    Ok(stats)
}

async fn consume_command(
    ext: ExternalTarget,
    mut rx: mpsc::Receiver<Chunk>,
    verdict: oneshot::Receiver<bool>,
    mut state_out: StateOut,
) -> anyhow::Result<(RunStats, StateOut)> {
    let files = ChildFiles::new()?;
    let args = singer_args(&ext.args, &files, &ext.config)?;
    let mut child = ChildConnector::spawn(&ext.program, &args, files, true)?;
    let stdin = child.child.stdin.take().context("child stdin")?;
    let stdout = child.child.stdout.take().context("child stdout")?;
    let label = child.label().to_owned();
    // The target's stdout carries the states it has committed; they go to the state file.
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut commits = 0u64;
        while let Some(line) = lines.next_line().await? {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(v) => match state::rejection(&v) {
                    Some(why) => {
                        tracing::warn!(connector = %label, "Ignoring a state the target emitted because {why}.")
                    }
                    None => {
                        let merged = state_out.resolve(&v);
                        state_out.write(&merged)?;
                        commits += 1;
                    }
                },
                Err(_) => {
                    tracing::warn!(connector = %label, "The target wrote a line on stdout that is not a JSON state; ignored.")
                }
            }
        }
        anyhow::Ok((state_out, commits))
    });
    let mut stats = RunStats::default();
    let mut index = HashMap::new();
    let mut progress = Progress::new();
    let mut w = tokio::io::BufWriter::with_capacity(1 << 16, stdin);
    let mut buf = Vec::with_capacity(1 << 16);
    let mut counts: Vec<(usize, u64)> = Vec::new();
    loop {
        // Watch the child while waiting for input: a target that dies must stop the run even
        // when the tap is quiet.
        let chunk = tokio::select! {
            c = rx.recv() => c,
            _ = child.child.wait() => {
                return Err(child.died("exited before its input ended").await);
            }
        };
        let Some(chunk) = chunk else { break };
        buf.clear();
        counts.clear();
        for env in &chunk {
            let before = buf.len();
            codec::write_message(&mut buf, &env.msg)?;
            if let Message::Record(r) = &env.msg {
                let i = stats.stream(&mut index, &r.stream);
                stats.streams[i].rows += 1;
                stats.streams[i].bytes += (buf.len() - before) as u64;
                bump(&mut counts, i);
            }
        }
        for (i, n) in &counts {
            progress.add(&stats.streams[*i].stream, *n);
        }
        if let Err(e) = w.write_all(&buf).await {
            return Err(child
                .died(&format!("stopped reading its input ({e})"))
                .await);
        }
    }
    // A failed source must not let the target commit a partial batch: stop it unclosed.
    source_succeeded(verdict).await?;
    if let Err(e) = w.shutdown().await {
        return Err(child
            .died(&format!("stopped reading its input ({e})"))
            .await);
    }
    drop(w);
    let (state_out, commits) = reader
        .await
        .context("the target's output reader failed")??;
    child.finish().await?;
    stats.state_commits = commits;
    progress.finish();
    Ok((stats, state_out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(line: &str) -> Envelope {
        Envelope {
            line: 1,
            msg: codec::decode(line.as_bytes()).unwrap(),
            check: Check::Pending,
        }
    }

    #[test]
    fn checks_move_to_the_source_only_when_the_sink_falls_behind() {
        let (tx, mut rx) = mpsc::channel::<Chunk>(CHANNEL_CAPACITY);
        let mut c = Checker::new(true, true);
        c.check(&mut env(
            r#"{"type":"SCHEMA","stream":"s","schema":{"properties":{"id":{"type":"integer"}}}}"#,
        ));
        let checked = |c: &mut Checker| {
            c.share(&tx);
            let mut e = env(r#"{"type":"RECORD","stream":"s","record":{"id":1}}"#);
            c.check(&mut e);
            e.check != Check::Pending
        };
        assert!(!checked(&mut c), "an idle sink checks the records itself");
        for _ in 0..CHANNEL_CAPACITY / 2 {
            tx.try_send(Vec::new()).unwrap();
        }
        assert!(checked(&mut c), "a backlog: the source checks");
        while rx.try_recv().is_ok() {}
        assert!(!checked(&mut c));
    }

    #[test]
    fn checker_follows_schemas_and_leaves_unknown_streams_to_the_sink() {
        let mut c = Checker::new(true, true);
        let mut unknown = env(r#"{"type":"RECORD","stream":"s","record":{"id":1}}"#);
        c.check(&mut unknown);
        assert_eq!(
            unknown.check,
            Check::Pending,
            "no SCHEMA seen: the sink decides"
        );

        c.check(&mut env(
            r#"{"type":"SCHEMA","stream":"s","key_properties":["id"],"schema":{"properties":{"id":{"type":"integer"}}}}"#,
        ));
        let mut good = env(r#"{"type":"RECORD","stream":"s","record":{"id":1}}"#);
        c.check(&mut good);
        let (Check::Valid(fields), Message::Record(r)) = (&good.check, &good.msg) else {
            panic!("{:?}", good.check)
        };
        let Record::Raw(raw) = &r.record else {
            panic!("a decoded record is raw text")
        };
        assert!(!fields.is_empty());
        let mut seen = Vec::new();
        crate::schema::scan::fields_with(raw.get(), Some(fields), |k, v| {
            seen.push((k.into_owned(), v.text.to_owned()));
        });
        assert_eq!(seen, [("id".to_owned(), "1".to_owned())]);
        let mut bad = env(r#"{"type":"RECORD","stream":"s","record":{"id":"x"}}"#);
        c.check(&mut bad);
        assert!(
            matches!(&bad.check, Check::Invalid(p) if p.contains("id")),
            "{:?}",
            bad.check
        );
        let mut no_key = env(r#"{"type":"RECORD","stream":"s","record":{}}"#);
        c.check(&mut no_key);
        assert!(
            matches!(&no_key.check, Check::Invalid(p) if p.contains("id")),
            "{:?}",
            no_key.check
        );

        // A later SCHEMA replaces the earlier one, as it does for the sink.
        c.check(&mut env(
            r#"{"type":"SCHEMA","stream":"s","key_properties":["id"],"schema":{"properties":{"id":{"type":"string"}}}}"#,
        ));
        let mut now_good = env(r#"{"type":"RECORD","stream":"s","record":{"id":"x"}}"#);
        c.check(&mut now_good);
        assert!(matches!(&now_good.check, Check::Valid(f) if !f.is_empty()));

        // Without validation only the key properties are checked.
        let mut keys_only = Checker::new(false, true);
        keys_only.check(&mut env(
            r#"{"type":"SCHEMA","stream":"s","key_properties":["id"],"schema":{"properties":{"id":{"type":"integer"}}}}"#,
        ));
        let mut wrong_type = env(r#"{"type":"RECORD","stream":"s","record":{"id":"x"}}"#);
        keys_only.check(&mut wrong_type);
        assert_eq!(wrong_type.check, Check::Valid(FieldSpans::default()));
    }
}
