//! How `ctl` prints: aligned tables and `key: value` lines for people, one JSON
//! document per command for scripts.

use super::*;

pub(super) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Lines of `label  value`, labels padded to one width.
pub(super) fn format_fields(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(label, value)| format!("{}\n", format!("{label:<width$}  {value}").trim_end()))
        .collect()
}

/// An aligned table; the last column is not padded so lines carry no trailing
/// blanks.
pub(super) fn format_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = w.saturating_sub(cell.chars().count());
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub fn format_status(st: &pb::StatusResponse) -> String {
    let leader = if st.leader_id == 0 {
        "none known".to_owned()
    } else if st.leader_addr.is_empty() {
        st.leader_id.to_string()
    } else {
        format!("{} at {}", st.leader_id, st.leader_addr)
    };
    let node = if st.node_name.is_empty() {
        st.node_id.to_string()
    } else {
        format!("{} ({})", st.node_id, st.node_name)
    };
    let fields = [
        ("node", node),
        ("cluster", st.cluster.clone()),
        ("leader", leader),
        ("term", st.term.to_string()),
        ("state", st.state.clone()),
        ("commit index", st.commit_index.to_string()),
        ("applied index", st.applied_index.to_string()),
        ("last log index", st.last_log_index.to_string()),
        ("revision", st.revision.to_string()),
    ];
    format!("{}\n{}", format_fields(&fields), format_members(st))
}

/// Members table; `*` marks the leader.
pub fn format_members(st: &pb::StatusResponse) -> String {
    let rows: Vec<Vec<String>> = st
        .members
        .iter()
        .map(|m| {
            let mark = if st.leader_id != 0 && m.id == st.leader_id {
                "*"
            } else {
                ""
            };
            vec![
                mark.to_owned(),
                m.id.to_string(),
                m.name.clone(),
                m.addr.clone(),
                m.role.clone(),
            ]
        })
        .collect();
    format_table(&["", "ID", "NAME", "ADDRESS", "ROLE"], &rows)
}

/// `key = value` per line; nothing for no keys.
pub fn format_kvs(kvs: &[pb::KeyValue]) -> String {
    kvs.iter()
        .map(|kv| format!("{} = {}\n", kv.key, lossy(&kv.value)))
        .collect()
}

pub fn format_watch_event(ev: &pb::WatchEvent) -> String {
    let key = ev.kv.as_ref().map_or("", |kv| kv.key.as_str());
    match (ev.kind.as_str(), ev.kv.as_ref()) {
        ("put", Some(kv)) => format!("{} put {} = {}", ev.revision, key, lossy(&kv.value)),
        (kind, _) => format!("{} {} {}", ev.revision, kind, key),
    }
}

pub fn format_lease_ttl(resp: &pb::LeaseResponse) -> String {
    format!(
        "lease {} ttl={} ms remaining={} ms keys=[{}]",
        resp.id,
        resp.ttl_ms,
        resp.remaining_ms,
        resp.keys.join(", ")
    )
}

pub(super) fn put_compare_failure(
    key: &str,
    prev: Option<&pb::KeyValue>,
    expected: Option<u64>,
) -> String {
    let expected = expected.map_or_else(|| "?".to_owned(), |r| r.to_string());
    match prev {
        Some(kv) => format!(
            "key {key:?} has mod_revision {}, expected {expected}",
            kv.mod_revision
        ),
        None => format!("key {key:?} does not exist, expected mod_revision {expected}"),
    }
}

