//! The OS side of running PostgreSQL: the unprivileged user, directory permissions,
//! files written with the right owner, the monotonic clock, and spawning children
//! that cannot outlive pgquorum.

use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::mpsc;

/// The user PostgreSQL runs as when pgquorum runs as root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Looks `name` up in the password database (getpwnam_r: thread-safe).
pub fn lookup_user(name: &str) -> io::Result<Option<RunAs>> {
    let cname = CString::new(name).map_err(|_| io::Error::other("user name contains NUL"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain data; getpwnam_r fills it and points its strings
        // into `buf`, which outlives every use below.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        let home = if pwd.pw_dir.is_null() {
            PathBuf::from("/")
        } else {
            // SAFETY: non-null, NUL-terminated, inside `buf`.
            PathBuf::from(OsStr::from_bytes(
                unsafe { CStr::from_ptr(pwd.pw_dir) }.to_bytes(),
            ))
        };
        return Ok(Some(RunAs {
            name: name.to_string(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home,
        }));
    }
}

/// Whether a process running as `uid`/`gid` with no supplementary groups (how pgquorum
/// starts PostgreSQL binaries) may search a directory with this `mode` and owner.
pub fn may_traverse(mode: u32, owner: u32, group: u32, uid: u32, gid: u32) -> bool {
    if uid == 0 {
        return true;
    }
    if owner == uid {
        mode & 0o100 != 0
    } else if group == gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// The first existing ancestor of `path` (exclusive) that `user` cannot search.
/// ACLs are not consulted: a directory opened to the user only by an ACL is reported.
pub fn first_blocked_ancestor(path: &Path, user: &RunAs) -> Option<(PathBuf, u32, u32)> {
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        let Ok(md) = fs::metadata(dir) else { continue };
        if !may_traverse(md.mode(), md.uid(), md.gid(), user.uid, user.gid) {
            return Some((dir.to_path_buf(), md.mode() & 0o7777, md.uid()));
        }
    }
    None
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `std::time::Instant` on Linux and of the
/// guard's deadline.
pub fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename) with `mode`,
/// owned by `owner` when given. Used for every file PostgreSQL reads.
pub fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<&RunAs>,
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.pgquorum-tmp"));
    let _ = fs::remove_file(&tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        if let Some(u) = owner {
            std::os::unix::fs::fchown(&f, Some(u.uid), Some(u.gid))?;
        }
        // The umask may have narrowed the mode; the file is ours, so set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Opens (creating with `mode`) a file for appending, as root, in a directory the
/// PostgreSQL user may control. Refuses a symlink (O_NOFOLLOW), anything but a regular
/// file, a file with other hard links, or one owned by neither root nor `pg_uid`: else
/// that user could point root's writes, and PostgreSQL's own log output through the fd
/// root hands over, at any file on the system.
pub fn open_append_safe(path: &Path, mode: u32, pg_uid: Option<u32>) -> io::Result<fs::File> {
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let md = f.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !md.is_file() || md.nlink() != 1 || !(md.uid() == me || Some(md.uid()) == pg_uid) {
        return Err(io::Error::other(
            "refusing to write: not a plain file owned by pgquorum or the PostgreSQL user",
        ));
    }
    Ok(f)
}

/// Creates `path` (mode `mode`) if absent and gives it to `owner` (see [`open_append_safe`]).
pub fn ensure_owned_file(path: &Path, mode: u32, owner: Option<&RunAs>) -> io::Result<()> {
    let f = open_append_safe(path, mode, owner.map(|u| u.uid))?;
    if let Some(u) = owner {
        std::os::unix::fs::fchown(&f, Some(u.uid), Some(u.gid))?;
    }
    Ok(())
}

/// Reads a file without following a symlink in its last component: files inside the
/// data directory are the PostgreSQL user's to replace, and root must not be tricked
/// into copying, say, /etc/shadow into a file that user can read.
pub fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Opens the data directory, without letting the PostgreSQL user redirect root: a
/// symlinked data directory is followed only when the link belongs to root (an
/// operator's choice). Owner and mode are then read and changed through this fd.
pub fn open_data_dir(path: &Path) -> io::Result<fs::File> {
    let open = |follow: bool| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | if follow { 0 } else { libc::O_NOFOLLOW })
            .open(path)
    };
    match open(false) {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            let link = fs::symlink_metadata(path)?;
            if link.uid() != 0 {
                return Err(io::Error::other(format!(
                    "it is a symlink owned by uid {}; only a root-owned symlink is trusted",
                    link.uid()
                )));
            }
            open(true)
        }
        other => other,
    }
}

