//! `ferry transform`: dbt-style projects built in DuckDB and Postgres, checked by the tables'
//! contents (DuckDB read back with the `duckdb` Python package, Postgres with psql), the
//! artifacts, the exit codes and messages of every kind of bad project, selection, and the
//! quickstart's pipelines-then-models chain.

use crate::postgres::Pg;
use crate::util::Dir;
use crate::warehouse::{python, read};

/// A small shop project: seeds with every inferred type, staging views, an ephemeral model
/// used by two marts (one starting with `with`), a mart in a custom schema, an incremental
/// model keyed by `unique_key`, a macro dispatched per adapter, generic and singular tests.
fn write_project(d: &Dir) {
    d.write(
        "p/dbt_project.yml",
        "name: shop\nprofile: shop\nconfig-version: 2\nvars:\n  vip_cents: 5000\nmodels:\n  shop:\n    +materialized: view\n    marts:\n      +materialized: table\n      +schema: marts\n      +tags: [nightly]\n",
    );
    d.write(
        "p/seeds/raw_customers.csv",
        "id,name,signup,active,score\n1,Zoë,2026-01-02,true,1.5\n2,Łukasz,2026-02-03,false,\n3,Ana,2026-03-04,true,2.25\n4,Bo,,true,0.5\n",
    );
    d.write(
        "p/seeds/raw_orders.csv",
        "id,customer_id,status,cents,placed_at\n10,1,paid,1250,2026-03-01 10:00:00\n11,1,paid,4000,2026-03-02 11:30:00\n12,2,refunded,999,2026-03-03 09:15:00\n13,3,paid,300,2026-03-04 12:00:00\n14,3,pending,700,2026-03-05 08:00:00\n",
    );
    d.write(
        "p/macros/money.sql",
        "{% macro to_dollars(col) %}{{ adapter.dispatch('to_dollars')(col) }}{% endmacro %}\n{% macro default__to_dollars(col) %}cast({{ col }} / 100.0 as numeric(12, 2)){% endmacro %}\n{% macro duckdb__to_dollars(col) %}cast({{ col }} / 100 as decimal(12, 2)){% endmacro %}\n",
    );
    d.write(
        "p/models/staging/stg_customers.sql",
        "select id as customer_id, name, signup, active from {{ ref('raw_customers') }}\n",
    );
    d.write(
        "p/models/staging/stg_orders.sql",
        "select id as order_id, customer_id, status, cents, placed_at\nfrom {{ ref('raw_orders') }}\n",
    );
    d.write(
        "p/models/staging/paid_orders.sql",
        "{{ config(materialized='ephemeral') }}\nselect * from {{ ref('stg_orders') }} where status = 'paid'\n",
    );
    d.write(
        "p/models/marts/customer_value.sql",
        "with totals as (\n    select customer_id, sum(cents) as cents, count(*) as n\n    from {{ ref('paid_orders') }}\n    group by customer_id\n)\nselect c.customer_id, c.name, coalesce(t.n, 0) as paid_orders,\n    {{ to_dollars('coalesce(t.cents, 0)') }} as paid,\n    coalesce(t.cents, 0) >= {{ var('vip_cents') }} as is_vip\nfrom {{ ref('stg_customers') }} c\nleft join totals t on t.customer_id = c.customer_id\n",
    );
    d.write(
        "p/models/marts/paid_summary.sql",
        "select count(*) as orders, sum(cents) as cents from {{ ref('paid_orders') }}\n",
    );
    d.write(
        "p/models/marts/orders_inc.sql",
        "{{ config(materialized='incremental', unique_key='order_id') }}\nselect order_id, status, cents, {{ 'true' if is_incremental() else 'false' }} as loaded_incrementally\nfrom {{ ref('stg_orders') }}\n{% if is_incremental() %}\nwhere order_id >= (select max(order_id) from {{ this }}) or status <> 'paid'\n{% endif %}\n",
    );
    d.write(
        "p/models/marts/schema.yml",
        "version: 2\nmodels:\n  - name: customer_value\n    description: '{{ doc(\"customer_value\") }}'\n    columns:\n      - name: customer_id\n        tests: [unique, not_null]\n      - name: customer_id\n        data_tests:\n          - relationships:\n              arguments:\n                to: ref('stg_customers')\n                field: customer_id\n  - name: orders_inc\n    columns:\n      - name: status\n        tests:\n          - accepted_values:\n              values: [paid, refunded, pending]\n",
    );
    d.write(
        "p/models/docs.md",
        "{% docs customer_value %}\nOne row per customer: paid orders and value.\n{% enddocs %}\n",
    );
    d.write(
        "p/tests/no_negative_money.sql",
        "select * from {{ ref('customer_value') }} where paid < 0\n",
    );
}

