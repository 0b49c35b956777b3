//! Adding and removing members of a running cluster.

mod common;

use std::time::Duration;

use anyhow::ensure;
use common::{Cluster, WAIT, free_ports, get_serializable};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_a_joining_node_then_remove_it() {
    let mut cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let founders = cluster.client_for_ids(&[1, 2, 3]);
    let early = founders
        .put("before/join", b"old".to_vec(), 0, None)
        .await
        .expect("put before the join");

    cluster.add_node(4).await;
    let addr4 = cluster.endpoint(4);
    let st4 = cluster.status(4).await.expect("status of the joining node");
    assert!(
        st4.members.is_empty(),
        "a join node must start without a membership: {st4:?}"
    );

    // The call blocks until node 4 caught up and was promoted: allow for that.
    let admin = founders.clone().with_timeout(Duration::from_secs(30));
    let st = admin
        .add_member(4, "n4", &addr4, false)
        .await
        .expect("add member 4");
    assert!(st.members.iter().any(|m| m.id == 4), "{st:?}");

    for id in [1, 2, 3, 4] {
        cluster
            .wait_for(&format!("node {id} to list 4 voters"), WAIT, async || {
                let st = cluster.status(id).await?;
                let voters = st.members.iter().filter(|m| m.role == "voter").count();
                ensure!(voters == 4, "node {id} lists {:?}", st.members);
                ensure!(st.leader_id != 0, "node {id} knows no leader");
                Ok(())
            })
            .await;
    }
    let c4 = cluster.client_for(4);
    let got = cluster
        .wait_for(
            "node 4 to serve a key written before it joined",
            WAIT,
            async || get_serializable(&c4, "before/join").await,
        )
        .await;
    assert_eq!(got, b"old");
    let kv = c4.get("before/join", false, true).await.expect("read on 4");
    assert_eq!(kv.kvs[0].mod_revision, early.revision);

    // A write with 4 voters (majority 3) commits and reaches node 4.
    founders
        .put("with/four", b"4".to_vec(), 0, None)
        .await
        .expect("put with 4 voters");
    cluster
        .wait_for("node 4 to apply a new write", WAIT, async || {
            get_serializable(&c4, "with/four").await
        })
        .await;

    let st = admin.remove_member(4).await.expect("remove member 4");
    assert!(!st.members.iter().any(|m| m.id == 4), "{st:?}");
    for id in [1, 2, 3] {
        cluster
            .wait_for(&format!("node {id} to list 3 members"), WAIT, async || {
                let st = cluster.status(id).await?;
                let mut ids: Vec<u64> = st.members.iter().map(|m| m.id).collect();
                ids.sort_unstable();
                ensure!(ids == [1, 2, 3], "node {id} lists {:?}", st.members);
                ensure!(
                    st.members.iter().all(|m| m.role == "voter"),
                    "node {id} lists {:?}",
                    st.members
                );
                Ok(())
            })
            .await;
    }
    let put = founders
        .put("after/remove", b"3".to_vec(), 0, None)
        .await
        .expect("put after removing 4");
    assert!(put.succeeded);
    let r = founders
        .get("after/remove", false, false)
        .await
        .expect("linearizable read after removing 4");
    assert_eq!(r.kvs.len(), 1);
    cluster.kill9(4);

    // The three remaining members still form a working cluster without 4.
    cluster.wait_for_leader().await;
    let put = founders
        .put("after/kill", b"x".to_vec(), 0, None)
        .await
        .expect("put after killing the removed node");
    assert!(put.succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_requests_are_refused() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let client = cluster.client();

    let elsewhere = format!("127.0.0.1:{}", free_ports(1)[0]);
    let err = client
        .add_member(2, "n2", &elsewhere, false)
        .await
        .expect_err("an existing id at another address must be refused");
    assert_eq!(err.code(), Some(Code::AlreadyExists), "{err}");
    assert!(err.to_string().contains(&cluster.endpoint(2)), "{err}");

    let err = client
        .add_member(9, "n9", &cluster.endpoint(3), false)
        .await
        .expect_err("an address already in use by another member must be refused");
    assert_eq!(err.code(), Some(Code::AlreadyExists), "{err}");

    let err = client
        .remove_member(42)
        .await
        .expect_err("removing an unknown member must fail");
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");

    // Nothing changed.
    let st = client.status().await.expect("status");
    let mut ids: Vec<u64> = st.members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3], "{st:?}");
    assert!(
        client
            .put("still/works", b"1".to_vec(), 0, None)
            .await
            .expect("put")
            .succeeded
    );
}
