//! `pgquorum pg-guard`: the small process that owns the postmaster and enforces the
//! fence. PostgreSQL must never outlive its lease or its supervisor; the guard makes
//! that independent of the supervisor's async runtime being healthy.
//!
//! ```text
//! pgquorum pg-guard <deadline-ns|none> <log-file> <uid|-> <gid|-> <program> [args...]
//! ```
//! `deadline-ns` is an absolute CLOCK_MONOTONIC time; when it is reached every PostgreSQL
//! process (everything below the guard) is SIGKILLed. The postmaster runs as `uid`/`gid` (`-` = the
//! guard's own) in its own process group, with stdout/stderr appended to `log-file`
//! and `PR_SET_PDEATHSIG(SIGKILL)`, so it dies if the guard dies.
//!
//! The guard runs in a session and process group of its own (`setsid`), so nothing
//! aimed at pgquorum's process group (Ctrl-Z, `kill -STOP -<pgid>`, a service
//! manager's signals) reaches it: it keeps enforcing the deadline while pgquorum is
//! frozen. It also ignores the terminal stop signals.
//!
//! Control lines on stdin (see [`Control`]): `deadline <ns>`, `nodeadline`,
//! `stop fast|immediate|kill`, and `ping`, pgquorum's heartbeat. Stdin EOF (pgquorum died or dropped its handle) kills
//! every PostgreSQL process at once. Any line the guard does not understand is treated the
//! same way: a supervisor that cannot talk to the guard cannot keep the fence.
//!
//! Reports on stdout (see [`Report`]): `postmaster <pid>` once the postmaster runs,
//! `alive` every [`HEARTBEAT_NS`], then one `exit ...` line just before the guard
//! exits. Stdout is non-blocking: a reader that stops reading can cost heartbeats,
//! never block the guard. Exit code: the postmaster's
//! (128 + signal when killed), or [`EXIT_FENCED`], [`EXIT_ORPHANED`], [`EXIT_ERROR`].
//!
//! Single-threaded plain std + libc, no tokio: nothing here can be starved by other
//! work, and fork/exec from a single-threaded process has no lock hazards.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

pub use super::guard_wire::*;
use super::os::{self, kill_tree, mono_now_ns, unix_seconds};

/// Bad arguments, or the postmaster could not be started.
pub const EXIT_ERROR: u8 = 70;
/// The deadline passed; PostgreSQL was killed.
pub const EXIT_FENCED: u8 = 71;
/// The control pipe closed (pgquorum died or let go); PostgreSQL was killed.
pub const EXIT_ORPHANED: u8 = 72;

/// `stop fast` escalates to SIGQUIT after this long.
const FAST_TO_QUIT_NS: u64 = 30_000_000_000;
/// SIGQUIT (immediate shutdown) escalates to SIGKILL of the group after this long.
const QUIT_TO_KILL_NS: u64 = 10_000_000_000;
/// How long to wait for killed group members to be reaped before exiting anyway.
const REAP_ORPHANS: Duration = Duration::from_secs(5);
/// Longest accepted control line.
const MAX_LINE: usize = 128;
/// The guard's heartbeat on stdout.
pub const HEARTBEAT_NS: u64 = 200_000_000;
/// pgquorum's pings stopping for this long is logged (the deadline still applies).
const PGQUORUM_SILENT_NS: u64 = 2_000_000_000;

/// Why the control pipe cannot be read any more.
#[derive(Debug, thiserror::Error)]
enum ControlError {
    #[error("read: {0}")]
    Read(io::Error),
    #[error(transparent)]
    Line(#[from] WireError),
}

/// Entry point of `pgquorum pg-guard`; must run before any other thread exists.
pub fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().skip(2).collect();
    let args = match GuardArgs::parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(io::stderr(), "pgquorum pg-guard: {e}");
            report(&Report::Error(e.to_string()));
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let (rep, code) = run(args);
    report(&rep);
    ExitCode::from(code)
}

fn report(r: &Report) {
    // One write(2) of a short line (atomic on a pipe), bypassing std's buffer, on a
    // non-blocking stdout. Errors are ignored: if pgquorum is gone or not reading,
    // nobody needs this, and a failed write must never stall or abort the guard.
    let line = r.to_line();
    // SAFETY: writing a valid buffer of the given length to fd 1.
    let _ = unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
}

