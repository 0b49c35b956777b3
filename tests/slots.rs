//! Replication slots on a real 3-node cluster: a member that is down keeps its slot
//! after its status is gone (`member_slots_ttl_ms`), permanent slots from
//! `/pg/config` exist on every member and survive a failover, and a Raft member
//! without PostgreSQL gets no slot.

mod common;
mod pg;

use anyhow::ensure;
use pg::{PgCluster, PgOptions, SLOW_WAIT, have_pg};

async fn slots(c: &PgCluster, id: u64) -> anyhow::Result<Vec<String>> {
    let rows = c
        .connect(id)
        .await?
        .query(
            "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_member_and_permanent_slots_survive_absence_and_failover() {
    if !have_pg() {
        return;
    }
    let opts = PgOptions {
        ha_extra: "[ha.slots.backup]\ntype = \"physical\"".into(),
        witnesses: 1,
        ..PgOptions::default()
    };
    let mut c = PgCluster::start(opts).await;
    let p = c.wait_primary(&[], SLOW_WAIT).await;
    let replicas: Vec<u64> = c.ids().into_iter().filter(|i| *i != p).collect();
    c.wait_streaming(p, &replicas, SLOW_WAIT).await;
    let slot_of = |id: u64| format!("pgq_n{id}");
    let mut want: Vec<String> = replicas.iter().map(|r| slot_of(*r)).collect();
    want.insert(0, "backup".into());
    c.wait_for(
        "member and permanent slots on the primary",
        SLOW_WAIT,
        async || {
            let have = slots(&c, p).await?;
            ensure!(have == want, "{have:?}");
            Ok(())
        },
    )
    .await;
    // The witness (n4) never publishes a PostgreSQL status: no slot holds WAL for it.
    assert!(!slots(&c, p).await.unwrap().contains(&"pgq_n4".to_string()));
    for r in &replicas {
        c.wait_for("the permanent slot on a replica", SLOW_WAIT, async || {
            ensure!(slots(&c, *r).await?.contains(&"backup".to_string()));
            Ok(())
        })
        .await;
    }

    // A replica's host dies: once its status is gone from the store, its slot is
    // still there (member_slots_ttl_ms, 30 min by default), and it streams on from
    // it when it is back.
    let down = replicas[0];
    let name = c.node(down).name.clone();
    c.kill_host(down);
    c.wait_for(
        "the dead member's status to expire",
        SLOW_WAIT,
        async || {
            let (_, body) = c.http(p, "GET", "/cluster").await.unwrap_or_default();
            ensure!(
                !body.is_empty() && !body.contains(&format!("\"{name}\"")),
                "{body}"
            );
            Ok(())
        },
    )
    .await;
    c.connect(p)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i; CHECKPOINT")
        .await
        .unwrap();
    assert!(
        slots(&c, p).await.unwrap().contains(&slot_of(down)),
        "the slot of a member gone from the store was dropped"
    );
    c.restart(down);
    c.wait_streaming(p, &[down], SLOW_WAIT).await;

    // Failover: the new primary has the permanent slot it kept as a replica.
    c.kill_host(p);
    let new = c.wait_primary(&[p], SLOW_WAIT).await;
    let have = slots(&c, new).await.unwrap();
    assert!(have.contains(&"backup".to_string()), "{have:?}");
}
