//! Snapshots: a slowly changing dimension kept the way dbt keeps it. Each row of the snapshot
//! query gets `dbt_scd_id`, `dbt_updated_at`, `dbt_valid_from` and `dbt_valid_to`; a changed
//! row closes its current version and adds a new one (timestamp or check strategy), rows gone
//! from the source are closed when hard deletes are invalidated. The SQL is dbt's
//! (`snapshot_staging_table`, the adapters' `snapshot_merge_sql`), so the same source gives the
//! same table.

use serde_json::Value;

use super::adapter::{Conn, DbError};
use super::jinja::quote;
use super::materialize::{cached, create_table, Cache, Outcome, Tx};
use super::nodes::Node;
use super::project::AdapterKind;

/// The snapshot's columns (renamed by `snapshot_table_column_names`).
struct Names {
    valid_to: String,
    valid_from: String,
    scd_id: String,
    updated_at: String,
    is_deleted: String,
}

impl Names {
    fn of(node: &Node) -> Names {
        let o = node
            .config
            .get("snapshot_table_column_names")
            .and_then(Value::as_object);
        let get = |k: &str| {
            o.and_then(|o| o.get(k))
                .and_then(Value::as_str)
                .unwrap_or(k)
                .to_string()
        };
        Names {
            valid_to: get("dbt_valid_to"),
            valid_from: get("dbt_valid_from"),
            scd_id: get("dbt_scd_id"),
            updated_at: get("dbt_updated_at"),
            is_deleted: get("dbt_is_deleted"),
        }
    }
}

/// `unique_key`: one expression or several.
enum Key {
    One(String),
    Many(Vec<String>),
}

impl Key {
    fn of(node: &Node) -> Result<Key, DbError> {
        match node.config.get("unique_key") {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Key::One(s.clone())),
            Some(Value::Array(a)) if !a.is_empty() => Ok(Key::Many(
                a.iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        DbError("unique_key must be a column or a list of columns".into())
                    })?,
            )),
            _ => Err(DbError(format!(
                "snapshot {} has no unique_key; set config(unique_key='id') (or a list of columns)",
                node.name
            ))),
        }
    }

    fn list(&self) -> Vec<&str> {
        match self {
            Key::One(k) => vec![k.as_str()],
            Key::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }

    /// `unique_key_fields`.
    fn fields(&self) -> String {
        match self {
            Key::One(k) => format!("{k} as dbt_unique_key"),
            Key::Many(v) => v
                .iter()
                .enumerate()
                .map(|(i, k)| format!("{k} as dbt_unique_key_{}", i + 1))
                .collect::<Vec<_>>()
                .join(" , "),
        }
    }

    /// `unique_key_join_on`.
    fn join_on(&self, a: &str, b: &str) -> String {
        match self {
            Key::One(_) => format!("{a}.dbt_unique_key = {b}.dbt_unique_key"),
            Key::Many(v) => (1..=v.len())
                .map(|i| format!("{a}.dbt_unique_key_{i} = {b}.dbt_unique_key_{i}"))
                .collect::<Vec<_>>()
                .join(" and "),
        }
    }

    fn first(&self) -> &'static str {
        match self {
            Key::One(_) => "dbt_unique_key",
            Key::Many(_) => "dbt_unique_key_1",
        }
    }
}

/// What happens to rows gone from the snapshot query (`hard_deletes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HardDeletes {
    /// Left open.
    Ignore,
    /// Their current version is closed.
    Invalidate,
    /// Closed, and a new version marks them deleted (`dbt_is_deleted = 'True'`).
    NewRecord,
}

/// What the strategy macro returns.
struct Strategy {
    key: Key,
    updated_at: String,
    row_changed: String,
    scd_id: String,
    hard_deletes: HardDeletes,
}

/// dbt's `Column.string_size` for a Postgres string type: its length, or 256 when it has none
/// (`text`); `None` for other types.
fn string_size(ty: &str) -> Option<u64> {
    let t = ty.trim().to_ascii_lowercase();
    let (base, size) = match t.split_once('(') {
        Some((b, rest)) => (
            b.trim().to_string(),
            rest.trim_end_matches(')').trim().parse().ok(),
        ),
        None => (t.clone(), None),
    };
    matches!(
        base.as_str(),
        "text" | "character varying" | "varchar" | "character" | "char"
    )
    .then(|| size.unwrap_or(256))
}

/// `snapshot_get_time()`.
fn now(adapter: AdapterKind) -> &'static str {
    match adapter {
        AdapterKind::Postgres => "now()::timestamp without time zone",
        AdapterKind::DuckDb => "now()::timestamp",
    }
}

