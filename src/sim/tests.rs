//! The simulation in CI: many seeds, every property after every step, and each
//! reintroduced bug found within the budget. `PGQ_SIM_SEED=<seed>` replays one run
//! with its whole trace (`cargo nextest run --lib sim::tests::replay`);
//! `PGQ_SIM_STEPS` changes the CI budget (10⁷ steps).

use std::time::Instant;

use super::{Failure, Setup, Stats, World};
use crate::ha::bugs::{self, Bug};

fn setup(seed: u64) -> Setup {
    Setup {
        nodes: 3,
        synchronous_mode: seed % 2 == 1,
        // Every other synchronous run waits for both standbys.
        sync_node_count: if seed % 4 == 3 { 2 } else { 1 },
        fault_us: 60_000_000,
        quiet_us: 40_000_000,
    }
}

fn run(seed: u64, verbose: bool) -> Result<Stats, Failure> {
    let mut w = World::new(seed, setup(seed));
    w.verbose = verbose;
    w.run()
}

fn budget() -> u64 {
    std::env::var("PGQ_SIM_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000)
}

/// Runs seeds from `first` until `steps` steps have run or a run fails.
fn sweep(first: u64, steps: u64) -> (u64, u64, Stats, Option<Failure>) {
    let mut total = Stats::default();
    let mut seed = first;
    let mut runs = 0;
    while total.steps < steps {
        match run(seed, false) {
            Ok(s) => {
                total.steps += s.steps;
                total.promotions += s.promotions;
                total.hang_kills += s.hang_kills;
                total.commits_acked += s.commits_acked;
            }
            Err(f) => {
                total.steps += f.step;
                return (runs + 1, seed, total, Some(f));
            }
        }
        seed += 1;
        runs += 1;
    }
    (runs, seed, total, None)
}

#[test]
fn sim_at_most_one_primary_and_no_acknowledged_commit_lost() {
    bugs::set(None);
    let t0 = Instant::now();
    let (runs, _, total, failure) = sweep(1, budget());
    let secs = t0.elapsed().as_secs_f64();
    if let Some(f) = failure {
        panic!("{f}");
    }
    println!(
        "SIM {runs} runs, {} steps in {secs:.1} s ({:.0} steps/s), {} promotions, {} hung \
         primaries killed, {} commits acknowledged",
        total.steps,
        total.steps as f64 / secs,
        total.promotions,
        total.hang_kills,
        total.commits_acked
    );
    assert!(
        total.promotions > runs,
        "the faults caused too few failovers to test anything"
    );
}

/// The simulation finds `bug` (a violation of the property it breaks, whose
/// message contains one of `expect`) within `limit` steps; returns the steps.
fn finds(bug: Bug, expect: &[&str], limit: u64) -> u64 {
    bugs::set(Some(bug));
    let mut steps = 0;
    let mut seed = 1;
    let found = loop {
        if steps >= limit {
            break None;
        }
        match run(seed, false) {
            Ok(s) => steps += s.steps,
            Err(f) => {
                steps += f.step;
                if expect.iter().any(|e| f.what.contains(e)) {
                    break Some(f);
                }
                // Another property (the bug may also break liveness): keep looking.
            }
        }
        seed += 1;
    };
    bugs::set(None);
    let f = found.unwrap_or_else(|| panic!("{bug:?} not found in {steps} steps"));
    println!(
        "SIM {bug:?}: found after {steps} steps ({seed} runs; seed {seed}; replay: \
         PGQ_SIM_BUG={bug:?} PGQ_SIM_SEED={seed}): {}",
        f.what
    );
    steps
}

const TWO_PRIMARIES: &[&str] = &["accept writes at once"];
const LOSS: &[&str] = &["acknowledged commit", "maximum_lag_on_failover"];

#[test]
fn sim_finds_release_without_stop() {
    finds(Bug::ReleaseWithoutStop, TWO_PRIMARIES, 5_000_000);
}

#[test]
fn sim_finds_the_guard_frozen_with_pgquorum() {
    finds(Bug::GuardInSupervisorGroup, TWO_PRIMARIES, 5_000_000);
}

#[test]
fn sim_finds_a_sync_standby_recorded_early() {
    finds(Bug::SyncRecordedEarly, &["acknowledged commit"], 5_000_000);
}

#[test]
fn sim_finds_a_candidate_skipping_the_rules() {
    finds(Bug::CandidateSkipsRules, LOSS, 5_000_000);
}

/// Same seed, same run: every step and every trace line.
#[test]
fn sim_is_deterministic() {
    let a = World::new(7, setup(7));
    let b = World::new(7, setup(7));
    let (a, b) = (a.run().map(|s| s.steps), b.run().map(|s| s.steps));
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

/// `PGQ_SIM_SEED=<seed>` (optionally `PGQ_SIM_BUG=<name>`) prints one run's trace.
#[test]
fn replay() {
    let Some(seed) = std::env::var("PGQ_SIM_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return;
    };
    let bug = std::env::var("PGQ_SIM_BUG").ok().and_then(|b| {
        [
            Bug::ReleaseWithoutStop,
            Bug::GuardInSupervisorGroup,
            Bug::SyncRecordedEarly,
            Bug::CandidateSkipsRules,
        ]
        .into_iter()
        .find(|x| format!("{x:?}") == b)
    });
    bugs::set(bug);
    match run(seed, true) {
        Ok(s) => println!("seed {seed}: passed, {s:?}"),
        Err(f) => panic!("{f}"),
    }
}
