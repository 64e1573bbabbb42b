//! `--about`: what a connector is, its config keys and its capabilities, as JSON or Markdown
//! (the Meltano SDK's shape, so catalogs of connectors can list ferry's).

use serde::Serialize;

/// One config key of a connector.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigKey {
    /// The key.
    pub name: &'static str,
    /// Its JSON type.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// Whether it must be given.
    pub required: bool,
    /// What it does, with its default.
    pub description: &'static str,
}

/// A connector's self-description.
#[derive(Debug, Clone, Serialize)]
pub struct About {
    /// The name used on the command line and in ferry.yml.
    pub name: String,
    /// One line on what it does.
    pub description: &'static str,
    /// Singer capabilities (`catalog`, `discover`, `state`, `about`, …).
    pub capabilities: Vec<&'static str>,
    /// Config keys.
    pub settings: Vec<ConfigKey>,
}

impl About {
    /// As pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// As Markdown, for docs.
    pub fn to_markdown(&self) -> String {
        let mut s = format!("# {}\n\n{}\n\nCapabilities: {}\n\n## Settings\n\n| key | type | required | description |\n| --- | --- | --- | --- |\n",
            self.name, self.description, self.capabilities.join(", "));
        for k in &self.settings {
            s.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                k.name,
                k.ty,
                if k.required { "yes" } else { "no" },
                k.description
            ));
        }
        s
    }
}
