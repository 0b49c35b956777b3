//! Runs the operator's callbacks (`[postgresql.callbacks]`, `pre_promote`).
//!
//! Event callbacks run one at a time, in the order the events happened, on a task of
//! their own: a slow or hung script never holds up the HA loop, and a VIP script
//! sees `on_role_change primary` before a later `on_role_change replica`. Each gets
//! `callback_timeout_ms`, then its whole process group is killed. `pre_promote` is
//! waited for: a non-zero exit, a signal or the timeout vetoes the promotion.
//! They run as the user pgquorum runs as (Patroni runs them as its own user too).

use std::process::Stdio;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{Callbacks, CommandLine};

use super::PgError;

/// The most of a callback's output that is logged.
const OUTPUT_LOGGED: usize = 2048;

#[derive(Debug)]
struct Job {
    cmd: CommandLine,
    action: &'static str,
    role: &'static str,
}

pub struct CallbackRunner {
    cbs: Callbacks,
    cluster: String,
    /// Started on first use (it needs the runtime).
    queue: Option<mpsc::UnboundedSender<Job>>,
}

/// How a command ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Exited(i32),
    Signalled,
    TimedOut,
    NotStarted(String),
}

impl CallbackRunner {
    pub fn new(cbs: Callbacks, cluster: String) -> Self {
        Self {
            cbs,
            cluster,
            queue: None,
        }
    }

    /// Queues the callback for `action` (Patroni's name, e.g. `on_start`) if one is
    /// configured; returns at once.
    pub fn notify(&mut self, action: &'static str, role: &'static str) {
        let cmd = match action {
            "on_start" => &self.cbs.on_start,
            "on_stop" => &self.cbs.on_stop,
            "on_restart" => &self.cbs.on_restart,
            "on_reload" => &self.cbs.on_reload,
            "on_role_change" => &self.cbs.on_role_change,
            _ => return,
        };
        let Some(cmd) = cmd.clone() else { return };
        let timeout = self.timeout();
        let cluster = self.cluster.clone();
        let queue = self.queue.get_or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            tokio::spawn(async move {
                while let Some(j) = rx.recv().await {
                    let out = run(&j.cmd, &[j.action, j.role, &cluster], timeout).await;
                    log_outcome(&j.cmd, j.action, &out);
                }
            });
            tx
        });
        let _ = queue.send(Job { cmd, action, role });
    }

    /// Runs `pre_promote` (if configured) and waits for it. Any end but exit 0 is a
    /// veto.
    pub async fn pre_promote(&self) -> Result<(), PgError> {
        let Some(cmd) = &self.cbs.pre_promote else {
            return Ok(());
        };
        tracing::info!(command = %cmd.text, "running pre_promote");
        let out = run(
            cmd,
            &["pre_promote", "replica", &self.cluster],
            self.timeout(),
        )
        .await;
        log_outcome(cmd, "pre_promote", &out);
        match out.0 {
            Outcome::Exited(0) => Ok(()),
            other => Err(PgError::PrePromoteVetoed {
                command: cmd.text.clone(),
                how: match other {
                    Outcome::Exited(c) => format!("exited with {c}"),
                    Outcome::Signalled => "was killed by a signal".into(),
                    Outcome::TimedOut => format!("ran over {:?} and was killed", self.timeout()),
                    Outcome::NotStarted(e) => format!("could not start: {e}"),
                },
            }),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.cbs.timeout_ms)
    }
}

/// Runs `cmd` with `args` appended, in a process group of its own (killed whole at
/// the timeout); returns how it ended and its output (stdout then stderr).
async fn run(cmd: &CommandLine, args: &[&str], timeout: Duration) -> (Outcome, String) {
    let mut c = tokio::process::Command::new(&cmd.argv[0]);
    c.args(&cmd.argv[1..])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => return (Outcome::NotStarted(e.to_string()), String::new()),
    };
    let pgid = child.id().map(|p| p as i32);
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(o)) => {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            let outcome = match o.status.code() {
                Some(c) => Outcome::Exited(c),
                None => Outcome::Signalled,
            };
            (outcome, text)
        }
        Ok(Err(e)) => (Outcome::NotStarted(e.to_string()), String::new()),
        Err(_) => {
            // The child itself is killed on drop; its own children with the group.
            if let Some(g) = pgid {
                super::os::kill_group(g, libc::SIGKILL);
            }
            (Outcome::TimedOut, String::new())
        }
    }
}

fn log_outcome(cmd: &CommandLine, action: &str, (outcome, output): &(Outcome, String)) {
    let output = tail(output.trim_end(), OUTPUT_LOGGED);
    match outcome {
        Outcome::Exited(0) => {
            tracing::info!(action, command = %cmd.text, output, "callback finished")
        }
        other => tracing::warn!(
            action,
            command = %cmd.text,
            outcome = ?other,
            output,
            "callback failed"
        ),
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = s.len() - max;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t: &str) -> CommandLine {
        CommandLine::parse("callbacks.on_start", t).unwrap()
    }

    #[tokio::test]
    async fn passes_patronis_arguments_and_reports_how_it_ended() {
        let (o, out) = run(
            &line("sh -c 'echo \"$@\"; exit 3' cb"),
            &["on_start", "primary", "c1"],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(o, Outcome::Exited(3));
        assert_eq!(out.trim(), "on_start primary c1");
        let (o, _) = run(&line("/nonexistent/cb"), &[], Duration::from_secs(10)).await;
        assert!(matches!(o, Outcome::NotStarted(_)), "{o:?}");
    }

    #[tokio::test]
    async fn a_script_over_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child");
        let script = format!("sh -c 'sleep 30 & echo $! > {}; wait'", pidfile.display());
        let (o, _) = run(&line(&script), &[], Duration::from_millis(300)).await;
        assert_eq!(o, Outcome::TimedOut);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Reaped by init soon after the kill; a zombie or nothing means it is gone.
        for _ in 0..100 {
            if !super::super::os::process_alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the callback's child {pid} outlived the timeout");
    }

    #[tokio::test]
    async fn pre_promote_vetoes_unless_it_exits_zero() {
        let mut cbs = Callbacks {
            timeout_ms: 5_000,
            ..Callbacks::default()
        };
        let r = CallbackRunner::new(cbs.clone(), "c1".into());
        assert!(r.pre_promote().await.is_ok(), "none configured");
        cbs.pre_promote = Some(line(
            "sh -c 'test \"$1 $2 $3\" = \"pre_promote replica c1\"' x",
        ));
        assert!(
            CallbackRunner::new(cbs.clone(), "c1".into())
                .pre_promote()
                .await
                .is_ok()
        );
        cbs.pre_promote = Some(line("false"));
        let e = CallbackRunner::new(cbs, "c1".into())
            .pre_promote()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("exited with 1"), "{e}");
    }
}