fn run(args: GuardArgs) -> (Report, u8) {
    // Root opens the file and hands the fd to PostgreSQL: no symlinks, no strangers' files.
    let log = match super::os::open_append_safe(&args.log, 0o640, args.uid) {
        Ok(f) => f,
        Err(e) => {
            let m = format!("cannot open log file {}: {e}", args.log.display());
            let _ = writeln!(io::stderr(), "pgquorum pg-guard: {m}");
            return (Report::Error(m), EXIT_ERROR);
        }
    };
    let mut g = Guard {
        log,
        pid: 0,
        pidfd: None,
        sigfd: None,
        deadline: args.deadline,
        stage: None,
        escalate: None,
        buf: Vec::new(),
        next_beat: 0,
        heard: mono_now_ns(),
        silence_logged: false,
    };
    if let Err(e) = g.setup() {
        let m = format!("cannot set up: {e}");
        g.say(&m);
        return (Report::Error(m), EXIT_ERROR);
    }
    if g.deadline.is_some_and(|d| mono_now_ns() >= d) {
        g.say("fence deadline already passed; not starting PostgreSQL");
        return (Report::Fenced, EXIT_FENCED);
    }
    if let Err(e) = g.spawn(&args) {
        let m = format!(
            "cannot start {}: {e}",
            std::path::Path::new(&args.program).display()
        );
        g.say(&m);
        return (Report::Error(m), EXIT_ERROR);
    }
    report(&Report::Postmaster(g.pid));
    g.supervise()
}

#[derive(Clone, Copy, Debug)]
enum Escalation {
    Quit,
    KillGroup,
}

struct Guard {
    log: File,
    /// Postmaster pid = its process group id.
    pid: i32,
    /// Readable when the postmaster exits (Linux >= 5.3); without it we poll waitid.
    pidfd: Option<OwnedFd>,
    /// Delivers SIGUSR2, our parent-death signal.
    sigfd: Option<OwnedFd>,
    deadline: Option<u64>,
    stage: Option<StopKind>,
    escalate: Option<(u64, Escalation)>,
    buf: Vec<u8>,
    /// When the next `alive` is due.
    next_beat: u64,
    /// When pgquorum last sent a control line.
    heard: u64,
    silence_logged: bool,
}

impl Guard {
    /// One line to stderr (pgquorum's log) and to the PostgreSQL log file.
    fn say(&mut self, msg: &str) {
        let line = format!(
            "pgquorum pg-guard[{}] {}: {msg}\n",
            std::process::id(),
            unix_seconds()
        );
        let _ = io::stderr().write_all(line.as_bytes());
        let _ = self.log.write_all(line.as_bytes());
    }

