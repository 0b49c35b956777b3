//! The health monitor: a task of its own that asks the running PostgreSQL every
//! [`PROBE_EVERY`] whether it still answers, and reads the state of its processes
//! in `/proc`. The HA cycle cannot do this itself: its probe shares the cycle with
//! store writes and actions, and a hung instance would stretch each cycle by the
//! probe's timeout.
//!
//! The probe runs on its own superuser session (PostgreSQL keeps
//! `superuser_reserved_connections` for superusers, so client load that fills
//! `max_connections` cannot take it away) and is bounded by [`PROBE_TIMEOUT`]. It
//! reads shared memory only (no table, no WAL), so a loaded primary answers it in
//! milliseconds. An error *from the server* ("starting up", "too many clients")
//! counts as an answer: the instance is alive. A timeout, a refused or broken
//! connection does not.
//!
//! Three signs of a hang, each with the instant it began:
//! - **no answer** at all;
//! - **WAL flush stuck**: backends wait on WAL write/flush and the flush position
//!   has not moved (storage that stopped taking writes, while read-only queries
//!   still answer from memory);
//! - **postmaster stopped** (`T` in `/proc`): no new connection will be served.
//!
//! And, on a primary in synchronous mode, **commits waiting on a standby whose
//! flush position does not move**. The monitor only measures; `ha::decide` judges.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::os::{self, GroupStates};
use super::sql::Session;
use crate::lsn::parse_lsn;

/// How often the monitor probes.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// One probe, connecting included. Far above what a loaded server needs to read
/// its shared memory; a probe that takes longer counts as no answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

const PROBE_SQL: &str = "\
SELECT pg_is_in_recovery(), \
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END, \
       (SELECT count(*) FROM pg_stat_activity WHERE wait_event IN ('WALWrite', 'WALSync')), \
       (SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'), \
       s.application_name, s.flush_lsn \
FROM (SELECT 1) AS one LEFT JOIN LATERAL \
     (SELECT application_name, flush_lsn FROM pg_stat_replication \
      WHERE sync_state = 'sync' \
      ORDER BY flush_lsn NULLS FIRST, application_name LIMIT 1) AS s ON true";

/// What the monitor knows about the running instance, as durations up to the
/// instant it was asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Liveness {
    /// The instance has not answered for this long (since its last answer, or
    /// since it was started); `None` while it answers.
    pub unanswered: Option<Duration>,
    /// Backends have waited on WAL write/flush with the flush position standing
    /// still for this long.
    pub wal_flush_stuck: Option<Duration>,
    /// The postmaster has been stopped (`T`) for this long.
    pub postmaster_stopped: Option<Duration>,
    /// Commits have waited on the least advanced synchronous standby (its name)
    /// while its flush position stood still, for this long.
    pub sync_wait_stuck: Option<(String, Duration)>,
    /// The instance's processes, as last read from `/proc`.
    pub procs: GroupStates,
    /// When the instance last answered.
    pub last_answer: Option<Instant>,
}

#[derive(Default)]
struct State {
    /// The instance being watched (postmaster pid = process group); bumped per
    /// instance so that a probe of an old one cannot count for a new one.
    pgid: Option<i32>,
    generation: u64,
    watched_since: Option<Instant>,
    /// When the last probe completed: signs seen in samples last only as far as the
    /// last sample (a monitor delayed by a busy runtime must not stretch them).
    last_sample: Option<Instant>,
    last_answer: Option<Instant>,
    answering: bool,
    flush: Option<u64>,
    flush_stuck_since: Option<Instant>,
    stopped_since: Option<Instant>,
    sync: Option<(String, u64)>,
    sync_stuck_since: Option<Instant>,
    procs: GroupStates,
}

/// Handle to the monitor task; dropping it ends the task.
pub struct Monitor {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Monitor {
    /// Starts the task (needs a tokio runtime). It probes only while an instance
    /// is being watched ([`Monitor::watch`]).
    /// `session`: the monitor's own, so a busy HA loop session never delays a probe.
    pub fn spawn(session: Session) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let task = tokio::spawn(run(state.clone(), session));
        Self { state, task }
    }

    /// Watches the instance whose postmaster is `pgid` (`None`: none runs).
    pub fn watch(&self, pgid: Option<i32>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.pgid == pgid {
            return;
        }
        let generation = s.generation + 1;
        *s = State {
            pgid,
            generation,
            watched_since: pgid.map(|_| Instant::now()),
            ..State::default()
        };
    }

