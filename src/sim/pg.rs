//! Simulated PostgreSQL: what the safety properties depend on and nothing else.
//!
//! WAL is a list of commit ids, each appended by exactly one primary; a standby
//! copies a prefix of its upstream's list. Two histories agree up to position `k`
//! exactly when their `k`-th ids are equal (ids are unique and every history is a
//! copied prefix plus its own appends), which makes "is a prefix of" O(1).

use std::collections::BTreeMap;

/// One instance (its data dir survives crashes; the processes do not).
#[derive(Clone, Debug, Default)]
pub(crate) struct SimPg {
    /// `None`: no data dir yet.
    pub system_id: Option<u64>,
    pub running: bool,
    /// Accepts connections from this instant on (start and crash recovery take time).
    pub ready_at: u64,
    pub primary: bool,
    pub timeline: u64,
    pub wal: Vec<u64>,
    /// Last run as a primary (no standby.signal): must be rewound before following.
    pub was_primary: bool,
    /// Started as primary or promoted, and has not stopped since.
    pub writable_possible: bool,
    /// `synchronous_standby_names`: commits wait for all of them.
    pub sync_names: Vec<String>,
    /// Primary: each standby's (last contact, flush position, when it last moved).
    pub seen: BTreeMap<String, (u64, usize, u64)>,
    /// Replica: the node it streams from.
    pub upstream: Option<usize>,
    /// Replica: last instant it received from its upstream.
    pub streamed_at: Option<u64>,
    /// Primary: positions (1-based) of commits waiting for the synchronous standbys.
    pub waiting: Vec<usize>,
    /// This data dir comes from a bootstrap not yet recorded in the store.
    pub unrecorded_bootstrap: bool,
    /// Every process stopped (storage that stopped answering, SIGSTOP) since this
    /// instant: it answers nothing and commits nothing until it resumes, then goes
    /// on as it was (a primary accepts writes again).
    pub frozen_since: Option<u64>,
}

/// How long a standby counts as connected after its last contact.
pub(super) const STREAM_TIMEOUT_US: u64 = 300_000;

impl SimPg {
    pub fn accepting(&self, now: u64) -> bool {
        self.running && now >= self.ready_at && self.frozen_since.is_none()
    }

    /// Accepts writes at `now`.
    pub fn writable(&self, now: u64) -> bool {
        self.accepting(now) && self.primary
    }

    /// `self.wal` is a prefix of `other`.
    pub fn is_prefix_of(&self, other: &[u64]) -> bool {
        let k = self.wal.len();
        k == 0 || (k <= other.len() && other[k - 1] == self.wal[k - 1])
    }

    /// The longest common prefix with `other`.
    pub fn common_prefix(&self, other: &[u64]) -> usize {
        let mut k = self.wal.len().min(other.len());
        while k > 0 && other[k - 1] != self.wal[k - 1] {
            k -= 1;
        }
        k
    }

    /// Processes gone (crash, kill, stop): nothing waiting is acknowledged.
    pub fn halt(&mut self) {
        self.running = false;
        self.frozen_since = None;
        self.writable_possible = false;
        self.waiting.clear();
        self.seen.clear();
        self.upstream = None;
        self.streamed_at = None;
    }

    /// The standbys connected now: (name, PostgreSQL treats it as synchronous).
    pub fn streaming(&self, now: u64) -> Vec<(String, bool)> {
        self.seen
            .iter()
            .filter(|(_, (t, _, _))| now.saturating_sub(*t) <= STREAM_TIMEOUT_US)
            .map(|(n, _)| (n.clone(), self.sync_names.contains(n)))
            .collect()
    }
}
