//! Running the DAG: nodes in dependency order on up to `threads` connections, each compiled
//! just before it runs (so `is_incremental()` sees the warehouse as it is), dependents of a
//! failure skipped, and every result kept for `run_results.json`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::adapter::{self, Conn, DbError};
use super::jinja::quote;
use super::materialize::{self, Cache};
use super::nodes::{compile_node, Compiled, Graph, Lookup, Node, Resource};
use super::project::{AdapterKind, DbtProject, Target};

/// What a command does with each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Render SQL only.
    Compile,
    /// Build models.
    Run,
    /// Run tests.
    Test,
    /// Load seeds.
    Seed,
    /// Seeds, models and tests in DAG order.
    Build,
    /// Run snapshots.
    Snapshot,
}

impl Mode {
    fn wants(self, r: Resource) -> bool {
        match self {
            Mode::Compile => !matches!(r, Resource::Seed | Resource::UnitTest),
            _ if r == Resource::Analysis => false,
            Mode::Run => r == Resource::Model,
            Mode::Test => matches!(r, Resource::Test | Resource::UnitTest),
            Mode::Seed => r == Resource::Seed,
            Mode::Snapshot => r == Resource::Snapshot,
            Mode::Build => true,
        }
    }
}

/// One node's result, in dbt's run_results shape.
#[derive(Debug, Clone)]
pub struct NodeResult {
    /// The node.
    pub unique_id: String,
    /// `success`, `error`, `skipped`, `pass`, `fail`, `warn`.
    pub status: &'static str,
    /// Message (`CREATE VIEW`, `Got 3 results, configured to fail if != 0`, the error).
    pub message: Option<String>,
    /// Tests: failing rows.
    pub failures: Option<i64>,
    /// Compile phase (start, end).
    pub compile: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Execute phase.
    pub execute: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Seconds.
    pub execution_time: f64,
    /// The warehouse's response.
    pub adapter_response: Value,
    /// Compiled SQL.
    pub compiled_code: Option<String>,
    /// The relation built.
    pub relation_name: Option<String>,
    /// Which worker ran it.
    pub thread: usize,
}

/// Shared, read-mostly state of a run.
struct Shared {
    graph: Arc<Graph>,
    project: DbtProject,
    target: Target,
    target_ctx: minijinja::Value,
    lookup: Arc<Lookup>,
    compiled: Mutex<HashMap<String, Compiled>>,
    /// Compiled ephemeral models, which other nodes inline (read by every compile).
    ephemerals: std::sync::RwLock<HashMap<String, Compiled>>,
    /// Artifact folders made so far (one `create_dir_all` per folder, not per file).
    dirs: Mutex<HashSet<std::path::PathBuf>>,
    cache: Cache,
    mode: Mode,
    full_refresh: bool,
    /// A connection of its own for `run_query` and `statement` while compiling.
    query: Option<Arc<dyn super::jinja::Query>>,
}

/// Runs introspective queries (`run_query`, `statement`) for renders, which are synchronous,
/// on a connection of its own.
#[derive(Debug)]
struct Querier {
    conn: Mutex<Conn>,
    handle: tokio::runtime::Handle,
}

impl super::jinja::Query for Querier {
    fn run(&self, sql: &str) -> Result<adapter::QueryOutput, String> {
        let run = || {
            let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            self.handle.block_on(conn.query_table(sql)).map_err(|e| e.0)
        };
        // Renders run on the runtime's workers (a node being built) or on plain threads
        // (`compile`, which renders on all cores).
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(run)
        } else {
            run()
        }
    }
}

impl Shared {
    fn compile(&self, node: &Node) -> anyhow::Result<Compiled> {
        let incremental = materialize::is_incremental(node, &self.cache, self.full_refresh);
        let c = {
            let known = self.ephemerals.read().unwrap_or_else(|p| p.into_inner());
            compile_node(
                &self.graph,
                node,
                &self.target_ctx,
                self.lookup.clone(),
                super::nodes::CompileWith {
                    incremental,
                    compiled: &known,
                    query: self.query.clone(),
                    vars: None,
                    env: None,
                },
            )?
        };
        if node.materialized() == "ephemeral" {
            self.ephemerals
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(node.unique_id.clone(), c.clone());
        }
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.unique_id.clone(), c.clone());
        Ok(c)
    }

    /// `target/compiled/<project>/…` (generic tests under their properties file's path).
    fn artifact_path(&self, kind: &str, node: &Node) -> std::path::PathBuf {
        let base = self.project.target_dir().join(kind).join(node.package());
        // Generic tests and YAML snapshots live under their properties file, as in dbt.
        if node.test.is_some() || node.original_file_path.ends_with(".yml") {
            base.join(&node.original_file_path).join(&node.path)
        } else {
            base.join(&node.original_file_path)
        }
    }

    fn write_artifact(&self, kind: &str, node: &Node, text: &str) {
        let p = self.artifact_path(kind, node);
        if let Some(d) = p.parent() {
            // Made under the lock, so no other worker writes into it before it exists.
            let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
            if !dirs.contains(d) {
                let _ = std::fs::create_dir_all(d);
                dirs.insert(d.to_path_buf());
            }
        }
        if let Err(e) = write_if_changed(&p, text.as_bytes()) {
            tracing::warn!("Cannot write {}: {e}.", p.display());
        }
    }
}

