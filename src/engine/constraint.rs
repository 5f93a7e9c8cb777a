//! Per-kind arithmetic: how much a key admits at an instant, when it will
//! admit a given amount, and how a grant changes it.
//!
//! Every read here is lazy about expiry: holders whose expiry has passed and
//! window entries that have left the window are skipped, whether or not the
//! scavenger has dropped them yet. So reads at any instant after the last
//! applied one are exact without a write.

use std::collections::BTreeSet;

use super::store::{KeyRecord, KeyState, ScopeId, WindowEntry};
use super::types::{Constraint, Holder, Usage};
use crate::limits::{RATE_LIMIT_ENTRIES_MAX, RATE_LIMIT_SLOTS_PER_PERIOD};

const NS_PER_MS: u128 = 1_000_000;

/// A constraint of a request, read against its key's record at `now_ms`.
pub(crate) struct View<'a> {
    pub c: &'a Constraint,
    pub rec: Option<&'a KeyRecord>,
    pub now_ms: u64,
    /// A paused key admits nothing, whatever its usage.
    pub paused: bool,
}

/// GCRA parameters of a throttle, in nanoseconds: the emission interval `t`
/// (rounded up, so the rate is never exceeded) and the tolerance `tau`.
struct Gcra {
    t: u128,
    tau: u128,
}

impl Gcra {
    fn new(limit: u32, period_ms: u64, burst: u32) -> Self {
        let t = (u128::from(period_ms) * NS_PER_MS).div_ceil(u128::from(limit));
        Gcra {
            t,
            tau: t * u128::from(burst),
        }
    }
}

fn ceil_ms(ns: u128) -> u64 {
    u64::try_from(ns.div_ceil(NS_PER_MS)).expect("throttle instants fit in u64 ms")
}

/// Units of `holders` still held at `now_ms`.
fn live_units(holders: &BTreeSet<Holder>, used: u64, now_ms: u64) -> u64 {
    let expired: u64 = holders
        .iter()
        .take_while(|h| h.expires_at_ms <= now_ms)
        .map(|h| h.units)
        .sum();
    used - expired
}

/// The earliest instant at which live holders' units fall to `target` or
/// below, walking expiries in order. `None` if they never do.
fn holders_fall_to(holders: &BTreeSet<Holder>, live: u64, target: u64, now_ms: u64) -> Option<u64> {
    if live <= target {
        return Some(now_ms);
    }
    let mut left = live;
    for h in holders.iter().filter(|h| h.expires_at_ms > now_ms) {
        left -= h.units;
        if left <= target {
            return Some(h.expires_at_ms);
        }
    }
    None
}

/// Units that count at `now_ms` for a request carrying `period_ms`: each
/// grant counts for the shorter of that period and its own, so a period
/// change never depends on what the scavenger has already forgotten.
fn window_units(window: &[WindowEntry], period_ms: u64, now_ms: u64) -> u64 {
    window
        .iter()
        .filter(|e| e.leaves_at_ms(period_ms) > now_ms)
        .map(|e| u64::from(e.units))
        .sum()
}

