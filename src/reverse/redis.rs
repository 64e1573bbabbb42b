//! Redis as a reverse-ETL destination: each row becomes a hash (`HSET`) or a JSON string
//! (`SET`) under a key made from a template (`customer:{email}`), with an optional TTL; a batch
//! is written pipelined (all commands, then all replies) and each reply confirms or rejects
//! its row. The RESP protocol is small enough to speak directly.

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::changes::{Change, Op};
use crate::error::config_error;

/// `url`, `key`, `format`, `ttl_seconds`.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    host: String,
    port: u16,
    db: u32,
    password: Option<String>,
    username: Option<String>,
    key: String,
    json: bool,
    ttl: Option<u64>,
}

impl RedisConfig {
    /// Reads and checks the config; `fields` are the mapped destination fields.
    ///
    /// # Errors
    /// A config error for a bad URL, format or key template.
    pub fn parse(v: &Value, fields: &[String], at: &str) -> anyhow::Result<RedisConfig> {
        let url = v
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("redis://127.0.0.1:6379/0");
        let rest = url.strip_prefix("redis://").ok_or_else(|| {
            config_error(format!(
                "{at}: url must look like redis://[user:password@]host:port/db"
            ))
        })?;
        let (auth, hostpart) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (hostport, db) = match hostpart.split_once('/') {
            Some((h, d)) => (h, d),
            None => (hostpart, "0"),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| config_error(format!("{at}: bad port in url")))?,
            ),
            None => (hostport, 6379),
        };
        let db = if db.is_empty() {
            0
        } else {
            db.parse()
                .map_err(|_| config_error(format!("{at}: bad database number in url")))?
        };
        let (username, password) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string())),
                None => (None, Some(a.to_string())),
            },
            None => (None, None),
        };
        if let Some(p) = &password {
            crate::secrets::register(p);
        }
        let key = v
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                config_error(format!(
                    "{at}: redis needs `key`, a template such as customer:{{email}}"
                ))
            })?
            .to_string();
        for name in placeholders(&key) {
            if !fields.contains(&name) {
                return Err(config_error(format!(
                    "{at}: key template {key:?} uses {{{name}}}, which the mapping does not produce (fields: {})",
                    fields.join(", ")
                )));
            }
        }
        let json = match v.get("format").and_then(Value::as_str).unwrap_or("hash") {
            "hash" => false,
            "json" => true,
            other => {
                return Err(config_error(format!(
                    "{at}: format {other:?} is not hash or json"
                )))
            }
        };
        Ok(RedisConfig {
            host: host.to_string(),
            port,
            db,
            password,
            username,
            key,
            json,
            ttl: v.get("ttl_seconds").and_then(Value::as_u64),
        })
    }
}

