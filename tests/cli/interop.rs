//! External Singer executables: Python packages from PyPI (`target-jsonl`, the Meltano SDK's
//! `tap-jsonl`, installed by ./test.sh) and scripts that misbehave on purpose.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{run, Dir};

fn find(prog: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// The path of a Python Singer executable; ./test.sh sets FERRY_REQUIRE_INTEROP=1 so that a
/// missing one fails instead of skipping.
pub fn require(prog: &str) -> Option<PathBuf> {
    match find(prog) {
        Some(p) => Some(p),
        None if std::env::var("FERRY_REQUIRE_INTEROP").as_deref() == Ok("1") => {
            panic!("{prog} is not on PATH; ./test.sh installs it")
        }
        None => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipping: {prog} is not installed (run ./test.sh)");
            }
            None
        }
    }
}

/// Python writes 10.50 as 10.5: compare numbers by value.
fn numeric(rows: Vec<Value>) -> Vec<Value> {
    fn norm(v: Value) -> Value {
        match v {
            Value::Number(n) => json!(n.as_f64().unwrap()),
            Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, norm(v))).collect()),
            Value::Array(a) => Value::Array(a.into_iter().map(norm).collect()),
            other => other,
        }
    }
    rows.into_iter().map(norm).collect()
}

fn customers(d: &Dir) -> Vec<Value> {
    d.write("data/customers.csv", "id,name,balance,joined\n1,Ann,10.50,2024-01-01\n2,Bøb,,2024-02-29\n3,\"C, D\",-3.25,2024-03-01\n");
    vec![
        json!({"id": 1, "name": "Ann", "balance": 10.50, "joined": "2024-01-01"}),
        json!({"id": 2, "name": "Bøb", "balance": null, "joined": "2024-02-29"}),
        json!({"id": 3, "name": "C, D", "balance": -3.25, "joined": "2024-03-01"}),
    ]
}

#[test]
fn ferry_tap_into_python_target_jsonl() {
    let Some(target) = require("target-jsonl") else {
        return;
    };
    let d = Dir::new();
    let want = customers(&d);
    d.write(
        "ferry.yml",
        &format!(
            "pipelines:\n  p:\n    tap: {{ name: csv, config: {{ files: [{{ entity: customers, path: data/customers.csv, keys: [id] }}] }} }}\n    target: {{ command: {}, config: {{ destination_path: out, do_timestamp_file: false }} }}\n",
            target.display()
        ),
    );
    d.run(&["sync", "p"], None).ok();
    assert_eq!(
        numeric(d.jsonl("out/customers.jsonl")),
        numeric(want.clone())
    );
    // The state comes back from the Python target's stdout and lands in the state file.
    let st = d.json("state/p.json");
    assert_eq!(st["bookmarks"]["customers"]["offset"], 3);
    // Pipe mode too.
    d.write(
        "tap.json",
        r#"{"files": [{"entity": "customers", "path": "data/customers.csv", "keys": ["id"]}]}"#,
    );
    d.write(
        "t.json",
        r#"{"destination_path": "pipe-out", "do_timestamp_file": false}"#,
    );
    let mut c = std::process::Command::new("bash");
    c.current_dir(d.path())
        .env("FERRY_NO_PROGRESS", "1")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} tap csv --config tap.json | {} --config t.json",
            crate::util::ferry_bin().display(),
            target.display()
        ));
    let out = run(c, None).ok();
    assert_eq!(numeric(d.jsonl("pipe-out/customers.jsonl")), numeric(want));
    let states: Vec<Value> = out.json_lines();
    assert_eq!(
        states.last().unwrap()["bookmarks"]["customers"]["complete"],
        true
    );
}

