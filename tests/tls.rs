//! A cluster with TLS between the nodes and for the admin API, set up with
//! `pgquorum certs` as the README says: admin and read-only operators, callers
//! without a certificate, impostor members (another CA; the right CA but another
//! member's certificate), garbage on the TLS port, and a certificate replaced
//! while the node runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{
    BIN, MemberSpec, NodeSpec, Proc, free_ports, poll_until, spawn_node, unique_cluster_name,
};

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run pgquorum")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct TlsCluster {
    tmp: tempfile::TempDir,
    certs: PathBuf,
    members: Vec<MemberSpec>,
    name: String,
    procs: Vec<Option<Proc>>,
}

impl TlsCluster {
    fn node_dir(&self, id: u64) -> PathBuf {
        self.tmp.path().join(format!("n{id}"))
    }

    fn log(&self, id: u64) -> PathBuf {
        self.node_dir(id).join("node.log")
    }

    fn logs(&self) -> String {
        (1..=3)
            .map(|id| format!("----- n{id} -----\n{}", common::tail(&self.log(id), 40)))
            .collect()
    }

    /// Writes node `id`'s config with the given certificate files and starts it.
    fn start_node(&mut self, id: u64, ca: &Path, cert: &Path, key: &Path, data: &str) {
        let dir = self.node_dir(id);
        std::fs::create_dir_all(&dir).unwrap();
        let spec = NodeSpec {
            cluster_name: self.name.clone(),
            node_id: id,
            name: format!("n{id}"),
            listen_addr: self.members[id as usize - 1].addr.clone(),
            data_dir: dir.join(data),
            join: false,
            initial_cluster: self.members.clone(),
        };
        let (admin_tok, read_tok) = (
            self.certs.join("admin.token"),
            self.certs.join("read.token"),
        );
        let toml = spec.to_toml().replace(
            "insecure = true\n",
            &format!(
                "tls = {{ ca = {ca:?}, cert = {cert:?}, key = {key:?}, \
                 admin_token_file = {admin_tok:?}, read_token_file = {read_tok:?} }}\n"
            ),
        );
        let config = dir.join("node.toml");
        std::fs::write(&config, toml).unwrap();
        self.procs[id as usize - 1] = Some(Proc::new(spawn_node(&config, &self.log(id))));
    }

    fn own(&self, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        (
            self.certs.join("ca.crt"),
            self.certs.join(format!("{name}.crt")),
            self.certs.join(format!("{name}.key")),
        )
    }

    fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `pgquorum ctl` as operator `who` (None: the CA only, no client certificate).
    fn ctl(&self, who: Option<&str>, args: &[&str]) -> Output {
        self.ctl_via(&self.endpoints(), who, args)
    }

    /// [`TlsCluster::ctl`] to the members at `endpoints` only.
    fn ctl_via(&self, endpoints: &str, who: Option<&str>, args: &[&str]) -> Output {
        let ca = self.certs.join("ca.crt");
        let mut cmd = Command::new(BIN);
        cmd.arg("ctl")
            .arg("--endpoints")
            .arg(endpoints)
            .arg("--ca")
            .arg(&ca);
        if let Some(w) = who {
            cmd.arg("--cert")
                .arg(self.certs.join(format!("{w}.crt")))
                .arg("--key")
                .arg(self.certs.join(format!("{w}.key")));
        }
        cmd.args(args).env("NO_COLOR", "1").output().expect("ctl")
    }

    fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(Some("alice"), args);
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// (leader id, term) from `ctl status` on the member at `id`.
    fn leader_and_term(&self) -> Option<(u64, u64)> {
        let out = self.ctl(Some("alice"), &["--output", "json", "status"]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let leader = v["leader_id"].as_u64().filter(|l| *l != 0)?;
        Some((leader, v["term"].as_u64()?))
    }

    async fn wait_leader(&self) -> (u64, u64) {
        match poll_until(
            "a Raft leader over TLS",
            Duration::from_secs(30),
            async || {
                self.leader_and_term()
                    .ok_or_else(|| anyhow::anyhow!("no leader yet"))
            },
        )
        .await
        {
            Ok(v) => v,
            Err(m) => panic!("{m}\n{}", self.logs()),
        }
    }
}

async fn start() -> TlsCluster {
    let tmp = tempfile::Builder::new()
        .prefix("pgquorum-tls-")
        .tempdir()
        .unwrap();
    let certs = tmp.path().join("certs");
    let c = certs.to_str().unwrap();
    ok(&["certs", "init", "--dir", c, "--cluster", "t"]);
    for n in ["n1", "n2", "n3"] {
        ok(&["certs", "issue", n, "--host", "127.0.0.1", "--dir", c]);
    }
    ok(&["certs", "issue", "alice", "--role", "admin", "--dir", c]);
    ok(&["certs", "issue", "mon", "--role", "read", "--dir", c]);
    for (f, t) in [
        ("admin.token", "test-admin-token"),
        ("read.token", "test-read-token"),
    ] {
        let p = certs.join(f);
        std::fs::write(&p, format!("{t}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let ports = free_ports(3);
    let members: Vec<MemberSpec> = (1..=3)
        .map(|id| MemberSpec {
            id,
            name: format!("n{id}"),
            addr: format!("127.0.0.1:{}", ports[id as usize - 1]),
        })
        .collect();
    let mut cluster = TlsCluster {
        tmp,
        certs,
        members,
        name: unique_cluster_name(),
        procs: vec![None, None, None],
    };
    for id in 1..=3u64 {
        let (ca, cert, key) = cluster.own(&format!("n{id}"));
        cluster.start_node(id, &ca, &cert, &key, "data");
    }
    cluster
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn roles_are_enforced_and_callers_without_a_certificate_refused() {
    let c = start().await;
    c.wait_leader().await;
    c.admin_ok(&["kv", "put", "/app/x", "1"]);
    // Read-only: reads answer, every write is refused with the reason.
    let out = c.ctl(Some("mon"), &["kv", "get", "/app/x"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains('1'));
    for args in [
        &["kv", "put", "/app/x", "2"][..],
        &["kv", "del", "/app/x"],
        &["member", "remove", "--id", "3"],
        &["lease", "grant", "5000"],
    ] {
        let out = c.ctl(Some("mon"), args);
        assert!(!out.status.success(), "read-only {args:?} succeeded");
        assert!(
            stderr(&out).contains("read-only role"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Without a client certificate: nothing, not even a read.
    for args in [
        &["status"][..],
        &["kv", "get", "/app/x"],
        &["kv", "put", "/app/x", "3"],
    ] {
        let out = c.ctl(None, args);
        assert!(!out.status.success(), "unauthenticated {args:?} succeeded");
        assert!(
            stderr(&out).contains("client certificate"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // A bearer token stands in for a certificate, with its role.
    let token = |file: &str, args: &[&str]| {
        Command::new(BIN)
            .args(["ctl", "--endpoints", &c.endpoints(), "--ca"])
            .arg(c.certs.join("ca.crt"))
            .arg("--token-file")
            .arg(c.certs.join(file))
            .args(args)
            .output()
            .unwrap()
    };
    let out = token("admin.token", &["kv", "put", "/app/t", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = token("read.token", &["kv", "get", "/app/t"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = token("read.token", &["kv", "put", "/app/t", "2"]);
    assert!(stderr(&out).contains("read-only role"), "{}", stderr(&out));
    // Plaintext to a TLS port fails without harming the node.
    let out = run(&[
        "ctl",
        "--endpoints",
        &c.endpoints(),
        "--timeout",
        "2s",
        "status",
    ]);
    assert!(!out.status.success());
    let out = c.ctl(Some("alice"), &["kv", "get", "/app/x"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains('1'),
        "{}",
        stderr(&out)
    );
    // A forwarded write keeps the caller's role: through every member.
    for id in 1..=3usize {
        let out = c.ctl_via(
            &c.members[id - 1].addr,
            Some("mon"),
            &["kv", "put", "/app/y", "1"],
        );
        assert!(
            stderr(&out).contains("read-only role"),
            "via n{id}: {}",
            stderr(&out)
        );
    }
}

/// Node 3 is replaced by an impostor with a fresh data dir: first with a
/// certificate of another CA, then with the right CA but node 2's certificate.
/// Neither may take part: the leader and its term stay as they were.
#[tokio::test]
async fn impostor_members_cannot_join_or_move_the_leader() {
    let mut c = start().await;
    c.wait_leader().await;
    // Node 3 goes first; the leader and term the other two settle on are the
    // baseline the impostors must not move.
    c.procs[2].as_mut().unwrap().kill9();
    let (leader, term) = match poll_until(
        "a leader of n1 and n2",
        Duration::from_secs(30),
        async || {
            let a = c
                .leader_and_term()
                .ok_or_else(|| anyhow::anyhow!("no leader"))?;
            anyhow::ensure!(a.0 != 3, "still n3");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            anyhow::ensure!(c.leader_and_term() == Some(a), "moving");
            Ok(a)
        },
    )
    .await
    {
        Ok(v) => v,
        Err(m) => panic!("{m}\n{}", c.logs()),
    };
    let other = c.tmp.path().join("other");
    let o = other.to_str().unwrap();
    ok(&["certs", "init", "--dir", o, "--cluster", "t"]);
    ok(&["certs", "issue", "n3", "--host", "127.0.0.1", "--dir", o]);
    let own_ca = c.certs.join("ca.crt");
    let impostors = [
        (
            "another CA",
            other.join("ca.crt"),
            other.join("n3.crt"),
            other.join("n3.key"),
        ),
        (
            "node 2's certificate",
            own_ca.clone(),
            c.certs.join("n2.crt"),
            c.certs.join("n2.key"),
        ),
    ];
    for (i, (what, ca, cert, key)) in impostors.iter().enumerate() {
        c.start_node(3, ca, cert, key, &format!("impostor{i}"));
        // Several election timeouts (max 1 s) of a node that hears no leader.
        let until = tokio::time::Instant::now() + Duration::from_secs(4);
        let mut samples = 0;
        while tokio::time::Instant::now() < until {
            // Asked of n1 and n2 only: what the real members see.
            let out = c.ctl_via(
                &format!("{},{}", c.members[0].addr, c.members[1].addr),
                Some("alice"),
                &["--output", "json", "status"],
            );
            // A ctl that timed out on a loaded machine says nothing either way.
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                let now = (v["leader_id"].as_u64(), v["term"].as_u64());
                assert_eq!(
                    now,
                    (Some(leader), Some(term)),
                    "impostor with {what} moved the leader or the term\n{}",
                    c.logs()
                );
                samples += 1;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(samples >= 3, "only {samples} answers in 4 s\n{}", c.logs());
        if i == 1 {
            // It shares the CA, so an operator can ask it: it never got the log.
            let out = Command::new(BIN)
                .args([
                    "ctl",
                    "--endpoints",
                    &c.members[2].addr,
                    "--output",
                    "json",
                    "--ca",
                ])
                .arg(&own_ca)
                .arg("--cert")
                .arg(c.certs.join("alice.crt"))
                .arg("--key")
                .arg(c.certs.join("alice.key"))
                .arg("status")
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
            assert_eq!(
                v["last_log_index"].as_u64(),
                Some(0),
                "the impostor got the log: {v}"
            );
        }
        c.procs[2].as_mut().unwrap().kill9();
    }
    let logs: String = (1..=2)
        .map(|id| std::fs::read_to_string(c.log(id)).unwrap())
        .collect();
    assert!(
        logs.contains("TLS: the peer at this member's address was refused"),
        "the leader logs that node 3's address answers with a certificate it refuses:\n{}",
        logs.lines()
            .filter(|l| l.contains("WARN"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The real node 3 comes back and takes part again.
    let (ca, cert, key) = c.own("n3");
    c.start_node(3, &ca, &cert, &key, "data");
    c.admin_ok(&["kv", "put", "/app/after", "1"]);
}

#[tokio::test]
async fn garbage_on_the_tls_port_and_a_certificate_replaced_while_running() {
    use tokio::io::AsyncWriteExt;
    let c = start().await;
    c.wait_leader().await;
    let addr = c.members[0].addr.clone();
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        &[
            0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00, 0xff, 0xfb, 0x03, 0x03,
        ][..],
        &[0u8; 4096][..],
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = s.write_all(junk).await;
        drop(s);
    }
    c.admin_ok(&["kv", "put", "/app/x", "1"]);
    // Replace n1's certificate (10 days this time) without restarting it.
    let dir = c.certs.to_str().unwrap();
    ok(&[
        "certs",
        "issue",
        "n1",
        "--host",
        "127.0.0.1",
        "--dir",
        dir,
        "--days",
        "10",
        "--force",
    ]);
    let log = c.log(1);
    match poll_until(
        "n1 to reload its certificate",
        Duration::from_secs(20),
        async || {
            let text = std::fs::read_to_string(&log)?;
            anyhow::ensure!(text.contains("TLS files changed: reloaded"), "not yet");
            Ok(text)
        },
    )
    .await
    {
        Ok(text) => assert!(
            text.contains("expires soon") && text.contains("days_left=9"),
            "the new certificate's 10 days are warned about:\n{}",
            c.logs()
        ),
        Err(m) => panic!("{m}\n{}", c.logs()),
    }
    // New connections get the new certificate and work; the node never restarted.
    let out = c.ctl_via(&addr, Some("alice"), &["kv", "get", "/app/x"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
