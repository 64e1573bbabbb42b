//! REST API taps described by a YAML definition: a shipped one by name (`ferry tap github
//! --config c.json`, see [`crate::definitions`]) or a file (`ferry tap my_api.yml`). The definition says where the records are and how the API pages and
//! filters; this engine sends the requests (through the shared [`crate::http::Client`]), walks
//! parent and child streams, and keeps a bookmark per stream (per parent for child streams)
//! that moves only as pages are emitted.

pub mod def;
mod page;
mod sync;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Map, Value};

use crate::about::{About, ConfigKey};
use crate::definitions::Source as DefSource;
use crate::error::config_error;
use crate::http::template::{render_value, Template, TemplateError};
use crate::http::{render_pairs, Body, Client, Method, Policy, Request, Url};
use crate::schema::infer::RecordInferrer;
use crate::secrets;
use crate::singer::catalog::keys;
use crate::singer::{state, Catalog, CatalogStream};
use crate::taps::PlanStep;

pub use def::{Definition, Order, Pagination, StreamDef};
use page::{Mark, Next};

/// Whether a tap name refers to a definition file rather than a built-in tap.
pub fn is_definition(name: &str) -> bool {
    crate::definitions::is_path(name)
}

/// Engine settings every definition accepts in its config, beside the API's own keys.
const ENGINE_KEYS: &[(&str, &str, &str)] = &[
    (
        "base_url",
        "string",
        "Overrides the definition's base URL (enterprise instances, proxies, tests).",
    ),
    (
        "start_date",
        "string",
        "Where incremental streams start without a bookmark (RFC 3339 or YYYY-MM-DD).",
    ),
    (
        "requests_per_second",
        "number",
        "Request rate cap (default: the definition's, else none).",
    ),
    (
        "max_retries",
        "integer",
        "Retries of a request on 429, 5xx, timeouts and dropped connections (default 8).",
    ),
    (
        "backoff_base_ms",
        "integer",
        "First retry backoff in ms, doubled per retry with jitter (default 500).",
    ),
    (
        "max_retry_wait_seconds",
        "integer",
        "The longest Retry-After or rate-limit reset waited for (default 900).",
    ),
    (
        "timeout_seconds",
        "number",
        "Per-request timeout (default 60).",
    ),
    (
        "user_agent",
        "string",
        "User-Agent header (default ferry/<version>).",
    ),
    (
        "sample_records",
        "integer",
        "Records per stream read to infer a schema in --discover (default 200).",
    ),
];

/// A REST tap, configured.
#[derive(Debug)]
pub struct RestTap {
    def: Definition,
    file: DefSource,
    base: String,
    ctx: Value,
    client: Arc<Client>,
    sample_records: usize,
}

fn num(config: &Value, key: &str) -> anyhow::Result<Option<f64>> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .or_else(|| v.as_str()?.parse().ok())
            .filter(|x: &f64| *x >= 0.0)
            .map(Some)
            .ok_or_else(|| config_error(format!("`{key}` must be a non-negative number, got {v}"))),
    }
}

/// The `--about` of a definition.
///
/// # Errors
/// An unreadable definition.
pub fn about(file: &DefSource) -> anyhow::Result<About> {
    let def = Definition::load(file)?;
    // About holds static text (the built-in taps' is compiled in); a definition's text lives
    // for the rest of this short-lived command.
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let mut settings: Vec<ConfigKey> = def
        .settings
        .iter()
        .map(|s| ConfigKey {
            name: leak(s.name.clone()),
            ty: leak(s.ty.clone()),
            required: s.required,
            description: leak(s.description.clone()),
        })
        .collect();
    for (name, ty, description) in ENGINE_KEYS {
        settings.push(ConfigKey {
            name,
            ty,
            required: false,
            description,
        });
    }
    Ok(About {
        name: def.name.clone(),
        description: leak(def.description.clone()),
        capabilities: vec!["catalog", "discover", "state", "about"],
        settings,
    })
}

