//! Pieces shared by several commands' output: constraint usage as a table
//! and as JSON, and server timestamps for people.

use std::time::{SystemTime, UNIX_EPOCH};

use leasehold::proto::v1::{self, ConstraintKind};
use serde_json::{json, Value};

use super::table::Table;

/// The kind as the flags and `inspect` spell it.
pub fn kind_name(kind: i32) -> &'static str {
    match ConstraintKind::try_from(kind) {
        Ok(ConstraintKind::Concurrency) => "concurrency",
        Ok(ConstraintKind::Throttle) => "throttle",
        Ok(ConstraintKind::RateLimit) => "rate_limit",
        Ok(ConstraintKind::Semaphore) => "semaphore",
        Ok(ConstraintKind::Unspecified) | Err(_) => "unspecified",
    }
}

/// A constraint as the flags that give it: `concurrency jobs=5`,
/// `throttle api=100/1000/5`.
pub fn constraint_spec(c: &v1::Constraint) -> String {
    use v1::constraint::Kind;
    match &c.kind {
        Some(Kind::Concurrency(c)) => format!("concurrency {}={}", c.key, c.limit),
        Some(Kind::Throttle(t)) => {
            format!("throttle {}={}/{}/{}", t.key, t.limit, t.period_ms, t.burst)
        }
        Some(Kind::RateLimit(r)) => format!("rate_limit {}={}/{}", r.key, r.limit, r.period_ms),
        Some(Kind::Semaphore(s)) => format!("semaphore {}={}", s.key, s.weight),
        None => "unset".to_string(),
    }
}

pub fn usage_json(usage: &[v1::Usage]) -> Value {
    let entries = usage.iter().map(|u| {
        json!({
            "kind": kind_name(u.kind),
            "key": u.key,
            "used": u.used,
            "limit": u.limit,
            "available": u.available,
            "retry_after_ms": u.retry_after_ms,
            "paused": u.paused,
        })
    });
    Value::Array(entries.collect())
}

/// One row per constraint; the retry column only when one is blocking.
pub fn usage_table(usage: &[v1::Usage]) -> String {
    let blocking = usage.iter().any(|u| u.retry_after_ms.is_some());
    let mut header = vec!["kind", "key", "used", "limit", "available"];
    if blocking {
        header.push("retry_after_ms");
    }
    let mut table = Table::new(&header);
    for u in usage {
        let mut row = vec![
            kind_name(u.kind).to_string(),
            u.key.clone(),
            u.used.to_string(),
            u.limit.to_string(),
            if u.paused {
                "0 (paused)".to_string()
            } else {
                u.available.to_string()
            },
        ];
        if blocking {
            row.push(u.retry_after_ms.map_or("-".into(), |ms| ms.to_string()));
        }
        table.row(row);
    }
    table.render()
}

/// When to retry, or what a missing retry time means.
pub fn retry_after(retry_after_ms: Option<u64>) -> String {
    match retry_after_ms {
        Some(ms) => format!("retry after {ms} ms"),
        None => "time alone will not admit it; a release or a capacity change can".into(),
    }
}

/// Milliseconds since the Unix epoch on this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds from `now_ms` to `at_ms`, negative when past. Server
/// timestamps against the local clock: for display only.
pub fn ms_from(now_ms: u64, at_ms: u64) -> i64 {
    let signed = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX);
    signed(at_ms).saturating_sub(signed(now_ms))
}

/// A server timestamp as `2025-01-31 23:59:59.123 UTC (in 1500 ms)`.
pub fn when(at_ms: u64, now_ms: u64) -> String {
    let delta = ms_from(now_ms, at_ms);
    let relative = if delta >= 0 {
        format!("in {delta} ms")
    } else {
        format!("{} ms ago", delta.unsigned_abs())
    };
    format!("{} ({relative})", utc(at_ms))
}

/// Milliseconds since the Unix epoch as a UTC date and time.
pub fn utc(at_ms: u64) -> String {
    let (days, ms_of_day) = (at_ms / 86_400_000, at_ms % 86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (h, m) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (s, ms) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{ms:03} UTC")
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
        assert_eq!(utc(1_735_689_599_999), "2024-12-31 23:59:59.999 UTC");
        assert_eq!(utc(4_107_542_400_000), "2100-03-01 00:00:00.000 UTC");
    }

    #[test]
    fn relative_times() {
        assert_eq!(when(1_500, 0), "1970-01-01 00:00:01.500 UTC (in 1500 ms)");
        assert_eq!(when(0, 2_000), "1970-01-01 00:00:00.000 UTC (2000 ms ago)");
    }
}
