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

/// Every file under `root`, relative, sorted.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
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

fn duck_profiles(dir: &Path) {
    std::fs::write(
        dir.join("profiles.yml"),
        "shop:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n      path: shop.duckdb\n      schema: main\n      threads: 1\n",
    )
    .unwrap();
}

fn pg_profiles(dir: &Path, schema: &str) {
    std::fs::write(
        dir.join("profiles.yml"),
        format!("shop:\n  target: dev\n  outputs:\n    dev:\n      type: postgres\n      host: 127.0.0.1\n      port: 5432\n      user: postgres\n      password: ''\n      dbname: test\n      schema: {schema}\n      threads: 1\n"),
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
        .stderr_has("PASS=41 WARN=1 ERROR=0 SKIP=0 NO-OP=0 TOTAL=42");
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
    for round in 1..=2 {
        run_dbt(&dbt, &a, &["build"]);
        ferry(&b, &["build"]).ok();
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
        assert_eq!(db, da, "table contents after build {round}");
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
    pg_profiles(&a, &sa.schema);
    pg_profiles(&b, &sb.schema);
    for round in 1..=2 {
        run_dbt(&dbt, &a, &["build"]);
        ferry(&b, &["build"]).ok();
        assert_eq!(results(&b), results(&a), "run results of build {round}");
        let rels = sa.sql(&format!(
            "select table_schema, table_name from information_schema.tables where table_schema in ('{0}', '{0}_marts') order by 1, 2",
            sa.schema
        ));
        assert_eq!(rels.len(), 13, "{rels:?}");
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
