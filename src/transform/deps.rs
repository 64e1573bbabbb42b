//! `ferry transform deps`: installs the packages of `packages.yml` (or `dependencies.yml`)
//! into `dbt_packages/` and writes `package-lock.yml`, as `dbt deps` does: `local:` packages
//! as a symlink to their folder, `git:` packages cloned at their `revision` (a branch, tag or
//! commit; the lock pins the commit) with an optional `subdirectory`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};

use super::project::DbtProject;
use crate::error::config_error;

/// The folder packages are installed into (`packages-install-path`).
pub fn install_path(project: &DbtProject) -> PathBuf {
    project.dir.join(
        project
            .raw
            .get("packages-install-path")
            .and_then(Value::as_str)
            .unwrap_or("dbt_packages"),
    )
}

/// The `packages:` list of packages.yml or dependencies.yml, as written and rendered
/// (`env_var()` filled in), or `None` when the project has neither file.
fn declared(project: &DbtProject) -> anyhow::Result<Option<Vec<(Value, Value)>>> {
    for name in ["packages.yml", "dependencies.yml"] {
        let path = project.dir.join(name);
        if !path.is_file() {
            continue;
        }
        let raw = super::project::read_yaml(&path)?;
        let list = raw
            .get("packages")
            .cloned()
            .unwrap_or(Value::Array(Vec::new()));
        let Value::Array(items) = list else {
            return Err(config_error(format!(
                "{}: `packages:` must be a list",
                path.display()
            )));
        };
        let mut out = Vec::new();
        for item in items {
            let mut rendered = item.clone();
            super::jinja::render_env_vars(&mut rendered)
                .map_err(|e| config_error(format!("{}: {e:#}", path.display())))?;
            out.push((item, rendered));
        }
        return Ok(Some(out));
    }
    Ok(None)
}

/// Python's `json.dumps(v, sort_keys=True)`, which dbt hashes for the lock file.
fn py_json(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .iter()
                .map(|k| format!("{}: {}", py_str(k), py_json(&o[*k])))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(py_json).collect::<Vec<_>>().join(", ")),
        Value::String(s) => py_str(s),
        other => other.to_string(),
    }
}

