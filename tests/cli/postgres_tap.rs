//! `ferry tap postgres` against the PostgreSQL on the machine: discovery, every type, the three
//! replication methods, resume after a kill, and a Postgres-to-Postgres pipeline.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::postgres::Pg;
use crate::util::Dir;

/// A project with one pipeline from `pg`'s schema into a JSON-lines folder (or another target).
/// The tap's config for `pg`'s schema.
fn tap_config(pg: &Pg, extra: Value) -> Value {
    let mut tap: Value = serde_json::from_str(&pg.config(extra)).unwrap();
    tap.as_object_mut().unwrap().remove("default_target_schema");
    tap["schemas"] = json!([pg.schema]);
    tap
}

/// `tap.json` and a discovered `cat.json` with its first stream selected, for `ferry tap`.
fn tap_files(d: &Dir, pg: &Pg) {
    d.write("tap.json", &tap_config(pg, json!({})).to_string());
    let cat = d
        .run(
            &["tap", "postgres", "--config", "tap.json", "--discover"],
            None,
        )
        .ok()
        .stdout;
    let mut cat: Value = serde_json::from_str(&cat).unwrap();
    cat["streams"][0]["metadata"][0]["metadata"]["selected"] = json!(true);
    d.write("cat.json", &cat.to_string());
}

fn project(d: &Dir, pg: &Pg, tap_extra: Value, target: &str) {
    let tap = tap_config(pg, tap_extra);
    d.write(
        "ferry.yml",
        &format!("pipelines:\n  p:\n    tap: {{ name: postgres, config: {tap}, catalog: catalogs/p.json }}\n    target: {target}\n    commit_interval_secs: 0.01\n"),
    );
}

fn jsonl_target() -> &'static str {
    "{ name: jsonl, config: { destination_path: out } }"
}

fn stream_rows(d: &Dir, file: &str) -> Vec<Value> {
    if !d.exists(file) {
        return Vec::new();
    }
    d.jsonl(file)
}

const TYPES: &str = r#"
CREATE TYPE {s}.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN {s}.posint AS integer CHECK (VALUE > 0);
CREATE TABLE {s}."Mixed Case" (id bigint PRIMARY KEY, n numeric(12,3), f float8, t text, b boolean, d date, ts timestamp, tz timestamptz,
  tm time, iv interval, u uuid, jb jsonb, arr int[], tarr text[], m {s}.mood, p {s}.posint, by bytea, ip inet, mo money, si smallint);
