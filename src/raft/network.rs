//! Raft RPCs over tonic: the client side (`NetworkFactory`) and the server side
//! (`RaftGrpc`). Payloads are serde_json of openraft's message types.
//!
//! Every message carries the cluster name and the sender id; a message from another
//! cluster or from a node that is not a member is refused with PermissionDenied,
//! so a misconfigured node cannot vote in or append to this cluster.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::OptionalSend;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{NetworkError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::Raft;
use super::types::{Member, NodeId, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};
use crate::wire::pb;
use crate::wire::pb::raft_service_client::RaftServiceClient;

type RPCError = openraft::errors::RPCError<TypeConfig>;

const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// Caches one lazily connected channel per peer address: openraft asks for a new
/// client on every linearizable read, and reconnecting each time would cost a handshake.
#[derive(Clone)]
pub struct NetworkFactory {
    cluster: String,
    self_id: NodeId,
    min_rpc_timeout: Duration,
    peers: Arc<Mutex<HashMap<String, PeerChannel>>>,
}

/// One peer's connection and when it last answered.
struct PeerChannel {
    channel: Channel,
    last_ok: Instant,
}

impl NetworkFactory {
    /// `min_rpc_timeout`: the least time an RPC gets before it counts as timed out
    /// (see [`PeerClient::call`]); the election timeout is the natural choice.
    pub fn new(cluster: &str, self_id: NodeId, min_rpc_timeout: Duration) -> Self {
        Self {
            cluster: cluster.to_string(),
            self_id,
            min_rpc_timeout,
            peers: Arc::default(),
        }
    }

    fn channel(&self, addr: &str, name: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.peers.lock().expect("lock");
        if let Some(p) = map.get(addr) {
            return Ok(p.channel.clone());
        }
        let channel = new_channel(addr, name)?;
        map.insert(
            addr.to_string(),
            PeerChannel {
                channel: channel.clone(),
                last_ok: Instant::now(),
            },
        );
        Ok(channel)
    }
}

/// With TLS, the peer's certificate must name the member `name` (not only its host).
fn new_channel(addr: &str, name: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(crate::tls::endpoint(addr, Some(name))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .connect_lazy())
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            target,
            cluster: self.cluster.clone(),
            from: self.self_id,
            channel: self
                .channel(&node.addr, &node.name)
                .map_err(|e| e.to_string()),
            addr: node.addr.clone(),
            name: node.name.clone(),
            tls_warned: None,
            min_rpc_timeout: self.min_rpc_timeout,
            peers: self.peers.clone(),
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    cluster: String,
    from: NodeId,
    channel: Result<Channel, String>,
    addr: String,
    name: String,
    /// When a refused certificate was last logged (at most every 10 s per peer).
    tls_warned: Option<Instant>,
    min_rpc_timeout: Duration,
    peers: Arc<Mutex<HashMap<String, PeerChannel>>>,
}

fn net_err(e: impl ToString) -> NetworkError<TypeConfig> {
    NetworkError::from_string(e.to_string())
}

/// Refused connections mean the peer is down: openraft backs off on `Unreachable`.
fn status_to_rpc(target: NodeId, s: Status) -> RPCError {
    if s.code() == tonic::Code::Unavailable {
        RPCError::Unreachable(Unreachable::from_string(format!(
            "node {target}: {}",
            s.message()
        )))
    } else {
        RPCError::Network(net_err(format!("node {target}: {s}")))
    }
}

impl PeerClient {
    /// A peer whose certificate does not pass (another CA, expired, not naming the
    /// member at that address) is an impostor or a misconfiguration: say so, rarely.
    fn warn_if_certificate(&mut self, s: &Status) {
        let mut text = s.to_string();
        let mut src = std::error::Error::source(s);
        while let Some(e) = src {
            text.push_str(": ");
            text.push_str(&e.to_string());
            src = e.source();
        }
        let lower = text.to_lowercase();
        if !(lower.contains("certificate") || lower.contains("unknownca")) {
            return;
        }
        if self
            .tls_warned
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        self.tls_warned = Some(Instant::now());
        tracing::warn!(
            target_node = self.target,
            member = %self.name,
            addr = %self.addr,
            error = %text,
            "TLS: the peer at this member's address was refused (its certificate is not the \
             cluster CA's, or does not name this member); check which node runs there"
        );
    }

