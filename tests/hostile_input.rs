//! Garbage and hostile input on every port of a running 3-node cluster with
//! PostgreSQL: raw bytes and truncated frames on the gRPC and REST ports, wrong
//! content types, huge bodies, Raft messages from strangers and from another
//! cluster, payloads that do not decode, and a whole node configured for another
//! cluster pointing at our members. Every node must keep running, answer with clear
//! errors, keep its primary, and keep its data unchanged.

mod common;
mod pg;

use std::time::Duration;

use pg::{PgCluster, PgOptions, SLOW_WAIT, have_pg};
use pgquorum::api::pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

/// Sends `bytes` to host:port, reads whatever comes back within 1 s, returns it.
async fn raw(host: &str, port: u16, bytes: &[u8]) -> Vec<u8> {
    let Ok(mut s) = tokio::net::TcpStream::connect((host, port)).await else {
        return Vec::new();
    };
    // No half-close: HTTP servers may drop a request whose client closed its side.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut out)).await;
    out
}

fn garbage(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_hostile_input_on_every_port_changes_nothing() {
    if !have_pg() {
        return;
    }
    let mut c = PgCluster::start(PgOptions::default()).await;
    let primary = c.wait_primary(&[], SLOW_WAIT).await;
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != primary).collect();
    c.wait_streaming(primary, &others, SLOW_WAIT).await;
    let pgc = c.connect(primary).await.unwrap();
    pgc.batch_execute("CREATE TABLE keep (v int); INSERT INTO keep VALUES (42)")
        .await
        .unwrap();
    let n1 = c.node(1);
    let grpc_ep = format!("{}:{}", n1.host, n1.raft_port);
    let client = pgquorum::client::Client::new(vec![grpc_ep.clone()]).unwrap();
    client
        .put("/app/keep", b"v1".to_vec(), 0, None)
        .await
        .unwrap();
    let before = client.get("/app/", true, false).await.unwrap().kvs;

    for id in c.ids() {
        let n = c.node(id);
        let (h, g, r) = (n.host.as_str(), n.raft_port, n.rest_port);
        // Raw garbage, a truncated HTTP/2 preface, a truncated gRPC frame.
        raw(h, g, &garbage(64 * 1024, id as u32)).await;
        raw(h, g, b"PRI * HTTP/2.0\r\n\r\nSM\r\n").await;
        raw(
            h,
            g,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00",
        )
        .await;
        // HTTP/1.1 with a wrong content type to the gRPC port.
        raw(
            h,
            g,
            b"POST /pgquorum.v1.Admin/Put HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        // REST: garbage, truncated request line, wrong method, huge body, bad query.
        raw(h, r, &garbage(64 * 1024, 7 + id as u32)).await;
        raw(h, r, b"GET /prim").await;
        let resp = raw(
            h,
            r,
            b"DELETE /primary HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let text = String::from_utf8_lossy(&resp);
        assert!(
            text.starts_with("HTTP/1.1 405"),
            "DELETE /primary: {text:?}"
        );
        let mut huge = b"POST /patroni HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\nConnection: close\r\n\r\n".to_vec();
        huge.extend(garbage(8 * 1024 * 1024, 3));
        let resp = raw(h, r, &huge).await;
        let text = String::from_utf8_lossy(&resp);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4"),
            "huge body to /patroni: {text:?}"
        );
        let s = c.http_status(id, "GET", "/replica?lag=notanumber").await;
        assert!(
            matches!(s, Some(400) | Some(503) | Some(200)),
            "bad lag: {s:?}"
        );
    }

    // Raft RPCs from a stranger, from another cluster, and with undecodable payloads.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{grpc_ep}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raft = pb::raft_service_client::RaftServiceClient::new(ch.clone());
    for (cluster, from, payload, want) in [
        (c.name.clone(), 99, b"{}".to_vec(), Code::PermissionDenied),
        (
            "another-cluster".to_string(),
            2,
            b"{}".to_vec(),
            Code::PermissionDenied,
        ),
        (c.name.clone(), 2, garbage(1000, 1), Code::InvalidArgument),
    ] {
        for call in 0..4 {
            let msg = pb::RaftMessage {
                cluster: cluster.clone(),
                from,
                payload: payload.clone(),
            };
            let r = match call {
                0 => raft.vote(msg).await,
                1 => raft.append_entries(msg).await,
                2 => raft.transfer_leader(msg).await,
                _ => raft.pre_vote(msg).await,
            };
            let code = r.expect_err("a hostile Raft message was accepted").code();
            assert_eq!(code, want, "cluster {cluster:?} from {from}");
        }
    }
    // A message larger than the server accepts.
    let big = pb::RaftMessage {
        cluster: c.name.clone(),
        from: 2,
        payload: vec![b'x'; 80 * 1024 * 1024],
    };
    let mut raft_big = pb::raft_service_client::RaftServiceClient::new(ch.clone())
        .max_encoding_message_size(usize::MAX);
    let code = raft_big.append_entries(big).await.expect_err("huge").code();
    assert!(
        matches!(
            code,
            Code::ResourceExhausted | Code::OutOfRange | Code::Internal | Code::Unknown
        ),
        "huge Raft message: {code:?}"
    );
    // Admin requests that make no sense.
    let mut admin = pb::admin_client::AdminClient::new(ch);
    let e = admin
        .lease_renew(pb::LeaseIdRequest { id: 123_456_789 })
        .await
        .expect_err("unknown lease");
    assert_eq!(e.code(), Code::NotFound);
    let e = admin
        .put(pb::PutRequest {
            key: "/pg/config".into(),
            value: b"{not json".to_vec(),
            lease: 0,
            expect_mod_revision: None,
            ..Default::default()
        })
        .await
        .expect_err("bad /pg/config");
    assert_eq!(e.code(), Code::InvalidArgument);
    // A setting that silently defeats synchronous mode is refused, and says why.
    for weak in ["off", "local"] {
        let e = admin
            .put(pb::PutRequest {
                key: "/pg/config".into(),
                value: format!(
                    r#"{{"synchronous_mode": true, "parameters": {{"synchronous_commit": "{weak}"}}}}"#
                )
                .into_bytes(),
                lease: 0,
                expect_mod_revision: None,
                ..Default::default()
            })
            .await
            .expect_err("synchronous_commit that defeats synchronous_mode");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("synchronous_commit"),
            "{}",
            e.message()
        );
    }

    // A whole node configured for another cluster, claiming node 1's id and listing
    // our nodes 2 and 3 as its peers: it must refuse to start, say why, and create
    // nothing (its data dir would carry the wrong cluster name). Our nodes never hear
    // of it.
    let dir = c.temp_path().join("intruder");
    std::fs::create_dir_all(&dir).unwrap();
    let intruder_addr = format!("127.0.0.1:{}", common::free_ports(1)[0]);
    let mut peers = vec![common::MemberSpec {
        id: 1,
        name: "intruder".into(),
        addr: intruder_addr.clone(),
    }];
    for id in [2, 3] {
        let n = c.node(id);
        peers.push(common::MemberSpec {
            id,
            name: n.name.clone(),
            addr: format!("{}:{}", n.host, n.raft_port),
        });
    }
    let spec = common::NodeSpec {
        cluster_name: format!("{}-intruder", c.name),
        node_id: 1,
        name: "intruder".into(),
        listen_addr: intruder_addr.clone(),
        data_dir: dir.join("raft"),
        join: false,
        initial_cluster: peers,
    };
    std::fs::write(dir.join("node.toml"), spec.to_toml()).unwrap();
    let log = dir.join("node.log");
    let mut intruder = common::spawn_node(&dir.join("node.toml"), &log);
    let status = c
        .wait_for("the intruder to refuse to start", SLOW_WAIT, async || {
            intruder
                .try_wait()?
                .ok_or_else(|| anyhow::anyhow!("still running:\n{}", common::tail(&log, 20)))
        })
        .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "the intruder exited 0:\n{text}");
    assert!(
        text.contains(&format!("belongs to cluster \"{}\"", c.name)),
        "the intruder did not say why it refused:\n{text}"
    );
    assert!(
        !dir.join("raft").exists(),
        "the refused intruder created its data dir"
    );
    for id in c.ids() {
        let n = c.node(id);
        let st = pgquorum::client::Client::new(vec![format!("{}:{}", n.host, n.raft_port)])
            .unwrap()
            .status()
            .await
            .expect("status");
        assert_eq!(st.cluster, c.name);
        assert!(
            st.members.iter().all(|m| m.addr != intruder_addr),
            "node {id} lists the intruder: {:?}",
            st.members
        );
    }

    // Nothing changed: every node runs, same primary, same data.
    for id in c.ids() {
        assert!(
            c.status_ok(id).await,
            "node {id} stopped answering after hostile input"
        );
    }
    assert_eq!(c.wait_primary(&[], SLOW_WAIT).await, primary);
    let after = client.get("/app/", true, false).await.unwrap().kvs;
    assert_eq!(before, after, "keys changed");
    let v: i32 = c
        .connect(primary)
        .await
        .unwrap()
        .query_one("SELECT v FROM keep", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 42);
}
