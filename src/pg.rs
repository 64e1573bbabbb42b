//! Connecting to PostgreSQL, shared by the Postgres tap and target: the same config keys, the
//! same checks, and errors that name the server but never the password.

use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
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
    /// `disable`, `allow`, `prefer`, `require`, `verify-ca` or `verify-full`.
    pub sslmode: Option<&'a str>,
    /// PEM file of the certificate authority for `verify-ca`/`verify-full` (default: the
    /// public web roots).
    pub sslrootcert: Option<&'a str>,
    /// The session's application_name.
    pub application_name: &'a str,
}

/// Checks an sslmode at config time.
///
/// # Errors
/// A config error naming the modes there are.
pub fn check_sslmode(who: &str, mode: Option<&str>) -> anyhow::Result<()> {
    match mode {
        None | Some("disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full") => Ok(()),
        Some(m) => Err(config_error(format!(
            "{who}: sslmode {m:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        ))),
    }
}

/// Accepts any server certificate (`require`, `prefer`: encrypted, not authenticated, as libpq
/// does) but still checks the handshake signatures.
#[derive(Debug)]
struct NoVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct VerifyCa(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for VerifyCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn tls_config(who: &str, mode: &str, root_cert: Option<&str>) -> anyhow::Result<ClientConfig> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| config_error(format!("{who}: cannot read sslrootcert {path}: {e}")))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| config_error(format!("{who}: sslrootcert {path}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| config_error(format!("{who}: sslrootcert {path}: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(match mode {
        "verify-full" => builder.with_root_certificates(roots).with_no_client_auth(),
        "verify-ca" => {
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(VerifyCa(inner)))
                .with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
    })
}

fn spawn_conn<F>(conn: F) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::error!(error = %e, "The Postgres connection failed.");
        }
    })
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
    let mode = p.sslmode.unwrap_or("prefer");
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
    let hint = || {
        format!("cannot connect to Postgres at {where_} (sslmode {mode}); check host, port, user, password and TLS settings")
    };
    let task = if mode == "disable" {
        pg.ssl_mode(SslMode::Disable);
        let (client, conn) = pg.connect(NoTls).await.with_context(hint)?;
        (client, spawn_conn(conn))
    } else {
        pg.ssl_mode(match mode {
            "allow" | "prefer" => SslMode::Prefer,
            _ => SslMode::Require,
        });
        let tls =
            tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(who, mode, p.sslrootcert)?);
        let (client, conn) = pg.connect(tls).await.with_context(hint)?;
        (client, spawn_conn(conn))
    };
    Ok(task)
}
