//! Who may become the next primary, judged from a member's published status: the
//! one rule `decide` (failover ranking, switchover target) and `ctl switchover`
//! (refusing a named candidate at once) share. Lag and the cold-start wait are
//! judged by the candidate itself when it takes over (`decide::no_leader`).

use std::fmt;

use super::model::{MemberStatus, PgRunState, Role, SyncState};

/// Why a member may not take over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ineligible {
    /// Not a running replica (primary, stopped, starting, hung).
    NotARunningReplica,
    NoFailoverTag,
    /// Synchronous mode and other members (or none) are the recorded standbys.
    NotTheSyncStandby {
        recorded: Vec<String>,
    },
    /// On an older timeline than the last primary's.
    OlderTimeline {
        member: u64,
        primary: u64,
    },
    /// Its `pre_promote` callback vetoed a promotion within the last ttl.
    PrePromoteVetoed,
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::NotARunningReplica => write!(f, "it is not a running replica"),
            Ineligible::NoFailoverTag => write!(f, "it is tagged nofailover"),
            Ineligible::PrePromoteVetoed => {
                write!(
                    f,
                    "its pre_promote callback vetoed a promotion within the last ttl"
                )
            }
            Ineligible::NotTheSyncStandby { recorded } if !recorded.is_empty() => write!(
                f,
                "synchronous mode: only the recorded synchronous standbys ({}) hold every \
                 acknowledged commit",
                recorded.join(", ")
            ),
            Ineligible::NotTheSyncStandby { .. } => write!(
                f,
                "synchronous mode: no synchronous standby is recorded yet, so no member \
                 provably holds every acknowledged commit"
            ),
            Ineligible::OlderTimeline { member, primary } => write!(
                f,
                "it is on timeline {member}, older than the primary's {primary}"
            ),
        }
    }
}

/// `None` when `m` may take over: a running replica, not tagged `nofailover`, in
/// synchronous mode the standby recorded in `sync`, and not on an older timeline
/// than the last primary's (`timeline`).
pub fn cannot_take_over(
    m: &MemberStatus,
    synchronous_mode: bool,
    sync: Option<&SyncState>,
    timeline: Option<u64>,
) -> Option<Ineligible> {
    if m.role != Role::Replica || m.state != PgRunState::Running {
        return Some(Ineligible::NotARunningReplica);
    }
    if m.tags.never_promoted() {
        return Some(Ineligible::NoFailoverTag);
    }
    if m.pre_promote_vetoed {
        return Some(Ineligible::PrePromoteVetoed);
    }
    if synchronous_mode && !sync.is_some_and(|s| s.holds(&m.name) || last_primary_alone(s, &m.name))
    {
        return Some(Ineligible::NotTheSyncStandby {
            recorded: sync.map(|s| s.sync_standby.clone()).unwrap_or_default(),
        });
    }
    if let Some(t) = timeline
        && m.timeline < t
    {
        return Some(Ineligible::OlderTimeline {
            member: m.timeline,
            primary: t,
        });
    }
    None
}

/// `name` is the primary that recorded "no synchronous standby" (`/pg/sync` with
/// its name and none): it acknowledged commits alone, so it holds every one of them,
/// and nobody can have been promoted after it wrote that (no member was eligible,
/// and a new primary's first record names itself). It may take over again, as in
/// Patroni, where the leader named in `/sync` stays a candidate; without this, a
/// primary whose standby had left and whose lease then lapsed (a pause, a restart)
/// left the cluster without a primary for good.
pub fn last_primary_alone(sync: &SyncState, name: &str) -> bool {
    sync.leader == name && sync.sync_standby.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tags;

    fn replica(name: &str, timeline: u64) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            role: Role::Replica,
            state: PgRunState::Running,
            pg_addr: format!("{name}:5432"),
            api_url: String::new(),
            timeline,
            receive_lsn: 100,
            replay_lsn: 100,
            following: Some("a".into()),
            tags: Tags::default(),
            sync_standby: false,
            node_id: 0,
            paused: false,
            pending_restart: false,
            pre_promote_vetoed: false,
            version: String::new(),
            server_version: None,
        }
    }

    #[test]
    fn the_rules_in_order() {
        let sync_b = SyncState {
            leader: "a".into(),
            sync_standby: vec!["b".into()],
        };
        let b = replica("b", 2);
        assert_eq!(cannot_take_over(&b, false, None, Some(2)), None);
        assert_eq!(cannot_take_over(&b, true, Some(&sync_b), Some(2)), None);
        // With synchronous_node_count = 2 each recorded standby holds every commit.
        let sync_bc = SyncState {
            leader: "a".into(),
            sync_standby: vec!["b".into(), "c".into()],
        };
        assert_eq!(cannot_take_over(&b, true, Some(&sync_bc), None), None);
        assert_eq!(
            cannot_take_over(&replica("c", 2), true, Some(&sync_bc), None),
            None
        );
        assert_eq!(
            cannot_take_over(&replica("d", 2), true, Some(&sync_bc), None),
            Some(Ineligible::NotTheSyncStandby {
                recorded: vec!["b".into(), "c".into()]
            })
        );
        let c = replica("c", 2);
        assert_eq!(
            cannot_take_over(&c, true, Some(&sync_b), None),
            Some(Ineligible::NotTheSyncStandby {
                recorded: vec!["b".into()]
            })
        );
        assert_eq!(
            cannot_take_over(&c, true, None, None),
            Some(Ineligible::NotTheSyncStandby { recorded: vec![] })
        );
        // The primary that went on alone holds every commit it acknowledged.
        let alone_c = SyncState {
            leader: "c".into(),
            sync_standby: vec![],
        };
        assert_eq!(cannot_take_over(&c, true, Some(&alone_c), None), None);
        assert_eq!(
            cannot_take_over(&b, true, Some(&alone_c), None),
            Some(Ineligible::NotTheSyncStandby { recorded: vec![] })
        );
        assert_eq!(
            cannot_take_over(&replica("d", 1), false, None, Some(2)),
            Some(Ineligible::OlderTimeline {
                member: 1,
                primary: 2
            })
        );
        let mut hung = replica("e", 2);
        hung.state = PgRunState::Starting;
        assert_eq!(
            cannot_take_over(&hung, false, None, None),
            Some(Ineligible::NotARunningReplica)
        );
        let mut tagged = replica("f", 2);
        tagged.tags.nofailover = true;
        assert_eq!(
            cannot_take_over(&tagged, false, None, None),
            Some(Ineligible::NoFailoverTag)
        );
        let mut vetoed = replica("g", 2);
        vetoed.pre_promote_vetoed = true;
        assert_eq!(
            cannot_take_over(&vetoed, false, None, None),
            Some(Ineligible::PrePromoteVetoed)
        );
    }
}
