//! `pgquorum ctl`: operator commands against a running cluster.
//!
//! Output goes to stdout, either as aligned human-readable text or, with
//! `--output json`, as one JSON document per command (one per line for `kv
//! watch` and `lease renew --keep-alive`). Errors are returned to the caller,
//! which prints them and exits 1.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tokio::time::Instant;
use tonic::Code;

use crate::client::{Client, ClientError, LeaseKeeper};
use crate::ha::model::{self, ClusterView, MemberStatus, format_lsn};
use crate::ha::view::{ClusterRole, cluster_role, lag_bytes, member_state, split_host_port};
use crate::wire::pb;

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Cluster members to talk to (host:port, comma separated); any member answers.
    #[arg(
        long,
        env = "PGQUORUM_ENDPOINTS",
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,

    #[arg(long, value_enum, default_value = "table")]
    pub output: OutputFormat,

    /// Timeout per request and node, e.g. 5s, 500ms, 1m.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Show the answering node's view of the cluster.
    Status,
    /// List the cluster members.
    Members,
    /// List the PostgreSQL members and their replication state, like `patronictl list`.
    List,
    /// Planned change of primary: the primary stops cleanly (every commit reaches the
    /// candidate), releases its lease, and the candidate is promoted. Waits for it.
    Switchover {
        /// Member to promote (a running, streaming replica); default: the most
        /// advanced eligible one.
        #[arg(long)]
        candidate: Option<String>,
        /// Seconds to wait for the new primary before cancelling the request.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Add or remove cluster members.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Read and write keys.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Grant, renew, revoke and inspect leases.
    #[command(subcommand)]
    Lease(LeaseCommand),
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Add a node; it becomes a voter once it caught up unless --learner.
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        name: String,
        /// The node's gRPC address, host:port.
        #[arg(long)]
        addr: String,
        /// Keep the node a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster.
    Remove {
        #[arg(long)]
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Print a key (or all keys under a prefix) as `key = value`.
    Get {
        key: String,
        /// Treat KEY as a prefix.
        #[arg(long)]
        prefix: bool,
        /// Answer from the contacted node's state without asking the leader (may be stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Write a key.
    Put {
        key: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Attach the key to this lease; it is deleted when the lease ends.
        #[arg(long, default_value_t = 0)]
        lease: u64,
        /// Only write if the key's mod_revision is REV (0: the key must not exist).
        #[arg(long, value_name = "REV")]
        expect_revision: Option<u64>,
    },
    /// Delete a key (or all keys under a prefix).
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Only delete if the key's mod_revision is REV.
        #[arg(long, value_name = "REV")]
        expect_revision: Option<u64>,
    },
    /// Print changes under a prefix as they happen.
    Watch {
        prefix: String,
        /// Start with the change at this revision (default: from now on).
        #[arg(long, value_name = "REV", default_value_t = 0)]
        from_revision: u64,
        /// Stop after N events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Grant a lease of TTL_MS milliseconds.
    Grant {
        ttl_ms: u64,
        /// Ask for this lease id (default: the cluster chooses).
        #[arg(long, default_value_t = 0)]
        id: u64,
    },
    /// Renew a lease once, or with --keep-alive every ttl/3 until Ctrl-C.
    Renew {
        id: u64,
        #[arg(long)]
        keep_alive: bool,
    },
    /// End a lease now, deleting its keys.
    Revoke { id: u64 },
    /// Show a lease's ttl, time left and keys.
    Ttl { id: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Client(#[from] ClientError),

    #[error("key {0:?} not found")]
    KeyNotFound(String),

    #[error("lease {0} not found: it expired or was revoked; grant a new one")]
    LeaseNotFound(u64),

    #[error("member {0} not found: see `pgquorum ctl members` for the current members")]
    MemberNotFound(u64),

    #[error("compare failed: {0}")]
    CompareFailed(String),

    #[error(
        "lease {id} may have expired: no renewal committed in time ({source}); the lease is no longer certainly held"
    )]
    LeaseLost { id: u64, source: ClientError },

    #[error(
        "the node ended the watch stream; rerun with --from-revision {next_revision} to continue"
    )]
    WatchClosed { next_revision: u64 },

    #[error("{0}")]
    BadInput(String),

    #[error("cannot wait for Ctrl-C: {0}")]
    Signal(std::io::Error),

    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs one `pgquorum ctl` command.
pub async fn run(args: CtlArgs) -> Result<(), CtlError> {
    if args.timeout.is_zero() {
        return Err(CtlError::BadInput(
            "--timeout must be greater than 0".into(),
        ));
    }
    let client = Client::new(args.endpoints)?.with_timeout(args.timeout);
    let json = args.output == OutputFormat::Json;
    match args.command {
        CtlCommand::Status => {
            let st = client.status().await?;
            emit(json, status_json(&st), || format_status(&st))
        }
        CtlCommand::Members => {
            let st = client.status().await?;
            emit(json, json!({ "members": members_json(&st) }), || {
                format_members(&st)
            })
        }
        CtlCommand::List => {
            // The status call only supplies the cluster name for the title.
            let st = client.status().await?;
            let resp = client.get(model::PREFIX, true, false).await?;
            let listing = PgListing::from_kvs(&resp.kvs);
            emit(json, list_json(&st.cluster, &listing), || {
                format_list(&st.cluster, &listing)
            })
        }
        CtlCommand::Switchover { candidate, wait } => {
            switchover(&client, json, candidate, Duration::from_secs(wait)).await
        }
        CtlCommand::Member(cmd) => member(&client, json, cmd).await,
        CtlCommand::Kv(cmd) => kv(&client, json, cmd).await,
        CtlCommand::Lease(cmd) => lease(&client, json, cmd).await,
    }
}

async fn pg_view(client: &Client) -> Result<ClusterView, CtlError> {
    let resp = client.get(model::PREFIX, true, false).await?;
    Ok(ClusterView::from_kvs(
        resp.kvs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_slice())),
    )
    .0)
}

