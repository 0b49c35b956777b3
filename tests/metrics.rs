//! `GET /metrics` of a real cluster passes Prometheus' own parser and linter
//! (`promtool check metrics`, Debian package `prometheus`), and carries live values:
//! Raft, the lease renewal histogram, the fence deadline, PostgreSQL's start time.

mod common;
mod pg;

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::ensure;
use pg::{PgCluster, PgOptions, SLOW_WAIT, have_pg};

/// Patroni's counters whose names lack `_total`: kept as Patroni names them, so
/// existing dashboards work; the only lint findings allowed.
const PATRONI_COUNTERS: &[&str] = &[
    "patroni_xlog_location",
    "patroni_xlog_received_location",
    "patroni_xlog_replayed_location",
];

fn have_promtool() -> bool {
    pg::have_tool("promtool", "--version", "prometheus")
}

/// promtool's findings on `text`; panics on a parse error.
fn promtool(text: &str) -> Vec<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // 0: clean; 3: lint findings only; anything else: the text did not parse.
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "promtool could not parse the exposition ({:?}): {said}\n{text}",
        out.status
    );
    said.lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_metrics_pass_promtool_and_carry_live_values() {
    if !have_pg() || !have_promtool() {
        return;
    }
    let (c, p, replicas) = PgCluster::start_healthy(PgOptions::default()).await;
    let text = c
        .wait_for(
            "renewals and Raft in the primary's metrics",
            SLOW_WAIT,
            async || {
                let (st, text) = c
                    .http(p, "GET", "/metrics")
                    .await
                    .ok_or_else(|| anyhow::anyhow!("no answer"))?;
                ensure!(st == 200);
                ensure!(
                    value(&text, "pgquorum_lease_renew_seconds_count") >= 2.0,
                    "no renewals yet"
                );
                ensure!(
                    value(&text, "pgquorum_raft_term") >= 1.0,
                    "no Raft term yet"
                );
                ensure!(value(&text, "patroni_primary") == 1.0, "not primary (yet)");
                ensure!(
                    value(&text, "pgquorum_fence_deadline_seconds") > 0.0,
                    "no fence deadline ahead"
                );
                Ok(text)
            },
        )
        .await;
    for id in c.ids() {
        let (_, t) = c.http(id, "GET", "/metrics").await.expect("metrics");
        for finding in promtool(&t) {
            assert!(
                PATRONI_COUNTERS
                    .iter()
                    .any(|n| finding.starts_with(&format!("{n} "))),
                "promtool on node {id}: {finding}\n{t}"
            );
        }
    }
    assert!(value(&text, "patroni_postmaster_start_time") > 1.6e9);
    assert!(value(&text, "pgquorum_raft_applied_index") >= 1.0);
    assert!(text.contains("pgquorum_ha_decisions_total{"), "{text}");
    check_dashboard(&text, c.temp_path());
    let (_, r) = c.http(replicas[0], "GET", "/metrics").await.unwrap();
    assert_eq!(value(&r, "pgquorum_fence_deadline_seconds"), 0.0);
    assert_eq!(value(&r, "patroni_replica"), 1.0);
    assert!(value(&r, "pgquorum_raft_term") >= 1.0);
}

/// The shipped Grafana dashboard: every query parses as PromQL (promtool checks them
/// as recording rules) and every series it names is one the node exposes.
fn check_dashboard(exposition: &str, dir: &std::path::Path) {
    let dash: serde_json::Value = serde_json::from_str(include_str!(
        "../cluster-configs/grafana/pgquorum-dashboard.json"
    ))
    .expect("dashboard JSON");
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().replace("$scope", "test"))
        .collect();
    assert!(exprs.len() >= 10);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let file = dir.join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find('p') {
            rest = &rest[i..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.starts_with("patroni_") || name.starts_with("pgquorum_") {
                assert!(
                    exposition.contains(&format!("\n{name}{{")),
                    "the dashboard uses {name}, which /metrics does not have"
                );
            }
            rest = &rest[name.len().max(1)..];
        }
    }
}
