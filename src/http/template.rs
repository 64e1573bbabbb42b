//! `{{ … }}` placeholders in REST definitions: a dotted path into the context (`config.token`,
//! `bookmark`, `parent.account_id`) and filters (`unix`, `unix_ms`, `date`, `rfc3339`,
//! `default(…)`). A string that is exactly one placeholder keeps the value's JSON type, so a
//! number in a request body stays a number.
//!
//! Deliberately small: definitions describe requests, they do not compute. (Jinja proper arrives
//! with `ferry transform`.)

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::{Map, Value};

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    /// A path names nothing in the context (a config key not given, no bookmark yet).
    #[error("`{0}` is not set")]
    Missing(String),
    /// The template itself is malformed or uses an unknown filter.
    #[error("{0}")]
    Invalid(String),
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Expr {
        path: Vec<String>,
        filters: Vec<Filter>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Filter {
    Unix,
    UnixMs,
    Date,
    Rfc3339,
    Default(Value),
}

/// A parsed template string.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`.
    ///
    /// # Errors
    /// An unclosed `{{`, an empty expression or an unknown filter.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| TemplateError::Invalid(format!("unclosed `{{{{` in {text:?}")))?;
            parts.push(parse_expr(after[..end].trim(), text)?);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// The root names the template refers to (`config`, `bookmark`, …).
    pub fn roots(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr { path, .. } => path.first().map(String::as_str),
            Part::Text(_) => None,
        })
    }

    /// Renders against `ctx` (an object whose keys are the roots).
    ///
    /// # Errors
    /// [`TemplateError::Missing`] when a path is absent or null (without `default`).
    pub fn render(&self, ctx: &Value) -> Result<Value, TemplateError> {
        if let [Part::Expr { path, filters }] = self.parts.as_slice() {
            return eval(path, filters, ctx);
        }
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Expr { path, filters } => match eval(path, filters, ctx)? {
                    Value::String(s) => out.push_str(&s),
                    Value::Null => {}
                    v => out.push_str(&v.to_string()),
                },
            }
        }
        Ok(Value::String(out))
    }

    /// Renders a URL path: each placeholder's value is percent-encoded, so a value holding
    /// `/`, `?` or `#` stays one path segment.
    ///
    /// # Errors
    /// As [`Template::render`].
    pub fn render_path(&self, ctx: &Value) -> Result<String, TemplateError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Expr { path, filters } => {
                    let v = eval(path, filters, ctx)?;
                    let text = match &v {
                        Value::String(s) => s.clone(),
                        v => v.to_string(),
                    };
                    for b in text.bytes() {
                        if b.is_ascii_alphanumeric() || b"-._~:@!$&'()*+,;=".contains(&b) {
                            out.push(b as char);
                        } else {
                            out.push_str(&format!("%{b:02X}"));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Renders to text (a typed value is written as JSON text, a string as itself).
    ///
    /// # Errors
    /// As [`Template::render`].
    pub fn render_str(&self, ctx: &Value) -> Result<String, TemplateError> {
        Ok(match self.render(ctx)? {
            Value::String(s) => s,
            Value::Null => String::new(),
            v => v.to_string(),
        })
    }
}

fn parse_expr(expr: &str, whole: &str) -> Result<Part, TemplateError> {
    let mut pieces = expr.split('|').map(str::trim);
    let path_text = pieces.next().unwrap_or_default();
    if path_text.is_empty() {
        return Err(TemplateError::Invalid(format!(
            "empty `{{{{ }}}}` in {whole:?}"
        )));
    }
    let path: Vec<String> = path_text.split('.').map(|s| s.trim().to_owned()).collect();
    if path.iter().any(|s| {
        s.is_empty()
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }) {
        return Err(TemplateError::Invalid(format!(
            "bad path {path_text:?} in {whole:?}; write a dotted path such as config.api_key"
        )));
    }
    let mut filters = Vec::new();
    for f in pieces {
        filters.push(match f {
            "unix" => Filter::Unix,
            "unix_ms" => Filter::UnixMs,
            "date" => Filter::Date,
            "rfc3339" => Filter::Rfc3339,
            _ if f.starts_with("default(") && f.ends_with(')') => {
                let arg = &f["default(".len()..f.len() - 1];
                let arg = arg.trim().replace('\'', "\"");
                Filter::Default(serde_json::from_str(&arg).map_err(|_| {
                    TemplateError::Invalid(format!(
                        "default({arg}) in {whole:?} needs a JSON value such as \"x\" or 100"
                    ))
                })?)
            }
            _ => {
                return Err(TemplateError::Invalid(format!(
                    "unknown filter {f:?} in {whole:?}; filters: unix, unix_ms, date, rfc3339, default(value)"
                )))
            }
        });
    }
    Ok(Part::Expr { path, filters })
}

fn eval(path: &[String], filters: &[Filter], ctx: &Value) -> Result<Value, TemplateError> {
    let mut v = Some(ctx);
    for seg in path {
        v = v.and_then(|x| match x {
            Value::Object(m) => m.get(seg),
            Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        });
    }
    let mut v = v.filter(|v| !v.is_null()).cloned();
    for f in filters {
        v = match (f, v) {
            (Filter::Default(d), None) => Some(d.clone()),
            (_, None) => None,
            (Filter::Default(_), Some(x)) => Some(x),
            (f, Some(x)) => Some(apply(f, &x).ok_or_else(|| {
                TemplateError::Invalid(format!(
                    "`{}` is {x}, which is not a date, a date-time or a Unix time",
                    path.join(".")
                ))
            })?),
        };
    }
    v.ok_or_else(|| TemplateError::Missing(path.join(".")))
}

fn apply(f: &Filter, v: &Value) -> Option<Value> {
    let t = instant(v)?;
    Some(match f {
        Filter::Unix => Value::from(t.timestamp()),
        Filter::UnixMs => Value::from(t.timestamp_millis()),
        Filter::Date => Value::from(t.format("%Y-%m-%d").to_string()),
        Filter::Rfc3339 => Value::from(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        Filter::Default(_) => v.clone(),
    })
}

/// A bookmark or config value as an instant: RFC 3339, a plain date (midnight UTC) or Unix
/// seconds (a number, or digits in a string).
pub fn instant(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::Number(n) => DateTime::from_timestamp(n.as_i64()?, 0),
        Value::String(s) => {
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some(t.with_timezone(&Utc));
            }
            if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                return Some(d.and_hms_opt(0, 0, 0)?.and_utc());
            }
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                return DateTime::from_timestamp(s.parse().ok()?, 0);
            }
            None
        }
        _ => None,
    }
}

