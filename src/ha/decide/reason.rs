//! Why a decision was taken: one variant per situation, shown in the log every time
//! it changes.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    StoreUnreachablePrimaryKeeps,
    StoreUnreachableNoLease,
    StoreUnreachable,
    Paused,
    InvalidDataDir(String),
    /// The data dir cannot be read, but PostgreSQL answers as primary: keep leading.
    UnreadableDataDirPrimaryKeeps(String),
    ForeignPostmaster(i32),
    ForeignSystemId {
        ours: u64,
        cluster: u64,
    },
    LostBootstrap,
    SwitchingOver(String),
    SwitchoverNoCandidate,
    /// Keeping this member's own lease from before a restart.
    TakingBackLease(u64),
    /// pg_rewind failed on this data dir: moving it aside and cloning anew.
    RecloningAfterFailedRewind(String),
    SwitchoverInProgress(String),
    /// A switchover from this primary is scheduled for these Unix seconds.
    SwitchoverScheduled(u64),
    /// An operator asked for a failover to this member (forced: rules waived).
    ManualFailover {
        forced: bool,
    },
    /// Restarting PostgreSQL as an operator asked; the primary keeps its lease.
    RestartingPrimary,
    RestartingReplica,
    /// Re-cloning from the primary, as an operator asked (`ctl reinit`).
    Reinitializing(String),
    /// An operator asked for a failover to another member.
    FailoverInProgress(String),
    /// The primary hangs: killed, then the lease released.
    PrimaryHung(String),
    PrimaryHungPaused(String),
    /// The primary does not answer yet; killed once this lasts the timeout (ms).
    PrimaryNotAnswering(u64),
    /// This member's PostgreSQL hangs (not the leader): no candidate, no reads.
    MemberHung(String),
    SyncStandbyReplaced {
        standby: String,
        by: String,
        why: &'static str,
    },
    SyncStandbyDropped {
        standby: String,
        why: &'static str,
    },
    SyncStandbyStrictWait {
        standby: String,
        why: &'static str,
    },
    SyncStandbyShrunk {
        standby: String,
        why: &'static str,
        remaining: String,
    },
    BootstrapTakeLease,
    Bootstrapping,
    RecordingSystemId,
    WaitingForBootstrap(String),
    HealthyPrimary,
    StartingPrimary,
    PrimaryStartTimedOut,
    PrimaryDataMissing,
    Promoting,
    /// `pre_promote` vetoed the promotion: the lease goes back, the member stays a replica.
    PrePromoteVetoed,
    PrimaryWithoutLease,
    Demoting(String),
    Cloning(String),
    Rewinding(String),
    StartingReplica(String),
    Refollowing(String),
    HealthyReplica(String),
    DivergedReplica(String),
    ReplicaStarting(String),
    TakingOver,
    NotEligible(&'static str),
    WaitingForBetterCandidate(String),
    WaitingForMemberAtOptime,
    WaitingForMembersAfterStart,
    NoDataNoLeader,
    StandbyForElection,
}

impl Reason {
    /// The variant's name, e.g. `HoldLease`: a stable label for counting decisions
    /// (the `Display` text carries the details).
    pub fn kind(&self) -> String {
        variant_name(self)
    }
}

