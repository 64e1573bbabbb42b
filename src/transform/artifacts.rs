//! `target/manifest.json` (schema v12) and `target/run_results.json` (v6) in dbt's shapes, so
//! tools that read dbt artifacts (orchestrators, docs sites, lineage tools) keep working.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

use super::nodes::{Column, Compiled, Graph, Node, Resource, Source};
use super::project::{DbtProject, Target};
use super::run::{relation_name, NodeResult};

/// One invocation's identity, shared by both files.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// A random-looking id (time-based).
    pub id: String,
    /// When it started.
    pub started: chrono::DateTime<chrono::Utc>,
    /// `run`, `build`, …
    pub which: String,
    /// The command line.
    pub args: Value,
}

impl Invocation {
    /// A new invocation.
    pub fn new(which: &str, args: Value) -> Invocation {
        let started = chrono::Utc::now();
        let n = started.timestamp_nanos_opt().unwrap_or(0) as u128 ^ u128::from(std::process::id());
        let h = format!("{n:032x}");
        let id = format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        );
        Invocation {
            id,
            started,
            which: which.into(),
            args,
        }
    }
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn columns_json(cols: &[Column]) -> Value {
    let mut m = Map::new();
    for c in cols {
        m.insert(
            c.name.clone(),
            json!({
                "name": c.name, "description": c.description, "meta": c.meta,
                "data_type": c.data_type, "constraints": [], "quote": null,
                "config": {"meta": {}, "tags": []}, "tags": [], "granularity": null, "doc_blocks": [],
            }),
        );
    }
    Value::Object(m)
}

