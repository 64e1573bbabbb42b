//! Singer state: `{"bookmarks": {"<stream>": {...}}, "currently_syncing": ...}`, and the rules
//! by which a run's emitted state is folded into the saved one.

use serde_json::{Map, Value};

/// The key holding per-stream bookmarks.
pub const BOOKMARKS: &str = "bookmarks";
/// The key naming the stream a tap was in when it stopped.
pub const CURRENTLY_SYNCING: &str = "currently_syncing";

/// A bookmark's replication-key value.
pub const REPLICATION_KEY_VALUE: &str = "replication_key_value";
/// In the bookmark of a stream without key properties: digests (and counts) of rows already
/// sent that the next run reads again (INCREMENTAL: those at the bookmark's value; XMIN: those
/// written at or above the horizon), which it skips.
pub const ROWS_SENT: &str = "rows_sent";

/// An empty state.
pub fn empty() -> Value {
    Value::Object(Map::new())
}

/// Why a state value emitted by a tap is not used (it never overwrites good state). An empty
/// object is a state like any other (a tap with nothing to remember yet).
pub fn rejection(value: &Value) -> Option<&'static str> {
    match value {
        Value::Object(m) => match m.get(BOOKMARKS) {
            None | Some(Value::Object(_)) => None,
            Some(_) => Some("its \"bookmarks\" is not an object"),
        },
        _ => Some("it is not a JSON object"),
    }
}

/// The bookmark of one stream.
pub fn bookmark<'a>(state: &'a Value, stream: &str) -> Option<&'a Value> {
    state.get(BOOKMARKS)?.get(stream)
}

/// Sets (or, with `None`, removes) the bookmark of one stream.
pub fn set_bookmark(state: &mut Value, stream: &str, value: Option<Value>) {
    if !state.is_object() {
        *state = empty();
    }
    let Value::Object(root) = state else { return };
    let marks = root
        .entry(BOOKMARKS)
        .or_insert_with(|| Value::Object(Map::new()));
    if !marks.is_object() {
        *marks = Value::Object(Map::new());
    }
    let Value::Object(marks) = marks else { return };
    match value {
        Some(v) => {
            marks.insert(stream.to_owned(), v);
        }
        None => {
            marks.shift_remove(stream);
        }
    }
}

/// Folds a state emitted during a run into `base` (the state the run started from): each
/// stream bookmark the run emitted replaces that stream's bookmark; the bookmarks of streams
/// the run did not touch are kept; other top-level keys come from the emitted state.
pub fn merge(base: &Value, emitted: &Value) -> Value {
    let mut out = base.clone();
    if !out.is_object() {
        out = empty();
    }
    let Some(emitted) = emitted.as_object() else {
        return out;
    };
    for (k, v) in emitted {
        if k == BOOKMARKS {
            if let Some(marks) = v.as_object() {
                for (stream, mark) in marks {
                    set_bookmark(&mut out, stream, Some(mark.clone()));
                }
            }
        } else if let Value::Object(root) = &mut out {
            root.insert(k.clone(), v.clone());
        }
    }
    out
}

/// The value with every object's keys sorted, so state files diff cleanly.
pub fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Pretty JSON with sorted keys and a final newline: the on-disk form of a state file.
pub fn to_pretty(value: &Value) -> String {
    let mut s = serde_json::to_string_pretty(&sorted(value)).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_keeps_untouched_streams() {
        let base = json!({"bookmarks": {"a": {"v": 1}, "b": {"v": 2}}});
        let emitted = json!({"bookmarks": {"a": {"v": 5}}, "currently_syncing": null});
        assert_eq!(
            merge(&base, &emitted),
            json!({"bookmarks": {"a": {"v": 5}, "b": {"v": 2}}, "currently_syncing": null})
        );
    }

    #[test]
    fn rejects_empty_and_malformed() {
        assert!(rejection(&json!({})).is_none());
        assert!(rejection(&json!(3)).is_some());
        assert!(rejection(&json!({"bookmarks": 1})).is_some());
        assert!(rejection(&json!({"bookmarks": {}})).is_none());
        assert!(rejection(&json!({"users": 2})).is_none());
    }

    #[test]
    fn pretty_is_sorted() {
        let s = to_pretty(&json!({"b": 1, "a": {"d": 1, "c": 2}}));
        assert_eq!(
            s,
            "{\n  \"a\": {\n    \"c\": 2,\n    \"d\": 1\n  },\n  \"b\": 1\n}\n"
        );
    }
}
