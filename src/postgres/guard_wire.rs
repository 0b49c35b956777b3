//! The guard's wire: the control lines pgquorum writes to its stdin, the reports it
//! writes to stdout, its command line, and the deadline conversion both ends share.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

pub use crate::stop::StopKind;

/// A control line or guard command line that does not parse. Both ends are
/// pgquorum itself, so any of these means a version mismatch or a corrupted pipe.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad deadline {0:?}")]
    BadDeadline(String),
    #[error("unknown control line {0:?}")]
    UnknownControl(String),
    #[error("control line is not UTF-8")]
    NotUtf8,
    #[error("control line longer than {0} bytes")]
    TooLong(usize),
    #[error(
        "usage: pgquorum pg-guard <deadline-ns|none> <log-file> <uid|-> <gid|-> <program> [args...]"
    )]
    Usage,
    #[error("argument {0} is not UTF-8")]
    ArgumentNotUtf8(usize),
    #[error("bad {what} {value:?}")]
    BadNumber { what: &'static str, value: String },
}

/// Safety margin subtracted from every converted deadline.
pub const DEADLINE_MARGIN_NS: u64 = 1_000_000;

/// A control line from the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Absolute CLOCK_MONOTONIC nanoseconds.
    Deadline(u64),
    NoDeadline,
    Stop(StopKind),
    /// pgquorum's heartbeat.
    Ping,
}

impl Control {
    pub fn to_line(self) -> String {
        match self {
            Control::Deadline(ns) => format!("deadline {ns}\n"),
            Control::NoDeadline => "nodeadline\n".into(),
            Control::Stop(StopKind::Fast) => "stop fast\n".into(),
            Control::Stop(StopKind::Immediate) => "stop immediate\n".into(),
            Control::Stop(StopKind::Kill) => "stop kill\n".into(),
            Control::Ping => "ping\n".into(),
        }
    }
}

/// Parses one control line (without its newline).
pub fn parse_control(line: &str) -> Result<Control, WireError> {
    let mut words = line.split(' ');
    let cmd = match (words.next(), words.next(), words.next()) {
        (Some("deadline"), Some(ns), None) => ns
            .parse::<u64>()
            .map(Control::Deadline)
            .map_err(|_| WireError::BadDeadline(ns.to_string()))?,
        (Some("nodeadline"), None, None) => Control::NoDeadline,
        (Some("ping"), None, None) => Control::Ping,
        (Some("stop"), Some("fast"), None) => Control::Stop(StopKind::Fast),
        (Some("stop"), Some("immediate"), None) => Control::Stop(StopKind::Immediate),
        (Some("stop"), Some("kill"), None) => Control::Stop(StopKind::Kill),
        _ => return Err(WireError::UnknownControl(line.to_string())),
    };
    Ok(cmd)
}

/// A line the guard writes on stdout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// The postmaster runs with this pid (= its process group id).
    Postmaster(i32),
    /// The guard's heartbeat.
    Alive,
    /// The postmaster exited with this code.
    ExitStatus(i32),
    /// The postmaster was killed by this signal (not by the guard's fence).
    ExitSignal(i32),
    /// The deadline passed; the group was killed.
    Fenced,
    /// The control pipe closed; the group was killed.
    Orphaned,
    /// The guard could not do its job.
    Error(String),
}

impl Report {
    pub fn to_line(&self) -> String {
        match self {
            Report::Postmaster(p) => format!("postmaster {p}\n"),
            Report::Alive => "alive\n".into(),
            Report::ExitStatus(c) => format!("exit status {c}\n"),
            Report::ExitSignal(s) => format!("exit signal {s}\n"),
            Report::Fenced => "exit fenced\n".into(),
            Report::Orphaned => "exit orphaned\n".into(),
            Report::Error(m) => format!("exit error {}\n", m.replace('\n', " ")),
        }
    }

    pub fn parse(line: &str) -> Option<Report> {
        let (head, rest) = line.split_once(' ').unwrap_or((line, ""));
        Some(match (head, rest) {
            ("postmaster", p) => Report::Postmaster(p.parse().ok()?),
            ("alive", "") => Report::Alive,
            ("exit", "fenced") => Report::Fenced,
            ("exit", "orphaned") => Report::Orphaned,
            ("exit", r) => match r.split_once(' ')? {
                ("status", c) => Report::ExitStatus(c.parse().ok()?),
                ("signal", s) => Report::ExitSignal(s.parse().ok()?),
                ("error", m) => Report::Error(m.to_string()),
                _ => return None,
            },
            _ => return None,
        })
    }
}

/// Converts an `Instant` deadline to absolute CLOCK_MONOTONIC nanoseconds, never later
/// than the true deadline. The caller must read `mono_now_ns` BEFORE `now`: then
/// `mono_now_ns <= now` on the shared clock, and the result errs early, on the safe
/// side. A further millisecond is subtracted. A past deadline gives a past time (the
/// guard kills at once), never "no deadline".
pub fn deadline_to_mono_ns(deadline: Instant, now: Instant, mono_now_ns: u64) -> u64 {
    let abs = match deadline.checked_duration_since(now) {
        Some(ahead) => {
            mono_now_ns.saturating_add(u64::try_from(ahead.as_nanos()).unwrap_or(u64::MAX))
        }
        None => mono_now_ns.saturating_sub(
            u64::try_from(now.duration_since(deadline).as_nanos()).unwrap_or(u64::MAX),
        ),
    };
    abs.saturating_sub(DEADLINE_MARGIN_NS)
}

/// The guard's command line, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct GuardArgs {
    pub deadline: Option<u64>,
    pub log: PathBuf,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub program: OsString,
    pub args: Vec<OsString>,
}

impl GuardArgs {
    /// The argv after `pg-guard`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            self.deadline
                .map_or("none".to_string(), |d| d.to_string())
                .into(),
            self.log.clone().into(),
            self.uid.map_or("-".to_string(), |u| u.to_string()).into(),
            self.gid.map_or("-".to_string(), |g| g.to_string()).into(),
            self.program.clone(),
        ];
        v.extend(self.args.iter().cloned());
        v
    }

    pub fn parse(argv: &[OsString]) -> Result<Self, WireError> {
        if argv.len() < 5 {
            return Err(WireError::Usage);
        }
        let text = |i: usize| argv[i].to_str().ok_or(WireError::ArgumentNotUtf8(i + 1));
        let num = |i: usize, what: &'static str| -> Result<Option<u32>, WireError> {
            match text(i)? {
                "-" => Ok(None),
                s => s.parse().map(Some).map_err(|_| WireError::BadNumber {
                    what,
                    value: s.to_string(),
                }),
            }
        };
        let deadline = match text(0)? {
            "none" => None,
            s => Some(
                s.parse()
                    .map_err(|_| WireError::BadDeadline(s.to_string()))?,
            ),
        };
        Ok(Self {
            deadline,
            log: PathBuf::from(&argv[1]),
            uid: num(2, "uid")?,
            gid: num(3, "gid")?,
            program: argv[4].clone(),
            args: argv[5..].to_vec(),
        })
    }
}
