//! `ferry transform` held to dbt itself on the fixture project `tests/transform/shop/`:
//! - always: the compiled SQL equals dbt 1.11.16's, byte for byte
//!   (`tests/transform/shop.dbt-compiled-duckdb/`, produced by dbt);
//! - with dbt-core from PyPI (./test.sh installs it): dbt and ferry build the project twice on
//!   DuckDB and on Postgres, and the run results (order and statuses) and every table's rows
//!   are the same.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::postgres::Pg;
use crate::util::Dir;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/transform/shop");
const SNAPSHOT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/transform/shop.dbt-compiled-duckdb"
);

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Every file under `root` (none when it is missing), relative, sorted.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// The same files under target/compiled/ with the same text (dbt's schema name `sa` read as
/// ferry's `sb`, for two schemas on one Postgres).
fn compiled_equal(a: &Path, b: &Path, when: &str, names: Option<(&str, &str)>) {
    let (fa, fb) = (a.join("target/compiled"), b.join("target/compiled"));
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert_eq!(files(&fb), files(&fa), "{when}: compiled files");
    for f in files(&fa) {
        let want = match names {
            Some((sa, sb)) => read(&fa.join(&f)).replace(sa, sb),
            None => read(&fa.join(&f)),
        };
        assert_eq!(read(&fb.join(&f)), want, "{when}: compiled {f}");
    }
}

/// Writes `dir/rel`, making its folders.
fn write_file(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn duck_profiles(dir: &Path) {
    std::fs::write(
        dir.join("profiles.yml"),
        "shop:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n      path: shop.duckdb\n      schema: main\n      threads: 1\n",
    )
    .unwrap();
}

fn pg_profiles(dir: &Path, schema: &str, threads: usize) {
    std::fs::write(
        dir.join("profiles.yml"),
        format!("shop:\n  target: dev\n  outputs:\n    dev:\n      type: postgres\n      host: 127.0.0.1\n      port: 5432\n      user: postgres\n      password: ''\n      dbname: test\n      schema: {schema}\n      threads: {threads}\n"),
    )
    .unwrap();
}

fn ferry(dir: &Path, args: &[&str]) -> crate::util::Out {
    let mut c = Command::new(crate::util::ferry_bin());
    c.arg("transform")
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1");
    crate::util::run(c, None)
}

#[test]
fn compiled_sql_equals_dbts_byte_for_byte() {
    let d = Dir::new();
    let p = d.join("shop");
    copy_dir(Path::new(FIXTURE), &p);
    duck_profiles(&p);
    ferry(&p, &["build"])
        .ok()
        .stderr_has("PASS=45 WARN=1 ERROR=0 SKIP=0 NO-OP=0 TOTAL=46");
    let ours = p.join("target/compiled/shop");
    let mut want = files(Path::new(SNAPSHOT));
    want.retain(|f| f != "README.md");
    assert_eq!(files(&ours), want, "the same files");
    for f in &want {
        let a = std::fs::read_to_string(Path::new(SNAPSHOT).join(f)).unwrap();
        let b = std::fs::read_to_string(ours.join(f)).unwrap();
        assert_eq!(b, a, "{f} differs from dbt's");
    }
}

/// dbt from the venv ./test.sh makes, if it is there.
fn dbt() -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH")?)
        .find(|d| d.ends_with("venv-dbt-1.11/bin"))
        .map(|d| d.join("dbt"))
        .filter(|p| p.is_file());
    if found.is_none() && std::env::var("FERRY_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("dbt (venv-dbt-1.11) is not on PATH; ./test.sh installs it");
    }
    found
}

fn run_dbt(dbt: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(dbt)
        .args(args)
        .args(["--profiles-dir", ".", "--no-use-colors"])
        .current_dir(dir)
        .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        .env("DO_NOT_TRACK", "1")
        .output()
        .expect("dbt runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "dbt {args:?} failed:\n{text}");
    text
}

/// (unique_id, status, failures) of every node that ran, sorted.
fn results(dir: &Path) -> Vec<(String, String, Option<i64>)> {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("target/run_results.json")).unwrap(),
    )
    .unwrap();
    let mut out = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["unique_id"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
                r["failures"].as_i64(),
            )
        })
        .collect::<Vec<_>>();
    // dbt's order is not deterministic even with one thread: its main thread takes a node off the
    // priority queue the moment the first of a finished node's successors is put there, before
    // the others arrive. So compare what ran and how it ended, not the order.
    out.sort();
    out
}

