//! `pgquorum ctl`: operator commands against a running cluster.
//!
//! Output goes to stdout, either as aligned human-readable text or, with
//! `--output json`, as one JSON document per command (one per line for `kv
//! watch` and `lease renew --keep-alive`). Errors are returned to the caller,
//! which prints them and exits 1.

mod args;
mod cluster;
mod inspect;
mod output;
#[cfg(test)]
mod tests;

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

pub use self::args::*;
pub use self::inspect::{pg_version, version_lines};
pub use self::output::*;

/// Runs one `pgquorum ctl` command.
pub async fn run(args: CtlArgs) -> Result<(), CtlError> {
    if args.timeout.is_zero() {
        return Err(CtlError::BadInput(
            "--timeout must be greater than 0".into(),
        ));
    }
    match (&args.ca, &args.cert, &args.key) {
        (Some(ca), Some(cert), Some(key)) => crate::tls::set_client(Some(&crate::tls::TlsPaths {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }))?,
        // Encrypted, the nodes verified, but no one authenticated: read calls are
        // refused too; for checking a set-up.
        (Some(ca), _, _) => crate::tls::set_client_ca_only(ca)?,
        _ => {}
    }
    if let Some(f) = &args.token_file {
        crate::tls::set_token_file(f)?;
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
        CtlCommand::List { extended, watch } => list(&client, json, extended, watch).await,
        CtlCommand::Switchover {
            candidate,
            wait,
            scheduled,
            cancel,
        } => match (cancel, scheduled) {
            (true, _) => {
                let had = crate::ops::switchover::cancel(&client).await?;
                emit(json, json!({ "cancelled": had }), || {
                    if had {
                        "switchover request cancelled".into()
                    } else {
                        "no switchover was requested".into()
                    }
                })
            }
            (false, Some(at)) => schedule_switchover(&client, json, candidate, &at).await,
            (false, None) => switchover(&client, json, candidate, Duration::from_secs(wait)).await,
        },
        CtlCommand::Failover {
            candidate,
            force,
            wait,
        } => cluster::failover(&client, json, &candidate, force, Duration::from_secs(wait)).await,
        CtlCommand::Reinit {
            member,
            wait,
            discard_old,
            wait_timeout,
        } => {
            cluster::reinit(
                &client,
                json,
                &member,
                discard_old,
                wait.then(|| Duration::from_secs(wait_timeout)),
            )
            .await
        }
        CtlCommand::Restart {
            members,
            role,
            pending,
            scheduled,
            wait,
        } => {
            cluster::restart(
                &client,
                json,
                &members,
                role,
                pending,
                scheduled.as_deref(),
                Duration::from_secs(wait),
            )
            .await
        }
        CtlCommand::Reload { members } => cluster::reload(&client, json, &members).await,
        CtlCommand::Pause { wait } => cluster::pause(&client, json, true, wait, args.timeout).await,
        CtlCommand::Resume { wait } => {
            cluster::pause(&client, json, false, wait, args.timeout).await
        }
        CtlCommand::ShowConfig => cluster::show_config(&client, json).await,
        CtlCommand::EditConfig {
            set,
            pg,
            apply,
            force,
        } => cluster::edit_config(&client, json, &set, &pg, apply.as_deref(), force).await,
        CtlCommand::History => cluster::history(&client, json).await,
        CtlCommand::Dsn { role, dbname } => {
            cluster::dsn(&client, json, role, dbname.as_deref()).await
        }
        CtlCommand::Topology => inspect::topology(&client, json).await,
        CtlCommand::Version { members } => inspect::version(&client, json, &members).await,
        CtlCommand::Flush { target, members } => {
            inspect::flush(&client, json, target, &members).await
        }
        CtlCommand::Member(cmd) => member(&client, json, cmd).await,
        CtlCommand::Kv(cmd) => kv(&client, json, cmd).await,
        CtlCommand::Lease(cmd) => lease(&client, json, cmd).await,
    }
}

