//! `lease_safety`: per key, at no instant are more than `limit` leases
//! certainly held, and no lease is reported lost while certainly held.
//!
//! A lease is certainly held from its acquire's ok completion until the
//! earliest of: the invoke of a release that may have ended it, and its
//! shortest possible expiry (the earliest invoke of its acquire plus
//! `ttl/(1+ρ)`, moved by ok extends; see the module doc of [`super`]). A
//! sweep over these intervals counts overlaps. Each acquire is one unit;
//! a key's limit is the largest any of its acquires carried, since a limit
//! that shrinks leaves existing holders in place.
//!
//! An extend failing with `lease_lost` that completes while its lease is
//! certainly held means the server dropped a live lease: also a violation.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use crate::history::{fmt_ms, Completed};

use super::leases::{Lease, LeaseId, Leases};
use super::{Findings, Params, Verdict};

/// A lease's certainly-held interval `[from, until)`.
struct Held {
    id: LeaseId,
    from_ns: u64,
    until_ns: u64,
}

/// Checks `ops`; see the module doc.
pub fn check(ops: &[Completed], params: &Params) -> Verdict {
    let leases = Leases::build(ops);
    let mut found = Findings::default();
    let mut by_key: BTreeMap<&str, (u32, Vec<Held>)> = BTreeMap::new();
    for lease in &leases.all {
        let (Some(id), Some(from_ns)) = (lease.id, lease.granted_ns) else {
            continue;
        };
        let until_ns = lease.certain_until_ns(params);
        check_not_lost(lease, from_ns, until_ns, &mut found);
        let (limit, held) = by_key.entry(lease.key).or_default();
        *limit = (*limit).max(lease.limit);
        if until_ns > from_ns {
            held.push(Held {
                id,
                from_ns,
                until_ns,
            });
        }
    }
    let mut most = 0;
    for (key, (limit, held)) in &by_key {
        most = most.max(sweep(key, *limit, held, &mut found));
    }
    let stats = json!({
        "keys": by_key.len(),
        "leases": by_key.values().map(|(_, held)| held.len()).sum::<usize>(),
        "most_held_at_once": most,
    });
    found.verdict("lease_safety", stats)
}

fn check_not_lost(lease: &Lease<'_>, from_ns: u64, until_ns: u64, found: &mut Findings) {
    let Some((invoke_ns, lost_ns)) = lease.lost else {
        return;
    };
    if invoke_ns >= from_ns && lost_ns < until_ns {
        found.add(format!(
            "key {}: {} reported lost at {} but certainly held until {}",
            lease.key,
            lease.name(),
            fmt_ms(lost_ns),
            fmt_ms(until_ns)
        ));
    }
}

/// Counts overlapping intervals of one key; reports each time the count
/// rises above `limit`. Returns the most held at once.
fn sweep(key: &str, limit: u32, held: &[Held], found: &mut Findings) -> usize {
    // Ends sort before starts at the same instant: intervals are half-open.
    let mut edges: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * held.len());
    for (i, h) in held.iter().enumerate() {
        edges.push((h.from_ns, true, i));
        edges.push((h.until_ns, false, i));
    }
    edges.sort_unstable();
    let limit = limit as usize;
    let mut active: BTreeSet<usize> = BTreeSet::new();
    let mut most = 0;
    for (t_ns, starts, i) in edges {
        if !starts {
            active.remove(&i);
            continue;
        }
        active.insert(i);
        most = most.max(active.len());
        if active.len() == limit + 1 {
            let list: Vec<String> = active
                .iter()
                .map(|&j| {
                    let h = &held[j];
                    format!(
                        "{}/{} [{}, {})",
                        h.id.0,
                        h.id.1,
                        fmt_ms(h.from_ns),
                        fmt_ms(h.until_ns)
                    )
                })
                .collect();
            found.add(format!(
                "key {key}: {} leases certainly held at {} over limit {limit}: {}",
                active.len(),
                fmt_ms(t_ns),
                list.join(", ")
            ));
        }
    }
    most
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn run(s: &Script) -> Verdict {
        check(&s.ops(), &Params::default())
    }

    #[test]
    fn handoffs_by_release_and_by_expiry_pass() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.ok(100, 104, rel("k", "r1", 1).held(true));
        s.ok(101, 106, acq("k", "b").lease(2));
        // Lease 2 is never released: it is certainly held only until
        // ~1090ms, when it may have expired, so lease 3 may follow.
        s.ok(1095, 1100, acq("k", "c").lease(3));
        let v = run(&s);
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(v.stats["most_held_at_once"], 1);
    }

    #[test]
    fn limit_two_allows_two_but_not_three() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").limit(2).lease(1));
        s.ok(1, 6, acq("k", "b").limit(2).lease(2));
        assert!(run(&s).ok);
        s.ok(2, 7, acq("k", "c").limit(2).lease(3));
        let v = run(&s);
        assert!(!v.ok);
        assert!(v.violations[0].contains("3 leases"), "{}", v.violations[0]);
    }

    #[test]
    fn detects_a_double_grant() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.ok(400, 405, acq("k", "b").lease(2));
        let v = run(&s);
        assert!(!v.ok);
        assert_eq!(v.violations_total, 1);
        assert!(v.violations[0].contains("key k"), "{}", v.violations[0]);
    }

    #[test]
    fn detects_a_grant_while_an_extended_lease_is_held() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.ok(800, 805, ext("k", "e", 1));
        // Without the extend lease 1 might have expired at ~990ms.
        s.ok(1500, 1505, acq("k", "b").lease(2));
        assert!(!run(&s).ok);
    }

    #[test]
    fn an_uncertain_release_ends_certainty() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.info(100, 900, rel("k", "r", 1));
        s.ok(200, 205, acq("k", "b").lease(2));
        assert!(run(&s).ok);
    }

    #[test]
    fn detects_a_lease_lost_while_certainly_held() {
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.fail(300, 302, ext("k", "e", 1).lost());
        let v = run(&s);
        assert!(!v.ok);
        assert!(
            v.violations[0].contains("reported lost"),
            "{}",
            v.violations[0]
        );
        // After its expiry, lost is the right answer.
        let mut s = Script::new();
        s.ok(0, 5, acq("k", "a").lease(1));
        s.fail(1000, 1002, ext("k", "e", 1).lost());
        assert!(run(&s).ok);
    }
}
