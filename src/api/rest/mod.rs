//! Patroni-compatible REST API: health checks for load balancers and
//! orchestrators, plus `/patroni`, `/cluster` and `/metrics`.
//!
//! HAProxy, Kubernetes probes and monitoring built for Patroni call these paths
//! and act on the status code alone (200 = yes, 503 = no), so the codes follow
//! Patroni's `api.py` (see `shared/notes/anchors-patroni-and-peers.md` §1.1).
//! Where this API is stricter than Patroni it is on purpose and says so at the
//! spot (for example `/primary` also requires PostgreSQL to run as primary).
//!
//! The supervisor publishes a [`Health`] snapshot through a `watch` channel every
//! HA cycle; every request reads the latest snapshot and decides with the pure
//! functions here ([`health_code`], [`status_json`], [`cluster_json`],
//! [`metrics_text`]), taking "now" as an argument. The leader lease is kept as a
//! deadline, not a flag: if the supervisor stalls, `/primary` turns 503 on its
//! own once the lease may have expired, instead of reporting a stale 200.

mod auth;
mod checks;
mod docs;
mod metrics;
mod ops;
mod serve;
mod size;
mod ui;

use std::future::Future;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

pub use self::auth::WriteAuth;
pub use self::checks::{Endpoint, Route, health_code, route};
pub use self::docs::{cluster_json, status_json};
pub use self::metrics::metrics_text;
pub use self::serve::{ServeOptions, Timeouts};
pub use self::size::parse_size;
pub use crate::ha::health::{HangCounters, Health};

/// Content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn empty(status: StatusCode) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp
}

fn with_body(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_response(status: StatusCode, doc: &Value) -> Response {
    with_body(status, "application/json", doc.to_string())
}

/// Answers one request from a snapshot. GET gets the body; HEAD and OPTIONS get
/// the status code only (HAProxy's `option httpchk` sends OPTIONS by default).
/// `/liveness` and `/readiness` never carry a body, as in Patroni.
pub fn respond(
    h: &Health,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    now: Instant,
) -> Response {
    let Some(route) = route(path) else {
        return empty(StatusCode::NOT_FOUND);
    };
    let body_wanted = if method == Method::GET {
        true
    } else if method == Method::HEAD || method == Method::OPTIONS {
        false
    } else {
        let mut resp = empty(StatusCode::METHOD_NOT_ALLOWED);
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        return resp;
    };
    let status = match route {
        Route::Check(endpoint) => health_code(endpoint, h, query, now),
        Route::Patroni | Route::Cluster | Route::Metrics => StatusCode::OK,
    };
    if !body_wanted {
        return empty(status);
    }
    match route {
        Route::Check(Endpoint::Liveness | Endpoint::Readiness) => empty(status),
        Route::Check(_) | Route::Patroni => json_response(status, &status_json(h)),
        Route::Cluster => json_response(status, &cluster_json(&h.scope, &h.cluster)),
        Route::Metrics => with_body(status, METRICS_CONTENT_TYPE, metrics_text(h, now)),
    }
}

/// What every handler sees: the latest health snapshot, and a client of the store
/// for the routes that read or write it (`/config`, `/history`).
#[derive(Clone)]
pub struct RestState {
    pub health: watch::Receiver<Health>,
    pub client: Option<crate::client::Client>,
}

async fn handle(State(st): State<RestState>, method: Method, uri: Uri) -> Response {
    // A malformed query string is treated as no parameters rather than
    // refused: health checks must answer with 200 or 503.
    let query: Vec<(String, String)> = Query::try_from_uri(&uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let now = Instant::now();
    // The borrow is held only while the response is built, never across an await.
    let h = st.health.borrow();
    respond(&h, &method, uri.path(), &query, now)
}

/// The REST API over the latest [`Health`] snapshot in `rx`; `client` reaches the
/// store for `/config` and `/history` (503 without it).
pub fn router(rx: watch::Receiver<Health>, client: Option<crate::client::Client>) -> Router {
    use axum::routing::get;
    // One fallback handler for every other path and method, so that OPTIONS, HEAD,
    // 404 and 405 are all answered the same way Patroni's server does.
    Router::new()
        .route(
            "/config",
            get(ops::get_config)
                .patch(ops::patch_config)
                .put(ops::put_config),
        )
        .route("/history", get(ops::get_history))
        .route("/ui", get(ui::get_ui))
        .route("/failover", axum::routing::post(ops::post_failover))
        .route("/reinitialize", axum::routing::post(ops::post_reinitialize))
        .route(
            "/restart",
            axum::routing::post(ops::post_restart).delete(ops::delete_restart),
        )
        .route("/reload", axum::routing::post(ops::post_reload))
        .route(
            "/switchover",
            axum::routing::post(ops::post_switchover).delete(ops::delete_switchover),
        )
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::max(ops::MAX_BODY))
        .with_state(RestState { health: rx, client })
}

/// Serves the REST API on `listener` until `shutdown` completes, then finishes
/// in-flight requests and returns. Connections are admitted, timed, encrypted and
/// their write requests authenticated as `opts` says (`serve.rs`, `auth.rs`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    rx: watch::Receiver<Health>,
    client: Option<crate::client::Client>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(rx, client).layer(axum::middleware::from_fn_with_state(
        opts.auth.clone(),
        auth::guard,
    ));
    serve::serve(listener, app, opts, shutdown).await
}

#[cfg(test)]
mod tests;
