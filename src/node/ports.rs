//! The descriptor limit and the connection caps of this node's two ports.

use crate::api::listen::{self, Caps, Gate};
use crate::config::NodeConfig;

/// Below this many descriptors a node logs that its limit is low: the default
/// caps and reserve need about 2,000, and the unit file sets 65,536.
const LOW_NOFILE: u64 = 4_096;

/// Raises the soft descriptor limit to the hard one and fits both ports' caps
/// inside it, keeping `[limits].descriptor_reserve` for everything else.
pub fn gates(cfg: &NodeConfig) -> (Gate, Option<Gate>) {
    let l = &cfg.limits;
    let limit = match listen::raise_nofile() {
        Ok((before, after)) => {
            if after > before {
                tracing::info!(
                    before,
                    after,
                    "raised the soft descriptor limit to the hard one"
                );
            }
            after
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise the descriptor limit (RLIMIT_NOFILE)");
            LOW_NOFILE
        }
    };
    if limit < LOW_NOFILE {
        tracing::warn!(
            limit,
            "the descriptor limit is low: connection caps are lowered to fit it; raise it \
             (LimitNOFILE= in the unit file, or ulimit -n) to at least {LOW_NOFILE}"
        );
    }
    let per_ip = l.max_connections_per_address;
    let grpc = Caps {
        total: l.grpc_max_connections,
        per_ip: per_ip.min(l.grpc_max_connections),
    };
    let rest = cfg.rest_listen_addr.map(|_| Caps {
        total: l.rest_max_connections,
        per_ip: per_ip.min(l.rest_max_connections),
    });
    let fitted = listen::fit_caps(limit, l.descriptor_reserve, grpc, rest);
    if fitted.lowered {
        tracing::warn!(
            limit,
            reserve = l.descriptor_reserve,
            grpc_cap = fitted.grpc.total,
            rest_cap = fitted.rest.map(|c| c.total),
            "the configured connection caps do not fit the descriptor limit and were lowered"
        );
    }
    tracing::info!(
        limit,
        grpc_cap = fitted.grpc.total,
        rest_cap = fitted.rest.map(|c| c.total),
        per_address = fitted.grpc.per_ip,
        "connection caps"
    );
    (
        Gate::new("gRPC", fitted.grpc),
        fitted.rest.map(|c| Gate::new("REST", c)),
    )
}
