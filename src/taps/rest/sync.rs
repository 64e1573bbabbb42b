//! Extraction: each root stream page by page, child streams once per parent record, a STATE
//! after every page so an interrupted run resumes at the last page whose records were emitted.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use anyhow::{anyhow, Context};
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::def::ParentDef;
use super::page::{cmp_keys, key_like, max_key, next_page, Mark, Next, Resume};
use super::{kept_properties, Order, RestTap, StreamDef};
use crate::http::excerpt;
use crate::http::select::Path;
use crate::runner::{ConsumerGone, Emitter, SourceOutcome};
use crate::singer::{state, Catalog, Message, Record, RecordMessage, SchemaMessage};

/// One page of records.
pub struct Page {
    /// The records (JSON objects).
    pub records: Vec<Map<String, Value>>,
    /// The page after it.
    pub next: Option<Next>,
    /// The server's `Date`, if it sent one.
    pub date: Option<chrono::DateTime<Utc>>,
}

/// What the catalog selects of a stream.
struct Selected {
    kept: Option<HashSet<String>>,
}

/// The context a parent record gives its children.
pub fn context_of(p: &ParentDef, parent: &Map<String, Value>) -> Map<String, Value> {
    let rec = Value::Object(parent.clone());
    p.context
        .iter()
        .map(|(name, path)| {
            let v = Path::parse(path)
                .ok()
                .and_then(|p| p.get(&rec).cloned())
                .unwrap_or(Value::Null);
            (name.clone(), v)
        })
        .collect()
}

/// A record as emitted: computed properties copied up, the parent's context added.
pub fn shape(
    s: &StreamDef,
    parent: Option<&Map<String, Value>>,
    mut rec: Map<String, Value>,
) -> Map<String, Value> {
    if !s.computed.is_empty() {
        let whole = Value::Object(rec);
        let extra: Vec<(String, Value)> = s
            .computed
            .iter()
            .map(|(name, path)| {
                let v = Path::parse(path)
                    .ok()
                    .and_then(|p| p.get(&whole).cloned())
                    .unwrap_or(Value::Null);
                (name.clone(), v)
            })
            .collect();
        let Value::Object(m) = whole else {
            unreachable!("built from a map just above")
        };
        rec = m;
        rec.extend(extra);
    }
    if let Some(p) = parent {
        for (k, v) in p {
            rec.insert(k.clone(), v.clone());
        }
    }
    rec
}

type Walk<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

