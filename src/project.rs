//! The project file `ferry.yml`: pipelines (a tap, a target, a state file), `${ENV}`
//! interpolation of config values, and resolution of each side to a built-in connector or an
//! external Singer executable.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::config_error;
use crate::secrets;

/// The default project file name.
pub const PROJECT_FILE: &str = "ferry.yml";

/// A loaded project.
#[derive(Debug)]
pub struct Project {
    /// The folder holding the project file; relative paths are taken from here.
    pub dir: PathBuf,
    /// The project file.
    pub file: PathBuf,
    /// Pipelines in file order.
    pub pipelines: Vec<Pipeline>,
    /// `transform:`: the dbt-style project folder (a path, or `{path, profiles_dir, target}`).
    pub transform: Option<Value>,
    /// `syncs:` (reverse ETL), as written.
    pub syncs: Option<Value>,
    /// `warehouse:`, the default warehouse syncs read from.
    pub warehouse: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectFile {
    /// Pipelines by name.
    #[serde(default)]
    pipelines: Map<String, Value>,
    // Sections of later features, accepted so one project file serves every command.
    #[serde(default)]
    warehouse: Option<Value>,
    #[serde(default)]
    syncs: Option<Value>,
    #[serde(default)]
    transform: Option<Value>,
}

/// One side of a pipeline as written in the project file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorSpec {
    /// A built-in connector (`jsonl`, `csv`, …).
    #[serde(default)]
    pub name: Option<String>,
    /// An external Singer executable (`tap-close`, `target-jsonl`, or a path).
    #[serde(default)]
    pub command: Option<String>,
    /// Extra arguments for `command`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Inline config.
    #[serde(default)]
    pub config: Option<Value>,
    /// A JSON or YAML config file.
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    /// The tap's catalog file.
    #[serde(default)]
    pub catalog: Option<PathBuf>,
    /// For external taps that predate `--catalog`: `--properties`.
    #[serde(default)]
    pub catalog_flag: Option<String>,
}

/// Pipeline settings as written in the project file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineSpec {
    tap: ConnectorSpec,
    target: ConnectorSpec,
    #[serde(default)]
    state: Option<PathBuf>,
    #[serde(default)]
    commit_interval_secs: Option<f64>,
    #[serde(default)]
    commit_rows: Option<u64>,
}

/// Where a connector comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectorKind {
    /// Built into ferry.
    Builtin(String),
    /// An external Singer executable and its extra arguments.
    Command(String, Vec<String>),
}

/// A resolved connector: kind, interpolated config, catalog path.
#[derive(Debug, Clone)]
pub struct Connector {
    /// Built-in or external.
    pub kind: ConnectorKind,
    /// Config with `${ENV}` substituted.
    pub config: Value,
    /// The catalog file, absolute.
    pub catalog: Option<PathBuf>,
    /// `--catalog` or `--properties` for external taps.
    pub catalog_flag: String,
}

impl Connector {
    /// A short label for logs: the built-in name or the command.
    pub fn label(&self) -> &str {
        match &self.kind {
            ConnectorKind::Builtin(n) | ConnectorKind::Command(n, _) => n,
        }
    }
}

/// A resolved pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Its name in the project file.
    pub name: String,
    /// The tap.
    pub tap: Connector,
    /// The target.
    pub target: Connector,
    /// The state file, absolute.
    pub state: PathBuf,
    /// Seconds between commits (at most), when a STATE is waiting.
    pub commit_interval_secs: Option<f64>,
    /// Rows between commits (at most), when a STATE is waiting.
    pub commit_rows: Option<u64>,
}