async fn switchover(
    client: &Client,
    json: bool,
    candidate: Option<String>,
    wait: Duration,
) -> Result<(), CtlError> {
    let view = pg_view(client).await?;
    let Some(leader) = view.leader.clone() else {
        return Err(CtlError::BadInput(
            "no member holds the leader lease: there is no primary to switch over from".into(),
        ));
    };
    let runnable = |m: &MemberStatus| {
        m.name != leader
            && m.role == model::Role::Replica
            && m.state == model::PgRunState::Running
            && !m.tags.nofailover
    };
    match &candidate {
        Some(c) => match view.members.get(c) {
            None => {
                return Err(CtlError::BadInput(format!(
                    "{c} is not a member (see `pgquorum ctl list`)"
                )));
            }
            Some(m) if !runnable(m) => {
                return Err(CtlError::BadInput(format!(
                    "{c} cannot take over: it must be a running replica not tagged nofailover, other than the primary {leader}"
                )));
            }
            Some(m) => {
                if let Some(why) = switchover_ineligible(&view, m) {
                    return Err(CtlError::BadInput(format!(
                        "{c} cannot take over: {why}; the request was not made"
                    )));
                }
            }
        },
        None if !view.members.values().any(runnable) => {
            return Err(CtlError::BadInput(
                "no running replica can take over (see `pgquorum ctl list`)".into(),
            ));
        }
        None => {}
    }
    let req = model::Switchover {
        leader: leader.clone(),
        candidate: candidate.clone(),
    };
    let body = serde_json::to_vec(&req).expect("switchover serializes");
    let put = client.put(model::SWITCHOVER_KEY, body, 0, Some(0)).await?;
    if !put.succeeded {
        return Err(CtlError::CompareFailed(format!(
            "a switchover is already requested ({}); cancel it with `pgquorum ctl kv del {}`",
            model::SWITCHOVER_KEY,
            model::SWITCHOVER_KEY
        )));
    }
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(v) = pg_view(client).await
            && let Some(new) = v.leader
            && new != leader
        {
            let secs = started.elapsed().as_secs_f64();
            return emit(
                json,
                json!({ "from": leader, "to": new, "seconds": secs }),
                || format!("switched over from {leader} to {new} in {secs:.1} s\n"),
            );
        }
        if started.elapsed() >= wait {
            let _ = client.delete(model::SWITCHOVER_KEY, false, None).await;
            return Err(CtlError::BadInput(format!(
                "no new primary within {} s; the request was cancelled and {leader} stays primary \
                 unless it already stepped down (see `pgquorum ctl list` and its log)",
                wait.as_secs()
            )));
        }
    }
}

