//! Patroni's configuration and history routes, through `crate::ops` (as `ctl`
//! does): `GET`/`PATCH`/`PUT /config`, `GET /history`. They answer from the store,
//! not from the health snapshot, so they need the node's client; without it they
//! answer 503.
//!
//! `POST`/`DELETE /switchover` request or cancel a (scheduled) switchover;
//! `POST /failover` requests a manual failover; `POST /reinitialize` re-clones this
//! node's replica; `POST`/`DELETE /restart` and `POST /reload` act on this node's
//! PostgreSQL.
//!
//! `PATCH` applies an RFC 7386 merge patch to the latest document (retried when
//! another writer got in between), as Patroni does; `"pause": true|false` in it
//! pauses or resumes the cluster. `PUT` replaces the document; with `If-Match:
//! <revision>` (the `ETag` of `GET /config`) it is compare-and-set and answers 409
//! when the document changed meanwhile.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use super::{RestState, json_response, with_body};
use crate::client::{Client, ClientError};
use crate::ops::config::{self as cfg, ClusterConfig};
use crate::ops::{OpsError, failover, history, reinit, requests, switchover};

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    with_body(status, "text/plain; charset=utf-8", msg.into() + "\n")
}

/// A refused request: its status and the message for the caller.
struct Refusal(StatusCode, String);

impl From<OpsError> for Refusal {
    fn from(e: OpsError) -> Self {
        let status = match &e {
            OpsError::Invalid(_) => StatusCode::BAD_REQUEST,
            OpsError::Conflict { .. } => StatusCode::CONFLICT,
            OpsError::NotBootstrapped | OpsError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            OpsError::Client(ClientError::Rpc(s)) if s.code() == tonic::Code::InvalidArgument => {
                StatusCode::BAD_REQUEST
            }
            OpsError::Client(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refusal(status, e.to_string())
    }
}

fn answer(r: Result<Response, Refusal>) -> Response {
    r.unwrap_or_else(|Refusal(status, msg)| text(status, msg))
}

fn client(st: &RestState) -> Result<&Client, Refusal> {
    st.client.as_ref().ok_or_else(|| {
        Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node's REST API has no connection to the store".into(),
        )
    })
}

fn config_response(c: &ClusterConfig) -> Response {
    let mut resp = json_response(StatusCode::OK, &c.document());
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", c.revision)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn body_json(body: &Bytes) -> Result<Value, Refusal> {
    if body.len() > MAX_BODY {
        return Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY} bytes"),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON ({e}); nothing was written"),
        )
    })
}

pub async fn get_config(State(st): State<RestState>) -> Response {
    answer(async { Ok(config_response(&cfg::read(client(&st)?).await?)) }.await)
}

pub async fn patch_config(State(st): State<RestState>, body: Bytes) -> Response {
    answer(
        async {
            let c = client(&st)?;
            let patch = body_json(&body)?;
            if !patch.is_object() {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "a configuration patch is a JSON object; nothing was written".into(),
                ));
            }
            Ok(config_response(&cfg::patch(c, &patch).await?))
        }
        .await,
    )
}

pub async fn put_config(State(st): State<RestState>, headers: HeaderMap, body: Bytes) -> Response {
    answer(
        async {
            let c = client(&st)?;
            let (settings, paused) = cfg::parse_document(&body_json(&body)?)?;
            let revision = match headers.get(header::IF_MATCH) {
                Some(v) => v
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().trim_matches('"').parse::<u64>().ok())
                    .ok_or_else(|| {
                        Refusal(
                            StatusCode::BAD_REQUEST,
                            "If-Match must be the revision from GET /config's ETag; nothing was written"
                                .into(),
                        )
                    })?,
                None => cfg::read(c).await?.revision,
            };
            Ok(config_response(
                &cfg::write(c, revision, &settings, paused).await?,
            ))
        }
        .await,
    )
}

pub async fn get_history(State(st): State<RestState>) -> Response {
    answer(
        async {
            let h = history::read(client(&st)?).await?;
            Ok(json_response(StatusCode::OK, &history::patroni_rows(&h)))
        }
        .await,
    )
}