impl Project {
    /// Finds the project file: `explicit`, else `ferry.yml` in the working directory.
    ///
    /// # Errors
    /// A config error when there is none or it is unusable.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Project> {
        let file = match explicit {
            Some(p) => p.to_owned(),
            None => PathBuf::from(PROJECT_FILE),
        };
        let file = std::path::absolute(&file).unwrap_or(file);
        let text = std::fs::read_to_string(&file).map_err(|e| {
            config_error(format!(
                "cannot read the project file {}: {e} (run ferry in the project folder or pass --project)",
                file.display()
            ))
        })?;
        let dir = file
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        Project::parse(&text, &file, &dir)
    }

    /// Parses project text; `dir` anchors relative paths.
    ///
    /// # Errors
    /// A config error naming the file and the problem.
    pub fn parse(text: &str, file: &Path, dir: &Path) -> anyhow::Result<Project> {
        let raw: ProjectFile = serde_yaml_ng::from_str(text)
            .map_err(|e| config_error(format!("{}: {e}", file.display())))?;
        let mut pipelines = Vec::new();
        for (name, spec) in raw.pipelines {
            let spec: PipelineSpec = serde_json::from_value(spec)
                .map_err(|e| config_error(format!("{}: pipeline {name:?}: {e}", file.display())))?;
            let p = resolve(&name, spec, dir)
                .with_context(|| format!("{}: pipeline {name:?}", file.display()))?;
            pipelines.push(p);
        }
        Ok(Project {
            dir: dir.to_owned(),
            file: file.to_owned(),
            pipelines,
            transform: raw.transform,
            syncs: raw.syncs,
            warehouse: raw.warehouse,
        })
    }

    /// A pipeline by name.
    ///
    /// # Errors
    /// A config error listing the pipelines there are.
    pub fn pipeline(&self, name: &str) -> anyhow::Result<&Pipeline> {
        self.pipelines
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.pipelines.iter().map(|p| p.name.as_str()).collect();
                config_error(format!(
                    "no pipeline {name:?} in {}; pipelines: {}",
                    self.file.display(),
                    if known.is_empty() {
                        "(none)".to_string()
                    } else {
                        known.join(", ")
                    }
                ))
            })
    }
}

fn resolve(name: &str, spec: PipelineSpec, dir: &Path) -> anyhow::Result<Pipeline> {
    let tap = resolve_connector(spec.tap, dir).context("tap")?;
    let target = resolve_connector(spec.target, dir).context("target")?;
    let state = spec
        .state
        .map(|s| interpolate_path(&s))
        .transpose()?
        .unwrap_or_else(|| PathBuf::from("state").join(format!("{name}.json")));
    Ok(Pipeline {
        name: name.to_owned(),
        tap,
        target,
        state: dir.join(state),
        commit_interval_secs: spec.commit_interval_secs,
        commit_rows: spec.commit_rows,
    })
}

fn interpolate_path(p: &Path) -> anyhow::Result<PathBuf> {
    let s = p.to_string_lossy();
    Ok(PathBuf::from(interpolate_str(&s, false)?))
}

/// Resolves one side of a pipeline, reading and interpolating its config.
///
/// # Errors
/// A config error when neither or both of `name` and `command` are given, or the config is
/// unreadable or names a missing environment variable.
pub fn resolve_connector(spec: ConnectorSpec, dir: &Path) -> anyhow::Result<Connector> {
    let kind = match (spec.name, spec.command) {
        // A REST definition is a file next to ferry.yml.
        (Some(n), None) if crate::taps::rest::is_definition(&n) => ConnectorKind::Builtin(
            dir.join(interpolate_path(Path::new(&n))?)
                .display()
                .to_string(),
        ),
        (Some(n), None) => ConnectorKind::Builtin(n),
        (None, Some(c)) => ConnectorKind::Command(c, spec.args),
        (Some(_), Some(_)) => {
            return Err(config_error(
                "give either `name` (built-in) or `command` (external), not both",
            ))
        }
        (None, None) => {
            return Err(config_error(
                "needs `name` (a built-in connector) or `command` (a Singer executable)",
            ))
        }
    };
    let mut config = match (spec.config, spec.config_file) {
        (Some(_), Some(_)) => {
            return Err(config_error(
                "give either `config` or `config_file`, not both",
            ))
        }
        (Some(c), None) => c,
        (None, Some(f)) => read_config_file(&dir.join(interpolate_path(&f)?))?,
        (None, None) => Value::Object(Map::new()),
    };
    if !config.is_object() {
        return Err(config_error("`config` must be a mapping"));
    }
    interpolate(&mut config)?;
    secrets::register_config(&config);
    let catalog = spec
        .catalog
        .map(|c| interpolate_path(&c).map(|c| dir.join(c)))
        .transpose()?;
    Ok(Connector {
        kind,
        config,
        catalog,
        catalog_flag: spec.catalog_flag.unwrap_or_else(|| "--catalog".into()),
    })
}

