//! `ferry init [DIR]`: a starter project — a commented `ferry.yml` for a chosen tap and target,
//! the folders the defaults use, and a `.gitignore` that keeps secrets and local warehouses out
//! of git. It never overwrites a file that exists.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::Globals;
use crate::cli::InitArgs;
use crate::error::config_error;

/// What `.gitignore` keeps out: secrets first, then local data that is rebuilt from sources.
const GITIGNORE: &str = "\
# Secrets: configs read them from the environment (${NAME}); keep the values out of git.
.env
.env.*
*.pem
*.key
secrets/
# Local warehouses and outputs (rebuilt by `ferry sync`); catalogs/ and state/ are meant to be
# committed, so reviews see what is selected and where each stream stands.
*.duckdb
*.duckdb.wal
lake/
out/
rejects/
transform/target/
transform/logs/
";

/// Writes the starter project.
///
/// # Errors
/// A config error for an unknown tap or target; I/O errors.
pub fn run(a: InitArgs, g: &Globals) -> anyhow::Result<i32> {
    let dir = a.dir.clone().unwrap_or_else(|| ".".into());
    let pipeline = a.pipeline.clone();
    let yml = project_file(&a.tap, &a.target, &pipeline)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut wrote = Vec::new();
    let mut kept = Vec::new();
    for sub in ["catalogs", "state"] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        let keep = p.join(".gitkeep");
        if !keep.exists() {
            std::fs::write(&keep, "")?;
        }
    }
    for (name, text) in [("ferry.yml", yml.as_str()), (".gitignore", GITIGNORE)] {
        let p = dir.join(name);
        if write_new(&p, text)? {
            wrote.push(p.display().to_string());
        } else {
            kept.push(p.display().to_string());
        }
    }
    if !g.quiet {
        for p in &kept {
            tracing::warn!(file = %p, "Exists; left as it is.");
        }
        let next = match a.tap.as_str() {
            "csv" | "jsonl" => format!("ferry sync {pipeline}"),
            _ => format!(
                "ferry discover {pipeline} && ferry select {pipeline} '*' && ferry sync {pipeline}"
            ),
        };
        tracing::info!(files = %wrote.join(", "), "Project written. Edit ferry.yml, then: cd {} && {next}", dir.display());
    }
    Ok(0)
}

/// Creates `path` with `text` unless it exists; whether it wrote.
fn write_new(path: &Path, text: &str) -> anyhow::Result<bool> {
    use std::io::Write;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// The environment variable a secret config key is read from (`SHOP_DB_PASSWORD`).
fn env_name(prefix: &str, key: &str) -> String {
    format!("{prefix}_{key}")
        .to_ascii_uppercase()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
}

fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "token", "secret"]
        .iter()
        .any(|s| k.contains(s))
        || k.ends_with("api_key")
        || k == "key"
}

