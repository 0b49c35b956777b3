//! A node refuses to start on input it cannot trust (foreign or damaged data
//! dirs, bad config files) and changes nothing on disk; bad requests get
//! precise gRPC codes; requests to a node cut off from its peers fail instead
//! of hanging.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure};
use common::{
    BIN, Cluster, MemberSpec, NodeSpec, Proc, WAIT, assert_tree_unchanged, free_ports, poll_client,
    poll_until, snapshot_tree, spawn_node, status_of, tail, unique_cluster_name, write_file,
};
use pgquorum::api::pb;
use pgquorum::client::Client;
use tonic::Code;

/// Hang guard for a process that should exit on its own.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// `spec` with its own (single-member) initial cluster at a fresh port.
fn with_fresh_port(mut spec: NodeSpec) -> NodeSpec {
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    spec.listen_addr = addr.clone();
    spec.initial_cluster = vec![MemberSpec {
        id: spec.node_id,
        name: spec.name.clone(),
        addr,
    }];
    spec
}

/// Starts `pgquorum node` with `spec` (config and log written to `work`) and
/// checks that it exits non-zero, that its output contains every string in
/// `expect`, and that `data_dir` is byte-for-byte unchanged. Returns the log.
async fn expect_refusal(spec: NodeSpec, work: &Path, expect: &[&str]) -> String {
    expect_refusal_unless_intact(spec, work, expect, None).await
}

/// Like [`expect_refusal`]; with `intact = Some((values, value_len))` a node that
/// starts anyway is accepted only if it serves every key `stopped_single_node`
/// wrote, each with its exact value: damage that hit space sled no longer uses
/// is no damage to the state, but silently lost or altered data always fails.
async fn expect_refusal_unless_intact(
    spec: NodeSpec,
    work: &Path,
    expect: &[&str],
    intact: Option<(usize, usize)>,
) -> String {
    let data_dir = spec.data_dir.clone();
    let before = snapshot_tree(&data_dir);
    let mut spec = spec;
    for attempt in 0.. {
        let config = work.join(format!("refused-{attempt}.toml"));
        let log = work.join(format!("refused-{attempt}.log"));
        fs::write(&config, spec.to_toml()).expect("write config");
        let mut proc = Proc::new(spawn_node(&config, &log));
        let outcome = poll_until("the node to exit", EXIT_DEADLINE, async || {
            if let Some(st) = proc.try_wait() {
                return Ok(Ok(st));
            }
            // Serving requests means it opened the data dir: report what it sees.
            if let Ok(st) = status_of(&spec.listen_addr, &spec.cluster_name, spec.node_id).await {
                let keys = poll_client(&spec.listen_addr)
                    .get("", true, true)
                    .await
                    .map(|r| r.kvs.len().to_string())
                    .unwrap_or_else(|e| format!("unknown ({e})"));
                return Ok(Err(format!(
                    "it serves requests: state {}, term {}, revision {}, applied index {}, \
                     {} members, {keys} keys",
                    st.state,
                    st.term,
                    st.revision,
                    st.applied_index,
                    st.members.len()
                )));
            }
            bail!("still running")
        })
        .await;
        let status = match outcome {
            Ok(Ok(st)) => st,
            Ok(Err(what)) => {
                if let Some((values, value_len)) = intact {
                    // A node that opened its data dir serves while it still replays
                    // its log into the state machine: judge what it holds once it
                    // has had time to finish (on a loaded machine it once showed 243
                    // of 600 keys mid-replay).
                    let mut kvs = Vec::new();
                    let intact_now = |kvs: &[pb::KeyValue]| {
                        kvs.len() == values
                            && kvs.iter().enumerate().all(|(i, kv)| {
                                kv.key == format!("data/{i:05}")
                                    && kv.value == vec![b'a' + (i % 26) as u8; value_len]
                            })
                    };
                    let _ = poll_until("every key to be served", EXIT_DEADLINE, async || {
                        kvs = poll_client(&spec.listen_addr)
                            .get("data/", true, false)
                            .await
                            .map(|r| r.kvs)
                            .unwrap_or_default();
                        ensure!(intact_now(&kvs), "{} keys", kvs.len());
                        Ok(())
                    })
                    .await;
                    let all_there = intact_now(&kvs);
                    proc.kill9();
                    if all_there {
                        eprintln!(
                            "the damage hit space sled no longer uses: the node started with all {values} keys intact"
                        );
                        return fs::read_to_string(&log).unwrap_or_default();
                    }
                    panic!(
                        "the node started on a damaged sled db and serves {} of {values} keys intact;                          expected a refusal mentioning {expect:?}\nlog:\n{}",
                        kvs.len(),
                        tail(&log, 80)
                    );
                }
                proc.kill9();
                panic!(
                    "the node did not refuse to start, {what}; expected an error mentioning \
                     {expect:?}\nlog:\n{}",
                    tail(&log, 80)
                );
            }
            Err(timeout) => {
                proc.kill9();
                panic!(
                    "the node did not refuse to start ({timeout}); expected an error mentioning \
                     {expect:?}\nlog:\n{}",
                    tail(&log, 80)
                );
            }
        };
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("cannot listen on") && attempt < 5 {
            // Another process took the port: that is not what we test.
            spec = with_fresh_port(spec);
            continue;
        }
        assert!(!status.success(), "the node exited with success:\n{text}");
        for want in expect {
            assert!(
                text.contains(want),
                "the node's error output should mention {want:?}:\n{text}"
            );
        }
        assert_tree_unchanged(
            &before,
            &snapshot_tree(&data_dir),
            &format!(
                "data dir {} after a refused start (node output:\n{text})",
                data_dir.display()
            ),
        );
        return text;
    }
    unreachable!()
}