/// Every table and view of the two DuckDB files, each row as text, sorted.
fn duck_dump(dbt: &Path, db: &Path) -> String {
    let py = dbt.with_file_name("python");
    let script = r#"
import duckdb, sys
c = duckdb.connect(sys.argv[1], read_only=True)
rels = c.sql("select table_schema, table_name from information_schema.tables where table_schema like 'main%' order by 1, 2").fetchall()
for s, t in rels:
    rows = c.sql(f'select * from "{s}"."{t}"').fetchall()
    print(f"== {s}.{t} ({len(rows)})")
    print(c.execute("select string_agg(column_name || ' ' || data_type, ', ' order by ordinal_position) from information_schema.columns where table_schema = ? and table_name = ?", [s, t]).fetchall()[0][0])
    for r in sorted(repr(tuple(str(x) for x in row)) for row in rows):
        print(r)
"#;
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dbt_and_ferry_build_the_same_tables_on_duckdb() {
    let Some(dbt) = dbt() else { return };
    let d = Dir::new();
    let (a, b) = (d.join("dbt/shop"), d.join("ferry/shop"));
    for p in [&a, &b] {
        copy_dir(Path::new(FIXTURE), p);
        duck_profiles(p);
    }
    let rounds: [&[&str]; 3] = [&["build"], &["build"], &["build", "--full-refresh"]];
    for (round, args) in (1..).zip(rounds) {
        run_dbt(&dbt, &a, args);
        ferry(&b, args).ok();
        assert_eq!(results(&b), results(&a), "run results of build {round}");
        let (fa, fb) = (
            a.join("target/compiled/shop"),
            b.join("target/compiled/shop"),
        );
        assert_eq!(files(&fb), files(&fa));
        for f in files(&fa) {
            assert_eq!(
                std::fs::read_to_string(fb.join(&f)).unwrap(),
                std::fs::read_to_string(fa.join(&f)).unwrap(),
                "build {round}: {f}"
            );
        }
        let (da, db) = (
            duck_dump(&dbt, &a.join("shop.duckdb")),
            duck_dump(&dbt, &b.join("shop.duckdb")),
        );
        assert!(da.contains("== main_marts.customers (40)"), "{da}");
        assert!(da.contains("== main_marts.payment_fees (4)"), "{da}");
        // store_failures: the warned rows are kept where dbt keeps them.
        assert!(
            da.contains("== main_dbt_test__audit.not_null_customers_email (3)"),
            "{da}"
        );
        assert_eq!(db, da, "table contents after build {round}");
    }
    // `compile` writes every node's SQL, analyses included, as dbt's.
    run_dbt(&dbt, &a, &["compile"]);
    ferry(&b, &["compile"]).ok();
    let (fa, fb) = (
        a.join("target/compiled/shop"),
        b.join("target/compiled/shop"),
    );
    assert!(fa.join("analyses/revenue_by_status.sql").is_file());
    assert_eq!(files(&fb), files(&fa));
    for f in files(&fa) {
        assert_eq!(
            std::fs::read_to_string(fb.join(&f)).unwrap(),
            std::fs::read_to_string(fa.join(&f)).unwrap(),
            "compile: {f}"
        );
    }
}

#[test]
fn dbt_and_ferry_build_the_same_tables_on_postgres() {
    let Some(dbt) = dbt() else { return };
    let (sa, sb) = (Pg::new("dbt_ref"), Pg::new("dbt_ours"));
    let d = Dir::new();
    let (a, b) = (d.join("dbt/shop"), d.join("ferry/shop"));
    copy_dir(Path::new(FIXTURE), &a);
    copy_dir(Path::new(FIXTURE), &b);
    // Four threads: views over views are rebuilt while other models run (the backup of a
    // rebuilt view is dropped with cascade, taking the views over it along). The first build
    // runs on one: the source test does not wait for the seed that fills its table, so on an
    // empty schema dbt itself may run it first and fail.
    pg_profiles(&a, &sa.schema, 4);
    pg_profiles(&b, &sb.schema, 4);
    let rounds: [&[&str]; 3] = [
        &["build", "--threads", "1"],
        &["build"],
        &["build", "--full-refresh"],
    ];
    for (round, args) in (1..).zip(rounds) {
        run_dbt(&dbt, &a, args);
        ferry(&b, args).ok();
        assert_eq!(results(&b), results(&a), "run results of build {round}");
        let rels = sa.sql(&format!(
            "select table_schema, table_name from information_schema.tables where table_schema in ('{0}', '{0}_marts') order by 1, 2",
            sa.schema
        ));
        assert_eq!(rels.len(), 17, "{rels:?}");
        // Seeds' inferred types (and column_types overrides) and models' types as dbt's.
        let types = |schema: &str| {
            sa.sql(&format!(
                "select table_schema, table_name, column_name, data_type, character_maximum_length from information_schema.columns where table_schema in ('{schema}', '{schema}_marts') order by 1, 2, ordinal_position"
            ))
            .into_iter()
            .map(|r| r.replacen(schema, "S", 1))
            .collect::<Vec<_>>()
        };
        assert_eq!(
            types(&sb.schema),
            types(&sa.schema),
            "column types after build {round}"
        );
        for r in rels {
            let (schema, table) = r.split_once('|').unwrap();
            let other = schema.replacen(&sa.schema, &sb.schema, 1);
            for (x, y) in [(schema, other.as_str()), (other.as_str(), schema)] {
                let diff = sa.sql(&format!(
                    "select count(*) from (select * from \"{x}\".\"{table}\" except all select * from \"{y}\".\"{table}\") d"
                ));
                assert_eq!(
                    diff,
                    ["0"],
                    "build {round}: {x}.{table} has rows {y}.{table} lacks"
                );
            }
        }
    }
    for s in [&sa.schema, &sb.schema] {
        sa.sql(&format!("drop schema if exists \"{s}_marts\" cascade"));
        sa.sql(&format!(
            "drop schema if exists \"{s}_dbt_test__audit\" cascade"
        ));
    }
}

/// Only the selected target of profiles.yml is rendered, as dbt does: an unselected `prod`
/// output that reads an unset environment variable is no error for `--target dev`, and the
/// selected profile's `target:` may itself come from the environment.
#[test]
fn only_the_selected_profile_output_is_rendered_as_dbt_does() {
    let d = Dir::new();
    let (a, b) = (d.join("dbt/shop"), d.join("ferry/shop"));
    let profiles = "shop:\n  target: \"{{ env_var('FERRY_TEST_DBT_TARGET', 'dev') }}\"\n  outputs:\n    dev:\n      type: duckdb\n      path: shop.duckdb\n      schema: main\n      threads: 1\n    prod:\n      type: postgres\n      host: db.example\n      user: etl\n      password: \"{{ env_var('FERRY_TEST_UNSET_PROD_PASSWORD') }}\"\n      dbname: prod\n      schema: analytics\n      threads: 4\nother:\n  outputs:\n    x:\n      type: duckdb\n      path: \"{{ env_var('FERRY_TEST_UNSET_OTHER') }}\"\n";
    for p in [&a, &b] {
        copy_dir(Path::new(FIXTURE), p);
        std::fs::write(p.join("profiles.yml"), profiles).unwrap();
    }
    ferry(&b, &["build", "--target", "dev", "--profiles-dir", "."])
        .ok()
        .stderr_has("ERROR=0");
    ferry(&b, &["build", "--profiles-dir", "."]).ok();
    // The selected output still needs its variables, named.
    ferry(&b, &["build", "--target", "prod", "--profiles-dir", "."])
        .code(2)
        .stderr_has("FERRY_TEST_UNSET_PROD_PASSWORD");
    let Some(dbt) = dbt() else { return };
    run_dbt(&dbt, &a, &["build", "--target", "dev"]);
    assert_eq!(
        results(&b),
        results(&a),
        "the same nodes and statuses as dbt"
    );
}

/// A project whose sources are tables of known age: models stamp rows `minutes` ago (UTC), and
/// the sources over them carry thresholds, a filter, a per-table override, an opt-out and an
/// empty table.
fn freshness_project(dir: &Path) {
    let w = |rel: &str, text: &str| write_file(dir, rel, text);
    w(
        "dbt_project.yml",
        "name: fresh\nversion: '1.0.0'\nconfig-version: 2\nprofile: shop\nmodels:\n  fresh:\n    +materialized: table\n",
    );
    w(
        "macros/loaded.sql",
        r#"{% macro utc_now() -%}
{%- if target.type == 'postgres' -%}(now() at time zone 'utc'){%- else -%}cast(timezone('UTC', now()) as timestamp){%- endif -%}
{%- endmacro %}

{% macro loaded(rows) -%}
{%- for kind, minutes in rows %}
select '{{ kind }}' as kind, {{ utc_now() }} - interval '{{ minutes }} minutes' as _loaded_at, now() - interval '{{ minutes }} minutes' as loaded_tz
{% if not loop.last %}union all{% endif %}
{%- endfor %}
{%- endmacro %}
"#,
    );
    w(
        "models/fresh_rows.sql",
        "{{ loaded([('order', 10), ('order', 300)]) }}\n",
    );
    w("models/stale_rows.sql", "{{ loaded([('order', 180)]) }}\n");
    w("models/dead_rows.sql", "{{ loaded([('order', 4320)]) }}\n");
    w(
        "models/filtered_rows.sql",
        "{{ loaded([('heartbeat', 5), ('order', 180)]) }}\n",
    );
    w("models/tz_rows.sql", "{{ loaded([('order', 120)]) }}\n");
    w(
        "models/unchecked_rows.sql",
        "{{ loaded([('order', 9000)]) }}\n",
    );
    w(
        "models/empty_rows.sql",
        "select * from ({{ loaded([('order', 1)]) }}) x where 1 = 0\n",
    );
    w(
        "models/sources.yml",
        r#"version: 2
sources:
  - name: app
    schema: "{{ target.schema }}"
    loaded_at_field: _loaded_at
    freshness:
      warn_after: {count: 1, period: hour}
      error_after: {count: 1, period: day}
    tables:
      - name: fresh_rows
      - name: stale_rows
      - name: dead_rows
      - name: filtered_rows
        freshness:
          filter: "kind <> 'heartbeat'"
      - name: tz_rows
        loaded_at_field: loaded_tz
        freshness:
          warn_after: {count: 3, period: hour}
      - name: unchecked_rows
        freshness: null
      - name: empty_rows
"#,
    );
}

/// (unique_id, status, criteria, age in seconds) of sources.json, sorted.
fn freshness_results(dir: &Path) -> Vec<(String, String, String, f64)> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("target/sources.json")).unwrap())
            .unwrap();
    assert_eq!(
        v["metadata"]["dbt_schema_version"],
        "https://schemas.getdbt.com/dbt/sources/v3.json"
    );
    let mut out: Vec<_> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let max = r["max_loaded_at"].as_str().unwrap();
            assert!(max.ends_with("+00:00"), "{max}");
            (
                r["unique_id"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
                r["criteria"].to_string(),
                r["max_loaded_at_time_ago_in_s"].as_f64().unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn dbt_status(dbt: &Path, dir: &Path, args: &[&str]) -> Option<i32> {
    Command::new(dbt)
        .args(args)
        .args(["--profiles-dir", ".", "--no-use-colors"])
        .current_dir(dir)
        .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        .env("DO_NOT_TRACK", "1")
        .output()
        .expect("dbt runs")
        .status
        .code()
}

/// `source freshness` as dbt's: the same statuses, criteria and ages (within the seconds
/// between the two runs; an empty table is as old as the year 1), exit code 1.
fn freshness_matches_dbt(dbt: &Path, a: &Path, b: &Path) {
    run_dbt(dbt, a, &["build"]);
    ferry(b, &["build"]).ok();
    let code = dbt_status(dbt, a, &["source", "freshness"]);
    assert_eq!(code, Some(1), "dbt: the dead and the empty table fail");
    let out = ferry(b, &["source", "freshness"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    out.stderr_has("ERROR STALE freshness of app.dead_rows")
        .stderr_has("WARN freshness of app.stale_rows")
        .stderr_has("ERROR STALE freshness of app.empty_rows");
    let (ra, rb) = (freshness_results(a), freshness_results(b));
    let strip = |r: &[(String, String, String, f64)]| -> Vec<(String, String, String)> {
        r.iter()
            .map(|(u, s, c, _)| (u.clone(), s.clone(), c.clone()))
            .collect()
    };
    assert_eq!(strip(&rb), strip(&ra));
    let status: Vec<(&str, &str)> = rb
        .iter()
        .map(|(u, s, ..)| (u.rsplit('.').next().unwrap(), s.as_str()))
        .collect();
    assert_eq!(
        status,
        [
            ("dead_rows", "error"),
            ("empty_rows", "error"),
            ("filtered_rows", "warn"),
            ("fresh_rows", "pass"),
            ("stale_rows", "warn"),
            ("tz_rows", "pass"),
        ]
    );
    for (x, y) in ra.iter().zip(&rb) {
        assert!((x.3 - y.3).abs() < 120.0, "{x:?} vs {y:?}");
    }
    // Selection and --output as dbt's.
    ferry(
        b,
        &[
            "source",
            "freshness",
            "-s",
            "source:app.fresh_rows",
            "-o",
            "fresh.json",
        ],
    )
    .ok();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("fresh.json")).unwrap()).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert_eq!(v["results"][0]["status"], "pass");
}

#[test]
fn source_freshness_matches_dbt_on_duckdb() {
    let Some(dbt) = dbt() else { return };
    let d = Dir::new();
    let (a, b) = (d.join("dbt/fresh"), d.join("ferry/fresh"));
    for p in [&a, &b] {
        freshness_project(p);
        duck_profiles(p);
    }
    freshness_matches_dbt(&dbt, &a, &b);
}

#[test]
fn source_freshness_matches_dbt_on_postgres() {
    let Some(dbt) = dbt() else { return };
    let (sa, sb) = (Pg::new("fresh_ref"), Pg::new("fresh_ours"));
    let d = Dir::new();
    let (a, b) = (d.join("dbt/fresh"), d.join("ferry/fresh"));
    freshness_project(&a);
    freshness_project(&b);
    pg_profiles(&a, &sa.schema, 1);
    pg_profiles(&b, &sb.schema, 1);
    freshness_matches_dbt(&dbt, &a, &b);
}

/// A project with three snapshots of one seed: timestamp strategy with invalidated hard
/// deletes in its own `target_schema`; check strategy on two columns; check on all columns
/// with a two-column key.
fn snapshot_project(dir: &Path) {
    let w = |rel: &str, text: &str| write_file(dir, rel, text);
    w(
        "dbt_project.yml",
        "name: snap\nversion: '1.0.0'\nconfig-version: 2\nprofile: shop\n",
    );
    w(
        "snapshots/customers.sql",
        r#"-- Text outside the blocks is ignored.
{% snapshot customers_ts %}
{{ config(target_schema=target.schema ~ '_history', unique_key='id', strategy='timestamp', updated_at='updated_at', invalidate_hard_deletes=True) }}
select * from {{ ref('raw_customers') }}
{% endsnapshot %}

{% snapshot customers_check %}
{{ config(unique_key='id', strategy='check', check_cols=['plan', 'email']) }}
select id, plan, cast(email as varchar({{ var('email_len', 10) }})) as email from {{ ref('raw_customers') }}
{% endsnapshot %}
"#,
    );
    // dbt 1.9's YAML snapshots; deletions kept as versions of their own.
    w(
        "snapshots/deleted.yml",
        "snapshots:\n  - name: customers_deleted\n    relation: ref('raw_customers')\n    config:\n      unique_key: id\n      strategy: timestamp\n      updated_at: updated_at\n      hard_deletes: new_record\n",
    );
    w(
        "snapshots/plans.sql",
        r#"{% snapshot plans_all %}
{{ config(unique_key=['id', 'region'], strategy='check', check_cols='all', hard_deletes='invalidate') }}
select * from {{ ref('raw_customers') }}
{% endsnapshot %}
"#,
    );
}

/// The seed in each round: a change with a new updated_at, a delete and an insert; then the
/// deleted row back, a change the timestamp strategy cannot see, and a new column.
const SNAPSHOT_ROUNDS: [&str; 3] = [
    "id,region,email,plan,updated_at\n1,eu,a@x.io,free,2024-01-01 00:00:00\n2,us,b@x.io,pro,2024-01-01 00:00:00\n3,eu,c@x.io,free,2024-01-01 00:00:00\n",
    "id,region,email,plan,updated_at\n1,eu,a@x.io,pro,2024-02-01 00:00:00\n2,us,b@x.io,pro,2024-01-01 00:00:00\n4,us,d@x.io,free,2024-02-01 00:00:00\n",
    "id,region,email,plan,updated_at,seats\n1,eu,a@x.io,pro,2024-02-01 00:00:00,1\n2,us,b2.longer@x.io,pro,2024-01-01 00:00:00,5\n3,eu,c@x.io,team,2024-03-01 00:00:00,3\n4,us,d@x.io,free,2024-02-01 00:00:00,1\n",
];

/// Every snapshot table's columns (name and type) and rows, with the times a run stamps
/// (`now()`) shown as `recent`, so two runs minutes apart compare equal.
fn snapshot_dump(dbt: &Path, duckdb: Option<&Path>, schema: &str) -> String {
    let py = dbt.with_file_name("python");
    let script = r#"
import sys, datetime
kind, where, schema = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "duckdb":
    import duckdb
    c = duckdb.connect(where, read_only=True)
    q = lambda sql, args=(): c.execute(sql, list(args)).fetchall()
    cols_of = lambda s, t: q("select column_name, data_type from information_schema.columns where table_schema = ? and table_name = ? order by ordinal_position", (s, t))
else:
    import psycopg2
    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="test")
    cur = conn.cursor()
    def q(sql, args=()):
        cur.execute(sql.replace("?", "%s"), args)
        return cur.fetchall()
    cols_of = lambda s, t: q("select column_name, data_type from information_schema.columns where table_schema = ? and table_name = ? order by ordinal_position", (s, t))
now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
def norm(name, v, row):
    if isinstance(v, datetime.datetime) and name.startswith("dbt_") and abs((now - v).total_seconds()) < 86400:
        return "recent"
    if name == "dbt_scd_id" and row.get("dbt_updated_at") == "recent":
        return "recent"
    return v
for s, t in [(schema + "_history", "customers_ts"), (schema, "customers_check"), (schema, "plans_all"), (schema, "customers_deleted")]:
    cols = cols_of(s, t)
    print("==", t, cols)
    names = [c[0] for c in cols]
    rows = []
    for r in q('select * from "%s"."%s"' % (s, t)):
        d = {}
        for n, v in zip(names, r):
            if n != "dbt_scd_id":
                d[n] = norm(n, v, d)
        d["dbt_scd_id"] = norm("dbt_scd_id", r[names.index("dbt_scd_id")], d)
        rows.append(repr(sorted(d.items())))
    for r in sorted(rows):
        print(r)
"#;
    let (kind, where_) = match duckdb {
        Some(p) => ("duckdb", p.display().to_string()),
        None => ("postgres", String::new()),
    };
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .args([kind, &where_, schema])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three rounds of source changes, snapshotted by dbt and by ferry: the same tables.
fn snapshots_match_dbt(dbt: &Path, a: &Path, b: &Path, dump: impl Fn(&Path) -> String) {
    let rounds: [&[&[&str]]; 3] = [
        &[&["build"]],
        &[&["build"]],
        // A new seed column: the seed is recreated, the snapshots gain the column; a longer
        // email makes the check snapshot's varchar(10) a varchar(20) (widened in place).
        &[
            &["seed", "--full-refresh"],
            &["snapshot", "--vars", "{email_len: 20}"],
        ],
    ];
    for (round, (csv, steps)) in (1..).zip(SNAPSHOT_ROUNDS.iter().zip(rounds)) {
        for p in [a, b] {
            std::fs::create_dir_all(p.join("seeds")).unwrap();
            std::fs::write(p.join("seeds/raw_customers.csv"), csv).unwrap();
        }
        for args in steps {
            run_dbt(dbt, a, args);
            ferry(b, args).ok();
        }
        assert_eq!(results(b), results(a), "run results of round {round}");
        compiled_equal(a, b, &format!("round {round}"), None);
        let (da, db) = (dump(a), dump(b));
        assert!(da.contains("== customers_ts"), "{da}");
        assert_eq!(db, da, "snapshots after round {round}");
    }
    let last = dump(a);
    // Row 3, deleted in round 2 and back changed in round 3: closed and reopened where hard
    // deletes are invalidated (customers_ts, plans_all), one version per plan where they are
    // ignored (customers_check), and with a deletion version between (customers_deleted).
    // Row 2's email change only the check strategies saw.
    assert_eq!(last.matches("('id', 3)").count(), 2 + 2 + 2 + 3, "{last}");
    assert_eq!(
        last.matches("('dbt_is_deleted', 'True')").count(),
        1,
        "{last}"
    );
    assert_eq!(
        last.matches("('email', 'b2.longer@x.io')").count(),
        2,
        "{last}"
    );
}

#[test]
fn snapshots_match_dbt_on_duckdb() {
    let Some(dbt) = dbt() else { return };
    let d = Dir::new();
    let (a, b) = (d.join("dbt/snap"), d.join("ferry/snap"));
    for p in [&a, &b] {
        snapshot_project(p);
        duck_profiles(p);
    }
    let dbt2 = dbt.clone();
    snapshots_match_dbt(&dbt, &a, &b, move |p| {
        snapshot_dump(&dbt2, Some(&p.join("shop.duckdb")), "main")
    });
}

#[test]
fn snapshots_match_dbt_on_postgres() {
    let Some(dbt) = dbt() else { return };
    let (sa, sb) = (Pg::new("snap_ref"), Pg::new("snap_ours"));
    let d = Dir::new();
    let (a, b) = (d.join("dbt/snap"), d.join("ferry/snap"));
    snapshot_project(&a);
    snapshot_project(&b);
    pg_profiles(&a, &sa.schema, 1);
    pg_profiles(&b, &sb.schema, 1);
    let dbt2 = dbt.clone();
    let (ka, kb) = (sa.schema.clone(), sb.schema.clone());
    let (pa, pb) = (a.clone(), b.clone());
    snapshots_match_dbt(&dbt, &a, &b, move |p| {
        let schema = if p == pa {
            &ka
        } else if p == pb {
            &kb
        } else {
            unreachable!()
        };
        snapshot_dump(&dbt2, None, schema)
    });
    for s in [&sa.schema, &sb.schema] {
        sa.sql(&format!("drop schema if exists \"{s}_history\" cascade"));
    }
}

/// Hooks and introspective queries: on-run-start/on-run-end (with `schemas` and `results`),
/// project-level and in-file pre/post hooks, `run_query`, `{% call statement %}` with
/// `load_result`, and `execute`.
fn hooks_project(dir: &Path) {
    let w = |rel: &str, text: &str| write_file(dir, rel, text);
    w(
        "dbt_project.yml",
        r#"name: ops
version: '1.0.0'
config-version: 2
profile: shop
on-run-start:
  - "create table if not exists {{ target.schema }}.audit (what varchar(200), n int)"
  - "{{ log_it('start ' ~ target.type) }}"
on-run-end: "{{ log_it('end ' ~ (results | length) ~ ' ' ~ (results | map(attribute='status') | join(',')) ~ ' ' ~ (schemas | length)) }}"
models:
  ops:
    +post-hook: "{{ log_it('built ' ~ this.name) }}"
seeds:
  ops:
    +post-hook:
      - "{{ log_it('seeded ' ~ this.identifier) }}"
"#,
    );
    w(
        "macros/log_it.sql",
        "{% macro log_it(what) %}insert into {{ target.schema }}.audit select '{{ what }}', (select count(*) from {{ target.schema }}.audit){% endmacro %}\n",
    );
    w("seeds/rates.csv", "code,rate\na,0.5\nb,2\n");
    w(
        "models/counted.sql",
        r#"{{ config(materialized='table', pre_hook=["{{ log_it('pre ' ~ this.name) }}"], post_hook="{{ log_it('post ' ~ this.name) }}") }}
{% set r = run_query("select code, rate from " ~ ref('rates') ~ " order by code") %}
{% call statement('total', fetch_result=True) %}
select count(*) as n, sum(rate) as s from {{ ref('rates') }}
{% endcall %}
{% if execute %}
{% set total = load_result('total') %}
select
  '{{ r.columns[0].values() | join('|') }}' as codes,
  {{ r.rows[1]['rate'] }} as second_rate,
  {{ r | length }} as n_rows,
  {{ total['data'][0][0] }} as n,
  {{ total.table.columns[1].values()[0] }} as total_rate
{% else %}
select 1 as never
{% endif %}
"#,
    );
}

fn hooks_match_dbt(
    dbt: &Path,
    a: &Path,
    b: &Path,
    names: Option<(&str, &str)>,
    dump: impl Fn(&Path) -> String,
) {
    for round in 1..=2 {
        run_dbt(dbt, a, &["build"]);
        ferry(b, &["build"]).ok();
        assert_eq!(results(b), results(a), "run results of build {round}");
        compiled_equal(a, b, &format!("build {round}"), names);
        let (da, db) = (dump(a), dump(b));
        assert!(da.contains("built counted"), "{da}");
        assert_eq!(db, da, "audit and model after build {round}");
    }
    let hook = b.join("target/compiled/ops/dbt_project.yml/hooks/ops-on-run-start-0.sql");
    assert!(std::fs::read_to_string(&hook)
        .unwrap()
        .contains("create table if not exists"));
}

/// The audit rows in order and the model's row, through dbt's Python (DuckDB or psycopg2).
fn hooks_dump(dbt: &Path, duckdb: Option<&Path>, schema: &str) -> String {
    let py = dbt.with_file_name("python");
    let script = r#"
import sys
kind, where, schema = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "duckdb":
    import duckdb
    c = duckdb.connect(where, read_only=True)
    q = lambda sql: c.execute(sql).fetchall()
else:
    import psycopg2
    cur = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="test").cursor()
    def q(sql):
        cur.execute(sql)
        return cur.fetchall()
for r in q('select n, what from "%s".audit order by n' % schema):
    print(r)
print(q('select codes, cast(second_rate as float), n_rows, n, cast(total_rate as float) from "%s".counted' % schema))
"#;
    let (kind, where_) = match duckdb {
        Some(p) => ("duckdb", p.display().to_string()),
        None => ("postgres", String::new()),
    };
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .args([kind, &where_, schema])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn hooks_and_run_query_match_dbt_on_duckdb() {
    let Some(dbt) = dbt() else { return };
    let d = Dir::new();
    let (a, b) = (d.join("dbt/ops"), d.join("ferry/ops"));
    for p in [&a, &b] {
        hooks_project(p);
        duck_profiles(p);
    }
    let dbt2 = dbt.clone();
    hooks_match_dbt(&dbt, &a, &b, None, move |p| {
        hooks_dump(&dbt2, Some(&p.join("shop.duckdb")), "main")
    });
}

#[test]
fn hooks_and_run_query_match_dbt_on_postgres() {
    let Some(dbt) = dbt() else { return };
    let (sa, sb) = (Pg::new("ops_ref"), Pg::new("ops_ours"));
    let d = Dir::new();
    let (a, b) = (d.join("dbt/ops"), d.join("ferry/ops"));
    hooks_project(&a);
    hooks_project(&b);
    pg_profiles(&a, &sa.schema, 1);
    pg_profiles(&b, &sb.schema, 1);
    let dbt2 = dbt.clone();
    let (ka, kb) = (sa.schema.clone(), sb.schema.clone());
    let (pa, pb) = (a.clone(), b.clone());
    let names = (sa.schema.clone(), sb.schema.clone());
    hooks_match_dbt(&dbt, &a, &b, Some((&names.0, &names.1)), move |p| {
        let schema = if p == pa {
            &ka
        } else if p == pb {
            &kb
        } else {
            unreachable!()
        };
        hooks_dump(&dbt2, None, schema)
    });
}

/// Packages: a local one (macros, a dispatched macro the root overrides through `dispatch`,
/// a model, a seed, a generic test the root uses as `util.at_least`) and one from a git
/// repository (a tag, a subdirectory), installed by `deps` into dbt_packages/ and used by the
/// root project's model.
fn packages_setup(d: &Path, profile: impl Fn(&Path, usize)) -> (PathBuf, PathBuf) {
    let w = |rel: &str, text: &str| write_file(d, rel, text);
    w(
        "util_pkg/dbt_project.yml",
        "name: util\nversion: '1.0.0'\nconfig-version: 2\nmodels:\n  util:\n    +materialized: table\n",
    );
    w(
        "util_pkg/macros/m.sql",
        r#"{% macro double(x) %}({{ x }}) * 2{% endmacro %}
{% macro twice(x) %}{{ double(x) }}{% endmacro %}
{% macro greet(n) %}{{ return(adapter.dispatch('greet', 'util')(n)) }}{% endmacro %}
{% macro default__greet(n) %}'hello ' || {{ n }}{% endmacro %}
"#,
    );
    w(
        "util_pkg/models/util_answer.sql",
        "select {{ twice(21) }} as answer, (select count(*) from {{ ref('util_codes') }}) as codes\n",
    );
    w("util_pkg/seeds/util_codes.csv", "code\nx\ny\n");
    w(
        "util_pkg/tests/generic/at_least.sql",
        "{% test at_least(model, column_name, value) %}\nselect * from {{ model }} where {{ column_name }} < {{ value }}\n{% endtest %}\n",
    );
    w(
        "gitsrc/sub/dbt_project.yml",
        "name: gitpkg\nversion: '1.0.0'\nconfig-version: 2\n",
    );
    w(
        "gitsrc/sub/macros/s.sql",
        "{% macro shout(x) %}upper({{ x }}){% endmacro %}\n",
    );
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .args(args)
            .current_dir(d.join("gitsrc"))
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "v1"]);
    git(&["tag", "v1"]);
    let project = |p: &Path| {
        std::fs::create_dir_all(p.join("models")).unwrap();
        std::fs::create_dir_all(p.join("macros")).unwrap();
        std::fs::write(
            p.join("dbt_project.yml"),
            "name: proj\nversion: '1.0.0'\nconfig-version: 2\nprofile: shop\ndispatch:\n  - macro_namespace: util\n    search_order: ['proj', 'util']\nmodels:\n  util:\n    +materialized: view\n",
        )
        .unwrap();
        std::fs::write(
            p.join("packages.yml"),
            format!(
                "packages:\n  - local: ../../util_pkg\n  - git: \"file://{}\"\n    revision: v1\n    subdirectory: sub\n",
                d.join("gitsrc").display()
            ),
        )
        .unwrap();
        std::fs::write(
            p.join("models/schema.yml"),
            "version: 2\nmodels:\n  - name: uses\n    columns:\n      - name: d\n        data_tests:\n          - util.at_least:\n              arguments:\n                value: 5\n          - not_null\n",
        )
        .unwrap();
        std::fs::write(
            p.join("macros/over.sql"),
            "{% macro default__greet(n) %}'hi ' || {{ n }}{% endmacro %}\n",
        )
        .unwrap();
        std::fs::write(
            p.join("models/uses.sql"),
            "select {{ util.double(5) }} as d, {{ util.greet(\"'bob'\") }} as g, {{ gitpkg.shout(\"'x'\") }} as s, a.answer, a.codes\nfrom {{ ref('util', 'util_answer') }} as a\n",
        )
        .unwrap();
    };
    let (a, b) = (d.join("dbt/proj"), d.join("ferry/proj"));
    project(&a);
    project(&b);
    profile(&a, 0);
    profile(&b, 1);
    (a, b)
}