fn duck_profile(d: &Dir, threads: u32) {
    d.write(
        "p/profiles.yml",
        &format!("shop:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n      path: shop.duckdb\n      schema: main\n      threads: {threads}\n"),
    );
}

fn pg_profile(d: &Dir, pg: &Pg) {
    d.write(
        "p/profiles.yml",
        &format!(
            "shop:\n  target: dev\n  outputs:\n    dev:\n      type: postgres\n      host: 127.0.0.1\n      port: 5432\n      user: postgres\n      password: \"{{{{ env_var('FERRY_TEST_UNUSED_PASSWORD', 'trust') }}}}\"\n      dbname: test\n      schema: {}\n      threads: 2\n",
            pg.schema
        ),
    );
}

fn transform(d: &Dir, args: &[&str]) -> crate::util::Out {
    let mut all = vec!["transform"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--project-dir", "p"]);
    d.run(&all, None)
}

/// `status` of every result in run_results.json, by node name.
fn statuses(d: &Dir) -> Vec<(String, String)> {
    let r = d.json("p/target/run_results.json");
    let mut out: Vec<(String, String)> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let id = x["unique_id"].as_str().unwrap();
            let name = id.split('.').nth(2).unwrap().to_string();
            (name, x["status"].as_str().unwrap().to_string())
        })
        .collect();
    out.sort();
    out
}

fn duck(py: &std::path::PathBuf, d: &Dir, sql: &str) -> Vec<String> {
    read(
        py,
        &["duckdb", d.join("p/shop.duckdb").to_str().unwrap(), sql],
    )
}

#[test]
fn duckdb_build_seeds_models_tests_then_incremental_and_full_refresh() {
    let Some(py) = python() else { return };
    let d = Dir::new();
    write_project(&d);
    duck_profile(&d, 2);
    transform(&d, &["build"])
        .ok()
        .stderr_has("PASS=12 WARN=0 ERROR=0 SKIP=0 NO-OP=0 TOTAL=12");
    // Seeds typed as dbt types them.
    assert_eq!(
        read(
            &py,
            &[
                "duckdb-types",
                d.join("p/shop.duckdb").to_str().unwrap(),
                "main",
                "raw_customers"
            ]
        ),
        [
            "id:INTEGER",
            "name:VARCHAR",
            "signup:DATE",
            "active:BOOLEAN",
            "score:DOUBLE"
        ]
    );
    // The mart, row by row; the ephemeral model inlined, never materialized.
    assert_eq!(
        duck(&py, &d, "select customer_id, name, paid_orders, paid::varchar, is_vip from main_marts.customer_value order by 1"),
        [
            r#"[1, "Zoë", 2, "52.50", true]"#,
            r#"[2, "Łukasz", 0, "0.00", false]"#,
            r#"[3, "Ana", 1, "3.00", false]"#,
            r#"[4, "Bo", 0, "0.00", false]"#
        ]
    );
    assert_eq!(
        duck(&py, &d, "select orders, cents from main_marts.paid_summary"),
        ["[3, 5550]"]
    );
    assert_eq!(
        duck(&py, &d, "select table_schema || '.' || table_name || ' ' || table_type from information_schema.tables where table_schema like 'main%' order by 1"),
        [
            r#"["main.raw_customers BASE TABLE"]"#,
            r#"["main.raw_orders BASE TABLE"]"#,
            r#"["main.stg_customers VIEW"]"#,
            r#"["main.stg_orders VIEW"]"#,
            r#"["main_marts.customer_value BASE TABLE"]"#,
            r#"["main_marts.orders_inc BASE TABLE"]"#,
            r#"["main_marts.paid_summary BASE TABLE"]"#
        ]
    );
    // Compiled SQL as dbt writes it: the ephemeral CTE after the model's own `with`.
    let compiled = d.read("p/target/compiled/shop/models/marts/customer_value.sql");
    assert!(
        compiled.starts_with("with  __dbt__cte__paid_orders as (\n\nselect * from \"shop\".\"main\".\"stg_orders\" where status = 'paid'\n), totals as ("),
        "{compiled}"
    );
    let summary = d.read("p/target/compiled/shop/models/marts/paid_summary.sql");
    assert!(
        summary.starts_with("with __dbt__cte__paid_orders as (\n"),
        "{summary}"
    );
    assert!(summary.contains("\n) select count(*)"), "{summary}");

    // Artifacts in dbt's shapes.
    let m = d.json("p/target/manifest.json");
    assert_eq!(
        m["metadata"]["dbt_schema_version"],
        "https://schemas.getdbt.com/dbt/manifest/v12.json"
    );
    let cv = &m["nodes"]["model.shop.customer_value"];
    assert_eq!(
        cv["relation_name"],
        "\"shop\".\"main_marts\".\"customer_value\""
    );
    assert_eq!(
        cv["description"],
        "One row per customer: paid orders and value."
    );
    assert_eq!(cv["config"]["tags"], serde_json::json!(["nightly"]));
    assert_eq!(
        cv["depends_on"]["nodes"],
        serde_json::json!(["model.shop.paid_orders", "model.shop.stg_customers"])
    );
    assert!(m["nodes"]
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.starts_with(
            "test.shop.relationships_customer_value_customer_id__customer_id__ref_stg_customers_."
        )));
    assert!(m["nodes"]
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k
            .starts_with("test.shop.accepted_values_orders_inc_status__paid__refunded__pending.")));

    // A second build: the incremental model merges only what its filter selects.
    d.write(
        "p/seeds/raw_orders.csv",
        "id,customer_id,status,cents,placed_at\n10,1,paid,1250,2026-03-01 10:00:00\n11,1,paid,4000,2026-03-02 11:30:00\n12,2,paid,999,2026-03-03 09:15:00\n13,3,paid,300,2026-03-04 12:00:00\n14,3,refunded,700,2026-03-05 08:00:00\n15,4,paid,6000,2026-03-06 08:00:00\n",
    );
    transform(&d, &["build"]).ok();
    assert_eq!(
        duck(&py, &d, "select order_id, status, cents, loaded_incrementally from main_marts.orders_inc order by 1"),
        [
            r#"[10, "paid", 1250, false]"#,
            r#"[11, "paid", 4000, false]"#,
            r#"[12, "refunded", 999, false]"#,
            r#"[13, "paid", 300, false]"#,
            r#"[14, "refunded", 700, true]"#,
            r#"[15, "paid", 6000, true]"#
        ]
    );
    assert_eq!(
        duck(
            &py,
            &d,
            "select customer_id, is_vip from main_marts.customer_value where is_vip order by 1"
        ),
        ["[1, true]", "[4, true]"]
    );
    // --full-refresh rebuilds it from the whole query.
    transform(&d, &["run", "--select", "orders_inc", "--full-refresh"]).ok();
    assert_eq!(
        duck(&py, &d, "select count(*), sum(loaded_incrementally::int), sum(cents) from main_marts.orders_inc"),
        ["[6, 0, 13249]"]
    );
    assert_eq!(statuses(&d), [("orders_inc".into(), "success".into())]);
}

