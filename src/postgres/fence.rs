//! The fence as pgquorum holds it: the deadline, the control pipe to the running
//! guard, and pgquorum's own fencer.
//!
//! Two independent fencers stop a primary at its lease deadline, and either alone
//! suffices (`src/ha/DESIGN.md`, "Two fencers"):
//! - the guard (`guard.rs`), a separate process in a session of its own, so nothing
//!   that stops or signals pgquorum's process group reaches it;
//! - this module's fencer thread inside pgquorum, a plain OS thread (not a tokio task,
//!   so a starved or wedged runtime cannot delay it), which SIGKILLs the postmaster's
//!   process group once the deadline has passed, whatever the guard is doing (stopped,
//!   starved, killed on its own).
//!
//! Both sides heartbeat over the control pipe (`ping` from here every
//! [`PING_EVERY`], `alive` from the guard), so each notices when the other has gone
//! quiet and says so in the log.

use std::fs;
use std::io::{self, Write as _};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::PgError;
use super::guard::{Control, deadline_to_mono_ns};
use super::os;

/// How often pgquorum pings the guard (and wakes to check the deadline).
const PING_EVERY: Duration = Duration::from_millis(200);
/// A guard that has reported nothing for this long is logged as unresponsive, and
/// [`super::Postgres::stop`] stops waiting for it to act.
pub(super) const GUARD_SILENT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct FenceState {
    deadline: Option<Instant>,
    /// Write end of the running guard's stdin. Closing it (or pgquorum dying) is EOF
    /// for the guard, which then kills PostgreSQL.
    pipe: Option<fs::File>,
    /// The running postmaster: pid (= process group id) and its start time, so that
    /// a pid the kernel has reused for a stranger is never signalled.
    postmaster: Option<(i32, u64)>,
    /// The guard's pid: pgquorum's own unreaped child, so never a stranger's. Every
    /// PostgreSQL process is below it (it is a child subreaper), orphans included.
    guard: Option<i32>,
    /// When the guard last reported anything (its heartbeat included).
    guard_seen: Option<Instant>,
    guard_silence_logged: bool,
    /// This process's fencer killed the current postmaster.
    fenced_here: bool,
    fencer_started: bool,
}

/// The fence deadline and the way to the running guard. Cloned by the leader-lease
/// renewal task, which moves the deadline after every committed renewal without
/// waiting for the HA loop (busy, maybe, with a slow action).
#[derive(Clone, Default)]
pub struct FenceHandle(Arc<(Mutex<FenceState>, Condvar)>);