impl RestTap {
    /// Reads the definition and checks the config against it.
    ///
    /// # Errors
    /// A config error: unreadable definition, missing required keys, no credentials.
    pub fn new(file: &DefSource, config: &Value) -> anyhow::Result<RestTap> {
        let def = Definition::load(file)?;
        if !config.is_object() {
            return Err(config_error("the tap config must be a JSON object"));
        }
        let missing: Vec<&str> = def
            .settings
            .iter()
            .filter(|s| s.required && config.get(&s.name).is_none_or(Value::is_null))
            .map(|s| s.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(config_error(format!(
                "tap {}: the config lacks {} (see `ferry tap {} --about`)",
                def.name,
                missing.join(", "),
                match file {
                    DefSource::File(p) => p.display().to_string(),
                    DefSource::Shipped(s) => s.name.to_owned(),
                }
            )));
        }
        for s in def.settings.iter().filter(|s| s.secret) {
            if let Some(v) = config.get(&s.name) {
                secrets::register_config(&json!({ "secret": v }));
            }
        }
        secrets::register_config(config);
        let base = match config.get("base_url").and_then(Value::as_str) {
            Some(b) => b.to_owned(),
            None => def.base_url.clone(),
        };
        let base_url = Url::parse(&base)
            .map_err(|e| config_error(format!("tap {}: base_url {base:?}: {e}", def.name)))?;
        let mut policy = Policy {
            requests_per_second: num(config, "requests_per_second")?.or(def.requests_per_second),
            rate_limit_headers: def.rate_limit_headers.as_ref().map(|h| {
                (
                    h.remaining.to_ascii_lowercase(),
                    h.reset.to_ascii_lowercase(),
                )
            }),
            ..Policy::default()
        };
        if let Some(n) = num(config, "max_retries")? {
            policy.max_retries = n as u32;
        }
        if let Some(n) = num(config, "backoff_base_ms")? {
            policy.backoff_base = Duration::from_secs_f64(n / 1000.0);
        }
        if let Some(n) = num(config, "max_retry_wait_seconds")? {
            policy.max_wait = Duration::from_secs_f64(n);
        }
        if let Some(n) = num(config, "timeout_seconds")? {
            policy.timeout = Duration::from_secs_f64(n.max(0.001));
        }
        let ua = config
            .get("user_agent")
            .and_then(Value::as_str)
            .map_or_else(
                || format!("ferry/{}", env!("CARGO_PKG_VERSION")),
                str::to_owned,
            );
        let ctx = json!({ "config": config });
        let client = Client::new(def.auth.as_ref(), &ctx, &base_url, &ua, policy)
            .map_err(|e| config_error(format!("tap {}: {e}", def.name)))?;
        let sample_records = num(config, "sample_records")?.map_or(200, |n| n as usize);
        Ok(RestTap {
            def,
            file: file.clone(),
            base: base.trim_end_matches('/').to_owned(),
            ctx,
            client: Arc::new(client),
            sample_records,
        })
    }

    /// The definition's streams that have no parent, in definition order.
    fn roots(&self) -> impl Iterator<Item = &StreamDef> {
        self.def.streams.iter().filter(|s| s.parent.is_none())
    }

