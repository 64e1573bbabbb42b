//! The shared schema layer: JSON Schema to column types for every target, the record
//! validator, and schema inference for taps that read untyped data.
//!
//! Targets never interpret JSON Schema themselves; they ask [`columns`] for a list of
//! [`Column`]s and map each [`ColumnType`] to their own type names.

pub mod infer;
pub mod scan;
pub mod validate;

use serde_json::Value;

pub use validate::{ValidationError, Validator};

/// The logical type of a column, independent of any database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// A whole number (`integer`).
    Integer,
    /// Any JSON number (`number`): exact decimal where the target can hold it.
    Number,
    /// An exact decimal, from `format: x-singer.decimal` or an `x-sql-datatype` hint.
    Decimal {
        /// Total digits, when known.
        precision: Option<u32>,
        /// Digits after the point, when known.
        scale: Option<u32>,
    },
    /// `boolean`.
    Boolean,
    /// `string` with no recognised format.
    String {
        /// `maxLength`, when given.
        max_length: Option<u64>,
    },
    /// `string` with `format: date-time`.
    DateTime,
    /// `string` with `format: date`.
    Date,
    /// `string` with `format: time`.
    Time,
    /// An object, an array, or a value with several unrelated types.
    Json,
}

/// One top-level property of a stream, as a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The property name, as in the record.
    pub name: String,
    /// Its logical type.
    pub ty: ColumnType,
    /// Whether null is allowed.
    pub nullable: bool,
    /// The source's SQL type (`x-sql-datatype`), passed through for targets that honour it.
    pub sql_hint: Option<String>,
}

/// An unusable JSON Schema.
#[derive(Debug, thiserror::Error)]
#[error("unusable JSON Schema at {path}: {problem}")]
pub struct SchemaError {
    /// JSON pointer to the offending part.
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

/// The columns of a stream's schema, in property order.
///
/// # Errors
/// When the schema is not an object schema with `properties`.
pub fn columns(schema: &Value) -> Result<Vec<Column>, SchemaError> {
    let props = match schema.get("properties") {
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err(SchemaError {
                path: "/properties".into(),
                problem: "must be an object".into(),
            })
        }
        None => return Ok(Vec::new()),
    };
    props
        .iter()
        .map(|(name, s)| {
            let (mut ty, nullable) = column_type(s);
            let sql_hint = s
                .get("x-sql-datatype")
                .and_then(Value::as_str)
                .map(str::to_owned);
            // `numeric(p,s)` from the source gives an exact decimal its dimensions.
            if matches!(
                ty,
                ColumnType::Number
                    | ColumnType::Decimal {
                        precision: None,
                        ..
                    }
            ) {
                if let Some((p, sc)) = sql_hint.as_deref().and_then(numeric_dims) {
                    ty = ColumnType::Decimal {
                        precision: Some(p),
                        scale: Some(sc),
                    };
                }
            }
            Ok(Column {
                name: name.clone(),
                ty,
                nullable,
                sql_hint,
            })
        })
        .collect()
}

/// `(p, s)` of `numeric(p,s)`, `numeric(p)` or `decimal(p,s)`.
fn numeric_dims(hint: &str) -> Option<(u32, u32)> {
    let h = hint.trim().to_ascii_lowercase();
    let args = h
        .strip_prefix("numeric")
        .or_else(|| h.strip_prefix("decimal"))?
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?;
    let mut parts = args.split(',').map(|p| p.trim().parse::<u32>());
    let p = parts.next()?.ok()?;
    let s = match parts.next() {
        Some(s) => s.ok()?,
        None => 0,
    };
    (parts.next().is_none() && s <= p && p > 0).then_some((p, s))
}

/// The strings that stand for the floats JSON cannot write (as Python's `float()` and the
/// databases read them).
pub const NON_FINITE: [&str; 3] = ["NaN", "Infinity", "-Infinity"];

/// The `pattern` of a float property that may hold [`NON_FINITE`] names: its schema is
/// `{"type": ["number", "string"], "pattern": NON_FINITE_PATTERN}` (plus `"null"`), so the
/// only strings allowed are those names (a pattern constrains strings alone). Targets that read
/// `type` see a number first; ferry's own make it a float column.
pub const NON_FINITE_PATTERN: &str = "^(NaN|Infinity|-Infinity)$";

/// The type name [`type_names`] gives `string` under [`NON_FINITE_PATTERN`]: beside a number
/// it is part of that number, alone it is a string.
const NON_FINITE_STRING: &str = "x-non-finite";

/// JSON types named by a schema (`type`, through `anyOf`/`oneOf`), and whether null is one.
fn type_names(schema: &Value, out: &mut Vec<(String, Option<String>)>) {
    let format = schema
        .get("format")
        .and_then(Value::as_str)
        .map(str::to_owned);
    // A string that can only be a non-finite float's name is part of a number beside it.
    let non_finite = schema.get("pattern").and_then(Value::as_str) == Some(NON_FINITE_PATTERN);
    let name = |t: &str| {
        if non_finite && t == "string" {
            NON_FINITE_STRING.to_owned()
        } else {
            t.to_owned()
        }
    };
    match schema.get("type") {
        Some(Value::String(t)) => out.push((name(t), format)),
        Some(Value::Array(ts)) => {
            for t in ts.iter().filter_map(Value::as_str) {
                out.push((name(t), format.clone()));
            }
        }
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(alts)) = schema.get(key) {
            for a in alts {
                type_names(a, out);
            }
        }
    }
    if schema.get("type").is_none() {
        if schema.get("properties").is_some() {
            out.push(("object".into(), None));
        } else if let Some(Value::Array(vals)) = schema.get("enum") {
            for v in vals {
                let t = match v {
                    Value::Null => "null",
                    Value::String(_) => "string",
                    Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                    Value::Number(_) => "number",
                    Value::Bool(_) => "boolean",
                    _ => "object",
                };
                out.push((t.into(), None));
            }
        }
    }
}

