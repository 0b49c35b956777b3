//! Who may call what on the gRPC port. With TLS on (a `[tls]` section), every call
//! needs a client certificate of the cluster CA: `pgquorum-read` may read
//! (`status`, `range`, `watch`, a lease's time to live), `pgquorum-admin` and
//! members (`pgquorum-node`) may also write. Raft's own RPCs need a member's
//! certificate whose name is the member the message claims to come from
//! (`raft/network.rs`). Without TLS (`insecure = true`) nothing is checked.
//!
//! A member forwarding a call to the Raft leader authenticates as itself and names
//! the caller it checked in [`CALLER`]; the leader honours that header only from a
//! member, so the caller's role holds on the leader too.

use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

use crate::tls::{ConnInfo, Identity, Role};

/// Metadata a forwarding member sets: `ROLE-UNIT:NAME` of the original caller.
pub const CALLER: &str = "x-pgquorum-caller";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

/// The identity the call runs as: the certificate's, or for a member's forwarded
/// call the caller it names.
fn effective<T>(req: &Request<T>) -> Option<Identity> {
    let own = req.extensions().get::<ConnInfo>()?.identity.clone()?;
    if own.role != Role::Node {
        return Some(own);
    }
    let named = req
        .metadata()
        .get(CALLER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(':'))
        .and_then(|(unit, name)| {
            Some(Identity {
                name: name.to_owned(),
                role: Role::from_unit(unit)?,
            })
        });
    Some(named.unwrap_or(own))
}

/// Checks `req` against `need` when `required`; the identity it runs as.
pub fn check<T>(req: &Request<T>, need: Need, required: bool) -> Result<Option<Identity>, Status> {
    if !required {
        return Ok(None);
    }
    let Some(who) = effective(req) else {
        return Err(Status::unauthenticated(
            "this cluster requires a client certificate from its CA: pass --ca, --cert and \
             --key to `pgquorum ctl` (or PGQUORUM_CA/PGQUORUM_CERT/PGQUORUM_KEY); an operator \
             gets one with `pgquorum certs issue NAME --role admin` (or --role read)",
        ));
    };
    if need == Need::Write && !who.role.may_write() {
        return Err(Status::permission_denied(format!(
            "{} has the read-only role ({}); this call changes the cluster and needs a \
             certificate issued with --role admin",
            who.name,
            who.role.unit()
        )));
    }
    Ok(Some(who))
}

/// Names `who` on a request this member forwards to the leader.
pub fn name_caller<T>(r: &mut Request<T>, who: Option<&Identity>) {
    if let Some(who) = who
        && let Ok(v) = MetadataValue::try_from(format!("{}:{}", who.role.unit(), who.name))
    {
        r.metadata_mut().insert(CALLER, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(identity: Option<Identity>, caller: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        r.extensions_mut().insert(ConnInfo {
            remote: "127.0.0.1:1".parse().unwrap(),
            identity,
            tls: true,
        });
        if let Some(c) = caller {
            r.metadata_mut().insert(CALLER, c.parse().unwrap());
        }
        r
    }

    fn id(name: &str, role: Role) -> Option<Identity> {
        Some(Identity {
            name: name.into(),
            role,
        })
    }

    #[test]
    fn roles_decide_reads_and_writes() {
        let read = req(id("mon", Role::Read), None);
        assert!(check(&read, Need::Read, true).is_ok());
        assert_eq!(
            check(&read, Need::Write, true).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let admin = req(id("alice", Role::Admin), None);
        assert!(check(&admin, Need::Write, true).is_ok());
        let none = req(None, None);
        assert_eq!(
            check(&none, Need::Read, true).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(
            check(&none, Need::Write, false).is_ok(),
            "insecure: unchecked"
        );
    }

    #[test]
    fn a_forwarded_call_keeps_its_callers_role_and_only_members_may_name_one() {
        let fwd = req(id("n2", Role::Node), Some("pgquorum-read:mon"));
        assert_eq!(
            check(&fwd, Need::Write, true).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(check(&fwd, Need::Read, true).unwrap().unwrap().name, "mon");
        // An operator cannot claim to be someone else.
        let claim = req(id("mon", Role::Read), Some("pgquorum-admin:alice"));
        assert!(check(&claim, Need::Write, true).is_err());
        let own = req(id("n2", Role::Node), None);
        assert!(check(&own, Need::Write, true).is_ok());
    }
}
