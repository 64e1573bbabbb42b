//! Paths into response bodies: a simple JSONPath (`$.data[*]`, `$.paging.next.after`,
//! `$['odd key']`, `$[*]`) or a JSON pointer (`/data`). Enough for where APIs put their records
//! and tokens; filters and recursive descent are not needed for that and not supported.

use serde_json::Value;

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    segs: Vec<String>,
    text: String,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Path {
    /// Parses a JSONPath (`$…`), a JSON pointer (`/…`) or a bare dotted path (`a.b`).
    ///
    /// # Errors
    /// A message naming the path when it cannot be read.
    pub fn parse(text: &str) -> Result<Path, String> {
        let bad = |why: &str| format!("bad path {text:?}: {why}");
        let mut segs = Vec::new();
        if let Some(ptr) = text.strip_prefix('/') {
            for s in ptr.split('/') {
                segs.push(s.replace("~1", "/").replace("~0", "~"));
            }
        } else {
            let mut rest = text.strip_prefix('$').unwrap_or(text);
            while !rest.is_empty() {
                if let Some(r) = rest.strip_prefix("[*]") {
                    // Iterating the last array is what selecting records does anyway.
                    if !r.is_empty() {
                        return Err(bad("`[*]` is allowed only at the end"));
                    }
                    rest = r;
                } else if let Some(r) = rest.strip_prefix("['") {
                    let end = r.find("']").ok_or_else(|| bad("unclosed ['"))?;
                    segs.push(r[..end].to_owned());
                    rest = &r[end + 2..];
                } else if let Some(r) = rest.strip_prefix('[') {
                    let end = r.find(']').ok_or_else(|| bad("unclosed ["))?;
                    let idx = &r[..end];
                    if idx.parse::<usize>().is_err() {
                        return Err(bad("an index must be a number"));
                    }
                    segs.push(idx.to_owned());
                    rest = &r[end + 1..];
                } else {
                    let r = rest.strip_prefix('.').unwrap_or(rest);
                    let end = r.find(['.', '[']).unwrap_or(r.len());
                    if end == 0 {
                        return Err(bad("empty name"));
                    }
                    segs.push(r[..end].to_owned());
                    rest = &r[end..];
                }
            }
        }
        Ok(Path {
            segs,
            text: text.to_owned(),
        })
    }

    /// The value at the path.
    pub fn get<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        let mut cur = v;
        for s in &self.segs {
            cur = match cur {
                Value::Object(m) => m.get(s)?,
                Value::Array(a) => a.get(s.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// Takes the value at the path out of `v` (no copy of a large records array).
    pub fn take(&self, v: &mut Value) -> Option<Value> {
        let mut cur = v;
        for s in &self.segs {
            cur = match cur {
                Value::Object(m) => m.get_mut(s)?,
                Value::Array(a) => a.get_mut(s.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_in_every_spelling_find_the_same_value() {
        let body = json!({"paging": {"next": {"after": "abc"}}, "data": [{"id": 1}], "a b": 2});
        for p in [
            "$.paging.next.after",
            "/paging/next/after",
            "paging.next.after",
            "$['paging'].next['after']",
        ] {
            assert_eq!(
                Path::parse(p).unwrap().get(&body),
                Some(&json!("abc")),
                "{p}"
            );
        }
        assert_eq!(
            Path::parse("$.data[0].id").unwrap().get(&body),
            Some(&json!(1))
        );
        assert_eq!(Path::parse("$['a b']").unwrap().get(&body), Some(&json!(2)));
        assert_eq!(
            Path::parse("$.data[*]").unwrap().get(&body),
            Some(&json!([{"id": 1}]))
        );
        assert_eq!(Path::parse("$").unwrap().get(&body), Some(&body));
        assert_eq!(
            Path::parse("$[*]").unwrap().get(&json!([1])),
            Some(&json!([1]))
        );
        assert_eq!(Path::parse("$.nope").unwrap().get(&body), None);
    }

    #[test]
    fn bad_paths_are_errors() {
        for p in ["$.data[*].id", "$['x", "$[x]", "$..a"] {
            assert!(Path::parse(p).is_err(), "{p}");
        }
    }

    #[test]
    fn take_moves_the_value_out() {
        let mut body = json!({"results": [1, 2]});
        let p = Path::parse("$.results").unwrap();
        assert_eq!(p.take(&mut body), Some(json!([1, 2])));
        assert_eq!(body, json!({"results": null}));
    }

    proptest::proptest! {
        #[test]
        fn any_path_parses_or_errs_without_panicking(t in "\\PC{0,30}") {
            if let Ok(p) = Path::parse(&t) {
                let mut body = json!({"a": [{"b": 1}], "c": null});
                let _ = p.get(&body);
                let _ = p.take(&mut body);
            }
        }
    }
}