/// deps and build by both tools: the same lock, installed files, run results and compiled
/// SQL (`names`: dbt's schema read as ferry's).
fn packages_match_dbt(dbt: &Path, a: &Path, b: &Path, names: Option<(&str, &str)>) {
    run_dbt(dbt, a, &["deps"]);
    ferry(b, &["deps"]).ok();
    let lock = |p: &Path| std::fs::read_to_string(p.join("package-lock.yml")).unwrap();
    assert_eq!(lock(b), lock(a), "package-lock.yml");
    assert_eq!(
        files(&b.join("dbt_packages")),
        files(&a.join("dbt_packages"))
    );
    run_dbt(dbt, a, &["build"]);
    ferry(b, &["build"]).ok();
    assert_eq!(results(b), results(a));
    compiled_equal(a, b, "build", names);
}

#[test]
fn packages_install_and_build_as_dbt_on_postgres() {
    let Some(dbt) = dbt() else { return };
    let (sa, sb) = (Pg::new("pkg_ref"), Pg::new("pkg_ours"));
    let d = Dir::new();
    let schemas = [sa.schema.clone(), sb.schema.clone()];
    let (a, b) = packages_setup(d.path(), |p, i| pg_profiles(p, &schemas[i], 1));
    packages_match_dbt(&dbt, &a, &b, Some((&sa.schema, &sb.schema)));
    let row = |s: &str| sa.sql(&format!("select d, g, s, answer, codes from \"{s}\".uses"));
    assert_eq!(row(&sa.schema), ["10|hi bob|X|42|2"]);
    assert_eq!(row(&sb.schema), row(&sa.schema));
}

