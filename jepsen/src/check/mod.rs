//! Checkers: each judges one property of a history and returns a
//! [`Verdict`]. [`all`] runs every one.
//!
//! # Time model
//!
//! The harness clock is real time. A server's clock runs at a rate within
//! `[1/(1+ρ), 1+ρ]` of real time, so a TTL the server measures lasts at
//! least `ttl/(1+ρ)` and at most `ttl·(1+ρ)` of real time; every such bound
//! is further widened by [`Params::slack_ms`]. An operation takes effect at
//! one instant between its invoke and its completion; an `info` operation at
//! any instant after its invoke, or never (how late, [`faults`] bounds). Attempts sharing an idempotency
//! key are one operation, taking effect between the earliest invoke among
//! them and the earliest ok completion.
//!
//! A lease is *certainly held* from its grant's ok completion until the
//! earliest time it could have ended: a release invoked, or its shortest
//! possible expiry. It is *possibly held* from the earliest invoke that may
//! have granted it until the latest time it could have ended.
//!
//! Every checker runs in O(n log n) of the history's length, except the
//! linearizability search, which is bounded by a step budget per key.
//!
//! | checker | property |
//! | --- | --- |
//! | [`lease_safety`] | at most `limit` leases certainly held at once per key; no lease reported lost while certainly held |
//! | [`zombie_extend`] | no extend succeeds after its lease had surely expired or been released |
//! | [`no_leak`] | denials only when the key could be full; every final-phase op succeeds |
//! | [`fencing`] | tokens unique per slot and increasing in real time within it |
//! | [`idempotency`] | one idempotency key, one lease and token; one lease, one key |
//! | [`linearizable`] | keys with TTLs of an hour or more behave as a semaphore |
//! | [`gcra`] | throttle admissions within the GCRA bound in every window |
//! | [`rate_limit`] | at most `limit` rate-limit admissions in any window the server measures as shorter than the period |
//! | [`fenced_resource`] | a resource guarded by fencing tokens loses no update and accepts no token smaller than one it accepted |
//! | [`durability`] | leases certainly held survive a kill of every node |

use serde::Serialize;
use serde_json::json;

use crate::history::{Completed, History, Outcome};

mod admissions;
pub mod durability;
pub mod faults;
pub mod fenced_resource;
pub mod fencing;
mod fenwick;
pub mod gcra;
pub mod idempotency;
pub mod lease_safety;
mod leases;
pub mod linearizable;
pub mod no_leak;
pub mod rate_limit;
pub mod zombie_extend;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod testkit;

/// Violations listed per verdict; the rest are only counted.
const VIOLATIONS_SHOWN_MAX: usize = 20;

/// How loosely the checkers judge time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Bound on server clock rate error: a server clock runs at a rate
    /// within `[1/(1+rho), 1+rho]` of real time.
    pub rho: f64,
    /// Absolute slack added to every time bound: the millisecond truncation
    /// of server timestamps, plus the largest clock offset between nodes if
    /// the run skews clocks.
    pub slack_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            rho: 0.01,
            slack_ms: 1,
        }
    }
}

impl Params {
    /// The shortest real time a server-measured `ttl_ms` can last.
    pub(crate) fn ttl_low_ns(&self, ttl_ms: u64) -> u64 {
        let ns = (ttl_ms as f64 * 1e6 / (1.0 + self.rho)).floor() as u64;
        ns.saturating_sub(self.slack_ns())
    }

    /// The longest real time a server-measured `ttl_ms` can last.
    pub(crate) fn ttl_high_ns(&self, ttl_ms: u64) -> u64 {
        let ns = (ttl_ms as f64 * 1e6 * (1.0 + self.rho)).ceil() as u64;
        ns.saturating_add(self.slack_ns())
    }

    pub(crate) fn slack_ns(&self) -> u64 {
        self.slack_ms.saturating_mul(1_000_000)
    }
}

/// One checker's judgement of a history.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub checker: &'static str,
    /// No violation found. A check that could not decide (see
    /// [`linearizable`]) passes and says so in `stats`.
    pub ok: bool,
    /// Human-readable violations, the first [`VIOLATIONS_SHOWN_MAX`].
    pub violations: Vec<String>,
    /// How many violations were found, shown or not.
    pub violations_total: usize,
    /// What was checked: counts, and anything left undecided.
    pub stats: serde_json::Value,
}

/// Collects violations for a verdict, keeping the first few.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    shown: Vec<String>,
    total: usize,
}

impl Findings {
    pub(crate) fn add(&mut self, violation: String) {
        if self.shown.len() < VIOLATIONS_SHOWN_MAX {
            self.shown.push(violation);
        }
        self.total += 1;
    }

    pub(crate) fn verdict(self, checker: &'static str, stats: serde_json::Value) -> Verdict {
        Verdict {
            checker,
            ok: self.total == 0,
            violations: self.shown,
            violations_total: self.total,
            stats,
        }
    }
}

