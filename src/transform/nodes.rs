//! Reading a project into nodes, as `dbt parse` does: models, seeds, sources, singular and
//! generic tests, their configs (dbt_project.yml tree < properties file < `config()` in the
//! file), descriptions and columns, dependencies, and the relation each node builds.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use md5::{Digest as _, Md5};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use super::jinja::{self, Jinja, Phase, Recorded, Relation, RenderCtx, Resolve};
use super::project::{find_files, parse_yaml, DbtProject, Target};
use crate::error::config_error;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// A `.sql` model.
    Model,
    /// A `.csv` seed.
    Seed,
    /// A singular or generic data test.
    Test,
    /// A `{% snapshot %}` block: a slowly changing dimension kept by dbt's strategies.
    Snapshot,
    /// A `.sql` file of `analyses/`: compiled, never run.
    Analysis,
    /// A `unit_tests:` entry: a model run on fixture rows and compared with expected rows.
    UnitTest,
}

impl Resource {
    /// dbt's `resource_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Model => "model",
            Resource::Seed => "seed",
            Resource::Test => "test",
            Resource::Snapshot => "snapshot",
            Resource::Analysis => "analysis",
            Resource::UnitTest => "unit_test",
        }
    }
}

/// A column as the properties files describe it.
#[derive(Debug, Clone, Default)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Description (docs rendered).
    pub description: String,
    /// `data_type`, if given.
    pub data_type: Option<String>,
    /// `meta`.
    pub meta: Value,
}

/// A generic test's identity.
#[derive(Debug, Clone)]
pub struct TestMeta {
    /// `unique`, `not_null`, … (or a project's own generic test).
    pub name: String,
    /// Its arguments as written (`column_name` included, `model` not).
    pub kwargs: Map<String, Value>,
    /// The node it is attached to.
    pub attached: String,
    /// `column_name`, if a column test.
    pub column: Option<String>,
}

/// A model, seed or test.
#[derive(Debug, Clone)]
pub struct Node {
    /// `model.<project>.<name>` etc.
    pub unique_id: String,
    /// Name.
    pub name: String,
    /// Kind.
    pub resource: Resource,
    /// The path inside its resource folder.
    pub path: String,
    /// The path from the project folder.
    pub original_file_path: String,
    /// dbt's fully qualified name.
    pub fqn: Vec<String>,
    /// The file's text (for generic tests, dbt's call expression).
    pub raw_code: String,
    /// Resolved config; unknown keys kept.
    pub config: Map<String, Value>,
    /// Description.
    pub description: String,
    /// The description as written (`{{ doc('x') }}` calls kept), for `doc_blocks`.
    pub raw_description: String,
    /// Documented columns, in file order.
    pub columns: Vec<Column>,
    /// The properties file that described it.
    pub patch_path: Option<String>,
    /// `ref()`s.
    pub refs: Vec<(Option<String>, String)>,
    /// `source()`s.
    pub sources: Vec<(String, String)>,
    /// Unique ids of the nodes and sources it depends on.
    pub depends_on: Vec<String>,
    /// Where it builds: database, schema, identifier.
    pub database: String,
    /// Schema.
    pub schema: String,
    /// Identifier (alias).
    pub alias: String,
    /// For generic tests.
    pub test: Option<TestMeta>,
    /// For unit tests: the tested model's id and the entry (`given`, `expect`, `overrides`).
    pub unit: Option<Arc<(String, Value)>>,
    /// sha256 of the file.
    pub checksum: String,
}

impl Node {
    /// The project or package the node comes from (dbt's `package_name`).
    pub fn package(&self) -> &str {
        self.unique_id.split('.').nth(1).unwrap_or_default()
    }

    /// `config.materialized` (`test`/`seed` for those).
    pub fn materialized(&self) -> &str {
        self.config
            .get("materialized")
            .and_then(Value::as_str)
            .unwrap_or("view")
    }

    /// `config.enabled`.
    pub fn enabled(&self) -> bool {
        self.config
            .get("enabled")
            .and_then(Value::as_bool)
            .unwrap_or(true)
    }

    /// Tags.
    pub fn tags(&self) -> Vec<String> {
        tags_list(self.config.get("tags"))
    }

    /// The relation it builds.
    pub fn relation(&self) -> Relation {
        if self.materialized() == "ephemeral" {
            Relation::cte(&self.alias)
        } else {
            Relation::new(
                &self.database,
                &self.schema,
                &self.alias,
                if self.materialized() == "view" {
                    "view"
                } else {
                    "table"
                },
            )
        }
    }

    /// Short label for messages: `model stg_orders (models/staging/stg_orders.sql)`.
    pub fn label(&self) -> String {
        format!(
            "{} {} ({})",
            self.resource.as_str(),
            self.name,
            self.original_file_path
        )
    }
}

/// A table declared in a `sources:` block.
#[derive(Debug, Clone)]
pub struct Source {
    /// `source.<project>.<source>.<table>`.
    pub unique_id: String,
    /// The source's name.
    pub source_name: String,
    /// The table's name.
    pub name: String,
    /// Relation parts.
    pub database: String,
    /// Schema (default: the source's name).
    pub schema: String,
    /// Identifier (default: the table's name).
    pub identifier: String,
    /// Description.
    pub description: String,
    /// Source description.
    pub source_description: String,
    /// Columns.
    pub columns: Vec<Column>,
    /// The properties file.
    pub original_file_path: String,
    /// fqn.
    pub fqn: Vec<String>,
    /// `loader`.
    pub loader: String,
    /// Config (tags, meta, enabled, unknown keys).
    pub config: Map<String, Value>,
    /// The column (or expression) telling when a row was loaded, for freshness.
    pub loaded_at_field: Option<String>,
    /// `freshness:` (source and table merged).
    pub freshness: Option<super::freshness::Threshold>,
}

impl Source {
    /// Its relation.
    pub fn relation(&self) -> Relation {
        Relation::new(&self.database, &self.schema, &self.identifier, "table")
    }
}

/// The parsed project.
#[derive(Debug)]
pub struct Graph {
    /// Installed packages' folders by name (their seeds are read from there).
    pub package_dirs: HashMap<String, std::path::PathBuf>,
    /// Nodes by unique id (sorted: stable artifacts and order).
    pub nodes: BTreeMap<String, Node>,
    /// Sources by unique id.
    pub sources: BTreeMap<String, Source>,
    /// `{% docs %}` blocks.
    pub docs: Arc<HashMap<String, String>>,
    /// Variables (project's, then `--vars`).
    pub vars: Arc<Map<String, Value>>,
    /// The macro environment.
    pub jinja: Arc<Jinja>,
    /// Ids of disabled nodes (kept out of the graph, as dbt's manifest `disabled`).
    pub disabled: Vec<String>,
}

/// Name lookups for compile-phase `ref()`/`source()`.
#[derive(Debug)]
pub struct Lookup {
    by_name: HashMap<String, (String, Relation)>,
    sources: HashMap<(String, String), (String, Relation)>,
}

impl Resolve for Lookup {
    fn node(&self, _package: Option<&str>, name: &str) -> Option<(String, Relation)> {
        self.by_name.get(name).cloned()
    }
    fn source(&self, source: &str, table: &str) -> Option<(String, Relation)> {
        self.sources
            .get(&(source.to_string(), table.to_string()))
            .cloned()
    }
}

impl Graph {
    /// Lookups for compiling.
    pub fn lookup(&self) -> Arc<Lookup> {
        let by_name = self
            .nodes
            .values()
            .filter(|n| !matches!(n.resource, Resource::Test | Resource::UnitTest))
            .map(|n| (n.name.clone(), (n.unique_id.clone(), n.relation())))
            .collect();
        let sources = self
            .sources
            .values()
            .map(|s| {
                (
                    (s.source_name.clone(), s.name.clone()),
                    (s.unique_id.clone(), s.relation()),
                )
            })
            .collect();
        Arc::new(Lookup { by_name, sources })
    }

    /// A render context for a node.
    pub fn render_ctx(
        &self,
        phase: Phase,
        resolver: Option<Arc<dyn Resolve>>,
        incremental: bool,
        config: Map<String, Value>,
    ) -> Arc<RenderCtx> {
        self.render_ctx_with(phase, resolver, incremental, config, None)
    }

    /// [`Graph::render_ctx`] with the warehouse for `run_query` and `statement`.
    pub fn render_ctx_with(
        &self,
        phase: Phase,
        resolver: Option<Arc<dyn Resolve>>,
        incremental: bool,
        config: Map<String, Value>,
        query: Option<Arc<dyn jinja::Query>>,
    ) -> Arc<RenderCtx> {
        Arc::new(RenderCtx {
            phase,
            rec: Mutex::new(Recorded::default()),
            resolver,
            incremental,
            vars: self.vars.clone(),
            docs: self.docs.clone(),
            config,
            returns: Mutex::default(),
            query,
            statements: Mutex::default(),
            env: HashMap::new(),
        })
    }
}

