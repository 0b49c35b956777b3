use super::*;

fn issue_in(dir: &Path, name: &str, role: Role) -> (PathBuf, PathBuf) {
    issue(&IssueRequest {
        dir: dir.to_path_buf(),
        name: name.into(),
        hosts: vec!["127.0.0.1".into(), "db1.example".into()],
        role,
        days: 30,
        force: false,
    })
    .unwrap()
}

#[test]
fn issued_certificates_name_their_holder_and_role_and_keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    init_ca(d.path(), "main", 3650, false).unwrap();
    let (cert, key) = issue_in(d.path(), "n1", Role::Node);
    for k in [d.path().join("ca.key"), key.clone()] {
        let mode = std::fs::metadata(&k).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", k.display());
    }
    let pem = std::fs::read(&cert).unwrap();
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        identity_of(&der),
        Some(Identity {
            name: "n1".into(),
            role: Role::Node
        })
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // 30 days from issue, in whole days (29 once a second has passed).
    assert!(
        matches!(days_left(&pem, now), Some(29 | 30)),
        "{:?}",
        days_left(&pem, now)
    );
    assert!(matches!(days_left(&pem, now + 31 * 86_400), Some(-1 | -2)));
    let (admin, _) = issue_in(d.path(), "alice", Role::Admin);
    let pem = std::fs::read(admin).unwrap();
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(identity_of(&der).unwrap().role, Role::Admin);
}

#[test]
fn nothing_is_overwritten_without_force() {
    let d = tempfile::tempdir().unwrap();
    init_ca(d.path(), "main", 3650, false).unwrap();
    let before = std::fs::read(d.path().join("ca.key")).unwrap();
    assert!(matches!(
        init_ca(d.path(), "main", 3650, false),
        Err(TlsError::Exists { .. })
    ));
    assert_eq!(std::fs::read(d.path().join("ca.key")).unwrap(), before);
    issue_in(d.path(), "n1", Role::Node);
    let err = issue(&IssueRequest {
        dir: d.path().to_path_buf(),
        name: "n1".into(),
        hosts: vec![],
        role: Role::Node,
        days: 30,
        force: false,
    })
    .unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    issue(&IssueRequest {
        dir: d.path().to_path_buf(),
        name: "n1".into(),
        hosts: vec![],
        role: Role::Node,
        days: 30,
        force: true,
    })
    .unwrap();
}

#[test]
fn a_key_readable_by_others_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    init_ca(d.path(), "main", 3650, false).unwrap();
    let (cert, key) = issue_in(d.path(), "n1", Role::Node);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let paths = TlsPaths {
        ca: d.path().join("ca.crt"),
        cert,
        key: key.clone(),
    };
    let err = ServerTls::load(paths.clone()).err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("chmod 600") && msg.contains(&key.display().to_string()),
        "{msg}"
    );
    assert!(set_client(Some(&paths)).is_err());
}

/// An admin certificate of the CA in `dir` that expired a day ago (`certs issue`
/// cannot make one: its validity starts now).
fn expired_admin(dir: &Path, name: &str) {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        ca_key,
    )
    .unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    dn.push(rcgen::DnType::OrganizationalUnitName, Role::Admin.unit());
    params.distinguished_name = dn;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// A TLS client of `ServerTls` as rustls sees it: the CA in `ca_dir`, and the
/// client certificate `who` from `dir` (None: no client certificate).
pub(crate) fn client_config(ca_dir: &Path, who: Option<(&Path, &str)>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_dir.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match who {
        None => b.with_no_client_auth(),
        Some((dir, name)) => {
            let chain = CertificateDer::pem_file_iter(dir.join(format!("{name}.crt")))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

/// Connects with `cfg` to a fresh `ServerTls` listener; the identity the server saw,
/// or the handshake error (from either side).
async fn handshake(
    server: &ServerTls,
    cfg: rustls::ClientConfig,
) -> Result<Option<Identity>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
        let mut s = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        // TLS 1.3: the server judges the client certificate after the client's
        // handshake ends; a byte each way shows whether it was taken.
        s.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    });
    let (tcp, remote) = l.accept().await.unwrap();
    let served = match server.accept(tcp, remote).await {
        Ok(mut c) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut b = [0u8; 1];
            let _ = c.read_exact(&mut b).await;
            let _ = c.write_all(b"y").await;
            let _ = c.flush().await;
            Ok(c.info.identity.clone())
        }
        Err(e) => Err(e.to_string()),
    };
    let client = client.await.unwrap();
    match (served, client) {
        (Ok(id), Ok(())) => Ok(id),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

#[tokio::test]
async fn the_server_names_its_callers_and_refuses_foreign_and_expired_certificates() {
    let d = tempfile::tempdir().unwrap();
    init_ca(d.path(), "main", 3650, false).unwrap();
    let (cert, key) = issue_in(d.path(), "n1", Role::Node);
    issue_in(d.path(), "mon", Role::Read);
    expired_admin(d.path(), "old");
    let other = tempfile::tempdir().unwrap();
    init_ca(other.path(), "other", 3650, false).unwrap();
    issue_in(other.path(), "n2", Role::Node);
    let server = ServerTls::load(TlsPaths {
        ca: d.path().join("ca.crt"),
        cert,
        key,
    })
    .unwrap();
    let ok = handshake(&server, client_config(d.path(), Some((d.path(), "mon")))).await;
    assert_eq!(
        ok,
        Ok(Some(Identity {
            name: "mon".into(),
            role: Role::Read
        }))
    );
    // No certificate: encrypted, anonymous (each call then refuses what needs one).
    assert_eq!(
        handshake(&server, client_config(d.path(), None)).await,
        Ok(None)
    );
    let expired = handshake(&server, client_config(d.path(), Some((d.path(), "old")))).await;
    assert!(
        expired.is_err(),
        "an expired certificate was taken: {expired:?}"
    );
    let foreign = handshake(&server, client_config(d.path(), Some((other.path(), "n2")))).await;
    assert!(
        foreign.is_err(),
        "another CA's certificate was taken: {foreign:?}"
    );
    // A client that trusts another CA refuses this server.
    let wrong_ca = handshake(&server, client_config(other.path(), None)).await;
    assert!(wrong_ca.is_err());
}
