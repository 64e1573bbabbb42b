//! `ferry sync` and the project commands around it.

use serde_json::{json, Value};

use crate::util::Dir;

const PROJECT: &str = r#"
pipelines:
  shop:
    tap:
      name: csv
      config:
        files:
          - { entity: customers, path: "data/customers*.csv", keys: [id] }
          - { entity: orders, path: "data/orders*.csv", keys: [id] }
    target:
      name: jsonl
      config: { destination_path: out }
  copy:
    tap: { name: jsonl, config: { files: [{ entity: events, path: "events/*.jsonl" }] } }
    target: { name: csv, config: { destination_path: out2 } }
    state: state/custom.json
"#;

fn project() -> Dir {
    let d = Dir::new();
    d.write("ferry.yml", PROJECT);
    d.write("data/customers-1.csv", "id,name\n1,Ann\n2,Bob\n");
    d.write(
        "data/orders-1.csv",
        "id,customer_id,total\n10,1,9.99\n11,2,100.00\n",
    );
    d.write("events/a.jsonl", "{\"id\": 1}\n");
    d
}

fn ids(d: &Dir, file: &str) -> Vec<i64> {
    d.jsonl(file)
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

/// Gives `rel` a modification time after every file written before it (file systems with coarse
/// timestamps would otherwise tie).
fn touch_later(d: &Dir, rel: &str, secs: u64) {
    let f = std::fs::File::options()
        .write(true)
        .open(d.join(rel))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn sync_then_increment_then_nothing() {
    let d = project();
    let out = d.run(&["sync", "shop"], None).ok();
    assert!(
        out.stderr.contains("pipeline shop: 4 rows"),
        "{}",
        out.stderr
    );
    assert_eq!(ids(&d, "out/customers.jsonl"), [1, 2]);
    // Decimals are written as they were read, digit for digit.
    assert_eq!(
        d.read("out/orders.jsonl").lines().nth(1),
        Some(r#"{"id":11,"customer_id":2,"total":100.00}"#)
    );
    let state_text = d.read("state/shop.json");
    // Pretty, sorted keys, newline-terminated: diffs cleanly in git.
    assert!(
        state_text
            .starts_with("{\n  \"bookmarks\": {\n    \"customers\": {\n      \"complete\": true,"),
        "{state_text}"
    );
    assert!(state_text.ends_with("}\n"));

    // Nothing new: nothing loaded, state unchanged.
    d.run(&["sync", "shop"], None).ok();
    assert_eq!(ids(&d, "out/customers.jsonl"), [1, 2]);
    assert_eq!(d.read("state/shop.json"), state_text);

    // A new file: only it is read.
    d.write("data/customers-2.csv", "id,name\n3,Cy\n");
    touch_later(&d, "data/customers-2.csv", 5);
    d.run(&["sync", "shop"], None).ok();
    assert_eq!(ids(&d, "out/customers.jsonl"), [1, 2, 3]);
    assert_eq!(ids(&d, "out/orders.jsonl"), [10, 11]);
    let st = d.json("state/shop.json");
    assert!(st["bookmarks"]["customers"]["file"]
        .as_str()
        .unwrap()
        .ends_with("customers-2.csv"));
}

#[test]
fn select_and_full_refresh_touch_only_their_streams() {
    let d = project();
    d.run(&["sync", "shop"], None).ok();
    let before = d.json("state/shop.json");
    let out = d
        .run(
            &["sync", "shop", "--select", "orders", "--full-refresh"],
            None,
        )
        .ok();
    assert!(out.stderr.contains("orders"), "{}", out.stderr);
    // Orders were read again, customers not.
    assert_eq!(ids(&d, "out/orders.jsonl"), [10, 11, 10, 11]);
    assert_eq!(ids(&d, "out/customers.jsonl"), [1, 2]);
    let after = d.json("state/shop.json");
    assert_eq!(
        after["bookmarks"]["customers"], before["bookmarks"]["customers"],
        "other streams keep their bookmark"
    );
    assert_eq!(after["bookmarks"]["orders"]["offset"], 2);
    // A glob that matches nothing is a config error naming the streams.
    d.run(&["sync", "shop", "--select", "nope*"], None)
        .code(2)
        .stderr_has("matches no stream; streams: customers, orders");
}

#[test]
fn dry_run_writes_nothing() {
    let d = project();
    let out = d.run(&["sync", "shop", "--dry-run"], None).ok();
    assert!(out.stdout.contains("customers"), "{}", out.stdout);
    assert!(out.stdout.contains("INCREMENTAL (by file)"));
    assert!(out.stdout.contains("1 of 1 file(s) to read"));
    assert!(!d.exists("state/shop.json"));
    assert!(!d.exists("out"));
    d.run(&["sync", "shop"], None).ok();
    let out = d.run(&["sync", "shop", "--dry-run"], None).ok();
    assert!(
        out.stdout.contains("0 of 1 file(s) to read"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("\"complete\":true"));
}

#[test]
fn all_pipelines_custom_state_path_and_report() {
    let d = project();
    d.run(&["sync", "--all", "--report", "report.json"], None)
        .ok();
    assert!(d.exists("state/shop.json"));
    assert!(d.exists("state/custom.json"));
    assert_eq!(d.read("out2/events.csv"), "id\n1\n");
    let r = d.json("report.json");
    let shop = &r["pipelines"][0];
    assert_eq!(shop["pipeline"], "shop");
    assert_eq!(shop["status"], "ok");
    assert_eq!(
        shop["streams"][0],
        json!({"stream": "customers", "rows": 2, "rejects": 0, "bytes": shop["streams"][0]["bytes"]})
    );
    assert!(shop["streams"][0]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(shop["state_before"], json!({}));
    assert_eq!(shop["state_after"], d.json("state/shop.json"));
}

#[test]
fn state_lock_blocks_a_second_run() {
    let d = project();
    std::fs::create_dir_all(d.join("state")).unwrap();
    let lock = std::fs::File::create(d.join("state/shop.json.lock")).unwrap();
    lock.try_lock().unwrap();
    d.run(&["sync", "shop"], None)
        .code(4)
        .stderr_has("holds the state lock");
    d.run(&["state", "clear", "shop"], None).code(4);
    drop(lock);
    d.run(&["sync", "shop"], None).ok();
}

#[test]
fn state_show_set_clear() {
    let d = project();
    d.run(&["sync", "shop"], None).ok();
    let shown: Value = serde_json::from_str(
        &d.run(&["state", "show", "shop", "--stream", "orders"], None)
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(shown["offset"], 2);
    d.run(&["state", "clear", "shop", "--stream", "orders"], None)
        .ok();
    let st = d.json("state/shop.json");
    assert!(st["bookmarks"].get("orders").is_none());
    assert!(st["bookmarks"].get("customers").is_some());
    d.run(&["sync", "shop"], None).ok();
    assert_eq!(
        ids(&d, "out/orders.jsonl"),
        [10, 11, 10, 11],
        "cleared stream starts over"
    );
    d.run(&["state", "set", "shop", "{\"bookmarks\": {}}"], None)
        .ok();
    assert_eq!(d.json("state/shop.json"), json!({"bookmarks": {}}));
    d.run(&["state", "set", "shop", "[1]"], None).code(2);
}

#[test]
fn discover_and_select_edit_the_catalog() {
    let d = project();
    d.run(&["discover", "shop"], None).ok();
    let cat = d.json("catalogs/shop.json");
    assert_eq!(cat["streams"].as_array().unwrap().len(), 2);
    d.run(&["select", "shop", "cust*", "--method", "FULL_TABLE"], None)
        .ok();
    d.run(&["select", "shop", "orders", "--deselect"], None)
        .ok();
    let list = d.run(&["select", "shop", "--list"], None).ok().stdout;
    assert!(list.contains("[x] customers"), "{list}");
    assert!(list.contains("[ ] orders"), "{list}");
    // Re-discovery keeps the choices.
    d.run(&["discover", "shop"], None).ok();
    let list2 = d.run(&["select", "shop", "--list"], None).ok().stdout;
    assert_eq!(list, list2);
    d.run(&["select", "shop", "customers", "--key", "nope"], None)
        .code(2)
        .stderr_has("no property \"nope\"");
    // The sync uses the catalog: only customers, full table with ACTIVATE_VERSION.
    d.run(&["sync", "shop"], None).ok();
    assert_eq!(ids(&d, "out/customers.jsonl"), [1, 2]);
    assert!(!d.exists("out/orders.jsonl"));
    d.run(&["sync", "shop"], None).ok();
    assert_eq!(
        ids(&d, "out/customers.jsonl"),
        [1, 2, 1, 2],
        "FULL_TABLE reads everything each run"
    );
}

#[test]
fn env_interpolation_and_secrets() {
    let d = Dir::new();
    d.write(
        "ferry.yml",
        "pipelines:\n  p:\n    tap: { name: csv, config: { files: [{ entity: \"${FERRY_T_ENTITY}\", path: \"${FERRY_T_SECRET_PATH}\" }] } }\n    target: { name: jsonl, config: { destination_path: out } }\n",
    );
    d.write("data/x.csv", "a\n1\n");
    // A missing variable is named.
    d.run(&["sync", "p"], None)
        .code(2)
        .stderr_has("environment variable FERRY_T_ENTITY is not set");
    // A value that came from the environment never appears in messages.
    let out = d
        .cmd(&["sync", "p"])
        .env("FERRY_T_ENTITY", "things")
        .env("FERRY_T_SECRET_PATH", "missing/hunter2-*.csv")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(stderr.contains("***"), "{stderr}");
}

#[test]
fn unknown_pipeline_and_missing_project() {
    let d = project();
    d.run(&["sync", "nope"], None)
        .code(2)
        .stderr_has("no pipeline \"nope\"")
        .stderr_has("pipelines: shop, copy");
    let empty = Dir::new();
    empty
        .run(&["sync", "x"], None)
        .code(2)
        .stderr_has("cannot read the project file");
    d.run(&["sync"], None).code(2).stderr_has("--all");
}

#[test]
fn partial_run_keeps_the_good_streams() {
    let d = project();
    d.run(&["discover", "shop"], None).ok();
    // Orders gets a file whose row does not fit the header: that stream fails, customers loads.
    d.write("data/orders-2.csv", "id,customer_id,total\n12,1\n");
    touch_later(&d, "data/orders-2.csv", 5);
    let out = d.run(&["sync", "shop", "--report", "r.json"], None).code(3);
    assert!(
        out.stderr
            .contains("orders-2.csv line 2: 2 fields, but the header has 3"),
        "{}",
        out.stderr
    );
    assert_eq!(ids(&d, "out/customers.jsonl"), [1, 2]);
    let st = d.json("state/shop.json");
    assert_eq!(st["bookmarks"]["customers"]["complete"], true);
    assert!(
        st["bookmarks"]["orders"]["file"]
            .as_str()
            .unwrap()
            .ends_with("orders-1.csv"),
        "orders keeps its last good file"
    );
    let r = d.json("r.json");
    assert_eq!(r["status"], "partial");
    assert_eq!(r["failed_streams"][0]["stream"], "orders");
}

#[test]
fn state_clear_is_not_undone_by_the_targets_record() {
    let d = project();
    d.run(&["sync", "shop"], None).ok();
    d.run(&["state", "clear", "shop"], None).ok();
    assert_eq!(d.json("state/shop.json"), json!({}));
    d.run(&["sync", "shop"], None).ok();
    assert_eq!(
        ids(&d, "out/customers.jsonl"),
        [1, 2, 1, 2],
        "a cleared state starts over"
    );
}

#[test]
fn two_pipelines_sharing_a_folder_keep_each_others_rows() {
    let d = Dir::new();
    d.write(
        "ferry.yml",
        "pipelines:\n  a:\n    tap: { name: csv, config: { files: [{ entity: users, path: a.csv }] } }\n    target: { name: jsonl, config: { destination_path: out } }\n  b:\n    tap: { name: csv, config: { files: [{ entity: users, path: b.csv }] } }\n    target: { name: jsonl, config: { destination_path: out } }\n",
    );
    d.write("a.csv", "id\n1\n2\n");
    d.write("b.csv", "id\n3\n");
    d.run(&["sync", "a"], None).ok();
    d.run(&["sync", "b"], None).ok();
    d.write("a.csv", "id\n1\n2\n4\n");
    touch_later(&d, "a.csv", 5);
    d.run(&["sync", "a"], None).ok();
    assert_eq!(
        ids(&d, "out/users.jsonl"),
        [1, 2, 3, 1, 2, 4],
        "b's committed row survives a's next run"
    );
}

#[test]
fn init_writes_a_starter_project_that_runs_and_never_overwrites() {
    let d = Dir::new();
    let out = d
        .run(
            &[
                "init",
                "proj",
                "--tap",
                "csv",
                "--target",
                "jsonl",
                "--pipeline",
                "shop",
            ],
            None,
        )
        .ok();
    assert!(
        out.stdout.is_empty(),
        "stdout stays for data: {}",
        out.stdout
    );
    for f in [
        "proj/ferry.yml",
        "proj/.gitignore",
        "proj/catalogs/.gitkeep",
        "proj/state/.gitkeep",
    ] {
        assert!(d.exists(f), "{f}");
    }
    let ignore = d.read("proj/.gitignore");
    assert!(ignore.lines().any(|l| l == ".env"), "{ignore}");
    // The starter runs as written once its example data exists.
    d.write("proj/data/orders.csv", "id,total\n1,9.50\n2,3.25\n");
    let mut c = d.cmd(&["sync", "shop"]);
    c.current_dir(d.join("proj"));
    crate::util::run(c, None).ok();
    assert_eq!(
        d.read("proj/out/orders.jsonl"),
        "{\"id\":1,\"total\":9.50}\n{\"id\":2,\"total\":3.25}\n"
    );
    // A second init keeps every file that is there.
    d.write("proj/ferry.yml", "# mine\n");
    d.run(
        &["init", "proj", "--tap", "postgres", "--target", "duckdb"],
        None,
    )
    .ok();
    assert_eq!(d.read("proj/ferry.yml"), "# mine\n");
    // A postgres → duckdb starter names its secret from the environment, never a value.
    let d2 = Dir::new();
    d2.run(&["init", "--tap", "postgres", "--target", "postgres"], None)
        .ok();
    let yml = d2.read("ferry.yml");
    assert!(yml.contains("password: ${MAIN_DB_PASSWORD}"), "{yml}");
    assert!(yml.contains("url: ${WAREHOUSE_URL}"), "{yml}");
    d2.run(&["init", "--target", "snowflake"], None)
        .code(2)
        .stderr_has("no starter for target \"snowflake\"");
}