/// Config keys whose values accumulate down the tree instead of replacing.
fn merge_config(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        let k = k.trim_start_matches('+');
        match k {
            "tags" => {
                let mut t = tags_list(into.get("tags"));
                for x in tags_list(Some(v)) {
                    if !t.contains(&x) {
                        t.push(x);
                    }
                }
                into.insert("tags".into(), json!(t));
            }
            "pre-hook" | "pre_hook" | "post-hook" | "post_hook" => {
                // Hooks of every level run, outermost first (dbt's `pre-hook` list).
                let key = k.replace('_', "-");
                let mut list = match into.remove(&key) {
                    Some(Value::Array(a)) => a,
                    Some(Value::Null) | None => Vec::new(),
                    Some(one) => vec![one],
                };
                match v {
                    Value::Array(a) => list.extend(a.iter().cloned()),
                    Value::Null => {}
                    one => list.push(one.clone()),
                }
                into.insert(key, Value::Array(list));
            }
            "meta" => {
                let mut m = into
                    .get("meta")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                if let Value::Object(o) = v {
                    m.extend(o.clone());
                }
                into.insert("meta".into(), Value::Object(m));
            }
            _ => {
                into.insert(k.to_string(), v.clone());
            }
        }
    }
}

pub fn tags_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Config names dbt accepts without a `+` in dbt_project.yml.
const CONFIG_KEYS: &[&str] = &[
    "pre-hook",
    "post-hook",
    "materialized",
    "schema",
    "database",
    "alias",
    "tags",
    "enabled",
    "meta",
    "docs",
    "persist_docs",
    "full_refresh",
    "unique_key",
    "incremental_strategy",
    "on_schema_change",
    "pre-hook",
    "post-hook",
    "column_types",
    "quote_columns",
    "delimiter",
    "severity",
    "store_failures",
    "where",
    "limit",
    "warn_if",
    "error_if",
    "grants",
    "contract",
    "access",
    "group",
    "packages",
    "sql_header",
    "quoting",
    "bind",
];

/// The config a dbt_project.yml tree gives the node at `path` (fqn without the name's
/// package, e.g. `["staging", "stg_orders"]`): every level on the way down applies.
fn tree_config(tree: &Value, project: &str, path: &[String]) -> Map<String, Value> {
    fn level(v: &Value) -> Map<String, Value> {
        let mut out = Map::new();
        if let Value::Object(o) = v {
            for (k, x) in o {
                if k.starts_with('+') || (CONFIG_KEYS.contains(&k.as_str()) && !x.is_object()) {
                    out.insert(k.trim_start_matches('+').to_string(), x.clone());
                } else if CONFIG_KEYS.contains(&k.as_str()) && k == "meta" {
                    out.insert(k.clone(), x.clone());
                }
            }
        }
        out
    }
    let mut cfg = Map::new();
    merge_config(&mut cfg, &level(tree));
    let Some(mut cur) = tree.get(project) else {
        return cfg;
    };
    merge_config(&mut cfg, &level(cur));
    for part in path {
        match cur.get(part) {
            Some(next) if next.is_object() => {
                cur = next;
                merge_config(&mut cfg, &level(cur));
            }
            _ => break,
        }
    }
    cfg
}

/// One entry of a properties file (`models:`, `seeds:`), as found.
#[derive(Debug, Clone)]
struct Patch {
    file: String,
    body: Map<String, Value>,
}

fn sha256_hex(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn md5_hex(text: &str) -> String {
    let d = Md5::digest(text.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// dbt's name for a generic test: `<test>_<model>_<args…>`, cut to 30 characters plus an md5
/// when it would reach 64 (dbt's `synthesize_generic_test_names`). Returns (name, alias).
pub fn generic_test_name(
    test: &str,
    target: &str,
    kwargs: &Map<String, Value>,
) -> (String, String) {
    let mut keys: Vec<&String> = kwargs.keys().filter(|k| *k != "model").collect();
    keys.sort();
    let mut flat = Vec::new();
    for k in keys {
        match &kwargs[k] {
            Value::Object(o) => flat.extend(o.values().map(py_str)),
            Value::Array(a) => flat.extend(a.iter().map(py_str)),
            v => flat.push(py_str(v)),
        }
    }
    static CLEAN: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new("[^0-9a-zA-Z_]+").expect("static regex"));
    let clean = &*CLEAN;
    let unique = flat
        .iter()
        .map(|a| clean.replace_all(a, "_").into_owned())
        .collect::<Vec<_>>()
        .join("__");
    let ident = format!("{test}_{target}");
    let full = format!("{ident}_{unique}");
    let short = if full.len() >= 64 {
        let cut: String = ident.chars().take(30).collect();
        format!("{cut}_{}", md5_hex(&full))
    } else {
        full.clone()
    };
    (full, short)
}

/// A value as Python's `str()` shows it (test names are built from these).
fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn py_repr(v: &Value) -> String {
    match v {
        Value::String(s) => py_quote(s),
        other => py_str(other),
    }
}

/// A string as Python's `repr()` writes it.
fn py_quote(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// `repr()` of dbt's hashing form of a value: dicts with sorted keys, lists kept, every scalar
/// turned into its `str()`.
fn hashed_repr(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            format!(
                "{{{}}}",
                keys.iter()
                    .map(|k| format!("{}: {}", py_quote(k), hashed_repr(&o[*k])))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(hashed_repr).collect::<Vec<_>>().join(", ")
        ),
        other => py_quote(&py_str(other)),
    }
}

/// The last 10 hex digits of md5(name + repr(hashing form of test_metadata)), as dbt 1.x makes
/// a generic test's unique id.
pub fn test_id_suffix(name: &str, test_metadata: &Value) -> String {
    let h = md5_hex(&format!("{name}{}", hashed_repr(test_metadata)));
    h[h.len() - 10..].to_string()
}

/// Options for parsing.
#[derive(Debug, Clone, Default)]
pub struct ParseOptions {
    /// `--vars` (YAML mapping).
    pub vars: Map<String, Value>,
}

/// Reads the whole project. Nothing connects to the warehouse.
///
/// # Errors
/// A config error (exit 2) naming the file, line and node for anything dbt would refuse:
/// Jinja syntax errors, unknown refs or sources, duplicate names, bad properties files.
pub fn parse(project: &DbtProject, target: &Target, opts: &ParseOptions) -> anyhow::Result<Graph> {
    let dir = &project.dir;
    let read = |p: &Path| -> anyhow::Result<String> {
        std::fs::read_to_string(p)
            .map_err(|e| config_error(format!("cannot read {}: {e}", p.display())))
    };
    // Macros: macro paths, and generic tests under the test paths.
    let mut macro_files = Vec::new();
    for f in find_files(dir, &project.macro_paths, &[".sql"]) {
        macro_files.push((f.original.clone(), read(&f.abs)?));
    }
    for f in find_files(dir, &project.test_paths, &[".sql"]) {
        if f.inner.starts_with("generic/") {
            macro_files.push((f.original.clone(), read(&f.abs)?));
        }
    }
    // Installed packages (`ferry transform deps`): their macros in their namespaces.
    let packages = installed_packages(project)?;
    let mut pkgs = jinja::Packages {
        root: project.name.clone(),
        ..Default::default()
    };
    for p in &packages {
        let mut files = Vec::new();
        for f in find_files(&p.dir, &p.macro_paths, &[".sql"]) {
            files.push((f.original.clone(), read(&f.abs)?));
        }
        for f in find_files(&p.dir, &p.test_paths, &[".sql"]) {
            if f.inner.starts_with("generic/") {
                files.push((f.original.clone(), read(&f.abs)?));
            }
        }
        pkgs.macros.push((p.name.clone(), files));
    }
    for d in project
        .raw
        .get("dispatch")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(ns), Some(order)) = (
            d.get("macro_namespace").and_then(Value::as_str),
            d.get("search_order").and_then(Value::as_array),
        ) {
            pkgs.dispatch.insert(
                ns.to_string(),
                order
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
            );
        }
    }
    let jinja = Arc::new(Jinja::with_packages(target.kind, &macro_files, &pkgs));

    let mut docs = HashMap::new();
    for p in packages.iter().chain(std::iter::once(project)) {
        for f in find_files(&p.dir, &p.docs_paths, &[".md"]) {
            for (name, body) in jinja::docs_blocks(&read(&f.abs)?) {
                docs.insert(name, body);
            }
        }
    }
    let docs = Arc::new(docs);
    let mut vars = project.vars.clone();
    vars.extend(opts.vars.clone());
    let vars = Arc::new(vars);

    let mut graph = Graph {
        package_dirs: packages
            .iter()
            .map(|p| (p.name.clone(), p.dir.clone()))
            .collect(),
        nodes: BTreeMap::new(),
        sources: BTreeMap::new(),
        docs,
        vars,
        jinja: jinja.clone(),
        disabled: Vec::new(),
    };
    let target_ctx = target_value(target);

    for p in std::iter::once(project).chain(packages.iter()) {
        parse_project(&mut graph, project, p, target, &target_ctx)?;
    }

    resolve_dependencies(&mut graph)?;
    Ok(graph)
}

