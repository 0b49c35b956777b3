//! Wires one pgquorum node together and runs it until shutdown.
//!
//! Start-up order: validate config (done by the caller) -> bind the port -> open
//! the data dir -> start Raft -> serve gRPC -> form the cluster if this is its
//! first start. Any failure before Raft starts leaves the data dir untouched.
//! With `[postgresql]`, the REST API and the PostgreSQL supervisor run beside it.
//! Shutdown order: stop the supervisor (PostgreSQL down, leader lease released,
//! while Raft still commits) -> stop serving -> stop Raft -> make sled durable.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::transport::Server;

use crate::api::admin::AdminService;
use crate::config::NodeConfig;
use crate::ha::health::Health;
use crate::postgres::Postgres;
use crate::raft::log_store::LogStore;
use crate::raft::network::{NetworkFactory, RaftGrpc};
use crate::raft::sm_store::SmStore;
use crate::raft::storage::{DataDir, DataDirError};
use crate::raft::{Member, Raft, expiry};
use crate::store::Lessor;
use crate::supervisor::Supervisor;
use crate::wire::pb;

mod leadership;
mod ports;

/// How often a node looks for changed certificate files.
const TLS_CHECK_EVERY: Duration = Duration::from_secs(5);
pub mod systemd;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(
        "cannot listen on {addr}: {source}; is another process (or this node) already using it?"
    )]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(
        "cannot open Raft storage in {path}: {source}; the data dir may be damaged: keep it, restore a backup or re-add this member with an empty data_dir"
    )]
    Storage {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid Raft settings: {0}; fix the [raft] section of this node's config file")]
    RaftConfig(String),
    #[error(
        "Raft failed to start: {0}; the Raft storage in data_dir could not be loaded. Keep the \
         directory as it is, and restore it from a backup or re-add this member with an empty \
         data_dir (`pgquorum ctl member remove --id ID`, start it with join = true, then \
         `pgquorum ctl member add`)"
    )]
    RaftStart(String),
    #[error("gRPC server failed: {0}")]
    Serve(String),
    #[error("[postgresql]: {0}")]
    Postgres(#[from] crate::postgres::PgError),
    #[error("PostgreSQL supervisor: {0}")]
    Supervisor(#[from] crate::supervisor::SupervisorError),
    #[error(
        "initial_cluster member {id} at {addr} belongs to cluster {found:?}, not {expected:?}: \
         fix cluster_name or initial_cluster in this node's config (nothing was written)"
    )]
    ForeignPeer {
        id: u64,
        addr: String,
        found: String,
        expected: String,
    },
    #[error("cannot listen for the REST API on {addr}: {source}; is another process using it?")]
    RestBind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the node until `shutdown` resolves.
