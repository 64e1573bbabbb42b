//! The Parquet writer: Arrow batches per stream (and day partition) into files under hidden
//! temporary names, rolled by size; the manifest and the renames at commit.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, DecimalType, Float64Type, Int64Type, SchemaRef,
    TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as PqCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{Compression, Nested, ParquetTargetConfig};
use crate::schema::scan::FieldSpans;
use crate::singer::{ActivateVersionMessage, Record, RecordMessage, SchemaMessage, StreamMap};
use crate::targets::arrow::{parse_date, parse_timestamp, BatchBuilder, Cell};
use crate::targets::names::table_name;
use crate::targets::table::{self, record_key_text, PlanOptions, Source, Versions};
use crate::targets::Recovered;

/// The dictionary size at which a column chunk falls back to plain encoding.
const DICTIONARY_LIMIT: usize = 64 << 10;

/// The manifest's file name, at the root of the base folder.
pub const MANIFEST: &str = "_ferry_manifest.json";
/// Per-run manifests, under the base folder.
const RUNS: &str = "_ferry_runs";
/// The partition of records whose partition property is null.
const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// One committed file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// The stream.
    pub stream: String,
    /// Path relative to the base folder.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// Index into the manifest's `schemas`.
    pub schema: usize,
    /// The table version of its records, if they carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// The partition (`<prop>=<day>`), if partitioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// The replication key (the stream's first bookmark property).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_key: Option<String>,
    /// Its smallest value in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Value>,
    /// Its largest value in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Value>,
    /// The run that wrote it.
    pub run: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StateEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prev_state: Option<Value>,
}

/// The table of contents of the lake.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// Committed files, in commit order.
    pub files: Vec<FileEntry>,
    /// Arrow schemas the files use (`[{name, type, nullable}]`), referenced by index.
    pub schemas: Vec<Value>,
    /// Pipeline states committed with the files, per pipeline.
    #[serde(default)]
    states: BTreeMap<String, StateEntry>,
    /// Files dropped from the manifest (replaced versions) still to delete from disk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    garbage: Vec<String>,
}

/// Rows (and bytes of records) buffered per part before they go to the encoder.
const SLICE_ROWS: u64 = 16_384;
const SLICE_BYTES: usize = 8 << 20;

/// A Parquet file being encoded on a thread of its own, so encoding and compression overlap with
/// parsing the next records.
struct Encoder {
    tx: std::sync::mpsc::SyncSender<RecordBatch>,
    done: std::thread::JoinHandle<anyhow::Result<File>>,
}

impl Encoder {
    fn start(f: File, schema: SchemaRef, props: WriterProperties) -> anyhow::Result<Encoder> {
        let mut writer = ArrowWriter::try_new(f, schema, Some(props))?;
        // Two batches in flight at most: memory stays bounded.
        let (tx, rx) = std::sync::mpsc::sync_channel::<RecordBatch>(2);
        let done = std::thread::Builder::new()
            .name("ferry-parquet".into())
            .spawn(move || {
                for batch in rx {
                    writer.write(&batch)?;
                }
                let mut f = writer.into_inner()?;
                std::io::Write::flush(&mut f)?;
                f.sync_all()?;
                Ok(f)
            })?;
        Ok(Encoder { tx, done })
    }

    /// Hands a batch over; an error means the encoder failed (reported by `finish`).
    fn write(&self, batch: RecordBatch) -> bool {
        self.tx.send(batch).is_ok()
    }

    /// Closes the file: waits for the encoder and returns the synced file.
    fn finish(self) -> anyhow::Result<File> {
        drop(self.tx);
        self.done
            .join()
            .map_err(|_| anyhow!("the Parquet encoder thread panicked"))?
    }
}

/// An open file of a stream partition.
struct OpenFile {
    writer: Encoder,
    /// Bytes of record JSON written into it: what `file_max_bytes` compares.
    input_bytes: u64,
    tmp: PathBuf,
    path: String,
    rows: u64,
    min: Option<Value>,
    max: Option<Value>,
}