/// Why `m` could not legally take over now (the same rules a failover obeys, which
/// the new primary's `decide` applies again): `None` when it could.
fn switchover_ineligible(view: &model::ClusterView, m: &MemberStatus) -> Option<String> {
    let cfg = view.config.clone().unwrap_or_default();
    if cfg.synchronous_mode {
        let recorded = view.sync.as_ref().and_then(|s| s.sync_standby.as_deref());
        if recorded != Some(m.name.as_str()) {
            return Some(match recorded {
                Some(r) => format!(
                    "synchronous mode: only the recorded synchronous standby ({r}) holds every \
                     acknowledged commit"
                ),
                None => "synchronous mode: no synchronous standby is recorded yet, so no member \
                         provably holds every acknowledged commit"
                    .into(),
            });
        }
    }
    if let Some(t) = view.timeline
        && m.timeline < t
    {
        return Some(format!(
            "it is on timeline {}, older than the primary's {t}",
            m.timeline
        ));
    }
    // Lag is not judged here: under load a streaming replica's published position
    // trails the primary's by a cycle's worth of WAL. The candidate checks it when it
    // takes over, after the primary's clean stop sent it everything.
    None
}

async fn member(client: &Client, json: bool, cmd: MemberCommand) -> Result<(), CtlError> {
    match cmd {
        MemberCommand::Add {
            id,
            name,
            addr,
            learner,
        } => {
            if name.is_empty() || addr.is_empty() {
                return Err(CtlError::BadInput(
                    "member add needs a non-empty --name and --addr".into(),
                ));
            }
            let st = client.add_member(id, &name, &addr, learner).await?;
            let role = if learner {
                "learner"
            } else {
                "voter once caught up"
            };
            emit(json, status_json(&st), || {
                format!(
                    "member {id} ({name}) added as {role}\n{}",
                    format_members(&st)
                )
            })
        }
        MemberCommand::Remove { id } => {
            let st = client.remove_member(id).await.map_err(|e| match e.code() {
                Some(Code::NotFound) => CtlError::MemberNotFound(id),
                _ => e.into(),
            })?;
            emit(json, status_json(&st), || {
                format!("member {id} removed\n{}", format_members(&st))
            })
        }
    }
}

async fn kv(client: &Client, json: bool, cmd: KvCommand) -> Result<(), CtlError> {
    match cmd {
        KvCommand::Get {
            key,
            prefix,
            serializable,
        } => {
            let resp = client.get(&key, prefix, serializable).await?;
            if !prefix && resp.kvs.is_empty() {
                return Err(CtlError::KeyNotFound(key));
            }
            emit(json, range_json(&resp), || format_kvs(&resp.kvs))
        }
        KvCommand::Put {
            key,
            value,
            lease,
            expect_revision,
        } => {
            let resp = client
                .put(&key, value.into_bytes(), lease, expect_revision)
                .await
                .map_err(|e| match e.code() {
                    Some(Code::NotFound) if lease != 0 => CtlError::LeaseNotFound(lease),
                    _ => e.into(),
                })?;
            if json {
                print_out(&put_json(&resp).to_string())?;
            }
            if !resp.succeeded {
                return Err(CtlError::CompareFailed(put_compare_failure(
                    &key,
                    resp.prev.as_ref(),
                    expect_revision,
                )));
            }
            if !json {
                print_out(&format!("OK revision={}", resp.revision))?;
            }
            Ok(())
        }
        KvCommand::Del {
            key,
            prefix,
            expect_revision,
        } => {
            let resp = client.delete(&key, prefix, expect_revision).await?;
            if json {
                print_out(&delete_json(&resp).to_string())?;
            }
            if !resp.succeeded {
                let expected = expect_revision.map_or_else(|| "?".to_owned(), |r| r.to_string());
                return Err(CtlError::CompareFailed(format!(
                    "key {key:?} does not have mod_revision {expected} (it changed or does not exist)"
                )));
            }
            if !json {
                print_out(&format!(
                    "OK deleted={} revision={}",
                    resp.deleted, resp.revision
                ))?;
            }
            Ok(())
        }
        KvCommand::Watch {
            prefix,
            from_revision,
            count,
        } => watch(client, json, &prefix, from_revision, count).await,
    }
}

