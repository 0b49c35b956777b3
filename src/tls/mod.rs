//! Certificates and TLS: the cluster CA and the certificates it issues
//! (`certs.rs`, for `pgquorum certs`), the server side of both ports with
//! certificates reloaded from their files without a restart (`server.rs`), and the
//! client side every outgoing gRPC connection of the process uses.
//!
//! Who a caller is comes from its client certificate alone: the subject's common
//! name is its name (a member's `name` for a node), the organisational unit its
//! role ([`Role`]). The certificate must chain to the cluster CA; rustls checks the
//! chain, the validity period and the key usage before any byte of a request is read.

mod certs;
mod server;

use std::path::{Path, PathBuf};
use std::sync::RwLock;

pub use certs::{IssueRequest, init_ca, issue, write_secret};
pub use server::{ServerTls, TlsConn};

/// What a certificate allows, from its organisational unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A cluster member: Raft, lease renewals, every admin call.
    Node,
    /// An operator who may change the cluster.
    Admin,
    /// An operator or monitor who may only read.
    Read,
}

impl Role {
    pub fn unit(self) -> &'static str {
        match self {
            Role::Node => "pgquorum-node",
            Role::Admin => "pgquorum-admin",
            Role::Read => "pgquorum-read",
        }
    }

    pub fn from_unit(unit: &str) -> Option<Role> {
        [Role::Node, Role::Admin, Role::Read]
            .into_iter()
            .find(|r| r.unit() == unit)
    }

    /// Whether this role may make calls that change the cluster.
    pub fn may_write(self) -> bool {
        matches!(self, Role::Node | Role::Admin)
    }
}

/// The caller a verified client certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
}

/// What the server knows of a connection; tonic puts it in every request's
/// extensions.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: std::net::SocketAddr,
    /// Some when the port runs TLS and the client presented a certificate of the
    /// cluster CA; None on a plaintext port or without a client certificate.
    pub identity: Option<Identity>,
}

/// The files of one node's or operator's TLS set-up.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The cluster CA's certificate: peers and clients must chain to it.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}; check the path in [tls] (or --ca/--cert/--key)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what}; issue it again with `pgquorum certs issue`")]
    Pem { path: PathBuf, what: &'static str },
    #[error(
        "{path} is readable by other users (mode {mode:o}); a key or password file must not \
         be: run `chmod 600 {path}` (and chown it to the user pgquorum runs as)"
    )]
    Readable { path: PathBuf, mode: u32 },
    #[error("{path} exists; pass --force to replace it (what used it then needs the new one)")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Cert(String),
    #[error("TLS set-up: {0}; check that the certificate and key belong together")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Refuses a key (or password) file that users other than its owner can read.
pub fn check_private(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::Readable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// The first line of a password or token file, which must be private (refused,
/// naming the fix, when others can read it).
pub fn read_secret(path: &Path) -> Result<String, TlsError> {
    check_private(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

/// The identity a DER certificate names: common name and the role of its
/// organisational unit. None when either is missing or unknown.
pub fn identity_of(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let role = subject
        .iter_organizational_unit()
        .find_map(|u| u.as_str().ok().and_then(Role::from_unit))?;
    Some(Identity { name, role })
}

/// Whole days until the first certificate in `pem` expires (negative once it has),
/// counted from `now_unix` (seconds).
pub fn days_left(pem: &[u8], now_unix: i64) -> Option<i64> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some((cert.validity().not_after.timestamp() - now_unix).div_euclid(86_400))
}

/// The TLS settings every outgoing gRPC connection of this process uses: one
/// identity per process (a node's, or the operator's in `ctl`). Set once at
/// start-up and again when the files change; channels made after a change use the
/// new files.
static CLIENT: RwLock<Option<tonic::transport::ClientTlsConfig>> = RwLock::new(None);

/// Loads `paths` for outgoing connections (None: plaintext).
pub fn set_client(paths: Option<&TlsPaths>) -> Result<(), TlsError> {
    let cfg = match paths {
        None => None,
        Some(p) => {
            let ca = read(&p.ca)?;
            let cert = read(&p.cert)?;
            check_private(&p.key)?;
            let key = read(&p.key)?;
            Some(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
        }
    };
    *CLIENT.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    Ok(())
}

/// A bearer token this process sends with every admin call (`ctl --token-file`).
static TOKEN: RwLock<Option<String>> = RwLock::new(None);

/// Reads the token `ctl` sends from `path` (first line; the file must be private).
pub fn set_token_file(path: &Path) -> Result<(), TlsError> {
    let token = read_secret(path)?.trim().to_owned();
    if token.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "token",
        });
    }
    *TOKEN.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
    Ok(())
}

/// Adds the process's token, if any, to an outgoing call.
pub fn add_token<T>(req: &mut tonic::Request<T>) {
    if let Some(t) = TOKEN.read().unwrap_or_else(|p| p.into_inner()).as_deref()
        && let Ok(v) = tonic::metadata::MetadataValue::try_from(format!("Bearer {t}"))
    {
        req.metadata_mut().insert("authorization", v);
    }
}

/// The client TLS settings, if this process uses TLS.
pub fn client() -> Option<tonic::transport::ClientTlsConfig> {
    CLIENT.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// `http://addr` or `https://addr` with the process's TLS settings. With `member`,
/// the server's certificate must name that member (node certificates carry their
/// name as a DNS name), not only the host: on a shared host (or a moved address)
/// another member's certificate does not pass for it.
pub fn endpoint(
    addr: &str,
    member: Option<&str>,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    match client() {
        None => tonic::transport::Endpoint::from_shared(format!("http://{addr}")),
        Some(mut tls) => {
            if let Some(m) = member
                && rustls::pki_types::ServerName::try_from(m).is_ok()
            {
                tls = tls.domain_name(m);
            }
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)
        }
    }
}

/// Outgoing TLS with the CA only (no client certificate): `ctl` without --cert.
pub fn set_client_ca_only(ca: &Path) -> Result<(), TlsError> {
    let ca = read(ca)?;
    *CLIENT.write().unwrap_or_else(|p| p.into_inner()) = Some(
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
    );
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
