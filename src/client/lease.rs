//! The holder side of a lease: how long it is certainly held (`lease_deadline`),
//! `LeaseKeeper` (grant, renew, attach) and `LeaseRenewer` (a keeper renewed on a
//! task of its own, reporting each committed deadline).

use super::*;

/// The two lease calls a [`LeaseKeeper`] makes, so a keeper can run against the
/// cluster ([`Client`]) or against a fake in a holder's unit tests.
pub trait LeaseRpc: Clone + Send + Sync + 'static {
    /// Grants a lease of `ttl_ms` (id chosen by the cluster); returns the id and the
    /// TTL the cluster reports applying (0: as asked).
    fn grant_lease(
        &self,
        ttl_ms: u64,
    ) -> impl Future<Output = Result<(u64, u64), ClientError>> + Send;
    /// Renews lease `id`; returns the TTL the cluster reports applying (0: unknown).
    /// A lease that does not exist is an error with code `NotFound`.
    fn renew_lease(&self, id: u64) -> impl Future<Output = Result<u64, ClientError>> + Send;
}

impl LeaseRpc for Client {
    async fn grant_lease(&self, ttl_ms: u64) -> Result<(u64, u64), ClientError> {
        let r = self.lease_grant(ttl_ms, 0).await?;
        Ok((r.id, r.ttl_ms))
    }

    async fn renew_lease(&self, id: u64) -> Result<u64, ClientError> {
        Ok(self.lease_renew(id).await?.ttl_ms)
    }
}

/// Until when a lease is certainly still held, given that a grant or renewal
/// that was *sent* at `sent` (local monotonic clock, read before sending)
/// committed with `ttl`.
///
/// Why this is safe: the leader starts the lease's new TTL when it applies the
/// renewal, which is after `sent` on any clock. So the lease lives at least
/// `ttl` of the leader's time after `sent`. Our clock may run faster than the
/// leader's by up to `drift` (a fraction), so we count only `ttl * (1 - drift)`,
/// and subtract `margin` for the time between checking validity and acting on
/// it. The result saturates at `sent` (lease not valid at all) when the margin
/// eats the whole TTL, and also when the TTL is too large to represent.
///
/// `drift` is clamped to `[0, 1]`.
pub fn lease_deadline(sent: Instant, ttl: Duration, drift: f64, margin: Duration) -> Instant {
    let drift = if drift.is_nan() {
        1.0
    } else {
        drift.clamp(0.0, 1.0)
    };
    // `Duration::mul_f64` panics when the product does not fit; such a TTL is
    // nonsense, so count nothing rather than crash the lease holder.
    let discounted =
        Duration::try_from_secs_f64(ttl.as_secs_f64() * (1.0 - drift)).unwrap_or(Duration::ZERO);
    let usable = discounted.saturating_sub(margin);
    sent.checked_add(usable).unwrap_or(sent)
}

/// The result of a grant or renew RPC, as far as the local deadline is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Renewal {
    /// The RPC returned Ok: the grant/renewal committed through Raft with `ttl`.
    Committed { ttl: Duration },
    /// Unknown outcome (timeout, no leader...): it may or may not have committed.
    Failed,
    /// The cluster says the lease does not exist (expired or revoked).
    Gone,
}

/// The new `valid_until` after a grant/renew sent at `sent` ended with `renewal`.
/// Only a committed renewal moves the deadline; a failure never extends it.
pub(super) fn next_valid_until(
    current: Option<Instant>,
    sent: Instant,
    renewal: Renewal,
    drift: f64,
    margin: Duration,
) -> Option<Instant> {
    match renewal {
        // Not `max(current, new)`: a renewal with a shorter TTL replaces the
        // leader's expiry, which may then be earlier than our old deadline.
        Renewal::Committed { ttl } => Some(lease_deadline(sent, ttl, drift, margin)),
        Renewal::Failed => current,
        // The lease is gone for sure; an old deadline would be a lie.
        Renewal::Gone => None,
    }
}

/// The TTL to count on after the server answered with `reported_ms`: the
/// smaller of what we asked for and what the server says it applied.
pub(super) fn effective_ttl(requested: Duration, reported_ms: u64) -> Duration {
    if reported_ms == 0 {
        requested
    } else {
        requested.min(Duration::from_millis(reported_ms))
    }
}

/// Keeps one lease and the local deadline until which it is certainly held.
///
/// Safety contract: `valid_until` is only ever set from the send time of a
/// grant/renew RPC that returned Ok (= committed through Raft), via
/// [`lease_deadline`]. A failed renewal never extends it (a `NotFound` answer
/// clears it), so once `is_valid(now)` is false the holder must stop acting as
/// lease owner (e.g. demote PostgreSQL) even if a later renewal may succeed.
#[derive(Debug)]
pub struct LeaseKeeper<C = Client> {
    client: C,
    id: u64,
    ttl: Duration,
    drift: f64,
    margin: Duration,
    valid_until: Option<Instant>,
}

impl<C: LeaseRpc> LeaseKeeper<C> {
    /// Grants a new lease (id chosen by the cluster) with [`DEFAULT_DRIFT`] and
    /// [`DEFAULT_MARGIN`].
    pub async fn grant(client: C, ttl: Duration) -> Result<Self, ClientError> {
        Self::grant_with(client, ttl, DEFAULT_DRIFT, DEFAULT_MARGIN).await
    }

