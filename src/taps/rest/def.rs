//! The definition file of a REST tap (`taps/<api>.yml`): base URL, auth, defaults, and the
//! streams with their paths, record selectors, pagination and incremental filters. Parsed and
//! checked once, so a mistake in a definition is reported before any request is sent.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::error::config_error;
use crate::http::select::Path;
use crate::http::template::Template;
use crate::http::AuthSpec;

/// The whole definition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The API's name (the tap's name in logs and `--about`).
    pub name: String,
    /// One line on what it reads.
    #[serde(default)]
    pub description: String,
    /// Where the API's documentation is.
    #[serde(default)]
    pub docs: Option<String>,
    /// The API root; the tap config's `base_url` overrides it.
    pub base_url: String,
    /// Config keys the definition uses, for `--about` and to fail early on missing ones.
    #[serde(default)]
    pub settings: Vec<Setting>,
    /// Authentication: one scheme, or a list tried in order (the first whose config is given).
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    /// Headers sent with every request (templates allowed).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query parameters sent with every request (templates allowed).
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    /// Request pacing, overridable by the config's `requests_per_second`.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Pagination used by streams that do not set their own.
    #[serde(default)]
    pub pagination: Option<Pagination>,
    /// Headers whose values tell when a rate-limit window resets, e.g. GitHub's
    /// `x-ratelimit-remaining` / `x-ratelimit-reset`: a 403 or 429 with remaining 0 waits until
    /// the reset (Unix seconds).
    #[serde(default)]
    pub rate_limit_headers: Option<RateLimitHeaders>,
    /// The streams.
    pub streams: Vec<StreamDef>,
}

/// A documented config key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setting {
    /// The key.
    pub name: String,
    /// Whether the tap cannot run without it.
    #[serde(default)]
    pub required: bool,
    /// A secret: registered for masking wherever it could appear.
    #[serde(default)]
    pub secret: bool,
    /// JSON type, for `--about`.
    #[serde(default = "default_setting_type", rename = "type")]
    pub ty: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
}

fn default_setting_type() -> String {
    "string".into()
}

/// See [`Definition::rate_limit_headers`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitHeaders {
    /// Requests left in the window.
    pub remaining: String,
    /// When the window resets, Unix seconds.
    pub reset: String,
}

/// How a stream pages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
pub enum Pagination {
    /// One request.
    None,
    /// `?page=N`.
    Page {
        /// The parameter.
        #[serde(default = "default_page_param")]
        param: String,
        /// The first page's number.
        #[serde(default = "one")]
        start: u64,
        /// Page size: a shorter page is the last.
        #[serde(default)]
        page_size: Option<u64>,
        /// Path of the total number of pages in the body.
        #[serde(default)]
        total_pages: Option<String>,
    },
    /// `?offset=N` advanced by the records received.
    Offset {
        /// The parameter.
        #[serde(default = "default_offset_param")]
        param: String,
        /// Page size: a shorter page is the last.
        #[serde(default)]
        page_size: Option<u64>,
        /// Path of the total number of records in the body.
        #[serde(default)]
        total: Option<String>,
    },
    /// A token from the body (or the last record) sent back as a parameter or body field.
    Cursor {
        /// Query parameter to send the token in.
        #[serde(default)]
        param: Option<String>,
        /// Body field to send the token in (POST searches).
        #[serde(default)]
        body_field: Option<String>,
        /// Path of the next token in the body.
        #[serde(default)]
        token: Option<String>,
        /// Path of the token in the page's last record (Stripe: `id` for `starting_after`).
        #[serde(default)]
        token_from_last_record: Option<String>,
        /// Path of a boolean that is false on the last page (Stripe: `has_more`).
        #[serde(default)]
        has_more: Option<String>,
    },
    /// A URL to the next page in the body.
    NextUrl {
        /// Its path.
        path: String,
    },
    /// RFC 8288 `Link: <…>; rel="next"`.
    LinkHeader,
}

fn default_page_param() -> String {
    "page".into()
}
fn default_offset_param() -> String {
    "offset".into()
}
const fn one() -> u64 {
    1
}

/// Where records come in relation to the replication key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Oldest first: the bookmark advances with every page.
    Asc,
    /// Newest first: the bookmark advances when the stream is complete.
    Desc,
    /// No order: as `desc`.
    #[default]
    Unsorted,
}

/// A child stream's parent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentDef {
    /// The parent stream.
    pub stream: String,
    /// Context fields taken from each parent record: name → path in the parent record. They are
    /// `{{ parent.<name> }}` in templates, added to every child record, and key the child's
    /// state partitions.
    pub context: BTreeMap<String, String>,
}

/// How the bookmark goes into a request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    /// Query parameters added when there is a bookmark (`{{ bookmark | … }}`).
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    /// Body fields merged in when there is a bookmark.
    #[serde(default)]
    pub body: Option<Value>,
    /// The start value when there is no bookmark yet (default `{{ config.start_date }}`).
    #[serde(default)]
    pub start: Option<String>,
    /// Sort-and-stop: with `order: desc`, stop paging at the first record older than the
    /// bookmark (for endpoints without a filter).
    #[serde(default)]
    pub stop_at_bookmark: bool,
    /// With `order: asc`: after this many records, start the query again from the greatest
    /// replication-key value seen (APIs that cap a query's results, such as HubSpot search at
    /// 10,000).
    #[serde(default)]
    pub restart_after_records: Option<u64>,
}

