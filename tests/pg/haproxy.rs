//! The shipped `cluster-configs/haproxy.cfg` run by the real HAProxy in front of a
//! test cluster (tests/haproxy.rs, benches/failover.rs).

use std::process::{Command, Stdio};

use anyhow::Context as _;

use super::{PgCluster, SUPERUSER_PASSWORD};
use crate::common::{Proc, free_ports};

const SHIPPED: &str = include_str!("../../cluster-configs/haproxy.cfg");

/// HAProxy is installed; under CI its absence is a failure.
pub fn have_haproxy() -> bool {
    super::have_tool("haproxy", "-v", "haproxy")
}

/// The shipped file with this cluster's ports: its checks, timeouts and options as
/// they are; only the bind addresses and the server lines change.
pub fn config_for(c: &PgCluster, write: u16, read: u16, stats: u16) -> String {
    let mut out = String::new();
    for line in SHIPPED.lines() {
        let t = line.trim_start();
        if t.starts_with("server ") {
            continue;
        }
        let line = line
            .replace("bind *:5000", &format!("bind 127.0.0.1:{write}"))
            .replace("bind *:5001", &format!("bind 127.0.0.1:{read}"))
            .replace("bind *:8404", &format!("bind 127.0.0.1:{stats}"));
        out.push_str(&line);
        out.push('\n');
        if t.starts_with("default-server ") {
            for id in c.ids() {
                let n = c.node(id);
                out.push_str(&format!(
                    "    server {} {}:{} maxconn 500 check port {}\n",
                    n.name, n.host, n.pg_port, n.rest_port
                ));
            }
        }
    }
    out
}

/// A running HAProxy (killed on drop) and its write and read ports.
pub struct Haproxy {
    _proc: Proc,
    pub write: u16,
    pub read: u16,
}

impl Haproxy {
    pub fn start(c: &PgCluster) -> Haproxy {
        let ports = free_ports(3);
        let cfg = c.temp_path().join("haproxy.cfg");
        std::fs::write(&cfg, config_for(c, ports[0], ports[1], ports[2])).unwrap();
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let proc = Proc::new(
            Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        Haproxy {
            _proc: proc,
            write: ports[0],
            read: ports[1],
        }
    }

    /// libpq conninfo of the superuser through `port`.
    pub fn conninfo(port: u16) -> String {
        format!(
            "host=127.0.0.1 port={port} user=postgres password={SUPERUSER_PASSWORD} \
             dbname=postgres connect_timeout=2"
        )
    }
}

/// (in recovery, server port) of a fresh connection through `port`.
pub async fn through(port: u16) -> anyhow::Result<(bool, u16)> {
    let db = super::connect(&Haproxy::conninfo(port))
        .await
        .context("connect")?;
    let row = db
        .query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[])
        .await?;
    Ok((row.get(0), row.get::<_, i32>(1) as u16))
}

/// Waits until five connections in a row through the write `port` reach a primary:
/// HAProxy starts with every server up, and marks the replicas down (cutting their
/// sessions) only after their first failed checks.
pub async fn settled(port: u16) {
    let mut in_a_row = 0;
    while in_a_row < 5 {
        match through(port).await {
            Ok((false, _)) => in_a_row += 1,
            _ => {
                in_a_row = 0;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