    pub fn liveness(&self, now: Instant) -> Liveness {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.pgid.is_none() {
            return Liveness::default();
        }
        let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
        let held = |t: Option<Instant>| {
            t.zip(s.last_sample)
                .map(|(t, last)| last.saturating_duration_since(t))
        };
        Liveness {
            // No answer is no answer, however late the monitor looks.
            unanswered: if s.answering {
                None
            } else {
                since(s.last_answer.or(s.watched_since))
            },
            wal_flush_stuck: held(s.flush_stuck_since),
            postmaster_stopped: held(s.stopped_since),
            sync_wait_stuck: s
                .sync
                .as_ref()
                .zip(held(s.sync_stuck_since))
                .map(|((n, _), d)| (n.clone(), d)),
            procs: s.procs,
            last_answer: s.last_answer,
        }
    }
}

/// One probe's findings.
struct Sample {
    /// `None`: no answer.
    answer: Option<Answer>,
    procs: GroupStates,
}

#[derive(Default)]
struct Answer {
    flush: Option<u64>,
    wal_waiters: u64,
    sync_waiters: u64,
    sync: Option<(String, u64)>,
}

async fn run(state: Arc<Mutex<State>>, mut session: Session) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (pgid, generation) = {
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            (s.pgid, s.generation)
        };
        let Some(pgid) = pgid else {
            session.reset();
            continue;
        };
        let sample = probe(&mut session, pgid).await;
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        if s.generation == generation {
            record(&mut s, sample, Instant::now());
        } else {
            // Another instance now: this session belonged to the old one.
            session.reset();
        }
    }
}

async fn probe(session: &mut Session, pgid: i32) -> Sample {
    // /proc reads are quick, but do not let them hold a runtime thread.
    let procs = tokio::task::spawn_blocking(move || os::instance_states(pgid))
        .await
        .unwrap_or_default();
    let answer = match session
        .simple("health probe", PROBE_SQL, PROBE_TIMEOUT)
        .await
    {
        Ok(rows) => {
            let row = rows.first();
            let cell = |i: usize| row.and_then(|r| r.get(i)).and_then(|v| v.as_deref());
            let count = |i: usize| cell(i).and_then(|v| v.parse().ok()).unwrap_or(0);
            Some(Answer {
                flush: cell(1).and_then(parse_lsn),
                wal_waiters: count(2),
                sync_waiters: count(3),
                sync: cell(4)
                    .zip(cell(5).and_then(parse_lsn))
                    .map(|(n, f)| (n.to_string(), f)),
            })
        }
        // The server answered, with an error: alive (starting up, too many clients).
        Err(e) if e.sqlstate().is_some() => Some(Answer::default()),
        Err(_) => None,
    };
    Sample { answer, procs }
}

