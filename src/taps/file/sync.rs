//! Extraction: each selected entity's files in (mtime, path) order, from the bookmark on.

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::{FileTap, SourceFile, SOURCE_FILE, SOURCE_LINENO};
use crate::runner::{ConsumerGone, Emitter, SourceOutcome};
use crate::singer::{
    state, ActivateVersionMessage, Catalog, CatalogStream, Message, RecordMessage, SchemaMessage,
};

/// Where an entity's incremental read stopped: the last file (by mtime and path) and how many
/// of its records were emitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Bookmark {
    /// The file's modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// The file.
    pub path: String,
    /// Records of it already emitted.
    pub offset: u64,
    /// Whether the file was read to its end.
    pub complete: bool,
}

fn rfc3339_ns(ns: i128) -> String {
    let secs = ns.div_euclid(1_000_000_000) as i64;
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    DateTime::<Utc>::from_timestamp(secs, nanos).map_or_else(
        || ns.to_string(),
        |d| d.to_rfc3339_opts(SecondsFormat::Nanos, true),
    )
}

impl Bookmark {
    /// Reads a bookmark from state; `None` when absent or not of this tap's shape.
    pub fn from_value(v: &Value) -> Option<Bookmark> {
        let mtime = v.get("file_mtime")?.as_str()?;
        let mtime_ns = DateTime::parse_from_rfc3339(mtime)
            .ok()?
            .timestamp_nanos_opt()? as i128;
        Some(Bookmark {
            mtime_ns,
            path: v.get("file")?.as_str()?.to_owned(),
            offset: v.get("offset").and_then(Value::as_u64).unwrap_or(0),
            complete: v.get("complete").and_then(Value::as_bool).unwrap_or(true),
        })
    }

    /// The bookmark as state JSON (mtime as RFC 3339 so state files stay readable).
    pub fn to_value(&self) -> Value {
        json!({"file_mtime": rfc3339_ns(self.mtime_ns), "file": self.path, "offset": self.offset, "complete": self.complete})
    }

    /// Whether `f` still has records to read.
    pub fn wants(&self, f: &SourceFile) -> bool {
        let key = (f.mtime_ns, f.path.as_str());
        let mark = (self.mtime_ns, self.path.as_str());
        key > mark || (key == mark && !self.complete)
    }
}

impl FileTap {
    /// Reads the selected streams.
    ///
    /// # Errors
    /// [`ConsumerGone`] when the sink stopped; stream failures are in the outcome.
    pub async fn sync(
        self,
        catalog: Catalog,
        state: Value,
        emitter: Emitter,
    ) -> anyhow::Result<SourceOutcome> {
        tokio::task::spawn_blocking(move || self.sync_blocking(&catalog, state, emitter))
            .await
            .context("the file reader thread failed")?
    }

    fn sync_blocking(
        &self,
        catalog: &Catalog,
        mut st: Value,
        mut emitter: Emitter,
    ) -> anyhow::Result<SourceOutcome> {
        let mut outcome = SourceOutcome::default();
        for stream in catalog.selected() {
            let id = stream.tap_stream_id().to_owned();
            if let Err(e) = self.sync_stream(stream, &mut st, &mut emitter) {
                if e.is::<ConsumerGone>() {
                    return Err(e);
                }
                let msg = format!("{e:#}");
                tracing::error!(stream = %id, error = %crate::secrets::redact(&msg), "Stream failed; the other streams go on.");
                outcome.failed_streams.push((id, msg));
            }
        }
        if let Value::Object(m) = &mut st {
            m.insert(state::CURRENTLY_SYNCING.into(), Value::Null);
        }
        if state::rejection(&st).is_none() {
            emitter.emit_blocking(Message::state(st))?;
        }
        emitter.flush_blocking()?;
        Ok(outcome)
    }

