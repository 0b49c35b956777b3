//! Data the HA layer keeps in the Raft store, shared with the REST API and `ctl list`.
//!
//! Keys (all under `/pg/`):
//! - `/pg/leader` — the name of the member that holds the leader lease; the key is
//!   attached to that lease, so it vanishes when the lease ends.
//! - `/pg/initialize` — the PostgreSQL system identifier, written once at bootstrap.
//! - `/pg/members/<name>` — `MemberStatus` JSON, published by each member every cycle,
//!   attached to the member's own status lease (gone when the member stops publishing).
//! - `/pg/optime` — last WAL position (LSN as u64) the primary reported.
//! - `/pg/timeline` — the timeline that primary was on (a member on an older one
//!   may lack acknowledged commits of a newer primary and is never promoted).
//! - `/pg/switchover` — a requested switchover (`Switchover` JSON), deleted by the new primary.
//! - `/pg/sync` — `SyncState` JSON: the standbys the primary runs synchronous with.
//! - `/pg/config` — cluster-wide HA settings, written at bootstrap from the
//!   bootstrapping node's config; every member uses them over its own file's.
//! - `/pg/pause` — present while automatic actions are paused.
//! - `/pg/failover` — `FailoverRequest` JSON: an operator's manual failover, attached
//!   to the requesting `ctl`'s lease (gone when it gives up); cleared by the new primary.
//! - `/pg/reinit/<name>` — `ReinitRequest` JSON: an operator asked member `name` to
//!   re-clone its data dir from the primary; the member records the outcome in it.
//! - `/pg/restart/<name>`, `/pg/reload/<name>` — `MemberRequest` JSON: an operator
//!   asked member `name` to restart (or reload) its PostgreSQL; it marks it done.
//! - `/pg/history` — `Vec<HistoryEntry>` JSON: every promotion (failover or
//!   switchover), oldest first, at most `HISTORY_LIMIT`; appended by the new primary.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "/pg/";
pub const LEADER_KEY: &str = "/pg/leader";
pub const INITIALIZE_KEY: &str = "/pg/initialize";
pub const MEMBERS_PREFIX: &str = "/pg/members/";
pub const OPTIME_KEY: &str = "/pg/optime";
pub const SYNC_KEY: &str = "/pg/sync";
/// Timeline of the primary that last published `/pg/optime`.
pub const TIMELINE_KEY: &str = "/pg/timeline";
/// Cluster-wide HA settings (`config::HaSettings` JSON); validated by the store on write.
pub const CONFIG_KEY: &str = "/pg/config";
/// A requested switchover (`Switchover` JSON), deleted by the new primary.
pub const SWITCHOVER_KEY: &str = "/pg/switchover";
/// Present while the cluster is paused: members take no automatic action.
pub const PAUSE_KEY: &str = "/pg/pause";

/// A manual failover requested by an operator (`FailoverRequest` JSON).
pub const FAILOVER_KEY: &str = "/pg/failover";

/// A manual failover: `candidate` takes over while no primary serves (also in
/// pause). `force`: the operator accepted the risk `ctl failover` named (lag beyond
/// `maximum_lag_on_failover`, not the recorded synchronous standby, an older
/// timeline), so those rules do not stop it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRequest {
    pub candidate: String,
    #[serde(default)]
    pub force: bool,
}

/// Per-member re-clone requests (`ReinitRequest` JSON), by member name.
pub const REINIT_PREFIX: &str = "/pg/reinit/";

pub fn reinit_key(name: &str) -> String {
    format!("{REINIT_PREFIX}{name}")
}

/// `ctl reinit`: re-clone this member's data dir from the primary (the old one is
/// moved aside, or removed after the clone when `discard_old`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReinitRequest {
    #[serde(default)]
    pub discard_old: bool,
    /// Written by the member once the clone succeeded; the request is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ReinitOutcome>,
}

impl ReinitRequest {
    pub fn pending(&self) -> bool {
        self.outcome.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReinitOutcome {
    /// Where the old data dir went (`None`: there was none).
    pub moved_to: Option<String>,
    /// Its size in bytes.
    pub bytes: u64,
    /// It was removed after the clone (`discard_old`).
    pub discarded: bool,
}

/// Restart requests (`MemberRequest` JSON), by member name.
pub const RESTART_PREFIX: &str = "/pg/restart/";
/// Reload requests (`MemberRequest` JSON), by member name.
pub const RELOAD_PREFIX: &str = "/pg/reload/";

/// What an operator asked one member to do to its PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Restart,
    Reload,
}

impl RequestKind {
    pub fn key(self, member: &str) -> String {
        match self {
            RequestKind::Restart => format!("{RESTART_PREFIX}{member}"),
            RequestKind::Reload => format!("{RELOAD_PREFIX}{member}"),
        }
    }
}

/// A restart or reload request; `done` once the member carried it out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRequest {
    #[serde(default)]
    pub done: bool,
    /// Not before this time (Unix seconds, by the member's clock): `restart
    /// --scheduled`. None: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<u64>,
}

