//! The HTTP client every API connector shares (REST taps now, reverse-ETL destinations next):
//! auth (bearer, basic, API key, OAuth2 with a cached token refreshed on expiry or 401), a
//! requests-per-second cap, and retries (429 honouring `Retry-After`, 5xx, timeouts and dropped
//! connections with exponential backoff and jitter). Errors name the method, the URL with
//! secrets masked, the status and an excerpt of the body.

pub mod select;
pub mod template;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;

pub use reqwest::{Method, Url};

use crate::secrets;
use template::{render_value, Template, TemplateError};

/// An auth scheme as a definition writes it; every string is a template over `config`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// HTTP basic auth.
    Basic {
        /// User name.
        username: String,
        /// Password (may be empty, as for Stripe's key-as-user).
        #[serde(default)]
        password: String,
    },
    /// A key in a header or a query parameter.
    ApiKey {
        /// The header to send it in.
        #[serde(default)]
        header: Option<String>,
        /// The query parameter to send it in.
        #[serde(default)]
        query: Option<String>,
        /// The value (e.g. `token {{ config.key }}`).
        value: String,
    },
    /// OAuth2: an access token fetched from `token_url`, cached until it expires (or a 401).
    Oauth2(OAuth2),
}

/// One auth scheme or alternatives tried in order (the first whose config keys are all given).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AuthSpec {
    /// Alternatives.
    Many(Vec<Auth>),
    /// One scheme.
    One(Auth),
}

/// OAuth2 token flows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2 {
    /// `client_credentials` or `refresh_token`.
    pub grant_type: String,
    /// The token endpoint (absolute, or relative to the base URL).
    pub token_url: String,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// The refresh token (for `refresh_token`).
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Requested scopes.
    #[serde(default)]
    pub scope: Option<String>,
    /// Send the client credentials as HTTP basic auth instead of in the form body.
    #[serde(default)]
    pub client_auth_basic: bool,
}

/// An auth scheme with its values filled in.
#[derive(Debug, Clone)]
enum Credentials {
    None,
    Bearer(String),
    Basic(String, String),
    Header(String, String),
    Query(String, String),
    OAuth2 {
        token_url: Url,
        form: Vec<(String, String)>,
        basic: Option<(String, String)>,
    },
}

fn render_secret(t: &str, ctx: &Value) -> Result<String, TemplateError> {
    let s = Template::parse(t)?.render_str(ctx)?;
    secrets::register(&s);
    Ok(s)
}

