//! The table-shaped targets — Postgres, DuckDB and Parquet — held to the same conformance
//! cases (duplicates, nulls, schema change mid-stream, empty streams, state ordering,
//! ACTIVATE_VERSION), and DuckDB's and Parquet's own cases: types read back by independent
//! readers (the `duckdb` and `pyarrow` Python packages ./test.sh installs), bad values, the
//! manifest, and killed loads.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

use crate::postgres::Pg;
use crate::util::{lines, Dir};

/// The Python with the `duckdb` and `pyarrow` packages (the `readers` venv of ./test.sh).
pub fn python() -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH")?)
        .find(|d| d.ends_with("venv-readers/bin"))
        .map(|d| d.join("python"))
        .filter(|p| p.is_file());
    if found.is_none() && std::env::var("FERRY_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("the readers venv (duckdb, pyarrow) is not on PATH; ./test.sh installs it");
    }
    found
}

/// Runs tests/cli/read_rows.py; its stdout lines.
pub fn read(py: &PathBuf, args: &[&str]) -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cli/read_rows.py");
    let out = Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "read_rows.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn read_json(py: &PathBuf, args: &[&str]) -> Vec<Value> {
    read(py, args)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn schema_msg(stream: &str, keys: &[&str], props: Value) -> Value {
    json!({"type": "SCHEMA", "stream": stream, "schema": {"type": "object", "properties": props}, "key_properties": keys})
}

fn rec(stream: &str, r: Value) -> Value {
    json!({"type": "RECORD", "stream": stream, "record": r})
}

fn vrec(stream: &str, version: i64, r: Value) -> Value {
    json!({"type": "RECORD", "stream": stream, "record": r, "version": version})
}

fn state(n: i64) -> Value {
    json!({"type": "STATE", "value": {"n": n}})
}

fn activate(stream: &str, version: i64) -> Value {
    json!({"type": "ACTIVATE_VERSION", "stream": stream, "version": version})
}

/// One of the three targets, set up in its own schema / file / folder.
enum Wh {
    Postgres(Pg),
    DuckDb(PathBuf),
    Parquet(PathBuf),
}

impl Wh {
    fn name(&self) -> &'static str {
        match self {
            Wh::Postgres(_) => "postgres",
            Wh::DuckDb(_) => "duckdb",
            Wh::Parquet(_) => "parquet",
        }
    }

    fn config(&self, d: &Dir, extra: Value) -> String {
        let path = d.join(match self {
            Wh::Parquet(_) => "lake",
            _ => "w.duckdb",
        });
        match self {
            Wh::Postgres(pg) => pg.config(extra),
            _ => {
                let mut c = json!({"path": path});
                for (k, v) in extra.as_object().unwrap() {
                    // Parquet drops replaced versions' files from its manifest: no flag for that.
                    if matches!(self, Wh::Parquet(_)) && k == "hard_delete" {
                        continue;
                    }
                    c[k] = v.clone();
                }
                c.to_string()
            }
        }
    }

    /// Rows of a stream's table as JSON arrays of `cols`, ordered by `id`. Parquet is
    /// read as its documented merge-on-read: files in manifest order, the last row of a key wins.
    fn rows(&self, d: &Dir, table: &str, cols: &[&str]) -> Vec<Value> {
        let list = cols.join(", ");
        match self {
            Wh::Postgres(pg) => pg
                .sql(&format!(
                    "SELECT json_build_array({list})::text FROM \"{}\".{table} ORDER BY id",
                    pg.schema
                ))
                .iter()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            Wh::DuckDb(py) => read_json(
                py,
                &[
                    "duckdb",
                    d.join("w.duckdb").to_str().unwrap(),
                    &format!("SELECT {list} FROM main.{table} ORDER BY id"),
                ],
            ),
            Wh::Parquet(py) => {
                let mut by_key: std::collections::BTreeMap<i64, Value> = Default::default();
                for r in read_json(py, &["parquet", d.join("lake").to_str().unwrap(), table]) {
                    by_key.insert(r["id"].as_i64().unwrap(), r);
                }
                by_key
                    .values()
                    .map(|r| Value::Array(cols.iter().map(|c| r[*c].clone()).collect()))
                    .collect()
            }
        }
    }
}

fn warehouses(tag: &str) -> Vec<Wh> {
    let Some(py) = python() else {
        return Vec::new();
    };
    vec![
        Wh::Postgres(Pg::new(tag)),
        Wh::DuckDb(py.clone()),
        Wh::Parquet(py),
    ]
}