impl View<'_> {
    fn holding(&self) -> (u64, &BTreeSet<Holder>) {
        static EMPTY: BTreeSet<Holder> = BTreeSet::new();
        match self.rec {
            Some(KeyRecord {
                state: KeyState::Concurrency { used, .. } | KeyState::Semaphore { used, .. },
                holders,
                ..
            }) => (live_units(holders, *used, self.now_ms), holders),
            _ => (0, &EMPTY),
        }
    }

    fn capacity(&self) -> u64 {
        match self.rec {
            Some(KeyRecord {
                state: KeyState::Semaphore { capacity, .. },
                ..
            }) => *capacity,
            _ => 0,
        }
    }

    fn tat_ns(&self) -> u128 {
        let now_ns = u128::from(self.now_ms) * NS_PER_MS;
        match self.rec {
            Some(KeyRecord {
                state: KeyState::Throttle { tat_ns, .. },
                ..
            }) => (*tat_ns).max(now_ns),
            _ => now_ns,
        }
    }

    fn window(&self) -> &[WindowEntry] {
        match self.rec {
            Some(KeyRecord {
                state: KeyState::RateLimit { window, .. },
                ..
            }) => window,
            _ => &[],
        }
    }

    /// Units counted now, the limit they count against, and the whole units
    /// of amount that could be granted now.
    pub fn usage_parts(&self) -> (u64, u64, u64) {
        let (used, limit, available) = self.unpaused_usage_parts();
        (used, limit, if self.paused { 0 } else { available })
    }

    fn unpaused_usage_parts(&self) -> (u64, u64, u64) {
        match *self.c {
            Constraint::Concurrency { limit, .. } => {
                let (used, _) = self.holding();
                (used, limit.into(), u64::from(limit).saturating_sub(used))
            }
            Constraint::Semaphore { weight, .. } => {
                let (used, _) = self.holding();
                let cap = self.capacity();
                (used, cap, cap.saturating_sub(used) / u64::from(weight))
            }
            Constraint::Throttle {
                limit,
                period_ms,
                burst,
                ..
            } => {
                let g = Gcra::new(limit, period_ms, burst);
                let now_ns = u128::from(self.now_ms) * NS_PER_MS;
                let ahead = self.tat_ns() - now_ns;
                let used = ahead.div_ceil(g.t);
                let available = (g.tau + g.t).saturating_sub(ahead) / g.t;
                let bucket = u64::from(burst) + 1;
                (used as u64, bucket, available as u64)
            }
            Constraint::RateLimit {
                limit, period_ms, ..
            } => {
                let used = window_units(self.window(), period_ms, self.now_ms);
                (used, limit.into(), u64::from(limit).saturating_sub(used))
            }
        }
    }

    /// Milliseconds until this constraint admits `amount` by time alone.
    pub fn retry_after_ms(&self, amount: u32) -> Option<u64> {
        if self.paused {
            return None;
        }
        let amount = u64::from(amount);
        let at_ms = match *self.c {
            Constraint::Concurrency { limit, .. } => {
                let (used, holders) = self.holding();
                holders_fall_to(
                    holders,
                    used,
                    u64::from(limit).checked_sub(amount)?,
                    self.now_ms,
                )?
            }
            Constraint::Semaphore { weight, .. } => {
                let (used, holders) = self.holding();
                let need = amount * u64::from(weight);
                holders_fall_to(
                    holders,
                    used,
                    self.capacity().checked_sub(need)?,
                    self.now_ms,
                )?
            }
            Constraint::Throttle {
                limit,
                period_ms,
                burst,
                ..
            } => {
                let g = Gcra::new(limit, period_ms, burst);
                let now_ns = u128::from(self.now_ms) * NS_PER_MS;
                // Admits `amount` once tat + amount·t ≤ at + tau + t.
                let at_ns = (self.tat_ns() + u128::from(amount) * g.t).saturating_sub(g.tau + g.t);
                ceil_ms(at_ns.max(now_ns))
            }
            Constraint::RateLimit {
                limit, period_ms, ..
            } => {
                let target = u64::from(limit).checked_sub(amount)?;
                let mut leaving: Vec<(u64, u64)> = self
                    .window()
                    .iter()
                    .map(|e| (e.leaves_at_ms(period_ms), u64::from(e.units)))
                    .filter(|(at, _)| *at > self.now_ms)
                    .collect();
                leaving.sort_unstable();
                let mut left: u64 = leaving.iter().map(|(_, units)| units).sum();
                let mut at = self.now_ms;
                for (leaves_at, units) in leaving {
                    if left <= target {
                        break;
                    }
                    left -= units;
                    at = leaves_at;
                }
                at
            }
        };
        Some(at_ms - self.now_ms)
    }

    pub fn usage(&self, retry_for: Option<u32>) -> Usage {
        let (used, limit, available) = self.usage_parts();
        Usage {
            kind: self.c.kind(),
            key: self.c.key().to_string(),
            used,
            limit,
            available,
            retry_after_ms: retry_for.and_then(|m| self.retry_after_ms(m)),
            paused: self.paused,
        }
    }
}

/// A fresh record for a key of `scope` that has none yet.
pub(crate) fn new_record(scope: ScopeId, c: &Constraint) -> KeyRecord {
    let state = match *c {
        Constraint::Concurrency { limit, .. } => KeyState::Concurrency {
            used: 0,
            limit: limit.into(),
        },
        Constraint::Semaphore { .. } => KeyState::Semaphore {
            used: 0,
            capacity: 0,
        },
        Constraint::Throttle {
            limit,
            period_ms,
            burst,
            ..
        } => KeyState::Throttle {
            tat_ns: 0,
            limit,
            period_ms,
            burst,
        },
        Constraint::RateLimit {
            limit, period_ms, ..
        } => KeyState::RateLimit {
            window: Vec::new(),
            limit,
            period_ms,
        },
    };
    KeyRecord {
        scope,
        state,
        holders: BTreeSet::new(),
        sweep_at_ms: None,
    }
}

