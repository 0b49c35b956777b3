//! Client library for the `Admin` gRPC service, used by `pgquorum ctl` and the
//! PostgreSQL supervisor.
//!
//! [`Client`] talks to any member: writes and linearizable reads are forwarded to
//! the Raft leader by the member that receives them, so the client only has to
//! find *a* member that answers. It fails over between the configured endpoints
//! and follows `x-pgquorum-leader` hints.
//!
//! [`LeaseKeeper`] keeps a lease alive and tracks, on the local monotonic clock,
//! until when the lease is certainly still held. Anything that acts as the lease
//! holder (the supervisor running a primary) must check
//! [`LeaseKeeper::is_valid`] before acting. [`LeaseRenewer`] runs a keeper on a task
//! of its own, so renewals never wait for the holder's other work.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::wire::pb;
use crate::wire::pb::admin_client::AdminClient;
use crate::wire::{LEADER_HINT, OUTCOME};

mod lease;

pub use self::lease::{LeaseKeeper, LeaseRenewer, LeaseRpc, lease_deadline};
#[cfg(test)]
use self::lease::{Renewal, effective_ttl, next_valid_until};

/// Per-request timeout used by [`Client::new`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default assumed worst-case clock rate difference between us and the leader.
pub const DEFAULT_DRIFT: f64 = 0.05;
/// Default time subtracted from every lease deadline, see [`lease_deadline`].
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(100);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
// Watch streams can sit idle for a long time; pings let us notice a dead node
// instead of waiting forever on a half-open TCP connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
const PASSES: usize = 3;
const PASS_PAUSE: Duration = Duration::from_millis(100);

/// Errors returned by [`Client`] calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no pgquorum endpoints given: pass --endpoints host:port[,host:port...]")]
    NoEndpoints,

    #[error(
        "invalid endpoint {addr:?}: {reason}; endpoints are written host:port, without a scheme"
    )]
    InvalidEndpoint { addr: String, reason: String },

    #[error(
        "no pgquorum node answered at {}: {last}; check that the nodes run and --endpoints is right",
        tried.join(", ")
    )]
    Unavailable { tried: Vec<String>, last: String },

    #[error("pgquorum refused the request ({:?}): {}", .0.code(), .0.message())]
    Rpc(Status),

    #[error("unexpected answer from pgquorum: {0}; are client and server the same version?")]
    InvalidResponse(String),

    /// A write that may or may not have been applied; it was not retried, since a
    /// retry could apply it twice (or report a false conflict).
    #[error(
        "the write may or may not have been applied ({endpoint}: {last}); it was not retried. \
         Check the current state (e.g. `pgquorum ctl kv get KEY`, `ctl lease ttl ID`) before \
         repeating it"
    )]
    OutcomeUnknown { endpoint: String, last: String },
}

impl ClientError {
    /// The gRPC code behind this error, if it came from (or stands for) a call.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc(status) => Some(status.code()),
            ClientError::Unavailable { .. } | ClientError::OutcomeUnknown { .. } => {
                Some(Code::Unavailable)
            }
            ClientError::NoEndpoints
            | ClientError::InvalidEndpoint { .. }
            | ClientError::InvalidResponse(_) => None,
        }
    }
}

#[derive(Debug)]
struct Target {
    addr: String,
    endpoint: Endpoint,
    // Built on first use: `connect_lazy` spawns a task and so needs a runtime,
    // which `Client::new` must not require.
    channel: Option<Channel>,
}

#[derive(Debug)]
struct State {
    targets: Vec<Target>,
    preferred: usize,
}

/// Failover client for the `Admin` service. Cheap to clone; clones share the
/// connections and the knowledge of which endpoint answered last.
///
/// Retries: a call is retried on another endpoint after a transport error,
/// `Unavailable` or `DeadlineExceeded`. Such an error does not prove the request
/// was not applied, so a retried write may be applied twice: a plain put then
/// writes the same value again, a compare-and-set put reports a failed compare,
/// and a retried `lease_grant` with id 0 may leave an orphan lease that expires
/// on its own.
#[derive(Debug, Clone)]
pub struct Client {
    state: Arc<Mutex<State>>,
    timeout: Duration,
}

