//! Lease expiry bookkeeping, judged by one member's own monotonic clock.
//!
//! Every member feeds this tracker with the lease updates it applies, stamped with
//! its local instant when it saw them; only the Raft leader acts on `expired`.
//! The clock is injected (`now`), so this module does no IO and reads no time.
//!
//! Why a member may expire a lease at `seen + ttl` (argument in src/store/DESIGN.md):
//! a holder relies on a renewal only from the instant it *sent* it, and only once the
//! renewal committed; any member applies that entry after it was sent, so its `seen`
//! instant is no earlier than the holder's send instant, and `seen + ttl` is no
//! earlier than the holder's own deadline. `seen` is only ever moved later (restart,
//! snapshot install), never earlier, which keeps that true.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::state::{Lease, LeaseUpdate};

#[derive(Clone, Debug, PartialEq, Eq)]
struct Tracked {
    ttl: Duration,
    renewed_at: u64,
    seen: Instant,
}

#[derive(Debug, Default)]
pub struct Lessor {
    leases: HashMap<u64, Tracked>,
}

impl Lessor {
    pub fn observe(&mut self, update: &LeaseUpdate, now: Instant) {
        match update {
            LeaseUpdate::Renewed {
                id,
                ttl_ms,
                renewed_at,
            } => {
                self.leases.insert(
                    *id,
                    Tracked {
                        ttl: Duration::from_millis(*ttl_ms),
                        renewed_at: *renewed_at,
                        seen: now,
                    },
                );
            }
            LeaseUpdate::Removed { id } => {
                self.leases.remove(id);
            }
        }
    }

    /// Replaces everything with `leases`, all seen at `now`: used at start-up and
    /// after a snapshot install, when the instants of earlier renewals are unknown
    /// and the only safe assumption is that they just happened.
    pub fn reset<'a>(&mut self, leases: impl IntoIterator<Item = &'a Lease>, now: Instant) {
        self.leases = leases
            .into_iter()
            .map(|l| {
                (
                    l.id,
                    Tracked {
                        ttl: Duration::from_millis(l.ttl_ms),
                        renewed_at: l.renewed_at,
                        seen: now,
                    },
                )
            })
            .collect();
    }

    /// Leases whose time ran out, as `(id, renewed_at)` for a `LeaseExpire` proposal.
    pub fn expired(&self, now: Instant) -> Vec<(u64, u64)> {
        let mut out: Vec<_> = self
            .leases
            .iter()
            .filter(|(_, t)| now >= t.seen + t.ttl)
            .map(|(id, t)| (*id, t.renewed_at))
            .collect();
        out.sort_unstable();
        out
    }

    pub fn remaining(&self, id: u64, now: Instant) -> Option<Duration> {
        self.leases
            .get(&id)
            .map(|t| (t.seen + t.ttl).saturating_duration_since(now))
    }

    /// The earliest instant at which some lease expires, for scheduling the next check.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|t| t.seen + t.ttl).min()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn renewed(id: u64, ttl_ms: u64, at: u64) -> LeaseUpdate {
        LeaseUpdate::Renewed {
            id,
            ttl_ms,
            renewed_at: at,
        }
    }

    #[test]
    fn expires_exactly_at_seen_plus_ttl() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.observe(&renewed(1, 1000, 5), t0);
        assert!(l.expired(t0 + Duration::from_millis(999)).is_empty());
        assert_eq!(l.expired(t0 + Duration::from_millis(1000)), vec![(1, 5)]);
        assert_eq!(
            l.remaining(1, t0 + Duration::from_millis(400)),
            Some(Duration::from_millis(600))
        );
    }

    #[test]
    fn renewal_restarts_the_clock_and_carries_its_token() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.observe(&renewed(1, 1000, 5), t0);
        l.observe(&renewed(1, 1000, 9), t0 + Duration::from_millis(900));
        assert!(l.expired(t0 + Duration::from_millis(1500)).is_empty());
        assert_eq!(l.expired(t0 + Duration::from_millis(1900)), vec![(1, 9)]);
    }

    #[test]
    fn removed_lease_never_expires() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.observe(&renewed(1, 10, 1), t0);
        l.observe(&LeaseUpdate::Removed { id: 1 }, t0);
        assert!(l.expired(t0 + Duration::from_secs(60)).is_empty());
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn reset_treats_every_lease_as_just_renewed() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.observe(&renewed(1, 100, 1), t0);
        let lease = Lease {
            id: 1,
            ttl_ms: 100,
            renewed_at: 1,
            keys: BTreeSet::new(),
        };
        let later = t0 + Duration::from_millis(90);
        l.reset([&lease], later);
        assert!(l.expired(t0 + Duration::from_millis(150)).is_empty());
        assert_eq!(l.next_deadline(), Some(later + Duration::from_millis(100)));
    }
}