/// Reads one project's resources into the graph: the root project, or an installed package
/// (`root` is then the project that installed it: its dbt_project.yml config trees apply to
/// the package's nodes over the package's own, and the package's own macros come first for
/// its files).
fn parse_project(
    graph: &mut Graph,
    root: &DbtProject,
    project: &DbtProject,
    target: &Target,
    target_ctx: &minijinja::Value,
) -> anyhow::Result<()> {
    let dir = &project.dir;
    let is_package = project.name != root.name;
    let read = |p: &Path| -> anyhow::Result<String> {
        std::fs::read_to_string(p)
            .map_err(|e| config_error(format!("cannot read {}: {e}", p.display())))
    };
    let jinja = graph.jinja.clone();
    let localize = |text: String| -> String {
        if is_package {
            jinja.localize(&text, &project.name)
        } else {
            text
        }
    };
    let tree = |kind: fn(&DbtProject) -> &Value, path: &[String]| -> Map<String, Value> {
        let mut c = tree_config(kind(project), &project.name, path);
        if is_package {
            merge_config(&mut c, &tree_config(kind(root), &project.name, path));
        }
        c
    };
    // Properties files.
    let mut model_patches: HashMap<String, Patch> = HashMap::new();
    let mut seed_patches: HashMap<String, Patch> = HashMap::new();
    let mut source_blocks: Vec<(String, Map<String, Value>)> = Vec::new();
    let roots: Vec<String> = project
        .model_paths
        .iter()
        .chain(&project.seed_paths)
        .chain(&project.test_paths)
        .chain(&project.analysis_paths)
        .chain(&project.snapshot_paths)
        .cloned()
        .collect();
    let yaml_files = find_files(dir, &roots, &[".yml", ".yaml"]);
    // Snapshots defined in YAML (dbt 1.9): (file, name, relation expression, config).
    let mut yaml_snapshots: Vec<(super::project::Found, String, String, Map<String, Value>)> =
        Vec::new();
    // `unit_tests:` entries (dbt 1.8), built once the models are known.
    let mut unit_specs: Vec<(super::project::Found, Value)> = Vec::new();
    let docs = super::par_map(yaml_files.iter().collect(), |f| {
        parse_yaml(&read(&f.abs)?, &f.abs)
    });
    for (f, doc) in yaml_files.iter().zip(docs) {
        let doc = doc?;
        let Some(o) = doc.as_object() else { continue };
        for entry in o
            .get("unit_tests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            unit_specs.push((f.clone(), entry.clone()));
        }
        for entry in o
            .get("snapshots")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(name), Some(relation)) = (
                entry.get("name").and_then(Value::as_str),
                entry.get("relation").and_then(Value::as_str),
            ) else {
                continue;
            };
            let config = entry
                .get("config")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            yaml_snapshots.push((f.clone(), name.to_string(), relation.to_string(), config));
        }
        for (section, patches) in [("models", &mut model_patches), ("seeds", &mut seed_patches)] {
            for entry in o
                .get(section)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(body) = entry.as_object() else {
                    return Err(config_error(format!(
                        "{}: every entry under `{section}:` must be a mapping with a `name`",
                        f.original
                    )));
                };
                let Some(name) = body.get("name").and_then(Value::as_str) else {
                    return Err(config_error(format!(
                        "{}: an entry under `{section}:` has no `name`",
                        f.original
                    )));
                };
                if let Some(prev) = patches.get(name) {
                    return Err(config_error(format!(
                        "{section} {name:?} is described twice: in {} and in {}",
                        prev.file, f.original
                    )));
                }
                patches.insert(
                    name.to_string(),
                    Patch {
                        file: f.original.clone(),
                        body: body.clone(),
                    },
                );
            }
        }
        for entry in o
            .get("sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(body) = entry.as_object() {
                source_blocks.push((f.original.clone(), body.clone()));
            }
        }
    }

    // Sources.
    let mut generic_specs: Vec<GenericSpec> = Vec::new();
    let mut new_sources = Vec::new();
    for (file, body) in &source_blocks {
        let sname = body
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| config_error(format!("{file}: a source has no `name`")))?;
        let prop = |v: Option<&Value>, default: &str| -> anyhow::Result<String> {
            render_prop(
                &*graph,
                v.and_then(Value::as_str).unwrap_or(default),
                file,
                target_ctx,
            )
        };
        let sschema = prop(body.get("schema"), sname)?;
        let sdb = prop(body.get("database"), &target.database)?;
        let sdesc = render_description(&*graph, body.get("description"), file)?;
        for t in body
            .get("tables")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(t) = t.as_object() else { continue };
            let tname = t.get("name").and_then(Value::as_str).ok_or_else(|| {
                config_error(format!("{file}: a table of source {sname} has no `name`"))
            })?;
            let unique_id = format!("source.{}.{sname}.{tname}", project.name);
            let mut config = tree(|p| &p.sources, &[sname.to_string(), tname.to_string()]);
            // dbt_project.yml's `+freshness` counts only when the properties set none.
            let project_freshness = config.get("freshness").cloned();
            for c in [body.get("config"), t.get("config")].into_iter().flatten() {
                if let Value::Object(c) = c {
                    merge_config(&mut config, c);
                }
            }
            let columns = read_columns(&*graph, t.get("columns"), file)?;
            let mut fqn = vec![project.name.clone()];
            fqn.extend(dirs_of(file).into_iter().skip(1));
            fqn.push(sname.to_string());
            fqn.push(tname.to_string());
            let loaded_at_field = [
                t.get("loaded_at_field"),
                config.get("loaded_at_field"),
                body.get("loaded_at_field"),
            ]
            .into_iter()
            .flatten()
            .find_map(Value::as_str)
            .map(str::to_string);
            let cfg = |o: &Map<String, Value>| {
                o.get("config")
                    .and_then(Value::as_object)
                    .and_then(|c| c.get("freshness"))
                    .cloned()
            };
            let (source_cfg, table_cfg) = (cfg(body), cfg(t));
            let freshness = super::freshness::resolve(
                [
                    body.get("freshness"),
                    source_cfg.as_ref(),
                    t.get("freshness"),
                    table_cfg.as_ref(),
                ],
                project_freshness.as_ref(),
                &format!("{file}: source {sname}.{tname}"),
            )?;
            let src = Source {
                unique_id: unique_id.clone(),
                source_name: sname.to_string(),
                name: tname.to_string(),
                database: prop(t.get("database"), &sdb)?,
                schema: prop(t.get("schema"), &sschema)?,
                identifier: prop(t.get("identifier"), tname)?,
                description: render_description(&*graph, t.get("description"), file)?,
                source_description: sdesc.clone(),
                columns,
                original_file_path: file.clone(),
                fqn,
                loader: body
                    .get("loader")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                loaded_at_field,
                freshness,
                config,
            };
            collect_tests(
                &mut generic_specs,
                &format!("{sname}_{tname}"),
                &unique_id,
                TestTarget::Source(sname.to_string(), tname.to_string()),
                t,
                file,
            )?;
            new_sources.push(src);
        }
    }

    for src in new_sources {
        graph.sources.insert(src.unique_id.clone(), src);
    }

    // Models: read and configured in order, rendered on all cores.
    let mut names: HashMap<String, String> = HashMap::new();
    let model_files = find_files(dir, &project.model_paths, &[".sql"]);
    let mut inputs = Vec::new();
    for f in &model_files {
        let name = stem_of(&f.inner);
        let raw = localize(read(&f.abs)?);
        let unique_id = format!("model.{}.{name}", project.name);
        if let Some(prev) = names.insert(name.clone(), f.original.clone()) {
            return Err(config_error(format!(
                "two models are named {name:?}: {prev} and {}; dbt requires unique model names",
                f.original
            )));
        }
        let mut fqn = vec![project.name.clone()];
        fqn.extend(dirs_of(&f.inner));
        fqn.push(name.clone());
        let mut config = Map::new();
        config.insert("materialized".into(), json!("view"));
        merge_config(&mut config, &tree(|p| &p.models, &fqn[1..]));
        let patch = model_patches.remove(&name);
        inputs.push((
            NodeInput {
                unique_id,
                name,
                resource: Resource::Model,
                found: f,
                fqn,
                raw,
                config,
                patch: None,
            },
            patch,
        ));
    }
    let built = super::par_map(inputs, |(mut input, patch)| {
        input.patch = patch.as_ref();
        let mut specs = Vec::new();
        build_node(&*graph, target_ctx, input, &mut specs).map(|n| (n, specs))
    });
    for b in built {
        let (node, specs) = b?;
        generic_specs.extend(specs);
        if node.enabled() {
            graph.nodes.insert(node.unique_id.clone(), node);
        } else {
            graph.disabled.push(node.unique_id);
        }
    }

    // Seeds.
    for f in find_files(dir, &project.seed_paths, &[".csv"]) {
        let name = stem_of(&f.inner);
        let unique_id = format!("seed.{}.{name}", project.name);
        if let Some(prev) = names.insert(name.clone(), f.original.clone()) {
            return Err(config_error(format!(
                "{prev} and {} have the same name {name:?}; ref() could not tell them apart",
                f.original
            )));
        }
        let mut fqn = vec![project.name.clone()];
        fqn.extend(dirs_of(&f.inner));
        fqn.push(name.clone());
        let mut config = Map::new();
        config.insert("materialized".into(), json!("seed"));
        merge_config(&mut config, &tree(|p| &p.seeds, &fqn[1..]));
        let patch = seed_patches.remove(&name);
        // dbt: sha256 of the stripped file, or the path for seeds over 1 MiB.
        let size = std::fs::metadata(&f.abs).map(|m| m.len()).unwrap_or(0);
        let checksum = if size <= 1 << 20 {
            sha256_hex(read(&f.abs)?.trim())
        } else {
            format!("path:{}", f.original)
        };
        let node = build_node(
            &*graph,
            target_ctx,
            NodeInput {
                unique_id,
                name,
                resource: Resource::Seed,
                found: &f,
                fqn,
                raw: String::new(),
                config,
                patch: patch.as_ref(),
            },
            &mut generic_specs,
        )?;
        let mut node = node;
        node.checksum = checksum;
        if node.enabled() {
            graph.nodes.insert(node.unique_id.clone(), node);
        } else {
            graph.disabled.push(node.unique_id);
        }
    }
    // Snapshots: each `{% snapshot name %}…{% endsnapshot %}` block of the snapshot folders,
    // then the YAML ones (`select * from` their relation).
    let mut snapshots: Vec<(super::project::Found, String, String, Map<String, Value>)> =
        Vec::new();
    for f in find_files(dir, &project.snapshot_paths, &[".sql"]) {
        let text = localize(read(&f.abs)?);
        for (name, body) in snapshot_blocks(&text, &f.original)? {
            snapshots.push((f.clone(), name, body, Map::new()));
        }
    }
    for (f, name, relation, config) in yaml_snapshots {
        snapshots.push((
            f,
            name,
            format!("select * from {{{{ {relation} }}}}"),
            config,
        ));
    }
    for (f, name, raw, yaml_config) in snapshots {
        let unique_id = format!("snapshot.{}.{name}", project.name);
        if let Some(prev) = names.insert(name.clone(), f.original.clone()) {
            return Err(config_error(format!(
                "{prev} and {} have the same name {name:?}; ref() could not tell them apart",
                f.original
            )));
        }
        let mut fqn = vec![project.name.clone()];
        fqn.extend(dirs_of(&f.inner));
        fqn.push(name.clone());
        let mut config = Map::new();
        config.insert("materialized".into(), json!("snapshot"));
        merge_config(&mut config, &tree(|p| &p.snapshots, &fqn[1..]));
        merge_config(&mut config, &yaml_config);
        let mut node = build_node(
            &*graph,
            target_ctx,
            NodeInput {
                unique_id,
                name,
                resource: Resource::Snapshot,
                found: &f,
                fqn,
                raw,
                config,
                patch: None,
            },
            &mut generic_specs,
        )?;
        // The legacy `target_schema`/`target_database` name the relation exactly (no
        // generate_schema_name), as in dbt.
        if let Some(s) = node.config.get("target_schema").and_then(Value::as_str) {
            node.schema = s.to_string();
        }
        if let Some(d) = node.config.get("target_database").and_then(Value::as_str) {
            node.database = d.to_string();
        }
        if f.original.ends_with(".yml") || f.original.ends_with(".yaml") {
            // dbt's path of a YAML snapshot: `<file>/<name>.sql`.
            let file_name = f.inner.rsplit('/').next().unwrap_or(&f.inner);
            node.path = format!("{file_name}/{}.sql", node.name);
        }
        if node.enabled() {
            graph.nodes.insert(node.unique_id.clone(), node);
        } else {
            graph.disabled.push(node.unique_id);
        }
    }

    for (f, entry) in unit_specs {
        let node = unit_test_node(&*graph, project, &f, &entry)?;
        if node.enabled() {
            graph.nodes.insert(node.unique_id.clone(), node);
        }
    }

    // Analyses: compiled by `compile` (as dbt does), never run.
    for f in find_files(dir, &project.analysis_paths, &[".sql"]) {
        let name = stem_of(&f.inner);
        let raw = localize(read(&f.abs)?);
        let mut fqn = vec![project.name.clone()];
        fqn.push("analysis".into());
        fqn.extend(dirs_of(&f.inner));
        fqn.push(name.clone());
        let mut config = Map::new();
        config.insert("materialized".into(), json!("view"));
        let node = build_node(
            &*graph,
            target_ctx,
            NodeInput {
                unique_id: format!("analysis.{}.{name}", project.name),
                name,
                resource: Resource::Analysis,
                found: &f,
                fqn,
                raw,
                config,
                patch: None,
            },
            &mut generic_specs,
        )?;
        if node.enabled() {
            graph.nodes.insert(node.unique_id.clone(), node);
        }
    }

    for (name, p) in model_patches.iter().chain(seed_patches.iter()) {
        tracing::warn!(file = %p.file, "{name:?} is described in {} but there is no such model or seed; ignored.", p.file);
    }

    // Singular tests.
    for f in find_files(dir, &project.test_paths, &[".sql"]) {
        if f.inner.starts_with("generic/") {
            continue;
        }
        let name = stem_of(&f.inner);
        let raw = localize(read(&f.abs)?);
        let mut fqn = vec![project.name.clone()];
        fqn.extend(dirs_of(&f.inner));
        fqn.push(name.clone());
        let mut config = Map::new();
        config.insert("materialized".into(), json!("test"));
        config.insert("severity".into(), json!("ERROR"));
        config.insert("schema".into(), json!("dbt_test__audit"));
        merge_config(&mut config, &tree(|p| &p.tests, &fqn[1..]));
        let node = build_node(
            &*graph,
            target_ctx,
            NodeInput {
                unique_id: format!("test.{}.{name}", project.name),
                name,
                resource: Resource::Test,
                found: &f,
                fqn,
                raw,
                config,
                patch: None,
            },
            &mut generic_specs,
        )?;
        graph.nodes.insert(node.unique_id.clone(), node);
    }

    // Generic tests.
    let built = super::par_map(generic_specs, |spec| {
        build_generic_test(&*graph, project, &spec)
    });
    for b in built {
        let mut node = b?;
        // Where dbt would store failures: `<target schema>_dbt_test__audit`.
        node.database = target.database.clone();
        node.schema = format!("{}_dbt_test__audit", target.schema);
        if let Some(prev) = graph.nodes.get(&node.unique_id) {
            return Err(config_error(format!(
                "two tests would both be named {} ({} and {}); give one a `name:`",
                node.name, prev.original_file_path, node.original_file_path
            )));
        }
        graph.nodes.insert(node.unique_id.clone(), node);
    }
    Ok(())
}

