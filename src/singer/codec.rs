//! The JSON-lines codec: one Singer message per line, in and out.
//!
//! Decoding has its own typed error carrying the line number, because every caller reports it
//! and tests assert on it.

use std::io::{BufRead, Write};

use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::message::{
    ActivateVersionMessage, Message, Record, RecordMessage, SchemaMessage, StateMessage,
};

/// A message with the input line it came from (0 when it did not come from a line).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// 1-based input line number, or 0 for messages made in-process by a built-in tap.
    pub line: u64,
    /// The message.
    pub msg: Message,
    /// A RECORD's check against its stream's schema, when the producing side made it already.
    pub check: Check,
}

/// Whether a RECORD was checked against its schema where it was produced (the runner checks
/// records on the source's thread, beside the loading work on another core) and what came of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Check {
    /// Not checked yet: the sink checks it.
    #[default]
    Pending,
    /// It matches its schema and has its key properties; where its top-level properties lie
    /// in its raw text, for a target that reads values from it (empty when not asked for or
    /// not found).
    Valid(crate::schema::scan::FieldSpans),
    /// What is wrong with it.
    Invalid(String),
}

/// A line that is not a valid Singer message.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct DecodeError {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong with it.
    pub kind: DecodeErrorKind,
}

/// What is wrong with an input line.
#[derive(Debug, thiserror::Error)]
pub enum DecodeErrorKind {
    /// The line does not parse as JSON.
    #[error("not JSON ({0}); a tap must write only Singer messages to stdout, one per line: {1}")]
    NotJson(String, String),
    /// The line is JSON but not an object.
    #[error("a Singer message must be a JSON object, got {0}")]
    NotObject(&'static str),
    /// No `type` field.
    #[error("message has no \"type\" field")]
    MissingType,
    /// A `type` this version does not know.
    #[error("unknown message type {0:?} (expected SCHEMA, RECORD, STATE or ACTIVATE_VERSION)")]
    UnknownType(String),
    /// A required field is missing or has the wrong JSON type.
    #[error("{msg_type} message{}: field {field:?} {problem}", in_stream(stream.as_deref()))]
    Field {
        /// The message type.
        msg_type: &'static str,
        /// The stream the message names, when it names one.
        stream: Option<String>,
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn in_stream(stream: Option<&str>) -> String {
    stream
        .map(|s| format!(" of stream {s:?}"))
        .unwrap_or_default()
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn excerpt(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim_end();
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{}…", &s[..end])
    } else {
        s.to_owned()
    }
}

fn field_err(
    msg_type: &'static str,
    field: &'static str,
    problem: impl Into<String>,
) -> DecodeErrorKind {
    DecodeErrorKind::Field {
        msg_type,
        stream: None,
        field,
        problem: problem.into(),
    }
}

impl DecodeErrorKind {
    /// Names the stream of the message in a field error.
    fn in_stream(mut self, name: Option<&str>) -> Self {
        if let DecodeErrorKind::Field { stream, .. } = &mut self {
            if stream.is_none() {
                *stream = name.map(str::to_owned);
            }
        }
        self
    }
}

fn take_string(
    v: Option<Value>,
    msg_type: &'static str,
    field: &'static str,
) -> Result<String, DecodeErrorKind> {
    match v {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(field_err(
            msg_type,
            field,
            format!("must be a string, got {}", json_kind(&other)),
        )),
        None => Err(field_err(msg_type, field, "is missing")),
    }
}

fn as_version(v: &Value, msg_type: &'static str) -> Result<i64, DecodeErrorKind> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| field_err(msg_type, "version", format!("must be an integer, got {n}"))),
        other => Err(field_err(
            msg_type,
            "version",
            format!("must be an integer, got {}", json_kind(other)),
        )),
    }
}

/// Decodes one line (without its newline) into a message.
///
/// # Errors
/// A [`DecodeErrorKind`] saying what is wrong; the caller adds the line number.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeErrorKind> {
    let not_json =
        |e: &dyn std::fmt::Display| DecodeErrorKind::NotJson(e.to_string(), excerpt(bytes));
    // The hot path: a RECORD is split into its top-level fields without building a tree, and
    // the record object is kept as raw text (validated and parsed later, only as needed).
    if bytes.first() == Some(&b'{') {
        // One UTF-8 check of the whole line (fast on ASCII) lets serde read it as text: no
        // second check of each borrowed field. Invalid UTF-8 goes down the general path,
        // which reports where.
        if let Ok(text) = std::str::from_utf8(bytes) {
            let fields: Fields<'_> = serde_json::from_str(text).map_err(|e| not_json(&e))?;
            if let Some(msg) = fields.into_record()? {
                return Ok(msg);
            }
        }
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| not_json(&e))?;
    decode_value(value)
}

/// The top-level fields of a message, each as borrowed raw JSON: the usual ones in slots, the
/// rest (rare) in a list that allocates only when used.
#[derive(Default)]
struct Fields<'a> {
    ty: Option<&'a RawValue>,
    stream: Option<&'a RawValue>,
    record: Option<&'a RawValue>,
    version: Option<&'a RawValue>,
    time_extracted: Option<&'a RawValue>,
    rest: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut f = Fields::default();
                while let Some(k) = map.next_key::<Key<'de>>()? {
                    let v = map.next_value::<&'de RawValue>()?;
                    match k.0.as_ref() {
                        "type" => f.ty = Some(v),
                        "stream" => f.stream = Some(v),
                        "record" => f.record = Some(v),
                        "version" => f.version = Some(v),
                        "time_extracted" => f.time_extracted = Some(v),
                        _ => f.rest.push((k.0, v)),
                    }
                }
                Ok(f)
            }
        }
        d.deserialize_map(V)
    }
}