#[test]
fn packages_install_and_build_as_dbt_on_duckdb() {
    let Some(dbt) = dbt() else { return };
    let d = Dir::new();
    let (a, b) = packages_setup(d.path(), |p, _| duck_profiles(p));
    packages_match_dbt(&dbt, &a, &b, None);
    let (da, db) = (
        duck_dump(&dbt, &a.join("shop.duckdb")),
        duck_dump(&dbt, &b.join("shop.duckdb")),
    );
    assert!(da.contains("('10', 'hi bob', 'X', '42', '2')"), "{da}");
    assert_eq!(db, da);
}

/// A package hub on loopback (dbt's API: index.json, <org>/<name>.json with versions and
/// tarball links), served by Python's http.server; returns its URL and the server process.
fn fake_hub(d: &Path) -> (String, std::process::Child) {
    let root = d.join("hub");
    let script = r#"
import http.server, io, json, os, sys, tarfile, socketserver
root = sys.argv[1]
os.makedirs(root + "/api/v1/acme", exist_ok=True)
os.makedirs(root + "/tarballs", exist_ok=True)
httpd = socketserver.TCPServer(("127.0.0.1", 0), lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=root, **k))
url = "http://127.0.0.1:%d/" % httpd.server_address[1]
def tarball(name, version, files):
    path = "%s/tarballs/%s-%s.tar.gz" % (root, name, version)
    with tarfile.open(path, "w:gz") as t:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo("%s-%s/%s" % (name, version, rel))
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return url + "tarballs/%s-%s.tar.gz" % (name, version)
def project(name):
    return "name: %s\nversion: '1.0.0'\nconfig-version: 2\n" % name