impl Client {
    /// A client for `endpoints` ("host:port") with the [`DEFAULT_TIMEOUT`].
    /// Does not connect; the first call does.
    pub fn new(endpoints: Vec<String>) -> Result<Self, ClientError> {
        let mut targets: Vec<Target> = Vec::with_capacity(endpoints.len());
        for raw in endpoints {
            let addr = normalize(&raw);
            if addr.is_empty() || targets.iter().any(|t| t.addr == addr) {
                continue;
            }
            targets.push(make_target(addr)?);
        }
        if targets.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        Ok(Client {
            state: Arc::new(Mutex::new(State {
                targets,
                preferred: 0,
            })),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets the per-request timeout (per attempt, not for the whole failover).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Known endpoints, including leaders learnt from hints.
    pub fn endpoints(&self) -> Vec<String> {
        self.lock().targets.iter().map(|t| t.addr.clone()).collect()
    }

    pub async fn status(&self) -> Result<pb::StatusResponse, ClientError> {
        self.unary(
            pb::StatusRequest {},
            |mut c, r| async move { c.status(r).await },
        )
        .await
    }

    pub async fn add_member(
        &self,
        id: u64,
        name: &str,
        addr: &str,
        learner_only: bool,
    ) -> Result<pb::StatusResponse, ClientError> {
        let req = pb::AddMemberRequest {
            id,
            name: name.to_owned(),
            addr: addr.to_owned(),
            learner_only,
        };
        self.unary(req, |mut c, r| async move { c.add_member(r).await })
            .await
    }

    pub async fn remove_member(&self, id: u64) -> Result<pb::StatusResponse, ClientError> {
        self.unary(pb::RemoveMemberRequest { id }, |mut c, r| async move {
            c.remove_member(r).await
        })
        .await
    }

    /// Reads `key` (or every key under it with `prefix`). `serializable` reads
    /// the answering member's applied state, which may be stale.
    pub async fn get(
        &self,
        key: &str,
        prefix: bool,
        serializable: bool,
    ) -> Result<pb::RangeResponse, ClientError> {
        let req = pb::RangeRequest {
            key: key.to_owned(),
            prefix,
            serializable,
        };
        self.unary(req, |mut c, r| async move { c.range(r).await })
            .await
    }

    /// Writes `key`. With `expect_mod_revision` the put only happens if the key's
    /// mod_revision equals it (0: the key must not exist); check `succeeded`.
    pub async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: u64,
        expect_mod_revision: Option<u64>,
    ) -> Result<pb::PutResponse, ClientError> {
        let req = pb::PutRequest {
            key: key.to_owned(),
            value,
            lease,
            expect_mod_revision,
            ..Default::default()
        };
        self.write(req, |mut c, r| async move { c.put(r).await })
            .await
    }

    /// A put that applies only while `guard_key` is attached to `guard_lease`
    /// (`succeeded == false` otherwise): the writes of a lease holder that must not
    /// land after it was deposed.
    pub async fn put_guarded(
        &self,
        key: &str,
        value: Vec<u8>,
        guard_key: &str,
        guard_lease: u64,
    ) -> Result<pb::PutResponse, ClientError> {
        let req = pb::PutRequest {
            key: key.to_owned(),
            value,
            guard_key: Some(guard_key.to_owned()),
            guard_lease,
            ..Default::default()
        };
        self.write(req, |mut c, r| async move { c.put(r).await })
            .await
    }

    pub async fn delete(
        &self,
        key: &str,
        prefix: bool,
        expect_mod_revision: Option<u64>,
    ) -> Result<pb::DeleteResponse, ClientError> {
        let req = pb::DeleteRequest {
            key: key.to_owned(),
            prefix,
            expect_mod_revision,
        };
        self.write(req, |mut c, r| async move { c.delete(r).await })
            .await
    }

    /// Streams changes under `prefix` from `start_revision` (0: from now on).
    /// The timeout covers establishing the stream only; the stream itself lives
    /// until the caller drops it or the member ends it.
    pub async fn watch(
        &self,
        prefix: &str,
        start_revision: u64,
    ) -> Result<tonic::Streaming<pb::WatchEvent>, ClientError> {
        let req = pb::WatchRequest {
            prefix: prefix.to_owned(),
            start_revision,
        };
        self.call(req, false, true, |mut c, r| async move { c.watch(r).await })
            .await
    }

    /// Grants a lease of `ttl_ms`; `id` 0 lets the cluster choose the id.
    /// To know until when the lease is held, use [`LeaseKeeper`] instead.
    pub async fn lease_grant(
        &self,
        ttl_ms: u64,
        id: u64,
    ) -> Result<pb::LeaseResponse, ClientError> {
        self.write(
            pb::LeaseGrantRequest { ttl_ms, id },
            |mut c, r| async move { c.lease_grant(r).await },
        )
        .await
    }

    pub async fn lease_renew(&self, id: u64) -> Result<pb::LeaseResponse, ClientError> {
        self.unary(pb::LeaseIdRequest { id }, |mut c, r| async move {
            c.lease_renew(r).await
        })
        .await
    }

    pub async fn lease_revoke(&self, id: u64) -> Result<pb::LeaseResponse, ClientError> {
        self.write(pb::LeaseIdRequest { id }, |mut c, r| async move {
            c.lease_revoke(r).await
        })
        .await
    }

    pub async fn lease_ttl(&self, id: u64) -> Result<pb::LeaseResponse, ClientError> {
        self.unary(pb::LeaseIdRequest { id }, |mut c, r| async move {
            c.lease_time_to_live(r).await
        })
        .await
    }

    async fn unary<M, T, F, Fut>(&self, msg: M, f: F) -> Result<T, ClientError>
    where
        M: Clone,
        F: Fn(AdminClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(msg, true, true, f).await
    }

    /// A write that must not apply twice (put, delete, lease grant and revoke): tried
    /// on other endpoints only while it surely was not applied.
    async fn write<M, T, F, Fut>(&self, msg: M, f: F) -> Result<T, ClientError>
    where
        M: Clone,
        F: Fn(AdminClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(msg, true, false, f).await
    }

    /// Runs one call with failover. `deadline_header` also tells the server our
    /// timeout (grpc-timeout), which must not be sent for streams.
    async fn call<M, T, F, Fut>(
        &self,
        msg: M,
        deadline_header: bool,
        idempotent: bool,
        f: F,
    ) -> Result<T, ClientError>
    where
        M: Clone,
        F: Fn(AdminClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<Status> = None;
        let mut start = self.lock().preferred;

        for pass in 0..PASSES {
            if pass > 0 {
                tokio::time::sleep(PASS_PAUSE).await;
            }
            let len = self.lock().targets.len();
            let mut queue: VecDeque<usize> = (0..len).map(|k| (start + k) % len).collect();
            let mut visited: HashSet<usize> = HashSet::new();

            while let Some(i) = queue.pop_front() {
                if !visited.insert(i) {
                    continue;
                }
                let (addr, channel) = self.channel(i);
                let mut req = tonic::Request::new(msg.clone());
                crate::tls::add_token(&mut req);
                if deadline_header {
                    req.set_timeout(self.timeout);
                }
                let outcome = tokio::time::timeout(self.timeout, f(AdminClient::new(channel), req))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Status::deadline_exceeded(format!(
                            "no answer from {addr} within {} ms",
                            self.timeout.as_millis()
                        )))
                    });
                let status = match outcome {
                    Ok(resp) => {
                        self.lock().preferred = i;
                        return Ok(resp.into_inner());
                    }
                    Err(status) => status,
                };
                if !retryable(&status) {
                    // The node answered; it is as good a first choice as any.
                    self.lock().preferred = i;
                    return Err(ClientError::Rpc(status));
                }
                if !idempotent && outcome_may_be_applied(&status) {
                    return Err(ClientError::OutcomeUnknown {
                        endpoint: addr.to_string(),
                        last: describe(&status),
                    });
                }
                tracing::debug!(endpoint = %addr, code = ?status.code(), message = status.message(), "pgquorum call failed, trying next endpoint");
                if let Some(j) = self.leader_hint(&status) {
                    if visited.contains(&j) {
                        start = j;
                    } else {
                        queue.push_front(j);
                    }
                }
                if !tried.contains(&addr) {
                    tried.push(addr);
                }
                last = Some(status);
            }
        }