/// A map key, borrowed from the input when it has no escapes.
pub(crate) struct Key<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl Fields<'_> {
    /// The message, if this is a well-formed RECORD; `None` sends the line down the general
    /// path (other types, and every malformed RECORD, which that path reports precisely).
    fn into_record(self) -> Result<Option<Message>, DecodeErrorKind> {
        let is_record = self
            .ty
            .is_some_and(|v| v.get().eq_ignore_ascii_case("\"RECORD\"") || matches!(serde_json::from_str::<Cow<'_, str>>(v.get()), Ok(t) if t.eq_ignore_ascii_case("RECORD")));
        if !is_record {
            return Ok(None);
        }
        // A borrowed field is valid JSON, so a string's text can be read without a parser.
        let Some(stream) = self
            .stream
            .filter(|v| v.get().starts_with('"'))
            .map(|v| crate::schema::scan::string_at(v.get(), &mut 0).into_owned())
        else {
            return Ok(None);
        };
        let Some(record) = self.record.filter(|r| r.get().starts_with('{')) else {
            return Ok(None);
        };
        let version = match self.version.map(|v| serde_json::from_str::<Value>(v.get())) {
            None | Some(Ok(Value::Null)) => None,
            Some(Ok(n)) => Some(as_version(&n, "RECORD").map_err(|e| e.in_stream(Some(&stream)))?),
            Some(Err(_)) => return Ok(None),
        };
        let time_extracted = match self
            .time_extracted
            .map(|v| serde_json::from_str::<Option<String>>(v.get()))
        {
            None => None,
            Some(Ok(t)) => t,
            Some(Err(_)) => return Ok(None),
        };
        let mut extra = Map::new();
        for (k, v) in self.rest {
            let Ok(val) = serde_json::from_str::<Value>(v.get()) else {
                return Ok(None);
            };
            extra.insert(k.into_owned(), val);
        }
        Ok(Some(Message::Record(RecordMessage {
            stream,
            record: Record::Raw(record.to_owned()),
            version,
            time_extracted,
            extra,
        })))
    }
}

/// Decodes an already-parsed JSON value into a message.
///
/// # Errors
/// A [`DecodeErrorKind`] saying what is wrong.
pub fn decode_value(value: Value) -> Result<Message, DecodeErrorKind> {
    // A field error names the message's stream, when it has one, so the user knows where to look.
    let stream = value
        .get("stream")
        .and_then(Value::as_str)
        .map(str::to_owned);
    decode_fields(value).map_err(|e| e.in_stream(stream.as_deref()))
}

fn decode_fields(value: Value) -> Result<Message, DecodeErrorKind> {
    let Value::Object(map) = value else {
        return Err(DecodeErrorKind::NotObject(json_kind(&value)));
    };
    // One pass over the fields: no hashing, and unknown fields keep their order.
    let mut ty: Option<Value> = None;
    let mut stream = None;
    let mut record = None;
    let mut schema = None;
    let mut key_properties = None;
    let mut bookmark_properties = None;
    let mut value = None;
    let mut version = None;
    let mut time_extracted = None;
    let mut extra = Map::new();
    for (k, v) in map {
        match k.as_str() {
            "type" => ty = Some(v),
            "stream" => stream = Some(v),
            "record" => record = Some(v),
            "schema" => schema = Some(v),
            "key_properties" => key_properties = Some(v),
            "bookmark_properties" => bookmark_properties = Some(v),
            "value" => value = Some(v),
            "version" => version = Some(v),
            "time_extracted" => time_extracted = Some(v),
            _ => {
                extra.insert(k, v);
            }
        }
    }
    let ty = match ty {
        Some(Value::String(s)) => s,
        Some(other) => return Err(DecodeErrorKind::UnknownType(other.to_string())),
        None => return Err(DecodeErrorKind::MissingType),
    };
    // The type is matched case-insensitively, as singer-python does. Fields that belong to
    // another message type are kept as extras rather than dropped.
    let mut keep = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            extra.insert(k.to_owned(), v);
        }
    };
    if ty.eq_ignore_ascii_case("RECORD") {
        const T: &str = "RECORD";
        let stream = take_string(stream, T, "stream")?;
        let record = match record {
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(field_err(
                    T,
                    "record",
                    format!("must be an object, got {}", json_kind(&other)),
                ))
            }
            None => return Err(field_err(T, "record", "is missing")),
        };
        let version = match version {
            None | Some(Value::Null) => None,
            Some(v) => Some(as_version(&v, T)?),
        };
        let time_extracted = match time_extracted {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                return Err(field_err(
                    T,
                    "time_extracted",
                    format!("must be a string, got {}", json_kind(&other)),
                ))
            }
        };
        keep("schema", schema);
        keep("key_properties", key_properties);
        keep("bookmark_properties", bookmark_properties);
        keep("value", value);
        Ok(Message::Record(RecordMessage {
            stream,
            record: Record::Map(record),
            version,
            time_extracted,
            extra,
        }))
    } else if ty.eq_ignore_ascii_case("SCHEMA") {
        const T: &str = "SCHEMA";
        let stream = take_string(stream, T, "stream")?;
        let schema = match schema {
            Some(v @ Value::Object(_)) => v,
            Some(Value::Bool(b)) => Value::Bool(b),
            Some(other) => {
                return Err(field_err(
                    T,
                    "schema",
                    format!("must be a JSON Schema object, got {}", json_kind(&other)),
                ))
            }
            None => return Err(field_err(T, "schema", "is missing")),
        };
        let key_properties = string_list(key_properties, T, "key_properties")?.unwrap_or_default();
        let bookmark_properties = string_list(bookmark_properties, T, "bookmark_properties")?;
        keep("record", record);
        keep("value", value);
        keep("version", version);
        keep("time_extracted", time_extracted);
        Ok(Message::Schema(SchemaMessage {
            stream,
            schema,
            key_properties,
            bookmark_properties,
            extra,
        }))
    } else if ty.eq_ignore_ascii_case("STATE") {
        let Some(value) = value else {
            return Err(field_err("STATE", "value", "is missing"));
        };
        keep("stream", stream);
        keep("record", record);
        keep("schema", schema);
        keep("key_properties", key_properties);
        keep("bookmark_properties", bookmark_properties);
        keep("version", version);
        keep("time_extracted", time_extracted);
        Ok(Message::State(StateMessage { value, extra }))
    } else if ty.eq_ignore_ascii_case("ACTIVATE_VERSION") {
        const T: &str = "ACTIVATE_VERSION";
        let stream = take_string(stream, T, "stream")?;
        let version = match version {
            Some(v) => as_version(&v, T)?,
            None => return Err(field_err(T, "version", "is missing")),
        };
        keep("record", record);
        keep("schema", schema);
        keep("key_properties", key_properties);
        keep("bookmark_properties", bookmark_properties);
        keep("value", value);
        keep("time_extracted", time_extracted);
        Ok(Message::ActivateVersion(ActivateVersionMessage {
            stream,
            version,
            extra,
        }))
    } else {
        Err(DecodeErrorKind::UnknownType(ty))
    }
}

