//! `ferry target postgres` against the PostgreSQL on the machine (127.0.0.1:5432, user
//! postgres, database test, or FERRY_PG_* variables). Each test works in its own schema and
//! drops it at the end.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

use crate::util::{lines, Dir};

pub fn pg_env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Runs SQL with psql in a database of the test server; rows as `a|b|c` lines.
pub fn psql(db: &str, sql: &str) -> Vec<String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-At", "-F", "|", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-h",
            &pg_env("FERRY_PG_HOST", "127.0.0.1"),
            "-p",
            &pg_env("FERRY_PG_PORT", "5432"),
        ])
        .args(["-U", &pg_env("FERRY_PG_USER", "postgres"), "-d", db])
        .args(["-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql failed for {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A schema of its own for one test, dropped when the test ends.
pub struct Pg {
    pub schema: String,
}

impl Pg {
    pub fn new(tag: &str) -> Pg {
        static N: AtomicU32 = AtomicU32::new(0);
        let schema = format!(
            "ferry_t_{tag}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let pg = Pg { schema };
        pg.sql(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", pg.schema));
        pg
    }

    /// Runs SQL with psql; rows as `a|b|c` lines.
    pub fn sql(&self, sql: &str) -> Vec<String> {
        psql(&pg_env("FERRY_PG_DB", "test"), sql)
    }

    pub fn config(&self, extra: Value) -> String {
        let mut c = json!({
            "host": pg_env("FERRY_PG_HOST", "127.0.0.1"),
            "port": pg_env("FERRY_PG_PORT", "5432").parse::<u16>().unwrap(),
            "user": pg_env("FERRY_PG_USER", "postgres"),
            "password": "not-needed-with-trust",
            "dbname": pg_env("FERRY_PG_DB", "test"),
            "default_target_schema": self.schema,
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c.to_string()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-h",
                &pg_env("FERRY_PG_HOST", "127.0.0.1"),
                "-U",
                &pg_env("FERRY_PG_USER", "postgres"),
                "-d",
                &pg_env("FERRY_PG_DB", "test"),
            ])
            .args([
                "-c",
                &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema),
            ])
            .output();
    }
}

fn schema_msg(stream: &str, keys: &[&str], props: Value) -> Value {
    json!({"type": "SCHEMA", "stream": stream, "key_properties": keys, "schema": {"type": "object", "properties": props}})
}

fn rec(stream: &str, r: Value) -> Value {
    json!({"type": "RECORD", "stream": stream, "record": r})
}

fn state(n: i64) -> Value {
    json!({"type": "STATE", "value": {"bookmarks": {"s": n}}})
}

#[test]
fn types_values_and_upserts() {
    let pg = Pg::new("types");
    let d = Dir::new();
    d.write("t.json", &pg.config(json!({})));
    let props = json!({
        "id": {"type": "integer"},
        "amount": {"type": ["null", "number"]},
        "dec": {"type": ["null", "string"], "format": "x-singer.decimal", "precision": 38, "scale": 9},
        "at": {"type": ["null", "string"], "format": "date-time"},
        "d": {"type": ["null", "string"], "format": "date"},
        "ok": {"type": ["null", "boolean"]},
        "meta": {"type": ["null", "object"]},
        "tags": {"type": ["null", "array"], "items": {"type": "string"}},
        "name": {"type": ["null", "string"]},
        "Mixed Case \"Col\"": {"type": ["null", "string"]},
        "uid": {"type": ["null", "string"], "x-sql-datatype": "uuid"}
    });
    // Written as text: a Rust float literal would round the decimal before ferry saw it.
    let big = r#"{"type": "RECORD", "stream": "public-orders", "record": {"id": 1, "amount": 12345678901234567890.123456789, "dec": "-0.000000001", "at": "2024-02-29T23:59:59.123456+02:00", "d": "2024-01-31", "ok": true, "meta": {"a": [1, {"b": null}]}, "tags": ["x", "y"], "name": "Ann\ttab\nnewline \\ back", "Mixed Case \"Col\"": "m", "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}}"#;
    let first = format!(
        "{}{big}\n{}",
        lines(&[schema_msg("public-orders", &["id"], props.clone())]),
        lines(&[
            rec("public-orders", json!({"id": 2, "name": "first version"})),
            rec("public-orders", json!({"id": 3, "name": "Ünïcödé ✓ 日本"})),
            rec(
                "public-orders",
                json!({"id": 2, "name": "second version", "amount": 2})
            ),
            state(1),
        ])
    );
    let out = d
        .run(&["target", "postgres", "--config", "t.json"], Some(&first))
        .ok();
    assert_eq!(out.json_lines(), vec![json!({"bookmarks": {"s": 1}})]);
    let t = format!("\"{}\".orders", pg.schema);
    assert_eq!(
        pg.sql(&format!("SELECT id, amount::text, dec::text, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), d, ok, meta::text, tags::text, name, \"mixed case \"\"col\"\"\", uid FROM {t} ORDER BY id")),
        [
            // psql prints the newline inside `name` as a line break.
            "1|12345678901234567890.123456789|-0.000000001|2024-02-29 21:59:59.123456|2024-01-31|t|{\"a\": [1, {\"b\": null}]}|[\"x\", \"y\"]|Ann\ttab",
            "newline \\ back|m|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "2|2|||||||second version||",
            "3||||||||Ünïcödé ✓ 日本||",
        ]
    );
    let types = pg.sql(&format!(
        "SELECT column_name || ':' || data_type FROM information_schema.columns WHERE table_schema = '{}' AND table_name = 'orders' ORDER BY ordinal_position",
        pg.schema
    ));
    assert_eq!(
        types,
        [
            "id:bigint",
            "amount:numeric",
            "dec:numeric",
            "at:timestamp with time zone",
            "d:date",
            "ok:boolean",
            "meta:jsonb",
            "tags:jsonb",
            "name:text",
            "mixed case \"col\":text",
            "uid:uuid"
        ]
    );
    // A later run upserts: id 2 changes, id 4 arrives, nothing is duplicated.
    let second = lines(&[
        schema_msg("public-orders", &["id"], props),
        rec("public-orders", json!({"id": 4, "name": "new"})),
        rec("public-orders", json!({"id": 2, "name": "third version"})),
        state(2),
    ]);
    d.run(&["target", "postgres", "--config", "t.json"], Some(&second))
        .ok();
    assert_eq!(
        pg.sql(&format!("SELECT id, name FROM {t} ORDER BY id")),
        [
            "1|Ann\ttab",
            "newline \\ back",
            "2|third version",
            "3|Ünïcödé ✓ 日本",
            "4|new"
        ]
    );
}

#[test]
fn schema_evolution_keeps_values() {
    let pg = Pg::new("evo");
    let d = Dir::new();
    d.write("t.json", &pg.config(json!({})));
    let run1 = lines(&[
        schema_msg(
            "s",
            &["id"],
            json!({"id": {"type": "integer"}, "n": {"type": "integer"}, "flag": {"type": "boolean"}, "gone": {"type": "string"}}),
        ),
        rec("s", json!({"id": 1, "n": 10, "flag": true, "gone": "x"})),
        state(1),
        // Mid-stream: n widens to number, flag to string, a column appears, `gone` disappears.
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
    d.run(&["target", "postgres", "--config", "t.json"], Some(&run1))
        .ok();
    let t = format!("\"{}\".s", pg.schema);
    assert_eq!(
        pg.sql(&format!(
            "SELECT id, n, flag, gone, added FROM {t} ORDER BY id"
        )),
        ["1|10|true|x|", "2|2.5|maybe||new"]
    );
    let types = pg.sql(&format!("SELECT column_name || ':' || data_type FROM information_schema.columns WHERE table_schema = '{}' AND table_name = 's' ORDER BY ordinal_position", pg.schema));
    assert_eq!(
        types,
        [
            "id:bigint",
            "n:numeric",
            "flag:text",
            "gone:text",
            "added:text"
        ]
    );
    // A change that cannot be made safely fails with what to do, and commits nothing.
    let run2 = lines(&[rec("s", json!({"id": 3, "n": 1})), state(3)]);
    let run2 = format!(
        "{}{}",
        lines(&[schema_msg(
            "s",
            &["id"],
            json!({"id": {"type": "integer"}, "gone": {"type": "object"}})
        )]),
        run2
    );
    let out = d
        .run(&["target", "postgres", "--config", "t.json"], Some(&run2))
        .code(1);
    assert!(
        out.stderr
            .contains("column \"gone\" holds text but the schema now says JSON"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    assert_eq!(pg.sql(&format!("SELECT count(*) FROM {t}")), ["2"]);
}

#[test]
fn activate_version_replaces_only_after_the_reload() {
    let pg = Pg::new("ver");
    let d = Dir::new();
    d.write(
        "t.json",
        &pg.config(json!({"add_metadata_columns": true, "hard_delete": true})),
    );
    let v = |version: i64, ids: &[i64], activate_first: bool| {
        let mut m = vec![schema_msg("s", &["id"], json!({"id": {"type": "integer"}}))];
        if activate_first {
            m.push(json!({"type": "ACTIVATE_VERSION", "stream": "s", "version": version}));
        }
        for id in ids {
            m.push(json!({"type": "RECORD", "stream": "s", "record": {"id": id}, "version": version, "time_extracted": "2026-11-22T00:00:00Z"}));
        }
        m.push(json!({"type": "ACTIVATE_VERSION", "stream": "s", "version": version}));
        m.push(state(version));
        lines(&m)
    };
    let t = format!("\"{}\".s", pg.schema);
    d.run(
        &["target", "postgres", "--config", "t.json"],
        Some(&v(1, &[1, 2, 3], true)),
    )
    .ok();
    assert_eq!(
        pg.sql(&format!(
            "SELECT id, _sdc_table_version FROM {t} ORDER BY id"
        )),
        ["1|1", "2|1", "3|1"]
    );
    d.run(
        &["target", "postgres", "--config", "t.json"],
        Some(&v(2, &[1, 3], true)),
    )
    .ok();
    assert_eq!(
        pg.sql(&format!(
            "SELECT id, _sdc_table_version, _sdc_extracted_at IS NOT NULL FROM {t} ORDER BY id"
        )),
        ["1|2|t", "3|2|t"]
    );
    // An ACTIVATE_VERSION that arrives before any record of its version empties nothing.
    let early = lines(&[
        schema_msg("s", &["id"], json!({"id": {"type": "integer"}})),
        json!({"type": "ACTIVATE_VERSION", "stream": "s", "version": 9}),
        state(9),
    ]);
    d.run(&["target", "postgres", "--config", "t.json"], Some(&early))
        .ok();
    assert_eq!(pg.sql(&format!("SELECT count(*) FROM {t}")), ["2"]);
}

#[test]
fn bad_values_roll_back_the_batch() {
    let pg = Pg::new("bad");
    let d = Dir::new();
    d.write("t.json", &pg.config(json!({})));
    let props = json!({"id": {"type": "integer"}, "price": {"type": "number", "x-sql-datatype": "numeric(5,2)"}, "s": {"type": "string"}});
    let good = lines(&[
        schema_msg("s", &["id"], props.clone()),
        rec("s", json!({"id": 1, "price": 1.5, "s": "a"})),
        state(1),
    ]);
    d.run(&["target", "postgres", "--config", "t.json"], Some(&good))
        .ok();
    let t = format!("\"{}\".s", pg.schema);
    for (bad, want) in [
        (
            rec("s", json!({"id": 2, "price": 123456.7, "s": "b"})),
            "numeric field overflow",
        ),
        (
            rec("s", json!({"id": 3, "price": 1, "s": "nul \u{0} byte"})),
            "stream \"s\" (key id=3), column \"s\": value \"nul \\u0000 byte\" has a NUL byte",
        ),
    ] {
        let input = lines(&[
            schema_msg("s", &["id"], props.clone()),
            rec("s", json!({"id": 10, "price": 1, "s": "ok"})),
            bad,
            state(2),
        ]);
        let out = d
            .run(&["target", "postgres", "--config", "t.json"], Some(&input))
            .code(1);
        assert!(out.stderr.contains(want), "want {want}: {}", out.stderr);
        assert!(out.stderr.contains("stream \"s\""), "{}", out.stderr);
        assert!(out.stdout.is_empty());
        assert_eq!(
            pg.sql(&format!("SELECT id FROM {t} ORDER BY id")),
            ["1"],
            "nothing of the failed batch is visible"
        );
    }
}

#[test]
fn names_are_quoted_folded_and_cut() {
    let pg = Pg::new("names");
    let d = Dir::new();
    d.write("t.json", &pg.config(json!({"primary_key_required": false})));
    let long = "c".repeat(70);
    let input = lines(&[
        schema_msg(
            "src-Weird \"Table\"; drop",
            &[],
            json!({"Id": {"type": "integer"}, "id": {"type": "integer"}, long.clone(): {"type": "string"}, format!("{long}2"): {"type": "string"}}),
        ),
        rec(
            "src-Weird \"Table\"; drop",
            json!({"Id": 1, "id": 2, long.clone(): "a", format!("{long}2"): "b"}),
        ),
        state(1),
    ]);
    d.run(&["target", "postgres", "--config", "t.json"], Some(&input))
        .ok();
    let cols = pg.sql(&format!(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = '{}' AND table_name = 'weird \"table\"; drop' ORDER BY ordinal_position",
        pg.schema
    ));
    assert_eq!(
        cols,
        [
            "id".to_string(),
            "id_2".to_string(),
            "c".repeat(63),
            format!("{}_2", "c".repeat(61))
        ]
    );
    assert_eq!(
        pg.sql(&format!(
            "SELECT * FROM \"{}\".\"weird \"\"table\"\"; drop\"",
            pg.schema
        )),
        ["1|2|a|b"]
    );
}

#[test]
fn connection_errors_name_the_host_not_the_password() {
    let d = Dir::new();
    d.write("t.json", r#"{"host": "127.0.0.1", "port": 1, "user": "u", "password": "sup3r-s3cret-pw", "dbname": "x"}"#);
    let out = d
        .run(&["target", "postgres", "--config", "t.json"], Some(""))
        .code(1);
    assert!(
        out.stderr
            .contains("cannot connect to Postgres at 127.0.0.1:1/x as u"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("sup3r"), "{}", out.stderr);
}

fn kill_trial(pg: &Pg, keyed: bool, kill_after: Option<u64>) {
    const ROWS: u64 = 60_000;
    let d = Dir::new();
    let mut body = String::from("id,name,amount\n");
    for i in 0..ROWS {
        body.push_str(&format!("{i},name {i},{i}.5\n"));
    }
    d.write("src/rows.csv", &body);
    let keys = if keyed { "[id]" } else { "[]" };
    d.write(
        "ferry.yml",
        &format!(
            "pipelines:\n  p:\n    tap: {{ name: csv, config: {{ state_every_rows: 1000, files: [{{ entity: rows, path: src/rows.csv, keys: {keys} }}] }} }}\n    target: {{ name: postgres, config: {} }}\n    commit_interval_secs: 0.01\n",
            pg.config(json!({"state_table": "_ferry_state", "batch_size_rows": 2000, "primary_key_required": keyed}))
        ),
    );
    let t = format!("\"{}\".rows", pg.schema);
    pg.sql(&format!(
        "DROP TABLE IF EXISTS {t}; DROP TABLE IF EXISTS \"{}\"._ferry_state",
        pg.schema
    ));
    crate::util::sync_killed_after(&d, kill_after, |n| {
        let offset: Option<_> = std::fs::read_to_string(d.join("state/p.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["bookmarks"]["rows"]["offset"].as_u64());

        offset.is_some_and(|o| o >= n)
    });
    let out = d.run(&["sync", "p"], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let got = pg.sql(&format!(
        "SELECT count(*), count(DISTINCT id), min(id), max(id), sum(amount) FROM {t}"
    ));
    let sum: f64 = (0..ROWS).map(|i| i as f64 + 0.5).sum();
    assert_eq!(
        got,
        [format!("{ROWS}|{ROWS}|0|{}|{sum:.1}", ROWS - 1)],
        "keyed={keyed} kill_after={kill_after:?}"
    );
}

#[test]
fn killed_loads_resume_exactly_keyed_and_append_only() {
    let pg = Pg::new("kill");
    for kill_after in [None, Some(1_000), Some(23_000), Some(47_000)] {
        kill_trial(&pg, true, kill_after);
        kill_trial(&pg, false, kill_after);
    }
}

/// A Python SDK tap's stream, loaded by ferry and by pipelinewise-target-postgres: the same rows.
#[test]
fn same_rows_as_pipelinewise_target_postgres() {
    let Some(tap) = crate::interop::require("tap-jsonl") else {
        return;
    };
    let Some(pw) = crate::interop::require("target-postgres") else {
        return;
    };
    let ours = Pg::new("pw_ferry");
    let theirs = Pg::new("pw_python");
    let d = Dir::new();
    d.write(
        "src/x.jsonl",
        "{\"id\": 1, \"name\": \"a\", \"amount\": 1.5, \"meta\": {\"k\": [1, 2]}}\n\
         {\"id\": 2, \"name\": \"ü \\\\ \\\"q\\\"\", \"amount\": 20000000000.25, \"meta\": null}\n\
         {\"id\": 1, \"name\": \"a2\", \"amount\": 3, \"meta\": {}}\n\
         {\"id\": 3, \"name\": null, \"amount\": -0.5, \"meta\": {\"nested\": {\"x\": \"y\"}}}\n",
    );
    d.write(
        "c.json",
        &json!({"path": d.join("src/*.jsonl"), "stream_name": "things", "primary_keys": ["id"]})
            .to_string(),
    );
    let mut c = Command::new(&tap);
    c.current_dir(d.path()).args(["--config", "c.json"]);
    let msgs = crate::util::run(c, None).ok().stdout;
    d.write("ours.json", &ours.config(json!({})));
    d.write("theirs.json", &theirs.config(json!({})));
    d.run(
        &["target", "postgres", "--config", "ours.json"],
        Some(&msgs),
    )
    .ok();
    let mut c = Command::new(&pw);
    c.current_dir(d.path()).args(["--config", "theirs.json"]);
    crate::util::run(c, Some(&msgs)).ok();
    let q = |pg: &Pg| {
        pg.sql(&format!("SELECT id::bigint, coalesce(name, '<null>'), amount::numeric, coalesce(meta::text, '<null>') FROM \"{}\".things ORDER BY id", pg.schema))
    };
    let (a, b) = (q(&ours), q(&theirs));
    // (No tab in the text: pipelinewise-target-postgres 2.1.2 stores a tab as the two
    // characters `\t`; ferry keeps the tab, see types_values_and_upserts.)
    assert_eq!(
        a,
        [
            "1|a2|3|{}",
            "2|ü \\ \"q\"|20000000000.25|<null>",
            "3|<null>|-0.5|{\"nested\": {\"x\": \"y\"}}"
        ]
    );
    assert_eq!(
        a, b,
        "ferry and pipelinewise-target-postgres load the same rows"
    );
}

#[test]
fn quarantine_sets_rejected_values_aside() {
    let pg = Pg::new("quar");
    let d = Dir::new();
    d.write("t.json", &pg.config(json!({})));
    let props = json!({"id": {"type": "integer"}, "price": {"type": "number", "x-sql-datatype": "numeric(5,2)"}});
    let mut msgs = vec![schema_msg("s", &["id"], props)];
    for i in 1..=40 {
        let price = if i == 17 || i == 33 {
            json!(123456.7)
        } else {
            json!(i)
        };
        msgs.push(rec("s", json!({"id": i, "price": price})));
    }
    msgs.push(state(1));
    let out = d
        .run(
            &[
                "target",
                "postgres",
                "--config",
                "t.json",
                "--on-invalid",
                "quarantine",
            ],
            Some(&lines(&msgs)),
        )
        .ok();
    assert_eq!(out.json_lines(), vec![json!({"bookmarks": {"s": 1}})]);
    let t = format!("\"{}\".s", pg.schema);
    assert_eq!(
        pg.sql(&format!("SELECT count(*), sum(id) FROM {t}")),
        [format!("38|{}", (1..=40).sum::<i32>() - 17 - 33)]
    );
    let rejects = pg.sql(&format!(
        "SELECT stream, reason, row_text FROM \"{}\"._ferry_rejects ORDER BY row_text",
        pg.schema
    ));
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    assert!(
        rejects[0].starts_with("s|numeric field overflow|17\t123456.7"),
        "{rejects:?}"
    );
    assert!(
        rejects[1].starts_with("s|numeric field overflow|33\t123456.7"),
        "{rejects:?}"
    );
}

/// TLS against the server's own certificate (Debian's snakeoil one on a stock machine).
#[test]
fn tls_modes() {
    let pg = Pg::new("tls");
    if pg.sql("SHOW ssl") != ["on"] {
        assert!(
            std::env::var("FERRY_REQUIRE_TLS").is_err(),
            "the server has ssl off"
        );
        return;
    }
    let cert = pg.sql("SHOW ssl_cert_file").remove(0);
    let cert = if cert.starts_with('/') {
        cert
    } else {
        format!("{}/{cert}", pg.sql("SHOW data_directory")[0])
    };
    let d = Dir::new();
    let input = lines(&[
        schema_msg("s", &["id"], json!({"id": {"type": "integer"}})),
        rec("s", json!({"id": 1})),
        state(1),
    ]);
    for (mode, root, ok) in [
        ("disable", None, true),
        ("prefer", None, true),
        ("require", None, true),
        ("verify-ca", Some(cert.as_str()), true),
        // The certificate names the machine, not 127.0.0.1: a full check must refuse it.
        ("verify-full", Some(cert.as_str()), false),
        // Without the server's CA, the public roots do not vouch for it.
        ("verify-ca", None, false),
    ] {
        let mut extra = json!({"sslmode": mode});
        if let Some(r) = root {
            extra["sslrootcert"] = json!(r);
        }
        d.write("t.json", &pg.config(extra));
        let out = d.run(&["target", "postgres", "--config", "t.json"], Some(&input));
        if ok {
            assert_eq!(out.code, 0, "{mode} {root:?}: {}", out.stderr);
        } else {
            assert_eq!(out.code, 1, "{mode} {root:?} should fail");
            assert!(
                out.stderr.contains(&format!("sslmode {mode}"))
                    && out.stderr.to_lowercase().contains("certificate"),
                "{mode}: {}",
                out.stderr
            );
        }
    }
    assert_eq!(
        pg.sql(&format!("SELECT count(*) FROM \"{}\".s", pg.schema)),
        ["1"]
    );
}

#[test]
fn flattening_makes_columns_of_nested_objects() {
    let pg = Pg::new("flat");
    let d = Dir::new();
    d.write(
        "t.json",
        &pg.config(json!({"data_flattening_max_level": 1})),
    );
    let props = json!({
        "id": {"type": "integer"},
        "address": {"type": ["null", "object"], "properties": {"city": {"type": "string"}, "geo": {"type": "object", "properties": {"lat": {"type": "number"}}}}},
        "tags": {"type": "array", "items": {"type": "string"}}
    });
    let input = lines(&[
        schema_msg("s", &["id"], props),
        rec(
            "s",
            json!({"id": 1, "address": {"city": "Oslo", "geo": {"lat": 59.9}}, "tags": ["a"]}),
        ),
        rec("s", json!({"id": 2, "address": null, "tags": []})),
        state(1),
    ]);
    d.run(&["target", "postgres", "--config", "t.json"], Some(&input))
        .ok();
    let cols = pg.sql(&format!(
        "SELECT column_name || ':' || data_type FROM information_schema.columns WHERE table_schema = '{}' AND table_name = 's' ORDER BY ordinal_position",
        pg.schema
    ));
    assert_eq!(
        cols,
        [
            "id:bigint",
            "address__city:text",
            "address__geo:jsonb",
            "tags:jsonb"
        ]
    );
    assert_eq!(
        pg.sql(&format!(
            "SELECT id, address__city, address__geo::text, tags::text FROM \"{}\".s ORDER BY id",
            pg.schema
        )),
        ["1|Oslo|{\"lat\": 59.9}|[\"a\"]", "2|||[]"]
    );
}

/// A full-table load resumed after its last chunk sends ACTIVATE_VERSION with no new records of
/// the version: the rows that vanished at the source must still go.
#[test]
fn activate_version_after_a_resumed_load() {
    let pg = Pg::new("ver_resume");
    let d = Dir::new();
    d.write(
        "t.json",
        &pg.config(json!({"add_metadata_columns": true, "hard_delete": true})),
    );
    let schema = schema_msg("s", &["id"], json!({"id": {"type": "integer"}}));
    let rec_v = |id: i64, v: i64| json!({"type": "RECORD", "stream": "s", "record": {"id": id}, "version": v});
    // Version 1: rows 1..3, activated.
    d.run(
        &["target", "postgres", "--config", "t.json"],
        Some(&lines(&[
            schema.clone(),
            rec_v(1, 1),
            rec_v(2, 1),
            rec_v(3, 1),
            json!({"type": "ACTIVATE_VERSION", "stream": "s", "version": 1}),
            state(1),
        ])),
    )
    .ok();
    // Version 2 is loaded (rows 1 and 3), but the run stops before its ACTIVATE_VERSION.
    d.run(
        &["target", "postgres", "--config", "t.json"],
        Some(&lines(&[
            schema.clone(),
            rec_v(1, 2),
            rec_v(3, 2),
            state(2),
        ])),
    )
    .ok();
    // The resumed run has nothing left to read and only activates version 2.
    d.run(
        &["target", "postgres", "--config", "t.json"],
        Some(&lines(&[
            schema,
            json!({"type": "ACTIVATE_VERSION", "stream": "s", "version": 2}),
            state(3),
        ])),
    )
    .ok();
    assert_eq!(
        pg.sql(&format!("SELECT id FROM \"{}\".s ORDER BY id", pg.schema)),
        ["1", "3"]
    );
}

/// Keyed streams load on connections of their own (up to `max_parallelism`), append-only ones
/// with the state on the main connection; the rows are the same either way.
#[test]
fn streams_load_in_parallel_on_separate_connections() {
    let pg = Pg::new("par");
    for max in [4, 1] {
        let d = Dir::new();
        d.write(
            "t.json",
            &pg.config(json!({"state_table": "_ferry_state", "batch_size_rows": 3, "primary_key_required": false,
                "max_parallelism": max})),
        );
        let mut msgs = Vec::new();
        for t in ["a", "b", "c"] {
            msgs.push(schema_msg(
                t,
                &["id"],
                json!({"id": {"type": "integer"}, "v": {"type": "string"}}),
            ));
        }
        msgs.push(schema_msg("z", &[], json!({"id": {"type": "integer"}})));
        for i in 0..20 {
            for t in ["a", "b", "c"] {
                // Each key twice, in different batches: the last one wins.
                msgs.push(rec(t, json!({"id": i % 10, "v": format!("{t}{i}")})));
            }
            msgs.push(rec("z", json!({"id": i})));
            if i % 7 == 6 {
                msgs.push(state(i));
            }
        }
        msgs.push(state(99));
        let out = d
            .run(
                &["target", "postgres", "--config", "t.json"],
                Some(&lines(&msgs)),
            )
            .ok();
        let own = out
            .stderr
            .matches("Keyed stream loads on a connection of its own.")
            .count();
        assert_eq!(own, if max == 4 { 3 } else { 0 }, "{}", out.stderr);
        for t in ["a", "b", "c"] {
            let rows = pg.sql(&format!(
                "SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM \"{}\".{t}",
                pg.schema
            ));
            let want: Vec<String> = (0..10).map(|i| format!("{i}={t}{}", i + 10)).collect();
            assert_eq!(rows, [want.join(",")], "max_parallelism={max}");
        }
        assert_eq!(
            pg.sql(&format!(
                "SELECT count(*), sum(id) FROM \"{}\".z",
                pg.schema
            )),
            ["20|190"]
        );
        assert_eq!(
            pg.sql(&format!(
                "SELECT state::text FROM \"{}\"._ferry_state",
                pg.schema
            )),
            ["{\"bookmarks\": {\"s\": 99}}"]
        );
        pg.sql(&format!("DROP SCHEMA \"{}\" CASCADE", pg.schema));
    }
}

/// A keyed and an append-only stream loading at once (the keyed one on its own connection),
/// killed at several points and re-run: exactly the source rows in both.
#[test]
fn killed_parallel_load_of_keyed_and_append_only_streams_resumes_exactly() {
    const ROWS: u64 = 30_000;
    let pg = Pg::new("killpar");
    for kill_after in [None, Some(2_000), Some(15_000), Some(27_000)] {
        let d = Dir::new();
        for name in ["k", "a"] {
            let mut body = String::from("id,amount\n");
            for i in 0..ROWS {
                body.push_str(&format!("{i},{i}.5\n"));
            }
            d.write(&format!("src/{name}.csv"), &body);
        }
        d.write(
            "ferry.yml",
            &format!(
                "pipelines:\n  p:\n    tap: {{ name: csv, config: {{ state_every_rows: 1000, files: [{{ entity: k, path: src/k.csv, keys: [id] }}, {{ entity: a, path: src/a.csv }}] }} }}\n    target: {{ name: postgres, config: {} }}\n    commit_interval_secs: 0.01\n",
                pg.config(json!({"state_table": "_ferry_state", "batch_size_rows": 1500, "primary_key_required": false}))
            ),
        );
        pg.sql(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", pg.schema));
        crate::util::sync_killed_after(&d, kill_after, |n| {
            std::fs::read_to_string(d.join("state/p.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| {
                    ["k", "a"]
                        .iter()
                        .any(|s| v["bookmarks"][s]["offset"].as_u64().is_some_and(|o| o >= n))
                })
        });
        let out = d.run(&["sync", "p"], None);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let sum: f64 = (0..ROWS).map(|i| i as f64 + 0.5).sum();
        for t in ["k", "a"] {
            assert_eq!(
                pg.sql(&format!(
                    "SELECT count(*), count(DISTINCT id), sum(amount) FROM \"{}\".{t}",
                    pg.schema
                )),
                [format!("{ROWS}|{ROWS}|{sum:.1}")],
                "{t} kill_after={kill_after:?}"
            );
        }
    }
}