    /// The child streams of `name`.
    fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a StreamDef> + 'a {
        self.def
            .streams
            .iter()
            .filter(move |s| s.parent.as_ref().is_some_and(|p| p.stream == name))
    }

    /// The template context for one request.
    fn context(&self, parent: Option<&Map<String, Value>>, bookmark: Option<&Value>) -> Value {
        let mut ctx = self.ctx.clone();
        if let Value::Object(m) = &mut ctx {
            if let Some(p) = parent {
                m.insert("parent".into(), Value::Object(p.clone()));
            }
            if let Some(b) = bookmark {
                m.insert("bookmark".into(), b.clone());
            }
        }
        ctx
    }

    /// The bookmark a stream starts from when it has none: `incremental.start`, else the
    /// config's `start_date`.
    fn start_value(&self, s: &StreamDef) -> anyhow::Result<Option<Value>> {
        let Some(inc) = &s.incremental else {
            return Ok(None);
        };
        let t = inc.start.as_deref().unwrap_or("{{ config.start_date }}");
        match Template::parse(t).and_then(|t| t.render(&self.ctx)) {
            Ok(v) if v.is_null() || v == json!("") => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(TemplateError::Missing(_)) => Ok(None),
            Err(e) => Err(config_error(format!("stream {:?}: start: {e}", s.name))),
        }
    }

    /// Builds the request for one page.
    fn request(
        &self,
        s: &StreamDef,
        parent: Option<&Map<String, Value>>,
        filter: Option<&Value>,
        next: &Next,
    ) -> anyhow::Result<Request> {
        let ctx = self.context(parent, filter);
        let at = |e: TemplateError| config_error(format!("stream {:?}: {e}", s.name));
        let pagination = self.def.pagination_of(s);
        let (url, mut query) = match next {
            Next::Url(u) => (
                Url::parse(u).map_err(|e| {
                    anyhow::anyhow!(
                        "stream {:?}: the API's next-page URL {u:?} is not a URL: {e}",
                        s.name
                    )
                })?,
                Vec::new(),
            ),
            _ => {
                let path = Template::parse(&s.path)
                    .and_then(|t| t.render_path(&ctx))
                    .map_err(at)?;
                let url = format!("{}/{}", self.base, path.trim_start_matches('/'));
                let url = Url::parse(&url)
                    .map_err(|e| config_error(format!("stream {:?}: URL {url:?}: {e}", s.name)))?;
                let mut q = render_pairs(&self.def.params, &ctx).map_err(at)?;
                q.extend(render_pairs(&s.params, &ctx).map_err(at)?);
                if let (Some(inc), Some(_)) = (&s.incremental, filter) {
                    q.extend(render_pairs(&inc.params, &ctx).map_err(at)?);
                }
                (url, q)
            }
        };
        let mut body = match &s.body {
            Some(b) => Some(render_value(b, &ctx).map_err(at)?),
            None => None,
        };
        if let (Some(inc), Some(_)) = (&s.incremental, filter) {
            if let Some(extra) = &inc.body {
                let extra = render_value(extra, &ctx).map_err(at)?;
                merge_into(body.get_or_insert_with(|| json!({})), extra);
            }
        }
        match (pagination, next) {
            (Pagination::Page { param, .. }, Next::Page(n)) => {
                query.push((param.clone(), n.to_string()))
            }
            (Pagination::Page { param, start, .. }, Next::First) => {
                query.push((param.clone(), start.to_string()));
            }
            (Pagination::Offset { param, .. }, Next::Offset(n)) => {
                query.push((param.clone(), n.to_string()))
            }
            (Pagination::Offset { param, .. }, Next::First) => {
                query.push((param.clone(), "0".into()))
            }
            (
                Pagination::Cursor {
                    param, body_field, ..
                },
                Next::Token(t),
            ) => {
                if let Some(p) = param {
                    query.push((p.clone(), t.clone()));
                }
                if let Some(f) = body_field {
                    merge_into(body.get_or_insert_with(|| json!({})), json!({ f: t }));
                }
            }
            _ => {}
        }
        let mut headers = Vec::new();
        for (k, v) in self.def.headers.iter().chain(&s.headers) {
            let v = Template::parse(v)
                .and_then(|t| t.render_str(&ctx))
                .map_err(at)?;
            // An optional header (`{{ config.x | default('') }}`) that is not configured.
            if !v.is_empty() {
                headers.push((k.clone(), v));
            }
        }
        let method = if s.method == "POST" {
            Method::POST
        } else {
            Method::GET
        };
        Ok(Request {
            method,
            url,
            query,
            headers,
            body: body.map(Body::Json),
            basic_auth: None,
        })
    }

    /// The catalog: the one shipped with a built-in definition, else every stream with its
    /// schema (from the definition, or inferred from sampled records), keys and replication
    /// metadata.
    ///
    /// # Errors
    /// When sampling a stream without a schema fails.
    pub async fn discover(&self) -> anyhow::Result<Catalog> {
        // A shipped definition has its catalog written out (typed as the API documents it):
        // no requests, and no types guessed from a few records.
        if let Some(text) = self.file.catalog() {
            let value: Value = serde_json::from_str(text)
                .with_context(|| format!("the catalog shipped with {}", self.file))?;
            return Catalog::from_value(value);
        }
        let mut samples: HashMap<String, Vec<Map<String, Value>>> = HashMap::new();
        let mut catalog = Catalog::default();
        for s in &self.def.streams {
            let schema = match &s.schema {
                Some(sch) => with_added_fields(sch.clone(), s),
                None => {
                    let records = self.sample(s, &samples).await?;
                    let mut inf = RecordInferrer::default();
                    for r in &records {
                        inf.add(r);
                    }
                    samples.insert(s.name.clone(), records);
                    nullable_except(inf.schema(&s.primary_key), &s.primary_key)
                }
            };
            if s.schema.is_some() && self.children(&s.name).next().is_some() {
                // A parent with a written schema is still sampled for its children.
                let records = self.sample(s, &samples).await?;
                samples.insert(s.name.clone(), records);
            }
            catalog.streams.push(catalog_stream(s, schema));
        }
        Ok(catalog)
    }

    /// The first records of a stream (children: of the first few sampled parents).
    async fn sample(
        &self,
        s: &StreamDef,
        samples: &HashMap<String, Vec<Map<String, Value>>>,
    ) -> anyhow::Result<Vec<Map<String, Value>>> {
        let parents: Vec<Option<Map<String, Value>>> = match &s.parent {
            None => vec![None],
            Some(p) => samples
                .get(&p.stream)
                .map(|rs| {
                    rs.iter()
                        .take(3)
                        .map(|r| Some(sync::context_of(p, r)))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let filter = self.start_value(s)?;
        let mut out = Vec::new();
        for ctx in parents {
            let mut next = Next::First;
            for _ in 0..5 {
                let page = self
                    .fetch(s, ctx.as_ref(), filter.as_ref(), &next, 0)
                    .await?;
                for r in page.records {
                    out.push(sync::shape(s, ctx.as_ref(), r));
                }
                match page.next {
                    Some(n) if out.len() < self.sample_records => next = n,
                    _ => break,
                }
            }
        }
        if out.is_empty() && s.schema.is_none() {
            tracing::warn!(stream = %s.name, "no records to infer a schema from; the stream gets an open schema (write one in the definition or the catalog)");
        }
        Ok(out)
    }

    /// What a run would do.
    ///
    /// # Errors
    /// A catalog stream the definition does not have.
    pub fn plan(&self, catalog: &Catalog, st: &Value) -> anyhow::Result<Vec<PlanStep>> {
        let mut out = Vec::new();
        for c in catalog.selected() {
            let s = self.stream_def(c.tap_stream_id())?;
            let mark = state::bookmark(st, &s.name).cloned();
            let from = Mark::from_value(mark.as_ref());
            out.push(PlanStep {
                stream: s.name.clone(),
                method: if s.replication_key.is_some() {
                    format!(
                        "INCREMENTAL ({})",
                        s.replication_key.as_deref().unwrap_or_default()
                    )
                } else {
                    "FULL_TABLE".into()
                },
                bookmark: mark,
                detail: format!(
                    "{} {}{}{}",
                    s.method,
                    s.path,
                    s.parent
                        .as_ref()
                        .map(|p| format!(" for each {}", p.stream))
                        .unwrap_or_default(),
                    if from.resume.is_some() {
                        ", resuming an interrupted run"
                    } else {
                        ""
                    }
                ),
            });
        }
        Ok(out)
    }

    fn stream_def(&self, name: &str) -> anyhow::Result<&StreamDef> {
        self.def.stream(name).ok_or_else(|| {
            config_error(format!(
                "the catalog has stream {name:?} but {} does not define it (streams: {})",
                self.file,
                self.def
                    .streams
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}

/// Deep-merges `extra` into `base` (objects merge; anything else replaces).
fn merge_into(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                match b.get_mut(&k) {
                    Some(slot) => merge_into(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, e) => *b = e,
    }
}

/// A written schema plus the computed and parent-context properties the engine adds.
fn with_added_fields(mut schema: Value, s: &StreamDef) -> Value {
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        let added = s
            .computed
            .keys()
            .chain(s.parent.iter().flat_map(|p| p.context.keys()));
        for k in added {
            props.entry(k.clone()).or_insert_with(|| json!({}));
        }
    }
    schema
}

/// APIs leave fields out or null them freely: an inferred property is nullable unless a key.
fn nullable_except(mut schema: Value, keys: &[String]) -> Value {
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        for (k, p) in props.iter_mut() {
            if keys.contains(k) {
                continue;
            }
            if let Some(t) = p.get_mut("type") {
                match t {
                    Value::String(one) if one != "null" => *t = json!(["null", one.clone()]),
                    Value::Array(ts) if !ts.contains(&json!("null")) => ts.insert(0, json!("null")),
                    _ => {}
                }
            }
        }
    }
    schema
}

fn catalog_stream(s: &StreamDef, schema: Value) -> CatalogStream {
    let mut meta = Map::new();
    meta.insert(keys::SELECTED_BY_DEFAULT.into(), json!(true));
    meta.insert(keys::TABLE_KEY_PROPERTIES.into(), json!(s.primary_key));
    meta.insert(
        keys::VALID_REPLICATION_KEYS.into(),
        json!(s.replication_key.iter().collect::<Vec<_>>()),
    );
    meta.insert(
        "forced-replication-method".into(),
        json!(if s.replication_key.is_some() {
            "INCREMENTAL"
        } else {
            "FULL_TABLE"
        }),
    );
    if let Some(k) = &s.replication_key {
        meta.insert("replication-key".into(), json!(k));
    }
    if let Some(p) = &s.parent {
        meta.insert("parent-tap-stream-id".into(), json!(p.stream));
    }
    let mut stream = CatalogStream::new(&s.name, schema.clone(), meta);
    if let Some(Value::Object(props)) = schema.get("properties") {
        let automatic: Vec<&String> = s.primary_key.iter().chain(&s.replication_key).collect();
        for name in props.keys() {
            let inclusion = if automatic.contains(&name) {
                "automatic"
            } else {
                "available"
            };
            stream.set_metadata(&["properties", name], keys::INCLUSION, json!(inclusion));
        }
    }
    stream
}

/// The properties a stream's records keep: those of its schema that are selected; `None`
/// keeps every property (an open schema).
fn kept_properties(c: &CatalogStream) -> Option<std::collections::HashSet<String>> {
    let Some(Value::Object(props)) = c.schema().get("properties") else {
        return None;
    };
    Some(
        props
            .keys()
            .filter(|k| c.is_property_selected(k))
            .cloned()
            .collect(),
    )
}