/// The `tap:` block, indented for a pipeline.
fn tap_block(tap: &str, pipeline: &str) -> anyhow::Result<String> {
    let env = |k: &str| env_name(pipeline, k);
    Ok(match tap {
        "postgres" => format!(
            "\
    # Your product database. Read-only access is enough; each stream is read in one snapshot.
    tap:
      name: postgres
      config:
        host: localhost
        port: 5432
        user: ferry_reader
        password: ${{{}}}   # from the environment; masked in every log line
        dbname: app
        schemas: [public]
        sslmode: prefer      # verify-full for a managed database
      # catalog: catalogs/{pipeline}.json   (the default; `ferry discover {pipeline}` writes it)
",
            env("db_password")
        ),
        "csv" | "jsonl" => format!(
            "\
    # Files, folders or globs; one stream per entity, read incrementally by file.
    tap:
      name: {tap}
      config:
        files:
          - {{ entity: orders, path: \"data/orders*.{tap}\", keys: [id] }}
"
        ),
        other => {
            // Any other built-in (a shipped REST API): its required keys, secrets from the
            // environment, the optional ones commented out.
            let about = crate::taps::Tap::about(other)?;
            let mut out = format!(
                "    # {}\n    tap:\n      name: {other}\n      config:\n",
                about.description
            );
            for k in &about.settings {
                let value = if is_secret(k.name) {
                    format!("\"${{{}}}\"", env(k.name))
                } else {
                    "\"\"".to_owned()
                };
                let lead = if k.required { "" } else { "# " };
                let _ = writeln!(
                    out,
                    "        {lead}{}: {value}   # {}",
                    k.name, k.description
                );
            }
            out
        }
    })
}

/// The `target:` block, indented for a pipeline.
fn target_block(target: &str, pipeline: &str) -> anyhow::Result<String> {
    Ok(match target {
        "duckdb" => format!(
            "\
    # An embedded warehouse in one file; tables land in schema `{pipeline}` (the pipeline's
    # name), with the state kept in the same transaction as the rows.
    target:
      name: duckdb
      config:
        path: warehouse.duckdb
"
        ),
        "postgres" => format!(
            "\
    # The warehouse: typed tables, upserts by key, new columns added as the source grows.
    target:
      name: postgres
      config:
        url: ${{{}}}   # postgres://user:password@host:5432/warehouse
        default_target_schema: raw_{pipeline}
        state_table: _ferry_state   # the state commits with the data: a crash loses nothing
",
            env_name("warehouse", "url")
        ),
        "parquet" => "\
    # A lake of Parquet files, a folder per stream, with a manifest of the live files.
    target:
      name: parquet
      config:
        path: lake
        compression: zstd
"
        .to_owned(),
        "csv" | "jsonl" => format!(
            "\
    # A file per stream.
    target:
      name: {target}
      config:
        destination_path: out
"
        ),
        other => {
            return Err(config_error(format!(
                "ferry init: no starter for target {other:?}; choose one of {}",
                crate::targets::BUILTIN.join(", ")
            )))
        }
    })
}

/// The commented `ferry.yml`.
fn project_file(tap: &str, target: &str, pipeline: &str) -> anyhow::Result<String> {
    let mut out = format!(
        "\
# A ferry project: pipelines that move data from a source (tap) into a warehouse (target).
#   ferry sync {pipeline}             run the pipeline; the next run starts where this one stopped
#   ferry sync {pipeline} --dry-run   what would be read, from which bookmark
#   ferry tap --list / ferry target --list   the built-in connectors
# Values written ${{NAME}} come from the environment (${{NAME:-default}} for a default).
# Relative paths are relative to this file.
pipelines:
  {pipeline}:
"
    );
    out.push_str(&tap_block(tap, pipeline)?);
    out.push_str(&target_block(target, pipeline)?);
    let _ = writeln!(
        out,
        "    # state: state/{pipeline}.json    (the default: commit it, it diffs cleanly)"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_starter_is_a_project_ferry_reads() {
        for tap in [
            "postgres", "csv", "jsonl", "github", "stripe", "hubspot", "harvest",
        ] {
            for target in ["duckdb", "postgres", "parquet", "jsonl", "csv"] {
                let yml = project_file(tap, target, "main").unwrap();
                let p = crate::project::Project::parse(
                    &yml,
                    Path::new("/p/ferry.yml"),
                    Path::new("/p"),
                );
                // `${NAME}` values are unset here: the only acceptable error names them.
                if let Err(e) = p {
                    let e = format!("{e:#}");
                    assert!(
                        e.contains("environment variable"),
                        "{tap} → {target}: {e}\n{yml}"
                    );
                }
                let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yml).unwrap();
                assert!(v["pipelines"]["main"]["tap"]["name"].is_string(), "{yml}");
            }
        }
        assert!(project_file("postgres", "snowflake", "main").is_err());
        assert_eq!(env_name("shop", "db_password"), "SHOP_DB_PASSWORD");
    }
}