/// A stream's buffer and open file for one partition.
struct Part {
    batch: BatchBuilder,
    file: Option<OpenFile>,
}

struct PqStream {
    dir: String,
    cols: Vec<table::PlannedCol>,
    keys: Vec<String>,
    schema_idx: usize,
    partition: Option<(String, String)>,
    rep_key: Option<(usize, String)>,
    parts: BTreeMap<Option<String>, Part>,
    version: Option<i64>,
    versions: Versions,
    bytes: u64,
}

/// A closed file waiting for the commit.
struct Pending {
    entry: FileEntry,
    tmp: PathBuf,
}

/// The `parquet` target.
pub struct ParquetTarget {
    cfg: ParquetTargetConfig,
    base: PathBuf,
    _lock: File,
    manifest: Manifest,
    streams: StreamMap<PqStream>,
    pending: Vec<Pending>,
    run: String,
    seq: u64,
    run_files: Vec<FileEntry>,
    scope: String,
    received_at: i64,
}

impl std::fmt::Debug for ParquetTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetTarget")
            .field("base", &self.base)
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

fn schema_json(schema: &SchemaRef) -> Value {
    Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()}))
            .collect(),
    )
}

fn write_json_atomic(path: &Path, v: &impl Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec_pretty(v)?;
    text.push(b'\n');
    crate::state_store::write_atomic(path, &text)
        .with_context(|| format!("writing {}", path.display()))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The smallest and largest value of a column, as JSON.
fn min_max(arr: &dyn Array) -> Option<(Value, Value)> {
    use arrow::compute::{max, max_string, min, min_string};
    let micros = |v: i64| {
        chrono::DateTime::from_timestamp_micros(v)
            .map(|d| Value::String(d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)))
    };
    match arr.data_type() {
        DataType::Int64 => {
            let a = arr.as_primitive::<Int64Type>();
            Some((json!(min(a)?), json!(max(a)?)))
        }
        DataType::Float64 => {
            let a = arr.as_primitive::<Float64Type>();
            Some((json!(min(a)?), json!(max(a)?)))
        }
        DataType::Decimal128(_, s) => {
            let a = arr.as_primitive::<Decimal128Type>();
            let fmt = |v: i128| Value::String(Decimal128Type::format_decimal(v, 38, *s));
            Some((fmt(min(a)?), fmt(max(a)?)))
        }
        DataType::Timestamp(..) => {
            let a = arr.as_primitive::<TimestampMicrosecondType>();
            Some((micros(min(a)?)?, micros(max(a)?)?))
        }
        DataType::Date32 => {
            let a = arr.as_primitive::<Date32Type>();
            let day = |d: i32| {
                chrono::NaiveDate::from_num_days_from_ce_opt(d + 719_163)
                    .map(|d| Value::String(d.to_string()))
            };
            Some((day(min(a)?)?, day(max(a)?)?))
        }
        DataType::Utf8 => {
            let a = arr.as_string::<i32>();
            Some((json!(min_string(a)?), json!(max_string(a)?)))
        }
        _ => None,
    }
}

fn merge_min_max(
    cur: (Option<Value>, Option<Value>),
    new: (Value, Value),
    cmp: impl Fn(&Value, &Value) -> std::cmp::Ordering,
) -> (Option<Value>, Option<Value>) {
    let lo = match cur.0 {
        Some(a) if cmp(&a, &new.0).is_le() => a,
        _ => new.0,
    };
    let hi = match cur.1 {
        Some(a) if cmp(&a, &new.1).is_ge() => a,
        _ => new.1,
    };
    (Some(lo), Some(hi))
}

fn cmp_values(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(std::cmp::Ordering::Equal),
        (Value::String(x), Value::String(y)) => {
            // Decimals as text compare numerically.
            match (x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(p), Ok(q)) => p.partial_cmp(&q).unwrap_or(std::cmp::Ordering::Equal),
                _ => x.cmp(y),
            }
        }
        _ => std::cmp::Ordering::Equal,
    }
}