    fn sync_stream(
        &self,
        stream: &CatalogStream,
        st: &mut Value,
        emitter: &mut Emitter,
    ) -> anyhow::Result<()> {
        let id = stream.tap_stream_id();
        let spec = self.spec(id)?;
        let full = stream.replication_method() == Some("FULL_TABLE");
        let mut keys = stream.key_properties();
        if keys.is_empty() {
            keys.clone_from(&spec.keys);
        }
        // Only selected properties travel; key properties always do.
        let all_selected = stream
            .schema()
            .get("properties")
            .and_then(Value::as_object)
            .is_none_or(|p| p.keys().all(|k| stream.is_property_selected(k)));
        let keep = |name: &str| {
            keys.iter().any(|k| k == name)
                || stream.is_property_selected(name)
                || name == SOURCE_FILE
                || name == SOURCE_LINENO
        };
        let mut schema = stream.schema().clone();
        if let Some(Value::Object(props)) = schema.get_mut("properties") {
            props.retain(|k, _| keep(k));
        }
        emitter.emit_blocking(Message::Schema(SchemaMessage {
            stream: id.to_owned(),
            schema: schema.clone(),
            key_properties: keys.clone(),
            bookmark_properties: None,
            extra: Map::new(),
        }))?;
        if let Value::Object(m) = st {
            m.insert(state::CURRENTLY_SYNCING.into(), json!(id));
        }
        let files = self.list_files(spec)?;
        let version = full.then(|| Utc::now().timestamp_millis());
        let mut mark = if full {
            None
        } else {
            match state::bookmark(st, id) {
                None => None,
                Some(v) => match Bookmark::from_value(v) {
                    Some(b) => Some(b),
                    None => {
                        tracing::warn!(stream = %id, "The saved bookmark is not a file bookmark; reading every file.");
                        None
                    }
                },
            }
        };
        let time_extracted = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut total = 0u64;
        for f in files {
            if mark.as_ref().is_some_and(|b| !b.wants(&f)) {
                continue;
            }
            let skip = match &mark {
                Some(b) if b.path == f.path && b.mtime_ns == f.mtime_ns => b.offset,
                _ => 0,
            };
            let mut reader = super::RowReader::open(self.format, spec, &f.path)?;
            let columns = reader.plan(&schema, &keep, &keys)?;
            let keep_json: Option<&dyn Fn(&str) -> bool> =
                if all_selected { None } else { Some(&keep) };
            let mut count = 0u64;
            let meta = self.config.add_metadata_columns.then_some(f.path.as_str());
            while let Some((_, rec)) = reader.next_record(&columns, keep_json, meta)? {
                count += 1;
                if count <= skip {
                    continue;
                }
                emitter.emit_blocking(Message::Record(RecordMessage {
                    stream: id.to_owned(),
                    record: rec,
                    version,
                    time_extracted: Some(time_extracted.clone()),
                    extra: Map::new(),
                }))?;
                total += 1;
                if !full && count.is_multiple_of(self.config.state_every_rows.max(1)) {
                    let b = Bookmark {
                        mtime_ns: f.mtime_ns,
                        path: f.path.clone(),
                        offset: count,
                        complete: false,
                    };
                    state::set_bookmark(st, id, Some(b.to_value()));
                    emitter.emit_blocking(Message::state(st.clone()))?;
                }
            }
            if !full {
                let b = Bookmark {
                    mtime_ns: f.mtime_ns,
                    path: f.path.clone(),
                    offset: count,
                    complete: true,
                };
                state::set_bookmark(st, id, Some(b.to_value()));
                emitter.emit_blocking(Message::state(st.clone()))?;
                mark = Some(b);
            }
        }
        if let Some(version) = version {
            emitter.emit_blocking(Message::ActivateVersion(ActivateVersionMessage {
                stream: id.to_owned(),
                version,
                extra: Map::new(),
            }))?;
        }
        tracing::info!(stream = %id, rows = total, "Stream read.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookmark_roundtrip_and_order() {
        let b = Bookmark {
            mtime_ns: 1_700_000_000_123_456_789,
            path: "b.csv".into(),
            offset: 10,
            complete: false,
        };
        let v = b.to_value();
        assert_eq!(v["file_mtime"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(Bookmark::from_value(&v), Some(b.clone()));
        assert!(
            b.wants(&SourceFile {
                mtime_ns: b.mtime_ns,
                path: "b.csv".into()
            }),
            "incomplete file is resumed"
        );
        assert!(b.wants(&SourceFile {
            mtime_ns: b.mtime_ns,
            path: "c.csv".into()
        }));
        assert!(!b.wants(&SourceFile {
            mtime_ns: b.mtime_ns,
            path: "a.csv".into()
        }));
        assert!(!b.wants(&SourceFile {
            mtime_ns: b.mtime_ns - 1,
            path: "z.csv".into()
        }));
        let done = Bookmark {
            complete: true,
            ..b
        };
        assert!(!done.wants(&SourceFile {
            mtime_ns: done.mtime_ns,
            path: "b.csv".into()
        }));
    }
}