/// A `unit_tests:` entry as a node: it depends on what its `given` inputs name (so `build`
/// runs it after them), and remembers the tested model and the entry.
fn unit_test_node(
    graph: &Graph,
    project: &DbtProject,
    f: &super::project::Found,
    entry: &Value,
) -> anyhow::Result<Node> {
    let at = |what: &str| config_error(format!("{}: a unit test {what}", f.original));
    let name = entry
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| at("has no `name`"))?;
    let model = entry
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| at(&format!("({name}) names no `model`")))?;
    let model_id = format!("model.{}.{model}", project.name);
    let tested = graph.nodes.get(&model_id).ok_or_else(|| {
        config_error(format!(
            "{}: unit test {name} tests the model {model}, which this project does not have",
            f.original
        ))
    })?;
    static INPUT: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r#"^\s*(ref|source)\(\s*['"]([^'"]+)['"]\s*(?:,\s*['"]([^'"]+)['"]\s*)?\)\s*$"#,
        )
        .expect("static regex")
    });
    let (mut refs, mut sources) = (Vec::new(), Vec::new());
    for g in entry
        .get("given")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let input = g.get("input").and_then(Value::as_str).unwrap_or_default();
        let c = INPUT.captures(input).ok_or_else(|| {
            config_error(format!(
                "{}: unit test {name}: input {input:?} is not ref('…') or source('…', '…')",
                f.original
            ))
        })?;
        match (&c[1], c.get(3)) {
            ("ref", None) => refs.push((None, c[2].to_string())),
            ("ref", Some(n)) => refs.push((Some(c[2].to_string()), n.as_str().to_string())),
            (_, Some(t)) => sources.push((c[2].to_string(), t.as_str().to_string())),
            _ => {
                return Err(config_error(format!(
                    "{}: unit test {name}: source() takes a source and a table",
                    f.original
                )))
            }
        }
    }
    let mut config = Map::new();
    if let Some(Value::Object(c)) = entry.get("config") {
        merge_config(&mut config, c);
    }
    Ok(Node {
        unique_id: format!("unit_test.{}.{model}.{name}", project.name),
        name: name.to_string(),
        resource: Resource::UnitTest,
        path: f.inner.clone(),
        original_file_path: f.original.clone(),
        fqn: vec![project.name.clone(), model.to_string(), name.to_string()],
        raw_code: String::new(),
        config,
        description: entry
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        raw_description: String::new(),
        columns: Vec::new(),
        patch_path: None,
        refs,
        sources,
        depends_on: Vec::new(),
        database: tested.database.clone(),
        schema: tested.schema.clone(),
        alias: name.to_string(),
        test: None,
        unit: Some(Arc::new((model_id, entry.clone()))),
        checksum: String::new(),
    })
}