#[test]
fn conformance_duplicates_nulls_schema_change_empty_streams_and_state_order() {
    for wh in warehouses("conf") {
        let d = Dir::new();
        d.write("t.json", &wh.config(&d, json!({})));
        let input = lines(&[
            schema_msg(
                "s",
                &["id"],
                json!({"id": {"type": "integer"}, "v": {"type": ["null", "string"]}}),
            ),
            rec("s", json!({"id": 1, "v": "a"})),
            rec("s", json!({"id": 2, "v": null})),
            rec("s", json!({"id": 1, "v": "b"})),
            state(1),
            schema_msg(
                "s",
                &["id"],
                json!({"id": {"type": "integer"}, "v": {"type": ["null", "string"]}, "w": {"type": ["null", "integer"]}}),
            ),
            rec("s", json!({"id": 3, "v": "c", "w": 7})),
            rec("s", json!({"id": 2, "v": "x"})),
            state(2),
            schema_msg("e", &["id"], json!({"id": {"type": "integer"}})),
            state(3),
        ]);
        let out = d
            .run(&["target", wh.name(), "--config", "t.json"], Some(&input))
            .ok();
        // States come out after the data before them is committed, in order, ending with the last.
        let states = out.json_lines();
        let ns: Vec<i64> = states.iter().map(|s| s["n"].as_i64().unwrap()).collect();
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]) && ns.last() == Some(&3),
            "{}: {ns:?}",
            wh.name()
        );
        assert_eq!(
            wh.rows(&d, "s", &["id", "v", "w"]),
            [
                json!([1, "b", null]),
                json!([2, "x", null]),
                json!([3, "c", 7])
            ],
            "{}",
            wh.name()
        );
        assert!(wh.rows(&d, "e", &["id"]).is_empty(), "{}", wh.name());
    }
}

#[test]
fn conformance_activate_version_replaces_only_after_the_reload() {
    for wh in warehouses("confv") {
        let d = Dir::new();
        d.write(
            "t.json",
            &wh.config(
                &d,
                json!({"add_metadata_columns": true, "hard_delete": true}),
            ),
        );
        let schema = schema_msg(
            "f",
            &["id"],
            json!({"id": {"type": "integer"}, "v": {"type": "string"}}),
        );
        let run = |msgs: &[Value]| {
            d.run(
                &["target", wh.name(), "--config", "t.json"],
                Some(&lines(msgs)),
            )
            .ok();
        };
        run(&[
            schema.clone(),
            vrec("f", 1, json!({"id": 1, "v": "a1"})),
            vrec("f", 1, json!({"id": 2, "v": "b1"})),
            vrec("f", 1, json!({"id": 3, "v": "c1"})),
            state(1),
            activate("f", 1),
        ]);
        assert_eq!(wh.rows(&d, "f", &["id", "v"]).len(), 3, "{}", wh.name());
        // A reload announced first and cut short: nothing of the old version goes yet.
        run(&[
            schema.clone(),
            activate("f", 2),
            vrec("f", 2, json!({"id": 1, "v": "a2"})),
            vrec("f", 2, json!({"id": 3, "v": "c2"})),
            state(2),
        ]);
        assert_eq!(
            wh.rows(&d, "f", &["id", "v"]),
            [json!([1, "a2"]), json!([2, "b1"]), json!([3, "c2"])],
            "{}",
            wh.name()
        );
        // The resumed run has nothing left to read and sends only the closing ACTIVATE_VERSION.
        run(&[schema, activate("f", 2), state(3)]);
        assert_eq!(
            wh.rows(&d, "f", &["id", "v"]),
            [json!([1, "a2"]), json!([3, "c2"])],
            "{}",
            wh.name()
        );
    }
}