pub fn kv_json(kv: &pb::KeyValue) -> Value {
    json!({
        "key": kv.key,
        "value": lossy(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    })
}

pub(super) fn members_json(st: &pb::StatusResponse) -> Value {
    st.members
        .iter()
        .map(|m| json!({ "id": m.id, "name": m.name, "addr": m.addr, "role": m.role }))
        .collect()
}

pub fn status_json(st: &pb::StatusResponse) -> Value {
    json!({
        "node_id": st.node_id,
        "node_name": st.node_name,
        "cluster": st.cluster,
        "leader_id": st.leader_id,
        "leader_addr": st.leader_addr,
        "term": st.term,
        "state": st.state,
        "commit_index": st.commit_index,
        "applied_index": st.applied_index,
        "last_log_index": st.last_log_index,
        "revision": st.revision,
        "members": members_json(st),
    })
}

pub fn range_json(resp: &pb::RangeResponse) -> Value {
    json!({
        "kvs": resp.kvs.iter().map(kv_json).collect::<Vec<_>>(),
        "revision": resp.revision,
    })
}

pub fn put_json(resp: &pb::PutResponse) -> Value {
    json!({
        "succeeded": resp.succeeded,
        "revision": resp.revision,
        "prev": resp.prev.as_ref().map(kv_json),
    })
}

pub fn delete_json(resp: &pb::DeleteResponse) -> Value {
    json!({
        "succeeded": resp.succeeded,
        "revision": resp.revision,
        "deleted": resp.deleted,
    })
}

pub fn watch_event_json(ev: &pb::WatchEvent) -> Value {
    json!({
        "kind": ev.kind,
        "revision": ev.revision,
        "kv": ev.kv.as_ref().map(kv_json),
    })
}

pub fn lease_json(resp: &pb::LeaseResponse) -> Value {
    json!({
        "id": resp.id,
        "ttl_ms": resp.ttl_ms,
        "remaining_ms": resp.remaining_ms,
        "keys": resp.keys,
        "revision": resp.revision,
    })
}

/// Decodes the `/pg/` keys into a [`ClusterView`]; malformed records are
/// skipped (see [`PgListing`] for the members that were).
pub fn cluster_view_from_kvs(kvs: &[pb::KeyValue]) -> ClusterView {
    PgListing::from_kvs(kvs).view
}

/// What `ctl list` shows: the decoded cluster plus the members whose record
/// could not be decoded, so that a bad record shows up as `unknown` instead of
/// hiding the member or failing the whole listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgListing {
    pub view: ClusterView,
    pub system_identifier: Option<u64>,
    /// Names (from the key) of members whose record is not `MemberStatus` JSON.
    pub unreadable: Vec<String>,
}

impl PgListing {
    pub fn from_kvs(kvs: &[pb::KeyValue]) -> Self {
        let (view, system_identifier) =
            ClusterView::from_kvs(kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())));
        let unreadable = kvs
            .iter()
            .filter_map(|kv| {
                let name = kv.key.strip_prefix(model::MEMBERS_PREFIX)?;
                let bad = serde_json::from_slice::<MemberStatus>(&kv.value).is_err();
                (bad && !name.is_empty() && !view.members.contains_key(name))
                    .then(|| name.to_owned())
            })
            .collect();
        Self {
            view,
            system_identifier,
            unreadable,
        }
    }
}

/// One line of `ctl list`; empty strings are blank cells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRow {
    pub member: String,
    pub host: String,
    pub role: ClusterRole,
    pub state: String,
    pub timeline: Option<u64>,
    pub receive_lsn: String,
    /// Megabytes behind `/pg/optime`, rounded as patronictl does.
    pub receive_lag_mb: Option<u64>,
    pub replay_lsn: String,
    pub replay_lag_mb: Option<u64>,
    /// PostgreSQL needs a restart for changed parameters.
    pub pending_restart: bool,
    /// The member's tags, `key=value` joined by commas (empty: defaults).
    pub tags: String,
}

pub use crate::ha::view::tags_text as tags_cell;

/// Bytes to whole MiB, rounding half to even like Python's `round`.
pub(super) fn mib_rounded(bytes: u64) -> u64 {
    (bytes as f64 / (1024.0 * 1024.0)).round_ties_even() as u64
}