/// `tags` carries `[tags]` reloaded from the config file (SIGHUP) to the supervisor.
pub async fn run(
    cfg: NodeConfig,
    shutdown: impl Future<Output = ()>,
    tags: watch::Receiver<crate::ha::model::Tags>,
) -> Result<(), NodeError> {
    let (grpc_gate, rest_gate) = ports::gates(&cfg);
    // A password file others can read is a leaked password: refused, with the fix.
    if let Some(p) = &cfg.postgresql {
        for f in [&p.superuser, &p.replication]
            .into_iter()
            .filter_map(|c| c.password_file.as_ref())
        {
            crate::tls::check_private(f)?;
        }
    }
    // Before anything connects anywhere: every outgoing connection uses these.
    let server_tls = match &cfg.tls {
        Some(t) => {
            let paths = crate::tls::TlsPaths {
                ca: t.ca.clone(),
                cert: t.cert.clone(),
                key: t.key.clone(),
            };
            crate::tls::set_client(Some(&paths))?;
            let s = crate::tls::ServerTls::load(paths)?;
            tracing::info!(cert = %t.cert.display(), days_left = s.days_left(), rest_tls = t.rest, "TLS on: peers and callers need certificates of the cluster CA");
            Some(s)
        }
        None => {
            tracing::warn!(
                "insecure = true: Raft, the admin API and REST run in plaintext and nobody is \
                 authenticated; anyone who reaches the ports can change the cluster. Set up \
                  [tls] with `pgquorum certs` for anything but a test"
            );
            None
        }
    };
    let listener = TcpListener::bind(cfg.listen_addr)
        .await
        .map_err(|source| NodeError::Bind {
            addr: cfg.listen_addr,
            source,
        })?;
    // Everything that can fail on bad input is checked before the data dir is opened.
    let rest_listener = match cfg.rest_listen_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::RestBind { addr, source })?,
        ),
        None => None,
    };
    let pg = match &cfg.postgresql {
        Some(pgc) => Some(Postgres::new(
            pgc.clone(),
            cfg.name.clone(),
            cfg.cluster_name.clone(),
        )?),
        None => None,
    };
    let raft_cfg = crate::raft::raft_config(&cfg.cluster_name, &cfg.raft)
        .map_err(|e| NodeError::RaftConfig(e.to_string()))?;
    if DataDir::is_new(&cfg.data_dir) {
        refuse_foreign_peers(&cfg).await?;
    }
    let dir = DataDir::open(&cfg.data_dir, &cfg.cluster_name, cfg.node_id)?;
    let storage_err = |source| NodeError::Storage {
        path: cfg.data_dir.clone(),
        source,
    };
    let (lease_tx, lease_rx) = mpsc::unbounded_channel();
    let log = LogStore::open(&dir).map_err(storage_err)?;
    let sm = SmStore::open(&dir, lease_tx).map_err(storage_err)?;
    let lessor = Arc::new(Mutex::new(Lessor::default()));
    tokio::spawn(expiry::run_stamper(lessor.clone(), lease_rx));

    let net = NetworkFactory::new(
        &cfg.cluster_name,
        cfg.node_id,
        Duration::from_millis(cfg.raft.election_timeout_min_ms),
    );
    let raft = Raft::new(cfg.node_id, raft_cfg, net, log, sm.clone())
        .await
        .map_err(|e| NodeError::RaftStart(e.to_string()))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let timeout = cfg.request_timeout();
    let admin = AdminService::new(
        raft.clone(),
        sm.clone(),
        lessor.clone(),
        cfg.node_id,
        cfg.name.clone(),
        cfg.cluster_name.clone(),
        timeout,
    )
    .requiring_auth(server_tls.is_some(), admin_tokens(&cfg)?);
    let raft_svc = RaftGrpc {
        raft: raft.clone(),
        cluster: cfg.cluster_name.clone(),
        tls: server_tls.is_some(),
    };
    if let Some(t) = &server_tls {
        tokio::spawn(t.clone().watch(TLS_CHECK_EVERY, stop_rx.clone()));
    }
    let mut server_stop = stop_rx.clone();
    // Admitted through the port's gate (caps, handshake timeout; TCP_NODELAY, without
    // which Nagle stalled one Raft write in five by ~40 ms).
    let limits = &cfg.limits;
    let incoming = crate::api::listen::incoming(
        listener,
        grpc_gate,
        Duration::from_millis(limits.handshake_timeout_ms),
        server_tls.clone(),
    );
    let server = tokio::spawn(
        Server::builder()
            // Watches are streams: bounded per connection, and connections are capped.
            .max_concurrent_streams(Some(limits.grpc_streams_per_connection))
            // A peer that vanished without a FIN is noticed and its connection freed.
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(
                pb::raft_service_server::RaftServiceServer::new(raft_svc)
                    .max_decoding_message_size(64 * 1024 * 1024),
            )
            .add_service(pb::admin_server::AdminServer::new(admin))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = server_stop.wait_for(|s| *s).await;
            }),
    );
    tokio::spawn(expiry::run_expiry(
        raft.clone(),
        lessor,
        Duration::from_millis(cfg.raft.lease_check_interval_ms),
        timeout,
        stop_rx.clone(),
    ));
    // Every member, with PostgreSQL or without (a witness can lead Raft too). The hold
    // is a ttl: a primary stopping for shutdown hands Raft leadership away, then
    // releases its lease within about that long, and must not be handed it back.
    tokio::spawn(leadership::follow_primary(
        raft.clone(),
        sm.clone(),
        cfg.node_id,
        Duration::from_millis(cfg.raft.heartbeat_ms.max(100)),
        Duration::from_millis(cfg.ha.ttl_ms),
        stop_rx.clone(),
    ));
    tracing::info!(node = cfg.node_id, addr = %cfg.listen_addr, data_dir = %cfg.data_dir.display(), "pgquorum node started");

    let (health_tx, health_rx) = watch::channel(Health::default());
    let watchdog_health = cfg.postgresql.is_some().then(|| health_rx.clone());
    tokio::spawn(copy_raft_stats(
        raft.clone(),
        health_tx.clone(),
        server_tls.clone(),
        stop_rx.clone(),
    ));
    if let (Some(listener), Some(gate)) = (rest_listener, rest_gate) {
        let rest_tls = server_tls
            .clone()
            .filter(|_| cfg.tls.as_ref().is_some_and(|t| t.rest));
        let opts = crate::api::rest::ServeOptions {
            gate,
            timeouts: crate::api::rest::Timeouts {
                handshake: Duration::from_millis(cfg.limits.handshake_timeout_ms),
                header: Duration::from_millis(cfg.limits.header_timeout_ms),
                body: Duration::from_millis(cfg.limits.body_timeout_ms),
            },
            tls: rest_tls,
            auth: std::sync::Arc::new(write_auth(&cfg)?),
        };
        let mut rest_stop = stop_rx.clone();
        // The REST routes that read or write the store (/config, /history) go
        // through this node first, then the other members, as `ctl` would.
        let rest_client = crate::client::Client::new(cfg.store_endpoints())
            .ok()
            .map(|c| c.with_timeout(timeout));
        tokio::spawn(async move {
            let stop = async move {
                let _ = rest_stop.wait_for(|s| *s).await;
            };
            if let Err(e) =
                crate::api::rest::serve(listener, health_rx, rest_client, opts, stop).await
            {
                tracing::error!(error = %e, "REST API stopped");
            }
        });
    }
    // The supervisor stops first at shutdown (PostgreSQL down, lease released) while
    // Raft still runs, so the release commits and a replica takes over at once.
    let (sup_stop_tx, sup_stop_rx) = watch::channel(false);
    let supervisor = match pg {
        Some(pg) => {
            let sup = Supervisor::new(&cfg, pg, health_tx, tags)?;
            Some(tokio::spawn(sup.run(sup_stop_rx)))
        }
        None => None,
    };

    if !cfg.join {
        form_cluster(&raft, &cfg).await;
    }
    // Both ports accept (bound above) and are served; a quorum is not waited for, so
    // that `systemctl start` of the first host returns before the others are up.
    systemd::notify(&format!(
        "READY=1\nSTATUS=serving Raft on {}{}",
        cfg.listen_addr,
        cfg.rest_listen_addr
            .map(|a| format!(", REST on {a}"))
            .unwrap_or_default()
    ));
    if let Some(every) = systemd::watchdog_interval() {
        tokio::spawn(systemd::feed_watchdog(
            every,
            watchdog_health,
            stop_rx.clone(),
        ));
    }

    let mut server = server;
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down");
            systemd::notify("STOPPING=1\nSTATUS=stopping PostgreSQL and handing over");
        }
        r = &mut server => {
            let _ = sup_stop_tx.send(true);
            if let Some(s) = supervisor {
                let _ = s.await;
            }
            let _ = raft.shutdown().await;
            return Err(NodeError::Serve(match r {
                Ok(Ok(())) => "server stopped".into(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            }));
        }
    }
    // Raft leadership first: the lease release below, and the replica taking the
    // lease over right after it, then go to a leader that stays.
    hand_over_leadership(
        &raft,
        cfg.node_id,
        Duration::from_millis(cfg.raft.election_timeout_max_ms),
    )
    .await;
    let _ = sup_stop_tx.send(true);
    if let Some(s) = supervisor {
        let _ = s.await;
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    if let Err(e) = dir.sync().await {
        tracing::warn!(error = %e, "final flush of the data dir failed");
    }
    Ok(())
}

