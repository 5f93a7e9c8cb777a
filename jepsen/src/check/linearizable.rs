//! `linearizable`: on keys where nothing expires, acquire and release
//! behave as one sequential semaphore.
//!
//! A key is checked when every acquire of it carries a TTL of at least
//! [`NO_EXPIRY_TTL_MS_MIN`] (an hour), far longer than a run: its leases
//! end only by release, so the server's answers follow from the order of
//! operations alone. The model's state is the set of held lease ids:
//!
//! - acquire ok (lease `l`, limit `n`): needs fewer than `n` held and `l`
//!   not held; adds `l`.
//! - acquire denied (fail, no error): needs at least `n` held.
//! - release ok, `was_held` true: needs `l` held; removes it. `was_held`
//!   false: needs `l` not held. `was_held` absent: removes `l` if held.
//! - an acquire or release of unknown outcome may take effect at any
//!   instant after its invoke, or never; an unanswered acquire that took
//!   effect holds a lease no client can name or release.
//! - attempts sharing an idempotency key are one operation with one
//!   outcome, which the server records and replays: a denied acquire is
//!   one denial, decided between the earliest invoke among its attempts
//!   (those that did not fail with a definite error) and the first denial
//!   heard, and grants nothing. (One both granted and denied is an
//!   `idempotency` violation; here its denials stand as their own ops.)
//!
//! The search is Wing & Gong's, with Lowe's memoization of (linearized
//! set, state): depth-first over which pending operation takes effect
//! next, among those invoked before the earliest completion still owed,
//! backtracking when that completion is reached first. Operations of
//! unknown outcome with the same effect are interchangeable, so only one of
//! each kind is tried at a point (see `Optionals`); without this, every
//! choice among a run's unanswered acquires would be searched. Keys are
//! independent (P-compositionality), so each is searched alone. A key
//! whose search exceeds [`SEARCH_STEPS_MAX`] steps is reported undecided in
//! `stats` and does not fail the verdict.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::json;

use crate::history::{by_idem, Completed, Op};

use super::{Findings, Verdict};

/// Keys whose acquires all carry at least this TTL are checked.
pub const NO_EXPIRY_TTL_MS_MIN: u64 = 3_600_000;

/// Ops linearized per key, backtracking included, before giving up on it.
pub const SEARCH_STEPS_MAX: usize = 2_000_000;

/// The lease id standing for any lease an unanswered acquire was granted:
/// no client can name or release one, so they are interchangeable.
const UNNAMED: u64 = u64::MAX;

/// What one operation does to the set of held leases.
#[derive(Debug, Clone, Copy)]
enum Step {
    Grant { lease: u64, limit: usize },
    Deny { limit: usize },
    Release { lease: u64, was_held: Option<bool> },
}

/// One operation of a key, as the model sees it.
#[derive(Debug)]
struct LinOp<'a> {
    invoke_ns: u64,
    /// `None`: it may take effect at any instant after its invoke, or never.
    complete_ns: Option<u64>,
    step: Step,
    source: &'a Completed,
}

#[derive(Debug, PartialEq)]
enum Search {
    Linearizable,
    /// No order fits; the longest partial order found got stuck at the
    /// completion of op `stuck`, with `held` leases.
    Violation {
        linearized: usize,
        stuck: usize,
        held: Vec<u64>,
    },
    Undecided,
}

/// Checks `ops`; see the module doc.
pub fn check(ops: &[Completed]) -> Verdict {
    let keys = model_ops(ops);
    let mut found = Findings::default();
    let mut undecided = Vec::new();
    for (key, key_ops) in &keys {
        match search(key_ops, SEARCH_STEPS_MAX) {
            Search::Linearizable => {}
            Search::Undecided => undecided.push(*key),
            Search::Violation {
                linearized,
                stuck,
                held,
            } => found.add(format!(
                "key {key}: not linearizable: no order of its {} ops fits; the furthest placed {linearized} answered ops, then nothing fits before {} completes, with held leases [{}]",
                key_ops.len(),
                key_ops[stuck].source.describe(),
                describe_held(&held)
            )),
        }
    }
    let stats = json!({
        "keys": keys.len(),
        "ops": keys.values().map(Vec::len).sum::<usize>(),
        "undecided_keys": undecided,
    });
    found.verdict("linearizable", stats)
}

