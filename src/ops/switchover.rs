//! Planned switchover (`ctl switchover`, REST `POST`/`DELETE /switchover`): the
//! primary named in the request steps down cleanly (every commit reaches the
//! candidate) once its `decide` sees the request, at once or at `scheduled_at`.

use std::time::Duration;

use tokio::time::Instant;

use super::{OpsError, cluster_view};
use crate::client::Client;
use crate::ha::eligibility::cannot_take_over;
use crate::ha::model::{self, ClusterView, MemberStatus, PgRunState, Role, Switchover};

/// The primary to switch over from, after checking that `candidate` (or, without
/// one, some replica) could take over.
pub fn check(view: &ClusterView, candidate: Option<&str>) -> Result<String, OpsError> {
    let Some(leader) = view.leader.clone() else {
        return Err(OpsError::Invalid(
            "no member holds the leader lease: there is no primary to switch over from; \
             promote a replica with `pgquorum ctl failover --candidate NAME`"
                .into(),
        ));
    };
    let runnable = |m: &MemberStatus| {
        m.name != leader
            && m.role == Role::Replica
            && m.state == PgRunState::Running
            && !m.tags.never_promoted()
    };
    match candidate {
        Some(c) => match view.members.get(c) {
            None => Err(OpsError::Invalid(format!(
                "{c} is not a member (see `pgquorum ctl list`)"
            ))),
            Some(m) if !runnable(m) => Err(OpsError::Invalid(format!(
                "{c} cannot take over: it must be a running replica not tagged nofailover, \
                 other than the primary {leader}; name another candidate from \
                 `pgquorum ctl list`, or leave out --candidate to let pgquorum choose"
            ))),
            Some(m) => {
                let cfg = view.config.clone().unwrap_or_default();
                // Lag is not judged here: under load a streaming replica's published
                // position trails by a cycle's worth of WAL. The candidate checks it
                // when it takes over, after the primary's clean stop sent it everything.
                match cannot_take_over(m, cfg.synchronous_mode, view.sync.as_ref(), view.timeline) {
                    Some(why) => Err(OpsError::Invalid(format!(
                        "{c} cannot take over: {why}; name another candidate from \
                         `pgquorum ctl list`, or leave out --candidate to let pgquorum choose"
                    ))),
                    None => Ok(leader),
                }
            }
        },
        None if !view.members.values().any(runnable) => Err(OpsError::Invalid(
            "no running replica can take over (see `pgquorum ctl list`)".into(),
        )),
        None => Ok(leader),
    }
}

/// Writes the request (one at a time); returns the primary it is for.
pub async fn request(
    client: &Client,
    candidate: Option<&str>,
    scheduled_at: Option<u64>,
) -> Result<String, OpsError> {
    let leader = check(&cluster_view(client).await?, candidate)?;
    let req = Switchover {
        leader: leader.clone(),
        candidate: candidate.map(str::to_string),
        scheduled_at,
    };
    let body = serde_json::to_vec(&req).map_err(|e| OpsError::Invalid(e.to_string()))?;
    let put = client.put(model::SWITCHOVER_KEY, body, 0, Some(0)).await?;
    if !put.succeeded {
        return Err(OpsError::Invalid(
            "a switchover is already requested or scheduled; cancel it with \
             `pgquorum ctl switchover --cancel` (or DELETE /switchover)"
                .into(),
        ));
    }
    Ok(leader)
}

/// Removes a pending or scheduled request; whether there was one.
pub async fn cancel(client: &Client) -> Result<bool, OpsError> {
    Ok(client
        .delete(model::SWITCHOVER_KEY, false, None)
        .await?
        .deleted
        > 0)
}

/// Waits for a primary other than `from`; on timeout withdraws the request.
pub async fn wait(
    client: &Client,
    from: &str,
    timeout: Duration,
    mut progress: impl FnMut(Duration, &ClusterView),
) -> Result<String, OpsError> {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(v) = cluster_view(client).await {
            progress(started.elapsed(), &v);
            if let Some(new) = v.leader
                && new != from
            {
                return Ok(new);
            }
        }
        if started.elapsed() >= timeout {
            let _ = cancel(client).await;
            return Err(OpsError::Timeout(format!(
                "no new primary within {} s; the request was cancelled and {from} stays primary \
                 unless it already stepped down (see `pgquorum ctl list` and its log)",
                timeout.as_secs()
            )));
        }
    }
}

/// `AT` as an operator writes it: Unix seconds, `+90s`/`+5m`/`+2h` from `now`, or
/// UTC `YYYY-MM-DDTHH:MM[:SS][Z|+00:00]`.
pub fn parse_time(at: &str, now: u64) -> Result<u64, OpsError> {
    let bad = || {
        OpsError::Invalid(format!(
            "{at:?} is not a time: use Unix seconds, +90s / +5m / +2h, or UTC \
             2026-12-02T18:30:00Z"
        ))
    };
    let at = at.trim();
    if let Some(rel) = at.strip_prefix('+') {
        let split = rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len());
        let n: u64 = rel[..split].parse().map_err(|_| bad())?;
        let mult = match &rel[split..] {
            "s" | "" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(bad()),
        };
        return Ok(now + n * mult);
    }
    if let Ok(secs) = at.parse::<u64>() {
        return Ok(secs);
    }
    let at = at
        .strip_suffix('Z')
        .or_else(|| at.strip_suffix("+00:00"))
        .unwrap_or(at);
    let (date, time) = at.split_once(['T', ' ']).ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let t: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let ([y, mo, da], [h, mi, rest @ ..]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    let s = rest.first().copied().unwrap_or(0);
    if !(1..=12).contains(mo) || !(1..=31).contains(da) || *h > 23 || *mi > 59 || s > 60 {
        return Err(bad());
    }
    let days = days_from_civil(*y, *mo, *da);
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + s).map_err(|_| bad())
}

/// (year, month, day) to days since 1970-01-01 (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_form_and_round_trip() {
        assert_eq!(parse_time("+5m", 1000).unwrap(), 1300);
        assert_eq!(parse_time("+2h", 0).unwrap(), 7200);
        assert_eq!(parse_time("1796224245", 0).unwrap(), 1_796_224_245);
        assert_eq!(
            parse_time("2026-12-02T15:10:45Z", 0).unwrap(),
            1_796_224_245
        );
        assert_eq!(
            parse_time("2026-12-02T15:10:45+00:00", 0).unwrap(),
            1_796_224_245
        );
        assert_eq!(parse_time("2000-02-29T00:00", 0).unwrap(), 951_782_400);
        assert_eq!(
            super::super::history::utc_timestamp(parse_time("2031-07-04T01:02:03Z", 0).unwrap()),
            "2031-07-04T01:02:03+00:00"
        );
        for bad in ["soon", "+5d", "2026-13-01T00:00Z", "2026-12-02", "12:00"] {
            assert!(parse_time(bad, 0).is_err(), "{bad}");
        }
    }
}
