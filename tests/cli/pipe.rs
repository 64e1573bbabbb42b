//! `ferry tap` and `ferry target` as Singer executables in a pipe.

use serde_json::{json, Value};

use crate::util::{lines, run, Dir};

fn shop_csv(d: &Dir) {
    d.write(
        "data/customers.csv",
        "id,name,email,balance,created_at,active,zip\n\
         1,Ann,ann@example.com,10.50,2024-01-01T10:00:00Z,true,00123\n\
         2,Bob,,0,2024-01-02T10:00:00.123456Z,false,99999\n\
         3,\"Çelik, Ömer \"\"ö\"\"\",o@example.com,123456789012345678.123456789,2024-01-03T10:00:00+02:00,true,10001\n",
    );
    d.write(
        "tap.json",
        r#"{"files": [{"entity": "customers", "path": "data/customers.csv", "keys": ["id"]}]}"#,
    );
}

#[test]
fn discover_infers_types() {
    let d = Dir::new();
    shop_csv(&d);
    let out = d
        .run(&["tap", "csv", "--config", "tap.json", "--discover"], None)
        .ok();
    let cat: Value = serde_json::from_str(&out.stdout).unwrap();
    let s = &cat["streams"][0];
    assert_eq!(s["tap_stream_id"], "customers");
    assert_eq!(
        s["schema"]["properties"],
        json!({
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "email": {"type": ["null", "string"]},
            "balance": {"type": "number"},
            "created_at": {"type": "string", "format": "date-time"},
            "active": {"type": "boolean"},
            "zip": {"type": "string"}
        })
    );
    assert_eq!(
        s["metadata"][0]["metadata"]["table-key-properties"],
        json!(["id"])
    );
    assert!(
        out.stderr.is_empty() || !out.stderr.contains('{'),
        "no protocol on stderr"
    );
}