impl ParquetTarget {
    /// Opens the base folder: takes its lock, reads the manifest, and finishes or discards what
    /// a crashed run left.
    ///
    /// # Errors
    /// A bad config, another writer holding the lock, an unreadable manifest.
    pub fn new(config: &Value, scope: Option<&str>) -> anyhow::Result<ParquetTarget> {
        let cfg = ParquetTargetConfig::from_value(config)?;
        let base = PathBuf::from(&cfg.path);
        fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let lock_path = base.join("_ferry.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            return Err(anyhow::Error::new(crate::error::Failure::Locked(format!(
                "another ferry target is writing to {} (lock {}); wait for it to finish",
                base.display(),
                lock_path.display()
            ))));
        }
        let mpath = base.join(MANIFEST);
        let manifest: Manifest = match fs::read(&mpath) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a ferry manifest; move it away or choose another path",
                    mpath.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", mpath.display())),
        };
        let now = chrono::Utc::now();
        let mut t = ParquetTarget {
            cfg,
            base,
            _lock: lock,
            manifest,
            streams: StreamMap::default(),
            pending: Vec::new(),
            // Unique per run even for runs in the same second in containers (pid 1).
            run: format!(
                "{}-{}-{:09}",
                now.format("%Y%m%dT%H%M%SZ"),
                std::process::id(),
                now.timestamp_subsec_nanos()
            ),
            seq: 0,
            run_files: Vec::new(),
            scope: scope.unwrap_or("pipe").to_owned(),
            received_at: now.timestamp_micros(),
        };
        t.recover_files()?;
        Ok(t)
    }

    fn tmp_of(&self, rel: &str) -> PathBuf {
        let p = self.base.join(rel);
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        p.with_file_name(format!(".{name}.tmp"))
    }

    /// Rolls forward files the manifest lists but a crash left under their temporary name,
    /// deletes replaced files and temporary files no manifest lists.
    fn recover_files(&mut self) -> anyhow::Result<()> {
        for f in &self.manifest.files {
            let path = self.base.join(&f.path);
            if !path.exists() {
                let tmp = self.tmp_of(&f.path);
                if tmp.exists() {
                    fs::rename(&tmp, &path)
                        .with_context(|| format!("finishing {}", path.display()))?;
                    tracing::info!(file = %path.display(), "Committed file renamed into place after an interrupted run.");
                } else {
                    tracing::warn!(file = %path.display(), "A file the manifest lists is missing.");
                }
            }
        }
        for g in std::mem::take(&mut self.manifest.garbage) {
            let _ = fs::remove_file(self.base.join(&g));
        }
        let mut stack = vec![self.base.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if p.is_dir() && name != RUNS {
                    stack.push(p);
                } else if name.starts_with(".part-") && name.ends_with(".parquet.tmp") {
                    fs::remove_file(&p)
                        .with_context(|| format!("removing uncommitted {}", p.display()))?;
                    tracing::info!(file = %p.display(), "Uncommitted file of an interrupted run removed.");
                }
            }
        }
        Ok(())
    }

    fn props(&self) -> WriterProperties {
        let c = match self.cfg.compression {
            Compression::Zstd => PqCompression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()),
            Compression::Snappy => PqCompression::SNAPPY,
            Compression::None => PqCompression::UNCOMPRESSED,
        };
        WriterProperties::builder()
            .set_compression(c)
            .set_max_row_group_row_count(Some(self.cfg.row_group_rows.max(1) as usize))
            // A column with many distinct values (ids, timestamps, free text) gives up on its
            // dictionary after 64 KiB of it and is written plain, as DuckDB's writer does: a
            // dictionary as large as the data costs CPU and makes the file larger (3x on such
            // columns in bench/warehouse.sh); columns of few values keep their dictionary.
            .set_dictionary_page_size_limit(DICTIONARY_LIMIT)
            .set_created_by(format!("ferry {}", env!("CARGO_PKG_VERSION")))
            .build()
    }

    /// Starts the stream's layout from a SCHEMA; a changed schema closes its open files.
    ///
    /// # Errors
    /// A stream without keys when they are required, an unusable schema, a partition property
    /// that is not a date or date-time.
    pub fn schema(&mut self, msg: &SchemaMessage) -> anyhow::Result<()> {
        let plan = table::plan(
            msg,
            PlanOptions {
                metadata: self.cfg.add_metadata_columns,
                flatten: self.cfg.data_flattening_max_level,
                primary_key_required: self.cfg.primary_key_required,
            },
        )?;
        let nested = self.cfg.nested == Nested::Struct;
        let probe = BatchBuilder::new(&plan.cols, nested, false, self.received_at)?;
        let sj = schema_json(probe.schema());
        if let Some(old) = self.streams.get(&msg.stream) {
            if self.manifest.schemas.get(old.schema_idx) == Some(&sj)
                && old.keys == msg.key_properties
            {
                return Ok(());
            }
            // A schema change starts new files.
            self.close_stream(&msg.stream)?;
        }
        let schema_idx = match self.manifest.schemas.iter().position(|s| *s == sj) {
            Some(i) => i,
            None => {
                self.manifest.schemas.push(sj);
                self.manifest.schemas.len() - 1
            }
        };
        let partition = match self
            .cfg
            .partition_by
            .as_ref()
            .and_then(|p| p.for_stream(&msg.stream))
        {
            None => None,
            // One property named for all streams partitions the streams that have it.
            Some(prop)
                if matches!(self.cfg.partition_by, Some(super::PartitionBy::All(_)))
                    && !plan
                        .cols
                        .iter()
                        .any(|c| c.source == Source::Prop(prop.into())) =>
            {
                None
            }
            Some(prop) => {
                let Some(c) = plan
                    .cols
                    .iter()
                    .find(|c| c.source == Source::Prop(prop.into()))
                else {
                    bail!(
                        "stream {:?}: partition_by property {prop:?} is not in the schema; name a date or date-time property",
                        msg.stream
                    );
                };
                if !matches!(
                    c.ty,
                    crate::schema::ColumnType::Date | crate::schema::ColumnType::DateTime
                ) {
                    bail!(
                        "stream {:?}: partition_by property {prop:?} is not a date or date-time (format: date / date-time)",
                        msg.stream
                    );
                }
                Some((prop.to_owned(), c.name.clone()))
            }
        };
        let rep_key = msg
            .bookmark_properties
            .as_ref()
            .and_then(|b| b.first())
            .and_then(|k| {
                plan.cols
                    .iter()
                    .position(|c| c.source == Source::Prop(k.clone()))
                    .map(|i| (i, k.clone()))
            });
        let prev = self.streams.remove(&msg.stream);
        self.streams.insert(
            msg.stream.clone(),
            PqStream {
                dir: folder_name(&msg.stream),
                cols: plan.cols,
                keys: msg.key_properties.clone(),
                schema_idx,
                partition,
                rep_key,
                parts: BTreeMap::new(),
                version: prev.as_ref().and_then(|p| p.version),
                versions: prev
                    .as_ref()
                    .map(|p| p.versions.clone())
                    .unwrap_or_default(),
                bytes: prev.map_or(0, |p| p.bytes),
            },
        );
        Ok(())
    }

    /// Adds a record to its stream's (and partition's) batch.
    ///
    /// # Errors
    /// A value that does not fit its column, an unwritable file.
    pub fn record(
        &mut self,
        msg: &RecordMessage,
        fields: Option<&FieldSpans>,
    ) -> anyhow::Result<()> {
        let Some(s) = self.streams.get_mut(&msg.stream) else {
            bail!("no SCHEMA seen for stream {:?}", msg.stream);
        };
        s.versions.record(msg);
        if msg.version != s.version {
            // Files hold one table version each, so a replaced version can be dropped whole.
            if s.parts
                .values()
                .any(|p| p.batch.rows() > 0 || p.file.is_some())
            {
                self.close_stream(&msg.stream)?;
            }
            let s = self.streams.get_mut(&msg.stream).expect("stream exists");
            s.version = msg.version;
        }
        let flat = table::flat_record(msg, self.cfg.data_flattening_max_level)?;
        let s = self.streams.get_mut(&msg.stream).expect("stream exists");
        let part_key = match &s.partition {
            None => None,
            Some((prop, col)) => {
                Some(partition_value(msg, flat.as_ref(), prop).map_err(|why| {
                    anyhow!(
                        "stream {:?}{}, partition property {prop:?} (column {col:?}): {why}",
                        msg.stream,
                        record_key_text(&s.keys, msg)
                    )
                })?)
            }
        };
        if !s.parts.contains_key(&part_key) {
            let batch = BatchBuilder::new(
                &s.cols,
                self.cfg.nested == Nested::Struct,
                false,
                self.received_at,
            )?;
            s.parts.insert(part_key.clone(), Part { batch, file: None });
        }
        let part = s.parts.get_mut(&part_key).expect("part exists");
        if let Err(e) = part.batch.push(msg, flat.as_ref(), fields, 0) {
            bail!(
                "stream {:?}{}, column {:?}: value {} has {}; clean it at the source",
                msg.stream,
                record_key_text(&s.keys, msg),
                e.column,
                e.value,
                e.why
            );
        }
        // Handed to the encoder in slices: it fills its row groups (`row_group_rows`) from
        // them, so only a slice waits here as Arrow arrays while a row group is encoded.
        if part.batch.rows() as u64 >= self.cfg.row_group_rows.min(SLICE_ROWS)
            || part.batch.bytes() >= SLICE_BYTES
        {
            let stream = msg.stream.clone();
            self.write_part(&stream, &part_key, false)?;
        }
        Ok(())
    }

    /// Writes a part's batch into its open file (opening one if needed); with `close`, or when
    /// the file is full, closes the file, which then waits for the commit.
    fn write_part(
        &mut self,
        stream: &str,
        key: &Option<String>,
        close: bool,
    ) -> anyhow::Result<()> {
        let props = self.props();
        let (max_rows, max_bytes) = (self.cfg.file_max_rows, self.cfg.file_max_bytes);
        let s = self.streams.get_mut(stream).expect("stream exists");
        let part = s.parts.get_mut(key).expect("part exists");
        let mut failed = false;
        if part.batch.rows() > 0 {
            let input_bytes = part.batch.bytes() as u64;
            s.bytes += input_bytes;
            let batch: RecordBatch = part
                .batch
                .finish()
                .with_context(|| format!("stream {stream:?}: building a batch"))?;
            if part.file.is_none() {
                self.seq += 1;
                let mut rel = PathBuf::from(&s.dir);
                if let (Some((_, col)), Some(v)) = (&s.partition, key) {
                    rel.push(format!("{col}_date={v}"));
                }
                rel.push(format!("part-{}-{:05}.parquet", self.run, self.seq));
                let rel = rel.to_string_lossy().replace('\\', "/");
                let final_path = self.base.join(&rel);
                let tmp = final_path.with_file_name(format!(
                    ".{}.tmp",
                    final_path.file_name().unwrap_or_default().to_string_lossy()
                ));
                if let Some(d) = tmp.parent() {
                    fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                }
                let f =
                    File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
                let writer = Encoder::start(f, batch.schema(), props)?;
                part.file = Some(OpenFile {
                    writer,
                    input_bytes: 0,
                    tmp,
                    path: rel,
                    rows: 0,
                    min: None,
                    max: None,
                });
            }
            let file = part.file.as_mut().expect("file open");
            if let Some((i, _)) = &s.rep_key {
                if let Some(mm) = min_max(batch.column(*i).as_ref()) {
                    let (lo, hi) =
                        merge_min_max((file.min.take(), file.max.take()), mm, cmp_values);
                    file.min = lo;
                    file.max = hi;
                }
            }
            file.rows += batch.num_rows() as u64;
            file.input_bytes += input_bytes;
            failed = !file.writer.write(batch);
        }
        let full = part
            .file
            .as_ref()
            .is_some_and(|f| f.rows >= max_rows || f.input_bytes >= max_bytes);
        if (close || full || failed) && part.file.is_some() {
            let file = part.file.take().expect("file open");
            let inner = file
                .writer
                .finish()
                .with_context(|| format!("stream {stream:?}: writing {}", file.tmp.display()))?;
            let bytes = inner.metadata().map(|m| m.len()).unwrap_or(0);
            self.pending.push(Pending {
                entry: FileEntry {
                    stream: stream.to_owned(),
                    path: file.path,
                    rows: file.rows,
                    bytes,
                    schema: s.schema_idx,
                    version: s.version,
                    partition: match (&s.partition, key) {
                        (Some((_, col)), Some(v)) => Some(format!("{col}_date={v}")),
                        _ => None,
                    },
                    replication_key: s.rep_key.as_ref().map(|(_, k)| k.clone()),
                    min: file.min,
                    max: file.max,
                    run: self.run.clone(),
                },
                tmp: file.tmp,
            });
        }
        Ok(())
    }

    /// Writes and closes every open file of a stream.
    fn close_stream(&mut self, stream: &str) -> anyhow::Result<()> {
        let keys: Vec<Option<String>> = self
            .streams
            .get(stream)
            .map(|s| s.parts.keys().cloned().collect())
            .unwrap_or_default();
        for k in &keys {
            self.write_part(stream, k, true)?;
        }
        if let Some(s) = self.streams.get_mut(stream) {
            s.parts.clear();
        }
        Ok(())
    }

    /// Remembers an ACTIVATE_VERSION; applied at commit.
    pub fn activate_version(&mut self, msg: &ActivateVersionMessage) {
        if let Some(s) = self.streams.get_mut(&msg.stream) {
            s.versions.activate(msg.version);
        }
    }

    /// Closes every open file, then commits: the manifest first (atomically), then the renames.
    ///
    /// # Errors
    /// I/O errors; the manifest then still lists only what earlier commits made durable.
    pub fn commit(&mut self, state: Option<&Value>) -> anyhow::Result<()> {
        let names: Vec<String> = self.streams.keys().cloned().collect();
        for n in &names {
            self.close_stream(n)?;
        }
        let mut removed: Vec<String> = Vec::new();
        for n in &names {
            let s = self.streams.get_mut(n).expect("stream exists");
            let Some((v, seen)) = s.versions.take() else {
                continue;
            };
            let in_manifest = self
                .manifest
                .files
                .iter()
                .chain(self.pending.iter().map(|p| &p.entry))
                .any(|f| f.stream == *n && f.version == Some(v));
            if !seen && !in_manifest {
                continue;
            }
            let before = self.manifest.files.len();
            self.manifest.files.retain(|f| {
                let old = f.stream == *n && f.version != Some(v);
                if old {
                    removed.push(f.path.clone());
                }
                !old
            });
            // Pending files of another version of this stream (a reload cut short) go too.
            let (keep, drop): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|p| !(p.entry.stream == *n && p.entry.version != Some(v)));
            for p in drop {
                let _ = fs::remove_file(&p.tmp);
            }
            self.pending = keep;
            tracing::info!(stream = %n, version = v, files = before - self.manifest.files.len(), "Files of older table versions dropped from the manifest.");
        }
        if self.pending.is_empty() && removed.is_empty() && state.is_none() {
            return Ok(());
        }
        // New folders (partitions, streams) must be durable before the manifest names files in them.
        let mut new_dirs = std::collections::BTreeSet::new();
        for p in &self.pending {
            let mut d = p.tmp.parent();
            while let Some(dir) = d.filter(|d| d.starts_with(&self.base)) {
                new_dirs.insert(dir.to_path_buf());
                d = dir.parent();
            }
        }
        for d in &new_dirs {
            sync_dir(d);
        }
        let new_files: Vec<FileEntry> = self.pending.iter().map(|p| p.entry.clone()).collect();
        self.manifest.files.extend(new_files.iter().cloned());
        self.manifest.garbage.extend(removed.iter().cloned());
        if let Some(st) = state {
            let mine = self.manifest.states.entry(self.scope.clone()).or_default();
            mine.prev_state = mine.state.take();
            mine.state = Some(st.clone());
        }
        write_json_atomic(&self.base.join(MANIFEST), &self.manifest)?;
        // Committed: what follows is redone by the next run if it is cut short.
        let mut dirs = std::collections::BTreeSet::new();
        for p in std::mem::take(&mut self.pending) {
            let final_path = self.base.join(&p.entry.path);
            fs::rename(&p.tmp, &final_path)
                .with_context(|| format!("renaming {} into place", final_path.display()))?;
            if let Some(d) = final_path.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        for d in dirs {
            sync_dir(&d);
        }
        if !removed.is_empty() {
            for g in &removed {
                let _ = fs::remove_file(self.base.join(g));
            }
            self.manifest.garbage.clear();
            write_json_atomic(&self.base.join(MANIFEST), &self.manifest)?;
        }
        self.run_files.extend(new_files);
        let runs = self.base.join(RUNS);
        fs::create_dir_all(&runs)?;
        write_json_atomic(
            &runs.join(format!("{}.json", self.run)),
            &json!({
                "run": self.run,
                "pipeline": self.scope,
                "committed_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "files": self.run_files,
                "removed": removed,
                "schemas": self.manifest.schemas,
                "state": state,
            }),
        )?;
        Ok(())
    }

    /// The state committed with the files, and the one before it.
    ///
    /// # Errors
    /// Never, today; kept fallible like the other targets.
    pub fn recover(&self) -> anyhow::Result<Option<Recovered>> {
        let Some(mine) = self.manifest.states.get(&self.scope) else {
            return Ok(None);
        };
        Ok(mine.state.clone().map(|state| Recovered {
            prev: mine
                .prev_state
                .clone()
                .unwrap_or_else(crate::singer::state::empty),
            state,
        }))
    }

    /// Drops the state kept in the manifest (files stay).
    ///
    /// # Errors
    /// When the manifest cannot be written.
    pub fn forget_state(&mut self) -> anyhow::Result<()> {
        if self.manifest.states.remove(&self.scope).is_some() {
            write_json_atomic(&self.base.join(MANIFEST), &self.manifest)?;
        }
        Ok(())
    }

    /// Bytes of records written for a stream in this run.
    pub fn bytes_written(&self, stream: &str) -> u64 {
        self.streams.get(stream).map_or(0, |s| s.bytes)
    }
}