    /// A failed or timed-out RPC replaces the connection, but only once the peer has
    /// not answered for this long: a TCP connection that lived through a partition can
    /// stay stuck in retransmission backoff for minutes after the network heals, while
    /// on a slow link (RTT near the timeout) reconnecting on every timeout would make
    /// each RPC pay a new handshake and time out again, forever.
    fn reconnect_after(&self) -> Duration {
        (2 * self.min_rpc_timeout).max(Duration::from_secs(1))
    }

    fn answered(&self) {
        if let Some(p) = self.peers.lock().expect("lock").get_mut(&self.addr) {
            p.last_ok = Instant::now();
        }
    }

    fn failed(&mut self) {
        let mut map = self.peers.lock().expect("lock");
        let quiet_since = map.get(&self.addr).map(|p| p.last_ok);
        if let Some(t) = quiet_since
            && t.elapsed() < self.reconnect_after()
        {
            // Another client may already have replaced it: use the current one.
            self.channel = Ok(map[&self.addr].channel.clone());
            return;
        }
        match new_channel(&self.addr, &self.name) {
            Ok(channel) => {
                map.insert(
                    self.addr.clone(),
                    PeerChannel {
                        channel: channel.clone(),
                        // The new connection gets a full period before it is judged.
                        last_ok: Instant::now(),
                    },
                );
                self.channel = Ok(channel);
            }
            Err(e) => self.channel = Err(e.to_string()),
        }
    }