versions = {}
for v, req in [("0.1.0", [">=1.0.0"]), ("0.2.0", [">=1.0.0", "<2.0.0"]), ("0.3.0-rc1", [">=1.0.0"]), ("9.0.0", [">=2.0.0"])]:
    versions[v] = {"name": "greetings", "packages": [{"package": "acme/base", "version": [">=1.0.0"]}],
                   "require_dbt_version": req,
                   "downloads": {"tarball": tarball("greetings", v, {
                       "dbt_project.yml": project("greetings"),
                       "macros/hello.sql": "{% macro hello(x) %}'hello ' || {{ base.bang(x) }}{% endmacro %}\n"})}}
json.dump({"name": "greetings", "namespace": "acme", "latest": "0.2.0", "versions": versions}, open(root + "/api/v1/acme/greetings.json", "w"))
base = {}
for v in ["1.0.0", "1.1.0"]:
    base[v] = {"name": "base", "packages": [], "downloads": {"tarball": tarball("base", v, {
        "dbt_project.yml": project("base"),
        "macros/bang.sql": "{% macro bang(x) %}{{ x }} || '!'{% endmacro %}\n"})}}
json.dump({"name": "base", "namespace": "acme", "latest": "1.1.0", "versions": base}, open(root + "/api/v1/acme/base.json", "w"))
json.dump(["acme/base", "acme/greetings"], open(root + "/api/v1/index.json", "w"))
print(url, flush=True)
httpd.serve_forever()
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("http://"), "{line}");
    (line.trim().to_string(), child)
}