/// The column type of one property schema, and whether it is nullable.
pub fn column_type(schema: &Value) -> (ColumnType, bool) {
    let mut names = Vec::new();
    type_names(schema, &mut names);
    let nullable = names.is_empty() || names.iter().any(|(t, _)| t == "null");
    let has_number = names.iter().any(|(t, _)| t == "number");
    let non_null: Vec<_> = names
        .iter()
        .filter(|(t, _)| t != "null" && !(has_number && t == NON_FINITE_STRING))
        .collect();
    let mut ty: Option<ColumnType> = None;
    for (t, format) in non_null {
        let t = if t == NON_FINITE_STRING { "string" } else { t };
        let this = single_type(t, format.as_deref(), schema);
        ty = Some(match ty {
            None => this,
            Some(prev) => widen(&prev, &this),
        });
    }
    (ty.unwrap_or(ColumnType::Json), nullable)
}

fn single_type(t: &str, format: Option<&str>, schema: &Value) -> ColumnType {
    match t {
        "integer" => ColumnType::Integer,
        "number" => ColumnType::Number,
        "boolean" => ColumnType::Boolean,
        "string" => match format {
            Some("date-time") => ColumnType::DateTime,
            Some("date") => ColumnType::Date,
            Some("time") => ColumnType::Time,
            Some("x-singer.decimal" | "singer.decimal") => {
                let precision = schema
                    .get("precision")
                    .and_then(Value::as_u64)
                    .map(|v| v as u32);
                let scale = schema
                    .get("scale")
                    .and_then(Value::as_u64)
                    .map(|v| v as u32);
                ColumnType::Decimal { precision, scale }
            }
            _ => ColumnType::String {
                max_length: schema.get("maxLength").and_then(Value::as_u64),
            },
        },
        _ => ColumnType::Json,
    }
}

/// The narrowest type that holds every value of both `a` and `b`.
pub fn widen(a: &ColumnType, b: &ColumnType) -> ColumnType {
    use ColumnType as T;
    if a == b {
        return a.clone();
    }
    match (a, b) {
        (T::Json, _) | (_, T::Json) => T::Json,
        (T::Integer, T::Number) | (T::Number, T::Integer) => T::Number,
        // An integer column meeting decimals stays exact: room for 19 integer digits.
        (
            T::Decimal {
                precision: Some(p),
                scale,
            },
            T::Integer,
        )
        | (
            T::Integer,
            T::Decimal {
                precision: Some(p),
                scale,
            },
        ) => {
            let s = scale.unwrap_or(0);
            T::Decimal {
                precision: Some((p.saturating_sub(s).max(19) + s).min(38)),
                scale: Some(s),
            }
        }
        (T::Decimal { .. }, T::Integer) | (T::Integer, T::Decimal { .. }) => T::Decimal {
            precision: None,
            scale: None,
        },
        (T::Decimal { .. }, T::Number) | (T::Number, T::Decimal { .. }) => T::Number,
        (T::Decimal { .. }, T::Decimal { .. }) => T::Decimal {
            precision: None,
            scale: None,
        },
        (T::String { max_length: x }, T::String { max_length: y }) => T::String {
            max_length: match (x, y) {
                (Some(x), Some(y)) => Some(*x.max(y)),
                _ => None,
            },
        },
        (T::Date, T::DateTime) | (T::DateTime, T::Date) => T::DateTime,
        // Anything else fits in text: a number, a date or a boolean all have a string form.
        _ => T::String { max_length: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_singer_schemas() {
        let schema = json!({"type": "object", "properties": {
            "id": {"type": "integer"},
            "amount": {"type": ["null", "number"]},
            "dec": {"type": "string", "format": "x-singer.decimal", "precision": 38, "scale": 9},
            "ts": {"type": ["string", "null"], "format": "date-time"},
            "d": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]},
            "meta": {"type": "object", "properties": {}},
            "tags": {"type": "array", "items": {"type": "string"}},
            "mixed": {"type": ["integer", "string"]},
            "num_or_int": {"type": ["integer", "number"]},
            "anything": {},
            "sql": {"type": "string", "x-sql-datatype": "uuid"},
            "float": {"type": ["null", "number", "string"], "pattern": NON_FINITE_PATTERN},
            "only_nan": {"type": "string", "pattern": NON_FINITE_PATTERN}
        }});
        let cols = columns(&schema).unwrap();
        let got: Vec<_> = cols
            .iter()
            .map(|c| (c.name.as_str(), c.ty.clone(), c.nullable))
            .collect();
        use ColumnType as T;
        assert_eq!(
            got,
            vec![
                ("id", T::Integer, false),
                ("amount", T::Number, true),
                (
                    "dec",
                    T::Decimal {
                        precision: Some(38),
                        scale: Some(9)
                    },
                    false
                ),
                ("ts", T::DateTime, true),
                ("d", T::Date, true),
                ("meta", T::Json, false),
                ("tags", T::Json, false),
                ("mixed", T::String { max_length: None }, false),
                ("num_or_int", T::Number, false),
                ("anything", T::Json, true),
                ("sql", T::String { max_length: None }, false),
                ("float", T::Number, true),
                ("only_nan", T::String { max_length: None }, false),
            ]
        );
        assert_eq!(cols[10].sql_hint.as_deref(), Some("uuid"));
    }
}