/// The rows of `ctl list`, by member name, computed as patronictl does from
/// Patroni's `cluster_as_json`: the leader has no LSN columns; a replica's
/// unknown (0) position shows `unknown` with a blank lag.
pub fn list_rows(listing: &PgListing) -> Vec<ListRow> {
    let view = &listing.view;
    let hosts: Vec<(String, Option<u16>)> = view
        .members
        .values()
        .map(|s| split_host_port(&s.pg_addr))
        .filter(|(h, _)| !h.is_empty())
        .collect();
    // patronictl shows host:port only when the port tells members apart or is
    // not the default.
    let distinct: std::collections::BTreeSet<&str> =
        hosts.iter().map(|(h, _)| h.as_str()).collect();
    let append_port =
        hosts.iter().any(|(_, p)| p.is_some_and(|p| p != 5432)) || distinct.len() < hosts.len();

    let position = |role: ClusterRole, lsn: u64| -> (String, Option<u64>) {
        if role == ClusterRole::Leader {
            (String::new(), None)
        } else if lsn == 0 {
            ("unknown".to_owned(), None)
        } else {
            (
                format_lsn(lsn),
                lag_bytes(view.optime, lsn).map(mib_rounded),
            )
        }
    };
    let mut rows: Vec<ListRow> = view
        .members
        .iter()
        .map(|(name, s)| {
            let role = cluster_role(view, name);
            let (host, port) = split_host_port(&s.pg_addr);
            let host = match port {
                Some(port) if append_port && !host.is_empty() => format!("{host}:{port}"),
                _ => host,
            };
            let (receive_lsn, receive_lag_mb) = position(role, s.receive_lsn);
            let (replay_lsn, replay_lag_mb) = position(role, s.replay_lsn);
            ListRow {
                member: name.clone(),
                host,
                role,
                state: member_state(role, s).to_owned(),
                timeline: (s.timeline != 0).then_some(s.timeline),
                receive_lsn,
                receive_lag_mb,
                replay_lsn,
                replay_lag_mb,
                pending_restart: s.pending_restart,
                tags: tags_cell(&s.tags),
            }
        })
        .collect();
    rows.extend(listing.unreadable.iter().map(|name| ListRow {
        member: name.clone(),
        host: String::new(),
        role: cluster_role(view, name),
        state: "unknown".to_owned(),
        timeline: None,
        receive_lsn: String::new(),
        receive_lag_mb: None,
        replay_lsn: String::new(),
        replay_lag_mb: None,
        pending_restart: false,
        tags: String::new(),
    }));
    rows.sort_by(|a, b| a.member.cmp(&b.member));
    rows
}