        Err(ClientError::Unavailable {
            tried,
            last: last.map_or_else(String::new, |s| describe(&s)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves State consistent, so a panic elsewhere
        // while holding the lock does not make the data unusable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn channel(&self, i: usize) -> (String, Channel) {
        let mut state = self.lock();
        let target = &mut state.targets[i];
        let channel = target
            .channel
            .get_or_insert_with(|| target.endpoint.connect_lazy())
            .clone();
        (target.addr.clone(), channel)
    }

    /// Index of the endpoint named by the leader hint in `status`, adding it to
    /// the known endpoints if it is new.
    fn leader_hint(&self, status: &Status) -> Option<usize> {
        let addr = normalize(status.metadata().get(LEADER_HINT)?.to_str().ok()?);
        if addr.is_empty() {
            return None;
        }
        let mut state = self.lock();
        if let Some(j) = state.targets.iter().position(|t| t.addr == addr) {
            return Some(j);
        }
        match make_target(addr) {
            Ok(target) => {
                state.targets.push(target);
                Some(state.targets.len() - 1)
            }
            Err(err) => {
                tracing::debug!(%err, "ignoring unusable leader hint");
                None
            }
        }
    }
}

fn normalize(addr: &str) -> String {
    let addr = addr.trim();
    addr.strip_prefix("http://")
        .unwrap_or(addr)
        .trim_end_matches('/')
        .to_owned()
}

fn make_target(addr: String) -> Result<Target, ClientError> {
    if addr.contains("://") || addr.contains('/') {
        return Err(ClientError::InvalidEndpoint {
            addr,
            reason: "unexpected scheme or path".to_owned(),
        });
    }
    let endpoint = crate::tls::endpoint(&addr, None)
        .map_err(|e| ClientError::InvalidEndpoint {
            addr: addr.clone(),
            reason: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    Ok(Target {
        addr,
        endpoint,
        channel: None,
    })
}

/// Whether another endpoint might succeed where this one failed.
/// Whether a failed call may still have been applied: the server said so, or the
/// call was cut off after it may have reached the server (our timeout, a broken
/// stream). A refused connection or a "not the leader" answer means it was not.
fn outcome_may_be_applied(status: &Status) -> bool {
    if status.metadata().get(OUTCOME).is_some() {
        return true;
    }
    match status.code() {
        Code::DeadlineExceeded => true,
        Code::Unknown | Code::Internal | Code::Cancelled => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        // A status with a source was made on our side from a transport error
        // (reset connection, broken HTTP/2 stream); the server never saw or never
        // finished the call.
        Code::Unknown | Code::Internal | Code::Cancelled => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

fn describe(status: &Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn deadline_discounts_drift_and_margin() {
        let sent = Instant::now();
        let d = lease_deadline(sent, 1000 * MS, 0.05, 100 * MS);
        assert_eq!(d - sent, 850 * MS);
    }

    #[test]
    fn deadline_without_drift_or_margin_is_ttl() {
        let sent = Instant::now();
        assert_eq!(
            lease_deadline(sent, 3000 * MS, 0.0, Duration::ZERO) - sent,
            3000 * MS
        );
    }

    #[test]
    fn deadline_saturates_when_margin_exceeds_ttl() {
        let sent = Instant::now();
        assert_eq!(lease_deadline(sent, 100 * MS, 0.05, 100 * MS), sent);
        assert_eq!(lease_deadline(sent, 50 * MS, 0.0, 100 * MS), sent);
    }

    #[test]
    fn deadline_clamps_bad_drift() {
        let sent = Instant::now();
        assert_eq!(lease_deadline(sent, 1000 * MS, 2.0, Duration::ZERO), sent);
        assert_eq!(
            lease_deadline(sent, 1000 * MS, f64::NAN, Duration::ZERO),
            sent
        );
        assert_eq!(
            lease_deadline(sent, 1000 * MS, -1.0, Duration::ZERO) - sent,
            1000 * MS
        );
    }

    #[test]
    fn deadline_overflow_is_not_valid() {
        let sent = Instant::now();
        assert_eq!(
            lease_deadline(sent, Duration::MAX, 0.0, Duration::ZERO),
            sent
        );
    }

    #[test]
    fn committed_renewal_counts_from_send_time() {
        let t0 = Instant::now();
        let sent = t0 + 500 * MS;
        let v = next_valid_until(
            Some(t0),
            sent,
            Renewal::Committed { ttl: 1000 * MS },
            0.0,
            Duration::ZERO,
        );
        assert_eq!(v, Some(sent + 1000 * MS));
    }

    #[test]
    fn failed_renewal_never_extends() {
        let t0 = Instant::now();
        let first = next_valid_until(
            None,
            t0,
            Renewal::Committed { ttl: 1000 * MS },
            0.05,
            100 * MS,
        );
        assert_eq!(first, Some(t0 + 850 * MS));
        // A later renewal that failed (its outcome unknown) must keep the old deadline
        // even though it was sent later.
        let after = next_valid_until(first, t0 + 600 * MS, Renewal::Failed, 0.05, 100 * MS);
        assert_eq!(after, first);
        // And with no deadline yet, a failure does not create one.
        assert_eq!(
            next_valid_until(None, t0, Renewal::Failed, 0.05, 100 * MS),
            None
        );
    }

    #[test]
    fn gone_lease_clears_deadline() {
        let t0 = Instant::now();
        assert_eq!(
            next_valid_until(Some(t0 + 1000 * MS), t0, Renewal::Gone, 0.05, 100 * MS),
            None
        );
    }

    #[test]
    fn shorter_ttl_can_move_deadline_back() {
        let t0 = Instant::now();
        let long = next_valid_until(
            None,
            t0,
            Renewal::Committed { ttl: 10_000 * MS },
            0.0,
            Duration::ZERO,
        );
        let short = next_valid_until(
            long,
            t0 + 10 * MS,
            Renewal::Committed { ttl: 1000 * MS },
            0.0,
            Duration::ZERO,
        );
        assert_eq!(short, Some(t0 + 1010 * MS));
    }

    #[test]
    fn effective_ttl_takes_the_smaller() {
        assert_eq!(effective_ttl(1000 * MS, 0), 1000 * MS);
        assert_eq!(effective_ttl(1000 * MS, 500), 500 * MS);
        assert_eq!(effective_ttl(1000 * MS, 2000), 1000 * MS);
    }

    #[test]
    fn client_rejects_empty_and_bad_endpoints() {
        assert!(matches!(Client::new(vec![]), Err(ClientError::NoEndpoints)));
        assert!(matches!(
            Client::new(vec![" ".into()]),
            Err(ClientError::NoEndpoints)
        ));
        assert!(matches!(
            Client::new(vec!["grpc://a:1".into()]),
            Err(ClientError::InvalidEndpoint { .. })
        ));
    }

    #[test]
    fn client_normalizes_and_dedups_endpoints() {
        let c = Client::new(vec!["http://a:1/".into(), "a:1".into(), " b:2 ".into()]).unwrap();
        assert_eq!(c.endpoints(), vec!["a:1".to_owned(), "b:2".to_owned()]);
    }

    #[test]
    fn writes_are_not_retried_when_they_may_have_been_applied() {
        let mut marked = Status::unavailable("not committed within 5s");
        marked
            .metadata_mut()
            .insert(OUTCOME, "unknown".parse().unwrap());
        assert!(retryable(&marked) && outcome_may_be_applied(&marked));
        assert!(outcome_may_be_applied(&Status::deadline_exceeded("x")));
        // Refused connection, or "not the leader" (with or without a hint): never applied.
        assert!(!outcome_may_be_applied(&Status::unavailable(
            "connection refused"
        )));
        let e = ClientError::OutcomeUnknown {
            endpoint: "127.0.0.1:7001".into(),
            last: "Unavailable: not committed".into(),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("may or may not") && msg.contains("before"),
            "{msg}"
        );
    }

    #[test]
    fn retryable_codes() {
        assert!(retryable(&Status::unavailable("x")));
        assert!(retryable(&Status::deadline_exceeded("x")));
        assert!(!retryable(&Status::not_found("x")));
        assert!(!retryable(&Status::failed_precondition("x")));
        assert!(!retryable(&Status::unknown("server said so")));
    }

    #[test]
    fn unavailable_error_tells_what_to_do() {
        let e = ClientError::Unavailable {
            tried: vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()],
            last: "Unavailable: connection refused".into(),
        };
        let msg = e.to_string();
        assert!(msg.contains("127.0.0.1:7001, 127.0.0.1:7002"), "{msg}");
        assert!(msg.contains("--endpoints"), "{msg}");
        assert_eq!(e.code(), Some(Code::Unavailable));
    }

    #[tokio::test]
    async fn all_endpoints_down_gives_unavailable() {
        // Port 1 on localhost: nothing listens there, connect fails fast.
        let c = Client::new(vec!["127.0.0.1:1".into()])
            .unwrap()
            .with_timeout(Duration::from_millis(500));
        match c.status().await {
            Err(ClientError::Unavailable { tried, .. }) => assert_eq!(tried, vec!["127.0.0.1:1"]),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
