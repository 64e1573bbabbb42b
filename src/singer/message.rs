//! The Singer message types (SCHEMA, RECORD, STATE, ACTIVATE_VERSION) and their JSON form.

use std::borrow::Cow;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A record's data: parsed (built-in taps make them so) or the raw JSON object text it arrived
/// as on a pipe, validated without building a tree and parsed only if a target needs fields.
/// A JSON-lines target writes the raw text straight through.
#[derive(Debug, Clone)]
pub enum Record {
    /// A parsed object.
    Map(Map<String, Value>),
    /// The text of a JSON object, exactly as received.
    Raw(Box<RawValue>),
}

impl Record {
    /// The record as a map, parsing raw text if needed.
    ///
    /// # Errors
    /// Never for a record made by the decoder (it checked the text is an object).
    pub fn to_map(&self) -> Result<Cow<'_, Map<String, Value>>, serde_json::Error> {
        match self {
            Record::Map(m) => Ok(Cow::Borrowed(m)),
            Record::Raw(r) => serde_json::from_str(r.get()).map(Cow::Owned),
        }
    }

    /// The record as an owned map.
    ///
    /// # Errors
    /// As [`Record::to_map`].
    pub fn into_map(self) -> Result<Map<String, Value>, serde_json::Error> {
        match self {
            Record::Map(m) => Ok(m),
            Record::Raw(r) => serde_json::from_str(r.get()),
        }
    }
}

impl Record {
    /// A raw record from JSON object text that ferry itself wrote (valid by construction, as
    /// the CSV tap's rows are), wrapped without the full parse `RawValue::from_string` makes:
    /// serde_json's serializer copies a raw value's text verbatim. Should that ever change, the
    /// text would come out altered; the length check notices and the text is parsed instead.
    ///
    /// # Errors
    /// The text is not JSON (only on the fallback path).
    pub fn from_own_json(text: String) -> serde_json::Result<Record> {
        /// What serde_json's own `RawValue` serializes as (serde_json's `raw::TOKEN`).
        const TOKEN: &str = "$serde_json::private::RawValue";
        struct Verbatim<'a>(&'a str);
        impl Serialize for Verbatim<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let mut st = s.serialize_struct(TOKEN, 1)?;
                st.serialize_field(TOKEN, self.0)?;
                st.end()
            }
        }
        match serde_json::value::to_raw_value(&Verbatim(&text)) {
            Ok(raw) if raw.get().len() == text.len() && text.starts_with('{') => {
                Ok(Record::Raw(raw))
            }
            _ => RawValue::from_string(text).map(Record::Raw),
        }
    }
}

impl From<Map<String, Value>> for Record {
    fn from(m: Map<String, Value>) -> Self {
        Record::Map(m)
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Record::Raw(a), Record::Raw(b)) if a.get() == b.get() => true,
            _ => matches!((self.to_map(), other.to_map()), (Ok(a), Ok(b)) if a == b),
        }
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Record::Map(m) => m.serialize(s),
            Record::Raw(r) => r.serialize(s),
        }
    }
}

/// One Singer message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Declares (or redeclares) a stream's JSON Schema and key properties.
    Schema(SchemaMessage),
    /// One row of a stream.
    Record(RecordMessage),
    /// An opaque checkpoint: everything before it may be considered delivered once committed.
    State(StateMessage),
    /// Marks a full-table version complete: older versions may be removed.
    ActivateVersion(ActivateVersionMessage),
}

/// A SCHEMA message.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaMessage {
    /// The stream the schema describes.
    pub stream: String,
    /// A JSON Schema for the stream's records.
    pub schema: Value,
    /// Properties that identify a record.
    pub key_properties: Vec<String>,
    /// Properties a tap uses for its bookmark, if declared.
    pub bookmark_properties: Option<Vec<String>>,
    /// Fields this version of ferry does not know, kept as they came.
    pub extra: Map<String, Value>,
}

/// A RECORD message.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordMessage {
    /// The stream the record belongs to.
    pub stream: String,
    /// The record itself.
    pub record: Record,
    /// The table version (full-table replication), if any.
    pub version: Option<i64>,
    /// When the tap read the record (RFC 3339), if given.
    pub time_extracted: Option<String>,
    /// Unknown fields, kept.
    pub extra: Map<String, Value>,
}

/// A STATE message.
#[derive(Debug, Clone, PartialEq)]
pub struct StateMessage {
    /// The state value, conventionally `{"bookmarks": {...}, "currently_syncing": ...}`.
    pub value: Value,
    /// Unknown fields, kept.
    pub extra: Map<String, Value>,
}

/// An ACTIVATE_VERSION message.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivateVersionMessage {
    /// The stream whose version becomes current.
    pub stream: String,
    /// The version that is now complete.
    pub version: i64,
    /// Unknown fields, kept.
    pub extra: Map<String, Value>,
}

impl Message {
    /// The message's `type` as the spec writes it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Schema(_) => "SCHEMA",
            Message::Record(_) => "RECORD",
            Message::State(_) => "STATE",
            Message::ActivateVersion(_) => "ACTIVATE_VERSION",
        }
    }

    /// The stream a message belongs to; STATE belongs to none.
    pub fn stream(&self) -> Option<&str> {
        match self {
            Message::Schema(m) => Some(&m.stream),
            Message::Record(m) => Some(&m.stream),
            Message::ActivateVersion(m) => Some(&m.stream),
            Message::State(_) => None,
        }
    }

    /// A RECORD with no version, time or extras.
    pub fn record(stream: impl Into<String>, record: Map<String, Value>) -> Message {
        Message::Record(RecordMessage {
            stream: stream.into(),
            record: Record::Map(record),
            version: None,
            time_extracted: None,
            extra: Map::new(),
        })
    }

    /// A STATE message.
    pub fn state(value: Value) -> Message {
        Message::State(StateMessage {
            value,
            extra: Map::new(),
        })
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // `type` first, as every Singer implementation writes it; extras last.
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", self.type_name())?;
        let extra = match self {
            Message::Schema(m) => {
                map.serialize_entry("stream", &m.stream)?;
                map.serialize_entry("schema", &m.schema)?;
                map.serialize_entry("key_properties", &m.key_properties)?;
                if let Some(b) = &m.bookmark_properties {
                    map.serialize_entry("bookmark_properties", b)?;
                }
                &m.extra
            }
            Message::Record(m) => {
                map.serialize_entry("stream", &m.stream)?;
                map.serialize_entry("record", &m.record)?;
                if let Some(v) = m.version {
                    map.serialize_entry("version", &v)?;
                }
                if let Some(t) = &m.time_extracted {
                    map.serialize_entry("time_extracted", t)?;
                }
                &m.extra
            }
            Message::State(m) => {
                map.serialize_entry("value", &m.value)?;
                &m.extra
            }
            Message::ActivateVersion(m) => {
                map.serialize_entry("stream", &m.stream)?;
                map.serialize_entry("version", &m.version)?;
                &m.extra
            }
        };
        for (k, v) in extra {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_json_is_wrapped_verbatim() {
        let text = r#"{"id":1,"n":"é \" \\ \u0001","d":1.50,"x":[{"y":null}]}"#;
        let Record::Raw(raw) = Record::from_own_json(text.to_owned()).unwrap() else {
            panic!("raw")
        };
        assert_eq!(raw.get(), text);
        let want: Value = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::from_str::<Value>(raw.get()).unwrap(), want);
    }
}
