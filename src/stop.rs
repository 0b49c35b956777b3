//! How PostgreSQL is stopped: the one vocabulary `decide` chooses in, the executor
//! passes on, and the guard's control protocol carries. Imports nothing.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopKind {
    /// Clean shutdown for demotion and planned stops: SIGINT to the postmaster
    /// (clients disconnected, WAL sent to connected standbys, checkpoint); SIGQUIT
    /// after 30 s.
    Fast,
    /// Fencing, at once: SIGQUIT to the postmaster (no checkpoint, crash recovery at
    /// the next start); SIGKILL of every process after 10 s.
    Immediate,
    /// SIGKILL to every process of the instance: a hung instance, which acts on no
    /// shutdown request, must have nothing left that could commit later.
    Kill,
}
