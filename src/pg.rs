//! Connecting to PostgreSQL, shared by the Postgres tap and target: the same config keys, the
//! same checks, and errors that name the server but never the password.

use anyhow::Context;
use tokio_postgres::{Client, NoTls};

use crate::error::config_error;

/// Connection settings as both connectors' configs spell them.
#[derive(Debug, Clone, Copy)]
pub struct ConnParams<'a> {
    /// Host.
    pub host: Option<&'a str>,
    /// Port.
    pub port: u16,
    /// User.
    pub user: Option<&'a str>,
    /// Password.
    pub password: Option<&'a str>,
    /// Database.
    pub dbname: Option<&'a str>,
    /// A `postgres://` URL instead of the fields.
    pub url: Option<&'a str>,
    /// `disable`, `allow` or `prefer`.
    pub sslmode: Option<&'a str>,
    /// The session's application_name.
    pub application_name: &'a str,
}

/// Refuses an sslmode that needs TLS, at config time.
///
/// # Errors
/// A config error saying which modes work.
pub fn check_sslmode(who: &str, mode: Option<&str>) -> anyhow::Result<()> {
    match mode {
        None | Some("disable" | "prefer" | "allow") => Ok(()),
        Some(m) => Err(config_error(format!(
            "{who}: sslmode {m:?} needs TLS, which this build does not include yet; use disable or prefer"
        ))),
    }
}

/// Connects and spawns the connection task (as tokio-postgres requires).
///
/// # Errors
/// A config error for an unusable URL or an sslmode that needs TLS; a connection error naming
/// host, port, database and user.
pub async fn connect(
    who: &str,
    p: ConnParams<'_>,
) -> anyhow::Result<(Client, tokio::task::JoinHandle<()>)> {
    check_sslmode(who, p.sslmode)?;
    let mut pg = match p.url {
        Some(u) => u
            .parse::<tokio_postgres::Config>()
            .map_err(|e| config_error(format!("{who}: bad url: {e}")))?,
        None => tokio_postgres::Config::new(),
    };
    if let Some(h) = p.host {
        pg.host(h);
    }
    if p.url.is_none() || p.host.is_some() {
        pg.port(p.port);
    }
    if let Some(u) = p.user {
        pg.user(u);
    }
    if let Some(pw) = p.password {
        pg.password(pw);
    }
    if let Some(d) = p.dbname {
        pg.dbname(d);
    }
    pg.application_name(p.application_name);
    let where_ = format!(
        "{}:{}/{} as {}",
        p.host.unwrap_or("(url)"),
        p.port,
        p.dbname.unwrap_or("(default)"),
        p.user.unwrap_or("(default)")
    );
    let (client, conn) = pg.connect(NoTls).await.with_context(|| {
        format!("cannot connect to Postgres at {where_}; check host, port, user and password")
    })?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::error!(error = %e, "The Postgres connection failed.");
        }
    });
    Ok((client, task))
}