/// One stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamDef {
    /// The stream name.
    pub name: String,
    /// The path under the base URL (templates allowed).
    pub path: String,
    /// GET or POST.
    #[serde(default = "default_method")]
    pub method: String,
    /// Query parameters (templates allowed).
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    /// A JSON body (POST).
    #[serde(default)]
    pub body: Option<Value>,
    /// Headers for this stream.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Where the records are in the body (default: the body itself).
    #[serde(default)]
    pub records: Option<String>,
    /// Key properties.
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// The replication key (a top-level or computed property).
    #[serde(default)]
    pub replication_key: Option<String>,
    /// The order of records by the replication key.
    #[serde(default)]
    pub order: Order,
    /// How the bookmark is sent.
    #[serde(default)]
    pub incremental: Option<Incremental>,
    /// Pagination (default: the definition's).
    #[serde(default)]
    pub pagination: Option<Pagination>,
    /// The parent stream.
    #[serde(default)]
    pub parent: Option<ParentDef>,
    /// Top-level properties copied from nested ones: name → path in the record.
    #[serde(default)]
    pub computed: BTreeMap<String, String>,
    /// The JSON Schema of the records (without it, discovery infers one).
    #[serde(default)]
    pub schema: Option<Value>,
}

fn default_method() -> String {
    "GET".into()
}

impl Definition {
    /// Reads and checks a definition (a file, or one compiled in).
    ///
    /// # Errors
    /// A config error naming the file and what is wrong.
    pub fn load(source: &crate::definitions::Source) -> anyhow::Result<Definition> {
        let text = source.text()?;
        let def: Definition = serde_yaml_ng::from_str(&text)
            .map_err(|e| config_error(format!("REST definition {source}: {e}")))?;
        def.check()
            .map_err(|e| config_error(format!("REST definition {source}: {e}")))?;
        Ok(def)
    }

    /// Checks what serde cannot: templates, paths, parents, methods.
    fn check(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for s in &self.streams {
            let at = |e: String| format!("stream {:?}: {e}", s.name);
            if !names.insert(s.name.as_str()) {
                return Err(at("defined twice".into()));
            }
            if !matches!(s.method.as_str(), "GET" | "POST") {
                return Err(at(format!("method {:?}: only GET and POST", s.method)));
            }
            Template::parse(&s.path).map_err(|e| at(e.to_string()))?;
            for p in s.records.iter().chain(s.computed.values()) {
                Path::parse(p).map_err(at)?;
            }
            if let Some(p) = &s.parent {
                let pos = self.streams.iter().position(|x| x.name == p.stream);
                let me = self.streams.iter().position(|x| x.name == s.name);
                if pos.is_none() || pos >= me {
                    return Err(at(format!(
                        "parent {:?} must be a stream defined before it",
                        p.stream
                    )));
                }
                for v in p.context.values() {
                    Path::parse(v).map_err(at)?;
                }
            }
            if s.incremental.is_some() && s.replication_key.is_none() {
                return Err(at("`incremental` needs a `replication_key`".into()));
            }
            if s.incremental
                .as_ref()
                .is_some_and(|i| i.stop_at_bookmark && s.order != Order::Desc)
            {
                return Err(at("`stop_at_bookmark` needs `order: desc`".into()));
            }
            if s.incremental
                .as_ref()
                .is_some_and(|i| i.restart_after_records.is_some() && s.order != Order::Asc)
            {
                return Err(at("`restart_after_records` needs `order: asc`".into()));
            }
            match self.pagination_of(s) {
                Pagination::Cursor {
                    param,
                    body_field,
                    token,
                    token_from_last_record,
                    has_more,
                } => {
                    if param.is_none() == body_field.is_none() {
                        return Err(at(
                            "cursor pagination needs one of `param` or `body_field`".into()
                        ));
                    }
                    if token.is_none() == token_from_last_record.is_none() {
                        return Err(at(
                            "cursor pagination needs one of `token` or `token_from_last_record`"
                                .into(),
                        ));
                    }
                    for p in token.iter().chain(token_from_last_record).chain(has_more) {
                        Path::parse(p).map_err(at)?;
                    }
                }
                Pagination::Page {
                    total_pages: Some(p),
                    ..
                }
                | Pagination::Offset { total: Some(p), .. }
                | Pagination::NextUrl { path: p } => {
                    Path::parse(p).map_err(at)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A stream's pagination.
    pub fn pagination_of<'a>(&'a self, s: &'a StreamDef) -> &'a Pagination {
        s.pagination
            .as_ref()
            .or(self.pagination.as_ref())
            .unwrap_or(&Pagination::None)
    }

    /// A stream by name.
    pub fn stream(&self, name: &str) -> Option<&StreamDef> {
        self.streams.iter().find(|s| s.name == name)
    }
}
