//! HTTP APIs as reverse-ETL destinations, each described by a definition file in `targets/`
//! (endpoints for upsert, create, update and delete, batched or one record per request; how
//! per-item errors and created ids appear in a response). Requests go through the shared HTTP
//! client of the REST taps: the same auth schemes, requests-per-second cap, Retry-After and
//! backoff. A batch the API refuses as a whole (a 4xx) is split in halves until the refused
//! rows are found.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::{json, Value};

use super::changes::{Change, Op};
use super::spec::Mode;
use crate::error::config_error;
use crate::http::select::Path as JsonPath;
use crate::http::template::{render_value, Template};
use crate::http::{AuthSpec, Body, Client, HttpError, Method, Policy, Request, Url};
use crate::taps::rest::def::Setting;

fn default_batch() -> usize {
    100
}

fn default_post() -> String {
    "POST".into()
}

/// A destination definition (`targets/<api>.yml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestDef {
    /// Its name.
    pub name: String,
    /// What it writes.
    #[serde(default)]
    pub description: String,
    /// The API documentation followed.
    #[serde(default)]
    pub docs: Option<String>,
    /// Base URL (`base_url` in the config overrides it).
    pub base_url: String,
    /// Config keys.
    #[serde(default)]
    pub settings: Vec<Setting>,
    /// Auth, as the REST taps write it.
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    /// Headers on every request (templates over `config`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Requests per second at most.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Records per request for batched endpoints (the API's limit).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Destination fields every record must have (checked before anything is sent).
    #[serde(default)]
    pub required_fields: Vec<String>,
    /// Create or update by key.
    #[serde(default)]
    pub upsert: Option<Endpoint>,
    /// Create only.
    #[serde(default)]
    pub create: Option<Endpoint>,
    /// Update only.
    #[serde(default)]
    pub update: Option<Endpoint>,
    /// Delete (mirror mode).
    #[serde(default)]
    pub delete: Option<Endpoint>,
}

/// One endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// HTTP method.
    #[serde(default = "default_post")]
    pub method: String,
    /// Path template (`/customers/{{ key }}`); `config`, `key`, `fields`, `dest_id` are known.
    pub path: String,
    /// One record as the API wants it (default: the mapped fields).
    #[serde(default)]
    pub record: Option<Value>,
    /// The body of a batch, with `"{{ records }}"` where the records go. Without it each record
    /// is its own request, with the record as the body (none for DELETE).
    #[serde(default)]
    pub body: Option<Value>,
    /// Where per-item errors are in a successful (2xx/207) response.
    #[serde(default)]
    pub errors: Option<ItemErrors>,
    /// Where created records' ids are, to delete them later by id.
    #[serde(default)]
    pub results: Option<ItemResults>,
}

/// Per-item errors in a response.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemErrors {
    /// The array of errors (`$.errors`).
    pub path: String,
    /// In an error, the key (or array of keys) of the records it is about.
    pub key: String,
    /// In an error, its message.
    pub message: String,
}

/// Created ids in a response.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemResults {
    /// The array of results.
    pub path: String,
    /// In a result, the record's key.
    pub key: String,
    /// In a result, the id the API gave it.
    pub id: String,
}