/// Writes a file unless it already holds exactly these bytes. A changed file is removed and
/// made anew rather than truncated: on ext4, truncating or renaming over a file flushes it to
/// disk on close, which made writing thousands of compiled files the slowest part of a compile.
fn write_if_changed(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    match std::fs::read(path) {
        Ok(old) if old == bytes => return Ok(()),
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::write(path, bytes)
}

/// Compiles every ephemeral model first (in dependency order), so any node can inline them
/// whatever the selection.
fn compile_ephemerals(shared: &Shared, order: &[String]) -> anyhow::Result<()> {
    for id in order {
        let node = &shared.graph.nodes[id];
        if node.materialized() == "ephemeral" && node.resource == Resource::Model {
            let c = shared.compile(node)?;
            shared.write_artifact("compiled", node, &c.sql);
        }
    }
    Ok(())
}

/// Topological order of every node (dependencies first; ties by id, for stable output).
pub fn topo_order(graph: &Graph) -> Vec<String> {
    let mut indeg: BTreeMap<&str, usize> = BTreeMap::new();
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for n in graph.nodes.values() {
        let deps = n
            .depends_on
            .iter()
            .filter(|d| graph.nodes.contains_key(*d))
            .count();
        indeg.insert(&n.unique_id, deps);
        for d in &n.depends_on {
            if graph.nodes.contains_key(d) {
                children.entry(d).or_default().push(&n.unique_id);
            }
        }
    }
    let mut ready: BTreeSet<&str> = indeg
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(k, _)| *k)
        .collect();
    let mut out = Vec::new();
    while let Some(id) = ready.pop_first() {
        out.push(id.to_string());
        for c in children.get(id).into_iter().flatten() {
            let e = indeg.get_mut(c).expect("known node");
            *e -= 1;
            if *e == 0 {
                ready.insert(c);
            }
        }
    }
    out
}

/// What a `run`/`test`/`seed`/`build`/`compile` produced.
#[derive(Debug, Default)]
pub struct RunOutput {
    /// Results in completion order.
    pub results: Vec<NodeResult>,
    /// Compiled SQL by node.
    pub compiled: HashMap<String, Compiled>,
    /// Seconds.
    pub elapsed: f64,
}