impl AuthSpec {
    fn resolve(&self, ctx: &Value, base: &Url) -> Result<Credentials, String> {
        let alts: &[Auth] = match self {
            AuthSpec::Many(v) => v,
            AuthSpec::One(a) => std::slice::from_ref(a),
        };
        let mut missing = Vec::new();
        for a in alts {
            match a.resolve(ctx, base) {
                Ok(c) => return Ok(c),
                Err(TemplateError::Missing(k)) => missing.push(k),
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!(
            "no credentials: set {} in the tap config",
            missing.join(" or ")
        ))
    }
}

impl Auth {
    fn resolve(&self, ctx: &Value, base: &Url) -> Result<Credentials, TemplateError> {
        Ok(match self {
            Auth::Bearer(t) => Credentials::Bearer(render_secret(t, ctx)?),
            Auth::Basic { username, password } => {
                Credentials::Basic(render_secret(username, ctx)?, render_secret(password, ctx)?)
            }
            Auth::ApiKey {
                header,
                query,
                value,
            } => {
                let v = render_secret(value, ctx)?;
                match (header, query) {
                    (Some(h), None) => Credentials::Header(h.clone(), v),
                    (None, Some(q)) => Credentials::Query(q.clone(), v),
                    _ => {
                        return Err(TemplateError::Invalid(
                            "api_key auth needs one of `header` or `query`".into(),
                        ))
                    }
                }
            }
            Auth::Oauth2(o) => {
                let token_url = base
                    .join(&Template::parse(&o.token_url)?.render_str(ctx)?)
                    .map_err(|e| TemplateError::Invalid(format!("token_url: {e}")))?;
                let id = render_secret(&o.client_id, ctx)?;
                let secret = render_secret(&o.client_secret, ctx)?;
                let mut form = vec![("grant_type".to_owned(), o.grant_type.clone())];
                match o.grant_type.as_str() {
                    "client_credentials" => {}
                    "refresh_token" => {
                        let t = o.refresh_token.as_deref().ok_or_else(|| {
                            TemplateError::Invalid(
                                "refresh_token grant needs `refresh_token`".into(),
                            )
                        })?;
                        form.push(("refresh_token".into(), render_secret(t, ctx)?));
                    }
                    g => {
                        return Err(TemplateError::Invalid(format!(
                            "oauth2 grant_type {g:?}: use client_credentials or refresh_token"
                        )))
                    }
                }
                if let Some(s) = &o.scope {
                    form.push(("scope".into(), Template::parse(s)?.render_str(ctx)?));
                }
                let basic = if o.client_auth_basic {
                    Some((id, secret))
                } else {
                    form.push(("client_id".into(), id));
                    form.push(("client_secret".into(), secret));
                    None
                };
                Credentials::OAuth2 {
                    token_url,
                    form,
                    basic,
                }
            }
        })
    }
}

/// Limits and retry policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Requests per second at most (None: no cap).
    pub requests_per_second: Option<f64>,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first backoff; doubled per retry, with jitter.
    pub backoff_base: Duration,
    /// The longest backoff.
    pub backoff_max: Duration,
    /// The longest `Retry-After` (or rate-limit reset) ferry waits for; longer is an error.
    pub max_wait: Duration,
    /// Per-request timeout (connect to the end of the body).
    pub timeout: Duration,
    /// `(remaining, reset)` rate-limit header names.
    pub rate_limit_headers: Option<(String, String)>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            requests_per_second: None,
            max_retries: 8,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            max_wait: Duration::from_secs(900),
            timeout: Duration::from_secs(60),
            rate_limit_headers: None,
        }
    }
}

/// A request.
#[derive(Debug, Clone)]
pub struct Request {
    /// GET, POST, …
    pub method: Method,
    /// The URL, with any query it already has.
    pub url: Url,
    /// Query parameters appended to the URL.
    pub query: Vec<(String, String)>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Option<Body>,
    /// HTTP basic auth for this request alone (an OAuth2 token request's client auth).
    pub basic_auth: Option<(String, String)>,
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    /// JSON.
    Json(Value),
    /// `application/x-www-form-urlencoded`.
    Form(Vec<(String, String)>),
}

/// A response whose body has been read.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body.
    pub body: bytes::Bytes,
    /// The URL requested (with the query).
    pub url: Url,
}

impl Response {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request that failed for good.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The server answered with an error status (after any retries).
    #[error("{method} {url} returned HTTP {status}{after}: {excerpt}")]
    Status {
        /// Method.
        method: Method,
        /// URL, secrets masked.
        url: String,
        /// Status code.
        status: u16,
        /// ` after N attempts` when retried.
        after: String,
        /// The start of the body.
        excerpt: String,
    },
    /// No response (connection refused or dropped, timeout) after every retry.
    #[error("{method} {url} failed after {attempts} attempt(s): {reason}")]
    Transport {
        /// Method.
        method: Method,
        /// URL, secrets masked.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// What went wrong last.
        reason: String,
    },
    /// The server asked for a wait longer than the configured limit.
    #[error("{method} {url}: the server asked to wait {secs} s, more than max_retry_wait_seconds ({limit} s); run again later or raise the limit")]
    WaitTooLong {
        /// Method.
        method: Method,
        /// URL, secrets masked.
        url: String,
        /// Asked wait.
        secs: u64,
        /// The limit.
        limit: u64,
    },
    /// Auth could not be set up or a token could not be fetched.
    #[error("auth: {0}")]
    Auth(String),
}

