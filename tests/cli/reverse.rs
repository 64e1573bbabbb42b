//! `ferry reverse` against real servers: a Postgres warehouse (its own schema), a Postgres
//! application database (a database of its own) and the Redis on the machine (keys under a
//! prefix of the test's own). Each test checks what the destination holds and what was sent on
//! each of several runs.

use std::process::Command;

use serde_json::Value;

use crate::postgres::Pg;
use crate::util::Dir;

fn redis(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "-n", "0"])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Keys under a prefix, sorted.
fn redis_keys(prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis(&["--scan", "--pattern", &format!("{prefix}*")])
        .lines()
        .map(str::to_string)
        .collect();
    keys.sort();
    keys
}

fn clear_redis(prefix: &str) {
    for k in redis_keys(prefix) {
        redis(&["del", &k]);
    }
}

/// A warehouse table of `n` customers in the test's schema.
fn seed_warehouse(pg: &Pg, n: u32) {
    pg.sql(&format!("create schema if not exists \"{}\"", pg.schema));
    pg.sql(&format!(
        "create table \"{0}\".customers (id int primary key, email text, name text, ltv numeric(12,2), active boolean);
         insert into \"{0}\".customers select i, 'c' || i || '@example.com', 'Name ' || i, (i * 7 % 1000)::numeric / 4, i % 5 <> 0 from generate_series(1, {n}) i",
        pg.schema
    ));
}

fn warehouse_yaml(pg: &Pg) -> String {
    let _ = pg;
    "warehouse: { name: postgres, config: { host: 127.0.0.1, port: 5432, user: postgres, dbname: test } }\n".to_string()
}

fn report(d: &Dir) -> Vec<Value> {
    serde_json::from_str(&d.read("report.json")).unwrap()
}

fn reverse(d: &Dir, args: &[&str]) -> crate::util::Out {
    let mut all = vec!["--project", "ferry.yml", "reverse"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--report", "report.json"]);
    d.run(&all, None)
}

#[test]
fn redis_mirror_sends_only_changes_and_removes_what_left() {
    let pg = Pg::new("rev_redis");
    seed_warehouse(&pg, 200);
    let prefix = format!("ferry_t_{}_{}:", std::process::id(), pg.schema.len());
    clear_redis(&prefix);
    let d = Dir::new();
    d.write(
        "ferry.yml",
        &format!(
            "{}syncs:\n  active_to_redis:\n    source: {{ query: \"select id, email, name, ltv from \\\"{}\\\".customers where active\" }}\n    primary_key: id\n    mapping: {{ id: id, email: email, name: name, ltv: ltv, tier: {{ const: gold }} }}\n    mode: mirror\n    snapshot_schema: {}\n    destination: {{ name: redis, config: {{ url: \"redis://127.0.0.1:6379/0\", key: \"{prefix}customer:{{id}}\", format: hash, ttl_seconds: 3600 }} }}\n",
            warehouse_yaml(&pg),
            pg.schema,
            pg.schema
        ),
    );
    // Dry run: counts and what would be sent, nothing written.
    let out = reverse(&d, &["active_to_redis", "--dry-run"]).ok();
    let plan: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan[0]["counts"]["adds"], 160);
    assert_eq!(plan[0]["plan"]["add"][0]["fields"]["tier"], "gold");
    assert!(plan[0]["plan"]["first_requests"][1]
        .as_str()
        .unwrap()
        .starts_with("HSET "));
    assert!(redis_keys(&prefix).is_empty(), "a dry run sends nothing");

    // First run: every active customer.
    reverse(&d, &["active_to_redis"]).ok();
    let r = report(&d);
    assert_eq!(
        (r[0]["sent"].as_u64(), r[0]["confirmed"].as_u64()),
        (Some(160), Some(160))
    );
    assert_eq!(redis_keys(&prefix).len(), 160);
    assert_eq!(
        redis(&["hgetall", &format!("{prefix}customer:7")])
            .lines()
            .collect::<Vec<_>>(),
        [
            "id",
            "7",
            "email",
            "c7@example.com",
            "name",
            "Name 7",
            "ltv",
            "12.25",
            "tier",
            "gold"
        ]
    );
    let ttl: i64 = redis(&["ttl", &format!("{prefix}customer:7")])
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 3000, "ttl {ttl}");

    // Nothing changed: nothing sent.
    reverse(&d, &["active_to_redis"]).ok();
    let r = report(&d);
    assert_eq!(
        (r[0]["sent"].as_u64(), r[0]["unchanged"].as_u64()),
        (Some(0), Some(160))
    );

    // 2 changed, 1 left the query, 1 joined it: exactly those 4.
    pg.sql(&format!("update \"{0}\".customers set ltv = 999.99 where id in (7, 8); update \"{0}\".customers set active = false where id = 9; update \"{0}\".customers set active = true where id = 10", pg.schema));
    reverse(&d, &["active_to_redis"]).ok();
    let r = report(&d);
    assert_eq!(
        r[0]["counts"],
        serde_json::json!({"compared": 160, "adds": 1, "changes": 2, "removes": 1})
    );
    assert_eq!(r[0]["sent"], 4);
    assert_eq!(
        redis(&["hget", &format!("{prefix}customer:7"), "ltv"]).trim(),
        "999.99"
    );
    assert_eq!(
        redis(&["exists", &format!("{prefix}customer:9")]).trim(),
        "0"
    );
    assert_eq!(
        redis(&["exists", &format!("{prefix}customer:10")]).trim(),
        "1"
    );
    assert_eq!(redis_keys(&prefix).len(), 160);
    clear_redis(&prefix);
}

