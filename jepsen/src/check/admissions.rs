//! The certain admissions of throttled keys, gathered alike for the GCRA
//! and rate-limit checkers.

use std::collections::BTreeMap;

use serde_json::json;

use crate::history::{by_idem, Completed, Op, Throttle, ThrottleKind};

/// The admissions of one key.
pub(crate) struct Admissions<R> {
    /// The loosest rule its requests carried.
    pub rule: R,
    /// (first invoke, first ok completion) of each admission.
    pub admitted: Vec<(u64, u64)>,
}

/// Every key's ok admissions of `kind`, retries of one counting once, each
/// key judged by the loosest of the rules (`rule_of`) its requests carried.
pub(crate) fn by_key<R: Copy>(
    ops: &[Completed],
    kind: ThrottleKind,
    rule_of: impl Fn(&Throttle) -> R,
    loosest: impl Fn(R, R) -> R,
) -> BTreeMap<&str, Admissions<R>> {
    let mut keys: BTreeMap<&str, Admissions<R>> = BTreeMap::new();
    for (id, attempts) in by_idem(ops) {
        let (Some(first), Some(invoke_ns)) = (attempts.first_ok(), attempts.effect_from_ns())
        else {
            continue;
        };
        let (Op::Throttle(t), Some(done_ns)) = (&first.op, first.complete_ns) else {
            continue;
        };
        if t.kind != kind {
            continue;
        }
        let rule = rule_of(t);
        let key = keys.entry(id.key).or_insert(Admissions {
            rule,
            admitted: Vec::new(),
        });
        key.rule = loosest(key.rule, rule);
        key.admitted.push((invoke_ns, done_ns));
    }
    keys
}

/// The stats of a window checker's verdict.
pub(crate) fn stats<R>(keys: &BTreeMap<&str, Admissions<R>>, windows: usize) -> serde_json::Value {
    json!({
        "keys": keys.len(),
        "admissions": keys.values().map(|k| k.admitted.len()).sum::<usize>(),
        "overrun_windows": windows,
    })
}
