//! `GET /ui`: a read-only status page for people. One server-rendered HTML document
//! (no script, no external assets, no build step) that reloads itself every 2 s:
//! members, roles, lag, the leader lease holder and its time left by the Raft
//! leader's clock, pending actions and recent history. Without the store it shows
//! this node's last view, and says so.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::RestState;
use crate::ha::model::{self, ClusterView, HistoryEntry, format_lsn};
use crate::ha::view::{ClusterRole, cluster_role, lag_bytes, member_state};
use crate::ops::history::utc_timestamp;

/// Seconds between reloads.
const REFRESH_S: u32 = 2;
/// History rows shown, newest first.
const HISTORY_ROWS: usize = 10;

/// What the page shows, gathered before rendering.
pub struct Page {
    pub cluster: String,
    pub node: String,
    pub view: ClusterView,
    /// (ttl, time left) of the leader key's lease, by the Raft leader.
    pub lease: Option<(u64, u64)>,
    pub history: Vec<HistoryEntry>,
    /// Why the store could not be read (the view is then this node's last one).
    pub stale: Option<String>,
    pub now_unix: u64,
}

pub async fn get_ui(State(st): State<RestState>) -> Response {
    let (cluster, node, last_view) = {
        let h = st.health.borrow();
        (h.scope.clone(), h.member.clone(), h.cluster.clone())
    };
    let now_unix = crate::ops::unix_now();
    let mut page = Page {
        cluster,
        node,
        view: last_view,
        lease: None,
        history: Vec::new(),
        stale: None,
        now_unix,
    };
    match &st.client {
        None => page.stale = Some("this node's REST API has no connection to the store".into()),
        Some(c) => match c.get(model::PREFIX, true, false).await {
            Err(e) => page.stale = Some(e.to_string()),
            Ok(resp) => {
                page.view = ClusterView::from_kvs(
                    resp.kvs
                        .iter()
                        .map(|kv| (kv.key.as_str(), kv.value.as_slice())),
                )
                .0;
                let lease = resp
                    .kvs
                    .iter()
                    .find(|kv| kv.key == model::LEADER_KEY)
                    .map(|kv| kv.lease)
                    .filter(|l| *l != 0);
                if let Some(id) = lease
                    && let Ok(l) = c.lease_ttl(id).await
                {
                    page.lease = Some((l.ttl_ms, l.remaining_ms));
                }
                page.history = crate::ops::history::read(c).await.unwrap_or_default();
            }
        },
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        render(&page),
    )
        .into_response()
}

