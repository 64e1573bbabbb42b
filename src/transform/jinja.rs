//! Jinja as dbt has it, on minijinja: `ref`, `source`, `config`, `var`, `env_var`,
//! `is_incremental`, `this`, `target`, `adapter.dispatch`, project macros callable from every
//! file, and dbt's built-in generic tests.
//!
//! Every macro of the project is available in every file, as in dbt. minijinja keeps macros per
//! template, so each render imports the macros its text can reach (built-in, then the
//! project's) from a module template made once per distinct set and compiled once by the
//! environment; error lines inside a module are mapped back to the macro's file.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use minijinja::value::{from_args, Enumerator, Kwargs, Object, ObjectRepr, Rest};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior, Value};
use serde_json::Value as Json;

use super::project::AdapterKind;

/// dbt's generic tests as its `default__test_*` macros have them (dbt-adapters'
/// `macros/generic_test_sql/*.sql`), so compiled tests match dbt's text.
const BUILTIN_MACROS: &str = include_str!("builtin_macros.sql");

/// A relation (`"database"."schema"."identifier"`), or an ephemeral model's CTE name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Database (omitted when rendering if `None`).
    pub database: Option<String>,
    /// Schema.
    pub schema: Option<String>,
    /// Table or view name.
    pub identifier: String,
    /// `table`, `view`, `cte`.
    pub kind: &'static str,
}

impl Relation {
    /// A table or view.
    pub fn new(database: &str, schema: &str, identifier: &str, kind: &'static str) -> Relation {
        Relation {
            database: Some(database.to_string()),
            schema: Some(schema.to_string()),
            identifier: identifier.to_string(),
            kind,
        }
    }

    /// An ephemeral model, rendered as its CTE's name.
    pub fn cte(name: &str) -> Relation {
        Relation {
            database: None,
            schema: None,
            identifier: format!("__dbt__cte__{name}"),
            kind: "cte",
        }
    }

    /// The same relation under another identifier (`__dbt_tmp`, `__dbt_backup`).
    pub fn with_identifier(&self, identifier: String) -> Relation {
        Relation {
            identifier,
            ..self.clone()
        }
    }

    /// `"schema"."identifier"`, without the database.
    pub fn schema_qualified(&self) -> String {
        let mut r = self.clone();
        r.database = None;
        r.to_string()
    }
}

/// Quotes an identifier as both adapters do (double quotes, embedded quotes doubled).
pub use crate::sql::quote_ident as quote;

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == "cte" {
            return f.write_str(&self.identifier);
        }
        let parts: Vec<String> = [&self.database, &self.schema]
            .into_iter()
            .flatten()
            .map(|p| quote(p))
            .chain(std::iter::once(quote(&self.identifier)))
            .collect();
        f.write_str(&parts.join("."))
    }
}

impl Object for Relation {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(match key.as_str()? {
            "database" => Value::from(self.database.clone()),
            "schema" => Value::from(self.schema.clone()),
            "identifier" | "name" | "table" => Value::from(self.identifier.clone()),
            "type" => Value::from(self.kind),
            "is_table" => Value::from(self.kind == "table"),
            "is_view" => Value::from(self.kind == "view"),
            "is_cte" => Value::from(self.kind == "cte"),
            _ => return None,
        })
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        match method {
            "render" => Ok(Value::from(self.to_string())),
            "include" => {
                let (kw,): (Kwargs,) = from_args(args)?;
                let mut r = (**self).clone();
                if kw.get::<Option<bool>>("database")? == Some(false) {
                    r.database = None;
                }
                if kw.get::<Option<bool>>("schema")? == Some(false) {
                    r.schema = None;
                }
                Ok(Value::from_object(r))
            }
            _ => Err(Error::new(
                ErrorKind::UnknownMethod,
                format!("relations have no method {method}"),
            )),
        }
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

/// What a render is for: reading dependencies and config (parse), or producing SQL (compile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `ref`/`source`/`config` are recorded; nothing is looked up.
    Parse,
    /// Relations are resolved; `config()` is a no-op.
    Compile,
}

/// Where `ref` and `source` point to, known after parsing.
pub trait Resolve: Send + Sync + fmt::Debug {
    /// A model or seed by name: its unique id and relation (a CTE for ephemeral models).
    fn node(&self, package: Option<&str>, name: &str) -> Option<(String, Relation)>;
    /// A source table.
    fn source(&self, source: &str, table: &str) -> Option<(String, Relation)>;
}

/// What a parse render found.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// `ref()` calls: (package, name).
    pub refs: Vec<(Option<String>, String)>,
    /// `source()` calls.
    pub sources: Vec<(String, String)>,
    /// `config()` keyword arguments, in call order.
    pub config: serde_json::Map<String, Json>,
    /// Unique ids of ephemeral models referenced (compile phase).
    pub ephemerals: Vec<String>,
}

/// Per-render state, reached by the global functions through the `__ferry` context variable.
#[derive(Debug)]
pub struct RenderCtx {
    /// Parse or compile.
    pub phase: Phase,
    /// What was found.
    pub rec: Mutex<Recorded>,
    /// Relations (compile phase).
    pub resolver: Option<Arc<dyn Resolve>>,
    /// `is_incremental()`.
    pub incremental: bool,
    /// Variables: the project's, then `--vars`.
    pub vars: Arc<serde_json::Map<String, Json>>,
    /// `{% docs %}` blocks, for `doc()`.
    pub docs: Arc<HashMap<String, String>>,
    /// The node's resolved config, for `config.get`.
    pub config: serde_json::Map<String, Json>,
    /// Values given to `return()`, reached through the marker the call prints.
    pub returns: Mutex<Vec<Value>>,
    /// Runs `run_query` and `statement` SQL while compiling (none while parsing: dbt's
    /// `execute` is false then).
    pub query: Option<Arc<dyn Query>>,
    /// `statement('name', …)` results, for `load_result('name')`.
    pub statements: Mutex<HashMap<String, Value>>,
    /// Environment variables set for this render only (a unit test's `overrides.env_vars`).
    pub env: HashMap<String, String>,
}