/// The packages installed under the project's `packages-install-path`, by name.
fn installed_packages(project: &DbtProject) -> anyhow::Result<Vec<DbtProject>> {
    let dir = super::deps::install_path(project);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.join("dbt_project.yml").is_file() {
            let p = DbtProject::load(&path)?;
            if p.name != project.name {
                out.push(p);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn stem_of(inner: &str) -> String {
    let file = inner.rsplit('/').next().unwrap_or(inner);
    file.rsplit_once('.').map_or(file, |(s, _)| s).to_string()
}

fn dirs_of(inner: &str) -> Vec<String> {
    let mut parts: Vec<String> = inner.split('/').map(str::to_string).collect();
    parts.pop();
    parts
}

/// `target` as Jinja sees it: the output's fields without secrets, plus name/type/schema.
pub fn target_value(target: &Target) -> minijinja::Value {
    let mut m = Map::new();
    for (k, v) in &target.fields {
        if !matches!(k.as_str(), "password" | "pass" | "token") {
            m.insert(k.clone(), v.clone());
        }
    }
    m.insert("name".into(), json!(target.name));
    m.insert("target_name".into(), json!(target.name));
    m.insert("type".into(), json!(target.kind.as_str()));
    m.insert("schema".into(), json!(target.schema));
    m.insert("database".into(), json!(target.database));
    m.insert("threads".into(), json!(target.threads));
    m.insert("profile_name".into(), json!(target.profile_name));
    jinja::from_json(&Value::Object(m))
}

/// A properties-file value that may hold Jinja (`schema: "{{ target.schema }}"`).
fn render_prop(
    graph: &Graph,
    s: &str,
    file: &str,
    target_ctx: &minijinja::Value,
) -> anyhow::Result<String> {
    if !s.contains("{{") && !s.contains("{%") {
        return Ok(s.to_string());
    }
    let rc = graph.render_ctx(Phase::Parse, None, false, Map::new());
    graph
        .jinja
        .render(file, s, rc, &[("target", target_ctx.clone())])
        .map_err(|e| config_error(format!("rendering {s:?}: {e}")))
}

fn render_description(graph: &Graph, v: Option<&Value>, file: &str) -> anyhow::Result<String> {
    let Some(Value::String(s)) = v else {
        return Ok(String::new());
    };
    if !s.contains("{{") && !s.contains("{%") {
        return Ok(s.clone());
    }
    let rc = graph.render_ctx(Phase::Parse, None, false, Map::new());
    graph
        .jinja
        .render(file, s, rc, &[])
        .map_err(|e| config_error(format!("in a description: {e}")))
}

fn read_columns(graph: &Graph, v: Option<&Value>, file: &str) -> anyhow::Result<Vec<Column>> {
    let mut out = Vec::new();
    for c in v.and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = c.get("name").and_then(Value::as_str) else {
            return Err(config_error(format!("{file}: a column has no `name`")));
        };
        out.push(Column {
            name: name.to_string(),
            description: render_description(graph, c.get("description"), file)?,
            data_type: c
                .get("data_type")
                .and_then(Value::as_str)
                .map(str::to_string),
            meta: c.get("meta").cloned().unwrap_or_else(|| json!({})),
        });
    }
    Ok(out)
}

struct NodeInput<'a> {
    unique_id: String,
    name: String,
    resource: Resource,
    found: &'a super::project::Found,
    fqn: Vec<String>,
    raw: String,
    config: Map<String, Value>,
    patch: Option<&'a Patch>,
}

fn build_node(
    graph: &Graph,
    target_ctx: &minijinja::Value,
    input: NodeInput<'_>,
    generic_specs: &mut Vec<GenericSpec>,
) -> anyhow::Result<Node> {
    let NodeInput {
        unique_id,
        name,
        resource,
        found,
        fqn,
        raw,
        mut config,
        patch,
    } = input;
    let mut description = String::new();
    let mut raw_description = String::new();
    let mut columns = Vec::new();
    if let Some(p) = patch {
        if let Some(Value::Object(c)) = p.body.get("config") {
            merge_config(&mut config, c);
        }
        description = render_description(graph, p.body.get("description"), &p.file)?;
        raw_description = p
            .body
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        columns = read_columns(graph, p.body.get("columns"), &p.file)?;
        if let Some(Value::Object(d)) = p.body.get("docs") {
            config.insert("docs".into(), Value::Object(d.clone()));
        }
        if let Some(Value::Object(m)) = p.body.get("meta") {
            merge_config(
                &mut config,
                &Map::from_iter([("meta".to_string(), Value::Object(m.clone()))]),
            );
        }
    }
    // Parse render: dependencies and in-file config.
    let mut refs = Vec::new();
    let mut sources = Vec::new();
    if resource != Resource::Seed {
        let rc = graph.render_ctx(Phase::Parse, None, false, config.clone());
        let this = minijinja::Value::from_object(Relation {
            database: None,
            schema: None,
            identifier: name.clone(),
            kind: "table",
        });
        graph
            .jinja
            .render(
                &found.original,
                &raw,
                rc.clone(),
                &[("target", target_ctx.clone()), ("this", this)],
            )
            .map_err(|e| {
                config_error(format!(
                    "Compilation Error in {} {name}: {e}",
                    resource.as_str()
                ))
            })?;
        let rec = rc.rec.lock().unwrap_or_else(|p| p.into_inner());
        merge_config(&mut config, &rec.config);
        refs = rec.refs.clone();
        sources = rec.sources.clone();
    }
    let custom_schema = config
        .get("schema")
        .and_then(Value::as_str)
        .map(str::to_string);
    let custom_alias = config
        .get("alias")
        .and_then(Value::as_str)
        .map(str::to_string);
    let custom_db = config
        .get("database")
        .and_then(Value::as_str)
        .map(str::to_string);
    let tname = target_ctx
        .get_attr("schema")
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let tdb = target_ctx
        .get_attr("database")
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let node_value = jinja::from_json(&json!({
        "name": name, "unique_id": unique_id, "resource_type": resource.as_str(),
        "fqn": fqn, "path": found.inner, "original_file_path": found.original,
        "config": config,
    }));
    let schema = generate(
        graph,
        target_ctx,
        "generate_schema_name",
        custom_schema.as_deref(),
        &node_value,
        || match &custom_schema {
            None => tname.clone(),
            Some(c) => format!("{tname}_{}", c.trim()),
        },
    )?;
    let alias = generate(
        graph,
        target_ctx,
        "generate_alias_name",
        custom_alias.as_deref(),
        &node_value,
        || {
            custom_alias
                .as_deref()
                .map_or_else(|| name.clone(), |a| a.trim().to_string())
        },
    )?;
    let database = generate(
        graph,
        target_ctx,
        "generate_database_name",
        custom_db.as_deref(),
        &node_value,
        || {
            custom_db
                .as_deref()
                .map_or_else(|| tdb.clone(), |a| a.trim().to_string())
        },
    )?;
    if let Some(p) = patch {
        let target = TestTarget::Node(name.clone());
        collect_tests(generic_specs, &name, &unique_id, target, &p.body, &p.file)?;
    }
    Ok(Node {
        checksum: sha256_hex(raw.trim()),
        unique_id,
        name,
        resource,
        path: found.inner.clone(),
        original_file_path: found.original.clone(),
        fqn,
        raw_code: raw.trim().to_string(),
        config,
        description,
        raw_description,
        columns,
        patch_path: patch.map(|p| p.file.clone()),
        refs,
        sources,
        depends_on: Vec::new(),
        database,
        schema,
        alias,
        test: None,
        unit: None,
    })
}

/// Runs a project's own `generate_*_name` macro, or dbt's default rule in Rust (fast path).
fn generate(
    graph: &Graph,
    target_ctx: &minijinja::Value,
    macro_name: &str,
    custom: Option<&str>,
    node: &minijinja::Value,
    default: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    if !graph.jinja.has_macro(macro_name) {
        return Ok(default());
    }
    let rc = graph.render_ctx(Phase::Parse, None, false, Map::new());
    let src = format!("{{{{ {macro_name}(__custom, __node) }}}}");
    let out = graph
        .jinja
        .render(
            macro_name,
            &src,
            rc,
            &[
                ("target", target_ctx.clone()),
                (
                    "__custom",
                    minijinja::Value::from(custom.map(str::to_string)),
                ),
                ("__node", node.clone()),
            ],
        )
        .map_err(|e| config_error(format!("in {macro_name}: {e}")))?;
    Ok(out.trim().to_string())
}

#[derive(Debug, Clone)]
enum TestTarget {
    Node(String),
    Source(String, String),
}

/// A generic test as declared in a properties file.
#[derive(Debug, Clone)]
struct GenericSpec {
    test: String,
    target_name: String,
    attached: String,
    target: TestTarget,
    column: Option<String>,
    args: Map<String, Value>,
    config: Map<String, Value>,
    custom_name: Option<String>,
    file: String,
}

/// Keys of a test entry that are config, not arguments (dbt accepts both places).
const TEST_CONFIG_KEYS: &[&str] = &[
    "severity",
    "where",
    "limit",
    "warn_if",
    "error_if",
    "tags",
    "enabled",
    "store_failures",
    "meta",
    "fail_calc",
    "alias",
    "schema",
    "database",
];

fn collect_tests(
    out: &mut Vec<GenericSpec>,
    target_name: &str,
    attached: &str,
    target: TestTarget,
    body: &Map<String, Value>,
    file: &str,
) -> anyhow::Result<()> {
    let mut lists: Vec<(Option<String>, &Value)> = Vec::new();
    for key in ["data_tests", "tests"] {
        if let Some(v) = body.get(key) {
            lists.push((None, v));
        }
    }
    for c in body
        .get("columns")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let col = c.get("name").and_then(Value::as_str).map(str::to_string);
        for key in ["data_tests", "tests"] {
            if let Some(v) = c.get(key) {
                lists.push((col.clone(), v));
            }
        }
    }
    for (column, list) in lists {
        for entry in list.as_array().into_iter().flatten() {
            let (test, mut params) = match entry {
                Value::String(s) => (s.clone(), Map::new()),
                Value::Object(o) if o.len() == 1 => {
                    let (k, v) = o.iter().next().expect("one key");
                    (k.clone(), v.as_object().cloned().unwrap_or_default())
                }
                Value::Object(o) if o.contains_key("test_name") => {
                    let mut o = o.clone();
                    let t = o.remove("test_name").and_then(|v| v.as_str().map(str::to_string));
                    (t.unwrap_or_default(), o)
                }
                other => {
                    return Err(config_error(format!(
                        "{file}: cannot read the test {other} of {target_name}: write `- unique` or `- accepted_values: {{values: [...]}}`"
                    )))
                }
            };
            // `util.at_least` keeps its namespace: the macro is the package's `test_at_least`.
            let custom_name = params
                .remove("name")
                .and_then(|v| v.as_str().map(str::to_string));
            let mut config = params
                .remove("config")
                .and_then(|v| v.as_object().cloned())
                .unwrap_or_default();
            let mut args = match params.remove("arguments") {
                Some(Value::Object(a)) => a,
                _ => Map::new(),
            };
            for (k, v) in params {
                if TEST_CONFIG_KEYS.contains(&k.as_str()) {
                    config.insert(k, v);
                } else {
                    args.insert(k, v);
                }
            }
            if let Some(c) = &column {
                args.insert("column_name".into(), json!(c));
            }
            out.push(GenericSpec {
                test,
                target_name: target_name.to_string(),
                attached: attached.to_string(),
                target: target.clone(),
                column: column.clone(),
                args,
                config,
                custom_name,
                file: file.to_string(),
            });
        }
    }
    Ok(())
}