/// `default__snapshot_hash_arguments`.
fn hash(args: &[&str]) -> String {
    let parts: Vec<String> = args
        .iter()
        .map(|a| format!("coalesce(cast({a} as varchar ), '')"))
        .collect();
    format!("md5({})", parts.join(" || '|' || "))
}

/// dbt's `get_hard_deletes_behavior`.
fn hard_deletes(node: &Node) -> Result<HardDeletes, DbError> {
    let legacy = node
        .config
        .get("invalidate_hard_deletes")
        .filter(|v| !v.is_null());
    let mode = node.config.get("hard_deletes").and_then(Value::as_str);
    if legacy.is_some() && mode.is_some() {
        return Err(DbError(
            "You cannot set both the invalidate_hard_deletes and hard_deletes config properties on the same snapshot.".into(),
        ));
    }
    if legacy.and_then(Value::as_bool) == Some(true) {
        return Ok(HardDeletes::Invalidate);
    }
    match mode {
        None | Some("ignore") => Ok(HardDeletes::Ignore),
        Some("invalidate") => Ok(HardDeletes::Invalidate),
        Some("new_record") => Ok(HardDeletes::NewRecord),
        Some(other) => Err(DbError(format!(
            "Invalid setting for property hard_deletes: {other:?} (ignore, invalidate or new_record)"
        ))),
    }
}