/// The bearer tokens `[tls]` names, read from their (private) files.
fn admin_tokens(cfg: &NodeConfig) -> Result<crate::api::auth::Tokens, NodeError> {
    let read = |f: Option<&std::path::PathBuf>| -> Result<Option<String>, NodeError> {
        let Some(f) = f else { return Ok(None) };
        let t = crate::tls::read_secret(f)?.trim().to_owned();
        Ok(Some(t).filter(|t| !t.is_empty()))
    };
    let t = cfg.tls.as_ref();
    Ok(crate::api::auth::Tokens {
        admin: read(t.and_then(|t| t.admin_token_file.as_ref()))?,
        read: read(t.and_then(|t| t.read_token_file.as_ref()))?,
    })
}

/// What the REST write routes require, from `[rest_auth]`: the secrets read from
/// their files (which must be private) or the environment. With TLS on and no
/// `[rest_auth]`, the write routes are refused; with neither, open (a test set-up).
fn write_auth(cfg: &NodeConfig) -> Result<crate::api::rest::WriteAuth, NodeError> {
    let Some(a) = &cfg.rest_auth else {
        return Ok(crate::api::rest::WriteAuth {
            required: cfg.tls.is_some(),
            ..Default::default()
        });
    };
    let secret = |file: &Option<std::path::PathBuf>, inline: &Option<String>, env: &str| match file
    {
        Some(f) => crate::tls::read_secret(f).map(Some),
        None => Ok(inline.clone().or_else(|| std::env::var(env).ok())),
    };
    let password = secret(&a.password_file, &a.password, "PGQUORUM_REST_PASSWORD")?;
    let token = secret(&a.token_file, &None, "PGQUORUM_REST_TOKEN")?;
    Ok(crate::api::rest::WriteAuth {
        required: true,
        basic: a.username.clone().zip(password),
        token: token.filter(|t| !t.is_empty()),
        allow: a.networks(),
    })
}

