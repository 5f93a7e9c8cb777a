//! `no_leak`: capacity is never lost.
//!
//! (a) A definite denial (an acquire failing with no error) is legitimate
//! only if, at some instant between its decision's earliest moment and its
//! completion, at least `limit` leases of its key were possibly held. The
//! attempts sharing its idempotency key share one recorded decision, so
//! that moment is the earliest invoke among them that was not a definite
//! error: a retry may hear a denial decided for an earlier attempt. A lease is possibly held
//! from the earliest invoke that may have granted it — answered ok, or
//! unanswered (and still in flight), since an unanswered acquire may have
//! been granted — until the earliest ok completion of its release or its
//! latest possible expiry, whichever comes first. An acquire never answered
//! ok expires at the latest `ttl·(1+ρ)` after it took effect, which is its
//! last attempt's invoke unless a fault was active while an attempt was
//! outstanding: then as late as [`Faults::held_back_until_ns`] allows.
//!
//! (b) Every op of phase `final` — run after faults healed and every TTL
//! passed, when all capacity must be grantable again — succeeds.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use crate::history::{by_idem, Completed, Op, Outcome, Phase};

use super::faults::Faults;
use super::leases::Leases;
use super::{Findings, Params, Verdict};

/// Checks `ops`; see the module doc.
pub fn check(ops: &[Completed], params: &Params, faults: &Faults) -> Verdict {
    let leases = Leases::build(ops);
    let mut intervals: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for lease in &leases.all {
        let until_ns = lease.possible_until_ns(params, faults);
        if until_ns >= lease.invoke_ns {
            intervals
                .entry(lease.key)
                .or_default()
                .push((lease.invoke_ns, until_ns));
        }
    }
    let profiles: BTreeMap<&str, Profile> = intervals
        .iter()
        .map(|(key, held)| (*key, Profile::new(held)))
        .collect();
    let decided_from: HashMap<(&str, &str), u64> = by_idem(ops)
        .into_iter()
        .filter(|(id, _)| id.f == "acquire")
        .filter_map(|(id, attempts)| Some(((id.key, id.idem), attempts.decided_from_ns()?)))
        .collect();
    let mut found = Findings::default();
    let mut denials = 0;
    for c in ops {
        let (Op::Acquire(a), Some(done_ns)) = (&c.op, c.complete_ns) else {
            continue;
        };
        if !c.is_denial() {
            continue;
        }
        denials += 1;
        let from_ns = decided_from
            .get(&(a.key.as_str(), a.idem.as_str()))
            .map_or(c.invoke_ns, |&ns| ns.min(c.invoke_ns));
        let most = profiles
            .get(a.key.as_str())
            .map_or(0, |p| p.most(from_ns, done_ns));
        if most < a.limit {
            found.add(format!(
                "key {}: {} denied as full, but at most {most} of {} leases could be held then",
                a.key,
                c.describe(),
                a.limit
            ));
        }
    }
    let finals: Vec<&Completed> = ops.iter().filter(|c| c.phase == Phase::Final).collect();
    for c in finals.iter().filter(|c| c.outcome != Outcome::Ok) {
        found.add(format!("final phase: {} did not succeed", c.describe()));
    }
    let stats = json!({ "denials": denials, "final_ops": finals.len() });
    found.verdict("no_leak", stats)
}

/// How many closed intervals cover each instant, answering "the most at
/// any instant of a range" in O(1) after O(n log n) to build.
struct Profile {
    /// Instants where an interval starts or ends, ascending.
    times: Vec<u64>,
    /// Intervals covering `times[i]` itself.
    peaks: SparseMax,
    /// Intervals covering the instants just after `times[i]`.
    after: Vec<u32>,
}

impl Profile {
    fn new(intervals: &[(u64, u64)]) -> Profile {
        let mut edges: Vec<(u64, bool)> = Vec::with_capacity(2 * intervals.len());
        for &(from_ns, until_ns) in intervals {
            edges.push((from_ns, true));
            edges.push((until_ns, false));
        }
        edges.sort_unstable();
        let (mut times, mut peaks, mut after) = (Vec::new(), Vec::new(), Vec::new());
        let mut covering = 0u32;
        for group in edges.chunk_by(|a, b| a.0 == b.0) {
            let starts = group.iter().filter(|e| e.1).count() as u32;
            let ends = group.len() as u32 - starts;
            covering += starts;
            times.push(group[0].0);
            peaks.push(covering);
            covering -= ends;
            after.push(covering);
        }
        Profile {
            times,
            peaks: SparseMax::new(peaks),
            after,
        }
    }

    /// The most intervals covering one instant of `[from, to]`.
    fn most(&self, from_ns: u64, to_ns: u64) -> u32 {
        let first = self.times.partition_point(|&t| t < from_ns);
        let end = self.times.partition_point(|&t| t <= to_ns);
        let at_from = first.checked_sub(1).map_or(0, |i| self.after[i]);
        if first < end {
            at_from.max(self.peaks.max(first, end))
        } else {
            at_from
        }
    }
}

/// Range maxima by a sparse table: `levels[k][i]` is the maximum of
/// `values[i .. i + 2^k]`.
struct SparseMax {
    levels: Vec<Vec<u32>>,
}

