//! `[ha]`: the cluster-wide HA settings (`/pg/config`) and the rules they must obey.

use serde::Deserialize;

use super::pg_rules;

/// Cluster-wide HA settings that cannot work, with the rule they break.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HaSettingsError {
    #[error("ha.loop_wait_ms must be at least 50")]
    LoopWaitTooShort,
    #[error(
        "ha.ttl_ms ({ttl_ms}) must be at least 2 * ha.loop_wait_ms + raft.election_timeout_max_ms \
         ({min_ms}): a primary must survive one missed renewal and one Raft election without \
         fencing itself"
    )]
    TtlTooShort { ttl_ms: u64, min_ms: u64 },
    #[error(
        "ha.primary_hang_timeout_ms ({hang_ms}) must be 0 (off) or at least ha.ttl_ms ({ttl_ms}): \
         a PostgreSQL that stalls for less than the time a dead host is given must not cost a \
         failover"
    )]
    PrimaryHangTooShort { hang_ms: u64, ttl_ms: u64 },
    #[error(
        "ha.sync_standby_hang_timeout_ms ({hang_ms}) must be 0 (off) or at least 2 * \
         ha.loop_wait_ms ({min_ms}): a standby is judged over more than one cycle"
    )]
    SyncStandbyHangTooShort { hang_ms: u64, min_ms: u64 },
    #[error(
        "ha.synchronous_node_count must be at least 1 (set synchronous_mode = false for no synchronous standby)"
    )]
    NoSyncNodes,
    #[error(
        "ha.slots: {0:?} is not a valid slot name: use 1 to 63 lowercase letters, digits or underscores"
    )]
    SlotName(String),
    #[error(
        "ha.slots: {0:?}: names starting with pgq_ are pgquorum's own member slots; pick another name"
    )]
    SlotPrefix(String),
    #[error(
        "ha.slots: {name:?} has type {kind:?}; only \"physical\" permanent slots are supported (logical ones are not yet)"
    )]
    SlotType { name: String, kind: String },
    #[error("ha.synchronous_mode_strict needs ha.synchronous_mode = true")]
    StrictWithoutSynchronousMode,
    #[error("ha: {0}")]
    Setting(#[from] pg_rules::SettingError),
}

/// A permanent slot declared in `/pg/config`.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PermanentSlot {
    #[serde(rename = "type")]
    pub kind: String,
}

/// HA timing and policy. Written to the store at bootstrap as the cluster-wide
/// defaults; see `crate::ha` for how each is used.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HaSettings {
    /// Leader lease time-to-live.
    pub ttl_ms: u64,
    /// One HA cycle; the primary renews its lease every cycle.
    pub loop_wait_ms: u64,
    /// A replica further behind the last known primary position than this is never promoted.
    pub maximum_lag_on_failover: u64,
    pub synchronous_mode: bool,
    /// How long a crashed primary may take to start again before it gives up the lease.
    pub primary_start_timeout_ms: u64,
    /// A primary whose PostgreSQL hangs this long (no answer to the health probe,
    /// WAL flush stuck while backends wait, or postmaster stopped) is killed and
    /// gives up the lease. 0 disables it. At least `ttl_ms`.
    pub primary_hang_timeout_ms: u64,
    /// A synchronous standby that has held commits up this long with its flush
    /// position standing still is replaced by another streaming standby. 0 disables
    /// it. At least `2 * loop_wait_ms`.
    pub sync_standby_hang_timeout_ms: u64,
    /// Never let commits stop waiting for a synchronous standby: one that leaves or
    /// hangs is replaced only by another, never dropped for none (Patroni's
    /// `synchronous_mode_strict`).
    pub synchronous_mode_strict: bool,
    /// How many synchronous standbys commits wait for (Patroni's
    /// `synchronous_node_count`): each holds every acknowledged commit, so any of
    /// them may be promoted. Fewer while fewer stream.
    pub synchronous_node_count: usize,
    /// The primary keeps the replication slot of a member that stopped publishing
    /// its status for this long (Patroni's `member_slots_ttl`, 30 min), so a member
    /// back from a restart or an outage streams on from where it left. A member
    /// never seen publishing (a witness) gets no slot.
    pub member_slots_ttl_ms: u64,
    /// Permanent physical slots (Patroni's `slots`: `{name = {type = "physical"}}`):
    /// on the primary and, moved along with replay, on every replica, so they
    /// survive a failover.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub slots: std::collections::BTreeMap<String, PermanentSlot>,
    /// PostgreSQL parameters for every member (a member's own
    /// `postgresql.parameters` win over these). Applied with a reload when changed.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub parameters: std::collections::BTreeMap<String, String>,
    /// pg_hba.conf lines for every member, after the member's own `postgresql.pg_hba`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pg_hba: Vec<String>,
}