/// Runs every checker. The first verdict, `well_formed`, says whether the
/// history could be paired; if not, it is the only verdict.
pub fn all(history: &History, params: &Params) -> Vec<Verdict> {
    let ops = match history.pairs() {
        Ok(ops) => ops,
        Err(e) => {
            let mut found = Findings::default();
            found.add(e.to_string());
            return vec![found.verdict("well_formed", json!({ "events": history.events.len() }))];
        }
    };
    vec![
        well_formed(history, &ops),
        lease_safety::check(&ops, params),
        zombie_extend::check(&ops, params),
        no_leak::check(&ops, params, &faults::Faults::of(history)),
        fencing::check(&ops),
        idempotency::check(&ops),
        linearizable::check(&ops),
        gcra::check(&ops, params),
        rate_limit::check(&ops, params),
        fenced_resource::check(&ops),
        durability::check(&ops, params),
    ]
}

fn well_formed(history: &History, ops: &[Completed]) -> Verdict {
    let count = |o: Outcome| ops.iter().filter(|c| c.outcome == o).count();
    let pending = ops.iter().filter(|c| c.complete_ns.is_none()).count();
    let stats = json!({
        "events": history.events.len(),
        "ops": ops.len(),
        "ok": count(Outcome::Ok),
        "fail": count(Outcome::Fail),
        "info": count(Outcome::Info),
        "never_completed": pending,
    });
    Findings::default().verdict("well_formed", stats)
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use crate::history::{Event, EventKind, Op, Phase};

    #[test]
    fn a_realistic_history_passes_every_checker() {
        let mut s = Script::new();
        s.nemesis(0, "partition", "start");
        s.ok(0, 3, acq("c", "a1").limit(2).lease(1));
        s.ok(1, 4, acq("c", "a2").limit(2).lease(2));
        s.fail(2, 5, acq("c", "a3").limit(2));
        s.info(3, 500, acq("c", "a4").limit(2));
        s.ok(100, 104, ext("c", "e1", 1));
        s.ok(200, 203, rel("c", "r1", 1).held(true));
        s.ok(300, 302, rel("c", "r2", 2).held(true));
        s.ok(600, 603, acq("c", "a5").limit(2).lease(5));
        s.ok(0, 2, thr("t", "t1").token(3));
        s.ok(210, 212, thr("t", "t2").token(4));
        s.ok(0, 2, rl("r", "r1"));
        s.ok(1, 3, rl("r", "r2"));
        s.fail(4, 5, rl("r", "r3"));
        s.ok(1100, 1102, rl("r", "r4"));
        s.ok(4, 6, fread("c", 1, 0, 0));
        s.ok(7, 9, fwrite("c", 1, 1, 0));
        s.ok(604, 605, fread("c", 5, 2, 1));
        s.fail(606, 607, fwrite("c", 2, 3, 0).stale());
        s.ok(608, 609, fwrite("c", 5, 4, 1));
        s.nemesis(700, "partition", "stop");
        s.phase(Phase::Final);
        s.ok(3000, 3003, acq("c", "f1").limit(2).lease(6));
        s.ok(3010, 3012, rel("c", "f2", 6).held(true));
        s.ok(3020, 3022, acq("c", "f3").limit(2).ttl(60_000).lease(7));
        s.ok(3023, 3024, fread("c", 7, 5, 2));
        s.ok(3025, 3026, fwrite("c", 7, 6, 2));
        s.phase(Phase::Durability);
        s.ok(4000, 4002, inspect("c", &[7]));
        let verdicts = all(&s.history(), &Params::default());
        assert_eq!(verdicts.len(), 11);
        for v in &verdicts {
            assert!(v.ok, "{} failed: {:?}", v.checker, v.violations);
        }
    }

    #[test]
    fn an_unpairable_history_fails_well_formed_only() {
        let mut history = Script::new().history();
        history.events.push(Event {
            t_ns: 5,
            process: 9,
            kind: EventKind::Ok,
            op: Op::from(acq("c", "a")),
            node: None,
            phase: Phase::Main,
        });
        let verdicts = all(&history, &Params::default());
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].checker, "well_formed");
        assert!(!verdicts[0].ok);
    }

    #[test]
    fn findings_cap_the_list_but_count_all() {
        let mut found = Findings::default();
        for i in 0..VIOLATIONS_SHOWN_MAX + 5 {
            found.add(format!("v{i}"));
        }
        let v = found.verdict("x", json!({}));
        assert!(!v.ok);
        assert_eq!(v.violations.len(), VIOLATIONS_SHOWN_MAX);
        assert_eq!(v.violations_total, VIOLATIONS_SHOWN_MAX + 5);
    }

    #[test]
    fn ttl_bounds_widen_by_rate_and_slack() {
        let p = Params {
            rho: 0.01,
            slack_ms: 1,
        };
        assert_eq!(p.ttl_high_ns(1000), 1_010_000_000 + 1_000_000);
        assert_eq!(p.ttl_low_ns(1000), 990_099_009 - 1_000_000);
        let exact = Params {
            rho: 0.0,
            slack_ms: 0,
        };
        assert_eq!(exact.ttl_low_ns(7), 7_000_000);
        assert_eq!(exact.ttl_high_ns(7), 7_000_000);
    }
}