/// Makes the data directory 0700 and owned by `owner` (see [`open_data_dir`]).
pub fn take_data_dir(path: &Path, owner: Option<&RunAs>) -> io::Result<()> {
    let dir = open_data_dir(path)?;
    dir.set_permissions(fs::Permissions::from_mode(0o700))?;
    if let Some(u) = owner {
        std::os::unix::fs::fchown(&dir, Some(u.uid), Some(u.gid))?;
    }
    Ok(())
}

/// A secret file (0600, owned by the PostgreSQL user) that is removed when dropped.
pub struct TempSecret {
    pub path: PathBuf,
}

impl TempSecret {
    pub fn create(
        dir: &Path,
        label: &str,
        contents: &str,
        owner: Option<&RunAs>,
    ) -> io::Result<Self> {
        let path = dir.join(format!(
            ".pgquorum-{label}-{}-{}",
            std::process::id(),
            mono_now_ns()
        ));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let this = Self { path };
        if let Some(u) = owner {
            std::os::unix::fs::fchown(&f, Some(u.uid), Some(u.gid))?;
        }
        f.write_all(contents.as_bytes())?;
        Ok(this)
    }
}

impl Drop for TempSecret {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A pipe for the guard's control channel: both ends close-on-exec so no other child
/// inherits the write end (that would keep the guard from ever seeing EOF); the write
/// end is non-blocking so a wedged guard can never block the supervisor.
pub fn control_pipe() -> io::Result<(std::os::fd::OwnedFd, fs::File)> {
    use std::os::fd::FromRawFd as _;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (r, w) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            fs::File::from_raw_fd(fds[1]),
        )
    };
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(fds[1], libc::F_GETFL);
        if fl < 0 || libc::fcntl(fds[1], libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((r, w))
}

/// Sends `sig` to process group `pgid`. `false` when the group no longer exists.
pub fn kill_group(pgid: i32, sig: libc::c_int) -> bool {
    // SAFETY: kill has no memory preconditions; pgid > 1 is checked so we can never
    // signal "every process" (-1) or our own group (0).
    pgid > 1 && unsafe { libc::kill(-pgid, sig) } == 0
}

/// In a forked child (async-signal-safe): runs it at nice 0 at most. pgquorum may run
/// at a raised priority (the unit file's `Nice=`) so that lease renewals and the fence
/// keep their timing when PostgreSQL saturates the CPUs; PostgreSQL's own processes
/// must not inherit it, or they would compete with it on equal terms again. Lowering
/// a priority needs no privilege, so this never fails.
///
/// # Safety
/// Only call between fork and exec (it changes the calling thread's priority).
pub unsafe fn at_normal_priority() {
    // SAFETY: plain syscalls on the calling thread; -1 from getpriority may be an
    // error too, and then setting 0 is as harmless.
    unsafe {
        if libc::getpriority(libc::PRIO_PROCESS, 0) < 0 {
            libc::setpriority(libc::PRIO_PROCESS, 0, 0);
        }
    }
}

/// Lets a child die with pgquorum: `PR_SET_PDEATHSIG` in the forked child, after std
/// has changed its uid/gid (a credential change clears the setting, and std runs
/// `pre_exec` closures last). If pgquorum already died before the prctl, exit at once.
///
/// The death signal fires when the *thread* that forked the child exits, so such
/// children must be spawned on [`spawn`]'s dedicated thread, never on a tokio
/// thread that may be retired.
pub fn die_with_parent(cmd: &mut tokio::process::Command, sig: libc::c_int) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            at_normal_priority();
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The thread every PostgreSQL-related child is forked from. It never exits, so a
/// parent-death signal tied to it fires only when the pgquorum process itself dies.
fn spawner() -> Option<&'static mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("pgquorum-spawner".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Spawns `cmd` on the dedicated spawner thread (see [`die_with_parent`]), registered
/// with the caller's tokio runtime.
pub async fn spawn(mut cmd: tokio::process::Command) -> io::Result<tokio::process::Child> {
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _rt = handle.enter();
        let _ = tx.send(cmd.spawn());
    });
    spawner()
        .ok_or_else(|| io::Error::other("cannot start the process spawner thread"))?
        .send(job)
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?;
    rx.await
        .map_err(|_| io::Error::other("the process spawner thread dropped a request"))?
}

