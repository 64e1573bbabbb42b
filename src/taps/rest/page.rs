//! Pagination and bookmarks of the REST engine: where the next page is (`Next`), what a
//! stream's (or a partition's) state holds (`Mark`), and how replication-key values compare.

use std::cmp::Ordering;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::def::Pagination;
use crate::http::select::Path;
use crate::http::template::instant;
use crate::http::{Response, Url};

/// Which page to ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The first page.
    First,
    /// A page number.
    Page(u64),
    /// A record offset.
    Offset(u64),
    /// A cursor token.
    Token(String),
    /// A full URL (next link).
    Url(String),
}

impl Next {
    /// As state JSON.
    pub fn to_value(&self) -> Value {
        match self {
            Next::First => json!({}),
            Next::Page(n) => json!({ "page": n }),
            Next::Offset(n) => json!({ "offset": n }),
            Next::Token(t) => json!({ "token": t }),
            Next::Url(u) => json!({ "url": u }),
        }
    }

    /// From state JSON; anything unreadable starts over.
    pub fn from_value(v: &Value) -> Next {
        if let Some(n) = v.get("page").and_then(Value::as_u64) {
            Next::Page(n)
        } else if let Some(n) = v.get("offset").and_then(Value::as_u64) {
            Next::Offset(n)
        } else if let Some(t) = v.get("token").and_then(Value::as_str) {
            Next::Token(t.to_owned())
        } else if let Some(u) = v.get("url").and_then(Value::as_str) {
            Next::Url(u.to_owned())
        } else {
            Next::First
        }
    }
}

/// A page in progress: resumed from here after an interruption.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resume {
    /// The page after the last one emitted.
    pub next: Option<Next>,
    /// The bookmark the run filters by (kept, so a resumed run asks the same question).
    pub filter: Option<Value>,
    /// The greatest replication-key value emitted so far.
    pub max: Option<Value>,
    /// When the query began, by the server's `Date` (RFC 3339): records changed after it may sit
    /// on pages already read, so a resumed unsorted stream reads them in a catch-up pass.
    pub started: Option<String>,
}

/// A stream's (or partition's) bookmark.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mark {
    /// The replication-key value every record up to which has been emitted.
    pub value: Option<Value>,
    /// A run in progress.
    pub resume: Option<Resume>,
}

impl Mark {
    /// From a bookmark object (Singer SDK's `replication_key_value`, plus `resume`).
    pub fn from_value(v: Option<&Value>) -> Mark {
        let Some(v) = v else {
            return Mark::default();
        };
        let value = v
            .get("replication_key_value")
            .filter(|x| !x.is_null())
            .cloned();
        let resume = v.get("resume").filter(|r| r.is_object()).map(|r| Resume {
            next: r.get("next").map(Next::from_value),
            filter: r.get("filter").filter(|x| !x.is_null()).cloned(),
            max: r.get("max").filter(|x| !x.is_null()).cloned(),
            started: r.get("started").and_then(Value::as_str).map(str::to_owned),
        });
        Mark { value, resume }
    }

    /// Writes the mark into a bookmark object, keeping its other keys (a context).
    pub fn write(&self, key: Option<&str>, out: &mut Map<String, Value>) {
        if let Some(k) = key {
            out.insert("replication_key".into(), json!(k));
        }
        match &self.value {
            Some(v) => {
                out.insert("replication_key_value".into(), v.clone());
            }
            None => {
                out.shift_remove("replication_key_value");
            }
        }
        match &self.resume {
            Some(r) => {
                let mut m = Map::new();
                if let Some(n) = &r.next {
                    m.insert("next".into(), n.to_value());
                }
                if let Some(f) = &r.filter {
                    m.insert("filter".into(), f.clone());
                }
                if let Some(x) = &r.max {
                    m.insert("max".into(), x.clone());
                }
                if let Some(x) = &r.started {
                    m.insert("started".into(), json!(x));
                }
                out.insert("resume".into(), Value::Object(m));
            }
            None => {
                out.shift_remove("resume");
            }
        }
    }
}

