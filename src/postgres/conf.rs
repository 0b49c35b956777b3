//! Pure renderers for the files pgquorum writes into (and beside) a data directory,
//! and the quoting rules of each format. No IO here, so every rule is unit-tested.

use std::collections::BTreeMap;
use std::path::Path;

pub use crate::config::pg_rules::{
    SettingError, check_line_value, check_parameters, check_synchronous_commit,
    pin_synchronous_commit,
};

/// The file holding pgquorum's settings, included at the end of `postgresql.conf`.
pub const CONF_FILE: &str = "pgquorum.conf";
/// The line appended (once) to `postgresql.conf`.
pub const INCLUDE_LINE: &str = "include 'pgquorum.conf'";

/// A value in `postgresql.conf` (and `-c`): single-quoted; the GUC lexer processes
/// backslash escapes inside quotes, so `\` is doubled as well as `'`.
pub fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// A value in a libpq connection string.
pub fn conninfo_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A field of a `.pgpass` line.
pub fn pgpass_escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace(':', "\\:")
}

/// A SQL string literal. `E'...'` escapes backslashes whatever
/// `standard_conforming_strings` says, so the result is correct under both settings.
pub fn sql_literal(v: &str) -> String {
    format!("E'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// A SQL identifier (also the quoting `synchronous_standby_names` understands).
pub fn sql_ident(v: &str) -> String {
    format!("\"{}\"", v.replace('"', "\"\""))
}

/// The `synchronous_standby_names` value that makes commits wait for every one of
/// `names`: `"a"` for one, `FIRST 2 ("a", "b")` for two; empty for none.
pub fn standby_names_value(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => sql_ident(one),
        many => format!(
            "FIRST {} ({})",
            many.len(),
            many.iter()
                .map(|n| sql_ident(n))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The members named by a `synchronous_standby_names` value: as written by
/// `standby_names_value`, or by hand (`a, b`, `2 (a, b)`, `ANY 1 (a, b)`, quoted
/// or bare names). Empty when it is empty.
pub fn parse_standby_names(v: &str) -> Vec<String> {
    let mut v = v.trim();
    // `[FIRST|ANY] N (list)`: the list is what names members.
    if let Some(open) = v.find('(')
        && !v[..open].contains('"')
        && v.ends_with(')')
    {
        v = &v[open + 1..v.len() - 1];
    }
    let mut names = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => names.push(std::mem::take(&mut cur)),
            c if c.is_whitespace() && !quoted => {}
            c => cur.push(c),
        }
    }
    names.push(cur);
    names.retain(|n| !n.is_empty());
    names
}

/// `pgq_` + the member name lowercased, every other character than `[a-z0-9_]`
/// replaced by `_`. Names longer than PostgreSQL's 63-byte limit keep a prefix plus a
/// hash of the full name, so two long names never share a slot.
pub fn slot_name(member: &str) -> String {
    let clean: String = member
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let full = format!("pgq_{clean}");
    if full.len() <= 63 {
        return full;
    }
    // FNV-1a: stable across versions and platforms (std's hasher is not).
    let mut h: u32 = 0x811c_9dc5;
    for b in member.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{}_{h:08x}", &full[..54])
}

/// Slot names pgquorum may create or drop: `[a-z0-9_]`, 1..=63 bytes.
pub fn valid_slot_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Checks a role name for use in `pg_hba.conf` (double-quoted there).
pub fn check_role_name(what: &'static str, v: &str) -> Result<(), SettingError> {
    if v.is_empty() || v.contains(['"', '\n', '\r', '\0']) {
        return Err(SettingError::RoleName {
            what,
            value: v.to_string(),
        });
    }
    Ok(())
}

/// Replica part of `pgquorum.conf`.
#[derive(Clone, Debug)]
pub struct ReplicaConf<'a> {
    /// Upstream host and port; `None` = standby without upstream.
    pub primary: Option<(&'a str, u16)>,
    pub user: &'a str,
    pub passfile: &'a Path,
    pub slot: Option<&'a str>,
}

/// The upstream connection string for `primary_conninfo`. The password is in the
/// passfile, never here: the conninfo is visible in `pg_stat_wal_receiver`.
pub fn primary_conninfo(
    host: &str,
    port: u16,
    user: &str,
    member: &str,
    passfile: &Path,
    ssl: Option<&SslFiles>,
) -> String {
    format!(
        "host={} port={port} user={} application_name={} passfile={} connect_timeout=5{}",
        conninfo_quote(host),
        conninfo_quote(user),
        conninfo_quote(member),
        conninfo_quote(&passfile.to_string_lossy()),
        ssl_conninfo(ssl),
    )
}

/// Where PostgreSQL finds the node's certificate, its key and the cluster CA:
/// copies beside the data dir, owned by PostgreSQL's OS user (it refuses a key it
/// does not own), never inside it (pg_basebackup would hand the key to replicas).
#[derive(Clone, Debug)]
pub struct SslFiles {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// The conninfo part for a connection to another member: encrypted, and the
/// server's certificate verified against the cluster CA. verify-ca, not
/// verify-full: members are reached by the address in their config, which their
/// certificate names only if the operator listed it with `certs issue --host`.
pub fn ssl_conninfo(ssl: Option<&SslFiles>) -> String {
    match ssl {
        None => String::new(),
        Some(s) => format!(
            " sslmode=verify-ca sslrootcert={}",
            conninfo_quote(&s.ca.to_string_lossy())
        ),
    }
}

/// `pgquorum.conf`. pgquorum's settings first, then the operator's parameters, which
/// win because the last occurrence of a setting counts. Keys this file owns are always
/// written (empty when unused) so values copied from another member by pg_basebackup
/// or pg_rewind never linger.
pub fn render_pgquorum_conf(
    listen_host: &str,
    port: u16,
    member: &str,
    parameters: &BTreeMap<String, String>,
    replica: Option<&ReplicaConf<'_>>,
    ssl: Option<&SslFiles>,
) -> String {
    let mut out = String::from(
        "# Written by pgquorum at every start; edits are lost.\n\
         # Set parameters in the [postgresql.parameters] table of the pgquorum config.\n",
    );
    let mut set = |k: &str, v: String| {
        out.push_str(k);
        out.push_str(" = ");
        out.push_str(&v);
        out.push('\n');
    };
    set("listen_addresses", conf_quote(listen_host));
    set("port", port.to_string());
    // TCP only: no socket directory to create, own or clean up.
    set("unix_socket_directories", conf_quote(""));
    set("wal_level", "replica".into());
    set("hot_standby", "on".into());
    set("max_wal_senders", "10".into());
    set("max_replication_slots", "10".into());
    // pg_rewind needs hint bits in WAL (checksums also do, but a cloned old cluster may lack them).
    set("wal_log_hints", "on".into());
    set("hot_standby_feedback", "on".into());
    set("wal_keep_size", conf_quote("128MB"));
    set("cluster_name", conf_quote(member));
    match ssl {
        Some(s) => {
            set("ssl", "on".into());
            set("ssl_cert_file", conf_quote(&s.cert.to_string_lossy()));
            set("ssl_key_file", conf_quote(&s.key.to_string_lossy()));
            set("ssl_ca_file", conf_quote(&s.ca.to_string_lossy()));
        }
        None => set("ssl", "off".into()),
    }
    match replica {
        Some(ReplicaConf {
            primary: Some((host, p)),
            user,
            passfile,
            slot,
        }) => {
            set(
                "primary_conninfo",
                conf_quote(&primary_conninfo(host, *p, user, member, passfile, ssl)),
            );
            set("primary_slot_name", conf_quote(slot.unwrap_or("")));
        }
        _ => {
            set("primary_conninfo", conf_quote(""));
            set("primary_slot_name", conf_quote(""));
        }
    }
    if !parameters.is_empty() {
        out.push_str("# From the pgquorum config (postgresql.parameters):\n");
        for (k, v) in parameters {
            out.push_str(&format!("{k} = {}\n", conf_quote(v)));
        }
    }
    out
}

/// `postgresql.conf` with the include line appended, or `None` when it is there already.
pub fn with_include(postgresql_conf: &str) -> Option<String> {
    if postgresql_conf.lines().any(|l| l.trim() == INCLUDE_LINE) {
        return None;
    }
    let mut s = postgresql_conf.to_string();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str("\n# Added by pgquorum; settings in pgquorum.conf win over the ones above.\n");
    s.push_str(INCLUDE_LINE);
    s.push('\n');
    Some(s)
}

/// `pg_hba.conf`: the operator's lines first (the first matching line wins), then
/// pgquorum's. Everything is password-authenticated over TCP; no local socket exists.
/// With `ssl`, every connection from another host must be TLS (`hostssl`); only
/// pgquorum's own superuser session over loopback stays `host`.
pub fn render_pg_hba(
    operator_lines: &[String],
    superuser: &str,
    replication: &str,
    ssl: bool,
) -> String {
    let mut out = String::from(
        "# Written by pgquorum at every start; edits are lost.\n\
         # Add lines with postgresql.pg_hba in the pgquorum config; they come first.\n",
    );
    for l in operator_lines {
        out.push_str(l);
        out.push('\n');
    }
    let su = sql_ident(superuser);
    let repl = sql_ident(replication);
    let remote = if ssl { "hostssl" } else { "host" };
    for line in [
        format!("host all {su} 127.0.0.1/32 scram-sha-256"),
        format!("host all {su} ::1/128 scram-sha-256"),
        format!("{remote} replication {repl} 0.0.0.0/0 scram-sha-256"),
        format!("{remote} replication {repl} ::/0 scram-sha-256"),
        format!("{remote} all all 0.0.0.0/0 scram-sha-256"),
        format!("{remote} all all ::/0 scram-sha-256"),
    ] {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// One `.pgpass` line matching any host, port and database for `user`.
pub fn pgpass_line(user: &str, password: &str) -> String {
    format!(
        "*:*:*:{}:{}\n",
        pgpass_escape(user),
        pgpass_escape(password)
    )
}

/// `Database cluster state` from `pg_controldata` output (run with `LC_ALL=C`).
pub fn controldata_state(output: &str) -> Option<&str> {
    output.lines().find_map(|l| {
        l.strip_prefix("Database cluster state:")
            .map(|rest| rest.trim())
    })
}

/// Whether a `Database cluster state` needs no crash recovery before pg_rewind.
pub fn is_clean_shutdown(state: &str) -> bool {
    matches!(state, "shut down" | "shut down in recovery")
}

#[cfg(test)]
mod tests {
    #[test]
    fn standby_names_round_trip() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for v in [
            names(&[]),
            names(&["pg2"]),
            names(&["a b", "q\"x"]),
            names(&["n1", "n2", "n3"]),
        ] {
            assert_eq!(parse_standby_names(&standby_names_value(&v)), v);
        }
        assert_eq!(
            standby_names_value(&names(&["a", "b"])),
            r#"FIRST 2 ("a", "b")"#
        );
        assert_eq!(parse_standby_names("a, b"), names(&["a", "b"]));
        assert_eq!(parse_standby_names("ANY 1 (a,\"B\")"), names(&["a", "B"]));
        assert_eq!(parse_standby_names("  "), names(&[]));
    }

    use super::*;

    #[test]
    fn synchronous_commit_that_defeats_synchronous_mode_is_refused_and_pinned() {
        let p = |v: &str| BTreeMap::from([("synchronous_commit".to_string(), v.to_string())]);
        for weak in ["off", "local", "OFF", "false", "0"] {
            assert!(check_synchronous_commit(&p(weak), true).is_err(), "{weak}");
            assert!(check_synchronous_commit(&p(weak), false).is_ok(), "{weak}");
            let mut m = p(weak);
            assert!(pin_synchronous_commit(&mut m) && m.is_empty(), "{weak}");
        }
        for strong in ["on", "remote_write", "remote_apply"] {
            assert!(
                check_synchronous_commit(&p(strong), true).is_ok(),
                "{strong}"
            );
            let mut m = p(strong);
            assert!(!pin_synchronous_commit(&mut m) && m.len() == 1, "{strong}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(conf_quote(r"a'b\c"), r"'a''b\\c'");
        assert_eq!(conninfo_quote(r"a'b\c d"), r"'a\'b\\c d'");
        assert_eq!(pgpass_escape(r"p:w\x"), r"p\:w\\x");
        assert_eq!(sql_literal(r"it's \n"), r"E'it''s \\n'");
        assert_eq!(sql_ident(r#"we"ird"#), r#""we""ird""#);
    }

    #[test]
    fn slot_names_are_sanitized_and_bounded() {
        assert_eq!(slot_name("Node-1.eu"), "pgq_node_1_eu");
        assert_eq!(slot_name("n1"), "pgq_n1");
        let long_a = slot_name(&"a".repeat(100));
        let long_b = slot_name(&format!("{}b", "a".repeat(99)));
        assert!(long_a.len() <= 63 && valid_slot_name(&long_a), "{long_a}");
        assert_ne!(long_a, long_b);
        assert!(valid_slot_name("pgq_n1"));
        assert!(!valid_slot_name("pgq-n1"));
        assert!(!valid_slot_name(""));
    }

    #[test]
    fn parameters_are_checked() {
        let mut p = BTreeMap::new();
        p.insert("shared_buffers".to_string(), "256MB".to_string());
        assert!(check_parameters(&p).is_ok());
        for (k, v, want) in [
            ("Port", "5", "managed by pgquorum"),
            ("primary_conninfo", "x", "managed by pgquorum"),
            ("wal_level", "minimal", "cannot feed replicas"),
            ("work_mem\nport", "1", "not a PostgreSQL parameter"),
            ("work_mem", "1\nport = 2", "line breaks"),
        ] {
            let mut p = BTreeMap::new();
            p.insert(k.to_string(), v.to_string());
            let e = check_parameters(&p).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[test]
    fn conf_for_a_replica_has_conninfo_and_operator_values_last() {
        let mut p = BTreeMap::new();
        p.insert("wal_keep_size".to_string(), "1GB".to_string());
        let r = ReplicaConf {
            primary: Some(("10.0.0.1", 5433)),
            user: "repl",
            passfile: Path::new("/var/lib/pg/pgquorum.pgpass"),
            slot: Some("pgq_n2"),
        };
        let c = render_pgquorum_conf("0.0.0.0", 5432, "n2", &p, Some(&r), None);
        assert!(c.contains("port = 5432\n"));
        assert!(c.contains("unix_socket_directories = ''\n"));
        assert!(c.contains(
            "primary_conninfo = 'host=''10.0.0.1'' port=5433 user=''repl'' application_name=''n2'' \
             passfile=''/var/lib/pg/pgquorum.pgpass'' connect_timeout=5'\n"
        ));
        assert!(c.contains("primary_slot_name = 'pgq_n2'\n"));
        let ours = c.find("wal_keep_size = '128MB'").unwrap();
        let theirs = c.find("wal_keep_size = '1GB'").unwrap();
        assert!(ours < theirs, "operator values must come last");

        let primary = render_pgquorum_conf("127.0.0.1", 5432, "n1", &BTreeMap::new(), None, None);
        assert!(primary.contains("primary_conninfo = ''\n"));
        assert!(primary.contains("primary_slot_name = ''\n"));
        assert!(primary.contains("ssl = off\n"));

        let ssl = SslFiles {
            ca: "/var/lib/pg/pgquorum-ca.crt".into(),
            cert: "/var/lib/pg/pgquorum-server.crt".into(),
            key: "/var/lib/pg/pgquorum-server.key".into(),
        };
        let c = render_pgquorum_conf("0.0.0.0", 5432, "n2", &p, Some(&r), Some(&ssl));
        assert!(c.contains("ssl = on\nssl_cert_file = '/var/lib/pg/pgquorum-server.crt'\n"));
        assert!(c.contains(
            "connect_timeout=5 sslmode=verify-ca sslrootcert=''/var/lib/pg/pgquorum-ca.crt'''\n"
        ));
    }

    #[test]
    fn include_is_appended_once() {
        let once = with_include("max_connections = 100").unwrap();
        assert!(once.ends_with("include 'pgquorum.conf'\n"));
        assert!(once.starts_with("max_connections = 100\n"));
        assert_eq!(with_include(&once), None);
    }

    #[test]
    fn hba_puts_operator_lines_first() {
        let h = render_pg_hba(
            &["hostssl all all 10.0.0.0/8 cert".into()],
            "postgres",
            "repl",
            false,
        );
        let op = h.find("hostssl all all 10.0.0.0/8 cert").unwrap();
        let su = h
            .find("host all \"postgres\" 127.0.0.1/32 scram-sha-256")
            .unwrap();
        assert!(op < su);
        assert!(h.contains("host replication \"repl\" 0.0.0.0/0 scram-sha-256\n"));
        assert!(h.contains("host all all 0.0.0.0/0 scram-sha-256\n"));
        let tls = render_pg_hba(&[], "postgres", "repl", true);
        assert!(tls.contains("hostssl replication \"repl\" 0.0.0.0/0 scram-sha-256\n"));
        assert!(tls.contains("hostssl all all ::/0 scram-sha-256\n"));
        assert!(!tls.contains("\nhost replication"), "{tls}");
        assert!(tls.contains("host all \"postgres\" 127.0.0.1/32 scram-sha-256\n"));
    }

    #[test]
    fn pgpass_and_controldata() {
        assert_eq!(pgpass_line("repl", "a:b"), "*:*:*:repl:a\\:b\n");
        let out = "pg_control version number:            1300\n\
                   Database cluster state:               in production\n";
        assert_eq!(controldata_state(out), Some("in production"));
        assert!(!is_clean_shutdown("in production"));
        assert!(is_clean_shutdown("shut down in recovery"));
    }
}