INSERT INTO {s}."Mixed Case" VALUES
 (1, 123456789.123, 1.5, 'hello "world"\ back', true, '2024-02-29', '2024-01-01 10:00:00.123456', '2024-01-01 10:00:00.5+02', '23:59:59', '1 day 2 hours',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b":[1,2.50]}', '{1,2,3}', '{"a","b c"}', 'happy', 5, '\x0102', '192.168.0.1/24', 12.34, 7),
 (2, 'NaN', 'NaN', E'tab\there\nnewline ünï', NULL, 'infinity', '-infinity', '0044-03-15 BC', NULL, NULL, NULL, NULL, '{}', NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, -0.001, '-Infinity', '', false, '12345-01-01', NULL, NULL, NULL, NULL, NULL, 'null', NULL, '{}', 'sad', NULL, NULL, NULL, NULL, NULL);
CREATE TABLE {s}.empty (id int PRIMARY KEY);
CREATE TABLE {s}."Qu""ote ü" ("we""ird ü" int PRIMARY KEY, "Ünï Cödé" text);
INSERT INTO {s}."Qu""ote ü" VALUES (1, 'ok');
CREATE VIEW {s}.v AS SELECT id, t FROM {s}."Mixed Case";
"#;

#[test]
fn discovery_types_and_pg_to_pg() {
    let pg = Pg::new("tap_types");
    let out_pg = Pg::new("tap_types_out");
    pg.sql(&format!(
        "CREATE SCHEMA \"{0}\"; {1}",
        pg.schema,
        TYPES.replace("{s}", &format!("\"{}\"", pg.schema))
    ));
    let d = Dir::new();
    project(&d, &pg, json!({}), jsonl_target());
    d.run(&["discover", "p"], None).ok();
    let cat = d.json("catalogs/p.json");
    let ids: Vec<&str> = cat["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tap_stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            format!("{}-Mixed Case", pg.schema),
            format!("{}-Qu\"ote ü", pg.schema),
            format!("{}-empty", pg.schema),
            format!("{}-v", pg.schema)
        ]
    );
    let mixed = &cat["streams"][0];
    assert_eq!(
        mixed["metadata"][0]["metadata"]["table-key-properties"],
        json!(["id"])
    );
    assert_eq!(
        mixed["metadata"][0]["metadata"]["selected-by-default"],
        false
    );
    assert_eq!(
        cat["streams"][3]["metadata"][0]["metadata"]["is-view"],
        true
    );
    let props = &mixed["schema"]["properties"];
    assert_eq!(
        props["n"],
        json!({"type": ["null", "string"], "format": "x-singer.decimal", "precision": 12, "scale": 3, "x-sql-datatype": "numeric(12,3)"})
    );
    assert_eq!(
        props["tz"],
        json!({"type": ["null", "string"], "format": "date-time", "x-sql-datatype": "timestamp with time zone"})
    );
    assert_eq!(props["m"]["enum"], json!(["sad", "ok", "happy", null]));
    assert_eq!(
        props["p"]["type"],
        json!(["null", "integer"]),
        "a domain takes its base type"
    );
    assert_eq!(props["arr"]["items"], json!({"type": ["null", "integer"]}));
    assert_eq!(
        props["jb"]["type"],
        json!(["null", "object", "array", "string", "number", "boolean"]),
        "json columns have a type list, as Singer targets expect"
    );
    // Nothing is selected until chosen.
    d.run(&["sync", "p"], None).ok();
    assert!(!d.exists(&format!("out/{}-Mixed_Case.jsonl", pg.schema)));
    d.run(&["select", "p", "*"], None).ok();
    d.run(&["sync", "p"], None).ok();
    let rows = stream_rows(&d, &format!("out/{}-Mixed_Case.jsonl", pg.schema));
    assert_eq!(
        rows[0],
        json!({"id": 1, "n": "123456789.123", "f": 1.5, "t": "hello \"world\"\\ back", "b": true, "d": "2024-02-29", "ts": "2024-01-01T10:00:00.123456",
               "tz": "2024-01-01T08:00:00.5+00:00", "tm": "23:59:59", "iv": "P1DT2H", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "jb": serde_json::from_str::<Value>(r#"{"b": [1, 2.50]}"#).unwrap(),
               "arr": [1, 2, 3], "tarr": ["a", "b c"], "m": "happy", "p": 5, "by": "\\x0102", "ip": "192.168.0.1/24", "mo": "$12.34", "si": 7})
    );
    // Non-finite floats travel as their names, as the schema says; infinite or BC dates
    // become null; years past 9999 stay.
    assert_eq!(rows[1]["n"], "NaN");
    assert_eq!(rows[1]["f"], "NaN");
    assert_eq!(rows[2]["f"], "-Infinity");
    assert_eq!(
        props["f"],
        json!({"type": ["null", "number", "string"], "pattern": "^(NaN|Infinity|-Infinity)$", "x-sql-datatype": "double precision"})
    );
    assert_eq!(
        (&rows[1]["d"], &rows[1]["ts"], &rows[1]["tz"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );
    assert_eq!(rows[1]["t"], "tab\there\nnewline ünï");
    assert_eq!(rows[2]["d"], "12345-01-01");
    assert_eq!(rows[2]["n"], "-0.001");
    assert_eq!(
        stream_rows(&d, &format!("out/{}-v.jsonl", pg.schema)).len(),
        3
    );
    assert!(d.exists(&format!("out/{}-empty.jsonl", pg.schema)));
    // Names that need quoting: the file name is made safe, the record keeps the column names.
    assert_eq!(
        stream_rows(&d, &format!("out/{}-Qu_ote_ü.jsonl", pg.schema)),
        vec![json!({"we\"ird ü": 1, "Ünï Cödé": "ok"})]
    );

    // The same tables into Postgres: the rows compare equal to the source, type by type.
    let d2 = Dir::new();
    project(
        &d2,
        &pg,
        json!({}),
        &format!("{{ name: postgres, config: {} }}", out_pg.config(json!({}))),
    );
    std::fs::create_dir_all(d2.join("catalogs")).unwrap();
    std::fs::copy(d.join("catalogs/p.json"), d2.join("catalogs/p.json")).unwrap();
    d2.run(&["sync", "p", "--select", "*-Mixed Case"], None)
        .ok();
    // A jsonb `null` travels as JSON null and lands as SQL NULL: compare them as equal.
    let cols =
        "id, n::text, f, t, b, d, ts, tz, tm, u, coalesce(jb, 'null'::jsonb), m::text, p, si";
    let diff = pg.sql(&format!(
        "SELECT count(*) FROM ((SELECT {cols} FROM \"{0}\".\"Mixed Case\" WHERE id <> 2 EXCEPT SELECT {cols} FROM \"{1}\".\"mixed case\") UNION ALL \
         (SELECT {cols} FROM \"{1}\".\"mixed case\" WHERE id <> 2 EXCEPT SELECT {cols} FROM \"{0}\".\"Mixed Case\")) x",
        pg.schema, out_pg.schema
    ));
    assert_eq!(
        diff,
        ["0"],
        "rows differ between source and target:\n{:?}\n{:?}",
        pg.sql(&format!(
            "SELECT {cols} FROM \"{}\".\"Mixed Case\" ORDER BY id",
            pg.schema
        )),
        pg.sql(&format!(
            "SELECT {cols} FROM \"{}\".\"mixed case\" ORDER BY id",
            out_pg.schema
        ))
    );
    assert_eq!(
        pg.sql(&format!(
            "SELECT n::text, f::text, pg_typeof(f), t FROM \"{}\".\"mixed case\" WHERE id = 2",
            out_pg.schema
        )),
        ["NaN|NaN|double precision|tab\there", "newline ünï"]
    );
    assert_eq!(
        pg.sql(&format!(
            "SELECT f::text FROM \"{}\".\"mixed case\" WHERE id = 3",
            out_pg.schema
        )),
        ["-Infinity"]
    );
}

#[test]
fn incremental_reads_ties_again_and_stops_at_the_signpost() {
    let pg = Pg::new("tap_inc");
    pg.sql(&format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".t (id int PRIMARY KEY, v text, updated_at timestamptz);
         INSERT INTO \"{0}\".t SELECT i, 'v' || i, timestamptz '2024-01-01' + (i / 2) * interval '1 hour' FROM generate_series(1, 10) i;
         INSERT INTO \"{0}\".t VALUES (11, 'no key', NULL);",
        pg.schema
    ));
    let d = Dir::new();
    project(&d, &pg, json!({"state_every_rows": 3}), jsonl_target());
    d.run(&["discover", "p"], None).ok();
    d.run(
        &[
            "select",
            "p",
            "*",
            "--method",
            "INCREMENTAL",
            "--key",
            "updated_at",
        ],
        None,
    )
    .ok();
    d.run(&["sync", "p"], None).ok();
    let file = format!("out/{}-t.jsonl", pg.schema);
    let ids = |d: &Dir| -> Vec<i64> {
        stream_rows(d, &file)
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        ids(&d),
        [11, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "first run: everything, the NULL key first"
    );
    let st = d.json("state/p.json");
    assert_eq!(
        st["bookmarks"][format!("{}-t", pg.schema)]["replication_key_value"],
        "2024-01-01T05:00:00+00:00"
    );
    // An update, a new row tied with the bookmark, a new later row.
    pg.sql(&format!(
        "UPDATE \"{0}\".t SET v = 'changed', updated_at = '2024-02-01' WHERE id = 3;
         INSERT INTO \"{0}\".t VALUES (12, 'tie', '2024-01-01T05:00:00+00'), (13, 'later', '2024-03-01');",
        pg.schema
    ));
    d.run(&["sync", "p"], None).ok();
    // Rows at the bookmark's value are read again (10 and the new 12), then the changes.
    assert_eq!(&ids(&d)[11..], [10, 12, 3, 13]);
    let dry = d.run(&["sync", "p", "--dry-run"], None).ok().stdout;
    assert!(
        dry.contains("WHERE updated_at >= \"2024-03-01T00:00:00+00:00\""),
        "{dry}"
    );
}

#[test]
fn xmin_reads_inserts_and_updates_only() {
    let pg = Pg::new("tap_xmin");
    pg.sql(&format!("CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".t (id int PRIMARY KEY, v text); INSERT INTO \"{0}\".t SELECT i, 'v' FROM generate_series(1, 100) i;", pg.schema));
    let d = Dir::new();
    project(&d, &pg, json!({}), jsonl_target());
    d.run(&["discover", "p"], None).ok();
    d.run(&["select", "p", "*", "--method", "XMIN"], None).ok();
    d.run(&["sync", "p"], None).ok();
    let file = format!("out/{}-t.jsonl", pg.schema);
    assert_eq!(stream_rows(&d, &file).len(), 100);
    pg.sql(&format!("UPDATE \"{0}\".t SET v = 'u' WHERE id IN (7, 42); INSERT INTO \"{0}\".t VALUES (101, 'new');", pg.schema));
    d.run(&["sync", "p"], None).ok();
    let second: BTreeSet<i64> = stream_rows(&d, &file)[100..]
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    // Every change is read. (Unchanged rows are re-read only if another session held an older
    // snapshot during the first run: the bookmark never passes the snapshot's horizon.)
    assert!(
        second.is_superset(&[7, 42, 101].into_iter().collect()),
        "{second:?}"
    );
    let st = d.json("state/p.json");
    assert!(
        st["bookmarks"][format!("{}-t", pg.schema)]["xmin"]
            .as_i64()
            .unwrap()
            > 0
    );
}

#[test]
fn killed_full_table_read_resumes_after_its_last_key() {
    const ROWS: i64 = 30_000;
    let pg = Pg::new("tap_resume");
    pg.sql(&format!("CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".t (id int PRIMARY KEY, v text); INSERT INTO \"{0}\".t SELECT i, repeat('x', 50) FROM generate_series(1, {ROWS}) i;", pg.schema));
    for kill_after in [Some(2_000), Some(17_000), None] {
        let d = Dir::new();
        project(&d, &pg, json!({"chunk_rows": 1000}), jsonl_target());
        d.run(&["discover", "p"], None).ok();
        d.run(&["select", "p", "*"], None).ok();
        crate::util::sync_killed_after(&d, kill_after, |n| {
            let last: Option<_> = std::fs::read_to_string(d.join("state/p.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["bookmarks"][format!("{}-t", pg.schema)]["last_pk"][0].as_u64());
            last.is_some_and(|o| o >= n)
        });
        d.run(&["sync", "p"], None).ok();
        let ids: Vec<i64> = stream_rows(&d, &format!("out/{}-t.jsonl", pg.schema))
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(
            ids,
            (1..=ROWS).collect::<Vec<_>>(),
            "kill after {kill_after:?}"
        );
    }
}

#[test]
fn dropped_table_fails_its_stream_only() {
    let pg = Pg::new("tap_drop");
    pg.sql(&format!("CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".a (id int PRIMARY KEY); CREATE TABLE \"{0}\".b (id int PRIMARY KEY); INSERT INTO \"{0}\".b VALUES (1);", pg.schema));
    let d = Dir::new();
    project(&d, &pg, json!({}), jsonl_target());
    d.run(&["discover", "p"], None).ok();
    d.run(&["select", "p", "*"], None).ok();
    pg.sql(&format!("DROP TABLE \"{}\".a", pg.schema));
    let out = d.run(&["sync", "p"], None).code(3);
    assert!(
        out.stderr
            .contains(&format!("{0}.a no longer exists", pg.schema)),
        "{}",
        out.stderr
    );
    assert_eq!(
        stream_rows(&d, &format!("out/{}-b.jsonl", pg.schema)).len(),
        1
    );
}

/// The tap's output feeds a Singer target from PyPI unchanged.
#[test]
fn python_target_jsonl_consumes_the_tap() {
    let Some(target) = crate::interop::require("target-jsonl") else {
        return;
    };
    let pg = Pg::new("tap_py");
    pg.sql(&format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".t (id int PRIMARY KEY, amount numeric(10,2), at timestamptz, tags text[]);
         INSERT INTO \"{0}\".t VALUES (1, 10.50, '2024-01-01 10:00+00', '{{a,b}}'), (2, NULL, NULL, NULL);",
        pg.schema
    ));
    let d = Dir::new();
    tap_files(&d, &pg);
    d.write(
        "t.json",
        r#"{"destination_path": "out", "do_timestamp_file": false}"#,
    );
    let mut c = std::process::Command::new("bash");
    c.current_dir(d.path()).env("FERRY_NO_PROGRESS", "1").arg("-c").arg(format!(
        "set -o pipefail; {} tap postgres --config tap.json --catalog cat.json | {} --config t.json",
        crate::util::ferry_bin().display(),
        target.display()
    ));
    let out = crate::util::run(c, None).ok();
    assert!(
        out.stdout.contains("\"version\""),
        "the Python target echoes the tap's final state: {}",
        out.stdout
    );
    let rows = d.jsonl(&format!("out/{}-t.jsonl", pg.schema));
    assert_eq!(
        rows,
        vec![
            json!({"id": 1, "amount": "10.50", "at": "2024-01-01T10:00:00+00:00", "tags": ["a", "b"]}),
            json!({"id": 2, "amount": null, "at": null, "tags": null})
        ]
    );
}

#[test]
fn lookback_rereads_a_window_before_the_bookmark() {
    let pg = Pg::new("tap_lookback");
    pg.sql(&format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".t (id int PRIMARY KEY, updated_at timestamptz);
         INSERT INTO \"{0}\".t SELECT i, timestamptz '2024-01-01' + i * interval '1 minute' FROM generate_series(1, 60) i;",
        pg.schema
    ));
    let d = Dir::new();
    project(&d, &pg, json!({"lookback": "10 minutes"}), jsonl_target());
    d.run(&["discover", "p"], None).ok();
    d.run(
        &[
            "select",
            "p",
            "*",
            "--method",
            "INCREMENTAL",
            "--key",
            "updated_at",
        ],
        None,
    )
    .ok();
    d.run(&["sync", "p"], None).ok();
    // A late writer commits a row whose key is below the bookmark but inside the window.
    pg.sql(&format!(
        "INSERT INTO \"{}\".t VALUES (1000, timestamptz '2024-01-01' + 55 * interval '1 minute')",
        pg.schema
    ));
    d.run(&["sync", "p"], None).ok();
    let ids: Vec<i64> = stream_rows(&d, &format!("out/{}-t.jsonl", pg.schema))[60..]
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [50, 51, 52, 53, 54, 55, 1000, 56, 57, 58, 59, 60]);
}

#[test]
fn parallel_streams_keep_every_bookmark() {
    let pg = Pg::new("tap_par");
    let mut ddl = format!("CREATE SCHEMA \"{}\";", pg.schema);
    for t in ["a", "b", "c"] {
        ddl.push_str(&format!(
            "CREATE TABLE \"{0}\".{t} (id int PRIMARY KEY, v text); INSERT INTO \"{0}\".{t} SELECT i, '{t}' FROM generate_series(1, 5000) i;",
            pg.schema
        ));
    }
    pg.sql(&ddl);
    let d = Dir::new();
    project(
        &d,
        &pg,
        json!({"max_parallel_streams": 2, "chunk_rows": 700}),
        jsonl_target(),
    );
    d.run(&["discover", "p"], None).ok();
    d.run(&["select", "p", "*"], None).ok();
    d.run(&["sync", "p"], None).ok();
    let st = d.json("state/p.json");
    for t in ["a", "b", "c"] {
        let rows = stream_rows(&d, &format!("out/{}-{t}.jsonl", pg.schema));
        let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        assert_eq!(ids, (1..=5000).collect::<Vec<_>>(), "table {t}");
        assert!(rows.iter().all(|r| r["v"] == t));
        assert!(
            st["bookmarks"][format!("{}-{t}", pg.schema)]["version"].is_i64(),
            "{st}"
        );
    }
}

#[test]
fn permission_denied_fails_or_skips_only_that_stream() {
    let pg = Pg::new("tap_perm");
    let role = format!("{}_ro", pg.schema);
    pg.sql(&format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".open (id int PRIMARY KEY); CREATE TABLE \"{0}\".secret (id int PRIMARY KEY);
         INSERT INTO \"{0}\".open VALUES (1); INSERT INTO \"{0}\".secret VALUES (1);
         DROP ROLE IF EXISTS \"{role}\"; CREATE ROLE \"{role}\" LOGIN; GRANT USAGE ON SCHEMA \"{0}\" TO \"{role}\"; GRANT SELECT ON \"{0}\".open TO \"{role}\";",
        pg.schema
    ));
    let d = Dir::new();
    project(&d, &pg, json!({"user": role}), jsonl_target());
    d.run(&["discover", "p"], None).ok();
    d.run(&["select", "p", "*"], None).ok();
    let out = d.run(&["sync", "p"], None).code(3);
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    assert_eq!(
        stream_rows(&d, &format!("out/{}-open.jsonl", pg.schema)).len(),
        1
    );
    project(
        &d,
        &pg,
        json!({"user": role, "skip_unreadable": true}),
        jsonl_target(),
    );
    let out = d.run(&["sync", "p", "--full-refresh"], None).ok();
    assert!(
        out.stderr.contains("Permission denied; skipped"),
        "{}",
        out.stderr
    );
    pg.sql(&format!(
        "DROP OWNED BY \"{role}\"; DROP SCHEMA \"{}\" CASCADE; DROP ROLE \"{role}\"",
        pg.schema
    ));
}

#[test]
fn key_ranges_read_in_parallel_and_resume() {
    const ROWS: i64 = 20_000;
    let pg = Pg::new("tap_ranges");
    pg.sql(&format!("CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".t (id bigint PRIMARY KEY, v text); INSERT INTO \"{0}\".t SELECT i * 3, 'r' FROM generate_series(1, {ROWS}) i;", pg.schema));
    for kill_after in [None, Some(())] {
        let d = Dir::new();
        project(
            &d,
            &pg,
            json!({"table_parallelism": 3, "chunk_rows": 500}),
            jsonl_target(),
        );
        d.run(&["discover", "p"], None).ok();
        d.run(&["select", "p", "*"], None).ok();
        if kill_after.is_some() {
            let mut child = d
                .cmd(&["-q", "sync", "p"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            crate::util::wait_until(&mut child, "a range commit", || {
                std::fs::read_to_string(d.join("state/p.json"))
                    .is_ok_and(|t| t.contains("\"ranges\"") && t.contains("\"after\": "))
            });
            let _ = child.kill();
            child.wait().unwrap();
        }
        d.run(&["sync", "p"], None).ok();
        let mut ids: Vec<i64> = stream_rows(&d, &format!("out/{}-t.jsonl", pg.schema))
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "no row twice");
        assert_eq!(
            ids,
            (1..=ROWS).map(|i| i * 3).collect::<Vec<_>>(),
            "every row once (kill: {kill_after:?})"
        );
        let st = d.json("state/p.json");
        assert!(
            st["bookmarks"][format!("{}-t", pg.schema)]
                .get("ranges")
                .is_none(),
            "a finished read keeps only its version"
        );
    }
}

/// Peak resident memory of a running ferry, from /proc (VmHWM only grows, so sampling it while
/// the process runs gives its peak).
fn peak_rss_kb(mut child: std::process::Child) -> u64 {
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Ok(text) = std::fs::read_to_string(&status) {
            if let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            {
                peak = peak.max(kb);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(child.wait().unwrap().success());
    peak
}

#[test]
fn memory_stays_flat_from_200k_to_1m_rows() {
    let pg = Pg::new("tap_mem");
    pg.sql(&format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".t (id int PRIMARY KEY, n numeric(12,2), s text, at timestamptz, j jsonb);
         INSERT INTO \"{0}\".t SELECT i, i / 100.0, 'row ' || i, timestamptz '2026-01-01' + i * interval '1 second', jsonb_build_object('i', i) FROM generate_series(1, 1000000) i;",
        pg.schema
    ));
    let d = Dir::new();
    tap_files(&d, &pg);
    let run = |limit: &str| {
        let mut c = d.cmd(&[
            "-q",
            "tap",
            "postgres",
            "--config",
            "tap.json",
            "--catalog",
            "cat.json",
        ]);
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        pg.sql(&format!(
            "DELETE FROM \"{}\".t WHERE id > {limit}",
            pg.schema
        ));
        peak_rss_kb(c.spawn().unwrap())
    };
    // Largest table first (rows are deleted for the smaller run).
    let big = run("1000000");
    let small = run("200000");
    assert!(
        big < small + 20_000,
        "peak RSS grew from {small} kB (200k rows) to {big} kB (1M rows)"
    );
}

#[test]
fn a_partitioned_table_is_one_stream() {
    let pg = Pg::new("tap_part");
    pg.sql(&format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".ev (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE \"{0}\".ev_2024 PARTITION OF \"{0}\".ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE \"{0}\".ev_2025 PARTITION OF \"{0}\".ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         INSERT INTO \"{0}\".ev VALUES (1, '2024-05-01'), (2, '2025-05-01');",
        pg.schema
    ));
    let d = Dir::new();
    project(&d, &pg, json!({}), jsonl_target());
    d.run(&["discover", "p"], None).ok();
    let cat = d.json("catalogs/p.json");
    let ids: Vec<&str> = cat["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tap_stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [format!("{}-ev", pg.schema)]);
    d.run(&["select", "p", "*"], None).ok();
    d.run(&["sync", "p"], None).ok();
    assert_eq!(
        stream_rows(&d, &format!("out/{}-ev.jsonl", pg.schema)).len(),
        2
    );
}

#[test]
fn key_ranges_cover_the_whole_of_bigint() {
    let pg = Pg::new("tap_span");
    pg.sql(&format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".t (id bigint PRIMARY KEY); INSERT INTO \"{0}\".t VALUES (-9223372036854775808), (-1), (0), (42), (9223372036854775807);",
        pg.schema
    ));
    let d = Dir::new();
    project(&d, &pg, json!({"table_parallelism": 3}), jsonl_target());
    d.run(&["discover", "p"], None).ok();
    d.run(&["select", "p", "*"], None).ok();
    d.run(&["sync", "p"], None).ok();
    let mut ids: Vec<i64> = stream_rows(&d, &format!("out/{}-t.jsonl", pg.schema))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [i64::MIN, -1, 0, 42, i64::MAX]);
}

/// The target's copy of a key-less table equals the source's, row for row (duplicates counted).
fn assert_same_rows(src: &Pg, dst: &Pg, what: &str) {
    let rows = |pg: &Pg, t: &str| {
        pg.sql(&format!(
            "SELECT seq, kind, count(*) FROM \"{}\".{t} GROUP BY 1, 2 ORDER BY 1, 2",
            pg.schema
        ))
    };
    let (want, got) = (rows(src, "events"), rows(dst, "events"));
    assert!(
        want == got,
        "{what}: target differs from source\nwant {} groups, got {}\nfirst difference: {:?}",
        want.len(),
        got.len(),
        want.iter().zip(&got).find(|(a, b)| a != b)
    );
}

fn keyless_project(d: &Dir, src: &Pg, dst: &Pg) {
    project(
        d,
        src,
        json!({"state_every_rows": 500}),
        &format!(
            "{{ name: postgres, config: {} }}",
            dst.config(json!({"state_table": "_ferry_state", "primary_key_required": false, "batch_size_rows": 1000}))
        ),
    );
    d.run(&["discover", "p"], None).ok();
    d.run(
        &[
            "select",
            "p",
            "*",
            "--method",
            "INCREMENTAL",
            "--key",
            "seq",
        ],
        None,
    )
    .ok();
}

#[test]
fn keyless_incremental_sends_each_row_once_ties_and_duplicates_included() {
    let src = Pg::new("tap_keyless");
    let dst = Pg::new("tap_keyless_out");
    // An event log: no key, three rows per `seq`, and one row that appears twice.
    src.sql(&format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".events (seq bigint, kind text);
         INSERT INTO \"{0}\".events SELECT i / 3, 'k' || (i % 3) FROM generate_series(0, 29) i;
         INSERT INTO \"{0}\".events VALUES (9, 'k0');",
        src.schema
    ));
    let d = Dir::new();
    keyless_project(&d, &src, &dst);
    d.run(&["sync", "p"], None).ok();
    assert_same_rows(&src, &dst, "first run");
    let mark = &d.json("state/p.json")["bookmarks"][format!("{}-events", src.schema)];
    assert_eq!(mark["replication_key_value"], 9);
    assert_eq!(
        mark["rows_sent"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>(),
        4,
        "the bookmark remembers the four rows at seq 9: {mark}"
    );
    // Nothing new: nothing is appended (the rows at the bookmark are skipped, not sent again).
    let out = d.run(&["sync", "p"], None).ok();
    assert_same_rows(&src, &dst, "second run, nothing new");
    assert!(out.stderr.contains("Skipped rows"), "{}", out.stderr);
    // New rows tied with the bookmark (one identical to a row already sent), and later rows.
    src.sql(&format!(
        "INSERT INTO \"{0}\".events VALUES (9, 'k1'), (9, 'k9'), (10, 'k0'), (10, 'k0'), (11, 'k5');",
        src.schema
    ));
    d.run(&["sync", "p"], None).ok();
    assert_same_rows(&src, &dst, "third run, ties and duplicates");
    assert_eq!(
        dst.sql(&format!("SELECT count(*) FROM \"{}\".events", dst.schema)),
        ["36"]
    );
}

#[test]
fn keyless_incremental_killed_at_any_moment_resumes_exactly() {
    let src = Pg::new("tap_keyless_kill");
    src.sql(&format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".events (seq bigint, kind text, payload text);
         INSERT INTO \"{0}\".events SELECT i / 7, 'k' || (i % 4), repeat('x', 40) FROM generate_series(0, 39999) i;",
        src.schema
    ));
    for kill_after in [Some(300), Some(2_500), Some(5_000), None] {
        let dst = Pg::new("tap_keyless_kill_out");
        let d = Dir::new();
        keyless_project(&d, &src, &dst);
        let stream = format!("{}-events", src.schema);
        crate::util::sync_killed_after(&d, kill_after, |n| {
            std::fs::read_to_string(d.join("state/p.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["bookmarks"][&stream]["replication_key_value"].as_u64())
                .is_some_and(|v| v >= n)
        });
        d.run(&["sync", "p"], None).ok();
        assert_same_rows(&src, &dst, &format!("kill after seq {kill_after:?}"));
        // And once more: nothing changes.
        d.run(&["sync", "p"], None).ok();
        assert_same_rows(&src, &dst, &format!("rerun after kill at {kill_after:?}"));
    }
}

/// A table holding every supported type (and NULLs, NaN, ±Infinity, nested arrays) in
/// `pg`'s schema: `every_type`. `numeric_nan`: whether its numeric column holds a NaN too (no
/// DECIMAL column elsewhere can).
fn every_type(pg: &Pg, numeric_nan: bool) {
    let n2 = if numeric_nan { "'NaN'" } else { "'1e-3'" };
    pg.sql(&format!(
        "CREATE SCHEMA \"{0}\"; CREATE TYPE \"{0}\".mood AS ENUM ('sad', 'happy');
         CREATE TABLE \"{0}\".every_type (id bigint PRIMARY KEY, si smallint, i int, n numeric(12,3), f float8, r real,
           t text, vc varchar(20), b boolean, d date, ts timestamp, tz timestamptz, tm time, u uuid, jb jsonb, j json,
           arr int[], arr2 int[][], tarr text[], farr float8[], m \"{0}\".mood, by bytea, ip inet);
         INSERT INTO \"{0}\".every_type VALUES
          (1, 7, -8, 123456789.123, 1.5, 2.25, 'hello \"world\" ü', 'short', true, '2024-02-29', '2024-01-01 10:00:00.123456',
           '2024-01-01 10:00:00.5+02', '23:59:59', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"b\": [1, 2.5]}}', '[1, \"x\"]',
           '{{1,2,3}}', '{{{{1,2}},{{3,NULL}}}}', '{{\"a\",\"b c\"}}', '{{1.5,NaN}}', 'happy', '\\x0102', '192.168.0.1/24'),
          (2, NULL, NULL, {n2}, 'NaN', 'Infinity', '', NULL, false, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           '{{}}', NULL, NULL, NULL, NULL, NULL, NULL),
          (3, NULL, NULL, -0.001, '-Infinity', '-Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '[]', '{{}}',
           NULL, '{{{{5}}}}', '{{}}', NULL, 'sad', NULL, NULL);",
        pg.schema
    ));
}

/// Every supported type, read by `ferry tap postgres` and loaded by pipelinewise-target-postgres
/// (from PyPI): the target accepts every schema, and its table holds the source's values.
#[test]
fn every_type_into_pipelinewise_target_postgres() {
    let Some(pw) = crate::interop::require("target-postgres") else {
        return;
    };
    let src = Pg::new("tap_pw_src");
    let dst = Pg::new("tap_pw_dst");
    every_type(&src, true);
    let d = Dir::new();
    tap_files(&d, &src);
    let msgs = d
        .run(
            &[
                "tap",
                "postgres",
                "--config",
                "tap.json",
                "--catalog",
                "cat.json",
            ],
            None,
        )
        .ok()
        .stdout;
    d.write("pw.json", &dst.config(json!({})));
    let mut c = std::process::Command::new(&pw);
    c.current_dir(d.path()).args(["--config", "pw.json"]);
    crate::util::run(c, Some(&msgs)).ok();
    // Each column compared as text in the type pipelinewise chose for it.
    let cols = |pg: &Pg, ours: bool| {
        let (tz, arr, arr2, tarr, farr) = if ours {
            (
                "(tz AT TIME ZONE 'UTC')::text",
                "to_jsonb(arr)::text",
                "to_jsonb(arr2)::text",
                "to_jsonb(tarr)::text",
                "to_jsonb(farr)::text",
            )
        } else {
            (
                "tz::text",
                "arr::text",
                "arr2::text",
                "tarr::text",
                "farr::text",
            )
        };
        pg.sql(&format!(
            "SELECT id, si, i, n::text, f::text, r::text, t, vc, b, d::text, ts::text, {tz}, tm::text, u::text,
                    jb::jsonb::text, j::jsonb::text, {arr}, {arr2}, {tarr}, {farr}, m::text, by::text, ip::text
             FROM \"{}\".every_type ORDER BY id",
            pg.schema
        ))
    };
    let (want, got) = (cols(&src, true), cols(&dst, false));
    assert_eq!(want.len(), 3);
    assert_eq!(
        want, got,
        "source (left) and pipelinewise-target-postgres (right)"
    );
    // Floats stayed floats there, NaN and ±Infinity included.
    assert_eq!(
        dst.sql(&format!(
            "SELECT pg_typeof(f)::text, f::text FROM \"{}\".every_type ORDER BY id",
            dst.schema
        )),
        [
            "double precision|1.5",
            "double precision|NaN",
            "double precision|-Infinity"
        ]
    );
}

/// The same table through every ferry target: each accepts every schema the tap emits and keeps
/// the values (read back by each target's own reader).
#[test]
fn every_type_through_every_ferry_target() {
    let src = Pg::new("tap_all_src");
    every_type(&src, false);
    let dst = Pg::new("tap_all_dst");
    let py = crate::warehouse::python();
    let mut targets = vec![
        "{ name: jsonl, config: { destination_path: out } }".to_owned(),
        "{ name: csv, config: { destination_path: out } }".to_owned(),
        format!("{{ name: postgres, config: {} }}", dst.config(json!({}))),
    ];
    if py.is_some() {
        targets.push("{ name: duckdb, config: { path: w.duckdb } }".to_owned());
        targets.push("{ name: parquet, config: { path: lake } }".to_owned());
    }
    for target in targets {
        let d = Dir::new();
        project(&d, &src, json!({}), &target);
        d.run(&["discover", "p"], None).ok();
        d.run(&["select", "p", "*"], None).ok();
        d.run(&["sync", "p"], None).ok();
        // id, the 2-D array, the float column and the jsonb column of each row, as each reads them.
        let rows: Vec<Value> = if target.contains("jsonl") {
            d.jsonl(&format!("out/{}-every_type.jsonl", src.schema))
                .into_iter()
                .map(|r| json!([r["id"], r["arr2"], r["f"], r["jb"]]))
                .collect()
        } else if target.contains("csv") {
            let text = d.read(&format!("out/{}-every_type.csv", src.schema));
            assert_eq!(text.lines().count(), 4, "{text}");
            assert!(text.contains("NaN") && text.contains("-Infinity"), "{text}");
            continue;
        } else if target.contains("postgres") {
            dst.sql(&format!(
                "SELECT json_build_array(id, arr2, f, jb)::text FROM \"{}\".every_type ORDER BY id",
                dst.schema
            ))
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
        } else if target.contains("duckdb") {
            crate::warehouse::read(
                py.as_ref().unwrap(),
                &[
                    "duckdb",
                    d.join("w.duckdb").to_str().unwrap(),
                    "SELECT id, arr2::VARCHAR, f, jb::VARCHAR FROM p.every_type ORDER BY id",
                ],
            )
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let parse = |x: &Value| {
                    x.as_str()
                        .map_or(Value::Null, |t| serde_json::from_str(t).unwrap())
                };
                json!([v[0], parse(&v[1]), v[2], parse(&v[3])])
            })
            .collect()
        } else {
            let mut rows: Vec<Value> = crate::warehouse::read(
                py.as_ref().unwrap(),
                &["parquet", d.join("lake").to_str().unwrap(), "every_type"],
            )
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                // Any-JSON columns are JSON text in Parquet.
                let jb = v["jb"]
                    .as_str()
                    .map_or(Value::Null, |t| serde_json::from_str(t).unwrap());
                json!([v["id"], v["arr2"], v["f"], jb])
            })
            .collect();
            rows.sort_by_key(|r| r[0].as_i64());
            rows
        };
        if target.contains("duckdb") {
            // A numeric NaN has no DECIMAL form: refused, naming the stream and the column.
            src.sql(&format!(
                "UPDATE \"{}\".every_type SET n = 'NaN' WHERE id = 2",
                src.schema
            ));
            d.run(&["sync", "p"], None)
                .code(1)
                .stderr_has("column \"n\": value NaN has a NaN or infinite value, which a DECIMAL column cannot hold");
            src.sql(&format!(
                "UPDATE \"{}\".every_type SET n = 1e-3 WHERE id = 2",
                src.schema
            ));
        }
        let jb = serde_json::from_str::<Value>(r#"{"b": [1, 2.5]}"#).unwrap();
        assert_eq!(
            rows,
            vec![
                json!([1, [[1, 2], [3, null]], 1.5, jb]),
                json!([2, null, "NaN", null]),
                json!([3, [[5]], "-Infinity", []]),
            ],
            "{target}"
        );
    }
}

