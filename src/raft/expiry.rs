//! The lease expiry loop, run on every member, acting only on the Raft leader.
//!
//! Each pass: confirm leadership with a read-index round (which also waits until
//! everything committed is applied), then propose `LeaseExpire{id, renewed_at}`
//! for each lease the local clock says ran out. The proposal is a compare on
//! `renewed_at`, so a renewal that commits first always wins; a deposed leader's
//! proposal can never commit. Followers keep stamping renewals but never expire.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::raft::ReadPolicy;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::Raft;
use super::sm_store::LeaseSignal;
use crate::store::{Command, Lessor};

/// Stamps lease updates with this member's monotonic clock as they are applied.
pub async fn run_stamper(lessor: Arc<Mutex<Lessor>>, mut rx: mpsc::UnboundedReceiver<LeaseSignal>) {
    while let Some(sig) = rx.recv().await {
        let now = Instant::now();
        let mut l = lessor.lock().expect("lock");
        match sig {
            LeaseSignal::Update(u) => l.observe(&u, now),
            LeaseSignal::Reset(leases) => l.reset(leases.iter(), now),
        }
    }
}

pub async fn run_expiry(
    raft: Raft,
    lessor: Arc<Mutex<Lessor>>,
    interval: Duration,
    timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if !raft.is_leader() {
            continue;
        }
        let candidates = lessor.lock().expect("lock").expired(Instant::now());
        if candidates.is_empty() {
            continue;
        }
        // etcd #15247: a leader that was blocked may already be deposed.
        match tokio::time::timeout(timeout, raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
            Ok(Ok(_)) => {}
            _ => continue,
        }
        // Re-read: the read-index round waited for pending applies.
        let expired = lessor.lock().expect("lock").expired(Instant::now());
        for (id, renewed_at) in expired {
            let cmd = Command::LeaseExpire { id, renewed_at };
            match tokio::time::timeout(timeout, raft.client_write(cmd)).await {
                Ok(Ok(r)) => {
                    tracing::info!(lease = id, renewed_at, outcome = %r.data, "lease expired")
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = id, error = %e, "could not propose lease expiry");
                    break;
                }
                Err(_) => {
                    tracing::warn!(lease = id, "lease expiry proposal timed out");
                    break;
                }
            }
        }
    }
}