impl RestTap {
    /// Fetches and decodes one page.
    pub(super) async fn fetch(
        &self,
        s: &StreamDef,
        parent: Option<&Map<String, Value>>,
        filter: Option<&Value>,
        next: &Next,
        page_no: u64,
    ) -> anyhow::Result<Page> {
        let where_ = || match parent {
            Some(p) => format!(
                "stream {:?} ({}), page {page_no}",
                s.name,
                Value::Object(p.clone())
            ),
            None => format!("stream {:?}, page {page_no}", s.name),
        };
        let req = self.request(s, parent, filter, next)?;
        let resp = self.client.send(&req).await.with_context(where_)?;
        let mut body: Value = serde_json::from_slice(&resp.body).map_err(|e| {
            anyhow!(
                "{}: the response of {} is not JSON ({e}): {}",
                where_(),
                crate::http::masked_url(&resp.url),
                excerpt(&resp.body)
            )
        })?;
        let selected = match &s.records {
            None => body.clone(),
            Some(p) => {
                let path = Path::parse(p).map_err(|e| anyhow!("{}: {e}", where_()))?;
                path.take(&mut body).ok_or_else(|| {
                    anyhow!(
                        "{}: the response has no records at {p} (is `records:` right for this endpoint?): {}",
                        where_(),
                        excerpt(body.to_string().as_bytes())
                    )
                })?
            }
        };
        let values = match selected {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            obj @ Value::Object(_) => vec![obj],
            other => {
                return Err(anyhow!(
                    "{}: the records at {} are {}, not an array of objects",
                    where_(),
                    s.records.as_deref().unwrap_or("$"),
                    excerpt(other.to_string().as_bytes())
                ))
            }
        };
        let next = next_page(self.def.pagination_of(s), next, &resp, &body, &values)
            .map_err(|e| anyhow!("{}: {e}", where_()))?;
        let mut records = Vec::with_capacity(values.len());
        for (i, v) in values.into_iter().enumerate() {
            match v {
                Value::Object(m) => records.push(m),
                other => {
                    return Err(anyhow!(
                        "{}: record {} is not a JSON object: {}",
                        where_(),
                        i + 1,
                        excerpt(other.to_string().as_bytes())
                    ))
                }
            }
        }
        let date = resp
            .header("date")
            .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.with_timezone(&Utc));
        Ok(Page {
            records,
            next,
            date,
        })
    }

    /// Reads the selected streams of `catalog` from `st` on.
    ///
    /// # Errors
    /// [`ConsumerGone`] when the sink stopped; a failing stream (with its children) is reported
    /// in the outcome and the other streams go on.
    pub async fn sync(
        self,
        catalog: Catalog,
        st: Value,
        mut emitter: Emitter,
    ) -> anyhow::Result<SourceOutcome> {
        let mut selected = HashMap::new();
        for c in catalog.selected() {
            self.stream_def(c.tap_stream_id())?;
            selected.insert(
                c.tap_stream_id().to_owned(),
                Selected {
                    kept: kept_properties(c),
                },
            );
            emitter
                .emit(Message::Schema(SchemaMessage {
                    stream: c.tap_stream_id().to_owned(),
                    schema: c.schema().clone(),
                    key_properties: c.key_properties(),
                    bookmark_properties: c.replication_key().map(|k| vec![k.to_owned()]),
                    extra: Map::new(),
                }))
                .await?;
        }
        let mut st = st;
        let mut outcome = SourceOutcome::default();
        let roots: Vec<&StreamDef> = self.roots().collect();
        for root in roots {
            if !self.needed(root, &selected) {
                continue;
            }
            if let Err(e) = self
                .walk(root, None, &selected, &mut st, &mut emitter)
                .await
            {
                if e.is::<ConsumerGone>() {
                    return Err(e);
                }
                let msg = crate::secrets::redact(&format!("{e:#}"));
                tracing::error!(stream = %root.name, "{msg}");
                outcome.failed_streams.push((root.name.clone(), msg));
            }
        }
        if !st.as_object().is_none_or(Map::is_empty) {
            emitter.emit(Message::state(st)).await?;
        }
        emitter.flush().await?;
        Ok(outcome)
    }

    fn needed(&self, s: &StreamDef, selected: &HashMap<String, Selected>) -> bool {
        selected.contains_key(&s.name) || self.children(&s.name).any(|c| self.needed(c, selected))
    }

    /// One stream (or one parent's partition of a child stream), every page.
    fn walk<'a>(
        &'a self,
        s: &'a StreamDef,
        parent: Option<Map<String, Value>>,
        selected: &'a HashMap<String, Selected>,
        st: &'a mut Value,
        emitter: &'a mut Emitter,
    ) -> Walk<'a> {
        Box::pin(async move {
            let sel = selected.get(&s.name);
            // Bookmarks are kept for selected streams only: an unselected parent is read whole
            // each run, so a child whose parent did not change is still read.
            let tracked = sel.is_some();
            let mut mark = if tracked {
                Mark::from_value(load(st, &s.name, parent.as_ref()).as_ref())
            } else {
                Mark::default()
            };
            let resume = mark.resume.take().unwrap_or_default();
            // Pages of an unsorted (or newest-first) stream shift when records change; a run
            // that resumed mid-way may have missed records changed since the query began.
            let unsorted = s.order != Order::Asc && s.incremental.is_some();
            let mut catch_up = unsorted && resume.next.is_some();
            let mut started = resume.started.as_deref().and_then(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .ok()
                    .map(|d| d.with_timezone(&Utc))
            });
            let resumed_max = resume.max.clone();
            let mut filter = match (&s.incremental, tracked) {
                (Some(_), true) => resume
                    .filter
                    .clone()
                    .or_else(|| mark.value.clone())
                    .map_or_else(|| self.start_value(s), |v| Ok(Some(v)))?,
                _ => None,
            };
            let mut next = resume.next.clone().unwrap_or(Next::First);
            let mut max = resume.max.clone().or_else(|| mark.value.clone());
            let kids: Vec<&StreamDef> = self
                .children(&s.name)
                .filter(|c| self.needed(c, selected))
                .collect();
            let stop_at = s.incremental.as_ref().is_some_and(|i| i.stop_at_bookmark);
            let restart_after = s
                .incremental
                .as_ref()
                .and_then(|i| i.restart_after_records)
                .filter(|_| tracked);
            let mut in_query = 0u64;
            let mut page_no = 0u64;
            loop {
                page_no += 1;
                let page = self
                    .fetch(s, parent.as_ref(), filter.as_ref(), &next, page_no)
                    .await?;
                if started.is_none() {
                    started = page.date;
                }
                let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
                let mut stop = false;
                in_query += page.records.len() as u64;
                for raw in page.records {
                    let mut rec = shape(s, parent.as_ref(), raw);
                    let key = s.replication_key.as_ref().and_then(|rk| rec.get(rk));
                    if let Some(v) = key.filter(|v| !v.is_null()) {
                        if filter
                            .as_ref()
                            .is_some_and(|f| cmp_keys(v, f) == Some(Ordering::Less))
                        {
                            // Older than the bookmark: already loaded.
                            stop |= stop_at;
                            continue;
                        }
                        max = max_key(max, v);
                    }
                    let contexts: Vec<(&StreamDef, Map<String, Value>)> = kids
                        .iter()
                        .filter_map(|k| Some((*k, context_of(k.parent.as_ref()?, &rec))))
                        .collect();
                    if let Some(sel) = sel {
                        if let Some(kept) = &sel.kept {
                            rec.retain(|k, _| kept.contains(k));
                        }
                        emitter
                            .emit(Message::Record(RecordMessage {
                                stream: s.name.clone(),
                                record: Record::Map(rec),
                                version: None,
                                time_extracted: Some(now.clone()),
                                extra: Map::new(),
                            }))
                            .await?;
                    }
                    for (kid, ctx) in contexts {
                        self.walk(kid, Some(ctx), selected, st, emitter).await?;
                    }
                }
                let mut next_page = if stop { None } else { page.next };
                if let (Some(limit), Some(_)) = (restart_after, &next_page) {
                    if in_query >= limit {
                        // The API caps one query: ask again from the newest value seen.
                        let advanced = match (&max, &filter) {
                            (Some(m), Some(f)) => cmp_keys(m, f) == Some(Ordering::Greater),
                            (Some(_), None) => true,
                            (None, _) => false,
                        };
                        if !advanced {
                            return Err(anyhow!(
                                "stream {:?}: more than {limit} records share the replication-key value {}; the API cannot page past them",
                                s.name,
                                max.as_ref().map_or_else(|| "null".into(), Value::to_string)
                            ));
                        }
                        filter.clone_from(&max);
                        next_page = Some(Next::First);
                        in_query = 0;
                    }
                }
                if tracked {
                    if next_page.is_none() && catch_up {
                        // Read again what changed since the interrupted query began (or since
                        // the last value it had emitted), then finish as usual.
                        let since = started
                            .map(|t| key_like(t, max.as_ref().or(filter.as_ref())))
                            .or(resumed_max.clone())
                            .or_else(|| filter.clone());
                        if since.is_some() {
                            filter = since;
                            next_page = Some(Next::First);
                            started = None;
                        }
                        catch_up = false;
                    }
                    match &next_page {
                        Some(n) => {
                            if s.order == Order::Asc {
                                mark.value.clone_from(&max);
                            }
                            mark.resume = Some(Resume {
                                next: Some(n.clone()),
                                filter: filter.clone(),
                                max: max.clone(),
                                started: started
                                    .filter(|_| unsorted && *n != Next::First)
                                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
                            });
                        }
                        None => {
                            let mut done = max.clone();
                            if let (true, Some(t), Some(m)) = (unsorted, started, &done) {
                                // Records changed after the query began may be on pages read
                                // before they changed: the next run starts no later than that.
                                let cap = key_like(t, Some(m));
                                if cmp_keys(m, &cap) == Some(Ordering::Greater) {
                                    done = Some(cap);
                                }
                            }
                            if done.is_some() {
                                mark.value = done;
                            }
                            mark.resume = None;
                        }
                    }
                    save(st, s, parent.as_ref(), &mark);
                    emitter.emit(Message::state(st.clone())).await?;
                }
                match next_page {
                    Some(n) => next = n,
                    None => return Ok(()),
                }
            }
        })
    }
}