/// XMIN reads rows written at or above the last run's horizon again (a transaction still open
/// then may have committed since); a stream without keys skips the ones it sent, so a row is
/// appended once even when transactions overlap the runs.
#[test]
fn keyless_xmin_sends_each_row_once_across_overlapping_transactions() {
    use std::io::Write;
    let src = Pg::new("tap_kx");
    let dst = Pg::new("tap_kx_out");
    src.sql(&format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".events (seq int, kind text);
         INSERT INTO \"{0}\".events VALUES (1, 'a'), (2, 'b'), (2, 'b');",
        src.schema
    ));
    let d = Dir::new();
    project(
        &d,
        &src,
        json!({}),
        &format!(
            "{{ name: postgres, config: {} }}",
            dst.config(json!({"state_table": "_ferry_state", "primary_key_required": false}))
        ),
    );
    d.run(&["discover", "p"], None).ok();
    d.run(&["select", "p", "*", "--method", "XMIN"], None).ok();
    d.run(&["sync", "p"], None).ok();
    assert_same_rows(&src, &dst, "first run");
    // A transaction that holds an xid stays open: the next run's horizon stays below the rows
    // committed meanwhile.
    let app = format!("ferry_holder_{}", src.schema);
    let mut holder = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            &crate::postgres::pg_env("FERRY_PG_HOST", "127.0.0.1"),
        ])
        .args(["-p", &crate::postgres::pg_env("FERRY_PG_PORT", "5432")])
        .args(["-U", &crate::postgres::pg_env("FERRY_PG_USER", "postgres")])
        .args(["-d", &crate::postgres::pg_env("FERRY_PG_DB", "test")])
        .env("PGAPPNAME", &app)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = holder.stdin.take().unwrap();
    stdin.write_all(b"BEGIN; SELECT txid_current();\n").unwrap();
    stdin.flush().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while src.sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' AND backend_xid IS NOT NULL"
    )) != ["1"]
    {
        assert!(std::time::Instant::now() < deadline, "the holding transaction did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    src.sql(&format!(
        "INSERT INTO \"{0}\".events VALUES (3, 'c'), (4, 'd');",
        src.schema
    ));
    d.run(&["sync", "p"], None).ok();
    assert_same_rows(&src, &dst, "second run, a transaction open");
    let mark = &d.json("state/p.json")["bookmarks"][format!("{}-events", src.schema)];
    assert_eq!(
        mark["rows_sent"].as_object().map(|m| m.len()),
        Some(2),
        "{mark}"
    );
    stdin.write_all(b"COMMIT;\n").unwrap();
    drop(stdin);
    holder.wait().unwrap();
    // The rows above the old horizon are read again and skipped; a new identical row is not.
    src.sql(&format!(
        "INSERT INTO \"{0}\".events VALUES (4, 'd');",
        src.schema
    ));
    d.run(&["sync", "p"], None).ok();
    assert_same_rows(&src, &dst, "third run");
    assert_eq!(
        dst.sql(&format!("SELECT count(*) FROM \"{}\".events", dst.schema)),
        ["6"]
    );
}
