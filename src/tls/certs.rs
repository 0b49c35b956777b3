//! `pgquorum certs init` and `certs issue`: a cluster CA and the certificates it
//! signs, as PEM files in one directory. Keys are written 0600 and nothing is
//! replaced without `force`: a replaced CA key strands every certificate it issued.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::{Role, TlsError, check_private, read};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

fn cert_err(e: rcgen::Error) -> TlsError {
    TlsError::Cert(e.to_string())
}

/// Writes `data` to `path` with `mode`, refusing to replace a file unless `force`.
/// Written beside it and renamed, so a reader never sees half a file.
fn write_new(path: &Path, data: &[u8], mode: u32, force: bool) -> Result<(), TlsError> {
    if path.exists() && !force {
        return Err(TlsError::Exists {
            path: path.to_path_buf(),
        });
    }
    let werr = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(werr)?;
    f.write_all(data).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}

/// A secret (password, token) as a file of one line, mode 0600, replaced if there.
pub fn write_secret(path: &Path, secret: &str) -> Result<(), TlsError> {
    write_new(path, format!("{secret}\n").as_bytes(), 0o600, true)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back: hosts whose clocks are a little behind accept it at once.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Creates `dir/ca.crt` and `dir/ca.key` for cluster `cluster`.
pub fn init_ca(dir: &Path, cluster: &str, days: u32, force: bool) -> Result<PathBuf, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    for p in [&cert_path, &key_path] {
        if p.exists() && !force {
            return Err(TlsError::Exists { path: p.clone() });
        }
    }
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("pgquorum CA for {cluster}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(cert_err)?;
    let cert = params.self_signed(&key).map_err(cert_err)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600, force)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644, force)?;
    Ok(cert_path)
}

/// One certificate to issue.
#[derive(Clone, Debug)]
pub struct IssueRequest {
    /// Where the CA is and the new files go.
    pub dir: PathBuf,
    /// The common name: a member's `name`, or an operator's.
    pub name: String,
    /// DNS names and IP addresses the holder serves under (nodes); others connect
    /// to it by these, and TLS checks them.
    pub hosts: Vec<String>,
    pub role: Role,
    pub days: u32,
    pub force: bool,
}

/// Signs `dir/NAME.crt` (with `dir/NAME.key`) by the CA in `dir`.
pub fn issue(req: &IssueRequest) -> Result<(PathBuf, PathBuf), TlsError> {
    if req.name.is_empty() || req.name.contains(['/', '\0']) || req.name.starts_with('.') {
        return Err(TlsError::Cert(format!(
            "{:?} cannot be a certificate name; use the member's name from its config",
            req.name
        )));
    }
    let ca_key_path = req.dir.join(CA_KEY);
    check_private(&ca_key_path)?;
    let ca_key_pem = String::from_utf8_lossy(&read(&ca_key_path)?).into_owned();
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|_| TlsError::Pem {
        path: ca_key_path.clone(),
        what: "private key",
    })?;
    let ca_path = req.dir.join(CA_CERT);
    let ca_pem = String::from_utf8_lossy(&read(&ca_path)?).into_owned();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|_| TlsError::Pem {
        path: ca_path,
        what: "CA certificate",
    })?;
    let (cert_path, key_path) = (
        req.dir.join(format!("{}.crt", req.name)),
        req.dir.join(format!("{}.key", req.name)),
    );
    for p in [&cert_path, &key_path] {
        if p.exists() && !req.force {
            return Err(TlsError::Exists { path: p.clone() });
        }
    }
    let mut sans = req.hosts.clone();
    if req.role == Role::Node && !sans.contains(&req.name) {
        sans.push(req.name.clone());
    }
    let mut params = CertificateParams::new(sans).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, req.name.clone());
    dn.push(DnType::OrganizationalUnitName, req.role.unit());
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match req.role {
        // A node serves (both ports) and is a client of the others.
        Role::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Admin | Role::Read => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, req.days);
    let key = KeyPair::generate().map_err(cert_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600, req.force)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644, req.force)?;
    Ok((cert_path, key_path))
}
