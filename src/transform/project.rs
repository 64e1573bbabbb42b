//! A dbt-style project on disk: `dbt_project.yml`, `profiles.yml`, and the files of its model,
//! seed, test and macro folders, read as dbt reads them (old and new key spellings alike).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Map, Value};

use crate::error::config_error;

/// `dbt_project.yml`, the parts ferry acts on; the whole file is kept in `raw`.
#[derive(Debug, Clone)]
pub struct DbtProject {
    /// The project folder.
    pub dir: PathBuf,
    /// `name`.
    pub name: String,
    /// `profile` (default: the project name).
    pub profile: String,
    /// `model-paths` (`source-paths` in old projects).
    pub model_paths: Vec<String>,
    /// `seed-paths` (`data-paths`).
    pub seed_paths: Vec<String>,
    /// `test-paths`.
    pub test_paths: Vec<String>,
    /// `macro-paths`.
    pub macro_paths: Vec<String>,
    /// `analysis-paths`.
    pub analysis_paths: Vec<String>,
    /// `snapshot-paths`.
    pub snapshot_paths: Vec<String>,
    /// `docs-paths` (default: every resource folder).
    pub docs_paths: Vec<String>,
    /// `target-path` (default `target`).
    pub target_path: String,
    /// `vars`: global ones, and this project's own (`vars: {<name>: {...}}`) merged over them.
    pub vars: Map<String, Value>,
    /// The `models:` config tree.
    pub models: Value,
    /// The `seeds:` config tree.
    pub seeds: Value,
    /// The `data_tests:` (or `tests:`) config tree.
    pub tests: Value,
    /// The `sources:` config tree.
    pub sources: Value,
    /// The `snapshots:` config tree.
    pub snapshots: Value,
    /// The whole file.
    pub raw: Value,
}

fn strings(v: Option<&Value>, default: &[&str]) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => default.iter().map(|s| (*s).to_string()).collect(),
    }
}

/// Reads a YAML file into JSON values, as a config error naming the file.
///
/// # Errors
/// The file cannot be read or is not YAML.
pub fn read_yaml(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(format!("cannot read {}: {e}", path.display())))?;
    parse_yaml(&text, path)
}

/// Parses YAML text (an empty file is `null`).
///
/// # Errors
/// A config error with the file and the parser's line.
pub fn parse_yaml(text: &str, path: &Path) -> anyhow::Result<Value> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_yaml_ng::from_str::<Value>(text)
        .map_err(|e| config_error(format!("{}: not valid YAML: {e}", path.display())))
}

impl DbtProject {
    /// Loads `dbt_project.yml` from a folder. `env_var()` in its strings is rendered.
    ///
    /// # Errors
    /// A config error when the file is missing or unusable.
    pub fn load(dir: &Path) -> anyhow::Result<DbtProject> {
        let file = dir.join("dbt_project.yml");
        if !file.is_file() {
            return Err(config_error(format!(
                "no dbt_project.yml in {}: pass --project-dir, or set `transform:` in ferry.yml",
                dir.display()
            )));
        }
        let mut raw = read_yaml(&file)?;
        super::jinja::render_env_vars(&mut raw)
            .with_context(|| format!("rendering {}", file.display()))?;
        let o = raw
            .as_object()
            .ok_or_else(|| config_error(format!("{}: expected a mapping", file.display())))?;
        let name = o
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| config_error(format!("{}: `name` is required", file.display())))?
            .to_string();
        let profile = o
            .get("profile")
            .and_then(Value::as_str)
            .unwrap_or(&name)
            .to_string();
        let model_paths = strings(
            o.get("model-paths").or_else(|| o.get("source-paths")),
            &["models"],
        );
        let seed_paths = strings(
            o.get("seed-paths").or_else(|| o.get("data-paths")),
            &["seeds"],
        );
        let test_paths = strings(o.get("test-paths"), &["tests"]);
        let macro_paths = strings(o.get("macro-paths"), &["macros"]);
        let analysis_paths = strings(o.get("analysis-paths"), &["analyses"]);
        let snapshot_paths = strings(o.get("snapshot-paths"), &["snapshots"]);
        let docs_paths = match o.get("docs-paths") {
            Some(v) => strings(Some(v), &[]),
            None => model_paths
                .iter()
                .chain(&seed_paths)
                .chain(&test_paths)
                .chain(&macro_paths)
                .chain(&analysis_paths)
                .chain(&snapshot_paths)
                .cloned()
                .collect(),
        };
        let target_path = o
            .get("target-path")
            .and_then(Value::as_str)
            .unwrap_or("target")
            .to_string();
        let mut vars = Map::new();
        if let Some(Value::Object(v)) = o.get("vars") {
            for (k, x) in v {
                if k != &name {
                    vars.insert(k.clone(), x.clone());
                }
            }
            if let Some(Value::Object(own)) = v.get(&name) {
                for (k, x) in own {
                    vars.insert(k.clone(), x.clone());
                }
            }
        }
        let tree = |k: &str| o.get(k).cloned().unwrap_or(Value::Null);
        Ok(DbtProject {
            dir: dir.to_path_buf(),
            profile,
            model_paths,
            seed_paths,
            test_paths,
            macro_paths,
            analysis_paths,
            snapshot_paths,
            docs_paths,
            target_path,
            vars,
            models: tree("models"),
            seeds: tree("seeds"),
            tests: o
                .get("data_tests")
                .or_else(|| o.get("tests"))
                .cloned()
                .unwrap_or(Value::Null),
            sources: tree("sources"),
            snapshots: tree("snapshots"),
            name,
            raw,
        })
    }

    /// The target folder (manifest, compiled SQL, run results).
    pub fn target_dir(&self) -> PathBuf {
        self.dir.join(&self.target_path)
    }
}