#[test]
fn tap_writes_only_protocol_to_stdout() {
    let d = Dir::new();
    shop_csv(&d);
    let out = d.run(&["tap", "csv", "--config", "tap.json"], None).ok();
    let msgs = out.json_lines();
    let types: Vec<&str> = msgs.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["SCHEMA", "RECORD", "RECORD", "RECORD", "STATE", "STATE"]
    );
    // Decimals and text travel exactly.
    assert!(out
        .stdout
        .contains(r#""balance":123456789012345678.123456789"#));
    assert_eq!(msgs[3]["record"]["name"], "Çelik, Ömer \"ö\"");
    assert_eq!(msgs[1]["record"]["zip"], "00123");
    assert_eq!(msgs[2]["record"]["email"], Value::Null);
    let st = &msgs[5]["value"];
    assert_eq!(st["currently_syncing"], Value::Null);
    assert_eq!(st["bookmarks"]["customers"]["offset"], 3);
    assert_eq!(st["bookmarks"]["customers"]["complete"], true);
}

#[test]
fn tap_to_target_pipe_roundtrip() {
    let d = Dir::new();
    shop_csv(&d);
    d.write("t.json", r#"{"destination_path": "out"}"#);
    let tap = d.run(&["tap", "csv", "--config", "tap.json"], None).ok();
    for target in ["jsonl", "csv"] {
        let out = d
            .run(&["target", target, "--config", "t.json"], Some(&tap.stdout))
            .ok();
        // Exactly one committed state on stdout: the last one.
        let states = out.json_lines();
        assert_eq!(states.len(), 1, "{}", out.stdout);
        assert_eq!(states[0]["bookmarks"]["customers"]["offset"], 3);
    }
    let rows = d.jsonl("out/customers.jsonl");
    let src: Vec<Value> = tap
        .json_lines()
        .into_iter()
        .filter(|m| m["type"] == "RECORD")
        .map(|m| m["record"].clone())
        .collect();
    assert_eq!(rows, src);
    assert_eq!(
        d.read("out/customers.csv"),
        "id,name,email,balance,created_at,active,zip\n\
         1,Ann,ann@example.com,10.50,2024-01-01T10:00:00Z,true,00123\n\
         2,Bob,,0,2024-01-02T10:00:00.123456Z,false,99999\n\
         3,\"Çelik, Ömer \"\"ö\"\"\",o@example.com,123456789012345678.123456789,2024-01-03T10:00:00+02:00,true,10001\n"
    );
}

#[test]
fn properties_alias_state_and_catalog_selection() {
    let d = Dir::new();
    shop_csv(&d);
    let cat = d
        .run(&["tap", "csv", "--config", "tap.json", "--discover"], None)
        .ok()
        .stdout;
    let mut cat: Value = serde_json::from_str(&cat).unwrap();
    // Select the stream but deselect a column.
    let md = cat["streams"][0]["metadata"].as_array_mut().unwrap();
    md[0]["metadata"]["selected"] = json!(true);
    for e in md.iter_mut() {
        if e["breadcrumb"] == json!(["properties", "email"]) {
            e["metadata"]["selected"] = json!(false);
        }
    }
    d.write("cat.json", &cat.to_string());
    let out = d
        .run(
            &[
                "tap",
                "csv",
                "--config",
                "tap.json",
                "--properties",
                "cat.json",
            ],
            None,
        )
        .ok();
    let msgs = out.json_lines();
    assert!(msgs[0]["schema"]["properties"].get("email").is_none());
    assert!(msgs[1]["record"].get("email").is_none());
    assert_eq!(msgs[1]["record"]["id"], 1);
    // With the final state, nothing is read again.
    d.write("state.json", &msgs.last().unwrap()["value"].to_string());
    let again = d
        .run(
            &[
                "tap",
                "csv",
                "--config",
                "tap.json",
                "--catalog",
                "cat.json",
                "--state",
                "state.json",
            ],
            None,
        )
        .ok();
    assert_eq!(
        again
            .json_lines()
            .iter()
            .filter(|m| m["type"] == "RECORD")
            .count(),
        0
    );
}

#[test]
fn jsonl_tap_reads_folders_and_globs() {
    let d = Dir::new();
    d.write("events/2024-01.jsonl", "{\"id\": 1, \"kind\": \"click\", \"meta\": {\"x\": 1}}\n\n{\"id\": 2, \"kind\": \"view\"}\n");
    d.write(
        "events/2024-02.jsonl",
        "{\"id\": 3, \"kind\": \"click\", \"meta\": {\"x\": 2, \"tags\": [\"a\"]}}\n",
    );
    d.write("events/notes.txt", "ignored\n");
    d.write("tap.json", r#"{"files": [{"entity": "events", "path": "events", "keys": ["id"]}], "add_metadata_columns": true}"#);
    let out = d.run(&["tap", "jsonl", "--config", "tap.json"], None).ok();
    let msgs = out.json_lines();
    let schema = &msgs[0]["schema"]["properties"];
    assert_eq!(schema["meta"]["type"], json!(["null", "object"]));
    assert_eq!(
        schema["meta"]["properties"]["tags"]["items"],
        json!({"type": "string"})
    );
    let recs: Vec<&Value> = msgs.iter().filter(|m| m["type"] == "RECORD").collect();
    let ids: Vec<i64> = recs
        .iter()
        .map(|r| r["record"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(
        recs[1]["record"]["_sdc_source_lineno"], 3,
        "blank lines count toward line numbers"
    );
    assert!(recs[2]["record"]["_sdc_source_file"]
        .as_str()
        .unwrap()
        .ends_with("2024-02.jsonl"));
}

#[test]
fn about_in_json_and_markdown() {
    let d = Dir::new();
    let out = d.run(&["tap", "csv", "--about"], None).ok();
    let about: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(about["name"], "csv");
    assert!(about["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("discover")));
    assert!(about["settings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "files"));
    let md = d
        .run(
            &["target", "jsonl", "--about", "--format", "markdown"],
            None,
        )
        .ok();
    assert!(md.stdout.starts_with("# jsonl"));
    assert!(md.stdout.contains("| `destination_path` |"));
}

#[test]
fn target_reads_input_file_and_keeps_state_order() {
    let d = Dir::new();
    let msgs = [
        json!({"type": "SCHEMA", "stream": "s", "schema": {"properties": {"id": {"type": "integer"}}}, "key_properties": ["id"]}),
        json!({"type": "RECORD", "stream": "s", "record": {"id": 1}}),
        json!({"type": "STATE", "value": {"bookmarks": {"s": {"v": 1}}}}),
        json!({"type": "RECORD", "stream": "s", "record": {"id": 2}}),
        json!({"type": "STATE", "value": {}}),
        json!({"type": "STATE", "value": {"bookmarks": {"s": {"v": 2}}}}),
        json!({"type": "ACTIVATE_VERSION", "stream": "s", "version": 3}),
    ];
    d.write("in.jsonl", &lines(&msgs));
    d.write("t.json", r#"{"destination_path": "out"}"#);
    let out = d
        .run(
            &[
                "target", "jsonl", "--config", "t.json", "--input", "in.jsonl",
            ],
            None,
        )
        .ok();
    // Only the last state is committed: none was due before the end of the input.
    assert_eq!(
        out.json_lines(),
        vec![json!({"bookmarks": {"s": {"v": 2}}})]
    );
    assert_eq!(
        d.jsonl("out/s.jsonl"),
        vec![json!({"id": 1}), json!({"id": 2})]
    );
}

#[test]
fn broken_pipe_is_not_an_error() {
    let d = Dir::new();
    let mut body = String::from("id,v\n");
    for i in 0..200_000 {
        body.push_str(&format!("{i},{i}\n"));
    }
    d.write("big.csv", &body);
    d.write(
        "tap.json",
        r#"{"files": [{"entity": "big", "path": "big.csv"}]}"#,
    );
    let mut c = std::process::Command::new("bash");
    c.current_dir(d.path())
        .env("FERRY_NO_PROGRESS", "1")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} tap csv --config tap.json | head -n 3",
            crate::util::ferry_bin().display()
        ));
    let out = run(c, None).ok();
    assert_eq!(out.stdout.lines().count(), 3);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn csv_target_adds_columns_when_the_schema_grows() {
    let d = Dir::new();
    d.write("t.json", r#"{"destination_path": "out"}"#);
    let schema = |props: Value| json!({"type": "SCHEMA", "stream": "s", "key_properties": ["id"], "schema": {"properties": props}});
    let first = lines(&[
        schema(json!({"id": {"type": "integer"}, "a": {"type": "string"}})),
        json!({"type": "RECORD", "stream": "s", "record": {"id": 1, "a": "x"}}),
        json!({"type": "STATE", "value": {"bookmarks": {"s": 1}}}),
        schema(
            json!({"id": {"type": "integer"}, "a": {"type": "string"}, "b": {"type": "boolean"}}),
        ),
        json!({"type": "RECORD", "stream": "s", "record": {"id": 2, "a": "", "b": true}}),
        json!({"type": "STATE", "value": {"bookmarks": {"s": 2}}}),
    ]);
    d.run(&["target", "csv", "--config", "t.json"], Some(&first))
        .ok();
    assert_eq!(d.read("out/s.csv"), "id,a,b\n1,x,\n2,\"\",true\n");
    // A later run with yet another property: old columns stay, the new one is appended.
    let second = lines(&[
        schema(json!({"id": {"type": "integer"}, "c": {"type": "string"}})),
        json!({"type": "RECORD", "stream": "s", "record": {"id": 3, "c": "z, with comma"}}),
        json!({"type": "STATE", "value": {"bookmarks": {"s": 3}}}),
    ]);
    let out = d
        .run(&["target", "csv", "--config", "t.json"], Some(&second))
        .ok();
    assert_eq!(out.json_lines(), vec![json!({"bookmarks": {"s": 3}})]);
    assert_eq!(
        d.read("out/s.csv"),
        "id,a,b,c\n1,x,,\n2,\"\",true,\n3,,,\"z, with comma\"\n"
    );
}

#[test]
fn json_logs_on_stderr() {
    let d = Dir::new();
    shop_csv(&d);
    let out = d
        .run(
            &["--log-format", "json", "tap", "csv", "--config", "tap.json"],
            None,
        )
        .ok();
    let log_lines: Vec<Value> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let read = log_lines
        .iter()
        .find(|l| l["message"] == "Stream read.")
        .expect("a structured log line");
    assert_eq!(read["stream"], "customers");
    assert_eq!(read["rows"], 3);
    assert_eq!(read["level"], "INFO");
}

#[test]
fn an_empty_state_is_a_state() {
    let d = Dir::new();
    let msgs = [
        json!({"type": "SCHEMA", "stream": "s", "schema": {"properties": {"id": {"type": "integer"}}}, "key_properties": ["id"]}),
        json!({"type": "RECORD", "stream": "s", "record": {"id": 1}}),
        json!({"type": "STATE", "value": {}}),
    ];
    d.write("in.jsonl", &lines(&msgs));
    d.write("t.json", r#"{"destination_path": "out"}"#);
    // `ferry target` echoes it once the record before it is written.
    let out = d
        .run(
            &[
                "target", "jsonl", "--config", "t.json", "--input", "in.jsonl",
            ],
            None,
        )
        .ok();
    assert_eq!(out.json_lines(), vec![json!({})]);
    assert!(!out.stderr.contains("Ignoring"), "{}", out.stderr);
    assert_eq!(d.jsonl("out/s.jsonl"), vec![json!({"id": 1})]);
    // `ferry sync` writes it: a tap that has nothing to remember leaves `{}` as its state.
    d.write(
        "ferry.yml",
        "pipelines:\n  p:\n    tap: { command: sh, args: [-c, 'cat in.jsonl', sh] }\n    target: { name: jsonl, config: { destination_path: out2 } }\n",
    );
    let out = d.run(&["sync", "p"], None).ok();
    assert!(!out.stderr.contains("Ignoring"), "{}", out.stderr);
    assert_eq!(d.json("state/p.json"), json!({}));
    assert_eq!(d.jsonl("out2/s.jsonl"), vec![json!({"id": 1})]);
}