/// Renders every string in a JSON value (keys stay as written). A value whose template names a
/// missing path is an error.
///
/// # Errors
/// The first template that fails.
pub fn render_value(v: &Value, ctx: &Value) -> Result<Value, TemplateError> {
    Ok(match v {
        Value::String(s) if s.contains("{{") => Template::parse(s)?.render(ctx)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| render_value(i, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, x) in m {
                out.insert(k.clone(), render_value(x, ctx)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(t: &str, ctx: &Value) -> Result<Value, TemplateError> {
        Template::parse(t)?.render(ctx)
    }

    #[test]
    fn renders_paths_text_and_types() {
        let ctx = json!({"config": {"owner": "acme", "n": 100}, "parent": {"id": 7}});
        assert_eq!(
            r("/repos/{{ config.owner }}/x/{{parent.id}}", &ctx).unwrap(),
            json!("/repos/acme/x/7")
        );
        assert_eq!(r("{{ config.n }}", &ctx).unwrap(), json!(100));
        assert_eq!(r("plain", &ctx).unwrap(), json!("plain"));
        assert_eq!(
            r("{{ config.missing }}", &ctx),
            Err(TemplateError::Missing("config.missing".into()))
        );
        assert_eq!(
            r("{{ config.missing | default(50) }}", &ctx).unwrap(),
            json!(50)
        );
        assert_eq!(
            r("{{ config.m | default('x') }}", &ctx).unwrap(),
            json!("x")
        );
    }

    #[test]
    fn path_values_stay_one_segment() {
        let ctx = json!({"parent": {"id": "a/b?c"}});
        let t = Template::parse("/accounts/{{ parent.id }}/contacts").unwrap();
        assert_eq!(t.render_path(&ctx).unwrap(), "/accounts/a%2Fb%3Fc/contacts");
    }

    #[test]
    fn date_filters_accept_every_bookmark_shape() {
        for b in [
            json!("2026-11-22T10:00:00Z"),
            json!("2026-11-22T12:00:00+02:00"),
            json!(1_795_341_600),
            json!("1795341600"),
        ] {
            let ctx = json!({ "bookmark": b });
            assert_eq!(
                r("{{ bookmark | unix }}", &ctx).unwrap(),
                json!(1_795_341_600)
            );
            assert_eq!(
                r("{{ bookmark | unix_ms }}", &ctx).unwrap(),
                json!(1_795_341_600_000_i64)
            );
            assert_eq!(
                r("{{ bookmark | rfc3339 }}", &ctx).unwrap(),
                json!("2026-11-22T10:00:00Z")
            );
            assert_eq!(
                r("{{ bookmark | date }}", &ctx).unwrap(),
                json!("2026-11-22")
            );
        }
        let ctx = json!({"bookmark": "2026-01-05"});
        assert_eq!(
            r("{{ bookmark | rfc3339 }}", &ctx).unwrap(),
            json!("2026-01-05T00:00:00Z")
        );
        assert!(matches!(
            r("{{ bookmark | unix }}", &json!({"bookmark": "soon"})),
            Err(TemplateError::Invalid(_))
        ));
    }

    #[test]
    fn malformed_templates_are_errors_not_panics() {
        for t in ["{{", "{{ }}", "{{ a | nope }}", "{{ a b }}", "x {{ a..b }}"] {
            assert!(
                matches!(Template::parse(t), Err(TemplateError::Invalid(_))),
                "{t}"
            );
        }
    }

    #[test]
    fn values_render_recursively() {
        let ctx = json!({"bookmark": 5});
        let v = json!({"filters": [{"value": "{{ bookmark }}", "op": "GTE"}], "n": 1});
        assert_eq!(
            render_value(&v, &ctx).unwrap(),
            json!({"filters": [{"value": 5, "op": "GTE"}], "n": 1})
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_errs_without_panicking(t in "\\PC{0,40}", v in "\\PC{0,12}") {
            if let Ok(tpl) = Template::parse(&t) {
                let ctx = json!({"config": {"a": v}, "bookmark": v});
                let _ = tpl.render(&ctx);
                let _ = tpl.render_path(&ctx);
            }
        }
    }
}