impl HttpError {
    /// The status code, for a status error.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A URL as it may be shown: registered secrets and values of secret-looking query parameters
/// masked.
pub fn masked_url(url: &Url) -> String {
    let mut u = url.clone();
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if secrets::is_secret_key(&k) || k.eq_ignore_ascii_case("key") {
                    secrets::MASK.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    if u.password().is_some() {
        let _ = u.set_password(Some(secrets::MASK));
    }
    secrets::redact(u.as_str())
}

/// The start of a body for an error message, secrets masked.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let t = text.trim();
    let cut: String = t.chars().take(300).collect();
    let more = if cut.len() < t.len() { "…" } else { "" };
    secrets::redact(&format!("{cut}{more}"))
}

/// The shared client.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    creds: Credentials,
    policy: Policy,
    next_slot: Mutex<Instant>,
    token: Mutex<Option<(String, Option<Instant>)>>,
    seed: AtomicU64,
}

impl Client {
    /// A client for one API: auth resolved against `ctx` (`{"config": …}`).
    ///
    /// # Errors
    /// Missing credentials (naming the config keys) or a malformed auth section.
    pub fn new(
        auth: Option<&AuthSpec>,
        ctx: &Value,
        base: &Url,
        user_agent: &str,
        policy: Policy,
    ) -> Result<Client, HttpError> {
        let creds = match auth {
            Some(a) => a.resolve(ctx, base).map_err(HttpError::Auth)?,
            None => Credentials::None,
        };
        let http = reqwest::Client::builder()
            .user_agent(user_agent)
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout.min(Duration::from_secs(30)))
            .pool_max_idle_per_host(4)
            .build()
            .map_err(|e| HttpError::Auth(format!("cannot build the HTTP client: {e}")))?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        Ok(Client {
            http,
            creds,
            policy,
            next_slot: Mutex::new(Instant::now()),
            token: Mutex::new(None),
            seed: AtomicU64::new(seed),
        })
    }

    /// Sends a request with auth, pacing and retries, and reads the whole body.
    ///
    /// # Errors
    /// [`HttpError`]: a non-retryable status, retries exhausted, or auth failing.
    pub async fn send(&self, req: &Request) -> Result<Response, HttpError> {
        let mut refreshed = false;
        loop {
            let bearer = match &self.creds {
                Credentials::OAuth2 { .. } => Some(self.access_token().await?),
                _ => None,
            };
            match self.with_retries(req, bearer.as_deref(), true).await {
                Err(HttpError::Status { status: 401, .. }) if bearer.is_some() && !refreshed => {
                    // The token was revoked or expired early: fetch a new one, once.
                    *self.token.lock().await = None;
                    refreshed = true;
                }
                r => return r,
            }
        }
    }

    async fn access_token(&self) -> Result<String, HttpError> {
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if until.is_none_or(|u| Instant::now() < u) {
                return Ok(t.clone());
            }
        }
        let Credentials::OAuth2 {
            token_url,
            form,
            basic,
        } = &self.creds
        else {
            return Err(HttpError::Auth("not an OAuth2 client".into()));
        };
        let req = Request {
            method: Method::POST,
            url: token_url.clone(),
            query: Vec::new(),
            headers: Vec::new(),
            body: Some(Body::Form(form.clone())),
            basic_auth: basic.clone(),
        };
        let resp = self.with_retries(&req, None, false).await?;
        let v: Value = serde_json::from_slice(&resp.body).map_err(|_| {
            HttpError::Auth(format!(
                "the token endpoint {} did not return JSON: {}",
                masked_url(token_url),
                excerpt(&resp.body)
            ))
        })?;
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                HttpError::Auth(format!(
                    "the token endpoint {} returned no access_token",
                    masked_url(token_url)
                ))
            })?
            .to_owned();
        secrets::register(&token);
        // Refresh a little early, so a token does not expire between check and use.
        let until = v
            .get("expires_in")
            .and_then(|e| e.as_f64().or_else(|| e.as_str()?.parse().ok()))
            .map(|s| Instant::now() + Duration::from_secs_f64((s * 0.9 - 5.0).max(0.0)));
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    async fn pace(&self) {
        let Some(rps) = self.policy.requests_per_second.filter(|r| *r > 0.0) else {
            return;
        };
        let at = {
            let mut next = self.next_slot.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + Duration::from_secs_f64(1.0 / rps);
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }

    fn jitter(&self, d: Duration) -> Duration {
        // xorshift: jitter needs spread, not cryptographic quality.
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::Relaxed);
        let frac = (x % 1000) as f64 / 1000.0;
        d.mul_f64(0.5 + frac / 2.0)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let d = self
            .policy
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16));
        self.jitter(d.min(self.policy.backoff_max))
    }

    /// How long a response asks to wait: `Retry-After` (seconds or an HTTP date), or a
    /// rate-limit reset when no requests remain.
    fn asked_wait(&self, resp: &reqwest::Response) -> Option<Duration> {
        let h = resp.headers();
        if let Some(v) = h.get("retry-after").and_then(|v| v.to_str().ok()) {
            let v = v.trim();
            if let Ok(s) = v.parse::<f64>() {
                return Some(Duration::from_secs_f64(s.max(0.0)));
            }
            if let Ok(t) = chrono::DateTime::parse_from_rfc2822(v) {
                let secs = (t.timestamp() - chrono::Utc::now().timestamp()).max(0);
                return Some(Duration::from_secs(secs as u64));
            }
        }
        let (rem, reset) = self.policy.rate_limit_headers.as_ref()?;
        let remaining = h
            .get(rem.as_str())?
            .to_str()
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()?;
        if remaining > 0 {
            return None;
        }
        let reset = h
            .get(reset.as_str())?
            .to_str()
            .ok()?
            .trim()
            .parse::<i64>()
            .ok()?;
        let secs = (reset - chrono::Utc::now().timestamp()).max(0) + 1;
        Some(Duration::from_secs(secs as u64))
    }

    async fn with_retries(
        &self,
        req: &Request,
        bearer: Option<&str>,
        use_creds: bool,
    ) -> Result<Response, HttpError> {
        let mut url = req.url.clone();
        if !req.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&req.query);
        }
        if let (true, Credentials::Query(k, v)) = (use_creds, &self.creds) {
            url.query_pairs_mut().append_pair(k, v);
        }
        let mut attempt: u32 = 0;
        loop {
            self.pace().await;
            let mut b = self.http.request(req.method.clone(), url.clone());
            for (k, v) in &req.headers {
                b = b.header(k, v);
            }
            if use_creds {
                b = match (&self.creds, bearer) {
                    (_, Some(t)) => b.bearer_auth(t),
                    (Credentials::Bearer(t), None) => b.bearer_auth(t),
                    (Credentials::Basic(u, p), _) => b.basic_auth(u, Some(p)),
                    (Credentials::Header(k, v), _) => b.header(k, v),
                    _ => b,
                };
            }
            if let Some((u, p)) = &req.basic_auth {
                b = b.basic_auth(u, Some(p));
            }
            b = match &req.body {
                Some(Body::Json(v)) => b.json(v),
                Some(Body::Form(pairs)) => b.form(pairs),
                None => b,
            };
            let outcome = match b.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let wait = self.asked_wait(&resp);
                    let headers = resp.headers().clone();
                    match resp.bytes().await {
                        Ok(body) => Ok((status, wait, headers, body)),
                        Err(e) => Err(describe(&e)),
                    }
                }
                Err(e) => Err(describe(&e)),
            };
            let show = || masked_url(&url);
            match outcome {
                Ok((status, _, headers, body)) if (200..300).contains(&status) => {
                    return Ok(Response {
                        status,
                        headers,
                        body,
                        url,
                    })
                }
                Ok((status, wait, _, body)) => {
                    let retryable = matches!(status, 408 | 425 | 429 | 500..=599)
                        || (status == 403 && wait.is_some());
                    if !retryable || attempt >= self.policy.max_retries {
                        return Err(HttpError::Status {
                            method: req.method.clone(),
                            url: show(),
                            status,
                            after: if attempt > 0 {
                                format!(" after {} attempts", attempt + 1)
                            } else {
                                String::new()
                            },
                            excerpt: excerpt(&body),
                        });
                    }
                    let d = match wait {
                        Some(w) if w > self.policy.max_wait => {
                            return Err(HttpError::WaitTooLong {
                                method: req.method.clone(),
                                url: show(),
                                secs: w.as_secs(),
                                limit: self.policy.max_wait.as_secs(),
                            })
                        }
                        Some(w) => w,
                        None => self.backoff(attempt),
                    };
                    tracing::warn!(status, url = %show(), wait_ms = d.as_millis() as u64, attempt = attempt + 1, "HTTP {status}; retrying");
                    tokio::time::sleep(d).await;
                }
                Err(reason) => {
                    if attempt >= self.policy.max_retries {
                        return Err(HttpError::Transport {
                            method: req.method.clone(),
                            url: show(),
                            attempts: attempt + 1,
                            reason,
                        });
                    }
                    let d = self.backoff(attempt);
                    tracing::warn!(url = %show(), %reason, wait_ms = d.as_millis() as u64, attempt = attempt + 1, "request failed; retrying");
                    tokio::time::sleep(d).await;
                }
            }
            attempt += 1;
        }
    }
}