impl Object for RenderCtx {}

/// The warehouse, for `run_query` and `{% call statement() %}` during a compile render.
pub trait Query: Send + Sync + fmt::Debug {
    /// Runs one statement (or several, separated by `;`).
    ///
    /// # Errors
    /// The warehouse's message.
    fn run(&self, sql: &str) -> Result<super::adapter::QueryOutput, String>;
}

/// A query result as dbt's agate table: `.rows`, `.columns[i].values()`, `.column_names`,
/// rows by index or by column name, `length`.
#[derive(Debug)]
struct Table(super::adapter::QueryOutput);

#[derive(Debug)]
struct TableRow(Arc<Table>, usize);

#[derive(Debug)]
struct TableColumn(Arc<Table>, usize);

impl Table {
    fn row(self: &Arc<Self>, i: usize) -> Value {
        Value::from_object(TableRow(self.clone(), i))
    }
}

impl Object for Table {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        if let Some(i) = key.as_usize() {
            return (i < self.0.rows.len()).then(|| self.row(i));
        }
        Some(match key.as_str()? {
            "rows" => Value::from(
                (0..self.0.rows.len())
                    .map(|i| self.row(i))
                    .collect::<Vec<_>>(),
            ),
            "columns" => Value::from(
                (0..self.0.columns.len())
                    .map(|i| Value::from_object(TableColumn(self.clone(), i)))
                    .collect::<Vec<_>>(),
            ),
            "column_names" => Value::from(self.0.columns.clone()),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Seq(self.0.rows.len())
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &State<'_, '_>,
        method: &str,
        _args: &[Value],
    ) -> Result<Value, Error> {
        match method {
            "print_table" => Ok(Value::from("")),
            _ => Err(Error::new(
                ErrorKind::UnknownMethod,
                format!("query results have no method {method}"),
            )),
        }
    }
}

impl Object for TableRow {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let row = &self.0 .0.rows[self.1];
        let i = match key.as_usize() {
            Some(i) => i,
            None => {
                let name = key.as_str()?;
                self.0 .0.columns.iter().position(|c| c == name)?
            }
        };
        row.get(i).map(from_json)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Seq(self.0 .0.rows[self.1].len())
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &State<'_, '_>,
        method: &str,
        _args: &[Value],
    ) -> Result<Value, Error> {
        let row = &self.0 .0.rows[self.1];
        let cols = &self.0 .0.columns;
        match method {
            "values" => Ok(Value::from(row.iter().map(from_json).collect::<Vec<_>>())),
            "keys" => Ok(Value::from(cols.clone())),
            "items" => Ok(Value::from(
                cols.iter()
                    .zip(row)
                    .map(|(c, v)| Value::from(vec![Value::from(c.clone()), from_json(v)]))
                    .collect::<Vec<_>>(),
            )),
            "dict" => Ok(Value::from_iter(
                cols.iter().zip(row).map(|(c, v)| (c.clone(), from_json(v))),
            )),
            _ => Err(Error::new(
                ErrorKind::UnknownMethod,
                format!("rows have no method {method}"),
            )),
        }
    }
}

impl Object for TableColumn {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        if let Some(i) = key.as_usize() {
            return self
                .0
                 .0
                .rows
                .get(i)
                .and_then(|r| r.get(self.1))
                .map(from_json);
        }
        match key.as_str()? {
            "name" => Some(Value::from(self.0 .0.columns[self.1].clone())),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Seq(self.0 .0.rows.len())
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &State<'_, '_>,
        method: &str,
        _args: &[Value],
    ) -> Result<Value, Error> {
        let values = self
            .0
             .0
            .rows
            .iter()
            .map(|r| r.get(self.1).cloned().unwrap_or(Json::Null));
        match method {
            "values" => Ok(Value::from(
                values.map(|v| from_json(&v)).collect::<Vec<_>>(),
            )),
            "values_without_nulls" => Ok(Value::from(
                values
                    .filter(|v| !v.is_null())
                    .map(|v| from_json(&v))
                    .collect::<Vec<_>>(),
            )),
            "values_distinct" => {
                let mut seen: Vec<Json> = Vec::new();
                for v in values {
                    if !seen.contains(&v) {
                        seen.push(v);
                    }
                }
                Ok(Value::from(seen.iter().map(from_json).collect::<Vec<_>>()))
            }
            _ => Err(Error::new(
                ErrorKind::UnknownMethod,
                format!("columns have no method {method}"),
            )),
        }
    }
}

/// Runs SQL for `run_query`/`statement`, or `None` while parsing (dbt's `execute` false).
fn run_sql(state: &State, sql: &str) -> Result<Option<super::adapter::QueryOutput>, Error> {
    let c = ctx(state)?;
    let (Phase::Compile, Some(q)) = (c.phase, &c.query) else {
        return Ok(None);
    };
    q.run(sql)
        .map(Some)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("Database Error: {e}")))
}

fn run_query_fn(state: &State, sql: Value) -> Result<Value, Error> {
    let sql = sql.to_string();
    Ok(match run_sql(state, &sql)? {
        Some(out) => Value::from_object(Table(out)),
        None => Value::from(()),
    })
}

fn statement_fn(
    state: &State,
    name: Value,
    sql: Value,
    _fetch: Option<Value>,
) -> Result<String, Error> {
    let sql = sql.to_string();
    if let Some(out) = run_sql(state, &sql)? {
        if let Some(name) = name.as_str() {
            let response = Value::from_iter([
                ("_message".to_string(), Value::from(out.message.clone())),
                ("rows_affected".to_string(), Value::from(out.rows_affected)),
            ]);
            let data = Value::from(
                out.rows
                    .iter()
                    .map(|r| Value::from(r.iter().map(from_json).collect::<Vec<_>>()))
                    .collect::<Vec<_>>(),
            );
            let result = Value::from_iter([
                ("response".to_string(), response),
                ("data".to_string(), data),
                ("table".to_string(), Value::from_object(Table(out))),
            ]);
            ctx(state)?
                .statements
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.to_string(), result);
        }
    }
    Ok(String::new())
}

