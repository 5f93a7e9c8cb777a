//! `zombie_extend`: no extend succeeds whose effect must have come after
//! its lease had certainly expired or been released.
//!
//! The latest a lease can expire starts at its acquire's ok completion
//! plus `ttl·(1+ρ)`. Walking its extends in invoke order, an ok extend moves
//! that to at least its completion plus its TTL·(1+ρ); an extend of unknown
//! outcome invoked before the current bound may apply at that bound at the
//! latest, adding its TTL·(1+ρ). An ok extend invoked after the bound, or
//! after a release of the lease completed ok, is a violation. Retries of an
//! extend count from their first attempt, since the server replays the
//! first attempt's outcome.

use serde_json::json;

use crate::history::{fmt_ms, Completed};

use super::leases::Leases;
use super::{Findings, Params, Verdict};

/// Checks `ops`; see the module doc.
pub fn check(ops: &[Completed], params: &Params) -> Verdict {
    let leases = Leases::build(ops);
    let mut found = Findings::default();
    let mut extends = 0;
    for lease in leases.all.iter().filter(|l| l.granted_ns.is_some()) {
        extends += lease.extends.len();
        for z in lease.expiry_high(params).1 {
            let why = if z.released {
                "released ok by"
            } else {
                "certainly expired by"
            };
            found.add(format!(
                "key {}: {} extended ok by an extend invoked at {}, but it was {why} {}",
                lease.key,
                lease.name(),
                fmt_ms(z.invoke_ns),
                fmt_ms(z.ended_ns)
            ));
        }
    }
    let stats = json!({
        "leases": leases.all.len(),
        "extends": extends,
        "extends_of_unknown_leases": leases.unknown_refs,
    });
    found.verdict("zombie_extend", stats)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn run(s: &Script) -> Verdict {
        check(&s.ops(), &Params::default())
    }

    #[test]
    fn a_chain_of_timely_extends_passes() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.ok(900, 910, ext("k", "e1", 1));
        s.ok(1800, 1810, ext("k", "e2", 1));
        s.ok(2700, 2710, ext("k", "e3", 1));
        s.ok(2800, 2810, rel("k", "r", 1).held(true));
        let v = run(&s);
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(v.stats["extends"], 3);
    }

    #[test]
    fn an_unanswered_extend_may_keep_the_lease_alive() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.info(900, 2000, ext("k", "e1", 1));
        s.ok(1900, 1910, ext("k", "e2", 1));
        assert!(run(&s).ok);
    }

    #[test]
    fn a_retried_extend_counts_from_its_first_attempt() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.info(900, 2000, ext("k", "e1", 1));
        // The replayed ok answers for the attempt at 900ms.
        s.ok(3500, 3510, ext("k", "e1", 1));
        assert!(run(&s).ok);
    }

    #[test]
    fn detects_an_extend_after_certain_expiry() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.ok(500, 505, ext("k", "e1", 1));
        s.ok(1400, 1405, ext("k", "e2", 1));
        assert!(run(&s).ok);
        s.ok(2700, 2705, ext("k", "e3", 1));
        let v = run(&s);
        assert!(!v.ok);
        assert!(
            v.violations[0].contains("certainly expired"),
            "{}",
            v.violations[0]
        );
    }

    #[test]
    fn detects_an_extend_after_release() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.ok(100, 105, rel("k", "r", 1).held(true));
        s.ok(200, 205, ext("k", "e", 1));
        let v = run(&s);
        assert!(!v.ok);
        assert!(
            v.violations[0].contains("released ok"),
            "{}",
            v.violations[0]
        );
    }
}
