//! Datadriven tests: every file in `src/engine/testdata/` is a script of
//! commands and the output each must produce.
//!
//! A block is a command line (`name key=value ...`), optional input lines
//! (the constraints of an acquire or check), `----`, and the expected output
//! up to a blank line. Run with `LEASEHOLD_REWRITE=1` to rewrite the expected
//! output from what the engine does now; review the diff before committing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use super::*;

const DEFAULT_SCOPE: &str = "acct";

struct Block {
    header: String,
    input: Vec<String>,
    expected: String,
    line: usize,
}

fn parse(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut block = Block {
            header: line.to_string(),
            input: Vec::new(),
            expected: String::new(),
            line: n + 1,
        };
        for (_, l) in lines.by_ref() {
            if l == "----" {
                break;
            }
            block.input.push(l.to_string());
        }
        while let Some((_, l)) = lines.peek() {
            if l.is_empty() {
                break;
            }
            block.expected.push_str(l);
            block.expected.push('\n');
            lines.next();
        }
        blocks.push(block);
    }
    blocks
}

/// `name k=v k=v` → the name and its arguments.
fn args(line: &str) -> (String, HashMap<String, String>) {
    let mut words = line.split_whitespace();
    let name = words.next().unwrap_or_default().to_string();
    let map = words
        .map(|w| {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    (name, map)
}

struct Args(HashMap<String, String>);

impl Args {
    fn str(&self, k: &str) -> String {
        self.0
            .get(k)
            .cloned()
            .unwrap_or_else(|| panic!("missing argument {k}"))
    }
    fn str_or(&self, k: &str, default: &str) -> String {
        self.0
            .get(k)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }
    fn num<T: std::str::FromStr>(&self, k: &str) -> T {
        self.opt(k)
            .unwrap_or_else(|| panic!("missing argument {k}"))
    }
    fn opt<T: std::str::FromStr>(&self, k: &str) -> Option<T> {
        self.0.get(k).map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("bad value {v:?} for {k}"))
        })
    }
    fn scope(&self) -> String {
        self.str_or("scope", DEFAULT_SCOPE)
    }
}

fn constraint(line: &str) -> Constraint {
    let (kind, map) = args(line);
    let mut words = line.split_whitespace().skip(1);
    let key = words.next().expect("constraint key").to_string();
    let a = Args(map);
    match kind.as_str() {
        "concurrency" => Constraint::Concurrency {
            key,
            limit: a.num("limit"),
        },
        "throttle" => Constraint::Throttle {
            key,
            limit: a.num("limit"),
            period_ms: a.num("period"),
            burst: a.opt("burst").unwrap_or(0),
        },
        "rate_limit" => Constraint::RateLimit {
            key,
            limit: a.num("limit"),
            period_ms: a.num("period"),
        },
        "semaphore" => Constraint::Semaphore {
            key,
            weight: a.opt("weight").unwrap_or(1),
        },
        other => panic!("unknown constraint kind {other}"),
    }
}

