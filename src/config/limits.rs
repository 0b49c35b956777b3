//! `[limits]`: how many connections each port admits and how long a client may
//! take, so that a flood on one port degrades only that port (see
//! `api/listen.rs`). The defaults suit a cluster of a few nodes behind a few
//! HAProxy instances with room to spare; each node fits them to its descriptor
//! limit at start-up.

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections on the gRPC (Raft and admin) port.
    pub grpc_max_connections: usize,
    /// Open connections on the REST port.
    pub rest_max_connections: usize,
    /// Open connections from one client address, on each port.
    pub max_connections_per_address: usize,
    /// Descriptors kept free of both ports for Raft's outgoing connections, sled,
    /// PostgreSQL's pipes and connections, and the data dir.
    pub descriptor_reserve: usize,
    /// A new connection must send its first byte (HTTP request, HTTP/2 preface or
    /// TLS hello) within this.
    pub handshake_timeout_ms: u64,
    /// REST: a request's head must arrive within this; also how long an idle
    /// keep-alive connection stays open.
    pub header_timeout_ms: u64,
    /// REST: a request's body must arrive within this.
    pub body_timeout_ms: u64,
    /// gRPC: streams (watches among them) open at once on one connection.
    pub grpc_streams_per_connection: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            grpc_max_connections: 1024,
            rest_max_connections: 512,
            max_connections_per_address: 128,
            descriptor_reserve: 512,
            handshake_timeout_ms: 5_000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            grpc_streams_per_connection: 64,
        }
    }
}

impl Limits {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("grpc_max_connections", self.grpc_max_connections as u64),
            ("rest_max_connections", self.rest_max_connections as u64),
            (
                "max_connections_per_address",
                self.max_connections_per_address as u64,
            ),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("header_timeout_ms", self.header_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
            (
                "grpc_streams_per_connection",
                u64::from(self.grpc_streams_per_connection),
            ),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!(
                    "limits.{key} must be positive; remove it to use the default"
                ));
            }
        }
        Ok(())
    }
}