async fn watch(
    client: &Client,
    json: bool,
    prefix: &str,
    from_revision: u64,
    count: Option<u64>,
) -> Result<(), CtlError> {
    if count == Some(0) {
        return Ok(());
    }
    let mut stream = client.watch(prefix, from_revision).await?;
    let mut seen = 0u64;
    let mut next_revision = from_revision;
    while let Some(ev) = stream.message().await.map_err(ClientError::Rpc)? {
        next_revision = next_revision.max(ev.revision + 1);
        let line = if json {
            watch_event_json(&ev).to_string()
        } else {
            format_watch_event(&ev)
        };
        // Flushed per event: watchers are often piped into scripts that react
        // to each line.
        print_out(&line)?;
        seen += 1;
        if count.is_some_and(|n| seen >= n) {
            return Ok(());
        }
    }
    Err(CtlError::WatchClosed { next_revision })
}

async fn lease(client: &Client, json: bool, cmd: LeaseCommand) -> Result<(), CtlError> {
    let not_found = |id: u64| {
        move |e: ClientError| match e.code() {
            Some(Code::NotFound) => CtlError::LeaseNotFound(id),
            _ => e.into(),
        }
    };
    match cmd {
        LeaseCommand::Grant { ttl_ms, id } => {
            if ttl_ms == 0 {
                return Err(CtlError::BadInput("lease TTL must be at least 1 ms".into()));
            }
            let resp = client.lease_grant(ttl_ms, id).await?;
            emit(json, lease_json(&resp), || {
                format!("lease {} granted, ttl {} ms", resp.id, resp.ttl_ms)
            })
        }
        LeaseCommand::Renew {
            id,
            keep_alive: false,
        } => {
            let resp = client.lease_renew(id).await.map_err(not_found(id))?;
            emit(json, lease_json(&resp), || {
                format!("lease {} renewed, ttl {} ms", resp.id, resp.ttl_ms)
            })
        }
        LeaseCommand::Renew {
            id,
            keep_alive: true,
        } => keep_alive(client, json, id).await,
        LeaseCommand::Revoke { id } => {
            let resp = client.lease_revoke(id).await.map_err(not_found(id))?;
            emit(json, lease_json(&resp), || format!("lease {id} revoked"))
        }
        LeaseCommand::Ttl { id } => {
            let resp = client.lease_ttl(id).await.map_err(not_found(id))?;
            emit(json, lease_json(&resp), || format_lease_ttl(&resp))
        }
    }
}

/// Renews every ttl/3 until Ctrl-C. Gives up once the local deadline passed
/// without a committed renewal, because from then on the lease may be gone.
async fn keep_alive(client: &Client, json: bool, id: u64) -> Result<(), CtlError> {
    let mut keeper = LeaseKeeper::attach(client.clone(), id)
        .await
        .map_err(|e| match e.code() {
            Some(Code::NotFound) => CtlError::LeaseNotFound(id),
            _ => e.into(),
        })?;
    print_keepalive(json, &keeper)?;
    // One listener for the whole loop: a Ctrl-C that arrives while a renewal is
    // in flight is then still seen, and the renewal itself can be interrupted.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut wait = keeper.ttl() / 3;
    loop {
        let renewed = tokio::select! {
            res = &mut ctrl_c => return res.map_err(CtlError::Signal),
            _ = tokio::time::sleep(wait) => tokio::select! {
                res = &mut ctrl_c => return res.map_err(CtlError::Signal),
                r = keeper.renew() => r,
            },
        };
        match renewed {
            Ok(_) => {
                print_keepalive(json, &keeper)?;
                wait = keeper.ttl() / 3;
            }
            Err(e) if e.code() == Some(Code::NotFound) => return Err(CtlError::LeaseNotFound(id)),
            Err(e) if !keeper.is_valid(Instant::now()) => {
                return Err(CtlError::LeaseLost { id, source: e });
            }
            Err(e) => {
                eprintln!("lease {id}: renewal failed, retrying: {e}");
                // Retry well before the deadline rather than after a full ttl/3.
                wait = (keeper.ttl() / 10).max(Duration::from_millis(50));
            }
        }
    }
}

