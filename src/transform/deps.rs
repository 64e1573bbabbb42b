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
            if d.contains_key("package") {
                d.entry("install_prerelease").or_insert(Value::Bool(false));
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

/// A `X.Y.Z[-pre]` version, ordered as semver orders them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    nums: (u64, u64, u64),
    pre: Option<String>,
}

impl Version {
    fn parse(s: &str) -> Option<Version> {
        let s = s.trim().trim_start_matches('v');
        let s = s.split('+').next()?;
        let (core, pre) = match s.split_once('-') {
            Some((c, p)) => (c, Some(p.to_string())),
            None => (s, None),
        };
        let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
        let nums = (
            it.next()??,
            it.next().flatten().unwrap_or(0),
            it.next().flatten().unwrap_or(0),
        );
        Some(Version { nums, pre })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.nums
            .cmp(&other.nums)
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(_), None) => std::cmp::Ordering::Less,
                (Some(a), Some(b)) => a.cmp(b),
            })
    }
}

/// Whether `v` meets one of dbt's version specifiers (`1.2.0`, `>=1.0.0`, `<2.0.0`).
fn meets(v: &Version, spec: &str) -> Option<bool> {
    let spec = spec.trim();
    let (op, rest) = [">=", "<=", ">", "<", "="]
        .iter()
        .find_map(|op| spec.strip_prefix(op).map(|r| (*op, r)))
        .unwrap_or(("=", spec));
    let w = Version::parse(rest)?;
    Some(match op {
        ">=" => *v >= w,
        "<=" => *v <= w,
        ">" => *v > w,
        "<" => *v < w,
        _ => *v == w,
    })
}

fn version_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Number(n)) => vec![n.to_string()],
        _ => Vec::new(),
    }
}

/// The package hub (`DBT_PACKAGE_HUB_URL`, as dbt reads it).
fn hub_url() -> String {
    std::env::var("DBT_PACKAGE_HUB_URL").unwrap_or_else(|_| "https://hub.getdbt.com/".into())
}

async fn hub_get(client: &reqwest::Client, url: &str) -> anyhow::Result<reqwest::Response> {
    let mut last = None;
    for attempt in 0..3u64 {
        match client.get(url).send().await {
            Ok(r) if r.status().is_success() => return Ok(r),
            Ok(r) if r.status().is_client_error() => {
                anyhow::bail!("{url} answered {}", r.status())
            }
            Ok(r) => last = Some(anyhow::anyhow!("{url} answered {}", r.status())),
            Err(e) => last = Some(anyhow::anyhow!("{url}: {e}")),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200 * (attempt + 1))).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{url}: no answer")))
}

/// Picks the newest version of a hub package meeting every specifier (prereleases only when
/// asked for), compatible with this dbt version, and returns it with its metadata.
async fn hub_resolve(
    client: &reqwest::Client,
    package: &str,
    specs: &[String],
    prerelease: bool,
) -> anyhow::Result<(String, Value)> {
    let hub = hub_url();
    let index: Value = hub_get(client, &format!("{hub}api/v1/index.json"))
        .await
        .map_err(|e| {
            config_error(format!(
                "the package hub cannot be reached ({e:#}); install {package} with `git:` and the tag of the version instead, or set DBT_PACKAGE_HUB_URL to a mirror"
            ))
        })?
        .json()
        .await?;
    if !index
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p.as_str() == Some(package)))
    {
        return Err(config_error(format!(
            "packages.yml: {package} is not on the package hub ({hub}); check its name"
        )));
    }
    let info: Value = hub_get(client, &format!("{hub}api/v1/{package}.json"))
        .await?
        .json()
        .await?;
    let dbt = Version::parse(super::DBT_VERSION).expect("a version");
    let wants_pre = prerelease || specs.iter().any(|s| s.contains('-'));
    let mut best: Option<(Version, String, Value)> = None;
    for (name, meta) in info
        .get("versions")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let Some(v) = Version::parse(name) else {
            continue;
        };
        if v.pre.is_some() && !wants_pre {
            continue;
        }
        let ok = specs.iter().all(|s| meets(&v, s).unwrap_or(false));
        let dbt_ok = version_list(meta.get("require_dbt_version"))
            .iter()
            .all(|s| meets(&dbt, s).unwrap_or(true));
        if ok && dbt_ok && best.as_ref().is_none_or(|(b, ..)| v > *b) {
            best = Some((v, name.clone(), meta.clone()));
        }
    }
    best.map(|(_, name, meta)| (name, meta)).ok_or_else(|| {
        config_error(format!(
            "packages.yml: no version of {package} on the hub meets {} (and this dbt version, {})",
            specs.join(", "),
            super::DBT_VERSION
        ))
    })
}

/// Downloads a hub tarball and unpacks its one top folder as `dest`.
async fn hub_unpack(client: &reqwest::Client, url: &str, dest: &Path) -> anyhow::Result<()> {
    let bytes = hub_get(client, url).await?.bytes().await?;
    let tmp = dest.with_extension("unpacking");
    std::fs::remove_dir_all(&tmp).ok();
    std::fs::create_dir_all(&tmp)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    for entry in archive
        .entries()
        .map_err(|e| anyhow::anyhow!("{url} is not a .tar.gz: {e}"))?
    {
        let mut entry = entry?;
        // `unpack_in` refuses paths that would leave the folder.
        entry
            .unpack_in(&tmp)
            .map_err(|e| anyhow::anyhow!("unpacking {url}: {e}"))?;
    }
    let tops: Vec<PathBuf> = std::fs::read_dir(&tmp)?
        .flatten()
        .map(|e| e.path())
        .collect();
    let top = match tops.as_slice() {
        [one] if one.is_dir() => one.clone(),
        _ => tmp.clone(),
    };
    std::fs::rename(&top, dest)?;
    std::fs::remove_dir_all(&tmp).ok();
    Ok(())
}

