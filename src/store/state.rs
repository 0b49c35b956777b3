//! The replicated state machine: keys, leases and the change history.
//!
//! Invariants:
//! - `apply` is a pure function of (state, log index, command): it reads no clock and
//!   no randomness, so every member reaches the same state from the same log.
//! - Every change to a key bumps the global `revision` by exactly one; a command that
//!   changes nothing leaves it as it is.
//! - A key attached to a lease exists only while the lease exists.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// A command proposed through Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: String,
        value: Vec<u8>,
        /// 0: not attached to a lease.
        lease: u64,
        /// Compare-and-set on the key's mod_revision; `Some(0)` means "must not exist".
        expect_mod_revision: Option<u64>,
        /// Applies only while `guard.key` is attached to `guard.lease`: a write on
        /// behalf of a lease holder (the primary's `/pg/optime`, `/pg/sync`) that
        /// cannot land once the holder was deposed. Absent in older log entries.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guard: Option<LeaseGuard>,
    },
    Delete {
        key: String,
        prefix: bool,
        expect_mod_revision: Option<u64>,
    },
    LeaseGrant {
        ttl_ms: u64,
        /// 0: the lease id is the log index of this entry.
        id: u64,
    },
    LeaseRenew {
        id: u64,
    },
    LeaseRevoke {
        id: u64,
    },
    /// Proposed only by the Raft leader once its own clock says the lease ran out.
    /// `renewed_at` makes it a compare-and-delete: a renewal that committed after
    /// the leader judged the lease expired wins, and the expiry is a no-op.
    LeaseExpire {
        id: u64,
        renewed_at: u64,
    },
}

/// See `Command::Put::guard`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGuard {
    pub key: String,
    pub lease: u64,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, lease, .. } => write!(f, "put {key} lease={lease}"),
            Command::Delete { key, prefix, .. } => write!(f, "delete {key} prefix={prefix}"),
            Command::LeaseGrant { ttl_ms, id } => write!(f, "lease-grant id={id} ttl={ttl_ms}ms"),
            Command::LeaseRenew { id } => write!(f, "lease-renew {id}"),
            Command::LeaseRevoke { id } => write!(f, "lease-revoke {id}"),
            Command::LeaseExpire { id, renewed_at } => {
                write!(f, "lease-expire {id} renewed_at={renewed_at}")
            }
        }
    }
}

/// The outcome of applying one entry. Failures are values, not errors: a failed
/// compare or an unknown lease is a deterministic result every member agrees on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Blank and membership entries.
    #[default]
    None,
    Put {
        revision: u64,
        prev: Option<KeyValue>,
    },
    Deleted {
        revision: u64,
        deleted: u64,
    },
    /// A compare-and-set did not match; `current` is the key as it is.
    CompareFailed {
        revision: u64,
        current: Option<KeyValue>,
    },
    Lease {
        id: u64,
        ttl_ms: u64,
        revision: u64,
    },
    LeaseNotFound {
        id: u64,
    },
    LeaseExists {
        id: u64,
    },
    /// An expiry that lost the race against a renewal.
    LeaseRenewedMeanwhile {
        id: u64,
    },
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    pub lease: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: u64,
    pub ttl_ms: u64,
    /// Log index of the grant or the latest renewal: the expiry fencing token.
    pub renewed_at: u64,
    pub keys: BTreeSet<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key. For deletes, `kv` is the key as it was, with
/// `mod_revision` set to the revision of the delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// What a lease tracker must learn from an applied entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseUpdate {
    /// Granted or renewed: the TTL restarts from when this was applied.
    Renewed {
        id: u64,
        ttl_ms: u64,
        renewed_at: u64,
    },
    Removed {
        id: u64,
    },
}

/// Everything one applied command changed; the persistence layer writes exactly this.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub events: Vec<Event>,
    /// Leases whose record changed (grant, renew, keys attached or detached).
    pub leases_changed: BTreeSet<u64>,
    pub leases_removed: BTreeSet<u64>,
    pub lease_updates: Vec<LeaseUpdate>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub revision: u64,
    pub kv: BTreeMap<String, KeyValue>,
    pub leases: BTreeMap<u64, Lease>,
}

impl State {
    pub fn get(&self, key: &str) -> Option<&KeyValue> {
        self.kv.get(key)
    }

