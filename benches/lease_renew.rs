//! `cargo bench --bench lease_renew`: starts a real 3-node cluster of the built
//! binary on free loopback ports and prints lease-renew latency (p50/p99 over
//! sequential renewals sent to the Raft leader) and put throughput with 1 and 32
//! concurrent clients. Prints figures; asserts nothing.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgquorum::client::Client;

const RENEWALS: usize = 2_000;
const PUTS_SINGLE: usize = 2_000;
const CONCURRENT: usize = 32;
const CONCURRENT_FOR: Duration = Duration::from_secs(5);

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn write_config(dir: &Path, id: u64, addrs: &[String]) -> std::path::PathBuf {
    let mut text = format!(
        "cluster_name = \"bench\"\ninsecure = true\nnode_id = {id}\nname = \"n{id}\"\nlisten_addr = \"{}\"\ndata_dir = \"n{id}\"\n",
        addrs[id as usize - 1]
    );
    for (i, a) in addrs.iter().enumerate() {
        text.push_str(&format!(
            "[[initial_cluster]]\nid = {}\nname = \"n{}\"\naddr = \"{a}\"\n",
            i + 1,
            i + 1
        ));
    }
    let path = dir.join(format!("n{id}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn wait_for_leader(client: &Client) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = client.status().await
            && s.leader_id != 0
            && !s.leader_addr.is_empty()
        {
            return s.leader_addr;
        }
        assert!(Instant::now() < deadline, "no leader within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn put_loop(client: Client, prefix: String, until: Instant) -> usize {
    let mut n = 0;
    while Instant::now() < until {
        client
            .put(&format!("{prefix}/{n}"), b"value".to_vec(), 0, None)
            .await
            .expect("put");
        n += 1;
    }
    n
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let bin = env!("CARGO_BIN_EXE_pgquorum");
    let mut nodes = Nodes(Vec::new());
    for id in 1..=3u64 {
        let cfg = write_config(tmp.path(), id, &addrs);
        let log = std::fs::File::create(tmp.path().join(format!("n{id}.log"))).expect("log");
        nodes.0.push(
            Command::new(bin)
                .args(["node", "--config"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start node"),
        );
    }
    let all = Client::new(addrs.clone()).expect("client");
    let leader = wait_for_leader(&all).await;
    let client = Client::new(vec![leader.clone()]).expect("client");
    println!("3-node cluster up, leader at {leader}");

    let lease = client.lease_grant(10_000, 0).await.expect("grant").id;
    for _ in 0..50 {
        client.lease_renew(lease).await.expect("warm-up renew");
    }
    let mut lat = Vec::with_capacity(RENEWALS);
    for _ in 0..RENEWALS {
        let t = Instant::now();
        client.lease_renew(lease).await.expect("renew");
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "lease renew (sequential, {RENEWALS} renewals to the leader): p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().expect("samples"))
    );

    let t = Instant::now();
    let mut lat = Vec::with_capacity(PUTS_SINGLE);
    for i in 0..PUTS_SINGLE {
        let t = Instant::now();
        client
            .put(&format!("single/{i}"), b"value".to_vec(), 0, None)
            .await
            .expect("put");
        lat.push(t.elapsed());
    }
    let el = t.elapsed();
    lat.sort();
    println!(
        "put, 1 client: {PUTS_SINGLE} puts in {:.2} s = {:.0} puts/s (p50 {:.3} ms  p99 {:.3} ms)",
        el.as_secs_f64(),
        PUTS_SINGLE as f64 / el.as_secs_f64(),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
    );

    let until = Instant::now() + CONCURRENT_FOR;
    let t = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|c| {
            let client = Client::new(vec![leader.clone()]).expect("client");
            tokio::spawn(put_loop(client, format!("multi/{c}"), until))
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("put task");
    }
    let el = t.elapsed();
    println!(
        "put, {CONCURRENT} concurrent clients: {total} puts in {:.2} s = {:.0} puts/s",
        el.as_secs_f64(),
        total as f64 / el.as_secs_f64()
    );
    drop(nodes);
}