/// Reads a JSON (or YAML) config file, with `${ENV}` interpolation.
///
/// # Errors
/// A config error naming the file.
pub fn read_config_file(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(format!("cannot read config file {}: {e}", path.display())))?;
    let is_yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yml" | "yaml")
    );
    let mut v: Value = if is_yaml {
        serde_yaml_ng::from_str(&text).map_err(|e| {
            config_error(format!(
                "config file {} is not valid YAML: {e}",
                path.display()
            ))
        })?
    } else {
        serde_json::from_str(&text).map_err(|e| {
            config_error(format!(
                "config file {} is not valid JSON: {e}",
                path.display()
            ))
        })?
    };
    if !v.is_object() {
        return Err(config_error(format!(
            "config file {} must hold an object",
            path.display()
        )));
    }
    interpolate(&mut v).with_context(|| format!("config file {}", path.display()))?;
    secrets::register_config(&v);
    Ok(v)
}

/// Replaces `${NAME}` (and `${NAME:-default}`) in every string of a config with the
/// environment's value; each substituted value is registered as a secret. `$${` is a
/// literal `${`.
///
/// # Errors
/// A config error naming the first missing variable.
pub fn interpolate(v: &mut Value) -> anyhow::Result<()> {
    match v {
        Value::String(s) if s.contains('$') => {
            *s = interpolate_str(s, true)?;
        }
        Value::Array(items) => {
            for i in items {
                interpolate(i)?;
            }
        }
        Value::Object(m) => {
            for (_, i) in m.iter_mut() {
                interpolate(i)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn interpolate_str(s: &str, register: bool) -> anyhow::Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(lit) = after.strip_prefix("${") {
            out.push_str("${");
            rest = lit;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body.find('}') else {
            return Err(config_error(format!("unterminated ${{…}} in {s:?}")));
        };
        let expr = &body[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        let value = match std::env::var(name) {
            Ok(v) if !(v.is_empty() && default.is_some()) => v,
            _ => match default {
                Some(d) => d.to_owned(),
                None => {
                    return Err(config_error(format!(
                        "environment variable {name} is not set (it is used as ${{{name}}} in the config)"
                    )))
                }
            },
        };
        if register {
            secrets::register(&value);
        }
        out.push_str(&value);
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_documented_shape() {
        let yml = r#"
pipelines:
  orders:
    tap:
      name: postgres
      config: { host: 127.0.0.1, dbname: shop, password: "${FERRY_TEST_PW}" }
      catalog: catalogs/orders.json
    target:
      name: jsonl
      config: { destination_path: out/ }
    state: state/orders.json
  crm:
    tap: { command: tap-close, config: {} }
    target: { command: target-jsonl, config: { destination_path: out/ } }
"#;
        std::env::set_var("FERRY_TEST_PW", "s3cret-pw");
        let p = Project::parse(yml, Path::new("/p/ferry.yml"), Path::new("/p")).unwrap();
        assert_eq!(p.pipelines.len(), 2);
        let o = p.pipeline("orders").unwrap();
        assert_eq!(o.tap.kind, ConnectorKind::Builtin("postgres".into()));
        assert_eq!(o.tap.config["password"], json!("s3cret-pw"));
        assert_eq!(
            o.tap.catalog.as_deref(),
            Some(Path::new("/p/catalogs/orders.json"))
        );
        assert_eq!(o.state, Path::new("/p/state/orders.json"));
        let c = p.pipeline("crm").unwrap();
        assert_eq!(
            c.tap.kind,
            ConnectorKind::Command("tap-close".into(), vec![])
        );
        assert_eq!(c.state, Path::new("/p/state/crm.json"));
        assert_eq!(secrets::redact("pw is s3cret-pw"), "pw is ***");
        let err = p.pipeline("nope").unwrap_err().to_string();
        assert!(err.contains("pipelines: orders, crm"), "{err}");
    }

    #[test]
    fn missing_env_var_is_named() {
        let mut v = json!({"a": ["${FERRY_SURELY_UNSET_VAR}"]});
        let err = interpolate(&mut v).unwrap_err().to_string();
        assert!(err.contains("FERRY_SURELY_UNSET_VAR"), "{err}");
        let mut v = json!({"a": "${FERRY_SURELY_UNSET_VAR:-dflt} $${x} $5"});
        interpolate(&mut v).unwrap();
        assert_eq!(v, json!({"a": "dflt ${x} $5"}));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Project::parse(
            "pipelines:\n  a:\n    tap: {name: csv}\n    target: {name: jsonl}\n    stat: x\n",
            Path::new("f"),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `stat`"), "{err}");
    }
}