fn describe_held(held: &[u64]) -> String {
    let names: Vec<String> = held
        .iter()
        .map(|&l| {
            if l == UNNAMED {
                "unnamed".to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    names.join(", ")
}

/// The model's operations of every key that never expires, by invoke.
fn model_ops<'a>(ops: &'a [Completed]) -> BTreeMap<&'a str, Vec<LinOp<'a>>> {
    let mut no_expiry: BTreeMap<&str, bool> = BTreeMap::new();
    for c in ops {
        if let Op::Acquire(a) = &c.op {
            *no_expiry.entry(a.key.as_str()).or_insert(true) &= a.ttl_ms >= NO_EXPIRY_TTL_MS_MIN;
        }
    }
    let mut keys: BTreeMap<&str, Vec<LinOp<'_>>> = no_expiry
        .iter()
        .filter(|(_, &never)| never)
        .map(|(&key, _)| (key, Vec::new()))
        .collect();
    for (id, attempts) in by_idem(ops) {
        let Some(key_ops) = keys.get_mut(id.key) else {
            continue;
        };
        let answer = attempts.first_ok();
        let deny = |c: &'a Completed, invoke_ns: u64| match &c.op {
            Op::Acquire(a) => Some(LinOp {
                invoke_ns,
                complete_ns: c.complete_ns,
                step: Step::Deny {
                    limit: a.limit as usize,
                },
                source: c,
            }),
            _ => None,
        };
        match (answer, attempts.first_denial(), attempts.decided_from_ns()) {
            (None, Some(denied), Some(from_ns)) => {
                key_ops.extend(deny(denied, from_ns));
                continue;
            }
            (Some(_), Some(_), _) => {
                let denials = attempts.ops.iter().filter(|c| c.is_denial());
                key_ops.extend(denials.filter_map(|&c| deny(c, c.invoke_ns)));
            }
            _ => {}
        }
        let Some(invoke_ns) = attempts.effect_from_ns() else {
            continue;
        };
        let source = answer.unwrap_or(attempts.ops[0]);
        let step = match &source.op {
            Op::Acquire(a) => {
                let lease = match a.lease {
                    Some(lease) if answer.is_some() => lease,
                    _ => UNNAMED,
                };
                Step::Grant {
                    lease,
                    limit: a.limit as usize,
                }
            }
            Op::Release(r) => Step::Release {
                lease: r.lease,
                was_held: answer.and(r.was_held),
            },
            _ => continue,
        };
        key_ops.push(LinOp {
            invoke_ns,
            complete_ns: answer.and_then(|c| c.complete_ns),
            step,
            source,
        });
    }
    for key_ops in keys.values_mut() {
        key_ops.sort_by_key(|op| op.invoke_ns);
    }
    keys
}

/// The state after `step`, or `None` if the step cannot happen in `held`.
/// An optional operation is applied only when it changes the state: having
/// no effect is the same as never happening.
fn apply(step: Step, optional: bool, held: &[u64]) -> Option<Vec<u64>> {
    let at = held.binary_search(&lease_of(step));
    match step {
        Step::Grant { lease, limit } => {
            let i = match at {
                Ok(_) if lease != UNNAMED => return None,
                Ok(i) | Err(i) => i,
            };
            if held.len() >= limit {
                return None;
            }
            let mut next = held.to_vec();
            next.insert(i, lease);
            Some(next)
        }
        Step::Deny { limit } => (held.len() >= limit).then(|| held.to_vec()),
        Step::Release { was_held, .. } => match (at, was_held) {
            (Ok(i), None | Some(true)) => {
                let mut next = held.to_vec();
                next.remove(i);
                Some(next)
            }
            (Err(_), None | Some(false)) if !optional => Some(held.to_vec()),
            _ => None,
        },
    }
}

fn lease_of(step: Step) -> u64 {
    match step {
        Step::Grant { lease, .. } | Step::Release { lease, .. } => lease,
        Step::Deny { .. } => 0,
    }
}

/// The invokes and completions of a key's owed ops in time order. A
/// doubly linked list over them lets the search take an op out (once
/// linearized) and put it back (on backtrack) in O(1), as in Wing & Gong's
/// algorithm.
struct Entries {
    /// (op, is invoke), by time; at equal times invokes come first, so an op
    /// invoked as another completes counts as concurrent with it.
    entries: Vec<(usize, bool)>,
    /// `next[e]`, `prev[e]`: neighbours; index `entries.len()` is the
    /// sentinel that starts and ends the circular list.
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The completion entry of each owed op.
    completion: Vec<usize>,
}

impl Entries {
    fn new(ops: &[LinOp<'_>]) -> Entries {
        let mut timed: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            if let Some(done_ns) = op.complete_ns {
                timed.push((op.invoke_ns, false, i));
                timed.push((done_ns, true, i));
            }
        }
        timed.sort_unstable();
        let entries: Vec<(usize, bool)> = timed.iter().map(|&(_, done, i)| (i, !done)).collect();
        let mut completion = vec![usize::MAX; ops.len()];
        for (e, &(i, invoke)) in entries.iter().enumerate() {
            if !invoke {
                completion[i] = e;
            }
        }
        let len = entries.len() + 1;
        Entries {
            next: (0..len).map(|e| (e + 1) % len).collect(),
            prev: (0..len).map(|e| (e + len - 1) % len).collect(),
            entries,
            completion,
        }
    }

    fn first(&self) -> usize {
        self.next[self.entries.len()]
    }

    /// The op whose completion comes first among those not linearized.
    fn horizon(&self) -> Option<usize> {
        let mut e = self.first();
        while e != self.entries.len() {
            match self.entries[e] {
                (i, false) => return Some(i),
                _ => e = self.next[e],
            }
        }
        None
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    /// Undoes the latest `unlink(e)` not yet undone.
    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        self.prev[n] = e;
    }

    /// Takes out the op of invoke entry `e`.
    fn lift(&mut self, e: usize) {
        self.unlink(e);
        self.unlink(self.completion[self.entries[e].0]);
    }

    fn unlift(&mut self, e: usize) {
        self.relink(self.completion[self.entries[e].0]);
        self.relink(e);
    }
}

/// Optional ops of one effect: unanswered acquires of one limit, or
/// unanswered releases of one lease. Every one linearized was invoked
/// before the horizon of its moment and the others stay available ever
/// after, so they are interchangeable: the search tries only the earliest
/// not yet used, and names the linearized set by how many of each class it
/// used rather than which.
struct Class {
    /// Its ops, by invoke.
    ops: Vec<usize>,
    used: usize,
}

/// The optional ops of a key by class.
#[derive(Default)]
struct Optionals {
    classes: Vec<Class>,
    /// Classes of unanswered acquires, one per limit.
    grants: Vec<usize>,
    /// The class of unanswered releases of each lease.
    releases: HashMap<u64, usize>,
}

impl Optionals {
    fn new(ops: &[LinOp<'_>]) -> Optionals {
        let mut by_effect: BTreeMap<(bool, u64), Vec<usize>> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            let effect = match (op.complete_ns, op.step) {
                (Some(_), _) | (None, Step::Deny { .. }) => continue,
                (None, Step::Grant { limit, .. }) => (false, limit as u64),
                (None, Step::Release { lease, .. }) => (true, lease),
            };
            by_effect.entry(effect).or_default().push(i);
        }
        let mut optionals = Optionals::default();
        for ((release, x), ops) in by_effect {
            let c = optionals.classes.len();
            optionals.classes.push(Class { ops, used: 0 });
            if release {
                optionals.releases.insert(x, c);
            } else {
                optionals.grants.push(c);
            }
        }
        optionals
    }
}

/// What the search tried at a point, to resume after it on backtrack.
#[derive(Debug, Clone, Copy)]
enum Choice {
    /// The owed op of this invoke entry.
    Owed(usize),
    /// The `k`th optional candidate, of this class.
    Optional { k: usize, class: usize },
}

/// A pseudo-random 128-bit name for `x`; sums of names name multisets.
fn key(x: u64) -> u128 {
    (u128::from(mix(x)) << 64) | u128::from(mix(!x))
}

/// A 128-bit name of a state for the memo.
fn state_key(held: &[u64]) -> u128 {
    let (mut a, mut b) = (0x243f_6a88_85a3_08d3_u64, 0x1319_8a2e_0370_7344_u64);
    for &lease in held {
        a = mix(a ^ lease);
        b = mix(b.wrapping_add(lease));
    }
    (u128::from(a) << 64) | u128::from(b)
}

/// SplitMix64's finalizer.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The search's position: the state reached and how it got there.
struct Searcher<'o, 'a> {
    ops: &'o [LinOp<'a>],
    list: Entries,
    optionals: Optionals,
    held: Vec<u64>,
    /// The sum of the names of what was linearized: owed ops by index,
    /// optional ops by class.
    linearized: u128,
    owed_done: usize,
    /// Each choice made and the state before it.
    path: Vec<(Choice, Vec<u64>)>,
    /// (linearized set, state) pairs explored, by their 128-bit names: a
    /// collision is as unlikely as guessing a random 128-bit key.
    seen: HashSet<u128>,
}

