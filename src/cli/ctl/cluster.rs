//! Commands on the cluster as a whole: pause, resume, show-config, edit-config,
//! history, dsn. They go through `crate::ops`, as the REST API's routes do.

use std::io::{BufRead as _, IsTerminal as _, Read as _};
use std::path::PathBuf;

use super::*;
use crate::ops;
use crate::ops::config::{self as cfg, ClusterConfig};
use crate::ops::dsn::DsnRole;

/// How long `pause --wait`/`resume --wait` wait for every member.
const PAUSE_WAIT: Duration = Duration::from_secs(60);

pub(super) async fn pause(
    client: &Client,
    json: bool,
    on: bool,
    wait: bool,
    timeout: Duration,
) -> Result<(), CtlError> {
    let before = cfg::read(client).await?.paused;
    cfg::set_pause(client, on).await?;
    if wait {
        cfg::wait_pause(client, on, PAUSE_WAIT.max(timeout)).await?;
    }
    let word = if on { "paused" } else { "resumed" };
    let note = match (before == on, on) {
        (true, _) => format!("the cluster was already {word}"),
        (false, true) => "cluster paused: no automatic failover, no start or stop of PostgreSQL \
                          by pgquorum until `pgquorum ctl resume`"
            .to_string(),
        (false, false) => "cluster resumed: automatic failover is on again".to_string(),
    };
    emit(
        json,
        json!({ "pause": on, "changed": before != on }),
        || note,
    )
}

pub(super) async fn show_config(client: &Client, json: bool) -> Result<(), CtlError> {
    let c = cfg::read(client).await?;
    let doc = c.document();
    emit(json, doc.clone(), || pretty(&doc))
}

fn pretty(doc: &Value) -> String {
    serde_json::to_string_pretty(doc).unwrap_or_default() + "\n"
}

pub(super) async fn edit_config(
    client: &Client,
    json: bool,
    set: &[String],
    pg: &[String],
    apply: Option<&str>,
    force: bool,
) -> Result<(), CtlError> {
    let current = cfg::read(client).await?;
    let before = current.document();
    let wanted = match apply {
        Some(source) => {
            if source == "-" && !force {
                return Err(CtlError::BadInput(
                    "--apply - reads the document from standard input, which then cannot \
                     confirm the change: add --force"
                        .into(),
                ));
            }
            let text = read_source(source)?;
            serde_json::from_str(&text).map_err(|e| {
                CtlError::BadInput(format!(
                    "{source} is not a JSON document ({e}); nothing was written"
                ))
            })?
        }
        None if set.is_empty() && pg.is_empty() => edit_in_editor(&before)?,
        None => {
            let mut doc = before.clone();
            cfg::merge_patch(&mut doc, &cfg::set_patch(set, pg)?);
            doc
        }
    };
    let (settings, paused) = cfg::parse_document(&wanted)?;
    let after = ClusterConfig {
        settings: settings.clone(),
        revision: current.revision,
        paused,
    }
    .document();
    let diff = line_diff(&pretty(&before), &pretty(&after));
    if diff.is_empty() {
        return emit(json, json!({ "changed": false }), || {
            "no changes".to_string()
        });
    }
    if !json {
        print_out(&diff)?;
    }
    if !force && !confirm("Apply these changes?")? {
        return Err(CtlError::BadInput(
            "not applied; nothing was written".into(),
        ));
    }
    let now = cfg::write(client, current.revision, &settings, paused).await?;
    emit(
        json,
        json!({ "changed": true, "revision": now.revision, "config": now.document() }),
        || format!("configuration written (revision {})", now.revision),
    )
}

fn read_source(source: &str) -> Result<String, CtlError> {
    let mut text = String::new();
    if source == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(source).map_err(|e| {
            CtlError::BadInput(format!(
                "cannot read {source}: {e}; check the path given to --apply and that it is \
                 readable (`--apply -` reads standard input); nothing was written"
            ))
        })?;
    }
    Ok(text)
}

/// Opens `$VISUAL`/`$EDITOR` (default `vi`) on the document in a private temp
/// file; returns what was saved.
fn edit_in_editor(doc: &Value) -> Result<Value, CtlError> {
    if !std::io::stdin().is_terminal() {
        return Err(CtlError::BadInput(
            "edit-config without --set, --pg or --apply opens an editor and needs a \
             terminal; in scripts use --set KEY=VALUE, --pg NAME=VALUE or --apply FILE --force"
                .into(),
        ));
    }
    let path = std::env::temp_dir().join(format!(
        "pgquorum-config-{}-{}.json",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    write_private(&path, pretty(doc).as_bytes())?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    // The editor may be a command with arguments ("code --wait").
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status();
    let text = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            return Err(CtlError::BadInput(format!(
                "{editor} exited with {s}; nothing was written"
            )));
        }
        Err(e) => {
            return Err(CtlError::BadInput(format!(
                "cannot run {editor}: {e}; set $EDITOR"
            )));
        }
    }
    serde_json::from_str(&text?).map_err(|e| {
        CtlError::BadInput(format!(
            "the edited document is not JSON ({e}); nothing was written and the edit was \
             discarded: run `pgquorum ctl edit-config` again"
        ))
    })
}

