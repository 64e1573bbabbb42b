//! Records to Arrow, for the columnar targets (DuckDB, Parquet): the Arrow type of each planned
//! column and a builder that turns records — raw JSON text or parsed maps — into RecordBatches
//! without building a JSON tree for raw records.
//!
//! Types: integer → Int64, number → Float64, decimal → Decimal128(p, s) (p ≤ 38; wider ones as
//! text, exact), boolean, string → Utf8, date-time → Timestamp(µs, UTC), date → Date32, time →
//! Time64(µs), objects and arrays → their JSON text, or with `nested: struct` Struct/List typed
//! from the property's JSON Schema.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int64Builder,
    StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

use super::table::{PlannedCol, Source};
use crate::schema::scan::FieldSpans;
use crate::schema::ColumnType;
use crate::singer::{Record, RecordMessage};

/// DuckDB's and Parquet's widest decimal.
pub const MAX_DECIMAL_PRECISION: u32 = 38;
/// The scale of a decimal whose source declares no precision: DECIMAL(38, 9).
pub const DEFAULT_DECIMAL_SCALE: u32 = 9;

/// The (precision, scale) a decimal column gets, or `None` when it is too wide for Decimal128
/// and travels as exact text instead.
pub fn decimal_dims(ty: &ColumnType) -> Option<(u8, i8)> {
    match ty {
        ColumnType::Decimal {
            precision: Some(p),
            scale,
        } => {
            let s = scale.unwrap_or(0);
            (*p <= MAX_DECIMAL_PRECISION && s <= *p).then_some((*p as u8, s as i8))
        }
        ColumnType::Decimal { .. } => {
            Some((MAX_DECIMAL_PRECISION as u8, DEFAULT_DECIMAL_SCALE as i8))
        }
        _ => None,
    }
}

/// The Arrow type of a column. `nested`: objects and arrays as Struct/List (else JSON text).
pub fn data_type(col: &PlannedCol, nested: bool) -> DataType {
    match &col.ty {
        ColumnType::Integer => DataType::Int64,
        ColumnType::Number => DataType::Float64,
        t @ ColumnType::Decimal { .. } => match decimal_dims(t) {
            Some((p, s)) => DataType::Decimal128(p, s),
            None => DataType::Utf8,
        },
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::String { .. } => DataType::Utf8,
        ColumnType::DateTime => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::Date => DataType::Date32,
        ColumnType::Time => DataType::Time64(TimeUnit::Microsecond),
        ColumnType::Json if nested => nested_type(&col.schema).unwrap_or(DataType::Utf8),
        ColumnType::Json => DataType::Utf8,
    }
}

/// Struct/List types from an object's `properties` or an array's `items`; `None` where the
/// schema says too little (no properties, mixed types), which then stays JSON text.
fn nested_type(schema: &Value) -> Option<DataType> {
    let (ty, _) = crate::schema::column_type(schema);
    let leaf = |t: &ColumnType| -> Option<DataType> {
        Some(match t {
            ColumnType::Integer => DataType::Int64,
            ColumnType::Number => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::String { .. } => DataType::Utf8,
            ColumnType::Decimal { .. } | ColumnType::Json => return None,
            // Nested temporal values stay text: arrow's JSON reader parses them loosely.
            ColumnType::DateTime | ColumnType::Date | ColumnType::Time => DataType::Utf8,
        })
    };
    if ty != ColumnType::Json {
        return leaf(&ty);
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => return None,
    };
    match types.as_slice() {
        ["object"] => {
            let props = schema.get("properties")?.as_object()?;
            if props.is_empty() {
                return None;
            }
            // A field whose schema says too little (no type, a bare object, a decimal) keeps the
            // whole column as JSON text rather than failing on values that do not fit.
            let fields: Vec<Field> = props
                .iter()
                .map(|(k, v)| nested_type(v).map(|t| Field::new(k, t, true)))
                .collect::<Option<_>>()?;
            Some(DataType::Struct(Fields::from(fields)))
        }
        ["array"] => {
            let item = nested_type(schema.get("items")?)?;
            Some(DataType::List(Arc::new(Field::new("item", item, true))))
        }
        _ => None,
    }
}

