//! Running under a service manager: the systemd notify protocol (READY, WATCHDOG,
//! STOPPING), SIGHUP never ends the node, logs to a file carry no colour codes, and
//! `--log-format json` writes one object per line with the event's fields.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, MemberSpec, NodeSpec, Proc, free_ports, unique_cluster_name};

fn one_node(dir: &std::path::Path) -> std::path::PathBuf {
    let port = free_ports(1)[0];
    let m = MemberSpec {
        id: 1,
        name: "n1".into(),
        addr: format!("127.0.0.1:{port}"),
    };
    let spec = NodeSpec {
        cluster_name: unique_cluster_name(),
        node_id: 1,
        name: "n1".into(),
        listen_addr: m.addr.clone(),
        data_dir: dir.join("data"),
        join: false,
        initial_cluster: vec![m],
    };
    let path = dir.join("n1.toml");
    std::fs::write(&path, spec.to_toml()).unwrap();
    path
}

/// The next datagram within `timeout`, as text.
fn recv(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn recv_until(sock: &UnixDatagram, what: &str, timeout: Duration) -> Vec<String> {
    let end = Instant::now() + timeout;
    let mut got = Vec::new();
    while Instant::now() < end {
        if let Some(m) = recv(sock, end - Instant::now()) {
            let done = m.contains(what);
            got.push(m);
            if done {
                return got;
            }
        }
    }
    panic!("no {what:?} within {timeout:?}; got {got:?}");
}

#[test]
fn notify_protocol_sighup_and_plain_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let config = one_node(tmp.path());
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let log = tmp.path().join("n1.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut node = Proc::new(
        Command::new(BIN)
            .args(["node", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "300000")
            .env_remove("WATCHDOG_PID")
            .env_remove("NO_COLOR")
            .env_remove("PGQUORUM_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    let got = recv_until(&sock, "READY=1", Duration::from_secs(30));
    let ready = got.last().unwrap();
    assert!(
        ready.contains("STATUS=serving Raft on 127.0.0.1:"),
        "{ready}"
    );
    // Fed every 150 ms.
    for _ in 0..3 {
        recv_until(&sock, "WATCHDOG=1", Duration::from_secs(5));
    }
    // SIGHUP (`systemctl reload`) re-reads the config; the node keeps running and
    // keeps feeding the watchdog.
    unsafe { libc::kill(node.pid() as i32, libc::SIGHUP) };
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(5));
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(5));
    assert!(node.try_wait().is_none(), "SIGHUP ended the node");
    node.sigterm();
    recv_until(&sock, "STOPPING=1", Duration::from_secs(30));
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = node.try_wait() {
            break s;
        }
        assert!(Instant::now() < end, "node did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("SIGHUP: config re-read"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file:\n{text}"
    );
}

#[test]
fn json_logs_are_one_object_per_line_with_the_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let config = one_node(tmp.path());
    let log = tmp.path().join("n1.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut node = Proc::new(
        Command::new(BIN)
            .args(["node", "--log-format", "json", "--config"])
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    let end = Instant::now() + Duration::from_secs(30);
    let started = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(line) = text.lines().find(|l| l.contains("pgquorum node started")) {
            break line.to_owned();
        }
        assert!(
            Instant::now() < end && node.try_wait().is_none(),
            "no start line:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let doc: serde_json::Value = serde_json::from_str(&started).expect(&started);
    assert_eq!(doc["message"], "pgquorum node started", "{doc}");
    assert_eq!(doc["level"], "INFO", "{doc}");
    assert_eq!(
        doc["node"], 1,
        "the event's fields are keys of the object: {doc}"
    );
    node.sigterm();
    let end = Instant::now() + Duration::from_secs(30);
    while node.try_wait().is_none() {
        assert!(Instant::now() < end, "node did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
    }
    let bad = Command::new(BIN)
        .args(["node", "--log-format", "xml", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values"));
}
