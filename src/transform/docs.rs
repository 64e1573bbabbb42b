//! `ferry transform docs`: one self-contained HTML page (no server, no scripts fetched) with
//! the lineage drawn as an SVG picture, from ferry's pipelines through the raw tables they
//! load, the models built on them, to the reverse-ETL syncs that read them; then every node's
//! description and columns.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde_json::Value;

use super::nodes::{Graph, Resource};
use super::project::DbtProject;
use crate::project::Project;

/// One box in the picture.
#[derive(Debug, Clone)]
struct Vertex {
    id: String,
    label: String,
    kind: &'static str,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn anchor(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The target schema a pipeline loads into, when its config names one (never other values:
/// configs hold secrets).
fn pipeline_schema(cfg: &Value) -> Option<String> {
    ["default_target_schema", "schema"]
        .iter()
        .find_map(|k| cfg.get(*k).and_then(Value::as_str))
        .map(str::to_string)
}

/// Builds the page.
pub fn page(project: &DbtProject, graph: &Graph, ferry: Option<&Project>) -> String {
    let mut vertices: Vec<Vertex> = Vec::new();
    let mut edges: Vec<(String, String)> = Vec::new();
    let target_duckdb_default = "main".to_string();
    if let Some(f) = ferry {
        for p in &f.pipelines {
            let id = format!("pipeline.{}", p.name);
            vertices.push(Vertex {
                id: id.clone(),
                label: format!("{} ({} → {})", p.name, p.tap.label(), p.target.label()),
                kind: "pipeline",
            });
            let schema = pipeline_schema(&p.target.config);
            for s in graph.sources.values() {
                let hit = s.loader == p.name
                    || schema.as_ref().is_some_and(|sc| *sc == s.schema)
                    || (schema.is_none()
                        && p.target.label() == "duckdb"
                        && s.schema == target_duckdb_default);
                if hit {
                    edges.push((id.clone(), s.unique_id.clone()));
                }
            }
        }
    }
    for s in graph.sources.values() {
        vertices.push(Vertex {
            id: s.unique_id.clone(),
            label: format!("{}.{}", s.source_name, s.name),
            kind: "source",
        });
    }
    for n in graph.nodes.values() {
        if n.resource == Resource::Test {
            continue;
        }
        vertices.push(Vertex {
            id: n.unique_id.clone(),
            label: n.name.clone(),
            kind: if n.resource == Resource::Seed {
                "seed"
            } else {
                "model"
            },
        });
        for d in &n.depends_on {
            edges.push((d.clone(), n.unique_id.clone()));
        }
    }
    if let Some(Value::Object(syncs)) = ferry.and_then(|f| f.syncs.as_ref()) {
        for (name, spec) in syncs {
            let id = format!("sync.{name}");
            let src = spec.get("source");
            let model = src.and_then(|s| s.get("model")).and_then(Value::as_str);
            let table = src.and_then(|s| s.get("table")).and_then(Value::as_str);
            let query = src.and_then(|s| s.get("query")).and_then(Value::as_str);
            let dest = spec
                .get("destination")
                .and_then(|d| d.get("name").or_else(|| d.get("command")))
                .and_then(Value::as_str)
                .unwrap_or("?");
            vertices.push(Vertex {
                id: id.clone(),
                label: format!("{name} → {dest}"),
                kind: "sync",
            });
            for n in graph
                .nodes
                .values()
                .filter(|n| n.resource != Resource::Test)
            {
                let named = model == Some(n.name.as_str())
                    || table.is_some_and(|t| t == n.alias || t.ends_with(&format!(".{}", n.alias)))
                    || query.is_some_and(|q| {
                        q.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                            .any(|w| w == n.alias || w.ends_with(&format!(".{}", n.alias)))
                    });
                if named {
                    edges.push((n.unique_id.clone(), id.clone()));
                }
            }
        }
    }

    // Layers: longest path from a root.
    let ids: HashMap<&str, usize> = vertices
        .iter()
        .enumerate()
        .map(|(i, v)| (v.id.as_str(), i))
        .collect();
    let edges: Vec<(usize, usize)> = edges
        .iter()
        .filter_map(|(a, b)| Some((*ids.get(a.as_str())?, *ids.get(b.as_str())?)))
        .collect();
    let mut layer = vec![0usize; vertices.len()];
    for _ in 0..vertices.len() {
        let mut changed = false;
        for &(a, b) in &edges {
            if layer[b] < layer[a] + 1 {
                layer[b] = layer[a] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut columns: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, l) in layer.iter().enumerate() {
        columns.entry(*l).or_default().push(i);
    }
    let (w, h, gap_x, gap_y) = (200.0_f64, 34.0_f64, 70.0_f64, 14.0_f64);
    let mut pos = vec![(0.0, 0.0); vertices.len()];
    let mut max_rows = 0;
    for (l, col) in &columns {
        max_rows = max_rows.max(col.len());
        for (r, &i) in col.iter().enumerate() {
            pos[i] = (
                20.0 + *l as f64 * (w + gap_x),
                20.0 + r as f64 * (h + gap_y),
            );
        }
    }
    let width = 40.0 + columns.len() as f64 * (w + gap_x);
    let height = 40.0 + max_rows as f64 * (h + gap_y);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="lineage">"#
    );
    for &(a, b) in &edges {
        let (x1, y1) = (pos[a].0 + w, pos[a].1 + h / 2.0);
        let (x2, y2) = (pos[b].0, pos[b].1 + h / 2.0);
        let mx = (x1 + x2) / 2.0;
        let _ = write!(
            svg,
            r##"<path d="M{x1:.1},{y1:.1} C{mx:.1},{y1:.1} {mx:.1},{y2:.1} {x2:.1},{y2:.1}" fill="none" stroke="#8a94a6" stroke-width="1.4" marker-end="url(#arrow)"/>"##
        );
    }
    svg.push_str(r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#8a94a6"/></marker></defs>"##);
    for (i, v) in vertices.iter().enumerate() {
        let (x, y) = pos[i];
        let color = match v.kind {
            "pipeline" => "#6c5ce7",
            "source" => "#00a37a",
            "seed" => "#7f8c8d",
            "sync" => "#e17055",
            _ => "#0984e3",
        };
        let label: String = if v.label.chars().count() > 28 {
            format!("{}…", v.label.chars().take(27).collect::<String>())
        } else {
            v.label.clone()
        };
        let _ = write!(
            svg,
            r##"<a href="#{}"><g><title>{}</title><rect x="{x:.1}" y="{y:.1}" width="{w}" height="{h}" rx="6" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="12" fill="#fff" font-family="sans-serif">{}</text></g></a>"##,
            anchor(&v.id),
            esc(&format!("{} {}", v.kind, v.label)),
            x + 8.0,
            y + h / 2.0 + 4.0,
            esc(&label)
        );
    }
    svg.push_str("</svg>");

    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>{}</h1><p class=\"legend\"><span class=\"k pipeline\">pipeline</span> <span class=\"k source\">source</span> <span class=\"k seed\">seed</span> <span class=\"k model\">model</span> <span class=\"k sync\">sync</span></p><div class=\"graph\">{svg}</div>",
        esc(&project.name)
    );
    if let Some(over) = graph.docs.get("__overview__") {
        let _ = write!(
            body,
            "<section><h2>Overview</h2><pre>{}</pre></section>",
            esc(over)
        );
    }
    for v in &vertices {
        let _ = write!(
            body,
            "<section id=\"{}\"><h2><span class=\"k {}\">{}</span> {}</h2>",
            anchor(&v.id),
            v.kind,
            v.kind,
            esc(&v.label)
        );
        let (desc, cols, rel, tests, sql) = if let Some(n) = graph.nodes.get(&v.id) {
            let tests: Vec<String> = graph
                .nodes
                .values()
                .filter(|t| t.resource == Resource::Test && t.depends_on.contains(&n.unique_id))
                .map(|t| t.name.clone())
                .collect();
            (
                n.description.clone(),
                n.columns.clone(),
                Some(n.relation().to_string()),
                tests,
                Some(n.raw_code.clone()),
            )
        } else if let Some(s) = graph.sources.get(&v.id) {
            (
                s.description.clone(),
                s.columns.clone(),
                Some(s.relation().to_string()),
                Vec::new(),
                None,
            )
        } else {
            (String::new(), Vec::new(), None, Vec::new(), None)
        };
        if let Some(r) = rel {
            let _ = write!(body, "<p class=\"rel\">{}</p>", esc(&r));
        }
        if !desc.is_empty() {
            let _ = write!(body, "<pre class=\"desc\">{}</pre>", esc(&desc));
        }
        if !cols.is_empty() {
            body.push_str("<table><tr><th>column</th><th>type</th><th>description</th></tr>");
            for c in cols {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&c.name),
                    esc(c.data_type.as_deref().unwrap_or("")),
                    esc(&c.description)
                );
            }
            body.push_str("</table>");
        }
        if !tests.is_empty() {
            let _ = write!(body, "<p>tests: {}</p>", esc(&tests.join(", ")));
        }
        if let Some(sql) = sql.filter(|s| !s.is_empty()) {
            let _ = write!(
                body,
                "<details><summary>SQL</summary><pre>{}</pre></details>",
                esc(&sql)
            );
        }
        body.push_str("</section>");
    }
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{} — ferry docs</title><style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222}} .graph{{overflow:auto;border:1px solid #ddd;padding:8px;margin-bottom:24px}}
section{{border-top:1px solid #eee;padding:8px 0}} .rel{{font-family:monospace;color:#555}} pre{{white-space:pre-wrap;background:#f7f7f9;padding:8px}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left}}
.k{{color:#fff;border-radius:4px;padding:1px 6px;font-size:12px}} .pipeline{{background:#6c5ce7}} .source{{background:#00a37a}} .seed{{background:#7f8c8d}} .model{{background:#0984e3}} .sync{{background:#e17055}}
</style></head><body>{body}</body></html>
"#,
        esc(&project.name)
    )
}