/// Runs the selected nodes.
///
/// # Errors
/// Connection failures (everything else is a per-node result).
pub async fn execute(
    graph: Arc<Graph>,
    project: &DbtProject,
    target: &Target,
    selected: &BTreeSet<String>,
    mode: Mode,
    full_refresh: bool,
) -> anyhow::Result<RunOutput> {
    let started = Instant::now();
    let order = topo_order(&graph);
    let run_ids: Vec<String> = order
        .iter()
        .filter(|id| selected.contains(*id))
        .filter(|id| mode.wants(graph.nodes[*id].resource))
        // Ephemeral models run nowhere: their SQL is part of their dependents'.
        .filter(|id| mode == Mode::Compile || graph.nodes[*id].materialized() != "ephemeral")
        .cloned()
        .collect();
    let mut conn = adapter::connect(target)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .map_err(|e| e.context(format!("connecting to {}", adapter::describe(target))))?;
    // Relations that exist now, in every schema this run touches.
    let mut schemas: BTreeSet<String> = graph
        .nodes
        .values()
        .filter(|n| n.resource != Resource::Test || materialize::store_failures_as(n).is_some())
        .map(|n| n.schema.clone())
        .collect();
    schemas.insert(target.schema.clone());
    let schemas: Vec<String> = schemas.into_iter().collect();
    let cache = conn
        .relations(&target.database, &schemas)
        .await
        .map_err(|e| anyhow::anyhow!("listing relations: {e}"))?;
    if matches!(mode, Mode::Run | Mode::Seed | Mode::Build | Mode::Snapshot) {
        let needed: BTreeSet<&str> = run_ids
            .iter()
            .map(|id| &graph.nodes[id])
            .filter(|n| {
                (n.resource != Resource::Test || materialize::store_failures_as(n).is_some())
                    && n.materialized() != "ephemeral"
            })
            .map(|n| n.schema.as_str())
            .collect();
        let existing: HashSet<String> = schemas_present(&mut conn, &schemas).await?;
        for s in needed {
            if !existing.contains(s) {
                conn.execute(&format!("create schema if not exists {}", quote(s)))
                    .await
                    .map_err(|e| anyhow::anyhow!("creating schema {s}: {e}"))?;
            }
        }
    }
    let shared = Arc::new(Shared {
        lookup: graph.lookup(),
        target_ctx: super::nodes::target_value(target),
        graph: graph.clone(),
        project: project.clone(),
        target: target.clone(),
        compiled: Mutex::new(HashMap::new()),
        ephemerals: std::sync::RwLock::new(HashMap::new()),
        dirs: Mutex::default(),
        cache: Mutex::new(cache),
        mode,
        full_refresh,
        query: Some(Arc::new(Querier {
            conn: Mutex::new(conn.another(target).await?),
            handle: tokio::runtime::Handle::current(),
        })),
    });
    compile_ephemerals(&shared, &order)
        .map_err(|e| anyhow::Error::new(crate::error::Failure::Config(format!("{e:#}"))))?;
    if mode == Mode::Compile {
        drop(conn);
        let mut results = compile_all(&shared, &run_ids);
        // As when nodes run: what depends on a node that failed to compile is skipped
        // (run_ids are in dependency order).
        let in_run: HashSet<&str> = run_ids.iter().map(String::as_str).collect();
        let mut bad: HashSet<String> = HashSet::new();
        for r in &mut results {
            let node = &graph.nodes[&r.unique_id];
            if upstream_in_run(&graph, node, &in_run)
                .iter()
                .any(|u| bad.contains(u))
            {
                *r = skipped(node);
            }
            if r.status != "success" {
                bad.insert(r.unique_id.clone());
            }
        }
        for r in &results {
            report_line(0, 0, &graph.nodes[&r.unique_id], r, mode);
        }
        return Ok(RunOutput {
            results,
            compiled: take_compiled(&shared),
            elapsed: started.elapsed().as_secs_f64(),
        });
    }

    // The schemas the run builds in, for on-run-start/on-run-end's `schemas`.
    let run_schemas: Vec<String> = run_ids
        .iter()
        .map(|id| &graph.nodes[id])
        .filter(|n| n.resource != Resource::Test)
        .map(|n| n.schema.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut results = if run_ids.is_empty() {
        Vec::new()
    } else {
        project_hooks(&shared, &mut conn, "on-run-start", &run_schemas, &[]).await
    };

    // Scheduling edges among the nodes that run.
    let in_run: HashSet<&str> = run_ids.iter().map(String::as_str).collect();
    let mut deps: HashMap<String, BTreeSet<String>> = HashMap::new();
    for id in &run_ids {
        let n = &graph.nodes[id];
        let set = upstream_in_run(&graph, n, &in_run);
        deps.insert(id.clone(), set);
    }
    if mode == Mode::Build {
        add_test_edges(&graph, &run_ids, &in_run, &mut deps);
        // A model is built after its unit tests pass (dbt's build order).
        for id in &run_ids {
            if let Some(unit) = &graph.nodes[id].unit {
                if let Some(d) = deps.get_mut(&unit.0) {
                    d.insert(id.clone());
                }
            }
        }
    }
    let level = levels(&run_ids, &deps);
    let total = run_ids
        .iter()
        .filter(|id| graph.nodes[*id].materialized() != "ephemeral" || mode == Mode::Compile)
        .count();

    let threads = target.threads.max(1);
    let mut pool: Vec<Conn> = vec![conn];
    for _ in 1..threads.min(run_ids.len().max(1)) {
        pool.push(pool[0].another(target).await?);
    }
    let mut free: Vec<(usize, Conn)> = pool.into_iter().enumerate().collect();
    // dbt's order: ready nodes queue first-in first-out; nodes that become ready together go in
    // (level, id) order. With one thread that reproduces dbt's run order exactly.
    let mut pending: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut initial: Vec<(usize, String)> = Vec::new();
    let mut waiting: HashMap<String, usize> = HashMap::new();
    let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
    for id in &run_ids {
        let d = &deps[id];
        waiting.insert(id.clone(), d.len());
        for p in d {
            dependents.entry(p.clone()).or_default().push(id.clone());
        }
        if d.is_empty() {
            initial.push((level[id], id.clone()));
        }
    }
    initial.sort();
    pending.extend(initial.into_iter().map(|(_, id)| id));
    let mut bad: HashSet<String> = HashSet::new();
    let mut set = tokio::task::JoinSet::new();
    let mut index = 0usize;
    let mut running = 0usize;
    loop {
        while !free.is_empty() {
            let Some(id) = pending.pop_front() else {
                break;
            };
            let node = graph.nodes[&id].clone();
            let blocked = deps[&id].iter().any(|d| bad.contains(d));
            if blocked {
                bad.insert(id.clone());
                if node.materialized() != "ephemeral" {
                    index += 1;
                    tracing::info!(
                        "{index} of {total} SKIP {} {}",
                        kind_label(&node),
                        display_name(&node)
                    );
                }
                results.push(skipped(&node));
                release(&id, &dependents, &mut waiting, &mut pending, &level);
                continue;
            }
            if node.materialized() == "ephemeral" && mode != Mode::Compile {
                // Compiled already; nothing runs in the warehouse.
                release(&id, &dependents, &mut waiting, &mut pending, &level);
                continue;
            }
            index += 1;
            let (thread, mut conn) = free.pop().expect("a free connection");
            let sh = shared.clone();
            let my_index = index;
            if mode != Mode::Compile {
                tracing::info!(
                    "{my_index} of {total} START {} {}",
                    kind_label(&node),
                    display_name(&node)
                );
            }
            running += 1;
            set.spawn(async move {
                let r = run_node(&sh, &mut conn, &node, thread).await;
                (thread, conn, my_index, r)
            });
        }
        if running == 0 {
            break;
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        running -= 1;
        let (thread, conn, my_index, r) =
            joined.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
        free.push((thread, conn));
        let node = &graph.nodes[&r.unique_id];
        report_line(my_index, total, node, &r, mode);
        if matches!(r.status, "error" | "fail" | "skipped") {
            bad.insert(r.unique_id.clone());
        }
        release(
            &r.unique_id,
            &dependents,
            &mut waiting,
            &mut pending,
            &level,
        );
        results.push(r);
    }
    if !run_ids.is_empty() {
        if let Some((_, conn)) = free.first_mut() {
            let end = project_hooks(&shared, conn, "on-run-end", &run_schemas, &results).await;
            results.extend(end);
        }
    }
    Ok(RunOutput {
        results,
        compiled: take_compiled(&shared),
        elapsed: started.elapsed().as_secs_f64(),
    })
}

/// Runs `on-run-start` or `on-run-end` from dbt_project.yml: each statement rendered (with
/// `schemas`, `database_schemas`, and the node results at the end) and sent on `conn`. Each
/// gives a result as dbt's (`operation.<project>.<project>-on-run-start-0`); a failure is an
/// error result, and the run goes on, as in dbt.
async fn project_hooks(
    sh: &Shared,
    conn: &mut Conn,
    which: &str,
    schemas: &[String],
    done: &[NodeResult],
) -> Vec<NodeResult> {
    let list: Vec<String> = match sh.project.raw.get(which) {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let p = &sh.project.name;
    let total = list.len();
    let mut out = Vec::new();
    for (i, text) in list.iter().enumerate() {
        let name = format!("{p}.{which}.{i}");
        let started = Utc::now();
        let t0 = Instant::now();
        tracing::info!("{} of {total} START hook: {name}", i + 1);
        let results_v: Vec<Value> = done
            .iter()
            .filter(|r| !r.unique_id.starts_with("operation."))
            .map(|r| {
                let n = sh.graph.nodes.get(&r.unique_id);
                json!({
                    "status": r.status, "message": r.message, "failures": r.failures,
                    "execution_time": r.execution_time, "adapter_response": r.adapter_response,
                    "unique_id": r.unique_id,
                    "node": n.map(|n| json!({
                        "unique_id": n.unique_id, "name": n.name, "resource_type": n.resource.as_str(),
                        "database": n.database, "schema": n.schema, "alias": n.alias,
                        "config": n.config, "original_file_path": n.original_file_path,
                    })),
                })
            })
            .collect();
        let extra = vec![
            ("schemas", minijinja::Value::from(schemas.to_vec())),
            (
                "database_schemas",
                minijinja::Value::from(
                    schemas
                        .iter()
                        .map(|s| {
                            minijinja::Value::from(vec![sh.target.database.clone(), s.clone()])
                        })
                        .collect::<Vec<_>>(),
                ),
            ),
            ("results", super::jinja::from_json(&Value::Array(results_v))),
        ];
        let rendered = super::nodes::render_project_hook(
            &sh.graph,
            &name,
            text,
            &sh.target_ctx,
            sh.lookup.clone(),
            sh.query.clone(),
            extra,
        );
        let outcome = match rendered {
            Ok(sql) => {
                let path = sh
                    .project
                    .target_dir()
                    .join("compiled")
                    .join(p)
                    .join("dbt_project.yml/hooks")
                    .join(format!("{p}-{which}-{i}.sql"));
                if let Some(d) = path.parent() {
                    let _ = std::fs::create_dir_all(d);
                }
                let _ = write_if_changed(&path, sql.as_bytes());
                conn.execute(&sql).await.map(|_| ()).map_err(|e| e.0)
            }
            Err(e) => Err(format!("{e:#}")),
        };
        let secs = t0.elapsed().as_secs_f64();
        let (status, message) = match &outcome {
            Ok(()) => {
                tracing::info!("{} of {total} OK hook: {name} [OK in {secs:.2}s]", i + 1);
                ("success", format!("{name} passed"))
            }
            Err(e) => {
                tracing::error!("{} of {total} ERROR hook: {name}: {e}", i + 1);
                ("error", format!("{name} failed, error:\n {e}"))
            }
        };
        out.push(NodeResult {
            unique_id: format!("operation.{p}.{p}-{which}-{i}"),
            status,
            message: Some(message),
            failures: Some(0),
            compile: Some((started, started)),
            execute: Some((started, Utc::now())),
            execution_time: secs,
            adapter_response: json!({}),
            compiled_code: None,
            relation_name: None,
            thread: 0,
        });
    }
    out
}

fn take_compiled(shared: &Shared) -> HashMap<String, Compiled> {
    std::mem::take(&mut *shared.compiled.lock().unwrap_or_else(|p| p.into_inner()))
}

async fn schemas_present(conn: &mut Conn, schemas: &[String]) -> anyhow::Result<HashSet<String>> {
    let list = schemas
        .iter()
        .map(|s| adapter::sql_string(s))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = conn
        .query_strings(&format!(
            "select schema_name from information_schema.schemata where schema_name in ({list})"
        ))
        .await
        .map_err(|e| anyhow::anyhow!("listing schemas: {e}"))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

/// The nearest upstream nodes that run, looking through ones that don't (unselected or
/// ephemeral models are transparent for ordering and skipping).
fn upstream_in_run(graph: &Graph, n: &Node, in_run: &HashSet<&str>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<&str> = n.depends_on.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    while let Some(d) = stack.pop() {
        if !seen.insert(d) {
            continue;
        }
        if in_run.contains(d) {
            out.insert(d.to_string());
        } else if let Some(p) = graph.nodes.get(d) {
            if p.materialized() == "ephemeral" {
                stack.extend(p.depends_on.iter().map(String::as_str));
            }
        }
    }
    out
}

/// `build`: a node waits for every test whose parents are all upstream of it (dbt's
/// `add_test_edges`), so a failing test skips what is built on the data it checked. A test on
/// two models gates only what depends on both.
fn add_test_edges(
    graph: &Graph,
    run_ids: &[String],
    in_run: &HashSet<&str>,
    deps: &mut HashMap<String, BTreeSet<String>>,
) {
    // Tests that run, by each of their parents.
    let mut tests_of: HashMap<&str, Vec<&Node>> = HashMap::new();
    for id in run_ids {
        let t = &graph.nodes[id];
        if t.resource == Resource::Test {
            for p in &t.depends_on {
                tests_of.entry(p.as_str()).or_default().push(t);
            }
        }
    }
    if tests_of.is_empty() {
        return;
    }
    // Ancestors of every node (sources and ephemeral models included), memoized in topological
    // order.
    let mut anc: HashMap<&str, HashSet<&str>> = HashMap::new();
    for id in topo_order(graph) {
        let n = &graph.nodes[&id];
        let mut set: HashSet<&str> = HashSet::new();
        for p in &n.depends_on {
            set.insert(p.as_str());
            if let Some(a) = anc.get(p.as_str()) {
                set.extend(a.iter().copied());
            }
        }
        let key: &str = &graph.nodes[&id].unique_id;
        anc.insert(key, set);
    }
    let mut extra: Vec<(String, String)> = Vec::new();
    for id in run_ids {
        let n = &graph.nodes[id];
        if n.resource == Resource::Test {
            continue;
        }
        let Some(up) = anc.get(n.unique_id.as_str()) else {
            continue;
        };
        let mut seen: HashSet<&str> = HashSet::new();
        for a in up {
            for t in tests_of.get(a).into_iter().flatten() {
                if seen.insert(t.unique_id.as_str())
                    && in_run.contains(t.unique_id.as_str())
                    && t.depends_on.iter().all(|p| up.contains(p.as_str()))
                {
                    extra.push((id.clone(), t.unique_id.clone()));
                }
            }
        }
    }
    for (c, t) in extra {
        deps.get_mut(&c).expect("in run").insert(t);
    }
}

/// Longest path from a root, for a stable order: models and their tests level by level.
fn levels(run_ids: &[String], deps: &HashMap<String, BTreeSet<String>>) -> HashMap<String, usize> {
    let mut level: HashMap<String, usize> = HashMap::new();
    // run_ids is topological for model edges; test edges only point forward too, but iterate
    // until stable to be safe.
    loop {
        let mut changed = false;
        for id in run_ids {
            let l = deps[id]
                .iter()
                .map(|d| level.get(d).copied().unwrap_or(0) + 1)
                .max()
                .unwrap_or(0);
            if level.get(id) != Some(&l) {
                level.insert(id.clone(), l);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    level
}

fn release(
    id: &str,
    dependents: &HashMap<String, Vec<String>>,
    waiting: &mut HashMap<String, usize>,
    pending: &mut std::collections::VecDeque<String>,
    level: &HashMap<String, usize>,
) {
    let mut ready = Vec::new();
    for c in dependents.get(id).into_iter().flatten() {
        let w = waiting.get_mut(c).expect("known");
        *w -= 1;
        if *w == 0 {
            ready.push((level[c], c.clone()));
        }
    }
    ready.sort();
    pending.extend(ready.into_iter().map(|(_, c)| c));
}

fn kind_label(n: &Node) -> String {
    match n.resource {
        Resource::Model => format!("sql {} model", n.materialized()),
        Resource::Seed => "seed file".into(),
        Resource::Test => "test".into(),
        Resource::Snapshot => "snapshot".into(),
        Resource::Analysis => "analysis".into(),
        Resource::UnitTest => "unit_test".into(),
    }
}

fn display_name(n: &Node) -> String {
    match n.resource {
        Resource::Test => n.name.clone(),
        Resource::UnitTest => format!(
            "{}::{}",
            n.unit
                .as_ref()
                .and_then(|u| u.0.rsplit('.').next())
                .unwrap_or_default(),
            n.name
        ),
        _ => format!("{}.{}", n.schema, n.alias),
    }
}

fn skipped(n: &Node) -> NodeResult {
    NodeResult {
        unique_id: n.unique_id.clone(),
        status: "skipped",
        message: None,
        failures: None,
        compile: None,
        execute: None,
        execution_time: 0.0,
        adapter_response: json!({}),
        compiled_code: None,
        relation_name: relation_name(n),
        thread: 0,
    }
}

/// `"db"."schema"."name"` for nodes that build one.
pub fn relation_name(n: &Node) -> Option<String> {
    match (n.resource, n.materialized()) {
        (Resource::Test, _) if materialize::store_failures_as(n).is_some() => {
            Some(n.relation().to_string())
        }
        (Resource::Test | Resource::Analysis | Resource::UnitTest, _) | (_, "ephemeral") => None,
        _ => Some(n.relation().to_string()),
    }
}

fn report_line(index: usize, total: usize, node: &Node, r: &NodeResult, mode: Mode) {
    if mode == Mode::Compile {
        if r.status == "error" {
            tracing::error!("{}", r.message.clone().unwrap_or_default());
        }
        return;
    }
    let secs = r.execution_time;
    let what = format!("{} {}", kind_label(node), display_name(node));
    match r.status {
        "success" => tracing::info!(
            "{index} of {total} OK {} {what} [{} in {secs:.2}s]",
            match node.resource {
                Resource::Seed => "loaded",
                Resource::Snapshot => "snapshotted",
                _ => "created",
            },
            r.message.clone().unwrap_or_default()
        ),
        "pass" => tracing::info!("{index} of {total} PASS {what} [PASS in {secs:.2}s]"),
        "warn" => tracing::warn!(
            "{index} of {total} WARN {} {what} [WARN {} in {secs:.2}s]",
            r.failures.unwrap_or(0),
            r.failures.unwrap_or(0)
        ),
        "fail" if node.resource == Resource::UnitTest => tracing::error!(
            "{index} of {total} FAIL 1 {what} [FAIL 1 in {secs:.2}s]\n{}",
            r.message.clone().unwrap_or_default()
        ),
        "fail" => tracing::error!(
            "{index} of {total} FAIL {} {what} [FAIL {} in {secs:.2}s]",
            r.failures.unwrap_or(0),
            r.failures.unwrap_or(0)
        ),
        _ => tracing::error!(
            "{index} of {total} ERROR {what}: {}",
            r.message.clone().unwrap_or_default()
        ),
    }
}

/// Compiles a node (writing its compiled SQL) and starts its result, with the SQL (`None` for
/// seeds) and when it started. A result with status `error` is final (compiling failed); in
/// compile mode every result is.
fn compile_step(sh: &Shared, node: &Node, thread: usize) -> (NodeResult, Option<String>, Instant) {
    let c0 = Utc::now();
    let t0 = Instant::now();
    let mut r = NodeResult {
        unique_id: node.unique_id.clone(),
        status: "success",
        message: None,
        failures: None,
        compile: None,
        execute: None,
        execution_time: 0.0,
        adapter_response: json!({}),
        compiled_code: None,
        relation_name: if node.resource == Resource::Seed {
            None
        } else {
            relation_name(node)
        },
        thread,
    };
    let sql = if matches!(node.resource, Resource::Seed | Resource::UnitTest) {
        None
    } else {
        match sh.compile(node) {
            Ok(c) => {
                // dbt keeps no compiled copy of a snapshot (only target/run/).
                if node.resource != Resource::Snapshot {
                    sh.write_artifact("compiled", node, &c.sql);
                }
                r.compiled_code = Some(c.sql.clone());
                Some(c.sql)
            }
            Err(e) => {
                r.status = "error";
                r.message = Some(format!("{e:#}"));
                r.execution_time = t0.elapsed().as_secs_f64();
                return (r, None, t0);
            }
        }
    };
    let c1 = Utc::now();
    r.compile = Some((c0, c1));
    if sh.mode == Mode::Compile {
        r.execute = Some((c1, c1));
        r.execution_time = t0.elapsed().as_secs_f64();
    }
    (r, sql, t0)
}

/// `compile`: nothing runs in the warehouse and no node needs another's result (ephemeral
/// models are compiled already), so every node compiles at once, on all cores.
fn compile_all(sh: &Shared, run_ids: &[String]) -> Vec<NodeResult> {
    super::par_map(run_ids.iter().collect(), |id| {
        compile_step(sh, &sh.graph.nodes[id], 0).0
    })
}

async fn run_node(sh: &Shared, conn: &mut Conn, node: &Node, thread: usize) -> NodeResult {
    let (r, sql, t0) = compile_step(sh, node, thread);
    if r.status == "error" || sh.mode == Mode::Compile {
        return r;
    }
    let c1 = r.compile.map_or_else(Utc::now, |(_, c1)| c1);
    let kind = sh.target.kind;
    let hooks = |which: &str| {
        super::nodes::render_hooks(
            &sh.graph,
            node,
            which,
            &sh.target_ctx,
            sh.lookup.clone(),
            sh.query.clone(),
        )
        .map_err(|e| DbError(format!("{e:#}")))
    };
    let outcome = async {
        let runs_hooks = !matches!(node.resource, Resource::Test | Resource::UnitTest);
        if runs_hooks {
            for h in hooks("pre-hook")? {
                conn.execute(h.as_str()).await?;
            }
        }
        let o = materialize_node(sh, conn, node, sql.as_deref(), kind).await?;
        if runs_hooks {
            for h in hooks("post-hook")? {
                conn.execute(h.as_str()).await?;
            }
        }
        Ok::<_, DbError>(o)
    }
    .await;
    finish(sh, node, r, outcome, (c1, t0), sql.as_deref())
}

/// The node's materialization (a seed load, a model, a test, a snapshot).
async fn materialize_node(
    sh: &Shared,
    conn: &mut Conn,
    node: &Node,
    sql: Option<&str>,
    kind: AdapterKind,
) -> Result<materialize::Outcome, DbError> {
    let sql = sql.map(str::to_string);
    match node.resource {
        Resource::Seed => {
            let dir = sh
                .graph
                .package_dirs
                .get(node.package())
                .unwrap_or(&sh.project.dir);
            let path = dir.join(&node.original_file_path);
            materialize::seed(conn, node, &path, &sh.cache, sh.full_refresh).await
        }
        Resource::Model => {
            materialize::model(
                conn,
                kind,
                node,
                sql.as_deref().unwrap_or_default(),
                &sh.cache,
                sh.full_refresh,
            )
            .await
        }
        Resource::Test => {
            materialize::test(conn, node, sql.as_deref().unwrap_or_default(), &sh.cache).await
        }
        Resource::Snapshot => {
            super::snapshot::run(
                conn,
                kind,
                node,
                sql.as_deref().unwrap_or_default(),
                &sh.cache,
            )
            .await
        }
        Resource::Analysis => Ok(materialize::Outcome::default()),
        Resource::UnitTest => unit_test(sh, conn, node).await,
    }
}

/// A unit test: the tested model compiled against its real inputs (`is_incremental()` as the
/// test's `overrides` say), then run on the fixtures.
async fn unit_test(
    sh: &Shared,
    conn: &mut Conn,
    node: &Node,
) -> Result<materialize::Outcome, DbError> {
    let Some(unit) = node.unit.clone() else {
        return Err(DbError(format!("{} is not a unit test", node.unique_id)));
    };
    let (model_id, entry) = (&unit.0, &unit.1);
    let model = sh
        .graph
        .nodes
        .get(model_id)
        .ok_or_else(|| DbError(format!("unit test {}: no model {model_id}", node.name)))?;
    let incremental = entry
        .pointer("/overrides/macros/is_incremental")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let vars = entry
        .pointer("/overrides/vars")
        .and_then(Value::as_object)
        .cloned();
    let env: Option<HashMap<String, String>> = entry
        .pointer("/overrides/env_vars")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    )
                })
                .collect()
        });
    let compiled = {
        let known = sh.ephemerals.read().unwrap_or_else(|p| p.into_inner());
        compile_node(
            &sh.graph,
            model,
            &sh.target_ctx,
            sh.lookup.clone(),
            super::nodes::CompileWith {
                incremental,
                compiled: &known,
                query: sh.query.clone(),
                vars: vars.as_ref(),
                env: env.as_ref(),
            },
        )
        .map_err(|e| DbError(format!("{e:#}")))?
    };
    use super::jinja::Resolve as _;
    let mut inputs = Vec::new();
    for (given, (pkg, name)) in entry
        .get("given")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|g| {
            g.get("input")
                .and_then(Value::as_str)
                .is_some_and(|i| i.trim_start().starts_with("ref"))
        })
        .zip(&node.refs)
    {
        let (_, rel) = sh.lookup.node(pkg.as_deref(), name).ok_or_else(|| {
            DbError(format!(
                "unit test {}: ref('{name}') names no model or seed",
                node.name
            ))
        })?;
        inputs.push((rel.to_string(), name.clone(), given.clone()));
    }
    for (given, (src, table)) in entry
        .get("given")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|g| {
            g.get("input")
                .and_then(Value::as_str)
                .is_some_and(|i| i.trim_start().starts_with("source"))
        })
        .zip(&node.sources)
    {
        let (_, rel) = sh.lookup.source(src, table).ok_or_else(|| {
            DbError(format!(
                "unit test {}: source('{src}', '{table}') is not declared",
                node.name
            ))
        })?;
        inputs.push((rel.to_string(), format!("{src}__{table}"), given.clone()));
    }
    let fixtures: Vec<std::path::PathBuf> = sh
        .project
        .test_paths
        .iter()
        .map(|t| sh.project.dir.join(t).join("fixtures"))
        .collect();
    super::unit::run(conn, &sh.graph, node, &compiled.sql, &inputs, &fixtures).await
}