impl SparseMax {
    fn new(values: Vec<u32>) -> SparseMax {
        let mut levels = vec![values];
        let mut width = 1;
        while 2 * width <= levels[0].len() {
            let prev = levels.last().expect("level 0 exists");
            let next = (0..prev.len() - width)
                .map(|i| prev[i].max(prev[i + width]))
                .collect();
            levels.push(next);
            width *= 2;
        }
        SparseMax { levels }
    }

    /// The maximum of `values[from..to]`, `from < to`.
    fn max(&self, from: usize, to: usize) -> u32 {
        let k = (to - from).ilog2() as usize;
        let level = &self.levels[k];
        level[from].max(level[to - (1 << k)])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn run(s: &Script) -> Verdict {
        check(&s.ops(), &Params::default(), &Faults::of(&s.history()))
    }

    #[test]
    fn a_grant_held_back_by_a_pause_may_fill_the_key_after_it() {
        let mut s = Script::new();
        s.nemesis(1_000, "pause", "start");
        s.info(1_500, 2_000, acq("k", "a"));
        s.nemesis(3_000, "pause", "stop");
        // Served on resume, the grant holds the key for its TTL after.
        s.fail(3_500, 3_510, acq("k", "b"));
        assert!(run(&s).ok, "{:?}", run(&s).violations);
        // But no longer than the fault's hold-back allows.
        s.fail(10_000, 10_010, acq("k", "c"));
        let v = run(&s);
        assert_eq!(v.violations_total, 1, "{:?}", v.violations);
        assert!(v.violations[0].contains("idem=c"), "{}", v.violations[0]);
    }

    #[test]
    fn denials_while_full_pass() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.fail(10, 12, acq("k", "b"));
        // Released, but the release's completion is after the denial.
        s.ok(100, 200, rel("k", "r", 1).held(true));
        s.fail(150, 160, acq("k", "c"));
        // An unanswered acquire may hold the key.
        s.info(300, 400, acq("k", "d"));
        s.fail(350, 360, acq("k", "e"));
        // So may one still in flight.
        s.pending(2000, acq("k", "f"));
        s.fail(2100, 2110, acq("k", "g"));
        // A definite error is not a denial.
        s.fail(5000, 5001, acq("k", "h").error("invalid_argument"));
        let v = run(&s);
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(v.stats["denials"], 4);
    }

    #[test]
    fn a_retry_hears_the_denial_decided_for_its_first_attempt() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.info(10, 20, acq("k", "b"));
        s.ok(30, 35, rel("k", "r", 1).held(true));
        // Long after every lease could have ended, the retry of b replays
        // the denial decided while lease 1 was held.
        s.fail(3000, 3010, acq("k", "b"));
        let v = run(&s);
        assert!(v.ok, "{:?}", v.violations);
        // A denied acquire held nothing, so it justifies no other denial,
        // even while its first attempt was unanswered.
        s.fail(50, 55, acq("k", "c"));
        let v = run(&s);
        assert_eq!(v.violations_total, 1, "{:?}", v.violations);
        assert!(v.violations[0].contains("idem=c"), "{}", v.violations[0]);
    }

    #[test]
    fn detects_a_spurious_denial_on_an_empty_key() {
        let mut s = Script::new();
        s.fail(0, 5, acq("k", "a"));
        let v = run(&s);
        assert!(!v.ok);
        assert!(
            v.violations[0].contains("at most 0 of 1"),
            "{}",
            v.violations[0]
        );
    }

    #[test]
    fn detects_a_denial_after_release_and_after_expiry() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.ok(100, 105, rel("k", "r", 1).held(true));
        s.fail(110, 115, acq("k", "b"));
        assert_eq!(run(&s).violations_total, 1);
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.fail(1100, 1105, acq("k", "b"));
        assert_eq!(run(&s).violations_total, 1);
    }

    #[test]
    fn limit_two_needs_two_holders() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").limit(2).lease(1));
        s.fail(10, 15, acq("k", "b").limit(2));
        assert!(!run(&s).ok);
        s.ok(8, 9, acq("k", "c").limit(2).lease(2));
        assert!(run(&s).ok);
    }

    #[test]
    fn detects_final_phase_failures() {
        let mut s = Script::new();
        s.phase(Phase::Final);
        s.ok(0, 5, acq("k", "a").lease(1));
        s.ok(6, 8, rel("k", "r", 1).held(true));
        assert!(run(&s).ok);
        s.info(10, 20, acq("k", "b"));
        s.pending(30, thr("t", "t1"));
        let v = run(&s);
        assert_eq!(v.violations_total, 2);
        assert!(
            v.violations[0].starts_with("final phase"),
            "{}",
            v.violations[0]
        );
    }

    #[test]
    fn profile_answers_range_maxima() {
        let p = Profile::new(&[(0, 10), (5, 20), (10, 10), (30, 40)]);
        assert_eq!(p.most(0, 4), 1);
        assert_eq!(p.most(10, 10), 3);
        assert_eq!(p.most(11, 12), 1);
        assert_eq!(p.most(21, 29), 0);
        assert_eq!(p.most(25, 100), 1);
        assert_eq!(p.most(0, 100), 3);
    }
}