fn node_json(
    project: &DbtProject,
    n: &Node,
    all: &HashMap<String, Compiled>,
    graph: &Graph,
    tests: &ColumnTests<'_>,
) -> Value {
    let compiled = all.get(&n.unique_id);
    let mut config = n.config.clone();
    config.entry("enabled").or_insert(json!(true));
    config.entry("tags").or_insert(json!([]));
    config.entry("meta").or_insert(json!({}));
    config.entry("alias").or_insert(Value::Null);
    config.entry("schema").or_insert(Value::Null);
    config.entry("database").or_insert(Value::Null);
    let compiled_path = compiled.map(|_| {
        let base = format!("{}/compiled/{}", project.target_path, project.name);
        if n.test.is_some() {
            format!("{base}/{}/{}", n.original_file_path, n.path)
        } else {
            format!("{base}/{}", n.original_file_path)
        }
    });
    let macros: Vec<String> = match &n.test {
        Some(t) => vec![format!("macro.dbt.test_{}", t.name)],
        None => Vec::new(),
    };
    let mut o = json!({
        "database": n.database,
        "schema": n.schema,
        "name": n.name,
        "resource_type": n.resource.as_str(),
        "package_name": project.name,
        "path": n.path,
        "original_file_path": n.original_file_path,
        "unique_id": n.unique_id,
        "fqn": n.fqn,
        "alias": n.alias,
        "checksum": if n.test.is_some() { json!({"name": "none", "checksum": ""}) } else { json!({"name": "sha256", "checksum": n.checksum}) },
        "config": null,
        "tags": n.tags(),
        "description": n.description,
        "columns": null,
        "meta": null,
        "group": null,
        "docs": {"show": true, "node_color": null},
        "patch_path": n.patch_path.as_ref().map(|p| format!("{}://{p}", project.name)),
        "build_path": null,
        "unrendered_config": {},
        "created_at": 0.0,
        "relation_name": relation_name(n),
        "raw_code": n.raw_code,
        "doc_blocks": doc_blocks(project, &n.raw_description),
        "language": "sql",
        "refs": n.refs.iter().map(|(p, name)| json!({"name": name, "package": p, "version": null})).collect::<Vec<_>>(),
        "sources": n.sources.iter().map(|(s, t)| json!([s, t])).collect::<Vec<_>>(),
        "metrics": [],
        "functions": [],
        "depends_on": {"macros": macros, "nodes": n.depends_on},
        "compiled_path": compiled_path,
        "compiled": compiled.is_some(),
        "compiled_code": compiled.map(|c| c.sql.clone()),
        "extra_ctes_injected": compiled.is_some(),
        "extra_ctes": compiled.map(|c| c.ctes.iter().map(|id| {
            let alias = graph.nodes.get(id).map(|e| e.alias.clone()).unwrap_or_default();
            let body = all.get(id).map(|e| e.pre_injected.clone()).unwrap_or_default();
            json!({"id": id, "sql": format!(" __dbt__cte__{alias} as (\n{body}\n)")})
        }).collect::<Vec<_>>()),
        "contract": {"enforced": false, "alias_types": true, "checksum": null},
    });
    let m = o.as_object_mut().expect("object");
    // Moved in, not through json! (which would serialize these trees once more).
    m.insert(
        "meta".into(),
        config.get("meta").cloned().unwrap_or_else(|| json!({})),
    );
    m.insert("config".into(), Value::Object(config));
    m.insert("columns".into(), columns_json(&n.columns));
    match n.resource {
        Resource::Model => {
            m.insert("access".into(), json!("protected"));
            m.insert("constraints".into(), json!([]));
            m.insert("version".into(), Value::Null);
            m.insert("latest_version".into(), Value::Null);
            m.insert("deprecation_date".into(), Value::Null);
            m.insert("primary_key".into(), json!(primary_key(tests, n)));
            m.insert("time_spine".into(), Value::Null);
        }
        Resource::Snapshot | Resource::Analysis | Resource::UnitTest => {}
        Resource::Seed => {
            for k in [
                "language",
                "refs",
                "sources",
                "metrics",
                "functions",
                "compiled_path",
                "compiled",
                "compiled_code",
                "extra_ctes_injected",
                "extra_ctes",
                "contract",
            ] {
                m.remove(k);
            }
            m.insert("root_path".into(), json!(project.dir.display().to_string()));
            m.insert("depends_on".into(), json!({"macros": []}));
        }
        Resource::Test => {
            if let Some(t) = &n.test {
                m.insert("column_name".into(), json!(t.column));
                m.insert(
                    "attached_node".into(),
                    if t.attached.starts_with("source.") {
                        Value::Null
                    } else {
                        json!(t.attached)
                    },
                );
                let mut kwargs = t.kwargs.clone();
                let target = if t.attached.starts_with("source.") {
                    let src = graph.sources.get(&t.attached);
                    format!(
                        "source('{}', '{}')",
                        src.map(|s| s.source_name.as_str()).unwrap_or(""),
                        src.map(|s| s.name.as_str()).unwrap_or("")
                    )
                } else {
                    format!(
                        "ref('{}')",
                        graph
                            .nodes
                            .get(&t.attached)
                            .map(|x| x.name.as_str())
                            .unwrap_or("")
                    )
                };
                kwargs.insert(
                    "model".into(),
                    json!(format!("{{{{ get_where_subquery({target}) }}}}")),
                );
                m.insert(
                    "test_metadata".into(),
                    match t.name.split_once('.') {
                        Some((ns, base)) => {
                            json!({"name": base, "kwargs": kwargs, "namespace": ns})
                        }
                        None => json!({"name": t.name, "kwargs": kwargs, "namespace": null}),
                    },
                );
                m.insert(
                    "file_key_name".into(),
                    json!(if t.attached.starts_with("source.") {
                        format!(
                            "sources.{}",
                            graph
                                .sources
                                .get(&t.attached)
                                .map(|s| s.source_name.as_str())
                                .unwrap_or("")
                        )
                    } else {
                        format!(
                            "models.{}",
                            graph
                                .nodes
                                .get(&t.attached)
                                .map(|x| x.name.as_str())
                                .unwrap_or("")
                        )
                    }),
                );
            } else {
                m.insert("column_name".into(), Value::Null);
                m.insert("attached_node".into(), Value::Null);
                m.insert("test_metadata".into(), Value::Null);
                m.insert("file_key_name".into(), Value::Null);
            }
        }
    }
    o
}

