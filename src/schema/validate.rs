//! A compiled JSON Schema validator for the subset Singer streams use.
//!
//! Compiled once per SCHEMA message into a tree, then run on every record without allocating
//! unless a record fails. Keywords outside the subset (`multipleOf`, …) are ignored, as JSON
//! Schema requires of unknown keywords; `pattern` is checked where the regex crate reads it
//! (an ECMA-only pattern is ignored); `format` is checked for `date-time`, `date`,
//! `time` and `x-singer.decimal`, because typed targets rely on it.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::SchemaError;

const NULL: u8 = 1;
const BOOLEAN: u8 = 2;
const INTEGER: u8 = 4;
const NUMBER: u8 = 8;
const STRING: u8 = 16;
const OBJECT: u8 = 32;
const ARRAY: u8 = 64;
const ANY: u8 = 0;

/// The deepest `$ref` chain followed before a schema is treated as "anything".
const MAX_REF_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    None,
    DateTime,
    Date,
    Time,
    Decimal,
}

#[derive(Debug, Default)]
enum Additional {
    #[default]
    Any,
    Deny,
    Schema(Box<Node>),
}

#[derive(Debug)]
struct Node {
    never: bool,
    types: u8,
    format: Format,
    properties: Vec<(String, Node)>,
    index: HashMap<String, usize>,
    required: Vec<String>,
    additional: Additional,
    items: Option<Box<Node>>,
    any_of: Vec<Node>,
    one_of: Vec<Node>,
    all_of: Vec<Node>,
    enumeration: Option<Vec<Value>>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: Option<f64>,
    exclusive_maximum: Option<f64>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    pattern: Option<regex::Regex>,
}

impl Node {
    /// A property's schema: a linear scan for the usual handful of properties (cheaper than
    /// hashing the key), the index past that.
    fn property(&self, name: &str) -> Option<&Node> {
        if self.properties.len() <= 16 {
            self.properties
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, n)| n)
        } else {
            self.index.get(name).map(|i| &self.properties[*i].1)
        }
    }

    fn any() -> Node {
        Node {
            never: false,
            types: ANY,
            format: Format::None,
            properties: Vec::new(),
            index: HashMap::new(),
            required: Vec::new(),
            additional: Additional::Any,
            items: None,
            any_of: Vec::new(),
            one_of: Vec::new(),
            all_of: Vec::new(),
            enumeration: None,
            minimum: None,
            maximum: None,
            exclusive_minimum: None,
            exclusive_maximum: None,
            min_length: None,
            max_length: None,
            pattern: None,
        }
    }
}

/// A record that does not match its schema.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", if path.is_empty() { "record" } else { path.as_str() })]
pub struct ValidationError {
    /// JSON pointer to the offending value (`/amount`, `/items/2/sku`).
    pub path: String,
    /// What is wrong, with an excerpt of the value.
    pub message: String,
}

/// A compiled schema.
#[derive(Debug)]
pub struct Validator {
    root: Node,
}

fn err(path: &str, problem: impl Into<String>) -> SchemaError {
    SchemaError {
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        problem: problem.into(),
    }
}

fn type_bit(name: &str) -> Option<u8> {
    Some(match name {
        "null" => NULL,
        "boolean" => BOOLEAN,
        "integer" => INTEGER,
        "number" => NUMBER,
        "string" => STRING,
        "object" => OBJECT,
        "array" => ARRAY,
        _ => return None,
    })
}

fn f64_of(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

fn usize_of(v: Option<&Value>) -> Option<usize> {
    v.and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
}

struct Compiler<'a> {
    root: &'a Value,
}