impl FenceHandle {
    fn lock(&self) -> MutexGuard<'_, FenceState> {
        // Every critical section leaves the state consistent.
        self.0.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forwards the fence deadline to the guard (and remembers it for the next start
    /// and for pgquorum's own fencer). `None` = no deadline (replicas). A deadline in
    /// the past kills PostgreSQL at once.
    pub fn set(&self, deadline: Option<Instant>) -> Result<(), PgError> {
        Self::store(&mut self.lock(), deadline)?;
        self.0.1.notify_all();
        Ok(())
    }

    /// Moves an armed deadline (a primary's) to `deadline`; leaves "no deadline"
    /// alone, so a renewal that lands after the supervisor disarmed the fence (when
    /// it starts a replica) cannot arm it again.
    pub fn move_if_armed(&self, deadline: Instant) -> Result<(), PgError> {
        let mut f = self.lock();
        if f.deadline.is_none() {
            return Ok(());
        }
        Self::store(&mut f, Some(deadline))
    }

    fn store(f: &mut FenceState, deadline: Option<Instant>) -> Result<(), PgError> {
        f.deadline = deadline;
        if let Some(p) = &mut f.pipe {
            send(p, control_for(deadline)).map_err(|e| {
                PgError::Guard(format!(
                    "cannot pass the fence deadline to the guard ({e}); PostgreSQL is stopped or stopping"
                ))
            })?;
        }
        Ok(())
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.lock().deadline
    }

    pub(super) fn send(&self, c: Control) -> io::Result<()> {
        match &mut self.lock().pipe {
            Some(p) => send(p, c),
            None => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
        }
    }

    /// A new guard runs the postmaster `pgid`: from now on deadlines go to it, and
    /// pgquorum's own fencer watches it. The current deadline goes at once, in case it
    /// moved while the guard was starting with the one before.
    pub(super) fn attach(
        &self,
        mut pipe: fs::File,
        pgid: i32,
        guard: Option<i32>,
    ) -> io::Result<()> {
        let start_fencer = {
            let mut f = self.lock();
            let r = send(&mut pipe, control_for(f.deadline));
            f.pipe = Some(pipe);
            f.postmaster = os::process_start_time(pgid).map(|t| (pgid, t));
            f.guard = guard;
            if f.postmaster.is_none() {
                // Already gone; the guard reports how, and the probe reaps it.
                tracing::warn!(pgid, "the new postmaster exited before it was watched");
            }
            f.guard_seen = Some(Instant::now());
            f.guard_silence_logged = false;
            f.fenced_here = false;
            r?;
            !std::mem::replace(&mut f.fencer_started, true)
        };
        self.0.1.notify_all();
        if start_fencer {
            let weak = Arc::downgrade(&self.0);
            std::thread::Builder::new()
                .name("pgquorum-fencer".into())
                .spawn(move || fencer(weak))?;
        }
        Ok(())
    }

    /// The guard has exited: nothing left to watch.
    pub(super) fn detach(&self) {
        let mut f = self.lock();
        f.pipe = None;
        f.postmaster = None;
        f.guard = None;
        f.guard_seen = None;
    }

    /// The guard reported something (its heartbeat included).
    pub(super) fn guard_heard(&self) {
        let mut f = self.lock();
        f.guard_seen = Some(Instant::now());
        if std::mem::take(&mut f.guard_silence_logged) {
            tracing::info!("pg-guard answers again");
        }
    }

    /// How long the running guard has been silent (zero when none runs).
    pub(super) fn guard_silent_for(&self) -> Duration {
        self.lock()
            .guard_seen
            .map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Whether pgquorum's own fencer killed the postmaster that just ended (once).
    pub(super) fn take_fenced_here(&self) -> bool {
        std::mem::take(&mut self.lock().fenced_here)
    }
}

/// pgquorum's own fencer: SIGKILLs the postmaster's process group once the deadline
/// has passed, pings the guard, and notices a silent one. Ends when every handle is
/// gone.
fn fencer(weak: Weak<(Mutex<FenceState>, Condvar)>) {
    let mut last_ping: Option<Instant> = None;
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let (m, cv) = &*inner;
        let mut f = m.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let (Some(d), Some((pgid, started))) = (f.deadline, f.postmaster)
            && now >= d
            && !f.fenced_here
        {
            // The postmaster's pid can only name a stranger if it exited and the pid
            // was reused; then its start time differs. A group whose leader is gone
            // (backends left behind) keeps its id reserved, so it is still ours.
            let now_started = os::process_start_time(pgid);
            if now_started.is_none_or(|t| t == started) {
                // PostgreSQL's children are not in the postmaster's group (each calls
                // setsid): kill its whole tree, and whatever is below the guard.
                if now_started.is_some() {
                    os::kill_tree(pgid, true);
                } else {
                    os::kill_group(pgid, libc::SIGKILL);
                }
                if let Some(g) = f.guard {
                    os::kill_tree(g, false);
                }
                tracing::error!(
                    pgid,
                    late_ms = now.duration_since(d).as_millis() as u64,
                    "lease deadline passed and PostgreSQL still ran: pgquorum killed its \
                     process group itself (is pg-guard stopped or starved?)"
                );
            }
            f.fenced_here = true;
        }
        if last_ping.is_none_or(|t| now.duration_since(t) >= PING_EVERY) {
            if let Some(p) = &mut f.pipe {
                let _ = send(p, Control::Ping);
            }
            last_ping = Some(now);
        }
        if let Some(seen) = f.guard_seen
            && now.duration_since(seen) >= GUARD_SILENT
            && !f.guard_silence_logged
        {
            f.guard_silence_logged = true;
            tracing::error!(
                silent_ms = now.duration_since(seen).as_millis() as u64,
                "pg-guard has not reported for a while (stopped?); pgquorum fences PostgreSQL \
                 itself if the lease deadline passes"
            );
        }
        let mut wait = PING_EVERY;
        if let Some(d) = f.deadline
            && f.postmaster.is_some()
            && !f.fenced_here
        {
            wait = wait.min(d.saturating_duration_since(now));
        }
        // Woken early by every deadline change; spurious wakeups just loop.
        let _ = cv
            .wait_timeout(f, wait.max(Duration::from_millis(1)))
            .unwrap_or_else(PoisonError::into_inner);
    }
}

fn send(pipe: &mut fs::File, c: Control) -> io::Result<()> {
    // One write of a few bytes on a non-blocking pipe: atomic, never blocks.
    pipe.write_all(c.to_line().as_bytes())
}

pub(super) fn control_for(deadline: Option<Instant>) -> Control {
    match deadline {
        Some(d) => {
            // Monotonic clock first, then Instant: the conversion errs early.
            let mono = os::mono_now_ns();
            let now = Instant::now();
            Control::Deadline(deadline_to_mono_ns(d, now, mono))
        }
        None => Control::NoDeadline,
    }
}

#[cfg(test)]
mod tests {
    use super::super::guard::parse_control;
    use super::*;