#[test]
fn python_sdk_tap_into_ferry_target() {
    let Some(tap) = require("tap-jsonl") else {
        return;
    };
    let d = Dir::new();
    d.write("src/x.jsonl", "{\"id\": 1, \"name\": \"a\", \"amount\": 1.5, \"tags\": [\"x\"]}\n{\"id\": 2, \"name\": \"ü\", \"amount\": 20000000000000000000001}\n");
    let src = d.join("src/*.jsonl");
    d.write(
        "ferry.yml",
        &format!(
            "pipelines:\n  p:\n    tap: {{ command: {}, config: {{ path: \"{}\", stream_name: things, primary_keys: [id] }} }}\n    target: {{ name: jsonl, config: {{ destination_path: out }} }}\n",
            tap.display(),
            src.display()
        ),
    );
    let out = d.run(&["sync", "p"], None).ok();
    // The SDK's log lines on stderr are forwarded into ferry's log.
    assert!(out.stderr.contains("tap-jsonl"), "{}", out.stderr);
    let rows = d.jsonl("out/things.jsonl");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], 1);
    assert_eq!(rows[0]["tags"], json!(["x"]));
    assert_eq!(rows[1]["name"], "ü");
    assert!(
        d.read("out/things.jsonl")
            .lines()
            .nth(1)
            .unwrap()
            .contains("\"amount\":20000000000000000000001"),
        "big integers stay exact"
    );
    let st = d.json("state/p.json");
    assert!(
        st["bookmarks"]["things"]["replication_key_value"].is_string(),
        "{st}"
    );
    // Pipe mode: the Python tap's output straight into ferry's CSV target.
    d.write(
        "c.json",
        &json!({"path": src, "stream_name": "things", "primary_keys": ["id"]}).to_string(),
    );
    d.write("t.json", r#"{"destination_path": "csv-out"}"#);
    let mut c = std::process::Command::new("bash");
    c.current_dir(d.path())
        .env("FERRY_NO_PROGRESS", "1")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} --config c.json | {} target csv --config t.json",
            tap.display(),
            crate::util::ferry_bin().display()
        ));
    run(c, None).ok();
    let csv = d.read("csv-out/things.csv");
    assert!(csv.starts_with("id,name,amount,tags,"), "{csv}");
    assert!(csv.contains("\n1,a,1.5,\"[\"\"x\"\"]\","), "{csv}");
}

fn script(d: &Dir, name: &str, body: &str) -> PathBuf {
    let p = d.write(name, &format!("#!/usr/bin/env bash\n{body}\n"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    p
}

#[test]
fn failing_external_tap_is_reported_with_its_stderr() {
    let d = Dir::new();
    let tap = script(
        &d,
        "tap-bad",
        r#"echo '{"type":"SCHEMA","stream":"s","schema":{"properties":{"id":{"type":"integer"}}},"key_properties":["id"]}'
echo '{"type":"RECORD","stream":"s","record":{"id":1}}'
echo 'password=hunter2secret boom: the API said no' >&2
exit 3"#,
    );
    d.write(
        "ferry.yml",
        &format!(
            "pipelines:\n  p:\n    tap: {{ command: {}, config: {{ password: hunter2secret }} }}\n    target: {{ name: jsonl, config: {{ destination_path: out }} }}\n",
            tap.display()
        ),
    );
    let out = d.run(&["sync", "p"], None).code(1);
    assert!(
        out.stderr.contains("tap-bad exited with exit status: 3"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("boom: the API said no"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("hunter2secret"),
        "secrets are masked: {}",
        out.stderr
    );
    assert!(!d.exists("state/p.json"), "no state from a failed run");
}

#[test]
fn dead_target_stops_the_run_at_once() {
    let d = Dir::new();
    let mut body = String::from("id\n");
    for i in 0..300_000 {
        body.push_str(&format!("{i}\n"));
    }
    d.write("big.csv", &body);
    let target = script(
        &d,
        "target-bad",
        "read -r first\necho 'target crashed on purpose' >&2\nexit 2",
    );
    d.write(
        "ferry.yml",
        &format!(
            "pipelines:\n  p:\n    tap: {{ name: csv, config: {{ files: [{{ entity: big, path: big.csv }}] }} }}\n    target: {{ command: {}, config: {{}} }}\n",
            target.display()
        ),
    );
    let out = d.run(&["sync", "p"], None).code(1);
    assert!(
        out.stderr.contains("target crashed on purpose"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("target-bad"), "{}", out.stderr);
}

#[test]
fn hanging_tap_is_stopped_when_the_target_dies() {
    let d = Dir::new();
    let tap = script(
        &d,
        "tap-hang",
        r#"echo '{"type":"SCHEMA","stream":"s","schema":{"properties":{}},"key_properties":[]}'
exec sleep 600"#,
    );
    let target = script(&d, "target-dies", "echo 'no thanks' >&2\nexit 5");
    d.write(
        "ferry.yml",
        &format!(
            "pipelines:\n  p:\n    tap: {{ command: {} }}\n    target: {{ command: {} }}\n",
            tap.display(),
            target.display()
        ),
    );
    let started = Instant::now();
    let out = d.run(&["sync", "p"], None).code(1);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ferry hung for {:?}",
        started.elapsed()
    );
    assert!(out.stderr.contains("target-dies"), "{}", out.stderr);
    assert!(out.stderr.contains("no thanks"), "{}", out.stderr);
}