    pub fn range_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KeyValue> + 'a {
        self.kv
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
    }

    /// Applies `cmd`, proposed as the log entry at `index`.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> (Response, Effects) {
        let mut fx = Effects::default();
        let resp = match cmd {
            Command::Put {
                key,
                value,
                lease,
                expect_mod_revision,
                guard,
            } => match guard {
                Some(g)
                    if g.lease == 0 || self.kv.get(&g.key).is_none_or(|kv| kv.lease != g.lease) =>
                {
                    Response::CompareFailed {
                        revision: self.revision,
                        current: self.kv.get(&g.key).cloned(),
                    }
                }
                _ => self.put(key, value, *lease, *expect_mod_revision, &mut fx),
            },
            Command::Delete {
                key,
                prefix,
                expect_mod_revision,
            } => self.delete(key, *prefix, *expect_mod_revision, &mut fx),
            Command::LeaseGrant { ttl_ms, id } => {
                let id = if *id == 0 { index } else { *id };
                match self.leases.entry(id) {
                    std::collections::btree_map::Entry::Occupied(_) => Response::LeaseExists { id },
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(Lease {
                            id,
                            ttl_ms: *ttl_ms,
                            renewed_at: index,
                            keys: BTreeSet::new(),
                        });
                        fx.leases_changed.insert(id);
                        fx.lease_updates.push(LeaseUpdate::Renewed {
                            id,
                            ttl_ms: *ttl_ms,
                            renewed_at: index,
                        });
                        Response::Lease {
                            id,
                            ttl_ms: *ttl_ms,
                            revision: self.revision,
                        }
                    }
                }
            }
            Command::LeaseRenew { id } => match self.leases.get_mut(id) {
                None => Response::LeaseNotFound { id: *id },
                Some(l) => {
                    l.renewed_at = index;
                    fx.leases_changed.insert(*id);
                    fx.lease_updates.push(LeaseUpdate::Renewed {
                        id: *id,
                        ttl_ms: l.ttl_ms,
                        renewed_at: index,
                    });
                    Response::Lease {
                        id: *id,
                        ttl_ms: l.ttl_ms,
                        revision: self.revision,
                    }
                }
            },
            Command::LeaseRevoke { id } => self.remove_lease(*id, None, &mut fx),
            Command::LeaseExpire { id, renewed_at } => {
                self.remove_lease(*id, Some(*renewed_at), &mut fx)
            }
        };
        (resp, fx)
    }

    fn put(
        &mut self,
        key: &str,
        value: &[u8],
        lease: u64,
        expect: Option<u64>,
        fx: &mut Effects,
    ) -> Response {
        let prev = self.kv.get(key).cloned();
        if let Some(expect) = expect {
            let current = prev.as_ref().map_or(0, |kv| kv.mod_revision);
            if current != expect {
                return Response::CompareFailed {
                    revision: self.revision,
                    current: prev,
                };
            }
        }
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Response::LeaseNotFound { id: lease };
        }
        self.revision += 1;
        let rev = self.revision;
        let kv = KeyValue {
            key: key.to_string(),
            value: value.to_vec(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != lease {
            if let Some(l) = self.leases.get_mut(&old_lease) {
                l.keys.remove(key);
                fx.leases_changed.insert(old_lease);
            }
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.insert(key.to_string());
                fx.leases_changed.insert(lease);
            }
        }
        self.kv.insert(key.to_string(), kv.clone());
        fx.events.push(Event {
            kind: EventKind::Put,
            kv,
        });
        Response::Put {
            revision: rev,
            prev,
        }
    }

    fn delete(
        &mut self,
        key: &str,
        prefix: bool,
        expect: Option<u64>,
        fx: &mut Effects,
    ) -> Response {
        if let Some(expect) = expect {
            let current = self.kv.get(key);
            if current.map_or(0, |kv| kv.mod_revision) != expect || prefix {
                return Response::CompareFailed {
                    revision: self.revision,
                    current: current.cloned(),
                };
            }
        }
        let keys: Vec<String> = if prefix {
            self.range_prefix(key).map(|kv| kv.key.clone()).collect()
        } else {
            self.kv
                .get(key)
                .map(|kv| kv.key.clone())
                .into_iter()
                .collect()
        };
        if keys.is_empty() {
            return Response::Deleted {
                revision: self.revision,
                deleted: 0,
            };
        }
        // One revision for the whole delete, as etcd does for a range delete.
        self.revision += 1;
        for k in &keys {
            self.remove_key(k, fx);
        }
        Response::Deleted {
            revision: self.revision,
            deleted: keys.len() as u64,
        }
    }

    /// Removes a key at the current revision (the caller has bumped it).
    fn remove_key(&mut self, key: &str, fx: &mut Effects) {
        if let Some(mut kv) = self.kv.remove(key) {
            if let Some(l) = self.leases.get_mut(&kv.lease) {
                l.keys.remove(key);
                fx.leases_changed.insert(kv.lease);
            }
            kv.mod_revision = self.revision;
            fx.events.push(Event {
                kind: EventKind::Delete,
                kv,
            });
        }
    }

    fn remove_lease(
        &mut self,
        id: u64,
        expect_renewed_at: Option<u64>,
        fx: &mut Effects,
    ) -> Response {
        let Some(lease) = self.leases.get(&id) else {
            return Response::LeaseNotFound { id };
        };
        if let Some(expect) = expect_renewed_at
            && lease.renewed_at != expect
        {
            return Response::LeaseRenewedMeanwhile { id };
        }
        let lease = self.leases.remove(&id).expect("checked above");
        if !lease.keys.is_empty() {
            self.revision += 1;
            for k in &lease.keys {
                self.remove_key(k, fx);
            }
        }
        fx.leases_changed.remove(&id);
        fx.leases_removed.insert(id);
        fx.lease_updates.push(LeaseUpdate::Removed { id });
        Response::Lease {
            id,
            ttl_ms: lease.ttl_ms,
            revision: self.revision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Command {
        Command::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
            expect_mod_revision: None,
            guard: None,
        }
    }

    #[test]
    fn put_bumps_revision_and_version() {
        let mut s = State::default();
        let (r, fx) = s.apply(1, &put("a", "1"));
        assert_eq!(
            r,
            Response::Put {
                revision: 1,
                prev: None
            }
        );
        assert_eq!(fx.events.len(), 1);
        s.apply(2, &put("a", "2"));
        let kv = s.get("a").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (1, 2, 2));
        assert_eq!(kv.value, b"2");
    }

    #[test]
    fn compare_and_set_on_mod_revision() {
        let mut s = State::default();
        let cas = |e| Command::Put {
            key: "k".into(),
            value: b"v".to_vec(),
            lease: 0,
            expect_mod_revision: Some(e),
            guard: None,
        };
        assert!(matches!(
            s.apply(1, &cas(0)).0,
            Response::Put { revision: 1, .. }
        ));
        // Must-not-exist fails now.
        let (r, fx) = s.apply(2, &cas(0));
        assert!(matches!(
            r,
            Response::CompareFailed {
                revision: 1,
                current: Some(_)
            }
        ));
        assert!(fx.events.is_empty());
        assert_eq!(s.revision, 1);
        assert!(matches!(
            s.apply(3, &cas(1)).0,
            Response::Put { revision: 2, .. }
        ));
    }

    #[test]
    fn delete_single_and_prefix() {
        let mut s = State::default();
        for (i, k) in ["a/1", "a/2", "b/1"].iter().enumerate() {
            s.apply(i as u64 + 1, &put(k, "x"));
        }
        let del = |k: &str, prefix| Command::Delete {
            key: k.into(),
            prefix,
            expect_mod_revision: None,
        };
        assert_eq!(
            s.apply(4, &del("a/", true)).0,
            Response::Deleted {
                revision: 4,
                deleted: 2
            }
        );
        assert_eq!(s.kv.len(), 1);
        assert_eq!(
            s.apply(5, &del("zzz", false)).0,
            Response::Deleted {
                revision: 4,
                deleted: 0
            }
        );
        assert_eq!(
            s.apply(6, &del("b/1", false)).0,
            Response::Deleted {
                revision: 5,
                deleted: 1
            }
        );
        assert!(s.kv.is_empty());
    }

    #[test]
    fn prefix_range_is_exact() {
        let mut s = State::default();
        for (i, k) in ["ab", "abc", "abd/x", "ac", "b"].iter().enumerate() {
            s.apply(i as u64 + 1, &put(k, "x"));
        }
        let keys: Vec<_> = s.range_prefix("ab").map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["ab", "abc", "abd/x"]);
    }

    /// A deposed primary resuming from a freeze must not move `/pg/optime` or
    /// `/pg/sync` back: its writes are guarded by its lease still holding the leader
    /// key, checked in the same apply step.
    #[test]
    fn a_guarded_put_lands_only_while_the_guard_key_is_on_the_lease() {
        let mut s = State::default();
        for (i, id) in [(1, 0), (2, 0)] {
            s.apply(i, &Command::LeaseGrant { ttl_ms: 1000, id });
        }
        let leader = |lease| Command::Put {
            key: "/pg/leader".into(),
            value: b"n1".to_vec(),
            lease,
            expect_mod_revision: None,
            guard: None,
        };
        let optime = |lease, v: &str| Command::Put {
            key: "/pg/optime".into(),
            value: v.into(),
            lease: 0,
            expect_mod_revision: None,
            guard: Some(LeaseGuard {
                key: "/pg/leader".into(),
                lease,
            }),
        };
        // No leader key at all: refused.
        let (r, _) = s.apply(3, &optime(1, "100"));
        assert!(matches!(r, Response::CompareFailed { .. }), "{r:?}");
        s.apply(4, &leader(1));
        let (r, _) = s.apply(5, &optime(1, "200"));
        assert!(matches!(r, Response::Put { .. }), "{r:?}");
        // Lease 1 expired (revoked here); lease 2 now holds the key.
        s.apply(6, &Command::LeaseRevoke { id: 1 });
        s.apply(7, &leader(2));
        let (r, _) = s.apply(8, &optime(1, "150"));
        assert!(matches!(r, Response::CompareFailed { .. }), "{r:?}");
        assert_eq!(s.get("/pg/optime").unwrap().value, b"200");
        assert!(matches!(
            s.apply(9, &optime(0, "150")).0,
            Response::CompareFailed { .. }
        ));
        // Older log entries, without the field, still read.
        let old: Command = serde_json::from_str(
            r#"{"Put":{"key":"k","value":[1],"lease":0,"expect_mod_revision":null}}"#,
        )
        .unwrap();
        assert!(matches!(old, Command::Put { guard: None, .. }));
    }

    #[test]
    fn lease_keys_vanish_with_the_lease() {
        let mut s = State::default();
        let (r, _) = s.apply(
            7,
            &Command::LeaseGrant {
                ttl_ms: 1000,
                id: 0,
            },
        );
        assert_eq!(
            r,
            Response::Lease {
                id: 7,
                ttl_ms: 1000,
                revision: 0
            }
        );
        let attach = Command::Put {
            key: "leader".into(),
            value: b"n1".to_vec(),
            lease: 7,
            expect_mod_revision: Some(0),
            guard: None,
        };
        s.apply(8, &attach);
        assert_eq!(s.leases[&7].keys.len(), 1);
        let (r, fx) = s.apply(9, &Command::LeaseRevoke { id: 7 });
        assert!(matches!(r, Response::Lease { id: 7, .. }));
        assert!(s.get("leader").is_none());
        assert_eq!(fx.events[0].kind, EventKind::Delete);
        assert_eq!(fx.lease_updates, vec![LeaseUpdate::Removed { id: 7 }]);
        assert_eq!(s.revision, 2);
    }

    #[test]
    fn put_with_unknown_lease_is_refused() {
        let mut s = State::default();
        let cmd = Command::Put {
            key: "k".into(),
            value: vec![],
            lease: 99,
            expect_mod_revision: None,
            guard: None,
        };
        assert_eq!(s.apply(1, &cmd).0, Response::LeaseNotFound { id: 99 });
        assert!(s.kv.is_empty());
    }

    #[test]
    fn expiry_loses_against_a_later_renewal() {
        let mut s = State::default();
        s.apply(3, &Command::LeaseGrant { ttl_ms: 500, id: 0 });
        // The leader judged the lease (renewed at 3) expired, but a renewal
        // committed first at index 4.
        s.apply(4, &Command::LeaseRenew { id: 3 });
        let (r, fx) = s.apply(
            5,
            &Command::LeaseExpire {
                id: 3,
                renewed_at: 3,
            },
        );
        assert_eq!(r, Response::LeaseRenewedMeanwhile { id: 3 });
        assert!(fx.lease_updates.is_empty());
        assert!(s.leases.contains_key(&3));
        let (r, _) = s.apply(
            6,
            &Command::LeaseExpire {
                id: 3,
                renewed_at: 4,
            },
        );
        assert!(matches!(r, Response::Lease { id: 3, .. }));
        assert!(s.leases.is_empty());
    }

    #[test]
    fn moving_a_key_between_leases_updates_both() {
        let mut s = State::default();
        s.apply(1, &Command::LeaseGrant { ttl_ms: 1, id: 0 });
        s.apply(2, &Command::LeaseGrant { ttl_ms: 1, id: 0 });
        let p = |lease| Command::Put {
            key: "k".into(),
            value: vec![],
            lease,
            expect_mod_revision: None,
            guard: None,
        };
        s.apply(3, &p(1));
        s.apply(4, &p(2));
        assert!(s.leases[&1].keys.is_empty());
        assert!(s.leases[&2].keys.contains("k"));
        s.apply(5, &Command::LeaseRevoke { id: 1 });
        assert!(s.get("k").is_some());
    }

    #[test]
    fn apply_is_deterministic() {
        let cmds = [
            Command::LeaseGrant { ttl_ms: 10, id: 0 },
            put("x", "1"),
            Command::Put {
                key: "y".into(),
                value: vec![1],
                lease: 1,
                expect_mod_revision: None,
                guard: None,
            },
            Command::LeaseRenew { id: 1 },
            Command::LeaseExpire {
                id: 1,
                renewed_at: 4,
            },
        ];
        let run = || {
            let mut s = State::default();
            let out: Vec<_> = cmds
                .iter()
                .enumerate()
                .map(|(i, c)| s.apply(i as u64 + 1, c))
                .collect();
            (s, out)
        };
        assert_eq!(run(), run());
    }
}
