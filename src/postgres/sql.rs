//! One cached SQL session over TCP (tokio-postgres), every call bounded by a deadline.
//! A call that times out is cancelled on the server and its connection dropped, so a
//! stuck query never blocks the next one.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{CancelToken, Client, NoTls, Row, SimpleQueryMessage};

use super::PgError;
use crate::config::Credentials;

/// Connecting never takes longer than this, whatever the call's own timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

struct Conn {
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The connection task owns the socket; ending it closes the session.
        self.task.abort();
    }
}

/// Rows of a simple query as text (`None` = SQL NULL).
pub type TextRows = Vec<Vec<Option<String>>>;

pub struct Session {
    host: String,
    port: u16,
    creds: Credentials,
    /// With the cluster's certificates: TLS, the server verified against the CA.
    tls: Option<Arc<rustls::ClientConfig>>,
    conn: Option<Conn>,
}

/// Verifies a PostgreSQL server's certificate chain against the cluster CA but not
/// the name in it, as libpq's `sslmode=verify-ca` (what replication uses): members
/// are reached by their configured address, which their certificate names only if
/// the operator listed it with `certs issue --host`.
#[derive(Debug)]
struct VerifyCa(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for VerifyCa {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        // The chain (CA, validity, usage) is checked before the name: a name
        // mismatch means everything else passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The TLS client configuration of pgquorum's SQL sessions: the cluster CA in `ca`.
pub fn tls_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, PgError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |message: String| PgError::Sql {
        what: format!(
            "reading the cluster CA {} for TLS to PostgreSQL",
            ca.display()
        ),
        message,
        code: None,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
        roots
            .add(c.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| bad(e.to_string()))?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(VerifyCa(inner)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Connects with `tls` by `limit`; the client and the task that drives the
/// connection.
async fn connect<T>(
    cfg: &tokio_postgres::Config,
    tls: T,
    limit: Instant,
    what: impl Fn() -> String,
) -> Result<(Client, tokio::task::JoinHandle<()>), PgError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = tokio::time::timeout_at(limit, cfg.connect(tls))
        .await
        .map_err(|_| PgError::SqlTimeout { what: what() })?
        .map_err(|e| PgError::sql(what(), &e))?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, task))
}

impl Session {
    pub fn new(host: &str, port: u16, creds: Credentials) -> Self {
        Self {
            host: host.to_string(),
            port,
            creds,
            tls: None,
            conn: None,
        }
    }

    /// TLS with `tls` (None: plaintext).
    pub fn with_tls(mut self, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        self.tls = tls;
        self
    }

    /// Forgets the cached connection (after a restart, or when PostgreSQL stops).
    pub fn reset(&mut self) {
        self.conn = None;
    }

    async fn client(&mut self, deadline: Instant) -> Result<&Client, PgError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let password = self.creds.password().map_err(|source| PgError::Password {
                user: self.creds.username.clone(),
                source,
            })?;
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(&self.host)
                .port(self.port)
                .user(&self.creds.username)
                .password(password)
                .dbname("postgres")
                .application_name("pgquorum")
                .connect_timeout(CONNECT_TIMEOUT)
                .ssl_mode(if self.tls.is_some() {
                    SslMode::Require
                } else {
                    SslMode::Disable
                })
                .keepalives(true)
                .keepalives_idle(Duration::from_secs(5));
            let limit = deadline.min(Instant::now() + CONNECT_TIMEOUT);
            let what = || format!("connecting to {}:{}", self.host, self.port);
            let (client, task) = match &self.tls {
                None => connect(&cfg, NoTls, limit, what).await?,
                Some(tls) => {
                    let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                    connect(&cfg, tls, limit, what).await?
                }
            };
            self.conn = Some(Conn { client, task });
        }
        match &self.conn {
            Some(c) => Ok(&c.client),
            None => Err(PgError::SqlTimeout {
                what: "connecting".into(),
            }),
        }
    }

    fn settle<T>(
        &mut self,
        what: &str,
        token: CancelToken,
        res: Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, PgError> {
        match res {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_closed() || self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
                    self.conn = None;
                }
                Err(PgError::sql(what.to_string(), &e))
            }
            Err(_) => {
                // Cancel server-side, in the background: the caller must not wait for it.
                let tls = self.tls.clone();
                tokio::spawn(async move {
                    let cancel = async {
                        match tls {
                            None => token.cancel_query(NoTls).await,
                            Some(t) => {
                                token
                                    .cancel_query(tokio_postgres_rustls::MakeRustlsConnect::new(
                                        (*t).clone(),
                                    ))
                                    .await
                            }
                        }
                    };
                    let _ = tokio::time::timeout(CONNECT_TIMEOUT, cancel).await;
                });
                self.conn = None;
                Err(PgError::SqlTimeout {
                    what: what.to_string(),
                })
            }
        }
    }

    /// Runs `sql` with the simple protocol; all values come back as text.
    pub async fn simple(
        &mut self,
        what: &str,
        sql: &str,
        timeout: Duration,
    ) -> Result<TextRows, PgError> {
        let deadline = Instant::now() + timeout;
        let client = self.client(deadline).await?;
        let token = client.cancel_token();
        let res = tokio::time::timeout_at(deadline, client.simple_query(sql)).await;
        let msgs = self.settle(what, token, res)?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect())
    }

    /// Runs a parameterised statement.
    pub async fn query(
        &mut self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        timeout: Duration,
    ) -> Result<Vec<Row>, PgError> {
        let deadline = Instant::now() + timeout;
        let client = self.client(deadline).await?;
        let token = client.cancel_token();
        let res = tokio::time::timeout_at(deadline, client.query(sql, params)).await;
        self.settle(what, token, res)
    }
}

/// A tokio-postgres error as an operator reads it: the server's message, SQLSTATE,
/// detail and hint, or the chain of causes for connection errors.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(d) = db.detail() {
            s.push_str(&format!("; {d}"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; hint: {h}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(&format!(": {x}"));
        src = x.source();
    }
    s
}
