//! dbt's node selection: `name`, `+name`, `name+`, `2+name`, `name+1`, `tag:…`, `path:…`,
//! `source:…`, `resource_type:…`, `config.<key>:…`, `fqn` wildcards; space-separated
//! arguments are a union, comma-joined parts an intersection; tests follow their parents.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use super::nodes::{Graph, Resource};
use crate::error::config_error;

/// Parents and children of every node and source.
#[derive(Debug, Default)]
pub struct Edges {
    /// id → what it depends on.
    pub parents: HashMap<String, Vec<String>>,
    /// id → what depends on it.
    pub children: HashMap<String, Vec<String>>,
}

impl Edges {
    /// From the graph's `depends_on`.
    pub fn of(graph: &Graph) -> Edges {
        let mut e = Edges::default();
        for n in graph.nodes.values() {
            e.parents.insert(n.unique_id.clone(), n.depends_on.clone());
            for p in &n.depends_on {
                e.children
                    .entry(p.clone())
                    .or_default()
                    .push(n.unique_id.clone());
            }
        }
        e
    }

    fn walk(&self, start: &str, up: bool, depth: Option<usize>, out: &mut BTreeSet<String>) {
        let map = if up { &self.parents } else { &self.children };
        let mut frontier = vec![start.to_string()];
        let mut level = 0;
        while !frontier.is_empty() && depth.is_none_or(|d| level < d) {
            let mut next = Vec::new();
            for id in frontier {
                for x in map.get(&id).into_iter().flatten() {
                    if out.insert(x.clone()) {
                        next.push(x.clone());
                    }
                }
            }
            frontier = next;
            level += 1;
        }
    }
}

/// Every id (nodes and sources).
fn all_ids(graph: &Graph) -> impl Iterator<Item = &String> {
    graph.nodes.keys().chain(graph.sources.keys())
}

fn glob_match(pattern: &str, s: &str) -> bool {
    glob::Pattern::new(pattern).is_ok_and(|p| p.matches(s))
}

/// Ids one method:value matches, before graph operators.
fn matches(graph: &Graph, method: &str, value: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    match method {
        "tag" => {
            for n in graph.nodes.values() {
                if n.tags().iter().any(|t| glob_match(value, t)) {
                    out.insert(n.unique_id.clone());
                }
            }
            for s in graph.sources.values() {
                if super::nodes::tags_list(s.config.get("tags"))
                    .iter()
                    .any(|t| glob_match(value, t))
                {
                    out.insert(s.unique_id.clone());
                }
            }
        }
        "path" | "file" => {
            let v = value.trim_end_matches('/');
            for n in graph.nodes.values() {
                let p = &n.original_file_path;
                let file = p.rsplit('/').next().unwrap_or(p);
                let hit = if method == "file" {
                    file == v || super::nodes::stem_of(file) == v
                } else {
                    p == v || p.starts_with(&format!("{v}/")) || glob_match(v, p)
                };
                if hit && n.test.is_none() {
                    out.insert(n.unique_id.clone());
                }
            }
        }
        "source" => {
            let (src, table) = value.split_once('.').unwrap_or((value, "*"));
            for s in graph.sources.values() {
                if glob_match(src, &s.source_name) && glob_match(table, &s.name) {
                    out.insert(s.unique_id.clone());
                }
            }
        }
        "resource_type" => {
            for n in graph.nodes.values() {
                if n.resource.as_str() == value {
                    out.insert(n.unique_id.clone());
                }
            }
            if value == "source" {
                out.extend(graph.sources.keys().cloned());
            }
        }
        "test_type" => {
            for n in graph.nodes.values() {
                let kind = if n.test.is_some() { "generic" } else { "singular" };
                if n.resource == Resource::Test && kind == value {
                    out.insert(n.unique_id.clone());
                }
            }
        }
        "test_name" => {
            for n in graph.nodes.values() {
                if n.test.as_ref().is_some_and(|t| glob_match(value, &t.name)) {
                    out.insert(n.unique_id.clone());
                }
            }
        }
        m if m.starts_with("config.") => {
            let key = &m["config.".len()..];
            for n in graph.nodes.values() {
                let hit = match n.config.get(key) {
                    Some(Value::String(s)) => glob_match(value, s),
                    Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(value)),
                    Some(Value::Bool(b)) => b.to_string() == value,
                    Some(other) => *other == value,
                    None => false,
                };
                if hit {
                    out.insert(n.unique_id.clone());
                }
            }
        }
        "fqn" => {
            let parts: Vec<&str> = value.split('.').collect();
            for n in graph.nodes.values() {
                if fqn_match(&n.fqn, &parts) {
                    out.insert(n.unique_id.clone());
                }
            }
            for s in graph.sources.values() {
                if fqn_match(&s.fqn, &parts) {
                    out.insert(s.unique_id.clone());
                }
            }
        }
        other => {
            return Err(config_error(format!(
                "selector method {other:?} is not supported; use a name, tag:, path:, source:, resource_type:, test_type:, test_name:, config.<key>: or fqn:"
            )))
        }
    }
    Ok(out)
}

/// dbt's fqn rule: the last part equals the name, or the parts are a prefix of the fqn
/// (with or without the package name), `*` matching anything.
fn fqn_match(fqn: &[String], parts: &[&str]) -> bool {
    if parts.len() == 1 && fqn.last().is_some_and(|l| glob_match(parts[0], l)) {
        return true;
    }
    let prefix_of =
        |f: &[String]| parts.len() <= f.len() && parts.iter().zip(f).all(|(p, x)| glob_match(p, x));
    prefix_of(fqn) || (fqn.len() > 1 && prefix_of(&fqn[1..]))
}

