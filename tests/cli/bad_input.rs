//! Bad input of every kind: a clear message naming line, stream and problem; exit codes; and
//! nothing committed past the last good commit.

use serde_json::json;

use crate::util::{lines, Dir};

fn schema(stream: &str) -> serde_json::Value {
    json!({"type": "SCHEMA", "stream": stream, "key_properties": ["id"], "schema": {"type": "object", "required": ["id"], "properties": {
        "id": {"type": "integer"}, "amount": {"type": ["null", "number"]}, "at": {"type": ["null", "string"], "format": "date-time"}}}})
}

fn target(d: &Dir, input: &str) -> crate::util::Out {
    d.write("t.json", r#"{"destination_path": "out"}"#);
    d.run(&["target", "jsonl", "--config", "t.json"], Some(input))
}

#[test]
fn each_bad_line_is_named() {
    let good = lines(&[
        schema("s"),
        json!({"type": "RECORD", "stream": "s", "record": {"id": 1}}),
        json!({"type": "STATE", "value": {"bookmarks": {"s": 1}}}),
    ]);
    let cases: Vec<(String, &str)> = vec![
        ("this is not json".into(), "line 4: not JSON"),
        ("{\"stream\": \"s\"}".into(), "line 4: message has no \"type\" field"),
        ("{\"type\": \"BOGUS\"}".into(), "line 4: unknown message type \"BOGUS\""),
        (json!({"type": "RECORD", "stream": "other", "record": {"id": 1}}).to_string(), "line 4: RECORD for stream \"other\" arrived before any SCHEMA"),
        (json!({"type": "SCHEMA", "stream": "x", "schema": {"type": "object", "properties": {"a": {"type": "float"}}}}).to_string(), "line 4: stream \"x\": the SCHEMA message is not a usable JSON Schema: unusable JSON Schema at /properties/a: unknown type \"float\""),
        (json!({"type": "RECORD", "stream": "s", "record": {"id": "seven"}}).to_string(), "line 4: stream \"s\" (key id=\"seven\"): record does not match its schema: /id: expected integer, got string \"seven\""),
        (json!({"type": "RECORD", "stream": "s", "record": {"amount": 1}}).to_string(), "key property \"id\" is missing"),
        (json!({"type": "RECORD", "stream": "s", "record": {"id": 2, "at": "last tuesday"}}).to_string(), "/at: \"last tuesday\" is not a date-time"),
        (json!({"type": "RECORD", "stream": "s", "record": [1]}).to_string(), "line 4: RECORD message of stream \"s\": field \"record\" must be an object"),
        (json!({"type": "SCHEMA", "stream": "orders", "schema": "id integer"}).to_string(), "line 4: SCHEMA message of stream \"orders\": field \"schema\" must be a JSON Schema object, got a string"),
    ];
    for (bad, want) in cases {
        let d = Dir::new();
        let out = target(
            &d,
            &format!(
                "{good}{bad}\n{}",
                json!({"type": "STATE", "value": {"bookmarks": {"s": 2}}})
            ),
        );
        assert_eq!(out.code, 1, "{bad}: {}", out.stderr);
        assert!(
            out.stderr.contains(want),
            "{bad}\nwant: {want}\ngot: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"));
        // The state after the bad line never comes out; the one before it was not yet committed.
        assert!(out.stdout.is_empty(), "{bad}: {}", out.stdout);
        // The file holds nothing beyond the last commit (here: nothing at all).
        let content = std::fs::read_to_string(d.join("out/s.jsonl")).unwrap_or_default();
        assert_eq!(content, "", "{bad}");
    }
}

#[test]
fn quarantine_sets_bad_records_aside() {
    let d = Dir::new();
    d.write("t.json", r#"{"destination_path": "out"}"#);
    let input = lines(&[
        schema("s"),
        json!({"type": "RECORD", "stream": "s", "record": {"id": 1, "amount": 1.5}}),
        json!({"type": "RECORD", "stream": "s", "record": {"id": 2, "amount": "lots"}}),
        json!({"type": "RECORD", "stream": "s", "record": {"id": 3}}),
        json!({"type": "STATE", "value": {"bookmarks": {"s": 3}}}),
    ]);
    let out = d
        .run(
            &[
                "target",
                "jsonl",
                "--config",
                "t.json",
                "--on-invalid",
                "quarantine",
            ],
            Some(&input),
        )
        .ok();
    assert!(out.stderr.contains("1 rejected"), "{}", out.stderr);
    assert_eq!(
        d.jsonl("out/s.jsonl"),
        vec![json!({"id": 1, "amount": 1.5}), json!({"id": 3})]
    );
    let rejects = d.jsonl("rejects/s.rejects.jsonl");
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0]["line"], 3);
    assert_eq!(rejects[0]["record"], json!({"id": 2, "amount": "lots"}));
    assert!(rejects[0]["reason"]
        .as_str()
        .unwrap()
        .contains("/amount: expected null or number"));
    assert_eq!(out.json_lines(), vec![json!({"bookmarks": {"s": 3}})]);
}

#[test]
fn bad_files_and_names_are_config_errors() {
    let d = Dir::new();
    d.run(&["tap", "csv", "--config", "missing.json"], None)
        .code(2)
        .stderr_has("cannot read config file missing.json");
    d.write("bad.json", "{nope");
    d.run(&["tap", "csv", "--config", "bad.json"], None)
        .code(2)
        .stderr_has("config file bad.json is not valid JSON");
    d.write(
        "tap.json",
        r#"{"files": [{"entity": "e", "path": "x.csv"}]}"#,
    );
    d.write("x.csv", "a\n1\n");
    d.write("cat.json", r#"{"streams": [{"tap_stream_id": "e"}]}"#);
    d.run(
        &[
            "tap",
            "csv",
            "--config",
            "tap.json",
            "--catalog",
            "cat.json",
        ],
        None,
    )
    .code(2)
    .stderr_has("catalog stream \"e\" has no \"schema\" object");
    d.write("cat2.json", "[");
    d.run(
        &[
            "tap",
            "csv",
            "--config",
            "tap.json",
            "--catalog",
            "cat2.json",
        ],
        None,
    )
    .code(2)
    .stderr_has("is not valid JSON");
    d.run(&["tap", "postgresx", "--config", "tap.json"], None)
        .code(2)
        .stderr_has("unknown tap \"postgresx\"; built-in taps: csv, jsonl, postgres");
    d.run(&["target", "nope"], None)
        .code(2)
        .stderr_has("unknown target \"nope\"; built-in targets: csv, jsonl, postgres");
    d.write("typo.json", r#"{"files": [], "fles": 1}"#);
    d.run(&["tap", "csv", "--config", "typo.json"], None)
        .code(2)
        .stderr_has("unknown field `fles`");
    d.run(
        &[
            "tap",
            "csv",
            "--config",
            "tap.json",
            "--state",
            "nostate.json",
        ],
        None,
    )
    .code(2)
    .stderr_has("state file nostate.json does not exist");
}

#[test]
fn csv_cell_that_does_not_fit_names_file_line_and_column() {
    let d = Dir::new();
    d.write("x.csv", "id,n\n1,5\n2,five\n");
    d.write(
        "tap.json",
        r#"{"files": [{"entity": "e", "path": "x.csv", "schema": {"type": "object", "properties": {"id": {"type": "integer"}, "n": {"type": "integer"}}}}]}"#,
    );
    let out = d.run(&["tap", "csv", "--config", "tap.json"], None).code(3);
    assert!(
        out.stderr
            .contains("x.csv line 3, column \"n\": \"five\" is not an integer"),
        "{}",
        out.stderr
    );
}
