//! `gcra`: a throttle admits no more than GCRA allows in any window.
//!
//! For `limit` per `period_ms` with `burst`, the emission interval is
//! `T = period/limit` and the tolerance `τ = burst·T`. In a span the server
//! measures as `D` it admits at most `⌊(D+τ)/T⌋ + 1`. A real window of
//! length `L` is at most `L·(1+ρ)` plus slack on the server's clock, so
//! the ok admissions certainly inside `[s, e]` — both invoke and completion
//! in it; retries of one admission count once, from their first invoke to
//! their first ok completion — number at most
//! `⌊(L·(1+ρ) + slack + τ)/T⌋ + 1`.
//!
//! Every window from an admission's invoke to one's completion is checked
//! in O(n log n) per key: sweeping the window start `s` down through the
//! invokes, a segment tree over the completions holds, for each end `e`,
//! `count(s, e)·T/(1+ρ) − e`, and the bound is broken for some `e` exactly
//! when the tree's maximum exceeds `(T + τ + slack)/(1+ρ) − s`.
//!
//! A key whose requests carry different rates is judged by the loosest:
//! the smallest `T` and the largest `τ` seen. Rate-limit admissions (the
//! same op, `kind: "rate_limit"`) are [`super::rate_limit`]'s.

use crate::history::{fmt_ms, Completed, ThrottleKind};

use super::admissions::{self, Admissions};
use super::fenwick::Fenwick;
use super::{Findings, Params, Verdict};

/// Checks `ops`; see the module doc.
pub fn check(ops: &[Completed], params: &Params) -> Verdict {
    let keys = admissions::by_key(
        ops,
        ThrottleKind::Gcra,
        |t| Rule::new(t.limit, t.period_ms, t.burst),
        Rule::loosest,
    );
    let mut found = Findings::default();
    let mut windows = 0;
    for (key, Admissions { rule, admitted }) in &keys {
        let over = overruns(admitted, *rule, params);
        windows += over.windows;
        if let Some((from_ns, to_ns, count)) = over.first {
            found.add(format!(
                "key {key}: {count} admissions certainly within [{}, {}], GCRA allows {}",
                fmt_ms(from_ns),
                fmt_ms(to_ns),
                rule.allowed(to_ns - from_ns, params)
            ));
        }
    }
    let stats = admissions::stats(&keys, windows);
    found.verdict("gcra", stats)
}

/// GCRA parameters in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Rule {
    t_ns: f64,
    tau_ns: f64,
}

impl Rule {
    fn new(limit: u32, period_ms: u64, burst: u32) -> Rule {
        let t_ns = period_ms as f64 * 1e6 / f64::from(limit.max(1));
        Rule {
            t_ns,
            tau_ns: f64::from(burst) * t_ns,
        }
    }

    fn loosest(self, other: Rule) -> Rule {
        Rule {
            t_ns: self.t_ns.min(other.t_ns),
            tau_ns: self.tau_ns.max(other.tau_ns),
        }
    }

    /// Most admissions certainly inside a real window of `window_ns`.
    fn allowed(&self, window_ns: u64, p: &Params) -> u64 {
        let server_ns = window_ns as f64 * (1.0 + p.rho) + p.slack_ns() as f64;
        ((server_ns + self.tau_ns) / self.t_ns).floor() as u64 + 1
    }
}

/// Windows breaking the bound: how many window starts have one, and the
/// latest-starting such window with its count.
#[derive(Debug, Default, PartialEq)]
struct Overruns {
    windows: usize,
    first: Option<(u64, u64, u64)>,
}

/// Checks every window over `admissions` (invoke, completion) of one key.
fn overruns(admissions: &[(u64, u64)], rule: Rule, p: &Params) -> Overruns {
    let n = admissions.len();
    let mut by_done: Vec<usize> = (0..n).collect();
    by_done.sort_by_key(|&j| admissions[j].1);
    let mut position = vec![0; n];
    for (pos, &j) in by_done.iter().enumerate() {
        position[j] = pos;
    }
    let ends: Vec<u64> = by_done.iter().map(|&j| admissions[j].1).collect();
    let mut by_invoke: Vec<usize> = (0..n).collect();
    by_invoke.sort_by_key(|&j| std::cmp::Reverse(admissions[j].0));

    let rate = 1.0 + p.rho;
    let step = rule.t_ns / rate;
    let threshold = (rule.t_ns + rule.tau_ns + p.slack_ns() as f64) / rate;
    let mut tree = MaxTree::new(n);
    let mut added = Fenwick::new(n);
    let mut over = Overruns::default();
    for group in by_invoke.chunk_by(|&a, &b| admissions[a].0 == admissions[b].0) {
        for &j in group {
            let pos = position[j];
            added.add(pos);
            tree.set(
                pos,
                added.count_below(pos + 1) as f64 * step - ends[pos] as f64,
            );
            tree.add_from(pos + 1, step);
        }
        let from_ns = admissions[group[0]].0;
        let (best, pos) = tree.top();
        if best + (from_ns as f64) <= threshold {
            continue;
        }
        let count = ((best + ends[pos] as f64) / step).round() as u64;
        if count > rule.allowed(ends[pos] - from_ns, p) {
            over.windows += 1;
            over.first.get_or_insert((from_ns, ends[pos], count));
        }
    }
    over
}

/// Maxima over positions with lazy adds to ranges, and where the maximum is.
struct MaxTree {
    len: usize,
    max: Vec<f64>,
    at: Vec<usize>,
    pending: Vec<f64>,
}

impl MaxTree {
    /// `len` positions, all at −∞.
    fn new(len: usize) -> MaxTree {
        let nodes = 4 * len.max(1);
        MaxTree {
            len,
            max: vec![f64::NEG_INFINITY; nodes],
            at: vec![0; nodes],
            pending: vec![0.0; nodes],
        }
    }