/// A transport error in words, with its cause chain (reqwest's top line alone says little).
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "the connection failed".to_owned()
    };
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    secrets::redact(&s)
}

/// Renders a map of templated values to query pairs; `None` values and nulls are left out.
///
/// # Errors
/// A template naming a missing path.
pub fn render_pairs<'a>(
    items: impl IntoIterator<Item = (&'a String, &'a Value)>,
    ctx: &Value,
) -> Result<Vec<(String, String)>, TemplateError> {
    let mut out = Vec::new();
    for (k, v) in items {
        match render_value(v, ctx)? {
            Value::Null => {}
            Value::String(s) => out.push((k.clone(), s)),
            Value::Array(items) => {
                // Repeated parameters (`properties=a&properties=b`).
                for i in items {
                    out.push((
                        k.clone(),
                        i.as_str().map_or_else(|| i.to_string(), str::to_owned),
                    ));
                }
            }
            other => out.push((k.clone(), other.to_string())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_are_shown_without_secrets() {
        secrets::register("sk_live_supersecret");
        let u = Url::parse(
            "https://api.x.com/v1/a?api_key=abc123&token=zzz&page=2&q=sk_live_supersecret",
        )
        .unwrap();
        let m = masked_url(&u);
        assert!(
            !m.contains("abc123") && !m.contains("zzz") && !m.contains("supersecret"),
            "{m}"
        );
        assert!(m.contains("page=2"), "{m}");
    }

    #[test]
    fn auth_alternatives_pick_the_first_configured() {
        let spec: AuthSpec = serde_yaml_ng::from_str(
            "- bearer: '{{ config.access_token }}'\n- oauth2: {grant_type: refresh_token, token_url: /oauth/v1/token, client_id: '{{ config.client_id }}', client_secret: '{{ config.client_secret }}', refresh_token: '{{ config.refresh_token }}'}\n",
        )
        .unwrap();
        let base = Url::parse("https://api.hubapi.com").unwrap();
        let c = spec
            .resolve(
                &json!({"config": {"client_id": "i", "client_secret": "s", "refresh_token": "r"}}),
                &base,
            )
            .unwrap();
        match c {
            Credentials::OAuth2 {
                token_url, form, ..
            } => {
                assert_eq!(token_url.as_str(), "https://api.hubapi.com/oauth/v1/token");
                assert!(form.contains(&("refresh_token".into(), "r".into())));
            }
            other => panic!("{other:?}"),
        }
        let err = spec.resolve(&json!({"config": {}}), &base).unwrap_err();
        assert!(
            err.contains("config.access_token or config.client_id"),
            "{err}"
        );
    }

    #[test]
    fn query_pairs_repeat_arrays_and_skip_nulls() {
        let mut m = std::collections::BTreeMap::new();
        m.insert("a".to_owned(), json!(["x", "y"]));
        m.insert("b".to_owned(), json!(null));
        m.insert("c".to_owned(), json!(100));
        let p = render_pairs(&m, &json!({})).unwrap();
        assert_eq!(
            p,
            vec![
                ("a".into(), "x".into()),
                ("a".into(), "y".into()),
                ("c".into(), "100".into())
            ]
        );
    }
}