/// The last `max_lines` lines of `path` from byte `from` on (at most 16 KiB read).
pub fn log_tail(path: &Path, from: u64, max_lines: usize) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    else {
        return format!("(cannot read {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(16 * 1024));
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return format!("(cannot read {})", path.display());
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(max_lines)..];
    if tail.is_empty() {
        "(no output)".into()
    } else {
        tail.join("\n")
    }
}

/// The postmaster pid in `<data_dir>/postmaster.pid`, if the file exists.
pub fn lock_file_pid(data_dir: &Path) -> Option<i32> {
    let bytes = read_nofollow(&data_dir.join("postmaster.pid")).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines().next()?.trim().parse().ok().filter(|p| *p > 0)
}

/// Whether process `pid` exists and has `data_dir` as its working directory (a
/// postmaster chdirs into its data directory before it writes the lock file).
pub fn process_runs_in(pid: i32, data_dir: &Path) -> bool {
    let Ok(cwd) = fs::read_link(format!("/proc/{pid}/cwd")) else {
        return false;
    };
    let want = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    cwd == want
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`, in clock ticks
/// since boot); `None` when it does not exist. Tells a pid apart from a later reuse.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` exists and has not exited (a zombie counts as exited).
pub fn process_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traverse_rules() {
        // owner, group, other
        assert!(may_traverse(0o700, 5, 5, 5, 9));
        assert!(!may_traverse(0o700, 1, 5, 5, 5));
        assert!(may_traverse(0o710, 1, 5, 5, 5));
        assert!(!may_traverse(0o750, 1, 2, 5, 5));
        assert!(may_traverse(0o751, 1, 2, 5, 5));
        // Owner bits decide for the owner even if "other" would allow.
        assert!(!may_traverse(0o601, 5, 2, 5, 5));
        assert!(may_traverse(0o000, 1, 1, 0, 0));
    }

    #[test]
    fn root_writes_never_follow_links() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        fs::write(&target, "keep").unwrap();
        let link = d.path().join("postgresql.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_append_safe(&link, 0o640, None).is_err());
        assert!(read_nofollow(&link).is_err());
        let hard = d.path().join("hard.log");
        fs::hard_link(&target, &hard).unwrap();
        assert!(open_append_safe(&hard, 0o640, None).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        let plain = d.path().join("plain.log");
        assert!(open_append_safe(&plain, 0o640, None).is_ok());
        assert!(take_data_dir(&link, None).is_err(), "not a directory");
    }

    #[test]
    fn looks_up_root_and_rejects_unknown() {
        let root = lookup_user("root").unwrap().unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup_user("no-such-user-pgquorum").unwrap(), None);
    }
}

/// What `/proc` says about the processes of one PostgreSQL instance: the
/// postmaster and everything descended from it. (Each child of the postmaster
/// calls `setsid()`, so they are not in the postmaster's process group: a signal
/// to the group reaches the postmaster alone.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStates {
    /// Processes that have not exited (zombies excluded).
    pub total: u32,
    /// Stopped by a signal (`T`) or traced (`t`).
    pub stopped: u32,
    /// In uninterruptible sleep (`D`): typically waiting for storage.
    pub disk_sleep: u32,
    /// With SIGKILL pending: they die the moment they leave the kernel and can
    /// never run user code again (a process stuck in `D` on dead storage stays so).
    pub doomed: u32,
    /// The postmaster itself is stopped.
    pub leader_stopped: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcEntry {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    state: char,
}

/// One `/proc/<pid>/stat` line: (state, parent, process group).
fn parse_stat(stat: &str) -> Option<(char, i32, i32)> {
    // The command name (field 2) is in parentheses and may contain anything.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Every process now, from `/proc/*/stat` (which never blocks on a process's
/// memory, so processes stuck on storage can be listed).
fn proc_table() -> Vec<ProcEntry> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (state, ppid, pgrp) = parse_stat(&stat)?;
            Some(ProcEntry {
                pid,
                ppid,
                pgrp,
                state,
            })
        })
        .collect()
}