impl Searcher<'_, '_> {
    /// Optional classes that may take effect now, in a fixed order:
    /// unanswered acquires, then unanswered releases of leases held.
    fn optional_candidates(&self) -> Vec<usize> {
        let Some(horizon) = self.list.horizon() else {
            return Vec::new();
        };
        let until_ns = self.ops[horizon].complete_ns.unwrap_or(u64::MAX);
        let o = &self.optionals;
        let releases = self.held.iter().filter_map(|l| o.releases.get(l));
        o.grants
            .iter()
            .chain(releases)
            .copied()
            .filter(|&c| {
                let class = &o.classes[c];
                let next = class.ops.get(class.used);
                next.is_some_and(|&i| self.ops[i].invoke_ns <= until_ns)
            })
            .collect()
    }

    /// Linearizes op `i` if the model allows it there and the result is
    /// new; `class_key` names it in the linearized set.
    fn try_step(&mut self, choice: Choice, i: usize, class_key: u128) -> bool {
        let optional = self.ops[i].complete_ns.is_none();
        let Some(next) = apply(self.ops[i].step, optional, &self.held) else {
            return false;
        };
        let linearized = self.linearized.wrapping_add(class_key);
        if !self.seen.insert(linearized ^ state_key(&next)) {
            return false;
        }
        self.path
            .push((choice, std::mem::replace(&mut self.held, next)));
        self.linearized = linearized;
        match choice {
            Choice::Owed(e) => {
                self.list.lift(e);
                self.owed_done += 1;
            }
            Choice::Optional { class, .. } => self.optionals.classes[class].used += 1,
        }
        true
    }

