//! `inspect`, `set-capacity` and `adjust-capacity`: one constraint key.

use clap::{Args, ValueEnum};
use leasehold::proto::v1::{self, ConstraintKind};
use serde_json::json;
use tonic::Status;

use super::render::{self, kind_name, now_ms};
use super::table::Table;
use super::{Connect, Report};

/// A constraint kind as `inspect` takes it.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    Concurrency,
    Throttle,
    #[value(name = "rate_limit", alias = "rate-limit")]
    RateLimit,
    Semaphore,
}

impl From<Kind> for ConstraintKind {
    fn from(kind: Kind) -> ConstraintKind {
        match kind {
            Kind::Concurrency => ConstraintKind::Concurrency,
            Kind::Throttle => ConstraintKind::Throttle,
            Kind::RateLimit => ConstraintKind::RateLimit,
            Kind::Semaphore => ConstraintKind::Semaphore,
        }
    }
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub connect: Connect,
    scope: String,
    #[arg(value_enum)]
    kind: Kind,
    key: String,
}

pub async fn inspect(args: InspectArgs) -> Result<Report, Status> {
    let client = args.connect.client().await?;
    let reply = client
        .inspect(v1::InspectRequest {
            scope: args.scope.clone(),
            kind: ConstraintKind::from(args.kind) as i32,
            key: args.key,
        })
        .await?;
    Ok(inspected(&args.scope, &reply, now_ms()))
}

fn inspected(scope: &str, reply: &v1::InspectResponse, now_ms: u64) -> Report {
    let holders = reply.holders.iter().map(|h| {
        json!({
            "lease_id": h.lease_id,
            "units": h.units,
            "expires_at_ms": h.expires_at_ms,
            "expires_in_ms": render::ms_from(now_ms, h.expires_at_ms),
        })
    });
    let json = json!({
        "scope": scope,
        "kind": kind_name(reply.kind),
        "key": reply.key,
        "exists": reply.exists,
        "used": reply.used,
        "limit": reply.limit,
        "holders": holders.collect::<Vec<_>>(),
        "next_expiry_ms": reply.next_expiry_ms,
        "waiters": reply.waiters,
        "admin": admin_json(reply.admin.as_ref()),
    });
    let name = format!("{} {} in scope {scope}", kind_name(reply.kind), reply.key);
    let mut text = if reply.exists {
        format!("{name}: used {} of {}\n", reply.used, reply.limit)
    } else {
        format!("{name}: no state (never used, or idle)\n")
    };
    text += &admin_text(reply.admin.as_ref());
    if reply.waiters > 0 {
        text += &format!("waiters: {}\n", reply.waiters);
    }
    if let Some(at_ms) = reply.next_expiry_ms {
        text += &format!("next change by time: {}\n", render::when(at_ms, now_ms));
    }
    let mut table = Table::new(&["lease id", "units", "expires at", "expires in (ms)"]);
    for h in &reply.holders {
        table.row(vec![
            h.lease_id.to_string(),
            h.units.to_string(),
            render::utc(h.expires_at_ms),
            render::ms_from(now_ms, h.expires_at_ms).to_string(),
        ]);
    }
    if !table.is_empty() {
        text += &format!("\nholders:\n{}", table.render());
    }
    Report::ok(json, text)
}

#[derive(Args, Debug)]
pub struct SetCapacityArgs {
    #[command(flatten)]
    pub connect: Connect,
    scope: String,
    /// The semaphore key
    key: String,
    /// The new capacity, in units
    capacity: u64,
}

pub async fn set_capacity(args: SetCapacityArgs) -> Result<Report, Status> {
    let client = args.connect.client().await?;
    let reply = client
        .set_capacity(v1::SetCapacityRequest {
            scope: args.scope.clone(),
            key: args.key,
            capacity: args.capacity,
            idempotency_key: String::new(),
        })
        .await?;
    Ok(capacity(&args.scope, &reply))
}

#[derive(Args, Debug)]
pub struct AdjustCapacityArgs {
    #[command(flatten)]
    pub connect: Connect,
    scope: String,
    /// The semaphore key
    key: String,
    /// Units to add; negative to remove
    #[arg(allow_negative_numbers = true)]
    delta: i64,
}

pub async fn adjust_capacity(args: AdjustCapacityArgs) -> Result<Report, Status> {
    let client = args.connect.client().await?;
    let reply = client
        .adjust_capacity(v1::AdjustCapacityRequest {
            scope: args.scope.clone(),
            key: args.key,
            delta: args.delta,
            idempotency_key: String::new(),
        })
        .await?;
    Ok(capacity(&args.scope, &reply))
}

/// A key's operator settings as JSON: `paused`, and `pinned` as the flag
/// that gives the limit (null when none).
pub fn admin_json(admin: Option<&v1::KeyAdmin>) -> serde_json::Value {
    let admin = admin.cloned().unwrap_or_default();
    json!({
        "paused": admin.paused,
        "pinned": admin.pinned.as_ref().map(render::constraint_spec),
    })
}

/// The settings that differ from the defaults, one line each.
pub fn admin_text(admin: Option<&v1::KeyAdmin>) -> String {
    let admin = admin.cloned().unwrap_or_default();
    let mut text = String::new();
    if admin.paused {
        text += "paused: no new grants until resumed\n";
    }
    if let Some(pin) = &admin.pinned {
        text += &format!("pinned: {}\n", render::constraint_spec(pin));
    }
    text
}

fn capacity(scope: &str, reply: &v1::CapacityResponse) -> Report {
    let json = json!({
        "scope": scope,
        "key": reply.key,
        "capacity": reply.capacity,
        "replayed": reply.replayed,
    });
    let text = format!(
        "semaphore {} in scope {scope}: capacity {}\n",
        reply.key, reply.capacity
    );
    Report::ok(json, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_show_utc_expiry_and_time_left() {
        let reply = v1::InspectResponse {
            kind: ConstraintKind::Concurrency as i32,
            key: "jobs".into(),
            exists: true,
            used: 1,
            limit: 1,
            holders: vec![v1::Holder {
                lease_id: 7,
                units: 1,
                expires_at_ms: 30_000,
            }],
            next_expiry_ms: Some(30_000),
            served_by: None,
            admin: Some(v1::KeyAdmin {
                paused: true,
                pinned: None,
            }),
            waiters: 3,
        };
        let report = inspected("acct", &reply, 10_000);
        assert!(report
            .text
            .contains("concurrency jobs in scope acct: used 1 of 1"));
        assert!(report
            .text
            .contains("7         1      1970-01-01 00:00:30.000 UTC  20000"));
        assert_eq!(report.json["holders"][0]["expires_in_ms"], 20_000);
        assert!(report.text.contains("paused: no new grants"));
        assert!(report.text.contains("waiters: 3"));
        assert_eq!(report.json["admin"]["paused"], true);
    }
}