/// Every type, read back by DuckDB's own Python package.
#[test]
fn duckdb_types_values_nested_and_upserts() {
    let Some(py) = python() else { return };
    for nested in ["json", "struct"] {
        let d = Dir::new();
        d.write(
            "t.json",
            &json!({"path": "w.duckdb", "schema": "raw", "nested": nested}).to_string(),
        );
        let input = lines(&[
            schema_msg(
                "public-Orders",
                &["id"],
                json!({
                    "id": {"type": "integer"},
                    "name": {"type": ["null", "string"]},
                    "total": {"type": ["null", "string"], "format": "x-singer.decimal", "precision": 12, "scale": 2},
                    "big": {"type": ["null", "string"], "format": "x-singer.decimal"},
                    "ratio": {"type": ["null", "number"]},
                    "paid": {"type": ["null", "boolean"]},
                    "at": {"type": ["null", "string"], "format": "date-time"},
                    "day": {"type": ["null", "string"], "format": "date"},
                    "t": {"type": ["null", "string"], "format": "time"},
                    "meta": {"type": ["null", "object"], "properties": {"src": {"type": "string"}, "n": {"type": "integer"}}},
                    "tags": {"type": ["null", "array"], "items": {"type": "string"}}
                }),
            ),
            rec(
                "public-Orders",
                json!({"id": 1, "name": "Léa ☕", "total": "189.67", "big": "12345678901234567890.123456789", "ratio": 0.25, "paid": true,
                "at": "2026-11-22T10:11:12.123456Z", "day": "2026-11-22", "t": "23:59:59.999999", "meta": {"src": "crm", "n": 3}, "tags": ["a", "b"]}),
            ),
            rec(
                "public-Orders",
                json!({"id": 2, "name": null, "total": "-0.05", "at": "2026-11-22T12:00:00+02:00", "tags": []}),
            ),
            rec(
                "public-Orders",
                json!({"id": 1, "name": "Léa ☕ (updated)", "total": "190.00", "paid": false}),
            ),
            state(1),
            rec(
                "public-Orders",
                json!({"id": 3, "name": "tab\there \"quoted\" \\ back", "total": "0"}),
            ),
            rec(
                "public-Orders",
                json!({"id": 2, "name": "second batch", "total": "1.5"}),
            ),
            state(2),
        ]);
        d.run(&["target", "duckdb", "--config", "t.json"], Some(&input))
            .ok();
        let file = d.join("w.duckdb");
        let types = read(
            &py,
            &["duckdb-types", file.to_str().unwrap(), "raw", "orders"],
        );
        let nested_types: [&str; 2] = if nested == "json" {
            ["meta:JSON", "tags:JSON"]
        } else {
            ["meta:STRUCT(src VARCHAR, n BIGINT)", "tags:VARCHAR[]"]
        };
        assert_eq!(
            types,
            [
                "id:BIGINT",
                "name:VARCHAR",
                "total:DECIMAL(12,2)",
                "big:DECIMAL(38,9)",
                "ratio:DOUBLE",
                "paid:BOOLEAN",
                "at:TIMESTAMP WITH TIME ZONE",
                "day:DATE",
                "t:TIME",
                nested_types[0],
                nested_types[1],
            ]
        );
        let rows = read_json(
            &py,
            &[
                "duckdb",
                file.to_str().unwrap(),
                "SELECT id, name, total, big, ratio, paid, \"at\", \"day\", t FROM raw.orders ORDER BY id",
            ],
        );
        assert_eq!(
            rows,
            [
                json!([
                    1,
                    "Léa ☕ (updated)",
                    "190.00",
                    null,
                    null,
                    false,
                    null,
                    null,
                    null
                ]),
                json!([
                    2,
                    "second batch",
                    "1.50",
                    null,
                    null,
                    null,
                    null,
                    null,
                    null
                ]),
                json!([
                    3,
                    "tab\there \"quoted\" \\ back",
                    "0.00",
                    null,
                    null,
                    null,
                    null,
                    null,
                    null
                ]),
            ]
        );
        // The first run's first record, before the upserts replaced it.
        let d2 = Dir::new();
        d2.write(
            "t.json",
            &json!({"path": "w.duckdb", "nested": nested}).to_string(),
        );
        let first: String = input.lines().take(2).map(|l| format!("{l}\n")).collect();
        d2.run(&["target", "duckdb", "--config", "t.json"], Some(&first))
            .ok();
        let f2 = d2.join("w.duckdb");
        let sel = if nested == "json" {
            "SELECT big, ratio, paid, \"at\", \"day\", t, meta::VARCHAR, tags::VARCHAR FROM main.orders"
        } else {
            "SELECT big, ratio, paid, \"at\", \"day\", t, meta, tags FROM main.orders"
        };
        let row = read_json(&py, &["duckdb", f2.to_str().unwrap(), sel]);
        let (meta, tags) = if nested == "json" {
            (json!("{\"src\":\"crm\",\"n\":3}"), json!("[\"a\",\"b\"]"))
        } else {
            (json!({"src": "crm", "n": 3}), json!(["a", "b"]))
        };
        assert_eq!(
            row,
            [json!([
                "12345678901234567890.123456789",
                0.25,
                true,
                "2026-11-22T10:11:12.123456Z",
                "2026-11-22",
                "23:59:59.999999",
                meta,
                tags
            ])]
        );
    }
}

