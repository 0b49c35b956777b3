//! Data the HA layer keeps in the Raft store, shared with the REST API and `ctl list`.
//!
//! Keys (all under `/pg/`):
//! - `/pg/leader` — the name of the member that holds the leader lease; the key is
//!   attached to that lease, so it vanishes when the lease ends.
//! - `/pg/initialize` — the PostgreSQL system identifier, written once at bootstrap.
//! - `/pg/members/<name>` — `MemberStatus` JSON, published by each member every cycle,
//!   attached to the member's own status lease (gone when the member stops publishing).
//! - `/pg/optime` — last WAL position (LSN as u64) the primary reported.
//! - `/pg/sync` — `SyncState` JSON: the standby the primary runs synchronous with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "/pg/";
pub const LEADER_KEY: &str = "/pg/leader";
pub const INITIALIZE_KEY: &str = "/pg/initialize";
pub const MEMBERS_PREFIX: &str = "/pg/members/";
pub const OPTIME_KEY: &str = "/pg/optime";
pub const SYNC_KEY: &str = "/pg/sync";

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

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    #[serde(default)]
    pub nofailover: bool,
    #[serde(default)]
    pub noloadbalance: bool,
    /// Higher wins ties between equally advanced candidates; 0 never wins a tie it could lose.
    #[serde(default)]
    pub failover_priority: i64,
}

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
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    pub leader: String,
    pub sync_standby: Option<String>,
}

/// Cluster view assembled from the store for the REST API and `ctl list`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub leader: Option<String>,
    pub members: BTreeMap<String, MemberStatus>,
    pub optime: Option<u64>,
    pub sync: Option<SyncState>,
}

/// Formats an LSN as PostgreSQL does (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses `16/B374D848`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
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
}