fn placeholders(t: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(i) = rest.find('{') {
        let Some(j) = rest[i..].find('}') else { break };
        out.push(rest[i + 1..i + j].to_string());
        rest = &rest[i + j + 1..];
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A connection.
#[derive(Debug)]
pub struct Redis {
    cfg: RedisConfig,
    conn: BufReader<TcpStream>,
}

/// A reply.
#[derive(Debug)]
enum Reply {
    Ok,
    Err(String),
}

impl Redis {
    /// Connects (AUTH and SELECT as configured).
    ///
    /// # Errors
    /// Unreachable server or refused credentials.
    pub async fn connect(cfg: RedisConfig) -> anyhow::Result<Redis> {
        let stream = TcpStream::connect((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot connect to Redis at {}:{}: {e}", cfg.host, cfg.port)
            })?;
        let mut r = Redis {
            cfg,
            conn: BufReader::new(stream),
        };
        let mut setup = Vec::new();
        if let Some(p) = r.cfg.password.clone() {
            match r.cfg.username.clone() {
                Some(u) => setup.push(vec!["AUTH".to_string(), u, p]),
                None => setup.push(vec!["AUTH".to_string(), p]),
            }
        }
        if r.cfg.db != 0 {
            setup.push(vec!["SELECT".to_string(), r.cfg.db.to_string()]);
        }
        if !setup.is_empty() {
            for reply in r.pipeline(&setup).await? {
                if let Reply::Err(e) = reply {
                    anyhow::bail!("Redis refused the connection setup: {e}");
                }
            }
        }
        Ok(r)
    }

    fn key_of(&self, c: &Change) -> String {
        let mut k = self.cfg.key.clone();
        for name in placeholders(&self.cfg.key) {
            let v = c
                .fields
                .get(&name)
                .map(text)
                .unwrap_or_else(|| c.key.clone());
            k = k.replace(&format!("{{{name}}}"), &v);
        }
        k
    }

    /// The commands for one row: (commands, how many replies belong to it).
    fn commands(&self, c: &Change, removals_by_key: bool) -> Vec<Vec<String>> {
        let key = if c.op == Op::Remove && removals_by_key {
            // Removed rows carry no fields: the template's placeholders take the key.
            let mut k = self.cfg.key.clone();
            for name in placeholders(&self.cfg.key) {
                k = k.replace(&format!("{{{name}}}"), &c.key);
            }
            k
        } else {
            self.key_of(c)
        };
        match c.op {
            Op::Remove => vec![vec!["DEL".into(), key]],
            _ if self.cfg.json => {
                let mut cmd = vec![
                    "SET".to_string(),
                    key,
                    Value::Object(c.fields.clone()).to_string(),
                ];
                if let Some(t) = self.cfg.ttl {
                    cmd.push("EX".into());
                    cmd.push(t.to_string());
                }
                vec![cmd]
            }
            _ => {
                // Replace the whole hash, so a field that became NULL does not linger.
                let mut hset = vec!["HSET".to_string(), key.clone()];
                for (f, v) in &c.fields {
                    if !v.is_null() {
                        hset.push(f.clone());
                        hset.push(text(v));
                    }
                }
                let mut cmds = vec![vec!["DEL".to_string(), key.clone()]];
                if hset.len() > 2 {
                    cmds.push(hset);
                }
                if let Some(t) = self.cfg.ttl {
                    cmds.push(vec!["EXPIRE".into(), key, t.to_string()]);
                }
                cmds
            }
        }
    }

    /// What would be sent for a batch, for `--dry-run`.
    pub fn describe(&self, batch: &[Change]) -> Vec<String> {
        batch
            .iter()
            .flat_map(|c| self.commands(c, true))
            .map(|cmd| cmd.join(" "))
            .collect()
    }

    /// Writes a batch, pipelined inside MULTI/EXEC per row (a row's commands apply together).
    /// Returns per row: Ok or the error Redis gave.
    ///
    /// # Errors
    /// A lost connection (then nothing of the batch counts as confirmed).
    pub async fn deliver(&mut self, batch: &[Change]) -> anyhow::Result<Vec<Result<(), String>>> {
        let mut all = Vec::new();
        let mut spans = Vec::new();
        for c in batch {
            let cmds = self.commands(c, true);
            let start = all.len();
            all.push(vec!["MULTI".to_string()]);
            all.extend(cmds);
            all.push(vec!["EXEC".to_string()]);
            spans.push((start, all.len()));
        }
        let replies = self.pipeline(&all).await?;
        Ok(spans
            .iter()
            .map(|(a, b)| {
                replies[*a..*b]
                    .iter()
                    .find_map(|r| match r {
                        Reply::Err(e) => Some(Err(e.clone())),
                        Reply::Ok => None,
                    })
                    .unwrap_or(Ok(()))
            })
            .collect())
    }

    async fn pipeline(&mut self, cmds: &[Vec<String>]) -> anyhow::Result<Vec<Reply>> {
        let mut buf = Vec::new();
        for cmd in cmds {
            buf.extend_from_slice(format!("*{}\r\n", cmd.len()).as_bytes());
            for a in cmd {
                buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                buf.extend_from_slice(a.as_bytes());
                buf.extend_from_slice(b"\r\n");
            }
        }
        self.conn
            .get_mut()
            .write_all(&buf)
            .await
            .map_err(|e| anyhow::anyhow!("writing to Redis: {e}"))?;
        let mut out = Vec::with_capacity(cmds.len());
        for _ in cmds {
            out.push(self.read_reply().await?);
        }
        Ok(out)
    }

    async fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        let n = self
            .conn
            .read_line(&mut line)
            .await
            .map_err(|e| anyhow::anyhow!("reading from Redis: {e}"))?;
        if n == 0 {
            anyhow::bail!("Redis closed the connection");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// One reply; nested arrays (EXEC's) are read whole, an error inside makes it an error.
    async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        let line = self.read_line().await?;
        let (tag, rest) = line.split_at(line.len().min(1));
        match tag {
            "+" | ":" => Ok(Reply::Ok),
            "-" => Ok(Reply::Err(rest.to_string())),
            "$" => {
                let n: i64 = rest.parse().unwrap_or(-1);
                if n >= 0 {
                    let mut data = vec![0u8; n as usize + 2];
                    tokio::io::AsyncReadExt::read_exact(&mut self.conn, &mut data)
                        .await
                        .map_err(|e| anyhow::anyhow!("reading from Redis: {e}"))?;
                }
                Ok(Reply::Ok)
            }
            "*" => {
                let n: i64 = rest.parse().unwrap_or(-1);
                let mut err = None;
                for _ in 0..n.max(0) {
                    if let Reply::Err(e) = Box::pin(self.read_reply()).await? {
                        err.get_or_insert(e);
                    }
                }
                if n < 0 {
                    // EXEC aborted (a queued command was refused).
                    return Ok(Reply::Err("transaction aborted".into()));
                }
                Ok(err.map_or(Reply::Ok, Reply::Err))
            }
            _ => anyhow::bail!("Redis sent something that is not RESP: {line:?}"),
        }
    }
}