    /// Undoes the latest choice; returns it, or `None` at the root.
    fn backtrack(&mut self) -> Option<Choice> {
        let (choice, before) = self.path.pop()?;
        self.held = before;
        let name = match choice {
            Choice::Owed(e) => {
                self.list.unlift(e);
                self.owed_done -= 1;
                key(self.list.entries[e].0 as u64)
            }
            Choice::Optional { class, .. } => {
                self.optionals.classes[class].used -= 1;
                key(u64::MAX - class as u64)
            }
        };
        self.linearized = self.linearized.wrapping_sub(name);
        Some(choice)
    }
}

/// Where the search looks next at the current point.
enum Cursor {
    /// Owed ops from this list entry on.
    Owed(usize),
    /// Optional candidates from the `k`th on.
    Optional(usize),
}

/// Searches for an order of `ops` the model accepts, linearizing at most
/// `budget` ops (counting retries after backtracking).
///
/// At each point it tries the owed ops invoked before the horizon (the
/// first completion still owed), in time order, then one optional op per
/// class; when none fits or is new, it backtracks.
fn search(ops: &[LinOp<'_>], budget: usize) -> Search {
    let owed_total = ops.iter().filter(|op| op.complete_ns.is_some()).count();
    let mut s = Searcher {
        ops,
        list: Entries::new(ops),
        optionals: Optionals::new(ops),
        held: Vec::new(),
        linearized: 0,
        owed_done: 0,
        path: Vec::new(),
        seen: HashSet::new(),
    };
    let mut deepest: Option<(usize, usize, Vec<u64>)> = None;
    let mut steps = 0;
    let mut cursor = Cursor::Owed(s.list.first());
    while s.owed_done < owed_total {
        let stepped = match cursor {
            Cursor::Owed(e) => match s.list.entries[e] {
                (i, true) => {
                    if !s.try_step(Choice::Owed(e), i, key(i as u64)) {
                        cursor = Cursor::Owed(s.list.next[e]);
                        continue;
                    }
                    true
                }
                (_, false) => {
                    cursor = Cursor::Optional(0);
                    continue;
                }
            },
            Cursor::Optional(k) => match s.optional_candidates().get(k) {
                Some(&class) => {
                    let c = &s.optionals.classes[class];
                    let i = c.ops[c.used];
                    let choice = Choice::Optional { k, class };
                    if !s.try_step(choice, i, key(u64::MAX - class as u64)) {
                        cursor = Cursor::Optional(k + 1);
                        continue;
                    }
                    true
                }
                None => false,
            },
        };
        if stepped {
            steps += 1;
            if steps > budget {
                return Search::Undecided;
            }
            cursor = Cursor::Owed(s.list.first());
            continue;
        }
        // Nothing fits before the horizon's op completes: backtrack.
        if deepest.as_ref().is_none_or(|d| s.owed_done > d.0) {
            let stuck = s.list.horizon().expect("an owed op remains");
            deepest = Some((s.owed_done, stuck, s.held.clone()));
        }
        cursor = match s.backtrack() {
            Some(Choice::Owed(e)) => Cursor::Owed(s.list.next[e]),
            Some(Choice::Optional { k, .. }) => Cursor::Optional(k + 1),
            None => {
                let (linearized, stuck, held) = deepest.expect("just set");
                return Search::Violation {
                    linearized,
                    stuck,
                    held,
                };
            }
        };
    }
    Search::Linearizable
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    const HOUR_MS: u64 = NO_EXPIRY_TTL_MS_MIN;

    fn run(s: &Script) -> Verdict {
        check(&s.ops())
    }

    fn lock(idem: &str) -> crate::history::Acquire {
        acq("k", idem).ttl(HOUR_MS)
    }

    /// Acquire, a denial, a release, and a grant that must follow it.
    fn handoff() -> Script {
        let mut s = Script::new();
        s.ok(0, 10, lock("a").lease(1));
        s.fail(12, 18, lock("d"));
        s.ok(20, 30, rel("k", "r", 1).held(true));
        s.ok(5, 40, lock("c").lease(2));
        s
    }

    #[test]
    fn a_concurrent_handoff_passes() {
        let v = run(&handoff());
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(v.stats["ops"], 4);
        assert_eq!(v.stats["undecided_keys"], json!([]));
    }

    #[test]
    fn releases_report_whether_held_and_retries_are_one_op() {
        let mut s = handoff();
        s.ok(50, 55, rel("k", "r2", 1).held(false));
        s.info(60, 70, rel("k", "r3", 2));
        s.ok(75, 80, rel("k", "r3", 2).held(true));
        s.ok(85, 90, lock("e").lease(3));
        s.ok(91, 92, lock("e").lease(3));
        let v = run(&s);
        assert!(v.ok, "{:?}", v.violations);
    }

    #[test]
    fn detects_a_denial_when_nothing_can_be_held() {
        let mut s = handoff();
        s.ok(50, 55, rel("k", "r2", 2).held(true));
        s.fail(60, 65, lock("x"));
        let v = run(&s);
        assert!(!v.ok);
        assert!(
            v.violations[0].contains("acquire k idem=x"),
            "{}",
            v.violations[0]
        );
        // An unanswered acquire could have taken the key.
        s.info(56, 100, lock("y"));
        assert!(run(&s).ok);
    }

    #[test]
    fn a_retry_hears_the_denial_decided_for_its_first_attempt() {
        let mut s = Script::new();
        s.ok(0, 10, lock("a").lease(1));
        s.info(12, 18, lock("d"));
        s.ok(20, 30, rel("k", "r", 1).held(true));
        // Decided while lease 1 was held, heard after it was released.
        s.fail(40, 45, lock("d"));
        // And the denied acquire holds nothing.
        s.ok(50, 60, lock("c").lease(2));
        let v = run(&s);
        assert!(v.ok, "{:?}", v.violations);
        // A denial cannot be decided before its first attempt.
        let mut s = Script::new();
        s.ok(0, 10, lock("a").lease(1));
        s.ok(20, 30, rel("k", "r", 1).held(true));
        s.info(32, 38, lock("d"));
        s.fail(40, 45, lock("d"));
        assert!(!run(&s).ok);
    }

    #[test]
    fn detects_a_double_grant() {
        let mut s = Script::new();
        s.ok(0, 10, lock("a").lease(1));
        s.ok(20, 30, lock("b").lease(2));
        assert!(!run(&s).ok);
    }

    #[test]
    fn detects_a_lease_released_twice() {
        let mut s = Script::new();
        s.ok(0, 10, lock("a").lease(1));
        s.ok(20, 30, rel("k", "r1", 1).held(true));
        s.ok(40, 50, rel("k", "r2", 1).held(true));
        assert!(!run(&s).ok);
    }

    #[test]
    fn keys_that_expire_are_not_checked() {
        let mut s = Script::new();
        s.ok(0, 10, acq("k", "a").lease(1));
        s.ok(20, 30, acq("k", "b").ttl(HOUR_MS).lease(2));
        let v = run(&s);
        assert!(v.ok);
        assert_eq!(v.stats["keys"], 0);
    }

    #[test]
    fn an_exhausted_budget_is_undecided() {
        let mut s = Script::new();
        for i in 0..8 {
            s.info(i, 1000, lock(&format!("i{i}")).limit(8));
        }
        s.fail(500, 600, lock("d").limit(8));
        let ops = s.ops();
        let keys = model_ops(&ops);
        assert_eq!(search(&keys["k"], 3), Search::Undecided);
        assert_eq!(search(&keys["k"], SEARCH_STEPS_MAX), Search::Linearizable);
    }
}
