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

/// Where one top-level property of a record lies in the record's text: found once, by the
/// validator's pass on the source's thread, so that a columnar target reads the values without
/// scanning the text again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpan {
    /// The key's text between its quotes.
    key: (u32, u32),
    /// The value's JSON text.
    value: (u32, u32),
    /// Bit 0: the key has no escapes. Bit 1: the value is a string without escapes.
    flags: u8,
}

const KEY_PLAIN: u8 = 1;
const VALUE_PLAIN_STRING: u8 = 2;

impl FieldSpan {
    /// A field whose key text (between the quotes) is `key` and whose value text is `value`;
    /// `None` past 4 GiB.
    pub fn new(
        key: std::ops::Range<usize>,
        key_plain: bool,
        value: std::ops::Range<usize>,
        plain_string: bool,
    ) -> Option<FieldSpan> {
        let n = |x: usize| u32::try_from(x).ok();
        Some(FieldSpan {
            key: (n(key.start)?, n(key.end)?),
            value: (n(value.start)?, n(value.end)?),
            flags: u8::from(key_plain) * KEY_PLAIN + u8::from(plain_string) * VALUE_PLAIN_STRING,
        })
    }

    fn range(r: (u32, u32)) -> std::ops::Range<usize> {
        r.0 as usize..r.1 as usize
    }
}

/// The [`FieldSpan`]s of one record's text, tied to that text by its address and length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSpans {
    text: (usize, usize),
    spans: Vec<FieldSpan>,
}

impl FieldSpans {
    /// The spans found in `text` (by [`crate::schema::Validator::validate_raw_fields`]).
    pub fn found_in(text: &str, spans: Vec<FieldSpan>) -> FieldSpans {
        FieldSpans {
            text: (text.as_ptr() as usize, text.len()),
            spans,
        }
    }

    /// No spans: the reader scans the text.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The spans, when they were found in this very text (same address and length: the
    /// record's text is immutable while the spans travel with it).
    fn of(&self, text: &str) -> Option<&[FieldSpan]> {
        (self.text == (text.as_ptr() as usize, text.len()) && !self.spans.is_empty())
            .then_some(&self.spans)
    }
}

/// One top-level property of a record: its value's JSON text, and whether that text is a
/// string without escapes (whose content is then the text between the quotes).
#[derive(Debug, Clone, Copy)]
pub struct FieldValue<'a> {
    /// The value's JSON text.
    pub text: &'a str,
    /// A string without escapes.
    pub plain_string: bool,
}

/// Calls `f(key, value)` for each top-level property of a JSON object's text, in order: from
/// the spans the validator found in this text when given (no scanning), else by [`fields`].
pub fn fields_with<'a>(
    text: &'a str,
    found: Option<&FieldSpans>,
    mut f: impl FnMut(Cow<'a, str>, FieldValue<'a>),
) {
    match found.and_then(|x| x.of(text)) {
        Some(spans) => {
            for s in spans {
                // The spans were found in this text, so these always succeed; `get` keeps a
                // mistake from ever panicking.
                let key = if s.flags & KEY_PLAIN != 0 {
                    text.get(FieldSpan::range(s.key)).map(Cow::Borrowed)
                } else {
                    let mut i = (s.key.0 as usize).saturating_sub(1);
                    (text.as_bytes().get(i) == Some(&b'"')).then(|| string_at(text, &mut i))
                };
                let (Some(key), Some(value)) = (key, text.get(FieldSpan::range(s.value))) else {
                    continue;
                };
                f(
                    key,
                    FieldValue {
                        text: value,
                        plain_string: s.flags & VALUE_PLAIN_STRING != 0,
                    },
                );
            }
        }
        _ => fields(text, |k, v| {
            f(
                k,
                FieldValue {
                    text: v,
                    plain_string: false,
                },
            )
        }),
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