fn string_list(
    v: Option<Value>,
    msg_type: &'static str,
    field: &'static str,
) -> Result<Option<Vec<String>>, DecodeErrorKind> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                other => Err(field_err(
                    msg_type,
                    field,
                    format!("must list strings, found {}", json_kind(&other)),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(field_err(
            msg_type,
            field,
            format!("must be an array of strings, got {}", json_kind(&other)),
        )),
    }
}

/// Writes one message as a JSON line.
///
/// # Errors
/// Any I/O error from `w` (a broken pipe included).
pub fn write_message(w: &mut impl Write, msg: &Message) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, msg).map_err(std::io::Error::from)?;
    w.write_all(b"\n")
}

/// Reads JSON lines from `reader` and hands them to `sink` in chunks of up to `chunk` messages.
/// Blank lines are skipped (but counted, so line numbers match the input).
///
/// Returns the number of lines read.
///
/// # Errors
/// A [`DecodeError`] for the first bad line, an I/O error, or whatever `sink` returns (a closed
/// channel when the consumer has stopped).
pub fn read_lines<R: std::io::Read>(
    mut reader: std::io::BufReader<R>,
    chunk: usize,
    mut sink: impl FnMut(Vec<Envelope>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    // A line that spans the reader's buffer is gathered here; others are decoded in place.
    let mut partial = Vec::new();
    let mut line = 0u64;
    let mut out = Vec::with_capacity(chunk);
    let mut take = |bytes: &[u8],
                    out: &mut Vec<Envelope>,
                    sink: &mut dyn FnMut(Vec<Envelope>) -> anyhow::Result<()>|
     -> anyhow::Result<()> {
        line += 1;
        let trimmed = trim_ascii(bytes);
        if trimmed.is_empty() {
            return Ok(());
        }
        let msg = decode(trimmed).map_err(|kind| DecodeError { line, kind })?;
        // A STATE goes out at once, so the consumer can commit without waiting for a full chunk.
        let is_state = matches!(msg, Message::State(_));
        out.push(Envelope {
            line,
            msg,
            check: Check::Pending,
        });
        if out.len() >= chunk || is_state {
            sink(std::mem::replace(out, Vec::with_capacity(chunk)))?;
        }
        Ok(())
    };
    loop {
        // About to wait on the input: hand over what is queued, so a slow producer's
        // messages are not held back until a chunk fills.
        if reader.buffer().is_empty() && !out.is_empty() {
            sink(std::mem::replace(&mut out, Vec::with_capacity(chunk)))?;
        }
        let avail = reader.fill_buf()?;
        if avail.is_empty() {
            if !partial.is_empty() {
                take(&partial, &mut out, &mut sink)?;
            }
            break;
        }
        let used = match memchr::memchr(b'\n', avail) {
            Some(end) if partial.is_empty() => {
                take(&avail[..end], &mut out, &mut sink)?;
                end + 1
            }
            Some(end) => {
                partial.extend_from_slice(&avail[..end]);
                take(&partial, &mut out, &mut sink)?;
                partial.clear();
                end + 1
            }
            None => {
                partial.extend_from_slice(avail);
                avail.len()
            }
        };
        reader.consume(used);
    }
    if !out.is_empty() {
        sink(out)?;
    }
    Ok(line)
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(line: &str) -> Value {
        let msg = decode(line.as_bytes()).unwrap();
        let mut out = Vec::new();
        write_message(&mut out, &msg).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    // The examples of the Singer specification (SPEC.md), verbatim.
    #[test]
    fn spec_examples_roundtrip() {
        let lines = [
            r#"{"type": "SCHEMA", "stream": "users", "key_properties": ["id"], "schema": {"required": ["id"], "type": "object", "properties": {"id": {"type": "integer"}}}}"#,
            r#"{"type": "RECORD", "stream": "users", "record": {"id": 1, "name": "Chris"}}"#,
            r#"{"type": "STATE", "value": {"users": 2, "locations": 1}}"#,
            r#"{"type": "SCHEMA", "stream": "users", "schema": {"properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "updated_at": {"type": "string", "format": "date-time"}}}, "key_properties": ["id"], "bookmark_properties": ["updated_at"]}"#,
            r#"{"type": "RECORD", "stream": "users", "record": {"id": 0, "name": "Chris"}, "time_extracted": "2017-11-14T04:22:29.371551Z", "version": 1509568800000}"#,
            r#"{"type": "ACTIVATE_VERSION", "stream": "users", "version": 1509568800000}"#,
        ];
        for l in lines {
            let orig: Value = serde_json::from_str(l).unwrap();
            assert_eq!(roundtrip(l), orig, "{l}");
        }
    }

    #[test]
    fn records_take_the_raw_path() {
        let line = r#"{"type":"RECORD","stream":"s","record":{"id":1,"n":"ü \" x"},"version":3,"time_extracted":"2024-01-01T00:00:00Z","x":[1]}"#;
        let Message::Record(r) = decode(line.as_bytes()).unwrap() else {
            panic!()
        };
        assert!(matches!(r.record, Record::Raw(_)));
        assert_eq!(r.version, Some(3));
        assert_eq!(r.extra["x"], json!([1]));
        assert_eq!(r.record.to_map().unwrap()["n"], json!("ü \" x"));
        // A malformed record goes down the general path, which names the problem.
        let err = decode(br#"{"type":"RECORD","stream":1,"record":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"stream\" must be a string"), "{err}");
        // Escapes in the type and stream are read like any JSON string.
        let Message::Record(r) =
            decode(br#"{"type":"\u0052ecord","stream":"a\"b\u00e9","record":{}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.stream, "a\"b\u{e9}");
        // Invalid UTF-8, inside the record or out of it, is an error naming the line's JSON.
        for line in [
            &b"{\"type\":\"RECORD\",\"stream\":\"s\",\"record\":{\"n\":\"\xff\"}}"[..],
            &b"{\"type\":\"RECORD\",\"stream\":\"s\xc3\",\"record\":{}}"[..],
        ] {
            let err = decode(line).unwrap_err().to_string();
            assert!(err.contains("not JSON") || err.contains("unicode"), "{err}");
        }
    }

    #[test]
    fn unknown_fields_kept_and_type_case_insensitive() {
        let v = roundtrip(r#"{"type":"record","stream":"s","record":{"a":1},"sequence":7}"#);
        assert_eq!(
            v,
            json!({"type":"RECORD","stream":"s","record":{"a":1},"sequence":7})
        );
    }

    #[test]
    fn decimals_are_exact() {
        let v = roundtrip(
            r#"{"type":"RECORD","stream":"s","record":{"a":12345678901234567890.123456789012345678}}"#,
        );
        assert_eq!(
            v["record"]["a"].to_string(),
            "12345678901234567890.123456789012345678"
        );
    }

    #[test]
    fn bad_lines_are_named() {
        let cases = [
            ("not json", "not JSON"),
            ("[1]", "must be a JSON object"),
            (r#"{"stream":"s"}"#, "no \"type\""),
            (r#"{"type":"FOO"}"#, "unknown message type \"FOO\""),
            (
                r#"{"type":"RECORD","record":{}}"#,
                "field \"stream\" is missing",
            ),
            (
                r#"{"type":"RECORD","stream":"orders","record":[1]}"#,
                "RECORD message of stream \"orders\": field \"record\" must be an object",
            ),
            (
                r#"{"type":"SCHEMA","stream":"orders","schema":3}"#,
                "SCHEMA message of stream \"orders\": field \"schema\" must be a JSON Schema",
            ),
            (
                r#"{"type":"RECORD","stream":"orders","record":{},"version":"x"}"#,
                "of stream \"orders\": field \"version\"",
            ),
            (r#"{"type":"STATE"}"#, "\"value\" is missing"),
            (
                r#"{"type":"ACTIVATE_VERSION","stream":"s","version":"x"}"#,
                "integer",
            ),
        ];
        for (line, want) in cases {
            let err = decode(line.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn lines_across_the_read_buffer_decode_the_same() {
        let mut input = String::new();
        for i in 0..50 {
            input += &format!(
                "{{\"type\":\"RECORD\",\"stream\":\"s\",\"record\":{{\"id\":{i},\"n\":\"{}\"}}}}\r\n",
                "é".repeat(i % 7)
            );
            if i % 9 == 0 {
                input += "\n  \n";
            }
        }
        input += r#"{"type":"STATE","value":{"last":true}}"#; // no final newline
        let read = |cap: usize| {
            let mut got = Vec::new();
            let lines = read_lines(
                std::io::BufReader::with_capacity(cap, input.as_bytes()),
                8,
                |c| {
                    got.extend(c);
                    Ok(())
                },
            )
            .unwrap();
            (lines, got)
        };
        let (lines, whole) = read(1 << 16);
        assert_eq!(whole.len(), 51);
        assert_eq!(lines, 50 + 6 * 2 + 1);
        for cap in [1, 7, 64, 100] {
            assert_eq!(read(cap), (lines, whole.clone()), "buffer of {cap} bytes");
        }
    }

    #[test]
    fn reader_counts_lines_and_skips_blanks() {
        let input = b"{\"type\":\"RECORD\",\"stream\":\"s\",\"record\":{}}\n\n{\"type\":\"RECORD\",\"stream\":\"s\",\"record\":{}}\nnope\n";
        let mut got = Vec::new();
        let err = read_lines(std::io::BufReader::new(&input[..]), 10, |c| {
            got.extend(c);
            Ok(())
        })
        .unwrap_err();
        let de = err.downcast_ref::<DecodeError>().unwrap();
        assert_eq!(de.line, 4);
        assert!(
            got.is_empty(),
            "a chunk is handed over only when full or at the end"
        );
    }
}