/// Column tests per node: (test name, column), so `primary_key` needs no scan of every node.
type ColumnTests<'a> = HashMap<&'a str, Vec<(&'a str, &'a str)>>;

fn column_tests(graph: &Graph) -> ColumnTests<'_> {
    let mut out: ColumnTests<'_> = HashMap::new();
    for t in graph.nodes.values().filter_map(|n| n.test.as_ref()) {
        if let Some(c) = &t.column {
            out.entry(t.attached.as_str())
                .or_default()
                .push((t.name.as_str(), c.as_str()));
        }
    }
    out
}

/// dbt fills `primary_key` from tests: the one column with a `unique` test, or among several
/// such columns the one that also has `not_null`.
fn primary_key(tests: &ColumnTests<'_>, n: &Node) -> Vec<String> {
    let Some(tests) = tests.get(n.unique_id.as_str()) else {
        return Vec::new();
    };
    let with = |kind: &str| -> Vec<String> {
        let mut v: Vec<String> = tests
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, c)| (*c).to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let unique = with("unique");
    if unique.len() == 1 {
        return unique;
    }
    let not_null = with("not_null");
    let both: Vec<String> = unique
        .into_iter()
        .filter(|c| not_null.contains(c))
        .collect();
    if both.len() == 1 {
        both
    } else {
        Vec::new()
    }
}

/// `doc('name')` calls in a description, as dbt lists them.
fn doc_blocks(project: &DbtProject, description: &str) -> Vec<String> {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"doc\(\s*['"]([A-Za-z0-9_]+)['"]\s*\)"#).expect("static regex")
    });
    RE.captures_iter(description)
        .map(|c| format!("doc.{}.{}", project.name, &c[1]))
        .collect()
}

fn source_json(project: &DbtProject, s: &Source) -> Value {
    json!({
        "database": s.database, "schema": s.schema, "name": s.name, "resource_type": "source",
        "package_name": project.name, "path": s.original_file_path, "original_file_path": s.original_file_path,
        "unique_id": s.unique_id, "fqn": s.fqn, "source_name": s.source_name,
        "source_description": s.source_description, "loader": s.loader, "identifier": s.identifier,
        "quoting": {"database": null, "schema": null, "identifier": null, "column": null},
        "loaded_at_field": s.loaded_at_field, "loaded_at_query": null,
        "freshness": s.freshness.clone().unwrap_or_default().json(),
        "external": null, "description": s.description, "columns": columns_json(&s.columns),
        "meta": s.config.get("meta").cloned().unwrap_or_else(|| json!({})), "source_meta": {},
        "tags": super::nodes::tags_list(s.config.get("tags")),
        "config": {"enabled": true, "event_time": null, "freshness": null, "loaded_at_field": null, "loaded_at_query": null, "meta": {}, "tags": [], "static_analysis": null},
        "patch_path": null, "unrendered_config": {}, "relation_name": s.relation().to_string(),
        "created_at": 0.0, "doc_blocks": [],
    })
}