/// Changes bound for one endpoint: its name, the endpoint, and (position, change) pairs.
type Group<'d, 'c> = (&'static str, &'d Endpoint, Vec<(usize, &'c Change)>);

/// Requests with the positions each carries, and rows refused before sending, with why.
type Built = (Vec<(Request, Vec<usize>)>, Vec<(usize, String)>);

/// A connected destination.
#[derive(Debug)]
pub struct HttpDest {
    def: DestDef,
    client: Client,
    base: Url,
    ctx: Value,
    mode: Mode,
}

impl HttpDest {
    /// Reads the definition and builds the client.
    ///
    /// # Errors
    /// A config error for an unreadable definition, missing settings or endpoints.
    pub fn new(
        file: &crate::definitions::Source,
        config: &Value,
        mode: Mode,
        fields: &[String],
        at: &str,
    ) -> anyhow::Result<HttpDest> {
        let text = file
            .text()
            .map_err(|e| config_error(format!("{at}: {e:#}")))?;
        let def: DestDef =
            serde_yaml_ng::from_str(&text).map_err(|e| config_error(format!("{file}: {e}")))?;
        let cfg = config.as_object().cloned().unwrap_or_default();
        for s in &def.settings {
            if s.secret {
                if let Some(v) = cfg.get(&s.name).and_then(Value::as_str) {
                    crate::secrets::register(v);
                }
            }
            if s.required && !cfg.contains_key(&s.name) {
                return Err(config_error(format!(
                    "{at}: {} needs config key {:?} ({})",
                    file, s.name, s.description
                )));
            }
        }
        for k in cfg.keys() {
            if k != "base_url" && !def.settings.iter().any(|s| &s.name == k) {
                return Err(config_error(format!(
                    "{at}: unknown config key {k:?} for {}; keys: base_url, {}",
                    def.name,
                    def.settings
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        for f in &def.required_fields {
            if !fields.contains(f) {
                return Err(config_error(format!(
                    "{at}: {} requires the field {f:?}; map a column to it (fields: {})",
                    def.name,
                    fields.join(", ")
                )));
            }
        }
        let needed = match mode {
            Mode::Upsert => ("upsert", def.upsert.is_some()),
            Mode::Insert => (
                "create or upsert",
                def.create.is_some() || def.upsert.is_some(),
            ),
            Mode::Update => (
                "update or upsert",
                def.update.is_some() || def.upsert.is_some(),
            ),
            Mode::Mirror => (
                "upsert and delete",
                def.upsert.is_some() && def.delete.is_some(),
            ),
        };
        if !needed.1 {
            return Err(config_error(format!(
                "{at}: {} has no {} endpoint for mode {}",
                def.name,
                needed.0,
                mode.as_str()
            )));
        }
        let base_s = cfg
            .get("base_url")
            .and_then(Value::as_str)
            .unwrap_or(&def.base_url)
            .trim_end_matches('/')
            .to_string();
        let base = Url::parse(&base_s)
            .map_err(|e| config_error(format!("{at}: bad base_url {base_s:?}: {e}")))?;
        let ctx = json!({ "config": Value::Object(cfg) });
        let policy = Policy {
            requests_per_second: def.requests_per_second,
            ..Policy::default()
        };
        let ua = format!("ferry/{}", env!("CARGO_PKG_VERSION"));
        let client = Client::new(def.auth.as_ref(), &ctx, &base, &ua, policy)
            .map_err(|e| config_error(format!("{at}: {e}")))?;
        Ok(HttpDest {
            def,
            client,
            base,
            ctx,
            mode,
        })
    }

    /// Records per batch.
    pub fn batch_size(&self) -> usize {
        self.def.batch_size.max(1)
    }

    /// The endpoint a change goes to, and its name (changes are grouped by name: an upsert and
    /// a delete may share a path and a method).
    fn endpoint(&self, op: Op) -> Option<(&'static str, &Endpoint)> {
        fn pick<'a>(
            name: &'static str,
            e: &'a Option<Endpoint>,
        ) -> Option<(&'static str, &'a Endpoint)> {
            e.as_ref().map(|e| (name, e))
        }
        match (op, self.mode) {
            (Op::Remove, _) => pick("delete", &self.def.delete),
            (Op::Add, Mode::Insert) => {
                pick("create", &self.def.create).or_else(|| pick("upsert", &self.def.upsert))
            }
            (_, Mode::Update) => {
                pick("update", &self.def.update).or_else(|| pick("upsert", &self.def.upsert))
            }
            _ => pick("upsert", &self.def.upsert),
        }
    }

    fn record_ctx(&self, c: &Change) -> Value {
        let mut ctx = self.ctx.clone();
        ctx["key"] = json!(c.key);
        ctx["fields"] = Value::Object(c.fields.clone());
        ctx["dest_id"] = c.dest_id.as_ref().map_or(Value::Null, |d| json!(d));
        ctx
    }

    fn request(&self, ep: &Endpoint, ctx: &Value, body: Option<Value>) -> anyhow::Result<Request> {
        let path = Template::parse(&ep.path)
            .and_then(|t| t.render_path(ctx))
            .map_err(|e| anyhow::anyhow!("{}: path {:?}: {e}", self.def.name, ep.path))?;
        let url = Url::parse(&format!(
            "{}{path}",
            self.base.as_str().trim_end_matches('/')
        ))
        .map_err(|e| anyhow::anyhow!("{}: bad URL for {path:?}: {e}", self.def.name))?;
        let mut headers = Vec::new();
        for (k, v) in &self.def.headers {
            let h = Template::parse(v)
                .and_then(|t| t.render_str(ctx))
                .map_err(|e| anyhow::anyhow!("{}: header {k}: {e}", self.def.name))?;
            headers.push((k.clone(), h));
        }
        Ok(Request {
            method: Method::from_bytes(ep.method.to_uppercase().as_bytes())
                .map_err(|_| anyhow::anyhow!("{}: bad method {:?}", self.def.name, ep.method))?,
            url,
            query: Vec::new(),
            headers,
            body: body.map(Body::Json),
            basic_auth: None,
        })
    }

    fn record_value(&self, ep: &Endpoint, ctx: &Value) -> anyhow::Result<Value> {
        match &ep.record {
            Some(t) => render_value(t, ctx)
                .map_err(|e| anyhow::anyhow!("{}: record template: {e}", self.def.name)),
            None => Ok(ctx["fields"].clone()),
        }
    }

    /// The requests a batch would make, for `--dry-run` (method, URL, body).
    pub fn describe(&self, batch: &[Change]) -> Vec<String> {
        let mut out = Vec::new();
        for (_, ep, items) in self.groups(batch) {
            let (reqs, refused) = self.build(ep, &items);
            for (r, _) in reqs.into_iter().take(3) {
                let body = match &r.body {
                    Some(Body::Json(v)) => v.to_string(),
                    _ => String::new(),
                };
                out.push(format!(
                    "{} {} {}",
                    r.method,
                    crate::http::masked_url(&r.url),
                    crate::http::excerpt(body.as_bytes())
                ));
            }
            for (i, e) in refused.into_iter().take(3) {
                out.push(format!("(row {} would be rejected: {e})", batch[i].key));
            }
        }
        out
    }

    /// Changes grouped by the endpoint they go to (keeping their positions).
    fn groups<'a>(&self, batch: &'a [Change]) -> Vec<Group<'_, 'a>> {
        let mut out: Vec<Group<'_, 'a>> = Vec::new();
        for (i, c) in batch.iter().enumerate() {
            let Some((name, ep)) = self.endpoint(c.op) else {
                continue;
            };
            match out.iter_mut().find(|(n, _, _)| *n == name) {
                Some((_, _, v)) => v.push((i, c)),
                None => out.push((name, ep, vec![(i, c)])),
            }
        }
        out
    }

    /// Requests for a group: one batched request, or one per record, with the positions each
    /// carries; and the rows whose request cannot be made (a template needing a value the row
    /// lacks, e.g. a delete by id for a row no id was recorded for), with why.
    fn build(&self, ep: &Endpoint, items: &[(usize, &Change)]) -> Built {
        let mut out = Vec::new();
        let mut refused = Vec::new();
        match &ep.body {
            Some(body) => {
                let mut records = Vec::new();
                let mut positions = Vec::new();
                for (i, c) in items {
                    let ctx = self.record_ctx(c);
                    match self.record_value(ep, &ctx) {
                        Ok(r) => {
                            records.push(r);
                            positions.push(*i);
                        }
                        Err(e) => refused.push((*i, format!("{e:#}"))),
                    }
                }
                if records.is_empty() {
                    return (out, refused);
                }
                let mut ctx = self.ctx.clone();
                ctx["records"] = Value::Array(records);
                let req = render_value(body, &ctx)
                    .map_err(|e| anyhow::anyhow!("{}: body template: {e}", self.def.name))
                    .and_then(|b| self.request(ep, &ctx, Some(b)));
                match req {
                    Ok(r) => out.push((r, positions)),
                    Err(e) => refused.extend(positions.into_iter().map(|i| (i, format!("{e:#}")))),
                }
            }
            None => {
                for (i, c) in items {
                    let ctx = self.record_ctx(c);
                    let body = if ep.method.eq_ignore_ascii_case("DELETE") {
                        Ok(None)
                    } else {
                        self.record_value(ep, &ctx).map(Some)
                    };
                    match body.and_then(|b| self.request(ep, &ctx, b)) {
                        Ok(r) => out.push((r, vec![*i])),
                        Err(e) => refused.push((*i, format!("{e:#}"))),
                    }
                }
            }
        }
        (out, refused)
    }

    /// Sends a batch. Per row: Ok(id the API gave it, if the definition reads ids) or the
    /// API's error for that row.
    ///
    /// # Errors
    /// The API unreachable or failing after its retries (5xx, timeouts): the run stops and
    /// nothing of this batch counts as delivered.
    pub async fn deliver(
        &self,
        batch: &[Change],
    ) -> anyhow::Result<Vec<Result<Option<String>, String>>> {
        let mut out: Vec<Result<Option<String>, String>> = vec![Ok(None); batch.len()];
        for (_, ep, items) in self.groups(batch) {
            // Halve a refused batch until each refusal is pinned to one row.
            let mut stack: Vec<Vec<(usize, &Change)>> = vec![items];
            while let Some(part) = stack.pop() {
                if part.is_empty() {
                    continue;
                }
                let (requests, refused) = self.build(ep, &part);
                for (i, e) in refused {
                    out[i] = Err(e);
                }
                for (req, positions) in requests {
                    match self.client.send(&req).await {
                        Ok(resp) => {
                            let body: Value =
                                serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
                            self.read_items(ep, &body, batch, &positions, &mut out);
                        }
                        Err(HttpError::Status {
                            status, excerpt, ..
                        }) if (400..500).contains(&status) && status != 401 && status != 403 => {
                            if positions.len() == 1 {
                                out[positions[0]] = Err(format!("HTTP {status}: {excerpt}"));
                            } else {
                                let sub: Vec<(usize, &Change)> =
                                    positions.iter().map(|i| (*i, &batch[*i])).collect();
                                let mid = sub.len() / 2;
                                stack.push(sub[mid..].to_vec());
                                stack.push(sub[..mid].to_vec());
                            }
                        }
                        Err(e) => {
                            return Err(anyhow::Error::new(e).context(format!(
                            "{}: the destination failed; nothing of this batch is marked delivered",
                            self.def.name
                        )))
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn read_items(
        &self,
        ep: &Endpoint,
        body: &Value,
        batch: &[Change],
        positions: &[usize],
        out: &mut [Result<Option<String>, String>],
    ) {
        let by_key: HashMap<&str, usize> = positions
            .iter()
            .map(|i| (batch[*i].key.as_str(), *i))
            .collect();
        if let Some(r) = &ep.results {
            if let (Ok(p), Ok(k), Ok(id)) = (
                JsonPath::parse(&r.path),
                JsonPath::parse(&r.key),
                JsonPath::parse(&r.id),
            ) {
                for item in p.get(body).and_then(Value::as_array).into_iter().flatten() {
                    let key = k.get(item).map(scalar);
                    let dest = id.get(item).map(scalar);
                    if let (Some(key), Some(dest)) = (key, dest) {
                        if let Some(i) = by_key.get(key.as_str()) {
                            out[*i] = Ok(Some(dest));
                        }
                    }
                }
            } else if positions.len() == 1 {
                if let Ok(id) = JsonPath::parse(&r.id) {
                    if let Some(d) = id.get(body) {
                        out[positions[0]] = Ok(Some(scalar(d)));
                    }
                }
            }
        }
        if let Some(e) = &ep.errors {
            let (Ok(p), Ok(k), Ok(m)) = (
                JsonPath::parse(&e.path),
                JsonPath::parse(&e.key),
                JsonPath::parse(&e.message),
            ) else {
                return;
            };
            for item in p.get(body).and_then(Value::as_array).into_iter().flatten() {
                let msg = m.get(item).map_or_else(|| item.to_string(), scalar);
                let keys: Vec<String> = match k.get(item) {
                    Some(Value::Array(a)) => a.iter().map(scalar).collect(),
                    Some(v) => vec![scalar(v)],
                    None => Vec::new(),
                };
                for key in keys {
                    if let Some(i) = by_key.get(key.as_str()) {
                        out[*i] = Err(msg.clone());
                    }
                }
            }
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