pub(super) fn opt_cell(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The `patronictl list` table (its 4.1 layout):
///
/// ```text
/// + Cluster: prod (7277694203142172922) -+-----------+----+-------------+-----+------------+-----+
/// | Member | Host           | Role    | State     | TL | Receive LSN | Lag | Replay LSN | Lag |
/// ```
pub fn format_list(cluster: &str, listing: &PgListing) -> String {
    format_list_with(cluster, listing, false)
}

/// `ctl list [-e]`: the table (with `-e`, the Pending restart and Tags columns
/// always), then what patronictl prints under it: maintenance mode, a scheduled
/// switchover, pending restart requests.
pub fn format_list_with(cluster: &str, listing: &PgListing, extended: bool) -> String {
    format_rows(cluster, listing, list_rows(listing), extended)
}

/// `ctl topology`: the list table with the members as a tree, as `patronictl
/// topology` draws it: the primary first, each replica under the member it streams
/// from (`+ ` per level), a replica that streams from no known member under the
/// primary.
pub fn format_topology(cluster: &str, listing: &PgListing) -> String {
    format_rows(cluster, listing, topology_rows(listing), false)
}

/// The rows of `ctl list` in tree order, the member cell indented by depth.
pub fn topology_rows(listing: &PgListing) -> Vec<ListRow> {
    use std::collections::{BTreeMap, BTreeSet};
    let view = &listing.view;
    let by_name: BTreeMap<String, ListRow> = list_rows(listing)
        .into_iter()
        .map(|r| (r.member.clone(), r))
        .collect();
    let leader = view.leader.clone().filter(|l| by_name.contains_key(l));
    let mut children: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for name in by_name.keys() {
        let parent = if leader.as_deref() == Some(name.as_str()) {
            None
        } else {
            view.members
                .get(name)
                .and_then(|s| s.following.clone())
                .filter(|f| f != name && by_name.contains_key(f))
                .or_else(|| leader.clone())
        };
        children.entry(parent).or_default().push(name.clone());
    }
    let mut order: Vec<(String, usize)> = Vec::new();
    let mut seen = BTreeSet::new();
    // Depth-first from the roots; members on a loop of `following` (reachable from
    // no root) are appended at the top level afterwards.
    let mut stack: Vec<(String, usize)> = children
        .get(&None)
        .into_iter()
        .flatten()
        .rev()
        .map(|n| (n.clone(), 0))
        .collect();
    loop {
        while let Some((name, depth)) = stack.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            for child in children
                .get(&Some(name.clone()))
                .into_iter()
                .flatten()
                .rev()
            {
                stack.push((child.clone(), depth + 1));
            }
            order.push((name, depth));
        }
        match by_name.keys().find(|n| !seen.contains(*n)) {
            Some(n) => stack.push((n.clone(), 0)),
            None => break,
        }
    }
    order
        .into_iter()
        .filter_map(|(name, depth)| {
            let mut row = by_name.get(&name)?.clone();
            if depth > 0 {
                row.member = format!("{}+ {name}", "  ".repeat(depth - 1));
            }
            Some(row)
        })
        .collect()
}

fn format_rows(cluster: &str, listing: &PgListing, listed: Vec<ListRow>, extended: bool) -> String {
    let headers = [
        "Member",
        "Host",
        "Role",
        "State",
        "TL",
        "Receive LSN",
        "Lag",
        "Replay LSN",
        "Lag",
    ];
    // TL, the LSNs and the lags are right-aligned, as in patronictl.
    let right = [
        false, false, false, false, true, true, true, true, true, false,
    ];
    // As patronictl: the column appears only when some member needs a restart.
    let pending = extended || listed.iter().any(|r| r.pending_restart);
    let mut headers = headers.to_vec();
    if pending {
        headers.push("Pending restart");
    }
    if extended {
        headers.push("Tags");
    }
    let rows: Vec<Vec<String>> = listed
        .into_iter()
        .map(|r| {
            let mark = if r.pending_restart { "*" } else { "" }.to_owned();
            let mut row = vec![
                r.member,
                r.host,
                r.role.title().to_owned(),
                r.state,
                opt_cell(r.timeline),
                r.receive_lsn,
                opt_cell(r.receive_lag_mb),
                r.replay_lsn,
                opt_cell(r.replay_lag_mb),
            ];
            if pending {
                row.push(mark);
            }
            if extended {
                row.push(r.tags);
            }
            row
        })
        .collect();
    let sysid = listing
        .system_identifier
        .map_or_else(|| "uninitialized".to_owned(), |id| id.to_string());
    let title = format!(" Cluster: {cluster} ({sysid}) ");
    let mut out = format_framed_table(&title, &headers, &right, &rows);
    let view = &listing.view;
    if view.paused {
        out.push_str(" Maintenance mode: on\n");
    }
    if let Some(sw) = &view.switchover {
        let to = sw.candidate.as_deref().unwrap_or("the best replica");
        match sw.scheduled_at {
            Some(at) => out.push_str(&format!(
                " Switchover scheduled at: {} from: {} to: {to}\n",
                crate::ops::history::utc_timestamp(at),
                sw.leader
            )),
            None => out.push_str(&format!(
                " Switchover in progress from: {} to: {to}\n",
                sw.leader
            )),
        }
    }
    let restarts: Vec<String> = view
        .restart
        .iter()
        .filter(|(_, r)| !r.done)
        .map(|(m, r)| match r.scheduled_at {
            Some(at) => format!("{m} at {}", crate::ops::history::utc_timestamp(at)),
            None => m.clone(),
        })
        .collect();
    if !restarts.is_empty() {
        out.push_str(&format!(" Restart requested: {}\n", restarts.join(", ")));
    }
    out
}

