//! `ctl dsn`: a libpq multi-host connection string for the cluster's members, with
//! `target_session_attrs` choosing the role, so a client finds the primary (or a
//! replica) by itself after a failover.

use crate::ha::model::{ClusterView, Role};

/// Which member a client connecting with the string ends up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsnRole {
    /// `target_session_attrs=read-write`.
    Primary,
    /// `target_session_attrs=standby` (libpq 14 or newer).
    Replica,
    Any,
}

/// `host=a,b,c port=1,2,3 target_session_attrs=…`; members in the order a client
/// should try them (the wanted role first, as the store last saw it). `None` when no
/// member has published a PostgreSQL address.
pub fn dsn(view: &ClusterView, role: DsnRole, dbname: Option<&str>) -> Option<String> {
    let mut members: Vec<(bool, &str, String, u16)> = view
        .members
        .values()
        .filter_map(|m| {
            let (host, port) = crate::hostport::parse(&m.pg_addr)?;
            let first = match role {
                DsnRole::Primary => view.leader.as_deref() == Some(m.name.as_str()),
                DsnRole::Replica => m.role == Role::Replica,
                DsnRole::Any => true,
            };
            Some((!first, m.name.as_str(), host, port))
        })
        .collect();
    if members.is_empty() {
        return None;
    }
    members.sort();
    let hosts: Vec<&str> = members.iter().map(|m| m.2.as_str()).collect();
    let ports: Vec<String> = members.iter().map(|m| m.3.to_string()).collect();
    let attrs = match role {
        DsnRole::Primary => "read-write",
        DsnRole::Replica => "standby",
        DsnRole::Any => "any",
    };
    let mut s = format!(
        "host={} port={} target_session_attrs={attrs} connect_timeout=2",
        hosts.join(","),
        ports.join(",")
    );
    if let Some(db) = dbname {
        s.push_str(&format!(" dbname={db}"));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::model::MemberStatus;

    fn member(name: &str, addr: &str, role: Role) -> MemberStatus {
        MemberStatus {
            pg_addr: addr.into(),
            ..MemberStatus::running(name, role, 0)
        }
    }

    #[test]
    fn the_wanted_role_comes_first_and_ipv6_hosts_lose_their_brackets() {
        let mut v = ClusterView::default();
        for m in [
            member("a", "10.0.0.1:5432", Role::Replica),
            member("b", "[::1]:5433", Role::Primary),
            member("c", "10.0.0.3:5434", Role::Replica),
        ] {
            v.members.insert(m.name.clone(), m);
        }
        v.leader = Some("b".into());
        assert_eq!(
            dsn(&v, DsnRole::Primary, None).unwrap(),
            "host=::1,10.0.0.1,10.0.0.3 port=5433,5432,5434 target_session_attrs=read-write connect_timeout=2"
        );
        assert_eq!(
            dsn(&v, DsnRole::Replica, Some("app")).unwrap(),
            "host=10.0.0.1,10.0.0.3,::1 port=5432,5434,5433 target_session_attrs=standby connect_timeout=2 dbname=app"
        );
        assert_eq!(dsn(&ClusterView::default(), DsnRole::Any, None), None);
    }
}
