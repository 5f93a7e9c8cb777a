//! Workloads, independent of any target: which scope and constraints each
//! request names, and whether a cycle ends with a release.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One constraint of a request, as every target understands it.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// At most `limit` holders at once.
    Concurrency { key: String, limit: u32 },
    /// GCRA: `limit` per `period_ms`, `burst` beyond the first at one instant.
    Throttle {
        key: String,
        limit: u32,
        period_ms: u64,
        burst: u32,
    },
}

/// One acquire of amount 1 (every workload leases one unit).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub scope: String,
    pub constraints: Vec<Constraint>,
    pub ttl_ms: u64,
    /// Wait up to this long for capacity instead of being denied.
    pub wait_ms: Option<u64>,
}

impl Request {
    pub fn concurrency_keys(&self) -> impl Iterator<Item = (&str, u32)> {
        self.constraints.iter().filter_map(|c| match c {
            Constraint::Concurrency { key, limit } => Some((key.as_str(), *limit)),
            Constraint::Throttle { .. } => None,
        })
    }

    /// Every parameter but the wait, which the idempotency fingerprint
    /// leaves out (as Leasehold's does).
    pub fn fingerprint(&self) -> String {
        let mut out = format!("{}|{}", self.scope, self.ttl_ms);
        for c in &self.constraints {
            match c {
                Constraint::Concurrency { key, limit } => out += &format!("|c:{key}:{limit}"),
                Constraint::Throttle {
                    key,
                    limit,
                    period_ms,
                    burst,
                } => out += &format!("|t:{key}:{limit}:{period_ms}:{burst}"),
            }
        }
        out
    }
}

/// The workloads of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Acquire + release on one hot concurrency key (limit 1000).
    Hot,
    /// Acquire + release on one of 100,000 concurrency keys (limit 10
    /// each), one scope per key.
    Spread,
    /// One acquire over an account's concurrency, one of 100 function
    /// concurrency keys and the account's throttle; then release.
    Multi,
    /// Throttle decisions alone (one of 1,000 keys, 100/s with burst 10):
    /// an acquire without a release, granted or denied.
    Throttle,
    /// Acquires that wait (up to 2 s) on a saturated key (limit 5), then
    /// release at once.
    Wait,
}

pub const WORKLOADS: [Workload; 5] = [
    Workload::Hot,
    Workload::Spread,
    Workload::Multi,
    Workload::Throttle,
    Workload::Wait,
];

/// Distinct keys of the spread workload.
pub const SPREAD_KEYS: u64 = 100_000;
/// Function keys of the multi workload.
pub const MULTI_FUNCTIONS: u64 = 100;
/// Throttle keys of the throttle workload.
pub const THROTTLE_KEYS: u64 = 1_000;
/// Lease ttl of the lease workloads: far longer than any cycle.
const LEASE_TTL_MS: u64 = 30_000;
/// Throttle grants hold nothing; their leases may end soon.
const THROTTLE_TTL_MS: u64 = 1_000;
/// How long a waiting acquire waits at most.
pub const WAIT_MS: u64 = 2_000;
/// The saturated key's limit in the wait workload.
pub const WAIT_LIMIT: u32 = 5;

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Hot => "hot",
            Workload::Spread => "spread",
            Workload::Multi => "multi",
            Workload::Throttle => "throttle",
            Workload::Wait => "wait",
        }
    }

    /// Whether a granted acquire is followed by a release.
    pub fn releases(self) -> bool {
        self != Workload::Throttle
    }

    /// What one cycle is called in reports.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::Throttle => "decisions",
            _ => "cycles",
        }
    }

    pub fn wait(self) -> Option<Duration> {
        (self == Workload::Wait).then(|| Duration::from_millis(WAIT_MS))
    }

    /// The next request, drawing keys from `rng`.
    pub fn request(self, rng: &mut Rng) -> Request {
        let (scope, constraints, ttl_ms) = match self {
            Workload::Hot => (
                "hot".to_string(),
                vec![concurrency("jobs", 1_000)],
                LEASE_TTL_MS,
            ),
            Workload::Spread => (
                format!("spread-{}", rng.below(SPREAD_KEYS)),
                vec![concurrency("jobs", 10)],
                LEASE_TTL_MS,
            ),
            Workload::Multi => (
                "acct-1".to_string(),
                vec![
                    concurrency("account", 1_000),
                    concurrency(&format!("fn-{}", rng.below(MULTI_FUNCTIONS)), 10),
                    throttle("account-rate", 100_000, 1_000, 1_000),
                ],
                LEASE_TTL_MS,
            ),
            Workload::Throttle => (
                format!("thr-{}", rng.below(THROTTLE_KEYS)),
                vec![throttle("api", 100, 1_000, 10)],
                THROTTLE_TTL_MS,
            ),
            Workload::Wait => (
                "wait".to_string(),
                vec![concurrency("slots", WAIT_LIMIT)],
                LEASE_TTL_MS,
            ),
        };
        Request {
            scope,
            constraints,
            ttl_ms,
            wait_ms: self.wait().map(|w| w.as_millis() as u64),
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn concurrency(key: &str, limit: u32) -> Constraint {
    Constraint::Concurrency {
        key: key.to_string(),
        limit,
    }
}

fn throttle(key: &str, limit: u32, period_ms: u64, burst: u32) -> Constraint {
    Constraint::Throttle {
        key: key.to_string(),
        limit,
        period_ms,
        burst,
    }
}

/// SplitMix64: a small, seedable generator, so every client draws its own
/// reproducible key sequence.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (the modulo bias is negligible for our n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_draw_their_keys_within_range() {
        let mut rng = Rng::new(7);
        for _ in 0..1_000 {
            let r = Workload::Spread.request(&mut rng);
            let i: u64 = r.scope.trim_start_matches("spread-").parse().unwrap();
            assert!(i < SPREAD_KEYS);
            let r = Workload::Multi.request(&mut rng);
            assert_eq!(r.constraints.len(), 3);
            assert_eq!(r.concurrency_keys().count(), 2);
        }
    }

    #[test]
    fn only_the_wait_workload_waits_and_only_throttle_skips_release() {
        let mut rng = Rng::new(1);
        for w in WORKLOADS {
            assert_eq!(w.request(&mut rng).wait_ms.is_some(), w == Workload::Wait);
            assert_eq!(w.releases(), w != Workload::Throttle);
        }
    }

    #[test]
    fn fingerprint_covers_limits_but_not_the_wait() {
        let mut rng = Rng::new(3);
        let a = Workload::Wait.request(&mut rng);
        let mut b = a.clone();
        b.wait_ms = None;
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.constraints = vec![concurrency("slots", WAIT_LIMIT + 1)];
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