impl Default for HaSettings {
    fn default() -> Self {
        Self {
            ttl_ms: 2500,
            loop_wait_ms: 500,
            maximum_lag_on_failover: 1024 * 1024,
            synchronous_mode: false,
            primary_start_timeout_ms: 10_000,
            // Far above anything a loaded but healthy primary shows: its probe reads
            // shared memory over a held session (milliseconds even on saturated
            // cores), and WAL flushes that stop completing *entirely* for 10 s are
            // not a checkpoint or a storage latency spike but storage that is gone.
            primary_hang_timeout_ms: 10_000,
            // A swap of the synchronous standby costs nothing (no failover, nothing
            // lost), so it may come sooner than a failover would.
            sync_standby_hang_timeout_ms: 5_000,
            synchronous_mode_strict: false,
            synchronous_node_count: 1,
            member_slots_ttl_ms: 30 * 60 * 1000,
            slots: std::collections::BTreeMap::new(),
            parameters: std::collections::BTreeMap::new(),
            pg_hba: Vec::new(),
        }
    }
}

impl HaSettings {
    /// The rule that makes self-fencing possible: a primary must be able to miss a
    /// renewal, retry, and still fence itself before the lease can expire elsewhere.
    pub fn validate(&self, election_timeout_max_ms: u64) -> Result<(), HaSettingsError> {
        if self.loop_wait_ms < 50 {
            return Err(HaSettingsError::LoopWaitTooShort);
        }
        let min_ms = 2 * self.loop_wait_ms + election_timeout_max_ms;
        if self.ttl_ms < min_ms {
            return Err(HaSettingsError::TtlTooShort {
                ttl_ms: self.ttl_ms,
                min_ms,
            });
        }
        if self.primary_hang_timeout_ms != 0 && self.primary_hang_timeout_ms < self.ttl_ms {
            return Err(HaSettingsError::PrimaryHangTooShort {
                hang_ms: self.primary_hang_timeout_ms,
                ttl_ms: self.ttl_ms,
            });
        }
        if self.sync_standby_hang_timeout_ms != 0
            && self.sync_standby_hang_timeout_ms < 2 * self.loop_wait_ms
        {
            return Err(HaSettingsError::SyncStandbyHangTooShort {
                hang_ms: self.sync_standby_hang_timeout_ms,
                min_ms: 2 * self.loop_wait_ms,
            });
        }
        for (name, slot) in &self.slots {
            if name.is_empty()
                || name.len() > 63
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(HaSettingsError::SlotName(name.clone()));
            }
            if name.starts_with("pgq_") {
                return Err(HaSettingsError::SlotPrefix(name.clone()));
            }
            if slot.kind != "physical" {
                return Err(HaSettingsError::SlotType {
                    name: name.clone(),
                    kind: slot.kind.clone(),
                });
            }
        }
        if self.synchronous_node_count == 0 {
            return Err(HaSettingsError::NoSyncNodes);
        }
        if self.synchronous_mode_strict && !self.synchronous_mode {
            return Err(HaSettingsError::StrictWithoutSynchronousMode);
        }
        pg_rules::validate_cluster_settings(&self.parameters, &self.pg_hba, self.synchronous_mode)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(edit: impl FnOnce(&mut HaSettings)) -> Result<(), HaSettingsError> {
        let mut s = HaSettings::default();
        edit(&mut s);
        s.validate(1000)
    }

    #[test]
    fn synchronous_node_count_and_slots_are_checked() {
        assert_eq!(check(|_| {}), Ok(()));
        assert_eq!(
            check(|s| s.synchronous_node_count = 0),
            Err(HaSettingsError::NoSyncNodes)
        );
        let slot = |kind: &str| PermanentSlot { kind: kind.into() };
        assert_eq!(
            check(|s| {
                s.slots.insert("backup_1".into(), slot("physical"));
            }),
            Ok(())
        );
        for (name, kind, want) in [
            ("Backup", "physical", "not a valid slot name"),
            ("pgq_x", "physical", "pgquorum's own"),
            ("cdc", "logical", "only \"physical\""),
        ] {
            let e = check(|s| {
                s.slots.insert(name.into(), slot(kind));
            })
            .unwrap_err();
            assert!(e.to_string().contains(want), "{name}: {e}");
        }
        // Patroni's form reads as it is.
        let s: HaSettings = serde_json::from_str(
            r#"{"slots": {"backup": {"type": "physical"}}, "member_slots_ttl_ms": 60000}"#,
        )
        .unwrap();
        assert_eq!(s.slots["backup"], slot("physical"));
        assert_eq!(HaSettings::default().member_slots_ttl_ms, 1_800_000);
    }
}