    fn top(&self) -> (f64, usize) {
        (self.max[1], self.at[1])
    }

    fn set(&mut self, pos: usize, value: f64) {
        self.set_in(1, 0, self.len, pos, value);
    }

    /// Adds `delta` at every position from `from` on.
    fn add_from(&mut self, from: usize, delta: f64) {
        if from < self.len {
            self.add_in(1, 0, self.len, from, delta);
        }
    }

    fn set_in(&mut self, node: usize, lo: usize, hi: usize, pos: usize, value: f64) {
        if hi - lo == 1 {
            (self.max[node], self.at[node]) = (value, lo);
            return;
        }
        self.push(node);
        let mid = (lo + hi) / 2;
        if pos < mid {
            self.set_in(2 * node, lo, mid, pos, value);
        } else {
            self.set_in(2 * node + 1, mid, hi, pos, value);
        }
        self.pull(node);
    }

    fn add_in(&mut self, node: usize, lo: usize, hi: usize, from: usize, delta: f64) {
        if hi <= from {
            return;
        }
        if from <= lo {
            self.max[node] += delta;
            self.pending[node] += delta;
            return;
        }
        self.push(node);
        let mid = (lo + hi) / 2;
        self.add_in(2 * node, lo, mid, from, delta);
        self.add_in(2 * node + 1, mid, hi, from, delta);
        self.pull(node);
    }

    fn push(&mut self, node: usize) {
        let delta = std::mem::take(&mut self.pending[node]);
        for child in [2 * node, 2 * node + 1] {
            self.max[child] += delta;
            self.pending[child] += delta;
        }
    }

    fn pull(&mut self, node: usize) {
        let (l, r) = (2 * node, 2 * node + 1);
        let best = if self.max[l] >= self.max[r] { l } else { r };
        (self.max[node], self.at[node]) = (self.max[best], self.at[best]);
    }
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
    fn admissions_at_the_rate_pass() {
        let mut s = Script::new();
        // 10 per second: one every 100ms, each taking 2ms to answer.
        for i in 0..50 {
            s.ok(i * 100, i * 100 + 2, thr("t", &format!("a{i}")));
        }
        // Denials and errors do not count.
        s.fail(101, 102, thr("t", "d"));
        let v = run(&s);
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(v.stats["admissions"], 50);
    }

    #[test]
    fn a_burst_is_allowed_once() {
        let mut s = Script::new();
        for i in 0..4 {
            s.ok(i, i + 1, thr("t", &format!("a{i}")).rate(10, 1000, 3));
        }
        assert!(run(&s).ok);
        s.ok(10, 11, thr("t", "a4").rate(10, 1000, 3));
        let v = run(&s);
        assert!(!v.ok);
        assert!(
            v.violations[0].contains("5 admissions"),
            "{}",
            v.violations[0]
        );
    }

    #[test]
    fn detects_an_overrun() {
        let mut s = Script::new();
        for i in 0..20 {
            s.ok(i * 100, i * 100 + 1, thr("t", &format!("a{i}")));
        }
        s.ok(1050, 1052, thr("t", "extra"));
        let v = run(&s);
        assert_eq!(v.violations_total, 1);
        assert!(v.stats["overrun_windows"].as_u64().unwrap() >= 1);
    }

    #[test]
    fn retries_count_once_and_slow_answers_are_not_certain() {
        let mut s = Script::new();
        s.ok(0, 1, thr("t", "a"));
        s.ok(2, 3, thr("t", "a"));
        // Its admission may have come 100ms after the first.
        s.ok(1, 500, thr("t", "b"));
        assert!(run(&s).ok);
    }

    #[test]
    fn rate_limit_admissions_are_not_judged_here() {
        let mut s = Script::new();
        // Two at once is within a rate limit of 2, beyond GCRA with no burst.
        s.ok(0, 1, rl("r", "a"));
        s.ok(0, 1, rl("r", "b"));
        let v = run(&s);
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(v.stats["admissions"], 0);
    }

    /// Every window start against every window end.
    fn brute_force(admissions: &[(u64, u64)], rule: Rule, p: &Params) -> usize {
        let mut starts: Vec<u64> = admissions.iter().map(|a| a.0).collect();
        starts.sort_unstable();
        starts.dedup();
        starts
            .iter()
            .filter(|&&s| {
                admissions.iter().any(|&(_, e)| {
                    e >= s && {
                        let inside = admissions
                            .iter()
                            .filter(|&&(i, c)| i >= s && c <= e)
                            .count() as u64;
                        inside > rule.allowed(e - s, p)
                    }
                })
            })
            .count()
    }

    #[test]
    fn the_sweep_agrees_with_brute_force() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |bound: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % bound
        };
        let mut violating = 0;
        for round in 0..200 {
            let rule = Rule::new(10, 1000, (round % 3) as u32);
            let p = Params {
                rho: [0.0, 0.01][round % 2],
                slack_ms: (round % 4 / 2) as u64,
            };
            let n = 1 + next(40) as usize;
            let span_ms = 100 + next(3000);
            let admissions: Vec<(u64, u64)> = (0..n)
                .map(|_| {
                    let invoke_ns = next(span_ms * MS);
                    (invoke_ns, invoke_ns + next(60 * MS))
                })
                .collect();
            let fast = overruns(&admissions, rule, &p);
            let slow = brute_force(&admissions, rule, &p);
            assert_eq!(fast.windows, slow, "round {round}: {admissions:?}");
            violating += usize::from(slow > 0);
        }
        assert!(violating > 20, "the data should exercise both answers");
        assert!(violating < 180, "the data should exercise both answers");
    }
}