impl Compiler<'_> {
    fn compile(&self, schema: &Value, path: &str, depth: usize) -> Result<Node, SchemaError> {
        let obj = match schema {
            Value::Bool(true) => return Ok(Node::any()),
            Value::Bool(false) => {
                return Ok(Node {
                    never: true,
                    ..Node::any()
                })
            }
            Value::Object(o) => o,
            _ => return Err(err(path, "a schema must be an object or a boolean")),
        };
        if let Some(r) = obj.get("$ref") {
            let r = r
                .as_str()
                .ok_or_else(|| err(path, "\"$ref\" must be a string"))?;
            if depth >= MAX_REF_DEPTH {
                return Ok(Node::any());
            }
            let target = r
                .strip_prefix('#')
                .and_then(|p| self.root.pointer(p))
                .ok_or_else(|| {
                    err(
                        path,
                        format!("\"$ref\" {r:?} does not point into this schema"),
                    )
                })?;
            return self.compile(target, path, depth + 1);
        }
        let mut node = Node::any();
        match obj.get("type") {
            None => {}
            Some(Value::String(t)) => {
                node.types = type_bit(t).ok_or_else(|| err(path, format!("unknown type {t:?}")))?;
            }
            Some(Value::Array(ts)) => {
                for t in ts {
                    let t = t
                        .as_str()
                        .ok_or_else(|| err(path, "\"type\" must list strings"))?;
                    node.types |=
                        type_bit(t).ok_or_else(|| err(path, format!("unknown type {t:?}")))?;
                }
                if ts.is_empty() {
                    node.never = true;
                }
            }
            Some(_) => {
                return Err(err(
                    path,
                    "\"type\" must be a string or an array of strings",
                ))
            }
        }
        // integer is a subset of number: "number" admits integers too.
        if node.types & NUMBER != 0 {
            node.types |= INTEGER;
        }
        node.format = match obj.get("format").and_then(Value::as_str) {
            Some("date-time") => Format::DateTime,
            Some("date") => Format::Date,
            Some("time") => Format::Time,
            Some("x-singer.decimal" | "singer.decimal") => Format::Decimal,
            _ => Format::None,
        };
        match obj.get("properties") {
            None => {}
            Some(Value::Object(props)) => {
                for (name, s) in props {
                    let child = self.compile(s, &format!("{path}/properties/{name}"), depth)?;
                    node.index.insert(name.clone(), node.properties.len());
                    node.properties.push((name.clone(), child));
                }
            }
            Some(_) => return Err(err(path, "\"properties\" must be an object")),
        }
        match obj.get("required") {
            None => {}
            Some(Value::Array(req)) => {
                for r in req {
                    let r = r
                        .as_str()
                        .ok_or_else(|| err(path, "\"required\" must list strings"))?;
                    node.required.push(r.to_owned());
                }
            }
            // draft-3 style `required: true` on a property: accepted and ignored.
            Some(Value::Bool(_)) => {}
            Some(_) => return Err(err(path, "\"required\" must be an array of strings")),
        }
        node.additional = match obj.get("additionalProperties") {
            None | Some(Value::Bool(true)) => Additional::Any,
            Some(Value::Bool(false)) => Additional::Deny,
            Some(s) => Additional::Schema(Box::new(self.compile(
                s,
                &format!("{path}/additionalProperties"),
                depth,
            )?)),
        };
        match obj.get("items") {
            None => {}
            Some(s @ (Value::Object(_) | Value::Bool(_))) => {
                node.items = Some(Box::new(self.compile(
                    s,
                    &format!("{path}/items"),
                    depth,
                )?));
            }
            // Tuple validation (an array of schemas) is rare in Singer: accepted, not checked.
            Some(Value::Array(_)) => {}
            Some(_) => return Err(err(path, "\"items\" must be a schema")),
        }
        for (key, slot) in [
            ("anyOf", &mut node.any_of),
            ("oneOf", &mut node.one_of),
            ("allOf", &mut node.all_of),
        ] {
            match obj.get(key) {
                None => {}
                Some(Value::Array(alts)) => {
                    for (i, a) in alts.iter().enumerate() {
                        slot.push(self.compile(a, &format!("{path}/{key}/{i}"), depth)?);
                    }
                }
                Some(_) => return Err(err(path, format!("\"{key}\" must be an array of schemas"))),
            }
        }
        match obj.get("enum") {
            None => {}
            Some(Value::Array(vals)) => node.enumeration = Some(vals.clone()),
            Some(_) => return Err(err(path, "\"enum\" must be an array")),
        }
        if let Some(c) = obj.get("const") {
            node.enumeration = Some(vec![c.clone()]);
        }
        node.minimum = f64_of(obj.get("minimum"));
        node.maximum = f64_of(obj.get("maximum"));
        // draft-4 booleans and draft-6+ numbers both occur in the wild.
        match obj.get("exclusiveMinimum") {
            Some(Value::Bool(true)) => node.exclusive_minimum = node.minimum.take(),
            v => node.exclusive_minimum = f64_of(v),
        }
        match obj.get("exclusiveMaximum") {
            Some(Value::Bool(true)) => node.exclusive_maximum = node.maximum.take(),
            v => node.exclusive_maximum = f64_of(v),
        }
        node.min_length = usize_of(obj.get("minLength"));
        node.max_length = usize_of(obj.get("maxLength"));
        node.pattern = obj
            .get("pattern")
            .and_then(Value::as_str)
            .and_then(|p| regex::Regex::new(p).ok());
        Ok(node)
    }
}

impl Validator {
    /// Compiles a schema.
    ///
    /// # Errors
    /// A [`SchemaError`] naming the part of the schema that is not usable.
    pub fn compile(schema: &Value) -> Result<Validator, SchemaError> {
        let c = Compiler { root: schema };
        Ok(Validator {
            root: c.compile(schema, "", 0)?,
        })
    }

    /// Validates a record.
    ///
    /// # Errors
    /// The first mismatch found, with its path.
    pub fn validate_record(&self, record: &Map<String, Value>) -> Result<(), ValidationError> {
        let n = &self.root;
        if n.never || (n.types != ANY && n.types & OBJECT == 0) {
            return Err(ValidationError {
                path: String::new(),
                message: "the schema does not admit an object".into(),
            });
        }
        check_object(n, record)?;
        check_combinators(n, &Value::Null, Some(record))
    }