/// A database of the test's own (the application database reverse ETL writes to).
struct AppDb {
    name: String,
}

impl AppDb {
    fn new(pg: &Pg) -> AppDb {
        let name = format!("{}_app", pg.schema);
        pg.sql(&format!("drop database if exists \"{name}\""));
        pg.sql(&format!("create database \"{name}\""));
        AppDb { name }
    }

    fn sql(&self, sql: &str) -> Vec<String> {
        crate::postgres::psql(&self.name, sql)
    }
}

impl Drop for AppDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-c",
            ])
            .arg(format!(
                "drop database if exists \"{}\" with (force)",
                self.name
            ))
            .output();
    }
}

/// A sync into the application database's `accounts` table.
struct AppSync<'a> {
    source: String,
    primary_key: &'a str,
    mapping: &'a str,
    mode: &'a str,
    batch: u32,
}

impl AppSync<'_> {
    fn new(pg: &Pg) -> AppSync<'static> {
        AppSync {
            source: format!("{{ table: {}.customers }}", pg.schema),
            primary_key: "id",
            mapping: "{ id: id, email: email, ltv: ltv, plan: { const: pro } }",
            mode: "upsert",
            batch: 50,
        }
    }

    fn write(&self, d: &Dir, pg: &Pg, app: &AppDb) {
        d.write(
            "ferry.yml",
            &format!(
                "{}syncs:\n  to_app:\n    source: {}\n    primary_key: {}\n    mapping: {}\n    mode: {}\n    batch_size: {}\n    snapshot_schema: {}\n    destination: {{ name: postgres, config: {{ host: 127.0.0.1, user: postgres, password: \"${{APP_DB_PASSWORD:-unused}}\", dbname: \"{}\", table: public.accounts }} }}\n",
                warehouse_yaml(pg),
                self.source,
                self.primary_key,
                self.mapping,
                self.mode,
                self.batch,
                pg.schema,
                app.name
            ),
        );
    }
}

fn app_sync(d: &Dir, pg: &Pg, app: &AppDb, batch: u32) {
    AppSync {
        batch,
        ..AppSync::new(pg)
    }
    .write(d, pg, app);
}