    fn client(&self) -> Result<RaftServiceClient<Channel>, RPCError> {
        match &self.channel {
            Ok(c) => Ok(RaftServiceClient::new(c.clone())
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024)),
            Err(e) => Err(RPCError::Unreachable(Unreachable::from_string(e))),
        }
    }

    fn message<T: Serialize>(&self, v: &T) -> Result<pb::RaftMessage, RPCError> {
        Ok(pb::RaftMessage {
            cluster: self.cluster.clone(),
            from: self.from,
            payload: serde_json::to_vec(v).map_err(|e| RPCError::Network(net_err(e)))?,
        })
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned, F, Fut>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        f: F,
    ) -> Result<Resp, RPCError>
    where
        F: FnOnce(RaftServiceClient<Channel>, Request<pb::RaftMessage>) -> Fut,
        Fut: Future<Output = Result<Response<pb::RaftMessage>, Status>>,
    {
        // openraft asks for the heartbeat interval as the limit (100 ms by default),
        // which a follower across a slow link or behind a slow fsync misses on every
        // append: replication would stall although every reply arrives. An append
        // answered within the election timeout still commits in time, so that is
        // the least an RPC gets. (openraft's heartbeat worker keeps its own limit.)
        let limit = option.hard_ttl().max(self.min_rpc_timeout);
        let mut request = Request::new(self.message(req)?);
        request.set_timeout(limit);
        let fut = f(self.client()?, request);
        let reply = match tokio::time::timeout(limit, fut).await {
            Ok(Ok(r)) => {
                self.answered();
                r
            }
            Ok(Err(s)) => {
                self.warn_if_certificate(&s);
                if crate::wire::connection_failed(&s) {
                    self.failed();
                } else {
                    // A refusal (wrong cluster, not a member) is still an answer.
                    self.answered();
                }
                return Err(status_to_rpc(self.target, s));
            }
            Err(_) => {
                self.failed();
                return Err(RPCError::Network(net_err(format!(
                    "node {}: timed out",
                    self.target
                ))));
            }
        };
        serde_json::from_slice(&reply.into_inner().payload)
            .map_err(|e| RPCError::Network(net_err(e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError> {
        self.call(&rpc, &option, |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError> {
        self.call(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError> {
        self.call(&rpc, &option, |mut c, r| async move { c.pre_vote(r).await })
            .await
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError> {
        self.call(&rpc, &option, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = serde_json::to_vec(&(vote, snapshot.meta.clone())).map_err(net_err)?;
        let data = snapshot.snapshot.into_inner();
        let mut chunks = vec![pb::SnapshotChunk {
            cluster: self.cluster.clone(),
            from: self.from,
            header,
            data: Vec::new(),
        }];
        for c in data.chunks(SNAPSHOT_CHUNK) {
            chunks.push(pb::SnapshotChunk {
                cluster: self.cluster.clone(),
                from: self.from,
                header: Vec::new(),
                data: c.to_vec(),
            });
        }
        let mut client = self
            .client()
            .map_err(|e| StreamingError::Network(net_err(e)))?;
        let send = client.install_snapshot(tokio_stream::iter(chunks));
        let reply = tokio::select! {
            r = send => r.map_err(|s| StreamingError::Network(net_err(s)))?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        serde_json::from_slice(&reply.into_inner().payload)
            .map_err(|e| StreamingError::Network(net_err(e)))
    }
}

/// The server side of the Raft RPCs.
pub struct RaftGrpc {
    pub raft: Raft,
    pub cluster: String,
    /// TLS is on: every message must come over a member's certificate naming the
    /// member the message claims as its sender.
    pub tls: bool,
}

impl RaftGrpc {
    fn admit(
        &self,
        cluster: &str,
        from: NodeId,
        peer: Option<&crate::tls::ConnInfo>,
    ) -> Result<(), Status> {
        if cluster != self.cluster {
            return Err(Status::permission_denied(format!(
                "this node belongs to cluster {:?}, not {cluster:?}: the sender (node {from}) is \
                 misconfigured; fix cluster_name (or initial_cluster, if it lists this node's \
                 address by mistake) in node {from}'s config file and restart it",
                self.cluster
            )));
        }
        let metrics = self.raft.metrics().borrow_watched().clone();
        let members = metrics.membership_config.membership();
        // An uninitialized node must accept its first leader's messages, and a node
        // being added learns its membership only from them.
        let known = members.get_node(&from).is_some() || members.nodes().next().is_none();
        if !known && metrics.state != openraft::ServerState::Learner {
            return Err(Status::permission_denied(format!(
                "node {from} is not a member of cluster {:?}; add it with `pgquorum ctl member add` first",
                self.cluster
            )));
        }
        if self.tls {
            let who = peer.and_then(|p| p.identity.as_ref());
            let Some(who) = who.filter(|w| w.role == crate::tls::Role::Node) else {
                tracing::warn!(from, remote = ?peer.map(|p| p.remote), "Raft message without a member certificate refused");
                return Err(Status::unauthenticated(
                    "Raft messages need a member certificate of the cluster CA (issue one with \
                     `pgquorum certs issue NAME --host HOST` and set [tls] in the sender's config)",
                ));
            };
            if let Some(m) = members.get_node(&from)
                && m.name != who.name
            {
                tracing::warn!(from, claimed = %m.name, certificate = %who.name, "Raft message from a member claiming another member's id refused");
                return Err(Status::permission_denied(format!(
                    "the message claims to come from node {from} ({}), but the certificate names                      {:?}; each member must use its own certificate",
                    m.name, who.name
                )));
            }
        }
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, req: &Request<pb::RaftMessage>) -> Result<T, Status> {
        let m = req.get_ref();
        self.admit(&m.cluster, m.from, req.extensions().get())?;
        serde_json::from_slice(&m.payload)
            .map_err(|e| Status::invalid_argument(format!("malformed raft message: {e}")))
    }

    fn reply<T: Serialize, E: std::fmt::Display>(
        &self,
        r: Result<T, E>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let v = r.map_err(|e| Status::unavailable(format!("raft is not running: {e}")))?;
        Ok(Response::new(pb::RaftMessage {
            cluster: self.cluster.clone(),
            from: 0,
            payload: serde_json::to_vec(&v).map_err(|e| Status::internal(e.to_string()))?,
        }))
    }
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for RaftGrpc {
    async fn append_entries(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.decode(&req)?;
        self.reply(self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> = self.decode(&req)?;
        self.reply(self.raft.vote(rpc).await)
    }

    async fn pre_vote(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> = self.decode(&req)?;
        self.reply(self.raft.pre_vote(rpc).await)
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = self.decode(&req)?;
        self.reply(self.raft.handle_transfer_leader(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let peer = req.extensions().get::<crate::tls::ConnInfo>().cloned();
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        self.admit(&first.cluster, first.from, peer.as_ref())?;
        let (vote, meta): (Vote, SnapshotMeta) = serde_json::from_slice(&first.header)
            .map_err(|e| Status::invalid_argument(format!("malformed snapshot header: {e}")))?;
        let mut data = first.data;
        while let Some(chunk) = stream.message().await? {
            data.extend_from_slice(&chunk.data);
        }
        let snapshot = Snapshot {
            meta,
            snapshot: std::io::Cursor::new(data),
        };
        self.reply(self.raft.install_full_snapshot(vote, snapshot).await)
    }
}
