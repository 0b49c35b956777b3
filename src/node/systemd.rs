//! The systemd service protocol (`Type=notify`): `READY=1` once Raft and the REST API
//! serve, `WATCHDOG=1` while the HA loop completes cycles, `STOPPING=1` at shutdown.
//! Datagrams to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace), as
//! sd_notify(3) sends them; without the variable every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::ha::health::Health;

/// What the service manager passed: `$NOTIFY_SOCKET`, and the watchdog interval
/// (`$WATCHDOG_USEC`, if `$WATCHDOG_PID` is unset or this process).
struct ServiceEnv {
    socket: Option<std::ffi::OsString>,
    watchdog: Option<Duration>,
}

static ENV: std::sync::OnceLock<ServiceEnv> = std::sync::OnceLock::new();

fn env() -> &'static ServiceEnv {
    ENV.get_or_init(|| {
        let pid_ok = std::env::var("WATCHDOG_PID")
            .map_or(true, |p| p.parse::<u32>().ok() == Some(std::process::id()));
        ServiceEnv {
            socket: std::env::var_os("NOTIFY_SOCKET"),
            watchdog: std::env::var("WATCHDOG_USEC")
                .ok()
                .and_then(|u| u.parse::<u64>().ok())
                .filter(|u| *u > 0 && pid_ok)
                .map(Duration::from_micros),
        }
    })
}

/// Reads the service manager's variables once and removes them from the
/// environment, so that the guard, PostgreSQL and callbacks do not inherit them
/// (a PostgreSQL built with systemd support would send READY and STOPPING of its
/// own for the node's unit). Call before any other thread exists.
pub fn take_env() {
    let _ = env();
    for v in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        // SAFETY: called from `main` before the runtime starts: no other thread
        // reads or writes the environment.
        unsafe { std::env::remove_var(v) };
    }
}

/// Sends `state` (newline-separated `KEY=VALUE` lines) to the service manager;
/// `false` when there is none. Errors are logged, never fatal: a node runs the same
/// with or without systemd.
pub fn notify(state: &str) -> bool {
    env().socket.as_deref().is_some_and(|s| notify_to(s, state))
}

fn notify_to(path: &std::ffi::OsStr, state: &str) -> bool {
    let sent = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), path)?;
        }
        Ok(())
    })();
    if let Err(e) = &sent {
        tracing::warn!(error = %e, socket = ?path, "cannot notify the service manager");
    }
    sent.is_ok()
}

/// The watchdog interval systemd asks of this process (`WatchdogSec=`).
pub fn watchdog_interval() -> Option<Duration> {
    env().watchdog
}

/// Whether the HA loop is alive at `now` for the watchdog: it completed a cycle
/// within `window`, or it is carrying out an action (each bounded by its own
/// timeout, some long by design: initdb, pg_basebackup, crash recovery), or it has had less than `window` since `started` for its
/// first cycle. A loop stuck anywhere else starves the watchdog, and systemd kills
/// and restarts the node (its guard fences PostgreSQL when pgquorum dies).
pub fn loop_alive(h: &Health, now: Instant, started: Instant, window: Duration) -> bool {
    if h.busy.is_some() {
        return true;
    }
    match h.last_cycle {
        Some(t) => now.saturating_duration_since(t) < window,
        None => now.saturating_duration_since(started) < window,
    }
}

/// Feeds the watchdog every `interval / 2` while `loop_alive`; without a supervisor
/// (a witness) while this runtime runs. Ends when `stop` turns true.
pub async fn feed_watchdog(
    interval: Duration,
    health: Option<watch::Receiver<Health>>,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(interval / 2);
    let mut starving = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let alive = health
            .as_ref()
            .is_none_or(|h| loop_alive(&h.borrow(), Instant::now(), started, interval));
        if alive {
            starving = false;
            notify("WATCHDOG=1");
        } else if !starving {
            starving = true;
            tracing::error!(
                watchdog = ?interval,
                "the HA loop has completed no cycle within the watchdog interval; no longer \
                 feeding systemd's watchdog, which will restart this node"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_fed_only_while_the_loop_cycles_or_works() {
        let w = Duration::from_secs(10);
        let started = Instant::now();
        let mut h = Health::default();
        assert!(loop_alive(&h, started + Duration::from_secs(9), started, w));
        assert!(!loop_alive(&h, started + w, started, w), "no first cycle");
        h.last_cycle = Some(started + Duration::from_secs(5));
        assert!(loop_alive(
            &h,
            started + Duration::from_secs(14),
            started,
            w
        ));
        assert!(!loop_alive(
            &h,
            started + Duration::from_secs(15),
            started,
            w
        ));
        h.busy = Some("Clone".into());
        assert!(loop_alive(
            &h,
            started + Duration::from_secs(3600),
            started,
            w
        ));
    }

    #[test]
    fn notify_reaches_a_socket_path_and_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let name = format!("pgquorum-test-{}", std::process::id());
        let abs = {
            use std::os::linux::net::SocketAddrExt as _;
            let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            UnixDatagram::bind_addr(&a).unwrap()
        };
        assert!(notify_to(path.as_os_str(), "READY=1"));
        assert!(notify_to(
            std::ffi::OsStr::new(&format!("@{name}")),
            "STOPPING=1"
        ));
        assert!(!notify_to(dir.path().join("nobody").as_os_str(), "READY=1"));
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let n = abs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