/// Hub packages: the newest version meeting the range and this dbt version (not a
/// prerelease), and the package it depends on, installed and locked as dbt does.
#[test]
fn hub_packages_resolve_and_install_as_dbt() {
    let Some(dbt) = dbt() else { return };
    let d = Dir::new();
    let (url, mut hub) = fake_hub(d.path());
    let (a, b) = (d.join("dbt/proj"), d.join("ferry/proj"));
    for p in [&a, &b] {
        std::fs::create_dir_all(p.join("models")).unwrap();
        std::fs::write(
            p.join("dbt_project.yml"),
            "name: proj\nversion: '1.0.0'\nconfig-version: 2\nprofile: shop\n",
        )
        .unwrap();
        std::fs::write(
            p.join("packages.yml"),
            "packages:\n  - package: acme/greetings\n    version: [\">=0.1.0\", \"<10.0.0\"]\n",
        )
        .unwrap();
        std::fs::write(
            p.join("models/hi.sql"),
            "select {{ greetings.hello(\"'bob'\") }} as greeting\n",
        )
        .unwrap();
        duck_profiles(p);
    }
    let out = Command::new(&dbt)
        .args(["deps", "--profiles-dir", "."])
        .current_dir(&a)
        .env("DBT_PACKAGE_HUB_URL", &url)
        .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut c = Command::new(crate::util::ferry_bin());
    c.args(["transform", "deps"])
        .current_dir(&b)
        .env("DBT_PACKAGE_HUB_URL", &url);
    crate::util::run(c, None).ok();
    let lock = |p: &Path| std::fs::read_to_string(p.join("package-lock.yml")).unwrap();
    assert!(lock(&a).contains("version: 0.2.0"), "{}", lock(&a));
    assert_eq!(lock(&b), lock(&a), "package-lock.yml");
    assert_eq!(
        files(&b.join("dbt_packages")),
        files(&a.join("dbt_packages"))
    );
    run_dbt(&dbt, &a, &["build"]);
    ferry(&b, &["build"]).ok();
    let (da, db) = (
        duck_dump(&dbt, &a.join("shop.duckdb")),
        duck_dump(&dbt, &b.join("shop.duckdb")),
    );
    assert!(da.contains("hello bob!"), "{da}");
    assert_eq!(db, da);
    hub.kill().ok();
    hub.wait().ok();
    // Unreachable hub: a clear error, exit 2.
    let mut c = Command::new(crate::util::ferry_bin());
    c.args(["transform", "deps"])
        .current_dir(&b)
        .env("DBT_PACKAGE_HUB_URL", &url);
    let out = crate::util::run(c, None);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("cannot be reached"), "{}", out.stderr);
}