fn load_result_fn(state: &State, name: String) -> Result<Value, Error> {
    Ok(ctx(state)?
        .statements
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&name)
        .cloned()
        .unwrap_or_default())
}

fn ctx(state: &State) -> Result<Arc<RenderCtx>, Error> {
    state
        .lookup("__ferry")
        .and_then(|v| v.downcast_object::<RenderCtx>())
        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "not inside a dbt render"))
}

/// A JSON value as a template value. (Not `Value::from_serialize`: with serde_json's
/// arbitrary precision numbers would arrive as maps.)
pub fn from_json(v: &Json) -> Value {
    match v {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let s = n.to_string();
                s.parse::<f64>()
                    .map_or_else(|_| Value::from(s), Value::from)
            }
        }
        Json::String(s) => Value::from(s.clone()),
        Json::Array(a) => Value::from(a.iter().map(from_json).collect::<Vec<_>>()),
        Json::Object(o) => Value::from_iter(o.iter().map(|(k, v)| (k.clone(), from_json(v)))),
    }
}

fn to_json(v: &Value) -> Json {
    serde_json::to_value(v).unwrap_or(Json::Null)
}

fn ref_fn(state: &State, args: Rest<Value>) -> Result<Value, Error> {
    let (pos, kw): (&[Value], Kwargs) = from_args(&args)?;
    // `v=`/`version=` select a model version; ferry has no versioned models yet.
    let _ = kw.get::<Option<Value>>("v")?;
    let _ = kw.get::<Option<Value>>("version")?;
    let names: Vec<String> = pos
        .iter()
        .map(|v| {
            v.as_str().map(str::to_string).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "ref() takes model names as strings",
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let (package, name) = match names.as_slice() {
        [n] => (None, n.clone()),
        [p, n] => (Some(p.clone()), n.clone()),
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "ref() takes a model name, or a package and a model name",
            ))
        }
    };
    let c = ctx(state)?;
    match (&c.resolver, c.phase) {
        (Some(r), Phase::Compile) => {
            let (id, rel) = r.node(package.as_deref(), &name).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("ref('{name}') names no model or seed of this project"),
                )
            })?;
            if rel.kind == "cte" {
                let mut rec = c.rec.lock().unwrap_or_else(|p| p.into_inner());
                if !rec.ephemerals.contains(&id) {
                    rec.ephemerals.push(id);
                }
            }
            Ok(Value::from_object(rel))
        }
        _ => {
            c.rec
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .refs
                .push((package, name.clone()));
            Ok(Value::from_object(Relation {
                database: None,
                schema: None,
                identifier: name,
                kind: "table",
            }))
        }
    }
}

fn source_fn(state: &State, source: String, table: String) -> Result<Value, Error> {
    let c = ctx(state)?;
    match (&c.resolver, c.phase) {
        (Some(r), Phase::Compile) => r
            .source(&source, &table)
            .map(|(_, rel)| Value::from_object(rel))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("source('{source}', '{table}') is not declared in any sources: block"),
                )
            }),
        _ => {
            c.rec
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sources
                .push((source, table.clone()));
            Ok(Value::from_object(Relation {
                database: None,
                schema: None,
                identifier: table,
                kind: "table",
            }))
        }
    }
}

/// `config`: callable (`{{ config(materialized='table') }}`) and readable (`config.get(…)`).
#[derive(Debug)]
struct ConfigObj;

impl Object for ConfigObj {
    fn call(self: &Arc<Self>, state: &State<'_, '_>, args: &[Value]) -> Result<Value, Error> {
        let c = ctx(state)?;
        if c.phase == Phase::Parse {
            let (pos, kw): (&[Value], Kwargs) = from_args(args)?;
            let mut rec = c.rec.lock().unwrap_or_else(|p| p.into_inner());
            for p in pos {
                if let Json::Object(m) = to_json(p) {
                    rec.config.extend(m);
                }
            }
            for k in kw.args().map(str::to_string).collect::<Vec<_>>() {
                let v: Value = kw.get(&k)?;
                rec.config.insert(k, to_json(&v));
            }
        }
        Ok(Value::from(""))
    }

    fn call_method(
        self: &Arc<Self>,
        state: &State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        let c = ctx(state)?;
        match method {
            "get" | "require" => {
                let (key, default): (String, Option<Value>) = from_args(args)?;
                let found = c
                    .rec
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .config
                    .get(&key)
                    .cloned()
                    .or_else(|| c.config.get(&key).cloned());
                match (found, default) {
                    (Some(v), _) => Ok(from_json(&v)),
                    (None, Some(d)) => Ok(d),
                    (None, None) if method == "require" => Err(Error::new(
                        ErrorKind::InvalidOperation,
                        format!("config '{key}' is required"),
                    )),
                    (None, None) => Ok(Value::from(())),
                }
            }
            "set" => Ok(Value::from("")),
            _ => Err(Error::new(
                ErrorKind::UnknownMethod,
                format!("config has no method {method}"),
            )),
        }
    }
}

fn var_fn(state: &State, name: String, default: Option<Value>) -> Result<Value, Error> {
    let c = ctx(state)?;
    match (c.vars.get(&name), default) {
        (Some(v), _) => Ok(from_json(v)),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("required var '{name}' not found in dbt_project.yml vars or --vars"),
        )),
    }
}

fn env_var_fn(name: String, default: Option<Value>) -> Result<Value, Error> {
    match (std::env::var(&name), default) {
        (Ok(v), _) => Ok(Value::from(v)),
        (Err(_), Some(d)) => Ok(d),
        (Err(_), None) => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("env var required but not provided: '{name}'"),
        )),
    }
}

