//! Benchmark of the hot path every record takes: JSON line → Singer message → schema
//! validation, on one core, for 1M records of a 10-field stream. Reported beside the floor it
//! cannot beat, serde_json parsing the same lines into `Value`s, measured in the same run.
//!
//!     cargo bench --bench parse_validate
//!
//! (`cargo test --all-targets` runs this file without `--bench`; it then does nothing.)

#![allow(clippy::print_stdout)]

use std::time::Instant;

use ferry::schema::Validator;
use ferry::singer::{codec, Message, Record};
use serde_json::json;

const RECORDS: usize = 1_000_000;

fn lines() -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORDS * 260);
    for i in 0..RECORDS {
        out.extend_from_slice(
            format!(
                concat!(
                    r#"{{"type":"RECORD","stream":"orders","record":{{"id":{i},"customer_id":{c},"status":"paid","total":{t}.{f:02},"#,
                    r#""currency":"EUR","placed_at":"2026-11-{d:02}T10:{m:02}:00.000000Z","is_gift":{g},"items":{n},"#,
                    r#""note":"order number {i} — ünïcode","discount":null}},"time_extracted":"2026-11-22T00:00:00Z"}}"#,
                    "\n"
                ),
                i = i,
                c = i % 5000,
                t = i % 997,
                f = i % 100,
                d = 1 + i % 28,
                m = i % 60,
                g = i % 7 == 0,
                n = 1 + i % 5
            )
            .as_bytes(),
        );
    }
    out
}

fn schema() -> serde_json::Value {
    json!({"type": "object", "properties": {
        "id": {"type": "integer"}, "customer_id": {"type": "integer"}, "status": {"type": "string"},
        "total": {"type": "number"}, "currency": {"type": "string", "maxLength": 3},
        "placed_at": {"type": "string", "format": "date-time"}, "is_gift": {"type": "boolean"},
        "items": {"type": "integer"}, "note": {"type": ["null", "string"]}, "discount": {"type": ["null", "number"]}
    }, "required": ["id"]})
}

fn rate(label: &str, n: usize, secs: f64, floor: Option<f64>) -> f64 {
    let r = n as f64 / secs;
    match floor {
        Some(f) => println!(
            "{label:<40} {:>10.0} records/s  {secs:>6.3}s  ({:.2}x the serde_json floor's time)",
            r,
            secs / f
        ),
        None => println!("{label:<40} {:>10.0} records/s  {secs:>6.3}s", r),
    }
    secs
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let input = lines();
    println!(
        "{} records, {:.1} MB of JSON lines, one thread",
        RECORDS,
        input.len() as f64 / 1e6
    );
    let validator = Validator::compile(&schema()).unwrap();
    let keys = vec!["id".to_string()];

    // Best of three, so a noisy neighbour does not decide the figure.
    let mut floor = f64::MAX;
    let mut decode = f64::MAX;
    let mut full = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut n = 0usize;
        for l in input.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            n += usize::from(v.is_object());
        }
        assert_eq!(n, RECORDS);
        floor = floor.min(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let mut n = 0usize;
        for l in input.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Message::Record(_) = codec::decode(l).unwrap() {
                n += 1;
            }
        }
        assert_eq!(n, RECORDS);
        decode = decode.min(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let mut n = 0usize;
        for l in input.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Message::Record(r) = codec::decode(l).unwrap() {
                match &r.record {
                    Record::Raw(raw) => validator.validate_raw(raw, &keys).unwrap(),
                    Record::Map(m) => validator.validate_record(m).unwrap(),
                }
                n += 1;
            }
        }
        assert_eq!(n, RECORDS);
        full = full.min(t.elapsed().as_secs_f64());
    }
    rate("serde_json::Value parse (floor)", RECORDS, floor, None);
    rate("decode to Singer message", RECORDS, decode, Some(floor));
    rate("decode + validate", RECORDS, full, Some(floor));
}