#[test]
fn duckdb_evolution_widens_in_place_and_refuses_what_would_lose_values() {
    let Some(py) = python() else { return };
    let d = Dir::new();
    d.write("t.json", r#"{"path": "w.duckdb"}"#);
    let run1 = lines(&[
        schema_msg(
            "s",
            &["id"],
            json!({"id": {"type": "integer"}, "n": {"type": "integer"}, "flag": {"type": "boolean"}, "gone": {"type": "string"}}),
        ),
        rec("s", json!({"id": 1, "n": 10, "flag": true, "gone": "x"})),
        state(1),
        schema_msg(
            "s",
            &["id"],
            json!({"id": {"type": "integer"}, "n": {"type": "number"}, "flag": {"type": ["string", "boolean"]}, "added": {"type": "string"}}),
        ),
        rec(
            "s",
            json!({"id": 2, "n": 2.5, "flag": "maybe", "added": "new"}),
        ),
        state(2),
    ]);
    d.run(&["target", "duckdb", "--config", "t.json"], Some(&run1))
        .ok();
    let f = d.join("w.duckdb");
    assert_eq!(
        read(&py, &["duckdb-types", f.to_str().unwrap(), "main", "s"]),
        [
            "id:BIGINT",
            "n:DOUBLE",
            "flag:VARCHAR",
            "gone:VARCHAR",
            "added:VARCHAR"
        ]
    );
    assert_eq!(
        read_json(
            &py,
            &[
                "duckdb",
                f.to_str().unwrap(),
                "SELECT id, n, flag, gone, added FROM main.s ORDER BY id"
            ]
        ),
        [
            json!([1, 10.0, "true", "x", null]),
            json!([2, 2.5, "maybe", null, "new"])
        ]
    );
    let run2 = lines(&[
        schema_msg(
            "s",
            &["id"],
            json!({"id": {"type": "integer"}, "gone": {"type": "object"}}),
        ),
        rec("s", json!({"id": 3, "gone": {}})),
        state(3),
    ]);
    let out = d
        .run(&["target", "duckdb", "--config", "t.json"], Some(&run2))
        .code(1);
    assert!(
        out.stderr
            .contains("column \"gone\" holds text but the schema now says JSON"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    assert_eq!(
        read(
            &py,
            &["duckdb", f.to_str().unwrap(), "SELECT count(*) FROM main.s"]
        ),
        ["[2]"]
    );
}

#[test]
fn duckdb_bad_values_roll_back_the_batch_or_go_to_quarantine() {
    let Some(py) = python() else { return };
    let d = Dir::new();
    d.write("t.json", r#"{"path": "w.duckdb"}"#);
    let schema = schema_msg(
        "s",
        &["id"],
        json!({"id": {"type": "integer"}, "amount": {"type": "string", "format": "x-singer.decimal", "precision": 6, "scale": 2}}),
    );
    let first = lines(&[
        schema.clone(),
        rec("s", json!({"id": 1, "amount": "10.00"})),
        state(1),
    ]);
    d.run(&["target", "duckdb", "--config", "t.json"], Some(&first))
        .ok();
    let input = lines(&[
        schema.clone(),
        rec("s", json!({"id": 2, "amount": "20.00"})),
        rec("s", json!({"id": 3, "amount": "123456.78"})),
        state(2),
    ]);
    let out = d
        .run(&["target", "duckdb", "--config", "t.json"], Some(&input))
        .code(1);
    assert!(
        out.stderr.contains("stream \"s\" (key id=3), column \"amount\": value 123456.78 has more digits than the column's precision"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "no state for a batch that failed");
    let f = d.join("w.duckdb");
    assert_eq!(
        read_json(
            &py,
            &[
                "duckdb",
                f.to_str().unwrap(),
                "SELECT id, amount FROM main.s ORDER BY id"
            ]
        ),
        [json!([1, "10.00"])]
    );
    // Quarantined, the bad record goes aside with its reason and the rest loads.
    let out = d
        .run(
            &[
                "target",
                "duckdb",
                "--config",
                "t.json",
                "--on-invalid",
                "quarantine",
            ],
            Some(&input),
        )
        .ok();
    assert_eq!(out.json_lines(), [json!({"n": 2})]);
    assert_eq!(
        read_json(
            &py,
            &[
                "duckdb",
                f.to_str().unwrap(),
                "SELECT id, amount FROM main.s ORDER BY id"
            ]
        ),
        [json!([1, "10.00"]), json!([2, "20.00"])]
    );
    let rejects = read_json(
        &py,
        &[
            "duckdb",
            f.to_str().unwrap(),
            "SELECT stream, reason, row_text FROM main._ferry_rejects",
        ],
    );
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0][0], "s");
    assert!(rejects[0][1].as_str().unwrap().contains("precision"));
    assert!(rejects[0][2].as_str().unwrap().contains("123456.78"));
}

/// Parquet: types read by pyarrow, files and partitions exactly as the manifest lists them.
#[test]
fn parquet_types_partitions_rolling_and_manifest() {
    let Some(py) = python() else { return };
    let d = Dir::new();
    d.write(
        "t.json",
        &json!({"path": "lake", "partition_by": {"events": "at"}, "file_max_rows": 2, "row_group_rows": 2}).to_string(),
    );
    let schema = schema_msg(
        "events",
        &["id"],
        json!({
            "id": {"type": "integer"},
            "amount": {"type": ["null", "string"], "format": "x-singer.decimal", "precision": 10, "scale": 3},
            "at": {"type": ["null", "string"], "format": "date-time"},
            "who": {"type": ["null", "string"]},
            "ctx": {"type": ["null", "object"], "properties": {"page": {"type": "string"}, "n": {"type": "integer"}}}
        }),
    );
    let mut msgs = vec![schema];
    let mut expected = Vec::new();
    for i in 0..7i64 {
        let day = 20 + i % 2;
        let at = format!("2026-11-{day}T23:59:59.{:06}Z", i * 111_111);
        let r = json!({"id": i, "amount": format!("{i}.125"), "at": at, "who": format!("ü{i}"), "ctx": {"page": format!("/p{i}"), "n": i}});
        expected.push(r.clone());
        msgs.push(rec("events", r));
        if i == 3 {
            msgs.push(state(1));
        }
    }
    msgs.push(rec(
        "events",
        json!({"id": 7, "amount": null, "at": null, "who": null, "ctx": null}),
    ));
    expected.push(json!({"id": 7, "amount": null, "at": null, "who": null, "ctx": null}));
    msgs.push(state(2));
    d.run(
        &["target", "parquet", "--config", "t.json"],
        Some(&lines(&msgs)),
    )
    .ok();
    let base = d.join("lake");
    let mut got = read_json(&py, &["parquet", base.to_str().unwrap(), "events"]);
    got.sort_by_key(|r| r["id"].as_i64());
    assert_eq!(got.len(), 8);
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g["id"], e["id"]);
        assert_eq!(g["who"], e["who"]);
        assert_eq!(g["ctx"], e["ctx"]);
        assert_eq!(
            g["amount"],
            e["amount"].as_str().map_or(Value::Null, |a| json!(a)),
        );
        assert_eq!(g["at"], e["at"]);
    }
    let schemas = read_json(&py, &["parquet-schema", base.to_str().unwrap(), "events"]);
    assert_eq!(
        schemas[0],
        json!({"id": "int64", "amount": "decimal128(10, 3)", "at": "timestamp[us, tz=UTC]", "who": "string", "ctx": "struct<page: string, n: int64>"})
    );
    assert!(
        read(&py, &["parquet-meta", base.to_str().unwrap(), "events"])
            .iter()
            .all(|c| c == "ZSTD")
    );
    // The manifest lists exactly the visible files, with their rows and key ranges.
    let m = d.json("lake/_ferry_manifest.json");
    let files = m["files"].as_array().unwrap();
    let mut listed: Vec<String> = files
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut on_disk = Vec::new();
    let mut stack = vec![base.join("events")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                on_disk.push(
                    e.path()
                        .strip_prefix(&base)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    on_disk.sort();
    assert_eq!(listed, on_disk, "no hidden or stray files");
    assert!(listed
        .iter()
        .any(|p| p.starts_with("events/at_date=2026-11-20/")));
    assert!(listed
        .iter()
        .any(|p| p.starts_with("events/at_date=2026-11-21/")));
    assert!(listed
        .iter()
        .any(|p| p.starts_with("events/at_date=__HIVE_DEFAULT_PARTITION__/")));
    assert!(files.len() >= 4, "rolled at 2 rows: {files:?}");
    assert_eq!(
        files
            .iter()
            .map(|f| f["rows"].as_u64().unwrap())
            .sum::<u64>(),
        8
    );
    assert_eq!(m["states"]["pipe"]["state"], json!({"n": 2}));
    // Snappy by choice.
    let d2 = Dir::new();
    d2.write(
        "t.json",
        r#"{"path": "lake", "compression": "snappy", "nested": "json"}"#,
    );
    d2.run(
        &["target", "parquet", "--config", "t.json"],
        Some(&lines(&msgs)),
    )
    .ok();
    let b2 = d2.join("lake");
    assert!(read(&py, &["parquet-meta", b2.to_str().unwrap(), "events"])
        .iter()
        .all(|c| c == "SNAPPY"));
    assert_eq!(
        read_json(&py, &["parquet-schema", b2.to_str().unwrap(), "events"])[0]["ctx"],
        "string"
    );
}

#[test]
fn parquet_schema_change_starts_a_new_file_and_the_manifest_keeps_both_schemas() {
    let Some(py) = python() else { return };
    let d = Dir::new();
    d.write("t.json", r#"{"path": "lake"}"#);
    let input = lines(&[
        schema_msg("s", &["id"], json!({"id": {"type": "integer"}})),
        rec("s", json!({"id": 1})),
        schema_msg(
            "s",
            &["id"],
            json!({"id": {"type": "integer"}, "x": {"type": ["null", "string"]}}),
        ),
        rec("s", json!({"id": 2, "x": "two"})),
        state(1),
    ]);
    d.run(&["target", "parquet", "--config", "t.json"], Some(&input))
        .ok();
    let m = d.json("lake/_ferry_manifest.json");
    assert_eq!(m["schemas"].as_array().unwrap().len(), 2);
    let files = m["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["schema"], 0);
    assert_eq!(files[1]["schema"], 1);
    let rows = read_json(&py, &["parquet", d.join("lake").to_str().unwrap(), "s"]);
    assert_eq!(rows, [json!({"id": 1}), json!({"id": 2, "x": "two"})]);
}

/// A pipeline killed at random points, then re-run: exactly the source rows.
fn kill_trial(py: &PathBuf, target: &str, kill_after: Option<u64>) {
    const ROWS: u64 = 40_000;
    let d = Dir::new();
    let mut body = String::from("id,name,amount\n");
    for i in 0..ROWS {
        body.push_str(&format!("{i},name {i},{i}.5\n"));
    }
    d.write("src/rows.csv", &body);
    let config = if target == "duckdb" {
        r#"{ path: w.duckdb, schema: main, batch_size_rows: 2000 }"#
    } else {
        r#"{ path: lake, row_group_rows: 2000 }"#
    };
    d.write(
        "ferry.yml",
        &format!(
            "pipelines:\n  p:\n    tap: {{ name: csv, config: {{ state_every_rows: 1000, files: [{{ entity: rows, path: src/rows.csv, keys: [id] }}] }} }}\n    target: {{ name: {target}, config: {config} }}\n    commit_interval_secs: 0.01\n"
        ),
    );
    crate::util::sync_killed_after(&d, kill_after, |n| {
        std::fs::read_to_string(d.join("state/p.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["bookmarks"]["rows"]["offset"].as_u64())
            .is_some_and(|o| o >= n)
    });
    d.run(&["sync", "p"], None).ok();
    let (count, distinct, sum) = if target == "duckdb" {
        let r = read_json(
            py,
            &[
                "duckdb",
                d.join("w.duckdb").to_str().unwrap(),
                "SELECT count(*), count(DISTINCT id), sum(amount)::DOUBLE FROM main.rows",
            ],
        );
        (
            r[0][0].as_u64().unwrap(),
            r[0][1].as_u64().unwrap(),
            r[0][2].as_f64().unwrap(),
        )
    } else {
        let rows = read_json(py, &["parquet", d.join("lake").to_str().unwrap(), "rows"]);
        let ids: std::collections::BTreeSet<i64> =
            rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        let sum: f64 = rows.iter().map(|r| r["amount"].as_f64().unwrap()).sum();
        (rows.len() as u64, ids.len() as u64, sum)
    };
    let expected: f64 = (0..ROWS).map(|i| i as f64 + 0.5).sum();
    assert_eq!(
        (count, distinct, sum),
        (ROWS, ROWS, expected),
        "{target} kill_after={kill_after:?}"
    );
}

#[test]
fn killed_duckdb_and_parquet_loads_resume_exactly() {
    let Some(py) = python() else { return };
    for target in ["duckdb", "parquet"] {
        for kill_after in [None, Some(1_000), Some(17_000), Some(33_000)] {
            kill_trial(&py, target, kill_after);
        }
    }
}

/// Copies the quickstart project (its inputs and ferry.yml) into a fresh folder.
fn quickstart_copy() -> Dir {
    let d = Dir::new();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");
    for sub in ["data", "day2", "crm", "events"] {
        for e in std::fs::read_dir(src.join(sub)).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            d.write(
                &format!("{sub}/{name}"),
                &std::fs::read_to_string(e.path()).unwrap(),
            );
        }
    }
    d.write(
        "ferry.yml",
        &std::fs::read_to_string(src.join("ferry.yml")).unwrap(),
    );
    d
}

/// Sum of a CSV column of decimals with two places, exactly, as text.
fn csv_cents(d: &Dir, rel: &str, col: usize) -> i64 {
    d.read(rel)
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .nth(col)
                .unwrap()
                .replace('.', "")
                .parse::<i64>()
                .unwrap()
        })
        .sum()
}

/// The README's first command's project: loads, a re-run loads nothing, "day 2" loads only
/// itself and its updates replace rows by key; values read back by DuckDB and pyarrow.
#[test]
fn quickstart_loads_then_nothing_then_only_day_two() {
    let Some(py) = python() else { return };
    let d = quickstart_copy();
    let out = d.run(&["sync", "--all"], None).ok();
    for s in ["customers", "orders", "order_items", "leads", "events"] {
        assert!(out.stderr.contains(s), "summary names {s}: {}", out.stderr);
    }
    let w = d.join("warehouse.duckdb");
    let w = w.to_str().unwrap();
    let counts = |d: &Dir| {
        read_json(
            &py,
            &[
                "duckdb",
                d.join("warehouse.duckdb").to_str().unwrap(),
                "SELECT (SELECT count(*) FROM shop.customers), (SELECT count(*) FROM shop.products), (SELECT count(*) FROM shop.orders), \
                 (SELECT count(*) FROM shop.order_items), (SELECT count(*) FROM crm.leads)",
            ],
        )
    };
    assert_eq!(counts(&d), [json!([600, 10, 2000, 4019, 300])]);
    let cents = csv_cents(&d, "data/orders.csv", 3);
    assert_eq!(
        read_json(
            &py,
            &[
                "duckdb",
                w,
                "SELECT sum(total)::VARCHAR, min(placed_at) FROM shop.orders"
            ]
        ),
        [json!([
            format!("{}.{:02}", cents / 100, cents % 100),
            "2026-11-01T00:00:36.000000Z"
        ])]
    );
    assert_eq!(
        read_json(&py, &["duckdb", w, "SELECT name, custom_fields.industry, custom_fields.tags FROM crm.leads WHERE id = 'lead_0001'"]),
        [json!(["Léa Müller", "retail", ["trial"]])]
    );
    let events = read_json(
        &py,
        &["parquet", d.join("lake").to_str().unwrap(), "events"],
    );
    assert_eq!(events.len(), 3000);
    assert!(d.json("lake/_ferry_manifest.json")["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["path"]
            .as_str()
            .unwrap()
            .starts_with("events/at_date=2026-11-0")));

    // Again: nothing new.
    let again = d.run(&["sync", "--all"], None).ok();
    assert_eq!(counts(&d), [json!([600, 10, 2000, 4019, 300])]);
    assert!(!again.stderr.contains("2000 rows"), "{}", again.stderr);

    // Day 2: only its files, and its updates replace rows by key.
    for e in std::fs::read_dir(d.join("day2")).unwrap().flatten() {
        std::fs::copy(e.path(), d.join("data").join(e.file_name())).unwrap();
    }
    let day2 = d.run(&["sync", "shop"], None).ok();
    assert!(
        day2.stderr.contains("180 rows"),
        "150 new + 30 updated orders: {}",
        day2.stderr
    );
    assert_eq!(counts(&d), [json!([640, 10, 2150, 4318, 300])]);
    assert_eq!(
        read_json(
            &py,
            &[
                "duckdb",
                w,
                "SELECT status, updated_at FROM shop.orders WHERE id = 1"
            ]
        ),
        [json!(["shipped", "2026-11-02T01:00:00.000000Z"])]
    );
}

#[test]
fn duckdb_nested_columns_evolve_without_losing_fields_and_loose_schemas_stay_json() {
    let Some(py) = python() else { return };
    let d = Dir::new();
    d.write("t.json", r#"{"path": "w.duckdb", "nested": "struct"}"#);
    let obj = |props: Value| json!({"type": ["null", "object"], "properties": props});
    let run = |msgs: &[Value]| {
        d.run(
            &["target", "duckdb", "--config", "t.json"],
            Some(&lines(msgs)),
        )
    };
    run(&[
        schema_msg("s", &["id"], json!({"id": {"type": "integer"}, "n": {"type": "integer"}, "meta": obj(json!({"a": {"type": "integer"}})),
            "loose": obj(json!({"any": {}, "bag": {"type": "object"}}))})),
        rec("s", json!({"id": 1, "n": 5, "meta": {"a": 1}, "loose": {"any": {"x": 1}, "bag": {"y": [2]}}})),
        state(1),
    ])
    .ok();
    // A sub-field appears; the integer column meets decimals.
    run(&[
        schema_msg("s", &["id"], json!({"id": {"type": "integer"}, "n": {"type": "string", "format": "x-singer.decimal", "precision": 10, "scale": 2},
            "meta": obj(json!({"a": {"type": "integer"}, "b": {"type": "string"}})), "loose": obj(json!({"any": {}, "bag": {"type": "object"}}))})),
        rec("s", json!({"id": 2, "n": "2.25", "meta": {"a": 2, "b": "two"}})),
        state(2),
    ])
    .ok();
    let f = d.join("w.duckdb");
    let f = f.to_str().unwrap();
    assert_eq!(
        read(&py, &["duckdb-types", f, "main", "s"]),
        [
            "id:BIGINT",
            "n:DECIMAL(21,2)",
            "meta:STRUCT(a BIGINT, b VARCHAR)",
            "loose:JSON"
        ]
    );
    assert_eq!(
        read_json(
            &py,
            &[
                "duckdb",
                f,
                "SELECT id, n, meta, loose::VARCHAR FROM main.s ORDER BY id"
            ]
        ),
        [
            json!([1, "5.00", {"a": 1, "b": null}, "{\"any\":{\"x\":1},\"bag\":{\"y\":[2]}}"]),
            json!([2, "2.25", {"a": 2, "b": "two"}, null])
        ]
    );
    // A sub-field that disappears would drop stored values: refused, nothing changes.
    let out = run(&[
        schema_msg(
            "s",
            &["id"],
            json!({"id": {"type": "integer"}, "meta": obj(json!({"b": {"type": "string"}}))}),
        ),
        rec("s", json!({"id": 3, "meta": {"b": "x"}})),
        state(3),
    ])
    .code(1);
    assert!(out.stderr.contains("would lose fields"), "{}", out.stderr);
    assert_eq!(
        read(&py, &["duckdb", f, "SELECT count(*) FROM main.s"]),
        ["[2]"]
    );
}

#[test]
fn parquet_partition_by_one_name_skips_streams_without_it() {
    let Some(py) = python() else { return };
    let d = Dir::new();
    d.write("t.json", r#"{"path": "lake", "partition_by": "at"}"#);
    d.run(
        &["target", "parquet", "--config", "t.json"],
        Some(&lines(&[
            schema_msg(
                "a",
                &["id"],
                json!({"id": {"type": "integer"}, "at": {"type": "string", "format": "date"}}),
            ),
            schema_msg("b", &["id"], json!({"id": {"type": "integer"}})),
            rec("a", json!({"id": 1, "at": "2026-11-22"})),
            rec("b", json!({"id": 2})),
            state(1),
        ])),
    )
    .ok();
    let m = d.json("lake/_ferry_manifest.json");
    let paths: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.iter().any(|p| p.starts_with("a/at_date=2026-11-22/")),
        "{paths:?}"
    );
    assert!(paths.iter().any(|p| p.starts_with("b/part-")), "{paths:?}");
    assert_eq!(
        read_json(&py, &["parquet", d.join("lake").to_str().unwrap(), "b"]),
        [json!({"id": 2})]
    );
}

#[test]
fn duckdb_first_load_appends_straight_then_upserts_once_a_key_repeats() {
    let Some(py) = python() else { return };
    let d = Dir::new();
    // Two rows per batch: the first batches of an empty table go straight in; the batch that
    // repeats a key (across batches, then within one) and all later ones go through the merge.
    d.write(
        "t.json",
        &json!({"path": "w.duckdb", "schema": "main", "batch_size_rows": 2}).to_string(),
    );
    let f = d.join("w.duckdb");
    let f = f.to_str().unwrap();
    let orders = |keys: &[&str]| {
        schema_msg(
            "orders",
            keys,
            json!({"id": {"type": "integer"}, "code": {"type": "string"}, "v": {"type": ["null", "string"]}}),
        )
    };
    let r = |id: i64, code: &str, v: &str| rec("orders", json!({"id": id, "code": code, "v": v}));
    let codes = schema_msg(
        "codes",
        &["code"],
        json!({"code": {"type": "string"}, "n": {"type": "integer"}}),
    );
    let c = |code: &str, n: i64| rec("codes", json!({"code": code, "n": n}));
    d.run(
        &["target", "duckdb", "--config", "t.json"],
        Some(&lines(&[
            orders(&["id", "code"]),
            codes.clone(),
            r(1, "a", "one"),
            r(2, "a", "two"),
            c("x", 1),
            c("y", 1),
            r(3, "a", "three"),
            r(1, "b", "other key"),
            state(1),
            c("é", 1),
            c("x", 2),
            r(5, "a", "five"),
            r(1, "a", "one again"),
            r(6, "a", "six"),
            r(6, "a", "six again"),
            state(2),
        ])),
    )
    .ok();
    assert_eq!(
        read(
            &py,
            &[
                "duckdb",
                f,
                "SELECT id, code, v FROM main.orders ORDER BY id, code"
            ]
        ),
        [
            r#"[1, "a", "one again"]"#,
            r#"[1, "b", "other key"]"#,
            r#"[2, "a", "two"]"#,
            r#"[3, "a", "three"]"#,
            r#"[5, "a", "five"]"#,
            r#"[6, "a", "six again"]"#,
        ]
    );
    assert_eq!(
        read(
            &py,
            &["duckdb", f, "SELECT code, n FROM main.codes ORDER BY code"]
        ),
        [r#"["x", 2]"#, r#"["y", 1]"#, r#"["é", 1]"#]
    );
    // A second run finds the table filled: everything is merged by key.
    d.run(
        &["target", "duckdb", "--config", "t.json"],
        Some(&lines(&[
            orders(&["id", "code"]),
            r(7, "a", "seven"),
            r(2, "a", "two, updated"),
            state(3),
        ])),
    )
    .ok();
    assert_eq!(
        read(
            &py,
            &[
                "duckdb",
                f,
                "SELECT id, v FROM main.orders WHERE code = 'a' ORDER BY id"
            ]
        ),
        [
            r#"[1, "one again"]"#,
            r#"[2, "two, updated"]"#,
            r#"[3, "three"]"#,
            r#"[5, "five"]"#,
            r#"[6, "six again"]"#,
            r#"[7, "seven"]"#,
        ]
    );
}

#[test]
fn duckdb_schema_named_like_the_database_file_is_not_ambiguous() {
    let Some(py) = python() else { return };
    let d = Dir::new();
    // `shop.duckdb` is the catalog `shop`: a schema `shop` in it must still work (every table
    // is qualified with the catalog), first load, merge, rejects and the state table alike.
    d.write(
        "t.json",
        &json!({"path": "shop.duckdb", "schema": "shop"}).to_string(),
    );
    let f = d.join("shop.duckdb");
    let f = f.to_str().unwrap();
    let orders = schema_msg(
        "orders",
        &["id"],
        json!({"id": {"type": "integer"}, "n": {"type": "string"}}),
    );
    let r = |id: i64, n: &str| rec("orders", json!({"id": id, "n": n}));
    for (batch, st) in [
        (vec![r(1, "a"), r(2, "b")], 1),
        (vec![r(2, "b2"), r(3, "c")], 2),
    ] {
        let mut msgs = vec![orders.clone()];
        msgs.extend(batch);
        msgs.push(state(st));
        d.run(
            &["target", "duckdb", "--config", "t.json"],
            Some(&lines(&msgs)),
        )
        .ok();
    }
    assert_eq!(
        read(
            &py,
            &[
                "duckdb",
                f,
                "SELECT id, n FROM shop.shop.orders ORDER BY id"
            ]
        ),
        [r#"[1, "a"]"#, r#"[2, "b2"]"#, r#"[3, "c"]"#]
    );
    assert_eq!(
        read(
            &py,
            &[
                "duckdb",
                f,
                "SELECT state::VARCHAR FROM shop.shop._ferry_state"
            ]
        ),
        [r#"["{\"n\":2}"]"#]
    );
}

#[test]
fn non_finite_floats_arrive_in_every_warehouse() {
    let float = json!({"type": ["null", "number", "string"], "pattern": "^(NaN|Infinity|-Infinity)$",
                       "x-sql-datatype": "double precision"});
    let input = lines(&[
        schema_msg("m", &["id"], json!({"id": {"type": "integer"}, "f": float})),
        rec("m", json!({"id": 1, "f": 1.5})),
        rec("m", json!({"id": 2, "f": "NaN"})),
        rec("m", json!({"id": 3, "f": "Infinity"})),
        rec("m", json!({"id": 4, "f": "-Infinity"})),
        rec("m", json!({"id": 5, "f": null})),
        state(1),
    ]);
    for wh in warehouses("nonfinite") {
        let d = Dir::new();
        d.write("t.json", &wh.config(&d, json!({})));
        d.run(&["target", wh.name(), "--config", "t.json"], Some(&input))
            .ok();
        assert_eq!(
            wh.rows(&d, "m", &["id", "f"]),
            vec![
                json!([1, 1.5]),
                json!([2, "NaN"]),
                json!([3, "Infinity"]),
                json!([4, "-Infinity"]),
                json!([5, null])
            ],
            "{}",
            wh.name()
        );
        // Any other string is refused, naming the stream.
        let bad = lines(&[
            schema_msg("m", &["id"], json!({"id": {"type": "integer"}, "f": float})),
            rec("m", json!({"id": 6, "f": "nan"})),
        ]);
        d.run(&["target", wh.name(), "--config", "t.json"], Some(&bad))
            .code(1)
            .stderr_has("stream \"m\"");
    }
}
