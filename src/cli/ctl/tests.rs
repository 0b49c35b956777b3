//! `ctl`'s argument parsing and output formatting.
use super::*;
use clap::Parser;

#[derive(Parser, Debug)]
struct T {
    #[command(flatten)]
    a: CtlArgs,
}

fn parse(args: &[&str]) -> CtlArgs {
    T::try_parse_from(std::iter::once("ctl").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .a
}

fn status() -> pb::StatusResponse {
    pb::StatusResponse {
        node_id: 2,
        node_name: "n2".into(),
        cluster: "prod".into(),
        leader_id: 1,
        leader_addr: "127.0.0.1:7001".into(),
        term: 3,
        state: "follower".into(),
        commit_index: 12,
        applied_index: 11,
        last_log_index: 12,
        revision: 5,
        members: vec![
            pb::Member {
                id: 1,
                name: "n1".into(),
                addr: "127.0.0.1:7001".into(),
                role: "voter".into(),
            },
            pb::Member {
                id: 2,
                name: "n2".into(),
                addr: "127.0.0.1:7002".into(),
                role: "learner".into(),
            },
        ],
    }
}

fn kv(key: &str, value: &[u8], rev: u64) -> pb::KeyValue {
    pb::KeyValue {
        key: key.into(),
        value: value.to_vec(),
        create_revision: 1,
        mod_revision: rev,
        version: 1,
        lease: 0,
    }
}

fn member_json(name: &str, role: &str, state: &str, addr: &str, lsns: (u64, u64)) -> Vec<u8> {
    json!({
        "name": name,
        "role": role,
        "state": state,
        "pg_addr": addr,
        "api_url": format!("http://{name}:8008"),
        "timeline": 5,
        "receive_lsn": lsns.0,
        "replay_lsn": lsns.1,
        "following": if role == "replica" { Some("pg1") } else { None },
        "node_id": 1,
    })
    .to_string()
    .into_bytes()
}

const OPTIME: u64 = 0x4_0400_04E8;

/// pg1 leads, pg2 is the streaming sync standby, pg3 lags 3 MiB (receive)
/// and 40 MiB (replay), pg4 is stopped with no position, pg5's record is garbage.
fn pg_kvs() -> Vec<pb::KeyValue> {
    let mib = 1024 * 1024;
    vec![
        kv("/pg/initialize", b"7277694203142172922", 1),
        kv("/pg/leader", b"pg1", 2),
        kv(
            "/pg/members/pg1",
            &member_json(
                "pg1",
                "primary",
                "running",
                "10.0.0.1:5432",
                (OPTIME, OPTIME),
            ),
            3,
        ),
        kv(
            "/pg/members/pg2",
            &member_json(
                "pg2",
                "replica",
                "running",
                "10.0.0.2:5432",
                (OPTIME, OPTIME),
            ),
            3,
        ),
        kv(
            "/pg/members/pg3",
            &member_json(
                "pg3",
                "replica",
                "running",
                "10.0.0.3:5432",
                (OPTIME - 3 * mib, OPTIME - 40 * mib),
            ),
            3,
        ),
        kv(
            "/pg/members/pg4",
            &member_json("pg4", "replica", "stopped", "10.0.0.4:5432", (0, 0)),
            3,
        ),
        kv("/pg/members/pg5", b"{\"name\": \"pg5\", \"role\": ", 3),
        kv("/pg/optime", OPTIME.to_string().as_bytes(), 4),
        kv("/pg/sync", br#"{"leader":"pg1","sync_standby":"pg2"}"#, 5),
    ]
}

#[test]
fn list_command_parses() {
    assert!(matches!(
        parse(&["list"]).command,
        CtlCommand::List {
            extended: false,
            watch: None
        }
    ));
}

#[test]
fn pg_keys_decode() {
    let listing = PgListing::from_kvs(&pg_kvs());
    assert_eq!(listing.view.leader.as_deref(), Some("pg1"));
    assert_eq!(listing.view.optime, Some(OPTIME));
    assert_eq!(
        listing.view.sync.as_ref().map(|s| s.sync_standby.clone()),
        Some(vec!["pg2".to_string()])
    );
    assert_eq!(
        listing.view.members.keys().collect::<Vec<_>>(),
        ["pg1", "pg2", "pg3", "pg4"]
    );
    assert_eq!(listing.unreadable, ["pg5"]);
    assert_eq!(listing.system_identifier, Some(7277694203142172922));
    assert_eq!(cluster_view_from_kvs(&pg_kvs()), listing.view);
}

#[test]
fn malformed_pg_keys_do_not_fail_the_listing() {
    let kvs = [
        kv("/pg/optime", b"not a number", 1),
        kv("/pg/sync", b"[1,2", 1),
        kv("/pg/members/x", b"\xff\xfe", 1),
        kv("/pg/members/", b"{}", 1),
    ];
    let listing = PgListing::from_kvs(&kvs);
    assert_eq!(listing.view.optime, None);
    assert_eq!(listing.view.sync, None);
    assert_eq!(listing.unreadable, ["x"]);
    let text = format_list("prod", &listing);
    assert!(
        text.contains("| x      |      | Replica | unknown |"),
        "{text}"
    );
    assert!(
        text.starts_with("+ Cluster: prod (uninitialized) "),
        "{text}"
    );
    // Nothing at all: just the frame.
    let empty = format_list("prod", &PgListing::default());
    assert_eq!(empty.lines().count(), 4, "{empty}");
}

#[test]
fn list_table() {
    let text = format_list("prod", &PgListing::from_kvs(&pg_kvs()));
    let expected = "\
+ Cluster: prod (7277694203142172922) ---------+----+-------------+-----+------------+-----+
| Member | Host     | Role         | State     | TL | Receive LSN | Lag | Replay LSN | Lag |
+--------+----------+--------------+-----------+----+-------------+-----+------------+-----+
| pg1    | 10.0.0.1 | Leader       | running   |  5 |             |     |            |     |
| pg2    | 10.0.0.2 | Sync Standby | streaming |  5 |   4/40004E8 |   0 |  4/40004E8 |   0 |
| pg3    | 10.0.0.3 | Replica      | streaming |  5 |   4/3D004E8 |   3 |  4/18004E8 |  40 |
| pg4    | 10.0.0.4 | Replica      | stopped   |  5 |     unknown |     |    unknown |     |
| pg5    |          | Replica      | unknown   |    |             |     |            |     |
+--------+----------+--------------+-----------+----+-------------+-----+------------+-----+
";
    assert_eq!(text, expected);
}

#[test]
fn list_shows_ports_when_hosts_repeat() {
    let kvs = [
        kv("/pg/leader", b"a", 1),
        kv(
            "/pg/members/a",
            &member_json("a", "primary", "running", "127.0.0.1:5432", (9, 9)),
            1,
        ),
        kv(
            "/pg/members/b",
            &member_json("b", "replica", "running", "127.0.0.1:5433", (9, 9)),
            1,
        ),
    ];
    let rows = list_rows(&PgListing::from_kvs(&kvs));
    let hosts: Vec<&str> = rows.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(hosts, ["127.0.0.1:5432", "127.0.0.1:5433"]);
    // No /pg/optime: the lag is not known, not 0.
    assert_eq!(rows[1].receive_lsn, "0/9");
    assert_eq!(rows[1].receive_lag_mb, None);
}

#[test]
fn lag_rounds_like_patronictl() {
    let mib = 1024 * 1024;
    assert_eq!(mib_rounded(0), 0);
    assert_eq!(mib_rounded(mib / 2), 0);
    assert_eq!(mib_rounded(mib / 2 + 1), 1);
    assert_eq!(mib_rounded(3 * mib / 2), 2);
    assert_eq!(mib_rounded(5 * mib / 2), 2);
}

#[test]
fn list_json_like_patronictl() {
    let doc = list_json("prod", &PgListing::from_kvs(&pg_kvs()));
    let rows = doc.as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(
        rows[0],
        json!({"Cluster":"prod","Member":"pg1","Host":"10.0.0.1","Role":"Leader","State":"running","TL":5})
    );
    assert_eq!(
        rows[2],
        json!({
            "Cluster":"prod","Member":"pg3","Host":"10.0.0.3","Role":"Replica","State":"streaming","TL":5,
            "Receive LSN":"4/3D004E8","Receive Lag":3,"Replay LSN":"4/18004E8","Replay Lag":40,
        })
    );
    assert_eq!(rows[3]["Receive LSN"], "unknown");
    assert!(rows[3].get("Receive Lag").is_none());
    assert_eq!(
        rows[4],
        json!({"Cluster":"prod","Member":"pg5","Role":"Replica","State":"unknown"})
    );
}

#[test]
fn defaults() {
    // The env var would override the default endpoints.
    if std::env::var_os("PGQUORUM_ENDPOINTS").is_some() {
        return;
    }
    let a = parse(&["status"]);
    assert_eq!(
        a.endpoints,
        vec!["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
    );
    assert_eq!(a.output, OutputFormat::Table);
    assert_eq!(a.timeout, Duration::from_secs(5));
    assert!(matches!(a.command, CtlCommand::Status));
}

#[test]
fn global_options() {
    let a = parse(&[
        "--endpoints",
        "a:1,b:2",
        "--output",
        "json",
        "--timeout",
        "250ms",
        "members",
    ]);
    assert_eq!(a.endpoints, vec!["a:1", "b:2"]);
    assert_eq!(a.output, OutputFormat::Json);
    assert_eq!(a.timeout, Duration::from_millis(250));
    assert!(matches!(a.command, CtlCommand::Members));
}

#[test]
fn member_commands() {
    let a = parse(&[
        "member",
        "add",
        "--id",
        "4",
        "--name",
        "n4",
        "--addr",
        "h:7004",
        "--learner",
    ]);
    match a.command {
        CtlCommand::Member(MemberCommand::Add {
            id,
            name,
            addr,
            learner,
        }) => {
            assert_eq!(
                (id, name.as_str(), addr.as_str(), learner),
                (4, "n4", "h:7004", true)
            );
        }
        other => panic!("{other:?}"),
    }
    let a = parse(&["member", "remove", "--id", "3"]);
    assert!(matches!(
        a.command,
        CtlCommand::Member(MemberCommand::Remove { id: 3 })
    ));
}

#[test]
fn kv_commands() {
    match parse(&["kv", "get", "/a/", "--prefix", "--serializable"]).command {
        CtlCommand::Kv(KvCommand::Get {
            key,
            prefix,
            serializable,
        }) => assert_eq!((key.as_str(), prefix, serializable), ("/a/", true, true)),
        other => panic!("{other:?}"),
    }
    match parse(&[
        "kv",
        "put",
        "k",
        "-v",
        "--lease",
        "7",
        "--expect-revision",
        "0",
    ])
    .command
    {
        CtlCommand::Kv(KvCommand::Put {
            key,
            value,
            lease,
            expect_revision,
            force: false,
        }) => {
            assert_eq!(
                (key.as_str(), value.as_str(), lease, expect_revision),
                ("k", "-v", 7, Some(0))
            );
        }
        other => panic!("{other:?}"),
    }
    match parse(&["kv", "put", "k", "v"]).command {
        CtlCommand::Kv(KvCommand::Put {
            lease,
            expect_revision,
            ..
        }) => assert_eq!((lease, expect_revision), (0, None)),
        other => panic!("{other:?}"),
    }
    match parse(&["kv", "del", "k", "--expect-revision", "9"]).command {
        CtlCommand::Kv(KvCommand::Del {
            prefix,
            expect_revision,
            ..
        }) => assert_eq!((prefix, expect_revision), (false, Some(9))),
        other => panic!("{other:?}"),
    }
    match parse(&["kv", "watch", "/", "--from-revision", "3", "--count", "2"]).command {
        CtlCommand::Kv(KvCommand::Watch {
            prefix,
            from_revision,
            count,
        }) => assert_eq!((prefix.as_str(), from_revision, count), ("/", 3, Some(2))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn lease_commands() {
    assert!(matches!(
        parse(&["lease", "grant", "3000", "--id", "42"]).command,
        CtlCommand::Lease(LeaseCommand::Grant {
            ttl_ms: 3000,
            id: 42
        })
    ));
    assert!(matches!(
        parse(&["lease", "grant", "3000"]).command,
        CtlCommand::Lease(LeaseCommand::Grant { id: 0, .. })
    ));
    assert!(matches!(
        parse(&["lease", "renew", "42", "--keep-alive"]).command,
        CtlCommand::Lease(LeaseCommand::Renew {
            id: 42,
            keep_alive: true
        })
    ));
    assert!(matches!(
        parse(&["lease", "revoke", "42"]).command,
        CtlCommand::Lease(LeaseCommand::Revoke { id: 42 })
    ));
    assert!(matches!(
        parse(&["lease", "ttl", "42"]).command,
        CtlCommand::Lease(LeaseCommand::Ttl { id: 42 })
    ));
}

#[test]
fn bad_arguments_are_rejected() {
    let bad = |args: &[&str]| {
        T::try_parse_from(std::iter::once("ctl").chain(args.iter().copied())).is_err()
    };
    assert!(bad(&["--output", "yaml", "status"]));
    assert!(bad(&["--timeout", "5", "status"]));
    assert!(bad(&["lease", "grant", "-1"]));
    assert!(bad(&["member", "add", "--id", "1"]));
    assert!(bad(&["kv", "put", "k"]));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(
        parse_duration("5")
            .unwrap_err()
            .to_string()
            .contains("unit")
    );
    assert!(parse_duration("5h").is_err());
    assert!(parse_duration("ms").is_err());
    assert!(parse_duration("-5s").is_err());
}

#[test]
fn status_text() {
    let text = format_status(&status());
    let expected = "\
node            2 (n2)
cluster         prod
leader          1 at 127.0.0.1:7001
term            3
state           follower
commit index    12
applied index   11
last log index  12
revision        5

   ID  NAME  ADDRESS         ROLE
*  1   n1    127.0.0.1:7001  voter
   2   n2    127.0.0.1:7002  learner
";
    assert_eq!(text, expected);
}

#[test]
fn status_without_leader() {
    let mut st = status();
    st.leader_id = 0;
    st.leader_addr.clear();
    let text = format_status(&st);
    assert!(text.contains("leader          none known\n"), "{text}");
    assert!(!text.contains('*'), "{text}");
}

#[test]
fn kv_lines() {
    let kvs = [kv("/a", b"1", 2), kv("/b", b"\xffx", 3)];
    assert_eq!(format_kvs(&kvs), "/a = 1\n/b = \u{fffd}x\n");
    assert_eq!(format_kvs(&[]), "");
}

#[test]
fn watch_lines() {
    let put = pb::WatchEvent {
        kind: "put".into(),
        revision: 7,
        kv: Some(kv("/a", b"x", 7)),
    };
    assert_eq!(format_watch_event(&put), "7 put /a = x");
    let del = pb::WatchEvent {
        kind: "delete".into(),
        revision: 8,
        kv: Some(kv("/a", b"", 8)),
    };
    assert_eq!(format_watch_event(&del), "8 delete /a");
    assert_eq!(
        watch_event_json(&del),
        json!({"kind":"delete","revision":8,"kv":{"key":"/a","value":"","create_revision":1,"mod_revision":8,"version":1,"lease":0}})
    );
}

#[test]
fn lease_lines() {
    let resp = pb::LeaseResponse {
        id: 42,
        ttl_ms: 3000,
        remaining_ms: 1200,
        keys: vec!["/leader".into(), "/x".into()],
        revision: 9,
    };
    assert_eq!(
        format_lease_ttl(&resp),
        "lease 42 ttl=3000 ms remaining=1200 ms keys=[/leader, /x]"
    );
    let doc = lease_json(&resp);
    assert_eq!(doc["id"], 42);
    assert_eq!(doc["ttl_ms"], 3000);
    assert_eq!(doc["keys"], json!(["/leader", "/x"]));
}

#[test]
fn json_documents() {
    let doc = status_json(&status());
    assert_eq!(doc["leader_id"], 1);
    assert_eq!(doc["term"], 3);
    assert_eq!(
        doc["members"][0],
        json!({"id":1,"name":"n1","addr":"127.0.0.1:7001","role":"voter"})
    );
    let range = range_json(&pb::RangeResponse {
        kvs: vec![kv("/a", b"1", 2)],
        revision: 4,
    });
    assert_eq!(range["revision"], 4);
    assert_eq!(range["kvs"][0]["value"], "1");
    assert_eq!(range["kvs"][0]["mod_revision"], 2);
    let put = put_json(&pb::PutResponse {
        succeeded: true,
        revision: 5,
        prev: None,
    });
    assert_eq!(put, json!({"succeeded":true,"revision":5,"prev":null}));
}

#[test]
fn compare_failure_messages() {
    let prev = kv("k", b"v", 6);
    assert_eq!(
        CtlError::CompareFailed(put_compare_failure("k", Some(&prev), Some(4))).to_string(),
        "compare failed: key \"k\" has mod_revision 6, expected 4"
    );
    assert_eq!(
        put_compare_failure("k", None, Some(4)),
        "key \"k\" does not exist, expected mod_revision 4"
    );
}

#[test]
fn not_found_messages() {
    assert_eq!(
        CtlError::LeaseNotFound(42).to_string(),
        "lease 42 not found: it expired or was revoked; grant a new one"
    );
    assert_eq!(
        CtlError::KeyNotFound("/a".into()).to_string(),
        "key \"/a\" not found"
    );
}

#[test]
fn extended_list_shows_tags_pending_and_what_is_scheduled() {
    let mut kvs = pg_kvs();
    kvs.push(kv("/pg/pause", b"x", 1));
    kvs.push(kv(
        "/pg/switchover",
        br#"{"leader":"pg1","candidate":"pg2","scheduled_at":1796224245}"#,
        1,
    ));
    kvs.push(kv("/pg/restart/pg3", br#"{"done":false}"#, 1));
    kvs.push(kv(
        "/pg/restart/pg2",
        br#"{"done":false,"scheduled_at":1796224245}"#,
        1,
    ));
    let listing = PgListing::from_kvs(&kvs);
    let text = format_list_with("prod", &listing, true);
    assert!(text.contains("| Pending restart | Tags |"), "{text}");
    assert!(text.contains(" Maintenance mode: on\n"), "{text}");
    assert!(
        text.contains(" Switchover scheduled at: 2026-12-02T15:10:45+00:00 from: pg1 to: pg2\n"),
        "{text}"
    );
    assert!(
        text.contains(" Restart requested: pg2 at 2026-12-02T15:10:45+00:00, pg3\n"),
        "{text}"
    );
    let plain = format_list("prod", &PgListing::from_kvs(&pg_kvs()));
    assert!(
        !plain.contains("Tags") && !plain.contains("Maintenance"),
        "{plain}"
    );
}

/// `pg_kvs` with pg3 streaming from pg2 (cascading).
fn cascading_kvs() -> Vec<pb::KeyValue> {
    let mut kvs = pg_kvs();
    for kv in &mut kvs {
        if kv.key == "/pg/members/pg3" {
            let mut doc: Value = serde_json::from_slice(&kv.value).unwrap();
            doc["following"] = json!("pg2");
            kv.value = doc.to_string().into_bytes();
        }
    }
    kvs
}

#[test]
fn topology_draws_replicas_under_what_they_stream_from() {
    let names = |kvs: &[pb::KeyValue]| -> Vec<String> {
        topology_rows(&PgListing::from_kvs(kvs))
            .into_iter()
            .map(|r| r.member)
            .collect()
    };
    // pg5's record is unreadable: it follows no one known, so it hangs off the primary.
    assert_eq!(
        names(&pg_kvs()),
        ["pg1", "+ pg2", "+ pg3", "+ pg4", "+ pg5"]
    );
    assert_eq!(
        names(&cascading_kvs()),
        ["pg1", "+ pg2", "  + pg3", "+ pg4", "+ pg5"]
    );
    let text = format_topology("prod", &PgListing::from_kvs(&cascading_kvs()));
    assert!(
        text.contains("| pg1     | 10.0.0.1 | Leader       |")
            && text.contains("|   + pg3 | 10.0.0.3 | Replica      |"),
        "{text}"
    );
    // Without a leader, and with a loop of `following`, every member still shows once.
    let mut kvs: Vec<pb::KeyValue> = cascading_kvs()
        .into_iter()
        .filter(|kv| kv.key != "/pg/leader")
        .collect();
    for kv in &mut kvs {
        if kv.key == "/pg/members/pg2" {
            let mut doc: Value = serde_json::from_slice(&kv.value).unwrap();
            doc["following"] = json!("pg3");
            kv.value = doc.to_string().into_bytes();
        }
    }
    let mut got = names(&kvs);
    got.sort();
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(
        got.iter().filter(|n| n.ends_with("pg2")).count() == 1,
        "{got:?}"
    );
}

#[test]
fn version_lines_show_what_each_member_published() {
    let mut kvs = pg_kvs();
    for kv in &mut kvs {
        if kv.key == "/pg/members/pg1" {
            let mut doc: Value = serde_json::from_slice(&kv.value).unwrap();
            doc["version"] = json!("0.1.0");
            doc["server_version"] = json!(150010);
            kv.value = doc.to_string().into_bytes();
        }
    }
    let view = PgListing::from_kvs(&kvs).view;
    let lines = version_lines(&view, &["pg1".into(), "pg2".into()]).unwrap();
    assert_eq!(
        lines,
        [
            json!({"member": "pg1", "pgquorum": "0.1.0", "postgresql": "15.10"}),
            json!({"member": "pg2", "pgquorum": null, "postgresql": null}),
        ]
    );
    assert_eq!(version_lines(&view, &[]).unwrap().len(), 4);
    let err = version_lines(&view, &["nope".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope") && err.contains("ctl list"), "{err}");
    assert_eq!(pg_version(160004), "16.4");
}

#[test]
fn flush_parses_its_target() {
    assert!(matches!(
        parse(&["flush", "restart", "pg1", "pg2"]).command,
        CtlCommand::Flush { target: FlushTarget::Restart, ref members } if members.len() == 2
    ));
    assert!(matches!(
        parse(&["flush", "switchover"]).command,
        CtlCommand::Flush {
            target: FlushTarget::Switchover,
            ..
        }
    ));
    assert!(T::try_parse_from(["ctl", "flush", "everything"]).is_err());
}

#[test]
fn progress_lines_say_where_a_wait_stands() {
    use crate::ha::health::CopyProgress;
    use crate::ops::reinit::ReinitProgress;
    let mut p = ReinitProgress {
        waited: Duration::from_secs(4),
        state: Some("creating replica".into()),
        copy: Some(CopyProgress {
            copied_bytes: 30_000_000,
            total_bytes: Some(120_000_000),
            seconds: 3,
        }),
    };
    assert_eq!(
        reinit_progress("pg2", &p),
        "pg2: pg_basebackup copied 30 MB of 120 MB (25 %) (4 s)"
    );
    p.copy = None;
    assert_eq!(reinit_progress("pg2", &p), "pg2: creating replica (4 s)");
    p.state = None;
    assert!(reinit_progress("pg2", &p).contains("not publishing"));

    let view = PgListing::from_kvs(&pg_kvs()).view;
    let line = cluster_progress(&view);
    assert!(
        line.starts_with("leader: pg1; pg1 leader running, "),
        "{line}"
    );
}