    /// Like [`LeaseKeeper::grant`] with explicit clock drift and safety margin.
    pub async fn grant_with(
        client: C,
        ttl: Duration,
        drift: f64,
        margin: Duration,
    ) -> Result<Self, ClientError> {
        // The server only knows whole milliseconds; counting the sub-millisecond
        // rest we did not ask for would overstate the deadline.
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let sent = Instant::now();
        let (id, applied_ms) = client.grant_lease(ttl_ms).await?;
        let ttl = effective_ttl(Duration::from_millis(ttl_ms), applied_ms);
        Ok(LeaseKeeper {
            client,
            id,
            ttl,
            drift,
            margin,
            valid_until: next_valid_until(None, sent, Renewal::Committed { ttl }, drift, margin),
        })
    }

    /// Takes over an existing lease by renewing it once; the TTL is the one the
    /// cluster reports.
    pub async fn attach(client: C, id: u64) -> Result<Self, ClientError> {
        Self::attach_with(client, id, DEFAULT_DRIFT, DEFAULT_MARGIN).await
    }

    /// Like [`LeaseKeeper::attach`] with explicit clock drift and safety margin.
    pub async fn attach_with(
        client: C,
        id: u64,
        drift: f64,
        margin: Duration,
    ) -> Result<Self, ClientError> {
        let sent = Instant::now();
        let ttl_ms = client.renew_lease(id).await?;
        if ttl_ms == 0 {
            return Err(ClientError::InvalidResponse(format!(
                "renewal of lease {id} reported no ttl"
            )));
        }
        let ttl = Duration::from_millis(ttl_ms);
        Ok(LeaseKeeper {
            client,
            id,
            ttl,
            drift,
            margin,
            valid_until: next_valid_until(None, sent, Renewal::Committed { ttl }, drift, margin),
        })
    }

    /// Renews the lease. Only an Ok answer moves [`LeaseKeeper::valid_until`]
    /// (to the send time of this renewal plus the discounted TTL); an error
    /// leaves it unchanged, except `NotFound`, which clears it.
    pub async fn renew(&mut self) -> Result<(), ClientError> {
        let sent = Instant::now();
        let result = self.client.renew_lease(self.id).await;
        let renewal = match &result {
            Ok(ttl_ms) => {
                self.ttl = effective_ttl(self.ttl, *ttl_ms);
                Renewal::Committed { ttl: self.ttl }
            }
            Err(err) if err.code() == Some(Code::NotFound) => Renewal::Gone,
            Err(_) => Renewal::Failed,
        };
        self.valid_until =
            next_valid_until(self.valid_until, sent, renewal, self.drift, self.margin);
        result.map(|_| ())
    }

    /// Until when the lease is certainly held; `None` if it never was or is gone.
    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }

    /// Whether the lease is certainly still held at `now`.
    pub fn is_valid(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|until| now < until)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// A [`LeaseKeeper`] renewed on a task of its own, every `every`, so renewals never
/// wait for whatever else the owner is doing (the supervisor's HA cycle makes
/// several store writes and may run a slow action; on a slow network a cycle can
/// outlast the lease). After each committed renewal the new deadline goes to
/// `on_renewed` first (the supervisor moves PostgreSQL's fence deadline there),
/// then becomes visible through [`LeaseRenewer::valid_until`].
///
/// The same safety contract as [`LeaseKeeper`]: only a committed renewal moves the
/// deadline. Once the lease is reported gone the task stops; the deadline is then
/// `None`, and `on_renewed` is never told (the last deadline it got still fences).
#[derive(Debug)]
pub struct LeaseRenewer {
    id: u64,
    state: tokio::sync::watch::Receiver<Option<Instant>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseRenewer {
    pub fn spawn<C: LeaseRpc>(
        mut keeper: LeaseKeeper<C>,
        every: Duration,
        on_renewed: impl Fn(Instant, Duration) + Send + 'static,
    ) -> Self {
        let id = keeper.id();
        let (tx, state) = tokio::sync::watch::channel(keeper.valid_until());
        let task = tokio::spawn(async move {
            // A renewal that took longer than `every` is followed by the next at once.
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let sent = Instant::now();
                match keeper.renew().await {
                    Ok(_) => {
                        if let Some(until) = keeper.valid_until() {
                            on_renewed(until, sent.elapsed());
                        }
                        tx.send_replace(keeper.valid_until());
                    }
                    Err(e) if e.code() == Some(Code::NotFound) => {
                        tracing::warn!(lease = id, "the lease is gone: {e}");
                        tx.send_replace(None);
                        return;
                    }
                    Err(e) => tracing::debug!(lease = id, error = %e, "lease renewal failed"),
                }
            }
        });
        LeaseRenewer { id, state, task }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Until when the lease is certainly held; `None` once it is known to be gone.
    pub fn valid_until(&self) -> Option<Instant> {
        *self.state.borrow()
    }

    pub fn is_valid(&self, now: Instant) -> bool {
        self.valid_until().is_some_and(|until| now < until)
    }

    /// Stops renewing (the lease then expires unless revoked) and returns once the
    /// task is gone, so `on_renewed` is not running and will not run again: after
    /// this the owner may clear what `on_renewed` set.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for LeaseRenewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