fn build_generic_test(
    graph: &Graph,
    project: &DbtProject,
    spec: &GenericSpec,
) -> anyhow::Result<Node> {
    // `util.positive`: a generic test of package `util` (dbt prefixes the name with it).
    let (namespace, base) = match spec.test.split_once('.') {
        Some((ns, b)) => (Some(ns), b),
        None => (None, spec.test.as_str()),
    };
    let (test_type, model_kwarg) = match &spec.target {
        TestTarget::Node(n) => (
            base.to_string(),
            format!("{{{{ get_where_subquery(ref('{n}')) }}}}"),
        ),
        TestTarget::Source(s, t) => (
            format!("source_{base}"),
            format!("{{{{ get_where_subquery(source('{s}', '{t}')) }}}}"),
        ),
    };
    let test_type = match namespace {
        Some(ns) => format!("{ns}_{test_type}"),
        None => test_type,
    };
    let (full, short) = generic_test_name(&test_type, &spec.target_name, &spec.args);
    let name = spec.custom_name.clone().unwrap_or(full);
    let alias = spec.custom_name.clone().unwrap_or(short);
    let mut kwargs = spec.args.clone();
    kwargs.insert("model".into(), json!(model_kwarg));
    let metadata = json!({"name": base, "kwargs": kwargs, "namespace": namespace});
    let unique_id = format!(
        "test.{}.{name}.{}",
        project.name,
        test_id_suffix(&name, &metadata)
    );
    let dirs = dirs_of(spec.file.split_once('/').map_or("", |(_, r)| r));
    let mut fqn = vec![project.name.clone()];
    fqn.extend(dirs);
    fqn.push(name.clone());
    let mut config = Map::new();
    config.insert("materialized".into(), json!("test"));
    config.insert("severity".into(), json!("ERROR"));
    config.insert("schema".into(), json!("dbt_test__audit"));
    merge_config(
        &mut config,
        &tree_config(&project.tests, &project.name, &fqn[1..]),
    );
    merge_config(&mut config, &spec.config);
    // dbt lists what the arguments name (`to: ref('customers')`) before the tested node.
    let mut refs = Vec::new();
    let mut sources = Vec::new();
    for v in spec.args.values() {
        if let Value::String(s) = v {
            if looks_like_func(s) {
                let rc = graph.render_ctx(Phase::Parse, None, false, Map::new());
                graph
                    .jinja
                    .eval(&spec.file, s, rc.clone())
                    .map_err(|e| config_error(format!("in test {name}: {e}")))?;
                let rec = rc.rec.lock().unwrap_or_else(|p| p.into_inner());
                refs.extend(rec.refs.iter().cloned());
                sources.extend(rec.sources.iter().cloned());
            }
        }
    }
    match &spec.target {
        TestTarget::Node(n) => refs.push((None, n.clone())),
        TestTarget::Source(s, t) => sources.push((s.clone(), t.clone())),
    }
    let mut raw_code = match namespace {
        Some(ns) => format!("{{{{ {ns}.test_{base}(**_dbt_generic_test_kwargs) }}}}"),
        None => format!("{{{{ test_{base}(**_dbt_generic_test_kwargs) }}}}"),
    };
    if alias != name {
        // A hashed name: dbt keeps the short one as the alias, in the config and the code.
        raw_code.push_str(&format!("{{{{ config(alias=\"{alias}\") }}}}"));
        config.insert("alias".into(), json!(alias));
    }
    let path = format!("{alias}.sql");
    Ok(Node {
        unique_id,
        name: name.clone(),
        resource: Resource::Test,
        path,
        original_file_path: spec.file.clone(),
        fqn,
        checksum: String::new(),
        raw_code,
        config,
        description: String::new(),
        raw_description: String::new(),
        columns: Vec::new(),
        patch_path: None,
        refs,
        sources,
        depends_on: Vec::new(),
        database: String::new(),
        schema: String::new(),
        alias,
        unit: None,
        test: Some(TestMeta {
            name: spec.test.clone(),
            kwargs: spec.args.clone(),
            attached: spec.attached.clone(),
            column: spec.column.clone(),
        }),
    })
}

/// dbt renders test arguments that look like a call (`ref('x')`) as expressions.
pub fn looks_like_func(s: &str) -> bool {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^\s*(env_var|ref|var|source|doc)\s*\(.+\)\s*$").expect("static regex")
    });
    RE.is_match(s)
}

