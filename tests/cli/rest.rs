//! REST API taps (`taps/*.yml`) against `fake_api.py`, a local server imitating GitHub, Stripe,
//! HubSpot and Harvest as their docs describe them: exact records and state after several
//! incremental runs, injected 429s, 5xx, slow and dropped responses, malformed bodies, a run
//! killed mid-way, and pipelines into Postgres, JSON files and a Python Singer target.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use serde_json::{json, Value};

use crate::interop::require;
use crate::postgres::Pg;
use crate::util::{run, Dir, Out};

/// The repository root (definitions live in `taps/`).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn def(rel: &str) -> String {
    root().join(rel).display().to_string()
}

/// A running fake API server.
pub struct Api {
    child: Child,
    stdout: BufReader<ChildStdout>,
    port: u16,
}

impl Api {
    pub fn start() -> Api {
        let mut child = Command::new("python3")
            .arg(root().join("tests/cli/fake_api.py"))
            .args(["--bench-records", "1000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("fake_api.py said {line:?}"))
            .parse()
            .unwrap();
        Api {
            child,
            stdout,
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One admin request; the JSON answer.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
            "{head}\n{body}"
        );
        serde_json::from_str(body).unwrap_or(Value::Null)
    }

    fn data(&self, api: &str, collection: &str) -> Vec<Value> {
        match self.admin("GET", &format!("/_admin/data/{api}/{collection}"), None) {
            Value::Array(a) => a,
            other => panic!("{other}"),
        }
    }

    fn mutate(&self, api: &str, collection: &str, add: u64, update: u64) -> Value {
        self.admin(
            "POST",
            "/_admin/mutate",
            Some(json!({"api": api, "collection": collection, "add": add, "update": update})),
        )
    }

    pub fn faults(&self, rules: Value) {
        self.admin("POST", "/_admin/faults", Some(json!({ "rules": rules })));
    }

    pub fn log(&self) -> Vec<Value> {
        match self.admin("GET", "/_admin/log", None) {
            Value::Array(a) => a,
            other => panic!("{other}"),
        }
    }

    fn clear_log(&self) {
        self.admin("POST", "/_admin/log/clear", None);
    }

    /// Blocks until the server reports a request it is holding (a `hang` fault).
    fn wait_hang(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "the fake API exited"
            );
            if let Some(p) = line.trim().strip_prefix("HANG ") {
                return p.to_owned();
            }
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Engine settings that keep retries quick in tests.
fn fast(mut c: Value, api: &Api) -> Value {
    c["base_url"] = json!(api.url());
    c["backoff_base_ms"] = json!(10);
    c["max_retries"] = json!(4);
    c
}

fn pipeline(d: &Dir, name: &str, tap: &str, tap_config: &Value, target: &str) {
    d.write(
        "ferry.yml",
        &format!(
            "pipelines:\n  {name}:\n    tap: {{ name: {tap}, config: {tap_config} }}\n    target: {target}\n    commit_rows: 1\n"
        ),
    );
}

fn ids(rows: &[Value], key: &str) -> BTreeSet<String> {
    rows.iter()
        .map(|r| match &r[key] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        })
        .collect()
}

/// Rows of a JSON-lines file written by the jsonl target, from line `from` on.
fn lines_from(d: &Dir, rel: &str, from: usize) -> Vec<Value> {
    if !d.exists(rel) {
        return Vec::new();
    }
    d.jsonl(rel).into_iter().skip(from).collect()
}

fn instant(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap(),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .timestamp_millis(),
        other => panic!("not a key: {other}"),
    }
}

/// The records of `data` whose key is at or after `since` (what an inclusive filter returns).
fn at_or_after(data: &[Value], key: impl Fn(&Value) -> Value, since: Option<&Value>) -> Vec<Value> {
    data.iter()
        .filter(|r| since.is_none_or(|s| instant(&key(r)) >= instant(s)))
        .cloned()
        .collect()
}

fn max_key(data: &[Value], key: impl Fn(&Value) -> Value) -> i64 {
    data.iter().map(|r| instant(&key(r))).max().unwrap()
}

fn bookmark(d: &Dir, pipeline: &str, stream: &str) -> Value {
    d.json(&format!("state/{pipeline}.json"))["bookmarks"][stream].clone()
}

#[test]
fn github_three_incremental_runs_emit_exactly_the_changed_records() {
    let api = Api::start();
    let d = Dir::new();
    let cfg = fast(
        json!({"token": "ghp_test_token", "owner": "acme", "repo": "shop", "per_page": 30}),
        &api,
    );
    pipeline(
        &d,
        "gh",
        &def("taps/github.yml"),
        &cfg,
        "{ name: jsonl, config: { destination_path: out } }",
    );
    type Key = fn(&Value) -> Value;
    let streams: [(&str, &str, Key, &str); 3] = [
        ("issues", "issues", |r| r["updated_at"].clone(), "id"),
        ("pull_requests", "pulls", |r| r["updated_at"].clone(), "id"),
        (
            "commits",
            "commits",
            |r| r["commit"]["committer"]["date"].clone(),
            "sha",
        ),
    ];
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut prev: BTreeMap<&str, Value> = BTreeMap::new();
    for run_no in 0..3 {
        if run_no > 0 {
            api.mutate("github", "issues", 4, 3);
            api.mutate("github", "pulls", 2, 2);
            api.mutate("github", "commits", 5, 0);
        }
        d.run(&["sync", "gh"], None).ok();
        for (stream, coll, key, id) in &streams {
            let data = api.data("github", coll);
            let file = format!("out/{stream}.jsonl");
            let from = seen.get(stream).copied().unwrap_or(0);
            let got = lines_from(&d, &file, from);
            seen.insert(stream, from + got.len());
            let want = at_or_after(&data, key, prev.get(stream));
            assert_eq!(ids(&got, id), ids(&want, id), "run {run_no}, {stream}");
            assert_eq!(
                got.len(),
                want.len(),
                "run {run_no}, {stream}: no record twice"
            );
            // Each record arrives as the API has it now (the latest update).
            for g in &got {
                let w = want.iter().find(|w| w[*id] == g[*id]).unwrap();
                for k in ["title", "state", "number"] {
                    if w.get(k).is_some() {
                        assert_eq!(g[k], w[k], "{stream} {k}");
                    }
                }
            }
            let mark = bookmark(&d, "gh", stream);
            assert_eq!(
                instant(&mark["replication_key_value"]),
                max_key(&data, key),
                "{stream}: {mark}"
            );
            assert!(mark.get("resume").is_none(), "{stream}: {mark}");
            prev.insert(stream, mark["replication_key_value"].clone());
        }
    }
    // The commits' computed `committed_at` is their commit date.
    let commits = d.jsonl("out/commits.jsonl");
    assert!(commits.iter().all(|c| c["committed_at"].is_string()));
    // Pull requests were read newest first and paging stopped at the bookmark: the last run
    // asked for one page only.
    let pulls_pages = api
        .log()
        .iter()
        .filter(|l| l["path"].as_str().unwrap().contains("/pulls"))
        .count();
    assert!(pulls_pages >= 3, "{pulls_pages}");
}

#[test]
fn stripe_into_postgres_follows_the_api_across_runs() {
    let api = Api::start();
    let pg = Pg::new("stripe");
    let d = Dir::new();
    let cfg = fast(json!({"api_key": "sk_test_fake"}), &api);
    pipeline(
        &d,
        "stripe",
        &def("taps/stripe.yml"),
        &cfg,
        &format!("{{ name: postgres, config: {} }}", pg.config(json!({}))),
    );
    for run_no in 0..3 {
        if run_no > 0 {
            api.mutate("stripe", "customers", 7, 3);
            api.mutate("stripe", "charges", 12, 0);
            api.mutate("stripe", "invoices", 3, 0);
        }
        d.run(&["sync", "stripe"], None).ok();
        for stream in ["customers", "charges", "invoices"] {
            let data = api.data("stripe", stream);
            let rows = pg.sql(&format!(
                "SELECT id, created FROM \"{}\".\"{stream}\" ORDER BY id",
                pg.schema
            ));
            let mut want: Vec<String> = data
                .iter()
                .map(|r| format!("{}|{}", r["id"].as_str().unwrap(), r["created"]))
                .collect();
            want.sort();
            assert_eq!(rows, want, "run {run_no}, {stream}");
            let mark = bookmark(&d, "stripe", stream);
            assert_eq!(
                mark["replication_key_value"],
                json!(data
                    .iter()
                    .map(|r| r["created"].as_i64().unwrap())
                    .max()
                    .unwrap()),
                "{stream}"
            );
        }
    }
    // Values arrive as the API sent them, typed.
    let c = &api.data("stripe", "customers")[0];
    let got = pg.sql(&format!(
        "SELECT email, balance, delinquent FROM \"{}\".customers WHERE id = '{}'",
        pg.schema,
        c["id"].as_str().unwrap()
    ));
    assert_eq!(
        got,
        vec![format!(
            "{}|{}|{}",
            c["email"].as_str().unwrap_or(""),
            c["balance"],
            if c["delinquent"].as_bool().unwrap() {
                "t"
            } else {
                "f"
            }
        )]
    );
}

#[test]
fn faults_are_retried_and_429_waits_for_retry_after() {
    let api = Api::start();
    let d = Dir::new();
    let mut cfg = fast(json!({"api_key": "sk_test_fake"}), &api);
    cfg["timeout_seconds"] = json!(1);
    pipeline(
        &d,
        "s",
        &def("taps/stripe.yml"),
        &cfg,
        "{ name: jsonl, config: { destination_path: out } }",
    );
    api.faults(json!([
        {"path": "/v1/customers", "kind": "429", "retry_after": "1", "after": 1},
        {"path": "/v1/customers", "kind": "500", "after": 2, "times": 2},
        {"path": "/v1/charges", "kind": "drop", "after": 1},
        {"path": "/v1/charges", "kind": "503", "after": 2},
        {"path": "/v1/invoices", "kind": "slow", "delay": 3},
        {"path": "/v1/invoices", "kind": "502", "after": 1},
    ]));
    d.run(&["sync", "s"], None).ok().stderr_has("retrying");
    for stream in ["customers", "charges", "invoices"] {
        let data = api.data("stripe", stream);
        let got = d.jsonl(&format!("out/{stream}.jsonl"));
        assert_eq!(ids(&got, "id"), ids(&data, "id"), "{stream}");
        assert_eq!(got.len(), data.len(), "{stream}");
    }
    let log = api.log();
    let customers: Vec<&Value> = log
        .iter()
        .filter(|l| l["path"].as_str().unwrap().contains("/v1/customers"))
        .collect();
    let i429 = customers.iter().position(|l| l["status"] == 429).unwrap();
    let gap = customers[i429 + 1]["t"].as_f64().unwrap() - customers[i429]["t"].as_f64().unwrap();
    assert!(
        gap >= 0.99,
        "the retry after a 429 with Retry-After: 1 came {gap} s later"
    );
    assert_eq!(customers.iter().filter(|l| l["status"] == 500).count(), 2);
    // The same page was asked again after each fault: the page after the 429 is the same URL.
    assert_eq!(customers[i429 + 1]["path"], customers[i429]["path"]);
}

#[test]
fn a_malformed_page_fails_its_stream_and_the_rerun_resumes_after_the_last_good_page() {
    let api = Api::start();
    let d = Dir::new();
    let cfg = fast(
        json!({"access_token": "harvest-token", "account_id": "123456", "per_page": 10}),
        &api,
    );
    pipeline(
        &d,
        "h",
        &def("taps/harvest.yml"),
        &cfg,
        "{ name: jsonl, config: { destination_path: out } }",
    );
    api.faults(json!([
        {"path": "/v2/time_entries", "kind": "malformed", "after": 3},
        {"path": "/v2/projects", "kind": "notjson", "after": 0},
    ]));
    let out = d.run(&["sync", "h"], None);
    assert_ne!(out.code, 0, "{}", out.stderr);
    let out = out
        .stderr_has("stream \"time_entries\", page 4")
        .stderr_has("is not JSON")
        .stderr_has("stream \"projects\", page 1")
        .stderr_has("Service maintenance");
    // The stream that had no fault is complete.
    assert_eq!(
        ids(&d.jsonl("out/clients.jsonl"), "id"),
        ids(&api.data("harvest", "clients"), "id")
    );
    // time_entries: three pages of ten committed, and the state says where to go on.
    assert_eq!(
        d.jsonl("out/time_entries.jsonl").len(),
        30,
        "{}",
        out.stderr
    );
    let mark = bookmark(&d, "h", "time_entries");
    assert_eq!(mark["resume"]["next"], json!({"page": 4}), "{mark}");
    assert!(mark.get("replication_key_value").is_none(), "{mark}");

    api.faults(json!([]));
    api.clear_log();
    d.run(&["sync", "h"], None).ok();
    let first = api
        .log()
        .into_iter()
        .find(|l| l["path"].as_str().unwrap().contains("/v2/time_entries"))
        .unwrap();
    assert!(
        first["path"].as_str().unwrap().contains("page=4"),
        "{first}"
    );
    for stream in ["time_entries", "projects"] {
        let data = api.data("harvest", stream);
        let got = d.jsonl(&format!("out/{stream}.jsonl"));
        assert_eq!(ids(&got, "id"), ids(&data, "id"), "{stream}");
        assert_eq!(got.len(), data.len(), "{stream}: nothing twice");
        let mark = bookmark(&d, "h", stream);
        assert_eq!(
            instant(&mark["replication_key_value"]),
            max_key(&data, |r| r["updated_at"].clone())
        );
        assert!(mark.get("resume").is_none());
    }
    // Computed properties come from nested objects.
    let te = d.jsonl("out/time_entries.jsonl");
    let src = api.data("harvest", "time_entries");
    for t in &te {
        let s = src.iter().find(|s| s["id"] == t["id"]).unwrap();
        assert_eq!(t["project_id"], s["project"]["id"]);
        assert_eq!(t["hours"], s["hours"]);
    }
}

#[test]
fn a_run_killed_mid_way_loses_nothing_and_duplicates_nothing() {
    let mut api = Api::start();
    let pg = Pg::new("restkill");
    let d = Dir::new();
    let cfg = fast(
        json!({"access_token": "harvest-token", "account_id": "123456", "per_page": 25}),
        &api,
    );
    pipeline(
        &d,
        "h",
        &def("taps/harvest.yml"),
        &cfg,
        &format!("{{ name: postgres, config: {} }}", pg.config(json!({}))),
    );
    api.faults(json!([{"path": "/v2/time_entries", "kind": "hang", "after": 5}]));
    let mut child = d
        .cmd(&["sync", "h"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let held = api.wait_hang();
    assert!(held.contains("page=6"), "{held}");
    child.kill().unwrap();
    child.wait().unwrap();
    api.faults(json!([]));
    api.mutate("harvest", "time_entries", 10, 5);
    d.run(&["sync", "h"], None).ok();
    let data = api.data("harvest", "time_entries");
    let rows = pg.sql(&format!(
        "SELECT id FROM \"{}\".time_entries ORDER BY id",
        pg.schema
    ));
    let mut want: Vec<i64> = data.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    want.sort_unstable();
    let got: Vec<i64> = rows.iter().map(|r| r.parse().unwrap()).collect();
    assert_eq!(got, want);
    // And each row holds the API's latest version.
    let latest = pg.sql(&format!(
        "SELECT id, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM \"{}\".time_entries ORDER BY id",
        pg.schema
    ));
    let mut want: Vec<String> = data
        .iter()
        .map(|r| format!("{}|{}", r["id"], r["updated_at"].as_str().unwrap()))
        .collect();
    want.sort_by_key(|s| s.split('|').next().unwrap().parse::<i64>().unwrap());
    assert_eq!(latest, want);
}

#[test]
fn child_streams_read_per_parent_with_partitioned_state_and_oauth_client_credentials() {
    let api = Api::start();
    let d = Dir::new();
    let cfg = fast(
        json!({"client_id": "crm-id", "client_secret": "crm-secret"}),
        &api,
    );
    pipeline(
        &d,
        "crm",
        &def("tests/cli/rest/crm.yml"),
        &cfg,
        "{ name: jsonl, config: { destination_path: out } }",
    );
    // Discovery infers the schemas from sampled records, with the parent's context.
    let cat = d
        .run(
            &[
                "tap",
                &def("tests/cli/rest/crm.yml"),
                "--config",
                &d.write("c.json", &cfg.to_string()).display().to_string(),
                "--discover",
            ],
            None,
        )
        .ok();
    let cat: Value = serde_json::from_str(&cat.stdout).unwrap();
    let contacts = cat["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["tap_stream_id"] == "contacts")
        .unwrap();
    assert_eq!(
        contacts["schema"]["properties"]["account_id"]["type"],
        json!(["null", "integer"])
    );
    assert_eq!(
        contacts["schema"]["properties"]["id"]["type"],
        json!("integer")
    );
    assert_eq!(
        contacts["schema"]["properties"]["updated_at"]["format"],
        json!("date-time")
    );

    let all_contacts = |api: &Api| api.data("crm", "contacts");
    d.run(&["sync", "crm"], None).ok();
    let got = d.jsonl("out/contacts.jsonl");
    let want = all_contacts(&api);
    assert_eq!(got.len(), want.len());
    for w in &want {
        let g = got.iter().find(|g| g["id"] == w["id"]).unwrap();
        assert_eq!(
            g["account_id"], w["account_id"],
            "the parent's id travels with the child"
        );
        assert_eq!(g["email"], w["email"]);
    }
    assert_eq!(
        ids(&d.jsonl("out/accounts.jsonl"), "id"),
        ids(&api.data("crm", "accounts"), "id")
    );
    let parts = bookmark(&d, "crm", "contacts")["partitions"]
        .as_array()
        .unwrap()
        .clone();
    let with_contacts: BTreeSet<String> =
        want.iter().map(|c| c["account_id"].to_string()).collect();
    for p in &parts {
        let acc = &p["context"]["account_id"];
        let mine: Vec<Value> = want
            .iter()
            .filter(|c| &c["account_id"] == acc)
            .cloned()
            .collect();
        if with_contacts.contains(&acc.to_string()) {
            assert_eq!(
                instant(&p["replication_key_value"]),
                max_key(&mine, |c| c["updated_at"].clone()),
                "{p}"
            );
        }
        assert!(p.get("resume").is_none());
    }
    assert_eq!(parts.len(), api.data("crm", "accounts").len());

    // Second run: an account changes (its contacts are read again, only newer ones kept) and
    // the access token is refused mid-way (a new one is fetched once, on the 401).
    let acc_lines = d.jsonl("out/accounts.jsonl").len();
    let con_lines = got.len();
    let m = api.mutate("crm", "accounts", 0, 1);
    let changed = m["updated"][0].clone();
    api.admin(
        "POST",
        "/_admin/mutate",
        Some(json!({"api": "crm", "collection": "contacts", "account": changed, "add": 3})),
    );
    api.faults(json!([{"path": "/contacts", "kind": "401", "after": 2}]));
    api.clear_log();
    d.run(&["sync", "crm"], None).ok();
    let new_accounts = lines_from(&d, "out/accounts.jsonl", acc_lines);
    assert!(
        new_accounts.iter().any(|a| a["id"] == changed),
        "{new_accounts:?}"
    );
    let new_contacts = lines_from(&d, "out/contacts.jsonl", con_lines);
    let want_new: Vec<Value> = all_contacts(&api)
        .into_iter()
        .filter(|c| c["account_id"] == changed)
        .rev()
        .take(3)
        .collect();
    // Only the three new contacts of the changed account (those at the old bookmark may repeat).
    for w in &want_new {
        assert!(
            new_contacts.iter().any(|g| g["id"] == w["id"]),
            "missing {w}"
        );
    }
    assert!(new_contacts.len() <= 4 + 1, "{new_contacts:?}");
    let log = api.log();
    assert!(
        log.iter().any(|l| l["status"] == 401),
        "the old token was refused"
    );
    let tokens = log
        .iter()
        .filter(|l| l["path"].as_str().unwrap().starts_with("/crm/oauth/token"))
        .count();
    assert_eq!(
        tokens, 2,
        "the run's token, and one new token after the 401"
    );
}

#[test]
fn http_errors_name_the_request_and_never_the_key() {
    let api = Api::start();
    let d = Dir::new();
    let cfg = fast(json!({"api_key": "crm-key-123"}), &api);
    let c = d.write("c.json", &cfg.to_string());
    let out = d.run(
        &[
            "tap",
            &def("tests/cli/rest/tickets.yml"),
            "--config",
            &c.display().to_string(),
        ],
        None,
    );
    assert_ne!(out.code, 0);
    let out = out
        .stderr_has("GET ")
        .stderr_has("/crm/no-such-endpoint")
        .stderr_has("HTTP 404");
    assert!(
        !out.stderr.contains("crm-key-123") && !out.stdout.contains("crm-key-123"),
        "{}",
        out.stderr
    );
    // The stream that works was read whole.
    let recs: Vec<Value> = out
        .json_lines()
        .into_iter()
        .filter(|m| m["type"] == "RECORD")
        .collect();
    assert_eq!(recs.len(), api.data("crm", "tickets").len());

    // A wrong token: the API's message, the status, no retries.
    let gh = d.write(
        "gh.json",
        &fast(
            json!({"token": "nope-wrong", "owner": "a", "repo": "b"}),
            &api,
        )
        .to_string(),
    );
    api.clear_log();
    let out = d.run(
        &[
            "tap",
            &def("taps/github.yml"),
            "--config",
            &gh.display().to_string(),
        ],
        None,
    );
    assert_ne!(out.code, 0);
    out.stderr_has("HTTP 401").stderr_has("Bad credentials");
    assert_eq!(
        api.log()
            .iter()
            .filter(|l| l["path"].as_str().unwrap().contains("/issues"))
            .count(),
        1
    );

    // Retries run out: the error says how many attempts were made.
    api.faults(json!([{"path": "/crm/tickets", "kind": "500", "times": 10}]));
    let out = d.run(
        &[
            "tap",
            &def("tests/cli/rest/tickets.yml"),
            "--config",
            &c.display().to_string(),
        ],
        None,
    );
    out.stderr_has("HTTP 500 after 5 attempts");
}

#[test]
fn hubspot_in_a_pipe_into_a_python_target_with_oauth_refresh() {
    let Some(target) = require("target-jsonl") else {
        return;
    };
    let api = Api::start();
    let d = Dir::new();
    let cfg = fast(
        json!({"client_id": "hs-client", "client_secret": "hs-secret", "refresh_token": "hs-refresh"}),
        &api,
    );
    let c = d.write("c.json", &cfg.to_string());
    d.write(
        "t.json",
        r#"{"destination_path": "out", "do_timestamp_file": false}"#,
    );
    let state = d.join("state.json");
    let mut total: BTreeMap<&str, usize> = BTreeMap::new();
    let mut prev: BTreeMap<&str, Value> = BTreeMap::new();
    for run_no in 0..2 {
        if run_no == 1 {
            api.mutate("hubspot", "contacts", 5, 4);
            api.mutate("hubspot", "deals", 2, 2);
        }
        let state_arg = if state.exists() {
            format!("--state {}", state.display())
        } else {
            String::new()
        };
        let script = format!(
            "set -o pipefail; {} tap {} --config {} {state_arg} | {} --config t.json > states.jsonl",
            crate::util::ferry_bin().display(),
            def("taps/hubspot.yml"),
            c.display(),
            target.display()
        );
        let mut cmd = Command::new("bash");
        cmd.args(["-c", &script]).current_dir(d.path());
        let out: Out = run(cmd, None);
        let out = out.ok();
        // target-jsonl prints the states it was given; the last one is the next run's start.
        let last = d
            .read("states.jsonl")
            .lines()
            .last()
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{}", out.stderr));
        std::fs::write(&state, last).unwrap();
        for stream in ["contacts", "companies", "deals"] {
            let data = api.data("hubspot", stream);
            let file = format!("out/{stream}.jsonl");
            let from = total.get(stream).copied().unwrap_or(0);
            let got = lines_from(&d, &file, from);
            total.insert(stream, from + got.len());
            let want = at_or_after(&data, |r| r["updatedAt"].clone(), prev.get(stream));
            assert_eq!(ids(&got, "id"), ids(&want, "id"), "run {run_no} {stream}");
            let st: Value = serde_json::from_str(&d.read("state.json")).unwrap();
            let mark = &st["bookmarks"][stream]["replication_key_value"];
            assert_eq!(instant(mark), max_key(&data, |r| r["updatedAt"].clone()));
            prev.insert(stream, mark.clone());
        }
    }
    // The access token came from the refresh-token flow and never reached a log or the state.
    assert!(!d.read("state.json").contains("hs-access"));
}

#[test]
fn requests_per_second_is_a_ceiling() {
    let api = Api::start();
    let d = Dir::new();
    let mut cfg = fast(
        json!({"access_token": "harvest-token", "account_id": "123456", "per_page": 10}),
        &api,
    );
    cfg["requests_per_second"] = json!(25);
    let c = d.write("c.json", &cfg.to_string());
    d.run(
        &[
            "tap",
            &def("taps/harvest.yml"),
            "--config",
            &c.display().to_string(),
        ],
        None,
    )
    .ok();
    let t: Vec<f64> = api.log().iter().map(|l| l["t"].as_f64().unwrap()).collect();
    assert!(t.len() > 20, "{}", t.len());
    let span = t.last().unwrap() - t.first().unwrap();
    // n requests at 25/s need at least (n-1)/25 s.
    assert!(
        span >= (t.len() - 1) as f64 / 25.0 * 0.97,
        "{} requests in {span} s",
        t.len()
    );
}

#[test]
fn definitions_are_checked_before_any_request() {
    let d = Dir::new();
    let bad = [
        ("streams: []\n", "missing field `name`"),
        ("name: x\nbase_url: http://h\nstreams: [{name: a, path: /a, parent: {stream: b, context: {}}}]\n", "parent \"b\" must be a stream defined before it"),
        ("name: x\nbase_url: http://h\nstreams: [{name: a, path: '/a/{{ config.x', records: $.a}]\n", "unclosed"),
        ("name: x\nbase_url: http://h\nstreams: [{name: a, path: /a, records: '$..a'}]\n", "bad path"),
        ("name: x\nbase_url: http://h\nstreams: [{name: a, path: /a, pagination: {type: cursor, param: p}}]\n", "needs one of `token`"),
        ("name: x\nbase_url: http://h\nstreams: [{name: a, path: /a, order: asc, incremental: {stop_at_bookmark: true}, replication_key: u}]\n", "needs `order: desc`"),
        ("name: x\nbase_url: http://h\nstreams: [{name: a, path: /a, nope: 1}]\n", "unknown field `nope`"),
    ];
    for (i, (text, msg)) in bad.iter().enumerate() {
        let f = d.write(&format!("taps/bad{i}.yml"), text);
        d.run(&["tap", &f.display().to_string(), "--discover"], None)
            .code(2)
            .stderr_has(msg);
    }
    assert!(Path::new(&def("taps/github.yml")).exists());
}

/// The shipped definitions are inside the binary: by name, from a folder that has none of
/// `taps/`, and a definition file of the same name still wins when named by its path.
#[test]
fn shipped_definitions_work_by_name_from_an_empty_directory() {
    let d = Dir::new();
    let list = d.run(&["tap", "--list"], None).ok().stdout;
    for name in [
        "csv", "jsonl", "postgres", "github", "harvest", "hubspot", "stripe",
    ] {
        assert!(
            list.lines()
                .any(|l| l.starts_with(&format!("{name} ")) && l.len() > name.len() + 10),
            "{name} listed with a description:\n{list}"
        );
    }
    let list = d.run(&["target", "--list"], None).ok().stdout;
    for name in [
        "jsonl",
        "postgres",
        "duckdb",
        "parquet",
        "hubspot",
        "customerio",
        "webhook",
    ] {
        assert!(
            list.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name}:\n{list}"
        );
    }
    let about: Value =
        serde_json::from_str(&d.run(&["tap", "github", "--about"], None).ok().stdout).unwrap();
    assert_eq!(about["name"], "github");
    assert!(
        about["settings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "token"),
        "{about}"
    );
    // Discovery reads the shipped catalog: no request is made (nothing listens on port 9).
    d.write(
        "gh.json",
        &json!({"token": "ghp_test_token", "owner": "acme", "repo": "shop", "base_url": "http://127.0.0.1:9"}).to_string(),
    );
    let cat: Value = serde_json::from_str(
        &d.run(
            &["tap", "github", "--config", "gh.json", "--discover"],
            None,
        )
        .ok()
        .stdout,
    )
    .unwrap();
    let issues = cat["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["tap_stream_id"] == "issues")
        .unwrap();
    let number = &issues["schema"]["properties"]["number"]["type"];
    assert!(
        number == "integer" || *number == json!(["null", "integer"]),
        "{number}"
    );
    // A sync naming `github` in ferry.yml.
    let api = Api::start();
    let cfg = fast(
        json!({"token": "ghp_test_token", "owner": "acme", "repo": "shop"}),
        &api,
    );
    pipeline(
        &d,
        "gh",
        "github",
        &cfg,
        "{ name: jsonl, config: { destination_path: out } }",
    );
    d.run(&["sync", "gh"], None).ok();
    assert_eq!(
        ids(&d.jsonl("out/issues.jsonl"), "id"),
        ids(&api.data("github", "issues"), "id")
    );
    // A file named by its path is read, even with a shipped definition's name.
    let text: String = std::fs::read_to_string(root().join("taps/github.yml"))
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("description:") {
                "description: \"My own GitHub.\"\n".to_owned()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    d.write("github.yml", &text);
    let about: Value =
        serde_json::from_str(&d.run(&["tap", "github.yml", "--about"], None).ok().stdout).unwrap();
    assert_eq!(about["description"], "My own GitHub.");
    // An unknown name lists what there is.
    d.run(&["tap", "gitlab", "--about"], None)
        .code(2)
        .stderr_has("the REST APIs github, harvest, hubspot, stripe");
}

/// Every shipped catalog describes what its API serves: each stream of each shipped definition,
/// read by name (so with its catalog) from the fake server into a validating target, before and
/// after the server's data changes; every record arrives.
#[test]
fn shipped_catalogs_validate_every_record_the_fake_apis_serve() {
    let api = Api::start();
    // (stream, the fake server's collection, key) per definition.
    type Streams = &'static [(&'static str, &'static str, &'static str)];
    let cases: [(&str, Value, Streams); 4] = [
        (
            "github",
            json!({"token": "ghp_test_token", "owner": "acme", "repo": "shop", "per_page": 30}),
            &[
                ("issues", "issues", "id"),
                ("pull_requests", "pulls", "id"),
                ("commits", "commits", "sha"),
            ],
        ),
        (
            "stripe",
            json!({"api_key": "sk_test_fake"}),
            &[
                ("customers", "customers", "id"),
                ("charges", "charges", "id"),
                ("invoices", "invoices", "id"),
            ],
        ),
        (
            "hubspot",
            json!({"access_token": "pat-test-token"}),
            &[
                ("contacts", "contacts", "id"),
                ("companies", "companies", "id"),
                ("deals", "deals", "id"),
            ],
        ),
        (
            "harvest",
            json!({"access_token": "harvest-token", "account_id": "123456"}),
            &[
                ("clients", "clients", "id"),
                ("projects", "projects", "id"),
                ("time_entries", "time_entries", "id"),
            ],
        ),
    ];
    for (name, cfg, streams) in cases {
        let d = Dir::new();
        // A full read each time (a new folder), so every record the server has is checked.
        for round in 0..2 {
            if round == 1 {
                for (_, coll, _) in streams {
                    api.mutate(name, coll, 3, 2);
                }
            }
            let out = format!("out{round}");
            pipeline(
                &d,
                name,
                name,
                &fast(cfg.clone(), &api),
                &format!("{{ name: jsonl, config: {{ destination_path: {out} }} }}"),
            );
            let _ = std::fs::remove_file(d.join(&format!("state/{name}.json")));
            d.run(&["sync", name], None).ok();
            for (stream, coll, key) in streams {
                let got = d.jsonl(&format!("{out}/{stream}.jsonl"));
                let want = api.data(name, coll);
                assert_eq!(
                    ids(&got, key),
                    ids(&want, key),
                    "{name} {stream}, round {round}"
                );
            }
        }
    }
}
