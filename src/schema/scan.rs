//! A minimal scanner over JSON text that is already known to be valid (a `RawValue`): finding
//! where strings and values end without building anything. Shared by the raw-record validator and
//! targets that read fields straight from raw records.

use std::borrow::Cow;

/// Skips JSON whitespace.
pub fn ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\n' | b'\r') {
        *i += 1;
    }
}

/// The end of the string starting at `b[i] == '"'`, and whether it has escapes.
pub fn string_end(b: &[u8], i: usize) -> (usize, bool) {
    let mut j = i + 1;
    let mut escaped = false;
    while let Some(off) = b
        .get(j..)
        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
    {
        j += off;
        if b[j] == b'"' {
            return (j + 1, escaped);
        }
        escaped = true;
        j += 2;
    }
    (b.len(), escaped)
}

/// The string starting at `text[*i]`, unescaped only if it has escapes; moves `i` past it.
pub fn string_at<'a>(text: &'a str, i: &mut usize) -> Cow<'a, str> {
    let (end, escaped) = string_end(text.as_bytes(), *i);
    let s = if escaped {
        Cow::Owned(serde_json::from_str::<String>(&text[*i..end]).unwrap_or_default())
    } else {
        Cow::Borrowed(&text[*i + 1..end - 1])
    };
    *i = end;
    s
}

/// Moves `i` past the value starting there.
pub fn skip(b: &[u8], i: &mut usize) {
    match b.get(*i) {
        Some(b'"') => *i = string_end(b, *i).0,
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            while *i < b.len() {
                match b[*i] {
                    b'"' => {
                        *i = string_end(b, *i).0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            *i += 1;
                            return;
                        }
                    }
                    _ => {}
                }
                *i += 1;
            }
        }
        _ => {
            while *i < b.len()
                && !matches!(b[*i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                *i += 1;
            }
        }
    }
}

/// Calls `f(key, value_text)` for each top-level property of a JSON object's text, in order.
pub fn fields<'a>(text: &'a str, mut f: impl FnMut(Cow<'a, str>, &'a str)) {
    let b = text.as_bytes();
    let mut i = 0;
    ws(b, &mut i);
    if b.get(i) != Some(&b'{') {
        return;
    }
    i += 1;
    ws(b, &mut i);
    if b.get(i) == Some(&b'}') {
        return;
    }
    while i < b.len() {
        ws(b, &mut i);
        let k = string_at(text, &mut i);
        ws(b, &mut i);
        i += 1; // ':'
        ws(b, &mut i);
        let start = i;
        skip(b, &mut i);
        f(k, &text[start..i]);
        ws(b, &mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_top_level_fields() {
        let mut got = Vec::new();
        fields(
            r#" { "a" : 1, "b\"q": {"x": [1, "}"]}, "c": "s\"}", "d": null } "#,
            |k, v| got.push((k.into_owned(), v.to_owned())),
        );
        assert_eq!(
            got,
            [
                ("a".into(), "1".into()),
                ("b\"q".into(), r#"{"x": [1, "}"]}"#.into()),
                ("c".into(), r#""s\"}""#.into()),
                ("d".into(), "null".into())
            ]
        );
        fields("{}", |_, _| panic!("no fields"));
    }

    #[test]
    fn string_ends_are_found_at_every_length_and_escape_position() {
        // Around the switch from the short loop to memchr: every length, escapes anywhere.
        for len in 0usize..80 {
            for esc in [None, Some(0), Some(len / 2), Some(len.saturating_sub(1))] {
                let mut body = "é".repeat(len / 2) + &"x".repeat(len % 2);
                if let (Some(at), true) = (esc, len > 0) {
                    let at = body
                        .char_indices()
                        .nth(at.min(body.chars().count() - 1))
                        .unwrap()
                        .0;
                    body.insert_str(at, "\\\"");
                }
                let text = format!(r#"["{body}",1]"#);
                let want: String = serde_json::from_str::<Vec<serde_json::Value>>(&text).unwrap()
                    [0]
                .as_str()
                .unwrap()
                .to_owned();
                let (end, escaped) = string_end(text.as_bytes(), 1);
                assert_eq!(&text[end..], ",1]", "{text}");
                assert_eq!(escaped, body.contains('\\'), "{text}");
                let mut i = 1;
                assert_eq!(string_at(&text, &mut i), want, "{text}");
            }
        }
        // An unterminated string (or one ending in a backslash) ends at the end of the text.
        assert_eq!(string_end(br#""abc"#, 0), (4, false));
        assert_eq!(string_end(br#""abc\"#, 0), (5, true));
    }
}