fn resolve_dependencies(graph: &mut Graph) -> anyhow::Result<()> {
    let by_name: HashMap<String, String> = graph
        .nodes
        .values()
        .filter(|n| n.resource != Resource::Test)
        .map(|n| (n.name.clone(), n.unique_id.clone()))
        .collect();
    let sources: HashMap<(String, String), String> = graph
        .sources
        .values()
        .map(|s| ((s.source_name.clone(), s.name.clone()), s.unique_id.clone()))
        .collect();
    let disabled = graph.disabled.clone();
    for node in graph.nodes.values_mut() {
        // Sources first, then refs, each in call order: the order dbt lists them in.
        let mut deps = Vec::new();
        for (s, t) in &node.sources {
            match sources.get(&(s.clone(), t.clone())) {
                Some(id) => {
                    if !deps.contains(id) {
                        deps.push(id.clone());
                    }
                }
                None => {
                    return Err(config_error(format!(
                        "Compilation Error in {}: it depends on a source named '{s}.{t}' which was not found; declare it under `sources:` in a .yml file",
                        node.label()
                    )))
                }
            }
        }
        for (_, r) in &node.refs {
            match by_name.get(r) {
                Some(id) => {
                    if !deps.contains(id) {
                        deps.push(id.clone());
                    }
                }
                None => {
                    let hint = if disabled.iter().any(|d| d.ends_with(&format!(".{r}"))) {
                        " (it is disabled)"
                    } else {
                        ""
                    };
                    return Err(config_error(format!(
                        "Compilation Error in {}: it depends on a node named '{r}' which was not found{hint}",
                        node.label()
                    )));
                }
            }
        }
        node.depends_on = deps;
    }
    Ok(())
}

/// Compiled text of one node, with the ephemeral models it pulls in.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The SQL with ephemeral CTEs injected.
    pub sql: String,
    /// The SQL before injection (what an ephemeral contributes as its CTE).
    pub pre_injected: String,
    /// Ephemeral models used, directly or through other ephemerals, in dependency order.
    pub ctes: Vec<String>,
}

/// Inserts ephemeral CTEs as dbt does (its sqlparse-based `inject_ctes_into_sql`): each CTE is
/// ` __dbt__cte__x as (\n…\n)`, joined by `, `; after a leading `with` (or `with recursive`)
/// and the whitespace after it, followed by `, `; else `with` goes before the first token
/// (a comment included), followed by one space.
pub fn inject_ctes(sql: &str, ctes: &[(String, String)]) -> String {
    if ctes.is_empty() {
        return sql.to_string();
    }
    let joined = ctes
        .iter()
        .map(|(name, body)| format!(" __dbt__cte__{name} as (\n{body}\n)"))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(after) = after_leading_with(sql) {
        return format!("{}{joined}, {}", &sql[..after], &sql[after..]);
    }
    let first = sql.len() - sql.trim_start().len();
    format!("{}with{joined} {}", &sql[..first], &sql[first..])
}

/// When the statement's first keyword (comments skipped) is `with` [`recursive`]: the offset
/// just after it and the whitespace that follows.
fn after_leading_with(sql: &str) -> Option<usize> {
    let (start, word) = first_token(sql)?;
    if !word.eq_ignore_ascii_case("with") {
        return None;
    }
    let mut end = start + word.len();
    let ws = |from: usize| from + (sql[from..].len() - sql[from..].trim_start().len());
    let next = ws(end);
    let rest = &sql[next..];
    let w2: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if w2.eq_ignore_ascii_case("recursive") {
        end = next + w2.len();
    }
    Some(ws(end))
}

/// The first SQL word outside whitespace and comments: (byte offset, word).
fn first_token(sql: &str) -> Option<(usize, &str)> {
    let mut i = 0;
    while i < sql.len() {
        let rest = &sql[i..];
        let c = rest.chars().next()?;
        if c.is_whitespace() {
            i += c.len_utf8();
        } else if rest.starts_with("--") {
            i = rest.find('\n').map_or(sql.len(), |n| i + n + 1);
        } else if let Some(body) = rest.strip_prefix("/*") {
            i = body.find("*/").map_or(sql.len(), |n| i + 2 + n + 2);
        } else {
            let len = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())
                .max(c.len_utf8());
            return Some((i, &rest[..len]));
        }
    }
    None
}

/// Renders a node for the warehouse.
///
/// # Errors
/// A [`super::jinja::RenderError`] wrapped with the node's label.
/// The SQL of a node's `pre-hook` or `post-hook` list, each rendered in the node's context
/// (`this`, `target`, `model`, `run_query`), as dbt renders hooks when the node runs.
///
/// # Errors
/// A Jinja error naming the node.
pub fn render_hooks(
    graph: &Graph,
    node: &Node,
    which: &str,
    target_ctx: &minijinja::Value,
    lookup: Arc<Lookup>,
    query: Option<Arc<dyn jinja::Query>>,
) -> anyhow::Result<Vec<String>> {
    let list = match node.config.get(which) {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Null) | None => return Ok(Vec::new()),
        Some(one) => vec![one.clone()],
    };
    let this = minijinja::Value::from_object(node.relation());
    let model_v = jinja::from_json(&json!({
        "name": node.name, "unique_id": node.unique_id, "resource_type": node.resource.as_str(),
        "alias": node.alias, "schema": node.schema, "database": node.database, "config": node.config,
        "original_file_path": node.original_file_path,
    }));
    let extra = [
        ("target", target_ctx.clone()),
        ("this", this),
        ("model", model_v),
    ];
    let mut out = Vec::new();
    for h in list {
        let text = match &h {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("sql")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => continue,
        };
        let rc = graph.render_ctx_with(
            Phase::Compile,
            Some(lookup.clone() as Arc<dyn Resolve>),
            false,
            node.config.clone(),
            query.clone(),
        );
        let sql = graph
            .jinja
            .render(&node.original_file_path, &text, rc, &extra)
            .map_err(|e| anyhow::anyhow!("Compilation Error in {} ({which}): {e}", node.label()))?;
        if !sql.trim().is_empty() {
            out.push(sql);
        }
    }
    Ok(out)
}

/// `on-run-start` / `on-run-end` SQL rendered with the project's context and `extra`
/// (`schemas`, `database_schemas`, `results`).
///
/// # Errors
/// A Jinja error naming the hook.
pub fn render_project_hook(
    graph: &Graph,
    name: &str,
    text: &str,
    target_ctx: &minijinja::Value,
    lookup: Arc<Lookup>,
    query: Option<Arc<dyn jinja::Query>>,
    extra: Vec<(&str, minijinja::Value)>,
) -> anyhow::Result<String> {
    let rc = graph.render_ctx_with(
        Phase::Compile,
        Some(lookup as Arc<dyn Resolve>),
        false,
        Map::new(),
        query,
    );
    let mut ctx = vec![("target", target_ctx.clone())];
    ctx.extend(extra);
    graph
        .jinja
        .render("dbt_project.yml", text, rc, &ctx)
        .map_err(|e| anyhow::anyhow!("Compilation Error in hook {name}: {e}"))
}

/// What compiling a node needs besides the node.
pub struct CompileWith<'a> {
    /// What `is_incremental()` says.
    pub incremental: bool,
    /// Ephemeral models compiled so far (their CTEs are injected).
    pub compiled: &'a HashMap<String, Compiled>,
    /// The warehouse, for `run_query` and `statement`.
    pub query: Option<Arc<dyn jinja::Query>>,
    /// Variables over the project's (a unit test's `overrides.vars`).
    pub vars: Option<&'a Map<String, Value>>,
    /// Environment variables for `env_var()` (a unit test's `overrides.env_vars`).
    pub env: Option<&'a HashMap<String, String>>,
}

