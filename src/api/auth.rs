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

/// The bearer tokens members accept instead of a client certificate (from the
/// `[tls]` token files; the same on every member).
#[derive(Default)]
pub struct Tokens {
    pub admin: Option<String>,
    pub read: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(<redacted>)")
    }
}

impl Tokens {
    /// The role of the bearer token `req` carries, if it is one of ours.
    fn identity<T>(&self, req: &Request<T>) -> Option<Identity> {
        use subtle::ConstantTimeEq;
        let given = req
            .metadata()
            .get("authorization")?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .trim();
        let matches = |want: &Option<String>| {
            want.as_deref().is_some_and(|w| {
                w.len() == given.len() && bool::from(w.as_bytes().ct_eq(given.as_bytes()))
            })
        };
        let role = if matches(&self.admin) {
            Role::Admin
        } else if matches(&self.read) {
            Role::Read
        } else {
            return None;
        };
        Some(Identity {
            name: format!("token:{}", role.unit()),
            role,
        })
    }
}

/// Checks `req` against `need` when `required`; the identity it runs as: the
/// client certificate's, else a bearer token's.
pub fn check<T>(
    req: &Request<T>,
    need: Need,
    required: bool,
    tokens: &Tokens,
) -> Result<Option<Identity>, Status> {
    if !required {
        return Ok(None);
    }
    let Some(who) = effective(req).or_else(|| tokens.identity(req)) else {
        return Err(Status::unauthenticated(
            "this cluster requires a client certificate from its CA: pass --ca, --cert and \
             --key to `pgquorum ctl` (or PGQUORUM_CA/PGQUORUM_CERT/PGQUORUM_KEY); an operator \
             gets one with `pgquorum certs issue NAME --role admin` (or --role read); or \
             --token-file with the members' [tls] admin_token_file",
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
        assert!(check(&read, Need::Read, true, &Tokens::default()).is_ok());
        assert_eq!(
            check(&read, Need::Write, true, &Tokens::default())
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        let admin = req(id("alice", Role::Admin), None);
        assert!(check(&admin, Need::Write, true, &Tokens::default()).is_ok());
        let none = req(None, None);
        assert_eq!(
            check(&none, Need::Read, true, &Tokens::default())
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert!(
            check(&none, Need::Write, false, &Tokens::default()).is_ok(),
            "insecure: unchecked"
        );
    }

    #[test]
    fn a_bearer_token_stands_in_for_a_certificate_with_its_role() {
        let tokens = Tokens {
            admin: Some("adm-tok".into()),
            read: Some("read-tok".into()),
        };
        let with = |t: &str| {
            let mut r = req(None, None);
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
            r
        };
        assert!(check(&with("adm-tok"), Need::Write, true, &tokens).is_ok());
        assert_eq!(
            check(&with("read-tok"), Need::Write, true, &tokens)
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert!(check(&with("read-tok"), Need::Read, true, &tokens).is_ok());
        assert_eq!(
            check(&with("adm-tok-x"), Need::Read, true, &tokens)
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_forwarded_call_keeps_its_callers_role_and_only_members_may_name_one() {
        let fwd = req(id("n2", Role::Node), Some("pgquorum-read:mon"));
        assert_eq!(
            check(&fwd, Need::Write, true, &Tokens::default())
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            check(&fwd, Need::Read, true, &Tokens::default())
                .unwrap()
                .unwrap()
                .name,
            "mon"
        );
        // An operator cannot claim to be someone else.
        let claim = req(id("mon", Role::Read), Some("pgquorum-admin:alice"));
        assert!(check(&claim, Need::Write, true, &Tokens::default()).is_err());
        let own = req(id("n2", Role::Node), None);
        assert!(check(&own, Need::Write, true, &Tokens::default()).is_ok());
    }
}
