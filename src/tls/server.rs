//! The server side of TLS for both ports: a rustls configuration rebuilt from the
//! files whenever they change (certificate rotation without a restart), a client
//! certificate verified against the cluster CA when one is presented, and the
//! verified identity handed to the handlers with the connection.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;

use super::{ConnInfo, TlsError, TlsPaths, check_private, days_left, identity_of, read};

/// Days to expiry below which a node warns at every check.
const WARN_DAYS: i64 = 30;

pub struct ServerTls {
    paths: TlsPaths,
    current: RwLock<Loaded>,
}

struct Loaded {
    acceptor: TlsAcceptor,
    stamp: Vec<Option<SystemTime>>,
    days_left: Option<i64>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn stamps(p: &TlsPaths) -> Vec<Option<SystemTime>> {
    [&p.ca, &p.cert, &p.key]
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn load(p: &TlsPaths) -> Result<Loaded, TlsError> {
    let stamp = stamps(p);
    let ca_pem = read(&p.ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca_pem) {
        let c = c.map_err(|_| TlsError::Pem {
            path: p.ca.clone(),
            what: "CA certificate",
        })?;
        roots
            .add(c)
            .map_err(|e| TlsError::Config(format!("{}: {e}", p.ca.display())))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem {
            path: p.ca.clone(),
            what: "CA certificate",
        });
    }
    let cert_pem = read(&p.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem {
            path: p.cert.clone(),
            what: "certificate",
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: p.cert.clone(),
            what: "certificate",
        });
    }
    check_private(&p.key)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&p.key)?).map_err(|_| TlsError::Pem {
        path: p.key.clone(),
        what: "private key",
    })?;
    // A client certificate is optional at the TLS layer (an operator may come with
    // a token, a load balancer with nothing for the health checks); each call then
    // checks the identity it needs.
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded {
        acceptor: TlsAcceptor::from(Arc::new(cfg)),
        stamp,
        days_left: days_left(&cert_pem, now_unix()),
    })
}

impl ServerTls {
    pub fn load(paths: TlsPaths) -> Result<Arc<Self>, TlsError> {
        let loaded = load(&paths)?;
        Ok(Arc::new(Self {
            paths,
            current: RwLock::new(loaded),
        }))
    }

    /// Days until this node's certificate expires.
    pub fn days_left(&self) -> Option<i64> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .days_left
    }

    /// Rebuilds the configuration if a file changed; a broken new set of files is
    /// logged and the old one kept. Returns whether it reloaded.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.paths);
        if now == self.current.read().unwrap_or_else(|p| p.into_inner()).stamp {
            return false;
        }
        match load(&self.paths) {
            Ok(l) => {
                tracing::info!(cert = %self.paths.cert.display(), days_left = l.days_left, "TLS files changed: reloaded");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = l;
                if let Err(e) = super::set_client(Some(&self.paths)) {
                    tracing::warn!(error = %e, "TLS files changed: outgoing connections keep the old ones");
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS files changed but cannot be used; still serving the previous ones");
                // Not retried until the files change again.
                self.current
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .stamp = now;
                false
            }
        }
    }

    /// Checks the files every `every` until `stop`, and warns while the
    /// certificate expires within [`WARN_DAYS`].
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut last_warn: Option<tokio::time::Instant> = None;
        loop {
            self.reload_if_changed();
            if let Some(d) = self.days_left()
                && d < WARN_DAYS
                && last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600))
            {
                last_warn = Some(tokio::time::Instant::now());
                tracing::warn!(
                    days_left = d,
                    cert = %self.paths.cert.display(),
                    "this node's certificate expires soon: issue a new one with `pgquorum certs \
                     issue NAME --force` and copy it over the old files (reloaded without a restart)"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// The TLS handshake on an accepted connection, and who the client is.
    pub async fn accept<IO>(&self, io: IO, remote: std::net::SocketAddr) -> io::Result<TlsConn<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .acceptor
            .clone();
        let tls = acceptor.accept(io).await?;
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| identity_of(c));
        Ok(TlsConn {
            tls,
            info: ConnInfo { remote, identity },
        })
    }
}

/// A connection after its TLS handshake.
pub struct TlsConn<IO> {
    tls: tokio_rustls::server::TlsStream<IO>,
    pub info: ConnInfo,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}
