//! Schema inference for taps that read untyped data (JSON lines, CSV): types are widened
//! across every value seen, a property missing from some records is nullable, nested objects
//! keep their structure.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::validate::parse_date_time;

/// What has been seen of one value position.
#[derive(Debug, Default, Clone)]
pub struct TypeAcc {
    count: u64,
    nulls: u64,
    bools: u64,
    ints: u64,
    numbers: u64,
    strings: u64,
    date_times: u64,
    dates: u64,
    objects: u64,
    arrays: u64,
    props: Vec<(String, TypeAcc)>,
    index: HashMap<String, usize>,
    items: Option<Box<TypeAcc>>,
}

/// How a CSV cell's text was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    /// Empty: null.
    Null,
    /// `true`/`false` in any case.
    Boolean,
    /// A whole number without leading zeros (so zip codes and ids like `007` stay text).
    Integer,
    /// A plain decimal number.
    Number,
    /// `YYYY-MM-DD`.
    Date,
    /// An ISO 8601 date-time.
    DateTime,
    /// Anything else.
    String,
}

/// Classifies a CSV cell.
pub fn classify_cell(s: &str) -> CellKind {
    if s.is_empty() {
        return CellKind::Null;
    }
    if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") {
        return CellKind::Boolean;
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let int_ok = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && (int == "0" || !int.starts_with('0'));
    if int_ok {
        match frac {
            None => return CellKind::Integer,
            Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
                return CellKind::Number
            }
            _ => {}
        }
    }
    if s.len() == 10 && parse_date_time(s) {
        return CellKind::Date;
    }
    if s.len() > 10 && parse_date_time(s) {
        return CellKind::DateTime;
    }
    CellKind::String
}

impl TypeAcc {
    /// Records one JSON value.
    pub fn add(&mut self, v: &Value) {
        self.count += 1;
        match v {
            Value::Null => self.nulls += 1,
            Value::Bool(_) => self.bools += 1,
            Value::Number(n) => {
                if n.is_i64() || n.is_u64() || !n.to_string().contains(['.', 'e', 'E']) {
                    self.ints += 1;
                } else {
                    self.numbers += 1;
                }
            }
            Value::String(s) => {
                self.strings += 1;
                if parse_date_time(s) {
                    if s.len() == 10 {
                        self.dates += 1;
                    } else {
                        self.date_times += 1;
                    }
                }
            }
            Value::Object(m) => {
                self.objects += 1;
                self.add_object(m);
            }
            Value::Array(items) => {
                self.arrays += 1;
                let acc = self.items.get_or_insert_with(Box::default);
                for it in items {
                    acc.add(it);
                }
            }
        }
    }

    /// Records the properties of one object (a record, or a nested object).
    pub fn add_object(&mut self, m: &Map<String, Value>) {
        for (k, v) in m {
            let i = match self.index.get(k) {
                Some(i) => *i,
                None => {
                    self.index.insert(k.clone(), self.props.len());
                    self.props.push((k.clone(), TypeAcc::default()));
                    self.props.len() - 1
                }
            };
            self.props[i].1.add(v);
        }
    }

    /// Records one CSV cell.
    pub fn add_cell(&mut self, s: &str) {
        self.count += 1;
        match classify_cell(s) {
            CellKind::Null => self.nulls += 1,
            CellKind::Boolean => self.bools += 1,
            CellKind::Integer => self.ints += 1,
            CellKind::Number => self.numbers += 1,
            CellKind::Date => {
                self.strings += 1;
                self.dates += 1;
            }
            CellKind::DateTime => {
                self.strings += 1;
                self.date_times += 1;
            }
            CellKind::String => self.strings += 1,
        }
    }

    /// The JSON Schema for what was seen; `always_present` is false when some parent objects
    /// lacked this property (it is then nullable).
    pub fn to_schema(&self, always_present: bool) -> Value {
        let mut types: Vec<&str> = Vec::new();
        let non_null = self.count - self.nulls;
        let scalar_kinds = [
            self.bools > 0,
            self.ints + self.numbers > 0,
            self.strings > 0,
            self.objects > 0,
            self.arrays > 0,
        ]
        .iter()
        .filter(|b| **b)
        .count();
        let mut format = None;
        if scalar_kinds > 1 && (self.objects > 0 || self.arrays > 0) {
            // Objects mixed with scalars: no single structure; leave the type open.
            return json!({});
        }
        if scalar_kinds > 1 {
            // Mixed scalars widen to string, the one type every value has a text form in.
            types.push("string");
        } else if self.bools > 0 {
            types.push("boolean");
        } else if self.numbers > 0 {
            types.push("number");
        } else if self.ints > 0 {
            types.push("integer");
        } else if self.strings > 0 {
            types.push("string");
            if self.dates == self.strings {
                format = Some("date");
            } else if self.dates + self.date_times == self.strings {
                format = Some("date-time");
            }
        } else if self.objects > 0 {
            types.push("object");
        } else if self.arrays > 0 {
            types.push("array");
        } else if non_null == 0 {
            // Only nulls seen: nothing is known but that it may be null; text holds anything later.
            types.push("string");
        }
        if self.nulls > 0 || !always_present {
            types.insert(0, "null");
        }
        let mut s = Map::new();
        s.insert(
            "type".into(),
            if types.len() == 1 {
                json!(types[0])
            } else {
                json!(types)
            },
        );
        if let Some(f) = format {
            s.insert("format".into(), json!(f));
        }
        if self.objects > 0 {
            s.insert(
                "properties".into(),
                Value::Object(self.properties_schema(self.objects)),
            );
        }
        if let Some(items) = &self.items {
            s.insert(
                "items".into(),
                if items.count == 0 {
                    json!({})
                } else {
                    items.to_schema(true)
                },
            );
        } else if self.arrays > 0 {
            s.insert("items".into(), json!({}));
        }
        Value::Object(s)
    }