/// Fills the result from the outcome and writes `target/run/`.
fn finish(
    sh: &Shared,
    node: &Node,
    mut r: NodeResult,
    outcome: Result<materialize::Outcome, DbError>,
    (c1, t0): (chrono::DateTime<Utc>, Instant),
    sql: Option<&str>,
) -> NodeResult {
    let kind = sh.target.kind;
    let c2 = Utc::now();
    r.execute = Some((c1, c2));
    r.execution_time = t0.elapsed().as_secs_f64();
    match outcome {
        Ok(o) => {
            if !o.statements.is_empty() {
                sh.write_artifact("run", node, &o.statements.join(";\n\n"));
            }
            if let Some((failures, warn, error)) = o.test {
                let severity_error = node
                    .config
                    .get("severity")
                    .and_then(Value::as_str)
                    .is_none_or(|s| s.eq_ignore_ascii_case("error"));
                r.failures = Some(failures);
                let plural = if failures == 1 { "result" } else { "results" };
                let cfg = |k: &str| {
                    node.config
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("!= 0")
                        .to_string()
                };
                if error && severity_error {
                    r.status = "fail";
                    r.message = Some(format!(
                        "Got {failures} {plural}, configured to fail if {}",
                        cfg("error_if")
                    ));
                } else if warn || error {
                    r.status = "warn";
                    r.message = Some(format!(
                        "Got {failures} {plural}, configured to warn if {}",
                        cfg("warn_if")
                    ));
                } else {
                    r.status = "pass";
                }
                if node.resource == Resource::UnitTest {
                    // dbt reports the difference, not a count.
                    r.message = (r.status == "fail").then(|| o.message.clone());
                }
                r.adapter_response = match kind {
                    AdapterKind::Postgres => {
                        json!({"_message": "SELECT 1", "code": "SELECT", "rows_affected": 1})
                    }
                    AdapterKind::DuckDb => json!({"_message": "OK"}),
                };
            } else {
                r.message = Some(o.message.clone());
                r.adapter_response = adapter_response(kind, node, &o.message, o.rows);
            }
        }
        Err(e) => {
            r.status = "error";
            let kind_word = match kind {
                AdapterKind::Postgres => "Database Error",
                AdapterKind::DuckDb => "Runtime Error",
            };
            let at = sh.artifact_path(
                if node.resource == Resource::Test {
                    "compiled"
                } else {
                    "run"
                },
                node,
            );
            r.message = Some(format!(
                "{kind_word} in {}\n  {}\n  compiled code at {}",
                node.label(),
                e.0.replace('\n', "\n  "),
                at.strip_prefix(&sh.project.dir).unwrap_or(&at).display()
            ));
            if let Some(s) = sql {
                // Keep what was sent for inspection even when the warehouse refused it.
                sh.write_artifact("run", node, s);
            }
        }
    }
    r
}

/// `adapter_response` as dbt-postgres and dbt-duckdb report it.
fn adapter_response(kind: AdapterKind, node: &Node, message: &str, rows: Option<u64>) -> Value {
    let code = message.split(' ').next().unwrap_or_default();
    match (kind, node.resource, node.materialized()) {
        (_, Resource::Seed, _) => {
            json!({"_message": message, "code": "INSERT", "rows_affected": rows.unwrap_or(0)})
        }
        (AdapterKind::Postgres, _, "view") => {
            json!({"_message": "CREATE VIEW", "code": "CREATE VIEW", "rows_affected": -1})
        }
        (AdapterKind::Postgres, _, _) => {
            json!({"_message": message, "code": code, "rows_affected": rows.unwrap_or(0)})
        }
        (AdapterKind::DuckDb, _, _) => json!({"_message": "OK"}),
    }
}
