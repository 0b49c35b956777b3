//! The gRPC admin service. Any member answers every call: writes and linearizable
//! reads run on the Raft leader, so a follower forwards them there once; a request
//! that cannot reach a leader within the request deadline gets `Unavailable` with
//! the leader's address (when known) in the `x-pgquorum-leader` metadata.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use openraft::ChangeMembers;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::raft::ReadPolicy;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::auth::{self, Need};
use tonic::{Request, Response, Status};

use crate::raft::sm_store::SmStore;
use crate::raft::{Member, NodeId, Raft};
use crate::store::{self, Command, EventKind, Lessor};
use crate::wire::pb::admin_client::AdminClient;
use crate::wire::pb::admin_server::Admin;
use crate::wire::{FORWARDED, LEADER_HINT, OUTCOME, connection_failed, pb};

const MAX_KEY: usize = 4096;
const MAX_VALUE: usize = 1024 * 1024;
const MAX_TTL_MS: u64 = 24 * 3600 * 1000;
const MIN_TTL_MS: u64 = 100;

#[derive(Clone)]
pub struct AdminService {
    pub raft: Raft,
    pub sm: SmStore,
    pub lessor: Arc<Mutex<Lessor>>,
    pub node_id: NodeId,
    pub node_name: String,
    pub cluster: String,
    pub timeout: Duration,
    /// Every call needs a client certificate (TLS on; see `auth.rs`).
    pub auth_required: bool,
    tokens: Arc<auth::Tokens>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

fn unavailable(msg: String, leader: Option<&Member>) -> Status {
    let mut s = Status::unavailable(msg);
    if let Some(m) = leader
        && let Ok(v) = MetadataValue::try_from(m.addr.as_str())
    {
        s.metadata_mut().insert(LEADER_HINT, v);
    }
    s
}

/// Marks a failed write whose entry may still commit (see [`OUTCOME`]).
fn outcome_unknown(mut s: Status) -> Status {
    s.metadata_mut()
        .insert(OUTCOME, MetadataValue::from_static("unknown"));
    s
}

fn kv_to_pb(kv: &store::KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key.clone(),
        value: kv.value.clone(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

fn lease_not_found(id: u64) -> Status {
    Status::not_found(format!(
        "lease {id} not found: it expired or was revoked; grant a new lease"
    ))
}

fn check_key(key: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("key must not be empty"));
    }
    if key.len() > MAX_KEY {
        return Err(Status::invalid_argument(format!(
            "key is longer than {MAX_KEY} bytes"
        )));
    }
    Ok(())
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

impl AdminService {
    pub fn new(
        raft: Raft,
        sm: SmStore,
        lessor: Arc<Mutex<Lessor>>,
        node_id: NodeId,
        node_name: String,
        cluster: String,
        timeout: Duration,
    ) -> Self {
        Self {
            auth_required: false,
            tokens: Arc::default(),
            raft,
            sm,
            lessor,
            node_id,
            node_name,
            cluster,
            timeout,
            channels: Arc::default(),
        }
    }

    /// Every call then needs a client certificate of the cluster CA (`auth.rs`).
    pub fn requiring_auth(mut self, required: bool, tokens: auth::Tokens) -> Self {
        self.auth_required = required;
        self.tokens = Arc::new(tokens);
        self
    }

    fn leader(&self) -> (Option<NodeId>, Option<Member>) {
        let m = self.raft.metrics().borrow_watched().clone();
        let node = m
            .current_leader
            .and_then(|id| m.membership_config.membership().get_node(&id).cloned());
        (m.current_leader, node)
    }

    /// `None` when this member should serve the request itself (it is the leader);
    /// otherwise a client for the leader. Waits up to the request deadline for an
    /// election to finish.
    async fn route<T>(&self, req: &Request<T>) -> Result<Option<AdminClient<Channel>>, Status> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut metrics = self.raft.metrics();
        loop {
            let (leader_id, leader) = self.leader();
            match leader_id {
                Some(id) if id == self.node_id => return Ok(None),
                Some(id) => {
                    let Some(leader) = leader else {
                        return Err(unavailable(
                            format!("leader {id} has no known address"),
                            None,
                        ));
                    };
                    if req.metadata().get(FORWARDED).is_some() {
                        return Err(unavailable(
                            format!(
                                "node {} is not the leader; the leader is node {id} at {}",
                                self.node_id, leader.addr
                            ),
                            Some(&leader),
                        ));
                    }
                    return Ok(Some(self.client(&leader)?));
                }
                None => {
                    let wait = tokio::time::timeout_at(deadline, metrics.changed()).await;
                    if !matches!(wait, Ok(Ok(()))) {
                        return Err(unavailable(
                            format!(
                                "node {} knows no Raft leader (election in progress, or this node is cut off from the majority); retry or ask another node",
                                self.node_id
                            ),
                            None,
                        ));
                    }
                }
            }
        }
    }

    fn client(&self, leader: &Member) -> Result<AdminClient<Channel>, Status> {
        let mut map = self.channels.lock().expect("lock");
        let ch = match map.get(&leader.addr) {
            Some(c) => c.clone(),
            None => {
                let c = crate::tls::endpoint(&leader.addr, Some(&leader.name))
                    .map_err(|e| Status::internal(e.to_string()))?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(1))
                    .keep_alive_timeout(Duration::from_secs(2))
                    .connect_lazy();
                map.insert(leader.addr.clone(), c.clone());
                c
            }
        };
        Ok(AdminClient::new(ch))
    }

