//! Lease properties on real 3-node clusters (argument: src/store/DESIGN.md).
//!
//! - a lease that is renewed never expires, also while Raft leaders are killed;
//! - a `LeaseRenewer` keeps its lease and reports every committed deadline, and
//!   once stopped reports nothing more and lets the lease expire;
//! - a lease that is not renewed expires after its TTL, never before the holder's
//!   own deadline, and takes its keys with it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure};
use common::{Cluster, WAIT};
use pgquorum::client::{LeaseKeeper, LeaseRenewer};
use tokio::time::Instant;
use tonic::Code;

/// `lease_check_interval_ms` in the harness configs.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_lease_never_expires() {
    let c = Cluster::start(3).await;
    c.wait_for_leader().await;
    let client = c.client();
    let ttl = Duration::from_millis(1500);
    let mut keeper = LeaseKeeper::grant(client.clone(), ttl)
        .await
        .expect("grant");
    client
        .put("/svc/leader", b"n1".to_vec(), keeper.id(), None)
        .await
        .expect("attach key");
    // Renew at ttl/3 for several TTLs; each renewal must find the lease alive.
    let until = Instant::now() + ttl * 5;
    let mut renewals = 0;
    while Instant::now() < until {
        tokio::time::sleep(ttl / 3).await;
        keeper
            .renew()
            .await
            .unwrap_or_else(|e| panic!("renewal {renewals} failed: {e}\n{}", c.logs()));
        renewals += 1;
    }
    let ttl_now = client
        .lease_ttl(keeper.id())
        .await
        .expect("lease still there");
    assert_eq!(ttl_now.keys, vec!["/svc/leader".to_string()]);
    let kv = client.get("/svc/leader", false, false).await.expect("get");
    assert_eq!(
        kv.kvs.len(),
        1,
        "the key attached to a renewed lease vanished"
    );
    println!("{renewals} renewals, lease alive throughout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrenewed_lease_expires_after_ttl_never_before_holder_deadline() {
    let c = Cluster::start(3).await;
    c.wait_for_leader().await;
    let client = c.client();
    let ttl = Duration::from_millis(1500);
    let mut keeper = LeaseKeeper::grant(client.clone(), ttl)
        .await
        .expect("grant");
    client
        .put("/svc/leader", b"n1".to_vec(), keeper.id(), None)
        .await
        .expect("attach key");
    let sent = Instant::now();
    keeper.renew().await.expect("last renewal");
    let holder_deadline = keeper
        .valid_until()
        .expect("a committed renewal sets a deadline");
    assert!(
        holder_deadline > sent,
        "deadline counts from the send instant"
    );

    // Poll until the lease is gone. A "gone" answer received at `r` means the expiry
    // committed before `r`, so `r` must not be earlier than the holder's deadline.
    let id = keeper.id();
    let gone_at = c
        .wait_for(
            "the unrenewed lease to expire",
            WAIT,
            async || match client.lease_ttl(id).await {
                Ok(_) => bail!("lease {id} still alive"),
                Err(e) if e.code() == Some(Code::NotFound) => {
                    let r = Instant::now();
                    ensure!(
                        r >= holder_deadline,
                        "SAFETY: lease {id} observed expired {:?} before the holder's deadline",
                        holder_deadline - r
                    );
                    Ok(r)
                }
                Err(e) => bail!("lease ttl: {e}"),
            },
        )
        .await;
    let after = gone_at - sent;
    println!(
        "lease expired {after:?} after the last renewal was sent (ttl {ttl:?}, check interval {CHECK_INTERVAL:?})"
    );
    assert!(
        after >= ttl,
        "expired {after:?} after its last renewal, ttl is {ttl:?}"
    );
    // Liveness: TTL + one check interval, plus slack for a commit and for scheduling
    // on a loaded CI machine; a lease that never expires fails this.
    let bound = ttl + CHECK_INTERVAL + Duration::from_millis(1500);
    assert!(
        after <= bound,
        "expired only {after:?} after its last renewal (bound {bound:?})"
    );
    let kv = client.get("/svc/leader", false, false).await.expect("get");
    assert!(
        kv.kvs.is_empty(),
        "the key attached to the expired lease is still there"
    );
    let err = keeper
        .renew()
        .await
        .expect_err("renewing an expired lease fails");
    assert_eq!(err.code(), Some(Code::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_never_expires_a_renewed_lease() {
    let mut c = Cluster::start(3).await;
    c.wait_for_leader().await;
    let client = c.client();
    let ttl = Duration::from_millis(4000);
    let keeper = LeaseKeeper::grant(client.clone(), ttl)
        .await
        .expect("grant");
    let id = keeper.id();
    let stop = Arc::new(AtomicBool::new(false));
    let not_found = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let renewer = {
        let (stop, not_found, ok) = (stop.clone(), not_found.clone(), ok.clone());
        let mut keeper = keeper;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match keeper.renew().await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.code() == Some(Code::NotFound) => {
                        not_found.fetch_add(1, Ordering::Relaxed);
                    }
                    // Unavailable during an election: the keeper's deadline did not move.
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };
    for round in 0..3 {
        let leader = c.wait_for_leader().await;
        let before = ok.load(Ordering::Relaxed);
        c.kill9(leader);
        let new_leader = c.wait_for_leader().await;
        assert_ne!(new_leader, leader);
        // At least one renewal must commit under the new leader.
        c.wait_for("a renewal under the new leader", WAIT, async || {
            ensure!(ok.load(Ordering::Relaxed) > before + 1, "no renewal yet");
            Ok(())
        })
        .await;
        c.restart(leader).await;
        println!("round {round}: killed leader {leader}, new leader {new_leader}");
    }
    stop.store(true, Ordering::Relaxed);
    renewer.await.expect("renewer");
    assert_eq!(
        not_found.load(Ordering::Relaxed),
        0,
        "a renewed lease expired across leader kills\n{}",
        c.logs()
    );
    client.lease_ttl(id).await.expect("lease alive at the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewer_keeps_the_lease_until_stopped() {
    let c = Cluster::start(3).await;
    c.wait_for_leader().await;
    let client = c.client();
    let ttl = Duration::from_millis(1000);
    let keeper = LeaseKeeper::grant(client.clone(), ttl)
        .await
        .expect("grant");
    let id = keeper.id();
    let reported = Arc::new(std::sync::Mutex::new(Vec::new()));
    let renewer = {
        let reported = reported.clone();
        LeaseRenewer::spawn(keeper, ttl / 4, move |until, _took| {
            reported.lock().unwrap().push(until)
        })
    };
    // The owner does nothing for three TTLs; the lease must stay alive throughout.
    let until = Instant::now() + ttl * 3;
    while Instant::now() < until {
        assert!(
            renewer.is_valid(Instant::now()),
            "the renewer's deadline passed\n{}",
            c.logs()
        );
        client
            .lease_ttl(id)
            .await
            .unwrap_or_else(|e| panic!("lease {id} gone while renewed: {e}\n{}", c.logs()));
        tokio::time::sleep(ttl / 4).await;
    }
    let deadlines = reported.lock().unwrap().clone();
    assert!(
        deadlines.len() >= 4,
        "only {} renewals reported",
        deadlines.len()
    );
    assert!(
        deadlines.windows(2).all(|w| w[0] <= w[1]),
        "deadlines went backwards: {deadlines:?}"
    );
    assert_eq!(renewer.valid_until(), deadlines.last().copied());

    renewer.stop().await;
    let after_stop = reported.lock().unwrap().len();
    c.wait_for("the stopped lease to expire", WAIT, async || {
        match client.lease_ttl(id).await {
            Err(e) if e.code() == Some(Code::NotFound) => Ok(()),
            Err(e) => bail!("{e}"),
            Ok(_) => bail!("lease {id} still alive"),
        }
    })
    .await;
    assert_eq!(
        reported.lock().unwrap().len(),
        after_stop,
        "a stopped renewer reported a renewal"
    );
}
