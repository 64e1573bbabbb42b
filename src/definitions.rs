//! The REST definitions that ship with ferry — sources in `taps/*.yml`, reverse-ETL
//! destinations in `targets/*.yml`, and the sources' catalogs in `catalogs/*.json` — compiled
//! into the binary, so `ferry tap github` works wherever ferry is installed, not only in a clone.
//!
//! A name that ends in `.yml`/`.yaml` is a path: it loads that file, even where a shipped
//! definition has the same name (a customised copy overrides the built-in).

use std::path::PathBuf;

use crate::error::config_error;

/// A definition compiled into the binary.
#[derive(Debug)]
pub struct Shipped {
    /// The name it is addressed by (`github`).
    pub name: &'static str,
    /// The YAML text.
    pub text: &'static str,
    /// The catalog of a source definition (`catalogs/<name>.json`): typed schemas, keys and
    /// replication keys, used by `--discover` instead of sampling live records.
    pub catalog: Option<&'static str>,
}

macro_rules! shipped {
    ($dir:literal, $name:literal, $catalog:expr) => {
        Shipped {
            name: $name,
            text: include_str!(concat!("../", $dir, "/", $name, ".yml")),
            catalog: $catalog,
        }
    };
}

macro_rules! catalog {
    ($name:literal) => {
        Some(include_str!(concat!("../catalogs/", $name, ".json")))
    };
}

/// The shipped source definitions.
pub const TAPS: &[Shipped] = &[
    shipped!("taps", "github", catalog!("github")),
    shipped!("taps", "harvest", catalog!("harvest")),
    shipped!("taps", "hubspot", catalog!("hubspot")),
    shipped!("taps", "stripe", catalog!("stripe")),
];

/// The shipped reverse-ETL destination definitions.
pub const DESTINATIONS: &[Shipped] = &[
    shipped!("targets", "customerio", None),
    shipped!("targets", "hubspot", None),
    shipped!("targets", "webhook", None),
];

/// Whether a connector name is a path to a definition file.
pub fn is_path(name: &str) -> bool {
    name.ends_with(".yml") || name.ends_with(".yaml")
}

/// Where a definition comes from: a file, or the binary.
#[derive(Debug, Clone)]
pub enum Source {
    /// A definition file.
    File(PathBuf),
    /// A shipped definition.
    Shipped(&'static Shipped),
}

impl Source {
    /// A source definition by name or path; `None` when `name` is neither.
    pub fn tap(name: &str) -> Option<Source> {
        Self::find(name, TAPS)
    }

    /// A destination definition by name or path; `None` when `name` is neither.
    pub fn destination(name: &str) -> Option<Source> {
        Self::find(name, DESTINATIONS)
    }

    fn find(name: &str, list: &'static [Shipped]) -> Option<Source> {
        if is_path(name) {
            return Some(Source::File(PathBuf::from(name)));
        }
        list.iter().find(|s| s.name == name).map(Source::Shipped)
    }

    /// The YAML text.
    ///
    /// # Errors
    /// A config error when the file cannot be read.
    pub fn text(&self) -> anyhow::Result<std::borrow::Cow<'static, str>> {
        match self {
            Source::File(p) => std::fs::read_to_string(p).map(Into::into).map_err(|e| {
                config_error(format!("cannot read the definition {}: {e}", p.display()))
            }),
            Source::Shipped(s) => Ok(s.text.into()),
        }
    }

    /// The shipped catalog, if this is a shipped definition with one.
    pub fn catalog(&self) -> Option<&'static str> {
        match self {
            Source::File(_) => None,
            Source::Shipped(s) => s.catalog,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Shipped(s) => write!(f, "{} (built in)", s.name),
        }
    }
}

/// The `description:` of a shipped definition, for `--list`.
pub fn description(s: &Shipped) -> String {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(default)]
        description: String,
    }
    serde_yaml_ng::from_str::<Head>(s.text)
        .map(|h| h.description)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert!(matches!(Source::tap("github"), Some(Source::Shipped(s)) if s.name == "github"));
        assert!(matches!(
            Source::tap("my/github.yml"),
            Some(Source::File(_))
        ));
        assert!(Source::tap("nope").is_none());
        assert!(
            matches!(Source::destination("hubspot"), Some(Source::Shipped(s)) if s.text.contains("batch/upsert"))
        );
        for s in TAPS.iter().chain(DESTINATIONS) {
            assert!(!description(s).is_empty(), "{} has a description", s.name);
        }
    }
}
