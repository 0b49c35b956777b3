//! End-to-end tests of a 3-node cluster of real `pgquorum node` processes.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, ensure};
use common::{Cluster, WAIT, get_serializable};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_one_leader_and_replicate_writes_through_every_node() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    assert!(cluster.ids().contains(&leader), "leader {leader}");

    let st = cluster.status(leader).await.expect("leader status");
    assert_eq!(st.state, "leader");
    assert_eq!(st.members.len(), 3, "{st:?}");
    assert!(st.members.iter().all(|m| m.role == "voter"), "{st:?}");
    for id in cluster.ids() {
        if id != leader {
            let st = cluster.status(id).await.expect("status");
            assert_eq!(st.state, "follower", "node {id}: {st:?}");
        }
    }

    let clients: BTreeMap<u64, _> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, cluster.client_for(id)))
        .collect();
    for (&writer, wc) in &clients {
        let key = format!("via/{writer}");
        let value = format!("written through node {writer}").into_bytes();
        let put = wc
            .put(&key, value.clone(), 0, None)
            .await
            .unwrap_or_else(|e| panic!("put through node {writer}: {e}"));
        assert!(put.succeeded);

        // Linearizable reads through every node see the write right away.
        for (&reader, rc) in &clients {
            let r = rc
                .get(&key, false, false)
                .await
                .unwrap_or_else(|e| panic!("linearizable read on node {reader}: {e}"));
            assert_eq!(r.kvs.len(), 1, "node {reader} misses {key}: {r:?}");
            assert_eq!(r.kvs[0].value, value, "node {reader}");
            assert_eq!(r.kvs[0].mod_revision, put.revision, "node {reader}");
            assert!(r.revision >= put.revision, "node {reader}: {r:?}");
        }
        // Serializable reads converge on every node.
        for (&reader, rc) in &clients {
            let what = format!("node {reader} to apply {key} (serializable read)");
            let got = cluster
                .wait_for(&what, WAIT, async || get_serializable(rc, &key).await)
                .await;
            assert_eq!(got, value, "node {reader}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_always_elects_a_new_leader() {
    const ROUNDS: usize = 50;
    let mut cluster = Cluster::start(3).await;
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    let test_start = Instant::now();

    for i in 0..ROUNDS {
        let leader = cluster.wait_for_leader().await;
        let key = format!("k{i}");
        let value = format!("v{i}").into_bytes();
        cluster
            .client()
            .put(&key, value.clone(), 0, None)
            .await
            .unwrap_or_else(|e| panic!("round {i}: put {key} before the kill: {e}"));
        acked.push((key, value));

        cluster.kill9(leader);
        let killed_at = Instant::now();
        let new_leader = cluster.wait_for_leader().await;
        let elected_in = killed_at.elapsed();
        assert_ne!(
            new_leader, leader,
            "round {i}: the killed node is still leader"
        );

        let key = format!("k{i}-after");
        let value = format!("v{i}-after").into_bytes();
        cluster
            .client()
            .put(&key, value.clone(), 0, None)
            .await
            .unwrap_or_else(|e| panic!("round {i}: put {key} after re-election: {e}"));
        acked.push((key.clone(), value.clone()));

        cluster.restart(leader).await;
        let rejoined = cluster.client_for(leader);
        let what = format!("round {i}: restarted node {leader} to catch up to {key}");
        let got = cluster
            .wait_for(&what, WAIT, async || {
                get_serializable(&rejoined, &key).await
            })
            .await;
        assert_eq!(got, value);
        eprintln!(
            "round {i}: killed leader {leader}, node {new_leader} elected after {elected_in:?}, \
             caught up at {:?} into the test",
            test_start.elapsed()
        );
    }

    cluster.wait_for_leader().await;
    let r = cluster
        .client()
        .get("k", true, false)
        .await
        .expect("read all keys");
    let stored: BTreeMap<String, Vec<u8>> =
        r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    for (key, value) in &acked {
        assert_eq!(stored.get(key), Some(value), "acknowledged key {key} lost");
    }
    assert_eq!(stored.len(), acked.len(), "unexpected keys: {stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_keeps_data() {
    const KEYS: usize = 200;
    let mut cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let client = cluster.client();
    let mut last_revision = 0;
    for i in 0..KEYS {
        let put = client
            .put(
                &format!("data/{i:03}"),
                format!("value-{i}").into_bytes(),
                0,
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
        assert!(
            put.revision > last_revision,
            "revision went back at put {i}"
        );
        last_revision = put.revision;
    }

    for id in [1, 2, 3] {
        cluster.kill9(id);
    }
    for id in [3, 1, 2] {
        cluster.restart(id).await;
    }
    cluster.wait_for_leader().await;

    let r = cluster
        .client()
        .get("data/", true, false)
        .await
        .expect("read after restart");
    assert!(
        r.revision >= last_revision,
        "revision went back from {last_revision} to {}",
        r.revision
    );
    assert_eq!(r.kvs.len(), KEYS, "keys lost in the restart");
    for (i, kv) in r.kvs.iter().enumerate() {
        assert_eq!(kv.key, format!("data/{i:03}"));
        assert_eq!(kv.value, format!("value-{i}").into_bytes(), "{}", kv.key);
    }
    // Every node has all data again, not just the leader.
    for id in cluster.ids() {
        let c = cluster.client_for(id);
        let st = cluster
            .wait_for(
                &format!("node {id} to apply everything"),
                WAIT,
                async || {
                    let st = cluster.status(id).await?;
                    ensure!(
                        st.revision >= last_revision,
                        "node {id} at revision {}",
                        st.revision
                    );
                    Ok(st)
                },
            )
            .await;
        assert!(st.revision >= last_revision);
        let r = c.get("data/", true, true).await.expect("serializable read");
        assert_eq!(r.kvs.len(), KEYS, "node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_cli_roundtrip() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;

    let st = cluster.ctl(&["status"]).json();
    assert_eq!(st["cluster"], json!(cluster.name));
    assert_eq!(st["leader_id"], json!(leader));
    assert_eq!(st["members"].as_array().map(Vec::len), Some(3), "{st}");

    let put = cluster.ctl(&["kv", "put", "cli/a", "hello world"]).json();
    assert_eq!(put["succeeded"], json!(true), "{put}");
    let rev = put["revision"].as_u64().expect("revision");
    assert!(rev > 0);

    let got = cluster.ctl(&["kv", "get", "cli/a"]).json();
    assert_eq!(got["kvs"][0]["key"], json!("cli/a"), "{got}");
    assert_eq!(got["kvs"][0]["value"], json!("hello world"), "{got}");
    assert_eq!(got["kvs"][0]["mod_revision"], json!(rev), "{got}");

    let del = cluster.ctl(&["kv", "del", "cli/a"]).json();
    assert_eq!(del["succeeded"], json!(true), "{del}");
    assert_eq!(del["deleted"], json!(1), "{del}");
    let missing = cluster.ctl(&["kv", "get", "cli/a"]);
    assert!(!missing.status.success(), "{missing:?}");
    assert!(missing.stderr.contains("not found"), "{missing:?}");

    let grant = cluster.ctl(&["lease", "grant", "60000"]).json();
    let lease = grant["id"].as_u64().expect("lease id");
    assert!(lease > 0, "{grant}");
    assert_eq!(grant["ttl_ms"], json!(60000), "{grant}");
    let lease_arg = lease.to_string();
    let put = cluster
        .ctl(&["kv", "put", "cli/leased", "x", "--lease", &lease_arg])
        .json();
    assert_eq!(put["succeeded"], json!(true), "{put}");

    let ttl = cluster.ctl(&["lease", "ttl", &lease_arg]).json();
    assert_eq!(ttl["id"], json!(lease), "{ttl}");
    assert_eq!(ttl["ttl_ms"], json!(60000), "{ttl}");
    assert_eq!(ttl["keys"], json!(["cli/leased"]), "{ttl}");
    let remaining = ttl["remaining_ms"].as_u64().expect("remaining_ms");
    assert!(remaining > 0 && remaining <= 60000, "{ttl}");

    let revoke = cluster.ctl(&["lease", "revoke", &lease_arg]).json();
    assert_eq!(revoke["id"], json!(lease), "{revoke}");
    let gone = cluster.ctl(&["kv", "get", "cli/leased"]);
    assert!(
        !gone.status.success(),
        "revoking the lease must delete its key: {gone:?}"
    );
    let gone = cluster.ctl(&["lease", "ttl", &lease_arg]);
    assert!(!gone.status.success(), "{gone:?}");

    let members = cluster.ctl(&["members"]).json();
    let list = members["members"].as_array().expect("members array");
    let mut ids: Vec<u64> = list.iter().map(|m| m["id"].as_u64().expect("id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2, 3], "{members}");
    for m in list {
        let id = m["id"].as_u64().expect("id");
        assert_eq!(m["addr"], json!(cluster.endpoint(id)), "{members}");
        assert_eq!(m["role"], json!("voter"), "{members}");
    }

    let nf = cluster.ctl(&["lease", "ttl", "999999"]);
    assert!(!nf.status.success(), "{nf:?}");
    assert!(nf.stdout.trim().is_empty(), "{nf:?}");
    assert!(
        nf.stderr.contains("lease 999999") && nf.stderr.contains("not found"),
        "stderr should name the missing lease: {nf:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_from_a_revision() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let client = cluster.client();

    let a = client
        .put("w/a", b"1".to_vec(), 0, None)
        .await
        .expect("put a");
    client
        .put("other/x", b"-".to_vec(), 0, None)
        .await
        .expect("put other");
    let b = client
        .put("w/b", b"2".to_vec(), 0, None)
        .await
        .expect("put b");

    let mut stream = client.watch("w/", a.revision).await.expect("watch");
    let mut next = async || {
        let ev = tokio::time::timeout(WAIT, stream.message())
            .await
            .map_err(|_| anyhow!("no watch event within {WAIT:?}"))??
            .ok_or_else(|| anyhow!("the watch stream ended"))?;
        let kv = ev
            .kv
            .clone()
            .ok_or_else(|| anyhow!("event without kv: {ev:?}"))?;
        Ok::<_, anyhow::Error>((ev.kind, ev.revision, kv.key, kv.value))
    };

    let e1 = next().await.expect("first event");
    assert_eq!(e1, ("put".into(), a.revision, "w/a".into(), b"1".to_vec()));
    let e2 = next().await.expect("second event");
    assert_eq!(e2, ("put".into(), b.revision, "w/b".into(), b"2".to_vec()));

    client
        .put("other/y", b"-".to_vec(), 0, None)
        .await
        .expect("put other");
    let c = client
        .put("w/c", b"3".to_vec(), 0, None)
        .await
        .expect("put c");
    let d = client.delete("w/a", false, None).await.expect("delete a");
    assert!(d.succeeded && d.deleted == 1, "{d:?}");
    assert!(a.revision < b.revision && b.revision < c.revision && c.revision < d.revision);

    let e3 = next().await.expect("third event");
    assert_eq!(e3, ("put".into(), c.revision, "w/c".into(), b"3".to_vec()));
    let e4 = next().await.expect("fourth event");
    assert_eq!(
        (e4.0.as_str(), e4.1, e4.2.as_str()),
        ("delete", d.revision, "w/a")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let client = cluster.client();

    let first = client
        .put("cas/k", b"one".to_vec(), 0, Some(0))
        .await
        .expect("first create");
    assert!(first.succeeded, "{first:?}");
    assert!(first.prev.is_none(), "{first:?}");

    let second = client
        .put("cas/k", b"two".to_vec(), 0, Some(0))
        .await
        .expect("second create");
    assert!(
        !second.succeeded,
        "creating an existing key must fail: {second:?}"
    );
    let prev = second
        .prev
        .expect("the failed compare reports the current key");
    assert_eq!(prev.mod_revision, first.revision, "{prev:?}");
    assert_eq!(prev.value, b"one");

    let r = client.get("cas/k", false, false).await.expect("get");
    assert_eq!(r.kvs[0].value, b"one", "a failed compare must not write");

    let third = client
        .put("cas/k", b"three".to_vec(), 0, Some(first.revision))
        .await
        .expect("update");
    assert!(third.succeeded, "{third:?}");
    let stale = client
        .put("cas/k", b"four".to_vec(), 0, Some(first.revision))
        .await
        .expect("stale update");
    assert!(!stale.succeeded, "{stale:?}");
    assert_eq!(stale.prev.map(|p| p.mod_revision), Some(third.revision));
}