#[test]
fn postgres_build_gives_the_same_tables() {
    let pg = Pg::new("dbt");
    let d = Dir::new();
    write_project(&d);
    pg_profile(&d, &pg);
    transform(&d, &["build"])
        .ok()
        .stderr_has("PASS=12 WARN=0 ERROR=0 SKIP=0 NO-OP=0 TOTAL=12");
    let marts = format!("{}_marts", pg.schema);
    assert_eq!(
        pg.sql(&format!("select customer_id, name, paid_orders, paid, is_vip from \"{marts}\".customer_value order by 1")),
        ["1|Zoë|2|52.50|t", "2|Łukasz|0|0.00|f", "3|Ana|1|3.00|f", "4|Bo|0|0.00|f"]
    );
    assert_eq!(
        pg.sql(&format!("select column_name || ' ' || data_type from information_schema.columns where table_schema = '{}' and table_name = 'raw_customers' order by ordinal_position", pg.schema)),
        ["id integer", "name text", "signup date", "active boolean", "score double precision"]
    );
    // Readers of the table keep working across a rebuild (swap under a temporary name).
    transform(&d, &["run", "--select", "customer_value"]).ok();
    assert_eq!(
        pg.sql(&format!("select count(*) from \"{marts}\".customer_value")),
        ["4"]
    );
    assert!(pg.sql(&format!("select table_name from information_schema.tables where table_schema = '{marts}' and table_name like '%dbt%'")).is_empty());
    pg.sql(&format!("drop schema if exists \"{marts}\" cascade"));
}