fn md5_hex(s: &str) -> String {
    use md5::{Digest as _, Md5};
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The manifest.
pub fn manifest(
    project: &DbtProject,
    target: Option<&Target>,
    graph: &Graph,
    compiled: &HashMap<String, Compiled>,
    inv: &Invocation,
) -> Manifest {
    let tests = column_tests(graph);
    // Unit tests have a section of their own in dbt's manifest.
    let all: Vec<&Node> = graph
        .nodes
        .values()
        .filter(|n| n.resource != Resource::UnitTest)
        .collect();
    let unit_tests: Map<String, Value> = graph
        .nodes
        .values()
        .filter_map(|n| {
            let (model, entry) = &**n.unit.as_ref()?;
            Some((
                n.unique_id.clone(),
                json!({
                    "model": model.rsplit('.').next(), "given": entry.get("given"),
                    "expect": entry.get("expect"), "name": n.name, "resource_type": "unit_test",
                    "package_name": n.package(), "path": n.path,
                    "original_file_path": n.original_file_path, "unique_id": n.unique_id,
                    "fqn": n.fqn, "description": n.description,
                    "overrides": entry.get("overrides"),
                    "depends_on": {"macros": [], "nodes": n.depends_on},
                    "config": n.config, "versions": null, "version": null,
                }),
            ))
        })
        .collect();
    // Each node's JSON is made and serialized on all cores; the manifest splices them in.
    let nodes = super::par_map(all, |n| {
        let v = node_json(project, n, compiled, graph, &tests);
        let raw = serde_json::value::to_raw_value(&v).expect("a JSON value serializes");
        (n.unique_id.clone(), raw)
    });
    let mut sources = Map::new();
    for s in graph.sources.values() {
        sources.insert(s.unique_id.clone(), source_json(project, s));
    }
    let mut macros = Map::new();
    for m in &graph.jinja.macros {
        let id = format!("macro.{}.{}", project.name, m.name);
        macros.insert(
            id.clone(),
            json!({"name": m.name, "resource_type": "macro", "package_name": project.name,
                   "path": m.file, "original_file_path": m.file, "unique_id": id,
                   "macro_sql": m.sql, "depends_on": {"macros": []}, "description": "",
                   "meta": {}, "docs": {"show": true, "node_color": null}, "patch_path": null,
                   "arguments": [], "created_at": 0.0, "supported_languages": null}),
        );
    }
    let mut docs = Map::new();
    let mut doc_names: Vec<&String> = graph.docs.keys().collect();
    doc_names.sort();
    for name in doc_names {
        let id = format!("doc.{}.{name}", project.name);
        docs.insert(
            id.clone(),
            json!({"name": name, "resource_type": "doc", "package_name": project.name,
                   "unique_id": id, "block_contents": graph.docs[name]}),
        );
    }
    let mut parent_map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut child_map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in graph.nodes.keys().chain(graph.sources.keys()) {
        parent_map.insert(id.clone(), Vec::new());
        child_map.insert(id.clone(), Vec::new());
    }
    for n in graph.nodes.values() {
        let mut parents = n.depends_on.clone();
        parents.sort();
        for p in &parents {
            child_map
                .entry(p.clone())
                .or_default()
                .push(n.unique_id.clone());
        }
        parent_map.insert(n.unique_id.clone(), parents);
    }
    for v in child_map.values_mut() {
        v.sort();
    }
    let mut out = json!({
        "metadata": {
            "dbt_schema_version": "https://schemas.getdbt.com/dbt/manifest/v12.json",
            "dbt_version": super::DBT_VERSION,
            "generated_at": ts(chrono::Utc::now()),
            "invocation_id": inv.id,
            "invocation_started_at": inv.started.to_rfc3339(),
            "env": {},
            "project_name": project.name,
            "project_id": md5_hex(&project.name),
            "user_id": null,
            "send_anonymous_usage_stats": false,
            "adapter_type": target.map(|t| t.kind.as_str()),
            "quoting": {"database": true, "schema": true, "identifier": true, "column": null},
            "ferry_version": env!("CARGO_PKG_VERSION"),
        },
        "nodes": null,
        "sources": null,
        "macros": null,
        "docs": null,
        "exposures": {},
        "metrics": {},
        "groups": {},
        "selectors": {},
        "disabled": graph.disabled.iter().map(|d| (d.clone(), json!([]))).collect::<Map<String, Value>>(),
        "parent_map": null,
        "child_map": null,
        "group_map": {},
        "saved_queries": {},
        "semantic_models": {},
        "unit_tests": unit_tests,
        "functions": {},
    });
    // The big parts moved in afterwards: json! would serialize them into a copy first.
    let m = out.as_object_mut().expect("object");
    m.insert("sources".into(), Value::Object(sources));
    m.insert("macros".into(), Value::Object(macros));
    m.insert("docs".into(), Value::Object(docs));
    let to_map = |bm: BTreeMap<String, Vec<String>>| -> Value {
        Value::Object(
            bm.into_iter()
                .map(|(k, v)| (k, Value::Array(v.into_iter().map(Value::String).collect())))
                .collect(),
        )
    };
    m.insert("parent_map".into(), to_map(parent_map));
    m.insert("child_map".into(), to_map(child_map));
    let Value::Object(head) = out else {
        unreachable!("built as an object")
    };
    Manifest { head, nodes }
}

/// manifest.json: its sections, with the nodes already serialized (they are most of it).
pub struct Manifest {
    /// Every section in order; `nodes` is a placeholder.
    head: Map<String, Value>,
    nodes: Vec<(String, Box<serde_json::value::RawValue>)>,
}

impl serde::Serialize for Manifest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Nodes<'a>(&'a [(String, Box<serde_json::value::RawValue>)]);
        impl serde::Serialize for Nodes<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
            }
        }
        let mut m = s.serialize_map(Some(self.head.len()))?;
        for (k, v) in &self.head {
            if k == "nodes" {
                m.serialize_entry(k, &Nodes(&self.nodes))?;
            } else {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// run_results.json.
pub fn run_results<'a>(
    results: &'a [NodeResult],
    elapsed: f64,
    inv: &'a Invocation,
) -> RunResults<'a> {
    RunResults {
        metadata: json!({
            "dbt_schema_version": "https://schemas.getdbt.com/dbt/run-results/v6.json",
            "dbt_version": super::DBT_VERSION,
            "generated_at": ts(chrono::Utc::now()),
            "invocation_id": inv.id,
            "invocation_started_at": inv.started.to_rfc3339(),
            "env": {},
        }),
        results: results.iter().map(ResultJson).collect(),
        elapsed_time: elapsed,
        args: &inv.args,
    }
}

