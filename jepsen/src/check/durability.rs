//! `durability`: an acknowledged lease survives a SIGKILL of every node.
//!
//! Ops of phase `durability` are inspects issued after every node was
//! killed and restarted. Each lease of the inspected key certainly held at
//! the inspect's completion — its acquire completed ok before the inspect
//! was invoked, no release was invoked before the inspect completed, and
//! its shortest possible expiry is after that — must be among the holders
//! the inspect reports. A key inspected in this phase but never answered is
//! also a violation: the check must not pass by default.
//!
//! Cost: each answered inspect scans its key's leases; the runner inspects
//! each key once or a few times, so this stays linear in the history.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use crate::history::{fmt_ms, Completed, Op, Outcome, Phase};

use super::leases::{Lease, Leases};
use super::{Findings, Params, Verdict};

/// Checks `ops`; see the module doc.
pub fn check(ops: &[Completed], params: &Params) -> Verdict {
    let leases = Leases::build(ops);
    let mut by_key: BTreeMap<&str, Vec<&Lease<'_>>> = BTreeMap::new();
    for lease in leases.all.iter().filter(|l| l.id.is_some()) {
        by_key.entry(lease.key).or_default().push(lease);
    }
    let mut found = Findings::default();
    let mut inspected: BTreeMap<&str, bool> = BTreeMap::new();
    let mut verified = 0;
    for c in ops.iter().filter(|c| c.phase == Phase::Durability) {
        let Op::Inspect(inspect) = &c.op else {
            continue;
        };
        let answered = inspected.entry(inspect.key.as_str()).or_default();
        let (Outcome::Ok, Some(done_ns), Some(holders)) =
            (c.outcome, c.complete_ns, &inspect.holders)
        else {
            continue;
        };
        *answered = true;
        let holders: BTreeSet<(u32, u64)> = holders.iter().map(|&h| (inspect.slot, h)).collect();
        let key_leases = by_key
            .get(inspect.key.as_str())
            .map_or(&[][..], Vec::as_slice);
        for lease in key_leases {
            let (Some(id), Some(granted_ns)) = (lease.id, lease.granted_ns) else {
                continue;
            };
            let held_until_ns = lease.certain_until_ns(params);
            if granted_ns >= c.invoke_ns || held_until_ns <= done_ns {
                continue;
            }
            verified += 1;
            if !holders.contains(&id) {
                found.add(format!(
                    "key {}: {} acquired ok at {} and certainly held until {} is missing after restart from {}",
                    inspect.key,
                    lease.name(),
                    fmt_ms(granted_ns),
                    fmt_ms(held_until_ns),
                    c.describe()
                ));
            }
        }
    }
    for (key, _) in inspected.iter().filter(|(_, answered)| !**answered) {
        found.add(format!("key {key}: no inspect answered after restart"));
    }
    let stats = json!({ "keys_inspected": inspected.len(), "leases_verified": verified });
    found.verdict("durability", stats)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn run(s: &Script) -> Verdict {
        check(&s.ops(), &Params::default())
    }

    /// Leases 1 and 2 held long; 3 released; 4 expired.
    fn before_the_crash() -> Script {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").limit(5).ttl(60_000).lease(1));
        s.ok(1, 6, acq("k", "b").limit(5).ttl(60_000).lease(2));
        s.ok(2, 7, acq("k", "c").limit(5).ttl(60_000).lease(3));
        s.ok(10, 12, rel("k", "r", 3).held(true));
        s.ok(3, 8, acq("k", "d").limit(5).ttl(100).lease(4));
        s.phase(Phase::Durability);
        s
    }

    #[test]
    fn surviving_leases_pass() {
        let mut s = before_the_crash();
        s.info(5000, 6000, inspect("k", &[]));
        s.ok(7000, 7002, inspect("k", &[1, 2]));
        let v = run(&s);
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(v.stats["leases_verified"], 2);
    }

    #[test]
    fn detects_a_lost_acknowledged_lease() {
        let mut s = before_the_crash();
        s.ok(7000, 7002, inspect("k", &[1]));
        let v = run(&s);
        assert_eq!(v.violations_total, 1);
        assert!(v.violations[0].contains("lease 0/2"), "{}", v.violations[0]);
    }

    #[test]
    fn detects_an_unanswered_inspect() {
        let mut s = before_the_crash();
        s.info(7000, 9000, inspect("k", &[]));
        let v = run(&s);
        assert!(!v.ok);
        assert!(
            v.violations[0].contains("no inspect answered"),
            "{}",
            v.violations[0]
        );
    }
}