fn kind(name: &str) -> Kind {
    match name {
        "concurrency" => Kind::Concurrency,
        "throttle" => Kind::Throttle,
        "rate_limit" => Kind::RateLimit,
        "semaphore" => Kind::Semaphore,
        other => panic!("unknown kind {other}"),
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

fn write_usage(out: &mut String, u: &Usage) {
    let _ = write!(
        out,
        "  {} {}: used={} limit={} available={}",
        u.kind.as_str(),
        u.key,
        u.used,
        u.limit,
        u.available
    );
    if let Some(r) = u.retry_after_ms {
        let _ = write!(out, " retry_after={r}");
    }
    if u.paused {
        out.push_str(" paused");
    }
    out.push('\n');
}

fn write_outcome(out: &mut String, applied: &Applied) {
    if applied.replayed {
        out.push_str("replayed ");
    }
    match &applied.outcome {
        Outcome::Granted(g) => {
            let _ = writeln!(
                out,
                "granted lease={} token={} amount={} at={} expires={}",
                g.lease_id, g.fencing_token, g.granted_amount, g.granted_at_ms, g.expires_at_ms
            );
            g.usage.iter().for_each(|u| write_usage(out, u));
        }
        Outcome::Denied(d) => {
            let _ = writeln!(out, "denied retry_after={}", opt(d.retry_after_ms));
            d.blocking.iter().for_each(|u| write_usage(out, u));
        }
        Outcome::Extended {
            lease_id,
            expires_at_ms,
        } => {
            let _ = writeln!(out, "extended lease={lease_id} expires={expires_at_ms}");
        }
        Outcome::Released { lease_id, was_held } => {
            let _ = writeln!(out, "released lease={lease_id} was_held={was_held}");
        }
        Outcome::Capacity { key, capacity } => {
            let _ = writeln!(out, "capacity {key}={capacity}");
        }
        Outcome::Admin(admin) => {
            let _ = writeln!(out, "admin {}", admin_text(admin));
        }
        Outcome::Expired(r) => {
            let _ = writeln!(
                out,
                "expired leases={} units={} keys={} dedup={}",
                r.leases_expired, r.units_freed, r.keys_dropped, r.dedup_dropped
            );
        }
    }
}

fn admin_text(admin: &KeyAdmin) -> String {
    let pinned = match &admin.pinned {
        None => "none".to_string(),
        Some(c) => format!("{c:?}"),
    };
    format!("paused={} pinned={pinned}", admin.paused)
}

fn write_error(out: &mut String, e: &EngineError) {
    let _ = writeln!(out, "error {}: {e}", e.code().as_str());
}

/// `quotas leases=N keys=N records=N`: the quotas later commands apply
/// within, as a leader would stamp them; an omitted one is unbounded.
fn set_quotas(quotas: &mut Quotas, a: &Args) -> String {
    let bound = |k: &str| a.opt(k).unwrap_or(u64::MAX);
    *quotas = Quotas {
        max_leases_per_scope: bound("leases"),
        max_keys_per_scope: bound("keys"),
        max_idempotency_records_per_group: bound("records"),
        dedup_window_ms: a.opt("window").unwrap_or(quotas.dedup_window_ms),
    };
    let show = |v: u64| match v {
        u64::MAX => "none".to_string(),
        v => v.to_string(),
    };
    format!(
        "quotas leases={} keys={} records={} window={}\n",
        show(quotas.max_leases_per_scope),
        show(quotas.max_keys_per_scope),
        show(quotas.max_idempotency_records_per_group),
        quotas.dedup_window_ms
    )
}

fn run_block(engine: &mut Engine<MemStore>, quotas: &mut Quotas, block: &Block) -> String {
    let (name, map) = args(&block.header);
    let a = Args(map);
    if name == "quotas" {
        return set_quotas(quotas, &a);
    }
    let at: u64 = a.opt("at").unwrap_or_else(|| engine.applied_ms());
    let constraints: Vec<Constraint> = block.input.iter().map(|l| constraint(l)).collect();
    let cmd = match name.as_str() {
        "acquire" => Command::Acquire(AcquireRequest {
            scope: a.scope(),
            constraints,
            amount: a.opt("amount").unwrap_or(1),
            min_amount: a.opt("min"),
            lease_ttl_ms: a.num("ttl"),
            max_lifetime_ms: a.opt("lifetime"),
            idempotency_key: a.str("idem"),
            attempt: match a.str_or("attempt", "final").as_str() {
                "final" => Attempt::Final,
                "interim" => Attempt::Interim,
                other => panic!("unknown attempt {other}"),
            },
        }),
        "extend" => Command::Extend(ExtendRequest {
            scope: a.scope(),
            lease_id: a.num("lease"),
            ttl_ms: a.num("ttl"),
            idempotency_key: a.str("idem"),
        }),
        "release" => Command::Release(ReleaseRequest {
            scope: a.scope(),
            lease_id: a.num("lease"),
            idempotency_key: a.str("idem"),
        }),
        "set-capacity" => Command::SetCapacity(SetCapacityRequest {
            scope: a.scope(),
            key: a.str("key"),
            capacity: a.num("capacity"),
            idempotency_key: a.str("idem"),
        }),
        "adjust-capacity" => Command::AdjustCapacity(AdjustCapacityRequest {
            scope: a.scope(),
            key: a.str("key"),
            delta: a.num("delta"),
            idempotency_key: a.str("idem"),
        }),
        "pause" | "resume" | "pin" | "unpin" | "reset" => Command::Admin(AdminRequest {
            scope: a.scope(),
            kind: kind(&a.str("kind")),
            key: a.str("key"),
            action: match name.as_str() {
                "pause" => AdminAction::Pause,
                "resume" => AdminAction::Resume,
                "pin" => AdminAction::Pin(constraints.into_iter().next().expect("a pinned limit")),
                "unpin" => AdminAction::Unpin,
                _ => AdminAction::Reset,
            },
            idempotency_key: a.str("idem"),
        }),
        "expire" => Command::Expire {
            until_ms: a.opt("until").unwrap_or(at),
        },
        _ => return run_read(engine, &name, &a, at, constraints),
    };
    let mut out = String::new();
    match engine.apply_within(at, quotas, &cmd) {
        Ok(applied) => write_outcome(&mut out, &applied),
        Err(e) => write_error(&mut out, &e),
    }
    out
}

/// Commands that read state without applying anything.
fn run_read(
    engine: &Engine<MemStore>,
    name: &str,
    a: &Args,
    at: u64,
    constraints: Vec<Constraint>,
) -> String {
    let mut out = String::new();
    match name {
        "check" => match engine.check(
            &a.scope(),
            &constraints,
            a.opt("amount").unwrap_or(1),
            a.opt("min"),
            at,
        ) {
            Ok(c) => {
                let _ = writeln!(
                    out,
                    "check grantable={} retry_after={}",
                    c.grantable_amount,
                    opt(c.retry_after_ms)
                );
                c.usage.iter().for_each(|u| write_usage(&mut out, u));
            }
            Err(e) => write_error(&mut out, &e),
        },
        "inspect" => match engine.inspect(&a.scope(), kind(&a.str("kind")), &a.str("key"), at) {
            Ok(k) => {
                let _ = writeln!(
                    out,
                    "{} {} exists={} used={} limit={} next_expiry={}",
                    k.kind.as_str(),
                    k.key,
                    k.exists,
                    k.used,
                    k.limit,
                    opt(k.next_expiry_ms)
                );
                if !k.admin.is_default() {
                    let _ = writeln!(out, "  admin {}", admin_text(&k.admin));
                }
                for h in &k.holders {
                    let _ = writeln!(
                        out,
                        "  holder lease={} units={} expires={}",
                        h.lease_id, h.units, h.expires_at_ms
                    );
                }
            }
            Err(e) => write_error(&mut out, &e),
        },
        "usage" => {
            let u = engine.store().scope_usage(&ScopeId::new(&a.scope()));
            let _ = writeln!(
                out,
                "scope {} leases={} keys={}",
                a.scope(),
                u.leases,
                u.keys
            );
        }
        "state" => {
            let s = engine.store();
            let _ = writeln!(
                out,
                "applied={} next_deadline={} keys={} leases={} dedup={} deadlines={}",
                engine.applied_ms(),
                opt(engine.next_deadline_ms()),
                s.key_count(),
                s.lease_count(),
                s.dedup_count(),
                s.deadline_count()
            );
        }
        other => panic!("unknown command {other}"),
    }
    out
}

fn run_file(path: &Path) {
    let text = std::fs::read_to_string(path).expect("read testdata");
    let blocks = parse(&text);
    // One slot: every scope's lease ids are its slot's plain counter, so
    // the scripts read `lease=3`, not the slot in the high bits.
    let config = EngineConfig { slot_count: 1 };
    let mut engine = Engine::new(MemStore::new(), config);
    let mut quotas = Quotas {
        dedup_window_ms: 10_000,
        ..Quotas::NONE
    };
    let rewrite = std::env::var_os("LEASEHOLD_REWRITE").is_some();
    let mut rewritten = String::new();
    let mut failures = Vec::new();
    let mut cursor = 0;
    for block in &blocks {
        let actual = run_block(&mut engine, &mut quotas, block);
        if actual != block.expected {
            failures.push(format!(
                "{}:{}: {}\n--- expected\n{}--- actual\n{}",
                path.display(),
                block.line,
                block.header,
                block.expected,
                actual
            ));
        }
        if rewrite {
            // Keep comments and spacing: copy the text up to this block's
            // expected output, then the new output.
            let start = nth_line_offset(&text, block.line - 1);
            let sep = text[start..].find("\n----\n").expect("separator") + start + 6;
            rewritten.push_str(&text[cursor..sep]);
            rewritten.push_str(&actual);
            cursor = sep + block.expected.len();
        }
    }
    if rewrite {
        rewritten.push_str(&text[cursor..]);
        std::fs::write(path, rewritten).expect("rewrite testdata");
        return;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn nth_line_offset(text: &str, n: usize) -> usize {
    text.split_inclusive('\n').take(n).map(str::len).sum()
}

#[test]
fn datadriven() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine/testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no testdata in {}", dir.display());
    for f in files {
        run_file(&f);
    }
}

/// A recorded denial takes no more room than a recorded grant: the dedup
/// table's records keep their size (a denial of one blocking constraint
/// allocates nothing more).
#[test]
#[cfg(target_pointer_width = "64")]
fn a_dedup_record_stays_compact() {
    assert_eq!(std::mem::size_of::<Recorded>(), 72);
    assert_eq!(std::mem::size_of::<DedupRecord>(), 96);
}