    fn read_all(mut r: fs::File) -> String {
        use std::io::Read as _;
        let mut s = String::new();
        r.read_to_string(&mut s).expect("read pipe");
        s
    }

    #[test]
    fn a_renewal_never_arms_a_disarmed_fence() {
        let f = FenceHandle::default();
        let later = Instant::now() + Duration::from_secs(5);
        f.move_if_armed(later).unwrap();
        assert_eq!(f.deadline(), None, "a renewal armed a replica's fence");
        let soon = Instant::now() + Duration::from_secs(1);
        f.set(Some(soon)).unwrap();
        f.move_if_armed(later).unwrap();
        assert_eq!(f.deadline(), Some(later));
        f.set(None).unwrap();
        f.move_if_armed(later).unwrap();
        assert_eq!(f.deadline(), None);
    }

    #[test]
    fn deadlines_reach_the_attached_guard_in_order() {
        let (r, w) = os::control_pipe().expect("pipe");
        let f = FenceHandle::default();
        let d = Instant::now() + Duration::from_secs(5);
        f.set(Some(d)).unwrap();
        // Attaching sends the current deadline at once (a child stands in for the
        // postmaster).
        use std::os::unix::process::CommandExt as _;
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        f.attach(w, child.id() as i32, None).unwrap();
        f.move_if_armed(d + Duration::from_secs(1)).unwrap();
        f.set(None).unwrap();
        f.detach();
        assert!(f.set(Some(d)).is_ok(), "no guard: remembered only");
        let text = read_all(fs::File::from(r));
        let lines: Vec<&str> = text.lines().filter(|l| *l != "ping").collect();
        assert_eq!(lines.len(), 3, "{text:?}");
        assert!(matches!(parse_control(lines[0]), Ok(Control::Deadline(_))));
        assert!(matches!(parse_control(lines[1]), Ok(Control::Deadline(_))));
        assert_eq!(parse_control(lines[2]), Ok(Control::NoDeadline));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// pgquorum's own fencer kills the postmaster's group when the deadline passes,
    /// with no guard acting at all (here: nobody reads the control pipe).
    #[test]
    fn the_fencer_kills_the_group_by_itself_when_the_deadline_passes() {
        use std::os::unix::process::CommandExt as _;
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pgid = child.id() as i32;
        let (_r, w) = os::control_pipe().expect("pipe");
        let f = FenceHandle::default();
        f.set(Some(Instant::now() + Duration::from_millis(300)))
            .unwrap();
        f.attach(w, pgid, None).unwrap();
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the fencer did not kill the group"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(f.take_fenced_here());
    }

    /// Without a deadline nothing is killed, however long the guard is silent.
    #[test]
    fn the_fencer_leaves_a_replica_alone() {
        use std::os::unix::process::CommandExt as _;
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let (_r, w) = os::control_pipe().expect("pipe");
        let f = FenceHandle::default();
        f.attach(w, child.id() as i32, None).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(child.try_wait().expect("wait").is_none());
        assert!(!f.take_fenced_here());
        let _ = child.kill();
        let _ = child.wait();
    }
}