/// `env_var()` in a dbt render: the render's overrides first, then the process environment.
fn env_var_render(state: &State, name: String, default: Option<Value>) -> Result<Value, Error> {
    if let Some(v) = ctx(state).ok().and_then(|c| c.env.get(&name).cloned()) {
        return Ok(Value::from(v));
    }
    env_var_fn(name, default)
}

fn doc_fn(state: &State, name: String) -> Result<Value, Error> {
    let c = ctx(state)?;
    c.docs
        .get(&name)
        .map(|d| Value::from(d.clone()))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("doc('{name}'): no {{% docs {name} %}} block in the project"),
            )
        })
}

/// `adapter`: `quote`, and `dispatch` to `<adapter>__name` or `default__name` macros (of a
/// package's namespace, in the project's `dispatch` search order).
#[derive(Debug)]
struct AdapterObj {
    kind: AdapterKind,
    root: String,
    dispatch: HashMap<String, Vec<String>>,
}

impl Object for AdapterObj {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "type" => Some(Value::from(self.kind.as_str())),
            _ => None,
        }
    }

    fn call_method(
        self: &Arc<Self>,
        state: &State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        match method {
            "quote" => {
                let (s,): (String,) = from_args(args)?;
                Ok(Value::from(quote(&s)))
            }
            "dispatch" => {
                let (name, ns, kw): (String, Option<Value>, Kwargs) = from_args(args)?;
                let ns = match ns.as_ref().and_then(Value::as_str) {
                    Some(n) => Some(n.to_string()),
                    None => kw.get::<Option<String>>("macro_namespace")?,
                };
                let kind = self.kind.as_str();
                let mut candidates = Vec::new();
                match ns.as_deref() {
                    None | Some("dbt") => {
                        candidates.push(format!("{kind}__{name}"));
                        candidates.push(format!("default__{name}"));
                        candidates.push(name.clone());
                    }
                    Some(ns) => {
                        let order = self
                            .dispatch
                            .get(ns)
                            .cloned()
                            .unwrap_or_else(|| vec![ns.to_string()]);
                        for p in order {
                            for n in [format!("{kind}__{name}"), format!("default__{name}")] {
                                candidates.push(if p == self.root { n } else { mangled(&p, &n) });
                            }
                        }
                    }
                }
                for candidate in candidates {
                    if let Some(m) = state.lookup(&candidate) {
                        if !m.is_undefined() {
                            return Ok(m);
                        }
                    }
                }
                Err(Error::new(
                    ErrorKind::UnknownFunction,
                    format!(
                        "adapter.dispatch('{name}'{}): no macro {kind}__{name} or default__{name}",
                        ns.map(|n| format!(", '{n}'")).unwrap_or_default()
                    ),
                ))
            }
            _ => Err(Error::new(
                ErrorKind::UnknownMethod,
                format!("adapter.{method} is not supported by ferry transform"),
            )),
        }
    }
}

/// `exceptions.raise_compiler_error(msg)` and `exceptions.warn(msg)`.
#[derive(Debug)]
struct Exceptions;

impl Object for Exceptions {
    fn call_method(
        self: &Arc<Self>,
        _state: &State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        let (msg, _rest): (String, Rest<Value>) = from_args(args)?;
        match method {
            "warn" => {
                tracing::warn!("{msg}");
                Ok(Value::from(""))
            }
            _ => Err(Error::new(ErrorKind::InvalidOperation, msg)),
        }
    }
}

/// The shared environment and the project's macros.
#[derive(Debug)]
pub struct Jinja {
    env: Environment<'static>,
    /// Built-in macros first, then the project's: a later definition of a name wins.
    all: Vec<MacroBlock>,
    /// A word to the blocks it reaches: `x` reaches the macros `x`, `default__x` and
    /// `<adapter>__x` (what `adapter.dispatch('x')` may call).
    reach: HashMap<String, Vec<usize>>,
    /// Module templates made so far.
    modules: Mutex<Modules>,
    /// Their texts, which the environment's loader serves (and compiles once).
    module_texts: Arc<Mutex<HashMap<String, String>>>,
    /// The project's own macros (for `generate_schema_name` overrides and the manifest).
    pub macros: Vec<MacroDef>,
    /// Each installed package's macro names, for `package.macro()` calls.
    namespaces: HashMap<String, std::collections::HashSet<String>>,
}

/// The packages a project installed (dbt_packages/), as the Jinja environment needs them.
#[derive(Debug, Default, Clone)]
pub struct Packages {
    /// The root project's name.
    pub root: String,
    /// Each package's name and macro files (relative path, text).
    pub macros: Vec<(String, Vec<(String, String)>)>,
    /// `dispatch:` search orders by macro namespace.
    pub dispatch: HashMap<String, Vec<String>>,
}

/// `{% test x(…) %}…{% endtest %}` written as the macro `test_x` it is, so a package's
/// generic tests are renamed into its namespace like its other macros.
fn tests_as_macros(text: &str) -> String {
    static OPEN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\{%(-?)\s*test\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(").expect("static regex")
    });
    static CLOSE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\{%(-?)\s*endtest\s*(-?)%\}").expect("static regex")
    });
    let t = OPEN.replace_all(text, "{%$1 macro test_$2(");
    CLOSE.replace_all(&t, "{%$1 endmacro $2%}").into_owned()
}

/// A package's macro as the environment names it: `pkg.macro()` is `pkg__ns__macro()`.
fn mangled(pkg: &str, name: &str) -> String {
    format!("{pkg}__ns__{name}")
}

