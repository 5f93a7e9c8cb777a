//! `rate_limit`: a rate limit admits at most `limit` in any window its
//! server measures as shorter than `period_ms`.
//!
//! The ok admissions certainly inside a real window `[s, e]` — both invoke
//! and completion in it; retries of one admission count once, from their
//! first invoke to their first ok completion — took effect within `e − s`
//! of real time, which a server's clock measures as at most `(e − s)·(1+ρ)`
//! plus slack (a clock running fast, or a new leader's clock ahead of the
//! old one's, stretches the window; neither can make a window look shorter
//! than that). While that is shorter than the period, at most `limit` of
//! them may be admitted. So the windows checked are those shorter than
//! `w = (period − slack)/(1+ρ)` of real time.
//!
//! Every window start `s` is an admission's invoke, and its window holds
//! the admissions invoked at `s` or later and completed before `s + w`.
//! Sweeping `s` down through the invokes, each admission enters a Fenwick
//! tree over the completions' ranks, which counts them: O(n log n) per key.
//!
//! A key whose requests carry different limits is judged by the loosest:
//! the largest limit and the shortest period seen.

use crate::history::{fmt_ms, Completed, ThrottleKind};

use super::admissions::{self, Admissions};
use super::fenwick::Fenwick;
use super::{Findings, Params, Verdict};

/// Checks `ops`; see the module doc.
pub fn check(ops: &[Completed], params: &Params) -> Verdict {
    let keys = admissions::by_key(
        ops,
        ThrottleKind::RateLimit,
        |t| Rule {
            limit: t.limit,
            period_ms: t.period_ms,
        },
        Rule::loosest,
    );
    let mut found = Findings::default();
    let mut windows = 0;
    for (key, Admissions { rule, admitted }) in &keys {
        let window_ns = rule.window_ns(params);
        let over = overruns(admitted, rule.limit, window_ns);
        windows += over.windows;
        if let Some((from_ns, to_ns, count)) = over.earliest {
            found.add(format!(
                "key {key}: {count} admissions certainly within [{}, {}], shorter than {} ms \
                 on any server clock; the limit is {} per {} ms",
                fmt_ms(from_ns),
                fmt_ms(to_ns),
                rule.period_ms,
                rule.limit,
                rule.period_ms
            ));
        }
    }
    let stats = admissions::stats(&keys, windows);
    found.verdict("rate_limit", stats)
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    limit: u32,
    period_ms: u64,
}

impl Rule {
    fn loosest(self, other: Rule) -> Rule {
        Rule {
            limit: self.limit.max(other.limit),
            period_ms: self.period_ms.min(other.period_ms),
        }
    }

    /// Real windows shorter than this are shorter than the period on every
    /// server clock.
    fn window_ns(&self, p: &Params) -> u64 {
        let period_ns = self.period_ms.saturating_mul(1_000_000);
        let ns = period_ns.saturating_sub(p.slack_ns()) as f64 / (1.0 + p.rho);
        ns.ceil() as u64
    }
}

/// Windows breaking the limit: how many window starts have one, and the
/// earliest-starting one as (start, latest completion in it, count).
#[derive(Debug, Default, PartialEq)]
struct Overruns {
    windows: usize,
    earliest: Option<(u64, u64, u64)>,
}

