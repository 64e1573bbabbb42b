//! Unit tests (dbt 1.8 `unit_tests:`): the tested model's SQL run on fixture rows instead of
//! its inputs, and its output compared with the expected rows, as dbt does it: each input
//! becomes a `__dbt__cte__` CTE of `select cast(… as <the input's column type>) as "col"`
//! rows, the expected rows are cast to the model's column types, and one query returns both
//! sides, compared as multisets of rows.

use serde_json::{Map, Value};

use super::adapter::{Conn, DbError};
use super::jinja::quote;
use super::materialize::Outcome;
use super::nodes::{Graph, Node};

/// A fixture's rows as column → value maps (`format: dict`, the default, or `csv`), or the
/// SQL itself (`format: sql`).
enum Rows {
    Maps(Vec<Map<String, Value>>),
    Sql(String),
}

fn rows_of(v: &Value, what: &str, fixtures: &[std::path::PathBuf]) -> Result<Rows, DbError> {
    let format = v.get("format").and_then(Value::as_str).unwrap_or("dict");
    // `fixture: name`: rows from `<test path>/fixtures/name.csv` (or `.sql`).
    let from_file;
    let rows = match v.get("fixture").and_then(Value::as_str) {
        Some(name) => {
            let ext = if format == "sql" { "sql" } else { "csv" };
            let file = fixtures
                .iter()
                .map(|d| d.join(format!("{name}.{ext}")))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    DbError(format!(
                        "{what}: no fixture file {name}.{ext} in {}",
                        fixtures
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            from_file =
                Value::from(std::fs::read_to_string(&file).map_err(|e| {
                    DbError(format!("{what}: cannot read {}: {e}", file.display()))
                })?);
            Some(&from_file)
        }
        None => v.get("rows"),
    };
    let format = if v.get("fixture").is_some() && format == "dict" {
        "csv"
    } else {
        format
    };
    match (format, rows) {
        ("sql", Some(Value::String(sql))) => Ok(Rows::Sql(sql.clone())),
        ("csv", Some(Value::String(text))) => {
            let mut rdr = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(text.as_bytes());
            let header: Vec<String> = rdr
                .headers()
                .map_err(|e| DbError(format!("{what}: bad csv rows: {e}")))?
                .iter()
                .map(str::to_string)
                .collect();
            let mut out = Vec::new();
            for rec in rdr.records() {
                let rec = rec.map_err(|e| DbError(format!("{what}: bad csv rows: {e}")))?;
                out.push(
                    header
                        .iter()
                        .zip(rec.iter())
                        .map(|(h, v)| (h.clone(), Value::from(v)))
                        .collect(),
                );
            }
            Ok(Rows::Maps(out))
        }
        ("dict", Some(Value::Array(a))) => Ok(Rows::Maps(
            a.iter()
                .map(|r| r.as_object().cloned().unwrap_or_default())
                .collect(),
        )),
        ("dict", None) => Ok(Rows::Maps(Vec::new())),
        (f, _) => Err(DbError(format!(
            "{what}: rows must match format {f} (dict: a list of mappings; csv: text; sql: a query)"
        ))),
    }
}

/// dbt's `format_row` value: strings quoted, null as null, the rest as written; cast to the
/// column's type (a string keeps no `varchar(n)` length, so nothing is cut).
fn literal(v: &Value, ty: &str) -> String {
    let ty = if v.is_string() && ty.contains("varying") {
        ty.split('(').next().unwrap_or(ty)
    } else {
        ty
    };
    let value = match v {
        Value::Null => "null".to_string(),
        Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        other => other.to_string(),
    };
    format!("cast({value} as {ty})")
}

/// `get_fixture_sql`: one `select` per row over every column of the input (missing ones
/// null), `union all`; no rows is the typed empty result.
fn fixture_sql(
    rows: &[Map<String, Value>],
    cols: &[(String, String)],
    what: &str,
) -> Result<String, DbError> {
    let lower: Vec<String> = cols.iter().map(|(c, _)| c.to_lowercase()).collect();
    let mut selects = Vec::new();
    for row in rows {
        for k in row.keys() {
            if !lower.contains(&k.to_lowercase()) {
                return Err(DbError(format!(
                    "Invalid column name: '{k}' in unit test fixture for {what}. Accepted columns are: {lower:?}"
                )));
            }
        }
        let exprs: Vec<String> = cols
            .iter()
            .map(|(c, ty)| {
                let v = row
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(c))
                    .map_or(&Value::Null, |(_, v)| v);
                format!("{} as {}", literal(v, ty), quote(c))
            })
            .collect();
        selects.push(format!("select {}", exprs.join(", ")));
    }
    if selects.is_empty() {
        let exprs: Vec<String> = cols
            .iter()
            .map(|(c, ty)| format!("{} as {}", literal(&Value::Null, ty), quote(c)))
            .collect();
        return Ok(format!("select {}\n    limit 0", exprs.join(", ")));
    }
    Ok(selects.join("\nunion all\n"))
}

/// A value for comparing actual and expected rows as dbt's agate tables do: numbers by value.
fn comparable(v: &Value) -> String {
    match v {
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |f| format!("{f}")),
        Value::String(s) => match s.parse::<f64>() {
            Ok(f) if s.trim() == s && !s.is_empty() => format!("{f}"),
            _ => format!("{s:?}"),
        },
        other => other.to_string(),
    }
}