/// Every promotion, oldest first (`Vec<HistoryEntry>` JSON), written by the primary.
pub const HISTORY_KEY: &str = "/pg/history";
/// Entries kept in `/pg/history` (the oldest go first).
pub const HISTORY_LIMIT: usize = 200;

/// Why a replica was promoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Promotion {
    /// No primary served (it died, was fenced or gave up its lease).
    Failover,
    /// An operator's switchover request handed over to it.
    Switchover,
}

impl std::fmt::Display for Promotion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Promotion::Failover => "failover",
            Promotion::Switchover => "switchover",
        })
    }
}

/// One promotion, as Patroni's `/history` rows: the timeline that ended, the WAL
/// position it ended at, why, when, and who took over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The timeline that ended (the new primary continues on the next one).
    pub timeline: u64,
    /// The new primary's WAL position when it was promoted.
    pub lsn: u64,
    pub reason: Promotion,
    /// Unix time (seconds) of the promotion, by the new primary's clock.
    pub time: u64,
    pub new_leader: String,
}

/// Appends `entry`, dropping the oldest beyond `HISTORY_LIMIT`.
pub fn append_history(history: &mut Vec<HistoryEntry>, entry: HistoryEntry) {
    history.push(entry);
    let excess = history.len().saturating_sub(HISTORY_LIMIT);
    history.drain(..excess);
}

pub fn member_key(name: &str) -> String {
    format!("{MEMBERS_PREFIX}{name}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Replica,
    /// Not running, or running but not yet known.
    Uninitialized,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PgRunState {
    Running,
    Starting,
    Stopped,
    /// Cloning, rewinding or bootstrapping.
    Creating,
    Crashed,
}

pub use crate::config::Tags;

/// What one member publishes about itself every cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    pub role: Role,
    pub state: PgRunState,
    /// host:port clients use for PostgreSQL.
    pub pg_addr: String,
    /// Base URL of this member's REST API.
    pub api_url: String,
    pub timeline: u64,
    /// Primary: current WAL write position. Replica: last received position.
    pub receive_lsn: u64,
    /// Replica: last replayed position; primary: same as receive_lsn.
    pub replay_lsn: u64,
    /// Name of the member this replica streams from, if any.
    pub following: Option<String>,
    #[serde(default)]
    pub tags: Tags,
    /// This member runs as the recorded synchronous standby.
    #[serde(default)]
    pub sync_standby: bool,
    /// Raft node id of this member.
    pub node_id: u64,
    /// This member saw the cluster paused in its last cycle (`ctl pause --wait`).
    #[serde(default)]
    pub paused: bool,
    /// PostgreSQL has changed parameters that need a restart to take effect.
    #[serde(default)]
    pub pending_restart: bool,
    /// Its `pre_promote` vetoed a promotion within the last ttl: not a candidate
    /// meanwhile, so the others do not wait for it.
    #[serde(default)]
    pub pre_promote_vetoed: bool,
    /// The pgquorum release this member runs (`ctl version`); empty from releases
    /// that did not publish it.
    #[serde(default)]
    pub version: String,
    /// PostgreSQL's `server_version_num` (e.g. 150010), once it has answered.
    #[serde(default)]
    pub server_version: Option<u32>,
}

#[cfg(test)]
impl MemberStatus {
    /// A running member at `lsn` on timeline 1, for unit tests of what reads the view.
    pub fn running(name: &str, role: Role, lsn: u64) -> Self {
        MemberStatus {
            name: name.into(),
            role,
            state: PgRunState::Running,
            pg_addr: String::new(),
            api_url: String::new(),
            timeline: 1,
            receive_lsn: lsn,
            replay_lsn: lsn,
            following: None,
            tags: Tags::default(),
            sync_standby: false,
            node_id: 1,
            paused: false,
            pending_restart: false,
            pre_promote_vetoed: false,
            version: String::new(),
            server_version: None,
        }
    }
}

/// A planned change of primary, requested by an operator (`pgquorum ctl switchover`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    /// The primary to step down; the request is ignored by any other.
    pub leader: String,
    /// The member to promote; `None`: the best eligible replica.
    pub candidate: Option<String>,
    /// Unix seconds before which the primary does not step down (`--scheduled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<u64>,
}

/// `/pg/sync`: the primary (`leader`) and the standbys that hold every commit it
/// acknowledged. Stored as Patroni stores it: `sync_standby` is the names joined
/// with commas, or `null` for none (member names cannot contain a comma).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    pub leader: String,
    #[serde(with = "standby_list")]
    pub sync_standby: Vec<String>,
}

