//! Which callbacks a cycle owes, from the actions it carried out: the rule, pure;
//! `postgres::callbacks` runs them.
//!
//! Patroni's events and arguments (`CMD ACTION ROLE CLUSTER`): `on_start` and
//! `on_stop` with the role PostgreSQL starts or stopped as; `on_restart` alone for
//! a restart (its stop and start owe nothing else); `on_reload`; `on_role_change`
//! instead of `on_start` when PostgreSQL starts in another role than it last ran
//! with (a demoted primary coming back as a replica), and after a promotion.

use crate::ha::decide::Action;
use crate::ha::model::{RequestKind, Role};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    OnStart,
    OnStop,
    OnRestart,
    OnReload,
    OnRoleChange,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::OnStart => "on_start",
            Event::OnStop => "on_stop",
            Event::OnRestart => "on_restart",
            Event::OnReload => "on_reload",
            Event::OnRoleChange => "on_role_change",
        }
    }
}

/// The role argument: Patroni 3's names.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Primary => "primary",
        Role::Replica => "replica",
        Role::Uninitialized => "uninitialized",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Callback {
    pub event: Event,
    pub role: Role,
}

/// The callbacks owed for `done` (the actions of one cycle that succeeded, in
/// order), given the role PostgreSQL last ran with (`None`: unknown, e.g. nothing
/// ran since pgquorum started). Returns them and the role it last ran with after.
pub fn owed(done: &[Action], last_role: Option<Role>) -> (Vec<Callback>, Option<Role>) {
    let restart = done.contains(&Action::FinishRequest(RequestKind::Restart));
    let mut role = last_role;
    let mut out = Vec::new();
    let mut emit = |event, role: Option<Role>| {
        out.push(Callback {
            event,
            role: role.unwrap_or(Role::Uninitialized),
        })
    };
    for a in done {
        let started = match a {
            Action::StartPrimary | Action::Promote => Some(Role::Primary),
            Action::StartReplica { .. } | Action::Follow { .. } => Some(Role::Replica),
            _ => None,
        };
        if let Some(new) = started {
            let changed = role.is_some_and(|r| r != new);
            match a {
                Action::Promote => emit(Event::OnRoleChange, Some(new)),
                _ if changed => emit(Event::OnRoleChange, Some(new)),
                // Re-pointing a replica at another primary starts nothing new.
                Action::Follow { .. } => {}
                _ if !restart => emit(Event::OnStart, Some(new)),
                _ => {}
            }
            role = Some(new);
            continue;
        }
        match a {
            Action::Stop(_) if !restart => emit(Event::OnStop, role),
            Action::FinishRequest(RequestKind::Restart) => emit(Event::OnRestart, role),
            Action::FinishRequest(RequestKind::Reload) => emit(Event::OnReload, role),
            _ => {}
        }
    }
    (out, role)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop::StopKind;

    fn cb(event: Event, role: Role) -> Callback {
        Callback { event, role }
    }

    #[test]
    fn the_callbacks_each_sequence_owes() {
        let leader = || "n1".to_string();
        let p = Some(Role::Primary);
        let r = Some(Role::Replica);
        // (name, actions done, role before, callbacks owed, role after)
        type Case = (
            &'static str,
            Vec<Action>,
            Option<Role>,
            Vec<Callback>,
            Option<Role>,
        );
        let cases: Vec<Case> = vec![
            (
                "bootstrap start",
                vec![Action::RenewLease, Action::StartPrimary],
                None,
                vec![cb(Event::OnStart, Role::Primary)],
                p,
            ),
            (
                "replica start",
                vec![Action::StartReplica {
                    leader: Some(leader()),
                }],
                None,
                vec![cb(Event::OnStart, Role::Replica)],
                r,
            ),
            (
                "promotion",
                vec![Action::RenewLease, Action::Promote, Action::RenewLease],
                r,
                vec![cb(Event::OnRoleChange, Role::Primary)],
                p,
            ),
            (
                "stop",
                vec![Action::Stop(StopKind::Fast), Action::ReleaseLease],
                p,
                vec![cb(Event::OnStop, Role::Primary)],
                p,
            ),
            (
                "demoted primary starts as a replica",
                vec![Action::StartReplica {
                    leader: Some(leader()),
                }],
                p,
                vec![cb(Event::OnRoleChange, Role::Replica)],
                r,
            ),
            (
                "replica follows a new primary",
                vec![Action::Follow { leader: leader() }],
                r,
                vec![],
                r,
            ),
            (
                "primary demoted in place",
                vec![Action::Follow { leader: leader() }],
                p,
                vec![cb(Event::OnRoleChange, Role::Replica)],
                r,
            ),
            (
                "restart",
                vec![
                    Action::RenewLease,
                    Action::Stop(StopKind::Fast),
                    Action::StartPrimary,
                    Action::FinishRequest(RequestKind::Restart),
                ],
                p,
                vec![cb(Event::OnRestart, Role::Primary)],
                p,
            ),
            (
                "reload",
                vec![Action::Reload, Action::FinishRequest(RequestKind::Reload)],
                r,
                vec![cb(Event::OnReload, Role::Replica)],
                r,
            ),
            (
                "nothing",
                vec![Action::RenewLease, Action::PublishOptime],
                p,
                vec![],
                p,
            ),
        ];
        for (what, done, before, want, after) in cases {
            assert_eq!(owed(&done, before), (want, after), "{what}");
        }
    }
}
