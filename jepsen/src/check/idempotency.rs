//! `idempotency`: a retry returns the original outcome and never spends
//! capacity twice. Every ok attempt of one acquire (same key and
//! idempotency key) names the same lease and token, every ok attempt of one
//! throttle admission the same token, no lease is named by two different
//! acquires, and no acquire or throttle is both granted and denied: the
//! server records a denial under its idempotency key for longer than a run,
//! so an attempt held back by a fault never grants after its retry heard
//! "denied".

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use crate::history::{by_idem, Completed, Op, Outcome};

use super::leases::LeaseId;
use super::{Findings, Verdict};

/// What an ok attempt answered: its lease, if an acquire, and token.
type Answer = (Option<LeaseId>, Option<u64>);

/// Checks `ops`; see the module doc.
pub fn check(ops: &[Completed]) -> Verdict {
    let mut found = Findings::default();
    let mut named: BTreeMap<LeaseId, BTreeSet<(&str, &str)>> = BTreeMap::new();
    let mut retried = 0;
    for (id, attempts) in by_idem(ops) {
        let answers: BTreeSet<Answer> = attempts
            .ops
            .iter()
            .filter(|c| c.outcome == Outcome::Ok)
            .filter_map(|c| match &c.op {
                Op::Acquire(a) => Some((a.lease.map(|l| (a.slot, l)), a.token)),
                Op::Throttle(t) => Some((None, t.token)),
                _ => None,
            })
            .collect();
        if attempts.ops.len() > 1 {
            retried += 1;
        }
        if answers.len() > 1 {
            let list: Vec<String> = answers
                .iter()
                .map(|(lease, token)| match lease {
                    Some((s, l)) => format!("lease {s}/{l} token {token:?}"),
                    None => format!("token {token:?}"),
                })
                .collect();
            found.add(format!(
                "{} {} idem={}: retries answered differently: {}",
                id.f,
                id.key,
                id.idem,
                list.join("; ")
            ));
        }
        if let (Some(granted), Some(denied)) = (attempts.first_ok(), attempts.first_denial()) {
            found.add(format!(
                "{} {} idem={}: both granted and denied: {} and {}",
                id.f,
                id.key,
                id.idem,
                granted.describe(),
                denied.describe()
            ));
        }
        for lease in answers.into_iter().filter_map(|(lease, _)| lease) {
            named.entry(lease).or_default().insert((id.key, id.idem));
        }
    }
    for ((slot, lease), acquires) in &named {
        if acquires.len() > 1 {
            let list: Vec<String> = acquires
                .iter()
                .map(|(key, idem)| format!("{key} idem={idem}"))
                .collect();
            found.add(format!(
                "lease {slot}/{lease} granted to different acquires: {}",
                list.join(", ")
            ));
        }
    }
    let stats = json!({ "leases": named.len(), "retried_ops": retried });
    found.verdict("idempotency", stats)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn run(s: &Script) -> Verdict {
        check(&s.ops())
    }

    #[test]
    fn retries_with_the_original_answer_pass() {
        let mut s = Script::new();
        s.info(0, 50, acq("k", "a"));
        s.ok(60, 65, acq("k", "a").lease(1));
        s.ok(70, 75, acq("k", "a").lease(1));
        // A denial is recorded: every retry hears it again.
        s.info(80, 85, acq("k", "b"));
        s.fail(90, 95, acq("k", "b"));
        s.fail(100, 105, acq("k", "b"));
        s.ok(0, 5, thr("t", "x").token(3));
        s.ok(6, 9, thr("t", "x").token(3));
        let v = run(&s);
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(v.stats["retried_ops"], 3);
    }

    #[test]
    fn detects_a_duplicated_idempotent_grant() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.ok(10, 15, acq("k", "a").lease(2));
        let v = run(&s);
        assert_eq!(v.violations_total, 1);
        assert!(
            v.violations[0].contains("retries answered differently"),
            "{}",
            v.violations[0]
        );
    }

    #[test]
    fn detects_a_grant_of_an_acquire_that_was_denied() {
        // The original attempt, held back by a pause, is granted after its
        // retry heard "denied".
        let mut s = Script::new();
        s.ok(0, 900, acq("k", "a").lease(1));
        s.fail(100, 105, acq("k", "a"));
        let v = run(&s);
        assert_eq!(v.violations_total, 1, "{:?}", v.violations);
        assert!(
            v.violations[0].contains("both granted and denied"),
            "{}",
            v.violations[0]
        );
        let mut s = Script::new();
        s.ok(0, 5, thr("t", "x").token(3));
        s.fail(6, 9, thr("t", "x"));
        assert!(!run(&s).ok);
    }

    #[test]
    fn detects_a_throttle_retry_admitted_twice() {
        let mut s = Script::new();
        s.ok(0, 5, thr("t", "x").token(3));
        s.ok(6, 9, thr("t", "x").token(4));
        assert!(!run(&s).ok);
    }

    #[test]
    fn detects_one_lease_for_two_acquires() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.ok(10, 15, acq("k", "b").lease(1));
        let v = run(&s);
        assert_eq!(v.violations_total, 1);
        assert!(
            v.violations[0].contains("different acquires"),
            "{}",
            v.violations[0]
        );
    }
}