/// Rewrites calls into packages' namespaces: `pkg.name(` to the mangled name for every known
/// package macro, and, inside package `local` (its macros and models), unqualified calls to
/// its own macros, since they resolve in their package first, as in dbt.
fn rewrite_calls(
    text: &str,
    namespaces: &HashMap<String, std::collections::HashSet<String>>,
    local: Option<&str>,
) -> String {
    if namespaces.is_empty() {
        return text.to_string();
    }
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = text.as_bytes();
    let own = local.and_then(|p| namespaces.get(p).map(|m| (p, m)));
    let mut out = String::with_capacity(text.len() + 16);
    let mut i = 0;
    let mut copied = 0;
    let call_at = |mut j: usize| {
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        j < bytes.len() && bytes[j] == b'('
    };
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_alphabetic() || b == b'_') || (i > 0 && ident(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        let first = &text[start..i];
        let after_dot = start > 0 && bytes[start - 1] == b'.';
        if after_dot {
            continue;
        }
        // pkg.macro(
        if i < bytes.len() && bytes[i] == b'.' {
            let s2 = i + 1;
            let mut e2 = s2;
            while e2 < bytes.len() && ident(bytes[e2]) {
                e2 += 1;
            }
            let second = &text[s2..e2];
            if e2 > s2 && call_at(e2) && namespaces.get(first).is_some_and(|m| m.contains(second)) {
                out.push_str(&text[copied..start]);
                out.push_str(&mangled(first, second));
                copied = e2;
                i = e2;
            }
            continue;
        }
        if let Some((p, m)) = own {
            if m.contains(first) && call_at(i) {
                out.push_str(&text[copied..start]);
                out.push_str(&mangled(p, first));
                copied = i;
            }
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// A macro found in the project.
#[derive(Debug, Clone)]
pub struct MacroDef {
    /// Its name (`test_<name>` for `{% test %}` blocks).
    pub name: String,
    /// The file, relative to the project.
    pub file: String,
    /// Its source.
    pub sql: String,
}

/// A module template: a set of macro blocks, concatenated.
#[derive(Debug)]
struct Module {
    /// `{% from "<name>" import a, b %}`, put before a file's text on its first line.
    import: String,
    /// Where each block starts: (first line in the module, block index).
    segments: Vec<(usize, usize)>,
}

/// The module templates made so far: by the set of blocks they hold, and by number (their
/// name is [`MODULE_PREFIX`] and the number).
#[derive(Debug, Default)]
struct Modules {
    by_set: HashMap<Vec<usize>, Arc<Module>>,
    list: Vec<Arc<Module>>,
}

/// Names of module templates start with this.
const MODULE_PREFIX: &str = "__ferry_macros_";

#[derive(Debug)]
struct MacroBlock {
    name: String,
    block: String,
    file: String,
    line: usize,
    /// Identifiers in its body: the macros it may call.
    words: Vec<String>,
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty() && !w.as_bytes()[0].is_ascii_digit())
}

/// One `{% macro %}` / `{% test %}` block and where it starts in its file.
fn macro_blocks(text: &str) -> Vec<(String, String, usize)> {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
        r"(?s)\{%-?\s*(macro|test)\s+([A-Za-z_][A-Za-z0-9_]*)\s*\((.*?)\{%-?\s*end(?:macro|test)\s*-?%\}",
    )
        .expect("static regex")
    });
    let re = &*RE;
    re.captures_iter(text)
        .filter_map(|c| {
            let whole = c.get(0)?;
            let kind = c.get(1)?.as_str();
            let name = c.get(2)?.as_str();
            let line = text[..whole.start()].matches('\n').count() + 1;
            let mut block = whole.as_str().to_string();
            let name = if kind == "test" {
                // `{% test x(...) %}…{% endtest %}` is the macro `test_x`.
                let open = c.get(1)?;
                let start = open.start() - whole.start();
                block.replace_range(
                    start..start + "test".len() + 1 + name.len(),
                    &format!("macro test_{name}"),
                );
                if let Some(pos) = block.rfind("endtest") {
                    block.replace_range(pos..pos + "endtest".len(), "endmacro");
                }
                format!("test_{name}")
            } else {
                name.to_string()
            };
            let block = with_return(&block, &name);
            Some((name, block, line))
        })
        .collect()
}