/// A planned stop of the Raft leader would leave the cluster without one for an
/// election timeout, during which no lease can be taken over: hand leadership to the
/// most up-to-date voter first and wait until it has taken over, at most `wait`
/// (TransferLeader makes it one round trip and a vote). The wait must stay well inside
/// the primary's lease budget: renewals fail while leadership moves, and a stop that
/// outlasts the lease is a fence (PostgreSQL killed) rather than a clean shutdown.
async fn hand_over_leadership(raft: &Raft, me: u64, wait: Duration) {
    let m = raft.metrics().borrow_watched().clone();
    if m.current_leader != Some(me) {
        return;
    }
    let matched = m.replication.clone().unwrap_or_default();
    let target = m
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != me)
        .max_by_key(|id| matched.get(id).cloned().flatten().map(|l| l.index));
    let Some(to) = target else { return };
    if raft.trigger().transfer_leader(to).await.is_err() {
        return;
    }
    let mut rx = raft.metrics();
    let moved = tokio::time::timeout(wait, async {
        loop {
            let leader = rx.borrow_watched().current_leader;
            if leader.is_some() && leader != Some(me) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    match moved {
        Ok(()) => tracing::info!(to, "handed Raft leadership over before stopping"),
        Err(_) => tracing::warn!(
            to,
            "Raft leadership transfer did not finish; stopping anyway"
        ),
    }
}

/// Copies openraft's metrics into the REST snapshot twice a second (`/metrics`),
/// until `stop`.
async fn copy_raft_stats(
    raft: Raft,
    health: watch::Sender<Health>,
    tls: Option<Arc<crate::tls::ServerTls>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let m = raft.metrics().borrow_watched().clone();
        let stats = crate::ha::health::RaftStats {
            node_id: m.id,
            term: m.current_term,
            leader: m.current_leader,
            commit_index: m.local_committed.map_or(0, |l| l.index),
            applied_index: m.last_applied.map_or(0, |l| l.index),
        };
        let days = tls.as_ref().and_then(|t| t.days_left());
        health.send_modify(|h| {
            h.raft = stats;
            h.cert_days_left = days;
        });
    }
}

/// Initializes the cluster on its first start. A node whose log is empty asks the
/// other initial members first: if any of them already belongs to a formed cluster,
/// this node waits to be replicated to instead of proposing a membership of its own.
async fn form_cluster(raft: &Raft, cfg: &NodeConfig) {
    match raft.is_initialized().await {
        Ok(true) | Err(_) => return,
        Ok(false) => {}
    }
    for m in cfg.initial_cluster.iter().filter(|m| m.id != cfg.node_id) {
        if peer_status(&m.addr)
            .await
            .is_some_and(|s| !s.members.is_empty())
        {
            tracing::info!(
                peer = m.id,
                "the cluster already exists; waiting for its leader to contact this node"
            );
            return;
        }
    }
    let members: BTreeMap<u64, Member> = cfg
        .initial_cluster
        .iter()
        .map(|m| {
            (
                m.id,
                Member {
                    name: m.name.clone(),
                    addr: m.addr.clone(),
                },
            )
        })
        .collect();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!("initialized a new cluster from initial_cluster"),
        Err(e) => tracing::info!(reason = %e, "cluster not initialized by this node"),
    }
}

/// A node about to create its data dir first asks the other initial members which
/// cluster they belong to: one configured for another cluster (a copied config, a
/// wrong address) would otherwise campaign against strangers forever, and its data
/// dir would then carry the wrong cluster name.
async fn refuse_foreign_peers(cfg: &NodeConfig) -> Result<(), NodeError> {
    for m in cfg.initial_cluster.iter().filter(|m| m.id != cfg.node_id) {
        if let Some(s) = peer_status(&m.addr).await
            && !s.cluster.is_empty()
            && s.cluster != cfg.cluster_name
        {
            return Err(NodeError::ForeignPeer {
                id: m.id,
                addr: m.addr.clone(),
                found: s.cluster,
                expected: cfg.cluster_name.clone(),
            });
        }
    }
    Ok(())
}

/// The peer's own status, if it answers within half a second.
async fn peer_status(addr: &str) -> Option<pb::StatusResponse> {
    let ep = crate::tls::endpoint(addr, None)
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_millis(500));
    // The whole exchange is bounded: connect_timeout covers only TCP, and a peer
    // that has bound its port but does not serve yet never answers a TLS hello.
    tokio::time::timeout(Duration::from_millis(800), async move {
        let ch = ep.connect().await.ok()?;
        let mut c = pb::admin_client::AdminClient::new(ch);
        c.status(pb::StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    })
    .await
    .ok()
    .flatten()
}
