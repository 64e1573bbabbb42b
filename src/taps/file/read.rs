//! Reading one CSV or JSON-lines file into records, typed by the stream's schema.

use std::fs::File;
use std::io::{BufRead, BufReader};

use anyhow::{anyhow, Context};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use crate::singer::Record;

use super::{FileSpec, Format};
use crate::schema::infer::RecordInferrer;

/// How a CSV cell is turned into a JSON value, from the property's schema.
#[derive(Debug, Clone, Copy, Default)]
pub struct CellType {
    null: bool,
    integer: bool,
    number: bool,
    boolean: bool,
    string: bool,
    json: bool,
}

impl CellType {
    /// From a property schema (`type`, a type list, or `anyOf`).
    pub fn from_schema(schema: &Value) -> CellType {
        let mut t = CellType::default();
        fn walk(s: &Value, t: &mut CellType) {
            let mut names: Vec<&str> = match s.get("type") {
                Some(Value::String(x)) => vec![x.as_str()],
                Some(Value::Array(xs)) => xs.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if names.is_empty() && s.get("anyOf").is_none() && s.get("oneOf").is_none() {
                names = vec!["string", "null"];
            }
            for n in names {
                match n {
                    "null" => t.null = true,
                    "integer" => t.integer = true,
                    "number" => t.number = true,
                    "boolean" => t.boolean = true,
                    "string" => t.string = true,
                    _ => t.json = true,
                }
            }
            for k in ["anyOf", "oneOf"] {
                if let Some(Value::Array(alts)) = s.get(k) {
                    for a in alts {
                        walk(a, t);
                    }
                }
            }
        }
        walk(schema, &mut t);
        t
    }

    /// Converts one cell.
    ///
    /// # Errors
    /// A message saying which types the cell failed to be.
    pub fn convert(self, cell: &str) -> Result<Value, String> {
        if cell.is_empty() {
            if self.null {
                return Ok(Value::Null);
            }
            if self.string {
                return Ok(Value::String(String::new()));
            }
            return Err("an empty cell, but the schema does not allow null".into());
        }
        let trimmed = cell.trim();
        if self.integer && is_integer_text(trimmed) {
            if let Ok(n) = trimmed.parse::<Number>() {
                return Ok(Value::Number(n));
            }
        }
        if self.number && is_number_text(trimmed) {
            if let Ok(n) = trimmed.parse::<Number>() {
                return Ok(Value::Number(n));
            }
        }
        if self.boolean {
            match trimmed.to_ascii_lowercase().as_str() {
                "true" | "t" | "1" | "yes" => return Ok(Value::Bool(true)),
                "false" | "f" | "0" | "no" => return Ok(Value::Bool(false)),
                _ => {}
            }
        }
        if self.json && (trimmed.starts_with('{') || trimmed.starts_with('[')) {
            if let Ok(v) = serde_json::from_str(trimmed) {
                return Ok(v);
            }
        }
        if self.string {
            return Ok(Value::String(cell.to_owned()));
        }
        let mut wanted = Vec::new();
        for (b, n) in [
            (self.integer, "an integer"),
            (self.number, "a number"),
            (self.boolean, "a boolean"),
            (self.json, "JSON"),
        ] {
            if b {
                wanted.push(n);
            }
        }
        Err(format!(
            "{:?} is not {}",
            excerpt(cell),
            wanted.join(" or ")
        ))
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => out.push_str(&format!("\\u{b:04x}")),
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Whether `s` is a number exactly as JSON writes one.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let st = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - st
    };
    let int_start = i;
    let n = digits(&mut i);
    if n == 0 || (n > 1 && b[int_start] == b'0') {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

impl CellType {
    /// Appends one cell as JSON text: the fast path of [`CellType::convert`], same rules.
    ///
    /// # Errors
    /// As [`CellType::convert`].
    pub fn write_json(self, cell: &str, out: &mut String) -> Result<(), String> {
        if cell.is_empty() {
            if self.null {
                out.push_str("null");
                return Ok(());
            }
            if self.string {
                out.push_str("\"\"");
                return Ok(());
            }
        }
        let trimmed = cell.trim();
        if (self.integer && is_integer_text(trimmed) || self.number && is_number_text(trimmed))
            && is_json_number(trimmed)
        {
            out.push_str(trimmed);
            return Ok(());
        }
        if self.string && !self.integer && !self.number && !self.boolean && !self.json {
            push_json_str(out, cell);
            return Ok(());
        }
        // Everything rarer goes through the tree conversion.
        let v = self.convert(cell)?;
        out.push_str(&v.to_string());
        Ok(())
    }
}

fn excerpt(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn is_integer_text(s: &str) -> bool {
    let d = s.strip_prefix(['-', '+']).unwrap_or(s);
    !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
}

fn is_number_text(s: &str) -> bool {
    let d = s.strip_prefix(['-', '+']).unwrap_or(s);
    let mut seen_digit = false;
    let mut seen_dot = false;
    let mut seen_e = false;
    let mut prev = b' ';
    for b in d.bytes() {
        match b {
            b'0'..=b'9' => seen_digit = true,
            b'.' if !seen_dot && !seen_e => seen_dot = true,
            b'e' | b'E' if seen_digit && !seen_e => seen_e = true,
            b'+' | b'-' if prev == b'e' || prev == b'E' => {}
            _ => return false,
        }
        prev = b;
    }
    seen_digit && !matches!(prev, b'e' | b'E' | b'+' | b'-')
}

/// A column to produce: its index in the file, its name, how to convert it.
#[derive(Debug, Clone)]
pub struct ColumnPlan {
    index: usize,
    name: String,
    ty: CellType,
    /// `"name":`, escaped once per file rather than once per row.
    key_json: String,
}

/// An open file being read.
pub enum RowReader {
    /// CSV with its header.
    Csv {
        /// The path, for messages.
        path: String,
        /// The reader.
        reader: csv::Reader<BufReader<File>>,
        /// Column names from the header row.
        header: Vec<String>,
        /// A reusable row buffer.
        row: csv::StringRecord,
    },
    /// JSON lines.
    Jsonl {
        /// The path, for messages.
        path: String,
        /// The reader.
        reader: BufReader<File>,
        /// Lines read so far.
        line: u64,
        /// A reusable line buffer.
        buf: Vec<u8>,
    },
}

impl RowReader {
    /// Opens a file.
    ///
    /// # Errors
    /// When it cannot be opened, or a CSV file has no readable header.
    pub fn open(format: Format, spec: &FileSpec, path: &str) -> anyhow::Result<RowReader> {
        let file = File::open(path).with_context(|| format!("cannot open {path}"))?;
        let reader = BufReader::with_capacity(1 << 16, file);
        match format {
            Format::Jsonl => Ok(RowReader::Jsonl {
                path: path.to_owned(),
                reader,
                line: 0,
                buf: Vec::with_capacity(4096),
            }),
            Format::Csv => {
                let delim = spec.delimiter.as_deref().map_or(b',', |d| d.as_bytes()[0]);
                let quote = spec.quotechar.as_deref().map_or(b'"', |q| q.as_bytes()[0]);
                let mut reader = csv::ReaderBuilder::new()
                    .delimiter(delim)
                    .quote(quote)
                    .has_headers(true)
                    .flexible(true)
                    .from_reader(reader);
                let header = reader
                    .headers()
                    .map_err(|e| anyhow!("{path}: cannot read the CSV header row: {e}"))?
                    .iter()
                    .map(|h| h.trim_start_matches('\u{feff}').to_owned())
                    .collect();
                Ok(RowReader::Csv {
                    path: path.to_owned(),
                    reader,
                    header,
                    row: csv::StringRecord::new(),
                })
            }
        }
    }

    /// The CSV header, if this is a CSV file.
    pub fn header(&self) -> Option<&[String]> {
        match self {
            RowReader::Csv { header, .. } => Some(header),
            RowReader::Jsonl { .. } => None,
        }
    }

    /// Plans the columns of a stream for this file's header (CSV) from the stream schema;
    /// a selected schema column missing from the file is an error.
    ///
    /// # Errors
    /// When the file lacks a column the schema requires (a key property or a non-null one).
    pub fn plan(
        &self,
        schema: &Value,
        selected: &dyn Fn(&str) -> bool,
        keys: &[String],
    ) -> anyhow::Result<Vec<ColumnPlan>> {
        let RowReader::Csv { header, path, .. } = self else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let props = schema.get("properties").and_then(Value::as_object);
        for (index, name) in header.iter().enumerate() {
            if !selected(name) {
                continue;
            }
            let ty = props.and_then(|p| p.get(name)).map_or(
                CellType {
                    string: true,
                    null: true,
                    ..Default::default()
                },
                CellType::from_schema,
            );
            let mut key_json = String::new();
            push_json_str(&mut key_json, name);
            key_json.push(':');
            out.push(ColumnPlan {
                index,
                name: name.clone(),
                ty,
                key_json,
            });
        }
        for k in keys {
            if !header.contains(k) {
                return Err(anyhow!(
                    "{path}: key column {k:?} is missing from the header"
                ));
            }
        }
        Ok(out)
    }

    /// Reads one row into an inferrer; false at the end of the file.
    ///
    /// # Errors
    /// A malformed row, with its line.
    pub fn infer_next(&mut self, inf: &mut RecordInferrer) -> anyhow::Result<bool> {
        match self {
            RowReader::Csv {
                path,
                reader,
                header,
                row,
            } => {
                if !reader.read_record(row).map_err(|e| csv_error(path, &e))? {
                    return Ok(false);
                }
                if row.len() != header.len() {
                    let line = row.position().map_or(0, csv::Position::line);
                    return Err(anyhow!(
                        "{path} line {line}: {} fields, but the header has {}",
                        row.len(),
                        header.len()
                    ));
                }
                inf.add_row(header, row.iter());
                Ok(true)
            }
            RowReader::Jsonl { .. } => match self.next_json()? {
                Some((_, m)) => {
                    inf.add(&m);
                    Ok(true)
                }
                None => Ok(false),
            },
        }
    }

    /// Reads the next non-blank line of a JSON-lines file into the buffer; its line number, or
    /// `None` at the end.
    fn next_line(&mut self) -> anyhow::Result<Option<u64>> {
        let RowReader::Jsonl {
            path,
            reader,
            line,
            buf,
        } = self
        else {
            return Ok(None);
        };
        loop {
            buf.clear();
            if reader
                .read_until(b'\n', buf)
                .with_context(|| format!("reading {path}"))?
                == 0
            {
                return Ok(None);
            }
            *line += 1;
            if !buf.trim_ascii().is_empty() {
                return Ok(Some(*line));
            }
        }
    }

    fn next_json(&mut self) -> anyhow::Result<Option<(u64, Map<String, Value>)>> {
        let Some(line) = self.next_line()? else {
            return Ok(None);
        };
        let RowReader::Jsonl { path, buf, .. } = self else {
            return Ok(None);
        };
        match serde_json::from_slice::<Value>(buf.trim_ascii()) {
            Ok(Value::Object(m)) => Ok(Some((line, m))),
            Ok(_) => Err(anyhow!(
                "{path} line {line}: each line must be a JSON object"
            )),
            Err(e) => Err(anyhow!("{path} line {line}: not valid JSON: {e}")),
        }
    }

    /// Reads the next record; `columns` comes from [`RowReader::plan`] (CSV), `keep` filters
    /// JSON properties (None keeps all), `meta_file` adds the metadata columns. Returns the line
    /// number with the record, which is raw JSON text unless properties had to be filtered.
    ///
    /// # Errors
    /// A malformed row or a cell that does not convert to its schema type, with file, line and
    /// column.
    pub fn next_record(
        &mut self,
        columns: &[ColumnPlan],
        keep: Option<&dyn Fn(&str) -> bool>,
        meta_file: Option<&str>,
    ) -> anyhow::Result<Option<(u64, Record)>> {
        match self {
            RowReader::Csv {
                path,
                reader,
                row,
                header,
            } => {
                if !reader.read_record(row).map_err(|e| csv_error(path, &e))? {
                    return Ok(None);
                }
                let line = row.position().map_or(0, csv::Position::line);
                if row.len() != header.len() {
                    return Err(anyhow!(
                        "{path} line {line}: {} fields, but the header has {}",
                        row.len(),
                        header.len()
                    ));
                }
                // The record is written as JSON text directly: no map, no per-row key strings.
                let mut text = String::with_capacity(row.as_slice().len() + columns.len() * 16 + 2);
                text.push('{');
                for (j, c) in columns.iter().enumerate() {
                    if j > 0 {
                        text.push(',');
                    }
                    text.push_str(&c.key_json);
                    let cell = row.get(c.index).unwrap_or("");
                    c.ty.write_json(cell, &mut text)
                        .map_err(|e| anyhow!("{path} line {line}, column {:?}: {e}", c.name))?;
                }
                if let Some(f) = meta_file {
                    push_meta(&mut text, !columns.is_empty(), f, line);
                }
                text.push('}');
                // The row is JSON this tap wrote: no need to parse it again.
                Ok(Some((line, Record::from_own_json(text)?)))
            }
            RowReader::Jsonl { .. } if keep.is_none() => self.next_raw_json(meta_file),
            RowReader::Jsonl { .. } => {
                let Some((line, mut m)) = self.next_json()? else {
                    return Ok(None);
                };
                if let Some(keep) = keep {
                    m.retain(|k, _| keep(k));
                }
                if let Some(f) = meta_file {
                    m.insert(super::SOURCE_FILE.into(), Value::String(f.to_owned()));
                    m.insert(super::SOURCE_LINENO.into(), Value::from(line));
                }
                Ok(Some((line, Record::Map(m))))
            }
        }
    }

    /// The next JSON line kept as text (checked to be an object).
    fn next_raw_json(&mut self, meta_file: Option<&str>) -> anyhow::Result<Option<(u64, Record)>> {
        let Some(line) = self.next_line()? else {
            return Ok(None);
        };
        let RowReader::Jsonl { path, buf, .. } = self else {
            return Ok(None);
        };
        let text = std::str::from_utf8(buf.trim_ascii())
            .map_err(|e| anyhow!("{path} line {line}: not UTF-8: {e}"))?;
        if !text.starts_with('{') {
            return Err(match serde_json::from_str::<Value>(text) {
                Ok(_) => anyhow!("{path} line {line}: each line must be a JSON object"),
                Err(e) => anyhow!("{path} line {line}: not valid JSON: {e}"),
            });
        }
        let text = match meta_file {
            None => text.to_owned(),
            Some(f) => {
                let body = text[..text.len() - 1].trim_end();
                let mut t = String::with_capacity(text.len() + f.len() + 48);
                t.push_str(body);
                push_meta(&mut t, body != "{", f, line);
                t.push('}');
                t
            }
        };
        let raw = RawValue::from_string(text)
            .map_err(|e| anyhow!("{path} line {line}: not valid JSON: {e}"))?;
        Ok(Some((line, Record::Raw(raw))))
    }
}

fn push_meta(text: &mut String, comma: bool, file: &str, line: u64) {
    if comma {
        text.push(',');
    }
    text.push_str("\"_sdc_source_file\":");
    push_json_str(text, file);
    text.push_str(",\"_sdc_source_lineno\":");
    text.push_str(&line.to_string());
}

fn csv_error(path: &str, e: &csv::Error) -> anyhow::Error {
    match e.position() {
        Some(p) => anyhow!("{path} line {}: malformed CSV: {e}", p.line()),
        None => anyhow!("{path}: malformed CSV: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_cells_as_json_text() {
        let cases = [
            (json!({"type": ["null", "integer"]}), "42", "42"),
            (json!({"type": ["null", "integer"]}), "", "null"),
            (
                json!({"type": "number"}),
                "12345678901234567890.000000001",
                "12345678901234567890.000000001",
            ),
            (
                json!({"type": "string"}),
                "a \"q\" \\ \n\t\u{1}é",
                r#""a \"q\" \\ \n\tu0001é""#,
            ),
            (json!({"type": "string"}), "", r#""""#),
            (json!({"type": "boolean"}), "TRUE", "true"),
            (
                json!({"type": ["object", "null"]}),
                "{\"a\": 1}",
                r#"{"a":1}"#,
            ),
            (
                json!({"anyOf": [{"type": "integer"}, {"type": "string"}]}),
                "007",
                r#""007""#,
            ),
        ];
        for (schema, cell, want) in cases {
            let mut out = String::new();
            CellType::from_schema(&schema)
                .write_json(cell, &mut out)
                .unwrap();
            let want = want.replace("\\tu0001", "\\t\\u0001");
            assert_eq!(out, want, "{cell:?}");
            assert_eq!(
                serde_json::from_str::<Value>(&out).unwrap(),
                CellType::from_schema(&schema).convert(cell).unwrap(),
                "{cell:?}"
            );
        }
        assert!(is_json_number("-0.5e+3"));
        assert!(!is_json_number("007"));
        assert!(!is_json_number("+1"));
        assert!(!is_json_number("1."));
    }

    proptest::proptest! {
        /// The CSV tap's rows are handed on without a parse (`Record::from_own_json`), so every
        /// cell it writes must be valid JSON, whatever the cell holds.
        #[test]
        fn every_written_cell_is_json(cell in "\\PC{0,12}|[-+0-9.eE ]{0,8}|\\PC*") {
            for schema in [
                json!({"type": "integer"}), json!({"type": ["null", "number"]}),
                json!({"type": "string"}), json!({"type": "boolean"}), json!({"type": "object"}),
                json!({"type": "string", "format": "date-time"}),
                json!({"anyOf": [{"type": "integer"}, {"type": "string"}]}),
            ] {
                let mut out = String::new();
                if CellType::from_schema(&schema).write_json(&cell, &mut out).is_ok() {
                    proptest::prop_assert!(serde_json::from_str::<Value>(&out).is_ok(), "{cell:?} -> {out}");
                }
            }
        }
    }

    #[test]
    fn converts_cells_by_schema() {
        let int = CellType::from_schema(&json!({"type": ["null", "integer"]}));
        assert_eq!(int.convert("42").unwrap(), json!(42));
        assert_eq!(int.convert("").unwrap(), Value::Null);
        assert!(int.convert("4.2").unwrap_err().contains("not an integer"));
        let num = CellType::from_schema(&json!({"type": "number"}));
        assert_eq!(
            num.convert("12345678901234567890.000000001")
                .unwrap()
                .to_string(),
            "12345678901234567890.000000001"
        );
        assert!(num.convert("").is_err());
        let b = CellType::from_schema(&json!({"type": "boolean"}));
        assert_eq!(b.convert("TRUE").unwrap(), json!(true));
        let s = CellType::from_schema(&json!({"type": "string", "format": "date-time"}));
        assert_eq!(s.convert("").unwrap(), json!(""));
        let obj = CellType::from_schema(&json!({"type": ["object", "null"]}));
        assert_eq!(obj.convert("{\"a\": 1}").unwrap(), json!({"a": 1}));
        let mixed =
            CellType::from_schema(&json!({"anyOf": [{"type": "integer"}, {"type": "string"}]}));
        assert_eq!(mixed.convert("7").unwrap(), json!(7));
        assert_eq!(mixed.convert("x").unwrap(), json!("x"));
    }
}