/// dbt's `{{ return(x) }}` makes a macro's call evaluate to `x`. minijinja macros only render
/// text, so a macro that uses `return` becomes a wrapper around an inner macro with its body:
/// `return(x)` records `x` and prints a marker; the wrapper finds the first marker in the inner
/// output and gives back the recorded value (text for callers, as the value renders). Nothing is
/// added on new lines, so error lines in the body stay right.
fn with_return(block: &str, name: &str) -> String {
    if !block.contains("return(") && !block.contains("return (") {
        return block.to_string();
    }
    let Some(header_end) = block.find("%}").map(|i| i + 2) else {
        return block.to_string();
    };
    let Some(end_start) = block.rfind("{%") else {
        return block.to_string();
    };
    if end_start <= header_end {
        return block.to_string();
    }
    let header = &block[..header_end];
    let (Some(open), Some(close)) = (header.find('('), header.rfind(')')) else {
        return block.to_string();
    };
    let args = &header[open + 1..close];
    let mut names = Vec::new();
    let (mut depth, mut quote, mut cur) = (0i32, None::<char>, String::new());
    for c in args.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                names.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    names.push(cur);
    let call = names
        .iter()
        .filter_map(|a| {
            let n = a.split('=').next()?.trim();
            (!n.is_empty() && !n.starts_with('*')).then(|| format!("{n}={n}"))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let inner = format!("__ferry_inner__{name}");
    format!(
        "{header}{{{{ __ferry_ret({inner}({call})) }}}}{}{{% macro {inner}({args}) %}}{}{{% endmacro %}}",
        &block[end_start..],
        &block[header_end..end_start]
    )
}

impl Jinja {
    /// Builds the environment with the project's macro files (`(relative path, text)`).
    pub fn new(adapter: AdapterKind, macro_files: &[(String, String)]) -> Jinja {
        Jinja::with_packages(adapter, macro_files, &Packages::default())
    }

    /// [`Jinja::new`] with installed packages: their macros callable as `pkg.macro()` and
    /// found by `adapter.dispatch(name, 'pkg')`.
    pub fn with_packages(
        adapter: AdapterKind,
        macro_files: &[(String, String)],
        packages: &Packages,
    ) -> Jinja {
        let mut namespaces: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        for (pkg, files) in &packages.macros {
            let set = namespaces.entry(pkg.clone()).or_default();
            for (_, text) in files {
                for (name, _, _) in macro_blocks(text) {
                    set.insert(name);
                }
            }
        }
        let mut env = Environment::new();
        let module_texts: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let texts = module_texts.clone();
        env.set_loader(move |name| {
            Ok(texts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .cloned())
        });
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_recursion_limit(1000);
        env.add_function("ref", ref_fn);
        env.add_function("source", source_fn);
        env.add_function("var", var_fn);
        env.add_function("env_var", env_var_render);
        env.add_function("doc", doc_fn);
        env.add_function(
            "return",
            |state: &State, v: Value| -> Result<String, Error> {
                let c = ctx(state)?;
                let mut r = c.returns.lock().unwrap_or_else(|p| p.into_inner());
                r.push(v);
                Ok(format!("\u{2}{}\u{3}", r.len() - 1))
            },
        );
        env.add_function(
            "__ferry_ret",
            |state: &State, out: Value| -> Result<Value, Error> {
                let text = out.to_string();
                let found = text.find('\u{2}').and_then(|a| {
                    let b = a + text[a..].find('\u{3}')?;
                    text[a + 1..b].parse::<usize>().ok()
                });
                match found {
                    Some(i) => {
                        let c = ctx(state)?;
                        let r = c.returns.lock().unwrap_or_else(|p| p.into_inner());
                        Ok(r.get(i).cloned().unwrap_or_default())
                    }
                    // No `return` ran: the macro's text, as dbt gives it.
                    None => Ok(out),
                }
            },
        );
        env.add_function(
            "should_store_failures",
            |state: &State| -> Result<bool, Error> {
                let c = ctx(state)?;
                let store = c.config.get("store_failures").and_then(Json::as_bool);
                let store_as = c.config.get("store_failures_as").and_then(Json::as_str);
                Ok(match (store, store_as) {
                    (Some(false), _) | (_, Some("ephemeral")) => false,
                    (Some(true), _) | (_, Some("table" | "view")) => true,
                    _ => false,
                })
            },
        );
        env.add_function("run_query", run_query_fn);
        env.add_function("__ferry_statement", statement_fn);
        env.add_function("load_result", load_result_fn);
        env.add_function("is_incremental", |state: &State| -> Result<bool, Error> {
            Ok(ctx(state)?.incremental)
        });
        env.add_function("log", |_msg: Value, _rest: Rest<Value>| "");
        env.add_function("tojson", |v: Value| -> Result<String, Error> {
            serde_json::to_string(&v)
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
        });
        env.add_function("fromjson", |s: String| -> Result<Value, Error> {
            serde_json::from_str::<Json>(&s)
                .map(|j| from_json(&j))
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
        });
        env.add_global("config", Value::from_object(ConfigObj));
        env.add_global(
            "adapter",
            Value::from_object(AdapterObj {
                kind: adapter,
                root: packages.root.clone(),
                dispatch: packages.dispatch.clone(),
            }),
        );
        env.add_global("exceptions", Value::from_object(Exceptions));
        env.add_global("dbt_version", Value::from(super::DBT_VERSION));
        let mut all = Vec::new();
        let mut macros = Vec::new();
        let mut add = |file: &str, text: &str, builtin: bool| {
            for (name, block, line) in macro_blocks(text) {
                let mut ws: Vec<String> = words(&block).map(str::to_string).collect();
                ws.sort();
                ws.dedup();
                if !builtin {
                    macros.push(MacroDef {
                        name: name.clone(),
                        file: file.to_string(),
                        sql: block.clone(),
                    });
                }
                all.push(MacroBlock {
                    name,
                    block,
                    file: file.to_string(),
                    line,
                    words: ws,
                });
            }
        };
        add("(ferry built-in macros)", BUILTIN_MACROS, true);
        for (pkg, files) in &packages.macros {
            for (file, text) in files {
                let text = rewrite_calls(&tests_as_macros(text), &namespaces, Some(pkg));
                add(&format!("dbt_packages/{pkg}/{file}"), &text, true);
            }
        }
        for (file, text) in macro_files {
            add(file, &rewrite_calls(text, &namespaces, None), false);
        }
        let mut reach: HashMap<String, Vec<usize>> = HashMap::new();
        let adapter_prefix = format!("{}__", adapter.as_str());
        for (i, m) in all.iter().enumerate() {
            let unqualified = m
                .name
                .split_once("__ns__")
                .map_or(m.name.as_str(), |(_, n)| n);
            let base = unqualified
                .strip_prefix("default__")
                .or_else(|| unqualified.strip_prefix(&adapter_prefix))
                .or((unqualified != m.name).then_some(unqualified));
            for key in std::iter::once(m.name.as_str()).chain(base) {
                let v = reach.entry(key.to_string()).or_default();
                if !v.contains(&i) {
                    v.push(i);
                }
            }
        }
        Jinja {
            env,
            all,
            reach,
            modules: Mutex::default(),
            module_texts,
            macros,
            namespaces,
        }
    }

    /// Whether `name` is an installed package with macros.
    pub fn has_package(&self, name: &str) -> bool {
        self.namespaces.contains_key(name)
    }

    /// A package's own text (a model of package `pkg`) with its unqualified calls to the
    /// package's macros pointing at them.
    pub fn localize(&self, text: &str, pkg: &str) -> String {
        rewrite_calls(text, &self.namespaces, Some(pkg))
    }

    /// True when the project defines this macro (e.g. its own `generate_schema_name`).
    pub fn has_macro(&self, name: &str) -> bool {
        self.macros.iter().any(|m| m.name == name)
    }

    /// The module holding the macro definitions a text can reach (by the names it mentions,
    /// transitively; see `reach`), in definition order; `None` when it reaches none.
    fn module_for(&self, source: &str) -> Option<Arc<Module>> {
        let mut want: Vec<bool> = vec![false; self.all.len()];
        let mut queue: Vec<&str> = words(source).collect();
        while let Some(w) = queue.pop() {
            for &i in self.reach.get(w).into_iter().flatten() {
                if !want[i] {
                    want[i] = true;
                    queue.extend(self.all[i].words.iter().map(String::as_str));
                }
            }
        }
        let set: Vec<usize> = (0..want.len()).filter(|&i| want[i]).collect();
        if set.is_empty() {
            return None;
        }
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.by_set.get(&set) {
            return Some(m.clone());
        }
        let name = format!("{MODULE_PREFIX}{}", modules.list.len());
        let mut text = String::new();
        let mut segments = Vec::new();
        let mut line = 1;
        let mut names: Vec<&str> = Vec::new();
        for &i in &set {
            let m = &self.all[i];
            segments.push((line, i));
            text.push_str(&m.block);
            line += m.block.matches('\n').count();
            if !names.contains(&m.name.as_str()) {
                names.push(&m.name);
            }
        }
        let import = format!("{{% from \"{name}\" import {} %}}", names.join(", "));
        self.module_texts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, text);
        let m = Arc::new(Module { import, segments });
        modules.by_set.insert(set, m.clone());
        modules.list.push(m.clone());
        Some(m)
    }

    /// Renders a file's text. `name` is used in errors.
    ///
    /// # Errors
    /// A [`RenderError`] with the line in the file (or in the macro file the error is in).
    pub fn render(
        &self,
        name: &str,
        source: &str,
        rc: Arc<RenderCtx>,
        extra: &[(&str, Value)],
    ) -> Result<String, RenderError> {
        let rewritten;
        let source = if self.namespaces.is_empty() || !source.contains('.') {
            source
        } else {
            rewritten = rewrite_calls(source, &self.namespaces, None);
            rewritten.as_str()
        };
        let module = self.module_for(source);
        let full = match &module {
            // On the first line, so the file's lines keep their numbers.
            Some(m) => format!("{}{source}", m.import),
            None => source.to_string(),
        };
        let mut context: std::collections::BTreeMap<&str, Value> = extra.iter().cloned().collect();
        context.insert("__ferry", Value::from_dyn_object(rc.clone()));
        context.insert("execute", Value::from(rc.phase == Phase::Compile));
        self.env
            .render_named_str(name, &full, context)
            .map_err(|e| self.render_error(name, &e))
    }

    /// Evaluates an expression (`ref('customers')` in a test's arguments) to a value.
    ///
    /// # Errors
    /// As [`Jinja::render`], for the expression.
    pub fn eval(&self, name: &str, expr: &str, rc: Arc<RenderCtx>) -> Result<Value, RenderError> {
        let compiled = self
            .env
            .compile_expression_owned(expr.to_string())
            .map_err(|e| self.render_error(name, &e))?;
        compiled
            .eval(minijinja::context! { __ferry => Value::from_dyn_object(rc) })
            .map_err(|e| self.render_error(name, &e))
    }

    fn render_error(&self, name: &str, e: &Error) -> RenderError {
        // What went wrong, innermost causes last; the import of a module is ferry's own
        // plumbing, so its wrapper says nothing to the user.
        let mut parts: Vec<String> = Vec::new();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            match err.downcast_ref::<Error>() {
                Some(j)
                    if j.kind() == ErrorKind::BadInclude
                        && j.detail().is_some_and(|d| d.contains(MODULE_PREFIX)) => {}
                Some(j) => parts.push(match j.detail() {
                    Some(d) => format!("{}: {d}", j.kind()),
                    None => j.kind().to_string(),
                }),
                None => parts.push(err.to_string()),
            }
            cur = err.source();
        }
        let mut detail = parts.join(": ");
        if detail.contains("undefined is not callable") {
            // minijinja does not say which name: say what to look for.
            detail.push_str(
                " (a function or macro called here is not defined: check its name, that its macro file is in the macro paths, or whether it comes from a dbt package, which ferry does not install)",
            );
        }
        // Inside a module (a macro's body, or a syntax error in a macro file, which comes
        // wrapped in the import's error): name the macro's file and line.
        let mut inner: Option<&Error> = Some(e);
        while let Some(err) = inner {
            let module = err
                .name()
                .and_then(|n| n.strip_prefix(MODULE_PREFIX))
                .and_then(|n| n.parse::<usize>().ok());
            if let (Some(k), Some(l)) = (module, err.line()) {
                let modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
                let seg = modules
                    .list
                    .get(k)
                    .and_then(|m| m.segments.iter().rev().find(|(s, _)| *s <= l).copied());
                if let Some((start, i)) = seg {
                    let b = &self.all[i];
                    return RenderError {
                        file: b.file.clone(),
                        line: Some(b.line + (l - start)),
                        detail,
                    };
                }
            }
            inner = std::error::Error::source(err).and_then(|s| s.downcast_ref::<Error>());
        }
        let line = if e.name().is_none_or(|n| n == name) {
            e.line()
        } else {
            None
        };
        RenderError {
            file: name.to_string(),
            line,
            detail,
        }
    }
}