    fn forwarded<T>(&self, req: Request<T>) -> Request<T> {
        // Checked on entry already; the leader applies the same caller's role.
        let who = auth::check(&req, Need::Read, self.auth_required, &self.tokens)
            .ok()
            .flatten();
        let mut r = Request::new(req.into_inner());
        auth::name_caller(&mut r, who.as_ref());
        r.metadata_mut()
            .insert(FORWARDED, MetadataValue::from_static("1"));
        r.set_timeout(self.timeout);
        r
    }

    /// Maps a failed forward to a status that tells the client where to go.
    fn forward_failed(&self, s: Status) -> Status {
        // A connection that timed out or broke may be a half-dead TCP connection left
        // from a partition (retransmissions backing off for minutes): never reuse it.
        if connection_failed(&s) {
            self.channels.lock().expect("lock").clear();
        }
        // The leader may have received (and applied) a forward that then timed out or
        // broke; the mark of a leader-side unknown outcome is kept as it is.
        let unknown = s.metadata().get(OUTCOME).is_some()
            || matches!(
                s.code(),
                tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
            );
        let s = self.forward_status(s);
        if unknown { outcome_unknown(s) } else { s }
    }

    fn forward_status(&self, s: Status) -> Status {
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                if s.metadata().get(LEADER_HINT).is_none() =>
            {
                let (_, leader) = self.leader();
                unavailable(
                    format!(
                        "could not reach the Raft leader from node {}: {}",
                        self.node_id,
                        s.message()
                    ),
                    leader.as_ref(),
                )
            }
            _ => s,
        }
    }

    async fn write(&self, cmd: Command) -> Result<store::Response, Status> {
        match tokio::time::timeout(self.timeout, self.raft.client_write(cmd)).await {
            Err(_) => Err(outcome_unknown(unavailable(
                format!(
                    "not committed within {:?}: the cluster may have lost its majority; the outcome is unknown, check before retrying",
                    self.timeout
                ),
                None,
            ))),
            Ok(Ok(r)) => Ok(r.data),
            // Not the leader when the proposal was made: nothing was appended, a retry
            // on the new leader is safe. (openraft does not tell this apart from a
            // proposal cut off in flight by a leadership change: a known limit.)
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(unavailable(
                format!(
                    "leadership moved to {:?} during the request; retry",
                    f.leader_id
                ),
                f.leader_node.as_ref(),
            )),
            Ok(Err(e)) => Err(outcome_unknown(unavailable(
                format!("write failed: {e}; the outcome is unknown, check before retrying"),
                None,
            ))),
        }
    }

    async fn linearize(&self) -> Result<(), Status> {
        match tokio::time::timeout(
            self.timeout,
            self.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                let (_, leader) = self.leader();
                Err(unavailable(
                    format!("cannot confirm leadership for a linearizable read: {e}"),
                    leader.as_ref(),
                ))
            }
            Err(_) => Err(unavailable(
                format!(
                    "could not reach a majority within {:?} for a linearizable read",
                    self.timeout
                ),
                None,
            )),
        }
    }

    fn status_now(&self) -> pb::StatusResponse {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| pb::Member {
                id: *id,
                name: n.name.clone(),
                addr: n.addr.clone(),
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
            })
            .collect();
        let leader_addr = m
            .current_leader
            .and_then(|id| membership.get_node(&id).map(|n| n.addr.clone()))
            .unwrap_or_default();
        pb::StatusResponse {
            node_id: self.node_id,
            node_name: self.node_name.clone(),
            cluster: self.cluster.clone(),
            leader_id: m.current_leader.unwrap_or(0),
            leader_addr,
            term: m.current_term,
            state: format!("{:?}", m.state).to_lowercase(),
            commit_index: m.local_committed.as_ref().map_or(0, |l| l.index),
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            revision: self.sm.read(|s| s.revision),
            members,
        }
    }

    async fn membership_change(&self, change: ChangeMembers<NodeId, Member>) -> Result<(), Status> {
        match tokio::time::timeout(self.timeout * 6, self.raft.change_membership(change, false))
            .await
        {
            Err(_) => Err(unavailable(
                "membership change did not commit in time; check `ctl status`".into(),
                None,
            )),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(unavailable(
                "leadership moved during the request; retry".into(),
                f.leader_node.as_ref(),
            )),
            Ok(Err(RaftError::APIError(e))) => Err(Status::failed_precondition(e.to_string())),
            Ok(Err(e)) => Err(unavailable(e.to_string(), None)),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        auth::check(&req, Need::Read, self.auth_required, &self.tokens)?;
        Ok(Response::new(self.status_now()))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        auth::check(&req, Need::Write, self.auth_required, &self.tokens)?;
        let r = req.get_ref();
        if r.id == 0 || r.name.is_empty() || crate::hostport::parse(&r.addr).is_none() {
            return Err(Status::invalid_argument(
                "member add needs --id > 0, --name and --addr HOST:PORT",
            ));
        }
        if let Some(mut c) = self.route(&req).await? {
            return c
                .add_member(self.forwarded(req))
                .await
                .map_err(|s| self.forward_failed(s));
        }
        let r = req.into_inner();
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        if let Some(existing) = membership.get_node(&r.id)
            && existing.addr != r.addr
        {
            return Err(Status::already_exists(format!(
                "node id {} is already a member at {}; remove it first or pick another id",
                r.id, existing.addr
            )));
        }
        if let Some((id, _)) = membership
            .nodes()
            .find(|(id, n)| n.addr == r.addr && **id != r.id)
        {
            return Err(Status::already_exists(format!(
                "address {} is already used by node {id}; remove that node first \
                 (`pgquorum ctl member remove --id {id}`) or give this one another --addr",
                r.addr
            )));
        }
        let node = Member {
            name: r.name,
            addr: r.addr,
        };
        // Blocking: the learner catches up before it can be made a voter, so the
        // promotion never stalls commits waiting on an empty node.
        match tokio::time::timeout(self.timeout * 6, self.raft.add_learner(r.id, node, true)).await
        {
            Err(_) => {
                return Err(unavailable(
                    "the new node did not catch up in time; is it running and reachable?".into(),
                    None,
                ));
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                return Err(unavailable(
                    "leadership moved during the request; retry".into(),
                    f.leader_node.as_ref(),
                ));
            }
            Ok(Err(e)) => return Err(Status::failed_precondition(e.to_string())),
            Ok(Ok(_)) => {}
        }
        if !r.learner_only {
            self.membership_change(ChangeMembers::AddVoterIds(BTreeSet::from([r.id])))
                .await?;
        }
        Ok(Response::new(self.status_now()))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        auth::check(&req, Need::Write, self.auth_required, &self.tokens)?;
        if let Some(mut c) = self.route(&req).await? {
            return c
                .remove_member(self.forwarded(req))
                .await
                .map_err(|s| self.forward_failed(s));
        }
        let id = req.into_inner().id;
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(Status::not_found(format!(
                "node {id} is not a member; see `pgquorum ctl members`"
            )));
        }
        let is_voter = membership.voter_ids().any(|v| v == id);
        if is_voter {
            if membership.voter_ids().count() == 1 {
                return Err(Status::failed_precondition(
                    "cannot remove the last voter: add another voter first \
                     (`pgquorum ctl member add`, without --learner) and wait until it is one",
                ));
            }
            self.membership_change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
                .await?;
        }
        let still_there = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some();
        if still_there {
            self.membership_change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await?;
        }
        Ok(Response::new(self.status_now()))
    }

    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        auth::check(&req, Need::Read, self.auth_required, &self.tokens)?;
        check_key(&req.get_ref().key)
            .or_else(|e| if req.get_ref().prefix { Ok(()) } else { Err(e) })?;
        if !req.get_ref().serializable {
            if let Some(mut c) = self.route(&req).await? {
                return c
                    .range(self.forwarded(req))
                    .await
                    .map_err(|s| self.forward_failed(s));
            }
            self.linearize().await?;
        }
        let r = req.into_inner();
        let (kvs, revision) = self.sm.read(|s| {
            let kvs: Vec<_> = if r.prefix {
                s.range_prefix(&r.key).map(kv_to_pb).collect()
            } else {
                s.get(&r.key).map(kv_to_pb).into_iter().collect()
            };
            (kvs, s.revision)
        });
        Ok(Response::new(pb::RangeResponse { kvs, revision }))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        auth::check(&req, Need::Write, self.auth_required, &self.tokens)?;
        check_key(&req.get_ref().key)?;
        if req.get_ref().value.len() > MAX_VALUE {
            return Err(Status::invalid_argument(format!(
                "value is larger than {MAX_VALUE} bytes"
            )));
        }
        if req.get_ref().key == crate::ha::model::CONFIG_KEY {
            let max = self.raft.config().election_timeout_max;
            serde_json::from_slice::<crate::config::HaSettings>(&req.get_ref().value)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate(max).map_err(|e| e.to_string()))
                .map_err(|e| {
                    Status::invalid_argument(format!("rejected cluster HA settings: {e}"))
                })?;
        }
        if let Some(mut c) = self.route(&req).await? {
            return c
                .put(self.forwarded(req))
                .await
                .map_err(|s| self.forward_failed(s));
        }
        let r = req.into_inner();
        let cmd = Command::Put {
            key: r.key,
            value: r.value,
            lease: r.lease,
            expect_mod_revision: r.expect_mod_revision,
            guard: r.guard_key.map(|key| store::LeaseGuard {
                key,
                lease: r.guard_lease,
            }),
        };
        match self.write(cmd).await? {
            store::Response::Put { revision, prev } => Ok(Response::new(pb::PutResponse {
                succeeded: true,
                revision,
                prev: prev.as_ref().map(kv_to_pb),
            })),
            store::Response::CompareFailed { revision, current } => {
                Ok(Response::new(pb::PutResponse {
                    succeeded: false,
                    revision,
                    prev: current.as_ref().map(kv_to_pb),
                }))
            }
            store::Response::LeaseNotFound { id } => Err(lease_not_found(id)),
            other => Err(Status::internal(format!("unexpected result {other}"))),
        }
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        auth::check(&req, Need::Write, self.auth_required, &self.tokens)?;
        if !req.get_ref().prefix {
            check_key(&req.get_ref().key)?;
        } else if req.get_ref().expect_mod_revision.is_some() {
            return Err(Status::invalid_argument(
                "a compare is not allowed with a prefix delete: leave out --expect-revision, \
                 or delete each key on its own (without --prefix) with its --expect-revision",
            ));
        }
        if let Some(mut c) = self.route(&req).await? {
            return c
                .delete(self.forwarded(req))
                .await
                .map_err(|s| self.forward_failed(s));
        }
        let r = req.into_inner();
        let cmd = Command::Delete {
            key: r.key,
            prefix: r.prefix,
            expect_mod_revision: r.expect_mod_revision,
        };
        match self.write(cmd).await? {
            store::Response::Deleted { revision, deleted } => {
                Ok(Response::new(pb::DeleteResponse {
                    succeeded: true,
                    revision,
                    deleted,
                }))
            }
            store::Response::CompareFailed { revision, .. } => {
                Ok(Response::new(pb::DeleteResponse {
                    succeeded: false,
                    revision,
                    deleted: 0,
                }))
            }
            other => Err(Status::internal(format!("unexpected result {other}"))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        auth::check(&req, Need::Read, self.auth_required, &self.tokens)?;
        let r = req.into_inner();
        let mut live = self.sm.subscribe();
        let mut last = if r.start_revision == 0 {
            self.sm.read(|s| s.revision)
        } else {
            let floor = self.sm.history_floor();
            if r.start_revision < floor {
                return Err(Status::out_of_range(format!(
                    "revision {} is compacted; the oldest revision still watchable is {floor}: \
                     rerun with --from-revision {floor} (re-read the keys with `pgquorum ctl kv \
                     get PREFIX --prefix` for what changed before it)",
                    r.start_revision
                )));
            }
            r.start_revision - 1
        };
        let history = if r.start_revision == 0 {
            Vec::new()
        } else {
            self.sm
                .history_from(r.start_revision)
                .map_err(|e| Status::internal(e.to_string()))?
        };
        let (tx, rx) = mpsc::channel(256);
        let prefix = r.prefix;
        tokio::spawn(async move {
            let to_pb = |ev: &store::Event| pb::WatchEvent {
                kind: match ev.kind {
                    EventKind::Put => "put",
                    EventKind::Delete => "delete",
                }
                .into(),
                revision: ev.kv.mod_revision,
                kv: Some(kv_to_pb(&ev.kv)),
            };
            for ev in history.iter().filter(|e| e.kv.key.starts_with(&prefix)) {
                if tx.send(Ok(to_pb(ev))).await.is_err() {
                    return;
                }
            }
            if let Some(ev) = history.last() {
                last = last.max(ev.kv.mod_revision);
            }
            loop {
                match live.recv().await {
                    Ok(ev) => {
                        if ev.kv.mod_revision <= last || !ev.kv.key.starts_with(&prefix) {
                            continue;
                        }
                        if tx.send(Ok(to_pb(&ev))).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx
                            .send(Err(Status::aborted("this watch fell behind; start a new watch from the last revision you saw")))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        auth::check(&req, Need::Write, self.auth_required, &self.tokens)?;
        let ttl = req.get_ref().ttl_ms;
        if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl) {
            return Err(Status::invalid_argument(format!(
                "ttl_ms must be between {MIN_TTL_MS} and {MAX_TTL_MS}"
            )));
        }
        if let Some(mut c) = self.route(&req).await? {
            return c
                .lease_grant(self.forwarded(req))
                .await
                .map_err(|s| self.forward_failed(s));
        }
        let r = req.into_inner();
        lease_response(
            self.write(Command::LeaseGrant {
                ttl_ms: r.ttl_ms,
                id: r.id,
            })
            .await?,
        )
    }

    async fn lease_renew(
        &self,
        req: Request<pb::LeaseIdRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        auth::check(&req, Need::Write, self.auth_required, &self.tokens)?;
        if let Some(mut c) = self.route(&req).await? {
            return c
                .lease_renew(self.forwarded(req))
                .await
                .map_err(|s| self.forward_failed(s));
        }
        let id = req.into_inner().id;
        lease_response(self.write(Command::LeaseRenew { id }).await?)
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseIdRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        auth::check(&req, Need::Write, self.auth_required, &self.tokens)?;
        if let Some(mut c) = self.route(&req).await? {
            return c
                .lease_revoke(self.forwarded(req))
                .await
                .map_err(|s| self.forward_failed(s));
        }
        let id = req.into_inner().id;
        lease_response(self.write(Command::LeaseRevoke { id }).await?)
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseIdRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        auth::check(&req, Need::Read, self.auth_required, &self.tokens)?;
        if let Some(mut c) = self.route(&req).await? {
            return c
                .lease_time_to_live(self.forwarded(req))
                .await
                .map_err(|s| self.forward_failed(s));
        }
        self.linearize().await?;
        let id = req.into_inner().id;
        let (lease, revision) = self.sm.read(|s| (s.leases.get(&id).cloned(), s.revision));
        let lease = lease.ok_or_else(|| lease_not_found(id))?;
        let remaining = self
            .lessor
            .lock()
            .expect("lock")
            .remaining(id, tokio::time::Instant::now())
            .unwrap_or(Duration::from_millis(lease.ttl_ms));
        Ok(Response::new(pb::LeaseResponse {
            id,
            ttl_ms: lease.ttl_ms,
            remaining_ms: remaining.as_millis() as u64,
            keys: lease.keys.into_iter().collect(),
            revision,
        }))
    }
}

fn lease_response(r: store::Response) -> Result<Response<pb::LeaseResponse>, Status> {
    match r {
        store::Response::Lease {
            id,
            ttl_ms,
            revision,
        } => Ok(Response::new(pb::LeaseResponse {
            id,
            ttl_ms,
            remaining_ms: ttl_ms,
            keys: Vec::new(),
            revision,
        })),
        store::Response::LeaseNotFound { id } => Err(lease_not_found(id)),
        store::Response::LeaseExists { id } => Err(Status::already_exists(format!(
            "lease {id} already exists; grant it with another --id, or leave --id out and \
                 the cluster chooses one"
        ))),
        other => Err(Status::internal(format!("unexpected result {other}"))),
    }
}