/// How long `POST /failover` waits for the candidate to serve.
const FAILOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `POST /failover` with `{"candidate": NAME, "force": bool}` (Patroni's body; its
/// `leader` field is ignored): 200 once the candidate serves; 412 when a primary
/// serves (use a switchover) or the candidate breaks the failover rules without
/// `force` (the body names the risk); 400 for bad input; 503 on timeout.
pub async fn post_failover(State(st): State<RestState>, body: Bytes) -> Response {
    answer(
        async {
            let c = client(&st)?;
            let req = body_json(&body)?;
            let Some(candidate) = req.get("candidate").and_then(Value::as_str) else {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "POST /failover needs {\"candidate\": NAME}; nothing was requested".into(),
                ));
            };
            let force = req.get("force").and_then(Value::as_bool).unwrap_or(false);
            let plan = failover::plan(&crate::ops::cluster_view(c).await?, candidate)?;
            if let Some(p) = &plan.serving_primary {
                return Err(Refusal(
                    StatusCode::PRECONDITION_FAILED,
                    format!("{p} is a healthy primary: use a switchover; nothing was requested"),
                ));
            }
            if !plan.risks.is_empty() && !force {
                return Err(Refusal(
                    StatusCode::PRECONDITION_FAILED,
                    format!(
                        "{candidate} may not take over under the failover rules ({}); send \
                         \"force\": true to accept that risk; nothing was requested",
                        plan.risks.join("; ")
                    ),
                ));
            }
            failover::run(c, candidate, !plan.risks.is_empty(), FAILOVER_WAIT).await?;
            Ok(text(
                StatusCode::OK,
                format!("Successfully failed over to \"{candidate}\""),
            ))
        }
        .await,
    )
}

/// `POST /reinitialize` on a replica's own REST API (Patroni's route): it
/// re-clones from the primary. Body (optional): `{"discard_old": bool}`. 200 once
/// requested; 503 on the primary or without a primary to clone from, as Patroni.
pub async fn post_reinitialize(State(st): State<RestState>, body: Bytes) -> Response {
    answer(
        async {
            let c = client(&st)?;
            let discard_old = if body.is_empty() {
                false
            } else {
                body_json(&body)?
                    .get("discard_old")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            };
            let me = st.health.borrow().member.clone();
            match reinit::request(c, &me, discard_old).await {
                Ok(()) => Ok(text(StatusCode::OK, "reinitialize started")),
                Err(OpsError::Invalid(why)) => Err(Refusal(StatusCode::SERVICE_UNAVAILABLE, why)),
                Err(e) => Err(e.into()),
            }
        }
        .await,
    )
}

/// `POST /restart` on a member's own REST API (Patroni's route): restarts its
/// PostgreSQL (the primary in place, under its lease) and answers once done: 200,
/// or 503 on timeout (the request stands) or when `{"role": ...}` does not match.
/// Body (optional): `{"role": "primary"|"replica", "restart_pending": bool,
/// "timeout": seconds, "schedule": AT}`; with `schedule` (Unix seconds, +5m or UTC
/// ISO 8601, in the future) the request is stored and 202 answers at once.
pub async fn post_restart(State(st): State<RestState>, body: Bytes) -> Response {
    use crate::ha::model::{RequestKind, Role};
    answer(
        async {
            let c = client(&st)?;
            let req = if body.is_empty() {
                Value::Null
            } else {
                body_json(&body)?
            };
            let me = st.health.borrow().member.clone();
            let view = crate::ops::cluster_view(c).await?;
            let Some(status) = view.members.get(&me) else {
                return Err(Refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this member has not published its status yet (it does so every HA \
                     cycle); retry in a few seconds"
                        .into(),
                ));
            };
            let wanted = match req.get("role").and_then(Value::as_str) {
                None => None,
                Some("primary" | "master") => Some(Role::Primary),
                Some("replica") => Some(Role::Replica),
                Some(other) => {
                    return Err(Refusal(
                        StatusCode::BAD_REQUEST,
                        format!("role {other:?} is not primary or replica"),
                    ));
                }
            };
            let pending_only = req
                .get("restart_pending")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if wanted.is_some_and(|r| r != status.role) || (pending_only && !status.pending_restart)
            {
                return Err(Refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "restart conditions are not satisfied (role or pending restart)".into(),
                ));
            }
            if let Some(at) = req.get("schedule") {
                let now = crate::ops::unix_now();
                let at = match at {
                    Value::String(s) => crate::ops::switchover::parse_time(s, now)
                        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, e.to_string()))?,
                    Value::Number(n) if n.as_u64().is_some() => n.as_u64().unwrap_or(0),
                    other => {
                        return Err(Refusal(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "schedule {other} is not a time: use Unix seconds, \
                                 \"+90s\" / \"+5m\" / \"+2h\", or UTC \"2026-12-02T18:30:00Z\""
                            ),
                        ));
                    }
                };
                if at <= now {
                    return Err(Refusal(
                        StatusCode::BAD_REQUEST,
                        "the scheduled time has passed; leave out \"schedule\" to restart now"
                            .into(),
                    ));
                }
                requests::ask(c, RequestKind::Restart, &me, Some(at)).await?;
                return Ok(text(
                    StatusCode::ACCEPTED,
                    format!(
                        "restart scheduled at {}",
                        crate::ops::history::utc_timestamp(at)
                    ),
                ));
            }
            let timeout = req.get("timeout").and_then(Value::as_u64).unwrap_or(120);
            requests::ask(c, RequestKind::Restart, &me, None).await?;
            requests::wait_done(
                c,
                RequestKind::Restart,
                &me,
                std::time::Duration::from_secs(timeout),
            )
            .await?;
            Ok(text(StatusCode::OK, "restarted successfully"))
        }
        .await,
    )
}