/// One value of a record, as text: what every column builder reads.
#[derive(Debug)]
pub enum Cell<'a> {
    /// Null or absent.
    Null,
    /// A JSON string, unescaped.
    Str(Cow<'a, str>),
    /// A number, `true` or `false`, as written.
    Lit(&'a str),
    /// An object or array, as JSON text.
    Json(Cow<'a, str>),
}

impl<'a> Cell<'a> {
    /// From a value's raw JSON text.
    pub fn from_raw(v: &'a str) -> Cell<'a> {
        match v.as_bytes().first() {
            None | Some(b'n') => Cell::Null,
            Some(b'"') => {
                let mut i = 0;
                Cell::Str(crate::schema::scan::string_at(v, &mut i))
            }
            Some(b'{' | b'[') => Cell::Json(Cow::Borrowed(v)),
            _ => Cell::Lit(v),
        }
    }

    /// From a parsed value.
    fn value(v: Option<&'a Value>) -> Cell<'a> {
        match v {
            None | Some(Value::Null) => Cell::Null,
            Some(Value::String(s)) => Cell::Str(Cow::Borrowed(s)),
            Some(Value::Number(n)) => Cell::Lit(n.as_str()),
            Some(Value::Bool(true)) => Cell::Lit("true"),
            Some(Value::Bool(false)) => Cell::Lit("false"),
            Some(other) => Cell::Json(Cow::Owned(other.to_string())),
        }
    }

    fn excerpt(&self) -> String {
        let s: &str = match self {
            Cell::Null => "null",
            Cell::Str(s) | Cell::Json(s) => s,
            Cell::Lit(s) => s,
        };
        super::table::excerpt_str(s)
    }
}

/// A value that does not fit its column: the column, an excerpt of the value, the reason.
#[derive(Debug, Clone)]
pub struct CellError {
    /// The column.
    pub column: String,
    /// The start of the value.
    pub value: String,
    /// Why it does not fit.
    pub why: &'static str,
}

enum Builder {
    Int(Int64Builder),
    Float(Float64Builder),
    Dec(Decimal128Builder, u8, i8),
    Bool(BooleanBuilder),
    /// Text; for JSON columns the value's JSON text.
    Str(StringBuilder, bool),
    Ts(TimestampMicrosecondBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    /// Struct/List, decoded by arrow's JSON reader from `{"v": <value>}` lines at finish.
    Nested(DataType, Vec<u8>, usize),
}

impl Builder {
    fn new(ty: &DataType, logical: &ColumnType) -> anyhow::Result<Builder> {
        Ok(match ty {
            DataType::Int64 => Builder::Int(Int64Builder::new()),
            DataType::Float64 => Builder::Float(Float64Builder::new()),
            DataType::Decimal128(p, s) => Builder::Dec(
                Decimal128Builder::new().with_precision_and_scale(*p, *s)?,
                *p,
                *s,
            ),
            DataType::Boolean => Builder::Bool(BooleanBuilder::new()),
            DataType::Utf8 => Builder::Str(StringBuilder::new(), *logical == ColumnType::Json),
            DataType::Timestamp(..) => {
                Builder::Ts(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            DataType::Date32 => Builder::Date(Date32Builder::new()),
            DataType::Time64(_) => Builder::Time(Time64MicrosecondBuilder::new()),
            other => Builder::Nested(other.clone(), Vec::new(), 0),
        })
    }

    /// Converts a cell to this column's type, without changing anything.
    fn convert<'c>(&self, cell: &'c Cell<'c>) -> Result<Val<'c>, &'static str> {
        Ok(match (self, cell) {
            (_, Cell::Null) => Val::Null,
            (
                Builder::Nested(DataType::Struct(_) | DataType::List(_), ..),
                Cell::Lit(_) | Cell::Str(_),
            ) => return Err("the wrong JSON type for the column (not an object or array)"),
            (Builder::Nested(..), c) => Val::Text(match c {
                Cell::Json(t) => Cow::Borrowed(t.as_ref()),
                Cell::Lit(t) => Cow::Borrowed(*t),
                Cell::Str(s) => Cow::Owned(serde_json::to_string(s.as_ref()).unwrap_or_default()),
                Cell::Null => Cow::Borrowed("null"),
            }),
            (Builder::Str(_, false), Cell::Str(s)) => Val::Text(Cow::Borrowed(s.as_ref())),
            // A JSON column keeps a string as JSON (quoted), like any other value.
            (Builder::Str(_, true), Cell::Str(s)) => Val::Text(Cow::Owned(
                serde_json::to_string(s.as_ref()).unwrap_or_default(),
            )),
            (Builder::Str(..), Cell::Lit(t)) => Val::Text(Cow::Borrowed(*t)),
            (Builder::Str(..), Cell::Json(t)) => Val::Text(Cow::Borrowed(t.as_ref())),
            (Builder::Int(_), Cell::Lit(t)) => Val::I(parse_int(t)?),
            (Builder::Float(_), Cell::Lit(t)) => Val::F(parse_float(t)?),
            // A float JSON cannot write arrives as its name (the schema allowed exactly these).
            (Builder::Float(_), Cell::Str(t)) => Val::F(match t.as_ref() {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                t => parse_float(t)?,
            }),
            (Builder::Dec(_, p, s), Cell::Lit(t)) => Val::D(parse_decimal(t, *p, *s)?),
            // Postgres' numeric has NaN and ±Infinity; a DECIMAL column has no way to hold them.
            (Builder::Dec(..), Cell::Str(t)) if matches!(t.as_ref(), "NaN" | "Infinity" | "-Infinity") => {
                return Err("a NaN or infinite value, which a DECIMAL column cannot hold (declare the property a float, or set such records aside)")
            }
            (Builder::Dec(_, p, s), Cell::Str(t)) => Val::D(parse_decimal(t, *p, *s)?),
            (Builder::Bool(_), Cell::Lit("true")) => Val::B(true),
            (Builder::Bool(_), Cell::Lit("false")) => Val::B(false),
            (Builder::Ts(_), Cell::Str(t)) => Val::I(parse_timestamp(t)?),
            (Builder::Date(_), Cell::Str(t)) => Val::I(i64::from(parse_date(t)?)),
            (Builder::Time(_), Cell::Str(t)) => Val::I(parse_time(t)?),
            _ => return Err("the wrong JSON type for the column"),
        })
    }

    /// Appends a value [`Builder::convert`] made for this builder.
    fn append(&mut self, v: Val<'_>) {
        match (self, v) {
            (Builder::Nested(_, buf, rows), v) => {
                *rows += 1;
                buf.extend_from_slice(b"{\"v\":");
                match v {
                    Val::Text(t) => buf.extend_from_slice(t.as_bytes()),
                    _ => buf.extend_from_slice(b"null"),
                }
                buf.extend_from_slice(b"}\n");
            }
            (Builder::Int(b), Val::I(x)) => b.append_value(x),
            (Builder::Float(b), Val::F(x)) => b.append_value(x),
            (Builder::Dec(b, ..), Val::D(x)) => b.append_value(x),
            (Builder::Bool(b), Val::B(x)) => b.append_value(x),
            (Builder::Str(b, _), Val::Text(t)) => b.append_value(t),
            (Builder::Ts(b), Val::I(x)) => b.append_value(x),
            (Builder::Date(b), Val::I(x)) => b.append_value(x as i32),
            (Builder::Time(b), Val::I(x)) => b.append_value(x),
            (b, _) => b.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Int(b) => b.append_null(),
            Builder::Float(b) => b.append_null(),
            Builder::Dec(b, ..) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
            Builder::Str(b, _) => b.append_null(),
            Builder::Ts(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Time(b) => b.append_null(),
            Builder::Nested(_, buf, rows) => {
                *rows += 1;
                buf.extend_from_slice(b"{\"v\":null}\n");
            }
        }
    }

    /// Takes back the last value appended (rare: a later value of the same record failed).
    fn drop_last(&mut self) {
        use arrow::array::Array;
        use arrow::datatypes::{
            Date32Type, Decimal128Type, Float64Type, Int64Type, Time64MicrosecondType,
            TimestampMicrosecondType,
        };
        fn rebuild<T: arrow::datatypes::ArrowPrimitiveType>(
            b: &mut arrow::array::PrimitiveBuilder<T>,
        ) {
            let a = b.finish();
            let keep = a.len().saturating_sub(1);
            let dt = a.data_type().clone();
            let mut fresh = arrow::array::PrimitiveBuilder::<T>::new().with_data_type(dt);
            fresh.extend(a.slice(0, keep).iter());
            *b = fresh;
        }
        match self {
            Builder::Int(b) => rebuild::<Int64Type>(b),
            Builder::Float(b) => rebuild::<Float64Type>(b),
            Builder::Dec(b, ..) => rebuild::<Decimal128Type>(b),
            Builder::Ts(b) => rebuild::<TimestampMicrosecondType>(b),
            Builder::Date(b) => rebuild::<Date32Type>(b),
            Builder::Time(b) => rebuild::<Time64MicrosecondType>(b),
            Builder::Bool(b) => {
                let a = b.finish();
                let mut fresh = BooleanBuilder::new();
                fresh.extend(a.slice(0, a.len().saturating_sub(1)).iter());
                *b = fresh;
            }
            Builder::Str(b, _) => {
                let a = b.finish();
                let mut fresh = StringBuilder::new();
                fresh.extend(a.slice(0, a.len().saturating_sub(1)).iter());
                *b = fresh;
            }
            Builder::Nested(_, buf, rows) => {
                // Lines end in '\n': cut after the one before the last.
                let end = buf.len().saturating_sub(1);
                let cut = memchr::memrchr(b'\n', &buf[..end]).map_or(0, |i| i + 1);
                buf.truncate(cut);
                *rows = rows.saturating_sub(1);
            }
        }
    }

    fn finish(&mut self) -> anyhow::Result<ArrayRef> {
        Ok(match self {
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Dec(b, ..) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Str(b, _) => Arc::new(b.finish()),
            Builder::Ts(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Time(b) => Arc::new(b.finish()),
            Builder::Nested(ty, buf, rows) => {
                let schema = Schema::new(vec![Field::new("v", ty.clone(), true)]);
                let mut d = arrow::json::ReaderBuilder::new(Arc::new(schema))
                    .with_batch_size((*rows).max(1))
                    .with_strict_mode(false)
                    .build_decoder()?;
                let mut at = 0;
                while at < buf.len() {
                    let n = d.decode(&buf[at..])?;
                    if n == 0 {
                        break;
                    }
                    at += n;
                }
                buf.clear();
                *rows = 0;
                match d.flush()? {
                    Some(batch) => batch.column(0).clone(),
                    None => arrow::array::new_empty_array(ty),
                }
            }
        })
    }
}

/// Converts and appends one cell; on error, the reason and an excerpt of the value.
fn push_cell(b: &mut Builder, cell: &Cell<'_>) -> Result<(), (&'static str, String)> {
    match b.convert(cell) {
        Ok(v) => {
            b.append(v);
            Ok(())
        }
        Err(why) => Err((why, cell.excerpt())),
    }
}

/// A converted value, ready to append.
enum Val<'a> {
    Null,
    I(i64),
    F(f64),
    D(i128),
    B(bool),
    Text(Cow<'a, str>),
}

/// Turns a stream's records into RecordBatches of its planned columns.
pub struct BatchBuilder {
    schema: SchemaRef,
    sources: Vec<Source>,
    builders: Vec<Builder>,
    /// `_ferry_seq`: the record's position, so the last record of a key wins.
    seq: Option<Int64Builder>,
    rows: usize,
    bytes: usize,
    received_at: i64,
    /// Per column, the byte range of its value in the raw record being pushed, and whether it
    /// is a string without escapes (reused).
    spans: Vec<Option<(usize, usize, bool)>>,
}

impl std::fmt::Debug for BatchBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchBuilder")
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

/// The column that orders records within a batch, when asked for.
pub const SEQ: &str = "_ferry_seq";

impl BatchBuilder {
    /// A builder for these columns. `nested`: Struct/List for objects and arrays. `with_seq`: add
    /// a last column `_ferry_seq` numbering the records. `received_at`: µs since the epoch.
    ///
    /// # Errors
    /// An Arrow type that cannot be built.
    pub fn new(
        cols: &[PlannedCol],
        nested: bool,
        with_seq: bool,
        received_at: i64,
    ) -> anyhow::Result<BatchBuilder> {
        let mut fields: Vec<Field> = cols
            .iter()
            .map(|c| Field::new(&c.name, data_type(c, nested), true))
            .collect();
        if with_seq {
            fields.push(Field::new(SEQ, DataType::Int64, false));
        }
        let builders = cols
            .iter()
            .zip(&fields)
            .map(|(c, f)| Builder::new(f.data_type(), &c.ty))
            .collect::<anyhow::Result<_>>()?;
        Ok(BatchBuilder {
            schema: Arc::new(Schema::new(fields)),
            sources: cols.iter().map(|c| c.source.clone()).collect(),
            builders,
            seq: with_seq.then(Int64Builder::new),
            rows: 0,
            bytes: 0,
            received_at,
            spans: vec![None; cols.len()],
        })
    }

    /// The Arrow schema of the batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows buffered.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Approximate bytes buffered (the records' JSON size).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds one record; `seq` numbers it when the builder has `_ferry_seq`. `fields`: where a
    /// raw record's properties lie, when validation found it (saves scanning the text). On
    /// error nothing of the record stays.
    ///
    /// # Errors
    /// The first value that does not fit its column.
    pub fn push(
        &mut self,
        msg: &RecordMessage,
        flat: Option<&Map<String, Value>>,
        fields: Option<&FieldSpans>,
        seq: i64,
    ) -> Result<(), CellError> {
        let n = self.builders.len();
        let version = msg.version.map(|v| v.to_string());
        let meta = |s: &Source| -> Cell<'_> {
            match s {
                Source::Extracted => msg
                    .time_extracted
                    .as_deref()
                    .map_or(Cell::Null, |t| Cell::Str(Cow::Borrowed(t))),
                Source::Version => version.as_deref().map_or(Cell::Null, Cell::Lit),
                _ => Cell::Null,
            }
        };
        let raw_text = match (flat, &msg.record) {
            (None, Record::Raw(raw)) => Some(raw.get()),
            _ => None,
        };
        let map = match (flat, &msg.record) {
            (Some(m), _) => Some(m),
            (None, Record::Map(m)) => Some(m),
            (None, Record::Raw(_)) => None,
        };
        if let Some(text) = raw_text {
            // Byte ranges of the values: as validation found them, or in one pass over the text.
            self.bytes += text.len();
            self.spans.iter_mut().for_each(|s| *s = None);
            let (sources, spans) = (&self.sources, &mut self.spans);
            let base = text.as_ptr() as usize;
            let mut cursor = 0usize;
            crate::schema::scan::fields_with(text, fields, |k, v| {
                // Properties usually come in schema order: try the next column first.
                let hit = match sources.get(cursor) {
                    Some(Source::Prop(p)) if *p == k => Some(cursor),
                    _ => sources
                        .iter()
                        .position(|s| matches!(s, Source::Prop(p) if *p == k)),
                };
                if let Some(i) = hit {
                    let start = v.text.as_ptr() as usize - base;
                    spans[i] = Some((start, start + v.text.len(), v.plain_string));
                    cursor = i + 1;
                }
            });
        } else {
            self.bytes += 16 * n;
        }
        for i in 0..n {
            let res = match &self.sources[i] {
                Source::Received => {
                    self.builders[i].append(Val::I(self.received_at));
                    Ok(())
                }
                Source::Prop(p) => {
                    let cell = match (raw_text, map) {
                        (Some(text), _) => self.spans[i].map_or(Cell::Null, |(a, b, plain)| {
                            // A plain string's content is the text between its quotes.
                            match text.get(a + 1..b.saturating_sub(1)) {
                                Some(content) if plain => Cell::Str(Cow::Borrowed(content)),
                                _ => Cell::from_raw(&text[a..b]),
                            }
                        }),
                        (None, Some(m)) => Cell::value(m.get(p)),
                        (None, None) => Cell::Null,
                    };
                    push_cell(&mut self.builders[i], &cell)
                }
                other => push_cell(&mut self.builders[i], &meta(other)),
            };
            if let Err((why, value)) = res {
                // Values of this record already appended are taken back, so nothing of it
                // stays (a quarantined record, or a batch whose error is reported).
                for b in &mut self.builders[..i] {
                    b.drop_last();
                }
                return Err(CellError {
                    column: self.schema.field(i).name().clone(),
                    value,
                    why,
                });
            }
        }
        if let Some(b) = &mut self.seq {
            b.append_value(seq);
        }
        self.rows += 1;
        Ok(())
    }

    /// The buffered rows as a RecordBatch; the builder starts empty again.
    ///
    /// # Errors
    /// A nested value arrow's JSON reader cannot decode into its Struct/List type.
    pub fn finish(&mut self) -> anyhow::Result<RecordBatch> {
        let mut arrays = Vec::with_capacity(self.builders.len() + 1);
        for b in &mut self.builders {
            arrays.push(b.finish()?);
        }
        if let Some(b) = &mut self.seq {
            arrays.push(Arc::new(b.finish()));
        }
        self.rows = 0;
        self.bytes = 0;
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }
}

fn parse_int(t: &str) -> Result<i64, &'static str> {
    if let Ok(v) = t.parse::<i64>() {
        return Ok(v);
    }
    // JSON Schema counts 3.0 and 1e3 as integers: read exactly, never through a float.
    match parse_decimal(t, 38, 0) {
        Ok(v) => i64::try_from(v).map_err(|_| "a value out of the 64-bit integer range"),
        Err("more decimal places than the column's scale") => Err("a value that is not an integer"),
        Err("more digits than the column's precision") => {
            Err("a value out of the 64-bit integer range")
        }
        Err(e) => Err(e),
    }
}

fn parse_float(t: &str) -> Result<f64, &'static str> {
    match t.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(f),
        Ok(_) => Err("a value out of the double range"),
        Err(_) => Err("a value that is not a number"),
    }
}

/// An exact decimal text (`-12.50`, `1.5e3`) as an integer scaled by `scale`.
///
/// # Errors
/// Not a number, more digits than `precision`, or non-zero digits beyond `scale`.
pub fn parse_decimal(t: &str, precision: u8, scale: i8) -> Result<i128, &'static str> {
    const BAD: &str = "a value that is not a decimal number";
    let t = t.trim();
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], body[i + 1..].parse::<i64>().map_err(|_| BAD)?),
        None => (body, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(BAD);
    }
    let mut digits: Vec<u8> = Vec::with_capacity(int_part.len() + frac_part.len());
    for c in int_part.bytes().chain(frac_part.bytes()) {
        if !c.is_ascii_digit() {
            return Err(BAD);
        }
        digits.push(c - b'0');
    }
    // The value is digits × 10^(exp − frac_len); we want it × 10^scale.
    let shift = exp
        .saturating_sub(frac_part.len() as i64)
        .saturating_add(i64::from(scale));
    if shift < 0 {
        let drop = usize::try_from(shift.unsigned_abs()).unwrap_or(usize::MAX);
        let keep = digits.len().saturating_sub(drop);
        if digits[keep..].iter().any(|d| *d != 0) {
            return Err("more decimal places than the column's scale");
        }
        digits.truncate(keep);
    } else {
        if shift > 80 {
            return Err("more digits than the column's precision");
        }
        digits.extend(std::iter::repeat_n(0, shift as usize));
    }
    let first = digits.iter().position(|d| *d != 0).unwrap_or(digits.len());
    if digits.len() - first > precision as usize {
        return Err("more digits than the column's precision");
    }
    let mut v: i128 = 0;
    for d in &digits[first..] {
        v = v * 10 + i128::from(*d);
    }
    Ok(if neg { -v } else { v })
}

fn two(b: &[u8], i: usize) -> Option<u32> {
    let (a, c) = (*b.get(i)?, *b.get(i + 1)?);
    (a.is_ascii_digit() && c.is_ascii_digit())
        .then(|| u32::from(a - b'0') * 10 + u32::from(c - b'0'))
}

/// Days since 1970-01-01 of `YYYY-MM-DD` at the start of `b`.
fn ymd(b: &[u8]) -> Option<i64> {
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = i64::from(two(b, 0)? * 100 + two(b, 2)?);
    let (m, d) = (i64::from(two(b, 5)?), i64::from(two(b, 8)?));
    if !(1..=crate::schema::validate::days_in_month(y, m)?).contains(&d) {
        return None;
    }
    // Days from the civil date (H. Hinnant's algorithm): years start in March, so the leap
    // day is the last of its year.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// `HH:MM[:SS[.ffffff]]` at the start of `b`: µs since midnight and the bytes read. Digits
/// beyond microseconds are cut.
fn hms(b: &[u8]) -> Option<(i64, usize)> {
    let h = two(b, 0)?;
    if b.get(2) != Some(&b':') {
        return None;
    }
    let m = two(b, 3)?;
    let mut i = 5;
    let mut s = 0;
    if b.get(5) == Some(&b':') {
        s = two(b, 6)?;
        i = 8;
    }
    if h > 24 || m > 59 || s > 60 || (h == 24 && (m > 0 || s > 0)) {
        return None;
    }
    let mut micros: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let mut n = 0;
        while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            if n < 6 {
                micros = micros * 10 + i64::from(c - b'0');
            }
            n += 1;
            i += 1;
        }
        if n == 0 {
            return None;
        }
        for _ in n.min(6)..6 {
            micros *= 10;
        }
    }
    Some((
        (i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s)) * 1_000_000 + micros,
        i,
    ))
}