/// The warehouses a profile output can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterKind {
    /// `type: postgres`.
    Postgres,
    /// `type: duckdb`.
    DuckDb,
}

impl AdapterKind {
    /// The name dbt uses (`target.type`).
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterKind::Postgres => "postgres",
            AdapterKind::DuckDb => "duckdb",
        }
    }
}

/// The chosen output of a profile.
#[derive(Debug, Clone)]
pub struct Target {
    /// The profile's name.
    pub profile_name: String,
    /// The output's name (`target.name`).
    pub name: String,
    /// `type`.
    pub kind: AdapterKind,
    /// The default schema.
    pub schema: String,
    /// The database as relations name it: Postgres' dbname, DuckDB's file stem.
    pub database: String,
    /// `threads` (default 1; `--threads` overrides).
    pub threads: usize,
    /// Every field of the output, for connecting (and for `target.*` in Jinja, secrets removed).
    pub fields: Map<String, Value>,
    /// The DuckDB file, resolved against the project folder.
    pub path: Option<PathBuf>,
}

/// Where profiles.yml is looked for, in dbt's order.
fn profile_dirs(project_dir: &Path, explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(p) = explicit {
        dirs.push(p.to_path_buf());
        return dirs;
    }
    if let Some(p) = std::env::var_os("DBT_PROFILES_DIR") {
        dirs.push(PathBuf::from(p));
    }
    dirs.push(project_dir.to_path_buf());
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".dbt"));
    }
    dirs
}