/// The folder of a stream: its table name with path separators and a leading dot replaced, so
/// no stream name can reach outside the base folder.
fn folder_name(stream: &str) -> String {
    let name: String = table_name(stream)
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    match name.strip_prefix('.') {
        Some(rest) => format!("_{rest}"),
        None if name.is_empty() => "_".into(),
        None => name,
    }
}

/// The day (`YYYY-MM-DD`, UTC) of a record's partition property.
fn partition_value(
    msg: &RecordMessage,
    flat: Option<&Map<String, Value>>,
    prop: &str,
) -> Result<String, &'static str> {
    let owned;
    let text: Option<String> = match (flat, &msg.record) {
        (Some(m), _) => m.get(prop).and_then(Value::as_str).map(str::to_owned),
        (None, Record::Map(m)) => m.get(prop).and_then(Value::as_str).map(str::to_owned),
        (None, Record::Raw(raw)) => {
            let mut found = None;
            crate::schema::scan::fields(raw.get(), |k, v| {
                if k == prop {
                    found = Some(v);
                }
            });
            owned = found.map(|v| match Cell::from_raw(v) {
                Cell::Str(s) => Some(s.into_owned()),
                _ => None,
            });
            owned.flatten()
        }
    };
    let Some(t) = text else {
        return Ok(NULL_PARTITION.into());
    };
    if t.len() == 10 {
        let days = parse_date(&t)?;
        return Ok(chrono::NaiveDate::from_num_days_from_ce_opt(days + 719_163)
            .map(|d| d.to_string())
            .unwrap_or_default());
    }
    let micros = parse_timestamp(&t)?;
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|d| d.date_naive().to_string())
        .ok_or("a date-time out of range")
}
