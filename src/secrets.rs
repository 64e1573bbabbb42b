//! Redaction of secret values: every string that came from `${ENV}` interpolation or from a
//! config key that names a secret is registered here, and every message a user sees (errors,
//! forwarded child stderr) passes through [`redact`].

use std::sync::{OnceLock, RwLock};

fn registry() -> &'static RwLock<Vec<String>> {
    static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Vec::new()))
}

/// The text that replaces a secret.
pub const MASK: &str = "***";

/// Config keys whose values are secrets wherever they appear.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "private_key",
        "credentials",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Registers a secret value. Very short values are ignored: masking "1" everywhere would
/// make messages unreadable and protects nothing.
pub fn register(value: &str) {
    if value.len() < 3 {
        return;
    }
    let mut reg = registry()
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !reg.iter().any(|s| s == value) {
        reg.push(value.to_owned());
        // Longest first, so a secret containing another is masked whole.
        reg.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Registers every string under a secret-looking key of a JSON config, recursively.
pub fn register_config(value: &serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if is_secret_key(k) {
                    register_all_strings(v);
                } else {
                    register_config(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(register_config),
        _ => {}
    }
}

fn register_all_strings(value: &serde_json::Value) {
    match value {
        serde_json::Value::String(s) => register(s),
        serde_json::Value::Number(n) => register(&n.to_string()),
        serde_json::Value::Object(map) => map.values().for_each(register_all_strings),
        serde_json::Value::Array(items) => items.iter().for_each(register_all_strings),
        _ => {}
    }
}

/// Replaces every registered secret in `text` with [`MASK`].
pub fn redact(text: &str) -> String {
    let reg = registry()
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = text.to_owned();
    for s in reg.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_registered_and_keyed_secrets() {
        register("hunter2-very-secret");
        register_config(&serde_json::json!({"db": {"password": "pw-abc-123"}, "host": "h"}));
        let msg = redact("connect failed: password=pw-abc-123 token hunter2-very-secret host h");
        assert_eq!(msg, "connect failed: password=*** token *** host h");
    }
}