/// run_results.json, serialized straight from the results (no copy of the compiled SQL).
#[derive(serde::Serialize)]
pub struct RunResults<'a> {
    metadata: Value,
    results: Vec<ResultJson<'a>>,
    elapsed_time: f64,
    args: &'a Value,
}

/// One result, in dbt's field order.
pub struct ResultJson<'a>(&'a NodeResult);

impl serde::Serialize for ResultJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        #[derive(serde::Serialize)]
        struct Timing {
            name: &'static str,
            started_at: String,
            completed_at: String,
        }
        let r = self.0;
        let timing: Vec<Timing> = [("compile", r.compile), ("execute", r.execute)]
            .into_iter()
            .filter_map(|(name, t)| {
                t.map(|(a, b)| Timing {
                    name,
                    started_at: ts(a),
                    completed_at: ts(b),
                })
            })
            .collect();
        let mut m = s.serialize_map(Some(12))?;
        m.serialize_entry("status", r.status)?;
        m.serialize_entry("timing", &timing)?;
        m.serialize_entry("thread_id", &format!("Thread-{} (worker)", r.thread + 1))?;
        m.serialize_entry("execution_time", &r.execution_time)?;
        m.serialize_entry("adapter_response", &r.adapter_response)?;
        m.serialize_entry("message", &r.message)?;
        m.serialize_entry("failures", &r.failures)?;
        m.serialize_entry("unique_id", &r.unique_id)?;
        m.serialize_entry("compiled", &r.compiled_code.is_some())?;
        m.serialize_entry("compiled_code", &r.compiled_code)?;
        m.serialize_entry("relation_name", &r.relation_name)?;
        m.serialize_entry("batch_results", &())?;
        m.end()
    }
}

/// Writes `dir/name` atomically (a temporary file renamed over it).
///
/// # Errors
/// The file cannot be written.
pub fn write_json(
    dir: &std::path::Path,
    name: &str,
    v: &impl serde::Serialize,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let file = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    serde_json::to_writer(&mut w, v)?;
    w.flush()
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