/// An ISO 8601 / RFC 3339 date-time (`T` or space, `Z`, `±HH`, `±HH:MM`, `±HHMM`, or no zone
/// meaning UTC; a bare date is midnight UTC) as µs since the epoch.
///
/// # Errors
/// Not a date-time.
pub fn parse_timestamp(t: &str) -> Result<i64, &'static str> {
    const BAD: &str = "a value that is not an ISO 8601 date-time";
    let b = t.trim().as_bytes();
    let Some(days) = ymd(b) else {
        return chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| d.timestamp_micros())
            .map_err(|_| BAD);
    };
    let mut micros = days * 86_400_000_000;
    if b.len() == 10 {
        return Ok(micros);
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err(BAD);
    }
    let (tod, n) = hms(&b[11..]).ok_or(BAD)?;
    micros += tod;
    let zone = &b[11 + n..];
    let offset_min: i64 = match zone {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let h = two(rest, 0).ok_or(BAD)?;
            let m = match rest.len() {
                2 => 0,
                4 => two(rest, 2).ok_or(BAD)?,
                5 if rest[2] == b':' => two(rest, 3).ok_or(BAD)?,
                _ => return Err(BAD),
            };
            if h > 23 || m > 59 {
                return Err(BAD);
            }
            let off = i64::from(h * 60 + m);
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return Err(BAD),
    };
    Ok(micros - offset_min * 60_000_000)
}