/// A JSON string as Python writes it (non-ASCII escaped).
fn py_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// dbt's `_create_sha1_hash`: each package as dbt's dataclass dict (the rendered keys, the
/// entry as written under `unrendered`), sorted, one per line.
fn lock_hash(packages: &[(Value, Value)]) -> String {
    use sha1::{Digest as _, Sha1};
    let mut lines: Vec<String> = packages
        .iter()
        .map(|(raw, rendered)| {
            let mut d = rendered.as_object().cloned().unwrap_or_default();
            if d.contains_key("git") {
                d.entry("warn-unpinned").or_insert(Value::Null);
            }
            d.insert("unrendered".into(), raw.clone());
            py_json(&Value::Object(d))
        })
        .collect();
    lines.sort();
    Sha1::digest(lines.join("\n").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn package_name(dir: &Path) -> anyhow::Result<String> {
    let file = dir.join("dbt_project.yml");
    let v = super::project::read_yaml(&file).map_err(|e| {
        config_error(format!(
            "{} is not a dbt package (no readable dbt_project.yml): {e:#}",
            dir.display()
        ))
    })?;
    v.get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| config_error(format!("{} has no `name`", file.display())))
}

fn git(args: &[&str], cwd: Option<&Path>) -> anyhow::Result<String> {
    let mut c = Command::new("git");
    c.args(args).env("GIT_TERMINAL_PROMPT", "0");
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    let out = c
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run git (is it installed?): {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_name() == ".git" {
            continue;
        }
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// A YAML scalar as PyYAML writes it: plain when that reads back the same, else quoted.
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@`~ ".contains(c))
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.ends_with(' ')
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "~"
        )
        && s.parse::<f64>().is_err();
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// Installs every declared package and writes package-lock.yml. Returns how many.
///
/// # Errors
/// A config error for a malformed packages.yml or a package that cannot be found; git's
/// message when a clone or checkout fails.
pub fn install(project: &DbtProject) -> anyhow::Result<usize> {
    let Some(packages) = declared(project)? else {
        tracing::info!("No packages.yml or dependencies.yml; nothing to install.");
        return Ok(0);
    };
    let dest = install_path(project);
    if dest.exists() {
        std::fs::remove_dir_all(&dest)
            .map_err(|e| anyhow::anyhow!("cannot clear {}: {e}", dest.display()))?;
    }
    std::fs::create_dir_all(&dest)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dest.display()))?;
    let mut locked: Vec<Map<String, Value>> = Vec::new();
    for (_, p) in &packages {
        let Some(o) = p.as_object() else {
            return Err(config_error(format!(
                "packages.yml: each package is a mapping (local:, git: or package:), not {p}"
            )));
        };
        let mut entry = Map::new();
        if let Some(local) = o.get("local").and_then(Value::as_str) {
            let src = project.dir.join(local);
            let src = std::fs::canonicalize(&src).map_err(|e| {
                config_error(format!(
                    "packages.yml: local package {local} ({}) cannot be read: {e}",
                    src.display()
                ))
            })?;
            let name = package_name(&src)?;
            symlink(&src, &dest.join(&name))?;
            tracing::info!("Installed from <local @ {local}>");
            entry.insert("local".into(), Value::from(local));
            entry.insert("name".into(), Value::from(name));
        } else if let Some(url) = o.get("git").and_then(Value::as_str) {
            let revision = match o.get("revision") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let tmp = dest.join(format!(".clone-{}", locked.len()));
            git(&["clone", "--quiet", url, &tmp.to_string_lossy()], None)
                .map_err(|e| anyhow::anyhow!("installing {url}: {e:#}"))?;
            if let Some(rev) = &revision {
                git(&["checkout", "--quiet", rev], Some(&tmp))
                    .map_err(|e| anyhow::anyhow!("installing {url} at {rev}: {e:#}"))?;
            } else {
                tracing::warn!(
                    "The git package {url} is not pinned to a revision; the lock pins what was cloned. Add `revision:` to packages.yml."
                );
            }
            let sha = git(&["rev-parse", "HEAD"], Some(&tmp))?;
            let sub = o.get("subdirectory").and_then(Value::as_str);
            let src = sub.map_or_else(|| tmp.clone(), |s| tmp.join(s));
            let name = package_name(&src)?;
            copy_tree(&src, &dest.join(&name))
                .map_err(|e| anyhow::anyhow!("copying {url} into {}: {e}", dest.display()))?;
            std::fs::remove_dir_all(&tmp).ok();
            tracing::info!("Installed {url} at revision {sha}");
            entry.insert("git".into(), Value::from(url));
            entry.insert("name".into(), Value::from(name));
            entry.insert("revision".into(), Value::from(sha));
            if let Some(s) = sub {
                entry.insert("subdirectory".into(), Value::from(s));
            }
        } else if let Some(hub) = o.get("package").and_then(Value::as_str) {
            return Err(config_error(format!(
                "packages.yml: {hub} is a dbt Hub package, which ferry cannot install yet. Use the package's git repository instead: `- git: https://github.com/{hub}.git` with `revision:` set to the version's tag"
            )));
        } else {
            return Err(config_error(format!(
                "packages.yml: a package needs `local:`, `git:` or `package:`; got {p}"
            )));
        }
        locked.push(entry);
    }
    let mut text = String::from("packages:\n");
    for e in &locked {
        let mut keys: Vec<&String> = e.keys().collect();
        keys.sort();
        for (i, k) in keys.iter().enumerate() {
            let v = e[*k].as_str().unwrap_or_default();
            let lead = if i == 0 { "  - " } else { "    " };
            text.push_str(&format!("{lead}{k}: {}\n", yaml_scalar(v)));
        }
    }
    text.push_str(&format!("sha1_hash: {}\n", lock_hash(&packages)));
    let lock = project.dir.join("package-lock.yml");
    std::fs::write(&lock, text).map_err(|e| anyhow::anyhow!("writing {}: {e}", lock.display()))?;
    Ok(locked.len())
}

#[cfg(unix)]
fn symlink(src: &Path, link: &Path) -> anyhow::Result<()> {
    std::os::unix::fs::symlink(src, link)
        .map_err(|e| anyhow::anyhow!("linking {} to {}: {e}", link.display(), src.display()))
}

#[cfg(not(unix))]
fn symlink(src: &Path, link: &Path) -> anyhow::Result<()> {
    copy_tree(src, link).map_err(|e| anyhow::anyhow!("copying {}: {e}", src.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_lock_hash_is_dbts() {
        // Computed with dbt-core 1.11.16 for this packages.yml.
        let local = json!({"local": "../util_pkg"});
        let git = json!({"git": "file:///tmp/pk/gitsrc", "revision": "v1", "subdirectory": "sub"});
        assert_eq!(
            lock_hash(&[(local.clone(), local), (git.clone(), git)]),
            "97a11dbbf738f58062c694c0b495120ef0584909"
        );
        assert_eq!(
            py_json(&json!({"b": "é", "a": [1, null]})),
            r#"{"a": [1, null], "b": "\u00e9"}"#
        );
        assert_eq!(yaml_scalar("file:///x"), "file:///x");
        assert_eq!(yaml_scalar("1.0"), "'1.0'");
    }
}