/// Runs a unit test. `model_sql` is the tested model compiled against its real inputs;
/// `inputs` maps each given input's rendered relation to its fixture entry.
///
/// # Errors
/// A [`DbError`] for a malformed fixture, an input that does not exist yet, or the
/// warehouse's message.
pub async fn run(
    conn: &mut Conn,
    graph: &Graph,
    node: &Node,
    model_sql: &str,
    inputs: &[(String, String, Value)],
    fixtures: &[std::path::PathBuf],
) -> Result<Outcome, DbError> {
    let Some(unit) = &node.unit else {
        return Err(DbError(format!("{} is not a unit test", node.unique_id)));
    };
    let (model_id, entry) = (&unit.0, &unit.1);
    let model = graph
        .nodes
        .get(model_id)
        .ok_or_else(|| DbError(format!("unit test {}: no model {model_id}", node.name)))?;
    // Inputs as CTEs: the relation in the model's SQL is replaced by the fixture's name.
    let mut sql = model_sql.to_string();
    let mut ctes: Vec<(String, String)> = Vec::new();
    for (relation, cte, given) in inputs {
        let what = format!("'{cte}'");
        let body = match rows_of(given, &what, fixtures)? {
            Rows::Sql(s) => s,
            Rows::Maps(rows) => {
                let cols = conn.typed_columns(relation).await.map_err(|e| {
                    DbError(format!(
                        "Not able to get columns for unit test '{}' from relation {relation} ({}); build it first (`build` runs unit tests after their inputs)",
                        node.name, e.0
                    ))
                })?;
                fixture_sql(&rows, &cols, &what)?
            }
        };
        sql = sql.replace(relation.as_str(), &format!("__dbt__cte__{cte}"));
        ctes.push((cte.clone(), body));
    }
    let main = super::nodes::inject_ctes(&sql, &ctes);
    // The model's column types, from an empty table of its query.
    let tmp = quote(&format!("{}__dbt_tmp", model.name));
    conn.execute(&format!(
        "create temporary table {tmp} as (select * from (\n{main}\n) as __dbt_sbq where false limit 0)"
    ))
    .await?;
    let model_cols = conn.typed_columns(&tmp).await;
    conn.execute(&format!("drop table if exists {tmp}")).await?;
    let model_cols = model_cols?;
    let expect = entry.get("expect").cloned().unwrap_or(Value::Null);
    let expected_sql;
    let names: Vec<String> = match rows_of(&expect, "expected output", fixtures)? {
        Rows::Sql(s) => {
            expected_sql = s;
            model_cols.iter().map(|(c, _)| c.clone()).collect()
        }
        Rows::Maps(rows) => {
            let names: Vec<String> = match rows.first() {
                Some(r) => r.keys().cloned().collect(),
                None => model_cols.iter().map(|(c, _)| c.clone()).collect(),
            };
            let ty = |c: &str| {
                model_cols
                    .iter()
                    .find(|(m, _)| m.eq_ignore_ascii_case(c))
                    .map(|(_, t)| t.clone())
            };
            let mut selects = Vec::new();
            for row in &rows {
                let mut exprs = Vec::new();
                for (c, v) in row {
                    let t = ty(c).ok_or_else(|| {
                        DbError(format!(
                            "Invalid column name: '{c}' in unit test fixture for expected output. Accepted columns are: {:?}",
                            model_cols.iter().map(|(c, _)| c.to_lowercase()).collect::<Vec<_>>()
                        ))
                    })?;
                    exprs.push(format!("{} as {}", literal(v, &t), quote(c)));
                }
                selects.push(format!("select {}", exprs.join(", ")));
            }
            expected_sql = if selects.is_empty() {
                "select * from dbt_internal_unit_test_actual\n    limit 0".into()
            } else {
                selects.join("\nunion all\n")
            };
            names
        }
    };
    let cols: Vec<String> = names.iter().map(|c| quote(c)).collect();
    let q = format!(
        "-- Build actual result given inputs\nwith dbt_internal_unit_test_actual as (\n  select\n    {cols}, 'actual' as \"actual_or_expected\"\n  from (\n    {main}\n  ) _dbt_internal_unit_test_actual\n),\n-- Build expected result\ndbt_internal_unit_test_expected as (\n  select\n    {cols}, 'expected' as \"actual_or_expected\"\n  from (\n    {expected_sql}\n  ) _dbt_internal_unit_test_expected\n)\n-- Union actual and expected results\nselect * from dbt_internal_unit_test_actual\nunion all\nselect * from dbt_internal_unit_test_expected",
        cols = cols.join(", ")
    );
    let out = conn.query_table(&q).await?;
    let side = |which: &str| {
        let mut rows: Vec<Vec<String>> = out
            .rows
            .iter()
            .filter(|r| r.last().and_then(Value::as_str) == Some(which))
            .map(|r| {
                r[..r.len().saturating_sub(1)]
                    .iter()
                    .map(comparable)
                    .collect()
            })
            .collect();
        rows.sort();
        rows
    };
    let (actual, expected) = (side("actual"), side("expected"));
    let failed = actual != expected;
    let message = if failed {
        let show = |rows: &[Vec<String>]| {
            rows.iter()
                .map(|r| format!("  {}", r.join(" | ")))
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "actual differs from expected:\n columns: {}\n expected:\n{}\n actual:\n{}",
            names.join(" | "),
            show(&expected),
            show(&actual)
        )
    } else {
        String::new()
    };
    Ok(Outcome {
        message,
        rows: None,
        statements: vec![q],
        test: Some((i64::from(failed), false, failed)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fixtures_cast_every_column_and_default_to_null() {
        let cols = vec![
            ("id".to_string(), "integer".to_string()),
            ("email".to_string(), "character varying(20)".to_string()),
        ];
        let rows = vec![json!({"ID": 1}).as_object().unwrap().clone()];
        assert_eq!(
            fixture_sql(&rows, &cols, "x").unwrap(),
            "select cast(1 as integer) as \"id\", cast(null as character varying(20)) as \"email\""
        );
        let rows = vec![json!({"email": "o'k"}).as_object().unwrap().clone()];
        assert!(fixture_sql(&rows, &cols, "x")
            .unwrap()
            .contains("cast('o''k' as character varying) as \"email\""));
        assert!(fixture_sql(&[], &cols, "x").unwrap().ends_with("limit 0"));
        let bad = vec![json!({"nope": 1}).as_object().unwrap().clone()];
        assert!(fixture_sql(&bad, &cols, "x").is_err());
        assert_eq!(comparable(&json!(1)), comparable(&json!("1.0")));
    }
}