/// One selector part with its graph operators.
fn select_part(graph: &Graph, edges: &Edges, part: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut s = part;
    let mut up: Option<Option<usize>> = None;
    let mut down: Option<Option<usize>> = None;
    let mut at = false;
    if let Some(rest) = s.strip_prefix('@') {
        at = true;
        s = rest;
    }
    if let Some(pos) = s.find('+') {
        let (head, rest) = s.split_at(pos);
        if head.chars().all(|c| c.is_ascii_digit()) {
            up = Some(head.parse().ok());
            s = &rest[1..];
        }
    }
    if let Some(pos) = s.rfind('+') {
        let (rest, tail) = s.split_at(pos);
        let digits = &tail[1..];
        if digits.chars().all(|c| c.is_ascii_digit()) {
            down = Some(digits.parse().ok());
            s = rest;
        }
    }
    if s.is_empty() {
        return Err(config_error(format!("empty selector in {part:?}")));
    }
    let (method, value) = match s.split_once(':') {
        Some((m, v)) => (m, v),
        None if s.contains('/') || s.ends_with(".sql") || s.ends_with(".csv") => ("path", s),
        None => ("fqn", s),
    };
    let base = matches(graph, method, value)?;
    let mut out = base.clone();
    for id in &base {
        if let Some(d) = up {
            edges.walk(id, true, d, &mut out);
        }
        if let Some(d) = down {
            edges.walk(id, false, d, &mut out);
        }
        if at {
            let mut desc = BTreeSet::new();
            edges.walk(id, false, None, &mut desc);
            for x in &desc {
                edges.walk(x, true, None, &mut out);
            }
            out.extend(desc);
        }
    }
    Ok(out)
}

/// Union of space-separated selectors, each an intersection of comma-joined parts.
fn select_all(graph: &Graph, edges: &Edges, args: &[String]) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for arg in args.iter().flat_map(|a| a.split_whitespace()) {
        let mut inter: Option<BTreeSet<String>> = None;
        for part in arg.split(',') {
            let s = select_part(graph, edges, part)?;
            inter = Some(match inter {
                None => s,
                Some(prev) => prev.intersection(&s).cloned().collect(),
            });
        }
        out.extend(inter.unwrap_or_default());
    }
    Ok(out)
}

/// The nodes a command acts on: `--select` (default everything) minus `--exclude`, with
/// tests added when any parent is selected (dbt's eager indirect selection). Sources are
/// never in the result.
///
/// # Errors
/// A config error for an unknown selector method.
pub fn select(
    graph: &Graph,
    select: &[String],
    exclude: &[String],
) -> anyhow::Result<BTreeSet<String>> {
    let mut chosen = chosen(graph, select, exclude)?;
    chosen.retain(|id| graph.nodes.contains_key(id));
    Ok(chosen)
}

/// The selected sources (for `source freshness`), by the same grammar.
///
/// # Errors
/// As [`select`].
pub fn select_sources(
    graph: &Graph,
    select: &[String],
    exclude: &[String],
) -> anyhow::Result<BTreeSet<String>> {
    let mut chosen = chosen(graph, select, exclude)?;
    chosen.retain(|id| graph.sources.contains_key(id));
    Ok(chosen)
}

fn chosen(
    graph: &Graph,
    select: &[String],
    exclude: &[String],
) -> anyhow::Result<BTreeSet<String>> {
    let edges = Edges::of(graph);
    let mut chosen: BTreeSet<String> = if select.is_empty() {
        all_ids(graph).cloned().collect()
    } else {
        select_all(graph, &edges, select)?
    };
    let with_tests = |set: &mut BTreeSet<String>| {
        for n in graph.nodes.values() {
            if n.resource == Resource::Test && n.depends_on.iter().any(|p| set.contains(p)) {
                set.insert(n.unique_id.clone());
            }
        }
    };
    with_tests(&mut chosen);
    if !exclude.is_empty() {
        let mut ex = select_all(graph, &edges, exclude)?;
        with_tests(&mut ex);
        chosen.retain(|id| !ex.contains(id));
    }
    Ok(chosen)
}

/// Finds a dependency cycle among nodes, as the path `a -> b -> … -> a`.
pub fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    let mut marks: HashMap<&str, Mark> = HashMap::new();
    for start in graph.nodes.keys() {
        if marks.contains_key(start.as_str()) {
            continue;
        }
        // Iterative DFS keeping the path.
        let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        marks.insert(start, Mark::Open);
        while let Some((id, i)) = stack.last().cloned() {
            let deps = graph
                .nodes
                .get(id)
                .map(|n| n.depends_on.as_slice())
                .unwrap_or(&[]);
            if i < deps.len() {
                stack.last_mut().expect("non-empty").1 += 1;
                let d = deps[i].as_str();
                if !graph.nodes.contains_key(d) {
                    continue;
                }
                match marks.get(d) {
                    Some(Mark::Open) => {
                        let pos = stack.iter().position(|(x, _)| *x == d).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            stack[pos..].iter().map(|(x, _)| (*x).to_string()).collect();
                        cycle.push(d.to_string());
                        cycle.reverse();
                        return Some(cycle);
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(d, Mark::Open);
                        stack.push((d, 0));
                    }
                }
            } else {
                marks.insert(id, Mark::Done);
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqn_rules() {
        let f: Vec<String> = ["shop", "staging", "stg_orders"].map(String::from).to_vec();
        assert!(fqn_match(&f, &["stg_orders"]));
        assert!(fqn_match(&f, &["staging"]));
        assert!(fqn_match(&f, &["shop", "staging"]));
        assert!(fqn_match(&f, &["staging", "stg_*"]));
        assert!(!fqn_match(&f, &["marts"]));
    }
}
