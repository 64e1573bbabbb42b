//! Singer catalogs: `streams[]` with `tap_stream_id`, `stream`, `schema` and `metadata`
//! entries keyed by `breadcrumb`.
//!
//! A catalog is kept as the JSON it was read from, with typed accessors on top, so that every
//! field ferry does not know survives a read-modify-write (`ferry select`, `ferry discover`).

use std::path::Path;

use anyhow::Context;
use serde_json::{json, Map, Value};

use crate::error::config_error;

/// Metadata keys, spelled once.
pub mod keys {
    /// Whether the user selected the stream or property.
    pub const SELECTED: &str = "selected";
    /// The tap's default selection.
    pub const SELECTED_BY_DEFAULT: &str = "selected-by-default";
    /// `available`, `automatic` or `unsupported`.
    pub const INCLUSION: &str = "inclusion";
    /// `FULL_TABLE`, `INCREMENTAL`, `LOG_BASED` or ferry's `XMIN`.
    pub const REPLICATION_METHOD: &str = "replication-method";
    /// The column an INCREMENTAL stream is read by.
    pub const REPLICATION_KEY: &str = "replication-key";
    /// Columns that identify a row.
    pub const TABLE_KEY_PROPERTIES: &str = "table-key-properties";
    /// Columns that may serve as replication key.
    pub const VALID_REPLICATION_KEYS: &str = "valid-replication-keys";
    /// A method the tap imposes.
    pub const FORCED_REPLICATION_METHOD: &str = "forced-replication-method";
}

/// A Singer catalog.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Catalog {
    /// The streams, each the JSON object it was read as.
    pub streams: Vec<CatalogStream>,
    /// Top-level fields other than `streams`, kept.
    pub extra: Map<String, Value>,
}

/// One stream of a catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogStream(pub Map<String, Value>);

impl Catalog {
    /// Parses a catalog from JSON, checking the fields every consumer relies on.
    ///
    /// # Errors
    /// When `streams` is missing or a stream lacks `tap_stream_id` or a `schema` object.
    pub fn from_value(value: Value) -> anyhow::Result<Catalog> {
        let Value::Object(mut map) = value else {
            return Err(config_error(
                "a catalog must be a JSON object with a \"streams\" array",
            ));
        };
        let streams = match map.remove("streams") {
            Some(Value::Array(items)) => items,
            _ => return Err(config_error("a catalog must have a \"streams\" array")),
        };
        let mut out = Vec::with_capacity(streams.len());
        for (i, s) in streams.into_iter().enumerate() {
            let Value::Object(s) = s else {
                return Err(config_error(format!(
                    "catalog stream #{i} is not an object"
                )));
            };
            let stream = CatalogStream(s);
            if stream
                .0
                .get("tap_stream_id")
                .and_then(Value::as_str)
                .is_none()
            {
                return Err(config_error(format!(
                    "catalog stream #{i} has no \"tap_stream_id\" string"
                )));
            }
            if !stream.0.get("schema").is_some_and(Value::is_object) {
                return Err(config_error(format!(
                    "catalog stream {:?} has no \"schema\" object",
                    stream.tap_stream_id()
                )));
            }
            out.push(stream);
        }
        Ok(Catalog {
            streams: out,
            extra: map,
        })
    }

    /// Reads a catalog file.
    ///
    /// # Errors
    /// A config error naming the file when it is missing or malformed.
    pub fn load(path: &Path) -> anyhow::Result<Catalog> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| config_error(format!("cannot read catalog {}: {e}", path.display())))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            config_error(format!("catalog {} is not valid JSON: {e}", path.display()))
        })?;
        Catalog::from_value(value).with_context(|| format!("catalog {}", path.display()))
    }

    /// The catalog as JSON.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert(
            "streams".into(),
            Value::Array(
                self.streams
                    .iter()
                    .map(|s| Value::Object(s.0.clone()))
                    .collect(),
            ),
        );
        for (k, v) in &self.extra {
            map.insert(k.clone(), v.clone());
        }
        Value::Object(map)
    }

    /// Finds a stream by `tap_stream_id`, or by `stream` name.
    pub fn get(&self, id: &str) -> Option<&CatalogStream> {
        self.streams
            .iter()
            .find(|s| s.tap_stream_id() == id)
            .or_else(|| self.streams.iter().find(|s| s.stream_name() == id))
    }

    /// The selected streams.
    pub fn selected(&self) -> impl Iterator<Item = &CatalogStream> {
        self.streams.iter().filter(|s| s.is_selected())
    }
}