/// Unit tests (dbt 1.8): dict, csv and source fixtures, expected rows in dict and csv form, and
/// one wrong on purpose (its model is then skipped by `build`).
fn unit_project(dir: &Path) {
    let w = |rel: &str, text: &str| write_file(dir, rel, text);
    w(
        "dbt_project.yml",
        "name: unit\nversion: '1.0.0'\nconfig-version: 2\nprofile: shop\n",
    );
    w(
        "seeds/raw_orders.csv",
        "id,customer,amount,status\n1,ann,10.5,paid\n2,ann,5,cancelled\n3,bob,7,refunded\n",
    );
    w(
        "models/sources.yml",
        "version: 2\nsources:\n  - name: app\n    schema: \"{{ target.schema }}\"\n    tables:\n      - name: raw_orders\n",
    );
    w(
        "models/stg_orders.sql",
        "-- depends_on: {{ ref('raw_orders') }}\nselect id, customer, amount, status from {{ source('app', 'raw_orders') }}\n",
    );
    w(
        "models/customer_totals.sql",
        "select customer, sum(amount) as total, count(*) as orders, bool_or(status = 'refunded') as any_refund\nfrom {{ ref('stg_orders') }}\nwhere status <> 'cancelled'\ngroup by customer\n",
    );
    w(
        "models/flagged.sql",
        "select customer, total > {{ var('big', 100) }} as big, '{{ env_var('FERRY_TEST_REGION', 'eu') }}' as region\nfrom {{ ref('customer_totals') }}\n",
    );
    w(
        "tests/fixtures/totals_fixture.csv",
        "customer,total,orders\nann,10.5,1\nbob,2,1\n",
    );
    w(
        "models/refunds.sql",
        "select customer, count(*) as refunds from {{ ref('stg_orders') }} where status = 'refunded' group by customer\n",
    );
    w(
        "models/unit.yml",
        r#"unit_tests:
  - name: totals_skip_cancelled
    model: customer_totals
    given:
      - input: ref('stg_orders')
        rows:
          - {id: 1, customer: ann, amount: 10.5, status: paid}
          - {id: 2, customer: ann, amount: 5, status: cancelled}
          - {id: 3, customer: bob, amount: 7, status: refunded}
    expect:
      rows:
        - {customer: ann, total: 10.5, orders: 1, any_refund: false}
        - {customer: bob, total: 7, orders: 1, any_refund: true}
  - name: totals_from_csv
    model: customer_totals
    given:
      - input: ref('stg_orders')
        format: csv
        rows: |
          id,customer,amount,status
          1,cy,2,paid
          2,cy,3,paid
    expect:
      format: csv
      rows: |
        customer,total,orders
        cy,5,2
  - name: stg_from_source
    model: stg_orders
    given:
      - input: source('app', 'raw_orders')
        rows:
          - {id: 9, customer: dee, amount: 1, status: paid}
    expect:
      rows:
        - {id: 9, customer: dee}
  - name: flags_with_overrides
    model: flagged
    overrides:
      vars: {big: 5}
      env_vars: {FERRY_TEST_REGION: us}
    given:
      - input: ref('customer_totals')
        format: csv
        fixture: totals_fixture
    expect:
      rows:
        - {customer: ann, big: true, region: us}
        - {customer: bob, big: false, region: us}
  # The only unit test of its model: dbt skips a failing model's other unit tests in an order
  # of its own, so one test per model keeps the comparison exact.
  - name: wrong_on_purpose
    model: refunds
    given:
      - input: ref('stg_orders')
        rows:
          - {id: 1, customer: ann, amount: 10, status: refunded}
    expect:
      rows:
        - {customer: ann, refunds: 2}
"#,
    );
}