impl SyncState {
    /// `name` is one of the recorded synchronous standbys.
    pub fn holds(&self, name: &str) -> bool {
        self.sync_standby.iter().any(|s| s == name)
    }
}

mod standby_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(names: &[String], s: S) -> Result<S::Ok, S::Error> {
        if names.is_empty() {
            s.serialize_none()
        } else {
            s.serialize_str(&names.join(","))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let joined = Option::<String>::deserialize(d)?.unwrap_or_default();
        Ok(joined
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect())
    }
}

/// Cluster view assembled from the store for the REST API and `ctl list`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub leader: Option<String>,
    pub members: BTreeMap<String, MemberStatus>,
    pub optime: Option<u64>,
    pub timeline: Option<u64>,
    pub sync: Option<SyncState>,
    pub switchover: Option<Switchover>,
    pub failover: Option<FailoverRequest>,
    pub reinit: BTreeMap<String, ReinitRequest>,
    pub restart: BTreeMap<String, MemberRequest>,
    pub reload: BTreeMap<String, MemberRequest>,
    pub config: Option<crate::config::HaSettings>,
    pub paused: bool,
}

pub use crate::lsn::{format_lsn, parse_lsn};

impl ClusterView {
    /// The member named by the leader key publishes itself as a running primary.
    pub fn leader_serving(&self) -> bool {
        self.leader
            .as_ref()
            .and_then(|l| self.members.get(l))
            .is_some_and(|m| m.role == Role::Primary && m.state == PgRunState::Running)
    }

    /// Decodes the `/pg/` keys. A malformed member record is skipped rather than
    /// failing the whole view: one member's bad write must not blind the others.
    pub fn from_kvs<'a>(
        kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> (ClusterView, Option<u64>) {
        let mut view = ClusterView::default();
        let mut system_id = None;
        for (key, value) in kvs {
            let text = String::from_utf8_lossy(value);
            match key {
                LEADER_KEY => view.leader = Some(text.into_owned()),
                OPTIME_KEY => view.optime = text.trim().parse().ok(),
                TIMELINE_KEY => view.timeline = text.trim().parse().ok(),
                INITIALIZE_KEY => system_id = text.trim().parse().ok(),
                SYNC_KEY => view.sync = serde_json::from_slice(value).ok(),
                SWITCHOVER_KEY => view.switchover = serde_json::from_slice(value).ok(),
                FAILOVER_KEY => view.failover = serde_json::from_slice(value).ok(),
                CONFIG_KEY => view.config = serde_json::from_slice(value).ok(),
                PAUSE_KEY => view.paused = true,
                k if k.starts_with(RESTART_PREFIX) || k.starts_with(RELOAD_PREFIX) => {
                    if let Ok(r) = serde_json::from_slice::<MemberRequest>(value) {
                        let (map, name) = match k.strip_prefix(RESTART_PREFIX) {
                            Some(n) => (&mut view.restart, n),
                            None => (&mut view.reload, &k[RELOAD_PREFIX.len()..]),
                        };
                        map.insert(name.to_string(), r);
                    }
                }
                k if k.starts_with(REINIT_PREFIX) => {
                    if let Ok(r) = serde_json::from_slice::<ReinitRequest>(value) {
                        view.reinit.insert(k[REINIT_PREFIX.len()..].to_string(), r);
                    }
                }
                k if k.starts_with(MEMBERS_PREFIX) => {
                    if let Ok(m) = serde_json::from_slice::<MemberStatus>(value) {
                        view.members.insert(m.name.clone(), m);
                    }
                }
                _ => {}
            }
        }
        (view, system_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips() {
        for s in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(format_lsn(parse_lsn(s).unwrap()), s);
        }
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn the_sync_record_reads_and_writes_patronis_form() {
        let two = SyncState {
            leader: "a".into(),
            sync_standby: vec!["b".into(), "c".into()],
        };
        let json = serde_json::to_string(&two).unwrap();
        assert_eq!(json, r#"{"leader":"a","sync_standby":"b,c"}"#);
        assert_eq!(serde_json::from_str::<SyncState>(&json).unwrap(), two);
        let none: SyncState =
            serde_json::from_str(r#"{"leader":"a","sync_standby":null}"#).unwrap();
        assert!(none.sync_standby.is_empty());
        assert_eq!(
            serde_json::to_string(&none).unwrap(),
            r#"{"leader":"a","sync_standby":null}"#
        );
        let one: SyncState = serde_json::from_str(r#"{"leader":"a","sync_standby":"b"}"#).unwrap();
        assert_eq!(one.sync_standby, ["b"]);
        assert!(one.holds("b") && !one.holds("a"));
    }
}
