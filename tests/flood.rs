//! No port can be used to take a node down. Measured before the connection caps:
//! 25,000 idle TCP connections to a primary's REST port used up its descriptors
//! (limit 20,000), the supervisor could no longer read the data dir, and the primary
//! gave up its lease. Here the nodes run with a descriptor limit of 1024 and each
//! port in turn gets more idle connections than that, from many client addresses
//! (127.0.0.0/8), reopened as soon as the node closes them.

mod common;
mod pg;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use pg::{PgCluster, PgOptions, have_pg};
use tokio::io::AsyncReadExt;

const NOFILE: u64 = 1024;
/// More than the node's whole descriptor limit.
const FLOOD: usize = 1500;
/// Client addresses the flood comes from (127.0.0.10 ...): more than the
/// per-address cap times this is needed to fill a port.
const SOURCES: usize = 15;

/// Idle connections to `target`, each reopened when the node closes it, until
/// dropped.
struct Flood {
    stop: Arc<AtomicBool>,
    /// Connections made so far (the node may close them at once).
    made: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Flood {
    fn start(target: SocketAddr) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicUsize::new(0));
        let tasks = (0..FLOOD)
            .map(|i| {
                let (stop, made) = (stop.clone(), made.clone());
                let src: SocketAddr = format!("127.0.0.{}:0", 10 + i % SOURCES).parse().unwrap();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let s = tokio::net::TcpSocket::new_v4().unwrap();
                        s.bind(src).unwrap();
                        let Ok(mut c) = s.connect(target).await else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        made.fetch_add(1, Ordering::Relaxed);
                        // Idle: never sends a byte; returns when the node closes it.
                        let mut buf = [0u8; 64];
                        while let Ok(n) = c.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                        // Closed by the node: again, after a pause that keeps two
                        // cores' worth of reconnects from starving the test itself.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Flood { stop, made, tasks }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// For `hold`, every 200 ms: `primary` still accepts writes (its lease held) and
/// no replica does. Returns the writes made.
async fn primary_stays(c: &PgCluster, primary: u64, replicas: &[u64], hold: Duration) -> u64 {
    let db = c.connect(primary).await.expect("connect to the primary");
    db.batch_execute("CREATE TABLE IF NOT EXISTS flood (n int)")
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + hold;
    let mut writes = 0;
    while tokio::time::Instant::now() < until {
        db.execute("INSERT INTO flood VALUES (1)", &[])
            .await
            .unwrap_or_else(|e| panic!("write on the primary during the flood: {e}\n{}", c.logs()));
        writes += 1;
        for r in replicas {
            assert!(!c.is_writable(*r).await, "replica {r} became writable");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    writes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_connection_flood_on_either_port_leaves_the_primary_in_place() {
    flood_each_port(false).await;
}

/// The same with TLS on the gRPC port (the shipped set-up): idle connections there
/// hold a handshake, not a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_connection_flood_on_the_tls_ports_leaves_the_primary_in_place() {
    flood_each_port(true).await;
}

async fn flood_each_port(tls: bool) {
    if !have_pg() {
        return;
    }
    let opts = PgOptions {
        nofile: Some(NOFILE),
        tls,
        ..PgOptions::default()
    };
    let (c, p, replicas) = PgCluster::start_healthy(opts).await;
    let ttl = Duration::from_millis(PgOptions::default().ttl_ms);
    let host = c.node(p).host.clone();
    for (port_name, port) in [("REST", c.node(p).rest_port), ("gRPC", c.node(p).raft_port)] {
        let target: SocketAddr = format!("{host}:{port}").parse().unwrap();
        let flood = Flood::start(target);
        c.wait_for(
            &format!("{FLOOD} flood connections to the {port_name} port"),
            Duration::from_secs(30),
            async || {
                let n = flood.made.load(Ordering::Relaxed);
                anyhow::ensure!(n >= FLOOD, "{n} made");
                Ok(())
            },
        )
        .await;
        // Three lease lifetimes: a primary that could not renew would be fenced.
        let writes = primary_stays(&c, p, &replicas, ttl * 3).await;
        assert!(writes > 0);
        if port_name == "REST" {
            // The other port still serves: the store answers through this node.
            let out = c.ctl(&["list"]).expect("ctl list during the flood");
            assert!(out.contains(&c.node(p).name), "{out}");
        }
        drop(flood);
        // The flooded port serves again once the flood ends.
        c.wait_for(
            &format!("the {port_name} port to serve again"),
            Duration::from_secs(30),
            async || match port_name {
                "REST" => {
                    let s = c.http_status(p, "GET", "/primary").await;
                    anyhow::ensure!(s == Some(200), "GET /primary: {s:?}");
                    Ok(())
                }
                _ => c.ctl(&["list"]).map(|_| ()),
            },
        )
        .await;
    }
    let log = std::fs::read_to_string(c.node(p).log_path()).unwrap();
    assert!(
        !log.contains("Too many open files") && !log.contains("out of file descriptors"),
        "the primary ran out of descriptors:\n{}",
        c.logs()
    );
    assert!(
        log.contains("refusing connections"),
        "the caps were reached and logged:\n{}",
        c.logs()
    );
    assert_eq!(c.wait_primary(&[], Duration::from_secs(5)).await, p);
}