fn print_keepalive(json: bool, keeper: &LeaseKeeper) -> Result<(), CtlError> {
    let valid_for = keeper.valid_until().map_or(Duration::ZERO, |until| {
        until.saturating_duration_since(Instant::now())
    });
    let line = if json {
        json!({
            "id": keeper.id(),
            "ttl_ms": millis(keeper.ttl()),
            "valid_for_ms": millis(valid_for),
        })
        .to_string()
    } else {
        format!(
            "lease {} renewed, ttl {} ms, certainly held for the next {} ms",
            keeper.id(),
            millis(keeper.ttl()),
            millis(valid_for)
        )
    };
    print_out(&line)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Prints the JSON document or the human text (built only when needed).
fn emit(json: bool, doc: Value, human: impl FnOnce() -> String) -> Result<(), CtlError> {
    if json {
        print_out(&doc.to_string())
    } else {
        print_out(&human())
    }
}

/// Writes `text` plus a newline (unless empty) and flushes.
fn print_out(text: &str) -> Result<(), CtlError> {
    let mut out = std::io::stdout().lock();
    if !text.is_empty() {
        out.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Parses durations like `5s`, `500ms`, `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 5s, 500ms or 1m"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "" => Err(format!("duration {s:?} needs a unit: ms, s or m (e.g. 5s)")),
        other => Err(format!(
            "unknown unit {other:?} in duration {s:?}: use ms, s or m"
        )),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Lines of `label  value`, labels padded to one width.
fn format_fields(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(label, value)| format!("{}\n", format!("{label:<width$}  {value}").trim_end()))
        .collect()
}

/// An aligned table; the last column is not padded so lines carry no trailing
/// blanks.
fn format_table(headers: &[&str], rows: &[Vec<String>]) -> String {
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

fn put_compare_failure(key: &str, prev: Option<&pb::KeyValue>, expected: Option<u64>) -> String {
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

fn members_json(st: &pb::StatusResponse) -> Value {
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
}

/// Bytes to whole MiB, rounding half to even like Python's `round`.
fn mib_rounded(bytes: u64) -> u64 {
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
    }));
    rows.sort_by(|a, b| a.member.cmp(&b.member));
    rows
}

fn opt_cell(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The `patronictl list` table (its 4.1 layout):
///
/// ```text
/// + Cluster: prod (7277694203142172922) -+-----------+----+-------------+-----+------------+-----+
/// | Member | Host           | Role    | State     | TL | Receive LSN | Lag | Replay LSN | Lag |
/// ```
pub fn format_list(cluster: &str, listing: &PgListing) -> String {
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
    let right = [false, false, false, false, true, true, true, true, true];
    let rows: Vec<Vec<String>> = list_rows(listing)
        .into_iter()
        .map(|r| {
            vec![
                r.member,
                r.host,
                r.role.title().to_owned(),
                r.state,
                opt_cell(r.timeline),
                r.receive_lsn,
                opt_cell(r.receive_lag_mb),
                r.replay_lsn,
                opt_cell(r.replay_lag_mb),
            ]
        })
        .collect();
    let sysid = listing
        .system_identifier
        .map_or_else(|| "uninitialized".to_owned(), |id| id.to_string());
    let title = format!(" Cluster: {cluster} ({sysid}) ");
    format_framed_table(&title, &headers, &right, &rows)
}

/// A table framed like Python's PrettyTable, with `title` written over the
/// start of the top border (cut to fit) as patronictl does.
fn format_framed_table(
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
            Value::Object(m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
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
        assert!(matches!(parse(&["list"]).command, CtlCommand::List));
    }

    #[test]
    fn pg_keys_decode() {
        let listing = PgListing::from_kvs(&pg_kvs());
        assert_eq!(listing.view.leader.as_deref(), Some("pg1"));
        assert_eq!(listing.view.optime, Some(OPTIME));
        assert_eq!(
            listing
                .view
                .sync
                .as_ref()
                .and_then(|s| s.sync_standby.as_deref()),
            Some("pg2")
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
        assert!(parse_duration("5").unwrap_err().contains("unit"));
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
}