/// Compares replication-key values: numbers as numbers, date-times as instants (whatever their
/// offset or precision), a date-time with a Unix time as instants, other strings as text.
pub fn cmp_keys(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => match (instant(a), instant(b)) {
            (Some(p), Some(q)) => Some(p.cmp(&q)),
            _ => Some(x.cmp(y)),
        },
        _ => Some(instant(a)?.cmp(&instant(b)?)),
    }
}

/// The greater of two optional key values.
pub fn max_key(a: Option<Value>, b: &Value) -> Option<Value> {
    match a {
        Some(x) if cmp_keys(&x, b) != Some(Ordering::Less) => Some(x),
        _ => Some(b.clone()),
    }
}

/// An instant as a replication-key value of the same kind as `like`: Unix seconds (or
/// milliseconds, when `like` is that large) for a number, RFC 3339 text otherwise.
pub fn key_like(t: DateTime<Utc>, like: Option<&Value>) -> Value {
    match like {
        Some(Value::Number(n)) if n.as_f64().is_some_and(|x| x.abs() >= 1e11) => {
            json!(t.timestamp_millis())
        }
        Some(Value::Number(_)) => json!(t.timestamp()),
        _ => json!(t.to_rfc3339_opts(SecondsFormat::Secs, true)),
    }
}

/// The `rel="next"` target of an RFC 8288 `Link` header.
pub fn link_next(header: &str) -> Option<String> {
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>')? + open;
        let target = &rest[open + 1..close];
        let after = &rest[close + 1..];
        let params_end = after.find('<').unwrap_or(after.len());
        let params = &after[..params_end];
        for p in params.split(';') {
            let p = p.trim().trim_end_matches(',').trim();
            if let Some(v) = p.strip_prefix("rel=").or_else(|| p.strip_prefix("rel =")) {
                let v = v.trim().trim_matches('"');
                if v.split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
                {
                    return Some(target.to_owned());
                }
            }
        }
        rest = &after[params_end..];
    }
    None
}

/// Why pagination cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The API sent the same next page again: following it would loop forever.
    #[error("the API returned the same next page ({0}) twice; the pagination settings do not match the API")]
    Loop(String),
}

/// The page after `current`, or `None` when this was the last.
///
/// # Errors
/// [`PageError::Loop`] when the API points back at the page just read.
pub fn next_page(
    p: &Pagination,
    current: &Next,
    resp: &Response,
    body: &Value,
    records: &[Value],
) -> Result<Option<Next>, PageError> {
    let n = records.len() as u64;
    let got = |path: &str| Path::parse(path).ok().and_then(|p| p.get(body).cloned());
    let next = match p {
        Pagination::None => None,
        Pagination::Page {
            start,
            page_size,
            total_pages,
            ..
        } => {
            let cur = match current {
                Next::Page(c) => *c,
                _ => *start,
            };
            let last_by_total = total_pages
                .as_deref()
                .and_then(got)
                .and_then(|t| t.as_u64())
                .is_some_and(|t| cur >= t);
            if n == 0 || page_size.is_some_and(|s| n < s) || last_by_total {
                None
            } else {
                Some(Next::Page(cur + 1))
            }
        }
        Pagination::Offset {
            page_size, total, ..
        } => {
            let cur = match current {
                Next::Offset(c) => *c,
                _ => 0,
            };
            let after = cur + n;
            let done_by_total = total
                .as_deref()
                .and_then(got)
                .and_then(|t| t.as_u64())
                .is_some_and(|t| after >= t);
            if n == 0 || page_size.is_some_and(|s| n < s) || done_by_total {
                None
            } else {
                Some(Next::Offset(after))
            }
        }
        Pagination::Cursor {
            token,
            token_from_last_record,
            has_more,
            ..
        } => {
            let more = has_more.as_deref().and_then(got);
            if more.as_ref().is_some_and(|m| m == &Value::Bool(false)) {
                None
            } else {
                let t = match (token, token_from_last_record) {
                    (Some(path), _) => got(path),
                    (None, Some(path)) => records
                        .last()
                        .and_then(|r| Path::parse(path).ok()?.get(r).cloned()),
                    (None, None) => None,
                };
                match t {
                    Some(Value::String(s)) if !s.is_empty() => Some(Next::Token(s)),
                    Some(Value::Number(x)) => Some(Next::Token(x.to_string())),
                    _ => None,
                }
            }
        }
        Pagination::NextUrl { path } => match got(path) {
            Some(Value::String(s)) if !s.is_empty() => Some(Next::Url(resolve(&resp.url, &s))),
            _ => None,
        },
        Pagination::LinkHeader => resp
            .header("link")
            .and_then(link_next)
            .map(|s| Next::Url(resolve(&resp.url, &s))),
    };
    if let Some(nx) = &next {
        if nx == current {
            return Err(PageError::Loop(format!("{:?}", nx.to_value())));
        }
    }
    Ok(next)
}