    fn setup(&mut self) -> io::Result<()> {
        // SAFETY: plain libc calls on our own process; no other thread exists yet.
        unsafe {
            // Only pgquorum controls us: a terminal's Ctrl-C or a service manager's
            // SIGTERM to the whole group must not kill the guard (that would crash
            // PostgreSQL) while pgquorum is shutting it down in order.
            for s in [
                libc::SIGINT,
                libc::SIGTERM,
                libc::SIGHUP,
                libc::SIGQUIT,
                libc::SIGTSTP,
                libc::SIGTTIN,
                libc::SIGTTOU,
            ] {
                libc::signal(s, libc::SIG_IGN);
            }
            // Out of pgquorum's session and process group: a stop or signal sent to
            // that group (Ctrl-Z in a terminal, `kill -STOP -<pgid>`) must not freeze
            // the fence together with the supervisor. Fails only for a group leader,
            // which pgquorum never starts; then refuse to run PostgreSQL at all.
            if libc::setsid() < 0 {
                return Err(io::Error::other(format!(
                    "cannot leave pgquorum's session (setsid: {})",
                    io::Error::last_os_error()
                )));
            }
            // Parent death is reported as SIGUSR2 through a signalfd, not as SIGKILL:
            // the guard must survive long enough to kill the postmaster's whole group
            // (a SIGKILLed guard would only take the postmaster with it via its own
            // PDEATHSIG, leaving backends running). EOF on stdin is the primary signal
            // of the same event; this is a second path that needs no pipe.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let sfd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if sfd < 0 {
                return Err(io::Error::last_os_error());
            }
            self.sigfd = Some(OwnedFd::from_raw_fd(sfd));
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGUSR2 as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // Backends orphaned by a dying postmaster are re-parented to us, so we can
            // reap them and exit only when the whole PostgreSQL instance is gone.
            if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            for fd in [0, 1] {
                let fl = libc::fcntl(fd, libc::F_GETFL);
                if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    fn spawn(&mut self, args: &GuardArgs) -> io::Result<()> {
        let mut cmd = std::process::Command::new(&args.program);
        cmd.args(&args.args)
            .stdin(Stdio::null())
            .stdout(self.log.try_clone()?)
            .stderr(self.log.try_clone()?)
            .process_group(0);
        if let Some(uid) = args.uid {
            cmd.uid(uid);
        }
        if let Some(gid) = args.gid {
            cmd.gid(gid);
        }
        // SAFETY: getpid is async-signal-safe; read before fork.
        let guard_pid = unsafe { libc::getpid() };
        // SAFETY: only async-signal-safe calls between fork and exec. std has already
        // set the uid/gid when this runs; the death signal is set after that because a
        // credential change clears it.
        unsafe {
            cmd.pre_exec(move || {
                // The guard keeps pgquorum's priority; PostgreSQL does not.
                os::at_normal_priority();
                // Ignored signals stay ignored across exec; give PostgreSQL defaults.
                for s in [
                    libc::SIGINT,
                    libc::SIGTERM,
                    libc::SIGHUP,
                    libc::SIGQUIT,
                    libc::SIGUSR2,
                    libc::SIGTSTP,
                    libc::SIGTTIN,
                    libc::SIGTTOU,
                ] {
                    libc::signal(s, libc::SIG_DFL);
                }
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != guard_pid {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // Dropping a std Child neither kills nor waits; we reap by pid below.
        self.pid = i32::try_from(child.id()).map_err(|_| io::Error::other("pid out of range"))?;
        // SAFETY: pidfd_open has no memory arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd >= 0 {
            // SAFETY: a fresh fd we own (pidfd_open sets close-on-exec).
            self.pidfd = Some(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        Ok(())
    }

    fn supervise(&mut self) -> (Report, u8) {
        loop {
            if self.deadline_passed() {
                return self.fence();
            }
            if self.postmaster_exited() {
                return self.postmaster_gone();
            }
            self.escalate_if_due();
            self.heartbeat();
            let (stdin_ready, sig_ready) = self.wait();
            // The deadline is checked before any new control line is applied: a
            // renewal that arrives after the old deadline cannot undo the fence.
            if self.deadline_passed() {
                return self.fence();
            }
            if sig_ready {
                return self.orphaned("pgquorum died (parent-death signal)");
            }
            if stdin_ready {
                match self.read_control() {
                    Ok(true) => {}
                    Ok(false) => return self.orphaned("control pipe closed"),
                    Err(e) => return self.orphaned(&format!("bad control input: {e}")),
                }
            }
        }
    }

    /// Sends `alive` when due, and notes (once) when pgquorum has gone quiet.
    fn heartbeat(&mut self) {
        let now = mono_now_ns();
        if now >= self.next_beat {
            report(&Report::Alive);
            self.next_beat = now + HEARTBEAT_NS;
        }
        if !self.silence_logged && now.saturating_sub(self.heard) >= PGQUORUM_SILENT_NS {
            self.silence_logged = true;
            let what = match self.deadline {
                Some(_) => "the fence deadline still applies",
                None => "no deadline is set (not a primary)",
            };
            self.say(&format!(
                "pgquorum has sent nothing for {} s (stopped or starved?); {what}",
                now.saturating_sub(self.heard) / 1_000_000_000
            ));
        }
    }

    fn deadline_passed(&self) -> bool {
        self.deadline.is_some_and(|d| mono_now_ns() >= d)
    }

    /// Whether the postmaster has exited, without reaping it: while it is a zombie its
    /// pid (our process group id) cannot be reused, so killing the group stays safe.
    fn postmaster_exited(&self) -> bool {
        // SAFETY: siginfo_t is plain data; waitid fills it.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            rc == 0 && info.si_pid() != 0
        }
    }

    /// Sleeps until stdin or the signalfd is readable, the postmaster exits, or the
    /// next timer (deadline, escalation) is due. Returns (stdin ready, signal ready).
    fn wait(&mut self) -> (bool, bool) {
        let now = mono_now_ns();
        // Without a pidfd we poll waitid; with one, a periodic wakeup is still a cheap
        // guard against any missed edge.
        let mut timeout_ns: u64 = if self.pidfd.is_some() {
            1_000_000_000
        } else {
            50_000_000
        };
        if let Some(d) = self.deadline {
            timeout_ns = timeout_ns.min(d.saturating_sub(now));
        }
        if let Some((at, _)) = self.escalate {
            timeout_ns = timeout_ns.min(at.saturating_sub(now));
        }
        timeout_ns = timeout_ns.min(self.next_beat.saturating_sub(now));
        let mut fds = vec![libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        }];
        let sig_idx = self.sigfd.as_ref().map(|f| {
            fds.push(libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            fds.len() - 1
        });
        if let Some(f) = &self.pidfd {
            fds.push(libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let ts = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: fds and ts are valid for the call.
        let rc = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if rc <= 0 {
            return (false, false); // timeout or EINTR: the loop re-checks everything
        }
        let stdin_ready = fds[0].revents != 0;
        let sig_ready = sig_idx.is_some_and(|i| fds[i].revents & libc::POLLIN != 0);
        (stdin_ready, sig_ready)
    }

    /// Reads and applies control lines. `Ok(false)` on EOF.
    fn read_control(&mut self) -> Result<bool, ControlError> {
        let mut chunk = [0u8; 512];
        // SAFETY: reading into a local buffer of the given length.
        let n = unsafe { libc::read(0, chunk.as_mut_ptr().cast(), chunk.len()) };
        if n == 0 {
            return Ok(false);
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(true),
                _ => Err(ControlError::Read(e)),
            };
        }
        self.heard = mono_now_ns();
        self.silence_logged = false;
        self.buf.extend_from_slice(&chunk[..n as usize]);
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line =
                std::str::from_utf8(&line[..line.len() - 1]).map_err(|_| WireError::NotUtf8)?;
            self.apply(parse_control(line)?);
        }
        if self.buf.len() > MAX_LINE {
            return Err(WireError::TooLong(MAX_LINE).into());
        }
        Ok(true)
    }

    fn apply(&mut self, c: Control) {
        match c {
            Control::Deadline(d) => self.deadline = Some(d),
            Control::NoDeadline => self.deadline = None,
            Control::Stop(kind) => self.stop(kind),
            Control::Ping => {}
        }
    }

    fn stop(&mut self, kind: StopKind) {
        // A stop request can only make the shutdown more forceful, never less.
        if self.stage.is_some_and(|s| s >= kind) {
            return;
        }
        self.stage = Some(kind);
        let now = mono_now_ns();
        match kind {
            StopKind::Fast => {
                self.signal_postmaster(libc::SIGINT);
                self.escalate = Some((now + FAST_TO_QUIT_NS, Escalation::Quit));
            }
            StopKind::Immediate => {
                self.signal_postmaster(libc::SIGQUIT);
                self.escalate = Some((now + QUIT_TO_KILL_NS, Escalation::KillGroup));
            }
            StopKind::Kill => {
                kill_instance();
                self.escalate = None;
            }
        }
    }

    fn escalate_if_due(&mut self) {
        let Some((at, what)) = self.escalate else {
            return;
        };
        let now = mono_now_ns();
        if now < at {
            return;
        }
        match what {
            Escalation::Quit => {
                self.say(
                    "fast shutdown did not finish in 30 s; sending SIGQUIT (immediate shutdown)",
                );
                self.signal_postmaster(libc::SIGQUIT);
                self.escalate = Some((now + QUIT_TO_KILL_NS, Escalation::KillGroup));
            }
            Escalation::KillGroup => {
                self.say(
                    "immediate shutdown did not finish in 10 s; killing every PostgreSQL process",
                );
                kill_instance();
                self.escalate = None;
            }
        }
    }

    fn signal_postmaster(&self, sig: libc::c_int) {
        // SAFETY: the postmaster is our unreaped child, so its pid cannot be reused.
        unsafe { libc::kill(self.pid, sig) };
    }

    fn fence(&mut self) -> (Report, u8) {
        kill_instance();
        self.say(&format!(
            "lease deadline passed: killed PostgreSQL (postmaster {} and every process below the guard) to fence it",
            self.pid
        ));
        self.reap_all();
        (Report::Fenced, EXIT_FENCED)
    }

    fn orphaned(&mut self, why: &str) -> (Report, u8) {
        kill_instance();
        self.say(&format!(
            "{why}: killed PostgreSQL (postmaster {} and every process below the guard); it must not run unsupervised",
            self.pid
        ));
        self.reap_all();
        (Report::Orphaned, EXIT_ORPHANED)
    }

    fn postmaster_gone(&mut self) -> (Report, u8) {
        // Backends left by a postmaster that died abruptly could still commit: kill them.
        kill_instance();
        let status = self.reap_all();
        if libc::WIFEXITED(status) {
            let code = libc::WEXITSTATUS(status);
            (
                Report::ExitStatus(code),
                u8::try_from(code).unwrap_or(EXIT_ERROR),
            )
        } else if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            self.say(&format!("postmaster was killed by signal {sig}"));
            (
                Report::ExitSignal(sig),
                u8::try_from(128 + sig).unwrap_or(EXIT_ERROR),
            )
        } else {
            (Report::ExitStatus(-1), EXIT_ERROR)
        }
    }

    /// Reaps the postmaster (returns its wait status), then every orphan re-parented
    /// to us, for at most [`REAP_ORPHANS`].
    fn reap_all(&mut self) -> libc::c_int {
        let mut status: libc::c_int = 0;
        loop {
            // SAFETY: waiting for our own child.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if rc >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        let start = Instant::now();
        loop {
            let mut s = 0;
            // SAFETY: non-blocking wait for any child.
            let rc = unsafe { libc::waitpid(-1, &mut s, libc::WNOHANG) };
            if rc > 0 {
                continue;
            }
            if rc < 0 {
                break; // ECHILD: nothing left
            }
            if start.elapsed() >= REAP_ORPHANS {
                self.say("some PostgreSQL processes did not exit within 5 s after SIGKILL");
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        status
    }
}

/// SIGKILLs every PostgreSQL process: everything below the guard. PostgreSQL's
/// children each leave the postmaster's process group (`setsid`), so the group
/// alone would be the postmaster only; as a child subreaper the guard stays the
/// ancestor of every one of them, orphans included.
fn kill_instance() {
    // SAFETY: getpid cannot fail.
    kill_tree(unsafe { libc::getpid() }, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines_round_trip() {
        for c in [
            Control::Deadline(0),
            Control::Deadline(u64::MAX),
            Control::NoDeadline,
            Control::Stop(StopKind::Fast),
            Control::Stop(StopKind::Immediate),
            Control::Stop(StopKind::Kill),
            Control::Ping,
        ] {
            let line = c.to_line();
            assert!(line.ends_with('\n'));
            assert_eq!(parse_control(line.trim_end_matches('\n')), Ok(c));
        }
    }

    #[test]
    fn bad_control_lines_are_rejected() {
        for bad in [
            "",
            "deadline",
            "deadline -1",
            "deadline 12 13",
            "deadline 1.5",
            "nodeadline now",
            "stop",
            "stop gently",
            "Stop fast",
            " stop fast",
            "stop fast ",
        ] {
            assert!(parse_control(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn reports_round_trip() {
        for r in [
            Report::Postmaster(4242),
            Report::Alive,
            Report::ExitStatus(0),
            Report::ExitStatus(1),
            Report::ExitSignal(9),
            Report::Fenced,
            Report::Orphaned,
            Report::Error("cannot start x: No such file".into()),
        ] {
            assert_eq!(Report::parse(r.to_line().trim_end()), Some(r.clone()));
        }
        assert_eq!(Report::parse("exit soon"), None);
        assert_eq!(Report::parse("postmaster x"), None);
    }

    #[test]
    fn deadline_conversion_errs_early() {
        let now = Instant::now();
        let mono = 5_000_000_000;
        let d = deadline_to_mono_ns(now + Duration::from_millis(1500), now, mono);
        assert_eq!(d, mono + 1_500_000_000 - DEADLINE_MARGIN_NS);
        // Past deadlines stay in the past: the guard kills at once.
        let past = deadline_to_mono_ns(now, now + Duration::from_millis(20), mono);
        assert_eq!(past, mono - 20_000_000 - DEADLINE_MARGIN_NS);
        assert!(deadline_to_mono_ns(now, now + Duration::from_secs(10), 5) == 0);
    }

    #[test]
    fn args_round_trip() {
        let a = GuardArgs {
            deadline: Some(123),
            log: "/var/lib/pg/postgresql.log".into(),
            uid: Some(101),
            gid: None,
            program: "/usr/lib/postgresql/15/bin/postgres".into(),
            args: vec!["-D".into(), "/d".into(), "-c".into(), "x=".into()],
        };
        assert_eq!(GuardArgs::parse(&a.to_args()), Ok(a));
        let none =
            GuardArgs::parse(&["none", "/l", "-", "-", "/bin/true"].map(OsString::from)).unwrap();
        assert_eq!(none.deadline, None);
        assert!(GuardArgs::parse(&["x", "/l", "-", "-", "/p"].map(OsString::from)).is_err());
        assert!(GuardArgs::parse(&["none", "/l", "-"].map(OsString::from)).is_err());
    }
}