/// Counts, for every start `s` among the invokes of `admissions`
/// (invoke, completion), those invoked at `s` or later and completed
/// before `s + window_ns`.
fn overruns(admissions: &[(u64, u64)], limit: u32, window_ns: u64) -> Overruns {
    let mut ends: Vec<u64> = admissions.iter().map(|a| a.1).collect();
    ends.sort_unstable();
    let mut by_invoke: Vec<(u64, u64)> = admissions.to_vec();
    by_invoke.sort_unstable_by(|a, b| b.cmp(a));
    let mut added = Fenwick::new(ends.len());
    let mut over = Overruns::default();
    for group in by_invoke.chunk_by(|a, b| a.0 == b.0) {
        for &(_, done_ns) in group {
            // Equal completions share the first rank of their run; the
            // counts below only ask "completed before".
            added.add(ends.partition_point(|&e| e < done_ns));
        }
        let from_ns = group[0].0;
        let before = ends.partition_point(|&e| e < from_ns.saturating_add(window_ns));
        let count = added.count_below(before);
        if count > limit {
            over.windows += 1;
            let to_ns = ends[added.position_of(count)];
            over.earliest = Some((from_ns, to_ns, u64::from(count)));
        }
    }
    over
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    const MS: u64 = 1_000_000;

    fn run(s: &Script) -> Verdict {
        check(&s.ops(), &Params::default())
    }

    #[test]
    fn admissions_at_the_limit_pass() {
        let mut s = Script::new();
        // 2 per second: a pair every 1010ms, each answered in 2ms.
        for i in 0..20 {
            s.ok(i * 1010, i * 1010 + 2, rl("r", &format!("a{i}")));
            s.ok(i * 1010 + 1, i * 1010 + 3, rl("r", &format!("b{i}")));
            // Denials and errors do not count.
            s.fail(i * 1010 + 5, i * 1010 + 6, rl("r", &format!("d{i}")));
        }
        let v = run(&s);
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(v.stats["admissions"], 40);
        assert_eq!(v.stats["keys"], 1);
    }

    #[test]
    fn detects_an_overrun() {
        let mut s = Script::new();
        s.ok(0, 2, rl("r", "a"));
        s.ok(300, 302, rl("r", "b"));
        // Another key's admissions are its own.
        s.ok(350, 352, rl("other", "x"));
        s.ok(600, 601, rl("r", "c"));
        s.ok(2000, 2001, rl("r", "d"));
        let v = run(&s);
        assert_eq!(v.violations_total, 1, "{:?}", v.violations);
        assert!(
            v.violations[0].contains("3 admissions certainly within [0.000ms, 601.000ms]"),
            "{}",
            v.violations[0]
        );
        assert_eq!(v.stats["overrun_windows"], 1);
    }

    #[test]
    fn a_limit_of_one_allows_one_per_period() {
        let mut s = Script::new();
        s.ok(0, 1, rl("r", "a").rate(1, 1000, 0));
        s.ok(1020, 1021, rl("r", "b").rate(1, 1000, 0));
        assert!(run(&s).ok);
        s.ok(1900, 1901, rl("r", "c").rate(1, 1000, 0));
        assert!(!run(&s).ok);
    }

    #[test]
    fn a_server_clock_running_fast_is_no_violation() {
        // Three in 992ms of real time: up to 1002ms on a clock 1% fast,
        // plus a millisecond of truncation.
        let mut s = Script::new();
        s.ok(0, 1, rl("r", "a"));
        s.ok(500, 501, rl("r", "b"));
        s.ok(991, 992, rl("r", "c"));
        assert!(run(&s).ok);
        let exact = Params {
            rho: 0.0,
            slack_ms: 0,
        };
        assert!(!check(&s.ops(), &exact).ok, "on an exact clock it is one");
        // Within 985ms it is a violation even on a fast clock.
        let mut s = Script::new();
        s.ok(0, 1, rl("r", "a"));
        s.ok(500, 501, rl("r", "b"));
        s.ok(984, 985, rl("r", "c"));
        assert!(!run(&s).ok);
    }

    #[test]
    fn retries_count_once_and_slow_answers_are_not_certain() {
        let mut s = Script::new();
        s.info(0, 1, rl("r", "a"));
        s.ok(2, 3, rl("r", "a"));
        s.ok(4, 5, rl("r", "a"));
        s.ok(10, 11, rl("r", "b"));
        // Its admission may have come more than a period after the first.
        s.ok(5, 1500, rl("r", "c"));
        // Unknown outcomes are not certain admissions.
        s.info(20, 30, rl("r", "d"));
        let v = run(&s);
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(v.stats["admissions"], 3);
    }

    #[test]
    fn gcra_throttles_are_not_judged_here() {
        let mut s = Script::new();
        for i in 0..5 {
            s.ok(i, i + 1, thr("t", &format!("a{i}")).rate(1, 1000, 9));
        }
        let v = run(&s);
        assert!(v.ok);
        assert_eq!(v.stats["admissions"], 0);
    }

    /// Every window start against every window end.
    fn brute_force(admissions: &[(u64, u64)], limit: u32, window_ns: u64) -> usize {
        let mut starts: Vec<u64> = admissions.iter().map(|a| a.0).collect();
        starts.sort_unstable();
        starts.dedup();
        starts
            .iter()
            .filter(|&&s| {
                admissions.iter().any(|&(_, e)| {
                    e >= s && e - s < window_ns && {
                        let inside = admissions
                            .iter()
                            .filter(|&&(i, c)| i >= s && c <= e)
                            .count();
                        inside > limit as usize
                    }
                })
            })
            .count()
    }

    #[test]
    fn the_sweep_agrees_with_brute_force() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |bound: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % bound
        };
        let mut violating = 0;
        for round in 0..300 {
            let rule = Rule {
                limit: 1 + (round % 3) as u32,
                period_ms: 1000,
            };
            let p = Params {
                rho: [0.0, 0.01, 0.5][round % 3],
                slack_ms: [0, 1, 200][round % 4 % 3],
            };
            let n = 1 + next(30) as usize;
            let span_ms = 100 + next(8000);
            let admissions: Vec<(u64, u64)> = (0..n)
                .map(|_| {
                    // Whole milliseconds, so that starts and ends tie.
                    let invoke_ns = next(span_ms) * MS;
                    (invoke_ns, invoke_ns + next(400) * MS)
                })
                .collect();
            let window_ns = rule.window_ns(&p);
            let fast = overruns(&admissions, rule.limit, window_ns);
            let slow = brute_force(&admissions, rule.limit, window_ns);
            assert_eq!(fast.windows, slow, "round {round}: {admissions:?}");
            if let Some((from_ns, to_ns, count)) = fast.earliest {
                let inside = admissions
                    .iter()
                    .filter(|&&(i, c)| i >= from_ns && c <= to_ns)
                    .count() as u64;
                assert_eq!(inside, count, "round {round}: the window reported");
                assert!(to_ns - from_ns < window_ns);
            }
            violating += usize::from(slow > 0);
        }
        assert!(violating > 30, "the data should exercise both answers");
        assert!(violating < 270, "the data should exercise both answers");
    }
}