/// A package's own dependencies (its packages.yml), with `local:` paths made relative to
/// the root project.
fn nested(dir: &Path, root: &Path) -> anyhow::Result<Vec<Value>> {
    for name in ["packages.yml", "dependencies.yml"] {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let mut raw = super::project::read_yaml(&path)?;
        super::jinja::render_env_vars(&mut raw)
            .map_err(|e| config_error(format!("{}: {e:#}", path.display())))?;
        let mut out = Vec::new();
        for mut p in raw
            .get("packages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            if let Some(l) = p.get("local").and_then(Value::as_str) {
                let abs = dir.join(l);
                let rel = pathdiff(&abs, root);
                p["local"] = Value::from(rel);
            }
            out.push(p);
        }
        return Ok(out);
    }
    Ok(Vec::new())
}

/// `to` relative to `from` when it is below it, else absolute.
fn pathdiff(to: &Path, from: &Path) -> String {
    let to = std::fs::canonicalize(to).unwrap_or_else(|_| to.to_path_buf());
    let from = std::fs::canonicalize(from).unwrap_or_else(|_| from.to_path_buf());
    to.strip_prefix(&from)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| to.display().to_string())
}

/// Installs every declared package, and the packages they declare, then writes
/// package-lock.yml. Returns how many.
///
/// # Errors
/// A config error for a malformed packages.yml or a package that cannot be found; git's
/// message when a clone or checkout fails; the hub's when a download fails.
pub async fn install(project: &DbtProject) -> anyhow::Result<usize> {
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
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()?;
    let mut locked: Vec<Map<String, Value>> = Vec::new();
    let mut installed: std::collections::HashMap<String, String> = Default::default();
    let mut queue: std::collections::VecDeque<Value> =
        packages.iter().map(|(_, p)| p.clone()).collect();
    while let Some(p) = queue.pop_front() {
        let Some(o) = p.as_object() else {
            return Err(config_error(format!(
                "packages.yml: each package is a mapping (local:, git: or package:), not {p}"
            )));
        };
        let mut entry = Map::new();
        let (name, dir) = if let Some(local) = o.get("local").and_then(Value::as_str) {
            let src = project.dir.join(local);
            let src = std::fs::canonicalize(&src).map_err(|e| {
                config_error(format!(
                    "packages.yml: local package {local} ({}) cannot be read: {e}",
                    src.display()
                ))
            })?;
            let name = package_name(&src)?;
            if installed.contains_key(&name) {
                continue;
            }
            symlink(&src, &dest.join(&name))?;
            tracing::info!("Installed from <local @ {local}>");
            entry.insert("local".into(), Value::from(local));
            (name, src)
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
            if installed.contains_key(&name) {
                std::fs::remove_dir_all(&tmp).ok();
                continue;
            }
            copy_tree(&src, &dest.join(&name))
                .map_err(|e| anyhow::anyhow!("copying {url} into {}: {e}", dest.display()))?;
            std::fs::remove_dir_all(&tmp).ok();
            tracing::info!("Installed {url} at revision {sha}");
            entry.insert("git".into(), Value::from(url));
            entry.insert("revision".into(), Value::from(sha));
            if let Some(s) = sub {
                entry.insert("subdirectory".into(), Value::from(s));
            }
            let dir = dest.join(&name);
            (name, dir)
        } else if let Some(hub) = o.get("package").and_then(Value::as_str) {
            let specs = version_list(o.get("version"));
            let pre = o
                .get("install-prerelease")
                .or_else(|| o.get("install_prerelease"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let (version, meta) = hub_resolve(&client, hub, &specs, pre).await?;
            let name = meta
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow::anyhow!("the hub's {hub} {version} has no name"))?
                .to_string();
            if let Some(have) = installed.get(&name) {
                if specs
                    .iter()
                    .all(|s| Version::parse(have).is_some_and(|v| meets(&v, s).unwrap_or(false)))
                {
                    continue;
                }
                return Err(config_error(format!(
                    "packages: {hub} is required as {} but {have} is installed for another package; align the version ranges",
                    specs.join(", ")
                )));
            }
            let url = meta
                .pointer("/downloads/tarball")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow::anyhow!("the hub gives no tarball for {hub} {version}"))?;
            hub_unpack(&client, url, &dest.join(&name))
                .await
                .map_err(|e| anyhow::anyhow!("installing {hub} {version}: {e:#}"))?;
            tracing::info!("Installed {hub} version {version}");
            entry.insert("package".into(), Value::from(hub));
            entry.insert("version".into(), Value::from(version.clone()));
            installed.insert(name.clone(), version);
            for dep in meta
                .get("packages")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                queue.push_back(dep);
            }
            entry.insert("name".into(), Value::from(name.clone()));
            locked.push(entry);
            continue;
        } else {
            return Err(config_error(format!(
                "packages.yml: a package needs `local:`, `git:` or `package:`; got {p}"
            )));
        };
        installed.insert(name.clone(), String::new());
        entry.insert("name".into(), Value::from(name.clone()));
        locked.push(entry);
        queue.extend(nested(&dir, &project.dir)?);
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
