//! Quoting for SQL text built from source names. COPY takes no parameters, so every identifier
//! and literal that comes from input goes through here; values travel as query parameters or
//! COPY data, never pasted into SQL.

/// `"name"`, with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// `'text'`, with embedded quotes doubled (standard_conforming_strings is on by default since
/// PostgreSQL 9.1; backslashes are then literal).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(qualified("s", "t"), r#""s"."t""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