#[test]
fn postgres_destination_upserts_rejects_bad_rows_and_retries_them() {
    let pg = Pg::new("rev_pg");
    seed_warehouse(&pg, 300);
    let app = AppDb::new(&pg);
    // The application refuses negative values and emails over 20 characters.
    app.sql("create table accounts (id int primary key, email varchar(20), ltv numeric(12,2) check (ltv >= 0), plan text, note text default 'kept')");
    app.sql("insert into accounts (id, email, ltv, plan, note) values (1, 'old@example.com', 0, 'free', 'app-owned')");
    pg.sql(&format!("update \"{0}\".customers set ltv = -5 where id = 17; update \"{0}\".customers set email = 'much-too-long-address@example.com' where id = 230", pg.schema));
    let d = Dir::new();
    app_sync(&d, &pg, &app, 50);
    let out = reverse(&d, &["to_app"]).code(3);
    assert!(
        out.stderr
            .contains("rejected 17: new row for relation \"accounts\" violates check constraint"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("rejected 230: value too long"),
        "{}",
        out.stderr
    );
    let r = report(&d);
    assert_eq!(
        (
            r[0]["sent"].as_u64(),
            r[0]["confirmed"].as_u64(),
            r[0]["rejected"].as_u64()
        ),
        (Some(300), Some(298), Some(2))
    );
    assert_eq!(
        app.sql("select count(*), sum(ltv), min(plan), max(plan) from accounts"),
        [format!(
            "298|{}|pro|pro",
            sum_ltv(&pg, "id not in (17, 230)")
        )]
    );
    // Columns the sync does not map are the application's: kept.
    assert_eq!(
        app.sql("select email, note from accounts where id = 1"),
        ["c1@example.com|app-owned"]
    );

    // Rejected rows are retried next run, and only they.
    reverse(&d, &["to_app"]).code(3);
    let r = report(&d);
    assert_eq!(
        (r[0]["sent"].as_u64(), r[0]["rejected"].as_u64()),
        (Some(2), Some(2))
    );
    pg.sql(&format!("update \"{0}\".customers set ltv = 5 where id = 17; update \"{0}\".customers set email = 'ok230@example.com' where id = 230", pg.schema));
    reverse(&d, &["to_app"]).ok();
    let r = report(&d);
    assert_eq!(
        (r[0]["sent"].as_u64(), r[0]["confirmed"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        app.sql("select count(*), sum(ltv) from accounts"),
        [format!("300|{}", sum_ltv(&pg, "true"))]
    );
    // 1% of rows change: exactly those are sent.
    pg.sql(&format!(
        "update \"{0}\".customers set ltv = ltv + 1 where id % 100 = 0",
        pg.schema
    ));
    reverse(&d, &["to_app"]).ok();
    assert_eq!(report(&d)[0]["sent"], 3);
    assert_eq!(
        app.sql("select count(*), sum(ltv) from accounts"),
        [format!("300|{}", sum_ltv(&pg, "true"))]
    );
}

fn sum_ltv(pg: &Pg, filter: &str) -> String {
    pg.sql(&format!(
        "select sum(ltv) from \"{}\".customers where {filter}",
        pg.schema
    ))[0]
        .clone()
}

#[test]
fn a_killed_run_resumes_and_the_destination_equals_the_source() {
    let pg = Pg::new("rev_kill");
    seed_warehouse(&pg, 400);
    let app = AppDb::new(&pg);
    app.sql("create table accounts (id int primary key, email text, ltv numeric(12,2), plan text)");
    let d = Dir::new();
    app_sync(&d, &pg, &app, 1);
    let mut child = d
        .cmd(&["--project", "ferry.yml", "reverse", "to_app"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::util::wait_until(&mut child, "some rows delivered", || {
        app.sql("select count(*) from accounts")[0]
            .parse::<u32>()
            .unwrap()
            >= 20
    });
    let _ = child.kill();
    let _ = child.wait();
    let delivered: u32 = app.sql("select count(*) from accounts")[0].parse().unwrap();
    reverse(&d, &["to_app"]).ok();
    let r = report(&d);
    // Rows delivered but not yet recorded may be sent again (upserts make that harmless);
    // nothing is lost and the rest is sent once.
    let sent = r[0]["sent"].as_u64().unwrap();
    assert!(
        sent <= 400 - u64::from(delivered) + 1,
        "sent {sent} after {delivered} were delivered"
    );
    assert!(
        sent >= 400 - u64::from(delivered),
        "sent {sent} after {delivered} were delivered"
    );
    assert_eq!(
        app.sql("select count(*), sum(ltv) from accounts"),
        [format!("400|{}", sum_ltv(&pg, "true"))]
    );
    reverse(&d, &["to_app"]).ok();
    assert_eq!(report(&d)[0]["sent"], 0);
}

#[test]
fn bad_syncs_fail_before_anything_is_sent() {
    let pg = Pg::new("rev_bad");
    seed_warehouse(&pg, 10);
    let app = AppDb::new(&pg);
    app.sql("create table accounts (id int primary key, email text, ltv numeric(12,2), plan text)");
    let d = Dir::new();
    let base = AppSync::new(&pg);
    // A mapping that names a missing column.
    AppSync {
        mapping: "{ id: id, ltv: lifetime_value }",
        ..AppSync::new(&pg)
    }
    .write(&d, &pg, &app);
    reverse(&d, &["to_app"])
        .code(2)
        .stderr_has("mapping.ltv names column \"lifetime_value\", which the source does not have (columns: id, email, name, ltv, active)");
    // Duplicate and NULL keys.
    AppSync {
        source: format!("{{ query: \"select * from {0}.customers union all select * from {0}.customers where id < 3\" }}", pg.schema),
        ..AppSync::new(&pg)
    }
    .write(&d, &pg, &app);
    reverse(&d, &["to_app"])
        .code(2)
        .stderr_has("primary_key id repeats in the source: 1 (2 rows), 2 (2 rows)");
    AppSync {
        primary_key: "email",
        ..AppSync::new(&pg)
    }
    .write(&d, &pg, &app);
    pg.sql(&format!(
        "update \"{}\".customers set email = null where id = 4",
        pg.schema
    ));
    reverse(&d, &["to_app"])
        .code(2)
        .stderr_has("1 rows have a NULL email");
    // Unknown sync, bad mode.
    base.write(&d, &pg, &app);
    reverse(&d, &["nope"])
        .code(2)
        .stderr_has("no sync \"nope\"");
    AppSync {
        mode: "sideways",
        ..AppSync::new(&pg)
    }
    .write(&d, &pg, &app);
    reverse(&d, &["to_app"])
        .code(2)
        .stderr_has("mode \"sideways\" is not one of upsert, insert, update, mirror");
    assert_eq!(app.sql("select count(*) from accounts"), ["0"]);
}

/// Writes ferry.yml with one mirror sync of the active customers to an HTTP definition in
/// targets/: `lines` holds its primary_key and mapping (and any other keys), `config` the
/// destination's config entries.
fn http_sync(d: &Dir, pg: &Pg, sync: &str, columns: &str, lines: &str, def: &str, config: &str) {
    d.write(
        "ferry.yml",
        &format!(
            "{wh}syncs:\n  {sync}:\n    source: {{ query: \"select {columns} from \\\"{schema}\\\".customers where active\" }}\n{lines}    mode: mirror\n    snapshot_schema: {schema}\n    destination: {{ name: {dir}/targets/{def}, config: {{ {config} }} }}\n",
            wh = warehouse_yaml(pg),
            schema = pg.schema,
            dir = env!("CARGO_MANIFEST_DIR"),
        ),
    );
}

#[test]
fn hubspot_definition_upserts_in_batches_rejects_bad_items_and_archives_by_id() {
    let pg = Pg::new("rev_hs");
    seed_warehouse(&pg, 250);
    // One email HubSpot refuses (no "@"): an item error in a 207.
    pg.sql(&format!(
        "update \"{}\".customers set email = 'not-an-email' where id = 42",
        pg.schema
    ));
    let api = crate::rest::Api::start();
    let d = Dir::new();
    http_sync(
        &d,
        &pg,
        "vips",
        "email, name, ltv",
        "    primary_key: email\n    mapping: { email: email, firstname: name, lifetime_value: ltv }\n",
        "hubspot.yml",
        &format!("base_url: \"{}\", access_token: pat-test-token", api.url()),
    );
    // A 429 with Retry-After and a 500 on the way: retried, nothing lost.
    api.faults(serde_json::json!([
        {"path": "/batch/upsert", "kind": 429, "retry_after": 1, "times": 1},
        {"path": "/batch/upsert", "kind": 500, "after": 1, "times": 1}
    ]));
    let out = reverse(&d, &["vips"]).code(3);
    assert!(
        out.stderr.contains("rejected not-an-email:"),
        "{}",
        out.stderr
    );
    let r = report(&d);
    assert_eq!(
        (
            r[0]["sent"].as_u64(),
            r[0]["confirmed"].as_u64(),
            r[0]["rejected"].as_u64()
        ),
        (Some(200), Some(199), Some(1))
    );
    let contacts = api.admin("GET", "/_admin/hubspot/contacts", None);
    let live: Vec<&Value> = objects(&contacts)
        .into_iter()
        .filter(|c| {
            c["properties"]["email"]
                .as_str()
                .is_some_and(|e| e.starts_with('c') && e.ends_with("@example.com"))
        })
        .filter(|c| c["archived"] != true)
        .collect();
    assert_eq!(live.len(), 199);
    let upserts: Vec<Value> = api
        .log()
        .into_iter()
        .filter(|e| {
            e["path"].as_str().unwrap_or("").ends_with("/batch/upsert")
                && (e["status"] == 200 || e["status"] == 207)
        })
        .collect();
    assert!(upserts.len() >= 2, "{upserts:?}");
    assert!(
        upserts
            .iter()
            .all(|e| e["items"].as_u64().unwrap_or(0) <= 100),
        "{upserts:?}"
    );

    // Next run: only the rejected row again.
    reverse(&d, &["vips"]).code(3);
    assert_eq!(report(&d)[0]["sent"], 1);
    // Fixed at the source, and one customer leaves the query: one upsert, one archive by id.
    pg.sql(&format!("update \"{0}\".customers set email = 'c42@example.com' where id = 42; update \"{0}\".customers set active = false where id = 7", pg.schema));
    reverse(&d, &["vips"]).ok();
    let r = report(&d);
    assert_eq!(r[0]["counts"]["removes"], 1);
    assert_eq!(
        (r[0]["sent"].as_u64(), r[0]["confirmed"].as_u64()),
        (Some(2), Some(2))
    );
    let contacts = api.admin("GET", "/_admin/hubspot/contacts", None);
    let c7 = objects(&contacts)
        .into_iter()
        .find(|c| c["properties"]["email"] == "c7@example.com")
        .expect("c7 was created");
    assert_eq!(c7["archived"], true);
    reverse(&d, &["vips"]).ok();
    assert_eq!(report(&d)[0]["sent"], 0);
}

/// The objects of an admin listing (a JSON array, or an object by id).
fn objects(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => o.values().collect(),
        other => panic!("not a listing: {other}"),
    }
}

#[test]
fn webhook_definition_with_the_snapshot_in_a_state_file() {
    let pg = Pg::new("rev_hook");
    seed_warehouse(&pg, 150);
    let api = crate::rest::Api::start();
    let d = Dir::new();
    http_sync(
        &d,
        &pg,
        "hooks",
        "id, email, ltv",
        "    primary_key: id\n    mapping: { email: email, value: ltv, origin: { const: warehouse } }\n    snapshot: state\n",
        "webhook.yml",
        &format!("base_url: \"{}/webhook/customers\", token: hook-secret-1", api.url()),
    );
    // Two rows the receiver refuses (item errors in a 200), and a 500 in the middle.
    api.admin(
        "POST",
        "/_admin/webhook/reject",
        Some(serde_json::json!({"keys": ["3", "77"]})),
    );
    api.faults(serde_json::json!([{"path": "/webhook", "kind": 500, "after": 1, "times": 1}]));
    reverse(&d, &["hooks"]).code(3);
    let r = report(&d);
    assert_eq!(
        (
            r[0]["sent"].as_u64(),
            r[0]["confirmed"].as_u64(),
            r[0]["rejected"].as_u64()
        ),
        (Some(120), Some(118), Some(2))
    );
    let state = api.admin("GET", "/_admin/webhook/state", None);
    let got = state["/webhook/customers"]
        .as_object()
        .expect("rows received");
    assert_eq!(got.len(), 118);
    assert_eq!(
        (
            got["8"]["email"].as_str(),
            got["8"]["value"].as_f64(),
            got["8"]["origin"].as_str()
        ),
        (Some("c8@example.com"), Some(14.0), Some("warehouse"))
    );
    let received: Vec<Value> = match api.admin("GET", "/_admin/webhook/received", None) {
        Value::Array(a) => a,
        other => panic!("{other}"),
    };
    assert!(received.iter().all(|q| q["auth"] == "Bearer hook-secret-1"));
    assert!(received
        .iter()
        .all(|q| q["body"]["records"].as_array().map_or(0, Vec::len) <= 100));
    // The snapshot is the state file, sorted by key; the warehouse got no snapshot table.
    let snap: Value = serde_json::from_str(&d.read("state/reverse-hooks.json")).unwrap();
    let rows = snap["rows"].as_object().unwrap();
    assert_eq!(rows.len(), 120);
    assert_eq!(rows["3"]["status"], "rejected");
    assert!(rows["3"].get("h").is_none());
    assert!(rows["3"]["error"]
        .as_str()
        .unwrap()
        .contains("rejected by the receiver"));
    assert_eq!(rows["8"]["status"], "ok");
    assert_eq!(rows["8"]["h"].as_str().map(str::len), Some(32));
    assert_eq!(
        pg.sql(&format!(
            "select count(*) from information_schema.tables where table_name = 'reverse__hooks' and table_schema in ('{}', '_ferry')",
            pg.schema
        )),
        ["0"]
    );
    assert!(!d.read("state/reverse-hooks.json").contains("hook-secret-1"));

    // The receiver takes them now; three rows change and one leaves the query.
    api.admin(
        "POST",
        "/_admin/webhook/reject",
        Some(serde_json::json!({"keys": []})),
    );
    pg.sql(&format!(
        "update \"{0}\".customers set ltv = ltv + 1 where id in (8, 9, 11); update \"{0}\".customers set active = false where id = 12",
        pg.schema
    ));
    reverse(&d, &["hooks"]).ok();
    let r = report(&d);
    assert_eq!(
        (
            r[0]["counts"]["adds"].as_u64(),
            r[0]["counts"]["changes"].as_u64(),
            r[0]["counts"]["removes"].as_u64(),
            r[0]["sent"].as_u64()
        ),
        (Some(2), Some(3), Some(1), Some(6))
    );
    let state = api.admin("GET", "/_admin/webhook/state", None);
    let got = state["/webhook/customers"].as_object().unwrap();
    assert_eq!(got.len(), 119);
    assert_eq!(got["8"]["value"].as_f64(), Some(15.0));
    assert!(got.get("12").is_none() && got.get("3").is_some());
    let snap: Value = serde_json::from_str(&d.read("state/reverse-hooks.json")).unwrap();
    assert_eq!(snap["rows"].as_object().unwrap().len(), 119);
    // Nothing changed: nothing sent.
    reverse(&d, &["hooks"]).ok();
    assert_eq!(report(&d)[0]["sent"], 0);
}

#[test]
fn customerio_definition_identifies_people_and_deletes_them_in_mirror_mode() {
    let pg = Pg::new("rev_cio");
    seed_warehouse(&pg, 40);
    // Customer.io refuses attribute values over 1,000 bytes: a 400 for that person only.
    pg.sql(&format!(
        "update \"{}\".customers set name = repeat('x', 1200) where id = 6",
        pg.schema
    ));
    let api = crate::rest::Api::start();
    let d = Dir::new();
    http_sync(
        &d,
        &pg,
        "people",
        "id, email, name, ltv",
        "    primary_key: id\n    mapping: { email: email, name: name, ltv: ltv }\n",
        "customerio.yml",
        &format!(
            "base_url: \"{}\", site_id: cio-site, api_key: cio-key",
            api.url()
        ),
    );
    api.faults(serde_json::json!([{"path": "/api/v1/customers", "kind": 429, "retry_after": 1, "times": 1}]));
    let out = reverse(&d, &["people"]).code(3);
    assert!(out.stderr.contains("rejected 6:"), "{}", out.stderr);
    assert!(!out.stderr.contains("cio-key"), "{}", out.stderr);
    let r = report(&d);
    assert_eq!(
        (
            r[0]["sent"].as_u64(),
            r[0]["confirmed"].as_u64(),
            r[0]["rejected"].as_u64()
        ),
        (Some(32), Some(31), Some(1))
    );
    let people = api.admin("GET", "/_admin/customerio/customers", None);
    let got = people["customers"].as_object().expect("customers");
    assert_eq!(got.len(), 31);
    assert_eq!(got["8"]["email"], "c8@example.com");
    assert_eq!(got["8"]["name"], "Name 8");
    assert!(got.get("6").is_none());

    // Fixed at the source, one person leaves the query: an identify and a delete.
    pg.sql(&format!(
        "update \"{0}\".customers set name = 'Six' where id = 6; update \"{0}\".customers set active = false where id = 9",
        pg.schema
    ));
    reverse(&d, &["people"]).ok();
    let r = report(&d);
    assert_eq!(
        (r[0]["counts"]["removes"].as_u64(), r[0]["sent"].as_u64()),
        (Some(1), Some(2))
    );
    let people = api.admin("GET", "/_admin/customerio/customers", None);
    let got = people["customers"].as_object().unwrap();
    assert_eq!(got.len(), 31);
    assert_eq!(got["6"]["name"], "Six");
    assert!(got.get("9").is_none());
    assert_eq!(people["deleted"], serde_json::json!(["9"]));
    reverse(&d, &["people"]).ok();
    assert_eq!(report(&d)[0]["sent"], 0);
}