fn record(s: &mut State, sample: Sample, now: Instant) {
    s.procs = sample.procs;
    s.last_sample = Some(now);
    if sample.procs.leader_stopped {
        s.stopped_since.get_or_insert(now);
    } else {
        s.stopped_since = None;
    }
    let Some(a) = sample.answer else {
        s.answering = false;
        return;
    };
    s.answering = true;
    s.last_answer = Some(now);
    // Stuck: someone waits for the flush and it did not move since the last answer.
    let moved = a.flush != s.flush;
    s.flush = a.flush;
    // A replica has no flush position of its own here (its WAL receiver's writes
    // show as WAL waits too): only a primary's flush can be stuck.
    if a.flush.is_some() && a.wal_waiters > 0 && !moved {
        s.flush_stuck_since.get_or_insert(now);
    } else {
        s.flush_stuck_since = None;
    }
    let same_standby_unmoved = a.sync.is_some() && a.sync == s.sync;
    s.sync = a.sync;
    if a.sync_waiters > 0 && same_standby_unmoved {
        s.sync_stuck_since.get_or_insert(now);
    } else {
        s.sync_stuck_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(flush: u64, wal_waiters: u64, sync_waiters: u64, sync_flush: u64) -> Sample {
        Sample {
            answer: Some(Answer {
                flush: Some(flush),
                wal_waiters,
                sync_waiters,
                sync: Some(("n2".into(), sync_flush)),
            }),
            procs: GroupStates::default(),
        }
    }

    fn silent(stopped: bool) -> Sample {
        Sample {
            answer: None,
            procs: GroupStates {
                total: 3,
                stopped: if stopped { 3 } else { 0 },
                leader_stopped: stopped,
                ..GroupStates::default()
            },
        }
    }

    fn watched(t0: Instant) -> State {
        State {
            pgid: Some(100),
            generation: 1,
            watched_since: Some(t0),
            ..State::default()
        }
    }

    fn liveness(s: State, now: Instant) -> Liveness {
        let m = Monitor {
            state: Arc::new(Mutex::new(s)),
            task: tokio::spawn(async {}),
        };
        m.liveness(now)
    }

    #[tokio::test(start_paused = true)]
    async fn no_answer_counts_from_the_last_answer_or_the_start() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = watched(t0);
        record(&mut s, silent(false), t0 + ms(500));
        assert_eq!(
            liveness(std::mem::take(&mut s), t0 + ms(700)).unanswered,
            Some(ms(700))
        );
        let mut s = watched(t0);
        record(&mut s, answer(10, 0, 0, 10), t0 + ms(100));
        record(&mut s, silent(true), t0 + ms(400));
        record(&mut s, silent(true), t0 + ms(900));
        let l = liveness(s, t0 + ms(1100));
        assert_eq!(l.unanswered, Some(ms(1000)));
        // Held from its first sample (400) to the last (900), not to "now".
        assert_eq!(l.postmaster_stopped, Some(ms(500)));
        assert_eq!(l.procs.stopped, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_ends_every_sign_that_it_contradicts() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = watched(t0);
        record(&mut s, silent(true), t0 + ms(100));
        record(&mut s, answer(10, 0, 0, 10), t0 + ms(200));
        let l = liveness(s, t0 + ms(300));
        assert_eq!((l.unanswered, l.postmaster_stopped), (None, None));
        assert_eq!(l.last_answer, Some(t0 + ms(200)));
    }

    #[tokio::test(start_paused = true)]
    async fn wal_flush_is_stuck_only_while_someone_waits_and_it_does_not_move() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = watched(t0);
        record(&mut s, answer(10, 2, 0, 10), t0 + ms(100));
        // Moving under load: never stuck.
        record(&mut s, answer(20, 2, 0, 20), t0 + ms(200));
        assert_eq!(s.flush_stuck_since, None);
        // Standing still while idle: not stuck either (nothing to flush).
        record(&mut s, answer(20, 0, 0, 20), t0 + ms(300));
        assert_eq!(s.flush_stuck_since, None);
        record(&mut s, answer(20, 1, 0, 20), t0 + ms(400));
        record(&mut s, answer(20, 3, 0, 20), t0 + ms(900));
        assert_eq!(liveness(s, t0 + ms(1400)).wal_flush_stuck, Some(ms(500)));
    }

    /// A monitor that could not run for a while (a busy runtime, a frozen process)
    /// has no evidence for that while: its signs do not grow without samples.
    #[tokio::test(start_paused = true)]
    async fn a_delayed_monitor_does_not_stretch_what_it_saw() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = watched(t0);
        record(&mut s, answer(20, 1, 0, 20), t0 + ms(100));
        record(&mut s, answer(20, 1, 0, 20), t0 + ms(350));
        record(&mut s, answer(20, 1, 0, 20), t0 + ms(600));
        let l = liveness(s, t0 + ms(60_000));
        assert_eq!(l.wal_flush_stuck, Some(ms(250)));
        assert_eq!(l.unanswered, None);
    }

    #[tokio::test(start_paused = true)]
    async fn sync_wait_is_stuck_on_the_standby_that_does_not_move() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = watched(t0);
        record(&mut s, answer(50, 0, 4, 40), t0 + ms(100));
        record(&mut s, answer(60, 0, 4, 40), t0 + ms(200));
        record(&mut s, answer(70, 0, 6, 40), t0 + ms(700));
        assert_eq!(
            liveness(std::mem::take(&mut s), t0 + ms(1200)).sync_wait_stuck,
            Some(("n2".to_string(), ms(500)))
        );
        let mut s = watched(t0);
        record(&mut s, answer(50, 0, 4, 40), t0 + ms(100));
        record(&mut s, answer(60, 0, 4, 45), t0 + ms(200));
        assert_eq!(s.sync_stuck_since, None);
        // A different standby became synchronous: its own clock starts.
        let mut other = answer(60, 0, 4, 45);
        if let Some(a) = other.answer.as_mut() {
            a.sync = Some(("n3".into(), 45));
        }
        record(&mut s, other, t0 + ms(300));
        assert_eq!(s.sync_stuck_since, None);
    }

    #[tokio::test(start_paused = true)]
    async fn watching_another_instance_forgets_the_old_one() {
        let m = Monitor {
            state: Arc::new(Mutex::new(watched(Instant::now()))),
            task: tokio::spawn(async {}),
        };
        record(&mut m.state.lock().unwrap(), silent(true), Instant::now());
        m.watch(Some(200));
        let l = m.liveness(Instant::now());
        assert_eq!(l.postmaster_stopped, None);
        assert_eq!(l.unanswered, Some(Duration::ZERO));
        m.watch(None);
        assert_eq!(m.liveness(Instant::now()), Liveness::default());
    }
}