/// A table framed like Python's PrettyTable, with `title` written over the
/// start of the top border (cut to fit) as patronictl does.
pub(super) fn format_framed_table(
    title: &str,
    headers: &[&str],
    right: &[bool],
    rows: &[Vec<String>],
) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let border: String = std::iter::once("+".to_owned())
        .chain(widths.iter().map(|w| format!("{}+", "-".repeat(w + 2))))
        .collect();
    let line = |cells: &[&str]| -> String {
        let mut out = String::from("|");
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = " ".repeat(w.saturating_sub(cell.chars().count()));
            if right.get(i).copied().unwrap_or(false) {
                out.push_str(&format!(" {pad}{cell} |"));
            } else {
                out.push_str(&format!(" {cell}{pad} |"));
            }
        }
        out.push('\n');
        out
    };
    let border_len = border.chars().count();
    let title: String = title.chars().take(border_len.saturating_sub(2)).collect();
    let top: String = std::iter::once('+')
        .chain(title.chars())
        .chain(border.chars().skip(1 + title.chars().count()))
        .collect();
    let mut out = format!("{top}\n");
    out.push_str(&line(headers));
    out.push_str(&border);
    out.push('\n');
    for row in rows {
        out.push_str(&line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    out.push_str(&border);
    out.push('\n');
    out
}

/// `patronictl list -f json`: one object per member keyed by column name,
/// blank cells left out, lags in MB.
pub fn list_json(cluster: &str, listing: &PgListing) -> Value {
    list_rows(listing)
        .into_iter()
        .map(|r| {
            let mut m = serde_json::Map::new();
            let mut put = |k: &str, v: Value| {
                if v != json!("") && !v.is_null() {
                    m.insert(k.to_owned(), v);
                }
            };
            put("Cluster", json!(cluster));
            put("Member", json!(r.member));
            put("Host", json!(r.host));
            put("Role", json!(r.role.title()));
            put("State", json!(r.state));
            put("TL", json!(r.timeline));
            put("Receive LSN", json!(r.receive_lsn));
            put("Receive Lag", json!(r.receive_lag_mb));
            put("Replay LSN", json!(r.replay_lsn));
            put("Replay Lag", json!(r.replay_lag_mb));
            if r.pending_restart {
                put("Pending restart", json!("*"));
            }
            put("Tags", json!(r.tags));
            Value::Object(m)
        })
        .collect()
}

/// One `ctl reinit --wait` progress line (stderr).
pub(super) fn reinit_progress(member: &str, p: &crate::ops::reinit::ReinitProgress) -> String {
    let secs = p.waited.as_secs();
    match (&p.copy, &p.state) {
        (Some(c), _) => {
            let of = match (c.total_bytes, c.percent()) {
                (Some(t), Some(pc)) => format!(" of {} MB ({pc} %)", t / 1_000_000),
                _ => String::new(),
            };
            format!(
                "{member}: pg_basebackup copied {} MB{of} ({secs} s)",
                c.copied_bytes / 1_000_000
            )
        }
        (None, Some(state)) => format!("{member}: {state} ({secs} s)"),
        (None, None) => format!("{member}: not publishing its status ({secs} s)"),
    }
}

/// Where a switchover stands, for the lines `ctl switchover` prints while it waits:
/// the leader key's holder and each member's role and state.
pub(super) fn cluster_progress(view: &ClusterView) -> String {
    let leader = view.leader.as_deref().unwrap_or("none");
    let members: Vec<String> = view
        .members
        .iter()
        .map(|(name, s)| {
            let role = cluster_role(view, name);
            format!("{name} {} {}", role.as_str(), member_state(role, s))
        })
        .collect();
    format!("leader: {leader}; {}", members.join(", "))
}