async fn strategy(
    conn: &mut Conn,
    adapter: AdapterKind,
    node: &Node,
    sql: &str,
    names: &Names,
    target: Option<&[(String, String)]>,
) -> Result<Strategy, DbError> {
    let key = Key::of(node)?;
    let hard_deletes = hard_deletes(node)?;
    let configured_updated_at = node
        .config
        .get("updated_at")
        .and_then(Value::as_str)
        .map(str::to_string);
    match node.config.get("strategy").and_then(Value::as_str) {
        Some("timestamp") => {
            let updated_at = configured_updated_at.ok_or_else(|| {
                DbError(format!(
                    "snapshot {}: the timestamp strategy needs updated_at (the column that changes with the row)",
                    node.name
                ))
            })?;
            let mut args = key.list();
            args.push(&updated_at);
            let scd_id = hash(&args);
            Ok(Strategy {
                row_changed: format!(
                    "(snapshotted_data.{} < source_data.{updated_at})",
                    names.valid_from
                ),
                scd_id,
                key,
                updated_at,
                hard_deletes,
            })
        }
        Some("check") => {
            let updated_at = configured_updated_at.unwrap_or_else(|| now(adapter).to_string());
            let mut row_changed = String::from("TRUE");
            if let Some(existing) = target {
                let query_columns = match node.config.get("check_cols") {
                    Some(Value::String(s)) if s == "all" => conn.query_columns(sql).await?,
                    Some(Value::Array(cols)) if !cols.is_empty() => {
                        let list: Vec<&str> = cols.iter().filter_map(Value::as_str).collect();
                        conn.query_columns(&format!(
                            "select {} from (\n{sql}\n) subq",
                            list.join(", ")
                        ))
                        .await?
                    }
                    other => {
                        return Err(DbError(format!(
                            "Invalid value for 'check_cols': {}",
                            other.map_or_else(|| "none".to_string(), Value::to_string)
                        )))
                    }
                };
                let mut added = false;
                let mut cols = Vec::new();
                for c in query_columns {
                    if existing.iter().any(|(e, _)| *e == c) {
                        cols.push(quote(&c));
                    } else {
                        added = true;
                    }
                }
                if !added {
                    row_changed = cols
                        .iter()
                        .map(|c| {
                            format!(
                                "snapshotted_data.{c} != source_data.{c}\n        or\n        (\n            ((snapshotted_data.{c} is null) and not (source_data.{c} is null))\n            or\n            ((not snapshotted_data.{c} is null) and (source_data.{c} is null))\n        )"
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" or ");
                }
            } else if !matches!(node.config.get("check_cols"), Some(Value::String(s)) if s == "all")
                && !matches!(node.config.get("check_cols"), Some(Value::Array(a)) if !a.is_empty())
            {
                return Err(DbError(format!(
                    "snapshot {}: the check strategy needs check_cols ('all' or a list of columns)",
                    node.name
                )));
            }
            let mut args = key.list();
            args.push(&updated_at);
            let scd_id = hash(&args);
            Ok(Strategy {
                row_changed: format!("({row_changed})"),
                scd_id,
                key,
                updated_at,
                hard_deletes,
            })
        }
        other => Err(DbError(format!(
            "snapshot {}: strategy {} is not one of timestamp, check",
            node.name,
            other.map_or_else(|| "(none)".to_string(), |s| format!("{s:?}"))
        ))),
    }
}

/// `get_dbt_valid_to_current`.
fn valid_to_current(node: &Node, s: &Strategy, names: &Names) -> String {
    let current = node
        .config
        .get("dbt_valid_to_current")
        .and_then(Value::as_str)
        .unwrap_or("null");
    format!(
        "coalesce(nullif({u}, {u}), {current})\n  as {}",
        names.valid_to,
        u = s.updated_at
    )
}

/// `default__snapshot_staging_table`. `target_cols` (the snapshot table's columns) and
/// `query_cols` (the query's) are needed for `hard_deletes: new_record` only.
#[allow(clippy::too_many_arguments)]
fn staging_sql(
    node: &Node,
    adapter: AdapterKind,
    s: &Strategy,
    names: &Names,
    sql: &str,
    target: &str,
    target_cols: &[String],
    query_cols: &[String],
) -> String {
    let current_expr = node
        .config
        .get("dbt_valid_to_current")
        .and_then(Value::as_str);
    let current_filter = match current_expr {
        Some(c) => format!("( {v} = {c} or {v} is null )", v = names.valid_to),
        None => format!("{} is null", names.valid_to),
    };
    let fields = s.key.fields();
    let u = &s.updated_at;
    let t = now(adapter);
    let deletes = s.hard_deletes != HardDeletes::Ignore;
    let new_record = s.hard_deletes == HardDeletes::NewRecord;
    let del = &names.is_deleted;
    let mut out = format!(
        "with snapshot_query as (\n\n        {sql}\n\n    ),\n\n    snapshotted_data as (\n\n        select *, {fields}\n        from {target}\n        where\n                {current_filter}\n\n    ),\n\n    insertions_source_data as (\n\n        select *, {fields},\n            {u} as {upd},\n            {u} as {vf},\n            {vtc},\n            {scd} as {scd_col}\n\n        from snapshot_query\n    ),\n\n    updates_source_data as (\n\n        select *, {fields},\n            {u} as {upd},\n            {u} as {vf},\n            {u} as {vt}\n\n        from snapshot_query\n    ),",
        upd = names.updated_at,
        vf = names.valid_from,
        vt = names.valid_to,
        vtc = valid_to_current(node, s, names),
        scd = s.scd_id,
        scd_col = names.scd_id,
    );
    if deletes {
        out.push_str(&format!(
            "\n\n    deletes_source_data as (\n\n        select *, {fields}\n        from snapshot_query\n    ),"
        ));
    }
    let join = s.key.join_on("snapshotted_data", "source_data");
    let k = s.key.first();
    let (ins_del, upd_del, was_deleted) = if new_record {
        (
            format!(",'False' as {del}"),
            format!(", snapshotted_data.{del}"),
            format!(" or snapshotted_data.{del} = 'True'"),
        )
    } else {
        (String::new(), String::new(), String::new())
    };
    out.push_str(&format!(
        "\n\n    insertions as (\n\n        select\n            'insert' as dbt_change_type,\n            source_data.*{ins_del}\n\n        from insertions_source_data as source_data\n        left outer join snapshotted_data\n            on {join}\n            where snapshotted_data.{k} is null\n            or (snapshotted_data.{k} is not null and (\n               {rc}{was_deleted}\n            )\n\n        )\n\n    ),\n\n    updates as (\n\n        select\n            'update' as dbt_change_type,\n            source_data.*,\n            snapshotted_data.{scd_col}{upd_del}\n\n        from updates_source_data as source_data\n        join snapshotted_data\n            on {join}\n        where (\n            {rc}{was_deleted}\n        )\n    )",
        rc = s.row_changed,
        scd_col = names.scd_id,
    ));
    // Not a version already marked deleted (new_record).
    let still_open = match current_expr {
        Some(c) => format!("snapshotted_data.{} = {c}", names.valid_to),
        None => format!("snapshotted_data.{} is null", names.valid_to),
    };
    let not_deleted_yet =
        format!("\n            and not (\n                snapshotted_data.{del} = 'True'\n                and\n                {still_open}\n            )");
    if deletes {
        out.push_str(&format!(
            "\n    ,\n    deletes as (\n\n        select\n            'delete' as dbt_change_type,\n            source_data.*,\n            {t} as {vf},\n            {t} as {upd},\n            {t} as {vt},\n            snapshotted_data.{scd_col}{upd_del}\n        from snapshotted_data\n        left join deletes_source_data as source_data\n            on {join}\n            where source_data.{k} is null{extra}\n    )",
            vf = names.valid_from,
            upd = names.updated_at,
            vt = names.valid_to,
            scd_col = names.scd_id,
            extra = if new_record { not_deleted_yet.as_str() } else { "" },
        ));
    }
    if new_record {
        let mut cols: Vec<String> = query_cols
            .iter()
            .map(|c| {
                let side = if target_cols.contains(c) {
                    "snapshotted_data"
                } else {
                    "source_data"
                };
                format!("{side}.{}", quote(c))
            })
            .collect();
        match &s.key {
            Key::One(_) => cols.push("snapshotted_data.dbt_unique_key as dbt_unique_key".into()),
            Key::Many(v) => {
                for i in 1..=v.len() {
                    cols.push(format!(
                        "snapshotted_data.dbt_unique_key_{i} as dbt_unique_key_{i}"
                    ));
                }
            }
        }
        let new_scd = hash(&[names.scd_id.as_str(), t]);
        out.push_str(&format!(
            "\n    ,\n    deletion_records as (\n\n        select\n            'insert' as dbt_change_type,\n            {cols},\n            {t} as {vf},\n            {t} as {upd},\n            snapshotted_data.{vt} as {vt},\n            {new_scd} as {scd_col},\n            'True' as {del}\n        from snapshotted_data\n        left join deletes_source_data as source_data\n            on {join}\n        where source_data.{k} is null{not_deleted_yet}\n    )",
            cols = cols.join(",\n            "),
            vf = names.valid_from,
            upd = names.updated_at,
            vt = names.valid_to,
            scd_col = names.scd_id,
        ));
    }
    out.push_str("\n\n    select * from insertions\n    union all\n    select * from updates");
    if deletes {
        out.push_str("\n    union all\n    select * from deletes");
    }
    if new_record {
        out.push_str("\n    union all\n    select * from deletion_records");
    }
    out
}

/// Runs a snapshot: creates the table on the first run, else merges the changes in one
/// transaction.
///
/// # Errors
/// A [`DbError`] with the warehouse's message (or a configuration mistake); the transaction
/// is rolled back.
pub async fn run(
    conn: &mut Conn,
    adapter: AdapterKind,
    node: &Node,
    sql: &str,
    cache: &Cache,
) -> Result<Outcome, DbError> {
    let rel = node.relation();
    let names = Names::of(node);
    let existing = cached(cache, &rel);
    if existing == Some("view") {
        return Err(DbError(format!(
            "Invalid relation type: {rel} is a view; a snapshot needs a table. Drop the view or give the snapshot another name."
        )));
    }
    let target_cols = match existing {
        Some(_) => Some(conn.typed_columns(&rel.to_string()).await?),
        None => None,
    };
    let s = strategy(conn, adapter, node, sql, &names, target_cols.as_deref()).await?;
    let Some(target_cols) = target_cols else {
        let is_deleted = if s.hard_deletes == HardDeletes::NewRecord {
            format!(", 'False' as {}\n", names.is_deleted)
        } else {
            String::new()
        };
        let build = format!(
            "\n    select *,\n        {} as {},\n        {u} as {},\n        {u} as {},\n        {}{is_deleted}\n    from (\n        {sql}\n    ) sbq\n",
            s.scd_id,
            names.scd_id,
            names.updated_at,
            names.valid_from,
            valid_to_current(node, &s, &names),
            u = s.updated_at,
        );
        return create_table(conn, adapter, &rel, &build, cache).await;
    };
    let mut tx = Tx {
        conn,
        out: Outcome::default(),
    };
    let staging = quote(&format!("{}__dbt_tmp", rel.identifier));
    let (target_names, query_cols) = if s.hard_deletes == HardDeletes::NewRecord {
        (
            target_cols
                .iter()
                .map(|(c, _)| c.clone())
                .collect::<Vec<_>>(),
            tx.conn.query_columns(sql).await?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let select = staging_sql(
        node,
        adapter,
        &s,
        &names,
        sql,
        &rel.to_string(),
        &target_names,
        &query_cols,
    );
    tx.conn.execute("begin").await?;
    let result = async {
        tx.run(format!("create temporary table {staging} as (\n{select}\n)"))
            .await?;
        let staged = tx.conn.typed_columns(&staging).await?;
        let removed = |c: &str| {
            let l = c.to_ascii_lowercase();
            l == "dbt_change_type"
                || l == "dbt_unique_key"
                || l.strip_prefix("dbt_unique_key_")
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        };
        // dbt's `expand_target_column_types`: a string column the query now makes longer is
        // widened first (Postgres; DuckDB's VARCHAR has no length).
        if adapter == AdapterKind::Postgres {
            for (c, t) in &staged {
                let Some((_, have)) = target_cols.iter().find(|(e, _)| e == c) else {
                    continue;
                };
                if let (Some(old), Some(new)) = (string_size(have), string_size(t)) {
                    if new > old {
                        let tmp = quote(&format!("{c}__dbt_alter"));
                        let col = quote(c);
                        let ty = format!("character varying({new})");
                        for stmt in [
                            format!("alter table {rel} add column {tmp} {ty};"),
                            format!("update {rel} set {tmp} = {col};"),
                            format!("alter table {rel} drop column {col} cascade;"),
                            format!("alter table {rel} rename column {tmp} to {col}"),
                        ] {
                            tx.run(stmt).await?;
                        }
                    }
                }
            }
        }
        for (c, t) in &staged {
            if !removed(c) && !target_cols.iter().any(|(e, _)| e == c) {
                tx.run(format!("alter table {rel} add column {} {t};", quote(c)))
                    .await?;
            }
        }
        let insert_cols: Vec<String> = staged
            .iter()
            .filter(|(c, _)| !removed(c))
            .map(|(c, _)| quote(c))
            .collect();
        let current = match node.config.get("dbt_valid_to_current").and_then(Value::as_str) {
            Some(c) => format!(
                "and (DBT_INTERNAL_TARGET.{v} = {c} or DBT_INTERNAL_TARGET.{v} is null)",
                v = names.valid_to
            ),
            None => format!("and DBT_INTERNAL_TARGET.{} is null", names.valid_to),
        };
        tx.run(format!(
            "update {rel} as DBT_INTERNAL_TARGET\n    set {vt} = DBT_INTERNAL_SOURCE.{vt}\n    from {staging} as DBT_INTERNAL_SOURCE\n    where DBT_INTERNAL_SOURCE.{scd}::text = DBT_INTERNAL_TARGET.{scd}::text\n      and DBT_INTERNAL_SOURCE.dbt_change_type::text in ('update'::text, 'delete'::text)\n      {current};",
            vt = names.valid_to,
            scd = names.scd_id,
        ))
        .await?;
        let source_cols: Vec<String> = insert_cols
            .iter()
            .map(|c| format!("DBT_INTERNAL_SOURCE.{c}"))
            .collect();
        let n = tx
            .run(format!(
                "insert into {rel} ({})\n    select {}\n    from {staging} as DBT_INTERNAL_SOURCE\n    where DBT_INTERNAL_SOURCE.dbt_change_type::text = 'insert'::text;",
                insert_cols.join(", "),
                source_cols.join(", ")
            ))
            .await?;
        Ok::<Option<u64>, DbError>(n)
    }
    .await;
    match result {
        Ok(n) => {
            tx.conn.execute("commit").await?;
            tx.conn
                .execute(&format!("drop table if exists {staging}"))
                .await?;
            let mut out = tx.out;
            out.rows = n;
            out.message = match adapter {
                AdapterKind::Postgres => format!("INSERT 0 {}", n.unwrap_or(0)),
                AdapterKind::DuckDb => "OK".into(),
            };
            Ok(out)
        }
        Err(e) => {
            let _ = tx.conn.execute("rollback").await;
            let _ = tx
                .conn
                .execute(&format!("drop table if exists {staging}"))
                .await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_sizes_are_dbts() {
        assert_eq!(string_size("character varying(10)"), Some(10));
        assert_eq!(string_size("text"), Some(256));
        assert_eq!(string_size("character(3)"), Some(3));
        assert_eq!(string_size("integer"), None);
        assert_eq!(string_size("timestamp without time zone"), None);
    }

    #[test]
    fn scd_ids_hash_the_key_and_the_time_as_dbt() {
        assert_eq!(
            hash(&["id", "updated_at"]),
            "md5(coalesce(cast(id as varchar ), '') || '|' || coalesce(cast(updated_at as varchar ), ''))"
        );
        let k = Key::Many(vec!["a".into(), "b".into()]);
        assert_eq!(k.fields(), "a as dbt_unique_key_1 , b as dbt_unique_key_2");
        assert_eq!(
            k.join_on("s", "d"),
            "s.dbt_unique_key_1 = d.dbt_unique_key_1 and s.dbt_unique_key_2 = d.dbt_unique_key_2"
        );
    }
}