#[test]
fn a_failing_model_skips_its_dependents_and_the_rest_goes_on() {
    let Some(_py) = python() else { return };
    let d = Dir::new();
    write_project(&d);
    duck_profile(&d, 1);
    d.write(
        "p/models/staging/stg_customers.sql",
        "select id as customer_id, name, no_such_column from {{ ref('raw_customers') }}\n",
    );
    let out = transform(&d, &["build"]).code(1);
    assert!(
        out.stderr
            .contains("Runtime Error in model stg_customers (models/staging/stg_customers.sql)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("no_such_column"), "{}", out.stderr);
    let st = statuses(&d);
    let get = |n: &str| {
        st.iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("stg_customers"), ["error"]);
    assert_eq!(get("customer_value"), ["skipped"]);
    assert_eq!(get("paid_summary"), ["success"]);
    assert_eq!(get("orders_inc"), ["success"]);
    // The compiled SQL is kept for inspection.
    assert!(d
        .read("p/target/run/shop/models/staging/stg_customers.sql")
        .contains("no_such_column"));

    // A failing error-severity test skips what depends on the tested model; warn does not.
    write_project(&d);
    d.write(
        "p/tests/always_fails.sql",
        "select 1 as x from {{ ref('stg_orders') }}\n",
    );
    let out = transform(&d, &["build"]).code(1);
    assert!(
        out.stderr.contains("FAIL 5 test always_fails"),
        "{}",
        out.stderr
    );
    let st = statuses(&d);
    assert!(st.contains(&("always_fails".into(), "fail".into())));
    // Downstream of stg_orders, through the ephemeral model too, as dbt does.
    assert!(st.contains(&("orders_inc".into(), "skipped".into())));
    assert!(st.contains(&("customer_value".into(), "skipped".into())));
    assert!(st.contains(&("stg_customers".into(), "success".into())));
    d.write(
        "p/tests/always_fails.sql",
        "{{ config(severity='warn') }}\nselect 1 as x from {{ ref('stg_orders') }}\n",
    );
    transform(&d, &["build"]).ok().stderr_has("WARN=1");
}

#[test]
fn bad_projects_exit_2_naming_the_file_line_and_model() {
    let d = Dir::new();
    write_project(&d);
    // Nothing reachable: parse must not connect.
    d.write(
        "p/profiles.yml",
        "shop:\n  target: dev\n  outputs:\n    dev: {type: postgres, host: 127.0.0.1, port: 1, user: x, dbname: x, schema: s}\n",
    );
    transform(&d, &["parse"]).ok();
    let m = d.json("p/target/manifest.json");
    assert_eq!(m["nodes"].as_object().unwrap().len(), 13);
    // Unknown ref.
    d.write("p/models/broken.sql", "select * from {{ ref('nope') }}\n");
    transform(&d, &["parse"]).code(2).stderr_has(
        "model broken (models/broken.sql): it depends on a node named 'nope' which was not found",
    );
    // Jinja syntax error: file and line.
    d.write("p/models/broken.sql", "select 1\nfrom x\nwhere {{ 1 + }}\n");
    transform(&d, &["compile"])
        .code(2)
        .stderr_has("models/broken.sql, line 3");
    // A cycle, with its path.
    d.write(
        "p/models/broken.sql",
        "select * from {{ ref('broken2') }}\n",
    );
    d.write(
        "p/models/broken2.sql",
        "select * from {{ ref('broken') }}\n",
    );
    let out = transform(&d, &["parse"])
        .code(2)
        .stderr_has("Found a cycle: model.shop.broken");
    assert!(
        out.stderr.contains(" --> model.shop.broken2 --> "),
        "{}",
        out.stderr
    );
    std::fs::remove_file(d.join("p/models/broken.sql")).unwrap();
    std::fs::remove_file(d.join("p/models/broken2.sql")).unwrap();
    // Missing profile and target.
    transform(&d, &["parse", "--target", "prod"])
        .code(2)
        .stderr_has("has no target \"prod\"; targets there: [\"dev\"]");
    std::fs::remove_file(d.join("p/profiles.yml")).unwrap();
    d.run(
        &[
            "transform",
            "parse",
            "--project-dir",
            "p",
            "--profiles-dir",
            "p",
        ],
        None,
    )
    .code(2)
    .stderr_has("no profiles.yml found");
    // Unreachable warehouse on run: exit 1, message names the server but no password.
    d.write(
        "p/profiles.yml",
        "shop:\n  target: dev\n  outputs:\n    dev: {type: postgres, host: 127.0.0.1, port: 1, user: x, password: hunter2, dbname: x, schema: s}\n",
    );
    let out = transform(&d, &["run"]).code(1);
    assert!(out.stderr.contains("127.0.0.1:1"), "{}", out.stderr);
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
}

#[test]
fn selection_grammar_picks_nodes_and_their_tests() {
    let Some(_py) = python() else { return };
    let d = Dir::new();
    write_project(&d);
    duck_profile(&d, 1);
    transform(&d, &["seed"]).ok();
    assert_eq!(
        statuses(&d),
        [
            ("raw_customers".into(), "success".into()),
            ("raw_orders".into(), "success".into())
        ]
    );
    transform(&d, &["run", "--select", "+customer_value"]).ok();
    let names = |d: &Dir| statuses(d).into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert_eq!(names(&d), ["customer_value", "stg_customers", "stg_orders"]);
    transform(
        &d,
        &["run", "--select", "stg_orders+", "--exclude", "orders_inc"],
    )
    .ok();
    assert_eq!(names(&d), ["customer_value", "paid_summary", "stg_orders"]);
    transform(
        &d,
        &["run", "-s", "tag:nightly,config.materialized:incremental"],
    )
    .ok();
    assert_eq!(names(&d), ["orders_inc"]);
    transform(&d, &["run", "--select", "path:models/staging"]).ok();
    assert_eq!(names(&d), ["stg_customers", "stg_orders"]);
    transform(&d, &["test", "--select", "customer_value"]).ok();
    assert_eq!(
        names(&d),
        [
            "no_negative_money",
            "not_null_customer_value_customer_id",
            "relationships_customer_value_customer_id__customer_id__ref_stg_customers_",
            "unique_customer_value_customer_id"
        ]
    );
    transform(&d, &["run", "--select", "tag:nope"]).ok();
    assert!(names(&d).is_empty());
}

#[test]
fn sync_then_transform_builds_the_quickstart_marts_and_docs() {
    let Some(py) = python() else { return };
    let d = Dir::new();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");
    copy_dir(
        &src,
        d.path(),
        &["warehouse.duckdb", "state", "lake", "target"],
    );
    d.run(
        &[
            "--project",
            "ferry.yml",
            "sync",
            "--all",
            "--then-transform",
        ],
        None,
    )
    .ok()
    .stderr_has("Building what depends on: source:crm.leads+ source:shop.customers+");
    let db = d.join("warehouse.duckdb");
    let db = db.to_str().unwrap();
    // The mart agrees with the raw tables it was built from.
    let expect = read(&py, &["duckdb", db, "select count(*), sum(total)::varchar from shop.orders where status not in ('cancelled', 'refunded')"]);
    let got = read(
        &py,
        &[
            "duckdb",
            db,
            "select sum(order_count), sum(lifetime_value)::varchar from analytics.dim_customers",
        ],
    );
    assert_eq!(got, expect);
    let high = read(&py, &["duckdb", db, "select count(*) from (select customer_id from shop.orders where status not in ('cancelled', 'refunded') group by 1 having sum(total) >= 1000)"]);
    assert_eq!(
        read(
            &py,
            &[
                "duckdb",
                db,
                "select count(*) from analytics.dim_customers where is_high_value"
            ]
        ),
        high
    );
    // Freshness of what ferry loads, without a loaded_at_field: the time of the last sync.
    d.run(
        &["--project", "ferry.yml", "transform", "source", "freshness"],
        None,
    )
    .ok()
    .stderr_has("PASS freshness of shop.orders");
    let fresh: serde_json::Value =
        serde_json::from_str(&d.read("transform/target/sources.json")).unwrap();
    let results = fresh["results"].as_array().unwrap();
    assert_eq!(results.len(), 4, "{fresh}");
    for r in results {
        assert_eq!(r["status"], "pass", "{r}");
        let age = r["max_loaded_at_time_ago_in_s"].as_f64().unwrap();
        assert!((0.0..600.0).contains(&age), "{r}");
    }
    // Nothing new: nothing to build.
    d.run(
        &[
            "--project",
            "ferry.yml",
            "sync",
            "--all",
            "--then-transform",
        ],
        None,
    )
    .ok()
    .stderr_has("Nothing was loaded; no models to build.");
    d.run(&["--project", "ferry.yml", "transform", "docs"], None)
        .ok();
    let html = d.read("transform/target/index.html");
    assert!(html.contains("<svg"), "no picture");
    for needle in [
        "pipeline-shop",
        "source-coffee-shop-orders",
        "model-coffee-dim-customers",
        "One row per customer of the shop",
    ] {
        assert!(html.contains(needle), "index.html lacks {needle}");
    }
    assert!(
        !html.contains("<script src"),
        "the page must not fetch anything"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path, skip: &[&str]) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if skip.contains(&name.as_str()) {
            continue;
        }
        let dest = to.join(&name);
        if e.path().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_dir(&e.path(), &dest, skip);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}