/// `root` (when listed), its process group, and every descendant of either.
fn tree(table: &[ProcEntry], root: i32, include_root: bool) -> Vec<ProcEntry> {
    let mut found: Vec<ProcEntry> = table
        .iter()
        .filter(|p| {
            (include_root && p.pid == root) || (root > 1 && p.pgrp == root && p.pid != root)
        })
        .copied()
        .collect();
    let mut parents: Vec<i32> = found.iter().map(|p| p.pid).collect();
    parents.push(root);
    while let Some(parent) = parents.pop() {
        for p in table.iter().filter(|p| p.ppid == parent) {
            if !found.iter().any(|f| f.pid == p.pid) {
                found.push(*p);
                parents.push(p.pid);
            }
        }
    }
    found
}

/// Whether a `/proc/<pid>/status` text shows SIGKILL pending (for the thread or
/// the whole process).
fn status_kill_pending(status: &str) -> bool {
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    status.lines().any(|l| {
        let Some((key, value)) = l.split_once(':') else {
            return false;
        };
        matches!(key, "SigPnd" | "ShdPnd")
            && u64::from_str_radix(value.trim(), 16).is_ok_and(|m| m & SIGKILL_BIT != 0)
    })
}

/// Whether process `pid` has SIGKILL pending (it dies as soon as it leaves the kernel).
pub fn process_doomed(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| status_kill_pending(&s))
}

/// The processes of the instance whose postmaster is `pm`.
pub fn instance_states(pm: i32) -> GroupStates {
    let mut g = GroupStates::default();
    if pm <= 1 {
        return g;
    }
    for p in tree(&proc_table(), pm, true) {
        if matches!(p.state, 'Z' | 'X') {
            continue;
        }
        g.total += 1;
        match p.state {
            'T' | 't' => g.stopped += 1,
            'D' => g.disk_sleep += 1,
            _ => {}
        }
        if p.pid == pm && matches!(p.state, 'T' | 't') {
            g.leader_stopped = true;
        }
        if process_doomed(p.pid) {
            g.doomed += 1;
        }
    }
    g
}

/// SIGKILLs `root`'s process group and every process descended from `root`
/// (`root` itself too when `include_root`). The tree is frozen first, top-down
/// (SIGSTOP), and rescanned until nothing new appears, so no process can fork a
/// new one between being found and being killed; a stopped parent cannot reap, so
/// the pids found stay theirs. Returns how many processes were signalled.
pub fn kill_tree(root: i32, include_root: bool) -> usize {
    if root <= 1 {
        return 0;
    }
    let mut frozen: Vec<i32> = Vec::new();
    if include_root {
        // SAFETY: kill(2); the caller vouches that `root` is the instance's postmaster.
        unsafe { libc::kill(root, libc::SIGSTOP) };
        frozen.push(root);
    }
    for _ in 0..20 {
        let new: Vec<i32> = tree(&proc_table(), root, false)
            .into_iter()
            .filter(|p| !matches!(p.state, 'Z' | 'X') && !frozen.contains(&p.pid))
            .map(|p| p.pid)
            .collect();
        if new.is_empty() {
            break;
        }
        for pid in new {
            // SAFETY: kill(2) of a descendant found a moment ago under a frozen parent.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            frozen.push(pid);
        }
    }
    for pid in &frozen {
        // SAFETY: as above.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    if include_root {
        kill_group(root, libc::SIGKILL);
    }
    frozen.len()
}

/// Whether process `pid` runs the program `exe` (also when the file has since been
/// replaced, e.g. by a package upgrade: the kernel then appends " (deleted)").
pub fn process_runs_program(pid: i32, exe: &Path) -> bool {
    let Ok(link) = fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let want = fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    let link = link.as_os_str().as_bytes();
    let link = link.strip_suffix(b" (deleted)").unwrap_or(link);
    link == want.as_os_str().as_bytes()
}

/// A PostgreSQL server process of this data dir: it runs `postgres` from the
/// configured bin dir with the data dir as its working directory (each PostgreSQL
/// process chdirs into it). An operator's shell in the data dir is not one.
fn is_instance_process(pid: i32, data_dir: &Path, postgres: &Path) -> bool {
    process_runs_in(pid, data_dir) && process_runs_program(pid, postgres)
}