/// A stream's bookmark, or a child stream's partition for `ctx`.
fn load(st: &Value, stream: &str, ctx: Option<&Map<String, Value>>) -> Option<Value> {
    let b = state::bookmark(st, stream)?;
    match ctx {
        None => Some(b.clone()),
        Some(c) => b
            .get("partitions")?
            .as_array()?
            .iter()
            .find(|p| p.get("context").and_then(Value::as_object) == Some(c))
            .cloned(),
    }
}

fn save(st: &mut Value, s: &StreamDef, ctx: Option<&Map<String, Value>>, mark: &Mark) {
    let key = s.replication_key.as_deref();
    let mut b = state::bookmark(st, &s.name)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    match ctx {
        None => mark.write(key, &mut b),
        Some(c) => {
            let parts = b.entry("partitions").or_insert_with(|| json!([]));
            if !parts.is_array() {
                *parts = json!([]);
            }
            let Value::Array(parts) = parts else {
                unreachable!("made an array just above")
            };
            let slot = parts
                .iter()
                .position(|p| p.get("context").and_then(Value::as_object) == Some(c));
            let mut m = match slot {
                Some(i) => parts[i].as_object().cloned().unwrap_or_default(),
                None => {
                    let mut m = Map::new();
                    m.insert("context".into(), Value::Object(c.clone()));
                    m
                }
            };
            mark.write(key, &mut m);
            match slot {
                Some(i) => parts[i] = Value::Object(m),
                None => parts.push(Value::Object(m)),
            }
        }
    }
    state::set_bookmark(st, &s.name, Some(Value::Object(b)));
}
