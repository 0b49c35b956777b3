//! Test-only switches that bring back safety bugs fixed earlier, one at a time, so
//! the simulator (`crate::sim`) can show that it finds each. In a normal build
//! [`on`] is a constant `false` and the switches compile away; in unit tests a test
//! turns one on for its own thread only.

/// A safety bug that was fixed, and where the switch brings it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub enum Bug {
    /// Every "stop, then release the lease" becomes a bare release, and the
    /// executor's refusal to release while PostgreSQL may be primary is off
    /// (fixed in fbdf1d9: the fence fails closed).
    ReleaseWithoutStop,
    /// The guard shares pgquorum's process group, so a pause of that group freezes
    /// both fencers (fixed in 6237370: the guard runs in a session of its own).
    /// Modelled by the simulator's process pauses.
    GuardInSupervisorGroup,
    /// A standby is recorded as synchronous as soon as PostgreSQL reports it `sync`,
    /// before it holds the commits acknowledged earlier (fixed in 5a5569d).
    SyncRecordedEarly,
    /// A switchover's named candidate takes over without the synchronous record,
    /// timeline, lag and cold-start checks (fixed in fbdf1d9).
    CandidateSkipsRules,
}

#[cfg(test)]
thread_local! {
    static ON: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Turns `bug` on (or all off) for this thread.
#[cfg(test)]
pub fn set(bug: Option<Bug>) {
    ON.with(|c| c.set(bug));
}

#[cfg(test)]
pub fn on(bug: Bug) -> bool {
    ON.with(|c| c.get() == Some(bug))
}

#[cfg(not(test))]
#[inline(always)]
pub const fn on(_bug: Bug) -> bool {
    false
}