/// SIGKILLs every PostgreSQL server process of `data_dir` (see
/// [`is_instance_process`]): the instance's processes even once they are no longer
/// anyone's descendants (orphaned after their guard died). Returns how many.
pub fn kill_in_dir(data_dir: &Path, postgres: &Path) -> usize {
    let mut n = 0;
    for p in proc_table() {
        if !matches!(p.state, 'Z' | 'X') && is_instance_process(p.pid, data_dir, postgres) {
            // SAFETY: kill(2) of a process running in our own data directory.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
            n += 1;
        }
    }
    n
}

/// Whether any process of the instance can still run user code: the postmaster
/// `pm`, its group, its descendants, or a PostgreSQL server process of `data_dir`,
/// that has not exited and has no SIGKILL pending. When this is false the instance can no
/// longer accept or acknowledge a write, even if some of its processes stay in the
/// process table until their storage answers.
pub fn instance_can_run(pm: i32, data_dir: &Path, postgres: &Path) -> bool {
    let table = proc_table();
    let live = |p: &ProcEntry| !matches!(p.state, 'Z' | 'X') && !process_doomed(p.pid);
    tree(&table, pm, true).iter().any(live)
        || table
            .iter()
            .any(|p| live(p) && is_instance_process(p.pid, data_dir, postgres))
}

#[cfg(test)]
mod proc_tests {
    use super::*;

    #[test]
    fn parses_state_parent_and_group_whatever_the_command_name() {
        let stat = "4242 (postgres: a) b (x)) T 4000 4100 4100 0 -1 4194560 0 0";
        assert_eq!(parse_stat(stat), Some(('T', 4000, 4100)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn sigkill_pending_is_read_from_either_mask() {
        let none = "Name:\tpostgres\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000004000\n";
        assert!(!status_kill_pending(none));
        let shared = "SigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n";
        assert!(status_kill_pending(shared));
        let thread = "SigPnd:\t0000000000000102\nShdPnd:\t0000000000000000\n";
        assert!(status_kill_pending(thread));
    }

    #[test]
    fn the_tree_follows_parents_and_the_group() {
        let e = |pid, ppid, pgrp| ProcEntry {
            pid,
            ppid,
            pgrp,
            state: 'S',
        };
        // 10 postmaster; 11, 12 its children in sessions of their own; 13 a child of
        // 12; 20 in 10's group but re-parented; 30 a stranger.
        let t = [
            e(10, 1, 10),
            e(11, 10, 11),
            e(12, 10, 12),
            e(13, 12, 12),
            e(20, 1, 10),
            e(30, 1, 30),
        ];
        let mut pids: Vec<i32> = tree(&t, 10, true).iter().map(|p| p.pid).collect();
        pids.sort();
        assert_eq!(pids, vec![10, 11, 12, 13, 20]);
        let mut pids: Vec<i32> = tree(&t, 10, false).iter().map(|p| p.pid).collect();
        pids.sort();
        assert_eq!(pids, vec![11, 12, 13, 20]);
    }

    /// A parent in a session of its own with a child in another session (as a
    /// postmaster and its backends): stopping and killing reach both.
    #[test]
    fn sees_and_kills_a_tree_across_sessions() {
        use std::os::unix::process::CommandExt as _;
        let mut parent = std::process::Command::new("sh")
            .args(["-c", "setsid sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        let pid = parent.id() as i32;
        let wait_for = |want: &dyn Fn(&GroupStates) -> bool| {
            for _ in 0..300 {
                if want(&instance_states(pid)) {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            false
        };
        assert!(
            wait_for(&|g| g.total == 2 && !g.leader_stopped),
            "{:?}",
            instance_states(pid)
        );
        let dir = std::env::current_dir().unwrap();
        let none = Path::new("/nonexistent");
        assert!(instance_can_run(pid, none, none));
        // The shell runs in this directory but is not a PostgreSQL server.
        assert_eq!(
            kill_in_dir(&dir, Path::new("/usr/lib/postgresql/15/bin/postgres")),
            0
        );
        assert!(process_runs_program(pid, Path::new("/bin/sh")));
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        assert!(wait_for(&|g| g.stopped == 1 && g.leader_stopped));
        assert_eq!(kill_tree(pid, true), 2);
        let _ = parent.wait();
        assert!(wait_for(&|g| g.total == 0));
        assert!(!instance_can_run(pid, none, none));
    }
}