/// A one-node cluster that committed some data and was stopped cleanly;
/// returns it with the spec of its node.
async fn stopped_single_node(values: usize, value_len: usize) -> (Cluster, NodeSpec) {
    let mut cluster = Cluster::start(1).await;
    cluster.wait_for_leader().await;
    let client = cluster.client();
    for i in 0..values {
        let value = vec![b'a' + (i % 26) as u8; value_len];
        client
            .put(&format!("data/{i:05}"), value, 0, None)
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
    }
    let st = cluster.terminate(1).await;
    assert!(
        st.success(),
        "clean stop failed ({st}):\n{}",
        cluster.logs()
    );
    let spec = cluster.node(1).spec.clone();
    (cluster, spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_data_dir_of_another_cluster() {
    let (cluster, spec_a) = stopped_single_node(10, 16).await;
    let spec_b = with_fresh_port(NodeSpec {
        cluster_name: unique_cluster_name(),
        ..spec_a.clone()
    });
    let log = expect_refusal(
        spec_b.clone(),
        cluster.temp_path(),
        &[
            "belongs to cluster",
            &spec_a.cluster_name,
            &spec_b.cluster_name,
        ],
    )
    .await;
    assert!(
        log.contains(spec_a.data_dir.to_str().unwrap()),
        "the error should name the data dir:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_data_dir_of_another_node_id() {
    let (cluster, spec1) = stopped_single_node(10, 16).await;
    let spec2 = with_fresh_port(NodeSpec {
        node_id: 2,
        name: "n2".into(),
        ..spec1.clone()
    });
    let log = expect_refusal(
        spec2,
        cluster.temp_path(),
        &["belongs to node id 1", "configured as id 2"],
    )
    .await;
    assert!(
        log.contains(spec1.data_dir.to_str().unwrap()),
        "the error should name the data dir:\n{log}"
    );
}

/// Stops a node with a few MB of data, damages `sled/db` with `damage`, and
/// expects the node to refuse to start.
async fn refuses_damaged_sled(damage: impl FnOnce(&Path)) {
    let (cluster, spec) = stopped_single_node(600, 4096).await;
    let db = spec.data_dir.join("sled").join("db");
    damage(&db);
    expect_refusal_unless_intact(
        spec,
        cluster.temp_path(),
        &["damaged", "sled"],
        Some((600, 4096)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_sled_db_with_garbage_in_the_middle() {
    refuses_damaged_sled(|db| {
        let len = fs::metadata(db).expect("sled db").len();
        assert!(
            len > 64 * 1024,
            "sled db is unexpectedly small: {len} bytes"
        );
        let mut f = OpenOptions::new().write(true).open(db).expect("open db");
        f.seek(SeekFrom::Start(len / 2)).expect("seek");
        let garbage: Vec<u8> = (0..32 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        f.write_all(&garbage).expect("write garbage");
        f.sync_all().expect("sync");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_sled_db_truncated_to_half() {
    refuses_damaged_sled(|db| {
        let len = fs::metadata(db).expect("sled db").len();
        let f = OpenOptions::new().write(true).open(db).expect("open db");
        f.set_len(len / 2).expect("truncate");
        f.sync_all().expect("sync");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_non_empty_directory_it_did_not_create() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data_dir = tmp.path().join("data");
    write_file(&data_dir.join("precious.txt"), b"do not touch");
    write_file(
        &data_dir.join("sub").join("base").join("16384"),
        &[7u8; 8192],
    );
    let spec = with_fresh_port(NodeSpec {
        cluster_name: unique_cluster_name(),
        node_id: 1,
        name: "n1".into(),
        listen_addr: String::new(),
        data_dir: data_dir.clone(),
        join: false,
        initial_cluster: Vec::new(),
    });
    expect_refusal(
        spec,
        tmp.path(),
        &["did not create", data_dir.to_str().unwrap()],
    )
    .await;
}

/// Runs the binary with `args` and returns its exit status and output
/// (stdout + stderr), failing if it does not exit within the deadline.
async fn run_to_exit(args: &[&str], work: &Path) -> (ExitStatus, String) {
    let out_path = work.join("run.out");
    let out = fs::File::create(&out_path).expect("create output file");
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("spawn pgquorum");
    let mut proc = Proc::new(child);
    let status = proc
        .wait_exit(EXIT_DEADLINE)
        .await
        .unwrap_or_else(|| panic!("pgquorum {args:?} did not exit within {EXIT_DEADLINE:?}"));
    (status, fs::read_to_string(&out_path).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_malformed_config_files() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let good = with_fresh_port(NodeSpec {
        cluster_name: unique_cluster_name(),
        node_id: 1,
        name: "n1".into(),
        listen_addr: String::new(),
        data_dir: tmp.path().join("data"),
        join: false,
        initial_cluster: Vec::new(),
    });
    let good_toml = good.to_toml();
    let not_member = NodeSpec {
        node_id: 5,
        ..good.clone()
    }
    .to_toml();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad-toml",
            good_toml.replace("node_id = 1", "node_id = = 1"),
            "is not valid",
        ),
        (
            "unknown-key",
            good_toml.replace("node_id = 1", "node_id = 1\nfavourite_colour = \"blue\""),
            "unknown field",
        ),
        (
            "not-in-initial-cluster",
            not_member,
            "node_id 5 is not in initial_cluster",
        ),
    ];

    // The good config passes: the cases below fail for their defect only.
    let good_path = tmp.path().join("good.toml");
    fs::write(&good_path, &good_toml).expect("write");
    let (st, out) = run_to_exit(
        &["check-config", "--config", good_path.to_str().unwrap()],
        tmp.path(),
    )
    .await;
    assert!(st.success(), "the reference config is refused: {out}");
    assert!(!good.data_dir.exists(), "check-config created the data dir");

    for (name, text, want) in cases {
        let path = tmp.path().join(format!("{name}.toml"));
        fs::write(&path, &text).expect("write config");
        let path_str = path.to_str().unwrap();
        for cmd in ["check-config", "node"] {
            let (st, out) = run_to_exit(&[cmd, "--config", path_str], tmp.path()).await;
            assert!(
                !st.success(),
                "{cmd} accepted {name}:\n{text}\noutput: {out}"
            );
            assert!(
                out.contains(path_str),
                "{cmd} on {name} should name the file: {out}"
            );
            assert!(
                out.contains(want),
                "{cmd} on {name} should say {want:?}: {out}"
            );
            assert!(
                !good.data_dir.exists(),
                "{cmd} on {name} created the data dir {}",
                good.data_dir.display()
            );
        }
    }
}

/// Calls `put` on `addr` with a raw gRPC client (no retries, no client-side
/// timeout), so we see what the node itself answers.
async fn raw_put(addr: &str, key: &str) -> Result<pb::PutResponse, tonic::Status> {
    let mut c = pb::admin_client::AdminClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    c.put(pb::PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease: 0,
        expect_mod_revision: None,
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_errors() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let client = cluster.client();

    let err = client
        .put("", b"v".to_vec(), 0, None)
        .await
        .expect_err("empty key");
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");

    let err = client.lease_grant(0, 0).await.expect_err("ttl 0");
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");

    let err = client
        .lease_renew(987_654_321)
        .await
        .expect_err("unknown lease");
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    assert!(err.to_string().contains("987654321"), "{err}");

    let err = client
        .put("k", b"v".to_vec(), 987_654_321, None)
        .await
        .expect_err("put with an unknown lease");
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");

    // Nothing above changed anything.
    let r = client.get("k", false, false).await.expect("get");
    assert!(r.kvs.is_empty(), "{r:?}");
}

async fn cut_off_node_answers_unavailable(survivor_is_leader: bool) {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster
        .client()
        .put("before", b"1".to_vec(), 0, None)
        .await
        .expect("put");
    let survivor = if survivor_is_leader {
        leader
    } else {
        *cluster.ids().iter().find(|id| **id != leader).unwrap()
    };
    // Let the survivor apply the write before cutting it off.
    let c = cluster.client_for(survivor);
    cluster
        .wait_for("the survivor to apply the write", WAIT, async || {
            common::get_serializable(&c, "before").await
        })
        .await;
    for id in cluster.ids() {
        if id != survivor {
            cluster.kill9(id);
        }
    }
    let addr = cluster.endpoint(survivor);

    // The node itself answers within its request deadline (3 s); 10 s is a
    // hang guard, not a performance requirement.
    let hang_guard = Duration::from_secs(10);
    let res = tokio::time::timeout(hang_guard, raw_put(&addr, "after"))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "a put to a node without a majority hung for {hang_guard:?}:\n{}",
                cluster.logs()
            )
        });
    let status = res.expect_err("a put without a majority must fail");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{status:?}"
    );

    // Through the failover client: a linearizable read fails too (after its
    // retries), with a code a caller can act on.
    let client = Client::new(vec![addr.clone()])
        .expect("client")
        .with_timeout(Duration::from_secs(5));
    let res = tokio::time::timeout(Duration::from_secs(60), client.get("before", false, false))
        .await
        .expect("a linearizable read without a majority hung");
    let err = res.expect_err("a linearizable read without a majority must fail");
    assert!(
        matches!(err.code(), Some(Code::Unavailable | Code::DeadlineExceeded)),
        "{err}"
    );

    // Serializable reads still work from the node's own state.
    let got = common::get_serializable(&client, "before")
        .await
        .expect("serializable read on the cut-off node");
    assert_eq!(got, b"1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_without_peers_answers_unavailable() {
    cut_off_node_answers_unavailable(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_without_peers_answers_unavailable() {
    cut_off_node_answers_unavailable(false).await;
}