/// A Jinja error placed in a file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}{}: {detail}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct RenderError {
    /// The file (the node's, or the macro file the error is in).
    pub file: String,
    /// 1-based line.
    pub line: Option<usize>,
    /// What went wrong.
    pub detail: String,
}

/// Renders `{{ env_var('X') }}` (and only that: no project context exists yet) in every string
/// of a YAML document, as dbt does for dbt_project.yml and profiles.yml.
///
/// # Errors
/// A missing env var without a default, or a Jinja syntax error.
pub fn render_env_vars(v: &mut Json) -> anyhow::Result<()> {
    fn walk(env: &Environment<'static>, v: &mut Json) -> anyhow::Result<()> {
        match v {
            Json::String(s) if s.contains("{{") || s.contains("{%") => {
                let out = env
                    .render_str(s, ())
                    .map_err(|e| anyhow::anyhow!("{}", e.detail().unwrap_or("bad template")))?;
                *s = out;
            }
            Json::Array(a) => {
                for x in a {
                    walk(env, x)?;
                }
            }
            Json::Object(o) => {
                for (k, x) in o.iter_mut() {
                    // Hooks are rendered when they run, with `this` and `results` (dbt defers
                    // them too).
                    let key = k.trim_start_matches('+').replace('_', "-");
                    if !matches!(
                        key.as_str(),
                        "on-run-start" | "on-run-end" | "pre-hook" | "post-hook"
                    ) {
                        walk(env, x)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut env = Environment::new();
    env.add_function("env_var", env_var_fn);
    walk(&env, v)
}

/// Reads every `{% docs name %}…{% enddocs %}` block of a file (contents trimmed, as dbt).
pub fn docs_blocks(text: &str) -> Vec<(String, String)> {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"(?s)\{%-?\s*docs\s+([A-Za-z_][A-Za-z0-9_]*)\s*-?%\}(.*?)\{%-?\s*enddocs\s*-?%\}",
        )
        .expect("static regex")
    });
    let re = &*RE;
    re.captures_iter(text)
        .map(|c| (c[1].to_string(), c[2].trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(phase: Phase) -> Arc<RenderCtx> {
        Arc::new(RenderCtx {
            phase,
            rec: Mutex::default(),
            resolver: None,
            incremental: false,
            vars: Arc::new(serde_json::Map::new()),
            docs: Arc::default(),
            config: serde_json::Map::new(),
            returns: Mutex::default(),
            query: None,
            statements: Mutex::default(),
            env: HashMap::new(),
        })
    }

    #[test]
    fn parse_records_refs_sources_and_config() {
        let j = Jinja::new(AdapterKind::Postgres, &[]);
        let c = rc(Phase::Parse);
        let out = j
            .render(
                "m.sql",
                "{{ config(materialized='table', tags=['a']) }}select * from {{ ref('x') }} join {{ source('s', 't') }}",
                c.clone(),
                &[],
            )
            .unwrap();
        assert!(out.starts_with("select * from"), "{out}");
        let r = c.rec.lock().unwrap();
        assert_eq!(r.refs, vec![(None, "x".to_string())]);
        assert_eq!(r.sources, vec![("s".to_string(), "t".to_string())]);
        assert_eq!(r.config["materialized"], "table");
    }

    #[test]
    fn project_macros_are_global_and_errors_point_at_the_file() {
        let j = Jinja::new(
            AdapterKind::DuckDb,
            &[(
                "macros/m.sql".into(),
                "{% macro cents(c) %}({{ c }} / 100)::numeric(16, 2){% endmacro %}\n\n{% test positive(model, column_name) %}select 1{% endtest %}".into(),
            )],
        );
        assert!(j.has_macro("cents") && j.has_macro("test_positive"));
        let out = j
            .render(
                "m.sql",
                "select {{ cents('amount') }}",
                rc(Phase::Parse),
                &[],
            )
            .unwrap();
        assert_eq!(out, "select (amount / 100)::numeric(16, 2)");
        let err = j
            .render("models/m.sql", "select\n{{ 1 +  }}", rc(Phase::Parse), &[])
            .unwrap_err();
        assert_eq!((err.file.as_str(), err.line), ("models/m.sql", Some(2)));
    }

    #[test]
    fn errors_in_macros_point_at_the_macro_file() {
        let j = Jinja::new(
            AdapterKind::DuckDb,
            &[
                (
                    "macros/a.sql".into(),
                    "{% macro ok() %}1{% endmacro %}\n{% macro boom(x) %}\n{{ x.missing.deeper }}\n{% endmacro %}".into(),
                ),
                (
                    "macros/b.sql".into(),
                    "\n\n{% macro broken() %}\n{{ 1 + }}\n{% endmacro %}".into(),
                ),
            ],
        );
        // Modules are shared between renders that reach the same macros.
        for _ in 0..2 {
            let out = j.render("m.sql", "select {{ ok() }}", rc(Phase::Parse), &[]);
            assert_eq!(out.unwrap(), "select 1");
        }
        let err = j
            .render(
                "models/x.sql",
                "\n{{ ok() }}{{ boom(none) }}",
                rc(Phase::Parse),
                &[],
            )
            .unwrap_err();
        assert_eq!(
            (err.file.as_str(), err.line),
            ("macros/a.sql", Some(3)),
            "{err}"
        );
        let err = j
            .render("models/y.sql", "{{ broken() }}", rc(Phase::Parse), &[])
            .unwrap_err();
        assert_eq!(
            (err.file.as_str(), err.line),
            ("macros/b.sql", Some(4)),
            "{err}"
        );
        assert!(!err.to_string().contains("__ferry"), "{err}");
        assert!(err.detail.contains("syntax error"), "{err}");
    }

    #[test]
    fn return_gives_the_value_to_the_caller() {
        let j = Jinja::new(
            AdapterKind::Postgres,
            &[(
                "macros/m.sql".into(),
                "{% macro pick(x, y=2) %}\n  ignored text\n  {% if x %}{{ return(x ~ '!') }}{% endif %}\n  {{ return(y) }}\n{% endmacro %}".into(),
            )],
        );
        let out = j
            .render(
                "m.sql",
                "a={{ pick('yes') }} b={{ pick(none, y=7) }}",
                rc(Phase::Parse),
                &[],
            )
            .unwrap();
        assert_eq!(out, "a=yes! b=7");
        let err = j
            .render(
                "models/m.sql",
                "{{ pick(undefined_fn()) }}",
                rc(Phase::Parse),
                &[],
            )
            .unwrap_err();
        assert_eq!(err.file, "models/m.sql");
    }

    #[test]
    fn relations_render_quoted() {
        let r = Relation::new("db", "s\"x", "t", "table");
        assert_eq!(r.to_string(), "\"db\".\"s\"\"x\".\"t\"");
        assert_eq!(Relation::cte("e").to_string(), "__dbt__cte__e");
    }
}