fn resolve(base: &Url, link: &str) -> String {
    base.join(link)
        .map_or_else(|_| link.to_owned(), |u| u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_as_github_and_rfc_8288_write_them() {
        let gh = r#"<https://api.github.com/repositories/1300192/issues?page=2>; rel="prev", <https://api.github.com/repositories/1300192/issues?page=4>; rel="next", <https://api.github.com/repositories/1300192/issues?page=515>; rel="last""#;
        assert_eq!(
            link_next(gh).as_deref(),
            Some("https://api.github.com/repositories/1300192/issues?page=4")
        );
        assert_eq!(
            link_next("</a?x=1,2>; rel=next").as_deref(),
            Some("/a?x=1,2")
        );
        assert_eq!(
            link_next(r#"</b>; title="x"; rel="prefetch next""#).as_deref(),
            Some("/b")
        );
        assert_eq!(link_next(r#"</a>; rel="last""#), None);
        assert_eq!(link_next("garbage <"), None);
        assert_eq!(link_next(""), None);
    }

    #[test]
    fn keys_compare_as_instants_and_numbers() {
        use Ordering::*;
        assert_eq!(
            cmp_keys(
                &json!("2026-01-01T10:00:00Z"),
                &json!("2026-01-01T11:00:00+02:00")
            ),
            Some(Greater)
        );
        assert_eq!(
            cmp_keys(
                &json!("2026-01-01T10:00:00Z"),
                &json!("2026-01-01T10:00:00.000Z")
            ),
            Some(Equal)
        );
        assert_eq!(cmp_keys(&json!(10), &json!(9.5)), Some(Greater));
        assert_eq!(
            cmp_keys(&json!(1_767_225_600), &json!("2026-01-01")),
            Some(Equal)
        );
        assert_eq!(cmp_keys(&json!("b"), &json!("a")), Some(Greater));
        assert_eq!(cmp_keys(&json!(true), &json!(1)), None);
        assert_eq!(max_key(Some(json!(3)), &json!(2)), Some(json!(3)));
        assert_eq!(max_key(None, &json!(2)), Some(json!(2)));
    }

    #[test]
    fn marks_round_trip_through_state() {
        let m = Mark {
            value: Some(json!("2026-01-01T00:00:00Z")),
            resume: Some(Resume {
                next: Some(Next::Token("cus_9".into())),
                filter: Some(json!(5)),
                max: Some(json!(9)),
                started: Some("2026-11-22T10:00:00Z".into()),
            }),
        };
        let mut out = Map::new();
        m.write(Some("created"), &mut out);
        assert_eq!(Mark::from_value(Some(&Value::Object(out.clone()))), m);
        Mark::default().write(None, &mut out);
        assert_eq!(Value::Object(out), json!({"replication_key": "created"}));
    }

    proptest::proptest! {
        #[test]
        fn any_link_header_parses_without_panicking(t in "[<>;,=\" a-z/?.0-9]{0,60}") {
            let _ = link_next(&t);
        }

        #[test]
        fn any_key_pair_compares_without_panicking(a in "\\PC{0,25}", b in "\\PC{0,25}", n in proptest::num::i64::ANY) {
            let _ = cmp_keys(&json!(a), &json!(b));
            let _ = cmp_keys(&json!(a), &json!(n));
            let _ = Mark::from_value(Some(&json!({"replication_key_value": a, "resume": {"next": {"page": n}}})));
        }
    }
}