/// The name of `v`'s enum variant: its `Debug` text up to the first field.
pub(super) fn variant_name(v: &impl fmt::Debug) -> String {
    format!("{v:?}")
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
#[test]
fn kinds_are_variant_names() {
    assert_eq!(Reason::Paused.kind(), "Paused");
    assert_eq!(Reason::ForeignPostmaster(4).kind(), "ForeignPostmaster");
    assert_eq!(
        Reason::InvalidDataDir("x y".into()).kind(),
        "InvalidDataDir"
    );
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Reason::*;
        match self {
            StoreUnreachablePrimaryKeeps => write!(
                f,
                "store unreachable; primary keeps running until its lease deadline"
            ),
            StoreUnreachableNoLease => write!(
                f,
                "store unreachable and the lease is no longer valid: fencing the primary"
            ),
            StoreUnreachable => write!(f, "store unreachable; no change"),
            Paused => write!(f, "cluster is paused: no automatic actions"),
            InvalidDataDir(why) => write!(
                f,
                "PostgreSQL data dir is unusable ({why}); not touching it"
            ),
            UnreadableDataDirPrimaryKeeps(why) => write!(
                f,
                "PostgreSQL data dir reads as unusable ({why}) but PostgreSQL answers as primary; keeping the lease"
            ),
            ForeignPostmaster(pid) => write!(
                f,
                "a PostgreSQL server pgquorum did not start (pid {pid}) runs on the data dir: it is outside the fence and may accept writes, stopping it (no lease is taken or released until it is gone)"
            ),
            ForeignSystemId { ours, cluster } => write!(
                f,
                "data dir has system identifier {ours} but the cluster's is {cluster}; refusing to join (move the data dir aside to re-clone)"
            ),
            SwitchingOver(to) => write!(
                f,
                "switchover requested: stopping cleanly and handing the lease to {to}"
            ),
            SwitchoverNoCandidate => write!(
                f,
                "switchover requested but no eligible replica is streaming; staying primary"
            ),
            SwitchoverInProgress(to) => write!(f, "switchover in progress to {to}"),
            SwitchoverScheduled(at) => write!(
                f,
                "healthy primary; a switchover is scheduled at {at} (Unix seconds)"
            ),
            ManualFailover { forced: false } => write!(
                f,
                "manual failover requested to this member: taking over (the failover rules hold)"
            ),
            ManualFailover { forced: true } => write!(
                f,
                "forced manual failover requested to this member: taking over although the \
                 failover rules would not allow it (the operator accepted the risk)"
            ),
            FailoverInProgress(to) => write!(f, "manual failover in progress to {to}"),
            RestartingPrimary => write!(
                f,
                "restart requested: restarting the primary in place under its lease (fence armed)"
            ),
            RestartingReplica => write!(f, "restart requested: restarting this replica"),
            Reinitializing(l) => write!(
                f,
                "reinit requested: re-cloning the data dir from {l} (the old one is kept aside unless discard_old)"
            ),
            TakingBackLease(id) => write!(
                f,
                "the leader key still names this member (lease {id}, from before a restart): keeping it"
            ),
            RecloningAfterFailedRewind(l) => write!(
                f,
                "pg_rewind failed on this data dir: moving it aside (kept) and cloning anew from {l}"
            ),
            PrimaryHung(why) => write!(
                f,
                "PostgreSQL hangs ({why}): killing its process group, then releasing the leader lease"
            ),
            PrimaryHungPaused(why) => write!(
                f,
                "cluster is paused: PostgreSQL hangs ({why}) but nothing is killed; resume to let pgquorum fail over"
            ),
            PrimaryNotAnswering(0) => write!(
                f,
                "PostgreSQL does not answer; keeping the leader lease (hang detection is off: primary_hang_timeout_ms = 0)"
            ),
            PrimaryNotAnswering(ms) => write!(
                f,
                "PostgreSQL does not answer; keeping the leader lease, and killing it if this lasts {ms} ms (primary_hang_timeout_ms)"
            ),
            MemberHung(why) => write!(
                f,
                "PostgreSQL hangs ({why}): not a failover candidate or synchronous standby, not serving reads"
            ),
            SyncStandbyReplaced { standby, by, why } => write!(
                f,
                "synchronous standby {standby} {why}: un-recorded, {by} becomes the synchronous standby"
            ),
            SyncStandbyDropped { standby, why } => write!(
                f,
                "synchronous standby {standby} {why} and no other standby streams: un-recorded, commits no longer wait (synchronous_mode_strict keeps them waiting instead)"
            ),
            SyncStandbyShrunk {
                standby,
                why,
                remaining,
            } => write!(
                f,
                "synchronous standby {standby} {why} and no other standby can replace it: un-recorded, commits wait for {remaining} only"
            ),
            SyncStandbyStrictWait { standby, why } => write!(
                f,
                "synchronous standby {standby} {why} and no other standby streams: synchronous_mode_strict, commits keep waiting for it"
            ),
            LostBootstrap => write!(
                f,
                "this member's interrupted bootstrap lost to another member's: setting its data dir aside to clone"
            ),
            BootstrapTakeLease => write!(
                f,
                "cluster not initialized: taking the leader lease to bootstrap"
            ),
            Bootstrapping => write!(f, "holding the lease: bootstrapping a new cluster"),
            RecordingSystemId => write!(f, "recording the new cluster's system identifier"),
            WaitingForBootstrap(l) => write!(f, "waiting for {l} to bootstrap the cluster"),
            HealthyPrimary => write!(f, "healthy primary holding the leader lease"),
            StartingPrimary => write!(f, "holding the lease: starting PostgreSQL as primary"),
            PrimaryStartTimedOut => {
                write!(f, "PostgreSQL did not start in time: releasing the lease")
            }
            PrimaryDataMissing => write!(
                f,
                "holding the lease but the data dir is empty: releasing the lease"
            ),
            Promoting => write!(f, "acquired the leader lease: promoting"),
            PrePromoteVetoed => write!(
                f,
                "pre_promote vetoed the promotion: releasing the leader lease and staying a replica for one ttl"
            ),
            PrimaryWithoutLease => write!(f, "running as primary without a valid lease: fencing"),
            Demoting(l) => write!(f, "{l} holds the leader lease: demoting"),
            Cloning(l) => write!(f, "no data: cloning from {l}"),
            Rewinding(l) => write!(
                f,
                "former primary: rewinding against {l} before following it"
            ),
            StartingReplica(l) => write!(f, "starting as a replica of {l}"),
            Refollowing(l) => write!(f, "replica follows the wrong upstream: switching to {l}"),
            HealthyReplica(l) => write!(f, "healthy replica streaming from {l}"),
            DivergedReplica(l) => write!(
                f,
                "replica cannot stream from {l}'s newer timeline (it diverged): rewinding"
            ),
            ReplicaStarting(l) => write!(f, "replica of {l} is starting"),
            TakingOver => write!(
                f,
                "no leader: this member is the best candidate, acquiring the lease"
            ),
            NotEligible(why) => write!(f, "no leader, and this member may not take over: {why}"),
            WaitingForBetterCandidate(m) => {
                write!(f, "no leader: waiting for the better candidate {m}")
            }
            WaitingForMemberAtOptime => write!(
                f,
                "no leader: behind the last known primary position, giving members at it time to appear"
            ),
            WaitingForMembersAfterStart => write!(
                f,
                "no leader since start-up: giving every member one ttl to report its position"
            ),
            NoDataNoLeader => write!(
                f,
                "no leader and no data: waiting for a primary to clone from"
            ),
            StandbyForElection => write!(
                f,
                "no leader: starting PostgreSQL as a standby to take part in the election"
            ),
        }
    }
}