/// Finds and reads the profile's output.
///
/// # Errors
/// A config error saying where profiles.yml was looked for, or which profile or target is
/// missing and which exist.
pub fn load_target(
    project: &DbtProject,
    profiles_dir: Option<&Path>,
    target: Option<&str>,
    threads: Option<usize>,
) -> anyhow::Result<Target> {
    let dirs = profile_dirs(&project.dir, profiles_dir);
    let file = dirs
        .iter()
        .map(|d| d.join("profiles.yml"))
        .find(|f| f.is_file())
        .ok_or_else(|| {
            config_error(format!(
                "no profiles.yml found (looked in {}); pass --profiles-dir",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    // As dbt: only the selected profile's `target` and the selected output are rendered, so an
    // unselected output (prod's `env_var('PROD_PASSWORD')`) needs nothing from the environment.
    let all = read_yaml(&file)?;
    let render = |mut v: Value| -> anyhow::Result<Value> {
        // A missing variable is the user's configuration to fix (exit 2), as in ferry.yml.
        super::jinja::render_env_vars(&mut v)
            .map_err(|e| config_error(format!("rendering {}: {e:#}", file.display())))?;
        Ok(v)
    };
    let profile = all.get(&project.profile).ok_or_else(|| {
        let names: Vec<&String> = all
            .as_object()
            .map(|o| o.keys().filter(|k| *k != "config").collect())
            .unwrap_or_default();
        config_error(format!(
            "{}: no profile named {:?} (dbt_project.yml asks for it); profiles there: {names:?}",
            file.display(),
            project.profile
        ))
    })?;
    let name = match target {
        Some(t) => t.to_string(),
        None => match profile.get("target") {
            Some(t) => render(t.clone())?
                .as_str()
                .map_or_else(|| "default".to_string(), str::to_string),
            None => "default".to_string(),
        },
    };
    let outputs = profile.get("outputs").and_then(Value::as_object);
    let out = outputs
        .and_then(|o| o.get(&name))
        .filter(|o| o.is_object())
        .map(|o| render(o.clone()))
        .transpose()?
        .and_then(|o| o.as_object().cloned())
        .ok_or_else(|| {
            config_error(format!(
                "{}: profile {:?} has no target {name:?}; targets there: {:?}",
                file.display(),
                project.profile,
                outputs
                    .map(|o| o.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            ))
        })?;
    let kind = match out.get("type").and_then(Value::as_str) {
        Some("postgres") => AdapterKind::Postgres,
        Some("duckdb") => AdapterKind::DuckDb,
        other => {
            return Err(config_error(format!(
                "{}: target {name:?} has type {other:?}; ferry runs `postgres` and `duckdb`",
                file.display()
            )))
        }
    };
    let s = |k: &str| out.get(k).and_then(scalar_string);
    let (schema, database, path) = match kind {
        AdapterKind::Postgres => {
            let schema = s("schema").ok_or_else(|| {
                config_error(format!(
                    "{}: target {name:?} needs `schema`",
                    file.display()
                ))
            })?;
            let db = s("dbname").or_else(|| s("database")).ok_or_else(|| {
                config_error(format!(
                    "{}: target {name:?} needs `dbname`",
                    file.display()
                ))
            })?;
            (schema, db, None)
        }
        AdapterKind::DuckDb => {
            let p = s("path").unwrap_or_else(|| ":memory:".to_string());
            let (db, path) = if p == ":memory:" {
                ("memory".to_string(), None)
            } else {
                let pb = project.dir.join(&p);
                let stem = pb
                    .file_stem()
                    .map(|x| x.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "main".into());
                (stem, Some(pb))
            };
            (s("schema").unwrap_or_else(|| "main".into()), db, path)
        }
    };
    let threads = threads
        .or_else(|| {
            out.get("threads")
                .and_then(scalar_string)
                .and_then(|t| t.parse().ok())
        })
        .unwrap_or(1)
        .max(1);
    Ok(Target {
        profile_name: project.profile.clone(),
        name,
        kind,
        schema,
        database,
        threads,
        fields: out,
        path,
    })
}

/// A YAML scalar as a string (ports and thread counts are often written as numbers).
pub fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// One file found under a resource folder.
#[derive(Debug, Clone)]
pub struct Found {
    /// Absolute path.
    pub abs: PathBuf,
    /// Path from the project folder (`models/staging/stg_orders.sql`), `/`-separated.
    pub original: String,
    /// Path inside its resource folder (`staging/stg_orders.sql`).
    pub inner: String,
}

/// Every file with one of `exts` under the given resource folders, sorted for stable output.
/// Missing folders are fine, as dbt has them.
pub fn find_files(project_dir: &Path, roots: &[String], exts: &[&str]) -> Vec<Found> {
    let mut out = BTreeMap::new();
    for root in roots {
        let base = project_dir.join(root);
        let mut stack = vec![base.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else if exts.iter().any(|x| name.ends_with(x)) {
                    let inner = rel(&p, &base);
                    let original = format!("{}/{inner}", root.trim_end_matches('/'));
                    out.insert(
                        original.clone(),
                        Found {
                            abs: p,
                            original,
                            inner,
                        },
                    );
                }
            }
        }
    }
    out.into_values().collect()
}

fn rel(p: &Path, base: &Path) -> String {
    p.strip_prefix(base)
        .unwrap_or(p)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_and_new_path_keys() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("dbt_project.yml"),
            "name: shop\nsource-paths: [src]\ndata-paths: [data]\nvars: {a: 1, shop: {b: 2}, other: {c: 3}}\n",
        )
        .unwrap();
        let p = DbtProject::load(d.path()).unwrap();
        assert_eq!(p.model_paths, ["src"]);
        assert_eq!(p.seed_paths, ["data"]);
        assert_eq!(p.profile, "shop");
        assert_eq!(p.vars.get("a"), Some(&Value::from(1)));
        assert_eq!(p.vars.get("b"), Some(&Value::from(2)));
        assert!(!p.vars.contains_key("c"));
    }
}