/// Escapes text for HTML element content and quoted attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border:1px solid #bbb;padding:.3em .7em;text-align:left}\
th{background:#eee}td.n{text-align:right}\
tr.primary td{background:#b7f0b1;font-weight:bold}\
.stale{background:#ffd27f;padding:.5em}.foot{color:#777;font-size:.9em}";

pub fn render(p: &Page) -> String {
    let v = &p.view;
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <title>pgquorum: {c}</title><style>{STYLE}</style></head><body>\
         <h1>pgquorum cluster {c}</h1>",
        c = esc(&p.cluster)
    );
    if let Some(why) = &p.stale {
        let _ = write!(
            o,
            "<p class=\"stale\" id=\"stale\">The store cannot be read from this node ({}): \
             this is its last view.</p>",
            esc(why)
        );
    }
    let _ = write!(o, "<p id=\"lease\">");
    match (&v.leader, p.lease) {
        (Some(l), Some((ttl, left))) => {
            let _ = write!(
                o,
                "Leader lease: <b>{}</b>, {left} ms left of {ttl} ms (renewed every cycle)",
                esc(l)
            );
        }
        (Some(l), None) => {
            let _ = write!(o, "Leader lease: <b>{}</b>", esc(l));
        }
        (None, _) => o.push_str("<b>No primary</b>: no member holds the leader lease"),
    }
    if v.paused {
        o.push_str(" · <b>maintenance mode</b> (paused: no automatic failover)");
    }
    o.push_str("</p>");

    o.push_str(
        "<table id=\"members\"><tr><th>Member</th><th>Host</th><th>Role</th><th>State</th>\
         <th>TL</th><th>Replay LSN</th><th>Lag (MB)</th><th>Pending restart</th><th>Tags</th></tr>",
    );
    for (name, s) in &v.members {
        let role = cluster_role(v, name);
        let leader = role == ClusterRole::Leader;
        let (lsn, lag) = if leader {
            (String::new(), String::new())
        } else {
            (
                if s.replay_lsn == 0 {
                    "unknown".into()
                } else {
                    format_lsn(s.replay_lsn)
                },
                lag_bytes(v.optime, s.replay_lsn)
                    .map(|b| format!("{:.1}", b as f64 / 1048576.0))
                    .unwrap_or_default(),
            )
        };
        let _ = write!(
            o,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            if leader { " class=\"primary\"" } else { "" },
            esc(name),
            esc(&s.pg_addr),
            role.title(),
            member_state(role, s),
            s.timeline,
            lsn,
            lag,
            if s.pending_restart { "yes" } else { "" },
            esc(&crate::ha::view::tags_text(&s.tags)),
        );
    }
    o.push_str("</table>");

    let mut pending = Vec::new();
    if let Some(sw) = &v.switchover {
        let to = sw.candidate.as_deref().unwrap_or("the best replica");
        pending.push(match sw.scheduled_at {
            Some(at) => format!(
                "switchover from {} to {} at {}",
                esc(&sw.leader),
                esc(to),
                utc_timestamp(at)
            ),
            None => format!(
                "switchover from {} to {} in progress",
                esc(&sw.leader),
                esc(to)
            ),
        });
    }
    for (m, r) in v.restart.iter().filter(|(_, r)| !r.done) {
        pending.push(match r.scheduled_at {
            Some(at) => format!("restart of {} at {}", esc(m), utc_timestamp(at)),
            None => format!("restart of {} requested", esc(m)),
        });
    }
    o.push_str("<h2>Pending actions</h2><ul id=\"pending\">");
    if pending.is_empty() {
        o.push_str("<li>none</li>");
    }
    for p in pending {
        let _ = write!(o, "<li>{p}</li>");
    }
    o.push_str("</ul><h2>Recent history</h2>");
    if p.history.is_empty() {
        o.push_str("<p id=\"history\">No failover or switchover yet.</p>");
    } else {
        o.push_str(
            "<table id=\"history\"><tr><th>Time (UTC)</th><th>New primary</th><th>Reason</th>\
             <th>Timeline ended</th><th>LSN</th></tr>",
        );
        for h in p.history.iter().rev().take(HISTORY_ROWS) {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                utc_timestamp(h.time),
                esc(&h.new_leader),
                esc(&h.reason.to_string()),
                h.timeline,
                format_lsn(h.lsn)
            );
        }
        o.push_str("</table>");
    }
    let _ = write!(
        o,
        "<p class=\"foot\">As seen by {} at {}; reloads every {REFRESH_S} s. \
         Read-only: change things with <code>pgquorum ctl</code>.</p></body></html>",
        esc(&p.node),
        utc_timestamp(p.now_unix)
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::model::{MemberStatus, Role};

    #[test]
    fn renders_members_lease_and_stale_state_escaped() {
        let mut view = ClusterView {
            leader: Some("pg1".into()),
            optime: Some(3 * 1048576),
            ..ClusterView::default()
        };
        for m in [
            MemberStatus::running("pg1", Role::Primary, 3 * 1048576),
            MemberStatus::running("pg2", Role::Replica, 1048576),
        ] {
            view.members.insert(m.name.clone(), m);
        }
        let mut page = Page {
            cluster: "<prod>".into(),
            node: "pg2".into(),
            view,
            lease: Some((2500, 1800)),
            history: Vec::new(),
            stale: None,
            now_unix: 0,
        };
        let html = render(&page);
        assert!(
            html.contains("<title>pgquorum: &lt;prod&gt;</title>"),
            "{html}"
        );
        assert!(
            html.contains("<tr class=\"primary\"><td>pg1</td>"),
            "{html}"
        );
        assert!(html.contains("Leader lease: <b>pg1</b>, 1800 ms left of 2500 ms"));
        assert!(
            html.contains("<td class=\"n\">2.0</td>"),
            "pg2 is 2 MB behind: {html}"
        );
        assert!(!html.contains("id=\"stale\""));
        page.stale = Some("no quorum".into());
        page.view.leader = None;
        let html = render(&page);
        assert!(html.contains("id=\"stale\"") && html.contains("no quorum"));
        assert!(html.contains("<b>No primary</b>"));
        assert!(!html.contains("class=\"primary\""));
    }
}