    fn properties_schema(&self, parents: u64) -> Map<String, Value> {
        self.props
            .iter()
            .map(|(k, acc)| (k.clone(), acc.to_schema(acc.count == parents)))
            .collect()
    }
}

/// Infers a stream schema from records.
#[derive(Debug, Default)]
pub struct RecordInferrer {
    records: u64,
    root: TypeAcc,
}

impl RecordInferrer {
    /// Records one record.
    pub fn add(&mut self, record: &Map<String, Value>) {
        self.records += 1;
        self.root.add_object(record);
    }

    /// Records one CSV row given its header.
    pub fn add_row<'a>(&mut self, header: &[String], cells: impl Iterator<Item = &'a str>) {
        self.records += 1;
        for (i, cell) in cells.enumerate() {
            let Some(name) = header.get(i) else { break };
            let idx = match self.root.index.get(name) {
                Some(i) => *i,
                None => {
                    self.root.index.insert(name.clone(), self.root.props.len());
                    self.root.props.push((name.clone(), TypeAcc::default()));
                    self.root.props.len() - 1
                }
            };
            self.root.props[idx].1.add_cell(cell);
        }
    }

    /// Declares a column even if no row had it (a CSV header with no rows).
    pub fn declare(&mut self, name: &str) {
        if !self.root.index.contains_key(name) {
            self.root
                .index
                .insert(name.to_owned(), self.root.props.len());
            self.root.props.push((name.to_owned(), TypeAcc::default()));
        }
    }

    /// Number of records seen.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The stream's JSON Schema. Key properties are never nullable.
    pub fn schema(&self, keys: &[String]) -> Value {
        let mut props = self.root.properties_schema(self.records);
        for k in keys {
            if let Some(Value::Object(p)) = props.get_mut(k) {
                if let Some(Value::Array(ts)) = p.get("type").cloned() {
                    let rest: Vec<Value> = ts.into_iter().filter(|t| t != "null").collect();
                    p.insert(
                        "type".into(),
                        if rest.len() == 1 {
                            rest[0].clone()
                        } else {
                            Value::Array(rest)
                        },
                    );
                }
            }
        }
        json!({"type": "object", "properties": props})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widens_and_nulls() {
        let mut inf = RecordInferrer::default();
        for r in [
            json!({"id": 1, "amount": 1, "name": "a", "ts": "2024-01-01T00:00:00Z", "meta": {"x": 1}, "tags": ["a"]}),
            json!({"id": 2, "amount": 2.5, "name": null, "ts": "2024-01-02T00:00:00Z", "meta": {"y": "z"}, "tags": []}),
            json!({"id": 3, "amount": 3, "ts": "2024-01-03", "extra": true, "meta": {"x": 2}}),
        ] {
            inf.add(r.as_object().unwrap());
        }
        assert_eq!(
            inf.schema(&["id".into()]),
            json!({"type": "object", "properties": {
                "id": {"type": "integer"},
                "amount": {"type": "number"},
                "name": {"type": ["null", "string"]},
                "ts": {"type": "string", "format": "date-time"},
                "meta": {"type": "object", "properties": {"x": {"type": ["null", "integer"]}, "y": {"type": ["null", "string"]}}},
                "tags": {"type": ["null", "array"], "items": {"type": "string"}},
                "extra": {"type": ["null", "boolean"]}
            }})
        );
    }

    #[test]
    fn csv_cells() {
        assert_eq!(classify_cell("007"), CellKind::String);
        assert_eq!(classify_cell("0"), CellKind::Integer);
        assert_eq!(classify_cell("-12.50"), CellKind::Number);
        assert_eq!(classify_cell("TRUE"), CellKind::Boolean);
        assert_eq!(classify_cell("2024-02-29"), CellKind::Date);
        assert_eq!(classify_cell("2024-02-29 10:00:00"), CellKind::DateTime);
        assert_eq!(classify_cell("1e5"), CellKind::String);
        let mut inf = RecordInferrer::default();
        let header = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        inf.add_row(&header, ["1", "x", ""].into_iter());
        inf.add_row(&header, ["2.5", "2024-01-01", ""].into_iter());
        assert_eq!(
            inf.schema(&[]),
            json!({"type": "object", "properties": {
                "a": {"type": "number"}, "b": {"type": "string"}, "c": {"type": ["null", "string"]}
            }})
        );
    }
}