impl CatalogStream {
    /// A new stream entry with stream-level metadata.
    pub fn new(tap_stream_id: &str, schema: Value, stream_metadata: Map<String, Value>) -> Self {
        let mut s = Map::new();
        s.insert("tap_stream_id".into(), json!(tap_stream_id));
        s.insert("stream".into(), json!(tap_stream_id));
        s.insert("schema".into(), schema);
        s.insert(
            "metadata".into(),
            json!([{ "breadcrumb": [], "metadata": stream_metadata }]),
        );
        CatalogStream(s)
    }

    /// `tap_stream_id`.
    pub fn tap_stream_id(&self) -> &str {
        self.0
            .get("tap_stream_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// `stream`, falling back to `tap_stream_id`.
    pub fn stream_name(&self) -> &str {
        self.0
            .get("stream")
            .and_then(Value::as_str)
            .unwrap_or_else(|| self.tap_stream_id())
    }

    /// The stream's JSON Schema.
    pub fn schema(&self) -> &Value {
        static EMPTY: Value = Value::Null;
        self.0.get("schema").unwrap_or(&EMPTY)
    }

    /// The metadata object at `breadcrumb`, if present.
    pub fn metadata(&self, breadcrumb: &[&str]) -> Option<&Map<String, Value>> {
        self.0.get("metadata")?.as_array()?.iter().find_map(|e| {
            let bc = e.get("breadcrumb")?.as_array()?;
            let same = bc.len() == breadcrumb.len()
                && bc
                    .iter()
                    .zip(breadcrumb)
                    .all(|(a, b)| a.as_str() == Some(*b));
            if same {
                e.get("metadata")?.as_object()
            } else {
                None
            }
        })
    }

    /// A stream-level metadata value.
    pub fn stream_meta(&self, key: &str) -> Option<&Value> {
        self.metadata(&[]).and_then(|m| m.get(key))
    }

    /// Sets a metadata value at `breadcrumb`, creating the entry if needed.
    pub fn set_metadata(&mut self, breadcrumb: &[&str], key: &str, value: Value) {
        let entries = self
            .0
            .entry("metadata")
            .or_insert_with(|| Value::Array(Vec::new()));
        if !entries.is_array() {
            *entries = Value::Array(Vec::new());
        }
        let Value::Array(entries) = entries else {
            return;
        };
        let pos = entries.iter().position(|e| {
            e.get("breadcrumb")
                .and_then(Value::as_array)
                .is_some_and(|bc| {
                    bc.len() == breadcrumb.len()
                        && bc
                            .iter()
                            .zip(breadcrumb)
                            .all(|(a, b)| a.as_str() == Some(*b))
                })
        });
        let idx = pos.unwrap_or_else(|| {
            entries.push(json!({"breadcrumb": breadcrumb, "metadata": {}}));
            entries.len() - 1
        });
        if let Some(Value::Object(m)) = entries[idx].get_mut("metadata") {
            m.insert(key.to_owned(), value);
        } else {
            entries[idx]["metadata"] = json!({ key: value });
        }
    }

    /// Whether the stream is selected: `selected` metadata, else the legacy `schema.selected`,
    /// else `selected-by-default`.
    pub fn is_selected(&self) -> bool {
        if let Some(b) = self.stream_meta(keys::SELECTED).and_then(Value::as_bool) {
            return b;
        }
        if let Some(b) = self.schema().get("selected").and_then(Value::as_bool) {
            return b;
        }
        self.stream_meta(keys::SELECTED_BY_DEFAULT)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Whether a top-level property is selected: `inclusion: automatic` always is,
    /// `unsupported` never is; otherwise `selected`, else `selected-by-default`, else true.
    pub fn is_property_selected(&self, prop: &str) -> bool {
        let Some(m) = self.metadata(&["properties", prop]) else {
            return true;
        };
        match m.get(keys::INCLUSION).and_then(Value::as_str) {
            Some("automatic") => return true,
            Some("unsupported") => return false,
            _ => {}
        }
        m.get(keys::SELECTED)
            .or_else(|| m.get(keys::SELECTED_BY_DEFAULT))
            .and_then(Value::as_bool)
            .unwrap_or(true)
    }

    /// The replication method: metadata, else the legacy top-level field.
    pub fn replication_method(&self) -> Option<&str> {
        self.stream_meta(keys::REPLICATION_METHOD)
            .or_else(|| self.stream_meta(keys::FORCED_REPLICATION_METHOD))
            .or_else(|| self.0.get("replication_method"))
            .and_then(Value::as_str)
    }

    /// The replication key: metadata, else the legacy top-level field.
    pub fn replication_key(&self) -> Option<&str> {
        self.stream_meta(keys::REPLICATION_KEY)
            .or_else(|| self.0.get("replication_key"))
            .and_then(Value::as_str)
    }

    /// Key properties: `table-key-properties` metadata, else the legacy `key_properties`.
    pub fn key_properties(&self) -> Vec<String> {
        self.stream_meta(keys::TABLE_KEY_PROPERTIES)
            .or_else(|| self.0.get("key_properties"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Copies user choices (selection, replication method and key, property selection) from `old`
/// into a freshly discovered catalog, so re-running discovery keeps them.
pub fn carry_over_selection(fresh: &mut Catalog, old: &Catalog) {
    const USER_KEYS: [&str; 3] = [
        keys::SELECTED,
        keys::REPLICATION_METHOD,
        keys::REPLICATION_KEY,
    ];
    for s in &mut fresh.streams {
        let Some(o) = old.get(s.tap_stream_id()) else {
            continue;
        };
        let Some(entries) = o.0.get("metadata").and_then(Value::as_array) else {
            continue;
        };
        for e in entries {
            let Some(bc) = e.get("breadcrumb").and_then(Value::as_array) else {
                continue;
            };
            let bc: Vec<&str> = bc.iter().filter_map(Value::as_str).collect();
            let Some(m) = e.get("metadata").and_then(Value::as_object) else {
                continue;
            };
            for k in USER_KEYS {
                if let Some(v) = m.get(k) {
                    if bc.is_empty() || s.metadata(&bc).is_some() {
                        s.set_metadata(&bc, k, v.clone());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_rules() {
        let cat = Catalog::from_value(json!({"streams": [
            {"tap_stream_id": "a", "schema": {}, "metadata": [{"breadcrumb": [], "metadata": {"selected": true}},
                {"breadcrumb": ["properties", "x"], "metadata": {"selected": false}},
                {"breadcrumb": ["properties", "id"], "metadata": {"selected": false, "inclusion": "automatic"}}]},
            {"tap_stream_id": "b", "schema": {"selected": true}},
            {"tap_stream_id": "c", "schema": {}, "metadata": [{"breadcrumb": [], "metadata": {"selected-by-default": true}}]},
            {"tap_stream_id": "d", "schema": {}, "future": 1}
        ], "version": 2})).unwrap();
        let sel: Vec<_> = cat.selected().map(CatalogStream::tap_stream_id).collect();
        assert_eq!(sel, ["a", "b", "c"]);
        let a = cat.get("a").unwrap();
        assert!(!a.is_property_selected("x"));
        assert!(a.is_property_selected("id"));
        assert!(a.is_property_selected("y"));
        assert_eq!(cat.to_value()["version"], 2);
        assert_eq!(cat.to_value()["streams"][3]["future"], 1);
    }

    #[test]
    fn set_metadata_creates_and_updates() {
        let mut s = CatalogStream::new("t", json!({"type": "object"}), Map::new());
        s.set_metadata(&[], keys::SELECTED, json!(true));
        s.set_metadata(&["properties", "a"], keys::SELECTED, json!(false));
        assert!(s.is_selected());
        assert!(!s.is_property_selected("a"));
        s.set_metadata(&[], keys::SELECTED, json!(false));
        assert!(!s.is_selected());
    }

    #[test]
    fn malformed_catalogs_are_config_errors() {
        for bad in [
            json!([]),
            json!({}),
            json!({"streams": [{"schema": {}}]}),
            json!({"streams": [{"tap_stream_id": "x"}]}),
        ] {
            let err = Catalog::from_value(bad).unwrap_err();
            assert_eq!(crate::error::exit_code(&err), crate::error::exit::CONFIG);
        }
    }
}