fn write_private(path: &PathBuf, bytes: &[u8]) -> Result<(), CtlError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

/// Asks on the terminal; anything but y/yes is no. Without a terminal there is
/// nobody to ask: the caller must pass --force.
fn confirm(question: &str) -> Result<bool, CtlError> {
    if !std::io::stdin().is_terminal() {
        return Err(CtlError::BadInput(
            "standard input is not a terminal, so the change cannot be confirmed: pass \
             --force to write it; nothing was written"
                .into(),
        ));
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// A line diff of two small documents: `-`/`+` for removed/added lines, two spaces
/// for common ones; empty when they are equal.
pub(super) fn line_diff(a: &str, b: &str) -> String {
    if a == b {
        return String::new();
    }
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    // Longest common subsequence table (documents are a few dozen lines).
    let mut l = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            l[i][j] = if a[i] == b[j] {
                l[i + 1][j + 1] + 1
            } else {
                l[i + 1][j].max(l[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || l[i][j + 1] >= l[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

pub(super) async fn history(client: &Client, json: bool) -> Result<(), CtlError> {
    let h = ops::history::read(client).await?;
    let doc = Value::Array(
        h.iter()
            .map(|e| {
                json!({
                    "timeline": e.timeline,
                    "lsn": format_lsn(e.lsn),
                    "reason": e.reason.to_string(),
                    "time": ops::history::utc_timestamp(e.time),
                    "new_leader": e.new_leader,
                })
            })
            .collect(),
    );
    emit(json, doc, || {
        let rows: Vec<Vec<String>> = h
            .iter()
            .map(|e| {
                vec![
                    e.timeline.to_string(),
                    format_lsn(e.lsn),
                    e.reason.to_string(),
                    ops::history::utc_timestamp(e.time),
                    e.new_leader.clone(),
                ]
            })
            .collect();
        format_framed_table(
            " History ",
            &["TL", "LSN", "Reason", "Timestamp", "New Leader"],
            &[true, true, false, false, false],
            &rows,
        )
    })
}

pub(super) async fn dsn(
    client: &Client,
    json: bool,
    role: DsnRoleArg,
    dbname: Option<&str>,
) -> Result<(), CtlError> {
    let view = ops::cluster_view(client).await?;
    let role = match role {
        DsnRoleArg::Primary => DsnRole::Primary,
        DsnRoleArg::Replica => DsnRole::Replica,
        DsnRoleArg::Any => DsnRole::Any,
    };
    let Some(s) = ops::dsn::dsn(&view, role, dbname) else {
        return Err(CtlError::BadInput(
            "no member has published its PostgreSQL address yet (see `pgquorum ctl list`)".into(),
        ));
    };
    emit(json, json!({ "dsn": s }), || s.clone())
}

pub(super) async fn failover(
    client: &Client,
    json: bool,
    candidate: &str,
    force: bool,
    wait: Duration,
) -> Result<(), CtlError> {
    let view = ops::cluster_view(client).await?;
    let plan = ops::failover::plan(&view, candidate)?;
    if let Some(p) = &plan.serving_primary {
        if !force {
            return Err(CtlError::BadInput(format!(
                "{p} is a healthy primary: use `pgquorum ctl switchover --candidate {candidate}` \
                 (loses nothing), or pass --force to hand over to {candidate} now as a switchover"
            )));
        }
        return switchover(client, json, Some(candidate.to_string()), wait).await;
    }
    let lag = plan
        .lag
        .map_or_else(|| "unknown".to_string(), |l| format!("{l} bytes"));
    eprintln!("failover to {candidate}: lag behind the last known primary position: {lag}");
    for r in &plan.risks {
        eprintln!("risk: {r}");
    }
    if !plan.risks.is_empty() && !force {
        return Err(CtlError::BadInput(format!(
            "{candidate} may not take over under the failover rules ({}); pass --force to \
             accept that risk; nothing was requested",
            plan.risks.join("; ")
        )));
    }
    if !force && !confirm(&format!("Fail over to {candidate}?"))? {
        return Err(CtlError::BadInput(
            "not confirmed; nothing was requested".into(),
        ));
    }
    let started = Instant::now();
    ops::failover::run(client, candidate, !plan.risks.is_empty(), wait).await?;
    let secs = started.elapsed().as_secs_f64();
    emit(
        json,
        json!({ "to": candidate, "forced": !plan.risks.is_empty(), "risks": plan.risks, "seconds": secs }),
        || format!("failed over to {candidate} in {secs:.1} s"),
    )
}

pub(super) async fn reinit(
    client: &Client,
    json: bool,
    member: &str,
    discard_old: bool,
    wait: Option<Duration>,
) -> Result<(), CtlError> {
    ops::reinit::request(client, member, discard_old).await?;
    let Some(timeout) = wait else {
        return emit(json, json!({ "member": member, "requested": true }), || {
            format!("{member} will re-clone its data dir from the primary; `--wait` waits for it")
        });
    };
    let started = Instant::now();
    let done = ops::reinit::wait(client, member, timeout, |p| {
        eprintln!("{}", super::output::reinit_progress(member, p));
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let old = match (&done.moved_to, done.discarded) {
        (None, _) => "there was no old data dir".to_string(),
        (Some(p), true) => format!(
            "the old data dir ({:.1} MB) was removed from {p}",
            done.bytes as f64 / 1e6
        ),
        (Some(p), false) => format!(
            "the old data dir ({:.1} MB) is kept at {p}; delete it when no longer needed",
            done.bytes as f64 / 1e6
        ),
    };
    emit(
        json,
        json!({
            "member": member, "seconds": secs, "moved_to": done.moved_to,
            "bytes": done.bytes, "discarded": done.discarded
        }),
        || format!("{member} re-cloned in {secs:.1} s; {old}"),
    )
}

fn role_filter(role: DsnRoleArg) -> ops::requests::RoleFilter {
    match role {
        DsnRoleArg::Primary => ops::requests::RoleFilter::Primary,
        DsnRoleArg::Replica => ops::requests::RoleFilter::Replica,
        DsnRoleArg::Any => ops::requests::RoleFilter::Any,
    }
}

pub(super) async fn restart(
    client: &Client,
    json: bool,
    members: &[String],
    role: DsnRoleArg,
    pending: bool,
    scheduled: Option<&str>,
    wait: Duration,
) -> Result<(), CtlError> {
    use crate::ha::model::RequestKind;
    let at = match scheduled {
        Some(s) => {
            let now = ops::unix_now();
            let at = ops::switchover::parse_time(s, now)?;
            if at <= now {
                return Err(CtlError::BadInput(
                    "the scheduled time has passed; leave out --scheduled to restart now".into(),
                ));
            }
            Some(at)
        }
        None => None,
    };
    let view = ops::cluster_view(client).await?;
    let order = ops::requests::members_for(&view, members, role_filter(role), pending)?;
    if let Some(at) = at {
        // Each member restarts at AT by its own clock (not one after another).
        for m in &order {
            ops::requests::ask(client, RequestKind::Restart, m, Some(at)).await?;
        }
        let when = crate::ops::history::utc_timestamp(at);
        if json {
            print_out(&json!({ "scheduled": order, "scheduled_at": when }).to_string())?;
        } else {
            print_out(&format!(
                "restart of {} scheduled at {when}; `pgquorum ctl flush restart [MEMBER…]` \
                 (or DELETE /restart on the member) cancels it",
                order.join(", ")
            ))?;
        }
        return Ok(());
    }
    let mut done = Vec::new();
    for m in &order {
        let started = Instant::now();
        ops::requests::ask(client, RequestKind::Restart, m, None).await?;
        ops::requests::wait_done(client, RequestKind::Restart, m, wait).await?;
        let secs = started.elapsed().as_secs_f64();
        if !json {
            print_out(&format!("{m}: restarted in {secs:.1} s"))?;
        }
        done.push(json!({ "member": m, "seconds": secs }));
    }
    if json {
        print_out(&json!({ "restarted": done }).to_string())?;
    }
    Ok(())
}

pub(super) async fn reload(
    client: &Client,
    json: bool,
    members: &[String],
) -> Result<(), CtlError> {
    use crate::ha::model::RequestKind;
    let view = ops::cluster_view(client).await?;
    let order = ops::requests::members_for(&view, members, ops::requests::RoleFilter::Any, false)?;
    for m in &order {
        ops::requests::ask(client, RequestKind::Reload, m, None).await?;
    }
    for m in &order {
        ops::requests::wait_done(client, RequestKind::Reload, m, Duration::from_secs(60)).await?;
    }
    emit(json, json!({ "reloaded": order }), || {
        format!("reloaded: {}", order.join(", "))
    })
}