pub fn compile_node(
    graph: &Graph,
    node: &Node,
    target_ctx: &minijinja::Value,
    lookup: Arc<Lookup>,
    with: CompileWith<'_>,
) -> anyhow::Result<Compiled> {
    let CompileWith {
        incremental,
        compiled,
        query,
        vars,
        env,
    } = with;
    let vars = match vars {
        Some(v) => {
            let mut all = (*graph.vars).clone();
            all.extend(v.clone());
            Arc::new(all)
        }
        None => graph.vars.clone(),
    };
    let rc = Arc::new(RenderCtx {
        phase: Phase::Compile,
        rec: Mutex::new(Recorded::default()),
        resolver: Some(lookup.clone() as Arc<dyn Resolve>),
        incremental,
        vars,
        docs: graph.docs.clone(),
        config: node.config.clone(),
        returns: Mutex::default(),
        query,
        statements: Mutex::default(),
        env: env.cloned().unwrap_or_default(),
    });
    let this = minijinja::Value::from_object(node.relation());
    let model_v = jinja::from_json(&json!({
        "name": node.name, "unique_id": node.unique_id, "resource_type": node.resource.as_str(),
        "alias": node.alias, "schema": node.schema, "database": node.database, "config": node.config,
        "original_file_path": node.original_file_path,
    }));
    let mut extra: Vec<(&str, minijinja::Value)> = vec![
        ("target", target_ctx.clone()),
        ("this", this),
        ("model", model_v),
    ];
    let sql = if let Some(t) = &node.test {
        // Generic test: arguments rendered as dbt does, `model` the tested relation.
        let mut kw = BTreeMap::new();
        for (k, v) in &t.kwargs {
            let val = match v {
                Value::String(s) if k == "column_name" => minijinja::Value::from(s.clone()),
                Value::String(s) if looks_like_func(s) => graph
                    .jinja
                    .eval(&node.original_file_path, s, rc.clone())
                    .map_err(|e| anyhow::anyhow!("Compilation Error in {}: {e}", node.label()))?,
                Value::String(s) if s.contains("{{") || s.contains("{%") => minijinja::Value::from(
                    graph
                        .jinja
                        .render(&node.original_file_path, s, rc.clone(), &extra)
                        .map_err(|e| {
                            anyhow::anyhow!("Compilation Error in {}: {e}", node.label())
                        })?,
                ),
                other => jinja::from_json(other),
            };
            kw.insert(k.clone(), val);
        }
        let tested = graph
            .nodes
            .get(&t.attached)
            .map(Node::relation)
            .or_else(|| graph.sources.get(&t.attached).map(Source::relation))
            .ok_or_else(|| anyhow::anyhow!("test {} is attached to a missing node", node.name))?;
        if tested.kind == "cte" {
            let mut rec = rc.rec.lock().unwrap_or_else(|p| p.into_inner());
            rec.ephemerals.push(t.attached.clone());
        }
        let model_rel = match node.config.get("where").and_then(Value::as_str) {
            Some(w) => {
                minijinja::Value::from(format!("(select * from {tested} where {w}) dbt_subquery"))
            }
            None => minijinja::Value::from_object(tested),
        };
        kw.insert("model".to_string(), model_rel);
        extra.push(("_dbt_generic_test_kwargs", minijinja::Value::from_iter(kw)));
        let macro_name = match t.name.split_once('.') {
            Some((ns, base)) if graph.jinja.has_package(ns) => format!("{ns}.test_{base}"),
            // Not installed: a project-level `test_<name>` (vendored) may stand in for it.
            Some((_, base)) => format!("test_{base}"),
            None => format!("test_{}", t.name),
        };
        graph
            .jinja
            .render(
                &node.original_file_path,
                &format!("{{{{ {macro_name}(**_dbt_generic_test_kwargs) }}}}"),
                rc.clone(),
                &extra,
            )
            .map_err(|e| {
                if e.detail.contains("unknown function") || e.detail.contains("undefined") {
                    anyhow::anyhow!(
                        "Compilation Error in {}: there is no generic test named '{}' (no macro {macro_name} or {{% test {} %}} block)",
                        node.label(),
                        t.name,
                        t.name
                    )
                } else {
                    anyhow::anyhow!("Compilation Error in {}: {e}", node.label())
                }
            })?
    } else {
        graph
            .jinja
            .render(&node.original_file_path, &node.raw_code, rc.clone(), &extra)
            .map_err(|e| anyhow::anyhow!("Compilation Error in {}: {e}", node.label()))?
    };
    let direct = rc
        .rec
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .ephemerals
        .clone();
    // Ephemerals of ephemerals first, each once.
    let mut ctes: Vec<String> = Vec::new();
    for e in &direct {
        if let Some(c) = compiled.get(e) {
            for inner in &c.ctes {
                if !ctes.contains(inner) {
                    ctes.push(inner.clone());
                }
            }
        }
        if !ctes.contains(e) {
            ctes.push(e.clone());
        }
    }
    let bodies: Vec<(String, String)> = ctes
        .iter()
        .filter_map(|id| {
            let n = graph.nodes.get(id)?;
            let c = compiled.get(id)?;
            Some((n.alias.clone(), c.pre_injected.clone()))
        })
        .collect();
    if bodies.len() != ctes.len() {
        anyhow::bail!(
            "internal: {} uses an ephemeral model that was not compiled first",
            node.label()
        );
    }
    Ok(Compiled {
        sql: inject_ctes(&sql, &bodies),
        pre_injected: sql,
        ctes,
    })
}

/// Reads `--vars` (YAML or JSON mapping).
///
/// # Errors
/// A config error when it is not a mapping.
pub fn parse_vars(text: Option<&str>) -> anyhow::Result<Map<String, Value>> {
    let Some(t) = text else {
        return Ok(Map::new());
    };
    match serde_yaml_ng::from_str::<Value>(t) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        _ => Err(config_error(format!(
            "--vars {t:?} is not a YAML mapping; write --vars '{{key: value}}'"
        ))),
    }
    .context("reading --vars")
}

/// The `{% snapshot name %}…{% endsnapshot %}` blocks of a file: (name, body). Text outside
/// the blocks is ignored, as dbt ignores it.
fn snapshot_blocks(text: &str, file: &str) -> anyhow::Result<Vec<(String, String)>> {
    static OPEN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\{%-?\s*snapshot\s+([A-Za-z_][A-Za-z0-9_]*)\s*-?%\}")
            .expect("static regex")
    });
    static CLOSE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\{%-?\s*endsnapshot\s*-?%\}").expect("static regex")
    });
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(open) = OPEN.captures(&text[at..]) {
        let whole = open.get(0).expect("match");
        let start = at + whole.end();
        let Some(close) = CLOSE.find(&text[start..]) else {
            return Err(config_error(format!(
                "{file}: the snapshot {} has no {{% endsnapshot %}}",
                &open[1]
            )));
        };
        out.push((
            open[1].to_string(),
            text[start..start + close.start()].to_string(),
        ));
        at = start + close.end();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_test_names_as_dbt() {
        let kw = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            generic_test_name(
                "unique",
                "customers",
                &kw(json!({"column_name": "customer_id"}))
            )
            .0,
            "unique_customers_customer_id"
        );
        let (full, short) = generic_test_name(
            "relationships",
            "orders",
            &kw(
                json!({"column_name": "customer_id", "to": "ref('customers')", "field": "customer_id"}),
            ),
        );
        assert_eq!(
            full,
            "relationships_orders_customer_id__customer_id__ref_customers_"
        );
        assert_eq!(full, short);
        let (full, short) = generic_test_name(
            "accepted_values",
            "orders",
            &kw(
                json!({"column_name": "status", "values": ["placed", "shipped", "completed", "return_pending", "returned"]}),
            ),
        );
        assert_eq!(
            full,
            "accepted_values_orders_status__placed__shipped__completed__return_pending__returned"
        );
        assert_eq!(
            short,
            "accepted_values_orders_1ce6ab157c285f7cd2ac656013faf758"
        );
    }

    #[test]
    fn test_ids_as_dbt() {
        let md = json!({"namespace": null, "name": "unique",
            "kwargs": {"column_name": "order_id", "model": "{{ get_where_subquery(ref('orders')) }}"}});
        assert_eq!(test_id_suffix("unique_orders_order_id", &md), "fed79b3a6e");
    }

    #[test]
    fn ctes_injected_as_dbt() {
        // Expected texts are dbt 1.11's own output for the same inputs.
        let a = vec![("a".to_string(), "select 1".to_string())];
        let cases = [
            (
                "\n\nselect * from __dbt__cte__a",
                "\n\nwith __dbt__cte__a as (\nselect 1\n) select * from __dbt__cte__a",
            ),
            (
                "-- comment\nselect * from __dbt__cte__a",
                "with __dbt__cte__a as (\nselect 1\n) -- comment\nselect * from __dbt__cte__a",
            ),
            (
                "/* c */ with x as (select 1) select * from x",
                "/* c */ with  __dbt__cte__a as (\nselect 1\n), x as (select 1) select * from x",
            ),
            (
                "WITH recursive x as (select 1) select * from x",
                "WITH recursive  __dbt__cte__a as (\nselect 1\n), x as (select 1) select * from x",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(inject_ctes(input, &a), want, "{input:?}");
        }
        let two = vec![
            ("eph_base".to_string(), "\nselect 1".to_string()),
            ("eph_second".to_string(), "\nselect 2".to_string()),
        ];
        assert_eq!(
            inject_ctes("select b.id", &two),
            "with __dbt__cte__eph_base as (\n\nselect 1\n),  __dbt__cte__eph_second as (\n\nselect 2\n) select b.id"
        );
    }

    #[test]
    fn tree_config_applies_every_level() {
        let tree = json!({"shop": {"+materialized": "table", "tags": "x", "staging": {"+materialized": "view", "+tags": ["y"], "+schema": "stg"}}});
        let c = tree_config(&tree, "shop", &["staging".into(), "stg_a".into()]);
        assert_eq!(c["materialized"], "view");
        assert_eq!(c["schema"], "stg");
        assert_eq!(c["tags"], json!(["x", "y"]));
        let c = tree_config(&tree, "shop", &["marts".into(), "m".into()]);
        assert_eq!(c["materialized"], "table");
    }
}
