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
