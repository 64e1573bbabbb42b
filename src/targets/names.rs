//! Table and column names for every table-shaped target: streams and properties folded to lower
//! case, cut to an identifier limit (Postgres' 63 bytes), and kept distinct when folding or
//! cutting makes two collide.

/// Postgres' identifier limit in bytes.
pub const MAX_IDENT: usize = 63;

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A folded, cut name.
pub fn fold(name: &str) -> String {
    cut(&name.to_lowercase(), MAX_IDENT).to_owned()
}

/// The table for a stream: `public-users` → `users` (the part after the first `-`, which taps
/// use as `<schema>-<table>`), folded and cut.
pub fn table_name(stream: &str) -> String {
    let base = stream.split_once('-').map_or(stream, |(_, t)| t);
    fold(if base.is_empty() { stream } else { base })
}

/// The source schema of a `<schema>-<table>` stream, for `schema_mapping`.
pub fn source_schema(stream: &str) -> Option<&str> {
    stream.split_once('-').map(|(s, _)| s)
}

/// Column names for properties, distinct: a name taken by an earlier property gets a suffix
/// (`_2`, `_3`, …) inside the byte limit.
pub fn column_names(props: &[String], taken: &mut Vec<String>) -> Vec<String> {
    props
        .iter()
        .map(|p| {
            let base = fold(p);
            let mut name = base.clone();
            let mut n = 2;
            while taken.contains(&name) {
                let suffix = format!("_{n}");
                name = format!("{}{suffix}", cut(&base, MAX_IDENT - suffix.len()));
                n += 1;
            }
            taken.push(name.clone());
            name
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(table_name("public-Users"), "users");
        assert_eq!(table_name("orders"), "orders");
        assert_eq!(source_schema("public-users"), Some("public"));
        let long = "x".repeat(70);
        let props = vec![
            "Id".to_string(),
            "id".to_string(),
            long.clone(),
            format!("{long}y"),
            "Ünï Cödé".to_string(),
        ];
        let cols = column_names(&props, &mut Vec::new());
        assert_eq!(cols[0], "id");
        assert_eq!(cols[1], "id_2");
        assert_eq!(cols[2].len(), 63);
        assert_eq!(cols[3], format!("{}_2", "x".repeat(61)));
        assert_eq!(cols[4], "ünï cödé");
    }
}