    /// Validates any value.
    ///
    /// # Errors
    /// The first mismatch found, with its path.
    pub fn validate(&self, value: &Value) -> Result<(), ValidationError> {
        check(&self.root, value)
    }
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        let mut end = 60;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if is_integral(n) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn expected(types: u8) -> String {
    let names = [
        (NULL, "null"),
        (BOOLEAN, "boolean"),
        (INTEGER, "integer"),
        (NUMBER, "number"),
        (STRING, "string"),
        (OBJECT, "object"),
        (ARRAY, "array"),
    ];
    let mut out: Vec<&str> = names
        .iter()
        .filter(|(b, _)| types & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if types & NUMBER != 0 {
        out.retain(|n| *n != "integer");
    }
    out.join(" or ")
}

fn is_integral(n: &serde_json::Number) -> bool {
    if n.is_i64() || n.is_u64() {
        return true;
    }
    let s = n.as_str();
    match s.find(['.', 'e', 'E']) {
        None => true,
        Some(_) => n
            .as_f64()
            .is_some_and(|f| f.is_finite() && f.fract() == 0.0),
    }
}

fn fail(message: String) -> ValidationError {
    ValidationError {
        path: String::new(),
        message,
    }
}

fn prefix(mut e: ValidationError, seg: &str) -> ValidationError {
    e.path = format!("/{seg}{}", e.path);
    e
}

fn check(n: &Node, v: &Value) -> Result<(), ValidationError> {
    if n.never {
        return Err(fail(format!(
            "no value is allowed here, got {}",
            describe(v)
        )));
    }
    if n.types != ANY {
        let bit = match v {
            Value::Null => NULL,
            Value::Bool(_) => BOOLEAN,
            Value::Number(num) => {
                if is_integral(num) {
                    INTEGER
                } else {
                    NUMBER
                }
            }
            Value::String(_) => STRING,
            Value::Object(_) => OBJECT,
            Value::Array(_) => ARRAY,
        };
        if n.types & bit == 0 {
            return Err(fail(format!(
                "expected {}, got {} {}",
                expected(n.types),
                kind_name(v),
                describe(v)
            )));
        }
    }
    match v {
        Value::String(s) => check_string(n, s)?,
        Value::Number(num) => check_number(n, num)?,
        Value::Object(m) => check_object(n, m)?,
        Value::Array(items) => {
            if let Some(item) = &n.items {
                for (i, it) in items.iter().enumerate() {
                    check(item, it).map_err(|e| prefix(e, &i.to_string()))?;
                }
            }
        }
        _ => {}
    }
    if let Some(vals) = &n.enumeration {
        if !vals.iter().any(|e| json_equal(e, v)) {
            return Err(fail(format!(
                "{} is not one of the allowed values",
                describe(v)
            )));
        }
    }
    check_combinators(n, v, None)
}

fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn check_combinators(
    n: &Node,
    v: &Value,
    record: Option<&Map<String, Value>>,
) -> Result<(), ValidationError> {
    if n.any_of.is_empty() && n.one_of.is_empty() && n.all_of.is_empty() {
        return Ok(());
    }
    // The root record arrives as a map; combinators at the root are rare, so build a Value then.
    let owned;
    let v = match record {
        Some(m) => {
            owned = Value::Object(m.clone());
            &owned
        }
        None => v,
    };
    for a in &n.all_of {
        check(a, v)?;
    }
    if !n.any_of.is_empty() && !n.any_of.iter().any(|a| check(a, v).is_ok()) {
        let first = n.any_of.iter().find_map(|a| check(a, v).err());
        return Err(fail(format!(
            "{} matches none of the anyOf alternatives{}",
            describe(v),
            first.map(|e| format!(" (first: {e})")).unwrap_or_default()
        )));
    }
    if !n.one_of.is_empty() {
        let matches = n.one_of.iter().filter(|a| check(a, v).is_ok()).count();
        if matches != 1 {
            return Err(fail(format!(
                "{} matches {matches} of the oneOf alternatives, not exactly one",
                describe(v)
            )));
        }
    }
    Ok(())
}

fn check_object(n: &Node, m: &Map<String, Value>) -> Result<(), ValidationError> {
    for (name, child) in &n.properties {
        if let Some(v) = m.get(name) {
            check(child, v).map_err(|e| prefix(e, name))?;
        }
    }
    for r in &n.required {
        if !m.contains_key(r) {
            return Err(fail(format!("required property {r:?} is missing")));
        }
    }
    match &n.additional {
        Additional::Any => {}
        Additional::Deny => {
            if let Some(k) = m.keys().find(|k| !n.index.contains_key(*k)) {
                return Err(fail(format!(
                    "property {k:?} is not allowed by the schema (additionalProperties: false)"
                )));
            }
        }
        Additional::Schema(s) => {
            for (k, v) in m {
                if !n.index.contains_key(k) {
                    check(s, v).map_err(|e| prefix(e, k))?;
                }
            }
        }
    }
    Ok(())
}

fn check_number(n: &Node, num: &serde_json::Number) -> Result<(), ValidationError> {
    if n.minimum.is_none()
        && n.maximum.is_none()
        && n.exclusive_minimum.is_none()
        && n.exclusive_maximum.is_none()
    {
        return Ok(());
    }
    let Some(f) = num.as_f64() else { return Ok(()) };
    let out = n.minimum.is_some_and(|m| f < m)
        || n.maximum.is_some_and(|m| f > m)
        || n.exclusive_minimum.is_some_and(|m| f <= m)
        || n.exclusive_maximum.is_some_and(|m| f >= m);
    if out {
        return Err(fail(format!("{num} is out of the schema's range")));
    }
    Ok(())
}

fn check_string(n: &Node, s: &str) -> Result<(), ValidationError> {
    if n.pattern.as_ref().is_some_and(|p| !p.is_match(s)) {
        return Err(fail(format!(
            "{:?} does not match the schema's pattern {:?}",
            excerpt(s),
            n.pattern.as_ref().map_or("", regex::Regex::as_str)
        )));
    }
    if n.min_length.is_some() || n.max_length.is_some() {
        let len = s.chars().count();
        if n.min_length.is_some_and(|m| len < m) || n.max_length.is_some_and(|m| len > m) {
            return Err(fail(format!(
                "string of length {len} is outside the schema's length limits"
            )));
        }
    }
    let ok = match n.format {
        Format::None => true,
        Format::DateTime => parse_date_time(s),
        Format::Date => parse_date(s.as_bytes()).is_some_and(|rest| rest.is_empty()),
        Format::Time => parse_time(s.as_bytes()).is_some_and(parse_offset),
        Format::Decimal => is_decimal(s),
    };
    if ok {
        Ok(())
    } else {
        let what = match n.format {
            Format::DateTime => "a date-time (ISO 8601, e.g. 2024-01-31T12:00:00Z)",
            Format::Date => "a date (YYYY-MM-DD)",
            Format::Time => "a time (HH:MM:SS)",
            _ => "a decimal number",
        };
        Err(fail(format!("{:?} is not {what}", excerpt(s))))
    }
}

fn excerpt(s: &str) -> &str {
    let mut end = s.len().min(60);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn digits(b: &[u8], n: usize) -> Option<(u32, &[u8])> {
    if b.len() < n || !b[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = b[..n]
        .iter()
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    Some((v, &b[n..]))
}

/// Parses `[+-]YYYY-MM-DD` (years may have more than four digits) and returns the rest.
fn parse_date(b: &[u8]) -> Option<&[u8]> {
    let b = b
        .strip_prefix(b"+")
        .or_else(|| b.strip_prefix(b"-"))
        .unwrap_or(b);
    let ylen = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if !(4..=9).contains(&ylen) {
        return None;
    }
    let (year, b) = digits(b, ylen)?;
    let b = b.strip_prefix(b"-")?;
    let (month, b) = digits(b, 2)?;
    let b = b.strip_prefix(b"-")?;
    let (day, b) = digits(b, 2)?;
    let max_day = days_in_month(i64::from(year), i64::from(month))?;
    if day == 0 || i64::from(day) > max_day {
        return None;
    }
    Some(b)
}

/// The number of days in a month of the proleptic Gregorian calendar; `None` for no month.
pub(crate) fn days_in_month(year: i64, month: i64) -> Option<i64> {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    Some(match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    })
}

/// Parses `HH:MM[:SS[.fraction]]` and returns the rest.
fn parse_time(b: &[u8]) -> Option<&[u8]> {
    let (h, b) = digits(b, 2)?;
    let b = b.strip_prefix(b":")?;
    let (m, mut b) = digits(b, 2)?;
    if h > 24 || m > 59 {
        return None;
    }
    if let Some(rest) = b.strip_prefix(b":") {
        let (s, rest) = digits(rest, 2)?;
        if s > 60 {
            return None;
        }
        b = rest;
        if let Some(frac) = b.strip_prefix(b".").or_else(|| b.strip_prefix(b",")) {
            let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 {
                return None;
            }
            b = &frac[n..];
        }
    }
    Some(b)
}

/// True when `b` is empty or a UTC offset (`Z`, `+HH`, `+HH:MM`, `+HHMM`).
fn parse_offset(b: &[u8]) -> bool {
    match b {
        [] | [b'Z' | b'z'] => true,
        [b'+' | b'-', rest @ ..] => {
            let Some((h, rest)) = digits(rest, 2) else {
                return false;
            };
            let rest = rest.strip_prefix(b":").unwrap_or(rest);
            h <= 23
                && (rest.is_empty()
                    || digits(rest, 2).is_some_and(|(m, r)| m <= 59 && r.is_empty()))
        }
        _ => false,
    }
}

/// A lenient ISO 8601 date-time: a date, optionally `T` or a space and a time, optionally an
/// offset. Real taps emit all of these; anything that is not a date at all is rejected.
pub fn parse_date_time(s: &str) -> bool {
    let Some(rest) = parse_date(s.as_bytes()) else {
        return false;
    };
    match rest {
        [] => true,
        [b'T' | b't' | b' ', time @ ..] => parse_time(time).is_some_and(|r| {
            let r = r.strip_prefix(b" ").unwrap_or(r);
            parse_offset(r)
        }),
        _ => false,
    }
}

fn is_decimal(s: &str) -> bool {
    if matches!(s, "NaN" | "Infinity" | "-Infinity") {
        return true;
    }
    let b = s.strip_prefix(['-', '+']).unwrap_or(s).as_bytes();
    let (int, frac) = match b.iter().position(|c| *c == b'.') {
        Some(p) => (&b[..p], &b[p + 1..]),
        None => (b, &b[..0]),
    };
    let (frac, exp) = match frac.iter().position(|c| *c == b'e' || *c == b'E') {
        Some(p) => (&frac[..p], Some(&frac[p + 1..])),
        None => (frac, None),
    };
    (!int.is_empty() || !frac.is_empty())
        && int.iter().all(u8::is_ascii_digit)
        && frac.iter().all(u8::is_ascii_digit)
        && exp.is_none_or(|e| {
            let e = e
                .strip_prefix(b"-")
                .or_else(|| e.strip_prefix(b"+"))
                .unwrap_or(e);
            !e.is_empty() && e.iter().all(u8::is_ascii_digit)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::scan::FieldSpans;
    use serde_json::json;

    fn v(schema: Value) -> Validator {
        Validator::compile(&schema).unwrap()
    }

    fn rec(x: Value) -> Map<String, Value> {
        x.as_object().unwrap().clone()
    }

    #[test]
    fn types_and_paths() {
        let val = v(json!({"type": "object", "required": ["id"], "properties": {
            "id": {"type": "integer"},
            "amount": {"type": ["null", "number"]},
            "items": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}}}}
        }}));
        assert!(val
            .validate_record(&rec(json!({"id": 1, "amount": 2.5})))
            .is_ok());
        assert!(
            val.validate_record(&rec(json!({"id": 1.0}))).is_ok(),
            "1.0 is an integer"
        );
        assert!(val
            .validate_record(&rec(
                json!({"id": 123456789012345678901234567890u128 as f64})
            ))
            .is_ok());
        let e = val.validate_record(&rec(json!({"id": "x"}))).unwrap_err();
        assert_eq!(e.path, "/id");
        assert!(
            e.message.contains("expected integer, got string \"x\""),
            "{e}"
        );
        let e = val.validate_record(&rec(json!({"amount": 1}))).unwrap_err();
        assert!(e.message.contains("required property \"id\""), "{e}");
        let e = val
            .validate_record(&rec(json!({"id": 1, "items": [{"sku": "a"}, {"sku": 3}]})))
            .unwrap_err();
        assert_eq!(e.path, "/items/1/sku");
        let e = val.validate_record(&rec(json!({"id": 2.5}))).unwrap_err();
        assert!(
            e.message.contains("expected integer, got number 2.5"),
            "{e}"
        );
    }

    #[test]
    fn big_integers_from_arbitrary_precision() {
        let val = v(json!({"properties": {"n": {"type": "integer"}}}));
        let r: Map<String, Value> =
            serde_json::from_str(r#"{"n": 123456789012345678901234567890}"#).unwrap();
        assert!(val.validate_record(&r).is_ok());
        let r: Map<String, Value> = serde_json::from_str(r#"{"n": 1.5e3}"#).unwrap();
        assert!(val.validate_record(&r).is_ok());
    }

    #[test]
    fn formats() {
        let val = v(json!({"properties": {
            "ts": {"type": "string", "format": "date-time"},
            "d": {"type": "string", "format": "date"},
            "t": {"type": "string", "format": "time"},
            "dec": {"type": "string", "format": "x-singer.decimal"}
        }}));
        for ok in [
            "2024-01-31T12:00:00Z",
            "2024-02-29 00:00:00.123456+05:30",
            "2024-01-31",
            "12345-01-01T00:00:00",
            "2017-11-14T04:22:29.371551Z",
            "2020-01-01T00:00:00+0000",
        ] {
            assert!(val.validate_record(&rec(json!({"ts": ok}))).is_ok(), "{ok}");
        }
        for bad in [
            "yesterday",
            "2023-02-29T00:00:00Z",
            "2024-13-01",
            "2024-01-01T25:00:00",
            "2024-01-01T10:00:00 junk",
        ] {
            assert!(
                val.validate_record(&rec(json!({"ts": bad}))).is_err(),
                "{bad}"
            );
        }
        assert!(val
            .validate_record(&rec(
                json!({"d": "2024-01-01", "t": "10:11:12.5", "dec": "-12.500"})
            ))
            .is_ok());
        assert!(val
            .validate_record(&rec(json!({"d": "2024-01-01T00:00:00"})))
            .is_err());
        assert!(val.validate_record(&rec(json!({"dec": "1.2.3"}))).is_err());
    }

    #[test]
    fn combinators_enum_and_refs() {
        let val = v(
            json!({"definitions": {"money": {"type": "number", "minimum": 0}}, "properties": {
                "a": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "e": {"enum": ["x", "y"]},
                "m": {"$ref": "#/definitions/money"},
                "strict": {"type": "object", "properties": {"k": {}}, "additionalProperties": false}
            }}),
        );
        assert!(val
            .validate_record(&rec(
                json!({"a": null, "e": "x", "m": 3, "strict": {"k": 1}})
            ))
            .is_ok());
        assert!(val.validate_record(&rec(json!({"a": 1}))).is_err());
        assert!(val.validate_record(&rec(json!({"e": "z"}))).is_err());
        assert!(val.validate_record(&rec(json!({"m": -1}))).is_err());
        assert!(val
            .validate_record(&rec(json!({"strict": {"k": 1, "z": 2}})))
            .is_err());
    }

    #[test]
    fn raw_and_tree_validation_agree() {
        let val = v(json!({"type": "object", "required": ["id"], "properties": {
            "id": {"type": "integer"},
            "amount": {"type": ["null", "number"], "minimum": 0},
            "ts": {"type": "string", "format": "date-time"},
            "e": {"enum": ["x", "y"]},
            "items": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}}}},
            "strict": {"type": "object", "properties": {"k": {}}, "additionalProperties": false}
        }}));
        let keys = vec!["id".to_string()];
        let cases = [
            (
                r#"{"id": 1, "amount": 2.5, "ts": "2024-01-01T00:00:00Z", "e": "x"}"#,
                None,
            ),
            (
                r#"{"id": 123456789012345678901234567890, "amount": null}"#,
                None,
            ),
            (r#"{"id": 1.0}"#, None),
            (
                r#"{"id": "x"}"#,
                Some(("/id", "expected integer, got string \"x\"")),
            ),
            (
                r#"{"amount": 1}"#,
                Some(("", "key property \"id\" is missing")),
            ),
            (
                r#"{"id": null}"#,
                Some(("/id", "key property \"id\" is null")),
            ),
            (
                r#"{"id": 2.5}"#,
                Some(("/id", "expected integer, got number 2.5")),
            ),
            (
                r#"{"id": 1, "amount": -1}"#,
                Some(("/amount", "out of the schema's range")),
            ),
            (
                r#"{"id": 1, "ts": "nope"}"#,
                Some(("/ts", "is not a date-time")),
            ),
            (
                r#"{"id": 1, "e": "z"}"#,
                Some(("/e", "not one of the allowed values")),
            ),
            (
                r#"{"id": 1, "items": [{"sku": "a"}, {"sku": 3}]}"#,
                Some(("/items/1/sku", "expected string")),
            ),
            (
                r#"{"id": 1, "strict": {"k": 1, "z": 2}}"#,
                Some(("/strict", "not allowed")),
            ),
            (r#"{"id": 1, "other": {"deep": [1, {"x": null}]}}"#, None),
        ];
        for (text, want) in cases {
            let raw = serde_json::value::RawValue::from_string(text.to_string()).unwrap();
            let got = val.validate_raw(&raw, &keys);
            match want {
                None => assert!(got.is_ok(), "{text}: {got:?}"),
                Some((path, msg)) => {
                    let e = got.unwrap_err();
                    assert_eq!(e.path, path, "{text}: {e}");
                    assert!(e.message.contains(msg), "{text}: {e}");
                }
            }
        }
    }

    #[test]
    fn fields_found_by_validation_are_the_fields_a_scan_finds() {
        let val = v(json!({"type": "object", "properties": {
            "id": {"type": "integer"}, "name": {"type": ["null", "string"]},
            "e": {"enum": ["x", "y\"z"]}, "nested": {"type": "object"}
        }}));
        for text in [
            r#"{"id": 1, "name": "plain", "e": "x"}"#,
            r#" { "id" :1 ,"name":"esc\"aped\u00e9","e":"y\"z", "nested": {"a": [1, "}"]} } "#,
            r#"{"k\"ey": "v", "name": null, "other": [true, false], "id": -1.5e3}"#,
            r#"{"name": "été 日本", "name": "twice", "x": "", "y": "\\"}"#,
            "{}",
        ] {
            let (from_spans, scanned) = spans_and_scan(&val, text.to_string());
            assert_eq!(from_spans, scanned, "{text}");
        }
        // Spans found in another text are not used: this text is scanned instead.
        let raw = serde_json::value::RawValue::from_string(r#"{"id": 12345}"#.into()).unwrap();
        let mut spans = Vec::new();
        val.validate_raw_fields(&raw, &[], &mut spans).unwrap();
        let found = FieldSpans::found_in(raw.get(), spans);
        let mut got = Vec::new();
        crate::schema::scan::fields_with(r#"{"id":1}"#, Some(&found), |k, v| {
            got.push((k.into_owned(), v.text.to_owned()));
        });
        assert_eq!(got, [("id".to_owned(), "1".to_owned())]);
    }

    type Pairs = Vec<(String, String)>;

    /// A valid record's (key, value text) pairs from the spans validation found, and from a
    /// scan of its text; a plain string's content is checked to be its exact value.
    fn spans_and_scan(val: &Validator, text: String) -> (Pairs, Pairs) {
        let raw = serde_json::value::RawValue::from_string(text).unwrap();
        let mut spans = Vec::new();
        val.validate_raw_fields(&raw, &[], &mut spans).unwrap();
        // Spans are offsets into the RawValue's own text (leading whitespace trimmed).
        let text = raw.get();
        let found = FieldSpans::found_in(text, spans);
        let (mut from_spans, mut scanned) = (Vec::new(), Vec::new());
        crate::schema::scan::fields_with(text, Some(&found), |k, v| {
            if v.plain_string {
                let parsed: String = serde_json::from_str(v.text).unwrap();
                assert_eq!(parsed, v.text[1..v.text.len() - 1], "{text}");
            }
            from_spans.push((k.into_owned(), v.text.to_owned()));
        });
        crate::schema::scan::fields(text, |k, v| scanned.push((k.into_owned(), v.to_owned())));
        (from_spans, scanned)
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "\\PC{0,6}|[\"\\\\\n\u{1}é]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(("[a-c\"\\\\é]{0,3}", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever the record holds, the spans a valid record gets give exactly the fields a
        /// scan of its text finds, and a "plain" string's content is its exact value.
        #[test]
        fn spans_match_a_scan_for_any_record(
            fields in proptest::collection::vec(("[a-c\"\\\\é ]{0,3}", arb_json()), 0..6),
            pretty in proptest::bool::ANY,
        ) {
            let record = Value::Object(fields.into_iter().collect());
            let text = if pretty {
                serde_json::to_string_pretty(&record).unwrap()
            } else {
                record.to_string()
            };
            let val = v(json!({"type": "object", "properties": {
                "a": {}, "b": {"type": ["string", "null", "number", "integer", "boolean", "array", "object"]}
            }}));
            let (from_spans, scanned) = spans_and_scan(&val, text);
            proptest::prop_assert_eq!(from_spans, scanned);
        }
    }

    #[test]
    fn unusable_schemas_are_named() {
        for (s, want) in [
            (json!({"type": "float"}), "unknown type"),
            (
                json!({"properties": []}),
                "\"properties\" must be an object",
            ),
            (json!({"properties": {"a": {"type": 3}}}), "/properties/a"),
            (
                json!({"properties": {"a": {"$ref": "#/nowhere"}}}),
                "does not point",
            ),
            (json!(7), "must be an object or a boolean"),
        ] {
            let e = Validator::compile(&s).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}

mod raw {
    //! Validation of raw JSON text by a small scanner: no tree, no allocation on the way
    //! through a valid record. A `RawValue` is valid JSON by construction, so the scanner only
    //! has to find where things end. A keyword that needs the whole value (`enum`, `const`,
    //! `anyOf`, `oneOf`, `allOf`) gets that one value parsed.

    use serde_json::value::RawValue;

    use std::borrow::Cow;

    use crate::schema::scan::{skip, string_at, ws, FieldSpan};
    use serde_json::Value;

    use super::{
        check, check_number, check_string, describe, expected, fail, is_integral, kind_name,
        Additional, Node, ValidationError, ANY, ARRAY, BOOLEAN, INTEGER, NULL, NUMBER, OBJECT,
        STRING,
    };

    /// The schema that admits anything, shared.
    static ANY_NODE: std::sync::LazyLock<Node> = std::sync::LazyLock::new(Node::any);

    type R = Result<(), ValidationError>;

    fn prefixed(mut e: ValidationError, seg: &str) -> ValidationError {
        e.path = format!("/{seg}{}", e.path);
        e
    }

    fn type_ok(n: &Node, bit: u8, shown: impl FnOnce() -> Value) -> R {
        if n.never {
            return Err(fail(format!(
                "no value is allowed here, got {}",
                describe(&shown())
            )));
        }
        if n.types != ANY && n.types & bit == 0 {
            let v = shown();
            return Err(fail(format!(
                "expected {}, got {} {}",
                expected(n.types),
                kind_name(&v),
                describe(&v)
            )));
        }
        Ok(())
    }

    /// Checks the value at `text[*i..]` and moves `i` past it; `Ok(true)` when it is a string
    /// without escapes.
    fn value(
        n: &Node,
        text: &str,
        i: &mut usize,
        key: Option<&str>,
    ) -> Result<bool, ValidationError> {
        let b = text.as_bytes();
        ws(b, i);
        let start = *i;
        if n.enumeration.is_some()
            || !n.any_of.is_empty()
            || !n.one_of.is_empty()
            || !n.all_of.is_empty()
        {
            skip(b, i);
            let v: Value = serde_json::from_str(&text[start..*i]).unwrap_or(Value::Null);
            if v.is_null() {
                if let Some(k) = key {
                    return Err(fail(format!("key property {k:?} is null")));
                }
            }
            return check(n, &v).map(|()| false);
        }
        match b.get(start) {
            Some(b'{') => object(n, text, i, &[], None).map(|()| false),
            Some(b'[') => {
                type_ok(n, ARRAY, || Value::Array(Vec::new()))?;
                let item = n.items.as_deref().unwrap_or(&ANY_NODE);
                *i += 1;
                ws(b, i);
                if b.get(*i) == Some(&b']') {
                    *i += 1;
                    return Ok(false);
                }
                let mut idx = 0usize;
                loop {
                    value(item, text, i, None).map_err(|e| prefixed(e, &idx.to_string()))?;
                    ws(b, i);
                    match b.get(*i) {
                        Some(b',') => {
                            *i += 1;
                            idx += 1;
                        }
                        _ => {
                            *i += 1;
                            return Ok(false);
                        }
                    }
                }
            }
            Some(b'"') => {
                let s = string_at(text, i);
                type_ok(n, STRING, || Value::String(s.clone().into_owned()))?;
                check_string(n, &s)?;
                Ok(matches!(s, Cow::Borrowed(_)))
            }
            Some(b't') => {
                *i += 4;
                type_ok(n, BOOLEAN, || Value::Bool(true)).map(|()| false)
            }
            Some(b'f') => {
                *i += 5;
                type_ok(n, BOOLEAN, || Value::Bool(false)).map(|()| false)
            }
            Some(b'n') => {
                *i += 4;
                if let Some(k) = key {
                    return Err(fail(format!("key property {k:?} is null")));
                }
                type_ok(n, NULL, || Value::Null).map(|()| false)
            }
            _ => {
                skip(b, i);
                let digits = &text[start..*i];
                let simple = n.minimum.is_none()
                    && n.maximum.is_none()
                    && n.exclusive_minimum.is_none()
                    && n.exclusive_maximum.is_none();
                // The text is a valid JSON number (a RawValue is valid JSON): without range limits,
                // "number" needs no parsing at all, and "integer" only a look for a fraction.
                if simple
                    && !n.never
                    && (n.types == ANY
                        || n.types & NUMBER != 0
                        || (n.types & INTEGER != 0 && !digits.contains(['.', 'e', 'E'])))
                {
                    return Ok(false);
                }
                let Ok(num) = digits.parse::<serde_json::Number>() else {
                    return Err(fail(format!("{digits:?} is not a JSON number")));
                };
                let bit = if is_integral(&num) { INTEGER } else { NUMBER };
                type_ok(n, bit, || Value::Number(num.clone()))?;
                check_number(n, &num).map(|()| false)
            }
        }
    }

    /// Which of a list of names were seen: a bitmask, or a vector past 64 names.
    enum Seen {
        Bits(u64),
        Many(Vec<bool>),
    }

    impl Seen {
        fn new(n: usize) -> Seen {
            if n <= 64 {
                Seen::Bits(0)
            } else {
                Seen::Many(vec![false; n])
            }
        }
        fn set(&mut self, i: usize) {
            match self {
                Seen::Bits(b) => *b |= 1 << i,
                Seen::Many(v) => v[i] = true,
            }
        }
        fn get(&self, i: usize) -> bool {
            match self {
                Seen::Bits(b) => *b & (1 << i) != 0,
                Seen::Many(v) => v[i],
            }
        }
    }

    /// Checks the object at `text[*i..]`; `fields`, when given, gets where each property lies.
    fn object(
        n: &Node,
        text: &str,
        i: &mut usize,
        keys: &[String],
        mut fields: Option<&mut Vec<FieldSpan>>,
    ) -> R {
        let b = text.as_bytes();
        type_ok(n, OBJECT, || Value::Object(serde_json::Map::new()))?;
        let mut seen_required = Seen::new(n.required.len());
        let mut seen_keys = Seen::new(keys.len());
        let mut cursor = 0usize;
        *i += 1;
        ws(b, i);
        if b.get(*i) == Some(&b'}') {
            *i += 1;
        } else {
            loop {
                ws(b, i);
                let key_start = *i;
                let k = string_at(text, i);
                let key_end = *i;
                ws(b, i);
                *i += 1; // ':'
                if let Some(r) = n.required.iter().position(|r| *r == k) {
                    seen_required.set(r);
                }
                let key_name = keys.iter().position(|r| *r == k).map(|p| {
                    seen_keys.set(p);
                    keys[p].as_str()
                });
                // Records usually list properties in schema order: try the next one first.
                let hit = match n.properties.get(cursor) {
                    Some((name, c)) if *name == k => {
                        cursor += 1;
                        Some(c)
                    }
                    _ => n.property(&k),
                };
                let child = match hit {
                    Some(c) => Some(c),
                    None => match &n.additional {
                        Additional::Any => key_name.map(|_| &*ANY_NODE),
                        Additional::Deny => {
                            return Err(fail(format!("property {k:?} is not allowed by the schema (additionalProperties: false)")));
                        }
                        Additional::Schema(s) => Some(&**s),
                    },
                };
                ws(b, i);
                let value_start = *i;
                let plain_string = match child {
                    Some(c) => value(c, text, i, key_name).map_err(|e| prefixed(e, &k))?,
                    None => {
                        skip(b, i);
                        false
                    }
                };
                if let Some(out) = fields.as_deref_mut() {
                    // An unterminated key cannot reach here: the text is valid JSON.
                    out.extend(FieldSpan::new(
                        key_start + 1..key_end.saturating_sub(1).max(key_start + 1),
                        matches!(k, Cow::Borrowed(_)),
                        value_start..*i,
                        plain_string,
                    ));
                }
                ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    _ => {
                        *i += 1;
                        break;
                    }
                }
            }
        }
        for (p, k) in keys.iter().enumerate() {
            if !seen_keys.get(p) {
                return Err(fail(format!("key property {k:?} is missing")));
            }
        }
        for (p, r) in n.required.iter().enumerate() {
            if !seen_required.get(p) {
                return Err(fail(format!("required property {r:?} is missing")));
            }
        }
        Ok(())
    }

    /// Validates raw JSON object text; `keys` must be present and not null. `fields`, when
    /// given, gets where each top-level property lies (left empty when the record is not
    /// walked property by property).
    pub(super) fn validate(
        root: &Node,
        raw: &RawValue,
        keys: &[String],
        fields: Option<&mut Vec<FieldSpan>>,
    ) -> R {
        let text = raw.get();
        let mut i = 0;
        ws(text.as_bytes(), &mut i);
        if root.enumeration.is_some()
            || !root.any_of.is_empty()
            || !root.one_of.is_empty()
            || !root.all_of.is_empty()
            || text.as_bytes().get(i) != Some(&b'{')
        {
            let v: Value =
                serde_json::from_str(text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
            for k in keys {
                match v.get(k) {
                    None => return Err(fail(format!("key property {k:?} is missing"))),
                    Some(Value::Null) => return Err(fail(format!("key property {k:?} is null"))),
                    Some(_) => {}
                }
            }
            return check(root, &v);
        }
        object(root, text, &mut i, keys, fields)
    }
}

impl Validator {
    /// Validates a record given as raw JSON object text, without building a tree; `keys` (the
    /// stream's key properties) must be present and not null.
    ///
    /// # Errors
    /// The first mismatch found, with its path.
    pub fn validate_raw(
        &self,
        raw: &serde_json::value::RawValue,
        keys: &[String],
    ) -> Result<(), ValidationError> {
        raw::validate(&self.root, raw, keys, None)
    }

    /// [`Validator::validate_raw`], also giving where each top-level property lies in the text
    /// (`fields` is cleared first; it stays empty when the record could not be walked property
    /// by property, or on error).
    ///
    /// # Errors
    /// The first mismatch found, with its path.
    pub fn validate_raw_fields(
        &self,
        raw: &serde_json::value::RawValue,
        keys: &[String],
        fields: &mut Vec<crate::schema::scan::FieldSpan>,
    ) -> Result<(), ValidationError> {
        fields.clear();
        let r = raw::validate(&self.root, raw, keys, Some(fields));
        if r.is_err() {
            fields.clear();
        }
        r
    }
}