/// `DELETE /restart`: cancels this member's pending restart (200; 404 without one).
pub async fn delete_restart(State(st): State<RestState>) -> Response {
    answer(
        async {
            let c = client(&st)?;
            let me = st.health.borrow().member.clone();
            if requests::cancel(c, crate::ha::model::RequestKind::Restart, &me).await? {
                Ok(text(StatusCode::OK, "pending restart cancelled"))
            } else {
                Ok(text(StatusCode::NOT_FOUND, "no restart is pending"))
            }
        }
        .await,
    )
}

/// `POST /reload`: this member's PostgreSQL re-reads its configuration files at its
/// next cycle (202, as Patroni's "reload scheduled").
pub async fn post_reload(State(st): State<RestState>) -> Response {
    answer(
        async {
            let c = client(&st)?;
            let me = st.health.borrow().member.clone();
            requests::ask(c, crate::ha::model::RequestKind::Reload, &me, None).await?;
            Ok(text(StatusCode::ACCEPTED, "reload scheduled"))
        }
        .await,
    )
}

/// `POST /switchover` (Patroni's body: `{"leader": L, "candidate": C,
/// "scheduled_at": AT}`): 200 once C (or the best replica) serves; 202 when
/// scheduled; 412 when L is not the primary or C cannot take over.
pub async fn post_switchover(State(st): State<RestState>, body: Bytes) -> Response {
    answer(
        async {
            let c = client(&st)?;
            let req = body_json(&body)?;
            let view = crate::ops::cluster_view(c).await?;
            if let Some(l) = req.get("leader").and_then(Value::as_str)
                && view.leader.as_deref() != Some(l)
            {
                return Err(Refusal(
                    StatusCode::PRECONDITION_FAILED,
                    format!("leader name does not match: {l} is not the primary"),
                ));
            }
            let candidate = req.get("candidate").and_then(Value::as_str);
            let now = crate::ops::unix_now();
            let at = match req.get("scheduled_at") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(switchover::parse_time(s, now)?),
                Some(Value::Number(n)) => n.as_u64(),
                Some(other) => {
                    return Err(Refusal(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "scheduled_at {other} is not a time: use Unix seconds, \
                             \"+90s\" / \"+5m\" / \"+2h\", or UTC \"2026-12-02T18:30:00Z\""
                        ),
                    ));
                }
            };
            let precondition = |e: OpsError| match e {
                OpsError::Invalid(m) => Refusal(StatusCode::PRECONDITION_FAILED, m),
                e => e.into(),
            };
            let from = switchover::request(c, candidate, at.filter(|t| *t > now))
                .await
                .map_err(precondition)?;
            if at.is_some_and(|t| t > now) {
                return Ok(text(StatusCode::ACCEPTED, "Switchover scheduled"));
            }
            let to = switchover::wait(c, &from, FAILOVER_WAIT, |_, _| {}).await?;
            Ok(text(
                StatusCode::OK,
                format!("Successfully switched over to \"{to}\""),
            ))
        }
        .await,
    )
}

/// `DELETE /switchover`: cancels a requested or scheduled switchover (404: none).
pub async fn delete_switchover(State(st): State<RestState>) -> Response {
    answer(
        async {
            if switchover::cancel(client(&st)?).await? {
                Ok(text(StatusCode::OK, "scheduled switchover deleted"))
            } else {
                Ok(text(StatusCode::NOT_FOUND, "no switchover is scheduled"))
            }
        }
        .await,
    )
}
