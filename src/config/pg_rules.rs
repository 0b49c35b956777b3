//! Which PostgreSQL settings pgquorum accepts from an operator: pure string rules,
//! used when a config file or `/pg/config` is validated and again by `postgres`
//! when it renders the files. Imports nothing from the crate.

use std::collections::BTreeMap;

/// A PostgreSQL setting pgquorum refuses; each message names the key and the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("{what} must not contain line breaks or NUL")]
    LineBreak { what: String },
    #[error(
        "postgresql.parameters: {key:?} is not a PostgreSQL parameter name (a letter or _, \
         then letters, digits, _ or .); fix its spelling or remove it"
    )]
    NotAParameterName { key: String },
    #[error(
        "postgresql.parameters: {key} is managed by pgquorum and cannot be set here \
         (port and listen address come from postgresql.port and postgresql.listen_host)"
    )]
    Reserved { key: String },
    #[error(
        "postgresql.parameters: wal_level = {value:?} cannot feed replicas; use replica or logical"
    )]
    WalLevel { value: String },
    #[error(
        "postgresql.parameters: superuser_reserved_connections = {value} is too few: \
         pgquorum holds two superuser sessions (HA cycle, health probe) and pg_rewind \
         needs a third, so that client load filling max_connections cannot blind \
         it; use at least {MIN_SUPERUSER_RESERVED}"
    )]
    TooFewSuperuserReserved { value: String },
    #[error(
        "postgresql.parameters: synchronous_commit = {value:?} acknowledges commits before the \
         synchronous standby has them, which defeats synchronous_mode (a failover would \
         lose them); remove it, or use on, remote_write or remote_apply, or turn \
         synchronous_mode off"
    )]
    WeakSynchronousCommit { value: String },
    #[error("{what} {value:?} must be non-empty and contain no double quote or line break")]
    RoleName { what: &'static str, value: String },
}

/// Settings pgquorum owns: an operator value for one of these would break supervision
/// (wrong port or socket, a second replication source, sync standbys behind the HA
/// layer's back, replicas that never accept connections, config in other places).
pub const RESERVED_PARAMETERS: &[&str] = &[
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "primary_conninfo",
    "primary_slot_name",
    "synchronous_standby_names",
    "hot_standby",
    "config_file",
    "data_directory",
    "hba_file",
];

/// Rejects what cannot be written safely into a one-line-per-entry file.
pub fn check_line_value(what: &str, v: &str) -> Result<(), SettingError> {
    if v.contains(['\n', '\r', '\0']) {
        return Err(SettingError::LineBreak {
            what: what.to_string(),
        });
    }
    Ok(())
}

/// Checks the operator's `postgresql.parameters`.
pub fn check_parameters(params: &BTreeMap<String, String>) -> Result<(), SettingError> {
    for (k, v) in params {
        let key_ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !key_ok {
            return Err(SettingError::NotAParameterName { key: k.clone() });
        }
        if RESERVED_PARAMETERS.contains(&k.to_ascii_lowercase().as_str()) {
            return Err(SettingError::Reserved { key: k.clone() });
        }
        if k.eq_ignore_ascii_case("wal_level") && !matches!(v.as_str(), "replica" | "logical") {
            return Err(SettingError::WalLevel { value: v.clone() });
        }
        if k.eq_ignore_ascii_case("superuser_reserved_connections")
            && v.trim()
                .parse::<u32>()
                .is_ok_and(|n| n < MIN_SUPERUSER_RESERVED)
        {
            return Err(SettingError::TooFewSuperuserReserved { value: v.clone() });
        }
        check_line_value(&format!("postgresql.parameters.{k}"), v)?;
    }
    Ok(())
}

/// pgquorum's superuser sessions (HA cycle, health monitor, pg_rewind) must find a
/// slot when clients have taken every other (PostgreSQL's default is 3).
const MIN_SUPERUSER_RESERVED: u32 = 3;

/// Whether `synchronous_commit = v` acknowledges a commit before any standby has it
/// (`off`, `local`, and PostgreSQL's spellings of false).
fn weak_synchronous_commit(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "off" | "local" | "false" | "no" | "0" | "of"
    )
}

/// In synchronous mode no setting may acknowledge a commit the synchronous standby
/// does not hold: a failover to that standby would lose it.
pub fn check_synchronous_commit(
    params: &BTreeMap<String, String>,
    synchronous_mode: bool,
) -> Result<(), SettingError> {
    if !synchronous_mode {
        return Ok(());
    }
    for (k, v) in params {
        if k.eq_ignore_ascii_case("synchronous_commit") && weak_synchronous_commit(v) {
            return Err(SettingError::WeakSynchronousCommit { value: v.clone() });
        }
    }
    Ok(())
}

/// Drops a `synchronous_commit` that [`check_synchronous_commit`] refuses (PostgreSQL's
/// default, `on`, applies); returns whether it did.
pub fn pin_synchronous_commit(params: &mut BTreeMap<String, String>) -> bool {
    let before = params.len();
    params.retain(|k, v| {
        !(k.eq_ignore_ascii_case("synchronous_commit") && weak_synchronous_commit(v))
    });
    params.len() != before
}

/// Checks cluster-wide PostgreSQL settings before the store accepts them.
pub fn validate_cluster_settings(
    parameters: &BTreeMap<String, String>,
    pg_hba: &[String],
    synchronous_mode: bool,
) -> Result<(), SettingError> {
    check_parameters(parameters)?;
    check_synchronous_commit(parameters, synchronous_mode)?;
    for l in pg_hba {
        check_line_value("pg_hba entries", l)?;
    }
    Ok(())
}
