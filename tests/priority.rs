//! The shipped unit file runs pgquorum at a raised priority (`Nice=-10`) so lease
//! renewals and the fence keep their timing while PostgreSQL saturates the CPUs
//! (`benches/failover` soak mode measures the difference). That only works if
//! PostgreSQL does not inherit it: the guard keeps the node's priority, the
//! postmaster and every backend run at nice 0.

mod common;
mod pg;

use pg::{PgCluster, PgOptions, have_pg};

/// Field 19 of `/proc/PID/stat`: the nice value.
fn nice_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 1..];
    rest.split_whitespace()
        .nth(16)
        .and_then(|v| v.parse().ok())
        .expect("nice field")
}

#[tokio::test]
async fn pg_postgres_does_not_inherit_a_raised_node_priority() {
    // SAFETY: geteuid has no preconditions.
    if !have_pg() || unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs PostgreSQL and root (a negative nice value)");
        return;
    }
    let opts = PgOptions {
        nice: Some(-5),
        ..PgOptions::default()
    };
    let (c, p, replicas) = PgCluster::start_healthy(opts).await;
    for id in [p, replicas[0]] {
        let node = c.supervisor_pid(id);
        assert_eq!(nice_of(node), -5, "node {id}'s pgquorum");
        let guard = c.guard_pid(id).expect("guard");
        assert_eq!(nice_of(guard), -5, "node {id}'s pg-guard keeps it");
        let pids = c.instance_pids(id);
        assert!(pids.len() > 3, "postmaster and its processes: {pids:?}");
        for pid in pids {
            assert_eq!(nice_of(pid), 0, "node {id}'s PostgreSQL process {pid}");
        }
    }
}