/// Spends `amount` of `c` on `rec` at `now_ms` for lease `holder.lease_id`.
/// Returns the units the lease now holds on the key (0 for kinds that hold
/// nothing: throttle and rate limit spend instead).
pub(crate) fn reserve(
    rec: &mut KeyRecord,
    c: &Constraint,
    amount: u32,
    mut holder: Holder,
    now_ms: u64,
) -> u64 {
    let amount64 = u64::from(amount);
    match (&mut rec.state, c) {
        (KeyState::Concurrency { used, limit }, Constraint::Concurrency { limit: l, .. }) => {
            *limit = (*l).into();
            holder.units = amount64;
            *used += amount64;
        }
        (KeyState::Semaphore { used, .. }, Constraint::Semaphore { weight, .. }) => {
            holder.units = amount64 * u64::from(*weight);
            *used += holder.units;
        }
        (
            KeyState::Throttle {
                tat_ns,
                limit,
                period_ms: period,
                burst,
            },
            Constraint::Throttle {
                limit: l,
                period_ms,
                burst: b,
                ..
            },
        ) => {
            let g = Gcra::new(*l, *period_ms, *b);
            let now_ns = u128::from(now_ms) * NS_PER_MS;
            *tat_ns = (*tat_ns).max(now_ns) + u128::from(amount) * g.t;
            (*limit, *period, *burst) = (*l, *period_ms, *b);
            return 0;
        }
        (
            KeyState::RateLimit {
                window,
                limit,
                period_ms,
            },
            Constraint::RateLimit {
                limit: l,
                period_ms: p,
                ..
            },
        ) => {
            (*limit, *period_ms) = (*l, *p);
            window.retain(|e| e.at_ms + e.period_ms > now_ms);
            let slot = (*p / RATE_LIMIT_SLOTS_PER_PERIOD).max(1);
            let entry = WindowEntry {
                at_ms: now_ms.div_ceil(slot) * slot,
                units: amount,
                period_ms: *p,
            };
            record_window(window, entry);
            return 0;
        }
        _ => unreachable!("key records are created for the kind of their key id"),
    }
    rec.holders.insert(holder);
    holder.units
}

fn record_window(window: &mut Vec<WindowEntry>, entry: WindowEntry) {
    match window.last_mut() {
        Some(last) if last.at_ms == entry.at_ms && last.period_ms == entry.period_ms => {
            last.units += entry.units
        }
        _ => window.push(entry),
    }
    if window.len() > RATE_LIMIT_ENTRIES_MAX {
        // Merging into the later entry, under the longer period, only makes
        // the oldest units count longer: never fewer than granted.
        let oldest = window.remove(0);
        let next = &mut window[0];
        next.units += oldest.units;
        next.period_ms = next.period_ms.max(oldest.period_ms);
    }
}

/// When the scavenger should next look at a spending key (throttle, rate
/// limit): the instant it becomes idle. `None` for holding kinds, which are
/// dropped when their last holder ends.
pub(crate) fn idle_at_ms(rec: &KeyRecord) -> Option<u64> {
    match &rec.state {
        KeyState::Throttle { tat_ns, .. } => Some(ceil_ms(*tat_ns)),
        KeyState::RateLimit { window, .. } => Some(
            window
                .iter()
                .map(|e| e.at_ms + e.period_ms)
                .max()
                .unwrap_or(0),
        ),
        KeyState::Concurrency { .. } | KeyState::Semaphore { .. } => None,
    }
}

/// A record that holds nothing a later request could observe.
pub(crate) fn is_idle(rec: &KeyRecord, now_ms: u64) -> bool {
    match &rec.state {
        KeyState::Concurrency { used, .. } => *used == 0,
        KeyState::Semaphore { used, capacity } => *used == 0 && *capacity == 0,
        KeyState::Throttle { .. } | KeyState::RateLimit { .. } => {
            idle_at_ms(rec).is_some_and(|at| at <= now_ms)
        }
    }
}
