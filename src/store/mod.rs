//! The replicated data model: keys, leases, watch history (`state`) and the
//! leader-side lease expiry tracker (`lessor`). Nothing here does IO; the Raft
//! storage adapter in `crate::raft` persists what `State::apply` reports.
//! The lease safety argument is in `DESIGN.md` beside this file.

pub mod lessor;
pub mod state;

pub use lessor::Lessor;
pub use state::{
    Command, Effects, Event, EventKind, KeyValue, Lease, LeaseGuard, LeaseUpdate, Response, State,
};