async fn list(
    client: &Client,
    json: bool,
    extended: bool,
    watch: Option<u64>,
) -> Result<(), CtlError> {
    if watch == Some(0) {
        return Err(CtlError::BadInput("--watch needs at least 1 second".into()));
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        // The status call only supplies the cluster name for the title.
        let st = client.status().await?;
        let resp = client.get(model::PREFIX, true, false).await?;
        let listing = PgListing::from_kvs(&resp.kvs);
        emit(json, list_json(&st.cluster, &listing), || {
            format_list_with(&st.cluster, &listing, extended)
        })?;
        let Some(every) = watch else {
            return Ok(());
        };
        tokio::select! {
            res = &mut ctrl_c => return res.map_err(CtlError::Signal),
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
        }
    }
}

pub(super) async fn switchover(
    client: &Client,
    json: bool,
    candidate: Option<String>,
    wait: Duration,
) -> Result<(), CtlError> {
    let started = Instant::now();
    let leader = crate::ops::switchover::request(client, candidate.as_deref(), None).await?;
    // A line whenever the leader key or a member's role or state changes (stderr,
    // so `--json` output stays one document).
    let mut last = String::new();
    let new = crate::ops::switchover::wait(client, &leader, wait, |t, view| {
        let now = output::cluster_progress(view);
        if now != last {
            eprintln!("{:5.1} s  {now}", t.as_secs_f64());
            last = now;
        }
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    emit(
        json,
        json!({ "from": leader, "to": new, "seconds": secs }),
        || format!("switched over from {leader} to {new} in {secs:.1} s\n"),
    )
}

/// `switchover --scheduled AT`: the request is stored; the primary acts at AT.
async fn schedule_switchover(
    client: &Client,
    json: bool,
    candidate: Option<String>,
    at: &str,
) -> Result<(), CtlError> {
    let now = crate::ops::unix_now();
    let at = crate::ops::switchover::parse_time(at, now)?;
    if at <= now {
        return Err(CtlError::BadInput(
            "the scheduled time has passed; leave out --scheduled to switch over now".into(),
        ));
    }
    let leader = crate::ops::switchover::request(client, candidate.as_deref(), Some(at)).await?;
    let when = crate::ops::history::utc_timestamp(at);
    emit(
        json,
        json!({ "from": leader, "candidate": candidate, "scheduled_at": when }),
        || format!("switchover from {leader} scheduled at {when}; `--cancel` cancels it"),
    )
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
            force,
        } => {
            refuse_owned(&key, false, force)?;
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
                return Err(CtlError::CompareFailed(format!(
                    "{}; re-read it (`pgquorum ctl --output json kv get {key}` shows its \
                     mod_revision) and retry with that --expect-revision (0: create if absent)",
                    put_compare_failure(&key, resp.prev.as_ref(), expect_revision)
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
            force,
        } => {
            refuse_owned(&key, prefix, force)?;
            let resp = client.delete(&key, prefix, expect_revision).await?;
            if json {
                print_out(&delete_json(&resp).to_string())?;
            }
            if !resp.succeeded {
                let expected = expect_revision.map_or_else(|| "?".to_owned(), |r| r.to_string());
                return Err(CtlError::CompareFailed(format!(
                    "key {key:?} does not have mod_revision {expected} (it changed or does not \
                     exist); re-read it (`pgquorum ctl --output json kv get {key}` shows its \
                     mod_revision) and retry with that --expect-revision"
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

/// A raw write of a key a pgquorum command owns needs `--force`.
fn refuse_owned(key: &str, prefix: bool, force: bool) -> Result<(), CtlError> {
    match crate::ops::owned_key(key, prefix) {
        Some(owner) if !force => Err(CtlError::OwnedKey {
            key: key.to_string(),
            owner,
        }),
        _ => Ok(()),
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
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| DurationError::Invalid(s.to_string()))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "" => Err(DurationError::NoUnit(s.to_string())),
        other => Err(DurationError::UnknownUnit {
            unit: other.to_string(),
            text: s.to_string(),
        }),
    }
}

/// A duration argument that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {0:?}: expected e.g. 5s, 500ms or 1m")]
    Invalid(String),
    #[error("duration {0:?} needs a unit: ms, s or m (e.g. 5s)")]
    NoUnit(String),
    #[error("unknown unit {unit:?} in duration {text:?}: use ms, s or m")]
    UnknownUnit { unit: String, text: String },
}