/// `YYYY-MM-DD` (or a date-time at midnight) as days since the epoch.
///
/// # Errors
/// Not a date, or a date-time with a time of day.
pub fn parse_date(t: &str) -> Result<i32, &'static str> {
    const BAD: &str = "a value that is not an ISO 8601 date";
    let b = t.trim().as_bytes();
    let days = ymd(b).ok_or(BAD)?;
    if b.len() > 10 {
        let ts = parse_timestamp(t)?;
        if ts.rem_euclid(86_400_000_000) != 0 {
            return Err("a date-time with a time of day in a date column");
        }
        return Ok(ts.div_euclid(86_400_000_000) as i32);
    }
    Ok(days as i32)
}

/// `HH:MM:SS[.ffffff]` as µs since midnight (a zone suffix is not allowed).
///
/// # Errors
/// Not a time of day.
pub fn parse_time(t: &str) -> Result<i64, &'static str> {
    match hms(t.trim().as_bytes()) {
        Some((v, n)) if n == t.trim().len() => Ok(v),
        _ => Err("a value that is not a time of day (HH:MM:SS)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("189.67", 12, 2), Ok(18967));
        assert_eq!(parse_decimal("-0.5", 12, 2), Ok(-50));
        assert_eq!(parse_decimal("1.5e3", 12, 2), Ok(150_000));
        assert_eq!(parse_decimal("12.340", 12, 2), Ok(1234));
        assert!(parse_decimal("12.345", 12, 2).is_err());
        assert!(parse_decimal("1234", 4, 2).is_err());
        assert!(parse_decimal("abc", 4, 2).is_err());
        assert!(parse_decimal(".", 4, 2).is_err());
        assert!(parse_decimal("1e2147483647", 4, 2).is_err());
        assert!(parse_decimal("1.5e-9223372036854775808", 4, 2).is_err());
        assert_eq!(parse_int("12345678901234567.0"), Ok(12_345_678_901_234_567));
        assert_eq!(parse_int("1e3"), Ok(1000));
        assert!(parse_int("1.5").is_err());
        assert!(parse_int("1e30").is_err());
        assert_eq!(
            parse_decimal("99999999999999999999999999999.999999999", 38, 9),
            Ok(99_999_999_999_999_999_999_999_999_999_999_999_999)
        );
    }

    #[test]
    fn dates_count_days_like_chrono() {
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let mut d = chrono::NaiveDate::from_ymd_opt(1, 1, 1).unwrap();
        let end = chrono::NaiveDate::from_ymd_opt(9999, 12, 31).unwrap();
        while d <= end {
            let text = d.format("%Y-%m-%d").to_string();
            assert_eq!(ymd(text.as_bytes()), Some((d - epoch).num_days()), "{text}");
            d = d + chrono::Days::new(13);
        }
        for bad in [
            "2026-02-29",
            "2100-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-04-31",
            "2026-01-00",
            "+026-01-01",
            "20x6-01-01",
        ] {
            assert_eq!(ymd(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(ymd(b"2000-02-29"), Some(11_016));
    }

    #[test]
    fn timestamps_to_the_microsecond() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_timestamp("1970-01-01T00:00:00.000001Z"), Ok(1));
        assert_eq!(parse_timestamp("1970-01-01 01:00:00+01:00"), Ok(0));
        assert_eq!(
            parse_timestamp("1970-01-01T00:00:00-0130"),
            Ok(5_400_000_000)
        );
        assert_eq!(parse_timestamp("1970-01-02"), Ok(86_400_000_000));
        assert_eq!(
            parse_timestamp("2026-11-22T10:11:12.123456789Z"),
            Ok(1_795_342_272_123_456)
        );
        assert!(parse_timestamp("2026-02-30T00:00:00Z").is_err());
        assert!(parse_timestamp("yesterday").is_err());
        assert!(parse_timestamp("2026-11-22T10:00:00+99:99").is_err());
        assert_eq!(parse_date("2026-11-22"), Ok(20_779));
        assert!(parse_date("2026-11-22T10:00:00Z").is_err());
        assert_eq!(parse_time("10:00:00.5"), Ok(36_000_500_000));
        assert!(parse_time("25:00:00").is_err());
    }
}