fn unit_tests_match_dbt(dbt: &Path, a: &Path, b: &Path) {
    assert_eq!(
        dbt_status(dbt, a, &["build"]),
        Some(1),
        "dbt: one unit test fails"
    );
    let out = ferry(b, &["build"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let ra = results(a);
    assert!(
        ra.iter()
            .any(|(id, st, _)| id == "unit_test.unit.refunds.wrong_on_purpose" && st == "fail"),
        "{ra:?}"
    );
    assert!(
        ra.iter()
            .any(|(id, st, _)| id == "model.unit.refunds" && st == "skipped"),
        "{ra:?}"
    );
    for passing in [
        "unit_test.unit.customer_totals.totals_skip_cancelled",
        "unit_test.unit.customer_totals.totals_from_csv",
        "unit_test.unit.stg_orders.stg_from_source",
        "unit_test.unit.flagged.flags_with_overrides",
    ] {
        assert!(
            ra.iter().any(|(id, st, _)| id == passing && st == "pass"),
            "{passing}: {ra:?}"
        );
    }
    assert_eq!(results(b), ra);
    // The manifest keeps unit tests apart from the nodes, as dbt's does.
    let manifest = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("target/manifest.json")).unwrap())
            .unwrap()
    };
    let (ma, mb) = (manifest(a), manifest(b));
    let keys = |m: &serde_json::Value, k: &str| -> Vec<String> {
        let mut v: Vec<String> = m[k].as_object().unwrap().keys().cloned().collect();
        v.sort();
        v
    };
    assert_eq!(keys(&mb, "unit_tests"), keys(&ma, "unit_tests"));
    assert_eq!(keys(&mb, "nodes"), keys(&ma, "nodes"));
    assert_eq!(
        mb["unit_tests"]["unit_test.unit.flagged.flags_with_overrides"]["model"],
        ma["unit_tests"]["unit_test.unit.flagged.flags_with_overrides"]["model"]
    );
    assert!(
        out.stderr.contains("actual differs from expected"),
        "{}",
        out.stderr
    );
}

#[test]
fn unit_tests_match_dbt_on_duckdb() {
    let Some(dbt) = dbt() else { return };
    let d = Dir::new();
    let (a, b) = (d.join("dbt/unit"), d.join("ferry/unit"));
    for p in [&a, &b] {
        unit_project(p);
        duck_profiles(p);
    }
    unit_tests_match_dbt(&dbt, &a, &b);
}

#[test]
fn unit_tests_match_dbt_on_postgres() {
    let Some(dbt) = dbt() else { return };
    let (sa, sb) = (Pg::new("unit_ref"), Pg::new("unit_ours"));
    let d = Dir::new();
    let (a, b) = (d.join("dbt/unit"), d.join("ferry/unit"));
    unit_project(&a);
    unit_project(&b);
    pg_profiles(&a, &sa.schema, 1);
    pg_profiles(&b, &sb.schema, 1);
    unit_tests_match_dbt(&dbt, &a, &b);
}
